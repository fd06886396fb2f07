// Long file: the whole command line as clap sees it, one struct per command, so --help and parsing stay in one place.
//! The command line as clap sees it: raw strings only. Turning them into
//! validated core types happens in [`crate::input`] and [`crate::settings`],
//! so every bad value gets one message format naming its flag.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "otturnaut",
    bin_name = "otturnaut",
    version,
    about = "Blue-green deploys of containers behind Caddy, with nothing left behind when one fails",
    long_about = ABOUT,
    after_help = AFTER_HELP,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the agent finds its services and keeps its files. Each has a flag,
/// an environment variable and a config-file key; the first one set wins.
#[derive(Debug, Default, Clone, Args)]
pub struct GlobalArgs {
    /// Caddy's admin API [env: OTTURNAUT_CADDY_ADMIN] [default: http://127.0.0.1:2019]
    #[arg(long, global = true, help_heading = "Global options", value_name = "URL")]
    pub caddy_admin: Option<String>,
    /// Addresses Otturnaut's Caddy server listens on, comma-separated [env: OTTURNAUT_LISTEN] [default: :80,:443]
    #[arg(long, global = true, help_heading = "Global options", value_name = "ADDR,...")]
    pub listen: Option<String>,
    /// Do not let Caddy obtain TLS certificates for the apps' domains [env: OTTURNAUT_NO_AUTO_HTTPS=1]
    #[arg(long, global = true, help_heading = "Global options")]
    pub no_auto_https: bool,
    /// Host ports handed to new containers [env: OTTURNAUT_PORT_RANGE] [default: 10000-20000]
    #[arg(long, global = true, help_heading = "Global options", value_name = "A-B")]
    pub port_range: Option<String>,
    /// Where fetched sources and locks live [env: OTTURNAUT_WORK_DIR] [default: /var/lib/otturnaut]
    #[arg(long, global = true, help_heading = "Global options", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Pin SSH host keys: an OpenSSH known_hosts file; hosts not in it are refused
    /// [env: OTTURNAUT_SSH_KNOWN_HOSTS] [default: trust on first use, remembered in WORK_DIR/ssh/known_hosts]
    #[arg(long, global = true, help_heading = "Global options", value_name = "FILE")]
    pub ssh_known_hosts: Option<PathBuf>,
    /// How many releases besides the live one are kept for `rollback`, at least 1 [env: OTTURNAUT_KEEP] [default: 5]
    #[arg(long, global = true, help_heading = "Global options", value_name = "N")]
    pub keep: Option<String>,
    /// Where releases run: `docker` (this host's daemon) or `swarm` (a Swarm cluster whose manager is
    /// DOCKER_HOST) [env: OTTURNAUT_RUNTIME] [default: docker]
    #[arg(long, global = true, help_heading = "Global options", value_name = "docker|swarm")]
    pub runtime: Option<String>,
    /// Swarm runtime: tasks per release, each on its own node [env: OTTURNAUT_REPLICAS] [default: 2]
    #[arg(long, global = true, help_heading = "Global options", value_name = "N")]
    pub replicas: Option<String>,
    /// Swarm runtime: the registry (HOST:PORT) release images are pushed to and the nodes pull from
    /// [env: OTTURNAUT_REGISTRY]
    #[arg(long, global = true, help_heading = "Global options", value_name = "HOST:PORT")]
    pub registry: Option<String>,
    /// A TOML file with any of: caddy_admin, listen, no_auto_https, port_range, work_dir, ssh_known_hosts, keep,
    /// runtime, replicas, registry [env: OTTURNAUT_CONFIG]
    #[arg(long, global = true, help_heading = "Global options", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build (or take) an image, start it next to the live release, switch traffic once healthy
    #[command(long_about = DEPLOY_ABOUT)]
    Deploy(Box<DeployArgs>),
    /// Show each app's live release: deployment, image, commit, port, domains, container state
    #[command(long_about = STATUS_ABOUT)]
    Status {
        /// Only this app
        app: Option<String>,
        /// One JSON document on stdout instead of text
        #[arg(long)]
        json: bool,
    },
    /// List an app's releases, newest first: the live one and those kept for `rollback`
    #[command(long_about = RELEASES_ABOUT)]
    Releases {
        /// The app whose releases to list
        app: String,
        /// One JSON array on stdout instead of text
        #[arg(long)]
        json: bool,
    },
    /// Make a kept release live again, without fetching or building: the previous one by default
    #[command(long_about = ROLLBACK_ABOUT)]
    Rollback {
        /// The app to roll back
        app: String,
        /// The kept release to go back to (a deployment id from `otturnaut releases APP`)
        #[arg(long, value_name = "DEPLOYMENT")]
        to: Option<String>,
        /// Newline-delimited JSON events on stdout, the last line the result
        #[arg(long)]
        json: bool,
    },
    /// Remove kept releases beyond --keep, dangling images of Otturnaut's builds and (for every
    /// app) build cache beyond 2 GiB
    #[command(long_about = PRUNE_ABOUT)]
    Prune {
        /// Only this app (default: every app)
        app: Option<String>,
        /// One JSON result object on stdout instead of text
        #[arg(long)]
        json: bool,
    },
    /// Remove an app entirely: its route, containers, images and leftovers
    #[command(long_about = UNDEPLOY_ABOUT)]
    Undeploy {
        /// The app to remove
        app: String,
        /// Also remove the named volumes made for the app, and the data in them
        #[arg(long)]
        volumes: bool,
        /// One JSON result object on stdout instead of text
        #[arg(long)]
        json: bool,
    },
    /// Serve every committed release again and remove what interrupted deploys left behind
    #[command(long_about = RECONCILE_ABOUT)]
    Reconcile {
        /// Only these apps (default: every app with resources on this Docker daemon)
        #[arg(value_name = "APP")]
        apps: Vec<String>,
        /// One JSON result object on stdout instead of text
        #[arg(long)]
        json: bool,
    },
    /// Run the agent's HTTP API (for a control plane), with background repair of lost routes
    #[command(long_about = SERVE_ABOUT)]
    Serve(ServeArgs),
    /// Print the output of an app's live container
    #[command(long_about = LOGS_ABOUT)]
    Logs {
        /// The app whose logs to show
        app: String,
        /// Keep printing new output until the container stops (or Ctrl-C)
        #[arg(long, short = 'f')]
        follow: bool,
        /// How many of the last lines to start with
        #[arg(long, value_name = "N", default_value_t = 100)]
        tail: usize,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the API listens on [env: OTTURNAUT_API_LISTEN] [default: 127.0.0.1:7400]
    #[arg(long, value_name = "ADDR")]
    pub api_listen: Option<String>,
    /// A file holding the bearer token clients must send; readable by its owner only
    /// [env: OTTURNAUT_TOKEN_FILE]
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM); required to listen on a non-loopback address
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Listen on a non-loopback address without TLS (the token then crosses the network in clear)
    #[arg(long, conflicts_with = "tls_cert")]
    pub insecure_http: bool,
    /// Only these apps are reconciled in the background, comma-separated (default: every app
    /// on this Docker daemon; name them on a Docker daemon shared by several agents)
    #[arg(long, value_name = "APP,...", value_delimiter = ',')]
    pub watch_apps: Vec<String>,
}

#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("source").multiple(false).args(["repo", "image"])))]
pub struct DeployArgs {
    /// The app's name: lowercase letters, digits and '-' (it names containers, images and the route)
    pub app: String,

    /// Read every setting from a TOML file: the API's deploy body as TOML (keys: the flags' names
    /// with '_', e.g. container_port, volumes, [env]; ssh_key_file and build_secret_files for
    /// --ssh-key and --build-secret); flags given as well override it. See examples/shop.toml
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,

    /// Git repository to build: https://, ssh://, git@host:path, git:// or file:///path
    #[arg(long, value_name = "URL", help_heading = "Source (one of)")]
    pub repo: Option<String>,
    /// Branch, tag or full commit SHA to deploy [default: main]
    #[arg(long = "ref", value_name = "REF", conflicts_with = "image", help_heading = "Source (one of)")]
    pub git_ref: Option<String>,
    /// Dockerfile path inside the repository [default: Dockerfile]
    #[arg(long, value_name = "PATH", conflicts_with = "image", help_heading = "Source (one of)")]
    pub dockerfile: Option<String>,
    /// A build argument (repeatable); values are never printed, but are visible in `ps`
    /// while the deploy runs: put secrets in --build-arg-file
    #[arg(long = "build-arg", value_name = "K=V", conflicts_with = "image", help_heading = "Source (one of)")]
    pub build_args: Vec<String>,
    /// A file of KEY=VALUE build args, like --env-file (unlike --build-arg, not visible in `ps`)
    #[arg(long = "build-arg-file", value_name = "FILE", conflicts_with = "image", help_heading = "Source (one of)")]
    pub build_arg_file: Option<PathBuf>,
    /// A file mounted for `RUN --mount=type=secret,id=ID` steps (BuildKit), repeatable; never in
    /// the image, its history or any output. At most 500 KiB
    #[arg(long = "build-secret", value_name = "ID=FILE", conflicts_with = "image", help_heading = "Source (one of)")]
    pub build_secrets: Vec<String>,
    /// A file holding the credentials for an https:// --repo: a token, or USER:PASSWORD
    /// on one line. Keeps them out of `ps` and out of the URL; never printed
    #[arg(
        long = "repo-credentials-file",
        value_name = "FILE",
        conflicts_with = "image",
        help_heading = "Source (one of)"
    )]
    pub repo_credentials_file: Option<PathBuf>,
    /// Accept a git:// --repo on another host: git:// is neither authenticated nor encrypted
    #[arg(long, conflicts_with = "image", help_heading = "Source (one of)")]
    pub allow_insecure_git: bool,
    /// A private key file for ssh:// and git@host:path repositories. Copied
    /// (mode 0600) for the clone only, then deleted; never printed
    #[arg(long = "ssh-key", value_name = "FILE", conflicts_with = "image", help_heading = "Source (one of)")]
    pub ssh_key: Option<std::path::PathBuf>,
    /// A prebuilt image to run instead: used if present locally, pulled otherwise
    #[arg(long, value_name = "IMAGE", help_heading = "Source (one of)")]
    pub image: Option<String>,
    /// How long pulling --image may take, at most 24h [default: 10m]
    #[arg(long, value_name = "DURATION", help_heading = "Source (one of)")]
    pub pull_timeout: Option<String>,

    /// The port the app listens on inside its container (required, here or in --spec)
    #[arg(long, value_name = "N", required_unless_present = "spec")]
    pub container_port: Option<String>,
    /// A domain Caddy routes to the app (repeatable, at most 100)
    #[arg(long = "domain", value_name = "D")]
    pub domains: Vec<String>,
    /// An environment variable for the app (repeatable, at most 1000 with --env-file; overrides
    /// --env-file); values are never printed, but are visible in `ps` while the deploy runs:
    /// put secrets in --env-file
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// A file of KEY=VALUE lines (blank lines and # comments allowed; at most 1 MiB)
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// When the new container counts as ready: running, tcp or http:/PATH (expects 200) [default: tcp]
    #[arg(long, value_name = "CHECK")]
    pub health: Option<String>,
    /// How long the new container may take to become healthy, e.g. 30s, 2m, 1m30s; at most 24h [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub health_timeout: Option<String>,

    #[command(flatten)]
    pub runtime: RuntimeArgs,

    /// Newline-delimited JSON events on stdout, the last line the result
    #[arg(long)]
    pub json: bool,
}

/// How the container runs: each becomes a field of `RuntimeOptions`,
/// recorded with the release.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Runtime")]
pub struct RuntimeArgs {
    /// Mount a named volume (created if missing, kept across releases, removed only by
    /// `undeploy --volumes`) or an existing host path (absolute); repeatable. E.g. data:/var/lib/app,
    /// /srv/shop/config:/etc/shop:ro
    #[arg(long = "volume", value_name = "SRC:/PATH[:ro]")]
    pub volumes: Vec<String>,
    /// Memory limit, e.g. 512m or 2g (at least 6m)
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// CPU limit in CPUs, e.g. 0.5 or 2
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// The most processes and threads the container may run
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<String>,
    /// Join a user-defined Docker network (created if missing), where the app answers to its
    /// name (repeatable)
    #[arg(long = "network", value_name = "NAME")]
    pub networks: Vec<String>,
    /// Run this instead of the image's CMD; split into words like a shell would (quotes,
    /// backslashes), but never run through one
    #[arg(long, value_name = "\"CMD ARG...\"", allow_hyphen_values = true)]
    pub command: Option<String>,
    /// Replace the image's ENTRYPOINT, split like --command
    #[arg(long, value_name = "\"PROG ARG...\"", allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// A json-file log option (repeatable): max-size, max-file, compress, labels, env, tag…
    /// [default: max-size=10m, max-file=3]
    #[arg(long = "log-opt", value_name = "K=V")]
    pub log_opts: Vec<String>,
    /// Grace between SIGTERM and SIGKILL when the previous release is stopped [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub stop_timeout: Option<String>,
    /// How long in-flight requests to the previous release may take to finish after the
    /// switch [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<String>,
}

/// The `deploy` flag that sets a [`otturnaut_core::DeployRequest`] field
/// (`volumes` → `--volume`), as messages name it: read from the flags'
/// definitions, so it cannot drift from them.
pub fn deploy_flag(field: &str) -> String {
    let id = match field {
        "app" => return "APP".to_owned(),
        "ref" => "git_ref",
        "build_secret_files" => "build_secrets",
        "ssh_key_file" => "ssh_key",
        "repo_credentials" => "repo_credentials_file",
        other => other,
    };
    let command = DeployArgs::augment_args(clap::Command::new("deploy"));
    let long = command.get_arguments().find(|a| a.get_id() == id).and_then(|a| a.get_long());
    long.map_or_else(|| field.to_owned(), |l| format!("--{l}"))
}

const ABOUT: &str = "\
Otturnaut turns a git repository or a prebuilt image into a live container routed by Caddy.
Deploys are blue-green: the new release starts next to the old one and gets the traffic only
once it is healthy. A deploy that fails (or is interrupted) is rolled back: the old release
keeps serving and nothing is left behind.

Nothing is stored besides the outside world: containers and images carry `otturnaut.*`
labels, and each app's route in Caddy has the id `otturnaut-app-APP`.";

const AFTER_HELP: &str = "\
Examples:
  otturnaut deploy shop --repo https://github.com/acme/shop.git --container-port 8080 --domain shop.example.com
  otturnaut status
  otturnaut logs shop --follow
  otturnaut releases shop
  otturnaut rollback shop
  otturnaut undeploy shop

Exit codes: 0 success; 1 failed and rolled back (the previous release is live); 2 invalid input,
nothing done; 3 failed and something could not be cleaned up (run `otturnaut reconcile`);
4 Docker or Caddy unreachable.

Run `otturnaut help <command>` for each command's details.";

const DEPLOY_ABOUT: &str = "\
Deploy APP from a git repository (--repo) or a prebuilt image (--image).

Every input is checked before anything is touched. Then, holding APP's lock (a second deploy of
the same app waits; other apps deploy in parallel), leftovers of earlier interrupted deploys of
APP are removed, and the deploy runs: fetch, build, start the new container on a free host port,
health-check it, switch Caddy's route for the domains to it, then drain and remove the previous
release.

If any step before the route switch fails, or you press Ctrl-C, everything the deploy created is
removed again and the previous release keeps serving.

Secrets: the values of --env and --build-arg, and credentials written into --repo, are never
printed, but every local user sees them in `ps` while the deploy runs. Give them in files
instead: --env-file, --build-arg-file, --repo-credentials-file (https) or --ssh-key (ssh).
SSH host keys are trusted on first use and remembered in WORK_DIR/ssh/known_hosts; pin them
with --ssh-known-hosts FILE. git:// to another host is refused without --allow-insecure-git.

Examples:
  otturnaut deploy shop --repo https://github.com/acme/shop.git --ref v1.4.0 \\
      --container-port 8080 --domain shop.example.com --env-file shop.env
  otturnaut deploy hello --repo file:///srv/hello --container-port 8080 \\
      --domain hello.localhost --health http:/healthz --health-timeout 1m
  otturnaut deploy shop --spec shop.toml --ref v1.5.0    # settings from a file, a flag overriding it
  otturnaut deploy cache --image redis:7 --container-port 6379 --health tcp \\
      --volume cache-data:/data --memory 256m --network backend

Runtime: named volumes are created if missing, labelled with APP, and kept across releases and
rollbacks (only `undeploy --volumes` removes them); bind mounts need an existing absolute host
path. Networks are created if missing and shared: on each the app answers to its name, so
`--network backend` on two apps lets one reach the other at http://OTHER-APP:PORT. Every container
also gets, without a flag: an init process, no-new-privileges (setuid binaries gain nothing) and
json-file logs rotated at 10 MiB x 3 files (change with --log-opt). All of it is recorded with the
release and shown by `status --json`.";

const STATUS_ABOUT: &str = "\
Show each app Otturnaut knows about (or just APP): its live deployment, image, commit, host port,
domains and container state. Everything is read from Docker labels and Caddy's config.

Examples:
  otturnaut status
  otturnaut status shop --json | jq '.[0].port'";

const RELEASES_ABOUT: &str = "\
List APP's releases, newest first: the live one, and the ones kept for `otturnaut rollback`.

When a deploy (or rollback) replaces the live release, the old one is drained and stopped but kept:
its container (stopped, holding no host port) and its image stay, with the image tag
otturnaut-APP:kept-DEPLOYMENT. --keep N (default 5) of them are kept besides the live one; older
ones are removed after each deploy, or by `otturnaut prune`.

Examples:
  otturnaut releases shop
  otturnaut releases shop --json | jq -r '.[] | select(.state == \"retained\") | .deployment'";

const ROLLBACK_ABOUT: &str = "\
Make a kept release of APP live again: the one before the live release by default, or --to
DEPLOYMENT (see `otturnaut releases APP`).

No fetch and no build: a new container is started from the kept release's image, exactly as that
release was deployed (same image, env including --env/--env-file values, container port, domains
and health check), on a new host port. It must pass its health check before Caddy's route is
switched to it; then the release it replaces is drained, stopped and kept in turn. If anything
fails, or you press Ctrl-C before the switch, everything the rollback created is removed again and
the live release keeps serving. Exit codes as for `deploy`; a --to that names no kept release of
APP, or an APP with nothing to go back to, exits 2 and changes nothing.

Examples:
  otturnaut rollback shop
  otturnaut rollback shop --to 01jd9x3k2m4n5p6q7r8s9t0v1w --json";

const PRUNE_ABOUT: &str = "\
Remove the kept releases of APP (or of every app) beyond --keep, as every deploy does, and the
dangling images Otturnaut's own builds left behind (untagged, used by no container). Without APP,
also prune the Docker daemon's build cache down to 2 GiB, least recently used first. Prints what
it removed and the disk space freed. The live release is never removed.

Examples:
  otturnaut prune
  otturnaut prune shop --keep 2 --json";

const UNDEPLOY_ABOUT: &str = "\
Remove APP entirely: first its Caddy route (so no request reaches a stopping container), then its
containers (stopped gracefully, kept releases too), the images Otturnaut built for it and any
leftover source trees.
Running it again finds nothing and does nothing.

Named volumes (--volume NAME:/path) hold the app's data and are kept, so that a later deploy finds
it again; with --volumes they are removed too (only those Otturnaut created for APP).

Examples:
  otturnaut undeploy shop
  otturnaut undeploy shop --volumes   # and its data";

const RECONCILE_ABOUT: &str = "\
Bring apps back in line with their committed releases. Docker holds the durable record of which
release of an app is live (the image tag otturnaut-APP:live-DEPLOYMENT, written when a deploy
commits); Caddy's routes are derived from it. Reconcile:

  - restores the route of every live release whose route is missing or wrong (after a Caddy
    restart or a reboot), all of them in one Caddy config change;
  - removes what interrupted or failed deploys left behind: containers that are not the live
    release, release images the live release does not run, fetched source trees, and routes of
    apps with no live release.

It never removes a live release. Apps with a deploy in progress are skipped. Only what Otturnaut
made is looked at: containers named otturnaut-APP-DEPLOYMENT whose labels agree, images by their
otturnaut-APP tags, routes by their @id.

`otturnaut deploy` does this for its app before deploying. Run it after a deploy exited with code 3,
after Caddy lost its config, and at boot (README: the otturnaut-reconcile.service unit).

With APPs, only those apps are reconciled; without, every app that has containers or images on
this Docker daemon, so on a daemon shared by several agents (each with its own Caddy) name the
apps: another agent's releases would get routes in this Caddy.

Examples:
  otturnaut reconcile                 # every app, e.g. at boot
  otturnaut reconcile shop api --json
";

const SERVE_ABOUT: &str = "\
Serve the agent's HTTP API until SIGTERM or SIGINT: deploys (streamed as NDJSON or SSE), status,
undeploy, reconcile, cancel, logs, Prometheus metrics and an OpenAPI document at /v1/openapi.json.
Every endpoint but GET /v1/health wants `Authorization: Bearer TOKEN`, the content of --token-file
(which must not be readable by other users). A non-loopback --api-listen needs --tls-cert and
--tls-key (or --insecure-http).

The API and the CLI share the per-app locks: a CLI deploy and an API deploy of one app never
overlap. In the background the daemon reconciles at start and, every few seconds, serves again
the apps whose route Caddy lost. On SIGTERM it stops accepting requests, lets running deploys
finish (rolling back those still running after 60s) and exits 0.

Config-file keys: api_listen, token_file. README: \"Running the agent\" (systemd unit, curl).

Example:
  otturnaut serve --token-file /etc/otturnaut/token
  curl -H \"Authorization: Bearer $(cat /etc/otturnaut/token)\" http://127.0.0.1:7400/v1/apps";

const LOGS_ABOUT: &str = "\
Print the output (stdout and stderr) of APP's live container. If APP has no live release, the
newest of its containers is shown instead.

Examples:
  otturnaut logs shop --tail 20
  otturnaut logs shop --follow";

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_source_is_required_and_exclusive() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        // Without --repo or --image, `input` asks for one (it may be in --spec).
        assert!(parse(&["otturnaut", "deploy", "a", "--image", "x"]).is_err(), "--container-port is required");
        assert!(parse(&["otturnaut", "deploy", "a", "--spec", "a.toml"]).is_ok());
        assert!(
            parse(&["otturnaut", "deploy", "a", "--container-port", "80", "--image", "x", "--repo", "https://h/r"])
                .is_err()
        );
        assert!(parse(&["otturnaut", "deploy", "a", "--container-port", "80", "--image", "x", "--ref", "v1"]).is_err());
        assert!(
            parse(&["otturnaut", "deploy", "a", "--spec", "a.toml", "--ref", "v1"]).is_ok(),
            "the repo may be in --spec"
        );
        assert!(parse(&["otturnaut", "deploy", "a", "--container-port", "80", "--image", "x"]).is_ok());
    }

    #[test]
    fn global_options_go_before_or_after_the_command() {
        let cli = Cli::try_parse_from(["otturnaut", "status", "--work-dir", "/tmp/w", "--no-auto-https"])
            .expect("global options after the command");
        assert_eq!(cli.global.work_dir, Some(PathBuf::from("/tmp/w")));
        assert!(cli.global.no_auto_https);
        let cli = Cli::try_parse_from(["otturnaut", "--listen", ":8080", "status"]).expect("before the command");
        assert_eq!(cli.global.listen.as_deref(), Some(":8080"));
    }
}
