//! Caddy 2.11's reload race, as the tests meet it: a connection that reaches
//! Caddy at the instant of a config reload, before it sent a whole request,
//! is closed unanswered (`tests/tests/caddy.rs`,
//! `a_reload_and_connections_without_a_whole_request_yet`).

use crate::caddy_proc::{get_via, shared_listen};

/// How a request through Caddy ends when Caddy closes its connection
/// unanswered (the `Debug` of the error's text).
pub(crate) const UNANSWERED_CLOSE: &str = r#"not an HTTP response: \"\""#;

/// Whether the Caddy under test closes, unanswered, a connection that reaches
/// it at the instant of a config reload: 2.11 (built with a newer Go) does,
/// 2.6.2 does not. A redeploy reloads nothing on 2.8+ (upstream files, one
/// per task on a cluster), but other tests' route writes (a first deploy, an
/// undeploy) do.
pub fn reload_closes_new_connections() -> bool {
    let bin = crate::services::caddy_bin();
    let out = std::process::Command::new(&bin)
        .arg("version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{} version` ({e})", bin.display()));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut parts = text.split_whitespace().next().unwrap_or_default().trim_start_matches('v').split('.');
    let mut next = || parts.next().and_then(|p| p.parse::<u32>().ok());
    let version = (next(), next());
    let (Some(major), Some(minor)) = version else { panic!("`{} version` printed {text:?}", bin.display()) };
    (major, minor) >= (2, 11)
}

/// `GET /` through the shared Caddy with the given `Host`: what its route
/// serves now. On a Caddy that closes connections at a reload (2.11), the
/// reloads other tests cause can close this one request unanswered; only
/// such a close is asked again (3 times at most), anything else panics.
pub async fn ask_shared_caddy(host: &str) -> (u16, String) {
    let mut closes = 0;
    loop {
        match get_via(&shared_listen(), host).await {
            Ok(answer) => return answer,
            Err(e)
                if closes < 3
                    && format!("{:?}", e.to_string()).contains(UNANSWERED_CLOSE)
                    && reload_closes_new_connections() =>
            {
                eprintln!("a request through Caddy for {host} was closed unanswered by a reload; asking again");
                closes += 1;
            }
            Err(e) => panic!("request through Caddy for {host}: {e}"),
        }
    }
}
