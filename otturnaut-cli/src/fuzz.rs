//! Property-based fuzzing of every input parser with hostile strings: app
//! ids, domains, refs, URLs, env lines, durations, Dockerfile paths, image
//! references, settings. None may panic; every rejection is an [`Invalid`]
//! (exit 2) or a clap usage error (exit 2), and none quotes a secret.

use clap::Parser;
use proptest::prelude::*;

use crate::args::{Cli, Command, GlobalArgs};
use crate::exit::{Exit, Fatal};
use crate::{input, settings};

/// Strings an attacker would try: separators, traversal, option-like
/// prefixes, credentials, control characters, huge numbers, long runs.
fn hostile() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("-".to_owned()),
        Just("--upload-pack=x".to_owned()),
        Just("..".to_owned()),
        Just("/".to_owned()),
        Just("\\".to_owned()),
        Just("::".to_owned()),
        Just("ext::sh -c x".to_owned()),
        Just("://".to_owned()),
        Just("@".to_owned()),
        Just(":".to_owned()),
        Just("=".to_owned()),
        Just("%00".to_owned()),
        Just("\0".to_owned()),
        Just("\n".to_owned()),
        Just("\r".to_owned()),
        Just("\u{202e}".to_owned()),
        Just("é".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("99999999999999999999999".to_owned()),
        Just("s".to_owned()),
        Just("h".to_owned()),
        Just("ms".to_owned()),
        Just("ns".to_owned()),
        Just("days".to_owned()),
        Just("https://".to_owned()),
        Just("git://".to_owned()),
        Just("file:///".to_owned()),
        Just("bot:".to_owned()),
        Just("localhost".to_owned()),
        Just("127.0.0.1".to_owned()),
        Just("*".to_owned()),
        Just(".lock".to_owned()),
        Just("@{".to_owned()),
        "[a-zA-Z0-9_.-]{0,12}",
        "\\PC{0,8}",
        "x{200,300}",
    ];
    prop::collection::vec(piece, 0..8).prop_map(|parts| parts.concat())
}

/// Parses `deploy` with `value` given to `flag` (as `--flag=value`, so a
/// value starting with '-' is still a value) and checks the outcome.
fn deploy_with(extra: &[String]) -> Result<(), TestCaseError> {
    let mut argv: Vec<String> = ["otturnaut", "deploy"].map(String::from).to_vec();
    argv.extend(extra.iter().cloned());
    match Cli::try_parse_from(&argv) {
        Err(e) => {
            prop_assert_eq!(e.exit_code(), 2, "clap: {}", e);
        }
        Ok(cli) => {
            let Command::Deploy(args) = cli.command else {
                return Err(TestCaseError::fail("not parsed as deploy"));
            };
            if let Err(e) = input::deploy_spec(&args) {
                prop_assert!(!e.message.contains("S3CRET"), "{}", e);
                prop_assert_eq!(Fatal::from(e).exit, Exit::Usage);
            }
        }
    }
    Ok(())
}

fn base(source: &str) -> Vec<String> {
    let source: Vec<&str> = match source {
        "repo" => vec!["--repo=https://h/o/r.git"],
        _ => vec!["--image=redis:7"],
    };
    source.into_iter().chain(["--container-port=80"]).map(String::from).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn deploy_inputs_never_panic_and_every_rejection_exits_2(s in hostile(), which in 0usize..13) {
        let mut argv = base(if which < 6 { "repo" } else { "image" });
        match which {
            0 => argv[0] = format!("--repo={s}"),
            1 => argv.push(format!("--ref={s}")),
            2 => argv.push(format!("--dockerfile={s}")),
            3 => argv.push(format!("--build-arg={s}S3CRET")),
            4 => argv.push(format!("--repo={s}")),
            5 => argv.push(format!("--build-arg=K={s}")),
            6 => argv[0] = format!("--image={s}"),
            7 => argv.push(format!("--domain={s}")),
            8 => argv.push(format!("--env={s}S3CRET")),
            9 => argv.push(format!("--health-timeout={s}")),
            10 => argv.push(format!("--health={s}")),
            11 => argv.push(format!("--pull-timeout={s}")),
            _ => {}
        }
        // The app id is positional: after `--` nothing is an option.
        argv.push("--".into());
        argv.push(if which == 12 { s.clone() } else { "app".into() });
        deploy_with(&argv)?;
    }

    #[test]
    fn env_files_never_panic_and_never_quote_values(lines in prop::collection::vec(hostile(), 0..6)) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let file = dir.path().join("app.env");
        let text: String = lines.iter().map(|l| format!("{l}S3CRET\n")).collect();
        std::fs::write(&file, text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Err(e) = crate::files::key_value_file("env_file", &file) {
            prop_assert!(!e.message.contains("S3CRET"), "{}", e);
            prop_assert_eq!(Fatal::from(crate::exit::Invalid::from(e)).exit, Exit::Usage);
        }
    }

    #[test]
    fn durations_are_bounded(s in hostile()) {
        match otturnaut_core::request::duration("health_timeout", &s) {
            Ok(d) => prop_assert!(!d.is_zero() && d <= otturnaut_core::MAX_DURATION),
            Err(e) => prop_assert_eq!(e.field, "health_timeout"),
        }
    }

    #[test]
    fn settings_never_panic(s in hostile(), which in 0usize..4) {
        let mut args = GlobalArgs::default();
        match which {
            0 => args.caddy_admin = Some(s),
            1 => args.listen = Some(s),
            2 => args.port_range = Some(s),
            _ => args.work_dir = Some(s.into()),
        }
        if let Err(e) = settings::resolve(&args, &|_| None) {
            prop_assert_eq!(Fatal::from(e).exit, Exit::Usage);
        }
    }

    #[test]
    fn app_ids_for_every_command_never_panic(s in hostile()) {
        if let Err(e) = input::app_id(&s) {
            prop_assert_eq!(Fatal::from(e).exit, Exit::Usage);
        }
    }
}
