//! CNI wire types: the network configuration on stdin, the result and error documents on
//! stdout, and the per-spec-version rendering of results (cni-spec.md §3, §5, §6).
//!
//! One internal result type ([`CniResult`]) is rendered with [`CniResult::render`] in the
//! version the request asked for: 0.3.x/0.4.0 add `ips[].version`, 1.0.0 drops the 1.1-only
//! fields. Optional fields are omitted when empty, like Go's `omitempty`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Spec versions we accept, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The current spec version (what we advertise when nothing else applies).
pub const CURRENT_VERSION: &str = "1.1.0";

/// A supported spec version, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SpecVersion {
    /// 0.3.0
    V030,
    /// 0.3.1
    V031,
    /// 0.4.0
    V040,
    /// 1.0.0
    V100,
    /// 1.1.0
    V110,
}

impl SpecVersion {
    /// Parses an exact supported version string (the library does an exact string match).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "0.3.0" => Self::V030,
            "0.3.1" => Self::V031,
            "0.4.0" => Self::V040,
            "1.0.0" => Self::V100,
            "1.1.0" => Self::V110,
            _ => return None,
        })
    }

    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V030 => "0.3.0",
            Self::V031 => "0.3.1",
            Self::V040 => "0.4.0",
            Self::V100 => "1.0.0",
            Self::V110 => "1.1.0",
        }
    }
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct GcAttachment {
    /// Container ID of a still-valid attachment.
    #[serde(rename = "containerID", default)]
    pub container_id: String,
    /// Interface name of a still-valid attachment.
    #[serde(default)]
    pub ifname: String,
}

/// The plugin configuration object on stdin. Unknown keys are ignored (the runtime passes
/// through whatever the conflist holds).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// Negotiated spec version; the result is rendered in it.
    pub cni_version: Option<String>,
    /// Network name; part of the IPAM key (`NetworkName`).
    pub name: Option<String>,
    /// Plugin type (binary name).
    #[serde(rename = "type")]
    pub plugin_type: Option<String>,
    /// Host-veth name prefix (upstream `vethPrefix`, default `eni`, at most 4 characters).
    pub veth_prefix: Option<String>,
    /// Pod veth MTU. Upstream renders it as a *string*; a number is accepted too. Unparsable
    /// or outside 576..=9001 → 9001, silently, as upstream does.
    pub mtu: Option<Value>,
    /// Security-groups-for-pods mode (`strict`/`standard`); accepted and ignored (later scope).
    #[serde(rename = "podSGEnforcingMode")]
    pub pod_sg_enforcing_mode: Option<String>,
    /// Log destination: a path, or `stderr`. Absent → `/var/log/aws-routed-eni/plugin.log`
    /// (upstream default); empty → stderr. `stdout` is refused (stdout carries the result).
    pub plugin_log_file: Option<String>,
    /// Log level: `debug`, `info`, `warn`, `error`, `fatal` (case-insensitive; unknown → debug).
    pub plugin_log_level: Option<String>,
    /// Ours: ipamd socket path; beats env `AWS_VPC_CNI_IPAMD_SOCKET` and the default
    /// `/var/run/aws-node/ipamd.sock`.
    pub ipamd_socket: Option<String>,
    /// Ours: directory for the per-attachment state DEL uses when ipamd is unreachable and
    /// there is no `prevResult`; beats env `AWS_VPC_CNI_STATE_DIR` and the default
    /// `/var/run/aws-node/cni-state`.
    pub state_dir: Option<String>,
    /// Previous result (chained ADD), or the cached ADD result (DEL, CHECK).
    pub prev_result: Option<Value>,
    /// Runtime capability arguments (pod annotations; multi-NIC is later scope).
    pub runtime_config: Option<Value>,
    /// GC: attachments that are still valid.
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<GcAttachment>>,
    /// GC: the pre-rename spelling of `cni.dev/valid-attachments` (libcni sends both).
    #[serde(rename = "cni.dev/attachments")]
    pub legacy_attachments: Option<Vec<GcAttachment>>,
}

/// An interface in a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address (upstream abuses it for the route table; see datapath.md §12).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// MTU (1.1.0+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Netns path for container interfaces; empty for host interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// vhost-user socket path (1.1.0+; unused by us, preserved from `prevResult`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub socket_path: String,
    /// PCI ID (1.1.0+; unused by us, preserved from `prevResult`).
    #[serde(rename = "pciID", default, skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
}

/// An address in a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address in CIDR notation.
    pub address: String,
    /// Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<i64>,
}

/// A route in a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    /// Destination prefix.
    pub dst: String,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    /// 1.1.0+: MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i64>,
    /// 1.1.0+: advertised MSS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<i64>,
    /// 1.1.0+: priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// 1.1.0+: table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<i64>,
    /// 1.1.0+: scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<i64>,
}

/// The (version-independent) result of ADD.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CniResult {
    /// Interfaces created or touched.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes inside the container.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// DNS settings, passed through untouched.
    #[serde(default)]
    pub dns: Option<Value>,
}

impl CniResult {
    /// Parses a `prevResult` of any supported version (extra fields like `ips[].version` and
    /// `cniVersion` are ignored).
    pub fn from_value(v: &Value) -> Result<Self, String> {
        serde_json::from_value(v.clone()).map_err(|e| format!("invalid prevResult: {e}"))
    }

    /// Renders the result in `version`.
    pub fn render(&self, version: SpecVersion) -> Value {
        let v11 = version >= SpecVersion::V110;
        let v0 = version < SpecVersion::V100;
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut i = i.clone();
                if !v11 {
                    i.mtu = None;
                    i.socket_path.clear();
                    i.pci_id.clear();
                }
                serde_json::to_value(i).unwrap_or(Value::Null)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = match serde_json::to_value(ip) {
                    Ok(Value::Object(o)) => o,
                    _ => Map::new(),
                };
                if v0 {
                    let fam = if ip.address.contains(':') { "6" } else { "4" };
                    o.insert("version".into(), json!(fam));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut r = r.clone();
                if !v11 {
                    r.mtu = None;
                    r.advmss = None;
                    r.priority = None;
                    r.table = None;
                    r.scope = None;
                }
                serde_json::to_value(r).unwrap_or(Value::Null)
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        if !interfaces.is_empty() {
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        if !ips.is_empty() {
            out.insert("ips".into(), Value::Array(ips));
        }
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert(
            "dns".into(),
            self.dns
                .clone()
                .unwrap_or_else(|| Value::Object(Map::new())),
        );
        Value::Object(out)
    }
}

/// The error document (cni-spec.md §6).
pub fn error_json(version: &str, code: u32, msg: &str, details: Option<&str>) -> Value {
    let mut o = Map::new();
    o.insert("cniVersion".into(), json!(version));
    o.insert("code".into(), json!(code));
    o.insert("msg".into(), json!(msg));
    if let Some(d) = details {
        o.insert("details".into(), json!(d));
    }
    Value::Object(o)
}

/// The VERSION document.
pub fn version_json(version: &str) -> Value {
    json!({ "cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "eni0761ccbeace".into(),
                    mac: "5e:3a:91:0c:7d:12".into(),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: "a2:44:10:9b:3e:01".into(),
                    mtu: Some(9001),
                    sandbox: "/var/run/netns/x".into(),
                    ..Default::default()
                },
            ],
            ips: vec![IpConfig {
                address: "10.0.70.11/32".into(),
                gateway: Some("169.254.1.1".into()),
                interface: Some(1),
            }],
            routes: vec![RouteConfig {
                dst: "0.0.0.0/0".into(),
                gw: Some("169.254.1.1".into()),
                table: Some(254),
                ..Default::default()
            }],
            dns: None,
        }
    }

    #[test]
    fn render_per_version() {
        let r = sample();
        let v11 = r.render(SpecVersion::V110);
        assert_eq!(v11["cniVersion"], "1.1.0");
        assert_eq!(v11["interfaces"][1]["mtu"], 9001);
        assert_eq!(v11["routes"][0]["table"], 254);
        assert!(v11["ips"][0].get("version").is_none());
        let v10 = r.render(SpecVersion::V100);
        assert!(v10["interfaces"][1].get("mtu").is_none());
        assert!(v10["routes"][0].get("table").is_none());
        assert!(v10["ips"][0].get("version").is_none());
        let v04 = r.render(SpecVersion::V040);
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["cniVersion"], "0.4.0");
        assert!(v04["interfaces"][0].get("sandbox").is_none());
        // Round trip through prevResult parsing.
        let back = CniResult::from_value(&v11).unwrap();
        assert_eq!(back.interfaces, r.interfaces);
        assert_eq!(back.ips, r.ips);
    }

    #[test]
    fn netconf_keys() {
        let c: NetConf = serde_json::from_str(
            r#"{"cniVersion":"0.4.0","name":"aws-cni","type":"aws-cni","vethPrefix":"eni",
                "mtu":"9001","pluginLogFile":"/tmp/x","ipamdSocket":"/tmp/s",
                "cni.dev/attachments":[{"containerID":"c1","ifname":"eth0"}],"other":1}"#,
        )
        .unwrap();
        assert_eq!(c.veth_prefix.as_deref(), Some("eni"));
        assert_eq!(c.ipamd_socket.as_deref(), Some("/tmp/s"));
        assert_eq!(c.legacy_attachments.unwrap()[0].container_id, "c1");
        assert!(SpecVersion::parse("0.2.0").is_none());
        assert!(SpecVersion::V040 < SpecVersion::V100);
    }
}
