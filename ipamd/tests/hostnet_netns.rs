//! hostnet in real network namespaces (root only): veth pairs stand in for ENIs; results are read
//! back with `ip -j` and `iptables-save` *inside* the namespace. Every namespace is named
//! `ipdt-<pid>-<n>`, removed by an RAII guard, and stale ones from dead test processes are removed
//! at start. Nothing touches the root namespace.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_cni::netlink::Netlink;
use aws_cni::netns::NetNs;
use ipamd::eni::LinkProbe;
use ipamd::hostnet::{
    EniHost, NetlinkLinkProbe, NodeSettings, PodRule, ProcSysctl, RandomizeSnat, SnatSettings,
    SystemRunner, reapply_pod_rules, reconcile_iptables, setup_eni, setup_node, teardown_eni,
};
use serde_json::Value;

const PREFIX: &str = "ipdt-";
const PRIMARY_MAC: &str = "0e:00:00:00:0a:01";
const ENI_MAC: &str = "0e:00:00:00:0a:02";

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn clean_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let list = sh(&["ip", "netns", "list"]);
        for line in list.lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or("");
            let alive = pid.parse::<u32>().is_ok_and(|p| {
                p == std::process::id() || Path::new(&format!("/proc/{p}")).exists()
            });
            if !alive {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    });
}

/// A namespace of ours, deleted on drop (also when the test panics).
struct Ns {
    name: String,
}

impl Ns {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        clean_stale();
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        // Two veth pairs: "ipdte0" is the primary ENI, "ipdte1" a secondary ENI.
        for (dev, peer, mac) in [
            ("ipdte0", "ipdtp0", PRIMARY_MAC),
            ("ipdte1", "ipdtp1", ENI_MAC),
        ] {
            ns.ip(&[
                "link", "add", dev, "address", mac, "type", "veth", "peer", "name", peer,
            ]);
            ns.ip(&["link", "set", peer, "up"]);
        }
        ns.ip(&["link", "set", "ipdte0", "up"]);
        ns.ip(&["addr", "add", "10.0.1.10/24", "dev", "ipdte0"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    fn ipj(&self, args: &[&str]) -> Vec<Value> {
        let mut v = vec!["-j"];
        v.extend_from_slice(args);
        serde_json::from_str(&self.ip(&v)).unwrap_or_default()
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Run `f` on a thread inside the namespace, after proving we are in it (a link that only
    /// exists there is visible in /proc/sys): sysctl writes can then never hit the root namespace.
    fn run<T: Send>(&self, f: impl FnOnce(&mut Netlink) -> T + Send) -> T {
        let h = NetNs::open(format!("/run/netns/{}", self.name)).unwrap();
        h.run_in(|| {
            assert!(
                Path::new("/proc/sys/net/ipv4/conf/ipdte1").exists(),
                "not inside the test namespace"
            );
            let mut nl = Netlink::open().unwrap();
            f(&mut nl)
        })
        .unwrap()
    }

    fn runner(&self) -> SystemRunner {
        SystemRunner {
            prefix: vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                self.name.clone(),
            ],
        }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn node_settings() -> NodeSettings {
    NodeSettings {
        primary_mac: PRIMARY_MAC.into(),
        mtu: 9001,
        connmark: 0x80,
        node_port_support: true,
        external_snat: false,
        external_service_cidrs: vec!["203.0.113.0/24".parse().unwrap()],
        link_attempts: 2,
        link_interval: Duration::from_millis(10),
    }
}

fn eni_host() -> EniHost {
    EniHost {
        mac: ENI_MAC.into(),
        primary_ip: Ipv4Addr::new(10, 0, 70, 10),
        subnet: "10.0.64.0/19".parse().unwrap(),
        table: 2,
        mtu: 9001,
        link_attempts: 2,
        link_interval: Duration::from_millis(10),
    }
}

fn rules(ns: &Ns) -> Vec<Value> {
    ns.ipj(&["rule", "show"])
}

fn rules_at(ns: &Ns, prio: u64) -> Vec<Value> {
    rules(ns)
        .into_iter()
        .filter(|r| r["priority"].as_u64() == Some(prio))
        .collect()
}

#[test]
fn node_and_eni_setup_is_complete_and_idempotent() {
    let ns = Ns::new();
    // Leftovers a previous run or the OS may have left: a foreign address on the ENI, a rule for
    // the ENI address pointing at the wrong table, an old-mark fwmark rule, a stale
    // external-service rule.
    ns.ip(&["addr", "add", "10.9.9.9/24", "dev", "ipdte1"]);
    ns.ip(&[
        "rule",
        "add",
        "from",
        "10.0.70.10",
        "lookup",
        "7",
        "prio",
        "32765",
    ]);
    ns.ip(&[
        "rule",
        "add",
        "fwmark",
        "0x40/0x40",
        "lookup",
        "main",
        "prio",
        "1024",
    ]);
    ns.ip(&[
        "rule",
        "add",
        "to",
        "198.51.100.0/24",
        "lookup",
        "main",
        "prio",
        "1535",
    ]);

    let (report, name) = ns.run(|nl| {
        let r = setup_node(nl, &ProcSysctl, &node_settings()).unwrap();
        let n = setup_eni(nl, &eni_host()).unwrap();
        (r, n)
    });
    assert_eq!(report.primary_if, "ipdte0");
    assert!(
        report.enabled_ip_forward,
        "a fresh namespace has ip_forward=0"
    );
    assert_eq!(name, "ipdte1");

    // Sysctls, inside the namespace.
    assert_eq!(
        ns.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(),
        "1"
    );
    assert_eq!(
        ns.exec(&["cat", "/proc/sys/net/ipv4/conf/ipdte0/rp_filter"])
            .trim(),
        "2"
    );
    // Links.
    for dev in ["ipdte0", "ipdte1"] {
        let l = &ns.ipj(&["link", "show", dev])[0];
        assert_eq!(l["mtu"].as_u64(), Some(9001), "{dev}");
    }
    let l = &ns.ipj(&["link", "show", "ipdte1"])[0];
    assert!(l["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    // Exactly the ENI's primary address.
    let a = &ns.ipj(&["-4", "addr", "show", "dev", "ipdte1"])[0]["addr_info"];
    let addrs: Vec<String> = a
        .as_array()
        .unwrap()
        .iter()
        .map(|x| format!("{}/{}", x["local"].as_str().unwrap(), x["prefixlen"]))
        .collect();
    assert_eq!(addrs, vec!["10.0.70.10/19"]);
    // Table 2: gateway host route and default route.
    let t2 = ns.ipj(&["route", "show", "table", "2"]);
    assert_eq!(t2.len(), 2, "{t2:?}");
    assert!(
        t2.iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "10.0.64.1" && r["dev"] == "ipdte1")
    );
    assert!(
        t2.iter()
            .any(|r| r["dst"] == "10.0.64.1" && r["scope"] == "link" && r["dev"] == "ipdte1")
    );
    // The connected route is gone from main.
    let main = ns.ipj(&["route", "show", "table", "main"]);
    assert!(!main.iter().any(|r| r["dev"] == "ipdte1"), "{main:?}");
    // Rules.
    let eni_rules = rules_at(&ns, 32765);
    assert_eq!(eni_rules.len(), 1, "{eni_rules:?}");
    assert_eq!(eni_rules[0]["src"], "10.0.70.10");
    assert_eq!(eni_rules[0]["table"], "2");
    let fw = rules_at(&ns, 1024);
    assert_eq!(fw.len(), 1, "{fw:?}");
    assert_eq!(fw[0]["fwmark"], "0x80");
    assert_eq!(fw[0]["table"], "main");
    let ext = rules_at(&ns, 1535);
    assert_eq!(ext.len(), 1, "{ext:?}");
    assert_eq!(ext[0]["dst"], "203.0.113.0");

    // Second run: nothing changes.
    let before = (
        ns.ip(&["rule"]),
        ns.ip(&["route", "show", "table", "all"]),
        ns.ip(&["addr"]),
    );
    let report2 = ns.run(|nl| {
        let r = setup_node(nl, &ProcSysctl, &node_settings()).unwrap();
        setup_eni(nl, &eni_host()).unwrap();
        r
    });
    assert!(!report2.enabled_ip_forward);
    let after = (
        ns.ip(&["rule"]),
        ns.ip(&["route", "show", "table", "all"]),
        ns.ip(&["addr"]),
    );
    assert_eq!(before, after);

    // Something (systemd-networkd, a person) wipes the ENI's rule and routes: a re-run repairs.
    ns.ip(&["rule", "del", "prio", "32765"]);
    ns.ip(&["route", "flush", "table", "2"]);
    ns.run(|nl| setup_eni(nl, &eni_host()).unwrap());
    assert_eq!(rules_at(&ns, 32765).len(), 1);
    assert_eq!(ns.ipj(&["route", "show", "table", "2"]).len(), 2);

    // Removal of the ENI.
    let n = ns.run(|nl| teardown_eni(nl, Ipv4Addr::new(10, 0, 70, 10), 2).unwrap());
    assert!(n >= 3, "rule + 2 routes, got {n}");
    assert!(rules_at(&ns, 32765).is_empty());
    assert!(ns.ipj(&["route", "show", "table", "2"]).is_empty());
}

#[test]
fn fwmark_rule_absent_with_external_snat_and_no_node_port() {
    let ns = Ns::new();
    let mut st = node_settings();
    ns.run(|nl| setup_node(nl, &ProcSysctl, &st).unwrap());
    assert_eq!(rules_at(&ns, 1024).len(), 1);
    st.external_snat = true;
    st.node_port_support = false;
    st.external_service_cidrs.clear();
    ns.run(|nl| setup_node(nl, &ProcSysctl, &st).unwrap());
    assert!(rules_at(&ns, 1024).is_empty());
    assert!(rules_at(&ns, 1535).is_empty());
}

#[test]
fn link_probe_sees_links_by_mac() {
    let ns = Ns::new();
    let (a, b) = ns.run(|_| {
        (
            NetlinkLinkProbe.link_exists(ENI_MAC),
            NetlinkLinkProbe.link_exists("0e:00:00:00:0a:99"),
        )
    });
    assert!(a);
    assert!(!b);
}

#[test]
fn pod_rules_come_back_after_being_wiped() {
    let ns = Ns::new();
    let pods = [
        PodRule {
            ip: Ipv4Addr::new(10, 0, 70, 11),
            table: 2,
        },
        PodRule {
            ip: Ipv4Addr::new(10, 0, 1, 20),
            table: 254,
        },
    ];
    let r = ns.run(|nl| reapply_pod_rules(nl, &pods, false).unwrap());
    assert_eq!(r.added.len(), 3, "{r:?}");
    assert_eq!(rules_at(&ns, 512).len(), 2);
    let from = rules_at(&ns, 1536);
    assert_eq!(from.len(), 1);
    assert_eq!(from[0]["src"], "10.0.70.11");
    assert_eq!(from[0]["table"], "2");

    // Idempotent.
    let r = ns.run(|nl| reapply_pod_rules(nl, &pods, false).unwrap());
    assert!(r.added.is_empty() && r.removed.is_empty(), "{r:?}");

    // Wiped by hand: exactly the missing ones come back.
    ns.ip(&[
        "rule",
        "del",
        "from",
        "10.0.70.11",
        "lookup",
        "2",
        "prio",
        "1536",
    ]);
    ns.ip(&[
        "rule",
        "del",
        "to",
        "10.0.1.20",
        "lookup",
        "main",
        "prio",
        "512",
    ]);
    let r = ns.run(|nl| reapply_pod_rules(nl, &pods, false).unwrap());
    assert_eq!(r.added.len(), 2, "{r:?}");
    assert_eq!(rules_at(&ns, 512).len(), 2);
    assert_eq!(rules_at(&ns, 1536).len(), 1);

    // A duplicate/wrong-table from-rule is fixed; with prune, rules of unknown pods go.
    ns.ip(&[
        "rule",
        "add",
        "from",
        "10.0.70.11",
        "lookup",
        "3",
        "prio",
        "1536",
    ]);
    ns.ip(&[
        "rule",
        "add",
        "to",
        "10.0.70.99",
        "lookup",
        "main",
        "prio",
        "512",
    ]);
    let r = ns.run(|nl| reapply_pod_rules(nl, &pods, false).unwrap());
    assert_eq!(r.removed.len(), 1, "{r:?}");
    assert_eq!(
        rules_at(&ns, 512).len(),
        3,
        "no prune: unknown pod rule kept"
    );
    let r = ns.run(|nl| reapply_pod_rules(nl, &pods, true).unwrap());
    assert_eq!(r.removed.len(), 1, "{r:?}");
    assert_eq!(rules_at(&ns, 512).len(), 2);
    let from = rules_at(&ns, 1536);
    assert_eq!(from.len(), 1);
    assert_eq!(from[0]["table"], "2");
}

fn snat() -> SnatSettings {
    SnatSettings {
        external_snat: false,
        exclude_snat_cidrs: vec!["192.168.0.0/16".parse().unwrap()],
        randomize: RandomizeSnat::Prng,
        random_fully_supported: true,
        node_port_support: true,
        connmark: 0x80,
        veth_prefix: "eni".into(),
        primary_if: "ipdte0".into(),
        node_ip: Ipv4Addr::new(10, 0, 1, 10),
        vpc_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
    }
}

fn lines_with(save: &str, needle: &str) -> Vec<String> {
    save.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[test]
fn iptables_rules_converge_and_stale_ones_go() {
    let ns = Ns::new();
    let runner = ns.runner();
    let st = snat();
    let rep = reconcile_iptables(&runner, &st).unwrap();
    assert!(!rep.changes.is_empty());
    let save = ns.exec(&["iptables-save"]);
    let snat_rules = lines_with(&save, "-A AWS-SNAT-CHAIN-0");
    assert_eq!(
        snat_rules,
        vec![
            "-A AWS-SNAT-CHAIN-0 -d 192.168.0.0/16 -m comment --comment \"AWS SNAT CHAIN EXCLUSION\" -j RETURN",
            "-A AWS-SNAT-CHAIN-0 -d 10.0.0.0/16 -m comment --comment \"AWS SNAT CHAIN\" -j RETURN",
            "-A AWS-SNAT-CHAIN-0 ! -o vlan+ -m comment --comment \"AWS, SNAT\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source 10.0.1.10 --random-fully",
        ]
    );
    assert_eq!(
        lines_with(&save, "-A POSTROUTING"),
        vec!["-A POSTROUTING -m comment --comment \"AWS SNAT CHAIN\" -j AWS-SNAT-CHAIN-0"]
    );
    assert_eq!(lines_with(&save, "-A AWS-CONNMARK-CHAIN-0").len(), 3);
    let natpre = lines_with(
        &save,
        "-A PREROUTING -i eni+ -m comment --comment \"AWS, outbound",
    );
    assert_eq!(natpre.len(), 1);
    let pre: Vec<String> = lines_with(&save, "-A PREROUTING");
    assert_eq!(pre.len(), 5, "3 mangle + 2 nat: {pre:#?}");
    assert!(save.contains("-A PREROUTING -i ipdte0 -m comment --comment \"AWS, primary ENI\" -m addrtype --dst-type LOCAL --limit-iface-in -j CONNMARK --set-xmark 0x80/0x80"));

    // Converged: a second pass changes nothing.
    let rep = reconcile_iptables(&runner, &st).unwrap();
    assert_eq!(rep.changes, Vec::<String>::new());
    assert_eq!(
        ns.exec(&["iptables-save"])
            .lines()
            .filter(|l| l.starts_with("-A"))
            .count(),
        save.lines().filter(|l| l.starts_with("-A")).count()
    );

    // Stale: a CIDR no longer in the VPC, an old-format rule, a duplicate; and the restore rule
    // moved ahead of the jump. A foreign rule must survive.
    let ipt = |args: &[&str]| {
        let mut v = vec!["iptables", "-w"];
        v.extend_from_slice(args);
        ns.exec(&v)
    };
    ipt(&[
        "-t",
        "nat",
        "-I",
        "AWS-SNAT-CHAIN-0",
        "1",
        "-d",
        "172.16.0.0/12",
        "-m",
        "comment",
        "--comment",
        "AWS SNAT CHAIN",
        "-j",
        "RETURN",
    ]);
    ipt(&[
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-i",
        "eni+",
        "-m",
        "comment",
        "--comment",
        "AWS, outbound connections",
        "-m",
        "state",
        "--state",
        "NEW",
        "-j",
        "AWS-CONNMARK-CHAIN-0",
    ]);
    ipt(&[
        "-t",
        "nat",
        "-A",
        "AWS-CONNMARK-CHAIN-0",
        "-m",
        "comment",
        "--comment",
        "AWS, CONNMARK",
        "-j",
        "CONNMARK",
        "--set-xmark",
        "0x80/0x80",
    ]);
    ipt(&[
        "-t",
        "nat",
        "-D",
        "PREROUTING",
        "-i",
        "eni+",
        "-m",
        "comment",
        "--comment",
        "AWS, outbound connections",
        "-j",
        "AWS-CONNMARK-CHAIN-0",
    ]);
    ipt(&[
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-i",
        "eni+",
        "-m",
        "comment",
        "--comment",
        "AWS, outbound connections",
        "-j",
        "AWS-CONNMARK-CHAIN-0",
    ]);
    ipt(&[
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        "ipdte0",
        "-j",
        "MASQUERADE",
    ]);
    reconcile_iptables(&runner, &st).unwrap();
    let save2 = ns.exec(&["iptables-save"]);
    assert!(!save2.contains("172.16.0.0/12"));
    assert!(!save2.contains("--state NEW"));
    assert_eq!(
        lines_with(
            &save2,
            "-A AWS-CONNMARK-CHAIN-0 -m comment --comment \"AWS, CONNMARK\""
        )
        .len(),
        1,
        "duplicate final rule removed"
    );
    assert!(
        save2.contains("-A POSTROUTING -o ipdte0 -j MASQUERADE"),
        "foreign rule kept"
    );
    let nat_pre: Vec<String> = save2
        .split("*nat")
        .nth(1)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("-A PREROUTING"))
        .map(str::to_string)
        .collect();
    assert_eq!(nat_pre.len(), 2, "{nat_pre:#?}");
    assert!(nat_pre[0].contains("-j AWS-CONNMARK-CHAIN-0"), "jump first");
    assert!(
        nat_pre[1].contains("--restore-mark"),
        "restore after the jump"
    );

    // VPC CIDR change and a new mark.
    let mut st2 = st.clone();
    st2.vpc_cidrs.push("100.64.0.0/16".parse().unwrap());
    st2.connmark = 0x4000;
    reconcile_iptables(&runner, &st2).unwrap();
    let save3 = ns.exec(&["iptables-save"]);
    assert!(save3.contains(
        "-A AWS-SNAT-CHAIN-0 -d 100.64.0.0/16 -m comment --comment \"AWS SNAT CHAIN\" -j RETURN"
    ));
    assert!(!save3.contains("0x80/0x80"), "old mark gone");
    assert!(!save3.contains("--nfmask 0x80 "), "old mark gone");
    assert!(save3.contains("--set-xmark 0x4000/0x4000"));
    let last_snat = lines_with(&save3, "-A AWS-SNAT-CHAIN-0").pop().unwrap();
    assert!(
        last_snat.contains("-j SNAT"),
        "SNAT stays last: {last_snat}"
    );

    // External SNAT: chain emptied, connmark chain removed, node-port rules kept.
    let mut st3 = st2.clone();
    st3.external_snat = true;
    reconcile_iptables(&runner, &st3).unwrap();
    let save4 = ns.exec(&["iptables-save"]);
    assert!(lines_with(&save4, "-A AWS-SNAT-CHAIN-0").is_empty());
    assert!(!save4.contains("AWS-CONNMARK-CHAIN-0"));
    assert!(!save4.contains("AWS SNAT CHAIN"));
    assert_eq!(lines_with(&save4, "AWS, primary ENI").len(), 3);
    let rep = reconcile_iptables(&runner, &st3).unwrap();
    assert_eq!(
        rep.changes,
        Vec::<String>::new(),
        "converged with external SNAT"
    );
}

#[test]
fn upstream_nftables_connmark_table_is_removed() {
    let ns = Ns::new();
    // What upstream v1.23 leaves on an nf_tables host (datapath.md §11.5), abridged.
    ns.exec(&["nft", "add", "table", "ip", "aws-cni"]);
    ns.exec(&[
        "nft",
        "add",
        "chain",
        "ip",
        "aws-cni",
        "nat-prerouting",
        "{ type nat hook prerouting priority -90; policy accept; }",
    ]);
    ns.exec(&["nft", "add", "chain", "ip", "aws-cni", "snat-mark"]);
    ns.exec(&[
        "nft",
        "add",
        "rule",
        "ip",
        "aws-cni",
        "snat-mark",
        "ct",
        "mark",
        "set",
        "ct",
        "mark",
        "or",
        "0x80",
    ]);
    let rep = reconcile_iptables(&ns.runner(), &snat()).unwrap();
    assert!(
        rep.changes
            .iter()
            .any(|c| c == "nft delete table ip aws-cni")
    );
    let tables = ns.exec(&["nft", "list", "tables"]);
    assert!(!tables.contains("ip aws-cni"), "{tables}");
    // Our iptables connmark rules are in place instead.
    assert!(
        ns.exec(&["iptables-save", "-t", "nat"])
            .contains(":AWS-CONNMARK-CHAIN-0")
    );
}

#[test]
fn old_numbered_chains_are_removed() {
    let ns = Ns::new();
    let runner = ns.runner();
    for c in [
        "AWS-SNAT-CHAIN-0",
        "AWS-SNAT-CHAIN-1",
        "AWS-CONNMARK-CHAIN-1",
    ] {
        ns.exec(&["iptables", "-w", "-t", "nat", "-N", c]);
    }
    ns.exec(&[
        "iptables",
        "-w",
        "-t",
        "nat",
        "-A",
        "AWS-SNAT-CHAIN-0",
        "-j",
        "AWS-SNAT-CHAIN-1",
    ]);
    reconcile_iptables(&runner, &snat()).unwrap();
    let save = ns.exec(&["iptables-save", "-t", "nat"]);
    assert!(!save.contains("AWS-SNAT-CHAIN-1"), "{save}");
    assert!(!save.contains("AWS-CONNMARK-CHAIN-1"), "{save}");
    assert!(save.contains(":AWS-SNAT-CHAIN-0"));
}
