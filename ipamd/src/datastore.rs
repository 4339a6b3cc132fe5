//! The address datastore: ENIs, their secondary IPs or /28 prefixes, and pod assignments.
//!
//! Pure and synchronous: every time-dependent operation takes `now`, and nothing here does I/O.
//! The daemon wraps it in a mutex, persists [`Datastore::checkpoint`] and
//! [`Datastore::state`] after every change, and rolls the change back when persisting fails.
//!
//! Differences from upstream (ipam.md §13), on purpose:
//! * Deterministic choice: the ENI with the fewest free addresses that still has one (then the
//!   lowest device number), inside it the CIDR with the fewest free addresses (then the lowest
//!   network), inside it the lowest free address. Pods pack onto few ENIs, idle ENIs drain and
//!   become deletable, and a /28 is only started when the partly used ones are full.
//! * Cooling addresses (released less than `IP_COOLDOWN_PERIOD` ago) are a separate bucket: not
//!   handed out, not counted as free, and a CIDR or ENI holding one is never released.
//! * Release times survive a restart through the sidecar state file (see `checkpoint`).
//! * In prefix-delegation mode, `/32` secondary IPs are usable too: they are what the pool falls
//!   back to when the subnet has no free aligned /28. In secondary-IP mode, prefixes left over
//!   from an earlier PD configuration are neither counted nor used (as upstream).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;

use crate::checkpoint::{self, AllocMetadata, Allocation, Checkpoint, CooldownEntry, State};

/// Upstream's placeholder network name for keys migrated from pre-1.12 checkpoints.
pub const LEGACY_NETWORK_NAME: &str = "_migrated-from-cri";
/// Upstream's placeholder interface name for keys migrated from pre-1.12 checkpoints.
pub const LEGACY_IF_NAME: &str = "unknown";
/// Route table of the primary ENI (device 0): the main table.
pub const MAIN_ROUTE_TABLE: u32 = 254;

/// ENI identifier (`eni-…`).
pub type EniId = String;

/// The IPAM key: CNI attachment identity plus network name (wire-contract.md §5).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpamKey {
    /// Netconf `name` (`aws-cni`).
    pub network_name: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub if_name: String,
}

impl IpamKey {
    /// Builds a key.
    pub fn new(network_name: &str, container_id: &str, if_name: &str) -> Self {
        Self {
            network_name: network_name.to_owned(),
            container_id: container_id.to_owned(),
            if_name: if_name.to_owned(),
        }
    }

    /// The key upstream's pre-1.12 checkpoint migration wrote for this container; DEL falls back
    /// to it so that very old allocations still release.
    pub fn legacy(container_id: &str) -> Self {
        Self::new(LEGACY_NETWORK_NAME, container_id, LEGACY_IF_NAME)
    }

    /// All three parts non-empty (ADD with an empty part is answered `Success=false`).
    pub fn is_valid(&self) -> bool {
        !self.network_name.is_empty() && !self.container_id.is_empty() && !self.if_name.is_empty()
    }
}

impl std::fmt::Display for IpamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.network_name, self.container_id, self.if_name
        )
    }
}

/// Pod metadata stored with an assignment (not part of the key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_NAME`.
    pub name: String,
    /// Interfaces of the pod (1 for ordinary pods).
    pub interfaces_count: u32,
}

/// What a CIDR is on EC2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CidrKind {
    /// A secondary private IP (`/32`).
    SecondaryIp,
    /// A delegated `/28` prefix.
    Prefix,
}

/// Static facts about an ENI, from IMDS/EC2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniInfo {
    /// ENI ID.
    pub id: EniId,
    /// MAC address (how the host link is found).
    pub mac: String,
    /// Device index on network card 0.
    pub device_number: u32,
    /// The instance's primary ENI (device 0): never detached.
    pub is_primary: bool,
    /// Not used for pods (custom networking makes the primary ENI excluded).
    pub excluded: bool,
    /// Trunk ENI (security groups for pods, later): never used for pods or deleted.
    pub trunk: bool,
    /// EFA ENI: never deleted.
    pub efa: bool,
    /// The ENI's subnet.
    pub subnet: Ipv4Net,
    /// `subnet-…` (introspection's `SubnetID`); empty where no source said.
    pub subnet_id: String,
    /// The ENI's own primary private IP (never given to pods).
    pub primary_ip: Ipv4Addr,
}

impl EniInfo {
    /// Host route table for this ENI's pods: main for device 0, else device + 1 (datapath.md §5).
    pub fn route_table(&self) -> u32 {
        if self.device_number == 0 {
            MAIN_ROUTE_TABLE
        } else {
            self.device_number + 1
        }
    }
}

/// One address record. An address with no record is free.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// Set ⇔ assigned.
    key: Option<IpamKey>,
    meta: PodMeta,
    assigned_at: SystemTime,
    /// Set when released: starts the cooldown.
    released_at: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Cidr {
    kind: CidrKind,
    entries: Entries,
}

/// The records of one CIDR: a sorted vector, not a `BTreeMap`. A CIDR holds at most 16
/// addresses (a /28) and in secondary-IP mode exactly one (a /32), and a `BTreeMap` allocates a
/// whole 11-slot node for its first entry — measured (heaptrack, 735 pods) at ~1.3 MiB, most of
/// the datastore's heap. Exact-capacity growth keeps a /32's vector at one slot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Entries(Vec<(Ipv4Addr, Entry)>);

impl Entries {
    fn new() -> Self {
        Self(Vec::new())
    }

    fn find(&self, addr: &Ipv4Addr) -> Result<usize, usize> {
        self.0.binary_search_by(|(a, _)| a.cmp(addr))
    }

    fn get(&self, addr: &Ipv4Addr) -> Option<&Entry> {
        self.find(addr).ok().map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, addr: &Ipv4Addr) -> Option<&mut Entry> {
        self.find(addr).ok().map(|i| &mut self.0[i].1)
    }

    fn contains_key(&self, addr: &Ipv4Addr) -> bool {
        self.find(addr).is_ok()
    }

    /// Inserts or replaces; returns the replaced record.
    fn insert(&mut self, addr: Ipv4Addr, e: Entry) -> Option<Entry> {
        match self.find(&addr) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, e)),
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (addr, e));
                None
            }
        }
    }

    fn remove(&mut self, addr: &Ipv4Addr) -> Option<Entry> {
        self.find(addr).ok().map(|i| self.0.remove(i).1)
    }

    fn retain(&mut self, mut keep: impl FnMut(&Ipv4Addr, &mut Entry) -> bool) {
        self.0.retain_mut(|(a, e)| keep(a, e));
    }

    fn values(&self) -> impl Iterator<Item = &Entry> {
        self.0.iter().map(|(_, e)| e)
    }
}

impl<'a> IntoIterator for &'a Entries {
    type Item = (&'a Ipv4Addr, &'a Entry);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Ipv4Addr, Entry)>,
        fn(&'a (Ipv4Addr, Entry)) -> (&'a Ipv4Addr, &'a Entry),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(a, e)| (a, e))
    }
}

impl IntoIterator for Entries {
    type Item = (Ipv4Addr, Entry);
    type IntoIter = std::vec::IntoIter<(Ipv4Addr, Entry)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Eni {
    info: EniInfo,
    added_at: SystemTime,
    cidrs: BTreeMap<Ipv4Net, Cidr>,
}

/// State of one address at a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrState {
    /// Can be handed out.
    Free,
    /// Released less than the cooldown period ago.
    Cooling,
    /// Held by a pod.
    Assigned,
}

/// A successful assignment (or the address an existing key already holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The pod address.
    pub addr: Ipv4Addr,
    /// The ENI owning it.
    pub eni: EniId,
    /// That ENI's device number.
    pub device_number: u32,
    /// That ENI's host route table.
    pub route_table: u32,
    /// The key holding it (for a legacy-key release, the legacy key).
    pub key: IpamKey,
    /// Pod metadata.
    pub meta: PodMeta,
    /// True when ADD found the key already assigned (idempotent repeat).
    pub existing: bool,
}

/// Undo information for a release whose persistence failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// What was released.
    pub assignment: Assignment,
    previous: Entry,
    net: Ipv4Net,
}

/// A pod whose address vanished underneath it (forced removal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedRelease {
    /// Key of the pod.
    pub key: IpamKey,
    /// Its metadata.
    pub meta: PodMeta,
    /// The address it lost.
    pub addr: Ipv4Addr,
}

/// Datastore errors. Messages name the offending object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsError {
    /// No free address anywhere (upstream: ADD `Success=false`).
    #[error("no available IP address in the datastore")]
    NoAvailableAddress,
    /// DEL for a key (and legacy key) we do not hold. The text is part of the wire contract
    /// (wire-contract.md §7): upstream plugins match on it.
    #[error("datastore: unknown pod")]
    UnknownPod,
    /// A key part is empty.
    #[error(
        "invalid IPAM key {0:?}: network name, container ID and interface name must be non-empty"
    )]
    InvalidKey(IpamKey),
    /// ENI not in the datastore.
    #[error("unknown ENI {0}")]
    UnknownEni(EniId),
    /// CIDR not on that ENI.
    #[error("CIDR {cidr} is not on ENI {eni}")]
    UnknownCidr {
        /// ENI.
        eni: EniId,
        /// CIDR.
        cidr: Ipv4Net,
    },
    /// The CIDR is already on another ENI.
    #[error("CIDR {cidr} is already on ENI {other}, cannot add it to {eni}")]
    CidrConflict {
        /// ENI we tried to add it to.
        eni: EniId,
        /// ENI that holds it.
        other: EniId,
        /// CIDR.
        cidr: Ipv4Net,
    },
    /// A CIDR length other than /32 (secondary IP) or /28 (prefix).
    #[error("CIDR {0} is neither a /32 secondary IP nor a /28 prefix")]
    BadCidr(Ipv4Net),
    /// Non-forced removal of something holding assigned or cooling addresses.
    #[error("{what} still has {assigned} assigned and {cooling} cooling addresses")]
    InUse {
        /// ENI or CIDR.
        what: String,
        /// Assigned count.
        assigned: usize,
        /// Cooling count.
        cooling: usize,
    },
    /// Restore found one address twice.
    #[error("checkpoint assigns {addr} twice ({first} and {second})")]
    DuplicateAllocation {
        /// Address.
        addr: Ipv4Addr,
        /// First key.
        first: String,
        /// Second key.
        second: String,
    },
}

/// Per-CIDR counters at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrStats {
    /// Network.
    pub net: Ipv4Net,
    /// Secondary IP or prefix.
    pub kind: CidrKind,
    /// Usable in the current mode (counted in `T`).
    pub usable: bool,
    /// Addresses in it (1 or 16).
    pub size: usize,
    /// Assigned addresses.
    pub assigned: usize,
    /// Cooling addresses.
    pub cooling: usize,
}

impl CidrStats {
    /// Free addresses.
    pub fn free(&self) -> usize {
        self.size - self.assigned - self.cooling
    }
    /// No assigned and no cooling address: can be returned to EC2.
    pub fn is_empty(&self) -> bool {
        self.assigned == 0 && self.cooling == 0
    }
}

/// Per-ENI snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniStats {
    /// ENI ID.
    pub id: EniId,
    /// Device number.
    pub device_number: u32,
    /// Primary ENI.
    pub is_primary: bool,
    /// Excluded from pod use.
    pub excluded: bool,
    /// Trunk ENI.
    pub trunk: bool,
    /// EFA ENI.
    pub efa: bool,
    /// Time since it entered the datastore.
    pub age: Duration,
    /// Its CIDRs (all kinds), ascending.
    pub cidrs: Vec<CidrStats>,
}

impl EniStats {
    fn usable(&self) -> impl Iterator<Item = &CidrStats> {
        self.cidrs.iter().filter(|c| c.usable)
    }
    /// Usable addresses.
    pub fn total(&self) -> usize {
        self.usable().map(|c| c.size).sum()
    }
    /// Assigned addresses (in usable CIDRs).
    pub fn assigned(&self) -> usize {
        self.usable().map(|c| c.assigned).sum()
    }
    /// Cooling addresses (in usable CIDRs).
    pub fn cooling(&self) -> usize {
        self.usable().map(|c| c.cooling).sum()
    }
    /// Assigned or cooling addresses in any CIDR, usable or not.
    pub fn busy_anywhere(&self) -> usize {
        self.cidrs.iter().map(|c| c.assigned + c.cooling).sum()
    }
    /// Free addresses (never includes cooling ones).
    pub fn free(&self) -> usize {
        self.usable().map(CidrStats::free).sum()
    }
    /// Usable prefixes.
    pub fn prefixes(&self) -> usize {
        self.usable().filter(|c| c.kind == CidrKind::Prefix).count()
    }
    /// Usable prefixes with no assigned and no cooling address.
    pub fn free_prefixes(&self) -> usize {
        self.usable()
            .filter(|c| c.kind == CidrKind::Prefix && c.is_empty())
            .count()
    }
    /// EC2 address slots in use: every secondary IP and every prefix counts one against the
    /// per-ENI IPv4 limit, whatever the mode.
    pub fn slots_used(&self) -> usize {
        self.cidrs.len()
    }
}

/// Whole-datastore snapshot: what the pool math works on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Prefix-delegation mode.
    pub prefix_mode: bool,
    /// ENIs by ascending device number.
    pub enis: Vec<EniStats>,
}

impl PoolStats {
    fn pod_enis(&self) -> impl Iterator<Item = &EniStats> {
        self.enis.iter().filter(|e| !e.excluded)
    }
    /// `T`: usable addresses on non-excluded ENIs.
    pub fn total(&self) -> usize {
        self.pod_enis().map(EniStats::total).sum()
    }
    /// `U`: assigned addresses.
    pub fn assigned(&self) -> usize {
        self.pod_enis().map(EniStats::assigned).sum()
    }
    /// Cooling addresses.
    pub fn cooling(&self) -> usize {
        self.pod_enis().map(EniStats::cooling).sum()
    }
    /// `A` (ours): free addresses, cooling ones excluded.
    pub fn free(&self) -> usize {
        self.pod_enis().map(EniStats::free).sum()
    }
    /// `TP`: usable prefixes.
    pub fn prefixes(&self) -> usize {
        self.pod_enis().map(EniStats::prefixes).sum()
    }
    /// `F`: prefixes with no assigned and no cooling address.
    pub fn free_prefixes(&self) -> usize {
        self.pod_enis().map(EniStats::free_prefixes).sum()
    }
}

/// Result of [`Datastore::restore`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Number of allocations placed back.
    pub restored: usize,
    /// Dropped because the pod's host veth is gone (their rules should be removed).
    pub dropped_pod_gone: Vec<Allocation>,
    /// Dropped because the address is on no known ENI ("presumed stale", as upstream).
    pub dropped_unknown_addr: Vec<Allocation>,
    /// Cooldown entries honoured.
    pub cooling: usize,
}

/// The datastore of network card 0.
#[derive(Debug, Clone)]
pub struct Datastore {
    prefix_mode: bool,
    cooldown: Duration,
    enis: BTreeMap<EniId, Eni>,
    by_key: HashMap<IpamKey, Ipv4Addr>,
}

fn cidr_kind(net: &Ipv4Net) -> Result<CidrKind, DsError> {
    match net.prefix_len() {
        32 => Ok(CidrKind::SecondaryIp),
        28 => Ok(CidrKind::Prefix),
        _ => Err(DsError::BadCidr(*net)),
    }
}

fn cidr_size(net: &Ipv4Net) -> usize {
    1usize << (32 - u32::from(net.prefix_len()))
}

/// Unix nanoseconds (the checkpoint's time unit); times before 1970 clamp to 0.
pub fn to_unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Inverse of [`to_unix_nanos`]; negative values clamp to the epoch.
pub fn from_unix_nanos(n: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(n).unwrap_or(0))
}

impl Datastore {
    /// An empty datastore.
    pub fn new(prefix_mode: bool, cooldown: Duration) -> Self {
        Self {
            prefix_mode,
            cooldown,
            enis: BTreeMap::new(),
            by_key: HashMap::new(),
        }
    }

    /// Prefix-delegation mode.
    pub fn prefix_mode(&self) -> bool {
        self.prefix_mode
    }

    /// The cooldown period.
    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }

    fn usable(&self, kind: CidrKind) -> bool {
        self.prefix_mode || kind == CidrKind::SecondaryIp
    }

    fn entry_state(&self, e: &Entry, now: SystemTime) -> AddrState {
        if e.key.is_some() {
            return AddrState::Assigned;
        }
        match e.released_at {
            // A release time in the future (clock stepped back) counts as cooling; restore
            // clamps persisted times to "now", so this lasts at most one cooldown period.
            Some(t) => match now.duration_since(t) {
                Ok(age) if age >= self.cooldown => AddrState::Free,
                _ => AddrState::Cooling,
            },
            None => AddrState::Free,
        }
    }

    /// Adds an ENI, or refreshes its facts if already known (its CIDRs and age are kept).
    pub fn add_eni(&mut self, info: EniInfo, now: SystemTime) {
        match self.enis.get_mut(&info.id) {
            Some(e) => e.info = info,
            None => {
                self.enis.insert(
                    info.id.clone(),
                    Eni {
                        info,
                        added_at: now,
                        cidrs: BTreeMap::new(),
                    },
                );
            }
        }
    }

    /// Facts about an ENI.
    pub fn eni(&self, id: &str) -> Option<&EniInfo> {
        self.enis.get(id).map(|e| &e.info)
    }

    /// All ENIs, ascending by ID.
    pub fn enis(&self) -> impl Iterator<Item = &EniInfo> {
        self.enis.values().map(|e| &e.info)
    }

    /// The CIDRs currently on an ENI.
    pub fn eni_cidrs(&self, id: &str) -> Vec<Ipv4Net> {
        self.enis
            .get(id)
            .map(|e| e.cidrs.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Adds a secondary IP (`/32`) or prefix (`/28`) to an ENI. Idempotent.
    pub fn add_cidr(&mut self, eni: &str, net: Ipv4Net) -> Result<(), DsError> {
        let net = net.trunc();
        let kind = cidr_kind(&net)?;
        if let Some(other) = self
            .enis
            .values()
            .find(|e| e.info.id != eni && e.cidrs.contains_key(&net))
        {
            return Err(DsError::CidrConflict {
                eni: eni.to_owned(),
                other: other.info.id.clone(),
                cidr: net,
            });
        }
        let e = self
            .enis
            .get_mut(eni)
            .ok_or_else(|| DsError::UnknownEni(eni.to_owned()))?;
        e.cidrs.entry(net).or_insert(Cidr {
            kind,
            entries: Entries::new(),
        });
        Ok(())
    }

    /// Removes a CIDR. Without `force` it refuses while any address in it is assigned or cooling
    /// (we never hand a cooling address back to EC2, unlike upstream §6.1). With `force`
    /// (reconcile found it gone from EC2) the pods holding it are unassigned and returned.
    pub fn remove_cidr(
        &mut self,
        eni: &str,
        net: Ipv4Net,
        force: bool,
        now: SystemTime,
    ) -> Result<Vec<ForcedRelease>, DsError> {
        let (assigned, cooling) = {
            let e = self
                .enis
                .get(eni)
                .ok_or_else(|| DsError::UnknownEni(eni.to_owned()))?;
            let c = e.cidrs.get(&net).ok_or_else(|| DsError::UnknownCidr {
                eni: eni.to_owned(),
                cidr: net,
            })?;
            self.count_states(c, now)
        };
        if !force && (assigned > 0 || cooling > 0) {
            return Err(DsError::InUse {
                what: format!("CIDR {net} on {eni}"),
                assigned,
                cooling,
            });
        }
        let removed = self
            .enis
            .get_mut(eni)
            .and_then(|e| e.cidrs.remove(&net))
            .ok_or_else(|| DsError::UnknownEni(eni.to_owned()))?;
        Ok(self.forget_entries(removed.entries))
    }

    /// Removes an ENI. Same `force` rule as [`Datastore::remove_cidr`], over all its CIDRs.
    pub fn remove_eni(
        &mut self,
        eni: &str,
        force: bool,
        now: SystemTime,
    ) -> Result<Vec<ForcedRelease>, DsError> {
        let e = self
            .enis
            .get(eni)
            .ok_or_else(|| DsError::UnknownEni(eni.to_owned()))?;
        let (mut assigned, mut cooling) = (0, 0);
        for c in e.cidrs.values() {
            let (a, k) = self.count_states(c, now);
            assigned += a;
            cooling += k;
        }
        if !force && (assigned > 0 || cooling > 0) {
            return Err(DsError::InUse {
                what: format!("ENI {eni}"),
                assigned,
                cooling,
            });
        }
        let Some(removed) = self.enis.remove(eni) else {
            return Err(DsError::UnknownEni(eni.to_owned()));
        };
        let mut out = Vec::new();
        for (_, c) in removed.cidrs {
            out.extend(self.forget_entries(c.entries));
        }
        Ok(out)
    }

    fn forget_entries(&mut self, entries: Entries) -> Vec<ForcedRelease> {
        let mut out = Vec::new();
        for (addr, en) in entries {
            if let Some(key) = en.key {
                self.by_key.remove(&key);
                out.push(ForcedRelease {
                    key,
                    meta: en.meta,
                    addr,
                });
            }
        }
        out
    }

    fn count_states(&self, c: &Cidr, now: SystemTime) -> (usize, usize) {
        let (mut assigned, mut cooling) = (0, 0);
        for e in c.entries.values() {
            match self.entry_state(e, now) {
                AddrState::Assigned => assigned += 1,
                AddrState::Cooling => cooling += 1,
                AddrState::Free => {}
            }
        }
        (assigned, cooling)
    }

    /// The ENI and CIDR holding `addr`. Every CIDR is a `/32` or an aligned `/28` (see
    /// [`cidr_kind`]), so only those two keys can contain it: two map lookups per ENI instead of
    /// a scan of every CIDR, which made restore and checkpoint writes quadratic in the pod count.
    /// The `/28` is tried first, as the ascending scan this replaces would find it first.
    fn locate(&self, addr: Ipv4Addr) -> Option<(&Eni, Ipv4Net)> {
        let candidates = [Ipv4Net::new(addr, 28).ok()?.trunc(), Ipv4Net::from(addr)];
        self.enis.values().find_map(|e| {
            candidates
                .into_iter()
                .find(|n| e.cidrs.contains_key(n))
                .map(|n| (e, n))
        })
    }

    /// State of one address (None when it is on no known CIDR).
    pub fn addr_state(&self, addr: Ipv4Addr, now: SystemTime) -> Option<AddrState> {
        let (eni, net) = self.locate(addr)?;
        let c = eni.cidrs.get(&net)?;
        Some(
            c.entries
                .get(&addr)
                .map(|e| self.entry_state(e, now))
                .unwrap_or(AddrState::Free),
        )
    }

    fn assignment_of(&self, key: &IpamKey) -> Option<Assignment> {
        let addr = *self.by_key.get(key)?;
        let (eni, net) = self.locate(addr)?;
        let entry = eni.cidrs.get(&net)?.entries.get(&addr)?;
        Some(Assignment {
            addr,
            eni: eni.info.id.clone(),
            device_number: eni.info.device_number,
            route_table: eni.info.route_table(),
            key: key.clone(),
            meta: entry.meta.clone(),
            existing: true,
        })
    }

    /// The address a key holds.
    pub fn lookup(&self, key: &IpamKey) -> Option<Assignment> {
        self.assignment_of(key)
    }

    /// Picks the next address deterministically (see module docs), or None.
    fn choose(&self, now: SystemTime) -> Option<(EniId, Ipv4Net, Ipv4Addr)> {
        struct Cand {
            eni_free: usize,
            device: u32,
            cidr_free: usize,
            net: Ipv4Net,
            eni: EniId,
        }
        let mut best: Option<Cand> = None;
        for e in self.enis.values() {
            if e.info.excluded || e.info.trunk {
                continue;
            }
            let mut per_cidr = Vec::new();
            let mut eni_free = 0;
            for (net, c) in &e.cidrs {
                if !self.usable(c.kind) {
                    continue;
                }
                let (a, k) = self.count_states(c, now);
                let free = cidr_size(net) - a - k;
                eni_free += free;
                if free > 0 {
                    per_cidr.push((free, *net));
                }
            }
            for (cidr_free, net) in per_cidr {
                let cand = Cand {
                    eni_free,
                    device: e.info.device_number,
                    cidr_free,
                    net,
                    eni: e.info.id.clone(),
                };
                let better = match &best {
                    None => true,
                    Some(b) => {
                        (cand.eni_free, cand.device, cand.cidr_free, cand.net)
                            < (b.eni_free, b.device, b.cidr_free, b.net)
                    }
                };
                if better {
                    best = Some(cand);
                }
            }
        }
        let b = best?;
        let c = self.enis.get(&b.eni)?.cidrs.get(&b.net)?;
        // All 16 addresses of a /28 are usable: they are VPC addresses routed to the ENI, not a
        // subnet on the host.
        let first = u32::from(b.net.network());
        let last = u32::from(b.net.broadcast());
        let addr = (first..=last).map(Ipv4Addr::from).find(|a| {
            c.entries
                .get(a)
                .is_none_or(|e| self.entry_state(e, now) == AddrState::Free)
        })?;
        Some((b.eni, b.net, addr))
    }

    /// Assigns an address to `key`. Idempotent: a key that already holds an address gets the
    /// same one back with `existing = true`.
    pub fn assign(
        &mut self,
        key: &IpamKey,
        meta: PodMeta,
        now: SystemTime,
    ) -> Result<Assignment, DsError> {
        if !key.is_valid() {
            return Err(DsError::InvalidKey(key.clone()));
        }
        if let Some(a) = self.assignment_of(key) {
            return Ok(a);
        }
        let (eni_id, net, addr) = self.choose(now).ok_or(DsError::NoAvailableAddress)?;
        let eni = self
            .enis
            .get_mut(&eni_id)
            .ok_or_else(|| DsError::UnknownEni(eni_id.clone()))?;
        let cidr = eni
            .cidrs
            .get_mut(&net)
            .ok_or_else(|| DsError::UnknownCidr {
                eni: eni_id.clone(),
                cidr: net,
            })?;
        cidr.entries.insert(
            addr,
            Entry {
                key: Some(key.clone()),
                meta: meta.clone(),
                assigned_at: now,
                released_at: None,
            },
        );
        let info = eni.info.clone();
        self.by_key.insert(key.clone(), addr);
        Ok(Assignment {
            addr,
            eni: info.id.clone(),
            device_number: info.device_number,
            route_table: info.route_table(),
            key: key.clone(),
            meta,
            existing: false,
        })
    }

    /// Undoes a fresh [`Datastore::assign`] whose persistence failed: the address becomes free
    /// again without cooldown (no pod ever used it). A no-op for `existing` assignments.
    pub fn rollback_assign(&mut self, a: &Assignment) {
        if a.existing {
            return;
        }
        if self.by_key.get(&a.key) != Some(&a.addr) {
            return;
        }
        self.by_key.remove(&a.key);
        if let Some(e) = self.enis.get_mut(&a.eni)
            && let Some(c) = e
                .cidrs
                .values_mut()
                .find(|c| c.entries.contains_key(&a.addr))
        {
            c.entries.remove(&a.addr);
        }
    }

    /// Releases the address of `key`, falling back to the legacy key of the same container
    /// (wire-contract.md §5). Starts the address's cooldown.
    pub fn release(&mut self, key: &IpamKey, now: SystemTime) -> Result<Released, DsError> {
        let key = if self.by_key.contains_key(key) {
            key.clone()
        } else {
            let legacy = IpamKey::legacy(&key.container_id);
            if self.by_key.contains_key(&legacy) {
                legacy
            } else {
                return Err(DsError::UnknownPod);
            }
        };
        let mut assignment = self.assignment_of(&key).ok_or(DsError::UnknownPod)?;
        assignment.existing = false;
        let addr = assignment.addr;
        let eni = self
            .enis
            .get_mut(&assignment.eni)
            .ok_or(DsError::UnknownPod)?;
        let (net, cidr) = eni
            .cidrs
            .iter_mut()
            .find(|(n, _)| n.contains(&addr))
            .ok_or(DsError::UnknownPod)?;
        let net = *net;
        let entry = cidr.entries.get_mut(&addr).ok_or(DsError::UnknownPod)?;
        let previous = entry.clone();
        entry.key = None;
        entry.meta = PodMeta::default();
        entry.released_at = Some(now);
        self.by_key.remove(&key);
        Ok(Released {
            assignment,
            previous,
            net,
        })
    }

    /// Undoes a [`Datastore::release`] whose persistence failed.
    pub fn rollback_release(&mut self, r: &Released) {
        let a = &r.assignment;
        if let Some(e) = self.enis.get_mut(&a.eni)
            && let Some(c) = e.cidrs.get_mut(&r.net)
        {
            c.entries.insert(a.addr, r.previous.clone());
            self.by_key.insert(a.key.clone(), a.addr);
        }
    }

    /// Every current assignment, ascending by address.
    pub fn assignments(&self) -> Vec<Assignment> {
        let mut v: Vec<Assignment> = self
            .by_key
            .keys()
            .filter_map(|k| self.assignment_of(k))
            .collect();
        v.sort_by_key(|a| a.addr);
        v
    }

    /// Snapshot for the pool math and for metrics/introspection.
    pub fn stats(&self, now: SystemTime) -> PoolStats {
        let mut enis: Vec<EniStats> = self
            .enis
            .values()
            .map(|e| EniStats {
                id: e.info.id.clone(),
                device_number: e.info.device_number,
                is_primary: e.info.is_primary,
                excluded: e.info.excluded || e.info.trunk,
                trunk: e.info.trunk,
                efa: e.info.efa,
                age: now.duration_since(e.added_at).unwrap_or_default(),
                cidrs: e
                    .cidrs
                    .iter()
                    .map(|(net, c)| {
                        let (assigned, cooling) = self.count_states(c, now);
                        CidrStats {
                            net: *net,
                            kind: c.kind,
                            usable: self.usable(c.kind),
                            size: cidr_size(net),
                            assigned,
                            cooling,
                        }
                    })
                    .collect(),
            })
            .collect();
        enis.sort_by(|a, b| (a.device_number, &a.id).cmp(&(b.device_number, &b.id)));
        PoolStats {
            prefix_mode: self.prefix_mode,
            enis,
        }
    }

    /// Drops cooldown records that have expired (keeps the sidecar file small).
    pub fn prune_expired(&mut self, now: SystemTime) {
        let cooldown = self.cooldown;
        for e in self.enis.values_mut() {
            for c in e.cidrs.values_mut() {
                c.entries.retain(|_, en| {
                    en.key.is_some()
                        || en
                            .released_at
                            .is_some_and(|t| now.duration_since(t).map_or(true, |d| d < cooldown))
                });
            }
        }
    }

    /// The upstream-format checkpoint: assigned addresses only.
    ///
    /// Ascending by address. Written under the datastore lock after every assign and release, so
    /// it walks the entries once instead of looking each assignment up by key.
    pub fn checkpoint(&self) -> Checkpoint {
        let mut held: Vec<(Ipv4Addr, &IpamKey, &Entry)> = Vec::with_capacity(self.by_key.len());
        for e in self.enis.values() {
            for c in e.cidrs.values() {
                for (addr, en) in &c.entries {
                    // `by_key` is the source of truth for who holds what; an entry it does not
                    // point back to is not an assignment.
                    if let Some(key) = &en.key
                        && self.by_key.get(key) == Some(addr)
                    {
                        held.push((*addr, key, en));
                    }
                }
            }
        }
        held.sort_unstable_by_key(|(addr, _, _)| *addr);
        let allocations = held
            .into_iter()
            .map(|(addr, key, en)| Allocation {
                network_name: key.network_name.clone(),
                container_id: key.container_id.clone(),
                if_name: key.if_name.clone(),
                ipv4: addr.to_string(),
                ipv6: String::new(),
                allocation_timestamp: to_unix_nanos(en.assigned_at),
                metadata: AllocMetadata {
                    k8s_pod_namespace: en.meta.namespace.clone(),
                    k8s_pod_name: en.meta.name.clone(),
                    interfaces_count: en.meta.interfaces_count,
                },
            })
            .collect();
        Checkpoint {
            version: checkpoint::VERSION.to_owned(),
            allocations,
        }
    }

    /// Our sidecar state: release times of addresses still cooling.
    pub fn state(&self, now: SystemTime, detaching_enis: &[EniId]) -> State {
        let mut cooldown = Vec::new();
        for e in self.enis.values() {
            for c in e.cidrs.values() {
                for (addr, en) in &c.entries {
                    if self.entry_state(en, now) == AddrState::Cooling
                        && let Some(t) = en.released_at
                    {
                        cooldown.push(CooldownEntry {
                            ipv4: addr.to_string(),
                            released_at: to_unix_nanos(t),
                        });
                    }
                }
            }
        }
        cooldown.sort_by(|a, b| a.ipv4.cmp(&b.ipv4));
        State {
            version: checkpoint::STATE_VERSION.to_owned(),
            cooldown,
            detaching_enis: detaching_enis.to_vec(),
        }
    }

    /// Restores allocations (ipam.md §10.3) after the ENIs and their CIDRs were loaded from IMDS.
    ///
    /// `pod_alive(meta)` tells whether the pod of an allocation still has its host veth; it is
    /// only asked for allocations carrying namespace and name (older ones are kept, as upstream).
    /// Dropped allocations of gone pods start a cooldown now (their conntrack entries and
    /// endpoints may still point at the address). A duplicate address is a fatal error.
    pub fn restore(
        &mut self,
        cp: &Checkpoint,
        state: Option<&State>,
        pod_alive: &dyn Fn(&PodMeta) -> bool,
        now: SystemTime,
    ) -> Result<RestoreReport, DsError> {
        let mut report = RestoreReport::default();
        for alloc in &cp.allocations {
            let key = IpamKey::new(&alloc.network_name, &alloc.container_id, &alloc.if_name);
            let meta = PodMeta {
                namespace: alloc.metadata.k8s_pod_namespace.clone(),
                name: alloc.metadata.k8s_pod_name.clone(),
                interfaces_count: alloc.metadata.interfaces_count,
            };
            let Ok(addr) = alloc.ipv4.parse::<Ipv4Addr>() else {
                // IPv6-only or malformed allocation: nothing we can place.
                report.dropped_unknown_addr.push(alloc.clone());
                continue;
            };
            let Some((eni_id, net)) = self.locate(addr).map(|(e, n)| (e.info.id.clone(), n)) else {
                report.dropped_unknown_addr.push(alloc.clone());
                continue;
            };
            let has_meta = !meta.namespace.is_empty() && !meta.name.is_empty();
            let alive = !has_meta || pod_alive(&meta);
            let Some(cidr) = self
                .enis
                .get_mut(&eni_id)
                .and_then(|e| e.cidrs.get_mut(&net))
            else {
                report.dropped_unknown_addr.push(alloc.clone());
                continue;
            };
            if let Some(existing) = cidr.entries.get(&addr)
                && let Some(first) = &existing.key
            {
                return Err(DsError::DuplicateAllocation {
                    addr,
                    first: first.to_string(),
                    second: key.to_string(),
                });
            }
            if alive {
                if let Some(old) = self.by_key.get(&key).copied() {
                    // Same key twice with different addresses: keep the first, free the second.
                    tracing::warn!(%key, first = %old, second = %addr, "checkpoint holds a key twice");
                    report.dropped_unknown_addr.push(alloc.clone());
                    continue;
                }
                cidr.entries.insert(
                    addr,
                    Entry {
                        key: Some(key.clone()),
                        meta,
                        assigned_at: from_unix_nanos(alloc.allocation_timestamp),
                        released_at: None,
                    },
                );
                self.by_key.insert(key, addr);
                report.restored += 1;
            } else {
                cidr.entries.insert(
                    addr,
                    Entry {
                        key: None,
                        meta: PodMeta::default(),
                        assigned_at: from_unix_nanos(alloc.allocation_timestamp),
                        released_at: Some(now),
                    },
                );
                report.dropped_pod_gone.push(alloc.clone());
            }
        }
        if let Some(state) = state {
            for c in &state.cooldown {
                let Ok(addr) = c.ipv4.parse::<Ipv4Addr>() else {
                    continue;
                };
                let Some((eni_id, net)) = self.locate(addr).map(|(e, n)| (e.info.id.clone(), n))
                else {
                    continue;
                };
                // Clamp future times (clock stepped back) to now: at most one full period.
                let released = from_unix_nanos(c.released_at).min(now);
                if now.duration_since(released).unwrap_or_default() >= self.cooldown {
                    continue;
                }
                let Some(cidr) = self
                    .enis
                    .get_mut(&eni_id)
                    .and_then(|e| e.cidrs.get_mut(&net))
                else {
                    continue;
                };
                match cidr.entries.get_mut(&addr) {
                    // Assigned wins: the checkpoint was written after the sidecar.
                    Some(en) if en.key.is_some() => continue,
                    Some(en) => {
                        en.released_at = Some(en.released_at.map_or(released, |t| t.max(released)));
                    }
                    None => {
                        cidr.entries.insert(
                            addr,
                            Entry {
                                key: None,
                                meta: PodMeta::default(),
                                assigned_at: UNIX_EPOCH,
                                released_at: Some(released),
                            },
                        );
                    }
                }
                report.cooling += 1;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn eni(id: &str, dev: u32) -> EniInfo {
        EniInfo {
            id: id.to_owned(),
            mac: format!("02:00:00:00:00:{dev:02x}"),
            device_number: dev,
            is_primary: dev == 0,
            excluded: false,
            trunk: false,
            efa: false,
            subnet: "10.0.0.0/16".parse().unwrap(),
            subnet_id: "subnet-1".into(),
            primary_ip: Ipv4Addr::new(10, 0, dev as u8, 1),
        }
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

    #[test]
    fn cidr_entries_behave_like_a_sorted_map() {
        let rec = |c: &str| Entry {
            key: Some(key(c)),
            meta: meta(c),
            assigned_at: t(0),
            released_at: None,
        };
        let a = |last: u8| Ipv4Addr::new(10, 0, 0, last);
        let mut e = Entries::new();
        // A /32 holds one record: exactly one slot, no spare capacity.
        assert_eq!(e.insert(a(7), rec("x")), None);
        assert_eq!(e.0.capacity(), 1);
        for (last, c) in [(9, "c"), (1, "a"), (5, "b")] {
            assert_eq!(e.insert(a(last), rec(c)), None);
        }
        let order: Vec<Ipv4Addr> = (&e).into_iter().map(|(ip, _)| *ip).collect();
        assert_eq!(order, vec![a(1), a(5), a(7), a(9)]);
        // Replace returns the old record; lookups and removal by address.
        assert_eq!(e.insert(a(5), rec("b2")), Some(rec("b")));
        assert_eq!(e.get(&a(5)), Some(&rec("b2")));
        assert!(e.contains_key(&a(9)) && !e.contains_key(&a(2)));
        if let Some(r) = e.get_mut(&a(9)) {
            r.released_at = Some(t(5));
        }
        assert_eq!(e.remove(&a(1)), Some(rec("a")));
        assert_eq!(e.remove(&a(1)), None);
        e.retain(|_, r| r.released_at.is_none());
        let left: Vec<(Ipv4Addr, Option<IpamKey>)> =
            e.into_iter().map(|(ip, r)| (ip, r.key)).collect();
        assert_eq!(left, vec![(a(5), Some(key("b2"))), (a(7), Some(key("x")))]);
    }

    /// Two ENIs in SIP mode: eni-a (dev 0) with .0.10-.0.12, eni-b (dev 1) with .1.10-.1.11.
    fn sip() -> Datastore {
        let mut ds = Datastore::new(false, Duration::from_secs(30));
        ds.add_eni(eni("eni-a", 0), t(0));
        ds.add_eni(eni("eni-b", 1), t(0));
        for i in 10..13 {
            ds.add_cidr("eni-a", format!("10.0.0.{i}/32").parse().unwrap())
                .unwrap();
        }
        for i in 10..12 {
            ds.add_cidr("eni-b", format!("10.0.1.{i}/32").parse().unwrap())
                .unwrap();
        }
        ds
    }

    #[test]
    fn assign_is_idempotent() {
        let mut ds = sip();
        let a = ds.assign(&key("c1"), meta("p1"), t(1)).unwrap();
        assert!(!a.existing);
        let b = ds.assign(&key("c1"), meta("p1"), t(2)).unwrap();
        assert!(b.existing);
        assert_eq!(a.addr, b.addr);
        assert_eq!(a.eni, b.eni);
        assert_eq!(ds.stats(t(2)).assigned(), 1);
        // A different interface of the same container is a different key.
        let c = ds
            .assign(&IpamKey::new("aws-cni", "c1", "eth1"), meta("p1"), t(3))
            .unwrap();
        assert_ne!(c.addr, a.addr);
    }

    #[test]
    fn invalid_keys_rejected() {
        let mut ds = sip();
        for k in [
            IpamKey::new("", "c", "eth0"),
            IpamKey::new("n", "", "eth0"),
            IpamKey::new("n", "c", ""),
        ] {
            assert!(matches!(
                ds.assign(&k, meta("p"), t(1)),
                Err(DsError::InvalidKey(_))
            ));
        }
    }

    #[test]
    fn deterministic_packing_order() {
        // eni-b has fewer free addresses (2 < 3): it fills first, lowest address first; then
        // eni-a. The same sequence every time.
        let expect = [
            "10.0.1.10",
            "10.0.1.11",
            "10.0.0.10",
            "10.0.0.11",
            "10.0.0.12",
        ];
        for _ in 0..3 {
            let mut ds = sip();
            let got: Vec<String> = (0..5)
                .map(|i| {
                    ds.assign(&key(&format!("c{i}")), meta("p"), t(1))
                        .unwrap()
                        .addr
                        .to_string()
                })
                .collect();
            assert_eq!(got, expect);
            assert_eq!(
                ds.assign(&key("c9"), meta("p"), t(1)),
                Err(DsError::NoAvailableAddress)
            );
        }
    }

    #[test]
    fn ties_go_to_lowest_device_number() {
        let mut ds = Datastore::new(false, Duration::ZERO);
        ds.add_eni(eni("eni-z", 0), t(0));
        ds.add_eni(eni("eni-a", 2), t(0));
        ds.add_cidr("eni-z", "10.0.0.20/32".parse().unwrap())
            .unwrap();
        ds.add_cidr("eni-a", "10.0.2.20/32".parse().unwrap())
            .unwrap();
        let a = ds.assign(&key("c"), meta("p"), t(1)).unwrap();
        assert_eq!(a.eni, "eni-z");
        assert_eq!(a.route_table, MAIN_ROUTE_TABLE);
        let b = ds.assign(&key("d"), meta("p"), t(1)).unwrap();
        assert_eq!(
            (b.eni.as_str(), b.device_number, b.route_table),
            ("eni-a", 2, 3)
        );
    }

    #[test]
    fn prefix_mode_packs_partial_prefix_first_and_uses_all_16() {
        let mut ds = Datastore::new(true, Duration::ZERO);
        ds.add_eni(eni("eni-a", 0), t(0));
        ds.add_cidr("eni-a", "10.0.0.32/28".parse().unwrap())
            .unwrap();
        ds.add_cidr("eni-a", "10.0.0.16/28".parse().unwrap())
            .unwrap();
        let first = ds.assign(&key("c0"), meta("p"), t(1)).unwrap();
        assert_eq!(first.addr, Ipv4Addr::new(10, 0, 0, 16)); // network address is usable
        for i in 1..16 {
            let a = ds.assign(&key(&format!("c{i}")), meta("p"), t(1)).unwrap();
            assert!(
                "10.0.0.16/28".parse::<Ipv4Net>().unwrap().contains(&a.addr),
                "{a:?}"
            );
        }
        let s = ds.stats(t(1));
        assert_eq!(
            (
                s.total(),
                s.assigned(),
                s.free(),
                s.prefixes(),
                s.free_prefixes()
            ),
            (32, 16, 16, 2, 1)
        );
        assert_eq!(
            ds.assign(&key("x"), meta("p"), t(1)).unwrap().addr,
            Ipv4Addr::new(10, 0, 0, 32)
        );
    }

    #[test]
    fn mode_filters_cidr_kinds() {
        // SIP mode ignores leftover prefixes; PD mode uses both (the /32 fallback).
        for (pd, total) in [(false, 1), (true, 17)] {
            let mut ds = Datastore::new(pd, Duration::ZERO);
            ds.add_eni(eni("eni-a", 0), t(0));
            ds.add_cidr("eni-a", "10.0.0.5/32".parse().unwrap())
                .unwrap();
            ds.add_cidr("eni-a", "10.0.0.16/28".parse().unwrap())
                .unwrap();
            let s = ds.stats(t(0));
            assert_eq!(s.total(), total, "pd={pd}");
            assert_eq!(s.enis[0].slots_used(), 2);
        }
        let mut ds = Datastore::new(false, Duration::ZERO);
        ds.add_eni(eni("eni-a", 0), t(0));
        assert_eq!(
            ds.add_cidr("eni-a", "10.0.0.0/24".parse().unwrap()),
            Err(DsError::BadCidr("10.0.0.0/24".parse().unwrap()))
        );
    }

    #[test]
    fn cooldown_is_not_available_and_expires() {
        let mut ds = Datastore::new(false, Duration::from_secs(30));
        ds.add_eni(eni("eni-a", 0), t(0));
        ds.add_cidr("eni-a", "10.0.0.10/32".parse().unwrap())
            .unwrap();
        let a = ds.assign(&key("c1"), meta("p"), t(1)).unwrap();
        ds.release(&key("c1"), t(10)).unwrap();
        let s = ds.stats(t(11));
        assert_eq!(
            (s.total(), s.assigned(), s.cooling(), s.free()),
            (1, 0, 1, 0)
        );
        assert_eq!(ds.addr_state(a.addr, t(39)), Some(AddrState::Cooling));
        assert_eq!(
            ds.assign(&key("c2"), meta("p"), t(39)),
            Err(DsError::NoAvailableAddress)
        );
        // Cooling CIDR and ENI cannot be released without force.
        assert!(matches!(
            ds.remove_cidr("eni-a", "10.0.0.10/32".parse().unwrap(), false, t(39)),
            Err(DsError::InUse { cooling: 1, .. })
        ));
        assert!(matches!(
            ds.remove_eni("eni-a", false, t(39)),
            Err(DsError::InUse { .. })
        ));
        assert_eq!(ds.addr_state(a.addr, t(40)), Some(AddrState::Free));
        assert_eq!(ds.stats(t(40)).free(), 1);
        assert_eq!(
            ds.assign(&key("c2"), meta("p"), t(40)).unwrap().addr,
            a.addr
        );
    }

    #[test]
    fn cooling_address_skipped_for_another_free_one() {
        let mut ds = sip();
        let a = ds.assign(&key("c1"), meta("p"), t(1)).unwrap();
        ds.release(&key("c1"), t(2)).unwrap();
        let b = ds.assign(&key("c2"), meta("p"), t(3)).unwrap();
        assert_ne!(a.addr, b.addr);
    }

    #[test]
    fn release_unknown_and_legacy_key() {
        let mut ds = sip();
        assert_eq!(
            ds.release(&key("nope"), t(1)).unwrap_err().to_string(),
            "datastore: unknown pod"
        );
        // An allocation restored from a pre-1.12-migrated checkpoint uses the legacy key.
        let legacy = IpamKey::legacy("c-old");
        let a = ds.assign(&legacy, PodMeta::default(), t(1)).unwrap();
        let r = ds.release(&key("c-old"), t(2)).unwrap();
        assert_eq!(r.assignment.addr, a.addr);
        assert_eq!(r.assignment.key, legacy);
        assert_eq!(ds.release(&key("c-old"), t(3)), Err(DsError::UnknownPod));
        // The exact key wins over the legacy one.
        let x = ds.assign(&key("c-x"), meta("p"), t(4)).unwrap();
        let y = ds.assign(&IpamKey::legacy("c-x"), meta("p"), t(4)).unwrap();
        assert_eq!(
            ds.release(&key("c-x"), t(5)).unwrap().assignment.addr,
            x.addr
        );
        assert_eq!(
            ds.release(&key("c-x"), t(5)).unwrap().assignment.addr,
            y.addr
        );
    }

    #[test]
    fn rollbacks_restore_previous_state() {
        let mut ds = sip();
        let before = ds.stats(t(1));
        let a = ds.assign(&key("c1"), meta("p"), t(1)).unwrap();
        ds.rollback_assign(&a);
        assert_eq!(ds.stats(t(1)), before);
        assert!(ds.lookup(&key("c1")).is_none());

        let a = ds.assign(&key("c1"), meta("p"), t(1)).unwrap();
        let after_assign = ds.stats(t(2));
        let r = ds.release(&key("c1"), t(2)).unwrap();
        ds.rollback_release(&r);
        assert_eq!(ds.stats(t(2)), after_assign);
        assert_eq!(ds.lookup(&key("c1")).unwrap().addr, a.addr);
        assert_eq!(ds.checkpoint().allocations.len(), 1);
    }

    #[test]
    fn forced_removal_reports_pods() {
        let mut ds = sip();
        let a = ds.assign(&key("c1"), meta("p1"), t(1)).unwrap();
        let net = Ipv4Net::new(a.addr, 32).unwrap();
        assert!(matches!(
            ds.remove_cidr(&a.eni, net, false, t(2)),
            Err(DsError::InUse { assigned: 1, .. })
        ));
        let forced = ds.remove_cidr(&a.eni, net, true, t(2)).unwrap();
        assert_eq!(
            forced,
            vec![ForcedRelease {
                key: key("c1"),
                meta: meta("p1"),
                addr: a.addr
            }]
        );
        assert!(ds.lookup(&key("c1")).is_none());
        let b = ds.assign(&key("c2"), meta("p2"), t(3)).unwrap();
        let forced = ds.remove_eni(&b.eni, true, t(3)).unwrap();
        assert_eq!(forced.len(), 1);
        assert!(ds.eni(&b.eni).is_none());
    }

    #[test]
    fn cidr_conflicts_and_unknowns() {
        let mut ds = sip();
        assert!(matches!(
            ds.add_cidr("eni-b", "10.0.0.10/32".parse().unwrap()),
            Err(DsError::CidrConflict { .. })
        ));
        assert_eq!(
            ds.add_cidr("eni-zz", "10.9.0.10/32".parse().unwrap()),
            Err(DsError::UnknownEni("eni-zz".into()))
        );
        // Re-adding is a no-op.
        ds.add_cidr("eni-a", "10.0.0.10/32".parse().unwrap())
            .unwrap();
        assert_eq!(ds.stats(t(0)).total(), 5);
    }

    #[test]
    fn excluded_enis_not_used_or_counted() {
        let mut ds = sip();
        let mut a = eni("eni-a", 0);
        a.excluded = true;
        ds.add_eni(a, t(5));
        let s = ds.stats(t(5));
        assert_eq!(s.total(), 2);
        for i in 0..2 {
            assert_eq!(
                ds.assign(&key(&format!("c{i}")), meta("p"), t(5))
                    .unwrap()
                    .eni,
                "eni-b"
            );
        }
        assert_eq!(
            ds.assign(&key("c3"), meta("p"), t(5)),
            Err(DsError::NoAvailableAddress)
        );
    }

    #[test]
    fn stats_per_eni() {
        let mut ds = sip();
        ds.assign(&key("c1"), meta("p"), t(1)).unwrap();
        ds.assign(&key("c2"), meta("p"), t(1)).unwrap();
        ds.release(&key("c2"), t(2)).unwrap();
        let s = ds.stats(t(62));
        assert_eq!(s.enis.len(), 2);
        assert_eq!(s.enis[0].id, "eni-a");
        assert_eq!(s.enis[0].age, Duration::from_secs(62));
        // eni-b: .10 assigned, .11 released at t(2): free again at t(62) (cooldown 30 s).
        assert_eq!(
            (
                s.enis[1].total(),
                s.enis[1].assigned(),
                s.enis[1].cooling(),
                s.enis[1].free()
            ),
            (2, 1, 0, 1)
        );
        let s = ds.stats(t(3));
        assert_eq!(
            (s.enis[1].cooling(), s.enis[1].free(), s.free(), s.cooling()),
            (1, 0, 3, 1)
        );
    }

    #[test]
    fn checkpoint_contents_and_state() {
        let mut ds = sip();
        ds.assign(&key("c1"), meta("p1"), t(1)).unwrap();
        ds.assign(&key("c2"), PodMeta::default(), t(2)).unwrap();
        ds.release(&key("c2"), t(3)).unwrap();
        let cp = ds.checkpoint();
        assert_eq!(cp.version, "vpc-cni-ipam/1");
        assert_eq!(cp.allocations.len(), 1);
        let al = &cp.allocations[0];
        assert_eq!(
            (al.container_id.as_str(), al.ipv4.as_str()),
            ("c1", "10.0.1.10")
        );
        assert_eq!(al.allocation_timestamp, to_unix_nanos(t(1)));
        assert_eq!(al.metadata.k8s_pod_name, "p1");
        let st = ds.state(t(4), &["eni-gone".to_owned()]);
        assert_eq!(
            st.cooldown,
            vec![CooldownEntry {
                ipv4: "10.0.1.11".into(),
                released_at: to_unix_nanos(t(3))
            }]
        );
        assert_eq!(st.detaching_enis, ["eni-gone"]);
        assert!(ds.state(t(40), &[]).cooldown.is_empty());
        ds.prune_expired(t(40));
        assert_eq!(
            ds.addr_state("10.0.1.11".parse().unwrap(), t(40)),
            Some(AddrState::Free)
        );
    }

    /// Prefix mode with /28s on two ENIs and a /32 fallback address beside them: every address
    /// is found in its own CIDR, and checkpoint → restore gives the same assignments back.
    #[test]
    fn mixed_prefix_and_ip_round_trip() {
        let build = || {
            let mut ds = Datastore::new(true, Duration::from_secs(30));
            ds.add_eni(eni("eni-a", 0), t(0));
            ds.add_eni(eni("eni-b", 1), t(0));
            ds.add_cidr("eni-a", "10.0.8.16/28".parse().unwrap())
                .unwrap();
            // The address right after the prefix, and one inside a /28 no ENI has.
            ds.add_cidr("eni-b", "10.0.8.32/32".parse().unwrap())
                .unwrap();
            ds.add_cidr("eni-b", "10.0.9.0/28".parse().unwrap())
                .unwrap();
            ds
        };
        let mut ds = build();
        let mut held = Vec::new();
        for i in 0..20 {
            held.push(ds.assign(&key(&format!("c{i}")), meta("p"), t(1)).unwrap());
        }
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            ds.addr_state(a("10.0.8.31"), t(2)),
            Some(AddrState::Assigned)
        );
        assert_eq!(ds.addr_state(a("10.0.8.15"), t(2)), None);
        assert_eq!(ds.addr_state(a("10.0.8.33"), t(2)), None);
        assert!(
            held.iter()
                .any(|h| h.addr == a("10.0.8.32") && h.eni == "eni-b")
        );
        let cp = ds.checkpoint();
        assert_eq!(cp.allocations.len(), 20);
        assert!(
            cp.allocations
                .windows(2)
                .all(|w| a(&w[0].ipv4) < a(&w[1].ipv4))
        );
        let mut fresh = build();
        let r = fresh.restore(&cp, None, &|_: &PodMeta| true, t(3)).unwrap();
        assert_eq!((r.restored, r.dropped_unknown_addr.len()), (20, 0));
        for h in &held {
            let got = fresh.lookup(&h.key).unwrap();
            assert_eq!(
                (got.addr, &got.eni, got.route_table),
                (h.addr, &h.eni, h.route_table)
            );
        }
        assert_eq!(fresh.checkpoint(), cp);
        // Release through the restored state frees exactly that address's slot.
        fresh.release(&held[0].key, t(4)).unwrap();
        assert_eq!(fresh.checkpoint().allocations.len(), 19);
    }

    #[test]
    fn restore_round_trip_with_cooldown() {
        let mut ds = sip();
        ds.assign(&key("c1"), meta("alive"), t(1)).unwrap();
        ds.assign(&key("c2"), meta("gone"), t(1)).unwrap();
        ds.assign(&IpamKey::legacy("c3"), PodMeta::default(), t(1))
            .unwrap();
        ds.assign(&key("c4"), meta("alive2"), t(1)).unwrap();
        ds.release(&key("c4"), t(20)).unwrap();
        let cp = ds.checkpoint();
        let st = ds.state(t(21), &[]);

        let mut fresh = sip();
        let report = fresh
            .restore(&cp, Some(&st), &|m: &PodMeta| m.name != "gone", t(25))
            .unwrap();
        assert_eq!(report.restored, 2);
        assert_eq!(report.dropped_pod_gone.len(), 1);
        assert_eq!(report.dropped_pod_gone[0].container_id, "c2");
        assert_eq!(report.cooling, 1);
        assert_eq!(fresh.lookup(&key("c1")), ds.lookup(&key("c1")));
        assert!(fresh.lookup(&IpamKey::legacy("c3")).is_some());
        assert!(fresh.lookup(&key("c2")).is_none());
        let s = fresh.stats(t(25));
        // c1 + c3 assigned; c4 cooling from the sidecar; c2's address cooling since restore.
        assert_eq!((s.assigned(), s.cooling(), s.free()), (2, 2, 1));
        // c4's cooldown ends 30 s after its release (t(50)), c2's 30 s after restore (t(55)).
        assert_eq!(fresh.stats(t(50)).cooling(), 1);
        assert_eq!(fresh.stats(t(55)).cooling(), 0);
        // Nothing the checkpoint held is handed out twice.
        let held: Vec<_> = fresh.assignments().iter().map(|a| a.addr).collect();
        let n = fresh.assign(&key("new"), meta("n"), t(26)).unwrap();
        assert!(!held.contains(&n.addr));
    }

    #[test]
    fn restore_drops_unknown_and_fails_on_duplicate() {
        let mut cp = Checkpoint {
            version: checkpoint::VERSION.into(),
            allocations: vec![Allocation {
                network_name: "aws-cni".into(),
                container_id: "c1".into(),
                if_name: "eth0".into(),
                ipv4: "10.9.9.9".into(),
                ipv6: String::new(),
                allocation_timestamp: 1,
                metadata: AllocMetadata::default(),
            }],
        };
        let mut ds = sip();
        let r = ds.restore(&cp, None, &|_: &PodMeta| true, t(0)).unwrap();
        assert_eq!(r.dropped_unknown_addr.len(), 1);
        assert_eq!(ds.stats(t(0)).assigned(), 0);

        cp.allocations[0].ipv4 = "10.0.0.10".into();
        let mut dup = cp.allocations[0].clone();
        dup.container_id = "c2".into();
        cp.allocations.push(dup);
        let mut ds = sip();
        assert!(matches!(
            ds.restore(&cp, None, &|_: &PodMeta| true, t(0)),
            Err(DsError::DuplicateAllocation { .. })
        ));
    }

    #[test]
    fn restore_clamps_future_release_times() {
        let mut ds = sip();
        let st = State {
            version: checkpoint::STATE_VERSION.into(),
            cooldown: vec![CooldownEntry {
                ipv4: "10.0.0.10".into(),
                released_at: to_unix_nanos(t(10_000)),
            }],
            detaching_enis: vec![],
        };
        let cp = Checkpoint {
            version: checkpoint::VERSION.into(),
            allocations: vec![],
        };
        ds.restore(&cp, Some(&st), &|_: &PodMeta| true, t(0))
            .unwrap();
        assert_eq!(
            ds.addr_state("10.0.0.10".parse().unwrap(), t(29)),
            Some(AddrState::Cooling)
        );
        assert_eq!(
            ds.addr_state("10.0.0.10".parse().unwrap(), t(30)),
            Some(AddrState::Free)
        );
    }
}
