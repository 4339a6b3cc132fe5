//! [`Sim`]: the shared emulator state plus the HTTP front ends (EC2, IMDS, admin).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::faults::Faults;
use crate::model::{ApiResult, InstanceInfo, Model, ModelConfig, NetState};
use crate::view::{EniView, FabricView, NodeView, SubnetView};

/// Configuration of a [`Sim`].
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// VPC IPv4 CIDR (default 10.0.0.0/16).
    pub vpc_cidr: Ipv4Net,
    /// Region (default `us-west-2`).
    pub region: String,
    /// Default availability zone (default `us-west-2a`).
    pub az: String,
    /// Account ID shown as the owner of every resource.
    pub account_id: String,
    /// Time an attach spends in `attaching` (default 0: immediate).
    pub attach_delay: Duration,
    /// Time a detach spends in `detaching` (default 0: immediate).
    pub detach_delay: Duration,
    /// Lag before a change shows in IMDS and the fabric view (default 0).
    pub imds_lag: Duration,
    /// Time a new ENI is `NotFound` to `DescribeNetworkInterfaces` (default 0), like EC2's
    /// eventual consistency right after `CreateNetworkInterface`.
    pub describe_lag: Duration,
    /// Seed for every random choice: the same seed and call sequence give the same IDs, MACs,
    /// addresses and injected faults.
    pub seed: u64,
    /// Pick count-based addresses at random (seeded) instead of lowest free first.
    pub random_addresses: bool,
    /// Refuse EC2 requests without an `Authorization` header (SigV4 is never validated, only
    /// required, to catch unsigned calls).
    pub require_auth: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            vpc_cidr: Ipv4Net::new(std::net::Ipv4Addr::new(10, 0, 0, 0), 16).unwrap_or_default(),
            region: "us-west-2".into(),
            az: "us-west-2a".into(),
            account_id: "123456789012".into(),
            attach_delay: Duration::ZERO,
            detach_delay: Duration::ZERO,
            imds_lag: Duration::ZERO,
            describe_lag: Duration::ZERO,
            seed: 1,
            random_addresses: false,
            require_auth: true,
        }
    }
}

/// Per-action call statistics (admin API).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ActionCounters {
    /// Requests received for the action.
    pub calls: u64,
    /// Requests answered with an error (modelled, injected or throttled).
    pub errors: u64,
    /// Of those, rejected by the token-bucket throttle.
    pub throttled: u64,
}

/// The emulator: one VPC model shared by the EC2 API, every instance's IMDS and the fabric.
#[derive(Debug)]
pub struct Sim {
    pub(crate) model: Mutex<Model>,
    pub(crate) faults: Mutex<Faults>,
    pub(crate) counters: Mutex<BTreeMap<String, ActionCounters>>,
    pub(crate) imds_tokens: Mutex<BTreeMap<String, Instant>>,
    pub(crate) require_auth: bool,
    gen_tx: watch::Sender<u64>,
}

/// Addresses of the loopback listeners started by [`Sim::serve_loopback`].
#[derive(Debug, Clone)]
pub struct LoopbackEndpoints {
    /// EC2 Query API (`http://<ec2>/`).
    pub ec2: SocketAddr,
    /// Admin API.
    pub admin: SocketAddr,
    /// IMDS of every instance that existed when the listeners were started.
    pub imds: BTreeMap<String, SocketAddr>,
}

impl LoopbackEndpoints {
    /// IMDS address of `instance_id`, if it was served.
    pub fn imds_for(&self, instance_id: &str) -> Option<SocketAddr> {
        self.imds.get(instance_id).copied()
    }

    /// `http://…` URL of the EC2 endpoint.
    pub fn ec2_url(&self) -> String {
        format!("http://{}", self.ec2)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the model half-updated in a way that matters
    // more than losing the whole emulator, so keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sim {
    /// A new emulator with an empty VPC (no subnets, one default security group).
    pub fn new(cfg: SimConfig) -> Arc<Sim> {
        let now = Instant::now();
        let model = Model::new(
            ModelConfig {
                vpc_cidr: cfg.vpc_cidr,
                region: cfg.region.clone(),
                az: cfg.az.clone(),
                account_id: cfg.account_id.clone(),
                seed: cfg.seed,
                attach_delay: cfg.attach_delay,
                detach_delay: cfg.detach_delay,
                imds_lag: cfg.imds_lag,
                describe_lag: cfg.describe_lag,
                random_addresses: cfg.random_addresses,
            },
            now,
        );
        let (gen_tx, _) = watch::channel(0);
        Arc::new(Sim {
            model: Mutex::new(model),
            faults: Mutex::new(Faults::new(cfg.seed ^ 0x5eed_fa17)),
            counters: Mutex::new(BTreeMap::new()),
            imds_tokens: Mutex::new(BTreeMap::new()),
            require_auth: cfg.require_auth,
            gen_tx,
        })
    }

    /// Runs `f` on the model at `now`: completes due transitions first, records the visible
    /// state afterwards and notifies subscribers if it changed.
    pub(crate) fn with_model<R>(&self, f: impl FnOnce(&mut Model, Instant) -> R) -> R {
        let now = Instant::now();
        let (r, changed, delays) = {
            let mut m = lock(&self.model);
            m.advance(now);
            m.record(now);
            let before = m.generation();
            let r = f(&mut m, now);
            m.advance(now);
            m.record(now);
            let changed = m.generation() != before;
            let lag = m.config().imds_lag;
            let mut delays = Vec::new();
            for t in m.take_new_pending() {
                let d = t.saturating_duration_since(now);
                delays.push(d);
                if !lag.is_zero() {
                    delays.push(d + lag);
                }
            }
            if changed && !lag.is_zero() {
                delays.push(lag);
            }
            (r, changed, delays)
        };
        if changed {
            self.notify();
        }
        if !delays.is_empty() {
            self.schedule(delays);
        }
        r
    }

    fn notify(&self) {
        self.gen_tx.send_modify(|g| *g += 1);
    }

    /// Wakes up after each delay to complete pending transitions and to announce changes
    /// that become visible once the IMDS lag has passed. Outside a Tokio runtime nothing is
    /// scheduled; the state still advances lazily on the next access.
    fn schedule(&self, delays: Vec<Duration>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tx = self.gen_tx.clone();
        // The task cannot hold an Arc<Sim> (we only have &self); it only bumps the counter,
        // and readers advance the model themselves.
        for d in delays {
            let tx = tx.clone();
            handle.spawn(async move {
                tokio::time::sleep(d + Duration::from_millis(1)).await;
                tx.send_modify(|g| *g += 1);
            });
        }
    }

    /// Adds a subnet; `az` defaults to the configured one. Returns its `subnet-…` ID.
    pub fn add_subnet(
        &self,
        cidr: Ipv4Net,
        az: Option<&str>,
        tags: &[(String, String)],
    ) -> ApiResult<String> {
        self.with_model(|m, _| m.create_subnet(cidr, az, tags))
    }

    /// Adds a security group named `name`; returns its `sg-…` ID.
    pub fn add_security_group(&self, name: &str) -> String {
        self.with_model(|m, _| m.add_group(name))
    }

    /// Launches an instance of `instance_type` in `subnet_id` with its primary ENI attached at
    /// device 0 (state `attached`, `DeleteOnTermination` true).
    pub fn add_instance(&self, instance_type: &str, subnet_id: &str) -> ApiResult<InstanceInfo> {
        self.with_model(|m, _| m.run_instance(instance_type, subnet_id))
    }

    /// IDs of every instance, in creation order.
    pub fn instance_ids(&self) -> Vec<String> {
        lock(&self.model).instances.keys().cloned().collect()
    }

    /// Changes attach/detach delays and the IMDS lag at run time.
    pub fn set_timing(&self, attach: Duration, detach: Duration, imds_lag: Duration) {
        self.with_model(|m, _| m.set_timing(attach, detach, imds_lag));
    }

    /// Changes the describe-after-create lag at run time.
    pub fn set_describe_lag(&self, lag: Duration) {
        self.with_model(|m, _| m.set_describe_lag(lag));
    }

    /// The state IMDS and the fabric see now (after the IMDS lag), with its generation.
    ///
    /// No `record` here: every change goes through [`Self::with_model`], which records, and
    /// `advance` records each transition it completes. Recording builds the whole network
    /// state, and IMDS calls this once per request.
    pub(crate) fn visible(&self) -> (u64, Arc<NetState>) {
        let now = Instant::now();
        let mut m = lock(&self.model);
        m.advance(now);
        m.visible(now)
    }

    /// What the fabric must make real now: attached ENIs only, lagging like IMDS.
    pub fn fabric_view(&self) -> FabricView {
        let (generation, state) = self.visible();
        let vpc_cidrs = vec![lock(&self.model).config().vpc_cidr];
        FabricView {
            generation,
            vpc_cidrs,
            subnets: state
                .subnets
                .iter()
                .map(|(id, cidr)| SubnetView {
                    subnet_id: id.clone(),
                    cidr: *cidr,
                    gateway: gateway_of(cidr),
                })
                .collect(),
            nodes: state
                .nodes
                .iter()
                .map(|n| NodeView {
                    instance_id: n.instance_id.clone(),
                    enis: n
                        .enis
                        .iter()
                        .map(|e| EniView {
                            eni_id: e.eni_id.clone(),
                            mac: e.mac,
                            device_index: e.device_index,
                            network_card: e.card,
                            subnet_cidr: e.subnet_cidr,
                            primary_ip: e.primary_ip,
                            secondary_ips: e.secondaries.clone(),
                            prefixes: e.prefixes.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// A receiver of the change counter: it moves whenever something the fabric can see may
    /// have changed (including a delayed attach completing or the IMDS lag passing). Call
    /// [`Sim::fabric_view`] after each change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.gen_tx.subscribe()
    }

    /// Checks the subnet bookkeeping against the ENIs (no duplicate, reserved or
    /// prefix-covered address; counters consistent). For tests; returns the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        lock(&self.model).check_invariants()
    }

    /// Per-action counters.
    pub fn counters(&self) -> BTreeMap<String, ActionCounters> {
        lock(&self.counters).clone()
    }

    /// The EC2 Query API, served at `/`.
    pub fn ec2_router(self: &Arc<Self>) -> axum::Router {
        crate::ec2::router(self.clone())
    }

    /// IMDSv2 for `instance_id` (the fabric binds one per node at 169.254.169.254:80).
    pub fn imds_router(self: &Arc<Self>, instance_id: &str) -> axum::Router {
        crate::imds::router(self.clone(), instance_id.to_string())
    }

    /// The admin API (JSON): counters, faults, timing.
    pub fn admin_router(self: &Arc<Self>) -> axum::Router {
        crate::admin::router(self.clone())
    }

    /// Binds the EC2 API, the admin API and one IMDS per existing instance on 127.0.0.1
    /// ephemeral ports, serving them on the current Tokio runtime.
    pub async fn serve_loopback(self: &Arc<Self>) -> std::io::Result<LoopbackEndpoints> {
        let ec2 = serve(self.ec2_router()).await?;
        let admin = serve(self.admin_router()).await?;
        let mut imds = BTreeMap::new();
        for id in self.instance_ids() {
            let addr = serve(self.imds_router(&id)).await?;
            imds.insert(id, addr);
        }
        Ok(LoopbackEndpoints { ec2, admin, imds })
    }

    /// Serves the IMDS of `instance_id` on a 127.0.0.1 ephemeral port.
    pub async fn serve_imds_loopback(
        self: &Arc<Self>,
        instance_id: &str,
    ) -> std::io::Result<SocketAddr> {
        serve(self.imds_router(instance_id)).await
    }
}

/// The VPC router's address in a subnet: network + 1.
pub fn gateway_of(cidr: &Ipv4Net) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(cidr.network()).wrapping_add(1))
}

/// Serves `router` on a fresh 127.0.0.1 port in the background; returns the address.
pub async fn serve(router: axum::Router) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!(error = %e, %addr, "vpcsim listener stopped");
        }
    });
    Ok(addr)
}
