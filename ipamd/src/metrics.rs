//! Prometheus metrics on `:61678/metrics` (operations.md §1).
//!
//! Names, kinds and labels are upstream's, so dashboards and alerts written for aws-node keep
//! working; ours (EC2 rate limiter, ADD waits, pool decisions, EC2 calls by result) sit beside
//! them under the same `awscni_` prefix. The exposition is Prometheus text format 0.0.4, as
//! upstream's Go client writes it: counters keep their names (no `_total` suffix is added).
//!
//! Nothing here is updated on the hot path except a handful of atomics in
//! [`crate::daemon::Counters`]: every family is computed from a [`Snapshot`] of the datastore
//! and those counters *at scrape time*, so the gauges always match the datastore exactly and a
//! metric cannot drift from the state it describes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};

use crate::ec2::{Ec2Stats, LatencyByOutcome};
use crate::introspect::{Observe, Snapshot};
use crate::limiter::TokenBucket;
use crate::pool::{Decision, Grow};

/// Default metrics listen address (upstream: all interfaces, port 61678).
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:61678";

// ---------------------------------------------------------------------------------------------
// Event counters fed by the daemon (kept in `daemon::Counters`)

/// Upper bounds (seconds) of [`WaitHistogram`] buckets: an ADD normally waits one EC2 round
/// trip (~0.1–2 s); the plugin gives up after `AWS_VPC_CNI_ADD_WAIT_MS` (5 s by default).
pub const WAIT_BUCKETS: [f64; 9] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0];

/// A lock-free histogram of durations with the fixed [`WAIT_BUCKETS`].
#[derive(Debug, Default)]
pub struct WaitHistogram {
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: [AtomicU64; WAIT_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// A copy of a [`WaitHistogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramValues {
    /// Cumulative counts per bucket of [`WAIT_BUCKETS`] (`+Inf` is `count`).
    pub cumulative: Vec<u64>,
    /// Observations.
    pub count: u64,
    /// Sum of the observations, seconds.
    pub sum_seconds: f64,
}

impl Default for HistogramValues {
    /// Empty: every bucket present with a zero count (so the exposition lists them all).
    fn default() -> Self {
        Self {
            cumulative: vec![0; WAIT_BUCKETS.len()],
            count: 0,
            sum_seconds: 0.0,
        }
    }
}

impl WaitHistogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = WAIT_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(WAIT_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Current values.
    pub fn values(&self) -> HistogramValues {
        let mut acc = 0;
        let cumulative = WAIT_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, _)| {
                acc += self.buckets[i].load(Ordering::Relaxed);
                acc
            })
            .collect();
        HistogramValues {
            cumulative,
            count: self.count.load(Ordering::Relaxed),
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

impl HistogramValues {
    /// The histogram of `observations` (seconds) over the upper bounds `buckets`.
    pub fn of(buckets: &[f64], observations: &[f64]) -> Self {
        Self {
            cumulative: buckets
                .iter()
                .map(|b| observations.iter().filter(|o| **o <= *b).count() as u64)
                .collect(),
            count: observations.len() as u64,
            sum_seconds: observations.iter().sum(),
        }
    }
}

/// Upper bounds (seconds) of the start-up histograms
/// (`awscni_ipamd_startup_duration_seconds`, `awscni_ipamd_node_initialization_duration_seconds`):
/// a restart that restores a checkpoint serves in well under a second; a fresh node waits for
/// its first ENI fill (an EC2 attach is seconds; the first fill is bounded at 60 s before we
/// serve anyway); beyond that something is wrong.
pub const STARTUP_BUCKETS: [f64; 10] = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];

/// How long this process took to start (one observation each per process, as upstream).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StartupValues {
    /// Process start (the start of `daemon::run`) to serving gRPC, once done.
    pub startup: Option<Duration>,
    /// Node initialisation (ENI discovery, datastore, restore, host set-up, first fill), once done.
    pub node_init: Option<Duration>,
}

/// Start-up durations recorded by the daemon (metrics hook in `daemon::run`).
#[derive(Debug, Default)]
pub struct StartupDurations {
    inner: Mutex<StartupValues>,
}

impl StartupDurations {
    /// Records a successful start-up: `startup` from process start to serving, `node_init` the
    /// node initialisation part of it.
    ///
    /// Only successes are recorded: a failed start exits the process (its supervisor restarts
    /// it) before any scrape could see a failure sample.
    pub fn record(&self, startup: Duration, node_init: Duration) {
        *lock(&self.inner) = StartupValues {
            startup: Some(startup),
            node_init: Some(node_init),
        };
    }

    /// Current values.
    pub fn values(&self) -> StartupValues {
        *lock(&self.inner)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters only: a panic elsewhere cannot leave them inconsistent in a way that matters.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A counter by one free-form label value (DEL reasons).
#[derive(Debug, Default)]
pub struct LabelCounter {
    inner: Mutex<BTreeMap<String, u64>>,
}

impl LabelCounter {
    /// Adds one for `label`. The number of distinct labels is capped so that a misbehaving
    /// client cannot grow the metric without bound.
    pub fn inc(&self, label: &str) {
        let mut m = lock(&self.inner);
        if let Some(v) = m.get_mut(label) {
            *v += 1;
        } else if m.len() < 64 {
            m.insert(label.to_owned(), 1);
        } else {
            *m.entry("other".to_owned()).or_default() += 1;
        }
    }

    /// Current values by label.
    pub fn values(&self) -> BTreeMap<String, u64> {
        lock(&self.inner).clone()
    }
}

/// Upstream's `awscni_ipamd_action_inprogress{fn}` functions.
pub const ACTIONS: [&str; 4] = [
    "nodeInit",
    "increaseDatastorePool",
    "decreaseDatastorePool",
    "nodeIPPoolReconcile",
];

/// How many instances of each long-running action run right now (growth runs concurrently).
#[derive(Debug, Default)]
pub struct InProgress {
    running: [std::sync::atomic::AtomicUsize; ACTIONS.len()],
}

/// Marks an action as running until dropped.
#[derive(Debug)]
pub struct InProgressGuard<'a> {
    slot: Option<&'a std::sync::atomic::AtomicUsize>,
}

impl Drop for InProgressGuard<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.slot {
            s.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl InProgress {
    /// Marks `action` (one of [`ACTIONS`]; others are ignored) as running until the guard drops.
    pub fn enter(&self, action: &str) -> InProgressGuard<'_> {
        let slot = ACTIONS
            .iter()
            .position(|a| *a == action)
            .map(|i| &self.running[i]);
        if let Some(s) = slot {
            s.fetch_add(1, Ordering::Relaxed);
        }
        debug_assert!(slot.is_some(), "unknown action {action}");
        InProgressGuard { slot }
    }

    /// Running count per action, in [`ACTIONS`] order.
    pub fn values(&self) -> [usize; ACTIONS.len()] {
        std::array::from_fn(|i| self.running[i].load(Ordering::Relaxed))
    }
}

/// The last pool decision, for `/v1/pool` and `ipamd status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastDecision {
    /// When it was taken.
    pub at: SystemTime,
    /// `grow`, `grow_deferred`, `release` or `delete_eni`.
    pub action: &'static str,
    /// Why (see [`PoolDecisions::record`]).
    pub reason: &'static str,
    /// What exactly.
    pub detail: String,
}

/// Pool-manager decisions by action and reason (ours: `awscni_pool_decisions`).
#[derive(Debug, Default)]
pub struct PoolDecisions {
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    last: Mutex<Option<LastDecision>>,
}

fn describe_grow(g: &Grow) -> String {
    match g {
        Grow::Existing { eni, count, kind } => format!("+{count} {kind:?} on {eni}"),
        Grow::NewEni { count, kind } => format!("new ENI with {count} {kind:?}"),
    }
}

impl PoolDecisions {
    /// Records what one planning round decided. Rounds that change nothing are not counted
    /// (the manager plans every 5 s; counting no-ops would drown the signal).
    pub fn record(&self, d: &Decision, pending: usize, backoff: bool) {
        let (action, reason, detail) = if !d.grow.is_empty() {
            let what: Vec<String> = d.grow.iter().map(describe_grow).collect();
            let reason = if pending > 0 {
                "pending_adds"
            } else {
                "below_target"
            };
            if backoff {
                (
                    "grow_deferred",
                    "insufficient_capacity_backoff",
                    what.join(", "),
                )
            } else {
                ("grow", reason, what.join(", "))
            }
        } else if !d.release.is_empty() {
            let what: Vec<String> = d.release.iter().map(|r| r.cidr.to_string()).collect();
            ("release", "above_target", what.join(", "))
        } else if !d.delete_enis.is_empty() {
            ("delete_eni", "unused", d.delete_enis.join(", "))
        } else {
            return;
        };
        *lock(&self.counts).entry((action, reason)).or_default() += 1;
        *lock(&self.last) = Some(LastDecision {
            at: SystemTime::now(),
            action,
            reason,
            detail,
        });
    }

    /// Counts by (action, reason).
    pub fn counts(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        lock(&self.counts).clone()
    }

    /// The most recent decision.
    pub fn last(&self) -> Option<LastDecision> {
        lock(&self.last).clone()
    }
}

// ---------------------------------------------------------------------------------------------
// The metric table: one source of truth for names, kinds, labels and help (docs are tested
// against it).

/// Kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Gauge.
    Gauge,
    /// Counter.
    Counter,
    /// Summary (count and sum only).
    Summary,
    /// Histogram.
    Histogram,
}

/// One metric family we export.
#[derive(Debug, Clone, Copy)]
pub struct FamilySpec {
    /// Exported name.
    pub name: &'static str,
    /// Kind.
    pub kind: Kind,
    /// Label names.
    pub labels: &'static [&'static str],
    /// `# HELP` text.
    pub help: &'static str,
    /// Upstream's name (true) or ours.
    pub upstream: bool,
}

const fn up(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> FamilySpec {
    FamilySpec {
        name,
        kind,
        labels,
        help,
        upstream: true,
    }
}

const fn ours(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> FamilySpec {
    FamilySpec {
        upstream: false,
        ..up(name, kind, labels, help)
    }
}

use Kind::{Counter, Gauge, Histogram, Summary};

/// Every `awscni_*` family, in exposition order.
pub const FAMILIES: &[FamilySpec] = &[
    up(
        "awscni_eni_max",
        Gauge,
        &[],
        "The maximum number of ENIs that can be attached to the instance, accounting for unmanaged ENIs",
    ),
    up(
        "awscni_ip_max",
        Gauge,
        &[],
        "The maximum number of IP addresses that can be allocated to the instance",
    ),
    up(
        "awscni_eni_allocated",
        Gauge,
        &[],
        "The number of ENIs allocated",
    ),
    up(
        "awscni_total_ip_addresses",
        Gauge,
        &[],
        "The total number of IP addresses",
    ),
    up(
        "awscni_assigned_ip_addresses",
        Gauge,
        &[],
        "The number of IP addresses assigned to pods",
    ),
    up(
        "awscni_total_ipv4_prefixes",
        Gauge,
        &[],
        "The total number of IPv4 prefixes",
    ),
    up(
        "awscni_assigned_ip_per_cidr",
        Gauge,
        &["cidr"],
        "The total number of IP addresses assigned per cidr",
    ),
    up(
        "awscni_assigned_ip_per_eni",
        Gauge,
        &["eni"],
        "The number of IP addresses assigned per ENI",
    ),
    up(
        "awscni_build_info",
        Gauge,
        &["version", "goversion"],
        "VPC CNI build information (goversion carries the Rust toolchain)",
    ),
    up(
        "awscni_ipamd_action_inprogress",
        Gauge,
        &["fn"],
        "The number of ipamd actions in progress",
    ),
    up(
        "awscni_add_ip_req_count",
        Counter,
        &[],
        "The number of add IP address requests",
    ),
    up(
        "awscni_del_ip_req_count",
        Counter,
        &["reason"],
        "The number of delete IP address requests",
    ),
    up(
        "awscni_no_available_ip_addresses",
        Counter,
        &[],
        "The number of pod IP assignments that found no available IP address",
    ),
    up(
        "awscni_force_removed_ips",
        Counter,
        &[],
        "The number of IPs force removed while they had assigned pods",
    ),
    up(
        "awscni_force_removed_enis",
        Counter,
        &[],
        "The number of ENIs force removed while they had assigned pods",
    ),
    up(
        "awscni_ipamd_error_count",
        Counter,
        &["fn"],
        "The number of errors encountered in ipamd",
    ),
    up(
        "awscni_reconcile_count",
        Counter,
        &["fn"],
        "The number of times ipamd reconciles on ENIs and IP/prefix addresses",
    ),
    up(
        "awscni_ec2api_req_count",
        Counter,
        &["fn"],
        "The number of requests made to EC2 APIs by CNI",
    ),
    up(
        "awscni_ec2api_error_count",
        Counter,
        &["fn"],
        "The number of failed EC2 APIs requests",
    ),
    up(
        "awscni_aws_api_error_count",
        Counter,
        &["api", "error"],
        "The number of times AWS API returns an error",
    ),
    up(
        "awscni_aws_api_latency_ms",
        Summary,
        &["api", "error", "status"],
        "AWS API call latency in ms (EC2 attempts; limiter wait excluded)",
    ),
    up(
        "awscni_aws_utils_error_count",
        Counter,
        &["fn", "error"],
        "The number of errors not handled in awsutils library",
    ),
    up(
        "awscni_ipamd_startup_duration_seconds",
        Histogram,
        &["success", "with_api_server", "failure_reason"],
        "Time from ipamd process start to serving gRPC",
    ),
    up(
        "awscni_ipamd_node_initialization_duration_seconds",
        Histogram,
        &["success"],
        "Time taken by node initialisation (ENI discovery, datastore restore, host set-up, first fill)",
    ),
    up(
        "awscni_connmark_backend",
        Gauge,
        &["backend"],
        "The connmark backend in use (1 for the active one)",
    ),
    ours(
        "awscni_max_pods",
        Gauge,
        &[],
        "Max pods this node supports, as computed by ipamd",
    ),
    ours(
        "awscni_free_ip_addresses",
        Gauge,
        &[],
        "Addresses that can be assigned now (cooling ones excluded)",
    ),
    ours(
        "awscni_cooling_ip_addresses",
        Gauge,
        &[],
        "Released addresses still in their cooldown",
    ),
    ours(
        "awscni_pending_add_requests",
        Gauge,
        &[],
        "ADD requests waiting for the pool manager right now",
    ),
    ours(
        "awscni_ready",
        Gauge,
        &[],
        "1 once node initialisation is done and ipamd serves",
    ),
    ours(
        "awscni_add_ip_no_address_count",
        Counter,
        &[],
        "ADD requests answered without an address after waiting",
    ),
    ours(
        "awscni_add_ip_wait_seconds",
        Histogram,
        &[],
        "How long ADD requests that found the pool empty waited for an address",
    ),
    ours(
        "awscni_pool_decisions",
        Counter,
        &["action", "reason"],
        "Pool manager decisions by action and reason",
    ),
    ours(
        "awscni_pool_passes",
        Counter,
        &[],
        "Pool manager passes run",
    ),
    ours(
        "awscni_prefix_fallbacks",
        Counter,
        &[],
        "Prefix requests that fell back to secondary IPs",
    ),
    ours(
        "awscni_ec2api_call_count",
        Counter,
        &["fn", "result"],
        "EC2 attempts by operation and result (success or the AWS error code)",
    ),
    ours(
        "awscni_ec2api_throttle_count",
        Counter,
        &["fn"],
        "EC2 attempts that were throttled",
    ),
    ours(
        "awscni_ec2api_retry_count",
        Counter,
        &["fn"],
        "EC2 attempts that retried an earlier failure",
    ),
    ours(
        "awscni_ec2api_latency_max_ms",
        Gauge,
        &["fn"],
        "Slowest EC2 attempt so far, ms",
    ),
    ours(
        "awscni_ec2_limiter_wait_seconds",
        Counter,
        &[],
        "Total time EC2 calls waited for the client-side token bucket",
    ),
    ours(
        "awscni_ec2_limiter_wait_max_seconds",
        Gauge,
        &[],
        "Longest single wait for the token bucket",
    ),
    ours(
        "awscni_ec2_limiter_tokens",
        Counter,
        &[],
        "Tokens handed out by the EC2 token bucket",
    ),
    ours(
        "awscni_ec2_limiter_qps",
        Gauge,
        &[],
        "Configured sustained EC2 rate (AWS_VPC_CNI_EC2_QPS)",
    ),
    ours(
        "awscni_ec2_limiter_burst",
        Gauge,
        &[],
        "Configured EC2 burst (AWS_VPC_CNI_EC2_BURST)",
    ),
];

/// Process collector families (names as every Prometheus client exports them).
pub const PROCESS_FAMILIES: &[FamilySpec] = &[
    ours(
        "process_cpu_seconds_total",
        Counter,
        &[],
        "Total user and system CPU time spent in seconds.",
    ),
    ours(
        "process_resident_memory_bytes",
        Gauge,
        &[],
        "Resident memory size in bytes.",
    ),
    ours(
        "process_virtual_memory_bytes",
        Gauge,
        &[],
        "Virtual memory size in bytes.",
    ),
    ours(
        "process_open_fds",
        Gauge,
        &[],
        "Number of open file descriptors.",
    ),
    ours(
        "process_max_fds",
        Gauge,
        &[],
        "Maximum number of open file descriptors.",
    ),
    ours(
        "process_start_time_seconds",
        Gauge,
        &[],
        "Start time of the process since unix epoch in seconds.",
    ),
    ours(
        "process_threads",
        Gauge,
        &[],
        "Number of OS threads in the process.",
    ),
];

fn spec(name: &str) -> Option<&'static FamilySpec> {
    FAMILIES
        .iter()
        .chain(PROCESS_FAMILIES)
        .find(|f| f.name == name)
}

/// Collects samples by family name and turns them into protobuf-model families.
#[derive(Default)]
struct Builder {
    fams: BTreeMap<&'static str, Vec<proto::Metric>>,
}

fn labels(spec: &FamilySpec, values: &[&str]) -> Vec<proto::LabelPair> {
    spec.labels
        .iter()
        .zip(values)
        .map(|(n, v)| {
            let mut p = proto::LabelPair::default();
            p.set_name((*n).to_owned());
            p.set_value((*v).to_owned());
            p
        })
        .collect()
}

impl Builder {
    fn push(&mut self, name: &str, values: &[&str], fill: impl FnOnce(&mut proto::Metric)) {
        let Some(s) = spec(name) else {
            debug_assert!(false, "metric {name} is not in the table");
            return;
        };
        debug_assert_eq!(s.labels.len(), values.len(), "labels of {name}");
        let mut m = proto::Metric::from_label(labels(s, values));
        fill(&mut m);
        self.fams.entry(s.name).or_default().push(m);
    }

    fn value(&mut self, name: &str, values: &[&str], v: f64) {
        let kind = spec(name).map(|s| s.kind);
        self.push(name, values, |m| {
            if kind == Some(Kind::Counter) {
                let mut c = proto::Counter::default();
                c.set_value(v);
                m.set_counter(c);
            } else {
                let mut g = proto::Gauge::default();
                g.set_value(v);
                m.set_gauge(g);
            }
        });
    }

    fn summary(&mut self, name: &str, values: &[&str], count: u64, sum: f64) {
        self.push(name, values, |m| {
            let mut s = proto::Summary::default();
            s.set_sample_count(count);
            s.set_sample_sum(sum);
            m.set_summary(s);
        });
    }

    /// One `awscni_aws_api_latency_ms` series per `(error, status)` of `api` (EC2 actions and
    /// IMDS reads alike), in milliseconds.
    fn latency_summaries(&mut self, api: &str, by_outcome: &LatencyByOutcome) {
        for ((failed, status), l) in by_outcome {
            self.summary(
                "awscni_aws_api_latency_ms",
                &[api, if *failed { "true" } else { "false" }, status],
                l.count,
                l.total.as_secs_f64() * 1e3,
            );
        }
    }

    fn histogram(&mut self, name: &str, values: &[&str], buckets: &[f64], h: &HistogramValues) {
        debug_assert_eq!(buckets.len(), h.cumulative.len(), "buckets of {name}");
        self.push(name, values, |m| {
            let mut p = proto::Histogram::default();
            p.set_sample_count(h.count);
            p.set_sample_sum(h.sum_seconds);
            p.set_bucket(
                buckets
                    .iter()
                    .zip(&h.cumulative)
                    .map(|(ub, c)| {
                        let mut b = proto::Bucket::default();
                        b.set_upper_bound(*ub);
                        b.set_cumulative_count(*c);
                        b
                    })
                    .collect(),
            );
            m.set_histogram(p);
        });
    }

    fn families(self, table: &[FamilySpec]) -> Vec<MetricFamily> {
        let mut fams = self.fams;
        table
            .iter()
            .filter_map(|s| {
                let metrics = fams.remove(s.name)?;
                let mut f = MetricFamily::default();
                f.set_name(s.name.to_owned());
                f.set_help(s.help.to_owned());
                f.set_field_type(match s.kind {
                    Kind::Gauge => MetricType::GAUGE,
                    Kind::Counter => MetricType::COUNTER,
                    Kind::Summary => MetricType::SUMMARY,
                    Kind::Histogram => MetricType::HISTOGRAM,
                });
                f.set_metric(metrics);
                Some(f)
            })
            .collect()
    }
}

fn descs(table: &[FamilySpec]) -> Vec<Desc> {
    table
        .iter()
        .filter_map(|s| {
            Desc::new(
                s.name.to_owned(),
                s.help.to_owned(),
                s.labels.iter().map(|l| (*l).to_owned()).collect(),
                Default::default(),
            )
            .ok()
        })
        .collect()
}

/// Optional sources outside the [`Core`](crate::daemon::Core): the EC2 client's counters and
/// its token bucket (absent in IMDS-only mode and in tests without EC2).
#[derive(Clone, Default)]
pub struct Extras {
    /// Per-action EC2 counters.
    pub ec2: Option<Arc<Ec2Stats>>,
    /// The EC2 token bucket.
    pub limiter: Option<Arc<TokenBucket>>,
    /// IMDS read latencies (`api="GetMetadata"` of `awscni_aws_api_latency_ms`).
    pub imds: Option<Arc<crate::imds::ImdsStats>>,
}

/// Version label of `awscni_build_info`'s `goversion`: the Rust toolchain we require.
fn toolchain() -> String {
    match option_env!("CARGO_PKG_RUST_VERSION") {
        Some(v) if !v.is_empty() => format!("rust{v}"),
        _ => "rust".to_owned(),
    }
}

/// Builds every `awscni_*` family from a snapshot and the optional EC2 sources. Pure: the
/// unit tests call it directly.
pub fn awscni_families(snap: &Snapshot, extras: &Extras, version: &str) -> Vec<MetricFamily> {
    let mut b = Builder::default();
    let st = &snap.stats;
    let u = |n: usize| n as f64;

    b.value("awscni_eni_max", &[], f64::from(snap.max_enis));
    b.value("awscni_ip_max", &[], f64::from(snap.max_ips()));
    b.value("awscni_eni_allocated", &[], u(st.enis.len()));
    b.value("awscni_total_ip_addresses", &[], u(st.total()));
    b.value("awscni_assigned_ip_addresses", &[], u(st.assigned()));
    b.value("awscni_total_ipv4_prefixes", &[], u(st.prefixes()));
    for e in &st.enis {
        for c in &e.cidrs {
            let cidr = c.net.to_string();
            b.value("awscni_assigned_ip_per_cidr", &[&cidr], u(c.assigned));
        }
        b.value("awscni_assigned_ip_per_eni", &[&e.id], u(e.assigned()));
    }
    b.value("awscni_build_info", &[version, &toolchain()], 1.0);
    for (action, running) in ACTIONS.iter().zip(snap.counters.in_progress) {
        // Upstream's gauge is 1 while the action runs (ours may run a few growths at once).
        let v = if running > 0 { 1.0 } else { 0.0 };
        b.value("awscni_ipamd_action_inprogress", &[action], v);
    }

    let c = &snap.counters;
    b.value("awscni_add_ip_req_count", &[], c.add_requests as f64);
    for (reason, n) in &c.del_requests {
        b.value("awscni_del_ip_req_count", &[reason], *n as f64);
    }
    b.value("awscni_no_available_ip_addresses", &[], c.add_waits as f64);
    b.value("awscni_force_removed_ips", &[], c.force_removed_ips as f64);
    b.value(
        "awscni_force_removed_enis",
        &[],
        c.force_removed_enis as f64,
    );
    b.value(
        "awscni_ipamd_error_count",
        &["poolManager"],
        c.pool_errors as f64,
    );
    b.value(
        "awscni_reconcile_count",
        &["nodeIPPoolReconcile"],
        c.reconcile_passes as f64,
    );

    if let Some(imds) = &extras.imds {
        b.latency_summaries("GetMetadata", &imds.snapshot());
    }
    if let Some(ec2) = &extras.ec2 {
        for (action, s) in ec2.snapshot() {
            let errors: u64 = s.errors.values().sum();
            b.value("awscni_ec2api_req_count", &[action], s.attempts as f64);
            b.value("awscni_ec2api_error_count", &[action], errors as f64);
            for (code, n) in &s.errors {
                b.value("awscni_aws_api_error_count", &[action, code], *n as f64);
                b.value("awscni_ec2api_call_count", &[action, code], *n as f64);
            }
            b.value(
                "awscni_ec2api_call_count",
                &[action, "success"],
                s.ok as f64,
            );
            b.latency_summaries(action, &s.latency_by_outcome);
            b.value(
                "awscni_ec2api_throttle_count",
                &[action],
                s.throttled as f64,
            );
            b.value("awscni_ec2api_retry_count", &[action], s.retries as f64);
            b.value(
                "awscni_ec2api_latency_max_ms",
                &[action],
                s.latency_max.as_secs_f64() * 1e3,
            );
        }
        for ((func, error), n) in ec2.utils_errors() {
            b.value("awscni_aws_utils_error_count", &[func, &error], n as f64);
        }
    }
    // Upstream observes these once, when the start-up ends; no series before that.
    if let Some(d) = c.startup.startup {
        // No Kubernetes API client in this release: `with_api_server` is always false.
        b.histogram(
            "awscni_ipamd_startup_duration_seconds",
            &["true", "false", ""],
            &STARTUP_BUCKETS,
            &HistogramValues::of(&STARTUP_BUCKETS, &[d.as_secs_f64()]),
        );
    }
    if let Some(d) = c.startup.node_init {
        b.histogram(
            "awscni_ipamd_node_initialization_duration_seconds",
            &["true"],
            &STARTUP_BUCKETS,
            &HistogramValues::of(&STARTUP_BUCKETS, &[d.as_secs_f64()]),
        );
    }
    // SNAT and connmark rules are iptables rules (hostnet.rs); there is no nftables backend.
    b.value("awscni_connmark_backend", &["iptables"], 1.0);

    b.value("awscni_max_pods", &[], f64::from(snap.limits.max_pods));
    b.value("awscni_free_ip_addresses", &[], u(st.free()));
    b.value("awscni_cooling_ip_addresses", &[], u(st.cooling()));
    b.value("awscni_pending_add_requests", &[], u(snap.pending));
    b.value("awscni_ready", &[], if snap.ready { 1.0 } else { 0.0 });
    b.value(
        "awscni_add_ip_no_address_count",
        &[],
        c.add_no_address as f64,
    );
    b.histogram(
        "awscni_add_ip_wait_seconds",
        &[],
        &WAIT_BUCKETS,
        &c.add_wait,
    );
    for ((action, reason), n) in &c.pool_decisions {
        b.value("awscni_pool_decisions", &[action, reason], *n as f64);
    }
    b.value("awscni_pool_passes", &[], c.pool_passes as f64);
    b.value("awscni_prefix_fallbacks", &[], c.prefix_fallbacks as f64);

    if let Some(l) = &extras.limiter {
        let s = l.stats();
        let set = l.settings();
        b.value(
            "awscni_ec2_limiter_wait_seconds",
            &[],
            s.waited_total.as_secs_f64(),
        );
        b.value(
            "awscni_ec2_limiter_wait_max_seconds",
            &[],
            s.waited_max.as_secs_f64(),
        );
        b.value("awscni_ec2_limiter_tokens", &[], s.acquired as f64);
        b.value("awscni_ec2_limiter_qps", &[], set.qps);
        b.value("awscni_ec2_limiter_burst", &[], f64::from(set.burst));
    }
    b.families(FAMILIES)
}

// ---------------------------------------------------------------------------------------------
// Process collector (from /proc/self, like the Go client's)

/// Process facts read from `/proc`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// Virtual size, bytes.
    pub vsize_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Soft limit on open files.
    pub max_fds: Option<u64>,
    /// Start time, seconds since the Unix epoch.
    pub start_time: f64,
    /// Threads.
    pub threads: u64,
}

/// `USER_HZ`: the unit of the tick counts in `/proc/<pid>/stat`. The kernel exports these in
/// USER_HZ, which is 100 on every architecture we ship (x86_64, arm64), whatever CONFIG_HZ is.
const USER_HZ: f64 = 100.0;

/// Parses `/proc/self/stat`, `/proc/self/status`, `/proc/self/limits` and `/proc/stat`
/// contents; `fds` is the number of entries in `/proc/self/fd`. Malformed input gives `None`.
pub fn parse_process(
    stat: &str,
    status: &str,
    limits: &str,
    proc_stat: &str,
    fds: u64,
) -> Option<ProcessStats> {
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field n is f[n - 3].
    let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    let utime = field(14)?;
    let stime = field(15)?;
    let threads = field(20)?;
    let start_ticks = field(22)?;
    let vsize = field(23)?;
    let btime: u64 = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let max_fds = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok());
    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / USER_HZ,
        rss_bytes: rss_kb * 1024,
        vsize_bytes: vsize,
        open_fds: fds,
        max_fds,
        start_time: btime as f64 + start_ticks as f64 / USER_HZ,
        threads,
    })
}

/// Reads this process's facts; `None` where `/proc` is not available.
pub fn read_process() -> Option<ProcessStats> {
    let rd = |p: &str| std::fs::read_to_string(p).ok();
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    parse_process(
        &rd("/proc/self/stat")?,
        &rd("/proc/self/status").unwrap_or_default(),
        &rd("/proc/self/limits").unwrap_or_default(),
        &rd("/proc/stat")?,
        fds,
    )
}

/// The process families.
pub fn process_families(p: &ProcessStats) -> Vec<MetricFamily> {
    let mut b = Builder::default();
    b.value("process_cpu_seconds_total", &[], p.cpu_seconds);
    b.value("process_resident_memory_bytes", &[], p.rss_bytes as f64);
    b.value("process_virtual_memory_bytes", &[], p.vsize_bytes as f64);
    b.value("process_open_fds", &[], p.open_fds as f64);
    if let Some(m) = p.max_fds {
        b.value("process_max_fds", &[], m as f64);
    }
    b.value("process_start_time_seconds", &[], p.start_time);
    b.value("process_threads", &[], p.threads as f64);
    b.families(PROCESS_FAMILIES)
}

// ---------------------------------------------------------------------------------------------
// Registry

struct AwscniCollector {
    descs: Vec<Desc>,
    src: Arc<dyn Observe>,
    extras: Extras,
    version: String,
}

impl Collector for AwscniCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }
    fn collect(&self) -> Vec<MetricFamily> {
        awscni_families(&self.src.snapshot(), &self.extras, &self.version)
    }
}

struct ProcessCollector {
    descs: Vec<Desc>,
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }
    fn collect(&self) -> Vec<MetricFamily> {
        read_process()
            .map(|p| process_families(&p))
            .unwrap_or_default()
    }
}

/// The metrics registry of one daemon.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A registry with the `awscni_*` collector over `src` and the process collector.
    pub fn new(
        src: Arc<dyn Observe>,
        extras: Extras,
        version: &str,
    ) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        registry.register(Box::new(AwscniCollector {
            descs: descs(FAMILIES),
            src,
            extras,
            version: version.to_owned(),
        }))?;
        registry.register(Box::new(ProcessCollector {
            descs: descs(PROCESS_FAMILIES),
        }))?;
        Ok(Self { registry })
    }

    /// The Prometheus text exposition of everything, computed now.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Content type of the text exposition (what upstream's Go client sends).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds the metrics endpoint and serves it in a background task. `GET /metrics` only.
pub async fn start(
    addr: &str,
    metrics: Arc<Metrics>,
) -> std::io::Result<crate::introspect::Server> {
    let handler: crate::introspect::Handler = Arc::new(move |path: &str| match path {
        "/metrics" => crate::introspect::Reply {
            status: 200,
            content_type: CONTENT_TYPE,
            body: metrics.render(),
        },
        _ => crate::introspect::Reply::not_found(path),
    });
    crate::introspect::Server::start(addr, handler).await
}

/// One parsed sample of the text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Series name (with `_sum`/`_count`/`_bucket` suffixes as written).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parses Prometheus text format 0.0.4 samples and `# TYPE` lines (`name → type`). Used by the
/// tests and by `ipamd status` checks; tolerant of comments and blank lines.
pub fn parse_text(text: &str) -> Result<(Vec<Sample>, BTreeMap<String, String>), String> {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut it = t.split_whitespace();
            if let (Some(n), Some(k)) = (it.next(), it.next()) {
                types.insert(n.to_owned(), k.to_owned());
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| bad("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad("bad value"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((n, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or_else(|| bad("unclosed labels"))?;
                (
                    n.to_owned(),
                    parse_labels(body).ok_or_else(|| bad("bad labels"))?,
                )
            }
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    Ok((samples, types))
}

fn parse_labels(body: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut name = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            name.push(c);
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(name.trim().to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::datastore::{Datastore, EniInfo, IpamKey, PodMeta};
    use crate::pool::{Limits, ReleaseCidr};

    fn sample<'a>(s: &'a [Sample], name: &str) -> Vec<&'a Sample> {
        s.iter().filter(|x| x.name == name).collect()
    }

    fn encode(fams: &[MetricFamily]) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(fams, &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    /// Prefix mode: prefixes, per-/28 assignments and the ×16 ip_max, from a datastore built by
    /// hand.
    #[test]
    fn prefix_mode_families_match_the_datastore() {
        let now = SystemTime::now();
        let mut ds = Datastore::new(true, Duration::from_secs(30));
        for (id, dev, ip) in [("eni-a", 0, "10.0.0.10"), ("eni-b", 1, "10.0.0.11")] {
            ds.add_eni(
                EniInfo {
                    id: id.into(),
                    mac: format!("02:00:00:00:00:0{dev}"),
                    device_number: dev,
                    is_primary: dev == 0,
                    excluded: false,
                    trunk: false,
                    efa: false,
                    subnet: "10.0.0.0/16".parse().unwrap(),
                    subnet_id: "subnet-1".into(),
                    primary_ip: ip.parse().unwrap(),
                },
                now,
            );
        }
        ds.add_cidr("eni-a", "10.0.1.0/28".parse().unwrap())
            .unwrap();
        ds.add_cidr("eni-a", "10.0.1.16/28".parse().unwrap())
            .unwrap();
        ds.add_cidr("eni-b", "10.0.2.0/28".parse().unwrap())
            .unwrap();
        for i in 0..5 {
            let meta = PodMeta {
                namespace: "ns".into(),
                name: format!("p{i}"),
                interfaces_count: 1,
            };
            ds.assign(
                &IpamKey::new("aws-cni", &format!("c{i}"), "eth0"),
                meta,
                now,
            )
            .unwrap();
        }
        let mut snap = Snapshot::from_datastore(&ds, now);
        snap.limits = Limits {
            ipv4_per_eni: 10,
            max_enis: 3,
            max_pods: 110,
            unmanaged_enis: 0,
            trunk_reserve: 0,
        };
        snap.max_enis = 3;
        let text = encode(&awscni_families(&snap, &Extras::default(), "v1"));
        let (s, _) = parse_text(&text).unwrap();
        let one = |n: &str| sample(&s, n)[0].value;
        let st = ds.stats(now);
        assert_eq!(one("awscni_total_ipv4_prefixes"), 3.0);
        assert_eq!(one("awscni_total_ip_addresses"), 48.0);
        assert_eq!(one("awscni_total_ip_addresses"), st.total() as f64);
        assert_eq!(one("awscni_assigned_ip_addresses"), 5.0);
        assert_eq!(one("awscni_ip_max"), 3.0 * 9.0 * 16.0);
        assert_eq!(one("awscni_eni_allocated"), 2.0);
        let per_cidr: BTreeMap<String, f64> = sample(&s, "awscni_assigned_ip_per_cidr")
            .iter()
            .map(|x| (x.labels["cidr"].clone(), x.value))
            .collect();
        let want: BTreeMap<String, f64> = st
            .enis
            .iter()
            .flat_map(|e| {
                e.cidrs
                    .iter()
                    .map(|c| (c.net.to_string(), c.assigned as f64))
            })
            .collect();
        assert_eq!(per_cidr, want);
        assert_eq!(per_cidr.values().sum::<f64>(), 5.0);
        let per_eni: BTreeMap<String, f64> = sample(&s, "awscni_assigned_ip_per_eni")
            .iter()
            .map(|x| (x.labels["eni"].clone(), x.value))
            .collect();
        assert_eq!(per_eni.values().sum::<f64>(), 5.0);
        assert_eq!(per_eni.len(), 2);
        // No EC2 sources: no EC2 families rather than zeros that would look like "no calls".
        assert!(sample(&s, "awscni_ec2api_req_count").is_empty());
        assert!(sample(&s, "awscni_ec2_limiter_tokens").is_empty());
    }

    #[test]
    fn limiter_families_follow_the_bucket() {
        let bucket = Arc::new(
            TokenBucket::new(crate::limiter::LimiterSettings { qps: 7.5, burst: 3 }).unwrap(),
        );
        let ds = Datastore::new(false, Duration::from_secs(30));
        let mut snap = Snapshot::from_datastore(&ds, SystemTime::now());
        snap.max_enis = 1;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            for _ in 0..5 {
                bucket.acquire().await;
            }
        });
        let extras = Extras {
            ec2: None,
            limiter: Some(bucket.clone()),
            imds: None,
        };
        let (s, t) = parse_text(&encode(&awscni_families(&snap, &extras, "v"))).unwrap();
        let one = |n: &str| sample(&s, n)[0].value;
        let st = bucket.stats();
        assert_eq!(one("awscni_ec2_limiter_tokens"), 5.0);
        assert_eq!(one("awscni_ec2_limiter_qps"), 7.5);
        assert_eq!(one("awscni_ec2_limiter_burst"), 3.0);
        assert_eq!(
            one("awscni_ec2_limiter_wait_seconds"),
            st.waited_total.as_secs_f64()
        );
        assert!(one("awscni_ec2_limiter_wait_seconds") > 0.0);
        assert_eq!(
            one("awscni_ec2_limiter_wait_max_seconds"),
            st.waited_max.as_secs_f64()
        );
        assert_eq!(t["awscni_ec2_limiter_tokens"], "counter");
    }

    #[test]
    fn wait_histogram_is_cumulative() {
        let h = WaitHistogram::default();
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(300));
        h.observe(Duration::from_millis(300));
        h.observe(Duration::from_secs(60));
        let v = h.values();
        assert_eq!(v.count, 4);
        assert!((v.sum_seconds - 60.605).abs() < 1e-9);
        // Buckets: 0.01 0.05 0.1 0.25 0.5 1 2 5 10 (+Inf = count).
        assert_eq!(v.cumulative, [1, 1, 1, 1, 3, 3, 3, 3, 3]);
        let mut b = Builder::default();
        b.histogram("awscni_add_ip_wait_seconds", &[], &WAIT_BUCKETS, &v);
        let (s, t) = parse_text(&encode(&b.families(FAMILIES))).unwrap();
        assert_eq!(t["awscni_add_ip_wait_seconds"], "histogram");
        let finite: Vec<f64> = s
            .iter()
            .filter(|x| {
                x.name == "awscni_add_ip_wait_seconds_bucket"
                    && x.labels.get("le").map(String::as_str) != Some("+Inf")
            })
            .map(|x| x.value)
            .collect();
        assert_eq!(finite, [1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0, 3.0]);
        // An empty histogram still lists every bucket.
        assert_eq!(
            HistogramValues::default().cumulative.len(),
            WAIT_BUCKETS.len()
        );
        let inf = s
            .iter()
            .find(|x| {
                x.name == "awscni_add_ip_wait_seconds_bucket"
                    && x.labels.get("le").map(String::as_str) == Some("+Inf")
            })
            .unwrap();
        assert_eq!(inf.value, 4.0);
    }

    #[test]
    fn pool_decisions_keep_counts_and_the_last_one() {
        let d = PoolDecisions::default();
        d.record(&Decision::default(), 0, false);
        assert!(d.last().is_none());
        let grow = Decision {
            grow: vec![Grow::NewEni {
                count: 9,
                kind: crate::datastore::CidrKind::SecondaryIp,
            }],
            ..Decision::default()
        };
        d.record(&grow, 2, false);
        d.record(&grow, 0, false);
        d.record(&grow, 0, true);
        let rel = Decision {
            release: vec![ReleaseCidr {
                eni: "eni-1".into(),
                cidr: "10.0.0.5/32".parse().unwrap(),
            }],
            ..Decision::default()
        };
        d.record(&rel, 0, false);
        let c = d.counts();
        assert_eq!(c[&("grow", "pending_adds")], 1);
        assert_eq!(c[&("grow", "below_target")], 1);
        assert_eq!(c[&("grow_deferred", "insufficient_capacity_backoff")], 1);
        assert_eq!(c[&("release", "above_target")], 1);
        let last = d.last().unwrap();
        assert_eq!((last.action, last.reason), ("release", "above_target"));
        assert_eq!(last.detail, "10.0.0.5/32");
    }

    #[test]
    fn in_progress_guards_count_and_release() {
        let p = InProgress::default();
        {
            let _a = p.enter("increaseDatastorePool");
            let _b = p.enter("increaseDatastorePool");
            let _c = p.enter("nodeInit");
            assert_eq!(p.values(), [1, 2, 0, 0]);
        }
        assert_eq!(p.values(), [0, 0, 0, 0]);
        let ds = Datastore::new(false, Duration::from_secs(30));
        let mut snap = Snapshot::from_datastore(&ds, SystemTime::now());
        snap.counters.in_progress = [0, 3, 0, 1];
        let (s, _) = parse_text(&encode(&awscni_families(&snap, &Extras::default(), "v"))).unwrap();
        let got: BTreeMap<String, f64> = sample(&s, "awscni_ipamd_action_inprogress")
            .iter()
            .map(|x| (x.labels["fn"].clone(), x.value))
            .collect();
        assert_eq!(
            got,
            BTreeMap::from([
                ("decreaseDatastorePool".to_owned(), 0.0),
                ("increaseDatastorePool".to_owned(), 1.0),
                ("nodeIPPoolReconcile".to_owned(), 1.0),
                ("nodeInit".to_owned(), 0.0),
            ])
        );
    }

    #[test]
    fn del_reasons_are_bounded() {
        let c = LabelCounter::default();
        for i in 0..100 {
            c.inc(&format!("r{i}"));
        }
        c.inc("r1");
        let v = c.values();
        assert_eq!(v.len(), 65);
        assert_eq!(v["r1"], 2);
        assert_eq!(v["other"], 36);
    }

    #[test]
    fn process_stats_parse() {
        // A command name with spaces and parentheses, as the kernel allows.
        let stat = "4242 (ipamd (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 \
                    7 0 123456 987654321 2048 18446744073709551615";
        let status = "Name:\tipamd\nVmRSS:\t   20480 kB\nThreads:\t7\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1048576              1048576              files\n";
        let proc_stat = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        let p = parse_process(stat, status, limits, proc_stat, 12).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.threads, 7);
        assert_eq!(p.vsize_bytes, 987_654_321);
        assert_eq!(p.rss_bytes, 20480 * 1024);
        assert_eq!(p.open_fds, 12);
        assert_eq!(p.max_fds, Some(1_048_576));
        assert_eq!(p.start_time, 1_700_000_000.0 + 1234.56);
        assert!(parse_process("garbage", "", "", proc_stat, 0).is_none());
        assert!(parse_process(stat, status, limits, "no btime", 0).is_none());
        // This very process.
        let me = read_process().unwrap();
        assert!(me.rss_bytes > 0 && me.threads >= 1 && me.open_fds >= 3);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(me.start_time <= now + 1.0 && me.start_time > now - 86_400.0);
    }

    #[test]
    fn text_parser_handles_escapes_and_rejects_garbage() {
        let (s, t) = parse_text(
            "# HELP x y\n# TYPE x counter\nx{a=\"1\",b=\"q\\\"uo,te\"} 3\ny 4.5\nz{} +Inf\n",
        )
        .unwrap();
        assert_eq!(t["x"], "counter");
        assert_eq!(s[0].labels["b"], "q\"uo,te");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].value, 4.5);
        assert!(s[2].value.is_infinite());
        assert!(parse_text("x{a=\"1\" 3").is_err());
        assert!(parse_text("x abc").is_err());
    }

    /// The upstream families added last: latency summary by `(api, error, status)` with count
    /// and sum only (upstream's summary has no quantiles), helper-layer errors, the start-up
    /// histograms and the connmark backend, read back from the exposition text.
    #[test]
    fn latency_utils_errors_startup_and_connmark_in_the_exposition() {
        let stats = Arc::new(Ec2Stats::default());
        let ms = Duration::from_millis;
        let bad = |status: Option<u16>, code: Option<&str>| crate::ec2::Ec2Error {
            action: "AttachNetworkInterface",
            kind: crate::ec2::Ec2ErrorKind::Client,
            code: code.map(str::to_owned),
            message: "m".into(),
            status,
        };
        stats.record(
            "AttachNetworkInterface",
            None,
            ms(10),
            Duration::ZERO,
            false,
        );
        stats.record(
            "AttachNetworkInterface",
            None,
            ms(30),
            Duration::ZERO,
            false,
        );
        let e400 = bad(Some(400), Some("InvalidParameterValue"));
        stats.record("AttachNetworkInterface", Some(&e400), ms(5), ms(0), false);
        let transport = bad(None, None);
        stats.record(
            "AttachNetworkInterface",
            Some(&transport),
            ms(7),
            ms(0),
            true,
        );
        stats.record_utils_error("FreeENIDeleteErr", "UnauthorizedOperation");
        stats.record_utils_error("FreeENIDeleteErr", "UnauthorizedOperation");
        stats.record_utils_error("AllocENIDeleteErr", "transport");

        let ds = Datastore::new(false, Duration::from_secs(30));
        let mut snap = Snapshot::from_datastore(&ds, SystemTime::now());
        let imds = Arc::new(crate::imds::ImdsStats::default());
        imds.record(false, "200", Duration::from_millis(2));
        imds.record(false, "200", Duration::from_millis(4));
        imds.record(true, "404", Duration::from_millis(1));
        let extras = Extras {
            ec2: Some(stats.clone()),
            limiter: None,
            imds: Some(imds),
        };
        // Before the daemon serves: no start-up series at all (upstream observes once, at the
        // end of the start-up).
        let (s, _) = parse_text(&encode(&awscni_families(&snap, &extras, "v"))).unwrap();
        assert!(s.iter().all(
            |x| !x.name.starts_with("awscni_ipamd_startup_duration_seconds")
                && !x.name.starts_with("awscni_ipamd_node_initialization")
        ));
        let startup = StartupDurations::default();
        startup.record(Duration::from_millis(3200), Duration::from_millis(2500));
        snap.counters.startup = startup.values();
        let text = encode(&awscni_families(&snap, &extras, "v"));
        let (s, t) = parse_text(&text).unwrap();
        let find = |name: &str, labels: &[(&str, &str)]| -> Vec<f64> {
            s.iter()
                .filter(|x| {
                    x.name == name
                        && labels
                            .iter()
                            .all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|x| x.value)
                .collect()
        };
        let one = |name: &str, labels: &[(&str, &str)]| -> f64 {
            let v = find(name, labels);
            assert_eq!(v.len(), 1, "{name} {labels:?} in\n{text}");
            v[0]
        };

        // Latency: one series per outcome, count and sum in ms, no quantiles.
        assert_eq!(t["awscni_aws_api_latency_ms"], "summary");
        let api = ("api", "AttachNetworkInterface");
        let ok = [api, ("error", "false"), ("status", "200")];
        assert_eq!(one("awscni_aws_api_latency_ms_count", &ok), 2.0);
        assert!((one("awscni_aws_api_latency_ms_sum", &ok) - 40.0).abs() < 1e-6);
        let e = [api, ("error", "true"), ("status", "400")];
        assert_eq!(one("awscni_aws_api_latency_ms_count", &e), 1.0);
        assert!((one("awscni_aws_api_latency_ms_sum", &e) - 5.0).abs() < 1e-6);
        let e = [api, ("error", "true"), ("status", "")];
        assert_eq!(one("awscni_aws_api_latency_ms_count", &e), 1.0);
        assert_eq!(find("awscni_aws_api_latency_ms_count", &[api]).len(), 3);
        // IMDS reads are in the same summary as upstream's `GetMetadata`.
        let md = ("api", "GetMetadata");
        let ok = [md, ("error", "false"), ("status", "200")];
        assert_eq!(one("awscni_aws_api_latency_ms_count", &ok), 2.0);
        assert!((one("awscni_aws_api_latency_ms_sum", &ok) - 6.0).abs() < 1e-6);
        let nf = [md, ("error", "true"), ("status", "404")];
        assert_eq!(one("awscni_aws_api_latency_ms_count", &nf), 1.0);
        assert!(
            s.iter()
                .filter(|x| x.name.starts_with("awscni_aws_api_latency_ms"))
                .all(|x| !x.labels.contains_key("quantile")),
            "{text}"
        );

        // Helper-layer errors.
        assert_eq!(t["awscni_aws_utils_error_count"], "counter");
        assert_eq!(
            one(
                "awscni_aws_utils_error_count",
                &[
                    ("fn", "FreeENIDeleteErr"),
                    ("error", "UnauthorizedOperation")
                ]
            ),
            2.0
        );
        assert_eq!(
            one(
                "awscni_aws_utils_error_count",
                &[("fn", "AllocENIDeleteErr"), ("error", "transport")]
            ),
            1.0
        );

        // Start-up histograms: 3.2 s and 2.5 s land in the 5 s bucket, not the 2 s one.
        let st = "awscni_ipamd_startup_duration_seconds";
        assert_eq!(t[st], "histogram");
        let labels = [
            ("success", "true"),
            ("with_api_server", "false"),
            ("failure_reason", ""),
        ];
        assert_eq!(one(&format!("{st}_count"), &labels), 1.0);
        assert!((one(&format!("{st}_sum"), &labels) - 3.2).abs() < 1e-9);
        let bucket = |name: &str, le: &str| one(&format!("{name}_bucket"), &[("le", le)]);
        assert_eq!(bucket(st, "2"), 0.0);
        assert_eq!(bucket(st, "5"), 1.0);
        assert_eq!(bucket(st, "+Inf"), 1.0);
        assert_eq!(
            find(&format!("{st}_bucket"), &[]).len(),
            STARTUP_BUCKETS.len() + 1
        );
        let ni = "awscni_ipamd_node_initialization_duration_seconds";
        assert_eq!(t[ni], "histogram");
        assert_eq!(one(&format!("{ni}_count"), &[("success", "true")]), 1.0);
        assert!((one(&format!("{ni}_sum"), &[]) - 2.5).abs() < 1e-9);
        assert_eq!(bucket(ni, "2"), 0.0);
        assert_eq!(bucket(ni, "5"), 1.0);

        // The connmark backend: iptables, the only one we have.
        assert_eq!(t["awscni_connmark_backend"], "gauge");
        assert_eq!(
            one("awscni_connmark_backend", &[("backend", "iptables")]),
            1.0
        );
        assert_eq!(find("awscni_connmark_backend", &[]).len(), 1);
    }

    #[test]
    fn utils_error_labels_are_bounded() {
        let stats = Ec2Stats::default();
        for i in 0..100 {
            stats.record_utils_error("FreeENIDeleteErr", &format!("Code{i}"));
        }
        stats.record_utils_error("FreeENIDeleteErr", "Code1");
        let m = stats.utils_errors();
        assert_eq!(m.len(), crate::ec2::MAX_UTILS_ERROR_LABELS + 1);
        assert_eq!(m[&("FreeENIDeleteErr", "Code1".to_owned())], 2);
        assert_eq!(
            m[&("FreeENIDeleteErr", "other".to_owned())],
            100 - crate::ec2::MAX_UTILS_ERROR_LABELS as u64
        );
    }

    #[test]
    fn histogram_of_observations() {
        let h = HistogramValues::of(&[1.0, 2.0, 5.0], &[0.5, 1.0, 3.0, 9.0]);
        assert_eq!(h.cumulative, [2, 2, 3]);
        assert_eq!(h.count, 4);
        assert!((h.sum_seconds - 13.5).abs() < 1e-12);
    }

    /// docs/operations.md lists every metric we export.
    #[test]
    fn every_metric_is_documented() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"),
        )
        .unwrap();
        for f in FAMILIES.iter().chain(PROCESS_FAMILIES) {
            assert!(
                doc.contains(&format!("`{}`", f.name)),
                "{} undocumented",
                f.name
            );
        }
        for p in crate::introspect::PATHS {
            assert!(doc.contains(&format!("`{p}`")), "{p} undocumented");
        }
    }

    /// Every name the issue and operations.md §1 require is in the table with its kind.
    #[test]
    fn upstream_names_and_kinds() {
        for (name, kind) in [
            ("awscni_eni_max", Kind::Gauge),
            ("awscni_ip_max", Kind::Gauge),
            ("awscni_eni_allocated", Kind::Gauge),
            ("awscni_total_ip_addresses", Kind::Gauge),
            ("awscni_assigned_ip_addresses", Kind::Gauge),
            ("awscni_total_ipv4_prefixes", Kind::Gauge),
            ("awscni_assigned_ip_per_cidr", Kind::Gauge),
            ("awscni_build_info", Kind::Gauge),
            ("awscni_add_ip_req_count", Kind::Counter),
            ("awscni_del_ip_req_count", Kind::Counter),
            ("awscni_aws_api_latency_ms", Kind::Summary),
            ("awscni_ec2api_req_count", Kind::Counter),
            ("awscni_ec2api_error_count", Kind::Counter),
            ("awscni_aws_api_error_count", Kind::Counter),
            ("awscni_no_available_ip_addresses", Kind::Counter),
            ("awscni_force_removed_ips", Kind::Counter),
            ("awscni_force_removed_enis", Kind::Counter),
            ("awscni_ipamd_error_count", Kind::Counter),
            ("awscni_reconcile_count", Kind::Counter),
            ("awscni_aws_utils_error_count", Kind::Counter),
            ("awscni_ipamd_startup_duration_seconds", Kind::Histogram),
            (
                "awscni_ipamd_node_initialization_duration_seconds",
                Kind::Histogram,
            ),
            ("awscni_connmark_backend", Kind::Gauge),
        ] {
            let s = spec(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(s.kind, kind, "{name}");
            assert!(s.upstream, "{name}");
        }
        let mut names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len(), "duplicate family");
        assert_eq!(descs(FAMILIES).len(), FAMILIES.len(), "invalid descriptor");
    }
}
