//! Packs a build context directory into the tar stream the build endpoint
//! wants, honouring `.dockerignore` the way the Docker CLI does.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;

use bytes::Bytes;
use otturnaut_core::{Error, Result};
use tokio::sync::mpsc;

use super::dockerignore::DockerIgnore;

/// Size of the chunks sent to the daemon while the tar is being written.
const CHUNK: usize = 64 * 1024;

/// The ignore rules for a context: the user's `.dockerignore`, plus what the
/// CLI always does (the Dockerfile and `.dockerignore` are sent even when
/// excluded) and what we add (the `.git` directory is never sent: history
/// and credentials in remotes have no business in an image).
pub(crate) fn ignore_rules(context: &Path, dockerfile: &Path) -> Result<DockerIgnore> {
    let file = context.join(".dockerignore");
    let mut rules = match fs::read_to_string(&file) {
        Ok(text) => DockerIgnore::parse(&text)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => DockerIgnore::default(),
        Err(e) => {
            return Err(Error::failed(format!("reading {}", file.display()), e));
        }
    };
    rules.push(".git")?;
    if rules.is_excluded(".dockerignore") {
        rules.push("!.dockerignore")?;
    }
    let dockerfile = slash_path(dockerfile);
    if rules.is_excluded(&dockerfile) {
        rules.push(&format!("!{dockerfile}"))?;
    }
    Ok(rules)
}

/// Writes the context as a tar into chunks sent on `tx`. Blocking: run it on
/// a blocking thread. Stops early (with an error) if the receiver is gone.
pub(crate) fn write_tar(context: &Path, rules: &DockerIgnore, tx: mpsc::Sender<io::Result<Bytes>>) -> io::Result<()> {
    let writer = ChunkWriter { buf: Vec::with_capacity(CHUNK), tx };
    let mut builder = tar::Builder::new(writer);
    walk(&mut builder, context, Path::new(""), rules)?;
    builder.finish()?;
    let mut writer = builder.into_inner()?;
    writer.flush()
}

fn walk<W: Write>(builder: &mut tar::Builder<W>, root: &Path, rel_dir: &Path, rules: &DockerIgnore) -> io::Result<()> {
    let dir = root.join(rel_dir);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .and_then(|entries| entries.map(|e| e.map(|e| e.file_name())).collect::<io::Result<Vec<_>>>())
        .map_err(|e| at(&dir, e))?;
    // A sorted walk gives identical tars for identical trees: better caching.
    entries.sort();
    for name in entries {
        let rel = rel_dir.join(&name);
        let rel_slash = slash_path(&rel);
        let full = root.join(&rel);
        let meta = fs::symlink_metadata(&full).map_err(|e| at(&full, e))?;
        if rules.is_excluded(&rel_slash) {
            if meta.is_dir() && rules.has_exceptions() && rules.may_include_below(&rel_slash) {
                walk(builder, root, &rel, rules)?;
            }
            continue;
        }
        append(builder, &full, &rel, &meta)?;
        if meta.is_dir() {
            walk(builder, root, &rel, rules)?;
        }
    }
    Ok(())
}

fn append<W: Write>(builder: &mut tar::Builder<W>, full: &Path, rel: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    // As the Docker CLI does: files in the image belong to root, not to
    // whoever happened to check the tree out.
    header.set_uid(0);
    header.set_gid(0);
    header.set_username("")?;
    header.set_groupname("")?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(full).map_err(|e| at(full, e))?;
        header.set_size(0);
        builder.append_link(&mut header, rel, target)
    } else if kind.is_dir() {
        header.set_size(0);
        builder.append_data(&mut header, rel, io::empty())
    } else if kind.is_file() {
        let file = fs::File::open(full).map_err(|e| at(full, e))?;
        builder.append_data(&mut header, rel, file)
    } else {
        // Sockets, fifos and devices cannot be part of an image build.
        tracing::debug!(path = %full.display(), "skipping special file in build context");
        Ok(())
    }
}

/// Names the file an I/O error is about: the kernel's message does not.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn slash_path(path: &Path) -> String {
    path.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// Turns `Write` calls into chunks on a channel, so the tar is streamed to
/// the daemon instead of being held in memory.
struct ChunkWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<io::Result<Bytes>>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the build request was closed"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// The list of paths a context would send, for tests and diagnostics.
#[cfg(test)]
fn list(context: &Path, dockerfile: &Path) -> Result<Vec<PathBuf>> {
    let rules = ignore_rules(context, dockerfile)?;
    let (tx, mut rx) = mpsc::channel(1024);
    write_tar(context, &rules, tx).map_err(|e| Error::failed("tar", e))?;
    let mut data = Vec::new();
    while let Ok(chunk) = rx.try_recv() {
        data.extend_from_slice(&chunk.map_err(|e| Error::failed("tar", e))?);
    }
    let mut archive = tar::Archive::new(data.as_slice());
    let mut out = Vec::new();
    for entry in archive.entries().map_err(|e| Error::failed("tar", e))? {
        let entry = entry.map_err(|e| Error::failed("tar", e))?;
        assert_eq!(entry.header().uid().ok(), Some(0));
        out.push(entry.path().map_err(|e| Error::failed("tar", e))?.into_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        fs::write(path, rel).expect("write");
    }

    fn names(context: &Path, dockerfile: &str) -> Vec<String> {
        list(context, Path::new(dockerfile)).expect("tar").into_iter().map(|p| slash_path(&p)).collect()
    }

    #[test]
    fn git_dir_is_never_sent_and_ignored_files_are_left_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for f in
            ["Dockerfile", ".git/HEAD", "src/main.rs", "secret.env", "logs/a.log", "www/keep.html", "www/drop.html"]
        {
            touch(root, f);
        }
        fs::write(root.join(".dockerignore"), "secret.env\nlogs\nwww\n!www/keep.html\n!.git\n").expect("write");
        let got = names(root, "Dockerfile");
        assert_eq!(got, [".dockerignore", "Dockerfile", "src", "src/main.rs", "www/keep.html"]);
    }

    #[test]
    fn dockerfile_and_dockerignore_are_sent_even_when_excluded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        touch(root, "docker/app.Dockerfile");
        touch(root, "other");
        fs::write(root.join(".dockerignore"), "*\n").expect("write");
        let got = names(root, "docker/app.Dockerfile");
        assert_eq!(got, [".dockerignore", "docker/app.Dockerfile"]);
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_sent_as_links_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        touch(root, "Dockerfile");
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).expect("symlink");
        let rules = ignore_rules(root, Path::new("Dockerfile")).expect("rules");
        let (tx, mut rx) = mpsc::channel(1024);
        write_tar(root, &rules, tx).expect("tar");
        let mut data = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            data.extend_from_slice(&chunk.expect("chunk"));
        }
        let mut archive = tar::Archive::new(data.as_slice());
        let link = archive
            .entries()
            .expect("entries")
            .map(|e| e.expect("entry"))
            .find(|e| e.path().is_ok_and(|p| p == Path::new("link")))
            .expect("link entry");
        assert_eq!(link.header().entry_type(), tar::EntryType::Symlink);
        assert_eq!(link.header().size().ok(), Some(0));
    }
}
