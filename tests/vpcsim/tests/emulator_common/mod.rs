//! Shared helpers of the emulator tests: start a `Sim` on loopback, build a real aws-sdk-ec2
//! client against it, raw HTTP for what the SDK cannot express (unsigned calls, IMDS without
//! a token, the admin API).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vpcsim::{InstanceInfo, LoopbackEndpoints, Sim, SimConfig};

/// A running emulator with one subnet and one node.
pub struct Env {
    pub sim: Arc<Sim>,
    pub ep: LoopbackEndpoints,
    pub ec2: Client,
    pub subnet: String,
    pub node: InstanceInfo,
}

/// A real SDK client for `url`, retries off so every modelled error reaches the test.
pub fn client(url: &str) -> Client {
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-west-2"))
        .credentials_provider(Credentials::new("AKIDVPCSIM", "secret", None, None, "test"))
        .endpoint_url(url)
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(conf)
}

/// Starts a sim with `cfg`, a subnet `cidr` and one instance of `itype` in it.
pub async fn start(cfg: SimConfig, cidr: &str, itype: &str) -> Env {
    let sim = Sim::new(cfg);
    let subnet = sim.add_subnet(cidr.parse().unwrap(), None, &[]).unwrap();
    let node = sim.add_instance(itype, &subnet).unwrap();
    let ep = sim.serve_loopback().await.unwrap();
    let ec2 = client(&ep.ec2_url());
    Env {
        sim,
        ep,
        ec2,
        subnet,
        node,
    }
}

/// Asserts that `res` failed with `code` and HTTP `status`; returns the message.
#[macro_export]
macro_rules! expect_err {
    ($res:expr, $code:expr, $status:expr) => {{
        match $res {
            Ok(v) => panic!("expected {} but the call succeeded: {:?}", $code, v),
            Err(e) => {
                use aws_sdk_ec2::error::ProvideErrorMetadata;
                let code = e.code().unwrap_or("<none>").to_string();
                let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
                assert_eq!(code, $code, "wrong code: {e:?}");
                assert_eq!(status, $status, "wrong HTTP status for {code}");
                e.message().unwrap_or("").to_string()
            }
        }
    }};
}

/// One raw HTTP/1.1 exchange: returns (status, body).
pub async fn raw_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// An IMDSv2 token from `addr`.
pub async fn imds_token(addr: SocketAddr) -> String {
    let (st, body) = raw_http(
        addr,
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "300")],
        "",
    )
    .await;
    assert_eq!(st, 200);
    body
}

/// GET an IMDS path with a token: (status, body).
pub async fn imds_get(addr: SocketAddr, token: &str, path: &str) -> (u16, String) {
    raw_http(
        addr,
        "GET",
        path,
        &[("X-aws-ec2-metadata-token", token)],
        "",
    )
    .await
}
