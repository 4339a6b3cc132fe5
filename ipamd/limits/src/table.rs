//! The committed instance-type table: data types, one-time parsing and lookup.

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// The generated table (see `scripts/gen-instance-types.py`). Compiled in, so the binary and
/// ipamd need no file at run time.
const DATA: &str = include_str!("../data/instance-types.json");

/// Hypervisor as `DescribeInstanceTypes` reports it. Bare-metal types report none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hypervisor {
    /// AWS Nitro: prefix delegation and trunk ENIs are available.
    Nitro,
    /// Xen (older generations): secondary IPs only.
    Xen,
}

impl Hypervisor {
    /// The API spelling (`nitro`, `xen`).
    pub fn as_str(self) -> &'static str {
        match self {
            Hypervisor::Nitro => "nitro",
            Hypervisor::Xen => "xen",
        }
    }

    /// Parses the API spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "nitro" => Some(Hypervisor::Nitro),
            "xen" => Some(Hypervisor::Xen),
            _ => None,
        }
    }
}

impl std::fmt::Display for Hypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One network card of an instance type (`NetworkInfo.NetworkCards[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkCard {
    /// `NetworkCardIndex`.
    pub index: u32,
    /// `MaximumNetworkInterfaces` of this card. The default card's value is the ENI budget
    /// for pods (max-pods.md §1).
    pub max_enis: u32,
    /// `NetworkPerformance` of this card (e.g. `"100 Gigabit"`); informational.
    #[serde(default)]
    pub network_performance: String,
}

/// The limits of one instance type, a subset of its `DescribeInstanceTypes` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceType {
    /// `InstanceType`, e.g. `m5.large`.
    pub name: String,
    /// `Hypervisor`; `None` on bare metal.
    pub hypervisor: Option<Hypervisor>,
    /// `BareMetal`.
    pub bare_metal: bool,
    /// `CurrentGeneration`.
    #[serde(default)]
    pub current_generation: bool,
    /// `VCpuInfo.DefaultVCpus`; selects the 110/250 recommendation cap.
    pub default_vcpus: u32,
    /// `VCpuInfo.DefaultCores` (0 when the source did not say).
    #[serde(default)]
    pub default_cores: u32,
    /// `VCpuInfo.DefaultThreadsPerCore` (0 when the source did not say).
    #[serde(default)]
    pub default_threads_per_core: u32,
    /// `MemoryInfo.SizeInMiB`.
    #[serde(default)]
    pub memory_mib: u64,
    /// `ProcessorInfo.SupportedArchitectures`, sorted (`arm64`, `i386`, `x86_64`, ...).
    #[serde(default)]
    pub architectures: Vec<String>,
    /// `NetworkInfo.MaximumNetworkInterfaces`: the instance-wide limit, i.e. the sum over all
    /// cards. Not the pod ENI budget on multi-card types; see [`InstanceType::default_card_enis`].
    pub max_enis: u32,
    /// `NetworkInfo.MaximumNetworkCards`.
    #[serde(default = "one")]
    pub max_network_cards: u32,
    /// `NetworkInfo.DefaultNetworkCardIndex` (0 on every type known today).
    #[serde(default)]
    pub default_network_card_index: u32,
    /// `NetworkInfo.Ipv4AddressesPerInterface` (the primary address included).
    pub ipv4_per_eni: u32,
    /// `NetworkInfo.Ipv6AddressesPerInterface`.
    pub ipv6_per_eni: u32,
    /// `NetworkInfo.Ipv6Supported`.
    pub ipv6_supported: bool,
    /// `NetworkInfo.EnaSupport`: `required`, `supported` or `unsupported`.
    #[serde(default)]
    pub ena_support: String,
    /// `NetworkInfo.EfaSupported`.
    #[serde(default)]
    pub efa_supported: bool,
    /// `NetworkInfo.NetworkPerformance`, e.g. `"Up to 10 Gigabit"`.
    #[serde(default)]
    pub network_performance: String,
    /// `NetworkInfo.NetworkCards`, sorted by index.
    pub network_cards: Vec<NetworkCard>,
}

fn one() -> u32 {
    1
}

impl InstanceType {
    /// Nitro in the sense of the EKS calculator: `Hypervisor == nitro`. Bare-metal types report
    /// no hypervisor and are *not* Nitro here (see [`InstanceType::supports_prefix_delegation`]).
    pub fn is_nitro(&self) -> bool {
        self.hypervisor == Some(Hypervisor::Nitro)
    }

    /// Whether the upstream daemon allows IPv4 prefix delegation: Nitro **or** bare metal
    /// (bare-metal instances run on Nitro hardware but report no hypervisor).
    pub fn supports_prefix_delegation(&self) -> bool {
        self.is_nitro() || self.bare_metal
    }

    /// Heuristic for "can this type have a trunk ENI" (security groups for pods).
    /// `DescribeInstanceTypes` does not say; the authority is the `IsTrunkingCompatible` list
    /// of amazon-vpc-resource-controller-k8s. AWS documents the rule of thumb used here: most
    /// Nitro families (bare metal included), no `t` family. Callers that know better (e.g. the
    /// node has a trunk ENI attached) should use that instead.
    pub fn likely_trunk_capable(&self) -> bool {
        self.supports_prefix_delegation() && !self.family().starts_with('t')
    }

    /// The default network card (`NetworkCards[DefaultNetworkCardIndex]`), if listed.
    pub fn default_card(&self) -> Option<&NetworkCard> {
        self.network_cards
            .iter()
            .find(|c| c.index == self.default_network_card_index)
    }

    /// ENIs the daemon can use for pods: the default card's `MaximumNetworkInterfaces`.
    /// Falls back to the instance-wide value only when the source listed no cards at all
    /// (single-card answers from older API versions); that is what upstream does for types
    /// missing from its table, and it is only right for single-card types.
    pub fn default_card_enis(&self) -> u32 {
        match self.default_card() {
            Some(c) => c.max_enis,
            None if self.network_cards.is_empty() => self.max_enis,
            // A card list without the default index: be conservative, take the smallest card.
            None => self
                .network_cards
                .iter()
                .map(|c| c.max_enis)
                .min()
                .unwrap_or(0),
        }
    }

    /// The instance family, the part before the first `.` (`m5` for `m5.large`).
    pub fn family(&self) -> &str {
        self.name.split('.').next().unwrap_or(&self.name)
    }
}

/// Where the committed table came from (its header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `moto` (PyPI package data) or `DescribeInstanceTypes` (a live endpoint).
    pub kind: String,
    /// File name of the source (e.g. the moto wheel) or the endpoint URL and region.
    pub name: String,
    /// Version of the source, e.g. the moto version; empty when unknown.
    #[serde(default)]
    pub version: String,
    /// SHA-256 of the source file; empty for live endpoints.
    #[serde(default)]
    pub sha256: String,
}

/// The parsed table file.
#[derive(Debug, Deserialize)]
struct TableFile {
    format_version: u32,
    source: SourceInfo,
    count: usize,
    types: Vec<InstanceType>,
}

/// The parsed table.
#[derive(Debug)]
pub struct Table {
    source: SourceInfo,
    types: Vec<InstanceType>,
}

/// Errors from parsing a table file.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// Not valid JSON or not the expected shape.
    #[error("instance-type table is malformed: {0}")]
    Json(#[from] serde_json::Error),
    /// A format version this code does not understand.
    #[error("instance-type table has format_version {0}, this build understands 1")]
    Version(u32),
    /// `count` disagrees with the number of entries (truncated file).
    #[error("instance-type table says count {expected} but holds {actual} types")]
    Count {
        /// The header's count.
        expected: usize,
        /// Entries present.
        actual: usize,
    },
    /// Not sorted by name or a name appears twice (lookup is a binary search).
    #[error("instance-type table is not strictly sorted at {0:?}")]
    Unsorted(String),
}

impl Table {
    /// Parses and validates a table file (the generator's output format).
    pub fn parse(text: &str) -> Result<Self, TableError> {
        let file: TableFile = serde_json::from_str(text)?;
        if file.format_version != 1 {
            return Err(TableError::Version(file.format_version));
        }
        if file.count != file.types.len() {
            return Err(TableError::Count {
                expected: file.count,
                actual: file.types.len(),
            });
        }
        if let Some(w) = file.types.windows(2).find(|w| w[0].name >= w[1].name) {
            return Err(TableError::Unsorted(w[1].name.clone()));
        }
        Ok(Table {
            source: file.source,
            types: file.types,
        })
    }

    /// All types, sorted by name.
    pub fn all(&self) -> &[InstanceType] {
        &self.types
    }

    /// Exact, case-sensitive lookup (EC2 type names are lower case).
    pub fn lookup(&self, name: &str) -> Option<&InstanceType> {
        self.types
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.types[i])
    }

    /// Where the data came from.
    pub fn source(&self) -> &SourceInfo {
        &self.source
    }
}

/// The fully parsed compiled-in table (see [`table`]).
static TABLE: OnceLock<Table> = OnceLock::new();

/// The compiled-in table, parsed on first use.
///
/// The committed file is validated by this crate's tests, so a parse failure here means a
/// broken build; it degrades to an empty table (every lookup misses, callers report "unknown
/// instance type") rather than panicking inside ipamd.
pub fn table() -> &'static Table {
    TABLE.get_or_init(|| {
        Table::parse(DATA).unwrap_or_else(|_| Table {
            source: SourceInfo {
                kind: "invalid".into(),
                name: String::new(),
                version: String::new(),
                sha256: String::new(),
            },
            types: Vec::new(),
        })
    })
}

/// One row of the compiled-in file, parsed on demand.
struct IndexRow {
    name: &'static str,
    json: &'static str,
    /// Boxed: only the looked-up row is ever parsed, and an inline `InstanceType` would make
    /// each of the ~1,400 rows ~300 bytes (≈420 KiB of ipamd's resident heap, per heaptrack).
    parsed: OnceLock<Option<Box<InstanceType>>>,
}

/// Row index of the compiled-in file, so that [`lookup`] before any [`all`] parses one row
/// instead of the whole ≈700 KB table (ipamd looks up exactly one type at start-up; a full
/// parse costs ≈20 ms in debug builds, the row ≈20 µs). Relies on the generator's layout (one
/// `{"name":"…",…}` object per line, sorted); any surprise disables it and [`lookup`] falls
/// back to the full table.
fn row_index() -> Option<&'static [IndexRow]> {
    static INDEX: OnceLock<Option<Vec<IndexRow>>> = OnceLock::new();
    INDEX.get_or_init(|| build_index(DATA)).as_deref()
}

fn build_index(text: &'static str) -> Option<Vec<IndexRow>> {
    const START: &str = "\n\"types\":[\n";
    let body = &text[text.find(START)? + START.len()..];
    let mut rows = Vec::new();
    for line in body.split('\n') {
        if line.starts_with("]}") {
            break;
        }
        let rest = line.strip_prefix("{\"name\":\"")?;
        let name = &rest[..rest.find('"')?];
        rows.push(IndexRow {
            name,
            json: line.strip_suffix(',').unwrap_or(line),
            parsed: OnceLock::new(),
        });
    }
    if rows.is_empty() || rows.windows(2).any(|w| w[0].name >= w[1].name) {
        return None;
    }
    Some(rows)
}

/// `Some(result)` when the row index could answer, `None` when it is unusable.
fn index_lookup(name: &str) -> Option<Option<&'static InstanceType>> {
    let rows = row_index()?;
    let Ok(i) = rows.binary_search_by(|r| r.name.cmp(name)) else {
        return Some(None);
    };
    let row = &rows[i];
    // A row that does not parse (or names another type) means the layout changed: let the
    // full, validating parse decide.
    row.parsed
        .get_or_init(|| {
            serde_json::from_str::<InstanceType>(row.json)
                .ok()
                .filter(|t| t.name == row.name)
                .map(Box::new)
        })
        .as_deref()
        .map(Some)
}

/// Parses the compiled-in table and reports any error (for tests and `max-pods --check`).
pub fn check_builtin() -> Result<usize, TableError> {
    Table::parse(DATA).map(|t| t.types.len())
}

/// All known instance types, sorted by name.
pub fn all() -> &'static [InstanceType] {
    table().all()
}

/// Looks up an instance type by its exact name (`m5.large`).
///
/// Cheap on a cold start: until something needs the whole table, only the requested row is
/// parsed. The returned value equals the row in [`all`] (tests check every type).
pub fn lookup(name: &str) -> Option<&'static InstanceType> {
    if let Some(t) = TABLE.get() {
        return t.lookup(name);
    }
    match index_lookup(name) {
        Some(found) => found,
        None => table().lookup(name),
    }
}

/// Header of the compiled-in table: source kind, name, version (moto version), hash.
///
/// Reads only the header line unless the table is already parsed (ipamd logs this at start).
pub fn source() -> &'static SourceInfo {
    static HEADER: OnceLock<Option<SourceInfo>> = OnceLock::new();
    if let Some(t) = TABLE.get() {
        return t.source();
    }
    let header = HEADER.get_or_init(|| {
        const KEY: &str = "\n\"source\":";
        let rest = &DATA[DATA.find(KEY)? + KEY.len()..];
        let line = rest.split('\n').next()?;
        serde_json::from_str(line.strip_suffix(',').unwrap_or(line)).ok()
    });
    match header {
        Some(h) => h,
        None => table().source(),
    }
}

/// Up to `limit` known type names closest to `name`, best first (for "unknown instance type"
/// errors). Uses Jaro-Winkler similarity plus a boost for the same family, so `m5.lrage`
/// suggests `m5.large` and `m5.huge` suggests m5 sizes.
pub fn close_matches(name: &str, limit: usize) -> Vec<&'static str> {
    let wanted = name.trim().to_ascii_lowercase();
    let family = wanted.split('.').next().unwrap_or("");
    let mut scored: Vec<(f64, &'static str)> = all()
        .iter()
        .map(|t| {
            let mut s = jaro_winkler(&wanted, &t.name);
            if !family.is_empty() && t.family() == family {
                s += 0.1;
            }
            (s, t.name.as_str())
        })
        .filter(|(s, _)| *s >= 0.75)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored.into_iter().take(limit).map(|(_, n)| n).collect()
}

fn jaro_winkler(a: &str, b: &str) -> f64 {
    strsim::jaro_winkler(a, b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn row_index_agrees_with_full_parse() {
        let full = Table::parse(DATA).unwrap();
        let rows = row_index().unwrap();
        assert_eq!(rows.len(), full.all().len());
        for t in full.all() {
            let fast = index_lookup(&t.name).unwrap().unwrap();
            assert_eq!(fast, t);
        }
        assert_eq!(index_lookup("m5.lrage"), Some(None));
        assert_eq!(index_lookup(""), Some(None));
        assert_eq!(source(), full.source());
    }

    #[test]
    fn row_index_rejects_other_layouts() {
        assert!(build_index("{}").is_none());
        assert!(build_index("{\n\"types\":[\n]}").is_none());
        assert!(build_index("{\n\"types\":[\n{\"name\":\"b\"},\n{\"name\":\"a\"}\n]}").is_none());
        assert!(build_index("{\n\"types\":[\n{\"x\":1}\n]}").is_none());
        let ok = build_index("{\n\"types\":[\n{\"name\":\"a\"},\n{\"name\":\"b\"}\n]}").unwrap();
        assert_eq!(ok[1].json, "{\"name\":\"b\"}");
    }
}
