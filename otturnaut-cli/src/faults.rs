//! Fault injection for the chaos harness (`cargo xtask chaos`): with the
//! `faults` feature, in a debug build, a plan in `OTTURNAUT_FAULTS` (e.g.
//! `start_container.after:fail,drain.before:hang`) wraps every adapter so
//! the named calls fail, hang or panic. Release builds never inject, even if
//! feature unification turned the feature on.

use otturnaut_core::Adapters;

use crate::exit::Fatal;

/// The environment variable holding the plan.
const ENV: &str = "OTTURNAUT_FAULTS";

#[cfg(all(feature = "faults", debug_assertions))]
pub fn with_faults(adapters: Adapters) -> Result<Adapters, Fatal> {
    use std::sync::Arc;

    use otturnaut_core::faults::FaultPlan;

    debug_assert_eq!(ENV, otturnaut_adapters::faults::ENV);
    let Some(plan) = std::env::var(ENV).ok().filter(|p| !p.trim().is_empty()) else {
        return Ok(adapters);
    };
    let plan = FaultPlan::parse(&plan).map_err(|e| Fatal::new(crate::Exit::Usage, format!("{ENV}: {e}")))?;
    Ok(otturnaut_adapters::faults::inject(adapters, Arc::new(plan)))
}

#[cfg(not(all(feature = "faults", debug_assertions)))]
pub fn with_faults(adapters: Adapters) -> Result<Adapters, Fatal> {
    // Silently ignoring a plan would make a chaos run pass without a fault.
    if std::env::var_os(ENV).is_some_and(|p| !p.is_empty()) {
        eprintln!(
            "warning: {ENV} is set, but this build has no fault injection (needs a debug build with --features faults); ignored"
        );
    }
    Ok(adapters)
}
