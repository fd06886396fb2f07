//! Fetching source code with gix: a depth-1 clone of a branch, a tag or a
//! full commit SHA into a directory owned by one deployment.
//!
//! Layout under the work dir, named by app and deployment alone so that
//! `remove` (and a reconciler, see [`GitFetcher::fetched_dirs`]) can find
//! everything a fetch created without having seen its result:
//! - `src/{app}-{deployment}/`: the checkout. A clone is made in
//!   `src/{app}-{deployment}.partial-{unique}/` and renamed when complete, so
//!   the checkout only ever appears whole, and a timed-out clone still
//!   winding down can only ever delete its own partial directory.
//! - `ssh/{app}-{deployment}.key`: the deploy key, present only while its
//!   fetch runs; `ssh/{app}-{deployment}.log`: ssh's stderr, likewise.
//! - `ssh/known_hosts`: host keys learnt on first use (mode 0600), so `~/.ssh`
//!   is left alone; or, with [`GitFetcher::with_known_hosts`], a file of
//!   pinned keys, and an unknown host is refused.
//!
//! `src/` and `ssh/` are created mode 0700, so checkouts (which may hold
//! secrets of the repository) and keys are readable by the agent's user only.
//!
//! gix's client is blocking, so it runs on tokio's blocking pool and is
//! stopped through its interrupt flag on timeout or when the fetch future is
//! dropped. Whatever the outcome, the key file is deleted and a failed fetch
//! leaves no directory behind.

mod clone;
mod ssh;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use otturnaut_core::traits::{FetchRequest, FetchedSource, SourceFetcher};
use otturnaut_core::{AppId, CommitSha, DeploymentId, Error, RepoUrl, Result, Service, Transport};

use clone::{Failure, FailureKind};

/// How long a timed-out clone gets to notice its interrupt flag (gix checks
/// it between reads) before we remove its directory from under it.
const INTERRUPT_GRACE: Duration = Duration::from_millis(500);

/// [`SourceFetcher`] backed by gix.
#[derive(Debug, Clone)]
pub struct GitFetcher {
    work_dir: PathBuf,
    /// Pinned SSH host keys; `None`: trust on first use.
    known_hosts: Option<PathBuf>,
}

/// A checkout found on disk, as named by [`GitFetcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedDir {
    /// The app it was fetched for.
    pub app: AppId,
    /// The deployment it was fetched for.
    pub deployment: DeploymentId,
    /// Where it is.
    pub dir: PathBuf,
    /// A clone that never completed (its process died mid-fetch).
    pub partial: bool,
}

impl GitFetcher {
    /// A fetcher keeping its checkouts (and key files) under `work_dir`.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        GitFetcher { work_dir: work_dir.into(), known_hosts: None }
    }

    /// Checks SSH host keys against `file` (OpenSSH known_hosts format) only:
    /// a host not in it is refused. Without it, a host's key is learnt on
    /// first use into `ssh/known_hosts` and checked from then on.
    pub fn with_known_hosts(mut self, file: Option<PathBuf>) -> Self {
        self.known_hosts = file;
        self
    }

    /// Where checkouts go: `{work_dir}/src`.
    pub fn src_dir(&self) -> PathBuf {
        self.work_dir.join("src")
    }

    /// Where deploy keys (briefly) and `known_hosts` live: `{work_dir}/ssh`.
    pub fn ssh_dir(&self) -> PathBuf {
        self.work_dir.join("ssh")
    }

    /// The checkout of one deployment.
    pub fn checkout_dir(&self, app: &AppId, deployment: &DeploymentId) -> PathBuf {
        self.src_dir().join(format!("{app}-{deployment}"))
    }

    /// Where one fetch clones before renaming to [`Self::checkout_dir`].
    fn partial_dir(&self, app: &AppId, deployment: &DeploymentId) -> PathBuf {
        use std::sync::atomic::AtomicU64;
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        self.src_dir().join(format!("{app}-{deployment}{PARTIAL}{}-{n}", std::process::id()))
    }

    fn key_file(&self, app: &AppId, deployment: &DeploymentId) -> PathBuf {
        self.ssh_dir().join(format!("{app}-{deployment}.key"))
    }

    fn ssh_log(&self, app: &AppId, deployment: &DeploymentId) -> PathBuf {
        self.ssh_dir().join(format!("{app}-{deployment}.log"))
    }

    /// Every checkout under [`Self::src_dir`], for reconciling against the
    /// deployments still alive. Entries we did not name are ignored.
    pub fn fetched_dirs(&self) -> Result<Vec<FetchedDir>> {
        let src = self.src_dir();
        let entries = match fs::read_dir(&src) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::failed(format!("listing {}", src.display()), e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::failed(format!("listing {}", src.display()), e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some((app, deployment)) = parse_dir_name(name) {
                found.push(FetchedDir { app, deployment, dir: entry.path(), partial: name.contains(PARTIAL) });
            }
        }
        Ok(found)
    }

    /// Deletes deploy key files (and ssh logs) a crashed process may have
    /// left. Only call it when no fetch is running.
    pub fn purge_keys(&self) -> Result<usize> {
        let dir = self.ssh_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::failed(format!("listing {}", dir.display()), e)),
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "key" || ext == "log") {
                ssh::remove_file_quietly(&path);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

const PARTIAL: &str = ".partial-";

/// Splits `{app}-{deployment}` (with or without a partial suffix) back into
/// its ids. Neither id can contain a '.'.
fn parse_dir_name(name: &str) -> Option<(AppId, DeploymentId)> {
    let name = name.split_once('.').map_or(name, |(ids, _)| ids);
    let split = name.len().checked_sub(27)?;
    let (app, dash_deployment) = name.split_at_checked(split)?;
    let deployment = dash_deployment.strip_prefix('-')?;
    Some((app.parse().ok()?, deployment.parse().ok()?))
}

/// How much of ssh's stderr is read for an error message: the remote side
/// writes to it too, as much as it likes.
const SSH_LOG_TAIL: u64 = 16 * 1024;

/// The last `max` bytes of `path`, as text.
fn read_tail(path: &Path, max: u64) -> io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Creates `dir` and any missing parents with mode 0700.
fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

fn remove_dir_quietly(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Everything a fetch puts on disk before it succeeds. Dropping it — on
/// error, timeout, or when the fetch future itself is dropped — stops the
/// clone and deletes the key and the partial checkout.
struct Leftovers {
    interrupt: Arc<AtomicBool>,
    /// The deploy key and ssh's stderr log.
    files: Vec<PathBuf>,
    dir: Option<PathBuf>,
}

impl Leftovers {
    /// Hands the checkout over to the caller: it is no longer ours to delete.
    fn keep_dir(&mut self) {
        self.dir = None;
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        self.interrupt.store(true, Ordering::SeqCst);
        for file in self.files.drain(..) {
            ssh::remove_file_quietly(&file);
        }
        if let Some(dir) = self.dir.take()
            && let Err(e) = remove_dir_quietly(&dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove partial checkout");
        }
    }
}

#[async_trait]
impl SourceFetcher for GitFetcher {
    async fn fetch(&self, req: &FetchRequest) -> Result<FetchedSource> {
        let shown_url = req.url.redacted();
        let operation = format!("git clone of {shown_url} at '{}'", req.git_ref);
        let started = Instant::now();

        // The small file operations below run inline rather than on the
        // blocking pool: each path is registered in `leftovers` before it is
        // created, so a fetch dropped at any await leaves nothing behind.
        let mut leftovers = Leftovers { interrupt: Arc::new(AtomicBool::new(false)), files: Vec::new(), dir: None };

        let mut config = vec![
            // Never wait for a password on a terminal nobody watches.
            "gitoxide.credentials.terminalPrompt=false".to_owned(),
        ];
        let mut ssh_log = None;
        if req.url.transport() == Transport::Ssh {
            let ssh_dir = self.ssh_dir();
            ssh::ensure_ssh_dir(&ssh_dir)?;
            let key = match &req.ssh_key {
                Some(secret) => {
                    let path = self.key_file(&req.app, &req.deployment);
                    leftovers.files.push(path.clone());
                    // A crashed earlier attempt of this deployment may have left one.
                    ssh::remove_file_quietly(&path);
                    ssh::write_key(&path, secret)?;
                    Some(path)
                }
                None => None,
            };
            let stderr_log = self.ssh_log(&req.app, &req.deployment);
            leftovers.files.push(stderr_log.clone());
            ssh::remove_file_quietly(&stderr_log);
            ssh_log = Some(stderr_log.clone());
            let (known_hosts, pinned) = match &self.known_hosts {
                Some(file) => (file.clone(), true),
                None => {
                    let file = ssh_dir.join("known_hosts");
                    ssh::ensure_private_file(&file)?;
                    (file, false)
                }
            };
            let options = ssh::SshOptions { known_hosts, pinned, key, stderr_log, connect_timeout: req.timeout };
            config.push(format!("core.sshCommand={}", options.command()));
            config.push("ssh.variant=ssh".to_owned());
        } else if req.ssh_key.is_some() {
            tracing::debug!(url = %shown_url, "ignoring the deploy key: not an ssh URL");
        }

        let src = self.src_dir();
        let partial = self.partial_dir(&req.app, &req.deployment);
        leftovers.dir = Some(partial.clone());
        private_dir(&partial)
            .map_err(|e| Error::failed(format!("creating {} in {}", partial.display(), src.display()), e))?;

        tracing::info!(app = %req.app, deployment = %req.deployment, url = %shown_url, git_ref = %req.git_ref, "cloning");
        let mut task = tokio::task::spawn_blocking({
            let url = req.url.expose().to_owned();
            let git_ref = req.git_ref.clone();
            let partial = partial.clone();
            let interrupt = leftovers.interrupt.clone();
            move || clone::shallow_clone(&url, &partial, &git_ref, config, &interrupt)
        });

        let outcome = match tokio::time::timeout(req.timeout, &mut task).await {
            Ok(joined) => joined,
            Err(_elapsed) => {
                leftovers.interrupt.store(true, Ordering::SeqCst);
                // Most of the time gix stops at once and cleans up itself; a
                // server that went silent keeps it blocked in a read, and the
                // directory is removed regardless when `leftovers` drops.
                let _ = tokio::time::timeout(INTERRUPT_GRACE, &mut task).await;
                tracing::warn!(url = %shown_url, git_ref = %req.git_ref, "clone timed out");
                return Err(Error::Timeout { operation, after: req.timeout });
            }
        };
        let sha = match outcome {
            Ok(Ok(sha)) => sha,
            Ok(Err(failure)) => {
                let failure = match ssh_log.as_deref().and_then(|log| read_tail(log, SSH_LOG_TAIL).ok()) {
                    Some(stderr) => failure.with_ssh_stderr(&stderr),
                    None => failure,
                };
                return Err(to_error(failure, req, operation));
            }
            Err(join) => return Err(Error::failed(operation, format!("the clone task failed: {join}"))),
        };
        let commit = CommitSha::try_from(sha.as_str()).map_err(|e| Error::failed(operation.clone(), e))?;
        // Whatever an earlier attempt of this same deployment left is stale.
        let dir = self.checkout_dir(&req.app, &req.deployment);
        remove_dir_quietly(&dir)
            .and_then(|()| fs::rename(&partial, &dir))
            .map_err(|e| Error::failed(format!("moving the checkout to {}", dir.display()), e))?;
        leftovers.keep_dir();
        tracing::info!(
            app = %req.app, deployment = %req.deployment, url = %shown_url, git_ref = %req.git_ref,
            commit = %commit, elapsed_ms = started.elapsed().as_millis() as u64, "cloned"
        );
        Ok(FetchedSource { dir, commit })
    }

    async fn leftovers(&self) -> Result<Vec<(AppId, DeploymentId)>> {
        let mut found: Vec<(AppId, DeploymentId)> =
            self.fetched_dirs()?.into_iter().map(|d| (d.app, d.deployment)).collect();
        let dir = self.ssh_dir();
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let path = entry.path();
                    let ours = path.extension().is_some_and(|ext| ext == "key" || ext == "log");
                    if let Some(ids) =
                        path.file_stem().and_then(|s| s.to_str()).filter(|_| ours).and_then(parse_dir_name)
                    {
                        found.push(ids);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::failed(format!("listing {}", dir.display()), e)),
        }
        found.sort();
        found.dedup();
        Ok(found)
    }

    async fn remove(&self, app: &AppId, deployment: &DeploymentId) -> Result<()> {
        ssh::remove_file_quietly(&self.key_file(app, deployment));
        ssh::remove_file_quietly(&self.ssh_log(app, deployment));
        let src = self.src_dir();
        let dir = self.checkout_dir(app, deployment);
        let partial_prefix = format!("{app}-{deployment}{PARTIAL}");
        let shown = dir.display().to_string();
        tokio::task::spawn_blocking(move || {
            remove_dir_quietly(&dir)?;
            // Partial clones of a process that died mid-fetch.
            let entries = match fs::read_dir(&src) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                if entry.file_name().to_str().is_some_and(|n| n.starts_with(&partial_prefix)) {
                    remove_dir_quietly(&entry.path())?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::failed(format!("removing {shown}"), e))?
        .map_err(|e: io::Error| Error::failed(format!("removing {shown}"), e))
    }
}

fn to_error(failure: Failure, req: &FetchRequest, operation: String) -> Error {
    let shown_url = req.url.redacted();
    let detail = scrub(&failure.detail, &req.url);
    match failure.kind {
        FailureKind::RefNotFound => Error::failed(operation, format!("ref '{}' not found in {shown_url}", req.git_ref)),
        FailureKind::CommitRefused => Error::failed(
            operation,
            format!(
                "commit {} not found in {shown_url}, or the server does not allow fetching a \
                 commit no branch or tag points to (git servers need \
                 uploadpack.allowReachableSHA1InWant or allowAnySHA1InWant for that); \
                 the server said: {detail}",
                req.git_ref
            ),
        ),
        FailureKind::Unreachable => Error::Unavailable { service: Service::Git, address: shown_url, detail },
        // Only reached if the flag was raised without our timeout, which
        // means the fetch was being torn down anyway.
        FailureKind::Interrupted => Error::failed(operation, "interrupted"),
        FailureKind::Other => Error::failed(operation, detail),
    }
}

/// Removes the credentials of `url` (a password, or a token given as the
/// user) from gix's messages, which may quote the URL verbatim or in part.
fn scrub(detail: &str, url: &RepoUrl) -> String {
    let detail = detail.replace(url.expose(), &url.redacted());
    match url.credential() {
        Some(secret) => detail.replace(secret, otturnaut_core::REDACTED),
        None => detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_round_trip() {
        let app: AppId = "shop-front-2".parse().expect("app");
        let dep = DeploymentId::generate();
        let f = GitFetcher::new("/w");
        let dir = f.checkout_dir(&app, &dep);
        assert_eq!(dir.parent(), Some(Path::new("/w/src")));
        let name = dir.file_name().and_then(|n| n.to_str()).expect("name");
        assert_eq!(parse_dir_name(name), Some((app.clone(), dep.clone())));
        assert!(parse_dir_name(&format!("{name}{PARTIAL}12-3")).is_some());
        let partial = f.partial_dir(&app, &dep);
        assert_ne!(partial, f.partial_dir(&app, &dep), "each fetch gets its own");
        let partial_name = partial.file_name().and_then(|n| n.to_str()).expect("name");
        assert_eq!(parse_dir_name(partial_name), Some((app.clone(), dep.clone())));
        for junk in ["", "x", "app-abc", "-01arz3ndektsv4rrffq69g5fav", "known_hosts"] {
            assert_eq!(parse_dir_name(junk), None, "{junk}");
        }
    }

    #[test]
    fn only_the_tail_of_a_huge_ssh_log_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("a.log");
        fs::write(&log, format!("{}\nPermission denied\n", "x".repeat(1024 * 1024))).expect("write");
        let tail = read_tail(&log, SSH_LOG_TAIL).expect("read");
        assert_eq!(tail.len() as u64, SSH_LOG_TAIL);
        assert!(tail.ends_with("Permission denied\n"));
    }

    #[test]
    fn passwords_are_scrubbed() {
        let url = |s: &str| RepoUrl::try_from(s).expect("valid");
        assert_eq!(
            scrub("cannot reach https://bot:s3cr3t@h/r", &url("https://bot:s3cr3t@h/r")),
            "cannot reach https://bot:***@h/r"
        );
        assert_eq!(scrub("user T0KEN refused", &url("https://T0KEN@h/r")), "user *** refused");
        assert_eq!(scrub("x git@h:r", &url("git@h:r")), "x git@h:r");
    }
}
