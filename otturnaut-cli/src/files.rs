//! Reading the files named by flags and spec-file keys (`env_file`,
//! `build_arg_file`, `build_secret_files`, `ssh_key_file`,
//! `repo_credentials_file`, `--config`): bounded in size and only regular
//! files, so a flag pointing at `/dev/zero` or a fifo is an input error
//! instead of a process that eats memory or hangs. [`read_into`] puts their
//! contents into the [`DeployRequest`] fields they stand for.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use otturnaut_core::request::{MAX_BUILD_SECRET_SIZE, MAX_ENV, build_secret_id, env_entry};
use otturnaut_core::{DeployRequest, InvalidField, Secret};

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

/// Reads the files `request` names into the fields they stand for and
/// clears them: `env_file` under `env` and `build_arg_file` under
/// `build_args` (the entries given directly win), `build_secret_files`
/// into `build_secrets`, `repo_credentials_file` and `ssh_key_file` into
/// `repo_credentials` and `ssh_key`.
pub fn read_into(request: &mut DeployRequest) -> Result<(), InvalidField> {
    if let Some(path) = request.env_file.take() {
        let mut env = key_value_file("env_file", &path)?;
        env.append(&mut request.env);
        request.env = env;
    }
    if let Some(path) = request.build_arg_file.take() {
        let mut args = key_value_file("build_arg_file", &path)?;
        args.append(&mut request.build_args);
        request.build_args = args;
    }
    for (id, path) in std::mem::take(&mut request.build_secret_files) {
        let field = "build_secret_files";
        build_secret_id(&id).map_err(|m| InvalidField::new(field, m))?;
        let text = read_capped(&path, MAX_BUILD_SECRET_SIZE as u64).map_err(|m| InvalidField::new(field, m))?;
        request.build_secrets.insert(id, Secret::new(text));
    }
    if let Some(path) = request.repo_credentials_file.take() {
        let text = read_capped(&path, MAX_KEY_FILE).map_err(|m| InvalidField::new("repo_credentials_file", m))?;
        request.repo_credentials = Some(Secret::new(text));
    }
    if let Some(path) = request.ssh_key_file.take() {
        let text = read_capped(&path, MAX_KEY_FILE).map_err(|m| InvalidField::new("ssh_key_file", m))?;
        request.ssh_key = Some(Secret::new(text));
    }
    Ok(())
}

/// A file of `KEY=VALUE` lines, as `docker run --env-file` reads them: the
/// value is everything after the first `=`, verbatim; blank lines and lines
/// starting with `#` are skipped; an `export ` prefix is allowed. At most
/// 1 MiB and [`MAX_ENV`] entries. Messages name the line, never its value.
pub fn key_value_file(field: &'static str, path: &Path) -> Result<BTreeMap<String, Secret>, InvalidField> {
    let text = read_capped(path, MAX_SETTINGS_FILE).map_err(|m| InvalidField::new(field, m))?;
    let mut entries = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let at = || format!("{} line {}", path.display(), i + 1);
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(InvalidField::new(
                field,
                format!("{}: expected KEY=VALUE (line not shown: it may hold a secret)", at()),
            ));
        };
        let (name, value) = env_entry(key.trim_end(), &Secret::new(value))
            .map_err(|m| InvalidField::new(field, format!("{}: {m}", at())))?;
        entries.insert(name.to_string(), value);
        if entries.len() > MAX_ENV {
            return Err(InvalidField::new(field, format!("{} has more than {MAX_ENV} entries", path.display())));
        }
    }
    Ok(entries)
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
