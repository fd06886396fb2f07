// Long file: the Router over the admin API is one protocol (read with ETag, whole-list write, retry) best read in one place.
//! The [`Router`] port, against Caddy's admin API (tested against Caddy 2.6.2
//! and 2.11.7).
//!
//! Otturnaut owns one HTTP server in Caddy's config, `apps.http.servers.otturnaut`,
//! and in it one route per app, `@id` = `otturnaut-app-{app}`. Everything else
//! in the config belongs to someone else: every write targets the exact path
//! it changes, and the root is never replaced.
//!
//! Route writes are read-modify-write guarded by Caddy's ETag: read, decide,
//! and send the change with `If-Match`, so Caddy refuses it if what we read
//! changed in between (412, or 500 "index out of bounds" when the list shrank
//! below the position the ETag names); then read again and retry. Simpler
//! schemes are unsafe in 2.6:
//! - `/id/{id}` is resolved to an array index before Caddy takes its config
//!   lock, so a write through `/id/` can land on a neighbour when a concurrent
//!   delete shifts the list;
//! - duplicate `@id`s are accepted (the later one silently wins the index), so
//!   a blind "append if missing" can leave two routes for one app, and the
//!   first, stale one is the one that matches requests.
//!
//! What is read depends on the change. Replacing an app's route with the
//! same domains (every ordinary redeploy) reads only that route, through
//! `/id/`: Caddy's ETag for it names its position (`…/routes/7 <hash>`), so a
//! PATCH of `routes/7` under that ETag lands exactly on the route we read, or
//! is refused if the list shifted. Its cost does not grow with the number of
//! apps (the whole list is ~320 KiB at 1000 apps). Every other change (a new
//! app, new domains, a removal, reconcile restoring many routes at once) is
//! one write of the whole list under the list's ETag, so that it can check
//! what no single route shows (Architecture invariant: both hold after every
//! write this adapter makes):
//! - each domain has one owner: a domain another app's route has is refused
//!   ([`Error::DomainTaken`]), case-insensitively, identical wildcards too;
//! - an exact host always beats a wildcard, whatever the order of the routes:
//!   a route whose `*.` wildcard covers another app's exact host excludes it
//!   with a `not` matcher, recomputed on every whole-list write (and kept
//!   as is by the same-domains PATCH, which changes no domain);
//! - an app never gets two routes.
//!
//! What `/id/` cannot see is a second route with the same `@id` (it resolves
//! to the last one, while the first one serves the domains): a switch would
//! then change a route that serves nothing. We never create one; someone
//! writing into our server by hand could. [`Caddy::ensure_server`] (run
//! before every CLI deploy, and reading the whole server anyway) refuses to
//! go on when it finds one, naming both; read-only commands still work, and
//! `remove_route` removes every copy.
//!
//! On Caddy 2.8+ a route is written once per app and dials the app's upstream
//! file (on a cluster, one file per task); a switch renames a new file over
//! it and changes no config (see `files`: every reload loses requests on
//! Caddy 2.11). A redeploy then makes no config write (on a cluster, none
//! unless the number of tasks changes); on 2.6 and 2.7 it makes one. The
//! drain then also counts connections to the old port, as Caddy's count may
//! not tell releases apart (see `conns`).

mod admin;
mod conns;
mod features;
mod files;
mod json;
mod sight;

use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use otturnaut_core::traits::Router;
use otturnaut_core::{AppId, Domain, Error, HostPort, Result, RouteTarget, domain_conflict};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use self::admin::{Admin, Reply};
pub use self::features::Features;
use self::files::UpstreamFiles;
use self::json::{HTTP_APP_PATH, ROUTES_PATH, SERVER_PATH};
pub use self::json::{ROUTE_ID_PREFIX, SERVER_NAME, route_id};

/// How often a read or write is retried when someone else changed the route
/// list under it.
const MAX_ATTEMPTS: u32 = 30;

/// How to reach Caddy and what our server in it looks like.
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
    /// How long proxied WebSockets and other upgraded streams outlive the
    /// config they were opened under (Caddy 2.7+; see `features::apply`).
    /// Keep it below the drain timeout. Zero: closed at each reload.
    pub stream_close_delay: Duration,
    /// Where the apps' upstream files go on Caddy 2.8+, one per app, readable
    /// by Caddy (see `files`). `None`, or an admin API that is not on this
    /// host: every switch is a config change, as on Caddy 2.6.
    pub upstream_files: Option<PathBuf>,
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
            stream_close_delay: Duration::from_secs(10),
            upstream_files: Some(PathBuf::from("/run/otturnaut/upstreams")),
        }
    }
}

/// Routes apps' domains to their containers through Caddy.
#[derive(Clone, Debug)]
pub struct Caddy {
    admin: Admin,
    config: CaddyConfig,
    /// Probed once per adapter, on the first route write.
    features: Arc<tokio::sync::OnceCell<Features>>,
    /// Where upstream files go, if Caddy can read them here.
    files: Option<UpstreamFiles>,
    /// Whether the Caddy serving the admin API sees `files` (see `sight`),
    /// checked once per adapter, on the first route write.
    sees_files: Arc<tokio::sync::OnceCell<bool>>,
    /// Where releases run when that is not `upstream_host` alone (a cluster).
    hosts: Option<Arc<dyn UpstreamHosts>>,
}

/// Where a release's port is published when it runs on several hosts: the
/// Swarm runtime answers with the nodes its tasks run on, so the route gets
/// one upstream per task.
#[async_trait]
pub trait UpstreamHosts: Send + Sync + fmt::Debug {
    /// The hosts (names or IP addresses) publishing `port`; none if nothing does.
    async fn hosts(&self, port: HostPort) -> Result<Vec<String>>;
}

/// Our server's route list as read, with the ETag that guards a write to it.
struct Routes {
    /// `None` when our server exists but has no `routes` key.
    list: Option<Vec<Value>>,
    etag: Option<String>,
}

/// An app's upstream files on their way to a new release's addresses (see
/// [`Caddy::point_before`]).
struct Switch {
    app: AppId,
    /// The new release's addresses, slot by slot.
    live: Vec<String>,
    /// How many slots the route dialed before the write.
    dialed: usize,
}

/// What `GET /id/{id}` found.
enum Lookup {
    /// Our route, at `routes/{index}`; `etag` guards a write to exactly it.
    Found { index: usize, route: Value, etag: String },
    /// Caddy has no object with the `@id`.
    Missing,
    /// Caddy's index pointed at a neighbour, or past the end of the list:
    /// the list shifted while we read.
    Moved,
}

impl Caddy {
    /// An adapter for the Caddy `config` names; refuses a config without listen
    /// addresses. Nothing is sent to Caddy yet.
    pub fn new(config: CaddyConfig) -> Result<Self> {
        if config.listen.is_empty() {
            return Err(Error::invalid("Caddy listen addresses", "", "need at least one address"));
        }
        let admin = Admin::new(&config.admin_url, config.request_timeout)?;
        let files =
            config.upstream_files.clone().filter(|_| is_loopback_url(&config.admin_url)).map(UpstreamFiles::new);
        Ok(Caddy { admin, config, features: Arc::default(), files, sees_files: Arc::default(), hosts: None })
    }

    /// Routes each release to every host `hosts` names for its port, instead
    /// of `upstream_host`: one upstream per task, each through its own
    /// upstream file where Caddy reads them (see `files`).
    pub fn with_upstream_hosts(mut self, hosts: Arc<dyn UpstreamHosts>) -> Self {
        self.hosts = Some(hosts);
        self
    }

    /// What it was made with.
    pub fn config(&self) -> &CaddyConfig {
        &self.config
    }

    /// What the running Caddy supports beyond 2.6.2, probed through its admin
    /// API on first use (no config change) and remembered.
    pub async fn features(&self) -> Result<Features> {
        self.features.get_or_try_init(|| Features::detect(&self.admin)).await.copied()
    }

    /// An app's route exactly as [`Router::set_route`] writes it: what
    /// `json::route` builds, plus what this Caddy supports. Public so the
    /// bench can time a raw PATCH of the very same object.
    pub async fn route_json(
        &self,
        id: &str,
        domains: &[Domain],
        port: HostPort,
        draining: Option<HostPort>,
        excluded: &[Domain],
    ) -> Result<Value> {
        let live = self.live_dials(id, port).await?;
        self.route_to(id, domains, &live, draining, excluded).await
    }

    /// Where the release on `port` is dialed, one address per task; fails if
    /// nothing runs there (a route must dial something).
    async fn live_dials(&self, id: &str, port: HostPort) -> Result<Vec<String>> {
        let live = self.dials(port).await?;
        if live.is_empty() {
            return Err(Error::failed(
                format!("writing the Caddy route {id}"),
                format!("nothing runs on port {port} to route to"),
            ));
        }
        Ok(live)
    }

    /// [`Caddy::route_json`] for the `live` addresses of the release on `port`.
    async fn route_to(
        &self,
        id: &str,
        domains: &[Domain],
        live: &[String],
        draining: Option<HostPort>,
        excluded: &[Domain],
    ) -> Result<Value> {
        let through = match (self.live_files().await?, json::app_of_route_id(id)) {
            (Some(files), Some(app)) => Some((0..live.len()).map(|slot| files.dial(&app, slot)).collect::<Vec<_>>()),
            _ => None,
        };
        // Through files, the old release needs no draining handler: the
        // drain counts connections (see `conns`).
        let draining = draining.filter(|_| through.is_none());
        let draining = match draining {
            // The old release may be gone already: then there is nothing to drain.
            Some(p) => self.dials(p).await.unwrap_or_default(),
            None => Vec::new(),
        };
        let several = live.len() > 1;
        let mut route = json::route(id, domains, live, &draining, excluded);
        if several {
            json::avoid_failed_upstreams(&mut route);
        }
        if let Some(dials) = through {
            json::set_live_dials(&mut route, &dials);
        }
        features::apply(&mut route, self.features().await?, self.config.stream_close_delay);
        Ok(route)
    }

    /// The upstream files, when switches go through them: configured, and
    /// this Caddy reads `{file.*}` (2.8+).
    async fn live_files(&self) -> Result<Option<&UpstreamFiles>> {
        match &self.files {
            Some(files) if self.features().await?.file_placeholder && self.sees(files).await => Ok(Some(files)),
            _ => Ok(None),
        }
    }

    /// Whether switching an app's upstream renames its upstream file (no
    /// config change): Caddy 2.8+, on this host, reading our files.
    pub async fn switches_through_files(&self) -> Result<bool> {
        Ok(self.live_files().await?.is_some())
    }

    /// Whether the Caddy serving our admin URL reads `files` as we write them.
    async fn sees(&self, files: &UpstreamFiles) -> bool {
        let check = || async {
            let url = reqwest::Url::parse(&self.config.admin_url).ok();
            let host = url.as_ref().and_then(|u| u.host_str()).unwrap_or_default().to_owned();
            let port = url.as_ref().and_then(reqwest::Url::port_or_known_default).unwrap_or(80);
            let (addrs, dir) = (sight::loopback_addrs(&host, port), files.dir().to_owned());
            match tokio::task::spawn_blocking(move || sight::caddy_sees(&addrs, &dir)).await {
                Ok(Ok(pid)) => {
                    tracing::debug!(pid, "Caddy reads the upstream files: switches change no config");
                    true
                }
                Ok(Err(why)) => {
                    tracing::info!(%why, "upstream files not used: every switch is a Caddy config change");
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not check whether Caddy reads the upstream files");
                    false
                }
            }
        };
        *self.sees_files.get_or_init(check).await
    }

    /// How many of the app's upstream files `route` (app's) dials, slots 0
    /// to N-1 in order; `None` if it dials anything else.
    fn file_slots(&self, app: &AppId, route: &Value) -> Option<usize> {
        let files = self.files.as_ref()?;
        let dials = json::upstream_dials(route);
        let ours = !dials.is_empty() && dials.iter().enumerate().all(|(slot, d)| *d == files.dial(app, slot));
        ours.then_some(dials.len())
    }

    /// `route` as Caddy serves it: with the addresses read from the app's
    /// upstream files in place of the placeholders, if it dials them. `None`
    /// if one is missing (Caddy fails that upstream; reconcile writes it again).
    async fn resolve(&self, app: &AppId, route: &Value) -> Result<Option<Value>> {
        let (Some(files), Some(slots)) = (self.files.as_ref(), self.file_slots(app, route)) else {
            return Ok(Some(route.clone()));
        };
        let mut addrs = Vec::with_capacity(slots);
        for slot in 0..slots {
            let Some(addr) = files.read(app, slot).await? else {
                tracing::warn!(%app, slot, "the app's Caddy route dials an upstream file that is missing");
                return Ok(None);
            };
            addrs.push(addr);
        }
        let mut resolved = route.clone();
        json::set_live_dials(&mut resolved, &addrs);
        Ok(Some(resolved))
    }

    /// Points `app`'s upstream files in `slots` at `live` (slot `i` at
    /// `live[i]`), each unless it already does.
    async fn point(
        &self,
        files: &UpstreamFiles,
        app: &AppId,
        live: &[String],
        slots: std::ops::Range<usize>,
    ) -> Result<()> {
        for (slot, addr) in live.iter().enumerate().take(slots.end).skip(slots.start) {
            if files.read(app, slot).await?.as_deref() != Some(addr.as_str()) {
                files.write(app, slot, addr).await?;
            }
        }
        Ok(())
    }

    /// The file switch of `app` to `live` that a route write makes whole. A
    /// slot the current route (`old`) does not dial yet goes live with the
    /// write, so its file must be right before it; one it dials switches when
    /// its file changes, so only once the write went through (`after`).
    async fn point_before(
        &self,
        files: Option<&UpstreamFiles>,
        app: &AppId,
        live: &[String],
        old: Option<&Value>,
    ) -> Result<Switch> {
        let dialed = old.and_then(|r| self.file_slots(app, r)).unwrap_or(0);
        if let Some(files) = files {
            self.point(files, app, live, dialed..live.len()).await?;
        }
        Ok(Switch { app: app.clone(), live: live.to_vec(), dialed })
    }

    /// The rest of a [`Switch`], once the route write went through: the
    /// slots the old route dialed, then slots no longer dialed are removed (a
    /// file left behind is harmless, nothing dials it: only logged).
    async fn point_after(&self, files: Option<&UpstreamFiles>, switch: Switch) -> Result<()> {
        let Some(files) = files else { return Ok(()) };
        let Switch { app, live, dialed } = switch;
        self.point(files, &app, &live, 0..dialed.min(live.len())).await?;
        if dialed > live.len()
            && let Err(e) = files.remove_from(&app, live.len()).await
        {
            tracing::warn!(%app, error = %e, "could not remove the app's unused upstream files");
        }
        Ok(())
    }

    /// Creates our server under `apps.http.servers` if it is missing, from any
    /// starting config, and brings its listen addresses and automatic HTTPS
    /// setting in line with [`CaddyConfig`]; its routes are left alone.
    /// Changes nothing when all is already in place. Fails, changing nothing,
    /// if two routes carry the same one of our `@id`s (see the module docs).
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
        self.ensure_grace_period(op).await?;
        // Routes written before wildcard exclusions existed get theirs (no
        // write when every route is as it should be).
        self.write_routes(op, &[], &[]).await
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
            let Some(route) = self.resolve(&app, route).await? else {
                continue;
            };
            match json::parse_route(&route) {
                Ok(target) if self.hosts.is_some() && !self.dials_current(&route, target.port).await? => {
                    tracing::warn!(
                        id,
                        "the route's upstreams are not where the release runs now; reconcile rewrites it"
                    );
                }
                Ok(target) => out.push((app, target)),
                Err(why) => tracing::warn!(id, %why, "skipping a Caddy route we cannot read"),
            }
        }
        Ok(out)
    }

    /// Whether `route` dials exactly where the release on `port` runs now.
    async fn dials_current(&self, route: &Value, port: HostPort) -> Result<bool> {
        let mut now = self.dials(port).await?;
        now.sort();
        Ok(json::live_dials(route) == now)
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
        let routes = server.get("routes").and_then(Value::as_array);
        if let Some(routes) = routes {
            check_no_duplicates(op, routes)?;
        }
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
        if routes.is_none() {
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

    /// Our route with `id`, read through `/id/` (see the module docs).
    async fn lookup(&self, op: &str, id: &str) -> Result<Lookup> {
        let reply = self.admin.get(op, &format!("/id/{id}")).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(Lookup::Missing);
        }
        // Caddy resolves the @id to a path, then reads that path: a route
        // removed in between leaves the path past the end of the list.
        if reply.status == StatusCode::BAD_REQUEST && reply.message().contains("index out of bounds") {
            return Ok(Lookup::Moved);
        }
        if !reply.is_success() {
            return Err(reply.failure(op));
        }
        let index = self.check_ours(op, id, &reply)?;
        let route = reply.json(op)?;
        let Some(etag) = reply.etag.filter(|_| json::id_of(&route) == Some(id)) else {
            return Ok(Lookup::Moved);
        };
        Ok(Lookup::Found { index, route, etag })
    }

    /// The index in our route list of the object `reply` (to `GET /id/{id}`)
    /// was read from; fails if it is anything else. Caddy names the object's
    /// expanded path in the ETag.
    fn check_ours(&self, op: &str, id: &str, reply: &Reply) -> Result<usize> {
        let Some(path) = reply.etag.as_deref().map(|e| e.trim_matches('"').split(' ').next().unwrap_or_default())
        else {
            return Err(Error::failed(op, format!("Caddy did not say where the object with @id {id} is (no ETag)")));
        };
        if let Some(index) = path.strip_prefix(ROUTES_PATH).and_then(|p| p.strip_prefix('/')) {
            return index.parse().map_err(|_| {
                Error::failed(
                    op,
                    format!(
                        "the @id {id} belongs to an object inside a route of Otturnaut's server, at {path}; \
                         rename that object's @id"
                    ),
                )
            });
        }
        Err(Error::failed(
            op,
            format!(
                "the @id {id} belongs to an object outside Otturnaut's server, at {path}; rename that object's @id"
            ),
        ))
    }

    /// Sets the routes of `set` and removes those of `remove`, in one write of
    /// our whole route list guarded by its ETag: every other app's domains
    /// are checked (a domain another app serves fails with
    /// [`Error::DomainTaken`], changing nothing), and every wildcard route's
    /// exclusions are recomputed. Writes nothing if nothing changes.
    async fn write_routes(&self, op: &str, set: &[(AppId, RouteTarget)], remove: &[AppId]) -> Result<()> {
        for attempt in 1..=MAX_ATTEMPTS {
            let Some(routes) = self.read_routes(op).await? else {
                if set.is_empty() {
                    // Caddy lost our server: nothing dials a removed app's files.
                    self.remove_files(remove).await;
                    return Ok(());
                }
                // Caddy lost our server (restarted empty, or a reboot) or was
                // never set up: create it with its routes, in one write.
                let mut list: Vec<Value> = Vec::with_capacity(set.len());
                let files = self.live_files().await?;
                for (app, t) in set {
                    let id = route_id(app);
                    let live = self.live_dials(&id, t.port).await?;
                    list.push(self.route_to(&id, &t.domains, &live, None, &[]).await?);
                    self.point_before(files, app, &live, None).await?;
                }
                owners_and_exclusions(op, set, &mut list)?;
                let reply = self.create_server(op, list).await?;
                if reply.is_success() {
                    return Ok(());
                }
                if !lost_race(&reply) {
                    return Err(reply.failure(op));
                }
                backoff(op, attempt).await;
                continue;
            };
            let old = routes.list.clone().unwrap_or_default();
            if !set.is_empty() {
                // A removal drops every copy; a write must know which is right.
                check_no_duplicates(op, &old)?;
            }
            let mut list: Vec<Value> = Vec::with_capacity(old.len() + set.len());
            let mut pending: Vec<&(AppId, RouteTarget)> = set.iter().collect();
            let files = self.live_files().await?;
            let mut switches = Vec::new();
            for route in &old {
                let app = json::id_of(route).and_then(json::app_of_route_id);
                match app {
                    Some(app) if remove.contains(&app) => {}
                    Some(app) => match pending.iter().position(|(a, _)| *a == app) {
                        Some(i) => {
                            let (app, target) = pending.remove(i);
                            let (id, draining) = (route_id(app), json::draining_after(route, target.port));
                            let live = self.live_dials(&id, target.port).await?;
                            list.push(self.route_to(&id, &target.domains, &live, draining, &[]).await?);
                            switches.push(self.point_before(files, app, &live, Some(route)).await?);
                        }
                        None => list.push(route.clone()),
                    },
                    None => list.push(route.clone()),
                }
            }
            for (app, target) in pending {
                let id = route_id(app);
                let live = self.live_dials(&id, target.port).await?;
                list.push(self.route_to(&id, &target.domains, &live, None, &[]).await?);
                switches.push(self.point_before(files, app, &live, None).await?);
            }
            owners_and_exclusions(op, set, &mut list)?;
            let written = if routes.list.is_some() && list == old {
                true
            } else {
                // PATCH replaces the list; POST sets a missing `routes` key.
                let method = if routes.list.is_some() { Method::PATCH } else { Method::POST };
                let reply = self.write(op, method, ROUTES_PATH, &Value::Array(list), routes.etag.as_deref()).await?;
                if !reply.is_success() && !stale(&reply) {
                    return Err(reply.failure(op));
                }
                reply.is_success()
            };
            if written {
                for switch in switches {
                    self.point_after(files, switch).await?;
                }
                self.remove_files(remove).await;
                return Ok(());
            }
            backoff(op, attempt).await;
        }
        Err(gave_up(op))
    }

    /// Removes removed apps' upstream files; one left behind is harmless
    /// (nothing dials it), so a failure is only logged.
    async fn remove_files(&self, apps: &[AppId]) {
        let Some(files) = &self.files else { return };
        for app in apps {
            if let Err(e) = files.remove_from(app, 0).await {
                tracing::warn!(%app, error = %e, "could not remove the app's upstream file");
            }
        }
    }

    /// Creates our server holding `routes`: with the whole HTTP app (and our
    /// grace period) if Caddy has none, else beside the servers it has.
    /// Never replaces what exists (PUT fails on an existing key).
    async fn create_server(&self, op: &str, routes: Vec<Value>) -> Result<Reply> {
        let mut server = json::server(&self.config.listen, self.config.automatic_https);
        server["routes"] = Value::Array(routes);
        let app = json!({ "grace_period": go_duration(self.config.grace_period), "servers": { SERVER_NAME: server } });
        let reply = self.write(op, Method::PUT, HTTP_APP_PATH, &app, None).await?;
        if reply.is_success() || !lost_race(&reply) {
            return Ok(reply);
        }
        let reply = self.write(op, Method::PUT, SERVER_PATH, &server, None).await?;
        if reply.is_success() {
            self.ensure_grace_period(op).await?;
        }
        Ok(reply)
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

    /// Where a release on `port` is dialed: `upstream_host:port`, or with
    /// [`Caddy::with_upstream_hosts`], one address per host it runs on.
    async fn dials(&self, port: HostPort) -> Result<Vec<String>> {
        match &self.hosts {
            None => Ok(vec![self.upstream(port)]),
            Some(hosts) => {
                // In a stable order, so that each task keeps its upstream file.
                let mut dials: Vec<String> =
                    hosts.hosts(port).await?.iter().map(|h| json::upstream_addr(h, port)).collect();
                dials.sort();
                Ok(dials)
            }
        }
    }
}

#[async_trait]
impl Router for Caddy {
    async fn routes(&self) -> Result<Vec<(AppId, RouteTarget)>> {
        self.list_routes().await
    }

    /// With upstream hosts (a cluster): true when the route's upstreams are
    /// not where the release on its port runs now (a node left, Swarm moved
    /// a task). On one host, never: no request is made.
    async fn needs_rewrite(&self, app: &AppId) -> Result<bool> {
        if self.hosts.is_none() {
            return Ok(false);
        }
        let op = format!("reading the Caddy route of app {app}");
        let route = match self.lookup(&op, &route_id(app)).await? {
            Lookup::Found { route, .. } => route,
            // A missing route is reconcile's to restore anyway.
            Lookup::Missing | Lookup::Moved => return Ok(false),
        };
        let Some(route) = self.resolve(app, &route).await? else {
            return Ok(false);
        };
        let Ok(target) = json::parse_route(&route) else {
            return Ok(false);
        };
        let current = self.dials_current(&route, target.port).await?;
        if !current {
            tracing::warn!(%app, "the route's upstreams are not where the release runs now");
        }
        Ok(!current)
    }

    async fn route(&self, app: &AppId) -> Result<Option<RouteTarget>> {
        let op = format!("reading the Caddy route of app {app}");
        let id = route_id(app);
        for attempt in 1..=MAX_ATTEMPTS {
            let route = match self.lookup(&op, &id).await? {
                Lookup::Found { route, .. } => route,
                Lookup::Missing => return Ok(None),
                Lookup::Moved => {
                    backoff(&op, attempt).await;
                    continue;
                }
            };
            let Some(route) = self.resolve(app, &route).await? else {
                return Ok(None);
            };
            return json::parse_route(&route)
                .map(Some)
                .map_err(|why| Error::failed(&op, format!("route {id} is not one Otturnaut wrote: {why}: {route}")));
        }
        Err(gave_up(&op))
    }

    async fn set_route(&self, app: &AppId, target: &RouteTarget) -> Result<()> {
        let op = format!("routing app {app} through Caddy");
        check_has_domains(app, target)?;
        let id = route_id(app);
        for attempt in 1..=MAX_ATTEMPTS {
            let (index, route, etag) = match self.lookup(&op, &id).await? {
                Lookup::Found { index, route, etag } => (index, route, etag),
                Lookup::Moved => {
                    backoff(&op, attempt).await;
                    continue;
                }
                // A new route, or new domains: the whole list is checked for
                // owners and rewritten (see the module docs).
                Lookup::Missing => return self.write_routes(&op, &[(app.clone(), target.clone())], &[]).await,
            };
            // The domains are the same whichever address the file holds.
            let domains = self.resolve(app, &route).await?.map(|r| json::parse_route(&r).map(|t| t.domains));
            if domains.as_ref().and_then(|d| d.as_ref().ok()) != Some(&target.domains) {
                return self.write_routes(&op, &[(app.clone(), target.clone())], &[]).await;
            }
            let draining = json::draining_after(&route, target.port);
            let live = self.live_dials(&id, target.port).await?;
            let new = self.route_to(&id, &target.domains, &live, draining, &json::excluded(&route)).await?;
            // Through files, the switch is the files' change (see `point_before`).
            let files = self.live_files().await?;
            let switch = self.point_before(files, app, &live, Some(&route)).await?;
            let written = route == new || {
                let path = format!("{ROUTES_PATH}/{index}");
                let reply = self.write(&op, Method::PATCH, &path, &new, Some(&etag)).await?;
                if !reply.is_success() && !stale(&reply) {
                    return Err(reply.failure(&op));
                }
                reply.is_success()
            };
            if written {
                return self.point_after(files, switch).await;
            }
            backoff(&op, attempt).await;
        }
        Err(gave_up(&op))
    }

    async fn set_routes(&self, routes: &[(AppId, RouteTarget)]) -> Result<()> {
        let op = format!("restoring the Caddy routes of {} app(s)", routes.len());
        for (app, target) in routes {
            check_has_domains(app, target)?;
        }
        self.write_routes(&op, routes, &[]).await
    }

    async fn remove_route(&self, app: &AppId) -> Result<()> {
        let op = format!("removing the Caddy route of app {app}");
        self.write_routes(&op, &[], std::slice::from_ref(app)).await
    }

    /// Caddy's count of requests in flight to the port's addresses (one per
    /// task on a cluster). Where routes dial upstream files, Caddy's
    /// per-upstream count covers every release at once (it is keyed by the
    /// `{file.…}` string); 2.11.2+ also reports each dialed address
    /// (caddyserver/caddy#7517), older 2.8+ do not. So there the count is the
    /// larger of Caddy's and the connections open to the port on those
    /// addresses (see `conns`).
    async fn in_flight(&self, port: HostPort) -> Result<u64> {
        #[derive(Deserialize)]
        struct Upstream {
            address: String,
            num_requests: i64,
        }
        let addrs = self.dials(port).await?;
        let addr = addrs.join(", ");
        let op = format!("counting requests in flight to {addr} in Caddy");
        let reply = self.admin.get(&op, "/reverse_proxy/upstreams").await?;
        if !reply.is_success() {
            return Err(reply.failure(&op));
        }
        let upstreams: Vec<Upstream> = serde_json::from_value(reply.json(&op)?)
            .map_err(|e| Error::failed(&op, format!("unexpected /reverse_proxy/upstreams answer: {e}")))?;
        let caddy: u64 = upstreams
            .iter()
            .filter(|u| addrs.contains(&u.address))
            .map(|u| u64::try_from(u.num_requests).unwrap_or(0))
            .sum();
        if self.live_files().await?.is_none() {
            return Ok(caddy);
        }
        let op = format!("counting connections to {addr}");
        let ips: Vec<Option<IpAddr>> = addrs.iter().map(|a| json::host_ip(a)).collect();
        let counted = tokio::task::spawn_blocking(move || conns::count_to_any(&ips, port.get()))
            .await
            .map_err(|e| Error::failed(&op, e))?;
        Ok(caddy.max(counted.map_err(|e| Error::failed(&op, e))?))
    }

    /// Through upstream files a switch reloads nothing, so no handler is
    /// unloaded, and Caddy sends a stream's close frame only when its handler
    /// is (`streaming.go`, `cleanupConnections`): a stream opened on the old
    /// release stays open until the app ends it. Elsewhere each switch is a
    /// reload and closes old streams itself.
    async fn stream_close_delay(&self) -> Result<Option<Duration>> {
        Ok(self.live_files().await?.map(|_| self.config.stream_close_delay))
    }

    /// One reload of the unchanged config (see `Admin::reload`).
    async fn close_streams(&self) -> Result<()> {
        let op = "reloading Caddy's config unchanged, to close upgraded streams cleanly";
        let reply = self.admin.reload(op, &format!("{SERVER_PATH}/listen")).await?;
        if reply.is_success() || stale(&reply) { Ok(()) } else { Err(reply.failure(op)) }
    }
}

fn check_has_domains(app: &AppId, target: &RouteTarget) -> Result<()> {
    if target.domains.is_empty() {
        return Err(Error::invalid(
            "route",
            app.as_str(),
            "needs at least one domain: a route without a host matcher would take every request",
        ));
    }
    Ok(())
}

/// Checks that no domain of the routes being set (`set`) belongs to another
/// app's route in `list`, then writes every one of our routes' exclusions.
fn owners_and_exclusions(op: &str, set: &[(AppId, RouteTarget)], list: &mut [Value]) -> Result<()> {
    let ours: Vec<(usize, AppId, Vec<Domain>)> = list
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let app = json::id_of(r).and_then(json::app_of_route_id)?;
            Some((i, app, json::parse_domains(r).ok()?))
        })
        .collect();
    for (app, target) in set {
        let others = ours.iter().map(|(_, a, d)| (a, d.as_slice()));
        if let Some((domain, owner)) = domain_conflict(app, &target.domains, others) {
            tracing::debug!(op, %domain, %owner, "domain already taken");
            return Err(Error::DomainTaken { domain, owner });
        }
    }
    let pairs: Vec<(&AppId, &[Domain])> = ours.iter().map(|(_, a, d)| (a, d.as_slice())).collect();
    for ((i, _, _), excluded) in ours.iter().zip(json::exclusions(&pairs)) {
        let matcher = &mut list[*i]["match"][0];
        match excluded.is_empty() {
            true => {
                if let Some(m) = matcher.as_object_mut() {
                    m.remove("not");
                }
            }
            false => matcher["not"] = json!([{ "host": excluded }]),
        }
    }
    Ok(())
}

/// Fails if two routes carry the same one of our `@id`s (see the module docs).
fn check_no_duplicates(op: &str, routes: &[Value]) -> Result<()> {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, route) in routes.iter().enumerate() {
        let Some(id) = json::id_of(route).filter(|id| id.starts_with(ROUTE_ID_PREFIX)) else {
            continue;
        };
        if let Some(first) = seen.insert(id, i) {
            return Err(Error::failed(
                op,
                format!(
                    "Otturnaut's server in Caddy has two routes with @id {id}, at {ROUTES_PATH}/{first} and \
                     {ROUTES_PATH}/{i}; the first one serves the app's domains, and Otturnaut cannot tell which \
                     is right. Remove the wrong one, then try again"
                ),
            ));
        }
    }
    Ok(())
}

/// True when a conditional write was refused only because what it was
/// conditioned on changed: Caddy answers 412, or, when the list shrank below
/// the index the ETag names, 500 "array index out of bounds".
fn stale(reply: &Reply) -> bool {
    reply.status == StatusCode::PRECONDITION_FAILED
        || (reply.status == StatusCode::INTERNAL_SERVER_ERROR && reply.message().contains("index out of bounds"))
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

/// True when `url`'s host is this machine (only then can Caddy read files we write).
fn is_loopback_url(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else { return false };
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
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

    #[test]
    fn upstream_files_only_for_a_caddy_on_this_host() {
        for (url, local) in [
            ("http://127.0.0.1:2019", true),
            ("http://localhost:2019", true),
            ("http://[::1]:2019", true),
            ("http://10.0.0.5:2019", false),
            ("https://caddy.example.com", false),
        ] {
            let caddy = Caddy::new(CaddyConfig { admin_url: url.into(), ..CaddyConfig::default() }).expect("valid");
            assert_eq!(caddy.files.is_some(), local, "{url}");
        }
    }
}
