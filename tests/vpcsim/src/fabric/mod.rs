//! The network fabric: network namespaces and veth links that make the emulator's VPC real.
//!
//! Topology (names for prefix `vsim`; docs/vpcsim-fabric.md has the full picture):
//!
//! ```text
//!   vsim-node1 (netns + private mount ns)        vsim-vpc (the VPC router)            vsim-ext
//!   eth0 = primary ENI (MAC, IP/len, default) ── v<eni> ─┐  /32 + /28 routes per ENI
//!   eth1 = secondary ENI (hot-plugged)        ── v<eni> ─┤  gateways (net+1) on lo     203.0.113.10
//!   lo: 169.254.169.254 (IMDS), 169.254.171.1 (EC2)      ├─ ext 203.0.113.1 ──────── eth0
//!   vsim-node2 …                              ── v<eni> ─┘  default → ext (internet)
//! ```
//!
//! The fabric reads [`FabricView`] snapshots from the emulator and reconciles the kernel towards
//! them (diff desired vs observed, idempotent), see [`plan`]. It never touches the root
//! namespace: every change is made with `ip -n <fabric namespace>` or on a thread that entered
//! one of the fabric's namespaces.

pub mod ip;
pub mod ns;
pub mod plan;
pub mod run;
pub mod state;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::view::FabricView;

/// Errors of the fabric.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// An `ip` command failed.
    #[error("`{cmd}` failed: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A file or process operation failed.
    #[error("{ctx}: {source}")]
    Io {
        /// What was being done.
        ctx: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{ctx}: {source}")]
    Sys {
        /// What was being done.
        ctx: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// `ip -json` printed something unexpected.
    #[error("cannot parse the output of `{cmd}`: {source}")]
    Parse {
        /// The command line.
        cmd: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// Bad input or an unexpected state.
    #[error("{0}")]
    Invalid(String),
}

/// IMDS address, on every node's `lo` (as on EC2, reachable from the node and its pods).
pub const IMDS_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// EC2 endpoint address inside every node (on its `lo`, port 80). Link-local and unused by AWS
/// services (169.254.169.123 is time sync, .253 DNS, 169.254.170.x ECS/EKS pod identity), so it
/// cannot be mistaken for any of them. Give it to ipamd as `AWS_ENDPOINT_URL_EC2`.
pub const EC2_NODE_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 171, 1);
/// The "internet" host in the external namespace (TEST-NET-3, RFC 5737).
pub const EXT_HOST_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The VPC router's address towards the external namespace.
pub const EXT_ROUTER_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// Prefix length of the link between the VPC router and the external namespace.
pub const EXT_PREFIX_LEN: u8 = 24;

/// Production paths that get a node-local directory inside every node's mount namespace, so
/// several emulated nodes on one machine do not share ipamd's socket and checkpoint, the CNI
/// config and binaries, logs, or the runtime's named pod namespaces.
pub const NODE_LOCAL_PATHS: &[&str] = &[
    "/var/run/aws-node",
    "/etc/cni/net.d",
    "/opt/cni/bin",
    "/var/log/aws-routed-eni",
    "/var/lib/cni",
    "/run/netns",
];

/// Settings of a fabric.
#[derive(Debug, Clone)]
pub struct FabricConfig {
    /// Namespace name prefix: namespaces are `<prefix>-vpc`, `<prefix>-ext`, `<prefix>-node<N>`.
    /// Lowercase letters and digits only, so `<prefix>-` never matches another prefix's names.
    pub prefix: String,
    /// Directory holding each node's node-local directories (`<dir>/<node>/<path>`).
    pub node_dirs: PathBuf,
    /// Model EC2's source/destination check: the VPC drops a packet whose source address is not
    /// owned by the ENI it came from (strict `rp_filter` on the VPC side of every ENI).
    pub source_dest_check: bool,
}

/// Validates a namespace prefix (see [`FabricConfig::prefix`]).
pub fn validate_prefix(prefix: &str) -> Result<(), FabricError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 12
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(FabricError::Invalid(format!(
            "invalid prefix {prefix:?}: use 1-12 lowercase letters or digits"
        )))
    }
}

/// Name of the VPC router namespace.
pub fn vpc_ns(prefix: &str) -> String {
    format!("{prefix}-vpc")
}
/// Name of the external ("internet") namespace.
pub fn ext_ns(prefix: &str) -> String {
    format!("{prefix}-ext")
}
/// Name of node `n`'s namespace (`n` from 1).
pub fn node_ns(prefix: &str, n: usize) -> String {
    format!("{prefix}-node{n}")
}

/// One emulated node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    /// Short name (`node1`).
    pub name: String,
    /// Network namespace name.
    pub netns: String,
    /// The instance this node is.
    pub instance_id: String,
    /// Pid of the process holding the node's mount namespace; enter the node with
    /// `nsenter --target <pid> --net --mount`.
    pub holder_pid: u32,
    /// Inode of the node's mount namespace (to find its processes after a crash).
    pub mnt_inode: u64,
    /// Production path → node-local directory on the host.
    pub dirs: Vec<(String, String)>,
}

impl NodeInfo {
    /// Command prefix that runs a program inside the node (network + mount namespaces).
    pub fn enter_command(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            "--target".into(),
            self.holder_pid.to_string(),
            "--net".into(),
            "--mount".into(),
            "--".into(),
        ]
    }
}

/// Progress of the reconciler, for tests and `/fabric/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FabricStatus {
    /// Generation of the last view applied without error.
    pub applied_generation: u64,
    /// Reconcile passes run.
    pub passes: u64,
    /// Links created so far.
    pub links_created: u64,
    /// Links deleted so far.
    pub links_deleted: u64,
    /// Error of the last pass, if it failed.
    pub last_error: Option<String>,
    /// Inconsistencies found in the last view.
    pub warnings: Vec<String>,
}

/// A live fabric: the VPC and external namespaces, the nodes, and the reconciler's state.
#[derive(Debug)]
pub struct Fabric {
    cfg: FabricConfig,
    nodes: Mutex<Vec<NodeInfo>>,
    holders: Mutex<Vec<Child>>,
    status: watch::Sender<FabricStatus>,
    /// Serialises reconcile passes (the periodic resync and the watch loop may overlap).
    pass: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fabric {
    /// Creates the VPC router and external namespaces. Fails if any namespace with the prefix
    /// already exists (another fabric, or a crashed one: run `vpcsim down` first).
    pub fn create(cfg: FabricConfig) -> Result<Arc<Fabric>, FabricError> {
        validate_prefix(&cfg.prefix)?;
        let stale = ns::list_with_prefix(&format!("{}-", cfg.prefix));
        if !stale.is_empty() {
            return Err(FabricError::Invalid(format!(
                "namespaces {stale:?} already exist; run `vpcsim down --prefix {}` first",
                cfg.prefix
            )));
        }
        let (status, _) = watch::channel(FabricStatus::default());
        let fabric = Arc::new(Fabric {
            cfg,
            nodes: Mutex::new(Vec::new()),
            holders: Mutex::new(Vec::new()),
            status,
            pass: Mutex::new(()),
        });
        if let Err(e) = fabric.create_base() {
            fabric.destroy();
            return Err(e);
        }
        Ok(fabric)
    }

    fn create_base(&self) -> Result<(), FabricError> {
        let vpc = vpc_ns(&self.cfg.prefix);
        let ext = ext_ns(&self.cfg.prefix);
        ns::create(&vpc)?;
        let strict = if self.cfg.source_dest_check { "1" } else { "0" };
        // Order matters: `default/*` applies to links created later, so set it before any link.
        // rp_filter's effective value is max(all, dev): `all` must be 0 so that only the
        // per-ENI strict check (source/dest check) applies. proxy_arp is OR(all, dev), so `all`
        // covers every peer: a node ARPing for any address of its subnet (its connected route)
        // gets the VPC router's MAC, as on EC2, where the VPC answers every ARP.
        ns::write_sysctls(
            &vpc,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", strict),
                ("net/ipv4/conf/all/proxy_arp", "1"),
                ("net/ipv4/conf/all/send_redirects", "0"),
                ("net/ipv4/conf/default/send_redirects", "0"),
                ("net/ipv6/conf/all/disable_ipv6", "1"),
                ("net/ipv6/conf/default/disable_ipv6", "1"),
            ],
        )?;
        ns::create(&ext)?;
        let ext_cidr = Ipv4Net::new(EXT_ROUTER_ADDR, EXT_PREFIX_LEN)
            .map_err(|e| FabricError::Invalid(e.to_string()))?;
        let host_cidr = Ipv4Net::new(EXT_HOST_ADDR, EXT_PREFIX_LEN)
            .map_err(|e| FabricError::Invalid(e.to_string()))?;
        ip::batch(
            &vpc,
            &[
                // A local table must exist before on-link next hops are accepted (the kernel
                // checks the next hop's address type in the local table), so lo goes up first.
                "link set dev lo up".into(),
                format!(
                    "link add name ext mtu {mtu} type veth peer name eth0 mtu {mtu} netns {ext}",
                    mtu = plan::ENI_MTU
                ),
                format!("addr add {ext_cidr} dev ext"),
                "link set dev ext up".into(),
                format!("route add default via {EXT_HOST_ADDR} dev ext"),
            ],
        )?;
        ip::batch(
            &ext,
            &[
                "link set dev lo up".into(),
                format!("addr add {host_cidr} dev eth0"),
                "link set dev eth0 up".into(),
                format!("route add default via {EXT_ROUTER_ADDR} dev eth0"),
            ],
        )?;
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &FabricConfig {
        &self.cfg
    }

    /// Creates node `n` (1-based) for `instance_id`: its network namespace with IMDS and EC2
    /// addresses on `lo`, its node-local directories and the holder process of its mount
    /// namespace. The ENIs appear at the next reconcile.
    pub fn add_node(&self, n: usize, instance_id: &str) -> Result<NodeInfo, FabricError> {
        let name = format!("node{n}");
        let netns = node_ns(&self.cfg.prefix, n);
        ns::create(&netns)?;
        // The EKS AMI enables forwarding; upstream ipamd assumes it (datapath.md §8).
        ns::write_sysctls(&netns, &[("net/ipv4/ip_forward", "1")])?;
        ip::batch(
            &netns,
            &[
                "link set dev lo up".into(),
                format!("addr add {IMDS_ADDR}/32 dev lo"),
                format!("addr add {EC2_NODE_ADDR}/32 dev lo"),
            ],
        )?;
        let mut binds = Vec::new();
        let mut dirs = Vec::new();
        for target in NODE_LOCAL_PATHS {
            let target = resolve_target(Path::new(target));
            if binds.iter().any(|b: &ns::BindMount| b.target == target) {
                continue;
            }
            let leaf = target
                .to_string_lossy()
                .trim_start_matches('/')
                .replace('/', "-");
            let source = self.cfg.node_dirs.join(&name).join(leaf);
            std::fs::create_dir_all(&source).map_err(|e| FabricError::Io {
                ctx: format!("cannot create {}", source.display()),
                source: e,
            })?;
            // The mount point must exist on the host; an empty directory is created if needed
            // and left in place (removing it later could detach other fabrics' mounts).
            std::fs::create_dir_all(&target).map_err(|e| FabricError::Io {
                ctx: format!("cannot create mount point {}", target.display()),
                source: e,
            })?;
            dirs.push((target.display().to_string(), source.display().to_string()));
            binds.push(ns::BindMount { source, target });
        }
        let stash = self.cfg.node_dirs.join(&name).join(".cgroup-stash");
        std::fs::create_dir_all(&stash).map_err(|e| FabricError::Io {
            ctx: format!("cannot create {}", stash.display()),
            source: e,
        })?;
        let child = ns::spawn_holder(&netns, &binds, &stash)?;
        let holder_pid = child.id();
        let mnt_inode = ns::mnt_inode(holder_pid).ok_or_else(|| {
            FabricError::Invalid(format!("holder {holder_pid} of {netns} died at start"))
        })?;
        lock(&self.holders).push(child);
        let info = NodeInfo {
            name,
            netns,
            instance_id: instance_id.to_owned(),
            holder_pid,
            mnt_inode,
            dirs,
        };
        lock(&self.nodes).push(info.clone());
        Ok(info)
    }

    /// The nodes created so far.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        lock(&self.nodes).clone()
    }

    /// Reads the kernel state of the VPC namespace.
    pub fn observe(&self) -> Result<plan::Observed, FabricError> {
        let vpc = vpc_ns(&self.cfg.prefix);
        let mut o = plan::Observed::default();
        for l in ip::links(&vpc)? {
            if let Some(alias) = l.ifalias.filter(|a| a.starts_with(plan::ALIAS_PREFIX)) {
                o.peers.insert(l.ifname, alias);
            }
        }
        for r in ip::routes_by_proto(&vpc, plan::ROUTE_PROTO)? {
            let dst = r.dst_net()?;
            let target = match (r.kind.as_deref(), r.dev) {
                (Some("unreachable"), _) => plan::RouteTarget::Unreachable,
                (None | Some("unicast"), Some(dev)) => plan::RouteTarget::Eni(dev),
                // Anything else with our protocol is not ours to keep: make it mismatch.
                _ => plan::RouteTarget::Eni(String::new()),
            };
            o.routes.insert(dst, target);
        }
        o.lo_addrs = ip::ipv4_addrs(&vpc, "lo")?
            .into_iter()
            .map(|n| n.addr())
            .collect();
        Ok(o)
    }

    /// One reconcile pass: make the kernel match `view`. Blocking (runs `ip`); call it from a
    /// blocking thread in async code.
    pub fn reconcile(&self, view: &FabricView) -> Result<plan::Plan, FabricError> {
        let _pass = lock(&self.pass);
        let node_map: HashMap<String, String> = lock(&self.nodes)
            .iter()
            .map(|n| (n.instance_id.clone(), n.netns.clone()))
            .collect();
        let desired = plan::desired(view, &node_map);
        let result = self.observe().and_then(|o| {
            let p = plan::plan(&desired, &o);
            ip::batch(&vpc_ns(&self.cfg.prefix), &p.vpc)?;
            for (ns_name, cmds) in &p.nodes {
                ip::batch(ns_name, cmds)?;
            }
            Ok(p)
        });
        self.status.send_modify(|s| {
            s.passes += 1;
            s.warnings = desired.warnings.clone();
            match &result {
                Ok(p) => {
                    s.applied_generation = s.applied_generation.max(view.generation);
                    s.links_created += p.created.len() as u64;
                    s.links_deleted += p.deleted.len() as u64;
                    s.last_error = None;
                }
                Err(e) => s.last_error = Some(e.to_string()),
            }
        });
        result
    }

    /// Current reconciler status.
    pub fn status(&self) -> FabricStatus {
        self.status.borrow().clone()
    }

    /// Subscribes to reconciler status changes.
    pub fn subscribe_status(&self) -> watch::Receiver<FabricStatus> {
        self.status.subscribe()
    }

    /// Waits until a view of generation `generation` or later has been applied.
    pub async fn wait_applied(
        &self,
        generation: u64,
        timeout: Duration,
    ) -> Result<(), FabricError> {
        let mut rx = self.status.subscribe();
        let wait = rx.wait_for(|s| s.applied_generation >= generation);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(FabricError::Invalid(format!(
                "fabric did not apply generation {generation} within {timeout:?} (status {:?})",
                self.status()
            ))),
        }
    }

    /// Runs the reconciler until `shutdown` flips to true: a pass on every change of `changes`
    /// (bursts coalesce, since each pass reads the latest view), plus a periodic resync that
    /// repairs drift (someone deleted a route) and retries after errors. Also returns when the
    /// VPC namespace has vanished (someone ran `down` with another state directory, or deleted
    /// it by hand): there is nothing left to reconcile, and the caller should shut down.
    pub async fn run_reconciler<V>(
        self: Arc<Self>,
        view: V,
        mut changes: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) where
        V: Fn() -> FabricView + Send + Sync + 'static,
    {
        let view = Arc::new(view);
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let vpc = vpc_ns(&self.cfg.prefix);
        loop {
            if !ns::exists(&vpc) {
                tracing::warn!(namespace = %vpc, "VPC namespace is gone; stopping the reconciler");
                return;
            }
            let fabric = Arc::clone(&self);
            let v = Arc::clone(&view);
            let res = tokio::task::spawn_blocking(move || fabric.reconcile(&v())).await;
            match res {
                Ok(Ok(p)) if !p.is_empty() => tracing::debug!(
                    created = ?p.created, deleted = ?p.deleted, commands = p.vpc.len(),
                    "fabric reconciled"
                ),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "fabric reconcile failed; will retry"),
                Err(e) => tracing::error!(error = %e, "fabric reconcile task died"),
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Best-effort removal of everything this fabric created: the holder processes, every
    /// process still inside its namespaces, and the namespaces. Idempotent.
    pub fn destroy(&self) {
        for mut child in lock(&self.holders).drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let nodes = lock(&self.nodes).clone();
        let mnt: HashSet<u64> = nodes.iter().map(|n| n.mnt_inode).collect();
        sweep(&self.cfg.prefix, &mnt);
    }
}

/// Resolves symlinks in the parent of a production path (`/var/run` → `/run` on most systems),
/// so the bind mount lands on the real directory.
fn resolve_target(p: &Path) -> PathBuf {
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(leaf)) => std::fs::canonicalize(parent)
            .map(|c| c.join(leaf))
            .unwrap_or_else(|_| p.to_path_buf()),
        _ => p.to_path_buf(),
    }
}

/// Kills every process inside a `<prefix>-*` namespace or one of `mnt_inodes`, then deletes the
/// `<prefix>-*` namespaces. Used by [`Fabric::destroy`] and by `vpcsim down` after a crash.
/// Returns the namespaces deleted and the processes killed.
pub fn sweep(prefix: &str, mnt_inodes: &HashSet<u64>) -> (Vec<String>, Vec<i32>) {
    if validate_prefix(prefix).is_err() {
        return (Vec::new(), Vec::new());
    }
    let names = ns::list_with_prefix(&format!("{prefix}-"));
    let net_inodes: HashSet<u64> = names.iter().filter_map(|n| ns::netns_inode(n)).collect();
    let mut killed = Vec::new();
    // A few rounds: a process may fork while we kill its parent.
    for _ in 0..5 {
        let pids = ns::processes_in(&net_inodes, mnt_inodes);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            if nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
            {
                killed.push(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut deleted = Vec::new();
    for n in names {
        match ns::delete(&n) {
            Ok(()) => deleted.push(n),
            Err(e) => tracing::warn!(namespace = %n, error = %e, "cannot delete namespace"),
        }
    }
    killed.sort_unstable();
    killed.dedup();
    (deleted, killed)
}

/// Socket address helper: `addr:port`.
pub fn sock(addr: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((addr, port))
}
