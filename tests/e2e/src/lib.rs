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

use std::time::{Duration, Instant};

pub use bins::Bins;
pub use cni::{Cni, Pod};
pub use ec2::{Ec2, EniInfo};
pub use ipamd::Ipamd;
pub use vpc::{Description, NodeDesc, Vpc};

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
        };
        for i in 0..nodes {
            let node = c.vpc.node(i)?.clone();
            let dir = c.tmp.path().join(&node.name);
            let d = Ipamd::start(&c.bins.ipamd, &c.vpc, &node, &dir, ipamd_env)?;
            c.cnis.push(Cni::for_node(&c.bins.aws_cni, &d));
            c.ipamds.push(d);
        }
        Ok(c)
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

    /// Log tails of vpcsim and every ipamd (for failure messages).
    pub fn diagnostics(&self) -> String {
        let mut s = self.vpc.log_tail(30);
        for d in &self.ipamds {
            s.push('\n');
            s.push_str(&d.log_tail(30));
        }
        s
    }
}
