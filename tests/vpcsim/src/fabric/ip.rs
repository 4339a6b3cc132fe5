//! A thin wrapper over the iproute2 `ip` binary.
//!
//! The fabric deliberately drives the kernel through iproute2 rather than through the product's
//! own netlink facade: the fabric stands for AWS, and sharing code with the system under test
//! would let a netlink bug hide itself (the product and its "cloud" would agree on the same
//! mistake). `ip -json` gives structured reads and `ip -batch -` applies a whole change set with
//! one process spawn, which keeps a reconcile pass at a handful of `fork`/`exec`s.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use serde::Deserialize;

use super::FabricError;

/// The `ip` binary; overridable for unusual installs.
fn ip_binary() -> String {
    std::env::var("VPCSIM_IP").unwrap_or_else(|_| "ip".to_owned())
}

/// Runs `ip [-n ns] args…` and returns its stdout.
pub fn run(ns: Option<&str>, args: &[&str]) -> Result<String, FabricError> {
    let mut full: Vec<&str> = Vec::with_capacity(args.len() + 2);
    if let Some(ns) = ns {
        full.extend(["-n", ns]);
    }
    full.extend_from_slice(args);
    let out = Command::new(ip_binary())
        .args(&full)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| FabricError::Io {
            ctx: format!(
                "cannot run `ip {}` (is iproute2 installed?)",
                full.join(" ")
            ),
            source,
        })?;
    if !out.status.success() {
        return Err(FabricError::Command {
            cmd: format!("ip {}", full.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies `cmds` (one `ip` command each, without the leading `ip`) inside `ns` with a single
/// `ip -batch -`. iproute2 stops at the first failing line and names it, which is what we want:
/// a half-applied batch is repaired by the next reconcile pass.
pub fn batch(ns: &str, cmds: &[String]) -> Result<(), FabricError> {
    if cmds.is_empty() {
        return Ok(());
    }
    let mut child = Command::new(ip_binary())
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FabricError::Io {
            ctx: format!("cannot run `ip -n {ns} -batch -` (is iproute2 installed?)"),
            source,
        })?;
    let script = cmds.join("\n") + "\n";
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| FabricError::Io {
                ctx: format!("cannot feed `ip -n {ns} -batch -`"),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| FabricError::Io {
        ctx: format!("`ip -n {ns} -batch -` did not finish"),
        source,
    })?;
    if !out.status.success() {
        return Err(FabricError::Command {
            cmd: format!("ip -n {ns} -batch - <<EOF\n{script}EOF"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// One link as `ip -json link show` prints it (only the fields we use).
#[derive(Debug, Clone, Deserialize)]
pub struct Link {
    /// Interface name.
    pub ifname: String,
    /// MAC address (absent on some link types).
    #[serde(default)]
    pub address: Option<String>,
    /// The alias (`ip link set … alias …`), where the fabric keeps its ownership key.
    #[serde(default)]
    pub ifalias: Option<String>,
    /// Flags such as `UP`.
    #[serde(default)]
    pub flags: Vec<String>,
}

/// Lists the links of `ns`.
pub fn links(ns: &str) -> Result<Vec<Link>, FabricError> {
    let out = run(Some(ns), &["-json", "link", "show"])?;
    parse_json(&out, &format!("ip -n {ns} -json link show"))
}

/// One route as `ip -json route show` prints it (only the fields we use).
#[derive(Debug, Clone, Deserialize)]
pub struct RawRoute {
    /// `default`, `a.b.c.d` (a /32) or `a.b.c.d/len`.
    pub dst: String,
    /// Route type; absent means `unicast`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Output device.
    #[serde(default)]
    pub dev: Option<String>,
    /// Next hop.
    #[serde(default)]
    pub gateway: Option<String>,
}

impl RawRoute {
    /// The destination as a network (`default` is 0.0.0.0/0, a bare address is a /32).
    pub fn dst_net(&self) -> Result<Ipv4Net, FabricError> {
        parse_dst(&self.dst)
    }
}

/// Parses an iproute2 route destination.
pub fn parse_dst(dst: &str) -> Result<Ipv4Net, FabricError> {
    if dst == "default" {
        return Ok(Ipv4Net::default());
    }
    if dst.contains('/') {
        return dst
            .parse()
            .map_err(|e| FabricError::Invalid(format!("bad route destination {dst:?}: {e}")));
    }
    let addr: Ipv4Addr = dst
        .parse()
        .map_err(|e| FabricError::Invalid(format!("bad route destination {dst:?}: {e}")))?;
    Ok(Ipv4Net::from(addr))
}

/// Lists the IPv4 routes of the main table of `ns` installed with protocol `proto`.
pub fn routes_by_proto(ns: &str, proto: u8) -> Result<Vec<RawRoute>, FabricError> {
    let proto = proto.to_string();
    let out = run(
        Some(ns),
        &[
            "-4", "-json", "route", "show", "table", "main", "proto", &proto,
        ],
    )?;
    parse_json(&out, &format!("ip -n {ns} -json route show proto {proto}"))
}

#[derive(Deserialize)]
struct AddrLink {
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    #[serde(default)]
    family: String,
    #[serde(default)]
    local: Option<String>,
    #[serde(default)]
    prefixlen: u8,
}

/// Lists the IPv4 addresses on `dev` in `ns`.
pub fn ipv4_addrs(ns: &str, dev: &str) -> Result<Vec<Ipv4Net>, FabricError> {
    let out = run(Some(ns), &["-4", "-json", "addr", "show", "dev", dev])?;
    let links: Vec<AddrLink> = parse_json(&out, &format!("ip -n {ns} -json addr show dev {dev}"))?;
    let mut v = Vec::new();
    for info in links.into_iter().flat_map(|l| l.addr_info) {
        if info.family != "inet" {
            continue;
        }
        if let Some(local) = info.local {
            let addr: Ipv4Addr = local
                .parse()
                .map_err(|e| FabricError::Invalid(format!("bad address {local:?}: {e}")))?;
            let net = Ipv4Net::new(addr, info.prefixlen).map_err(|e| {
                FabricError::Invalid(format!("bad prefix length {}: {e}", info.prefixlen))
            })?;
            v.push(net);
        }
    }
    Ok(v)
}

fn parse_json<T: serde::de::DeserializeOwned>(out: &str, cmd: &str) -> Result<T, FabricError> {
    // Older iproute2 prints nothing at all (not `[]`) for an empty JSON listing.
    let text = if out.trim().is_empty() { "[]" } else { out };
    serde_json::from_str(text).map_err(|source| FabricError::Parse {
        cmd: cmd.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn route_destinations_parse_like_iproute2_prints_them() {
        assert_eq!(parse_dst("default").unwrap(), Ipv4Net::default());
        assert_eq!(
            parse_dst("10.0.0.5").unwrap(),
            "10.0.0.5/32".parse::<Ipv4Net>().unwrap()
        );
        assert_eq!(
            parse_dst("10.0.1.16/28").unwrap(),
            "10.0.1.16/28".parse::<Ipv4Net>().unwrap()
        );
        assert!(parse_dst("10.0.0.300").is_err());
        assert!(parse_dst("fe80::/64").is_err());
    }

    #[test]
    fn json_listings_parse_including_empty_output() {
        let routes: Vec<RawRoute> = parse_json(
            r#"[{"type":"unreachable","dst":"10.0.0.0/16","flags":[]},{"dst":"10.0.0.5","gateway":"169.254.0.1","dev":"vx1","flags":["onlink"]}]"#,
            "t",
        )
        .unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].kind.as_deref(), Some("unreachable"));
        assert_eq!(routes[1].dev.as_deref(), Some("vx1"));
        let none: Vec<RawRoute> = parse_json("\n", "t").unwrap();
        assert!(none.is_empty());
        assert!(parse_json::<Vec<RawRoute>>("{", "t").is_err());
    }
}
