fn main() -> std::process::ExitCode {
    otturnaut_cli::main()
}
