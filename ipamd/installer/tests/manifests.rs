//! `scripts/validate-manifests.sh` (offline Kubernetes schema validation with PyPI's
//! kubernetes-validate, plus the aws-node contract) passes on `conf/` and fails on a broken
//! copy, so the check is known to bite. The script installs its pinned validator on first use.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn validate(conf_dir: &Path) -> (bool, String) {
    let out = Command::new("bash")
        .arg(repo().join("scripts/validate-manifests.sh"))
        .env("CONF_DIR", conf_dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn shipped_manifests_validate_and_broken_ones_do_not() {
    let conf = repo().join("conf");
    let (ok, log) = validate(&conf);
    assert!(ok, "{log}");
    assert!(log.contains("aws-k8s-cni.yaml"), "{log}");
    assert!(log.contains("0 problems"), "{log}");

    let shipped = std::fs::read_to_string(conf.join("aws-k8s-cni.yaml")).unwrap();
    let bad = tempfile::tempdir().unwrap();
    // A schema violation.
    std::fs::write(
        bad.path().join("a.yaml"),
        shipped.replace("containerPort: 61678", "containerPort: \"metrics\""),
    )
    .unwrap();
    let (ok, log) = validate(bad.path());
    assert!(!ok, "schema violation accepted: {log}");
    assert!(log.contains("containerPort"), "{log}");

    // Schema-valid but breaks the aws-node contract.
    std::fs::write(
        bad.path().join("a.yaml"),
        shipped.replace("hostNetwork: true", "hostNetwork: false"),
    )
    .unwrap();
    let (ok, log) = validate(bad.path());
    assert!(!ok, "contract violation accepted: {log}");
    assert!(log.contains("hostNetwork"), "{log}");
}
