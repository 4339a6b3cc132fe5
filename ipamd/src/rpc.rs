//! gRPC services on ipamd's Unix socket: upstream's `rpc.CNIBackend` and
//! `rpc.ConfigServerBackend`, our `awscni.ext.v1.CniExtensions`, and `grpc.health.v1`.
//!
//! Wire behaviour follows wire-contract.md §4–7: the `ClientVersion` rule (own version, `""` and
//! an allow-list accepted; anything else `FAILED_PRECONDITION` with upstream's message), ADD with
//! an empty key part → `Success=false` with status OK, no address → `Success=false` with status
//! OK, DEL of an unknown key → status `UNKNOWN` whose message is exactly `datastore: unknown pod`.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use awscni_proto::ext::cni_extensions_server::{CniExtensions, CniExtensionsServer};
use awscni_proto::ext::{
    CheckAllocationReply, CheckAllocationRequest, GcReply, GcRequest, ReleasedAllocation,
};
use awscni_proto::rpc::cni_backend_server::{CniBackend, CniBackendServer};
use awscni_proto::rpc::config_server_backend_server::{
    ConfigServerBackend, ConfigServerBackendServer,
};
use awscni_proto::rpc::{
    AddNetworkReply, AddNetworkRequest, DelNetworkReply, DelNetworkRequest, IpAllocationMetadata,
    NetworkPolicyAgentConfigReply,
};
use tonic::{Request, Response, Status};

use crate::daemon::{AddOutcome, Cloud, Core, Host, OpError};
use crate::datastore::{Assignment, DsError, IpamKey, PodMeta};

/// The `ClientVersion` policy of wire-contract.md §4.
pub fn client_version_ok(client: &str, own: &str, allow: &[String]) -> bool {
    client.is_empty() || client == own || allow.iter().any(|a| a == client)
}

/// Upstream's rejection, same code and message format.
fn version_status(client: &str, own: &str) -> Status {
    tracing::warn!(
        client,
        server = own,
        "rejecting plugin with a different ClientVersion"
    );
    Status::failed_precondition(format!("wrong client version {client:?} (!= {own:?})"))
}

fn metadata(a: &Assignment) -> IpAllocationMetadata {
    IpAllocationMetadata {
        i_pv4_addr: a.addr.to_string(),
        i_pv6_addr: String::new(),
        device_number: i32::try_from(a.device_number).unwrap_or(i32::MAX),
        route_table_id: i32::try_from(a.route_table).unwrap_or(i32::MAX),
    }
}

/// All our gRPC services over one [`Core`].
pub struct Services<C: Cloud, H: Host> {
    core: Arc<Core<C, H>>,
    version: String,
}

impl<C: Cloud, H: Host> Clone for Services<C, H> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            version: self.version.clone(),
        }
    }
}

impl<C: Cloud, H: Host> Services<C, H> {
    /// Services answering with `version` as our own version string.
    pub fn new(core: Arc<Core<C, H>>, version: &str) -> Self {
        Self {
            core,
            version: version.to_owned(),
        }
    }

    fn check_version(&self, client: &str) -> Result<(), Status> {
        if client_version_ok(
            client,
            &self.version,
            &self.core.cfg.client_version_allowlist,
        ) {
            Ok(())
        } else {
            Err(version_status(client, &self.version))
        }
    }

    /// VPC CIDRs for the legacy reply field: VPC CIDRs plus the SNAT exclusions, unless SNAT is
    /// external (upstream).
    fn vpc_cidrs(&self) -> Vec<String> {
        let cfg = &self.core.cfg;
        let mut v: Vec<String> = self
            .core
            .node
            .vpc_cidrs
            .iter()
            .map(|c| c.to_string())
            .collect();
        if !cfg.external_snat {
            v.extend(cfg.exclude_snat_cidrs.iter().map(|c| c.to_string()));
        }
        v
    }
}

#[tonic::async_trait]
impl<C: Cloud, H: Host> CniBackend for Services<C, H> {
    async fn add_network(
        &self,
        request: Request<AddNetworkRequest>,
    ) -> Result<Response<AddNetworkReply>, Status> {
        let r = request.into_inner();
        self.core
            .counters
            .add_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.check_version(&r.client_version)?;
        let fail = || Response::new(AddNetworkReply::default());
        if r.requires_multi_nic_attachment {
            // Multi-NIC is later scope; upstream answers Success=false when it is off.
            tracing::warn!(container = %r.container_id, "multi-NIC attachment requested; not supported");
            return Ok(fail());
        }
        let key = IpamKey::new(&r.network_name, &r.container_id, &r.if_name);
        if !key.is_valid() {
            tracing::warn!(?key, "ADD with an empty key part");
            return Ok(fail());
        }
        let meta = PodMeta {
            namespace: r.k8s_pod_namespace.clone(),
            name: r.k8s_pod_name.clone(),
            interfaces_count: 1,
        };
        match self.core.add(&key, &meta).await {
            Ok(AddOutcome::Assigned(a)) => Ok(Response::new(AddNetworkReply {
                success: true,
                ip_allocation_metadata: vec![metadata(&a)],
                use_external_snat: self.core.cfg.external_snat,
                vp_cv4_cid_rs: self.vpc_cidrs(),
                network_policy_mode: String::new(),
                ..Default::default()
            })),
            Ok(AddOutcome::NoAddress) => {
                tracing::warn!(%key, "no address available for ADD");
                Ok(fail())
            }
            Err(OpError::Ds(e)) => {
                tracing::warn!(%key, error = %e, "ADD refused");
                Ok(fail())
            }
            Err(e @ OpError::Persist(_)) => Err(Status::internal(e.to_string())),
        }
    }

    async fn del_network(
        &self,
        request: Request<DelNetworkRequest>,
    ) -> Result<Response<DelNetworkReply>, Status> {
        let r = request.into_inner();
        self.core.counters.del_requests.inc(&r.reason);
        self.check_version(&r.client_version)?;
        let key = IpamKey::new(&r.network_name, &r.container_id, &r.if_name);
        match self.core.del(&key) {
            Ok(a) => Ok(Response::new(DelNetworkReply {
                success: true,
                ip_allocation_metadata: vec![metadata(&a)],
                ..Default::default()
            })),
            // A plain error in grpc-go becomes UNKNOWN with the text as description; upstream
            // plugins match on the text (wire-contract.md §7).
            Err(OpError::Ds(DsError::UnknownPod)) => {
                Err(Status::unknown(DsError::UnknownPod.to_string()))
            }
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }
}

#[tonic::async_trait]
impl<C: Cloud, H: Host> ConfigServerBackend for Services<C, H> {
    async fn get_network_policy_configs(
        &self,
        _request: Request<()>,
    ) -> Result<Response<NetworkPolicyAgentConfigReply>, Status> {
        let node = &self.core.node;
        Ok(Response::new(NetworkPolicyAgentConfigReply {
            network_policy_mode: self
                .core
                .cfg
                .network_policy_enforcing_mode
                .as_str()
                .to_owned(),
            multi_nic_enabled: false,
            node_i_pv4: node.node_ip.map(|i| i.to_string()).unwrap_or_default(),
            node_i_pv6: String::new(),
            instance_id: node.instance_id.clone(),
            region: node.region.clone(),
        }))
    }
}

#[tonic::async_trait]
impl<C: Cloud, H: Host> CniExtensions for Services<C, H> {
    async fn garbage_collect(
        &self,
        request: Request<GcRequest>,
    ) -> Result<Response<GcReply>, Status> {
        let r = request.into_inner();
        self.check_version(&r.client_version)?;
        if r.network_name.is_empty() {
            return Err(Status::invalid_argument("GC needs a NetworkName"));
        }
        let valid: HashSet<(String, String)> = r
            .valid_attachments
            .into_iter()
            .map(|v| (v.container_id, v.if_name))
            .collect();
        let released = self.core.gc(&r.network_name, &valid);
        tracing::info!(network = %r.network_name, released = released.len(), "CNI GC");
        Ok(Response::new(GcReply {
            released: released
                .iter()
                .map(|a| ReleasedAllocation {
                    container_id: a.key.container_id.clone(),
                    if_name: a.key.if_name.clone(),
                    allocation: Some(metadata(a)),
                })
                .collect(),
        }))
    }

    async fn check_allocation(
        &self,
        request: Request<CheckAllocationRequest>,
    ) -> Result<Response<CheckAllocationReply>, Status> {
        let r = request.into_inner();
        self.check_version(&r.client_version)?;
        let key = IpamKey::new(&r.network_name, &r.container_id, &r.if_name);
        let found = self.core.lookup(&key);
        Ok(Response::new(CheckAllocationReply {
            found: found.is_some(),
            allocation: found.as_ref().map(metadata),
        }))
    }
}

/// Binds the Unix socket: removes a stale socket file first, then sets mode 0660 (on failure the
/// socket is removed and start-up fails, as upstream).
pub fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(path = %path.display(), "removed stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = tokio::net::UnixListener::bind(path)?;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(l)
}

/// The tonic router with every service, plus the health reporter.
pub fn router<C: Cloud, H: Host>(
    svc: Services<C, H>,
) -> (
    tonic::transport::server::Router,
    tonic_health::server::HealthReporter,
) {
    let (reporter, health) = tonic_health::server::health_reporter();
    let router = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(CniBackendServer::new(svc.clone()))
        .add_service(ConfigServerBackendServer::new(svc.clone()))
        .add_service(CniExtensionsServer::new(svc));
    (router, reporter)
}

/// Sets `""` and `grpc.health.v1.aws-node` to `status`.
pub async fn set_health(reporter: &tonic_health::server::HealthReporter, serving: bool) {
    let st = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    reporter.set_service_status("", st).await;
    reporter
        .set_service_status(awscni_proto::HEALTH_SERVICE_NAME, st)
        .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::daemon::tests::{FakeCloud, core};

    #[test]
    fn version_policy() {
        let allow = vec!["v1.23.1".to_string()];
        for (client, ok) in [
            ("", true),
            ("0.1.0", true),
            ("v1.23.1", true),
            ("v1.22.0", false),
        ] {
            assert_eq!(client_version_ok(client, "0.1.0", &allow), ok, "{client}");
        }
        let s = version_status("v1.22.0", "0.1.0");
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            s.message(),
            r#"wrong client version "v1.22.0" (!= "0.1.0")"#
        );
    }

    fn add_req(c: &str, version: &str) -> AddNetworkRequest {
        AddNetworkRequest {
            k8s_pod_name: "p".into(),
            k8s_pod_namespace: "default".into(),
            if_name: "eth0".into(),
            network_name: "aws-cni".into(),
            container_id: c.into(),
            client_version: version.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn add_del_over_services() {
        let dir = tempfile::tempdir().unwrap();
        let c = core(
            dir.path(),
            &[("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "192.168.0.0/16")],
            FakeCloud::with_primary(9),
        )
        .await;
        let svc = Services::new(c.clone(), "1.0");
        let r = svc
            .add_network(Request::new(add_req("c1", "1.0")))
            .await
            .unwrap()
            .into_inner();
        assert!(r.success);
        assert_eq!(r.ip_allocation_metadata.len(), 1);
        assert_eq!(r.ip_allocation_metadata[0].route_table_id, 254);
        assert_eq!(r.vp_cv4_cid_rs, ["10.0.0.0/16", "192.168.0.0/16"]);
        let ip = r.ip_allocation_metadata[0].i_pv4_addr.clone();
        // Wrong version.
        let e = svc
            .add_network(Request::new(add_req("c2", "9.9")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        // Empty key part: Success=false, status OK.
        let r = svc
            .add_network(Request::new(add_req("", "")))
            .await
            .unwrap()
            .into_inner();
        assert!(!r.success && r.ip_allocation_metadata.is_empty());
        // CHECK.
        let chk = svc
            .check_allocation(Request::new(CheckAllocationRequest {
                network_name: "aws-cni".into(),
                container_id: "c1".into(),
                if_name: "eth0".into(),
                client_version: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(chk.found);
        assert_eq!(chk.allocation.unwrap().i_pv4_addr, ip);
        // DEL, then DEL again: unknown pod.
        let del = DelNetworkRequest {
            network_name: "aws-cni".into(),
            container_id: "c1".into(),
            if_name: "eth0".into(),
            ..Default::default()
        };
        let r = svc
            .del_network(Request::new(del.clone()))
            .await
            .unwrap()
            .into_inner();
        assert!(r.success);
        assert_eq!(r.ip_allocation_metadata[0].i_pv4_addr, ip);
        let e = svc.del_network(Request::new(del)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unknown);
        assert_eq!(e.message(), "datastore: unknown pod");
    }

    #[tokio::test]
    async fn gc_releases_only_invalid_attachments() {
        let dir = tempfile::tempdir().unwrap();
        let c = core(dir.path(), &[], FakeCloud::with_primary(9)).await;
        let svc = Services::new(c.clone(), "1.0");
        for id in ["keep", "drop1", "drop2"] {
            assert!(
                svc.add_network(Request::new(add_req(id, "")))
                    .await
                    .unwrap()
                    .into_inner()
                    .success
            );
        }
        let r = svc
            .garbage_collect(Request::new(GcRequest {
                network_name: "aws-cni".into(),
                valid_attachments: vec![awscni_proto::ext::ValidAttachment {
                    container_id: "keep".into(),
                    if_name: "eth0".into(),
                }],
                client_version: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        let mut gone: Vec<_> = r.released.iter().map(|x| x.container_id.clone()).collect();
        gone.sort();
        assert_eq!(gone, ["drop1", "drop2"]);
        assert!(c.lookup(&IpamKey::new("aws-cni", "keep", "eth0")).is_some());
    }

    #[tokio::test]
    async fn unix_socket_end_to_end_with_the_plugin_client() {
        let dir = tempfile::tempdir().unwrap();
        let c = core(dir.path(), &[], FakeCloud::with_primary(9)).await;
        let sock = dir.path().join("run").join("ipamd.sock");
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        std::fs::write(&sock, "stale").unwrap();
        let listener = bind_unix(&sock).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let (router, reporter) = router(Services::new(c.clone(), awscni_proto::VERSION));
        set_health(&reporter, true).await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            async {
                let _ = rx.await;
            },
        ));
        let sock2 = sock.clone();
        let (healthy, reply) = tokio::task::spawn_blocking(move || {
            let cli = aws_cni::ipamd::Ipamd::connect(&sock2).unwrap();
            let healthy = cli.healthy().unwrap();
            let reply = cli.add(add_req("c-sock", awscni_proto::VERSION)).unwrap();
            (healthy, reply)
        })
        .await
        .unwrap();
        assert!(healthy.0, "{healthy:?}");
        assert!(reply.success);
        assert!(
            c.lookup(&IpamKey::new("aws-cni", "c-sock", "eth0"))
                .is_some()
        );
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
