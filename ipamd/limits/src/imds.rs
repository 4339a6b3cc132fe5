//! A minimal blocking IMDSv2 client for `max-pods --instance-type-from-imds`.
//!
//! Plain `std` TCP with short timeouts: the CLI must fail fast off EC2 (the link-local address
//! usually black-holes, so a connect without a timeout would hang for minutes), and the library
//! stays free of an HTTP stack when the `ec2` feature is off.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Default IMDS endpoint (IPv4 link-local).
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Environment variable the AWS SDKs and CLI use to override the endpoint.
pub const ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
/// Token lifetime requested; the CLI makes two requests, so a minute is plenty.
const TOKEN_TTL_SECONDS: u32 = 60;
/// Upper bound of a metadata response we accept (instance-type and region are tiny).
const MAX_RESPONSE: u64 = 64 * 1024;

/// IMDS errors; each names the endpoint and the path.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// The endpoint is not `http://host[:port][/]`.
    #[error("invalid IMDS endpoint {0:?}: expected http://HOST[:PORT]")]
    Endpoint(String),
    /// Connect/read/write failed or timed out.
    #[error("IMDS {endpoint}{path}: {source}")]
    Io {
        /// Endpoint in use.
        endpoint: String,
        /// Request path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Non-200 status.
    #[error("IMDS {endpoint}{path}: HTTP {status}")]
    Status {
        /// Endpoint in use.
        endpoint: String,
        /// Request path.
        path: String,
        /// HTTP status code.
        status: u16,
    },
    /// Unparsable HTTP response.
    #[error("IMDS {endpoint}{path}: malformed response: {reason}")]
    Malformed {
        /// Endpoint in use.
        endpoint: String,
        /// Request path.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

/// A blocking IMDSv2 client.
#[derive(Debug, Clone)]
pub struct Imds {
    endpoint: String,
    host_header: String,
    addr: SocketAddr,
    timeout: Duration,
}

impl Imds {
    /// Client for `endpoint` (`http://host[:port][/]`), with `timeout` for connect and for each
    /// read/write.
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Self, ImdsError> {
        let bad = || ImdsError::Endpoint(endpoint.to_string());
        let rest = endpoint.trim().strip_prefix("http://").ok_or_else(bad)?;
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() {
            return Err(bad());
        }
        // `[v6]:port`, `[v6]`, `host:port`, `host`.
        let with_port = if authority.starts_with('[') {
            if authority.contains("]:") {
                authority.to_string()
            } else {
                format!("{authority}:80")
            }
        } else if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(bad)?;
        Ok(Imds {
            endpoint: format!("http://{authority}"),
            host_header: authority.to_string(),
            addr,
            timeout,
        })
    }

    /// Client for `$AWS_EC2_METADATA_SERVICE_ENDPOINT` or the default endpoint.
    pub fn from_env(timeout: Duration) -> Result<Self, ImdsError> {
        let ep = std::env::var(ENDPOINT_ENV)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Self::new(&ep, timeout)
    }

    /// The endpoint in use (for messages).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Gets an IMDSv2 session token.
    pub fn token(&self) -> Result<String, ImdsError> {
        let body = self.request(
            "PUT",
            "/latest/api/token",
            &format!("X-aws-ec2-metadata-token-ttl-seconds: {TOKEN_TTL_SECONDS}\r\n"),
        )?;
        Ok(body.trim().to_string())
    }

    /// Reads `/latest/meta-data/<path>` with `token`; the body, trimmed.
    pub fn get(&self, token: &str, path: &str) -> Result<String, ImdsError> {
        let body = self.request(
            "GET",
            &format!("/latest/meta-data/{path}"),
            &format!("X-aws-ec2-metadata-token: {token}\r\n"),
        )?;
        Ok(body.trim().to_string())
    }

    fn request(&self, method: &str, path: &str, extra: &str) -> Result<String, ImdsError> {
        let io = |source| ImdsError::Io {
            endpoint: self.endpoint.clone(),
            path: path.to_string(),
            source,
        };
        let mut s = TcpStream::connect_timeout(&self.addr, self.timeout).map_err(io)?;
        s.set_read_timeout(Some(self.timeout)).map_err(io)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: max-pods\r\nAccept: */*\r\n\
             Content-Length: 0\r\nConnection: close\r\n{extra}\r\n",
            self.host_header
        );
        s.write_all(req.as_bytes()).map_err(io)?;
        let mut raw = Vec::new();
        s.take(MAX_RESPONSE).read_to_end(&mut raw).map_err(io)?;
        self.parse_response(path, &raw)
    }

    fn parse_response(&self, path: &str, raw: &[u8]) -> Result<String, ImdsError> {
        let malformed = |reason: &str| ImdsError::Malformed {
            endpoint: self.endpoint.clone(),
            path: path.to_string(),
            reason: reason.to_string(),
        };
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| malformed("no end of headers"))?;
        let head =
            std::str::from_utf8(&raw[..split]).map_err(|_| malformed("non-UTF-8 headers"))?;
        let body = &raw[split + 4..];
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| malformed("no status line"))?;
        let mut chunked = false;
        let mut length: Option<usize> = None;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if k == "content-length" {
                    length = v.parse().ok();
                }
            }
        }
        if status != 200 {
            return Err(ImdsError::Status {
                endpoint: self.endpoint.clone(),
                path: path.to_string(),
                status,
            });
        }
        let body = if chunked {
            dechunk(body).ok_or_else(|| malformed("bad chunked encoding"))?
        } else if let Some(n) = length {
            body.get(..n)
                .ok_or_else(|| malformed("body shorter than Content-Length"))?
                .to_vec()
        } else {
            body.to_vec()
        };
        String::from_utf8(body).map_err(|_| malformed("non-UTF-8 body"))
    }
}

/// Decodes an HTTP/1.1 chunked body; `None` if malformed.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn endpoint_forms() {
        let t = Duration::from_millis(100);
        assert_eq!(
            Imds::new("http://127.0.0.1:1338/", t).unwrap().addr,
            "127.0.0.1:1338".parse().unwrap()
        );
        assert_eq!(
            Imds::new("http://[::1]:9", t).unwrap().addr,
            "[::1]:9".parse().unwrap()
        );
        assert_eq!(Imds::new("http://127.0.0.1", t).unwrap().addr.port(), 80);
        assert!(matches!(
            Imds::new("https://127.0.0.1", t),
            Err(ImdsError::Endpoint(_))
        ));
        assert!(Imds::new("http:///x", t).is_err());
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"4\r\nm5.l\r\n5\r\narge!\r\n0\r\n\r\n").unwrap(),
            b"m5.large!"
        );
        assert!(dechunk(b"zz\r\n").is_none());
        assert!(dechunk(b"10\r\nshort\r\n").is_none());
    }
}
