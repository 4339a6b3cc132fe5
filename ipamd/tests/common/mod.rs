//! Shared setup for the ipamd integration tests that talk to vpcsim over loopback HTTP.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use ipamd::ec2::{Ec2Settings, RetryPolicy, SdkEc2};
use ipamd::limiter::{LimiterSettings, TokenBucket};

/// The real aws-sdk-ec2 client (through our limiter and retry loop) pointed at a vpcsim EC2
/// endpoint, with static credentials: vpcsim does not check signatures, but the SDK must sign.
pub async fn vpcsim_ec2(ec2_url: String, retry: RetryPolicy, limiter: LimiterSettings) -> SdkEc2 {
    let creds = aws_credential_types::Credentials::new("AKIDVPCSIM", "secret", None, None, "test");
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .credentials_provider(creds)
        .region(aws_config::Region::new("us-west-2"))
        .load()
        .await;
    SdkEc2::from_sdk_config(
        &sdk,
        &Ec2Settings {
            region: "us-west-2".into(),
            endpoint: Some(ec2_url),
            http_timeout: Duration::from_secs(5),
            retry,
        },
        Arc::new(TokenBucket::new(limiter).unwrap()),
    )
}

/// Fast retries for tests: 10 attempts, 5 ms doubling up to 50 ms.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 10,
        base: Duration::from_millis(5),
        max: Duration::from_millis(50),
    }
}

/// One m5.large instance in a fresh /24 of `sim`, served on loopback, with the real IMDS and
/// EC2 clients and an ENI manager with fast waits: what a daemon core needs to run against it.
pub struct VpcsimNode {
    /// The loopback endpoints of `sim`.
    pub ep: vpcsim::LoopbackEndpoints,
    /// The instance.
    pub inst: vpcsim::InstanceInfo,
    /// Its subnet.
    pub subnet: String,
    /// IMDS source for the instance.
    pub src: ipamd::imds::HttpImdsSource,
    /// IMDS client over `src`.
    pub imds: ipamd::imds::Imds<ipamd::imds::HttpImdsSource>,
    /// The instance's metadata, read through IMDS.
    pub meta: ipamd::imds::InstanceMetadata,
    /// Its interfaces as IMDS shows them, the primary ENI first.
    pub interfaces: Vec<ipamd::imds::EniMetadata>,
    /// EC2 client (100 QPS, burst 100, fast retries).
    pub ec2: SdkEc2,
    /// ENI manager in the instance's subnet and security groups.
    pub mgr:
        ipamd::eni::EniManager<SdkEc2, ipamd::imds::HttpImdsSource, ipamd::eni::AssumeLinkPresent>,
}

/// Builds a [`VpcsimNode`].
pub async fn vpcsim_node(sim: &Arc<vpcsim::Sim>) -> VpcsimNode {
    use ipamd::eni::{AssumeLinkPresent, Backoff, EniManager, EniSettings};
    use ipamd::imds::{HttpImdsSource, Imds, ImdsSettings};

    let subnet = sim
        .add_subnet("10.0.0.0/24".parse().unwrap(), None, &[])
        .unwrap();
    let inst = sim.add_instance("m5.large", &subnet).unwrap();
    let ep = sim.serve_loopback().await.unwrap();
    let src = HttpImdsSource::new(&ImdsSettings {
        endpoint: Some(format!(
            "http://{}",
            ep.imds_for(&inst.instance_id).unwrap()
        )),
        ..ImdsSettings::default()
    })
    .unwrap();
    let imds = Imds::new(src.clone());
    let ec2 = vpcsim_ec2(
        ep.ec2_url(),
        fast_retry(),
        LimiterSettings {
            qps: 100.0,
            burst: 100,
        },
    )
    .await;
    let meta = imds.instance().await.unwrap();
    let interfaces = imds.interfaces(&meta.primary_mac).await.unwrap();
    let primary = interfaces[0].clone();
    let mut st = EniSettings::new(
        &meta.instance_id,
        primary.vpc_id.as_deref().unwrap_or_default(),
        &meta.availability_zone,
        &primary.subnet_id,
    );
    st.security_groups = primary.security_groups.clone();
    let fast = Backoff {
        attempts: 40,
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    st.visible_wait = fast;
    st.delete_retry = fast;
    let mgr = EniManager::new(ec2.clone(), Imds::new(src.clone()), AssumeLinkPresent, st);
    VpcsimNode {
        ep,
        inst,
        subnet,
        src,
        imds,
        meta,
        interfaces,
        ec2,
        mgr,
    }
}
