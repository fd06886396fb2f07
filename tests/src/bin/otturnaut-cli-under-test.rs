//! The `otturnaut` command line, built inside this crate so that its
//! integration tests (`tests/cli.rs`) get a fresh binary through
//! `CARGO_BIN_EXE_otturnaut-cli-under-test`: cargo builds a package's own
//! binaries before its integration tests, never a dependency's. Same code as
//! `otturnaut-cli/src/main.rs`.
//!
//! With `OTTURNAUT_TEST_PEAK_RSS=FILE` it writes its peak resident set size
//! (`VmHWM` of `/proc/self/status`, in KiB) to FILE on its way out, so the
//! hardening tests can bound the memory a hostile repository makes it use.

fn main() -> std::process::ExitCode {
    let code = otturnaut_cli::main();
    if let Some(file) = std::env::var_os("OTTURNAUT_TEST_PEAK_RSS") {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        let _ = std::fs::write(file, kib.to_string());
    }
    code
}
