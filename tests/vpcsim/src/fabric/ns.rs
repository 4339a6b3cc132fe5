//! Named network namespaces, the per-node holder process, and "run this inside namespace X".
//!
//! Namespaces are per *thread*. Everything that must happen inside a fabric namespace (writing a
//! sysctl, opening a listening socket) runs on a fresh OS thread that `setns`es there, does its
//! work and ends; it never returns to the caller's namespace, so no runtime worker thread and no
//! caller thread can ever be left in the wrong namespace. A socket stays bound to the namespace
//! it was created in, so the caller can serve it from tokio afterwards.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sched::{CloneFlags, setns};

use super::{FabricError, ip};

/// Where iproute2 keeps named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Path of the named namespace `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether the named namespace exists.
pub fn exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Creates the named network namespace; fails if it already exists.
pub fn create(name: &str) -> Result<(), FabricError> {
    if exists(name) {
        return Err(FabricError::Invalid(format!(
            "network namespace {name} already exists (run `vpcsim down` for its prefix first)"
        )));
    }
    ip::run(None, &["netns", "add", name]).map(|_| ())
}

/// Deletes the named namespace; absent is fine.
pub fn delete(name: &str) -> Result<(), FabricError> {
    if !exists(name) {
        return Ok(());
    }
    ip::run(None, &["netns", "delete", name]).map(|_| ())
}

/// Names of the existing named namespaces that start with `prefix`.
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<String> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// Inode of the nsfs object behind a named namespace (what `/proc/<pid>/ns/net` points at).
pub fn netns_inode(name: &str) -> Option<u64> {
    std::fs::metadata(netns_path(name)).ok().map(|m| m.ino())
}

/// Runs `f` on a new OS thread that has entered the named network namespace.
pub fn run_in<T, F>(name: &str, f: F) -> Result<T, FabricError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let path = netns_path(name);
    let file = File::open(&path).map_err(|source| FabricError::Io {
        ctx: format!("cannot open network namespace {}", path.display()),
        source,
    })?;
    let ns = name.to_owned();
    let handle = std::thread::Builder::new()
        .name(format!("in-{ns}"))
        .spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| FabricError::Sys {
                ctx: format!("setns into {ns}"),
                source,
            })?;
            // This thread ends inside `ns`; it is never reused, so it never needs to go back.
            Ok(f())
        })
        .map_err(|source| FabricError::Io {
            ctx: "cannot spawn a namespace thread".to_owned(),
            source,
        })?;
    handle
        .join()
        .map_err(|_| FabricError::Invalid(format!("thread inside {name} panicked")))?
}

/// Writes sysctls (keys relative to `/proc/sys`, e.g. `net/ipv4/ip_forward`) inside `ns`.
/// `/proc/sys/net` shows the network namespace of the *thread* that opens it.
pub fn write_sysctls(ns: &str, kv: &[(&str, &str)]) -> Result<(), FabricError> {
    let owned: Vec<(String, String)> = kv
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let ns_name = ns.to_owned();
    run_in(ns, move || {
        for (k, v) in owned {
            let path = Path::new("/proc/sys").join(&k);
            std::fs::write(&path, &v).map_err(|source| FabricError::Io {
                ctx: format!("cannot set {k}={v} in {ns_name}"),
                source,
            })?;
        }
        Ok(())
    })?
}

/// Reads one sysctl inside `ns` (trimmed).
pub fn read_sysctl(ns: &str, key: &str) -> Result<String, FabricError> {
    let path = Path::new("/proc/sys").join(key);
    let ns_name = ns.to_owned();
    run_in(ns, move || {
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_owned())
            .map_err(|source| FabricError::Io {
                ctx: format!("cannot read {} in {ns_name}", path.display()),
                source,
            })
    })?
}

/// Opens a listening TCP socket inside `ns` (the address must already exist there).
pub fn bind_tcp(
    ns: &str,
    addr: std::net::SocketAddr,
) -> Result<std::net::TcpListener, FabricError> {
    let ns_name = ns.to_owned();
    let l = run_in(ns, move || {
        std::net::TcpListener::bind(addr).map_err(|source| FabricError::Io {
            ctx: format!("cannot listen on {addr} inside {ns_name}"),
            source,
        })
    })??;
    l.set_nonblocking(true).map_err(|source| FabricError::Io {
        ctx: format!("cannot make the listener on {addr} non-blocking"),
        source,
    })?;
    Ok(l)
}

/// A bind mount the node holder sets up in the node's private mount namespace.
#[derive(Debug, Clone)]
pub struct BindMount {
    /// Node-local directory on the host.
    pub source: PathBuf,
    /// The production path it replaces inside the node (e.g. `/run/aws-node`).
    pub target: PathBuf,
}

/// Starts the long-lived process that *is* a node: it lives in the node's network namespace
/// and in a private mount namespace in which the node-local directories are bind-mounted over
/// the production paths. `nsenter --target <pid> --net --mount` then enters the node.
///
/// The holder is `sleep infinity`; the namespaces are set up between `fork` and `exec`.
///
/// The node also gets its own sysfs (mounted after entering the network namespace, so
/// `/sys/class/net` lists the node's links, as `ip netns exec` arranges), with the host's
/// `/sys/fs/cgroup` tree carried over so a container runtime inside the node still finds its
/// cgroups. `stash` is an empty directory used to carry it.
pub fn spawn_holder(netns: &str, binds: &[BindMount], stash: &Path) -> Result<Child, FabricError> {
    let path = netns_path(netns);
    let ns_file = File::open(&path).map_err(|source| FabricError::Io {
        ctx: format!("cannot open network namespace {}", path.display()),
        source,
    })?;
    // Everything the child needs is allocated here, before fork: only async-signal-safe
    // syscalls may run between fork and exec in a multi-threaded parent.
    let cstr = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| FabricError::Invalid(format!("path {} contains NUL", p.display())))
    };
    let mut pairs = Vec::with_capacity(binds.len());
    for b in binds {
        pairs.push((cstr(&b.source)?, cstr(&b.target)?));
    }
    let root = c"/".to_owned();
    let sys = c"/sys".to_owned();
    let sysfs = c"sysfs".to_owned();
    let cgroup = c"/sys/fs/cgroup".to_owned();
    let carry_cgroup = Path::new("/sys/fs/cgroup").is_dir();
    let stash_c = cstr(stash)?;
    let mut cmd = Command::new("sleep");
    cmd.arg("infinity")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    #[allow(unsafe_code)]
    // SAFETY: the closure only performs raw syscalls (setsid, unshare, mount, setns) on data
    // allocated before fork, and builds errors with `from_raw_os_error`, which does not
    // allocate; this is what `pre_exec` requires of code running in a forked child.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            use nix::mount::{MsFlags, mount};
            let err = |e: nix::Error| std::io::Error::from_raw_os_error(e as i32);
            // Own session: a Ctrl-C aimed at whoever ran `vpcsim up` must not kill the node.
            nix::unistd::setsid().map_err(err)?;
            nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(err)?;
            // The host's `/` is usually a shared mount (systemd); without this our bind mounts
            // would propagate back to the host. Slave keeps host mounts flowing in, not out.
            mount(
                None::<&std::ffi::CStr>,
                root.as_c_str(),
                None::<&std::ffi::CStr>,
                MsFlags::MS_REC | MsFlags::MS_SLAVE,
                None::<&std::ffi::CStr>,
            )
            .map_err(err)?;
            for (src, dst) in &pairs {
                mount(
                    Some(src.as_c_str()),
                    dst.as_c_str(),
                    None::<&std::ffi::CStr>,
                    MsFlags::MS_BIND,
                    None::<&std::ffi::CStr>,
                )
                .map_err(err)?;
            }
            setns(&ns_file, CloneFlags::CLONE_NEWNET).map_err(err)?;
            let none = None::<&std::ffi::CStr>;
            if carry_cgroup {
                mount(
                    Some(cgroup.as_c_str()),
                    stash_c.as_c_str(),
                    none,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    none,
                )
                .map_err(err)?;
            }
            // sysfs takes the network namespace of the mounting task.
            mount(
                Some(sysfs.as_c_str()),
                sys.as_c_str(),
                Some(sysfs.as_c_str()),
                MsFlags::empty(),
                none,
            )
            .map_err(err)?;
            if carry_cgroup {
                mount(
                    Some(stash_c.as_c_str()),
                    cgroup.as_c_str(),
                    none,
                    MsFlags::MS_MOVE,
                    none,
                )
                .map_err(err)?;
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| FabricError::Io {
        ctx: format!("cannot start the holder process of {netns}"),
        source,
    })
}

/// Inode of a process's mount namespace.
pub fn mnt_inode(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|m| m.ino())
}

/// Processes (other than this one) whose network namespace is one of `net_inodes` or whose
/// mount namespace is one of `mnt_inodes`.
pub fn processes_in(net_inodes: &HashSet<u64>, mnt_inodes: &HashSet<u64>) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for e in dir.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let ino = |kind: &str| {
            std::fs::metadata(format!("/proc/{pid}/ns/{kind}"))
                .ok()
                .map(|m| m.ino())
        };
        let in_net = ino("net").is_some_and(|i| net_inodes.contains(&i));
        let in_mnt = ino("mnt").is_some_and(|i| mnt_inodes.contains(&i));
        if in_net || in_mnt {
            v.push(pid);
        }
    }
    v
}

/// Whether `pid` is alive (and not a zombie).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`); with the pid
/// it identifies a process across pid reuse.
pub fn pid_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (state); field 22 is index 19 from there.
    rest.split_whitespace().nth(19)?.parse().ok()
}
