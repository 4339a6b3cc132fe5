//! grpc.health.v1 client over ipamd's Unix socket (or TCP), shared by the probe binary and the
//! entrypoint's wait loop.
//!
//! Connection and RPC failures are kept apart because the probe's exit codes (2 vs 3) and the
//! entrypoint's log messages depend on which one happened.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::service_fn;

/// Where the health service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A Unix socket path (`unix:///abs/path` or `unix:path`).
    Unix(PathBuf),
    /// `host:port` over plain-text HTTP/2.
    Tcp(String),
}

impl Target {
    /// Parses a `-addr` value the way grpc-go resolves it: `unix:///abs`, `unix:/abs`,
    /// `unix:relative`, otherwise `host:port` (an empty host meaning localhost).
    pub fn parse(addr: &str) -> Result<Self, String> {
        if let Some(rest) = addr.strip_prefix("unix://") {
            if rest.is_empty() || !rest.starts_with('/') {
                return Err(format!(
                    "{addr:?}: unix:// needs an absolute path (unix:///path/to.sock)"
                ));
            }
            return Ok(Self::Unix(PathBuf::from(rest)));
        }
        if let Some(rest) = addr.strip_prefix("unix:") {
            if rest.is_empty() {
                return Err(format!("{addr:?}: empty socket path"));
            }
            return Ok(Self::Unix(PathBuf::from(rest)));
        }
        if addr.is_empty() {
            return Err("empty address".to_string());
        }
        let hostport = if addr.starts_with(':') {
            format!("localhost{addr}")
        } else {
            addr.to_string()
        };
        // Validate as the authority of a URI so a typo fails as bad arguments, not as a
        // connection failure.
        match format!("http://{hostport}").parse::<Uri>() {
            Ok(u) if u.port_u16().is_some() && u.path() == "/" => Ok(Self::Tcp(hostport)),
            _ => Err(format!("{addr:?}: expected unix:///path or host:port")),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
            Self::Tcp(a) => f.write_str(a),
        }
    }
}

/// Why a health check did not produce a status.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The connection could not be established (probe exit code 2).
    #[error("failed to connect to {target}: {reason}")]
    Connect {
        /// The address dialled.
        target: String,
        /// The transport error.
        reason: String,
    },
    /// The connection was not established within the connect timeout (probe exit code 2).
    #[error("failed to connect to {target} within {timeout:?}")]
    ConnectTimeout {
        /// The address dialled.
        target: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The RPC failed (probe exit code 3), e.g. unknown service name or no health service.
    #[error("health rpc failed: {0}")]
    Rpc(tonic::Status),
    /// The RPC did not complete within the RPC timeout (probe exit code 3).
    #[error("health rpc did not complete within {0:?}")]
    RpcTimeout(Duration),
}

/// Opens a channel to `target`, failing after `timeout`.
pub async fn connect(
    target: &Target,
    timeout: Duration,
    user_agent: Option<&str>,
) -> Result<Channel, CheckError> {
    let name = target.to_string();
    let connect_err = |e: tonic::transport::Error| CheckError::Connect {
        target: name.clone(),
        reason: error_chain(&e),
    };
    let fut = async {
        match target {
            Target::Unix(path) => {
                // The URI is required by the builder but never resolved: the connector below
                // dials the socket regardless of it.
                let mut ep = Endpoint::from_static("http://localhost").connect_timeout(timeout);
                if let Some(ua) = user_agent {
                    ep = ep.user_agent(ua).map_err(connect_err)?;
                }
                let path = path.clone();
                ep.connect_with_connector(service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { UnixStream::connect(path).await.map(TokioIo::new) }
                }))
                .await
                .map_err(connect_err)
            }
            Target::Tcp(hostport) => {
                let mut ep = Endpoint::from_shared(format!("http://{hostport}"))
                    .map_err(connect_err)?
                    .connect_timeout(timeout);
                if let Some(ua) = user_agent {
                    ep = ep.user_agent(ua).map_err(connect_err)?;
                }
                ep.connect().await.map_err(connect_err)
            }
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(CheckError::ConnectTimeout {
            target: target.to_string(),
            timeout,
        }),
    }
}

/// Calls `Health/Check` for `service` on an open channel, failing after `timeout`.
pub async fn check_on(
    channel: Channel,
    service: &str,
    timeout: Duration,
    metadata: &[(String, String)],
) -> Result<ServingStatus, CheckError> {
    let mut client = HealthClient::new(channel);
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: service.to_string(),
    });
    // Sent as grpc-timeout too, so the server can give up on its side.
    req.set_timeout(timeout);
    for (k, v) in metadata {
        let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
            .map_err(|e| CheckError::Rpc(tonic::Status::invalid_argument(format!("{k:?}: {e}"))))?;
        let val = v.parse().map_err(|_| {
            CheckError::Rpc(tonic::Status::invalid_argument(format!(
                "invalid header value {v:?}"
            )))
        })?;
        req.metadata_mut().insert(key, val);
    }
    let resp = match tokio::time::timeout(timeout, client.check(req)).await {
        Err(_) => return Err(CheckError::RpcTimeout(timeout)),
        Ok(Err(s)) if s.code() == tonic::Code::DeadlineExceeded => {
            return Err(CheckError::RpcTimeout(timeout));
        }
        Ok(Err(s)) => return Err(CheckError::Rpc(s)),
        Ok(Ok(r)) => r,
    };
    // An out-of-range enum value from a newer server is reported as UNKNOWN, i.e. unhealthy.
    Ok(ServingStatus::try_from(resp.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

/// Connects and checks once.
pub async fn check(
    target: &Target,
    service: &str,
    connect_timeout: Duration,
    rpc_timeout: Duration,
) -> Result<ServingStatus, CheckError> {
    let ch = connect(target, connect_timeout, None).await?;
    check_on(ch, service, rpc_timeout, &[]).await
}

/// The error and its sources, joined, because tonic's transport error alone just says
/// "transport error".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let part = c.to_string();
        // hyper and tonic often repeat the inner message in the outer one.
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            Target::parse("unix:///var/run/aws-node/ipamd.sock").unwrap(),
            Target::Unix("/var/run/aws-node/ipamd.sock".into())
        );
        assert_eq!(
            Target::parse("unix:/run/x.sock").unwrap(),
            Target::Unix("/run/x.sock".into())
        );
        assert_eq!(
            Target::parse("unix:rel.sock").unwrap(),
            Target::Unix("rel.sock".into())
        );
        assert_eq!(
            Target::parse("127.0.0.1:50051").unwrap(),
            Target::Tcp("127.0.0.1:50051".into())
        );
        assert_eq!(
            Target::parse(":50051").unwrap(),
            Target::Tcp("localhost:50051".into())
        );
        for bad in ["", "unix://", "unix://rel", "unix:", "localhost", "a b:1"] {
            assert!(Target::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
