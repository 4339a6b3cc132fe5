//! The `max-pods` binary: output, exit codes, messages, IMDS.
#![cfg(feature = "cli")]
#![allow(clippy::unwrap_used)]

use awscni_limits::{Options, PdPolicy, all, compute, lookup, parse_eni_max_pods};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

fn max_pods(args: &[&str]) -> Output {
    max_pods_env(args, &[])
}

fn max_pods_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_max-pods"));
    c.args(args)
        .env_remove("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_EC2");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Runs and expects success with a single integer on stdout.
fn value(args: &[&str]) -> u32 {
    let o = max_pods(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    let s = stdout(&o);
    assert_eq!(s.lines().count(), 1, "{args:?} printed {s:?}");
    s.trim().parse().unwrap()
}

/// The computed value for comparison, from the library (same table).
fn expected(name: &str, opts: Options) -> awscni_limits::MaxPods {
    compute(lookup(name).unwrap(), &opts)
}

fn calc() -> Options {
    Options {
        pd_policy: PdPolicy::Calculator,
        ..Options::default()
    }
}

#[test]
fn issue_examples() {
    for (t, v) in [
        ("m5.large", 29),
        ("t3.medium", 17),
        ("c5.18xlarge", 737),
        ("p4d.24xlarge", 737),
    ] {
        assert_eq!(
            value(&["--instance-type", t, "--show-max-allowed"]),
            v,
            "{t}"
        );
    }
    // Recommendation caps: ≤ 30 vCPUs 110, more 250.
    assert_eq!(value(&["--instance-type", "m5.large"]), 29);
    assert_eq!(value(&["--instance-type", "m5.4xlarge"]), 110);
    assert_eq!(value(&["--instance-type", "c5.18xlarge"]), 250);
    assert_eq!(value(&["--instance-type", "p5.48xlarge"]), 100);
}

#[test]
fn calculator_flags() {
    let base = ["--instance-type", "m5.large", "--cni-version", "1.19.2"];
    let with = |extra: &[&str]| value(&[&base[..], extra].concat());
    assert_eq!(with(&[]), 29);
    assert_eq!(with(&["--cni-prefix-delegation-enabled"]), 110);
    assert_eq!(
        with(&["--cni-prefix-delegation-enabled", "--show-max-allowed"]),
        434
    );
    assert_eq!(with(&["--cni-custom-networking-enabled"]), 20);
    assert_eq!(with(&["--cni-max-eni", "2"]), 20);
    assert_eq!(with(&["--cni-max-eni", "9"]), 29);
    assert_eq!(with(&["--trunk"]), 20);
    assert_eq!(with(&["--unmanaged-enis", "1", "--trunk"]), 11);
    assert_eq!(with(&["--unmanaged-enis", "7"]), 2);

    // --trunk on a type that likely has no trunk: reserved anyway, with a note.
    let o = max_pods(&["--instance-type", "t3.medium", "--trunk"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o).trim(), "12");
    assert!(stderr(&o).contains("not trunk-capable"), "{}", stderr(&o));
    let o = max_pods(&["--instance-type", "m5.large", "--trunk"]);
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

#[test]
fn prefix_delegation_on_non_nitro_notes_and_uses_sip() {
    let xen = all()
        .iter()
        .find(|t| t.hypervisor == Some(awscni_limits::Hypervisor::Xen))
        .unwrap();
    let o = max_pods(&[
        "--instance-type",
        &xen.name,
        "--cni-prefix-delegation-enabled",
        "--show-max-allowed",
    ]);
    assert!(o.status.success());
    let sip = expected(&xen.name, calc()).max_pods;
    assert_eq!(stdout(&o).trim(), sip.to_string());
    let e = stderr(&o);
    assert!(e.contains("not supported") && e.contains(&xen.name), "{e}");

    // Bare metal: the calculator rule (SIP) with a note that names bare metal.
    let o = max_pods(&[
        "--instance-type",
        "m5.metal",
        "--cni-prefix-delegation-enabled",
        "--show-max-allowed",
    ]);
    assert!(o.status.success());
    assert_eq!(stdout(&o).trim(), "737");
    assert!(stderr(&o).contains("bare-metal"), "{}", stderr(&o));

    // Old CNI version.
    let o = max_pods(&[
        "--instance-type",
        "m5.large",
        "--cni-version",
        "1.8.0",
        "--cni-prefix-delegation-enabled",
    ]);
    assert!(o.status.success());
    assert_eq!(stdout(&o).trim(), "29");
    assert!(stderr(&o).contains("1.9.0"), "{}", stderr(&o));
}

#[test]
fn unknown_type_lists_close_matches() {
    let o = max_pods(&["--instance-type", "m5.lrage"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).is_empty());
    let e = stderr(&o);
    assert!(e.contains("unknown instance type \"m5.lrage\""), "{e}");
    assert!(e.contains("did you mean: m5.large"), "{e}");
    let o = max_pods(&["--instance-type", "qqqqqqqqqqqqq"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!stderr(&o).contains("did you mean"), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_1() {
    for args in [
        &[][..],
        &["--instance-type"],
        &["--instance-type", "m5.large", "--cni-max-eni", "0"],
        &["--instance-type", "m5.large", "--cni-max-eni", "-1"],
        &["--instance-type", "m5.large", "--cni-version", "one.two"],
        &["--instance-type", "m5.large", "--no-such-flag"],
        &["--instance-type", "m5.large", "--all"],
        &["--instance-type", "m5.large", "--explain", "--json"],
        &["--instance-type", ""],
        &[
            "--instance-type",
            "m5.large",
            "--endpoint-url",
            "http://127.0.0.1:1",
        ],
    ] {
        let o = max_pods(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).is_empty(), "{args:?}");
        assert!(!stderr(&o).is_empty(), "{args:?}");
    }
    let o = max_pods(&["--instance-type", "m5.large", "--cni-version", "one.two"]);
    assert!(stderr(&o).contains("one.two"), "{}", stderr(&o));
}

#[test]
fn help_and_version_exit_0() {
    let o = max_pods(&["--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("--cni-prefix-delegation-enabled"));
    let o = max_pods(&["--version"]);
    assert!(o.status.success());
    let v = stdout(&o);
    assert!(v.contains(&awscni_limits::source().version), "{v}");
}

#[test]
fn all_is_sorted_parseable_and_matches_single_lookups() {
    let o = max_pods(&["--all"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let rows = parse_eni_max_pods(&text).unwrap();
    // Every line is a row (no comments), one per known type, sorted.
    assert_eq!(text.lines().count(), rows.len());
    assert_eq!(rows.len(), all().len());
    for w in rows.windows(2) {
        assert!(w[0].0 < w[1].0, "{} !< {}", w[0].0, w[1].0);
    }
    for (name, v) in &rows {
        assert_eq!(*v, expected(name, calc()).max_pods, "{name}");
    }
    let get = |n: &str| rows.iter().find(|r| r.0 == n).unwrap().1;
    assert_eq!(get("m5.large"), 29);
    assert_eq!(
        get("c5.18xlarge"),
        737,
        "--all is uncapped like eni-max-pods.txt"
    );
    assert_eq!(get("p4d.24xlarge"), 737);

    // Options apply to every row; the note counts skipped non-nitro types.
    let o = max_pods(&["--all", "--cni-prefix-delegation-enabled"]);
    assert!(o.status.success());
    let pd = parse_eni_max_pods(&stdout(&o)).unwrap();
    let get = |n: &str| pd.iter().find(|r| r.0 == n).unwrap().1;
    assert_eq!(get("m5.large"), 434);
    assert_eq!(get("m5.metal"), 737);
    assert!(stderr(&o).contains("non-nitro"), "{}", stderr(&o));
}

#[test]
fn json_and_explain() {
    let o = max_pods(&["--instance-type", "p5.48xlarge", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["instance_type"], "p5.48xlarge");
    assert_eq!(v["default_card_enis"], 2);
    assert_eq!(v["instance_enis"], 64);
    assert_eq!(v["max_pods"], 100);
    assert_eq!(v["value"], 100);
    assert_eq!(v["source"], "table");

    let o = max_pods(&["--all", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), all().len());

    let o = max_pods(&[
        "--instance-type",
        "c5.18xlarge",
        "--explain",
        "--cni-custom-networking-enabled",
    ]);
    assert!(o.status.success());
    let s = stdout(&o);
    assert_eq!(s.lines().last().unwrap(), "250");
    assert!(s.contains("14 × 49 + 2 = 688"), "{s}");
    assert!(s.contains("cap               250"), "{s}");
}

/// A small IMDSv2 server on loopback: PUT token, then GET with the token; 401 without it.
struct FakeImds {
    url: String,
    requests: Arc<AtomicUsize>,
}

fn fake_imds(instance_type: &'static str, require_token: bool) -> FakeImds {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            r.read_line(&mut first).unwrap();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h == "\r\n" || h.is_empty() {
                    break;
                }
                headers.push(h.to_ascii_lowercase());
            }
            let has = |k: &str| headers.iter().any(|h| h.starts_with(k));
            let (status, body) = if first.starts_with("PUT /latest/api/token ") {
                if has("x-aws-ec2-metadata-token-ttl-seconds:") {
                    ("200 OK", "TOKEN123".to_string())
                } else {
                    ("400 Bad Request", String::new())
                }
            } else if require_token
                && !headers
                    .iter()
                    .any(|h| h.trim() == "x-aws-ec2-metadata-token: token123")
            {
                ("401 Unauthorized", String::new())
            } else if first.starts_with("GET /latest/meta-data/instance-type ") {
                ("200 OK", instance_type.to_string())
            } else {
                ("404 Not Found", "Not Found".to_string())
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.flush();
        }
    });
    FakeImds { url, requests }
}

#[test]
fn instance_type_from_imds() {
    let imds = fake_imds("m5.large", true);
    let o = max_pods_env(
        &["--instance-type-from-imds", "--cni-version", "1.19.0"],
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "29");
    assert_eq!(
        imds.requests.load(Ordering::SeqCst),
        2,
        "token + instance-type"
    );

    // An unknown type from IMDS is the same clear error.
    let imds = fake_imds("m5.lrage", false);
    let o = max_pods_env(
        &["--instance-type-from-imds"],
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url)],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("did you mean: m5.large"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn imds_failures_are_clear() {
    // Nothing listening: connection refused, the message names the endpoint.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let o = max_pods_env(
        &["--instance-type-from-imds"],
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &url)],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&url), "{}", stderr(&o));

    // A server that answers 401 to everything (token refused).
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let o = max_pods_env(
        &["--instance-type-from-imds"],
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &url)],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("HTTP 401"), "{}", stderr(&o));

    let o = max_pods_env(
        &["--instance-type-from-imds"],
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", "ftp://x")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("ftp://x"), "{}", stderr(&o));
}

#[cfg(feature = "ec2")]
#[test]
fn from_ec2_unreachable_endpoint_fails_cleanly() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = max_pods_env(
        &[
            "--instance-type",
            "m5.large",
            "--from-ec2",
            "--endpoint-url",
            &format!("http://127.0.0.1:{port}"),
            "--region",
            "us-west-2",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "AKIDTEST"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_MAX_ATTEMPTS", "1"),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).is_empty());
    assert!(
        stderr(&o).contains("DescribeInstanceTypes failed"),
        "{}",
        stderr(&o)
    );
}
