//! The shared netlink facade against the real kernel, in throw-away namespaces, verified with
//! `ip -j`.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;

use aws_cni::netlink::{Created, Deleted, MacAddr, Route, Rule, TABLE_MAIN, VethSpec, host_net};
use common::TestNs;
use std::os::fd::AsFd;

#[test]
fn veth_peer_is_born_in_the_other_namespace() {
    require_root!();
    let host = TestNs::new("h");
    let pod = TestNs::new("p");
    let host_ns = host.open();
    let mut pod_nl = pod.nl();
    let mac: MacAddr = "02:11:22:33:44:55".parse().unwrap();
    pod_nl
        .create_veth(&VethSpec {
            name: "eth0",
            mtu: 1400,
            up: true,
            peer_name: "enitest0001",
            peer_mac: Some(mac),
            peer_netns: Some(host_ns.as_fd()),
        })
        .unwrap();

    let links = host.ip_json(&["link", "show", "enitest0001"]);
    assert_eq!(links[0]["address"], "02:11:22:33:44:55");
    assert_eq!(links[0]["mtu"], 1400);
    let pod_links = pod.ip_json(&["-d", "link", "show", "eth0"]);
    assert_eq!(pod_links[0]["linkinfo"]["info_kind"], "veth");
    assert!(
        pod_links[0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "UP")
    );

    // Lookups by name, MAC and index agree.
    let mut host_nl = host.nl();
    let by_name = host_nl.link_by_name("enitest0001").unwrap().unwrap();
    assert_eq!(by_name.mac, Some(mac));
    assert_eq!(by_name.kind.as_deref(), Some("veth"));
    let by_mac = host_nl.link_by_mac(mac).unwrap().unwrap();
    let macs = host_nl.link_macs().unwrap();
    assert!(macs.contains(&mac), "{macs:?}");
    assert_eq!(
        macs.len(),
        host_nl
            .links()
            .unwrap()
            .iter()
            .filter(|l| l.mac.is_some())
            .count()
    );
    assert_eq!(by_mac, by_name);
    let absent: MacAddr = "02:00:de:ad:be:ef".parse().unwrap();
    assert!(host_nl.link_by_mac(absent).unwrap().is_none());
    let listed = host_nl.links().unwrap();
    assert_eq!(
        listed.iter().find(|l| l.name == "enitest0001"),
        Some(&by_name),
        "the streamed listing decodes the same fields as a single GET"
    );
    let by_idx = host_nl.link_by_index(by_name.index).unwrap().unwrap();
    assert_eq!(by_idx.name, "enitest0001");
    assert!(host_nl.link_by_name("nosuchlink").unwrap().is_none());

    // Duplicate create is EEXIST.
    let err = pod_nl
        .create_veth(&VethSpec {
            name: "eth0",
            mtu: 1400,
            up: true,
            peer_name: "enitest0002",
            peer_mac: None,
            peer_netns: Some(host_ns.as_fd()),
        })
        .unwrap_err();
    assert!(err.is_exists(), "{err}");

    host_nl.set_mtu(by_name.index, 1300).unwrap();
    host_nl.set_up(by_name.index).unwrap();
    let l = host_nl.link_by_index(by_name.index).unwrap().unwrap();
    assert_eq!(l.mtu, 1300);
    assert!(l.up);

    // Deleting the host end removes the pod end too; deleting again is WasAbsent.
    assert_eq!(
        host_nl.delete_link_by_name("enitest0001").unwrap(),
        Deleted::Removed
    );
    assert_eq!(
        host_nl.delete_link_by_name("enitest0001").unwrap(),
        Deleted::WasAbsent
    );
    assert!(pod_nl.link_by_name("eth0").unwrap().is_none());
}

#[test]
fn addresses_routes_neighbours_and_rules() {
    require_root!();
    let ns = TestNs::new("a");
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    let mut nl = ns.nl();
    let v0 = nl.link_by_name("v0").unwrap().unwrap();
    nl.set_up(v0.index).unwrap();
    let v1 = nl.link_by_name("v1").unwrap().unwrap();
    nl.set_up(v1.index).unwrap();

    let pod_ip: IpAddr = "203.0.113.7".parse().unwrap();
    assert_eq!(
        nl.add_address(v0.index, host_net(pod_ip)).unwrap(),
        Created::Created
    );
    assert_eq!(
        nl.add_address(v0.index, host_net(pod_ip)).unwrap(),
        Created::AlreadyThere
    );
    let addrs = nl.addresses(Some(v0.index)).unwrap();
    assert!(addrs.iter().any(|a| a.addr == host_net(pod_ip)));
    let j = ns.ip_json(&["-4", "addr", "show", "v0"]);
    assert_eq!(j[0]["addr_info"][0]["local"], "203.0.113.7");
    assert_eq!(j[0]["addr_info"][0]["prefixlen"], 32);

    // scope-link gateway route, default route, /32 host route in a high table.
    let gw: IpAddr = "169.254.1.1".parse().unwrap();
    nl.replace_route(&Route::host(gw, v0.index, TABLE_MAIN))
        .unwrap();
    nl.replace_route(&Route::host(gw, v0.index, TABLE_MAIN))
        .unwrap();
    assert_eq!(
        nl.add_route(&Route::default_via(gw, v0.index, TABLE_MAIN))
            .unwrap(),
        Created::Created
    );
    assert_eq!(
        nl.add_route(&Route::default_via(gw, v0.index, TABLE_MAIN))
            .unwrap(),
        Created::AlreadyThere
    );
    let other: IpAddr = "203.0.113.9".parse().unwrap();
    nl.replace_route(&Route::host(other, v1.index, 10100))
        .unwrap();
    let r = ns.ip_json(&["route", "show"]);
    let txt = r.to_string();
    assert!(txt.contains("\"dst\":\"default\""), "{txt}");
    assert!(txt.contains("169.254.1.1"), "{txt}");
    let hi = ns.ip_json(&["route", "show", "table", "10100"]);
    assert_eq!(hi[0]["dst"], "203.0.113.9");
    assert_eq!(hi[0]["scope"], "link");
    let routes = nl.routes(false, Some(10100)).unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].oif, Some(v1.index));
    let main = nl.routes(false, Some(TABLE_MAIN)).unwrap();
    assert!(main.iter().any(|r| r.gateway == Some(gw)));
    assert_eq!(
        nl.del_route(&Route::host(other, v1.index, 10100)).unwrap(),
        Deleted::Removed
    );
    assert_eq!(
        nl.del_route(&Route::host(other, v1.index, 10100)).unwrap(),
        Deleted::WasAbsent
    );

    // Permanent neighbour.
    let mac: MacAddr = "02:aa:bb:cc:dd:ee".parse().unwrap();
    nl.replace_permanent_neighbour(v0.index, gw, mac).unwrap();
    let n = ns.ip_json(&["neigh", "show", "dev", "v0"]);
    assert_eq!(n[0]["lladdr"], "02:aa:bb:cc:dd:ee");
    assert_eq!(n[0]["state"][0], "PERMANENT");
    let ns_list = nl.neighbours(false, Some(v0.index)).unwrap();
    assert!(
        ns_list
            .iter()
            .any(|x| x.ip == gw && x.permanent && x.mac == Some(mac))
    );

    // Rules: to-pod 512, from-pod 1536 in table 2, fwmark 1024; idempotent add/delete.
    let to = Rule::lookup(false, TABLE_MAIN, 512).to(host_net(pod_ip));
    let from = Rule::lookup(false, 2, 1536).from(host_net(pod_ip));
    let mark = Rule::lookup(false, TABLE_MAIN, 1024).fwmark(0x80, 0x80);
    for r in [&to, &from, &mark] {
        assert_eq!(nl.add_rule(r).unwrap(), Created::Created, "{r}");
        assert_eq!(nl.add_rule(r).unwrap(), Created::AlreadyThere, "{r}");
    }
    let big = Rule::lookup(false, 10203, 1536).from(host_net(other));
    nl.add_rule(&big).unwrap();
    let txt = ns.ip(&["rule", "show"]);
    assert!(
        txt.contains("512:\tfrom all to 203.0.113.7 lookup main"),
        "{txt}"
    );
    assert!(txt.contains("1536:\tfrom 203.0.113.7 lookup 2"), "{txt}");
    assert!(
        txt.contains("1024:\tfrom all fwmark 0x80/0x80 lookup main"),
        "{txt}"
    );
    assert!(
        txt.contains("1536:\tfrom 203.0.113.9 lookup 10203"),
        "{txt}"
    );
    let rules = nl.rules(false).unwrap();
    for r in [&to, &from, &mark, &big] {
        assert!(rules.iter().any(|x| r.matches(x)), "{r} not in {rules:?}");
    }
    for r in [&to, &from, &mark, &big] {
        assert_eq!(nl.del_rule(r).unwrap(), Deleted::Removed, "{r}");
        assert_eq!(nl.del_rule(r).unwrap(), Deleted::WasAbsent, "{r}");
    }
    let txt = ns.ip(&["rule", "show"]);
    assert!(!txt.contains("203.0.113"), "{txt}");

    assert_eq!(
        nl.del_address(v0.index, host_net(pod_ip)).unwrap(),
        Deleted::Removed
    );
    assert_eq!(
        nl.del_address(v0.index, host_net(pod_ip)).unwrap(),
        Deleted::WasAbsent
    );
}

#[test]
fn run_in_leaves_the_calling_thread_alone() {
    require_root!();
    let ns = TestNs::new("t");
    let before = aws_cni::netns::NetNs::current().unwrap();
    let inside = ns
        .open()
        .run_in(|| aws_cni::netns::NetNs::current().unwrap())
        .unwrap();
    let after = aws_cni::netns::NetNs::current().unwrap();
    assert!(before.same_as(&after).unwrap());
    assert!(inside.same_as(&ns.open()).unwrap());
    assert!(!inside.same_as(&before).unwrap());
    let err = aws_cni::netns::NetNs::open("/run/netns/cnit-does-not-exist").unwrap_err();
    assert!(err.is_gone());
}
