//! A minimal blocking IMDSv2 client for `max-pods --instance-type-from-imds`.
//!
//! Plain `std` TCP with short timeouts: the CLI must fail fast off EC2 (the link-local address
//! usually black-holes, so a connect without a timeout would hang for minutes), and the library
//! stays free of an HTTP stack when the `ec2` feature is off.
//!
//! The endpoint and HTTP/1.1 response parsing here ([`parse_endpoint`], [`parse_response`]) is
//! also what ipamd's async IMDS client uses: one implementation of the wire format.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Default IMDS endpoint (IPv4 link-local).
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Environment variable the AWS SDKs and CLI use to override the endpoint.
pub const ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
/// Token lifetime requested; the CLI makes two requests, so a minute is plenty.
const TOKEN_TTL_SECONDS: u32 = 60;
/// Largest IMDS response accepted (headers + body). IMDS bodies are a few KiB at most
/// (user-data is limited to 16 KiB); anything bigger is not IMDS.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

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
        let authority = parse_endpoint(endpoint).map_err(|_| bad())?;
        let addr = authority
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(bad)?;
        let host = authority.strip_suffix(":80").unwrap_or(&authority);
        Ok(Imds {
            endpoint: format!("http://{host}"),
            host_header: authority.clone(),
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
        s.take(MAX_RESPONSE_BYTES as u64)
            .read_to_end(&mut raw)
            .map_err(io)?;
        self.parse_response(path, &raw)
    }

    fn parse_response(&self, path: &str, raw: &[u8]) -> Result<String, ImdsError> {
        let malformed = |reason: String| ImdsError::Malformed {
            endpoint: self.endpoint.clone(),
            path: path.to_string(),
            reason,
        };
        let r = parse_response(raw).map_err(malformed)?;
        if r.status != 200 {
            return Err(ImdsError::Status {
                endpoint: self.endpoint.clone(),
                path: path.to_string(),
                status: r.status,
            });
        }
        String::from_utf8(r.body).map_err(|_| malformed("non-UTF-8 body".into()))
    }
}

/// One HTTP response as far as an IMDS client needs it.
#[derive(Debug, PartialEq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body, de-chunked.
    pub body: Vec<u8>,
}

/// Split `http://host[:port][/]` into `host:port` (port 80 when absent). Only `http`: IMDS has no TLS.
pub fn parse_endpoint(ep: &str) -> Result<String, String> {
    let rest = ep
        .trim()
        .strip_prefix("http://")
        .ok_or("only http:// endpoints are supported (IMDS has no TLS)")?;
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() || hostport.contains(['/', '?', '#', '@', ' ']) {
        return Err("expected http://host[:port]".into());
    }
    let has_port = match hostport.rfind(']') {
        // `[v6]` or `[v6]:port`
        Some(i) => {
            if !hostport.starts_with('[') {
                return Err("unbalanced [ ] around an IPv6 address".into());
            }
            hostport[i + 1..].starts_with(':')
        }
        None => {
            if hostport.contains('[') {
                return Err("unbalanced [ ] around an IPv6 address".into());
            }
            hostport.contains(':')
        }
    };
    if has_port {
        let port = hostport.rsplit(':').next().unwrap_or("");
        if port.parse::<u16>().is_err() {
            return Err(format!("bad port {port:?}"));
        }
        Ok(hostport.to_string())
    } else {
        Ok(format!("{hostport}:80"))
    }
}

/// Find the end of the header block (`\r\n\r\n`), returning the index after it.
fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parse a complete HTTP/1.x response (the connection was read to EOF).
pub fn parse_response(buf: &[u8]) -> Result<Response, String> {
    let end = header_end(buf).ok_or("response ended inside the headers")?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x status line: {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for l in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = l.split_once(':') else {
            return Err(format!("bad header line {l:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let raw = &buf[end..];
    let body = if chunked {
        decode_chunked(raw)?
    } else if let Some(n) = content_length {
        raw.get(..n)
            .ok_or_else(|| format!("body shorter ({}) than Content-Length {n}", raw.len()))?
            .to_vec()
    } else {
        raw.to_vec()
    };
    Ok(Response { status, body })
}

/// Decode a `Transfer-Encoding: chunked` body (trailers ignored).
pub fn decode_chunked(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let nl = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunked body ended inside a chunk size")?;
        let size_s = std::str::from_utf8(&raw[..nl]).map_err(|_| "chunk size is not UTF-8")?;
        let size_s = size_s.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size_s, 16).map_err(|_| format!("bad chunk size {size_s:?}"))?;
        raw = &raw[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = raw.get(..size).ok_or("chunked body ended inside a chunk")?;
        out.extend_from_slice(chunk);
        raw = raw.get(size + 2..).ok_or("chunk not followed by CRLF")?;
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
    fn endpoints_parse_to_host_and_port() {
        for (ep, want) in [
            ("http://169.254.169.254", Ok("169.254.169.254:80")),
            ("http://169.254.169.254/", Ok("169.254.169.254:80")),
            ("http://127.0.0.1:8080", Ok("127.0.0.1:8080")),
            ("http://[fd00:ec2::254]", Ok("[fd00:ec2::254]:80")),
            ("http://[::1]:9000/", Ok("[::1]:9000")),
            ("https://169.254.169.254", Err("only http://")),
            ("http://", Err("expected http://host")),
            ("http://h/latest", Err("expected http://host")),
            ("http://[::1", Err("unbalanced")),
            ("http://h:port", Err("bad port")),
        ] {
            match (parse_endpoint(ep), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{ep}"),
                (Err(got), Err(w)) => assert!(got.contains(w), "{ep}: {got}"),
                (got, w) => panic!("{ep}: got {got:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn responses_parse_or_name_the_problem() {
        let ok = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef").unwrap();
        assert_eq!((ok.status, ok.body.as_slice()), (200, &b"abc"[..]));
        let eof = parse_response(b"HTTP/1.0 404 Not Found\r\n\r\ngone").unwrap();
        assert_eq!((eof.status, eof.body.as_slice()), (404, &b"gone"[..]));
        for (raw, want) in [
            (&b"HTTP/1.1 200 OK\r\nContent-Le"[..], "inside the headers"),
            (b"SSH-2.0-x\r\n\r\n", "not an HTTP/1.x status line"),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "bad status line"),
            (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "bad header line"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "bad Content-Length",
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", "shorter"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "bad chunk size",
            ),
        ] {
            let e = parse_response(raw).unwrap_err();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            decode_chunked(b"4\r\nm5.l\r\n5\r\narge!\r\n0\r\n\r\n").unwrap(),
            b"m5.large!"
        );
        assert!(decode_chunked(b"zz\r\n").is_err());
        assert!(decode_chunked(b"10\r\nshort\r\n").is_err());
    }
}
