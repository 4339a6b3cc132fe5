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
}

async fn start(sim: &Arc<Sim>, dir: &std::path::Path, vars: &[(&str, &str)]) -> Arc<TestCore> {
    start_full(sim, dir, vars).await.core
}

async fn start_full(sim: &Arc<Sim>, dir: &std::path::Path, vars: &[(&str, &str)]) -> Started {
    let common::VpcsimNode {
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
    }
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
    let deleted = st.core.cloud().delete_own_available().await.unwrap();
    assert_eq!(deleted, vec![ours.eni_id.clone()]);
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
