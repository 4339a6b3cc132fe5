//! Test support: named network namespaces with the `cnit` prefix, cleaned up by RAII and at
//! start (stale ones from crashed runs), plus `ip -j` helpers.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

pub mod fake_ipamd;
pub mod node;

use aws_cni::netlink::Netlink;
use aws_cni::netns::NetNs;

/// All namespaces made by these tests start with this.
pub const PREFIX: &str = "cnit";

static CLEAN: Once = Once::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when running as root (the tests need CAP_SYS_ADMIN and CAP_NET_ADMIN).
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Skips the calling test (returns early) when not root, loudly.
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!("SKIPPED: this test needs root (network namespaces)");
            return;
        }
    };
}

/// Deletes `cnit<pid>-*` namespaces whose creating process is gone.
fn clean_stale() {
    CLEAN.call_once(|| {
        let Ok(rd) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
            if pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists()) {
                continue;
            }
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    });
}

/// A named network namespace `cnit<pid>-<tag><n>`, deleted on drop.
pub struct TestNs {
    pub name: String,
}

impl TestNs {
    pub fn new(tag: &str) -> Self {
        clean_stale();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}{}-{tag}{n}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name}");
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    pub fn open(&self) -> NetNs {
        NetNs::open(self.path()).unwrap()
    }

    /// A netlink socket inside this namespace.
    pub fn nl(&self) -> Netlink {
        self.open().run_in(Netlink::open).unwrap().unwrap()
    }

    /// Runs `ip <args>` inside the namespace; panics on failure; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip -n {} {:?}: {}",
            self.name,
            args,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// `ip -j <args>` parsed as JSON.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["-j"];
        a.extend_from_slice(args);
        let s = self.ip(&a);
        if s.trim().is_empty() {
            return serde_json::Value::Array(vec![]);
        }
        serde_json::from_str(&s).unwrap()
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, cmd: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .unwrap()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
