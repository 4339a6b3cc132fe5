//! EC2 Query request parameters: flattened lists (`Key.1`, `Key.2`), dotted structures
//! (`Filter.1.Value.2`), typed accessors that turn bad input into `InvalidParameterValue`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::model::{ApiError, ApiResult};

/// The decoded form/query parameters of one request.
#[derive(Debug, Clone, Default)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    /// Decodes `application/x-www-form-urlencoded` bytes (a body or a query string) and
    /// merges them in; later values win.
    pub fn extend_urlencoded(&mut self, data: &[u8]) -> ApiResult<()> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(data).map_err(|e| {
            ApiError::new(
                "MalformedQueryString",
                format!("The request body is not valid form-urlencoded data: {e}"),
            )
        })?;
        self.0.extend(pairs);
        Ok(())
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The value of `key`, or `MissingParameter`.
    pub fn req(&self, key: &str) -> ApiResult<&str> {
        self.get(key).ok_or_else(|| ApiError::missing(key))
    }

    /// `key` as an unsigned integer.
    pub fn u32(&self, key: &str) -> ApiResult<Option<u32>> {
        self.get(key)
            .map(|v| {
                v.trim().parse::<u32>().map_err(|_| {
                    ApiError::invalid_value(format!(
                        "Value ({v}) for parameter {key} is invalid. Expected a non-negative \
                         integer."
                    ))
                })
            })
            .transpose()
    }

    /// `key` as a boolean (`true`/`false`).
    pub fn bool(&self, key: &str) -> ApiResult<Option<bool>> {
        self.get(key)
            .map(|v| match v.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(ApiError::invalid_value(format!(
                    "Value ({v}) for parameter {key} is invalid. Expected 'true' or 'false'."
                ))),
            })
            .transpose()
    }

    /// The members of the flattened list or structure list `prefix`: for `prefix.N` and
    /// `prefix.N.rest`, returns one sub-`Params` per N (in index order) holding `""` → the
    /// `prefix.N` value and `rest` → the `prefix.N.rest` values.
    pub fn indexed(&self, prefix: &str) -> BTreeMap<u32, Params> {
        let mut out: BTreeMap<u32, Params> = BTreeMap::new();
        let dotted = format!("{prefix}.");
        for (k, v) in self.0.range(dotted.clone()..) {
            let Some(rest) = k.strip_prefix(&dotted) else {
                break;
            };
            let (idx, sub) = match rest.split_once('.') {
                Some((i, s)) => (i, s),
                None => (rest, ""),
            };
            let Ok(idx) = idx.parse::<u32>() else {
                continue;
            };
            out.entry(idx)
                .or_default()
                .0
                .insert(sub.to_string(), v.clone());
        }
        out
    }

    /// The values of the flattened string list `prefix` (`prefix.1`, `prefix.2`, …).
    pub fn list(&self, prefix: &str) -> Vec<String> {
        self.indexed(prefix)
            .into_values()
            .filter_map(|p| p.get("").map(str::to_string))
            .collect()
    }

    /// `Filter.N.Name` / `Filter.N.Value.M`.
    pub fn filters(&self) -> ApiResult<Vec<(String, Vec<String>)>> {
        self.indexed("Filter")
            .into_iter()
            .map(|(i, p)| {
                let name = p
                    .get("Name")
                    .ok_or_else(|| ApiError::missing(&format!("Filter.{i}.Name")))?
                    .to_string();
                Ok((name, p.list("Value")))
            })
            .collect()
    }

    /// `prefix.N.Key` / `prefix.N.Value` pairs (value may be absent).
    pub fn tags(&self, prefix: &str) -> ApiResult<Vec<(String, Option<String>)>> {
        self.indexed(prefix)
            .into_iter()
            .map(|(i, p)| {
                let key = p
                    .get("Key")
                    .ok_or_else(|| ApiError::missing(&format!("{prefix}.{i}.Key")))?
                    .to_string();
                Ok((key, p.get("Value").map(str::to_string)))
            })
            .collect()
    }
}

/// Parses an IPv4 address parameter.
pub fn parse_ip(s: &str) -> ApiResult<Ipv4Addr> {
    s.trim()
        .parse()
        .map_err(|_| ApiError::invalid_value(format!("Invalid IPv4 address '{s}'")))
}

/// Parses an IPv4 prefix parameter.
pub fn parse_prefix(s: &str) -> ApiResult<Ipv4Net> {
    s.trim()
        .parse()
        .map_err(|_| ApiError::invalid_value(format!("Invalid IPv4 prefix '{s}'")))
}

/// Matches an EC2 filter value pattern (`*` any run, `?` one character) against `s`.
pub fn glob(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lists_and_structures() {
        let mut p = Params::default();
        p.extend_urlencoded(
            b"Action=X&Filter.2.Name=b&Filter.1.Name=a&Filter.1.Value.2=y&Filter.1.Value.1=x\
              &Filter.10.Name=c&Ip.1=1.2.3.4&Ip.2=5.6.7.8",
        )
        .unwrap();
        let f = p.filters().unwrap();
        assert_eq!(f[0], ("a".into(), vec!["x".into(), "y".into()]));
        assert_eq!(f[1].0, "b");
        assert_eq!(f[2].0, "c");
        assert_eq!(p.list("Ip"), vec!["1.2.3.4", "5.6.7.8"]);
        assert!(p.u32("Action").is_err());
    }

    #[test]
    fn globbing() {
        assert!(glob("aws-K8S-*", "aws-K8S-i-123"));
        assert!(!glob("aws-K8S-*", "aws-k8s-i-123"));
        assert!(glob("a?c", "abc"));
        assert!(glob("*", ""));
        assert!(glob("*b*", "abc"));
        assert!(!glob("a", "ab"));
    }
}
