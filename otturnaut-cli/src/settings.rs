//! The agent's settings, from flags, the environment, a config file and
//! defaults, in that order of precedence.

use std::path::{Path, PathBuf};

use otturnaut_adapters::caddy::{Caddy, CaddyConfig};
use otturnaut_adapters::swarm::{DEFAULT_REPLICAS, SwarmConfig};
use otturnaut_adapters::{AgentConfig, RuntimeKind};
use otturnaut_core::PortRange;
use serde::Deserialize;

use crate::args::GlobalArgs;
use crate::exit::Invalid;
use crate::files;

/// The config file's keys: the global flags' names with `_`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    caddy_admin: Option<String>,
    listen: Option<Listen>,
    no_auto_https: Option<bool>,
    port_range: Option<String>,
    work_dir: Option<PathBuf>,
    ssh_known_hosts: Option<PathBuf>,
    api_listen: Option<String>,
    token_file: Option<PathBuf>,
    keep: Option<u64>,
    runtime: Option<String>,
    replicas: Option<u64>,
    registry: Option<String>,
}

/// `listen = ":80,:443"` or `listen = [":80", ":443"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Listen {
    One(String),
    Many(Vec<String>),
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub agent: AgentConfig,
    /// How many releases besides the live one are kept for a rollback.
    pub keep: usize,
    /// `serve`'s keys of the config file, with the file they came from.
    pub file_api_listen: Option<(String, String)>,
    pub file_token_file: Option<(PathBuf, String)>,
}

/// The most releases `--keep` accepts: each one is an image and a container on disk.
const MAX_KEEP: usize = 100;

impl Settings {
    pub fn locks_dir(&self) -> PathBuf {
        self.agent.work_dir.join("locks")
    }
}

/// Resolves every setting; `env` looks up an environment variable.
pub fn resolve(args: &GlobalArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, Invalid> {
    let config_path =
        args.config.clone().or_else(|| env("OTTURNAUT_CONFIG").filter(|s| !s.is_empty()).map(PathBuf::from));
    let file = match &config_path {
        Some(path) => read_file(path)?,
        None => FileConfig::default(),
    };
    let config_path = config_path.unwrap_or_default();
    let defaults = AgentConfig::default();

    // Each value with a description of where it came from, for error messages.
    let pick = |flag_value: Option<String>, flag: &'static str, var: &'static str, file_value: Option<String>| {
        if let Some(v) = flag_value {
            return Some((v, flag.to_owned()));
        }
        if let Some(v) = env(var).filter(|v| !v.is_empty()) {
            return Some((v, var.to_owned()));
        }
        let key = flag.trim_start_matches("--").replace('-', "_");
        file_value.map(|v| (v, format!("{key} in {}", config_path.display())))
    };

    let caddy_admin = match pick(args.caddy_admin.clone(), "--caddy-admin", "OTTURNAUT_CADDY_ADMIN", file.caddy_admin) {
        Some((v, from)) => {
            check_caddy_admin(&v).map_err(|m| Invalid::new(from, m))?;
            v
        }
        None => defaults.caddy_admin.clone(),
    };

    let file_listen = file.listen.map(|l| match l {
        Listen::One(s) => s,
        Listen::Many(v) => v.join(","),
    });
    let listen = match pick(args.listen.clone(), "--listen", "OTTURNAUT_LISTEN", file_listen) {
        Some((v, from)) => parse_listen(&v).map_err(|m| Invalid::new(from, m))?,
        None => defaults.listen.clone(),
    };

    let no_auto_https = if args.no_auto_https {
        true
    } else if let Some(v) = env("OTTURNAUT_NO_AUTO_HTTPS") {
        parse_bool(&v).ok_or_else(|| {
            Invalid::new("OTTURNAUT_NO_AUTO_HTTPS", format!("{v:?} is not a yes/no value; use 1 or 0"))
        })?
    } else {
        file.no_auto_https.unwrap_or(false)
    };

    let port_range = match pick(args.port_range.clone(), "--port-range", "OTTURNAUT_PORT_RANGE", file.port_range) {
        Some((v, from)) => v.parse::<PortRange>().map_err(|e| Invalid::new(from, e.to_string()))?,
        None => defaults.port_range,
    };

    let work_dir = match pick(
        args.work_dir.as_ref().map(|p| p.display().to_string()),
        "--work-dir",
        "OTTURNAUT_WORK_DIR",
        file.work_dir.map(|p| p.display().to_string()),
    ) {
        Some((v, from)) => {
            let path = PathBuf::from(&v);
            std::path::absolute(&path).map_err(|e| Invalid::new(from, format!("{v:?}: {e}")))?
        }
        None => defaults.work_dir.clone(),
    };

    let ssh_known_hosts = match pick(
        args.ssh_known_hosts.as_ref().map(|p| p.display().to_string()),
        "--ssh-known-hosts",
        "OTTURNAUT_SSH_KNOWN_HOSTS",
        file.ssh_known_hosts.map(|p| p.display().to_string()),
    ) {
        Some((v, from)) => {
            let path =
                std::path::absolute(PathBuf::from(&v)).map_err(|e| Invalid::new(&from, format!("{v:?}: {e}")))?;
            // Read once now so that a missing or unreadable file is an input error.
            files::read_capped(&path, files::MAX_SETTINGS_FILE).map_err(|m| Invalid::new(from, m))?;
            Some(path)
        }
        None => None,
    };

    let keep = match pick(args.keep.clone(), "--keep", "OTTURNAUT_KEEP", file.keep.map(|k| k.to_string())) {
        Some((v, from)) => parse_keep(&v).map_err(|m| Invalid::new(from, m))?,
        None => otturnaut_steps::DEFAULT_KEEP,
    };

    let runtime = pick(args.runtime.clone(), "--runtime", "OTTURNAUT_RUNTIME", file.runtime);
    let replicas =
        pick(args.replicas.clone(), "--replicas", "OTTURNAUT_REPLICAS", file.replicas.map(|r| r.to_string()));
    let registry = pick(args.registry.clone(), "--registry", "OTTURNAUT_REGISTRY", file.registry);
    let runtime = parse_runtime(runtime, replicas, registry)?;

    let agent = AgentConfig {
        runtime,
        caddy_admin,
        listen,
        auto_https: !no_auto_https,
        port_range,
        work_dir,
        ssh_known_hosts,
        keep,
        ..defaults
    };
    // The adapter's own checks, run now so that a bad value is reported before
    // anything connects.
    Caddy::new(CaddyConfig {
        admin_url: agent.caddy_admin.clone(),
        listen: agent.listen.clone(),
        automatic_https: agent.auto_https,
        ..CaddyConfig::default()
    })
    .map_err(|e| Invalid::new("--caddy-admin/--listen", e.to_string()))?;
    let from = |key: &str| format!("{key} in {}", config_path.display());
    Ok(Settings {
        agent,
        keep,
        file_api_listen: file.api_listen.map(|v| (v, from("api_listen"))),
        file_token_file: file.token_file.map(|v| (v, from("token_file"))),
    })
}

fn read_file(path: &Path) -> Result<FileConfig, Invalid> {
    let flag = "--config";
    let text = files::read_capped(path, files::MAX_SETTINGS_FILE).map_err(|m| Invalid::new(flag, m))?;
    toml::from_str(&text).map_err(|e| Invalid::new(flag, format!("{} is not a valid config file: {e}", path.display())))
}

/// The most tasks a release may ask for: each runs on a node of its own.
const MAX_REPLICAS: u32 = 1000;

/// `docker`, or `swarm` with its replicas and registry; the Swarm settings
/// are refused with the Docker runtime rather than silently ignored.
fn parse_runtime(
    runtime: Option<(String, String)>,
    replicas: Option<(String, String)>,
    registry: Option<(String, String)>,
) -> Result<RuntimeKind, Invalid> {
    let swarm = match &runtime {
        None => false,
        Some((v, from)) => match v.trim() {
            "docker" => false,
            "swarm" => true,
            _ => return Err(Invalid::new(from, format!("{v:?} is not a runtime: docker or swarm"))),
        },
    };
    if !swarm {
        if let Some((_, from)) = replicas.as_ref().or(registry.as_ref()) {
            return Err(Invalid::new(from, "only the Swarm runtime takes it (--runtime swarm)"));
        }
        return Ok(RuntimeKind::Docker);
    }
    let replicas = match replicas {
        None => DEFAULT_REPLICAS,
        Some((v, from)) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_REPLICAS).contains(n))
            .ok_or_else(|| Invalid::new(from, format!("{v:?} is not a number of tasks from 1 to {MAX_REPLICAS}")))?,
    };
    let (registry, from) = registry.ok_or_else(|| {
        Invalid::new("--registry", "the Swarm runtime needs the registry its nodes pull from (HOST:PORT)")
    })?;
    otturnaut_adapters::swarm::check_registry(&registry).map_err(|e| Invalid::new(from, e.to_string()))?;
    Ok(RuntimeKind::Swarm(SwarmConfig {
        registry,
        replicas: std::num::NonZeroU32::new(replicas).unwrap_or(std::num::NonZeroU32::MIN),
    }))
}

fn parse_keep(v: &str) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_KEEP).contains(&n) => Ok(n),
        _ => Err(format!(
            "{v:?} is not a number of releases from 1 to {MAX_KEEP} (how many besides the live one are kept)"
        )),
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

fn check_caddy_admin(v: &str) -> Result<(), String> {
    if v.starts_with("http://") || v.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("{v:?} must be an http:// URL, e.g. http://127.0.0.1:2019"))
    }
}

/// `:80,:443` or `127.0.0.1:8080`: Caddy network addresses, each `[HOST]:PORT`.
fn parse_listen(v: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let several = v.contains(',');
    for addr in v.split(',').map(str::trim) {
        let bad = |why: &str| {
            let which = if several { format!("{addr:?} in {v:?}") } else { format!("{addr:?}") };
            Err(format!("{which} {why}; use e.g. :80,:443 or 127.0.0.1:8080"))
        };
        if addr.is_empty() {
            return bad("is empty");
        }
        let Some((host, port)) = addr.rsplit_once(':') else {
            return bad("has no :PORT");
        };
        if host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
            return bad("has an invalid host");
        }
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return bad("has no valid port (1-65535)");
        }
        out.push(addr.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = resolve(&GlobalArgs::default(), &env_of(&[])).expect("defaults are valid");
        assert_eq!(s.agent.caddy_admin, "http://127.0.0.1:2019");
        assert_eq!(s.agent.listen, [":80", ":443"]);
        assert!(s.agent.auto_https);
        assert_eq!(s.agent.port_range, PortRange::default());
        assert_eq!(s.agent.work_dir, PathBuf::from("/var/lib/otturnaut"));
        assert_eq!(s.locks_dir(), PathBuf::from("/var/lib/otturnaut/locks"));
    }

    #[test]
    fn the_swarm_runtime_comes_from_flag_env_or_file_and_needs_a_registry() {
        assert_eq!(resolve(&GlobalArgs::default(), &env_of(&[])).expect("default").agent.runtime, RuntimeKind::Docker);
        let env = env_of(&[("OTTURNAUT_RUNTIME", "swarm"), ("OTTURNAUT_REGISTRY", "10.0.0.5:5000")]);
        let swarm = resolve(&GlobalArgs::default(), &env).expect("swarm from the environment").agent.runtime;
        let RuntimeKind::Swarm(config) = swarm else { panic!("not the Swarm runtime: {swarm:?}") };
        assert_eq!((config.registry.as_str(), config.replicas.get()), ("10.0.0.5:5000", DEFAULT_REPLICAS));

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("otturnaut.toml");
        std::fs::write(&file, "runtime = \"swarm\"\nregistry = \"reg.example.com:443\"\nreplicas = 3\n")
            .expect("write");
        let from_file = GlobalArgs { config: Some(file), ..GlobalArgs::default() };
        let RuntimeKind::Swarm(config) = resolve(&from_file, &env_of(&[])).expect("file").agent.runtime else {
            panic!("the file asks for the Swarm runtime")
        };
        assert_eq!(config.replicas.get(), 3);
        let flag = GlobalArgs { replicas: Some("5".into()), ..from_file };
        let RuntimeKind::Swarm(config) = resolve(&flag, &env_of(&[])).expect("flag").agent.runtime else {
            panic!("still the Swarm runtime")
        };
        assert_eq!(config.replicas.get(), 5, "the flag beats the file");

        let bad =
            |args: GlobalArgs, env: &[(&str, &str)]| resolve(&args, &env_of(env)).expect_err("refused").to_string();
        let swarm = || GlobalArgs { runtime: Some("swarm".into()), ..GlobalArgs::default() };
        assert!(bad(swarm(), &[]).contains("--registry"), "a registry is required");
        assert!(
            bad(GlobalArgs { runtime: Some("k8s".into()), ..GlobalArgs::default() }, &[]).contains("docker or swarm")
        );
        assert!(bad(GlobalArgs { registry: Some("r:1".into()), ..GlobalArgs::default() }, &[]).contains("--registry"));
        assert!(bad(swarm(), &[("OTTURNAUT_REGISTRY", "no-port")]).contains("OTTURNAUT_REGISTRY"));
        let zero = GlobalArgs { replicas: Some("0".into()), registry: Some("r:1".into()), ..swarm() };
        assert!(bad(zero, &[]).contains("--replicas"));
    }

    #[test]
    fn keep_comes_from_flag_env_or_file_and_is_at_least_one() {
        assert_eq!(resolve(&GlobalArgs::default(), &env_of(&[])).expect("default").keep, 5);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("otturnaut.toml");
        std::fs::write(&file, "keep = 3\n").expect("write config");
        let from_file = GlobalArgs { config: Some(file), ..GlobalArgs::default() };
        assert_eq!(resolve(&from_file, &env_of(&[])).expect("file").keep, 3);
        assert_eq!(resolve(&from_file, &env_of(&[("OTTURNAUT_KEEP", "7")])).expect("env").keep, 7);
        let flag = GlobalArgs { keep: Some("2".into()), ..from_file };
        assert_eq!(resolve(&flag, &env_of(&[("OTTURNAUT_KEEP", "7")])).expect("flag").keep, 2);
        for bad in ["0", "-1", "many", "101", ""] {
            let args = GlobalArgs { keep: Some(bad.into()), ..GlobalArgs::default() };
            let e = resolve(&args, &env_of(&[])).expect_err(bad).to_string();
            assert!(e.contains("--keep") && e.contains("1 to 100"), "{bad}: {e}");
        }
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("otturnaut.toml");
        std::fs::write(
            &file,
            "caddy_admin = \"http://127.0.0.1:3000\"\nlisten = [\"127.0.0.1:81\"]\nno_auto_https = true\n\
             port_range = \"30000-30010\"\nwork_dir = \"/srv/from-file\"\n",
        )
        .expect("write config");
        let from_file = GlobalArgs { config: Some(file.clone()), ..GlobalArgs::default() };
        let s = resolve(&from_file, &env_of(&[])).expect("file config");
        assert_eq!(s.agent.caddy_admin, "http://127.0.0.1:3000");
        assert_eq!(s.agent.listen, ["127.0.0.1:81"]);
        assert!(!s.agent.auto_https);
        assert_eq!(s.agent.port_range.to_string(), "30000-30010");
        assert_eq!(s.agent.work_dir, PathBuf::from("/srv/from-file"));

        let env = env_of(&[
            ("OTTURNAUT_CONFIG", file.to_str().expect("utf-8 path")),
            ("OTTURNAUT_LISTEN", ":8080,:8443"),
            ("OTTURNAUT_NO_AUTO_HTTPS", "0"),
            ("OTTURNAUT_PORT_RANGE", "31000-31010"),
        ]);
        let s = resolve(&GlobalArgs::default(), &env).expect("env over file");
        assert_eq!(s.agent.caddy_admin, "http://127.0.0.1:3000", "the file named by OTTURNAUT_CONFIG is read");
        assert_eq!(s.agent.listen, [":8080", ":8443"]);
        assert!(s.agent.auto_https, "OTTURNAUT_NO_AUTO_HTTPS=0 overrides the file's true");
        assert_eq!(s.agent.port_range.to_string(), "31000-31010");

        let flags = GlobalArgs {
            listen: Some("127.0.0.1:9000".into()),
            no_auto_https: true,
            port_range: Some("32000-32010".into()),
            ..GlobalArgs::default()
        };
        let s = resolve(&flags, &env).expect("flags over env");
        assert_eq!(s.agent.listen, ["127.0.0.1:9000"]);
        assert!(!s.agent.auto_https);
        assert_eq!(s.agent.port_range.to_string(), "32000-32010");
    }

    #[test]
    fn bad_values_name_where_they_came_from() {
        let err =
            |args: GlobalArgs, env: &[(&str, &str)]| resolve(&args, &env_of(env)).expect_err("invalid").to_string();
        let e = err(GlobalArgs { port_range: Some("80-90".into()), ..Default::default() }, &[]);
        assert!(e.starts_with("--port-range") && e.contains("80-90"), "{e}");
        let e = err(GlobalArgs::default(), &[("OTTURNAUT_PORT_RANGE", "x")]);
        assert!(e.starts_with("OTTURNAUT_PORT_RANGE"), "{e}");
        let e = err(GlobalArgs { listen: Some("nowhere".into()), ..Default::default() }, &[]);
        assert!(e.starts_with("--listen") && e.contains("nowhere"), "{e}");
        let e = err(GlobalArgs { caddy_admin: Some("127.0.0.1:2019".into()), ..Default::default() }, &[]);
        assert!(e.starts_with("--caddy-admin"), "{e}");
        let e = err(GlobalArgs::default(), &[("OTTURNAUT_NO_AUTO_HTTPS", "maybe")]);
        assert!(e.starts_with("OTTURNAUT_NO_AUTO_HTTPS"), "{e}");
        let e = err(GlobalArgs { config: Some("/nonexistent/otturnaut.toml".into()), ..Default::default() }, &[]);
        assert!(e.starts_with("--config") && e.contains("/nonexistent/otturnaut.toml"), "{e}");
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "listen_on = \":80\"\n").expect("write");
        let e = resolve(&GlobalArgs { config: Some(file), ..Default::default() }, &env_of(&[]))
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("listen_on"), "{e}");
    }

    #[test]
    fn a_relative_work_dir_is_made_absolute() {
        let s = resolve(&GlobalArgs { work_dir: Some("w".into()), ..Default::default() }, &env_of(&[])).expect("ok");
        assert!(s.agent.work_dir.is_absolute());
    }
}
