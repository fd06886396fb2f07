//! Route switch latency: the adapter's `set_route` (read the app's route with
//! its ETag through `/id/`, then a PATCH under `If-Match`) against a raw PATCH
//! of the same route object, with other apps' routes present.

use std::time::{Duration, Instant};

use anyhow::Result;
use otturnaut_adapters::caddy::{Caddy, CaddyConfig, route_id};
use otturnaut_core::traits::Router as _;
use otturnaut_core::{HostPort, RouteTarget};
use serde_json::Value;

use super::app::{app_id, domain};
use super::caddy::PrivateCaddy;

#[derive(Debug, Clone)]
pub struct Row {
    pub others: usize,
    pub adapter: Vec<Duration>,
    pub raw_patch: Vec<Duration>,
    /// A raw `GET /id/{id}` of the route: the read the adapter adds.
    pub raw_get: Vec<Duration>,
    /// A raw GET of the whole route list: what an ETag guard over the list
    /// (the adapter's first design) has to read.
    pub raw_get_list: Vec<Duration>,
    /// The adapter's protocol by hand: `GET /id/{id}` for the ETag, then the
    /// PATCH with `If-Match`.
    pub raw_conditional: Vec<Duration>,
    /// Raw PATCHes with no route carrying an explicit upstream transport:
    /// what every reload would cost without the adapter's idle timeout.
    pub raw_patch_plain: Vec<Duration>,
}

const ROUTES: &str = "/config/apps/http/servers/otturnaut/routes";

pub async fn run(others: usize, iterations: u32) -> Result<Row> {
    let caddy = PrivateCaddy::start(std::path::Path::new("caddy")).await?;
    let adapter = Caddy::new(CaddyConfig {
        admin_url: caddy.admin_url.clone(),
        listen: vec![caddy.listen.to_string()],
        automatic_https: false,
        ..CaddyConfig::default()
    })?;
    adapter.ensure_server().await?;
    // Other apps' routes in the shape they keep once redeployed: live and draining.
    let mut fillers: Vec<Value> = Vec::with_capacity(others);
    for i in 0..others {
        let app = app_id(&format!("filler-{i}"));
        let live = 40000 + (i % 10000) as u16;
        fillers.push(
            adapter.route_json(&route_id(&app), &[domain(&app)], port(live), Some(port(live + 10000)), &[]).await?,
        );
    }
    caddy.call(reqwest::Method::PATCH, ROUTES, Some(&Value::Array(fillers.clone()))).await?;

    let app = app_id("switch");
    let host = domain(&app);
    let (a, b) = (port(31001), port(31002));
    let target = |p: HostPort| RouteTarget { domains: vec![host.clone()], port: p };
    adapter.set_route(&app, &target(a)).await?;
    // Warm-up, and the route takes the shape it keeps: [live, draining].
    adapter.set_route(&app, &target(b)).await?;
    adapter.set_route(&app, &target(a)).await?;

    let index = others;
    let id = route_id(&app);
    // What the adapter writes when switching from b to a: the same object.
    let back_to_a = adapter.route_json(&id, std::slice::from_ref(&host), a, Some(b), &[]).await?;
    let client = crate::caddy_proc::client();
    let to_b = adapter.route_json(&id, std::slice::from_ref(&host), b, Some(a), &[]).await?;
    let mut row = Row {
        others,
        adapter: Vec::new(),
        raw_patch: Vec::new(),
        raw_get: Vec::new(),
        raw_get_list: Vec::new(),
        raw_conditional: Vec::new(),
        raw_patch_plain: Vec::new(),
    };
    let raw_patch = async |route: &Value| -> Result<Duration> {
        let t = Instant::now();
        let resp = client.patch(format!("{}{ROUTES}/{index}", caddy.admin_url)).json(route).send().await?;
        let status = resp.status();
        let _ = resp.bytes().await?;
        anyhow::ensure!(status.is_success(), "raw PATCH answered {status}");
        Ok(t.elapsed())
    };
    for i in 0..iterations {
        // Each goes first half of the time, so neither always follows the
        // same kind of write. Either way the route ends on `a`.
        if i % 2 == 0 {
            let t = Instant::now();
            adapter.set_route(&app, &target(b)).await?;
            row.adapter.push(t.elapsed());
            row.raw_patch.push(raw_patch(&back_to_a).await?);
        } else {
            row.raw_patch.push(raw_patch(&to_b).await?);
            let t = Instant::now();
            adapter.set_route(&app, &target(a)).await?;
            row.adapter.push(t.elapsed());
        }

        let t = Instant::now();
        let route = client.get(format!("{}/id/{id}", caddy.admin_url)).send().await?.bytes().await?;
        row.raw_get.push(t.elapsed());
        anyhow::ensure!(!route.is_empty(), "empty route");

        let t = Instant::now();
        let list = client.get(format!("{}{ROUTES}", caddy.admin_url)).send().await?.bytes().await?;
        row.raw_get_list.push(t.elapsed());
        anyhow::ensure!(!list.is_empty(), "empty route list");

        // The same switch as the adapter's, by hand, and back.
        let t = Instant::now();
        conditional_patch(&client, &caddy.admin_url, &id, index, &to_b).await?;
        row.raw_conditional.push(t.elapsed());
        conditional_patch(&client, &caddy.admin_url, &id, index, &back_to_a).await?;
    }
    // The raw PATCH wrote exactly what the adapter writes.
    let now: Value = serde_json::from_str(&caddy.call(reqwest::Method::GET, &format!("/id/{id}"), None).await?)?;
    adapter.set_route(&app, &target(b)).await?;
    let adapters: Value = serde_json::from_str(&caddy.call(reqwest::Method::GET, &format!("/id/{id}"), None).await?)?;
    anyhow::ensure!(now == back_to_a, "after the raw PATCH the route is {now}, not {back_to_a}");
    anyhow::ensure!(adapters == to_b, "the adapter wrote {adapters}, the raw PATCHes would write {to_b}");

    // What the explicit upstream transport costs each reload: the same raw
    // PATCHes with no route carrying one.
    let mut plain: Vec<Value> = fillers;
    plain.push(to_b.clone());
    plain.iter_mut().for_each(without_transport);
    caddy.call(reqwest::Method::PATCH, ROUTES, Some(&Value::Array(plain))).await?;
    let (mut plain_a, mut plain_b) = (back_to_a, to_b);
    without_transport(&mut plain_a);
    without_transport(&mut plain_b);
    for i in 0..iterations {
        let body = if i % 2 == 0 { &plain_a } else { &plain_b };
        let t = Instant::now();
        let resp = client.patch(format!("{}{ROUTES}/{index}", caddy.admin_url)).json(body).send().await?;
        let status = resp.status();
        let _ = resp.bytes().await?;
        row.raw_patch_plain.push(t.elapsed());
        anyhow::ensure!(status.is_success(), "raw PATCH answered {status}");
    }
    Ok(row)
}

fn without_transport(route: &mut Value) {
    for handler in route["handle"].as_array_mut().into_iter().flatten() {
        if let Some(h) = handler.as_object_mut() {
            h.remove("transport");
        }
    }
}

/// `GET /id/{id}` (its ETag, naming the route's position, is a trailer in
/// Caddy 2.6), then PATCH route `index` under `If-Match`.
async fn conditional_patch(client: &reqwest::Client, admin: &str, id: &str, index: usize, route: &Value) -> Result<()> {
    use http_body_util::BodyExt as _;
    let resp = client.get(format!("{admin}/id/{id}")).send().await?;
    let header = resp.headers().get("etag").cloned();
    let body = reqwest::Body::from(resp).collect().await?;
    let etag = header
        .or_else(|| body.trailers().and_then(|t| t.get("etag")).cloned())
        .and_then(|v| v.to_str().ok().map(str::to_owned))
        .ok_or_else(|| anyhow::anyhow!("Caddy sent no ETag for /id/{id}"))?;
    let _: Value = serde_json::from_slice(&body.to_bytes())?;
    let resp = client.patch(format!("{admin}{ROUTES}/{index}")).header("If-Match", etag).json(route).send().await?;
    let status = resp.status();
    let _ = resp.bytes().await?;
    anyhow::ensure!(status.is_success(), "conditional PATCH answered {status}");
    Ok(())
}

fn port(p: u16) -> HostPort {
    HostPort::try_from(p).unwrap_or_else(|e| panic!("port {p}: {e}"))
}
