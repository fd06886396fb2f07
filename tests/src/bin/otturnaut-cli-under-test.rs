//! The `otturnaut` command line, built inside this crate so that its
//! integration tests (`tests/cli.rs`) get a fresh binary through
//! `CARGO_BIN_EXE_otturnaut-cli-under-test`: cargo builds a package's own
//! binaries before its integration tests, never a dependency's. Same code as
//! `otturnaut-cli/src/main.rs`.

fn main() -> std::process::ExitCode {
    otturnaut_cli::main()
}
