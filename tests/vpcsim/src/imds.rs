//! IMDSv2 for one instance: token endpoint, metadata tree built from the live (lagged) model
//! state, instance identity document and fake instance-role credentials.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::model::{NodeState, mac_string};
use crate::server::{Sim, lock};

/// Header carrying the token on metadata requests.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// Header carrying the requested/granted token TTL.
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// Name of the fake instance role.
pub const ROLE_NAME: &str = "vpcsim-node-role";

#[derive(Clone)]
struct Ctx {
    sim: Arc<Sim>,
    instance_id: Arc<str>,
    /// The metadata tree of the last visible generation. A client reads ~10 paths per ENI (a
    /// 15-ENI node ~150 on every ipamd start); rebuilding the whole tree for each one made the
    /// emulator, not the client, the slow side of a restart.
    cache: Arc<std::sync::Mutex<Option<TreeCache>>>,
}

/// Router serving IMDSv2 of `instance_id`.
pub fn router(sim: Arc<Sim>, instance_id: String) -> Router {
    Router::new().fallback(handle).with_state(Ctx {
        sim,
        instance_id: instance_id.into(),
        cache: Arc::default(),
    })
}

static TOKEN_SEQ: AtomicU64 = AtomicU64::new(1);

fn text(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn not_found() -> Response {
    let mut r = (
        StatusCode::NOT_FOUND,
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n<html><head><title>404 - Not Found\
         </title></head><body><h1>404 - Not Found</h1></body></html>\n",
    )
        .into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    r
}

async fn handle(State(ctx): State<Ctx>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path();
    if path == "/latest/api/token" {
        if method != Method::PUT {
            return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed".into());
        }
        return issue_token(&ctx, &headers);
    }
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed".into());
    }
    // IMDSv2 only (as "HttpTokens: required"): every read needs a valid token.
    let valid = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            let now = Instant::now();
            let mut tokens = lock(&ctx.sim.imds_tokens);
            tokens.retain(|_, exp| *exp > now);
            tokens.contains_key(t)
        });
    if !valid {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized".into());
    }
    let Some(tree) = tree(&ctx) else {
        return not_found();
    };
    let rel = path.trim_start_matches('/');
    match lookup(&tree, rel) {
        // Credentials carry an expiry relative to now: never serve them from the cache.
        Some(_) if rel.trim_end_matches('/').strip_prefix(CREDENTIALS_DIR) == Some(ROLE_NAME) => {
            text(StatusCode::OK, credentials())
        }
        Some(body) => text(StatusCode::OK, body),
        None => not_found(),
    }
}

/// Directory of the instance role's credentials.
const CREDENTIALS_DIR: &str = "latest/meta-data/iam/security-credentials/";

/// The tree of the visible state, from the cache when the generation has not moved.
fn tree(ctx: &Ctx) -> Option<Arc<Tree>> {
    let (generation, state) = ctx.sim.visible();
    if let Some((g, t)) = lock(&ctx.cache).as_ref()
        && *g == generation
    {
        return Some(t.clone());
    }
    let t = Arc::new(build_tree(ctx, &state)?);
    *lock(&ctx.cache) = Some((generation, t.clone()));
    Some(t)
}

fn issue_token(ctx: &Ctx, headers: &HeaderMap) -> Response {
    let ttl = headers
        .get(TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let Some(ttl) = ttl.filter(|t| (1..=21600).contains(t)) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("{TTL_HEADER} must be an integer between 1 and 21600"),
        );
    };
    let n = TOKEN_SEQ.fetch_add(1, Ordering::Relaxed);
    let token = format!(
        "AQAEAvpcsim{:016x}{:08x}",
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ctx.instance_id.len() as u32 ^ n as u32
    );
    lock(&ctx.sim.imds_tokens).insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    let mut r = text(StatusCode::OK, token);
    if let Ok(v) = HeaderValue::from_str(&ttl.to_string()) {
        r.headers_mut().insert(TTL_HEADER, v);
    }
    r
}

/// The tree built for one visible generation.
type TreeCache = (u64, Arc<Tree>);

/// Leaves of the metadata tree: full path (e.g. `latest/meta-data/mac`) → value, in listing
/// order. Directories are implied by the paths.
type Tree = Vec<(String, String)>;

fn lookup(tree: &Tree, rel: &str) -> Option<String> {
    let rel = rel.trim_end_matches('/');
    if let Some((_, v)) = tree.iter().find(|(k, _)| k == rel) {
        return Some(v.clone());
    }
    // A directory answers with or without its trailing slash: list immediate children,
    // sub-directories with a trailing '/'.
    let dir = format!("{rel}/");
    let mut children: Vec<String> = Vec::new();
    for (k, _) in tree {
        let Some(rest) = k.strip_prefix(&dir) else {
            continue;
        };
        let child = match rest.split_once('/') {
            Some((d, _)) => format!("{d}/"),
            None => rest.to_string(),
        };
        if !children.contains(&child) {
            children.push(child);
        }
    }
    (!children.is_empty()).then(|| children.join("\n"))
}

fn build_tree(ctx: &Ctx, state: &crate::model::NetState) -> Option<Tree> {
    let node: &NodeState = state
        .nodes
        .iter()
        .find(|n| *n.instance_id == *ctx.instance_id)?;
    let m = lock(&ctx.sim.model);
    let cfg = m.config();
    let region = cfg.region.clone();
    let account = cfg.account_id.clone();
    let vpc_cidr = cfg.vpc_cidr;
    let vpc_id = m.vpc_id.clone();
    let group_name = |g: &String| m.groups.get(g).map(|s| s.name.clone()).unwrap_or_default();
    let primary = node.enis.iter().find(|e| e.eni_id == node.primary_eni);
    let md = "latest/meta-data";
    let mut t: Tree = Vec::new();
    let mut put = |k: String, v: String| t.push((k, v));
    put(format!("{md}/ami-id"), "ami-0vpcsim000000000".into());
    if let Some(p) = primary {
        let host = format!(
            "ip-{}.{region}.compute.internal",
            p.primary_ip.to_string().replace('.', "-")
        );
        put(format!("{md}/hostname"), host.clone());
        put(format!("{md}/local-hostname"), host);
        put(format!("{md}/local-ipv4"), p.primary_ip.to_string());
        put(format!("{md}/mac"), mac_string(&p.mac));
    }
    put(
        format!("{md}/iam/info"),
        serde_json::json!({
            "Code": "Success",
            "LastUpdated": rfc3339(time::OffsetDateTime::now_utc()),
            "InstanceProfileArn": format!("arn:aws:iam::{account}:instance-profile/{ROLE_NAME}"),
            "InstanceProfileId": "AIPAVPCSIM0000000000",
        })
        .to_string(),
    );
    put(
        format!("{md}/iam/security-credentials/{ROLE_NAME}"),
        String::new(),
    );
    put(format!("{md}/instance-id"), node.instance_id.clone());
    put(format!("{md}/instance-type"), node.instance_type.clone());
    for e in &node.enis {
        let base = format!("{md}/network/interfaces/macs/{}", mac_string(&e.mac));
        // IMDS reports the primary interface as device 0 whatever else is going on.
        let dev = if e.eni_id == node.primary_eni {
            0
        } else {
            e.device_index
        };
        put(format!("{base}/device-number"), dev.to_string());
        put(format!("{base}/interface-id"), e.eni_id.clone());
        if !e.prefixes.is_empty() {
            put(
                format!("{base}/ipv4-prefix"),
                e.prefixes
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        }
        put(
            format!("{base}/local-hostname"),
            format!(
                "ip-{}.{region}.compute.internal",
                e.primary_ip.to_string().replace('.', "-")
            ),
        );
        put(
            format!("{base}/local-ipv4s"),
            std::iter::once(&e.primary_ip)
                .chain(e.secondaries.iter())
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        );
        put(format!("{base}/mac"), mac_string(&e.mac));
        if node.multi_card {
            put(format!("{base}/network-card"), e.card.to_string());
        }
        put(format!("{base}/owner-id"), account.clone());
        put(format!("{base}/security-group-ids"), e.groups.join("\n"));
        put(
            format!("{base}/security-groups"),
            e.groups
                .iter()
                .map(group_name)
                .collect::<Vec<_>>()
                .join("\n"),
        );
        put(format!("{base}/subnet-id"), e.subnet_id.clone());
        put(
            format!("{base}/subnet-ipv4-cidr-block"),
            e.subnet_cidr.to_string(),
        );
        put(format!("{base}/vpc-id"), vpc_id.clone());
        put(format!("{base}/vpc-ipv4-cidr-block"), vpc_cidr.to_string());
        put(format!("{base}/vpc-ipv4-cidr-blocks"), vpc_cidr.to_string());
    }
    put(format!("{md}/placement/availability-zone"), node.az.clone());
    put(format!("{md}/placement/region"), region.clone());
    put(format!("{md}/services/domain"), "amazonaws.com".into());
    put(format!("{md}/services/partition"), "aws".into());
    put(
        "latest/dynamic/instance-identity/document".into(),
        serde_json::to_string_pretty(&serde_json::json!({
            "accountId": account,
            "architecture": "x86_64",
            "availabilityZone": node.az,
            "imageId": "ami-0vpcsim000000000",
            "instanceId": node.instance_id,
            "instanceType": node.instance_type,
            "pendingTime": rfc3339(time::OffsetDateTime::now_utc()),
            "privateIp": primary.map(|p| p.primary_ip.to_string()),
            "region": region,
            "version": "2017-09-30",
        }))
        .unwrap_or_default(),
    );
    Some(t)
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&fmt).unwrap_or_default()
}

fn credentials() -> String {
    let now = time::OffsetDateTime::now_utc();
    serde_json::json!({
        "Code": "Success",
        "LastUpdated": rfc3339(now),
        "Type": "AWS-HMAC",
        "AccessKeyId": "ASIAVPCSIMEXAMPLE000",
        "SecretAccessKey": "vpcsim/secret/not-a-real-key/000000000000",
        "Token": "vpcsim-session-token",
        "Expiration": rfc3339(now + time::Duration::hours(6)),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_listing() {
        let t: Tree = vec![
            ("a/b".into(), "1".into()),
            ("a/c/d".into(), "2".into()),
            ("a/c/e".into(), "3".into()),
        ];
        assert_eq!(lookup(&t, "a").as_deref(), Some("b\nc/"));
        assert_eq!(lookup(&t, "a/").as_deref(), Some("b\nc/"));
        assert_eq!(lookup(&t, "a/c").as_deref(), Some("d\ne"));
        assert_eq!(lookup(&t, "a/b").as_deref(), Some("1"));
        assert_eq!(lookup(&t, "a/x"), None);
    }
}
