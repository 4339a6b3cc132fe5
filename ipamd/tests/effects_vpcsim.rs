//! imds / ec2 / eni against the vpcsim emulator over real HTTP, through the real aws-config IMDS
//! client and the real aws-sdk-ec2 client (SigV4-signed Query API).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use ipamd::ec2::{AddressRequest, CreateEniRequest, Ec2Api, Filter, SdkEc2, Tags};
use ipamd::eni::{
    AssumeLinkPresent, Backoff, EniError, EniManager, EniSettings, LeakedEniSweeper,
    TAG_CREATED_AT, TAG_INSTANCE_ID, TAG_NO_MANAGE, TAG_SUBNET_ROLE,
};
use ipamd::imds::{HttpImdsSource, Imds, ImdsSettings};
use ipamd::limiter::LimiterSettings;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vpcsim::server::{LoopbackEndpoints, Sim, SimConfig};

struct Env {
    sim: Arc<Sim>,
    ep: LoopbackEndpoints,
    instance_id: String,
    subnet_id: String,
    imds: Imds<HttpImdsSource>,
    ec2: SdkEc2,
}

async fn env_with(limiter: LimiterSettings, extra_subnets: &[(&str, &[(&str, &str)])]) -> Env {
    let sim = Sim::new(SimConfig::default());
    let subnet_id = sim
        .add_subnet("10.0.0.0/24".parse().unwrap(), None, &[])
        .unwrap();
    for (cidr, tags) in extra_subnets {
        let tags: Vec<(String, String)> = tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        sim.add_subnet(cidr.parse().unwrap(), None, &tags).unwrap();
    }
    let inst = sim.add_instance("m5.large", &subnet_id).unwrap();
    let ep = sim.serve_loopback().await.unwrap();
    let imds_addr = ep.imds_for(&inst.instance_id).unwrap();
    let imds = Imds::new(
        HttpImdsSource::new(&ImdsSettings {
            endpoint: Some(format!("http://{imds_addr}")),
            ..ImdsSettings::default()
        })
        .unwrap(),
    );
    let ec2 = common::vpcsim_ec2(ep.ec2_url(), common::fast_retry(), limiter).await;
    Env {
        sim,
        ep,
        instance_id: inst.instance_id,
        subnet_id,
        imds,
        ec2,
    }
}

async fn env() -> Env {
    env_with(
        LimiterSettings {
            qps: 1000.0,
            burst: 1000,
        },
        &[],
    )
    .await
}

impl Env {
    async fn settings(&self) -> EniSettings {
        let inst = self.imds.instance().await.unwrap();
        let primary = self
            .imds
            .interface(&inst.primary_mac, &inst.primary_mac)
            .await
            .unwrap();
        let mut st = EniSettings::new(
            &inst.instance_id,
            primary.vpc_id.as_deref().unwrap_or_default(),
            &inst.availability_zone,
            &primary.subnet_id,
        );
        st.security_groups = primary.security_groups.clone();
        st.visible_wait = Backoff {
            attempts: 40,
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        };
        st.delete_retry = Backoff {
            attempts: 40,
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        };
        st
    }

    async fn manager(&self) -> EniManager<SdkEc2, HttpImdsSource, AssumeLinkPresent> {
        EniManager::new(
            self.ec2.clone(),
            self.imds.clone(),
            AssumeLinkPresent,
            self.settings().await,
        )
    }

    /// PUT a fault spec through the emulator's admin API.
    async fn fault(&self, action: &str, json: &str) {
        let mut s = tokio::net::TcpStream::connect(self.ep.admin).await.unwrap();
        let req = format!(
            "PUT /faults/{action} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 2"), "fault not accepted: {resp}");
    }

    async fn our_enis(&self) -> Vec<ipamd::ec2::EniInfo> {
        self.ec2
            .describe_network_interfaces_filtered(&[Filter::new(
                &format!("tag:{TAG_INSTANCE_ID}"),
                &self.instance_id,
            )])
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn imds_reads_instance_and_enis() {
    let e = env().await;
    let inst = e.imds.instance().await.unwrap();
    assert_eq!(inst.instance_id, e.instance_id);
    assert_eq!(inst.instance_type, "m5.large");
    assert_eq!(inst.region, "us-west-2");
    let enis = e.imds.interfaces(&inst.primary_mac).await.unwrap();
    assert_eq!(enis.len(), 1);
    assert_eq!(enis[0].device_number, 0);
    assert_eq!(enis[0].primary_ip(), Some(inst.local_ipv4));
    assert_eq!(enis[0].subnet_id, e.subnet_id);
    assert_eq!(enis[0].subnet_cidr, "10.0.0.0/24".parse().unwrap());
    assert!(enis[0].ipv4_prefixes.is_empty());
    assert!(!enis[0].vpc_cidrs.is_empty());
}

#[tokio::test]
async fn eni_lifecycle_create_attach_grow_shrink_free() {
    let e = env().await;
    // Real delays: attach and detach are asynchronous and IMDS lags.
    e.sim.set_timing(
        Duration::from_millis(150),
        Duration::from_millis(200),
        Duration::from_millis(100),
    );
    let m = e.manager().await;

    let a = m.create_and_attach(AddressRequest::Ips(3)).await.unwrap();
    assert_eq!(a.device_index, 1, "first free index on m5.large");
    assert_eq!(a.metadata.eni_id, a.info.eni_id);
    assert!(!a.metadata.secondary_ips().is_empty());
    let b = m.create_and_attach(AddressRequest::Ips(2)).await.unwrap();
    assert_eq!(b.device_index, 2);

    let desc = m
        .describe_enis(std::slice::from_ref(&a.info.eni_id))
        .await
        .unwrap();
    let d = &desc[0];
    assert_eq!(d.description, format!("aws-K8S-{}", e.instance_id));
    assert_eq!(d.tags.get(TAG_INSTANCE_ID), Some(&e.instance_id));
    assert!(d.tags.contains_key(TAG_CREATED_AT));
    let att = d.attachment.as_ref().unwrap();
    assert!(att.delete_on_termination, "DeleteOnTermination set");
    assert_eq!(d.secondary_ips.len(), 3);

    // m5.large has 3 ENIs: a third secondary fails (no free index / attachment limit) and must
    // leave nothing behind.
    let before = e.our_enis().await.len();
    let err = m
        .create_and_attach(AddressRequest::Ips(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EniError::Ec2(_) | EniError::NoFreeDeviceIndex { .. }),
        "{err:?}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(e.our_enis().await.len(), before, "rolled back");

    // Grow and shrink.
    let ips = m.assign_ips(&a.info.eni_id, 2).await.unwrap();
    assert_eq!(ips.len(), 2);
    m.unassign_ips(&a.info.eni_id, &ips).await.unwrap();
    let d = &m
        .describe_enis(std::slice::from_ref(&a.info.eni_id))
        .await
        .unwrap()[0];
    assert_eq!(d.secondary_ips.len(), 3);
    assert!(ips.iter().all(|ip| !d.secondary_ips.contains(ip)));

    // Free both: detach is delayed, so the first deletes hit "currently in use" and retry.
    m.free_eni(&a.info.eni_id).await.unwrap();
    m.free_eni(&b.info.eni_id).await.unwrap();
    m.free_eni(&b.info.eni_id).await.unwrap(); // gone already: still Ok
    assert!(e.our_enis().await.is_empty());
    let gone = m
        .describe_enis(&[a.info.eni_id.clone(), b.info.eni_id.clone()])
        .await
        .unwrap();
    assert!(gone.is_empty(), "unknown IDs dropped from the describe");
    e.sim.check_invariants().unwrap();

    let stats = e.ec2.stats().snapshot();
    assert!(stats["CreateNetworkInterface"].ok >= 2);
    assert!(stats["DeleteNetworkInterface"].attempts >= 2);
}

#[tokio::test]
async fn concurrent_attaches_get_distinct_device_indexes() {
    let e = env().await;
    let m = e.manager().await;
    let (a, b) = tokio::join!(
        m.create_and_attach(AddressRequest::Ips(1)),
        m.create_and_attach(AddressRequest::Ips(1))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut idx = [a.device_index, b.device_index];
    idx.sort();
    assert_eq!(idx, [1, 2]);
    // Both tasks read DescribeInstances before either attached, so one lost the race for
    // index 1 and must have retried at index 2.
    let s = &e.ec2.stats().snapshot()["AttachNetworkInterface"];
    assert_eq!(s.ok, 2);
    assert_eq!(
        s.errors.get("InvalidParameterValue").copied().unwrap_or(0),
        s.attempts - 2,
        "{s:?}"
    );
    assert!(s.attempts >= 3, "the conflict path ran: {s:?}");
}

#[tokio::test]
async fn prefix_delegation() {
    let e = env().await;
    let m = e.manager().await;
    let a = m
        .create_and_attach(AddressRequest::Prefixes(1))
        .await
        .unwrap();
    assert_eq!(a.info.prefixes.len(), 1);
    assert_eq!(a.info.prefixes[0].prefix_len(), 28);
    assert_eq!(a.metadata.ipv4_prefixes, a.info.prefixes);
    let more = m.assign_prefixes(&a.info.eni_id, 2).await.unwrap();
    assert_eq!(more.len(), 2);
    m.unassign_prefixes(&a.info.eni_id, &more).await.unwrap();
    let d = &m
        .describe_enis(std::slice::from_ref(&a.info.eni_id))
        .await
        .unwrap()[0];
    assert_eq!(d.prefixes, a.info.prefixes);
    e.sim.check_invariants().unwrap();
}

#[tokio::test]
async fn throttling_is_retried_and_counted() {
    let e = env().await;
    let m = e.manager().await;
    let a = m.create_and_attach(AddressRequest::None).await.unwrap();
    e.fault(
        "AssignPrivateIpAddresses",
        r#"{"error_rate":0.5,"error_code":"RequestLimitExceeded"}"#,
    )
    .await;
    let mut total = 0;
    for _ in 0..6 {
        total += m.assign_ips(&a.info.eni_id, 1).await.unwrap().len();
    }
    assert_eq!(total, 6);
    let s = &e.ec2.stats().snapshot()["AssignPrivateIpAddresses"];
    assert_eq!(s.ok, 6);
    assert!(s.throttled > 0, "{s:?}");
    assert_eq!(s.retries, s.throttled, "every throttle was retried");
    assert_eq!(
        s.errors.get("RequestLimitExceeded").copied().unwrap_or(0),
        s.throttled
    );
    let sim = &e.sim.counters()["AssignPrivateIpAddresses"];
    assert_eq!(sim.calls, s.attempts, "the emulator saw every attempt");
    assert_eq!(sim.errors, s.throttled);
    // Client errors are not retried.
    let err = m
        .unassign_ips(&a.info.eni_id, &["10.0.0.250".parse().unwrap()])
        .await
        .unwrap_err();
    assert!(
        matches!(err, EniError::Ec2(ref x) if !x.is_retryable()),
        "{err:?}"
    );
    assert_eq!(
        e.ec2.stats().snapshot()["UnassignPrivateIpAddresses"].attempts,
        1
    );
}

#[tokio::test]
async fn every_call_passes_the_token_bucket() {
    let e = env_with(
        LimiterSettings {
            qps: 50.0,
            burst: 2,
        },
        &[],
    )
    .await;
    let m = e.manager().await;
    let a = m.create_and_attach(AddressRequest::None).await.unwrap();
    for _ in 0..4 {
        m.assign_ips(&a.info.eni_id, 1).await.unwrap();
    }
    let attempts = e.ec2.stats().total_attempts();
    let lim = e.ec2.limiter().stats();
    assert_eq!(lim.acquired, attempts);
    assert!(lim.waited_total > Duration::ZERO, "burst 2 forces waits");
    let waited: Duration = e
        .ec2
        .stats()
        .snapshot()
        .values()
        .map(|s| s.limiter_wait_total)
        .sum();
    assert_eq!(waited, lim.waited_total);
}

#[tokio::test]
async fn subnet_discovery_prefers_most_free_and_honours_exclusion() {
    let e = env_with(
        LimiterSettings {
            qps: 1000.0,
            burst: 1000,
        },
        &[
            ("10.0.16.0/20", &[(TAG_SUBNET_ROLE, "1")]),
            ("10.0.32.0/19", &[(TAG_SUBNET_ROLE, "0")]),
            ("10.0.64.0/19", &[]),
        ],
    )
    .await;
    let m = e.manager().await;
    let cands = m.candidate_subnets().await;
    assert_eq!(cands.len(), 2, "{cands:?}");
    assert_eq!(
        cands[1], e.subnet_id,
        "/20 tagged subnet has more free than the /24"
    );
    let a = m.create_and_attach(AddressRequest::Ips(1)).await.unwrap();
    assert_eq!(a.info.subnet_id, cands[0]);
    assert!(a.metadata.subnet_cidr.to_string().starts_with("10.0.16."));
}

#[tokio::test]
async fn unmanaged_enis_are_left_alone() {
    let e = env().await;
    let m = e.manager().await;
    let a = m.create_and_attach(AddressRequest::None).await.unwrap();
    let mut t = Tags::new();
    t.insert(TAG_NO_MANAGE.into(), "true".into());
    e.ec2
        .create_tags(std::slice::from_ref(&a.info.eni_id), &t)
        .await
        .unwrap();
    let err = m.free_eni(&a.info.eni_id).await.unwrap_err();
    assert_eq!(err, EniError::Unmanaged(a.info.eni_id.clone()));
    assert_eq!(
        m.describe_enis(std::slice::from_ref(&a.info.eni_id))
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn leaked_enis_two_phase_sweep() {
    let e = env().await;
    let m = e.manager().await;
    let old = OffsetDateTime::now_utc() - time::Duration::minutes(10);
    let mk = |created: Option<OffsetDateTime>, desc: &str| {
        let mut tags = Tags::new();
        tags.insert(TAG_INSTANCE_ID.into(), e.instance_id.clone());
        if let Some(c) = created {
            tags.insert(
                TAG_CREATED_AT.into(),
                c.format(&time::format_description::well_known::Rfc3339)
                    .unwrap(),
            );
        }
        CreateEniRequest {
            subnet_id: e.subnet_id.clone(),
            description: desc.into(),
            security_groups: vec![],
            addresses: AddressRequest::Ips(1),
            tags,
        }
    };
    let desc = m.description();
    let leaked = e
        .ec2
        .create_network_interface(&mk(Some(old), &desc))
        .await
        .unwrap();
    let young = e
        .ec2
        .create_network_interface(&mk(Some(OffsetDateTime::now_utc()), &desc))
        .await
        .unwrap();
    let untimed = e
        .ec2
        .create_network_interface(&mk(None, &desc))
        .await
        .unwrap();
    let foreign = e
        .ec2
        .create_network_interface(&mk(Some(old), "someone else's"))
        .await
        .unwrap();
    let in_use = m.create_and_attach(AddressRequest::None).await.unwrap();

    let mut sw = LeakedEniSweeper::new();
    let r1 = m
        .sweep_leaked(&mut sw, OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(r1.marked, vec![leaked.eni_id.clone()]);
    assert!(r1.deleted.is_empty(), "nothing deleted on first sight");
    assert_eq!(r1.tagged, vec![untimed.eni_id.clone()]);

    let r2 = m
        .sweep_leaked(&mut sw, OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(r2.deleted, vec![leaked.eni_id.clone()]);
    assert!(sw.marked().is_empty());

    let left: Vec<String> = e.our_enis().await.into_iter().map(|x| x.eni_id).collect();
    for keep in [
        &young.eni_id,
        &untimed.eni_id,
        &foreign.eni_id,
        &in_use.info.eni_id,
    ] {
        assert!(left.contains(keep), "{keep} must survive");
    }
    assert!(!left.contains(&leaked.eni_id));
}

#[tokio::test]
async fn imds_token_is_refreshed_and_failures_are_bounded() {
    let e = env().await;
    let addr = e.ep.imds_for(&e.instance_id).unwrap();
    let imds = Imds::new(
        HttpImdsSource::new(&ImdsSettings {
            endpoint: Some(format!("http://{addr}")),
            token_ttl: Duration::from_secs(1),
            ..ImdsSettings::default()
        })
        .unwrap(),
    );
    assert_eq!(imds.instance_id().await.unwrap(), e.instance_id);
    // The first token has expired: IMDS would answer 401 to it; the client must fetch a new one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(imds.instance_id().await.unwrap(), e.instance_id);
    // An unknown path is a typed "missing", not a transport error.
    assert!(matches!(
        imds.interface("0e:ff:ff:ff:ff:ff", "0e:00:00:00:00:00")
            .await,
        Err(ipamd::imds::ImdsError::Missing { .. })
    ));

    // Nothing listening: a transport error after the bounded retries, not a hang.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let imds = Imds::new(
        HttpImdsSource::new(&ImdsSettings {
            endpoint: Some(format!("http://{dead_addr}")),
            max_attempts: 2,
            ..ImdsSettings::default()
        })
        .unwrap(),
    );
    let err = tokio::time::timeout(Duration::from_secs(30), imds.instance_id())
        .await
        .expect("bounded")
        .unwrap_err();
    assert!(
        matches!(err, ipamd::imds::ImdsError::Transport { .. }),
        "{err:?}"
    );
    assert!(
        HttpImdsSource::new(&ImdsSettings {
            endpoint: Some("not a url".into()),
            ..ImdsSettings::default()
        })
        .is_err()
    );
}

#[tokio::test]
async fn rollback_when_delete_on_termination_fails() {
    let e = env().await;
    e.sim
        .set_timing(Duration::ZERO, Duration::from_millis(150), Duration::ZERO);
    let m = e.manager().await;
    e.fault(
        "ModifyNetworkInterfaceAttribute",
        r#"{"error_rate":1.0,"error_code":"UnauthorizedOperation"}"#,
    )
    .await;
    let err = m
        .create_and_attach(AddressRequest::Ips(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EniError::Ec2(x) if x.code_is("UnauthorizedOperation")),
        "{err:?}"
    );
    assert!(e.our_enis().await.is_empty(), "detached and deleted");
    let c = e.sim.counters();
    assert_eq!(c["DetachNetworkInterface"].calls, 1);
    assert!(c["DeleteNetworkInterface"].calls >= 1);
    e.sim.check_invariants().unwrap();
}

struct NeverLink;
impl ipamd::eni::LinkProbe for NeverLink {
    fn link_exists(&self, _mac: &str) -> bool {
        false
    }
}

#[tokio::test]
async fn rollback_when_host_link_never_appears() {
    let e = env().await;
    let mut st = e.settings().await;
    st.visible_wait = Backoff {
        attempts: 3,
        initial: Duration::from_millis(10),
        max: Duration::from_millis(10),
    };
    let m = EniManager::new(e.ec2.clone(), e.imds.clone(), NeverLink, st);
    let err = m
        .create_and_attach(AddressRequest::Ips(1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EniError::NotVisible {
                what: "host links",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(e.our_enis().await.is_empty());
}

#[tokio::test]
async fn untagged_enis_unmanaged_when_manage_untagged_is_off() {
    let e = env().await;
    let mut st = e.settings().await;
    st.manage_untagged = false;
    let m = EniManager::new(e.ec2.clone(), e.imds.clone(), AssumeLinkPresent, st);
    let foreign = e
        .ec2
        .create_network_interface(&CreateEniRequest {
            subnet_id: e.subnet_id.clone(),
            description: "made by hand".into(),
            security_groups: vec![],
            addresses: AddressRequest::None,
            tags: Tags::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        m.unmanaged_reason(&foreign, false),
        Some(ipamd::eni::Unmanaged::Untagged)
    );
    assert_eq!(
        m.unmanaged_reason(&foreign, true),
        None,
        "primary is always ours"
    );
    let ours = m.create_and_attach(AddressRequest::None).await.unwrap();
    let d = &m
        .describe_enis(std::slice::from_ref(&ours.info.eni_id))
        .await
        .unwrap()[0];
    assert_eq!(m.unmanaged_reason(d, false), None);
    assert_eq!(
        m.free_eni(&foreign.eni_id).await.unwrap_err(),
        EniError::Unmanaged(foreign.eni_id.clone())
    );
}

#[tokio::test]
async fn describe_instance_types_reads_network_limits() {
    let e = env().await;
    let v = e
        .ec2
        .describe_instance_types(&["m5.large".to_string(), "t3.medium".to_string()])
        .await
        .unwrap();
    // vpcsim serves the built-in table's network limits (not its informational fields), so the
    // round trip through EC2's wire format and the shared converter must give back the limits
    // the pool and the max-pods formula use.
    assert_eq!(v.len(), 2);
    for name in ["m5.large", "t3.medium"] {
        let got = v.iter().find(|t| t.name == name).unwrap();
        let want = awscni_limits::lookup(name).unwrap();
        let limits = |t: &awscni_limits::InstanceType| {
            (
                t.hypervisor,
                t.bare_metal,
                t.default_vcpus,
                t.max_enis,
                t.default_card_enis(),
                t.ipv4_per_eni,
                t.network_cards
                    .iter()
                    .map(|c| (c.index, c.max_enis))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(limits(got), limits(want), "{name}");
        for pd in [false, true] {
            assert_eq!(
                awscni_limits::node_max_pods(got, None, 0, pd, false, false),
                awscni_limits::node_max_pods(want, None, 0, pd, false, false),
                "{name} prefix delegation {pd}"
            );
        }
    }
    let m5 = v.iter().find(|t| t.name == "m5.large").unwrap();
    assert_eq!((m5.default_card_enis(), m5.ipv4_per_eni), (3, 10));
    assert!(m5.supports_prefix_delegation());
    assert!(e.ec2.describe_instance_types(&[]).await.unwrap().is_empty());
}

/// A type newer than the built-in table is resolved through `DescribeInstanceTypes`; one EC2
/// does not know either fails start-up with the name, and so does IMDS-only mode.
#[tokio::test]
async fn unknown_instance_type_falls_back_to_describe_instance_types() {
    use ipamd::daemon::resolve_instance_type;
    use std::borrow::Cow;
    let e = env().await;
    // As if the table lacked m5.large: the answer must come from EC2, with the table's limits.
    let it = resolve_instance_type("m5.large", None, Some(&e.ec2))
        .await
        .unwrap();
    assert!(matches!(it, Cow::Owned(_)), "must have asked EC2");
    let table = awscni_limits::lookup("m5.large").unwrap();
    assert_eq!(
        (
            it.default_card_enis(),
            it.ipv4_per_eni,
            it.supports_prefix_delegation()
        ),
        (table.default_card_enis(), table.ipv4_per_eni, true)
    );
    let calls = e.ec2.stats().snapshot();
    assert_eq!(calls["DescribeInstanceTypes"].attempts, 1);

    // In the table: no EC2 call at all.
    let it = resolve_instance_type("m5.large", Some(table), Some(&e.ec2))
        .await
        .unwrap();
    assert!(matches!(it, Cow::Borrowed(_)));
    assert_eq!(
        e.ec2.stats().snapshot()["DescribeInstanceTypes"].attempts,
        1
    );

    let err = resolve_instance_type("m5.lrage", None, Some(&e.ec2))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"m5.lrage\"") && err.contains("m5.large"),
        "{err}"
    );
    assert!(err.contains("DescribeInstanceTypes"), "{err}");

    let err = resolve_instance_type("m5.lrage", None, None::<&SdkEc2>)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("ENABLE_IMDS_ONLY_MODE"), "{err}");
}
