//! The Docker Engine adapter: builds images ([`ImageBuilder`]) and runs
//! containers ([`ContainerRuntime`]) through bollard.
//!
//! Everything Otturnaut owns carries the labels of [`otturnaut_core::labels`];
//! listing by those labels is how the stateless agent finds its containers
//! and images again.
//!
//! Secrets: env values and build args are sent to the daemon in request
//! bodies and query strings, and bollard logs both at `debug` level through
//! the `log` crate. A front end must keep the `bollard` target at `info` or
//! above.
//!
//! [`ImageBuilder`]: otturnaut_core::traits::ImageBuilder
//! [`ContainerRuntime`]: otturnaut_core::traits::ContainerRuntime

mod build;
mod buildkit;
mod cache;
mod context;
mod dockerignore;
mod resources;
mod run;

pub(crate) use run::{container_labels, mount, recorded_from, whole_seconds};

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use otturnaut_core::{Error, Result, Service};

pub use buildkit::{Builder, MAX_SOLVE_CONTEXT};
pub use cache::BUILD_CACHE_KEEP;
pub use run::LogStream;
pub(crate) use run::log_options;

/// Where the daemon listens when `DOCKER_HOST` is not set.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// How long `connect` waits for the daemon to answer its first request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to the Docker Engine. Cheap to clone.
#[derive(Clone)]
pub struct Docker {
    client: bollard::Docker,
    /// Where the daemon was reached, for error messages.
    address: String,
    /// The host address published container ports are bound to.
    bind_address: IpAddr,
    /// Which builder the daemon offers, probed on the first build.
    builder: std::sync::Arc<tokio::sync::OnceCell<Builder>>,
}

impl fmt::Debug for Docker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Docker")
            .field("address", &self.address)
            .field("bind_address", &self.bind_address)
            .finish_non_exhaustive()
    }
}

impl Docker {
    /// Whether the daemon answers (for health checks of the agent itself).
    pub async fn ping(&self) -> Result<()> {
        self.client.ping().await.map(|_| ()).map_err(|e| self.error("pinging the Docker daemon", e))
    }

    /// Connects to the daemon named by `DOCKER_HOST`, or the default socket,
    /// and agrees on an API version both sides speak.
    pub async fn connect() -> Result<Docker> {
        let host =
            std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| DEFAULT_HOST.to_owned());
        Docker::connect_to(&host).await
    }

    /// Connects to the daemon at `host` (`unix:///path`, `tcp://h:p` or
    /// `http://h:p`).
    pub async fn connect_to(host: &str) -> Result<Docker> {
        let address = host.to_owned();
        let unavailable =
            |detail: String| Error::Unavailable { service: Service::Docker, address: address.clone(), detail };
        let client = bollard::Docker::connect_with_host(host).map_err(|e| unavailable(crate::error_chain(&e)))?;
        // bollard speaks the newest API it knows; an older daemon (20.10 is
        // API 1.41) refuses that, so step down to what the daemon offers.
        let client = tokio::time::timeout(CONNECT_TIMEOUT, client.negotiate_version())
            .await
            .map_err(|_| unavailable(format!("no answer within {}", humantime::format_duration(CONNECT_TIMEOUT))))?
            .map_err(|e| unavailable(crate::error_chain(&e)))?;
        Ok(Docker { client, address, bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST), builder: Default::default() })
    }

    /// Builds with the legacy builder even where BuildKit is available (for
    /// tests of the fallback, and daemons whose BuildKit misbehaves).
    pub fn with_legacy_builder(mut self, why: impl Into<String>) -> Self {
        self.builder = std::sync::Arc::new(tokio::sync::OnceCell::new_with(Some(Builder::Legacy { why: why.into() })));
        self
    }

    /// Binds published ports on `address` instead of 127.0.0.1 (Caddy,
    /// which proxies to them, normally runs on the same host).
    pub fn with_bind_address(mut self, address: IpAddr) -> Self {
        self.bind_address = address;
        self
    }

    /// The host address container ports are published on.
    pub fn bind_address(&self) -> IpAddr {
        self.bind_address
    }

    /// Where the daemon was reached, e.g. `unix:///var/run/docker.sock`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The API version agreed with the daemon, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        let v = self.client.client_version();
        format!("{}.{}", v.major_version, v.minor_version)
    }

    /// The bollard client (the Swarm adapter speaks to the same daemon).
    pub(crate) fn client(&self) -> &bollard::Docker {
        &self.client
    }

    /// Turns a bollard error into ours: transport failures mean the daemon
    /// is unavailable, answers are refusals of `operation`.
    pub(crate) fn error(&self, operation: impl Into<String>, e: BollardError) -> Error {
        let operation = operation.into();
        match e {
            BollardError::DockerResponseServerError { status_code, message } => {
                Error::failed(operation, format!("Docker answered {status_code}: {message}"))
            }
            BollardError::RequestTimeoutError => Error::Timeout { operation, after: self.client.timeout() },
            BollardError::HyperLegacyError { .. }
            | BollardError::IOError { .. }
            | BollardError::SocketNotFoundError(_)
            | BollardError::HyperResponseError { .. }
            | BollardError::HttpClientError { .. } => Error::Unavailable {
                service: Service::Docker,
                address: self.address.clone(),
                detail: format!("{operation}: {}", crate::error_chain(&e)),
            },
            other => Error::failed(operation, crate::error_chain(&other)),
        }
    }
}

pub(crate) fn is_not_found(e: &BollardError) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code: 404, .. })
}

/// Keeps the last `cap` lines seen, for error messages.
#[derive(Debug)]
struct Tail {
    lines: std::collections::VecDeque<String>,
    cap: usize,
}

impl Tail {
    fn new(cap: usize) -> Self {
        Tail { lines: std::collections::VecDeque::with_capacity(cap), cap }
    }

    fn push(&mut self, line: String) {
        if self.lines.len() == self.cap {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    fn into_vec(self) -> Vec<String> {
        self.lines.into()
    }
}

/// How many log lines an error carries.
pub const TAIL_LINES: usize = 20;
