//! Requests in flight to a release, counted from the kernel's TCP tables,
//! where Caddy's own count cannot tell releases apart.
//!
//! With upstream files (see `files`), every release of an app is dialed
//! through the same `{file.…}` upstream, and Caddy keys its in-flight counts
//! by that string: one count for the old and the new release together. What
//! does tell them apart: Caddy proxies a request to a release over a TCP
//! connection it opened to that release's host port, and that connection
//! stays open until the response has been read. So while a request is in
//! flight to `host:port`, this host has a socket connected (or connecting)
//! to it: SYN_SENT, ESTABLISHED, or CLOSE_WAIT (the app closed its end, Caddy
//! may still be reading what it sent). A count of 0 means no request is in
//! flight there. The count can be higher than the number of requests, never
//! lower: Caddy's idle keep-alive connections to the old release count too
//! until the live transport's idle timeout (2 s) closes them, as does any
//! other client of that port.
//!
//! The one request this does not see is one that read the old address from
//! the file just before the switch and has not called `connect` yet, a window
//! of microseconds, while the drain starts after the commit. Should it
//! connect after the old release stopped, the connect is refused, and Caddy
//! retries a failed dial (the route's `load_balancing`), reading the file
//! again, so it reaches the new release.
//!
//! The agent must run in Caddy's network namespace, which upstream files
//! require anyway (same host, `upstream_host` reachable by both). Caddy
//! 2.11.2+ also reports in-flight requests per dialed address
//! (caddyserver/caddy#7517, checked on 2.11.7): the adapter takes the larger
//! of both counts, so the drain holds on 2.8 to 2.11.1 and wherever this
//! count sees nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `/proc/net/tcp*` states that mean "connected or connecting, not closed by
/// this side": SYN_SENT, ESTABLISHED, CLOSE_WAIT.
const OPEN_STATES: [&str; 3] = ["02", "01", "08"];

/// Sockets on this host whose remote end is `port`, on `ip` unless it is
/// `None` (a host name, or an unspecified address).
pub(crate) fn count_to(ip: Option<IpAddr>, port: u16) -> std::io::Result<u64> {
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match std::fs::read_to_string(table) {
            Ok(text) => n += count_in(&text, ip, port),
            // A kernel without IPv6 has no tcp6 table.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && table.ends_with('6') => {}
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("{table}: {e}"))),
        }
    }
    Ok(n)
}

/// Sockets on this host whose remote end is `port` on any of `ips` (each
/// counted once); on any address if one of them is `None`.
pub(crate) fn count_to_any(ips: &[Option<IpAddr>], port: u16) -> std::io::Result<u64> {
    if ips.iter().any(Option::is_none) {
        return count_to(None, port);
    }
    let mut unique: Vec<IpAddr> = ips.iter().flatten().copied().collect();
    unique.sort();
    unique.dedup();
    let mut n = 0;
    for ip in unique {
        n += count_to(Some(ip), port)?;
    }
    Ok(n)
}

/// Counts the rows of one `/proc/net/tcp` or `tcp6` table (header first).
fn count_in(table: &str, ip: Option<IpAddr>, port: u16) -> u64 {
    let matches = |line: &str| -> Option<bool> {
        let mut fields = line.split_whitespace();
        let (_slot, _local, remote, state) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
        if !OPEN_STATES.contains(&state) {
            return Some(false);
        }
        let (addr, p) = remote.split_once(':')?;
        if u16::from_str_radix(p, 16).ok()? != port {
            return Some(false);
        }
        Some(ip.is_none_or(|want| parse_addr(addr).is_some_and(|got| same(got, want))))
    };
    table.lines().skip(1).filter(|l| matches(l).unwrap_or(false)).count() as u64
}

/// An address as the kernel prints it: 32-bit words in host byte order.
pub(crate) fn parse_addr(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok().map(u32::to_ne_bytes);
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// Equal, counting an IPv4-mapped IPv6 address as its IPv4 address.
pub(crate) fn same(a: IpAddr, b: IpAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    canon(a) == canon(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Caddy (127.0.0.1:50000) connected to 127.0.0.1:10001 (0x2711), and the
    // app's side of it; a closed-by-Caddy one (FIN_WAIT2, 05); a listener (0A);
    // one to another address; and IPv6 rows, one IPv4-mapped.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:C350 0100007F:2711 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 20 4 30 10 -1
   1: 0100007F:2711 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:C351 0100007F:2711 05 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0100007F:2711 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
   4: 0100007F:C352 0200000A:2711 08 00000000:00000000 00:00000000 00000000     0        0 5 1 0 20 4 30 10 -1
   5: 0100007F:C353 0100007F:2711 02 00000000:00000000 00:00000000 00000000     0        0 6 1 0 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:C360 00000000000000000000000001000000:2711 01 0
   1: 0000000000000000FFFF00000100007F:C361 0000000000000000FFFF00000100007F:2711 08 0
";

    #[test]
    fn counts_open_connections_to_the_port_on_the_address() {
        let lo: IpAddr = Ipv4Addr::LOCALHOST.into();
        assert_eq!(count_in(TCP, Some(lo), 10001), 2, "established and connecting, not the app's side");
        assert_eq!(count_in(TCP, None, 10001), 3, "any address: also 10.0.0.2");
        assert_eq!(count_in(TCP, Some(lo), 10002), 0);
        assert_eq!(count_in(TCP6, Some(lo), 10001), 1, "the IPv4-mapped row");
        assert_eq!(count_in(TCP6, Some(Ipv6Addr::LOCALHOST.into()), 10001), 1);
        assert_eq!(count_in("header only\n", None, 10001), 0);
        assert_eq!(count_in("h\n garbage\n 0: x:y", None, 10001), 0, "unreadable rows count as nothing");
    }

    #[test]
    fn counts_a_real_connection_on_this_host() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let lo = Some(Ipv4Addr::LOCALHOST.into());
        assert_eq!(count_to(lo, port).expect("count"), 0);
        let client = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
        assert_eq!(count_to(lo, port).expect("count"), 1);
        drop(client);
        assert_eq!(count_to(lo, port).expect("count"), 0, "a socket this side closed no longer counts");
    }
}
