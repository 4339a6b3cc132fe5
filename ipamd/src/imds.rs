//! Instance metadata (IMDSv2): what this instance is and which ENIs it has attached.
//!
//! Two layers:
//! - [`MetadataSource`] fetches one path. The real one, [`HttpImdsSource`], is our own small
//!   IMDSv2 client: no v1 fallback, one session token refreshed before expiry or on 401, bounded
//!   connect/read timeouts, retries of 5xx/timeouts, endpoint from
//!   `AWS_EC2_METADATA_SERVICE_ENDPOINT` (else `http://169.254.169.254`). [`StaticMetadata`] is the
//!   in-memory seam for unit tests.
//! - [`Imds`] turns paths into typed values. Anything malformed is an [`ImdsError::Malformed`]
//!   naming the path and the value; nothing here panics on what IMDS returns.
//!
//! IMDS answers 404 for fields that do not apply (`ipv4-prefix` without prefixes, `network-card`
//! on single-card instances), so a 404 is `Ok(None)` at the source level and each field decides
//! whether absence is an error (ec2-imds-semantics.md §8.1).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use awscni_limits::imds::{MAX_RESPONSE_BYTES, Response, parse_endpoint, parse_response};
use ipnet::Ipv4Net;

use crate::ec2::LatencyByOutcome;

/// Base path of every metadata request.
pub const META: &str = "/latest/meta-data/";

/// Errors reading instance metadata.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ImdsError {
    /// The request did not get an answer (connection refused, timeout, token failure) after the
    /// client's retries.
    #[error("IMDS request for {path} failed: {reason}")]
    Transport {
        /// Metadata path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// IMDS answered with an HTTP error other than 404.
    #[error("IMDS answered HTTP {status} for {path}")]
    Status {
        /// Metadata path.
        path: String,
        /// HTTP status code.
        status: u16,
    },
    /// A field the daemon needs is absent (404).
    #[error("IMDS has no {path} (404)")]
    Missing {
        /// Metadata path.
        path: String,
    },
    /// IMDS returned a value we cannot use.
    #[error("IMDS value of {path} is malformed ({reason}): {value:?}")]
    Malformed {
        /// Metadata path.
        path: String,
        /// The offending value (one line of it for lists).
        value: String,
        /// Why it was rejected.
        reason: String,
    },
}

impl ImdsError {
    fn malformed(path: &str, value: &str, reason: impl Into<String>) -> Self {
        // Keep errors readable even if IMDS returned a huge body.
        let mut v: String = value.chars().take(200).collect();
        if value.len() > v.len() {
            v.push('…');
        }
        Self::Malformed {
            path: path.to_string(),
            value: v,
            reason: reason.into(),
        }
    }
}

/// Fetches one metadata path. `Ok(None)` means IMDS answered 404.
pub trait MetadataSource: Send + Sync {
    /// GET `path` (absolute, e.g. `/latest/meta-data/mac`).
    fn get(&self, path: &str) -> impl Future<Output = Result<Option<String>, ImdsError>> + Send;
}

/// Settings of the real IMDS client.
#[derive(Debug, Clone, PartialEq)]
pub struct ImdsSettings {
    /// Endpoint override. `None`: `AWS_EC2_METADATA_SERVICE_ENDPOINT` if set, else
    /// `http://169.254.169.254` (or `http://[fd00:ec2::254]` in
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6`).
    pub endpoint: Option<String>,
    /// TCP connect timeout per attempt. IMDS is link-local: anything slow is a failure.
    pub connect_timeout: Duration,
    /// Read timeout per attempt.
    pub read_timeout: Duration,
    /// Attempts per request (first try included); 5xx and timeouts are retried, 404 is not.
    pub max_attempts: u32,
    /// Session-token TTL; the client fetches a new token shortly before this runs out.
    pub token_ttl: Duration,
}

impl Default for ImdsSettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(2),
            max_attempts: 4,
            // IMDS accepts 1..=21600 s; a long TTL saves a PUT per refresh.
            token_ttl: Duration::from_secs(21600),
        }
    }
}

/// The real IMDSv2 source: a small HTTP/1.1 client written for IMDS.
///
/// Why not aws-config's IMDS client: it runs every read through the SDK's orchestrator
/// (interceptors, retry classifiers, identity resolution) and a restart reads ~150 paths on a
/// 15-ENI node. IMDS is plain HTTP on a link-local address; a request is one write and a read,
/// so this client is small enough to test completely (see the tests below).
///
/// Behaviour: IMDSv2 only (no v1 fallback); one session token (PUT `/latest/api/token`) shared
/// by all requests and fetched again shortly before its TTL ends or when IMDS answers 401;
/// bounded connect and read timeouts; 5xx, timeouts and connection errors retried with a short
/// backoff; 404 is `Ok(None)`; a response over [`MAX_RESPONSE_BYTES`] or one that is not
/// HTTP/1.x is a transport error, never a panic. One connection per request (`Connection:
/// close`): IMDS is local, a connect costs tens of microseconds, and there is no idle
/// connection to go stale.
#[derive(Debug, Clone)]
pub struct HttpImdsSource {
    inner: Arc<HttpInner>,
    stats: Arc<ImdsStats>,
}

/// Latency of IMDS reads by outcome, for upstream's `awscni_aws_api_latency_ms` (which counts
/// IMDS reads as `api="GetMetadata"`). One observation per [`MetadataSource::get`], retries
/// included, as upstream times its SDK call.
#[derive(Debug, Default)]
pub struct ImdsStats {
    by_outcome: Mutex<LatencyByOutcome>,
}

impl ImdsStats {
    /// Records one read: `failed` (404 included, as the SDK reports it as an error) and the
    /// final HTTP status (empty when no response came back).
    pub fn record(&self, failed: bool, status: &str, latency: Duration) {
        let mut m = match self.by_outcome.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // Few keys: one per status code seen.
        m.entry((failed, status.to_string()))
            .or_default()
            .add(latency);
    }

    /// Latencies by `(failed, status)`.
    pub fn snapshot(&self) -> LatencyByOutcome {
        match self.by_outcome.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

#[derive(Debug)]
struct HttpInner {
    /// `host:port` to connect to (IPv6 in brackets).
    authority: String,
    settings: ImdsSettings,
    /// The session token and when to stop using it. A tokio mutex so that concurrent requests
    /// that find no token wait for one PUT instead of each sending their own.
    token: tokio::sync::Mutex<Option<(String, std::time::Instant)>>,
}

/// Default IMDS endpoint (IPv4).
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// IMDS endpoint in `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6` (Nitro instances).
pub const DEFAULT_IMDS_ENDPOINT_V6: &str = "http://[fd00:ec2::254]";

impl HttpImdsSource {
    /// Build the client. Endpoint: `settings.endpoint`, else `AWS_EC2_METADATA_SERVICE_ENDPOINT`,
    /// else by `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE` (`IPv4`, the default, or `IPv6`), the
    /// same variables the AWS SDKs read. Fails only on an unusable endpoint.
    pub fn new(settings: &ImdsSettings) -> Result<Self, ImdsError> {
        let ep = match &settings.endpoint {
            Some(e) => e.clone(),
            None => match std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
                Ok(e) if !e.trim().is_empty() => e,
                _ => match std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE") {
                    Ok(m) if m.eq_ignore_ascii_case("ipv6") => DEFAULT_IMDS_ENDPOINT_V6.into(),
                    Ok(m) if !m.is_empty() && !m.eq_ignore_ascii_case("ipv4") => {
                        return Err(ImdsError::malformed(
                            "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
                            &m,
                            "expected IPv4 or IPv6",
                        ));
                    }
                    _ => DEFAULT_IMDS_ENDPOINT.into(),
                },
            },
        };
        let authority =
            parse_endpoint(&ep).map_err(|r| ImdsError::malformed("IMDS endpoint", &ep, r))?;
        Ok(Self {
            inner: Arc::new(HttpInner {
                authority,
                settings: settings.clone(),
                token: tokio::sync::Mutex::new(None),
            }),
            stats: Arc::new(ImdsStats::default()),
        })
    }

    /// Latency counters of this client (shared by its clones).
    pub fn stats(&self) -> Arc<ImdsStats> {
        self.stats.clone()
    }

    /// One request on a fresh connection, bounded by the connect and read timeouts.
    async fn exchange(&self, request: &[u8]) -> Result<Response, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let s = &self.inner.settings;
        let mut conn = tokio::time::timeout(
            s.connect_timeout,
            tokio::net::TcpStream::connect(self.inner.authority.as_str()),
        )
        .await
        .map_err(|_| format!("connect to {} timed out", self.inner.authority))?
        .map_err(|e| format!("connect to {}: {e}", self.inner.authority))?;
        // Requests are tiny; without this the second segment of a write could wait for the
        // delayed ACK of the first.
        let _ = conn.set_nodelay(true);
        let read = async {
            conn.write_all(request)
                .await
                .map_err(|e| format!("send: {e}"))?;
            let mut buf = Vec::with_capacity(512);
            let mut chunk = [0u8; 4096];
            loop {
                let n = conn
                    .read(&mut chunk)
                    .await
                    .map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    break;
                }
                if buf.len() + n > MAX_RESPONSE_BYTES {
                    return Err(format!("response larger than {MAX_RESPONSE_BYTES} bytes"));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Ok(buf)
        };
        let buf = tokio::time::timeout(s.read_timeout, read)
            .await
            .map_err(|_| format!("no complete response within {:?}", s.read_timeout))??;
        parse_response(&buf)
    }

    fn request(&self, method: &str, path: &str, header: (&str, &str)) -> Vec<u8> {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{}: {}\r\nUser-Agent: aws-vpc-cni-rs\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            self.inner.authority, header.0, header.1
        )
        .into_bytes()
    }

    /// The session token, fetching a new one when there is none or it is about to expire.
    /// `stale` is a token IMDS just rejected: it is dropped (unless another request already
    /// replaced it).
    async fn token(&self, stale: Option<&str>) -> Result<String, String> {
        let mut guard = self.inner.token.lock().await;
        let now = std::time::Instant::now();
        if let Some((t, until)) = guard.as_ref()
            && *until > now
            && Some(t.as_str()) != stale
        {
            return Ok(t.clone());
        }
        let ttl = self.inner.settings.token_ttl.as_secs().clamp(1, 21600);
        let req = self.request(
            "PUT",
            "/latest/api/token",
            ("X-aws-ec2-metadata-token-ttl-seconds", &ttl.to_string()),
        );
        let r = self.exchange(&req).await?;
        if r.status != 200 {
            return Err(format!("token request answered HTTP {}", r.status));
        }
        let tok = String::from_utf8(r.body)
            .map_err(|_| "token is not UTF-8".to_string())?
            .trim()
            .to_string();
        if tok.is_empty() || !tok.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("token is empty or not printable".into());
        }
        // Renew well before IMDS would reject it: at 90% of the TTL, at least 1 s early.
        let life = Duration::from_secs(ttl);
        let margin = (life / 10).max(Duration::from_secs(1)).min(life);
        *guard = Some((tok.clone(), now + (life - margin)));
        Ok(tok)
    }
}

impl MetadataSource for HttpImdsSource {
    async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let start = std::time::Instant::now();
        let r = self.get_timed(path).await;
        let (failed, status) = match &r {
            Ok(Some(_)) => (false, "200".to_string()),
            Ok(None) => (true, "404".to_string()),
            Err(ImdsError::Status { status, .. }) => (true, status.to_string()),
            // A body that is not UTF-8 still came with a 200.
            Err(ImdsError::Malformed { .. }) => (true, "200".to_string()),
            Err(_) => (true, String::new()),
        };
        self.stats.record(failed, &status, start.elapsed());
        r
    }
}

impl HttpImdsSource {
    async fn get_timed(&self, path: &str) -> Result<Option<String>, ImdsError> {
        // The path goes into the request line verbatim: refuse anything that could break it.
        if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ImdsError::malformed(
                "IMDS path",
                path,
                "must start with / and contain no spaces or control characters",
            ));
        }
        let transport = |reason: String| ImdsError::Transport {
            path: path.to_string(),
            reason,
        };
        let attempts = self.inner.settings.max_attempts.max(1);
        let mut last = String::new();
        let mut stale: Option<String> = None;
        for attempt in 1..=attempts {
            if attempt > 1 {
                // 50, 100, 200 ms…: IMDS hiccups are short; the whole budget stays under ~1 s.
                let backoff = Duration::from_millis(25u64 << attempt.min(6));
                tokio::time::sleep(backoff).await;
            }
            let token = match self.token(stale.as_deref()).await {
                Ok(t) => t,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let req = self.request("GET", path, ("X-aws-ec2-metadata-token", &token));
            let r = match self.exchange(&req).await {
                Ok(r) => r,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match r.status {
                200 => {
                    return String::from_utf8(r.body)
                        .map(Some)
                        .map_err(|_| ImdsError::malformed(path, "<binary>", "body is not UTF-8"));
                }
                404 => return Ok(None),
                // The token expired or IMDS restarted: get a new one and try again.
                401 => {
                    last = "HTTP 401 (session token rejected)".into();
                    stale = Some(token);
                }
                // Throttled (429) or IMDS trouble (5xx): retry.
                429 | 500..=599 => last = format!("HTTP {}", r.status),
                status => {
                    return Err(ImdsError::Status {
                        path: path.to_string(),
                        status,
                    });
                }
            }
        }
        Err(transport(format!("{last} (after {attempts} attempts)")))
    }
}

/// In-memory metadata for unit tests: path → body; absent paths answer 404.
#[derive(Debug, Clone, Default)]
pub struct StaticMetadata {
    map: Arc<Mutex<BTreeMap<String, String>>>,
}

impl StaticMetadata {
    /// Empty: every path is 404.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set `path` (relative to [`META`], or absolute when it starts with `/`).
    pub fn set(&self, path: &str, body: &str) {
        let key = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{META}{path}")
        };
        if let Ok(mut m) = self.map.lock() {
            m.insert(key, body.to_string());
        }
    }

    /// Remove `path` (it then answers 404).
    pub fn remove(&self, path: &str) {
        let key = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{META}{path}")
        };
        if let Ok(mut m) = self.map.lock() {
            m.remove(&key);
        }
    }
}

impl MetadataSource for StaticMetadata {
    async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let m = self.map.lock().map_err(|_| ImdsError::Transport {
            path: path.to_string(),
            reason: "poisoned".into(),
        })?;
        Ok(m.get(path).cloned())
    }
}

/// Instance-wide facts read once at start.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceMetadata {
    /// `i-…`
    pub instance_id: String,
    /// e.g. `m5.large`.
    pub instance_type: String,
    /// e.g. `us-west-2a`.
    pub availability_zone: String,
    /// e.g. `us-west-2`.
    pub region: String,
    /// Node primary IPv4 (SNAT source).
    pub local_ipv4: Ipv4Addr,
    /// MAC of the primary ENI, lower case.
    pub primary_mac: String,
}

/// One attached ENI as IMDS shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct EniMetadata {
    /// MAC, lower case `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Device index (forced to 0 for the primary ENI, as upstream does).
    pub device_number: u32,
    /// Network card (404 ⇒ 0).
    pub network_card: u32,
    /// `eni-…`
    pub eni_id: String,
    /// `subnet-…`
    pub subnet_id: String,
    /// Subnet CIDR: the ENI address's prefix length, gateway = network + 1.
    pub subnet_cidr: Ipv4Net,
    /// `vpc-…` when IMDS serves it.
    pub vpc_id: Option<String>,
    /// VPC IPv4 CIDRs (may be empty if IMDS does not serve the field).
    pub vpc_cidrs: Vec<Ipv4Net>,
    /// Primary address first, then secondaries (IMDS order).
    pub local_ipv4s: Vec<Ipv4Addr>,
    /// Delegated prefixes (usually /28).
    pub ipv4_prefixes: Vec<Ipv4Net>,
    /// Security groups, sorted.
    pub security_groups: Vec<String>,
}

impl EniMetadata {
    /// The ENI's primary address (first of `local-ipv4s`).
    pub fn primary_ip(&self) -> Option<Ipv4Addr> {
        self.local_ipv4s.first().copied()
    }

    /// Secondary addresses (primary excluded).
    pub fn secondary_ips(&self) -> &[Ipv4Addr] {
        self.local_ipv4s.get(1..).unwrap_or(&[])
    }

    /// Gateway of the ENI's subnet: network address + 1 (VPC router).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet_cidr.network()).wrapping_add(1))
    }
}

/// Typed reader over a [`MetadataSource`].
#[derive(Debug, Clone)]
pub struct Imds<S> {
    src: S,
}

/// Normalise and validate a MAC: six hex pairs separated by `:`, returned lower case.
pub fn parse_mac(path: &str, s: &str) -> Result<String, ImdsError> {
    let t = s.trim().trim_end_matches('/');
    let parts: Vec<&str> = t.split(':').collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ImdsError::malformed(path, s, "not a MAC address"));
    }
    Ok(t.to_ascii_lowercase())
}

fn parse_id(path: &str, s: &str, prefix: &str) -> Result<String, ImdsError> {
    let t = s.trim();
    let rest = t.strip_prefix(prefix).unwrap_or("");
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ImdsError::malformed(
            path,
            s,
            format!("expected an id of the form {prefix}<alphanumeric>"),
        ));
    }
    Ok(t.to_string())
}

fn parse_token(path: &str, s: &str, what: &str) -> Result<String, ImdsError> {
    let t = s.trim();
    if t.is_empty()
        || !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        return Err(ImdsError::malformed(path, s, format!("not a valid {what}")));
    }
    Ok(t.to_string())
}

fn lines(s: &str) -> impl Iterator<Item = &str> {
    s.lines().map(str::trim).filter(|l| !l.is_empty())
}

fn parse_ipv4(path: &str, s: &str) -> Result<Ipv4Addr, ImdsError> {
    s.trim()
        .parse()
        .map_err(|_| ImdsError::malformed(path, s, "not an IPv4 address"))
}

fn parse_net(path: &str, s: &str) -> Result<Ipv4Net, ImdsError> {
    s.trim()
        .parse()
        .map_err(|_| ImdsError::malformed(path, s, "not an IPv4 CIDR"))
}

impl<S: MetadataSource> Imds<S> {
    /// Wrap a source.
    pub fn new(src: S) -> Self {
        Self { src }
    }

    /// The underlying source.
    pub fn source(&self) -> &S {
        &self.src
    }

    async fn opt(&self, rel: &str) -> Result<Option<String>, ImdsError> {
        self.src.get(&format!("{META}{rel}")).await
    }

    async fn req(&self, rel: &str) -> Result<String, ImdsError> {
        self.opt(rel).await?.ok_or_else(|| ImdsError::Missing {
            path: format!("{META}{rel}"),
        })
    }

    /// `instance-id`.
    pub async fn instance_id(&self) -> Result<String, ImdsError> {
        let p = "instance-id";
        parse_id(p, &self.req(p).await?, "i-")
    }

    /// `instance-type`.
    pub async fn instance_type(&self) -> Result<String, ImdsError> {
        let p = "instance-type";
        parse_token(p, &self.req(p).await?, "instance type")
    }

    /// `placement/availability-zone`.
    pub async fn availability_zone(&self) -> Result<String, ImdsError> {
        let p = "placement/availability-zone";
        parse_token(p, &self.req(p).await?, "availability zone")
    }

    /// `placement/region`, else derived from the availability zone (`us-west-2a` → `us-west-2`;
    /// older IMDS versions lack the region path).
    pub async fn region(&self) -> Result<String, ImdsError> {
        let p = "placement/region";
        if let Some(r) = self.opt(p).await? {
            return parse_token(p, &r, "region");
        }
        let az = self.availability_zone().await?;
        let region = az.trim_end_matches(|c: char| c.is_ascii_lowercase());
        if region.is_empty() || region == az {
            return Err(ImdsError::malformed(
                "placement/availability-zone",
                &az,
                "cannot derive a region from it",
            ));
        }
        Ok(region.to_string())
    }

    /// `local-ipv4`.
    pub async fn local_ipv4(&self) -> Result<Ipv4Addr, ImdsError> {
        let p = "local-ipv4";
        parse_ipv4(p, &self.req(p).await?)
    }

    /// `mac` (primary ENI), lower case.
    pub async fn primary_mac(&self) -> Result<String, ImdsError> {
        let p = "mac";
        parse_mac(p, &self.req(p).await?)
    }

    /// All instance-wide facts.
    pub async fn instance(&self) -> Result<InstanceMetadata, ImdsError> {
        let (instance_id, instance_type, availability_zone, region, local_ipv4, primary_mac) = futures::join!(
            self.instance_id(),
            self.instance_type(),
            self.availability_zone(),
            self.region(),
            self.local_ipv4(),
            self.primary_mac(),
        );
        Ok(InstanceMetadata {
            instance_id: instance_id?,
            instance_type: instance_type?,
            availability_zone: availability_zone?,
            region: region?,
            local_ipv4: local_ipv4?,
            primary_mac: primary_mac?,
        })
    }

    /// MACs of every attached ENI (`network/interfaces/macs/`), lower case, in IMDS order.
    pub async fn macs(&self) -> Result<Vec<String>, ImdsError> {
        let p = "network/interfaces/macs/";
        let body = self.req(p).await?;
        lines(&body).map(|l| parse_mac(p, l)).collect()
    }

    /// VPC IPv4 CIDRs as seen on the primary ENI (SNAT exclusions).
    pub async fn vpc_cidrs(&self, mac: &str) -> Result<Vec<Ipv4Net>, ImdsError> {
        let p = format!("network/interfaces/macs/{mac}/vpc-ipv4-cidr-blocks");
        match self.opt(&p).await? {
            Some(b) => lines(&b).map(|l| parse_net(&p, l)).collect(),
            None => Ok(Vec::new()),
        }
    }

    /// One ENI by MAC. `primary_mac` forces device number 0 for the primary ENI, as upstream
    /// does (some instance types report it oddly).
    pub async fn interface(&self, mac: &str, primary_mac: &str) -> Result<EniMetadata, ImdsError> {
        let mac = parse_mac("mac argument", mac)?;
        let base = format!("network/interfaces/macs/{mac}/");
        let path = |leaf: &str| format!("{base}{leaf}");

        // The ten reads are independent: issue them together (a restart reads every ENI; one
        // round trip per ENI instead of ten).
        let (dn_p, nc_p, id_p, sn_p, cidr_p, vpc_p, ips_p, pfx_p, sg_p) = (
            path("device-number"),
            path("network-card"),
            path("interface-id"),
            path("subnet-id"),
            path("subnet-ipv4-cidr-block"),
            path("vpc-id"),
            path("local-ipv4s"),
            path("ipv4-prefix"),
            path("security-group-ids"),
        );
        let (dn, nc, id, sn, cidr, vpc, vpc_cidrs, ips, pfx, sg) = futures::join!(
            self.req(&dn_p),
            self.opt(&nc_p),
            self.req(&id_p),
            self.req(&sn_p),
            self.req(&cidr_p),
            self.opt(&vpc_p),
            self.vpc_cidrs(&mac),
            self.opt(&ips_p),
            self.opt(&pfx_p),
            self.opt(&sg_p),
        );

        let dn_s = dn?;
        let device_number: u32 = dn_s
            .trim()
            .parse()
            .map_err(|_| ImdsError::malformed(&dn_p, &dn_s, "not a non-negative integer"))?;
        let device_number = if mac.eq_ignore_ascii_case(primary_mac) {
            0
        } else {
            device_number
        };
        let network_card = match nc? {
            Some(s) => s
                .trim()
                .parse()
                .map_err(|_| ImdsError::malformed(&nc_p, &s, "not a non-negative integer"))?,
            None => 0,
        };
        let eni_id = parse_id(&id_p, &id?, "eni-")?;
        let subnet_id = parse_id(&sn_p, &sn?, "subnet-")?;
        let subnet_cidr = parse_net(&cidr_p, &cidr?)?;
        let vpc_id = match vpc? {
            Some(s) => Some(parse_id(&vpc_p, &s, "vpc-")?),
            None => None,
        };
        let vpc_cidrs = vpc_cidrs?;
        let local_ipv4s = match ips? {
            Some(b) => lines(&b)
                .map(|l| parse_ipv4(&ips_p, l))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let ipv4_prefixes = match pfx? {
            Some(b) => lines(&b)
                .map(|l| parse_net(&pfx_p, l))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let mut security_groups = match sg? {
            Some(b) => lines(&b)
                .map(|l| parse_id(&sg_p, l, "sg-"))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        security_groups.sort();

        Ok(EniMetadata {
            mac,
            device_number,
            network_card,
            eni_id,
            subnet_id,
            subnet_cidr,
            vpc_id,
            vpc_cidrs,
            local_ipv4s,
            ipv4_prefixes,
            security_groups,
        })
    }

    /// Every attached ENI, sorted by (network card, device number).
    pub async fn interfaces(&self, primary_mac: &str) -> Result<Vec<EniMetadata>, ImdsError> {
        let macs = self.macs().await?;
        let mut out =
            futures::future::try_join_all(macs.iter().map(|m| self.interface(m, primary_mac)))
                .await?;
        out.sort_by_key(|e| (e.network_card, e.device_number));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PMAC: &str = "0e:00:00:00:00:01";
    const SMAC: &str = "0e:00:00:00:00:02";

    fn node() -> StaticMetadata {
        let m = StaticMetadata::new();
        m.set("instance-id", "i-0123456789abcdef0");
        m.set("instance-type", "m5.large");
        m.set("placement/availability-zone", "us-west-2a");
        m.set("local-ipv4", "10.0.1.10");
        m.set("mac", "0E:00:00:00:00:01");
        m.set("network/interfaces/macs/", &format!("{SMAC}/\n{PMAC}/\n"));
        for (mac, dev, eni, ips) in [
            (PMAC, "3", "eni-p", "10.0.1.10\n10.0.1.11"),
            (SMAC, "1", "eni-s", "10.0.70.10\n10.0.70.11\n10.0.70.12"),
        ] {
            let b = format!("network/interfaces/macs/{mac}/");
            m.set(&format!("{b}device-number"), dev);
            m.set(&format!("{b}interface-id"), eni);
            m.set(&format!("{b}subnet-id"), "subnet-1");
            m.set(&format!("{b}subnet-ipv4-cidr-block"), "10.0.64.0/19");
            m.set(
                &format!("{b}vpc-ipv4-cidr-blocks"),
                "10.0.0.0/16\n100.64.0.0/16",
            );
            m.set(&format!("{b}local-ipv4s"), ips);
            m.set(&format!("{b}security-group-ids"), "sg-b\nsg-a");
        }
        m.set(
            &format!("network/interfaces/macs/{SMAC}/ipv4-prefix"),
            "10.0.80.16/28\n",
        );
        m
    }

    #[tokio::test]
    async fn parses_instance_and_interfaces() {
        let imds = Imds::new(node());
        let inst = imds.instance().await.unwrap();
        assert_eq!(inst.instance_id, "i-0123456789abcdef0");
        assert_eq!(inst.region, "us-west-2", "derived from the AZ");
        assert_eq!(inst.primary_mac, PMAC, "lower-cased");
        assert_eq!(inst.local_ipv4, Ipv4Addr::new(10, 0, 1, 10));

        let enis = imds.interfaces(&inst.primary_mac).await.unwrap();
        assert_eq!(enis.len(), 2);
        assert_eq!(enis[0].mac, PMAC);
        assert_eq!(enis[0].device_number, 0, "primary forced to device 0");
        assert_eq!(enis[0].network_card, 0, "404 network-card means card 0");
        assert!(
            enis[0].ipv4_prefixes.is_empty(),
            "404 ipv4-prefix means none"
        );
        let s = &enis[1];
        assert_eq!(s.eni_id, "eni-s");
        assert_eq!(s.device_number, 1);
        assert_eq!(s.primary_ip(), Some(Ipv4Addr::new(10, 0, 70, 10)));
        assert_eq!(
            s.secondary_ips(),
            &[Ipv4Addr::new(10, 0, 70, 11), Ipv4Addr::new(10, 0, 70, 12)]
        );
        assert_eq!(s.ipv4_prefixes, vec!["10.0.80.16/28".parse().unwrap()]);
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 0, 64, 1));
        assert_eq!(s.security_groups, vec!["sg-a", "sg-b"]);
        assert_eq!(s.vpc_cidrs.len(), 2);
    }

    #[tokio::test]
    async fn region_path_wins_over_az() {
        let m = node();
        m.set("placement/region", "eu-central-1");
        assert_eq!(Imds::new(m).region().await.unwrap(), "eu-central-1");
    }

    #[tokio::test]
    async fn malformed_values_are_typed_errors() {
        let cases: Vec<(&str, &str)> = vec![
            ("local-ipv4", "10.0.1"),
            ("mac", "0e:00:00:00:00"),
            ("instance-id", "x-123"),
            ("instance-id", ""),
            ("instance-type", "m5 large"),
        ];
        for (path, value) in cases {
            let m = node();
            m.set(path, value);
            let err = Imds::new(m).instance().await.unwrap_err();
            match err {
                ImdsError::Malformed {
                    path: p, value: v, ..
                } => {
                    assert_eq!(p, path);
                    assert_eq!(v, value);
                }
                other => panic!("{path}={value:?}: expected Malformed, got {other:?}"),
            }
        }
        let per_eni: Vec<(&str, &str)> = vec![
            ("device-number", "-1"),
            ("device-number", "one"),
            ("network-card", "x"),
            ("interface-id", "vol-1"),
            ("subnet-ipv4-cidr-block", "10.0.64.0/40"),
            ("local-ipv4s", "10.0.70.10\nnot-an-ip"),
            ("ipv4-prefix", "10.0.80.16/28\n10.0.80.300/28"),
            ("security-group-ids", "sg-a\n\u{0}"),
        ];
        for (leaf, value) in per_eni {
            let m = node();
            m.set(&format!("network/interfaces/macs/{SMAC}/{leaf}"), value);
            let err = Imds::new(m).interface(SMAC, PMAC).await.unwrap_err();
            assert!(
                matches!(&err, ImdsError::Malformed { path, .. } if path.ends_with(leaf)),
                "{leaf}={value:?}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn missing_required_field_is_named() {
        let m = node();
        m.remove(&format!("network/interfaces/macs/{SMAC}/subnet-id"));
        let err = Imds::new(m).interface(SMAC, PMAC).await.unwrap_err();
        assert_eq!(
            err,
            ImdsError::Missing {
                path: format!("{META}network/interfaces/macs/{SMAC}/subnet-id")
            }
        );
        let m = node();
        m.set("network/interfaces/macs/", "zz:00:00:00:00:00/\n");
        assert!(matches!(
            Imds::new(m).macs().await.unwrap_err(),
            ImdsError::Malformed { .. }
        ));
    }

    #[test]
    fn huge_values_are_truncated_in_errors() {
        let big = "x".repeat(10_000);
        let e = ImdsError::malformed("p", &big, "r");
        assert!(e.to_string().len() < 400);
    }

    // ---- HttpImdsSource against an in-process HTTP server --------------------------------

    /// What the fake IMDS saw.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    type Handler = Arc<dyn Fn(&Seen, usize) -> Vec<u8> + Send + Sync>;

    /// A one-request-per-connection HTTP server on 127.0.0.1; `handler(request, n)` gets the
    /// request number `n` (0-based) and returns the raw response bytes.
    async fn fake_imds(handler: Handler) -> (String, Arc<Mutex<Vec<Seen>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut c, _)) = l.accept().await else {
                    return;
                };
                let log = log.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut b = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match c.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let mut lines = text.split("\r\n");
                    let mut rl = lines.next().unwrap().split(' ');
                    let req = Seen {
                        method: rl.next().unwrap().to_string(),
                        path: rl.next().unwrap().to_string(),
                        headers: lines
                            .filter_map(|l| l.split_once(':'))
                            .map(|(n, v)| (n.to_string(), v.trim().to_string()))
                            .collect(),
                    };
                    let n = {
                        let mut g = log.lock().unwrap();
                        g.push(req.clone());
                        g.len() - 1
                    };
                    let resp = handler(&req, n);
                    if !resp.is_empty() {
                        let _ = c.write_all(&resp).await;
                    } else {
                        // Empty response: hang (timeout test).
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                });
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn http(status: u16, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn client(ep: &str) -> HttpImdsSource {
        HttpImdsSource::new(&ImdsSettings {
            endpoint: Some(ep.to_string()),
            read_timeout: Duration::from_millis(300),
            ..ImdsSettings::default()
        })
        .unwrap()
    }

    /// Token handler: PUT → `tok-<n>`; GET with the current token → `handler`; else 401.
    fn imdsv2(valid: &'static str, get: fn(&Seen) -> Vec<u8>) -> Handler {
        Arc::new(move |r: &Seen, _| {
            if r.method == "PUT" && r.path == "/latest/api/token" {
                assert!(r.header("X-aws-ec2-metadata-token-ttl-seconds").is_some());
                return http(200, valid);
            }
            if r.header("X-aws-ec2-metadata-token") != Some(valid) {
                return http(401, "");
            }
            get(r)
        })
    }

    #[tokio::test]
    async fn http_source_uses_one_token_for_concurrent_reads() {
        let (ep, seen) = fake_imds(imdsv2("tok-A", |r| {
            if r.path == "/latest/meta-data/missing" {
                http(404, "not found")
            } else {
                http(200, &format!("value of {}", r.path))
            }
        }))
        .await;
        let c = client(&ep);
        let paths: Vec<String> = (0..20).map(|i| format!("{META}p{i}")).collect();
        let got = futures::future::join_all(paths.iter().map(|p| c.get(p))).await;
        for (p, g) in paths.iter().zip(got) {
            assert_eq!(g.unwrap(), Some(format!("value of {p}")));
        }
        assert_eq!(c.get("/latest/meta-data/missing").await.unwrap(), None);
        let stats = c.stats().snapshot();
        assert_eq!(stats.get(&(false, "200".into())).map(|v| v.count), Some(20));
        assert_eq!(stats.get(&(true, "404".into())).map(|v| v.count), Some(1));
        let seen = seen.lock().unwrap();
        let puts = seen.iter().filter(|r| r.method == "PUT").count();
        assert_eq!(puts, 1, "one token for all requests: {seen:?}");
        assert_eq!(seen.len(), 22);
    }

    #[tokio::test]
    async fn http_source_renews_a_rejected_token() {
        // The first token is rejected on its first use (IMDS restarted): the client must fetch
        // a second one and succeed.
        let (ep, seen) = fake_imds(Arc::new(|r: &Seen, n| {
            if r.method == "PUT" {
                return http(200, &format!("tok-{n}"));
            }
            match r.header("X-aws-ec2-metadata-token") {
                Some("tok-0") => http(401, ""),
                Some(_) => http(200, "ok"),
                None => http(401, ""),
            }
        }))
        .await;
        let c = client(&ep);
        assert_eq!(
            c.get("/latest/meta-data/x").await.unwrap().as_deref(),
            Some("ok")
        );
        let seen = seen.lock().unwrap();
        let puts = seen.iter().filter(|r| r.method == "PUT").count();
        assert_eq!(puts, 2, "{seen:?}");
    }

    #[tokio::test]
    async fn http_source_retries_5xx_and_gives_up_with_a_named_error() {
        let (ep, seen) = fake_imds(Arc::new(|r: &Seen, n| {
            if r.method == "PUT" {
                return http(200, "t");
            }
            // Requests 1 and 2 (after the PUT) fail, the third succeeds.
            if r.path.ends_with("/flaky") && n < 3 {
                return http(503, "busy");
            }
            if r.path.ends_with("/broken") {
                return http(500, "down");
            }
            if r.path.ends_with("/forbidden") {
                return http(403, "no");
            }
            http(200, "fine")
        }))
        .await;
        let c = client(&ep);
        assert_eq!(
            c.get("/latest/meta-data/flaky").await.unwrap().as_deref(),
            Some("fine")
        );
        let e = c.get("/latest/meta-data/broken").await.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ImdsError::Transport { .. }), "{e:?}");
        assert!(
            msg.contains("/latest/meta-data/broken") && msg.contains("HTTP 500"),
            "{msg}"
        );
        assert!(msg.contains("4 attempts"), "{msg}");
        let e = c.get("/latest/meta-data/forbidden").await.unwrap_err();
        assert_eq!(
            e,
            ImdsError::Status {
                path: "/latest/meta-data/forbidden".into(),
                status: 403
            }
        );
        let gets = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.ends_with("/broken"))
            .count();
        assert_eq!(gets, 4);
    }

    #[tokio::test]
    async fn http_source_decodes_chunked_bodies() {
        let (ep, _) = fake_imds(imdsv2("t", |_| {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n".to_vec()
        }))
        .await;
        let c = client(&ep);
        assert_eq!(
            c.get("/latest/meta-data/x").await.unwrap().as_deref(),
            Some("hello, world")
        );
    }

    #[tokio::test]
    async fn http_source_turns_garbage_and_silence_into_errors() {
        let (ep, _) = fake_imds(Arc::new(|r: &Seen, _| {
            if r.method == "PUT" {
                return http(200, "t");
            }
            match r.path.as_str() {
                "/latest/meta-data/garbage" => b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(),
                "/latest/meta-data/short" => {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec()
                }
                "/latest/meta-data/binary" => {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n\xff\xfe".to_vec()
                }
                "/latest/meta-data/huge" => {
                    let mut v = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
                    v.resize(MAX_RESPONSE_BYTES + 10, b'a');
                    v
                }
                _ => Vec::new(), // hang
            }
        }))
        .await;
        let c = HttpImdsSource::new(&ImdsSettings {
            endpoint: Some(ep),
            read_timeout: Duration::from_millis(200),
            max_attempts: 2,
            ..ImdsSettings::default()
        })
        .unwrap();
        for (p, want) in [
            ("garbage", "not an HTTP/1.x status line"),
            ("short", "shorter"),
            ("huge", "larger than"),
            ("silent", "no complete response"),
        ] {
            let e = c.get(&format!("{META}{p}")).await.unwrap_err();
            assert!(
                matches!(e, ImdsError::Transport { .. }) && e.to_string().contains(want),
                "{p}: {e}"
            );
        }
        let e = c.get(&format!("{META}binary")).await.unwrap_err();
        assert!(matches!(e, ImdsError::Malformed { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn http_source_refuses_paths_that_would_break_the_request_line() {
        let (ep, seen) = fake_imds(imdsv2("t", |_| http(200, "x"))).await;
        let c = client(&ep);
        for p in ["/a b", "/a\r\nX-Evil: 1", "relative", ""] {
            let e = c.get(p).await.unwrap_err();
            assert!(matches!(e, ImdsError::Malformed { .. }), "{p:?}: {e:?}");
        }
        assert!(seen.lock().unwrap().is_empty(), "nothing may be sent");
    }

    #[test]
    fn unusable_endpoint_is_named() {
        let e = HttpImdsSource::new(&ImdsSettings {
            endpoint: Some("ftp://x".into()),
            ..ImdsSettings::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("ftp://x"), "{e}");
    }
}
