//! A running vpcsim (`vpcsim up` … `vpcsim down`), and its admin API.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::ec2::Ec2;

/// The parts of `vpcsim up`'s JSON description the tests use (unknown fields are ignored, so
/// vpcsim may add more).
#[derive(Debug, Clone, Deserialize)]
pub struct Description {
    /// Namespace prefix.
    pub prefix: String,
    /// Region of the emulated EC2.
    pub region: String,
    /// Log file of the serve process.
    pub log_file: String,
    /// VPC IPv4 CIDRs.
    pub vpc_cidrs: Vec<String>,
    /// EC2 Query API on loopback.
    pub ec2_endpoint: String,
    /// EC2 Query API as seen from inside a node (`AWS_ENDPOINT_URL_EC2` for ipamd).
    pub ec2_endpoint_in_node: String,
    /// Admin API on loopback.
    pub admin_endpoint: String,
    /// The "internet" host.
    pub external: ExternalDesc,
    /// The nodes.
    pub nodes: Vec<NodeDesc>,
}

/// The external namespace.
#[derive(Debug, Clone, Deserialize)]
pub struct ExternalDesc {
    /// Network namespace name.
    pub namespace: String,
    /// Its address (stands for the internet).
    pub address: String,
}

/// One node (instance).
#[derive(Debug, Clone, Deserialize)]
pub struct NodeDesc {
    /// Short name (`node1`).
    pub name: String,
    /// Network namespace.
    pub namespace: String,
    /// Instance id.
    pub instance_id: String,
    /// Instance type.
    pub instance_type: String,
    /// Primary ENI id.
    pub primary_eni_id: String,
    /// Primary private IPv4.
    pub primary_ip: String,
}

/// Per-action counters of the emulated EC2 (`GET /counters`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub struct Counter {
    /// Calls received.
    #[serde(default)]
    pub calls: u64,
    /// Calls answered with an error.
    #[serde(default)]
    pub errors: u64,
    /// Calls answered with `RequestLimitExceeded` by a throttle.
    #[serde(default)]
    pub throttled: u64,
}

/// EC2 actions that change state (the rest are reads).
pub const MUTATING_ACTIONS: &[&str] = &[
    "CreateNetworkInterface",
    "AttachNetworkInterface",
    "DetachNetworkInterface",
    "DeleteNetworkInterface",
    "ModifyNetworkInterfaceAttribute",
    "AssignPrivateIpAddresses",
    "UnassignPrivateIpAddresses",
    "CreateTags",
    "DeleteTags",
];

/// A running vpcsim instance; `vpcsim down` on drop.
#[derive(Debug)]
pub struct Vpc {
    /// Its description.
    pub desc: Description,
    vpcsim: PathBuf,
    state_dir: PathBuf,
    down_done: bool,
}

impl Vpc {
    /// `vpcsim up --prefix <prefix> --state-dir <state_dir> --nodes <nodes> --instance-type
    /// <instance_type> <extra…>`.
    pub fn up(
        vpcsim: &Path,
        prefix: &str,
        state_dir: &Path,
        nodes: usize,
        instance_type: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create {}", state_dir.display()))?;
        let nodes_s = nodes.to_string();
        let mut args = vec![
            "up",
            "--prefix",
            prefix,
            "--nodes",
            &nodes_s,
            "--instance-type",
            instance_type,
        ];
        args.extend_from_slice(extra);
        let out = Command::new(vpcsim)
            .args(&args)
            .arg("--state-dir")
            .arg(state_dir)
            .output()
            .with_context(|| format!("cannot run {}", vpcsim.display()))?;
        if !out.status.success() {
            let _ = down(vpcsim, prefix, state_dir);
            bail!(
                "`vpcsim {} --state-dir {}` failed ({}):\n{}",
                args.join(" "),
                state_dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let desc: Description = match serde_json::from_slice(&out.stdout) {
            Ok(d) => d,
            Err(e) => {
                let _ = down(vpcsim, prefix, state_dir);
                bail!(
                    "`vpcsim up` printed no usable description ({e}): {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        };
        Ok(Self {
            desc,
            vpcsim: vpcsim.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            down_done: false,
        })
    }

    /// Node `i` (0-based).
    pub fn node(&self, i: usize) -> anyhow::Result<&NodeDesc> {
        self.desc
            .nodes
            .get(i)
            .with_context(|| format!("vpcsim has no node #{i}"))
    }

    /// An EC2 client on the loopback endpoint.
    pub fn ec2(&self) -> anyhow::Result<Ec2> {
        Ec2::new(&self.desc.ec2_endpoint, &self.desc.region)
    }

    /// `vpcsim down` now (also done on drop).
    pub fn down(&mut self) -> anyhow::Result<()> {
        self.down_done = true;
        down(&self.vpcsim, &self.desc.prefix, &self.state_dir)
    }

    /// One admin API request; returns (status, body).
    pub fn admin(&self, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
        http(&self.desc.admin_endpoint, method, path, body)
    }

    /// Per-action EC2 counters.
    pub fn counters(&self) -> anyhow::Result<BTreeMap<String, Counter>> {
        let (status, body) = self.admin("GET", "/counters", "")?;
        anyhow::ensure!(status == 200, "GET /counters: HTTP {status}: {body}");
        serde_json::from_str(&body).with_context(|| format!("bad /counters JSON: {body}"))
    }

    /// Zeroes the counters.
    pub fn reset_counters(&self) -> anyhow::Result<()> {
        let (status, body) = self.admin("DELETE", "/counters", "")?;
        anyhow::ensure!(
            (200..300).contains(&status),
            "DELETE /counters: HTTP {status}: {body}"
        );
        Ok(())
    }

    /// Installs a fault (`PUT /faults/{action}`, `*` = every action), body = FaultSpec JSON.
    pub fn set_fault(&self, action: &str, spec: &serde_json::Value) -> anyhow::Result<()> {
        let (status, body) = self.admin("PUT", &format!("/faults/{action}"), &spec.to_string())?;
        anyhow::ensure!(
            (200..300).contains(&status),
            "PUT /faults/{action}: HTTP {status}: {body}"
        );
        Ok(())
    }

    /// Removes every fault.
    pub fn clear_faults(&self) -> anyhow::Result<()> {
        let (status, body) = self.admin("DELETE", "/faults", "")?;
        anyhow::ensure!(
            (200..300).contains(&status),
            "DELETE /faults: HTTP {status}: {body}"
        );
        Ok(())
    }

    /// Last lines of the vpcsim log (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        crate::tail(Path::new(&self.desc.log_file), n)
    }
}

impl Drop for Vpc {
    fn drop(&mut self) {
        if !self.down_done
            && let Err(e) = down(&self.vpcsim, &self.desc.prefix, &self.state_dir)
        {
            eprintln!("e2e: {e:#}");
        }
    }
}

/// `vpcsim down --prefix <prefix> --state-dir <state_dir>`.
pub fn down(vpcsim: &Path, prefix: &str, state_dir: &Path) -> anyhow::Result<()> {
    let out = Command::new(vpcsim)
        .args(["down", "--prefix", prefix, "--state-dir"])
        .arg(state_dir)
        .output()
        .with_context(|| format!("cannot run {}", vpcsim.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "`vpcsim down --prefix {prefix} --state-dir {}` failed: {}",
        state_dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Minimal HTTP/1.0 client (the admin API is plain JSON on loopback).
/// One HTTP/1.0 request to `base` (`http://host:port`); returns (status, body).
pub fn http(base: &str, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let hostport = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut s = TcpStream::connect(&hostport)
        .with_context(|| format!("cannot connect to the admin API at {hostport}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {hostport}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .with_context(|| format!("{method} {path}: cannot read the answer"))?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method} {path}: bad HTTP answer {head:?}"))?;
    Ok((status, body.to_owned()))
}
