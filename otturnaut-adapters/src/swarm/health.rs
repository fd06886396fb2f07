//! Health on a cluster: every task passes the check on its node's address.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::try_join_all;
use otturnaut_core::traits::{ContainerRuntime as _, HealthProbe};
use otturnaut_core::{ContainerId, Error, HealthCheck, HostPort, Result};

use super::Swarm;
use crate::health::Probe;

/// [`HealthProbe`] for services: the single-host probe, run against each
/// node that runs a task of the service, all at once. Healthy when every one
/// passes; a task that dies fails the check at once (the probes ask the
/// runtime, which reports the service not running).
#[derive(Clone, Debug)]
pub struct SwarmProbe {
    swarm: Swarm,
    probe: Probe,
}

impl SwarmProbe {
    /// A probe of `swarm`'s services.
    pub fn new(swarm: Swarm) -> Result<Self> {
        let probe = Probe::new(Arc::new(swarm.clone()))?;
        Ok(SwarmProbe { swarm, probe })
    }
}

#[async_trait]
impl HealthProbe for SwarmProbe {
    async fn check(&self, container: &ContainerId, port: HostPort, check: &HealthCheck) -> Result<()> {
        let hosts = self.swarm.task_hosts(&container.0).await?;
        let wanted = usize::try_from(self.swarm.config.replicas.get()).unwrap_or(usize::MAX);
        if hosts.len() < wanted {
            // Tasks that exited: say how and with what output, as one host
            // says it of a container, not just that fewer run.
            let status = self.swarm.status(container).await?;
            if status.restarting || status.exit_code.is_some() {
                return Err(self.probe.exited(container, status).await);
            }
            return Err(Error::failed(
                format!("checking the health of service {container}"),
                format!("{} of {wanted} tasks run", hosts.len()),
            ));
        }
        try_join_all(hosts.into_iter().map(|host| {
            let probe = self.probe.clone().with_host(host);
            async move {
                probe.check(container, port, check).await.map_err(|e| match e {
                    Error::Unhealthy { deadline, last_error } => {
                        Error::Unhealthy { deadline, last_error: format!("task on {host}: {last_error}") }
                    }
                    other => other,
                })
            }
        }))
        .await
        .map(|_| ())
    }
}
