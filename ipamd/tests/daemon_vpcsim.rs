//! The daemon core (pool manager, ADD wait, release, reconcile) against the vpcsim emulator over
//! real HTTP, through the real IMDS/EC2 clients and ENI lifecycle. Host networking is replaced by
//! a recording fake (no namespace, no root needed): this test checks the glue, not the datapath.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ipamd::config::Config;
use ipamd::daemon::{
    AddOutcome, Cloud, Core, Host, NodeInfo, RESTORE_GRACE, RealCloud, build_datastore, limits_for,
    restore,
};
use ipamd::datastore::{EniInfo, IpamKey, PodMeta};
use ipamd::ec2::SdkEc2;
use ipamd::eni::AssumeLinkPresent;
use ipamd::hostnet::{PodRule, PodRuleReport};
use ipamd::imds::Imds;
use vpcsim::server::{Sim, SimConfig};

#[derive(Default)]
struct RecordingHost {
    calls: Mutex<Vec<String>>,
}

impl Host for RecordingHost {
    fn setup_node(&self) -> Result<(), String> {
        Ok(())
    }
    fn setup_eni(&self, eni: &EniInfo) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("setup {}", eni.id));
        Ok(())
    }
    fn teardown_eni(&self, ip: Ipv4Addr, _table: u32) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("teardown {ip}"));
        Ok(())
    }
    fn link_names(&self) -> Result<Vec<String>, String> {
        Ok(vec![])
    }
    fn reapply_pod_rules(&self, _pods: &[PodRule], _prune: bool) -> Result<PodRuleReport, String> {
        Ok(PodRuleReport::default())
    }
    fn reconcile_iptables(&self) -> Result<(), String> {
        Ok(())
    }
}

type TestCore = Core<RealCloud<AssumeLinkPresent>, RecordingHost>;

struct Started {
    core: Arc<TestCore>,
    ec2: SdkEc2,
    instance_id: String,
    subnet_id: String,
    /// vpcsim's admin API (faults).
    admin: std::net::SocketAddr,
}

async fn start(sim: &Arc<Sim>, dir: &std::path::Path, vars: &[(&str, &str)]) -> Arc<TestCore> {
    start_full(sim, dir, vars).await.core
}

async fn start_full(sim: &Arc<Sim>, dir: &std::path::Path, vars: &[(&str, &str)]) -> Started {
    let common::VpcsimNode {
        ep,
        subnet,
        src,
        meta,
        interfaces,
        ec2,
        mgr,
        ..
    } = common::vpcsim_node(sim).await;
    let primary = interfaces[0].clone();

    let mut m: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.insert(
        "AWS_VPC_K8S_CNI_BACKING_STORE".into(),
        dir.join("ipam.json").display().to_string(),
    );
    let cfg = Config::from_lookup(&move |k| m.get(k).cloned()).unwrap().0;
    let it = awscni_limits::lookup(&meta.instance_type).unwrap();
    let (limits, mp) = limits_for(it, &cfg, 0);
    assert_eq!(mp.max_pods, 29);
    let ds = build_datastore(&cfg, &interfaces, None, &BTreeSet::new());
    let node = NodeInfo {
        instance_id: meta.instance_id.clone(),
        region: meta.region.clone(),
        instance_type: meta.instance_type.clone(),
        node_ip: Some(meta.local_ipv4),
        vpc_cidrs: primary.vpc_cidrs.clone(),
        primary_mac: meta.primary_mac.clone(),
    };
    let cloud = RealCloud::new(Some(mgr), Imds::new(src), &meta.primary_mac);
    let core = Arc::new(Core::new(
        cfg,
        node,
        limits,
        ds,
        cloud,
        RecordingHost::default(),
    ));
    restore(&core, RESTORE_GRACE).await.unwrap();
    Started {
        core,
        ec2,
        instance_id: meta.instance_id,
        subnet_id: subnet,
        admin: ep.admin,
    }
}

/// `PUT /faults/{action}` on vpcsim's admin API.
async fn put_fault(admin: std::net::SocketAddr, action: &str, body: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let req = format!(
        "PUT /faults/{action} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 2"), "fault not accepted: {resp}");
}

fn key(i: usize) -> IpamKey {
    IpamKey::new("aws-cni", &format!("c{i}"), "eth0")
}

fn mutating_calls(sim: &Sim) -> u64 {
    sim.counters()
        .iter()
        .filter(|(k, _)| !k.starts_with("Describe"))
        .map(|(_, v)| v.calls)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_to_max_pods_release_and_steady_state() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::new(SimConfig::default());
    let core = start(&sim, dir.path(), &[("IP_COOLDOWN_PERIOD", "0")]).await;

    // Initial fill: one ENI worth of secondary IPs on the primary.
    core.pool_pass().await;
    let s = core.with_ds(|ds| ds.stats(SystemTime::now()));
    assert_eq!((s.enis.len(), s.total()), (1, 9));

    // 27 concurrent ADDs (the m5.large pod-address capacity) with the pool manager running:
    // every ADD succeeds by waiting for the pool manager instead of failing.
    let pm = tokio::spawn(core.clone().pool_manager());
    let mut hs = Vec::new();
    for i in 0..27 {
        let c = core.clone();
        hs.push(tokio::spawn(async move {
            c.add(
                &key(i),
                &PodMeta {
                    namespace: "default".into(),
                    name: format!("p{i}"),
                    interfaces_count: 1,
                },
            )
            .await
            .unwrap()
        }));
    }
    let mut addrs = BTreeSet::new();
    for h in hs {
        match h.await.unwrap() {
            AddOutcome::Assigned(a) => assert!(addrs.insert(a.addr), "duplicate {}", a.addr),
            AddOutcome::NoAddress => panic!("ADD failed"),
        }
    }
    let s = core.with_ds(|ds| ds.stats(SystemTime::now()));
    assert_eq!((s.enis.len(), s.total(), s.assigned()), (3, 27, 27));
    // The 28th has nothing (27 pod IPs + 2 host-network pods = 29 max pods).
    let r = core.add(&key(99), &PodMeta::default()).await.unwrap();
    assert_eq!(r, AddOutcome::NoAddress);

    // EC2 agrees with the datastore, address by address.
    let ids: Vec<String> = s.enis.iter().map(|e| e.id.clone()).collect();
    let ec2: BTreeSet<Ipv4Addr> = core
        .cloud()
        .describe(&ids)
        .await
        .unwrap()
        .iter()
        .flat_map(|e| e.secondary_ips.clone())
        .collect();
    assert_eq!(ec2, addrs);
    assert_eq!(
        core.host()
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with("setup"))
            .count(),
        2
    );

    // Steady state: reconcile finds nothing to change and makes no mutating EC2 call.
    core.stop();
    pm.await.unwrap();
    let before = mutating_calls(&sim);
    for _ in 0..3 {
        assert!(core.reconcile().await.is_empty());
    }
    assert_eq!(mutating_calls(&sim), before);
    assert!(sim.check_invariants().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_ip_target_releases_excess_to_ec2() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::new(SimConfig::default());
    let core = start(
        &sim,
        dir.path(),
        &[("WARM_IP_TARGET", "2"), ("IP_COOLDOWN_PERIOD", "0")],
    )
    .await;
    core.pool_pass().await;
    assert_eq!(core.with_ds(|ds| ds.stats(SystemTime::now()).total()), 2);
    for i in 0..6 {
        let r = core.add(&key(i), &PodMeta::default()).await.unwrap();
        assert!(matches!(r, AddOutcome::Assigned(_)));
        core.pool_pass().await;
    }
    let s = core.with_ds(|ds| ds.stats(SystemTime::now()));
    assert_eq!((s.total(), s.assigned(), s.free()), (8, 6, 2));
    for i in 0..6 {
        core.del(&key(i)).unwrap();
    }
    core.pool_pass().await;
    let s = core.with_ds(|ds| ds.stats(SystemTime::now()));
    assert_eq!((s.total(), s.free()), (2, 2));
    let primary_id = s.enis[0].id.clone();
    let on_ec2 = core.cloud().describe(&[primary_id]).await.unwrap()[0]
        .secondary_ips
        .len();
    assert_eq!(on_ec2, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_deletes_own_available_enis_only() {
    use ipamd::ec2::{AddressRequest, CreateEniRequest, Ec2Api, Tags};
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::new(SimConfig::default());
    let st = start_full(&sim, dir.path(), &[]).await;
    let mk = |desc: String, owner: &str| {
        let mut tags = Tags::new();
        tags.insert(ipamd::eni::TAG_INSTANCE_ID.into(), owner.into());
        CreateEniRequest {
            subnet_id: st.subnet_id.clone(),
            description: desc,
            security_groups: vec![],
            addresses: AddressRequest::None,
            tags,
        }
    };
    // A leftover of a previous run (created, never attached) and two ENIs that are not ours.
    let ours = st
        .ec2
        .create_network_interface(&mk(format!("aws-K8S-{}", st.instance_id), &st.instance_id))
        .await
        .unwrap();
    let other_node = st
        .ec2
        .create_network_interface(&mk("aws-K8S-i-other".into(), "i-other"))
        .await
        .unwrap();
    let user = st
        .ec2
        .create_network_interface(&mk("user ENI".into(), &st.instance_id))
        .await
        .unwrap();
    // One created by this run (its `createdAt` is after the daemon started), whose attach has
    // not happened yet: not a leftover.
    let mut fresh = mk(format!("aws-K8S-{}", st.instance_id), &st.instance_id);
    fresh.tags.insert(
        ipamd::eni::TAG_CREATED_AT.into(),
        time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
    );
    let fresh = st.ec2.create_network_interface(&fresh).await.unwrap();
    let deleted = st.core.cloud().delete_own_available().await.unwrap();
    assert_eq!(deleted, vec![ours.eni_id.clone()]);
    assert_eq!(
        st.core
            .cloud()
            .describe(std::slice::from_ref(&fresh.eni_id))
            .await
            .unwrap()
            .len(),
        1
    );
    let left: Vec<String> = st
        .core
        .cloud()
        .describe(&[ours.eni_id, other_node.eni_id.clone(), user.eni_id.clone()])
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.eni_id)
        .collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&other_node.eni_id) && left.contains(&user.eni_id));
}

/// ENIs of the instance as EC2 lists them (tagged with it): `(id, status)`, sorted.
async fn our_enis(st: &Started) -> Vec<(String, String)> {
    use ipamd::ec2::{Ec2Api, Filter};
    let filters = [Filter::new(
        &format!("tag:{}", ipamd::eni::TAG_INSTANCE_ID),
        &st.instance_id,
    )];
    let mut v: Vec<(String, String)> = st
        .ec2
        .describe_network_interfaces_filtered(&filters)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.eni_id, e.status))
        .collect();
    v.sort();
    v
}

/// `kill -9` during an ADD storm, then restart (e2e `kill9_during_add_storm`, 1 run in 18): a
/// restarted daemon runs its clean-up of a previous run's `available` ENIs after it serves,
/// i.e. while the pool already grows. An ENI the pool has just created is `available` until its
/// attach lands and looked exactly like such a leftover: the clean-up freed it (detaching it
/// once attached), the growth then waited ~25 s for an ENI that never showed up in IMDS, counted
/// as in flight all along, so the pool took its ENI slot as taken and never grew for the
/// waiting ADD. Here the attach is held back so that the clean-up runs between create and
/// attach every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_cleanup_spares_the_eni_the_pool_is_creating() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::new(SimConfig::default());
    let st = start_full(&sim, dir.path(), &[("AWS_VPC_CNI_ADD_WAIT_MS", "30000")]).await;
    let core = st.core.clone();
    core.pool_pass().await;
    for i in 0..9 {
        let r = core.add(&key(i), &PodMeta::default()).await.unwrap();
        assert!(matches!(r, AddOutcome::Assigned(_)), "{r:?}");
    }
    // The primary ENI is full: the next ADD needs a new ENI, whose attach takes a while.
    put_fault(st.admin, "AttachNetworkInterface", r#"{"latency_ms":1500}"#).await;
    let pm = tokio::spawn(core.clone().pool_manager());
    let c = core.clone();
    let add = tokio::spawn(async move { c.add(&key(9), &PodMeta::default()).await.unwrap() });
    let mut creating = Vec::new();
    for _ in 0..1000 {
        creating = our_enis(&st).await;
        if creating.iter().any(|(_, s)| s == "available") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        creating.iter().any(|(_, s)| s == "available"),
        "the pool did not create an ENI: {creating:?}"
    );

    // The restart's clean-up, exactly as the deferred start-up task runs it.
    let deleted = core.cloud().delete_own_available().await.unwrap();
    assert!(
        deleted.is_empty(),
        "the clean-up deleted ENIs the pool is creating: {deleted:?}"
    );

    // The waiting ADD is served from a new ENI, and every ENI the pool created lands in the
    // datastore attached; none was deleted or detached.
    let a = match add.await.unwrap() {
        AddOutcome::Assigned(a) => a,
        AddOutcome::NoAddress => panic!("the waiting ADD got no address"),
    };
    for _ in 0..1000 {
        if core.growth_in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    core.stop();
    pm.await.unwrap();
    let in_ds: BTreeSet<String> = core.with_ds(|ds| ds.enis().map(|e| e.id.clone()).collect());
    assert!(in_ds.contains(&a.eni), "{} not in {in_ds:?}", a.eni);
    let on_ec2 = our_enis(&st).await;
    assert!(
        on_ec2
            .iter()
            .all(|(id, s)| s == "in-use" && in_ds.contains(id)),
        "EC2 {on_ec2:?} vs datastore {in_ds:?}"
    );
    let secondaries: BTreeSet<String> = core.with_ds(|ds| {
        ds.enis()
            .filter(|e| !e.is_primary)
            .map(|e| e.id.clone())
            .collect()
    });
    assert!(
        !secondaries.is_empty()
            && secondaries
                .iter()
                .all(|id| on_ec2.iter().any(|(e, _)| e == id)),
        "EC2 {on_ec2:?} vs datastore {in_ds:?}"
    );
    let calls = sim.counters();
    for action in ["DeleteNetworkInterface", "DetachNetworkInterface"] {
        assert_eq!(calls.get(action).map_or(0, |c| c.calls), 0, "{action}");
    }
    assert!(sim.check_invariants().is_ok());
}

/// An ENI attached behind the daemon's back (here: a previous run's attach that landed after
/// the restart read IMDS) holds one of the instance's ENI slots. Reconcile adopts it even while
/// the pool is creating an ENI of its own (it used to wait until no creation was in flight,
/// which during an ADD storm can be a long time, while the pool planned for a slot that was
/// not there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_adopts_a_foreign_eni_while_growth_is_in_flight() {
    use ipamd::ec2::{AddressRequest, CreateEniRequest, Ec2Api, Tags};
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::new(SimConfig::default());
    let st = start_full(&sim, dir.path(), &[]).await;
    let core = st.core.clone();
    core.pool_pass().await;
    for i in 0..9 {
        let r = core.add(&key(i), &PodMeta::default()).await.unwrap();
        assert!(matches!(r, AddOutcome::Assigned(_)), "{r:?}");
    }
    let mut tags = Tags::new();
    tags.insert(ipamd::eni::TAG_INSTANCE_ID.into(), st.instance_id.clone());
    let foreign = st
        .ec2
        .create_network_interface(&CreateEniRequest {
            subnet_id: st.subnet_id.clone(),
            description: format!("aws-K8S-{}", st.instance_id),
            security_groups: vec![],
            addresses: AddressRequest::Ips(3),
            tags,
        })
        .await
        .unwrap();
    st.ec2
        .attach_network_interface(&foreign.eni_id, &st.instance_id, 1, 0)
        .await
        .unwrap();
    // The pool grows (its primary ENI is full); its ENI creation is slow.
    put_fault(st.admin, "CreateNetworkInterface", r#"{"latency_ms":2000}"#).await;
    let c = core.clone();
    let growth = tokio::spawn(async move { c.pool_pass().await });
    for _ in 0..1000 {
        if core.growth_in_flight() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(core.growth_in_flight() > 0, "no growth started");
    core.reconcile().await;
    let adopted = core.with_ds(|ds| ds.eni(&foreign.eni_id).is_some());
    let still_growing = core.growth_in_flight() > 0;
    growth.await.unwrap();
    assert!(still_growing, "the growth ended before reconcile ran");
    assert!(
        adopted,
        "reconcile did not adopt {} while growth was in flight",
        foreign.eni_id
    );
    assert_eq!(
        core.with_ds(|ds| ds.eni_cidrs(&foreign.eni_id).len()),
        3,
        "its addresses are usable"
    );
}

/// A new ENI detached behind our back while the growth waits for IMDS to show it: the growth
/// gives up on it at once (EC2 is asked while IMDS is slow) instead of waiting out the whole
/// visibility budget while the pool counts it as growth in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growth_gives_up_on_an_eni_detached_while_waiting_for_imds() {
    use ipamd::ec2::{AddressRequest, Ec2Api, Filter};
    use ipamd::eni::EniError;
    let sim = Sim::new(SimConfig::default());
    let node = common::vpcsim_node(&sim).await;
    // IMDS shows changes 5 s late (longer than the test manager's visibility wait covers).
    sim.set_timing(Duration::ZERO, Duration::ZERO, Duration::from_secs(5));
    let mgr = node.mgr.clone();
    let create = tokio::spawn(async move { mgr.create_and_attach(AddressRequest::Ips(1)).await });
    let filters = [Filter::new(
        &format!("tag:{}", ipamd::eni::TAG_INSTANCE_ID),
        &node.meta.instance_id,
    )];
    let mut attachment = None;
    for _ in 0..1000 {
        let enis = node
            .ec2
            .describe_network_interfaces_filtered(&filters)
            .await
            .unwrap();
        attachment = enis
            .into_iter()
            .find_map(|e| e.attachment.filter(|a| a.device_index == 1));
        if attachment.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let att = attachment.expect("the new ENI was never attached");
    node.ec2
        .detach_network_interface(&att.attachment_id, false)
        .await
        .unwrap();
    let err = create.await.unwrap().unwrap_err();
    assert!(
        matches!(err, EniError::AttachmentLost { .. }),
        "expected AttachmentLost, got {err:?}"
    );
    assert!(sim.check_invariants().is_ok());
}

/// Measurement, not a check (run with `--ignored --nocapture`): 27 concurrent ADDs on a fresh
/// m5.large with a 2 s emulated attach latency; prints wall time and EC2 calls per action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_fill_m5_large_attach_2s() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("ipamd=info")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::new(SimConfig {
        attach_delay: Duration::from_secs(2),
        ..SimConfig::default()
    });
    let core = start(&sim, dir.path(), &[("AWS_VPC_CNI_ADD_WAIT_MS", "20000")]).await;
    let t0 = std::time::Instant::now();
    core.pool_pass().await;
    let initial = t0.elapsed();
    let pm = tokio::spawn(core.clone().pool_manager());
    let t1 = std::time::Instant::now();
    let hs: Vec<_> = (0..27)
        .map(|i| {
            let c = core.clone();
            tokio::spawn(async move { c.add(&key(i), &PodMeta::default()).await.unwrap() })
        })
        .collect();
    let mut ok = 0;
    for h in hs {
        if matches!(h.await.unwrap(), AddOutcome::Assigned(_)) {
            ok += 1;
        }
    }
    let fill = t1.elapsed();
    core.stop();
    pm.await.unwrap();
    eprintln!("initial fill: {initial:?}; 27 ADDs ({ok} ok) on the pool: {fill:?}");
    for (action, c) in sim.counters() {
        eprintln!("  {action}: {} calls", c.calls);
    }
}
