//! `otturnaut logs`.

use std::io::Write;

use futures_util::StreamExt;
use otturnaut_core::ContainerId;
use otturnaut_steps::live_release;

use crate::args::GlobalArgs;
use crate::exit::{Exit, Fatal, Invalid};

/// The most lines `--tail` asks Docker for.
pub const MAX_TAIL: usize = 100_000;
use crate::output::Out;
use crate::{connect, input, print_fatal, settings};

pub async fn run(global: &GlobalArgs, app: &str, follow: bool, tail: usize) -> Exit {
    let out = Out::new(false);
    match logs(global, app, follow, tail, &out).await {
        Ok(exit) => exit,
        Err(fatal) => {
            print_fatal(&out, &fatal);
            fatal.exit
        }
    }
}

async fn logs(global: &GlobalArgs, app: &str, follow: bool, tail: usize, out: &Out) -> Result<Exit, Fatal> {
    let settings = settings(global)?;
    let app = input::app_id(app)?;
    if tail > MAX_TAIL {
        return Err(Invalid::new("--tail", format!("{tail} lines; at most {MAX_TAIL}")).into());
    }
    let agent = connect(&settings.agent).await?;
    let a = &agent.adapters;
    let live = live_release(a, &app).await.map_err(|e| Fatal::service(&format!("reading {app}'s live release"), &e))?;
    let container: ContainerId = match live {
        Some(r) => r.container,
        None => {
            let mut containers = a
                .runtime
                .list(Some(&app))
                .await
                .map_err(|e| Fatal::service(&format!("listing {app}'s containers"), &e))?;
            containers.sort_by(|x, y| (x.created, &x.deployment).cmp(&(y.created, &y.deployment)));
            let Some(newest) = containers.pop() else {
                return Err(Fatal::new(Exit::Failed, format!("{app} has no containers: it is not deployed")));
            };
            out.say(format!(
                "{app} has no live release; showing its newest container {} ({})",
                newest.name, newest.state
            ));
            newest.id
        }
    };

    // Streamed in both modes: a large --tail never sits in memory whole.
    let mut stdout = std::io::stdout().lock();
    let mut stream = agent.stream_logs(&container, tail, follow);
    while let Some(line) = stream.next().await {
        let line = line.map_err(|e| Fatal::service(&format!("reading {app}'s logs"), &e))?;
        if writeln!(stdout, "{line}").and_then(|()| if follow { stdout.flush() } else { Ok(()) }).is_err() {
            // The reader went away (e.g. `| head`): that is the end.
            break;
        }
    }
    let _ = stdout.flush();
    Ok(Exit::Ok)
}
