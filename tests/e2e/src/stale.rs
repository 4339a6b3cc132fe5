//! Sweeping what crashed earlier test processes left behind: `e2e*` namespaces whose owner
//! pid (encoded in the prefix) is gone, and processes carrying [`crate::OWNER_ENV`] with a dead
//! owner. Only things positively identified as ours are touched.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::NS_PREFIX;
use crate::net::NETNS_DIR;

/// True when `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// Owner pid of a namespace name `e2e<tag><hex pid>[-…]`.
pub fn owner_of(name: &str) -> Option<(String, i32)> {
    let rest = name.strip_prefix(NS_PREFIX)?;
    let prefix_len = NS_PREFIX.len() + rest.find('-').unwrap_or(rest.len());
    let prefix = name.get(..prefix_len)?;
    let hex = prefix.get(NS_PREFIX.len() + 1..)?;
    let pid = i32::from_str_radix(hex, 16).ok()?;
    Some((prefix.to_owned(), pid))
}

/// Removes leftovers of dead test processes. `vpcsim` (if given) runs `vpcsim down` for
/// their prefixes first (it also stops their serve processes).
pub fn sweep(vpcsim: Option<&Path>) {
    let me = std::process::id();
    // Processes first: a live ipamd would keep re-creating state in a namespace.
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.filter_map(Result::ok) {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let marker = format!("{}=", crate::OWNER_ENV);
            let owner = environ
                .split(|b| *b == 0)
                .filter_map(|kv| std::str::from_utf8(kv).ok())
                .find_map(|kv| kv.strip_prefix(&marker))
                .and_then(|v| v.parse::<i32>().ok());
            if let Some(owner) = owner
                && owner != me as i32
                && !pid_alive(owner)
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    let mut dead = BTreeSet::new();
    let mut names = Vec::new();
    for e in dir.filter_map(Result::ok) {
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some((prefix, owner)) = owner_of(&name)
            && owner != me as i32
            && !pid_alive(owner)
        {
            dead.insert(prefix);
            names.push(name);
        }
    }
    if let Some(vpcsim) = vpcsim {
        for p in &dead {
            let dir = std::env::temp_dir().join(format!("e2e-stale-{p}"));
            let _ = Command::new(vpcsim)
                .args(["down", "--prefix", p, "--state-dir"])
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    for n in names {
        if Path::new(NETNS_DIR).join(&n).exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", &n])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn owner_parsing() {
        assert_eq!(
            owner_of("e2eg1a2b-node1"),
            Some(("e2eg1a2b".into(), 0x1a2b))
        );
        assert_eq!(owner_of("e2eh3f"), Some(("e2eh3f".into(), 0x3f)));
        assert_eq!(owner_of("e2eh-x"), None);
        assert_eq!(owner_of("vsft1-node1"), None);
    }
}
