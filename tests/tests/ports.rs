//! The host port pool against the real kernel: ports bound by other
//! processes are skipped, concurrent allocations never collide.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use otturnaut_adapters::ports::PortPool;
use otturnaut_core::traits::{ContainerRuntime, PortAllocator, RunRequest};
use otturnaut_core::{
    AppId, ContainerId, ContainerStatus, DeploymentId, Error, HostPort, ManagedContainer, PortRange, Result,
};

/// A runtime whose only behaviour is listing managed containers holding
/// `ports` (or failing to list, when `fail` is set).
#[derive(Default)]
struct ListingRuntime {
    ports: Vec<u16>,
    fail: bool,
    /// Ports of stopped containers (retained releases).
    stopped: Vec<u16>,
}

#[async_trait]
impl ContainerRuntime for ListingRuntime {
    async fn start(&self, _req: &RunRequest) -> Result<ContainerId> {
        Err(Error::failed("start", "not part of this fake"))
    }
    async fn stop(&self, _id: &ContainerId, _grace: Duration) -> Result<()> {
        Err(Error::failed("stop", "not part of this fake"))
    }
    async fn remove(&self, _id: &ContainerId) -> Result<()> {
        Err(Error::failed("remove", "not part of this fake"))
    }
    async fn status(&self, _id: &ContainerId) -> Result<ContainerStatus> {
        Err(Error::failed("status", "not part of this fake"))
    }
    async fn logs(&self, _id: &ContainerId, _tail: usize) -> Result<Vec<String>> {
        Err(Error::failed("logs", "not part of this fake"))
    }
    async fn list(&self, _app: Option<&AppId>) -> Result<Vec<ManagedContainer>> {
        if self.fail {
            return Err(Error::Unavailable {
                service: otturnaut_core::Service::Docker,
                address: "fake".into(),
                detail: "down".into(),
            });
        }
        let running = self.ports.iter().map(|&p| (p, true));
        Ok(running
            .chain(self.stopped.iter().map(|&p| (p, false)))
            .map(|(p, running)| ManagedContainer {
                id: ContainerId(format!("c{p}")),
                name: format!("otturnaut-fake-{p}"),
                app: "fake".parse().expect("app"),
                deployment: DeploymentId::generate(),
                image: "img".into(),
                image_id: "sha256:img".into(),
                legacy: false,
                host_port: Some(HostPort::try_from(p).expect("port")),
                container_port: None,
                domains: Vec::new(),
                running,
                state: if running { "running" } else { "exited" }.into(),
                created: 0,
                record: None,
            })
            .collect())
    }
    async fn recorded(&self, _id: &ContainerId) -> Result<otturnaut_core::RecordedRelease> {
        Err(Error::failed("recorded", "not part of this fake"))
    }
}

fn pool(start: u16, end: u16, runtime: ListingRuntime) -> PortPool {
    PortPool::new(PortRange::new(start, end).expect("range"), Arc::new(runtime))
}

fn free_on_all_interfaces(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok() && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Two adjacent ports that are free right now.
fn free_pair() -> u16 {
    for _ in 0..200 {
        let p =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("ephemeral port").port();
        if p < u16::MAX && free_on_all_interfaces(p) && free_on_all_interfaces(p + 1) {
            return p;
        }
    }
    panic!("no two adjacent free ports found");
}

/// `busybox httpd` listening on 127.0.0.1:`port` in a separate process.
struct OtherProcess(Child);

impl OtherProcess {
    fn listen(port: u16) -> Self {
        let child = Command::new("busybox")
            .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting busybox httpd (busybox-static installed?)");
        let start = Instant::now();
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "busybox httpd did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        OtherProcess(child)
    }
}

impl Drop for OtherProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn skips_a_port_another_process_listens_on() {
    let p = free_pair();
    let _other = OtherProcess::listen(p);
    let pool = pool(p, p + 1, ListingRuntime::default());
    // The scan starts at a random offset; repeat so both orders occur.
    for _ in 0..20 {
        let owner = DeploymentId::generate();
        let got = pool.allocate(&owner, &[]).await.expect("one port is free");
        assert_eq!(got.get(), p + 1, "port {p} is held by busybox");
        pool.release(&owner).await.expect("release");
    }
}

#[tokio::test]
async fn skips_a_port_bound_on_all_interfaces() {
    let p = free_pair();
    let _listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, p)).expect("bind 0.0.0.0");
    let pool = pool(p, p + 1, ListingRuntime::default());
    for _ in 0..20 {
        let owner = DeploymentId::generate();
        assert_eq!(pool.allocate(&owner, &[]).await.expect("free port").get(), p + 1);
        pool.release(&owner).await.expect("release");
    }
}

#[tokio::test]
async fn skips_ports_of_managed_containers() {
    let p = free_pair();
    let runtime = ListingRuntime { ports: vec![p], fail: false, stopped: Vec::new() };
    let pool = pool(p, p + 1, runtime);
    for _ in 0..20 {
        let owner = DeploymentId::generate();
        assert_eq!(pool.allocate(&owner, &[]).await.expect("free port").get(), p + 1);
        pool.release(&owner).await.expect("release");
    }

    let both = ListingRuntime { ports: vec![p, p + 1], fail: false, stopped: Vec::new() };
    let full = self::pool(p, p + 1, both);
    let err = full.allocate(&DeploymentId::generate(), &[]).await.expect_err("every port is held by a container");
    assert!(matches!(err, Error::PortsExhausted(_)), "got {err}");
}

// A retained release is a stopped container: it holds no host port, so its
// label's port is handed out again (a rollback starts a new container).
#[tokio::test]
async fn ports_of_stopped_containers_are_free() {
    let p = free_pair();
    let pool = pool(p, p, ListingRuntime { ports: Vec::new(), fail: false, stopped: vec![p] });
    assert_eq!(pool.allocate(&DeploymentId::generate(), &[]).await.expect("free port").get(), p);
}

#[tokio::test]
async fn a_runtime_failure_is_reported() {
    let p = free_pair();
    let pool = pool(p, p + 1, ListingRuntime { ports: Vec::new(), fail: true, stopped: Vec::new() });
    let err = pool.allocate(&DeploymentId::generate(), &[]).await.expect_err("cannot know which ports containers hold");
    assert!(err.is_unavailable(), "got {err}");
}

#[tokio::test]
async fn avoid_list_is_honoured() {
    let p = free_pair();
    let pool = pool(p, p + 1, ListingRuntime::default());
    let taken = HostPort::try_from(p).expect("port");
    for _ in 0..20 {
        let owner = DeploymentId::generate();
        assert_eq!(pool.allocate(&owner, &[taken]).await.expect("free port").get(), p + 1);
        pool.release(&owner).await.expect("release");
    }
    let both = [taken, HostPort::try_from(p + 1).expect("port")];
    let err = pool.allocate(&DeploymentId::generate(), &both).await.expect_err("everything avoided");
    assert!(matches!(err, Error::PortsExhausted(_)), "got {err}");
}

#[tokio::test]
async fn concurrent_allocations_get_distinct_ports() {
    let start = free_pair();
    let end = start.saturating_add(199);
    let pool = Arc::new(pool(start, end, ListingRuntime::default()));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                let owner = DeploymentId::generate();
                let port = pool.allocate(&owner, &[]).await.expect("allocate");
                (owner, port)
            })
        })
        .collect();
    let mut ports = HashSet::new();
    for t in tasks {
        let (owner, port) = t.await.expect("task");
        assert!((start..=end).contains(&port.get()), "{port} outside {start}-{end}");
        assert!(ports.insert(port), "port {port} handed out twice");
        assert_eq!(pool.reserved_by(&owner), Some(port));
    }
    assert_eq!(ports.len(), 50);
}

#[tokio::test]
async fn exhaustion_and_release() {
    let p = free_pair();
    let pool = pool(p, p, ListingRuntime::default());
    let a = DeploymentId::generate();
    let b = DeploymentId::generate();

    assert_eq!(pool.allocate(&a, &[]).await.expect("first").get(), p);
    let err = pool.allocate(&b, &[]).await.expect_err("the only port is reserved");
    assert!(matches!(err, Error::PortsExhausted(_)), "got {err}");
    assert!(err.to_string().contains(&format!("{p}-{p}")), "names the range: {err}");

    pool.release(&a).await.expect("release");
    pool.release(&a).await.expect("release is idempotent");
    pool.release(&DeploymentId::generate()).await.expect("release of an unknown owner");
    assert_eq!(pool.allocate(&b, &[]).await.expect("free again").get(), p);
    assert_eq!(pool.reserved_by(&a), None);
}

#[tokio::test]
async fn a_retry_replaces_the_owners_earlier_port() {
    let p = free_pair();
    let pool = pool(p, p + 1, ListingRuntime::default());
    let owner = DeploymentId::generate();
    let first = pool.allocate(&owner, &[]).await.expect("first");
    // Docker said `first` was taken: the retry avoids it and frees it.
    let second = pool.allocate(&owner, &[first]).await.expect("retry");
    assert_ne!(first, second);
    assert_eq!(pool.reserved_by(&owner), Some(second));
    let other = DeploymentId::generate();
    assert_eq!(pool.allocate(&other, &[]).await.expect("the first pick is free again"), first);
}
