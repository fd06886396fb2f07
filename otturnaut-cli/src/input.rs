// Long file: every deploy flag's check (source, env, health, runtime options, build secrets) in one place.
//! `deploy`'s arguments turned into a [`DeploySpec`]. Every value is checked
//! here, before anything connects or creates a file; a bad one is reported
//! with its flag. Values of `--env`, `--env-file` and `--build-arg` are
//! secrets: messages name only their keys. Architecture invariant: all input
//! is validated into core types before any resource is created.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use otturnaut_core::{
    AppId, ContainerPort, DeploySpec, DockerfilePath, Domain, EnvName, GitRef, HealthCheck, HealthKind, HttpPath,
    ImageRef, MAX_DURATION, MAX_RUNTIME_ITEMS, RepoUrl, RuntimeOptions, Secret, Source, Transport, VolumeSource,
};

use crate::args::{DeployArgs, RuntimeArgs};
use crate::exit::Invalid;
use crate::files;

fn invalid(flag: &str) -> impl Fn(otturnaut_core::Error) -> Invalid + '_ {
    move |e| Invalid::new(flag, e.to_string())
}

pub fn app_id(raw: &str) -> Result<AppId, Invalid> {
    raw.parse().map_err(invalid("APP"))
}

pub fn deployment_id(flag: &str, raw: &str) -> Result<otturnaut_core::DeploymentId, Invalid> {
    raw.parse().map_err(invalid(flag))
}

/// The most `--domain`s a deploy takes: each one is a matcher in Caddy.
pub const MAX_DOMAINS: usize = 100;

/// The most env variables (from `--env` and `--env-file` together) and,
/// separately, the most build args.
pub const MAX_ENV: usize = 1000;

pub fn deploy_spec(args: &DeployArgs) -> Result<DeploySpec, Invalid> {
    let Some(path) = &args.spec else {
        return flags_spec(args);
    };
    let mut merged = args.clone();
    let origin = crate::specfile::merge(path, &mut merged)?;
    flags_spec(&merged).map_err(|e| origin.locate(e))
}

fn flags_spec(args: &DeployArgs) -> Result<DeploySpec, Invalid> {
    let app = app_id(&args.app)?;
    let source = source(args)?;
    let container_port: ContainerPort = args
        .container_port
        .as_deref()
        .ok_or_else(|| Invalid::new("--container-port", "required (as a flag or container_port in --spec)"))?
        .parse()
        .map_err(invalid("--container-port"))?;
    let mut spec = DeploySpec::new(app, source, container_port);

    if args.domains.len() > MAX_DOMAINS {
        return Err(Invalid::new("--domain", format!("{} domains given; at most {MAX_DOMAINS}", args.domains.len())));
    }
    for raw in &args.domains {
        let domain: Domain = raw.parse().map_err(invalid("--domain"))?;
        if !spec.domains.contains(&domain) {
            spec.domains.push(domain);
        }
    }

    if let Some(file) = &args.env_file {
        spec.env = key_value_file("--env-file", file)?;
    }
    for raw in &args.env {
        let (name, value) = key_value("--env", raw)?;
        spec.env.insert(name, value);
    }
    if spec.env.len() > MAX_ENV {
        return Err(Invalid::new("--env/--env-file", format!("{} variables; at most {MAX_ENV}", spec.env.len())));
    }

    spec.health = HealthCheck::new(health_kind(args.health.as_deref().unwrap_or("tcp"))?);
    if let Some(raw) = &args.health_timeout {
        spec.health.deadline = duration("--health-timeout", raw)?;
    }
    if let Some(raw) = &args.pull_timeout {
        spec.timeouts.pull = duration("--pull-timeout", raw)?;
    }
    let r = &args.runtime;
    if let Some(raw) = &r.stop_timeout {
        spec.timeouts.stop = duration("--stop-timeout", raw)?;
    }
    if let Some(raw) = &r.drain_timeout {
        spec.timeouts.drain = duration("--drain-timeout", raw)?;
    }
    spec.runtime = runtime_options(r)?;
    spec.check_limits().map_err(invalid("deploy"))?;
    Ok(spec)
}

/// The `Runtime` flags; a bind mount's host path must exist now.
pub fn runtime_options(r: &RuntimeArgs) -> Result<RuntimeOptions, Invalid> {
    fn each<T: std::str::FromStr<Err = otturnaut_core::Error>>(flag: &str, raw: &[String]) -> Result<Vec<T>, Invalid> {
        if raw.len() > MAX_RUNTIME_ITEMS {
            return Err(Invalid::new(flag, format!("given {} times; at most {MAX_RUNTIME_ITEMS}", raw.len())));
        }
        raw.iter().map(|v| v.parse().map_err(invalid(flag))).collect()
    }
    fn one<T: std::str::FromStr<Err = otturnaut_core::Error>>(
        flag: &str,
        raw: &Option<String>,
    ) -> Result<Option<T>, Invalid> {
        raw.as_deref().map(|v| v.parse().map_err(invalid(flag))).transpose()
    }
    let options = RuntimeOptions {
        volumes: each("--volume", &r.volumes)?,
        memory: one("--memory", &r.memory)?,
        cpus: one("--cpus", &r.cpus)?,
        pids_limit: one("--pids-limit", &r.pids_limit)?,
        networks: each("--network", &r.networks)?,
        command: one("--command", &r.command)?,
        entrypoint: one("--entrypoint", &r.entrypoint)?,
        log_opts: each("--log-opt", &r.log_opts)?,
    };
    for v in &options.volumes {
        if let VolumeSource::Bind(path) = &v.source
            && let Err(e) = std::fs::metadata(path)
        {
            return Err(Invalid::new("--volume", format!("{v}: the host path {path} cannot be used: {e}")));
        }
    }
    options.check().map_err(|e| {
        let flag = match &e {
            otturnaut_core::Error::Invalid { what: "network name", .. } => "--network",
            otturnaut_core::Error::Invalid { what: "log option", .. } => "--log-opt",
            _ => "--volume",
        };
        Invalid::new(flag, e.to_string())
    })?;
    Ok(options)
}

fn source(args: &DeployArgs) -> Result<Source, Invalid> {
    match (&args.repo, &args.image) {
        (Some(repo), None) => {
            if args.pull_timeout.is_some() {
                return Err(Invalid::new("--pull-timeout", "only applies to an --image deploy"));
            }
            let mut url = RepoUrl::parse_allowing_file(repo).map_err(invalid("--repo"))?;
            if url.transport() == Transport::Git && !args.allow_insecure_git && !url.host().is_some_and(is_loopback) {
                return Err(Invalid::new(
                    "--repo",
                    format!(
                        "{url}: git:// is neither authenticated nor encrypted, so anyone on the path can change \
                         what gets deployed; use https:// or ssh://, or pass --allow-insecure-git"
                    ),
                ));
            }
            if let Some(path) = &args.repo_credentials_file {
                let flag = "--repo-credentials-file";
                let text = files::read_capped(path, files::MAX_KEY_FILE).map_err(|m| Invalid::new(flag, m))?;
                let credentials = Secret::new(text.trim_end_matches(['\n', '\r']));
                url = url.with_credentials(&credentials).map_err(invalid(flag))?;
            }
            let git_ref: GitRef = match &args.git_ref {
                Some(r) => r.parse().map_err(invalid("--ref"))?,
                None => GitRef::default(),
            };
            let dockerfile: DockerfilePath = match &args.dockerfile {
                Some(d) => d.parse().map_err(invalid("--dockerfile"))?,
                None => DockerfilePath::default(),
            };
            // Docker takes any ARG name; holding them to env-name rules
            // keeps odd characters out of the build request.
            let mut build_args = BTreeMap::new();
            if let Some(file) = &args.build_arg_file {
                build_args = key_value_file("--build-arg-file", file)?;
            }
            for raw in &args.build_args {
                let (name, value) = key_value("--build-arg", raw)?;
                build_args.insert(name, value);
            }
            if build_args.len() > MAX_ENV {
                return Err(Invalid::new("--build-arg", format!("{} build args; at most {MAX_ENV}", build_args.len())));
            }
            let build_args = build_args.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            let ssh_key = match &args.ssh_key {
                Some(path) => Some(Secret::new(
                    files::read_capped(path, files::MAX_KEY_FILE).map_err(|m| Invalid::new("--ssh-key", m))?,
                )),
                None => None,
            };
            let build_secrets = build_secrets(&args.build_secrets)?;
            Ok(Source::Git { url, git_ref, dockerfile, build_args, build_secrets, ssh_key })
        }
        (None, Some(image)) => {
            let git_only = [
                ("--ref", args.git_ref.is_some()),
                ("--dockerfile", args.dockerfile.is_some()),
                ("--build-arg", !args.build_args.is_empty()),
                ("--build-arg-file", args.build_arg_file.is_some()),
                ("--build-secret", !args.build_secrets.is_empty()),
                ("--repo-credentials-file", args.repo_credentials_file.is_some()),
                ("--ssh-key", args.ssh_key.is_some()),
            ];
            if let Some((flag, _)) = git_only.iter().find(|(_, given)| *given) {
                return Err(Invalid::new(*flag, "only applies to a --repo deploy, not to an --image one"));
            }
            Ok(Source::Image { reference: image.parse::<ImageRef>().map_err(invalid("--image"))? })
        }
        // clap's argument group already refuses these; kept for a clear message anyway.
        (Some(_), Some(_)) => Err(Invalid::new("--repo/--image", "give either --repo or --image, not both")),
        (None, None) => Err(Invalid::new(
            "--repo/--image",
            "a source is required: give --repo URL or --image IMAGE (or repo or image in --spec)",
        )),
    }
}

/// The most `--build-secret`s, and the largest file one takes (BuildKit's
/// session refuses bigger secrets).
pub const MAX_BUILD_SECRETS: usize = 100;
pub const MAX_BUILD_SECRET_FILE: u64 = 500 * 1024;

/// `ID=FILE` pairs: the id as `RUN --mount=type=secret,id=ID` names it
/// (letters, digits, `_`, `.`, `-`; at most 64), the file's contents secret.
fn build_secrets(raw: &[String]) -> Result<BTreeMap<String, Secret>, Invalid> {
    let flag = "--build-secret";
    if raw.len() > MAX_BUILD_SECRETS {
        return Err(Invalid::new(flag, format!("given {} times; at most {MAX_BUILD_SECRETS}", raw.len())));
    }
    let mut secrets = BTreeMap::new();
    for pair in raw {
        let Some((id, file)) = pair.split_once('=') else {
            return Err(Invalid::new(flag, format!("{pair:?}: expected ID=FILE")));
        };
        let id_ok = (1..=64).contains(&id.len())
            && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !id_ok {
            return Err(Invalid::new(
                flag,
                format!("{:?}: the id must be 1 to 64 letters, digits, '_', '.' or '-'", name_like_prefix(id)),
            ));
        }
        let text = files::read_capped(Path::new(file), MAX_BUILD_SECRET_FILE).map_err(|m| Invalid::new(flag, m))?;
        if secrets.insert(id.to_owned(), Secret::new(text)).is_some() {
            return Err(Invalid::new(flag, format!("the id {id} is given twice")));
        }
    }
    Ok(secrets)
}

/// `localhost`, `127.x.y.z` or `::1`: a git:// server on this machine, which
/// nobody can tamper with on the way.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `KEY=VALUE` with the value kept secret. Without `=` the whole argument
/// may be a value typed in the wrong place: not shown. With one, the "key"
/// may still hold a value behind another separator (`DB:postgres://u:p@h/db?x=1`),
/// so a message shows at most its name-like start: letters, digits and `_`
/// up to the first other character.
fn key_value(flag: &str, raw: &str) -> Result<(EnvName, Secret), Invalid> {
    let (key, value) = raw.split_once('=').ok_or_else(|| {
        Invalid::new(flag, "expected KEY=VALUE, got an argument without '=' (not shown: it may hold a secret)")
    })?;
    let name = env_name(key).map_err(|m| Invalid::new(flag, m))?;
    let value = Secret::new(value);
    check_value(&name, &value).map_err(|m| Invalid::new(flag, m))?;
    Ok((name, value))
}

/// The letters, digits and `_` an argument starts with: all of it that is
/// safe to repeat in a message.
fn name_like_prefix(raw: &str) -> String {
    raw.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect()
}

fn env_name(key: &str) -> Result<EnvName, String> {
    key.parse::<EnvName>().map_err(|e| {
        let shown = name_like_prefix(key);
        if shown.len() == key.len() {
            // Only letters, digits and '_': nothing in it can be a value.
            e.to_string()
        } else {
            format!(
                "the name starting {shown:?} holds a character other than letters, digits and '_' \
                 (the rest is not shown: it may hold a secret)"
            )
        }
    })
}

fn check_value(name: &EnvName, value: &Secret) -> Result<(), String> {
    if value.expose().contains('\0') {
        return Err(format!("the value of {name} contains a NUL byte, which cannot be passed on"));
    }
    Ok(())
}

/// A file of `KEY=VALUE` lines, as `docker run --env-file` reads them: the
/// value is everything after the first `=`, verbatim; blank lines and lines
/// starting with `#` are skipped; an `export ` prefix is allowed. At most
/// 1 MiB and [`MAX_ENV`] entries.
pub fn key_value_file(flag: &str, path: &Path) -> Result<BTreeMap<EnvName, Secret>, Invalid> {
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
        let name = env_name(key.trim_end()).map_err(|m| Invalid::new(flag, format!("{}: {m}", at())))?;
        let value = Secret::new(value);
        check_value(&name, &value).map_err(|m| Invalid::new(flag, format!("{}: {m}", at())))?;
        env.insert(name, value);
        if env.len() > MAX_ENV {
            return Err(Invalid::new(flag, format!("{} has more than {MAX_ENV} entries", path.display())));
        }
    }
    Ok(env)
}

/// `running`, `tcp`, `http` (GET /) or `http:/PATH`.
pub fn health_kind(raw: &str) -> Result<HealthKind, Invalid> {
    let flag = "--health";
    match raw {
        "running" => Ok(HealthKind::Running),
        "tcp" => Ok(HealthKind::Tcp),
        "http" => Ok(HealthKind::Http { path: HttpPath::try_from("/").map_err(invalid(flag))?, expected_status: 200 }),
        _ => match raw.strip_prefix("http:") {
            Some(path) => Ok(HealthKind::Http { path: path.parse().map_err(invalid(flag))?, expected_status: 200 }),
            None => Err(Invalid::new(flag, format!("{raw:?} is not a health check; use running, tcp or http:/PATH"))),
        },
    }
}

/// `30s`, `2m`, `1m30s`, `500ms`; above zero and at most 24 hours.
pub fn duration(flag: &str, raw: &str) -> Result<Duration, Invalid> {
    let shown: String = raw.chars().take(64).collect();
    let d = humantime::parse_duration(raw)
        .map_err(|e| Invalid::new(flag, format!("{shown:?} is not a duration ({e}); use e.g. 30s, 2m or 1m30s")))?;
    if d.is_zero() {
        return Err(Invalid::new(flag, format!("{shown:?} must be longer than zero")));
    }
    if d > MAX_DURATION {
        return Err(Invalid::new(
            flag,
            format!("{shown:?} is longer than the maximum, {}", humantime::format_duration(MAX_DURATION)),
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

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
