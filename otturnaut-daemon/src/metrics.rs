//! `GET /metrics`, in Prometheus' text format (a dozen series: written out
//! here rather than through a metrics crate).

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the deploy duration histogram, in seconds.
const BUCKETS: [f64; 9] = [1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

#[derive(Debug, Default)]
pub struct Metrics {
    deployed: AtomicU64,
    failed: AtomicU64,
    rolled_back_to: AtomicU64,
    rollback_failed: AtomicU64,
    /// Failures that left something for `reconcile`.
    residue: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    duration_ms: AtomicU64,
    count: AtomicU64,
    restores: AtomicU64,
    pub docker_up: AtomicBool,
    pub caddy_up: AtomicBool,
}

impl Metrics {
    /// A deploy (or, with `rollback`, a rollback) ended.
    pub fn deploy(&self, rollback: bool, deployed: bool, residue: bool, took: Duration) {
        let counter = match (rollback, deployed) {
            (false, true) => &self.deployed,
            (false, false) => &self.failed,
            (true, true) => &self.rolled_back_to,
            (true, false) => &self.rollback_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if residue {
            self.residue.fetch_add(1, Ordering::Relaxed);
        }
        let secs = took.as_secs_f64();
        for (bound, n) in BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.duration_ms.fetch_add(u64::try_from(took.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Routes (or whole apps) a reconcile served again.
    pub fn restored(&self, n: u64) {
        self.restores.fetch_add(n, Ordering::Relaxed);
    }

    pub fn text(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let up = |b: &AtomicBool| u8::from(b.load(Ordering::Relaxed));
        let mut t = String::new();
        let _ = writeln!(t, "# HELP otturnaut_deploys_total Deploys run by this daemon, by result.");
        let _ = writeln!(t, "# TYPE otturnaut_deploys_total counter");
        let _ = writeln!(t, "otturnaut_deploys_total{{result=\"deployed\"}} {}", get(&self.deployed));
        let _ = writeln!(t, "otturnaut_deploys_total{{result=\"failed\"}} {}", get(&self.failed));
        let _ = writeln!(t, "# HELP otturnaut_rollbacks_total Rollbacks run by this daemon, by result.");
        let _ = writeln!(t, "# TYPE otturnaut_rollbacks_total counter");
        let _ = writeln!(t, "otturnaut_rollbacks_total{{result=\"deployed\"}} {}", get(&self.rolled_back_to));
        let _ = writeln!(t, "otturnaut_rollbacks_total{{result=\"failed\"}} {}", get(&self.rollback_failed));
        let _ =
            writeln!(t, "# HELP otturnaut_undo_residue_total Deploys and rollbacks whose undo left resources behind.");
        let _ = writeln!(t, "# TYPE otturnaut_undo_residue_total counter");
        let _ = writeln!(t, "otturnaut_undo_residue_total {}", get(&self.residue));
        let _ = writeln!(
            t,
            "# HELP otturnaut_deploy_duration_seconds How long deploys and rollbacks took, from the app's lock."
        );
        let _ = writeln!(t, "# TYPE otturnaut_deploy_duration_seconds histogram");
        for (bound, n) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(t, "otturnaut_deploy_duration_seconds_bucket{{le=\"{bound}\"}} {}", get(n));
        }
        let _ = writeln!(t, "otturnaut_deploy_duration_seconds_bucket{{le=\"+Inf\"}} {}", get(&self.count));
        let _ = writeln!(t, "otturnaut_deploy_duration_seconds_sum {}", get(&self.duration_ms) as f64 / 1000.0);
        let _ = writeln!(t, "otturnaut_deploy_duration_seconds_count {}", get(&self.count));
        let _ = writeln!(t, "# HELP otturnaut_reconcile_restores_total Repairs made by background reconciles.");
        let _ = writeln!(t, "# TYPE otturnaut_reconcile_restores_total counter");
        let _ = writeln!(t, "otturnaut_reconcile_restores_total {}", get(&self.restores));
        let _ = writeln!(t, "# HELP otturnaut_service_up Whether Docker and Caddy answered the last check.");
        let _ = writeln!(t, "# TYPE otturnaut_service_up gauge");
        let _ = writeln!(t, "otturnaut_service_up{{service=\"docker\"}} {}", up(&self.docker_up));
        let _ = writeln!(t, "otturnaut_service_up{{service=\"caddy\"}} {}", up(&self.caddy_up));
        t
    }
}
