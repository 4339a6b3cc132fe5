//! `ipamd::logging::init` installs the process-wide subscriber, so it gets a test binary (a
//! process) of its own: AWS_VPC_K8S_CNI_LOG_FILE as a path, AWS_VPC_K8S_CNI_LOGLEVEL=info.
#![allow(clippy::unwrap_used)]

use ipamd::config::Config;

#[test]
fn init_writes_upstream_json_lines_at_the_configured_level() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aws-routed-eni/ipamd.log");
    let vars = [
        (
            "AWS_VPC_K8S_CNI_LOG_FILE".to_string(),
            path.display().to_string(),
        ),
        ("AWS_VPC_K8S_CNI_LOGLEVEL".to_string(), "INFO".to_string()),
    ];
    let cfg = Config::from_lookup(&|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
        .unwrap()
        .0;
    // RUST_LOG would override the configured level.
    #[allow(unsafe_code)]
    // SAFETY: this binary has this one test and no other thread reads the environment yet.
    unsafe {
        std::env::remove_var("RUST_LOG")
    };
    ipamd::logging::init(&cfg);
    tracing::debug!("below the level");
    tracing::info!(eni = "eni-1", free = 7u64, "pool grown");
    tracing::error!(error = "boom", "EC2 failed");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["level"], "info");
    assert_eq!(lines[0]["msg"], "pool grown");
    assert_eq!(lines[0]["eni"], "eni-1");
    assert_eq!(lines[0]["free"], 7);
    assert!(
        lines[0]["caller"]
            .as_str()
            .unwrap()
            .starts_with("tests/logging_init.rs:"),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1]["level"], "error");
    assert_eq!(lines[1]["error"], "boom");
}
