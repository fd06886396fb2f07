//! Domain types, the error type and the port traits of Otturnaut.
//!
//! Everything a deploy talks about is a validated value here: once you hold an
//! [`AppId`] or a [`RepoUrl`], it is known to be safe to put in a container name,
//! a Caddy `@id` or a `git` command line. The port traits in [`traits`] are what
//! the pipeline (`otturnaut-steps`) drives and what `otturnaut-adapters`
//! implements against Docker, Caddy and git.
//!
//! Architecture invariant: no I/O here, and no dependency on bollard, reqwest
//! or gix (`tests/tests/tidy.rs` checks the dependencies).

#![warn(missing_docs)]

mod error;
mod event;
pub mod faults;
mod ids;
mod net;
mod options;
mod release;
pub mod request;
mod secret;
mod source;
mod spec;
pub mod traits;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::{Error, Result, Service};
pub use event::{DeployEvent, EventReceiver, EventSink, LOG_BACKLOG, MAX_LOG_LINE, Step, cut_line};
pub use ids::{AppId, DeploymentId, Domain, EnvName, ImageRef, domain_conflict};
pub use net::{ContainerPort, HostPort, PortRange};
pub use options::{
    CommandLine, Cpus, LogOpt, MemorySize, NetworkName, PidsLimit, VolumeName, VolumeSource, VolumeSpec,
};
pub use release::{
    ContainerId, ContainerStatus, ManagedContainer, ManagedImage, RecordedRelease, Release, ReleaseInfo, ReleaseRecord,
    ReleaseState, RouteTarget, beyond_keep, live_container, releases, unmarked,
};
pub use request::{DeployRequest, InvalidField};
pub use secret::{REDACTED, Secret};
pub use source::{CommitSha, DockerfilePath, GitRef, RepoUrl, Transport, redact_url_text};
pub use spec::{
    DeploySpec, HealthCheck, HealthKind, HttpPath, MAX_DURATION, MAX_RUNTIME_ITEMS, RuntimeOptions, Source, Timeouts,
};
pub use traits::Adapters;

/// Label keys and naming rules shared by every adapter: the truth about what
/// Otturnaut owns lives in these labels, so they are defined once.
pub mod labels {
    /// `true` on everything Otturnaut made: what it may list and remove.
    pub const MANAGED: &str = "otturnaut.managed";
    /// The app a container or built image belongs to.
    pub const APP: &str = "otturnaut.app";
    /// The deployment that made it.
    pub const DEPLOYMENT: &str = "otturnaut.deployment";
    /// The container's host port (the port pool reads it back).
    pub const HOST_PORT: &str = "otturnaut.host_port";
    /// The port the app listens on inside the container.
    pub const CONTAINER_PORT: &str = "otturnaut.container_port";
    /// The release's domains, comma-separated (routes are rebuilt from them).
    pub const DOMAINS: &str = "otturnaut.domains";
    /// The repository a built image came from, credentials redacted.
    pub const REPO: &str = "otturnaut.repo";
    /// The commit a built image came from.
    pub const COMMIT: &str = "otturnaut.commit";
    /// When a built image's deployment started (Unix seconds, from its id).
    pub const CREATED: &str = "otturnaut.created";
    /// The image as the user knows it ([`crate::Release::image`]).
    pub const IMAGE: &str = "otturnaut.image";
    /// On every container made by an agent that writes live marks: a
    /// container without it was deployed before, and only for such
    /// containers does the old, route-based rule decide what is live.
    pub const MARKED: &str = "otturnaut.marked";
    /// The release's non-secret settings as JSON ([`crate::ReleaseRecord`]).
    pub const RELEASE: &str = "otturnaut.release";
}
