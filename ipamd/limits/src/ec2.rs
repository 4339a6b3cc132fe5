//! Live `DescribeInstanceTypes` source (feature `ec2`): real AWS or the vpcsim emulator.
//!
//! Converts the SDK's `InstanceTypeInfo` into the table's [`InstanceType`], so `max-pods
//! --from-ec2` and the table go through the same formula. ipamd may also use
//! [`instance_type_from_sdk`] for a type its table does not know yet (upstream takes the
//! instance-wide ENI count in that case, wrong on multi-card types; we keep the default card).

use crate::table::{Hypervisor, InstanceType, NetworkCard};
use aws_sdk_ec2::types::InstanceTypeInfo;

/// Errors from the live source.
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    /// The API call failed (network, credentials, throttling, unknown type).
    #[error("DescribeInstanceTypes failed: {0}")]
    Call(String),
    /// The answer lacks a field the formula needs.
    #[error("DescribeInstanceTypes answer for {instance_type:?} has no {field}")]
    Missing {
        /// The type being converted (empty if even the name is missing).
        instance_type: String,
        /// The missing field, in API spelling.
        field: &'static str,
    },
    /// A numeric field is negative or otherwise impossible.
    #[error("DescribeInstanceTypes answer for {instance_type:?}: {field} is {value}")]
    Invalid {
        /// The type being converted.
        instance_type: String,
        /// The bad field, in API spelling.
        field: &'static str,
        /// The value received.
        value: i64,
    },
}

fn uint(name: &str, field: &'static str, v: Option<i32>) -> Result<u32, Ec2Error> {
    let v = v.ok_or_else(|| Ec2Error::Missing {
        instance_type: name.to_string(),
        field,
    })?;
    u32::try_from(v).map_err(|_| Ec2Error::Invalid {
        instance_type: name.to_string(),
        field,
        value: i64::from(v),
    })
}

/// Converts one `InstanceTypeInfo` to the table's row type. Fields the formula needs
/// (`NetworkInfo` ENI/IP counts, `VCpuInfo.DefaultVCpus`) must be present; the rest default.
pub fn instance_type_from_sdk(info: &InstanceTypeInfo) -> Result<InstanceType, Ec2Error> {
    let name = info
        .instance_type()
        .map(|t| t.as_str().to_string())
        .ok_or(Ec2Error::Missing {
            instance_type: String::new(),
            field: "InstanceType",
        })?;
    let net = info.network_info().ok_or_else(|| Ec2Error::Missing {
        instance_type: name.clone(),
        field: "NetworkInfo",
    })?;
    let vcpu = info.v_cpu_info().ok_or_else(|| Ec2Error::Missing {
        instance_type: name.clone(),
        field: "VCpuInfo",
    })?;
    let mut network_cards = net
        .network_cards()
        .iter()
        .map(|c| {
            Ok(NetworkCard {
                index: uint(
                    &name,
                    "NetworkCards[].NetworkCardIndex",
                    c.network_card_index(),
                )?,
                max_enis: uint(
                    &name,
                    "NetworkCards[].MaximumNetworkInterfaces",
                    c.maximum_network_interfaces(),
                )?,
                network_performance: c.network_performance().unwrap_or_default().to_string(),
            })
        })
        .collect::<Result<Vec<_>, Ec2Error>>()?;
    network_cards.sort_by_key(|c| c.index);
    let mut architectures: Vec<String> = info
        .processor_info()
        .map(|p| {
            p.supported_architectures()
                .iter()
                .map(|a| a.as_str().to_string())
                .collect()
        })
        .unwrap_or_default();
    architectures.sort();
    Ok(InstanceType {
        hypervisor: info
            .hypervisor()
            .and_then(|h| Hypervisor::parse(h.as_str())),
        bare_metal: info.bare_metal().unwrap_or(false),
        current_generation: info.current_generation().unwrap_or(false),
        default_vcpus: uint(&name, "VCpuInfo.DefaultVCpus", vcpu.default_v_cpus())?,
        default_cores: vcpu
            .default_cores()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0),
        default_threads_per_core: vcpu
            .default_threads_per_core()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0),
        memory_mib: info
            .memory_info()
            .and_then(|m| m.size_in_mib())
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0),
        architectures,
        max_enis: uint(
            &name,
            "NetworkInfo.MaximumNetworkInterfaces",
            net.maximum_network_interfaces(),
        )?,
        max_network_cards: net
            .maximum_network_cards()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(1),
        default_network_card_index: net
            .default_network_card_index()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0),
        ipv4_per_eni: uint(
            &name,
            "NetworkInfo.Ipv4AddressesPerInterface",
            net.ipv4_addresses_per_interface(),
        )?,
        ipv6_per_eni: net
            .ipv6_addresses_per_interface()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0),
        ipv6_supported: net.ipv6_supported().unwrap_or(false),
        ena_support: net
            .ena_support()
            .map(|e| e.as_str().to_string())
            .unwrap_or_default(),
        efa_supported: net.efa_supported().unwrap_or(false),
        network_performance: net.network_performance().unwrap_or_default().to_string(),
        network_cards,
        name,
    })
}

/// Calls `DescribeInstanceTypes` for `names` (all types when empty, following pagination) and
/// returns the converted rows sorted by name.
pub async fn describe(
    client: &aws_sdk_ec2::Client,
    names: &[String],
) -> Result<Vec<InstanceType>, Ec2Error> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = client.describe_instance_types();
        for n in names {
            req = req.instance_types(aws_sdk_ec2::types::InstanceType::from(n.as_str()));
        }
        if names.is_empty() {
            // Page size only matters for the "all types" listing; EC2 rejects MaxResults
            // together with explicit InstanceTypes.
            req = req.max_results(100);
        }
        let resp =
            req.set_next_token(token.take()).send().await.map_err(|e| {
                Ec2Error::Call(aws_sdk_ec2::error::DisplayErrorContext(&e).to_string())
            })?;
        for info in resp.instance_types() {
            out.push(instance_type_from_sdk(info)?);
        }
        match resp.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aws_sdk_ec2::types::{
        InstanceType as SdkType, InstanceTypeHypervisor, NetworkCardInfo, NetworkInfo, VCpuInfo,
    };

    fn card(i: i32, n: i32) -> NetworkCardInfo {
        NetworkCardInfo::builder()
            .network_card_index(i)
            .maximum_network_interfaces(n)
            .build()
    }

    fn info(net: Option<NetworkInfo>) -> InstanceTypeInfo {
        InstanceTypeInfo::builder()
            .instance_type(SdkType::from("x9.test"))
            .v_cpu_info(VCpuInfo::builder().default_v_cpus(64).build())
            .set_network_info(net)
            .build()
    }

    fn net(max: i32, ipv4: i32, cards: Vec<NetworkCardInfo>) -> NetworkInfo {
        NetworkInfo::builder()
            .maximum_network_interfaces(max)
            .ipv4_addresses_per_interface(ipv4)
            .default_network_card_index(0)
            .set_network_cards(Some(cards))
            .build()
    }

    #[test]
    fn converts_and_keeps_the_default_card() {
        let i = info(Some(net(12, 50, vec![card(1, 8), card(0, 4)])));
        let t = instance_type_from_sdk(&i).unwrap();
        assert_eq!(t.name, "x9.test");
        assert_eq!(t.hypervisor, None, "no hypervisor field: bare metal style");
        assert_eq!(t.network_cards[0].index, 0, "sorted by index");
        assert_eq!(t.default_card_enis(), 4);
        assert_eq!(t.max_enis, 12);
        assert_eq!(
            crate::compute(&t, &crate::Options::default()).max_pods,
            4 * 49 + 2
        );

        let mut with_hv = i.clone();
        with_hv.hypervisor = Some(InstanceTypeHypervisor::Nitro);
        assert!(instance_type_from_sdk(&with_hv).unwrap().is_nitro());
    }

    #[test]
    fn missing_and_invalid_fields_are_named() {
        let e = instance_type_from_sdk(&info(None)).unwrap_err();
        assert!(e.to_string().contains("NetworkInfo"), "{e}");
        let e = instance_type_from_sdk(&info(Some(net(-1, 10, vec![card(0, 3)])))).unwrap_err();
        assert!(
            e.to_string().contains("MaximumNetworkInterfaces") && e.to_string().contains("-1"),
            "{e}"
        );
        let e = instance_type_from_sdk(&info(Some(net(3, 10, vec![card(0, -3)])))).unwrap_err();
        assert!(e.to_string().contains("NetworkCards[]"), "{e}");
        let no_ipv4 = NetworkInfo::builder().maximum_network_interfaces(3).build();
        let e = instance_type_from_sdk(&info(Some(no_ipv4))).unwrap_err();
        assert!(e.to_string().contains("Ipv4AddressesPerInterface"), "{e}");
        let nameless = InstanceTypeInfo::builder().build();
        assert!(matches!(
            instance_type_from_sdk(&nameless),
            Err(Ec2Error::Missing {
                field: "InstanceType",
                ..
            })
        ));
    }
}
