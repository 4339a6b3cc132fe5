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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A one-connection-per-request IMDS on loopback; `token` = whether PUT /latest/api/token
    /// succeeds. Returns the port and the requests seen (method, path, token header present).
    fn fake_imds(token: bool, answers: usize) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..answers {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut first = String::new();
                r.read_line(&mut first).unwrap();
                let mut has_token = false;
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    has_token |= h
                        .to_ascii_lowercase()
                        .starts_with("x-aws-ec2-metadata-token:");
                }
                let words: Vec<&str> = first.split_whitespace().collect();
                let (status, body) = match (words[0], words[1], token) {
                    ("PUT", "/latest/api/token", true) => ("200 OK", "T"),
                    ("PUT", _, false) => ("403 Forbidden", ""),
                    ("GET", "/latest/meta-data/mac", _) => ("200 OK", "0a:00:00:00:00:01\n"),
                    _ => ("404 Not Found", ""),
                };
                seen.push(format!("{} {} token={has_token}", words[0], words[1]));
                let mut s = s;
                write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
            seen
        });
        (port, h)
    }

    #[tokio::test]
    async fn imdsv2_token_is_used() {
        let (port, h) = fake_imds(true, 2);
        let mac = primary_mac(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(mac, "0a:00:00:00:00:01");
        assert_eq!(
            h.join().unwrap(),
            vec![
                "PUT /latest/api/token token=false",
                "GET /latest/meta-data/mac token=true"
            ]
        );
    }

    #[tokio::test]
    async fn falls_back_to_imdsv1_when_token_refused() {
        let (port, h) = fake_imds(false, 2);
        let mac = primary_mac(&format!("http://127.0.0.1:{port}"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(mac, "0a:00:00:00:00:01");
        assert_eq!(
            h.join().unwrap(),
            vec![
                "PUT /latest/api/token token=false",
                "GET /latest/meta-data/mac token=false"
            ]
        );
    }

    #[tokio::test]
    async fn bad_endpoints_are_rejected_by_name() {
        for bad in ["https://169.254.169.254", "169.254.169.254", "http://"] {
            let e = primary_mac(bad, Duration::from_secs(1)).await.unwrap_err();
            assert!(matches!(e, ImdsError::Endpoint(_)), "{bad}: {e}");
        }
    }
}
