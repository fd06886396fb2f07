//! Checks of the host a deploy runs on that the agent cannot fix itself.

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// A warning when Caddy runs on this host and the kernel resets connections
/// queued on a listener Caddy replaces: Caddy 2.6 opens a new listening
/// socket on every config change (every deploy) and closes the old one, and
/// without `net.ipv4.tcp_migrate_req=1` connections that completed their
/// handshake on the old socket but were not accepted yet are reset. Zero
/// downtime depends on it (BENCHMARKS.md measures both settings).
pub fn migrate_req_warning(caddy_admin: &str) -> Option<String> {
    if !is_loopback_url(caddy_admin) {
        return None;
    }
    let value = std::fs::read_to_string(MIGRATE_REQ).ok()?;
    warning_for(&value)
}

fn warning_for(sysctl_value: &str) -> Option<String> {
    (sysctl_value.trim() == "0").then(|| {
        "net.ipv4.tcp_migrate_req is 0: each Caddy config change can reset new connections queued on \
         the listener it replaces. Set it to 1 (sysctl -w net.ipv4.tcp_migrate_req=1, and persist it \
         in /etc/sysctl.d/)"
            .to_owned()
    })
}

/// True when `url`'s host is this machine (where the sysctl is ours to read).
fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_only_when_the_setting_is_off() {
        assert!(warning_for("0\n").is_some_and(|w| w.contains("tcp_migrate_req=1")));
        assert_eq!(warning_for("1\n"), None);
    }

    #[test]
    fn only_a_local_caddy_is_checked() {
        for local in ["http://127.0.0.1:2019", "http://localhost:2019/", "http://[::1]:2019", "http://127.0.0.2"] {
            assert!(is_loopback_url(local), "{local}");
        }
        for remote in ["http://10.0.0.5:2019", "https://caddy.example.com", "http://[2001:db8::1]:2019"] {
            assert!(!is_loopback_url(remote), "{remote}");
        }
    }
}
