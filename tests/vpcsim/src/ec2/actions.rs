//! One function per EC2 action: Query parameters in, XML response body out.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::params::{Params, glob, parse_ip, parse_prefix};
use super::xml::Xml;
use crate::model::{
    ApiError, ApiResult, Assign, CreateEni, Eni, Instance, Model, Subnet, mac_string,
};
use crate::server::Sim;
use crate::types::{self, TypeLimits};

/// Runs `action` with parameters `p`; returns the XML body inside `<{action}Response>`.
pub fn dispatch(sim: &Sim, action: &str, p: &Params) -> ApiResult<String> {
    let mut x = Xml::new();
    match action {
        "DescribeInstanceTypes" => describe_instance_types(p, &mut x)?,
        _ => sim.with_model(|m, now| -> ApiResult<()> {
            match action {
                "DescribeInstances" => describe_instances(m, p, &mut x),
                "DescribeSubnets" => describe_subnets(m, p, &mut x),
                "DescribeSecurityGroups" => describe_security_groups(m, p, &mut x),
                "DescribeNetworkInterfaces" => describe_network_interfaces(m, p, &mut x, now),
                "CreateNetworkInterface" => create_network_interface(m, p, &mut x),
                "AttachNetworkInterface" => {
                    let (att, card) = m.attach(
                        p.req("NetworkInterfaceId")?,
                        p.req("InstanceId")?,
                        p.u32("DeviceIndex")?
                            .ok_or_else(|| ApiError::missing("DeviceIndex"))?,
                        p.u32("NetworkCardIndex")?,
                        now,
                    )?;
                    x.leaf("attachmentId", att).leaf("networkCardIndex", card);
                    Ok(())
                }
                "DetachNetworkInterface" => {
                    p.bool("Force")?;
                    m.detach(p.req("AttachmentId")?, now)?;
                    x.leaf("return", true);
                    Ok(())
                }
                "DeleteNetworkInterface" => {
                    m.delete_eni(p.req("NetworkInterfaceId")?)?;
                    x.leaf("return", true);
                    Ok(())
                }
                "ModifyNetworkInterfaceAttribute" => modify(m, p, &mut x),
                "AssignPrivateIpAddresses" => assign(m, p, &mut x),
                "UnassignPrivateIpAddresses" => {
                    let ips = p
                        .list("PrivateIpAddress")
                        .iter()
                        .map(|s| parse_ip(s))
                        .collect::<ApiResult<Vec<_>>>()?;
                    let prefixes = p
                        .list("Ipv4Prefix")
                        .iter()
                        .map(|s| parse_prefix(s))
                        .collect::<ApiResult<Vec<_>>>()?;
                    m.unassign(p.req("NetworkInterfaceId")?, &ips, &prefixes)?;
                    x.leaf("return", true);
                    Ok(())
                }
                "CreateTags" => {
                    let resources = p.list("ResourceId");
                    if resources.is_empty() {
                        return Err(ApiError::missing("ResourceId.1"));
                    }
                    let tags = p
                        .tags("Tag")?
                        .into_iter()
                        .map(|(k, v)| (k, v.unwrap_or_default()))
                        .collect::<Vec<_>>();
                    if tags.is_empty() {
                        return Err(ApiError::missing("Tag.1.Key"));
                    }
                    m.create_tags(&resources, &tags)?;
                    x.leaf("return", true);
                    Ok(())
                }
                "DeleteTags" => {
                    let resources = p.list("ResourceId");
                    if resources.is_empty() {
                        return Err(ApiError::missing("ResourceId.1"));
                    }
                    m.delete_tags(&resources, &p.tags("Tag")?)?;
                    x.leaf("return", true);
                    Ok(())
                }
                other => Err(ApiError::new(
                    "InvalidAction",
                    format!("The action {other} is not valid for this web service."),
                )),
            }
        })?,
    }
    Ok(x.into_string())
}

// ------------------------------------------------------------------------- helpers

fn iso_time(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    dt.format(&fmt)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

fn private_dns(ip: std::net::Ipv4Addr, region: &str) -> String {
    format!(
        "ip-{}.{region}.compute.internal",
        ip.to_string().replace('.', "-")
    )
}

/// Checks `MaxResults` against AWS's range for the action.
fn max_results(p: &Params, min: u32, max: u32) -> ApiResult<Option<usize>> {
    match p.u32("MaxResults")? {
        None => Ok(None),
        Some(n) if (min..=max).contains(&n) => Ok(Some(n as usize)),
        Some(n) => Err(ApiError::invalid_value(format!(
            "Value ({n}) for parameter maxResults is invalid. Expecting a value between {min} \
             and {max}."
        ))),
    }
}

/// One page of `items` (sorted by unique key) after `NextToken`, at most `max`; returns the
/// page and the next token.
fn paginate<T>(
    items: Vec<(String, T)>,
    max: Option<usize>,
    token: Option<&str>,
) -> ApiResult<(Vec<T>, Option<String>)> {
    let after = match token {
        None => None,
        Some(t) => Some(
            t.strip_prefix("vpcsim:")
                .filter(|k| !k.is_empty())
                .ok_or_else(|| ApiError::invalid_value(format!("Invalid NextToken '{t}'")))?
                .to_string(),
        ),
    };
    let rest: Vec<(String, T)> = items
        .into_iter()
        .filter(|(k, _)| after.as_ref().is_none_or(|a| k > a))
        .collect();
    let limit = max.unwrap_or(usize::MAX);
    let more = rest.len() > limit;
    let page: Vec<(String, T)> = rest.into_iter().take(limit).collect();
    let next = if more {
        page.last().map(|(k, _)| format!("vpcsim:{k}"))
    } else {
        None
    };
    Ok((page.into_iter().map(|(_, v)| v).collect(), next))
}

fn any_glob(values: &[String], s: &str) -> bool {
    values.iter().any(|v| glob(v, s))
}

fn tag_filter(name: &str, values: &[String], tags: &BTreeMap<String, String>) -> Option<bool> {
    if let Some(key) = name.strip_prefix("tag:") {
        return Some(tags.get(key).is_some_and(|v| any_glob(values, v)));
    }
    match name {
        "tag-key" => Some(tags.keys().any(|k| any_glob(values, k))),
        "tag-value" => Some(tags.values().any(|v| any_glob(values, v))),
        _ => None,
    }
}

fn bad_filter(name: &str) -> ApiError {
    ApiError::invalid_value(format!("The filter '{name}' is invalid"))
}

/// Whether an object passes every filter of a Describe call: EC2 ANDs the filters and ORs the
/// values within one. Tag filters (`tag:<key>`, `tag-key`, `tag-value`) are answered from
/// `tags` for object types that have tags; `field` answers the type's own filter names and
/// returns `None` for a name it does not know, which EC2 rejects.
fn passes(
    filters: &[(String, Vec<String>)],
    tags: Option<&BTreeMap<String, String>>,
    field: impl Fn(&str, &[String]) -> Option<bool>,
) -> ApiResult<bool> {
    for (name, values) in filters {
        let hit = match tags.and_then(|t| tag_filter(name, values, t)) {
            Some(b) => b,
            None => field(name, values).ok_or_else(|| bad_filter(name))?,
        };
        if !hit {
            return Ok(false);
        }
    }
    Ok(true)
}

// ------------------------------------------------------------------------- ENIs

/// The ENI's own Describe filters (tags are handled by [`passes`]); `None` for an unknown name.
fn eni_filter(m: &Model, e: &Eni, name: &str, values: &[String]) -> Option<bool> {
    let att = e.attachment.as_ref();
    let matches = |s: &str| any_glob(values, s);
    Some(match name {
        "network-interface-id" => matches(&e.id),
        "status" => matches(e.status()),
        "vpc-id" => matches(&m.vpc_id),
        "subnet-id" => matches(&e.subnet_id),
        "description" => matches(&e.description),
        "interface-type" => matches(&e.interface_type),
        "mac-address" => matches(&mac_string(&e.mac)),
        "availability-zone" => m.subnets.get(&e.subnet_id).is_some_and(|s| matches(&s.az)),
        "owner-id" => matches(&m.config().account_id),
        "group-id" => e.groups.iter().any(|g| matches(g)),
        "private-ip-address" | "addresses.private-ip-address" => std::iter::once(&e.primary_ip)
            .chain(e.secondaries.iter())
            .any(|ip| matches(&ip.to_string())),
        "ipv4-prefix" => e.prefixes.iter().any(|p| matches(&p.to_string())),
        "attachment.instance-id" => att.is_some_and(|a| matches(&a.instance_id)),
        "attachment.attachment-id" => att.is_some_and(|a| matches(&a.id)),
        "attachment.status" => att.is_some_and(|a| matches(a.state.as_str())),
        "attachment.device-index" => att.is_some_and(|a| matches(&a.device_index.to_string())),
        "attachment.network-card-index" => att.is_some_and(|a| matches(&a.card.to_string())),
        "attachment.delete-on-termination" => {
            att.is_some_and(|a| matches(&a.delete_on_termination.to_string()))
        }
        "attachment.instance-owner-id" => att.is_some() && matches(&m.config().account_id),
        "requester-managed" => matches("false"),
        "source-dest-check" => matches(&e.source_dest_check.to_string()),
        _ => return None,
    })
}

fn write_eni(x: &mut Xml, m: &Model, e: &Eni) {
    let region = &m.config().region;
    let az = m
        .subnets
        .get(&e.subnet_id)
        .map(|s| s.az.clone())
        .unwrap_or_default();
    x.leaf("networkInterfaceId", &e.id)
        .leaf("subnetId", &e.subnet_id)
        .leaf("vpcId", &m.vpc_id)
        .leaf("availabilityZone", az)
        .leaf("description", &e.description)
        .leaf("ownerId", &m.config().account_id)
        .leaf("requesterManaged", false)
        .leaf("status", e.status())
        .leaf("macAddress", mac_string(&e.mac))
        .leaf("privateIpAddress", e.primary_ip)
        .leaf("privateDnsName", private_dns(e.primary_ip, region))
        .leaf("sourceDestCheck", e.source_dest_check)
        .leaf("interfaceType", &e.interface_type);
    x.items("groupSet", &e.groups, |x, g| {
        let name = m.groups.get(g).map(|s| s.name.clone()).unwrap_or_default();
        x.leaf("groupId", g).leaf("groupName", name);
    });
    if let Some(a) = &e.attachment {
        x.open("attachment")
            .leaf("attachmentId", &a.id)
            .leaf("instanceId", &a.instance_id)
            .leaf("instanceOwnerId", &m.config().account_id)
            .leaf("deviceIndex", a.device_index)
            .leaf("networkCardIndex", a.card)
            .leaf("status", a.state.as_str())
            .leaf("attachTime", iso_time(a.attach_time))
            .leaf("deleteOnTermination", a.delete_on_termination)
            .close("attachment");
    }
    x.tag_set(&e.tags);
    let ips =
        std::iter::once((e.primary_ip, true)).chain(e.secondaries.iter().map(|ip| (*ip, false)));
    x.items("privateIpAddressesSet", ips, |x, (ip, primary)| {
        x.leaf("privateIpAddress", ip)
            .leaf("privateDnsName", private_dns(ip, region))
            .leaf("primary", primary);
    });
    if !e.prefixes.is_empty() {
        x.items("ipv4PrefixSet", &e.prefixes, |x, p| {
            x.leaf("ipv4Prefix", p);
        });
    }
    x.open("ipv6AddressesSet").close("ipv6AddressesSet");
}

fn describe_network_interfaces(
    m: &mut Model,
    p: &Params,
    x: &mut Xml,
    now: std::time::Instant,
) -> ApiResult<()> {
    let ids = p.list("NetworkInterfaceId");
    let max = max_results(p, 5, 1000)?;
    if !ids.is_empty() && max.is_some() {
        return Err(ApiError::invalid_combination(
            "The parameter NetworkInterfaceIds cannot be used with the parameter maxResults",
        ));
    }
    let hidden = |e: &Eni| e.hidden_until.is_some_and(|t| now < t);
    // An unknown ID fails the whole call, quoting the ID (upstream extracts it and retries).
    // So does one created too recently to be seen yet (eventual consistency).
    for id in &ids {
        if hidden(m.eni(id)?) {
            return Err(ApiError::new(
                "InvalidNetworkInterfaceID.NotFound",
                format!("The networkInterface ID '{id}' does not exist"),
            ));
        }
    }
    let filters = p.filters()?;
    let mut items = Vec::new();
    for e in m.enis.values() {
        if (!ids.is_empty() && !ids.contains(&e.id)) || hidden(e) {
            continue;
        }
        if passes(&filters, Some(&e.tags), |n, v| eni_filter(m, e, n, v))? {
            items.push((e.id.clone(), e));
        }
    }
    let (page, next) = paginate(items, max, p.get("NextToken"))?;
    x.items("networkInterfaceSet", page, |x, e| write_eni(x, m, e));
    x.opt("nextToken", next);
    Ok(())
}

fn ipv4_list(p: &Params, key: &str) -> ApiResult<Vec<std::net::Ipv4Addr>> {
    p.list(key).iter().map(|s| parse_ip(s)).collect()
}

fn create_network_interface(m: &mut Model, p: &Params, x: &mut Xml) -> ApiResult<()> {
    let mut primary = p.get("PrivateIpAddress").map(parse_ip).transpose()?;
    let mut secondary_ips = Vec::new();
    for (i, sub) in p.indexed("PrivateIpAddresses") {
        let ip = parse_ip(sub.req("PrivateIpAddress").map_err(|_| {
            ApiError::missing(&format!("PrivateIpAddresses.{i}.PrivateIpAddress"))
        })?)?;
        if sub.bool("Primary")?.unwrap_or(false) {
            if primary.is_some_and(|p| p != ip) {
                return Err(ApiError::invalid_combination(
                    "Only one primary private IP address may be specified",
                ));
            }
            primary = Some(ip);
        } else {
            secondary_ips.push(ip);
        }
    }
    let prefixes = p
        .indexed("Ipv4Prefix")
        .into_values()
        .map(|sub| {
            sub.get("Ipv4Prefix")
                .or(sub.get(""))
                .ok_or_else(|| ApiError::missing("Ipv4Prefix.N.Ipv4Prefix"))
                .and_then(parse_prefix)
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let mut tags = Vec::new();
    for (_, spec) in p.indexed("TagSpecification") {
        let rt = spec.get("ResourceType").unwrap_or("network-interface");
        if rt != "network-interface" {
            return Err(ApiError::invalid_value(format!(
                "'{rt}' is not a valid taggable resource type for this operation."
            )));
        }
        for (k, v) in spec.tags("Tag")? {
            tags.push((k, v.unwrap_or_default()));
        }
    }
    let ipv6_requested = p.get("Ipv6AddressCount").is_some_and(|v| v != "0")
        || p.get("Ipv6PrefixCount").is_some_and(|v| v != "0")
        || !p.indexed("Ipv6Addresses").is_empty()
        || !p.indexed("Ipv6Prefix").is_empty();
    let id = m.create_eni(CreateEni {
        subnet_id: p.req("SubnetId")?.to_string(),
        description: p.get("Description").map(str::to_string),
        groups: p.list("SecurityGroupId"),
        primary_ip: primary,
        secondary_ips,
        secondary_count: p.u32("SecondaryPrivateIpAddressCount")?,
        prefix_count: p.u32("Ipv4PrefixCount")?,
        prefixes,
        ipv6_requested,
        interface_type: p.get("InterfaceType").map(str::to_string),
        tags,
    })?;
    let e = m.eni(&id)?;
    x.open("networkInterface");
    write_eni(x, m, e);
    x.close("networkInterface");
    Ok(())
}

fn assign(m: &mut Model, p: &Params, x: &mut Xml) -> ApiResult<()> {
    let eni_id = p.req("NetworkInterfaceId")?;
    let req = Assign {
        count: p.u32("SecondaryPrivateIpAddressCount")?,
        ips: ipv4_list(p, "PrivateIpAddress")?,
        prefix_count: p.u32("Ipv4PrefixCount")?,
        prefixes: p
            .list("Ipv4Prefix")
            .iter()
            .map(|s| parse_prefix(s))
            .collect::<ApiResult<Vec<_>>>()?,
    };
    let (ips, prefixes) = m.assign(eni_id, req)?;
    x.leaf("networkInterfaceId", eni_id);
    x.items("assignedPrivateIpAddressesSet", ips, |x, ip| {
        x.leaf("privateIpAddress", ip);
    });
    x.items("assignedIpv4PrefixSet", prefixes, |x, pfx| {
        x.leaf("ipv4Prefix", pfx);
    });
    Ok(())
}

fn modify(m: &mut Model, p: &Params, x: &mut Xml) -> ApiResult<()> {
    let eni_id = p.req("NetworkInterfaceId")?;
    let attachment = match p.get("Attachment.AttachmentId") {
        Some(a) => Some((a.to_string(), p.bool("Attachment.DeleteOnTermination")?)),
        None if p.get("Attachment.DeleteOnTermination").is_some() => {
            return Err(ApiError::missing("Attachment.AttachmentId"));
        }
        None => None,
    };
    let groups = p.list("SecurityGroupId");
    let groups = (!groups.is_empty()).then_some(groups);
    let description = p.get("Description.Value").map(str::to_string);
    let sdc = p.bool("SourceDestCheck.Value")?;
    if attachment.is_none() && groups.is_none() && description.is_none() && sdc.is_none() {
        return Err(ApiError::missing(
            "Attachment, SecurityGroupId, Description or SourceDestCheck",
        ));
    }
    m.modify_eni(eni_id, attachment, groups, description, sdc)?;
    x.leaf("return", true);
    Ok(())
}

// ------------------------------------------------------------------------- instances

fn write_instance(x: &mut Xml, m: &Model, i: &Instance) {
    let region = &m.config().region;
    let primary = m.enis.get(&i.primary_eni);
    let primary_ip = primary.map(|e| e.primary_ip);
    x.leaf("instanceId", &i.id)
        .leaf("imageId", &i.image_id)
        .open("instanceState")
        .leaf("code", 16)
        .leaf("name", "running")
        .close("instanceState")
        .opt(
            "privateDnsName",
            primary_ip.map(|ip| private_dns(ip, region)),
        )
        .leaf("amiLaunchIndex", 0)
        .leaf("instanceType", &i.limits.name)
        .leaf("launchTime", iso_time(i.launch_time))
        .open("placement")
        .leaf("availabilityZone", &i.az)
        .leaf("tenancy", "default")
        .close("placement")
        .leaf("subnetId", &i.subnet_id)
        .leaf("vpcId", &m.vpc_id)
        .opt("privateIpAddress", primary_ip)
        .leaf("architecture", "x86_64")
        .leaf("rootDeviceType", "ebs")
        .leaf("virtualizationType", "hvm");
    let groups = primary.map(|e| e.groups.clone()).unwrap_or_default();
    x.items("groupSet", &groups, |x, g| {
        let name = m.groups.get(g).map(|s| s.name.clone()).unwrap_or_default();
        x.leaf("groupId", g).leaf("groupName", name);
    });
    x.tag_set(&i.tags);
    let mut enis: Vec<&Eni> = m
        .enis
        .values()
        .filter(|e| e.attachment.as_ref().is_some_and(|a| a.instance_id == i.id))
        .collect();
    enis.sort_by_key(|e| e.attachment.as_ref().map(|a| (a.card, a.device_index)));
    x.items("networkInterfaceSet", enis, |x, e| {
        x.leaf("networkInterfaceId", &e.id)
            .leaf("subnetId", &e.subnet_id)
            .leaf("vpcId", &m.vpc_id)
            .leaf("description", &e.description)
            .leaf("ownerId", &m.config().account_id)
            .leaf("status", e.status())
            .leaf("macAddress", mac_string(&e.mac))
            .leaf("privateIpAddress", e.primary_ip)
            .leaf("privateDnsName", private_dns(e.primary_ip, region))
            .leaf("sourceDestCheck", e.source_dest_check)
            .leaf("interfaceType", &e.interface_type);
        x.items("groupSet", &e.groups, |x, g| {
            let name = m.groups.get(g).map(|s| s.name.clone()).unwrap_or_default();
            x.leaf("groupId", g).leaf("groupName", name);
        });
        if let Some(a) = &e.attachment {
            x.open("attachment")
                .leaf("attachmentId", &a.id)
                .leaf("deviceIndex", a.device_index)
                .leaf("networkCardIndex", a.card)
                .leaf("status", a.state.as_str())
                .leaf("attachTime", iso_time(a.attach_time))
                .leaf("deleteOnTermination", a.delete_on_termination)
                .close("attachment");
        }
        let ips = std::iter::once((e.primary_ip, true))
            .chain(e.secondaries.iter().map(|ip| (*ip, false)));
        x.items("privateIpAddressesSet", ips, |x, (ip, primary)| {
            x.leaf("privateIpAddress", ip)
                .leaf("privateDnsName", private_dns(ip, region))
                .leaf("primary", primary);
        });
        if !e.prefixes.is_empty() {
            x.items("ipv4PrefixSet", &e.prefixes, |x, p| {
                x.leaf("ipv4Prefix", p);
            });
        }
    });
}

fn describe_instances(m: &mut Model, p: &Params, x: &mut Xml) -> ApiResult<()> {
    let ids = p.list("InstanceId");
    let max = max_results(p, 5, 1000)?;
    if !ids.is_empty() && max.is_some() {
        return Err(ApiError::invalid_combination(
            "The parameter instancesSet cannot be used with the parameter maxResults",
        ));
    }
    for id in &ids {
        m.instance(id)?;
    }
    let filters = p.filters()?;
    let mut items = Vec::new();
    for i in m.instances.values() {
        if !ids.is_empty() && !ids.contains(&i.id) {
            continue;
        }
        let field = |name: &str, values: &[String]| {
            Some(match name {
                "instance-id" => any_glob(values, &i.id),
                "instance-type" => any_glob(values, &i.limits.name),
                "subnet-id" => any_glob(values, &i.subnet_id),
                "vpc-id" => any_glob(values, &m.vpc_id),
                "availability-zone" => any_glob(values, &i.az),
                "instance-state-name" => any_glob(values, "running"),
                _ => return None,
            })
        };
        if passes(&filters, Some(&i.tags), field)? {
            items.push((i.id.clone(), i));
        }
    }
    let (page, next) = paginate(items, max, p.get("NextToken"))?;
    // One reservation per instance, as `RunInstances` with count 1 gives.
    x.items("reservationSet", page, |x, i| {
        x.leaf("reservationId", format!("r-{}", &i.id[2..]))
            .leaf("ownerId", &m.config().account_id)
            .open("groupSet")
            .close("groupSet");
        x.items("instancesSet", [i], |x, i| write_instance(x, m, i));
    });
    x.opt("nextToken", next);
    Ok(())
}

// ------------------------------------------------------------------------- subnets, groups

fn write_subnet(x: &mut Xml, m: &Model, s: &Subnet) {
    x.leaf("subnetId", &s.id)
        .leaf(
            "subnetArn",
            format!(
                "arn:aws:ec2:{}:{}:subnet/{}",
                m.config().region,
                m.config().account_id,
                s.id
            ),
        )
        .leaf("state", "available")
        .leaf("vpcId", &m.vpc_id)
        .leaf("ownerId", &m.config().account_id)
        .leaf("cidrBlock", s.cidr)
        .leaf("availableIpAddressCount", s.available())
        .leaf("availabilityZone", &s.az)
        .leaf("defaultForAz", false)
        .leaf("mapPublicIpOnLaunch", false)
        .leaf("assignIpv6AddressOnCreation", false);
    x.tag_set(&s.tags);
}

fn describe_subnets(m: &mut Model, p: &Params, x: &mut Xml) -> ApiResult<()> {
    let ids = p.list("SubnetId");
    let max = max_results(p, 5, 1000)?;
    for id in &ids {
        m.subnet(id)?;
    }
    let filters = p.filters()?;
    let mut items = Vec::new();
    for s in m.subnets.values() {
        if !ids.is_empty() && !ids.contains(&s.id) {
            continue;
        }
        let field = |name: &str, values: &[String]| {
            Some(match name {
                "subnet-id" => any_glob(values, &s.id),
                "vpc-id" => any_glob(values, &m.vpc_id),
                "availability-zone" => any_glob(values, &s.az),
                "cidr-block" | "cidr" => any_glob(values, &s.cidr.to_string()),
                "state" => any_glob(values, "available"),
                _ => return None,
            })
        };
        if passes(&filters, Some(&s.tags), field)? {
            items.push((s.id.clone(), s));
        }
    }
    let (page, next) = paginate(items, max, p.get("NextToken"))?;
    x.items("subnetSet", page, |x, s| write_subnet(x, m, s));
    x.opt("nextToken", next);
    Ok(())
}

fn describe_security_groups(m: &mut Model, p: &Params, x: &mut Xml) -> ApiResult<()> {
    let ids = p.list("GroupId");
    for id in &ids {
        m.group(id)?;
    }
    let filters = p.filters()?;
    let mut out = Vec::new();
    for g in m.groups.values() {
        if !ids.is_empty() && !ids.contains(&g.id) {
            continue;
        }
        let field = |name: &str, values: &[String]| {
            Some(match name {
                "group-id" => any_glob(values, &g.id),
                "group-name" => any_glob(values, &g.name),
                "vpc-id" => any_glob(values, &m.vpc_id),
                _ => return None,
            })
        };
        if passes(&filters, Some(&g.tags), field)? {
            out.push(g);
        }
    }
    x.items("securityGroupInfo", out, |x, g| {
        x.leaf("ownerId", &m.config().account_id)
            .leaf("groupId", &g.id)
            .leaf("groupName", &g.name)
            .leaf("groupDescription", &g.description)
            .leaf("vpcId", &m.vpc_id)
            .open("ipPermissions")
            .close("ipPermissions")
            .open("ipPermissionsEgress")
            .close("ipPermissionsEgress");
        x.tag_set(&g.tags);
    });
    Ok(())
}

// ------------------------------------------------------------------------- instance types

fn write_type(x: &mut Xml, t: &TypeLimits) {
    x.leaf("instanceType", &t.name)
        .leaf("currentGeneration", true)
        .leaf("bareMetal", t.bare_metal);
    // AWS omits the hypervisor of bare-metal types; clients rely on that.
    x.opt("hypervisor", t.hypervisor.as_deref());
    x.open("vCpuInfo")
        .leaf("defaultVCpus", t.default_vcpus)
        .close("vCpuInfo");
    x.open("networkInfo")
        .leaf("maximumNetworkInterfaces", t.max_enis)
        .leaf("maximumNetworkCards", t.network_cards.len())
        .leaf("defaultNetworkCardIndex", t.default_network_card_index);
    x.items("networkCards", &t.network_cards, |x, c| {
        x.leaf("networkCardIndex", c.index)
            .leaf("maximumNetworkInterfaces", c.max_enis);
    });
    x.leaf("ipv4AddressesPerInterface", t.ipv4_per_eni)
        .leaf("ipv6AddressesPerInterface", t.ipv6_per_eni)
        .leaf("ipv6Supported", t.ipv6_per_eni > 0)
        .leaf(
            "enaSupport",
            if t.hypervisor.as_deref() == Some("xen") {
                "supported"
            } else {
                "required"
            },
        )
        .close("networkInfo");
}

fn describe_instance_types(p: &Params, x: &mut Xml) -> ApiResult<()> {
    let names = p.list("InstanceType");
    if names.len() > 100 {
        return Err(ApiError::invalid_value(format!(
            "{} instance types were requested; at most 100 are allowed",
            names.len()
        )));
    }
    let max = max_results(p, 5, 100)?;
    if !names.is_empty() && max.is_some() {
        return Err(ApiError::invalid_combination(
            "The parameter InstanceTypes cannot be used with the parameter MaxResults",
        ));
    }
    let all = types::all();
    for n in &names {
        if !all.iter().any(|t| &t.name == n) {
            return Err(ApiError::new(
                "InvalidInstanceType",
                format!("The following supplied instance types do not exist: [{n}]"),
            ));
        }
    }
    let filters = p.filters()?;
    let mut items = Vec::new();
    for t in all {
        if !names.is_empty() && !names.contains(&t.name) {
            continue;
        }
        let field = |name: &str, values: &[String]| {
            Some(match name {
                "instance-type" => any_glob(values, &t.name),
                "hypervisor" => t.hypervisor.as_deref().is_some_and(|h| any_glob(values, h)),
                "bare-metal" => any_glob(values, &t.bare_metal.to_string()),
                _ => return None,
            })
        };
        if passes(&filters, None, field)? {
            items.push((t.name.clone(), t));
        }
    }
    // Without MaxResults AWS still pages (100 per page).
    let (page, next) = paginate(items, Some(max.unwrap_or(100)), p.get("NextToken"))?;
    x.items("instanceTypeSet", page, |x, t| write_type(x, &t));
    x.opt("nextToken", next);
    Ok(())
}
