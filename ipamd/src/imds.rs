//! Instance metadata (IMDSv2): what this instance is and which ENIs it has attached.
//!
//! Two layers:
//! - [`MetadataSource`] fetches one path. The real one, [`AwsImdsSource`], is `aws-config`'s IMDS
//!   client: IMDSv2 only (no v1 fallback), session token with a TTL that it refreshes before
//!   expiry, bounded connect/read timeouts, retries of 5xx/timeouts, endpoint from
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

use ipnet::Ipv4Net;

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
    /// `http://169.254.169.254` (the aws-config client resolves this itself).
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

/// The real IMDSv2 source (aws-config's client).
#[derive(Debug, Clone)]
pub struct AwsImdsSource {
    client: aws_config::imds::Client,
}

impl AwsImdsSource {
    /// Build the client. Fails only on an unparsable endpoint.
    pub fn new(settings: &ImdsSettings) -> Result<Self, ImdsError> {
        let mut b = aws_config::imds::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout)
            .max_attempts(settings.max_attempts.max(1))
            .token_ttl(settings.token_ttl);
        if let Some(ep) = &settings.endpoint {
            b = b
                .endpoint(ep)
                .map_err(|e| ImdsError::malformed("IMDS endpoint", ep, e.to_string()))?;
        }
        Ok(Self { client: b.build() })
    }
}

impl MetadataSource for AwsImdsSource {
    async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        use aws_config::imds::client::error::ImdsError as E;
        match self.client.get(path).await {
            Ok(s) => Ok(Some(String::from(s))),
            Err(E::ErrorResponse(r)) => {
                let status = r.response().status().as_u16();
                if status == 404 {
                    Ok(None)
                } else {
                    Err(ImdsError::Status {
                        path: path.to_string(),
                        status,
                    })
                }
            }
            Err(e) => Err(ImdsError::Transport {
                path: path.to_string(),
                reason: error_chain(&e),
            }),
        }
    }
}

/// `e: cause: cause` — the aws-config errors say little at the top level.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
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
        Ok(InstanceMetadata {
            instance_id: self.instance_id().await?,
            instance_type: self.instance_type().await?,
            availability_zone: self.availability_zone().await?,
            region: self.region().await?,
            local_ipv4: self.local_ipv4().await?,
            primary_mac: self.primary_mac().await?,
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

        let dn_p = path("device-number");
        let dn_s = self.req(&dn_p).await?;
        let device_number: u32 = dn_s
            .trim()
            .parse()
            .map_err(|_| ImdsError::malformed(&dn_p, &dn_s, "not a non-negative integer"))?;
        let device_number = if mac.eq_ignore_ascii_case(primary_mac) {
            0
        } else {
            device_number
        };

        let nc_p = path("network-card");
        let network_card = match self.opt(&nc_p).await? {
            Some(s) => s
                .trim()
                .parse()
                .map_err(|_| ImdsError::malformed(&nc_p, &s, "not a non-negative integer"))?,
            None => 0,
        };

        let id_p = path("interface-id");
        let eni_id = parse_id(&id_p, &self.req(&id_p).await?, "eni-")?;
        let sn_p = path("subnet-id");
        let subnet_id = parse_id(&sn_p, &self.req(&sn_p).await?, "subnet-")?;
        let cidr_p = path("subnet-ipv4-cidr-block");
        let subnet_cidr = parse_net(&cidr_p, &self.req(&cidr_p).await?)?;
        let vpc_p = path("vpc-id");
        let vpc_id = match self.opt(&vpc_p).await? {
            Some(s) => Some(parse_id(&vpc_p, &s, "vpc-")?),
            None => None,
        };
        let vpc_cidrs = self.vpc_cidrs(&mac).await?;

        let ips_p = path("local-ipv4s");
        let local_ipv4s = match self.opt(&ips_p).await? {
            Some(b) => lines(&b)
                .map(|l| parse_ipv4(&ips_p, l))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let pfx_p = path("ipv4-prefix");
        let ipv4_prefixes = match self.opt(&pfx_p).await? {
            Some(b) => lines(&b)
                .map(|l| parse_net(&pfx_p, l))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let sg_p = path("security-group-ids");
        let mut security_groups = match self.opt(&sg_p).await? {
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
        let mut out = Vec::new();
        for mac in self.macs().await? {
            out.push(self.interface(&mac, primary_mac).await?);
        }
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
}
