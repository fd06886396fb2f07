//! `deploy`'s arguments turned into a [`DeploySpec`]: the files the flags
//! name are read here, then the values go through the same
//! [`DeployRequest::validate`] as the HTTP API's JSON body, and a refused one
//! is reported with its flag. Values of `--env`, `--env-file` and
//! `--build-arg` are secrets: messages name only their keys.

use std::collections::BTreeMap;
use std::path::Path;

use otturnaut_core::request::{MAX_ENV, env_entry};
use otturnaut_core::{AppId, DeployRequest, DeploySpec, InvalidField, Secret};

use crate::args::DeployArgs;
use crate::exit::Invalid;
use crate::files;

/// The flag a [`DeployRequest`] field comes from.
fn flag(field: &str) -> &str {
    match field {
        "app" => "APP",
        "repo" => "--repo",
        "ref" => "--ref",
        "dockerfile" => "--dockerfile",
        "build_args" => "--build-arg",
        "repo_credentials" => "--repo-credentials-file",
        "ssh_key" => "--ssh-key",
        "image" => "--image",
        "pull_timeout" => "--pull-timeout",
        "container_port" => "--container-port",
        "domains" => "--domain",
        "env" => "--env",
        "health" => "--health",
        "health_timeout" => "--health-timeout",
        other => other,
    }
}

fn from_field(e: InvalidField) -> Invalid {
    Invalid::new(flag(e.field), e.message)
}

pub fn app_id(raw: &str) -> Result<AppId, Invalid> {
    otturnaut_core::request::app_id(raw).map_err(from_field)
}

pub fn deployment_id(flag: &str, raw: &str) -> Result<otturnaut_core::DeploymentId, Invalid> {
    raw.parse().map_err(|e: otturnaut_core::Error| Invalid::new(flag, e.to_string()))
}

pub fn deploy_spec(args: &DeployArgs) -> Result<DeploySpec, Invalid> {
    request(args)?.validate(&args.app).map_err(from_field)
}

/// The flags as the request the HTTP API would receive.
fn request(args: &DeployArgs) -> Result<DeployRequest, Invalid> {
    // Checked first, as before the files are read.
    app_id(&args.app)?;
    let container_port = args.container_port.parse::<u64>().map_err(|_| {
        let shown: String = args.container_port.chars().take(64).collect();
        Invalid::new("--container-port", format!("{shown:?} is not a port number (1-65535)"))
    })?;
    let mut env = BTreeMap::new();
    if let Some(file) = &args.env_file {
        env = key_value_file("--env-file", file)?;
    }
    for raw in &args.env {
        let (name, value) = key_value("--env", raw)?;
        env.insert(name, value);
    }
    let mut build_args = BTreeMap::new();
    if let Some(file) = &args.build_arg_file {
        build_args = key_value_file("--build-arg-file", file)?;
    }
    for raw in &args.build_args {
        let (name, value) = key_value("--build-arg", raw)?;
        build_args.insert(name, value);
    }
    let read_secret = |flag: &str, path: &Path| {
        files::read_capped(path, files::MAX_KEY_FILE).map(Secret::new).map_err(|m| Invalid::new(flag, m))
    };
    Ok(DeployRequest {
        repo: args.repo.clone(),
        git_ref: args.git_ref.clone(),
        dockerfile: args.dockerfile.clone(),
        build_args,
        repo_credentials: args
            .repo_credentials_file
            .as_deref()
            .map(|p| read_secret("--repo-credentials-file", p))
            .transpose()?,
        ssh_key: args.ssh_key.as_deref().map(|p| read_secret("--ssh-key", p)).transpose()?,
        allow_insecure_git: args.allow_insecure_git,
        image: args.image.clone(),
        pull_timeout: args.pull_timeout.clone(),
        container_port,
        domains: args.domains.clone(),
        env,
        health: Some(args.health.clone()),
        health_timeout: args.health_timeout.clone(),
    })
}

/// `KEY=VALUE` with the value kept secret. Without `=` the whole argument
/// may be a value typed in the wrong place: not shown.
fn key_value(flag: &str, raw: &str) -> Result<(String, Secret), Invalid> {
    let (key, value) = raw.split_once('=').ok_or_else(|| {
        Invalid::new(flag, "expected KEY=VALUE, got an argument without '=' (not shown: it may hold a secret)")
    })?;
    let (name, value) = env_entry(key, &Secret::new(value)).map_err(|m| Invalid::new(flag, m))?;
    Ok((name.to_string(), value))
}

/// A file of `KEY=VALUE` lines, as `docker run --env-file` reads them: the
/// value is everything after the first `=`, verbatim; blank lines and lines
/// starting with `#` are skipped; an `export ` prefix is allowed. At most
/// 1 MiB and [`MAX_ENV`] entries.
pub fn key_value_file(flag: &str, path: &Path) -> Result<BTreeMap<String, Secret>, Invalid> {
    let text = files::read_capped(path, files::MAX_SETTINGS_FILE).map_err(|m| Invalid::new(flag, m))?;
    let mut env = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let at = || format!("{} line {}", path.display(), i + 1);
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(Invalid::new(
                flag,
                format!("{}: expected KEY=VALUE (line not shown: it may hold a secret)", at()),
            ));
        };
        let (name, value) =
            env_entry(key.trim_end(), &Secret::new(value)).map_err(|m| Invalid::new(flag, format!("{}: {m}", at())))?;
        env.insert(name.to_string(), value);
        if env.len() > MAX_ENV {
            return Err(Invalid::new(flag, format!("{} has more than {MAX_ENV} entries", path.display())));
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use std::time::Duration;

    use otturnaut_core::request::MAX_DOMAINS;
    use otturnaut_core::{Domain, HealthCheck, HealthKind, MAX_DURATION, Source};

    use super::*;
    use crate::args::{Cli, Command};

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
    fn a_missing_env_file_is_named() {
        let e = err(&["a", "--image", "x", "--container-port", "80", "--env-file", "/nonexistent/app.env"]);
        assert!(e.starts_with("--env-file") && e.contains("/nonexistent/app.env"), "{e}");
    }
}
