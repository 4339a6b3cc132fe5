//! Rendering of `10-aws.conflist` from the shipped template (`conf/10-aws.conflist`).
//!
//! The template is upstream's shape with `__NAME__` placeholders in string values. It is parsed
//! as JSON and placeholders are substituted as whole string values (not by text replacement),
//! so a value containing quotes or backslashes — a log path, say — cannot break the JSON.
//! Optional plugins are appended after `portmap`, as upstream's entrypoint does.

use serde_json::{Map, Value, json};

use crate::config::EntrypointConfig;

/// File name in the host CNI config dir. The `10-` prefix sorts it before the distro's
/// `87-podman`/`99-loopback` files, so runtimes that pick the first conflist pick ours.
pub const CONFLIST_NAME: &str = "10-aws.conflist";

/// The template, embedded at build time so the binary and `conf/` cannot drift apart.
pub const TEMPLATE: &str = include_str!("../../../conf/10-aws.conflist");

/// Rendering failures (only possible with a broken template, which the unit tests rule out).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The template is not JSON.
    #[error("conflist template is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The template has a placeholder this renderer does not know.
    #[error("conflist template has an unknown placeholder {0:?}")]
    UnknownPlaceholder(String),
    /// The template lacks the `plugins` array.
    #[error("conflist template has no \"plugins\" array")]
    NoPlugins,
}

/// Renders the conflist for `cfg` and returns it as a JSON value.
pub fn render_value(cfg: &EntrypointConfig) -> Result<Value, RenderError> {
    let mut doc: Value = serde_json::from_str(TEMPLATE)?;
    substitute(&mut doc, cfg)?;
    let plugins = doc
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or(RenderError::NoPlugins)?;
    if cfg.enable_bandwidth_plugin {
        plugins.push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    }
    if cfg.disable_pod_v6 {
        // Pods get no IPv6 at all, including on lo: otherwise apps that prefer AAAA answers try
        // IPv6 first and time out on an IPv4-only VPC.
        let mut sysctl = Map::new();
        for dev in ["all", "default", "lo"] {
            sysctl.insert(
                format!("net.ipv6.conf.{dev}.disable_ipv6"),
                Value::String("1".into()),
            );
        }
        plugins.push(json!({"type": "tuning", "sysctl": sysctl}));
    }
    Ok(doc)
}

/// Renders the conflist for `cfg` as pretty-printed JSON with a trailing newline.
pub fn render(cfg: &EntrypointConfig) -> Result<String, RenderError> {
    let mut s = serde_json::to_string_pretty(&render_value(cfg)?)?;
    s.push('\n');
    Ok(s)
}

fn placeholder_value(name: &str, cfg: &EntrypointConfig) -> Option<String> {
    Some(match name {
        "__VETHPREFIX__" => cfg.veth_prefix.clone(),
        // A string, as upstream writes it; the plugin parses it back.
        "__MTU__" => cfg.pod_mtu.to_string(),
        "__PODSGENFORCINGMODE__" => cfg.pod_sg_enforcing_mode.as_str().to_string(),
        "__PLUGINLOGFILE__" => cfg.plugin_log_file.clone(),
        "__PLUGINLOGLEVEL__" => cfg.plugin_log_level.clone(),
        "__RANDOMIZESNAT__" => cfg.randomize_snat.as_str().to_string(),
        _ => return None,
    })
}

fn substitute(v: &mut Value, cfg: &EntrypointConfig) -> Result<(), RenderError> {
    match v {
        Value::String(s) if s.len() > 4 && s.starts_with("__") && s.ends_with("__") => {
            *s = placeholder_value(s, cfg)
                .ok_or_else(|| RenderError::UnknownPlaceholder(s.clone()))?;
        }
        Value::Array(items) => {
            for item in items {
                substitute(item, cfg)?;
            }
        }
        Value::Object(map) => {
            for item in map.values_mut() {
                substitute(item, cfg)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> EntrypointConfig {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EntrypointConfig::from_lookup(&move |k| map.get(k).cloned()).unwrap()
    }

    fn parse(c: &EntrypointConfig) -> Value {
        serde_json::from_str(&render(c).unwrap()).unwrap()
    }

    #[test]
    fn default_shape_field_by_field() {
        let v = parse(&cfg(&[]));
        let top = v.as_object().unwrap();
        assert_eq!(top["name"], "aws-cni");
        assert_eq!(top["cniVersion"], "0.4.0");
        assert_eq!(top["disableCheck"], true);
        let plugins = top["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 2);

        let aws = plugins[0].as_object().unwrap();
        assert_eq!(aws["name"], "aws-cni");
        assert_eq!(aws["type"], "aws-cni");
        assert_eq!(aws["vethPrefix"], "eni");
        assert_eq!(aws["mtu"], Value::String("9001".into()));
        assert_eq!(aws["podSGEnforcingMode"], "strict");
        assert_eq!(aws["pluginLogFile"], "/var/log/aws-routed-eni/plugin.log");
        assert_eq!(aws["pluginLogLevel"], "Debug");
        assert_eq!(
            aws["capabilities"]["io.kubernetes.cri.pod-annotations"],
            true
        );
        assert_eq!(aws.len(), 8, "unexpected keys: {aws:?}");

        let portmap = plugins[1].as_object().unwrap();
        assert_eq!(portmap["type"], "portmap");
        assert_eq!(portmap["capabilities"]["portMappings"], true);
        assert_eq!(portmap["snat"], true);
        assert_eq!(portmap.len(), 3);
    }

    #[test]
    fn values_come_from_the_environment() {
        let v = parse(&cfg(&[
            ("AWS_VPC_K8S_CNI_VETHPREFIX", "abc"),
            ("AWS_VPC_ENI_MTU", "9001"),
            ("POD_MTU", "1450"),
            (
                "AWS_VPC_K8S_PLUGIN_LOG_FILE",
                "/var/log/x \"quoted\" \\ path.log",
            ),
            ("AWS_VPC_K8S_PLUGIN_LOG_LEVEL", "info"),
            ("POD_SECURITY_GROUP_ENFORCING_MODE", "standard"),
        ]));
        let aws = &v["plugins"][0];
        assert_eq!(aws["vethPrefix"], "abc");
        assert_eq!(aws["mtu"], Value::String("1450".into()));
        assert_eq!(aws["pluginLogFile"], "/var/log/x \"quoted\" \\ path.log");
        assert_eq!(aws["pluginLogLevel"], "info");
        assert_eq!(aws["podSGEnforcingMode"], "standard");
        assert_eq!(v["plugins"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn bandwidth_and_tuning_are_appended_after_portmap() {
        let v = parse(&cfg(&[("ENABLE_BANDWIDTH_PLUGIN", "true")]));
        let plugins = v["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 3);
        assert_eq!(plugins[1]["type"], "portmap");
        assert_eq!(plugins[2]["type"], "bandwidth");
        assert_eq!(plugins[2]["capabilities"]["bandwidth"], true);

        let v = parse(&cfg(&[
            ("ENABLE_BANDWIDTH_PLUGIN", "true"),
            ("DISABLE_POD_V6", "true"),
        ]));
        let plugins = v["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 4);
        assert_eq!(plugins[3]["type"], "tuning");
        let sysctl = plugins[3]["sysctl"].as_object().unwrap();
        assert_eq!(sysctl.len(), 3);
        for dev in ["all", "default", "lo"] {
            assert_eq!(sysctl[&format!("net.ipv6.conf.{dev}.disable_ipv6")], "1");
        }
    }

    #[test]
    fn no_placeholder_survives() {
        let s = render(&cfg(&[
            ("DISABLE_POD_V6", "1"),
            ("ENABLE_BANDWIDTH_PLUGIN", "1"),
        ]))
        .unwrap();
        assert!(!s.contains("__"), "{s}");
        assert!(s.ends_with('\n'));
    }
}
