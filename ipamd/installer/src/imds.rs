//! The one IMDS lookup the init step needs: the primary ENI's MAC address.
//!
//! IMDSv2 first (PUT a session token, then GET with it), IMDSv1 as fallback for instances
//! that still allow it, as the AWS SDKs do. Plain HTTP/1.1 over a fresh TCP connection per
//! request; the answers are tiny.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Token lifetime asked for; the token is used once, right away.
const TOKEN_TTL_SECONDS: &str = "60";

/// IMDS failures.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// The endpoint URL is not `http://host[:port]`.
    #[error("invalid IMDS endpoint {0:?} (expected http://host[:port])")]
    Endpoint(String),
    /// Transport failure.
    #[error("IMDS {path}: {reason}")]
    Transport {
        /// The metadata path requested.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// IMDS answered with an error status.
    #[error("IMDS {path}: HTTP {status}")]
    Status {
        /// The metadata path requested.
        path: String,
        /// The HTTP status.
        status: StatusCode,
    },
}

async fn request(
    endpoint: &Uri,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<(StatusCode, String), ImdsError> {
    let transport = |reason: String| ImdsError::Transport {
        path: path.to_string(),
        reason,
    };
    let host = endpoint
        .host()
        .ok_or_else(|| ImdsError::Endpoint(endpoint.to_string()))?;
    let port = endpoint.port_u16().unwrap_or(80);
    // http::Uri keeps the brackets of an IPv6 literal; connect() wants them off.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let fut = async {
        let stream = TcpStream::connect((bare, port))
            .await
            .map_err(|e| transport(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| transport(e.to_string()))?;
        let conn_task = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| transport(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(e.to_string()))?
            .to_bytes();
        conn_task.abort();
        Ok((status, String::from_utf8_lossy(&body).trim().to_string()))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| transport(format!("no answer within {timeout:?}")))?
}

/// Fetches `meta-data/mac` from the IMDS at `endpoint` (e.g. `http://169.254.169.254`).
pub async fn primary_mac(endpoint: &str, timeout: Duration) -> Result<String, ImdsError> {
    let uri: Uri = endpoint
        .trim_end_matches('/')
        .parse()
        .map_err(|_| ImdsError::Endpoint(endpoint.to_string()))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(ImdsError::Endpoint(endpoint.to_string()));
    }
    let token = match request(
        &uri,
        Method::PUT,
        "/latest/api/token",
        &[("x-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECONDS)],
        timeout,
    )
    .await
    {
        Ok((s, t)) if s.is_success() && !t.is_empty() => Some(t),
        Ok((s, _)) => {
            tracing::warn!(status = %s, "IMDSv2 token refused; trying IMDSv1");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "IMDSv2 token request failed; trying IMDSv1");
            None
        }
    };
    let path = "/latest/meta-data/mac";
    let headers: Vec<(&str, &str)> = token
        .as_deref()
        .map(|t| vec![("x-aws-ec2-metadata-token", t)])
        .unwrap_or_default();
    let (status, body) = request(&uri, Method::GET, path, &headers, timeout).await?;
    if !status.is_success() {
        return Err(ImdsError::Status {
            path: path.to_string(),
            status,
        });
    }
    Ok(body)
}
