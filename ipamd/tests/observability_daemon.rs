//! Metrics and introspection of a real daemon core — pool manager, real IMDS and EC2 clients,
//! ENI lifecycle against the vpcsim emulator, ADD/DEL through the real gRPC handlers — scraped
//! over real HTTP and compared with the datastore and with what EC2 itself reports. Host
//! networking is a no-op fake (no root needed): this checks the observability glue.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use awscni_proto::rpc::cni_backend_server::CniBackend;
use awscni_proto::rpc::{AddNetworkRequest, DelNetworkRequest};
use ipamd::config::Config;
use ipamd::daemon::{
    Cloud, Core, Host, NodeInfo, RESTORE_GRACE, RealCloud, build_datastore, limits_for, restore,
};
use ipamd::datastore::EniInfo;
use ipamd::hostnet::{PodRule, PodRuleReport};
use ipamd::imds::Imds;
use ipamd::introspect::{EniInfosJson, PoolJson, http_get, start_servers};
use ipamd::metrics::{Extras, parse_text};
use ipamd::rpc::Services;
use tonic::Request;
use vpcsim::server::{Sim, SimConfig};

struct NoHost;

impl Host for NoHost {
    fn setup_node(&self) -> Result<(), String> {
        Ok(())
    }
    fn setup_eni(&self, _eni: &EniInfo) -> Result<(), String> {
        Ok(())
    }
    fn teardown_eni(&self, _ip: Ipv4Addr, _table: u32) -> Result<(), String> {
        Ok(())
    }
    fn link_names(&self) -> Result<Vec<String>, String> {
        Ok(vec![])
    }
    fn reapply_pod_rules(&self, _p: &[PodRule], _prune: bool) -> Result<PodRuleReport, String> {
        Ok(PodRuleReport::default())
    }
    fn reconcile_iptables(&self) -> Result<(), String> {
        Ok(())
    }
}

fn add(c: &str) -> AddNetworkRequest {
    AddNetworkRequest {
        k8s_pod_name: format!("pod-{c}"),
        k8s_pod_namespace: "default".into(),
        if_name: "eth0".into(),
        network_name: "aws-cni".into(),
        container_id: c.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_core_metrics_match_datastore_and_ec2() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::new(SimConfig::default());
    let common::VpcsimNode {
        src,
        meta,
        interfaces,
        ec2,
        mgr,
        ..
    } = common::vpcsim_node(&sim).await;
    let primary = interfaces[0].clone();
    let sock = format!("unix:{}", dir.path().join("introspect.sock").display());
    let vars: HashMap<String, String> = [
        (
            "AWS_VPC_K8S_CNI_BACKING_STORE".to_string(),
            dir.path().join("ipam.json").display().to_string(),
        ),
        ("INTROSPECTION_BIND_ADDRESS".to_string(), sock.clone()),
    ]
    .into();
    let cfg = Config::from_lookup(&move |k| vars.get(k).cloned())
        .unwrap()
        .0;
    let it = awscni_limits::lookup(&meta.instance_type).unwrap();
    let (limits, mp) = limits_for(it, &cfg, 0);
    let ds = build_datastore(&cfg, &interfaces, None, &BTreeSet::new());
    let node = NodeInfo {
        instance_id: meta.instance_id.clone(),
        region: meta.region.clone(),
        instance_type: meta.instance_type.clone(),
        node_ip: Some(meta.local_ipv4),
        vpc_cidrs: primary.vpc_cidrs.clone(),
        primary_mac: meta.primary_mac.clone(),
    };
    let imds_stats = src.stats();
    let cloud = RealCloud::new(Some(mgr), Imds::new(src), &meta.primary_mac);
    let core = Arc::new(Core::new(cfg, node, limits, ds, cloud, NoHost));
    restore(&core, RESTORE_GRACE).await.unwrap();
    let servers = start_servers(
        core.clone(),
        Extras {
            ec2: Some(ec2.stats()),
            limiter: Some(ec2.limiter()),
            imds: Some(imds_stats.clone()),
        },
        "v-e2e",
        "127.0.0.1:0",
    )
    .await;
    let metrics_addr = servers.metrics.as_ref().unwrap().local_addr().to_owned();

    // Fill, then 12 ADDs through the gRPC handlers with the pool manager running, then 3 DELs.
    core.pool_pass().await;
    core.set_ready();
    let pm = tokio::spawn(core.clone().pool_manager());
    let svc = Services::new(core.clone(), "v-e2e");
    let mut hs = Vec::new();
    for i in 0..12 {
        let svc = svc.clone();
        hs.push(tokio::spawn(async move {
            svc.add_network(Request::new(add(&format!("c{i}"))))
                .await
                .unwrap()
                .into_inner()
        }));
    }
    for h in hs {
        assert!(h.await.unwrap().success);
    }
    for i in 0..3 {
        svc.del_network(Request::new(DelNetworkRequest {
            container_id: format!("c{i}"),
            if_name: "eth0".into(),
            network_name: "aws-cni".into(),
            reason: "PodDeleted".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    }
    // Let the pool manager settle, then stop it so nothing changes under the scrape.
    tokio::time::sleep(Duration::from_millis(300)).await;
    core.stop();
    pm.await.unwrap();

    let a = metrics_addr.clone();
    let s2 = sock.clone();
    let (metrics, enis, pool) = tokio::task::spawn_blocking(move || {
        let (c, m) = http_get(&a, "/metrics").unwrap();
        assert_eq!(c, 200);
        let (c, e) = http_get(&s2, "/v1/enis").unwrap();
        assert_eq!(c, 200);
        let (c, p) = http_get(&s2, "/v1/pool").unwrap();
        assert_eq!(c, 200);
        (m, e, p)
    })
    .await
    .unwrap();
    let (samples, _) = parse_text(&metrics).unwrap();
    let get = |name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    };

    // The datastore.
    let stats = core.with_ds(|ds| ds.stats(SystemTime::now()));
    assert_eq!(stats.assigned(), 9);
    assert_eq!(get("awscni_assigned_ip_addresses", &[]), 9.0);
    assert_eq!(get("awscni_total_ip_addresses", &[]), stats.total() as f64);
    assert_eq!(get("awscni_eni_allocated", &[]), stats.enis.len() as f64);
    assert_eq!(get("awscni_free_ip_addresses", &[]), stats.free() as f64);
    assert_eq!(
        get("awscni_cooling_ip_addresses", &[]),
        stats.cooling() as f64
    );
    assert_eq!(stats.cooling(), 3);
    for e in &stats.enis {
        assert_eq!(
            get("awscni_assigned_ip_per_eni", &[("eni", &e.id)]),
            e.assigned() as f64
        );
    }
    assert_eq!(get("awscni_assigned_ip_per_cidr", &[]), 9.0);
    assert_eq!(get("awscni_max_pods", &[]), f64::from(mp.max_pods));
    assert_eq!(get("awscni_add_ip_req_count", &[]), 12.0);
    assert_eq!(
        get("awscni_del_ip_req_count", &[("reason", "PodDeleted")]),
        3.0
    );
    let decisions = get("awscni_pool_decisions", &[("action", "grow")]);
    assert!(decisions >= 1.0, "{metrics}");
    assert!(get("awscni_pool_passes", &[]) >= 2.0);

    // EC2 itself: the addresses on our ENIs are what the metrics count.
    let ids: Vec<String> = stats.enis.iter().map(|e| e.id.clone()).collect();
    let described = core.cloud().describe(&ids).await.unwrap();
    let on_ec2: usize = described.iter().map(|e| e.secondary_ips.len()).sum();
    assert_eq!(get("awscni_total_ip_addresses", &[]), on_ec2 as f64);
    // The EC2 counters are the client's (our describe above only adds to DescribeNetworkInterfaces).
    let snap = ec2.stats().snapshot();
    let create = snap.get("CreateNetworkInterface").map_or(0, |s| s.attempts);
    assert!(create >= 1, "12 pods need a second ENI on an m5.large");
    assert_eq!(
        get(
            "awscni_ec2api_req_count",
            &[("fn", "CreateNetworkInterface")]
        ),
        create as f64
    );
    assert_eq!(
        get(
            "awscni_ec2api_req_count",
            &[("fn", "AttachNetworkInterface")]
        ),
        snap["AttachNetworkInterface"].attempts as f64
    );

    // IMDS reads (waiting for the new ENI to show up) are upstream's `GetMetadata` series, and
    // the scrape shows exactly what the client counted.
    let imds_ok = imds_stats
        .snapshot()
        .get(&(false, "200".to_string()))
        .map_or(0, |v| v.count);
    assert!(imds_ok > 0, "the ENI wait reads IMDS");
    assert_eq!(
        get(
            "awscni_aws_api_latency_ms_count",
            &[
                ("api", "GetMetadata"),
                ("error", "false"),
                ("status", "200")
            ]
        ),
        imds_ok as f64
    );

    // Introspection agrees with the same datastore.
    let enis: BTreeMap<String, EniInfosJson> = serde_json::from_str(&enis).unwrap();
    assert_eq!(enis["0"].total_ips, stats.total());
    assert_eq!(enis["0"].assigned_ips, 9);
    assert_eq!(enis["0"].enis.len(), stats.enis.len());
    let listed: usize = enis["0"]
        .enis
        .values()
        .flat_map(|e| e.ipv4_cidrs.values())
        .map(|c| c.addresses.len())
        .sum();
    assert_eq!(listed, 9 + 3, "assigned + cooling addresses");
    // SubnetID: what EC2 says, for the primary ENI (known from start-up) and for the ENI the
    // pool manager created for the 12 pods.
    assert!(described.len() >= 2);
    for d in &described {
        assert!(d.subnet_id.starts_with("subnet-"), "{d:?}");
        assert_eq!(
            enis["0"].enis[&d.eni_id].subnet_id, d.subnet_id,
            "{}",
            d.eni_id
        );
    }
    let pool: PoolJson = serde_json::from_str(&pool).unwrap();
    assert_eq!(pool.max_pods, mp.max_pods);
    assert_eq!((pool.assigned, pool.cooling), (9, 3));
    assert_eq!(pool.instance_id, meta.instance_id);
    assert!(pool.last_decision.is_some());
    drop(servers);
}
