//! Byte-level fixtures for every message of the wire contract.
//!
//! The expected bytes are written by hand from the field tables in
//! shared/reference/wire-contract.md (tag byte = field number << 3 | wire type; 0 = varint,
//! 2 = length-delimited), not produced by our own encoder, so a renumbered or retyped field in
//! `proto/*.proto` makes these tests fail.
#![allow(clippy::unwrap_used)]

use awscni_proto::{ext, rpc};
use prost::Message;

/// Encodes `msg`, compares with `expected`, and checks that decoding gives `msg` back.
fn check<M: Message + Default + PartialEq + std::fmt::Debug>(msg: M, expected: &[u8]) {
    let got = msg.encode_to_vec();
    assert_eq!(got, expected, "encoding of {msg:?}");
    assert_eq!(M::decode(expected).unwrap(), msg, "decoding");
}

fn s(v: &str) -> String {
    v.to_string()
}

#[test]
fn add_network_request() {
    let m = rpc::AddNetworkRequest {
        k8s_pod_name: s("p"),
        k8s_pod_namespace: s("n"),
        k8s_pod_infra_container_id: s("i"),
        netns: s("s"),
        if_name: s("e"),
        network_name: s("w"),
        container_id: s("c"),
        client_version: s("v"),
        requires_multi_nic_attachment: true,
    };
    check(
        m,
        &[
            0x0a, 1, b'p', // 1 K8S_POD_NAME
            0x12, 1, b'n', // 2 K8S_POD_NAMESPACE
            0x1a, 1, b'i', // 3 K8S_POD_INFRA_CONTAINER_ID
            0x22, 1, b's', // 4 Netns
            0x2a, 1, b'e', // 5 IfName
            0x32, 1, b'w', // 6 NetworkName
            0x3a, 1, b'c', // 7 ContainerID
            0x42, 1, b'v', // 8 ClientVersion
            0x48, 1, // 9 RequiresMultiNICAttachment
        ],
    );
}

#[test]
fn ip_allocation_metadata_with_negative_device_number() {
    let m = rpc::IpAllocationMetadata {
        i_pv4_addr: s("4"),
        i_pv6_addr: s("6"),
        device_number: -1,
        route_table_id: 2,
    };
    check(
        m,
        &[
            0x0a, 1, b'4', // 1 IPv4Addr
            0x12, 1, b'6', // 2 IPv6Addr
            // 3 DeviceNumber: int32 -1 is a 10-byte varint (sign-extended to 64 bits)
            0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, //
            0x20, 2, // 4 RouteTableId
        ],
    );
}

#[test]
fn add_network_reply() {
    let m = rpc::AddNetworkReply {
        success: true,
        ip_allocation_metadata: vec![rpc::IpAllocationMetadata {
            i_pv4_addr: s("4"),
            i_pv6_addr: String::new(),
            device_number: 1,
            route_table_id: 2,
        }],
        use_external_snat: true,
        vp_cv4_cid_rs: vec![s("c")],
        pod_vlan_id: 7,
        pod_enimac: s("m"),
        pod_eni_subnet_gw: s("g"),
        parent_if_index: 3,
        vp_cv6_cid_rs: vec![s("d")],
        network_policy_mode: s("x"),
    };
    check(
        m,
        &[
            0x08, 1, // 1 Success
            0x12, 7, 0x0a, 1, b'4', 0x18, 1, 0x20, 2, // 2 IPAllocationMetadata
            0x28, 1, // 5 UseExternalSNAT
            0x32, 1, b'c', // 6 VPCv4CIDRs
            0x38, 7, // 7 PodVlanId
            0x42, 1, b'm', // 8 PodENIMAC
            0x4a, 1, b'g', // 9 PodENISubnetGW
            0x50, 3, // 10 ParentIfIndex
            0x62, 1, b'd', // 12 VPCv6CIDRs
            0x6a, 1, b'x', // 13 NetworkPolicyMode
        ],
    );
}

#[test]
fn del_network_request() {
    let m = rpc::DelNetworkRequest {
        k8s_pod_name: s("p"),
        k8s_pod_namespace: s("n"),
        k8s_pod_infra_container_id: s("i"),
        reason: s("r"),
        if_name: s("e"),
        network_name: s("w"),
        container_id: s("c"),
        client_version: s("v"),
        k8s_pod_uid: s("u"),
    };
    check(
        m,
        &[
            0x0a, 1, b'p', // 1
            0x12, 1, b'n', // 2
            0x1a, 1, b'i', // 3
            0x2a, 1, b'r', // 5 Reason (4 is reserved)
            0x32, 1, b'e', // 6 IfName
            0x3a, 1, b'w', // 7 NetworkName
            0x42, 1, b'c', // 8 ContainerID
            0x4a, 1, b'v', // 9 ClientVersion
            0x52, 1, b'u', // 10 K8S_POD_UID
        ],
    );
}

#[test]
fn del_network_reply() {
    let m = rpc::DelNetworkReply {
        success: true,
        ip_allocation_metadata: vec![rpc::IpAllocationMetadata {
            i_pv4_addr: s("4"),
            ..Default::default()
        }],
        pod_vlan_id: 4,
        network_policy_mode: s("x"),
    };
    check(
        m,
        &[
            0x08, 1, // 1 Success
            0x12, 3, 0x0a, 1, b'4', // 2 IPAllocationMetadata
            0x20, 4, // 4 PodVlanId
            0x32, 1, b'x', // 6 NetworkPolicyMode
        ],
    );
}

#[test]
fn network_policy_agent_config_reply() {
    let m = rpc::NetworkPolicyAgentConfigReply {
        network_policy_mode: s("s"),
        multi_nic_enabled: true,
        node_i_pv4: s("4"),
        node_i_pv6: s("6"),
        instance_id: s("i"),
        region: s("r"),
    };
    check(
        m,
        &[
            0x0a, 1, b's', 0x10, 1, 0x1a, 1, b'4', 0x22, 1, b'6', 0x2a, 1, b'i', 0x32, 1, b'r',
        ],
    );
}

#[test]
fn np_backend_messages() {
    check(
        rpc::EnforceNpRequest {
            k8s_pod_name: s("p"),
            k8s_pod_namespace: s("n"),
            network_policy_mode: s("m"),
            interface_count: 1,
        },
        &[0x0a, 1, b'p', 0x12, 1, b'n', 0x1a, 1, b'm', 0x20, 1],
    );
    check(rpc::EnforceNpReply { success: true }, &[0x08, 1]);
    check(
        rpc::DeleteNpRequest {
            k8s_pod_name: s("p"),
            k8s_pod_namespace: s("n"),
        },
        &[0x0a, 1, b'p', 0x12, 1, b'n'],
    );
    check(rpc::DeleteNpReply { success: true }, &[0x08, 1]);
}

#[test]
fn extension_messages() {
    check(
        ext::GcRequest {
            network_name: s("w"),
            valid_attachments: vec![ext::ValidAttachment {
                container_id: s("c"),
                if_name: s("e"),
            }],
            client_version: s("v"),
        },
        &[
            0x0a, 1, b'w', 0x12, 6, 0x0a, 1, b'c', 0x12, 1, b'e', 0x1a, 1, b'v',
        ],
    );
    check(
        ext::CheckAllocationReply {
            found: true,
            allocation: Some(rpc::IpAllocationMetadata {
                i_pv4_addr: s("4"),
                ..Default::default()
            }),
        },
        &[0x08, 1, 0x12, 3, 0x0a, 1, b'4'],
    );
}

/// The HTTP/2 paths are part of the wire: package, service and method names.
#[test]
fn method_paths_match_upstream() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/rpc.rs"));
    for path in [
        "/rpc.CNIBackend/AddNetwork",
        "/rpc.CNIBackend/DelNetwork",
        "/rpc.ConfigServerBackend/GetNetworkPolicyConfigs",
        "/rpc.NPBackend/EnforceNpToPod",
        "/rpc.NPBackend/DeletePodNp",
    ] {
        assert!(
            generated.contains(&format!("\"{path}\"")),
            "generated code has no method path {path}"
        );
    }
}
