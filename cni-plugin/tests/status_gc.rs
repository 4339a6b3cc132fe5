//! STATUS and GC (spec 1.1.0, newer than Debian's libcni), driven by a small harness that
//! builds requests the way libcni v1.2+ does: the plugin's entry of the conflist with `name`
//! and `cniVersion` injected, GC's attachment list under both `cni.dev/valid-attachments`
//! and the legacy `cni.dev/attachments`, and all six `CNI_*` variables exported, empty where
//! they do not apply.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;

use common::node::{Node, Pod, Run, assert_clean, assert_wired, result_ip};
use serde_json::{Value, json};

/// libcni-style invocation of a spec-1.1 verb without an attachment.
fn libcni_call(node: &Node, verb: &str, conflist: &Value, extra: &[(&str, Value)]) -> Run {
    let mut plugin = conflist["plugins"][0].clone();
    let o = plugin.as_object_mut().unwrap();
    o.insert("name".into(), conflist["name"].clone());
    o.insert("cniVersion".into(), conflist["cniVersion"].clone());
    for (k, v) in extra {
        o.insert((*k).into(), v.clone());
    }
    node.run(
        &[
            ("CNI_COMMAND", verb),
            ("CNI_CONTAINERID", ""),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", ""),
            ("CNI_ARGS", ""),
            ("CNI_PATH", "/opt/cni/bin"),
        ],
        &plugin.to_string(),
    )
}

fn conflist(node: &Node) -> Value {
    let mut aws = node.conf("1.1.0");
    let o = aws.as_object_mut().unwrap();
    o.remove("cniVersion");
    o.remove("name");
    json!({ "cniVersion": "1.1.0", "name": "aws-cni", "plugins": [aws] })
}

#[test]
fn status_follows_ipamd_health() {
    require_root!();
    let mut node = Node::new(Ipv4Addr::new(198, 18, 8, 0));
    let list = conflist(&node);
    let ok = libcni_call(&node, "STATUS", &list, &[]);
    ok.assert_ok();
    assert!(ok.stdout.trim().is_empty(), "{ok:?}");

    node.ipamd.set_serving(false);
    let r = libcni_call(&node, "STATUS", &list, &[]);
    assert_eq!(r.err_code(), 50, "{r:?}");
    assert!(r.stdout.contains("NOT_SERVING"), "{r:?}");
    node.ipamd.set_serving(true);
    libcni_call(&node, "STATUS", &list, &[]).assert_ok();

    node.ipamd.stop();
    let r = libcni_call(&node, "STATUS", &list, &[]);
    assert_eq!(r.err_code(), 50, "{r:?}");
    assert!(r.stdout.contains("ipamd not reachable"), "{r:?}");

    // STATUS on a 1.0.0 config is refused (code 1).
    let mut old = list.clone();
    old["cniVersion"] = json!("1.0.0");
    assert_eq!(libcni_call(&node, "STATUS", &old, &[]).err_code(), 1);
}

#[test]
fn gc_releases_everything_not_listed() {
    require_root!();
    let node = Node::new(Ipv4Addr::new(198, 18, 9, 0));
    node.ipamd.state.lock().unwrap().table = 5;
    let list = conflist(&node);
    let conf = node.conf("1.1.0");
    let pods: Vec<Pod> = (0..3).map(|i| Pod::new(&format!("gc-{i}"))).collect();
    let ips: Vec<String> = pods
        .iter()
        .map(|p| result_ip(&node.cni("ADD", p, &conf).assert_ok().json()))
        .collect();
    assert_eq!(node.ipamd.live(), 3);

    // Only pod 0 is still valid.
    let valid = json!([{ "containerID": pods[0].cid, "ifname": "eth0" }]);
    let r = libcni_call(
        &node,
        "GC",
        &list,
        &[
            ("cni.dev/valid-attachments", valid.clone()),
            ("cni.dev/attachments", valid.clone()),
        ],
    );
    r.assert_ok();
    assert!(r.stdout.trim().is_empty(), "GC must print nothing: {r:?}");
    assert_eq!(node.ipamd.live(), 1);
    let gcs = node.ipamd.state.lock().unwrap().gcs.clone();
    assert_eq!(gcs[0].network_name, "aws-cni");
    assert_eq!(gcs[0].valid_attachments.len(), 1);
    assert_eq!(gcs[0].valid_attachments[0].container_id, pods[0].cid);
    assert_wired(&node, &pods[0], &ips[0], Some(5));
    for i in 1..3 {
        assert_clean(&node, &ips[i], &pods[i].host_veth());
    }

    // The legacy key alone is honoured too: an empty list releases the rest.
    libcni_call(&node, "GC", &list, &[("cni.dev/attachments", json!([]))]).assert_ok();
    assert_eq!(node.ipamd.live(), 0);
    assert_clean(&node, &ips[0], &pods[0].host_veth());
}

#[test]
fn gc_cleans_local_leftovers_when_ipamd_is_down() {
    require_root!();
    let mut node = Node::new(Ipv4Addr::new(198, 18, 10, 0));
    node.ipamd.state.lock().unwrap().table = 6;
    let list = conflist(&node);
    let conf = node.conf("1.1.0");
    let pod = Pod::new("left");
    let ip = result_ip(&node.cni("ADD", &pod, &conf).assert_ok().json());
    node.ipamd.stop();
    // ipamd is down: GC still removes the host state of the stale attachment (from the local
    // state file) and then reports "try again later" because the daemon part did not run.
    let r = libcni_call(
        &node,
        "GC",
        &list,
        &[("cni.dev/valid-attachments", json!([]))],
    );
    assert_eq!(r.err_code(), 11, "{r:?}");
    assert_clean(&node, &ip, &pod.host_veth());
    let left: Vec<_> = std::fs::read_dir(node.state_dir()).unwrap().collect();
    assert!(left.is_empty(), "state files left: {left:?}");
}
