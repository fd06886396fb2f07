//! The benchmark suite on real Docker and a private Caddy (see
//! `otturnaut_tests::bench`): `cargo bench -p otturnaut-tests -- --help`.

fn main() -> std::process::ExitCode {
    otturnaut_tests::bench::main()
}
