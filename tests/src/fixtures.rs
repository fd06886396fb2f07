//! Container fixtures: build contexts `FROM scratch` with the host's static
//! busybox copied in (nothing can be pulled here), images built from them,
//! and a guard that removes what a test created.
//!
//! Independent of git: a context is a plain directory. `gitfix` can turn one
//! into a repository.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use otturnaut_adapters::docker::Docker;
use otturnaut_core::traits::{BuildRequest, ContainerRuntime, ImageBuilder, RunRequest};
use otturnaut_core::{
    AppId, CommitSha, ContainerPort, DeployEvent, DeploySpec, DeploymentId, Domain, EventSink, HealthCheck, HealthKind,
    HostPort, RepoUrl, Source,
};

/// Where the static busybox the fixtures copy into images lives.
pub const BUSYBOX: &str = "/bin/busybox";

/// The commit every fixture build claims to come from.
pub const FIXTURE_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// What a fixture image does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Prints `started <version>`, then serves `/www` with busybox httpd on
    /// `port`: `/` and `/version` answer the version, `/healthz` answers `ok`,
    /// `/greeting` the value of the env variable `GREETING` it started with.
    Serve { version: String, port: u16 },
    /// Like `Serve`, but `/www` is the whole build context (`COPY . /www`):
    /// what the build sent can be fetched over HTTP.
    ServeContext { port: u16 },
    /// Prints `boom` (stdout) and `boom on stderr`, then exits with `code`.
    Exit { code: i32 },
    /// Runs forever without listening on any port.
    NeverListen,
    /// Builds, and is created fine, but the daemon refuses to start it
    /// (`USER nobody` with no passwd file in the image).
    FailToStart,
    /// The build prints `step output` and `about to fail`, then a `RUN`
    /// step exits with 7.
    FailBuild,
    /// A `RUN` step sleeps `secs` seconds: for build timeouts.
    SlowBuild { secs: u32 },
    /// A hostile repository: its Dockerfile's `LABEL`s claim to be the
    /// release `deployment` of `victim` on `host_port`, then a `RUN` sleeps
    /// `secs` seconds. The legacy builder gives that step's intermediate
    /// container those labels.
    Spoof { victim: String, deployment: String, host_port: u16, secs: u32 },
}

impl Behaviour {
    /// A healthy server of `version` on container port 8080.
    pub fn serve(version: &str) -> Self {
        Behaviour::Serve { version: version.to_owned(), port: 8080 }
    }

    /// The Dockerfile for this behaviour.
    pub fn dockerfile(&self) -> String {
        let mut lines = vec!["FROM scratch".to_owned(), "COPY busybox /bin/busybox".to_owned()];
        let httpd = |port: u16| {
            format!(r#"CMD ["/bin/busybox","sh","-c","echo started; exec /bin/busybox httpd -f -v -p {port} -h /www"]"#)
        };
        match self {
            Behaviour::Serve { version, port } => {
                lines.push("COPY www /www".into());
                lines.push(format!("EXPOSE {port}"));
                let start = format!(r#"echo started {version}; echo \"$GREETING\" > /www/greeting"#);
                lines.push(httpd(*port).replace("echo started", &start));
            }
            Behaviour::ServeContext { port } => {
                lines.push("COPY . /www".into());
                lines.push(httpd(*port));
            }
            Behaviour::Exit { code } => lines
                .push(format!(r#"CMD ["/bin/busybox","sh","-c","echo boom; echo boom on stderr >&2; exit {code}"]"#)),
            Behaviour::NeverListen => {
                lines.push(r#"CMD ["/bin/busybox","sleep","3600"]"#.into());
            }
            Behaviour::FailToStart => {
                lines.push("USER nobody".into());
                lines.push(r#"CMD ["/bin/busybox","sleep","3600"]"#.into());
            }
            Behaviour::FailBuild => lines
                .push(r#"RUN ["/bin/busybox","sh","-c","echo step output; echo about to fail >&2; exit 7"]"#.into()),
            Behaviour::SlowBuild { secs } => {
                lines.push(format!(r#"RUN ["/bin/busybox","sleep","{secs}"]"#));
            }
            Behaviour::Spoof { victim, deployment, host_port, secs } => {
                lines.push(format!(
                    "LABEL otturnaut.managed=true otturnaut.app={victim} otturnaut.deployment={deployment} \
                     otturnaut.host_port={host_port} otturnaut.container_port=8080 otturnaut.domains={victim}.chaos.test"
                ));
                lines.push(format!(r#"RUN ["/bin/busybox","sleep","{secs}"]"#));
            }
        }
        lines.push(String::new());
        lines.join("\n")
    }
}

/// Writes a build context for `behaviour` into `dir` (created if missing):
/// `Dockerfile`, `busybox`, and for servers `www/`.
pub fn write_context(dir: &Path, behaviour: &Behaviour) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("Dockerfile"), behaviour.dockerfile())?;
    fs::copy(BUSYBOX, dir.join("busybox"))?;
    if let Behaviour::Serve { version, .. } = behaviour {
        let www = dir.join("www");
        fs::create_dir_all(&www)?;
        fs::write(www.join("index.html"), format!("{version}\n"))?;
        fs::write(www.join("version"), format!("{version}\n"))?;
        fs::write(www.join("healthz"), "ok\n")?;
    }
    Ok(())
}

/// Connects to the real Docker Engine, failing the test loudly if it is absent.
pub async fn docker() -> Docker {
    crate::services::require_docker().await;
    Docker::connect().await.unwrap_or_else(|e| panic!("Docker is up but the adapter cannot connect: {e}"))
}

/// A build request for the context in `dir`, as the pipeline would make it.
pub fn build_request(app: &AppId, deployment: &DeploymentId, dir: &Path) -> BuildRequest {
    BuildRequest {
        app: app.clone(),
        deployment: deployment.clone(),
        context_dir: dir.to_path_buf(),
        dockerfile: Default::default(),
        build_args: Default::default(),
        build_secrets: Default::default(),
        repo: fixture_repo(app),
        commit: fixture_commit(),
        timeout: Duration::from_secs(120),
    }
}

pub fn fixture_repo(app: &AppId) -> RepoUrl {
    RepoUrl::parse_allowing_file(&format!("file:///fixtures/{app}")).unwrap_or_else(|e| panic!("fixture repo URL: {e}"))
}

pub fn fixture_commit() -> CommitSha {
    FIXTURE_COMMIT.parse().unwrap_or_else(|e| panic!("fixture commit: {e}"))
}

/// An image built through the adapter, tagged `otturnaut-{app}:{deployment}`.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub tag: String,
    pub deployment: DeploymentId,
}

/// Builds `behaviour` into an image for `app` under a fresh deployment id.
pub async fn build_image(docker: &Docker, app: &AppId, behaviour: &Behaviour) -> anyhow::Result<BuiltImage> {
    let dir = tempfile::tempdir()?;
    write_context(dir.path(), behaviour)?;
    let deployment = DeploymentId::generate();
    let (events, mut rx) = EventSink::channel();
    let built = docker.build(&build_request(app, &deployment, dir.path()), &events).await;
    while let Ok(event) = rx.try_recv() {
        if let DeployEvent::Warning { message } = event {
            eprintln!("fixture build for {app}: warning: {message}");
        }
    }
    let tag = built.with_context(|| format!("building fixture {behaviour:?} for {app}"))?;
    Ok(BuiltImage { tag: tag.to_string(), deployment })
}

/// A host port that was free a moment ago (the kernel picked it).
pub fn free_port() -> HostPort {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap_or_else(|e| panic!("binding a free port on 127.0.0.1: {e}"));
    let port = listener.local_addr().unwrap_or_else(|e| panic!("local address of a listener: {e}")).port();
    HostPort::try_from(port).unwrap_or_else(|e| panic!("kernel gave port {port}: {e}"))
}

/// A run request for `image` of `app`, publishing `container_port` on `host_port`.
pub fn run_request(
    app: &AppId,
    deployment: &DeploymentId,
    image: &str,
    host_port: HostPort,
    container_port: u16,
) -> RunRequest {
    RunRequest {
        app: app.clone(),
        deployment: deployment.clone(),
        image: image.parse().unwrap_or_else(|e| panic!("image {image}: {e}")),
        reference: image.parse().unwrap_or_else(|e| panic!("image {image}: {e}")),
        host_port,
        container_port: ContainerPort::try_from(container_port)
            .unwrap_or_else(|e| panic!("container port {container_port}: {e}")),
        env: Default::default(),
        domains: Vec::new(),
        health: Default::default(),
        commit: None,
        rollback_of: None,
        options: Default::default(),
        stop_timeout: otturnaut_core::Timeouts::default().stop,
        drain_timeout: otturnaut_core::Timeouts::default().drain,
    }
}

/// Removes, when dropped, every container and release image of `app`, and
/// any extra image registered with [`DockerCleanup::image`]. Works from a
/// panicking test too: it runs on its own thread and runtime.
#[derive(Debug)]
pub struct DockerCleanup {
    app: AppId,
    images: Vec<String>,
}

impl DockerCleanup {
    pub fn new(app: &AppId) -> Self {
        DockerCleanup { app: app.clone(), images: Vec::new() }
    }

    /// Also remove this image (one built without our labels).
    pub fn image(&mut self, reference: impl Into<String>) {
        self.images.push(reference.into());
    }
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let app = self.app.clone();
        let extra = std::mem::take(&mut self.images);
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(remove_everything_of(&app, &extra))
        });
        match cleanup.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("cleanup of {}: {e:#}", self.app),
            Err(_) => eprintln!("cleanup of {} panicked", self.app),
        }
    }
}

/// A bollard client of the tests' own, for what no port covers (inspecting
/// images and containers, creating a spoof): the adapter keeps its client private.
pub trait RawDocker {
    fn client(&self) -> bollard::Docker;
}

impl RawDocker for Docker {
    fn client(&self) -> bollard::Docker {
        bollard::Docker::connect_with_defaults().unwrap_or_else(|e| panic!("a bollard client for the tests: {e}"))
    }
}

async fn remove_everything_of(app: &AppId, extra: &[String]) -> anyhow::Result<()> {
    use bollard::query_parameters::RemoveImageOptionsBuilder;
    let docker = Docker::connect().await?;
    for container in docker.list(Some(app)).await? {
        docker.remove(&container.id).await?;
    }
    let force = || Some(RemoveImageOptionsBuilder::default().force(true).build());
    // By our tags, never by id: a prebuilt release's id is a shared fixture
    // image that other tests use.
    for tag in docker.list_images(Some(app)).await?.into_iter().flat_map(|i| i.tags) {
        docker.remove_image(&tag).await?;
    }
    for image in extra {
        match docker.client().remove_image(image, force(), None).await {
            Ok(_) => {}
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => anyhow::bail!("removing image {image}: {e}"),
        }
    }
    Ok(())
}

/// A deploy of the fixture repository at `url` (`git_ref`), for `domain`:
/// the fixture serves on 8080 and answers `/healthz`, checked every 100 ms
/// for up to `health_deadline`; a 5 s drain.
pub fn git_spec(app: &AppId, url: &str, git_ref: &str, domain: Domain, health_deadline: Duration) -> DeploySpec {
    let source = Source::Git {
        url: url.parse().expect("git:// URL"),
        git_ref: git_ref.parse().expect("ref"),
        dockerfile: Default::default(),
        build_args: Default::default(),
        build_secrets: Default::default(),
        ssh_key: None,
    };
    let mut spec = DeploySpec::new(app.clone(), source, ContainerPort::try_from(8080).expect("port"));
    spec.domains = vec![domain];
    let mut health =
        HealthCheck::new(HealthKind::Http { path: "/healthz".parse().expect("path"), expected_status: 200 });
    health.interval = Duration::from_millis(100);
    health.deadline = health_deadline;
    spec.health = health;
    spec.timeouts.drain = Duration::from_secs(5);
    spec
}

/// `docker …`, for what the adapter does not expose; panics if it cannot run.
pub fn docker_cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("docker")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker {args:?}: {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
