//! Judging one deploy: what must hold after it failed (everything as before,
//! or only the residue it reported, which reconcile then clears) or after it
//! succeeded (only the new release, or reported residue reconcile clears).

use otturnaut_core::AppId;
use otturnaut_steps::ResidueKind;

use super::cli::{Outcome, Residue};
use super::prober::Probes;
use super::snapshot::{Change, Item, Snapshot, diff};
use super::world::{World, via_caddy};

/// The release an app had live before a case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Live {
    pub version: String,
    pub deployment: String,
    pub port: u16,
}

impl Live {
    /// Reads the live release from a snapshot; `version` is what it serves.
    pub fn from_snapshot(snap: &Snapshot, version: &str) -> Option<Live> {
        snap.live()
            .and_then(|c| Some(Live { version: version.to_owned(), deployment: c.deployment.clone(), port: c.port? }))
    }
}

/// The other fixture version: what a redeploy of `live` deploys.
pub fn next_version(live: Option<&Live>) -> &'static str {
    match live {
        Some(l) if l.version == "v1" => "v2",
        _ => "v1",
    }
}

/// What one case came to.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub problems: Vec<String>,
    pub notes: Vec<String>,
    /// Things of the app left behind by the deploy (reported as residue or not).
    pub left: usize,
    /// …and after `otturnaut reconcile APP`.
    pub left_after_reconcile: usize,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn problem(&mut self, p: impl Into<String>) {
        self.problems.push(p.into());
    }

    /// Takes in what a later check found: its problems and notes, and its
    /// count of what was left.
    pub fn absorb(&mut self, checked: Verdict) {
        self.problems.extend(checked.problems);
        self.notes.extend(checked.notes);
        self.left = checked.left;
        self.left_after_reconcile = checked.left_after_reconcile;
    }

    pub fn orphans_text(&self) -> String {
        if self.left == 0 { "0".to_owned() } else { format!("{}→{}", self.left, self.left_after_reconcile) }
    }
}

/// Does a residue entry account for this leftover?
fn covers(r: &Residue, item: &Item) -> bool {
    let kind_ok = match item.kind {
        "container" => r.kind == Some(ResidueKind::Container),
        "image" => r.kind == Some(ResidueKind::Image),
        "route" => r.kind == Some(ResidueKind::Route),
        "file" => r.kind == Some(ResidueKind::SourceDir) && item.text.starts_with("src/"),
        _ => false,
    };
    // Residue names its resource by container name, image tag, deployment
    // or Docker id.
    let by_id = item.id.as_deref().is_some_and(|id| r.what.contains(id.trim_start_matches("sha256:")));
    let deployment_ok = match &item.deployment {
        Some(d) if item.kind != "route" => r.what.contains(d.as_str()) || by_id,
        _ => true,
    };
    kind_ok && deployment_ok
}

/// The residue kinds a harness can see in the outside world after the CLI
/// exited (a port reservation lives in the CLI process and dies with it).
fn observable(r: &Residue) -> bool {
    matches!(r.kind, Some(ResidueKind::Container | ResidueKind::Image | ResidueKind::Route | ResidueKind::SourceDir))
}

/// Leftovers must be exactly what the CLI said it left (in-doubt residue may
/// not exist: the step that would have created it failed).
fn compare_with_residue(v: &mut Verdict, leftovers: &[Item], residue: &[Residue]) {
    for item in leftovers {
        if !residue.iter().any(|r| covers(r, item)) {
            v.problem(format!("left behind without being reported: {item}"));
        }
    }
    for r in residue.iter().filter(|r| observable(r) && !r.in_doubt) {
        if !leftovers.iter().any(|i| covers(r, i)) {
            v.problem(format!("reported as left behind but not found: {:?} ({})", r.kind, r.what));
        }
    }
}

fn check_prober(v: &mut Verdict, probes: Option<&Probes>, live: Option<&Live>, may_flap: bool, new_version: &str) {
    let (Some(p), Some(live)) = (probes, live) else {
        return;
    };
    if p.errors > 0 {
        v.problem(format!("prober: {} of {} requests failed: {}", p.errors, p.total, p.trail_text()));
    }
    if p.wrong > 0 {
        let only_new = p.answers().iter().all(|a| *a == live.version || *a == new_version);
        if !(may_flap && only_new) {
            v.problem(format!("prober: {} answers were not {}: {}", p.wrong, live.version, p.trail_text()));
        } else {
            v.notes.push(format!("new release answered {} times before the rollback", p.wrong));
        }
    }
}

/// After a deploy that must have failed and rolled back.
#[allow(clippy::too_many_arguments)]
pub async fn failed(
    world: &World,
    app: &AppId,
    before: &Snapshot,
    live: Option<&Live>,
    out: &Outcome,
    step: Option<&str>,
    may_flap: bool,
    probes: Option<&Probes>,
    new_version: &str,
) -> anyhow::Result<Verdict> {
    let mut v = Verdict::default();
    let residue = out.residue();
    let want = if residue.is_empty() { 1 } else { 3 };
    if out.code != Some(want) {
        v.problem(format!("expected exit {want}, got {}", out.summary()));
    }
    if out.str_field("result") != Some("failed") {
        v.problem(format!("no {{\"result\":\"failed\"}} object: {}", out.summary()));
    }
    if let Some(step) = step {
        let named = out.str_field("step") == Some(step);
        if !named {
            v.problem(format!(
                "error does not name step {step}: step={:?}, error={:?}",
                out.field("step"),
                out.error()
            ));
        }
    }
    if out.error().is_empty() {
        v.problem("no error message");
    }
    let after = world.observer.snapshot(app).await?;
    if let Some(p) = after.upstream_problem() {
        v.problem(p);
    }
    let changes = diff(before, &after);
    let (added, removed): (Vec<Change>, Vec<Change>) = changes.into_iter().partition(|c| c.added);
    for c in &removed {
        v.problem(format!("the deploy changed what was there before: {c}"));
    }
    let leftovers: Vec<Item> = added.into_iter().map(|c| c.item).collect();
    v.left = leftovers.len();
    compare_with_residue(&mut v, &leftovers, &residue);
    if !residue.is_empty() {
        let kinds: Vec<&str> = residue.iter().map(|r| r.kind.map_or("unknown", ResidueKind::name)).collect();
        v.notes.push(format!("residue: {}", kinds.join(", ")));
    }
    if let Some(live) = live {
        match world.version_at(live.port).await {
            Some(got) if got == live.version => {}
            other => v.problem(format!("old release on port {} answers {other:?}, not {}", live.port, live.version)),
        }
        match via_caddy(world, app).await {
            Some((200, body)) if body == live.version => {}
            other => v.problem(format!("through Caddy the app answers {other:?}, not {}", live.version)),
        }
    }
    check_prober(&mut v, probes, live, may_flap, new_version);
    if !leftovers.is_empty() || !residue.is_empty() {
        reconcile_back_to(world, app, before, &mut v).await?;
    }
    Ok(v)
}

/// Runs `otturnaut reconcile APP` and checks the app is back to `before`.
async fn reconcile_back_to(world: &World, app: &AppId, before: &Snapshot, v: &mut Verdict) -> anyhow::Result<()> {
    let rec = world.reconcile(app).await?;
    if rec.code != Some(0) {
        v.problem(format!("reconcile failed: {}", rec.summary()));
    }
    let again = world.observer.snapshot(app).await?;
    if let Some(p) = again.upstream_problem() {
        v.problem(format!("after reconcile: {p}"));
    }
    let rest = diff(before, &again);
    v.left_after_reconcile = rest.len();
    for c in rest {
        v.problem(format!("after reconcile: {c}"));
    }
    Ok(())
}

/// After a deploy that must have succeeded: returns the new live release.
#[allow(clippy::too_many_arguments)]
pub async fn deployed(
    world: &World,
    app: &AppId,
    old: Option<&Live>,
    out: &Outcome,
    new_version: &str,
    probes: Option<&Probes>,
    v: &mut Verdict,
) -> anyhow::Result<Option<Live>> {
    if out.code != Some(0) || out.str_field("result") != Some("deployed") {
        v.problem(format!("expected a successful deploy, got {}", out.summary()));
    }
    let after = world.observer.snapshot(app).await?;
    if let Some(p) = after.upstream_problem() {
        v.problem(p);
    }
    let new = Live::from_snapshot(&after, new_version);
    match (&new, out.deployment()) {
        (Some(n), Some(d)) if n.deployment == d => {}
        (n, d) => {
            v.problem(format!("live release is {:?}, not the new deployment {d:?}", n.as_ref().map(|n| &n.deployment)))
        }
    }
    if let Some(n) = &new {
        match world.version_at(n.port).await {
            Some(got) if got == new_version => {}
            other => v.problem(format!("new release on port {} answers {other:?}, not {new_version}", n.port)),
        }
    }
    match via_caddy(world, app).await {
        Some((200, body)) if body == new_version => {}
        other => v.problem(format!("through Caddy the app answers {other:?}, not {new_version}")),
    }
    let residue = out.residue();
    let orphans = after.orphans();
    v.left = orphans.len();
    compare_with_residue(v, &orphans, &residue);
    if !residue.is_empty() {
        let kinds: Vec<&str> = residue.iter().map(|r| r.kind.map_or("unknown", ResidueKind::name)).collect();
        v.notes.push(format!("residue: {}", kinds.join(", ")));
    }
    let warnings = out.warnings();
    if !warnings.is_empty() {
        v.notes.push(format!("{} warning(s)", warnings.len()));
    }
    if let (Some(p), Some(old)) = (probes, old) {
        if p.errors > 0 {
            v.problem(format!("prober: {} of {} requests failed: {}", p.errors, p.total, p.trail_text()));
        }
        if let Some(bad) = p.answers().into_iter().find(|a| *a != old.version && *a != new_version) {
            v.problem(format!("prober saw {bad:?}: {}", p.trail_text()));
        }
    }
    if !orphans.is_empty() {
        let rec = world.reconcile(app).await?;
        if rec.code != Some(0) {
            v.problem(format!("reconcile failed: {}", rec.summary()));
        }
        let again = world.observer.snapshot(app).await?;
        if let Some(p) = again.upstream_problem() {
            v.problem(format!("after reconcile: {p}"));
        }
        let rest = again.orphans();
        v.left_after_reconcile = rest.len();
        for item in rest {
            v.problem(format!("after reconcile still there: {item}"));
        }
        if again.live().map(|c| &c.deployment) != new.as_ref().map(|n| &n.deployment) {
            v.problem("reconcile changed the live release");
        }
    }
    Ok(new)
}
