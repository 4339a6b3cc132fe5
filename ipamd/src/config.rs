//! ipamd configuration from upstream's environment variables (env-vars.md), plus a few of ours.
//!
//! Parsing is a pure function over a lookup closure so that every variable can be table-tested
//! without touching the process environment.
//!
//! # Policy for bad values
//!
//! A drop-in replacement must start with every manifest upstream starts with, yet a typo must not
//! silently change pool sizing. The rule applied per variable (also tabulated in docs/ipamd.md):
//!
//! * A value that is not even of the right *type* (not an integer, not a boolean, not a CIDR, not
//!   one of an enumeration whose upstream reader fails start-up) is a start-up **error** naming the
//!   variable and the value. Upstream logs such values and continues with the default; we refuse,
//!   because a pool that silently reverts to defaults is the harder failure to diagnose.
//! * A well-typed value that upstream documents as *clamped or ignored* (negative warm targets,
//!   `MAX_ENI < 1`, `HTTP_TIMEOUT < 10`, unknown log level or SNAT mode, out-of-range connmark,
//!   unparsable `ADDITIONAL_ENI_TAGS`) keeps upstream's fallback and produces a **warning** that
//!   names the variable, the value and what is used instead.
//! * Checks that upstream's container entrypoint performs before starting the daemon (MTU range,
//!   veth prefix, cooldown, PD without any target) are **errors** here too.
//! * Empty means unset, as upstream treats it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use awscni_envconf::{Case, Joined, OnUnknown, Reader, Unit};
use ipnet::{IpNet, Ipv4Net};

/// One bad variable (name, value, reason); the reader is shared with the entrypoint.
pub use awscni_envconf::Problem;
/// Go `strconv.ParseBool`, shared with the entrypoint.
pub use awscni_envconf::parse_go_bool;

/// Default checkpoint path (upstream `AWS_VPC_K8S_CNI_BACKING_STORE` default).
pub const DEFAULT_BACKING_STORE: &str = "/var/run/aws-node/ipam.json";
/// Default gRPC socket path (wire-contract.md §1), shared with the plugin and the installer.
pub use awscni_proto::DEFAULT_IPAMD_SOCKET;
/// Default file the daemon writes its computed max pods to (ours).
pub const DEFAULT_MAX_PODS_FILE: &str = "/var/run/aws-node/max-pods";
/// Default daemon log file (upstream).
pub const DEFAULT_LOG_FILE: &str = "/host/var/log/aws-routed-eni/ipamd.log";
/// Default introspection listen address (upstream).
pub const DEFAULT_INTROSPECTION_BIND_ADDRESS: &str = "127.0.0.1:61679";
/// Default ENIConfig annotation/label key (upstream).
pub const DEFAULT_ENI_CONFIG_KEY: &str = "k8s.amazonaws.com/eniConfig";
/// Default connmark (upstream `AWS_VPC_K8S_CNI_CONNMARK`).
pub const DEFAULT_CONNMARK: u32 = 0x80;
/// Default ENI MTU (upstream `AWS_VPC_ENI_MTU`).
pub const DEFAULT_MTU: u32 = 9001;
/// Legacy TCP endpoint of upstream ≤ v1.22 (wire-contract.md §1), loopback only.
pub const LEGACY_TCP_ADDR: &str = "127.0.0.1:50051";
/// Tag-key substring upstream drops from `ADDITIONAL_ENI_TAGS` (reserved for its own tags).
const RESERVED_TAG_SUBSTRING: &str = "k8s.amazonaws.com";

/// How many addresses/prefixes the pool keeps; see ipam.md §4 for the exact semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolTargets {
    /// `WARM_ENI_TARGET` (default 1): whole ENIs' worth of free addresses, SIP mode only.
    pub warm_eni: u32,
    /// `WARM_IP_TARGET` (0 = unset): free addresses to keep; overrides the ENI/prefix targets.
    pub warm_ip: u32,
    /// `MINIMUM_IP_TARGET` (0 = unset): floor on total addresses held.
    pub minimum_ip: u32,
    /// `WARM_PREFIX_TARGET` (default 0): free /28 prefixes to keep in PD mode.
    pub warm_prefix: u32,
    /// `MAX_ENI` (None = instance limit): upper bound on ENIs used, primary included.
    pub max_eni: Option<u32>,
    /// `ENABLE_PREFIX_DELEGATION`: allocate /28 prefixes instead of secondary IPs.
    pub prefix_delegation: bool,
}

impl Default for PoolTargets {
    fn default() -> Self {
        Self {
            warm_eni: 1,
            warm_ip: 0,
            minimum_ip: 0,
            warm_prefix: 0,
            max_eni: None,
            prefix_delegation: false,
        }
    }
}

impl PoolTargets {
    /// True when `WARM_IP_TARGET` or `MINIMUM_IP_TARGET` is set: they alone drive sizing.
    pub fn ip_targets_set(&self) -> bool {
        self.warm_ip != 0 || self.minimum_ip != 0
    }
}

/// `NETWORK_POLICY_ENFORCING_MODE`. Validated like upstream; our v1 daemon returns `""` anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkPolicyMode {
    /// Variable unset.
    #[default]
    Unset,
    /// `none`
    None,
    /// `strict`
    Strict,
    /// `standard`
    Standard,
}

impl NetworkPolicyMode {
    /// The wire string.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unset => "",
            Self::None => "none",
            Self::Strict => "strict",
            Self::Standard => "standard",
        }
    }
}

/// `AWS_VPC_K8S_CNI_RANDOMIZESNAT`, shared with the entrypoint and [`crate::hostnet`].
pub use awscni_envconf::RandomizeSnat;

/// `AWS_VPC_K8S_CNI_LOGLEVEL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    /// `debug` (upstream default).
    #[default]
    Debug,
    /// `info`
    Info,
    /// `warn`
    Warn,
    /// `error`
    Error,
    /// `fatal` (logged as error by us).
    Fatal,
}

impl LogLevel {
    /// Lower-case name, also a valid `tracing` filter directive except `fatal`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
            Self::Fatal => "fatal",
        }
    }

    /// The `tracing` level this maps to (`fatal` has no equivalent: error).
    pub fn tracing_filter(&self) -> &'static str {
        match self {
            Self::Fatal => "error",
            other => other.as_str(),
        }
    }
}

/// Effective daemon configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Warm-pool knobs (`WARM_*`, `MINIMUM_IP_TARGET`, `MAX_ENI`, `ENABLE_PREFIX_DELEGATION`).
    pub pool: PoolTargets,
    /// `ENABLE_IPv4` (code default false upstream, manifest true; we default to IPv4 when neither
    /// family is requested, see [`Config::from_lookup`]).
    pub enable_ipv4: bool,
    /// `ENABLE_IPv6`: not supported by this release (start-up error when true).
    pub enable_ipv6: bool,
    /// `AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG`: ENIConfig subnets/SGs; primary ENI not used for pods.
    pub custom_network_cfg: bool,
    /// `ENI_CONFIG_ANNOTATION_DEF`: node annotation naming the ENIConfig.
    pub eni_config_annotation_def: String,
    /// `ENI_CONFIG_LABEL_DEF`: node label naming the ENIConfig.
    pub eni_config_label_def: String,
    /// `AWS_MANAGE_ENIS_NON_SCHEDULABLE`: keep managing ENIs while the node is unschedulable.
    pub manage_enis_non_schedulable: bool,
    /// `ENABLE_SUBNET_DISCOVERY`: new ENIs may use subnets tagged `kubernetes.io/role/cni`.
    pub enable_subnet_discovery: bool,
    /// `DISABLE_NETWORK_RESOURCE_PROVISIONING`: never attach ENIs or assign addresses.
    /// Forced true by `ENABLE_IMDS_ONLY_MODE`.
    pub disable_network_resource_provisioning: bool,
    /// `DISABLE_LEAKED_ENI_CLEANUP`: no leaked-ENI sweep. Forced true by IMDS-only mode and by
    /// disabled provisioning.
    pub disable_leaked_eni_cleanup: bool,
    /// `ENABLE_IMDS_ONLY_MODE`: no EC2 calls at all.
    pub enable_imds_only_mode: bool,
    /// `AWS_VPC_K8S_CNI_BACKING_STORE`: checkpoint path.
    pub backing_store: PathBuf,
    /// `MANAGE_UNTAGGED_ENI`: when false, ENIs not tagged with our instance ID are unmanaged.
    pub manage_untagged_eni: bool,
    /// `ANNOTATE_POD_IP`: annotate pods with their IP (needs the Kubernetes API; not in v1).
    pub annotate_pod_ip: bool,
    /// `NETWORK_POLICY_ENFORCING_MODE`: validated; our v1 daemon replies `""`.
    pub network_policy_enforcing_mode: NetworkPolicyMode,
    /// `IP_COOLDOWN_PERIOD`: a released address is not reused for this long.
    pub ip_cooldown: Duration,
    /// `MY_NODE_NAME`: node name (downward API). Optional here: we make no API-server calls yet.
    pub node_name: Option<String>,
    /// `MY_POD_NAME`: our pod name, for Kubernetes events.
    pub pod_name: Option<String>,
    /// `CLUSTER_NAME`: adds cluster tags to ENIs and scopes the leaked-ENI sweep.
    pub cluster_name: String,
    /// `ADDITIONAL_ENI_TAGS`: extra tags on ENIs we create, reserved keys removed.
    pub additional_eni_tags: BTreeMap<String, String>,
    /// `VPC_CNI_VERSION`: user-agent suffix.
    pub vpc_cni_version: String,
    /// `HTTP_TIMEOUT`: AWS SDK HTTP timeout (values below 10 s ignored, as upstream).
    pub http_timeout: Duration,
    /// `AWS_EC2_ENDPOINT`: custom EC2 endpoint; unlike upstream we apply it to the EC2 client.
    pub ec2_endpoint: Option<String>,
    /// `CLUSTER_ENDPOINT`: API-server address override.
    pub cluster_endpoint: Option<String>,
    /// `DISABLE_METRICS`: no Prometheus endpoint.
    pub disable_metrics: bool,
    /// `DISABLE_INTROSPECTION`: no introspection endpoint.
    pub disable_introspection: bool,
    /// `INTROSPECTION_BIND_ADDRESS`: `host:port` or `unix:/path`.
    pub introspection_bind_address: String,
    /// `AWS_VPC_K8S_CNI_LOGLEVEL`.
    pub log_level: LogLevel,
    /// `AWS_VPC_K8S_CNI_LOG_FILE`: `stdout`, `stderr` or a path.
    pub log_file: String,
    /// `AWS_VPC_K8S_CNI_EXTERNALSNAT`: no SNAT; pod egress leaves through its own ENI.
    pub external_snat: bool,
    /// `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS`: extra destinations exempt from SNAT (IPv4 only).
    pub exclude_snat_cidrs: Vec<Ipv4Net>,
    /// `AWS_EXTERNAL_SERVICE_CIDRS`: destinations reached through the main table (rule 1535).
    pub external_service_cidrs: Vec<Ipv4Net>,
    /// `AWS_VPC_K8S_CNI_RANDOMIZESNAT`.
    pub randomize_snat: RandomizeSnat,
    /// `AWS_VPC_CNI_NODE_PORT_SUPPORT`: connmark rules so NodePort replies leave via the primary.
    pub node_port_support: bool,
    /// `AWS_VPC_K8S_CNI_CONNMARK`: connmark/fwmark value and mask.
    pub connmark: u32,
    /// `AWS_VPC_ENI_MTU`: MTU of the ENIs (576–9001).
    pub eni_mtu: u32,
    /// `AWS_VPC_K8S_CNI_VETHPREFIX`: host veth name prefix (≤ 4 chars, not eth/lo/vlan).
    pub veth_prefix: String,
    /// Ours, `AWS_VPC_CNI_IPAMD_SOCKET`: gRPC Unix socket path.
    pub ipamd_socket: PathBuf,
    /// Ours, `AWS_VPC_CNI_LEGACY_TCP_LISTENER`: also serve on 127.0.0.1:50051 for ≤ v1.22
    /// plugins (off by default).
    pub legacy_tcp_listener: bool,
    /// Ours, `AWS_VPC_CNI_ADD_WAIT_MS`: how long an ADD that finds the pool empty waits for the
    /// pool manager (must stay below the plugin's ADD deadline).
    pub add_wait: Duration,
    /// Ours, `AWS_VPC_CNI_CLIENT_VERSIONS`: extra plugin `ClientVersion` strings accepted besides
    /// our own version and `""` (wire-contract.md §4).
    pub client_version_allowlist: Vec<String>,
    /// Ours, `AWS_VPC_CNI_EC2_QPS`: sustained EC2 calls per second (client-side token bucket).
    pub ec2_qps: f64,
    /// Ours, `AWS_VPC_CNI_EC2_BURST`: token-bucket burst.
    pub ec2_burst: u32,
    /// Ours, `AWS_VPC_CNI_MAX_PODS_FILE`: where the computed max pods is written.
    pub max_pods_file: PathBuf,
    /// Ours, `AWS_VPC_CNI_RECONCILE_SECONDS`: period of IMDS and host-rule reconciliation.
    pub reconcile_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            pool: PoolTargets::default(),
            enable_ipv4: true,
            enable_ipv6: false,
            custom_network_cfg: false,
            eni_config_annotation_def: DEFAULT_ENI_CONFIG_KEY.to_owned(),
            eni_config_label_def: DEFAULT_ENI_CONFIG_KEY.to_owned(),
            manage_enis_non_schedulable: false,
            enable_subnet_discovery: true,
            disable_network_resource_provisioning: false,
            disable_leaked_eni_cleanup: false,
            enable_imds_only_mode: false,
            backing_store: PathBuf::from(DEFAULT_BACKING_STORE),
            manage_untagged_eni: true,
            annotate_pod_ip: false,
            network_policy_enforcing_mode: NetworkPolicyMode::Unset,
            ip_cooldown: Duration::from_secs(30),
            node_name: None,
            pod_name: None,
            cluster_name: String::new(),
            additional_eni_tags: BTreeMap::new(),
            vpc_cni_version: String::new(),
            http_timeout: Duration::from_secs(10),
            ec2_endpoint: None,
            cluster_endpoint: None,
            disable_metrics: false,
            disable_introspection: false,
            introspection_bind_address: DEFAULT_INTROSPECTION_BIND_ADDRESS.to_owned(),
            log_level: LogLevel::Debug,
            log_file: DEFAULT_LOG_FILE.to_owned(),
            external_snat: false,
            exclude_snat_cidrs: Vec::new(),
            external_service_cidrs: Vec::new(),
            randomize_snat: RandomizeSnat::Prng,
            node_port_support: true,
            connmark: DEFAULT_CONNMARK,
            eni_mtu: DEFAULT_MTU,
            veth_prefix: "eni".to_owned(),
            ipamd_socket: PathBuf::from(DEFAULT_IPAMD_SOCKET),
            legacy_tcp_listener: false,
            add_wait: Duration::from_millis(5000),
            client_version_allowlist: Vec::new(),
            ec2_qps: 10.0,
            ec2_burst: 20,
            max_pods_file: PathBuf::from(DEFAULT_MAX_PODS_FILE),
            reconcile_interval: Duration::from_secs(5),
        }
    }
}

/// Start-up configuration error: every invalid variable found, not only the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// All problems, in variable-reading order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", Joined(&self.problems))
    }
}

/// A value that was accepted with upstream's fallback; log it at warn level.
pub type Warning = Problem;

/// Comma-separated IPv4 CIDRs; IPv6 entries are skipped with a warning (upstream reads these
/// lists for IPv4 only), anything else is an error naming the entry.
fn cidr_list(r: &mut Reader<'_>, var: &'static str) -> Vec<Ipv4Net> {
    let mut out = Vec::new();
    for item in r.list(var) {
        match item.parse::<IpNet>() {
            Ok(IpNet::V4(n)) => out.push(n),
            Ok(IpNet::V6(_)) => r.warn(var, &item, "IPv6 entry skipped (IPv4 only, as upstream)"),
            Err(_) => r.error(var, &item, "not a CIDR (expected a.b.c.d/len)"),
        }
    }
    out
}

/// Integer in decimal, `0x` hex or leading-`0` octal (Go `strconv.ParseInt(v, 0, 64)`).
fn parse_c_int(v: &str) -> Option<u64> {
    let (digits, radix) = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        (h, 16)
    } else if v.len() > 1 && v.starts_with('0') {
        (&v[1..], 8)
    } else {
        (v, 10)
    };
    if digits.is_empty() || digits.starts_with('+') || digits.starts_with('-') {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

fn valid_bind_address(v: &str) -> bool {
    if let Some(path) = v.strip_prefix("unix:") {
        return !path.is_empty();
    }
    if v.parse::<SocketAddr>().is_ok() {
        return true;
    }
    // host:port with a host name (e.g. localhost:61679).
    match v.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains(':') && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<(Self, Vec<Warning>), ConfigError> {
        Self::from_lookup(&|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get` (variable name → value). Returns the effective
    /// configuration and the warnings to log, or every error found.
    pub fn from_lookup(
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<Warning>), ConfigError> {
        let d = Config::default();
        let mut r = Reader::new(&get);

        // ---- pool ----
        let warm_eni = r.count("WARM_ENI_TARGET", 1, 1);
        let warm_ip = r.count("WARM_IP_TARGET", 0, 0);
        let minimum_ip = r.count("MINIMUM_IP_TARGET", 0, 0);
        let warm_prefix = r.count("WARM_PREFIX_TARGET", 0, 0);
        let max_eni = match r.int("MAX_ENI") {
            None => None,
            Some((v, n)) if n < 1 => {
                r.warn(
                    "MAX_ENI",
                    &v,
                    "below 1; ignored like upstream (instance limit used)",
                );
                None
            }
            Some((v, n)) => match u32::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => {
                    r.error("MAX_ENI", &v, "too large");
                    None
                }
            },
        };
        let prefix_delegation = r.bool("ENABLE_PREFIX_DELEGATION", false);
        if prefix_delegation && warm_prefix == 0 && warm_ip == 0 && minimum_ip == 0 {
            // Upstream's entrypoint refuses to start in this case (it compares strings; we
            // compare the parsed numbers).
            r.error(
                "ENABLE_PREFIX_DELEGATION",
                "true",
                "prefix delegation needs WARM_PREFIX_TARGET, WARM_IP_TARGET or MINIMUM_IP_TARGET above 0",
            );
        }
        let pool = PoolTargets {
            warm_eni,
            warm_ip,
            minimum_ip,
            warm_prefix,
            max_eni,
            prefix_delegation,
        };

        // ---- address family ----
        let v4_set = r.raw("ENABLE_IPv4").is_some();
        let enable_ipv4_raw = r.bool("ENABLE_IPv4", false);
        let enable_ipv6 = r.bool("ENABLE_IPv6", false);
        // Upstream's code default is false for both, which fails start-up unless the manifest
        // sets ENABLE_IPv4=true. With neither variable set we choose IPv4 (the only sensible
        // reading); an explicit contradiction is still an error.
        let enable_ipv4 = if !v4_set && !enable_ipv6 {
            true
        } else {
            enable_ipv4_raw
        };
        if enable_ipv4 == enable_ipv6 {
            r.error(
                "ENABLE_IPv4",
                &format!("{enable_ipv4}"),
                format!("exactly one of ENABLE_IPv4 and ENABLE_IPv6 must be true (ENABLE_IPv6={enable_ipv6})"),
            );
        } else if enable_ipv6 {
            r.error(
                "ENABLE_IPv6",
                "true",
                "IPv6 mode is not supported by this release",
            );
        }

        let custom_network_cfg = r.bool("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", false);
        let eni_config_annotation_def =
            r.string("ENI_CONFIG_ANNOTATION_DEF", DEFAULT_ENI_CONFIG_KEY);
        let eni_config_label_def = r.string("ENI_CONFIG_LABEL_DEF", DEFAULT_ENI_CONFIG_KEY);
        let manage_enis_non_schedulable = r.bool("AWS_MANAGE_ENIS_NON_SCHEDULABLE", false);
        let enable_subnet_discovery = r.bool("ENABLE_SUBNET_DISCOVERY", true);
        let enable_imds_only_mode = r.bool("ENABLE_IMDS_ONLY_MODE", false);
        let disable_network_resource_provisioning =
            r.bool("DISABLE_NETWORK_RESOURCE_PROVISIONING", false) || enable_imds_only_mode;
        let disable_leaked_eni_cleanup = r.bool("DISABLE_LEAKED_ENI_CLEANUP", false)
            || enable_imds_only_mode
            || disable_network_resource_provisioning;
        let backing_store = r.abs_path("AWS_VPC_K8S_CNI_BACKING_STORE", DEFAULT_BACKING_STORE);
        let manage_untagged_eni = r.bool("MANAGE_UNTAGGED_ENI", true);
        let annotate_pod_ip = r.bool("ANNOTATE_POD_IP", false);
        // Upstream fails start-up on an unknown mode too.
        let network_policy_enforcing_mode = r.choice(
            "NETWORK_POLICY_ENFORCING_MODE",
            Case::Exact,
            &[
                NetworkPolicyMode::None,
                NetworkPolicyMode::Strict,
                NetworkPolicyMode::Standard,
            ]
            .map(|m| (m.as_str(), m)),
            NetworkPolicyMode::Unset,
            OnUnknown::Error,
        );
        // Upstream's entrypoint refuses negative values.
        let ip_cooldown = r.duration_in("IP_COOLDOWN_PERIOD", Unit::Seconds, 0.., d.ip_cooldown);
        let node_name = r.raw("MY_NODE_NAME");
        let pod_name = r.raw("MY_POD_NAME");
        let cluster_name = r.string("CLUSTER_NAME", "");
        let additional_eni_tags = match r.raw("ADDITIONAL_ENI_TAGS") {
            None => BTreeMap::new(),
            Some(v) => match serde_json::from_str::<BTreeMap<String, String>>(&v) {
                Ok(tags) => {
                    let mut kept = BTreeMap::new();
                    for (k, val) in tags {
                        if k.contains(RESERVED_TAG_SUBSTRING) {
                            r.warn(
                                "ADDITIONAL_ENI_TAGS",
                                &k,
                                "tag key contains k8s.amazonaws.com (reserved); dropped like upstream",
                            );
                        } else {
                            kept.insert(k, val);
                        }
                    }
                    kept
                }
                Err(e) => {
                    r.warn(
                        "ADDITIONAL_ENI_TAGS",
                        &v,
                        format!("not a JSON object of strings ({e}); ignored like upstream"),
                    );
                    BTreeMap::new()
                }
            },
        };
        let vpc_cni_version = r.string("VPC_CNI_VERSION", "");
        let http_timeout = match r.int("HTTP_TIMEOUT") {
            None => d.http_timeout,
            Some((v, n)) if n < 10 => {
                r.warn(
                    "HTTP_TIMEOUT",
                    &v,
                    "below 10 seconds; using 10 like upstream",
                );
                d.http_timeout
            }
            Some((_, n)) => Duration::from_secs(n.unsigned_abs()),
        };
        let ec2_endpoint = r.url("AWS_EC2_ENDPOINT");
        let cluster_endpoint = r.url("CLUSTER_ENDPOINT");
        let disable_metrics = r.bool("DISABLE_METRICS", false);
        let disable_introspection = r.bool("DISABLE_INTROSPECTION", false);
        let introspection_bind_address = r.string(
            "INTROSPECTION_BIND_ADDRESS",
            DEFAULT_INTROSPECTION_BIND_ADDRESS,
        );
        if !valid_bind_address(&introspection_bind_address) {
            let v = introspection_bind_address.clone();
            r.error(
                "INTROSPECTION_BIND_ADDRESS",
                &v,
                "expected host:port or unix:/path",
            );
        }
        let log_level = r.choice(
            "AWS_VPC_K8S_CNI_LOGLEVEL",
            Case::Ignore,
            &[
                LogLevel::Debug,
                LogLevel::Info,
                LogLevel::Warn,
                LogLevel::Error,
                LogLevel::Fatal,
            ]
            .map(|l| (l.as_str(), l)),
            LogLevel::Debug,
            OnUnknown::Warn,
        );
        let log_file = r.string("AWS_VPC_K8S_CNI_LOG_FILE", DEFAULT_LOG_FILE);

        // ---- host networking ----
        let external_snat = r.bool("AWS_VPC_K8S_CNI_EXTERNALSNAT", false);
        let exclude_snat_cidrs = cidr_list(&mut r, "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS");
        let external_service_cidrs = cidr_list(&mut r, "AWS_EXTERNAL_SERVICE_CIDRS");
        // Unknown values warn and use `prng`, like upstream.
        let randomize_snat = RandomizeSnat::read(&mut r, OnUnknown::Warn);
        let node_port_support = r.bool("AWS_VPC_CNI_NODE_PORT_SUPPORT", true);
        let connmark = match r.raw("AWS_VPC_K8S_CNI_CONNMARK") {
            None => DEFAULT_CONNMARK,
            Some(v) => match parse_c_int(&v) {
                Some(n) if n > 0 && n < (1u64 << 32) => {
                    u32::try_from(n).unwrap_or(DEFAULT_CONNMARK)
                }
                _ => {
                    r.warn(
                        "AWS_VPC_K8S_CNI_CONNMARK",
                        &v,
                        "not an integer with 0 < v < 2^32; using 0x80 like upstream",
                    );
                    DEFAULT_CONNMARK
                }
            },
        };
        // Upstream's entrypoint refuses to start outside this range.
        let eni_mtu = r.int_in("AWS_VPC_ENI_MTU", 576..=9001, DEFAULT_MTU);
        let veth_prefix = r.string("AWS_VPC_K8S_CNI_VETHPREFIX", "eni");
        if veth_prefix.chars().count() > 4 {
            r.error(
                "AWS_VPC_K8S_CNI_VETHPREFIX",
                &veth_prefix.clone(),
                "at most 4 characters",
            );
        } else if matches!(veth_prefix.as_str(), "eth" | "lo" | "vlan") {
            r.error(
                "AWS_VPC_K8S_CNI_VETHPREFIX",
                &veth_prefix.clone(),
                "eth, lo and vlan are reserved interface prefixes",
            );
        }
        for deprecated in ["AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER", "ENABLE_NFTABLES"] {
            if let Some(v) = r.raw(deprecated) {
                r.warn(
                    deprecated,
                    &v,
                    "deprecated and not read by upstream either; ignored",
                );
            }
        }
        for later in ["ENABLE_POD_ENI", "ENABLE_MULTI_NIC", "ENABLE_V6_EGRESS"] {
            if r.bool(later, false) {
                r.warn(later, "true", "not supported by this release; ignored");
            }
        }

        // ---- ours ----
        let ipamd_socket = r.abs_path(awscni_proto::IPAMD_SOCKET_ENV, DEFAULT_IPAMD_SOCKET);
        let legacy_tcp_listener = r.bool("AWS_VPC_CNI_LEGACY_TCP_LISTENER", false);
        let add_wait = r.duration_in(
            "AWS_VPC_CNI_ADD_WAIT_MS",
            Unit::Milliseconds,
            0..=60_000,
            d.add_wait,
        );
        let client_version_allowlist = r.list("AWS_VPC_CNI_CLIENT_VERSIONS");
        let ec2_qps = match r.raw("AWS_VPC_CNI_EC2_QPS") {
            None => d.ec2_qps,
            Some(v) => match v.parse::<f64>() {
                Ok(q) if q.is_finite() && q > 0.0 => q,
                _ => {
                    r.error("AWS_VPC_CNI_EC2_QPS", &v, "must be a number above 0");
                    d.ec2_qps
                }
            },
        };
        let ec2_burst = r.int_in("AWS_VPC_CNI_EC2_BURST", 1..=10_000, d.ec2_burst);
        let max_pods_file = r.abs_path("AWS_VPC_CNI_MAX_PODS_FILE", DEFAULT_MAX_PODS_FILE);
        let reconcile_interval = r.duration_in(
            "AWS_VPC_CNI_RECONCILE_SECONDS",
            Unit::Seconds,
            1..=3600,
            d.reconcile_interval,
        );

        let warnings = r.finish().map_err(|problems| ConfigError { problems })?;
        let cfg = Config {
            pool,
            enable_ipv4,
            enable_ipv6,
            custom_network_cfg,
            eni_config_annotation_def,
            eni_config_label_def,
            manage_enis_non_schedulable,
            enable_subnet_discovery,
            disable_network_resource_provisioning,
            disable_leaked_eni_cleanup,
            enable_imds_only_mode,
            backing_store,
            manage_untagged_eni,
            annotate_pod_ip,
            network_policy_enforcing_mode,
            ip_cooldown,
            node_name,
            pod_name,
            cluster_name,
            additional_eni_tags,
            vpc_cni_version,
            http_timeout,
            ec2_endpoint,
            cluster_endpoint,
            disable_metrics,
            disable_introspection,
            introspection_bind_address,
            log_level,
            log_file,
            external_snat,
            exclude_snat_cidrs,
            external_service_cidrs,
            randomize_snat,
            node_port_support,
            connmark,
            eni_mtu,
            veth_prefix,
            ipamd_socket,
            legacy_tcp_listener,
            add_wait,
            client_version_allowlist,
            ec2_qps,
            ec2_burst,
            max_pods_file,
            reconcile_interval,
        };
        Ok((cfg, warnings))
    }

    /// Path of the sidecar state file (cooldowns, ENIs being detached) beside the checkpoint.
    pub fn state_file(&self) -> PathBuf {
        crate::checkpoint::sidecar_path(&self.backing_store)
    }
}

fn join_cidrs(v: &[Ipv4Net]) -> String {
    v.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("")
}

impl fmt::Display for Config {
    /// One `NAME=value` line per variable, upstream names, effective values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.pool;
        let tags = serde_json::to_string(&self.additional_eni_tags).unwrap_or_default();
        let lines: Vec<(&str, String)> = vec![
            ("WARM_ENI_TARGET", p.warm_eni.to_string()),
            ("WARM_IP_TARGET", p.warm_ip.to_string()),
            ("MINIMUM_IP_TARGET", p.minimum_ip.to_string()),
            ("WARM_PREFIX_TARGET", p.warm_prefix.to_string()),
            (
                "MAX_ENI",
                p.max_eni
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "instance limit".into()),
            ),
            ("ENABLE_PREFIX_DELEGATION", p.prefix_delegation.to_string()),
            ("ENABLE_IPv4", self.enable_ipv4.to_string()),
            ("ENABLE_IPv6", self.enable_ipv6.to_string()),
            (
                "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG",
                self.custom_network_cfg.to_string(),
            ),
            (
                "ENI_CONFIG_ANNOTATION_DEF",
                self.eni_config_annotation_def.clone(),
            ),
            ("ENI_CONFIG_LABEL_DEF", self.eni_config_label_def.clone()),
            (
                "AWS_MANAGE_ENIS_NON_SCHEDULABLE",
                self.manage_enis_non_schedulable.to_string(),
            ),
            (
                "ENABLE_SUBNET_DISCOVERY",
                self.enable_subnet_discovery.to_string(),
            ),
            (
                "DISABLE_NETWORK_RESOURCE_PROVISIONING",
                self.disable_network_resource_provisioning.to_string(),
            ),
            (
                "DISABLE_LEAKED_ENI_CLEANUP",
                self.disable_leaked_eni_cleanup.to_string(),
            ),
            (
                "ENABLE_IMDS_ONLY_MODE",
                self.enable_imds_only_mode.to_string(),
            ),
            (
                "AWS_VPC_K8S_CNI_BACKING_STORE",
                self.backing_store.display().to_string(),
            ),
            ("MANAGE_UNTAGGED_ENI", self.manage_untagged_eni.to_string()),
            ("ANNOTATE_POD_IP", self.annotate_pod_ip.to_string()),
            (
                "NETWORK_POLICY_ENFORCING_MODE",
                self.network_policy_enforcing_mode.as_str().to_owned(),
            ),
            ("IP_COOLDOWN_PERIOD", self.ip_cooldown.as_secs().to_string()),
            ("MY_NODE_NAME", opt(&self.node_name).to_owned()),
            ("MY_POD_NAME", opt(&self.pod_name).to_owned()),
            ("CLUSTER_NAME", self.cluster_name.clone()),
            ("ADDITIONAL_ENI_TAGS", tags),
            ("VPC_CNI_VERSION", self.vpc_cni_version.clone()),
            ("HTTP_TIMEOUT", self.http_timeout.as_secs().to_string()),
            ("AWS_EC2_ENDPOINT", opt(&self.ec2_endpoint).to_owned()),
            ("CLUSTER_ENDPOINT", opt(&self.cluster_endpoint).to_owned()),
            ("DISABLE_METRICS", self.disable_metrics.to_string()),
            (
                "DISABLE_INTROSPECTION",
                self.disable_introspection.to_string(),
            ),
            (
                "INTROSPECTION_BIND_ADDRESS",
                self.introspection_bind_address.clone(),
            ),
            (
                "AWS_VPC_K8S_CNI_LOGLEVEL",
                self.log_level.as_str().to_owned(),
            ),
            ("AWS_VPC_K8S_CNI_LOG_FILE", self.log_file.clone()),
            (
                "AWS_VPC_K8S_CNI_EXTERNALSNAT",
                self.external_snat.to_string(),
            ),
            (
                "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
                join_cidrs(&self.exclude_snat_cidrs),
            ),
            (
                "AWS_EXTERNAL_SERVICE_CIDRS",
                join_cidrs(&self.external_service_cidrs),
            ),
            (
                "AWS_VPC_K8S_CNI_RANDOMIZESNAT",
                self.randomize_snat.as_str().to_owned(),
            ),
            (
                "AWS_VPC_CNI_NODE_PORT_SUPPORT",
                self.node_port_support.to_string(),
            ),
            ("AWS_VPC_K8S_CNI_CONNMARK", format!("{:#x}", self.connmark)),
            ("AWS_VPC_ENI_MTU", self.eni_mtu.to_string()),
            ("AWS_VPC_K8S_CNI_VETHPREFIX", self.veth_prefix.clone()),
            (
                awscni_proto::IPAMD_SOCKET_ENV,
                self.ipamd_socket.display().to_string(),
            ),
            (
                "AWS_VPC_CNI_LEGACY_TCP_LISTENER",
                self.legacy_tcp_listener.to_string(),
            ),
            (
                "AWS_VPC_CNI_ADD_WAIT_MS",
                self.add_wait.as_millis().to_string(),
            ),
            (
                "AWS_VPC_CNI_CLIENT_VERSIONS",
                self.client_version_allowlist.join(","),
            ),
            ("AWS_VPC_CNI_EC2_QPS", self.ec2_qps.to_string()),
            ("AWS_VPC_CNI_EC2_BURST", self.ec2_burst.to_string()),
            (
                "AWS_VPC_CNI_MAX_PODS_FILE",
                self.max_pods_file.display().to_string(),
            ),
            (
                "AWS_VPC_CNI_RECONCILE_SECONDS",
                self.reconcile_interval.as_secs().to_string(),
            ),
        ];
        for (i, (k, v)) in lines.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<(Config, Vec<Warning>), ConfigError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(&move |k| m.get(k).cloned())
    }

    fn ok(vars: &[(&str, &str)]) -> Config {
        match load(vars) {
            Ok((c, _)) => c,
            Err(e) => panic!("{vars:?}: {e}"),
        }
    }

    fn warns(vars: &[(&str, &str)]) -> Vec<Warning> {
        load(vars).unwrap().1
    }

    /// Asserts an error that names the variable and the value.
    fn err(vars: &[(&str, &str)], var: &str, value: &str) {
        let e = load(vars).expect_err(&format!("{vars:?} should fail"));
        let text = e.to_string();
        assert!(text.contains(var), "{text} does not name {var}");
        assert!(text.contains(value), "{text} does not name {value:?}");
        assert!(e.problems.iter().any(|p| p.var == var), "{e:?}");
    }

    #[test]
    fn defaults_with_empty_environment() {
        let (c, w) = load(&[]).unwrap();
        assert_eq!(c, Config::default());
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.pool.warm_eni, 1);
        assert!(c.enable_ipv4);
        assert_eq!(c.ip_cooldown, Duration::from_secs(30));
        assert_eq!(
            c.backing_store,
            PathBuf::from("/var/run/aws-node/ipam.json")
        );
    }

    #[test]
    fn empty_values_mean_unset() {
        let all = [
            "WARM_ENI_TARGET",
            "WARM_IP_TARGET",
            "MINIMUM_IP_TARGET",
            "WARM_PREFIX_TARGET",
            "MAX_ENI",
            "ENABLE_PREFIX_DELEGATION",
            "ENABLE_IPv4",
            "ENABLE_IPv6",
            "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG",
            "ENI_CONFIG_ANNOTATION_DEF",
            "ENI_CONFIG_LABEL_DEF",
            "AWS_MANAGE_ENIS_NON_SCHEDULABLE",
            "ENABLE_SUBNET_DISCOVERY",
            "DISABLE_NETWORK_RESOURCE_PROVISIONING",
            "DISABLE_LEAKED_ENI_CLEANUP",
            "ENABLE_IMDS_ONLY_MODE",
            "AWS_VPC_K8S_CNI_BACKING_STORE",
            "MANAGE_UNTAGGED_ENI",
            "ANNOTATE_POD_IP",
            "NETWORK_POLICY_ENFORCING_MODE",
            "IP_COOLDOWN_PERIOD",
            "MY_NODE_NAME",
            "MY_POD_NAME",
            "CLUSTER_NAME",
            "ADDITIONAL_ENI_TAGS",
            "VPC_CNI_VERSION",
            "HTTP_TIMEOUT",
            "AWS_EC2_ENDPOINT",
            "CLUSTER_ENDPOINT",
            "DISABLE_METRICS",
            "DISABLE_INTROSPECTION",
            "INTROSPECTION_BIND_ADDRESS",
            "AWS_VPC_K8S_CNI_LOGLEVEL",
            "AWS_VPC_K8S_CNI_LOG_FILE",
            "AWS_VPC_K8S_CNI_EXTERNALSNAT",
            "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
            "AWS_EXTERNAL_SERVICE_CIDRS",
            "AWS_VPC_K8S_CNI_RANDOMIZESNAT",
            "AWS_VPC_CNI_NODE_PORT_SUPPORT",
            "AWS_VPC_K8S_CNI_CONNMARK",
            "AWS_VPC_ENI_MTU",
            "AWS_VPC_K8S_CNI_VETHPREFIX",
            "AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER",
            "ENABLE_NFTABLES",
            "ENABLE_POD_ENI",
            "ENABLE_MULTI_NIC",
            "ENABLE_V6_EGRESS",
            awscni_proto::IPAMD_SOCKET_ENV,
            "AWS_VPC_CNI_LEGACY_TCP_LISTENER",
            "AWS_VPC_CNI_ADD_WAIT_MS",
            "AWS_VPC_CNI_CLIENT_VERSIONS",
            "AWS_VPC_CNI_EC2_QPS",
            "AWS_VPC_CNI_EC2_BURST",
            "AWS_VPC_CNI_MAX_PODS_FILE",
            "AWS_VPC_CNI_RECONCILE_SECONDS",
        ];
        let vars: Vec<(&str, &str)> = all.iter().map(|k| (*k, "")).collect();
        let (c, w) = load(&vars).unwrap();
        assert_eq!(c, Config::default());
        assert!(w.is_empty(), "{w:?}");
        // Every variable listed here appears in the effective-config dump, and vice versa.
        let shown = c.to_string();
        for k in all.iter().filter(|k| {
            !matches!(
                **k,
                "AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER"
                    | "ENABLE_NFTABLES"
                    | "ENABLE_POD_ENI"
                    | "ENABLE_MULTI_NIC"
                    | "ENABLE_V6_EGRESS"
            )
        }) {
            assert!(
                shown.lines().any(|l| l.starts_with(&format!("{k}="))),
                "{k} missing"
            );
        }
        assert_eq!(shown.lines().count(), all.len() - 5);
    }

    #[test]
    fn warm_targets_valid_invalid_negative() {
        // (var, value, expected, warning expected)
        let cases: &[(&str, &str, u32, bool)] = &[
            ("WARM_ENI_TARGET", "0", 0, false),
            ("WARM_ENI_TARGET", "3", 3, false),
            ("WARM_ENI_TARGET", "-1", 1, true),
            ("WARM_IP_TARGET", "5", 5, false),
            ("WARM_IP_TARGET", "-2", 0, true),
            ("MINIMUM_IP_TARGET", "10", 10, false),
            ("MINIMUM_IP_TARGET", "-3", 0, true),
            ("WARM_PREFIX_TARGET", "1", 1, false),
            ("WARM_PREFIX_TARGET", "-1", 0, true),
        ];
        for &(var, value, want, warned) in cases {
            let (c, w) = load(&[(var, value)]).unwrap();
            let got = match var {
                "WARM_ENI_TARGET" => c.pool.warm_eni,
                "WARM_IP_TARGET" => c.pool.warm_ip,
                "MINIMUM_IP_TARGET" => c.pool.minimum_ip,
                _ => c.pool.warm_prefix,
            };
            assert_eq!(got, want, "{var}={value}");
            assert_eq!(
                w.iter().any(|p| p.var == var),
                warned,
                "{var}={value}: {w:?}"
            );
        }
        for var in [
            "WARM_ENI_TARGET",
            "WARM_IP_TARGET",
            "MINIMUM_IP_TARGET",
            "WARM_PREFIX_TARGET",
        ] {
            err(&[(var, "two")], var, "two");
            err(&[(var, "1.5")], var, "1.5");
            err(&[(var, "99999999999")], var, "99999999999");
        }
    }

    #[test]
    fn max_eni() {
        assert_eq!(ok(&[("MAX_ENI", "2")]).pool.max_eni, Some(2));
        let (c, w) = load(&[("MAX_ENI", "0")]).unwrap();
        assert_eq!(c.pool.max_eni, None);
        assert_eq!(w[0].var, "MAX_ENI");
        assert_eq!(load(&[("MAX_ENI", "-4")]).unwrap().0.pool.max_eni, None);
        err(&[("MAX_ENI", "many")], "MAX_ENI", "many");
    }

    #[test]
    fn booleans_every_variable() {
        let vars = [
            "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG",
            "AWS_MANAGE_ENIS_NON_SCHEDULABLE",
            "ENABLE_SUBNET_DISCOVERY",
            "DISABLE_NETWORK_RESOURCE_PROVISIONING",
            "DISABLE_LEAKED_ENI_CLEANUP",
            "ENABLE_IMDS_ONLY_MODE",
            "MANAGE_UNTAGGED_ENI",
            "ANNOTATE_POD_IP",
            "DISABLE_METRICS",
            "DISABLE_INTROSPECTION",
            "AWS_VPC_K8S_CNI_EXTERNALSNAT",
            "AWS_VPC_CNI_NODE_PORT_SUPPORT",
            "AWS_VPC_CNI_LEGACY_TCP_LISTENER",
        ];
        let get = |c: &Config, v: &str| -> bool {
            match v {
                "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG" => c.custom_network_cfg,
                "AWS_MANAGE_ENIS_NON_SCHEDULABLE" => c.manage_enis_non_schedulable,
                "ENABLE_SUBNET_DISCOVERY" => c.enable_subnet_discovery,
                "DISABLE_NETWORK_RESOURCE_PROVISIONING" => c.disable_network_resource_provisioning,
                "DISABLE_LEAKED_ENI_CLEANUP" => c.disable_leaked_eni_cleanup,
                "ENABLE_IMDS_ONLY_MODE" => c.enable_imds_only_mode,
                "MANAGE_UNTAGGED_ENI" => c.manage_untagged_eni,
                "ANNOTATE_POD_IP" => c.annotate_pod_ip,
                "DISABLE_METRICS" => c.disable_metrics,
                "DISABLE_INTROSPECTION" => c.disable_introspection,
                "AWS_VPC_K8S_CNI_EXTERNALSNAT" => c.external_snat,
                "AWS_VPC_CNI_NODE_PORT_SUPPORT" => c.node_port_support,
                "AWS_VPC_CNI_LEGACY_TCP_LISTENER" => c.legacy_tcp_listener,
                _ => unreachable!(),
            }
        };
        for var in vars {
            for t in ["1", "t", "T", "TRUE", "true", "True"] {
                assert!(get(&ok(&[(var, t)]), var), "{var}={t}");
            }
            for f in ["0", "f", "F", "FALSE", "false", "False"] {
                assert!(!get(&ok(&[(var, f)]), var), "{var}={f}");
            }
            for bad in ["yes", "tRuE", " true", "2"] {
                err(&[(var, bad)], var, bad);
            }
        }
        // Also the family and PD switches.
        err(
            &[("ENABLE_PREFIX_DELEGATION", "on")],
            "ENABLE_PREFIX_DELEGATION",
            "on",
        );
        err(&[("ENABLE_IPv4", "y")], "ENABLE_IPv4", "y");
        err(&[("ENABLE_IPv6", "n")], "ENABLE_IPv6", "n");
    }

    #[test]
    fn implied_switches() {
        let c = ok(&[("ENABLE_IMDS_ONLY_MODE", "true")]);
        assert!(c.disable_network_resource_provisioning);
        assert!(c.disable_leaked_eni_cleanup);
        let c = ok(&[("DISABLE_NETWORK_RESOURCE_PROVISIONING", "true")]);
        assert!(c.disable_leaked_eni_cleanup);
        assert!(!c.enable_imds_only_mode);
    }

    #[test]
    fn prefix_delegation_needs_a_target() {
        err(
            &[("ENABLE_PREFIX_DELEGATION", "true")],
            "ENABLE_PREFIX_DELEGATION",
            "true",
        );
        err(
            &[
                ("ENABLE_PREFIX_DELEGATION", "true"),
                ("WARM_PREFIX_TARGET", "0"),
            ],
            "ENABLE_PREFIX_DELEGATION",
            "true",
        );
        for t in ["WARM_PREFIX_TARGET", "WARM_IP_TARGET", "MINIMUM_IP_TARGET"] {
            let c = ok(&[("ENABLE_PREFIX_DELEGATION", "true"), (t, "1")]);
            assert!(c.pool.prefix_delegation);
        }
    }

    #[test]
    fn address_family() {
        assert!(ok(&[("ENABLE_IPv4", "true")]).enable_ipv4);
        assert!(ok(&[("ENABLE_IPv6", "false")]).enable_ipv4);
        err(&[("ENABLE_IPv4", "false")], "ENABLE_IPv4", "false");
        err(
            &[("ENABLE_IPv4", "true"), ("ENABLE_IPv6", "true")],
            "ENABLE_IPv4",
            "true",
        );
        err(
            &[("ENABLE_IPv4", "false"), ("ENABLE_IPv6", "true")],
            "ENABLE_IPv6",
            "true",
        );
    }

    #[test]
    fn cooldown() {
        assert_eq!(
            ok(&[("IP_COOLDOWN_PERIOD", "0")]).ip_cooldown,
            Duration::ZERO
        );
        assert_eq!(
            ok(&[("IP_COOLDOWN_PERIOD", "90")]).ip_cooldown,
            Duration::from_secs(90)
        );
        err(&[("IP_COOLDOWN_PERIOD", "-1")], "IP_COOLDOWN_PERIOD", "-1");
        err(
            &[("IP_COOLDOWN_PERIOD", "30s")],
            "IP_COOLDOWN_PERIOD",
            "30s",
        );
    }

    #[test]
    fn network_policy_mode() {
        for (v, m) in [
            ("none", NetworkPolicyMode::None),
            ("strict", NetworkPolicyMode::Strict),
            ("standard", NetworkPolicyMode::Standard),
        ] {
            assert_eq!(
                ok(&[("NETWORK_POLICY_ENFORCING_MODE", v)]).network_policy_enforcing_mode,
                m
            );
        }
        err(
            &[("NETWORK_POLICY_ENFORCING_MODE", "Strict")],
            "NETWORK_POLICY_ENFORCING_MODE",
            "Strict",
        );
    }

    #[test]
    fn strings_and_paths() {
        let c = ok(&[
            ("ENI_CONFIG_ANNOTATION_DEF", "a/b"),
            ("ENI_CONFIG_LABEL_DEF", "c/d"),
            ("MY_NODE_NAME", "ip-10-0-0-1"),
            ("MY_POD_NAME", "aws-node-x"),
            ("CLUSTER_NAME", "prod"),
            ("VPC_CNI_VERSION", "v1.23.1"),
            ("AWS_VPC_K8S_CNI_LOG_FILE", "stdout"),
            ("AWS_VPC_K8S_CNI_BACKING_STORE", "/tmp/x/ipam.json"),
            ("AWS_VPC_CNI_IPAMD_SOCKET", "/tmp/x/ipamd.sock"),
            ("AWS_VPC_CNI_MAX_PODS_FILE", "/tmp/x/max-pods"),
        ]);
        assert_eq!(c.eni_config_annotation_def, "a/b");
        assert_eq!(c.eni_config_label_def, "c/d");
        assert_eq!(c.node_name.as_deref(), Some("ip-10-0-0-1"));
        assert_eq!(c.pod_name.as_deref(), Some("aws-node-x"));
        assert_eq!(c.cluster_name, "prod");
        assert_eq!(c.vpc_cni_version, "v1.23.1");
        assert_eq!(c.log_file, "stdout");
        assert_eq!(c.backing_store, PathBuf::from("/tmp/x/ipam.json"));
        assert_eq!(c.ipamd_socket, PathBuf::from("/tmp/x/ipamd.sock"));
        assert_eq!(c.max_pods_file, PathBuf::from("/tmp/x/max-pods"));
        assert_eq!(
            c.state_file(),
            PathBuf::from("/tmp/x/ipam.json.awscni-state")
        );
        for var in [
            "AWS_VPC_K8S_CNI_BACKING_STORE",
            "AWS_VPC_CNI_IPAMD_SOCKET",
            "AWS_VPC_CNI_MAX_PODS_FILE",
        ] {
            err(&[(var, "relative/path")], var, "relative/path");
        }
    }

    #[test]
    fn additional_eni_tags() {
        let (c, w) = load(&[(
            "ADDITIONAL_ENI_TAGS",
            r#"{"team":"net","node.k8s.amazonaws.com/x":"y"}"#,
        )])
        .unwrap();
        assert_eq!(c.additional_eni_tags.len(), 1);
        assert_eq!(c.additional_eni_tags["team"], "net");
        assert_eq!(w.len(), 1);
        assert!(w[0].value.contains("k8s.amazonaws.com"));
        assert!(
            ok(&[("ADDITIONAL_ENI_TAGS", "{}")])
                .additional_eni_tags
                .is_empty()
        );
        let (c, w) = load(&[("ADDITIONAL_ENI_TAGS", "team=net")]).unwrap();
        assert!(c.additional_eni_tags.is_empty());
        assert_eq!(w[0].var, "ADDITIONAL_ENI_TAGS");
        assert_eq!(w[0].value, "team=net");
    }

    #[test]
    fn http_timeout() {
        assert_eq!(
            ok(&[("HTTP_TIMEOUT", "30")]).http_timeout,
            Duration::from_secs(30)
        );
        let (c, w) = load(&[("HTTP_TIMEOUT", "5")]).unwrap();
        assert_eq!(c.http_timeout, Duration::from_secs(10));
        assert_eq!(w[0].var, "HTTP_TIMEOUT");
        err(&[("HTTP_TIMEOUT", "ten")], "HTTP_TIMEOUT", "ten");
    }

    #[test]
    fn endpoints() {
        let c = ok(&[
            ("AWS_EC2_ENDPOINT", "http://127.0.0.1:4566"),
            ("CLUSTER_ENDPOINT", "https://k8s.example:443"),
        ]);
        assert_eq!(c.ec2_endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(
            c.cluster_endpoint.as_deref(),
            Some("https://k8s.example:443")
        );
        err(
            &[("AWS_EC2_ENDPOINT", "ec2.local")],
            "AWS_EC2_ENDPOINT",
            "ec2.local",
        );
        err(
            &[("CLUSTER_ENDPOINT", "ftp://x")],
            "CLUSTER_ENDPOINT",
            "ftp://x",
        );
    }

    #[test]
    fn introspection_bind_address() {
        for v in [
            "127.0.0.1:61679",
            "unix:/run/x.sock",
            "localhost:1",
            "[::1]:61679",
        ] {
            assert_eq!(
                ok(&[("INTROSPECTION_BIND_ADDRESS", v)]).introspection_bind_address,
                v
            );
        }
        for v in ["61679", "unix:", "host:port", "::1:80"] {
            err(
                &[("INTROSPECTION_BIND_ADDRESS", v)],
                "INTROSPECTION_BIND_ADDRESS",
                v,
            );
        }
    }

    #[test]
    fn log_level() {
        for (v, l) in [
            ("DEBUG", LogLevel::Debug),
            ("info", LogLevel::Info),
            ("Warn", LogLevel::Warn),
            ("error", LogLevel::Error),
            ("FATAL", LogLevel::Fatal),
        ] {
            assert_eq!(ok(&[("AWS_VPC_K8S_CNI_LOGLEVEL", v)]).log_level, l);
        }
        let (c, w) = load(&[("AWS_VPC_K8S_CNI_LOGLEVEL", "verbose")]).unwrap();
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(w[0].value, "verbose");
    }

    #[test]
    fn cidr_lists() {
        for var in [
            "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
            "AWS_EXTERNAL_SERVICE_CIDRS",
        ] {
            let (c, w) = load(&[(var, "10.1.0.0/16, 192.168.0.0/24,,fd00::/8")]).unwrap();
            let got = if var.contains("EXCLUDE") {
                c.exclude_snat_cidrs
            } else {
                c.external_service_cidrs
            };
            assert_eq!(
                got,
                vec![
                    "10.1.0.0/16".parse::<Ipv4Net>().unwrap(),
                    "192.168.0.0/24".parse().unwrap()
                ]
            );
            assert_eq!(w.len(), 1);
            assert_eq!(w[0].value, "fd00::/8");
            err(&[(var, "10.1.0.0/16,10.2.0.0")], var, "10.2.0.0");
        }
    }

    #[test]
    fn randomize_snat() {
        for (v, m) in [
            ("prng", RandomizeSnat::Prng),
            ("hashrandom", RandomizeSnat::HashRandom),
            ("none", RandomizeSnat::None),
        ] {
            assert_eq!(
                ok(&[("AWS_VPC_K8S_CNI_RANDOMIZESNAT", v)]).randomize_snat,
                m
            );
        }
        let (c, w) = load(&[("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "fully")]).unwrap();
        assert_eq!(c.randomize_snat, RandomizeSnat::Prng);
        assert_eq!(w[0].value, "fully");
    }

    #[test]
    fn connmark() {
        for (v, n) in [
            ("128", 128),
            ("0x100", 0x100),
            ("0X10", 16),
            ("010", 8),
            ("4294967295", u32::MAX),
        ] {
            assert_eq!(ok(&[("AWS_VPC_K8S_CNI_CONNMARK", v)]).connmark, n, "{v}");
        }
        for v in ["0", "4294967296", "-5", "0xZZ", "mark", "09"] {
            let (c, w) = load(&[("AWS_VPC_K8S_CNI_CONNMARK", v)]).unwrap();
            assert_eq!(c.connmark, 0x80, "{v}");
            assert_eq!(w[0].value, v);
        }
    }

    #[test]
    fn mtu() {
        for v in ["576", "1500", "9001"] {
            assert_eq!(ok(&[("AWS_VPC_ENI_MTU", v)]).eni_mtu.to_string(), v);
        }
        for v in ["575", "9002", "jumbo"] {
            err(&[("AWS_VPC_ENI_MTU", v)], "AWS_VPC_ENI_MTU", v);
        }
    }

    #[test]
    fn veth_prefix() {
        assert_eq!(
            ok(&[("AWS_VPC_K8S_CNI_VETHPREFIX", "abcd")]).veth_prefix,
            "abcd"
        );
        for v in ["abcde", "eth", "lo", "vlan"] {
            err(
                &[("AWS_VPC_K8S_CNI_VETHPREFIX", v)],
                "AWS_VPC_K8S_CNI_VETHPREFIX",
                v,
            );
        }
    }

    #[test]
    fn deprecated_and_later_are_warnings() {
        let w = warns(&[
            ("AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER", "false"),
            ("ENABLE_NFTABLES", "true"),
            ("ENABLE_POD_ENI", "true"),
            ("ENABLE_MULTI_NIC", "true"),
            ("ENABLE_V6_EGRESS", "false"),
        ]);
        let names: Vec<_> = w.iter().map(|p| p.var).collect();
        assert_eq!(
            names,
            [
                "AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER",
                "ENABLE_NFTABLES",
                "ENABLE_POD_ENI",
                "ENABLE_MULTI_NIC"
            ]
        );
        err(&[("ENABLE_POD_ENI", "maybe")], "ENABLE_POD_ENI", "maybe");
    }

    #[test]
    fn ours() {
        let c = ok(&[
            ("AWS_VPC_CNI_ADD_WAIT_MS", "2500"),
            ("AWS_VPC_CNI_CLIENT_VERSIONS", "v1.23.1, ,v1.22.0"),
            ("AWS_VPC_CNI_EC2_QPS", "2.5"),
            ("AWS_VPC_CNI_EC2_BURST", "5"),
            ("AWS_VPC_CNI_RECONCILE_SECONDS", "7"),
        ]);
        assert_eq!(c.add_wait, Duration::from_millis(2500));
        assert_eq!(c.client_version_allowlist, ["v1.23.1", "v1.22.0"]);
        assert_eq!(c.ec2_qps, 2.5);
        assert_eq!(c.ec2_burst, 5);
        assert_eq!(c.reconcile_interval, Duration::from_secs(7));
        assert_eq!(
            ok(&[("AWS_VPC_CNI_ADD_WAIT_MS", "0")]).add_wait,
            Duration::ZERO
        );
        err(
            &[("AWS_VPC_CNI_ADD_WAIT_MS", "60001")],
            "AWS_VPC_CNI_ADD_WAIT_MS",
            "60001",
        );
        err(
            &[("AWS_VPC_CNI_ADD_WAIT_MS", "5s")],
            "AWS_VPC_CNI_ADD_WAIT_MS",
            "5s",
        );
        for v in ["0", "-1", "NaN", "inf", "fast"] {
            err(&[("AWS_VPC_CNI_EC2_QPS", v)], "AWS_VPC_CNI_EC2_QPS", v);
        }
        for v in ["0", "x"] {
            err(&[("AWS_VPC_CNI_EC2_BURST", v)], "AWS_VPC_CNI_EC2_BURST", v);
        }
        for v in ["0", "3601", "x"] {
            err(
                &[("AWS_VPC_CNI_RECONCILE_SECONDS", v)],
                "AWS_VPC_CNI_RECONCILE_SECONDS",
                v,
            );
        }
    }

    #[test]
    fn upstream_manifest_values_are_accepted() {
        // The env block of upstream's aws-node DaemonSet (v1.23.1), as shipped.
        let (c, w) = load(&[
            ("ADDITIONAL_ENI_TAGS", "{}"),
            ("ANNOTATE_POD_IP", "false"),
            ("AWS_VPC_CNI_NODE_PORT_SUPPORT", "true"),
            ("AWS_VPC_ENI_MTU", "9001"),
            ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "false"),
            ("AWS_VPC_K8S_CNI_EXTERNALSNAT", "false"),
            ("AWS_VPC_K8S_CNI_LOGLEVEL", "DEBUG"),
            (
                "AWS_VPC_K8S_CNI_LOG_FILE",
                "/host/var/log/aws-routed-eni/ipamd.log",
            ),
            ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "prng"),
            ("AWS_VPC_K8S_CNI_VETHPREFIX", "eni"),
            (
                "AWS_VPC_K8S_PLUGIN_LOG_FILE",
                "/var/log/aws-routed-eni/plugin.log",
            ),
            ("AWS_VPC_K8S_PLUGIN_LOG_LEVEL", "DEBUG"),
            ("CLUSTER_NAME", "prod"),
            ("DISABLE_INTROSPECTION", "false"),
            ("DISABLE_METRICS", "false"),
            ("DISABLE_NETWORK_RESOURCE_PROVISIONING", "false"),
            ("ENABLE_IPv4", "true"),
            ("ENABLE_IPv6", "false"),
            ("ENABLE_POD_ENI", "false"),
            ("ENABLE_PREFIX_DELEGATION", "false"),
            ("ENABLE_SUBNET_DISCOVERY", "true"),
            ("NETWORK_POLICY_ENFORCING_MODE", "standard"),
            ("VPC_CNI_VERSION", "v1.23.1"),
            ("VPC_ID", "vpc-0123"),
            ("WARM_ENI_TARGET", "1"),
            ("WARM_PREFIX_TARGET", "1"),
            ("MY_NODE_NAME", "ip-10-0-0-1.ec2.internal"),
            ("MY_POD_NAME", "aws-node-abcde"),
        ])
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.pool.warm_prefix, 1);
        assert_eq!(c.network_policy_enforcing_mode, NetworkPolicyMode::Standard);
        assert_eq!(c.cluster_name, "prod");
    }

    #[test]
    fn all_errors_are_reported_together() {
        let e = load(&[("WARM_IP_TARGET", "x"), ("AWS_VPC_ENI_MTU", "1")]).unwrap_err();
        assert_eq!(e.problems.len(), 2);
        let text = e.to_string();
        assert!(text.contains("WARM_IP_TARGET=\"x\""), "{text}");
        assert!(text.contains("AWS_VPC_ENI_MTU=\"1\""), "{text}");
    }

    #[test]
    fn display_shows_effective_values() {
        let c = ok(&[("WARM_IP_TARGET", "3"), ("AWS_VPC_K8S_CNI_CONNMARK", "256")]);
        let s = c.to_string();
        assert!(s.lines().any(|l| l == "WARM_IP_TARGET=3"), "{s}");
        assert!(
            s.lines().any(|l| l == "AWS_VPC_K8S_CNI_CONNMARK=0x100"),
            "{s}"
        );
        assert!(s.lines().any(|l| l == "MAX_ENI=instance limit"), "{s}");
    }
}
