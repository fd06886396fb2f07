//! The `otturnaut` binary under test.

use std::path::PathBuf;

/// `$OTTURNAUT_BIN` if set, else the CLI that cargo builds inside this crate
/// (`tests/src/bin`, the same code as `otturnaut`). This crate turns on
/// `otturnaut-cli/faults`, so in a debug build it honours `OTTURNAUT_FAULTS`.
pub fn otturnaut() -> PathBuf {
    std::env::var_os("OTTURNAUT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_otturnaut-cli-under-test")))
}
