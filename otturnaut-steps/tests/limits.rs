//! Time limits on the fakes: a pull that never ends is cut off by
//! `timeouts.pull`, and durations no CLI would accept (a library caller may
//! build any spec) never overflow a deadline computation into a panic.

use std::time::{Duration, Instant};

use otturnaut_core::faults::{Call, Fault, FaultMode, Phase};
use otturnaut_core::testing::Fake;
use otturnaut_core::{AppId, DeploySpec, Error, EventSink, Source, Step};
use otturnaut_steps::{BlueGreen, RetryPolicy, Strategy as _};

mod common;

fn image_spec(app: &str) -> DeploySpec {
    let app: AppId = app.parse().expect("app");
    DeploySpec::new(app, Source::Image { reference: "redis:7".parse().expect("image") }, "80".parse().expect("port"))
}

#[tokio::test]
async fn a_pull_that_never_ends_fails_after_the_pull_timeout() {
    let fake = Fake::new();
    fake.fail(Fault::new(Call::EnsureImage, Phase::Before, FaultMode::Hang));
    let mut spec = image_spec("pull");
    spec.timeouts.pull = Duration::from_millis(300);
    let started = Instant::now();
    let err = BlueGreen::with_retry(common::adapters(&fake), RetryPolicy::immediate(3))
        .execute(spec, &EventSink::discard())
        .await
        .expect_err("the pull never ends");
    assert_eq!(err.step(), Step::Build);
    assert!(
        matches!(err.cause(), Error::Timeout { operation, after } if operation.contains("pulling image redis:7")
            && *after == Duration::from_millis(300)),
        "{:?}",
        err.cause()
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn durations_at_their_maximum_never_overflow() {
    let fake = Fake::new();
    let mut spec = image_spec("huge");
    spec.timeouts.pull = Duration::MAX;
    spec.timeouts.build = Duration::MAX;
    spec.timeouts.drain = Duration::MAX;
    spec.timeouts.fetch = Duration::MAX;
    spec.health.deadline = Duration::MAX;
    assert!(spec.check_limits().is_err(), "the CLI refuses these; the pipeline must still survive them");
    let deployed = BlueGreen::with_retry(common::adapters(&fake), RetryPolicy::immediate(3))
        .execute(spec, &EventSink::discard())
        .await
        .expect("deploys on the fakes without a panic");
    assert_eq!(deployed.release.app.as_str(), "huge");
}
