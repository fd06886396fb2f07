//! Packs a build context directory into the tar stream the build endpoint
//! wants, honouring `.dockerignore` the way the Docker CLI does.
//!
//! Architecture invariant: the repository is untrusted input; no file of it is
//! read through a symbolic link, and none without a size cap.

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
    let mut rules = match read_repo_file(&file, MAX_DOCKERIGNORE) {
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

/// The largest `.dockerignore` read (Docker's own CLI has no limit; real
/// ones are a few hundred bytes).
pub(crate) const MAX_DOCKERIGNORE: u64 = 1024 * 1024;

/// The largest Dockerfile accepted.
pub(crate) const MAX_DOCKERFILE: u64 = 1024 * 1024;

/// Reads a file of the repository as UTF-8 text: the repository is
/// untrusted, and the agent runs as root. A symlink is refused rather than
/// followed (it could name `/dev/zero`, a fifo that blocks forever, or a
/// file only root may read), so is anything but a regular file, and so is a
/// file over `max` bytes. Errors never quote the content.
pub(crate) fn read_repo_file(path: &Path, max: u64) -> io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // O_NOFOLLOW refuses a symlink as the last component (ELOOP); O_NONBLOCK
    // keeps a fifo from blocking the open. A symlinked parent directory
    // cannot occur: the walk below sends links as links, and the checkout's
    // own directories are real.
    let file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).map_err(
        |e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::other("it is a symbolic link, which is not followed"),
            _ => e,
        },
    )?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("it is not a regular file"));
    }
    if meta.len() > max {
        return Err(io::Error::other(format!("it is larger than {max} bytes")));
    }
    let mut bytes = Vec::new();
    // `take`: the size may change after the check.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::other(format!("it is larger than {max} bytes")));
    }
    String::from_utf8(bytes).map_err(|_| io::Error::other("it is not UTF-8 text"))
}

/// Checks the Dockerfile before the daemon reads it: a regular file (not a
/// link out of the checkout, a device or a fifo) of sane size, reached
/// without symlinked directories.
pub(crate) fn check_dockerfile(context: &Path, dockerfile: &Path) -> std::result::Result<(), String> {
    let mut path = context.to_path_buf();
    let parts: Vec<_> = dockerfile.components().collect();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err("there is no such file".into()),
            Err(e) => return Err(e.to_string()),
        };
        let last = i + 1 == parts.len();
        if meta.file_type().is_symlink() {
            return Err(format!("{} is a symbolic link, which is not followed", path.display()));
        }
        if !last && !meta.is_dir() {
            return Err(format!("{} is not a directory", path.display()));
        }
        if last && !meta.is_file() {
            return Err("it is not a regular file".into());
        }
        if last && meta.len() > MAX_DOCKERFILE {
            return Err(format!("it is larger than {MAX_DOCKERFILE} bytes"));
        }
    }
    Ok(())
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

    #[test]
    fn a_hostile_dockerignore_is_refused_without_being_read_or_quoted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        touch(root, "Dockerfile");
        let ignore = root.join(".dockerignore");
        for target in ["/dev/zero", "/etc/shadow", "/nonexistent"] {
            let _ = fs::remove_file(&ignore);
            std::os::unix::fs::symlink(target, &ignore).expect("symlink");
            let e = ignore_rules(root, Path::new("Dockerfile")).expect_err(target).to_string();
            assert!(e.contains("symbolic link"), "{target}: {e}");
        }
        fs::remove_file(&ignore).expect("rm");
        fs::write(&ignore, vec![b'a'; MAX_DOCKERIGNORE as usize + 1]).expect("write");
        let e = ignore_rules(root, Path::new("Dockerfile")).expect_err("too big").to_string();
        assert!(e.contains("larger than"), "{e}");
        fs::write(&ignore, "ok\n!\nroot:x:0:0:SECRETLINE\n").expect("write");
        let e = ignore_rules(root, Path::new("Dockerfile")).expect_err("bad line").to_string();
        assert!(e.contains("line 2") && !e.contains("SECRETLINE"), "{e}");
        fs::write(&ignore, "a\n".repeat(super::super::dockerignore::MAX_PATTERNS + 1)).expect("write");
        assert!(ignore_rules(root, Path::new("Dockerfile")).is_err());
    }

    #[test]
    fn the_dockerfile_must_be_a_real_file_inside_the_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        touch(root, "docker/Dockerfile");
        assert_eq!(check_dockerfile(root, Path::new("docker/Dockerfile")), Ok(()));
        std::os::unix::fs::symlink("/dev/zero", root.join("zero")).expect("symlink");
        std::os::unix::fs::symlink("/etc", root.join("etc")).expect("symlink");
        assert!(check_dockerfile(root, Path::new("zero")).is_err_and(|e| e.contains("symbolic link")));
        assert!(check_dockerfile(root, Path::new("etc/passwd")).is_err_and(|e| e.contains("symbolic link")));
        assert!(check_dockerfile(root, Path::new("nothing")).is_err());
        assert!(check_dockerfile(root, Path::new("docker")).is_err());
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
