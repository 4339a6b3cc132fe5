//! The plugin *process* always ends with exactly one CNI document on stdout, whatever goes
//! wrong around it: a small stack limit inherited from the runtime, ipamd dying in the middle of
//! a request, stdout that cannot be written. A silent exit leaves the runtime with nothing to
//! report ("unexpected end of JSON input"), so each of these is checked on the real binary.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use common::node::{Node, PLUGIN, Pod};
use serde_json::Value;

/// A Unix socket where "ipamd" accepts each connection, reads the start of the request and
/// dies: what the plugin sees when ipamd is `kill -9`ed in the middle of a call.
fn dying_ipamd(sock: &std::path::Path) {
    let l = std::os::unix::net::UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        use std::io::Read;
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            // HTTP/2 preface, SETTINGS, then HEADERS and DATA of the call: well past 100 bytes.
            let mut buf = [0u8; 4096];
            let mut total = 0;
            while total < 100 {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        }
    });
}

/// The debug build needs between 64 and 128 KiB of main-thread stack for a full ADD
/// (measured with this helper: 64 KiB overflows, 128 KiB passes). The main thread's stack is
/// sized by the RLIMIT_STACK the runtime passes down (8 MiB by default); a stack overflow
/// would kill the plugin with SIGABRT and no output, so keep a wide margin: 256 KiB.
#[test]
fn add_and_del_fit_in_a_256_kib_stack() {
    require_root!();
    let node = Node::new(Ipv4Addr::new(198, 18, 40, 0));
    let mut conf = node.conf("1.0.0");
    let pod = Pod::new("stack");
    let add = node.cni_limited("ADD", &pod, &conf, Some(256 * 1024));
    assert_eq!(add.code, 0, "{add:?}");
    let res = add.json();
    assert!(res["ips"][0]["address"].is_string(), "{res}");
    conf["prevResult"] = res;
    let del = node.cni_limited("DEL", &pod, &conf, Some(256 * 1024));
    assert_eq!(del.code, 0, "{del:?}");
    assert_eq!(node.ipamd.live(), 0);
}

/// ipamd dying in the middle of a call is "try again" (code 11) with the broken connection
/// named, not an answer from ipamd (tonic reports it as `Unknown: transport error`).
#[test]
fn ipamd_dying_mid_call_is_try_again() {
    require_root!();
    let node = Node::new(Ipv4Addr::new(198, 18, 41, 0));
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("dying.sock");
    dying_ipamd(&sock);
    let mut conf = node.conf("1.1.0");
    conf["ipamdSocket"] = Value::String(sock.display().to_string());
    let pod = Pod::new("dying");
    for verb in ["ADD", "CHECK", "GC"] {
        let o = node.cni_limited(verb, &pod, &conf, Some(256 * 1024));
        let d = o.json();
        assert!(o.stderr.is_empty(), "{verb}: {o:?}");
        assert_eq!(o.code, 1, "{verb}: {o:?}");
        assert_eq!(d["code"], 11, "{verb}: {d}");
        let details = d["details"].as_str().unwrap_or_default();
        assert!(
            details.contains("before ipamd answered"),
            "{verb}: {details}"
        );
        assert!(details.contains(&sock.display().to_string()), "{details}");
        // The cause from the source chain, not tonic's wrapper ("Unknown: transport error").
        assert!(!details.contains("Unknown"), "{details}");
    }
    // DEL tears down locally and succeeds, as with ipamd down.
    let o = node.cni("DEL", &pod, &conf);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.trim().is_empty(), "{o:?}");
}

/// A result that cannot be written to stdout is a failure the runtime can see (exit code 1,
/// reason on stderr), not a silent success with nothing printed.
#[test]
fn unwritable_stdout_is_a_failure() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(PLUGIN)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write the CNI result to stdout"),
        "{stderr}"
    );
}
