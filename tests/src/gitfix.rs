//! Git fixtures: repositories built with the `git` CLI, and real servers for
//! them on loopback — `git daemon` (git://), `sshd` (ssh://) — plus a TCP
//! proxy that holds connections until told to let them through, for
//! observing a fetch mid-flight and for simulating a server that hangs.
//!
//! Every fixture lives in its own temp dir and its processes are killed on
//! drop. Helpers panic with the failing command's stderr: they are test setup.

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Runs `cmd`, panicking with its stderr unless it succeeds; returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `git` untouched by the user's and the system's git config.
fn git_command() -> Command {
    let mut cmd = Command::new("git");
    cmd.env("GIT_CONFIG_NOSYSTEM", "1").env("GIT_CONFIG_GLOBAL", "/dev/null");
    cmd
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// A non-bare repository with branch `main`, served as is by the fixtures.
/// The server side allows fetching any commit by SHA
/// (`uploadpack.allowAnySHA1InWant`), as the fetcher's SHA mode needs.
#[derive(Debug)]
pub struct GitRepo {
    _tmp: TempDir,
    base: PathBuf,
    path: PathBuf,
}

impl GitRepo {
    /// An empty repository (no commits yet).
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("otturnaut-gitfix-")
            .tempdir()
            .expect("creating a temp dir for a git fixture");
        let base = tmp.path().to_path_buf();
        let path = base.join("repo");
        run(git_command().args(["init", "-q", "-b", "main"]).arg(&path));
        let repo = GitRepo { _tmp: tmp, base, path };
        repo.set_config("uploadpack.allowAnySHA1InWant", "true");
        repo
    }

    /// A repository with one commit holding `files` on `main`.
    pub fn with_files<P: AsRef<Path>, B: AsRef<[u8]>>(files: impl IntoIterator<Item = (P, B)>) -> Self {
        let repo = GitRepo::new();
        repo.commit(files, "initial");
        repo
    }

    /// Runs `git` in the repository and returns its trimmed stdout.
    pub fn git<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        run(git_command()
            .arg("-C")
            .arg(&self.path)
            .args(["-c", "user.name=Otturnaut Test", "-c", "user.email=test@otturnaut.invalid"])
            .args(args))
    }

    pub fn set_config(&self, key: &str, value: &str) {
        self.git(["config", key, value]);
    }

    /// Writes `files` (paths relative to the repository root, parents created)
    /// and commits everything on the current branch; returns the commit SHA.
    /// Files that start like an executable (`\x7fELF` or `#!`) are committed
    /// with mode 755, so a committed busybox stays runnable in a build context.
    pub fn commit<P: AsRef<Path>, B: AsRef<[u8]>>(
        &self,
        files: impl IntoIterator<Item = (P, B)>,
        message: &str,
    ) -> String {
        for (rel, bytes) in files {
            let rel = rel.as_ref();
            assert!(
                rel.is_relative() && !rel.components().any(|c| c.as_os_str() == ".."),
                "fixture file {rel:?} must stay inside the repository"
            );
            let dest = self.path.join(rel);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).expect("creating fixture directories");
            }
            let bytes = bytes.as_ref();
            fs::write(&dest, bytes).expect("writing a fixture file");
            if bytes.starts_with(b"\x7fELF") || bytes.starts_with(b"#!") {
                fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))
                    .expect("making a fixture file executable");
            }
        }
        self.git(["add", "-A"]);
        self.git(["commit", "-q", "--allow-empty", "-m", message]);
        self.rev_parse("HEAD")
    }

    /// Lets `write` fill the working tree (e.g. with
    /// `fixtures::write_context`), then commits everything, file modes
    /// included; returns the commit SHA.
    pub fn commit_with(&self, message: &str, write: impl FnOnce(&Path) -> std::io::Result<()>) -> String {
        write(&self.path).expect("writing fixture files into the repository");
        self.git(["add", "-A"]);
        self.git(["commit", "-q", "--allow-empty", "-m", message]);
        self.rev_parse("HEAD")
    }

    /// A lightweight tag at HEAD.
    pub fn tag(&self, name: &str) {
        self.git(["tag", name]);
    }

    /// An annotated tag at HEAD (its own object, pointing at the commit).
    pub fn annotated_tag(&self, name: &str, message: &str) {
        self.git(["tag", "-a", name, "-m", message]);
    }

    /// Creates `name` at HEAD and switches to it.
    pub fn branch(&self, name: &str) {
        self.git(["switch", "-q", "-c", name]);
    }

    pub fn switch(&self, name: &str) {
        self.git(["switch", "-q", name]);
    }

    /// The full SHA `rev` resolves to (`rev^{commit}` for a commit behind a tag).
    pub fn rev_parse(&self, rev: &str) -> String {
        self.git(["rev-parse", "--verify", "--end-of-options", rev])
    }

    /// The repository's working directory (it has a `.git` inside).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding the repository, for `git daemon --base-path`.
    pub fn base(&self) -> &Path {
        &self.base
    }

    pub fn file_url(&self) -> String {
        format!("file://{}", self.path.display())
    }
}

impl Default for GitRepo {
    fn default() -> Self {
        GitRepo::new()
    }
}

/// Kills and reaps a child process on drop.
#[derive(Debug)]
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts TCP connections on `port`, or panics with
/// `what` (and `log`, if any) when `child` exits or `deadline` passes.
/// Returns false if the child exited (e.g. the port was grabbed meanwhile).
fn wait_listening(child: &mut Child, port: u16, deadline: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Where git keeps its helper programs (`git --exec-path`).
fn git_exec_path() -> PathBuf {
    PathBuf::from(run(Command::new("git").arg("--exec-path")))
}

/// `git daemon` serving one base path on a loopback port (git://).
#[derive(Debug)]
pub struct GitDaemon {
    port: u16,
    base: PathBuf,
    _child: Reaped,
}

impl GitDaemon {
    /// Serves every repository under `base`.
    pub fn serve(base: &Path) -> Self {
        // The free port may be taken between our probe and the daemon's bind;
        // then the daemon exits and we try another.
        for _ in 0..5 {
            let port = free_port();
            // Not `git daemon`: that runs git-daemon as a child, which would
            // outlive the `git` process we kill on drop.
            let mut child = Command::new(git_exec_path().join("git-daemon"))
                .args([
                    "--export-all",
                    "--enable=upload-pack",
                    "--reuseaddr",
                    "--informative-errors",
                    "--listen=127.0.0.1",
                ])
                .arg(format!("--port={port}"))
                .arg(format!("--base-path={}", base.display()))
                .arg(base)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting git-daemon (is git installed?)");
            if wait_listening(&mut child, port, Duration::from_secs(10)) {
                return GitDaemon { port, base: base.to_path_buf(), _child: Reaped(child) };
            }
            drop(Reaped(child));
        }
        panic!("`git daemon` did not start listening on loopback");
    }

    /// Serves the directory holding `repo`.
    pub fn for_repo(repo: &GitRepo) -> Self {
        GitDaemon::serve(repo.base())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The git:// URL of `repo`, which must live under the served base path.
    pub fn url(&self, repo: &GitRepo) -> String {
        self.url_via(self.port, repo)
    }

    /// Like [`Self::url`], but through `port` (e.g. a [`GatedProxy`]'s).
    pub fn url_via(&self, port: u16, repo: &GitRepo) -> String {
        let rel = repo.path().strip_prefix(&self.base).expect("the repository lives under the daemon's base path");
        format!("git://127.0.0.1:{port}/{}", rel.display())
    }
}

const SSHD: &str = "/usr/sbin/sshd";

/// An `sshd` on a loopback port, with its own host key and config, accepting
/// one generated ed25519 client key for the current user. `git-upload-pack`
/// runs through the user's login shell as with any git host.
///
/// By default it passes `GIT_PROTOCOL` through, so git speaks protocol v2;
/// [`SshServer::start_protocol_v0`] does not, like hosts that only speak the
/// original protocol (where fetching an unadvertised commit needs
/// `uploadpack.allowAnySHA1InWant`; v2 servers allow it anyway).
#[derive(Debug)]
pub struct SshServer {
    tmp: TempDir,
    port: u16,
    user: String,
    client_key: String,
    unauthorized_key: String,
    _child: Reaped,
}

fn keygen(path: &Path) -> String {
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "otturnaut-test", "-f"]).arg(path));
    fs::read_to_string(path).expect("reading a generated ssh key")
}

impl SshServer {
    pub fn start() -> Self {
        SshServer::start_with(true)
    }

    pub fn start_protocol_v0() -> Self {
        SshServer::start_with(false)
    }

    fn start_with(protocol_v2: bool) -> Self {
        assert!(Path::new(SSHD).exists(), "{SSHD} is missing: install openssh-server");
        // sshd refuses to start as root without its privilege separation dir.
        let _ = fs::create_dir_all("/run/sshd");
        let tmp = tempfile::Builder::new().prefix("otturnaut-sshd-").tempdir().expect("creating a temp dir for sshd");
        let dir = tmp.path();
        keygen(&dir.join("host_ed25519"));
        let client_key = keygen(&dir.join("client_ed25519"));
        let unauthorized_key = keygen(&dir.join("other_ed25519"));
        fs::copy(dir.join("client_ed25519.pub"), dir.join("authorized_keys")).expect("writing authorized_keys");
        let user = run(Command::new("id").arg("-un"));

        for _ in 0..5 {
            let port = free_port();
            let config = dir.join("sshd_config");
            fs::write(
                &config,
                format!(
                    "Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {host_key}\n\
                     AuthorizedKeysFile {authorized}\n\
                     PidFile none\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     PermitRootLogin prohibit-password\n\
                     AllowUsers {user}\n\
                     {accept_env}\n\
                     LogLevel ERROR\n",
                    host_key = dir.join("host_ed25519").display(),
                    authorized = dir.join("authorized_keys").display(),
                    accept_env = if protocol_v2 { "AcceptEnv GIT_PROTOCOL" } else { "" },
                ),
            )
            .expect("writing sshd_config");
            run(Command::new(SSHD).arg("-t").arg("-f").arg(&config));
            let log = fs::File::create(dir.join("sshd.log")).expect("creating the sshd log");
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting sshd");
            if wait_for_banner(&mut child, port) {
                return SshServer { tmp, port, user, client_key, unauthorized_key, _child: Reaped(child) };
            }
            drop(Reaped(child));
        }
        panic!(
            "sshd did not start on loopback; its log:\n{}",
            fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ssh://user@127.0.0.1:PORT/abs/path/to/repo`.
    pub fn url(&self, repo: &GitRepo) -> String {
        self.url_via(self.port, repo)
    }

    /// Like [`Self::url`], but through `port` (e.g. a [`GatedProxy`]'s).
    pub fn url_via(&self, port: u16, repo: &GitRepo) -> String {
        format!("ssh://{}@127.0.0.1:{port}{}", self.user, repo.path().display())
    }

    /// The private key `sshd` accepts (OpenSSH format).
    pub fn client_key(&self) -> &str {
        &self.client_key
    }

    /// A valid private key `sshd` does not accept.
    pub fn unauthorized_key(&self) -> &str {
        &self.unauthorized_key
    }

    /// What sshd wrote to stderr so far, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.tmp.path().join("sshd.log")).unwrap_or_default()
    }
}

fn wait_for_banner(child: &mut Child, port: u16) -> bool {
    if !wait_listening(child, port, Duration::from_secs(10)) {
        return false;
    }
    let mut stream = match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
        Ok(s) => s,
        Err(_) => return false,
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut banner = [0u8; 4];
    stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-"
}

/// A loopback TCP proxy to `127.0.0.1:target` that accepts connections but
/// forwards nothing until [`GatedProxy::open`] is called. Never opened, it is
/// a server that hangs; opened after an assertion, it pins a client mid-connect.
/// Dropping it closes every connection.
#[derive(Debug)]
pub struct GatedProxy {
    port: u16,
    gate: tokio::sync::watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl GatedProxy {
    pub async fn start(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("binding the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (gate, open) = tokio::sync::watch::channel(false);
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            // Owning the connections here means aborting this task drops them all.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut open = open.clone();
                connections.spawn(async move {
                    if open.wait_for(|is_open| *is_open).await.is_err() {
                        return;
                    }
                    let Ok(mut outbound) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, target)).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        GatedProxy { port, gate, accepted, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Lets held and future connections through to the target.
    pub fn open(&self) {
        let _ = self.gate.send(true);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` connections were accepted, or panics.
    pub async fn wait_for_connections(&self, n: usize, deadline: Duration) {
        let start = Instant::now();
        while self.connections() < n {
            assert!(start.elapsed() < deadline, "no client connected to the proxy within {deadline:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for GatedProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
