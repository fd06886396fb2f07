//! The fakes with the production state store over them.

use std::sync::Arc;

use otturnaut_core::Adapters;
use otturnaut_core::testing::Fake;
use otturnaut_steps::LabelState;

/// Every port on `fake`, the state store being the production [`LabelState`]
/// over the fake world (behind the fake's `load_state`/`record_state` fault
/// points, as the agent's fault injection wraps it).
pub fn adapters(fake: &Fake) -> Adapters {
    let world = Arc::new(fake.unfaulted());
    fake.adapters(Arc::new(LabelState::new(world.clone(), world.clone(), world)))
}
