//! Network namespaces and traffic: create/delete pod namespaces, run code inside a namespace on
//! an owned thread, `ip -j` queries, ping, and UDP probes that report the source address the
//! receiver saw (to check SNAT).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sched::CloneFlags;

/// Where `ip netns add` puts named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Path of a named namespace.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Runs `f` on a fresh thread moved into namespace `name`; the caller's namespace never
/// changes (the namespace is a per-thread property, and the thread dies afterwards).
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let path = netns_path(name);
    let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    std::thread::scope(|s| {
        let h = s.spawn(|| -> anyhow::Result<T> {
            nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("cannot enter network namespace {name}"))?;
            Ok(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(_) => bail!("thread inside namespace {name} panicked"),
        }
    })
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run(prog: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {prog}"))?;
    anyhow::ensure!(
        out.status.success(),
        "`{prog} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n <ns> -j <args…>` parsed as JSON (an empty answer is `[]`).
pub fn ip_json(ns: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut full = vec!["-n", ns, "-j"];
    full.extend_from_slice(args);
    let out = run("ip", &full)?;
    if out.trim().is_empty() {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_str(&out)
        .with_context(|| format!("`ip {}` printed bad JSON: {out}", full.join(" ")))
}

/// `ip -4 rule` of a namespace as (priority, rendered selector + action) pairs, e.g.
/// `(1536, "from 10.0.5.7 lookup 2")`.
pub fn rules(ns: &str) -> anyhow::Result<Vec<(u64, String)>> {
    let v = ip_json(ns, &["-4", "rule", "show"])?;
    let mut out = Vec::new();
    for r in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        let prio = r["priority"].as_u64().unwrap_or(0);
        let mut s = String::new();
        let src = r["src"].as_str().unwrap_or("all");
        s.push_str(&format!("from {src}"));
        if let Some(l) = r["srclen"].as_u64()
            && l != 32
        {
            s.push_str(&format!("/{l}"));
        }
        if let Some(d) = r["dst"].as_str() {
            s.push_str(&format!(" to {d}"));
            if let Some(l) = r["dstlen"].as_u64()
                && l != 32
            {
                s.push_str(&format!("/{l}"));
            }
        }
        if let Some(m) = r["fwmark"].as_str() {
            s.push_str(&format!(" fwmark {m}"));
        }
        if let Some(t) = r["table"].as_str() {
            s.push_str(&format!(" lookup {t}"));
        }
        out.push((prio, s));
    }
    Ok(out)
}

/// Destinations (`a.b.c.d` or `a.b.c.d/n`) of the IPv4 routes of `table` in a namespace, with
/// their device.
pub fn routes(ns: &str, table: &str) -> anyhow::Result<Vec<(String, String)>> {
    let v = ip_json(ns, &["-4", "route", "show", "table", table])?;
    Ok(v.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap_or_default().to_owned(),
                r["dev"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

/// IPv4 addresses configured on `dev` inside a namespace.
pub fn addrs(ns: &str, dev: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let v = ip_json(ns, &["-4", "addr", "show", "dev", dev])?;
    let mut out = Vec::new();
    for l in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        for a in l["addr_info"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let Some(ip) = a["local"].as_str().and_then(|s| s.parse().ok()) {
                out.push(ip);
            }
        }
    }
    Ok(out)
}

/// Names of the links in a namespace.
pub fn links(ns: &str) -> anyhow::Result<Vec<String>> {
    let v = ip_json(ns, &["link", "show"])?;
    Ok(v.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect())
}

/// Pings `dst` from namespace `ns` (up to 3 single-packet tries: the first may wait for ARP
/// or for the fabric to catch up).
pub fn ping(ns: &str, dst: &str) -> anyhow::Result<bool> {
    for _ in 0..3 {
        let ok = Command::new("ip")
            .args([
                "netns", "exec", ns, "ping", "-n", "-q", "-c", "1", "-W", "1", dst,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot run ping through `ip netns exec`")?
            .success();
        if ok {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Fails unless `dst` answers a ping from `ns`.
pub fn must_ping(ns: &str, dst: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        ping(ns, dst)?,
        "no ping reply from {dst} inside namespace {ns}"
    );
    Ok(())
}

/// Sends UDP datagrams from namespace `from_ns` to `dst:port`, received by a socket bound
/// inside `to_ns`, and returns the source address the receiver saw (None if nothing arrived).
/// Both sockets are opened by threads that entered their namespace.
pub fn udp_source_seen(
    from_ns: &str,
    to_ns: &str,
    dst: Ipv4Addr,
    port: u16,
) -> anyhow::Result<Option<Ipv4Addr>> {
    let to_file =
        File::open(netns_path(to_ns)).with_context(|| format!("cannot open namespace {to_ns}"))?;
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
    let to_name = to_ns.to_owned();
    let receiver = std::thread::spawn(move || -> anyhow::Result<Option<Ipv4Addr>> {
        let setup = (|| -> anyhow::Result<UdpSocket> {
            nix::sched::setns(to_file.as_fd(), CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("cannot enter {to_name}"))?;
            let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
                .with_context(|| format!("cannot bind UDP port {port} in {to_name}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            Ok(s)
        })();
        let sock = match setup {
            Ok(s) => {
                let _ = ready_tx.send(Ok(()));
                s
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let _ = ready_tx.send(Err(e));
                bail!("{msg}");
            }
        };
        let mut buf = [0u8; 64];
        match sock.recv_from(&mut buf) {
            Ok((_, SocketAddr::V4(a))) => Ok(Some(*a.ip())),
            Ok((_, SocketAddr::V6(_))) => Ok(None),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    });
    ready_rx
        .recv()
        .context("the UDP receiver thread died before binding")??;
    in_netns(from_ns, || -> anyhow::Result<()> {
        let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        // A few datagrams: the first may be lost while the neighbour entries resolve.
        for _ in 0..5 {
            let _ = s.send_to(b"e2e-snat-probe", SocketAddrV4::new(dst, port));
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })??;
    match receiver.join() {
        Ok(r) => r,
        Err(_) => bail!("the UDP receiver thread panicked"),
    }
}

/// A network namespace owned by a test (a pod's sandbox); deleted on drop.
#[derive(Debug)]
pub struct NetnsGuard {
    /// Name under `/run/netns`.
    pub name: String,
}

impl NetnsGuard {
    /// `ip netns add <name>` (and `lo` up, as a runtime does).
    pub fn create(name: &str) -> anyhow::Result<Self> {
        run("ip", &["netns", "add", name])?;
        let g = Self {
            name: name.to_owned(),
        };
        run("ip", &["-n", name, "link", "set", "lo", "up"])?;
        Ok(g)
    }

    /// Path for `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}
