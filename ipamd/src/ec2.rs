//! EC2 API: the calls ipamd makes, behind the [`Ec2Api`] trait.
//!
//! [`SdkEc2`] is the real implementation over `aws-sdk-ec2` (Query protocol, SigV4) with
//! `aws-config`'s default credential chain. What it adds over the bare SDK:
//! - **one client-side token bucket** ([`TokenBucket`]) consulted before every attempt and every
//!   page (ipam.md §13 #6, §14), so a node never bursts EC2 beyond its budget;
//! - **its own retry loop** (the SDK's standard retry is disabled so that every retry also goes
//!   through the bucket and is counted): throttling (`RequestLimitExceeded` …), 5xx and transport
//!   failures are retried with exponential backoff and full jitter; client errors are not;
//! - **per-action counters** ([`Ec2Stats`]): attempts, successes, errors by code, throttles,
//!   retries, latency and limiter wait, for the metrics layer.
//!
//! Types crossing the trait are our own (not SDK types), so fakes and the datastore never depend
//! on the SDK.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types as t;
use ipnet::Ipv4Net;
use tokio::time::Instant;

use crate::limiter::TokenBucket;

/// Tags as key → value.
pub type Tags = BTreeMap<String, String>;

/// What kind of failure an [`Ec2Error`] is; decides retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ec2ErrorKind {
    /// EC2 throttled us (`RequestLimitExceeded` and friends). Retried with backoff.
    Throttled,
    /// 5xx (`InternalError`, `Unavailable`). Retried.
    Server,
    /// No usable answer: connect/read timeout, connection refused, unparsable response. Retried.
    Transport,
    /// A modelled client error (4xx): bad parameter, not found, limit reached. Not retried.
    Client,
}

/// A failed EC2 call, after retries.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("EC2 {action} failed: {kind:?} {code}: {message}", code = self.code.as_deref().unwrap_or("-"))]
pub struct Ec2Error {
    /// Action name, e.g. `AttachNetworkInterface`.
    pub action: &'static str,
    /// Classification.
    pub kind: Ec2ErrorKind,
    /// AWS error code, e.g. `InvalidNetworkInterfaceID.NotFound`.
    pub code: Option<String>,
    /// AWS message or transport error text.
    pub message: String,
    /// HTTP status when there was a response.
    pub status: Option<u16>,
}

impl Ec2Error {
    /// Whether the same request may succeed if sent again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            Ec2ErrorKind::Throttled | Ec2ErrorKind::Server | Ec2ErrorKind::Transport
        )
    }

    /// The AWS error code equals `code`.
    pub fn code_is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// Any `*.NotFound` code (ENI, attachment, subnet…): the object is already gone.
    pub fn is_not_found(&self) -> bool {
        self.code
            .as_deref()
            .is_some_and(|c| c.ends_with(".NotFound"))
    }

    /// The first single-quoted token in the message, e.g. the ENI ID in
    /// "The networkInterface ID 'eni-0123' does not exist" (upstream extracts it the same way to
    /// drop unknown IDs from bulk describes).
    pub fn quoted_id(&self) -> Option<&str> {
        let start = self.message.find('\'')? + 1;
        let len = self.message[start..].find('\'')?;
        let id = &self.message[start..start + len];
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')).then_some(id)
    }

    /// Fabricate a client error (fakes and callers' own validation).
    pub fn client(action: &'static str, code: &str, message: impl Into<String>) -> Self {
        Self {
            action,
            kind: Ec2ErrorKind::Client,
            code: Some(code.to_string()),
            message: message.into(),
            status: Some(400),
        }
    }
}

/// Codes that mean "slow down" across AWS services.
const THROTTLE_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "EC2ThrottledException",
    "SlowDown",
    "PriorRequestNotComplete",
];

/// 5xx-class codes that EC2 sometimes returns with a non-5xx status through proxies.
const SERVER_CODES: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "Unavailable",
    "ServiceUnavailable",
];

/// Classify an error by code and HTTP status.
pub fn classify(code: Option<&str>, status: Option<u16>) -> Ec2ErrorKind {
    if code.is_some_and(|c| THROTTLE_CODES.contains(&c)) || status == Some(429) {
        Ec2ErrorKind::Throttled
    } else if code.is_some_and(|c| SERVER_CODES.contains(&c)) || status.is_some_and(|s| s >= 500) {
        Ec2ErrorKind::Server
    } else {
        Ec2ErrorKind::Client
    }
}

fn sdk_err<E>(action: &'static str, e: SdkError<E, HttpResponse>) -> Ec2Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &e {
        SdkError::ServiceError(se) => {
            let code = se.err().code().map(str::to_string);
            let status = Some(se.raw().status().as_u16());
            Ec2Error {
                action,
                kind: classify(code.as_deref(), status),
                message: se.err().message().unwrap_or_default().to_string(),
                code,
                status,
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Ec2Error {
                action,
                kind: Ec2ErrorKind::Transport,
                code: None,
                message: aws_sdk_ec2::error::DisplayErrorContext(&e).to_string(),
                status: None,
            }
        }
        _ => Ec2Error {
            action,
            kind: Ec2ErrorKind::Client,
            code: None,
            message: aws_sdk_ec2::error::DisplayErrorContext(&e).to_string(),
            status: None,
        },
    }
}

/// How many addresses a new or grown ENI should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressRequest {
    /// Only the primary address.
    None,
    /// This many secondary /32 addresses.
    Ips(u32),
    /// This many /28 prefixes.
    Prefixes(u32),
}

/// `CreateNetworkInterface` input.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateEniRequest {
    /// Subnet to create the ENI in.
    pub subnet_id: String,
    /// Description; upstream uses `aws-K8S-<instance-id>` and the leaked-ENI sweep keys on it.
    pub description: String,
    /// Security groups (upstream copies the primary ENI's, sorted).
    pub security_groups: Vec<String>,
    /// Addresses to request with the ENI (capped at per-ENI limit − 1 by the caller).
    pub addresses: AddressRequest,
    /// Tags applied atomically at creation (`TagSpecification`).
    pub tags: Tags,
}

/// An ENI's attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniAttachment {
    /// `eni-attach-…`
    pub attachment_id: String,
    /// Instance it is attached to.
    pub instance_id: Option<String>,
    /// Device index.
    pub device_index: u32,
    /// Network card index.
    pub network_card: u32,
    /// `attaching` | `attached` | `detaching` | `detached`.
    pub status: String,
    /// Whether the ENI is deleted with the instance.
    pub delete_on_termination: bool,
}

/// An ENI as `DescribeNetworkInterfaces` / `CreateNetworkInterface` return it.
#[derive(Debug, Clone, PartialEq)]
pub struct EniInfo {
    /// `eni-…`
    pub eni_id: String,
    /// MAC, lower case.
    pub mac: String,
    /// Description.
    pub description: String,
    /// `available` | `in-use` | …
    pub status: String,
    /// `interface` | `trunk` | `efa` | `efa-only` | …
    pub interface_type: String,
    /// Subnet.
    pub subnet_id: String,
    /// VPC.
    pub vpc_id: String,
    /// Primary private IPv4.
    pub primary_ip: Option<Ipv4Addr>,
    /// Secondary private IPv4s (primary excluded).
    pub secondary_ips: Vec<Ipv4Addr>,
    /// Delegated IPv4 prefixes.
    pub prefixes: Vec<Ipv4Net>,
    /// Attachment, when attached.
    pub attachment: Option<EniAttachment>,
    /// Tags.
    pub tags: Tags,
    /// Security groups.
    pub security_groups: Vec<String>,
}

/// An ENI attached to an instance, from `DescribeInstances`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceEni {
    /// `eni-…`
    pub eni_id: String,
    /// Device index.
    pub device_index: u32,
    /// Network card index.
    pub network_card: u32,
}

/// A subnet from `DescribeSubnets`.
#[derive(Debug, Clone, PartialEq)]
pub struct SubnetInfo {
    /// `subnet-…`
    pub subnet_id: String,
    /// IPv4 CIDR.
    pub cidr: Ipv4Net,
    /// Free addresses right now.
    pub available: u32,
    /// Availability zone.
    pub availability_zone: String,
    /// Tags.
    pub tags: Tags,
}

/// One `Filter.N` of a describe call; values are OR-ed, filters AND-ed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Filter name, e.g. `tag-key`, `status`, `vpc-id`.
    pub name: String,
    /// Accepted values.
    pub values: Vec<String>,
}

impl Filter {
    /// Filter with one value.
    pub fn new(name: &str, value: &str) -> Self {
        Self {
            name: name.to_string(),
            values: vec![value.to_string()],
        }
    }
}

/// The EC2 calls ipamd makes. Implemented by [`SdkEc2`] and by test fakes.
pub trait Ec2Api: Send + Sync {
    /// `DescribeInstances(InstanceId)`: the ENIs attached to an instance with device/card index.
    fn describe_instance_enis(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<Vec<InstanceEni>, Ec2Error>> + Send;

    /// `CreateNetworkInterface` with tags in the same call.
    fn create_network_interface(
        &self,
        req: &CreateEniRequest,
    ) -> impl Future<Output = Result<EniInfo, Ec2Error>> + Send;

    /// `AttachNetworkInterface`; returns the attachment ID.
    fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
        network_card: u32,
    ) -> impl Future<Output = Result<String, Ec2Error>> + Send;

    /// `ModifyNetworkInterfaceAttribute(Attachment.DeleteOnTermination=true)`.
    fn set_delete_on_termination(
        &self,
        eni_id: &str,
        attachment_id: &str,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;

    /// `DetachNetworkInterface`.
    fn detach_network_interface(
        &self,
        attachment_id: &str,
        force: bool,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;

    /// `DeleteNetworkInterface`.
    fn delete_network_interface(
        &self,
        eni_id: &str,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;

    /// `DescribeNetworkInterfaces(NetworkInterfaceId.N)`. An unknown ID fails the whole call.
    fn describe_network_interfaces(
        &self,
        eni_ids: &[String],
    ) -> impl Future<Output = Result<Vec<EniInfo>, Ec2Error>> + Send;

    /// `DescribeNetworkInterfaces(Filter.N)`, all pages.
    fn describe_network_interfaces_filtered(
        &self,
        filters: &[Filter],
    ) -> impl Future<Output = Result<Vec<EniInfo>, Ec2Error>> + Send;

    /// `AssignPrivateIpAddresses(SecondaryPrivateIpAddressCount)`; returns only the new ones.
    fn assign_private_ips(
        &self,
        eni_id: &str,
        count: u32,
    ) -> impl Future<Output = Result<Vec<Ipv4Addr>, Ec2Error>> + Send;

    /// `AssignPrivateIpAddresses(Ipv4PrefixCount)`; returns only the new prefixes.
    fn assign_prefixes(
        &self,
        eni_id: &str,
        count: u32,
    ) -> impl Future<Output = Result<Vec<Ipv4Net>, Ec2Error>> + Send;

    /// `UnassignPrivateIpAddresses(PrivateIpAddress.N)`.
    fn unassign_private_ips(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;

    /// `UnassignPrivateIpAddresses(Ipv4Prefix.N)`.
    fn unassign_prefixes(
        &self,
        eni_id: &str,
        prefixes: &[Ipv4Net],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;

    /// `DescribeSubnets(Filter.N)`.
    fn describe_subnets(
        &self,
        filters: &[Filter],
    ) -> impl Future<Output = Result<Vec<SubnetInfo>, Ec2Error>> + Send;

    /// `DescribeInstanceTypes(InstanceType.N)`, all pages (≤ 100 types per request), as rows of
    /// the built-in limits table (for types missing from it). A type whose answer lacks a field
    /// the max-pods formula needs is an error naming the type and the field.
    fn describe_instance_types(
        &self,
        types: &[String],
    ) -> impl Future<Output = Result<Vec<awscni_limits::InstanceType>, Ec2Error>> + Send;

    /// `CreateTags` (overwrites values of existing keys).
    fn create_tags(
        &self,
        resource_ids: &[String],
        tags: &Tags,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;

    /// Metrics hook: counts a failure of the ENI helper layer built on these calls
    /// (`awscni_aws_utils_error_count{fn, error}`). Test fakes keep the no-op default.
    fn note_utils_error(&self, func: &'static str, error: &str) {
        let _ = (func, error);
    }
}

// ---------------------------------------------------------------------------------------------
// Counters

/// Counters of one EC2 action.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActionStats {
    /// Attempts sent (retries included).
    pub attempts: u64,
    /// Attempts that succeeded.
    pub ok: u64,
    /// Failed attempts by AWS error code (`transport` when there was no code).
    pub errors: BTreeMap<String, u64>,
    /// Failed attempts that were throttling.
    pub throttled: u64,
    /// Attempts that were retries of an earlier failure.
    pub retries: u64,
    /// Sum of attempt latencies (limiter wait excluded).
    pub latency_total: Duration,
    /// Slowest attempt.
    pub latency_max: Duration,
    /// Sum of the time spent waiting for the token bucket.
    pub limiter_wait_total: Duration,
    /// Attempt latencies by upstream's `awscni_aws_api_latency_ms` labels `(error, status)`:
    /// `error` is whether the attempt failed, `status` the HTTP status (`200` on success, empty
    /// when no response came back). Few distinct keys: one per status code seen.
    pub latency_by_outcome: LatencyByOutcome,
}

/// Count and sum of latencies (a Prometheus summary without quantiles, as upstream's).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencySum {
    /// Observations.
    pub count: u64,
    /// Their sum.
    pub total: Duration,
}

impl LatencySum {
    /// Records one observation.
    pub fn add(&mut self, latency: Duration) {
        self.count += 1;
        self.total += latency;
    }
}

/// Latencies by upstream's `awscni_aws_api_latency_ms` labels `(error, status)`.
pub type LatencyByOutcome = BTreeMap<(bool, String), LatencySum>;

/// Most distinct `(fn, error)` pairs kept for `awscni_aws_utils_error_count`; later new pairs
/// are counted under `error="other"` so an unexpected error stream cannot grow the metric
/// without bound.
pub const MAX_UTILS_ERROR_LABELS: usize = 64;

/// Per-action counters shared by every call of an [`SdkEc2`]; read by the metrics layer.
#[derive(Debug, Default)]
pub struct Ec2Stats {
    inner: Mutex<BTreeMap<&'static str, ActionStats>>,
    /// Failures of the ENI helper layer by `(fn, error code)` (`awscni_aws_utils_error_count`).
    utils_errors: Mutex<BTreeMap<(&'static str, String), u64>>,
}

impl Ec2Stats {
    pub(crate) fn record(
        &self,
        action: &'static str,
        err: Option<&Ec2Error>,
        latency: Duration,
        waited: Duration,
        retry: bool,
    ) {
        let mut m = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let s = m.entry(action).or_default();
        s.attempts += 1;
        if retry {
            s.retries += 1;
        }
        s.latency_total += latency;
        s.latency_max = s.latency_max.max(latency);
        s.limiter_wait_total += waited;
        let status = match err {
            None => "200".to_string(),
            Some(e) => e.status.map(|c| c.to_string()).unwrap_or_default(),
        };
        s.latency_by_outcome
            .entry((err.is_some(), status))
            .or_default()
            .add(latency);
        match err {
            None => s.ok += 1,
            Some(e) => {
                let code = e.code.clone().unwrap_or_else(|| "transport".to_string());
                *s.errors.entry(code).or_default() += 1;
                if e.kind == Ec2ErrorKind::Throttled {
                    s.throttled += 1;
                }
            }
        }
    }

    /// A copy of all counters, by action name.
    pub fn snapshot(&self) -> BTreeMap<&'static str, ActionStats> {
        match self.inner.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Total attempts over all actions.
    pub fn total_attempts(&self) -> u64 {
        self.snapshot().values().map(|s| s.attempts).sum()
    }

    /// Counts one failure of the ENI helper layer (upstream `awsUtilsErrInc`): `func` is
    /// upstream's function label (`AllocENIDeleteErr`, `FreeENIDeleteErr`, ...), `error` a
    /// short error code (never a free-form message: those carry request IDs).
    pub fn record_utils_error(&self, func: &'static str, error: &str) {
        let mut m = match self.utils_errors.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let key = (func, error.to_string());
        if let Some(v) = m.get_mut(&key) {
            *v += 1;
        } else if m.len() < MAX_UTILS_ERROR_LABELS {
            m.insert(key, 1);
        } else {
            *m.entry((func, "other".to_string())).or_default() += 1;
        }
    }

    /// Helper-layer failures by `(fn, error)`.
    pub fn utils_errors(&self) -> BTreeMap<(&'static str, String), u64> {
        match self.utils_errors.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Real client

/// Retry policy of [`SdkEc2`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per call, first one included (≥ 1).
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles each retry.
    pub base: Duration,
    /// Backoff ceiling.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base: Duration::from_millis(200),
            max: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Backoff before retry number `retry` (1-based): exponential, capped, with "equal jitter"
    /// (uniform in [d/2, d]) so that nodes throttled together do not retry in lockstep.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1).min(20)));
        let d = exp.min(self.max);
        let half = d / 2;
        half + d.mul_f64(rand::random::<f64>() * 0.5)
    }
}

/// Settings of the real EC2 client.
#[derive(Debug, Clone, PartialEq)]
pub struct Ec2Settings {
    /// Region (from IMDS).
    pub region: String,
    /// Endpoint override; see [`endpoint_from_env`].
    pub endpoint: Option<String>,
    /// Per-attempt timeout (upstream `HTTP_TIMEOUT`, default 10 s).
    pub http_timeout: Duration,
    /// Retries of throttling/5xx/transport failures.
    pub retry: RetryPolicy,
}

impl Ec2Settings {
    /// Defaults for `region` with the endpoint taken from the process environment.
    pub fn for_region(region: &str) -> Self {
        Self {
            region: region.to_string(),
            endpoint: endpoint_from_env(|k| std::env::var(k).ok()),
            http_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        }
    }
}

/// EC2 endpoint override from the environment: the standard `AWS_ENDPOINT_URL_EC2`, then
/// `AWS_ENDPOINT_URL`, then upstream's `AWS_EC2_ENDPOINT` (which upstream v1.23 forgets to apply
/// to its EC2 client, ipam.md §13 #11). Empty values count as unset.
pub fn endpoint_from_env(get: impl Fn(&str) -> Option<String>) -> Option<String> {
    [
        "AWS_ENDPOINT_URL_EC2",
        "AWS_ENDPOINT_URL",
        "AWS_EC2_ENDPOINT",
    ]
    .iter()
    .filter_map(|k| get(k))
    .map(|v| v.trim().to_string())
    .find(|v| !v.is_empty())
}

/// [`Ec2Api`] over aws-sdk-ec2, rate limited, retried and counted.
#[derive(Debug, Clone)]
pub struct SdkEc2 {
    client: aws_sdk_ec2::Client,
    limiter: Arc<TokenBucket>,
    stats: Arc<Ec2Stats>,
    retry: RetryPolicy,
}

impl SdkEc2 {
    /// Load credentials with aws-config's default chain (env, profile, web identity, IMDS…) and
    /// build the client.
    pub async fn connect(settings: &Ec2Settings, limiter: Arc<TokenBucket>) -> Self {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(settings.region.clone()))
            .load()
            .await;
        Self::from_sdk_config(&sdk, settings, limiter)
    }

    /// Build from an already loaded `SdkConfig` (tests pass static credentials this way).
    pub fn from_sdk_config(
        sdk: &aws_config::SdkConfig,
        settings: &Ec2Settings,
        limiter: Arc<TokenBucket>,
    ) -> Self {
        use aws_sdk_ec2::config::retry::RetryConfig;
        use aws_sdk_ec2::config::timeout::TimeoutConfig;
        let mut b = aws_sdk_ec2::config::Builder::from(sdk)
            .region(aws_sdk_ec2::config::Region::new(settings.region.clone()))
            // Our own loop retries, so that every attempt passes the token bucket and is counted.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(settings.http_timeout.min(Duration::from_secs(5)))
                    .operation_attempt_timeout(settings.http_timeout)
                    .build(),
            );
        if let Some(ep) = &settings.endpoint {
            b = b.endpoint_url(ep);
        }
        Self {
            client: aws_sdk_ec2::Client::from_conf(b.build()),
            limiter,
            stats: Arc::new(Ec2Stats::default()),
            retry: settings.retry,
        }
    }

    /// Counters of this client (shared by its clones).
    pub fn stats(&self) -> Arc<Ec2Stats> {
        self.stats.clone()
    }

    /// The token bucket in front of this client.
    pub fn limiter(&self) -> Arc<TokenBucket> {
        self.limiter.clone()
    }

    /// Run one action: limiter → attempt → count → retry retryable failures with backoff.
    async fn call<T, F, Fut>(&self, action: &'static str, mut attempt: F) -> Result<T, Ec2Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Ec2Error>>,
    {
        let max = self.retry.max_attempts.max(1);
        let mut n = 0u32;
        loop {
            n += 1;
            let waited = self.limiter.acquire().await;
            let start = Instant::now();
            let res = attempt().await;
            let latency = start.elapsed();
            self.stats
                .record(action, res.as_ref().err(), latency, waited, n > 1);
            match res {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && n < max => {
                    let pause = self.retry.backoff(n);
                    tracing::debug!(action, attempt = n, error = %e, ?pause, "retrying EC2 call");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn to_u32(v: Option<i32>) -> u32 {
    v.and_then(|x| u32::try_from(x).ok()).unwrap_or(0)
}

fn count_i32(action: &'static str, n: u32) -> Result<i32, Ec2Error> {
    i32::try_from(n).map_err(|_| {
        Ec2Error::client(
            action,
            "InvalidParameterValue",
            format!("count {n} out of range"),
        )
    })
}

fn tags_from(ts: &[t::Tag]) -> Tags {
    ts.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

fn sdk_tags(tags: &Tags) -> Vec<t::Tag> {
    tags.iter()
        .map(|(k, v)| t::Tag::builder().key(k).value(v).build())
        .collect()
}

fn sdk_filters(fs: &[Filter]) -> Vec<t::Filter> {
    fs.iter()
        .map(|f| {
            t::Filter::builder()
                .name(&f.name)
                .set_values(Some(f.values.clone()))
                .build()
        })
        .collect()
}

fn malformed(action: &'static str, what: &str, value: &str) -> Ec2Error {
    Ec2Error {
        action,
        kind: Ec2ErrorKind::Transport,
        code: None,
        message: format!("response has an invalid {what}: {value:?}"),
        status: None,
    }
}

fn parse_ip(action: &'static str, s: &str) -> Result<Ipv4Addr, Ec2Error> {
    s.parse().map_err(|_| malformed(action, "IPv4 address", s))
}

fn parse_net(action: &'static str, s: &str) -> Result<Ipv4Net, Ec2Error> {
    s.parse().map_err(|_| malformed(action, "IPv4 prefix", s))
}

/// Convert an SDK ENI. Unparsable addresses are errors, not silently dropped: the datastore must
/// not believe an ENI has fewer addresses than it has.
fn eni_from(action: &'static str, n: &t::NetworkInterface) -> Result<EniInfo, Ec2Error> {
    let eni_id = n
        .network_interface_id()
        .ok_or_else(|| malformed(action, "networkInterfaceId", ""))?
        .to_string();
    let primary_ip = n
        .private_ip_address()
        .map(|s| parse_ip(action, s))
        .transpose()?;
    let mut secondary_ips = Vec::new();
    for a in n.private_ip_addresses() {
        let Some(s) = a.private_ip_address() else {
            continue;
        };
        let ip = parse_ip(action, s)?;
        if a.primary() == Some(true) || Some(ip) == primary_ip {
            continue;
        }
        secondary_ips.push(ip);
    }
    let prefixes = n
        .ipv4_prefixes()
        .iter()
        .filter_map(|p| p.ipv4_prefix())
        .map(|s| parse_net(action, s))
        .collect::<Result<Vec<_>, _>>()?;
    let attachment = n.attachment().and_then(|a| {
        Some(EniAttachment {
            attachment_id: a.attachment_id()?.to_string(),
            instance_id: a.instance_id().map(str::to_string),
            device_index: to_u32(a.device_index()),
            network_card: to_u32(a.network_card_index()),
            status: a
                .status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            delete_on_termination: a.delete_on_termination().unwrap_or(false),
        })
    });
    Ok(EniInfo {
        eni_id,
        mac: n.mac_address().unwrap_or_default().to_ascii_lowercase(),
        description: n.description().unwrap_or_default().to_string(),
        status: n
            .status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        interface_type: n
            .interface_type()
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|| "interface".to_string()),
        subnet_id: n.subnet_id().unwrap_or_default().to_string(),
        vpc_id: n.vpc_id().unwrap_or_default().to_string(),
        primary_ip,
        secondary_ips,
        prefixes,
        attachment,
        tags: tags_from(n.tag_set()),
        security_groups: n
            .groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_string))
            .collect(),
    })
}

impl Ec2Api for SdkEc2 {
    fn note_utils_error(&self, func: &'static str, error: &str) {
        self.stats.record_utils_error(func, error);
    }

    async fn describe_instance_enis(
        &self,
        instance_id: &str,
    ) -> Result<Vec<InstanceEni>, Ec2Error> {
        const A: &str = "DescribeInstances";
        let c = &self.client;
        let out = self
            .call(A, || async move {
                c.describe_instances()
                    .instance_ids(instance_id)
                    .send()
                    .await
                    .map_err(|e| sdk_err(A, e))
            })
            .await?;
        let mut v = Vec::new();
        for r in out.reservations() {
            for i in r.instances() {
                for n in i.network_interfaces() {
                    let (Some(id), Some(att)) = (n.network_interface_id(), n.attachment()) else {
                        continue;
                    };
                    v.push(InstanceEni {
                        eni_id: id.to_string(),
                        device_index: to_u32(att.device_index()),
                        network_card: to_u32(att.network_card_index()),
                    });
                }
            }
        }
        Ok(v)
    }

    async fn create_network_interface(&self, req: &CreateEniRequest) -> Result<EniInfo, Ec2Error> {
        const A: &str = "CreateNetworkInterface";
        let c = &self.client;
        let spec = t::TagSpecification::builder()
            .resource_type(t::ResourceType::NetworkInterface)
            .set_tags(Some(sdk_tags(&req.tags)))
            .build();
        let (ips, pfx) = match req.addresses {
            AddressRequest::None => (None, None),
            AddressRequest::Ips(n) => (Some(count_i32(A, n)?), None),
            AddressRequest::Prefixes(n) => (None, Some(count_i32(A, n)?)),
        };
        let out = self
            .call(A, || {
                let mut b = c
                    .create_network_interface()
                    .subnet_id(&req.subnet_id)
                    .description(&req.description)
                    .set_groups(
                        (!req.security_groups.is_empty()).then(|| req.security_groups.clone()),
                    )
                    .set_secondary_private_ip_address_count(ips)
                    .set_ipv4_prefix_count(pfx);
                if !req.tags.is_empty() {
                    b = b.tag_specifications(spec.clone());
                }
                async move { b.send().await.map_err(|e| sdk_err(A, e)) }
            })
            .await?;
        let n = out
            .network_interface()
            .ok_or_else(|| malformed(A, "networkInterface", ""))?;
        eni_from(A, n)
    }

    async fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
        network_card: u32,
    ) -> Result<String, Ec2Error> {
        const A: &str = "AttachNetworkInterface";
        let c = &self.client;
        let dev = count_i32(A, device_index)?;
        let card = count_i32(A, network_card)?;
        let out = self
            .call(A, || async move {
                c.attach_network_interface()
                    .network_interface_id(eni_id)
                    .instance_id(instance_id)
                    .device_index(dev)
                    .network_card_index(card)
                    .send()
                    .await
                    .map_err(|e| sdk_err(A, e))
            })
            .await?;
        out.attachment_id()
            .map(str::to_string)
            .ok_or_else(|| malformed(A, "attachmentId", ""))
    }

    async fn set_delete_on_termination(
        &self,
        eni_id: &str,
        attachment_id: &str,
    ) -> Result<(), Ec2Error> {
        const A: &str = "ModifyNetworkInterfaceAttribute";
        let c = &self.client;
        let change = t::NetworkInterfaceAttachmentChanges::builder()
            .attachment_id(attachment_id)
            .delete_on_termination(true)
            .build();
        self.call(A, || {
            let change = change.clone();
            async move {
                c.modify_network_interface_attribute()
                    .network_interface_id(eni_id)
                    .attachment(change)
                    .send()
                    .await
                    .map_err(|e| sdk_err(A, e))
            }
        })
        .await?;
        Ok(())
    }

    async fn detach_network_interface(
        &self,
        attachment_id: &str,
        force: bool,
    ) -> Result<(), Ec2Error> {
        const A: &str = "DetachNetworkInterface";
        let c = &self.client;
        self.call(A, || async move {
            c.detach_network_interface()
                .attachment_id(attachment_id)
                .force(force)
                .send()
                .await
                .map_err(|e| sdk_err(A, e))
        })
        .await?;
        Ok(())
    }

    async fn delete_network_interface(&self, eni_id: &str) -> Result<(), Ec2Error> {
        const A: &str = "DeleteNetworkInterface";
        let c = &self.client;
        self.call(A, || async move {
            c.delete_network_interface()
                .network_interface_id(eni_id)
                .send()
                .await
                .map_err(|e| sdk_err(A, e))
        })
        .await?;
        Ok(())
    }

    async fn describe_network_interfaces(
        &self,
        eni_ids: &[String],
    ) -> Result<Vec<EniInfo>, Ec2Error> {
        const A: &str = "DescribeNetworkInterfaces";
        if eni_ids.is_empty() {
            // An empty ID list would mean "every ENI in the region".
            return Ok(Vec::new());
        }
        let c = &self.client;
        let out = self
            .call(A, || async move {
                c.describe_network_interfaces()
                    .set_network_interface_ids(Some(eni_ids.to_vec()))
                    .send()
                    .await
                    .map_err(|e| sdk_err(A, e))
            })
            .await?;
        out.network_interfaces()
            .iter()
            .map(|n| eni_from(A, n))
            .collect()
    }

    async fn describe_network_interfaces_filtered(
        &self,
        filters: &[Filter],
    ) -> Result<Vec<EniInfo>, Ec2Error> {
        const A: &str = "DescribeNetworkInterfaces";
        let c = &self.client;
        let fs = sdk_filters(filters);
        let mut token: Option<String> = None;
        let mut all = Vec::new();
        // Every page passes the limiter (call() per page). Bounded so that a server that keeps
        // returning a token cannot loop us forever.
        for _page in 0..1000 {
            let tok = token.clone();
            let fs = &fs;
            let out = self
                .call(A, || {
                    let tok = tok.clone();
                    async move {
                        c.describe_network_interfaces()
                            .set_filters(Some(fs.clone()))
                            .max_results(1000)
                            .set_next_token(tok)
                            .send()
                            .await
                            .map_err(|e| sdk_err(A, e))
                    }
                })
                .await?;
            for n in out.network_interfaces() {
                all.push(eni_from(A, n)?);
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(all),
            }
        }
        Err(malformed(A, "nextToken", "more than 1000 pages"))
    }

    async fn assign_private_ips(
        &self,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        const A: &str = "AssignPrivateIpAddresses";
        let c = &self.client;
        let n = count_i32(A, count)?;
        let out = self
            .call(A, || async move {
                c.assign_private_ip_addresses()
                    .network_interface_id(eni_id)
                    .secondary_private_ip_address_count(n)
                    .send()
                    .await
                    .map_err(|e| sdk_err(A, e))
            })
            .await?;
        out.assigned_private_ip_addresses()
            .iter()
            .filter_map(|a| a.private_ip_address())
            .map(|s| parse_ip(A, s))
            .collect()
    }

    async fn assign_prefixes(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Net>, Ec2Error> {
        const A: &str = "AssignPrivateIpAddresses";
        let c = &self.client;
        let n = count_i32(A, count)?;
        let out = self
            .call(A, || async move {
                c.assign_private_ip_addresses()
                    .network_interface_id(eni_id)
                    .ipv4_prefix_count(n)
                    .send()
                    .await
                    .map_err(|e| sdk_err(A, e))
            })
            .await?;
        out.assigned_ipv4_prefixes()
            .iter()
            .filter_map(|p| p.ipv4_prefix())
            .map(|s| parse_net(A, s))
            .collect()
    }

    async fn unassign_private_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        const A: &str = "UnassignPrivateIpAddresses";
        if ips.is_empty() {
            return Ok(());
        }
        let c = &self.client;
        let list: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
        let list = &list;
        self.call(A, || async move {
            c.unassign_private_ip_addresses()
                .network_interface_id(eni_id)
                .set_private_ip_addresses(Some(list.clone()))
                .send()
                .await
                .map_err(|e| sdk_err(A, e))
        })
        .await?;
        Ok(())
    }

    async fn unassign_prefixes(&self, eni_id: &str, prefixes: &[Ipv4Net]) -> Result<(), Ec2Error> {
        const A: &str = "UnassignPrivateIpAddresses";
        if prefixes.is_empty() {
            return Ok(());
        }
        let c = &self.client;
        let list: Vec<String> = prefixes.iter().map(Ipv4Net::to_string).collect();
        let list = &list;
        self.call(A, || async move {
            c.unassign_private_ip_addresses()
                .network_interface_id(eni_id)
                .set_ipv4_prefixes(Some(list.clone()))
                .send()
                .await
                .map_err(|e| sdk_err(A, e))
        })
        .await?;
        Ok(())
    }

    async fn describe_subnets(&self, filters: &[Filter]) -> Result<Vec<SubnetInfo>, Ec2Error> {
        const A: &str = "DescribeSubnets";
        let c = &self.client;
        let fs = sdk_filters(filters);
        let fs = &fs;
        let out = self
            .call(A, || async move {
                c.describe_subnets()
                    .set_filters(Some(fs.clone()))
                    .send()
                    .await
                    .map_err(|e| sdk_err(A, e))
            })
            .await?;
        let mut v = Vec::new();
        for s in out.subnets() {
            let Some(id) = s.subnet_id() else { continue };
            let cidr = parse_net(A, s.cidr_block().unwrap_or_default())?;
            v.push(SubnetInfo {
                subnet_id: id.to_string(),
                cidr,
                available: to_u32(s.available_ip_address_count()),
                availability_zone: s.availability_zone().unwrap_or_default().to_string(),
                tags: tags_from(s.tags()),
            });
        }
        Ok(v)
    }

    async fn describe_instance_types(
        &self,
        types: &[String],
    ) -> Result<Vec<awscni_limits::InstanceType>, Ec2Error> {
        const A: &str = "DescribeInstanceTypes";
        let c = &self.client;
        let mut all = Vec::new();
        for chunk in types.chunks(100) {
            let names: Vec<t::InstanceType> = chunk
                .iter()
                .map(|n| t::InstanceType::from(n.as_str()))
                .collect();
            let names = &names;
            let mut token: Option<String> = None;
            // Every page passes the limiter; bounded against a server that never stops paging.
            let mut pages = 0;
            loop {
                pages += 1;
                let tok = token.clone();
                let out = self
                    .call(A, || {
                        let tok = tok.clone();
                        async move {
                            c.describe_instance_types()
                                .set_instance_types(Some(names.clone()))
                                .set_next_token(tok)
                                .send()
                                .await
                                .map_err(|e| sdk_err(A, e))
                        }
                    })
                    .await?;
                for it in out.instance_types() {
                    // One converter for the table generator, `max-pods --from-ec2` and us.
                    let row =
                        awscni_limits::ec2::instance_type_from_sdk(it).map_err(|e| Ec2Error {
                            action: A,
                            kind: Ec2ErrorKind::Transport,
                            code: None,
                            message: e.to_string(),
                            status: None,
                        })?;
                    all.push(row);
                }
                match out.next_token() {
                    Some(tk) if !tk.is_empty() && pages < 1000 => token = Some(tk.to_string()),
                    _ => break,
                }
            }
        }
        Ok(all)
    }

    async fn create_tags(&self, resource_ids: &[String], tags: &Tags) -> Result<(), Ec2Error> {
        const A: &str = "CreateTags";
        if resource_ids.is_empty() || tags.is_empty() {
            return Ok(());
        }
        let c = &self.client;
        let ts = sdk_tags(tags);
        let ts = &ts;
        self.call(A, || async move {
            c.create_tags()
                .set_resources(Some(resource_ids.to_vec()))
                .set_tags(Some(ts.clone()))
                .send()
                .await
                .map_err(|e| sdk_err(A, e))
        })
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(
            classify(Some("RequestLimitExceeded"), Some(503)),
            Ec2ErrorKind::Throttled
        );
        assert_eq!(
            classify(Some("Throttling"), Some(400)),
            Ec2ErrorKind::Throttled
        );
        assert_eq!(
            classify(Some("InternalError"), Some(500)),
            Ec2ErrorKind::Server
        );
        assert_eq!(
            classify(Some("Unavailable"), Some(503)),
            Ec2ErrorKind::Server
        );
        assert_eq!(classify(None, Some(502)), Ec2ErrorKind::Server);
        assert_eq!(
            classify(Some("InvalidParameterValue"), Some(400)),
            Ec2ErrorKind::Client
        );
        assert_eq!(
            classify(Some("UnauthorizedOperation"), Some(403)),
            Ec2ErrorKind::Client
        );
    }

    #[test]
    fn quoted_id_and_not_found() {
        let e = Ec2Error::client(
            "DescribeNetworkInterfaces",
            "InvalidNetworkInterfaceID.NotFound",
            "The networkInterface ID 'eni-0123456789abcdef0' does not exist",
        );
        assert!(e.is_not_found());
        assert!(!e.is_retryable());
        assert_eq!(e.quoted_id(), Some("eni-0123456789abcdef0"));
        let e = Ec2Error::client("X", "InvalidParameterValue", "no quotes here");
        assert!(!e.is_not_found());
        assert_eq!(e.quoted_id(), None);
        let e = Ec2Error::client("X", "InvalidParameterValue", "bad 'a b' value");
        assert_eq!(e.quoted_id(), None, "spaces are not an ID");
    }

    #[test]
    fn endpoint_precedence() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(endpoint_from_env(env(&[])), None);
        assert_eq!(
            endpoint_from_env(env(&[("AWS_EC2_ENDPOINT", "http://c")])),
            Some("http://c".into())
        );
        assert_eq!(
            endpoint_from_env(env(&[
                ("AWS_EC2_ENDPOINT", "http://c"),
                ("AWS_ENDPOINT_URL", "http://b")
            ])),
            Some("http://b".into())
        );
        assert_eq!(
            endpoint_from_env(env(&[
                ("AWS_EC2_ENDPOINT", "http://c"),
                ("AWS_ENDPOINT_URL", "http://b"),
                ("AWS_ENDPOINT_URL_EC2", "http://a")
            ])),
            Some("http://a".into())
        );
        assert_eq!(
            endpoint_from_env(env(&[
                ("AWS_ENDPOINT_URL_EC2", " "),
                ("AWS_EC2_ENDPOINT", "http://c")
            ])),
            Some("http://c".into()),
            "empty counts as unset"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let p = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let b1 = p.backoff(1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100));
            let b3 = p.backoff(3);
            assert!(b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400));
            let b9 = p.backoff(9);
            assert!(b9 >= Duration::from_millis(500) && b9 <= Duration::from_secs(1));
            assert!(p.backoff(u32::MAX) <= Duration::from_secs(1));
        }
    }

    #[test]
    fn stats_record() {
        let s = Ec2Stats::default();
        let thr = Ec2Error {
            action: "A",
            kind: Ec2ErrorKind::Throttled,
            code: Some("RequestLimitExceeded".into()),
            message: String::new(),
            status: Some(503),
        };
        s.record(
            "A",
            Some(&thr),
            Duration::from_millis(5),
            Duration::ZERO,
            false,
        );
        s.record(
            "A",
            None,
            Duration::from_millis(7),
            Duration::from_millis(3),
            true,
        );
        let snap = s.snapshot();
        let a = &snap["A"];
        assert_eq!(a.attempts, 2);
        assert_eq!(a.ok, 1);
        assert_eq!(a.throttled, 1);
        assert_eq!(a.retries, 1);
        assert_eq!(a.errors["RequestLimitExceeded"], 1);
        assert_eq!(a.latency_max, Duration::from_millis(7));
        assert_eq!(a.limiter_wait_total, Duration::from_millis(3));
        assert_eq!(s.total_attempts(), 2);
    }
}
