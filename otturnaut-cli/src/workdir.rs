//! The work dir and its `locks/`, `src/` and `ssh/`: created mode 0700 and
//! checked before anything is written there.
//!
//! The agent usually runs as root, and these directories hold deploy keys,
//! checkouts and the lock files it opens for writing. A directory another
//! user owns, or one that others may write to, would let them plant a
//! symlink where root is about to write, or read what root fetched: refused
//! with the path named, exit 2. A directory of ours that others may only read
//! (created by an older version, with the umask's 0755) is tightened to 0700.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::exit::Invalid;

/// The subdirectories the agent writes to.
pub const SUBDIRS: [&str; 3] = ["locks", "src", "ssh"];

/// Checks the work dir and its subdirectories that exist, creating
/// nothing: run with the other input checks, before anything connects.
pub fn check_existing(work_dir: &Path) -> Result<(), Invalid> {
    let uid = our_uid()?;
    for dir in dirs(work_dir) {
        if let Ok(meta) = fs::symlink_metadata(&dir) {
            check(&meta, uid)
                .map_err(|why| Invalid::new("--work-dir", format!("{}: {why}; refusing to use it", dir.display())))?;
        }
    }
    Ok(())
}

/// Creates (0700) or checks the work dir and its subdirectories. Every
/// existing directory is checked before any is created: a refusal leaves
/// the host as it was.
pub fn prepare(work_dir: &Path) -> Result<(), Invalid> {
    check_existing(work_dir)?;
    let uid = our_uid()?;
    for dir in dirs(work_dir) {
        check_or_create(&dir, uid)?;
    }
    Ok(())
}

fn dirs(work_dir: &Path) -> Vec<std::path::PathBuf> {
    std::iter::once(work_dir.to_path_buf()).chain(SUBDIRS.map(|s| work_dir.join(s))).collect()
}

fn our_uid() -> Result<u32, Invalid> {
    effective_uid().map_err(|e| Invalid::new("--work-dir", format!("cannot tell who we run as: {e}")))
}

fn check_or_create(dir: &Path, uid: u32) -> Result<(), Invalid> {
    let refuse = |why: String| Invalid::new("--work-dir", format!("{}: {why}; refusing to use it", dir.display()));
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Parents are created too (mode 0700 as well); `recursive` is
            // fine with a concurrent process creating the same directory.
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| refuse(format!("cannot create it: {e}")))?;
            let meta = fs::symlink_metadata(dir).map_err(|e| refuse(e.to_string()))?;
            check(&meta, uid).map_err(refuse)
        }
        Err(e) => Err(refuse(format!("cannot inspect it: {e}"))),
        Ok(meta) => {
            check(&meta, uid).map_err(refuse)?;
            if meta.mode() & 0o077 != 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| refuse(format!("cannot make it private (0700): {e}")))?;
            }
            Ok(())
        }
    }
}

fn check(meta: &fs::Metadata, uid: u32) -> Result<(), String> {
    if meta.file_type().is_symlink() {
        return Err("it is a symbolic link; give the real directory".into());
    }
    if !meta.is_dir() {
        return Err("it is not a directory".into());
    }
    if meta.uid() != uid {
        return Err(format!("it is owned by uid {}, not by the user running otturnaut (uid {uid})", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("others may write to it (mode {:o}); it must be 0700", meta.mode() & 0o7777));
    }
    Ok(())
}

/// Our effective uid, from `/proc/self/status` (the workspace forbids
/// `unsafe`, so no `geteuid`).
fn effective_uid() -> io::Result<u32> {
    let status = fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| io::Error::other("no Uid line in /proc/self/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_and_tightened_or_refused() {
        let base = tempfile::tempdir().expect("tempdir");
        let work = base.path().join("a/work");
        prepare(&work).expect("created");
        for dir in [work.clone(), work.join("locks"), work.join("src"), work.join("ssh")] {
            let mode = fs::metadata(&dir).expect("meta").mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
        fs::set_permissions(work.join("src"), fs::Permissions::from_mode(0o755)).expect("chmod");
        prepare(&work).expect("tightened");
        assert_eq!(fs::metadata(work.join("src")).expect("meta").mode() & 0o777, 0o700);

        fs::set_permissions(work.join("locks"), fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = prepare(&work).expect_err("world-writable").to_string();
        assert!(e.starts_with("--work-dir") && e.contains("locks") && e.contains("others may write"), "{e}");
        fs::set_permissions(work.join("locks"), fs::Permissions::from_mode(0o700)).expect("chmod");

        fs::remove_dir(work.join("ssh")).expect("rm");
        std::os::unix::fs::symlink("/tmp", work.join("ssh")).expect("symlink");
        let e = prepare(&work).expect_err("symlink").to_string();
        assert!(e.contains("ssh") && e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn our_uid_is_known() {
        let uid = effective_uid().expect("uid");
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(fs::metadata(dir.path()).expect("meta").uid(), uid);
    }
}
