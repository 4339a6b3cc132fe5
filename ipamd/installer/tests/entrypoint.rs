//! The real `aws-vpc-cni` entrypoint binary starting a real child (the fake ipamd, which
//! serves grpc.health.v1 on a Unix socket after a delay).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Layout, entries, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const LIMIT: Duration = Duration::from_secs(60);

fn conflist_only_after_health(listen_early: bool) {
    let l = Layout::new();
    let mut child = l.spawn(
        l.entrypoint()
            .env("FAKE_IPAMD_SERVE_AFTER_MS", "1500")
            .env(
                "FAKE_IPAMD_LISTEN_EARLY",
                if listen_early { "1" } else { "0" },
            )
            .env("POD_MTU", "1450")
            .env("AWS_VPC_K8S_CNI_VETHPREFIX", "abc")
            .env("ENABLE_BANDWIDTH_PLUGIN", "true"),
    );
    assert!(
        wait_for(LIMIT, || l.conflist().exists()),
        "conflist never written; report: {:?}\n{}",
        l.report_lines(),
        l.log()
    );
    let report = l.report_lines();
    // Seen by ipamd itself at the instant before it turned SERVING.
    assert!(
        report.contains(&"conflist_present_before_serving=false".to_string()),
        "{report:?}"
    );
    assert!(
        report.contains(&"plugin_present_at_start=true".to_string()),
        "plugin must be installed before ipamd starts: {report:?}"
    );

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(l.conflist()).unwrap()).unwrap();
    assert_eq!(v["name"], "aws-cni");
    assert_eq!(v["plugins"][0]["type"], "aws-cni");
    assert_eq!(v["plugins"][0]["mtu"], "1450");
    assert_eq!(v["plugins"][0]["vethPrefix"], "abc");
    assert_eq!(v["plugins"][1]["type"], "portmap");
    assert_eq!(v["plugins"][2]["type"], "bandwidth");
    let mode = std::fs::metadata(l.conflist())
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o644);

    let plugin = l.bin.join("aws-cni");
    assert_eq!(
        std::fs::read(&plugin).unwrap(),
        std::fs::read(&l.plugin_src).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&plugin).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    // No temporary files left next to the final names.
    assert_eq!(entries(&l.bin), vec!["aws-cni"]);
    assert_eq!(entries(&l.conf), vec!["10-aws.conflist"]);

    // SIGTERM to the entrypoint reaches ipamd, and a requested stop is a clean exit.
    kill(Pid::from_raw(child.pid()), Signal::SIGTERM).unwrap();
    let st = child
        .wait_timeout(LIMIT)
        .unwrap_or_else(|| panic!("entrypoint did not exit: {}", l.log()));
    assert_eq!(st.code(), Some(0), "{st:?}\n{}", l.log());
    assert!(
        l.report_lines().contains(&"sigterm".to_string()),
        "{:?}",
        l.report_lines()
    );
}

#[test]
fn conflist_written_only_after_health_check_passes_not_serving_first() {
    // ipamd listens at once but answers NOT_SERVING for 1.5 s.
    conflist_only_after_health(true);
}

#[test]
fn conflist_written_only_after_health_check_passes_socket_absent_first() {
    // ipamd's socket does not exist for 1.5 s (connection refused / ENOENT).
    conflist_only_after_health(false);
}

#[test]
fn exits_nonzero_when_ipamd_dies_after_becoming_healthy() {
    for (ipamd_code, want) in [("0", 1), ("7", 7)] {
        let l = Layout::new();
        let mut child = l.spawn(
            l.entrypoint()
                .env("FAKE_IPAMD_EXIT_AFTER_MS", "1500")
                .env("FAKE_IPAMD_EXIT_CODE", ipamd_code),
        );
        let st = child
            .wait_timeout(LIMIT)
            .unwrap_or_else(|| panic!("entrypoint did not exit: {}", l.log()));
        assert_eq!(
            st.code(),
            Some(want),
            "ipamd exit {ipamd_code}: {st:?}\n{}",
            l.log()
        );
        // It was healthy first, so the conflist had been written.
        assert!(l.conflist().exists());
    }
}

#[test]
fn exits_nonzero_and_writes_no_conflist_when_ipamd_dies_before_health() {
    let l = Layout::new();
    let mut child = l.spawn(
        l.entrypoint()
            .env("FAKE_IPAMD_SERVE_AFTER_MS", "600000")
            .env("FAKE_IPAMD_LISTEN_EARLY", "1")
            .env("FAKE_IPAMD_EXIT_AFTER_MS", "800")
            .env("FAKE_IPAMD_EXIT_CODE", "3"),
    );
    let st = child
        .wait_timeout(LIMIT)
        .unwrap_or_else(|| panic!("entrypoint did not exit: {}", l.log()));
    assert_eq!(st.code(), Some(3), "{st:?}\n{}", l.log());
    assert!(!l.conflist().exists());
    assert!(l.report_lines().contains(&"exit=3".to_string()));
}

#[test]
fn invalid_environment_names_variable_and_value_and_starts_nothing() {
    let l = Layout::new();
    let out = l
        .entrypoint()
        .env("POD_MTU", "70000")
        .env("AWS_VPC_K8S_PLUGIN_LOG_FILE", "stdout")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("POD_MTU=\"70000\""), "{err}");
    assert!(
        err.contains("AWS_VPC_K8S_PLUGIN_LOG_FILE=\"stdout\""),
        "{err}"
    );
    assert!(!l.bin.exists(), "plugin installed despite invalid env");
    assert!(!l.report.exists(), "ipamd started despite invalid env");
}

#[test]
fn missing_ipamd_binary_is_a_clear_failure() {
    let l = Layout::new();
    let out = l
        .entrypoint()
        .env("AWS_VPC_CNI_IPAMD_BIN", l.dir.path().join("no-such-ipamd"))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-ipamd"), "{err}");
    assert!(!l.conflist().exists());
}

/// While the entrypoint installs a large plugin over an older one, a reader that keeps opening
/// the final name only ever sees the complete old file or the complete new file.
#[test]
fn plugin_copy_is_atomic_for_concurrent_readers() {
    const OLD_LEN: usize = 1 << 20;
    const NEW_LEN: usize = 48 << 20;
    let l = Layout::new();
    std::fs::write(&l.plugin_src, vec![b'N'; NEW_LEN]).unwrap();
    std::fs::create_dir_all(&l.bin).unwrap();
    let dest = l.bin.join("aws-cni");
    std::fs::write(&dest, vec![b'O'; OLD_LEN]).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let seen_new = Arc::new(AtomicUsize::new(0));
    let seen_old = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (stop, seen_new, seen_old, dest) = (
            stop.clone(),
            seen_new.clone(),
            seen_old.clone(),
            dest.clone(),
        );
        std::thread::spawn(move || -> Result<(), String> {
            let mut buf = Vec::with_capacity(NEW_LEN);
            while !stop.load(Ordering::Relaxed) {
                let mut f = match std::fs::File::open(&dest) {
                    Ok(f) => f,
                    Err(e) => return Err(format!("final name vanished: {e}")),
                };
                buf.clear();
                f.read_to_end(&mut buf).unwrap();
                let (want, counter) = match buf.first() {
                    Some(b'O') => ((b'O', OLD_LEN), &seen_old),
                    Some(b'N') => ((b'N', NEW_LEN), &seen_new),
                    other => return Err(format!("unexpected first byte {other:?}")),
                };
                if buf.len() != want.1 || buf.iter().any(|&b| b != want.0) {
                    return Err(format!(
                        "partial file visible: {} bytes starting with {:?}",
                        buf.len(),
                        want.0 as char
                    ));
                }
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    // Start the install only once the watcher has read the old file at least once.
    assert!(wait_for(LIMIT, || seen_old.load(Ordering::Relaxed) > 0));
    // Let ipamd die right after becoming healthy: only the copy matters here.
    let mut child = l.spawn(
        l.entrypoint()
            .env("FAKE_IPAMD_EXIT_AFTER_MS", "300")
            .env("FAKE_IPAMD_EXIT_CODE", "9"),
    );
    let st = child
        .wait_timeout(LIMIT)
        .unwrap_or_else(|| panic!("entrypoint did not exit: {}", l.log()));
    // Keep reading a little after the copy too, so the new file is observed.
    wait_for(Duration::from_secs(10), || {
        seen_new.load(Ordering::Relaxed) > 0
    });
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap().unwrap();
    assert_eq!(st.code(), Some(9));
    assert!(seen_new.load(Ordering::Relaxed) > 0);
    assert!(
        seen_old.load(Ordering::Relaxed) > 0,
        "watcher never saw the old file"
    );
    assert_eq!(entries(&l.bin), vec!["aws-cni"]);
}

/// When the conflist cannot be written, the entrypoint fails and stops the ipamd it started
/// instead of leaving it orphaned.
#[test]
fn conflist_write_failure_stops_ipamd() {
    let l = Layout::new();
    // A regular file where the conf dir should be: create_dir_all fails.
    std::fs::write(&l.conf, b"not a directory").unwrap();
    let mut child = l.spawn(l.entrypoint().env("FAKE_IPAMD_SERVE_AFTER_MS", "200"));
    let st = child
        .wait_timeout(LIMIT)
        .unwrap_or_else(|| panic!("entrypoint did not exit: {}", l.log()));
    assert_ne!(st.code(), Some(0), "{}", l.log());
    assert!(l.log().contains("etc-cni-net.d"), "{}", l.log());
    assert!(
        wait_for(LIMIT, || l.report_lines().contains(&"sigterm".to_string())),
        "ipamd was not stopped: {:?}",
        l.report_lines()
    );
}
