//! The reconciler against the real kernel, driven in-process with hand-made views (no
//! emulator): wiring, idempotence, drift repair, re-plug at another device index, unplug, and
//! teardown. Root only; namespaces carry a prefix unique to this process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Arc;

use ipnet::Ipv4Net;
use vpcsim::fabric::{Fabric, FabricConfig, ns, plan};
use vpcsim::view::{EniView, FabricView, NodeView, SubnetView};

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}
fn addr(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn eni(id: &str, mac_tail: u8, dev: u32, primary: &str, sec: &[&str], pfx: &[&str]) -> EniView {
    EniView {
        eni_id: id.into(),
        mac: [0x02, 0x5e, 0, 0, 0, mac_tail],
        device_index: dev,
        network_card: 0,
        subnet_cidr: net("10.1.0.0/24"),
        primary_ip: addr(primary),
        secondary_ips: sec.iter().map(|s| addr(s)).collect(),
        prefixes: pfx.iter().map(|s| net(s)).collect(),
    }
}

fn view(generation: u64, node1: Vec<EniView>, node2: Vec<EniView>) -> FabricView {
    FabricView {
        generation,
        vpc_cidrs: vec![net("10.1.0.0/16")],
        subnets: vec![SubnetView {
            subnet_id: "subnet-1".into(),
            cidr: net("10.1.0.0/24"),
            gateway: addr("10.1.0.1"),
        }],
        nodes: vec![
            NodeView {
                instance_id: "i-1".into(),
                enis: node1,
            },
            NodeView {
                instance_id: "i-2".into(),
                enis: node2,
            },
        ],
    }
}

/// Destroys the fabric on every exit path.
struct Guard(Arc<Fabric>, #[allow(dead_code)] tempfile::TempDir);
impl Drop for Guard {
    fn drop(&mut self) {
        self.0.destroy();
    }
}

fn ip_out(ns: &str, args: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mac_of(ns: &str, dev: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", "dev", dev])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["address"].as_str().map(str::to_owned)
}

fn ping(ns: &str, dst: &str) -> bool {
    (0..3).any(|_| {
        Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", dst])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    })
}

#[test]
fn reconcile_wires_converges_repairs_replugs_and_unplugs() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let prefix = format!("vsftj{:x}", std::process::id());
    // Leftovers of an earlier run of this very prefix (pid reuse) would make create fail.
    vpcsim::fabric::sweep(&prefix, &HashSet::new());
    let dirs = tempfile::tempdir().unwrap();
    let fabric = Fabric::create(FabricConfig {
        prefix: prefix.clone(),
        node_dirs: dirs.path().to_path_buf(),
        source_dest_check: true,
    })
    .unwrap();
    let g = Guard(fabric, dirs);
    let f = &g.0;
    let n1 = f.add_node(1, "i-1").unwrap();
    let n2 = f.add_node(2, "i-2").unwrap();
    let vpc = vpcsim::fabric::vpc_ns(&prefix);

    let a = eni(
        "eni-0000000000000000a",
        0x0a,
        0,
        "10.1.0.10",
        &["10.1.0.11"],
        &[],
    );
    let b = eni(
        "eni-0000000000000000b",
        0x0b,
        1,
        "10.1.0.20",
        &[],
        &["10.1.0.32/28"],
    );
    let c = eni("eni-0000000000000000c", 0x0c, 0, "10.1.0.40", &[], &[]);
    let v1 = view(1, vec![a.clone(), b.clone()], vec![c.clone()]);
    let p = f.reconcile(&v1).unwrap();
    assert_eq!(p.created.len(), 3);
    assert_eq!(f.status().applied_generation, 1);

    // Converged: the plan computed from the real kernel is empty, and a second pass is a no-op.
    let nodes = [
        ("i-1".to_owned(), n1.netns.clone()),
        ("i-2".to_owned(), n2.netns.clone()),
    ]
    .into();
    let again = plan::plan(&plan::desired(&v1, &nodes), &f.observe().unwrap());
    assert!(again.is_empty(), "{again:?}");
    assert!(f.reconcile(&v1).unwrap().is_empty());

    // Node side: eth0 configured as DHCP would, eth1 with the ENI MAC and nothing else.
    assert_eq!(
        mac_of(&n1.netns, "eth0").as_deref(),
        Some("02:5e:00:00:00:0a")
    );
    assert!(ip_out(&n1.netns, "-4 addr show dev eth0").contains("10.1.0.10/24"));
    assert!(ip_out(&n1.netns, "route show default").contains("via 10.1.0.1 dev eth0"));
    assert_eq!(
        mac_of(&n1.netns, "eth1").as_deref(),
        Some("02:5e:00:00:00:0b")
    );
    assert!(!ip_out(&n1.netns, "-4 addr show dev eth1").contains("inet "));
    // VPC side: prefix route, gateway, strict source check on the ENI peer.
    let routes = ip_out(&vpc, "route show proto 250");
    assert!(
        routes.contains("10.1.0.32/28 via 169.254.0.1 dev v0000000000000b"),
        "{routes}"
    );
    assert!(ip_out(&vpc, "addr show dev lo").contains("10.1.0.1/32"));
    assert_eq!(
        ns::read_sysctl(&vpc, "net/ipv4/conf/v0000000000000b/rp_filter").unwrap(),
        "1"
    );
    assert!(ping(&n1.netns, "10.1.0.40"), "node1 cannot reach node2");
    assert!(
        ping(&n2.netns, "10.1.0.1"),
        "node2 cannot reach its gateway"
    );

    // Drift repair: a route removed behind the fabric's back comes back.
    Command::new("ip")
        .args(["-n", &vpc, "route", "del", "10.1.0.11/32"])
        .status()
        .unwrap();
    let p = f.reconcile(&v1).unwrap();
    assert_eq!(
        p.vpc,
        vec![format!(
            "route replace 10.1.0.11/32 via 169.254.0.1 dev v0000000000000a onlink proto 250"
        )]
    );

    // Re-plug: the same ENI at device index 2 becomes eth2 (same MAC); eth1 is gone.
    let mut b2 = b.clone();
    b2.device_index = 2;
    let p = f
        .reconcile(&view(2, vec![a.clone(), b2], vec![c.clone()]))
        .unwrap();
    assert_eq!((p.deleted.len(), p.created.len()), (1, 1));
    assert_eq!(mac_of(&n1.netns, "eth1"), None);
    assert_eq!(
        mac_of(&n1.netns, "eth2").as_deref(),
        Some("02:5e:00:00:00:0b")
    );
    assert!(ip_out(&vpc, "route show proto 250").contains("10.1.0.32/28"));

    // Unplug and unassign.
    let mut a3 = a.clone();
    a3.secondary_ips.clear();
    f.reconcile(&view(3, vec![a3], vec![c])).unwrap();
    assert_eq!(mac_of(&n1.netns, "eth2"), None);
    let routes = ip_out(&vpc, "route show proto 250");
    assert!(
        !routes.contains("10.1.0.32/28") && !routes.contains("10.1.0.11 "),
        "{routes}"
    );
    assert!(routes.contains("10.1.0.10 "), "{routes}");

    // Teardown: namespaces and holders gone.
    let holders = [n1.holder_pid, n2.holder_pid];
    f.destroy();
    assert!(ns::list_with_prefix(&format!("{prefix}-")).is_empty());
    for pid in holders {
        assert!(!ns::pid_alive(pid as i32), "holder {pid} survived");
    }
}
