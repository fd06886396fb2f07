//! A release as a Swarm service spec, and back.

use bollard::models::{
    EndpointPortConfig, EndpointPortConfigPublishModeEnum, EndpointSpec, EndpointSpecModeEnum, Limit, Service,
    ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec, TaskSpecLogDriver,
    TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use otturnaut_core::traits::{RunRequest, container_name};
use otturnaut_core::{ContainerId, Domain, Error, ManagedContainer, RecordedRelease, Result, labels};

use crate::docker::{container_labels, mount, whole_seconds};

/// The id of the manager's image the service runs (`sha256:…`), so the live
/// mark (a tag on that image) can be matched to the service.
pub(super) const IMAGE_ID: &str = "otturnaut.image_id";

/// How soon Swarm restarts a task that exited: a crashing release is seen
/// as not running by the health check, and retried slowly.
const RESTART_DELAY_NS: i64 = 1_000_000_000;

/// Whether `name` is one of our services' names (`otturnaut-…`).
pub(super) fn is_ours(name: &str) -> bool {
    name.starts_with("otturnaut-")
}

/// The service of one release: `replicas` tasks of `image` (the release
/// image in the registry), at most one per node, the port published in host
/// mode on each, with the labels a container has on one host.
pub(super) fn service_spec(req: &RunRequest, image: &str, image_id: &str, replicas: u32) -> Result<ServiceSpec> {
    let o = &req.options;
    if !o.networks.is_empty() {
        return Err(Error::failed(
            format!("creating service {}", req.name()),
            "--network is not supported by the Swarm runtime (its services would need overlay networks)",
        ));
    }
    let mut labels = container_labels(req);
    labels.insert(IMAGE_ID.to_owned(), image_id.to_owned());
    let container = TaskSpecContainerSpec {
        image: Some(image.to_owned()),
        labels: Some(labels.clone()),
        // Swarm's `command` is the entrypoint and `args` the command.
        command: o.entrypoint.as_ref().map(|c| c.words().to_vec()),
        args: o.command.as_ref().map(|c| c.words().to_vec()),
        env: Some(req.env.iter().map(|(k, v)| format!("{k}={}", v.expose())).collect()),
        stop_grace_period: Some(whole_seconds(req.stop_timeout).saturating_mul(1_000_000_000)),
        init: Some(true),
        mounts: (!o.volumes.is_empty()).then(|| o.volumes.iter().map(mount).collect()),
        ..Default::default()
    };
    let task = TaskSpec {
        container_spec: Some(container),
        resources: Some(TaskSpecResources {
            limits: Some(Limit {
                nano_cpus: o.cpus.and_then(|c| i64::try_from(c.nano()).ok()),
                memory_bytes: o.memory.and_then(|m| i64::try_from(m.bytes()).ok()),
                pids: o.pids_limit.map(|p| p.get()),
            }),
            ..Default::default()
        }),
        restart_policy: Some(TaskSpecRestartPolicy {
            condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
            delay: Some(RESTART_DELAY_NS),
            ..Default::default()
        }),
        // One task per node: each publishes the same host port.
        placement: Some(TaskSpecPlacement { max_replicas: Some(1), ..Default::default() }),
        log_driver: Some(TaskSpecLogDriver {
            name: Some("json-file".to_owned()),
            options: Some(o.effective_log_opts().into_iter().collect()),
        }),
        ..Default::default()
    };
    Ok(ServiceSpec {
        name: Some(req.name()),
        labels: Some(labels),
        task_template: Some(task),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(i64::from(replicas)) }),
            ..Default::default()
        }),
        endpoint_spec: Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ports: Some(vec![EndpointPortConfig {
                target_port: Some(i64::from(req.container_port.get())),
                published_port: Some(i64::from(req.host_port.get())),
                publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    })
}

/// The replicas a service's spec asks for.
pub(super) fn replicas(spec: &ServiceSpec) -> i64 {
    spec.mode.as_ref().and_then(|m| m.replicated.as_ref()).and_then(|r| r.replicas).unwrap_or(0)
}

/// A spec asking for `n` replicas, otherwise `spec`.
pub(super) fn with_replicas(mut spec: ServiceSpec, n: i64) -> ServiceSpec {
    spec.mode = Some(ServiceSpecMode {
        replicated: Some(ServiceSpecModeReplicated { replicas: Some(n) }),
        ..Default::default()
    });
    spec
}

/// Reads our labels back as the pipeline's view of a release. `running` is
/// whether every asked-for task runs (the caller counted them); a service
/// scaled to zero is a stopped release, state `exited`.
pub(super) fn managed(service: Service, running: bool) -> Option<ManagedContainer> {
    let spec = service.spec?;
    let name = spec.name.clone()?;
    let labels = spec.labels.clone().unwrap_or_default();
    let label = |key: &str| labels.get(key).map(String::as_str);
    let app = super::app_label(&labels)?;
    let deployment = label(labels::DEPLOYMENT)?.parse().ok()?;
    let scaled_down = replicas(&spec) == 0;
    let state = if scaled_down {
        "exited"
    } else if running {
        "running"
    } else {
        "starting"
    };
    let managed = ManagedContainer {
        id: ContainerId(name.clone()),
        name,
        image: label(labels::IMAGE).unwrap_or_default().to_owned(),
        image_id: label(IMAGE_ID).unwrap_or_default().to_owned(),
        legacy: label(labels::MARKED).is_none(),
        host_port: label(labels::HOST_PORT).and_then(|v| v.parse().ok()),
        container_port: label(labels::CONTAINER_PORT).and_then(|v| v.parse().ok()),
        domains: domains(label(labels::DOMAINS)).into_iter().flatten().collect(),
        running: running && !scaled_down,
        state: state.to_owned(),
        created: service.created_at.map(|t| t.unix_timestamp()).unwrap_or_default(),
        record: label(labels::RELEASE).and_then(|v| serde_json::from_str(v).ok()),
        app,
        deployment,
    };
    // Only a service whose name its labels imply is ours (see ManagedContainer).
    (managed.name == container_name(&managed.app, &managed.deployment)).then_some(managed)
}

fn domains(label: Option<&str>) -> Result<Vec<Domain>> {
    label.unwrap_or_default().split(',').filter(|d| !d.is_empty()).map(str::parse).collect()
}

/// What the service was created with, env values included (for a rollback).
pub(super) fn recorded(spec: ServiceSpec, operation: &str) -> Result<RecordedRelease> {
    let env = spec.task_template.and_then(|t| t.container_spec).and_then(|c| c.env).unwrap_or_default();
    crate::docker::recorded_from(&spec.labels.unwrap_or_default(), &env, operation)
}
