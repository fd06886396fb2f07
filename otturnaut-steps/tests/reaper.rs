//! The reaper performs the undos of dropped deploys: one deployment's in
//! reverse order of acquisition, different deployments' concurrently.

use std::sync::Arc;
use std::time::Duration;

use otturnaut_core::faults::{Call, Fault, FaultMode, Phase};
use otturnaut_core::testing::Fake;
use otturnaut_core::{AppId, ContainerPort, DeploySpec, DeploymentId, EventSink, Source};
use otturnaut_steps::{Context, Fetched, Reaper, RetryPolicy};

mod common;

fn spec(app: &AppId) -> DeploySpec {
    let source = Source::Git {
        url: "https://example.com/app.git".parse().expect("url"),
        git_ref: Default::default(),
        dockerfile: Default::default(),
        build_args: Default::default(),
        ssh_key: None,
        build_secrets: Default::default(),
    };
    DeploySpec::new(app.clone(), source, ContainerPort::try_from(8080).expect("port"))
}

fn context(fake: &Fake, reaper: &Reaper, retry: RetryPolicy, app: &str) -> Arc<Context> {
    Arc::new(Context {
        adapters: common::adapters(fake),
        events: EventSink::discard(),
        reaper: reaper.clone(),
        retry,
        spec: spec(&app.parse().expect("app id")),
        deployment: DeploymentId::generate(),
    })
}

// A hung undo of one deployment (a minute until its attempt times out) does
// not hold up another deployment's: with one undo at a time, the second
// deployment's outcomes would all come after the first's.
#[tokio::test(start_paused = true)]
async fn a_hung_undo_holds_up_only_its_own_deployment() {
    let fake = Fake::new();
    fake.fail(Fault::new(Call::ReleasePort, Phase::Before, FaultMode::Hang));
    let retry = RetryPolicy { attempt_timeout: Duration::from_secs(60), ..RetryPolicy::immediate(2) };
    let reaper = Reaper::spawn(common::adapters(&fake), EventSink::discard(), retry);

    let slow = context(&fake, &reaper, retry, "slow");
    let held = Fetched::fetch(slow.clone()).await.expect("fetch").build().await.expect("build");
    let held = held.allocate_port(None).await.expect("allocate");
    let quick = context(&fake, &reaper, retry, "quick");
    let built = Fetched::fetch(quick.clone()).await.expect("fetch").build().await.expect("build");
    // Handed over in this order: the slow deployment's three undos, then the quick one's two.
    drop(held);
    drop(built);
    let report = reaper.flush().await;

    assert!(report.is_clean(), "{:?}", report.residue);
    let of = |ctx: &Context| -> Vec<&str> {
        report
            .outcomes
            .iter()
            .filter(|o| o.app == ctx.spec.app && o.deployment == ctx.deployment)
            .map(|o| o.action.as_str())
            .collect()
    };
    assert_eq!(report.outcomes.len(), 5, "{:?}", report.outcomes);
    let slow_actions = of(&slow);
    assert_eq!(slow_actions.len(), 3, "{:?}", report.outcomes);
    assert!(
        slow_actions[0].starts_with("release the host port"),
        "reverse order within a deployment: {slow_actions:?}"
    );
    assert!(slow_actions[1].starts_with("remove image"), "{slow_actions:?}");
    assert!(slow_actions[2].starts_with("remove source"), "{slow_actions:?}");
    assert_eq!(of(&quick).len(), 2, "{:?}", report.outcomes);
    let first = &report.outcomes[0];
    assert_eq!(
        (&first.app, &first.deployment),
        (&quick.spec.app, &quick.deployment),
        "the quick deployment's undos finished first: {:?}",
        report.outcomes
    );
    assert_eq!(report.outcomes[2].app, slow.spec.app, "{:?}", report.outcomes);
    assert_eq!(report.outcomes[2].attempts, 2, "the hung attempt timed out and was retried");
    assert!(fake.world().sources.is_empty() && fake.world().images.is_empty() && fake.world().ports.is_empty());
}
