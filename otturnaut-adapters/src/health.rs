//! The health probe: waits until a freshly started container is ready for
//! traffic, and gives up at once when it dies instead.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use otturnaut_core::traits::{ContainerRuntime, HealthProbe};
use otturnaut_core::{ContainerId, ContainerStatus, Error, HealthCheck, HealthKind, HostPort, HttpPath, Result};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

/// How many log lines a [`Error::ContainerExited`] carries.
const LOG_TAIL: usize = 20;

/// How long a TCP probe waits to see whether an accepted connection is
/// closed straight away (see [`Probe::tcp`]).
const PROXY_SETTLE: Duration = Duration::from_millis(250);

/// Probes containers published on `host` (127.0.0.1 unless told otherwise),
/// asking `runtime` about their state between attempts.
#[derive(Clone)]
pub struct Probe {
    runtime: Arc<dyn ContainerRuntime>,
    host: IpAddr,
    http: reqwest::Client,
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probe").field("host", &self.host).finish_non_exhaustive()
    }
}

impl Probe {
    /// A prober that asks `runtime` whether the container still runs between
    /// attempts (so an exited container fails the check at once).
    pub fn new(runtime: Arc<dyn ContainerRuntime>) -> Result<Self> {
        // The probe talks to our own containers on this host: a proxy from
        // the environment must not get in the way, and a redirect is an
        // answer, not something to follow. No connection outlives its probe:
        // a long-lived agent (the daemon, a library consumer) would keep one
        // open to the release, and on Caddy 2.8+ the drain counts every
        // connection to the old release, so each redeploy of a keep-alive
        // app waited out the drain timeout for it.
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| Error::failed("setting up the HTTP health probe client", crate::error_chain(&e)))?;
        Ok(Probe { runtime, host: IpAddr::V4(Ipv4Addr::LOCALHOST), http })
    }

    /// Probes ports on `host` instead of 127.0.0.1: where the runtime binds them.
    pub fn with_host(mut self, host: IpAddr) -> Self {
        self.host = host;
        self
    }

    /// One probe of the app itself; the error says what was seen.
    async fn attempt(
        &self,
        kind: &HealthKind,
        port: HostPort,
        running_since_last: bool,
    ) -> std::result::Result<(), String> {
        let addr = SocketAddr::new(self.host, port.get());
        match kind {
            HealthKind::Running if running_since_last => Ok(()),
            HealthKind::Running => Err("the container has not yet stayed up for one interval".into()),
            HealthKind::Tcp => self.tcp(addr).await,
            HealthKind::Http { path, expected_status } => self.http(addr, path, *expected_status).await,
        }
    }

    async fn tcp(&self, addr: SocketAddr) -> std::result::Result<(), String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("TCP connect to {addr}: {e}"))?;
        // Docker's userland proxy accepts every connection to a published
        // port itself, then closes it at once when nothing listens in the
        // container: a connection closed straight away is a refusal.
        let mut byte = [0u8; 1];
        match timeout(PROXY_SETTLE, stream.peek(&mut byte)).await {
            Ok(Ok(0)) => Err(format!("TCP connection to {addr} was closed at once: nothing listens in the container")),
            Ok(Err(e)) => Err(format!("TCP connection to {addr} failed: {e}")),
            Ok(Ok(_)) | Err(_) => Ok(()),
        }
    }

    async fn http(&self, addr: SocketAddr, path: &HttpPath, expected: u16) -> std::result::Result<(), String> {
        let url = format!("http://{addr}{path}");
        let response =
            self.http.get(&url).send().await.map_err(|e| format!("GET {url}: {}", crate::error_chain(&e)))?;
        let status = response.status().as_u16();
        if status == expected { Ok(()) } else { Err(format!("GET {url} answered {status}, expected {expected}")) }
    }

    /// The error for a release that is not running: how it exited, and its last output.
    pub(crate) async fn exited(&self, container: &ContainerId, status: ContainerStatus) -> Error {
        let logs = self
            .runtime
            .logs(container, LOG_TAIL)
            .await
            .unwrap_or_else(|e| vec![format!("(the container's logs could not be read: {e})")]);
        Error::ContainerExited {
            container: container.clone(),
            // -1: Docker did not say, e.g. the process never started.
            exit_code: status.exit_code.unwrap_or(-1),
            logs,
        }
    }
}

#[async_trait]
impl HealthProbe for Probe {
    async fn check(&self, container: &ContainerId, port: HostPort, check: &HealthCheck) -> Result<()> {
        // `checked_add`: a spec built by a library caller may hold any duration.
        let now = Instant::now();
        let deadline = now.checked_add(check.deadline).unwrap_or(now + otturnaut_core::MAX_DURATION);
        let mut last_error = String::from("no probe finished before the deadline");
        let mut was_running = false;
        let mut answered = false;
        loop {
            // Asked before every attempt, so a container that died is
            // reported at once instead of after the whole deadline.
            match timeout(check.attempt_timeout, self.runtime.status(container)).await {
                Ok(Ok(status)) if status.restarting || !status.running => {
                    return Err(self.exited(container, status).await);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    last_error = format!("Docker did not report the state of {container} in time");
                    was_running = false;
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let limit = check.attempt_timeout.min(remaining);
            match timeout(limit, self.attempt(&check.kind, port, was_running)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => {
                    last_error = e;
                    answered = true;
                }
                // An attempt the deadline cut short says less than an
                // earlier answer (say, a wrong status): keep that one.
                Err(_) if answered && limit < check.attempt_timeout => {}
                Err(_) => {
                    last_error = format!("no answer on port {port} within {}", humantime::format_duration(limit));
                    answered = false;
                }
            }
            tracing::debug!(%container, %port, error = %last_error, "health probe failed; retrying");
            was_running = true;
            let remaining = deadline.saturating_duration_since(Instant::now());
            sleep(check.interval.min(remaining)).await;
            if Instant::now() >= deadline {
                // One last look: dying is a better explanation than silence.
                if let Ok(Ok(status)) = timeout(check.attempt_timeout, self.runtime.status(container)).await
                    && (status.restarting || !status.running)
                {
                    return Err(self.exited(container, status).await);
                }
                break;
            }
        }
        Err(Error::Unhealthy { deadline: check.deadline, last_error })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use otturnaut_core::traits::RunRequest;
    use otturnaut_core::{AppId, ManagedContainer};

    use super::*;

    /// A runtime whose container goes through `states`, staying in the last.
    struct Scripted {
        states: Mutex<Vec<ContainerStatus>>,
        calls: Mutex<u32>,
    }

    impl Scripted {
        fn new(mut states: Vec<ContainerStatus>) -> Arc<Self> {
            states.reverse();
            Arc::new(Scripted { states: Mutex::new(states), calls: Mutex::new(0) })
        }
    }

    #[async_trait]
    impl ContainerRuntime for Scripted {
        async fn start(&self, _: &RunRequest) -> Result<ContainerId> {
            unimplemented!()
        }
        async fn stop(&self, _: &ContainerId, _: Duration) -> Result<()> {
            unimplemented!()
        }
        async fn remove(&self, _: &ContainerId) -> Result<()> {
            unimplemented!()
        }
        async fn status(&self, _: &ContainerId) -> Result<ContainerStatus> {
            *self.calls.lock().expect("lock") += 1;
            let mut states = self.states.lock().expect("lock");
            let state = if states.len() > 1 { states.pop() } else { states.last().cloned() };
            state.ok_or_else(|| Error::failed("status", "no state scripted"))
        }
        async fn logs(&self, _: &ContainerId, tail: usize) -> Result<Vec<String>> {
            Ok((0..30).map(|i| format!("line {i}")).rev().take(tail).rev().collect())
        }
        async fn list(&self, _: Option<&AppId>) -> Result<Vec<ManagedContainer>> {
            unimplemented!()
        }
        async fn recorded(&self, _: &ContainerId) -> Result<otturnaut_core::RecordedRelease> {
            unimplemented!()
        }
    }

    const UP: ContainerStatus = ContainerStatus { running: true, restarting: false, exit_code: None, started: None };
    const CRASHED: ContainerStatus =
        ContainerStatus { running: true, restarting: true, exit_code: Some(137), started: None };

    fn running_check(deadline: Duration) -> HealthCheck {
        HealthCheck {
            kind: HealthKind::Running,
            interval: Duration::from_millis(10),
            attempt_timeout: Duration::from_millis(100),
            deadline,
        }
    }

    fn port() -> HostPort {
        HostPort::try_from(1).expect("port")
    }

    #[tokio::test]
    async fn a_restarting_container_counts_as_exited() {
        let runtime = Scripted::new(vec![UP, CRASHED]);
        let probe = Probe::new(runtime.clone()).expect("probe");
        let err = probe
            .check(&ContainerId("c".into()), port(), &running_check(Duration::from_secs(10)))
            .await
            .expect_err("it crashed");
        let Error::ContainerExited { exit_code, logs, .. } = err else {
            panic!("expected ContainerExited, got {err:?}");
        };
        assert_eq!(exit_code, 137);
        assert_eq!(logs.len(), LOG_TAIL);
        assert_eq!(logs.last().map(String::as_str), Some("line 29"));
    }

    #[tokio::test]
    async fn the_running_check_wants_two_sightings_an_interval_apart() {
        let runtime = Scripted::new(vec![UP]);
        let probe = Probe::new(runtime.clone()).expect("probe");
        probe.check(&ContainerId("c".into()), port(), &running_check(Duration::from_secs(10))).await.expect("up");
        assert_eq!(*runtime.calls.lock().expect("lock"), 2);
    }

    /// The drain counts connections to the old release (Caddy 2.8+): a
    /// probe's connection must not stay open in a long-lived agent.
    #[tokio::test]
    async fn an_http_probe_leaves_no_connection_open_to_a_keep_alive_server() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
        let port = HostPort::try_from(listener.local_addr().expect("addr").port()).expect("port");
        // Answers every request with keep-alive and reports when its client
        // closed the connection.
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 4096];
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return "closed",
                    Ok(_) => {
                        let reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok";
                        if conn.write_all(reply.as_bytes()).await.is_err() {
                            return "closed";
                        }
                    }
                }
            }
        });
        let probe = Probe::new(Scripted::new(vec![UP])).expect("probe");
        let kind = HealthKind::Http { path: "/healthz".parse().expect("path"), expected_status: 200 };
        let check = HealthCheck { kind, ..running_check(Duration::from_secs(10)) };
        probe.check(&ContainerId("c".into()), port, &check).await.expect("healthy");
        let closed = timeout(Duration::from_secs(5), server).await;
        assert!(matches!(closed, Ok(Ok("closed"))), "the probe's connection is still open: {closed:?}");
        drop(probe);
    }

    #[tokio::test]
    async fn a_stopped_container_without_exit_code_is_reported_as_minus_one() {
        let stopped = ContainerStatus { running: false, restarting: false, exit_code: None, started: None };
        let probe = Probe::new(Scripted::new(vec![stopped])).expect("probe");
        let err = probe
            .check(&ContainerId("c".into()), port(), &running_check(Duration::from_secs(10)))
            .await
            .expect_err("not running");
        assert!(matches!(err, Error::ContainerExited { exit_code: -1, .. }), "{err:?}");
    }
}
