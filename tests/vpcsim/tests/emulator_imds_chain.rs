//! aws-config's *default* provider chain (no access keys, no region in the environment)
//! resolves credentials and region from the emulator's IMDS, as on an EC2 node, and the
//! resulting client talks to the emulated EC2. One test per binary: it sets process
//! environment variables before any other thread runs.
#![allow(clippy::unwrap_used)]

mod emulator_common;

use aws_config::BehaviorVersion;
use vpcsim::{Sim, SimConfig};

#[test]
fn default_chain_works_from_imds_alone() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sim = Sim::new(SimConfig::default());
    let subnet = sim
        .add_subnet("10.0.30.0/24".parse().unwrap(), None, &[])
        .unwrap();
    let node = sim.add_instance("t3.medium", &subnet).unwrap();
    let ep = rt.block_on(sim.serve_loopback()).unwrap();
    let imds = ep.imds_for(&node.instance_id).unwrap();
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_EC2_METADATA_DISABLED",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        // SAFETY: single-threaded at this point (current-thread runtime, one test in this
        // binary), so nothing reads the environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::remove_var(var)
        };
    }
    let none = "/nonexistent/vpcsim-test";
    for (k, v) in [
        (
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://{imds}"),
        ),
        ("AWS_CONFIG_FILE", none.to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", none.to_string()),
        ("AWS_ENDPOINT_URL_EC2", ep.ec2_url()),
    ] {
        // SAFETY: as above.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(k, v)
        };
    }
    rt.block_on(async {
        let conf = aws_config::defaults(BehaviorVersion::latest()).load().await;
        assert_eq!(conf.region().map(|r| r.as_ref()), Some("us-west-2"));
        let ec2 = aws_sdk_ec2::Client::new(&conf);
        let out = ec2
            .describe_instances()
            .instance_ids(&node.instance_id)
            .send()
            .await
            .unwrap();
        let inst = &out.reservations()[0].instances()[0];
        assert_eq!(inst.instance_id(), Some(node.instance_id.as_str()));
        assert_eq!(
            inst.private_ip_address(),
            Some(node.primary_ip.to_string().as_str())
        );
    });
}
