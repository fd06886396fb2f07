//! Whether Caddy reads the upstream files the agent writes: the same
//! directory, seen from the process that serves Caddy's admin API.
//!
//! A Caddy in a container answers on a loopback admin address when it shares
//! the host's network, yet has a filesystem of its own: the files the agent
//! writes are not there, and every switched route would answer 502. So
//! before the adapter relies on files, it finds the process listening on the
//! admin address (the socket's inode, from `/proc/net/tcp*`, among the
//! processes' `/proc/PID/fd` links) and checks that `/proc/PID/root/DIR` is
//! this process's DIR: same device and inode, which a bind mount of DIR into
//! a container also gives. Anything unsure (no such process here, a
//! `docker-proxy` forwarding a container's port, a directory Caddy does not
//! see) means no files: every switch is then a config change, as on Caddy
//! 2.6 — more reloads under load, never a 502.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// The TCP state of a listening socket in `/proc/net/tcp*`.
const LISTEN: &str = "0A";

/// Why the Caddy serving `admin` does, or does not, read files under `dir`
/// (created here if missing): `Ok` when it does, `Err` with the reason.
pub(crate) fn caddy_sees(admin: &[SocketAddr], dir: &Path) -> Result<u32, String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let inodes = listeners(admin).map_err(|e| format!("cannot read the TCP tables: {e}"))?;
    if inodes.is_empty() {
        return Err(format!("no socket of this host listens on {}", show(admin)));
    }
    let (pid, name) = owner(&inodes).ok_or_else(|| format!("no process here owns the socket on {}", show(admin)))?;
    if name == "docker-proxy" {
        return Err(format!("{} is a container's port, forwarded by docker-proxy (pid {pid})", show(admin)));
    }
    let ours = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let relative = dir.strip_prefix("/").unwrap_or(dir);
    let theirs_path = Path::new("/proc").join(pid.to_string()).join("root").join(relative);
    match std::fs::metadata(&theirs_path) {
        Ok(theirs) if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) => Ok(pid),
        Ok(_) => Err(format!("{name} (pid {pid}) has a {} of its own, not this host's", dir.display())),
        Err(e) => Err(format!("{name} (pid {pid}) cannot see {}: {e}", dir.display())),
    }
}

fn show(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(" or ")
}

/// The inodes of the sockets listening on one of `addrs` (or on the
/// unspecified address of the same family and port).
fn listeners(addrs: &[SocketAddr]) -> std::io::Result<Vec<u64>> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match std::fs::read_to_string(table) {
            Ok(text) => inodes.extend(listening_in(&text, addrs)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && table.ends_with('6') => {}
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("{table}: {e}"))),
        }
    }
    Ok(inodes)
}

fn listening_in(table: &str, addrs: &[SocketAddr]) -> Vec<u64> {
    let row = |line: &str| -> Option<u64> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
        if *state != LISTEN {
            return None;
        }
        let (ip, port) = local.split_once(':')?;
        let (ip, port) = (super::conns::parse_addr(ip)?, u16::from_str_radix(port, 16).ok()?);
        let hit = addrs.iter().any(|a| a.port() == port && (ip.is_unspecified() || super::conns::same(ip, a.ip())));
        hit.then(|| inode.parse().ok()).flatten()
    };
    table.lines().skip(1).filter_map(row).collect()
}

/// The process holding one of the socket `inodes`, and its name.
fn owner(inodes: &[u64]) -> Option<(u32, String)> {
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let holds = |pid: u32| -> bool {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()))
        })
    };
    let pids: Vec<u32> =
        std::fs::read_dir("/proc").ok()?.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    let name = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim_end().to_owned()).unwrap_or_default()
    };
    // Likeliest first: a process named like Caddy (or the docker-proxy in
    // front of one); every other process only if none of them holds it.
    let (likely, rest): (Vec<u32>, Vec<u32>) = pids.into_iter().partition(|&p| {
        let n = name(p);
        n.contains("caddy") || n == "docker-proxy"
    });
    likely.into_iter().chain(rest).find(|&p| holds(p)).map(|p| (p, name(p)))
}

/// The addresses a loopback admin `host` (and `port`) may be listening on.
pub(crate) fn loopback_addrs(host: &str, port: u16) -> Vec<SocketAddr> {
    match host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            vec![SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port), SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:07E3 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 20 4 30 10 -1
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1
   2: 0100007F:07E3 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0 20 4 30 10 -1
   3: 0200007F:07E4 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 444 1 0 20 4 30 10 -1
";

    #[test]
    fn finds_the_listener_on_the_admin_address_only() {
        let lo = |port| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        assert_eq!(listening_in(TCP, &[lo(2019)]), vec![111], "not the established connection to it");
        assert_eq!(listening_in(TCP, &[lo(80)]), vec![222], "a listener on 0.0.0.0 serves loopback too");
        assert_eq!(listening_in(TCP, &[lo(2020)]), Vec::<u64>::new(), "127.0.0.2 is another address");
        assert_eq!(listening_in("h\n garbage\n", &[lo(2019)]), Vec::<u64>::new());
    }

    #[test]
    fn a_listener_in_this_process_sees_this_hosts_directory() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(caddy_sees(&[addr], dir.path()), Ok(std::process::id()));
        drop(listener);
        let gone = caddy_sees(&[addr], dir.path()).expect_err("nobody listens any more");
        assert!(gone.contains("no socket of this host listens"), "{gone}");
    }
}
