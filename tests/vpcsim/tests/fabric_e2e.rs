//! End-to-end tests of the fabric through the real `vpcsim` binary, the real aws-sdk-ec2 and
//! real traffic between network namespaces. Root only (CI runs as root). Every namespace used
//! here carries a prefix unique to this test process (`vsft<tag><pid>`), and `vpcsim down`
//! removes them on every exit path (guard) and after a crashed earlier run (stale sweep).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use vpcsim::fabric::{ns, state::Description};

const BIN: &str = env!("CARGO_BIN_EXE_vpcsim");

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "fabric tests create network namespaces and must run as root"
    );
}

/// Prefix for this test: `vsft` + a tag outside the hex digits + this process's pid in hex.
fn prefix(tag: char) -> String {
    assert!(('g'..='z').contains(&tag));
    format!("vsft{tag}{:x}", std::process::id())
}

/// Removes namespaces left by earlier test processes that died (their pid is gone).
fn sweep_stale() {
    let mut seen = std::collections::BTreeSet::new();
    for name in ns::list_with_prefix("vsft") {
        let Some((p, _)) = name.split_once('-') else {
            continue;
        };
        let Some(pid) = p.get(5..).and_then(|h| i32::from_str_radix(h, 16).ok()) else {
            continue;
        };
        if !ns::pid_alive(pid) && seen.insert(p.to_owned()) {
            let _ = Command::new(BIN)
                .args([
                    "down",
                    "--prefix",
                    p,
                    "--state-dir",
                    "/tmp/vpcsim-fabric-test-stale",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A running `vpcsim`; `vpcsim down` on drop, whatever happened.
struct Up {
    prefix: String,
    state_dir: tempfile::TempDir,
    desc: Description,
}

impl Up {
    fn start(tag: char, extra: &[&str]) -> Up {
        require_root();
        sweep_stale();
        let prefix = prefix(tag);
        let state_dir = tempfile::tempdir().unwrap();
        let out = Command::new(BIN)
            .args(["up", "--prefix", &prefix, "--state-dir"])
            .arg(state_dir.path())
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            // Clean up whatever a failed start left.
            down(&prefix, state_dir.path());
            panic!("vpcsim up failed: {stderr}");
        }
        let desc: Description = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "bad JSON from up ({e}): {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        Up {
            prefix,
            state_dir,
            desc,
        }
    }

    fn down(&self) -> serde_json::Value {
        down(&self.prefix, self.state_dir.path())
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        down(&self.prefix, self.state_dir.path());
    }
}

fn down(prefix: &str, state_dir: &Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["down", "--prefix", prefix, "--state-dir"])
        .arg(state_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vpcsim down failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ip(ns: &str, args: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip -n {ns} {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One ping, retried a few times (the first packet may wait for ARP).
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

/// Raw HTTP/1.0 exchange from inside `ns` (the socket is opened on a thread that entered it).
/// Returns (status, body).
fn http_in(ns_name: &str, addr: SocketAddr, request: String) -> (u16, String) {
    let (status, body) = ns::run_in(ns_name, move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, body.to_owned())
    })
    .unwrap();
    (status, body)
}

/// `TcpExt: IPReversePathFilter` of a namespace: packets dropped by rp_filter. Read through
/// `/proc/thread-self` because `/proc/self/net` shows the main thread's namespace.
fn rp_filter_drops(ns_name: &str) -> u64 {
    let text = ns::run_in(ns_name, || {
        std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap()
    })
    .unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let names: Vec<&str> = lines[0].split_whitespace().collect();
    let values: Vec<&str> = lines[1].split_whitespace().collect();
    let i = names
        .iter()
        .position(|n| *n == "IPReversePathFilter")
        .unwrap();
    values[i].parse().unwrap()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls the admin endpoint until every emulator change so far is wired.
fn wait_in_sync(admin: &str) {
    let hostport = admin.trim_start_matches("http://").to_owned();
    wait_until("the fabric is in sync", Duration::from_secs(10), || {
        let mut s = std::net::TcpStream::connect(&hostport).unwrap();
        write!(s, "GET /fabric/status HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let body = resp.split_once("\r\n\r\n").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["in_sync"] == serde_json::Value::Bool(true)
    });
}

fn link_mac(ns: &str, dev: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", "dev", dev])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v[0]["address"].as_str().map(str::to_owned)
}

fn ec2_client(endpoint: &str) -> aws_sdk_ec2::Client {
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-west-2"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

fn assert_gone(up: &Up, holders: &[u32], serve_pid: u32) {
    let left = ns::list_with_prefix(&format!("{}-", up.prefix));
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    for pid in holders.iter().chain([&serve_pid]) {
        wait_until(
            &format!("pid {pid} is gone"),
            Duration::from_secs(5),
            || !ns::pid_alive(*pid as i32),
        );
    }
}

#[test]
fn second_eni_is_wired_and_a_pod_behind_it_reaches_the_vpc_and_the_internet() {
    let up = Up::start('g', &["--nodes", "2"]);
    let d = up.desc.clone();
    assert_eq!(d.nodes.len(), 2);
    let (n1, n2) = (&d.nodes[0], &d.nodes[1]);
    for n in [n1, n2] {
        assert!(ns::exists(&n.namespace), "{} missing", n.namespace);
        assert_eq!(
            link_mac(&n.namespace, "eth0").as_deref(),
            Some(n.mac.as_str())
        );
    }
    // Node to node over the primary ENIs, and to the internet.
    assert!(
        ping(&n1.namespace, &n2.primary_ip),
        "node1 cannot reach node2"
    );
    assert!(
        ping(&n1.namespace, &d.external.address),
        "node1 cannot reach the internet"
    );

    // A second ENI through the real SDK: create, attach at device 1, assign two secondaries.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ec2 = ec2_client(&d.ec2_endpoint);
    let eni = rt
        .block_on(
            ec2.create_network_interface()
                .subnet_id(&n1.subnet_id)
                .send(),
        )
        .unwrap()
        .network_interface
        .unwrap();
    let eni_id = eni.network_interface_id.clone().unwrap();
    let eni_ip = eni.private_ip_address.clone().unwrap();
    let eni_mac = eni.mac_address.clone().unwrap();
    let attachment = rt
        .block_on(
            ec2.attach_network_interface()
                .network_interface_id(&eni_id)
                .instance_id(&n1.instance_id)
                .device_index(1)
                .send(),
        )
        .unwrap()
        .attachment_id
        .unwrap();
    let assigned: Vec<String> = rt
        .block_on(
            ec2.assign_private_ip_addresses()
                .network_interface_id(&eni_id)
                .secondary_private_ip_address_count(2)
                .send(),
        )
        .unwrap()
        .assigned_private_ip_addresses
        .unwrap()
        .into_iter()
        .map(|a| a.private_ip_address.unwrap())
        .collect();
    assert_eq!(assigned.len(), 2);
    wait_in_sync(&d.admin_endpoint);

    // The ENI is hot-plugged into node1 as eth1 with its MAC, down and without addresses.
    assert_eq!(
        link_mac(&n1.namespace, "eth1").as_deref(),
        Some(eni_mac.as_str())
    );
    assert!(!ip(&n1.namespace, "-4 addr show dev eth1").contains("inet "));
    let vpc_routes = ip(&d.vpc_namespace, "route show proto 250");
    for a in assigned.iter().chain([&eni_ip]) {
        assert!(
            vpc_routes.contains(&format!("{a} via 169.254.0.1")),
            "{a} not routed:\n{vpc_routes}"
        );
    }

    // Configure node1 like ipamd (secondary ENI, table 2) and the plugin (one pod) would.
    let n1ns = n1.namespace.as_str();
    let pod_ns = format!("{}-pod", up.prefix); // swept by `vpcsim down` with the rest
    let pod_ip = &assigned[0];
    let gw = &d.subnets[0].gateway;
    let plen = d.subnets[0].cidr.split('/').nth(1).unwrap();
    let subnet = &d.subnets[0].cidr;
    ns::create(&pod_ns).unwrap();
    for c in [
        "link set dev eth1 up".to_owned(),
        format!("addr add {eni_ip}/{plen} dev eth1"),
        format!("route add {gw} dev eth1 scope link table 2"),
        format!("route add default via {gw} dev eth1 table 2"),
        format!("route del {subnet} dev eth1"),
        format!("rule add from {eni_ip} lookup 2 prio 32765"),
        format!("link add hveth0 type veth peer name eth0 netns {pod_ns}"),
        "link set dev hveth0 up".to_owned(),
        format!("route add {pod_ip}/32 dev hveth0 scope link"),
        format!("rule add to {pod_ip} lookup main prio 512"),
        format!("rule add from {pod_ip} lookup 2 prio 1536"),
    ] {
        ip(n1ns, &c);
    }
    let hveth_mac = link_mac(n1ns, "hveth0").unwrap();
    for c in [
        "link set dev lo up".to_owned(),
        "link set dev eth0 up".to_owned(),
        format!("addr add {pod_ip}/32 dev eth0"),
        "route add 169.254.1.1 dev eth0 scope link".to_owned(),
        "route add default via 169.254.1.1 dev eth0".to_owned(),
        format!("neigh replace 169.254.1.1 lladdr {hveth_mac} dev eth0 nud permanent"),
    ] {
        ip(&pod_ns, &c);
    }

    // The pod reaches the other node and the internet through its own ENI.
    assert!(ping(&pod_ns, &n2.primary_ip), "pod cannot reach node2");
    assert!(
        ping(&pod_ns, &d.external.address),
        "pod cannot reach the internet"
    );
    // Nothing SNATs it (the VPC router does not masquerade): the internet sees the pod IP.
    let ext: SocketAddr = format!("{}:80", d.external.address).parse().unwrap();
    let (status, body) = http_in(&pod_ns, ext, "GET / HTTP/1.0\r\n\r\n".into());
    assert_eq!((status, body.trim()), (200, pod_ip.as_str()));

    // Source/destination check: without the from-pod rule the pod's packets leave through
    // eth0, whose ENI does not own the pod IP, and the VPC drops them, as EC2 does.
    ip(n1ns, &format!("rule del from {pod_ip} lookup 2 prio 1536"));
    let drops_before = rp_filter_drops(&d.vpc_namespace);
    assert!(
        !ping(&pod_ns, &n2.primary_ip),
        "VPC accepted a foreign source address on eth0"
    );
    assert!(
        rp_filter_drops(&d.vpc_namespace) > drops_before,
        "the VPC did not drop the packets by its source check"
    );
    ip(n1ns, &format!("rule add from {pod_ip} lookup 2 prio 1536"));
    assert!(
        ping(&pod_ns, &n2.primary_ip),
        "pod lost connectivity after restoring the rule"
    );

    // A delegated /28 on the same ENI is delivered to it too: give its first address to
    // node1 (on lo, with the ENI's table for replies) and reach it from node2.
    let prefix28 = rt
        .block_on(
            ec2.assign_private_ip_addresses()
                .network_interface_id(&eni_id)
                .ipv4_prefix_count(1)
                .send(),
        )
        .unwrap()
        .assigned_ipv4_prefixes
        .unwrap()[0]
        .ipv4_prefix
        .clone()
        .unwrap();
    wait_in_sync(&d.admin_endpoint);
    let in_prefix = prefix28.split('/').next().unwrap().to_owned();
    ip(n1ns, &format!("addr add {in_prefix}/32 dev lo"));
    ip(
        n1ns,
        &format!("rule add from {in_prefix} lookup 2 prio 1536"),
    );
    assert!(
        ping(&n2.namespace, &in_prefix),
        "{prefix28} not delivered to its ENI"
    );

    // IMDS inside the node, at 169.254.169.254:80, shows the new ENI and its addresses.
    let imds: SocketAddr = "169.254.169.254:80".parse().unwrap();
    let (status, token) = http_in(
        n1ns,
        imds,
        "PUT /latest/api/token HTTP/1.0\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n".into(),
    );
    assert_eq!(status, 200);
    let get = |path: &str| {
        http_in(
            n1ns,
            imds,
            format!(
                "GET /latest/meta-data/{path} HTTP/1.0\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n"
            ),
        )
    };
    assert_eq!(get("instance-id"), (200, n1.instance_id.clone()));
    let (status, macs) = get("network/interfaces/macs/");
    assert_eq!(status, 200);
    assert!(macs.contains(&n1.mac) && macs.contains(&eni_mac), "{macs}");
    let (_, ips) = get(&format!("network/interfaces/macs/{eni_mac}/local-ipv4s"));
    for a in assigned.iter().chain([&eni_ip]) {
        assert!(
            ips.lines().any(|l| l == a),
            "{a} missing from local-ipv4s: {ips}"
        );
    }

    // EC2 inside the node at the advertised address.
    let ec2_in: SocketAddr = format!(
        "{}:80",
        d.ec2_endpoint_in_node.trim_start_matches("http://")
    )
    .parse()
    .unwrap();
    let form = "Action=DescribeInstances&Version=2016-11-15";
    let (status, xml) = http_in(
        n1ns,
        ec2_in,
        format!(
            "POST / HTTP/1.0\r\nContent-Type: application/x-www-form-urlencoded\r\nAuthorization: AWS4-HMAC-SHA256 Credential=AKIDTEST/20260101/us-west-2/ec2/aws4_request, SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ),
    );
    assert_eq!(status, 200, "{xml}");
    assert!(xml.contains(&n1.instance_id), "{xml}");

    // The node's private mount namespace: node-local directories over production paths.
    let probe = format!("probe-{}", up.prefix);
    let mut enter = n1.enter.clone();
    enter.extend([
        "sh".into(),
        "-c".into(),
        format!("echo hi > /run/aws-node/{probe}"),
    ]);
    let st = Command::new(&enter[0]).args(&enter[1..]).status().unwrap();
    assert!(st.success());
    let local = n1.dirs.iter().find(|(t, _)| t == "/run/aws-node").unwrap();
    assert!(
        Path::new(&local.1).join(&probe).exists(),
        "node-local dir did not get the file"
    );
    assert!(
        !Path::new("/run/aws-node").join(&probe).exists(),
        "the write leaked to the host"
    );
    // sysfs inside the node shows the node's links; cgroups stay visible for runtimes.
    let in_node = |args: &[&str]| {
        let mut cmd = n1.enter.clone();
        cmd.extend(args.iter().map(|a| (*a).to_owned()));
        let out = Command::new(&cmd[0]).args(&cmd[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        in_node(&["cat", "/sys/class/net/eth0/address"]).trim(),
        n1.mac
    );
    if Path::new("/sys/fs/cgroup").is_dir() {
        let host = std::fs::read_dir("/sys/fs/cgroup").unwrap().count();
        assert_eq!(
            in_node(&["ls", "-A", "/sys/fs/cgroup"]).lines().count(),
            host
        );
    }

    // Detach: eth1 disappears from the node and its addresses from the VPC.
    rt.block_on(
        ec2.detach_network_interface()
            .attachment_id(&attachment)
            .send(),
    )
    .unwrap();
    wait_in_sync(&d.admin_endpoint);
    assert_eq!(link_mac(n1ns, "eth1"), None);
    let vpc_routes = ip(&d.vpc_namespace, "route show proto 250");
    assert!(!vpc_routes.contains(&format!("{eni_ip} ")), "{vpc_routes}");
    assert!(
        !ping(&pod_ns, &n2.primary_ip),
        "pod still reachable after its ENI was detached"
    );

    // Down removes everything, including the test's own pod namespace.
    let holders: Vec<u32> = d.nodes.iter().map(|n| n.holder_pid).collect();
    let report = up.down();
    assert_eq!(report["prefix"], serde_json::json!(up.prefix));
    assert_gone(&up, &holders, d.pid);
}

#[test]
fn down_cleans_up_after_a_crash_including_processes_inside_nodes() {
    let up = Up::start('h', &["--nodes", "1"]);
    let d = up.desc.clone();
    let node = &d.nodes[0];
    // Something running inside the node, as ipamd would.
    let mut enter = node.enter.clone();
    enter.extend(["sleep".into(), "1000".into()]);
    let mut inside = Command::new(&enter[0]).args(&enter[1..]).spawn().unwrap();
    let inside_pid = inside.id();
    wait_until(
        "the process entered the node",
        Duration::from_secs(5),
        || {
            let net = std::fs::metadata(format!("/proc/{inside_pid}/ns/net"));
            let node_ns = std::fs::metadata(ns::netns_path(&node.namespace));
            use std::os::unix::fs::MetadataExt;
            matches!((net, node_ns), (Ok(a), Ok(b)) if a.ino() == b.ino())
        },
    );
    // Crash: the serve process dies without cleaning up.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("serve died", Duration::from_secs(5), || {
        !ns::pid_alive(d.pid as i32)
    });
    assert!(
        ns::exists(&node.namespace),
        "namespaces vanished without down"
    );
    let status: serde_json::Value = serde_json::from_slice(
        &Command::new(BIN)
            .args(["status", "--prefix", &up.prefix, "--state-dir"])
            .arg(up.state_dir.path())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(status["running"], serde_json::json!(false));

    let report = up.down();
    let killed: Vec<u32> = serde_json::from_value(report["processes_killed"].clone()).unwrap();
    assert!(killed.contains(&inside_pid), "{report}");
    assert!(killed.contains(&node.holder_pid), "{report}");
    let _ = inside.wait();
    assert_gone(&up, &[node.holder_pid], d.pid);
}

#[test]
fn up_refuses_a_prefix_that_is_running_and_status_reports_it() {
    let up = Up::start('i', &["--nodes", "1"]);
    let again = Command::new(BIN)
        .args(["up", "--nodes", "1", "--prefix", &up.prefix, "--state-dir"])
        .arg(up.state_dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(
        &Command::new(BIN)
            .args(["status", "--prefix", &up.prefix, "--state-dir"])
            .arg(up.state_dir.path())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(status["running"], serde_json::json!(true));
    assert_eq!(
        status["fabric"]["in_sync"],
        serde_json::json!(true),
        "{status}"
    );
    assert_eq!(
        status["description"]["nodes"][0]["instance_id"],
        serde_json::json!(up.desc.nodes[0].instance_id)
    );
    // The first instance still works after the refused second start; `vpcsim exec` runs a
    // command on its node and passes the exit status through.
    let exec = |args: &[&str]| {
        Command::new(BIN)
            .args(["exec", "--prefix", &up.prefix, "--state-dir"])
            .arg(up.state_dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = exec(&["node1", "--", "cat", "/sys/class/net/eth0/address"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        up.desc.nodes[0].mac
    );
    assert_eq!(
        exec(&["node1", "--", "sh", "-c", "exit 3"]).status.code(),
        Some(3)
    );
    assert!(!exec(&["node9", "--", "true"]).status.success());
}

#[test]
fn up_over_a_crashed_instance_cleans_it_up_first() {
    let up = Up::start('k', &["--nodes", "1"]);
    let old = up.desc.clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("serve died", Duration::from_secs(5), || {
        !ns::pid_alive(old.pid as i32)
    });
    let out = Command::new(BIN)
        .args(["up", "--nodes", "1", "--prefix", &up.prefix, "--state-dir"])
        .arg(up.state_dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new: Description = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(new.pid, old.pid);
    assert!(
        !ns::pid_alive(old.nodes[0].holder_pid as i32),
        "old node survived"
    );
    assert!(ns::pid_alive(new.nodes[0].holder_pid as i32));
    assert!(ping(&new.nodes[0].namespace, &new.external.address));
    let holders = [new.nodes[0].holder_pid];
    up.down();
    assert_gone(&up, &holders, new.pid);
}

#[test]
fn serve_exits_when_its_vpc_namespace_is_deleted_behind_its_back() {
    require_root();
    sweep_stale();
    let prefix = prefix('l');
    let state_dir = tempfile::tempdir().unwrap();
    let mut running = vpcsim::fabric::run::Running::start(
        Path::new(BIN),
        &prefix,
        state_dir.path(),
        &["--nodes=1".to_owned()],
    )
    .unwrap();
    let pid = running.desc.pid as i32;
    assert!(ns::pid_alive(pid));
    ns::delete(&running.desc.vpc_namespace).unwrap();
    wait_until("serve noticed and exited", Duration::from_secs(10), || {
        !ns::pid_alive(pid)
    });
    // It cleaned up on its way out; stopping again is harmless.
    let report = running.stop().unwrap();
    assert!(!report.stopped_serve);
    assert!(ns::list_with_prefix(&format!("{prefix}-")).is_empty());
}
