//! The [`Router`] port, against Caddy's admin API (written and tested against
//! Caddy 2.6.2).
//!
//! Otturnaut owns one HTTP server in Caddy's config, `apps.http.servers.otturnaut`,
//! and in it one route per app, `@id` = `otturnaut-app-{app}`. Everything else
//! in the config belongs to someone else: every write targets the exact path
//! it changes, and the root is never replaced.
//!
//! Route writes are read-modify-write guarded by Caddy's ETag: read our
//! server's route list (its ETag comes with it), decide, and send the change
//! with `If-Match`, so Caddy refuses it with 412 if the list changed in
//! between; then read again and retry. Simpler schemes are unsafe in 2.6:
//! - `/id/{id}` is resolved to an array index before Caddy takes its config
//!   lock, so a write through `/id/` can land on a neighbour when a concurrent
//!   delete shifts the list;
//! - duplicate `@id`s are accepted (the later one silently wins the index), so
//!   a blind "append if missing" can leave two routes for one app, and the
//!   first, stale one is the one that matches requests.

mod admin;
mod json;

use std::hash::BuildHasher;
use std::time::Duration;

use async_trait::async_trait;
use otturnaut_core::traits::Router;
use otturnaut_core::{AppId, Error, HostPort, Result, RouteTarget};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use self::admin::{Admin, Reply};
use self::json::{HTTP_APP_PATH, ROUTES_PATH, SERVER_PATH};
pub use self::json::{ROUTE_ID_PREFIX, SERVER_NAME, route_id};

/// How often a write is retried when someone else changed the route list
/// between our read and our write.
const MAX_ATTEMPTS: u32 = 30;

#[derive(Clone, Debug)]
pub struct CaddyConfig {
    /// Where Caddy's admin API listens.
    pub admin_url: String,
    /// Addresses our server listens on, in Caddy's network address syntax.
    pub listen: Vec<String>,
    /// Let Caddy obtain certificates for the apps' domains. When off, only
    /// our server opts out (`automatic_https.disable`); others keep theirs.
    pub automatic_https: bool,
    /// Where apps are published: Caddy dials `{upstream_host}:{host_port}`.
    pub upstream_host: String,
    /// Limit for one admin API request.
    pub request_timeout: Duration,
    /// `apps.http.grace_period`, set only if nobody set it yet (see
    /// [`Caddy::ensure_server`]).
    pub grace_period: Duration,
}

impl Default for CaddyConfig {
    fn default() -> Self {
        CaddyConfig {
            admin_url: "http://127.0.0.1:2019".to_owned(),
            listen: vec![":80".to_owned(), ":443".to_owned()],
            automatic_https: true,
            upstream_host: "127.0.0.1".to_owned(),
            request_timeout: Duration::from_secs(10),
            grace_period: Duration::from_secs(10),
        }
    }
}

/// Routes apps' domains to their containers through Caddy.
#[derive(Clone, Debug)]
pub struct Caddy {
    admin: Admin,
    config: CaddyConfig,
}

/// Our server's route list as read, with the ETag that guards a write to it.
struct Routes {
    /// `None` when our server exists but has no `routes` key.
    list: Option<Vec<Value>>,
    etag: Option<String>,
}

impl Routes {
    /// The first route with `id`, and its index.
    fn find(&self, id: &str) -> Option<(usize, &Value)> {
        self.list.as_ref()?.iter().enumerate().find(|(_, r)| json::id_of(r) == Some(id))
    }
}

impl Caddy {
    pub fn new(config: CaddyConfig) -> Result<Self> {
        if config.listen.is_empty() {
            return Err(Error::invalid("Caddy listen addresses", "", "need at least one address"));
        }
        let admin = Admin::new(&config.admin_url, config.request_timeout)?;
        Ok(Caddy { admin, config })
    }

    pub fn config(&self) -> &CaddyConfig {
        &self.config
    }

    /// Creates our server under `apps.http.servers` if it is missing, from any
    /// starting config, and brings its listen addresses and automatic HTTPS
    /// setting in line with [`CaddyConfig`]; its routes are left alone.
    /// Changes nothing when all is already in place.
    ///
    /// Also sets `apps.http.grace_period` if nobody has. Caddy 2.6 has no
    /// per-server grace period: it belongs to the whole HTTP app, so a value
    /// someone else chose is kept. Why set it at all: every config change (each
    /// `set_route`) stops the previous generation of *all* servers. Idle
    /// keep-alive connections are closed at once, active ones may finish their
    /// request. With the default of 0, the grace period is eternal: a connection
    /// that never goes idle (WebSocket, SSE, a CDN's keep-alive pool) keeps old
    /// generations alive without bound, piling up across reloads, and makes
    /// Caddy's own shutdown (`caddy stop`, a service restart) hang forever.
    pub async fn ensure_server(&self) -> Result<()> {
        let op = "setting up Otturnaut's server in Caddy";
        self.ensure_our_server(op).await?;
        self.ensure_grace_period(op).await
    }

    /// Every route in our server with our `@id` prefix, for rebuilding state
    /// and reconciling. Routes whose shape we cannot read are skipped with a
    /// warning rather than failing the whole listing.
    pub async fn list_routes(&self) -> Result<Vec<(AppId, RouteTarget)>> {
        let op = "listing Otturnaut's routes in Caddy";
        let Some(routes) = self.read_routes(op).await? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for route in routes.list.iter().flatten() {
            let Some(id) = json::id_of(route).filter(|id| id.starts_with(ROUTE_ID_PREFIX)) else {
                continue;
            };
            let Some(app) = json::app_of_route_id(id) else {
                tracing::warn!(id, "skipping a Caddy route whose @id names no valid app");
                continue;
            };
            match json::parse_route(route) {
                Ok(target) => out.push((app, target)),
                Err(why) => tracing::warn!(id, %why, "skipping a Caddy route we cannot read"),
            }
        }
        Ok(out)
    }

    async fn ensure_our_server(&self, op: &str) -> Result<()> {
        let wanted = json::server(&self.config.listen, self.config.automatic_https);
        for attempt in 1..=MAX_ATTEMPTS {
            let current = self.admin.get(op, SERVER_PATH).await?;
            let created = if current.status == StatusCode::BAD_REQUEST {
                // A key on the way is missing (null config, no `apps`, no
                // `http`...). PUT creates the missing levels and fails if our
                // key exists, so a concurrent bootstrap is never overwritten.
                self.write(op, Method::PUT, SERVER_PATH, &wanted, None).await?
            } else if !current.is_success() {
                return Err(current.failure(op));
            } else {
                match current.json(op)? {
                    // `servers` exists without our key; unlike PUT, POST also
                    // replaces an explicit null, and If-Match keeps it from
                    // replacing a server someone created meanwhile.
                    Value::Null => self.write(op, Method::POST, SERVER_PATH, &wanted, current.etag.as_deref()).await?,
                    server @ Value::Object(_) => return self.converge_server(op, &server).await,
                    other => {
                        return Err(Error::failed(
                            op,
                            format!("{SERVER_PATH} in Caddy's config is not an object: {other}"),
                        ));
                    }
                }
            };
            if created.is_success() {
                return Ok(());
            }
            if !lost_race(&created) {
                return Err(created.failure(op));
            }
            backoff(op, attempt).await;
        }
        Err(gave_up(op))
    }

    /// Brings an existing server's own settings in line with our config, one
    /// targeted write per setting that differs.
    async fn converge_server(&self, op: &str, server: &Value) -> Result<()> {
        let listen = json!(self.config.listen);
        match server.get("listen") {
            Some(current) if *current == listen => {}
            Some(_) => self.write_ok(op, Method::PATCH, &format!("{SERVER_PATH}/listen"), &listen).await?,
            None => self.write_ok(op, Method::PUT, &format!("{SERVER_PATH}/listen"), &listen).await?,
        }
        let want_disabled = !self.config.automatic_https;
        if json::https_disabled(server) != want_disabled {
            if !want_disabled {
                let reply = self
                    .admin
                    .send(op, Method::DELETE, &format!("{SERVER_PATH}/automatic_https/disable"), None, None)
                    .await?;
                if !reply.is_success() {
                    return Err(reply.failure(op));
                }
            } else if server.get("automatic_https").is_some_and(Value::is_object) {
                let path = format!("{SERVER_PATH}/automatic_https/disable");
                self.write_ok(op, Method::POST, &path, &json!(true)).await?;
            } else {
                let path = format!("{SERVER_PATH}/automatic_https");
                self.write_ok(op, Method::POST, &path, &json!({ "disable": true })).await?;
            }
        }
        if !server.get("routes").is_some_and(Value::is_array) {
            // POST sets a key that is missing or not a list; on a list it would append.
            self.write_ok(op, Method::POST, ROUTES_PATH, &json!([])).await?;
        }
        Ok(())
    }

    async fn ensure_grace_period(&self, op: &str) -> Result<()> {
        let path = format!("{HTTP_APP_PATH}/grace_period");
        let current = self.admin.get(op, &path).await?;
        if current.is_success() && current.json(op)? != Value::Null {
            return Ok(());
        }
        let reply = self.write(op, Method::PUT, &path, &json!(go_duration(self.config.grace_period)), None).await?;
        if reply.is_success() || lost_race(&reply) {
            return Ok(());
        }
        Err(reply.failure(op))
    }

    /// Our route list, or `None` if our server does not exist.
    async fn read_routes(&self, op: &str) -> Result<Option<Routes>> {
        let reply = self.admin.get(op, ROUTES_PATH).await?;
        // Caddy answers 400 ("invalid traversal path") when a key on the way is missing.
        if reply.status == StatusCode::BAD_REQUEST {
            return Ok(None);
        }
        if !reply.is_success() {
            return Err(reply.failure(op));
        }
        let list = match reply.json(op)? {
            Value::Array(list) => Some(list),
            Value::Null => None,
            other => {
                return Err(Error::failed(op, format!("{ROUTES_PATH} in Caddy's config is not a list: {other}")));
            }
        };
        Ok(Some(Routes { list, etag: reply.etag }))
    }

    /// Fails unless `reply` (to `GET /id/{id}`) is an object in our route
    /// list. Caddy names the object's expanded path in the ETag.
    fn check_ours(&self, op: &str, id: &str, reply: &Reply) -> Result<()> {
        let path = reply.etag.as_deref().map(|e| e.trim_matches('"').split(' ').next().unwrap_or_default());
        match path {
            Some(p) if p.starts_with(&format!("{ROUTES_PATH}/")) => Ok(()),
            Some(p) => Err(Error::failed(
                op,
                format!(
                    "the @id {id} belongs to an object outside Otturnaut's server, at {p}; \
                     rename that object's @id"
                ),
            )),
            None => Err(Error::failed(op, format!("Caddy did not say where the object with @id {id} is (no ETag)"))),
        }
    }

    async fn write(&self, op: &str, method: Method, path: &str, body: &Value, if_match: Option<&str>) -> Result<Reply> {
        self.admin.send(op, method, path, Some(body), if_match).await
    }

    async fn write_ok(&self, op: &str, method: Method, path: &str, body: &Value) -> Result<()> {
        let reply = self.write(op, method, path, body, None).await?;
        if reply.is_success() { Ok(()) } else { Err(reply.failure(op)) }
    }

    fn upstream(&self, port: HostPort) -> String {
        json::upstream_addr(&self.config.upstream_host, port)
    }
}

#[async_trait]
impl Router for Caddy {
    async fn routes(&self) -> Result<Vec<(AppId, RouteTarget)>> {
        self.list_routes().await
    }

    async fn route(&self, app: &AppId) -> Result<Option<RouteTarget>> {
        let op = format!("reading the Caddy route of app {app}");
        let id = route_id(app);
        let reply = self.admin.get(&op, &format!("/id/{id}")).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !reply.is_success() {
            return Err(reply.failure(&op));
        }
        self.check_ours(&op, &id, &reply)?;
        let route = reply.json(&op)?;
        json::parse_route(&route)
            .map(Some)
            .map_err(|why| Error::failed(&op, format!("route {id} is not one Otturnaut wrote: {why}: {route}")))
    }

    async fn set_route(&self, app: &AppId, target: &RouteTarget) -> Result<()> {
        let op = format!("routing app {app} through Caddy");
        if target.domains.is_empty() {
            return Err(Error::invalid(
                "route",
                app.as_str(),
                "needs at least one domain: a route without a host matcher would take every request",
            ));
        }
        let id = route_id(app);
        let host = &self.config.upstream_host;
        for attempt in 1..=MAX_ATTEMPTS {
            let Some(routes) = self.read_routes(&op).await? else {
                // Caddy lost our server (restarted without --resume?) or was never set up.
                self.ensure_server().await?;
                continue;
            };
            let etag = routes.etag.as_deref();
            let reply = if let Some((i, old)) = routes.find(&id) {
                let draining = json::draining_after(old, target.port);
                let new = json::route(&id, &target.domains, host, target.port, draining);
                if *old == new {
                    return Ok(());
                }
                let path = format!("{ROUTES_PATH}/{i}");
                self.write(&op, Method::PATCH, &path, &new, etag).await?
            } else {
                let elsewhere = self.admin.get(&op, &format!("/id/{id}")).await?;
                if elsewhere.is_success() {
                    // Ours after all (appended since our read): read again.
                    self.check_ours(&op, &id, &elsewhere)?;
                    backoff(&op, attempt).await;
                    continue;
                }
                let new = json::route(&id, &target.domains, host, target.port, None);
                // POST appends to a list, and sets a missing key to the value as is.
                let body = if routes.list.is_some() { new } else { json!([new]) };
                self.write(&op, Method::POST, ROUTES_PATH, &body, etag).await?
            };
            if reply.is_success() {
                return Ok(());
            }
            if reply.status != StatusCode::PRECONDITION_FAILED {
                return Err(reply.failure(&op));
            }
            backoff(&op, attempt).await;
        }
        Err(gave_up(&op))
    }

    async fn remove_route(&self, app: &AppId) -> Result<()> {
        let op = format!("removing the Caddy route of app {app}");
        let id = route_id(app);
        for attempt in 1..=MAX_ATTEMPTS {
            let Some(routes) = self.read_routes(&op).await? else {
                return Ok(());
            };
            let Some((i, _)) = routes.find(&id) else {
                return Ok(());
            };
            let path = format!("{ROUTES_PATH}/{i}");
            let reply = self.admin.send(&op, Method::DELETE, &path, None, routes.etag.as_deref()).await?;
            // On success, go round once more: a duplicate left by an older
            // writer would otherwise survive.
            if !reply.is_success() {
                if reply.status != StatusCode::PRECONDITION_FAILED {
                    return Err(reply.failure(&op));
                }
                backoff(&op, attempt).await;
            }
        }
        Err(gave_up(&op))
    }

    async fn in_flight(&self, port: HostPort) -> Result<u64> {
        #[derive(Deserialize)]
        struct Upstream {
            address: String,
            num_requests: i64,
        }
        let addr = self.upstream(port);
        let op = format!("counting requests in flight to {addr} in Caddy");
        let reply = self.admin.get(&op, "/reverse_proxy/upstreams").await?;
        if !reply.is_success() {
            return Err(reply.failure(&op));
        }
        let upstreams: Vec<Upstream> = serde_json::from_value(reply.json(&op)?)
            .map_err(|e| Error::failed(&op, format!("unexpected /reverse_proxy/upstreams answer: {e}")))?;
        Ok(upstreams.iter().filter(|u| u.address == addr).map(|u| u64::try_from(u.num_requests).unwrap_or(0)).sum())
    }
}

/// True when a create failed only because someone else got there first.
fn lost_race(reply: &Reply) -> bool {
    reply.status == StatusCode::PRECONDITION_FAILED || reply.message().contains("key already exists")
}

fn gave_up(op: &str) -> Error {
    Error::failed(op, format!("Caddy's config kept changing under us; gave up after {MAX_ATTEMPTS} attempts"))
}

/// Waits a little, with jitter so that racing writers fall out of step.
async fn backoff(op: &str, attempt: u32) {
    let jitter = std::collections::hash_map::RandomState::new().hash_one(attempt) % 20;
    let wait = Duration::from_millis(u64::from(attempt.min(10)) * 5 + jitter);
    tracing::debug!(op, attempt, ?wait, "Caddy config changed concurrently; retrying");
    tokio::time::sleep(wait).await;
}

/// A duration as Go's `time.ParseDuration` reads it (humantime's "1m 30s"
/// has a space Go rejects).
fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_for_go() {
        assert_eq!(go_duration(Duration::from_secs(90)), "90s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn bad_configs_are_refused() {
        let with = |f: fn(&mut CaddyConfig)| {
            let mut c = CaddyConfig::default();
            f(&mut c);
            Caddy::new(c)
        };
        assert!(with(|_| {}).is_ok());
        assert!(with(|c| c.admin_url = "not a url".into()).is_err());
        assert!(with(|c| c.admin_url = "ftp://127.0.0.1:2019".into()).is_err());
        assert!(with(|c| c.listen.clear()).is_err());
    }
}
