//! The init step (upstream's privileged init container, `aws-vpc-cni init` here).
//!
//! It runs in the host network namespace before the main container and does what must be in
//! place before any pod is wired: loose reverse-path filtering on the primary ENI (traffic for
//! pods on secondary ENIs arrives on it asymmetrically and strict rp_filter would drop it), the
//! TCP early-demux setting, the IPv6 knobs in IPv6 mode, and the standard CNI plugins the
//! conflist chains. Every sysctl is written under the `/proc/sys` of the namespace the process
//! runs in, and only for the primary interface: nothing else on the host is touched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::InitConfig;
use crate::fsutil::{self, FsError};
use crate::imds;

/// Plugins the init step copies from the image into the host CNI bin dir, as upstream's init
/// container does. `loopback` and `portmap` are always needed (runtimes call `loopback` for the
/// pod's `lo`; the conflist chains `portmap`); `bandwidth` and `tuning` only when the conflist
/// chains them; `host-local` is copied when present (upstream ships it for egress-cni).
pub const STD_PLUGINS: [&str; 5] = ["loopback", "portmap", "bandwidth", "host-local", "tuning"];

/// Init-step failures.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A sysctl could not be written.
    #[error("sysctl {key}={value}: {source}")]
    Sysctl {
        /// Dotted sysctl name.
        key: String,
        /// The value being written.
        value: String,
        /// The write error.
        #[source]
        source: std::io::Error,
    },
    /// The primary interface could not be determined.
    #[error("primary interface: {0}")]
    Primary(String),
    /// A required standard plugin is missing from the image.
    #[error("required CNI plugin {name:?} not found in {dir}")]
    MissingPlugin {
        /// Plugin name.
        name: String,
        /// The directory searched.
        dir: PathBuf,
    },
    /// Copying a plugin failed.
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// One sysctl to write: dotted key (with the interface name as one component) and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    /// Components of the key, e.g. `["net","ipv4","conf","eth0","rp_filter"]`. Kept apart
    /// because an interface name may contain a dot (`eth0.100`).
    pub parts: Vec<String>,
    /// Value to write.
    pub value: &'static str,
}

impl Sysctl {
    fn new(parts: &[&str], value: &'static str) -> Self {
        Self {
            parts: parts.iter().map(|s| s.to_string()).collect(),
            value,
        }
    }

    /// Dotted name for messages.
    pub fn key(&self) -> String {
        self.parts.join(".")
    }

    /// File under a `/proc/sys` root.
    pub fn path(&self, proc_sys: &Path) -> PathBuf {
        self.parts
            .iter()
            .fold(proc_sys.to_path_buf(), |p, c| p.join(c))
    }
}

/// The sysctls upstream's init container sets (datapath.md §8), for `primary`.
pub fn plan(cfg: &InitConfig, primary: &str) -> Vec<Sysctl> {
    let mut v = vec![
        Sysctl::new(&["net", "ipv4", "conf", primary, "rp_filter"], "2"),
        Sysctl::new(
            &["net", "ipv4", "tcp_early_demux"],
            if cfg.disable_tcp_early_demux {
                "0"
            } else {
                "1"
            },
        ),
    ];
    if cfg.enable_ipv6 {
        v.push(Sysctl::new(
            &["net", "ipv6", "conf", "all", "disable_ipv6"],
            "0",
        ));
    }
    if cfg.enable_ipv6 || cfg.enable_v6_egress {
        v.push(Sysctl::new(
            &["net", "ipv6", "conf", "all", "forwarding"],
            "1",
        ));
        v.push(Sysctl::new(
            &["net", "ipv6", "conf", primary, "accept_ra"],
            "2",
        ));
    }
    v
}

/// Writes each sysctl under `proc_sys`. A missing key (ENOENT: no IPv6 in this kernel, or an
/// old kernel without `tcp_early_demux`) is skipped, as upstream does. Returns what was written.
pub fn apply(proc_sys: &Path, sysctls: &[Sysctl]) -> Result<Vec<Sysctl>, InitError> {
    let mut done = Vec::new();
    for s in sysctls {
        let path = s.path(proc_sys);
        // No O_CREAT: a key the kernel lacks must show up as ENOENT, not as a new file.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, s.value.as_bytes()));
        match written {
            Ok(()) => {
                tracing::info!(key = %s.key(), value = s.value, "set sysctl");
                done.push(s.clone());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(key = %s.key(), "sysctl not present in this kernel; skipped");
            }
            Err(source) => {
                return Err(InitError::Sysctl {
                    key: s.key(),
                    value: s.value.to_string(),
                    source,
                });
            }
        }
    }
    Ok(done)
}

/// Finds the interface whose MAC is `mac` under a `/sys/class/net`-like directory.
pub fn interface_by_mac(sys_class_net: &Path, mac: &str) -> Result<String, InitError> {
    let want = mac.trim().to_ascii_lowercase();
    let entries = std::fs::read_dir(sys_class_net)
        .map_err(|e| InitError::Primary(format!("{}: {e}", sys_class_net.display())))?;
    let mut names: Vec<String> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(addr) = std::fs::read_to_string(entry.path().join("address")) else {
            continue;
        };
        if addr.trim().to_ascii_lowercase() == want {
            names.push(name);
        }
    }
    // Bonds and VLANs share their parent's MAC; the physical device has no `master`-less
    // ambiguity in practice on EC2, but pick deterministically.
    names.sort();
    names
        .into_iter()
        .next()
        .ok_or_else(|| InitError::Primary(format!("no interface has MAC {want}")))
}

/// Determines the primary interface: the configured name (checked to exist), else the one whose
/// MAC IMDS reports.
pub async fn primary_interface(
    cfg: &InitConfig,
    sys_class_net: &Path,
) -> Result<String, InitError> {
    if let Some(name) = &cfg.primary_interface {
        if !sys_class_net.join(name).exists() {
            return Err(InitError::Primary(format!(
                "AWS_VPC_CNI_PRIMARY_INTERFACE={name:?}: no such interface in this network namespace"
            )));
        }
        return Ok(name.clone());
    }
    // IMDS can be briefly unreachable right after boot; retry for about 10 s.
    let mut last = String::new();
    for attempt in 1..=5 {
        match imds::primary_mac(&cfg.imds_endpoint, Duration::from_secs(2)).await {
            Ok(mac) => return interface_by_mac(sys_class_net, &mac),
            Err(e) => {
                tracing::warn!(attempt, error = %e, "IMDS mac lookup failed");
                last = e.to_string();
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(InitError::Primary(last))
}

/// Copies the standard plugins from `cfg.std_plugins_dir` into the host CNI bin dir.
pub fn install_std_plugins(cfg: &InitConfig) -> Result<Vec<PathBuf>, InitError> {
    let mut installed = Vec::new();
    for name in STD_PLUGINS {
        let src = cfg.std_plugins_dir.join(name);
        let required = match name {
            "loopback" | "portmap" => true,
            "bandwidth" => cfg.enable_bandwidth_plugin,
            "tuning" => cfg.disable_pod_v6,
            _ => false,
        };
        if !src.is_file() {
            if required {
                return Err(InitError::MissingPlugin {
                    name: name.to_string(),
                    dir: cfg.std_plugins_dir.clone(),
                });
            }
            tracing::warn!(plugin = name, dir = %cfg.std_plugins_dir.display(), "optional CNI plugin not in image; skipped");
            continue;
        }
        let dest = fsutil::install_file(&src, &cfg.host_cni_bin_path, name, 0o755)?;
        tracing::info!(plugin = name, dest = %dest.display(), "installed CNI plugin");
        installed.push(dest);
    }
    Ok(installed)
}

/// Runs the whole init step against the real `/proc/sys` and `/sys/class/net`.
pub async fn run(cfg: &InitConfig) -> Result<(), InitError> {
    install_std_plugins(cfg)?;
    let primary = primary_interface(cfg, Path::new("/sys/class/net")).await?;
    tracing::info!(interface = %primary, "primary interface");
    apply(Path::new("/proc/sys"), &plan(cfg, &primary))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg(vars: &[(&str, &str)]) -> InitConfig {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        InitConfig::from_lookup(&move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
            .unwrap()
    }

    #[test]
    fn ipv4_plan() {
        let p = plan(&cfg(&[]), "ens5");
        let keys: Vec<(String, &str)> = p.iter().map(|s| (s.key(), s.value)).collect();
        assert_eq!(
            keys,
            vec![
                ("net.ipv4.conf.ens5.rp_filter".to_string(), "2"),
                ("net.ipv4.tcp_early_demux".to_string(), "1"),
            ]
        );
        let p = plan(&cfg(&[("DISABLE_TCP_EARLY_DEMUX", "true")]), "ens5");
        assert_eq!(p[1].value, "0");
    }

    #[test]
    fn ipv6_plans() {
        let p = plan(&cfg(&[("ENABLE_IPv6", "true")]), "eth0");
        let keys: Vec<String> = p
            .iter()
            .map(|s| format!("{}={}", s.key(), s.value))
            .collect();
        assert!(keys.contains(&"net.ipv6.conf.all.disable_ipv6=0".to_string()));
        assert!(keys.contains(&"net.ipv6.conf.all.forwarding=1".to_string()));
        assert!(keys.contains(&"net.ipv6.conf.eth0.accept_ra=2".to_string()));
        let p = plan(&cfg(&[("ENABLE_V6_EGRESS", "true")]), "eth0");
        let keys: Vec<String> = p
            .iter()
            .map(|s| format!("{}={}", s.key(), s.value))
            .collect();
        assert!(!keys.iter().any(|k| k.contains("disable_ipv6")));
        assert!(keys.contains(&"net.ipv6.conf.eth0.accept_ra=2".to_string()));
    }

    #[test]
    fn apply_writes_files_and_skips_missing_keys() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("net/ipv4/conf/eth0.100");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(conf.join("rp_filter"), "1").unwrap();
        // No tcp_early_demux file: must be skipped, not fail.
        let done = apply(d.path(), &plan(&cfg(&[]), "eth0.100")).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(
            std::fs::read_to_string(conf.join("rp_filter")).unwrap(),
            "2"
        );
    }

    #[test]
    fn finds_interface_by_mac() {
        let d = tempfile::tempdir().unwrap();
        for (name, mac) in [
            ("lo", "00:00:00:00:00:00"),
            ("ens5", "0a:1b:2c:3d:4e:5f"),
            ("ens6", "0a:1b:2c:3d:4e:60"),
        ] {
            std::fs::create_dir(d.path().join(name)).unwrap();
            std::fs::write(d.path().join(name).join("address"), format!("{mac}\n")).unwrap();
        }
        assert_eq!(
            interface_by_mac(d.path(), "0A:1B:2C:3D:4E:5F\n").unwrap(),
            "ens5"
        );
        let e = interface_by_mac(d.path(), "02:00:00:00:00:01").unwrap_err();
        assert!(e.to_string().contains("02:00:00:00:00:01"), "{e}");
    }

    #[test]
    fn std_plugins_required_and_optional() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let bin = d.path().join("bin");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("loopback"), "L").unwrap();
        let mut c = cfg(&[]);
        c.std_plugins_dir = src.clone();
        c.host_cni_bin_path = bin.clone();
        let e = install_std_plugins(&c).unwrap_err();
        assert!(e.to_string().contains("portmap"), "{e}");
        std::fs::write(src.join("portmap"), "P").unwrap();
        assert_eq!(install_std_plugins(&c).unwrap().len(), 2);
        assert_eq!(std::fs::read_to_string(bin.join("portmap")).unwrap(), "P");
        c.enable_bandwidth_plugin = true;
        assert!(
            install_std_plugins(&c)
                .unwrap_err()
                .to_string()
                .contains("bandwidth")
        );
    }
}
