//! The metrics and introspection servers over real sockets (loopback TCP on ephemeral ports and
//! a Unix socket), fed by a real EC2 client talking to the vpcsim emulator, scraped with a real
//! HTTP client, plus the real `ipamd status` binary rendering them.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ipamd::config::Config;
use ipamd::datastore::{Datastore, EniInfo, IpamKey, PodMeta};
use ipamd::ec2::{Ec2Api, RetryPolicy};
use ipamd::introspect::{
    EniInfosJson, Observe, PodJson, PoolJson, Snapshot, effective_max_enis, http_get, start_servers,
};
use ipamd::limiter::LimiterSettings;
use ipamd::metrics::{Extras, parse_text};
use ipamd::pool::Limits;
use vpcsim::server::{Sim, SimConfig};

const M5_LARGE: Limits = Limits {
    ipv4_per_eni: 10,
    max_enis: 3,
    max_pods: 29,
    unmanaged_enis: 0,
    trunk_reserve: 0,
};

struct Node {
    ds: Mutex<Datastore>,
    cfg: Config,
}

impl Observe for Node {
    fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::from_datastore(&self.ds.lock().unwrap(), SystemTime::now());
        s.limits = M5_LARGE;
        s.max_enis = effective_max_enis(&M5_LARGE, &self.cfg);
        s.ready = true;
        s
    }
    fn config(&self) -> &Config {
        &self.cfg
    }
}

fn config(vars: &[(&str, &str)]) -> Config {
    let m: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(&move |k| m.get(k).cloned()).unwrap().0
}

fn raw_request(addr: &str, req: &str) -> String {
    let mut out = String::new();
    if let Some(p) = addr.strip_prefix("unix:") {
        let mut s = std::os::unix::net::UnixStream::connect(p).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        s.read_to_string(&mut out).unwrap();
    } else {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        s.read_to_string(&mut out).unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_scrape_real_ec2_counters_and_the_datastore() {
    // --- a real EC2 client against vpcsim, through a small token bucket so callers wait.
    let sim = Sim::new(SimConfig::default());
    let subnet_id = sim
        .add_subnet("10.0.0.0/24".parse().unwrap(), None, &[])
        .unwrap();
    let inst = sim.add_instance("m5.large", &subnet_id).unwrap();
    let ep = sim.serve_loopback().await.unwrap();
    let ec2 = common::vpcsim_ec2(
        ep.ec2_url(),
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(5),
            max: Duration::from_millis(20),
        },
        LimiterSettings {
            qps: 50.0,
            burst: 2,
        },
    )
    .await;
    let ips = ec2
        .assign_private_ips(&inst.primary_eni_id, 3)
        .await
        .unwrap();
    assert_eq!(ips.len(), 3);
    for _ in 0..2 {
        ec2.describe_network_interfaces(std::slice::from_ref(&inst.primary_eni_id))
            .await
            .unwrap();
    }
    let err = ec2
        .describe_network_interfaces(&["eni-0000000000000dead".to_string()])
        .await
        .unwrap_err();
    let code = err.code.clone().unwrap();

    // --- the datastore: those three addresses, one pod, one released (cooling).
    let now = SystemTime::now();
    let mut ds = Datastore::new(false, Duration::from_secs(30));
    let mac = inst
        .mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    ds.add_eni(
        EniInfo {
            id: inst.primary_eni_id.clone(),
            mac,
            device_number: 0,
            is_primary: true,
            excluded: false,
            trunk: false,
            efa: false,
            subnet: "10.0.0.0/24".parse().unwrap(),
            subnet_id: inst.subnet_id.clone(),
            primary_ip: inst.primary_ip,
        },
        now,
    );
    for ip in &ips {
        ds.add_cidr(&inst.primary_eni_id, (*ip).into()).unwrap();
    }
    let meta = |n: &str| PodMeta {
        namespace: "shop".into(),
        name: n.into(),
        interfaces_count: 1,
    };
    let kept = ds
        .assign(
            &IpamKey::new("aws-cni", "cid-kept", "eth0"),
            meta("cart-0"),
            now,
        )
        .unwrap();
    ds.assign(
        &IpamKey::new("aws-cni", "cid-gone", "eth0"),
        meta("cart-1"),
        now,
    )
    .unwrap();
    ds.release(&IpamKey::new("aws-cni", "cid-gone", "eth0"), now)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let sock = format!("unix:{}", dir.path().join("run/introspect.sock").display());
    let node = Arc::new(Node {
        ds: Mutex::new(ds),
        cfg: config(&[("INTROSPECTION_BIND_ADDRESS", &sock)]),
    });
    let stats = ec2.stats();
    let extras = Extras {
        ec2: Some(stats.clone()),
        limiter: Some(ec2.limiter()),
        imds: None,
    };
    let servers = start_servers(node.clone(), extras, "v1.2.3-test", "127.0.0.1:0").await;
    let metrics_addr = servers.metrics.as_ref().unwrap().local_addr().to_owned();
    assert!(metrics_addr.starts_with("127.0.0.1:"));
    assert_ne!(metrics_addr, "127.0.0.1:0");
    assert_eq!(servers.introspection.as_ref().unwrap().local_addr(), sock);

    // --- scrape /metrics over TCP (blocking client on a blocking thread).
    let a = metrics_addr.clone();
    let (code_m, text) = tokio::task::spawn_blocking(move || http_get(&a, "/metrics").unwrap())
        .await
        .unwrap();
    assert_eq!(code_m, 200);
    let (samples, types) = parse_text(&text).unwrap();
    let get = |name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .unwrap_or_else(|| panic!("{name} {labels:?} missing in\n{text}"))
            .value
    };
    let snap = stats.snapshot();
    let assign = &snap["AssignPrivateIpAddresses"];
    let describe = &snap["DescribeNetworkInterfaces"];
    assert_eq!(describe.errors[&code], 1);
    for (action, s) in [
        ("AssignPrivateIpAddresses", assign),
        ("DescribeNetworkInterfaces", describe),
    ] {
        assert_eq!(
            get("awscni_ec2api_req_count", &[("fn", action)]),
            s.attempts as f64
        );
        assert_eq!(
            get("awscni_ec2api_error_count", &[("fn", action)]),
            s.errors.values().sum::<u64>() as f64
        );
        assert_eq!(
            get(
                "awscni_ec2api_call_count",
                &[("fn", action), ("result", "success")]
            ),
            s.ok as f64
        );
        // Upstream's labels: one series per (error, status); together they count every attempt.
        let latency: Vec<&ipamd::metrics::Sample> = samples
            .iter()
            .filter(|x| {
                x.name == "awscni_aws_api_latency_ms_count"
                    && x.labels.get("api").map(String::as_str) == Some(action)
            })
            .collect();
        assert_eq!(
            latency.iter().map(|x| x.value).sum::<f64>(),
            s.attempts as f64
        );
        assert_eq!(
            get(
                "awscni_aws_api_latency_ms_count",
                &[("api", action), ("error", "false"), ("status", "200")]
            ),
            s.ok as f64
        );
        assert!(
            get(
                "awscni_aws_api_latency_ms_sum",
                &[("api", action), ("error", "false"), ("status", "200")]
            ) > 0.0
        );
    }
    // The unknown ENI: a failed attempt with EC2's HTTP status (400 for a client error).
    assert_eq!(
        get(
            "awscni_aws_api_latency_ms_count",
            &[
                ("api", "DescribeNetworkInterfaces"),
                ("error", "true"),
                ("status", "400")
            ]
        ),
        1.0
    );
    assert_eq!(describe.ok, 2);
    assert_eq!(
        get(
            "awscni_aws_api_error_count",
            &[("api", "DescribeNetworkInterfaces"), ("error", &code)]
        ),
        1.0
    );
    assert_eq!(types["awscni_aws_api_latency_ms"], "summary");
    let attempts: u64 = snap.values().map(|s| s.attempts).sum();
    assert_eq!(get("awscni_ec2_limiter_tokens", &[]), attempts as f64);
    // Burst 2 at 50 QPS: the later calls had to wait for the bucket.
    assert!(get("awscni_ec2_limiter_wait_seconds", &[]) > 0.0);
    // Gauges from the datastore.
    assert_eq!(get("awscni_total_ip_addresses", &[]), 3.0);
    assert_eq!(get("awscni_assigned_ip_addresses", &[]), 1.0);
    assert_eq!(get("awscni_cooling_ip_addresses", &[]), 1.0);
    assert_eq!(get("awscni_free_ip_addresses", &[]), 1.0);
    assert_eq!(get("awscni_eni_allocated", &[]), 1.0);
    assert_eq!(
        get(
            "awscni_assigned_ip_per_cidr",
            &[("cidr", &format!("{}/32", kept.addr))]
        ),
        1.0
    );
    assert_eq!(get("awscni_build_info", &[("version", "v1.2.3-test")]), 1.0);
    assert!(get("process_resident_memory_bytes", &[]) > 0.0);
    // The metrics port serves /metrics only.
    let a = metrics_addr.clone();
    let (c404, _) = tokio::task::spawn_blocking(move || http_get(&a, "/v1/enis").unwrap())
        .await
        .unwrap();
    assert_eq!(c404, 404);

    // --- introspection over the Unix socket.
    let s2 = sock.clone();
    let (enis, pods, pool, post, mode) = tokio::task::spawn_blocking(move || {
        let get = |p: &str| {
            let (c, b) = http_get(&s2, p).unwrap();
            assert_eq!(c, 200, "{p}: {b}");
            b
        };
        let enis: BTreeMap<String, EniInfosJson> = serde_json::from_str(&get("/v1/enis")).unwrap();
        let pods: BTreeMap<String, PodJson> = serde_json::from_str(&get("/v1/pods")).unwrap();
        let pool: PoolJson = serde_json::from_str(&get("/v1/pool")).unwrap();
        let post = raw_request(
            &s2,
            "POST /v1/enis HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s2.trim_start_matches("unix:"))
            .unwrap()
            .permissions()
            .mode();
        (enis, pods, pool, post, mode)
    })
    .await
    .unwrap();
    let card = &enis["0"];
    assert_eq!((card.total_ips, card.assigned_ips), (3, 1));
    let e = &card.enis[&inst.primary_eni_id];
    assert_eq!(e.ipv4_cidrs.len(), 3);
    let cidr = &e.ipv4_cidrs[&format!("{}/32", kept.addr)];
    let a = &cidr.addresses[&kept.addr.to_string()];
    assert_eq!(a.metadata.name, "cart-0");
    assert_eq!(a.key.container_id, "");
    assert_eq!(pods.len(), 1);
    assert_eq!(pods["cart-0_shop_cid-kept"].ip, kept.addr.to_string());
    assert_eq!(pool.ec2_errors["DescribeNetworkInterfaces"][&code], 1);
    assert_eq!((pool.assigned, pool.cooling, pool.free), (1, 1, 1));
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert_eq!(mode & 0o777, 0o600);

    // --- the real `ipamd status` binary.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipamd"))
        .args(["status", "--addr", &sock])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("max pods 29"), "{stdout}");
    assert!(
        stdout.contains("3 total, 1 used, 1 free, 1 cooling"),
        "{stdout}"
    );
    assert!(stdout.contains(&inst.primary_eni_id), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("shop/cart-0 ") && l.contains(&kept.addr.to_string())),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("DescribeNetworkInterfaces ") && l.contains(&code)),
        "{stdout}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipamd"))
        .args(["status", "--addr=unix:/nonexistent/ipamd-introspect.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ipamd-introspect.sock"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipamd"))
        .args(["status", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // --- dropping the servers closes both endpoints.
    let sock_path = dir.path().join("run/introspect.sock");
    drop(servers);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!sock_path.exists());
    assert!(std::net::TcpStream::connect(&metrics_addr).is_err());
}

#[tokio::test]
async fn disable_switches_and_tcp_introspection() {
    let node = Arc::new(Node {
        ds: Mutex::new(Datastore::new(false, Duration::from_secs(30))),
        cfg: config(&[
            ("DISABLE_METRICS", "true"),
            ("INTROSPECTION_BIND_ADDRESS", "127.0.0.1:0"),
        ]),
    });
    let s = start_servers(node, Extras::default(), "v", "127.0.0.1:0").await;
    assert!(s.metrics.is_none());
    let addr = s.introspection.as_ref().unwrap().local_addr().to_owned();
    let body = tokio::task::spawn_blocking(move || http_get(&addr, "/").unwrap())
        .await
        .unwrap();
    assert_eq!(body.0, 200);
    let v: serde_json::Value = serde_json::from_str(&body.1).unwrap();
    assert_eq!(v["AvailableCommands"][1], "/v1/enis");

    let node = Arc::new(Node {
        ds: Mutex::new(Datastore::new(false, Duration::from_secs(30))),
        cfg: config(&[("DISABLE_INTROSPECTION", "true")]),
    });
    let s = start_servers(node, Extras::default(), "v", "127.0.0.1:0").await;
    assert!(s.introspection.is_none());
    assert!(s.metrics.is_some());
}

/// PUT a vpcsim fault: every call of `action` fails with `code`.
async fn fail_always(admin: std::net::SocketAddr, action: &str, code: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = format!(r#"{{"error_rate":1.0,"error_code":"{code}"}}"#);
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let req = format!(
        "PUT /faults/{action} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 2"), "fault not accepted: {resp}");
}

/// `awscni_aws_utils_error_count` from the real ENI manager and EC2 client against vpcsim
/// faults: a creation whose rollback cannot delete the half-made ENI, and freeing an ENI EC2
/// will not describe; scraped over real HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_layer_failures_are_counted_under_upstream_labels() {
    use ipamd::ec2::AddressRequest;
    use ipamd::eni::{AssumeLinkPresent, Backoff, EniError, EniManager};
    use ipamd::imds::Imds;

    let sim = Sim::new(SimConfig::default());
    let node = common::vpcsim_node(&sim).await;
    // The node's manager settings, with a short delete retry: the fault below never clears.
    let mut st = node.mgr.settings().clone();
    st.delete_retry = Backoff {
        attempts: 2,
        initial: Duration::from_millis(5),
        max: Duration::from_millis(5),
    };
    let mgr = EniManager::new(
        node.ec2.clone(),
        Imds::new(node.src.clone()),
        AssumeLinkPresent,
        st,
    );
    let admin = node.ep.admin;
    fail_always(
        admin,
        "ModifyNetworkInterfaceAttribute",
        "UnauthorizedOperation",
    )
    .await;
    fail_always(admin, "DeleteNetworkInterface", "UnauthorizedOperation").await;
    let err = mgr
        .create_and_attach(AddressRequest::Ips(1))
        .await
        .unwrap_err();
    assert!(matches!(err, EniError::Ec2(_)), "{err:?}");
    fail_always(admin, "DescribeNetworkInterfaces", "UnauthorizedOperation").await;
    let err = mgr.free_eni("eni-0123456789abcdef0").await.unwrap_err();
    assert!(matches!(err, EniError::Ec2(_)), "{err:?}");

    let n = Arc::new(Node {
        ds: Mutex::new(Datastore::new(false, Duration::from_secs(30))),
        cfg: config(&[("DISABLE_INTROSPECTION", "true")]),
    });
    let servers = start_servers(
        n,
        Extras {
            ec2: Some(node.ec2.stats()),
            limiter: None,
            imds: None,
        },
        "v",
        "127.0.0.1:0",
    )
    .await;
    let addr = servers.metrics.as_ref().unwrap().local_addr().to_owned();
    let (code, text) = tokio::task::spawn_blocking(move || http_get(&addr, "/metrics").unwrap())
        .await
        .unwrap();
    assert_eq!(code, 200);
    let (samples, types) = parse_text(&text).unwrap();
    assert_eq!(types["awscni_aws_utils_error_count"], "counter");
    let utils: BTreeMap<(String, String), f64> = samples
        .iter()
        .filter(|s| s.name == "awscni_aws_utils_error_count")
        .map(|s| ((s.labels["fn"].clone(), s.labels["error"].clone()), s.value))
        .collect();
    let key = |f: &str| (f.to_owned(), "UnauthorizedOperation".to_owned());
    assert_eq!(
        utils,
        BTreeMap::from([
            (key("ENICleanupUponModifyNetworkErr"), 1.0),
            (key("getENIAttachmentIDFailed"), 1.0),
        ]),
        "{text}"
    );
    // The failed attempts also show in the latency summary with EC2's status (403).
    let failed: f64 = samples
        .iter()
        .filter(|s| {
            s.name == "awscni_aws_api_latency_ms_count"
                && s.labels.get("error").map(String::as_str) == Some("true")
                && s.labels.get("status").map(String::as_str) == Some("403")
        })
        .map(|s| s.value)
        .sum();
    // One ModifyNetworkInterfaceAttribute, two DeleteNetworkInterface, one describe.
    assert_eq!(failed, 4.0, "{text}");
}
