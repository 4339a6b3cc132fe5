//! Instance-type limits as the emulator needs them.
//!
//! The project's single instance-type table lives in the `awscni-limits` crate (the same data
//! `max-pods` uses, generated from AWS's `DescribeInstanceTypes` data). [`lookup`] and [`all`]
//! convert from it; a handful of built-in types is kept only as a fallback should that table
//! ever fail to load (it logs nothing and never panics), so the emulator keeps working.

/// Limits of one network card of an instance type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardLimits {
    /// `NetworkCardIndex`.
    pub index: u32,
    /// `MaximumNetworkInterfaces` of this card.
    pub max_enis: u32,
}

/// The `DescribeInstanceTypes` facts the emulator models and serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeLimits {
    /// Instance type name, e.g. `m5.large`.
    pub name: String,
    /// `nitro` or `xen`; `None` for bare-metal types (AWS omits the field for them).
    pub hypervisor: Option<String>,
    /// Bare-metal type.
    pub bare_metal: bool,
    /// `VCpuInfo.DefaultVCpus`.
    pub default_vcpus: u32,
    /// Instance-wide `MaximumNetworkInterfaces` (sum over cards).
    pub max_enis: u32,
    /// `Ipv4AddressesPerInterface`: slots per ENI (primary + secondaries + /28 prefixes).
    pub ipv4_per_eni: u32,
    /// `Ipv6AddressesPerInterface`.
    pub ipv6_per_eni: u32,
    /// `DefaultNetworkCardIndex`.
    pub default_network_card_index: u32,
    /// Per-card ENI limits, ordered by card index.
    pub network_cards: Vec<CardLimits>,
}

impl TypeLimits {
    /// Whether EC2 offers /28 prefix delegation on this type (Nitro or bare metal).
    pub fn supports_prefixes(&self) -> bool {
        self.bare_metal || self.hypervisor.as_deref() == Some("nitro")
    }

    /// ENI limit of card `index`, `None` if the type has no such card.
    pub fn card_max_enis(&self, index: u32) -> Option<u32> {
        self.network_cards
            .iter()
            .find(|c| c.index == index)
            .map(|c| c.max_enis)
    }
}

/// (name, hypervisor, bare metal, vCPUs, cards, ENIs per card, IPv4 per ENI)
type Row = (&'static str, Option<&'static str>, bool, u32, u32, u32, u32);

/// Built-in fallback rows, from AWS's published `DescribeInstanceTypes` data (see
/// shared/reference/max-pods.md §5). Multi-card rows split the instance-wide ENI count evenly,
/// as AWS does for these types.
const BUILTIN: &[Row] = &[
    ("c5.18xlarge", Some("nitro"), false, 72, 1, 15, 50),
    ("c5.large", Some("nitro"), false, 2, 1, 3, 10),
    ("c6in.32xlarge", Some("nitro"), false, 128, 2, 8, 50),
    ("m4.large", Some("xen"), false, 2, 1, 2, 10),
    ("m5.4xlarge", Some("nitro"), false, 16, 1, 8, 30),
    ("m5.large", Some("nitro"), false, 2, 1, 3, 10),
    ("m5.metal", None, true, 96, 1, 15, 50),
    ("m5.xlarge", Some("nitro"), false, 4, 1, 4, 15),
    ("p4d.24xlarge", Some("nitro"), false, 96, 4, 15, 50),
    ("p5.48xlarge", Some("nitro"), false, 192, 32, 2, 50),
    ("t2.medium", Some("xen"), false, 2, 1, 3, 6),
    ("t3.medium", Some("nitro"), false, 2, 1, 3, 6),
    ("t3.micro", Some("nitro"), false, 2, 1, 2, 2),
    ("trn1.32xlarge", Some("nitro"), false, 128, 8, 5, 50),
];

fn from_row(r: &Row) -> TypeLimits {
    let (name, hv, bm, vcpus, cards, per_card, ipv4) = *r;
    TypeLimits {
        name: name.to_string(),
        hypervisor: hv.map(str::to_string),
        bare_metal: bm,
        default_vcpus: vcpus,
        max_enis: cards * per_card,
        ipv4_per_eni: ipv4,
        ipv6_per_eni: ipv4,
        default_network_card_index: 0,
        network_cards: (0..cards)
            .map(|index| CardLimits {
                index,
                max_enis: per_card,
            })
            .collect(),
    }
}

fn from_limits(t: &awscni_limits::InstanceType) -> TypeLimits {
    TypeLimits {
        name: t.name.clone(),
        hypervisor: t.hypervisor.map(|h| h.as_str().to_string()),
        bare_metal: t.bare_metal,
        default_vcpus: t.default_vcpus,
        max_enis: t.max_enis,
        ipv4_per_eni: t.ipv4_per_eni,
        ipv6_per_eni: t.ipv6_per_eni,
        default_network_card_index: t.default_network_card_index,
        network_cards: t
            .network_cards
            .iter()
            .map(|c| CardLimits {
                index: c.index,
                max_enis: c.max_enis,
            })
            .collect(),
    }
}

/// Limits of one instance type, `None` if unknown.
pub fn lookup(name: &str) -> Option<TypeLimits> {
    if awscni_limits::all().is_empty() {
        return BUILTIN.iter().find(|r| r.0 == name).map(from_row);
    }
    awscni_limits::lookup(name).map(from_limits)
}

/// Every known instance type, sorted by name (the order `DescribeInstanceTypes` pages in).
pub fn all() -> Vec<TypeLimits> {
    let mut v: Vec<TypeLimits> = if awscni_limits::all().is_empty() {
        BUILTIN.iter().map(from_row).collect()
    } else {
        awscni_limits::all().iter().map(from_limits).collect()
    };
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}
