//! `otturnaut serve`: checks its settings (exit 2 before anything listens),
//! connects, and hands over to `otturnaut-daemon`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use otturnaut_core::{AppId, Secret};
use otturnaut_daemon::{ServeConfig, Tls};
use tokio::signal::unix::{SignalKind, signal};

use crate::args::{GlobalArgs, ServeArgs};
use crate::exit::{Exit, Fatal, Invalid};
use crate::output::Out;
use crate::{connect, env_var, files, input, print_fatal, settings};

/// Where the API listens unless told otherwise: this machine only.
const DEFAULT_API_LISTEN: &str = "127.0.0.1:7400";

/// How often the background watch looks at Caddy.
const WATCH_EVERY: Duration = Duration::from_secs(5);

pub async fn run(global: &GlobalArgs, args: ServeArgs) -> Exit {
    let out = Out::new(false);
    match serve(global, args).await {
        Ok(exit) => exit,
        Err(fatal) => {
            print_fatal(&out, &fatal);
            fatal.exit
        }
    }
}

async fn serve(global: &GlobalArgs, args: ServeArgs) -> Result<Exit, Fatal> {
    let settings = settings(global)?;
    let (listen, from) = match (&args.api_listen, env_var("OTTURNAUT_API_LISTEN").filter(|v| !v.is_empty())) {
        (Some(v), _) => (v.clone(), "--api-listen".to_owned()),
        (None, Some(v)) => (v, "OTTURNAUT_API_LISTEN".to_owned()),
        (None, None) => settings.file_api_listen.clone().unwrap_or((DEFAULT_API_LISTEN.into(), "--api-listen".into())),
    };
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| Invalid::new(&from, format!("{listen:?} is not an IP:PORT address, e.g. 127.0.0.1:7400")))?;
    let token_file = match (&args.token_file, env_var("OTTURNAUT_TOKEN_FILE").filter(|v| !v.is_empty())) {
        (Some(p), _) => Some((p.clone(), "--token-file".to_owned())),
        (None, Some(p)) => Some((PathBuf::from(p), "OTTURNAUT_TOKEN_FILE".to_owned())),
        (None, None) => settings.file_token_file.clone(),
    };
    let Some((token_file, from)) = token_file else {
        return Err(Invalid::new(
            "--token-file",
            "serve needs a token file (--token-file, OTTURNAUT_TOKEN_FILE or token_file in the config file): \
             clients must send its content as a bearer token",
        )
        .into());
    };
    let token = read_token(&token_file).map_err(|m| Invalid::new(&from, m))?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Tls { cert: cert.clone(), key: key.clone() }),
        _ => None,
    };
    if !listen.ip().is_loopback() && tls.is_none() && !args.insecure_http {
        return Err(Invalid::new(
            from_listen(&args),
            format!(
                "{listen} is reachable from other machines: give --tls-cert and --tls-key, or --insecure-http \
                 to send the token in clear"
            ),
        )
        .into());
    }
    let watch_apps = match args.watch_apps.is_empty() {
        true => None,
        false => Some(args.watch_apps.iter().map(|a| input::app_id(a)).collect::<Result<BTreeSet<AppId>, _>>()?),
    };
    crate::workdir::check_existing(&settings.agent.work_dir)?;
    let agent = connect(&settings.agent).await?;
    crate::workdir::prepare(&settings.agent.work_dir)?;
    init_logging();

    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Fatal::new(Exit::Failed, format!("cannot install a signal handler: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Fatal::new(Exit::Failed, format!("cannot install a signal handler: {e}")))?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let config = ServeConfig { listen, token, tls, watch_every: WATCH_EVERY, watch_apps };
    tracing::info!(%listen, tls = config.tls.is_some(), "serving the API");
    otturnaut_daemon::serve(agent, config, shutdown).await.map_err(|e| Fatal::new(Exit::Failed, e.to_string()))?;
    Ok(Exit::Ok)
}

fn from_listen(args: &ServeArgs) -> String {
    if args.api_listen.is_some() { "--api-listen".into() } else { "OTTURNAUT_API_LISTEN/api_listen".into() }
}

/// The token: the file's content without the final newline. A file that
/// other users can read (or write) is refused: they would hold the agent.
fn read_token(path: &Path) -> Result<Secret, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable or writable by other users (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        ));
    }
    let text = files::read_capped(path, files::MAX_KEY_FILE)?;
    let token = text.trim_end_matches(['\n', '\r']);
    if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{} must hold one token of at least 16 characters, without spaces (e.g. `openssl rand -hex 32`)",
            path.display()
        ));
    }
    Ok(Secret::new(token))
}

/// Logs to stderr (the journal under systemd); `RUST_LOG` picks the level.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
