//! The emulated EC2 API seen through the real aws-sdk-ec2 (the ground truth for "no ENI or
//! address leaked").

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::Context;
use aws_credential_types::Credentials;
use aws_sdk_ec2::config::{BehaviorVersion, Region};
use ipnet::Ipv4Net;

/// One ENI as EC2 describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniInfo {
    /// `eni-…`.
    pub id: String,
    /// `in-use`, `available`, `attaching`, …
    pub status: String,
    /// Instance it is attached to.
    pub instance_id: Option<String>,
    /// Device index of the attachment.
    pub device_index: Option<i32>,
    /// Primary private IPv4.
    pub primary_ip: Option<Ipv4Addr>,
    /// Secondary private IPv4 addresses.
    pub secondary_ips: Vec<Ipv4Addr>,
    /// Delegated IPv4 prefixes.
    pub prefixes: Vec<Ipv4Net>,
    /// Description.
    pub description: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

impl EniInfo {
    /// Pod-usable addresses held by this ENI: its secondary IPs plus 16 per /28.
    pub fn pod_capacity(&self) -> usize {
        self.secondary_ips.len()
            + self
                .prefixes
                .iter()
                .map(|p| 1usize << (32 - u32::from(p.prefix_len())))
                .sum::<usize>()
    }
}

/// A blocking EC2 client.
#[derive(Debug)]
pub struct Ec2 {
    rt: tokio::runtime::Runtime,
    client: aws_sdk_ec2::Client,
}

impl Ec2 {
    /// Client for `endpoint` (loopback) with static test credentials.
    pub fn new(endpoint: &str, region: &str) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot build a tokio runtime")?;
        let conf = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new("AKIDE2E", "e2e-secret", None, None, "e2e"))
            .build();
        Ok(Self {
            rt,
            client: aws_sdk_ec2::Client::from_conf(conf),
        })
    }

    /// Every ENI in the (emulated) region.
    pub fn enis(&self) -> anyhow::Result<Vec<EniInfo>> {
        let out = self
            .rt
            .block_on(self.client.describe_network_interfaces().send())
            .map_err(|e| anyhow::anyhow!("DescribeNetworkInterfaces: {e:?}"))?;
        let mut v = Vec::new();
        for n in out.network_interfaces() {
            let primary_ip = n.private_ip_address().and_then(|s| s.parse().ok());
            let secondary_ips = n
                .private_ip_addresses()
                .iter()
                .filter(|a| a.primary() != Some(true))
                .filter_map(|a| a.private_ip_address().and_then(|s| s.parse().ok()))
                .collect();
            let prefixes = n
                .ipv4_prefixes()
                .iter()
                .filter_map(|p| p.ipv4_prefix().and_then(|s| s.parse().ok()))
                .collect();
            let tags = n
                .tag_set()
                .iter()
                .map(|t| {
                    (
                        t.key().unwrap_or_default().to_owned(),
                        t.value().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            v.push(EniInfo {
                id: n.network_interface_id().unwrap_or_default().to_owned(),
                status: n
                    .status()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
                instance_id: n
                    .attachment()
                    .and_then(|a| a.instance_id())
                    .map(str::to_owned),
                device_index: n.attachment().and_then(|a| a.device_index()),
                primary_ip,
                secondary_ips,
                prefixes,
                description: n.description().unwrap_or_default().to_owned(),
                tags,
            });
        }
        v.sort_by(|a, b| {
            (a.instance_id.as_deref(), a.device_index)
                .cmp(&(b.instance_id.as_deref(), b.device_index))
        });
        Ok(v)
    }

    /// ENIs attached to `instance_id`, by device index.
    pub fn enis_of(&self, instance_id: &str) -> anyhow::Result<Vec<EniInfo>> {
        Ok(self
            .enis()?
            .into_iter()
            .filter(|e| e.instance_id.as_deref() == Some(instance_id))
            .collect())
    }

    /// ENIs that are not attached to anything (a leak, when created by ipamd).
    pub fn detached_enis(&self) -> anyhow::Result<Vec<EniInfo>> {
        Ok(self
            .enis()?
            .into_iter()
            .filter(|e| e.instance_id.is_none())
            .collect())
    }
}
