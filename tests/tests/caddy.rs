//! The Caddy adapter against real Caddy: `cargo xtask test` runs this file on
//! both supported versions, Debian's 2.6.2 and current 2.11.7 (see
//! `the_caddy_under_test_is_the_one_asked_for`).
//!
//! Bootstrap tests start a private `caddy run` each, so they can begin from a
//! config of their choosing and compare all of it afterwards. Route tests use
//! the shared instance on 2019 and touch only their own, unique apps.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use otturnaut_adapters::caddy::{Caddy, CaddyConfig, route_id};
use otturnaut_core::traits::Router;
use otturnaut_core::{AppId, Domain, Error, HostPort, RouteTarget, Service};
use otturnaut_tests::caddy_proc::{
    CaddyProc, Upstream, admin_call, admin_get, client, free_port, get_via, shared_caddy, shared_listen, test_caddy,
};
use otturnaut_tests::services::{CADDY_VERSION_VAR, caddy_admin, caddy_bin, require_caddy, require_docker, unique_app};
use otturnaut_tests::slow_admin::SlowAdmin;
use serde_json::{Value, json};

fn port(p: u16) -> HostPort {
    HostPort::try_from(p).expect("nonzero port")
}

fn domain_of(app: &AppId) -> Domain {
    format!("{app}.test").parse().expect("valid test domain")
}

fn target(app: &AppId, p: u16) -> RouteTarget {
    RouteTarget { domains: vec![domain_of(app)], port: port(p) }
}

/// Removes an app's route from the shared Caddy even when the test fails.
struct RouteGuard {
    caddy: Caddy,
    app: AppId,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        let (caddy, app) = (self.caddy.clone(), self.app.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime for cleanup");
            rt.block_on(caddy.remove_route(&app))
        })
        .join();
    }
}

async fn shared() -> Caddy {
    require_caddy().await;
    let caddy = shared_caddy();
    caddy.ensure_server().await.expect("bootstrapping our server on the shared Caddy");
    caddy
}

/// Our routes with `id` in `server`'s route list, read straight from Caddy.
fn count_routes(routes: &Value, id: &str) -> usize {
    routes.as_array().map(|l| l.iter().filter(|r| r["@id"] == id).count()).unwrap_or(0)
}

/// `config` without what `ensure_server` adds: our server, and the grace
/// period when `grace_added`.
fn without_ours(mut config: Value, grace_added: bool) -> Value {
    let http = &mut config["apps"]["http"];
    if let Some(servers) = http.get_mut("servers").and_then(Value::as_object_mut) {
        servers.remove("otturnaut");
    }
    if grace_added && let Some(h) = http.as_object_mut() {
        h.remove("grace_period");
    }
    config
}

/// `GET /` through Caddy with `host`, retrying a connection Caddy dropped:
/// other tests reload the shared Caddy at any moment, and Caddy 2.6 can reset
/// a connection queued on a listener it is replacing (see
/// `no_request_fails_while_routes_switch`, which checks that part).
async fn ask(listen: &str, host: &str) -> (u16, String) {
    let mut last = None;
    for _ in 0..3 {
        match get_via(listen, host).await {
            Ok(answer) => return answer,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("GET / with Host {host} via {listen} kept failing: {last:?}");
}

async fn wait_for(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

// --- which Caddy, and what it costs --------------------------------------

/// `(major, minor, patch)` of a `caddy version` line (`v2.11.7 h1:…`, `2.6.2`).
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split_whitespace().next()?.trim_start_matches('v').split('.');
    let mut next = || parts.next()?.parse().ok();
    Some((next()?, next()?, next()?))
}

/// The version of the Caddy under test (private instances; `cargo xtask
/// test` runs the shared one at the same version).
fn caddy_version() -> (u32, u32, u32) {
    let bin = caddy_bin();
    let out = std::process::Command::new(&bin)
        .arg("version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{} version` ({e}): is Caddy installed?", bin.display()));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_version(&text).unwrap_or_else(|| panic!("`{} version` printed {text:?}", bin.display()))
}

/// Caddy 2.11.7 (Go 1.26) closes connections without a whole request at a
/// reload; 2.6.2 (Go 1.19) serves them (see
/// `a_reload_and_connections_without_a_whole_request_yet`).
fn reload_closes_new_connections() -> bool {
    caddy_version() >= (2, 11, 0)
}

/// The Caddy the tests start is the one `cargo xtask test` asked for (it
/// runs this file once per supported version), and the adapter's feature
/// probe agrees with that version, on private instances and on the shared one.
#[tokio::test]
async fn the_caddy_under_test_is_the_one_asked_for() {
    let bin = caddy_bin();
    let version = caddy_version();
    let text = format!("{}.{}.{}", version.0, version.1, version.2);
    assert!(version >= (2, 6, 2), "Caddy {text} is older than the oldest supported, 2.6.2");
    if let Ok(want) = std::env::var(CADDY_VERSION_VAR) {
        assert_eq!(Some(version), parse_version(&want), "{CADDY_VERSION_VAR}={want}, but {} is {text}", bin.display());
    }
    let caddy_proc = CaddyProc::start(Value::Null).await;
    let features = test_caddy(&caddy_proc.admin_url(), "127.0.0.1:1").features().await.expect("probing features");
    assert_eq!(features.stream_close_delay, version >= (2, 7, 0), "features of Caddy {text}: {features:?}");
    assert_eq!(features.file_placeholder, version >= (2, 8, 0), "features of Caddy {text}: {features:?}");
    let shared = shared().await.features().await.expect("probing the shared Caddy");
    assert_eq!(shared, features, "the shared Caddy is another version than {}", bin.display());
}

/// A redeploy changes Caddy's config (each change is a reload of the whole
/// config) once on Caddy 2.6 and 2.7, and never on 2.8+, where the switch is
/// the rename of the app's upstream file: everything else the adapter does on
/// a redeploy reads.
#[tokio::test]
async fn a_redeploy_changes_caddy_config_once_or_never() {
    let caddy_proc = CaddyProc::start(Value::Null).await;
    let counter = SlowAdmin::start(&caddy_proc.admin_url(), "NONE", Duration::ZERO).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let caddy = test_caddy(&counter.url, &listen);
    let per_redeploy = if caddy.features().await.expect("features").file_placeholder { 0 } else { 1 };
    assert_eq!(per_redeploy == 0, caddy_version() >= (2, 8, 0));
    let app = unique_app("writes");
    let host = domain_of(&app);
    let (v1, v2) = (Upstream::start("v1", Duration::ZERO).await, Upstream::start("v2", Duration::ZERO).await);
    caddy.ensure_server().await.expect("ensure_server");
    caddy.set_route(&app, &target(&app, v1.port)).await.expect("first deploy");
    let first = counter.writes();
    assert!(first >= 1, "the first deploy wrote nothing");
    assert_eq!(ask(&listen, host.as_str()).await, (200, "v1".to_owned()));

    // What a redeploy does with Caddy, in the CLI's order: setup check, switch,
    // the commit's read-back, the drain's count.
    caddy.ensure_server().await.expect("ensure_server");
    caddy.set_route(&app, &target(&app, v2.port)).await.expect("switch");
    assert_eq!(caddy.route(&app).await.expect("route").map(|t| t.port), Some(port(v2.port)));
    caddy.in_flight(port(v1.port)).await.expect("in_flight");
    assert_eq!(counter.writes() - first, per_redeploy, "config changes in one redeploy");
    assert_eq!(ask(&listen, host.as_str()).await, (200, "v2".to_owned()), "the switch took effect");
    assert_eq!(caddy.list_routes().await.expect("list_routes"), vec![(app.clone(), target(&app, v2.port))]);

    // Nothing to change: no reload at all.
    caddy.ensure_server().await.expect("ensure_server");
    caddy.set_route(&app, &target(&app, v2.port)).await.expect("same target");
    assert_eq!(counter.writes() - first, per_redeploy, "an unchanged route was written again");
    // Undoing the switch points the route back, just as cheaply.
    caddy.set_route(&app, &target(&app, v1.port)).await.expect("undo the switch");
    assert_eq!(counter.writes() - first, 2 * per_redeploy);
    assert_eq!(ask(&listen, host.as_str()).await, (200, "v1".to_owned()));
    caddy.remove_route(&app).await.expect("remove_route");
    assert_eq!(caddy.route(&app).await.expect("route"), None);
}

/// A proxied WebSocket (any upgraded stream) and a reload of Caddy's config
/// (another app's deploy): where Caddy has `stream_close_delay` (2.7+) the
/// adapter sets it and the stream survives the reload; Caddy 2.6.2 closes it
/// at once, which is why clients of 2.6 must reconnect on every deploy.
#[tokio::test]
async fn upgraded_streams_survive_a_reload_where_caddy_can_keep_them() {
    let caddy_proc = CaddyProc::start(Value::Null).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let caddy = test_caddy(&caddy_proc.admin_url(), &listen);
    caddy.ensure_server().await.expect("ensure_server");
    let keeps = caddy.features().await.expect("features").stream_close_delay;
    let (app, other) = (unique_app("ws"), unique_app("ws-other"));
    let echo = Upstream::upgrade_echo().await;
    caddy.set_route(&app, &target(&app, echo.port)).await.expect("route");

    let mut ws = open_websocket(&listen, &app).await;
    assert_eq!(echoed(&mut ws, b"before").await.as_deref(), Some(&b"before"[..]));

    caddy.set_route(&other, &target(&other, 10009)).await.expect("reload: another app's route");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = echoed(&mut ws, b"after!").await;
    if keeps {
        assert_eq!(after.as_deref(), Some(&b"after!"[..]), "the stream did not survive the reload");
    } else {
        assert_ne!(after.as_deref(), Some(&b"after!"[..]), "Caddy 2.6 kept the stream: update the docs");
    }
}

/// A WebSocket opened on a release that is then switched away from ends
/// with a close frame (1001) on every version, not with the dropped
/// connection of a stopped app: on 2.6 and 2.7 the switch's reload sends it;
/// on 2.8+ the switch reloads nothing and the stream stays on the old
/// release until the drain asks Caddy to close streams (`close_streams`),
/// which it does after `stream_close_delay`, while the app is still served.
#[tokio::test]
async fn a_stream_left_on_a_retiring_release_gets_a_close_frame() {
    let caddy_proc = CaddyProc::start(Value::Null).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let delay = Duration::from_secs(1);
    let config =
        CaddyConfig { stream_close_delay: delay, ..test_caddy(&caddy_proc.admin_url(), &listen).config().clone() };
    let caddy = Caddy::new(config).expect("adapter");
    caddy.ensure_server().await.expect("ensure_server");
    let app = unique_app("ws-retire");
    let (old, new) = (Upstream::upgrade_echo().await, Upstream::start("v2", Duration::ZERO).await);
    caddy.set_route(&app, &target(&app, old.port)).await.expect("route");
    let mut ws = open_websocket(&listen, &app).await;
    assert_eq!(echoed(&mut ws, b"before").await.as_deref(), Some(&b"before"[..]));

    caddy.set_route(&app, &target(&app, new.port)).await.expect("switch");
    let asks = caddy.stream_close_delay().await.expect("stream_close_delay");
    assert_eq!(asks, (caddy_version() >= (2, 8, 0)).then_some(delay), "on 2.8+ only, the drain must ask");
    if asks.is_some() {
        assert_eq!(echoed(&mut ws, b"after!").await.as_deref(), Some(&b"after!"[..]), "the switch closed the stream");
        caddy.close_streams().await.expect("close_streams");
    }
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), ws.read_to_end(&mut rest)).await;
    assert!(read.as_ref().is_ok_and(Result::is_ok), "the stream was not closed, or was reset: {read:?}");
    // An unmasked close frame with status 1001 (going away), then the end.
    assert!(rest.ends_with(&[0x88, 0x02, 0x03, 0xE9]), "no close frame 1001 at the end: {rest:02x?}");
    assert_eq!(ask(&listen, domain_of(&app).as_str()).await, (200, "v2".to_owned()));
}

/// Opens a WebSocket to `app` through Caddy at `listen`: the handshake, up to
/// its `101` answer.
async fn open_websocket(listen: &str, app: &AppId) -> tokio::net::TcpStream {
    let mut ws = tokio::net::TcpStream::connect(listen).await.expect("connect to Caddy");
    let handshake = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        domain_of(app)
    );
    ws.write_all(handshake.as_bytes()).await.expect("send handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ws.read_exact(&mut byte).await.expect("read the handshake answer");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    ws
}

/// Sends `msg` on an open stream to the echo upstream and reads it back;
/// `None` if that fails or takes over 5 s.
async fn echoed(ws: &mut tokio::net::TcpStream, msg: &[u8]) -> Option<Vec<u8>> {
    ws.write_all(msg).await.ok()?;
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), ws.read_exact(&mut got)).await.ok()?.ok()?;
    Some(got)
}

/// The root cause of the requests lost under heavy load on Caddy 2.11.7: a
/// reload shuts the previous config's servers down, and 2.11.7 (built with Go
/// 1.26) closes, without an answer, every connection that has not delivered a
/// complete request head yet (connected, nothing or part of a head sent),
/// where 2.6.2 (Go 1.19) serves it. At ~2,000 new connections/s a few are
/// always in that state at the instant of a reload. Nothing in the config
/// changes it; the adapter therefore keeps reloads to one per redeploy (see
/// `a_redeploy_changes_caddy_config_once_or_never`); on 2.8+ a switch
/// makes none (`no_request_fails_while_routes_switch`).
#[tokio::test]
async fn a_reload_and_connections_without_a_whole_request_yet() {
    let caddy_proc = CaddyProc::start(Value::Null).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let caddy = test_caddy(&caddy_proc.admin_url(), &listen);
    caddy.ensure_server().await.expect("ensure_server");
    let version = caddy_version();
    let closes_them = reload_closes_new_connections();
    let (app, other) = (unique_app("statenew"), unique_app("statenew-other"));
    let up = Upstream::start("ok", Duration::ZERO).await;
    caddy.set_route(&app, &target(&app, up.port)).await.expect("route");
    let head = format!("GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", domain_of(&app));
    let mut silent = tokio::net::TcpStream::connect(&listen).await.expect("connect");
    let mut partial = tokio::net::TcpStream::connect(&listen).await.expect("connect");
    partial.write_all(head.as_bytes()).await.expect("send part of a head");
    tokio::time::sleep(Duration::from_millis(200)).await;

    caddy.set_route(&other, &target(&other, 10009)).await.expect("reload: another app's route");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = silent.write_all(format!("{head}\r\n").as_bytes()).await;
    let _ = partial.write_all(b"\r\n").await;
    let mut answers = Vec::new();
    for mut stream in [silent, partial] {
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        answers.push(String::from_utf8_lossy(&answer).into_owned());
    }
    for answer in &answers {
        if closes_them {
            assert!(answer.is_empty(), "Caddy {version:?} answered a connection its reload used to close: {answer}");
        } else {
            assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
        }
    }
}

// --- bootstrap, on private instances -------------------------------------

#[tokio::test]
async fn bootstrap_from_a_config_without_apps() {
    // Caddy 2.6.2 cannot start with a null config on a private admin port (the
    // admin address would fall back to localhost:2019), so "empty" here is the
    // admin section alone. The shared instance starts from a true null.
    let caddy_proc = CaddyProc::start(Value::Null).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let caddy = test_caddy(&caddy_proc.admin_url(), &listen);

    caddy.ensure_server().await.expect("ensure_server");

    let config = caddy_proc.config("/config/").await;
    assert_eq!(
        config["apps"],
        json!({"http": {
            "grace_period": "10s",
            "servers": {"otturnaut": {
                "listen": [listen],
                "routes": [],
                "automatic_https": {"disable": true},
            }},
        }}),
        "whole config: {config}"
    );
}

#[tokio::test]
async fn bootstrap_from_partial_configs() {
    let caddy_proc = CaddyProc::start(Value::Null).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let caddy = test_caddy(&caddy_proc.admin_url(), &listen);
    for start in [
        json!({"apps": {}}),
        json!({"apps": {"http": {}}}),
        json!({"apps": {"http": {"servers": {}}}}),
        json!({"apps": {"http": {"servers": null}}}),
        json!({"apps": {"http": {"servers": {"otturnaut": {
            "listen": [format!("127.0.0.1:{}", free_port())],
            "automatic_https": {"disable": true},
        }}}}}),
    ] {
        caddy_proc.load(start.clone()).await;
        caddy.ensure_server().await.unwrap_or_else(|e| panic!("ensure_server from {start}: {e}"));
        let server = caddy_proc.config("/config/apps/http/servers/otturnaut").await;
        assert_eq!(server["listen"], json!([listen]), "from {start}: {server}");
        assert_eq!(server["routes"], json!([]), "from {start}: {server}");
        assert_eq!(server["automatic_https"]["disable"], json!(true), "from {start}");
    }
}

#[tokio::test]
async fn bootstrap_over_a_null_server_left_by_a_failed_change() {
    // Caddy 2.6.2 panics loading a null server (the request's connection is
    // dropped) but keeps the null in its raw config: a state ensure_server
    // can meet in the wild.
    let caddy_proc = CaddyProc::start(json!({"apps": {"http": {"servers": {}}}})).await;
    let _ = reqwest::Client::new()
        .put(format!("{}/config/apps/http/servers/otturnaut", caddy_proc.admin_url()))
        .json(&Value::Null)
        .send()
        .await;
    assert_eq!(caddy_proc.config("/config/apps/http/servers").await, json!({"otturnaut": null}));

    let listen = format!("127.0.0.1:{}", free_port());
    let caddy = test_caddy(&caddy_proc.admin_url(), &listen);
    caddy.ensure_server().await.expect("ensure_server");
    let server = caddy_proc.config("/config/apps/http/servers/otturnaut").await;
    assert_eq!(server["listen"], json!([listen]), "{server}");
    let app = unique_app("null");
    let upstream = Upstream::start("up", Duration::ZERO).await;
    caddy.set_route(&app, &target(&app, upstream.port)).await.expect("set_route");
    let got = ask(&listen, domain_of(&app).as_str()).await;
    assert_eq!(got, (200, "up".to_owned()), "the server really runs");
}

#[tokio::test]
async fn bootstrap_leaves_foreign_config_byte_for_byte() {
    let other_port = free_port();
    let foreign = json!({"apps": {
        "http": {
            "http_port": 8080,
            "servers": {"other": {
                "listen": [format!("127.0.0.1:{other_port}")],
                "automatic_https": {"disable": true},
                "routes": [{
                    "@id": "foreign-route",
                    "handle": [{"handler": "static_response", "body": "other server"}],
                }],
            }},
        },
        "tls": {"automation": {"policies": [{"@id": "foreign-policy", "subjects": ["x.test"]}]}},
    }});
    let caddy_proc = CaddyProc::start(foreign).await;
    let before = caddy_proc.config("/config/").await;
    let other_before = caddy_proc.raw("/config/apps/http/servers/other").await;
    let tls_before = caddy_proc.raw("/config/apps/tls").await;
    let id_before = caddy_proc.raw("/id/foreign-route").await;

    let listen = format!("127.0.0.1:{}", free_port());
    let caddy = test_caddy(&caddy_proc.admin_url(), &listen);
    caddy.ensure_server().await.expect("ensure_server");
    let app = unique_app("foreign");
    caddy.set_route(&app, &target(&app, free_port())).await.expect("set_route");

    assert_eq!(caddy_proc.raw("/config/apps/http/servers/other").await, other_before);
    assert_eq!(caddy_proc.raw("/config/apps/tls").await, tls_before);
    assert_eq!(caddy_proc.raw("/id/foreign-route").await, id_before);
    let after = caddy_proc.config("/config/").await;
    assert_eq!(without_ours(after.clone(), true), before, "after: {after}");
    assert_eq!(after["apps"]["http"]["grace_period"], json!("10s"));

    caddy.remove_route(&app).await.expect("remove_route");
    assert_eq!(caddy_proc.raw("/config/apps/http/servers/other").await, other_before);
    let (status, body) = ask(&format!("127.0.0.1:{other_port}"), "anything").await;
    assert_eq!((status, body.as_str()), (200, "other server"));
}

#[tokio::test]
async fn bootstrap_keeps_someone_elses_grace_period() {
    let caddy_proc = CaddyProc::start(json!({"apps": {"http": {"grace_period": "3s"}}})).await;
    let caddy = test_caddy(&caddy_proc.admin_url(), &format!("127.0.0.1:{}", free_port()));
    caddy.ensure_server().await.expect("ensure_server");
    assert_eq!(caddy_proc.config("/config/apps/http/grace_period").await, json!("3s"));
}

#[tokio::test]
async fn bootstrap_is_idempotent() {
    let caddy_proc = CaddyProc::start(json!({"apps": {"http": {"servers": {}}}})).await;
    let caddy = test_caddy(&caddy_proc.admin_url(), &format!("127.0.0.1:{}", free_port()));
    caddy.ensure_server().await.expect("first ensure_server");
    let app = unique_app("idem");
    caddy.set_route(&app, &target(&app, free_port())).await.expect("set_route");
    let before = caddy_proc.raw("/config/").await;
    caddy.ensure_server().await.expect("second ensure_server");
    caddy.ensure_server().await.expect("third ensure_server");
    assert_eq!(caddy_proc.raw("/config/").await, before);
}

#[tokio::test]
async fn concurrent_bootstraps_agree() {
    let caddy_proc = CaddyProc::start(Value::Null).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let callers: Vec<Caddy> = (0..6).map(|_| test_caddy(&caddy_proc.admin_url(), &listen)).collect();
    let results = futures_util::future::join_all(callers.iter().map(|c| c.ensure_server())).await;
    for r in results {
        r.expect("every concurrent ensure_server succeeds");
    }
    let servers = caddy_proc.config("/config/apps/http/servers").await;
    assert_eq!(servers, json!({"otturnaut": {"listen": [listen], "routes": [], "automatic_https": {"disable": true}}}));
}

#[tokio::test]
async fn ensure_server_converges_our_settings_and_keeps_routes() {
    let caddy_proc = CaddyProc::start(Value::Null).await;
    // Automatic HTTPS on, but no domains yet: nothing for Caddy to fetch certificates for.
    let first = Caddy::new(otturnaut_adapters::caddy::CaddyConfig {
        automatic_https: true,
        ..test_caddy(&caddy_proc.admin_url(), &format!("127.0.0.1:{}", free_port())).config().clone()
    })
    .expect("adapter");
    first.ensure_server().await.expect("ensure_server");
    let server = caddy_proc.config("/config/apps/http/servers/otturnaut").await;
    assert_eq!(server.get("automatic_https"), None, "{server}");
    let hand_made = json!({"@id": "hand-made", "handle": [{"handler": "static_response"}]});
    caddy_proc.post("/config/apps/http/servers/otturnaut/routes", &hand_made).await;

    let listen = format!("127.0.0.1:{}", free_port());
    let second = test_caddy(&caddy_proc.admin_url(), &listen);
    second.ensure_server().await.expect("ensure_server with new settings");
    let server = caddy_proc.config("/config/apps/http/servers/otturnaut").await;
    assert_eq!(server["listen"], json!([listen]));
    assert_eq!(server["automatic_https"], json!({"disable": true}));
    assert_eq!(server["routes"], json!([hand_made]), "routes are left alone");
}

#[tokio::test]
async fn set_route_recreates_a_missing_server() {
    let caddy_proc = CaddyProc::start(Value::Null).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let caddy = test_caddy(&caddy_proc.admin_url(), &listen);
    let app = unique_app("lost");
    let upstream = Upstream::start("found", Duration::ZERO).await;
    caddy.set_route(&app, &target(&app, upstream.port)).await.expect("set_route without a prior ensure_server");
    let (status, body) = ask(&listen, domain_of(&app).as_str()).await;
    assert_eq!((status, body.as_str()), (200, "found"));
}

#[tokio::test]
async fn caddy_refusal_is_reported_and_rolled_back() {
    let taken = format!("127.0.0.1:{}", free_port());
    let caddy_proc = CaddyProc::start(json!({"apps": {"http": {"servers": {"other": {
        "listen": [taken], "automatic_https": {"disable": true}, "routes": [],
    }}}}}))
    .await;
    let before = caddy_proc.raw("/config/").await;
    let caddy = test_caddy(&caddy_proc.admin_url(), &taken);
    let err = caddy.ensure_server().await.expect_err("two servers cannot share a listener");
    let text = err.to_string();
    assert!(matches!(err, Error::Failed { .. }), "{err:?}");
    assert!(
        text.contains("setting up Otturnaut's server in Caddy")
            && text.contains("Caddy answered")
            && text.contains(&taken),
        "the error names the operation and carries Caddy's message: {text}"
    );
    assert_eq!(caddy_proc.raw("/config/").await, before);
}

#[tokio::test]
async fn a_foreign_object_with_our_id_is_never_touched() {
    let app = unique_app("squat");
    let id = route_id(&app);
    let caddy_proc = CaddyProc::start(json!({"apps": {"http": {"servers": {"other": {
        "listen": [format!("127.0.0.1:{}", free_port())],
        "automatic_https": {"disable": true},
        "routes": [{"@id": id, "handle": [{"handler": "static_response", "body": "theirs"}]}],
    }}}}}))
    .await;
    let caddy = test_caddy(&caddy_proc.admin_url(), &format!("127.0.0.1:{}", free_port()));
    caddy.ensure_server().await.expect("ensure_server");
    let other_before = caddy_proc.raw("/config/apps/http/servers/other").await;

    let err = caddy.set_route(&app, &target(&app, free_port())).await.expect_err("the @id is taken elsewhere");
    assert!(err.to_string().contains("/config/apps/http/servers/other/routes/0"), "names where the @id is: {err}");
    let err = caddy.route(&app).await.expect_err("route is not ours");
    assert!(err.to_string().contains("outside Otturnaut's server"), "{err}");
    caddy.remove_route(&app).await.expect("nothing of ours to remove");
    assert_eq!(caddy.list_routes().await.expect("list_routes"), vec![]);
    assert_eq!(caddy_proc.raw("/config/apps/http/servers/other").await, other_before);
}

#[tokio::test]
async fn list_routes_lists_only_our_apps_routes() {
    let caddy_proc = CaddyProc::start(Value::Null).await;
    let caddy = test_caddy(&caddy_proc.admin_url(), &format!("127.0.0.1:{}", free_port()));
    caddy.ensure_server().await.expect("ensure_server");
    let (a, b) = (unique_app("list"), unique_app("list"));
    let (ta, tb) = (target(&a, 10001), target(&b, 10002));
    caddy.set_route(&a, &ta).await.expect("set_route a");
    caddy.set_route(&b, &tb).await.expect("set_route b");
    // Someone else's route inside our server, and one with our prefix but no valid app.
    for foreign in [
        json!({"@id": "hand-made", "handle": [{"handler": "static_response"}]}),
        json!({"@id": "otturnaut-app-Not_An_App", "handle": []}),
    ] {
        caddy_proc.post("/config/apps/http/servers/otturnaut/routes", &foreign).await;
    }

    let mut listed = caddy.list_routes().await.expect("list_routes");
    listed.sort_by(|x, y| x.0.cmp(&y.0));
    let mut expected = vec![(a.clone(), ta), (b, tb)];
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(listed, expected);

    // Removing ours leaves the hand-made routes in place.
    caddy.remove_route(&a).await.expect("remove_route");
    let routes = caddy_proc.config("/config/apps/http/servers/otturnaut/routes").await;
    assert_eq!(count_routes(&routes, &route_id(&a)), 0, "{routes}");
    assert_eq!(count_routes(&routes, "hand-made"), 1, "{routes}");
    assert_eq!(routes.as_array().map(Vec::len), Some(3), "{routes}");
}

#[tokio::test]
async fn a_duplicate_of_our_route_stops_setup_with_both_positions() {
    let caddy_proc = CaddyProc::start(Value::Null).await;
    let caddy = test_caddy(&caddy_proc.admin_url(), &format!("127.0.0.1:{}", free_port()));
    caddy.ensure_server().await.expect("ensure_server");
    let (app, other) = (unique_app("dup"), unique_app("dup"));
    caddy.set_route(&app, &target(&app, 10001)).await.expect("set_route");
    caddy.set_route(&other, &target(&other, 10002)).await.expect("set_route");
    // Someone appends a copy of the app's route by hand: Caddy 2.6 takes it;
    // 2.11 refuses it, so there the duplicate cannot happen.
    let copy = caddy_proc.config(&format!("/id/{}", route_id(&app))).await;
    let path = "/config/apps/http/servers/otturnaut/routes";
    let (status, text) = admin_call(&caddy_proc.admin_url(), reqwest::Method::POST, path, Some(&copy)).await;
    if caddy_version() >= (2, 11, 0) {
        assert!(status == 400 && text.contains("duplicate ID"), "Caddy took a duplicate @id: {status} {text}");
        return;
    }
    assert!(status.is_success(), "POST {path} answered {status}: {text}");
    let before = caddy_proc.raw("/config/").await;

    // A different listen address too: the refusal comes before any change.
    let moved = test_caddy(&caddy_proc.admin_url(), &format!("127.0.0.1:{}", free_port()));
    let text = moved.ensure_server().await.expect_err("ensure_server sees the duplicate").to_string();
    assert!(
        text.contains(&format!("two routes with @id {}", route_id(&app)))
            && text.contains("otturnaut/routes/0")
            && text.contains("otturnaut/routes/2"),
        "names the @id and both positions: {text}"
    );
    assert_eq!(caddy_proc.raw("/config/").await, before, "nothing was changed");
    // Reading still works (status, logs), and removing the app removes both copies.
    assert_eq!(caddy.list_routes().await.expect("list_routes").len(), 3);
    caddy.remove_route(&app).await.expect("remove_route");
    let routes = caddy_proc.config("/config/apps/http/servers/otturnaut/routes").await;
    assert_eq!(count_routes(&routes, &route_id(&app)), 0, "{routes}");
    caddy.ensure_server().await.expect("no duplicate left");
}

// --- routes, on the shared instance ---------------------------------------

#[tokio::test]
async fn route_round_trip() {
    let caddy = shared().await;
    let app = unique_app("trip");
    let _guard = RouteGuard { caddy: caddy.clone(), app: app.clone() };
    assert_eq!(caddy.route(&app).await.expect("route before"), None);

    let t = RouteTarget {
        domains: vec![domain_of(&app), format!("www.{app}.test").parse().expect("domain")],
        port: port(10001),
    };
    caddy.set_route(&app, &t).await.expect("set_route");
    assert_eq!(caddy.route(&app).await.expect("route after set"), Some(t.clone()));
    let listed = caddy.list_routes().await.expect("list_routes");
    assert!(listed.contains(&(app.clone(), t)), "{listed:?}");

    caddy.remove_route(&app).await.expect("remove_route");
    assert_eq!(caddy.route(&app).await.expect("route after remove"), None);
    caddy.remove_route(&app).await.expect("removing again is fine");
    let listed = caddy.list_routes().await.expect("list_routes");
    assert!(listed.iter().all(|(a, _)| *a != app), "{listed:?}");
}

#[tokio::test]
async fn upsert_keeps_one_route() {
    let caddy = shared().await;
    let app = unique_app("upsert");
    let _guard = RouteGuard { caddy: caddy.clone(), app: app.clone() };
    caddy.set_route(&app, &target(&app, 10001)).await.expect("first set_route");
    let second = RouteTarget { domains: vec![format!("new.{app}.test").parse().expect("domain")], port: port(10002) };
    caddy.set_route(&app, &second).await.expect("second set_route");
    caddy.set_route(&app, &second).await.expect("same route again");

    let routes = admin_get(&caddy_admin(), "/config/apps/http/servers/otturnaut/routes").await;
    assert_eq!(count_routes(&routes, &route_id(&app)), 1);
    assert_eq!(caddy.route(&app).await.expect("route"), Some(second));
}

#[tokio::test]
async fn route_serves_and_switches_upstreams() {
    let caddy = shared().await;
    let app = unique_app("serve");
    let _guard = RouteGuard { caddy: caddy.clone(), app: app.clone() };
    let host = domain_of(&app);
    let v1 = Upstream::start("v1", Duration::ZERO).await;
    let v2 = Upstream::start("v2", Duration::ZERO).await;

    caddy.set_route(&app, &target(&app, v1.port)).await.expect("route to v1");
    let got = ask(&shared_listen(), host.as_str()).await;
    assert_eq!(got, (200, "v1".to_owned()));

    caddy.set_route(&app, &target(&app, v2.port)).await.expect("switch to v2");
    let got = ask(&shared_listen(), host.as_str()).await;
    assert_eq!(got, (200, "v2".to_owned()));
    assert_eq!((v1.hits(), v2.hits()), (1, 1), "each upstream served once");

    caddy.remove_route(&app).await.expect("remove_route");
    let (_, body) = ask(&shared_listen(), host.as_str()).await;
    assert_ne!(body, "v2", "a removed route no longer serves");
    assert_eq!(v2.hits(), 1);
}

/// A Caddy in a container, sharing the host's network but not its files,
/// removed when dropped.
struct ContainerCaddy {
    name: String,
    image: String,
    admin_url: String,
}

impl ContainerCaddy {
    /// The Caddy under test (with the host's libraries, for Debian's
    /// dynamically linked build) in an image of nothing but its config.
    async fn start(tag: &str) -> ContainerCaddy {
        let bin = which(&caddy_bin());
        let dir = tempfile::tempdir().expect("tempdir");
        let admin_port = free_port();
        let config = json!({"admin": {"listen": format!("127.0.0.1:{admin_port}"), "config": {"persist": false}}});
        std::fs::write(dir.path().join("caddy.json"), config.to_string()).expect("config");
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY caddy.json /caddy.json\n")
            .expect("Dockerfile");
        let image = format!("otturnaut-test-caddy:{tag}");
        docker(&["build", "-q", "-t", &image, &dir.path().display().to_string()]);
        let name = format!("otturnaut-test-caddy-{tag}");
        let _ = std::process::Command::new("docker").args(["rm", "-f", &name]).output();
        let mount = format!("{}:/caddy:ro", bin.display());
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "host",
            "-e",
            "HOME=/tmp",
            "--tmpfs",
            "/tmp",
            "-v",
            &mount,
            "-v",
            "/usr/lib:/usr/lib:ro",
            "-v",
            "/usr/lib:/lib:ro",
            "-v",
            "/usr/lib64:/lib64:ro",
            &image,
            "/caddy",
            "run",
            "--config",
            "/caddy.json",
        ]);
        let caddy = ContainerCaddy { name, image, admin_url: format!("http://127.0.0.1:{admin_port}") };
        let admin = caddy.admin_url.clone();
        wait_for("the Caddy in a container to answer", async || {
            client().get(format!("{admin}/config/")).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await;
        caddy
    }
}

impl Drop for ContainerCaddy {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker").args(["rm", "-f", &self.name]).output();
        let _ = std::process::Command::new("docker").args(["rmi", &self.image]).output();
    }
}

fn which(bin: &std::path::Path) -> std::path::PathBuf {
    if bin.is_absolute() {
        return bin.to_owned();
    }
    let out = std::process::Command::new("sh").arg("-c").arg(format!("command -v {}", bin.display())).output();
    let path = out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    assert!(!path.is_empty(), "{} is not on PATH", bin.display());
    path.into()
}

fn docker(args: &[&str]) {
    let out = std::process::Command::new("docker").args(args).output().expect("running the docker CLI");
    assert!(out.status.success(), "docker {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A Caddy on this host reads the agent's upstream files (on 2.8+); one in a
/// container, even on the host's network, does not: the adapter finds that
/// out and switches its routes by config changes instead, so they keep
/// serving rather than answering 502.
#[tokio::test]
async fn a_caddy_in_a_container_gets_config_switches_not_upstream_files() {
    require_docker().await;
    let host = shared().await;
    let on_host = host.features().await.expect("features").file_placeholder;
    assert_eq!(host.switches_through_files().await.expect("check"), on_host, "the host's Caddy reads our files");

    let boxed = ContainerCaddy::start(&format!("{}", std::process::id())).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let caddy = test_caddy(&boxed.admin_url, &listen);
    caddy.ensure_server().await.expect("our server on the Caddy in a container");
    assert!(!caddy.switches_through_files().await.expect("check"), "it cannot read this host's /run");

    let app = unique_app("boxed");
    let v1 = Upstream::start("v1", Duration::ZERO).await;
    let v2 = Upstream::start("v2", Duration::ZERO).await;
    caddy.set_route(&app, &target(&app, v1.port)).await.expect("route to v1");
    assert_eq!(ask(&listen, domain_of(&app).as_str()).await, (200, "v1".to_owned()));
    caddy.set_route(&app, &target(&app, v2.port)).await.expect("switch to v2");
    assert_eq!(ask(&listen, domain_of(&app).as_str()).await, (200, "v2".to_owned()), "switched, no 502");
    caddy.remove_route(&app).await.expect("remove_route");
}

#[tokio::test]
async fn in_flight_counts_a_slow_request() {
    let caddy = shared().await;
    let app = unique_app("inflight");
    let _guard = RouteGuard { caddy: caddy.clone(), app: app.clone() };
    let slow = Upstream::start("slow", Duration::from_millis(1500)).await;
    caddy.set_route(&app, &target(&app, slow.port)).await.expect("set_route");
    assert_eq!(caddy.in_flight(port(slow.port)).await.expect("in_flight"), 0);

    let host = domain_of(&app);
    let request = tokio::spawn(async move { ask(&shared_listen(), host.as_str()).await });
    wait_for("the slow request to be counted", async || {
        caddy.in_flight(port(slow.port)).await.expect("in_flight") == 1
    })
    .await;
    let got = request.await.expect("request task");
    assert_eq!(got, (200, "slow".to_owned()));
    wait_for("the count to drop", async || caddy.in_flight(port(slow.port)).await.expect("in_flight") == 0).await;
}

#[tokio::test]
async fn in_flight_still_counts_the_old_upstream_after_a_switch() {
    let caddy = shared().await;
    let app = unique_app("drain");
    let _guard = RouteGuard { caddy: caddy.clone(), app: app.clone() };
    let old = Upstream::start("old", Duration::from_millis(2000)).await;
    let new = Upstream::start("new", Duration::ZERO).await;
    caddy.set_route(&app, &target(&app, old.port)).await.expect("route to old");

    let host = domain_of(&app);
    let request = {
        let host = host.clone();
        tokio::spawn(async move { ask(&shared_listen(), host.as_str()).await })
    };
    wait_for("the slow request to be counted", async || caddy.in_flight(port(old.port)).await.expect("in_flight") == 1)
        .await;

    caddy.set_route(&app, &target(&app, new.port)).await.expect("switch to new");
    assert_eq!(
        caddy.in_flight(port(old.port)).await.expect("in_flight"),
        1,
        "the request the old generation is still proxying must stay counted"
    );
    assert_eq!(ask(&shared_listen(), host.as_str()).await, (200, "new".to_owned()));
    assert_eq!(request.await.expect("task"), (200, "old".to_owned()));
    wait_for("the old upstream to drain", async || caddy.in_flight(port(old.port)).await.expect("in_flight") == 0)
        .await;
    assert_eq!(old.hits(), 1, "the old upstream got no new traffic");
    assert_eq!(caddy.route(&app).await.expect("route"), Some(target(&app, new.port)));
}

/// The drain as `retire` runs it (poll `in_flight` of the old port until 0)
/// after a switch ends only once a slow request to the old release has been
/// answered: on Caddy 2.6 Caddy's count keeps the old upstream (its draining
/// handler), on 2.8+ (one `{file.*}` upstream for every release) the adapter
/// counts connections to the old port. Against an app that closes after each
/// response and one that keeps connections alive (Caddy's idle connection to
/// it counts until its 2 s idle timeout).
#[tokio::test]
async fn the_drain_waits_for_a_slow_request_to_the_old_release() {
    let caddy = shared().await;
    for keep_alive in [false, true] {
        let app = unique_app("drainslow");
        let _guard = RouteGuard { caddy: caddy.clone(), app: app.clone() };
        let delay = Duration::from_secs(3);
        let old =
            if keep_alive { Upstream::keep_alive("old", delay).await } else { Upstream::start("old", delay).await };
        let new = Upstream::start("new", Duration::ZERO).await;
        caddy.set_route(&app, &target(&app, old.port)).await.expect("route to old");
        let host = domain_of(&app);
        let mut request = {
            let host = host.clone();
            tokio::spawn(async move { ask(&shared_listen(), host.as_str()).await })
        };
        wait_for("the slow request to reach the old release", async || old.hits() == 1).await;
        caddy.set_route(&app, &target(&app, new.port)).await.expect("switch to new");
        assert_eq!(ask(&shared_listen(), host.as_str()).await, (200, "new".to_owned()));

        let deadline = Instant::now() + Duration::from_secs(15);
        while caddy.in_flight(port(old.port)).await.expect("in_flight") > 0 {
            assert!(Instant::now() < deadline, "the old release never drained (keep-alive: {keep_alive})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Had the drain ended before the old release answered, the request
        // would still be waiting out most of its 3 s.
        let answered = tokio::time::timeout(Duration::from_secs(1), &mut request).await;
        assert!(
            matches!(&answered, Ok(Ok((200, body))) if body == "old"),
            "the drain ended before the slow request was answered (keep-alive: {keep_alive}): {answered:?}"
        );
        assert_eq!(old.hits(), 1, "the old release got no new traffic");
    }
}

#[tokio::test]
async fn replaced_configs_close_their_upstream_connections_within_seconds() {
    // A private Caddy: another test's reload of the shared one would close
    // the half-sent requests below on 2.11.
    let caddy_proc = CaddyProc::start(Value::Null).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let caddy = test_caddy(&caddy_proc.admin_url(), &listen);
    caddy.ensure_server().await.expect("ensure_server");
    let app = unique_app("idle");
    let host = domain_of(&app);
    let old = Upstream::keep_alive("old", Duration::ZERO).await;
    let new = Upstream::keep_alive("new", Duration::ZERO).await;
    caddy.set_route(&app, &target(&app, old.port)).await.expect("route to old");
    // That write was a reload: on 2.11 a connection reaching the previous
    // config's listener before it closes is closed unanswered. Let it finish.
    assert_eq!(ask(&listen, host.as_str()).await.0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old_hits = old.hits();
    // Requests whose head is still arriving when the config changes: the old
    // config serves them, through its transport, after it was cleaned up.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(&listen).await.expect("connect to Caddy");
        stream.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n").as_bytes()).await.expect("send");
        clients.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    caddy.set_route(&app, &target(&app, new.port)).await.expect("switch to new");
    tokio::time::sleep(Duration::from_millis(500)).await;
    if caddy.features().await.expect("features").file_placeholder {
        // No reload (the switch renamed the upstream file): no old config, and
        // the requests still arriving go to the new upstream.
        for stream in &mut clients {
            stream.write_all(b"Connection: close\r\n\r\n").await.expect("finish the request");
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("new"), "{answer}");
        }
        assert_eq!(old.hits(), old_hits, "a request sent after the switch reached the old upstream");
        return;
    }
    if reload_closes_new_connections() {
        // The reload closed them unanswered, so the old config never proxies
        // after its cleanup: this way to the pile-up is closed on 2.11.
        for stream in &mut clients {
            let _ = stream.write_all(b"\r\n").await;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
            assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
        }
        assert_eq!(old.hits(), old_hits, "the old config proxied after the reload");
        return;
    }
    for stream in &mut clients {
        stream.write_all(b"\r\n").await.expect("finish the request");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("Caddy answers and closes within 10 s")
            .expect("read the answer");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("old"), "{answer}");
    }
    assert!(old.open_connections() >= 1, "the old config pooled its upstream connection after its cleanup");
    assert_eq!(ask(&listen, host.as_str()).await, (200, "new".to_owned()));
    // Nothing will ever use or close that connection but its idle timeout:
    // 2 min by default, 2 s as the adapter configures it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while old.open_connections() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} connection(s) to the old upstream still open 10 s after the switch",
            old.open_connections()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Switches of some apps racing with other apps' routes being removed and
/// added again, which shifts the indices of every route after them: each
/// switch must land on its own app's route, and every route must survive.
#[tokio::test]
async fn concurrent_switches_and_removals_keep_one_correct_route_per_app() {
    let caddy_proc = CaddyProc::start(Value::Null).await;
    let listen = format!("127.0.0.1:{}", free_port());
    test_caddy(&caddy_proc.admin_url(), &listen).ensure_server().await.expect("ensure_server");
    // Every PATCH (a switch's write) waits 20 ms after its read, so that
    // removals land in between.
    let slow = SlowAdmin::start(&caddy_proc.admin_url(), "PATCH", Duration::from_millis(20)).await;
    let caddy = test_caddy(&slow.url, &listen);
    let churn: Vec<AppId> = (0..8).map(|_| unique_app("churn")).collect();
    let apps: Vec<AppId> = (0..8).map(|_| unique_app("race")).collect();
    // Churning routes first, so that removing one shifts the others.
    for app in churn.iter().chain(&apps) {
        caddy.set_route(app, &target(app, 20000)).await.expect("first route");
    }
    let switches = apps.iter().enumerate().map(|(i, app)| {
        let caddy = caddy.clone();
        async move {
            for k in 1..=8u16 {
                caddy.set_route(app, &target(app, 20000 + 10 * k + i as u16)).await.expect("switch");
            }
        }
    });
    let churning = churn.iter().map(|app| {
        let caddy = caddy.clone();
        async move {
            for _ in 0..4 {
                caddy.remove_route(app).await.expect("remove a churning route");
                caddy.set_route(app, &target(app, 30000)).await.expect("add it again");
            }
        }
    });
    futures_util::future::join(futures_util::future::join_all(switches), futures_util::future::join_all(churning))
        .await;

    let routes = caddy_proc.config("/config/apps/http/servers/otturnaut/routes").await;
    let ids: Vec<&str> = routes.as_array().into_iter().flatten().filter_map(|r| r["@id"].as_str()).collect();
    assert_eq!(ids.len(), apps.len() + churn.len(), "routes in Caddy: {ids:?}");
    for (i, app) in apps.iter().enumerate() {
        assert_eq!(count_routes(&routes, &route_id(app)), 1, "routes in Caddy: {ids:?}");
        assert_eq!(caddy.route(app).await.expect("route"), Some(target(app, 20080 + i as u16)));
    }
    for app in &churn {
        assert_eq!(count_routes(&routes, &route_id(app)), 1, "routes in Caddy: {ids:?}");
        assert_eq!(caddy.route(app).await.expect("route"), Some(target(app, 30000)));
    }
}

#[tokio::test]
async fn empty_domains_are_refused() {
    let caddy = shared().await;
    let app = unique_app("nodomain");
    let err = caddy
        .set_route(&app, &RouteTarget { domains: vec![], port: port(10001) })
        .await
        .expect_err("a route must match some host");
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    assert_eq!(caddy.route(&app).await.expect("route"), None);
}

#[tokio::test]
async fn unreachable_admin_is_unavailable() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let caddy = test_caddy(&url, "127.0.0.1:1");
    let app = unique_app("gone");
    let errors = [
        caddy.ensure_server().await.err(),
        caddy.route(&app).await.err(),
        caddy.set_route(&app, &target(&app, 10001)).await.err(),
        caddy.remove_route(&app).await.err(),
        caddy.in_flight(port(10001)).await.err(),
        caddy.list_routes().await.err(),
    ];
    for err in errors {
        let err = err.expect("nothing listens there");
        match &err {
            Error::Unavailable { service: Service::Caddy, address, .. } => assert_eq!(*address, url),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(err.is_unavailable());
        assert!(err.to_string().contains(&url), "{err}");
    }
}

// --- measurement (run by hand) ---------------------------------------------

/// How long one `set_route` switch takes with few and with ~100 other routes:
/// `cargo test -p otturnaut-tests --test caddy -- --ignored --nocapture measure`
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn measure_switch_time() {
    let caddy_proc = CaddyProc::start(Value::Null).await;
    let caddy = test_caddy(&caddy_proc.admin_url(), &format!("127.0.0.1:{}", free_port()));
    caddy.ensure_server().await.expect("ensure_server");
    let app = unique_app("measure");

    async fn switches(caddy: &Caddy, app: &AppId) -> Vec<Duration> {
        let mut times = Vec::new();
        for i in 0..20u16 {
            let started = Instant::now();
            caddy.set_route(app, &target(app, 10000 + i % 2)).await.expect("switch");
            times.push(started.elapsed());
        }
        times.sort();
        times
    }

    let other = unique_app("other");
    caddy.set_route(&other, &target(&other, 11000)).await.expect("other");
    caddy.set_route(&app, &target(&app, 10001)).await.expect("app");
    let few = switches(&caddy, &app).await;

    let started = Instant::now();
    for i in 0..99u16 {
        let other = unique_app("other");
        caddy.set_route(&other, &target(&other, 11001 + i)).await.expect("other");
    }
    let adding = started.elapsed();
    let many = switches(&caddy, &app).await;
    println!(
        "switch with 1 other route: median {:?}, max {:?}\n\
         adding 99 routes one by one: {adding:?}\n\
         switch with 100 other routes: median {:?}, max {:?}",
        few[few.len() / 2],
        few[few.len() - 1],
        many[many.len() / 2],
        many[many.len() - 1],
    );
}

/// Where the fake cluster of [`a_release_on_several_hosts_dials_one_upstream_file_per_host`] runs
/// its releases: the same hosts for every port, changed by the test.
#[derive(Debug, Default)]
struct Hosts(std::sync::Mutex<Vec<String>>);

impl Hosts {
    fn set(&self, hosts: &[&str]) {
        *self.0.lock().expect("hosts") = hosts.iter().map(|h| (*h).to_owned()).collect();
    }
}

#[async_trait::async_trait]
impl otturnaut_adapters::caddy::UpstreamHosts for Hosts {
    async fn hosts(&self, _port: HostPort) -> otturnaut_core::Result<Vec<String>> {
        Ok(self.0.lock().expect("hosts").clone())
    }
}

/// A release on several hosts (a cluster: one task per host, loopback
/// addresses here) gets one upstream per host. On Caddy 2.8+ each dials its
/// own upstream file (slots `APP`, `APP.1`, ...): a switch to as many hosts
/// changes no config, another number of hosts rewrites the route, and slots
/// no longer dialed are removed. Every answer comes from the release routed to.
#[tokio::test]
async fn a_release_on_several_hosts_dials_one_upstream_file_per_host() {
    let caddy_proc = CaddyProc::start(Value::Null).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let hosts = std::sync::Arc::new(Hosts::default());
    let caddy = test_caddy(&caddy_proc.admin_url(), &listen).with_upstream_hosts(hosts.clone());
    caddy.ensure_server().await.expect("ensure_server");
    let app = unique_app("slots");
    let at = |ip: &str, port: u16| -> std::net::SocketAddr { format!("{ip}:{port}").parse().expect("address") };
    let a1 = Upstream::start("a1", Duration::ZERO).await;
    let pa = a1.port;
    let _a = [Upstream::start_at(at("127.0.0.2", pa), "a2").await, Upstream::start_at(at("127.0.0.3", pa), "a3").await];
    let b1 = Upstream::start("b1", Duration::ZERO).await;
    let pb = b1.port;
    let _b = [Upstream::start_at(at("127.0.0.2", pb), "b2").await, Upstream::start_at(at("127.0.0.3", pb), "b3").await];
    let through_files = caddy.switches_through_files().await.expect("features");
    let dir = std::path::Path::new("/run/otturnaut/upstreams");
    let slots = || {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.retain(|n| n == app.as_str() || n.starts_with(&format!("{app}.")));
        names.sort();
        names
    };
    let served = || async {
        let mut bodies = std::collections::BTreeSet::new();
        for _ in 0..30 {
            let (status, body) = get_via(&listen, domain_of(&app).as_str()).await.expect("request through Caddy");
            assert_eq!(status, 200, "{body}");
            bodies.insert(body);
        }
        bodies.into_iter().collect::<Vec<_>>()
    };
    let raw = || async { admin_get(&caddy_proc.admin_url(), &format!("/id/{}", route_id(&app))).await };

    hosts.set(&["127.0.0.1", "127.0.0.2"]);
    caddy.set_route(&app, &target(&app, pa)).await.expect("route to a on 2 hosts");
    assert_eq!(served().await, ["a1", "a2"]);
    let before = raw().await;
    caddy.set_route(&app, &target(&app, pb)).await.expect("switch to b on 2 hosts");
    assert_eq!(served().await, ["b1", "b2"]);
    assert_eq!(caddy.route(&app).await.expect("route"), Some(target(&app, pb)));
    if through_files {
        assert_eq!(raw().await, before, "a switch to as many hosts changes no config");
        assert_eq!(slots(), [app.to_string(), format!("{app}.1")]);
    }

    hosts.set(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    caddy.set_route(&app, &target(&app, pb)).await.expect("b on 3 hosts");
    assert_eq!(served().await, ["b1", "b2", "b3"]);
    hosts.set(&["127.0.0.3"]);
    caddy.set_route(&app, &target(&app, pa)).await.expect("switch to a on 1 host");
    assert_eq!(served().await, ["a3"]);
    assert_eq!(caddy.route(&app).await.expect("route"), Some(target(&app, pa)));
    if through_files {
        assert_eq!(slots(), [app.to_string()], "the slots no longer dialed are removed");
    }

    caddy.remove_route(&app).await.expect("remove");
    assert!(slots().is_empty(), "no upstream file is left: {:?}", slots());

    // Removing the app after Caddy lost our server removes its files too.
    caddy.set_route(&app, &target(&app, pa)).await.expect("route again");
    caddy_proc.load(json!({})).await;
    caddy.remove_route(&app).await.expect("remove without our server");
    assert!(slots().is_empty(), "no upstream file is left: {:?}", slots());
}

/// New connections made while routes switch (8 clients asking back to back)
/// all get an answer from blue or green. On Caddy 2.8+ a switch renames the
/// app's upstream file and reloads nothing, so not one request may fail. On
/// 2.6 each switch is a reload: Caddy opens a fresh SO_REUSEPORT listener per
/// config and closes the old one, and Linux resets connections still queued
/// on a closed listener unless `net.ipv4.tcp_migrate_req=1` (kernel 5.14+)
/// hands them to the new one. So with that sysctl a single reset at most
/// (see below); without it, rare resets are tolerated, but never a wrong
/// answer or a 502. (A reload on 2.11 closes a few unanswered; see
/// `a_reload_and_connections_without_a_whole_request_yet`.)
#[tokio::test]
async fn no_request_fails_while_routes_switch() {
    let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "1");
    let caddy_proc = CaddyProc::start(Value::Null).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let caddy = test_caddy(&caddy_proc.admin_url(), &listen);
    caddy.ensure_server().await.expect("ensure_server");
    let app = unique_app("switch");
    let blue = Upstream::start("blue", Duration::ZERO).await;
    let green = Upstream::start("green", Duration::ZERO).await;
    caddy.set_route(&app, &target(&app, blue.port)).await.expect("route to blue");

    let through_file = caddy.features().await.expect("features").file_placeholder;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, listen, host) = (stop.clone(), listen.clone(), domain_of(&app));
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    answers.push(get_via(&listen, host.as_str()).await.map_err(|e| e.to_string()));
                }
                answers
            })
        })
        .collect();
    for i in 0..20 {
        let to = if i % 2 == 0 { green.port } else { blue.port };
        caddy.set_route(&app, &target(&app, to)).await.expect("switch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.expect("client task"));
    }
    assert!(answers.len() > 20, "the clients kept asking ({} answers)", answers.len());
    assert!(blue.hits() > 0 && green.hits() > 0, "both served ({} and {})", blue.hits(), green.hits());
    let wrong: Vec<_> = answers
        .iter()
        .filter(|a| matches!(a, Ok((status, body)) if *status != 200 || (body != "blue" && body != "green")))
        .collect();
    assert!(wrong.is_empty(), "wrong answers during switches: {wrong:?}");
    let failed: Vec<_> = answers.iter().filter(|a| a.is_err()).collect();
    if through_file {
        assert!(
            failed.is_empty(),
            "{} of {} connections failed without a reload: {failed:?}",
            failed.len(),
            answers.len()
        );
    } else if reload_closes_new_connections() {
        // Caddy 2.11 closes, unanswered, a connection that reaches the old
        // config just as a reload shuts it down (see
        // `a_reload_and_connections_without_a_whole_request_yet`): at most one
        // per switch for each client, and never anything but that.
        let other: Vec<_> =
            failed.iter().filter(|f| !matches!(f, Err(e) if e.contains("not an HTTP response: \"\""))).collect();
        assert!(other.is_empty(), "failures other than an unanswered close: {other:?}");
        assert!(failed.len() <= 8 * 20, "{} unanswered closes in 20 switches", failed.len());
    } else if migrate {
        // One reset in a whole run was seen once, in CI (2026-11-30, the
        // suite's other Caddys busy beside it), and not again in 60 runs
        // here, idle or with every core busy; its cause is not known. One is
        // tolerated, a second or any other failure is not.
        let other: Vec<_> = failed.iter().filter(|f| !matches!(f, Err(e) if e.contains("reset by peer"))).collect();
        assert!(other.is_empty(), "connections failed, not by a reset, although tcp_migrate_req=1: {other:?}");
        assert!(failed.len() <= 1, "connections reset although tcp_migrate_req=1: {failed:?}");
    } else {
        assert!(
            failed.len() * 20 <= answers.len(),
            "{} of {} connections failed: more than the rare resets expected with \
             tcp_migrate_req=0: {failed:?}",
            failed.len(),
            answers.len()
        );
    }
}

/// What a keep-alive client sees while routes switch (Caddy closes idle
/// keep-alive connections on every reload):
/// `cargo test -p otturnaut-tests --test caddy -- --ignored --nocapture keep_alive`
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn measure_keep_alive_clients_during_switches() {
    let caddy_proc = CaddyProc::start(Value::Null).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let caddy = test_caddy(&caddy_proc.admin_url(), &listen);
    caddy.ensure_server().await.expect("ensure_server");
    let app = unique_app("keepalive");
    let blue = Upstream::start("blue", Duration::ZERO).await;
    let green = Upstream::start("green", Duration::ZERO).await;
    caddy.set_route(&app, &target(&app, blue.port)).await.expect("route to blue");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (stop, url, host) = (stop.clone(), format!("http://{listen}/"), domain_of(&app));
        tokio::spawn(async move {
            let http = reqwest::Client::builder().no_proxy().build().expect("client");
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match http.get(&url).header("Host", host.as_str()).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(format!("{e:?}")),
                }
            }
            (ok, failed)
        })
    };
    for i in 0..50 {
        let to = if i % 2 == 0 { green.port } else { blue.port };
        caddy.set_route(&app, &target(&app, to)).await.expect("switch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = client.await.expect("client task");
    println!("keep-alive client over 50 switches: {ok} ok, {} failed: {failed:?}", failed.len());
}
