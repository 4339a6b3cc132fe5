//! The max-pods formula (max-pods.md §1–§3), pure and table-independent.

use crate::table::InstanceType;
use serde::Serialize;

/// Host-network pods every node runs without a pod IP (aws-node and kube-proxy): the `+ 2`.
pub const HOST_NETWORK_PODS: u32 = 2;
/// Addresses per delegated IPv4 prefix (`/28`).
pub const PREFIX_ADDRESSES: u32 = 16;
/// Recommendation cap for types with at most [`CAP_LARGE_VCPU_THRESHOLD`] vCPUs (also
/// kubelet's default).
pub const CAP_SMALL: u32 = 110;
/// Recommendation cap for types with more than [`CAP_LARGE_VCPU_THRESHOLD`] vCPUs.
pub const CAP_LARGE: u32 = 250;
/// vCPU count above which the EKS calculator recommends [`CAP_LARGE`].
pub const CAP_LARGE_VCPU_THRESHOLD: u32 = 30;

/// The EKS calculator's recommendation cap for a type with `vcpus` default vCPUs.
pub fn recommended_cap(vcpus: u32) -> u32 {
    if vcpus > CAP_LARGE_VCPU_THRESHOLD {
        CAP_LARGE
    } else {
        CAP_SMALL
    }
}

/// A CNI version as given to `--cni-version` (`1.19.2`, `v1.9.0-eksbuild.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct CniVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch (0 when omitted).
    pub patch: u32,
}

impl CniVersion {
    /// Parses `[v]MAJOR.MINOR[.PATCH][-suffix|+suffix]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let t = t.strip_prefix(['v', 'V']).unwrap_or(t);
        let core = t.split(['-', '+']).next().unwrap_or("");
        let parts: Vec<&str> = core.split('.').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(format!(
                "invalid CNI version {s:?}: expected MAJOR.MINOR[.PATCH], e.g. 1.19.2"
            ));
        }
        let num = |p: &str| {
            p.parse::<u32>()
                .map_err(|_| format!("invalid CNI version {s:?}: {p:?} is not a number"))
        };
        Ok(CniVersion {
            major: num(parts[0])?,
            minor: num(parts[1])?,
            patch: parts.get(2).map(|p| num(p)).transpose()?.unwrap_or(0),
        })
    }

    /// The calculator counts prefix delegation only for CNI versions above 1.8.0 (PD shipped
    /// in 1.9.0).
    pub fn supports_prefix_delegation(self) -> bool {
        self > CniVersion {
            major: 1,
            minor: 8,
            patch: 0,
        }
    }
}

impl std::fmt::Display for CniVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Which rule decides whether prefix delegation applies to a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PdPolicy {
    /// The daemon's rule: Nitro or bare metal (what ipamd actually does).
    #[default]
    Daemon,
    /// The EKS calculator's rule: `Hypervisor == nitro` only (bare metal falls back to
    /// secondary IPs), and only for CNI versions above 1.8.
    Calculator,
}

/// Inputs of the formula besides the instance type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Options {
    /// `MAX_ENI` / `--cni-max-eni`: use at most this many ENIs. `None` (or 0, which upstream
    /// treats as unset) means the default card's limit.
    pub max_eni: Option<u32>,
    /// ENIs tagged `node.k8s.amazonaws.com/no_manage` (or otherwise not ours): each one takes
    /// an ENI slot from the pod budget.
    pub unmanaged_enis: u32,
    /// Custom networking (`AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG`): the primary ENI carries no
    /// pod IPs.
    pub custom_networking: bool,
    /// Prefix delegation requested (`ENABLE_PREFIX_DELEGATION`); applied only where
    /// [`Options::pd_policy`] allows.
    pub prefix_delegation: bool,
    /// Reserve one ENI slot for the trunk ENI (security groups for pods on a trunk-capable
    /// type). The caller decides; the table has no trunk-capability data.
    pub trunk: bool,
    /// Rule for prefix-delegation eligibility.
    pub pd_policy: PdPolicy,
    /// CNI version for [`PdPolicy::Calculator`]; `None` means "recent enough".
    pub cni_version: Option<CniVersion>,
}

/// Why prefix delegation was requested but not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PdNote {
    /// The type is not Nitro (Xen; or bare metal under the calculator's rule).
    NotNitro,
    /// The given CNI version is 1.8 or older.
    CniVersionTooOld,
}

impl PdNote {
    /// Human-readable explanation for stderr / logs.
    pub fn message(self, it: &InstanceType) -> String {
        match self {
            PdNote::NotNitro if it.bare_metal => format!(
                "note: prefix delegation ignored for {}: bare-metal types report no hypervisor, \
                 so the calculator rule uses the secondary-IP formula (the aws-node daemon does \
                 allow prefix delegation on bare metal)",
                it.name
            ),
            PdNote::NotNitro => format!(
                "note: prefix delegation is not supported on {} (hypervisor {}, not nitro); \
                 showing the secondary-IP value",
                it.name,
                it.hypervisor.map_or("none", |h| h.as_str())
            ),
            PdNote::CniVersionTooOld => format!(
                "note: prefix delegation needs CNI version 1.9.0 or newer; showing the \
                 secondary-IP value for {}",
                it.name
            ),
        }
    }
}

/// The result with its arithmetic, for `--explain`, `--json` and ipamd's introspection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MaxPods {
    /// Instance type name.
    pub instance_type: String,
    /// Default vCPUs (selects the cap).
    pub vcpus: u32,
    /// Default network card index.
    pub default_network_card_index: u32,
    /// ENIs of the default card.
    pub default_card_enis: u32,
    /// Instance-wide ENIs (informational; differs on multi-card types).
    pub instance_enis: u32,
    /// The `MAX_ENI` limit that was applied, if any.
    pub max_eni: Option<u32>,
    /// `min(MAX_ENI, default_card_enis)`.
    pub enis: u32,
    /// ENIs subtracted for `no_manage` ENIs.
    pub unmanaged_enis: u32,
    /// ENIs subtracted for custom networking (0 or 1).
    pub custom_networking_enis: u32,
    /// ENIs subtracted for the trunk (0 or 1).
    pub trunk_enis: u32,
    /// ENIs that carry pod addresses.
    pub usable_enis: u32,
    /// IPv4 addresses per ENI (primary included).
    pub ipv4_per_eni: u32,
    /// Whether the prefix-delegation formula was used.
    pub prefix_delegation: bool,
    /// Why prefix delegation was requested but not used.
    pub pd_note: Option<PdNote>,
    /// Pod addresses per usable ENI: `(ipv4_per_eni − 1) × (16 if PD)`.
    pub per_eni: u32,
    /// The uncapped value: `usable_enis × per_eni + 2`.
    pub max_pods: u32,
    /// The calculator's cap for this type (110 or 250).
    pub cap: u32,
    /// `min(max_pods, cap)`: the calculator's recommendation.
    pub recommended: u32,
}

impl MaxPods {
    /// The arithmetic, one step per line.
    pub fn explain(&self) -> String {
        let mut s = String::new();
        let card = if self.default_card_enis != self.instance_enis {
            format!(
                " (default card {}; instance-wide {} is not used)",
                self.default_network_card_index, self.instance_enis
            )
        } else {
            String::new()
        };
        s += &format!(
            "instance type     {} ({} vCPUs)\n",
            self.instance_type, self.vcpus
        );
        s += &format!("ENIs              {}{card}\n", self.default_card_enis);
        if let Some(m) = self.max_eni {
            s += &format!(
                "MAX_ENI           min({m}, {}) = {}\n",
                self.default_card_enis, self.enis
            );
        }
        if self.unmanaged_enis > 0 {
            s += &format!("unmanaged ENIs    −{}\n", self.unmanaged_enis);
        }
        if self.custom_networking_enis > 0 {
            s += "custom networking −1 (primary ENI carries no pod IPs)\n";
        }
        if self.trunk_enis > 0 {
            s += "trunk ENI         −1 (reserved for security groups for pods)\n";
        }
        s += &format!("usable ENIs       {}\n", self.usable_enis);
        if self.prefix_delegation {
            s += &format!(
                "per ENI           ({} IPv4 − 1 primary) × 16 (/28 prefixes) = {}\n",
                self.ipv4_per_eni, self.per_eni
            );
        } else {
            s += &format!(
                "per ENI           {} IPv4 − 1 primary = {}\n",
                self.ipv4_per_eni, self.per_eni
            );
        }
        s += &format!(
            "max pods          {} × {} + 2 = {}\n",
            self.usable_enis, self.per_eni, self.max_pods
        );
        s += &format!(
            "cap               {} ({} vCPUs {} 30) → recommended {}\n",
            self.cap,
            self.vcpus,
            if self.vcpus > CAP_LARGE_VCPU_THRESHOLD {
                ">"
            } else {
                "≤"
            },
            self.recommended
        );
        s
    }
}

/// Computes max pods for `it` under `opts` (max-pods.md §2, combined form):
///
/// ```text
/// usable_enis = min(MAX_ENI, default_card_ENIs) − unmanaged − custom_networking − trunk
/// per_eni     = (IPv4_per_ENI − 1) × (16 if prefix delegation applies)
/// max_pods    = usable_enis × per_eni + 2
/// ```
///
/// All subtraction saturates at zero, so a type with too few ENIs yields 2 (host-network pods
/// only) instead of wrapping.
pub fn compute(it: &InstanceType, opts: &Options) -> MaxPods {
    let default_card_enis = it.default_card_enis();
    let max_eni = opts.max_eni.filter(|&n| n >= 1);
    let enis = max_eni.map_or(default_card_enis, |m| m.min(default_card_enis));
    let custom_networking_enis = u32::from(opts.custom_networking);
    let trunk_enis = u32::from(opts.trunk);
    let usable_enis = enis
        .saturating_sub(opts.unmanaged_enis)
        .saturating_sub(custom_networking_enis)
        .saturating_sub(trunk_enis);

    let pd_note = if !opts.prefix_delegation {
        None
    } else {
        let type_ok = match opts.pd_policy {
            PdPolicy::Daemon => it.supports_prefix_delegation(),
            PdPolicy::Calculator => it.is_nitro(),
        };
        let version_ok = opts.pd_policy == PdPolicy::Daemon
            || opts
                .cni_version
                .is_none_or(|v| v.supports_prefix_delegation());
        if !type_ok {
            Some(PdNote::NotNitro)
        } else if !version_ok {
            Some(PdNote::CniVersionTooOld)
        } else {
            None
        }
    };
    let prefix_delegation = opts.prefix_delegation && pd_note.is_none();

    let mut per_eni = it.ipv4_per_eni.saturating_sub(1);
    if prefix_delegation {
        per_eni = per_eni.saturating_mul(PREFIX_ADDRESSES);
    }
    let max_pods = usable_enis
        .saturating_mul(per_eni)
        .saturating_add(HOST_NETWORK_PODS);
    let cap = recommended_cap(it.default_vcpus);
    MaxPods {
        instance_type: it.name.clone(),
        vcpus: it.default_vcpus,
        default_network_card_index: it.default_network_card_index,
        default_card_enis,
        instance_enis: it.max_enis,
        max_eni,
        enis,
        unmanaged_enis: opts.unmanaged_enis,
        custom_networking_enis,
        trunk_enis,
        usable_enis,
        ipv4_per_eni: it.ipv4_per_eni,
        prefix_delegation,
        pd_note,
        per_eni,
        max_pods,
        cap,
        recommended: max_pods.min(cap),
    }
}

/// ipamd's own limit: the combined formula with the daemon's prefix-delegation rule (Nitro or
/// bare metal). `max_eni` is `MAX_ENI` (`None`, or any value < 1, means unset);
/// `trunk` should be true when security groups for pods are on and the type is trunk-capable.
/// The value is uncapped: ipamd caps its pool with `min(Node capacity, this)`.
pub fn node_max_pods(
    it: &InstanceType,
    max_eni: Option<u32>,
    unmanaged_enis: u32,
    prefix_delegation: bool,
    custom_networking: bool,
    trunk: bool,
) -> MaxPods {
    compute(
        it,
        &Options {
            max_eni,
            unmanaged_enis,
            custom_networking,
            prefix_delegation,
            trunk,
            pd_policy: PdPolicy::Daemon,
            cni_version: None,
        },
    )
}

/// `eni-max-pods.txt` body lines (`<type> <max pods>`, sorted by type, uncapped) for `types`
/// under `opts`. The input need not be sorted.
pub fn eni_max_pods_lines<'a>(
    types: impl IntoIterator<Item = &'a InstanceType>,
    opts: &Options,
) -> Vec<String> {
    let mut rows: Vec<(&str, u32)> = types
        .into_iter()
        .map(|t| (t.name.as_str(), compute(t, opts).max_pods))
        .collect();
    rows.sort_unstable();
    rows.into_iter().map(|(n, v)| format!("{n} {v}")).collect()
}

/// Parses `eni-max-pods.txt` with upstream's rules: trim each line, skip empty and `#` lines,
/// ignore lines without exactly two whitespace-separated fields, parse the second as base-10.
/// Returns `(type, value)` pairs in file order; a bad number is an error naming the line.
pub fn parse_eni_max_pods(text: &str) -> Result<Vec<(String, u32)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != 2 {
            continue;
        }
        let v = fields[1].parse::<u32>().map_err(|e| {
            format!(
                "line {}: max pods {:?} for {} is not a number: {e}",
                i + 1,
                fields[1],
                fields[0]
            )
        })?;
        out.push((fields[0].to_string(), v));
    }
    Ok(out)
}
