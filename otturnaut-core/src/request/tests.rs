use std::collections::BTreeSet;
use std::time::Duration;

use super::*;
use crate::HealthKind;

fn request(json: &str) -> Result<DeployRequest, serde_json::Error> {
    serde_json::from_str(json)
}

#[test]
fn a_json_body_becomes_the_same_spec_as_the_flags() {
    let r = request(
        r#"{"repo": "file:///srv/shop", "ref": "v1.2", "build_args": {"TOKEN": "s3cret"},
            "build_secrets": {"npmrc": "//r/:_authToken=s3cret"},
            "container_port": 8080, "domains": ["Shop.Example.com", "shop.example.com"],
            "env": {"A": "1"}, "health": "http:/healthz", "health_timeout": "1m30s"}"#,
    )
    .expect("parses");
    let spec = r.validate("shop").expect("valid");
    assert_eq!(spec.domains.len(), 1);
    assert_eq!(spec.health.deadline, Duration::from_secs(90));
    assert_eq!(spec.env.values().map(Secret::expose).collect::<Vec<_>>(), ["1"]);
    assert!(matches!(&spec.source, Source::Git { git_ref, build_args, build_secrets, .. }
        if git_ref.as_str() == "v1.2" && build_args.get("TOKEN").map(Secret::expose) == Some("s3cret")
            && build_secrets.get("npmrc").map(Secret::expose) == Some("//r/:_authToken=s3cret")));
}

#[test]
fn runtime_fields_become_runtime_options() {
    let r = request(
        r#"{"image": "x", "container_port": 80, "volumes": ["a-data:/data", "/srv/c:/etc/c:ro"],
            "memory": "512m", "cpus": 1.5, "pids_limit": 200, "networks": ["backend"],
            "command": ["puma", "-C", "config/puma.rb"], "entrypoint": "/usr/bin/tini --",
            "log_opts": ["max-size=50m"], "stop_timeout": "20s", "drain_timeout": "1m"}"#,
    )
    .expect("parses");
    let spec = r.validate("a").expect("valid");
    let o = &spec.runtime;
    assert_eq!(o.volumes.iter().map(ToString::to_string).collect::<Vec<_>>(), ["a-data:/data", "/srv/c:/etc/c:ro"]);
    assert_eq!(o.memory.map(|m| m.bytes()), Some(512 << 20));
    assert_eq!(o.cpus.map(|c| c.nano()), Some(1_500_000_000));
    assert_eq!(o.pids_limit.map(|p| p.get()), Some(200));
    assert_eq!(o.networks.iter().map(|n| n.as_str()).collect::<Vec<_>>(), ["backend"]);
    assert_eq!(o.command.as_ref().map(|c| c.words().len()), Some(3));
    assert_eq!(o.entrypoint.as_ref().map(|c| c.words().to_vec()), Some(vec!["/usr/bin/tini".into(), "--".into()]));
    assert_eq!(o.effective_log_opts().get("max-size").map(String::as_str), Some("50m"));
    assert_eq!((spec.timeouts.stop, spec.timeouts.drain), (Duration::from_secs(20), Duration::from_secs(60)));
    let plain = request(r#"{"image": "x", "container_port": 80}"#).expect("parses").validate("a").expect("valid");
    assert_eq!(plain.runtime, RuntimeOptions::default());
    assert_eq!(plain.health.kind, HealthKind::Tcp);
}

#[test]
fn toml_reads_into_the_same_schema() {
    let r: DeployRequest = toml::from_str(
        "image = \"x\"\ncontainer_port = 80\nmemory = \"1g\"\ncpus = 2\ncommand = \"a 'b c'\"\n[env]\nA = \"1\"\n",
    )
    .expect("parses");
    let spec = r.validate("a").expect("valid");
    assert_eq!(spec.runtime.memory.map(|m| m.bytes()), Some(1 << 30));
    assert_eq!(spec.runtime.cpus.map(|c| c.nano()), Some(2_000_000_000));
    assert_eq!(spec.runtime.command.as_ref().map(|c| c.words().len()), Some(2));
    let e = toml::from_str::<DeployRequest>("image = \"x\"\nmemroy = 1\n").expect_err("unknown key");
    assert!(e.to_string().contains("memroy") && e.to_string().contains("line 2"), "{e}");
}

#[test]
fn flags_on_top_of_a_file_win_field_by_field() {
    let file = request(
        r#"{"image": "x", "container_port": 80, "memory": "1g", "networks": ["a-net"],
            "env": {"A": "file", "B": "file"}, "env_file": "/etc/app.env"}"#,
    )
    .expect("parses");
    let flags = request(r#"{"memory": "256m", "networks": ["b-net"], "env": {"A": "flag"}}"#).expect("parses");
    let merged = file.merged(flags.clone());
    assert_eq!(merged.memory, Some(Scalar::Text("256m".into())));
    assert_eq!(merged.networks, ["b-net"]);
    assert_eq!(merged.env.get("A").map(Secret::expose), Some("flag"));
    assert_eq!(merged.env.get("B").map(Secret::expose), Some("file"));
    assert_eq!(merged.container_port, Some(80));
    assert_eq!(merged.env_file.as_deref(), Some(std::path::Path::new("/etc/app.env")));
    assert_eq!(flags.given().into_iter().collect::<Vec<_>>(), ["env", "memory", "networks"]);
}

#[test]
fn every_field_is_layered() {
    // serde lists every field in its message about an unknown one.
    let e = request(r#"{"no_such_field": 1}"#).expect_err("unknown").to_string();
    let all: BTreeSet<&str> = e.split('`').skip(3).step_by(2).collect();
    let full = request(
        r#"{"repo": "r", "ref": "r", "dockerfile": "d", "build_args": {"A": "1"}, "build_secrets": {"a": "1"},
            "repo_credentials": "c", "ssh_key": "k", "allow_insecure_git": true, "image": "i",
            "pull_timeout": "1s", "container_port": 1, "domains": ["d"], "env": {"A": "1"}, "health": "tcp",
            "health_timeout": "1s", "volumes": ["v"], "memory": 1, "cpus": 1, "pids_limit": 1,
            "networks": ["n"], "command": "c", "entrypoint": "e", "log_opts": ["l"], "stop_timeout": "1s",
            "drain_timeout": "1s", "env_file": "f", "build_arg_file": "f", "build_secret_files": {"a": "f"},
            "repo_credentials_file": "f", "ssh_key_file": "f"}"#,
    )
    .expect("parses");
    assert_eq!(all.len(), 30, "{e}");
    assert_eq!(full.given(), all, "a field is missing from layered_fields!");
    let merged = DeployRequest::default().merged(full);
    assert_eq!(merged.given(), all);
}

#[test]
fn unknown_fields_are_refused() {
    let e = request(r#"{"image": "x", "container_port": 80, "volume": []}"#).expect_err("unknown field");
    assert!(e.to_string().contains("volume"), "{e}");
}

#[test]
fn bad_values_name_their_field_and_never_a_secret() {
    for (json, field) in [
        (r#"{"image": "x", "container_port": 0}"#, "container_port"),
        (r#"{"image": "x", "container_port": 70000}"#, "container_port"),
        (r#"{"image": "x"}"#, "container_port"),
        (r#"{"container_port": 80}"#, "repo"),
        (r#"{"image": "x", "repo": "https://h/r", "container_port": 80}"#, "repo"),
        (r#"{"image": "x", "ref": "v1", "container_port": 80}"#, "ref"),
        (r#"{"image": "x", "build_secrets": {"a": "hunter2"}, "container_port": 80}"#, "build_secrets"),
        (r#"{"repo": "https://h/r", "pull_timeout": "1m", "container_port": 80}"#, "pull_timeout"),
        (r#"{"repo": "git://example.com/r", "container_port": 80}"#, "repo"),
        (r#"{"image": "x", "container_port": 80, "domains": ["a_b.com"]}"#, "domains"),
        (r#"{"image": "x", "container_port": 80, "env": {"1BAD": "hunter2"}}"#, "env"),
        (r#"{"image": "x", "container_port": 80, "env": {"OK": "hun\u0000ter2"}}"#, "env"),
        (r#"{"repo": "https://h/r", "container_port": 80, "build_args": {"a-b": "hunter2"}}"#, "build_args"),
        (r#"{"repo": "https://h/r", "container_port": 80, "build_secrets": {"a/b": "hunter2"}}"#, "build_secrets"),
        (r#"{"image": "x", "container_port": 80, "health": "ping"}"#, "health"),
        (r#"{"image": "x", "container_port": 80, "health_timeout": "25h"}"#, "health_timeout"),
        (r#"{"image": "x", "container_port": 80, "volumes": ["/:/host"]}"#, "volumes"),
        (r#"{"image": "x", "container_port": 80, "volumes": ["a-v:/x", "b-v:/x/"]}"#, "volumes"),
        (r#"{"image": "x", "container_port": 80, "memory": "5m"}"#, "memory"),
        (r#"{"image": "x", "container_port": 80, "cpus": -1}"#, "cpus"),
        (r#"{"image": "x", "container_port": 80, "pids_limit": 0}"#, "pids_limit"),
        (r#"{"image": "x", "container_port": 80, "networks": ["host"]}"#, "networks"),
        (r#"{"image": "x", "container_port": 80, "networks": ["n1", "n1"]}"#, "networks"),
        (r#"{"image": "x", "container_port": 80, "command": "a 'b"}"#, "command"),
        (r#"{"image": "x", "container_port": 80, "entrypoint": []}"#, "entrypoint"),
        (r#"{"image": "x", "container_port": 80, "log_opts": ["max-file=2", "max-file=3"]}"#, "log_opts"),
        (r#"{"image": "x", "container_port": 80, "stop_timeout": "25h"}"#, "stop_timeout"),
        (r#"{"image": "x", "container_port": 80, "drain_timeout": "x"}"#, "drain_timeout"),
        (r#"{"image": "x", "container_port": 80, "env_file": "/etc/passwd"}"#, "env_file"),
        (r#"{"repo": "https://h/r", "container_port": 80, "ssh_key": "/home/me/.ssh/id_ed25519"}"#, "ssh_key"),
        (r#"{"repo": "https://h/r", "container_port": 80, "ssh_key_file": "/root/.ssh/id"}"#, "ssh_key_file"),
    ] {
        let e = request(json).expect(json).validate("a").expect_err(json);
        assert_eq!(e.field, field, "{json}: {e}");
        assert!(!e.message.contains("hunter2") && !e.message.contains("ter2"), "{json}: {e}");
    }
    let e = request(r#"{"image": "x", "container_port": 80}"#).expect("parses").validate("Bad_App");
    assert_eq!(e.expect_err("bad app").field, "app");
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// Strings an attacker would send: separators, traversal, units, huge
    /// numbers, control characters.
    fn hostile() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("-".to_owned()),
            Just("..".to_owned()),
            Just("/".to_owned()),
            Just(":".to_owned()),
            Just("=".to_owned()),
            Just("'".to_owned()),
            Just("\0".to_owned()),
            Just("\n".to_owned()),
            Just("ro".to_owned()),
            Just("m".to_owned()),
            Just("g".to_owned()),
            Just("s".to_owned()),
            Just("http:".to_owned()),
            Just("18446744073709551615".to_owned()),
            "[a-z0-9_.-]{0,12}",
            "\\PC{0,8}",
        ];
        prop::collection::vec(piece, 0..6).prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Every field of a JSON body, hostile: never a panic, and a refusal
        /// never quotes a secret value.
        #[test]
        fn json_bodies_never_panic_nor_leak(s in hostile(), n in any::<i64>(), f in any::<f64>(), which in 0usize..16) {
            let secret = format!("{s}S3CRET");
            let mut body = serde_json::json!({"image": "x", "container_port": 80});
            let field = match which {
                0 => ("volumes", serde_json::json!([s])),
                1 => ("memory", serde_json::json!(s)),
                2 => ("memory", serde_json::json!(n)),
                3 => ("cpus", serde_json::json!(f)),
                4 => ("pids_limit", serde_json::json!(n)),
                5 => ("networks", serde_json::json!([s])),
                6 => ("command", serde_json::json!(s)),
                7 => ("entrypoint", serde_json::json!([s])),
                8 => ("log_opts", serde_json::json!([s])),
                9 => ("stop_timeout", serde_json::json!(s)),
                10 => ("drain_timeout", serde_json::json!(s)),
                11 => ("env", serde_json::json!({ s.clone(): secret })),
                12 => ("env", serde_json::json!({ "OK": secret })),
                13 => ("health", serde_json::json!(s)),
                14 => ("domains", serde_json::json!([s])),
                _ => ("container_port", serde_json::json!(n)),
            };
            body[field.0] = field.1;
            if let Ok(request) = serde_json::from_value::<DeployRequest>(body)
                && let Err(e) = request.validate("app")
            {
                prop_assert!(!e.message.contains("S3CRET"), "{}", e);
            }
        }
    }
}
