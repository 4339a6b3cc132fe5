//! Atomic installation of files into directories other processes read concurrently.
//!
//! The container runtime may exec `/opt/cni/bin/aws-cni` or read `/etc/cni/net.d` at any moment.
//! Writing in place would let it see a truncated binary (`exec format error`, or worse a
//! half-written ELF) or half a conflist. So every file is written to a temporary name in the
//! *same* directory (rename is only atomic within one filesystem), flushed with fsync, given its
//! final mode, and renamed over the final name; the directory is fsynced so the rename survives
//! a crash. Renaming also works while the old binary is being executed (no `ETXTBSY`), which an
//! in-place overwrite does not.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A filesystem step that failed, with the path it failed on.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct FsError {
    /// What was being done (`copy`, `rename`, ...).
    pub op: &'static str,
    /// The file or directory involved.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

fn ctx<T>(op: &'static str, path: &Path, r: io::Result<T>) -> Result<T, FsError> {
    r.map_err(|source| FsError {
        op,
        path: path.to_path_buf(),
        source,
    })
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes the temporary file unless it was renamed into place.
struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Temporary name: hidden and without a `.conf`/`.conflist`/`.json` suffix, so neither libcni's
/// config-dir scan nor a runtime's plugin lookup can pick it up.
fn temp_path(dir: &Path, name: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

fn commit(
    dir: &Path,
    name: &str,
    mode: u32,
    fill: impl FnOnce(&mut File) -> Result<(), FsError>,
) -> Result<PathBuf, FsError> {
    ctx("create directory", dir, fs::create_dir_all(dir))?;
    let tmp = temp_path(dir, name);
    let mut guard = TempGuard {
        path: tmp.clone(),
        armed: true,
    };
    let mut f = ctx(
        "create",
        &tmp,
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp),
    )?;
    fill(&mut f)?;
    // The umask may have cleared bits from the mode given to open(2).
    ctx(
        "chmod",
        &tmp,
        f.set_permissions(fs::Permissions::from_mode(mode)),
    )?;
    ctx("fsync", &tmp, f.sync_all())?;
    drop(f);
    let dest = dir.join(name);
    ctx("rename into place", &dest, fs::rename(&tmp, &dest))?;
    guard.armed = false;
    ctx(
        "fsync directory",
        dir,
        File::open(dir).and_then(|d| d.sync_all()),
    )?;
    Ok(dest)
}

/// Copies `src` to `dir/name` atomically with `mode` (e.g. 0o755 for a plugin binary).
/// Returns the final path.
pub fn install_file(src: &Path, dir: &Path, name: &str, mode: u32) -> Result<PathBuf, FsError> {
    let mut input = ctx("open", src, File::open(src))?;
    commit(dir, name, mode, |out| {
        ctx("copy from", src, io::copy(&mut input, out).map(|_| ()))
    })
}

/// Writes `data` to `dir/name` atomically with `mode`. Returns the final path.
pub fn write_file(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<PathBuf, FsError> {
    commit(dir, name, mode, |out| {
        ctx("write", &dir.join(name), out.write_all(data))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn write_sets_mode_despite_umask_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = write_file(d.path(), "x.conflist", b"{}", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"{}");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.conflist")]);
    }

    #[test]
    fn failed_copy_names_the_path_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("does-not-exist");
        let e = install_file(&missing, d.path(), "aws-cni", 0o755).unwrap_err();
        assert!(e.to_string().contains("does-not-exist"), "{e}");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn install_replaces_existing_file() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::write(&src, b"new contents").unwrap();
        let bin = d.path().join("bin");
        fs::create_dir(&bin).unwrap();
        fs::write(bin.join("aws-cni"), b"old").unwrap();
        let p = install_file(&src, &bin, "aws-cni", 0o755).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new contents");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        assert_eq!(fs::read_dir(&bin).unwrap().count(), 1);
    }
}
