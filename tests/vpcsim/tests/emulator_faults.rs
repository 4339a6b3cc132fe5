//! Fault injection and the admin API: counters per action, injected errors with AWS HTTP
//! statuses, the token-bucket throttle, added latency, reset.
#![allow(clippy::unwrap_used)]

mod emulator_common;

use std::time::{Duration, Instant};

use emulator_common::{raw_http, start};
use vpcsim::SimConfig;

async fn admin(env: &emulator_common::Env, method: &str, path: &str, body: &str) -> (u16, String) {
    raw_http(
        env.ep.admin,
        method,
        path,
        &[("Content-Type", "application/json")],
        body,
    )
    .await
}

async fn counters(env: &emulator_common::Env) -> serde_json::Value {
    let (st, body) = admin(env, "GET", "/counters", "").await;
    assert_eq!(st, 200);
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn counters_count_calls_and_errors_per_action() {
    let env = start(SimConfig::default(), "10.0.40.0/24", "m5.large").await;
    for _ in 0..3 {
        env.ec2.describe_subnets().send().await.unwrap();
    }
    let _ = env
        .ec2
        .delete_network_interface()
        .network_interface_id("eni-00000000000000000")
        .send()
        .await;
    let c = counters(&env).await;
    assert_eq!(c["DescribeSubnets"]["calls"], 3);
    assert_eq!(c["DescribeSubnets"]["errors"], 0);
    assert_eq!(c["DeleteNetworkInterface"]["calls"], 1);
    assert_eq!(c["DeleteNetworkInterface"]["errors"], 1);
    assert!(c.get("AssignPrivateIpAddresses").is_none());
    // The state dump agrees with DescribeSubnets.
    let (st, body) = admin(&env, "GET", "/state", "").await;
    assert_eq!(st, 200);
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["subnets"][0]["available_ip_address_count"], 250);
    assert_eq!(
        state["network_interfaces"][0]["attachment"]["instance_id"],
        env.node.instance_id.as_str()
    );
    let (st, _) = admin(&env, "DELETE", "/counters", "").await;
    assert_eq!(st, 204);
    assert_eq!(counters(&env).await, serde_json::json!({}));
}

#[tokio::test]
async fn injected_errors_use_aws_codes_and_statuses() {
    let env = start(SimConfig::default(), "10.0.41.0/24", "m5.large").await;
    for (code, status) in [
        ("InternalError", 500),
        ("Unavailable", 503),
        ("RequestLimitExceeded", 503),
        ("UnauthorizedOperation", 403),
    ] {
        let (st, body) = admin(
            &env,
            "PUT",
            "/faults/DescribeSubnets",
            &format!(r#"{{"error_rate": 1.0, "error_code": "{code}"}}"#),
        )
        .await;
        assert_eq!(st, 204, "{body}");
        expect_err!(env.ec2.describe_subnets().send().await, code, status);
        // Other actions are untouched.
        env.ec2.describe_security_groups().send().await.unwrap();
    }
    let (st, body) = admin(&env, "GET", "/faults", "").await;
    assert_eq!(st, 200);
    let f: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(f["DescribeSubnets"]["error_code"], "UnauthorizedOperation");
    // "*" applies to every action without its own entry.
    admin(&env, "DELETE", "/faults/DescribeSubnets", "").await;
    admin(&env, "PUT", "/faults/*", r#"{"error_rate": 1.0}"#).await;
    expect_err!(
        env.ec2.describe_security_groups().send().await,
        "InternalError",
        500
    );
    let (st, _) = admin(&env, "POST", "/reset", "").await;
    assert_eq!(st, 204);
    env.ec2.describe_security_groups().send().await.unwrap();
    assert_eq!(counters(&env).await["DescribeSecurityGroups"]["calls"], 1);
    // Bad specs are refused with a message.
    let (st, body) = admin(&env, "PUT", "/faults/X", r#"{"error_rate": 2}"#).await;
    assert_eq!(st, 400);
    assert!(body.contains("error_rate"), "{body}");
    let (st, _) = admin(&env, "PUT", "/faults/X", r#"{"latency": 5}"#).await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn throttle_answers_request_limit_exceeded() {
    let env = start(SimConfig::default(), "10.0.42.0/24", "m5.large").await;
    let (st, body) = admin(
        &env,
        "PUT",
        "/faults/DescribeNetworkInterfaces",
        r#"{"throttle": {"rate_per_sec": 0.0, "burst": 3}}"#,
    )
    .await;
    assert_eq!(st, 204, "{body}");
    for _ in 0..3 {
        env.ec2.describe_network_interfaces().send().await.unwrap();
    }
    let msg = expect_err!(
        env.ec2.describe_network_interfaces().send().await,
        "RequestLimitExceeded",
        503
    );
    assert_eq!(msg, "Request limit exceeded.");
    let c = counters(&env).await;
    assert_eq!(c["DescribeNetworkInterfaces"]["calls"], 4);
    assert_eq!(c["DescribeNetworkInterfaces"]["errors"], 1);
    assert_eq!(c["DescribeNetworkInterfaces"]["throttled"], 1);

    // The SDK's standard retry treats it as throttling and retries: with retries on, a
    // refilling bucket lets the call through eventually.
    admin(
        &env,
        "PUT",
        "/faults/DescribeNetworkInterfaces",
        r#"{"throttle": {"rate_per_sec": 20.0, "burst": 1}}"#,
    )
    .await;
    let retrying = aws_sdk_ec2::Client::from_conf(
        env.ec2
            .config()
            .to_builder()
            .retry_config(aws_sdk_ec2::config::retry::RetryConfig::standard().with_max_attempts(10))
            .build(),
    );
    for _ in 0..5 {
        retrying.describe_network_interfaces().send().await.unwrap();
    }
    let c = counters(&env).await;
    assert!(c["DescribeNetworkInterfaces"]["calls"].as_u64().unwrap() >= 9);
}

#[tokio::test]
async fn latency_is_added() {
    let env = start(SimConfig::default(), "10.0.43.0/24", "m5.large").await;
    admin(
        &env,
        "PUT",
        "/faults/DescribeSubnets",
        r#"{"latency_ms": 300}"#,
    )
    .await;
    let t = Instant::now();
    env.ec2.describe_subnets().send().await.unwrap();
    // Lower bound only: the call cannot be faster than the injected latency.
    assert!(t.elapsed() >= Duration::from_millis(300));
    // Timing knobs over the admin API.
    let (st, _) = admin(
        &env,
        "PUT",
        "/timing",
        r#"{"attach_delay_ms": 10, "detach_delay_ms": 20, "imds_lag_ms": 30}"#,
    )
    .await;
    assert_eq!(st, 204);
    let (_, body) = admin(&env, "GET", "/timing", "").await;
    let t: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(t["detach_delay_ms"], 20);
    assert_eq!(t["imds_lag_ms"], 30);
}

#[tokio::test]
async fn same_seed_same_world() {
    let run = |seed| async move {
        let cfg = SimConfig {
            seed,
            random_addresses: true,
            ..SimConfig::default()
        };
        let env = start(cfg, "10.0.44.0/24", "m5.large").await;
        let out = env
            .ec2
            .create_network_interface()
            .subnet_id(&env.subnet)
            .secondary_private_ip_address_count(5)
            .send()
            .await
            .unwrap();
        let ni = out.network_interface().unwrap();
        let mut ips: Vec<String> = ni
            .private_ip_addresses()
            .iter()
            .map(|p| p.private_ip_address().unwrap().to_string())
            .collect();
        ips.push(ni.mac_address().unwrap().to_string());
        ips.push(ni.network_interface_id().unwrap().to_string());
        ips.push(env.node.instance_id.clone());
        ips
    };
    let a = run(7).await;
    assert_eq!(a, run(7).await);
    assert_ne!(a, run(8).await);
}
