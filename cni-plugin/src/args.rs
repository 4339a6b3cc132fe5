//! The CNI environment (`CNI_*` variables and `CNI_ARGS`), validated per verb
//! (cni-spec.md §2). Empty variables count as unset: libcni always exports all six.

use crate::error::PluginError;

/// A CNI verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// ADD
    Add,
    /// DEL
    Del,
    /// CHECK
    Check,
    /// STATUS
    Status,
    /// GC
    Gc,
    /// VERSION
    Version,
}

impl Command {
    fn parse(s: &str) -> Result<Self, PluginError> {
        Ok(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            "VERSION" => Self::Version,
            other => {
                return Err(PluginError::InvalidEnv(format!(
                    "unknown CNI_COMMAND: {other}"
                )));
            }
        })
    }

    /// The verb name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Status => "STATUS",
            Self::Gc => "GC",
            Self::Version => "VERSION",
        }
    }
}

/// Kubernetes pod identity from `CNI_ARGS`. All empty for runtimes that send none (podman).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    /// `K8S_POD_NAME`
    pub name: String,
    /// `K8S_POD_NAMESPACE`
    pub namespace: String,
    /// `K8S_POD_INFRA_CONTAINER_ID`
    pub infra_container_id: String,
    /// `K8S_POD_UID` (sent to ipamd on DEL only, like upstream)
    pub uid: String,
}

/// The validated CNI environment of one invocation.
#[derive(Debug, Clone)]
pub struct CniEnv {
    /// The verb.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for STATUS/GC/VERSION).
    pub container_id: String,
    /// `CNI_NETNS` (may be empty on DEL).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// Parsed `CNI_ARGS`.
    pub pod: PodArgs,
}

/// Reads the verb alone: `Ok(None)` when `CNI_COMMAND` is unset or empty (the "about" mode).
pub fn command(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Command>, PluginError> {
    match get("CNI_COMMAND").filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(c) => Command::parse(&c).map(Some),
    }
}

/// Reads and validates the environment for `command`.
pub fn from_env(
    command: Command,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<CniEnv, PluginError> {
    let var = |k: &str| get(k).filter(|s| !s.is_empty());
    let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
    let mut missing = Vec::new();
    if needs_attachment {
        if var("CNI_CONTAINERID").is_none() {
            missing.push("CNI_CONTAINERID");
        }
        if matches!(command, Command::Add | Command::Check) && var("CNI_NETNS").is_none() {
            missing.push("CNI_NETNS");
        }
        if var("CNI_IFNAME").is_none() {
            missing.push("CNI_IFNAME");
        }
    }
    if !missing.is_empty() {
        return Err(PluginError::InvalidEnv(format!(
            "required env variables [{}] missing",
            missing.join(",")
        )));
    }
    let container_id = var("CNI_CONTAINERID").unwrap_or_default();
    let ifname = var("CNI_IFNAME").unwrap_or_default();
    if needs_attachment {
        validate_container_id(&container_id)?;
        validate_ifname(&ifname)?;
    }
    let pod = match var("CNI_ARGS") {
        Some(a) if needs_attachment => parse_cni_args(&a)?,
        _ => PodArgs::default(),
    };
    Ok(CniEnv {
        command,
        container_id,
        netns: var("CNI_NETNS").unwrap_or_default(),
        ifname,
        pod,
    })
}

/// Container IDs (and network names) must match `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn valid_id(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn validate_container_id(id: &str) -> Result<(), PluginError> {
    if !valid_id(id) {
        return Err(PluginError::InvalidEnv(format!(
            "invalid characters in CNI_CONTAINERID {id:?}: must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"
        )));
    }
    Ok(())
}

/// Interface names: 1..=15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), PluginError> {
    let bad = |why: &str| {
        Err(PluginError::InvalidEnv(format!(
            "invalid CNI_IFNAME {name:?}: {why}"
        )))
    };
    if name.len() > crate::netlink::IFNAME_MAX {
        return bad(&format!(
            "{} bytes, at most {} allowed",
            name.len(),
            crate::netlink::IFNAME_MAX
        ));
    }
    if name == "." || name == ".." {
        return bad("must not be '.' or '..'");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return bad("must not contain '/', ':' or whitespace");
    }
    Ok(())
}

/// Parses `CNI_ARGS` (`K=V;K=V`). Unknown keys are an error unless `IgnoreUnknown` is true.
pub fn parse_cni_args(s: &str) -> Result<PodArgs, PluginError> {
    let mut pod = PodArgs::default();
    let mut unknown = Vec::new();
    let mut ignore_unknown = false;
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(PluginError::InvalidEnv(format!(
                "invalid CNI_ARGS pair {pair:?}: expected KEY=VALUE"
            )));
        };
        match k {
            "K8S_POD_NAME" => pod.name = v.to_string(),
            "K8S_POD_NAMESPACE" => pod.namespace = v.to_string(),
            "K8S_POD_INFRA_CONTAINER_ID" => pod.infra_container_id = v.to_string(),
            "K8S_POD_UID" => pod.uid = v.to_string(),
            "IgnoreUnknown" => {
                ignore_unknown = matches!(v.to_ascii_lowercase().as_str(), "1" | "true");
            }
            other => unknown.push(other.to_string()),
        }
    }
    if !unknown.is_empty() && !ignore_unknown {
        return Err(PluginError::InvalidEnv(format!(
            "unknown CNI_ARGS keys [{}] (set IgnoreUnknown=1 to allow them)",
            unknown.join(",")
        )));
    }
    Ok(pod)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn missing_vars_are_named() {
        let g = env(&[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "")]);
        let e = from_env(Command::Add, &g).unwrap_err();
        assert_eq!(e.cni_code(), 4);
        assert_eq!(
            e.to_string(),
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME] missing"
        );
        // DEL does not need CNI_NETNS.
        let g = env(&[("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]);
        assert!(from_env(Command::Del, &g).is_ok());
        assert!(from_env(Command::Status, &env(&[])).is_ok());
    }

    #[test]
    fn ids_and_ifnames() {
        assert!(valid_id("abc-1.2_3"));
        assert!(!valid_id("-abc"));
        assert!(!valid_id("a b"));
        assert!(!valid_id(""));
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("0123456789abcdef").is_err());
        assert!(validate_ifname("..").is_err());
        assert!(validate_ifname("a:b").is_err());
        assert!(
            command(&env(&[("CNI_COMMAND", "FOO")]))
                .unwrap_err()
                .to_string()
                .contains("unknown CNI_COMMAND: FOO")
        );
        assert_eq!(command(&env(&[])).unwrap(), None);
    }

    #[test]
    fn cni_args() {
        let p = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u;X=y",
        )
        .unwrap();
        assert_eq!(p.name, "web-1");
        assert_eq!(p.namespace, "default");
        assert_eq!(p.uid, "u");
        let e = parse_cni_args("K8S_POD_NAME=a;FOO=bar").unwrap_err();
        assert!(e.to_string().contains("FOO"), "{e}");
        assert!(parse_cni_args("novalue").is_err());
    }
}
