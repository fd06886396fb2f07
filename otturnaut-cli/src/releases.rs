//! `otturnaut releases` and `otturnaut prune`.

use std::collections::BTreeSet;

use otturnaut_adapters::status::{release_json, rfc3339};
use otturnaut_core::ReleaseState;
use otturnaut_steps::{RetryPolicy, apps_with_resources, list_releases};
use serde_json::json;

use crate::args::GlobalArgs;
use crate::exit::{Exit, Fatal};
use crate::output::Out;
use crate::{connect, input, print_fatal, settings, take_lock};
use otturnaut_adapters::lock;

pub async fn releases(global: &GlobalArgs, app: &str, json: bool) -> Exit {
    let out = Out::new(json);
    match run_releases(global, app, &out).await {
        Ok(exit) => exit,
        Err(fatal) => {
            print_fatal(&out, &fatal);
            fatal.exit
        }
    }
}

async fn run_releases(global: &GlobalArgs, app: &str, out: &Out) -> Result<Exit, Fatal> {
    let settings = settings(global)?;
    let app = input::app_id(app)?;
    let agent = connect(&settings.agent).await?;
    let all = list_releases(&agent.adapters, &app)
        .await
        .map_err(|e| Fatal::service(&format!("listing the releases of {app}"), &e))?;
    if out.is_json() {
        out.json_line(&all.iter().map(release_json).collect::<Vec<_>>());
        return Ok(Exit::Ok);
    }
    if all.is_empty() {
        println!("{app} has no releases");
        return Ok(Exit::Ok);
    }
    let mut lines = vec![format!("{:<26}  {:<8}  {:<20}  {:<12}  IMAGE", "DEPLOYMENT", "STATE", "CREATED", "COMMIT")];
    for r in &all {
        let state = match r.state {
            ReleaseState::Live => "live",
            ReleaseState::Retained => "kept",
        };
        let commit: String = r.commit.as_ref().map_or_else(|| "-".into(), |c| c.as_str().chars().take(12).collect());
        let mut line =
            format!("{:<26}  {state:<8}  {:<20}  {commit:<12}  {}", r.deployment, rfc3339(r.created), r.image);
        if let Some(of) = &r.rollback_of {
            line.push_str(&format!("  (rollback to {of})"));
        }
        lines.push(line);
    }
    println!("{}", lines.join("\n"));
    Ok(Exit::Ok)
}

pub async fn prune(global: &GlobalArgs, app: Option<&str>, json: bool) -> Exit {
    let out = Out::new(json);
    match run_prune(global, app, &out).await {
        Ok(exit) => exit,
        Err(fatal) => {
            print_fatal(&out, &fatal);
            if out.is_json() {
                out.json_line(&json!({
                    "result": "failed", "command": "prune", "app": app, "done": [], "residue": [],
                    "error": fatal.message, "exit_code": fatal.exit.code(),
                }));
            }
            fatal.exit
        }
    }
}

async fn run_prune(global: &GlobalArgs, only: Option<&str>, out: &Out) -> Result<Exit, Fatal> {
    let settings = settings(global)?;
    let only = only.map(input::app_id).transpose()?;
    crate::workdir::check_existing(&settings.agent.work_dir)?;
    let agent = connect(&settings.agent).await?;
    let mut locks = Vec::new();
    let mut apps = BTreeSet::new();
    match &only {
        Some(app) => {
            locks.push(take_lock(out, &settings, app, "prune").await?);
            apps.insert(app.clone());
        }
        None => {
            crate::workdir::prepare(&settings.agent.work_dir)?;
            let all = apps_with_resources(&agent.adapters)
                .await
                .map_err(|e| Fatal::service("listing Otturnaut's apps", &e))?;
            for app in all {
                // An app with a deploy in progress is left for the next prune.
                if let Ok(Ok(lock)) = lock::try_lock(&settings.locks_dir(), &app, "prune") {
                    locks.push(lock);
                    apps.insert(app);
                } else {
                    out.human(format!("skipped {app}: a deploy of it is in progress"));
                }
            }
        }
    }
    let report = otturnaut_steps::prune(&agent.adapters, &apps, only.is_none(), settings.keep, RetryPolicy::default())
        .await
        .map_err(|e| Fatal::service("pruning", &e))?;
    drop(locks);
    // The build cache is the daemon's, not an app's: pruned with every app.
    let cache = match only {
        Some(_) => None,
        None => Some(agent.docker.prune_build_cache(otturnaut_adapters::docker::BUILD_CACHE_KEEP).await),
    };
    let cache_freed = match &cache {
        Some(Ok(bytes)) => Some(*bytes),
        _ => None,
    };
    let cache_error = match &cache {
        Some(Err(e)) => Some(e.to_string()),
        _ => None,
    };
    let freed_bytes = report.freed_bytes + cache_freed.unwrap_or(0);
    let done: Vec<&String> = report.apps.iter().flat_map(|r| &r.done).collect();
    let residue: Vec<_> = report.apps.iter().flat_map(|r| r.residue.iter().cloned()).collect();
    let exit = if residue.is_empty() { Exit::Ok } else { Exit::Residue };
    let freed = humansize(freed_bytes);
    if out.is_json() {
        out.json_line(&json!({
            "result": if exit == Exit::Ok { "pruned" } else { "failed" },
            "app": only,
            "keep": settings.keep,
            "done": done,
            "dangling_images": report.dangling,
            "freed_bytes": freed_bytes,
            "build_cache_freed_bytes": cache_freed,
            "build_cache_error": cache_error,
            "residue": residue,
            "exit_code": exit.code(),
        }));
        return Ok(exit);
    }
    let p = out.paint;
    if done.is_empty() && report.dangling.is_empty() && cache_freed.unwrap_or(0) == 0 {
        out.say(format!("{} nothing to prune (keep = {})", p.green("✓"), settings.keep));
    } else {
        out.say(format!("{} pruned (keep = {}), {freed} freed", p.green("✓"), settings.keep));
        for d in &done {
            out.say(format!("  {} {d}", p.dim("·")));
        }
        if !report.dangling.is_empty() {
            out.say(format!(
                "  {} removed {} dangling image(s) of Otturnaut's builds",
                p.dim("·"),
                report.dangling.len()
            ));
        }
    }
    if let Some(bytes) = cache_freed.filter(|b| *b > 0) {
        let keep = humansize(otturnaut_adapters::docker::BUILD_CACHE_KEEP);
        out.say(format!("  {} build cache pruned to {keep}: {} freed", p.dim("·"), humansize(bytes)));
    }
    if let Some(e) = &cache_error {
        out.say(format!("  {} could not prune the build cache: {e}", p.yellow("!")));
    }
    for r in &residue {
        out.say(format!("  {} could not remove {r}; run `otturnaut prune` again", p.red("✗")));
    }
    Ok(exit)
}

fn humansize(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_docker_prints_them() {
        assert_eq!(humansize(0), "0 B");
        assert_eq!(humansize(999), "999 B");
        assert_eq!(humansize(1_500_000), "1.5 MB");
        assert_eq!(humansize(u64::MAX), "18446744.1 TB");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
