//! [`ContainerRuntime`] for [`Swarm`]: a release is a service.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{Task, TaskState};
use bollard::query_parameters::{
    InspectServiceOptions, ListTasksOptionsBuilder, PushImageOptionsBuilder, TagImageOptionsBuilder,
    UpdateServiceOptionsBuilder,
};
use futures_util::StreamExt;
use otturnaut_core::traits::{ContainerRuntime, RunRequest};
use otturnaut_core::{AppId, ContainerId, ContainerStatus, Error, ManagedContainer, RecordedRelease, Result};
use tokio::time::{Instant, sleep};

use super::{Swarm, app_filter, our_services, spec};
use crate::docker::is_not_found;

/// How often task states are polled while waiting.
const POLL: Duration = Duration::from_millis(200);
/// How many task states [`ContainerRuntime::logs`] starts with.
const STATE_LINES: usize = 3;
/// How many lines of states and output a task that exited at start is reported with.
const EXIT_LOG_LINES: usize = 20;
/// How long [`ContainerRuntime::logs`] reads the tasks' output.
const LOG_WAIT: Duration = Duration::from_secs(5);
/// Extra time a scale-down may take beyond the stop grace period.
const STOP_SLACK: Duration = Duration::from_secs(30);

#[async_trait]
impl ContainerRuntime for Swarm {
    async fn start(&self, req: &RunRequest) -> Result<ContainerId> {
        let name = req.name();
        let image = self.push(req).await?;
        let image_id = self
            .docker
            .client()
            .inspect_image(req.image.as_str())
            .await
            .map_err(|e| self.docker.error(format!("inspecting image {}", req.image), e))?
            .id
            .unwrap_or_default();
        let spec = spec::service_spec(req, &image, &image_id, self.config.replicas.get())?;
        match self.docker.client().create_service(spec.clone(), None).await {
            Ok(_) => {}
            Err(BollardError::DockerResponseServerError { status_code: 409, .. }) => {
                // A leftover of this very deployment (an earlier attempt on a
                // port that was taken): replace it.
                tracing::info!(service = %name, "replacing a leftover service of this deployment");
                self.remove(&ContainerId(name.clone())).await?;
                self.docker
                    .client()
                    .create_service(spec, None)
                    .await
                    .map_err(|e| self.docker.error(format!("creating service {name}"), e))?;
            }
            Err(e) => return Err(self.docker.error(format!("creating service {name}"), e)),
        }
        // Either every task runs, or nothing is left behind.
        match self.wait_all_running(&name, req).await {
            Ok(()) => Ok(ContainerId(name)),
            Err(e) => {
                if let Err(c) = self.remove(&ContainerId(name.clone())).await {
                    return Err(Error::failed(
                        format!("starting service {name}"),
                        format!("{e}; removing the service failed too: {c}"),
                    ));
                }
                Err(e)
            }
        }
    }

    /// Scales the service to zero and waits until no task of it runs: a
    /// stopped release holds no port on any node. A task on a lost node
    /// counts as stopped: it can report nothing before its node returns,
    /// and the returning node stops it (the service asks for none).
    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<()> {
        let op = format!("stopping service {id}");
        let Some(service) = self.inspect(id).await? else {
            return Ok(());
        };
        let version = service.version.and_then(|v| v.index).unwrap_or_default();
        let spec = service.spec.unwrap_or_default();
        if spec::replicas(&spec) != 0 {
            let options = UpdateServiceOptionsBuilder::default().version(i32::try_from(version).unwrap_or(0)).build();
            match self.docker.client().update_service(&id.0, spec::with_replicas(spec, 0), options, None).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) => return Err(self.docker.error(op, e)),
            }
        }
        let deadline = Instant::now() + grace + STOP_SLACK;
        loop {
            let (tasks, nodes) = tokio::try_join!(self.all_tasks(&id.0), self.nodes())?;
            if tasks.iter().all(|t| is_down(t) || nodes.lost(t)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout { operation: op, after: grace + STOP_SLACK });
            }
            sleep(POLL).await;
        }
    }

    async fn remove(&self, id: &ContainerId) -> Result<()> {
        match self.docker.client().delete_service(&id.0).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(self.docker.error(format!("removing service {id}"), e)),
        }
        // The manager's own task stops with its grace period, holding the
        // release image until then (its removal would fail): kill it now, as
        // the single-host runtime kills a container it removes. Tasks on the
        // other nodes stop by themselves; they hold no image of the manager.
        self.kill_local_tasks(id).await
    }

    /// Running when every task the service asks for runs; otherwise the exit
    /// code of the newest task that ended, if one did.
    async fn status(&self, id: &ContainerId) -> Result<ContainerStatus> {
        let service = self
            .inspect(id)
            .await?
            .ok_or_else(|| Error::failed(format!("inspecting service {id}"), "no such service"))?;
        let wanted = service.spec.as_ref().map(spec::replicas).unwrap_or(0);
        let (tasks, nodes) = tokio::try_join!(self.all_tasks(&id.0), self.nodes())?;
        let running = wanted > 0 && count(tasks.iter().filter(|t| wants_running(t) && nodes.runs(t))) >= wanted;
        let ended = newest_ended(&tasks);
        Ok(ContainerStatus {
            running,
            // Swarm restarts a task that exited: that is a crash loop.
            restarting: !running && ended.is_some() && wanted > 0,
            exit_code: if running { None } else { ended.and_then(exit_code) },
            started: None,
        })
    }

    /// The states of the newest tasks, which explain a failure the output
    /// may not (`task: non-zero exit (1)`, a pull error), then the last
    /// lines of the tasks' output: `tail` lines in all. The output is read
    /// for at most [`LOG_WAIT`]: this explains an error, it must not delay it.
    async fn logs(&self, id: &ContainerId, tail: usize) -> Result<Vec<String>> {
        let mut tasks = self.all_tasks(&id.0).await?;
        tasks.sort_by_key(|t| t.updated_at.map(|d| d.unix_timestamp_nanos()).unwrap_or_default());
        let mut lines: Vec<String> = tasks.iter().map(describe).collect();
        lines.drain(..lines.len().saturating_sub(STATE_LINES.min(tail)));
        let budget = tail - lines.len();
        if budget == 0 {
            return Ok(lines);
        }
        let mut output = std::collections::VecDeque::with_capacity(budget);
        let mut stream = self.stream_logs(id, budget, false);
        let read = tokio::time::timeout(LOG_WAIT, async {
            while let Some(line) = stream.next().await {
                if output.len() == budget {
                    output.pop_front();
                }
                output.push_back(line?);
            }
            Ok::<(), Error>(())
        })
        .await;
        match read {
            Ok(Ok(())) => {}
            Ok(Err(e)) => lines.push(format!("(the service's output could not be read: {e})")),
            Err(_) => lines.push(format!("(the service's output was not all read within {LOG_WAIT:?})")),
        }
        while lines.len() + output.len() > tail && output.pop_front().is_some() {}
        lines.extend(output);
        Ok(lines)
    }

    async fn list(&self, app: Option<&AppId>) -> Result<Vec<ManagedContainer>> {
        let (services, nodes) =
            tokio::try_join!(our_services(&self.docker, app_filter(app), "listing managed services"), self.nodes())?;
        let mut out = Vec::new();
        for service in services {
            let Some(name) = service.spec.as_ref().and_then(|s| s.name.clone()).filter(|n| spec::is_ours(n)) else {
                continue;
            };
            let running = match &service.spec {
                Some(s) if spec::replicas(s) > 0 => {
                    let tasks = self.all_tasks(&name).await?;
                    count(tasks.iter().filter(|t| wants_running(t) && nodes.runs(t))) >= spec::replicas(s)
                }
                _ => false,
            };
            out.extend(spec::managed(service, running));
        }
        Ok(out)
    }

    async fn recorded(&self, id: &ContainerId) -> Result<RecordedRelease> {
        let op = format!("reading what service {id} was created with");
        let service = self.inspect(id).await?.ok_or_else(|| Error::failed(&op, "no such service"))?;
        spec::recorded(service.spec.unwrap_or_default(), &op)
    }
}

impl Swarm {
    /// Tags the release image for the registry and pushes it there, so every
    /// node can pull it. Returns the reference the service runs.
    async fn push(&self, req: &RunRequest) -> Result<String> {
        let (repo, tag) = req.image.as_str().rsplit_once(':').unwrap_or((req.image.as_str(), "latest"));
        let remote_repo = format!("{}/{repo}", self.config.registry);
        let remote = format!("{remote_repo}:{tag}");
        let op = format!("pushing image {} to the registry {}", req.image, self.config.registry);
        let options = TagImageOptionsBuilder::default().repo(&remote_repo).tag(tag).build();
        self.docker
            .client()
            .tag_image(req.image.as_str(), Some(options))
            .await
            .map_err(|e| self.docker.error(op.clone(), e))?;
        let options = PushImageOptionsBuilder::default().tag(tag).build();
        let mut stream = self.docker.client().push_image(&remote_repo, Some(options), None);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| self.docker.error(op.clone(), e))?;
            if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                return Err(Error::failed(op, detail));
            }
        }
        Ok(remote)
    }

    /// Force-removes the containers of service `id` on the manager's daemon.
    async fn kill_local_tasks(&self, id: &ContainerId) -> Result<()> {
        let filters = HashMap::from([("label", vec![format!("com.docker.swarm.service.name={}", id.0)])]);
        let options =
            bollard::query_parameters::ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let containers = self
            .docker
            .client()
            .list_containers(Some(options))
            .await
            .map_err(|e| self.docker.error(format!("listing the containers of service {id} on the manager"), e))?;
        for container in containers.into_iter().filter_map(|c| c.id) {
            let options = bollard::query_parameters::RemoveContainerOptionsBuilder::default().force(true).build();
            match self.docker.client().remove_container(&container, Some(options)).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                // Swarm's own removal of it is already under way.
                Err(BollardError::DockerResponseServerError { status_code: 409, .. }) => {}
                Err(e) => return Err(self.docker.error(format!("removing a task of service {id}"), e)),
            }
        }
        Ok(())
    }

    pub(super) async fn inspect(&self, id: &ContainerId) -> Result<Option<bollard::models::Service>> {
        match self.docker.client().inspect_service(&id.0, None::<InspectServiceOptions>).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.docker.error(format!("inspecting service {id}"), e)),
        }
    }

    /// Every task of the service Swarm still knows, old ones included.
    async fn all_tasks(&self, service: &str) -> Result<Vec<Task>> {
        let filters = HashMap::from([("service", vec![service.to_owned()])]);
        let options = ListTasksOptionsBuilder::default().filters(&filters).build();
        match self.docker.client().list_tasks(Some(options)).await {
            Ok(tasks) => Ok(tasks),
            Err(e) if is_not_found(&e) => Ok(Vec::new()),
            Err(e) => Err(self.docker.error(format!("listing the tasks of service {service}"), e)),
        }
    }

    /// Waits until every asked-for task runs. Fails at once when a task
    /// fails or is rejected, with [`Error::PortTaken`] when Swarm cannot
    /// place a task because the host port is in use on the nodes, and after
    /// the start timeout otherwise.
    async fn wait_all_running(&self, name: &str, req: &RunRequest) -> Result<()> {
        let op = format!("starting service {name}");
        let wanted = i64::from(self.config.replicas.get());
        let deadline = Instant::now() + self.start_timeout;
        let mut last = String::from("no task yet");
        loop {
            let (tasks, nodes) = tokio::try_join!(self.all_tasks(name), self.nodes())?;
            if let Some(failed) = tasks.iter().find(|t| ended_badly(t)) {
                let container = ContainerId(name.to_owned());
                // The task states, then the tasks' own output: what says why.
                let logs = match self.logs(&container, EXIT_LOG_LINES).await {
                    Ok(lines) => lines,
                    Err(_) => tasks.iter().map(describe).collect(),
                };
                return Err(Error::ContainerExited { container, exit_code: exit_code(failed).unwrap_or(-1), logs });
            }
            let current: Vec<&Task> = tasks.iter().filter(|t| wants_running(t)).collect();
            if count(current.iter().copied().filter(|t| nodes.runs(t))) >= wanted {
                return Ok(());
            }
            if current.iter().any(|t| message(t).contains("port already in use")) {
                return Err(Error::PortTaken(req.host_port));
            }
            if let Some(t) = current.iter().find(|t| !nodes.runs(t)) {
                last = describe(t);
            }
            if Instant::now() >= deadline {
                return Err(Error::failed(
                    op,
                    format!(
                        "not every task was running after {}: {last}",
                        humantime::format_duration(self.start_timeout)
                    ),
                ));
            }
            sleep(POLL).await;
        }
    }
}

fn count<'a>(tasks: impl Iterator<Item = &'a Task>) -> i64 {
    i64::try_from(tasks.count()).unwrap_or(i64::MAX)
}

fn state(task: &Task) -> Option<TaskState> {
    task.status.as_ref().and_then(|s| s.state)
}

fn wants_running(task: &Task) -> bool {
    task.desired_state == Some(TaskState::RUNNING)
}

/// A task that will not run again: done, failed, refused, or gone.
fn is_down(task: &Task) -> bool {
    matches!(
        state(task),
        Some(
            TaskState::COMPLETE
                | TaskState::SHUTDOWN
                | TaskState::FAILED
                | TaskState::REJECTED
                | TaskState::REMOVE
                | TaskState::ORPHANED
        )
    )
}

fn ended_badly(task: &Task) -> bool {
    matches!(state(task), Some(TaskState::FAILED | TaskState::REJECTED))
}

fn newest_ended(tasks: &[Task]) -> Option<&Task> {
    tasks
        .iter()
        .filter(|t| ended_badly(t) || state(t) == Some(TaskState::COMPLETE))
        .max_by_key(|t| t.updated_at.map(|d| d.unix_timestamp()).unwrap_or_default())
}

fn exit_code(task: &Task) -> Option<i64> {
    task.status.as_ref()?.container_status.as_ref()?.exit_code
}

fn message(task: &Task) -> String {
    let status = task.status.as_ref();
    let err = status.and_then(|s| s.err.clone()).unwrap_or_default();
    let msg = status.and_then(|s| s.message.clone()).unwrap_or_default();
    format!("{msg} {err}")
}

/// One line about a task: `task 2 on node x: failed: task: non-zero exit (1)`.
fn describe(task: &Task) -> String {
    let state = state(task).map(|s| s.to_string()).unwrap_or_else(|| "unknown".into());
    format!(
        "task {} on node {}: {state}: {}",
        task.slot.unwrap_or_default(),
        task.node_id.as_deref().unwrap_or("(unassigned)"),
        message(task).trim()
    )
}
