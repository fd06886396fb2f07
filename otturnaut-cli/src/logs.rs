//! `otturnaut logs`.

use std::io::Write;

use futures_util::StreamExt;
use otturnaut_core::ContainerId;
use otturnaut_steps::live_release;

use crate::args::GlobalArgs;
use crate::exit::{Exit, Fatal};
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

    let mut stdout = std::io::stdout().lock();
    if follow {
        let mut stream = agent.docker.follow_logs(&container, tail);
        while let Some(line) = stream.next().await {
            let line = line.map_err(|e| Fatal::service(&format!("following {app}'s logs"), &e))?;
            if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
                // The reader went away (e.g. `| head`): that is the end.
                break;
            }
        }
    } else {
        let lines =
            a.runtime.logs(&container, tail).await.map_err(|e| Fatal::service(&format!("reading {app}'s logs"), &e))?;
        for line in lines {
            if writeln!(stdout, "{line}").is_err() {
                break;
            }
        }
    }
    Ok(Exit::Ok)
}
