//! `deploy`'s arguments turned into a [`DeploySpec`]. Every value is checked
//! here, before anything connects or creates a file; a bad one is reported
//! with its flag. Values of `--env`, `--env-file` and `--build-arg` are
//! secrets: messages name only their keys.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use otturnaut_core::{
    AppId, ContainerPort, DeploySpec, DockerfilePath, Domain, EnvName, GitRef, HealthCheck, HealthKind, HttpPath,
    ImageRef, RepoUrl, Secret, Source,
};

use crate::args::DeployArgs;
use crate::exit::Invalid;

fn invalid(flag: &str) -> impl Fn(otturnaut_core::Error) -> Invalid + '_ {
    move |e| Invalid::new(flag, e.to_string())
}

pub fn app_id(raw: &str) -> Result<AppId, Invalid> {
    raw.parse().map_err(invalid("APP"))
}

pub fn deploy_spec(args: &DeployArgs) -> Result<DeploySpec, Invalid> {
    let app = app_id(&args.app)?;
    let source = source(args)?;
    let container_port: ContainerPort = args.container_port.parse().map_err(invalid("--container-port"))?;
    let mut spec = DeploySpec::new(app, source, container_port);

    for raw in &args.domains {
        let domain: Domain = raw.parse().map_err(invalid("--domain"))?;
        if !spec.domains.contains(&domain) {
            spec.domains.push(domain);
        }
    }

    if let Some(file) = &args.env_file {
        spec.env = env_file(file)?;
    }
    for raw in &args.env {
        let (name, value) = key_value("--env", raw)?;
        let name: EnvName = name.parse().map_err(invalid("--env"))?;
        check_value("--env", &name, &value)?;
        spec.env.insert(name, value);
    }

    spec.health = HealthCheck::new(health_kind(&args.health)?);
    if let Some(raw) = &args.health_timeout {
        spec.health.deadline = duration("--health-timeout", raw)?;
    }
    Ok(spec)
}

fn source(args: &DeployArgs) -> Result<Source, Invalid> {
    match (&args.repo, &args.image) {
        (Some(repo), None) => {
            let url = RepoUrl::parse_allowing_file(repo).map_err(invalid("--repo"))?;
            let git_ref: GitRef = match &args.git_ref {
                Some(r) => r.parse().map_err(invalid("--ref"))?,
                None => GitRef::default(),
            };
            let dockerfile: DockerfilePath = match &args.dockerfile {
                Some(d) => d.parse().map_err(invalid("--dockerfile"))?,
                None => DockerfilePath::default(),
            };
            let mut build_args = BTreeMap::new();
            for raw in &args.build_args {
                let (name, value) = key_value("--build-arg", raw)?;
                // Docker takes any ARG name; holding them to env-name rules
                // keeps odd characters out of the build request.
                let checked: EnvName = name.parse().map_err(invalid("--build-arg"))?;
                check_value("--build-arg", &checked, &value)?;
                build_args.insert(name, value);
            }
            let ssh_key = match &args.ssh_key {
                Some(path) => Some(Secret::new(
                    std::fs::read_to_string(path)
                        .map_err(|e| Invalid::new("--ssh-key", format!("cannot read {}: {e}", path.display())))?,
                )),
                None => None,
            };
            Ok(Source::Git { url, git_ref, dockerfile, build_args, ssh_key })
        }
        (None, Some(image)) => Ok(Source::Image { reference: image.parse::<ImageRef>().map_err(invalid("--image"))? }),
        // clap's argument group already refuses these; kept for a clear message anyway.
        (Some(_), Some(_)) => Err(Invalid::new("--repo/--image", "give either --repo or --image, not both")),
        (None, None) => Err(Invalid::new("--repo/--image", "give --repo URL or --image IMAGE")),
    }
}

/// `KEY=VALUE`, the value kept secret. Without `=` the whole argument may be
/// a value typed in the wrong place, so it is not shown.
fn key_value(flag: &str, raw: &str) -> Result<(String, Secret), Invalid> {
    match raw.split_once('=') {
        Some((key, value)) => Ok((key.to_owned(), Secret::new(value))),
        None => {
            Err(Invalid::new(flag, "expected KEY=VALUE, got an argument without '=' (not shown: it may hold a secret)"))
        }
    }
}

fn check_value(flag: &str, name: &EnvName, value: &Secret) -> Result<(), Invalid> {
    if value.expose().contains('\0') {
        return Err(Invalid::new(flag, format!("the value of {name} contains a NUL byte, which cannot be passed on")));
    }
    Ok(())
}

/// A file of `KEY=VALUE` lines, as `docker run --env-file` reads them: the
/// value is everything after the first `=`, verbatim; blank lines and lines
/// starting with `#` are skipped; an `export ` prefix is allowed.
pub fn env_file(path: &Path) -> Result<BTreeMap<EnvName, Secret>, Invalid> {
    let flag = "--env-file";
    let text = std::fs::read_to_string(path)
        .map_err(|e| Invalid::new(flag, format!("cannot read {}: {e}", path.display())))?;
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
        let name: EnvName = key.trim_end().parse().map_err(|e| Invalid::new(flag, format!("{}: {e}", at())))?;
        let value = Secret::new(value);
        check_value(flag, &name, &value).map_err(|e| Invalid::new(flag, format!("{}: {}", at(), e.message)))?;
        env.insert(name, value);
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

/// `30s`, `2m`, `1m30s`, `500ms`.
pub fn duration(flag: &str, raw: &str) -> Result<Duration, Invalid> {
    let d = humantime::parse_duration(raw)
        .map_err(|e| Invalid::new(flag, format!("{raw:?} is not a duration ({e}); use e.g. 30s, 2m or 1m30s")))?;
    if d.is_zero() {
        return Err(Invalid::new(flag, format!("{raw:?} must be longer than zero")));
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
        assert!(e.contains("line 1") && e.contains("BAD-NAME") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn a_missing_env_file_is_named() {
        let e = err(&["a", "--image", "x", "--container-port", "80", "--env-file", "/nonexistent/app.env"]);
        assert!(e.starts_with("--env-file") && e.contains("/nonexistent/app.env"), "{e}");
    }
}
