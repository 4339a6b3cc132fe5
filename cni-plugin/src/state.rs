//! Per-attachment local state, so DEL can tear down the host side when ipamd is unreachable
//! and the runtime sent no `prevResult` (it keeps no result cache for configs < 0.4.0, and a
//! cache entry may be lost). One small JSON file per `(network, container, ifname)`, written
//! atomically (temp file + rename) before any wiring starts, removed at the end of DEL.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default state directory (next to ipamd's socket and checkpoint on the host).
pub const DEFAULT_STATE_DIR: &str = "/var/run/aws-node/cni-state";
/// Environment override for the state directory (ours).
pub const STATE_DIR_ENV: &str = "AWS_VPC_CNI_STATE_DIR";

/// The directory: netconf `stateDir` > env `AWS_VPC_CNI_STATE_DIR` > default.
pub fn state_dir(netconf: Option<&str>, env: Option<&str>) -> PathBuf {
    netconf
        .filter(|s| !s.is_empty())
        .or(env.filter(|s| !s.is_empty()))
        .unwrap_or(DEFAULT_STATE_DIR)
        .into()
}

/// What DEL needs to undo an ADD without ipamd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentState {
    /// Network name (IPAM key part).
    pub network: String,
    /// Container ID (IPAM key part).
    pub container_id: String,
    /// Interface name (IPAM key part).
    pub ifname: String,
    /// Pod addresses.
    pub ips: Vec<IpAddr>,
    /// Host routing table of the ENI owning the address (254 = main).
    pub table: u32,
    /// ENI device number (upstream encodes it in its result; kept for diagnostics).
    pub device_number: i32,
    /// Host-side veth name.
    pub host_veth: String,
    /// Netns path at ADD time.
    pub netns: String,
}

/// File for one attachment. Network names and container IDs are restricted to
/// `[a-zA-Z0-9_.-]` and interface names contain no `/`, so the name is a safe single path
/// component.
pub fn file(dir: &Path, network: &str, container_id: &str, ifname: &str) -> PathBuf {
    dir.join(format!("{network}-{container_id}-{ifname}.json"))
}

/// Writes the state atomically.
pub fn save(path: &Path, st: &AttachmentState) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let data = serde_json::to_vec(st).map_err(io::Error::other)?;
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// Reads the state; `Ok(None)` when there is none (or it is unreadable garbage, which a DEL
/// must survive).
pub fn load(path: &Path) -> io::Result<Option<AttachmentState>> {
    match std::fs::read(path) {
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every readable state file in `dir` (GC uses it to find attachments DEL could not finish).
pub fn list(dir: &Path) -> Vec<(PathBuf, AttachmentState)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| load(&p).ok().flatten().map(|s| (p, s)))
        .collect()
}

/// Removes the state (absent is fine).
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let p = file(d.path(), "aws-cni", "c1", "eth0");
        assert_eq!(load(&p).unwrap(), None);
        let st = AttachmentState {
            network: "aws-cni".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            ips: vec!["10.0.0.1".parse().unwrap()],
            table: 2,
            device_number: 1,
            host_veth: "eni0761ccbeace".into(),
            netns: "/run/netns/x".into(),
        };
        save(&p, &st).unwrap();
        assert_eq!(load(&p).unwrap(), Some(st));
        remove(&p).unwrap();
        remove(&p).unwrap();
        assert_eq!(load(&p).unwrap(), None);
        assert_eq!(state_dir(None, Some("/x")), PathBuf::from("/x"));
        assert_eq!(state_dir(Some("/y"), Some("/x")), PathBuf::from("/y"));
        assert_eq!(state_dir(None, None), PathBuf::from(DEFAULT_STATE_DIR));
    }
}
