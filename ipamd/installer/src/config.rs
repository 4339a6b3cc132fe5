//! Environment of the entrypoint and of the init step, validated up front.
//!
//! Variable names, defaults and accepted values are upstream's (env-vars.md, rows `entry` and
//! `init`), so the upstream DaemonSet manifest works unchanged. Where upstream silently falls
//! back to a default on a bad value, the entrypoint refuses to start instead: a node that comes
//! up with an MTU or veth prefix other than the one the operator wrote is harder to debug than a
//! pod in CrashLoopBackOff whose log names the variable. Variables marked **ours** are additions
//! for paths that upstream hard-codes.

use std::fmt;
use std::path::PathBuf;

use awscni_envconf::{Case, Joined, OnUnknown, Reader};

/// Upstream's boolean parsing, shared with ipamd (also used by the health probe's flags).
pub use awscni_envconf::parse_go_bool;

/// Default of `HOST_CNI_BIN_PATH` (the host's `/opt/cni/bin`, mounted into the pod).
pub const DEFAULT_HOST_CNI_BIN_PATH: &str = "/host/opt/cni/bin";
/// Default of `HOST_CNI_CONFDIR_PATH` (the host's `/etc/cni/net.d`, mounted into the pod).
pub const DEFAULT_HOST_CNI_CONFDIR_PATH: &str = "/host/etc/cni/net.d";
/// Default ipamd gRPC socket (wire-contract.md §12), shared with the plugin and ipamd.
pub use awscni_proto::DEFAULT_IPAMD_SOCKET;
/// Upstream's image path of the daemon binary.
pub const DEFAULT_IPAMD_BIN: &str = "/app/aws-k8s-agent";
/// Name looked up on `PATH` when [`DEFAULT_IPAMD_BIN`] does not exist (our binary's own name).
pub const FALLBACK_IPAMD_BIN: &str = "ipamd";
/// Upstream's image path of the plugin binary.
pub const DEFAULT_PLUGIN_SRC: &str = "/app/aws-cni";
/// Where Debian's `containernetworking-plugins` package (used by our Dockerfile) puts the
/// standard plugins that the conflist chains.
pub const DEFAULT_STD_PLUGINS_DIR: &str = "/usr/lib/cni";
/// Default `AWS_VPC_K8S_PLUGIN_LOG_FILE`: a host path, because the plugin runs on the host.
pub const DEFAULT_PLUGIN_LOG_FILE: &str = "/var/log/aws-routed-eni/plugin.log";
/// Default `AWS_VPC_K8S_PLUGIN_LOG_LEVEL` (upstream spelling).
pub const DEFAULT_PLUGIN_LOG_LEVEL: &str = "Debug";
/// Default ENI and pod MTU (jumbo frames inside a VPC).
pub const DEFAULT_MTU: u32 = 9001;
/// Lowest MTU accepted in IPv4 mode (RFC 791 minimum datagram every host must accept).
pub const MIN_MTU_V4: u32 = 576;
/// Lowest MTU accepted in IPv6 mode (RFC 8200 minimum link MTU).
pub const MIN_MTU_V6: u32 = 1280;
/// Highest MTU an ENI supports.
pub const MAX_MTU: u32 = 9001;
/// Default `IP_COOLDOWN_PERIOD` in seconds.
pub const DEFAULT_IP_COOLDOWN_SECONDS: u64 = 30;

/// One invalid variable: its name, the value as found and why it was rejected (the reader
/// shared with ipamd).
pub type ConfigError = awscni_envconf::Problem;

/// Every invalid variable found, so an operator fixes the manifest in one round trip.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid environment: {}", Joined(&self.0))
    }
}

impl ConfigErrors {
    /// True when the named variable is among the errors (for tests and callers).
    pub fn names(&self, var: &str) -> bool {
        self.0.iter().any(|e| e.var == var)
    }
}

/// SNAT port randomisation (`AWS_VPC_K8S_CNI_RANDOMIZESNAT`), shared with ipamd.
pub use awscni_envconf::RandomizeSnat;

/// Security-group-for-pods routing mode (`POD_SECURITY_GROUP_ENFORCING_MODE`), rendered as
/// `podSGEnforcingMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodSgMode {
    /// Branch-ENI pods use their own ENI for everything.
    Strict,
    /// Branch-ENI pods may also use the node's routes.
    Standard,
}

impl PodSgMode {
    /// The spelling used in the environment and the conflist.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "strict",
            Self::Standard => "standard",
        }
    }
}

/// Settings of the main entrypoint sequence (operations.md §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrypointConfig {
    /// `HOST_CNI_BIN_PATH`: directory the plugin binary is installed into.
    pub host_cni_bin_path: PathBuf,
    /// `HOST_CNI_CONFDIR_PATH`: directory `10-aws.conflist` is written into.
    pub host_cni_confdir_path: PathBuf,
    /// `AWS_VPC_ENI_MTU`: MTU of the ENIs; also the default pod MTU.
    pub eni_mtu: u32,
    /// `POD_MTU`: MTU of both veth ends, rendered into the netconf as a string.
    pub pod_mtu: u32,
    /// `AWS_VPC_K8S_CNI_VETHPREFIX`: host-side veth name prefix.
    pub veth_prefix: String,
    /// `AWS_VPC_K8S_PLUGIN_LOG_FILE`: `stderr` or an absolute host path; never `stdout`,
    /// because the plugin's stdout carries the CNI result.
    pub plugin_log_file: String,
    /// `AWS_VPC_K8S_PLUGIN_LOG_LEVEL`, passed through in the operator's spelling.
    pub plugin_log_level: String,
    /// `AWS_VPC_K8S_CNI_RANDOMIZESNAT` (validated here; rendered for egress-cni later).
    pub randomize_snat: RandomizeSnat,
    /// `ENABLE_BANDWIDTH_PLUGIN`: chain the `bandwidth` plugin.
    pub enable_bandwidth_plugin: bool,
    /// `DISABLE_POD_V6`: chain `tuning` turning IPv6 off inside pods.
    pub disable_pod_v6: bool,
    /// `ENABLE_IPv6`: IPv6 mode (raises the minimum MTU to 1280).
    pub enable_ipv6: bool,
    /// `ENABLE_PREFIX_DELEGATION`: allocate /28 prefixes instead of secondary addresses.
    pub enable_prefix_delegation: bool,
    /// `IP_COOLDOWN_PERIOD` in seconds.
    pub ip_cooldown_seconds: u64,
    /// `POD_SECURITY_GROUP_ENFORCING_MODE`, rendered as `podSGEnforcingMode`.
    pub pod_sg_enforcing_mode: PodSgMode,
    /// **ours** `AWS_VPC_CNI_IPAMD_SOCKET`: the ipamd gRPC socket polled for health.
    pub ipamd_socket: PathBuf,
    /// **ours** `AWS_VPC_CNI_IPAMD_BIN`: the daemon to start. Unset: [`DEFAULT_IPAMD_BIN`] when
    /// it exists, else `ipamd` looked up on `PATH`.
    pub ipamd_bin: Option<PathBuf>,
    /// **ours** `AWS_VPC_CNI_PLUGIN_SRC`: the `aws-cni` binary shipped in the image.
    pub plugin_src: PathBuf,
}

/// Settings of the init step (upstream's init container).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitConfig {
    /// `HOST_CNI_BIN_PATH`: where the standard plugins are installed.
    pub host_cni_bin_path: PathBuf,
    /// `ENABLE_IPv6`: turn IPv6 on, forwarding on, accept RAs on the primary interface.
    pub enable_ipv6: bool,
    /// `ENABLE_V6_EGRESS`: IPv6 forwarding and RAs for an IPv4 cluster's IPv6 egress.
    pub enable_v6_egress: bool,
    /// `DISABLE_TCP_EARLY_DEMUX`: `net.ipv4.tcp_early_demux` = 0 when true, 1 otherwise.
    pub disable_tcp_early_demux: bool,
    /// `ENABLE_BANDWIDTH_PLUGIN`: the `bandwidth` plugin must be installed.
    pub enable_bandwidth_plugin: bool,
    /// `DISABLE_POD_V6`: the `tuning` plugin must be installed.
    pub disable_pod_v6: bool,
    /// **ours** `AWS_VPC_CNI_PRIMARY_INTERFACE`: skip the IMDS `mac` lookup and use this
    /// interface (tests, and hosts where IMDS is firewalled from pods).
    pub primary_interface: Option<String>,
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT` (the AWS SDKs' variable): IMDS base URL.
    pub imds_endpoint: String,
    /// **ours** `AWS_VPC_CNI_STD_PLUGINS_DIR`: directory holding `loopback`, `portmap`, ...
    pub std_plugins_dir: PathBuf,
}

/// Log levels the plugin understands (case-insensitive).
const LOG_LEVELS: [&str; 5] = ["debug", "info", "warn", "error", "fatal"];

/// Veth prefixes upstream refuses because they collide with interfaces the host already has.
const RESERVED_VETH_PREFIXES: [&str; 3] = ["eth", "lo", "vlan"];

impl EntrypointConfig {
    /// Reads and validates the entrypoint's environment through `lookup`.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(&lookup);
        let host_cni_bin_path = r.abs_path("HOST_CNI_BIN_PATH", DEFAULT_HOST_CNI_BIN_PATH);
        let host_cni_confdir_path =
            r.abs_path("HOST_CNI_CONFDIR_PATH", DEFAULT_HOST_CNI_CONFDIR_PATH);
        let enable_ipv6 = r.bool("ENABLE_IPv6", false);
        let min_mtu = if enable_ipv6 { MIN_MTU_V6 } else { MIN_MTU_V4 };
        let eni_mtu = r.int_in("AWS_VPC_ENI_MTU", min_mtu..=MAX_MTU, DEFAULT_MTU);
        let pod_mtu = r.int_in("POD_MTU", min_mtu..=MAX_MTU, eni_mtu);

        let veth_prefix = r.string("AWS_VPC_K8S_CNI_VETHPREFIX", "eni");
        if veth_prefix.chars().count() > 4 {
            r.error(
                "AWS_VPC_K8S_CNI_VETHPREFIX",
                &veth_prefix,
                "at most 4 characters (the rest of the 15-byte interface name is a hash)",
            );
        } else if RESERVED_VETH_PREFIXES.contains(&veth_prefix.as_str()) {
            r.error(
                "AWS_VPC_K8S_CNI_VETHPREFIX",
                &veth_prefix,
                "reserved prefix (eth, lo and vlan collide with host interfaces)",
            );
        } else if !veth_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            r.error(
                "AWS_VPC_K8S_CNI_VETHPREFIX",
                &veth_prefix,
                "only ASCII letters, digits, '-' and '_' are valid in an interface name",
            );
        }

        let plugin_log_file = r.string("AWS_VPC_K8S_PLUGIN_LOG_FILE", DEFAULT_PLUGIN_LOG_FILE);
        if plugin_log_file.eq_ignore_ascii_case("stdout") {
            r.error(
                "AWS_VPC_K8S_PLUGIN_LOG_FILE",
                &plugin_log_file,
                "the plugin's stdout carries the CNI result; use stderr or a file path",
            );
        } else if !plugin_log_file.eq_ignore_ascii_case("stderr")
            && !plugin_log_file.starts_with('/')
        {
            r.error(
                "AWS_VPC_K8S_PLUGIN_LOG_FILE",
                &plugin_log_file,
                "must be stderr or an absolute path (the plugin's working directory is the runtime's)",
            );
        }

        // Passed through in the operator's spelling, so validated rather than mapped.
        let plugin_log_level = r.string("AWS_VPC_K8S_PLUGIN_LOG_LEVEL", DEFAULT_PLUGIN_LOG_LEVEL);
        if !LOG_LEVELS
            .iter()
            .any(|l| l.eq_ignore_ascii_case(&plugin_log_level))
        {
            r.error(
                "AWS_VPC_K8S_PLUGIN_LOG_LEVEL",
                &plugin_log_level,
                "unknown level (accepted, any case: debug, info, warn, error, fatal)",
            );
        }

        // Unknown values fail start-up (the policy above), although ipamd, which reads the same
        // SNAT variable, only warns like upstream.
        let randomize_snat = RandomizeSnat::read(&mut r, OnUnknown::Error);
        let pod_sg_enforcing_mode = r.choice(
            "POD_SECURITY_GROUP_ENFORCING_MODE",
            Case::Exact,
            &[PodSgMode::Strict, PodSgMode::Standard].map(|m| (m.as_str(), m)),
            PodSgMode::Strict,
            OnUnknown::Error,
        );

        let enable_bandwidth_plugin = r.bool("ENABLE_BANDWIDTH_PLUGIN", false);
        let disable_pod_v6 = r.bool("DISABLE_POD_V6", false);
        let enable_prefix_delegation = r.bool("ENABLE_PREFIX_DELEGATION", false);
        // Read for validation only: ipamd parses them itself, but an unparsable value there
        // would silently become the default.
        r.bool("ENABLE_IPv4", false);
        r.bool("ENABLE_V6_EGRESS", false);

        let ip_cooldown_seconds = r.int_in("IP_COOLDOWN_PERIOD", 0.., DEFAULT_IP_COOLDOWN_SECONDS);

        if enable_prefix_delegation {
            // Upstream compares the raw strings with `<= "0"`, so "", "0" and "-1" count as
            // "not set"; kept as is so the same manifests pass and fail as upstream.
            let targets = ["WARM_PREFIX_TARGET", "WARM_IP_TARGET", "MINIMUM_IP_TARGET"];
            let values: Vec<String> = targets
                .iter()
                .map(|t| r.raw(t).unwrap_or_default())
                .collect();
            if values.iter().all(|v| v.as_str() <= "0") {
                r.error(
                    "ENABLE_PREFIX_DELEGATION",
                    "true",
                    format!(
                        "prefix delegation needs WARM_PREFIX_TARGET, WARM_IP_TARGET or \
                         MINIMUM_IP_TARGET above 0 (got {:?}, {:?}, {:?})",
                        values[0], values[1], values[2]
                    ),
                );
            }
        }

        let ipamd_socket = r.abs_path(awscni_proto::IPAMD_SOCKET_ENV, DEFAULT_IPAMD_SOCKET);
        let ipamd_bin = r.raw("AWS_VPC_CNI_IPAMD_BIN").map(PathBuf::from);
        let plugin_src = r.abs_path("AWS_VPC_CNI_PLUGIN_SRC", DEFAULT_PLUGIN_SRC);

        // The entrypoint records no warnings: every check here either passes or fails start-up.
        r.finish().map_err(ConfigErrors)?;
        Ok(Self {
            host_cni_bin_path,
            host_cni_confdir_path,
            eni_mtu,
            pod_mtu,
            veth_prefix,
            plugin_log_file,
            plugin_log_level,
            randomize_snat,
            enable_bandwidth_plugin,
            disable_pod_v6,
            enable_ipv6,
            enable_prefix_delegation,
            ip_cooldown_seconds,
            pod_sg_enforcing_mode,
            ipamd_socket,
            ipamd_bin,
            plugin_src,
        })
    }

    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Self, ConfigErrors> {
        Self::from_lookup(&|k| std::env::var(k).ok())
    }
}

impl InitConfig {
    /// Reads and validates the init step's environment through `lookup`.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(&lookup);
        let host_cni_bin_path = r.abs_path("HOST_CNI_BIN_PATH", DEFAULT_HOST_CNI_BIN_PATH);
        let enable_ipv6 = r.bool("ENABLE_IPv6", false);
        let enable_v6_egress = r.bool("ENABLE_V6_EGRESS", false);
        let disable_tcp_early_demux = r.bool("DISABLE_TCP_EARLY_DEMUX", false);
        let enable_bandwidth_plugin = r.bool("ENABLE_BANDWIDTH_PLUGIN", false);
        let disable_pod_v6 = r.bool("DISABLE_POD_V6", false);
        let primary_interface = r.raw("AWS_VPC_CNI_PRIMARY_INTERFACE");
        if let Some(name) = primary_interface
            .as_ref()
            .filter(|n| n.len() > 15 || n.contains('/') || *n == "." || *n == "..")
        {
            r.error(
                "AWS_VPC_CNI_PRIMARY_INTERFACE",
                name,
                "not a valid interface name (at most 15 bytes, no '/')",
            );
        }
        let imds_endpoint = r.string(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            "http://169.254.169.254",
        );
        let std_plugins_dir = r.abs_path("AWS_VPC_CNI_STD_PLUGINS_DIR", DEFAULT_STD_PLUGINS_DIR);
        r.finish().map_err(ConfigErrors)?;
        Ok(Self {
            host_cni_bin_path,
            enable_ipv6,
            enable_v6_egress,
            disable_tcp_early_demux,
            enable_bandwidth_plugin,
            disable_pod_v6,
            primary_interface,
            imds_endpoint,
            std_plugins_dir,
        })
    }

    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Self, ConfigErrors> {
        Self::from_lookup(&|k| std::env::var(k).ok())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn entry(vars: &[(&str, &str)]) -> Result<EntrypointConfig, ConfigErrors> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EntrypointConfig::from_lookup(&move |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_upstream() {
        let c = entry(&[]).unwrap();
        assert_eq!(c.host_cni_bin_path, PathBuf::from("/host/opt/cni/bin"));
        assert_eq!(
            c.host_cni_confdir_path,
            PathBuf::from("/host/etc/cni/net.d")
        );
        assert_eq!(c.eni_mtu, 9001);
        assert_eq!(c.pod_mtu, 9001);
        assert_eq!(c.veth_prefix, "eni");
        assert_eq!(c.plugin_log_file, "/var/log/aws-routed-eni/plugin.log");
        assert_eq!(c.plugin_log_level, "Debug");
        assert_eq!(c.randomize_snat, RandomizeSnat::Prng);
        assert!(!c.enable_bandwidth_plugin);
        assert!(!c.disable_pod_v6);
        assert_eq!(c.ip_cooldown_seconds, 30);
        assert_eq!(c.pod_sg_enforcing_mode, PodSgMode::Strict);
        assert_eq!(
            c.ipamd_socket,
            PathBuf::from("/var/run/aws-node/ipamd.sock")
        );
        assert_eq!(c.ipamd_bin, None);
        assert_eq!(c.plugin_src, PathBuf::from("/app/aws-cni"));
    }

    #[test]
    fn pod_mtu_defaults_to_eni_mtu() {
        let c = entry(&[("AWS_VPC_ENI_MTU", "1500")]).unwrap();
        assert_eq!((c.eni_mtu, c.pod_mtu), (1500, 1500));
        let c = entry(&[("AWS_VPC_ENI_MTU", "1500"), ("POD_MTU", "1400")]).unwrap();
        assert_eq!((c.eni_mtu, c.pod_mtu), (1500, 1400));
    }

    #[test]
    fn empty_is_unset() {
        let c = entry(&[("POD_MTU", ""), ("AWS_VPC_K8S_CNI_VETHPREFIX", "")]).unwrap();
        assert_eq!(c.pod_mtu, 9001);
        assert_eq!(c.veth_prefix, "eni");
    }

    #[test]
    fn mtu_ranges_depend_on_family() {
        assert!(entry(&[("AWS_VPC_ENI_MTU", "576")]).is_ok());
        let e = entry(&[("AWS_VPC_ENI_MTU", "575")]).unwrap_err();
        assert!(e.names("AWS_VPC_ENI_MTU"));
        assert!(e.to_string().contains("\"575\""), "{e}");
        let e = entry(&[("AWS_VPC_ENI_MTU", "9002")]).unwrap_err();
        assert!(e.names("AWS_VPC_ENI_MTU"));
        let e = entry(&[("ENABLE_IPv6", "true"), ("POD_MTU", "1279")]).unwrap_err();
        assert!(e.names("POD_MTU"));
        assert!(entry(&[("ENABLE_IPv6", "true"), ("POD_MTU", "1280")]).is_ok());
        let e = entry(&[("POD_MTU", "jumbo")]).unwrap_err();
        assert!(e.to_string().contains("POD_MTU=\"jumbo\""), "{e}");
    }

    #[test]
    fn veth_prefix_rules() {
        assert_eq!(
            entry(&[("AWS_VPC_K8S_CNI_VETHPREFIX", "veth")])
                .unwrap()
                .veth_prefix,
            "veth"
        );
        for bad in ["abcde", "eth", "lo", "vlan", "a/b", "a b"] {
            let e = entry(&[("AWS_VPC_K8S_CNI_VETHPREFIX", bad)]).unwrap_err();
            assert!(e.names("AWS_VPC_K8S_CNI_VETHPREFIX"), "{bad}: {e}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn plugin_log_file_never_stdout() {
        for bad in ["stdout", "STDOUT", "relative/plugin.log"] {
            let e = entry(&[("AWS_VPC_K8S_PLUGIN_LOG_FILE", bad)]).unwrap_err();
            assert!(e.names("AWS_VPC_K8S_PLUGIN_LOG_FILE"), "{bad}");
        }
        let c = entry(&[("AWS_VPC_K8S_PLUGIN_LOG_FILE", "stderr")]).unwrap();
        assert_eq!(c.plugin_log_file, "stderr");
    }

    #[test]
    fn enumerations_and_bools() {
        let c = entry(&[
            ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "hashrandom"),
            ("ENABLE_BANDWIDTH_PLUGIN", "T"),
            ("DISABLE_POD_V6", "1"),
            ("AWS_VPC_K8S_PLUGIN_LOG_LEVEL", "INFO"),
            ("POD_SECURITY_GROUP_ENFORCING_MODE", "standard"),
        ])
        .unwrap();
        assert_eq!(c.randomize_snat, RandomizeSnat::HashRandom);
        assert!(c.enable_bandwidth_plugin && c.disable_pod_v6);
        assert_eq!(c.plugin_log_level, "INFO");
        assert_eq!(c.pod_sg_enforcing_mode, PodSgMode::Standard);

        let e = entry(&[
            ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "random"),
            ("ENABLE_BANDWIDTH_PLUGIN", "yes"),
            ("DISABLE_POD_V6", "on"),
            ("AWS_VPC_K8S_PLUGIN_LOG_LEVEL", "verbose"),
            ("IP_COOLDOWN_PERIOD", "-5"),
            ("HOST_CNI_BIN_PATH", "opt/cni/bin"),
        ])
        .unwrap_err();
        for var in [
            "AWS_VPC_K8S_CNI_RANDOMIZESNAT",
            "ENABLE_BANDWIDTH_PLUGIN",
            "DISABLE_POD_V6",
            "AWS_VPC_K8S_PLUGIN_LOG_LEVEL",
            "IP_COOLDOWN_PERIOD",
            "HOST_CNI_BIN_PATH",
        ] {
            assert!(e.names(var), "{var} missing from {e}");
        }
        assert_eq!(e.0.len(), 6, "{e}");
    }

    #[test]
    fn prefix_delegation_needs_a_target_string_compared() {
        let e = entry(&[("ENABLE_PREFIX_DELEGATION", "true")]).unwrap_err();
        assert!(e.names("ENABLE_PREFIX_DELEGATION"));
        let e = entry(&[
            ("ENABLE_PREFIX_DELEGATION", "true"),
            ("WARM_PREFIX_TARGET", "0"),
            ("WARM_IP_TARGET", "-1"),
        ])
        .unwrap_err();
        assert!(e.names("ENABLE_PREFIX_DELEGATION"));
        assert!(
            entry(&[
                ("ENABLE_PREFIX_DELEGATION", "true"),
                ("WARM_PREFIX_TARGET", "1")
            ])
            .is_ok()
        );
        assert!(
            entry(&[
                ("ENABLE_PREFIX_DELEGATION", "true"),
                ("MINIMUM_IP_TARGET", "10")
            ])
            .is_ok()
        );
        // Without PD the targets do not matter.
        assert!(entry(&[("ENABLE_PREFIX_DELEGATION", "false")]).is_ok());
    }

    #[test]
    fn integers_parse_like_ipamd() {
        // One reader for both binaries: a value ipamd would refuse (Go `strconv.Atoi` takes no
        // surrounding spaces) is refused here first, where the operator looks.
        for (var, bad) in [
            ("AWS_VPC_ENI_MTU", " 1500"),
            ("POD_MTU", "1500 "),
            ("IP_COOLDOWN_PERIOD", " 30"),
            ("IP_COOLDOWN_PERIOD", "-1"),
        ] {
            let e = entry(&[(var, bad)]).unwrap_err();
            assert!(e.names(var), "{var}: {e}");
            assert!(e.to_string().contains(&format!("{var}={bad:?}")), "{e}");
        }
        let c = entry(&[("AWS_VPC_ENI_MTU", "+1500"), ("IP_COOLDOWN_PERIOD", "0")]).unwrap();
        assert_eq!((c.eni_mtu, c.ip_cooldown_seconds), (1500, 0));
    }

    #[test]
    fn init_defaults_and_errors() {
        let c = InitConfig::from_lookup(&|_| None).unwrap();
        assert_eq!(c.host_cni_bin_path, PathBuf::from("/host/opt/cni/bin"));
        assert!(!c.enable_ipv6 && !c.enable_v6_egress && !c.disable_tcp_early_demux);
        assert_eq!(c.imds_endpoint, "http://169.254.169.254");
        assert_eq!(c.primary_interface, None);
        let e = InitConfig::from_lookup(&|k| match k {
            "DISABLE_TCP_EARLY_DEMUX" => Some("maybe".into()),
            "AWS_VPC_CNI_PRIMARY_INTERFACE" => Some("../etc".into()),
            _ => None,
        })
        .unwrap_err();
        assert!(e.names("DISABLE_TCP_EARLY_DEMUX") && e.names("AWS_VPC_CNI_PRIMARY_INTERFACE"));
    }
}
