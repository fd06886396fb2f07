//! Host ports for new containers, picked from a range.
//!
//! A port is handed out only if no managed container that is not stopped
//! holds it (retained releases are stopped), nothing else
//! on the host has it bound, and no other deployment of this process has it
//! reserved. Separate processes may still race for the same port between our
//! check and Docker's bind; that is resolved downstream: Docker answers
//! `PortTaken`, and the pipeline retries with that port in `avoid`. Starting
//! each scan at a random offset makes such races unlikely in the first place.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use otturnaut_core::traits::{ContainerRuntime, PortAllocator};
use otturnaut_core::{DeploymentId, Error, HostPort, PortRange, Result};

/// [`PortAllocator`] over a [`PortRange`], checking Docker and the kernel.
pub struct PortPool {
    range: PortRange,
    runtime: Arc<dyn ContainerRuntime>,
    /// Ports reserved by deployments of this process, not yet released.
    reserved: Arc<Mutex<HashMap<DeploymentId, HostPort>>>,
}

impl std::fmt::Debug for PortPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortPool")
            .field("range", &self.range)
            .field("reserved", &lock(&self.reserved).len())
            .finish_non_exhaustive()
    }
}

impl PortPool {
    /// A pool handing out ports of `range`, skipping those `runtime`'s containers publish.
    pub fn new(range: PortRange, runtime: Arc<dyn ContainerRuntime>) -> Self {
        PortPool { range, runtime, reserved: Arc::default() }
    }

    /// The ports it hands out.
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// The port `owner` holds, if any.
    pub fn reserved_by(&self, owner: &DeploymentId) -> Option<HostPort> {
        lock(&self.reserved).get(owner).copied()
    }
}

/// A poisoned lock only means another allocation panicked; the map is still
/// consistent (every change is a single insert or remove).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl PortAllocator for PortPool {
    async fn allocate(&self, owner: &DeploymentId, avoid: &[HostPort]) -> Result<HostPort> {
        // A stopped container holds no port: retained releases are stopped
        // (and never started again: a rollback starts a new container).
        let mut skip: HashSet<HostPort> = self
            .runtime
            .list(None)
            .await?
            .into_iter()
            .filter(|c| !matches!(c.state.as_str(), "exited" | "dead"))
            .filter_map(|c| c.host_port)
            .collect();
        skip.extend(avoid.iter().copied());

        let range = self.range;
        let reserved = Arc::clone(&self.reserved);
        let owner = owner.clone();
        // Probing binds sockets, up to two per port across the whole range.
        tokio::task::spawn_blocking(move || {
            let mut reserved = lock(&reserved);
            // A deployment holds at most one port: a retry replaces its
            // earlier pick (which the caller lists in `avoid` if it was taken).
            reserved.remove(&owner);
            let taken: HashSet<HostPort> = reserved.values().copied().collect();
            let port =
                scan(range, random_offset(range), |p| !skip.contains(&p) && !taken.contains(&p) && free_on_host(p))
                    .ok_or(Error::PortsExhausted(range))?;
            reserved.insert(owner, port);
            Ok(port)
        })
        .await
        .map_err(|e| Error::failed("allocating a host port", e))?
    }

    async fn release(&self, owner: &DeploymentId) -> Result<()> {
        lock(&self.reserved).remove(owner);
        Ok(())
    }
}

/// The first port of `range` that `usable` accepts, going round from `offset`.
fn scan(range: PortRange, offset: usize, mut usable: impl FnMut(HostPort) -> bool) -> Option<HostPort> {
    let ports: Vec<HostPort> = range.iter().collect();
    let len = ports.len();
    (0..len).map(|i| ports[(offset + i) % len]).find(|&p| usable(p))
}

/// A per-call random start, so two agents on one host rarely probe the same
/// port first.
fn random_offset(range: PortRange) -> usize {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    // RandomState is seeded randomly per process.
    let h = std::collections::hash_map::RandomState::new().hash_one((std::process::id(), now));
    (h % range.len() as u64) as usize
}

/// True if nothing on the host has `port` bound, on loopback or on all
/// interfaces. Docker publishes on 0.0.0.0 (and [::]), so a port bound on
/// either family clashes.
fn free_on_host(port: HostPort) -> bool {
    let p = port.get();
    let v4 =
        TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok() && TcpListener::bind((Ipv4Addr::UNSPECIFIED, p)).is_ok();
    // A host without IPv6 cannot have the port bound there.
    v4 && match TcpListener::bind((Ipv6Addr::UNSPECIFIED, p)) {
        Ok(_) => true,
        Err(e) => e.kind() != io::ErrorKind::AddrInUse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_wraps_around_from_the_offset() {
        let range = PortRange::new(20000, 20004).expect("range");
        let got = scan(range, 3, |p| p.get() != 20003 && p.get() != 20004);
        assert_eq!(got.map(HostPort::get), Some(20000));
        assert_eq!(scan(range, 2, |_| false), None);
        assert!(random_offset(range) < 5);
    }

    #[test]
    fn a_bound_port_is_not_free() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = HostPort::try_from(l.local_addr().expect("addr").port()).expect("port");
        assert!(!free_on_host(port));
        drop(l);
        assert!(free_on_host(port));
    }
}
