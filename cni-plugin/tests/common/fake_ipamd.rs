//! A stand-in ipamd for plugin tests and benches: `rpc.CNIBackend`, `awscni.ext.v1.CniExtensions`
//! and `grpc.health.v1.Health` over a Unix socket, with an in-memory address pool keyed like
//! the real daemon: `(NetworkName, ContainerID, IfName)`.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use awscni_proto::ext::cni_extensions_server::{CniExtensions, CniExtensionsServer};
use awscni_proto::ext::{
    CheckAllocationReply, CheckAllocationRequest, GcReply, GcRequest, ReleasedAllocation,
};
use awscni_proto::rpc::cni_backend_server::{CniBackend, CniBackendServer};
use awscni_proto::rpc::{
    AddNetworkReply, AddNetworkRequest, DelNetworkReply, DelNetworkRequest, IpAllocationMetadata,
};
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

/// Key of an allocation.
pub type Key = (String, String, String);

/// Shared, inspectable state.
#[derive(Default)]
pub struct State {
    /// Live allocations.
    pub allocs: BTreeMap<Key, IpAllocationMetadata>,
    /// Addresses handed out at some point (to pick fresh ones).
    pub used: BTreeSet<Ipv4Addr>,
    /// Next candidate host number.
    pub next: u32,
    /// Answer ADD with `Success=false` (pool empty).
    pub exhausted: bool,
    /// Device number / route table for new allocations.
    pub device: i32,
    /// Route table id for new allocations (254 = main).
    pub table: i32,
    /// Requests seen, for assertions.
    pub adds: Vec<AddNetworkRequest>,
    /// DEL requests seen.
    pub dels: Vec<DelNetworkRequest>,
    /// GC requests seen.
    pub gcs: Vec<GcRequest>,
    /// When set, the only `ClientVersion` accepted (default: ours).
    pub required_version: Option<String>,
    /// `traceparent` metadata of the last AddNetwork call.
    pub last_traceparent: Option<String>,
    /// IPv6 mode: hand out addresses after this one instead of IPv4.
    pub v6_base: Option<std::net::Ipv6Addr>,
}

#[derive(Clone)]
struct Svc {
    base: Ipv4Addr,
    state: Arc<Mutex<State>>,
}

fn version_ok(st: &Mutex<State>, v: &str) -> Result<(), Status> {
    let want = st
        .lock()
        .unwrap()
        .required_version
        .clone()
        .unwrap_or_else(|| awscni_proto::VERSION.to_string());
    if v == want {
        Ok(())
    } else {
        Err(Status::failed_precondition(format!(
            "wrong client version {v:?} (!= {want:?})"
        )))
    }
}

#[tonic::async_trait]
impl CniBackend for Svc {
    async fn add_network(
        &self,
        req: Request<AddNetworkRequest>,
    ) -> Result<Response<AddNetworkReply>, Status> {
        let tp = req
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let r = req.into_inner();
        version_ok(&self.state, &r.client_version)?;
        let mut st = self.state.lock().unwrap();
        st.last_traceparent = tp;
        st.adds.push(r.clone());
        let key = (r.network_name, r.container_id, r.if_name);
        if let Some(m) = st.allocs.get(&key) {
            return Ok(Response::new(AddNetworkReply {
                success: true,
                ip_allocation_metadata: vec![m.clone()],
                ..Default::default()
            }));
        }
        if st.exhausted {
            return Ok(Response::new(AddNetworkReply::default()));
        }
        if let Some(b6) = st.v6_base {
            st.next += 1;
            let ip6 = std::net::Ipv6Addr::from(u128::from(b6) + u128::from(st.next));
            let m = IpAllocationMetadata {
                i_pv4_addr: String::new(),
                i_pv6_addr: ip6.to_string(),
                device_number: st.device,
                route_table_id: st.table,
            };
            st.allocs.insert(key, m.clone());
            return Ok(Response::new(AddNetworkReply {
                success: true,
                ip_allocation_metadata: vec![m],
                ..Default::default()
            }));
        }
        let base = u32::from(self.base);
        let ip = loop {
            st.next += 1;
            let cand = Ipv4Addr::from(base + st.next);
            if !st.used.contains(&cand) {
                break cand;
            }
        };
        st.used.insert(ip);
        let m = IpAllocationMetadata {
            i_pv4_addr: ip.to_string(),
            i_pv6_addr: String::new(),
            device_number: st.device,
            route_table_id: st.table,
        };
        st.allocs.insert(key, m.clone());
        Ok(Response::new(AddNetworkReply {
            success: true,
            ip_allocation_metadata: vec![m],
            ..Default::default()
        }))
    }

    async fn del_network(
        &self,
        req: Request<DelNetworkRequest>,
    ) -> Result<Response<DelNetworkReply>, Status> {
        let r = req.into_inner();
        version_ok(&self.state, &r.client_version)?;
        let mut st = self.state.lock().unwrap();
        st.dels.push(r.clone());
        let key = (r.network_name, r.container_id, r.if_name);
        match st.allocs.remove(&key) {
            Some(m) => Ok(Response::new(DelNetworkReply {
                success: true,
                ip_allocation_metadata: vec![m],
                ..Default::default()
            })),
            // Exactly what upstream's daemon returns (wire-contract.md §7).
            None => Err(Status::unknown("datastore: unknown pod")),
        }
    }
}

#[tonic::async_trait]
impl CniExtensions for Svc {
    async fn garbage_collect(&self, req: Request<GcRequest>) -> Result<Response<GcReply>, Status> {
        let r = req.into_inner();
        version_ok(&self.state, &r.client_version)?;
        let mut st = self.state.lock().unwrap();
        st.gcs.push(r.clone());
        let valid: BTreeSet<(String, String)> = r
            .valid_attachments
            .iter()
            .map(|a| (a.container_id.clone(), a.if_name.clone()))
            .collect();
        let stale: Vec<Key> = st
            .allocs
            .keys()
            .filter(|(n, c, i)| *n == r.network_name && !valid.contains(&(c.clone(), i.clone())))
            .cloned()
            .collect();
        let mut released = Vec::new();
        for k in stale {
            if let Some(m) = st.allocs.remove(&k) {
                released.push(ReleasedAllocation {
                    container_id: k.1.clone(),
                    if_name: k.2.clone(),
                    allocation: Some(m),
                });
            }
        }
        Ok(Response::new(GcReply { released }))
    }

    async fn check_allocation(
        &self,
        req: Request<CheckAllocationRequest>,
    ) -> Result<Response<CheckAllocationReply>, Status> {
        let r = req.into_inner();
        version_ok(&self.state, &r.client_version)?;
        let st = self.state.lock().unwrap();
        let key = (r.network_name, r.container_id, r.if_name);
        Ok(Response::new(match st.allocs.get(&key) {
            Some(m) => CheckAllocationReply {
                found: true,
                allocation: Some(m.clone()),
            },
            None => CheckAllocationReply::default(),
        }))
    }
}

/// A running stand-in daemon. Dropping it stops the server and removes the socket.
pub struct FakeIpamd {
    /// Socket path.
    pub socket: PathBuf,
    /// Shared state.
    pub state: Arc<Mutex<State>>,
    rt: tokio::runtime::Runtime,
    health: tonic_health::server::HealthReporter,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakeIpamd {
    /// Starts a server on `socket`, handing out addresses after `base`.
    pub fn start(socket: &Path, base: Ipv4Addr) -> Self {
        let _ = std::fs::remove_file(socket);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(Mutex::new(State {
            table: 254,
            ..Default::default()
        }));
        let svc = Svc {
            base,
            state: state.clone(),
        };
        let (health, health_svc) = tonic_health::server::health_reporter();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let listener = rt.block_on(async {
            let l = tokio::net::UnixListener::bind(socket).unwrap();
            health.set_service_status("", ServingStatus::Serving).await;
            l
        });
        rt.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(CniBackendServer::new(svc.clone()))
                .add_service(CniExtensionsServer::new(svc))
                .add_service(health_svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async {
                        let _ = rx.await;
                    },
                )
                .await
                .unwrap();
        });
        Self {
            socket: socket.to_path_buf(),
            state,
            rt,
            health,
            stop: Some(tx),
        }
    }

    /// Sets the overall health status.
    pub fn set_serving(&self, serving: bool) {
        let s = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.rt.block_on(self.health.set_service_status("", s));
    }

    /// Number of live allocations.
    pub fn live(&self) -> usize {
        self.state.lock().unwrap().allocs.len()
    }

    /// Stops serving (the socket file is removed).
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for FakeIpamd {
    fn drop(&mut self) {
        self.stop();
    }
}
