//! IMDSv2 of the emulator: token protocol, metadata from live state, the configured lag —
//! read through the real aws-config IMDS client where it can express the request.
#![allow(clippy::unwrap_used)]

mod emulator_common;

use std::time::{Duration, Instant};

use emulator_common::{imds_get, imds_token, raw_http, start};
use vpcsim::SimConfig;
use vpcsim::model::mac_string;

fn imds_client(addr: std::net::SocketAddr) -> aws_config::imds::Client {
    aws_config::imds::Client::builder()
        .endpoint(format!("http://{addr}"))
        .unwrap()
        .build()
}

#[tokio::test]
async fn token_is_required() {
    let env = start(SimConfig::default(), "10.0.20.0/24", "m5.large").await;
    let addr = env.ep.imds_for(&env.node.instance_id).unwrap();
    let (st, _) = raw_http(addr, "GET", "/latest/meta-data/instance-id", &[], "").await;
    assert_eq!(st, 401);
    let (st, _) = imds_get(addr, "bogus-token", "/latest/meta-data/instance-id").await;
    assert_eq!(st, 401);
    // TTL header missing or out of range → 400.
    let (st, _) = raw_http(addr, "PUT", "/latest/api/token", &[], "").await;
    assert_eq!(st, 400);
    for bad in ["0", "21601", "abc"] {
        let (st, _) = raw_http(
            addr,
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", bad)],
            "",
        )
        .await;
        assert_eq!(st, 400, "ttl {bad}");
    }
    // A token expires after its TTL.
    let (st, token) = raw_http(
        addr,
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "1")],
        "",
    )
    .await;
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (st, _) = imds_get(addr, &token, "/latest/meta-data/instance-id").await;
    assert_eq!(st, 401);
    // A good token works; unknown paths are 404.
    let token = imds_token(addr).await;
    let (st, body) = imds_get(addr, &token, "/latest/meta-data/instance-id").await;
    assert_eq!((st, body.as_str()), (200, env.node.instance_id.as_str()));
    let (st, _) = imds_get(addr, &token, "/latest/meta-data/no-such-thing").await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn metadata_reflects_the_model() {
    let env = start(SimConfig::default(), "10.0.21.0/24", "m5.large").await;
    let addr = env.ep.imds_for(&env.node.instance_id).unwrap();
    let imds = imds_client(addr);
    let get = |p: &'static str| {
        let imds = imds.clone();
        async move { imds.get(p).await.map(|s| s.as_ref().to_string()) }
    };
    let mac = mac_string(&env.node.mac);
    assert_eq!(
        get("/latest/meta-data/instance-id").await.unwrap(),
        env.node.instance_id
    );
    assert_eq!(
        get("/latest/meta-data/instance-type").await.unwrap(),
        "m5.large"
    );
    assert_eq!(get("/latest/meta-data/mac").await.unwrap(), mac);
    assert_eq!(
        get("/latest/meta-data/local-ipv4").await.unwrap(),
        env.node.primary_ip.to_string()
    );
    assert_eq!(
        get("/latest/meta-data/placement/availability-zone")
            .await
            .unwrap(),
        "us-west-2a"
    );
    assert_eq!(
        get("/latest/meta-data/placement/region").await.unwrap(),
        "us-west-2"
    );
    // Directory with and without the trailing slash.
    assert_eq!(
        get("/latest/meta-data/network/interfaces/macs")
            .await
            .unwrap(),
        format!("{mac}/")
    );
    assert_eq!(
        get("/latest/meta-data/network/interfaces/macs/")
            .await
            .unwrap(),
        format!("{mac}/")
    );
    let base = format!("/latest/meta-data/network/interfaces/macs/{mac}");
    let field = |f: &str| {
        let imds = imds.clone();
        let p = format!("{base}/{f}");
        async move { imds.get(p).await.map(|s| s.as_ref().to_string()) }
    };
    let listing = field("").await.unwrap();
    for f in [
        "device-number",
        "interface-id",
        "local-ipv4s",
        "subnet-id",
        "vpc-ipv4-cidr-blocks",
    ] {
        assert!(
            listing.lines().any(|l| l == f),
            "{f} missing from {listing}"
        );
    }
    assert_eq!(field("device-number").await.unwrap(), "0");
    assert_eq!(
        field("interface-id").await.unwrap(),
        env.node.primary_eni_id
    );
    assert_eq!(field("subnet-id").await.unwrap(), env.subnet);
    assert_eq!(
        field("subnet-ipv4-cidr-block").await.unwrap(),
        "10.0.21.0/24"
    );
    assert_eq!(field("vpc-ipv4-cidr-blocks").await.unwrap(), "10.0.0.0/16");
    assert_eq!(
        field("security-group-ids").await.unwrap(),
        env.node.security_group_ids.join("\n")
    );
    // Fields that do not apply are 404, not empty.
    assert!(field("ipv4-prefix").await.is_err());
    assert!(field("network-card").await.is_err());

    // Assign addresses and a prefix: they show up (lag 0), primary first.
    let out = env
        .ec2
        .assign_private_ip_addresses()
        .network_interface_id(&env.node.primary_eni_id)
        .secondary_private_ip_address_count(2)
        .send()
        .await
        .unwrap();
    let new: Vec<String> = out
        .assigned_private_ip_addresses()
        .iter()
        .map(|a| a.private_ip_address().unwrap().to_string())
        .collect();
    let ips = field("local-ipv4s").await.unwrap();
    let lines: Vec<&str> = ips.lines().collect();
    assert_eq!(lines[0], env.node.primary_ip.to_string());
    assert_eq!(
        lines[1..].to_vec(),
        new.iter().map(String::as_str).collect::<Vec<_>>()
    );
    env.ec2
        .assign_private_ip_addresses()
        .network_interface_id(&env.node.primary_eni_id)
        .ipv4_prefix_count(1)
        .send()
        .await
        .unwrap();
    assert!(field("ipv4-prefix").await.unwrap().ends_with("/28"));

    // The identity document carries the region.
    let doc = get("/latest/dynamic/instance-identity/document")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(v["region"], "us-west-2");
    assert_eq!(v["instanceId"], env.node.instance_id.as_str());

    // aws-config's IMDS credentials and region providers work against it.
    use aws_credential_types::provider::ProvideCredentials;
    let creds = aws_config::imds::credentials::ImdsCredentialsProvider::builder()
        .imds_client(imds.clone())
        .build()
        .provide_credentials()
        .await
        .unwrap();
    assert!(!creds.access_key_id().is_empty());
    assert!(creds.session_token().is_some());
    let region = aws_config::imds::region::ImdsRegionProvider::builder()
        .imds_client(imds.clone())
        .build()
        .region()
        .await;
    assert_eq!(region.unwrap().as_ref(), "us-west-2");
}

#[tokio::test]
async fn multi_card_instances_serve_network_card() {
    let env = start(SimConfig::default(), "10.0.22.0/24", "c6in.32xlarge").await;
    let addr = env.ep.imds_for(&env.node.instance_id).unwrap();
    let token = imds_token(addr).await;
    let eni = env
        .ec2
        .create_network_interface()
        .subnet_id(&env.subnet)
        .send()
        .await
        .unwrap();
    let ni = eni.network_interface().unwrap();
    env.ec2
        .attach_network_interface()
        .network_interface_id(ni.network_interface_id().unwrap())
        .instance_id(&env.node.instance_id)
        .device_index(0)
        .network_card_index(1)
        .send()
        .await
        .unwrap();
    let mac = ni.mac_address().unwrap();
    let (st, body) = imds_get(
        addr,
        &token,
        &format!("/latest/meta-data/network/interfaces/macs/{mac}/network-card"),
    )
    .await;
    assert_eq!((st, body.as_str()), (200, "1"));
    let (st, body) = imds_get(
        addr,
        &token,
        &format!(
            "/latest/meta-data/network/interfaces/macs/{}/network-card",
            mac_string(&env.node.mac)
        ),
    )
    .await;
    assert_eq!((st, body.as_str()), (200, "0"));
}

#[tokio::test]
async fn attach_and_assign_show_up_only_after_the_lag() {
    let attach_delay = Duration::from_millis(500);
    let lag = Duration::from_millis(1500);
    let cfg = SimConfig {
        attach_delay,
        imds_lag: lag,
        ..SimConfig::default()
    };
    let env = start(cfg, "10.0.23.0/24", "m5.large").await;
    let addr = env.ep.imds_for(&env.node.instance_id).unwrap();
    let token = imds_token(addr).await;
    let macs_path = "/latest/meta-data/network/interfaces/macs";
    // Wait for the node itself to be visible (it was created less than a lag ago, but an
    // instance's boot state is never lagged).
    let (st, _) = imds_get(addr, &token, macs_path).await;
    assert_eq!(st, 200);
    let mut gen_rx = env.sim.subscribe();
    gen_rx.borrow_and_update();

    let eni = env
        .ec2
        .create_network_interface()
        .subnet_id(&env.subnet)
        .secondary_private_ip_address_count(1)
        .send()
        .await
        .unwrap();
    let ni = eni.network_interface().unwrap();
    let mac = ni.mac_address().unwrap().to_string();
    let t0 = Instant::now();
    env.ec2
        .attach_network_interface()
        .network_interface_id(ni.network_interface_id().unwrap())
        .instance_id(&env.node.instance_id)
        .device_index(1)
        .send()
        .await
        .unwrap();
    let mut polls = 0;
    let appeared = loop {
        let (st, body) = imds_get(addr, &token, macs_path).await;
        assert_eq!(st, 200);
        let seen = body.lines().any(|l| l.trim_end_matches('/') == mac);
        let at = t0.elapsed();
        if seen {
            break at;
        }
        polls += 1;
        assert!(at < Duration::from_secs(30), "ENI never appeared in IMDS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // It cannot appear before attach delay + lag have passed (a lower bound, never flaky).
    assert!(
        appeared >= attach_delay + lag,
        "visible after {appeared:?}, before delay + lag"
    );
    assert!(polls > 0, "the ENI was visible on the first look");
    // The fabric view agrees, and subscribers were told.
    let view = env.sim.fabric_view();
    assert!(view.nodes[0].enis.iter().any(|e| mac_string(&e.mac) == mac));
    assert!(gen_rx.has_changed().unwrap());

    // An assignment lags too: the new address is not in local-ipv4s before the lag.
    let ips_path = format!("/latest/meta-data/network/interfaces/macs/{mac}/local-ipv4s");
    let before = imds_get(addr, &token, &ips_path).await.1;
    let t1 = Instant::now();
    let out = env
        .ec2
        .assign_private_ip_addresses()
        .network_interface_id(ni.network_interface_id().unwrap())
        .secondary_private_ip_address_count(1)
        .send()
        .await
        .unwrap();
    let new_ip = out.assigned_private_ip_addresses()[0]
        .private_ip_address()
        .unwrap()
        .to_string();
    let appeared = loop {
        let body = imds_get(addr, &token, &ips_path).await.1;
        let at = t1.elapsed();
        if body.lines().any(|l| l == new_ip) {
            break at;
        }
        assert_eq!(body, before, "IMDS changed to something unexpected");
        assert!(at < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(appeared >= lag, "assignment visible after {appeared:?}");
}
