//! BuildKit, the daemon's embedded builder, through bollard's `buildkit`
//! feature; the legacy builder remains only for daemons without it.
//!
//! Two ways in, because bollard 0.21 has no single one that does everything:
//!
//! - `POST /build?version=2` with a session ([`bollard::Docker::build_image`]):
//!   streams the context like the legacy builder and streams progress back
//!   (vertices and step output), but its session serves no secrets.
//! - With `--build-secret`: a BuildKit solve over `/grpc`
//!   ([`bollard::grpc::driver::moby::Moby`]), whose session serves the
//!   secrets, but which reports only the outcome: step output is not
//!   streamed and a failure carries BuildKit's message without a log tail.
//!
//! bollard's `build_image_with_session_providers` (merged upstream, not yet
//! released) does both on one path; it will replace the second one.
//!
//! BuildKit creates no intermediate containers, so no container dressed up
//! by a Dockerfile's `LABEL`s can exist during a build (see `genuine`).

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;

use bollard::grpc::build::{ImageBuildFrontendOptions, ImageBuildLoadInput, SecretSource};
use bollard::grpc::driver::Build as _;
use bollard::grpc::error::GrpcError;
use bollard::moby::buildkit::v1::StatusResponse;
use otturnaut_core::traits::BuildRequest;
use otturnaut_core::{Error, MAX_LOG_LINE, Result};

use super::Docker;
use super::build::{BuildLog, image_labels};

/// Which builder a daemon offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Builder {
    /// BuildKit, through `/build?version=2` (and `/grpc` for build secrets).
    BuildKit,
    /// The legacy builder, and why BuildKit is not used.
    Legacy {
        /// What the probe found instead (for the warning shown).
        why: String,
    },
}

/// The oldest API with BuildKit sessions (Docker 18.09).
const BUILDKIT_API: (u64, u64) = (1, 39);

/// The largest build context sent through a BuildKit solve (the secrets
/// path holds it in memory; the streamed path has no such limit).
pub const MAX_SOLVE_CONTEXT: usize = 512 * 1024 * 1024;

impl Docker {
    /// The builder this daemon offers, asked once per connection.
    pub async fn builder(&self) -> Builder {
        self.builder.get_or_init(|| self.probe_builder()).await.clone()
    }

    async fn probe_builder(&self) -> Builder {
        let version = match self.client.version().await {
            Ok(v) => v,
            Err(e) => return Builder::Legacy { why: format!("the daemon's version is unknown: {e}") },
        };
        let api = version.api_version.as_deref().unwrap_or_default();
        let parsed = api.split_once('.').and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
        let podman = version.components.iter().flatten().any(|c| c.name.to_ascii_lowercase().contains("podman"));
        let os = version.os.as_deref().unwrap_or_default();
        if podman {
            Builder::Legacy { why: "Podman serves no BuildKit sessions".into() }
        } else if os != "linux" {
            Builder::Legacy { why: format!("BuildKit needs a Linux daemon, this one runs {os:?}") }
        } else if parsed.is_none_or(|v| v < BUILDKIT_API) {
            Builder::Legacy { why: format!("the daemon speaks API {api:?}; BuildKit needs 1.39 or later") }
        } else {
            Builder::BuildKit
        }
    }

    /// Builds `req` as `tag` with BuildKit, serving its build secrets; the
    /// packed context is in `context`.
    pub(super) async fn solve_with_secrets(&self, req: &BuildRequest, tag: &str, context: Vec<u8>) -> Result<()> {
        // The secrets live in files of a private directory while the build
        // runs: bollard's provider reads them from there on demand.
        let dir = tempfile::Builder::new()
            .prefix("otturnaut-secrets-")
            .tempdir()
            .map_err(|e| Error::failed("preparing the build secrets", e))?;
        let mut options = ImageBuildFrontendOptions::builder().dockerfile(req.dockerfile.as_path());
        for (i, (id, secret)) in req.build_secrets.iter().enumerate() {
            let path = dir.path().join(i.to_string());
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut f| f.write_all(secret.expose().as_bytes()));
            written.map_err(|e| Error::failed(format!("preparing build secret {id}"), e))?;
            options = options.set_secret(id, &SecretSource::File(path));
        }
        for (key, value) in &req.build_args {
            options = options.buildarg(key, value.expose());
        }
        for (key, value) in image_labels(req) {
            options = options.label(key, &value);
        }
        // bollard's solve is not `Send`: it runs on a thread of its own,
        // and is dropped (cancelling the build) when this future is.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel::<()>();
        let (client, name, options) = (self.client.clone(), tag.to_owned(), options.build());
        let spawned = std::thread::Builder::new().name("otturnaut-buildkit".into()).spawn(move || {
            let solved = tokio::runtime::Builder::new_current_thread().enable_all().build().map(|rt| {
                rt.block_on(async {
                    let driver = bollard::grpc::driver::moby::Moby::new(&client);
                    let input = ImageBuildLoadInput::Upload(context.into());
                    tokio::select! {
                        solved = driver.docker_build(&name, options, input, None, None) => Some(solved),
                        _ = cancel_rx => None,
                    }
                })
            });
            // The secrets' files go once the build is over, whatever its end.
            drop(dir);
            let _ = done_tx.send(solved);
        });
        let operation = || format!("building image {tag} with BuildKit");
        spawned.map_err(|e| Error::failed(operation(), e))?;
        let outcome = done_rx.await;
        drop(cancel_tx);
        match outcome {
            Ok(Ok(Some(Ok(())))) => Ok(()),
            Ok(Ok(Some(Err(GrpcError::TonicStatus { err })))) => Err(Error::BuildFailed {
                detail: otturnaut_core::cut_line(err.message().to_owned(), MAX_LOG_LINE),
                log_tail: Vec::new(),
            }),
            Ok(Ok(Some(Err(other)))) => Err(Error::failed(operation(), crate::error_chain(&other))),
            Ok(Ok(None)) => Err(Error::failed(operation(), "cancelled")),
            Ok(Err(e)) => Err(Error::failed(operation(), e)),
            Err(_) => Err(Error::failed(operation(), "the build thread ended without an answer")),
        }
    }
}

/// Turns BuildKit's progress messages into build log lines: each step's
/// name when it starts (`CACHED` when the cache had it), its output, and
/// its error.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Per vertex digest: announced, finished.
    seen: HashMap<String, (bool, bool)>,
}

impl Progress {
    pub(super) fn feed(&mut self, status: &StatusResponse, log: &mut BuildLog<'_>) {
        for v in &status.vertexes {
            let (announced, finished) = self.seen.entry(v.digest.clone()).or_default();
            if v.cached && !*finished {
                *announced = true;
                *finished = true;
                log.line(&format!("CACHED {}", v.name));
                continue;
            }
            if v.started.is_some() && !*announced {
                *announced = true;
                log.line(&v.name);
            }
            if v.completed.is_some() && !*finished {
                *finished = true;
                if !v.error.is_empty() {
                    log.line(&format!("ERROR {}: {}", v.name, v.error));
                }
            }
        }
        for l in &status.logs {
            log.text(&String::from_utf8_lossy(&l.msg));
        }
    }
}

#[cfg(test)]
mod tests {
    use bollard::moby::buildkit::v1::{Vertex, VertexLog};
    use otturnaut_core::{DeployEvent, EventSink};

    use super::*;

    #[test]
    fn progress_becomes_step_names_output_and_errors_once_each() {
        let (sink, mut rx) = EventSink::channel();
        let mut log = BuildLog::new(&sink);
        let mut progress = Progress::default();
        let time = || Some(Default::default());
        let vertex =
            |digest: &str, name: &str| Vertex { digest: digest.into(), name: name.into(), ..Default::default() };
        let started = Vertex { started: time(), ..vertex("a", "[1/2] COPY busybox /bin/busybox") };
        let cached = Vertex { cached: true, ..vertex("b", "[2/2] RUN make") };
        let status = StatusResponse { vertexes: vec![started.clone(), cached.clone()], ..Default::default() };
        progress.feed(&status, &mut log);
        progress.feed(&status, &mut log);
        let failed = Vertex { completed: time(), error: "exit code: 7".into(), ..started };
        let output = VertexLog { vertex: "a".into(), msg: b"about to fail\n".to_vec(), ..Default::default() };
        progress.feed(&StatusResponse { vertexes: vec![failed], logs: vec![output], ..Default::default() }, &mut log);
        log.flush();
        let mut lines = Vec::new();
        while let Ok(DeployEvent::BuildLog { line }) = rx.try_recv() {
            lines.push(line);
        }
        assert_eq!(
            lines,
            [
                "[1/2] COPY busybox /bin/busybox",
                "CACHED [2/2] RUN make",
                "ERROR [1/2] COPY busybox /bin/busybox: exit code: 7",
                "about to fail"
            ]
        );
    }
}
