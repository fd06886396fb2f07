//! `otturnaut serve`: the agent's HTTP API, a second front end over the same
//! library as the CLI. Deploys run through [`otturnaut_adapters::DeployRun`]
//! and end in the same [`otturnaut_adapters::Outcome`]; the per-app file locks
//! are the CLI's, so a CLI deploy and an API deploy of one app never overlap.
//!
//! Every endpoint but `GET /v1/health` wants `Authorization: Bearer TOKEN`.
//! Deploys stream their events (NDJSON, or SSE on request) and keep running
//! when the client goes away. In the background the daemon reconciles at
//! start and restores routes Caddy lost (a restart) within seconds.

#![warn(missing_docs)]

mod apps;
mod auth;
mod deploys;
mod error;
mod metrics;
mod openapi;
mod snapshot;
mod state;
mod watch;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use otturnaut_adapters::Agent;
use otturnaut_core::{AppId, Secret};
use tower_http::timeout::TimeoutLayer;

pub use crate::state::State;

/// The largest request body taken.
pub const MAX_BODY: usize = 1024 * 1024;

/// The most requests served at once; more get 503.
pub const MAX_CONCURRENT: usize = 64;

/// How long a request other than a deploy stream or a log follow may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a SIGTERM lets running deploys go on before rolling them back.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// What `otturnaut serve` was asked for, already validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The address the API listens on.
    pub listen: SocketAddr,
    /// The bearer token every request must carry.
    pub token: Secret,
    /// Serve HTTPS with these files; plain HTTP without.
    pub tls: Option<Tls>,
    /// How often the background watch checks Caddy's routes.
    pub watch_every: Duration,
    /// Only these apps are reconciled in the background (at start and when
    /// Caddy lost their routes); None: every app on the Docker daemon. Name
    /// them on a Docker daemon shared by several agents.
    pub watch_apps: Option<BTreeSet<AppId>>,
}

/// PEM files of the certificate chain and its key.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The certificate or key could not be read or parsed.
    #[error("cannot load the TLS certificate or key: {0}")]
    Tls(std::io::Error),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// The API's routes over `state`, without the listener: what the tests and
/// [`serve`] run.
pub fn router(state: Arc<State>) -> Router {
    let bounded = Router::new()
        .route("/v1/apps", get(apps::list))
        .route("/v1/apps/{app}", get(apps::one).delete(apps::undeploy))
        .route("/v1/apps/{app}/deployments/cancel", post(deploys::cancel))
        .route("/v1/apps/{app}/releases", get(apps::releases))
        .route("/v1/apps/{app}/prune", post(apps::prune))
        .route("/v1/reconcile", post(apps::reconcile))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/metrics", get(apps::metrics))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT));
    let streams = Router::new()
        .route("/v1/apps/{app}/deployments", post(deploys::deploy))
        .route("/v1/apps/{app}/rollback", post(deploys::rollback))
        .route("/v1/apps/{app}/logs", get(apps::logs));
    let authed = bounded.merge(streams).layer(axum::middleware::from_fn_with_state(state.clone(), auth::require));
    Router::new()
        .route("/v1/health", get(apps::health))
        .merge(authed)
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::limit_concurrency))
        .with_state(state)
}

/// Serves the API until `shutdown` resolves, then stops accepting, lets
/// running deploys finish (rolling back those still running after
/// [`SHUTDOWN_GRACE`]) and returns.
pub async fn serve(
    agent: Agent,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let state = State::new(agent, config.token.clone());
    let app = router(state.clone());
    let handle = axum_server::Handle::new();
    let watcher = tokio::spawn(watch::run(state.clone(), config.watch_every, config.watch_apps.clone()));

    let stopping = tokio::spawn({
        let (handle, state) = (handle.clone(), state.clone());
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new requests; waiting for running deploys");
            // Stops accepting now; open connections get until the deploys'
            // grace and their rollback are over.
            handle.graceful_shutdown(Some(SHUTDOWN_GRACE + Duration::from_secs(60)));
            state.finish_deploys(SHUTDOWN_GRACE).await;
            // The streams of the last deploys get their result lines out;
            // anything else (log follows) is cut.
            tokio::time::sleep(Duration::from_secs(2)).await;
            handle.shutdown();
        }
    });
    let service = app.into_make_service();
    let served = match &config.tls {
        Some(tls) => {
            let rustls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
                .await
                .map_err(DaemonError::Tls)?;
            axum_server::bind_rustls(config.listen, rustls).handle(handle).serve(service).await
        }
        None => axum_server::bind(config.listen).handle(handle).serve(service).await,
    };
    watcher.abort();
    served.map_err(|source| DaemonError::Listen { addr: config.listen, source })?;
    // Every connection may be gone while a deploy whose client left runs on.
    let _ = stopping.await;
    Ok(())
}
