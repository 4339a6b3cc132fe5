//! The committed instance-type table, and the generator <-> parser contract.
#![allow(clippy::unwrap_used)]

use awscni_limits::{Hypervisor, Table, TableError, all, check_builtin, close_matches, lookup};
use std::path::Path;
use std::process::Command;

#[test]
fn builtin_table_parses_and_is_complete() {
    assert_eq!(check_builtin().unwrap(), all().len());
    // moto 5.2.x knows 1,395 types; a regeneration may add some but never lose most.
    assert!(all().len() >= 1300, "only {} types", all().len());
    let src = awscni_limits::source();
    assert_eq!(src.kind, "moto");
    assert!(!src.version.is_empty(), "moto version must be recorded");
    assert_eq!(src.sha256.len(), 64);
}

#[test]
fn sorted_unique_and_lookup_finds_every_type() {
    for w in all().windows(2) {
        assert!(w[0].name < w[1].name, "{} !< {}", w[0].name, w[1].name);
    }
    for t in all() {
        assert_eq!(lookup(&t.name).unwrap(), t);
    }
    assert!(lookup("m5.LARGE").is_none());
    assert!(lookup("").is_none());
    assert!(lookup("m5.large ").is_none());
}

#[test]
fn every_row_is_consistent() {
    for t in all() {
        let card = t
            .default_card()
            .unwrap_or_else(|| panic!("{}: default card missing", t.name));
        assert_eq!(card.max_enis, t.default_card_enis());
        assert!(t.default_card_enis() >= 1, "{}", t.name);
        assert!(t.ipv4_per_eni >= 1, "{}", t.name);
        assert!(t.default_vcpus >= 1, "{}", t.name);
        assert_eq!(
            t.network_cards.iter().map(|c| c.max_enis).sum::<u32>(),
            t.max_enis,
            "{}: instance-wide ENIs = sum over cards",
            t.name
        );
        assert_eq!(
            t.network_cards.len(),
            t.max_network_cards as usize,
            "{}",
            t.name
        );
        // Bare metal reports no hypervisor.
        if t.bare_metal {
            assert_eq!(t.hypervisor, None, "{}", t.name);
        }
    }
}

#[test]
fn table_covers_the_interesting_kinds() {
    let multi = all().iter().filter(|t| t.network_cards.len() > 1).count();
    let metal = all().iter().filter(|t| t.bare_metal).count();
    let xen = all()
        .iter()
        .filter(|t| t.hypervisor == Some(Hypervisor::Xen))
        .count();
    assert!(multi >= 50, "multi-card types: {multi}");
    assert!(metal >= 100, "bare-metal types: {metal}");
    assert!(xen >= 50, "xen types: {xen}");
}

#[test]
fn close_matches_suggest_neighbours() {
    assert_eq!(close_matches("m5.lrage", 3).first(), Some(&"m5.large"));
    assert!(
        close_matches("m5.huge", 5)
            .iter()
            .all(|n| n.starts_with("m5."))
    );
    assert!(close_matches("zzzzzzzzzzzzzzzz", 5).is_empty());
}

#[test]
fn table_parse_rejects_bad_files() {
    assert!(matches!(Table::parse("{"), Err(TableError::Json(_))));
    let row = |n: &str| {
        format!(
            r#"{{"name":"{n}","hypervisor":"nitro","bare_metal":false,"default_vcpus":2,"max_enis":3,"ipv4_per_eni":10,"ipv6_per_eni":10,"ipv6_supported":true,"network_cards":[{{"index":0,"max_enis":3}}]}}"#
        )
    };
    let file = |v: u32, count: usize, rows: &[&str]| {
        let rows: Vec<String> = rows.iter().map(|n| row(n)).collect();
        format!(
            r#"{{"format_version":{v},"source":{{"kind":"t","name":"t"}},"count":{count},"types":[{}]}}"#,
            rows.join(",")
        )
    };
    let t = Table::parse(&file(1, 2, &["a.x", "b.x"])).unwrap();
    assert_eq!(t.lookup("b.x").unwrap().default_card_enis(), 3);
    assert!(matches!(
        Table::parse(&file(2, 2, &["a.x", "b.x"])),
        Err(TableError::Version(2))
    ));
    assert!(matches!(
        Table::parse(&file(1, 3, &["a.x", "b.x"])),
        Err(TableError::Count { .. })
    ));
    assert!(matches!(
        Table::parse(&file(1, 2, &["b.x", "a.x"])),
        Err(TableError::Unsorted(n)) if n == "a.x"
    ));
    assert!(matches!(
        Table::parse(&file(1, 2, &["a.x", "a.x"])),
        Err(TableError::Unsorted(_))
    ));
    // Unknown hypervisor strings are rejected, not silently mapped.
    let bad = file(1, 1, &["a.x"]).replace("\"nitro\"", "\"kvm\"");
    assert!(matches!(Table::parse(&bad), Err(TableError::Json(_))));
}

/// Runs scripts/gen-instance-types.py on a small moto-shaped fixture: the output must parse
/// with `Table::parse`, be sorted, carry the recorded version, and be byte-identical on a rerun.
#[test]
fn generator_output_parses_and_is_deterministic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("scripts/gen-instance-types.py");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("instance_types.json");
    // Keys deliberately unsorted; one multi-card type, one bare-metal type.
    std::fs::write(
        &src,
        r#"{
 "z9.metal": {"InstanceType":"z9.metal","BareMetal":true,"CurrentGeneration":true,
   "VCpuInfo":{"DefaultVCpus":96},"MemoryInfo":{"SizeInMiB":1024},
   "ProcessorInfo":{"SupportedArchitectures":["x86_64"]},
   "NetworkInfo":{"DefaultNetworkCardIndex":0,"Ipv4AddressesPerInterface":50,
     "Ipv6AddressesPerInterface":50,"Ipv6Supported":true,"MaximumNetworkCards":1,
     "MaximumNetworkInterfaces":15,"EnaSupport":"required","NetworkPerformance":"25 Gigabit",
     "NetworkCards":[{"NetworkCardIndex":0,"MaximumNetworkInterfaces":15}]}},
 "a1.multi": {"InstanceType":"a1.multi","Hypervisor":"nitro","BareMetal":false,
   "VCpuInfo":{"DefaultVCpus":128,"DefaultCores":64,"DefaultThreadsPerCore":2},
   "MemoryInfo":{"SizeInMiB":2048},
   "NetworkInfo":{"DefaultNetworkCardIndex":0,"Ipv4AddressesPerInterface":50,
     "Ipv6AddressesPerInterface":50,"Ipv6Supported":true,"MaximumNetworkCards":2,
     "MaximumNetworkInterfaces":16,
     "NetworkCards":[{"NetworkCardIndex":1,"MaximumNetworkInterfaces":8},
                     {"NetworkCardIndex":0,"MaximumNetworkInterfaces":8}]}}
}"#,
    )
    .unwrap();
    let run = |out: &Path| {
        let o = Command::new("python3")
            .arg(&script)
            .arg("--moto-json")
            .arg(&src)
            .args(["--source-version", "9.9.9", "-o"])
            .arg(out)
            .output()
            .expect("python3 must be installed to run the generator");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(out).unwrap()
    };
    let a = run(&dir.path().join("a.json"));
    let b = run(&dir.path().join("b.json"));
    assert_eq!(a, b, "generator output must be deterministic");
    let t = Table::parse(&a).unwrap();
    let names: Vec<&str> = t.all().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a1.multi", "z9.metal"]);
    assert_eq!(t.source().version, "9.9.9");
    let multi = t.lookup("a1.multi").unwrap();
    assert_eq!(multi.network_cards[0].index, 0, "cards sorted by index");
    assert_eq!(multi.default_card_enis(), 8);
    let metal = t.lookup("z9.metal").unwrap();
    assert!(metal.bare_metal && metal.hypervisor.is_none());

    // Malformed input: clear error naming the type and field, non-zero exit.
    std::fs::write(
        &src,
        r#"{"x.y":{"InstanceType":"x.y","VCpuInfo":{"DefaultVCpus":2},"NetworkInfo":{}}}"#,
    )
    .unwrap();
    let o = Command::new("python3")
        .arg(&script)
        .arg("--moto-json")
        .arg(&src)
        .args(["-o", "-"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("x.y") && err.contains("NetworkCards"), "{err}");
}

#[test]
fn eni_max_pods_txt_has_header_and_every_type() {
    let opts = awscni_limits::Options::default();
    let txt = awscni_limits::eni_max_pods_txt(&opts);
    assert!(txt.starts_with("# "));
    assert!(txt.contains(&awscni_limits::source().version));
    let rows = awscni_limits::parse_eni_max_pods(&txt).unwrap();
    assert_eq!(rows.len(), all().len());
    assert!(rows.contains(&("p4d.24xlarge".to_string(), 737)));
}
