//! Invoking the `aws-cni` plugin like a container runtime does (cni-spec.md §2-3): inside the
//! node's network namespace, with the `CNI_*` environment and the netconf on stdin; pods are
//! network namespaces created by the test.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::ipamd::Ipamd;
use crate::net::NetnsGuard;

/// The plugin as seen from one node.
#[derive(Debug, Clone)]
pub struct Cni {
    bin: PathBuf,
    bin_dir: PathBuf,
    /// The node's network namespace.
    pub node_ns: String,
    /// ipamd socket of that node.
    pub socket: PathBuf,
    /// Plugin state directory (DEL without ipamd).
    pub state_dir: PathBuf,
    /// Plugin log file.
    pub log_file: PathBuf,
}

/// What one plugin invocation returned.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Exit status success.
    pub ok: bool,
    /// stdout (the result or the error JSON).
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

/// A pod: a network namespace plus the identity the runtime gives the plugin.
#[derive(Debug)]
pub struct Pod {
    /// Its network namespace (deleted on drop).
    pub ns: NetnsGuard,
    /// Kubernetes pod name (namespace is `default`).
    pub name: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// Address from the ADD result.
    pub ip: Option<Ipv4Addr>,
    /// The ADD result (the runtime's cache; sent back as `prevResult` on DEL/CHECK).
    pub result: Option<Value>,
}

impl Pod {
    /// Creates the pod's namespace `<prefix>-<tag>` for pod `name`.
    pub fn new(prefix: &str, tag: &str, name: &str) -> anyhow::Result<Self> {
        let ns = NetnsGuard::create(&format!("{prefix}-{tag}"))?;
        Ok(Self {
            ns,
            name: name.to_owned(),
            container_id: format!("{prefix}{tag}").replace('-', ""),
            ip: None,
            result: None,
        })
    }

    /// The address, or an error naming the pod.
    pub fn ip(&self) -> anyhow::Result<Ipv4Addr> {
        self.ip
            .with_context(|| format!("pod {} has no address", self.name))
    }
}

impl Cni {
    /// The plugin for the node `ipamd` runs on; plugin state and log go to ipamd's directory.
    pub fn for_node(aws_cni: &Path, ipamd: &Ipamd) -> Self {
        Self {
            bin: aws_cni.to_path_buf(),
            bin_dir: aws_cni.parent().map(Path::to_path_buf).unwrap_or_default(),
            node_ns: ipamd.node_ns.clone(),
            socket: ipamd.socket(),
            state_dir: ipamd.dir.join("cni-state"),
            log_file: ipamd.dir.join("plugin.log"),
        }
    }

    /// The netconf the runtime passes (what the installer's conflist holds, plus our socket
    /// and state-dir keys), with `prevResult` when given.
    pub fn netconf(&self, prev: Option<&Value>) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0",
            "name": "aws-cni",
            "type": "aws-cni",
            "vethPrefix": "eni",
            "mtu": "9001",
            "pluginLogFile": self.log_file.display().to_string(),
            "pluginLogLevel": "DEBUG",
            "ipamdSocket": self.socket.display().to_string(),
            "stateDir": self.state_dir.display().to_string(),
        });
        if let (Some(p), Some(o)) = (prev, c.as_object_mut()) {
            o.insert("prevResult".into(), p.clone());
        }
        c
    }

    /// One invocation with `CNI_COMMAND=command` for `pod`.
    pub fn invoke(
        &self,
        command: &str,
        pod: &Pod,
        prev: Option<&Value>,
    ) -> anyhow::Result<Outcome> {
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            pod.name, pod.container_id
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node_ns])
            .arg(&self.bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env(crate::OWNER_ENV, std::process::id().to_string())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", pod.ns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", args)
            .env("CNI_PATH", &self.bin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        let conf = self.netconf(prev).to_string();
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(conf.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        Ok(Outcome {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// ADD; records the address and the result in `pod`.
    pub fn add(&self, pod: &mut Pod) -> anyhow::Result<Ipv4Addr> {
        let o = self.invoke("ADD", pod, None)?;
        if !o.ok {
            bail!(
                "ADD of pod {} on {} failed: {} {}",
                pod.name,
                self.node_ns,
                o.stdout.trim(),
                o.stderr.trim()
            );
        }
        let v: Value = serde_json::from_str(&o.stdout)
            .with_context(|| format!("ADD printed a bad result: {}", o.stdout))?;
        let ip = v["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("ADD result has no IPv4 address: {v}"))?;
        pod.ip = Some(ip);
        pod.result = Some(v);
        Ok(ip)
    }

    /// DEL with the cached result as `prevResult` (as runtimes do).
    pub fn del(&self, pod: &Pod) -> anyhow::Result<()> {
        let o = self.invoke("DEL", pod, pod.result.as_ref())?;
        if !o.ok {
            bail!(
                "DEL of pod {} on {} failed: {} {}",
                pod.name,
                self.node_ns,
                o.stdout.trim(),
                o.stderr.trim()
            );
        }
        Ok(())
    }

    /// CHECK with the cached result.
    pub fn check(&self, pod: &Pod) -> anyhow::Result<Outcome> {
        self.invoke("CHECK", pod, pod.result.as_ref())
    }
}
