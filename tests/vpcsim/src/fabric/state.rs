//! The JSON description printed by `vpcsim up`, and the state file that lets `status` and
//! `down` find a running (or crashed) instance.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::FabricError;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/run/vpcsim";

/// Everything a user of a running vpcsim needs (printed by `vpcsim up`, shown by `status`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Description {
    /// Namespace prefix.
    pub prefix: String,
    /// Pid of the `vpcsim serve` process.
    pub pid: u32,
    /// State file path.
    pub state_file: String,
    /// Log file of the serve process.
    pub log_file: String,
    /// Region.
    pub region: String,
    /// VPC IPv4 CIDRs.
    pub vpc_cidrs: Vec<String>,
    /// The VPC router namespace.
    pub vpc_namespace: String,
    /// Subnets.
    pub subnets: Vec<SubnetDesc>,
    /// EC2 Query API on the machine's loopback (for the AWS CLI, boto3, tests).
    pub ec2_endpoint: String,
    /// EC2 Query API as seen from inside every node (`AWS_ENDPOINT_URL_EC2` for ipamd).
    pub ec2_endpoint_in_node: String,
    /// IMDS as seen from inside every node.
    pub imds_endpoint_in_node: String,
    /// Admin API (counters, faults, timing, `/fabric/status`) on loopback.
    pub admin_endpoint: String,
    /// The "internet".
    pub external: ExternalDesc,
    /// The nodes.
    pub nodes: Vec<NodeDesc>,
}

/// One subnet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SubnetDesc {
    /// `subnet-…`.
    pub subnet_id: String,
    /// CIDR.
    pub cidr: String,
    /// Gateway (network + 1).
    pub gateway: String,
}

/// The external namespace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExternalDesc {
    /// Namespace name.
    pub namespace: String,
    /// The host's address (ping it; it stands for the internet).
    pub address: String,
    /// An HTTP service on it that answers with the client address it sees (to check SNAT).
    pub whoami_url: String,
}

/// One node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeDesc {
    /// Short name (`node1`).
    pub name: String,
    /// Network namespace.
    pub namespace: String,
    /// Instance id.
    pub instance_id: String,
    /// Instance type.
    pub instance_type: String,
    /// Availability zone.
    pub availability_zone: String,
    /// Subnet of the primary ENI.
    pub subnet_id: String,
    /// Primary ENI id.
    pub primary_eni_id: String,
    /// Primary private IPv4.
    pub primary_ip: String,
    /// Primary ENI MAC.
    pub mac: String,
    /// Pid of the process holding the node's mount namespace.
    pub holder_pid: u32,
    /// Command prefix that runs a program inside the node.
    pub enter: Vec<String>,
    /// Production path → node-local directory on the host.
    pub dirs: Vec<(String, String)>,
}

/// What `down` needs even when the serve process is gone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateFile {
    /// Namespace prefix.
    pub prefix: String,
    /// Pid of the serve process.
    pub serve_pid: u32,
    /// Its start time (clock ticks since boot), to tell it from a later process with that pid.
    pub serve_start_time: Option<u64>,
    /// Mount-namespace inodes of the nodes (their processes are killed by `down`).
    pub mnt_inodes: Vec<u64>,
    /// Node-local directories root (removed by `down`).
    pub node_dirs: String,
    /// The full description, once the instance is ready.
    pub description: Option<Description>,
}

/// Path of the state file for `prefix`.
pub fn state_path(state_dir: &Path, prefix: &str) -> PathBuf {
    state_dir.join(format!("{prefix}.json"))
}

/// Path of the serve log for `prefix`.
pub fn log_path(state_dir: &Path, prefix: &str) -> PathBuf {
    state_dir.join(format!("{prefix}.log"))
}

/// Root of the node-local directories for `prefix`.
pub fn node_dirs_path(state_dir: &Path, prefix: &str) -> PathBuf {
    state_dir.join(prefix).join("nodes")
}

/// Reads the state file; `Ok(None)` if there is none.
pub fn read(path: &Path) -> Result<Option<StateFile>, FabricError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| FabricError::Parse {
                    cmd: format!("read {}", path.display()),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FabricError::Io {
            ctx: format!("cannot read {}", path.display()),
            source,
        }),
    }
}

/// Writes the state file atomically (write + rename).
pub fn write(path: &Path, state: &StateFile) -> Result<(), FabricError> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(state).map_err(|source| FabricError::Parse {
        cmd: "serialise state".into(),
        source,
    })?;
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| FabricError::Io {
            ctx: format!("cannot write {}", path.display()),
            source,
        })
}
