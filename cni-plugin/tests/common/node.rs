//! A fake "node": a network namespace the plugin binary runs in (its host namespace), a
//! stand-in ipamd on a private socket, a private state dir and log file.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::TestNs;
use super::fake_ipamd::FakeIpamd;

/// Path of the plugin under test.
pub const PLUGIN: &str = env!("CARGO_BIN_EXE_aws-cni");

/// Result of one plugin run.
#[derive(Debug)]
pub struct Run {
    /// Exit code; -1 when a signal ended the process.
    pub code: i32,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout parsed as JSON (panics if it is not exactly one JSON document).
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}); exit {}, signal {:?}: {self:?}",
                self.code, self.signal
            )
        })
    }

    /// The CNI error code (panics when the run succeeded).
    pub fn err_code(&self) -> i64 {
        assert_ne!(self.code, 0, "expected failure: {self:?}");
        self.json()["code"].as_i64().unwrap()
    }

    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.code, 0, "plugin failed: {self:?}");
        self
    }
}

/// Runs `bin args` inside namespace `ns` with exactly `env` (plus PATH) and `stdin`.
pub fn run_in_ns(
    bin: &str,
    args: &[String],
    ns: &TestNs,
    env: &[(String, String)],
    stdin: &str,
) -> Run {
    run_in_ns_limited(bin, args, ns, env, stdin, None)
}

/// [`run_in_ns`] with RLIMIT_STACK set to `stack` bytes when given (the limit that sizes the
/// main thread's stack, as a runtime passes it down).
pub fn run_in_ns_limited(
    bin: &str,
    args: &[String],
    ns: &TestNs,
    env: &[(String, String)],
    stdin: &str,
    stack: Option<u64>,
) -> Run {
    let nsfile = std::fs::File::open(ns.path()).unwrap();
    let fd = nsfile.as_raw_fd();
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit(2) and
    // setns(2), both async-signal-safe; `fd` stays open in the parent (and so in the child)
    // until spawn returns because `nsfile` lives to the end of this function.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(s) = stack {
                let lim = libc::rlimit {
                    rlim_cur: s,
                    rlim_max: s,
                };
                if libc::setrlimit(libc::RLIMIT_STACK, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            nix::sched::setns(
                BorrowedFd::borrow_raw(fd),
                nix::sched::CloneFlags::CLONE_NEWNET,
            )
            .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().unwrap();
    {
        let mut si = child.stdin.take().unwrap();
        // The plugin may refuse (too large) before reading everything: ignore EPIPE.
        let _ = si.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().unwrap();
    drop(nsfile);
    Run {
        code: out.status.code().unwrap_or(-1),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// One emulated node.
pub struct Node {
    pub ns: TestNs,
    pub ipamd: FakeIpamd,
    pub dir: tempfile::TempDir,
}

impl Node {
    /// A node whose pods get addresses after `base`.
    pub fn new(base: Ipv4Addr) -> Self {
        let ns = TestNs::new("n");
        // The fake gateway answers pings: in the real world the host answers ARP-less traffic
        // to 169.254.1.1 by routing it; here the node owns the address so a ping from the pod
        // proves the whole path (pod default route, static neighbour, host /32 route back).
        ns.ip(&["addr", "add", "169.254.1.1/32", "dev", "lo"]);
        let dir = tempfile::tempdir().unwrap();
        let ipamd = FakeIpamd::start(&dir.path().join("ipamd.sock"), base);
        Self { ns, ipamd, dir }
    }

    pub fn state_dir(&self) -> String {
        self.dir.path().join("state").display().to_string()
    }

    pub fn log_file(&self) -> String {
        self.dir.path().join("plugin.log").display().to_string()
    }

    /// A netconf for this node (socket and state dir by netconf keys).
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "aws-cni",
            "type": "aws-cni",
            "vethPrefix": "eni",
            "mtu": "9001",
            "pluginLogFile": self.log_file(),
            "pluginLogLevel": "debug",
            "ipamdSocket": self.ipamd.socket.display().to_string(),
            "stateDir": self.state_dir(),
        })
    }

    /// Runs the plugin in this node.
    pub fn run(&self, env: &[(&str, &str)], stdin: &str) -> Run {
        self.run_limited(env, stdin, None)
    }

    fn run_limited(&self, env: &[(&str, &str)], stdin: &str, stack: Option<u64>) -> Run {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        run_in_ns_limited(PLUGIN, &[], &self.ns, &env, stdin, stack)
    }

    /// Runs `verb` for a pod.
    pub fn cni(&self, verb: &str, pod: &Pod, conf: &Value) -> Run {
        self.cni_limited(verb, pod, conf, None)
    }

    /// [`Self::cni`] with RLIMIT_STACK set to `stack` bytes when given.
    pub fn cni_limited(&self, verb: &str, pod: &Pod, conf: &Value, stack: Option<u64>) -> Run {
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            pod.k8s_ns, pod.name, pod.cid
        );
        self.run_limited(
            &[
                ("CNI_COMMAND", verb),
                ("CNI_CONTAINERID", &pod.cid),
                ("CNI_NETNS", &pod.netns_path()),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", &args),
                ("CNI_PATH", "/usr/lib/cni"),
            ],
            &conf.to_string(),
            stack,
        )
    }

    /// `ip rule` text of the node.
    pub fn rules(&self) -> String {
        self.ns.ip(&["rule", "show"])
    }

    /// Names of the node's links.
    pub fn link_names(&self) -> Vec<String> {
        self.ns
            .ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }

    /// The node's main-table routes as text.
    pub fn routes(&self) -> String {
        self.ns.ip(&["route", "show"])
    }
}

/// One pod: its own namespace and Kubernetes identity.
pub struct Pod {
    pub ns: Option<TestNs>,
    pub name: String,
    pub k8s_ns: String,
    pub cid: String,
    /// Kept when the namespace is deleted on purpose (DEL with a vanished netns).
    pub path_override: Option<String>,
}

impl Pod {
    pub fn new(name: &str) -> Self {
        let ns = TestNs::new("p");
        let cid = format!("cid-{}", ns.name);
        Self {
            ns: Some(ns),
            name: name.to_string(),
            k8s_ns: "default".to_string(),
            cid,
            path_override: None,
        }
    }

    pub fn netns_path(&self) -> String {
        if let Some(p) = &self.path_override {
            return p.clone();
        }
        self.ns
            .as_ref()
            .map(|n| n.path().display().to_string())
            .unwrap_or_default()
    }

    pub fn ns(&self) -> &TestNs {
        self.ns.as_ref().unwrap()
    }

    /// Deletes the pod's namespace but keeps its path for later calls.
    pub fn kill_netns(&mut self) {
        let path = self.netns_path();
        self.ns = None;
        self.path_override = Some(path);
    }

    /// Host-veth name the plugin must use for this pod.
    pub fn host_veth(&self) -> String {
        aws_cni::wiring::host_veth_name("eni", &self.k8s_ns, &self.name, &self.cid)
    }
}

/// Pod address from an ADD result.
pub fn result_ip(res: &Value) -> String {
    let a = res["ips"][0]["address"].as_str().unwrap();
    a.strip_suffix("/32").unwrap().to_string()
}

/// Everything ADD must have built, as the kernel sees it.
pub fn assert_wired(node: &Node, pod: &Pod, ip: &str, table: Option<u32>) {
    let veth = pod.host_veth();
    // Pod side.
    let addrs = pod.ns().ip_json(&["-4", "addr", "show", "eth0"]);
    let a = &addrs[0]["addr_info"][0];
    assert_eq!(a["local"], ip, "{addrs}");
    assert_eq!(a["prefixlen"], 32, "{addrs}");
    assert!(addrs[0]["flags"].to_string().contains("UP"), "{addrs}");
    assert_eq!(addrs[0]["mtu"], 9001);
    let routes = pod.ns().ip(&["route", "show"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("169.254.1.1 dev eth0 scope link"),
        "{routes}"
    );
    let host_link = node.ns.ip_json(&["link", "show", &veth]);
    let host_mac = host_link[0]["address"].as_str().unwrap().to_string();
    assert!(host_link[0]["flags"].to_string().contains("UP"));
    let neigh = pod.ns().ip_json(&["neigh", "show", "dev", "eth0"]);
    assert_eq!(neigh[0]["dst"], "169.254.1.1", "{neigh}");
    assert_eq!(neigh[0]["lladdr"], host_mac.as_str(), "{neigh}");
    assert_eq!(neigh[0]["state"][0], "PERMANENT", "{neigh}");
    // Host side.
    let r = node.routes();
    assert!(
        r.contains(&format!("{ip} dev {veth} scope link")),
        "host route missing: {r}"
    );
    let rules = node.rules();
    assert!(
        rules.contains(&format!("512:\tfrom all to {ip} lookup main")),
        "{rules}"
    );
    match table {
        Some(t) => assert!(
            rules.contains(&format!("1536:\tfrom {ip} lookup {t}")),
            "{rules}"
        ),
        None => assert!(!rules.contains(&format!("from {ip} lookup")), "{rules}"),
    }
    // The data path works: pod → gateway (owned by the node) and back.
    let out = pod
        .ns()
        .exec(&["ping", "-c", "1", "-W", "2", "169.254.1.1"]);
    assert!(
        out.status.success(),
        "ping from pod failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// No host route or rule of the attachment is left on the node.
pub fn assert_host_clean(node: &Node, ip: &str) {
    let rules = node.rules();
    assert!(!rules.contains(&format!("{ip} ")), "rules left: {rules}");
    let r = node.routes();
    assert!(!r.contains(&format!("{ip} ")), "route left: {r}");
}

/// The host veth is gone. Namespace destruction removes veth pairs asynchronously (the
/// kernel's netns cleanup work), so this waits for it, up to 10 s.
pub fn assert_veth_gone(node: &Node, veth: &str) {
    for _ in 0..200 {
        if !node.link_names().iter().any(|l| l == veth) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("veth {veth} still on the node");
}

/// Nothing of the attachment is left on the node (routes, rules, veth).
pub fn assert_clean(node: &Node, ip: &str, veth: &str) {
    assert_host_clean(node, ip);
    assert_veth_gone(node, veth);
}
