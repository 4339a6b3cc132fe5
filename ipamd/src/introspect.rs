//! Introspection (operations.md §2): a read-only HTTP API on `127.0.0.1:61679`
//! (`INTROSPECTION_BIND_ADDRESS`, also `unix:/path`; off with `DISABLE_INTROSPECTION`), and the
//! `ipamd status` operator view that renders it as tables.
//!
//! Upstream's paths and JSON shapes are kept (`/v1/enis` byte-compatible in structure, so
//! support scripts that parse it keep working); `/v1/pods` and `/v1/pool` are ours. Every answer
//! is computed from one [`Snapshot`] taken under the datastore lock, so counts within one answer
//! are consistent with each other. The same snapshot feeds the metrics ([`crate::metrics`]).
//!
//! Never bind this to a public address by default: it lists pods.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Config;
use crate::daemon::{Cloud, Core, Counters, Host, NodeInfo};
use crate::datastore::{Assignment, Datastore, EniId, EniInfo, PoolStats, from_unix_nanos};
use crate::metrics::{Extras, HistogramValues, LastDecision};
use crate::pool::Limits;

/// Read/write timeout of both HTTP servers (upstream: 5 s).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Snapshot

/// Copies of the daemon's event counters at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CounterValues {
    /// ADD requests received.
    pub add_requests: u64,
    /// DEL requests by reason.
    pub del_requests: BTreeMap<String, u64>,
    /// ADDs that found the pool empty and waited.
    pub add_waits: u64,
    /// ADDs answered without an address.
    pub add_no_address: u64,
    /// Addresses force-removed by reconcile.
    pub force_removed_ips: u64,
    /// ENIs force-removed by reconcile.
    pub force_removed_enis: u64,
    /// Prefix requests that fell back to secondary IPs.
    pub prefix_fallbacks: u64,
    /// Pool passes.
    pub pool_passes: u64,
    /// Pool-manager errors.
    pub pool_errors: u64,
    /// Reconcile passes.
    pub reconcile_passes: u64,
    /// ADD wait times.
    pub add_wait: HistogramValues,
    /// Pool decisions by (action, reason).
    pub pool_decisions: BTreeMap<(&'static str, &'static str), u64>,
    /// The last pool decision.
    pub last_decision: Option<LastDecision>,
    /// Running instances per [`crate::metrics::ACTIONS`] entry.
    pub in_progress: [usize; crate::metrics::ACTIONS.len()],
    /// Start-up durations, once the daemon serves.
    pub startup: crate::metrics::StartupValues,
}

fn ld(a: &std::sync::atomic::AtomicUsize) -> u64 {
    a.load(std::sync::atomic::Ordering::Relaxed) as u64
}

impl CounterValues {
    /// Reads the daemon's counters.
    pub fn read(c: &Counters) -> Self {
        Self {
            add_requests: ld(&c.add_requests),
            del_requests: c.del_requests.values(),
            add_waits: ld(&c.add_waits),
            add_no_address: ld(&c.add_no_address),
            force_removed_ips: ld(&c.force_removed),
            force_removed_enis: ld(&c.force_removed_enis),
            prefix_fallbacks: ld(&c.prefix_fallbacks),
            pool_passes: ld(&c.pool_passes),
            pool_errors: ld(&c.pool_errors),
            reconcile_passes: ld(&c.reconcile_passes),
            add_wait: c.add_wait.values(),
            pool_decisions: c.pool_decisions.counts(),
            last_decision: c.pool_decisions.last(),
            in_progress: c.in_progress.values(),
            startup: c.startup.values(),
        }
    }
}

/// One assignment with its assignment time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEntry {
    /// The assignment.
    pub assignment: Assignment,
    /// When it was made.
    pub assigned_at: SystemTime,
}

/// Everything the metrics and introspection show, taken at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When.
    pub now: Option<SystemTime>,
    /// Pool counters per ENI and CIDR.
    pub stats: PoolStats,
    /// ENI facts by ID.
    pub enis: BTreeMap<EniId, EniInfo>,
    /// Assignments, ascending by address.
    pub pods: Vec<PodEntry>,
    /// Addresses in cooldown and when they were released.
    pub cooling: BTreeMap<Ipv4Addr, SystemTime>,
    /// Pool limits (max pods included).
    pub limits: Limits,
    /// ENIs this node may use: the instance limit, capped by `MAX_ENI`.
    pub max_enis: u32,
    /// Init done and serving.
    pub ready: bool,
    /// ADDs waiting right now.
    pub pending: usize,
    /// Last pool-manager error.
    pub last_pool_error: Option<String>,
    /// Event counters.
    pub counters: CounterValues,
    /// Node facts.
    pub node: NodeInfo,
}

impl Snapshot {
    /// The datastore part of a snapshot (everything else defaulted).
    pub fn from_datastore(ds: &Datastore, now: SystemTime) -> Self {
        let cp = ds.checkpoint();
        let assigned_at: BTreeMap<&str, i64> = cp
            .allocations
            .iter()
            .map(|a| (a.ipv4.as_str(), a.allocation_timestamp))
            .collect();
        let pods = ds
            .assignments()
            .into_iter()
            .map(|a| {
                let t = assigned_at
                    .get(a.addr.to_string().as_str())
                    .map_or(SystemTime::UNIX_EPOCH, |n| from_unix_nanos(*n));
                PodEntry {
                    assignment: a,
                    assigned_at: t,
                }
            })
            .collect();
        let cooling = ds
            .state(now, &[])
            .cooldown
            .iter()
            .filter_map(|c| Some((c.ipv4.parse().ok()?, from_unix_nanos(c.released_at))))
            .collect();
        Self {
            now: Some(now),
            stats: ds.stats(now),
            enis: ds.enis().map(|e| (e.id.clone(), e.clone())).collect(),
            pods,
            cooling,
            limits: Limits {
                ipv4_per_eni: 0,
                max_enis: 0,
                max_pods: 0,
                unmanaged_enis: 0,
                trunk_reserve: 0,
            },
            max_enis: 0,
            ready: false,
            pending: 0,
            last_pool_error: None,
            counters: CounterValues::default(),
            node: NodeInfo::default(),
        }
    }

    /// `awscni_ip_max`: addresses the node may hold (upstream: ENIs × addresses per ENI).
    pub fn max_ips(&self) -> u32 {
        let per = self.limits.addrs_per_eni(self.stats.prefix_mode).max(0);
        u32::try_from(i64::from(self.max_enis) * per).unwrap_or(u32::MAX)
    }
}

/// What the HTTP layers read from the daemon.
pub trait Observe: Send + Sync + 'static {
    /// A consistent snapshot, now.
    fn snapshot(&self) -> Snapshot;
    /// The effective configuration.
    fn config(&self) -> &Config;
}

/// The ENIs ipamd may use (upstream `awscni_eni_max`): the instance type's limit, capped by
/// `MAX_ENI`, less the attached ENIs it must not manage.
pub fn effective_max_enis(limits: &Limits, cfg: &Config) -> u32 {
    cfg.pool
        .max_eni
        .map_or(limits.max_enis, |m| m.min(limits.max_enis))
        .saturating_sub(limits.unmanaged_enis)
}

impl<C: Cloud, H: Host> Observe for Core<C, H> {
    fn snapshot(&self) -> Snapshot {
        let now = SystemTime::now();
        let mut s = self.with_ds(|ds| Snapshot::from_datastore(ds, now));
        s.limits = *self.limits.lock().unwrap_or_else(|p| p.into_inner());
        s.max_enis = effective_max_enis(&s.limits, &self.cfg);
        s.ready = self.is_ready();
        s.pending = self.pending();
        s.last_pool_error = self.last_pool_error();
        s.counters = CounterValues::read(&self.counters);
        s.node = self.node.clone();
        s
    }
    fn config(&self) -> &Config {
        &self.cfg
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream JSON shapes

/// Go's `time.Time` zero value as `encoding/json` writes it.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// RFC 3339 with nanoseconds trimmed, like Go's `time.Time` JSON (UTC).
pub fn rfc3339(t: Option<SystemTime>) -> String {
    use time::format_description::well_known::Rfc3339;
    match t {
        None => ZERO_TIME.to_owned(),
        Some(t) => time::OffsetDateTime::from(t)
            .format(&Rfc3339)
            .unwrap_or_else(|_| ZERO_TIME.to_owned()),
    }
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Go's `net.IPNet` in JSON: the IP as text, the mask as base64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpNetJson {
    /// Network address.
    #[serde(rename = "IP")]
    pub ip: String,
    /// Mask bytes, base64 (`/////w==` for /32, `////8A==` for /28).
    #[serde(rename = "Mask")]
    pub mask: String,
}

/// Upstream's `IPAMKey`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamKeyJson {
    /// Network name.
    #[serde(rename = "networkName")]
    pub network_name: String,
    /// Blanked in `/v1/enis` since upstream v1.23.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Blanked in `/v1/enis` since upstream v1.23.
    #[serde(rename = "ifName")]
    pub if_name: String,
}

/// Upstream's `IPAMMetadata` (empty fields omitted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamMetadataJson {
    /// Pod namespace.
    #[serde(
        rename = "k8sPodNamespace",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    /// Pod name.
    #[serde(
        rename = "k8sPodName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub name: String,
    /// Interfaces of the pod (multi-NIC).
    #[serde(rename = "interfacesCount", default, skip_serializing_if = "is_zero")]
    pub interfaces_count: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Upstream's `AddressInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressInfoJson {
    /// The address.
    #[serde(rename = "Address")]
    pub address: String,
    /// Who holds it (blank when free).
    #[serde(rename = "IPAMKey")]
    pub key: IpamKeyJson,
    /// Pod identity.
    #[serde(rename = "IPAMMetadata")]
    pub metadata: IpamMetadataJson,
    /// RFC 3339, zero time when not assigned.
    #[serde(rename = "AssignedTime")]
    pub assigned_time: String,
    /// RFC 3339, zero time unless released (cooling).
    #[serde(rename = "UnassignedTime")]
    pub unassigned_time: String,
}

/// Upstream's `CidrInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CidrJson {
    /// The CIDR.
    #[serde(rename = "Cidr")]
    pub cidr: IpNetJson,
    /// Addresses in use or cooling (free, never-used ones are absent, as upstream).
    #[serde(rename = "IPAddresses")]
    pub addresses: BTreeMap<String, AddressInfoJson>,
    /// A delegated /28.
    #[serde(rename = "IsPrefix")]
    pub is_prefix: bool,
    /// `"4"`.
    #[serde(rename = "AddressFamily")]
    pub address_family: String,
}

/// Upstream's `ENI`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniJson {
    /// ENI ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Primary ENI.
    #[serde(rename = "IsPrimary")]
    pub is_primary: bool,
    /// Trunk ENI.
    #[serde(rename = "IsTrunk")]
    pub is_trunk: bool,
    /// EFA ENI.
    #[serde(rename = "IsEFA")]
    pub is_efa: bool,
    /// Device number.
    #[serde(rename = "DeviceNumber")]
    pub device_number: u32,
    /// IPv4 CIDRs keyed by `a.b.c.d/len`.
    #[serde(rename = "AvailableIPv4Cidrs")]
    pub ipv4_cidrs: BTreeMap<String, CidrJson>,
    /// IPv6 prefixes (always empty: IPv6 is not supported by this release).
    #[serde(rename = "IPv6Cidrs")]
    pub ipv6_cidrs: BTreeMap<String, CidrJson>,
    /// Not used for pods (custom networking primary ENI).
    #[serde(rename = "IsExcludedForPodIPs")]
    pub excluded: bool,
    /// Host route table of its pods.
    #[serde(rename = "RouteTableID")]
    pub route_table_id: u32,
    /// Subnet ID (`subnet-…`, as IMDS and EC2 report it; empty only while unknown).
    #[serde(rename = "SubnetID")]
    pub subnet_id: String,
}

/// Upstream's `ENIInfos`, one per network card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniInfosJson {
    /// Usable addresses.
    #[serde(rename = "TotalIPs")]
    pub total_ips: usize,
    /// Assigned addresses.
    #[serde(rename = "AssignedIPs")]
    pub assigned_ips: usize,
    /// ENIs by ID.
    #[serde(rename = "ENIs")]
    pub enis: BTreeMap<String, EniJson>,
}

/// `/v1/enis`: keyed by network card index (we manage card 0).
pub fn enis_json(s: &Snapshot) -> BTreeMap<String, EniInfosJson> {
    let mut enis = BTreeMap::new();
    for e in &s.stats.enis {
        let info = s.enis.get(&e.id);
        let mut cidrs = BTreeMap::new();
        for c in &e.cidrs {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(c.net.prefix_len()))
                .unwrap_or(0);
            let mut addrs = BTreeMap::new();
            for p in s.pods.iter().filter(|p| c.net.contains(&p.assignment.addr)) {
                let a = &p.assignment;
                addrs.insert(
                    a.addr.to_string(),
                    AddressInfoJson {
                        address: a.addr.to_string(),
                        // Upstream v1.23 blanks the container ID and interface name here.
                        key: IpamKeyJson {
                            network_name: a.key.network_name.clone(),
                            ..IpamKeyJson::default()
                        },
                        metadata: IpamMetadataJson {
                            namespace: a.meta.namespace.clone(),
                            name: a.meta.name.clone(),
                            interfaces_count: a.meta.interfaces_count,
                        },
                        assigned_time: rfc3339(Some(p.assigned_at)),
                        unassigned_time: ZERO_TIME.to_owned(),
                    },
                );
            }
            for (ip, t) in s.cooling.iter().filter(|(ip, _)| c.net.contains(*ip)) {
                addrs.insert(
                    ip.to_string(),
                    AddressInfoJson {
                        address: ip.to_string(),
                        key: IpamKeyJson::default(),
                        metadata: IpamMetadataJson::default(),
                        assigned_time: ZERO_TIME.to_owned(),
                        unassigned_time: rfc3339(Some(*t)),
                    },
                );
            }
            cidrs.insert(
                c.net.to_string(),
                CidrJson {
                    cidr: IpNetJson {
                        ip: c.net.network().to_string(),
                        mask: base64(&mask.to_be_bytes()),
                    },
                    addresses: addrs,
                    is_prefix: c.kind == crate::datastore::CidrKind::Prefix,
                    address_family: "4".to_owned(),
                },
            );
        }
        enis.insert(
            e.id.clone(),
            EniJson {
                id: e.id.clone(),
                is_primary: e.is_primary,
                is_trunk: e.trunk,
                is_efa: e.efa,
                device_number: e.device_number,
                ipv4_cidrs: cidrs,
                ipv6_cidrs: BTreeMap::new(),
                excluded: info.is_some_and(|i| i.excluded),
                route_table_id: info
                    .map_or(crate::datastore::MAIN_ROUTE_TABLE, |i| i.route_table()),
                subnet_id: info.map(|i| i.subnet_id.clone()).unwrap_or_default(),
            },
        );
    }
    BTreeMap::from([(
        "0".to_owned(),
        EniInfosJson {
            total_ips: s.stats.total(),
            assigned_ips: s.stats.assigned(),
            enis,
        },
    )])
}

/// One `/v1/pods` entry (ours).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodJson {
    /// Pod name.
    #[serde(rename = "PodName")]
    pub pod_name: String,
    /// Pod namespace.
    #[serde(rename = "PodNamespace")]
    pub pod_namespace: String,
    /// CNI network name.
    #[serde(rename = "NetworkName")]
    pub network_name: String,
    /// Container (sandbox) ID.
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    /// Interface name in the pod.
    #[serde(rename = "IfName")]
    pub if_name: String,
    /// Address.
    #[serde(rename = "IP")]
    pub ip: String,
    /// ENI it lives on.
    #[serde(rename = "ENI")]
    pub eni: String,
    /// ENI device number.
    #[serde(rename = "DeviceNumber")]
    pub device_number: u32,
    /// Host route table.
    #[serde(rename = "RouteTableID")]
    pub route_table_id: u32,
    /// RFC 3339.
    #[serde(rename = "AssignedTime")]
    pub assigned_time: String,
}

/// `/v1/pods`: keyed `<pod>_<namespace>_<containerID>` like upstream's early versions
/// (`_<ifName>` appended for interfaces other than `eth0`).
pub fn pods_json(s: &Snapshot) -> BTreeMap<String, PodJson> {
    s.pods
        .iter()
        .map(|p| {
            let a = &p.assignment;
            let mut key = format!(
                "{}_{}_{}",
                a.meta.name, a.meta.namespace, a.key.container_id
            );
            if a.key.if_name != "eth0" {
                key = format!("{key}_{}", a.key.if_name);
            }
            (
                key,
                PodJson {
                    pod_name: a.meta.name.clone(),
                    pod_namespace: a.meta.namespace.clone(),
                    network_name: a.key.network_name.clone(),
                    container_id: a.key.container_id.clone(),
                    if_name: a.key.if_name.clone(),
                    ip: a.addr.to_string(),
                    eni: a.eni.clone(),
                    device_number: a.device_number,
                    route_table_id: a.route_table,
                    assigned_time: rfc3339(Some(p.assigned_at)),
                },
            )
        })
        .collect()
}

/// Per-ENI counts in `/v1/pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolEniJson {
    /// ENI ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Device number.
    #[serde(rename = "DeviceNumber")]
    pub device_number: u32,
    /// Host route table.
    #[serde(rename = "RouteTableID")]
    pub route_table_id: u32,
    /// Primary ENI.
    #[serde(rename = "IsPrimary")]
    pub is_primary: bool,
    /// Not used for pods.
    #[serde(rename = "Excluded")]
    pub excluded: bool,
    /// CIDRs held (secondary IPs and prefixes).
    #[serde(rename = "Cidrs")]
    pub cidrs: usize,
    /// Usable addresses.
    #[serde(rename = "Total")]
    pub total: usize,
    /// Assigned.
    #[serde(rename = "Assigned")]
    pub assigned: usize,
    /// Free now.
    #[serde(rename = "Free")]
    pub free: usize,
    /// Cooling.
    #[serde(rename = "Cooling")]
    pub cooling: usize,
}

/// The last pool decision in `/v1/pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionJson {
    /// RFC 3339.
    #[serde(rename = "Time")]
    pub time: String,
    /// Action.
    #[serde(rename = "Action")]
    pub action: String,
    /// Reason.
    #[serde(rename = "Reason")]
    pub reason: String,
    /// Detail.
    #[serde(rename = "Detail")]
    pub detail: String,
}

/// `/v1/pool` (ours): the pool at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolJson {
    /// Init done and serving.
    #[serde(rename = "Ready")]
    pub ready: bool,
    /// Instance ID.
    #[serde(rename = "InstanceID")]
    pub instance_id: String,
    /// Instance type.
    #[serde(rename = "InstanceType")]
    pub instance_type: String,
    /// Prefix delegation on.
    #[serde(rename = "PrefixDelegation")]
    pub prefix_delegation: bool,
    /// `WARM_ENI_TARGET`.
    #[serde(rename = "WarmENITarget")]
    pub warm_eni_target: u32,
    /// `WARM_IP_TARGET` (0 = unset).
    #[serde(rename = "WarmIPTarget")]
    pub warm_ip_target: u32,
    /// `MINIMUM_IP_TARGET` (0 = unset).
    #[serde(rename = "MinimumIPTarget")]
    pub minimum_ip_target: u32,
    /// `WARM_PREFIX_TARGET`.
    #[serde(rename = "WarmPrefixTarget")]
    pub warm_prefix_target: u32,
    /// Node max pods.
    #[serde(rename = "MaxPods")]
    pub max_pods: u32,
    /// ENIs this node may use.
    #[serde(rename = "MaxENIs")]
    pub max_enis: u32,
    /// Usable addresses.
    #[serde(rename = "Total")]
    pub total: usize,
    /// Assigned.
    #[serde(rename = "Assigned")]
    pub assigned: usize,
    /// Free now.
    #[serde(rename = "Free")]
    pub free: usize,
    /// Cooling.
    #[serde(rename = "Cooling")]
    pub cooling: usize,
    /// /28 prefixes held.
    #[serde(rename = "Prefixes")]
    pub prefixes: usize,
    /// ADDs waiting for the pool manager.
    #[serde(rename = "PendingADDs")]
    pub pending_adds: usize,
    /// Per ENI.
    #[serde(rename = "ENIs")]
    pub enis: Vec<PoolEniJson>,
    /// Last decision.
    #[serde(rename = "LastDecision")]
    pub last_decision: Option<DecisionJson>,
    /// Last pool-manager error.
    #[serde(rename = "LastPoolError")]
    pub last_pool_error: Option<String>,
    /// Failed EC2 attempts by operation and AWS error code.
    #[serde(rename = "EC2Errors")]
    pub ec2_errors: BTreeMap<String, BTreeMap<String, u64>>,
}

/// `/v1/pool`.
pub fn pool_json(s: &Snapshot, cfg: &Config, extras: &Extras) -> PoolJson {
    let st = &s.stats;
    let ec2_errors = extras
        .ec2
        .as_ref()
        .map(|e| {
            e.snapshot()
                .into_iter()
                .filter(|(_, a)| !a.errors.is_empty())
                .map(|(k, a)| (k.to_owned(), a.errors))
                .collect()
        })
        .unwrap_or_default();
    PoolJson {
        ready: s.ready,
        instance_id: s.node.instance_id.clone(),
        instance_type: s.node.instance_type.clone(),
        prefix_delegation: st.prefix_mode,
        warm_eni_target: cfg.pool.warm_eni,
        warm_ip_target: cfg.pool.warm_ip,
        minimum_ip_target: cfg.pool.minimum_ip,
        warm_prefix_target: cfg.pool.warm_prefix,
        max_pods: s.limits.max_pods,
        max_enis: s.max_enis,
        total: st.total(),
        assigned: st.assigned(),
        free: st.free(),
        cooling: st.cooling(),
        prefixes: st.prefixes(),
        pending_adds: s.pending,
        enis: st
            .enis
            .iter()
            .map(|e| PoolEniJson {
                id: e.id.clone(),
                device_number: e.device_number,
                route_table_id: s.enis.get(&e.id).map_or(0, EniInfo::route_table),
                is_primary: e.is_primary,
                excluded: e.excluded,
                cidrs: e.cidrs.len(),
                total: e.total(),
                assigned: e.assigned(),
                free: e.free(),
                cooling: e.cooling(),
            })
            .collect(),
        last_decision: s.counters.last_decision.as_ref().map(|d| DecisionJson {
            time: rfc3339(Some(d.at)),
            action: d.action.to_owned(),
            reason: d.reason.to_owned(),
            detail: d.detail.clone(),
        }),
        last_pool_error: s.last_pool_error.clone(),
        ec2_errors,
    }
}

/// `/v1/networkutils-env-settings`: upstream's typed values (`AWS_VPC_K8S_CNI_RANDOMIZESNAT`:
/// 0 none, 1 hashrandom, 2 prng; empty CIDR lists are `null`).
pub fn networkutils_json(cfg: &Config) -> serde_json::Value {
    use crate::config::RandomizeSnat;
    let list = |v: &[ipnet::Ipv4Net]| {
        if v.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::json!(v.iter().map(|c| c.to_string()).collect::<Vec<_>>())
        }
    };
    serde_json::json!({
        "AWS_EXTERNAL_SERVICE_CIDRS": list(&cfg.external_service_cidrs),
        "AWS_VPC_CNI_NODE_PORT_SUPPORT": cfg.node_port_support,
        "AWS_VPC_ENI_MTU": cfg.eni_mtu,
        "AWS_VPC_K8S_CNI_CONNMARK": cfg.connmark,
        "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS": list(&cfg.exclude_snat_cidrs),
        "AWS_VPC_K8S_CNI_EXTERNALSNAT": cfg.external_snat,
        "AWS_VPC_K8S_CNI_RANDOMIZESNAT": match cfg.randomize_snat {
            RandomizeSnat::None => 0,
            RandomizeSnat::HashRandom => 1,
            RandomizeSnat::Prng => 2,
        },
        "AWS_VPC_K8S_CNI_VETHPREFIX": cfg.veth_prefix,
    })
}

/// `/v1/ipamd-env-settings`: string values like upstream (effective values, not raw env).
pub fn ipamd_env_json(cfg: &Config) -> BTreeMap<&'static str, String> {
    let p = &cfg.pool;
    BTreeMap::from([
        ("WARM_IP_TARGET", p.warm_ip.to_string()),
        ("WARM_ENI_TARGET", p.warm_eni.to_string()),
        ("MINIMUM_IP_TARGET", p.minimum_ip.to_string()),
        ("WARM_PREFIX_TARGET", p.warm_prefix.to_string()),
        ("ENABLE_PREFIX_DELEGATION", p.prefix_delegation.to_string()),
        (
            "MAX_ENI",
            p.max_eni.map(|m| m.to_string()).unwrap_or_default(),
        ),
        (
            "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG",
            cfg.custom_network_cfg.to_string(),
        ),
        (
            "AWS_MANAGE_ENIS_NON_SCHEDULABLE",
            cfg.manage_enis_non_schedulable.to_string(),
        ),
        (
            "ENABLE_SUBNET_DISCOVERY",
            cfg.enable_subnet_discovery.to_string(),
        ),
    ])
}

/// The paths served, as `/` lists them (sorted, like upstream).
pub const PATHS: &[&str] = &[
    "/v1/eni-configs",
    "/v1/enis",
    "/v1/ipamd-env-settings",
    "/v1/networkutils-env-settings",
    "/v1/pods",
    "/v1/pool",
];

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Reply {
    fn json<T: Serialize>(v: &T) -> Self {
        match serde_json::to_string(v) {
            Ok(body) => Self {
                status: 200,
                content_type: "application/json",
                body,
            },
            Err(e) => Self::error(500, &format!("cannot encode: {e}")),
        }
    }

    fn error(status: u16, msg: &str) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: serde_json::json!({ "error": msg }).to_string(),
        }
    }

    /// 404 naming the path.
    pub fn not_found(path: &str) -> Self {
        Self::error(404, &format!("no such path: {path}"))
    }
}

/// Answers one introspection GET.
pub fn route(src: &dyn Observe, extras: &Extras, path: &str) -> Reply {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let cfg = src.config();
    match path {
        "/" => Reply::json(&serde_json::json!({ "AvailableCommands": PATHS })),
        "/v1/enis" => Reply::json(&enis_json(&src.snapshot())),
        "/v1/pods" => Reply::json(&pods_json(&src.snapshot())),
        "/v1/pool" => Reply::json(&pool_json(&src.snapshot(), cfg, extras)),
        "/v1/networkutils-env-settings" => Reply::json(&networkutils_json(cfg)),
        "/v1/ipamd-env-settings" => Reply::json(&ipamd_env_json(cfg)),
        "/v1/eni-configs" if !cfg.custom_network_cfg => {
            Reply::error(404, "custom networking is not in use")
        }
        // Finding the node's ENIConfig needs the Kubernetes API, which this release does not
        // call (custom networking is later scope).
        "/v1/eni-configs" => Reply::error(
            501,
            "ENIConfig lookup needs the Kubernetes API; not available in this release",
        ),
        other => Reply::not_found(other),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP server (GET only, 5 s timeouts, TCP or Unix socket)

/// A request handler: path → reply.
pub type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// A running HTTP server; dropping it stops accepting.
pub struct Server {
    local: String,
    task: tokio::task::JoinHandle<()>,
    unix_path: Option<PathBuf>,
}

async fn serve_conn<S>(io: S, handler: Handler)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let h = handler.clone();
        async move {
            let reply = match *req.method() {
                Method::GET | Method::HEAD => h(req.uri().path()),
                _ => Reply::error(405, "only GET is supported"),
            };
            let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
            *resp.status_mut() =
                StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if let Ok(v) = hyper::header::HeaderValue::from_str(reply.content_type) {
                resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            if reply.status == 405 {
                resp.headers_mut().insert(
                    hyper::header::ALLOW,
                    hyper::header::HeaderValue::from_static("GET, HEAD"),
                );
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HTTP_TIMEOUT)
        // One request per connection: the total deadline below then bounds read + write of
        // that request like Go's ReadTimeout + WriteTimeout.
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), svc);
    match tokio::time::timeout(2 * HTTP_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "HTTP connection error"),
        Err(_) => tracing::debug!("HTTP connection timed out"),
    }
}

impl Server {
    /// Binds `addr` (`host:port` or `unix:/path`) and serves `handler` in a background task.
    pub async fn start(addr: &str, handler: Handler) -> std::io::Result<Self> {
        if let Some(path) = addr.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if path.as_os_str().is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("empty Unix socket path in {addr:?}"),
                ));
            }
            // A socket left by a previous run would make bind fail with EADDRINUSE.
            use std::os::unix::fs::FileTypeExt;
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
                std::fs::remove_file(&path)?;
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let listener = tokio::net::UnixListener::bind(&path)?;
            // It lists pods: owner only.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            let task = tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((s, _)) => {
                            tokio::spawn(serve_conn(s, handler.clone()));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
            return Ok(Self {
                local: addr.to_owned(),
                task,
                unix_path: Some(path),
            });
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?.to_string();
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(serve_conn(s, handler.clone()));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Self {
            local,
            task,
            unix_path: None,
        })
    }

    /// The bound address (`ip:port` with the real port, or `unix:/path`).
    pub fn local_addr(&self) -> &str {
        &self.local
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Binds the introspection endpoint over `src`.
pub async fn start(addr: &str, src: Arc<dyn Observe>, extras: Extras) -> std::io::Result<Server> {
    let handler: Handler = Arc::new(move |path: &str| route(src.as_ref(), &extras, path));
    Server::start(addr, handler).await
}

/// The servers of a running daemon (kept alive by the caller).
#[derive(Default)]
pub struct Servers {
    /// Metrics endpoint, unless disabled or failed to bind.
    pub metrics: Option<Server>,
    /// Introspection endpoint, unless disabled or failed to bind.
    pub introspection: Option<Server>,
}

/// Starts the metrics and introspection endpoints as configured. Bind failures are logged and
/// the daemon goes on (as upstream: observability must not take pod networking down).
pub async fn start_servers(
    src: Arc<dyn Observe>,
    extras: Extras,
    version: &str,
    metrics_addr: &str,
) -> Servers {
    let cfg = src.config().clone();
    let mut out = Servers::default();
    if !cfg.disable_metrics {
        match crate::metrics::Metrics::new(src.clone(), extras.clone(), version) {
            Ok(m) => match crate::metrics::start(metrics_addr, Arc::new(m)).await {
                Ok(s) => {
                    tracing::info!(addr = s.local_addr(), "metrics endpoint serving /metrics");
                    out.metrics = Some(s);
                }
                Err(e) => {
                    tracing::error!(addr = metrics_addr, error = %e, "cannot bind metrics endpoint")
                }
            },
            Err(e) => tracing::error!(error = %e, "cannot build the metrics registry"),
        }
    }
    if !cfg.disable_introspection {
        let addr = cfg.introspection_bind_address.as_str();
        match start(addr, src, extras).await {
            Ok(s) => {
                tracing::info!(addr = s.local_addr(), "introspection endpoint serving");
                out.introspection = Some(s);
            }
            Err(e) => tracing::error!(addr, error = %e, "cannot bind introspection endpoint"),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Client and `ipamd status`

fn client_target(addr: &str) -> String {
    // A server bound to the wildcard address is reached on loopback.
    if let Some(port) = addr.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = addr.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        addr.to_owned()
    }
}

fn decode_chunked(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = body.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&body[..nl]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        body = &body[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// A blocking HTTP/1.1 GET against `addr` (`host:port` or `unix:/path`) with 5 s timeouts.
/// Returns the status and the body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: ipamd\r\nConnection: close\r\n\r\n");
    let mut raw = Vec::new();
    let io_err = |e: std::io::Error| format!("{addr}: {e}");
    if let Some(p) = addr.strip_prefix("unix:") {
        let mut s = std::os::unix::net::UnixStream::connect(p).map_err(io_err)?;
        s.set_read_timeout(Some(HTTP_TIMEOUT)).map_err(io_err)?;
        s.set_write_timeout(Some(HTTP_TIMEOUT)).map_err(io_err)?;
        s.write_all(req.as_bytes()).map_err(io_err)?;
        s.read_to_end(&mut raw).map_err(io_err)?;
    } else {
        use std::net::ToSocketAddrs;
        let target = client_target(addr);
        let sa = target
            .to_socket_addrs()
            .map_err(io_err)?
            .next()
            .ok_or_else(|| format!("{addr}: no address"))?;
        let mut s = std::net::TcpStream::connect_timeout(&sa, HTTP_TIMEOUT).map_err(io_err)?;
        s.set_read_timeout(Some(HTTP_TIMEOUT)).map_err(io_err)?;
        s.set_write_timeout(Some(HTTP_TIMEOUT)).map_err(io_err)?;
        s.write_all(req.as_bytes()).map_err(io_err)?;
        s.read_to_end(&mut raw).map_err(io_err)?;
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{addr}: malformed HTTP response"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr}: malformed status line {:?}", head.lines().next()))?;
    let mut body = raw[split + 4..].to_vec();
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        body = decode_chunked(&body).ok_or_else(|| format!("{addr}: bad chunked body"))?;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w.get(i).copied().unwrap_or(0)))
            .collect();
        s.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

fn age(assigned: &str, now: SystemTime) -> String {
    use time::format_description::well_known::Rfc3339;
    let Ok(t) = time::OffsetDateTime::parse(assigned, &Rfc3339) else {
        return "?".to_owned();
    };
    let secs = (time::OffsetDateTime::from(now) - t).whole_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Renders `/v1/pool` and `/v1/pods` as the `ipamd status` text.
pub fn render_status(pool: &PoolJson, pods: &BTreeMap<String, PodJson>, now: SystemTime) -> String {
    let mut out = String::new();
    out += &format!(
        "Node {} ({}): {}; max pods {}; ENIs {}/{}{}\n",
        if pool.instance_id.is_empty() {
            "?"
        } else {
            &pool.instance_id
        },
        if pool.instance_type.is_empty() {
            "?"
        } else {
            &pool.instance_type
        },
        if pool.ready { "ready" } else { "NOT ready" },
        pool.max_pods,
        pool.enis.len(),
        pool.max_enis,
        if pool.prefix_delegation {
            "; prefix delegation"
        } else {
            ""
        },
    );
    out += &format!(
        "Addresses: {} total, {} used, {} free, {} cooling{}; pending ADDs {}\n",
        pool.total,
        pool.assigned,
        pool.free,
        pool.cooling,
        if pool.prefix_delegation {
            format!(" ({} prefixes)", pool.prefixes)
        } else {
            String::new()
        },
        pool.pending_adds
    );
    out += &format!(
        "Targets: WARM_ENI_TARGET={} WARM_IP_TARGET={} MINIMUM_IP_TARGET={} WARM_PREFIX_TARGET={}\n",
        pool.warm_eni_target, pool.warm_ip_target, pool.minimum_ip_target, pool.warm_prefix_target
    );
    if let Some(d) = &pool.last_decision {
        out += &format!(
            "Last pool decision: {} ({}) at {}: {}\n",
            d.action, d.reason, d.time, d.detail
        );
    }
    if let Some(e) = &pool.last_pool_error {
        out += &format!("Last pool error: {e}\n");
    }
    out += "\n";
    let rows: Vec<Vec<String>> = pool
        .enis
        .iter()
        .map(|e| {
            let mut flags = Vec::new();
            if e.is_primary {
                flags.push("primary");
            }
            if e.excluded {
                flags.push("excluded");
            }
            vec![
                e.id.clone(),
                e.device_number.to_string(),
                e.route_table_id.to_string(),
                e.cidrs.to_string(),
                e.total.to_string(),
                e.assigned.to_string(),
                e.free.to_string(),
                e.cooling.to_string(),
                flags.join(","),
            ]
        })
        .collect();
    out += &table(
        &[
            "ENI", "DEVICE", "TABLE", "CIDRS", "TOTAL", "USED", "FREE", "COOLING", "FLAGS",
        ],
        &rows,
    );
    out += "\n";
    if pods.is_empty() {
        out += "No pods.\n";
    } else {
        let mut list: Vec<&PodJson> = pods.values().collect();
        list.sort_by_key(|p| p.ip.parse::<Ipv4Addr>().ok());
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|p| {
                vec![
                    format!("{}/{}", p.pod_namespace, p.pod_name),
                    p.ip.clone(),
                    p.eni.clone(),
                    p.device_number.to_string(),
                    p.container_id.chars().take(12).collect(),
                    p.if_name.clone(),
                    age(&p.assigned_time, now),
                ]
            })
            .collect();
        out += &table(
            &[
                "POD",
                "ADDRESS",
                "ENI",
                "DEVICE",
                "CONTAINER",
                "IFNAME",
                "AGE",
            ],
            &rows,
        );
    }
    if !pool.ec2_errors.is_empty() {
        out += "\nEC2 errors (failed attempts since start):\n";
        let rows: Vec<Vec<String>> = pool
            .ec2_errors
            .iter()
            .flat_map(|(op, codes)| {
                codes
                    .iter()
                    .map(move |(code, n)| vec![op.clone(), code.clone(), n.to_string()])
            })
            .collect();
        out += &table(&["OPERATION", "ERROR", "COUNT"], &rows);
    }
    out
}

const STATUS_USAGE: &str = "usage: ipamd status [--addr HOST:PORT|unix:/PATH] [--json]

Shows the pool, ENIs, pods, max pods and the last EC2 errors from ipamd's introspection
endpoint (default: $INTROSPECTION_BIND_ADDRESS or 127.0.0.1:61679).";

/// Fetches and renders the status (`--json`: the raw `/v1/pool` and `/v1/pods`).
pub fn status(addr: &str, json: bool) -> Result<String, String> {
    let get = |path: &str| -> Result<String, String> {
        let (code, body) = http_get(addr, path)?;
        if code != 200 {
            return Err(format!(
                "GET {path} on {addr}: HTTP {code}: {}",
                body.trim()
            ));
        }
        Ok(body)
    };
    let pool_body = get("/v1/pool")?;
    let pods_body = get("/v1/pods")?;
    if json {
        return Ok(format!(
            "{{\"pool\":{},\"pods\":{}}}\n",
            pool_body.trim(),
            pods_body.trim()
        ));
    }
    let pool: PoolJson = serde_json::from_str(&pool_body)
        .map_err(|e| format!("GET /v1/pool on {addr}: unexpected JSON: {e}"))?;
    let pods: BTreeMap<String, PodJson> = serde_json::from_str(&pods_body)
        .map_err(|e| format!("GET /v1/pods on {addr}: unexpected JSON: {e}"))?;
    Ok(render_status(&pool, &pods, SystemTime::now()))
}

/// `ipamd status` entry point; `args` are the arguments after `status`.
pub fn status_main(args: &[String]) -> ExitCode {
    let mut addr = std::env::var("INTROSPECTION_BIND_ADDRESS")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| crate::config::DEFAULT_INTROSPECTION_BIND_ADDRESS.to_owned());
    let mut json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "-h" | "--help" => {
                println!("{STATUS_USAGE}");
                return ExitCode::SUCCESS;
            }
            "--addr" => match it.next() {
                Some(v) => addr = v.clone(),
                None => {
                    eprintln!("ipamd status: --addr needs a value\n{STATUS_USAGE}");
                    return ExitCode::from(1);
                }
            },
            other => match other.strip_prefix("--addr=") {
                Some(v) => addr = v.to_owned(),
                None => {
                    eprintln!("ipamd status: unknown argument {other:?}\n{STATUS_USAGE}");
                    return ExitCode::from(1);
                }
            },
        }
    }
    match status(&addr, json) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ipamd status: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::daemon::tests::{FakeCloud, core};
    use crate::metrics::{Metrics, parse_text};
    use crate::rpc::Services;
    use awscni_proto::rpc::cni_backend_server::CniBackend;
    use awscni_proto::rpc::{AddNetworkRequest, DelNetworkRequest};
    use ipnet::Ipv4Net;
    use serde_json::Value;
    use tonic::Request;

    fn add_req(c: &str, pod: &str) -> AddNetworkRequest {
        AddNetworkRequest {
            k8s_pod_name: pod.into(),
            k8s_pod_namespace: "default".into(),
            if_name: "eth0".into(),
            network_name: "aws-cni".into(),
            container_id: c.into(),
            client_version: "1.0".into(),
            ..Default::default()
        }
    }

    fn del_req(c: &str, reason: &str) -> DelNetworkRequest {
        DelNetworkRequest {
            if_name: "eth0".into(),
            network_name: "aws-cni".into(),
            container_id: c.into(),
            client_version: "1.0".into(),
            reason: reason.into(),
            ..Default::default()
        }
    }

    /// A core with 9 secondary IPs on the primary ENI, three pods added through the real gRPC
    /// handlers and one of them deleted (so one address is cooling).
    async fn busy_core(
        dir: &std::path::Path,
    ) -> Arc<Core<FakeCloud, crate::daemon::tests::FakeHost>> {
        let c = core(dir, &[], FakeCloud::with_primary(9)).await;
        let svc = Services::new(c.clone(), "1.0");
        for (cid, pod) in [("c1", "web-1"), ("c2", "web-2"), ("c3", "web-3")] {
            let r = svc
                .add_network(Request::new(add_req(cid, pod)))
                .await
                .unwrap()
                .into_inner();
            assert!(r.success);
        }
        svc.del_network(Request::new(del_req("c2", "PodDeleted")))
            .await
            .unwrap();
        // DEL of an unknown pod still counts as a request (upstream counts on entry).
        assert!(
            svc.del_network(Request::new(del_req("nope", "SetupNSFailed")))
                .await
                .is_err()
        );
        c
    }

    fn value(v: &Value, path: &[&str]) -> Value {
        path.iter().fold(v.clone(), |acc, k| {
            acc.get(*k).cloned().unwrap_or(Value::Null)
        })
    }

    #[tokio::test]
    async fn enis_json_matches_the_datastore_field_by_field() {
        let dir = tempfile::tempdir().unwrap();
        let c = busy_core(dir.path()).await;
        let body = route(c.as_ref(), &Extras::default(), "/v1/enis");
        assert_eq!(body.status, 200);
        assert_eq!(body.content_type, "application/json");
        let v: Value = serde_json::from_str(&body.body).unwrap();
        let cards: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(cards, ["0"]);
        let card = &v["0"];
        let (stats, enis, assignments, cp, state) = c.with_ds(|ds| {
            let now = SystemTime::now();
            (
                ds.stats(now),
                ds.enis().cloned().collect::<Vec<_>>(),
                ds.assignments(),
                ds.checkpoint(),
                ds.state(now, &[]),
            )
        });
        assert_eq!(card["TotalIPs"], stats.total());
        assert_eq!(card["AssignedIPs"], stats.assigned());
        assert_eq!(stats.assigned(), 2);
        assert_eq!(card["ENIs"].as_object().unwrap().len(), enis.len());
        for e in &enis {
            let j = &card["ENIs"][&e.id];
            assert_eq!(j["ID"], e.id.as_str());
            assert_eq!(j["IsPrimary"], e.is_primary);
            assert_eq!(j["IsTrunk"], e.trunk);
            assert_eq!(j["IsEFA"], e.efa);
            assert_eq!(j["DeviceNumber"], e.device_number);
            assert_eq!(j["IsExcludedForPodIPs"], e.excluded);
            assert_eq!(j["RouteTableID"], e.route_table());
            // The subnet ID EC2 (here the fake) reports for the ENI.
            let subnet = c
                .cloud()
                .enis
                .lock()
                .unwrap()
                .iter()
                .find(|x| x.eni_id == e.id)
                .map(|x| x.subnet_id.clone())
                .unwrap();
            assert!(subnet.starts_with("subnet-"), "{subnet}");
            assert_eq!(j["SubnetID"], subnet.as_str());
            assert_eq!(j["IPv6Cidrs"], serde_json::json!({}));
            let cidrs = c.with_ds(|ds| ds.eni_cidrs(&e.id));
            let keys: Vec<String> = j["AvailableIPv4Cidrs"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            let mut want: Vec<String> = cidrs.iter().map(|c| c.to_string()).collect();
            want.sort();
            assert_eq!(keys, want);
            for net in &cidrs {
                let cj = &j["AvailableIPv4Cidrs"][net.to_string()];
                assert_eq!(cj["Cidr"]["IP"], net.network().to_string());
                assert_eq!(cj["Cidr"]["Mask"], "/////w==");
                assert_eq!(cj["IsPrefix"], false);
                assert_eq!(cj["AddressFamily"], "4");
            }
        }
        // Assigned addresses: key blanked except the network, metadata, times from the
        // checkpoint.
        for a in &assignments {
            let cidr = Ipv4Net::from(a.addr).to_string();
            let aj = &card["ENIs"][&a.eni]["AvailableIPv4Cidrs"][&cidr]["IPAddresses"]
                [a.addr.to_string()];
            assert_eq!(aj["Address"], a.addr.to_string());
            assert_eq!(
                aj["IPAMKey"],
                serde_json::json!({"networkName": "aws-cni", "containerID": "", "ifName": ""})
            );
            assert_eq!(
                aj["IPAMMetadata"]["k8sPodNamespace"],
                a.meta.namespace.as_str()
            );
            assert_eq!(aj["IPAMMetadata"]["k8sPodName"], a.meta.name.as_str());
            let ts = cp
                .allocations
                .iter()
                .find(|x| x.ipv4 == a.addr.to_string())
                .unwrap()
                .allocation_timestamp;
            assert_eq!(
                aj["AssignedTime"],
                rfc3339(Some(from_unix_nanos(ts))).as_str()
            );
            assert_eq!(aj["UnassignedTime"], ZERO_TIME);
        }
        // The released address: cooling, zero assigned time, empty key and metadata.
        assert_eq!(state.cooldown.len(), 1);
        let cool = &state.cooldown[0];
        let addr: Ipv4Addr = cool.ipv4.parse().unwrap();
        let eni = c.with_ds(|ds| {
            ds.enis()
                .find(|e| ds.eni_cidrs(&e.id).iter().any(|n| n.contains(&addr)))
                .unwrap()
                .id
                .clone()
        });
        let aj = value(
            card,
            &[
                "ENIs",
                &eni,
                "AvailableIPv4Cidrs",
                &format!("{addr}/32"),
                "IPAddresses",
                &cool.ipv4,
            ],
        );
        assert_eq!(aj["AssignedTime"], ZERO_TIME);
        assert_eq!(
            aj["UnassignedTime"],
            rfc3339(Some(from_unix_nanos(cool.released_at))).as_str()
        );
        assert_eq!(
            aj["IPAMKey"],
            serde_json::json!({"networkName": "", "containerID": "", "ifName": ""})
        );
        assert_eq!(aj["IPAMMetadata"], serde_json::json!({}));
        // Upstream's field order inside an ENI object.
        let raw = &body.body;
        let order = [
            "\"ID\"",
            "\"IsPrimary\"",
            "\"IsTrunk\"",
            "\"IsEFA\"",
            "\"DeviceNumber\"",
            "\"AvailableIPv4Cidrs\"",
            "\"IPv6Cidrs\"",
            "\"IsExcludedForPodIPs\"",
            "\"RouteTableID\"",
            "\"SubnetID\"",
        ];
        let pos: Vec<usize> = order.iter().map(|k| raw.find(k).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
    }

    #[tokio::test]
    async fn pods_and_pool_match_the_datastore() {
        let dir = tempfile::tempdir().unwrap();
        let c = busy_core(dir.path()).await;
        let pods: BTreeMap<String, PodJson> =
            serde_json::from_str(&route(c.as_ref(), &Extras::default(), "/v1/pods").body).unwrap();
        let assignments = c.with_ds(|ds| ds.assignments());
        assert_eq!(pods.len(), assignments.len());
        for a in &assignments {
            let key = format!(
                "{}_{}_{}",
                a.meta.name, a.meta.namespace, a.key.container_id
            );
            let p = &pods[&key];
            assert_eq!(p.ip, a.addr.to_string());
            assert_eq!(p.eni, a.eni);
            assert_eq!(p.container_id, a.key.container_id);
            assert_eq!(p.if_name, "eth0");
            assert_eq!(p.network_name, "aws-cni");
            assert_eq!(p.device_number, a.device_number);
            assert_eq!(p.route_table_id, a.route_table);
            assert_ne!(p.assigned_time, ZERO_TIME);
        }
        let pool: PoolJson =
            serde_json::from_str(&route(c.as_ref(), &Extras::default(), "/v1/pool/").body).unwrap();
        let st = c.with_ds(|ds| ds.stats(SystemTime::now()));
        assert_eq!(
            (pool.total, pool.assigned, pool.free, pool.cooling),
            (st.total(), st.assigned(), st.free(), st.cooling())
        );
        assert_eq!((pool.assigned, pool.cooling), (2, 1));
        assert_eq!(pool.max_pods, 29);
        assert_eq!(pool.max_enis, 3);
        assert_eq!(pool.warm_eni_target, 1);
        assert_eq!(pool.enis.len(), st.enis.len());
        assert_eq!(pool.enis[0].id, "eni-0");
        assert_eq!(pool.enis[0].route_table_id, 254);
        assert_eq!(pool.enis[0].assigned, 2);
        assert!(pool.enis[0].is_primary);
        assert_eq!(pool.instance_type, "m5.large");
        // Rendered for an operator.
        let text = render_status(&pool, &pods, SystemTime::now());
        assert!(text.contains("max pods 29"), "{text}");
        assert!(
            text.contains(&format!(
                "{} total, 2 used, {} free, 1 cooling",
                st.total(),
                st.free()
            )),
            "{text}"
        );
        let eni_row = text
            .lines()
            .find(|l| l.starts_with("eni-0 "))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>();
        assert_eq!(
            eni_row,
            [
                "eni-0",
                "0",
                "254",
                "9",
                "9",
                "2",
                &st.free().to_string(),
                "1",
                "primary"
            ]
        );
        for a in &assignments {
            let row = text
                .lines()
                .find(|l| l.starts_with(&format!("default/{} ", a.meta.name)))
                .unwrap();
            assert!(row.contains(&a.addr.to_string()), "{row}");
            assert!(row.contains(&a.eni), "{row}");
        }
        assert!(!text.contains("EC2 errors"));
    }

    #[test]
    fn status_lists_ec2_errors_and_decisions() {
        let pool = PoolJson {
            ready: false,
            instance_id: String::new(),
            instance_type: String::new(),
            prefix_delegation: true,
            warm_eni_target: 1,
            warm_ip_target: 0,
            minimum_ip_target: 0,
            warm_prefix_target: 1,
            max_pods: 110,
            max_enis: 3,
            total: 0,
            assigned: 0,
            free: 0,
            cooling: 0,
            prefixes: 0,
            pending_adds: 2,
            enis: vec![],
            last_decision: Some(DecisionJson {
                time: ZERO_TIME.into(),
                action: "grow".into(),
                reason: "pending_adds".into(),
                detail: "new ENI with 1 Prefix".into(),
            }),
            last_pool_error: Some(
                "CreateNetworkInterface: InsufficientFreeAddressesInSubnet".into(),
            ),
            ec2_errors: BTreeMap::from([(
                "CreateNetworkInterface".to_owned(),
                BTreeMap::from([("InsufficientFreeAddressesInSubnet".to_owned(), 3)]),
            )]),
        };
        let t = render_status(&pool, &BTreeMap::new(), SystemTime::now());
        assert!(t.contains("NOT ready"), "{t}");
        assert!(t.contains("prefix delegation"), "{t}");
        assert!(t.contains("pending ADDs 2"), "{t}");
        assert!(t.contains("Last pool decision: grow (pending_adds)"), "{t}");
        assert!(t.contains("Last pool error: CreateNetworkInterface"), "{t}");
        assert!(t.contains("No pods."), "{t}");
        let row = t
            .lines()
            .find(|l| l.starts_with("CreateNetworkInterface "))
            .unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            [
                "CreateNetworkInterface",
                "InsufficientFreeAddressesInSubnet",
                "3"
            ]
        );
    }

    #[tokio::test]
    async fn metrics_match_the_datastore_and_counters() {
        let dir = tempfile::tempdir().unwrap();
        let c = busy_core(dir.path()).await;
        let m = Metrics::new(c.clone(), Extras::default(), "v9.9.9").unwrap();
        let text = m.render();
        let (samples, types) = parse_text(&text).unwrap();
        let get = |name: &str, labels: &[(&str, &str)]| -> f64 {
            samples
                .iter()
                .find(|s| {
                    s.name == name
                        && s.labels.len() == labels.len()
                        && labels
                            .iter()
                            .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .unwrap_or_else(|| panic!("{name} {labels:?} missing in\n{text}"))
                .value
        };
        let st = c.with_ds(|ds| ds.stats(SystemTime::now()));
        assert_eq!(get("awscni_eni_max", &[]), 3.0);
        assert_eq!(get("awscni_ip_max", &[]), 27.0);
        assert_eq!(get("awscni_eni_allocated", &[]), st.enis.len() as f64);
        assert_eq!(get("awscni_total_ip_addresses", &[]), st.total() as f64);
        assert_eq!(get("awscni_assigned_ip_addresses", &[]), 2.0);
        assert_eq!(get("awscni_total_ipv4_prefixes", &[]), 0.0);
        assert_eq!(get("awscni_free_ip_addresses", &[]), st.free() as f64);
        assert_eq!(get("awscni_cooling_ip_addresses", &[]), 1.0);
        assert_eq!(get("awscni_max_pods", &[]), 29.0);
        assert_eq!(get("awscni_assigned_ip_per_eni", &[("eni", "eni-0")]), 2.0);
        for a in c.with_ds(|ds| ds.assignments()) {
            let cidr = Ipv4Net::from(a.addr).to_string();
            assert_eq!(get("awscni_assigned_ip_per_cidr", &[("cidr", &cidr)]), 1.0);
        }
        let per_cidr: f64 = samples
            .iter()
            .filter(|s| s.name == "awscni_assigned_ip_per_cidr")
            .map(|s| s.value)
            .sum();
        assert_eq!(per_cidr, 2.0);
        assert_eq!(
            get(
                "awscni_build_info",
                &[("version", "v9.9.9"), ("goversion", "rust")]
            ),
            1.0
        );
        assert_eq!(get("awscni_add_ip_req_count", &[]), 3.0);
        assert_eq!(
            get("awscni_del_ip_req_count", &[("reason", "PodDeleted")]),
            1.0
        );
        assert_eq!(
            get("awscni_del_ip_req_count", &[("reason", "SetupNSFailed")]),
            1.0
        );
        assert_eq!(get("awscni_no_available_ip_addresses", &[]), 0.0);
        assert_eq!(get("awscni_force_removed_ips", &[]), 0.0);
        assert_eq!(get("awscni_force_removed_enis", &[]), 0.0);
        assert_eq!(get("awscni_ready", &[]), 0.0);
        // Upstream kinds, and counters keep upstream's names (no `_total`).
        assert_eq!(types["awscni_add_ip_req_count"], "counter");
        assert_eq!(types["awscni_del_ip_req_count"], "counter");
        assert_eq!(types["awscni_eni_max"], "gauge");
        assert_eq!(types["awscni_add_ip_wait_seconds"], "histogram");
        assert!(!text.contains("awscni_add_ip_req_count_total"));
        // Process collector.
        assert!(get("process_resident_memory_bytes", &[]) > 0.0);
        assert!(get("process_open_fds", &[]) > 0.0);
        assert!(get("process_start_time_seconds", &[]) > 1.6e9);
        // Scrape time: a new pod shows up in the next scrape without any other plumbing.
        let svc = Services::new(c.clone(), "1.0");
        svc.add_network(Request::new(add_req("c9", "web-9")))
            .await
            .unwrap();
        let (samples, _) = parse_text(&m.render()).unwrap();
        let assigned = samples
            .iter()
            .find(|s| s.name == "awscni_assigned_ip_addresses")
            .unwrap()
            .value;
        assert_eq!(assigned, 3.0);
    }

    #[tokio::test]
    async fn empty_pool_add_wait_and_pool_decision_are_exported() {
        let dir = tempfile::tempdir().unwrap();
        let c = core(dir.path(), &[], FakeCloud::with_primary(0)).await;
        *c.cloud().create_delay.lock().unwrap() = Duration::from_millis(20);
        let pm = tokio::spawn(c.clone().pool_manager());
        let svc = Services::new(c.clone(), "1.0");
        let r = svc
            .add_network(Request::new(add_req("c1", "p1")))
            .await
            .unwrap()
            .into_inner();
        assert!(r.success);
        c.stop();
        pm.await.unwrap();
        let (samples, _) = parse_text(
            &Metrics::new(c.clone(), Extras::default(), "v")
                .unwrap()
                .render(),
        )
        .unwrap();
        let get = |name: &str| {
            samples
                .iter()
                .filter(|s| s.name == name)
                .map(|s| s.value)
                .sum::<f64>()
        };
        assert_eq!(get("awscni_no_available_ip_addresses"), 1.0);
        assert_eq!(get("awscni_add_ip_wait_seconds_count"), 1.0);
        assert!(get("awscni_add_ip_wait_seconds_sum") > 0.0);
        assert!(get("awscni_pool_decisions") >= 1.0);
        assert!(samples.iter().any(|s| s.name == "awscni_pool_decisions"
            && s.labels.get("action").map(String::as_str) == Some("grow")));
        let pool: PoolJson =
            serde_json::from_str(&route(c.as_ref(), &Extras::default(), "/v1/pool").body).unwrap();
        let d = pool.last_decision.unwrap();
        assert!(d.action == "grow" || d.action == "release", "{d:?}");
        assert!(!d.detail.is_empty());
    }

    #[tokio::test]
    async fn paths_and_env_settings() {
        let dir = tempfile::tempdir().unwrap();
        let c = core(
            dir.path(),
            &[
                (
                    "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
                    "192.168.0.0/16,10.9.0.0/16",
                ),
                ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "hashrandom"),
                ("WARM_IP_TARGET", "5"),
            ],
            FakeCloud::with_primary(2),
        )
        .await;
        let ex = Extras::default();
        let root: Value = serde_json::from_str(&route(c.as_ref(), &ex, "/").body).unwrap();
        let cmds: Vec<&str> = root["AvailableCommands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(cmds, PATHS);
        let mut sorted = cmds.clone();
        sorted.sort();
        assert_eq!(cmds, sorted);
        for p in PATHS.iter().filter(|p| **p != "/v1/eni-configs") {
            assert_eq!(route(c.as_ref(), &ex, p).status, 200, "{p}");
        }
        assert_eq!(route(c.as_ref(), &ex, "/v1/eni-configs").status, 404);
        assert_eq!(route(c.as_ref(), &ex, "/v1/nothing").status, 404);
        let n: Value =
            serde_json::from_str(&route(c.as_ref(), &ex, "/v1/networkutils-env-settings").body)
                .unwrap();
        assert_eq!(n["AWS_VPC_K8S_CNI_RANDOMIZESNAT"], 1);
        assert_eq!(n["AWS_VPC_K8S_CNI_CONNMARK"], 128);
        assert_eq!(n["AWS_VPC_ENI_MTU"], 9001);
        assert_eq!(n["AWS_VPC_K8S_CNI_EXTERNALSNAT"], false);
        assert_eq!(n["AWS_VPC_CNI_NODE_PORT_SUPPORT"], true);
        assert_eq!(n["AWS_VPC_K8S_CNI_VETHPREFIX"], "eni");
        assert_eq!(
            n["AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS"],
            serde_json::json!(["192.168.0.0/16", "10.9.0.0/16"])
        );
        assert_eq!(n["AWS_EXTERNAL_SERVICE_CIDRS"], Value::Null);
        let e: Value =
            serde_json::from_str(&route(c.as_ref(), &ex, "/v1/ipamd-env-settings").body).unwrap();
        assert_eq!(e["WARM_IP_TARGET"], "5");
        assert_eq!(e["WARM_ENI_TARGET"], "1");
        assert_eq!(e["AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG"], "false");
        assert_eq!(e["ENABLE_SUBNET_DISCOVERY"], "true");
    }

    #[test]
    fn eni_limit_honours_max_eni_and_unmanaged_enis() {
        let mut l = crate::daemon::tests::M5_LARGE;
        let mut cfg = Config::default();
        assert_eq!(effective_max_enis(&l, &cfg), 3);
        cfg.pool.max_eni = Some(2);
        assert_eq!(effective_max_enis(&l, &cfg), 2);
        l.unmanaged_enis = 1;
        assert_eq!(effective_max_enis(&l, &cfg), 1);
        cfg.pool.max_eni = Some(9);
        assert_eq!(effective_max_enis(&l, &cfg), 2);
        l.unmanaged_enis = 5;
        assert_eq!(effective_max_enis(&l, &cfg), 0);
    }

    #[test]
    fn go_compatible_encodings() {
        assert_eq!(base64(&[255, 255, 255, 255]), "/////w==");
        assert_eq!(base64(&[255, 255, 255, 240]), "////8A==");
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
        assert_eq!(rfc3339(None), ZERO_TIME);
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_000_000);
        assert_eq!(rfc3339(Some(t)), "2023-11-14T22:13:20.123Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(Some(t)), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(
            decode_chunked(b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n").unwrap(),
            b"Wikipedia"
        );
        assert!(decode_chunked(b"zz\r\n").is_none());
        assert!(decode_chunked(b"9\r\nshort\r\n").is_none());
    }
}
