//! Pod wiring, teardown and verification: upstream's data path (datapath.md §1–§3, §10).
//!
//! Host state (veth names, rule priorities, tables) matches upstream exactly, so that an
//! in-place upgrade from upstream, or a downgrade back to it, recognises and cleans up the
//! other implementation's pods.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use sha1::{Digest, Sha1};

use crate::error::PluginError;
use crate::netlink::{
    Deleted, MacAddr, Netlink, Route, Rule, Scope, TABLE_MAIN, VethSpec, host_net,
};
use crate::netns::{NetNs, set_sysctl};

/// Priority of the `to <pod> lookup main` rule.
pub const TO_POD_RULE_PRIO: u32 = 512;
/// Priority of the `from <pod> lookup <eni table>` rule.
pub const FROM_POD_RULE_PRIO: u32 = 1536;
/// Default and fallback pod MTU.
pub const DEFAULT_MTU: u32 = 9001;
/// Default host-veth prefix.
pub const DEFAULT_VETH_PREFIX: &str = "eni";

/// The fake on-link gateway of interface index 0 (`169.254.1.(i+1)`).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 gateway of interface index 0 (`fe80::(i+1)`).
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Gateway for a pod address of this family.
pub fn gateway_for(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(GATEWAY_V4),
        IpAddr::V6(_) => IpAddr::V6(GATEWAY_V6),
    }
}

/// Host-veth name: `prefix + hex(sha1("<namespace>.<pod>"))[..11]` (shared with Calico and
/// used by ipamd's restore to detect live pods, so it must not change).
///
/// Runtimes that send no Kubernetes pod identity (podman, plain cnitool) would all hash
/// `"."` and collide; for them the container ID stands in for the pod name
/// (`".<containerID>"`).
pub fn host_veth_name(prefix: &str, namespace: &str, pod: &str, container_id: &str) -> String {
    let input = if namespace.is_empty() && pod.is_empty() {
        format!(".{container_id}")
    } else {
        format!("{namespace}.{pod}")
    };
    let digest = Sha1::digest(input.as_bytes());
    let hex = hex::encode(digest);
    format!("{prefix}{}", &hex[..11])
}

/// Netconf `mtu` as upstream reads it: a string (or number); unparsable or outside
/// 576..=9001 → 9001, silently.
pub fn parse_mtu(v: Option<&serde_json::Value>) -> u32 {
    let n = match v {
        Some(serde_json::Value::String(s)) => s.trim().parse::<u32>().ok(),
        Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|x| u32::try_from(x).ok()),
        _ => None,
    };
    match n {
        Some(m) if (576..=9001).contains(&m) => m,
        _ => DEFAULT_MTU,
    }
}

/// Host table from ipamd's `RouteTableId`: values ≤ 1 mean main (1 is the pre-v1.20 number of
/// the primary ENI's table).
pub fn host_table(route_table_id: i32) -> u32 {
    if route_table_id <= 1 {
        TABLE_MAIN
    } else {
        route_table_id as u32
    }
}

/// What to build for one pod interface.
#[derive(Debug, Clone)]
pub struct PodSpec<'a> {
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// Host-veth name.
    pub host_veth: &'a str,
    /// MTU of both veth ends.
    pub mtu: u32,
    /// Pod address.
    pub ip: IpAddr,
    /// Host routing table of the owning ENI ([`TABLE_MAIN`] for the primary ENI).
    pub table: u32,
}

/// What [`setup`] built.
#[derive(Debug, Clone)]
pub struct Wired {
    /// Host-veth MAC (read back after bring-up).
    pub host_mac: MacAddr,
    /// Container-side MAC.
    pub pod_mac: MacAddr,
}

fn rand_mac_avoiding(host: &mut Netlink) -> Result<MacAddr, PluginError> {
    let taken: Vec<MacAddr> = host
        .link_macs()
        .map_err(PluginError::nl("list host link addresses"))?;
    // Upstream re-draws on a collision with any host link MAC and gives up after 10 tries.
    for _ in 0..10 {
        let m = MacAddr::random_local()
            .map_err(|e| PluginError::Internal(format!("reading random bytes: {e}")))?;
        if !taken.contains(&m) {
            return Ok(m);
        }
    }
    Err(PluginError::Internal(
        "could not pick a host-veth MAC that no host link uses after 10 attempts".into(),
    ))
}

/// Wires one pod interface (datapath.md §2 and §3), from a host-namespace socket `host` and
/// a socket `pod` opened inside the pod namespace `pod_ns`.
pub fn setup(
    host: &mut Netlink,
    host_ns: &NetNs,
    pod: &mut Netlink,
    pod_ns: &NetNs,
    spec: &PodSpec<'_>,
) -> Result<Wired, PluginError> {
    let v6 = spec.ip.is_ipv6();
    let gw = gateway_for(spec.ip);

    // 0. A host veth with this name left over from an earlier sandbox of the same pod.
    host.delete_link_by_name(spec.host_veth)
        .map_err(PluginError::nl(format!("delete stale {}", spec.host_veth)))?;

    // 1. Host-veth MAC.
    let mac = rand_mac_avoiding(host)?;

    // 2. Create the pair from inside the pod, the peer born in the host namespace.
    pod.create_veth(&VethSpec {
        name: spec.ifname,
        mtu: spec.mtu,
        up: true,
        peer_name: spec.host_veth,
        peer_mac: Some(mac),
        peer_netns: Some(host_ns.as_fd()),
    })
    .map_err(|e| {
        if e.is_exists() {
            PluginError::InterfaceExists(format!(
                "cannot create {} in {} with host end {}: an interface with one of these names already exists",
                spec.ifname,
                pod_ns.path().display(),
                spec.host_veth
            ))
        } else {
            PluginError::Netlink {
                ctx: format!("create veth {} / {}", spec.ifname, spec.host_veth),
                source: e,
            }
        }
    })?;

    // 3. Host end: IPv6 sysctls before it goes up, then up. Missing sysctl files are ignored.
    for (k, v) in [
        ("accept_ra", "0"),
        ("accept_redirects", "1"),
        ("forwarding", "0"),
    ] {
        set_sysctl(&format!("net/ipv6/conf/{}/{k}", spec.host_veth), v)
            .map_err(|e| PluginError::Internal(format!("sysctl {k} on {}: {e}", spec.host_veth)))?;
    }
    let host_link = host
        .link_by_name(spec.host_veth)
        .map_err(PluginError::nl(format!("find {}", spec.host_veth)))?
        .ok_or_else(|| {
            PluginError::Internal(format!(
                "host veth {} vanished right after creation",
                spec.host_veth
            ))
        })?;
    host.set_up(host_link.index)
        .map_err(PluginError::nl(format!("set {} up", spec.host_veth)))?;
    // Read the MAC back after bring-up: systemd-udev's MACAddressPolicy=persistent may have
    // rewritten it, and the pod's permanent neighbour entry must carry the real one.
    let host_mac = host
        .link_by_index(host_link.index)
        .map_err(PluginError::nl(format!("re-read {}", spec.host_veth)))?
        .and_then(|l| l.mac)
        .unwrap_or(mac);

    // 4. Pod end up (explicitly; the create-time flag is not reliable everywhere).
    let pod_link = pod
        .link_by_name(spec.ifname)
        .map_err(PluginError::nl(format!("find {}", spec.ifname)))?
        .ok_or_else(|| {
            PluginError::Internal(format!("{} vanished right after creation", spec.ifname))
        })?;
    pod.set_up(pod_link.index)
        .map_err(PluginError::nl(format!("set {} up", spec.ifname)))?;

    // 5. IPv6 must be enabled in the pod for an IPv6 pod.
    if v6 {
        let ifname = spec.ifname.to_string();
        pod_ns.run_in(move || -> Result<(), PluginError> {
            for dev in [ifname.as_str(), "lo"] {
                set_sysctl(&format!("net/ipv6/conf/{dev}/disable_ipv6"), "0").map_err(|e| {
                    PluginError::Internal(format!("enable IPv6 on {dev} in the pod: {e}"))
                })?;
            }
            Ok(())
        })??;
    }

    // 6. On-link route to the fake gateway; 8. default route through it.
    pod.replace_route(&Route::host(gw, pod_link.index, TABLE_MAIN))
        .map_err(PluginError::nl("pod route to the gateway"))?;
    pod.add_route(&Route::default_via(gw, pod_link.index, TABLE_MAIN))
        .map_err(PluginError::nl("pod default route"))?;

    // 9. The pod address, /32 (or /128).
    pod.add_address(pod_link.index, host_net(spec.ip))
        .map_err(PluginError::nl(format!(
            "add {} to {}",
            spec.ip, spec.ifname
        )))?;

    // 10. Static neighbour: the gateway is the host veth.
    pod.replace_permanent_neighbour(pod_link.index, gw, host_mac)
        .map_err(PluginError::nl("pod neighbour for the gateway"))?;

    // 11. IPv6: wait for DAD (poll every 50 ms, up to 10 s), as upstream does.
    if v6 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let addrs = pod
                .addresses(Some(pod_link.index))
                .map_err(PluginError::nl("list pod addresses"))?;
            if addrs.iter().any(|a| a.dad_failed) {
                return Err(PluginError::Internal(format!(
                    "IPv6 duplicate address detection failed on {}",
                    spec.ifname
                )));
            }
            if !addrs.iter().any(|a| a.tentative) {
                break;
            }
            if Instant::now() > deadline {
                return Err(PluginError::Internal(format!(
                    "IPv6 addresses on {} still tentative after 10 s",
                    spec.ifname
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // Host side (§3): /32 route to the pod, to-pod rule, from-pod rule for non-main tables.
    host.replace_route(&Route::host(spec.ip, host_link.index, TABLE_MAIN))
        .map_err(PluginError::nl("host route to the pod"))?;
    host.add_rule(&to_pod_rule(spec.ip))
        .map_err(PluginError::nl("to-pod rule"))?;
    if spec.table != TABLE_MAIN {
        host.add_rule(&from_pod_rule(spec.ip, spec.table))
            .map_err(PluginError::nl("from-pod rule"))?;
    }

    let pod_mac = pod_link.mac.unwrap_or_default();
    Ok(Wired { host_mac, pod_mac })
}

/// `to <pod>/32 lookup main prio 512`.
pub fn to_pod_rule(ip: IpAddr) -> Rule {
    Rule::lookup(ip.is_ipv6(), TABLE_MAIN, TO_POD_RULE_PRIO).to(host_net(ip))
}

/// `from <pod>/32 lookup <table> prio 1536`.
pub fn from_pod_rule(ip: IpAddr, table: u32) -> Rule {
    Rule::lookup(ip.is_ipv6(), table, FROM_POD_RULE_PRIO).from(host_net(ip))
}

/// How [`teardown`] treats veths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Leave every veth alone (DEL while the pod netns still exists).
    Keep,
    /// Delete the named host veths.
    DeleteNamed,
    /// Delete the named host veths and any veth with our prefix that a pod `/32` route points
    /// at (GC: ipamd releases allocations whose pod name, hence veth name, we do not know).
    DeleteNamedAndRouted,
}

/// Removes host state for `ips` (datapath.md §10), best effort, and reports every failure.
///
/// - every prio-512 `to <ip>` rule and every prio-1536 `from <ip>` rule, whatever its table
///   (so it works without knowing the table: DEL with ipamd down and no `prevResult`);
/// - the main-table `/32` route;
/// - veths as `links` says.
///
/// **Owner check:** when the `/32` route of an address points at another veth with our prefix
/// (not in `host_veths`), the address has since been given to another pod — e.g. a repeated
/// DEL with a stale cached `prevResult` after ipamd's cooldown — so its route and rules are
/// left alone.
pub fn teardown(
    host: &mut Netlink,
    ips: &[IpAddr],
    host_veths: &[String],
    veth_prefix: &str,
    links: Links,
) -> Result<(), PluginError> {
    let mut errors: Vec<String> = Vec::new();
    let mut veths: Vec<String> = host_veths.to_vec();
    for fam_v6 in [false, true] {
        let mut fam_ips: Vec<IpAddr> = ips
            .iter()
            .copied()
            .filter(|ip| ip.is_ipv6() == fam_v6)
            .collect();
        if fam_ips.is_empty() {
            continue;
        }
        let routes = match host.routes(fam_v6, Some(TABLE_MAIN)) {
            Ok(r) => r,
            Err(e) => {
                errors.push(e.to_string());
                Vec::new()
            }
        };
        fam_ips.retain(|ip| {
            for r in routes.iter().filter(|r| r.dst == host_net(*ip)) {
                let Some(l) = r.oif.and_then(|oif| host.link_by_index(oif).ok().flatten()) else {
                    continue;
                };
                let our_kind = l.kind.as_deref() == Some("veth")
                    && !veth_prefix.is_empty()
                    && l.name.starts_with(veth_prefix);
                if !our_kind || host_veths.contains(&l.name) {
                    continue;
                }
                if links == Links::DeleteNamedAndRouted {
                    if !veths.contains(&l.name) {
                        veths.push(l.name);
                    }
                } else {
                    crate::log!(
                        crate::log::Level::Warn,
                        "{ip} now routes to {}, another pod's veth; leaving its host state alone",
                        l.name
                    );
                    return false;
                }
            }
            true
        });
        if fam_ips.is_empty() {
            continue;
        }
        match host.rules(fam_v6) {
            Ok(rules) => {
                for r in rules {
                    let ours = fam_ips.iter().any(|ip| {
                        let net = Some(host_net(*ip));
                        (r.priority == Some(TO_POD_RULE_PRIO) && r.dst == net && r.src.is_none())
                            || (r.priority == Some(FROM_POD_RULE_PRIO) && r.src == net)
                    });
                    if ours && let Err(e) = host.del_rule(&r) {
                        errors.push(e.to_string());
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        for ip in &fam_ips {
            let route = Route {
                dst: host_net(*ip),
                gateway: None,
                oif: None,
                table: TABLE_MAIN,
                scope: Scope::Link,
                pref_src: None,
            };
            if let Err(e) = host.del_route(&route) {
                errors.push(e.to_string());
            }
        }
    }
    if links == Links::Keep {
        veths.clear();
    }
    for v in veths {
        match host.delete_link_by_name(&v) {
            Ok(Deleted::Removed | Deleted::WasAbsent) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PluginError::Internal(format!(
            "teardown incomplete: {}",
            errors.join("; ")
        )))
    }
}

/// CHECK (cni-spec.md §4): everything [`setup`] built is still there and right. The error
/// names the first thing that drifted.
pub fn check(
    host: &mut Netlink,
    pod: &mut Netlink,
    pod_ns: &NetNs,
    spec: &PodSpec<'_>,
) -> Result<(), PluginError> {
    let drift = |s: String| Err(PluginError::CheckFailed(s));
    let v6 = spec.ip.is_ipv6();
    let gw = gateway_for(spec.ip);
    let nl = |ctx: &'static str| PluginError::nl(ctx);

    // Host side.
    let Some(host_link) = host
        .link_by_name(spec.host_veth)
        .map_err(nl("check host veth"))?
    else {
        return drift(format!("host veth {} is missing", spec.host_veth));
    };
    if !host_link.up {
        return drift(format!("host veth {} is down", spec.host_veth));
    }
    let Some(host_mac) = host_link.mac else {
        return drift(format!("host veth {} has no MAC", spec.host_veth));
    };
    let host_routes = host
        .routes(v6, Some(TABLE_MAIN))
        .map_err(nl("list host routes"))?;
    if !host_routes
        .iter()
        .any(|r| r.dst == host_net(spec.ip) && r.oif == Some(host_link.index))
    {
        return drift(format!(
            "host route {} dev {} is missing",
            host_net(spec.ip),
            spec.host_veth
        ));
    }
    let rules = host.rules(v6).map_err(nl("list host rules"))?;
    let want_to = to_pod_rule(spec.ip);
    if !rules.iter().any(|r| want_to.matches(r)) {
        return drift(format!("host rule \"{want_to}\" is missing"));
    }
    if spec.table != TABLE_MAIN {
        let want_from = from_pod_rule(spec.ip, spec.table);
        if !rules.iter().any(|r| want_from.matches(r)) {
            return drift(format!("host rule \"{want_from}\" is missing"));
        }
    }

    // Pod side.
    let Some(pod_link) = pod
        .link_by_name(spec.ifname)
        .map_err(nl("check pod link"))?
    else {
        return drift(format!(
            "interface {} is missing in {}",
            spec.ifname,
            pod_ns.path().display()
        ));
    };
    if !pod_link.up {
        return drift(format!("interface {} in the pod is down", spec.ifname));
    }
    let addrs = pod
        .addresses(Some(pod_link.index))
        .map_err(nl("list pod addresses"))?;
    if !addrs.iter().any(|a| a.addr == host_net(spec.ip)) {
        let have: Vec<String> = addrs.iter().map(|a| a.addr.to_string()).collect();
        return drift(format!(
            "address {} is missing on {} (has [{}])",
            host_net(spec.ip),
            spec.ifname,
            have.join(", ")
        ));
    }
    let routes = pod
        .routes(v6, Some(TABLE_MAIN))
        .map_err(nl("list pod routes"))?;
    // IPv6 routes carry no scope (the kernel reports every one as global).
    if !routes.iter().any(|r| {
        r.dst == host_net(gw) && r.oif == Some(pod_link.index) && (v6 || r.scope == Scope::Link)
    }) {
        return drift(format!(
            "pod route {} dev {} scope link is missing",
            host_net(gw),
            spec.ifname
        ));
    }
    let default: IpNet = if v6 {
        IpNet::V6(ipnet::Ipv6Net::default())
    } else {
        IpNet::V4(ipnet::Ipv4Net::default())
    };
    if !routes
        .iter()
        .any(|r| r.dst == default && r.gateway == Some(gw) && r.oif == Some(pod_link.index))
    {
        return drift(format!(
            "pod default route via {gw} dev {} is missing",
            spec.ifname
        ));
    }
    let neigh = pod
        .neighbours(v6, Some(pod_link.index))
        .map_err(nl("list pod neighbours"))?;
    match neigh.iter().find(|n| n.ip == gw) {
        None => drift(format!("pod neighbour entry for {gw} is missing")),
        Some(n) if !n.permanent => drift(format!("pod neighbour entry for {gw} is not PERMANENT")),
        Some(n) if n.mac != Some(host_mac) => drift(format!(
            "pod neighbour {gw} points at {} but the host veth {} has MAC {host_mac}",
            n.mac.map(|m| m.to_string()).unwrap_or_default(),
            spec.host_veth
        )),
        Some(_) => Ok(()),
    }
}

/// Removes the veth of an earlier attachment of this pod whose netns the runtime kept: DEL
/// leaves the veth to die with the netns (see `cmd::del`), so a runtime that re-ADDs into the
/// same netns finds `CNI_IFNAME` still there. Only a pair whose host end has our computed name
/// *and* whose peer is that pod interface is removed (upstream's ADD step 0 deletes the host
/// veth by name unconditionally). Returns whether something was removed.
pub fn remove_own_leftover(
    host: &mut Netlink,
    pod: &mut Netlink,
    ifname: &str,
    host_veth: &str,
) -> Result<bool, PluginError> {
    let Some(pod_link) = pod
        .link_by_name(ifname)
        .map_err(PluginError::nl(format!("look up {ifname} in the pod")))?
    else {
        return Ok(false);
    };
    let Some(host_link) = host
        .link_by_name(host_veth)
        .map_err(PluginError::nl(format!("look up {host_veth}")))?
    else {
        return Ok(false);
    };
    if host_link.kind.as_deref() != Some("veth") || host_link.peer_index != Some(pod_link.index) {
        return Ok(false);
    }
    host.delete_link(host_link.index)
        .map_err(PluginError::nl(format!("delete leftover {host_veth}")))?;
    Ok(true)
}

/// Ensures the pod interface does not exist yet (ADD must fail, without any state change,
/// when `CNI_IFNAME` is already there).
pub fn ensure_absent(pod: &mut Netlink, pod_ns: &NetNs, ifname: &str) -> Result<(), PluginError> {
    if pod
        .link_by_name(ifname)
        .map_err(PluginError::nl(format!("look up {ifname} in the pod")))?
        .is_some()
    {
        return Err(PluginError::InterfaceExists(format!(
            "interface {ifname} already exists in {}",
            pod_ns.path().display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_match_upstream_examples() {
        assert_eq!(
            host_veth_name("eni", "default", "web-1", "x"),
            "eni0761ccbeace"
        );
        assert_eq!(
            host_veth_name("eni", "kube-system", "coredns-5d78c9869d-abcde", "x"),
            "eni4d5f75c480c"
        );
        // No pod identity: the container ID keeps names distinct.
        assert_ne!(
            host_veth_name("eni", "", "", "c1"),
            host_veth_name("eni", "", "", "c2")
        );
    }

    #[test]
    fn mtu_and_table_rules() {
        use serde_json::json;
        assert_eq!(parse_mtu(Some(&json!("1500"))), 1500);
        assert_eq!(parse_mtu(Some(&json!(1500))), 1500);
        assert_eq!(parse_mtu(Some(&json!("abc"))), 9001);
        assert_eq!(parse_mtu(Some(&json!("100"))), 9001);
        assert_eq!(parse_mtu(None), 9001);
        assert_eq!(host_table(0), TABLE_MAIN);
        assert_eq!(host_table(1), TABLE_MAIN);
        assert_eq!(host_table(2), 2);
        assert_eq!(host_table(254), TABLE_MAIN);
    }
}
