// Long file: every deploy flag mapped onto the schema, with the files they name read, in one place.
//! `deploy`'s arguments turned into a [`DeploySpec`]: the flags become a
//! [`DeployRequest`] (the schema the daemon's JSON body and the spec file
//! share), laid over `--spec FILE`'s, the files it names are read, and
//! [`otturnaut_adapters::validate`] checks it, before anything connects or
//! creates a file. A bad value is reported with its flag, or with the spec
//! file's key and line. Values of `--env`, `--env-file`, `--build-arg` and
//! build secrets are secrets: messages name only their keys. Architecture
//! invariant: all input is validated into core types before any resource is
//! created.

use std::collections::BTreeSet;

use otturnaut_core::request::{CommandInput, MAX_BUILD_SECRETS, Scalar, build_secret_id, env_entry};
use otturnaut_core::{AppId, ContainerPort, DeployRequest, DeploySpec, EnvName, InvalidField, Secret};

use crate::args::DeployArgs;
use crate::exit::Invalid;
use crate::{files, specfile};

fn invalid(flag: &str) -> impl Fn(otturnaut_core::Error) -> Invalid + '_ {
    move |e| Invalid::new(flag, e.to_string())
}

pub fn app_id(raw: &str) -> Result<AppId, Invalid> {
    raw.parse().map_err(invalid("APP"))
}

pub fn deployment_id(flag: &str, raw: &str) -> Result<otturnaut_core::DeploymentId, Invalid> {
    raw.parse().map_err(invalid(flag))
}

pub fn deploy_spec(args: &DeployArgs) -> Result<DeploySpec, Invalid> {
    let flags = request(args)?;
    let by_flags = flags.given();
    let (mut request, file) = match &args.spec {
        Some(path) => {
            let (from_file, file) = specfile::read(path)?;
            (from_file.merged(flags), Some(file))
        }
        None => (flags, None),
    };
    let locate = |e: InvalidField| match file.as_ref().and_then(|f| f.locate(&e, &by_flags)) {
        Some(located) => located,
        None => Invalid::from(e),
    };
    files::read_into(&mut request).map_err(locate)?;
    otturnaut_adapters::validate(&request, &args.app).map_err(locate)
}

/// The flags as a request. Only what the request cannot hold is checked
/// here: `K=V` and `ID=FILE` pairs, a build secret's id given twice, and
/// each `--env`/`--build-arg` name (so that a bad one is blamed on its
/// flag, not on the spec file's entries it joins).
fn request(args: &DeployArgs) -> Result<DeployRequest, Invalid> {
    let r = &args.runtime;
    let container_port = match &args.container_port {
        Some(raw) => Some(u64::from(raw.parse::<ContainerPort>().map_err(invalid("--container-port"))?.get())),
        None => None,
    };
    let text = |raw: &Option<String>| raw.clone().map(Scalar::from);
    let command = |raw: &Option<String>| raw.clone().map(CommandInput::Line);
    Ok(DeployRequest {
        repo: args.repo.clone(),
        git_ref: args.git_ref.clone(),
        dockerfile: args.dockerfile.clone(),
        build_args: key_values("--build-arg", &args.build_args)?,
        build_secrets: Default::default(),
        repo_credentials: None,
        ssh_key: None,
        allow_insecure_git: args.allow_insecure_git,
        image: args.image.clone(),
        pull_timeout: args.pull_timeout.clone(),
        container_port,
        domains: args.domains.clone(),
        env: key_values("--env", &args.env)?,
        health: args.health.clone(),
        health_timeout: args.health_timeout.clone(),
        volumes: r.volumes.clone(),
        memory: text(&r.memory),
        cpus: text(&r.cpus),
        pids_limit: text(&r.pids_limit),
        networks: r.networks.clone(),
        command: command(&r.command),
        entrypoint: command(&r.entrypoint),
        log_opts: r.log_opts.clone(),
        stop_timeout: r.stop_timeout.clone(),
        drain_timeout: r.drain_timeout.clone(),
        env_file: args.env_file.clone(),
        build_arg_file: args.build_arg_file.clone(),
        build_secret_files: build_secret_files(&args.build_secrets)?,
        repo_credentials_file: args.repo_credentials_file.clone(),
        ssh_key_file: args.ssh_key.clone(),
    })
}

/// Repeated `KEY=VALUE` flags; a later one wins.
fn key_values(flag: &str, raw: &[String]) -> Result<std::collections::BTreeMap<String, Secret>, Invalid> {
    raw.iter().map(|r| key_value(flag, r).map(|(k, v)| (k.to_string(), v))).collect()
}

/// `KEY=VALUE` with the value kept secret. Without `=` the whole argument
/// may be a value typed in the wrong place: not shown.
fn key_value(flag: &str, raw: &str) -> Result<(EnvName, Secret), Invalid> {
    let (key, value) = raw.split_once('=').ok_or_else(|| {
        Invalid::new(flag, "expected KEY=VALUE, got an argument without '=' (not shown: it may hold a secret)")
    })?;
    env_entry(key, &Secret::new(value)).map_err(|m| Invalid::new(flag, m))
}

/// `--build-secret ID=FILE` pairs: the id as `RUN --mount=type=secret,id=ID`
/// names it, the file read later (its contents are the secret).
fn build_secret_files(raw: &[String]) -> Result<std::collections::BTreeMap<String, std::path::PathBuf>, Invalid> {
    let flag = "--build-secret";
    if raw.len() > MAX_BUILD_SECRETS {
        return Err(Invalid::new(flag, format!("given {} times; at most {MAX_BUILD_SECRETS}", raw.len())));
    }
    let mut files = std::collections::BTreeMap::new();
    let mut ids = BTreeSet::new();
    for pair in raw {
        let Some((id, file)) = pair.split_once('=') else {
            return Err(Invalid::new(flag, format!("{pair:?}: expected ID=FILE")));
        };
        build_secret_id(id).map_err(|m| Invalid::new(flag, m))?;
        if !ids.insert(id) {
            return Err(Invalid::new(flag, format!("the id {id} is given twice")));
        }
        files.insert(id.to_owned(), file.into());
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;
    use otturnaut_core::request::{MAX_BUILD_SECRET_SIZE, MAX_DOMAINS, MAX_ENV};
    use otturnaut_core::{Domain, HealthCheck, HealthKind, MAX_DURATION, RuntimeOptions, Source};

    use super::*;
    use crate::args::{Cli, Command};

    const MAX_BUILD_SECRET_FILE: u64 = MAX_BUILD_SECRET_SIZE as u64;

    fn args(extra: &[&str]) -> DeployArgs {
        let mut argv = vec!["otturnaut", "deploy"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Deploy(d) => *d,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn err(extra: &[&str]) -> String {
        deploy_spec(&args(extra)).expect_err("invalid").to_string()
    }

    #[test]
    fn a_full_git_deploy_becomes_a_spec() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("app.env");
        std::fs::write(&file, "# comment\n\nexport A=from file\nB=x=y\n  C=  spaced \n").expect("write env file");
        let spec = deploy_spec(&args(&[
            "shop",
            "--repo",
            "file:///srv/shop",
            "--ref",
            "v1.2",
            "--dockerfile",
            "./docker/../Dockerfile",
            "--build-arg",
            "TOKEN=s3cret",
            "--container-port",
            "8080",
            "--domain",
            "Shop.Example.com",
            "--domain",
            "shop.example.com",
            "--env-file",
            file.to_str().expect("utf-8"),
            "--env",
            "A=from flag",
            "--health",
            "http:/healthz",
            "--health-timeout",
            "1m30s",
        ]))
        .expect("valid");
        assert_eq!(spec.app.as_str(), "shop");
        assert_eq!(spec.container_port.get(), 8080);
        assert_eq!(spec.domains.iter().map(Domain::as_str).collect::<Vec<_>>(), ["shop.example.com"]);
        let env: Vec<(&str, &str)> = spec.env.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
        assert_eq!(env, [("A", "from flag"), ("B", "x=y"), ("C", "  spaced ")]);
        assert_eq!(spec.health.deadline, Duration::from_secs(90));
        assert!(
            matches!(&spec.health.kind, HealthKind::Http { path, expected_status: 200 } if path.as_str() == "/healthz")
        );
        match &spec.source {
            Source::Git { url, git_ref, dockerfile, build_args, .. } => {
                assert_eq!(url.expose(), "file:///srv/shop");
                assert_eq!(git_ref.as_str(), "v1.2");
                assert_eq!(dockerfile.as_str(), "Dockerfile");
                assert_eq!(build_args.get("TOKEN").map(Secret::expose), Some("s3cret"));
            }
            other => panic!("not a git source: {other:?}"),
        }
    }

    #[test]
    fn defaults_are_tcp_health_and_main() {
        let spec = deploy_spec(&args(&["a", "--repo", "https://h/o/r.git", "--container-port", "80"])).expect("ok");
        assert_eq!(spec.health.kind, HealthKind::Tcp);
        assert_eq!(spec.health.deadline, HealthCheck::default().deadline);
        assert!(matches!(&spec.source, Source::Git { git_ref, .. } if git_ref.as_str() == "main"));
        let spec = deploy_spec(&args(&["a", "--image", "redis:7", "--container-port", "6379"])).expect("ok");
        assert!(matches!(&spec.source, Source::Image { reference } if reference.as_str() == "redis:7"));
    }

    #[test]
    fn bad_values_name_their_flag_and_value() {
        let base = ["--container-port", "80"];
        let with = |extra: &[&str]| {
            let mut v = extra.to_vec();
            v.extend_from_slice(&base);
            err(&v)
        };
        for (argv, flag, shown) in [
            (vec!["Bad_App", "--image", "x"], "APP", "Bad_App"),
            (vec!["a", "--repo", "ext::sh -c touch /tmp/x"], "--repo", "ext::sh"),
            (vec!["a", "--repo", "file://relative"], "--repo", "file://relative"),
            (vec!["a", "--repo", "https://h/r", "--ref=-x"], "--ref", "-x"),
            (vec!["a", "--repo", "https://h/r", "--dockerfile", "../x"], "--dockerfile", "../x"),
            (vec!["a", "--image", "Nginx"], "--image", "Nginx"),
            (vec!["a", "--image", "x", "--domain", "a_b.com"], "--domain", "a_b.com"),
            (vec!["a", "--image", "x", "--health", "http:healthz"], "--health", "healthz"),
            (vec!["a", "--image", "x", "--health", "ping"], "--health", "ping"),
            (vec!["a", "--image", "x", "--health-timeout", "5x"], "--health-timeout", "5x"),
            (vec!["a", "--image", "x", "--health-timeout", "0s"], "--health-timeout", "0s"),
        ] {
            let e = with(&argv);
            assert!(e.starts_with(flag), "{argv:?}: {e}");
            assert!(e.contains(shown), "{argv:?}: {e}");
        }
        let e = err(&["a", "--image", "x", "--container-port", "0"]);
        assert!(e.starts_with("--container-port") && e.contains("\"0\""), "{e}");
    }

    #[test]
    fn secrets_never_appear_in_messages() {
        let base = ["a", "--repo", "https://h/r", "--container-port", "80"];
        for extra in [
            ["--env", "1BAD=hunter2"],
            ["--env", "hunter2"],
            ["--env", "OK=hun\0ter2"],
            ["--build-arg", "bad-name=hunter2"],
            ["--build-arg", "hunter2"],
        ] {
            let mut v = base.to_vec();
            v.extend_from_slice(&extra);
            let e = err(&v);
            assert!(!e.contains("hunter2") && !e.contains("ter2"), "{extra:?}: {e}");
            assert!(e.starts_with(extra[0]), "{extra:?}: {e}");
        }
        assert!(err(&[&base[..], &["--env", "1BAD=hunter2"]].concat()).contains("1BAD"));

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bad.env");
        std::fs::write(&file, "GOOD=1\nhunter2\n").expect("write");
        let e = err(&[&base[..], &["--env-file", file.to_str().expect("utf-8")]].concat());
        assert!(e.contains("line 2") && !e.contains("hunter2"), "{e}");
        std::fs::write(&file, "BAD-NAME=hunter2\n").expect("write");
        let e = err(&[&base[..], &["--env-file", file.to_str().expect("utf-8")]].concat());
        assert!(e.contains("line 1") && e.contains("\"BAD\"") && !e.contains("NAME") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn nothing_after_a_separator_like_character_of_an_env_argument_is_echoed() {
        let base = ["a", "--repo", "https://h/r", "--container-port", "80"];
        for raw in ["DB:postgres://u:p@h/db?x=1", "DB:postgres://u:p@h/db", "DB postgres", "DB-URL=x", "DB.x=1"] {
            for flag in ["--env", "--build-arg"] {
                let e = err(&[&base[..], &[flag, raw]].concat());
                assert!(e.starts_with(flag), "{raw}: {e}");
                assert!(
                    !e.contains("postgres") && !e.contains("@h") && !e.contains("x=") && !e.contains("URL"),
                    "{raw}: {e}"
                );
                assert_eq!(e.contains("\"DB\""), raw.contains('='), "{raw}: {e}");
            }
        }
    }

    #[test]
    fn caps_on_domains_env_files_and_durations_exit_2() {
        let base = ["a", "--image", "x", "--container-port", "80"];
        let mut many: Vec<String> = Vec::new();
        for i in 0..=MAX_DOMAINS {
            many.push("--domain".into());
            many.push(format!("d{i}.example.com"));
        }
        let argv: Vec<&str> = base.iter().copied().chain(many.iter().map(String::as_str)).collect();
        assert!(err(&argv).starts_with("--domain"));

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("big.env");
        let lines: String = (0..=MAX_ENV).map(|i| format!("K{i}=v\n")).collect();
        std::fs::write(&file, lines).expect("write");
        let e = err(&[&base[..], &["--env-file", file.to_str().expect("utf-8")]].concat());
        assert!(e.starts_with("--env-file") && e.contains("more than"), "{e}");
        std::fs::write(&file, format!("K={}\n", "v".repeat(crate::files::MAX_SETTINGS_FILE as usize))).expect("write");
        let e = err(&[&base[..], &["--env-file", file.to_str().expect("utf-8")]].concat());
        assert!(e.starts_with("--env-file") && e.contains("larger than"), "{e}");
        let e = err(&[&base[..], &["--env-file", "/dev/zero"]].concat());
        assert!(e.starts_with("--env-file") && e.contains("not a regular file"), "{e}");

        for (flag, raw) in [
            ("--health-timeout", "18446744073709551615s"),
            ("--health-timeout", "25h"),
            ("--health-timeout", "99999999999999999999999999s"),
            ("--pull-timeout", "2days"),
        ] {
            let e = err(&[&base[..], &[flag, raw]].concat());
            assert!(e.starts_with(flag), "{raw}: {e}");
        }
        let spec = deploy_spec(&args(&[&base[..], &["--health-timeout", "24h", "--pull-timeout", "90s"]].concat()))
            .expect("at the limit");
        assert_eq!(spec.health.deadline, MAX_DURATION);
        assert_eq!(spec.timeouts.pull, Duration::from_secs(90));
        assert_eq!(deploy_spec(&args(&base)).expect("ok").timeouts.pull, Duration::from_secs(600));
    }

    #[test]
    fn git_protocol_only_on_this_machine_unless_allowed() {
        let base = ["a", "--container-port", "80"];
        for ok in ["git://127.0.0.1:9418/r.git", "git://localhost/r.git", "git://127.1.2.3/r"] {
            assert!(deploy_spec(&args(&[&base[..], &["--repo", ok]].concat())).is_ok(), "{ok}");
        }
        let e = err(&[&base[..], &["--repo", "git://example.com/r.git"]].concat());
        assert!(e.starts_with("--repo") && e.contains("--allow-insecure-git"), "{e}");
        let e = err(&[&base[..], &["--repo", "git://T0KEN@example.com/r.git"]].concat());
        assert!(!e.contains("T0KEN"), "{e}");
        assert!(
            deploy_spec(&args(&[&base[..], &["--repo", "git://example.com/r.git", "--allow-insecure-git"]].concat()))
                .is_ok()
        );
    }

    #[test]
    fn secrets_come_from_files_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = dir.path().join("creds");
        std::fs::write(&creds, "bot:s3cr3t\n").expect("write");
        let build = dir.path().join("build.env");
        std::fs::write(&build, "NPM_TOKEN=npm-s3cr3t\nOTHER=1\n").expect("write");
        let spec = deploy_spec(&args(&[
            "a",
            "--repo",
            "https://h/o/r.git",
            "--repo-credentials-file",
            creds.to_str().expect("utf-8"),
            "--build-arg-file",
            build.to_str().expect("utf-8"),
            "--build-arg",
            "OTHER=2",
            "--container-port",
            "80",
        ]))
        .expect("valid");
        match &spec.source {
            Source::Git { url, build_args, .. } => {
                assert_eq!(url.expose(), "https://bot:s3cr3t@h/o/r.git");
                assert_eq!(url.to_string(), "https://bot:***@h/o/r.git");
                assert_eq!(build_args.get("NPM_TOKEN").map(Secret::expose), Some("npm-s3cr3t"));
                assert_eq!(build_args.get("OTHER").map(Secret::expose), Some("2"), "the flag overrides the file");
            }
            other => panic!("{other:?}"),
        }
        let e = err(&[
            "a",
            "--repo",
            "git@h:o/r",
            "--repo-credentials-file",
            creds.to_str().expect("utf-8"),
            "--container-port",
            "80",
        ]);
        assert!(e.starts_with("--repo-credentials-file") && !e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn runtime_flags_become_runtime_options() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bind = format!("{}:/etc/app:ro", dir.path().display());
        let spec = deploy_spec(&args(&[
            "a",
            "--image",
            "x",
            "--container-port",
            "80",
            "--volume",
            "a-data:/data",
            "--volume",
            &bind,
            "--memory",
            "512m",
            "--cpus",
            "1.5",
            "--pids-limit",
            "200",
            "--network",
            "backend",
            "--command",
            "puma -C 'config/puma.rb'",
            "--entrypoint",
            "/usr/bin/tini --",
            "--log-opt",
            "max-size=50m",
            "--stop-timeout",
            "20s",
            "--drain-timeout",
            "1m",
        ]))
        .expect("valid");
        let r = &spec.runtime;
        assert_eq!(r.volumes.iter().map(ToString::to_string).collect::<Vec<_>>(), ["a-data:/data".to_owned(), bind]);
        assert_eq!(r.memory.map(|m| m.bytes()), Some(512 << 20));
        assert_eq!(r.cpus.map(|c| c.nano()), Some(1_500_000_000));
        assert_eq!(r.pids_limit.map(|p| p.get()), Some(200));
        assert_eq!(r.networks.iter().map(|n| n.as_str()).collect::<Vec<_>>(), ["backend"]);
        assert_eq!(
            r.command.as_ref().map(|c| c.words().to_vec()),
            Some(vec!["puma".into(), "-C".into(), "config/puma.rb".into()])
        );
        assert_eq!(r.entrypoint.as_ref().map(|c| c.words().len()), Some(2));
        assert_eq!(r.effective_log_opts().get("max-size").map(String::as_str), Some("50m"));
        assert_eq!(r.effective_log_opts().get("max-file").map(String::as_str), Some("3"));
        assert_eq!((spec.timeouts.stop, spec.timeouts.drain), (Duration::from_secs(20), Duration::from_secs(60)));
        assert_eq!(
            deploy_spec(&args(&["a", "--image", "x", "--container-port", "80"])).expect("ok").runtime,
            RuntimeOptions::default()
        );
    }

    #[test]
    fn bad_runtime_values_name_their_flag() {
        let base = ["a", "--image", "x", "--container-port", "80"];
        for (extra, flag) in [
            (&["--volume", "data"][..], "--volume"),
            (&["--volume", "/nonexistent/otturnaut:/data"], "--volume"),
            (&["--volume", "a-data:/x", "--volume", "b-data:/x/"], "--volume"),
            (&["--memory", "5m"], "--memory"),
            (&["--cpus=-1"], "--cpus"),
            (&["--pids-limit", "0"], "--pids-limit"),
            (&["--network", "none"], "--network"),
            (&["--network", "n1", "--network", "n1"], "--network"),
            (&["--command", "a 'b"], "--command"),
            (&["--entrypoint", "  "], "--entrypoint"),
            (&["--log-opt", "max-size=0"], "--log-opt"),
            (&["--log-opt", "max-file=2", "--log-opt", "max-file=3"], "--log-opt"),
            (&["--stop-timeout", "25h"], "--stop-timeout"),
            (&["--drain-timeout", "x"], "--drain-timeout"),
        ] {
            let e = err(&[&base[..], extra].concat());
            assert!(e.starts_with(flag), "{extra:?}: {e}");
        }
    }

    #[test]
    fn build_secrets_are_read_from_files_and_never_echoed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("npmrc");
        std::fs::write(&file, "//registry/:_authToken=s3cr3t\n").expect("write");
        let pair = format!("npmrc={}", file.display());
        let base = ["a", "--repo", "https://h/o/r.git", "--container-port", "80"];
        let spec = deploy_spec(&args(&[&base[..], &["--build-secret", &pair]].concat())).expect("valid");
        match &spec.source {
            Source::Git { build_secrets, .. } => {
                assert_eq!(build_secrets.get("npmrc").map(Secret::expose), Some("//registry/:_authToken=s3cr3t\n"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!serde_json::to_string(&spec).expect("ser").contains("s3cr3t"));
        let big = dir.path().join("big");
        std::fs::write(&big, "x".repeat(MAX_BUILD_SECRET_FILE as usize + 1)).expect("write");
        let missing = format!("id={}", dir.path().join("missing").display());
        for bad in [
            "npmrc".to_owned(),
            format!("bad/id={}", file.display()),
            format!("={}", file.display()),
            missing,
            format!("big={}", big.display()),
            format!("npmrc={}", "/dev/zero"),
        ] {
            let e = err(&[&base[..], &["--build-secret", &bad]].concat());
            assert!(e.starts_with("--build-secret") && !e.contains("s3cr3t"), "{bad}: {e}");
        }
        let e = err(&[&base[..], &["--build-secret", &pair, "--build-secret", &pair]].concat());
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn a_missing_env_file_is_named() {
        let e = err(&["a", "--image", "x", "--container-port", "80", "--env-file", "/nonexistent/app.env"]);
        assert!(e.starts_with("--env-file") && e.contains("/nonexistent/app.env"), "{e}");
    }
}
