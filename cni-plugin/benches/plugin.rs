//! Benchmark (not a test): N pod ADDs then N DELs of `aws-cni` in a node namespace against the
//! stand-in ipamd, and in the same run Debian's `ptp` + `host-local` for the same pods.
//! Prints median and p99 per operation and the ratio.
//!
//! Run as root: `cargo bench -p aws-cni --bench plugin` (pods: env `BENCH_PODS`, default 200).
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::node::{Node, PLUGIN, Pod, run_in_ns};
use serde_json::json;

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = ms(v[v.len() / 2]);
    let p99 = ms(v[((v.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)]);
    (median, p99)
}

fn main() {
    if !common::is_root() {
        eprintln!("SKIPPED: the plugin benchmark needs root (network namespaces)");
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes --bench; under `cargo test --all-targets` run a 3-pod smoke only.
    let default = if std::env::args().any(|a| a == "--bench") {
        200
    } else {
        3
    };
    let n: usize = std::env::var("BENCH_PODS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    let node = Node::new(Ipv4Addr::new(198, 18, 0, 0));
    // Quiet logging: measure the data path, not log I/O.
    let mut conf = node.conf("1.0.0");
    conf["pluginLogLevel"] = json!("error");
    // BENCH_LOG=<file>: debug log with per-phase timings instead.
    if let Ok(f) = std::env::var("BENCH_LOG") {
        conf["pluginLogFile"] = json!(f);
        conf["pluginLogLevel"] = json!("debug");
    }
    let baseline = node.link_names().len();
    eprintln!("creating {n} pod namespaces...");
    let pods: Vec<Pod> = (0..n).map(|i| Pod::new(&format!("bench-{i}"))).collect();

    // --- aws-cni
    let mut add = Vec::with_capacity(n);
    for p in &pods {
        let t = Instant::now();
        node.cni("ADD", p, &conf).assert_ok();
        add.push(t.elapsed());
    }
    let mut del = Vec::with_capacity(n);
    for p in &pods {
        let t = Instant::now();
        node.cni("DEL", p, &conf).assert_ok();
        del.push(t.elapsed());
    }
    assert_eq!(node.ipamd.live(), 0);
    // As upstream, DEL leaves the veth pairs to die with the pod namespaces: remove those and
    // wait until the kernel's asynchronous netns cleanup has deleted every pair, so it does
    // not run during the ptp measurements.
    drop(pods);
    for _ in 0..600 {
        if node.link_names().len() <= baseline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pods: Vec<Pod> = (0..n).map(|i| Pod::new(&format!("ptp-{i}"))).collect();

    // --- ptp + host-local, same node, same launcher, fresh pod namespaces.
    let data = tempfile::tempdir().unwrap();
    let ptp_conf = json!({
        "cniVersion": "1.0.0",
        "name": "ptpbench",
        "type": "ptp",
        "mtu": 9001,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "198.19.0.0/16"}]],
            "dataDir": data.path().display().to_string()
        }
    })
    .to_string();
    let ptp_env = |verb: &str, p: &Pod| -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), verb.into()),
            ("CNI_CONTAINERID".into(), p.cid.clone()),
            ("CNI_NETNS".into(), p.netns_path()),
            ("CNI_IFNAME".into(), "eth0".into()),
            ("CNI_PATH".into(), "/usr/lib/cni".into()),
        ]
    };
    let mut padd = Vec::with_capacity(n);
    for p in &pods {
        let t = Instant::now();
        run_in_ns(
            "/usr/lib/cni/ptp",
            &[],
            &node.ns,
            &ptp_env("ADD", p),
            &ptp_conf,
        )
        .assert_ok();
        padd.push(t.elapsed());
    }
    let mut pdel = Vec::with_capacity(n);
    for p in &pods {
        let t = Instant::now();
        run_in_ns(
            "/usr/lib/cni/ptp",
            &[],
            &node.ns,
            &ptp_env("DEL", p),
            &ptp_conf,
        )
        .assert_ok();
        pdel.push(t.elapsed());
    }
    drop(pods);

    let (am, ap) = stats(add);
    let (dm, dp) = stats(del);
    let (pam, pap) = stats(padd);
    let (pdm, pdp) = stats(pdel);
    let size = std::fs::metadata(PLUGIN).map(|m| m.len()).unwrap_or(0);
    println!("pods: {n}");
    println!("| plugin | op | median ms | p99 ms |");
    println!("|---|---|---|---|");
    println!("| aws-cni | ADD | {am:.2} | {ap:.2} |");
    println!("| aws-cni | DEL | {dm:.2} | {dp:.2} |");
    println!("| ptp+host-local | ADD | {pam:.2} | {pap:.2} |");
    println!("| ptp+host-local | DEL | {pdm:.2} | {pdp:.2} |");
    println!(
        "ratio (ADD+DEL median, aws-cni / ptp): {:.3}",
        (am + dm) / (pam + pdm)
    );
    println!("ratio ADD: {:.3}, DEL: {:.3}", am / pam, dm / pdm);
    println!(
        "aws-cni binary used: {PLUGIN} ({:.2} MB)",
        size as f64 / 1_000_000.0
    );
}
