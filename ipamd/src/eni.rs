//! ENI lifecycle: create, attach, wait until usable, grow/shrink, detach and delete, and the
//! leaked-ENI sweep (ipam.md §6.3, §7, §8).
//!
//! Everything here goes through [`Ec2Api`] (so through the one token bucket) and reads attachment
//! truth from IMDS; the host side (the link showing up by MAC) is asked through [`LinkProbe`],
//! which `hostnet` implements over the netlink facade. Every failure after `CreateNetworkInterface`
//! rolls back (detach + delete) so a failed growth never leaves an ENI behind.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ec2::{AddressRequest, CreateEniRequest, Ec2Api, Ec2Error, EniInfo, Filter, Tags};
use crate::imds::{EniMetadata, Imds, ImdsError, MetadataSource};

/// Tag naming the instance that created/owns an ENI.
pub const TAG_INSTANCE_ID: &str = "node.k8s.amazonaws.com/instance_id";
/// Tag with the creation time (RFC 3339), read by the leaked-ENI sweep.
pub const TAG_CREATED_AT: &str = "node.k8s.amazonaws.com/createdAt";
/// Tag naming the cluster (when `CLUSTER_NAME` is set).
pub const TAG_CLUSTER_NAME: &str = "cluster.k8s.amazonaws.com/name";
/// Owner tag written when `CLUSTER_NAME` is set.
pub const TAG_EKS_OWNER: &str = "eks:eni:owner";
/// User tag: `true` ⇒ never use or delete this ENI.
pub const TAG_NO_MANAGE: &str = "node.k8s.amazonaws.com/no_manage";
/// Subnet tag for subnet discovery (`0` excludes the subnet).
pub const TAG_SUBNET_ROLE: &str = "kubernetes.io/role/cni";
/// Subnet tag prefix scoping a subnet to clusters.
pub const TAG_SUBNET_CLUSTER_PREFIX: &str = "cni.networking.k8s.aws/cluster/";
/// Description prefix of ENIs we create (`aws-K8S-<instance-id>`), as upstream.
pub const DESCRIPTION_PREFIX: &str = "aws-K8S-";

/// Errors of the ENI lifecycle.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum EniError {
    /// An EC2 call failed (after its retries).
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    /// Reading IMDS failed.
    #[error(transparent)]
    Imds(#[from] ImdsError),
    /// Every candidate subnet is out of addresses (or of aligned /28s).
    #[error("no subnet has capacity for a new ENI (tried {tried:?}): {last}")]
    SubnetsExhausted {
        /// Subnets tried, in order.
        tried: Vec<String>,
        /// Error of the last attempt.
        last: Ec2Error,
    },
    /// No eligible subnet at all.
    #[error("no eligible subnet for new ENIs")]
    NoSubnet,
    /// All device indexes 0..max are taken on the card.
    #[error("no free device index below {max} on network card {card}")]
    NoFreeDeviceIndex {
        /// Network card.
        card: u32,
        /// Exclusive upper bound searched.
        max: u32,
    },
    /// The ENI never became visible in IMDS (or as a host link) within the wait budget.
    #[error("ENI {eni_id} ({mac}) did not show up in {what} in time")]
    NotVisible {
        /// ENI.
        eni_id: String,
        /// Its MAC.
        mac: String,
        /// `IMDS` or `host links`.
        what: &'static str,
    },
    /// The ENI is unmanaged and must not be touched.
    #[error("ENI {0} is not managed by this daemon")]
    Unmanaged(String),
    /// A new ENI stopped being attached to this instance while we waited for it to show up.
    #[error("new ENI {eni_id} is no longer attached to this instance ({state}); giving up on it")]
    AttachmentLost {
        /// ENI.
        eni_id: String,
        /// What EC2 says instead.
        state: String,
    },
}

/// While a new ENI is not visible yet, ask EC2 every this many IMDS polls whether it is still
/// attached (with the default wait: after ~0.7 s, then about every 4 s; IMDS is local and
/// cheap, EC2 is not).
const ATTACHMENT_CHECK_EVERY: u32 = 4;

/// Short, bounded error label of `awscni_aws_utils_error_count` (metrics hook): the AWS error
/// code when EC2 answered one, else the failure kind. Upstream puts the whole error text there,
/// which carries request IDs and makes every failure a new series.
pub fn utils_error_code(e: &EniError) -> String {
    let ec2 = |e: &Ec2Error| e.code.clone().unwrap_or_else(|| "transport".to_string());
    match e {
        EniError::Ec2(e) => ec2(e),
        EniError::SubnetsExhausted { last, .. } => ec2(last),
        EniError::Imds(_) => "IMDS".to_string(),
        EniError::NoSubnet => "NoSubnet".to_string(),
        EniError::NoFreeDeviceIndex { .. } => "NoFreeDeviceIndex".to_string(),
        EniError::NotVisible { .. } => "NotVisible".to_string(),
        EniError::Unmanaged(_) => "Unmanaged".to_string(),
        EniError::AttachmentLost { .. } => "AttachmentLost".to_string(),
    }
}

/// Bounded exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Number of tries (first one included).
    pub attempts: u32,
    /// Pause after the first failed try.
    pub initial: Duration,
    /// Pause ceiling.
    pub max: Duration,
}

impl Backoff {
    /// Pause after failed try number `n` (1-based), doubled each time, capped, ±15 % jitter
    /// (upstream's IMDS wait uses 15 %).
    pub fn pause(&self, n: u32) -> Duration {
        let d = self
            .initial
            .saturating_mul(2u32.saturating_pow(n.saturating_sub(1).min(20)))
            .min(self.max);
        d.mul_f64(0.85 + rand::random::<f64>() * 0.3)
    }
}

/// Whether the host sees a link with a MAC. Implemented by `hostnet` over netlink; tests and
/// IMDS-only setups may use [`AssumeLinkPresent`].
pub trait LinkProbe: Send + Sync {
    /// `true` when a link with this MAC (lower case) exists in the daemon's network namespace.
    fn link_exists(&self, mac: &str) -> bool;
}

/// A [`LinkProbe`] that never waits for the host link.
#[derive(Debug, Clone, Copy, Default)]
pub struct AssumeLinkPresent;

impl LinkProbe for AssumeLinkPresent {
    fn link_exists(&self, _mac: &str) -> bool {
        true
    }
}

/// Settings of the ENI lifecycle; the daemon fills them from its config and IMDS.
#[derive(Debug, Clone, PartialEq)]
pub struct EniSettings {
    /// This instance.
    pub instance_id: String,
    /// VPC of the primary ENI.
    pub vpc_id: String,
    /// Availability zone (subnet discovery filter).
    pub availability_zone: String,
    /// Subnet of the primary ENI (default subnet for new ENIs).
    pub primary_subnet_id: String,
    /// Security groups for new ENIs (the primary ENI's, sorted).
    pub security_groups: Vec<String>,
    /// `CLUSTER_NAME` (None when empty).
    pub cluster_name: Option<String>,
    /// `ADDITIONAL_ENI_TAGS` (keys containing `k8s.amazonaws.com` are dropped when applied).
    pub additional_tags: Tags,
    /// `ENABLE_SUBNET_DISCOVERY`.
    pub subnet_discovery: bool,
    /// `MANAGE_UNTAGGED_ENI`.
    pub manage_untagged: bool,
    /// Network card new ENIs go to.
    pub network_card: u32,
    /// Device indexes searched are `0..max_device_index` (upstream: 100, keeping tables ≤ 100).
    pub max_device_index: u32,
    /// Attach tries when another attach races us for the same device index.
    pub attach_attempts: u32,
    /// Wait for IMDS and the host link after attach.
    pub visible_wait: Backoff,
    /// Delete retries (an ENI still `detaching` answers "currently in use").
    pub delete_retry: Backoff,
    /// Age before a leaked `available` ENI is deleted (upstream 5 min).
    pub leaked_grace: Duration,
}

impl EniSettings {
    /// Defaults around the identity fields.
    pub fn new(
        instance_id: &str,
        vpc_id: &str,
        availability_zone: &str,
        primary_subnet_id: &str,
    ) -> Self {
        Self {
            instance_id: instance_id.to_string(),
            vpc_id: vpc_id.to_string(),
            availability_zone: availability_zone.to_string(),
            primary_subnet_id: primary_subnet_id.to_string(),
            security_groups: Vec::new(),
            cluster_name: None,
            additional_tags: Tags::new(),
            subnet_discovery: true,
            manage_untagged: true,
            network_card: 0,
            max_device_index: 100,
            attach_attempts: 5,
            // IMDS is local and cheap to poll: a 1 s cap keeps the overshoot after a slow
            // attach below a second (upstream doubles to 1 min), 30 tries ≈ 25 s budget.
            visible_wait: Backoff {
                attempts: 30,
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
            },
            // Detach is asynchronous (EC2 answers "currently in use" until it completes, usually
            // within a second or two): poll soon, then back off. 12 tries ≈ 35 s budget.
            delete_retry: Backoff {
                attempts: 12,
                initial: Duration::from_millis(200),
                max: Duration::from_secs(5),
            },
            leaked_grace: Duration::from_secs(300),
        }
    }
}

/// A freshly created, attached and visible ENI.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachedEni {
    /// EC2's view at creation (addresses requested with the ENI included).
    pub info: EniInfo,
    /// Attachment ID.
    pub attachment_id: String,
    /// Device index it was attached at.
    pub device_index: u32,
    /// Network card.
    pub network_card: u32,
    /// IMDS's view once visible (may lag EC2 by a few addresses; reconcile catches up).
    pub metadata: EniMetadata,
}

/// What one growth round read once for all the ENIs it creates (see
/// [`EniManager::prepare_attach`]): the candidate subnets and a device index reserved for this
/// ENI. `Default` = read everything per ENI (the single-ENI path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachSlot {
    /// Candidate subnets, best first (`None`: run subnet discovery for this ENI).
    pub subnets: Option<Vec<String>>,
    /// Device index to try first (`None`: read `DescribeInstances` first).
    pub device_index: Option<u32>,
}

/// Why an ENI is not ours to manage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmanaged {
    /// Tagged `node.k8s.amazonaws.com/no_manage=true`.
    NoManageTag,
    /// `MANAGE_UNTAGGED_ENI=false` and not tagged with this instance.
    Untagged,
    /// EFA-only / trunk interfaces are out of scope for pod addresses.
    SpecialType,
}

/// What one leaked-ENI pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Newly marked this pass (deleted next pass if still leaked).
    pub marked: Vec<String>,
    /// Deleted this pass.
    pub deleted: Vec<String>,
    /// Given a `createdAt` tag because they had none (or an unparsable one).
    pub tagged: Vec<String>,
    /// Deletions that failed (kept marked for the next pass).
    pub failed: Vec<String>,
}

/// State of the two-phase leaked-ENI sweep: ENIs seen leaked on the previous pass.
#[derive(Debug, Clone, Default)]
pub struct LeakedEniSweeper {
    marked: BTreeSet<String>,
}

impl LeakedEniSweeper {
    /// No ENI marked yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// ENIs currently marked.
    pub fn marked(&self) -> &BTreeSet<String> {
        &self.marked
    }
}

/// The ENI lifecycle over EC2 + IMDS + host links.
#[derive(Debug, Clone)]
pub struct EniManager<E, S, L> {
    ec2: E,
    imds: Imds<S>,
    link: L,
    settings: EniSettings,
    /// Device indexes handed out by [`EniManager::prepare_attach`] whose attach has not
    /// returned yet: EC2 does not show them, so a concurrent round must not pick them again.
    reserved: std::sync::Arc<std::sync::Mutex<BTreeSet<u32>>>,
    /// ENIs this manager created whose create-and-attach has not returned yet. Between
    /// `CreateNetworkInterface` and the attach they are `available` and tagged exactly like a
    /// previous run's leftovers: [`EniManager::delete_own_leftovers`] must not take them.
    creating: std::sync::Arc<std::sync::Mutex<BTreeSet<String>>>,
    /// When this manager was built (before any ENI it creates): a `createdAt` tag at or after
    /// it is ours, not a previous run's (covers the create request still in flight, whose ID
    /// is not known yet).
    started: OffsetDateTime,
}

/// Takes an ENI out of [`EniManager`]'s `creating` set when its create-and-attach returns, on
/// every path (success, error, cancelled future).
struct CreatingGuard {
    set: std::sync::Arc<std::sync::Mutex<BTreeSet<String>>>,
    id: String,
}

impl Drop for CreatingGuard {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl<E: Ec2Api, S: MetadataSource, L: LinkProbe> EniManager<E, S, L> {
    /// Assemble.
    pub fn new(ec2: E, imds: Imds<S>, link: L, settings: EniSettings) -> Self {
        Self {
            ec2,
            imds,
            link,
            settings,
            reserved: Default::default(),
            creating: Default::default(),
            started: OffsetDateTime::now_utc(),
        }
    }

    /// ENIs this manager is creating right now (created, create-and-attach not returned).
    pub fn creating(&self) -> BTreeSet<String> {
        self.creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn reserved(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        // Plain set of integers: a panic elsewhere cannot leave it inconsistent.
        self.reserved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads once, for a growth round that creates `n` ENIs at the same time, what each of them
    /// would otherwise read on its own: the candidate subnets (`DescribeSubnets`) and the device
    /// indexes in use (`DescribeInstances`), and reserves `n` distinct free indexes so that the
    /// concurrent attaches do not collide. A failed read leaves that part to each ENI (the
    /// per-ENI path, with its retry on a device-index conflict, still applies). `n ≤ 1` reads
    /// nothing.
    pub async fn prepare_attach(&self, n: usize) -> Vec<AttachSlot> {
        if n <= 1 {
            return vec![AttachSlot::default(); n];
        }
        let (subnets, attached) = futures::join!(
            self.candidate_subnets(),
            self.ec2.describe_instance_enis(&self.settings.instance_id)
        );
        let card = self.settings.network_card;
        let indexes: Vec<Option<u32>> = match attached {
            Ok(a) => {
                let mut reserved = self.reserved();
                let mut used: BTreeSet<u32> = a
                    .iter()
                    .filter(|x| x.network_card == card)
                    .map(|x| x.device_index)
                    .collect();
                used.extend(reserved.iter().copied());
                let free: Vec<u32> = (0..self.settings.max_device_index)
                    .filter(|i| !used.contains(i))
                    .take(n)
                    .collect();
                reserved.extend(free.iter().copied());
                (0..n).map(|i| free.get(i).copied()).collect()
            }
            Err(e) => {
                tracing::debug!(error = %e, "DescribeInstances for a growth round failed; per ENI");
                vec![None; n]
            }
        };
        indexes
            .into_iter()
            .map(|device_index| AttachSlot {
                subnets: Some(subnets.clone()),
                device_index,
            })
            .collect()
    }

    /// The settings.
    pub fn settings(&self) -> &EniSettings {
        &self.settings
    }

    /// The EC2 client.
    pub fn ec2(&self) -> &E {
        &self.ec2
    }

    /// Description for ENIs we create.
    pub fn description(&self) -> String {
        format!("{DESCRIPTION_PREFIX}{}", self.settings.instance_id)
    }

    /// Tags for a new ENI (ipam.md §8.1), `createdAt` = `now`.
    pub fn creation_tags(&self, now: OffsetDateTime) -> Tags {
        let mut t = self.ownership_tags();
        if let Ok(ts) = now.format(&Rfc3339) {
            t.insert(TAG_CREATED_AT.to_string(), ts);
        }
        t
    }

    /// Tags topped up on every managed ENI (no `createdAt`): instance, cluster, additional.
    pub fn ownership_tags(&self) -> Tags {
        let mut t = Tags::new();
        // Additional tags first so that ours win; upstream drops any key that would let users
        // forge ownership (anything containing `k8s.amazonaws.com`).
        for (k, v) in &self.settings.additional_tags {
            if !k.contains("k8s.amazonaws.com") {
                t.insert(k.clone(), v.clone());
            }
        }
        t.insert(
            TAG_INSTANCE_ID.to_string(),
            self.settings.instance_id.clone(),
        );
        if let Some(c) = &self.settings.cluster_name {
            t.insert(TAG_CLUSTER_NAME.to_string(), c.clone());
            t.insert(TAG_EKS_OWNER.to_string(), "amazon-vpc-cni".to_string());
        }
        t
    }

    /// Whether we may use/delete this ENI. `None` = managed.
    pub fn unmanaged_reason(&self, eni: &EniInfo, is_primary: bool) -> Option<Unmanaged> {
        if eni
            .tags
            .get(TAG_NO_MANAGE)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Some(Unmanaged::NoManageTag);
        }
        if matches!(eni.interface_type.as_str(), "efa-only" | "trunk") {
            return Some(Unmanaged::SpecialType);
        }
        if !is_primary
            && !self.settings.manage_untagged
            && eni.tags.get(TAG_INSTANCE_ID) != Some(&self.settings.instance_id)
        {
            return Some(Unmanaged::Untagged);
        }
        None
    }

    /// Subnets to try for a new ENI, best first (ipam.md §7): with discovery, the node subnet
    /// plus subnets tagged `kubernetes.io/role/cni` (non-`0`), honouring cluster scoping, by free
    /// addresses descending. Without discovery (or if `DescribeSubnets` fails), the node subnet.
    pub async fn candidate_subnets(&self) -> Vec<String> {
        let primary = self.settings.primary_subnet_id.clone();
        if !self.settings.subnet_discovery {
            return vec![primary];
        }
        let filters = [
            Filter::new("vpc-id", &self.settings.vpc_id),
            Filter::new("availability-zone", &self.settings.availability_zone),
        ];
        let subnets = match self.ec2.describe_subnets(&filters).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "subnet discovery failed; using the node subnet only");
                return vec![primary];
            }
        };
        let mut ok: Vec<(u32, String)> = Vec::new();
        let mut saw_primary = false;
        for s in subnets {
            let role = s.tags.get(TAG_SUBNET_ROLE);
            if role.is_some_and(|v| v == "0") {
                if s.subnet_id == primary {
                    saw_primary = true;
                }
                continue;
            }
            let is_primary = s.subnet_id == primary;
            if is_primary {
                saw_primary = true;
            }
            if !is_primary && role.is_none() {
                continue;
            }
            let scoped: Vec<&str> = s
                .tags
                .keys()
                .filter_map(|k| k.strip_prefix(TAG_SUBNET_CLUSTER_PREFIX))
                .collect();
            if !is_primary && !scoped.is_empty() {
                match &self.settings.cluster_name {
                    Some(c) if scoped.contains(&c.as_str()) => {}
                    _ => continue,
                }
            }
            ok.push((s.available, s.subnet_id));
        }
        ok.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut out: Vec<String> = ok.into_iter().map(|(_, id)| id).collect();
        if !saw_primary {
            // DescribeSubnets did not list the node subnet at all (eventual consistency, or a
            // filter mismatch): keep the upstream default rather than lose it.
            out.push(primary);
        }
        out
    }

    /// Create an ENI with `addresses`, attach it at the first free device index, set
    /// DeleteOnTermination, and wait until IMDS (and the host link) show it. Any failure after
    /// creation deletes the ENI again.
    pub async fn create_and_attach(
        &self,
        addresses: AddressRequest,
    ) -> Result<AttachedEni, EniError> {
        self.create_and_attach_in(addresses, AttachSlot::default())
            .await
    }

    /// [`EniManager::create_and_attach`] with what a growth round already read
    /// ([`EniManager::prepare_attach`]); releases the slot's device-index reservation.
    pub async fn create_and_attach_in(
        &self,
        addresses: AddressRequest,
        slot: AttachSlot,
    ) -> Result<AttachedEni, EniError> {
        let first = slot.device_index;
        let r = self.create_and_attach_slot(addresses, slot).await;
        if let Some(i) = first {
            self.reserved().remove(&i);
        }
        r
    }

    async fn create_and_attach_slot(
        &self,
        addresses: AddressRequest,
        slot: AttachSlot,
    ) -> Result<AttachedEni, EniError> {
        let subnets = match slot.subnets {
            Some(s) => s,
            None => self.candidate_subnets().await,
        };
        if subnets.is_empty() {
            return Err(EniError::NoSubnet);
        }
        let mut tried = Vec::new();
        let mut created = None;
        let mut last_capacity_err = None;
        for subnet in subnets {
            let req = CreateEniRequest {
                subnet_id: subnet.clone(),
                description: self.description(),
                security_groups: self.settings.security_groups.clone(),
                addresses,
                tags: self.creation_tags(OffsetDateTime::now_utc()),
            };
            tried.push(subnet.clone());
            match self.ec2.create_network_interface(&req).await {
                Ok(eni) => {
                    created = Some(eni);
                    break;
                }
                Err(e)
                    if e.code_is("InsufficientFreeAddressesInSubnet")
                        || e.code_is("InsufficientCidrBlocks") =>
                {
                    tracing::info!(subnet, error = %e, "subnet full; trying the next candidate");
                    last_capacity_err = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let eni = match (created, last_capacity_err) {
            (Some(eni), _) => eni,
            (None, Some(last)) => return Err(EniError::SubnetsExhausted { tried, last }),
            (None, None) => return Err(EniError::NoSubnet),
        };
        tracing::info!(eni = %eni.eni_id, subnet = %eni.subnet_id, "created ENI");
        self.creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(eni.eni_id.clone());
        let _creating = CreatingGuard {
            set: self.creating.clone(),
            id: eni.eni_id.clone(),
        };

        let (attachment_id, device_index) =
            match self.attach_free_index(&eni.eni_id, slot.device_index).await {
                Ok(v) => v,
                Err(e) => {
                    self.rollback(&eni.eni_id, None, "AllocENIDeleteErr").await;
                    return Err(e);
                }
            };
        if let Err(e) = self
            .ec2
            .set_delete_on_termination(&eni.eni_id, &attachment_id)
            .await
        {
            self.rollback(
                &eni.eni_id,
                Some(&attachment_id),
                "ENICleanupUponModifyNetworkErr",
            )
            .await;
            return Err(e.into());
        }
        let metadata = match self.wait_visible(&eni, addresses).await {
            Ok(m) => m,
            Err(e) => {
                self.rollback(&eni.eni_id, Some(&attachment_id), "AllocENIDeleteErr")
                    .await;
                return Err(e);
            }
        };
        Ok(AttachedEni {
            info: eni,
            attachment_id,
            device_index,
            network_card: self.settings.network_card,
            metadata,
        })
    }

    /// Attach at the lowest free device index on our card; retry with a fresh view when another
    /// attach took the index first (EC2 answers `InvalidParameterValue` "... already has an
    /// interface attached at device index ...").
    /// `first`: an index reserved by [`EniManager::prepare_attach`], tried without reading
    /// `DescribeInstances`.
    async fn attach_free_index(
        &self,
        eni_id: &str,
        first: Option<u32>,
    ) -> Result<(String, u32), EniError> {
        let card = self.settings.network_card;
        let mut taken_locally: BTreeSet<u32> = BTreeSet::new();
        let attempts = self.settings.attach_attempts.max(1);
        let mut last = None;
        let mut first = first;
        for _ in 0..attempts {
            let idx = match first.take() {
                Some(i) => i,
                None => {
                    let attached = self
                        .ec2
                        .describe_instance_enis(&self.settings.instance_id)
                        .await?;
                    let mut used: BTreeSet<u32> = attached
                        .iter()
                        .filter(|a| a.network_card == card)
                        .map(|a| a.device_index)
                        .collect();
                    used.extend(&taken_locally);
                    // Indexes other ENIs of this round hold but have not attached yet.
                    used.extend(self.reserved().iter().copied());
                    let Some(idx) = (0..self.settings.max_device_index).find(|i| !used.contains(i))
                    else {
                        return Err(EniError::NoFreeDeviceIndex {
                            card,
                            max: self.settings.max_device_index,
                        });
                    };
                    idx
                }
            };
            match self
                .ec2
                .attach_network_interface(eni_id, &self.settings.instance_id, idx, card)
                .await
            {
                Ok(att) => {
                    tracing::info!(eni = eni_id, device_index = idx, "attached ENI");
                    return Ok((att, idx));
                }
                Err(e)
                    if e.code_is("InvalidParameterValue") && e.message.contains("device index") =>
                {
                    tracing::info!(
                        eni = eni_id,
                        device_index = idx,
                        "device index taken; retrying"
                    );
                    // DescribeInstances may lag the racing attach: skip this index regardless.
                    taken_locally.insert(idx);
                    last = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(match last {
            Some(e) => e.into(),
            None => EniError::NoFreeDeviceIndex {
                card,
                max: self.settings.max_device_index,
            },
        })
    }

    /// Poll IMDS (and the host link) until the ENI shows up with its addresses. Upstream accepts a
    /// partial view at the end (IMDS lags EC2); we accept the ENI once it is listed with at least
    /// one requested address, and at the deadline with whatever it has if it is listed at all.
    async fn wait_visible(
        &self,
        eni: &EniInfo,
        want: AddressRequest,
    ) -> Result<EniMetadata, EniError> {
        let w = self.settings.visible_wait;
        let primary_mac = self.imds.primary_mac().await?;
        let mut seen: Option<EniMetadata> = None;
        for n in 1..=w.attempts.max(1) {
            match self.imds.macs().await {
                Ok(macs) if macs.contains(&eni.mac) => {
                    match self.imds.interface(&eni.mac, &primary_mac).await {
                        Ok(m) => {
                            let complete = match want {
                                AddressRequest::None => true,
                                AddressRequest::Ips(k) => k == 0 || !m.secondary_ips().is_empty(),
                                AddressRequest::Prefixes(k) => {
                                    k == 0 || !m.ipv4_prefixes.is_empty()
                                }
                            };
                            let link = self.link.link_exists(&eni.mac);
                            if complete && link {
                                return Ok(m);
                            }
                            seen = Some(m);
                        }
                        // Half-populated per-MAC directory right after attach: keep waiting.
                        Err(ImdsError::Missing { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "IMDS read failed while waiting for ENI"),
            }
            if n % ATTACHMENT_CHECK_EVERY == 0
                && let Some(state) = self.attachment_lost(&eni.eni_id).await
            {
                // Detached or deleted behind our back (another actor, an operator): it will
                // never show up, and every second spent waiting holds an ENI slot of the
                // pool's growth in flight.
                return Err(EniError::AttachmentLost {
                    eni_id: eni.eni_id.clone(),
                    state,
                });
            }
            if n < w.attempts {
                tokio::time::sleep(w.pause(n)).await;
            }
        }
        match seen {
            Some(m) if self.link.link_exists(&eni.mac) => {
                tracing::warn!(eni = %eni.eni_id, "IMDS shows the ENI without its addresses yet; reconcile will add them");
                Ok(m)
            }
            Some(_) => Err(EniError::NotVisible {
                eni_id: eni.eni_id.clone(),
                mac: eni.mac.clone(),
                what: "host links",
            }),
            None => Err(EniError::NotVisible {
                eni_id: eni.eni_id.clone(),
                mac: eni.mac.clone(),
                what: "IMDS",
            }),
        }
    }

    /// While waiting for a new ENI to show up: `Some(what EC2 says)` when it is no longer
    /// attached to this instance (deleted, detached, attached elsewhere). `None` while it is
    /// still attaching/attached here, and when EC2 cannot be asked (keep waiting, as before).
    async fn attachment_lost(&self, eni_id: &str) -> Option<String> {
        let list = match self
            .ec2
            .describe_network_interfaces(&[eni_id.to_string()])
            .await
        {
            Ok(l) => l,
            Err(e) if e.is_not_found() => return Some("deleted".to_string()),
            Err(e) => {
                tracing::debug!(eni = eni_id, error = %e, "cannot check the attachment while waiting");
                return None;
            }
        };
        let Some(e) = list.into_iter().find(|e| e.eni_id == eni_id) else {
            return Some("deleted".to_string());
        };
        match &e.attachment {
            Some(a)
                if a.instance_id.as_deref() == Some(self.settings.instance_id.as_str())
                    && matches!(a.status.as_str(), "attaching" | "attached") =>
            {
                None
            }
            Some(a) => Some(format!(
                "attachment {} to {} is {}",
                a.attachment_id,
                a.instance_id.as_deref().unwrap_or("?"),
                a.status
            )),
            None => Some(format!("{} without attachment", e.status)),
        }
    }

    /// `utils_fn`: upstream's `awscni_aws_utils_error_count` function label for a failed
    /// rollback.
    async fn rollback(&self, eni_id: &str, attachment_id: Option<&str>, utils_fn: &'static str) {
        tracing::warn!(eni = eni_id, "rolling back ENI creation");
        if let Err(e) = self.detach_and_delete(eni_id, attachment_id).await {
            self.ec2.note_utils_error(utils_fn, &utils_error_code(&e));
            // The leaked-ENI sweep will find it (tagged with us, `available`).
            tracing::error!(eni = eni_id, error = %e, "rollback failed; leaked-ENI sweep will retry");
        }
    }

    async fn detach_and_delete(
        &self,
        eni_id: &str,
        attachment_id: Option<&str>,
    ) -> Result<(), EniError> {
        if let Some(att) = attachment_id {
            match self.ec2.detach_network_interface(att, false).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.delete_with_retry(eni_id).await
    }

    /// Delete, retrying while EC2 still sees the ENI attached (detach is asynchronous).
    async fn delete_with_retry(&self, eni_id: &str) -> Result<(), EniError> {
        let b = self.settings.delete_retry;
        let mut n = 0;
        loop {
            n += 1;
            match self.ec2.delete_network_interface(eni_id).await {
                Ok(()) => {
                    tracing::info!(eni = eni_id, "deleted ENI");
                    return Ok(());
                }
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) if n < b.attempts => {
                    tracing::debug!(eni = eni_id, error = %e, "delete failed; retrying");
                    tokio::time::sleep(b.pause(n)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Detach and delete one of our ENIs. Gone already ⇒ Ok. Refuses unmanaged ENIs and the
    /// primary ENI (device 0 on card 0).
    pub async fn free_eni(&self, eni_id: &str) -> Result<(), EniError> {
        let list = match self
            .ec2
            .describe_network_interfaces(&[eni_id.to_string()])
            .await
        {
            Ok(l) => l,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => {
                let e = EniError::from(e);
                // Metrics hook (upstream's label for failing to find the attachment).
                self.ec2
                    .note_utils_error("getENIAttachmentIDFailed", &utils_error_code(&e));
                return Err(e);
            }
        };
        let Some(eni) = list.into_iter().find(|e| e.eni_id == eni_id) else {
            return Ok(());
        };
        let is_primary = eni
            .attachment
            .as_ref()
            .is_some_and(|a| a.device_index == 0 && a.network_card == 0);
        if is_primary || self.unmanaged_reason(&eni, false).is_some() {
            return Err(EniError::Unmanaged(eni_id.to_string()));
        }
        let att = eni.attachment.as_ref().map(|a| a.attachment_id.as_str());
        let res = self.detach_and_delete(eni_id, att).await;
        if let Err(e) = &res {
            // Metrics hook. Upstream counts only the delete step under this label; ours counts
            // a failed detach too (both leave the ENI for the leaked-ENI sweep).
            self.ec2
                .note_utils_error("FreeENIDeleteErr", &utils_error_code(e));
        }
        res
    }

    /// `DescribeNetworkInterfaces` for `ids`, dropping IDs EC2 reports as unknown (it fails the
    /// whole call and quotes the bad ID; upstream does the same drop-and-retry).
    pub async fn describe_enis(&self, ids: &[String]) -> Result<Vec<EniInfo>, EniError> {
        let mut ids: Vec<String> = ids.to_vec();
        loop {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            match self.ec2.describe_network_interfaces(&ids).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_not_found() => {
                    let Some(bad) = e.quoted_id().map(str::to_string) else {
                        return Err(e.into());
                    };
                    let before = ids.len();
                    ids.retain(|i| *i != bad);
                    if ids.len() == before {
                        return Err(e.into());
                    }
                    tracing::info!(eni = bad, "ENI no longer exists; dropped from describe");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Add `count` secondary IPs to an ENI; returns the new addresses.
    pub async fn assign_ips(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, EniError> {
        Ok(self.ec2.assign_private_ips(eni_id, count).await?)
    }

    /// Add `count` /28 prefixes to an ENI; returns the new prefixes.
    pub async fn assign_prefixes(
        &self,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv4Net>, EniError> {
        Ok(self.ec2.assign_prefixes(eni_id, count).await?)
    }

    /// Remove secondary IPs from an ENI.
    pub async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), EniError> {
        Ok(self.ec2.unassign_private_ips(eni_id, ips).await?)
    }

    /// Remove prefixes from an ENI.
    pub async fn unassign_prefixes(
        &self,
        eni_id: &str,
        prefixes: &[Ipv4Net],
    ) -> Result<(), EniError> {
        Ok(self.ec2.unassign_prefixes(eni_id, prefixes).await?)
    }

    /// Write our ownership tags on ENIs we manage (start-up and newly found ENIs).
    pub async fn top_up_tags(&self, eni_ids: &[String]) -> Result<(), EniError> {
        Ok(self
            .ec2
            .create_tags(eni_ids, &self.ownership_tags())
            .await?)
    }

    /// Deletes `available` ENIs a previous run of this daemon created and left behind (killed
    /// between `CreateNetworkInterface` and the attach, or during a detach), at start-up.
    /// Returns the deleted IDs.
    ///
    /// After a restart this runs while the pool already grows, so an ENI this process is
    /// creating looks exactly like a leftover (ours, `available`, same description) between its
    /// create and its attach. Those are skipped (the `creating` set, and a `createdAt` tag not
    /// older than this manager), and a leftover is only ever deleted, never detached: if it got
    /// attached after the listing, EC2 refuses the delete and it is left alone. Detaching it
    /// instead (as a full free would) pulls an ENI out from under its own growth, which then
    /// waits in vain for it to show up in IMDS while counting as growth in flight.
    pub async fn delete_own_leftovers(&self) -> Result<Vec<String>, EniError> {
        let filters = [
            Filter::new(
                &format!("tag:{TAG_INSTANCE_ID}"),
                &self.settings.instance_id,
            ),
            Filter::new("status", "available"),
            Filter::new("vpc-id", &self.settings.vpc_id),
        ];
        let found = self
            .ec2
            .describe_network_interfaces_filtered(&filters)
            .await?;
        let mut deleted = Vec::new();
        for e in found {
            if e.status != "available"
                || e.description != self.description()
                || self.unmanaged_reason(&e, false).is_some()
            {
                continue;
            }
            if self.is_own_new(&e) {
                tracing::debug!(eni = %e.eni_id, "ENI being created by this run; not a leftover");
                continue;
            }
            match self.ec2.delete_network_interface(&e.eni_id).await {
                Ok(()) => {
                    tracing::info!(eni = %e.eni_id, "deleted ENI a previous run left behind");
                    deleted.push(e.eni_id);
                }
                Err(err) if err.is_not_found() => {}
                Err(err) => {
                    // Typically "currently in use": attached since the listing. Not ours to
                    // detach; if it really leaked, the leaked-ENI sweep deletes it later.
                    tracing::warn!(eni = %e.eni_id, error = %err, "cannot delete leftover ENI")
                }
            }
        }
        Ok(deleted)
    }

    /// Whether `eni` was created by this manager (in progress, or tagged at or after its start).
    fn is_own_new(&self, eni: &EniInfo) -> bool {
        if self
            .creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&eni.eni_id)
        {
            return true;
        }
        eni.tags
            .get(TAG_CREATED_AT)
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
            .is_some_and(|created| created >= self.started)
    }

    /// One pass of the two-phase leaked-ENI sweep: `available` ENIs tagged with this instance,
    /// described `aws-K8S-…` and older than the grace period are marked on the first pass and
    /// deleted on the next pass if still leaked (so an ENI that is between create and attach in a
    /// concurrent flow is never deleted on a single observation).
    pub async fn sweep_leaked(
        &self,
        sweeper: &mut LeakedEniSweeper,
        now: OffsetDateTime,
    ) -> Result<SweepReport, EniError> {
        let mut filters = vec![
            Filter::new(
                &format!("tag:{TAG_INSTANCE_ID}"),
                &self.settings.instance_id,
            ),
            Filter::new("status", "available"),
            Filter::new("vpc-id", &self.settings.vpc_id),
        ];
        if let Some(c) = &self.settings.cluster_name {
            filters.push(Filter::new(&format!("tag:{TAG_CLUSTER_NAME}"), c));
        }
        let found = self
            .ec2
            .describe_network_interfaces_filtered(&filters)
            .await?;
        let mut report = SweepReport::default();
        let mut leaked = BTreeSet::new();
        let mut to_tag = Vec::new();
        for eni in found {
            if eni.status != "available" || !eni.description.starts_with(DESCRIPTION_PREFIX) {
                continue;
            }
            if eni
                .tags
                .get(TAG_NO_MANAGE)
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            {
                continue;
            }
            // Missing or unparsable createdAt: stamp it now and judge it later (upstream's
            // unparsable case deletes at once, ipam.md §13 #18).
            let created = eni
                .tags
                .get(TAG_CREATED_AT)
                .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok());
            let Some(created) = created else {
                to_tag.push(eni.eni_id);
                continue;
            };
            let age = now - created;
            if age
                >= time::Duration::try_from(self.settings.leaked_grace)
                    .unwrap_or(time::Duration::MAX)
            {
                leaked.insert(eni.eni_id);
            }
        }
        if !to_tag.is_empty() {
            let mut t = BTreeMap::new();
            if let Ok(ts) = now.format(&Rfc3339) {
                t.insert(TAG_CREATED_AT.to_string(), ts);
            }
            self.ec2.create_tags(&to_tag, &t).await?;
            report.tagged = to_tag;
        }
        let mut still_marked = BTreeSet::new();
        for id in leaked {
            if sweeper.marked.contains(&id) {
                match self.delete_with_retry(&id).await {
                    Ok(()) => report.deleted.push(id),
                    Err(e) => {
                        tracing::warn!(eni = id, error = %e, "leaked ENI delete failed");
                        report.failed.push(id.clone());
                        still_marked.insert(id);
                    }
                }
            } else {
                report.marked.push(id.clone());
                still_marked.insert(id);
            }
        }
        sweeper.marked = still_marked;
        Ok(report)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ec2::{Ec2Settings, RetryPolicy, SdkEc2};
    use crate::imds::{HttpImdsSource, ImdsSettings};
    use crate::limiter::{LimiterSettings, TokenBucket};
    use std::sync::Arc;
    use vpcsim::server::{Sim, SimConfig};

    /// A growth round of three ENIs against vpcsim (real SDK client over loopback HTTP): one
    /// `DescribeSubnets` and one `DescribeInstances` for the round, three distinct device
    /// indexes, no attach conflict, and the reservations released afterwards.
    #[tokio::test]
    async fn growth_round_reads_once_and_attaches_without_conflicts() {
        let sim = Sim::new(SimConfig::default());
        let subnet = sim
            .add_subnet("10.0.0.0/24".parse().unwrap(), None, &[])
            .unwrap();
        let inst = sim.add_instance("m5.xlarge", &subnet).unwrap();
        let ep = sim.serve_loopback().await.unwrap();
        let imds = Imds::new(
            HttpImdsSource::new(&ImdsSettings {
                endpoint: Some(format!(
                    "http://{}",
                    ep.imds_for(&inst.instance_id).unwrap()
                )),
                ..ImdsSettings::default()
            })
            .unwrap(),
        );
        let creds = aws_credential_types::Credentials::new("AKID", "secret", None, None, "test");
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .credentials_provider(creds)
            .region(aws_config::Region::new("us-west-2"))
            .load()
            .await;
        let ec2 = SdkEc2::from_sdk_config(
            &sdk,
            &Ec2Settings {
                region: "us-west-2".into(),
                endpoint: Some(ep.ec2_url()),
                http_timeout: Duration::from_secs(5),
                retry: RetryPolicy {
                    max_attempts: 5,
                    base: Duration::from_millis(5),
                    max: Duration::from_millis(50),
                },
            },
            Arc::new(
                TokenBucket::new(LimiterSettings {
                    qps: 1000.0,
                    burst: 1000,
                })
                .unwrap(),
            ),
        );
        let meta = imds.instance().await.unwrap();
        let primary = imds
            .interface(&meta.primary_mac, &meta.primary_mac)
            .await
            .unwrap();
        let mut st = EniSettings::new(
            &meta.instance_id,
            primary.vpc_id.as_deref().unwrap_or_default(),
            &meta.availability_zone,
            &primary.subnet_id,
        );
        st.visible_wait = Backoff {
            attempts: 40,
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        };
        let m = EniManager::new(ec2.clone(), imds, AssumeLinkPresent, st);

        let slots = m.prepare_attach(3).await;
        let idx: Vec<Option<u32>> = slots.iter().map(|s| s.device_index).collect();
        assert_eq!(idx, [Some(1), Some(2), Some(3)]);
        assert!(
            slots
                .iter()
                .all(|s| s.subnets.as_deref() == Some(&[subnet.clone()][..]))
        );
        // A concurrent round does not get the reserved indexes.
        let other = m.prepare_attach(2).await;
        assert_eq!(other[0].device_index, Some(4));
        for s in &other {
            m.reserved().remove(&s.device_index.unwrap());
        }
        let before = ec2.stats().snapshot();
        let res = futures::future::join_all(
            slots
                .into_iter()
                .map(|s| m.create_and_attach_in(AddressRequest::Ips(2), s)),
        )
        .await;
        let mut got: Vec<u32> = res.into_iter().map(|r| r.unwrap().device_index).collect();
        got.sort_unstable();
        assert_eq!(got, [1, 2, 3]);
        let after = ec2.stats().snapshot();
        let delta = |k: &str| {
            after.get(k).map_or(0, |s| s.attempts) - before.get(k).map_or(0, |s| s.attempts)
        };
        assert_eq!(delta("AttachNetworkInterface"), 3, "no conflict retries");
        assert_eq!(delta("DescribeInstances"), 0, "indexes came from the round");
        assert_eq!(delta("DescribeSubnets"), 0, "subnets came from the round");
        assert!(m.reserved().is_empty());
        // One ENI alone reads per ENI, as before.
        assert_eq!(m.prepare_attach(1).await, vec![AttachSlot::default()]);
    }
}
