//! A real CNI client: tests/cnitool (Go, against Debian's libcni, the library containerd and
//! podman use) runs a conflist chain `aws-cni` → Debian's `portmap`: VERSION probing
//! (validate), ADD, CHECK with the cached result, DEL, for every spec version that libcni
//! knows. The driver runs inside the node namespace, so portmap's iptables rules land there.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::node::{Node, Pod, assert_host_clean, assert_wired, result_ip, run_in_ns};
use serde_json::json;

/// Versions Debian's libcni (v1.1.x) knows; 1.1.0 (GC/STATUS) is covered by status_gc.rs.
const LIBCNI_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// Builds the driver with `go build` in GOPATH mode (offline: Debian ships libcni's source
/// under /usr/share/gocode). `None` when `go` is missing.
fn build_driver() -> Option<PathBuf> {
    if Command::new("go").arg("version").output().is_err() {
        return None;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cnitool");
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnitool");
    std::fs::create_dir_all(tmp.join("gopath")).unwrap();
    let out = tmp.join("cnitool");
    let st = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(&src)
        .env("GO111MODULE", "off")
        .env(
            "GOPATH",
            format!("{}:/usr/share/gocode", tmp.join("gopath").display()),
        )
        .env("GOCACHE", tmp.join("gocache"))
        .env("GOFLAGS", "")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "go build of tests/cnitool failed (is golang-github-appc-cni-dev installed?): {}",
        String::from_utf8_lossy(&st.stderr)
    );
    Some(out)
}

#[test]
fn libcni_chain_with_portmap() {
    require_root!();
    let Some(driver) = build_driver() else {
        eprintln!(
            "\n\n*** SKIPPED libcni_chain_with_portmap: `go` is not installed (apt-get install golang-go golang-github-appc-cni-dev) ***\n"
        );
        return;
    };
    assert!(
        Path::new("/usr/lib/cni/portmap").exists(),
        "Debian's containernetworking-plugins is required (/usr/lib/cni/portmap)"
    );
    let node = Node::new(Ipv4Addr::new(198, 18, 7, 0));
    let plugin_dir = Path::new(common::node::PLUGIN).parent().unwrap();
    let cache = tempfile::tempdir().unwrap();
    for (i, v) in LIBCNI_VERSIONS.iter().enumerate() {
        let pod = Pod::new(&format!("chain-{i}"));
        let mut aws = node.conf(v);
        aws.as_object_mut().unwrap().remove("cniVersion");
        aws.as_object_mut().unwrap().remove("name");
        let conflist = json!({
            "cniVersion": v,
            "name": "aws-cni",
            "plugins": [
                aws,
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
            ]
        });
        let path = node.dir.path().join(format!("10-aws-{v}.conflist"));
        std::fs::write(&path, conflist.to_string()).unwrap();
        // Debian's portmap (1.1.1) fails CHECK for IPv4-only pods because it always looks for
        // its IPv6 chain (containernetworking/plugins#819, fixed upstream later). CHECK
        // therefore runs through a list with the same network name and only aws-cni in it:
        // libcni still loads the chain's cached final result and passes it as prevResult.
        let mut check_list = conflist.clone();
        check_list["plugins"].as_array_mut().unwrap().truncate(1);
        let check_path = node.dir.path().join(format!("10-aws-{v}-check.conflist"));
        std::fs::write(&check_path, check_list.to_string()).unwrap();
        let env = vec![
            (
                "CNI_PATH".to_string(),
                format!("{}:/usr/lib/cni", plugin_dir.display()),
            ),
            (
                "CNI_CACHE_DIR".to_string(),
                cache.path().display().to_string(),
            ),
            (
                "CNI_ARGS".to_string(),
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    pod.k8s_ns, pod.name, pod.cid
                ),
            ),
            (
                "CAP_ARGS".to_string(),
                json!({"portMappings": [{"hostPort": 18080 + i, "containerPort": 80, "protocol": "tcp"}]})
                    .to_string(),
            ),
        ];
        let run = |verb: &str| {
            let list = if verb == "check" { &check_path } else { &path };
            let argv = [
                verb.to_string(),
                list.display().to_string(),
                pod.netns_path(),
                pod.cid.clone(),
                "eth0".to_string(),
            ];
            run_in_ns(driver.to_str().unwrap(), &argv, &node.ns, &env, "")
        };

        let val = run("validate");
        val.assert_ok();
        assert!(val.stdout.contains("portMappings"), "{val:?}");

        let add = run("add");
        add.assert_ok();
        let res = add.json();
        assert_eq!(res["cniVersion"], *v, "{res}");
        let ip = result_ip(&res);
        assert_wired(&node, &pod, &ip, None);
        let nat = node.ns.exec(&["iptables", "-t", "nat", "-S"]);
        let nat = String::from_utf8_lossy(&nat.stdout).to_string();
        assert!(
            nat.contains(&format!("{ip}:80")),
            "portmap DNAT to {ip}:80 missing: {nat}"
        );

        if *v >= "0.4.0" {
            run("check").assert_ok();
            // Break the pod and CHECK must fail through libcni too.
            pod.ns().ip(&["route", "del", "default"]);
            let bad = run("check");
            assert_ne!(bad.code, 0, "{bad:?}");
            assert!(bad.stderr.contains("default route"), "{bad:?}");
        }

        run("del").assert_ok();
        assert_host_clean(&node, &ip);
        let nat = node.ns.exec(&["iptables", "-t", "nat", "-S"]);
        let nat = String::from_utf8_lossy(&nat.stdout).to_string();
        assert!(
            !nat.contains(&format!("{ip}:80")),
            "portmap rule left: {nat}"
        );
        // DEL again (libcni has dropped its cache entry; DEL must still succeed).
        run("del").assert_ok();
    }
    assert_eq!(node.ipamd.live(), 0);
}
