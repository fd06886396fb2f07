//! Deploys of one app never interleave; different apps run concurrently.

use otturnaut_core::faults::Call;
use otturnaut_core::testing::Fake;
use otturnaut_core::{AppId, ContainerPort, DeploySpec, EventSink, Source};
use otturnaut_steps::{BlueGreen, RetryPolicy, Strategy};

mod common;

fn spec(app: &str) -> DeploySpec {
    let app: AppId = app.parse().expect("app id");
    let source = Source::Image { reference: "prebuilt:1".parse().expect("image") };
    DeploySpec::new(app, source, ContainerPort::try_from(8080).expect("port"))
}

/// Positions of the first and last call of each deploy, in call order.
fn spans(calls: &[Call]) -> Vec<(usize, usize)> {
    let starts = calls.iter().enumerate().filter(|(_, c)| **c == Call::EnsureImage).map(|(i, _)| i);
    let ends = calls.iter().enumerate().filter(|(_, c)| **c == Call::RecordState).map(|(i, _)| i);
    starts.zip(ends).collect()
}

#[tokio::test]
async fn same_app_deploys_run_one_after_the_other() {
    let fake = Fake::new();
    let bg = BlueGreen::with_retry(common::adapters(&fake), RetryPolicy::immediate(1));
    let events = EventSink::discard();
    let (a, b) = tokio::join!(bg.execute(spec("shop"), &events), bg.execute(spec("shop"), &events));
    let (a, b) = (a.expect("first"), b.expect("second"));
    let spans = spans(&fake.calls());
    assert_eq!(spans.len(), 2);
    assert!(spans[0].1 < spans[1].0, "second deploy started before the first committed: {:?}", fake.calls());
    // The second is a normal blue-green redeploy of the first.
    let (first, second) = if a.previous.is_none() { (a, b) } else { (b, a) };
    assert_eq!(second.previous.map(|p| p.deployment), Some(first.release.deployment));
}

#[tokio::test]
async fn different_apps_deploy_concurrently() {
    let fake = Fake::new();
    let bg = BlueGreen::with_retry(common::adapters(&fake), RetryPolicy::immediate(1));
    let events = EventSink::discard();
    let (a, b) = tokio::join!(bg.execute(spec("shop"), &events), bg.execute(spec("blog"), &events));
    a.expect("shop");
    b.expect("blog");
    let spans = spans(&fake.calls());
    assert_eq!(spans.len(), 2);
    assert!(spans[1].0 < spans[0].1, "the two apps' deploys overlapped: {:?}", fake.calls());
}
