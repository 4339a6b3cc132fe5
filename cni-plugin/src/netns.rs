//! Network namespace handles, and running code inside a namespace on a thread we own.
//!
//! Shared with ipamd (it uses the same helpers for its host networking).
//!
//! A network namespace is a per-*thread* property. Switching the namespace of a thread we do
//! not own (a tokio worker, the test harness's thread, the main thread that other code assumes
//! is in the host namespace) leaks the switch into unrelated code. So [`NetNs::run_in`] spawns
//! a short-lived scoped thread, moves only that thread into the target namespace and lets the
//! thread die afterwards: nothing ever has to switch back, and a failed switch cannot leave a
//! shared thread stranded in the wrong namespace.
//!
//! A netlink socket stays bound to the namespace it was created in, so the usual pattern is to
//! open the socket inside the target namespace (`NetNs::run_in(.., Netlink::open)`) and then use
//! it from any thread.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

/// Errors from opening or entering a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    /// The namespace file could not be opened (it does not exist, or is not accessible).
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        /// The path that was opened.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `setns(2)` refused to switch (not a netns file, or missing `CAP_SYS_ADMIN`).
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        /// The namespace that was entered.
        path: PathBuf,
        /// The errno from `setns(2)`.
        #[source]
        source: nix::Error,
    },
    /// The helper thread could not be spawned or panicked.
    #[error("network namespace helper thread failed: {0}")]
    Thread(String),
}

impl NsError {
    /// True when the namespace does not exist (any more): the file is gone, or the path is not
    /// a namespace file. DEL treats that as "nothing to do in the pod".
    pub fn is_gone(&self) -> bool {
        match self {
            Self::Open { source, .. } => source.kind() == io::ErrorKind::NotFound,
            Self::Enter { source, .. } => *source == nix::Error::EINVAL,
            Self::Thread(_) => false,
        }
    }
}

/// An open handle on a network namespace. Keeping the file open keeps the namespace alive.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens the namespace at `path` (`/run/netns/<name>`, `/proc/<pid>/ns/net`, ...).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NsError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| NsError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Self { file, path })
    }

    /// Opens the namespace of the calling thread (`/proc/thread-self/ns/net`).
    pub fn current() -> Result<Self, NsError> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// The path this handle was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a fresh thread that has been moved into this namespace, and returns its
    /// result. The calling thread's namespace never changes.
    pub fn run_in<T, F>(&self, f: F) -> Result<T, NsError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(scope, || {
                    nix::sched::setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(
                        |source| NsError::Enter {
                            path: self.path.clone(),
                            source,
                        },
                    )?;
                    Ok(f())
                })
                .map_err(|e| NsError::Thread(e.to_string()))?;
            handle
                .join()
                .map_err(|_| NsError::Thread("thread panicked".into()))?
        })
    }

    /// True when both handles refer to the same namespace (same device and inode).
    pub fn same_as(&self, other: &NetNs) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let a = self.file.metadata()?;
        let b = other.file.metadata()?;
        Ok(a.dev() == b.dev() && a.ino() == b.ino())
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Writes a sysctl under `/proc/sys` (path relative to it, with `/` separators, e.g.
/// `net/ipv6/conf/eni1234/accept_ra`) in the calling thread's network namespace.
///
/// Reads first and writes only when the value differs, and treats a missing file as success
/// (upstream ignores ENOENT: IPv6 may be disabled, or the key may not exist on this kernel).
/// Returns whether a write happened.
pub fn set_sysctl(rel_path: &str, value: &str) -> io::Result<bool> {
    let path = Path::new("/proc/sys").join(rel_path);
    match std::fs::read_to_string(&path) {
        Ok(cur) if cur.trim() == value => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    match std::fs::write(&path, value) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("writing {value} to {}: {e}", path.display()),
        )),
    }
}
