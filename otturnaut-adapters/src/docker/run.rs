//! Running containers: [`ContainerRuntime`] for [`Docker`].

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, EndpointSettings, HostConfig, HostConfigLogConfig, Mount, MountType,
    NetworkConnectRequest, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StartContainerOptions, StopContainerOptionsBuilder,
};
use futures_util::{Stream, StreamExt};
use otturnaut_core::traits::{ContainerRuntime, RunRequest, container_name};
use otturnaut_core::{
    AppId, ContainerId, ContainerStatus, Domain, Error, ManagedContainer, RecordedRelease, ReleaseRecord, Result,
    Secret, VolumeSource, VolumeSpec, labels,
};

use super::build::label_filters;
use super::{Docker, is_not_found};

/// Log lines of a followed container, until it stops or the caller drops it.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<String>> + Send>>;

/// Extra time the stop request may take beyond the grace period: the daemon
/// answers only once the container is down.
const STOP_SLACK: Duration = Duration::from_secs(30);

#[async_trait]
impl ContainerRuntime for Docker {
    async fn start(&self, req: &RunRequest) -> Result<ContainerId> {
        let name = req.name();
        self.ensure_resources(&req.app, &req.options).await?;
        let id = self.create(req).await?;
        let started = match self.join_networks(req, &id).await {
            Ok(()) => self.client.start_container(&id, None::<StartContainerOptions>).await,
            Err(e) => {
                if let Err(c) = self.remove(&ContainerId(id)).await {
                    tracing::warn!(container = %name, error = %c, "could not remove a container that joined no network");
                }
                return Err(e);
            }
        };
        let Err(e) = started else {
            return Ok(ContainerId(id));
        };
        // Start failed after create: leave nothing behind, so the caller can
        // retry (on another port) under the same name.
        let cleanup = self.remove(&ContainerId(id)).await;
        if is_port_taken(&e) {
            if let Err(c) = &cleanup {
                tracing::warn!(container = %name, error = %c, "could not remove a container whose port was taken");
            }
            return Err(Error::PortTaken(req.host_port));
        }
        let error = self.error(format!("starting container {name}"), e);
        match cleanup {
            Ok(()) => Err(error),
            Err(c) => Err(Error::failed(
                format!("starting container {name}"),
                format!("{error}; removing the created container failed too: {c}"),
            )),
        }
    }

    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<()> {
        let seconds = i32::try_from(whole_seconds(grace)).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(seconds).build();
        let client = self.client.clone().with_timeout(grace + STOP_SLACK);
        match client.stop_container(&id.0, Some(options)).await {
            Ok(()) => Ok(()),
            // Gone is as stopped as it gets.
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.error(format!("stopping container {id}"), e)),
        }
    }

    async fn remove(&self, id: &ContainerId) -> Result<()> {
        let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match self.client.remove_container(&id.0, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) || is_removal_in_progress(&e) => Ok(()),
            Err(e) => Err(self.error(format!("removing container {id}"), e)),
        }
    }

    async fn status(&self, id: &ContainerId) -> Result<ContainerStatus> {
        let inspect = self
            .client
            .inspect_container(&id.0, None)
            .await
            .map_err(|e| self.error(format!("inspecting container {id}"), e))?;
        let state = inspect.state.unwrap_or_default();
        let running = state.running.unwrap_or(false);
        let restarting = state.restarting.unwrap_or(false);
        Ok(ContainerStatus {
            running,
            restarting,
            // Docker reports 0 for a running container: that is no exit.
            exit_code: if running && !restarting { None } else { state.exit_code },
            started: state.started_at,
        })
    }

    async fn logs(&self, id: &ContainerId, tail: usize) -> Result<Vec<String>> {
        if tail == 0 {
            return Ok(Vec::new());
        }
        let options = LogsOptionsBuilder::default().stdout(true).stderr(true).tail(&tail.to_string()).build();
        let mut stream = self.client.logs(&id.0, Some(options));
        let mut lines = Vec::new();
        while let Some(item) = stream.next().await {
            let output = item.map_err(|e| self.error(format!("reading logs of container {id}"), e))?;
            lines.extend(split_lines(&output.into_bytes()));
        }
        let skip = lines.len().saturating_sub(tail);
        Ok(lines.split_off(skip))
    }

    async fn list(&self, app: Option<&AppId>) -> Result<Vec<ManagedContainer>> {
        let options = ListContainersOptionsBuilder::default().all(true).filters(&label_filters(app)).build();
        let containers = self
            .client
            .list_containers(Some(options))
            .await
            .map_err(|e| self.error("listing managed containers", e))?;
        Ok(containers.into_iter().filter_map(managed_container).filter(genuine).collect())
    }

    async fn remove_volumes(&self, app: &AppId) -> Result<Vec<String>> {
        self.remove_app_volumes(app).await
    }

    async fn recorded(&self, id: &ContainerId) -> Result<RecordedRelease> {
        let operation = format!("reading what container {id} was started with");
        let inspect = self.client.inspect_container(&id.0, None).await.map_err(|e| self.error(operation.clone(), e))?;
        let config = inspect.config.unwrap_or_default();
        recorded_from(&config.labels.unwrap_or_default(), &config.env.unwrap_or_default(), &operation)
    }
}

impl Docker {
    /// Streams a container's output (stdout and stderr), starting with the
    /// last `tail` lines, for `otturnaut logs --follow`.
    pub fn follow_logs(&self, id: &ContainerId, tail: usize) -> LogStream {
        self.stream_logs(id, tail, true)
    }

    /// Streams a container's output, the last `tail` lines and, with
    /// `follow`, what comes after: one line at a time, never all of it in
    /// memory (`otturnaut logs`).
    pub fn stream_logs(&self, id: &ContainerId, tail: usize, follow: bool) -> LogStream {
        let stream = self.client.logs(&id.0, Some(log_options(tail, follow)));
        self.lines_of(format!("container {id}"), stream)
    }

    /// `stream`'s output, one line at a time; an error names `what`.
    pub(crate) fn lines_of(
        &self,
        what: String,
        stream: impl Stream<Item = std::result::Result<LogOutput, BollardError>> + Send + 'static,
    ) -> LogStream {
        let this = self.clone();
        Box::pin(stream.flat_map(move |item| {
            let lines: Vec<Result<String>> = match item {
                Ok(output) => split_lines(&output.into_bytes()).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(this.error(format!("following logs of {what}"), e))],
            };
            futures_util::stream::iter(lines)
        }))
    }

    /// Creates the container. A leftover of an earlier failed attempt of the
    /// same deployment (same name, not running) is replaced.
    async fn create(&self, req: &RunRequest) -> Result<String> {
        let name = req.name();
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let body = self.container_body(req);
        let operation = || format!("creating container {name}");
        match self.client.create_container(Some(options.clone()), body.clone()).await {
            Ok(created) => Ok(created.id),
            Err(BollardError::DockerResponseServerError { status_code: 409, .. })
                if self.is_stale_leftover(req).await =>
            {
                tracing::info!(container = %name, "replacing a leftover container of this deployment");
                self.remove(&ContainerId(name.clone())).await?;
                self.client
                    .create_container(Some(options), body)
                    .await
                    .map(|created| created.id)
                    .map_err(|e| self.error(operation(), e))
            }
            Err(e) if is_not_found(&e) => {
                Err(Error::failed(operation(), format!("image {} is not present locally", req.image)))
            }
            Err(e) => Err(self.error(operation(), e)),
        }
    }

    async fn is_stale_leftover(&self, req: &RunRequest) -> bool {
        let Ok(existing) = self.client.inspect_container(&req.name(), None).await else {
            return false;
        };
        let labels = existing.config.and_then(|c| c.labels).unwrap_or_default();
        let ours = labels.get(labels::APP).map(String::as_str) == Some(req.app.as_str())
            && labels.get(labels::DEPLOYMENT).map(String::as_str) == Some(req.deployment.as_str());
        let running = existing.state.and_then(|s| s.running).unwrap_or(true);
        ours && !running
    }

    /// Joins the networks after the first (API 1.41 takes one at create),
    /// each with the app's name as an alias.
    async fn join_networks(&self, req: &RunRequest, id: &str) -> Result<()> {
        for network in req.options.networks.iter().skip(1) {
            let request = NetworkConnectRequest { container: id.to_owned(), endpoint_config: Some(endpoint(req)) };
            self.client
                .connect_network(network.as_str(), request)
                .await
                .map_err(|e| self.error(format!("connecting container {} to network {network}", req.name()), e))?;
        }
        Ok(())
    }

    fn container_body(&self, req: &RunRequest) -> ContainerCreateBody {
        let port = format!("{}/tcp", req.container_port);
        let binding =
            PortBinding { host_ip: Some(self.bind_address.to_string()), host_port: Some(req.host_port.to_string()) };
        let o = &req.options;
        let first_network = o.networks.first();
        ContainerCreateBody {
            image: Some(req.image.to_string()),
            env: Some(req.env.iter().map(|(k, v)| format!("{k}={}", v.expose())).collect()),
            labels: Some(container_labels(req)),
            exposed_ports: Some(vec![port.clone()]),
            cmd: o.command.as_ref().map(|c| c.words().to_vec()),
            stop_timeout: Some(whole_seconds(req.stop_timeout)),
            entrypoint: o.entrypoint.as_ref().map(|c| c.words().to_vec()),
            host_config: Some(HostConfig {
                port_bindings: Some(HashMap::from([(port, Some(vec![binding]))])),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                // An init reaps zombies and forwards SIGTERM, so apps that
                // run as PID 1 without handling signals still stop promptly.
                init: Some(true),
                // Hardening that ordinary apps never notice: no setuid
                // binary can gain privileges the container started without.
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                // Rotated, so that a chatty app cannot fill the disk.
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".to_owned()),
                    config: Some(o.effective_log_opts().into_iter().collect()),
                }),
                memory: o.memory.and_then(|m| i64::try_from(m.bytes()).ok()),
                nano_cpus: o.cpus.and_then(|c| i64::try_from(c.nano()).ok()),
                pids_limit: o.pids_limit.map(|p| p.get()),
                mounts: (!o.volumes.is_empty()).then(|| o.volumes.iter().map(mount).collect()),
                network_mode: first_network.map(|n| n.to_string()),
                ..Default::default()
            }),
            networking_config: first_network
                .map(|n| NetworkingConfig { endpoints_config: Some(HashMap::from([(n.to_string(), endpoint(req))])) }),
            ..Default::default()
        }
    }
}

/// Docker counts stop timeouts in whole seconds: a part of one rounds up.
pub(crate) fn whole_seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0)).unwrap_or(i64::MAX)
}

/// On every network the container answers to the app's name, so other
/// containers reach it as `http://APP:PORT` whichever release is live.
fn endpoint(req: &RunRequest) -> EndpointSettings {
    EndpointSettings { aliases: Some(vec![req.app.to_string()]), ..Default::default() }
}

pub(crate) fn mount(volume: &VolumeSpec) -> Mount {
    let (typ, source) = match &volume.source {
        VolumeSource::Named(name) => (MountType::VOLUME, name.to_string()),
        VolumeSource::Bind(path) => (MountType::BIND, path.clone()),
    };
    Mount {
        target: Some(volume.target.clone()),
        source: Some(source),
        typ: Some(typ),
        read_only: Some(volume.read_only),
        ..Default::default()
    }
}

pub(crate) fn container_labels(req: &RunRequest) -> HashMap<String, String> {
    let domains: Vec<&str> = req.domains.iter().map(|d| d.as_str()).collect();
    [
        (labels::MANAGED, "true".to_owned()),
        (labels::APP, req.app.to_string()),
        (labels::DEPLOYMENT, req.deployment.to_string()),
        (labels::HOST_PORT, req.host_port.to_string()),
        (labels::CONTAINER_PORT, req.container_port.to_string()),
        (labels::DOMAINS, domains.join(",")),
        (labels::IMAGE, req.reference.to_string()),
        (labels::MARKED, "true".to_owned()),
        // Names and non-secret settings only: env values are in the container's config.
        (labels::RELEASE, serde_json::to_string(&req.record()).unwrap_or_default()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Only a container the agent made counts (see [`ManagedContainer`]): its
/// name is the one its labels imply. A build's intermediate container that a
/// Dockerfile's `LABEL`s dressed up as ours has a name Docker made up.
fn genuine(c: &ManagedContainer) -> bool {
    let ok = c.name == container_name(&c.app, &c.deployment);
    if !ok {
        tracing::debug!(container = %c.id, name = %c.name, "a container with our labels but not our name; ignored");
    }
    ok
}

/// Reads our labels back; a container whose labels do not parse is not
/// ours to touch and is skipped.
fn managed_container(summary: ContainerSummary) -> Option<ManagedContainer> {
    let labels = summary.labels.unwrap_or_default();
    let label = |key: &str| labels.get(key).map(String::as_str);
    let id = summary.id.unwrap_or_default();
    let (Some(app), Some(deployment)) =
        (label(labels::APP).and_then(|v| v.parse().ok()), label(labels::DEPLOYMENT).and_then(|v| v.parse().ok()))
    else {
        tracing::debug!(container = %id, "managed container with unreadable labels; ignored");
        return None;
    };
    let state = summary.state.map(|s| s.to_string()).unwrap_or_default();
    Some(ManagedContainer {
        name: summary
            .names
            .and_then(|n| n.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_default(),
        image: label(labels::IMAGE).map(str::to_owned).or(summary.image).unwrap_or_default(),
        image_id: summary.image_id.unwrap_or_default(),
        legacy: label(labels::MARKED).is_none(),
        host_port: label(labels::HOST_PORT).and_then(|v| v.parse().ok()),
        container_port: label(labels::CONTAINER_PORT).and_then(|v| v.parse().ok()),
        domains: label(labels::DOMAINS)
            .unwrap_or_default()
            .split(',')
            .filter(|d| !d.is_empty())
            .filter_map(|d| d.parse().ok())
            .collect(),
        running: state == "running",
        state,
        created: summary.created.unwrap_or_default(),
        record: label(labels::RELEASE).and_then(|v| serde_json::from_str(v).ok()),
        id: ContainerId(id),
        app,
        deployment,
    })
}

/// The daemon's words for a host port someone else holds: `port is already
/// allocated` when another container has it, `address already in use` when
/// another process does.
fn is_port_taken(e: &BollardError) -> bool {
    match e {
        BollardError::DockerResponseServerError { message, .. } => {
            message.contains("port is already allocated") || message.contains("address already in use")
        }
        _ => false,
    }
}

fn is_removal_in_progress(e: &BollardError) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code: 409, message }
        if message.contains("already in progress"))
}

/// Stdout and stderr, the last `tail` lines and, with `follow`, what comes after.
pub(crate) fn log_options(tail: usize, follow: bool) -> bollard::query_parameters::LogsOptions {
    LogsOptionsBuilder::default().stdout(true).stderr(true).follow(follow).tail(&tail.to_string()).build()
}

fn split_lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split('\n')
        .map(|l| l.trim_end_matches('\r').to_owned())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .skip_while(String::is_empty)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

/// What a release was started with, from its labels and its env list
/// (`NAME=value`, the image's own ENV included: only the recorded names are
/// the release's): what a rollback brings back, for a container or a service.
pub(crate) fn recorded_from(
    labels: &HashMap<String, String>,
    env: &[String],
    operation: &str,
) -> Result<RecordedRelease> {
    let label = |key: &str| labels.get(key).map(String::as_str);
    let missing = |what: &str| Error::failed(operation, format!("its {what} was not recorded"));
    let record: ReleaseRecord = label(labels::RELEASE)
        .and_then(|v| serde_json::from_str(v).ok())
        .ok_or_else(|| missing("release settings (deployed by an older agent)"))?;
    let container_port =
        label(labels::CONTAINER_PORT).and_then(|v| v.parse().ok()).ok_or_else(|| missing("container port"))?;
    let domains = label(labels::DOMAINS)
        .unwrap_or_default()
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<Domain>>>()?;
    let all: BTreeMap<&str, &str> = env.iter().filter_map(|kv| kv.split_once('=')).collect();
    let mut values = BTreeMap::new();
    for name in &record.env {
        let value = all.get(name.as_str()).ok_or_else(|| missing(&format!("env variable {name}")))?;
        values.insert(name.clone(), Secret::new((*value).to_owned()));
    }
    Ok(RecordedRelease {
        image: label(labels::IMAGE).ok_or_else(|| missing("image"))?.parse()?,
        container_port,
        domains,
        env: values,
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_frames_split_into_lines_without_the_trailing_empty_one() {
        assert_eq!(split_lines(b"a\r\nb\n"), ["a", "b"]);
        assert_eq!(split_lines(b"a\n\nb"), ["a", "", "b"]);
        assert!(split_lines(b"\n").is_empty());
    }

    #[test]
    fn port_errors_are_recognised_by_the_daemons_words() {
        let err = |m: &str| BollardError::DockerResponseServerError { status_code: 500, message: m.to_owned() };
        assert!(is_port_taken(&err(
            "driver failed programming external connectivity on endpoint x (abc): Error starting userland proxy: listen tcp4 127.0.0.1:18555: bind: address already in use"
        )));
        assert!(is_port_taken(&err(
            "driver failed programming external connectivity on endpoint x (abc): Bind for 127.0.0.1:18555 failed: port is already allocated"
        )));
        assert!(!is_port_taken(&err("OCI runtime create failed")));
    }
}
