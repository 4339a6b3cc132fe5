//! The committed instance-type table: data types, one-time parsing and lookup.

use serde::{Deserialize, Serialize};
use std::sync::{Mutex, OnceLock, PoisonError};

/// The generated table (see `scripts/gen-instance-types.py`). Compiled in, so the binary and
/// ipamd need no file at run time.
///
/// A `static`, not a `const`: a `const` may be instantiated once per codegen unit (measured:
/// 3 copies of the table in a debug test binary, 2 in debug `max-pods`), and the row index
/// only keeps the rest of the table unread if every reader uses the one copy it points into.
static DATA: &str = include_str!("../data/instance-types.json");

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

/// Row index of the compiled-in file, written by `build.rs` (see its comments for the format
/// and the reasons), so that [`lookup`] before any [`all`] reads a ≈40 KB index and one row
/// instead of the whole ≈700 KB table. ipamd looks up exactly one type at start-up: touching
/// every page of the table kept all of it resident (64 KiB fault-around blocks), ≈0.6 MiB of
/// ipamd's RSS; a full parse also costs ≈20 ms in debug builds, the row ≈20 µs.
///
/// Empty when `build.rs` found an unexpected layout; [`lookup`] then uses the full table.
static ROW_INDEX: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/instance-types.idx"));

/// Must match `build.rs` (the tests build an index with it and read it back with this).
const INDEX_MAGIC: [u8; 4] = *b"ITX1";
const INDEX_HEADER_LEN: usize = 12;
const INDEX_RECORD_LEN: usize = 16;

/// A view of an index built by `build.rs` over the table text it was built from.
///
/// Every offset is bounds-checked when read: a damaged index makes the accessors return `None`
/// (the caller falls back to the full parse), never a panic.
struct RowIndex<'a> {
    /// `count` fixed-width records, sorted by name.
    records: &'a [u8],
    /// All names concatenated, in record order.
    names: &'a [u8],
    /// The table text the row offsets point into.
    data: &'a str,
    count: usize,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(b)).ok()
}

impl<'a> RowIndex<'a> {
    /// `None` for an empty index, another format, or an index of a different text.
    fn new(index: &'a [u8], data: &'a str) -> Option<Self> {
        if index.get(..4)? != INDEX_MAGIC || u32_at(index, 4)? != data.len() {
            return None;
        }
        let count = u32_at(index, 8)?;
        let names_start = count
            .checked_mul(INDEX_RECORD_LEN)?
            .checked_add(INDEX_HEADER_LEN)?;
        Some(RowIndex {
            records: index.get(INDEX_HEADER_LEN..names_start)?,
            names: index.get(names_start..)?,
            data,
            count,
        })
    }

    /// (offset, length) pair number `field` (0: name, 1: row) of record `i`.
    fn span(&self, i: usize, field: usize) -> Option<(usize, usize)> {
        let at = i * INDEX_RECORD_LEN + field * 8;
        Some((u32_at(self.records, at)?, u32_at(self.records, at + 4)?))
    }

    /// The name of record `i`, as bytes (`str` ordering is byte ordering).
    fn name(&self, i: usize) -> Option<&'a [u8]> {
        let (off, len) = self.span(i, 0)?;
        self.names.get(off..off.checked_add(len)?)
    }

    /// The JSON object of record `i`, a slice of the table text (no copy).
    fn row(&self, i: usize) -> Option<&'a str> {
        let (off, len) = self.span(i, 1)?;
        self.data.get(off..off.checked_add(len)?)
    }

    /// Binary search: `Some(Some(i))` found at record `i`, `Some(None)` absent, `None` when the
    /// index is damaged. Reads ~log2(count) records and names, nothing of the table text.
    fn find(&self, name: &str) -> Option<Option<usize>> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.name(mid)?.cmp(name.as_bytes()) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(Some(mid)),
            }
        }
        Some(None)
    }
}

/// Parses record `i`'s row, found by looking up `name`. A row that does not parse, or names
/// another type, means the layout changed: `None`, and the caller lets the full, validating
/// parse decide.
fn parse_row(index: &RowIndex<'_>, i: usize, name: &str) -> Option<InstanceType> {
    serde_json::from_str::<InstanceType>(index.row(i)?)
        .ok()
        .filter(|t| t.name == name)
}

/// `Some(result)` when the row index could answer, `None` when it is unusable.
fn index_lookup(name: &str) -> Option<Option<&'static InstanceType>> {
    /// Rows parsed so far, by record number. A short list instead of one `OnceLock` per row
    /// (≈1,400 × 16 B, mostly never used): ipamd looks up one or two types. Each parsed row is
    /// leaked so that the returned reference is `'static` and stable across calls; at most one
    /// leak per distinct type, so bounded by the table size.
    static PARSED: Mutex<Vec<(usize, &'static InstanceType)>> = Mutex::new(Vec::new());

    let index = RowIndex::new(ROW_INDEX, DATA)?;
    let Some(i) = index.find(name)? else {
        return Some(None);
    };
    // Held while parsing, so two racing callers cannot leak two copies of the same row and
    // hand out different references.
    let mut parsed = PARSED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&(_, t)) = parsed.iter().find(|(row, _)| *row == i) {
        return Some(Some(t));
    }
    let t: &'static InstanceType = Box::leak(Box::new(parse_row(&index, i, name)?));
    parsed.push((i, t));
    Some(Some(t))
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
/// Cheap on a cold start: until something needs the whole table, a binary search over the
/// build-time row index finds the row and only that row is parsed; of the table text only that
/// row's bytes are read. The returned value equals the row in [`all`] (tests check every type).
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

    /// `build.rs` itself, to test the index builder against the reader above.
    #[allow(dead_code)]
    mod build_script {
        include!("../build.rs");
    }

    /// The index path, bypassing `lookup` (which answers from the full table once it is
    /// parsed, so it would not exercise the index after `all()`).
    fn fast(name: &str) -> Option<&'static InstanceType> {
        index_lookup(name).expect("the compiled-in index must be usable")
    }

    #[test]
    fn index_constants_match_build_script() {
        assert_eq!(INDEX_MAGIC, build_script::INDEX_MAGIC);
        assert_eq!(INDEX_HEADER_LEN, build_script::INDEX_HEADER_LEN);
        assert_eq!(INDEX_RECORD_LEN, build_script::INDEX_RECORD_LEN);
    }

    #[test]
    fn compiled_in_index_is_current_and_small() {
        let built = build_script::build_row_index(DATA).unwrap();
        assert_eq!(built, ROW_INDEX, "OUT_DIR index is stale");
        // The point of the index: a small fraction of the table (a few 4 KiB pages).
        assert!(
            ROW_INDEX.len() * 10 < DATA.len(),
            "index {} B vs table {} B",
            ROW_INDEX.len(),
            DATA.len()
        );
    }

    #[test]
    fn row_index_agrees_with_full_parse() {
        let full = Table::parse(DATA).unwrap();
        let index = RowIndex::new(ROW_INDEX, DATA).unwrap();
        assert_eq!(index.count, full.all().len());
        for (i, t) in full.all().iter().enumerate() {
            assert_eq!(index.name(i).unwrap(), t.name.as_bytes());
            assert_eq!(index.find(&t.name), Some(Some(i)), "{}", t.name);
            let got = fast(&t.name).unwrap_or_else(|| panic!("{} missing", t.name));
            assert_eq!(got, t);
            // Cached: the same leaked value, not a second parse.
            assert!(std::ptr::eq(got, fast(&t.name).unwrap()), "{}", t.name);
        }
        assert_eq!(source(), full.source());
    }

    #[test]
    fn row_index_misses_unknown_names() {
        let full = Table::parse(DATA).unwrap();
        let first = &full.all()[0].name;
        let last = &full.all()[full.all().len() - 1].name;
        let before = first[..first.len() - 1].to_string();
        let after = format!("{last}z");
        assert!(before < *first && after > *last);
        for name in [
            "",
            "zz",
            "a",
            "~",
            before.as_str(),
            after.as_str(),
            "m5.",
            "m5.larg",
            "m5.largee",
            "m5.large ",
            " m5.large",
            "m5.LARGE",
            "m5.lrage",
        ] {
            assert_eq!(index_lookup(name), Some(None), "{name:?}");
        }
        assert!(fast("m5.large").is_some(), "control: a real name hits");
    }

    /// Builds an index of `text` with `build.rs` and reads `name` back through the run-time
    /// reader: the row's JSON, `Some(None)` when absent, `None` when unusable.
    fn read_back(text: &str, name: &str) -> Option<Option<String>> {
        let index = build_script::build_row_index(text)?;
        let view = RowIndex::new(&index, text)?;
        Some(match view.find(name)? {
            Some(i) => Some(view.row(i)?.to_string()),
            None => None,
        })
    }

    #[test]
    fn index_builder_round_trips_a_small_table() {
        let text = "{\n\"count\":3,\n\"types\":[\n{\"name\":\"a.x\",\"v\":1},\n\
                    {\"name\":\"b.yy\",\"v\":2},\n{\"name\":\"c\",\"v\":\"é\"}\n]}\n";
        let index = build_script::build_row_index(text).unwrap();
        assert_eq!(
            index.len(),
            INDEX_HEADER_LEN + 3 * INDEX_RECORD_LEN + "a.xb.yyc".len()
        );
        assert!(index.ends_with(b"a.xb.yyc"));
        let expect = [
            ("a.x", "{\"name\":\"a.x\",\"v\":1}"),
            ("b.yy", "{\"name\":\"b.yy\",\"v\":2}"),
            ("c", "{\"name\":\"c\",\"v\":\"é\"}"),
        ];
        for (name, row) in expect {
            assert_eq!(read_back(text, name), Some(Some(row.to_string())), "{name}");
        }
        for name in ["", "a", "a.", "a.xx", "b", "bb", "c.", "d", "é"] {
            assert_eq!(read_back(text, name), Some(None), "{name:?}");
        }
    }

    #[test]
    fn index_builder_rejects_other_layouts() {
        for text in [
            "",
            "{}",
            // No count line, no types line, a count that is not a number.
            "{\n\"types\":[\n{\"name\":\"a\"}\n]}",
            "{\n\"count\":1,\n{\"name\":\"a\"}\n]}",
            "{\n\"count\":x,\n\"types\":[\n{\"name\":\"a\"}\n]}",
            // No rows.
            "{\n\"count\":0,\n\"types\":[\n]}",
            // Unsorted, duplicate.
            "{\n\"count\":2,\n\"types\":[\n{\"name\":\"b\"},\n{\"name\":\"a\"}\n]}",
            "{\n\"count\":2,\n\"types\":[\n{\"name\":\"a\"},\n{\"name\":\"a\"}\n]}",
            // A row not starting with its name, an empty or escaped name.
            "{\n\"count\":1,\n\"types\":[\n{\"x\":1}\n]}",
            "{\n\"count\":1,\n\"types\":[\n{\"name\":\"\"}\n]}",
            "{\n\"count\":1,\n\"types\":[\n{\"name\":\"a\\u002e\"}\n]}",
            // Truncated: no terminator.
            "{\n\"count\":2,\n\"types\":[\n{\"name\":\"a\"},\n{\"name\":\"b\"}\n",
            // Two rows on one line: the scan sees one, the header says two.
            "{\n\"count\":2,\n\"types\":[\n{\"name\":\"a\"},{\"name\":\"b\"}\n]}",
            // Rows missing or extra.
            "{\n\"count\":3,\n\"types\":[\n{\"name\":\"a\"},\n{\"name\":\"b\"}\n]}",
            "{\n\"count\":1,\n\"types\":[\n{\"name\":\"a\"},\n{\"name\":\"b\"}\n]}",
        ] {
            assert_eq!(build_script::build_row_index(text), None, "{text:?}");
        }
    }

    #[test]
    fn rows_that_do_not_match_their_record_are_rejected() {
        let full = Table::parse(DATA).unwrap();
        let (a, b) = (&full.all()[0], &full.all()[1]);
        let rows = [a, b].map(|t| serde_json::to_string(t).unwrap());
        let text = format!(
            "{{\n\"count\":2,\n\"types\":[\n{},\n{}\n]}}\n",
            rows[0], rows[1]
        );
        let good = build_script::build_row_index(&text).unwrap();
        let view = RowIndex::new(&good, &text).unwrap();
        assert_eq!(parse_row(&view, 0, &a.name).as_ref(), Some(a));
        assert_eq!(parse_row(&view, 1, &b.name).as_ref(), Some(b));
        // Records 0 and 1 with their row spans swapped: each row parses, but names the other
        // type.
        let mut swapped = good.clone();
        let (r0, r1) = (INDEX_HEADER_LEN, INDEX_HEADER_LEN + INDEX_RECORD_LEN);
        for k in 8..16 {
            swapped.swap(r0 + k, r1 + k);
        }
        let view = RowIndex::new(&swapped, &text).unwrap();
        assert_eq!(view.find(&a.name), Some(Some(0)));
        assert_eq!(parse_row(&view, 0, &a.name), None);
        assert_eq!(parse_row(&view, 1, &b.name), None);
        // A row that is not an instance type.
        let text = "{\n\"count\":1,\n\"types\":[\n{\"name\":\"a\"}\n]}";
        let index = build_script::build_row_index(text).unwrap();
        assert_eq!(
            parse_row(&RowIndex::new(&index, text).unwrap(), 0, "a"),
            None
        );
    }

    /// Pages of `bytes` (this process's memory) that are mapped right now, and the total,
    /// from `/proc/self/pagemap` (bit 63: present; readable for one's own process).
    fn mapped_pages(bytes: &[u8]) -> (usize, usize) {
        use std::os::unix::fs::FileExt;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let kib: usize = smaps
            .lines()
            .find_map(|l| l.strip_prefix("KernelPageSize:"))
            .and_then(|v| v.trim().strip_suffix(" kB"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let page = kib * 1024;
        let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        let start = bytes.as_ptr() as usize / page;
        let end = (bytes.as_ptr() as usize + bytes.len()).div_ceil(page);
        let present = (start..end)
            .filter(|p| {
                let mut entry = [0u8; 8];
                pagemap.read_exact_at(&mut entry, (p * 8) as u64).unwrap();
                u64::from_le_bytes(entry) >> 63 == 1
            })
            .count();
        (present, end - start)
    }

    const PROBE_ENV: &str = "AWSCNI_LIMITS_PAGE_PROBE";

    /// The point of the index, measured: in a fresh process, `lookup` + `source` leave a few
    /// 64 KiB fault-around blocks of the ≈690 KB table mapped (the header's, the row's, and any
    /// the neighbouring `.rodata` pulls in), not all of it as a full line split does.
    /// Runs itself in a child process (this test binary, filtered to this test), because other
    /// tests in this process parse the whole table.
    #[test]
    fn cold_lookup_maps_few_pages_of_the_table() {
        const NAME: &str = "table::tests::cold_lookup_maps_few_pages_of_the_table";
        if std::env::var_os(PROBE_ENV).is_some() {
            let (before, total) = mapped_pages(DATA.as_bytes());
            let t = lookup("m5.large").unwrap();
            assert_eq!(t.name, "m5.large");
            assert!(lookup("m5.lrage").is_none());
            assert_eq!(source().kind, "moto");
            assert!(
                TABLE.get().is_none(),
                "the full table must not have been parsed"
            );
            let (after, _) = mapped_pages(DATA.as_bytes());
            let (index, index_total) = mapped_pages(ROW_INDEX);
            println!(
                "table pages mapped: {before} before, {after} after, of {total}; \
                 index pages mapped: {index} of {index_total}"
            );
            // Measured on 4 KiB pages with the default 64 KiB fault-around: 29–45 of 173 pages
            // (the row's block, plus blocks shared with the neighbouring `.rodata` at both
            // ends: the index follows the table). A full scan maps all of them. The bound is
            // loose on purpose: fault-around size and large folios vary with the kernel.
            assert!(after < total / 2, "{after} of {total} pages mapped");
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(PROBE_ENV, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("table pages mapped"),
            "the probe did not run: {text}"
        );
        println!("{text}");
    }

    #[test]
    fn damaged_index_is_unusable_not_a_panic() {
        let text = "{\n\"count\":2,\n\"types\":[\n{\"name\":\"a\"},\n{\"name\":\"b\"}\n]}";
        let good = build_script::build_row_index(text).unwrap();
        assert!(RowIndex::new(&good, text).is_some());
        // Empty index (what build.rs writes for an unexpected layout), another text, another
        // magic, a count beyond the bytes present.
        assert!(RowIndex::new(&[], text).is_none());
        assert!(RowIndex::new(&good, &text[1..]).is_none());
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(RowIndex::new(&bad, text).is_none());
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(RowIndex::new(&bad, text).is_none());
        // Name or row offsets out of bounds, or a row slice not on a char boundary.
        for (at, value) in [
            (12, 1000),
            (16, 1000),
            (20, 1000),
            (24, 1000),
            (20, u32::MAX),
        ] {
            let mut bad = good.clone();
            bad[at..at + 4].copy_from_slice(&u32::to_le_bytes(value));
            let view = RowIndex::new(&bad, text).unwrap();
            let found = view.find("a").and_then(|r| view.row(r?));
            assert_eq!(found, None, "field at {at} = {value}");
        }
        let multibyte = "{\n\"count\":1,\n\"types\":[\n{\"name\":\"a\",\"v\":\"é\"}\n]}";
        let mut bad = build_script::build_row_index(multibyte).unwrap();
        let row_start = multibyte.find("{\"name").unwrap();
        let len = u32::try_from(multibyte.find('é').unwrap() + 1 - row_start).unwrap();
        bad[24..28].copy_from_slice(&len.to_le_bytes());
        let view = RowIndex::new(&bad, multibyte).unwrap();
        assert_eq!(view.row(0), None);
    }
}
