//! The report: Markdown tables (printed, and written for RELIABILITY.md).

use std::fmt::Write as _;
use std::time::Duration;

use super::cases::{Row, Scenario};
use super::crash::{Recover, TrialRow};
use super::infra::InfraRow;

#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub command: String,
    pub rows: Vec<Row>,
    pub trials: Vec<TrialRow>,
    pub infra: Vec<InfraRow>,
    /// Harness errors (a case that could not be run at all).
    pub errors: Vec<String>,
    pub took: Duration,
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn verdict(passed: bool) -> &'static str {
    if passed { "pass" } else { "**FAIL**" }
}

impl Report {
    pub fn failures(&self) -> usize {
        self.rows.iter().filter(|r| !r.verdict.passed()).count()
            + self.trials.iter().filter(|t| !t.problems.is_empty()).count()
            + self.infra.iter().filter(|r| !r.verdict.passed()).count()
            + self.errors.len()
    }

    pub fn summary(&self) -> String {
        let fails = |n: usize, total: usize| format!("{}/{} passed", total - n, total);
        format!(
            "fault cases {}, crash trials {}, infrastructure {}, harness errors {}; seed {}; {:.1} min",
            fails(self.rows.iter().filter(|r| !r.verdict.passed()).count(), self.rows.len()),
            fails(self.trials.iter().filter(|t| !t.problems.is_empty()).count(), self.trials.len()),
            fails(self.infra.iter().filter(|r| !r.verdict.passed()).count(), self.infra.len()),
            self.errors.len(),
            self.seed,
            self.took.as_secs_f64() / 60.0
        )
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "Seed {} — reproduce with `{}`.\n", self.seed, self.command);
        let _ = writeln!(md, "Result: {}.\n", self.summary());
        if !self.rows.is_empty() {
            let _ = writeln!(md, "#### Fault points\n");
            let _ = writeln!(
                md,
                "Each cell: result · exit code · prober · orphans · time. Prober: failed requests / requests \
                 through Caddy; `+n new`: answers from the new release (normal once a deploy commits; before a \
                 rollback, allowed only for faults after the route switch). Orphans: what the deploy left, all \
                 of it reported as residue → what is left after `otturnaut reconcile APP`.\n"
            );
            let _ = writeln!(
                md,
                "| group | fault point | fresh app | app with a live release | rollback to a kept release | notes |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|---|");
            let mut labels: Vec<(String, &'static str)> = Vec::new();
            for r in &self.rows {
                let key = (r.case.label(), r.case.group);
                if !labels.contains(&key) {
                    labels.push(key);
                }
            }
            for (label, group) in &labels {
                let of = |scenario: Scenario| {
                    self.rows.iter().find(|r| r.case.label() == *label && r.case.scenario == scenario)
                };
                let text = |r: Option<&Row>| {
                    r.map_or("–".to_owned(), |r| {
                        format!(
                            "{} · {} · {} · {} · {:.1}s",
                            verdict(r.verdict.passed()),
                            r.exit,
                            r.probes,
                            r.verdict.orphans_text(),
                            r.took.as_secs_f64()
                        )
                    })
                };
                let mut notes = Vec::new();
                for r in [of(Scenario::Fresh), of(Scenario::Live), of(Scenario::Rollback)].into_iter().flatten() {
                    let mut n = r.verdict.problems.clone();
                    n.extend(r.verdict.notes.iter().cloned());
                    if !n.is_empty() {
                        notes.push(format!("{}: {}", r.case.scenario.name(), n.join(", ")));
                    }
                }
                let _ = writeln!(
                    md,
                    "| {group} | `{}` | {} | {} | {} | {} |",
                    cell(label),
                    text(of(Scenario::Fresh)),
                    text(of(Scenario::Live)),
                    text(of(Scenario::Rollback)),
                    cell(&notes.join("; "))
                );
            }
        }
        if !self.trials.is_empty() {
            let _ = writeln!(md, "\n#### Crash trials (SIGKILL)\n");
            let _ = writeln!(
                md,
                "| # | deploy | kill point | last event before death | recovery | orphans after kill | live after | prober | time | result |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
            for t in &self.trials {
                let kind = t.trial.kind();
                let recovery = match t.trial.recover {
                    Recover::Reconcile => "reconcile",
                    Recover::NextDeploy => "next deploy",
                    Recover::CaddyRestartThenReconcile => "Caddy restarted empty, reconcile",
                };
                let point = if t.killed {
                    t.trial.kill.text()
                } else {
                    format!("{} (had already exited)", t.trial.kill.text())
                };
                let result = if t.problems.is_empty() {
                    "pass".to_owned()
                } else {
                    format!("**FAIL**: {}", cell(&t.problems.join("; ")))
                };
                let _ = writeln!(
                    md,
                    "| {} | {kind} | {point} | {} | {recovery} | {} | {} | {} | {:.1}s | {result} |",
                    t.trial.n,
                    t.last_event,
                    t.left_by_kill,
                    t.live_after,
                    t.prober,
                    t.took.as_secs_f64()
                );
            }
        }
        if !self.infra.is_empty() {
            let _ = writeln!(md, "\n#### Infrastructure faults\n");
            let _ = writeln!(md, "| case | result | exit | prober | orphans | time | notes |");
            let _ = writeln!(md, "|---|---|---|---|---|---|---|");
            for r in &self.infra {
                let mut notes = r.verdict.problems.clone();
                notes.extend(r.verdict.notes.iter().cloned());
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {:.1}s | {} |",
                    r.name,
                    verdict(r.verdict.passed()),
                    r.exit,
                    r.probes,
                    r.verdict.orphans_text(),
                    r.took.as_secs_f64(),
                    cell(&notes.join("; "))
                );
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(md, "\n#### Harness errors\n");
            for e in &self.errors {
                let _ = writeln!(md, "- {}", cell(e));
            }
        }
        md
    }
}
