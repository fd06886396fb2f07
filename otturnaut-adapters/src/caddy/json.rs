//! The JSON Otturnaut writes into Caddy's config, and reads back.
//!
//! An app's route:
//!
//! ```json
//! { "@id": "otturnaut-app-shop",
//!   "match": [{ "host": ["shop.example.com"] }],
//!   "handle": [
//!     { "handler": "reverse_proxy", "upstreams": [{ "dial": "127.0.0.1:10001" }],
//!       "transport": { "protocol": "http", "keep_alive": { "idle_timeout": "2s", … }, … } },
//!     { "handler": "reverse_proxy", "upstreams": [{ "dial": "127.0.0.1:10000" }] } ],
//!   "terminal": true }
//! ```
//!
//! The second handler is optional and never runs (see [`route`]).

use otturnaut_core::{AppId, Domain, HostPort, RouteTarget};
use serde_json::{Value, json};

/// The key of our server under `apps.http.servers`.
pub const SERVER_NAME: &str = "otturnaut";
/// Every route we own has an `@id` starting with this, followed by the app id.
pub const ROUTE_ID_PREFIX: &str = "otturnaut-app-";

pub(crate) const HTTP_APP_PATH: &str = "/config/apps/http";
pub(crate) const SERVER_PATH: &str = "/config/apps/http/servers/otturnaut";
pub(crate) const ROUTES_PATH: &str = "/config/apps/http/servers/otturnaut/routes";

/// The `@id` of an app's route. An [`AppId`] is a DNS label, so the id needs
/// no escaping in an admin API path.
pub fn route_id(app: &AppId) -> String {
    format!("{ROUTE_ID_PREFIX}{app}")
}

/// The app a route `@id` belongs to, if it is one of ours.
pub(crate) fn app_of_route_id(id: &str) -> Option<AppId> {
    id.strip_prefix(ROUTE_ID_PREFIX)?.parse().ok()
}

pub(crate) fn id_of(route: &Value) -> Option<&str> {
    route.get("@id").and_then(Value::as_str)
}

/// The dial address of an upstream, which is also how Caddy names it in
/// `/reverse_proxy/upstreams`.
pub(crate) fn upstream_addr(host: &str, port: HostPort) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// The IP address a dial address (`host:port`) names; `None` for a host
/// name or an unspecified address.
pub(crate) fn host_ip(dial: &str) -> Option<std::net::IpAddr> {
    let (host, _) = dial.rsplit_once(':')?;
    let ip: std::net::IpAddr = host.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    (!ip.is_unspecified()).then_some(ip)
}

/// An app's route, proxying its domains to the `live` dial addresses (one
/// per host the release runs on: one on a single host, one per task on a
/// cluster), all on the release's port.
///
/// `draining` dials the port the route proxied to before, if it changed. It is
/// kept referenced by a second `reverse_proxy` handler that never runs
/// (`reverse_proxy` answers the request and does not call the next handler):
/// Caddy counts in-flight requests per upstream address in a pool shared by
/// config generations, and drops an address from the pool, count and all, as
/// soon as no loaded config references it. Without this reference,
/// `/reverse_proxy/upstreams` forgets the old upstream the moment the route
/// switches, while requests the previous generation accepted are still being
/// proxied to it, so `in_flight(old_port)` would read 0 too early.
///
/// `excluded` lists other apps' exact hosts that this route's wildcards would
/// otherwise take (see [`exclusions`]): they go in a `not` matcher, so an exact
/// host always wins over a wildcard whatever the order of the routes.
pub(crate) fn route(id: &str, domains: &[Domain], live: &[String], draining: &[String], excluded: &[Domain]) -> Value {
    let proxy = |dials: &[String]| {
        json!({
            "handler": "reverse_proxy",
            "upstreams": dials.iter().map(|d| json!({ "dial": d })).collect::<Vec<_>>(),
        })
    };
    let mut live = proxy(live);
    live["transport"] = transport();
    let mut handle = vec![live];
    // Never runs, so never dials: Caddy's default transport will do, and
    // each explicit one makes every reload slower (see `transport`).
    if !draining.is_empty() {
        handle.push(proxy(draining));
    }
    let mut matcher = json!({ "host": domains });
    if !excluded.is_empty() {
        matcher["not"] = json!([{ "host": excluded }]);
    }
    json!({
        "@id": id,
        "match": [matcher],
        "handle": handle,
        "terminal": true,
    })
}

/// The exact hosts a route we wrote excludes (its `not` matcher).
pub(crate) fn excluded(route: &Value) -> Vec<Domain> {
    route
        .get("match")
        .and_then(|m| m.get(0))
        .and_then(|m| m.get("not"))
        .and_then(|n| n.get(0))
        .and_then(|n| n.get("host"))
        .and_then(Value::as_array)
        .map(|hosts| hosts.iter().filter_map(|h| h.as_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// For each app, the exact hosts of *other* apps that its wildcards cover.
/// Every host is then matched by exactly one route: domains are unique per
/// app (identical wildcards included), and two different `*.` wildcards
/// never match the same host (they differ in label count or suffix).
pub(crate) fn exclusions<'a>(routes: &[(&'a AppId, &'a [Domain])]) -> Vec<Vec<Domain>> {
    routes
        .iter()
        .map(|(app, domains)| {
            let wildcards: Vec<&Domain> = domains.iter().filter(|d| d.is_wildcard()).collect();
            if wildcards.is_empty() {
                return Vec::new();
            }
            let mut out: Vec<Domain> = routes
                .iter()
                .filter(|(other, _)| other != app)
                .flat_map(|(_, theirs)| theirs.iter())
                .filter(|host| wildcards.iter().any(|w| w.covers(host)))
                .cloned()
                .collect();
            out.sort();
            out.dedup();
            out
        })
        .collect()
}

/// The upstream transport: Caddy's defaults, but idle upstream connections
/// close after 2 s instead of 2 min.
///
/// Every config change builds new transports, and Caddy 2.6 does not close
/// the replaced ones' idle connections: they linger until their idle timeout.
/// A busy app leaves about 20 per redeploy (one per concurrent request), so
/// with the 2 min default a burst of redeploys piles up thousands of open
/// connections to the app, and at about 3,300 the app's `docker-proxy` runs
/// out of file descriptors and every request to the app fails. The live
/// transport pays one loopback connect after 2 s of idleness.
///
/// Caddy fills `keep_alive`'s defaults only when the whole object is absent,
/// so the other fields carry its defaults explicitly (0 would mean Go's
/// defaults: 2 idle connections per host, no TCP keep-alive probes).
///
/// The price: Caddy decodes an explicit transport on every reload, for every
/// route. With 1000 apps a reload took ~90 ms instead of ~55 ms (Caddy 2.6.2;
/// BENCHMARKS.md, route switch).
fn transport() -> Value {
    json!({
        "protocol": "http",
        "dial_timeout": "3s",
        "keep_alive": {
            "probe_interval": "30s",
            "max_idle_conns_per_host": 32,
            "idle_timeout": "2s",
        },
    })
}

/// The port the `index`th handler of a route proxies to.
fn handler_port(route: &Value, index: usize) -> Option<HostPort> {
    let handler = route.get("handle")?.get(index)?;
    if handler.get("handler").and_then(Value::as_str) != Some("reverse_proxy") {
        return None;
    }
    let dial = handler.get("upstreams")?.get(0)?.get("dial")?.as_str()?;
    dial.rsplit_once(':')?.1.parse().ok()
}

/// Passive health on the live handler of a route with several upstreams (a
/// cluster): one failed dial takes an upstream out of the choice for
/// [`FAIL_DURATION`], so Caddy's retries go to the other tasks instead of
/// drawing the gone one again. A single upstream never gets it: marked down,
/// it would leave nothing to dial.
pub(crate) fn avoid_failed_upstreams(route: &mut Value) {
    if let Some(live) = route.get_mut("handle").and_then(|h| h.get_mut(0)) {
        live["health_checks"] = json!({ "passive": { "fail_duration": FAIL_DURATION, "max_fails": 1 } });
    }
}

/// How long an upstream that failed a dial is left out (see [`avoid_failed_upstreams`]).
const FAIL_DURATION: &str = "10s";

/// Every `dial` of a route's live (first) handler, in order.
pub(crate) fn upstream_dials(route: &Value) -> Vec<String> {
    route
        .get("handle")
        .and_then(|h| h.get(0))
        .and_then(|h| h.get("upstreams"))
        .and_then(Value::as_array)
        .map(|u| u.iter().filter_map(|u| u.get("dial")?.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Every `dial` of a route's live (first) handler, sorted.
pub(crate) fn live_dials(route: &Value) -> Vec<String> {
    let mut dials = upstream_dials(route);
    dials.sort();
    dials
}

/// Makes a route's live handler dial `dials`, in order (upstream files'
/// placeholders, or the addresses read from those files).
pub(crate) fn set_live_dials(route: &mut Value, dials: &[String]) {
    if let Some(live) = route.get_mut("handle").and_then(|h| h.get_mut(0)) {
        live["upstreams"] = dials.iter().map(|d| json!({ "dial": d })).collect();
    }
}

/// Which port the replacement of `old` should keep draining when it proxies
/// to `new_port`: the old target if it changes, else whatever `old` was
/// already draining.
pub(crate) fn draining_after(old: &Value, new_port: HostPort) -> Option<HostPort> {
    match handler_port(old, 0) {
        Some(p) if p != new_port => Some(p),
        _ => handler_port(old, 1).filter(|p| *p != new_port),
    }
}

/// Reads a route we wrote back into a [`RouteTarget`].
pub(crate) fn parse_route(route: &Value) -> Result<RouteTarget, String> {
    let domains = parse_domains(route)?;
    let port = handler_port(route, 0).ok_or("its first handler is not a reverse_proxy to a port")?;
    Ok(RouteTarget { domains, port })
}

/// The domains a route matches, whatever it dials: a route that dials its
/// app's upstream file has no port in Caddy's config, yet owns its domains
/// and gets its exclusions like any other.
pub(crate) fn parse_domains(route: &Value) -> Result<Vec<Domain>, String> {
    let hosts = route
        .get("match")
        .and_then(|m| m.get(0))
        .and_then(|m| m.get("host"))
        .and_then(Value::as_array)
        .ok_or("it has no host matcher")?;
    let domains = hosts
        .iter()
        .map(|h| {
            h.as_str().ok_or_else(|| format!("host {h} is not a string"))?.parse::<Domain>().map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(domains)
}

/// Our server, as first created.
pub(crate) fn server(listen: &[String], automatic_https: bool) -> Value {
    let mut server = json!({ "listen": listen, "routes": [] });
    if !automatic_https {
        server["automatic_https"] = json!({ "disable": true });
    }
    server
}

/// True when an existing server has automatic HTTPS disabled.
pub(crate) fn https_disabled(server: &Value) -> bool {
    server.get("automatic_https").and_then(|a| a.get("disable")).and_then(Value::as_bool).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The single-host route: one upstream `host:port`, maybe one draining.
    fn route(
        id: &str,
        domains: &[Domain],
        host: &str,
        port: HostPort,
        draining: Option<HostPort>,
        excluded: &[Domain],
    ) -> Value {
        let draining: Vec<String> = draining.map(|p| upstream_addr(host, p)).into_iter().collect();
        super::route(id, domains, &[upstream_addr(host, port)], &draining, excluded)
    }

    #[test]
    fn a_cluster_route_has_one_upstream_per_host() {
        let dials = ["10.0.0.1:10001".to_owned(), "10.0.0.2:10001".to_owned()];
        let r = super::route("x", &domains(&["a.b"]), &dials, &[], &[]);
        assert_eq!(r["handle"][0]["upstreams"], json!([{ "dial": "10.0.0.1:10001" }, { "dial": "10.0.0.2:10001" }]));
        assert_eq!(r["handle"].as_array().map(Vec::len), Some(1), "nothing to drain");
        assert_eq!(parse_route(&r).map(|t| t.port), Ok(port(10001)));
    }

    fn port(p: u16) -> HostPort {
        HostPort::try_from(p).expect("valid port")
    }

    fn domains(names: &[&str]) -> Vec<Domain> {
        names.iter().map(|d| d.parse().expect("valid domain")).collect()
    }

    #[test]
    fn route_round_trips_through_json() {
        let target = RouteTarget { domains: domains(&["a.example.com", "b.example.com"]), port: port(10001) };
        let r = route("otturnaut-app-a", &target.domains, "127.0.0.1", target.port, None, &[]);
        assert_eq!(id_of(&r), Some("otturnaut-app-a"));
        assert_eq!(parse_route(&r), Ok(target));
        assert_eq!(r["terminal"], json!(true));
        assert_eq!(r["handle"].as_array().map(Vec::len), Some(1));
        assert_eq!(r["handle"][0]["transport"]["keep_alive"]["idle_timeout"], json!("2s"));
    }

    #[test]
    fn a_switch_keeps_the_old_port_draining() {
        let d = domains(&["a.example.com"]);
        let first = route("x", &d, "127.0.0.1", port(10000), None, &[]);
        assert_eq!(draining_after(&first, port(10000)), None);
        assert_eq!(draining_after(&first, port(10001)), Some(port(10000)));

        let second = route("x", &d, "127.0.0.1", port(10001), Some(port(10000)), &[]);
        assert!(second["handle"][0].get("transport").is_some(), "the live handler times out idle connections");
        assert!(second["handle"][1].get("transport").is_none(), "the draining one never dials");
        assert_eq!(
            parse_route(&second).map(|t| t.port),
            Ok(port(10001)),
            "the draining handler must not change where the route points"
        );
        // Changing only the domains keeps draining the same old port.
        assert_eq!(draining_after(&second, port(10001)), Some(port(10000)));
        // Switching back drops the drain that would point at the new target.
        assert_eq!(draining_after(&second, port(10000)), Some(port(10001)));
    }

    #[test]
    fn wildcard_routes_exclude_the_exact_hosts_of_other_apps() {
        let app = |s: &str| s.parse::<AppId>().expect("valid app");
        let (wild, exact, mixed) = (app("wild"), app("exact"), app("mixed"));
        let w = domains(&["*.example.com"]);
        let e = domains(&["a.example.com", "other.test"]);
        let m = domains(&["example.com", "*.other.test", "b.example.com"]);
        let routes = [(&wild, w.as_slice()), (&exact, e.as_slice()), (&mixed, m.as_slice())];
        assert_eq!(
            exclusions(&routes),
            vec![domains(&["a.example.com", "b.example.com"]), vec![], vec![]],
            "only wildcards exclude; `*.other.test` does not cover `other.test`"
        );
        let r = route("x", &w, "127.0.0.1", port(10000), None, &domains(&["a.example.com"]));
        assert_eq!(r["match"][0]["not"], json!([{ "host": ["a.example.com"] }]));
        assert_eq!(excluded(&r), domains(&["a.example.com"]));
        assert_eq!(parse_route(&r).map(|t| t.domains), Ok(w), "exclusions are not the route's domains");
        assert!(route("x", &e, "127.0.0.1", port(10000), None, &[])["match"][0].get("not").is_none());
    }

    #[test]
    fn route_ids_map_back_to_apps() {
        let app: AppId = "shop".parse().expect("valid app");
        assert_eq!(app_of_route_id(&route_id(&app)), Some(app));
        assert_eq!(app_of_route_id("otturnaut-app-"), None);
        assert_eq!(app_of_route_id("otturnaut-app-Bad_Id"), None);
        assert_eq!(app_of_route_id("someone-else"), None);
    }

    #[test]
    fn the_live_dials_can_be_read_and_replaced() {
        let mut r = route("x", &domains(&["a.b"]), "127.0.0.1", port(10001), Some(port(10000)), &[]);
        assert_eq!(upstream_dials(&r), ["127.0.0.1:10001"]);
        set_live_dials(&mut r, &["{file./run/x}".to_owned(), "{file./run/x.1}".to_owned()]);
        assert_eq!(upstream_dials(&r), ["{file./run/x}", "{file./run/x.1}"]);
        assert_eq!(r["handle"][1]["upstreams"][0]["dial"], json!("127.0.0.1:10000"), "only the live handler");
        assert!(parse_route(&r).is_err(), "a placeholder is no port");
    }

    #[test]
    fn dial_addresses_name_their_ip() {
        assert_eq!(host_ip("10.0.0.5:10000"), Some("10.0.0.5".parse().expect("ip")));
        assert_eq!(host_ip("[::1]:80"), Some("::1".parse().expect("ip")));
        assert_eq!(host_ip("0.0.0.0:80"), None);
        assert_eq!(host_ip("node-1:80"), None);
        assert_eq!(host_ip("{file./run/x}"), None);
    }

    #[test]
    fn ipv6_upstreams_are_bracketed() {
        assert_eq!(upstream_addr("::1", port(80)), "[::1]:80");
        assert_eq!(upstream_addr("127.0.0.1", port(80)), "127.0.0.1:80");
        let r = route("x", &domains(&["a.b"]), "::1", port(8080), None, &[]);
        assert_eq!(parse_route(&r).map(|t| t.port), Ok(port(8080)));
    }

    #[test]
    fn foreign_shapes_are_rejected_with_a_reason() {
        for bad in [
            json!({}),
            json!({"match": [{"host": ["a.b"]}], "handle": [{"handler": "static_response"}]}),
            json!({"match": [{"host": ["a b"]}], "handle": []}),
            json!({"match": [{"path": ["/"]}]}),
        ] {
            assert!(parse_route(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_disables_https_only_when_asked() {
        let listen = vec!["127.0.0.1:8080".to_owned()];
        assert!(https_disabled(&server(&listen, false)));
        assert!(!https_disabled(&server(&listen, true)));
        assert_eq!(server(&listen, true)["routes"], json!([]));
    }
}
