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

use awscni_e2e::ec2::EniInfo;
use awscni_e2e::net::{self, must_ping};
use awscni_e2e::{Cluster, PluginFailure, Pod, Vpc, bins, stale, test_prefix, wait_for};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Pod gateway inside every pod (datapath.md §2).
const POD_GW: &str = "169.254.1.1";

/// Fails the test with the message, where the full logs were kept and the daemons' log tails.
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
    assert_eq!(
        enis.len(),
        1,
        "a fresh node has only its primary ENI: {enis:?}"
    );
    assert_eq!(enis[0].id, node.primary_eni_id);
    must_ping(&node.namespace, &vpc.desc.external.address).unwrap();
    let ext: Ipv4Addr = vpc.desc.external.address.parse().unwrap();
    let seen =
        net::udp_source_seen(&node.namespace, &vpc.desc.external.namespace, ext, 40001).unwrap();
    assert_eq!(seen, Some(node.primary_ip.parse().unwrap()));
}

/// Smoke: one node, one pod: the pod has its /32, a default route via 169.254.1.1 whose
/// permanent neighbour entry is the host veth's MAC (nothing answers pings to that fake
/// gateway, by design), it reaches the node, and DEL removes the host route.
#[test]
fn smoke_one_pod() {
    let _s = serial();
    let c = Cluster::up('s', 1, "m5.large", &[], &[]).unwrap();
    let pod = ok(&c, c.add_pod(0, "smoke"));
    let ip = pod.ip().unwrap();
    let node_ns = &c.vpc.node(0).unwrap().namespace;
    assert_eq!(net::addrs(&pod.ns.name, "eth0").unwrap(), vec![ip]);
    let routes = net::routes(&pod.ns.name, "main").unwrap();
    assert!(
        routes.contains(&("default".into(), "eth0".into())),
        "{routes:?}"
    );
    // The host has the /32 route to the pod, through the host veth.
    let host_routes = net::routes(node_ns, "main").unwrap();
    let veth = host_routes
        .iter()
        .find(|(d, _)| d == &ip.to_string())
        .map(|(_, dev)| dev.clone())
        .unwrap_or_else(|| panic!("no host route to {ip}: {host_routes:?}"));
    let veth_mac = net::ip_json(node_ns, &["link", "show", "dev", &veth]).unwrap()[0]["address"]
        .as_str()
        .unwrap()
        .to_owned();
    let neigh = net::ip_json(&pod.ns.name, &["neigh", "show", "dev", "eth0"]).unwrap();
    let gw = neigh
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["dst"] == POD_GW)
        .unwrap_or_else(|| panic!("no neighbour entry for the gateway: {neigh}"));
    assert_eq!(gw["lladdr"], veth_mac.as_str(), "{gw}");
    assert!(gw["state"].to_string().contains("PERMANENT"), "{gw}");
    ok(
        &c,
        must_ping(&pod.ns.name, &c.vpc.node(0).unwrap().primary_ip),
    );
    ok(&c, c.del_pod(0, &pod));
    let host_routes = net::routes(node_ns, "main").unwrap();
    assert!(
        !host_routes.iter().any(|(d, _)| d == &ip.to_string()),
        "host route to {ip} left after DEL: {host_routes:?}"
    );

    // What a failure message points at: the whole logs, copied out of the temp directory
    // (checked here on a passing run, then removed).
    let kept = c.keep_evidence().unwrap();
    let node = kept.join(&c.vpc.node(0).unwrap().name);
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    assert!(read(node.join("ipamd.log")).contains("ipamd serving"));
    assert!(read(node.join("plugin.log")).contains(&pod.container_id));
    assert!(node.join("ipamd.out").is_file());
    let vpcsim_log = std::path::Path::new(&c.vpc.desc.log_file);
    assert!(read(kept.join(vpcsim_log.file_name().unwrap())).contains("vpcsim"));
    assert!(
        c.diagnostics().contains(&kept.display().to_string()),
        "the failure message names the kept logs"
    );
    std::fs::remove_dir_all(&kept).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Generous failure bound for pool convergence (ENIs are kept ≥ 60 s, releases run every 30 s).
const CONVERGE: Duration = Duration::from_secs(240);
const STEP: Duration = Duration::from_millis(500);

/// Adds `n` pods named `n<node>p<i>` on `node`, in order.
fn add_pods(c: &Cluster, node: usize, n: usize) -> Vec<Pod> {
    (0..n)
        .map(|i| ok(c, c.add_pod(node, &format!("n{node}p{i}"))))
        .collect()
}

/// The ENI of `enis` owning `ip` (as a secondary IP or inside a prefix).
fn owner(enis: &[EniInfo], ip: Ipv4Addr) -> Option<&EniInfo> {
    enis.iter()
        .find(|e| e.secondary_ips.contains(&ip) || e.prefixes.iter().any(|p| p.contains(&ip)))
}

/// Host rules mentioning `ip` in node namespace `ns`.
fn rules_for(ns: &str, ip: Ipv4Addr) -> Vec<(u64, String)> {
    let needle = ip.to_string();
    net::rules(ns)
        .unwrap()
        .into_iter()
        .filter(|(_, r)| r.split_whitespace().any(|w| w == needle))
        .collect()
}

/// Waits until EC2 shows no ENI in `available` state (created by ipamd and never attached, or
/// detached and not deleted: a leak), then returns the node's ENIs.
fn no_detached_enis(c: &Cluster) {
    let r = wait_for("no detached ENI in EC2", CONVERGE, STEP, || {
        let d = c.vpc.ec2()?.detached_enis()?;
        Ok(if d.is_empty() { Some(()) } else { None })
    });
    if let Err(e) = r {
        let all = c.vpc.ec2().unwrap().enis().unwrap();
        panic!("{e:#}\nall ENIs now: {all:#?}\n{}", c.diagnostics());
    }
}

/// Waits until node `node` holds exactly `enis` ENIs and `addrs` pod-usable addresses in EC2.
fn pool_settles(c: &Cluster, node: usize, enis: usize, addrs: usize) {
    let r = wait_for(
        &format!("node {node} to hold {enis} ENI(s) with {addrs} addresses"),
        CONVERGE,
        STEP,
        || Ok((c.pool(node)? == (addrs, enis)).then_some(())),
    );
    if let Err(e) = r {
        let id = &c.vpc.node(node).unwrap().instance_id;
        let now = c.vpc.ec2().unwrap().enis_of(id).unwrap();
        panic!("{e:#}\nENIs now: {now:#?}\n{}", c.diagnostics());
    }
}

/// Allocations in an ipamd checkpoint: container id → IPv4.
fn checkpoint(c: &Cluster, node: usize) -> BTreeMap<String, Ipv4Addr> {
    let path = c.ipamds[node].checkpoint();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["version"], "vpc-cni-ipam/1", "{}", path.display());
    v["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["containerID"].as_str().unwrap().to_owned(),
                a["ipv4"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// 2 × m5.large, 25 pods each: distinct addresses, some on secondary ENIs, host rules as in
/// datapath.md §3; ping pod↔pod on a node and across nodes, pod→node, pod→external; traffic
/// to the external host leaves with the node's primary IP (SNAT). Then every pod is deleted:
/// the pool shrinks back to the warm target (1 ENI, 9 addresses: WARM_ENI_TARGET=1) and EC2
/// shows no leaked ENI.
#[test]
fn two_nodes_25_pods_connectivity_snat_and_shrink() {
    let _s = serial();
    let c = Cluster::up('p', 2, "m5.large", &[], &[("IP_COOLDOWN_PERIOD", "1")]).unwrap();
    let pods: Vec<Vec<Pod>> = (0..2).map(|n| add_pods(&c, n, 25)).collect();

    // Distinct addresses, each owned by an ENI of its own node, some on secondary ENIs.
    let mut all = BTreeSet::new();
    let mut secondary: Vec<Option<usize>> = vec![None, None];
    let mut primary: Vec<Option<usize>> = vec![None, None];
    for (n, node_pods) in pods.iter().enumerate() {
        let node = c.vpc.node(n).unwrap();
        let enis = c.vpc.ec2().unwrap().enis_of(&node.instance_id).unwrap();
        for (i, p) in node_pods.iter().enumerate() {
            let ip = p.ip().unwrap();
            assert!(all.insert(ip), "address {ip} handed out twice");
            let eni = owner(&enis, ip).unwrap_or_else(|| {
                panic!(
                    "{ip} of {} is on no ENI of {}: {enis:#?}",
                    p.name, node.name
                )
            });
            let rules = rules_for(&node.namespace, ip);
            assert!(
                rules.contains(&(512, format!("from all to {ip} lookup main"))),
                "to-pod rule of {ip} missing: {rules:?}"
            );
            if eni.id == node.primary_eni_id {
                primary[n].get_or_insert(i);
                assert!(
                    !rules.iter().any(|(p, _)| *p == 1536),
                    "primary-ENI pod {ip} has a from-rule: {rules:?}"
                );
            } else {
                secondary[n].get_or_insert(i);
                let table = eni.device_index.unwrap() + 1;
                assert!(
                    rules.contains(&(1536, format!("from {ip} lookup {table}"))),
                    "from-pod rule of {ip} (device {:?}) missing: {rules:?}",
                    eni.device_index
                );
            }
        }
    }
    assert_eq!(all.len(), 50);
    let p0 = &pods[0][primary[0].expect("no pod on node 1's primary ENI")];
    let s0 = &pods[0][secondary[0].expect("no pod on a secondary ENI of node 1")];
    let s1 = &pods[1][secondary[1].expect("no pod on a secondary ENI of node 2")];
    let p1 = &pods[1][primary[1].expect("no pod on node 2's primary ENI")];

    // Same node (primary ↔ secondary ENI), across nodes, to the node, to the outside.
    ok(&c, must_ping(&p0.ns.name, &s0.ip().unwrap().to_string()));
    ok(&c, must_ping(&s0.ns.name, &p0.ip().unwrap().to_string()));
    for (a, b) in [(p0, p1), (s0, s1), (s1, p0), (p1, s0)] {
        ok(&c, must_ping(&a.ns.name, &b.ip().unwrap().to_string()));
    }
    for (i, p) in pods[0].iter().enumerate() {
        ok(
            &c,
            must_ping(&p.ns.name, &pods[1][i].ip().unwrap().to_string()),
        );
    }
    for (n, node_pods) in pods.iter().enumerate() {
        let node = c.vpc.node(n).unwrap();
        for p in [&node_pods[0], &node_pods[24]] {
            ok(&c, must_ping(&p.ns.name, &node.primary_ip));
            ok(&c, must_ping(&p.ns.name, &c.vpc.desc.external.address));
        }
    }
    // SNAT: the external host sees the node's primary IP, from either kind of ENI.
    let ext: Ipv4Addr = c.vpc.desc.external.address.parse().unwrap();
    for (n, p) in [(0, p0), (0, s0), (1, s1)] {
        let seen =
            net::udp_source_seen(&p.ns.name, &c.vpc.desc.external.namespace, ext, 40100).unwrap();
        let want: Ipv4Addr = c.vpc.node(n).unwrap().primary_ip.parse().unwrap();
        assert_eq!(
            seen,
            Some(want),
            "source seen outside for pod {} ({:?})",
            p.name,
            p.ip
        );
    }

    // Delete every pod: the checkpoint empties, the pool shrinks back to the warm target and
    // nothing is left behind in EC2.
    for (n, node_pods) in pods.iter().enumerate() {
        for p in node_pods {
            ok(&c, c.del_pod(n, p));
        }
    }
    for n in 0..2 {
        assert!(
            checkpoint(&c, n).is_empty(),
            "allocations left: {:?}",
            checkpoint(&c, n)
        );
        pool_settles(&c, n, 1, 9);
    }
    no_detached_enis(&c);
}

/// `AWS_VPC_K8S_CNI_EXTERNALSNAT=true`: the external host sees the pod's own address, for
/// pods on the primary and on a secondary ENI.
#[test]
fn external_snat_keeps_pod_source() {
    let _s = serial();
    let c = Cluster::up(
        'x',
        1,
        "m5.large",
        &[],
        &[("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true")],
    )
    .unwrap();
    let pods = add_pods(&c, 0, 12);
    let node = c.vpc.node(0).unwrap();
    let enis = c.vpc.ec2().unwrap().enis_of(&node.instance_id).unwrap();
    let on_primary = pods
        .iter()
        .find(|p| owner(&enis, p.ip().unwrap()).is_some_and(|e| e.id == node.primary_eni_id))
        .expect("no pod on the primary ENI");
    let on_secondary = pods
        .iter()
        .find(|p| owner(&enis, p.ip().unwrap()).is_some_and(|e| e.id != node.primary_eni_id))
        .expect("no pod on a secondary ENI");
    let ext: Ipv4Addr = c.vpc.desc.external.address.parse().unwrap();
    for p in [on_primary, on_secondary] {
        let seen =
            net::udp_source_seen(&p.ns.name, &c.vpc.desc.external.namespace, ext, 40200).unwrap();
        assert_eq!(
            seen,
            Some(p.ip().unwrap()),
            "source seen outside for pod {}",
            p.name
        );
    }
    // No fwmark rule when external SNAT is on and node-port support... is on by default:
    // upstream keeps it when node-port support is on (datapath.md §6 step 2).
    let rules = net::rules(&node.namespace).unwrap();
    assert!(
        rules.iter().any(|(p, _)| *p == 1024),
        "fwmark rule missing: {rules:?}"
    );
}

/// Prefix delegation: pods get addresses from /28 prefixes (no /32 secondary IPs) and
/// WARM_PREFIX_TARGET=1 holds: exactly one free prefix and at least 16 free addresses while
/// pods run; after deleting them the node shrinks back to a single prefix.
#[test]
fn prefix_delegation_warm_prefix_target() {
    let _s = serial();
    let c = Cluster::up(
        'q',
        1,
        "m5.large",
        &[],
        &[
            ("ENABLE_PREFIX_DELEGATION", "true"),
            ("WARM_PREFIX_TARGET", "1"),
            ("IP_COOLDOWN_PERIOD", "1"),
        ],
    )
    .unwrap();
    let pods = add_pods(&c, 0, 20);
    let node = c.vpc.node(0).unwrap().clone();
    let ips: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.ip().unwrap()).collect();
    assert_eq!(ips.len(), 20, "duplicate addresses");
    let r = wait_for("one free /28 beside the pods", CONVERGE, STEP, || {
        let enis = c.vpc.ec2()?.enis_of(&node.instance_id)?;
        let prefixes: Vec<_> = enis.iter().flat_map(|e| e.prefixes.clone()).collect();
        let secondary: usize = enis.iter().map(|e| e.secondary_ips.len()).sum();
        anyhow::ensure!(
            secondary == 0,
            "PD mode but /32 secondary IPs exist: {enis:#?}"
        );
        for ip in &ips {
            anyhow::ensure!(
                prefixes.iter().any(|p| p.contains(ip)),
                "{ip} is in no delegated prefix {prefixes:?}"
            );
        }
        let free = prefixes
            .iter()
            .filter(|p| !ips.iter().any(|ip| p.contains(ip)))
            .count();
        let available = prefixes.len() * 16 - ips.len();
        Ok((free == 1 && available >= 16).then_some(()))
    });
    ok(&c, r);
    for p in &pods {
        ok(&c, c.del_pod(0, p));
    }
    pool_settles(&c, 0, 1, 16);
    no_detached_enis(&c);
}

/// `kill -9` ipamd during a 50-pod ADD storm, then restart it: no address is handed out twice,
/// every pod whose ADD succeeded keeps its address (checkpoint and kernel), the failed ADDs
/// succeed on retry (as the kubelet retries), and after deleting every pod nothing is left
/// allocated or leaked.
#[test]
fn kill9_during_add_storm() {
    let _s = serial();
    // m5.xlarge: 4 ENIs × 14 pod addresses = 56 ≥ 50.
    let mut c = Cluster::up('k', 1, "m5.xlarge", &[], &[("IP_COOLDOWN_PERIOD", "1")]).unwrap();
    let mut pods: Vec<Pod> = (0..50)
        .map(|i| Pod::new(&c.prefix, &format!("s{i}"), &format!("storm{i}")).unwrap())
        .collect();
    let cni = c.cnis[0].clone();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<anyhow::Result<Ipv4Addr>> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter_mut()
            .map(|p| {
                let cni = &cni;
                let done = &done;
                s.spawn(move || {
                    let r = cni.add(p);
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    r
                })
            })
            .collect();
        // Kill once some ADDs have completed and others are in flight.
        let _ = wait_for(
            "10 ADDs to finish",
            Duration::from_secs(120),
            Duration::from_millis(5),
            || Ok((done.load(std::sync::atomic::Ordering::SeqCst) >= 10).then_some(())),
        );
        c.ipamds[0].kill9().unwrap();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let survivors: BTreeMap<String, Ipv4Addr> = pods
        .iter()
        .zip(&results)
        .filter_map(|(p, r)| r.as_ref().ok().map(|ip| (p.container_id.clone(), *ip)))
        .collect();
    let failed: Vec<usize> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.is_err().then_some(i))
        .collect();
    eprintln!(
        "storm: {} ADDs succeeded, {} failed around the kill",
        survivors.len(),
        failed.len()
    );
    // Failing around the kill is expected; failing without a CNI error document is not (a
    // plugin must always print one). Every failure is printed with how the process ended.
    let mut silent = Vec::new();
    for (i, r) in results.iter().enumerate() {
        if let Err(e) = r {
            eprintln!("storm: pod {i}: {e:#}");
            if e.downcast_ref::<PluginFailure>()
                .is_some_and(PluginFailure::silent)
            {
                silent.push(i);
            }
        }
    }
    assert!(
        silent.is_empty(),
        "ADDs of pods {silent:?} ended without printing a result or a CNI error (see above)"
    );
    assert!(
        survivors.len() >= 10,
        "fewer than 10 ADDs succeeded before the kill"
    );
    let distinct: BTreeSet<_> = survivors.values().collect();
    assert_eq!(
        distinct.len(),
        survivors.len(),
        "duplicate addresses: {survivors:?}"
    );

    // Restart: the checkpoint brings every survivor back with its address.
    let r = c.ipamds[0].spawn();
    ok(&c, r);
    let r = c.ipamds[0].wait_serving(awscni_e2e::ipamd::SERVING_TIMEOUT);
    ok(&c, r);
    let restored = checkpoint(&c, 0);
    for (cid, ip) in &survivors {
        assert_eq!(
            restored.get(cid),
            Some(ip),
            "pod {cid} lost its address {ip}: {restored:?}"
        );
    }
    // The kubelet retries failed sandboxes: DEL (cleans whatever half-done state), then ADD.
    for &i in &failed {
        let _ = c.cnis[0].del(&pods[i]);
        pods[i].result = None;
        ok(&c, c.cnis[0].add(&mut pods[i]).map(|_| ()));
    }
    let all: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.ip().unwrap()).collect();
    assert_eq!(all.len(), 50, "duplicate addresses after restart");
    for (cid, ip) in &survivors {
        let p = pods.iter().find(|p| &p.container_id == cid).unwrap();
        assert_eq!(net::addrs(&p.ns.name, "eth0").unwrap(), vec![*ip]);
    }
    // Traffic still flows for a survivor and a retried pod.
    let node_ip = c.vpc.node(0).unwrap().primary_ip.clone();
    let survivor = pods
        .iter()
        .find(|p| survivors.contains_key(&p.container_id))
        .unwrap();
    ok(&c, must_ping(&survivor.ns.name, &node_ip));
    if let Some(&i) = failed.first() {
        ok(
            &c,
            must_ping(&pods[i].ns.name, &survivor.ip().unwrap().to_string()),
        );
    }
    for p in &pods {
        ok(&c, c.del_pod(0, p));
    }
    assert!(
        checkpoint(&c, 0).is_empty(),
        "allocations left: {:?}",
        checkpoint(&c, 0)
    );
    // m5.xlarge, WARM_ENI_TARGET=1: the primary ENI with its 14 addresses.
    pool_settles(&c, 0, 1, 14);
    // A kill between CreateNetworkInterface and AttachNetworkInterface (or between detach and
    // delete) leaves an `available` ENI no process owns any more: upstream's answer, and ours,
    // is the leaked-ENI sweep (ipam.md §8.2), which finds it by its tag and description. So
    // any such ENI must carry both, or it would leak for good.
    let id = c.vpc.node(0).unwrap().instance_id.clone();
    for e in c.vpc.ec2().unwrap().detached_enis().unwrap() {
        eprintln!(
            "storm: detached ENI left for the leaked-ENI sweep: {}",
            e.id
        );
        assert!(
            e.description.starts_with("aws-K8S-")
                && e.tags.get("node.k8s.amazonaws.com/instance_id") == Some(&id),
            "detached ENI the leaked-ENI sweep cannot find: {e:#?}"
        );
    }
}

/// ipamd stopped (SIGTERM, exit 0): DEL still removes the pod's host route and its rules, from
/// the plugin's own state; the host veth goes with the pod namespace, as after a runtime's DEL.
#[test]
fn del_without_ipamd_cleans_host() {
    let _s = serial();
    let mut c = Cluster::up('r', 1, "m5.large", &[], &[]).unwrap();
    let pods = add_pods(&c, 0, 12);
    let node_ns = c.vpc.node(0).unwrap().namespace.clone();
    let before_links = net::links(&node_ns).unwrap();
    let r = c.ipamds[0].stop(Duration::from_secs(30));
    let status = ok(&c, r);
    assert!(
        status.is_some_and(|s| s.success()),
        "ipamd exit on SIGTERM: {status:?}"
    );
    assert!(
        !c.ipamds[0].socket().exists() || awscni_e2e::ipamd::health(&c.ipamds[0].socket()).is_err()
    );
    let had_from_rule = pods.iter().any(|p| {
        rules_for(&node_ns, p.ip().unwrap())
            .iter()
            .any(|(pr, _)| *pr == 1536)
    });
    assert!(
        had_from_rule,
        "no pod on a secondary ENI (12 pods on m5.large)"
    );
    for p in &pods {
        ok(&c, c.del_pod(0, p));
        let ip = p.ip().unwrap();
        let rules = rules_for(&node_ns, ip);
        assert!(rules.is_empty(), "rules of {ip} left after DEL: {rules:?}");
        let routes = net::routes(&node_ns, "main").unwrap();
        assert!(
            !routes.iter().any(|(d, _)| d == &ip.to_string()),
            "route to {ip} left: {routes:?}"
        );
    }
    // The plugin leaves the veth pair to the runtime while the netns exists (docs/plugin.md,
    // DEL step 3); the runtime deletes the netns right after DEL, and the kernel removes
    // the pair with it. Do what the runtime does and check nothing of the pods is left.
    drop(pods);
    let r = wait_for(
        "the host veths to go with the pod namespaces",
        Duration::from_secs(30),
        STEP,
        || {
            let left: Vec<String> = net::links(&node_ns)?
                .into_iter()
                .filter(|l| l.starts_with("eni") && before_links.contains(l))
                .collect();
            Ok(left.is_empty().then_some(()))
        },
    );
    ok(&c, r);
}

/// 30 % of EC2 calls answer `RequestLimitExceeded` while the pool grows for 20 pods: every ADD
/// eventually succeeds, the pool converges to the instance's ceiling (3 ENIs × 9), the
/// throttling was really hit, and no half-created ENI is left behind.
#[test]
fn throttled_growth_converges() {
    let _s = serial();
    let c = Cluster::up('t', 1, "m5.large", &[], &[]).unwrap();
    c.vpc.reset_counters().unwrap();
    c.vpc
        .set_fault(
            "*",
            &serde_json::json!({"error_rate": 0.3, "error_code": "RequestLimitExceeded"}),
        )
        .unwrap();
    let mut pods = Vec::new();
    for i in 0..20 {
        let mut pod = Pod::new(&c.prefix, &format!("t{i}"), &format!("thr{i}")).unwrap();
        // The kubelet retries a failed sandbox: DEL then ADD again.
        let r = wait_for(
            &format!("ADD of thr{i}"),
            CONVERGE,
            Duration::from_secs(1),
            || match c.cnis[0].add(&mut pod) {
                Ok(ip) => Ok(Some(ip)),
                Err(e) => {
                    let _ = c.cnis[0].del(&pod);
                    Err(e)
                }
            },
        );
        ok(&c, r);
        pods.push(pod);
    }
    pool_settles(&c, 0, 3, 27);
    let counters = c.vpc.counters().unwrap();
    let errors: u64 = counters.values().map(|k| k.errors).sum();
    assert!(errors > 0, "no injected error was hit: {counters:?}");
    c.vpc.clear_faults().unwrap();
    let ips: BTreeSet<_> = pods.iter().map(|p| p.ip().unwrap()).collect();
    assert_eq!(ips.len(), 20);
    no_detached_enis(&c);
}

/// A pod's host rules deleted by hand come back within a reconcile period (set to 2 s; the
/// wait bound is generous, it is not a timing assertion), and traffic flows again.
#[test]
fn deleted_pod_rules_come_back() {
    let _s = serial();
    let c = Cluster::up(
        'u',
        1,
        "m5.large",
        &[],
        &[("AWS_VPC_CNI_RECONCILE_SECONDS", "2")],
    )
    .unwrap();
    let pods = add_pods(&c, 0, 12);
    let node = c.vpc.node(0).unwrap().clone();
    let enis = c.vpc.ec2().unwrap().enis_of(&node.instance_id).unwrap();
    let p = pods
        .iter()
        .find(|p| owner(&enis, p.ip().unwrap()).is_some_and(|e| e.id != node.primary_eni_id))
        .expect("no pod on a secondary ENI");
    let ip = p.ip().unwrap();
    let before = rules_for(&node.namespace, ip);
    assert_eq!(before.len(), 2, "expected to- and from-rules: {before:?}");
    net::run(
        "ip",
        &[
            "-n",
            &node.namespace,
            "rule",
            "del",
            "to",
            &ip.to_string(),
            "priority",
            "512",
        ],
    )
    .unwrap();
    net::run(
        "ip",
        &[
            "-n",
            &node.namespace,
            "rule",
            "del",
            "from",
            &ip.to_string(),
            "priority",
            "1536",
        ],
    )
    .unwrap();
    assert!(rules_for(&node.namespace, ip).is_empty());
    let r = wait_for(
        "the pod's rules to come back",
        Duration::from_secs(30),
        STEP,
        || {
            let now = rules_for(&node.namespace, ip);
            Ok((now == before).then_some(()))
        },
    );
    ok(&c, r);
    let other = pods.iter().find(|q| q.ip != p.ip).unwrap();
    ok(&c, must_ping(&other.ns.name, &ip.to_string()));
    ok(&c, must_ping(&p.ns.name, &c.vpc.desc.external.address));
}
