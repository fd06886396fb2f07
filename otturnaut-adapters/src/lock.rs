//! The per-app lock: one deploy, undeploy or reconcile at a time changes an
//! app, whether it came from the CLI or the HTTP API, in this process or another.
//!
//! A file lock (`flock`) on `{work_dir}/locks/{app}.lock`. The kernel releases
//! it when the holder exits, however it exits, so a crashed deploy never
//! leaves an app locked. The holder writes its pid and command into the file
//! so that a waiting process can say whom it waits for.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use otturnaut_core::AppId;

/// How often a waiting process tries the lock again.
const POLL: Duration = Duration::from_millis(200);

/// Held until dropped.
#[derive(Debug)]
pub struct AppLock {
    _file: File,
}

/// Who holds a lock, as the holder wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its process id, when it wrote one.
    pub pid: Option<u32>,
    /// What it is doing (`deploy`, `undeploy`, …).
    pub command: String,
}

impl Holder {
    /// A sentence for the user: who holds `app`'s lock.
    pub fn describe(&self, app: &AppId) -> String {
        let pid = self.pid.map_or_else(|| "pid unknown".to_owned(), |p| format!("pid {p}"));
        format!("another {} of {app} is running ({pid})", self.command)
    }
}

fn path(dir: &Path, app: &AppId) -> PathBuf {
    dir.join(format!("{app}.lock"))
}

fn open(dir: &Path, app: &AppId) -> io::Result<File> {
    if !dir.exists() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    // Not truncated on open: the current holder's pid is in there. A symlink
    // planted at the lock's path is refused (ELOOP), never followed: the
    // holder truncates and writes the file it opened.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path(dir, app))
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::other("it is a symbolic link; remove it (it is not ours)"),
            _ => e,
        })?;
    // Nor a hard link to a file elsewhere, nor a fifo or device.
    let meta = file.metadata()?;
    if !meta.is_file() || meta.nlink() > 1 {
        return Err(io::Error::other("it is not a plain file of ours (a hard link, fifo or device); remove it"));
    }
    Ok(file)
}

fn read_holder(file: &mut File) -> Holder {
    let mut text = String::new();
    let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
    let mut words = text.split_whitespace();
    let pid = words.next().and_then(|w| w.parse().ok());
    let command = words.next().unwrap_or("otturnaut command").to_owned();
    Holder { pid, command }
}

fn claim(mut file: File, command: &str) -> io::Result<AppLock> {
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{} {command}", std::process::id())?;
    Ok(AppLock { _file: file })
}

/// Takes the lock if it is free; otherwise says who holds it.
pub fn try_lock(dir: &Path, app: &AppId, command: &str) -> io::Result<Result<AppLock, Holder>> {
    let mut file = open(dir, app)?;
    match file.try_lock() {
        Ok(()) => claim(file, command).map(Ok),
        Err(TryLockError::WouldBlock) => Ok(Err(read_holder(&mut file))),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Why waiting for a lock ended without it.
#[derive(Debug)]
pub enum LockError {
    /// The lock file could not be opened or locked.
    Io(PathBuf, io::Error),
    /// Someone else held it for longer than we were willing to wait.
    TimedOut {
        /// Who held it.
        holder: Holder,
        /// How long we waited.
        after: Duration,
    },
}

impl LockError {
    /// A planted symlink or hard link (our own refusal), not a failing disk.
    pub fn is_refused(&self) -> bool {
        matches!(self, LockError::Io(_, e) if e.kind() == io::ErrorKind::Other)
    }
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Io(path, e) => write!(f, "cannot take the lock {}: {e}", path.display()),
            LockError::TimedOut { holder, after } => {
                write!(
                    f,
                    "{} {} and did not finish within {}",
                    holder.command,
                    holder.pid.map_or_else(|| "(pid unknown)".into(), |p| format!("(pid {p})")),
                    humantime::format_duration(*after)
                )
            }
        }
    }
}

impl std::error::Error for LockError {}

/// Takes the lock, waiting up to `timeout` for its holder; `waiting` is
/// called once, when the lock turns out to be held.
pub async fn lock(
    dir: &Path,
    app: &AppId,
    command: &str,
    timeout: Duration,
    waiting: impl FnOnce(&Holder),
) -> Result<AppLock, LockError> {
    let io_error = |e| LockError::Io(path(dir, app), e);
    let started = Instant::now();
    let mut waiting = Some(waiting);
    loop {
        match try_lock(dir, app, command).map_err(io_error)? {
            Ok(lock) => return Ok(lock),
            Err(holder) => {
                if let Some(say) = waiting.take() {
                    say(&holder);
                }
                if started.elapsed() >= timeout {
                    return Err(LockError::TimedOut { holder, after: timeout });
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_symlink_or_hard_link_is_refused_and_its_target_left_intact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app: AppId = "shop".parse().expect("app");
        let target = dir.path().join("precious");
        fs::write(&target, "precious data\n").expect("write");
        let locks = dir.path().join("locks");
        fs::create_dir(&locks).expect("mkdir");
        std::os::unix::fs::symlink(&target, path(&locks, &app)).expect("symlink");
        let e = try_lock(&locks, &app, "deploy").expect_err("symlink refused").to_string();
        assert!(e.contains("symbolic link"), "{e}");
        fs::remove_file(path(&locks, &app)).expect("rm");
        fs::hard_link(&target, path(&locks, &app)).expect("hard link");
        let e = try_lock(&locks, &app, "deploy").expect_err("hard link refused").to_string();
        assert!(e.contains("hard link"), "{e}");
        assert_eq!(fs::read_to_string(&target).expect("read"), "precious data\n");
    }

    #[tokio::test]
    async fn a_held_lock_makes_others_wait_and_is_released_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app: AppId = "shop".parse().expect("app");
        let held = try_lock(dir.path(), &app, "deploy").expect("io").expect("free");
        let holder = try_lock(dir.path(), &app, "undeploy").expect("io").expect_err("held");
        assert_eq!(holder, Holder { pid: Some(std::process::id()), command: "deploy".into() });
        assert_eq!(holder.describe(&app), format!("another deploy of shop is running (pid {})", std::process::id()));

        let other: AppId = "other".parse().expect("app");
        assert!(try_lock(dir.path(), &other, "deploy").expect("io").is_ok(), "other apps are independent");

        let mut told = false;
        let e = lock(dir.path(), &app, "deploy", Duration::from_millis(300), |_| told = true).await;
        assert!(matches!(e, Err(LockError::TimedOut { .. })));
        assert!(told);

        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(held);
        });
        lock(dir.path(), &app, "deploy", Duration::from_secs(10), |_| {}).await.expect("acquired after release");
        release.await.expect("release task");
    }
}
