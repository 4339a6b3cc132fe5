//! The max-pods formula against the committed table and synthetic types.
#![allow(clippy::unwrap_used)]

use awscni_limits::{
    CniVersion, Hypervisor, InstanceType, NetworkCard, Options, PdNote, PdPolicy, compute,
    eni_max_pods_lines, lookup, node_max_pods, parse_eni_max_pods,
};

/// A synthetic type: `cards` = ENIs per card, index = position.
fn ty(
    name: &str,
    hypervisor: Option<Hypervisor>,
    bare_metal: bool,
    vcpus: u32,
    cards: &[u32],
    default_card: u32,
    ipv4: u32,
) -> InstanceType {
    InstanceType {
        name: name.into(),
        hypervisor,
        bare_metal,
        current_generation: true,
        default_vcpus: vcpus,
        default_cores: 0,
        default_threads_per_core: 0,
        memory_mib: 0,
        architectures: vec!["x86_64".into()],
        max_enis: cards.iter().sum(),
        max_network_cards: u32::try_from(cards.len()).unwrap(),
        default_network_card_index: default_card,
        ipv4_per_eni: ipv4,
        ipv6_per_eni: ipv4,
        ipv6_supported: true,
        ena_support: "required".into(),
        efa_supported: false,
        network_performance: String::new(),
        network_cards: cards
            .iter()
            .enumerate()
            .map(|(i, &n)| NetworkCard {
                index: u32::try_from(i).unwrap(),
                max_enis: n,
                network_performance: String::new(),
            })
            .collect(),
    }
}

const NITRO: Option<Hypervisor> = Some(Hypervisor::Nitro);
const XEN: Option<Hypervisor> = Some(Hypervisor::Xen);

fn calc() -> Options {
    Options {
        pd_policy: PdPolicy::Calculator,
        ..Options::default()
    }
}

/// One row of reference §5: type, vcpus, cards, instance ENIs, default-card ENIs, IPv4/ENI,
/// nitro, bare metal, SIP, PD uncapped (daemon rule), custom networking, calculator
/// recommendation SIP, calculator recommendation PD.
type Row = (
    &'static str,
    u32,
    usize,
    u32,
    u32,
    u32,
    bool,
    bool,
    u32,
    u32,
    u32,
    u32,
    u32,
);

/// max-pods.md §5, every column, computed from the committed table.
#[test]
fn reference_examples_from_table() {
    // type, vcpus, cards, instance ENIs, default-card ENIs, IPv4/ENI, nitro, bare metal,
    // SIP, PD uncapped (daemon rule), custom networking, calculator rec SIP, calculator rec PD
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("t3.micro",      2,  1,  2,  2,  2, true,  false,   4,    34,   3,   4,  34),
        ("t3.medium",     2,  1,  3,  3,  6, true,  false,  17,   242,  12,  17, 110),
        ("m5.large",      2,  1,  3,  3, 10, true,  false,  29,   434,  20,  29, 110),
        ("m5.xlarge",     4,  1,  4,  4, 15, true,  false,  58,   898,  44,  58, 110),
        ("m5.4xlarge",   16,  1,  8,  8, 30, true,  false, 234,  3714, 205, 110, 110),
        ("c5.18xlarge",  72,  1, 15, 15, 50, true,  false, 737, 11762, 688, 250, 250),
        ("m5.metal",     96,  1, 15, 15, 50, false, true,  737, 11762, 688, 250, 250),
        ("c6in.32xlarge",128, 2, 16,  8, 50, true,  false, 394,  6274, 345, 250, 250),
        ("trn1.32xlarge",128, 8, 40,  5, 50, true,  false, 247,  3922, 198, 247, 250),
        ("p5.48xlarge",  192,32, 64,  2, 50, true,  false, 100,  1570,  51, 100, 250),
        ("p4d.24xlarge",  96, 4, 60, 15, 50, true,  false, 737, 11762, 688, 250, 250),
    ];
    for &(name, vcpus, cards, inst, enis, ipv4, nitro, bm, sip, pd, cn, rec_sip, rec_pd) in rows {
        let it = lookup(name).unwrap_or_else(|| panic!("{name} missing from table"));
        assert_eq!(it.default_vcpus, vcpus, "{name} vcpus");
        assert_eq!(it.network_cards.len(), cards, "{name} cards");
        assert_eq!(it.max_enis, inst, "{name} instance-wide ENIs");
        assert_eq!(it.default_card_enis(), enis, "{name} default-card ENIs");
        assert_eq!(it.ipv4_per_eni, ipv4, "{name} ipv4/eni");
        assert_eq!(it.is_nitro(), nitro, "{name} nitro");
        assert_eq!(it.bare_metal, bm, "{name} bare metal");

        let r = compute(it, &calc());
        assert_eq!(r.max_pods, sip, "{name} SIP");
        assert_eq!(r.recommended, rec_sip, "{name} recommended SIP");

        let d = node_max_pods(it, None, 0, true, false, false);
        assert_eq!(d.max_pods, pd, "{name} PD (daemon rule)");
        assert!(d.prefix_delegation);

        let c = compute(
            it,
            &Options {
                custom_networking: true,
                ..calc()
            },
        );
        assert_eq!(c.max_pods, cn, "{name} custom networking");

        let p = compute(
            it,
            &Options {
                prefix_delegation: true,
                ..calc()
            },
        );
        assert_eq!(p.recommended, rec_pd, "{name} calculator PD recommendation");
        // The calculator falls back to SIP on bare metal (no hypervisor reported).
        assert_eq!(p.prefix_delegation, !bm, "{name} calculator PD applied");
    }
}

#[test]
fn worked_lines_m5_large() {
    let it = lookup("m5.large").unwrap();
    let r = |o: Options| compute(it, &o).max_pods;
    assert_eq!(r(calc()), 3 * (10 - 1) + 2);
    assert_eq!(
        r(Options {
            max_eni: Some(2),
            ..calc()
        }),
        2 * 9 + 2
    );
    // The instance-wide ENI count would give 3138 on p5.48xlarge; the default card gives 100.
    let p5 = lookup("p5.48xlarge").unwrap();
    assert_eq!(p5.max_enis * 49 + 2, 3138);
    assert_eq!(compute(p5, &calc()).max_pods, 100);
}

#[test]
fn single_card() {
    let it = ty("x1.test", NITRO, false, 8, &[4], 0, 15);
    let r = compute(&it, &calc());
    assert_eq!(
        (r.enis, r.usable_enis, r.per_eni, r.max_pods),
        (4, 4, 14, 58)
    );
    assert_eq!(r.default_card_enis, r.instance_enis);
}

#[test]
fn multi_card_uses_default_card_only() {
    // Default card 0 with 3 ENIs, other cards larger: only card 0 counts.
    let it = ty("x2.test", NITRO, false, 64, &[3, 10, 10], 0, 20);
    let r = compute(&it, &calc());
    assert_eq!(r.default_card_enis, 3);
    assert_eq!(r.instance_enis, 23);
    assert_eq!(r.max_pods, 3 * 19 + 2);
    // The default index is honoured, not assumed to be 0.
    let it = ty("x3.test", NITRO, false, 64, &[3, 10, 7], 2, 20);
    assert_eq!(compute(&it, &calc()).max_pods, 7 * 19 + 2);
    assert!(
        compute(&it, &calc())
            .explain()
            .contains("instance-wide 20 is not used")
    );
}

#[test]
fn cards_missing_falls_back_to_instance_wide() {
    let mut it = ty("x4.test", NITRO, false, 2, &[3], 0, 10);
    it.network_cards.clear();
    assert_eq!(it.default_card_enis(), 3);
    // A card list that lacks the default index: smallest card, never the sum.
    let mut it = ty("x5.test", NITRO, false, 2, &[4, 2], 0, 10);
    it.default_network_card_index = 9;
    assert_eq!(it.default_card_enis(), 2);
}

#[test]
fn bare_metal_prefix_delegation_rules() {
    let it = ty("x9.metal", None, true, 96, &[15], 0, 50);
    assert!(!it.is_nitro());
    assert!(it.supports_prefix_delegation());
    let pd = Options {
        prefix_delegation: true,
        ..Options::default()
    };
    // Daemon rule: allowed.
    let d = compute(&it, &pd);
    assert!(d.prefix_delegation);
    assert_eq!(d.max_pods, 15 * 49 * 16 + 2);
    assert_eq!(d.pd_note, None);
    // Calculator rule: SIP with a note.
    let c = compute(
        &it,
        &Options {
            pd_policy: PdPolicy::Calculator,
            ..pd
        },
    );
    assert!(!c.prefix_delegation);
    assert_eq!(c.max_pods, 15 * 49 + 2);
    assert_eq!(c.pd_note, Some(PdNote::NotNitro));
    assert!(PdNote::NotNitro.message(&it).contains("bare-metal"));
}

#[test]
fn prefix_delegation_nitro_only() {
    let xen = ty("m4.test", XEN, false, 2, &[2], 0, 10);
    for policy in [PdPolicy::Daemon, PdPolicy::Calculator] {
        let r = compute(
            &xen,
            &Options {
                prefix_delegation: true,
                pd_policy: policy,
                ..Options::default()
            },
        );
        assert!(!r.prefix_delegation, "{policy:?}");
        assert_eq!(r.max_pods, 2 * 9 + 2);
        assert_eq!(r.pd_note, Some(PdNote::NotNitro));
        assert!(PdNote::NotNitro.message(&xen).contains("xen"));
    }
    let nitro = ty("m5.test", NITRO, false, 2, &[3], 0, 10);
    let on = |v: &str| {
        compute(
            &nitro,
            &Options {
                prefix_delegation: true,
                cni_version: Some(CniVersion::parse(v).unwrap()),
                ..calc()
            },
        )
    };
    assert_eq!(on("1.9.0").max_pods, 434);
    assert_eq!(on("v1.19.2-eksbuild.1").max_pods, 434);
    assert_eq!(on("1.8.0").max_pods, 29);
    assert_eq!(on("1.8.0").pd_note, Some(PdNote::CniVersionTooOld));
    assert_eq!(on("1.7.10").max_pods, 29);
    // Without PD requested there is never a note.
    assert_eq!(compute(&xen, &calc()).pd_note, None);
}

#[test]
fn custom_networking_with_prefix_delegation() {
    let it = lookup("m5.large").unwrap();
    let r = compute(
        it,
        &Options {
            custom_networking: true,
            prefix_delegation: true,
            ..calc()
        },
    );
    assert_eq!(r.usable_enis, 2);
    assert_eq!(r.max_pods, 2 * 9 * 16 + 2);
    assert_eq!(r.recommended, 110);
}

#[test]
fn max_eni() {
    let it = ty("x.test", NITRO, false, 4, &[4], 0, 15);
    let m = |n: Option<u32>| {
        compute(
            &it,
            &Options {
                max_eni: n,
                ..calc()
            },
        )
    };
    assert_eq!(m(Some(1)).max_pods, 14 + 2);
    assert_eq!(m(Some(3)).max_pods, 3 * 14 + 2);
    assert_eq!(m(Some(4)).max_pods, 58);
    assert_eq!(m(Some(40)).max_pods, 58, "larger than the card: no effect");
    assert_eq!(
        m(Some(0)).max_pods,
        58,
        "0 means unset, like upstream's MAX_ENI < 1"
    );
    assert_eq!(m(Some(0)).max_eni, None);
    // MAX_ENI applies before the custom-networking reservation.
    let r = compute(
        &it,
        &Options {
            max_eni: Some(2),
            custom_networking: true,
            ..calc()
        },
    );
    assert_eq!(r.max_pods, 14 + 2);
}

#[test]
fn unmanaged_and_trunk_reservations() {
    let it = lookup("c5.18xlarge").unwrap();
    let r = node_max_pods(it, None, 2, false, true, true);
    assert_eq!(r.usable_enis, 15 - 2 - 1 - 1);
    assert_eq!(r.max_pods, 11 * 49 + 2);
    assert_eq!(
        (r.unmanaged_enis, r.custom_networking_enis, r.trunk_enis),
        (2, 1, 1)
    );
    let e = r.explain();
    assert!(e.contains("unmanaged ENIs    −2"), "{e}");
    assert!(e.contains("trunk ENI"), "{e}");
    assert!(e.contains("custom networking"), "{e}");
}

#[test]
fn reservations_saturate_at_host_network_pods() {
    let it = lookup("t3.micro").unwrap();
    let r = node_max_pods(it, Some(1), 5, true, true, true);
    assert_eq!(r.usable_enis, 0);
    assert_eq!(r.max_pods, 2);
    // Degenerate data never wraps.
    let z = ty("z.test", NITRO, false, 1, &[0], 0, 0);
    assert_eq!(compute(&z, &calc()).max_pods, 2);
}

#[test]
fn caps() {
    let at = |vcpus: u32, enis: u32| {
        let it = ty("cap.test", NITRO, false, vcpus, &[enis], 0, 50);
        compute(&it, &calc())
    };
    // ≤ 30 vCPUs: 110; > 30: 250; below the cap the raw value passes through.
    assert_eq!((at(30, 8).cap, at(30, 8).recommended), (110, 110));
    assert_eq!((at(31, 8).cap, at(31, 8).recommended), (250, 250));
    assert_eq!(at(31, 2).recommended, 2 * 49 + 2);
    assert_eq!(at(30, 8).max_pods, 8 * 49 + 2, "raw value is uncapped");
    assert_eq!(awscni_limits::recommended_cap(0), 110);
}

#[test]
fn eni_max_pods_file_roundtrip() {
    let types = [
        ty("b.large", NITRO, false, 2, &[3], 0, 10),
        ty("a.large", XEN, false, 2, &[2], 0, 4),
    ];
    let lines = eni_max_pods_lines(&types, &calc());
    assert_eq!(lines, vec!["a.large 8", "b.large 29"]);
    let text = format!(
        "# header\n\n  {}  \nbogus line with four\n{}\n",
        lines[0], lines[1]
    );
    assert_eq!(
        parse_eni_max_pods(&text).unwrap(),
        vec![("a.large".to_string(), 8), ("b.large".to_string(), 29)]
    );
    let err = parse_eni_max_pods("m5.large twenty\n").unwrap_err();
    assert!(err.contains("m5.large") && err.contains("twenty"), "{err}");
}

#[test]
fn cni_version_parsing() {
    let v = |s: &str| CniVersion::parse(s);
    assert_eq!(v("1.19.2").unwrap().to_string(), "1.19.2");
    assert_eq!(v("v1.9").unwrap().to_string(), "1.9.0");
    assert_eq!(v("1.10.0+meta").unwrap().minor, 10);
    assert!(v("1.10.0").unwrap().supports_prefix_delegation());
    assert!(!v("1.8.0").unwrap().supports_prefix_delegation());
    assert!(v("1.8.1").unwrap().supports_prefix_delegation());
    for bad in ["", "1", "x.y.z", "1.2.3.4", "1.-2"] {
        let e = v(bad).unwrap_err();
        assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
    }
}

#[test]
fn trunk_capability_heuristic() {
    let cap = |n: &str| lookup(n).unwrap().likely_trunk_capable();
    assert!(cap("m5.large"));
    assert!(
        cap("m5.metal"),
        "bare metal has no hypervisor but supports trunking"
    );
    assert!(!cap("t3.medium"), "no t family");
    assert!(!cap("m4.large"), "xen");
}
