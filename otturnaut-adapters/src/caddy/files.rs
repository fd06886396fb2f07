//! Upstream files: how a route switches without a config reload on Caddy 2.8+.
//!
//! Every config change is a reload, and Caddy 2.11.7 closes, unanswered, the
//! connections its previous servers accepted but had not read a request from
//! yet (`tests/tests/caddy.rs`, `a_reload_and_connections_without_a_whole_request_yet`):
//! under load, every reload loses a few requests, and no setting avoids it.
//! Caddy 2.8 added the `{file.PATH}` placeholder, and `reverse_proxy` replaces
//! placeholders in an upstream's `dial` on every request and every retry. So
//! an app's route proxies to `{file.<dir>/<app>}`, written once, and a switch
//! is an atomic rename of a new file holding the new `host:port` over that
//! path: no config change at all. The next request reads the new address
//! (BENCHMARKS.md: 0 of 20 switches lost a request under load, against 24-32
//! lost to 20 reloads).
//!
//! The file is derived state: its content is the live release's address,
//! which Docker's labels also record, and reconcile rewrites a missing or
//! wrong one. The rename never leaves the path missing or half-written (a
//! missing file makes Caddy answer 502 at once). Only paths of the form
//! `<dir>/<app>` and `<dir>/<app>.<i>` are ever written: a route in Caddy's
//! config that names another file is not ours to follow.
//!
//! On a cluster a release has one upstream per task: the route dials one
//! file per task, slots 0 to N-1, and a switch renames each slot's new file
//! in turn (for a moment some slots dial the new release and some the old,
//! both healthy). Only a change in the number of tasks rewrites the route.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use otturnaut_core::{AppId, Error, Result};

/// The directory of upstream files, one per app.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamFiles {
    dir: PathBuf,
}

impl UpstreamFiles {
    pub fn new(dir: PathBuf) -> Self {
        UpstreamFiles { dir }
    }

    /// Where the files go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Slot 0 is `<dir>/<app>` (one host: the only one); slot `i` of a
    /// release with several tasks is `<dir>/<app>.<i>` (app names have no dot).
    fn path(&self, app: &AppId, slot: usize) -> PathBuf {
        match slot {
            0 => self.dir.join(app.as_str()),
            i => self.dir.join(format!("{app}.{i}")),
        }
    }

    /// What an app's route dials for `slot`: Caddy reads the file on every request.
    pub fn dial(&self, app: &AppId, slot: usize) -> String {
        format!("{{file.{}}}", self.path(app, slot).display())
    }

    /// The address in `app`'s file for `slot`; `None` if there is none.
    pub async fn read(&self, app: &AppId, slot: usize) -> Result<Option<String>> {
        let path = self.path(app, slot);
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => Ok(Some(text.trim_end().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::failed(format!("reading the upstream file of app {app}"), io_error(&path, &e))),
        }
    }

    /// Points `app`'s `slot` at `addr`: a new file renamed over the old one,
    /// so Caddy reads either the old address or the new one, never a partial
    /// file. Readable by everyone (Caddy runs as its own user).
    pub async fn write(&self, app: &AppId, slot: usize, addr: &str) -> Result<()> {
        let (dir, path, addr) = (self.dir.clone(), self.path(app, slot), addr.to_owned());
        let op = format!("switching the upstream file of app {app} to {addr}");
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::DirBuilder::new().recursive(true).mode(0o755).create(&dir)?;
            let mut file = tempfile::Builder::new().prefix(".upstream-").tempfile_in(&dir)?;
            file.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
            file.write_all(addr.as_bytes())?;
            file.persist(&path).map_err(|e| e.error)?;
            Ok(())
        })
        .await
        .map_err(|e| Error::failed(&op, e))?;
        written.map_err(|e| Error::failed(&op, io_error(&self.path(app, slot), &e)))
    }

    /// Removes `app`'s files from slot `from` on, if any.
    pub async fn remove_from(&self, app: &AppId, from: usize) -> Result<()> {
        let op = || format!("removing the upstream files of app {app}");
        let mut entries = match tokio::fs::read_dir(&self.dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::failed(op(), io_error(&self.dir, &e))),
        };
        let mut slots = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(|e| Error::failed(op(), io_error(&self.dir, &e)))? {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let slot = match name.strip_prefix(app.as_str()) {
                Some("") => Some(0),
                Some(rest) => rest.strip_prefix('.').and_then(|i| i.parse::<usize>().ok()).filter(|i| *i > 0),
                None => None,
            };
            slots.extend(slot.filter(|s| *s >= from));
        }
        for slot in slots {
            let path = self.path(app, slot);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::failed(op(), io_error(&path, &e))),
            }
        }
        Ok(())
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_switch_replaces_the_whole_file_readable_by_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = UpstreamFiles::new(dir.path().join("upstreams"));
        let app: AppId = "shop".parse().expect("valid app");
        assert_eq!(files.dial(&app, 0), format!("{{file.{}/upstreams/shop}}", dir.path().display()));
        assert_eq!(files.dial(&app, 2), format!("{{file.{}/upstreams/shop.2}}", dir.path().display()));
        assert_eq!(files.read(&app, 0).await.expect("read"), None);
        files.write(&app, 0, "127.0.0.1:10001").await.expect("write");
        files.write(&app, 0, "127.0.0.1:9").await.expect("write again");
        assert_eq!(files.read(&app, 0).await.expect("read").as_deref(), Some("127.0.0.1:9"));
        let path = dir.path().join("upstreams/shop");
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("upstreams")).expect("read_dir").collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
        files.remove_from(&app, 0).await.expect("remove");
        files.remove_from(&app, 0).await.expect("removing again is fine");
        assert_eq!(files.read(&app, 0).await.expect("read"), None);
    }

    #[tokio::test]
    async fn removing_slots_leaves_other_apps_and_lower_slots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = UpstreamFiles::new(dir.path().to_owned());
        let (app, other): (AppId, AppId) = ("shop".parse().expect("valid"), "shop-2".parse().expect("valid"));
        for slot in 0..3 {
            files.write(&app, slot, "10.0.0.1:10000").await.expect("write");
        }
        files.write(&other, 0, "10.0.0.1:10001").await.expect("write");
        std::fs::write(dir.path().join("shop.x"), "not a slot").expect("write");
        files.remove_from(&app, 1).await.expect("remove slots 1 and up");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["shop", "shop-2", "shop.x"]);
    }
}
