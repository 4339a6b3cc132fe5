//! EC2 semantics of the emulator, driven through the real aws-sdk-ec2 client.
#![allow(clippy::unwrap_used)]

mod emulator_common;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use aws_sdk_ec2::types::{
    Filter, NetworkInterfaceAttachmentChanges, ResourceType, Tag, TagSpecification,
};
use emulator_common::{client, raw_http, start};
use ipnet::Ipv4Net;
use vpcsim::SimConfig;

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

async fn create_eni(ec2: &aws_sdk_ec2::Client, subnet: &str) -> String {
    ec2.create_network_interface()
        .subnet_id(subnet)
        .send()
        .await
        .unwrap()
        .network_interface()
        .unwrap()
        .network_interface_id()
        .unwrap()
        .to_string()
}

async fn attach(ec2: &aws_sdk_ec2::Client, eni: &str, inst: &str, dev: i32, card: i32) -> String {
    ec2.attach_network_interface()
        .network_interface_id(eni)
        .instance_id(inst)
        .device_index(dev)
        .network_card_index(card)
        .send()
        .await
        .unwrap()
        .attachment_id()
        .unwrap()
        .to_string()
}

async fn available(ec2: &aws_sdk_ec2::Client, subnet: &str) -> i32 {
    ec2.describe_subnets()
        .subnet_ids(subnet)
        .send()
        .await
        .unwrap()
        .subnets()[0]
        .available_ip_address_count()
        .unwrap()
}

#[tokio::test]
async fn not_found_and_invalid_parameter_errors() {
    let env = start(SimConfig::default(), "10.0.1.0/24", "m5.large").await;
    let ec2 = &env.ec2;

    let msg = expect_err!(
        ec2.delete_network_interface()
            .network_interface_id("eni-0000000000000dead")
            .send()
            .await,
        "InvalidNetworkInterfaceID.NotFound",
        400
    );
    assert!(msg.contains("'eni-0000000000000dead'"), "{msg}");

    // An unknown ID in a bulk describe fails the whole call and quotes that ID.
    let msg = expect_err!(
        ec2.describe_network_interfaces()
            .network_interface_ids(&env.node.primary_eni_id)
            .network_interface_ids("eni-0000000000000beef")
            .send()
            .await,
        "InvalidNetworkInterfaceID.NotFound",
        400
    );
    assert!(msg.contains("'eni-0000000000000beef'"), "{msg}");

    expect_err!(
        ec2.detach_network_interface()
            .attachment_id("eni-attach-00000000000000001")
            .send()
            .await,
        "InvalidAttachmentID.NotFound",
        400
    );
    expect_err!(
        ec2.modify_network_interface_attribute()
            .network_interface_id(&env.node.primary_eni_id)
            .attachment(
                NetworkInterfaceAttachmentChanges::builder()
                    .attachment_id("eni-attach-00000000000000002")
                    .delete_on_termination(true)
                    .build()
            )
            .send()
            .await,
        "InvalidAttachmentID.NotFound",
        400
    );
    expect_err!(
        ec2.create_network_interface()
            .subnet_id("subnet-00000000000000000")
            .send()
            .await,
        "InvalidSubnetID.NotFound",
        400
    );
    expect_err!(
        ec2.describe_instances()
            .instance_ids("i-00000000000000000")
            .send()
            .await,
        "InvalidInstanceID.NotFound",
        400
    );
    expect_err!(
        ec2.create_network_interface()
            .subnet_id(&env.subnet)
            .groups("sg-00000000000000000")
            .send()
            .await,
        "InvalidGroup.NotFound",
        400
    );

    // Count options are mutually exclusive.
    expect_err!(
        ec2.create_network_interface()
            .subnet_id(&env.subnet)
            .secondary_private_ip_address_count(2)
            .ipv4_prefix_count(1)
            .send()
            .await,
        "InvalidParameterCombination",
        400
    );

    let eni = create_eni(ec2, &env.subnet).await;
    expect_err!(
        ec2.assign_private_ip_addresses()
            .network_interface_id(&eni)
            .secondary_private_ip_address_count(1)
            .ipv4_prefix_count(1)
            .send()
            .await,
        "InvalidParameterCombination",
        400
    );

    // Device index 0 is the primary ENI's.
    let msg = expect_err!(
        ec2.attach_network_interface()
            .network_interface_id(&eni)
            .instance_id(&env.node.instance_id)
            .device_index(0)
            .send()
            .await,
        "InvalidParameterValue",
        400
    );
    assert!(msg.contains("device index '0'"), "{msg}");

    let att = attach(ec2, &eni, &env.node.instance_id, 1, 0).await;
    let msg = expect_err!(
        ec2.delete_network_interface()
            .network_interface_id(&eni)
            .send()
            .await,
        "InvalidParameterValue",
        400
    );
    assert!(msg.contains("currently in use"), "{msg}");

    // Unassigning an address that is not on the ENI.
    expect_err!(
        ec2.unassign_private_ip_addresses()
            .network_interface_id(&eni)
            .private_ip_addresses("10.0.1.200")
            .send()
            .await,
        "InvalidParameterValue",
        400
    );
    expect_err!(
        ec2.unassign_private_ip_addresses()
            .network_interface_id(&eni)
            .ipv4_prefixes("10.0.1.192/28")
            .send()
            .await,
        "InvalidParameterValue",
        400
    );

    // The primary ENI cannot be detached.
    let primary_att = ec2
        .describe_network_interfaces()
        .network_interface_ids(&env.node.primary_eni_id)
        .send()
        .await
        .unwrap()
        .network_interfaces()[0]
        .attachment()
        .unwrap()
        .attachment_id()
        .unwrap()
        .to_string();
    expect_err!(
        ec2.detach_network_interface()
            .attachment_id(&primary_att)
            .send()
            .await,
        "OperationNotPermitted",
        400
    );

    // Detach + delete work, and the ENI is gone afterwards.
    ec2.detach_network_interface()
        .attachment_id(&att)
        .send()
        .await
        .unwrap();
    ec2.delete_network_interface()
        .network_interface_id(&eni)
        .send()
        .await
        .unwrap();
    expect_err!(
        ec2.describe_network_interfaces()
            .network_interface_ids(&eni)
            .send()
            .await,
        "InvalidNetworkInterfaceID.NotFound",
        400
    );
}

#[tokio::test]
async fn per_eni_and_per_card_limits() {
    // m5.large: 3 ENIs, 10 IPv4 slots per ENI.
    let env = start(SimConfig::default(), "10.0.2.0/24", "m5.large").await;
    let ec2 = &env.ec2;
    let inst = &env.node.instance_id;

    let eni = create_eni(ec2, &env.subnet).await;
    attach(ec2, &eni, inst, 1, 0).await;
    // primary + 7 secondaries + 1 prefix = 9 slots; one more fits, two do not.
    ec2.assign_private_ip_addresses()
        .network_interface_id(&eni)
        .secondary_private_ip_address_count(7)
        .send()
        .await
        .unwrap();
    ec2.assign_private_ip_addresses()
        .network_interface_id(&eni)
        .ipv4_prefix_count(1)
        .send()
        .await
        .unwrap();
    expect_err!(
        ec2.assign_private_ip_addresses()
            .network_interface_id(&eni)
            .secondary_private_ip_address_count(2)
            .send()
            .await,
        "PrivateIpAddressLimitExceeded",
        400
    );
    // Nothing was assigned by the failed call (atomic).
    let before = available(ec2, &env.subnet).await;
    expect_err!(
        ec2.assign_private_ip_addresses()
            .network_interface_id(&eni)
            .ipv4_prefix_count(2)
            .send()
            .await,
        "PrivateIpAddressLimitExceeded",
        400
    );
    assert_eq!(available(ec2, &env.subnet).await, before);
    ec2.assign_private_ip_addresses()
        .network_interface_id(&eni)
        .secondary_private_ip_address_count(1)
        .send()
        .await
        .unwrap();

    let eni3 = create_eni(ec2, &env.subnet).await;
    attach(ec2, &eni3, inst, 2, 0).await;
    let eni4 = create_eni(ec2, &env.subnet).await;
    expect_err!(
        ec2.attach_network_interface()
            .network_interface_id(&eni4)
            .instance_id(inst)
            .device_index(3)
            .send()
            .await,
        "AttachmentLimitExceeded",
        400
    );
    // m5.large has a single network card.
    expect_err!(
        ec2.attach_network_interface()
            .network_interface_id(&eni4)
            .instance_id(inst)
            .device_index(0)
            .network_card_index(1)
            .send()
            .await,
        "InvalidParameterValue",
        400
    );
}

#[tokio::test]
async fn attach_limits_of_a_multi_card_type() {
    // p4d.24xlarge: 4 network cards with 15 ENIs each.
    let env = start(SimConfig::default(), "10.0.16.0/20", "p4d.24xlarge").await;
    let ec2 = &env.ec2;
    let inst = &env.node.instance_id;
    let t = awscni_limits::lookup("p4d.24xlarge").unwrap();
    assert!(t.network_cards.len() > 1);
    for card in &t.network_cards {
        // Card 0 already holds the primary ENI at device 0.
        let first = if card.index == t.default_network_card_index {
            1
        } else {
            0
        };
        for dev in first..card.max_enis {
            let eni = create_eni(ec2, &env.subnet).await;
            attach(ec2, &eni, inst, dev as i32, card.index as i32).await;
        }
        let extra = create_eni(ec2, &env.subnet).await;
        expect_err!(
            ec2.attach_network_interface()
                .network_interface_id(&extra)
                .instance_id(inst)
                .device_index(card.max_enis as i32)
                .network_card_index(card.index as i32)
                .send()
                .await,
            "AttachmentLimitExceeded",
            400
        );
        ec2.delete_network_interface()
            .network_interface_id(&extra)
            .send()
            .await
            .unwrap();
    }
    // The instance-wide limit is reached exactly, and DescribeInstances lists every
    // attachment with its (card, device) pair once.
    let out = ec2
        .describe_instances()
        .instance_ids(inst)
        .send()
        .await
        .unwrap();
    let nis = out.reservations()[0].instances()[0].network_interfaces();
    assert_eq!(nis.len() as u32, t.max_enis);
    let pairs: HashSet<(i32, i32)> = nis
        .iter()
        .map(|n| {
            let a = n.attachment().unwrap();
            (a.network_card_index().unwrap(), a.device_index().unwrap())
        })
        .collect();
    assert_eq!(pairs.len() as u32, t.max_enis);
    let bad_card = t.network_cards.len() as i32;
    let eni = create_eni(ec2, &env.subnet).await;
    expect_err!(
        ec2.attach_network_interface()
            .network_interface_id(&eni)
            .instance_id(inst)
            .device_index(0)
            .network_card_index(bad_card)
            .send()
            .await,
        "InvalidParameterValue",
        400
    );
}

#[tokio::test]
async fn subnet_exhaustion_and_fragmentation() {
    // A /28 has 16 − 5 = 11 usable addresses and no room for a prefix.
    let env = start(SimConfig::default(), "10.0.3.0/28", "m5.4xlarge").await;
    let ec2 = &env.ec2;
    assert_eq!(available(ec2, &env.subnet).await, 10); // the node's primary took one
    let eni = create_eni(ec2, &env.subnet).await;
    assert_eq!(available(ec2, &env.subnet).await, 9);
    expect_err!(
        ec2.assign_private_ip_addresses()
            .network_interface_id(&eni)
            .secondary_private_ip_address_count(10)
            .send()
            .await,
        "InsufficientFreeAddressesInSubnet",
        400
    );
    let out = ec2
        .assign_private_ip_addresses()
        .network_interface_id(&eni)
        .secondary_private_ip_address_count(9)
        .send()
        .await
        .unwrap();
    let got: Vec<Ipv4Addr> = out
        .assigned_private_ip_addresses()
        .iter()
        .map(|a| a.private_ip_address().unwrap().parse().unwrap())
        .collect();
    // Never a reserved address (.0-.3 and .15).
    for a in &got {
        let last = a.octets()[3];
        assert!((4..=14).contains(&last), "reserved address {a} handed out");
    }
    assert_eq!(available(ec2, &env.subnet).await, 0);
    expect_err!(
        create_eni_result(ec2, &env.subnet).await,
        "InsufficientFreeAddressesInSubnet",
        400
    );
    expect_err!(
        ec2.assign_private_ip_addresses()
            .network_interface_id(&eni)
            .ipv4_prefix_count(1)
            .send()
            .await,
        "InsufficientCidrBlocks",
        400
    );

    // Fragmentation: a /26 (59 usable) where every /28 holds one address: enough addresses
    // (≥ 16 free) but no aligned free block.
    let sub = env
        .sim
        .add_subnet("10.0.4.0/26".parse().unwrap(), None, &[])
        .unwrap();
    let frag = ec2
        .create_network_interface()
        .subnet_id(&sub)
        .private_ip_address("10.0.4.20")
        .send()
        .await
        .unwrap();
    let frag = frag
        .network_interface()
        .unwrap()
        .network_interface_id()
        .unwrap();
    ec2.assign_private_ip_addresses()
        .network_interface_id(frag)
        .private_ip_addresses("10.0.4.36")
        .send()
        .await
        .unwrap();
    assert!(available(ec2, &sub).await >= 16);
    expect_err!(
        ec2.assign_private_ip_addresses()
            .network_interface_id(frag)
            .ipv4_prefix_count(1)
            .send()
            .await,
        "InsufficientCidrBlocks",
        400
    );
    // Freeing one block makes a prefix possible again.
    ec2.unassign_private_ip_addresses()
        .network_interface_id(frag)
        .private_ip_addresses("10.0.4.36")
        .send()
        .await
        .unwrap();
    let p = ec2
        .assign_private_ip_addresses()
        .network_interface_id(frag)
        .ipv4_prefix_count(1)
        .send()
        .await
        .unwrap();
    assert_eq!(
        p.assigned_ipv4_prefixes()[0].ipv4_prefix(),
        Some("10.0.4.32/28")
    );
}

async fn create_eni_result(
    ec2: &aws_sdk_ec2::Client,
    subnet: &str,
) -> Result<
    aws_sdk_ec2::operation::create_network_interface::CreateNetworkInterfaceOutput,
    aws_sdk_ec2::error::SdkError<
        aws_sdk_ec2::operation::create_network_interface::CreateNetworkInterfaceError,
        aws_sdk_ec2::config::http::HttpResponse,
    >,
> {
    ec2.create_network_interface()
        .subnet_id(subnet)
        .send()
        .await
}

#[tokio::test]
async fn prefixes_and_addresses_are_exclusive_and_counted() {
    let env = start(SimConfig::default(), "10.0.5.0/24", "m5.4xlarge").await;
    let ec2 = &env.ec2;
    let subnet_net: Ipv4Net = "10.0.5.0/24".parse().unwrap();
    let a = ec2
        .create_network_interface()
        .subnet_id(&env.subnet)
        .ipv4_prefix_count(3)
        .send()
        .await
        .unwrap();
    let a_ni = a.network_interface().unwrap();
    let a_id = a_ni.network_interface_id().unwrap().to_string();
    let prefixes: Vec<Ipv4Net> = a_ni
        .ipv4_prefixes()
        .iter()
        .map(|p| p.ipv4_prefix().unwrap().parse().unwrap())
        .collect();
    assert_eq!(prefixes.len(), 3);
    for p in &prefixes {
        assert_eq!(p.prefix_len(), 28);
        assert_eq!(u32::from(p.network()) % 16, 0, "{p} not aligned");
        assert!(subnet_net.contains(p));
        // never the first (reserved .0-.3) or last (broadcast) block
        assert!(p.network() != subnet_net.network() && p.broadcast() != subnet_net.broadcast());
    }
    // node primary + ENI primary + 3 × 16
    assert_eq!(available(ec2, &env.subnet).await, 251 - 2 - 48);

    // Another ENI asks for individual addresses: none may come from a prefix.
    let b_id = create_eni(ec2, &env.subnet).await;
    let got = ec2
        .assign_private_ip_addresses()
        .network_interface_id(&b_id)
        .secondary_private_ip_address_count(29)
        .send()
        .await
        .unwrap();
    assert_eq!(got.assigned_private_ip_addresses().len(), 29);
    for ip in got.assigned_private_ip_addresses() {
        let ip: Ipv4Addr = ip.private_ip_address().unwrap().parse().unwrap();
        assert!(
            !prefixes.iter().any(|p| p.contains(&ip)),
            "{ip} inside a prefix"
        );
    }
    assert_eq!(available(ec2, &env.subnet).await, 251 - 3 - 29 - 48);

    // Explicitly asking for an address inside a prefix is refused.
    let inside = Ipv4Addr::from(u32::from(prefixes[0].network()) + 5).to_string();
    expect_err!(
        ec2.assign_private_ip_addresses()
            .network_interface_id(&b_id)
            .private_ip_addresses(&inside)
            .send()
            .await,
        "InvalidIPAddress.InUse",
        400
    );
    // And a prefix over an assigned address is refused too.
    let b_ip: Ipv4Addr = got.assigned_private_ip_addresses()[0]
        .private_ip_address()
        .unwrap()
        .parse()
        .unwrap();
    let over = Ipv4Net::new(b_ip, 28).unwrap().trunc().to_string();
    expect_err!(
        ec2.assign_private_ip_addresses()
            .network_interface_id(&a_id)
            .ipv4_prefixes(&over)
            .send()
            .await,
        "InvalidParameterValue",
        400
    );
    // Unaligned prefix.
    expect_err!(
        ec2.assign_private_ip_addresses()
            .network_interface_id(&a_id)
            .ipv4_prefixes("10.0.5.200/28")
            .send()
            .await,
        "InvalidParameterValue",
        400
    );

    // Releasing a prefix returns its 16 addresses.
    let before = available(ec2, &env.subnet).await;
    ec2.unassign_private_ip_addresses()
        .network_interface_id(&a_id)
        .ipv4_prefixes(prefixes[1].to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(available(ec2, &env.subnet).await, before + 16);
    // Deleting an ENI returns everything it held.
    ec2.delete_network_interface()
        .network_interface_id(&b_id)
        .send()
        .await
        .unwrap();
    assert_eq!(available(ec2, &env.subnet).await, before + 16 + 30);
    env.sim_invariants();
}

trait Invariants {
    fn sim_invariants(&self);
}
impl Invariants for emulator_common::Env {
    fn sim_invariants(&self) {
        self.sim.check_invariants().unwrap();
    }
}

#[tokio::test]
async fn assign_returns_only_new_addresses() {
    let env = start(SimConfig::default(), "10.0.6.0/24", "m5.4xlarge").await;
    let ec2 = &env.ec2;
    let eni = create_eni(ec2, &env.subnet).await;
    let mut seen = HashSet::new();
    for n in [2, 3, 1] {
        let out = ec2
            .assign_private_ip_addresses()
            .network_interface_id(&eni)
            .secondary_private_ip_address_count(n)
            .send()
            .await
            .unwrap();
        assert_eq!(out.network_interface_id(), Some(eni.as_str()));
        let ips: Vec<String> = out
            .assigned_private_ip_addresses()
            .iter()
            .map(|a| a.private_ip_address().unwrap().to_string())
            .collect();
        assert_eq!(ips.len(), n as usize, "asked for {n}, got {ips:?}");
        for ip in ips {
            assert!(seen.insert(ip.clone()), "{ip} returned twice");
        }
        assert!(out.assigned_ipv4_prefixes().is_empty());
    }
    let out = ec2
        .assign_private_ip_addresses()
        .network_interface_id(&eni)
        .ipv4_prefix_count(2)
        .send()
        .await
        .unwrap();
    assert_eq!(out.assigned_ipv4_prefixes().len(), 2);
    assert!(out.assigned_private_ip_addresses().is_empty());
    // The ENI now holds primary + 6 secondaries + 2 prefixes.
    let d = ec2
        .describe_network_interfaces()
        .network_interface_ids(&eni)
        .send()
        .await
        .unwrap();
    let ni = &d.network_interfaces()[0];
    assert_eq!(ni.private_ip_addresses().len(), 7);
    assert_eq!(
        ni.private_ip_addresses()
            .iter()
            .filter(|p| p.primary() == Some(true))
            .count(),
        1
    );
    assert_eq!(ni.ipv4_prefixes().len(), 2);
}

#[tokio::test]
async fn describe_filters_and_pagination() {
    let env = start(SimConfig::default(), "10.0.8.0/22", "m5.large").await;
    let ec2 = &env.ec2;
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    let mut mine = Vec::new();
    for i in 0..23 {
        let out = ec2
            .create_network_interface()
            .subnet_id(&env.subnet)
            .description(format!("aws-K8S-{}", env.node.instance_id))
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::NetworkInterface)
                    .tags(tag(
                        "node.k8s.amazonaws.com/instance_id",
                        &env.node.instance_id,
                    ))
                    .tags(tag("n", &i.to_string()))
                    .build(),
            )
            .send()
            .await
            .unwrap();
        mine.push(
            out.network_interface()
                .unwrap()
                .network_interface_id()
                .unwrap()
                .to_string(),
        );
    }
    // Paginate with MaxResults=5: 5+5+5+5+3, every ENI exactly once.
    let mut token: Option<String> = None;
    let mut pages = Vec::new();
    let mut ids = Vec::new();
    loop {
        let out = ec2
            .describe_network_interfaces()
            .filters(filter("tag-key", "node.k8s.amazonaws.com/instance_id"))
            .filters(filter("status", "available"))
            .filters(filter("vpc-id", "vpc-*"))
            .max_results(5)
            .set_next_token(token.clone())
            .send()
            .await
            .unwrap();
        pages.push(out.network_interfaces().len());
        ids.extend(
            out.network_interfaces()
                .iter()
                .map(|n| n.network_interface_id().unwrap().to_string()),
        );
        token = out.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, vec![5, 5, 5, 5, 3]);
    assert_eq!(ids, mine);

    // The SDK paginator agrees.
    let mut stream = ec2
        .describe_network_interfaces()
        .filters(filter("tag:n", "1*"))
        .max_results(5)
        .into_paginator()
        .items()
        .send();
    let mut n = 0;
    while let Some(item) = stream.next().await {
        let ni = item.unwrap();
        let t = ni.tag_set().iter().find(|t| t.key() == Some("n")).unwrap();
        assert!(t.value().unwrap().starts_with('1'));
        n += 1;
    }
    assert_eq!(n, 11); // 1, 10..19

    // Other filters ipamd uses.
    let attached = ec2
        .describe_network_interfaces()
        .filters(filter("attachment.instance-id", &env.node.instance_id))
        .send()
        .await
        .unwrap();
    assert_eq!(attached.network_interfaces().len(), 1);
    let by_subnet = ec2
        .describe_network_interfaces()
        .filters(filter("subnet-id", &env.subnet))
        .filters(filter("description", "aws-K8S-*"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_subnet.network_interfaces().len(), 23);
    let two = ec2
        .describe_network_interfaces()
        .filters(
            Filter::builder()
                .name("network-interface-id")
                .values(&mine[0])
                .values(&mine[7])
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(two.network_interfaces().len(), 2);
    let in_use = ec2
        .describe_network_interfaces()
        .filters(filter("status", "in-use"))
        .filters(filter("attachment.status", "attached"))
        .send()
        .await
        .unwrap();
    assert_eq!(in_use.network_interfaces().len(), 1);
    expect_err!(
        ec2.describe_network_interfaces()
            .filters(filter("no-such-filter", "x"))
            .send()
            .await,
        "InvalidParameterValue",
        400
    );
    // MaxResults range and the IDs/MaxResults exclusion.
    expect_err!(
        ec2.describe_network_interfaces()
            .max_results(4)
            .send()
            .await,
        "InvalidParameterValue",
        400
    );
    expect_err!(
        ec2.describe_network_interfaces()
            .network_interface_ids(&mine[0])
            .max_results(5)
            .send()
            .await,
        "InvalidParameterCombination",
        400
    );

    // Tags: CreateTags overwrites, DeleteTags removes; tag:<k> filters see it.
    ec2.create_tags()
        .resources(&mine[3])
        .tags(tag("n", "x"))
        .send()
        .await
        .unwrap();
    let x = ec2
        .describe_network_interfaces()
        .filters(filter("tag:n", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(x.network_interfaces().len(), 1);
    ec2.delete_tags()
        .resources(&mine[3])
        .tags(Tag::builder().key("n").build())
        .send()
        .await
        .unwrap();
    let x = ec2
        .describe_network_interfaces()
        .network_interface_ids(&mine[3])
        .send()
        .await
        .unwrap();
    assert!(
        x.network_interfaces()[0]
            .tag_set()
            .iter()
            .all(|t| t.key() != Some("n"))
    );
    expect_err!(
        ec2.create_tags()
            .resources("eni-00000000000000000")
            .tags(tag("a", "b"))
            .send()
            .await,
        "InvalidNetworkInterfaceID.NotFound",
        400
    );

    // Subnets and security groups.
    let subnets = ec2
        .describe_subnets()
        .filters(filter("availability-zone", "us-west-2a"))
        .send()
        .await
        .unwrap();
    assert_eq!(subnets.subnets().len(), 1);
    assert_eq!(subnets.subnets()[0].cidr_block(), Some("10.0.8.0/22"));
    let sgs = ec2.describe_security_groups().send().await.unwrap();
    assert_eq!(
        sgs.security_groups()[0].group_id(),
        Some(env.node.security_group_ids[0].as_str())
    );
}

#[tokio::test]
async fn describe_instance_types_paginates_the_whole_table() {
    let env = start(SimConfig::default(), "10.0.12.0/24", "m5.large").await;
    let ec2 = &env.ec2;
    let mut stream = ec2
        .describe_instance_types()
        .max_results(100)
        .into_paginator()
        .items()
        .send();
    let mut names = HashSet::new();
    let mut pages_seen = 0;
    while let Some(t) = stream.next().await {
        let t = t.unwrap();
        assert!(names.insert(t.instance_type().unwrap().as_str().to_string()));
        pages_seen += 1;
    }
    assert_eq!(pages_seen, awscni_limits::all().len());
    assert!(names.len() > 1000, "only {} types", names.len());

    let first = ec2
        .describe_instance_types()
        .max_results(5)
        .send()
        .await
        .unwrap();
    assert_eq!(first.instance_types().len(), 5);
    assert!(first.next_token().is_some());
    expect_err!(
        ec2.describe_instance_types().max_results(101).send().await,
        "InvalidParameterValue",
        400
    );

    let out = ec2
        .describe_instance_types()
        .instance_types("c6in.32xlarge".into())
        .instance_types("m5.metal".into())
        .send()
        .await
        .unwrap();
    for t in out.instance_types() {
        let ni = t.network_info().unwrap();
        let want = awscni_limits::lookup(t.instance_type().unwrap().as_str()).unwrap();
        assert_eq!(ni.maximum_network_interfaces(), Some(want.max_enis as i32));
        assert_eq!(
            ni.ipv4_addresses_per_interface(),
            Some(want.ipv4_per_eni as i32)
        );
        assert_eq!(ni.network_cards().len(), want.network_cards.len());
        assert_eq!(
            ni.maximum_network_cards(),
            Some(want.network_cards.len() as i32)
        );
        match t.instance_type().unwrap().as_str() {
            "m5.metal" => {
                assert_eq!(t.hypervisor(), None);
                assert_eq!(t.bare_metal(), Some(true));
            }
            _ => {
                assert_eq!(t.hypervisor().map(|h| h.as_str()), Some("nitro"));
                assert_eq!(ni.network_cards()[1].maximum_network_interfaces(), Some(8));
            }
        }
    }
    expect_err!(
        ec2.describe_instance_types()
            .instance_types("m5.nonsense".into())
            .send()
            .await,
        "InvalidInstanceType",
        400
    );
}

#[tokio::test]
async fn attach_and_detach_pass_through_transitional_states() {
    // Long enough that a loaded machine still sees the transitional states; the checks of
    // those states are skipped if the test itself was slower than the delay.
    let delay = Duration::from_secs(2);
    let cfg = SimConfig {
        attach_delay: delay,
        detach_delay: delay,
        ..SimConfig::default()
    };
    let env = start(cfg, "10.0.13.0/24", "m5.large").await;
    let ec2 = &env.ec2;
    let eni = create_eni(ec2, &env.subnet).await;
    let attach_started = std::time::Instant::now();
    let att = attach(ec2, &eni, &env.node.instance_id, 1, 0).await;
    let status = |ni: &aws_sdk_ec2::types::NetworkInterface| {
        (
            ni.status().map(|s| s.as_str().to_string()),
            ni.attachment()
                .and_then(|a| a.status())
                .map(|s| s.as_str().to_string()),
        )
    };
    let describe = || async {
        ec2.describe_network_interfaces()
            .network_interface_ids(&eni)
            .send()
            .await
            .unwrap()
            .network_interfaces()[0]
            .clone()
    };
    // Right after the call the attachment is still `attaching` (the delay has not passed: the
    // state only moves when the model sees time pass).
    let mut states = vec![status(&describe().await)];
    let fast_enough = attach_started.elapsed() < delay;
    while states.last().unwrap().1.as_deref() != Some("attached") {
        tokio::time::sleep(Duration::from_millis(50)).await;
        states.push(status(&describe().await));
    }
    if fast_enough {
        assert_eq!(
            states[0],
            (Some("attaching".into()), Some("attaching".into())),
            "{states:?}"
        );
    }
    assert_eq!(
        states.last().unwrap(),
        &(Some("in-use".into()), Some("attached".into()))
    );
    // Device index 1 is taken while attached.
    let other = create_eni(ec2, &env.subnet).await;
    expect_err!(
        ec2.attach_network_interface()
            .network_interface_id(&other)
            .instance_id(&env.node.instance_id)
            .device_index(1)
            .send()
            .await,
        "InvalidParameterValue",
        400
    );
    ec2.modify_network_interface_attribute()
        .network_interface_id(&eni)
        .attachment(
            NetworkInterfaceAttachmentChanges::builder()
                .attachment_id(&att)
                .delete_on_termination(true)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        describe()
            .await
            .attachment()
            .unwrap()
            .delete_on_termination(),
        Some(true)
    );

    let detach_started = std::time::Instant::now();
    ec2.detach_network_interface()
        .attachment_id(&att)
        .send()
        .await
        .unwrap();
    let first = status(&describe().await);
    // "Detach then delete too early" yields the in-use error while detaching.
    let early = ec2
        .delete_network_interface()
        .network_interface_id(&eni)
        .send()
        .await;
    let mut last = status(&describe().await);
    while last.0.as_deref() != Some("available") {
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = status(&describe().await);
    }
    if detach_started.elapsed() < delay {
        assert_eq!(first, (Some("detaching".into()), Some("detaching".into())));
        let msg = expect_err!(early, "InvalidParameterValue", 400);
        assert!(msg.contains("currently in use"));
    }
    assert_eq!(last.1, None);
    // The device index is free again.
    attach(ec2, &other, &env.node.instance_id, 1, 0).await;
    ec2.delete_network_interface()
        .network_interface_id(&eni)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn protocol_errors_unsigned_and_unversioned() {
    let env = start(SimConfig::default(), "10.0.14.0/24", "m5.large").await;
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let signed = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        (
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=x/20260101/us-west-2/ec2/aws4_request, SignedHeaders=host, Signature=00",
        ),
    ];
    let (st, body) = raw_http(
        env.ep.ec2,
        "POST",
        "/",
        &form,
        "Action=DescribeSubnets&Version=2016-11-15",
    )
    .await;
    assert_eq!(st, 401, "{body}");
    assert!(
        body.contains("<Code>AuthFailure</Code>") && body.contains("<RequestID>"),
        "{body}"
    );
    let (st, body) = raw_http(env.ep.ec2, "POST", "/", &signed, "Action=DescribeSubnets").await;
    assert_eq!(st, 400);
    assert!(body.contains("<Code>MissingParameter</Code>"), "{body}");
    let (st, body) = raw_http(env.ep.ec2, "POST", "/", &signed, "Version=2016-11-15").await;
    assert_eq!(st, 400);
    assert!(body.contains("<Code>MissingAction</Code>"), "{body}");
    let (st, body) = raw_http(
        env.ep.ec2,
        "POST",
        "/",
        &signed,
        "Action=RunInstances&Version=2016-11-15",
    )
    .await;
    assert_eq!(st, 400);
    assert!(body.contains("<Code>InvalidAction</Code>"), "{body}");
    // GET with a query string works like POST.
    let (st, body) = raw_http(
        env.ep.ec2,
        "GET",
        "/?Action=DescribeSubnets&Version=2016-11-15",
        &signed[1..],
        "",
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains(
            "<DescribeSubnetsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">"
        )
    );
    assert!(
        body.contains("<availableIpAddressCount>250</availableIpAddressCount>"),
        "{body}"
    );
    // A client pointed at a wrong port fails cleanly (sanity check of the harness).
    let c = client("http://127.0.0.1:9");
    assert!(c.describe_subnets().send().await.is_err());
}

#[tokio::test]
async fn create_with_explicit_addresses_prefixes_and_groups() {
    let env = start(SimConfig::default(), "10.0.15.0/24", "m5.large").await;
    let ec2 = &env.ec2;
    let sg = env.sim.add_security_group("pods");
    let out = ec2
        .create_network_interface()
        .subnet_id(&env.subnet)
        .groups(&sg)
        .private_ip_addresses(
            aws_sdk_ec2::types::PrivateIpAddressSpecification::builder()
                .private_ip_address("10.0.15.100")
                .primary(true)
                .build(),
        )
        .private_ip_addresses(
            aws_sdk_ec2::types::PrivateIpAddressSpecification::builder()
                .private_ip_address("10.0.15.101")
                .primary(false)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let ni = out.network_interface().unwrap();
    assert_eq!(ni.private_ip_address(), Some("10.0.15.100"));
    let ips: Vec<(&str, bool)> = ni
        .private_ip_addresses()
        .iter()
        .map(|p| (p.private_ip_address().unwrap(), p.primary().unwrap()))
        .collect();
    assert_eq!(ips, vec![("10.0.15.100", true), ("10.0.15.101", false)]);
    assert_eq!(ni.groups()[0].group_id(), Some(sg.as_str()));
    assert_eq!(ni.groups()[0].group_name(), Some("pods"));
    // The same address again is in use.
    expect_err!(
        ec2.create_network_interface()
            .subnet_id(&env.subnet)
            .private_ip_address("10.0.15.101")
            .send()
            .await,
        "InvalidIPAddress.InUse",
        400
    );
    // A reserved one is invalid.
    expect_err!(
        ec2.create_network_interface()
            .subnet_id(&env.subnet)
            .private_ip_address("10.0.15.255")
            .send()
            .await,
        "InvalidParameterValue",
        400
    );

    let out = ec2
        .create_network_interface()
        .subnet_id(&env.subnet)
        .ipv4_prefixes(
            aws_sdk_ec2::types::Ipv4PrefixSpecificationRequest::builder()
                .ipv4_prefix("10.0.15.48/28")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let ni = out.network_interface().unwrap();
    let pfx: Vec<&str> = ni
        .ipv4_prefixes()
        .iter()
        .map(|p| p.ipv4_prefix().unwrap())
        .collect();
    assert_eq!(pfx, vec!["10.0.15.48/28"]);
    // Its primary was picked outside the prefix.
    let primary: Ipv4Addr = ni.private_ip_address().unwrap().parse().unwrap();
    assert!(
        !"10.0.15.48/28"
            .parse::<Ipv4Net>()
            .unwrap()
            .contains(&primary)
    );

    // Security groups of the primary ENI change through ModifyNetworkInterfaceAttribute and
    // IMDS follows.
    ec2.modify_network_interface_attribute()
        .network_interface_id(&env.node.primary_eni_id)
        .groups(&sg)
        .send()
        .await
        .unwrap();
    let addr = env.ep.imds_for(&env.node.instance_id).unwrap();
    let token = emulator_common::imds_token(addr).await;
    let (st, body) = emulator_common::imds_get(
        addr,
        &token,
        &format!(
            "/latest/meta-data/network/interfaces/macs/{}/security-group-ids",
            vpcsim::model::mac_string(&env.node.mac)
        ),
    )
    .await;
    assert_eq!((st, body.as_str()), (200, sg.as_str()));
    env.sim.check_invariants().unwrap();
}

#[tokio::test]
async fn new_enis_can_be_briefly_not_found_by_describe() {
    let lag = Duration::from_secs(2);
    let cfg = SimConfig {
        describe_lag: lag,
        ..SimConfig::default()
    };
    let env = start(cfg, "10.0.17.0/24", "m5.large").await;
    let ec2 = &env.ec2;
    let t0 = std::time::Instant::now();
    let eni = create_eni(ec2, &env.subnet).await;
    let by_id = ec2
        .describe_network_interfaces()
        .network_interface_ids(&eni)
        .send()
        .await;
    let listed = ec2
        .describe_network_interfaces()
        .filters(filter("status", "available"))
        .send()
        .await
        .unwrap();
    if t0.elapsed() < lag {
        let msg = expect_err!(by_id, "InvalidNetworkInterfaceID.NotFound", 400);
        assert!(msg.contains(&format!("'{eni}'")));
        assert!(listed.network_interfaces().is_empty());
    }
    // Other actions see it at once.
    attach(ec2, &eni, &env.node.instance_id, 1, 0).await;
    loop {
        let r = ec2
            .describe_network_interfaces()
            .network_interface_ids(&eni)
            .send()
            .await;
        if let Ok(out) = r {
            assert_eq!(
                out.network_interfaces()[0].status().unwrap().as_str(),
                "in-use"
            );
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(t0.elapsed() >= lag);
}

/// Every Describe action rejects a filter name it does not know (EC2 answers
/// InvalidParameterValue naming the filter), and `instance-type` accepts no tag filter.
#[tokio::test]
async fn unknown_filter_names_are_rejected_by_every_describe() {
    let env = start(SimConfig::default(), "10.0.12.0/24", "m5.large").await;
    let ec2 = &env.ec2;
    let bad = || filter("no-such-filter", "x");
    let msgs = [
        expect_err!(
            ec2.describe_network_interfaces()
                .filters(bad())
                .send()
                .await,
            "InvalidParameterValue",
            400
        ),
        expect_err!(
            ec2.describe_instances().filters(bad()).send().await,
            "InvalidParameterValue",
            400
        ),
        expect_err!(
            ec2.describe_subnets().filters(bad()).send().await,
            "InvalidParameterValue",
            400
        ),
        expect_err!(
            ec2.describe_security_groups().filters(bad()).send().await,
            "InvalidParameterValue",
            400
        ),
        expect_err!(
            ec2.describe_instance_types().filters(bad()).send().await,
            "InvalidParameterValue",
            400
        ),
        // Instance types carry no tags, so tag filters are unknown there.
        expect_err!(
            ec2.describe_instance_types()
                .filters(filter("tag-key", "x"))
                .send()
                .await,
            "InvalidParameterValue",
            400
        ),
    ];
    for m in &msgs[..5] {
        assert!(m.contains("'no-such-filter'"), "{m}");
    }
    assert!(msgs[5].contains("'tag-key'"), "{}", msgs[5]);
}
