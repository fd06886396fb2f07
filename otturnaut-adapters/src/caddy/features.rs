//! What the running Caddy supports beyond 2.6.2, the oldest version we
//! support, and the route settings that use it.
//!
//! Caddy's admin API reports no version, so features are probed: `POST
//! /adapt` turns a Caddyfile into JSON without loading it (no reload), and
//! fails on a subdirective the running Caddy does not know.

use std::time::Duration;

use otturnaut_core::Result;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::admin::Admin;

/// Features of the running Caddy that change the routes we write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// `reverse_proxy` takes `stream_close_delay` (Caddy 2.7+). Without it,
    /// every reload closes every proxied WebSocket and other upgraded stream
    /// of the previous config at once.
    pub stream_close_delay: bool,
    /// The global `{file.PATH}` placeholder (Caddy 2.8+, caddyserver/caddy#5463),
    /// which `reverse_proxy` evaluates in an upstream's `dial` on every request
    /// and retry: a route can then switch upstreams without a reload (see
    /// `files`).
    pub file_placeholder: bool,
}

/// A Caddyfile only Caddy 2.7+ adapts (2.6 answers 400 "unrecognized
/// subdirective stream_close_delay").
const STREAM_CLOSE_DELAY_PROBE: &str =
    "http://:1 {\n\treverse_proxy 127.0.0.1:1 {\n\t\tstream_close_delay 1s\n\t}\n}\n";

/// A Caddyfile only Caddy 2.8+ adapts: `log_append` arrived in 2.8.0, the
/// release that added `{file.*}` to Caddy's core replacer (not a module, so no
/// build lacks it). The placeholder itself cannot be probed without a reload:
/// nothing evaluates it before a request.
const FILE_PLACEHOLDER_PROBE: &str = "http://:1 {\n\tlog_append probe 1\n}\n";

impl Features {
    /// Probes the Caddy behind `admin`. A Caddy that cannot adapt Caddyfiles
    /// at all (a custom build without the adapter) is taken for 2.6: the
    /// routes then carry nothing it could reject.
    pub(crate) async fn detect(admin: &Admin) -> Result<Features> {
        let op = "finding out which Caddy features are available";
        let stream_close_delay = adapts(admin, op, STREAM_CLOSE_DELAY_PROBE).await?;
        let file_placeholder = stream_close_delay && adapts(admin, op, FILE_PLACEHOLDER_PROBE).await?;
        tracing::debug!(stream_close_delay, file_placeholder, "Caddy features");
        Ok(Features { stream_close_delay, file_placeholder })
    }
}

/// Whether Caddy adapts `caddyfile` (200) or refuses it (400).
async fn adapts(admin: &Admin, op: &str, caddyfile: &str) -> Result<bool> {
    let reply = admin.adapt_caddyfile(op, caddyfile).await?;
    match reply.status {
        StatusCode::OK => Ok(true),
        StatusCode::BAD_REQUEST => Ok(false),
        _ => Err(reply.failure(op)),
    }
}

/// How a request that fails to reach the app is retried: a dial that fails
/// (connection refused while a container's port is being set up or torn
/// down) is tried again every 100 ms for up to 1 s, at most 3 times, instead
/// of answering 502 at once. Caddy retries dial failures for every method
/// (nothing was sent), other failures only for idempotent requests.
fn load_balancing() -> Value {
    json!({ "retries": 3, "try_duration": "1s", "try_interval": "100ms" })
}

/// Adds what this Caddy supports to the live (first) `reverse_proxy` handler
/// of a route built by `json::route`.
///
/// `stream_close_delay`: a reload (every deploy of any app) unloads the
/// previous config, and with it every stream it proxies; with a delay they
/// stay open that long, then Caddy closes them with a WebSocket close frame
/// (1001, going away), so clients reconnect cleanly. Keep it below the drain
/// timeout: an upgraded connection counts as a request in flight to its
/// upstream, so the drain waits for it.
pub(crate) fn apply(route: &mut Value, features: Features, stream_close_delay: Duration) {
    let Some(live) = route.get_mut("handle").and_then(|h| h.get_mut(0)) else {
        return;
    };
    live["load_balancing"] = load_balancing();
    if features.stream_close_delay && !stream_close_delay.is_zero() {
        live["stream_close_delay"] = json!(super::go_duration(stream_close_delay));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> Value {
        json!({ "handle": [{ "handler": "reverse_proxy" }, { "handler": "reverse_proxy" }] })
    }

    #[test]
    fn only_the_live_handler_gets_the_settings() {
        let mut r = route();
        apply(&mut r, Features { stream_close_delay: true, file_placeholder: true }, Duration::from_secs(10));
        assert_eq!(r["handle"][0]["stream_close_delay"], json!("10s"));
        assert_eq!(r["handle"][0]["load_balancing"]["try_duration"], json!("1s"));
        assert!(r["handle"][1].get("stream_close_delay").is_none());
        assert!(r["handle"][1].get("load_balancing").is_none());
    }

    #[test]
    fn caddy_2_6_gets_no_stream_close_delay() {
        let mut r = route();
        apply(&mut r, Features::default(), Duration::from_secs(10));
        assert!(r["handle"][0].get("stream_close_delay").is_none(), "2.6.2 rejects the field");
        assert!(r["handle"][0].get("load_balancing").is_some(), "retries exist since 2.6.0");
    }
}
