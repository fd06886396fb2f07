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
//! `<dir>/<app>` are ever written: a route in Caddy's config that names
//! another file is not ours to follow.

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

    fn path(&self, app: &AppId) -> PathBuf {
        self.dir.join(app.as_str())
    }

    /// What an app's route dials: Caddy reads the file on every request.
    pub fn dial(&self, app: &AppId) -> String {
        format!("{{file.{}}}", self.path(app).display())
    }

    /// The address in `app`'s file; `None` if there is none.
    pub async fn read(&self, app: &AppId) -> Result<Option<String>> {
        let path = self.path(app);
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => Ok(Some(text.trim_end().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::failed(format!("reading the upstream file of app {app}"), io_error(&path, &e))),
        }
    }

    /// Points `app`'s route at `addr`: a new file renamed over the old one, so
    /// Caddy reads either the old address or the new one, never a partial
    /// file. Readable by everyone (Caddy runs as its own user).
    pub async fn write(&self, app: &AppId, addr: &str) -> Result<()> {
        let (dir, path, addr) = (self.dir.clone(), self.path(app), addr.to_owned());
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
        written.map_err(|e| Error::failed(&op, io_error(&self.path(app), &e)))
    }

    /// Removes `app`'s file, if any.
    pub async fn remove(&self, app: &AppId) -> Result<()> {
        let path = self.path(app);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::failed(format!("removing the upstream file of app {app}"), io_error(&path, &e))),
        }
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
        assert_eq!(files.dial(&app), format!("{{file.{}/upstreams/shop}}", dir.path().display()));
        assert_eq!(files.read(&app).await.expect("read"), None);
        files.write(&app, "127.0.0.1:10001").await.expect("write");
        files.write(&app, "127.0.0.1:9").await.expect("write again");
        assert_eq!(files.read(&app).await.expect("read").as_deref(), Some("127.0.0.1:9"));
        let path = dir.path().join("upstreams/shop");
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("upstreams")).expect("read_dir").collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
        files.remove(&app).await.expect("remove");
        files.remove(&app).await.expect("removing again is fine");
        assert_eq!(files.read(&app).await.expect("read"), None);
    }
}
