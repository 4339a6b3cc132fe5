//! End-to-end harness: vpcsim + the real `ipamd` and `aws-cni` binaries.
//!
//! Everything here drives the *built binaries* the way production does: `vpcsim up` builds the
//! VPC (EC2 + IMDS emulator and the namespace fabric), one `ipamd` runs inside every node's
//! network namespace (`ip netns exec <node> ipamd`), and pods are network namespaces that the
//! `aws-cni` plugin wires when invoked like a container runtime would (CNI environment
//! variables + netconf on stdin, cni-spec.md §2-3).
//!
//! Isolation: every namespace and process a test creates carries the test's prefix
//! (`e2e<tag><owner pid in hex>`), is removed by RAII guards on every exit path, and is swept by
//! [`sweep_stale`] when the owning test process died without cleaning up.
//!
//! Root only: network namespaces need `CAP_SYS_ADMIN`.

pub mod bins;
pub mod cni;
pub mod ec2;
pub mod ipamd;
pub mod net;
pub mod stale;
pub mod vpc;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use bins::Bins;
pub use cni::{Cni, PluginFailure, Pod};
pub use ec2::{Ec2, EniInfo};
pub use ipamd::Ipamd;
pub use vpc::{Description, NodeDesc, Vpc};

use anyhow::Context;

/// Environment variable carried by every process the harness starts, valued with the pid of
/// the test process that owns it; [`stale::sweep`] kills processes whose owner is gone.
pub const OWNER_ENV: &str = "AWSCNI_E2E_OWNER";

/// Network-namespace prefix of everything this crate creates.
pub const NS_PREFIX: &str = "e2e";

/// Fails unless running as root (the tests create network namespaces).
pub fn require_root() -> anyhow::Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "the end-to-end tests create network namespaces and must run as root"
    );
    Ok(())
}

/// Where a failed scenario keeps its full logs: `<FAILURE_DIR>/<scenario>-<UTC time>/`, one
/// directory per failure, left for whoever investigates (the test's temp directory is removed).
pub const FAILURE_DIR: &str = "/tmp/awscni-e2e-failures";

/// Namespace prefix of one test: `e2e` + a tag (`g`..=`z`, outside the hex digits so the pid
/// can be parsed back) + this process's pid in hex. At most 10 characters (vpcsim allows 12).
pub fn test_prefix(tag: char) -> anyhow::Result<String> {
    anyhow::ensure!(
        ('g'..='z').contains(&tag),
        "test tag {tag:?} must be a letter g..=z"
    );
    Ok(format!("{NS_PREFIX}{tag}{:x}", std::process::id()))
}

/// Polls `f` every `step` until it returns `Some`, or fails after `timeout` naming `what`.
/// Timeouts are generous failure bounds, not performance assertions.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    step: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            match last_err {
                Some(e) => anyhow::bail!("timed out after {timeout:?} waiting for {what}: {e:#}"),
                None => anyhow::bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        std::thread::sleep(step);
    }
}

/// Last `n` lines of a text file (for error messages), or a note that it cannot be read.
pub fn tail(path: &std::path::Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            let start = lines.len().saturating_sub(n);
            format!(
                "--- last {} lines of {} ---\n{}",
                lines.len() - start,
                path.display(),
                lines[start..].join("\n")
            )
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// A vpcsim with one ipamd per node: the usual test fixture. Dropping it kills the ipamds,
/// runs `vpcsim down` and removes the temp directory, in that order (field order).
#[derive(Debug)]
pub struct Cluster {
    /// One ipamd per node (index = node index).
    pub ipamds: Vec<Ipamd>,
    /// The plugin per node.
    pub cnis: Vec<Cni>,
    /// The VPC.
    pub vpc: Vpc,
    /// Binaries.
    pub bins: Bins,
    /// Namespace prefix of this test.
    pub prefix: String,
    /// Temp directory (vpcsim state, per-node ipamd directories).
    pub tmp: tempfile::TempDir,
    /// Where [`Cluster::keep_evidence`] copied the logs, once it has.
    kept: Mutex<Option<PathBuf>>,
}

impl Cluster {
    /// Sweeps stale leftovers, starts vpcsim (`nodes` × `instance_type`, plus `vpcsim_args`),
    /// then one ipamd per node with `ipamd_env` and waits until every ipamd serves.
    pub fn up(
        tag: char,
        nodes: usize,
        instance_type: &str,
        vpcsim_args: &[&str],
        ipamd_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        require_root()?;
        let bins = Bins::locate()?;
        stale::sweep(Some(&bins.vpcsim));
        let prefix = test_prefix(tag)?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir()?;
        let vpc = Vpc::up(
            &bins.vpcsim,
            &prefix,
            &tmp.path().join("vpcsim"),
            nodes,
            instance_type,
            vpcsim_args,
        )?;
        let mut c = Self {
            ipamds: Vec::new(),
            cnis: Vec::new(),
            vpc,
            bins,
            prefix,
            tmp,
            kept: Mutex::new(None),
        };
        for i in 0..nodes {
            let node = c.vpc.node(i)?.clone();
            let dir = c.tmp.path().join(&node.name);
            let d = match Ipamd::start(&c.bins.ipamd, &c.vpc, &node, &dir, ipamd_env) {
                Ok(d) => d,
                // The node's directory is not in `ipamds` yet: keep it by hand.
                Err(e) => return Err(e.context(c.keep_evidence_note(&[&dir]))),
            };
            c.cnis.push(Cni::for_node(&c.bins.aws_cni, &d));
            c.ipamds.push(d);
        }
        Ok(c)
    }

    /// Copies the whole logs of this cluster (every node's ipamd directory: `ipamd.log`,
    /// `ipamd.out`, `plugin.log`, checkpoint; and the vpcsim log) to a new
    /// `<FAILURE_DIR>/<scenario>-<UTC time>/`, the scenario being the test's name. Called when
    /// a scenario fails; a second call refreshes the same directory (the drop of a failed test
    /// copies again once the ipamds are stopped, so the logs are complete). Returns the
    /// directory.
    pub fn keep_evidence(&self) -> anyhow::Result<PathBuf> {
        self.keep_evidence_of(&[])
    }

    fn keep_evidence_of(&self, extra_dirs: &[&Path]) -> anyhow::Result<PathBuf> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let dest = match kept.as_ref() {
            Some(d) => d.clone(),
            None => new_failure_dir(&scenario_name())?,
        };
        *kept = Some(dest.clone());
        let mut copied = 0;
        let mut node_dirs: Vec<&Path> = self.ipamds.iter().map(|d| d.dir.as_path()).collect();
        node_dirs.extend_from_slice(extra_dirs);
        for dir in node_dirs {
            let name = dir
                .file_name()
                .map_or_else(|| "node".into(), |n| n.to_string_lossy().into_owned());
            copied += copy_files(dir, &dest.join(name))?;
        }
        let vpcsim_log = Path::new(&self.vpc.desc.log_file);
        if vpcsim_log.is_file() {
            let to = dest.join(
                vpcsim_log
                    .file_name()
                    .map_or_else(|| "vpcsim.log".into(), |n| n.to_os_string()),
            );
            std::fs::copy(vpcsim_log, &to).with_context(|| {
                format!("cannot copy {} to {}", vpcsim_log.display(), to.display())
            })?;
            copied += 1;
        }
        anyhow::ensure!(copied > 0, "no log files found to keep");
        Ok(dest)
    }

    /// One line for a failure message: where the full logs are (or why they could not be kept).
    fn keep_evidence_note(&self, extra_dirs: &[&Path]) -> String {
        match self.keep_evidence_of(extra_dirs) {
            Ok(d) => format!(
                "full logs (ipamd.log, ipamd.out, plugin.log of every node, vpcsim log) kept in {}",
                d.display()
            ),
            Err(e) => format!("could not keep the full logs under {FAILURE_DIR}: {e:#}"),
        }
    }

    /// Creates pod `name` (namespace `<prefix>-<name>`) on node `node` and runs ADD.
    pub fn add_pod(&self, node: usize, name: &str) -> anyhow::Result<Pod> {
        let cni = self
            .cnis
            .get(node)
            .ok_or_else(|| anyhow::anyhow!("no node #{node}"))?;
        let mut pod = Pod::new(&self.prefix, name, name)?;
        cni.add(&mut pod)?;
        Ok(pod)
    }

    /// DEL of `pod` on node `node`.
    pub fn del_pod(&self, node: usize, pod: &Pod) -> anyhow::Result<()> {
        let cni = self
            .cnis
            .get(node)
            .ok_or_else(|| anyhow::anyhow!("no node #{node}"))?;
        cni.del(pod)
    }

    /// Pod-usable addresses EC2 says node `node` holds (secondary IPs + 16 per /28), and
    /// its ENI count.
    pub fn pool(&self, node: usize) -> anyhow::Result<(usize, usize)> {
        let id = &self.vpc.node(node)?.instance_id;
        let enis = self.vpc.ec2()?.enis_of(id)?;
        Ok((enis.iter().map(EniInfo::pod_capacity).sum(), enis.len()))
    }

    /// For failure messages: keeps the full logs (see [`Cluster::keep_evidence`]) and returns
    /// where they are, followed by the log tails of vpcsim and every ipamd.
    pub fn diagnostics(&self) -> String {
        let mut s = format!("=== {} ===\n", self.keep_evidence_note(&[]));
        s.push_str(&self.vpc.log_tail(30));
        for d in &self.ipamds {
            s.push('\n');
            s.push_str(&d.log_tail(30));
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // A failed test (an assert, an unwrap, or `diagnostics` in its message): stop the
        // ipamds first so that their logs are complete, then keep (or refresh) the copy.
        for d in &mut self.ipamds {
            let _ = d.kill9();
        }
        eprintln!("e2e: {}", self.keep_evidence_note(&[]));
    }
}

/// The running test's name (libtest names each test's thread after it), as a file name.
fn scenario_name() -> String {
    let name = std::thread::current()
        .name()
        .unwrap_or("scenario")
        .rsplit("::")
        .next()
        .unwrap_or("scenario")
        .to_owned();
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Creates `<FAILURE_DIR>/<scenario>-<UTC time>` (with `-2`, `-3`, ... if taken).
fn new_failure_dir(scenario: &str) -> anyhow::Result<PathBuf> {
    let now = time::OffsetDateTime::now_utc();
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .context("cannot format the time")?;
    std::fs::create_dir_all(FAILURE_DIR).with_context(|| format!("cannot create {FAILURE_DIR}"))?;
    for n in 1..100 {
        let name = if n == 1 {
            format!("{scenario}-{stamp}")
        } else {
            format!("{scenario}-{stamp}-{n}")
        };
        let dir = Path::new(FAILURE_DIR).join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    anyhow::bail!("too many failure directories for {scenario} at {stamp} in {FAILURE_DIR}")
}

/// Copies the regular files of `from` (not recursively; sockets and directories are skipped)
/// into `to`, created if needed. Returns how many.
fn copy_files(from: &Path, to: &Path) -> anyhow::Result<usize> {
    let entries = match std::fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", from.display())),
    };
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut n = 0;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", from.display()))?;
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let dst = to.join(entry.file_name());
        std::fs::copy(entry.path(), &dst).with_context(|| {
            format!(
                "cannot copy {} to {}",
                entry.path().display(),
                dst.display()
            )
        })?;
        n += 1;
    }
    Ok(n)
}
