//! gRPC client for ipamd over its Unix socket (wire-contract.md).
//!
//! The plugin is a one-shot process, so the client runs on a current-thread tokio runtime
//! that lives for one verb. Every call has an explicit deadline (upstream has none, so a hung
//! daemon hangs the plugin until the runtime kills it), and connecting is eager with a short
//! timeout so that "ipamd is not there" is told apart from "ipamd said no".

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use awscni_proto::ext::cni_extensions_client::CniExtensionsClient;
use awscni_proto::ext::{CheckAllocationReply, CheckAllocationRequest, GcReply, GcRequest};
use awscni_proto::rpc::cni_backend_client::CniBackendClient;
use awscni_proto::rpc::{AddNetworkReply, AddNetworkRequest, DelNetworkReply, DelNetworkRequest};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Connect timeout. A Unix socket connects (or is refused) in microseconds; anything longer
/// means a wedged daemon, and the runtime should retry rather than wait.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// ADD deadline: longer than ipamd's ADD-time wait for the pool manager (ipam.md), shorter
/// than kubelet's sandbox-creation patience.
pub const ADD_DEADLINE: Duration = Duration::from_secs(30);
/// DEL deadline: short, because DEL has a local fallback.
pub const DEL_DEADLINE: Duration = Duration::from_secs(5);
/// CHECK/GC deadline.
pub const AUX_DEADLINE: Duration = Duration::from_secs(10);
/// STATUS deadline (kubelet polls STATUS every ~5 s through the runtime; keep it cheap).
pub const STATUS_DEADLINE: Duration = Duration::from_secs(2);

/// The socket path: netconf `ipamdSocket` > env `AWS_VPC_CNI_IPAMD_SOCKET` > default.
pub fn socket_path(netconf: Option<&str>, env: Option<&str>) -> PathBuf {
    netconf
        .filter(|s| !s.is_empty())
        .or(env.filter(|s| !s.is_empty()))
        .unwrap_or(awscni_proto::DEFAULT_IPAMD_SOCKET)
        .into()
}

/// Why an RPC did not produce a reply.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// ipamd is not there, not answering, or too slow.
    #[error(
        "ipamd not reachable at {socket}: {reason}; check that the aws-node pod is running and that {socket} exists"
    )]
    Unreachable {
        /// The socket we tried.
        socket: String,
        /// What happened.
        reason: String,
    },
    /// ipamd rejected our `ClientVersion` (`FAILED_PRECONDITION`).
    #[error(
        "ipamd rejected plugin version {client:?}: {message} (install the aws-cni binary from the same build as the running ipamd)"
    )]
    VersionMismatch {
        /// Our version string.
        client: String,
        /// ipamd's message (names its own version).
        message: String,
    },
    /// Any other gRPC status.
    #[error("ipamd {method}: {code:?}: {message}")]
    Status {
        /// The method called.
        method: &'static str,
        /// gRPC status code.
        code: tonic::Code,
        /// Status message.
        message: String,
    },
}

/// A connected client.
pub struct Ipamd {
    rt: tokio::runtime::Runtime,
    channel: Channel,
    socket: PathBuf,
    trace: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for Ipamd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipamd")
            .field("socket", &self.socket)
            .finish()
    }
}

impl Ipamd {
    /// Connects to ipamd at `socket`, failing fast with [`RpcError::Unreachable`].
    pub fn connect(socket: &Path) -> Result<Self, RpcError> {
        let unreachable = |reason: String| RpcError::Unreachable {
            socket: socket.display().to_string(),
            reason,
        };
        if !socket.exists() {
            return Err(unreachable("the socket file does not exist".into()));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| unreachable(format!("cannot start the gRPC runtime: {e}")))?;
        let path = socket.to_path_buf();
        let channel = rt.block_on(async {
            // The URI is a placeholder: the connector ignores it and dials the socket. Neither
            // side validates `:authority` (wire-contract.md §1).
            let ep = Endpoint::from_static("http://ipamd.sock").connect_timeout(CONNECT_TIMEOUT);
            let connect = ep.connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(s))
                }
            }));
            match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(unreachable(error_chain(&e))),
                Err(_) => Err(unreachable(format!(
                    "no connection within {CONNECT_TIMEOUT:?}"
                ))),
            }
        })?;
        Ok(Self {
            rt,
            channel,
            socket: socket.to_path_buf(),
            trace: Vec::new(),
        })
    }

    /// W3C trace context to forward as gRPC metadata on every call: libcni exports
    /// `TRACEPARENT`, `TRACESTATE` and `BAGGAGE` to plugins when a span is active, so a trace
    /// can continue into ipamd. Non-ASCII values are dropped.
    pub fn with_trace_context(mut self, get: &dyn Fn(&str) -> Option<String>) -> Self {
        for (env, key) in [
            ("TRACEPARENT", "traceparent"),
            ("TRACESTATE", "tracestate"),
            ("BAGGAGE", "baggage"),
        ] {
            if let Some(v) = get(env).filter(|v| !v.is_empty() && v.is_ascii()) {
                self.trace.push((key, v));
            }
        }
        self
    }

    fn call<T, F>(&self, method: &'static str, deadline: Duration, fut: F) -> Result<T, RpcError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let socket = self.socket.display().to_string();
        self.rt.block_on(async {
            match tokio::time::timeout(deadline, fut).await {
                Err(_) => Err(RpcError::Unreachable {
                    socket,
                    reason: format!("{method} got no answer within {deadline:?}"),
                }),
                Ok(Ok(r)) => Ok(r.into_inner()),
                // Checked before the code: tonic reports a connection that broke under a call
                // (ipamd killed or restarted mid-request) as `Unknown: transport error`, which
                // would otherwise read as an answer from ipamd and not be retried.
                Ok(Err(s)) if is_transport_failure(&s) => Err(RpcError::Unreachable {
                    socket,
                    reason: format!(
                        "{method}: the connection failed before ipamd answered ({}); ipamd \
                         may have crashed or restarted",
                        // The status itself only says "Unknown: transport error"; its source
                        // chain says what happened ("... broken pipe").
                        std::error::Error::source(&s).map_or_else(|| s.to_string(), error_chain)
                    ),
                }),
                Ok(Err(s)) => Err(match s.code() {
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                        RpcError::Unreachable {
                            socket,
                            reason: format!("{method}: {}", s.message()),
                        }
                    }
                    tonic::Code::FailedPrecondition => RpcError::VersionMismatch {
                        client: awscni_proto::VERSION.to_string(),
                        message: s.message().to_string(),
                    },
                    code => RpcError::Status {
                        method,
                        code,
                        message: s.message().to_string(),
                    },
                }),
            }
        })
    }

    fn req<T>(&self, msg: T, deadline: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        // Also tell the server, so it can give up on its side (grpc-timeout header).
        r.set_timeout(deadline);
        for (k, v) in &self.trace {
            if let Ok(v) = tonic::metadata::MetadataValue::try_from(v.as_str()) {
                r.metadata_mut().insert(*k, v);
            }
        }
        r
    }

    /// `rpc.CNIBackend/AddNetwork`.
    pub fn add(&self, msg: AddNetworkRequest) -> Result<AddNetworkReply, RpcError> {
        let mut c = CniBackendClient::new(self.channel.clone());
        self.call(
            "AddNetwork",
            ADD_DEADLINE,
            c.add_network(self.req(msg, ADD_DEADLINE)),
        )
    }

    /// `rpc.CNIBackend/DelNetwork`.
    pub fn del(&self, msg: DelNetworkRequest) -> Result<DelNetworkReply, RpcError> {
        let mut c = CniBackendClient::new(self.channel.clone());
        self.call(
            "DelNetwork",
            DEL_DEADLINE,
            c.del_network(self.req(msg, DEL_DEADLINE)),
        )
    }

    /// `awscni.ext.v1.CniExtensions/CheckAllocation`.
    pub fn check_allocation(
        &self,
        msg: CheckAllocationRequest,
    ) -> Result<CheckAllocationReply, RpcError> {
        let mut c = CniExtensionsClient::new(self.channel.clone());
        self.call(
            "CheckAllocation",
            AUX_DEADLINE,
            c.check_allocation(self.req(msg, AUX_DEADLINE)),
        )
    }

    /// `awscni.ext.v1.CniExtensions/GarbageCollect`.
    pub fn gc(&self, msg: GcRequest) -> Result<GcReply, RpcError> {
        let mut c = CniExtensionsClient::new(self.channel.clone());
        self.call(
            "GarbageCollect",
            AUX_DEADLINE,
            c.garbage_collect(self.req(msg, AUX_DEADLINE)),
        )
    }

    /// `grpc.health.v1.Health/Check` for the overall service `""`: true when `SERVING`.
    pub fn healthy(&self) -> Result<(bool, String), RpcError> {
        let mut c = HealthClient::new(self.channel.clone());
        let msg = HealthCheckRequest {
            service: String::new(),
        };
        let r = self.call(
            "Health/Check",
            STATUS_DEADLINE,
            c.check(self.req(msg, STATUS_DEADLINE)),
        )?;
        let status = ServingStatus::try_from(r.status).unwrap_or(ServingStatus::Unknown);
        Ok((
            status == ServingStatus::Serving,
            status.as_str_name().into(),
        ))
    }
}

/// True when `s` was not sent by ipamd but made up by the client because the connection
/// under the call failed: a status ipamd sends has no source, one from a broken connection
/// carries the transport or I/O error that broke it.
fn is_transport_failure(s: &tonic::Status) -> bool {
    let mut cur = std::error::Error::source(s);
    while let Some(e) = cur {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Flattens an error and its sources into one line ("transport error: No such file ...").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
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
    fn socket_precedence() {
        assert_eq!(
            socket_path(Some("/a"), Some("/b")),
            PathBuf::from("/a"),
            "netconf wins"
        );
        assert_eq!(socket_path(None, Some("/b")), PathBuf::from("/b"));
        assert_eq!(
            socket_path(Some(""), None),
            PathBuf::from(awscni_proto::DEFAULT_IPAMD_SOCKET)
        );
    }

    #[test]
    fn only_client_made_statuses_are_transport_failures() {
        // What ipamd sends (grpc-status trailers) carries no source.
        assert!(!is_transport_failure(&tonic::Status::unknown(
            "transport error"
        )));
        assert!(!is_transport_failure(&tonic::Status::unavailable("busy")));
        // What the client makes up from a broken connection carries the error.
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(is_transport_failure(&tonic::Status::from_error(Box::new(
            io
        ))));
    }

    #[test]
    fn missing_socket_is_unreachable_with_a_hint() {
        let e = Ipamd::connect(Path::new("/nonexistent/cnit/ipamd.sock")).unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, RpcError::Unreachable { .. }));
        assert!(s.contains("aws-node pod is running"), "{s}");
        assert!(s.contains("/nonexistent/cnit/ipamd.sock"), "{s}");
    }
}
