//! Reading the files named by flags (`--env-file`, `--build-arg-file`,
//! `--ssh-key`, `--repo-credentials-file`, `--config`): bounded in size and
//! only regular files, so a flag pointing at `/dev/zero` or a fifo is an
//! input error instead of a process that eats memory or hangs.

use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The largest env, build-arg or config file read.
pub const MAX_SETTINGS_FILE: u64 = 1024 * 1024;

/// The largest SSH private key or credentials file read.
pub const MAX_KEY_FILE: u64 = 64 * 1024;

/// Reads `path` as UTF-8 text of at most `max` bytes. The message of an
/// error names the path and why, never the content.
pub fn read_capped(path: &Path, max: u64) -> Result<String, String> {
    let shown = path.display();
    // O_NONBLOCK: opening a fifo must not wait for a writer.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("cannot read {shown}: not a regular file"));
    }
    if meta.len() > max {
        return Err(format!("{shown} is larger than {max} bytes"));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("{shown} is larger than {max} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| format!("{shown} is not UTF-8 text (content not shown)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_and_big_files_are_refused() {
        assert!(read_capped(Path::new("/dev/zero"), 10).is_err_and(|e| e.contains("not a regular file")));
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big");
        fs::write(&big, "x".repeat(11)).expect("write");
        assert!(read_capped(&big, 10).is_err_and(|e| e.contains("larger than 10 bytes")));
        assert_eq!(read_capped(&big, 11).as_deref(), Ok("xxxxxxxxxxx"));
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
        assert!(made.success());
        assert!(read_capped(&fifo, 10).is_err_and(|e| e.contains("not a regular file")));
    }
}
