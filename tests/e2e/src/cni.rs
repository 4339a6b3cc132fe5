//! Invoking the `aws-cni` plugin like a container runtime does (cni-spec.md §2-3): inside the
//! node's network namespace, with the `CNI_*` environment and the netconf on stdin; pods are
//! network namespaces created by the test.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
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
    /// Kill a plugin run after this long ([`PLUGIN_TIMEOUT`] unless a test changes it).
    pub timeout: Duration,
}

/// How long the harness lets one plugin run go on before it kills it (SIGKILL) and reports
/// the run as hung. The plugin's own worst case is about 40 s (connect 2 s, AddNetwork 30 s,
/// the rollback's DelNetwork 5 s, plus netlink); this is a failure bound, not a timing check.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Lines of stderr and of the plugin log quoted in a failure message.
const TAIL_LINES: usize = 20;

/// What one plugin invocation returned, and how the process ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Exit status success.
    pub ok: bool,
    /// stdout (the result or the error JSON).
    pub stdout: String,
    /// stderr.
    pub stderr: String,
    /// Exit code or terminating signal.
    pub status: ExitStatus,
    /// From spawn to exit.
    pub elapsed: Duration,
    /// The harness killed the process after [`Cni::timeout`] (this long), if it did.
    pub timed_out: Option<Duration>,
    /// Where the process was when the harness killed it (`/proc` state of each thread).
    pub hung_at: Option<String>,
    /// Writing the netconf to stdin failed (the process was gone before reading it).
    pub stdin_error: Option<String>,
    /// The invocation, for messages: verb, pod, container ID, node namespace.
    pub what: String,
    /// Plugin log lines of this container (the node's log is shared), read after the exit.
    pub log_tail: String,
}

impl Outcome {
    /// How the process ended, in words: `exit code 1`, `killed by signal 9 (SIGKILL)`, ...
    pub fn ended(&self) -> String {
        let mut s = match (self.status.code(), self.status.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(n)) => {
                let name = Signal::try_from(n).map_or_else(|_| "?".to_string(), |s| s.to_string());
                let core = if self.status.core_dumped() {
                    ", core dumped"
                } else {
                    ""
                };
                format!("killed by signal {n} ({name}{core})")
            }
            (None, None) => format!("ended with wait status {:?}", self.status),
        };
        if let Some(t) = self.timed_out {
            s.push_str(&format!(" — the harness killed it: no exit within {t:?}"));
        }
        s
    }

    /// A failure message with everything needed to tell what happened: how the process ended
    /// and when, stdout, the tail of stderr, a hint when stderr shows that `ip netns exec`
    /// failed before the plugin ran, and the plugin log lines of this container.
    pub fn diagnose(&self) -> String {
        let mut m = format!(
            "{} {} after {:.3} s; stdout: {}",
            self.what,
            self.ended(),
            self.elapsed.as_secs_f64(),
            if self.stdout.trim().is_empty() {
                "EMPTY (no result and no CNI error)".to_string()
            } else {
                self.stdout.trim().to_string()
            }
        );
        if let Some(e) = &self.stdin_error {
            m.push_str(&format!("\nwriting the netconf to stdin failed: {e}"));
        }
        if let Some(h) = &self.hung_at {
            m.push_str(&format!("\nthreads when killed: {h}"));
        }
        if let Some(hint) = wrapper_failure(&self.stderr) {
            m.push_str(&format!("\nNOTE: {hint}"));
        }
        m.push_str(&format!(
            "\n--- stderr (last {TAIL_LINES} lines) ---\n{}",
            last_lines(&self.stderr, TAIL_LINES)
        ));
        m.push_str(&format!("\n{}", self.log_tail));
        m
    }
}

/// A plugin run that failed, as an error: [`Outcome::diagnose`] is its message, and callers
/// can downcast an `anyhow::Error` to it to look at the outcome (say, whether stdout was empty).
#[derive(Debug)]
pub struct PluginFailure {
    /// Why the harness calls it a failure (`ADD failed`, `ADD printed no valid result`, ...).
    pub why: String,
    /// The run.
    pub outcome: Outcome,
}

impl PluginFailure {
    /// True when the process printed nothing on stdout: neither a result nor a CNI error
    /// document, which a CNI plugin must always print (except for DEL/GC/STATUS success).
    pub fn silent(&self) -> bool {
        self.outcome.stdout.trim().is_empty()
    }
}

impl std::fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.why, self.outcome.diagnose())
    }
}

impl std::error::Error for PluginFailure {}

/// Last `n` lines of `s`, or `(empty)`.
fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    if lines.is_empty() {
        return "(empty)".into();
    }
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The plugin runs as `ip netns exec <node> aws-cni`: `ip` enters the namespace, remounts
/// `/sys` in a private mount namespace and execs the plugin in place (same pid). When any of
/// that fails, `ip` prints to stderr and exits non-zero (1 or 255) without the plugin ever
/// running — for example while `cargo build` replaces the binary (it removes the old file,
/// then links the new one). Returns a hint naming that when stderr shows it.
fn wrapper_failure(stderr: &str) -> Option<String> {
    const IP_ERRORS: [&str; 6] = [
        "exec of",
        "Cannot open network namespace",
        "setting the network namespace",
        "mount of /sys failed",
        "unshare failed",
        "\"mount --make-rslave /\" failed",
    ];
    let line = stderr
        .lines()
        .find(|l| IP_ERRORS.iter().any(|e| l.contains(e)))?;
    Some(format!(
        "`ip netns exec` failed before the plugin ran: {line:?}"
    ))
}

/// Plugin log lines about `container_id` (the log of a node is shared by all its pods; the
/// plugin prefixes every line with `cid=<id>`), the last `n`.
fn plugin_log_tail(log: &Path, container_id: &str, n: usize) -> String {
    let needle = format!("cid={container_id} ");
    match std::fs::read_to_string(log) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().filter(|l| l.contains(&needle)).collect();
            let start = lines.len().saturating_sub(n);
            format!(
                "--- plugin log {} for {container_id} (last {} of {} lines) ---\n{}",
                log.display(),
                lines.len() - start,
                lines.len(),
                if lines.is_empty() {
                    "(none: the plugin never got as far as parsing its config)".to_string()
                } else {
                    lines[start..].join("\n")
                }
            )
        }
        Err(e) => format!("(plugin log {}: {e})", log.display()),
    }
}

/// Every thread's state and wait channel, from `/proc` (where a hung plugin is stuck).
fn thread_states(pid: u32) -> String {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(gone)".into();
    };
    let mut out = Vec::new();
    for t in dir.filter_map(Result::ok) {
        let p = t.path();
        let read = |f: &str| {
            std::fs::read_to_string(p.join(f))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let state = read("status")
            .lines()
            .find_map(|l| l.strip_prefix("State:"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        out.push(format!(
            "{} {:?} state={state} wchan={}",
            t.file_name().to_string_lossy(),
            read("comm"),
            read("wchan")
        ));
    }
    out.join("; ")
}

/// Reads a pipe to the end on a thread of its own (so neither pipe can fill and block the
/// plugin while the other is read).
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Copies the plugin binary into `dir` (temporary name, then rename) and returns the copy.
///
/// The tests must not exec `target/<profile>/aws-cni` itself: a `cargo build` running at the
/// same time (the target directory is shared) replaces it by removing the old file and then
/// linking the new one, and an ADD that execs in between fails before the plugin runs. A
/// runtime also runs an installed copy (/opt/cni/bin), never the build output. Retries a
/// moment when the file is missing (the replacement in progress).
fn install_copy(bin: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = bin
        .file_name()
        .with_context(|| format!("{} has no file name", bin.display()))?;
    let dst = dir.join(name);
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut tries = 0;
    loop {
        match std::fs::copy(bin, &tmp) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot copy {} to {}", bin.display(), tmp.display())
                });
            }
        }
    }
    std::fs::rename(&tmp, &dst)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dst.display()))?;
    Ok(dst)
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
    /// The binary is run from a private copy in that directory (see `install_copy`); if the
    /// copy cannot be made, from `aws_cni` itself, with a warning.
    pub fn for_node(aws_cni: &Path, ipamd: &Ipamd) -> Self {
        let bin = match install_copy(aws_cni, &ipamd.dir.join("cni-bin")) {
            Ok(b) => b,
            Err(e) => {
                eprintln!(
                    "e2e: running {} in place: {e:#} (a concurrent build may break plugin runs)",
                    aws_cni.display()
                );
                aws_cni.to_path_buf()
            }
        };
        Self {
            bin_dir: bin.parent().map(Path::to_path_buf).unwrap_or_default(),
            bin,
            node_ns: ipamd.node_ns.clone(),
            socket: ipamd.socket(),
            state_dir: ipamd.dir.join("cni-state"),
            log_file: ipamd.dir.join("plugin.log"),
            timeout: PLUGIN_TIMEOUT,
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

    /// One invocation with `CNI_COMMAND=command` for `pod`. The process is killed after
    /// [`PLUGIN_TIMEOUT`]; the outcome says how it ended either way.
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
        let start = Instant::now();
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
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let conf = self.netconf(prev).to_string();
        // The netconf is far below the pipe buffer, so this never blocks. A process that dies
        // before reading it makes this fail with EPIPE: recorded, not fatal, so the outcome
        // still says how the process ended.
        let stdin_error = child
            .stdin
            .take()
            .and_then(|mut s| s.write_all(conf.as_bytes()).err())
            .map(|e| e.to_string());

        // Wait for the exit without reaping (WNOWAIT), so that on a timeout the pid still
        // belongs to the plugin when it is killed.
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = loop {
                match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other.map(|_| ()),
                }
            };
            let _ = tx.send(r);
        });
        let (timed_out, hung_at) = match rx.recv_timeout(self.timeout) {
            Ok(_) => (None, None),
            Err(_) => {
                let at = thread_states(child.id());
                let _ = child.kill();
                (Some(self.timeout), Some(at))
            }
        };
        let status = child.wait().context("cannot reap the plugin")?;
        let elapsed = start.elapsed();
        let stdout = stdout
            .join()
            .map_err(|_| anyhow::anyhow!("stdout reader panicked"))?;
        let stderr = stderr
            .join()
            .map_err(|_| anyhow::anyhow!("stderr reader panicked"))?;
        Ok(Outcome {
            ok: status.success() && timed_out.is_none(),
            stdout,
            stderr,
            status,
            elapsed,
            timed_out,
            hung_at,
            stdin_error,
            what: format!(
                "{command} of pod {} (container {}) in node namespace {}:",
                pod.name, pod.container_id, self.node_ns
            ),
            log_tail: plugin_log_tail(&self.log_file, &pod.container_id, TAIL_LINES),
        })
    }

    /// ADD; records the address and the result in `pod`.
    pub fn add(&self, pod: &mut Pod) -> anyhow::Result<Ipv4Addr> {
        let o = self.invoke("ADD", pod, None)?;
        if !o.ok {
            return Err(PluginFailure {
                why: "ADD failed".into(),
                outcome: o,
            }
            .into());
        }
        let v: Value = match serde_json::from_str(&o.stdout) {
            Ok(v) => v,
            Err(e) => {
                return Err(PluginFailure {
                    why: format!("ADD printed no valid result ({e})"),
                    outcome: o,
                }
                .into());
            }
        };
        let Some(ip) = v["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
        else {
            return Err(PluginFailure {
                why: "ADD result has no IPv4 address".into(),
                outcome: o,
            }
            .into());
        };
        pod.ip = Some(ip);
        pod.result = Some(v);
        Ok(ip)
    }

    /// DEL with the cached result as `prevResult` (as runtimes do).
    pub fn del(&self, pod: &Pod) -> anyhow::Result<()> {
        let o = self.invoke("DEL", pod, pod.result.as_ref())?;
        if !o.ok {
            return Err(PluginFailure {
                why: "DEL failed".into(),
                outcome: o,
            }
            .into());
        }
        Ok(())
    }

    /// CHECK with the cached result.
    pub fn check(&self, pod: &Pod) -> anyhow::Result<Outcome> {
        self.invoke("CHECK", pod, pod.result.as_ref())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn outcome(raw_status: i32, stdout: &str, stderr: &str) -> Outcome {
        Outcome {
            ok: false,
            stdout: stdout.into(),
            stderr: stderr.into(),
            status: ExitStatus::from_raw(raw_status),
            elapsed: Duration::from_millis(1500),
            timed_out: None,
            hung_at: None,
            stdin_error: None,
            what: "ADD of pod p (container c) in node namespace n:".into(),
            log_tail: "(log)".into(),
        }
    }

    #[test]
    fn diagnosis_names_signal_code_and_wrapper_failures() {
        // Wait statuses as waitpid(2) returns them.
        let killed = outcome(nix::libc::SIGKILL, "", "");
        assert_eq!(killed.ended(), "killed by signal 9 (SIGKILL)");
        let d = killed.diagnose();
        assert!(d.contains("after 1.500 s"), "{d}");
        assert!(d.contains("EMPTY (no result and no CNI error)"), "{d}");
        let aborted = outcome(nix::libc::SIGABRT | 0x80, "", "");
        assert_eq!(aborted.ended(), "killed by signal 6 (SIGABRT, core dumped)");
        assert_eq!(outcome(1 << 8, "{}", "").ended(), "exit code 1");
        let exec = outcome(
            1 << 8,
            "",
            "exec of \"/x/aws-cni\" failed: No such file or directory\n",
        );
        assert!(
            exec.diagnose()
                .contains("`ip netns exec` failed before the plugin ran"),
            "{}",
            exec.diagnose()
        );
        assert!(!killed.diagnose().contains("ip netns exec"));
    }

    /// A plugin that never exits is killed at the timeout, and the outcome says so, with
    /// where it was stuck. (Real process, real namespaces; root only.)
    #[test]
    fn a_hung_plugin_is_killed_and_reported() {
        crate::require_root().unwrap();
        crate::stale::sweep(None);
        let prefix = crate::test_prefix('y').unwrap();
        let node = NetnsGuard::create(&format!("{prefix}-node")).unwrap();
        let pod = Pod::new(&prefix, "hung", "hung").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("aws-cni");
        // `exec`, so the process the harness kills is the one holding the pipes.
        std::fs::write(&bin, "#!/bin/sh\necho reading stdin >&2\nexec sleep 600\n").unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let cni = Cni {
            bin: bin.clone(),
            bin_dir: dir.path().to_path_buf(),
            node_ns: node.name.clone(),
            socket: dir.path().join("ipamd.sock"),
            state_dir: dir.path().join("state"),
            log_file: dir.path().join("plugin.log"),
            timeout: Duration::from_secs(2),
        };
        let o = cni.invoke("ADD", &pod, None).unwrap();
        assert!(!o.ok);
        assert_eq!(o.timed_out, Some(Duration::from_secs(2)));
        assert_eq!(o.status.signal(), Some(nix::libc::SIGKILL), "{o:?}");
        let d = o.diagnose();
        assert!(d.contains("killed by signal 9 (SIGKILL)"), "{d}");
        assert!(d.contains("the harness killed it"), "{d}");
        assert!(d.contains("reading stdin"), "{d}");
        let at = o.hung_at.unwrap_or_default();
        assert!(at.contains("\"sleep\""), "{at}");
        let err = cni.add(&mut Pod::new(&prefix, "hung2", "hung2").unwrap());
        let f = err.unwrap_err();
        let f = f.downcast_ref::<PluginFailure>().unwrap();
        assert!(f.silent(), "{f}");
    }
}
