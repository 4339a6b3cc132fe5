//! Test support, never shipped: a stand-in for ipamd that serves grpc.health.v1 on
//! `AWS_VPC_CNI_IPAMD_SOCKET` and records what it observed, so the entrypoint's ordering can be
//! checked from inside the child it starts.
//!
//! Environment:
//! - `AWS_VPC_CNI_IPAMD_SOCKET`: socket path (required).
//! - `FAKE_IPAMD_SERVE_AFTER_MS`: delay before the overall status becomes SERVING (default 0).
//! - `FAKE_IPAMD_LISTEN_EARLY`: `1` = listen from the start and answer NOT_SERVING until then;
//!   otherwise the socket does not exist before the delay (connection refused).
//! - `FAKE_IPAMD_STATUS`: `serving` (default) or `not_serving`: the status after the delay.
//! - `FAKE_IPAMD_EXIT_AFTER_MS` / `FAKE_IPAMD_EXIT_CODE`: exit with that code (default 0) this
//!   long after start, whatever the state.
//! - `FAKE_IPAMD_REPORT`: file that receives `key=value` lines:
//!   `plugin_present_at_start`, `conflist_present_before_serving`, `serving`, `sigterm`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;
use tonic_health::ServingStatus;

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn ms(name: &str) -> Option<Duration> {
    var(name)
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

fn report(line: &str) {
    let Some(path) = var("FAKE_IPAMD_REPORT") else {
        return;
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
        let _ = f.sync_all();
    }
}

fn bind(path: &Path) -> std::io::Result<UnixListenerStream> {
    let _ = std::fs::remove_file(path);
    Ok(UnixListenerStream::new(UnixListener::bind(path)?))
}

async fn serve(
    incoming: UnixListenerStream,
    svc: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) {
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming(incoming)
        .await
    {
        eprintln!("fake-ipamd: server error: {e}");
        std::process::exit(70);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(socket) = var(awscni_proto::IPAMD_SOCKET_ENV).map(PathBuf::from) else {
        eprintln!("fake-ipamd: AWS_VPC_CNI_IPAMD_SOCKET not set");
        std::process::exit(64);
    };
    let serve_after = ms("FAKE_IPAMD_SERVE_AFTER_MS").unwrap_or_default();
    let listen_early = var("FAKE_IPAMD_LISTEN_EARLY").as_deref() == Some("1");
    let final_status = match var("FAKE_IPAMD_STATUS").as_deref() {
        Some("not_serving") => ServingStatus::NotServing,
        _ => ServingStatus::Serving,
    };
    let conflist = var("HOST_CNI_CONFDIR_PATH").map(|d| PathBuf::from(d).join("10-aws.conflist"));
    let plugin = var("HOST_CNI_BIN_PATH").map(|d| PathBuf::from(d).join("aws-cni"));
    report(&format!(
        "plugin_present_at_start={}",
        plugin.as_ref().is_some_and(|p| p.is_file())
    ));

    if let Some(after) = ms("FAKE_IPAMD_EXIT_AFTER_MS") {
        let code: i32 = var("FAKE_IPAMD_EXIT_CODE")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            report(&format!("exit={code}"));
            std::process::exit(code);
        });
    }
    let Ok(mut sigterm) = signal(SignalKind::terminate()) else {
        std::process::exit(71);
    };
    tokio::spawn(async move {
        sigterm.recv().await;
        report("sigterm");
        std::process::exit(0);
    });

    let (reporter, svc) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status(awscni_proto::HEALTH_SERVICE_NAME, ServingStatus::NotServing)
        .await;
    let server = if listen_early {
        match bind(&socket) {
            Ok(inc) => Some(tokio::spawn(serve(inc, svc.clone()))),
            Err(e) => {
                eprintln!("fake-ipamd: bind {}: {e}", socket.display());
                std::process::exit(72);
            }
        }
    } else {
        None
    };
    tokio::time::sleep(serve_after).await;
    // The check the entrypoint test relies on: at the instant health turns SERVING, the
    // conflist must not exist yet.
    report(&format!(
        "conflist_present_before_serving={}",
        conflist.as_ref().is_some_and(|p| p.exists())
    ));
    reporter.set_service_status("", final_status).await;
    reporter
        .set_service_status(awscni_proto::HEALTH_SERVICE_NAME, final_status)
        .await;
    let server = match server {
        Some(s) => s,
        None => match bind(&socket) {
            Ok(inc) => tokio::spawn(serve(inc, svc)),
            Err(e) => {
                eprintln!("fake-ipamd: bind {}: {e}", socket.display());
                std::process::exit(72);
            }
        },
    };
    report("serving");
    let _ = server.await;
}
