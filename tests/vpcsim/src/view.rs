//! The contract between the emulator and the network fabric: a plain snapshot of what the
//! fabric must make real. The emulator produces it (`Sim::fabric_view`), the fabric applies it
//! idempotently (reconcile against the kernel), so missed or coalesced updates are harmless.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Everything the fabric needs, at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FabricView {
    /// Monotonic generation: bumped by every emulator change that the fabric can see.
    pub generation: u64,
    /// The VPC's IPv4 CIDR blocks.
    pub vpc_cidrs: Vec<Ipv4Net>,
    /// Every subnet of the VPC.
    pub subnets: Vec<SubnetView>,
    /// Every instance (node), in creation order.
    pub nodes: Vec<NodeView>,
}

/// One subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetView {
    /// `subnet-…` id.
    pub subnet_id: String,
    /// The subnet CIDR.
    pub cidr: Ipv4Net,
    /// The VPC router's address in it (network + 1), as on AWS.
    pub gateway: Ipv4Addr,
}

/// One instance and the ENIs currently attached to it (state `attached` only: an ENI still
/// `attaching` is not visible to the fabric yet, like a NIC not yet hot-plugged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// `i-…` id.
    pub instance_id: String,
    /// Attached ENIs, ordered by (network card, device index).
    pub enis: Vec<EniView>,
}

/// One attached ENI and the addresses EC2 routes to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniView {
    /// `eni-…` id.
    pub eni_id: String,
    /// MAC address, as IMDS shows it.
    pub mac: [u8; 6],
    /// Attachment device index.
    pub device_index: u32,
    /// Network card index.
    pub network_card: u32,
    /// The subnet the ENI lives in.
    pub subnet_cidr: Ipv4Net,
    /// Primary private IPv4.
    pub primary_ip: Ipv4Addr,
    /// Secondary private IPv4 addresses.
    pub secondary_ips: Vec<Ipv4Addr>,
    /// Delegated /28 prefixes.
    pub prefixes: Vec<Ipv4Net>,
}
