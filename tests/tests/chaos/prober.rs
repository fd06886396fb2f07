//! The background prober: a request through Caddy (with the app's `Host`)
//! every ~50 ms for the whole case, counting every answer that is not the
//! release that should be live.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otturnaut_tests::caddy_proc::get_via;
use tokio::task::JoinHandle;

const INTERVAL: Duration = Duration::from_millis(50);
const REQUEST_LIMIT: Duration = Duration::from_secs(3);

/// What an answer must be to count as good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// No release is live yet: record, count nothing.
    Anything,
    /// 2xx with this version as body; another version counts as "wrong".
    Version(String),
    /// The harness took Caddy (or Docker) away on purpose: record, count nothing.
    Paused,
}

/// What the prober saw.
#[derive(Clone, Debug, Default)]
pub struct Probes {
    pub total: usize,
    /// Non-2xx answers and failed requests while a version was expected.
    pub errors: usize,
    /// 2xx answers with another version than expected.
    pub wrong: usize,
    /// Answers in order, runs collapsed: `[("v1", 40), ("v2", 12)]`.
    pub trail: Vec<(String, usize)>,
}

impl Probes {
    fn record(&mut self, answer: String, expect: &Expect, ok_status: bool) {
        self.total += 1;
        if let Expect::Version(v) = expect {
            if !ok_status {
                self.errors += 1;
            } else if answer != *v {
                self.wrong += 1;
            }
        }
        match self.trail.last_mut() {
            Some((last, n)) if *last == answer => *n += 1,
            _ => self.trail.push((answer, 1)),
        }
    }

    /// `v1×40 → v2×12`
    pub fn trail_text(&self) -> String {
        self.trail.iter().map(|(a, n)| format!("{a}×{n}")).collect::<Vec<_>>().join(" → ")
    }

    /// The distinct answers seen, in order of first appearance.
    pub fn answers(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (a, _) in &self.trail {
            if !out.contains(&a.as_str()) {
                out.push(a);
            }
        }
        out
    }
}

#[derive(Debug)]
pub struct Prober {
    expect: Arc<Mutex<Expect>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<Probes>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Prober {
    pub fn start(listen: &str, host: &str, expect: Expect) -> Prober {
        let expect = Arc::new(Mutex::new(expect));
        let stop = Arc::new(AtomicBool::new(false));
        let (listen, host) = (listen.to_owned(), host.to_owned());
        let (shared, stopped) = (expect.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut probes = Probes::default();
            while !stopped.load(Ordering::SeqCst) {
                let answer = tokio::time::timeout(REQUEST_LIMIT, get_via(&listen, &host)).await;
                // Read after the answer: a request that spanned a change of
                // expectation is judged by the newer one.
                let expect = lock(&shared).clone();
                let (text, ok) = match answer {
                    Ok(Ok((status, body))) if (200..300).contains(&status) => {
                        let body = body.trim();
                        (if body.is_empty() { "(empty 2xx)".to_owned() } else { body.to_owned() }, true)
                    }
                    Ok(Ok((status, _))) => (format!("HTTP {status}"), false),
                    Ok(Err(e)) => (format!("error: {}", e.kind()), false),
                    Err(_) => ("no answer in 3s".to_owned(), false),
                };
                if expect == Expect::Paused {
                    probes.record(format!("(paused) {text}"), &expect, ok);
                } else {
                    probes.record(text, &expect, ok);
                }
                tokio::time::sleep(INTERVAL).await;
            }
            probes
        });
        Prober { expect, stop, task }
    }

    pub fn expect(&self, expect: Expect) {
        *lock(&self.expect) = expect;
    }

    pub async fn stop(self) -> Probes {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap_or_default()
    }
}
