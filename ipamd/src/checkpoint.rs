//! The checkpoint file in upstream's `vpc-cni-ipam/1` format (ipam.md §10), and our sidecar
//! state file beside it.
//!
//! * `ipam.json` holds exactly what upstream writes, so a node moving between upstream and us in
//!   either direction keeps its pods' addresses. Upstream's decoder ignores unknown fields, but we
//!   add none to this file: everything of ours lives in the sidecar.
//! * `ipam.json.awscni-state` (the sidecar) holds release times of addresses still cooling down
//!   (ipam.md §13 #3) and ENIs we were detaching (§13 #17). Upstream never reads it; a missing or
//!   damaged sidecar only loses cooldowns, so it is never fatal.
//! * Both are written atomically: temp file in the same directory, write, `fsync`, `rename`, then
//!   `fsync` of the directory (upstream skips the last step, so a power loss could lose the
//!   rename).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Deserializer, Serialize};
use sha1::{Digest, Sha1};

/// The only checkpoint version upstream accepts.
pub const VERSION: &str = "vpc-cni-ipam/1";
/// Version of our sidecar file.
pub const STATE_VERSION: &str = "awscni-state/1";
/// Suffix of the sidecar file name (appended to the checkpoint's file name).
pub const STATE_SUFFIX: &str = ".awscni-state";

/// Upstream checkpoint document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Must be [`VERSION`].
    pub version: String,
    /// One entry per assigned address (`[]` when empty; `null` accepted on read).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub allocations: Vec<Allocation>,
}

/// One assigned address. Field names and `omitempty` rules follow upstream exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// IPAM key: network name.
    #[serde(rename = "networkName", default)]
    pub network_name: String,
    /// IPAM key: container ID.
    #[serde(rename = "containerID", default)]
    pub container_id: String,
    /// IPAM key: interface name.
    #[serde(rename = "ifName", default)]
    pub if_name: String,
    /// Address without prefix length; omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ipv4: String,
    /// Address without prefix length; omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ipv6: String,
    /// Assign time, Unix nanoseconds.
    #[serde(rename = "allocationTimestamp", default)]
    pub allocation_timestamp: i64,
    /// Pod metadata (always present on write, may be `{}`; missing in old files).
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: AllocMetadata,
}

/// Pod metadata of an allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocMetadata {
    /// Pod namespace; omitted when empty.
    #[serde(
        rename = "k8sPodNamespace",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub k8s_pod_namespace: String,
    /// Pod name; omitted when empty.
    #[serde(
        rename = "k8sPodName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub k8s_pod_name: String,
    /// Interfaces of the pod; omitted when 0.
    #[serde(rename = "interfacesCount", default, skip_serializing_if = "is_zero")]
    pub interfaces_count: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

fn null_as_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Our sidecar state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Must be [`STATE_VERSION`].
    pub version: String,
    /// Addresses released less than `IP_COOLDOWN_PERIOD` ago.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub cooldown: Vec<CooldownEntry>,
    /// ENIs whose detach/delete was started but not confirmed: finished on the next start.
    #[serde(rename = "detachingEnis", default, deserialize_with = "null_as_empty")]
    pub detaching_enis: Vec<String>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            version: STATE_VERSION.to_owned(),
            cooldown: Vec::new(),
            detaching_enis: Vec::new(),
        }
    }
}

/// One cooling address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CooldownEntry {
    /// The address.
    pub ipv4: String,
    /// Release time, Unix nanoseconds.
    #[serde(rename = "releasedAt")]
    pub released_at: i64,
}

/// Checkpoint I/O errors; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Read/write failure.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Not valid JSON of the expected shape.
    #[error("cannot parse {path}: {source}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// Wrong `version`.
    #[error("{path} has version {found:?}, expected {expected:?}")]
    Version {
        /// File.
        path: PathBuf,
        /// Found.
        found: String,
        /// Expected.
        expected: &'static str,
    },
}

/// The sidecar path for a checkpoint path: `<checkpoint>.awscni-state`.
pub fn sidecar_path(checkpoint: &Path) -> PathBuf {
    let mut s = checkpoint.as_os_str().to_owned();
    s.push(STATE_SUFFIX);
    PathBuf::from(s)
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CheckpointError + 'a {
    move |source| CheckpointError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Reads a checkpoint. `Ok(None)` when the file does not exist (fresh node); any other problem,
/// including a version other than [`VERSION`], is an error (fatal at start-up, as upstream).
pub fn load(path: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    let cp: Checkpoint =
        serde_json::from_slice(&data).map_err(|source| CheckpointError::Parse {
            path: path.to_owned(),
            source,
        })?;
    if cp.version != VERSION {
        return Err(CheckpointError::Version {
            path: path.to_owned(),
            found: cp.version,
            expected: VERSION,
        });
    }
    Ok(Some(cp))
}

/// Reads the sidecar. `Ok(None)` when absent (fresh node or coming from upstream).
pub fn load_state(path: &Path) -> Result<Option<State>, CheckpointError> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    let st: State = serde_json::from_slice(&data).map_err(|source| CheckpointError::Parse {
        path: path.to_owned(),
        source,
    })?;
    if st.version != STATE_VERSION {
        return Err(CheckpointError::Version {
            path: path.to_owned(),
            found: st.version,
            expected: STATE_VERSION,
        });
    }
    Ok(Some(st))
}

/// Writes the checkpoint atomically (JSON on one line plus a newline, like upstream).
pub fn save(path: &Path, cp: &Checkpoint) -> Result<(), CheckpointError> {
    let mut data = serde_json::to_vec(cp).map_err(|source| CheckpointError::Parse {
        path: path.to_owned(),
        source,
    })?;
    data.push(b'\n');
    write_atomic(path, &data)
}

/// Writes the sidecar atomically.
pub fn save_state(path: &Path, st: &State) -> Result<(), CheckpointError> {
    let mut data = serde_json::to_vec(st).map_err(|source| CheckpointError::Parse {
        path: path.to_owned(),
        source,
    })?;
    data.push(b'\n');
    write_atomic(path, &data)
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// temp file in the same directory (so `rename` is atomic), write, fsync, rename, fsync dir.
/// The temp file is created 0600 (upstream's mode) and removed on any failure.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), CheckpointError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
    let mut tmp_name = name;
    tmp_name.push(format!(
        ".tmp{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(data).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io_err("rename into", path))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // The rename is only durable once the directory entry is: fsync the directory.
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", &dir))
}

/// The 11 hex characters the host veth name of a pod ends with (datapath.md §1):
/// `hex(sha1("<namespace>.<name>"))[..11]`.
pub fn veth_hash(namespace: &str, name: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{name}").as_bytes());
    let mut h = hex::encode(digest);
    h.truncate(11);
    h
}

/// Length of [`veth_hash`].
const VETH_HASH_LEN: usize = 11;

/// The host's link names indexed by their last 11 characters, so that restore answers "does this
/// pod still have its host veth — does some link name end with its [`veth_hash`]" (upstream's
/// restore test, ipam.md §10.3) for every allocation with one hash lookup instead of a scan of
/// every link (hundreds of pods times hundreds of veths on a full node).
#[derive(Debug, Clone, Default)]
pub struct VethIndex {
    suffixes: HashSet<String>,
}

impl VethIndex {
    /// Indexes `links` (names shorter than a hash cannot end with one and are left out).
    pub fn new<S: AsRef<str>>(links: &[S]) -> Self {
        let suffixes = links
            .iter()
            .filter_map(|l| {
                let l = l.as_ref();
                // `get` is None when the cut falls inside a multi-byte character: such a name
                // does not end with 11 ASCII hex digits either.
                l.get(l.len().checked_sub(VETH_HASH_LEN)?..)
                    .map(str::to_owned)
            })
            .collect();
        Self { suffixes }
    }

    /// Whether some indexed link name ends with the pod's [`veth_hash`].
    pub fn pod_has_veth(&self, namespace: &str, name: &str) -> bool {
        self.suffixes.contains(&veth_hash(namespace, name))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::datastore::{Datastore, EniInfo, IpamKey, PodMeta};
    use std::net::Ipv4Addr;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, UNIX_EPOCH};

    /// The direct form of the restore test, the oracle [`VethIndex`] is checked against.
    fn pod_has_veth<S: AsRef<str>>(namespace: &str, name: &str, links: &[S]) -> bool {
        let h = veth_hash(namespace, name);
        links.iter().any(|l| l.as_ref().ends_with(&h))
    }

    /// Written by hand in upstream's on-disk shape: one line, Go field order, `omitempty`,
    /// including an old allocation without metadata and one unknown future field.
    const UPSTREAM: &str = concat!(
        r#"{"version":"vpc-cni-ipam/1","allocations":["#,
        r#"{"networkName":"aws-cni","containerID":"8c1f0e4b6d2a","ifName":"eth0","ipv4":"10.0.70.11","allocationTimestamp":1767225600123456789,"metadata":{"k8sPodNamespace":"shop","k8sPodName":"cart-7d4b9-xkq2p","interfacesCount":1}},"#,
        r#"{"networkName":"_migrated-from-cri","containerID":"0ld","ifName":"unknown","ipv4":"10.0.70.12","allocationTimestamp":0},"#,
        r#"{"networkName":"aws-cni","containerID":"f00","ifName":"eth0","ipv4":"10.0.70.13","allocationTimestamp":5,"metadata":{},"someFutureField":true}"#,
        "]}\n"
    );

    #[test]
    fn parses_upstream_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ipam.json");
        fs::write(&p, UPSTREAM).unwrap();
        let cp = load(&p).unwrap().unwrap();
        assert_eq!(cp.allocations.len(), 3);
        let a = &cp.allocations[0];
        assert_eq!(a.network_name, "aws-cni");
        assert_eq!(a.container_id, "8c1f0e4b6d2a");
        assert_eq!(a.ipv4, "10.0.70.11");
        assert_eq!(a.allocation_timestamp, 1_767_225_600_123_456_789);
        assert_eq!(a.metadata.k8s_pod_namespace, "shop");
        assert_eq!(a.metadata.interfaces_count, 1);
        assert_eq!(cp.allocations[1].metadata, AllocMetadata::default());
    }

    #[test]
    fn serializes_byte_identical_to_upstream_shape() {
        let cp: Checkpoint = serde_json::from_str(UPSTREAM).unwrap();
        let out = serde_json::to_string(&cp).unwrap();
        // Same as the input except: unknown field dropped, missing metadata written as {}.
        let expected = UPSTREAM
            .trim_end()
            .replace(r#","someFutureField":true"#, "")
            .replace(
                r#""allocationTimestamp":0}"#,
                r#""allocationTimestamp":0,"metadata":{}}"#,
            );
        assert_eq!(out, expected);
        let empty = Checkpoint {
            version: VERSION.into(),
            allocations: vec![],
        };
        assert_eq!(
            serde_json::to_string(&empty).unwrap(),
            r#"{"version":"vpc-cni-ipam/1","allocations":[]}"#
        );
    }

    #[test]
    fn missing_file_is_fresh_node_and_bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ipam.json");
        assert!(load(&p).unwrap().is_none());
        assert!(load_state(&sidecar_path(&p)).unwrap().is_none());
        fs::write(&p, r#"{"version":"vpc-cni-ipam/2","allocations":[]}"#).unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("vpc-cni-ipam/2") && e.contains("ipam.json"),
            "{e}"
        );
        fs::write(&p, "{not json").unwrap();
        assert!(matches!(load(&p), Err(CheckpointError::Parse { .. })));
        fs::write(&p, r#"{"version":"vpc-cni-ipam/1","allocations":null}"#).unwrap();
        assert!(load(&p).unwrap().unwrap().allocations.is_empty());
    }

    #[test]
    fn atomic_write_round_trip_mode_and_no_temp_left() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ipam.json");
        let cp: Checkpoint = serde_json::from_str(UPSTREAM).unwrap();
        save(&p, &cp).unwrap();
        save(&p, &cp).unwrap(); // overwrite
        let raw = fs::read_to_string(&p).unwrap();
        assert!(raw.ends_with("}\n") && raw.lines().count() == 1, "{raw}");
        assert_eq!(load(&p).unwrap().unwrap(), cp);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let st = State {
            version: STATE_VERSION.into(),
            cooldown: vec![CooldownEntry {
                ipv4: "10.0.70.14".into(),
                released_at: 42,
            }],
            detaching_enis: vec!["eni-1".into()],
        };
        save_state(&sidecar_path(&p), &st).unwrap();
        assert_eq!(load_state(&sidecar_path(&p)).unwrap().unwrap(), st);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, ["ipam.json", "ipam.json.awscni-state"]);
        // The sidecar does not disturb the upstream reader of ipam.json.
        assert_eq!(load(&p).unwrap().unwrap(), cp);
    }

    #[test]
    fn write_failure_names_path_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("ipam.json");
        let e = save(
            &p,
            &Checkpoint {
                version: VERSION.into(),
                allocations: vec![],
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("missing-dir"), "{e}");
        // A directory in place of the target: rename fails, temp file is cleaned up.
        let p = dir.path().join("ipam.json");
        fs::create_dir(&p).unwrap();
        fs::write(p.join("x"), "x").unwrap();
        assert!(
            save(
                &p,
                &Checkpoint {
                    version: VERSION.into(),
                    allocations: vec![]
                }
            )
            .is_err()
        );
        let entries: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn restore_upstream_file_into_datastore() {
        let cp: Checkpoint = serde_json::from_str(UPSTREAM).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut ds = Datastore::new(false, Duration::from_secs(30));
        ds.add_eni(
            EniInfo {
                id: "eni-1".into(),
                mac: "02:00:00:00:00:01".into(),
                device_number: 1,
                is_primary: false,
                excluded: false,
                trunk: false,
                efa: false,
                subnet: "10.0.64.0/18".parse().unwrap(),
                subnet_id: "subnet-1".into(),
                primary_ip: Ipv4Addr::new(10, 0, 70, 10),
            },
            now,
        );
        for i in 11..=14 {
            ds.add_cidr("eni-1", format!("10.0.70.{i}/32").parse().unwrap())
                .unwrap();
        }
        let links = [
            "eth0",
            "eni0761ccbeace",
            &format!("eni{}", veth_hash("shop", "cart-7d4b9-xkq2p")),
        ];
        let r = ds
            .restore(
                &cp,
                None,
                &|m: &PodMeta| pod_has_veth(&m.namespace, &m.name, &links),
                now,
            )
            .unwrap();
        assert_eq!(r.restored, 3);
        let a = ds
            .lookup(&IpamKey::new("aws-cni", "8c1f0e4b6d2a", "eth0"))
            .unwrap();
        assert_eq!(a.addr, Ipv4Addr::new(10, 0, 70, 11));
        assert_eq!(a.route_table, 2);
        // DEL through the new key finds the migrated allocation via the legacy fallback.
        let rel = ds
            .release(&IpamKey::new("aws-cni", "0ld", "eth0"), now)
            .unwrap();
        assert_eq!(rel.assignment.addr, Ipv4Addr::new(10, 0, 70, 12));
        // Round trip: what we write back has the same allocations minus the released one.
        let back = ds.checkpoint();
        assert_eq!(back.allocations.len(), 2);
        assert_eq!(back.allocations[0], cp.allocations[0]);

        // The same file with the pod's veth gone drops it.
        let mut ds2 = Datastore::new(false, Duration::from_secs(30));
        ds2.add_eni(ds.eni("eni-1").unwrap().clone(), now);
        for i in 11..=14 {
            ds2.add_cidr("eni-1", format!("10.0.70.{i}/32").parse().unwrap())
                .unwrap();
        }
        let r = ds2
            .restore(
                &cp,
                None,
                &|m: &PodMeta| pod_has_veth(&m.namespace, &m.name, &["eth0"]),
                now,
            )
            .unwrap();
        assert_eq!(r.dropped_pod_gone.len(), 1);
        assert_eq!(r.restored, 2);
    }

    #[test]
    fn veth_hash_matches_datapath_examples() {
        assert_eq!(veth_hash("default", "web-1"), "0761ccbeace");
        assert_eq!(
            veth_hash("kube-system", "coredns-5d78c9869d-abcde"),
            "4d5f75c480c"
        );
        assert!(pod_has_veth("default", "web-1", &["lo", "eni0761ccbeace"]));
        assert!(!pod_has_veth("default", "web-2", &["lo", "eni0761ccbeace"]));
    }

    #[test]
    fn veth_index_agrees_with_the_scan() {
        let links = [
            "lo".to_owned(),
            "eth0".to_owned(),
            format!("eni{}", veth_hash("default", "web-1")),
            // Another prefix (AWS_VPC_K8S_CNI_VETHPREFIX changed since the pod was wired).
            format!("cali{}", veth_hash("shop", "cart")),
            // A multi-byte character where the 11-character cut would fall.
            "é0761ccbeac".to_owned(),
            // The hash alone, and a hash that only appears in the middle of a name.
            veth_hash("kube-system", "dns"),
            format!("eni{}x", veth_hash("default", "web-2")),
        ];
        let idx = VethIndex::new(&links);
        for (ns, name) in [
            ("default", "web-1"),
            ("shop", "cart"),
            ("kube-system", "dns"),
            ("default", "web-2"),
            ("default", "web-3"),
            ("", ""),
        ] {
            assert_eq!(
                idx.pod_has_veth(ns, name),
                pod_has_veth(ns, name, &links),
                "{ns}/{name}"
            );
        }
        assert!(idx.pod_has_veth("shop", "cart"));
        assert!(!idx.pod_has_veth("default", "web-2"));
        assert!(!VethIndex::new::<&str>(&[]).pod_has_veth("default", "web-1"));
    }

    #[test]
    fn sidecar_path_is_beside_checkpoint() {
        assert_eq!(
            sidecar_path(Path::new("/var/run/aws-node/ipam.json")),
            PathBuf::from("/var/run/aws-node/ipam.json.awscni-state")
        );
    }
}
