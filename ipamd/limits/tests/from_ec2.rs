//! `max-pods --from-ec2` against the vpcsim EC2 emulator gives the same numbers as the table.
#![cfg(all(feature = "cli", feature = "ec2"))]
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

/// Starts the emulator's EC2 API on loopback (on a runtime kept alive by the caller).
fn emulator() -> (tokio::runtime::Runtime, String) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url = rt.block_on(async {
        let sim = vpcsim::Sim::new(vpcsim::SimConfig::default());
        sim.serve_loopback().await.unwrap().ec2_url()
    });
    (rt, url)
}

fn max_pods(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_max-pods"))
        .args(args)
        .args(["--from-ec2", "--endpoint-url", url, "--region", "us-west-2"])
        // The emulator requires a signed request but never checks the signature.
        .env("AWS_ACCESS_KEY_ID", "AKIDVPCSIM")
        .env("AWS_SECRET_ACCESS_KEY", "vpcsim")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_EC2")
        .output()
        .unwrap()
}

fn table(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_max-pods"))
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn all_types_match_the_table() {
    let (_rt, url) = emulator();
    for extra in [
        &[][..],
        &["--cni-prefix-delegation-enabled"],
        &["--cni-custom-networking-enabled", "--cni-max-eni", "4"],
    ] {
        let args = [&["--all"][..], extra].concat();
        let o = max_pods(&url, &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let live = String::from_utf8(o.stdout).unwrap();
        let rows = awscni_limits::parse_eni_max_pods(&live).unwrap();
        // Every type, through all DescribeInstanceTypes pages.
        assert_eq!(rows.len(), awscni_limits::all().len(), "{extra:?}");
        assert_eq!(live, table(&args), "{extra:?}");
    }
}

#[test]
fn examples_match_the_table() {
    let (_rt, url) = emulator();
    for (t, v) in [
        ("m5.large", 29),
        ("t3.medium", 17),
        ("c5.18xlarge", 737),
        ("p4d.24xlarge", 737),
        ("p5.48xlarge", 100),
        ("m5.metal", 737),
    ] {
        let o = max_pods(
            &url,
            &["--instance-type", t, "--show-max-allowed", "--json"],
        );
        assert!(
            o.status.success(),
            "{t}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(j["source"], "ec2");
        assert_eq!(j["value"], v, "{t}");
        let plain = table(&["--instance-type", t, "--show-max-allowed"]);
        assert_eq!(plain.trim(), v.to_string(), "{t}");
    }
}

#[test]
fn unknown_type_is_an_ec2_error() {
    let (_rt, url) = emulator();
    let o = max_pods(&url, &["--instance-type", "m5.lrage"]);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("InvalidInstanceType"), "{e}");
}
