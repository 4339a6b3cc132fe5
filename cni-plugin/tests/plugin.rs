//! The real `aws-cni` binary, spawned with real CNI environment and stdin inside namespaces
//! the tests create (a "node" namespace acting as the host, one namespace per pod), against a
//! stand-in ipamd over a Unix socket. Everything is verified with the kernel's view (`ip -j`)
//! and pings.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;

use common::node::{
    Node, Pod, assert_clean, assert_host_clean, assert_veth_gone, assert_wired, result_ip,
};
use serde_json::{Value, json};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[test]
fn add_check_del_every_version() {
    require_root!();
    let node = Node::new(Ipv4Addr::new(198, 18, 1, 0));
    for (i, v) in VERSIONS.iter().enumerate() {
        // Alternate between the primary ENI (main) and a secondary ENI (table 3).
        let table = if i % 2 == 1 { Some(3u32) } else { None };
        {
            let mut st = node.ipamd.state.lock().unwrap();
            st.table = table.map(|t| t as i32).unwrap_or(254);
            st.device = table.map(|t| t as i32 - 1).unwrap_or(0);
        }
        let pod = Pod::new(&format!("web-{i}"));
        let conf = node.conf(v);
        let add = node.cni("ADD", &pod, &conf);
        add.assert_ok();
        let res = add.json();
        assert_eq!(res["cniVersion"], *v, "{res}");
        let ip = result_ip(&res);
        assert_eq!(res["interfaces"][0]["name"], pod.host_veth().as_str());
        assert_eq!(res["interfaces"][1]["name"], "eth0");
        assert_eq!(res["interfaces"][1]["sandbox"], pod.netns_path().as_str());
        assert_eq!(res["ips"][0]["gateway"], "169.254.1.1");
        assert_eq!(res["ips"][0]["interface"], 1);
        if v.starts_with('0') {
            assert_eq!(res["ips"][0]["version"], "4", "{res}");
        } else {
            assert!(res["ips"][0].get("version").is_none(), "{res}");
        }
        if *v == "1.1.0" {
            assert_eq!(res["interfaces"][1]["mtu"], 9001, "{res}");
        } else {
            assert!(res["interfaces"][1].get("mtu").is_none(), "{res}");
        }
        assert!(add.stderr.is_empty(), "stderr: {}", add.stderr);
        assert_wired(&node, &pod, &ip, table);

        // CHECK with the cached result (0.4.0+), refused below 0.4.0.
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = res.clone();
        let chk = node.cni("CHECK", &pod, &with_prev);
        if *v < "0.4.0" {
            assert_eq!(chk.err_code(), 1, "{chk:?}");
        } else {
            chk.assert_ok();
            assert!(chk.stdout.trim().is_empty(), "{chk:?}");
        }

        let del = node.cni("DEL", &pod, &with_prev);
        del.assert_ok();
        assert!(del.stdout.trim().is_empty(), "{del:?}");
        assert_host_clean(&node, &ip);
        assert_eq!(node.ipamd.live(), 0);
        // As upstream, the veth pair dies with the pod netns, which the runtime removes.
        let veth = pod.host_veth();
        drop(pod);
        assert_veth_gone(&node, &veth);
    }
    let log = std::fs::read_to_string(node.log_file()).unwrap();
    assert!(log.contains("[ADD net=aws-cni"), "{log}");
}

#[test]
fn check_names_what_drifted() {
    require_root!();
    let node = Node::new(Ipv4Addr::new(198, 18, 2, 0));
    node.ipamd.state.lock().unwrap().table = 2;
    let pod = Pod::new("drift");
    let mut conf = node.conf("1.0.0");
    let add = node.cni("ADD", &pod, &conf);
    add.assert_ok();
    let res = add.json();
    let ip = result_ip(&res);
    conf["prevResult"] = res;
    node.cni("CHECK", &pod, &conf).assert_ok();

    fn expect_drift(node: &Node, pod: &Pod, conf: &Value, needle: &str) {
        let r = node.cni("CHECK", pod, conf);
        assert_eq!(r.err_code(), 103, "{r:?}");
        let d = r.json()["details"].as_str().unwrap().to_string();
        assert!(d.contains(needle), "{needle:?} not in {d:?}");
    }

    // Wrong neighbour MAC.
    pod.ns().ip(&[
        "neigh",
        "replace",
        "169.254.1.1",
        "lladdr",
        "02:00:00:00:00:99",
        "nud",
        "permanent",
        "dev",
        "eth0",
    ]);
    expect_drift(
        &node,
        &pod,
        &conf,
        "pod neighbour 169.254.1.1 points at 02:00:00:00:00:99",
    );
    node.cni("DEL", &pod, &conf).assert_ok();
    assert_host_clean(&node, &ip);

    // Fresh pod; drop the from-pod rule on the node.
    let pod = Pod::new("drift2");
    let mut conf = node.conf("1.1.0");
    let add = node.cni("ADD", &pod, &conf);
    add.assert_ok();
    let res = add.json();
    let ip = result_ip(&res);
    conf["prevResult"] = res;
    node.ns
        .ip(&["rule", "del", "from", &ip, "lookup", "2", "prio", "1536"]);
    expect_drift(
        &node,
        &pod,
        &conf,
        &format!("prio 1536 from {ip}/32 lookup 2"),
    );
    node.ns
        .ip(&["rule", "add", "from", &ip, "lookup", "2", "prio", "1536"]);
    node.cni("CHECK", &pod, &conf).assert_ok();
    // Pod address removed.
    pod.ns()
        .ip(&["addr", "del", &format!("{ip}/32"), "dev", "eth0"]);
    expect_drift(
        &node,
        &pod,
        &conf,
        &format!("address {ip}/32 is missing on eth0"),
    );
    // ipamd forgot the allocation.
    node.ipamd.state.lock().unwrap().allocs.clear();
    expect_drift(&node, &pod, &conf, "ipamd holds no address");
    node.cni("DEL", &pod, &conf).assert_ok();
    assert_host_clean(&node, &ip);
}

#[test]
fn del_edge_cases() {
    require_root!();
    let node = Node::new(Ipv4Addr::new(198, 18, 3, 0));
    node.ipamd.state.lock().unwrap().table = 4;
    let conf = node.conf("0.4.0");

    // DEL before any ADD.
    let pod = Pod::new("never-added");
    node.cni("DEL", &pod, &conf).assert_ok();
    assert_eq!(node.ipamd.state.lock().unwrap().dels.len(), 1);

    // ADD, DEL, DEL again; DEL with empty CNI_NETNS; DEL with a vanished netns.
    let mut pod = Pod::new("twice");
    let res = node.cni("ADD", &pod, &conf).assert_ok().json();
    let ip = result_ip(&res);
    node.cni("DEL", &pod, &conf).assert_ok();
    assert_host_clean(&node, &ip);
    node.cni("DEL", &pod, &conf).assert_ok();
    // The runtime kept the netns (the pair is still in it): a re-ADD replaces the leftover.
    let res = node.cni("ADD", &pod, &conf).assert_ok().json();
    let ip = result_ip(&res);
    assert_wired(&node, &pod, &ip, Some(4));
    node.cni("DEL", &pod, &conf).assert_ok();
    assert_host_clean(&node, &ip);
    // DEL without a netns path: the plugin cannot know the pair will die, so it deletes it.
    pod.path_override = Some(String::new());
    node.cni("DEL", &pod, &conf).assert_ok();
    assert_clean(&node, &ip, &pod.host_veth());
    let links = pod.ns().ip_json(&["link", "show"]).to_string();
    assert!(!links.contains("eth0"), "{links}");
    pod.path_override = None;
    pod.kill_netns();
    node.cni("DEL", &pod, &conf).assert_ok();

    // Pod netns deleted under a live attachment, then DEL without prevResult.
    let mut pod = Pod::new("gone");
    let res = node.cni("ADD", &pod, &conf).assert_ok().json();
    let ip = result_ip(&res);
    pod.kill_netns();
    node.cni("DEL", &pod, &conf).assert_ok();
    assert_clean(&node, &ip, &pod.host_veth());
    assert_eq!(node.ipamd.live(), 0);

    // ipamd unreachable: teardown from local state (no prevResult).
    let pod = Pod::new("offline-state");
    let res = node.cni("ADD", &pod, &conf).assert_ok().json();
    let ip_a = result_ip(&res);
    // ipamd unreachable: teardown from prevResult only (local state lost).
    let pod_b = Pod::new("offline-prev");
    let res_b = node.cni("ADD", &pod_b, &conf).assert_ok().json();
    let ip_b = result_ip(&res_b);
    let sock = node.ipamd.socket.clone();
    let mut node = node;
    node.ipamd.stop();
    assert!(!sock.exists());
    node.cni("DEL", &pod, &conf).assert_ok();
    assert_host_clean(&node, &ip_a);
    let state_file =
        std::path::Path::new(&node.state_dir()).join(format!("aws-cni-{}-eth0.json", pod_b.cid));
    std::fs::remove_file(&state_file).unwrap();
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = res_b;
    node.cni("DEL", &pod_b, &with_prev).assert_ok();
    assert_host_clean(&node, &ip_b);
    let log = std::fs::read_to_string(node.log_file()).unwrap();
    assert!(log.contains("ipamd not reachable"), "{log}");
}

#[test]
fn add_failures_are_precise_and_change_nothing() {
    require_root!();
    let node = Node::new(Ipv4Addr::new(198, 18, 4, 0));
    let conf = node.conf("1.1.0");
    let pod = Pod::new("bad");
    let links_before = node.link_names();
    let base = |verb: &str| {
        vec![
            ("CNI_COMMAND".to_string(), verb.to_string()),
            ("CNI_CONTAINERID".to_string(), pod.cid.clone()),
            ("CNI_NETNS".to_string(), pod.netns_path()),
            ("CNI_IFNAME".to_string(), "eth0".to_string()),
        ]
    };
    let run = |env: Vec<(String, String)>, stdin: &str| {
        let e: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        node.run(&e, stdin)
    };
    let with = |verb: &str, k: &str, v: &str| {
        let mut e = base(verb);
        e.retain(|(a, _)| a != k);
        e.push((k.to_string(), v.to_string()));
        e
    };

    // Malformed JSON → 6.
    let r = run(base("ADD"), "{\"cniVersion\": ");
    assert_eq!(r.err_code(), 6, "{r:?}");
    // Missing env → 4, naming the variables.
    let r = run(with("ADD", "CNI_NETNS", ""), &conf.to_string());
    assert_eq!(r.err_code(), 4);
    assert!(r.stdout.contains("CNI_NETNS"), "{r:?}");
    // Bad container ID → 4.
    let r = run(with("ADD", "CNI_CONTAINERID", "-bad id"), &conf.to_string());
    assert_eq!(r.err_code(), 4);
    // Unsupported version → 1.
    let mut c = conf.clone();
    c["cniVersion"] = json!("0.2.0");
    let r = run(base("ADD"), &c.to_string());
    assert_eq!(r.err_code(), 1);
    assert!(r.stdout.contains("0.2.0"), "{r:?}");
    // Over-long ifname → 4.
    let r = run(
        with("ADD", "CNI_IFNAME", "eth0123456789abc"),
        &conf.to_string(),
    );
    assert_eq!(r.err_code(), 4);
    assert!(r.stdout.contains("eth0123456789abc"), "{r:?}");
    // stdin over 1 MiB → 5.
    let mut c = conf.clone();
    c["pad"] = json!("x".repeat(1 << 20));
    let r = run(base("ADD"), &c.to_string());
    assert_eq!(r.err_code(), 5);
    // Unknown CNI_ARGS keys without IgnoreUnknown → 4.
    let r = run(with("ADD", "CNI_ARGS", "FOO=bar"), &conf.to_string());
    assert_eq!(r.err_code(), 4);
    assert!(r.stdout.contains("FOO"), "{r:?}");
    // Netns that does not exist → 3.
    let r = run(
        with("ADD", "CNI_NETNS", "/run/netns/cnit-no-such-ns"),
        &conf.to_string(),
    );
    assert_eq!(r.err_code(), 3, "{r:?}");
    // Interface already exists in the pod → 104, before ipamd is asked.
    pod.ns()
        .ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "x0"]);
    let r = run(base("ADD"), &conf.to_string());
    assert_eq!(r.err_code(), 104, "{r:?}");
    assert!(r.stdout.contains("already exists"), "{r:?}");
    pod.ns().ip(&["link", "del", "eth0"]);

    // None of the above reached ipamd or left anything on the node.
    assert!(node.ipamd.state.lock().unwrap().adds.is_empty());
    assert_eq!(node.link_names(), links_before);

    // Pool empty → 11.
    node.ipamd.state.lock().unwrap().exhausted = true;
    let r = run(base("ADD"), &conf.to_string());
    assert_eq!(r.err_code(), 11, "{r:?}");
    node.ipamd.state.lock().unwrap().exhausted = false;
    // Version mismatch → 102, naming both versions.
    node.ipamd.state.lock().unwrap().required_version = Some("v9.9.9".into());
    let r = run(base("ADD"), &conf.to_string());
    assert_eq!(r.err_code(), 102, "{r:?}");
    assert!(r.stdout.contains("v9.9.9"), "{r:?}");
    node.ipamd.state.lock().unwrap().required_version = None;
    assert_eq!(node.link_names(), links_before);

    // ipamd unreachable → 11 with a hint.
    let mut c = conf.clone();
    c["ipamdSocket"] = json!("/run/cnit-nonexistent/ipamd.sock");
    let r = run(base("ADD"), &c.to_string());
    assert_eq!(r.err_code(), 11, "{r:?}");
    assert!(r.stdout.contains("aws-node pod is running"), "{r:?}");
    // The env override is used when the netconf has no key.
    let mut c = conf.clone();
    c.as_object_mut().unwrap().remove("ipamdSocket");
    let mut e = base("ADD");
    e.push((
        "AWS_VPC_CNI_IPAMD_SOCKET".into(),
        "/run/cnit-env-override/ipamd.sock".into(),
    ));
    let r = run(e, &c.to_string());
    assert_eq!(r.err_code(), 11, "{r:?}");
    assert!(
        r.stdout.contains("/run/cnit-env-override/ipamd.sock"),
        "{r:?}"
    );
}

#[test]
fn concurrent_adds_get_distinct_wiring() {
    require_root!();
    let node = Node::new(Ipv4Addr::new(198, 18, 5, 0));
    let conf = node.conf("1.0.0");
    let pods: Vec<Pod> = (0..20).map(|i| Pod::new(&format!("par-{i}"))).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .map(|p| {
                let node = &node;
                let conf = &conf;
                s.spawn(move || node.cni("ADD", p, conf))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap().assert_ok().json())
            .collect()
    });
    let mut ips: Vec<String> = results.iter().map(result_ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 20);
    let links = node.link_names();
    let mut macs = Vec::new();
    for (p, r) in pods.iter().zip(&results) {
        assert!(links.contains(&p.host_veth()));
        assert_wired(&node, p, &result_ip(r), None);
        macs.push(r["interfaces"][0]["mac"].as_str().unwrap().to_string());
    }
    macs.sort();
    macs.dedup();
    assert_eq!(macs.len(), 20);
    std::thread::scope(|s| {
        for p in &pods {
            let node = &node;
            let conf = &conf;
            s.spawn(move || node.cni("DEL", p, conf).assert_ok().code);
        }
    });
    let veths: Vec<String> = pods.iter().map(Pod::host_veth).collect();
    for r in &results {
        assert_host_clean(&node, &result_ip(r));
    }
    assert_eq!(node.ipamd.live(), 0);
    drop(pods);
    for v in &veths {
        assert_veth_gone(&node, v);
    }
}

#[test]
fn runtime_without_pod_identity() {
    require_root!();
    // podman/cnitool send no K8S_* args: the container ID keeps veth names apart.
    let node = Node::new(Ipv4Addr::new(198, 18, 6, 0));
    let conf = node.conf("1.0.0");
    let mut ips = Vec::new();
    let pods: Vec<Pod> = (0..2).map(|_| Pod::new("")).collect();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for p in &pods {
        let r = node
            .run(
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", &p.cid),
                    ("CNI_NETNS", &p.netns_path()),
                    ("CNI_IFNAME", "eth0"),
                    // libcni exports the trace context; it is forwarded to ipamd.
                    ("TRACEPARENT", tp),
                ],
                &conf.to_string(),
            )
            .assert_ok()
            .json();
        ips.push(result_ip(&r));
    }
    assert_eq!(
        node.ipamd.state.lock().unwrap().last_traceparent.as_deref(),
        Some(tp)
    );
    let a = aws_cni::wiring::host_veth_name("eni", "", "", &pods[0].cid);
    let b = aws_cni::wiring::host_veth_name("eni", "", "", &pods[1].cid);
    let links = node.link_names();
    assert!(links.contains(&a) && links.contains(&b) && a != b);
    for (p, ip) in pods.iter().zip(&ips) {
        node.run(
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", &p.cid),
                ("CNI_NETNS", &p.netns_path()),
                ("CNI_IFNAME", "eth0"),
            ],
            &conf.to_string(),
        )
        .assert_ok();
        assert_host_clean(&node, ip);
    }
}

#[test]
fn ipv6_pod() {
    require_root!();
    let node = Node::new(Ipv4Addr::new(198, 18, 11, 0));
    node.ipamd.state.lock().unwrap().v6_base = Some("2001:db8:77::".parse().unwrap());
    let pod = Pod::new("six");
    let mut conf = node.conf("1.1.0");
    let res = node.cni("ADD", &pod, &conf).assert_ok().json();
    let addr = res["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(addr.ends_with("/128"), "{res}");
    assert_eq!(res["ips"][0]["gateway"], "fe80::1");
    let ip = addr.trim_end_matches("/128").to_string();
    let veth = pod.host_veth();
    // Pod: /128, not tentative (the plugin waited for DAD), gateway route, neighbour.
    let a = pod
        .ns()
        .ip_json(&["-6", "addr", "show", "eth0", "scope", "global"]);
    assert_eq!(a[0]["addr_info"][0]["local"], ip.as_str(), "{a}");
    assert_eq!(a[0]["addr_info"][0]["prefixlen"], 128, "{a}");
    assert!(!a.to_string().contains("tentative"), "{a}");
    let r = pod.ns().ip(&["-6", "route", "show"]);
    assert!(r.contains("default via fe80::1 dev eth0"), "{r}");
    let host_mac = node.ns.ip_json(&["link", "show", &veth])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let n = pod.ns().ip_json(&["-6", "neigh", "show", "dev", "eth0"]);
    assert!(
        n.as_array().unwrap().iter().any(|e| e["dst"] == "fe80::1"
            && e["lladdr"] == host_mac.as_str()
            && e["state"][0] == "PERMANENT"),
        "{n}"
    );
    // Host: /128 route and the IPv6 to-pod rule.
    let hr = node.ns.ip(&["-6", "route", "show"]);
    assert!(hr.contains(&format!("{ip} dev {veth}")), "{hr}");
    let rules = node.ns.ip(&["-6", "rule", "show"]);
    assert!(
        rules.contains(&format!("512:\tfrom all to {ip} lookup main")),
        "{rules}"
    );
    conf["prevResult"] = res;
    node.cni("CHECK", &pod, &conf).assert_ok();
    node.cni("DEL", &pod, &conf).assert_ok();
    let rules = node.ns.ip(&["-6", "rule", "show"]);
    assert!(!rules.contains(&ip), "{rules}");
    assert!(!node.ns.ip(&["-6", "route", "show"]).contains(&ip));
    drop(pod);
    assert_veth_gone(&node, &veth);
}

#[test]
fn chained_add_appends_to_prev_result() {
    require_root!();
    let node = Node::new(Ipv4Addr::new(198, 18, 12, 0));
    let pod = Pod::new("chained");
    let mut conf = node.conf("1.0.0");
    // A previous plugin in the chain reported one interface and one address.
    conf["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "net1", "sandbox": pod.netns_path()}],
        "ips": [{"address": "192.0.2.9/24", "interface": 0}],
        "dns": {"nameservers": ["192.0.2.53"]}
    });
    let res = node.cni("ADD", &pod, &conf).assert_ok().json();
    assert_eq!(res["interfaces"].as_array().unwrap().len(), 3, "{res}");
    assert_eq!(res["interfaces"][0]["name"], "net1");
    assert_eq!(res["interfaces"][1]["name"], pod.host_veth().as_str());
    assert_eq!(res["interfaces"][2]["name"], "eth0");
    assert_eq!(res["ips"][0]["address"], "192.0.2.9/24");
    assert_eq!(res["ips"][1]["interface"], 2, "{res}");
    assert_eq!(res["dns"]["nameservers"][0], "192.0.2.53");
    let ip = res["ips"][1]["address"]
        .as_str()
        .unwrap()
        .trim_end_matches("/32")
        .to_string();
    assert_wired(&node, &pod, &ip, None);
    // DEL with this result as prevResult finds our interface and address in it.
    conf["prevResult"] = res;
    node.cni("DEL", &pod, &conf).assert_ok();
    assert_host_clean(&node, &ip);
}

#[test]
fn stale_prev_result_spares_the_address_new_owner() {
    require_root!();
    let mut node = Node::new(Ipv4Addr::new(198, 18, 13, 0));
    node.ipamd.state.lock().unwrap().table = 2;
    let mut conf = node.conf("1.0.0");
    let a = Pod::new("old-owner");
    let res_a = node.cni("ADD", &a, &conf).assert_ok().json();
    let ip = result_ip(&res_a);
    conf["prevResult"] = res_a;
    node.cni("DEL", &a, &conf).assert_ok();
    // After the cooldown ipamd hands the same address to a new pod.
    {
        let mut st = node.ipamd.state.lock().unwrap();
        st.used.clear();
        st.next = 0;
    }
    let b = Pod::new("new-owner");
    let plain = node.conf("1.0.0");
    let res_b = node.cni("ADD", &b, &plain).assert_ok().json();
    assert_eq!(result_ip(&res_b), ip, "the fake must reuse the address");
    assert_wired(&node, &b, &ip, Some(2));
    // The runtime repeats A's DEL with A's stale cached result: ipamd answers "unknown pod",
    // so the stale addresses are not trusted and B keeps its wiring.
    node.cni("DEL", &a, &conf).assert_ok();
    assert_wired(&node, &b, &ip, Some(2));
    // Same with ipamd down (prevResult is used then): the owner check spares B.
    node.ipamd.stop();
    node.cni("DEL", &a, &conf).assert_ok();
    assert_wired(&node, &b, &ip, Some(2));
}
