//! `otturnaut serve` over real HTTP, against real Docker and the shared
//! Caddy: the daemon is the CLI binary, started per test with its own token,
//! work dir, port range and `--watch-apps` (so its background reconcile
//! touches only the test's apps on the shared Docker daemon).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use otturnaut_adapters::caddy::Caddy;
use otturnaut_core::AppId;
use otturnaut_core::traits::{ContainerRuntime, ImageBuilder, Router};
use otturnaut_tests::caddy_proc::{free_port, shared_caddy};
use otturnaut_tests::command::otturnaut_command;
use otturnaut_tests::fixtures::{Behaviour, DockerCleanup, docker, docker_cli, write_context};
use otturnaut_tests::gitfix::GitRepo;
use otturnaut_tests::reloads::ask_shared_caddy;
use otturnaut_tests::services::{require_caddy, require_docker, unique_app};
use serde_json::{Value, json};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_otturnaut-cli-under-test");
const TOKEN: &str = "test-token-0123456789abcdef";

/// The keys of `otturnaut deploy --json`'s result object for a deploy that
/// went live (otturnaut-adapters' `Outcome::to_json`; tests/cli.rs checks
/// the CLI prints them).
const DEPLOYED_KEYS: [&str; 17] = [
    "result",
    "app",
    "deployment",
    "image",
    "commit",
    "port",
    "container_port",
    "domains",
    "urls",
    "previous",
    "rollback_of",
    "rolled_back",
    "residue",
    "cleaned",
    "error",
    "elapsed_ms",
    "exit_code",
];

struct Cleanup {
    _docker: Vec<DockerCleanup>,
    caddy: Caddy,
    apps: Vec<AppId>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (caddy, apps) = (self.caddy.clone(), self.apps.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("cleanup runtime");
            rt.block_on(async {
                for app in &apps {
                    let _ = caddy.remove_route(app).await;
                }
            })
        })
        .join();
    }
}

/// A running daemon with its own apps.
struct Daemon {
    child: tokio::process::Child,
    base: String,
    http: reqwest::Client,
    apps: Vec<AppId>,
    work: TempDir,
    caddy: Caddy,
    _cleanup: Cleanup,
}

fn command(work: &Path, port_range: &str, args: &[&str]) -> tokio::process::Command {
    otturnaut_command(BIN, work, port_range, args)
}

impl Daemon {
    /// `apps`: how many app names the test uses; `range_start`: the first
    /// of 20 host ports no other test uses.
    async fn start(prefix: &str, apps: usize, range_start: u16) -> Daemon {
        Daemon::start_with(prefix, apps, range_start, &[]).await
    }

    /// [`Daemon::start`] with environment variables of the daemon set or
    /// overridden (another Caddy, another Docker socket).
    async fn start_with(prefix: &str, apps: usize, range_start: u16, env: &[(&str, String)]) -> Daemon {
        require_docker().await;
        require_caddy().await;
        let apps: Vec<AppId> = (0..apps).map(|_| unique_app(prefix)).collect();
        let work = tempfile::Builder::new().prefix("otturnaut-daemon-work-").tempdir().expect("work dir");
        let token = work.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).expect("token file");
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let watch = apps.iter().map(AppId::as_str).collect::<Vec<_>>().join(",");
        let range = format!("{range_start}-{}", range_start + 19);
        let token_arg = token.to_str().expect("utf-8 path").to_owned();
        let mut cmd = command(
            work.path(),
            &range,
            &["serve", "--api-listen", &listen, "--token-file", &token_arg, "--watch-apps", &watch],
        );
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let child = cmd.stdout(Stdio::null()).spawn().expect("starting otturnaut serve");
        let caddy = shared_caddy();
        let d = Daemon {
            child,
            base: format!("http://{listen}"),
            http: reqwest::Client::new(),
            _cleanup: Cleanup {
                _docker: apps.iter().map(DockerCleanup::new).collect(),
                caddy: caddy.clone(),
                apps: apps.clone(),
            },
            apps,
            work,
            caddy,
        };
        let started = Instant::now();
        loop {
            if let Ok(r) = d.http.get(d.url("/v1/health")).send().await {
                assert_eq!(r.status(), 200, "health: {:?}", r.text().await);
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "the daemon did not answer within 30s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        d
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(TOKEN)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(self.url(path)).bearer_auth(TOKEN)
    }

    fn deploy_body(&self, app: usize, repo: &GitRepo, extra: Value) -> Value {
        let mut body = json!({
            "repo": repo.file_url(),
            "container_port": 8080,
            "domains": [domain(&self.apps[app])],
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        body
    }

    /// A deploy to its end: every line of the NDJSON stream.
    async fn deploy(&self, app: usize, body: &Value) -> Vec<Value> {
        let r = self.post(&format!("/v1/apps/{}/deployments", self.apps[app])).json(body).send().await.expect("POST");
        assert_eq!(r.status(), 200, "deploy answered {:?}", r.text().await);
        assert_eq!(r.headers()["content-type"], "application/x-ndjson");
        let text = tokio::time::timeout(Duration::from_secs(180), r.text()).await.expect("deploy within 3 min");
        lines(&text.expect("body"))
    }

    async fn status(&self, app: usize) -> (u16, Value) {
        let r = self.get(&format!("/v1/apps/{}", self.apps[app])).send().await.expect("GET app");
        (r.status().as_u16(), r.json().await.expect("JSON"))
    }

    async fn snapshot(&self, app: usize) -> (BTreeSet<String>, BTreeSet<String>, bool) {
        let d = docker().await;
        let app = &self.apps[app];
        let containers = d.list(Some(app)).await.expect("containers").into_iter().map(|c| c.id.0).collect();
        let images = d.list_images(Some(app)).await.expect("images").into_iter().map(|i| i.id).collect();
        let route = self.caddy.route(app).await.expect("route").is_some();
        (containers, images, route)
    }
}

fn domain(app: &AppId) -> String {
    format!("{app}.localhost")
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn serving_repo(version: &str) -> GitRepo {
    let repo = GitRepo::new();
    repo.commit_with(version, |dir| write_context(dir, &Behaviour::serve(version)));
    repo
}

fn commit(repo: &GitRepo, behaviour: &Behaviour) {
    repo.commit_with(&format!("{behaviour:?}"), |dir| {
        let _ = std::fs::remove_dir_all(dir.join("www"));
        write_context(dir, behaviour)
    });
}

async fn served(app: &AppId) -> (u16, String) {
    ask_shared_caddy(&domain(app)).await
}

#[tokio::test]
async fn tokens_and_bad_input_are_refused_before_anything_is_touched() {
    let d = Daemon::start("api-auth", 1, 22400).await;
    let app = d.apps[0].clone();

    // Health needs no token; everything else does.
    let r = d.http.get(d.url("/v1/health")).send().await.expect("health");
    assert_eq!(r.status(), 200);
    let health: Value = r.json().await.expect("JSON");
    assert_eq!(health, json!({"status": "ok", "docker": "ok", "caddy": "ok"}));
    for auth in [None, Some("Bearer wrong-token-0123456789abc"), Some(TOKEN), Some("Basic dGVzdA==")] {
        let mut req = d.http.get(d.url("/v1/apps"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.expect("GET");
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let text = r.text().await.expect("body");
        assert!(!text.contains(TOKEN) && !text.contains("wrong-token"), "{text}");
    }
    let r = d.http.post(d.url(&format!("/v1/apps/{app}/deployments"))).json(&json!({})).send().await.expect("POST");
    assert_eq!(r.status(), 401, "a deploy without a token is refused before its body is read");

    // 422 naming the field, for every kind of bad body; secrets never echoed.
    for (body, field) in [
        (json!({"image": "x", "container_port": 0}), "container_port"),
        (json!({"image": "x", "container_port": "80"}), "container_port"),
        (json!({"image": "x"}), "container_port"),
        (json!({"image": "x", "container_port": 80, "volumes": ["/:/host"]}), "volumes"),
        (json!({"image": "Nginx", "container_port": 80}), "image"),
        (json!({"repo": "ext::sh -c id", "container_port": 80}), "repo"),
        (json!({"image": "x", "container_port": 80, "env": {"1BAD": "hunter2"}}), "env"),
        (json!({"image": "x", "container_port": 80, "health_timeout": "25h"}), "health_timeout"),
        (json!({"image": "x", "container_port": 80, "domains": ["a_b.com"]}), "domains"),
    ] {
        let r = d.post(&format!("/v1/apps/{app}/deployments")).json(&body).send().await.expect("POST");
        assert_eq!(r.status(), 422, "{body}");
        let e: Value = r.json().await.expect("JSON error");
        assert_eq!(e["field"], field, "{body}: {e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
    let r = d.post("/v1/apps/Bad_App/deployments").json(&json!({"image": "x", "container_port": 80})).send().await;
    let r = r.expect("POST");
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.expect("JSON")["field"], "app");
    let r = d.post(&format!("/v1/apps/{app}/deployments")).body("{not json").send().await.expect("POST");
    assert_eq!(r.status(), 422);

    // Bodies over 1 MiB: 413 with the JSON error shape.
    let big = json!({"image": "x", "container_port": 80, "env": {"BIG": "x".repeat(1024 * 1024 + 1)}});
    let r = d.post(&format!("/v1/apps/{app}/deployments")).json(&big).send().await.expect("POST");
    assert_eq!(r.status(), 413);
    assert!(r.json::<Value>().await.expect("JSON")["error"].is_string());

    // Unknown apps and endpoints.
    let r = d.get(&format!("/v1/apps/{app}")).send().await.expect("GET");
    assert_eq!(r.status(), 404);
    let r = d.post(&format!("/v1/apps/{app}/deployments/cancel")).send().await.expect("cancel");
    assert_eq!(r.status(), 404);
    let r = d.get("/v1/nothing-here").send().await.expect("GET");
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.expect("JSON")["error"].is_string());

    // Reconcile of one app (nothing to do), and its bad bodies.
    let r = d.post("/v1/reconcile").json(&json!({"app": app})).send().await.expect("POST");
    assert_eq!(r.status(), 200);
    let rec: Value = r.json().await.expect("JSON");
    assert_eq!(rec["result"], "reconciled", "{rec}");
    assert_eq!(rec["done"], json!([]));
    for (body, field) in [(json!({"app": "Bad_App"}), "app"), (json!({"apps": []}), "apps")] {
        let r = d.post("/v1/reconcile").json(&body).send().await.expect("POST");
        assert_eq!(r.status(), 422, "{body}");
        assert_eq!(r.json::<Value>().await.expect("JSON")["field"], field);
    }

    // The OpenAPI document and the metrics.
    let doc: Value = d.get("/v1/openapi.json").send().await.expect("openapi").json().await.expect("JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);
    assert!(doc["paths"]["/v1/apps/{app}/deployments"]["post"].is_object());
    assert!(doc["components"]["schemas"]["DeployRequest"].is_object());
    let metrics = d.get("/metrics").send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("otturnaut_deploys_total{result=\"deployed\"} 0"), "{metrics}");

    assert_eq!(d.snapshot(0).await, (BTreeSet::new(), BTreeSet::new(), false), "nothing was created");
}

#[tokio::test]
async fn deploys_redeploys_fails_and_undeploys_over_http() {
    let d = Daemon::start("api-deploy", 1, 22420).await;
    let app = d.apps[0].clone();
    let repo = serving_repo("v1");

    let events = d.deploy(0, &d.deploy_body(0, &repo, json!({}))).await;
    assert_eq!(events[0]["event"], "started", "{events:?}");
    assert!(events.iter().any(|e| e["event"] == "build_log"), "build output is streamed");
    let r1 = events.last().expect("a result line").clone();
    let keys: BTreeSet<&str> = r1.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(keys, DEPLOYED_KEYS.into_iter().collect(), "the result is deploy --json's: {r1}");
    assert_eq!(r1["result"], "deployed");
    assert_eq!(r1["exit_code"], 0);
    assert_eq!(served(&app).await, (200, "v1\n".to_owned()));
    let (code, status) = d.status(0).await;
    assert_eq!(code, 200);
    assert_eq!(status["deployment"], r1["deployment"]);
    assert_eq!(status["live"], true);
    let list: Value = d.get("/v1/apps").send().await.expect("GET").json().await.expect("JSON");
    assert!(list.as_array().expect("array").iter().any(|a| a["app"] == app.as_str()), "{list}");

    // A redeploy as SSE, with an Idempotency-Key: the repeat gets the same
    // result and deploys nothing.
    commit(&repo, &Behaviour::serve("v2"));
    let body = d.deploy_body(0, &repo, json!({}));
    let send = || {
        d.post(&format!("/v1/apps/{app}/deployments"))
            .header("accept", "text/event-stream")
            .header("idempotency-key", "redeploy-1")
            .json(&body)
            .send()
    };
    let r = send().await.expect("POST");
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().expect("ascii").starts_with("text/event-stream"));
    let text = r.text().await.expect("SSE body");
    let frames: Vec<&str> = text.split("\n\n").filter(|f| f.contains("data:")).collect();
    assert!(frames.iter().all(|f| f.starts_with("event: event\ndata: {") || f.starts_with("event: result\ndata: {")));
    let last = frames.last().expect("frames");
    assert!(last.starts_with("event: result\n"), "{last}");
    let r2: Value = serde_json::from_str(last.trim_start_matches("event: result\ndata: ")).expect("result JSON");
    assert_eq!(r2["result"], "deployed");
    assert_eq!(r2["previous"], r1["deployment"]);
    assert_eq!(served(&app).await, (200, "v2\n".to_owned()));
    let again = send().await.expect("POST").text().await.expect("body");
    let repeat: Value = serde_json::from_str(
        again
            .split("\n\n")
            .find(|f| f.starts_with("event: result"))
            .expect("a result")
            .trim_start_matches("event: result\ndata: "),
    )
    .expect("JSON");
    assert_eq!(repeat, r2, "the repeat gets the first result");
    assert_eq!(d.status(0).await.1["deployment"], r2["deployment"], "and nothing was deployed again");

    // A failing deploy: rolled back, v2 keeps serving.
    let before = d.snapshot(0).await;
    commit(&repo, &Behaviour::Exit { code: 3 });
    let failed = d.deploy(0, &d.deploy_body(0, &repo, json!({"health_timeout": "10s"}))).await;
    let r3 = failed.last().expect("result");
    assert_eq!(r3["result"], "failed", "{r3}");
    assert_eq!(r3["rolled_back"], true);
    assert_eq!(r3["exit_code"], 1);
    assert_eq!(r3["live"]["deployment"], r2["deployment"]);
    assert_eq!(served(&app).await, (200, "v2\n".to_owned()));
    assert_eq!(d.snapshot(0).await, before, "nothing of the failed deploy is left");

    // Releases, a rollback through the same stream (and outcome), prune.
    let releases: Value =
        d.get(&format!("/v1/apps/{app}/releases")).send().await.expect("GET").json().await.expect("JSON");
    let states: Vec<(&str, &str)> = releases
        .as_array()
        .expect("array")
        .iter()
        .map(|r| (r["deployment"].as_str().unwrap_or_default(), r["state"].as_str().unwrap_or_default()))
        .collect();
    let (d1, d2) = (r1["deployment"].as_str().expect("d1"), r2["deployment"].as_str().expect("d2"));
    assert_eq!(states, [(d2, "live"), (d1, "retained")], "{releases}");
    let r = d.post(&format!("/v1/apps/{app}/rollback")).json(&json!({"to": "not-an-id"})).send().await.expect("POST");
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.expect("JSON")["field"], "to");
    let r = d.post(&format!("/v1/apps/{app}/rollback")).send().await.expect("POST");
    assert_eq!(r.status(), 200);
    let back = lines(&r.text().await.expect("body")).pop().expect("result");
    assert_eq!(back["result"], "deployed", "{back}");
    assert_eq!(back["rollback_of"], d1);
    assert_eq!(served(&app).await, (200, "v1\n".to_owned()));
    let pruned: Value =
        d.post(&format!("/v1/apps/{app}/prune")).send().await.expect("POST").json().await.expect("JSON");
    assert_eq!(pruned["result"], "pruned", "{pruned}");

    let metrics = d.get("/metrics").send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("otturnaut_deploys_total{result=\"deployed\"} 2"), "{metrics}");
    assert!(metrics.contains("otturnaut_rollbacks_total{result=\"deployed\"} 1"), "{metrics}");
    assert!(metrics.contains("otturnaut_deploys_total{result=\"failed\"} 1"), "{metrics}");

    let logs: Value =
        d.get(&format!("/v1/apps/{app}/logs?tail=5")).send().await.expect("logs").json().await.expect("JSON");
    assert!(
        logs["lines"].as_array().expect("lines").iter().any(|l| l.as_str().is_some_and(|l| l.contains("started v1")))
    );

    // Following: SSE `line` events, the backlog first.
    let mut follow = d.get(&format!("/v1/apps/{app}/logs?tail=5&follow=true")).send().await.expect("follow");
    assert!(follow.headers()["content-type"].to_str().expect("ascii").starts_with("text/event-stream"));
    let mut seen = String::new();
    while !seen.contains("event: line\ndata: started v1") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), follow.chunk()).await.expect("a line within 10s");
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("chunk").expect("not the end")));
    }
    drop(follow);

    let r = d.http.delete(d.url(&format!("/v1/apps/{app}"))).bearer_auth(TOKEN).send().await.expect("DELETE");
    assert_eq!(r.status(), 200);
    let u: Value = r.json().await.expect("JSON");
    assert_eq!(u["result"], "undeployed", "{u}");
    assert_eq!(d.status(0).await.0, 404);
    assert_eq!(d.snapshot(0).await, (BTreeSet::new(), BTreeSet::new(), false));
}

#[tokio::test]
async fn a_second_deploy_gets_409_and_cancel_rolls_the_first_back() {
    let d = Daemon::start("api-cancel", 1, 22440).await;
    let app = d.apps[0].clone();
    let repo = serving_repo("stays");
    d.deploy(0, &d.deploy_body(0, &repo, json!({}))).await;
    let before = d.snapshot(0).await;

    // Never healthy: the deploy sits in its health check until cancelled.
    commit(&repo, &Behaviour::NeverListen);
    let mut stuck = d
        .post(&format!("/v1/apps/{app}/deployments"))
        .json(&d.deploy_body(0, &repo, json!({"health_timeout": "2m"})))
        .send()
        .await
        .expect("POST");
    let mut seen = String::new();
    while !seen.contains("\"step\":\"health_check\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(120), stuck.chunk()).await.expect("events");
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("chunk").expect("not the end yet")));
    }
    let deployment = lines(&seen)[0]["deployment"].clone();

    let r = d.post(&format!("/v1/apps/{app}/deployments")).json(&d.deploy_body(0, &repo, json!({}))).send().await;
    let r = r.expect("POST");
    assert_eq!(r.status(), 409);
    let e: Value = r.json().await.expect("JSON");
    assert_eq!(e["deployment"], deployment, "the 409 names the running deploy: {e}");
    assert!(e["error"].as_str().is_some_and(|m| m.contains("another deploy")), "{e}");
    let r = d.http.delete(d.url(&format!("/v1/apps/{app}"))).bearer_auth(TOKEN).send().await.expect("DELETE");
    assert_eq!(r.status(), 409, "no undeploy under a running deploy");

    // The CLI shares the API's lock: its deploy of the app waits, naming the holder.
    let domain = domain(&app);
    let argv = ["deploy", app.as_str(), "--image", "x", "--container-port", "80", "--domain", domain.as_str()];
    let mut cli = command(d.work.path(), "22440-22459", &argv).stderr(Stdio::piped()).spawn().expect("CLI deploy");
    let mut stderr = cli.stderr.take().expect("stderr");
    let mut said = String::new();
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        while !said.contains("waiting") {
            let n = stderr.read(&mut buf).await.expect("read stderr");
            assert!(n > 0, "the CLI ended without waiting: {said}");
            said.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
    assert!(waited.is_ok(), "the CLI did not wait for the API's deploy: {said}");
    assert!(said.contains("another deploy of") && said.contains("is running (pid"), "{said}");
    cli.kill().await.expect("stopping the waiting CLI");

    let r = d.post(&format!("/v1/apps/{app}/deployments/cancel")).send().await.expect("cancel");
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.expect("JSON")["deployment"], deployment);
    let rest = tokio::time::timeout(Duration::from_secs(60), stuck.text()).await.expect("ends").expect("body");
    let result = lines(&format!("{seen}{rest}")).pop().expect("result");
    assert_eq!(result["result"], "failed", "{result}");
    assert_eq!(result["interrupted"], "a cancel request");
    assert_eq!(result["rolled_back"], true);
    assert_eq!(served(&app).await, (200, "stays\n".to_owned()));
    assert_eq!(d.snapshot(0).await, before, "nothing of the cancelled deploy is left");
}

#[tokio::test]
async fn a_client_that_goes_away_does_not_stop_the_deploy() {
    let d = Daemon::start("api-gone", 1, 22460).await;
    let app = d.apps[0].clone();
    let repo = serving_repo("finished anyway");
    let mut r = d.post(&format!("/v1/apps/{app}/deployments")).json(&d.deploy_body(0, &repo, json!({}))).send().await;
    let first = r.as_mut().expect("POST").chunk().await.expect("a first chunk").expect("data");
    let started: Value =
        serde_json::from_str(String::from_utf8_lossy(&first).lines().next().expect("a line")).expect("JSON");
    assert_eq!(started["event"], "started");
    drop(r);

    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, s) = d.status(0).await;
        if code == 200 && s["deployment"] == started["deployment"] && s["live"] == true {
            break;
        }
        assert!(Instant::now() < until, "the deploy did not finish after the client left: {s}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(served(&app).await, (200, "finished anyway\n".to_owned()));
    // Live from the commit on; the outcome (and its count) comes after the retirement.
    loop {
        let metrics = d.get("/metrics").send().await.expect("metrics").text().await.expect("text");
        if metrics.contains("otturnaut_deploys_total{result=\"deployed\"} 1") {
            break;
        }
        assert!(Instant::now() < until, "the outcome never reached the metrics: {metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_lost_route_is_restored_by_the_watch_within_15_seconds() {
    let d = Daemon::start("api-watch", 1, 22480).await;
    let app = d.apps[0].clone();
    d.deploy(0, &d.deploy_body(0, &serving_repo("back"), json!({}))).await;
    d.caddy.remove_route(&app).await.expect("removing the route, as a Caddy restart would lose it");
    assert!(d.caddy.route(&app).await.expect("route").is_none());
    let lost = Instant::now();
    while d.caddy.route(&app).await.expect("route").is_none() {
        assert!(lost.elapsed() < Duration::from_secs(15), "the route was not restored within 15s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("route restored after {:?}", lost.elapsed());
    assert_eq!(served(&app).await, (200, "back\n".to_owned()));
    let metrics = d.get("/metrics").send().await.expect("metrics").text().await.expect("text");
    assert!(!metrics.contains("otturnaut_reconcile_restores_total 0"), "{metrics}");
}

#[tokio::test]
async fn sigterm_lets_a_running_deploy_finish_then_exits_0() {
    let mut d = Daemon::start("api-term", 1, 22500).await;
    let app = d.apps[0].clone();
    let repo = serving_repo("finished");
    let mut r = d
        .post(&format!("/v1/apps/{app}/deployments"))
        .json(&d.deploy_body(0, &repo, json!({})))
        .send()
        .await
        .expect("POST");
    let first = r.chunk().await.expect("a chunk").expect("data");
    assert!(String::from_utf8_lossy(&first).contains("\"started\""));
    let pid = d.child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(killed.success());
    let mut rest = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(120), r.chunk()).await.expect("the stream goes on") {
            Ok(Some(c)) => rest.push_str(&String::from_utf8_lossy(&c)),
            Ok(None) => break,
            Err(e) => panic!("the stream broke ({e}) after:\n{rest}"),
        }
    }
    let result = lines(&rest).pop().expect("a result");
    assert_eq!(result["result"], "deployed", "the running deploy finished: {result}");
    let status = tokio::time::timeout(Duration::from_secs(30), d.child.wait()).await.expect("exits").expect("status");
    assert_eq!(status.code(), Some(0));
    assert!(d.http.get(d.url("/v1/health")).send().await.is_err(), "no longer listening");
    assert_eq!(served(&app).await, (200, "finished\n".to_owned()));
}

#[tokio::test]
async fn serve_refuses_a_missing_or_shared_token_and_clear_http_off_loopback() {
    let work = tempfile::tempdir().expect("tempdir");
    let token = work.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("write");
    let token_arg = token.to_str().expect("utf-8").to_owned();
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        command(work.path(), "22520-22539", &args).output()
    };
    let out = run(vec!["serve".into()]).await.expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token file"), "{out:?}");

    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    let out = run(vec!["serve".into(), "--token-file".into(), token_arg.clone()]).await.expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("other users") && !stderr.contains(TOKEN), "{stderr}");

    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let args = vec!["serve".into(), "--token-file".into(), token_arg, "--api-listen".into(), "0.0.0.0:7499".into()];
    let out = run(args).await.expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-cert"), "{out:?}");
}

#[tokio::test]
async fn a_non_loopback_address_is_served_over_tls() {
    require_docker().await;
    require_caddy().await;
    let work = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (work.path().join("cert.pem"), work.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "openssl: {made:?}");
    let token = work.path().join("token");
    std::fs::write(&token, TOKEN).expect("token");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let path = |p: &Path| p.to_str().expect("utf-8").to_owned();
    let app = unique_app("api-tls");
    let args = ["serve", "--api-listen", &listen, "--token-file", &path(&token), "--tls-cert", &path(&cert)];
    let mut args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    args.extend(["--tls-key".to_owned(), path(&key), "--watch-apps".to_owned(), app.to_string()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let _child = command(&work.path().join("work"), "22540-22559", &argv).stdout(Stdio::null()).spawn().expect("serve");
    let curl = |scheme: &str| {
        std::process::Command::new("curl")
            .args(["-s", "-k", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"])
            .arg(format!("{scheme}://127.0.0.1:{port}/v1/apps"))
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
            .output()
            .expect("curl")
    };
    let started = Instant::now();
    loop {
        let out = curl("https");
        if String::from_utf8_lossy(&out.stdout) == "200" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no 200 over TLS: {out:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let plain = curl("http");
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200", "plain HTTP is not answered on the TLS port");
}

/// Reads `stream` until what it sent contains `marker`; returns all of it.
async fn read_until(stream: &mut reqwest::Response, marker: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(marker) {
        let chunk = tokio::time::timeout(Duration::from_secs(120), stream.chunk()).await.expect("events");
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("chunk").unwrap_or_else(|| panic!("ended: {seen}"))));
    }
    seen
}

/// Reads `stream` to its end; `seen` is what was read of it before.
async fn read_rest(stream: &mut reqwest::Response, seen: String, within: Duration) -> Vec<Value> {
    let mut text = seen;
    let read = tokio::time::timeout(within, async {
        loop {
            match stream.chunk().await {
                Ok(Some(c)) => text.push_str(&String::from_utf8_lossy(&c)),
                Ok(None) => break,
                Err(e) => panic!("the stream broke ({e}) after:\n{text}"),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the stream did not end within {within:?}: {text}");
    lines(&text)
}

/// A request that holds one of the daemon's request slots: its head is
/// sent (with the token, so it gets past auth) and its 2-byte body never
/// is, so the handler waits for it until the connection is closed. A
/// rollback, because it has no 60 s request timeout (as a deploy).
async fn held_request(d: &Daemon) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = d.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/apps/{}/rollback HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\n\r\n",
        d.apps[0]
    );
    s.write_all(head.as_bytes()).await.expect("send the head");
    s
}

/// `GET /v1/health` on a new connection until it answers `status`; that answer.
async fn health_until(d: &Daemon, status: u16, within: Duration) -> reqwest::Response {
    let until = Instant::now() + within;
    loop {
        // A new connection each time: the answer must not depend on a kept one.
        let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
        let r = http.get(d.url("/v1/health")).send().await.expect("GET /v1/health");
        if r.status() == status {
            return r;
        }
        assert!(Instant::now() < until, "health answered {} for {within:?}, not {status}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_65th_concurrent_request_gets_503_with_retry_after() {
    let d = Daemon::start("api-limit", 1, 22560).await;
    // The documented bound (README, `otturnaut serve --help`).
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(held_request(&d).await);
    }
    // Once all 64 are in their handlers, any other request is refused at once.
    let r = health_until(&d, 503, Duration::from_secs(20)).await;
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.expect("JSON error");
    assert_eq!(body, json!({"error": "too many concurrent requests; try again", "field": null}));
    let r = d.get("/v1/apps").send().await.expect("GET /v1/apps");
    assert_eq!(r.status(), 503, "the limit covers every endpoint");

    // One of them gone (63 held): the next request is served...
    drop(held.pop());
    health_until(&d, 200, Duration::from_secs(20)).await;
    // ...and a 64th held one fills the limit again.
    held.push(held_request(&d).await);
    health_until(&d, 503, Duration::from_secs(20)).await;
    drop(held);
    health_until(&d, 200, Duration::from_secs(20)).await;
    let r = d.get("/v1/apps").send().await.expect("GET /v1/apps");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn wait_true_queues_a_deploy_behind_the_running_one_instead_of_409() {
    let d = Daemon::start("api-wait", 1, 22580).await;
    let app = d.apps[0].clone();
    let stuck_repo = serving_repo("first");
    d.deploy(0, &d.deploy_body(0, &stuck_repo, json!({}))).await;
    commit(&stuck_repo, &Behaviour::NeverListen);
    let mut stuck = d
        .post(&format!("/v1/apps/{app}/deployments"))
        .json(&d.deploy_body(0, &stuck_repo, json!({"health_timeout": "2m"})))
        .send()
        .await
        .expect("POST");
    let seen = read_until(&mut stuck, "\"step\":\"health_check\"").await;
    let first = lines(&seen)[0]["deployment"].clone();

    // Without wait: 409. With wait=true: no answer while the first runs.
    let second_repo = serving_repo("second");
    let second = d.deploy_body(0, &second_repo, json!({}));
    let r = d.post(&format!("/v1/apps/{app}/deployments")).json(&second).send().await.expect("POST");
    assert_eq!(r.status(), 409);
    let waiting = tokio::spawn(d.post(&format!("/v1/apps/{app}/deployments?wait=true")).json(&second).send());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!waiting.is_finished(), "wait=true answered while the first deploy held the app");

    let r = d.post(&format!("/v1/apps/{app}/deployments/cancel")).send().await.expect("cancel");
    assert_eq!(r.status(), 202);
    let result = read_rest(&mut stuck, seen, Duration::from_secs(60)).await.pop().expect("result");
    assert_eq!(result["result"], "failed", "{result}");

    // Then the waiting request gets the stream of its own deploy.
    let mut r = tokio::time::timeout(Duration::from_secs(60), waiting).await.expect("answered").expect("task");
    let r = r.as_mut().expect("POST ?wait=true");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let all = read_rest(r, String::new(), Duration::from_secs(180)).await;
    let (started, result) = (&all[0], all.last().expect("result"));
    assert_eq!(started["event"], "started");
    assert_ne!(started["deployment"], first, "a deploy of its own");
    assert_eq!(result["result"], "deployed", "{result}");
    assert_eq!(result["deployment"], started["deployment"]);
    assert_eq!(served(&app).await, (200, "second\n".to_owned()));

    // A deploy the daemon finished shows in GET /v1/apps as soon as its result is out.
    let apps: Vec<Value> = d.get("/v1/apps").send().await.expect("GET").json().await.expect("JSON");
    let mine = apps.iter().find(|s| s["app"] == app.as_str()).expect("the app is listed");
    assert_eq!(mine["deployment"], result["deployment"], "{mine}");
    assert_eq!(mine["live"], true);

    // A change made outside the daemon (the CLI) shows within MAX_AGE (5 s).
    let out = command(d.work.path(), "22580-22599", &["undeploy", app.as_str()]).output().await.expect("CLI");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    tokio::time::sleep(Duration::from_millis(5100)).await;
    let apps: Vec<Value> = d.get("/v1/apps").send().await.expect("GET").json().await.expect("JSON");
    assert!(apps.iter().all(|s| s["app"] != app.as_str()), "still listed 5 s after the CLI undeployed it: {apps:?}");
}

/// A Unix socket that forwards to Docker's, until it is stopped: then
/// every connection through it is cut and new ones are refused.
struct DockerProxy {
    path: std::path::PathBuf,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl DockerProxy {
    fn start() -> DockerProxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("binding the proxy socket");
        let task = tokio::spawn(async move {
            // Dropped with the accept loop: every forwarded connection is cut.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut docker) = tokio::net::UnixStream::connect("/var/run/docker.sock").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut docker).await;
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        DockerProxy { path, task, _dir: dir }
    }

    fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    fn stop(&self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[tokio::test]
async fn health_is_503_when_docker_or_caddy_is_unreachable() {
    let caddy = otturnaut_tests::caddy_proc::CaddyProc::start(Value::Null).await;
    let proxy = DockerProxy::start();
    let env = [
        ("OTTURNAUT_CADDY_ADMIN", caddy.admin_url()),
        ("OTTURNAUT_LISTEN", format!("127.0.0.1:{}", free_port())),
        ("DOCKER_HOST", proxy.host()),
    ];
    let d = Daemon::start_with("api-health", 1, 22620, &env).await;
    let r = d.get("/v1/apps").send().await.expect("GET /v1/apps");
    assert_eq!(r.status(), 200);

    proxy.stop();
    let r = health_until(&d, 503, Duration::from_secs(20)).await;
    let health: Value = r.json().await.expect("JSON");
    assert_eq!(health["status"], "unavailable", "{health}");
    assert_eq!(health["caddy"], "ok", "{health}");
    assert!(health["docker"].as_str().is_some_and(|m| m.starts_with("unreachable")), "{health}");
    // The apps are read anew once the snapshot is older than 5 s: 503 too.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let r = d.get("/v1/apps").send().await.expect("GET /v1/apps");
        if r.status() == 503 {
            let e: Value = r.json().await.expect("JSON");
            assert!(e["error"].as_str().is_some_and(|m| m.contains("Docker")), "{e}");
            break;
        }
        assert!(Instant::now() < until, "GET /v1/apps still answered {} with Docker gone", r.status());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    drop(caddy);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let r = health_until(&d, 503, Duration::from_secs(5)).await;
        let health: Value = r.json().await.expect("JSON");
        if health["caddy"] != "ok" {
            assert_eq!(health["status"], "unavailable", "{health}");
            assert!(health["docker"].as_str().is_some_and(|m| m.starts_with("unreachable")), "{health}");
            break;
        }
        assert!(Instant::now() < until, "Caddy still ok after it was killed: {health}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let metrics = d.get("/metrics").send().await;
    // Health has just failed: the gauges say so.
    let metrics = metrics.expect("metrics").text().await.expect("text");
    for service in ["docker", "caddy"] {
        assert!(metrics.contains(&format!("otturnaut_service_up{{service=\"{service}\"}} 0")), "{metrics}");
    }
}

/// Takes the shutdown grace (60 s) in full: a deploy stuck in its health
/// check is rolled back only once it is over.
#[tokio::test]
async fn sigterm_rolls_back_a_deploy_still_running_after_the_60s_grace_then_exits_0() {
    let mut d = Daemon::start("api-grace", 1, 22600).await;
    let app = d.apps[0].clone();
    let repo = serving_repo("kept");
    d.deploy(0, &d.deploy_body(0, &repo, json!({}))).await;
    let before = d.snapshot(0).await;
    commit(&repo, &Behaviour::NeverListen);
    let mut stuck = d
        .post(&format!("/v1/apps/{app}/deployments"))
        .json(&d.deploy_body(0, &repo, json!({"health_timeout": "5m"})))
        .send()
        .await
        .expect("POST");
    let seen = read_until(&mut stuck, "\"step\":\"health_check\"").await;

    let term = Instant::now();
    let pid = d.child.id().expect("pid").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    // It stops accepting at once, while the deploy's stream goes on.
    let addr = d.base.trim_start_matches("http://").to_owned();
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        assert!(term.elapsed() < Duration::from_secs(10), "still accepting connections 10 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(d.child.try_wait().expect("try_wait").is_none(), "exited before its running deploy ended");

    let result = read_rest(&mut stuck, seen, Duration::from_secs(150)).await.pop().expect("result");
    let waited = term.elapsed();
    assert!(waited >= Duration::from_secs(60), "rolled back after {waited:?}, before the 60 s grace was over");
    assert_eq!(result["result"], "failed", "{result}");
    assert_eq!(result["interrupted"], "the agent shutting down", "{result}");
    assert_eq!(result["rolled_back"], true, "{result}");
    let status = tokio::time::timeout(Duration::from_secs(30), d.child.wait()).await.expect("exits").expect("status");
    assert_eq!(status.code(), Some(0));
    assert_eq!(served(&app).await, (200, "kept\n".to_owned()));
    assert_eq!(d.snapshot(0).await, before, "nothing of the rolled-back deploy is left");
}

/// Removes a test's volume and network even when it fails (after the
/// containers, which the daemon's cleanup drops first).
struct VolumeAndNetwork(String, String);

impl Drop for VolumeAndNetwork {
    fn drop(&mut self) {
        let _ = docker_cli(&["volume", "rm", "-f", &self.0]);
        let _ = docker_cli(&["network", "rm", &self.1]);
    }
}

#[tokio::test]
async fn a_json_deploy_with_a_volume_limits_and_a_network_gets_them() {
    let d = Daemon::start("api-runtime", 1, 22600).await;
    let app = d.apps[0].clone();
    let (volume, network) = (format!("{app}-data"), format!("{app}-net"));
    let _left = VolumeAndNetwork(volume.clone(), network.clone());
    let repo = serving_repo("v1");
    let body = d.deploy_body(
        0,
        &repo,
        json!({
            "volumes": [format!("{volume}:/data")],
            "memory": "64m",
            "cpus": 0.5,
            "pids_limit": 100,
            "networks": [network],
            "stop_timeout": "7s",
            "log_opts": ["max-file=2"],
        }),
    );
    let events = d.deploy(0, &body).await;
    let result = events.last().expect("a result line");
    assert_eq!(result["result"], "deployed", "{events:?}");
    assert_eq!(served(&app).await, (200, "v1\n".to_owned()));

    // On the container, as Docker sees it.
    let (_, id) = docker_cli(&["ps", "-q", "--filter", &format!("label=otturnaut.app={app}")]);
    assert_eq!(id.lines().count(), 1, "one live container: {id}");
    let (ok, inspect) = docker_cli(&["inspect", id.trim()]);
    assert!(ok, "docker inspect {id}");
    let c: Value = serde_json::from_str::<Value>(&inspect).expect("inspect JSON")[0].clone();
    let host = &c["HostConfig"];
    assert_eq!(host["Memory"], 64 << 20, "{host}");
    assert_eq!(host["NanoCpus"], 500_000_000_i64);
    assert_eq!(host["PidsLimit"], 100);
    assert_eq!(host["LogConfig"]["Config"]["max-file"], "2");
    assert_eq!(c["Config"]["StopTimeout"], 7, "an operator's docker stop honours --stop-timeout");
    let mounts = c["Mounts"].as_array().expect("mounts");
    assert!(
        mounts.iter().any(|m| m["Type"] == "volume" && m["Name"] == volume.as_str() && m["Destination"] == "/data")
    );
    assert!(c["NetworkSettings"]["Networks"][&network].is_object(), "{}", c["NetworkSettings"]["Networks"]);
    assert!(docker_cli(&["volume", "inspect", &volume]).0 && docker_cli(&["network", "inspect", &network]).0);

    // And in the API's view of the app.
    let (code, status) = d.status(0).await;
    assert_eq!(code, 200);
    let runtime = &status["runtime"];
    assert_eq!(runtime["volumes"], json!([format!("{volume}:/data")]), "{status}");
    assert_eq!(runtime["memory"], "64m");
    assert_eq!(runtime["cpus"], "0.5");
    assert_eq!(runtime["networks"], json!([network]));

    // Undeploy keeps the volume (its data), as the CLI's does without --volumes.
    let r = d.http.delete(d.url(&format!("/v1/apps/{app}"))).bearer_auth(TOKEN).send().await.expect("DELETE");
    assert_eq!(r.status(), 200);
    assert!(docker_cli(&["volume", "inspect", &volume]).0, "the volume outlives the app");
}
