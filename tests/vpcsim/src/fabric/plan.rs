//! Pure reconcile logic: what the kernel should look like for a [`FabricView`], what it looks
//! like now, and the `ip` commands that turn one into the other. No I/O here, so every rule is
//! unit-tested without root.
//!
//! How the VPC namespace delivers traffic, and why:
//! - Every private IP (/32) and delegated prefix (/28) is a route `via 169.254.0.1 dev <peer>
//!   onlink`, where `<peer>` is the VPC-side end of the owning ENI's veth, and `169.254.0.1` has a
//!   permanent neighbour entry on that peer carrying the ENI's MAC. Frames for secondary IPs
//!   thus go straight to the ENI's MAC without ARP, exactly like EC2, which never ARPs for
//!   secondary addresses (the node does not own them; it routes them to pods).
//! - Routes carry protocol [`ROUTE_PROTO`], so the reconciler can list exactly its own routes.
//! - The VPC CIDRs are `unreachable`: an unassigned VPC address gets an ICMP error instead of
//!   leaking to the "internet", and proxy ARP (which answers only for unicast routes) stays
//!   silent for it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::view::FabricView;

/// Route protocol number marking the fabric's own routes in the VPC namespace (any value the
/// kernel and iproute2 do not use themselves; 250 is unassigned in `rt_protos`).
pub const ROUTE_PROTO: u8 = 250;

/// The fake on-link next hop every per-ENI route goes through (one permanent neighbour entry
/// per VPC-side peer maps it to that ENI's MAC).
pub const ENI_NEXTHOP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);

/// Prefix of the alias the fabric writes on every VPC-side peer; the alias is its ownership key.
pub const ALIAS_PREFIX: &str = "vpcsim:";

/// MTU of ENIs on EC2 (jumbo frames inside a VPC), used on both veth ends.
pub const ENI_MTU: u32 = 9001;

/// One ENI made real: a veth pair between the VPC namespace and a node namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniLink {
    /// Ownership key, stored as the peer's alias; a change of any part (the ENI moved to another
    /// instance or device index) means delete and re-create, like a real hot-unplug/plug.
    pub key: String,
    /// VPC-side interface name.
    pub peer: String,
    /// Node namespace the ENI end lives in.
    pub node_ns: String,
    /// Interface name inside the node (`eth<device index>`).
    pub ifname: String,
    /// The ENI's MAC, carried by the node-side end.
    pub mac: [u8; 6],
    /// What DHCP would configure at hot-plug: address/prefix length and default gateway.
    /// Only the primary ENI gets this; secondary ENIs are configured by ipamd.
    pub dhcp: Option<(Ipv4Net, Ipv4Addr)>,
}

/// Where a VPC route sends traffic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteTarget {
    /// To the ENI whose VPC-side peer has this name.
    Eni(String),
    /// Nowhere (ICMP unreachable).
    Unreachable,
}

/// The kernel state the fabric wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// ENI links by VPC-side peer name.
    pub links: BTreeMap<String, EniLink>,
    /// VPC routes (fabric protocol only).
    pub routes: BTreeMap<Ipv4Net, RouteTarget>,
    /// Subnet gateway addresses the VPC namespace answers for (on its `lo`).
    pub gateways: BTreeSet<Ipv4Addr>,
    /// Inconsistencies found in the view (reported, not fatal).
    pub warnings: Vec<String>,
}

/// The kernel state the fabric sees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// VPC-side peers the fabric owns: name → alias (ownership key).
    pub peers: BTreeMap<String, String>,
    /// Fabric-protocol routes in the VPC namespace.
    pub routes: BTreeMap<Ipv4Net, RouteTarget>,
    /// IPv4 addresses on the VPC namespace's `lo`.
    pub lo_addrs: BTreeSet<Ipv4Addr>,
}

/// `ip` commands to run, per namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Commands for the VPC namespace, in order.
    pub vpc: Vec<String>,
    /// Commands per node namespace, run after the VPC batch (the node ends are created by it).
    pub nodes: BTreeMap<String, Vec<String>>,
    /// Links created by this plan (for logs and counters).
    pub created: Vec<String>,
    /// Links deleted by this plan.
    pub deleted: Vec<String>,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.vpc.is_empty() && self.nodes.values().all(Vec::is_empty)
    }
}

/// Formats a MAC the way iproute2 and IMDS print it.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// VPC-side interface name for an ENI: `v` + the last 14 alphanumerics of its id (15 = the
/// kernel's IFNAMSIZ − 1). EC2 ENI ids end in 17 hex digits, so collisions need 56 equal bits.
pub fn peer_name(eni_id: &str) -> String {
    let tail: Vec<char> = eni_id
        .strip_prefix("eni-")
        .unwrap_or(eni_id)
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let start = tail.len().saturating_sub(14);
    let s: String = tail[start..].iter().collect();
    format!("v{s}")
}

/// Interface name of an ENI inside its node: `eth<device index>` on network card 0 (as an EC2
/// Linux AMI without predictable names shows it), `c<card>eth<device index>` on other cards.
pub fn node_ifname(network_card: u32, device_index: u32) -> String {
    if network_card == 0 {
        format!("eth{device_index}")
    } else {
        format!("c{network_card}eth{device_index}")
    }
}

/// Subnet gateway: the network address + 1 (the VPC router's address on AWS).
pub fn gateway_of(cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()).wrapping_add(1))
}

/// Computes the desired state. `nodes` maps instance id → node namespace; ENIs of instances
/// without a node namespace are skipped (reported as warnings).
pub fn desired(view: &FabricView, nodes: &HashMap<String, String>) -> Desired {
    let mut d = Desired::default();
    for s in &view.subnets {
        d.gateways.insert(s.gateway);
    }
    let vpc_cidrs: Vec<Ipv4Net> = if view.vpc_cidrs.is_empty() {
        view.subnets.iter().map(|s| s.cidr).collect()
    } else {
        view.vpc_cidrs.clone()
    };
    for c in vpc_cidrs {
        d.routes.insert(c.trunc(), RouteTarget::Unreachable);
    }
    let mut owner: HashMap<Ipv4Net, String> = HashMap::new();
    for node in &view.nodes {
        let Some(node_ns) = nodes.get(&node.instance_id) else {
            if !node.enis.is_empty() {
                d.warnings.push(format!(
                    "instance {} has no node namespace; its ENIs are not wired",
                    node.instance_id
                ));
            }
            continue;
        };
        for eni in &node.enis {
            let peer = peer_name(&eni.eni_id);
            if let Some(other) = d.links.get(&peer) {
                d.warnings.push(format!(
                    "ENIs {} and {} map to the same interface name {peer}; {} skipped",
                    other.key, eni.eni_id, eni.eni_id
                ));
                continue;
            }
            let is_primary = eni.network_card == 0 && eni.device_index == 0;
            let dhcp = if is_primary {
                Ipv4Net::new(eni.primary_ip, eni.subnet_cidr.prefix_len())
                    .ok()
                    .map(|a| (a, gateway_of(eni.subnet_cidr)))
            } else {
                None
            };
            let key = format!(
                "{ALIAS_PREFIX}{}:{}:{}:{}:{}",
                eni.eni_id,
                node.instance_id,
                eni.network_card,
                eni.device_index,
                mac_string(&eni.mac)
            );
            let nets = std::iter::once(eni.primary_ip)
                .chain(eni.secondary_ips.iter().copied())
                .map(Ipv4Net::from)
                .chain(eni.prefixes.iter().map(|p| p.trunc()));
            for net in nets {
                if let Some(prev) = owner.get(&net) {
                    d.warnings.push(format!(
                        "{net} is owned by both {prev} and {}; keeping {prev}",
                        eni.eni_id
                    ));
                    continue;
                }
                owner.insert(net, eni.eni_id.clone());
                d.routes.insert(net, RouteTarget::Eni(peer.clone()));
            }
            d.links.insert(
                peer.clone(),
                EniLink {
                    key,
                    peer,
                    node_ns: node_ns.clone(),
                    ifname: node_ifname(eni.network_card, eni.device_index),
                    mac: eni.mac,
                    dhcp,
                },
            );
        }
    }
    d
}

/// Computes the commands that turn `o` into `d`. Applying the plan and observing again yields
/// an empty plan (idempotence), which the tests check.
pub fn plan(d: &Desired, o: &Observed) -> Plan {
    let mut p = Plan::default();
    // 1. Unplug: peers that are not wanted, or wanted with another identity. Deleting one end
    //    of a veth deletes the other end (in the node) and every route through it.
    let mut gone: BTreeSet<&str> = BTreeSet::new();
    for (name, alias) in &o.peers {
        let keep = d.links.get(name).is_some_and(|l| &l.key == alias);
        if !keep {
            p.vpc.push(format!("link del dev {name}"));
            p.deleted.push(name.clone());
            gone.insert(name);
        }
    }
    // 2. Hot-plug: create the veth with the node end born inside the node namespace, named and
    //    addressed like the ENI, and pin the ENI's MAC as the next hop's neighbour entry.
    for (name, link) in &d.links {
        let present = o.peers.get(name).is_some_and(|a| a == &link.key) && !gone.contains(&**name);
        if present {
            continue;
        }
        let mac = mac_string(&link.mac);
        p.vpc.push(format!(
            "link add name {name} mtu {ENI_MTU} type veth peer name {} address {mac} mtu {ENI_MTU} netns {}",
            link.ifname, link.node_ns
        ));
        p.vpc
            .push(format!("link set dev {name} alias {}", link.key));
        p.vpc.push(format!("link set dev {name} up"));
        // Proxy ARP answers are delayed by up to `proxy_delay` (0.8 s by default) to let a real
        // owner answer first; here the router is the only answerer. (The `neigh/default`
        // sysctl exists only in the initial namespace, so this is set per link.)
        p.vpc.push(format!(
            "ntable change name arp_cache dev {name} proxy_delay 0"
        ));
        p.vpc.push(format!(
            "neigh replace {ENI_NEXTHOP} lladdr {mac} dev {name} nud permanent"
        ));
        p.created.push(name.clone());
        if let Some((addr, gw)) = link.dhcp {
            // What the instance's DHCP client does for the primary ENI at boot.
            let cmds = p.nodes.entry(link.node_ns.clone()).or_default();
            cmds.push(format!("link set dev {} up", link.ifname));
            cmds.push(format!("addr replace {addr} dev {}", link.ifname));
            cmds.push(format!(
                "route replace default via {gw} dev {}",
                link.ifname
            ));
        }
    }
    // 3. Gateways: the VPC router answers ARP for every subnet's network+1 on every peer,
    //    because the address is local to the namespace (arp_ignore=0).
    for gw in &d.gateways {
        if !o.lo_addrs.contains(gw) {
            p.vpc.push(format!("addr add {gw}/32 dev lo"));
        }
    }
    // 4. Routes. Stale ones through a peer deleted above are already gone with it.
    for (dst, target) in &o.routes {
        if d.routes.contains_key(dst) {
            continue;
        }
        if let RouteTarget::Eni(dev) = target
            && gone.contains(dev.as_str())
        {
            continue;
        }
        p.vpc.push(format!("route del {dst} proto {ROUTE_PROTO}"));
    }
    for (dst, target) in &d.routes {
        let same = o.routes.get(dst) == Some(target)
            && !matches!(target, RouteTarget::Eni(dev) if gone.contains(dev.as_str()) || p.created.contains(dev));
        if same {
            continue;
        }
        match target {
            RouteTarget::Eni(dev) => p.vpc.push(format!(
                "route replace {dst} via {ENI_NEXTHOP} dev {dev} onlink proto {ROUTE_PROTO}"
            )),
            RouteTarget::Unreachable => p.vpc.push(format!(
                "route replace unreachable {dst} proto {ROUTE_PROTO}"
            )),
        }
    }
    p
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::view::{EniView, NodeView, SubnetView};

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn eni(id: &str, dev: u32, primary: &str, sec: &[&str], pfx: &[&str]) -> EniView {
        EniView {
            eni_id: id.to_owned(),
            mac: [0x02, 0, 0, 0, 0, dev as u8 + 1],
            device_index: dev,
            network_card: 0,
            subnet_cidr: net("10.0.0.0/24"),
            primary_ip: ip(primary),
            secondary_ips: sec.iter().map(|s| ip(s)).collect(),
            prefixes: pfx.iter().map(|s| net(s)).collect(),
        }
    }

    fn view(enis: Vec<EniView>) -> FabricView {
        FabricView {
            generation: 1,
            vpc_cidrs: vec![net("10.0.0.0/16")],
            subnets: vec![SubnetView {
                subnet_id: "subnet-1".into(),
                cidr: net("10.0.0.0/24"),
                gateway: ip("10.0.0.1"),
            }],
            nodes: vec![NodeView {
                instance_id: "i-1".into(),
                enis,
            }],
        }
    }

    fn nodes() -> HashMap<String, String> {
        HashMap::from([("i-1".to_owned(), "t-node1".to_owned())])
    }

    /// What the kernel would show after applying `d` perfectly.
    fn observed_after(d: &Desired) -> Observed {
        Observed {
            peers: d
                .links
                .iter()
                .map(|(k, l)| (k.clone(), l.key.clone()))
                .collect(),
            routes: d.routes.clone(),
            lo_addrs: d.gateways.clone(),
        }
    }

    #[test]
    fn names_fit_the_kernel_limit() {
        assert_eq!(peer_name("eni-0123456789abcdef0"), "v3456789abcdef0");
        assert_eq!(peer_name("eni-0123456789abcdef0").len(), 15);
        assert_eq!(peer_name("eni-1"), "v1");
        assert_eq!(node_ifname(0, 1), "eth1");
        assert_eq!(node_ifname(1, 0), "c1eth0");
        assert_eq!(gateway_of(net("10.0.64.0/19")), ip("10.0.64.1"));
        assert_eq!(
            mac_string(&[2, 0xab, 0, 1, 0x10, 0xff]),
            "02:ab:00:01:10:ff"
        );
    }

    #[test]
    fn primary_eni_gets_dhcp_and_every_address_gets_a_route() {
        let v = view(vec![
            eni("eni-a", 0, "10.0.0.10", &[], &[]),
            eni("eni-b", 1, "10.0.0.20", &["10.0.0.21"], &["10.0.0.32/28"]),
        ]);
        let d = desired(&v, &nodes());
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        let a = &d.links["va"];
        assert_eq!(a.ifname, "eth0");
        assert_eq!(a.dhcp, Some((net("10.0.0.10/24"), ip("10.0.0.1"))));
        assert_eq!(d.links["vb"].dhcp, None);
        assert_eq!(
            d.routes[&net("10.0.0.21/32")],
            RouteTarget::Eni("vb".into())
        );
        assert_eq!(
            d.routes[&net("10.0.0.32/28")],
            RouteTarget::Eni("vb".into())
        );
        assert_eq!(d.routes[&net("10.0.0.0/16")], RouteTarget::Unreachable);
        let p = plan(&d, &Observed::default());
        assert_eq!(p.created, vec!["va".to_owned(), "vb".to_owned()]);
        assert!(p.vpc.iter().any(|c| c.starts_with("link add name vb ")
            && c.contains("peer name eth1 address 02:00:00:00:00:02")
            && c.ends_with("netns t-node1")));
        assert!(p.vpc.contains(&"addr add 10.0.0.1/32 dev lo".to_owned()));
        assert_eq!(
            p.nodes["t-node1"],
            vec![
                "link set dev eth0 up".to_owned(),
                "addr replace 10.0.0.10/24 dev eth0".to_owned(),
                "route replace default via 10.0.0.1 dev eth0".to_owned(),
            ]
        );
        // Routes come after the links they use.
        let link_pos = p
            .vpc
            .iter()
            .position(|c| c.starts_with("link add name vb"))
            .unwrap();
        let route_pos = p
            .vpc
            .iter()
            .position(|c| c.starts_with("route replace 10.0.0.21/32"))
            .unwrap();
        assert!(link_pos < route_pos);
    }

    #[test]
    fn applying_the_plan_converges() {
        let v = view(vec![eni("eni-a", 0, "10.0.0.10", &["10.0.0.11"], &[])]);
        let d = desired(&v, &nodes());
        let p = plan(&d, &observed_after(&d));
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn detach_and_unassign_remove_exactly_what_went_away() {
        let before = desired(
            &view(vec![
                eni("eni-a", 0, "10.0.0.10", &["10.0.0.11", "10.0.0.12"], &[]),
                eni("eni-b", 1, "10.0.0.20", &["10.0.0.21"], &[]),
            ]),
            &nodes(),
        );
        let after = desired(
            &view(vec![eni("eni-a", 0, "10.0.0.10", &["10.0.0.11"], &[])]),
            &nodes(),
        );
        let p = plan(&after, &observed_after(&before));
        assert_eq!(p.deleted, vec!["vb".to_owned()]);
        assert!(p.created.is_empty());
        // 10.0.0.12 goes explicitly; eni-b's routes vanish with its link, no command needed.
        assert_eq!(
            p.vpc,
            vec![
                "link del dev vb".to_owned(),
                "route del 10.0.0.12/32 proto 250".to_owned()
            ]
        );
    }

    #[test]
    fn reattach_at_another_index_replugs_the_link() {
        let before = desired(
            &view(vec![eni("eni-b", 1, "10.0.0.20", &[], &[])]),
            &nodes(),
        );
        let mut moved = eni("eni-b", 2, "10.0.0.20", &[], &[]);
        moved.mac = before.links["vb"].mac;
        let after = desired(&view(vec![moved]), &nodes());
        let p = plan(&after, &observed_after(&before));
        assert_eq!(p.deleted, vec!["vb".to_owned()]);
        assert_eq!(p.created, vec!["vb".to_owned()]);
        assert!(p.vpc.iter().any(|c| c.contains("peer name eth2")));
        // The route through the re-created link must be re-added.
        assert!(
            p.vpc
                .iter()
                .any(|c| c.starts_with("route replace 10.0.0.20/32"))
        );
    }

    #[test]
    fn conflicts_and_unknown_instances_are_reported_not_fatal() {
        let mut v = view(vec![
            eni("eni-a", 0, "10.0.0.10", &["10.0.0.50"], &[]),
            eni("eni-b", 1, "10.0.0.20", &["10.0.0.50"], &[]),
        ]);
        v.nodes.push(NodeView {
            instance_id: "i-unknown".into(),
            enis: vec![eni("eni-c", 0, "10.0.0.30", &[], &[])],
        });
        let d = desired(&v, &nodes());
        assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
        assert_eq!(
            d.routes[&net("10.0.0.50/32")],
            RouteTarget::Eni("va".into())
        );
        assert!(!d.links.contains_key("vc"));
    }
}
