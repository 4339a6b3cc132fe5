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
