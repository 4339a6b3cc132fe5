//! The daemon: start-up, the event-driven pool manager, reconciliation and shutdown.
//!
//! The core ([`Core`]) is generic over two seams so that it can be unit-tested with fakes:
//! [`Cloud`] (IMDS reads and EC2 mutations, implemented by [`RealCloud`] over the `imds`/`eni`
//! modules) and [`Host`] (host networking, implemented by [`NetlinkHost`] over `hostnet`).
//!
//! Concurrency model: the datastore sits behind one `std` mutex held only for short, non-async
//! sections (including the checkpoint write, as upstream, so the file always matches memory).
//! One pool pass runs at a time (`pool_lock`); it is started by the periodic tick, by an ADD that
//! found no address (immediately), and by DELs. An ADD that finds the pool empty registers as
//! *pending* (so the pool math sizes the increase by it) and waits, bounded by
//! `AWS_VPC_CNI_ADD_WAIT_MS`, for "addresses added".

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use ipnet::Ipv4Net;
use tokio::sync::Notify;

use crate::checkpoint::{self, CheckpointError};
use crate::config::Config;
use crate::datastore::{
    Assignment, CidrKind, Datastore, DsError, EniId, EniInfo, ForcedRelease, IpamKey, PodMeta,
};
use crate::ec2::{self, AddressRequest};
use crate::eni::{AttachSlot, AttachedEni};
use crate::hostnet::{PodRule, PodRuleReport};
use crate::imds::EniMetadata;
use crate::pool::{self, Grow, Limits, PoolInput};

/// How long reconcile leaves an ENI alone after we changed it (IMDS lags EC2; upstream skips
/// reconciliation for 60 s after any pool action).
pub const RECONCILE_SETTLE: Duration = Duration::from_secs(60);
/// Addresses we unassigned are not re-added from (possibly stale) IMDS for this long.
pub const RELEASED_COOLDOWN: Duration = Duration::from_secs(60);
/// Period of the pool manager when nothing wakes it (upstream's tick).
pub const POOL_TICK: Duration = Duration::from_secs(5);
/// Batching window after a wake-up (ADD/DEL) before the pool manager plans.
pub const COALESCE: Duration = Duration::from_millis(20);
/// Leaked-ENI sweep period (upstream: 1 h plus 0–300 s jitter).
pub const LEAKED_SWEEP_PERIOD: Duration = Duration::from_secs(3600);
/// Rounds of re-planning inside one pool pass (each round re-reads the datastore).
const POOL_ROUNDS: usize = 4;
/// After a failed increase while ADDs wait: pause before planning again (instead of waiting
/// for the next [`POOL_TICK`], which is as long as an ADD's default wait).
const GROW_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Burst look-ahead window before any ENI attach was measured (about EC2's usual attach time).
const LOOKAHEAD_DEFAULT: Duration = Duration::from_secs(2);
/// Bounds of the burst look-ahead window (a measured attach time outside is clamped).
const LOOKAHEAD_MIN: Duration = Duration::from_secs(1);
const LOOKAHEAD_MAX: Duration = Duration::from_secs(10);
/// Assignment timestamps kept for the look-ahead (bounds memory at any ADD rate).
const RECENT_ASSIGNS_CAP: usize = 4096;
/// At most this often the pool manager returns freed heap memory to the kernel.
const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Returns free heap pages to the kernel. glibc keeps memory freed after a burst (thousands of
/// short gRPC connections and checkpoint writes during a node fill) mapped in its arenas, where
/// it counts as RSS although ipamd no longer uses it; `malloc_trim` releases it (the top of the
/// heap and, since glibc 2.8, whole free pages inside it). Costs about a millisecond.
#[cfg(target_env = "gnu")]
fn release_free_memory() {
    // SAFETY: `malloc_trim` takes no pointers and is thread-safe (it locks each arena).
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other C libraries: nothing to do.
#[cfg(not(target_env = "gnu"))]
fn release_free_memory() {}

/// Classification of a cloud failure, as far as the pool manager cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudErrorKind {
    /// `InsufficientCidrBlocks` / `InsufficientFreeAddressesInSubnet` (or every subnet full).
    InsufficientCapacity,
    /// `PrivateIpAddressLimitExceeded`: the ENI is fuller than we think.
    AddressLimit,
    /// The object no longer exists.
    NotFound,
    /// No EC2 in this mode (IMDS-only).
    Unavailable,
    /// Anything else.
    Other,
}

/// A failed cloud operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CloudError {
    /// Kind.
    pub kind: CloudErrorKind,
    /// Human-readable cause (names the call and the AWS code).
    pub message: String,
}

impl CloudError {
    /// Builds an error.
    pub fn new(kind: CloudErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// IMDS reads and EC2 mutations the daemon needs. [`RealCloud`] is the production
/// implementation; tests use an in-memory fake.
pub trait Cloud: Send + Sync + 'static {
    /// Attached ENIs as IMDS shows them (all cards; the daemon keeps card 0).
    fn interfaces(&self) -> impl Future<Output = Result<Vec<EniMetadata>, CloudError>> + Send;
    /// EC2's view of some ENIs (unknown IDs are dropped, not errors).
    fn describe(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<ec2::EniInfo>, CloudError>> + Send;
    /// Create, attach and wait for a new ENI with these addresses (rolled back on failure).
    fn create_eni(
        &self,
        addresses: AddressRequest,
    ) -> impl Future<Output = Result<AttachedEni, CloudError>> + Send;
    /// Reads once what a growth round creating `n` ENIs at the same time needs (candidate
    /// subnets, `n` distinct free device indexes); one slot per ENI, for
    /// [`Cloud::create_eni_in`]. Default: nothing shared.
    fn prepare_attach(&self, n: usize) -> impl Future<Output = Vec<AttachSlot>> + Send {
        std::future::ready(vec![AttachSlot::default(); n])
    }
    /// [`Cloud::create_eni`] with a slot from [`Cloud::prepare_attach`]. Default: ignores it.
    fn create_eni_in(
        &self,
        addresses: AddressRequest,
        slot: AttachSlot,
    ) -> impl Future<Output = Result<AttachedEni, CloudError>> + Send {
        drop(slot);
        self.create_eni(addresses)
    }
    /// Writes our ownership tags on managed ENIs. Default: nothing to tag.
    fn top_up_tags(&self, ids: &[String]) -> impl Future<Output = Result<(), CloudError>> + Send {
        let _ = ids;
        std::future::ready(Ok(()))
    }
    /// Add `count` secondary IPs (as /32) or prefixes to an ENI; returns the new CIDRs.
    fn assign(
        &self,
        eni: &str,
        kind: CidrKind,
        count: u32,
    ) -> impl Future<Output = Result<Vec<Ipv4Net>, CloudError>> + Send;
    /// Remove secondary IPs (/32) and prefixes (/28) from an ENI.
    fn unassign(
        &self,
        eni: &str,
        cidrs: &[Ipv4Net],
    ) -> impl Future<Output = Result<(), CloudError>> + Send;
    /// Detach and delete an ENI.
    fn free_eni(&self, eni: &str) -> impl Future<Output = Result<(), CloudError>> + Send;
    /// Whether an ENI must be left alone (`no_manage`, untagged, trunk/EFA-only).
    fn is_unmanaged(&self, eni: &ec2::EniInfo, is_primary: bool) -> bool;
    /// One leaked-ENI pass (two-phase: mark, then delete on the next pass).
    fn sweep_leaked(&self) -> impl Future<Output = Result<Vec<String>, CloudError>> + Send;
    /// At start-up only: delete `available` ENIs this instance created (our description and
    /// instance tag). No other process creates ENIs for this instance, so one left `available`
    /// is a create-then-crash leftover of a previous run (killed between create and attach, or
    /// between detach and delete) and need not wait for the hourly two-phase sweep. After a
    /// restart it runs while the pool already grows: it must skip ENIs this process is creating
    /// and never detach anything (see [`EniManager::delete_own_leftovers`]).
    fn delete_own_available(&self) -> impl Future<Output = Result<Vec<String>, CloudError>> + Send;
    /// ENIs a create-and-attach of this process is working on right now (created, not
    /// returned yet): reconcile must not adopt them from IMDS behind the growth's back.
    fn creating_enis(&self) -> BTreeSet<String> {
        BTreeSet::new()
    }
}

/// Host networking the daemon needs. Synchronous: called from blocking tasks.
pub trait Host: Send + Sync + 'static {
    /// Node-level set-up (primary ENI MTU, rp_filter, ip_forward, fwmark/service rules).
    fn setup_node(&self) -> Result<(), String>;
    /// Set up a secondary ENI (link, address, table, rule).
    fn setup_eni(&self, eni: &EniInfo) -> Result<(), String>;
    /// Remove a detached ENI's rules and table routes.
    fn teardown_eni(&self, primary_ip: Ipv4Addr, table: u32) -> Result<(), String>;
    /// Names of all links in the host namespace (restore checks pod veths).
    fn link_names(&self) -> Result<Vec<String>, String>;
    /// Re-apply per-pod rules (`prune` removes rules of addresses not listed).
    fn reapply_pod_rules(&self, pods: &[PodRule], prune: bool) -> Result<PodRuleReport, String>;
    /// Converge the SNAT/connmark iptables rules.
    fn reconcile_iptables(&self) -> Result<(), String>;
}

/// Counters exposed for logs, introspection and tests.
#[derive(Debug, Default)]
pub struct Counters {
    /// ADDs that had to wait for the pool manager.
    pub add_waits: AtomicUsize,
    /// ADDs answered `Success=false` after waiting.
    pub add_no_address: AtomicUsize,
    /// Addresses force-removed by reconcile (upstream metric `awscni_force_removed_ips`).
    pub force_removed: AtomicUsize,
    /// Prefix requests that fell back to secondary IPs.
    pub prefix_fallbacks: AtomicUsize,
    /// Pool passes run.
    pub pool_passes: AtomicUsize,
    /// ADD requests received (upstream `awscni_add_ip_req_count`).
    pub add_requests: AtomicUsize,
    /// DEL requests by reason (upstream `awscni_del_ip_req_count{reason}`).
    pub del_requests: crate::metrics::LabelCounter,
    /// ENIs dropped by reconcile because they vanished (`awscni_force_removed_enis`).
    pub force_removed_enis: AtomicUsize,
    /// Reconcile passes (`awscni_reconcile_count`).
    pub reconcile_passes: AtomicUsize,
    /// Pool-manager errors (`awscni_ipamd_error_count`).
    pub pool_errors: AtomicUsize,
    /// How long ADDs that found the pool empty waited.
    pub add_wait: crate::metrics::WaitHistogram,
    /// Pool decisions by action and reason, and the last one.
    pub pool_decisions: crate::metrics::PoolDecisions,
    /// Long-running actions in progress (`awscni_ipamd_action_inprogress`).
    pub in_progress: crate::metrics::InProgress,
    /// Start-up and node-init durations (`awscni_ipamd_startup_duration_seconds`, ...).
    pub startup: crate::metrics::StartupDurations,
}

#[derive(Debug, Default)]
struct PoolState {
    last_release: Option<Instant>,
    capacity_backoff_until: Option<Instant>,
    changed: HashMap<EniId, Instant>,
    released: HashMap<Ipv4Net, Instant>,
    freed_enis: HashMap<EniId, Instant>,
    /// New ENIs whose create-and-attach returned and that are being set up and added to the
    /// datastore (together with [`Cloud::creating_enis`]: what reconcile leaves alone).
    landing: BTreeSet<EniId>,
    inflight: std::collections::BTreeMap<u64, Grow>,
    next_grow_id: u64,
    unmanaged: BTreeSet<EniId>,
    last_error: Option<String>,
    /// When recent new assignments happened (burst look-ahead), oldest first, bounded.
    recent_assigns: VecDeque<Instant>,
    /// How long the last new ENI took from create to usable (burst look-ahead window).
    last_attach: Option<Duration>,
}

/// Identity and network facts of the node, read at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeInfo {
    /// `i-…`
    pub instance_id: String,
    /// Region.
    pub region: String,
    /// Instance type.
    pub instance_type: String,
    /// Node primary IPv4.
    pub node_ip: Option<Ipv4Addr>,
    /// VPC IPv4 CIDRs.
    pub vpc_cidrs: Vec<Ipv4Net>,
    /// MAC of the primary ENI.
    pub primary_mac: String,
}

/// The daemon's shared state.
pub struct Core<C: Cloud, H: Host> {
    /// Effective configuration.
    pub cfg: Config,
    /// Node facts.
    pub node: NodeInfo,
    /// Pool limits (instance type, max pods, unmanaged ENIs).
    pub limits: Mutex<Limits>,
    /// Counters.
    pub counters: Counters,
    ds: Mutex<Datastore>,
    cloud: C,
    host: Arc<H>,
    wake_pool: Notify,
    addrs_added: Notify,
    pending: AtomicUsize,
    stopping: AtomicBool,
    ready: AtomicBool,
    detaching: Mutex<Vec<EniId>>,
    pool_lock: tokio::sync::Mutex<()>,
    state: Mutex<PoolState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent data here (every mutation is a single
    // call into the datastore), so keep going rather than poisoning the daemon.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A new ENI between its create-and-attach returning and its landing in the datastore (in
/// `PoolState::landing` until dropped, on every exit path).
struct Landing<'a> {
    state: &'a Mutex<PoolState>,
    id: Option<EniId>,
}

impl Landing<'_> {
    fn set(&mut self, id: &str) {
        lock(self.state).landing.insert(id.to_owned());
        self.id = Some(id.to_owned());
    }
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            lock(self.state).landing.remove(&id);
        }
    }
}

/// An ADD registered as waiting for the pool manager (counted in `pending`).
struct Waiting<'a> {
    ctr: &'a AtomicUsize,
    active: bool,
}

impl Waiting<'_> {
    fn start(&mut self) {
        if !self.active {
            self.active = true;
            self.ctr.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn done(&mut self) {
        if self.active {
            self.active = false;
            self.ctr.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

/// ADD outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddOutcome {
    /// Address assigned (or already held).
    Assigned(Assignment),
    /// No address within the wait budget (upstream: `Success=false`).
    NoAddress,
}

/// Errors of ADD/DEL that are not "no address".
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Datastore refused (unknown pod, invalid key).
    #[error(transparent)]
    Ds(#[from] DsError),
    /// The checkpoint could not be written; the change was rolled back.
    #[error("checkpoint write failed, change rolled back: {0}")]
    Persist(#[from] CheckpointError),
}

/// Fatal start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Checkpoint unreadable / wrong version.
    #[error("cannot restore checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// Restore found a conflict.
    #[error("cannot restore checkpoint: {0}")]
    Restore(DsError),
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

/// The datastore facts of an ENI seen in IMDS.
pub fn eni_info_from_imds(m: &EniMetadata, custom_networking: bool) -> Option<EniInfo> {
    Some(EniInfo {
        id: m.eni_id.clone(),
        mac: m.mac.clone(),
        device_number: m.device_number,
        is_primary: m.device_number == 0,
        excluded: m.device_number == 0 && custom_networking,
        trunk: false,
        efa: false,
        subnet: m.subnet_cidr,
        subnet_id: m.subnet_id.clone(),
        primary_ip: m.primary_ip()?,
    })
}

/// The CIDRs IMDS shows on an ENI (secondary IPs as /32, plus prefixes).
pub fn imds_cidrs(m: &EniMetadata) -> BTreeSet<Ipv4Net> {
    let mut s: BTreeSet<Ipv4Net> = m
        .secondary_ips()
        .iter()
        .map(|ip| Ipv4Net::from(*ip))
        .collect();
    s.extend(m.ipv4_prefixes.iter().map(|p| p.trunc()));
    s
}

fn ec2_cidrs(e: &ec2::EniInfo) -> BTreeSet<Ipv4Net> {
    let mut s: BTreeSet<Ipv4Net> = e
        .secondary_ips
        .iter()
        .map(|ip| Ipv4Net::from(*ip))
        .collect();
    s.extend(e.prefixes.iter().map(|p| p.trunc()));
    s
}

impl<C: Cloud, H: Host> Core<C, H> {
    /// Assembles a core around an (already restored) datastore.
    pub fn new(
        cfg: Config,
        node: NodeInfo,
        limits: Limits,
        ds: Datastore,
        cloud: C,
        host: H,
    ) -> Self {
        Self {
            cfg,
            node,
            limits: Mutex::new(limits),
            counters: Counters::default(),
            ds: Mutex::new(ds),
            cloud,
            host: Arc::new(host),
            wake_pool: Notify::new(),
            addrs_added: Notify::new(),
            pending: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            detaching: Mutex::new(Vec::new()),
            pool_lock: tokio::sync::Mutex::new(()),
            state: Mutex::new(PoolState::default()),
        }
    }

    /// Read access to the datastore (tests, introspection).
    pub fn with_ds<T>(&self, f: impl FnOnce(&Datastore) -> T) -> T {
        f(&lock(&self.ds))
    }

    /// The host seam.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The cloud seam.
    pub fn cloud(&self) -> &C {
        &self.cloud
    }

    /// ENIs we must not touch (learned at start and by reconcile).
    pub fn set_unmanaged(&self, ids: impl IntoIterator<Item = EniId>) {
        lock(&self.state).unmanaged.extend(ids);
    }

    /// Init done: serving.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Whether init is done and we are not stopping.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.stopping.load(Ordering::SeqCst)
    }

    /// SIGTERM: no more EC2 mutations; waiting ADDs give up.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake_pool.notify_waiters();
        self.addrs_added.notify_waiters();
    }

    /// Whether we are shutting down.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// ADDs currently waiting for an address.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// The last pool-manager error, if any (introspection).
    pub fn last_pool_error(&self) -> Option<String> {
        lock(&self.state).last_error.clone()
    }

    fn checkpoint_path(&self) -> &Path {
        &self.cfg.backing_store
    }

    fn state_path(&self) -> PathBuf {
        checkpoint::sidecar_path(&self.cfg.backing_store)
    }

    fn write_checkpoint(&self, ds: &Datastore) -> Result<(), CheckpointError> {
        checkpoint::save(self.checkpoint_path(), &ds.checkpoint())
    }

    fn write_state(&self, ds: &Datastore) -> Result<(), CheckpointError> {
        let detaching = lock(&self.detaching).clone();
        checkpoint::save_state(&self.state_path(), &ds.state(SystemTime::now(), &detaching))
    }

    /// Writes checkpoint and sidecar (sidecar first: a crash in between leaves at worst a
    /// cooldown for an address the checkpoint still holds, which restore ignores).
    pub fn persist_all(&self) -> Result<(), CheckpointError> {
        let ds = lock(&self.ds);
        self.write_state(&ds)?;
        self.write_checkpoint(&ds)
    }

    /// One assignment attempt. A waiting ADD leaves the pending count under the datastore lock,
    /// so the pool math never sees it both as pending and as assigned.
    fn try_assign(
        &self,
        key: &IpamKey,
        meta: &PodMeta,
        waiting: &mut Waiting<'_>,
    ) -> Result<Option<Assignment>, OpError> {
        let mut ds = lock(&self.ds);
        let res = match ds.assign(key, meta.clone(), SystemTime::now()) {
            Ok(a) if a.existing => Ok(Some(a)),
            Ok(a) => match self.write_checkpoint(&ds) {
                Ok(()) => {
                    drop(ds);
                    self.note_assigned();
                    Ok(Some(a))
                }
                Err(e) => {
                    ds.rollback_assign(&a);
                    Err(e.into())
                }
            },
            Err(DsError::NoAvailableAddress) => Ok(None),
            Err(e) => Err(e.into()),
        };
        if !matches!(res, Ok(None)) {
            waiting.done();
        }
        res
    }

    /// ADD: assign an address; if none is free, wake the pool manager at once and wait (bounded)
    /// for it instead of failing (ipam.md §13 #4).
    pub async fn add(&self, key: &IpamKey, meta: &PodMeta) -> Result<AddOutcome, OpError> {
        if !key.is_valid() {
            return Err(DsError::InvalidKey(key.clone()).into());
        }
        let deadline = tokio::time::Instant::now() + self.cfg.add_wait;
        // Decrements `pending` on every exit, including a cancelled RPC (client deadline).
        let mut waiting = Waiting {
            ctr: &self.pending,
            active: false,
        };
        let mut wait_started: Option<Instant> = None;
        let result = loop {
            let notified = self.addrs_added.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_assign(key, meta, &mut waiting) {
                Ok(Some(a)) => break Ok(AddOutcome::Assigned(a)),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            if !waiting.active {
                waiting.start();
                self.counters.add_waits.fetch_add(1, Ordering::Relaxed);
                wait_started.get_or_insert_with(Instant::now);
            }
            if self.is_stopping() || tokio::time::Instant::now() >= deadline {
                self.counters.add_no_address.fetch_add(1, Ordering::Relaxed);
                break Ok(AddOutcome::NoAddress);
            }
            self.wake_pool.notify_one();
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                // One last try: the pool may have grown just as the timer fired.
                match self.try_assign(key, meta, &mut waiting) {
                    Ok(Some(a)) => break Ok(AddOutcome::Assigned(a)),
                    Ok(None) => {
                        self.counters.add_no_address.fetch_add(1, Ordering::Relaxed);
                        break Ok(AddOutcome::NoAddress);
                    }
                    Err(e) => break Err(e),
                }
            }
        };
        waiting.done();
        if let Some(t) = wait_started {
            self.counters.add_wait.observe(t.elapsed());
        }
        if let Ok(AddOutcome::Assigned(a)) = &result {
            if !a.existing {
                tracing::info!(key = %a.key, ip = %a.addr, eni = %a.eni, pod = %format!("{}/{}", a.meta.namespace, a.meta.name), "assigned");
            }
            // Keep the warm pool topped up behind the pod.
            self.wake_pool.notify_one();
        }
        result
    }

    /// DEL: release the address of `key` (or its legacy key) and start its cooldown.
    pub fn del(&self, key: &IpamKey) -> Result<Assignment, OpError> {
        let mut ds = lock(&self.ds);
        let released = ds.release(key, SystemTime::now())?;
        let persisted = self
            .write_state(&ds)
            .and_then(|()| self.write_checkpoint(&ds));
        if let Err(e) = persisted {
            ds.rollback_release(&released);
            // Best effort: put the files back in line with memory.
            let _ = self.write_state(&ds);
            return Err(e.into());
        }
        drop(ds);
        let a = released.assignment;
        tracing::info!(key = %a.key, ip = %a.addr, "released");
        self.wake_pool.notify_one();
        Ok(a)
    }

    /// CHECK helper: the address a key holds.
    pub fn lookup(&self, key: &IpamKey) -> Option<Assignment> {
        let ds = lock(&self.ds);
        ds.lookup(key)
            .or_else(|| ds.lookup(&IpamKey::legacy(&key.container_id)))
    }

    /// CNI GC: release every allocation of `network` whose (container, ifname) is not valid.
    pub fn gc(&self, network: &str, valid: &HashSet<(String, String)>) -> Vec<Assignment> {
        let victims: Vec<IpamKey> = lock(&self.ds)
            .assignments()
            .into_iter()
            .filter(|a| a.key.network_name == network)
            .filter(|a| !valid.contains(&(a.key.container_id.clone(), a.key.if_name.clone())))
            .map(|a| a.key)
            .collect();
        let mut out = Vec::new();
        for k in victims {
            match self.del(&k) {
                Ok(a) => out.push(a),
                Err(e) => tracing::warn!(key = %k, error = %e, "GC release failed"),
            }
        }
        out
    }

    fn note_assigned(&self) {
        let mut st = lock(&self.state);
        if st.recent_assigns.len() >= RECENT_ASSIGNS_CAP {
            st.recent_assigns.pop_front();
        }
        st.recent_assigns.push_back(Instant::now());
    }

    /// Burst look-ahead, in addresses, used only when the pool already has to attach a new ENI:
    /// pods keep arriving during the seconds an attach takes, and sizing the growth by the
    /// waiting ADDs alone (a kubelet has only a few ADDs in flight) attaches one ENI per attach
    /// latency, one after another. So the plan also covers what pods will take while the new
    /// ENIs attach: the addresses assigned during the last attach time (the lead-time demand of
    /// a reorder point; the warm target is the safety stock). With constant pods it is zero, so
    /// the warm targets keep their meaning; the max-pods and ENI limits still cap the plan, and
    /// ENIs a burst did not need are released by the normal decrease path.
    fn burst_lookahead(&self) -> usize {
        let mut st = lock(&self.state);
        let window = st
            .last_attach
            .unwrap_or(LOOKAHEAD_DEFAULT)
            .clamp(LOOKAHEAD_MIN, LOOKAHEAD_MAX);
        let now = Instant::now();
        while st
            .recent_assigns
            .front()
            .is_some_and(|t| now.duration_since(*t) > LOOKAHEAD_MAX)
        {
            st.recent_assigns.pop_front();
        }
        let within = |d: Duration| {
            st.recent_assigns
                .iter()
                .rev()
                .take_while(|t| now.duration_since(**t) <= d)
                .count()
        };
        // The window's count under-states a burst that was starved for part of it (ADDs wait
        // while ENIs attach); the last second's rate, held for the whole attach time, does not.
        let in_window = within(window);
        let last_second = within(Duration::from_secs(1));
        let at_peak_rate = (last_second as f64 * window.as_secs_f64()).ceil() as usize;
        in_window.max(at_peak_rate)
    }

    fn input_limits(&self) -> Limits {
        *lock(&self.limits)
    }

    fn note_error(&self, e: &str) {
        tracing::warn!(error = e, "pool manager");
        self.counters.pool_errors.fetch_add(1, Ordering::Relaxed);
        lock(&self.state).last_error = Some(e.to_owned());
    }

    /// Adds CIDRs EC2 confirmed on an ENI to the datastore and wakes waiting ADDs.
    fn add_cidrs(&self, eni: &str, cidrs: &[Ipv4Net]) {
        {
            let mut ds = lock(&self.ds);
            for c in cidrs {
                if let Err(e) = ds.add_cidr(eni, *c) {
                    tracing::warn!(eni, cidr = %c, error = %e, "cannot add CIDR");
                }
            }
        }
        lock(&self.state)
            .changed
            .insert(eni.to_owned(), Instant::now());
        self.addrs_added.notify_waiters();
    }

    async fn grow_existing(&self, eni: &str, count: u32, kind: CidrKind) -> Result<(), CloudError> {
        let _busy = self.counters.in_progress.enter("increaseDatastorePool");
        let res = self.cloud.assign(eni, kind, count).await;
        let res = match res {
            Err(e)
                if e.kind == CloudErrorKind::InsufficientCapacity && kind == CidrKind::Prefix =>
            {
                // No free aligned /28 in the subnet: take secondary IPs instead (ipam.md §14).
                let slots = self.with_ds(|ds| ds.eni_cidrs(eni).len());
                let g = Grow::Existing {
                    eni: eni.to_owned(),
                    count,
                    kind,
                };
                match pool::fallback_to_ips(&g, slots, &self.input_limits()) {
                    Some(fb) => {
                        self.counters
                            .prefix_fallbacks
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            eni,
                            prefixes = count,
                            ips = fb.count(),
                            "no free /28 in the subnet; falling back to secondary IPs"
                        );
                        self.cloud
                            .assign(eni, CidrKind::SecondaryIp, fb.count())
                            .await
                    }
                    None => Err(e),
                }
            }
            Err(e) if e.kind == CloudErrorKind::AddressLimit => {
                // The ENI holds more than we know: take what EC2 says is there.
                let seen = self.cloud.describe(&[eni.to_owned()]).await?;
                Ok(seen
                    .iter()
                    .filter(|x| x.eni_id == eni)
                    .flat_map(ec2_cidrs)
                    .collect())
            }
            Err(e) if e.kind == CloudErrorKind::Other && count > 1 => {
                // Upstream retries once with a single address on any other error.
                tracing::info!(eni, error = %e, "assign failed; retrying with 1");
                self.cloud.assign(eni, kind, 1).await
            }
            other => other,
        };
        let cidrs = res?;
        self.add_cidrs(eni, &cidrs);
        Ok(())
    }

    async fn grow_new(
        &self,
        count: u32,
        kind: CidrKind,
        slot: AttachSlot,
    ) -> Result<(), CloudError> {
        let _busy = self.counters.in_progress.enter("increaseDatastorePool");
        let mut landing = Landing {
            state: &self.state,
            id: None,
        };
        self.grow_new_inner(count, kind, slot, &mut landing).await
    }

    async fn grow_new_inner(
        &self,
        count: u32,
        kind: CidrKind,
        slot: AttachSlot,
        landing: &mut Landing<'_>,
    ) -> Result<(), CloudError> {
        let req = match kind {
            CidrKind::Prefix => AddressRequest::Prefixes(count),
            CidrKind::SecondaryIp => AddressRequest::Ips(count),
        };
        let started = Instant::now();
        let attached = match self.cloud.create_eni_in(req, slot.clone()).await {
            Err(e)
                if e.kind == CloudErrorKind::InsufficientCapacity && kind == CidrKind::Prefix =>
            {
                let g = Grow::NewEni { count, kind };
                let Some(fb) = pool::fallback_to_ips(&g, 0, &self.input_limits()) else {
                    return Err(e);
                };
                self.counters
                    .prefix_fallbacks
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    prefixes = count,
                    ips = fb.count(),
                    "no free /28 for a new ENI; falling back to secondary IPs"
                );
                self.cloud
                    .create_eni_in(AddressRequest::Ips(fb.count()), slot)
                    .await?
            }
            other => other?,
        };
        landing.set(&attached.info.eni_id);
        lock(&self.state).last_attach = Some(started.elapsed());
        let Some(primary_ip) = attached.info.primary_ip.or(attached.metadata.primary_ip()) else {
            return Err(CloudError::new(
                CloudErrorKind::Other,
                format!("new ENI {} has no primary IP", attached.info.eni_id),
            ));
        };
        let info = EniInfo {
            id: attached.info.eni_id.clone(),
            mac: attached.info.mac.clone(),
            device_number: attached.device_index,
            is_primary: false,
            excluded: false,
            trunk: false,
            efa: false,
            subnet: attached.metadata.subnet_cidr,
            // EC2's answer; IMDS shows the same.
            subnet_id: if attached.info.subnet_id.is_empty() {
                attached.metadata.subnet_id.clone()
            } else {
                attached.info.subnet_id.clone()
            },
            primary_ip,
        };
        let host = self.host.clone();
        let hinfo = info.clone();
        let setup = tokio::task::spawn_blocking(move || host.setup_eni(&hinfo))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        if let Err(e) = setup {
            // Roll back: an ENI we cannot route through is useless and would leak.
            let _ = self.cloud.free_eni(&info.id).await;
            return Err(CloudError::new(
                CloudErrorKind::Other,
                format!("host set-up of ENI {} failed: {e}", info.id),
            ));
        }
        tracing::info!(eni = %info.id, device = info.device_number, cidrs = ec2_cidrs(&attached.info).len(), "ENI attached and set up");
        lock(&self.ds).add_eni(info.clone(), SystemTime::now());
        let cidrs: Vec<Ipv4Net> = ec2_cidrs(&attached.info).into_iter().collect();
        self.add_cidrs(&info.id, &cidrs);
        Ok(())
    }

    async fn release_cidrs(&self, list: Vec<pool::ReleaseCidr>) {
        let _busy = self.counters.in_progress.enter("decreaseDatastorePool");
        let mut by_eni: HashMap<EniId, Vec<Ipv4Net>> = HashMap::new();
        {
            // Caches first, so a concurrent reconcile never re-adds them from IMDS.
            let mut st = lock(&self.state);
            let now = Instant::now();
            for r in &list {
                st.released.insert(r.cidr, now);
                st.changed.insert(r.eni.clone(), now);
            }
        }
        {
            let mut ds = lock(&self.ds);
            for r in list {
                match ds.remove_cidr(&r.eni, r.cidr, false, SystemTime::now()) {
                    Ok(_) => by_eni.entry(r.eni).or_default().push(r.cidr),
                    Err(e) => tracing::debug!(cidr = %r.cidr, error = %e, "not released"),
                }
            }
        }
        for (eni, cidrs) in by_eni {
            match self.cloud.unassign(&eni, &cidrs).await {
                Ok(()) => {
                    tracing::info!(eni = %eni, count = cidrs.len(), "released addresses to EC2")
                }
                Err(e) => {
                    self.note_error(&format!("unassign from {eni}: {e}"));
                    // Still on the ENI: make them usable again.
                    self.add_cidrs(&eni, &cidrs);
                }
            }
        }
    }

    async fn delete_eni(&self, id: &str) {
        let _busy = self.counters.in_progress.enter("decreaseDatastorePool");
        // Before removing it from the datastore: reconcile must not adopt it back from IMDS.
        lock(&self.state)
            .freed_enis
            .insert(id.to_owned(), Instant::now());
        let info = {
            let mut ds = lock(&self.ds);
            let Some(info) = ds.eni(id).cloned() else {
                return;
            };
            if let Err(e) = ds.remove_eni(id, false, SystemTime::now()) {
                tracing::debug!(eni = id, error = %e, "not deleted");
                return;
            }
            info
        };
        lock(&self.detaching).push(id.to_owned());
        // Record "detaching X" before detaching (ipam.md §13 #17): a crash mid-way is finished
        // on the next start instead of leaking an `available` ENI.
        if let Err(e) = self.persist_all() {
            tracing::warn!(error = %e, "cannot persist detaching state");
        }
        match self.cloud.free_eni(id).await {
            Ok(()) => {
                tracing::info!(eni = id, "ENI freed");
                lock(&self.detaching).retain(|d| d != id);
                if let Err(e) = self.persist_all() {
                    tracing::warn!(error = %e, "cannot persist state");
                }
            }
            Err(e) => {
                // Still attached (reconcile adopts it back after the settle window and the pool
                // may try again) or left `available` (deleted at the next start or by the
                // leaked-ENI sweep). Either way it is no longer "being detached".
                self.note_error(&format!("free ENI {id}: {e}"));
                lock(&self.detaching).retain(|d| d != id);
                if let Err(e) = self.persist_all() {
                    tracing::warn!(error = %e, "cannot persist state");
                }
            }
        }
        let host = self.host.clone();
        let (ip, table) = (info.primary_ip, info.route_table());
        let _ = tokio::task::spawn_blocking(move || host.teardown_eni(ip, table)).await;
    }

    /// Finishes detaches a previous process started (from the sidecar state).
    pub async fn finish_detaching(&self, ids: Vec<EniId>) {
        if ids.is_empty() {
            return;
        }
        *lock(&self.detaching) = ids.clone();
        for id in ids {
            if self.cfg.disable_network_resource_provisioning {
                break;
            }
            // Still attached, it was loaded from IMDS: take it out of the datastore first (it
            // had no pods when the previous run started detaching it; if it has some now, keep
            // it).
            let removed = {
                let mut ds = lock(&self.ds);
                match ds.eni(&id).cloned() {
                    Some(info) if info.is_primary => Err(()),
                    Some(_) => ds
                        .remove_eni(&id, false, SystemTime::now())
                        .map(|_| ())
                        .map_err(|_| ()),
                    None => Ok(()),
                }
            };
            if removed.is_err() {
                tracing::warn!(eni = %id, "ENI marked as detaching is in use; keeping it");
                lock(&self.detaching).retain(|d| *d != id);
                continue;
            }
            lock(&self.state)
                .freed_enis
                .insert(id.clone(), Instant::now());
            match self.cloud.free_eni(&id).await {
                Ok(()) => {
                    tracing::info!(eni = %id, "finished freeing ENI from a previous run");
                    lock(&self.detaching).retain(|d| *d != id);
                }
                Err(e) => tracing::warn!(eni = %id, error = %e, "cannot finish freeing ENI"),
            }
        }
        if let Err(e) = self.persist_all() {
            tracing::warn!(error = %e, "cannot persist state");
        }
    }

    /// Plans once, counting growth already in flight as done, and starts every increase action
    /// as its own task (so the next ENI is attached while earlier ones still wait for IMDS,
    /// ipam.md §13 #5). Releases and ENI deletions run inline, only when nothing is low, in
    /// flight or waiting. Returns the started tasks (each yields whether it succeeded).
    async fn plan_and_start(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<bool>> {
        if self.cfg.disable_network_resource_provisioning || self.is_stopping() {
            return Vec::new();
        }
        let _g = self.pool_lock.lock().await;
        self.counters.pool_passes.fetch_add(1, Ordering::Relaxed);
        let limits = self.input_limits();
        let (gate_open, backoff, incoming) = {
            let st = lock(&self.state);
            let gate = st
                .last_release
                .is_none_or(|t| t.elapsed() >= pool::DECREASE_INTERVAL);
            let backoff = st
                .capacity_backoff_until
                .is_some_and(|t| Instant::now() < t);
            let incoming: Vec<Grow> = st.inflight.values().cloned().collect();
            (gate, backoff, incoming)
        };
        let pending = self.pending();
        let mut lookahead = 0;
        let decision = {
            let ds = lock(&self.ds);
            let stats = ds.stats(SystemTime::now());
            let mut input = PoolInput {
                stats: &stats,
                targets: &self.cfg.pool,
                limits: &limits,
                pending,
            };
            let d = pool::decide_with(&input, gate_open, &incoming);
            if d.grow.iter().any(|g| matches!(g, Grow::NewEni { .. })) {
                lookahead = self.burst_lookahead();
            }
            if lookahead > 0 {
                input.pending = pending + lookahead;
                pool::decide_with(&input, gate_open, &incoming)
            } else {
                d
            }
        };
        self.counters
            .pool_decisions
            .record(&decision, self.pending(), backoff);
        if !decision.grow.is_empty() {
            if backoff {
                tracing::debug!("pool low, but in insufficient-capacity back-off");
                return Vec::new();
            }
            tracing::info!(plan = ?decision.grow, pending, lookahead, in_flight = incoming.len(), "growing pool");
            // Several new ENIs in one plan: read subnets and device indexes once for all of
            // them and give each its own index, so they are created and attached concurrently
            // without colliding (each still rolls back on its own failure).
            let new_enis = decision
                .grow
                .iter()
                .filter(|g| matches!(g, Grow::NewEni { .. }))
                .count();
            let mut slots = if new_enis > 1 {
                self.cloud.prepare_attach(new_enis).await
            } else {
                Vec::new()
            }
            .into_iter();
            let mut tasks = Vec::new();
            for g in decision.grow {
                let slot = match g {
                    Grow::NewEni { .. } => slots.next().unwrap_or_default(),
                    Grow::Existing { .. } => AttachSlot::default(),
                };
                let id = {
                    let mut st = lock(&self.state);
                    st.next_grow_id += 1;
                    let id = st.next_grow_id;
                    st.inflight.insert(id, g.clone());
                    id
                };
                let me = self.clone();
                tasks.push(tokio::spawn(async move {
                    let r = match &g {
                        Grow::Existing { eni, count, kind } => {
                            me.grow_existing(eni, *count, *kind).await
                        }
                        Grow::NewEni { count, kind } => me.grow_new(*count, *kind, slot).await,
                    };
                    lock(&me.state).inflight.remove(&id);
                    match r {
                        Ok(()) => {
                            // Re-plan against the new truth (more ADDs may be waiting).
                            me.wake_pool.notify_one();
                            true
                        }
                        Err(e) => {
                            if e.kind == CloudErrorKind::InsufficientCapacity {
                                lock(&me.state).capacity_backoff_until =
                                    Some(Instant::now() + pool::INSUFFICIENT_CAPACITY_BACKOFF);
                            }
                            // Retried on the next tick, not at once: no hot loop while EC2 fails.
                            me.note_error(&e.message);
                            if me.pending() > 0 {
                                // ...but ADDs are waiting (within their ADD wait, shorter than a
                                // tick): plan again after a short pause, once per failure.
                                let again = me.clone();
                                tokio::spawn(async move {
                                    tokio::time::sleep(GROW_RETRY_PAUSE).await;
                                    again.wake_pool.notify_one();
                                });
                            }
                            false
                        }
                    }
                }));
            }
            return tasks;
        }
        if self.pending() > 0 || !incoming.is_empty() {
            return Vec::new();
        }
        if !decision.release.is_empty() {
            lock(&self.state).last_release = Some(Instant::now());
            self.release_cidrs(decision.release).await;
        }
        for id in decision.delete_enis {
            if self.is_stopping() {
                return Vec::new();
            }
            self.delete_eni(&id).await;
        }
        Vec::new()
    }

    /// One complete pool pass: plan, run the growth to completion, re-plan until nothing is
    /// left to grow (bounded). Used at start-up and by tests; the pool manager does not wait.
    pub async fn pool_pass(self: &Arc<Self>) {
        for _ in 0..POOL_ROUNDS {
            let tasks = self.plan_and_start().await;
            if tasks.is_empty() {
                return;
            }
            let results = futures::future::join_all(tasks).await;
            if !results.into_iter().any(|r| matches!(r, Ok(true))) {
                return;
            }
        }
    }

    /// Increase actions issued but not landed yet.
    pub fn growth_in_flight(&self) -> usize {
        lock(&self.state).inflight.len()
    }

    /// The pool manager: runs a pass when woken (ADD/DEL) or every [`POOL_TICK`], until stopped.
    pub async fn pool_manager(self: Arc<Self>) {
        let mut last_trim = Instant::now();
        loop {
            if self.is_stopping() {
                return;
            }
            // Do not wait for the growth it starts: each action wakes us when it lands.
            let started = self.plan_and_start().await;
            if started.is_empty()
                && self.growth_in_flight() == 0
                && last_trim.elapsed() >= TRIM_INTERVAL
            {
                // The pool settled (e.g. after a burst of ADDs): hand the allocator's freed
                // pages back to the kernel.
                last_trim = Instant::now();
                release_free_memory();
            }
            drop(started);
            let woken = tokio::time::timeout(POOL_TICK, self.wake_pool.notified())
                .await
                .is_ok();
            if woken {
                // Let a burst of ADDs register as pending first, so that one plan sizes the
                // whole burst and its new ENIs are created in parallel (ipam.md §13 #5).
                tokio::time::sleep(COALESCE).await;
            }
        }
    }

    /// Reconciles the datastore with IMDS (EC2 confirms mismatches), then re-applies per-pod
    /// rules. Returns pods whose address vanished underneath them.
    pub async fn reconcile(&self) -> Vec<ForcedRelease> {
        self.counters
            .reconcile_passes
            .fetch_add(1, Ordering::Relaxed);
        let _busy = self.counters.in_progress.enter("nodeIPPoolReconcile");
        let mut forced = Vec::new();
        let imds = match self.cloud.interfaces().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "reconcile: cannot read IMDS");
                return forced;
            }
        };
        let imds: Vec<EniMetadata> = imds.into_iter().filter(|m| m.network_card == 0).collect();
        let now = Instant::now();
        let (landing, unmanaged, settle, released, freed) = {
            let mut st = lock(&self.state);
            st.changed
                .retain(|_, t| now.duration_since(*t) < RECONCILE_SETTLE);
            st.released
                .retain(|_, t| now.duration_since(*t) < RELEASED_COOLDOWN);
            st.freed_enis
                .retain(|_, t| now.duration_since(*t) < RELEASED_COOLDOWN);
            (
                st.landing.clone(),
                st.unmanaged.clone(),
                st.changed.keys().cloned().collect::<HashSet<_>>(),
                st.released.keys().copied().collect::<HashSet<_>>(),
                st.freed_enis.keys().cloned().collect::<HashSet<_>>(),
            )
        };
        let known: HashSet<EniId> = self.with_ds(|ds| ds.enis().map(|e| e.id.clone()).collect());
        let detaching: Vec<EniId> = lock(&self.detaching).clone();
        let imds_ids: HashSet<&str> = imds.iter().map(|m| m.eni_id.as_str()).collect();
        let ec2_ok = !self.cfg.enable_imds_only_mode;

        // New ENIs attached behind our back (or by a previous run, e.g. an attach that landed
        // after a kill -9 and the restart's IMDS read). ENIs our own growth is creating are
        // left to it; any other one is adopted at once, also while growth is in flight: it
        // holds one of the instance's ENI slots, which the pool must know about.
        let creating = self.cloud.creating_enis();
        let new: Vec<&EniMetadata> = imds
            .iter()
            .filter(|m| {
                !known.contains(&m.eni_id)
                    && !unmanaged.contains(&m.eni_id)
                    && !freed.contains(&m.eni_id)
                    && !detaching.contains(&m.eni_id)
                    && !creating.contains(&m.eni_id)
                    && !landing.contains(&m.eni_id)
            })
            .collect();
        if !new.is_empty() {
            let ids: Vec<String> = new.iter().map(|m| m.eni_id.clone()).collect();
            let described = if ec2_ok {
                self.cloud.describe(&ids).await.ok()
            } else {
                None
            };
            for m in new {
                let d = described
                    .as_ref()
                    .and_then(|v| v.iter().find(|e| e.eni_id == m.eni_id));
                if let Some(d) = d
                    && self.cloud.is_unmanaged(d, m.device_number == 0)
                {
                    self.set_unmanaged([m.eni_id.clone()]);
                    continue;
                }
                if ec2_ok && d.is_none() {
                    continue;
                }
                let Some(info) = eni_info_from_imds(m, self.cfg.custom_network_cfg) else {
                    continue;
                };
                let host = self.host.clone();
                let hinfo = info.clone();
                if !info.is_primary {
                    let r = tokio::task::spawn_blocking(move || host.setup_eni(&hinfo)).await;
                    if !matches!(r, Ok(Ok(()))) {
                        tracing::warn!(eni = %info.id, "reconcile: host set-up of new ENI failed");
                        continue;
                    }
                }
                let cidrs: Vec<Ipv4Net> = match d {
                    Some(d) => ec2_cidrs(d).into_iter().collect(),
                    None => imds_cidrs(m).into_iter().collect(),
                };
                tracing::info!(eni = %info.id, cidrs = cidrs.len(), "reconcile: adopting attached ENI");
                lock(&self.ds).add_eni(info.clone(), SystemTime::now());
                self.add_cidrs(&info.id, &cidrs);
            }
        }

        // Known ENIs: compare address sets.
        for m in imds
            .iter()
            .filter(|m| known.contains(&m.eni_id) && !settle.contains(&m.eni_id))
        {
            let have: BTreeSet<Ipv4Net> =
                self.with_ds(|ds| ds.eni_cidrs(&m.eni_id).into_iter().collect());
            let seen = imds_cidrs(m);
            if have == seen {
                continue;
            }
            let truth = if ec2_ok {
                match self.cloud.describe(std::slice::from_ref(&m.eni_id)).await {
                    Ok(v) => match v.iter().find(|e| e.eni_id == m.eni_id) {
                        Some(e) => ec2_cidrs(e),
                        None => continue,
                    },
                    Err(e) => {
                        tracing::debug!(eni = %m.eni_id, error = %e, "reconcile: EC2 describe failed");
                        continue;
                    }
                }
            } else {
                seen
            };
            let add: Vec<Ipv4Net> = truth
                .difference(&have)
                .filter(|c| !released.contains(c))
                .copied()
                .collect();
            if !add.is_empty() {
                tracing::info!(eni = %m.eni_id, count = add.len(), "reconcile: adding addresses found on the ENI");
                self.add_cidrs(&m.eni_id, &add);
            }
            let gone: Vec<Ipv4Net> = have.difference(&truth).copied().collect();
            if !gone.is_empty() {
                let mut ds = lock(&self.ds);
                for c in gone {
                    match ds.remove_cidr(&m.eni_id, c, true, SystemTime::now()) {
                        Ok(f) => forced.extend(f),
                        Err(e) => {
                            tracing::debug!(cidr = %c, error = %e, "reconcile: remove failed")
                        }
                    }
                    tracing::warn!(eni = %m.eni_id, cidr = %c, "reconcile: address removed behind our back");
                }
            }
        }

        // ENIs no longer attached.
        for id in known.iter().filter(|id| !imds_ids.contains(id.as_str())) {
            let Some(info) = self.with_ds(|ds| ds.eni(id).cloned()) else {
                continue;
            };
            if info.is_primary || settle.contains(id) {
                continue;
            }
            tracing::warn!(eni = %id, "reconcile: ENI no longer attached; removing it");
            self.counters
                .force_removed_enis
                .fetch_add(1, Ordering::Relaxed);
            let f = lock(&self.ds).remove_eni(id, true, SystemTime::now());
            if let Ok(f) = f {
                forced.extend(f);
            }
            let host = self.host.clone();
            let _ = tokio::task::spawn_blocking(move || {
                host.teardown_eni(info.primary_ip, info.route_table())
            })
            .await;
        }

        if !forced.is_empty() {
            self.counters
                .force_removed
                .fetch_add(forced.len(), Ordering::Relaxed);
            for f in &forced {
                tracing::warn!(key = %f.key, ip = %f.addr, pod = %format!("{}/{}", f.meta.namespace, f.meta.name), "pod lost its address (force-removed)");
            }
            if let Err(e) = self.persist_all() {
                tracing::warn!(error = %e, "cannot persist after reconcile");
            }
        }
        self.repair_pod_rules(false).await;
        forced
    }

    /// Re-applies per-pod rules for every assignment (`prune` only when no ADD can be between
    /// datastore and plugin, i.e. at start-up).
    pub async fn repair_pod_rules(&self, prune: bool) {
        let pods: Vec<PodRule> = self.with_ds(|ds| {
            ds.assignments()
                .into_iter()
                .map(|a| PodRule {
                    ip: a.addr,
                    table: a.route_table,
                })
                .collect()
        });
        let host = self.host.clone();
        match tokio::task::spawn_blocking(move || host.reapply_pod_rules(&pods, prune)).await {
            Ok(Ok(rep)) => {
                for r in &rep.added {
                    tracing::warn!(rule = %r, "re-applied missing pod rule");
                }
                for r in &rep.removed {
                    tracing::info!(rule = %r, "removed stale pod rule");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot repair pod rules"),
            Err(e) => tracing::warn!(error = %e, "pod-rule task failed"),
        }
    }

    /// Periodic reconcile (with jitter on the first run) and the hourly leaked-ENI sweep.
    pub async fn reconcile_loop(self: Arc<Self>) {
        let mut last_sweep = Instant::now();
        let sweep_delay = Duration::from_secs(rand::random_range(0..300));
        let mut ticks: u64 = 0;
        loop {
            tokio::time::sleep(self.cfg.reconcile_interval).await;
            if self.is_stopping() {
                return;
            }
            self.reconcile().await;
            // A pass over a full node allocates and frees several hundred KiB (netlink dumps of
            // every pod's links, routes and rules; IMDS answers): hand the freed pages back now,
            // not up to a pool tick later, so that they do not sit in RSS between passes.
            release_free_memory();
            ticks += 1;
            // iptables rules: every ~60 s (iptables-save is not free).
            if ticks
                .is_multiple_of((60 / self.cfg.reconcile_interval.as_secs().clamp(1, 60)).max(1))
            {
                let host = self.host.clone();
                if let Ok(Err(e)) =
                    tokio::task::spawn_blocking(move || host.reconcile_iptables()).await
                {
                    tracing::warn!(error = %e, "iptables reconcile failed");
                }
            }
            if !self.cfg.disable_leaked_eni_cleanup
                && last_sweep.elapsed() >= LEAKED_SWEEP_PERIOD + sweep_delay
                && !self.is_stopping()
            {
                last_sweep = Instant::now();
                match self.cloud.sweep_leaked().await {
                    Ok(deleted) if !deleted.is_empty() => {
                        tracing::info!(?deleted, "deleted leaked ENIs")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "leaked-ENI sweep failed"),
                }
            }
        }
    }
}

/// Builds the datastore from IMDS at start-up: managed card-0 ENIs and their CIDRs (EC2's view
/// when available, since IMDS can lag).
pub fn build_datastore(
    cfg: &Config,
    interfaces: &[EniMetadata],
    described: Option<&[ec2::EniInfo]>,
    unmanaged: &BTreeSet<EniId>,
) -> Datastore {
    let mut ds = Datastore::new(cfg.pool.prefix_delegation, cfg.ip_cooldown);
    let now = SystemTime::now();
    for m in interfaces.iter().filter(|m| m.network_card == 0) {
        if unmanaged.contains(&m.eni_id) {
            continue;
        }
        let Some(info) = eni_info_from_imds(m, cfg.custom_network_cfg) else {
            tracing::warn!(eni = %m.eni_id, "ENI without a primary IP in IMDS; skipped");
            continue;
        };
        let cidrs = match described.and_then(|d| d.iter().find(|e| e.eni_id == m.eni_id)) {
            Some(e) => ec2_cidrs(e),
            None => imds_cidrs(m),
        };
        ds.add_eni(info, now);
        for c in cidrs {
            if let Err(e) = ds.add_cidr(&m.eni_id, c) {
                tracing::warn!(eni = %m.eni_id, cidr = %c, error = %e, "skipped CIDR");
            }
        }
    }
    ds
}

/// Allocations younger than this survive a restart even without a host veth: the plugin may
/// still have been wiring the pod when the daemon died (upstream drops them, and a pod that then
/// finishes wiring would use an address the daemon hands out again). A pod that really failed is
/// released by the runtime's DEL or by CNI GC.
pub const RESTORE_GRACE: Duration = Duration::from_secs(60);

/// Restores the checkpoint into `core`'s datastore, then rewrites whichever of the two files no
/// longer matches it (upstream rewrites unconditionally; on a plain restart nothing changed and
/// two fsynced writes would only delay serving). Fatal errors are upstream's: unreadable file,
/// wrong version, duplicate address. Returns the ENIs a previous run was detaching.
pub async fn restore<C: Cloud, H: Host>(
    core: &Core<C, H>,
    grace: Duration,
) -> Result<Vec<EniId>, StartError> {
    // The link listing is kernel work on another thread: start it first, read the files
    // meanwhile. It is indexed by veth hash there: one lookup per allocation afterwards.
    let host = core.host.clone();
    let listing = tokio::task::spawn_blocking(move || {
        host.link_names()
            .map(|links| checkpoint::VethIndex::new(&links))
    });
    let cp = checkpoint::load(core.checkpoint_path())?;
    if let Some(dir) = core.checkpoint_path().parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        return Err(StartError::Other(format!(
            "cannot create {}: {e}",
            dir.display()
        )));
    }
    let state = match checkpoint::load_state(&core.state_path()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring unreadable cooldown state; cooldowns restart");
            None
        }
    };
    let veths = listing
        .await
        .map_err(|e| StartError::Other(e.to_string()))?
        .map_err(|e| StartError::Other(format!("cannot list host links: {e}")))?;
    if let Some(cp) = &cp {
        let now = SystemTime::now();
        let young: HashSet<(&str, &str)> = cp
            .allocations
            .iter()
            .filter(|a| {
                now.duration_since(crate::datastore::from_unix_nanos(a.allocation_timestamp))
                    .is_ok_and(|age| age < grace)
            })
            .map(|a| {
                (
                    a.metadata.k8s_pod_namespace.as_str(),
                    a.metadata.k8s_pod_name.as_str(),
                )
            })
            .collect();
        let report = {
            let mut ds = lock(&core.ds);
            ds.restore(
                cp,
                state.as_ref(),
                &|m: &PodMeta| {
                    young.contains(&(m.namespace.as_str(), m.name.as_str()))
                        || veths.pod_has_veth(&m.namespace, &m.name)
                },
                now,
            )
            .map_err(StartError::Restore)?
        };
        tracing::info!(
            restored = report.restored,
            pod_gone = report.dropped_pod_gone.len(),
            unknown_address = report.dropped_unknown_addr.len(),
            cooling = report.cooling,
            "checkpoint restored"
        );
        for a in &report.dropped_pod_gone {
            tracing::info!(ip = %a.ipv4, pod = %format!("{}/{}", a.metadata.k8s_pod_namespace, a.metadata.k8s_pod_name), "dropped allocation: pod veth gone");
        }
        for a in &report.dropped_unknown_addr {
            tracing::warn!(ip = %a.ipv4, container = %a.container_id, "dropped allocation: address on no known ENI");
        }
    } else {
        tracing::info!(path = %core.checkpoint_path().display(), "no checkpoint: fresh node");
    }
    let detaching = state
        .as_ref()
        .map(|s| s.detaching_enis.clone())
        .unwrap_or_default();
    // Keep the list in the rewritten sidecar until `finish_detaching` has dealt with it.
    *lock(&core.detaching) = detaching.clone();
    {
        // Under the datastore lock, as every other write, and sidecar first (see `persist_all`).
        // A file is rewritten when what it would hold differs from what was read: pruned or
        // unplaceable allocations, expired or new cooldowns, a missing file, or the same
        // allocations in another order (an upstream file).
        let ds = lock(&core.ds);
        let new_state = ds.state(SystemTime::now(), &detaching);
        if state.as_ref() != Some(&new_state) {
            checkpoint::save_state(&core.state_path(), &new_state)?;
        }
        let new_cp = ds.checkpoint();
        if cp.as_ref() != Some(&new_cp) {
            checkpoint::save(core.checkpoint_path(), &new_cp)?;
        }
    }
    Ok(detaching)
}

/// The limits of instance type `name`: the built-in table's row (`table`), else — a type newer
/// than the table — EC2's `DescribeInstanceTypes` answer, converted by the same code that
/// generates the table. Without either (IMDS-only mode, or EC2 does not know the type) start-up
/// fails naming the type and the closest known names.
pub async fn resolve_instance_type<E: ec2::Ec2Api>(
    name: &str,
    table: Option<&'static awscni_limits::InstanceType>,
    ec2: Option<&E>,
) -> Result<std::borrow::Cow<'static, awscni_limits::InstanceType>, StartError> {
    if let Some(it) = table {
        return Ok(std::borrow::Cow::Borrowed(it));
    }
    let unknown = |why: String| {
        StartError::Other(format!(
            "instance type {name:?} is not in the limits table (close: {:?}) and {why}",
            awscni_limits::close_matches(name, 3)
        ))
    };
    let Some(ec2) = ec2 else {
        return Err(unknown(
            "EC2 is disabled (ENABLE_IMDS_ONLY_MODE), so DescribeInstanceTypes cannot be asked"
                .into(),
        ));
    };
    let rows = ec2
        .describe_instance_types(&[name.to_owned()])
        .await
        .map_err(|e| unknown(format!("DescribeInstanceTypes failed: {e}")))?;
    let row = rows
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| unknown("DescribeInstanceTypes does not list it".into()))?;
    tracing::info!(
        instance_type = name,
        max_enis = row.default_card_enis(),
        ipv4_per_eni = row.ipv4_per_eni,
        "instance type not in the built-in table: using DescribeInstanceTypes"
    );
    Ok(std::borrow::Cow::Owned(row))
}

/// Pool limits and the node's max pods (max-pods.md §6: computed by the daemon from its own
/// configuration, the growth cap) for an instance type.
pub fn limits_for(
    it: &awscni_limits::InstanceType,
    cfg: &Config,
    unmanaged: usize,
) -> (Limits, awscni_limits::MaxPods) {
    let unmanaged = u32::try_from(unmanaged).unwrap_or(u32::MAX);
    let mp = awscni_limits::node_max_pods(
        it,
        cfg.pool.max_eni,
        unmanaged,
        cfg.pool.prefix_delegation,
        cfg.custom_network_cfg,
        false,
    );
    let limits = Limits {
        ipv4_per_eni: it.ipv4_per_eni,
        max_enis: it.default_card_enis(),
        max_pods: mp.max_pods,
        unmanaged_enis: unmanaged,
        trunk_reserve: 0,
    };
    (limits, mp)
}

/// Writes the max-pods value (with a newline) atomically.
pub fn write_max_pods(path: &Path, value: u32) -> Result<(), CheckpointError> {
    if let Some(dir) = path.parent() {
        // Best effort; the write below reports the real problem.
        let _ = std::fs::create_dir_all(dir);
    }
    checkpoint::write_atomic(path, format!("{value}\n").as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Production seams

use crate::ec2::{Ec2Settings, SdkEc2};
use crate::eni::{EniError, EniManager, EniSettings, LeakedEniSweeper, LinkProbe};
use crate::hostnet::{
    CommandRunner, EniHost, NetlinkLinkProbe, NodeSettings, ProcSysctl, SnatSettings, SystemRunner,
};
use crate::imds::{HttpImdsSource, Imds, ImdsSettings};
use crate::limiter::{LimiterSettings, TokenBucket};

fn cloud_err(e: EniError) -> CloudError {
    let kind = match &e {
        EniError::SubnetsExhausted { .. } => CloudErrorKind::InsufficientCapacity,
        EniError::Ec2(x)
            if x.code_is("InsufficientCidrBlocks")
                || x.code_is("InsufficientFreeAddressesInSubnet") =>
        {
            CloudErrorKind::InsufficientCapacity
        }
        EniError::Ec2(x) if x.code_is("PrivateIpAddressLimitExceeded") => {
            CloudErrorKind::AddressLimit
        }
        EniError::Ec2(x) if x.is_not_found() => CloudErrorKind::NotFound,
        _ => CloudErrorKind::Other,
    };
    CloudError::new(kind, e.to_string())
}

type RealEniManager<L> = EniManager<SdkEc2, HttpImdsSource, L>;

/// [`Cloud`] over the real IMDS and EC2 clients (`None` manager in IMDS-only mode). `L` is how
/// a new ENI's host link is awaited (netlink in production).
pub struct RealCloud<L: LinkProbe = NetlinkLinkProbe> {
    mgr: Option<RealEniManager<L>>,
    imds: Imds<HttpImdsSource>,
    primary_mac: String,
    sweeper: tokio::sync::Mutex<LeakedEniSweeper>,
}

impl<L: LinkProbe + 'static> RealCloud<L> {
    /// Wraps an ENI manager (None: IMDS-only) and an IMDS reader.
    pub fn new(
        mgr: Option<RealEniManager<L>>,
        imds: Imds<HttpImdsSource>,
        primary_mac: &str,
    ) -> Self {
        Self {
            mgr,
            imds,
            primary_mac: primary_mac.to_owned(),
            sweeper: tokio::sync::Mutex::new(LeakedEniSweeper::new()),
        }
    }

    fn mgr(&self) -> Result<&RealEniManager<L>, CloudError> {
        self.mgr.as_ref().ok_or_else(|| {
            CloudError::new(
                CloudErrorKind::Unavailable,
                "EC2 is disabled (ENABLE_IMDS_ONLY_MODE)",
            )
        })
    }
}

impl<L: LinkProbe + 'static> Cloud for RealCloud<L> {
    async fn interfaces(&self) -> Result<Vec<EniMetadata>, CloudError> {
        self.imds
            .interfaces(&self.primary_mac)
            .await
            .map_err(|e| CloudError::new(CloudErrorKind::Other, e.to_string()))
    }
    async fn describe(&self, ids: &[String]) -> Result<Vec<ec2::EniInfo>, CloudError> {
        self.mgr()?.describe_enis(ids).await.map_err(cloud_err)
    }
    async fn create_eni(&self, addresses: AddressRequest) -> Result<AttachedEni, CloudError> {
        self.mgr()?
            .create_and_attach(addresses)
            .await
            .map_err(cloud_err)
    }
    async fn top_up_tags(&self, ids: &[String]) -> Result<(), CloudError> {
        self.mgr()?.top_up_tags(ids).await.map_err(cloud_err)
    }
    async fn prepare_attach(&self, n: usize) -> Vec<AttachSlot> {
        match &self.mgr {
            Some(m) => m.prepare_attach(n).await,
            None => vec![AttachSlot::default(); n],
        }
    }
    async fn create_eni_in(
        &self,
        addresses: AddressRequest,
        slot: AttachSlot,
    ) -> Result<AttachedEni, CloudError> {
        self.mgr()?
            .create_and_attach_in(addresses, slot)
            .await
            .map_err(cloud_err)
    }
    async fn assign(
        &self,
        eni: &str,
        kind: CidrKind,
        count: u32,
    ) -> Result<Vec<Ipv4Net>, CloudError> {
        let m = self.mgr()?;
        match kind {
            CidrKind::SecondaryIp => Ok(m
                .assign_ips(eni, count)
                .await
                .map_err(cloud_err)?
                .into_iter()
                .map(Ipv4Net::from)
                .collect()),
            CidrKind::Prefix => m.assign_prefixes(eni, count).await.map_err(cloud_err),
        }
    }
    async fn unassign(&self, eni: &str, cidrs: &[Ipv4Net]) -> Result<(), CloudError> {
        let m = self.mgr()?;
        let ips: Vec<Ipv4Addr> = cidrs
            .iter()
            .filter(|c| c.prefix_len() == 32)
            .map(|c| c.addr())
            .collect();
        let prefixes: Vec<Ipv4Net> = cidrs
            .iter()
            .filter(|c| c.prefix_len() != 32)
            .copied()
            .collect();
        if !ips.is_empty() {
            m.unassign_ips(eni, &ips).await.map_err(cloud_err)?;
        }
        if !prefixes.is_empty() {
            m.unassign_prefixes(eni, &prefixes)
                .await
                .map_err(cloud_err)?;
        }
        Ok(())
    }
    async fn free_eni(&self, eni: &str) -> Result<(), CloudError> {
        self.mgr()?.free_eni(eni).await.map_err(cloud_err)
    }
    fn is_unmanaged(&self, eni: &ec2::EniInfo, is_primary: bool) -> bool {
        self.mgr
            .as_ref()
            .is_some_and(|m| m.unmanaged_reason(eni, is_primary).is_some())
    }
    async fn delete_own_available(&self) -> Result<Vec<String>, CloudError> {
        self.mgr()?.delete_own_leftovers().await.map_err(cloud_err)
    }
    fn creating_enis(&self) -> BTreeSet<String> {
        self.mgr.as_ref().map(|m| m.creating()).unwrap_or_default()
    }
    async fn sweep_leaked(&self) -> Result<Vec<String>, CloudError> {
        let m = self.mgr()?;
        let mut sw = self.sweeper.lock().await;
        let rep = m
            .sweep_leaked(&mut sw, time::OffsetDateTime::now_utc())
            .await
            .map_err(cloud_err)?;
        Ok(rep.deleted)
    }
}

/// [`Host`] over netlink (the plugin's facade), `/proc/sys` and the iptables binaries.
pub struct NetlinkHost {
    node: NodeSettings,
    snat: Mutex<SnatSettings>,
    mtu: u32,
    runner: SystemRunner,
}

/// Every device of the calling thread's network namespace, one per line after two header lines.
const PROC_NET_DEV: &str = "/proc/thread-self/net/dev";

/// Link names from `/proc/net/dev` text: each device line is `<spaces><name>:<counters>`. A
/// name never contains `:` or whitespace (the kernel's `dev_valid_name`), so the first `:` ends
/// it; header lines have none before their `|` columns and are skipped.
fn proc_net_dev_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let (name, _) = line.split_once(':')?;
            let name = name.trim();
            (!name.is_empty() && !name.contains(['|', ' '])).then(|| name.to_owned())
        })
        .collect()
}

/// Names of all links in the calling thread's network namespace.
///
/// From `/proc/net/dev` when readable, netlink otherwise. Restore only needs the names, and a
/// netlink link dump makes the kernel fill every link's full attribute set (~2 KiB each, the
/// per-family configuration even when statistics are skipped): with ~1,500 links on a 2-vCPU
/// host it measured 8-12 ms against 2.6 ms for `/proc/net/dev`. `thread-self`, not `self`: the
/// namespace of this thread, which is the one netlink would use.
fn host_link_names() -> Result<Vec<String>, String> {
    match std::fs::read_to_string(PROC_NET_DEV) {
        Ok(text) => Ok(proc_net_dev_names(&text)),
        Err(e) => {
            tracing::debug!(path = PROC_NET_DEV, error = %e, "listing links over netlink");
            Ok(nl()?
                .links()
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|l| l.name)
                .collect())
        }
    }
}

/// `f`'s output and how long it took, in ms.
async fn timed<T>(f: impl Future<Output = T>) -> (T, u64) {
    let t = Instant::now();
    let r = f.await;
    (r, t.elapsed().as_millis() as u64)
}

fn nl() -> Result<aws_cni::netlink::Netlink, String> {
    aws_cni::netlink::Netlink::open().map_err(|e| format!("netlink: {e}"))
}

impl Host for NetlinkHost {
    fn setup_node(&self) -> Result<(), String> {
        let rep = crate::hostnet::setup_node(&mut nl()?, &ProcSysctl, &self.node)
            .map_err(|e| e.to_string())?;
        lock(&self.snat).primary_if = rep.primary_if;
        self.reconcile_iptables()
    }
    fn setup_eni(&self, eni: &EniInfo) -> Result<(), String> {
        let h = EniHost {
            mac: eni.mac.clone(),
            primary_ip: eni.primary_ip,
            subnet: eni.subnet,
            table: eni.route_table(),
            mtu: self.mtu,
            link_attempts: 5,
            link_interval: Duration::from_secs(1),
        };
        crate::hostnet::setup_eni(&mut nl()?, &h)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    fn teardown_eni(&self, primary_ip: Ipv4Addr, table: u32) -> Result<(), String> {
        crate::hostnet::teardown_eni(&mut nl()?, primary_ip, table)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    fn link_names(&self) -> Result<Vec<String>, String> {
        host_link_names()
    }
    fn reapply_pod_rules(&self, pods: &[PodRule], prune: bool) -> Result<PodRuleReport, String> {
        crate::hostnet::reapply_pod_rules(&mut nl()?, pods, prune).map_err(|e| e.to_string())
    }
    fn reconcile_iptables(&self) -> Result<(), String> {
        let st = lock(&self.snat).clone();
        crate::hostnet::reconcile_iptables(&self.runner as &dyn CommandRunner, &st)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

fn other<E: std::fmt::Display>(ctx: &'static str) -> impl FnOnce(E) -> StartError {
    move |e| StartError::Other(format!("{ctx}: {e}"))
}

/// Start-up, serving and shutdown of the real daemon. Returns when SIGTERM/SIGINT was handled
/// (in-flight requests finished, no EC2 mutation running).
pub async fn run(mut cfg: Config, version: &str) -> Result<(), StartError> {
    let t0 = Instant::now();
    if cfg.custom_network_cfg {
        tracing::warn!(
            "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG: ENIConfig lookup needs the Kubernetes API, which \
             this release does not use; the primary ENI carries no pods and new ENIs use the \
             node's subnet and security groups"
        );
    }
    if cfg.annotate_pod_ip {
        tracing::warn!("ANNOTATE_POD_IP needs the Kubernetes API; not supported, ignored");
    }
    let src = HttpImdsSource::new(&ImdsSettings::default()).map_err(other("IMDS client"))?;
    let imds = Imds::new(src.clone());
    let inst = imds
        .instance()
        .await
        .map_err(other("IMDS instance metadata"))?;
    let t_imds = Instant::now();
    // Per-MAC IMDS reads concurrently (a 15-ENI node is ~100 small local HTTP reads), and the
    // EC2 client set up meanwhile.
    let ec2_client = async {
        if cfg.enable_imds_only_mode {
            return Ok(None);
        }
        let bucket = TokenBucket::new(LimiterSettings {
            qps: cfg.ec2_qps,
            burst: cfg.ec2_burst,
        })
        .map_err(other("EC2 rate limiter"))?;
        let mut es = Ec2Settings::for_region(&inst.region);
        if let Some(ep) = &cfg.ec2_endpoint {
            es.endpoint.get_or_insert_with(|| ep.clone());
        }
        es.http_timeout = cfg.http_timeout;
        Ok::<_, StartError>(Some(SdkEc2::connect(&es, Arc::new(bucket)).await))
    };
    // Each side timed on its own: they overlap, and a slow start needs to say which was slow.
    let ((interfaces, interfaces_ms), (ec2_client, ec2_setup_ms)) =
        futures::join!(timed(imds.interfaces(&inst.primary_mac)), timed(ec2_client));
    let interfaces = interfaces.map_err(other("IMDS interfaces"))?;
    let ec2_client = ec2_client?;
    let imds_ms = t_imds.elapsed().as_millis() as u64;
    tracing::info!(
        interfaces_ms,
        ec2_setup_ms,
        "IMDS interfaces read, EC2 client ready"
    );
    let primary = interfaces
        .iter()
        .find(|m| m.mac.eq_ignore_ascii_case(&inst.primary_mac))
        .cloned()
        .ok_or_else(|| {
            StartError::Other(format!(
                "primary MAC {} not in IMDS interfaces",
                inst.primary_mac
            ))
        })?;
    let it = resolve_instance_type(
        &inst.instance_type,
        awscni_limits::lookup(&inst.instance_type),
        ec2_client.as_ref(),
    )
    .await?;
    let it: &awscni_limits::InstanceType = &it;
    if cfg.pool.prefix_delegation && !it.supports_prefix_delegation() {
        tracing::warn!(instance_type = %it.name, "prefix delegation needs a Nitro or bare-metal instance; using secondary IPs (as upstream)");
        cfg.pool.prefix_delegation = false;
    }

    // EC2 counters and token bucket for the metrics endpoint (none in IMDS-only mode).
    let mut obs_extras = crate::metrics::Extras {
        imds: Some(src.stats()),
        ..Default::default()
    };
    let mgr = if let Some(ec2) = ec2_client {
        obs_extras.ec2 = Some(ec2.stats());
        obs_extras.limiter = Some(ec2.limiter());
        let mut s = EniSettings::new(
            &inst.instance_id,
            primary.vpc_id.as_deref().unwrap_or_default(),
            &inst.availability_zone,
            &primary.subnet_id,
        );
        s.security_groups = primary.security_groups.clone();
        s.cluster_name = Some(cfg.cluster_name.clone()).filter(|c| !c.is_empty());
        s.additional_tags = cfg.additional_eni_tags.clone();
        s.subnet_discovery = cfg.enable_subnet_discovery;
        s.manage_untagged = cfg.manage_untagged_eni;
        Some(EniManager::new(
            ec2,
            Imds::new(src.clone()),
            NetlinkLinkProbe,
            s,
        ))
    } else {
        None
    };

    // Metrics hook: node initialisation = ENI discovery .. serving.
    let t_node_init = Instant::now();
    let t_ec2 = Instant::now();
    let card0: Vec<EniMetadata> = interfaces
        .iter()
        .filter(|m| m.network_card == 0)
        .cloned()
        .collect();
    let described = match &mgr {
        Some(m) => {
            let ids: Vec<String> = card0.iter().map(|i| i.eni_id.clone()).collect();
            match m.describe_enis(&ids).await {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot describe attached ENIs; using IMDS only");
                    None
                }
            }
        }
        None => None,
    };
    let mut unmanaged = BTreeSet::new();
    let mut tag_enis: Vec<String> = Vec::new();
    if let (Some(m), Some(d)) = (&mgr, &described) {
        for e in d {
            let is_primary = card0
                .iter()
                .any(|i| i.eni_id == e.eni_id && i.device_number == 0);
            if let Some(why) = m.unmanaged_reason(e, is_primary) {
                tracing::info!(eni = %e.eni_id, reason = ?why, "ENI not managed");
                unmanaged.insert(e.eni_id.clone());
            }
        }
        tag_enis = card0
            .iter()
            .filter(|i| !unmanaged.contains(&i.eni_id))
            .map(|i| i.eni_id.clone())
            .collect();
    }
    let ec2_ms = t_ec2.elapsed().as_millis() as u64;
    let (limits, mp) = limits_for(it, &cfg, unmanaged.len());
    tracing::info!(max_pods = mp.max_pods, detail = %mp.explain(), "node max pods");
    if let Err(e) = write_max_pods(&cfg.max_pods_file, mp.max_pods) {
        tracing::warn!(error = %e, "cannot write max-pods file");
    }
    let ds = build_datastore(&cfg, &card0, described.as_deref(), &unmanaged);

    let runner = SystemRunner::default();
    // Read with the primary ENI above (`Imds::interface` reads the same
    // `vpc-ipv4-cidr-blocks` path); asking again would only repeat a 404.
    let vpc_cidrs = primary.vpc_cidrs.clone();
    let snat = SnatSettings {
        external_snat: cfg.external_snat,
        exclude_snat_cidrs: cfg.exclude_snat_cidrs.clone(),
        randomize: cfg.randomize_snat,
        random_fully_supported: crate::hostnet::random_fully_supported(&runner),
        node_port_support: cfg.node_port_support,
        connmark: cfg.connmark,
        veth_prefix: cfg.veth_prefix.clone(),
        primary_if: String::new(),
        node_ip: inst.local_ipv4,
        vpc_cidrs: vpc_cidrs.clone(),
    };
    let host = NetlinkHost {
        node: NodeSettings {
            primary_mac: inst.primary_mac.clone(),
            mtu: cfg.eni_mtu,
            connmark: cfg.connmark,
            node_port_support: cfg.node_port_support,
            external_snat: cfg.external_snat,
            external_service_cidrs: cfg.external_service_cidrs.clone(),
            link_attempts: 5,
            link_interval: Duration::from_secs(3),
        },
        snat: Mutex::new(snat),
        mtu: cfg.eni_mtu,
        runner,
    };
    let node = NodeInfo {
        instance_id: inst.instance_id.clone(),
        region: inst.region.clone(),
        instance_type: inst.instance_type.clone(),
        node_ip: Some(inst.local_ipv4),
        vpc_cidrs,
        primary_mac: inst.primary_mac.clone(),
    };
    let cloud = RealCloud::new(mgr, Imds::new(src), &inst.primary_mac);
    let core = Arc::new(Core::new(cfg, node, limits, ds, cloud, host));
    core.set_unmanaged(unmanaged);
    let init_busy = core.counters.in_progress.enter("nodeInit");
    // Metrics and introspection from here on, so an operator can watch the start-up; kept
    // alive until `run` returns.
    let _observability = crate::introspect::start_servers(
        core.clone(),
        obs_extras,
        version,
        crate::metrics::DEFAULT_METRICS_ADDR,
    )
    .await;

    // Restore first: it only needs the host's link names. A restored allocation means pods
    // wired by a previous run of ours still exist (their veth, or wired within the grace
    // period): this is a daemon restart, not a fresh boot, and the kernel state that run set
    // up (node sysctls and rules, each secondary ENI's address, table and rule, SNAT rules)
    // survives a process restart. Then the host set-up below only re-applies what is already
    // there, so it runs right after serving instead of before (restart-to-serving no longer
    // grows with the ENI count); it is idempotent, and the reconcile loop re-applies the same
    // state periodically anyway. On a fresh node (nothing restored) it runs before serving, as
    // upstream, so no pod is ever wired through an ENI that is not set up yet.
    let t_restore = Instant::now();
    let detaching = restore(&core, RESTORE_GRACE).await?;
    let restore_ms = t_restore.elapsed().as_millis() as u64;
    let restart = core.with_ds(|ds| ds.stats(SystemTime::now()).assigned()) > 0;
    let host_fatal = Arc::new(Notify::new());
    let deferred = if restart {
        let c = core.clone();
        let tag_enis = tag_enis.clone();
        let fatal = host_fatal.clone();
        Some(tokio::spawn(async move {
            let _busy = c.counters.in_progress.enter("nodeInit");
            let t = Instant::now();
            if let Err(e) = host_setup(&c).await {
                // As on a fresh start: a node we cannot set up is fatal (the supervisor
                // restarts us); until then the previous run's state keeps pods working.
                tracing::error!(error = %e, "host set-up after restart failed");
                fatal.notify_one();
                return;
            }
            cleanup_leftovers(&c, &tag_enis).await;
            tracing::info!(
                ms = t.elapsed().as_millis() as u64,
                "host set-up re-applied after restart"
            );
        }))
    } else {
        host_setup(&core).await?;
        None
    };
    let t_repair = Instant::now();
    core.finish_detaching(detaching).await;
    if !restart {
        cleanup_leftovers(&core, &tag_enis).await;
    }
    // Before serving in both cases: the prune must not race an ADD whose rule the plugin is
    // adding (it would remove it); one netlink dump and diff, cheap next to the rest.
    core.repair_pod_rules(true).await;
    let repair_ms = t_repair.elapsed().as_millis() as u64;
    // Pre-scale: on a node without a single free address (fresh node) wait for the first fill
    // before serving, as upstream does; a restart with addresses serves at once and lets the
    // pool manager top up. The pass runs as its own task so that a slow EC2 never gets
    // cancelled half-way (which could leak a created ENI).
    let fill = {
        let c = core.clone();
        tokio::spawn(async move { c.pool_pass().await })
    };
    if core.with_ds(|ds| ds.stats(SystemTime::now()).free()) == 0
        && tokio::time::timeout(Duration::from_secs(60), fill)
            .await
            .is_err()
    {
        tracing::warn!("initial pool fill still running after 60 s; serving anyway");
    }

    let listener = crate::rpc::bind_unix(&core.cfg.ipamd_socket).map_err(|e| {
        StartError::Other(format!(
            "cannot bind {}: {e}",
            core.cfg.ipamd_socket.display()
        ))
    })?;
    let services = crate::rpc::Services::new(core.clone(), version);
    let (router, reporter) = crate::rpc::router(services.clone());
    let mut reporters = vec![reporter];
    let shutdown = Arc::new(Notify::new());
    let mut servers = Vec::new();
    if core.cfg.legacy_tcp_listener {
        let tcp = tokio::net::TcpListener::bind(crate::config::LEGACY_TCP_ADDR)
            .await
            .map_err(|e| {
                StartError::Other(format!(
                    "cannot bind {}: {e}",
                    crate::config::LEGACY_TCP_ADDR
                ))
            })?;
        let (r2, rep2) = crate::rpc::router(services);
        reporters.push(rep2);
        let sd = shutdown.clone();
        servers.push(tokio::spawn(r2.serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(tcp),
            async move { sd.notified().await },
        )));
    }
    let sd = shutdown.clone();
    servers.push(tokio::spawn(router.serve_with_incoming_shutdown(
        tokio_stream::wrappers::UnixListenerStream::new(listener),
        async move { sd.notified().await },
    )));
    for r in &reporters {
        crate::rpc::set_health(r, true).await;
    }
    drop(init_busy);
    core.set_ready();
    core.counters
        .startup
        .record(t0.elapsed(), t_node_init.elapsed());
    let stats = core.with_ds(|ds| ds.stats(SystemTime::now()));
    tracing::info!(
        socket = %core.cfg.ipamd_socket.display(),
        startup_ms = t0.elapsed().as_millis() as u64,
        imds_ms,
        ec2_ms,
        restore_ms,
        repair_ms,
        host_setup_deferred = restart,
        enis = stats.enis.len(),
        total = stats.total(),
        assigned = stats.assigned(),
        "ipamd serving"
    );
    let pm = tokio::spawn(core.clone().pool_manager());
    let rc = tokio::spawn(core.clone().reconcile_loop());

    let failed = tokio::select! {
        () = wait_for_signal() => None,
        () = host_fatal.notified() => Some(StartError::Other("host set-up after restart failed".into())),
    };
    if let Some(d) = deferred {
        d.abort();
    }
    tracing::info!("shutting down: NOT_SERVING, no more EC2 changes, finishing in-flight requests");
    for r in &reporters {
        crate::rpc::set_health(r, false).await;
    }
    core.stop();
    shutdown.notify_waiters();
    for s in servers {
        match s.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server error"),
            Err(e) => tracing::warn!(error = %e, "gRPC server task failed"),
        }
    }
    rc.abort();
    // The pool manager stops planning at once; EC2 actions already issued (an ENI being
    // created and attached) finish, so nothing is left half-done. Do not wait forever.
    let wait_growth = async {
        let _ = pm.await;
        while core.growth_in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), wait_growth)
        .await
        .is_err()
    {
        tracing::warn!("EC2 actions still running after 20 s; exiting anyway");
    }
    if let Err(e) = core.persist_all() {
        tracing::warn!(error = %e, "final checkpoint write failed");
    }
    let _ = std::fs::remove_file(&core.cfg.ipamd_socket);
    tracing::info!("ipamd stopped");
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Node set-up, then every secondary ENI's (upstream retries each 5 × 10 s; an ENI whose link
/// is slow is retried by reconcile later). A node set-up failure is fatal.
async fn host_setup<C: Cloud, H: Host>(core: &Arc<Core<C, H>>) -> Result<(), StartError> {
    let h = core.host.clone();
    tokio::task::spawn_blocking(move || h.setup_node())
        .await
        .map_err(other("host set-up task"))?
        .map_err(|e| StartError::Other(format!("host set-up: {e}")))?;
    let secondaries: Vec<EniInfo> =
        core.with_ds(|ds| ds.enis().filter(|e| !e.is_primary).cloned().collect());
    for e in secondaries {
        let h = core.host.clone();
        let id = e.id.clone();
        match tokio::task::spawn_blocking(move || h.setup_eni(&e)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(eni = %id, error = %err, "ENI host set-up failed"),
            Err(err) => tracing::warn!(eni = %id, error = %err, "ENI host set-up task failed"),
        }
    }
    Ok(())
}

/// Tops up our ownership tags on the managed ENIs found at start (`tag_enis`; the leaked-ENI
/// sweep relies on them), and deletes `available` ENIs a previous run created and left behind
/// (read-only when none).
async fn cleanup_leftovers<C: Cloud, H: Host>(core: &Core<C, H>, tag_enis: &[String]) {
    if core.cfg.disable_network_resource_provisioning {
        return;
    }
    if !tag_enis.is_empty()
        && let Err(e) = core.cloud.top_up_tags(tag_enis).await
    {
        tracing::warn!(error = %e, "cannot top up ENI tags");
    }
    match core.cloud.delete_own_available().await {
        Ok(d) if !d.is_empty() => {
            tracing::info!(enis = ?d, "deleted ENIs a previous run left detached")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot look for leftover ENIs"),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Cannot install handlers: fall back to Ctrl-C only.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::datastore::AddrState;
    use crate::ec2::EniAttachment;
    use std::sync::atomic::AtomicU32;

    /// In-memory EC2 + IMDS: one subnet 10.0.0.0/16, ENIs get consecutive addresses.
    #[derive(Default)]
    pub struct FakeCloud {
        pub enis: Mutex<Vec<ec2::EniInfo>>,
        pub next: AtomicU32,
        pub calls: Mutex<Vec<String>>,
        pub fail_prefix: AtomicBool,
        pub create_delay: Mutex<Duration>,
    }

    impl FakeCloud {
        pub fn with_primary(n_ips: usize) -> Self {
            let c = FakeCloud {
                next: AtomicU32::new(u32::from(Ipv4Addr::new(10, 0, 1, 0))),
                ..Default::default()
            };
            let primary = c.alloc(1)[0];
            let ips = c.alloc(n_ips);
            c.enis.lock().unwrap().push(ec2::EniInfo {
                eni_id: "eni-0".into(),
                mac: "02:00:00:00:00:00".into(),
                description: String::new(),
                status: "in-use".into(),
                interface_type: "interface".into(),
                subnet_id: "subnet-1".into(),
                vpc_id: "vpc-1".into(),
                primary_ip: Some(primary),
                secondary_ips: ips,
                prefixes: vec![],
                attachment: Some(EniAttachment {
                    attachment_id: "eni-attach-0".into(),
                    instance_id: Some("i-1".into()),
                    device_index: 0,
                    network_card: 0,
                    status: "attached".into(),
                    delete_on_termination: true,
                }),
                tags: Default::default(),
                security_groups: vec![],
            });
            c
        }
        fn alloc(&self, n: usize) -> Vec<Ipv4Addr> {
            (0..n)
                .map(|_| Ipv4Addr::from(self.next.fetch_add(1, Ordering::SeqCst)))
                .collect()
        }
        fn alloc_prefix(&self) -> Ipv4Net {
            let cur = self.next.load(Ordering::SeqCst);
            let aligned = (cur + 15) & !15;
            self.next.store(aligned + 16, Ordering::SeqCst);
            Ipv4Net::new(Ipv4Addr::from(aligned), 28).unwrap()
        }
        fn call(&self, s: String) {
            self.calls.lock().unwrap().push(s);
        }
        pub fn count(&self, prefix: &str) -> usize {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c.starts_with(prefix))
                .count()
        }
        pub fn metadata(e: &ec2::EniInfo) -> EniMetadata {
            let mut ips = vec![e.primary_ip.unwrap()];
            ips.extend(e.secondary_ips.iter().copied());
            EniMetadata {
                mac: e.mac.clone(),
                device_number: e.attachment.as_ref().map(|a| a.device_index).unwrap_or(0),
                network_card: 0,
                eni_id: e.eni_id.clone(),
                subnet_id: e.subnet_id.clone(),
                subnet_cidr: "10.0.0.0/16".parse().unwrap(),
                vpc_id: Some("vpc-1".into()),
                vpc_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
                local_ipv4s: ips,
                ipv4_prefixes: e.prefixes.clone(),
                security_groups: vec![],
            }
        }
    }

    impl Cloud for FakeCloud {
        async fn interfaces(&self) -> Result<Vec<EniMetadata>, CloudError> {
            Ok(self
                .enis
                .lock()
                .unwrap()
                .iter()
                .map(Self::metadata)
                .collect())
        }
        async fn describe(&self, ids: &[String]) -> Result<Vec<ec2::EniInfo>, CloudError> {
            self.call(format!("describe {ids:?}"));
            Ok(self
                .enis
                .lock()
                .unwrap()
                .iter()
                .filter(|e| ids.contains(&e.eni_id))
                .cloned()
                .collect())
        }
        async fn create_eni(&self, addresses: AddressRequest) -> Result<AttachedEni, CloudError> {
            self.call(format!("create {addresses:?}"));
            let delay = *self.create_delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            if matches!(addresses, AddressRequest::Prefixes(_))
                && self.fail_prefix.load(Ordering::SeqCst)
            {
                return Err(CloudError::new(
                    CloudErrorKind::InsufficientCapacity,
                    "InsufficientCidrBlocks",
                ));
            }
            let mut enis = self.enis.lock().unwrap();
            let dev = (0..)
                .find(|d| {
                    !enis
                        .iter()
                        .any(|e| e.attachment.as_ref().unwrap().device_index == *d)
                })
                .unwrap();
            let primary = self.alloc(1)[0];
            let (ips, prefixes) = match addresses {
                AddressRequest::Ips(n) => (self.alloc(n as usize), vec![]),
                AddressRequest::Prefixes(n) => {
                    (vec![], (0..n).map(|_| self.alloc_prefix()).collect())
                }
                AddressRequest::None => (vec![], vec![]),
            };
            let info = ec2::EniInfo {
                eni_id: format!("eni-{dev}"),
                mac: format!("02:00:00:00:00:{dev:02x}"),
                description: "aws-K8S-i-1".into(),
                status: "in-use".into(),
                interface_type: "interface".into(),
                subnet_id: "subnet-1".into(),
                vpc_id: "vpc-1".into(),
                primary_ip: Some(primary),
                secondary_ips: ips,
                prefixes,
                attachment: Some(EniAttachment {
                    attachment_id: format!("eni-attach-{dev}"),
                    instance_id: Some("i-1".into()),
                    device_index: dev,
                    network_card: 0,
                    status: "attached".into(),
                    delete_on_termination: true,
                }),
                tags: Default::default(),
                security_groups: vec![],
            };
            enis.push(info.clone());
            Ok(AttachedEni {
                metadata: Self::metadata(&info),
                attachment_id: format!("eni-attach-{dev}"),
                device_index: dev,
                network_card: 0,
                info,
            })
        }
        async fn assign(
            &self,
            eni: &str,
            kind: CidrKind,
            count: u32,
        ) -> Result<Vec<Ipv4Net>, CloudError> {
            self.call(format!("assign {eni} {kind:?} {count}"));
            if kind == CidrKind::Prefix && self.fail_prefix.load(Ordering::SeqCst) {
                return Err(CloudError::new(
                    CloudErrorKind::InsufficientCapacity,
                    "InsufficientCidrBlocks",
                ));
            }
            let mut enis = self.enis.lock().unwrap();
            let e = enis
                .iter_mut()
                .find(|e| e.eni_id == eni)
                .ok_or_else(|| CloudError::new(CloudErrorKind::NotFound, eni))?;
            let mut out = Vec::new();
            for _ in 0..count {
                if kind == CidrKind::Prefix {
                    let p = self.alloc_prefix();
                    e.prefixes.push(p);
                    out.push(p);
                } else {
                    let ip = self.alloc(1)[0];
                    e.secondary_ips.push(ip);
                    out.push(Ipv4Net::from(ip));
                }
            }
            Ok(out)
        }
        async fn unassign(&self, eni: &str, cidrs: &[Ipv4Net]) -> Result<(), CloudError> {
            self.call(format!("unassign {eni} {}", cidrs.len()));
            let mut enis = self.enis.lock().unwrap();
            if let Some(e) = enis.iter_mut().find(|e| e.eni_id == eni) {
                e.secondary_ips
                    .retain(|ip| !cidrs.contains(&Ipv4Net::from(*ip)));
                e.prefixes.retain(|p| !cidrs.contains(p));
            }
            Ok(())
        }
        async fn free_eni(&self, eni: &str) -> Result<(), CloudError> {
            self.call(format!("free {eni}"));
            self.enis.lock().unwrap().retain(|e| e.eni_id != eni);
            Ok(())
        }
        fn is_unmanaged(&self, eni: &ec2::EniInfo, _is_primary: bool) -> bool {
            eni.tags
                .get("node.k8s.amazonaws.com/no_manage")
                .is_some_and(|v| v == "true")
        }
        async fn sweep_leaked(&self) -> Result<Vec<String>, CloudError> {
            Ok(vec![])
        }
        async fn delete_own_available(&self) -> Result<Vec<String>, CloudError> {
            Ok(vec![])
        }
    }

    /// Records host calls; keeps a fake rule set for pod rules.
    #[derive(Default)]
    pub struct FakeHost {
        pub calls: Mutex<Vec<String>>,
        pub links: Mutex<Vec<String>>,
        pub pod_rules: Mutex<BTreeSet<PodRule>>,
    }

    impl Host for FakeHost {
        fn setup_node(&self) -> Result<(), String> {
            self.calls.lock().unwrap().push("setup_node".into());
            Ok(())
        }
        fn setup_eni(&self, eni: &EniInfo) -> Result<(), String> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("setup_eni {}", eni.id));
            Ok(())
        }
        fn teardown_eni(&self, ip: Ipv4Addr, table: u32) -> Result<(), String> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("teardown {ip} {table}"));
            Ok(())
        }
        fn link_names(&self) -> Result<Vec<String>, String> {
            Ok(self.links.lock().unwrap().clone())
        }
        fn reapply_pod_rules(
            &self,
            pods: &[PodRule],
            prune: bool,
        ) -> Result<PodRuleReport, String> {
            let mut have = self.pod_rules.lock().unwrap();
            let mut rep = PodRuleReport::default();
            for p in pods {
                if have.insert(*p) {
                    rep.added.push(p.ip.to_string());
                }
            }
            if prune {
                let want: BTreeSet<PodRule> = pods.iter().copied().collect();
                have.retain(|p| {
                    let keep = want.contains(p);
                    if !keep {
                        rep.removed.push(p.ip.to_string());
                    }
                    keep
                });
            }
            Ok(rep)
        }
        fn reconcile_iptables(&self) -> Result<(), String> {
            Ok(())
        }
    }

    pub const M5_LARGE: Limits = Limits {
        ipv4_per_eni: 10,
        max_enis: 3,
        max_pods: 29,
        unmanaged_enis: 0,
        trunk_reserve: 0,
    };

    pub fn cfg(dir: &Path, vars: &[(&str, &str)]) -> Config {
        let mut m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        m.insert(
            "AWS_VPC_K8S_CNI_BACKING_STORE".into(),
            dir.join("ipam.json").display().to_string(),
        );
        m.entry("AWS_VPC_CNI_ADD_WAIT_MS".into())
            .or_insert_with(|| "3000".into());
        Config::from_lookup(&move |k| m.get(k).cloned()).unwrap().0
    }

    pub async fn core(
        dir: &Path,
        vars: &[(&str, &str)],
        cloud: FakeCloud,
    ) -> Arc<Core<FakeCloud, FakeHost>> {
        let cfg = cfg(dir, vars);
        let imds = cloud.interfaces().await.unwrap();
        let described = cloud.enis.lock().unwrap().clone();
        let ds = build_datastore(&cfg, &imds, Some(&described), &BTreeSet::new());
        let node = NodeInfo {
            instance_id: "i-1".into(),
            region: "us-west-2".into(),
            instance_type: "m5.large".into(),
            node_ip: imds[0].primary_ip(),
            vpc_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
            primary_mac: imds[0].mac.clone(),
        };
        let c = Arc::new(Core::new(
            cfg,
            node,
            M5_LARGE,
            ds,
            cloud,
            FakeHost::default(),
        ));
        restore(&c, RESTORE_GRACE).await.unwrap();
        c
    }

    fn key(c: &str) -> IpamKey {
        IpamKey::new("aws-cni", c, "eth0")
    }
    fn meta(n: &str) -> PodMeta {
        PodMeta {
            namespace: "default".into(),
            name: n.into(),
            interfaces_count: 1,
        }
    }

    #[tokio::test]
    async fn initial_fill_grows_to_target_in_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let c = core(dir.path(), &[], FakeCloud::with_primary(0)).await;
        c.pool_pass().await;
        let s = c.with_ds(|ds| ds.stats(SystemTime::now()));
        assert_eq!((s.enis.len(), s.total()), (1, 9));
        // One pod: the primary is "low" → a new ENI with 9, in the same pass as the ADD wake.
        let a = c.add(&key("c1"), &meta("p1")).await.unwrap();
        assert!(matches!(a, AddOutcome::Assigned(_)));
        c.pool_pass().await;
        let s = c.with_ds(|ds| ds.stats(SystemTime::now()));
        assert_eq!((s.enis.len(), s.total(), s.assigned()), (2, 18, 1));
        assert_eq!(c.cloud().count("create"), 1);
        assert!(
            c.host()
                .calls
                .lock()
                .unwrap()
                .contains(&"setup_eni eni-1".to_string())
        );
    }

    #[tokio::test]
    async fn add_on_empty_pool_waits_for_the_pool_manager() {
        let dir = tempfile::tempdir().unwrap();
        let c = core(dir.path(), &[], FakeCloud::with_primary(0)).await;
        *c.cloud().create_delay.lock().unwrap() = Duration::from_millis(50);
        let pm = tokio::spawn(c.clone().pool_manager());
        // Ten concurrent ADDs on an empty pool all succeed, with distinct addresses.
        let mut hs = Vec::new();
        for i in 0..12 {
            let c = c.clone();
            hs.push(tokio::spawn(async move {
                c.add(&key(&format!("c{i}")), &meta("p")).await.unwrap()
            }));
        }
        let mut addrs = BTreeSet::new();
        for h in hs {
            match h.await.unwrap() {
                AddOutcome::Assigned(a) => assert!(addrs.insert(a.addr)),
                AddOutcome::NoAddress => panic!("ADD failed"),
            }
        }
        assert_eq!(addrs.len(), 12);
        c.stop();
        pm.await.unwrap();
        // The checkpoint on disk holds all twelve.
        let cp = checkpoint::load(&dir.path().join("ipam.json"))
            .unwrap()
            .unwrap();
        assert_eq!(cp.allocations.len(), 12);
    }

    /// The same drained pool, once drained by ADDs just now and once by allocations the daemon
    /// did not see being made: only recent demand makes the plan attach more than the warm ENI.
    #[tokio::test]
    async fn recent_demand_sizes_new_eni_growth() {
        let mut enis = Vec::new();
        for recent in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let c = core(dir.path(), &[], FakeCloud::with_primary(9)).await;
            for i in 0..9 {
                let k = key(&format!("c{i}"));
                if recent {
                    assert!(matches!(
                        c.add(&k, &meta("p")).await.unwrap(),
                        AddOutcome::Assigned(_)
                    ));
                } else {
                    lock(&c.ds)
                        .assign(&k, meta("p"), SystemTime::now())
                        .unwrap();
                }
            }
            // Nine in the last second, held for the default 2 s attach time.
            assert_eq!(c.burst_lookahead(), if recent { 18 } else { 0 });
            c.pool_pass().await;
            enis.push(c.with_ds(|ds| ds.enis().count()));
            assert_eq!(c.cloud().count("create"), enis[enis.len() - 1] - 1);
        }
        // Warm target alone: one new ENI. With the demand expected during an attach on top:
        // more, up to the m5.large limit of three.
        assert_eq!(enis, [3, 2]);
    }

    #[tokio::test]
    async fn add_gives_up_after_the_wait_budget() {
        let dir = tempfile::tempdir().unwrap();
        let c = core(
            dir.path(),
            &[
                ("DISABLE_NETWORK_RESOURCE_PROVISIONING", "true"),
                ("AWS_VPC_CNI_ADD_WAIT_MS", "50"),
            ],
            FakeCloud::with_primary(1),
        )
        .await;
        assert!(matches!(
            c.add(&key("a"), &meta("a")).await.unwrap(),
            AddOutcome::Assigned(_)
        ));
        assert_eq!(
            c.add(&key("b"), &meta("b")).await.unwrap(),
            AddOutcome::NoAddress
        );
        assert_eq!(c.pending(), 0);
        assert_eq!(c.counters.add_no_address.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn add_idempotent_del_legacy_and_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let c = core(dir.path(), &[], FakeCloud::with_primary(9)).await;
        let AddOutcome::Assigned(a) = c.add(&key("c1"), &meta("p")).await.unwrap() else {
            panic!()
        };
        let AddOutcome::Assigned(b) = c.add(&key("c1"), &meta("p")).await.unwrap() else {
            panic!()
        };
        assert_eq!(a.addr, b.addr);
        assert!(b.existing);
        let r = c.del(&key("c1")).unwrap();
        assert_eq!(r.addr, a.addr);
        let e = c.del(&key("c1")).unwrap_err();
        assert_eq!(e.to_string(), "datastore: unknown pod");
        // The released address is cooling, persisted in the sidecar.
        let st = checkpoint::load_state(&dir.path().join("ipam.json.awscni-state"))
            .unwrap()
            .unwrap();
        assert_eq!(st.cooldown.len(), 1);
        assert_eq!(st.cooldown[0].ipv4, a.addr.to_string());
    }

    #[tokio::test]
    async fn checkpoint_failure_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let c = core(dir.path(), &[], FakeCloud::with_primary(9)).await;
        // Make the checkpoint path unwritable: a directory in its place.
        std::fs::remove_file(dir.path().join("ipam.json")).unwrap();
        std::fs::create_dir(dir.path().join("ipam.json")).unwrap();
        std::fs::write(dir.path().join("ipam.json").join("x"), "x").unwrap();
        let e = c.add(&key("c1"), &meta("p")).await.unwrap_err();
        assert!(matches!(e, OpError::Persist(_)), "{e}");
        assert_eq!(c.with_ds(|ds| ds.stats(SystemTime::now()).assigned()), 0);
    }

    #[tokio::test]
    async fn restart_restores_and_prunes_gone_pods() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = FakeCloud::with_primary(9);
        let c = core(dir.path(), &[], cloud).await;
        let mut held = Vec::new();
        for (i, n) in ["alive", "gone"].iter().enumerate() {
            let AddOutcome::Assigned(a) = c.add(&key(&format!("c{i}")), &meta(n)).await.unwrap()
            else {
                panic!()
            };
            held.push(a);
        }
        // "Restart": a new core over the same cloud state and files; only "alive" has a veth.
        let enis = c.cloud().enis.lock().unwrap().clone();
        let cloud2 = FakeCloud {
            enis: Mutex::new(enis),
            ..Default::default()
        };
        let cfg = cfg(dir.path(), &[]);
        let imds = cloud2.interfaces().await.unwrap();
        let ds = build_datastore(&cfg, &imds, None, &BTreeSet::new());
        let host = FakeHost::default();
        host.links
            .lock()
            .unwrap()
            .push(format!("eni{}", checkpoint::veth_hash("default", "alive")));
        let c2 = Core::new(cfg, c.node.clone(), M5_LARGE, ds, cloud2, host);
        restore(&c2, Duration::ZERO).await.unwrap();
        assert_eq!(c2.lookup(&key("c0")).unwrap().addr, held[0].addr);
        assert!(c2.lookup(&key("c1")).is_none());
        // The dropped pod's address is cooling, not handed out again right away.
        let AddOutcome::Assigned(n) = c2.add(&key("c9"), &meta("new")).await.unwrap() else {
            panic!()
        };
        assert_ne!(n.addr, held[1].addr);
        assert_ne!(n.addr, held[0].addr);
        // Startup pruning of pod rules keeps only restored pods.
        c2.repair_pod_rules(true).await;
        let rules = c2.host().pod_rules.lock().unwrap().clone();
        assert!(rules.iter().any(|r| r.ip == held[0].addr));
        assert!(!rules.iter().any(|r| r.ip == held[1].addr));
    }

    /// A new core over `enis` and the files in `dir`, restored with `links` on the host.
    async fn restarted(
        dir: &Path,
        enis: &[ec2::EniInfo],
        links: Vec<String>,
    ) -> (Core<FakeCloud, FakeHost>, Vec<EniId>) {
        let cloud = FakeCloud {
            enis: Mutex::new(enis.to_vec()),
            ..Default::default()
        };
        let cfg = cfg(dir, &[]);
        let imds = cloud.interfaces().await.unwrap();
        let ds = build_datastore(&cfg, &imds, None, &BTreeSet::new());
        let host = FakeHost::default();
        *host.links.lock().unwrap() = links;
        let node = NodeInfo {
            instance_id: "i-1".into(),
            region: "us-west-2".into(),
            instance_type: "m5.24xlarge".into(),
            node_ip: imds[0].primary_ip(),
            vpc_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
            primary_mac: imds[0].mac.clone(),
        };
        let c = Core::new(cfg, node, M5_LARGE, ds, cloud, host);
        let detaching = restore(&c, RESTORE_GRACE).await.unwrap();
        (c, detaching)
    }

    /// A full m5.24xlarge-sized node (15 ENIs, 735 pods) restarts: live pods are kept, gone
    /// ones pruned into cooldown, gone-but-just-wired ones kept, the sidecar honoured, and each
    /// file is rewritten exactly when its content changes.
    #[tokio::test]
    async fn restore_at_node_scale_prunes_and_rewrites_only_changes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let cloud = FakeCloud::with_primary(50);
        for _ in 0..14 {
            cloud.create_eni(AddressRequest::Ips(50)).await.unwrap();
        }
        let enis = cloud.enis.lock().unwrap().clone();
        let addrs: Vec<Ipv4Addr> = enis.iter().flat_map(|e| e.secondary_ips.clone()).collect();
        assert_eq!(addrs.len(), 750);
        let now = SystemTime::now();
        let ts = |t: SystemTime| crate::datastore::to_unix_nanos(t);
        // Pods 0..700 have their veth, 700..730 are gone, 730..735 are gone but were wired
        // moments ago (the plugin may still be wiring them).
        let allocations = (0..735)
            .map(|i| checkpoint::Allocation {
                network_name: "aws-cni".into(),
                container_id: format!("c{i}"),
                if_name: "eth0".into(),
                ipv4: addrs[i].to_string(),
                ipv6: String::new(),
                allocation_timestamp: ts(if i >= 730 {
                    now
                } else {
                    now - Duration::from_secs(3600)
                }),
                metadata: checkpoint::AllocMetadata {
                    k8s_pod_namespace: "default".into(),
                    k8s_pod_name: format!("pod-{i}"),
                    interfaces_count: 1,
                },
            })
            .collect();
        let cp_path = dir.path().join("ipam.json");
        let st_path = checkpoint::sidecar_path(&cp_path);
        checkpoint::save(
            &cp_path,
            &checkpoint::Checkpoint {
                version: checkpoint::VERSION.into(),
                allocations,
            },
        )
        .unwrap();
        // Two spare addresses: one released 5 s ago (still cooling), one an hour ago (expired).
        checkpoint::save_state(
            &st_path,
            &checkpoint::State {
                version: checkpoint::STATE_VERSION.into(),
                cooldown: vec![
                    checkpoint::CooldownEntry {
                        ipv4: addrs[740].to_string(),
                        released_at: ts(now - Duration::from_secs(5)),
                    },
                    checkpoint::CooldownEntry {
                        ipv4: addrs[741].to_string(),
                        released_at: ts(now - Duration::from_secs(3600)),
                    },
                ],
                detaching_enis: vec!["eni-gone".into()],
            },
        )
        .unwrap();
        let veth = |i: usize| {
            format!(
                "eni{}",
                checkpoint::veth_hash("default", &format!("pod-{i}"))
            )
        };
        let mut links: Vec<String> = vec!["lo".into(), "eth0".into()];
        links.extend((0..700).map(veth));
        let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let cooling = |c: &Core<FakeCloud, FakeHost>, a: Ipv4Addr| {
            c.with_ds(|ds| ds.addr_state(a, SystemTime::now()))
        };

        let (c, detaching) = restarted(dir.path(), &enis, links.clone()).await;
        assert_eq!(detaching, ["eni-gone"]);
        assert_eq!(c.with_ds(|ds| ds.stats(SystemTime::now()).assigned()), 705);
        for i in (0..700).chain(730..735) {
            assert_eq!(c.lookup(&key(&format!("c{i}"))).unwrap().addr, addrs[i]);
        }
        for (i, addr) in addrs.iter().enumerate().take(730).skip(700) {
            assert!(c.lookup(&key(&format!("c{i}"))).is_none(), "c{i}");
            assert_eq!(cooling(&c, *addr), Some(AddrState::Cooling), "c{i}");
        }
        assert_eq!(cooling(&c, addrs[740]), Some(AddrState::Cooling));
        assert_eq!(cooling(&c, addrs[741]), Some(AddrState::Free));
        // Both files rewritten: the pruned pods are gone from the checkpoint, the sidecar holds
        // their cooldowns and the still-cooling spare, not the expired one.
        let cp = checkpoint::load(&cp_path).unwrap().unwrap();
        assert_eq!(cp, c.with_ds(|ds| ds.checkpoint()));
        assert_eq!(cp.allocations.len(), 705);
        let st = checkpoint::load_state(&st_path).unwrap().unwrap();
        assert_eq!(st.cooldown.len(), 31);
        assert!(!st.cooldown.iter().any(|e| e.ipv4 == addrs[741].to_string()));
        assert_eq!(st.detaching_enis, ["eni-gone"]);
        let (cp_ino, st_ino) = (inode(&cp_path), inode(&st_path));
        drop(c);

        // Nothing changed on the host: same state, and neither file is rewritten.
        let (c, _) = restarted(dir.path(), &enis, links.clone()).await;
        assert_eq!(c.with_ds(|ds| ds.stats(SystemTime::now()).assigned()), 705);
        assert_eq!(cooling(&c, addrs[715]), Some(AddrState::Cooling));
        assert_eq!(cooling(&c, addrs[740]), Some(AddrState::Cooling));
        assert_eq!((inode(&cp_path), inode(&st_path)), (cp_ino, st_ino));
        drop(c);

        // One more pod gone: both files are rewritten without it / with its cooldown.
        links.retain(|l| *l != veth(0));
        let (c, _) = restarted(dir.path(), &enis, links).await;
        assert!(c.lookup(&key("c0")).is_none());
        assert_eq!(cooling(&c, addrs[0]), Some(AddrState::Cooling));
        assert_ne!(inode(&cp_path), cp_ino);
        assert_ne!(inode(&st_path), st_ino);
        let cp = checkpoint::load(&cp_path).unwrap().unwrap();
        assert_eq!(cp.allocations.len(), 704);
        assert!(!cp.allocations.iter().any(|a| a.container_id == "c0"));
        assert_eq!(
            checkpoint::load_state(&st_path)
                .unwrap()
                .unwrap()
                .cooldown
                .len(),
            32
        );
    }

    #[test]
    fn proc_net_dev_parsing() {
        let text = "Inter-|   Receive                            |  Transmit\n \
                    face |bytes    packets errs drop fifo frame|bytes    packets\n    \
                    lo: 224406152  196287    0    0    0     0 224406152  196287\n  \
                    eth0:1234 5 0 0 0 0 6 7\n\
                    eni0761ccbeace:       0       0    0    0    0     0        0       0\n\n";
        assert_eq!(proc_net_dev_names(text), ["lo", "eth0", "eni0761ccbeace"]);
        assert!(proc_net_dev_names("").is_empty());
    }

    /// Against the kernel: in a namespace of our own (entered by one thread only, while the
    /// process stays in its namespace) the names from `/proc/thread-self/net/dev` are exactly
    /// netlink's, pod-style veths included.
    #[test]
    fn host_link_names_match_netlink_in_a_namespace() {
        const PREFIX: &str = "ipdr-";
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        // Namespaces left by killed runs of this test (their pid is gone).
        for line in ip(&["netns", "list"]).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if let Some(pid) = name.strip_prefix(PREFIX)
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", name])
                    .status();
            }
        }
        struct Ns(String);
        impl Drop for Ns {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &self.0])
                    .status();
            }
        }
        let ns = Ns(format!("{PREFIX}{}", std::process::id()));
        ip(&["netns", "add", &ns.0]);
        let mut want = vec!["lo".to_owned()];
        for i in 0..40 {
            let host = format!("eni{}", checkpoint::veth_hash("default", &format!("p{i}")));
            let peer = format!("ipdrpeer{i}");
            ip(&[
                "-n", &ns.0, "link", "add", &host, "type", "veth", "peer", "name", &peer,
            ]);
            want.extend([host, peer]);
        }
        want.sort();
        let h = aws_cni::netns::NetNs::open(format!("/run/netns/{}", ns.0)).unwrap();
        let (from_proc, from_netlink) = h
            .run_in(|| {
                let mut p = host_link_names().unwrap();
                let mut n: Vec<String> = nl()
                    .unwrap()
                    .links()
                    .unwrap()
                    .into_iter()
                    .map(|l| l.name)
                    .collect();
                p.sort();
                n.sort();
                (p, n)
            })
            .unwrap();
        assert_eq!(from_proc, from_netlink);
        assert_eq!(from_proc, want);
    }

    #[tokio::test]
    async fn idle_enis_are_detached_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = FakeCloud::with_primary(9);
        for _ in 0..2 {
            cloud.create_eni(AddressRequest::Ips(9)).await.unwrap();
        }
        let cfg = cfg(dir.path(), &[("IP_COOLDOWN_PERIOD", "0")]);
        // ENIs that entered the datastore two minutes ago (past the 60 s minimum life).
        let mut ds = Datastore::new(false, cfg.ip_cooldown);
        let old = SystemTime::now() - Duration::from_secs(120);
        for m in cloud.interfaces().await.unwrap() {
            ds.add_eni(eni_info_from_imds(&m, false).unwrap(), old);
            for c in imds_cidrs(&m) {
                ds.add_cidr(&m.eni_id, c).unwrap();
            }
        }
        let node = NodeInfo::default();
        let c = Arc::new(Core::new(
            cfg,
            node,
            M5_LARGE,
            ds,
            cloud,
            FakeHost::default(),
        ));
        restore(&c, RESTORE_GRACE).await.unwrap();
        // One pod (packed onto the primary): A = 26 ≥ 2 × 9 frees the highest ENI, then
        // A = 17 < 18 keeps the other one.
        let pod = {
            let mut ds = lock(&c.ds);
            let s = ds.stats(SystemTime::now());
            assert_eq!(s.enis.len(), 3);
            ds.assign(&key("busy"), meta("busy"), SystemTime::now())
                .unwrap()
        };
        c.pool_pass().await;
        let left: Vec<EniId> = c.with_ds(|ds| ds.enis().map(|e| e.id.clone()).collect());
        assert_eq!(pod.eni, "eni-0");
        assert_eq!(left, ["eni-0", "eni-1"]);
        assert_eq!(c.cloud().count("free"), 1);
        assert_eq!(
            c.host()
                .calls
                .lock()
                .unwrap()
                .iter()
                .filter(|x| x.starts_with("teardown"))
                .count(),
            1
        );
        // Pod gone: A = 18 frees the second one too; nothing stays marked as detaching.
        c.del(&key("busy")).unwrap();
        c.pool_pass().await;
        assert_eq!(c.with_ds(|ds| ds.enis().count()), 1);
        assert_eq!(c.cloud().count("free"), 2);
        assert_eq!(c.cloud().enis.lock().unwrap().len(), 1);
        let st = checkpoint::load_state(&c.state_path()).unwrap().unwrap();
        assert!(st.detaching_enis.is_empty());
    }

    #[tokio::test]
    async fn detach_interrupted_by_a_crash_is_finished_on_start() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = FakeCloud::with_primary(9);
        cloud.create_eni(AddressRequest::Ips(9)).await.unwrap();
        // The previous run recorded "detaching eni-1" and died.
        let state = checkpoint::State {
            detaching_enis: vec!["eni-1".into()],
            ..Default::default()
        };
        checkpoint::save_state(&dir.path().join("ipam.json.awscni-state"), &state).unwrap();
        let c = core(dir.path(), &[], cloud).await;
        assert!(c.with_ds(|ds| ds.eni("eni-1").is_some()));
        let detaching = checkpoint::load_state(&c.state_path())
            .unwrap()
            .unwrap()
            .detaching_enis;
        assert_eq!(detaching, ["eni-1"]);
        c.finish_detaching(detaching).await;
        assert!(c.with_ds(|ds| ds.eni("eni-1").is_none()));
        assert_eq!(c.cloud().count("free eni-1"), 1);
        assert!(
            checkpoint::load_state(&c.state_path())
                .unwrap()
                .unwrap()
                .detaching_enis
                .is_empty()
        );
        // Reconcile does not adopt it back while IMDS may still list it.
        assert!(c.reconcile().await.is_empty());
        assert!(c.with_ds(|ds| ds.eni("eni-1").is_none()));
    }

    #[test]
    fn max_pods_from_own_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let it = awscni_limits::lookup("m5.large").unwrap();
        for (vars, unmanaged, want) in [
            (vec![], 0, 29),
            (vec![("MAX_ENI", "2")], 0, 20),
            (vec![], 1, 20),
            (vec![("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true")], 0, 20),
            (
                vec![
                    ("ENABLE_PREFIX_DELEGATION", "true"),
                    ("WARM_PREFIX_TARGET", "1"),
                ],
                0,
                3 * 9 * 16 + 2,
            ),
        ] {
            let c = cfg(dir.path(), &vars);
            let (limits, mp) = limits_for(it, &c, unmanaged);
            assert_eq!(mp.max_pods, want, "{vars:?} unmanaged={unmanaged}");
            assert_eq!(limits.max_pods, want);
            assert_eq!((limits.ipv4_per_eni, limits.max_enis), (10, 3));
        }
        let p = dir.path().join("sub").join("max-pods");
        write_max_pods(&p, 29).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "29\n");
    }

    #[tokio::test]
    async fn cancelled_add_does_not_leak_pending() {
        let dir = tempfile::tempdir().unwrap();
        let c = core(
            dir.path(),
            &[("DISABLE_NETWORK_RESOURCE_PROVISIONING", "true")],
            FakeCloud::with_primary(0),
        )
        .await;
        let c2 = c.clone();
        let h = tokio::spawn(async move { c2.add(&key("x"), &meta("x")).await });
        while c.pending() == 0 {
            tokio::task::yield_now().await;
        }
        // The client gave up (RPC deadline): tonic drops the handler future.
        h.abort();
        let _ = h.await;
        assert_eq!(c.pending(), 0);
    }

    #[tokio::test]
    async fn young_allocations_survive_restart_without_veth() {
        let dir = tempfile::tempdir().unwrap();
        let c = core(dir.path(), &[], FakeCloud::with_primary(9)).await;
        let AddOutcome::Assigned(a) = c.add(&key("c0"), &meta("wiring")).await.unwrap() else {
            panic!()
        };
        let enis = c.cloud().enis.lock().unwrap().clone();
        let cloud2 = FakeCloud {
            enis: Mutex::new(enis),
            ..Default::default()
        };
        let cfg = cfg(dir.path(), &[]);
        let imds = cloud2.interfaces().await.unwrap();
        let ds = build_datastore(&cfg, &imds, None, &BTreeSet::new());
        let c2 = Core::new(
            cfg,
            c.node.clone(),
            M5_LARGE,
            ds,
            cloud2,
            FakeHost::default(),
        );
        restore(&c2, RESTORE_GRACE).await.unwrap();
        assert_eq!(c2.lookup(&key("c0")).unwrap().addr, a.addr);
    }

    #[tokio::test]
    async fn prefix_mode_falls_back_to_ips() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = FakeCloud::with_primary(0);
        cloud.fail_prefix.store(true, Ordering::SeqCst);
        let c = core(
            dir.path(),
            &[
                ("ENABLE_PREFIX_DELEGATION", "true"),
                ("WARM_PREFIX_TARGET", "1"),
            ],
            cloud,
        )
        .await;
        c.pool_pass().await;
        let s = c.with_ds(|ds| ds.stats(SystemTime::now()));
        assert!(s.total() >= 9, "{s:?}");
        assert!(c.counters.prefix_fallbacks.load(Ordering::Relaxed) >= 1);
        assert!(matches!(
            c.add(&key("c"), &meta("p")).await.unwrap(),
            AddOutcome::Assigned(_)
        ));
    }

    #[tokio::test]
    async fn reconcile_adds_removes_and_repairs() {
        let dir = tempfile::tempdir().unwrap();
        let c = core(dir.path(), &[], FakeCloud::with_primary(3)).await;
        let AddOutcome::Assigned(a) = c.add(&key("c1"), &meta("p")).await.unwrap() else {
            panic!()
        };
        // Someone removes the pod's address and adds another one, behind our back.
        let extra = Ipv4Addr::new(10, 0, 9, 9);
        {
            let mut enis = c.cloud().enis.lock().unwrap();
            enis[0].secondary_ips.retain(|ip| *ip != a.addr);
            enis[0].secondary_ips.push(extra);
        }
        c.host().pod_rules.lock().unwrap().clear();
        let forced = c.reconcile().await;
        assert_eq!(forced.len(), 1);
        assert_eq!(forced[0].addr, a.addr);
        assert!(c.lookup(&key("c1")).is_none());
        assert!(
            c.with_ds(|ds| ds.eni_cidrs("eni-0"))
                .contains(&Ipv4Net::from(extra))
        );
        assert_eq!(c.counters.force_removed.load(Ordering::Relaxed), 1);
        // Steady state: nothing to do, no EC2 calls.
        let before = c.cloud().calls.lock().unwrap().len();
        let AddOutcome::Assigned(b) = c.add(&key("c2"), &meta("p")).await.unwrap() else {
            panic!()
        };
        c.host().pod_rules.lock().unwrap().clear();
        assert!(c.reconcile().await.is_empty());
        assert_eq!(c.cloud().calls.lock().unwrap().len(), before);
        assert!(
            c.host()
                .pod_rules
                .lock()
                .unwrap()
                .iter()
                .any(|r| r.ip == b.addr)
        );
    }

    #[tokio::test]
    async fn shrink_releases_enis_after_min_age() {
        let dir = tempfile::tempdir().unwrap();
        let c = core(
            dir.path(),
            &[("IP_COOLDOWN_PERIOD", "0")],
            FakeCloud::with_primary(9),
        )
        .await;
        for i in 0..12 {
            assert!(matches!(
                c.add(&key(&format!("c{i}")), &meta("p")).await.unwrap(),
                AddOutcome::Assigned(_)
            ));
            c.pool_pass().await;
        }
        assert_eq!(c.with_ds(|ds| ds.stats(SystemTime::now()).enis.len()), 3);
        for i in 0..12 {
            c.del(&key(&format!("c{i}"))).unwrap();
        }
        // Too young (< 60 s): nothing is freed.
        c.pool_pass().await;
        assert_eq!(c.cloud().count("free"), 0);
        assert_eq!(c.with_ds(|ds| ds.stats(SystemTime::now()).enis.len()), 3);
    }
}
