//! The emulated VPC: one in-memory state with AWS's semantics, and no I/O.
//!
//! Every operation takes `now` explicitly so time-dependent behaviour (attach/detach delays,
//! the IMDS lag) is deterministic and testable; the HTTP layers (`ec2`, `imds`) only parse,
//! call into this model under one lock, and render.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::Ipv4Net;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::types::{self, TypeLimits};

/// An EC2 API error: the `Code` and `Message` of the XML error envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// EC2 error code, e.g. `InvalidNetworkInterfaceID.NotFound`.
    pub code: String,
    /// Human-readable message (AWS wording where clients parse it).
    pub message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// `InvalidParameterValue` (400).
    pub fn invalid_value(message: impl Into<String>) -> Self {
        Self::new("InvalidParameterValue", message)
    }

    /// `InvalidParameterCombination` (400).
    pub fn invalid_combination(message: impl Into<String>) -> Self {
        Self::new("InvalidParameterCombination", message)
    }

    /// `MissingParameter` (400).
    pub fn missing(name: &str) -> Self {
        Self::new(
            "MissingParameter",
            format!("The request must contain the parameter {name}"),
        )
    }

    /// The HTTP status AWS uses for this code.
    pub fn http_status(&self) -> u16 {
        status_for_code(&self.code)
    }
}

/// HTTP status of an EC2 error code (shared/reference/ec2-imds-semantics.md §1.3).
pub fn status_for_code(code: &str) -> u16 {
    match code {
        "AuthFailure" | "MissingAuthenticationToken" => 401,
        "UnauthorizedOperation" => 403,
        "InternalError" | "InternalFailure" => 500,
        "RequestLimitExceeded" | "Unavailable" | "ServiceUnavailable" => 503,
        _ => 400,
    }
}

/// Result of a model operation.
pub type ApiResult<T> = Result<T, ApiError>;

/// Static configuration of the model.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// VPC IPv4 CIDR.
    pub vpc_cidr: Ipv4Net,
    /// Region name, e.g. `us-west-2`.
    pub region: String,
    /// Default availability zone for subnets created without one.
    pub az: String,
    /// Account ID shown as owner of every resource.
    pub account_id: String,
    /// Seed of every random choice (IDs, MACs, addresses in random mode).
    pub seed: u64,
    /// Time an attachment spends in `attaching` before it is `attached`.
    pub attach_delay: Duration,
    /// Time an attachment spends in `detaching` before the ENI is `available` again.
    pub detach_delay: Duration,
    /// How long a change takes to become visible in IMDS and the fabric view.
    pub imds_lag: Duration,
    /// How long a new ENI stays invisible to `DescribeNetworkInterfaces` (EC2's eventual
    /// consistency: a just-created ENI may briefly be `NotFound`).
    pub describe_lag: Duration,
    /// Pick count-based addresses at random (seeded) instead of lowest-free-first. AWS picks
    /// addresses itself and clients must not rely on the order; random mode shakes out such
    /// reliance and fragments subnets like a long-lived VPC.
    pub random_addresses: bool,
}

/// Attachment state (`attachment.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachState {
    /// Attach requested, not complete yet.
    Attaching,
    /// Attached: the NIC is present in the instance.
    Attached,
    /// Detach requested, not complete yet.
    Detaching,
}

impl AttachState {
    /// The EC2 wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachState::Attaching => "attaching",
            AttachState::Attached => "attached",
            AttachState::Detaching => "detaching",
        }
    }
}

/// One ENI attachment.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// `eni-attach-…`.
    pub id: String,
    /// Instance the ENI is attached to.
    pub instance_id: String,
    /// Device index (unique per instance and card).
    pub device_index: u32,
    /// Network card index.
    pub card: u32,
    /// Current state.
    pub state: AttachState,
    /// `DeleteOnTermination`.
    pub delete_on_termination: bool,
    /// When the pending `attaching`/`detaching` transition completes.
    pub pending_until: Option<Instant>,
    /// `AttachTime`.
    pub attach_time: SystemTime,
}

/// One ENI.
#[derive(Debug, Clone)]
pub struct Eni {
    /// `eni-…`.
    pub id: String,
    /// Subnet ID.
    pub subnet_id: String,
    /// Description.
    pub description: String,
    /// MAC address.
    pub mac: [u8; 6],
    /// Primary private IPv4.
    pub primary_ip: Ipv4Addr,
    /// Secondary private IPv4 addresses, in assignment order.
    pub secondaries: Vec<Ipv4Addr>,
    /// Delegated /28 prefixes, in assignment order.
    pub prefixes: Vec<Ipv4Net>,
    /// Security group IDs.
    pub groups: Vec<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// `InterfaceType` (`interface` unless the caller asked for another).
    pub interface_type: String,
    /// `SourceDestCheck`.
    pub source_dest_check: bool,
    /// The attachment, if any (also while `attaching`/`detaching`).
    pub attachment: Option<Attachment>,
    /// Until when `DescribeNetworkInterfaces` does not see the ENI yet (`None`: always seen).
    pub hidden_until: Option<Instant>,
}

impl Eni {
    /// EC2 `status` of the ENI.
    pub fn status(&self) -> &'static str {
        match self.attachment.as_ref().map(|a| a.state) {
            None => "available",
            Some(AttachState::Attaching) => "attaching",
            Some(AttachState::Attached) => "in-use",
            Some(AttachState::Detaching) => "detaching",
        }
    }

    /// IPv4 slots in use: primary + secondaries + one per prefix (AWS counts a /28 as one).
    pub fn slots(&self) -> usize {
        1 + self.secondaries.len() + self.prefixes.len()
    }
}

/// One subnet with its address bookkeeping.
#[derive(Debug, Clone)]
pub struct Subnet {
    /// `subnet-…`.
    pub id: String,
    /// CIDR (a /16 to /28, as AWS allows).
    pub cidr: Ipv4Net,
    /// Availability zone.
    pub az: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Individually assigned addresses (primaries and secondaries).
    used: BTreeSet<u32>,
    /// Network addresses of assigned /28 prefixes.
    prefixes: BTreeSet<u32>,
}

impl Subnet {
    fn net(&self) -> u32 {
        u32::from(self.cidr.network())
    }
    fn first_usable(&self) -> u32 {
        // network, VPC router (+1), DNS (+2), reserved (+3)
        self.net() + 4
    }
    fn last_usable(&self) -> u32 {
        // the last address (broadcast) is reserved too
        u32::from(self.cidr.broadcast()) - 1
    }
    /// Usable addresses of the empty subnet: size − 5.
    pub fn usable(&self) -> u64 {
        (1u64 << (32 - u32::from(self.cidr.prefix_len()))) - 5
    }
    /// `AvailableIpAddressCount`: usable − individual addresses − 16 × prefixes.
    pub fn available(&self) -> u64 {
        self.usable()
            .saturating_sub(self.used.len() as u64 + 16 * self.prefixes.len() as u64)
    }
    fn in_prefix(&self, a: u32) -> bool {
        self.prefixes.contains(&(a & !15))
    }
    fn is_reserved_or_outside(&self, a: u32) -> bool {
        a < self.first_usable() || a > self.last_usable()
    }
    /// Whether `a` can be assigned as an individual address right now.
    fn ip_free(&self, a: u32) -> bool {
        !self.is_reserved_or_outside(a) && !self.used.contains(&a) && !self.in_prefix(a)
    }
    /// Whether the aligned /28 at `base` is usable as a prefix right now.
    fn block_free(&self, base: u32) -> bool {
        base & 15 == 0
            && base >= self.first_usable()
            && base.saturating_add(15) <= self.last_usable()
            && !self.prefixes.contains(&base)
            && self.used.range(base..=base + 15).next().is_none()
    }
    /// Free individual addresses (not reserved, not used, not inside a prefix).
    fn free_ips(&self) -> u64 {
        let in_prefixes: u64 = 16 * self.prefixes.len() as u64;
        self.usable()
            .saturating_sub(self.used.len() as u64 + in_prefixes)
    }

    fn pick_ips(&self, n: usize, rng: Option<&mut StdRng>) -> Option<Vec<u32>> {
        if (self.free_ips() as usize) < n {
            return None;
        }
        match rng {
            None => {
                let mut out = Vec::with_capacity(n);
                let mut a = self.first_usable();
                while out.len() < n && a <= self.last_usable() {
                    if self.ip_free(a) {
                        out.push(a);
                    }
                    a += 1;
                }
                (out.len() == n).then_some(out)
            }
            Some(rng) => {
                let mut free: Vec<u32> = (self.first_usable()..=self.last_usable())
                    .filter(|a| self.ip_free(*a))
                    .collect();
                if free.len() < n {
                    return None;
                }
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    let i = rng.random_range(0..free.len());
                    out.push(free.swap_remove(i));
                }
                Some(out)
            }
        }
    }

    fn pick_blocks(&self, n: usize) -> Option<Vec<u32>> {
        let mut out = Vec::with_capacity(n);
        let mut base = (self.first_usable() + 15) & !15;
        while out.len() < n && base.saturating_add(15) <= self.last_usable() {
            if self.block_free(base) {
                out.push(base);
            }
            base += 16;
        }
        (out.len() == n).then_some(out)
    }
}

/// One instance (node).
#[derive(Debug, Clone)]
pub struct Instance {
    /// `i-…`.
    pub id: String,
    /// Type limits.
    pub limits: TypeLimits,
    /// Subnet of the primary ENI.
    pub subnet_id: String,
    /// Availability zone.
    pub az: String,
    /// Primary ENI ID.
    pub primary_eni: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// `LaunchTime`.
    pub launch_time: SystemTime,
    /// `ImageId` (fake, fixed).
    pub image_id: String,
}

/// One security group.
#[derive(Debug, Clone)]
pub struct SecurityGroup {
    /// `sg-…`.
    pub id: String,
    /// `GroupName`.
    pub name: String,
    /// `Description`.
    pub description: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// What [`Model::run_instance`] returns, and what the fabric and tests need to know about a
/// node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    /// `i-…`.
    pub instance_id: String,
    /// Instance type name.
    pub instance_type: String,
    /// Primary ENI ID.
    pub primary_eni_id: String,
    /// Primary private IPv4.
    pub primary_ip: Ipv4Addr,
    /// Primary ENI MAC.
    pub mac: [u8; 6],
    /// Subnet ID of the primary ENI.
    pub subnet_id: String,
    /// Its CIDR.
    pub subnet_cidr: Ipv4Net,
    /// Availability zone.
    pub az: String,
    /// Security groups of the primary ENI.
    pub security_group_ids: Vec<String>,
}

/// Request of [`Model::create_eni`].
#[derive(Debug, Clone, Default)]
pub struct CreateEni {
    /// `SubnetId`.
    pub subnet_id: String,
    /// `Description`.
    pub description: Option<String>,
    /// `SecurityGroupId.N`; empty means the VPC's default group.
    pub groups: Vec<String>,
    /// `PrivateIpAddress` or the `PrivateIpAddresses.N` entry with `Primary=true`.
    pub primary_ip: Option<Ipv4Addr>,
    /// Non-primary entries of `PrivateIpAddresses.N`.
    pub secondary_ips: Vec<Ipv4Addr>,
    /// `SecondaryPrivateIpAddressCount`.
    pub secondary_count: Option<u32>,
    /// `Ipv4PrefixCount`.
    pub prefix_count: Option<u32>,
    /// `Ipv4Prefix.N.Ipv4Prefix`.
    pub prefixes: Vec<Ipv4Net>,
    /// `Ipv6AddressCount` / `Ipv6PrefixCount` / `Ipv6Addresses` were given.
    pub ipv6_requested: bool,
    /// `InterfaceType`.
    pub interface_type: Option<String>,
    /// Tags from `TagSpecification.N` with resource type `network-interface`.
    pub tags: Vec<(String, String)>,
}

/// Request of [`Model::assign`].
#[derive(Debug, Clone, Default)]
pub struct Assign {
    /// `SecondaryPrivateIpAddressCount`.
    pub count: Option<u32>,
    /// `PrivateIpAddress.N`.
    pub ips: Vec<Ipv4Addr>,
    /// `Ipv4PrefixCount`.
    pub prefix_count: Option<u32>,
    /// `Ipv4Prefix.N`.
    pub prefixes: Vec<Ipv4Net>,
}

/// The slice of state IMDS and the fabric see: attached ENIs of every instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetState {
    /// Instances in creation order.
    pub nodes: Vec<NodeState>,
    /// Subnets in creation order: (id, CIDR).
    pub subnets: Vec<(String, Ipv4Net)>,
}

/// One instance in a [`NetState`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// `i-…`.
    pub instance_id: String,
    /// Instance type.
    pub instance_type: String,
    /// Availability zone.
    pub az: String,
    /// Whether the type has more than one network card (IMDS then serves `network-card`).
    pub multi_card: bool,
    /// Primary ENI ID.
    pub primary_eni: String,
    /// Attached ENIs (state `attached`), ordered by (card, device index).
    pub enis: Vec<EniState>,
}

/// One attached ENI in a [`NetState`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniState {
    /// `eni-…`.
    pub eni_id: String,
    /// MAC.
    pub mac: [u8; 6],
    /// Device index.
    pub device_index: u32,
    /// Network card.
    pub card: u32,
    /// Subnet ID.
    pub subnet_id: String,
    /// Subnet CIDR.
    pub subnet_cidr: Ipv4Net,
    /// Primary IPv4.
    pub primary_ip: Ipv4Addr,
    /// Secondary IPv4 addresses.
    pub secondaries: Vec<Ipv4Addr>,
    /// /28 prefixes.
    pub prefixes: Vec<Ipv4Net>,
    /// Security groups.
    pub groups: Vec<String>,
}

/// Formats a MAC the way EC2 and IMDS do (`0e:1a:2b:3c:4d:5e`).
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The whole emulated VPC.
#[derive(Debug)]
pub struct Model {
    cfg: ModelConfig,
    rng: StdRng,
    seq: u64,
    id_tag: u32,
    /// `vpc-…`.
    pub vpc_id: String,
    /// Subnets by ID.
    pub subnets: BTreeMap<String, Subnet>,
    subnet_order: Vec<String>,
    /// ENIs by ID (IDs sort in creation order).
    pub enis: BTreeMap<String, Eni>,
    /// Instances by ID (IDs sort in creation order).
    pub instances: BTreeMap<String, Instance>,
    /// Security groups by ID.
    pub groups: BTreeMap<String, SecurityGroup>,
    /// ID of the VPC's default security group.
    pub default_group: String,
    attachments: HashMap<String, String>,
    macs: HashSet<[u8; 6]>,
    history: VecDeque<(Instant, u64, Arc<NetState>)>,
    generation: u64,
    unattached_slot_limit: u32,
    new_pending: Vec<Instant>,
    clock: Instant,
}

impl Model {
    /// A VPC with no subnets, one default security group.
    pub fn new(cfg: ModelConfig, now: Instant) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let id_tag: u32 = rng.random();
        // An ENI that is not attached has no instance type to take its limit from; AWS lets it
        // hold as many addresses as the largest type allows.
        let unattached_slot_limit = types::all()
            .iter()
            .map(|t| t.ipv4_per_eni)
            .max()
            .unwrap_or(50);
        let mut m = Self {
            cfg,
            rng,
            seq: 0,
            id_tag,
            vpc_id: String::new(),
            subnets: BTreeMap::new(),
            subnet_order: Vec::new(),
            enis: BTreeMap::new(),
            instances: BTreeMap::new(),
            groups: BTreeMap::new(),
            default_group: String::new(),
            attachments: HashMap::new(),
            macs: HashSet::new(),
            history: VecDeque::new(),
            generation: 0,
            unattached_slot_limit,
            new_pending: Vec::new(),
            clock: now,
        };
        m.vpc_id = m.new_id("vpc");
        let sg = m.new_id("sg");
        m.groups.insert(
            sg.clone(),
            SecurityGroup {
                id: sg.clone(),
                name: "default".into(),
                description: "default VPC security group".into(),
                tags: BTreeMap::new(),
            },
        );
        m.default_group = sg;
        m.history.push_back((now, 0, Arc::new(NetState::default())));
        m
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Changes the timing knobs at run time.
    pub fn set_timing(&mut self, attach: Duration, detach: Duration, lag: Duration) {
        self.cfg.attach_delay = attach;
        self.cfg.detach_delay = detach;
        self.cfg.imds_lag = lag;
    }

    /// Changes the describe-after-create lag at run time.
    pub fn set_describe_lag(&mut self, lag: Duration) {
        self.cfg.describe_lag = lag;
    }

    /// Generation of the newest state (bumped by every change IMDS/the fabric can see).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Adds a security group (used by tests and the CLI to have more than the default one).
    pub fn add_group(&mut self, name: &str) -> String {
        let id = self.new_id("sg");
        self.groups.insert(
            id.clone(),
            SecurityGroup {
                id: id.clone(),
                name: name.to_string(),
                description: name.to_string(),
                tags: BTreeMap::new(),
            },
        );
        id
    }

    fn new_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        // 17 hex digits like real IDs; the sequence in the low digits keeps IDs sorted by
        // creation order, the seeded tag makes runs with different seeds distinguishable.
        format!("{prefix}-{:08x}{:09x}", self.id_tag, self.seq)
    }

    fn new_mac(&mut self) -> [u8; 6] {
        loop {
            let mut mac = [0u8; 6];
            self.rng.fill(&mut mac[1..]);
            // Locally administered unicast, like EC2's 02:/06:/0a:/0e: MACs.
            mac[0] = 0x02 | (self.rng.random::<u8>() & 0x0c);
            if self.macs.insert(mac) {
                return mac;
            }
        }
    }

    // ---------------------------------------------------------------- time

    /// Completes every `attaching`/`detaching` transition due at `now`, in due order, and
    /// records the visible state as of each one's due time (so the IMDS lag counts from when
    /// the attach really completed, not from when somebody looked).
    pub fn advance(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
        let mut due: Vec<(Instant, String)> = self
            .enis
            .values()
            .filter_map(|e| {
                let t = e.attachment.as_ref()?.pending_until?;
                (t <= now).then(|| (t, e.id.clone()))
            })
            .collect();
        due.sort();
        for (t, id) in due {
            let Some(eni) = self.enis.get_mut(&id) else {
                continue;
            };
            let Some(att) = eni.attachment.as_mut() else {
                continue;
            };
            att.pending_until = None;
            match att.state {
                AttachState::Attaching => att.state = AttachState::Attached,
                AttachState::Detaching => {
                    let att_id = att.id.clone();
                    eni.attachment = None;
                    self.attachments.remove(&att_id);
                }
                AttachState::Attached => {}
            }
            self.record(t);
        }
    }

    /// Due times of transitions started since the last call (for wake-up timers).
    pub fn take_new_pending(&mut self) -> Vec<Instant> {
        std::mem::take(&mut self.new_pending)
    }

    /// Records the visible state after a change; returns whether it differs from before.
    pub fn record(&mut self, now: Instant) -> bool {
        let state = self.net_state();
        let changed = self
            .history
            .back()
            .is_none_or(|(_, _, last)| **last != state);
        if changed {
            let now = self.history.back().map_or(now, |(t, _, _)| (*t).max(now));
            self.generation += 1;
            self.history
                .push_back((now, self.generation, Arc::new(state)));
        }
        // Keep only what can still become visible: everything newer than `now − lag`, plus the
        // newest entry older than that.
        let lag = self.cfg.imds_lag;
        while self.history.len() >= 2 && self.history[1].0 + lag <= now {
            self.history.pop_front();
        }
        changed
    }

    /// The state as IMDS and the fabric see it at `now` (lagging by the configured lag), and
    /// its generation.
    pub fn visible(&self, now: Instant) -> (u64, Arc<NetState>) {
        let lag = self.cfg.imds_lag;
        let mut best = self.history.front();
        for entry in &self.history {
            if entry.0 + lag <= now {
                best = Some(entry);
            }
        }
        let Some((_, generation, lagged)) = best else {
            return (0, Arc::new(NetState::default()));
        };
        // An instance boots with its primary ENI: a node created less than a lag ago is shown
        // in its first recorded (boot) state rather than missing; later changes still lag.
        let newest = self.history.back().map(|(_, _, s)| s.clone());
        let mut missing: Vec<NodeState> = Vec::new();
        for n in newest.iter().flat_map(|s| s.nodes.iter()) {
            if lagged.nodes.iter().any(|l| l.instance_id == n.instance_id) {
                continue;
            }
            let boot = self
                .history
                .iter()
                .find_map(|(_, _, s)| s.nodes.iter().find(|b| b.instance_id == n.instance_id));
            missing.push(boot.unwrap_or(n).clone());
        }
        let subnets_missing = newest
            .as_ref()
            .is_some_and(|n| n.subnets.len() != lagged.subnets.len());
        if missing.is_empty() && !subnets_missing {
            return (*generation, lagged.clone());
        }
        let mut merged = (**lagged).clone();
        merged.nodes.extend(missing);
        if let Some(n) = newest {
            merged.subnets = n.subnets.clone();
        }
        (*generation, Arc::new(merged))
    }

    fn net_state(&self) -> NetState {
        let subnets = self
            .subnet_order
            .iter()
            .filter_map(|id| self.subnets.get(id).map(|s| (s.id.clone(), s.cidr)))
            .collect();
        let mut nodes: Vec<NodeState> = self
            .instances
            .values()
            .map(|i| NodeState {
                instance_id: i.id.clone(),
                instance_type: i.limits.name.clone(),
                az: i.az.clone(),
                multi_card: i.limits.network_cards.len() > 1,
                primary_eni: i.primary_eni.clone(),
                enis: Vec::new(),
            })
            .collect();
        for eni in self.enis.values() {
            let Some(att) = &eni.attachment else { continue };
            if att.state != AttachState::Attached {
                continue;
            }
            let Some(node) = nodes.iter_mut().find(|n| n.instance_id == att.instance_id) else {
                continue;
            };
            let Some(subnet) = self.subnets.get(&eni.subnet_id) else {
                continue;
            };
            node.enis.push(EniState {
                eni_id: eni.id.clone(),
                mac: eni.mac,
                device_index: att.device_index,
                card: att.card,
                subnet_id: eni.subnet_id.clone(),
                subnet_cidr: subnet.cidr,
                primary_ip: eni.primary_ip,
                secondaries: eni.secondaries.clone(),
                prefixes: eni.prefixes.clone(),
                groups: eni.groups.clone(),
            });
        }
        for n in &mut nodes {
            n.enis.sort_by_key(|e| (e.card, e.device_index));
        }
        NetState { nodes, subnets }
    }

    // ---------------------------------------------------------------- lookups

    /// The ENI `id`, or `InvalidNetworkInterfaceID.NotFound` quoting it.
    pub fn eni(&self, id: &str) -> ApiResult<&Eni> {
        self.enis.get(id).ok_or_else(|| eni_not_found(id))
    }

    /// The subnet `id`, or `InvalidSubnetID.NotFound`.
    pub fn subnet(&self, id: &str) -> ApiResult<&Subnet> {
        self.subnets.get(id).ok_or_else(|| {
            ApiError::new(
                "InvalidSubnetID.NotFound",
                format!("The subnet ID '{id}' does not exist"),
            )
        })
    }

    /// The instance `id`, or `InvalidInstanceID.NotFound`.
    pub fn instance(&self, id: &str) -> ApiResult<&Instance> {
        self.instances.get(id).ok_or_else(|| {
            ApiError::new(
                "InvalidInstanceID.NotFound",
                format!("The instance ID '{id}' does not exist"),
            )
        })
    }

    /// The security group `id`, or `InvalidGroup.NotFound`.
    pub fn group(&self, id: &str) -> ApiResult<&SecurityGroup> {
        self.groups.get(id).ok_or_else(|| {
            ApiError::new(
                "InvalidGroup.NotFound",
                format!("The security group '{id}' does not exist"),
            )
        })
    }

    /// ENI ID and instance of attachment `id`.
    pub fn attachment_eni(&self, id: &str) -> ApiResult<&str> {
        self.attachments.get(id).map(String::as_str).ok_or_else(|| {
            ApiError::new(
                "InvalidAttachmentID.NotFound",
                format!("The attachment ID '{id}' does not exist"),
            )
        })
    }

    // ---------------------------------------------------------------- setup (not EC2 actions)

    /// Adds a subnet to the VPC. `az` defaults to the configured one.
    pub fn create_subnet(
        &mut self,
        cidr: Ipv4Net,
        az: Option<&str>,
        tags: &[(String, String)],
    ) -> ApiResult<String> {
        let cidr = cidr.trunc();
        if !(16..=28).contains(&cidr.prefix_len()) {
            return Err(ApiError::new(
                "InvalidSubnet.Range",
                format!("The CIDR '{cidr}' is invalid: a subnet must be a /16 to /28"),
            ));
        }
        if !self.cfg.vpc_cidr.contains(&cidr) {
            return Err(ApiError::new(
                "InvalidSubnet.Range",
                format!(
                    "The CIDR '{cidr}' is invalid: not inside the VPC CIDR {}",
                    self.cfg.vpc_cidr
                ),
            ));
        }
        if let Some(other) = self
            .subnets
            .values()
            .find(|s| s.cidr.contains(&cidr) || cidr.contains(&s.cidr))
        {
            return Err(ApiError::new(
                "InvalidSubnet.Conflict",
                format!(
                    "The CIDR '{cidr}' conflicts with subnet {} ({})",
                    other.id, other.cidr
                ),
            ));
        }
        let id = self.new_id("subnet");
        self.subnets.insert(
            id.clone(),
            Subnet {
                id: id.clone(),
                cidr,
                az: az.unwrap_or(&self.cfg.az).to_string(),
                tags: tags.iter().cloned().collect(),
                used: BTreeSet::new(),
                prefixes: BTreeSet::new(),
            },
        );
        self.subnet_order.push(id.clone());
        Ok(id)
    }

    /// Launches an instance in `subnet_id` with its primary ENI attached at device 0 on the
    /// default card (`attached` at once, `DeleteOnTermination` true).
    pub fn run_instance(
        &mut self,
        instance_type: &str,
        subnet_id: &str,
    ) -> ApiResult<InstanceInfo> {
        let limits = types::lookup(instance_type).ok_or_else(|| {
            ApiError::new(
                "InvalidInstanceType",
                format!("The instance type '{instance_type}' does not exist"),
            )
        })?;
        let az = self.subnet(subnet_id)?.az.clone();
        let subnet_cidr = self.subnet(subnet_id)?.cidr;
        let eni_id = self.create_eni(CreateEni {
            subnet_id: subnet_id.to_string(),
            description: Some("Primary network interface".into()),
            ..Default::default()
        })?;
        let instance_id = self.new_id("i");
        let card = limits.default_network_card_index;
        let att_id = self.new_id("eni-attach");
        let eni = self
            .enis
            .get_mut(&eni_id)
            .ok_or_else(|| eni_not_found(&eni_id))?;
        eni.hidden_until = None;
        eni.attachment = Some(Attachment {
            id: att_id.clone(),
            instance_id: instance_id.clone(),
            device_index: 0,
            card,
            state: AttachState::Attached,
            delete_on_termination: true,
            pending_until: None,
            attach_time: SystemTime::now(),
        });
        let info = InstanceInfo {
            instance_id: instance_id.clone(),
            instance_type: limits.name.clone(),
            primary_eni_id: eni_id.clone(),
            primary_ip: eni.primary_ip,
            mac: eni.mac,
            subnet_id: subnet_id.to_string(),
            subnet_cidr,
            az: az.clone(),
            security_group_ids: eni.groups.clone(),
        };
        self.attachments.insert(att_id, eni_id.clone());
        self.instances.insert(
            instance_id.clone(),
            Instance {
                id: instance_id,
                limits,
                subnet_id: subnet_id.to_string(),
                az,
                primary_eni: eni_id,
                tags: BTreeMap::new(),
                launch_time: SystemTime::now(),
                image_id: "ami-0vpcsim000000000".into(),
            },
        );
        Ok(info)
    }

    // ---------------------------------------------------------------- EC2 actions

    /// Slot limit of `eni`: its instance type's `Ipv4AddressesPerInterface` when attached.
    fn slot_limit(&self, eni: &Eni) -> u32 {
        eni.attachment
            .as_ref()
            .and_then(|a| self.instances.get(&a.instance_id))
            .map(|i| i.limits.ipv4_per_eni)
            .unwrap_or(self.unattached_slot_limit)
    }

    /// Whether prefixes may be put on `eni` (refused on an ENI attached to a Xen type).
    fn prefixes_allowed(&self, eni: &Eni) -> bool {
        eni.attachment
            .as_ref()
            .and_then(|a| self.instances.get(&a.instance_id))
            .is_none_or(|i| i.limits.supports_prefixes())
    }

    /// Checks explicit addresses against the subnet: inside, not reserved, free.
    fn check_explicit(subnet: &Subnet, ips: &[Ipv4Addr], prefixes: &[Ipv4Net]) -> ApiResult<()> {
        let mut seen = HashSet::new();
        for ip in ips {
            let a = u32::from(*ip);
            if !subnet.cidr.contains(ip) {
                return Err(ApiError::invalid_value(format!(
                    "Address '{ip}' is not in the subnet {} ({})",
                    subnet.id, subnet.cidr
                )));
            }
            if subnet.is_reserved_or_outside(a) {
                return Err(ApiError::invalid_value(format!(
                    "Address '{ip}' is reserved in subnet {} ({})",
                    subnet.id, subnet.cidr
                )));
            }
            if !seen.insert(a) {
                return Err(ApiError::invalid_value(format!(
                    "Address '{ip}' is given twice"
                )));
            }
            if subnet.used.contains(&a) || subnet.in_prefix(a) {
                return Err(ApiError::new(
                    "InvalidIPAddress.InUse",
                    format!("Address {ip} is in use."),
                ));
            }
        }
        let mut seen_blocks = HashSet::new();
        for p in prefixes {
            let base = u32::from(p.network());
            if p.prefix_len() != 28 || base & 15 != 0 || u32::from(p.addr()) != base {
                return Err(ApiError::invalid_value(format!(
                    "Prefix '{p}' is not an aligned /28"
                )));
            }
            if !subnet.cidr.contains(p) {
                return Err(ApiError::invalid_value(format!(
                    "Prefix '{p}' is not in the subnet {} ({})",
                    subnet.id, subnet.cidr
                )));
            }
            if !seen_blocks.insert(base) {
                return Err(ApiError::invalid_value(format!(
                    "Prefix '{p}' is given twice"
                )));
            }
            if ips.iter().any(|ip| p.contains(ip)) || !subnet.block_free(base) {
                return Err(ApiError::invalid_value(format!(
                    "Prefix '{p}' is in use or overlaps reserved or assigned addresses"
                )));
            }
        }
        Ok(())
    }

    /// Takes `count` addresses and `prefix_count` prefixes from the subnet (atomically), plus
    /// already-validated explicit ones.
    fn allocate(
        &mut self,
        subnet_id: &str,
        explicit_ips: &[Ipv4Addr],
        count: usize,
        explicit_prefixes: &[Ipv4Net],
        prefix_count: usize,
    ) -> ApiResult<(Vec<Ipv4Addr>, Vec<Ipv4Net>)> {
        let random = self.cfg.random_addresses;
        let Some(subnet) = self.subnets.get_mut(subnet_id) else {
            return Err(ApiError::new(
                "InvalidSubnetID.NotFound",
                format!("The subnet ID '{subnet_id}' does not exist"),
            ));
        };
        // Explicit ones first, so the count-based picks avoid them.
        for ip in explicit_ips {
            subnet.used.insert(u32::from(*ip));
        }
        for p in explicit_prefixes {
            subnet.prefixes.insert(u32::from(p.network()));
        }
        let undo = |subnet: &mut Subnet| {
            for ip in explicit_ips {
                subnet.used.remove(&u32::from(*ip));
            }
            for p in explicit_prefixes {
                subnet.prefixes.remove(&u32::from(p.network()));
            }
        };
        let blocks = if prefix_count > 0 {
            match subnet.pick_blocks(prefix_count) {
                Some(b) => b,
                None => {
                    let msg = format!(
                        "There are not enough free cidr blocks in the specified subnet {} ({}) \
                         to satisfy the request for {prefix_count} /28 prefix(es).",
                        subnet.id, subnet.cidr
                    );
                    undo(subnet);
                    return Err(ApiError::new("InsufficientCidrBlocks", msg));
                }
            }
        } else {
            Vec::new()
        };
        for b in &blocks {
            subnet.prefixes.insert(*b);
        }
        let ips = if count > 0 {
            let picked = if random {
                subnet.pick_ips(count, Some(&mut self.rng))
            } else {
                subnet.pick_ips(count, None)
            };
            match picked {
                Some(v) => v,
                None => {
                    let msg = format!(
                        "The specified subnet {} ({}) does not have enough free addresses to \
                         satisfy the request for {count} address(es).",
                        subnet.id, subnet.cidr
                    );
                    for b in &blocks {
                        subnet.prefixes.remove(b);
                    }
                    undo(subnet);
                    return Err(ApiError::new("InsufficientFreeAddressesInSubnet", msg));
                }
            }
        } else {
            Vec::new()
        };
        for a in &ips {
            subnet.used.insert(*a);
        }
        let mut out_ips: Vec<Ipv4Addr> = explicit_ips.to_vec();
        out_ips.extend(ips.into_iter().map(Ipv4Addr::from));
        let mut out_prefixes: Vec<Ipv4Net> = explicit_prefixes.to_vec();
        for b in blocks {
            out_prefixes.push(
                Ipv4Net::new(Ipv4Addr::from(b), 28)
                    .map_err(|e| ApiError::new("InternalError", format!("bad prefix: {e}")))?,
            );
        }
        Ok((out_ips, out_prefixes))
    }

    /// `CreateNetworkInterface`.
    pub fn create_eni(&mut self, req: CreateEni) -> ApiResult<String> {
        let subnet = self.subnet(&req.subnet_id)?.clone();
        for g in &req.groups {
            self.group(g)?;
        }
        if req.ipv6_requested {
            return Err(ApiError::invalid_value(format!(
                "Subnet '{}' has no IPv6 CIDR block: IPv6 addresses cannot be assigned",
                req.subnet_id
            )));
        }
        let has_ip_count = req.secondary_count.is_some();
        let has_ips = !req.secondary_ips.is_empty();
        let has_prefix_count = req.prefix_count.is_some();
        let has_prefixes = !req.prefixes.is_empty();
        if [has_ip_count, has_ips, has_prefix_count, has_prefixes]
            .iter()
            .filter(|b| **b)
            .count()
            > 1
        {
            return Err(ApiError::invalid_combination(
                "Only one of SecondaryPrivateIpAddressCount, PrivateIpAddresses (secondary), \
                 Ipv4PrefixCount and Ipv4Prefixes may be specified",
            ));
        }
        let count = req.secondary_count.unwrap_or(0) as usize;
        let pcount = req.prefix_count.unwrap_or(0) as usize;
        let slots = 1 + count + req.secondary_ips.len() + pcount + req.prefixes.len();
        if slots > self.unattached_slot_limit as usize {
            return Err(ApiError::new(
                "PrivateIpAddressLimitExceeded",
                format!(
                    "Number of private addresses ({slots}) exceeds the limit of {} per network \
                     interface",
                    self.unattached_slot_limit
                ),
            ));
        }
        let mut explicit: Vec<Ipv4Addr> = req.primary_ip.into_iter().collect();
        explicit.extend(req.secondary_ips.iter().copied());
        Self::check_explicit(&subnet, &explicit, &req.prefixes)?;
        // Primary: explicit or one more picked address.
        let extra_primary = usize::from(req.primary_ip.is_none());
        let (ips, prefixes) = self.allocate(
            &subnet.id,
            &explicit,
            count + extra_primary,
            &req.prefixes,
            pcount,
        )?;
        let (primary, secondaries) = match req.primary_ip {
            Some(p) => (p, ips.iter().copied().filter(|a| *a != p).collect()),
            None => {
                // explicit secondaries come first in `ips`, the picked primary right after.
                let mut v = ips.clone();
                let idx = req.secondary_ips.len();
                if idx >= v.len() {
                    return Err(ApiError::new(
                        "InternalError",
                        "primary address not allocated",
                    ));
                }
                let p = v.remove(idx);
                (p, v)
            }
        };
        let id = self.new_id("eni");
        let mac = self.new_mac();
        let groups = if req.groups.is_empty() {
            vec![self.default_group.clone()]
        } else {
            req.groups.clone()
        };
        self.enis.insert(
            id.clone(),
            Eni {
                id: id.clone(),
                subnet_id: subnet.id.clone(),
                description: req.description.unwrap_or_default(),
                mac,
                primary_ip: primary,
                secondaries,
                prefixes,
                groups,
                tags: req.tags.into_iter().collect(),
                interface_type: req.interface_type.unwrap_or_else(|| "interface".into()),
                source_dest_check: true,
                attachment: None,
                hidden_until: (!self.cfg.describe_lag.is_zero())
                    .then(|| self.clock + self.cfg.describe_lag),
            },
        );
        Ok(id)
    }

    /// `AttachNetworkInterface`: returns (attachment ID, card index).
    pub fn attach(
        &mut self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
        card: Option<u32>,
        now: Instant,
    ) -> ApiResult<(String, u32)> {
        let eni = self.eni(eni_id)?;
        let inst = self.instance(instance_id)?;
        let card = card.unwrap_or(inst.limits.default_network_card_index);
        if let Some(att) = &eni.attachment {
            return Err(ApiError::invalid_value(format!(
                "Network interface '{eni_id}' is currently in use (attachment {} to {}).",
                att.id, att.instance_id
            )));
        }
        let Some(card_max) = inst.limits.card_max_enis(card) else {
            return Err(ApiError::invalid_value(format!(
                "Network card index '{card}' is not valid for instance type {} ({} card(s))",
                inst.limits.name,
                inst.limits.network_cards.len()
            )));
        };
        let eni_subnet = self.subnet(&eni.subnet_id)?;
        let inst_subnet = self.subnet(&inst.subnet_id)?;
        if eni_subnet.az != inst_subnet.az {
            return Err(ApiError::invalid_value(format!(
                "Network interface '{eni_id}' is in availability zone {} but instance \
                 '{instance_id}' is in {}",
                eni_subnet.az, inst_subnet.az
            )));
        }
        let on_card: Vec<&Attachment> = self
            .enis
            .values()
            .filter_map(|e| e.attachment.as_ref())
            .filter(|a| a.instance_id == instance_id && a.card == card)
            .collect();
        if on_card.iter().any(|a| a.device_index == device_index) {
            return Err(ApiError::invalid_value(format!(
                "Instance '{instance_id}' already has an interface attached at device index \
                 '{device_index}'."
            )));
        }
        if on_card.len() as u32 >= card_max {
            return Err(ApiError::new(
                "AttachmentLimitExceeded",
                format!(
                    "Interface count {} exceeds the limit for {} on network card {card}",
                    on_card.len() + 1,
                    inst.limits.name
                ),
            ));
        }
        if eni.slots() as u32 > inst.limits.ipv4_per_eni {
            return Err(ApiError::new(
                "PrivateIpAddressLimitExceeded",
                format!(
                    "Network interface '{eni_id}' has {} private IPv4 addresses/prefixes; {} \
                     allows {} per interface",
                    eni.slots(),
                    inst.limits.name,
                    inst.limits.ipv4_per_eni
                ),
            ));
        }
        if !eni.prefixes.is_empty() && !inst.limits.supports_prefixes() {
            return Err(ApiError::invalid_value(format!(
                "Network interface '{eni_id}' has IPv4 prefixes, which instance type {} does \
                 not support",
                inst.limits.name
            )));
        }
        let delay = self.cfg.attach_delay;
        let att_id = self.new_id("eni-attach");
        let eni = self
            .enis
            .get_mut(eni_id)
            .ok_or_else(|| eni_not_found(eni_id))?;
        eni.attachment = Some(Attachment {
            id: att_id.clone(),
            instance_id: instance_id.to_string(),
            device_index,
            card,
            state: if delay.is_zero() {
                AttachState::Attached
            } else {
                AttachState::Attaching
            },
            delete_on_termination: false,
            pending_until: (!delay.is_zero()).then_some(now + delay),
            attach_time: SystemTime::now(),
        });
        self.attachments.insert(att_id.clone(), eni_id.to_string());
        if !delay.is_zero() {
            self.new_pending.push(now + delay);
        }
        Ok((att_id, card))
    }

    /// `DetachNetworkInterface`.
    pub fn detach(&mut self, attachment_id: &str, now: Instant) -> ApiResult<()> {
        let eni_id = self.attachment_eni(attachment_id)?.to_string();
        let delay = self.cfg.detach_delay;
        let eni = self
            .enis
            .get_mut(&eni_id)
            .ok_or_else(|| eni_not_found(&eni_id))?;
        let Some(att) = eni.attachment.as_mut() else {
            return Err(ApiError::new(
                "InvalidAttachmentID.NotFound",
                format!("The attachment ID '{attachment_id}' does not exist"),
            ));
        };
        if att.device_index == 0 && att.card == 0 {
            return Err(ApiError::new(
                "OperationNotPermitted",
                format!(
                    "The network interface at device index 0 and networkCard index 0 cannot be \
                     detached (attachment '{attachment_id}')."
                ),
            ));
        }
        match att.state {
            AttachState::Detaching => return Ok(()),
            AttachState::Attaching | AttachState::Attached => {}
        }
        if delay.is_zero() {
            eni.attachment = None;
            self.attachments.remove(attachment_id);
        } else {
            att.state = AttachState::Detaching;
            att.pending_until = Some(now + delay);
            self.new_pending.push(now + delay);
        }
        Ok(())
    }

    /// `DeleteNetworkInterface`: refused while attached (in any attachment state).
    pub fn delete_eni(&mut self, eni_id: &str) -> ApiResult<()> {
        let eni = self.eni(eni_id)?;
        if eni.attachment.is_some() {
            return Err(ApiError::invalid_value(format!(
                "Network interface '{eni_id}' is currently in use."
            )));
        }
        let eni = self
            .enis
            .remove(eni_id)
            .ok_or_else(|| eni_not_found(eni_id))?;
        self.macs.remove(&eni.mac);
        if let Some(subnet) = self.subnets.get_mut(&eni.subnet_id) {
            subnet.used.remove(&u32::from(eni.primary_ip));
            for ip in &eni.secondaries {
                subnet.used.remove(&u32::from(*ip));
            }
            for p in &eni.prefixes {
                subnet.prefixes.remove(&u32::from(p.network()));
            }
        }
        Ok(())
    }

    /// `ModifyNetworkInterfaceAttribute`.
    pub fn modify_eni(
        &mut self,
        eni_id: &str,
        attachment: Option<(String, Option<bool>)>,
        groups: Option<Vec<String>>,
        description: Option<String>,
        source_dest_check: Option<bool>,
    ) -> ApiResult<()> {
        self.eni(eni_id)?;
        if let Some(gs) = &groups {
            for g in gs {
                self.group(g)?;
            }
        }
        let eni = self
            .enis
            .get_mut(eni_id)
            .ok_or_else(|| eni_not_found(eni_id))?;
        if let Some((att_id, dot)) = attachment {
            match eni.attachment.as_mut() {
                Some(att) if att.id == att_id => {
                    if let Some(d) = dot {
                        att.delete_on_termination = d;
                    }
                }
                _ => {
                    return Err(ApiError::new(
                        "InvalidAttachmentID.NotFound",
                        format!(
                            "The attachment ID '{att_id}' does not exist for network interface \
                             '{eni_id}'"
                        ),
                    ));
                }
            }
        }
        if let Some(gs) = groups {
            eni.groups = gs;
        }
        if let Some(d) = description {
            eni.description = d;
        }
        if let Some(s) = source_dest_check {
            eni.source_dest_check = s;
        }
        Ok(())
    }

    /// `AssignPrivateIpAddresses`: returns only the newly assigned addresses and prefixes.
    pub fn assign(
        &mut self,
        eni_id: &str,
        req: Assign,
    ) -> ApiResult<(Vec<Ipv4Addr>, Vec<Ipv4Net>)> {
        let eni = self.eni(eni_id)?;
        let kinds = [
            req.count.is_some(),
            !req.ips.is_empty(),
            req.prefix_count.is_some(),
            !req.prefixes.is_empty(),
        ];
        match kinds.iter().filter(|b| **b).count() {
            0 => {
                return Err(ApiError::new(
                    "MissingParameter",
                    "One of SecondaryPrivateIpAddressCount, PrivateIpAddress, Ipv4PrefixCount \
                     or Ipv4Prefix is required",
                ));
            }
            1 => {}
            _ => {
                return Err(ApiError::invalid_combination(
                    "Only one of SecondaryPrivateIpAddressCount, PrivateIpAddress, \
                     Ipv4PrefixCount and Ipv4Prefix may be specified",
                ));
            }
        }
        let count = req.count.unwrap_or(0) as usize;
        let pcount = req.prefix_count.unwrap_or(0) as usize;
        if req.count == Some(0) || req.prefix_count == Some(0) {
            return Err(ApiError::invalid_value("The count must be at least 1"));
        }
        let wanted = count + req.ips.len() + pcount + req.prefixes.len();
        let limit = self.slot_limit(eni);
        if eni.slots() + wanted > limit as usize {
            return Err(ApiError::new(
                "PrivateIpAddressLimitExceeded",
                format!(
                    "Number of private addresses will exceed limit: network interface '{eni_id}' \
                     has {} of {limit} slots in use, {wanted} requested",
                    eni.slots()
                ),
            ));
        }
        if (pcount > 0 || !req.prefixes.is_empty()) && !self.prefixes_allowed(eni) {
            return Err(ApiError::invalid_value(format!(
                "Prefix delegation is not supported for the instance type of network interface \
                 '{eni_id}'"
            )));
        }
        let subnet = self.subnet(&eni.subnet_id)?.clone();
        Self::check_explicit(&subnet, &req.ips, &req.prefixes)?;
        let (ips, prefixes) = self.allocate(&subnet.id, &req.ips, count, &req.prefixes, pcount)?;
        let eni = self
            .enis
            .get_mut(eni_id)
            .ok_or_else(|| eni_not_found(eni_id))?;
        eni.secondaries.extend(ips.iter().copied());
        eni.prefixes.extend(prefixes.iter().copied());
        Ok((ips, prefixes))
    }

    /// `UnassignPrivateIpAddresses`: every address/prefix must be on the ENI (else nothing is
    /// released).
    pub fn unassign(
        &mut self,
        eni_id: &str,
        ips: &[Ipv4Addr],
        prefixes: &[Ipv4Net],
    ) -> ApiResult<()> {
        let eni = self.eni(eni_id)?;
        for p in prefixes {
            // Host bits set ("10.0.0.33/28") name no prefix EC2 could have assigned.
            if p.prefix_len() != 28 || p.addr() != p.network() {
                return Err(ApiError::invalid_value(format!(
                    "Prefix '{p}' is not an aligned /28"
                )));
            }
        }
        if ips.is_empty() && prefixes.is_empty() {
            return Err(ApiError::new(
                "MissingParameter",
                "One of PrivateIpAddress or Ipv4Prefix is required",
            ));
        }
        if !ips.is_empty() && !prefixes.is_empty() {
            return Err(ApiError::invalid_combination(
                "PrivateIpAddress and Ipv4Prefix cannot be combined",
            ));
        }
        for ip in ips {
            if *ip == eni.primary_ip {
                return Err(ApiError::invalid_value(format!(
                    "Address '{ip}' is the primary private address of network interface \
                     '{eni_id}' and cannot be unassigned"
                )));
            }
            if !eni.secondaries.contains(ip) {
                return Err(ApiError::invalid_value(format!(
                    "Some of the specified addresses are not assigned to interface \
                     '{eni_id}': {ip}"
                )));
            }
        }
        for p in prefixes {
            if !eni.prefixes.contains(p) {
                return Err(ApiError::invalid_value(format!(
                    "Some of the specified prefixes are not assigned to interface \
                     '{eni_id}': {p}"
                )));
            }
        }
        let subnet_id = eni.subnet_id.clone();
        let eni = self
            .enis
            .get_mut(eni_id)
            .ok_or_else(|| eni_not_found(eni_id))?;
        eni.secondaries.retain(|a| !ips.contains(a));
        eni.prefixes.retain(|p| !prefixes.contains(p));
        if let Some(subnet) = self.subnets.get_mut(&subnet_id) {
            for ip in ips {
                subnet.used.remove(&u32::from(*ip));
            }
            for p in prefixes {
                subnet.prefixes.remove(&u32::from(p.network()));
            }
        }
        Ok(())
    }

    fn tags_of(&mut self, resource: &str) -> ApiResult<&mut BTreeMap<String, String>> {
        let kind = resource.split('-').next().unwrap_or("");
        let not_found = |code: &str, what: &str| {
            ApiError::new(code, format!("The {what} ID '{resource}' does not exist"))
        };
        match kind {
            "eni" => self
                .enis
                .get_mut(resource)
                .map(|e| &mut e.tags)
                .ok_or_else(|| eni_not_found(resource)),
            "subnet" => self
                .subnets
                .get_mut(resource)
                .map(|s| &mut s.tags)
                .ok_or_else(|| not_found("InvalidSubnetID.NotFound", "subnet")),
            "i" => self
                .instances
                .get_mut(resource)
                .map(|i| &mut i.tags)
                .ok_or_else(|| not_found("InvalidInstanceID.NotFound", "instance")),
            "sg" => self
                .groups
                .get_mut(resource)
                .map(|g| &mut g.tags)
                .ok_or_else(|| not_found("InvalidGroup.NotFound", "security group")),
            _ => Err(ApiError::new(
                "InvalidID",
                format!("The ID '{resource}' is not valid"),
            )),
        }
    }

    /// `CreateTags`: overwrites existing values; all resources must exist (checked first).
    pub fn create_tags(
        &mut self,
        resources: &[String],
        tags: &[(String, String)],
    ) -> ApiResult<()> {
        for r in resources {
            self.tags_of(r)?;
        }
        for r in resources {
            let t = self.tags_of(r)?;
            for (k, v) in tags {
                t.insert(k.clone(), v.clone());
            }
        }
        Ok(())
    }

    /// `DeleteTags`: a tag given with a value is deleted only if the value matches.
    pub fn delete_tags(
        &mut self,
        resources: &[String],
        tags: &[(String, Option<String>)],
    ) -> ApiResult<()> {
        for r in resources {
            self.tags_of(r)?;
        }
        for r in resources {
            let t = self.tags_of(r)?;
            if tags.is_empty() {
                t.clear();
            }
            for (k, v) in tags {
                if v.as_ref().is_none_or(|v| t.get(k) == Some(v)) {
                    t.remove(k);
                }
            }
        }
        Ok(())
    }

    /// Subnet bookkeeping invariants, for tests: returns a description of the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        for s in self.subnets.values() {
            let mut seen: BTreeSet<u32> = BTreeSet::new();
            let mut blocks: BTreeSet<u32> = BTreeSet::new();
            for e in self.enis.values().filter(|e| e.subnet_id == s.id) {
                for ip in std::iter::once(&e.primary_ip).chain(e.secondaries.iter()) {
                    let a = u32::from(*ip);
                    if !seen.insert(a) {
                        return Err(format!("{ip} assigned twice in {}", s.id));
                    }
                    if s.is_reserved_or_outside(a) {
                        return Err(format!("{ip} is reserved/outside {}", s.cidr));
                    }
                }
                for p in &e.prefixes {
                    blocks.insert(u32::from(p.network()));
                }
            }
            if seen != s.used || blocks != s.prefixes {
                return Err(format!("bookkeeping of {} differs from the ENIs", s.id));
            }
            if let Some(a) = seen.iter().find(|a| blocks.contains(&(**a & !15))) {
                return Err(format!("{} lies inside a prefix", Ipv4Addr::from(*a)));
            }
        }
        Ok(())
    }
}

fn eni_not_found(id: &str) -> ApiError {
    ApiError::new(
        "InvalidNetworkInterfaceID.NotFound",
        format!("The networkInterface ID '{id}' does not exist"),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn model(attach: u64, lag: u64, now: Instant) -> Model {
        Model::new(
            ModelConfig {
                vpc_cidr: "10.0.0.0/16".parse().unwrap(),
                region: "us-west-2".into(),
                az: "us-west-2a".into(),
                account_id: "123456789012".into(),
                seed: 1,
                attach_delay: Duration::from_secs(attach),
                detach_delay: Duration::from_secs(attach),
                imds_lag: Duration::from_secs(lag),
                describe_lag: Duration::ZERO,
                random_addresses: false,
            },
            now,
        )
    }

    #[test]
    fn usable_counts_leave_five_reserved() {
        let t0 = Instant::now();
        let mut m = model(0, 0, t0);
        for (cidr, usable) in [
            ("10.0.0.0/28", 11),
            ("10.0.1.0/24", 251),
            ("10.0.32.0/19", 8187),
        ] {
            let id = m.create_subnet(cidr.parse().unwrap(), None, &[]).unwrap();
            assert_eq!(m.subnet(&id).unwrap().available(), usable, "{cidr}");
        }
        // Overlapping and out-of-VPC subnets are refused.
        let e = m
            .create_subnet("10.0.1.128/25".parse().unwrap(), None, &[])
            .unwrap_err();
        assert_eq!(e.code, "InvalidSubnet.Conflict");
        let e = m
            .create_subnet("10.1.0.0/24".parse().unwrap(), None, &[])
            .unwrap_err();
        assert_eq!(e.code, "InvalidSubnet.Range");
    }

    #[test]
    fn attach_completes_at_its_due_time_and_lags_into_view() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut m = model(5, 10, t0);
        let sub = m
            .create_subnet("10.0.1.0/24".parse().unwrap(), None, &[])
            .unwrap();
        let node = m.run_instance("m5.large", &sub).unwrap();
        m.record(t0);
        let eni = m
            .create_eni(CreateEni {
                subnet_id: sub.clone(),
                ..Default::default()
            })
            .unwrap();
        m.attach(&eni, &node.instance_id, 1, None, t0 + s).unwrap();
        m.record(t0 + s);
        assert_eq!(m.eni(&eni).unwrap().status(), "attaching");
        m.advance(t0 + 5 * s);
        assert_eq!(m.eni(&eni).unwrap().status(), "attaching");
        m.advance(t0 + 6 * s);
        assert_eq!(m.eni(&eni).unwrap().status(), "in-use");
        // Looked at much later: the attach counts from its due time (t0+6s), not from when
        // the model noticed it.
        m.advance(t0 + 12 * s);
        m.record(t0 + 12 * s);
        let enis = |m: &Model, t: Instant| m.visible(t).1.nodes[0].enis.len();
        assert_eq!(enis(&m, t0 + 12 * s), 1); // node boot state only
        assert_eq!(enis(&m, t0 + 15 * s), 1);
        assert_eq!(enis(&m, t0 + 16 * s), 2);
    }

    #[test]
    fn detached_device_index_is_reusable_and_addresses_return_on_delete() {
        let t0 = Instant::now();
        let mut m = model(0, 0, t0);
        let sub = m
            .create_subnet("10.0.1.0/24".parse().unwrap(), None, &[])
            .unwrap();
        let node = m.run_instance("m5.large", &sub).unwrap();
        let a = m
            .create_eni(CreateEni {
                subnet_id: sub.clone(),
                secondary_count: Some(3),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(m.subnet(&sub).unwrap().available(), 251 - 1 - 4);
        let (att, _) = m.attach(&a, &node.instance_id, 1, None, t0).unwrap();
        m.detach(&att, t0).unwrap();
        let b = m
            .create_eni(CreateEni {
                subnet_id: sub.clone(),
                ..Default::default()
            })
            .unwrap();
        m.attach(&b, &node.instance_id, 1, None, t0).unwrap();
        m.delete_eni(&a).unwrap();
        assert_eq!(m.subnet(&sub).unwrap().available(), 251 - 2);
        let (_, pfx) = m
            .assign(
                &b,
                Assign {
                    prefix_count: Some(1),
                    ..Default::default()
                },
            )
            .unwrap();
        // The same prefix with host bits set is refused and releases nothing.
        let sloppy = Ipv4Net::new(Ipv4Addr::from(u32::from(pfx[0].network()) + 1), 28).unwrap();
        let e = m.unassign(&b, &[], &[sloppy]).unwrap_err();
        assert_eq!(e.code, "InvalidParameterValue");
        assert_eq!(m.subnet(&sub).unwrap().available(), 251 - 2 - 16);
        m.unassign(&b, &[], &pfx).unwrap();
        assert_eq!(m.subnet(&sub).unwrap().available(), 251 - 2);
        m.check_invariants().unwrap();
    }
}
