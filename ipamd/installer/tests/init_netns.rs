//! The real `aws-vpc-cni init` inside a network namespace this test creates (prefix
//! `awscni-inst-`), with a fake IMDS served from inside that namespace. Root only; the root
//! namespace's sysctls are read before and after to prove they were not touched.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;

use common::ENTRYPOINT;

const PREFIX: &str = "awscni-inst-";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip -n NS <words>`.
fn ip_str(words: &str, ns: &Netns) {
    let mut args = vec!["-n", ns.0.as_str()];
    args.extend(words.split_whitespace());
    ip(&args);
}

/// A namespace deleted on drop, also when the test panics.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("{PREFIX}{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Self(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    fn read_sysctl(&self, path: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "cat", path])
            .output()
            .unwrap();
        assert!(out.status.success(), "{path}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn write_sysctl(&self, path: &str, value: &str) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.0,
                "sh",
                "-c",
                &format!("echo {value} > {path}"),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{path}");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Removes namespaces with our prefix left by a killed earlier run.
fn clean_stale() {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name.starts_with(PREFIX) && !name.ends_with(&format!("-{}", std::process::id())) {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

fn root_sysctl(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn plugin_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for p in ["loopback", "portmap", "host-local"] {
        std::fs::write(d.path().join(p), format!("#!/bin/sh\n# {p}\n")).unwrap();
    }
    d
}

/// Serves IMDSv2 (`PUT /latest/api/token`, `GET /latest/meta-data/mac` with the token) from a
/// listener bound inside `ns`, on a thread that entered the namespace (setns affects only the
/// calling thread). Answers `count` requests, then stops.
fn fake_imds_in(
    ns: &Netns,
    mac: &'static str,
    count: usize,
) -> (std::thread::JoinHandle<Vec<String>>, u16) {
    let nsfile = std::fs::File::open(format!("/var/run/netns/{}", ns.0)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        nix::sched::setns(&nsfile, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        tx.send(listener.local_addr().unwrap().port()).unwrap();
        // Non-blocking accept with a deadline, so a run that never calls cannot hang the test.
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut seen = Vec::new();
        while seen.len() < count && std::time::Instant::now() < deadline {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
                Err(e) => panic!("accept: {e}"),
            };
            stream.set_nonblocking(false).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut token_ok = false;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if h.to_ascii_lowercase()
                    .starts_with("x-aws-ec2-metadata-token: tok123")
                {
                    token_ok = true;
                }
            }
            let (status, body) = match request_line.split_whitespace().take(2).collect::<Vec<_>>()[..]
            {
                ["PUT", "/latest/api/token"] => ("200 OK", "tok123"),
                ["GET", "/latest/meta-data/mac"] if token_ok => ("200 OK", mac),
                ["GET", _] => ("401 Unauthorized", ""),
                _ => ("404 Not Found", ""),
            };
            seen.push(format!("{} {}", request_line.trim(), status));
            let mut s = stream;
            write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
        seen
    });
    (handle, rx.recv().unwrap())
}

fn run_init(ns: &Netns, envs: &[(&str, String)]) -> std::process::Output {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.0, ENTRYPOINT, "init"])
        .env_clear();
    c.env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn init_sets_sysctls_only_in_its_namespace_using_imds_mac() {
    clean_stale();
    let ns = Netns::new("imds");
    // veth rather than dummy: some CI kernels ship without the dummy module.
    ip_str("link add prim0 type veth peer name other0", &ns);
    ip_str("link set prim0 address 0a:11:22:33:44:55", &ns);
    ip_str("link set other0 address 0a:11:22:33:44:66", &ns);
    ns.write_sysctl("/proc/sys/net/ipv4/conf/prim0/rp_filter", "1");
    ns.write_sysctl("/proc/sys/net/ipv4/conf/other0/rp_filter", "1");
    ns.write_sysctl("/proc/sys/net/ipv4/tcp_early_demux", "1");
    let root_demux = root_sysctl("/proc/sys/net/ipv4/tcp_early_demux");
    let root_fwd6 = root_sysctl("/proc/sys/net/ipv6/conf/all/forwarding");

    let (imds, port) = fake_imds_in(&ns, "0a:11:22:33:44:55", 2);
    let plugins = plugin_dir();
    let bin = tempfile::tempdir().unwrap();
    let out = run_init(
        &ns,
        &[
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                format!("http://127.0.0.1:{port}"),
            ),
            (
                "AWS_VPC_CNI_STD_PLUGINS_DIR",
                plugins.path().display().to_string(),
            ),
            ("HOST_CNI_BIN_PATH", bin.path().display().to_string()),
            ("DISABLE_TCP_EARLY_DEMUX", "true".to_string()),
            ("ENABLE_IPv6", "true".to_string()),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let requests = imds.join().unwrap();
    assert_eq!(
        requests,
        vec![
            "PUT /latest/api/token HTTP/1.1 200 OK".to_string(),
            "GET /latest/meta-data/mac HTTP/1.1 200 OK".to_string()
        ]
    );

    assert_eq!(
        ns.read_sysctl("/proc/sys/net/ipv4/conf/prim0/rp_filter"),
        "2"
    );
    assert_eq!(
        ns.read_sysctl("/proc/sys/net/ipv4/conf/other0/rp_filter"),
        "1"
    );
    assert_eq!(ns.read_sysctl("/proc/sys/net/ipv4/tcp_early_demux"), "0");
    assert_eq!(
        ns.read_sysctl("/proc/sys/net/ipv6/conf/all/forwarding"),
        "1"
    );
    assert_eq!(
        ns.read_sysctl("/proc/sys/net/ipv6/conf/prim0/accept_ra"),
        "2"
    );
    assert_eq!(
        ns.read_sysctl("/proc/sys/net/ipv6/conf/all/disable_ipv6"),
        "0"
    );

    // Standard plugins installed (the missing optional ones skipped).
    assert_eq!(
        common::entries(bin.path()),
        vec!["host-local", "loopback", "portmap"]
    );
    // The root namespace is untouched.
    assert_eq!(
        root_sysctl("/proc/sys/net/ipv4/tcp_early_demux"),
        root_demux
    );
    assert_eq!(
        root_sysctl("/proc/sys/net/ipv6/conf/all/forwarding"),
        root_fwd6
    );
}

#[test]
fn init_with_explicit_interface_and_failures_name_the_problem() {
    clean_stale();
    let ns = Netns::new("explicit");
    ip_str("link add ens5 type veth peer name ens5p", &ns);
    ns.write_sysctl("/proc/sys/net/ipv4/conf/ens5/rp_filter", "0");
    ns.write_sysctl("/proc/sys/net/ipv4/tcp_early_demux", "0");
    let plugins = plugin_dir();
    let bin = tempfile::tempdir().unwrap();
    let base = vec![
        (
            "AWS_VPC_CNI_STD_PLUGINS_DIR",
            plugins.path().display().to_string(),
        ),
        ("HOST_CNI_BIN_PATH", bin.path().display().to_string()),
    ];

    let mut env = base.clone();
    env.push(("AWS_VPC_CNI_PRIMARY_INTERFACE", "ens5".to_string()));
    let out = run_init(&ns, &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ns.read_sysctl("/proc/sys/net/ipv4/conf/ens5/rp_filter"),
        "2"
    );
    assert_eq!(ns.read_sysctl("/proc/sys/net/ipv4/tcp_early_demux"), "1");

    // An interface that is not in this namespace.
    let mut env = base.clone();
    env.push(("AWS_VPC_CNI_PRIMARY_INTERFACE", "nope0".to_string()));
    let out = run_init(&ns, &env);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope0"));

    // A required plugin missing from the image.
    std::fs::remove_file(plugins.path().join("portmap")).unwrap();
    let mut env = base.clone();
    env.push(("AWS_VPC_CNI_PRIMARY_INTERFACE", "ens5".to_string()));
    let out = run_init(&ns, &env);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("portmap"));
}
