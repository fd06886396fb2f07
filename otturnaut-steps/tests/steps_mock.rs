//! Interaction tests of each pipeline step on mockall mocks.
//!
//! The model test (`model.rs`) checks what the fake world looks like after a
//! deploy; these check the exact calls a step makes: which adapter, with
//! which arguments, how often and in which order. Every mock is verified at
//! the end of each test (`Live::verify`), after the pipeline and its reaper
//! have let go of it, so an expected call that never happened fails the test
//! instead of vanishing with a reaper task at runtime shutdown.
//!
//! Undo calls run under `catch_unwind`, so an unexpected call during a
//! rollback shows up as a failed undo (residue), not a panic: the tests that
//! roll back therefore also assert a clean undo report.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mockall::{Sequence, mock};
use otturnaut_core::traits::{
    BuildRequest, ContainerRuntime, FetchRequest, FetchedSource, HealthProbe, ImageBuilder, PortAllocator, Router,
    RunRequest, SourceFetcher, StateStore, container_name, image_tag, kept_tag, live_tag,
};
use otturnaut_core::{
    Adapters, AppId, CommitSha, ContainerId, ContainerPort, ContainerStatus, DeployEvent, DeploySpec, DeploymentId,
    Domain, EnvName, Error, EventSink, HealthCheck, HostPort, ImageRef, ManagedContainer, ManagedImage, Release,
    Result, RouteTarget, Secret, Source, Step,
};
use otturnaut_steps::{
    BlueGreen, Context, DeployError, Deployed, Fetched, Reaper, ResidueKind, RetryPolicy, Strategy as _,
};

mock! {
    pub Fetcher {}
    #[async_trait]
    impl SourceFetcher for Fetcher {
        async fn fetch(&self, req: &FetchRequest) -> Result<FetchedSource>;
        async fn remove(&self, app: &AppId, deployment: &DeploymentId) -> Result<()>;
        async fn leftovers(&self) -> Result<Vec<(AppId, DeploymentId)>>;
    }
}

// `list_images` and `list` take an `Option<&AppId>`, which mockall cannot mock
// through `#[async_trait]` (the reference's lifetime is not tied to the
// future's). The pipeline lists only to apply retention after a commit, and
// these mocks hold no kept release: they list nothing. They have plain
// methods for the rest and the trait impls below forward to them.
mock! {
    pub Builder {
        fn build(&self, req: &BuildRequest, events: &EventSink) -> Result<ImageRef>;
        fn ensure_image(&self, reference: &ImageRef, tag: &ImageRef, events: &EventSink) -> Result<()>;
        fn tag_image(&self, image: &str, tag: &ImageRef) -> Result<()>;
        fn remove_image(&self, image: &ImageRef) -> Result<()>;
    }
}

#[async_trait]
impl ImageBuilder for MockBuilder {
    async fn build(&self, req: &BuildRequest, events: &EventSink) -> Result<ImageRef> {
        MockBuilder::build(self, req, events)
    }
    async fn ensure_image(&self, reference: &ImageRef, tag: &ImageRef, events: &EventSink) -> Result<()> {
        MockBuilder::ensure_image(self, reference, tag, events)
    }
    async fn tag_image(&self, image: &str, tag: &ImageRef) -> Result<()> {
        MockBuilder::tag_image(self, image, tag)
    }
    async fn remove_image(&self, image: &ImageRef) -> Result<()> {
        MockBuilder::remove_image(self, image)
    }
    async fn list_images(&self, _app: Option<&AppId>) -> Result<Vec<ManagedImage>> {
        Ok(Vec::new())
    }
    async fn prune_dangling(&self, _app: Option<&AppId>) -> Result<otturnaut_core::traits::Pruned> {
        panic!("the pipeline does not prune dangling images")
    }
}

mock! {
    pub Runtime {
        fn start(&self, req: &RunRequest) -> Result<ContainerId>;
        fn stop(&self, id: &ContainerId, grace: Duration) -> Result<()>;
        fn remove(&self, id: &ContainerId) -> Result<()>;
        fn status(&self, id: &ContainerId) -> Result<ContainerStatus>;
        fn logs(&self, id: &ContainerId, tail: usize) -> Result<Vec<String>>;
    }
}

#[async_trait]
impl ContainerRuntime for MockRuntime {
    async fn start(&self, req: &RunRequest) -> Result<ContainerId> {
        MockRuntime::start(self, req)
    }
    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<()> {
        MockRuntime::stop(self, id, grace)
    }
    async fn remove(&self, id: &ContainerId) -> Result<()> {
        MockRuntime::remove(self, id)
    }
    async fn status(&self, id: &ContainerId) -> Result<ContainerStatus> {
        MockRuntime::status(self, id)
    }
    async fn logs(&self, id: &ContainerId, tail: usize) -> Result<Vec<String>> {
        MockRuntime::logs(self, id, tail)
    }
    async fn list(&self, _app: Option<&AppId>) -> Result<Vec<ManagedContainer>> {
        Ok(Vec::new())
    }
    async fn recorded(&self, _id: &ContainerId) -> Result<otturnaut_core::RecordedRelease> {
        panic!("a deploy does not read a release's settings")
    }
}

mock! {
    pub Router {}
    #[async_trait]
    impl Router for Router {
        async fn route(&self, app: &AppId) -> Result<Option<RouteTarget>>;
        async fn set_route(&self, app: &AppId, target: &RouteTarget) -> Result<()>;
        async fn set_routes(&self, routes: &[(AppId, RouteTarget)]) -> Result<()>;
        async fn remove_route(&self, app: &AppId) -> Result<()>;
        async fn in_flight(&self, port: HostPort) -> Result<u64>;
        async fn routes(&self) -> Result<Vec<(AppId, RouteTarget)>>;
        async fn stream_close_delay(&self) -> Result<Option<Duration>>;
        async fn close_streams(&self) -> Result<()>;
    }
}

mock! {
    pub Ports {}
    #[async_trait]
    impl PortAllocator for Ports {
        async fn allocate(&self, owner: &DeploymentId, avoid: &[HostPort]) -> Result<HostPort>;
        async fn release(&self, owner: &DeploymentId) -> Result<()>;
    }
}

mock! {
    pub Health {}
    #[async_trait]
    impl HealthProbe for Health {
        async fn check(&self, container: &ContainerId, port: HostPort, check: &HealthCheck) -> Result<()>;
    }
}

mock! {
    pub State {}
    #[async_trait]
    impl StateStore for State {
        async fn load(&self, app: &AppId) -> Result<Option<Release>>;
        async fn record(&self, release: &Release) -> Result<()>;
        async fn restore(&self, app: &AppId, previous: Option<Release>) -> Result<()>;
    }
}

/// One mock per port trait, configured before the run.
#[derive(Default)]
struct Mocks {
    fetcher: MockFetcher,
    builder: MockBuilder,
    runtime: MockRuntime,
    router: MockRouter,
    ports: MockPorts,
    health: MockHealth,
    state: MockState,
}

/// The mocks while the pipeline holds them.
struct Live {
    fetcher: Arc<MockFetcher>,
    builder: Arc<MockBuilder>,
    runtime: Arc<MockRuntime>,
    router: Arc<MockRouter>,
    ports: Arc<MockPorts>,
    health: Arc<MockHealth>,
    state: Arc<MockState>,
}

impl Mocks {
    fn into_live(self) -> (Adapters, Live) {
        let live = Live {
            fetcher: Arc::new(self.fetcher),
            builder: Arc::new(self.builder),
            runtime: Arc::new(self.runtime),
            router: Arc::new(self.router),
            ports: Arc::new(self.ports),
            health: Arc::new(self.health),
            state: Arc::new(self.state),
        };
        let adapters = Adapters {
            fetcher: live.fetcher.clone(),
            builder: live.builder.clone(),
            runtime: live.runtime.clone(),
            router: live.router.clone(),
            ports: live.ports.clone(),
            health: live.health.clone(),
            state: live.state.clone(),
        };
        (adapters, live)
    }
}

impl Live {
    /// Waits until nothing but this holds the mocks (the reaper task ends once
    /// every handle to it is dropped), then checks every expectation's count.
    async fn verify(self) {
        unique(self.fetcher, "fetcher").await.checkpoint();
        unique(self.builder, "builder").await.checkpoint();
        unique(self.runtime, "runtime").await.checkpoint();
        unique(self.router, "router").await.checkpoint();
        unique(self.ports, "ports").await.checkpoint();
        unique(self.health, "health").await.checkpoint();
        unique(self.state, "state").await.checkpoint();
    }
}

async fn unique<T>(mut arc: Arc<T>, what: &str) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Arc::try_unwrap(arc) {
            Ok(mock) => return mock,
            Err(shared) => {
                assert!(
                    Instant::now() < deadline,
                    "the {what} mock is still shared: something kept the adapters alive"
                );
                arc = shared;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
}

/// The deployment id the pipeline generated, as first seen by an adapter.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Option<DeploymentId>>>);

impl Seen {
    fn note(&self, d: &DeploymentId) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &*seen {
            None => *seen = Some(d.clone()),
            Some(first) => assert_eq!(first, d, "one deploy used two deployment ids"),
        }
    }

    fn get(&self) -> DeploymentId {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone().expect("no adapter saw the deployment id yet")
    }

    fn is(&self, d: &DeploymentId) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref() == Some(d)
    }
}

const SECRET: &str = "s3cr3t-value";
const REPO: &str = "https://example.test/o/r.git";
/// What the mock runtime returns as the new container's id: deliberately not
/// its name, so an undo that removes by returned id instead of name shows.
const NEW_CONTAINER_ID: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

fn app(name: &str) -> AppId {
    name.parse().expect("app id")
}

fn port(n: u16) -> HostPort {
    HostPort::try_from(n).expect("port")
}

fn domains(names: &[&str]) -> Vec<Domain> {
    names.iter().map(|d| d.parse().expect("domain")).collect()
}

fn sha() -> CommitSha {
    "0123456789abcdef0123456789abcdef01234567".parse().expect("sha")
}

fn boom(what: &str) -> Error {
    Error::failed(what, "injected by the test")
}

/// A git deploy carrying a secret env value and a secret build arg.
fn git_spec(app: &AppId, names: &[&str]) -> DeploySpec {
    let source = Source::Git {
        url: REPO.parse().expect("url"),
        git_ref: Default::default(),
        dockerfile: Default::default(),
        build_args: BTreeMap::from([("NPM_TOKEN".to_string(), Secret::new(SECRET))]),
        build_secrets: BTreeMap::from([("npmrc".to_string(), Secret::new(SECRET))]),
        ssh_key: None,
    };
    let mut spec = DeploySpec::new(app.clone(), source, ContainerPort::try_from(8080).expect("port"));
    spec.env = BTreeMap::from([("DB_PASSWORD".parse::<EnvName>().expect("env name"), Secret::new(SECRET))]);
    spec.domains = domains(names);
    spec
}

fn image_spec(app: &AppId, reference: &str, names: &[&str]) -> DeploySpec {
    let source = Source::Image { reference: reference.parse().expect("image ref") };
    let mut spec = DeploySpec::new(app.clone(), source, ContainerPort::try_from(8080).expect("port"));
    spec.domains = domains(names);
    spec
}

/// A live release of an earlier deployment, as `StateStore::load` reports it.
fn old_release(app: &AppId, host_port: HostPort, names: &[&str], owned: bool) -> Release {
    let deployment = DeploymentId::generate();
    Release {
        app: app.clone(),
        container: ContainerId(container_name(app, &deployment)),
        image: if owned { image_tag(app, &deployment) } else { "prebuilt:0".parse().expect("image") },
        deployment,
        host_port,
        domains: domains(names),
        commit: None,
    }
}

fn route_to(r: &Release) -> RouteTarget {
    RouteTarget { domains: r.domains.clone(), port: r.host_port }
}

fn drained(rx: &mut otturnaut_core::EventReceiver) -> Vec<DeployEvent> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

fn policy() -> RetryPolicy {
    RetryPolicy::immediate(3)
}

/// Runs one blue-green deploy and returns its result and events. Whatever
/// the test, no secret of the spec may show in either.
async fn deploy(
    adapters: Adapters,
    spec: DeploySpec,
) -> (std::result::Result<Deployed, DeployError>, Vec<DeployEvent>) {
    let bg = BlueGreen::with_retry(adapters, policy());
    let (events, mut rx) = EventSink::channel();
    let result = bg.execute(spec, &events).await;
    drop(bg);
    let events = drained(&mut rx);
    assert_no_secret(&events, &result);
    (result, events)
}

fn assert_no_secret(events: &[DeployEvent], result: &std::result::Result<Deployed, DeployError>) {
    for e in events {
        let json = serde_json::to_string(e).expect("event serialises");
        assert!(!json.contains(SECRET), "secret in event {json}");
        assert!(!format!("{e:?}").contains(SECRET), "secret in event {e:?}");
    }
    let texts = match result {
        Ok(deployed) => vec![serde_json::to_string(deployed).expect("deployed serialises"), format!("{deployed:?}")],
        Err(err) => vec![err.to_string(), format!("{err:?}"), format!("{err:#?}")],
    };
    for text in texts {
        assert!(!text.contains(SECRET), "secret in the result: {text}");
    }
}

/// Forward expectations of a git deploy up to (not including) the health
/// check: fetch, build, load, allocate `new_port`, start on it. Each once.
fn git_forward(m: &mut Mocks, seen: &Seen, app: &AppId, previous: Option<Release>, new_port: HostPort) {
    let (s, a) = (seen.clone(), app.clone());
    m.fetcher.expect_fetch().times(1).withf(move |req| req.app == a && req.url.expose() == REPO).returning(
        move |req| {
            s.note(&req.deployment);
            Ok(FetchedSource { dir: format!("/tmp/src/{}", req.deployment).into(), commit: sha() })
        },
    );
    let s = seen.clone();
    m.builder
        .expect_build()
        .times(1)
        .withf(move |req, _| {
            s.is(&req.deployment)
                && req.build_args["NPM_TOKEN"].expose() == SECRET
                && req.build_secrets["npmrc"].expose() == SECRET
        })
        .returning(|req, _| Ok(req.tag()));
    let a = app.clone();
    m.state.expect_load().times(1).withf(move |x| *x == a).returning(move |_| Ok(previous.clone()));
    let s = seen.clone();
    m.ports
        .expect_allocate()
        .times(1)
        .withf(move |d, avoid| s.is(d) && avoid.is_empty())
        .returning(move |_, _| Ok(new_port));
    let s = seen.clone();
    m.runtime
        .expect_start()
        .times(1)
        .withf(move |req| {
            s.is(&req.deployment)
                && req.host_port == new_port
                && req.image == image_tag(&req.app, &req.deployment)
                && req.env.values().all(|v| v.expose() == SECRET)
        })
        .returning(|_| Ok(ContainerId(NEW_CONTAINER_ID.into())));
}

fn health_ok(m: &mut Mocks, new_port: HostPort) {
    m.health
        .expect_check()
        .times(1)
        .withf(move |c, p, _| c.0 == NEW_CONTAINER_ID && *p == new_port)
        .returning(|_, _, _| Ok(()));
}

/// The four undos of a git deploy's forward steps, in reverse order of
/// acquisition: container (by name), port, image, source.
fn git_rollback_in_sequence(m: &mut Mocks, seq: &mut Sequence, seen: &Seen, app: &AppId) {
    let (s, a) = (seen.clone(), app.clone());
    m.runtime
        .expect_remove()
        .times(1)
        .in_sequence(seq)
        .withf(move |id| id.0 == container_name(&a, &s.get()))
        .returning(|_| Ok(()));
    let s = seen.clone();
    m.ports.expect_release().times(1).in_sequence(seq).withf(move |d| s.is(d)).returning(|_| Ok(()));
    let (s, a) = (seen.clone(), app.clone());
    m.builder
        .expect_remove_image()
        .times(1)
        .in_sequence(seq)
        .withf(move |image| *image == image_tag(&a, &s.get()))
        .returning(|_| Ok(()));
    let (s, a) = (seen.clone(), app.clone());
    m.fetcher.expect_remove().times(1).in_sequence(seq).withf(move |x, d| *x == a && s.is(d)).returning(|_, _| Ok(()));
}

fn assert_clean_rollback(err: &DeployError, step: Step, undos: usize) {
    assert_eq!(err.step(), step, "{err}");
    assert!(err.undo().is_clean(), "rollback left residue: {:?}", err.undo().residue);
    assert_eq!(err.undo().outcomes.len(), undos, "{:?}", err.undo().outcomes);
    assert!(err.undo().outcomes.iter().all(|o| o.ok && o.attempts == 1), "{:?}", err.undo().outcomes);
}

// 1. A failed commit puts the previous route back rather than removing it.
#[tokio::test]
async fn route_undo_restores_the_previous_upstream() {
    let app = app("restore-route");
    let (a_port, b_port) = (port(20001), port(20002));
    let old = old_release(&app, a_port, &["old.example"], true);
    let seen = Seen::default();
    let mut m = Mocks::default();
    let mut seq = Sequence::new();
    git_forward(&mut m, &seen, &app, Some(old.clone()), b_port);
    health_ok(&mut m, b_port);

    let (a, target) = (app.clone(), route_to(&old));
    m.router.expect_route().times(1).withf(move |x| *x == a).returning(move |_| Ok(Some(target.clone())));
    let a = app.clone();
    m.router
        .expect_set_route()
        .times(1)
        .in_sequence(&mut seq)
        .withf(move |x, t| *x == a && t.port == b_port && t.domains == domains(&["new.example"]))
        .returning(|_, _| Ok(()));
    let s = seen.clone();
    m.state
        .expect_record()
        .times(1)
        .in_sequence(&mut seq)
        .withf(move |r| s.is(&r.deployment) && r.host_port == b_port)
        .returning(|_| Err(boom("record")));
    let prev = old.clone();
    m.state
        .expect_restore()
        .times(1)
        .in_sequence(&mut seq)
        .withf(move |_, r| r.as_ref() == Some(&prev))
        .returning(|_, _| Ok(()));
    let (a, back) = (app.clone(), route_to(&old));
    m.router
        .expect_set_route()
        .times(1)
        .in_sequence(&mut seq)
        .withf(move |x, t| *x == a && *t == back)
        .returning(|_, _| Ok(()));
    m.router.expect_remove_route().never();
    git_rollback_in_sequence(&mut m, &mut seq, &seen, &app);

    let (adapters, live) = m.into_live();
    let (result, _) = deploy(adapters, git_spec(&app, &["new.example"])).await;
    let err = result.expect_err("record fails");
    assert_clean_rollback(&err, Step::RecordState, 6);
    assert!(err.undo().outcomes[1].action.contains("route to port 20001"), "{:?}", err.undo().outcomes);
    live.verify().await;
}

// 2. A first deploy has no route to go back to: the undo removes it.
#[tokio::test]
async fn first_deploy_route_undo_removes_the_route() {
    let app = app("first-route");
    let b_port = port(20003);
    let seen = Seen::default();
    let mut m = Mocks::default();
    let mut seq = Sequence::new();
    git_forward(&mut m, &seen, &app, None, b_port);
    health_ok(&mut m, b_port);

    m.router.expect_route().times(1).returning(|_| Ok(None));
    let a = app.clone();
    m.router
        .expect_set_route()
        .times(1)
        .in_sequence(&mut seq)
        .withf(move |x, t| *x == a && t.port == b_port)
        .returning(|_, _| Ok(()));
    m.state.expect_record().times(1).in_sequence(&mut seq).returning(|_| Err(boom("record")));
    let a = app.clone();
    m.state
        .expect_restore()
        .times(1)
        .in_sequence(&mut seq)
        .withf(move |x, r| *x == a && r.is_none())
        .returning(|_, _| Ok(()));
    let a = app.clone();
    m.router.expect_remove_route().times(1).in_sequence(&mut seq).withf(move |x| *x == a).returning(|_| Ok(()));
    git_rollback_in_sequence(&mut m, &mut seq, &seen, &app);

    let (adapters, live) = m.into_live();
    let (result, _) = deploy(adapters, git_spec(&app, &["first.example"])).await;
    let err = result.expect_err("record fails");
    assert_clean_rollback(&err, Step::RecordState, 6);
    live.verify().await;
}

// 3. An unhealthy container never gets traffic; everything is undone by name.
#[tokio::test]
async fn health_check_failure_never_routes_and_undoes_in_reverse() {
    let app = app("unhealthy");
    let b_port = port(20004);
    let seen = Seen::default();
    let mut m = Mocks::default();
    let mut seq = Sequence::new();
    git_forward(&mut m, &seen, &app, None, b_port);
    m.health
        .expect_check()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _| Err(Error::Unhealthy { deadline: Duration::from_secs(1), last_error: "refused".into() }));
    m.router.expect_route().never();
    m.router.expect_set_route().never();
    m.router.expect_remove_route().never();
    m.state.expect_record().never();
    git_rollback_in_sequence(&mut m, &mut seq, &seen, &app);

    let (adapters, live) = m.into_live();
    let (result, _) = deploy(adapters, git_spec(&app, &["sick.example"])).await;
    let err = result.expect_err("unhealthy");
    assert_clean_rollback(&err, Step::HealthCheck, 4);
    assert_eq!(err.deployment(), &seen.get());
    assert!(matches!(err.cause(), Error::Unhealthy { .. }), "{:?}", err.cause());
    live.verify().await;
}

// 3b. Failing to read the current route fails the switch-route step: it is
// reported like any other failed step, and nothing was routed.
#[tokio::test]
async fn route_lookup_failure_is_reported_as_the_switch_route_step() {
    let app = app("route-lookup");
    let b_port = port(20022);
    let seen = Seen::default();
    let mut m = Mocks::default();
    let mut seq = Sequence::new();
    git_forward(&mut m, &seen, &app, None, b_port);
    health_ok(&mut m, b_port);
    m.router.expect_route().times(1).returning(|_| {
        Err(Error::Unavailable {
            service: otturnaut_core::Service::Caddy,
            address: "127.0.0.1:2019".into(),
            detail: "connection refused".into(),
        })
    });
    m.router.expect_set_route().never();
    m.router.expect_remove_route().never();
    m.state.expect_record().never();
    git_rollback_in_sequence(&mut m, &mut seq, &seen, &app);

    let (adapters, live) = m.into_live();
    let (result, events) = deploy(adapters, git_spec(&app, &["lookup.example"])).await;
    let err = result.expect_err("route lookup fails");
    assert_clean_rollback(&err, Step::SwitchRoute, 4);
    assert!(err.cause().is_unavailable(), "{:?}", err.cause());
    let marks = step_marks(&events);
    let route_marks: Vec<&Mark> = marks
        .iter()
        .filter(|m| matches!(m, Mark::Started(s) | Mark::Finished(s) | Mark::Failed(s) if *s == Step::SwitchRoute))
        .collect();
    assert_eq!(route_marks, vec![&Mark::Started(Step::SwitchRoute), &Mark::Failed(Step::SwitchRoute)], "{marks:?}");
    live.verify().await;
}

// 4. A port someone else grabbed is swapped for another, avoiding it.
#[tokio::test]
async fn taken_port_is_swapped_for_a_fresh_one() {
    let app = app("port-taken");
    let (p1, p2) = (port(20005), port(20006));
    let seen = Seen::default();
    let mut m = Mocks::default();
    let mut seq = Sequence::new();
    let s = seen.clone();
    m.fetcher.expect_fetch().times(1).returning(move |req| {
        s.note(&req.deployment);
        Ok(FetchedSource { dir: "/tmp/src".into(), commit: sha() })
    });
    m.builder.expect_build().times(1).returning(|req, _| Ok(req.tag()));
    m.state.expect_load().times(1).returning(|_| Ok(None));
    let s = seen.clone();
    m.ports
        .expect_allocate()
        .times(1)
        .in_sequence(&mut seq)
        .withf(move |d, avoid| s.is(d) && avoid.is_empty())
        .returning(move |_, _| Ok(p1));
    m.runtime
        .expect_start()
        .times(1)
        .in_sequence(&mut seq)
        .withf(move |req| req.host_port == p1)
        .returning(move |_| Err(Error::PortTaken(p1)));
    let s = seen.clone();
    m.ports.expect_release().times(1).in_sequence(&mut seq).withf(move |d| s.is(d)).returning(|_| Ok(()));
    let s = seen.clone();
    m.ports
        .expect_allocate()
        .times(1)
        .in_sequence(&mut seq)
        .withf(move |d, avoid| s.is(d) && avoid.contains(&p1))
        .returning(move |_, _| Ok(p2));
    m.runtime
        .expect_start()
        .times(1)
        .in_sequence(&mut seq)
        .withf(move |req| req.host_port == p2)
        .returning(|_| Ok(ContainerId(NEW_CONTAINER_ID.into())));
    m.health.expect_check().times(1).in_sequence(&mut seq).withf(move |_, p, _| *p == p2).returning(|_, _, _| Ok(()));
    m.router.expect_route().times(1).returning(|_| Ok(None));
    m.router.expect_set_route().times(1).in_sequence(&mut seq).withf(move |_, t| t.port == p2).returning(|_, _| Ok(()));
    m.state.expect_record().times(1).in_sequence(&mut seq).withf(move |r| r.host_port == p2).returning(|_| Ok(()));
    m.fetcher.expect_remove().times(1).in_sequence(&mut seq).returning(|_, _| Ok(()));

    let (adapters, live) = m.into_live();
    let (result, events) = deploy(adapters, git_spec(&app, &["taken.example"])).await;
    let deployed = result.expect("deploys on the second port");
    assert_eq!(deployed.release.host_port, p2);
    assert!(deployed.residue.is_empty(), "{:?}", deployed.residue);
    assert!(
        events.iter().any(|e| matches!(e, DeployEvent::Warning { message } if message.contains("20005"))),
        "no warning about the taken port: {events:?}"
    );
    live.verify().await;
}

/// A git deploy whose health check fails, with a given expectation on
/// `remove_image`; the other three undos each succeed once, in order.
fn unhealthy_git(
    m: &mut Mocks,
    seq: &mut Sequence,
    seen: &Seen,
    app: &AppId,
    image: impl FnOnce(&mut MockBuilder, &mut Sequence),
) {
    let b_port = port(20007);
    git_forward(m, seen, app, None, b_port);
    m.health.expect_check().times(1).returning(|_, _, _| Err(boom("health")));
    let s = seen.clone();
    m.runtime.expect_remove().times(1).in_sequence(seq).returning(|_| Ok(()));
    m.ports.expect_release().times(1).in_sequence(seq).withf(move |d| s.is(d)).returning(|_| Ok(()));
    image(&mut m.builder, seq);
    let s = seen.clone();
    m.fetcher.expect_remove().times(1).in_sequence(seq).withf(move |_, d| s.is(d)).returning(|_, _| Ok(()));
}

// 5a. A flaky undo is retried until it succeeds.
#[tokio::test]
async fn undo_is_retried_until_it_succeeds() {
    let app = app("undo-retry");
    let seen = Seen::default();
    let mut m = Mocks::default();
    let mut seq = Sequence::new();
    let s = seen.clone();
    let a = app.clone();
    unhealthy_git(&mut m, &mut seq, &seen, &app, |builder, seq| {
        let (s2, a2) = (s.clone(), a.clone());
        builder
            .expect_remove_image()
            .times(2)
            .in_sequence(seq)
            .withf(move |i| *i == image_tag(&a, &s.get()))
            .returning(|_| Err(boom("remove image")));
        builder
            .expect_remove_image()
            .times(1)
            .in_sequence(seq)
            .withf(move |i| *i == image_tag(&a2, &s2.get()))
            .returning(|_| Ok(()));
    });

    let (adapters, live) = m.into_live();
    let (result, _) = deploy(adapters, git_spec(&app, &[])).await;
    let err = result.expect_err("unhealthy");
    assert!(err.undo().is_clean(), "{:?}", err.undo().residue);
    let attempts: Vec<u32> = err.undo().outcomes.iter().map(|o| o.attempts).collect();
    assert_eq!(attempts, vec![1, 1, 3, 1], "{:?}", err.undo().outcomes);
    live.verify().await;
}

// 5b. An undo that keeps failing is tried `attempts` times, then reported;
// the undos after it still run.
#[tokio::test]
async fn undo_failing_for_good_becomes_residue_and_the_rest_still_run() {
    let app = app("undo-residue");
    let seen = Seen::default();
    let mut m = Mocks::default();
    let mut seq = Sequence::new();
    let attempts = policy().attempts as usize;
    unhealthy_git(&mut m, &mut seq, &seen, &app, |builder, seq| {
        builder.expect_remove_image().times(attempts).in_sequence(seq).returning(|_| Err(boom("remove image")));
    });

    let (adapters, live) = m.into_live();
    let (result, _) = deploy(adapters, git_spec(&app, &[])).await;
    let err = result.expect_err("unhealthy");
    let undo = err.undo();
    assert_eq!(undo.residue.len(), 1, "{:?}", undo.residue);
    assert_eq!(undo.residue[0].kind, ResidueKind::Image);
    assert!(undo.residue[0].what.contains(image_tag(&app, &seen.get()).as_str()), "{:?}", undo.residue[0]);
    assert!(!undo.residue[0].in_doubt, "the image was built: not in doubt");
    let summary: Vec<(bool, u32)> = undo.outcomes.iter().map(|o| (o.ok, o.attempts)).collect();
    assert_eq!(summary, vec![(true, 1), (true, 1), (false, attempts as u32), (true, 1)]);
    assert!(err.to_string().contains("left 1 resource(s) behind"), "{err}");
    live.verify().await;
}

// 6a. A prebuilt image is neither fetched nor built, and never removed on rollback.
#[tokio::test]
async fn prebuilt_image_is_not_fetched_or_built_and_only_its_release_tag_is_removed() {
    let app = app("prebuilt");
    let b_port = port(20008);
    let seen = Seen::default();
    let mut m = Mocks::default();
    let mut seq = Sequence::new();
    m.fetcher.expect_fetch().never();
    m.fetcher.expect_remove().never();
    m.builder.expect_build().never();
    // Built before the port is allocated, so before `seen` knows the deployment.
    let prefix = format!("otturnaut-{app}:");
    m.builder
        .expect_ensure_image()
        .times(1)
        .withf(move |r, tag, _| r.as_str() == "registry.test/team/web:1.2" && tag.as_str().starts_with(&prefix))
        .returning(|_, _, _| Ok(()));
    m.state.expect_load().times(1).returning(|_| Ok(None));
    let s = seen.clone();
    m.ports.expect_allocate().times(1).returning(move |d, _| {
        s.note(d);
        Ok(b_port)
    });
    m.runtime
        .expect_start()
        .times(1)
        .withf(|req| {
            req.reference.as_str() == "registry.test/team/web:1.2" && req.image == image_tag(&req.app, &req.deployment)
        })
        .returning(|_| Ok(ContainerId(NEW_CONTAINER_ID.into())));
    m.health.expect_check().times(1).returning(|_, _, _| Err(boom("health")));
    let (s, a) = (seen.clone(), app.clone());
    m.runtime
        .expect_remove()
        .times(1)
        .in_sequence(&mut seq)
        .withf(move |id| id.0 == container_name(&a, &s.get()))
        .returning(|_| Ok(()));
    let s = seen.clone();
    m.ports.expect_release().times(1).in_sequence(&mut seq).withf(move |d| s.is(d)).returning(|_| Ok(()));
    // Only the release's own tag: the user's image stays.
    let (s, a) = (seen.clone(), app.clone());
    m.builder
        .expect_remove_image()
        .times(1)
        .in_sequence(&mut seq)
        .withf(move |image| *image == image_tag(&a, &s.get()))
        .returning(|_| Ok(()));

    let (adapters, live) = m.into_live();
    let (result, _) = deploy(adapters, image_spec(&app, "registry.test/team/web:1.2", &["web.example"])).await;
    let err = result.expect_err("unhealthy");
    assert_clean_rollback(&err, Step::HealthCheck, 3);
    live.verify().await;
}

// 6b. Replacing a prebuilt release with another: retiring the old one
// keeps it for a rollback: its live mark is replaced by its kept mark, and
// neither its container nor the (user's) image it tags is removed.
#[tokio::test]
async fn prebuilt_release_is_kept_by_its_own_tags() {
    let app = app("prebuilt-retire");
    let (a_port, b_port) = (port(20009), port(20010));
    let old = old_release(&app, a_port, &[], false);
    let mut m = Mocks::default();
    m.fetcher.expect_fetch().never();
    m.fetcher.expect_remove().never();
    m.builder.expect_build().never();
    let (mark, tag, kept) =
        (live_tag(&app, &old.deployment), image_tag(&app, &old.deployment), kept_tag(&app, &old.deployment));
    m.builder.expect_tag_image().times(1).withf(move |i, t| i == tag.as_str() && *t == kept).returning(|_, _| Ok(()));
    m.builder.expect_remove_image().times(1).withf(move |i| *i == mark).returning(|_| Ok(()));
    m.builder.expect_ensure_image().times(1).returning(|_, _, _| Ok(()));
    let prev = old.clone();
    m.state.expect_load().times(1).returning(move |_| Ok(Some(prev.clone())));
    m.ports.expect_allocate().times(1).returning(move |_, _| Ok(b_port));
    m.runtime.expect_start().times(1).returning(|_| Ok(ContainerId(NEW_CONTAINER_ID.into())));
    m.health.expect_check().times(1).returning(|_, _, _| Ok(()));
    m.router.expect_route().times(1).returning(|_| Ok(None));
    m.state
        .expect_record()
        .times(1)
        .withf(|r| r.image.as_str() == "prebuilt:1" && r.commit.is_none())
        .returning(|_| Ok(()));
    m.router.expect_stream_close_delay().times(1).returning(|| Ok(None));
    m.router.expect_in_flight().times(1).withf(move |p| *p == a_port).returning(|_| Ok(0));
    let c = old.container.clone();
    m.runtime.expect_stop().times(1).withf(move |id, _| *id == c).returning(|_, _| Ok(()));
    m.runtime.expect_remove().never();
    let d = old.deployment.clone();
    m.ports.expect_release().times(1).withf(move |x| *x == d).returning(|_| Ok(()));

    let (adapters, live) = m.into_live();
    let (result, _) = deploy(adapters, image_spec(&app, "prebuilt:1", &[])).await;
    let deployed = result.expect("deploys");
    assert_eq!(deployed.previous.as_ref(), Some(&old));
    assert!(deployed.residue.is_empty(), "{:?}", deployed.residue);
    live.verify().await;
}

/// Forward and commit expectations of a git deploy over `old`, up to the
/// post-commit source cleanup, all in `seq`.
fn git_commit_over(m: &mut Mocks, seq: &mut Sequence, seen: &Seen, app: &AppId, old: &Release, b_port: HostPort) {
    git_forward(m, seen, app, Some(old.clone()), b_port);
    health_ok(m, b_port);
    let target = route_to(old);
    m.router.expect_route().times(1).returning(move |_| Ok(Some(target.clone())));
    m.router.expect_set_route().times(1).in_sequence(seq).withf(move |_, t| t.port == b_port).returning(|_, _| Ok(()));
    let s = seen.clone();
    m.state
        .expect_record()
        .times(1)
        .in_sequence(seq)
        .withf(move |r| s.is(&r.deployment) && r.commit == Some(sha()))
        .returning(|_| Ok(()));
    let s = seen.clone();
    m.fetcher.expect_remove().times(1).in_sequence(seq).withf(move |_, d| s.is(d)).returning(|_, _| Ok(()));
}

const STOP_GRACE: Duration = Duration::from_secs(7);

fn spec_with_grace(app: &AppId) -> DeploySpec {
    let mut spec = git_spec(app, &["live.example"]);
    spec.timeouts.stop = STOP_GRACE;
    spec
}

// 7a. After the commit, the old release is drained, stopped with the spec's
// grace, kept (kept mark written, then its live mark removed) and its port
// released, in that order; its container and image stay for a rollback.
#[tokio::test]
async fn commit_then_retire_drains_stops_and_keeps_the_old_release_in_order() {
    let app = app("retire");
    let (a_port, b_port) = (port(20011), port(20012));
    let old = old_release(&app, a_port, &["live.example"], true);
    let seen = Seen::default();
    let mut m = Mocks::default();
    let mut seq = Sequence::new();
    git_commit_over(&mut m, &mut seq, &seen, &app, &old, b_port);
    m.router.expect_stream_close_delay().times(1).in_sequence(&mut seq).returning(|| Ok(None));
    for n in [2u64, 1, 0] {
        m.router
            .expect_in_flight()
            .times(1)
            .in_sequence(&mut seq)
            .withf(move |p| *p == a_port)
            .returning(move |_| Ok(n));
    }
    let c = old.container.clone();
    m.runtime
        .expect_stop()
        .times(1)
        .in_sequence(&mut seq)
        .withf(move |id, grace| *id == c && *grace == STOP_GRACE)
        .returning(|_, _| Ok(()));
    let (tag, kept) = (image_tag(&app, &old.deployment), kept_tag(&app, &old.deployment));
    m.builder
        .expect_tag_image()
        .times(1)
        .in_sequence(&mut seq)
        .withf(move |i, t| i == tag.as_str() && *t == kept)
        .returning(|_, _| Ok(()));
    let mark = live_tag(&app, &old.deployment);
    m.builder.expect_remove_image().times(1).in_sequence(&mut seq).withf(move |i| *i == mark).returning(|_| Ok(()));
    let d = old.deployment.clone();
    m.ports.expect_release().times(1).in_sequence(&mut seq).withf(move |x| *x == d).returning(|_| Ok(()));
    m.runtime.expect_remove().never();

    let (adapters, live) = m.into_live();
    let (result, events) = deploy(adapters, spec_with_grace(&app)).await;
    let deployed = result.expect("deploys");
    assert_eq!(deployed.previous.as_ref(), Some(&old));
    assert_eq!(deployed.release.host_port, b_port);
    assert!(deployed.residue.is_empty(), "{:?}", deployed.residue);
    assert!(!events.iter().any(|e| matches!(e, DeployEvent::Warning { .. })), "{events:?}");
    live.verify().await;
}

// 7b. Where streams outlive the switch (Caddy 2.8+), connections still open
// near the end of the drain are asked to close (a close frame, not the
// dropped connection of a stopped app), once, in time for the deadline; the
// drain then ends as soon as they are gone.
#[tokio::test]
async fn a_drain_asks_for_streams_still_open_to_be_closed_before_its_deadline() {
    let app = app("retire-streams");
    let (a_port, b_port) = (port(20013), port(20014));
    let old = old_release(&app, a_port, &["live.example"], true);
    let seen = Seen::default();
    let mut m = Mocks::default();
    let mut seq = Sequence::new();
    git_commit_over(&mut m, &mut seq, &seen, &app, &old, b_port);
    m.router.expect_stream_close_delay().times(1).returning(|| Ok(Some(Duration::from_millis(500))));
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asked = Arc::clone(&closed);
    m.router.expect_close_streams().times(1).returning(move || {
        asked.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    });
    let open = Arc::clone(&closed);
    m.router
        .expect_in_flight()
        .withf(move |p| *p == a_port)
        .returning(move |_| Ok(u64::from(!open.load(std::sync::atomic::Ordering::SeqCst))));
    m.runtime.expect_stop().times(1).returning(|_, _| Ok(()));
    m.builder.expect_tag_image().times(1).returning(|_, _| Ok(()));
    m.builder.expect_remove_image().times(1).returning(|_| Ok(()));
    m.ports.expect_release().times(1).returning(|_| Ok(()));

    let mut spec = spec_with_grace(&app);
    // Asked at 6 - 0.5 - 2 = 3.5 s, after the first 3 s of the drain.
    spec.timeouts.drain = Duration::from_secs(6);
    let (adapters, live) = m.into_live();
    let (result, events) = deploy(adapters, spec).await;
    assert!(result.expect("deploys").residue.is_empty());
    assert!(closed.load(std::sync::atomic::Ordering::SeqCst));
    let drained = events.iter().find_map(|e| match e {
        DeployEvent::StepFinished { step: Step::Drain, detail, .. } => Some(detail.clone()),
        _ => None,
    });
    let detail = drained.flatten().expect("a drain detail");
    assert!(detail.contains("streams closed by Caddy") && detail.contains("after 3."), "{detail}");
    assert!(!events.iter().any(|e| matches!(e, DeployEvent::Warning { .. })), "{events:?}");
    live.verify().await;
}

/// Retire expectations after a commit where `stop` and removing the old live
/// mark behave as given; drain finds nothing in flight.
fn retire_with(
    m: &mut Mocks,
    old: &Release,
    stop: fn() -> Result<()>,
    unmark_times: usize,
    unmark: fn() -> Result<()>,
) {
    m.router.expect_stream_close_delay().times(1).returning(|| Ok(None));
    m.router.expect_in_flight().times(1).returning(|_| Ok(0));
    let c = old.container.clone();
    m.runtime.expect_stop().times(1).withf(move |id, _| *id == c).returning(move |_, _| stop());
    let (tag, kept) = (image_tag(&old.app, &old.deployment), kept_tag(&old.app, &old.deployment));
    m.builder.expect_tag_image().times(1).withf(move |i, t| i == tag.as_str() && *t == kept).returning(|_, _| Ok(()));
    let mark = live_tag(&old.app, &old.deployment);
    m.builder.expect_remove_image().times(unmark_times).withf(move |i| *i == mark).returning(move |_| unmark());
    let d = old.deployment.clone();
    m.ports.expect_release().times(1).withf(move |x| *x == d).returning(|_| Ok(()));
    m.runtime.expect_remove().never();
}

// 7b. A failing stop is a warning; the old release is kept all the same.
#[tokio::test]
async fn retire_failing_stop_warns_and_still_keeps() {
    let app = app("retire-stop");
    let old = old_release(&app, port(20013), &["live.example"], true);
    let seen = Seen::default();
    let mut m = Mocks::default();
    git_commit_over(&mut m, &mut Sequence::new(), &seen, &app, &old, port(20014));
    retire_with(&mut m, &old, || Err(boom("docker stop")), 1, || Ok(()));

    let (adapters, live) = m.into_live();
    let (result, events) = deploy(adapters, spec_with_grace(&app)).await;
    let deployed = result.expect("a failed stop does not fail the deploy");
    assert_eq!(deployed.residue.len(), 1, "the running kept release is residue: {:?}", deployed.residue);
    assert_eq!(deployed.residue[0].kind, ResidueKind::Container);
    assert!(deployed.residue[0].what.contains(old.deployment.as_str()), "{:?}", deployed.residue);
    assert!(
        events.iter().any(|e| matches!(e, DeployEvent::Warning { message } if message.contains("stop_old"))),
        "no warning: {events:?}"
    );
    assert!(events.iter().any(|e| matches!(e, DeployEvent::StepFailed { step: Step::StopOld, .. })), "{events:?}");
    live.verify().await;
}

// 7c. An old live mark that cannot be removed is residue of a successful
// deploy (the newer mark wins meanwhile; reconcile removes it).
#[tokio::test]
async fn retire_failing_unmark_is_residue_of_a_successful_deploy() {
    let app = app("retire-remove");
    let old = old_release(&app, port(20015), &["live.example"], true);
    let seen = Seen::default();
    let mut m = Mocks::default();
    git_commit_over(&mut m, &mut Sequence::new(), &seen, &app, &old, port(20016));
    retire_with(&mut m, &old, || Ok(()), policy().attempts as usize, || Err(boom("docker rmi")));

    let (adapters, live) = m.into_live();
    let (result, _) = deploy(adapters, spec_with_grace(&app)).await;
    let deployed = result.expect("a failed retire does not fail the deploy");
    assert_eq!(deployed.residue.len(), 1, "{:?}", deployed.residue);
    assert_eq!(deployed.residue[0].kind, ResidueKind::Image);
    assert!(deployed.residue[0].what.contains(live_tag(&app, &old.deployment).as_str()), "{:?}", deployed.residue[0]);
    live.verify().await;
}

// 8. An app without domains and without a route is reached by port: the
// router is asked, but never changed, neither on success nor on rollback.
#[tokio::test]
async fn app_without_domains_never_touches_routes() {
    for fail_record in [false, true] {
        let app = app("no-domains");
        let b_port = port(20017);
        let seen = Seen::default();
        let mut m = Mocks::default();
        let mut seq = Sequence::new();
        git_forward(&mut m, &seen, &app, None, b_port);
        health_ok(&mut m, b_port);
        m.router.expect_route().times(1).returning(|_| Ok(None));
        m.router.expect_set_route().never();
        m.router.expect_remove_route().never();
        if fail_record {
            m.state.expect_record().times(1).in_sequence(&mut seq).returning(|_| Err(boom("record")));
            m.state.expect_restore().times(1).in_sequence(&mut seq).returning(|_, _| Ok(()));
            git_rollback_in_sequence(&mut m, &mut seq, &seen, &app);
        } else {
            m.state.expect_record().times(1).returning(|_| Ok(()));
            m.fetcher.expect_remove().times(1).returning(|_, _| Ok(()));
        }

        let (adapters, live) = m.into_live();
        let (result, events) = deploy(adapters, git_spec(&app, &[])).await;
        // The step still runs (it reads the route) and says it routed nothing.
        assert!(
            events.iter().any(|e| matches!(e, DeployEvent::StepFinished { step: Step::SwitchRoute, .. })),
            "{events:?}"
        );
        match result {
            Ok(deployed) => {
                assert!(!fail_record);
                assert!(deployed.release.domains.is_empty());
            }
            Err(err) => {
                assert!(fail_record, "{err}");
                assert_clean_rollback(&err, Step::RecordState, 5);
            }
        }
        live.verify().await;
    }
}

/// Which `Step*` event, for order checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    Started(Step),
    Finished(Step),
    Failed(Step),
}

fn step_marks(events: &[DeployEvent]) -> Vec<Mark> {
    events
        .iter()
        .filter_map(|e| match e {
            DeployEvent::StepStarted { step } => Some(Mark::Started(*step)),
            DeployEvent::StepFinished { step, .. } => Some(Mark::Finished(*step)),
            DeployEvent::StepFailed { step, .. } => Some(Mark::Failed(*step)),
            _ => None,
        })
        .collect()
}

// 9a. A successful deploy reports every step, started then finished, in
// order; LoadState runs beside fetch and build, so only its bounds are fixed.
#[tokio::test]
async fn successful_deploy_emits_every_step_in_order_without_secrets() {
    let app = app("events-ok");
    let (a_port, b_port) = (port(20018), port(20019));
    let old = old_release(&app, a_port, &["live.example"], true);
    let seen = Seen::default();
    let mut m = Mocks::default();
    git_commit_over(&mut m, &mut Sequence::new(), &seen, &app, &old, b_port);
    retire_with(&mut m, &old, || Ok(()), 1, || Ok(()));

    let (adapters, live) = m.into_live();
    let (result, events) = deploy(adapters, spec_with_grace(&app)).await;
    let deployed = result.expect("deploys");
    assert!(deployed.residue.is_empty(), "{:?}", deployed.residue);
    assert!(matches!(&events[0], DeployEvent::Started { app: a, deployment } if *a == app && seen.is(deployment)));

    let marks = step_marks(&events);
    let load = [Mark::Started(Step::LoadState), Mark::Finished(Step::LoadState)];
    let load_at: Vec<usize> =
        load.iter().map(|l| marks.iter().position(|m| m == l).expect("load state reported")).collect();
    let first_alloc = marks.iter().position(|m| *m == Mark::Started(Step::AllocatePort)).expect("allocate reported");
    assert!(load_at[0] < load_at[1] && load_at[1] < first_alloc, "{marks:?}");
    let rest: Vec<Mark> = marks.into_iter().filter(|m| !load.contains(m)).collect();
    let expected_steps = [
        Step::Fetch,
        Step::Build,
        Step::AllocatePort,
        Step::StartContainer,
        Step::HealthCheck,
        Step::SwitchRoute,
        Step::RecordState,
        Step::Drain,
        Step::StopOld,
        Step::KeepOld,
        Step::ReleaseOldPort,
        Step::RemoveOld, // releases beyond keep
    ];
    let expected: Vec<Mark> = expected_steps.iter().flat_map(|s| [Mark::Started(*s), Mark::Finished(*s)]).collect();
    assert_eq!(rest, expected);

    live.verify().await;
}

// 9b. A failed deploy names the failing step once, then reports each undo
// (started, finished) in the order the error's report lists them.
#[tokio::test]
async fn failed_deploy_emits_step_failed_and_each_undo_without_secrets() {
    let app = app("events-fail");
    let seen = Seen::default();
    let mut m = Mocks::default();
    let mut seq = Sequence::new();
    git_forward(&mut m, &seen, &app, None, port(20020));
    m.health.expect_check().times(1).returning(|_, _, _| Err(boom("health")));
    git_rollback_in_sequence(&mut m, &mut seq, &seen, &app);

    let (adapters, live) = m.into_live();
    let (result, events) = deploy(adapters, git_spec(&app, &["x.example"])).await;
    let err = result.expect_err("unhealthy");

    let marks = step_marks(&events);
    let failed: Vec<&Mark> = marks.iter().filter(|m| matches!(m, Mark::Failed(_))).collect();
    assert_eq!(failed, vec![&Mark::Failed(Step::HealthCheck)]);
    assert!(!marks.contains(&Mark::Finished(Step::HealthCheck)), "{marks:?}");
    assert!(!marks.contains(&Mark::Started(Step::SwitchRoute)), "{marks:?}");

    let failed_at = events
        .iter()
        .position(|e| matches!(e, DeployEvent::StepFailed { step: Step::HealthCheck, .. }))
        .expect("step failed event");
    let undos: Vec<(bool, String)> = events[failed_at..]
        .iter()
        .filter_map(|e| match e {
            DeployEvent::UndoStarted { resource } => Some((false, resource.clone())),
            DeployEvent::UndoFinished { resource, ok: true, attempts: 1, error: None } => {
                Some((true, resource.clone()))
            }
            DeployEvent::UndoFinished { .. } => panic!("an undo failed: {e:?}"),
            _ => None,
        })
        .collect();
    let expected: Vec<(bool, String)> =
        err.undo().outcomes.iter().flat_map(|o| [(false, o.action.clone()), (true, o.action.clone())]).collect();
    assert_eq!(undos, expected);
    assert_eq!(err.undo().outcomes.len(), 4);

    live.verify().await;
}

/// A context for driving the tokens by hand, with a known deployment id.
fn context(adapters: Adapters, spec: DeploySpec, deployment: &DeploymentId) -> (Arc<Context>, Reaper) {
    let reaper = Reaper::spawn(adapters.clone(), EventSink::discard(), policy());
    let ctx = Context {
        adapters,
        events: EventSink::discard(),
        reaper: reaper.clone(),
        retry: policy(),
        spec,
        deployment: deployment.clone(),
    };
    (Arc::new(ctx), reaper)
}

/// Fetch, build and allocate succeed once each for `deployment`; then
/// release port, remove image, remove source, once each, in that order.
fn held_then_undone(m: &mut Mocks, app: &AppId, deployment: &DeploymentId) {
    let mut seq = Sequence::new();
    let d = deployment.clone();
    m.fetcher
        .expect_fetch()
        .times(1)
        .withf(move |req| req.deployment == d)
        .returning(|_| Ok(FetchedSource { dir: "/tmp/src".into(), commit: sha() }));
    m.builder.expect_build().times(1).returning(|req, _| Ok(req.tag()));
    m.ports.expect_allocate().times(1).returning(|_, _| Ok(port(20021)));
    let d = deployment.clone();
    m.ports.expect_release().times(1).in_sequence(&mut seq).withf(move |x| *x == d).returning(|_| Ok(()));
    let tag = image_tag(app, deployment);
    m.builder.expect_remove_image().times(1).in_sequence(&mut seq).withf(move |i| *i == tag).returning(|_| Ok(()));
    let (a, d) = (app.clone(), deployment.clone());
    m.fetcher
        .expect_remove()
        .times(1)
        .in_sequence(&mut seq)
        .withf(move |x, y| *x == a && *y == d)
        .returning(|_, _| Ok(()));
}

fn assert_three_undos(report: &otturnaut_steps::UndoReport, app: &AppId, deployment: &DeploymentId) {
    assert!(report.is_clean(), "{:?}", report.residue);
    let actions: Vec<&str> = report.outcomes.iter().map(|o| o.action.as_str()).collect();
    assert_eq!(
        actions,
        vec![
            format!("release the host port of deployment {deployment}"),
            format!("remove image {}", image_tag(app, deployment)),
            format!("remove source of {app} deployment {deployment}"),
        ]
    );
    assert!(report.outcomes.iter().all(|o| o.ok && o.attempts == 1), "{:?}", report.outcomes);
}

// 10a. An explicit rollback of a PortHeld undoes port, image, source.
#[tokio::test]
async fn explicit_rollback_of_a_port_held_undoes_in_reverse() {
    let app = app("rollback-held");
    let deployment = DeploymentId::generate();
    let mut m = Mocks::default();
    held_then_undone(&mut m, &app, &deployment);

    let (adapters, live) = m.into_live();
    let (ctx, reaper) = context(adapters, git_spec(&app, &[]), &deployment);
    let held = Fetched::fetch(ctx.clone()).await.expect("fetch").build().await.expect("build");
    let held = held.allocate_port(None).await.expect("allocate");
    assert_eq!(held.port(), port(20021));
    let report = held.rollback().await;
    assert_three_undos(&report, &app, &deployment);
    assert!(reaper.flush().await.outcomes.is_empty(), "an explicit rollback left work to the reaper");
    drop((ctx, reaper));
    live.verify().await;
}

// 10b. Dropping a PortHeld hands the same undos, in the same order, to the reaper.
#[tokio::test]
async fn dropped_port_held_hands_its_undos_to_the_reaper_in_order() {
    let app = app("drop-held");
    let deployment = DeploymentId::generate();
    let mut m = Mocks::default();
    held_then_undone(&mut m, &app, &deployment);

    let (adapters, live) = m.into_live();
    let (ctx, reaper) = context(adapters, git_spec(&app, &[]), &deployment);
    let held = Fetched::fetch(ctx.clone()).await.expect("fetch").build().await.expect("build");
    let held = held.allocate_port(None).await.expect("allocate");
    drop(held);
    let report = reaper.flush().await;
    assert_three_undos(&report, &app, &deployment);
    drop((ctx, reaper));
    live.verify().await;
}
