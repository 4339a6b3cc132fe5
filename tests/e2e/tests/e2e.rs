//! End to end on vpcsim with the real binaries (issue 4, "Tests"): `vpcsim` builds the VPC,
//! one `ipamd` runs in every node namespace, and `aws-cni` wires pods (network namespaces)
//! when invoked the way a container runtime invokes it. Kernel state is read with `ip -j`
//! inside the namespaces; EC2 state through aws-sdk-ec2 on the emulator's loopback endpoint.
//!
//! Root only. Each test has its own namespace prefix (`e2e<tag><pid>`) and vpcsim state dir;
//! guards remove everything on every exit path, and stale leftovers of dead runs are swept at
//! the start. The tests run one at a time (a lock): each brings up whole nodes, and the CI
//! machine has two cores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use awscni_e2e::net::{self, must_ping};
use awscni_e2e::{bins, Cluster, Pod, Vpc, stale, test_prefix, wait_for};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Pod gateway inside every pod (datapath.md §2).
const POD_GW: &str = "169.254.1.1";

/// Fails the test with the message and the daemons' log tails.
fn ok<T>(c: &Cluster, r: anyhow::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e:#}\n{}", c.diagnostics()),
    }
}

/// The harness alone: vpcsim up, EC2 on loopback, and the UDP probe seeing a node's primary
/// address as the source of a datagram sent from the node to the external host. This is what
/// the SNAT checks below rely on.
#[test]
fn harness_vpcsim_probe() {
    let _s = serial();
    awscni_e2e::require_root().unwrap();
    let vpcsim = bins::find("vpcsim").unwrap();
    stale::sweep(Some(&vpcsim));
    let prefix = test_prefix('h').unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let vpc = Vpc::up(&vpcsim, &prefix, tmp.path(), 1, "m5.large", &[]).unwrap();
    let node = vpc.node(0).unwrap().clone();
    let enis = vpc.ec2().unwrap().enis_of(&node.instance_id).unwrap();
    assert_eq!(enis.len(), 1, "a fresh node has only its primary ENI: {enis:?}");
    assert_eq!(enis[0].id, node.primary_eni_id);
    must_ping(&node.namespace, &vpc.desc.external.address).unwrap();
    let ext: Ipv4Addr = vpc.desc.external.address.parse().unwrap();
    let seen = net::udp_source_seen(&node.namespace, &vpc.desc.external.namespace, ext, 40001)
        .unwrap();
    assert_eq!(seen, Some(node.primary_ip.parse().unwrap()));
}

/// Smoke: one node, one pod, ping the pod's gateway and the node, DEL.
#[test]
fn smoke_one_pod() {
    let _s = serial();
    let c = Cluster::up('s', 1, "m5.large", &[], &[]).unwrap();
    let pod = ok(&c, c.add_pod(0, "smoke"));
    let ip = pod.ip().unwrap();
    assert_eq!(net::addrs(&pod.ns.name, "eth0").unwrap(), vec![ip]);
    ok(&c, must_ping(&pod.ns.name, POD_GW));
    ok(&c, must_ping(&pod.ns.name, &c.vpc.node(0).unwrap().primary_ip));
    // The host has the /32 route to the pod and its to-pod rule.
    let node_ns = &c.vpc.node(0).unwrap().namespace;
    let host_routes = net::routes(node_ns, "main").unwrap();
    assert!(
        host_routes.iter().any(|(d, _)| d == &ip.to_string()),
        "no host route to {ip}: {host_routes:?}"
    );
    ok(&c, c.del_pod(0, &pod));
    let host_routes = net::routes(node_ns, "main").unwrap();
    assert!(
        !host_routes.iter().any(|(d, _)| d == &ip.to_string()),
        "host route to {ip} left after DEL: {host_routes:?}"
    );
}
