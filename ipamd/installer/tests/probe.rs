//! The real `grpc-health-probe` binary against a real grpc.health.v1 server on a Unix socket
//! (the fake ipamd): every exit code upstream's probe defines.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{FAKE_IPAMD, PROBE, Proc, wait_for};

fn start_fake(socket: &std::path::Path, status: &str) -> Proc {
    let p = Proc(
        Command::new(FAKE_IPAMD)
            .env("AWS_VPC_CNI_IPAMD_SOCKET", socket)
            .env("FAKE_IPAMD_STATUS", status)
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_for(Duration::from_secs(20), || socket.exists()),
        "fake ipamd never listened"
    );
    p
}

fn probe(args: &[&str]) -> (i32, String) {
    let out = Command::new(PROBE).args(args).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exit_codes_match_upstream() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let serving = dir.path().join("serving.sock");
    let not_serving = dir.path().join("not-serving.sock");
    let _a = start_fake(&serving, "serving");
    let _b = start_fake(&not_serving, "not_serving");
    let addr = format!("-addr=unix://{}", serving.display());

    // Upstream manifest's exact command line.
    let (code, err) = probe(&[&addr, "-connect-timeout=5s", "-rpc-timeout=5s"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("SERVING"), "{err}");

    // The named service ipamd registers, with Go-style separate-value flags.
    let sock = format!("unix://{}", serving.display());
    let (code, err) = probe(&["-addr", &sock, "-service", "grpc.health.v1.aws-node"]);
    assert_eq!(code, 0, "{err}");

    // Unknown service: the server answers NOT_FOUND, an RPC failure.
    let (code, err) = probe(&[&addr, "-service=no.such.Service"]);
    assert_eq!(code, 3, "{err}");

    // NOT_SERVING.
    let (code, err) = probe(&[&format!("-addr=unix://{}", not_serving.display())]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("NOT_SERVING"), "{err}");

    // Nothing listening.
    let missing = dir.path().join("missing.sock");
    let (code, err) = probe(&[&format!("-addr=unix://{}", missing.display())]);
    assert_eq!(code, 2, "{err}");

    // Bad arguments.
    for bad in [
        &[][..],
        &["-addr=unix://relative.sock"][..],
        &[&addr, "-rpc-timeout=0s"][..],
        &[&addr, "-no-such-flag"][..],
    ] {
        let (code, err) = probe(bad);
        assert_eq!(code, 1, "{bad:?}: {err}");
    }
}

#[test]
fn socket_that_is_not_grpc_is_a_failure_not_success() {
    // A Unix listener that accepts and immediately closes: the probe must not report healthy.
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let sock = dir.path().join("closer.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let t = std::thread::spawn(move || {
        for _ in 0..4 {
            match listener.accept() {
                Ok((s, _)) => drop(s),
                Err(_) => break,
            }
        }
    });
    let (code, err) = probe(&[
        &format!("-addr=unix://{}", sock.display()),
        "-connect-timeout=2s",
        "-rpc-timeout=2s",
    ]);
    assert!(code == 2 || code == 3, "code {code}: {err}");
    drop(t);
}
