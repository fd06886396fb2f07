//! The Docker adapter against the real Docker Engine.

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use otturnaut_adapters::docker::Docker;
use otturnaut_core::traits::{ContainerRuntime, ImageBuilder, image_tag, live_tag};
use otturnaut_core::{ContainerId, DeployEvent, DeploymentId, Error, EventSink, Secret, labels};
use otturnaut_tests::fixtures::{
    self, Behaviour, DockerCleanup, RawDocker, build_image, build_request, free_port, run_request, write_context,
};
use otturnaut_tests::services::unique_app;

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().expect("HTTP client")
}

/// GETs `path` on 127.0.0.1:`port`, retrying while the server comes up.
async fn get(port: u16, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let started = Instant::now();
    loop {
        match http().get(&url).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                return (status, r.text().await.unwrap_or_default());
            }
            Err(e) if started.elapsed() > Duration::from_secs(10) => panic!("GET {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn image_labels(docker: &Docker, image: impl AsRef<str>) -> std::collections::HashMap<String, String> {
    docker
        .client()
        .inspect_image(image.as_ref())
        .await
        .expect("inspect image")
        .config
        .and_then(|c| c.labels)
        .unwrap_or_default()
}

async fn image_exists(docker: &Docker, image: impl AsRef<str>) -> bool {
    docker.client().inspect_image(image.as_ref()).await.is_ok()
}

async fn container_exists(docker: &Docker, name: &str) -> bool {
    docker.client().inspect_container(name, None).await.is_ok()
}

#[tokio::test]
async fn connect_agrees_on_the_daemons_api_version() {
    let docker = fixtures::docker().await;
    let daemon = docker.client().version().await.expect("version");
    let daemon_api = daemon.api_version.expect("daemon API version");
    let parse = |v: &str| -> (u32, u32) {
        let (a, b) = v.split_once('.').expect("x.y");
        (a.parse().expect("major"), b.parse().expect("minor"))
    };
    assert!(
        parse(&docker.api_version()) <= parse(&daemon_api),
        "client speaks {} but the daemon only {daemon_api}",
        docker.api_version()
    );
}

#[tokio::test]
async fn an_unreachable_daemon_is_unavailable_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("docker.sock");
    let host = format!("unix://{}", socket.display());
    let err = Docker::connect_to(&host).await.expect_err("no daemon there");
    eprintln!("unreachable daemon: {err}");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.to_string().contains(&socket.display().to_string()), "{err}");
}

#[tokio::test]
async fn build_labels_the_image_and_streams_its_log() {
    let docker = fixtures::docker().await;
    let app = unique_app("build");
    let _cleanup = DockerCleanup::new(&app);
    let dir = tempfile::tempdir().expect("tempdir");
    write_context(dir.path(), &Behaviour::serve("v1")).expect("context");
    let deployment = DeploymentId::generate();
    let mut req = build_request(&app, &deployment, dir.path());
    req.repo = otturnaut_core::RepoUrl::parse_allowing_file("https://bob:hunter2@example.com/o/r.git").expect("url");

    let (events, mut rx) = EventSink::channel();
    let started = Instant::now();
    let tag = docker.build(&req, &events).await.expect("build");
    eprintln!("timing: build of a busybox image took {:?}", started.elapsed());

    assert_eq!(tag.as_str(), format!("otturnaut-{app}:{deployment}"));
    let labels = image_labels(&docker, &tag).await;
    assert_eq!(labels.get(labels::MANAGED).map(String::as_str), Some("true"));
    assert_eq!(labels.get(labels::APP), Some(&app.to_string()));
    assert_eq!(labels.get(labels::DEPLOYMENT), Some(&deployment.to_string()));
    assert_eq!(labels.get(labels::COMMIT).map(String::as_str), Some(fixtures::FIXTURE_COMMIT));
    assert_eq!(
        labels.get(labels::REPO).map(String::as_str),
        Some("https://bob:***@example.com/o/r.git"),
        "the repo label must not carry the password"
    );
    let created: u64 = labels.get(labels::CREATED).expect("created label").parse().expect("seconds");
    assert!(created > 1_600_000_000, "{created}");

    let mut lines = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let DeployEvent::BuildLog { line } = event {
            lines.push(line);
        }
    }
    assert!(lines.iter().any(|l| l.contains("COPY busybox /bin/busybox")), "build log events: {lines:#?}");
    assert!(lines.iter().all(|l| !l.ends_with('\n')));

    let listed = docker.list_images(Some(&app)).await.expect("list images");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].deployment, deployment);
    assert_eq!(listed[0].tags, vec![tag.clone()]);
    assert_eq!(listed[0].commit, Some(fixtures::fixture_commit()));
    let other = unique_app("build-other");
    assert!(docker.list_images(Some(&other)).await.expect("list").is_empty());
    assert!(
        docker.list_images(None).await.expect("list all").iter().any(|i| i.app == app),
        "an unfiltered list includes every managed image"
    );
}

#[tokio::test]
async fn build_args_reach_the_build_and_never_the_log() {
    let docker = fixtures::docker().await;
    let app = unique_app("buildarg");
    let _cleanup = DockerCleanup::new(&app);
    let dir = tempfile::tempdir().expect("tempdir");
    write_context(dir.path(), &Behaviour::ServeContext { port: 8080 }).expect("context");
    let dockerfile = Behaviour::ServeContext { port: 8080 }.dockerfile().replace(
        "COPY . /www",
        "COPY . /www\nARG GREETING\nRUN [\"/bin/busybox\",\"sh\",\"-c\",\"echo $GREETING > /www/greeting\"]",
    );
    fs::write(dir.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
    let deployment = DeploymentId::generate();
    let mut req = build_request(&app, &deployment, dir.path());
    req.build_args = BTreeMap::from([("GREETING".to_owned(), Secret::new("s3cr3t-value"))]);
    let (events, mut rx) = EventSink::channel();
    let tag = docker.build(&req, &events).await.expect("build");
    while let Ok(event) = rx.try_recv() {
        let text = format!("{event:?}");
        assert!(!text.contains("s3cr3t-value"), "a build arg leaked: {text}");
    }

    let port = free_port();
    docker.start(&run_request(&app, &deployment, tag.as_str(), port, 8080)).await.expect("start");
    assert_eq!(get(port.get(), "/greeting").await, (200, "s3cr3t-value\n".to_owned()));
}

#[tokio::test]
async fn a_failed_build_carries_the_log_tail_and_leaves_no_tag() {
    let docker = fixtures::docker().await;
    let app = unique_app("buildfail");
    let _cleanup = DockerCleanup::new(&app);
    let dir = tempfile::tempdir().expect("tempdir");
    write_context(dir.path(), &Behaviour::FailBuild).expect("context");
    let deployment = DeploymentId::generate();
    let req = build_request(&app, &deployment, dir.path());
    let (events, mut rx) = EventSink::channel();

    let err = docker.build(&req, &events).await.expect_err("the build fails");
    let Error::BuildFailed { detail, log_tail } = &err else {
        panic!("expected BuildFailed, got {err:?}");
    };
    assert!(detail.contains('7'), "the exit code is in the detail: {detail}");
    assert!(log_tail.len() <= 20);
    assert!(log_tail.iter().any(|l| l.contains("about to fail")), "{log_tail:#?}");
    assert!(err.to_string().contains("about to fail"), "{err}");
    let mut saw_output = false;
    while let Ok(event) = rx.try_recv() {
        saw_output |= matches!(&event, DeployEvent::BuildLog { line } if line.contains("step output"));
    }
    assert!(saw_output, "the failing step's output was streamed");
    assert!(!image_exists(&docker, &req.tag()).await, "no tag after a failed build");
    assert!(docker.list_images(Some(&app)).await.expect("list").is_empty());
}

#[tokio::test]
async fn a_missing_dockerfile_is_a_build_failure() {
    let docker = fixtures::docker().await;
    let app = unique_app("nodockerfile");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut req = build_request(&app, &DeploymentId::generate(), dir.path());
    req.dockerfile = "docker/Nope.Dockerfile".parse().expect("path");
    let err = docker.build(&req, &EventSink::discard()).await.expect_err("no Dockerfile");
    assert!(matches!(err, Error::BuildFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("docker/Nope.Dockerfile"), "{err}");
}

#[tokio::test]
async fn a_build_past_its_timeout_is_stopped_and_leaves_no_tag() {
    let docker = fixtures::docker().await;
    let app = unique_app("buildslow");
    let _cleanup = DockerCleanup::new(&app);
    let dir = tempfile::tempdir().expect("tempdir");
    write_context(dir.path(), &Behaviour::SlowBuild { secs: 30 }).expect("context");
    let mut req = build_request(&app, &DeploymentId::generate(), dir.path());
    req.timeout = Duration::from_secs(2);
    let started = Instant::now();
    let err = docker.build(&req, &EventSink::discard()).await.expect_err("too slow");
    let elapsed = started.elapsed();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(elapsed < Duration::from_secs(15), "gave up after {elapsed:?}");
    assert!(!image_exists(&docker, &req.tag()).await);
}

#[tokio::test]
async fn dockerignore_is_honoured_and_git_is_never_sent() {
    let docker = fixtures::docker().await;
    let app = unique_app("ignore");
    let _cleanup = DockerCleanup::new(&app);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write_context(root, &Behaviour::ServeContext { port: 8080 }).expect("context");
    for (path, text) in [
        ("secret.txt", "do not ship"),
        ("notes/keep.md", "keep"),
        ("notes/drop.md", "drop"),
        ("notes/sub/deep.md", "deep"),
        ("kept.txt", "kept"),
        (".git/HEAD", "ref: refs/heads/main"),
    ] {
        fs::create_dir_all(root.join(path).parent().expect("parent")).expect("mkdir");
        fs::write(root.join(path), text).expect("write");
    }
    fs::write(root.join(".dockerignore"), "# comment\nsecret.txt\nnotes/*.md\n!notes/keep.md\nDockerfile\n!.git\n")
        .expect("write .dockerignore");

    let deployment = DeploymentId::generate();
    let tag = docker.build(&build_request(&app, &deployment, root), &EventSink::discard()).await.expect("build");
    let port = free_port();
    docker.start(&run_request(&app, &deployment, tag.as_str(), port, 8080)).await.expect("start");

    let p = port.get();
    assert_eq!(get(p, "/kept.txt").await, (200, "kept".to_owned()));
    assert_eq!(get(p, "/notes/keep.md").await.0, 200, "an exception brings a file back");
    assert_eq!(get(p, "/notes/sub/deep.md").await.0, 200, "notes/*.md does not cross '/'");
    assert_eq!(get(p, "/secret.txt").await.0, 404);
    assert_eq!(get(p, "/notes/drop.md").await.0, 404);
    assert_eq!(get(p, "/.git/HEAD").await.0, 404, ".git is never sent, even with !.git");
    // An excluded Dockerfile is still sent (the build needs it). The legacy
    // builder drops it from what COPY sees; BuildKit, given a tarred
    // context, does not (README, "Builds").
    assert_eq!(get(p, "/Dockerfile").await.0, 200);
    assert_eq!(get(p, "/busybox").await.0, 200);
}

#[tokio::test]
async fn a_container_starts_reports_status_and_logs_is_listed_stops_and_is_removed() {
    let docker = fixtures::docker().await;
    let app = unique_app("life");
    let _cleanup = DockerCleanup::new(&app);
    let image = build_image(&docker, &app, &Behaviour::serve("v7")).await.expect("image");
    let port = free_port();
    let mut req = run_request(&app, &image.deployment, &image.tag, port, 8080);
    req.env.insert("GREETING".parse().expect("env name"), Secret::new("hello"));
    req.domains = vec!["a.example.com".parse().expect("domain"), "b.example.com".parse().expect("domain")];

    let started = Instant::now();
    let id = docker.start(&req).await.expect("start");
    eprintln!("timing: create+start took {:?}", started.elapsed());
    assert_eq!(get(port.get(), "/version").await, (200, "v7\n".to_owned()));

    let status = docker.status(&id).await.expect("status");
    assert!(status.running && !status.restarting, "{status:?}");
    assert_eq!(status.exit_code, None);

    let inspect = docker.client().inspect_container(&id.0, None).await.expect("inspect");
    let host = inspect.host_config.expect("host config");
    assert_eq!(host.init, Some(true));
    let bindings = host.port_bindings.expect("bindings");
    let binding = &bindings["8080/tcp"].as_ref().expect("binding")[0];
    assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(binding.host_port.as_deref(), Some(port.to_string().as_str()));
    let env = inspect.config.and_then(|c| c.env).unwrap_or_default();
    assert!(env.contains(&"GREETING=hello".to_owned()), "{env:?}");

    let logs = docker.logs(&id, 20).await.expect("logs");
    assert!(logs.iter().any(|l| l == "started v7"), "{logs:?}");
    assert_eq!(docker.logs(&id, 1).await.expect("logs").len(), 1);

    let listed = docker.list(Some(&app)).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let c = &listed[0];
    assert_eq!(c.id, id);
    assert_eq!(c.name, format!("otturnaut-{app}-{}", image.deployment));
    assert_eq!(c.deployment, image.deployment);
    assert_eq!(c.image, image.tag);
    assert_eq!(c.host_port, Some(port));
    assert_eq!(c.container_port.map(u16::from), Some(8080));
    assert_eq!(c.domains, req.domains);
    assert!(c.running);
    assert_eq!(c.state, "running");
    assert!(c.created > 0);

    let stopping = Instant::now();
    docker.stop(&id, Duration::from_secs(10)).await.expect("stop");
    let stop_took = stopping.elapsed();
    eprintln!("timing: stop (init forwards SIGTERM to httpd) took {stop_took:?}");
    assert!(stop_took < Duration::from_secs(8), "SIGTERM was not honoured: {stop_took:?}");
    let status = docker.status(&id).await.expect("status");
    assert!(!status.running, "{status:?}");
    assert!(status.exit_code.is_some());
    docker.stop(&id, Duration::from_secs(1)).await.expect("stopping again is fine");
    let listed = docker.list(Some(&app)).await.expect("list");
    assert_eq!(listed[0].state, "exited");
    assert!(!listed[0].running);

    docker.remove(&id).await.expect("remove");
    docker.remove(&id).await.expect("removing again is fine");
    assert!(docker.list(Some(&app)).await.expect("list").is_empty());
    docker.stop(&id, Duration::from_secs(1)).await.expect("stopping a gone container is fine");
    assert!(docker.status(&id).await.is_err(), "a gone container has no status");
}

#[tokio::test]
async fn remove_works_by_name_and_on_a_running_container() {
    let docker = fixtures::docker().await;
    let app = unique_app("rmname");
    let _cleanup = DockerCleanup::new(&app);
    let image = build_image(&docker, &app, &Behaviour::NeverListen).await.expect("image");
    let req = run_request(&app, &image.deployment, &image.tag, free_port(), 8080);
    docker.start(&req).await.expect("start");
    docker.remove(&ContainerId(req.name())).await.expect("remove by name");
    assert!(!container_exists(&docker, &req.name()).await);
}

#[tokio::test]
async fn a_start_failing_after_create_leaves_nothing_behind() {
    let docker = fixtures::docker().await;
    let app = unique_app("startfail");
    let _cleanup = DockerCleanup::new(&app);
    let image = build_image(&docker, &app, &Behaviour::FailToStart).await.expect("image");
    let req = run_request(&app, &image.deployment, &image.tag, free_port(), 8080);
    let err = docker.start(&req).await.expect_err("the daemon refuses to start it");
    assert!(matches!(err, Error::Failed { .. }), "{err:?}");
    assert!(err.to_string().contains(&req.name()), "the error names the container: {err}");
    assert!(err.to_string().contains("nobody"), "the daemon's reason is kept: {err}");
    assert!(!container_exists(&docker, &req.name()).await, "the created container was removed");
    assert!(docker.list(Some(&app)).await.expect("list").is_empty());
}

#[tokio::test]
async fn a_port_held_by_another_process_is_port_taken_and_leaves_nothing() {
    let docker = fixtures::docker().await;
    let app = unique_app("porttaken");
    let _cleanup = DockerCleanup::new(&app);
    let image = build_image(&docker, &app, &Behaviour::serve("v1")).await.expect("image");
    let holder = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let taken = otturnaut_core::HostPort::try_from(holder.local_addr().expect("addr").port()).expect("port");

    let mut req = run_request(&app, &image.deployment, &image.tag, taken, 8080);
    let err = docker.start(&req).await.expect_err("port is held");
    assert!(matches!(err, Error::PortTaken(p) if p == taken), "{err:?}");
    assert!(!container_exists(&docker, &req.name()).await);

    // The caller's retry on another port, under the same name, works.
    req.host_port = free_port();
    docker.start(&req).await.expect("start on a free port");
    assert_eq!(get(req.host_port.get(), "/version").await.0, 200);
    drop(holder);
}

#[tokio::test]
async fn a_port_held_by_another_container_is_port_taken() {
    let docker = fixtures::docker().await;
    let app = unique_app("portdup");
    let _cleanup = DockerCleanup::new(&app);
    let image = build_image(&docker, &app, &Behaviour::NeverListen).await.expect("image");
    let port = free_port();
    docker.start(&run_request(&app, &image.deployment, &image.tag, port, 8080)).await.expect("first");
    let second = DeploymentId::generate();
    let err =
        docker.start(&run_request(&app, &second, &image.tag, port, 8080)).await.expect_err("second on the same port");
    assert!(matches!(err, Error::PortTaken(p) if p == port), "{err:?}");
    assert_eq!(docker.list(Some(&app)).await.expect("list").len(), 1);
}

#[tokio::test]
async fn ensure_image_uses_a_local_image_and_explains_a_failed_pull() {
    let docker = fixtures::docker().await;
    let app = unique_app("ensure");
    let _cleanup = DockerCleanup::new(&app);
    let image = build_image(&docker, &app, &Behaviour::NeverListen).await.expect("image");
    let release = DeploymentId::generate();
    let tag = image_tag(&app, &release);
    docker
        .ensure_image(&image.tag.parse().expect("ref"), &tag, &EventSink::discard())
        .await
        .expect("a local image needs no pull");
    assert!(image_exists(&docker, &tag).await, "the release's own tag pins the image");
    docker.remove_image(&tag).await.expect("untag");
    assert!(image_exists(&docker, &image.tag).await, "removing the release tag leaves the image it tagged");

    // A registry on a closed loopback port: the pull fails without
    // sending anything off this machine.
    let missing = "127.0.0.1:1/otturnaut/missing:1".parse().expect("ref");
    let tag = image_tag(&app, &DeploymentId::generate());
    let err = docker.ensure_image(&missing, &tag, &EventSink::discard()).await.expect_err("cannot pull");
    let text = err.to_string();
    assert!(text.contains("pulling image 127.0.0.1:1/otturnaut/missing:1"), "{text}");
    assert!(text.contains("not present locally"), "{text}");
}

#[tokio::test]
async fn remove_image_is_idempotent() {
    let docker = fixtures::docker().await;
    let app = unique_app("rmi");
    let _cleanup = DockerCleanup::new(&app);
    let image = build_image(&docker, &app, &Behaviour::NeverListen).await.expect("image");
    docker.remove_image(&image.tag.parse().expect("tag")).await.expect("remove");
    assert!(!image_exists(&docker, &image.tag).await);
    docker.remove_image(&image.tag.parse().expect("tag")).await.expect("removing again is fine");
}

#[tokio::test]
async fn follow_logs_streams_lines_as_they_come() {
    let docker = fixtures::docker().await;
    let app = unique_app("follow");
    let _cleanup = DockerCleanup::new(&app);
    let image = build_image(&docker, &app, &Behaviour::serve("v3")).await.expect("image");
    let port = free_port();
    let id = docker.start(&run_request(&app, &image.deployment, &image.tag, port, 8080)).await.expect("start");
    let mut lines = docker.follow_logs(&id, 10);
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next())
        .await
        .expect("a line within 10 s")
        .expect("stream open")
        .expect("no error");
    assert_eq!(first, "started v3");
    // httpd -v logs each request on stderr: a line written after we started following.
    get(port.get(), "/version").await;
    let next = tokio::time::timeout(Duration::from_secs(10), lines.next())
        .await
        .expect("a request log line within 10 s")
        .expect("stream open")
        .expect("no error");
    assert!(next.contains("/version") || next.contains("response"), "{next}");
}

/// Only tags make an image ours, and a live mark is listed with its release.
#[tokio::test]
async fn images_are_ours_by_tag_and_live_marks_are_listed_with_their_release() {
    let docker = fixtures::docker().await;
    let app = unique_app("marks");
    let _cleanup = DockerCleanup::new(&app);
    let built = build_image(&docker, &app, &Behaviour::NeverListen).await.expect("image");
    let prebuilt = DeploymentId::generate();
    docker.tag_image(&built.tag, &image_tag(&app, &prebuilt)).await.expect("release tag");
    docker.tag_image(&built.tag, &live_tag(&app, &prebuilt)).await.expect("live mark");

    let listed = docker.list_images(Some(&app)).await.expect("list");
    assert_eq!(listed.len(), 2, "one entry per release: {listed:#?}");
    let marked = listed.iter().find(|i| i.deployment == prebuilt).expect("the marked release");
    assert!(marked.live && marked.released, "{marked:?}");
    assert_eq!(marked.tags, vec![live_tag(&app, &prebuilt), image_tag(&app, &prebuilt)], "the mark first");
    assert_eq!(marked.commit, None, "labels of an image built for another release do not count");
    let other = listed.iter().find(|i| i.deployment == built.deployment).expect("the built release");
    assert!(!other.live && other.released, "{other:?}");
    assert_eq!(other.id, marked.id, "both tag one image");
}

/// A container dressed up with our labels (as a build's intermediate
/// container is, by a Dockerfile's `LABEL`s) but not named as the agent names
/// its containers is invisible: never listed, so never live, removed or routed.
#[tokio::test]
async fn containers_with_our_labels_but_not_our_name_are_not_listed() {
    use bollard::models::ContainerCreateBody;
    use bollard::query_parameters::CreateContainerOptionsBuilder;
    let docker = fixtures::docker().await;
    let app = unique_app("spoofed");
    let _cleanup = DockerCleanup::new(&app);
    let image = build_image(&docker, &app, &Behaviour::NeverListen).await.expect("image");
    let deployment = DeploymentId::generate();
    let spoof_labels = [
        (labels::MANAGED, "true".to_owned()),
        (labels::APP, app.to_string()),
        (labels::DEPLOYMENT, deployment.to_string()),
        (labels::HOST_PORT, "10001".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let name = format!("spoof-{app}");
    let body = ContainerCreateBody { image: Some(image.tag.clone()), labels: Some(spoof_labels), ..Default::default() };
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    docker.client().create_container(Some(options), body).await.expect("create the spoof");
    let listed = docker.list(Some(&app)).await.expect("list");
    let everything = docker.list(None).await.expect("list all");
    docker.remove(&ContainerId(name.clone())).await.expect("remove the spoof");
    assert!(listed.is_empty(), "{listed:?}");
    assert!(everything.iter().all(|c| c.name != name), "{everything:?}");
}

/// `otturnaut prune`'s build-cache step against the real daemon (API 1.41
/// here: `keep-storage`). The budget is far above any cache, so nothing of
/// the shared daemon's cache is removed: the daemon's own count of what it
/// reclaimed says so (a request it read as "prune everything" would count
/// the unused cache). The cache's size is not compared: BuildKit's own
/// garbage collection and other sessions' builds change it meanwhile.
#[tokio::test]
async fn the_build_cache_prune_is_understood_and_keeps_its_budget() {
    let d = fixtures::docker().await;
    let freed = d.prune_build_cache(1 << 40).await.expect("the daemon takes the prune");
    assert_eq!(freed, 0, "a 1 TiB budget frees nothing");
}
