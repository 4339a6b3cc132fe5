//! Warm-pool decisions (ipam.md §4–6) as pure functions over a [`PoolStats`] snapshot.
//!
//! Upstream's arithmetic is kept exactly (see the table tests), with these deliberate changes
//! (ipam.md §13):
//! * `A` is *free* addresses only: cooling addresses are neither available nor releasable.
//! * [`plan_increase`] repeats upstream's one-action-per-tick step on a simulated pool until the
//!   target is met, so the daemon issues the whole growth at once instead of one ENI per 5 s.
//!   The end state equals the one upstream reaches after several ticks.
//! * ADDs waiting for an address (`pending`) count as demand: they are subtracted from `A` (and
//!   from `F`), so a burst of pods sizes the increase, and nothing is released while any wait.
//! * Choices are deterministic: fill existing ENIs by ascending device number; release CIDRs and
//!   ENIs from the emptiest / highest-numbered ENI first (the datastore packs pods the other way).
//! * [`fallback_to_ips`] turns a prefix request into secondary IPs when the subnet has no free
//!   aligned /28.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::config::PoolTargets;
use crate::datastore::{CidrKind, EniId, EniStats, PoolStats};

/// Addresses in a /28 prefix.
pub const PREFIX_SIZE: i64 = 16;
/// Minimum gap between individual-CIDR releases (upstream).
pub const DECREASE_INTERVAL: Duration = Duration::from_secs(30);
/// An ENI younger than this is never deleted (upstream).
pub const ENI_MIN_AGE: Duration = Duration::from_secs(60);
/// No increase attempts this long after an insufficient-capacity error (upstream).
pub const INSUFFICIENT_CAPACITY_BACKOFF: Duration = Duration::from_secs(120);

/// Instance and node limits the pool works within (`Default`: all zero, i.e. no capacity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// `L`: IPv4 addresses per ENI of the instance type (primary IP included).
    pub ipv4_per_eni: u32,
    /// ENI limit of the default network card.
    pub max_enis: u32,
    /// Node max pods: growth stops once `T ≥ max_pods`.
    pub max_pods: u32,
    /// Attached ENIs we must not use (`no_manage`, untagged with `MANAGE_UNTAGGED_ENI=false`).
    pub unmanaged_enis: u32,
    /// ENI slots reserved for a future trunk (security groups for pods; 0 for now).
    pub trunk_reserve: u32,
}

impl Limits {
    /// Address slots per ENI: `L − 1` (the ENI's primary IP is never given to pods).
    pub fn slots_per_eni(&self) -> i64 {
        i64::from(self.ipv4_per_eni.saturating_sub(1))
    }

    /// `I`: addresses per ENI in the given mode.
    pub fn addrs_per_eni(&self, prefix_mode: bool) -> i64 {
        if prefix_mode {
            PREFIX_SIZE * self.slots_per_eni()
        } else {
            self.slots_per_eni()
        }
    }

    /// `maxENI = min(MAX_ENI if ≥ 1, default-card limit)`.
    pub fn max_eni(&self, t: &PoolTargets) -> i64 {
        let m = match t.max_eni {
            Some(m) if m >= 1 => m.min(self.max_enis),
            _ => self.max_enis,
        };
        i64::from(m)
    }

    /// ENIs the datastore may hold: `maxENI − unmanaged − trunkReserve`.
    pub fn eni_budget(&self, t: &PoolTargets) -> i64 {
        self.max_eni(t) - i64::from(self.unmanaged_enis) - i64::from(self.trunk_reserve)
    }
}

/// One increase action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grow {
    /// `AssignPrivateIpAddresses` on an ENI we have.
    Existing {
        /// The ENI.
        eni: EniId,
        /// How many secondary IPs or prefixes.
        count: u32,
        /// Which.
        kind: CidrKind,
    },
    /// `CreateNetworkInterface` + attach, with this many secondary IPs or prefixes.
    NewEni {
        /// How many.
        count: u32,
        /// Which.
        kind: CidrKind,
    },
}

impl Grow {
    /// Requested count.
    pub fn count(&self) -> u32 {
        match self {
            Grow::Existing { count, .. } | Grow::NewEni { count, .. } => *count,
        }
    }
    /// Requested kind.
    pub fn kind(&self) -> CidrKind {
        match self {
            Grow::Existing { kind, .. } | Grow::NewEni { kind, .. } => *kind,
        }
    }
}

/// Everything the pool math looks at.
#[derive(Debug, Clone, Copy)]
pub struct PoolInput<'a> {
    /// Datastore snapshot.
    pub stats: &'a PoolStats,
    /// Configured targets.
    pub targets: &'a PoolTargets,
    /// Instance/node limits.
    pub limits: &'a Limits,
    /// ADDs currently waiting for an address.
    pub pending: usize,
}

fn ceil_div(a: i64, b: i64) -> i64 {
    if a <= 0 { 0 } else { (a + b - 1) / b }
}

fn as_i64(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A simulated ENI: what the planner tracks while it applies steps.
#[derive(Debug, Clone)]
struct SimEni {
    /// Index into the plan (`None` for ENIs that already exist).
    planned: Option<usize>,
    /// Can be the target of a fill step (false for new ENIs already in flight: no ID yet).
    fillable: bool,
    id: EniId,
    device: u32,
    usable_for_pods: bool,
    slots_used: i64,
    total: i64,
    free: i64,
    prefixes: i64,
    free_prefixes: i64,
}

/// The numbers of ipam.md's notation, with pending ADDs applied.
#[derive(Debug, Clone)]
struct Sim {
    pd: bool,
    enis: Vec<SimEni>,
    assigned: i64,
    cooling: i64,
    pending: i64,
}

impl Sim {
    fn new(input: &PoolInput<'_>) -> Self {
        let s = input.stats;
        Sim {
            pd: s.prefix_mode,
            enis: s
                .enis
                .iter()
                .map(|e| SimEni {
                    planned: None,
                    fillable: true,
                    id: e.id.clone(),
                    device: e.device_number,
                    usable_for_pods: !e.excluded,
                    slots_used: as_i64(e.slots_used()),
                    total: as_i64(e.total()),
                    free: as_i64(e.free()),
                    prefixes: as_i64(e.prefixes()),
                    free_prefixes: as_i64(e.free_prefixes()),
                })
                .collect(),
            assigned: as_i64(s.assigned()),
            cooling: as_i64(s.cooling()),
            pending: as_i64(input.pending),
        }
    }

    fn pod_enis(&self) -> impl Iterator<Item = &SimEni> {
        self.enis.iter().filter(|e| e.usable_for_pods)
    }
    /// `T`
    fn total(&self) -> i64 {
        self.pod_enis().map(|e| e.total).sum()
    }
    /// `U` plus pending ADDs.
    fn used(&self) -> i64 {
        self.assigned + self.pending
    }
    /// `A` (free, cooling excluded) minus pending ADDs; may be negative.
    fn avail(&self) -> i64 {
        self.pod_enis().map(|e| e.free).sum::<i64>() - self.pending
    }
    /// `TP`
    fn prefixes(&self) -> i64 {
        self.pod_enis().map(|e| e.prefixes).sum()
    }
    /// `F`, minus the prefixes pending ADDs will break into (they use partial CIDRs first).
    fn free_prefixes(&self) -> i64 {
        let f: i64 = self.pod_enis().map(|e| e.free_prefixes).sum();
        let free: i64 = self.pod_enis().map(|e| e.free).sum();
        let partial_free = free - PREFIX_SIZE * f;
        let spill = (self.pending - partial_free).max(0);
        (f - ceil_div(spill, PREFIX_SIZE)).max(0)
    }
}

/// `(short, over)` of ipam.md §4.1, in addresses (only meaningful with IP targets).
fn target_state_sim(sim: &Sim, t: &PoolTargets) -> (i64, i64) {
    let w = i64::from(t.warm_ip);
    let m = i64::from(t.minimum_ip);
    let a = sim.avail();
    let total = sim.total();
    let short = (w - a).max(0).max(m - total);
    let over = (a - w).max(0).min(total - m).max(0);
    (short, over)
}

/// `(short, over)` of ipam.md §4.1, in addresses.
pub fn target_state(input: &PoolInput<'_>) -> (i64, i64) {
    target_state_sim(&Sim::new(input), input.targets)
}

/// `(shortPrefixes, overPrefixes)` of ipam.md §4.1.
pub fn target_state_prefixes(input: &PoolInput<'_>) -> (i64, i64) {
    prefix_targets_sim(&Sim::new(input), input.targets)
}

fn prefix_targets_sim(sim: &Sim, t: &PoolTargets) -> (i64, i64) {
    let (short, _) = target_state_sim(sim, t);
    let w = i64::from(t.warm_ip);
    let m = i64::from(t.minimum_ip);
    let tp = sim.prefixes();
    // Cooling addresses cannot be used yet: they count as used for sizing (ours).
    let used = sim.used() + sim.cooling;
    let over = sim
        .free_prefixes()
        .min(tp - ceil_div(used + w, PREFIX_SIZE))
        .min(tp - ceil_div(m, PREFIX_SIZE))
        .max(0);
    (ceil_div(short, PREFIX_SIZE), over)
}

fn is_low_sim(sim: &Sim, t: &PoolTargets, l: &Limits) -> bool {
    let total = sim.total();
    if total >= i64::from(l.max_pods) {
        return false;
    }
    let a = sim.avail();
    if t.ip_targets_set() {
        target_state_sim(sim, t).0 > 0
    } else if !sim.pd {
        let e = i64::from(t.warm_eni);
        a < l.addrs_per_eni(false) * e || (e == 0 && a <= 0)
    } else {
        let p = i64::from(t.warm_prefix);
        a < PREFIX_SIZE * p || (p == 0 && a <= 0)
    }
}

/// ipam.md §4.2: does the pool need to grow?
pub fn is_low(input: &PoolInput<'_>) -> bool {
    is_low_sim(&Sim::new(input), input.targets, input.limits)
}

/// ipam.md §4.3: are there individual CIDRs to release? (The 30 s gate is the caller's.)
pub fn is_high(input: &PoolInput<'_>) -> bool {
    let sim = Sim::new(input);
    if sim.pending > 0 {
        return false;
    }
    let t = input.targets;
    if t.ip_targets_set() {
        if sim.pd {
            prefix_targets_sim(&sim, t).1 > 0
        } else {
            target_state_sim(&sim, t).1 > 0
        }
    } else if sim.pd {
        sim.free_prefixes() > i64::from(t.warm_prefix)
    } else {
        false
    }
}

/// The single action upstream would take this tick (ipam.md §4.5, §5), or None.
fn step(sim: &Sim, t: &PoolTargets, l: &Limits) -> Option<(Option<usize>, i64)> {
    if !is_low_sim(sim, t, l) {
        return None;
    }
    let slots = l.slots_per_eni();
    let targets = t.ip_targets_set();
    let need = if sim.pd {
        if targets {
            prefix_targets_sim(sim, t).0.max(1)
        } else {
            (i64::from(t.warm_prefix) - sim.free_prefixes()).max(1)
        }
    } else if targets {
        target_state_sim(sim, t).0
    } else {
        l.addrs_per_eni(false)
    };
    if need <= 0 {
        return None;
    }
    // Fill existing ENIs first, lowest device number first.
    let mut order: Vec<usize> = (0..sim.enis.len())
        .filter(|&i| {
            let e = &sim.enis[i];
            e.usable_for_pods && e.fillable && e.slots_used < slots
        })
        .collect();
    order.sort_by_key(|&i| (sim.enis[i].planned.is_some(), sim.enis[i].device, i));
    if let Some(&i) = order.first() {
        let room = slots - sim.enis[i].slots_used;
        return Some((Some(i), room.min(need)));
    }
    if as_i64(sim.enis.len()) < l.eni_budget(t) {
        return Some((None, need.min(slots)));
    }
    None
}

fn apply(sim: &mut Sim, target: Option<usize>, count: i64, plan: &mut Vec<Grow>, kind: CidrKind) {
    let size = if kind == CidrKind::Prefix {
        PREFIX_SIZE
    } else {
        1
    };
    let idx = match target {
        Some(i) => i,
        None => {
            plan.push(Grow::NewEni { count: 0, kind });
            sim.enis.push(SimEni {
                planned: Some(plan.len() - 1),
                fillable: true,
                id: String::new(),
                device: u32::MAX,
                usable_for_pods: true,
                slots_used: 0,
                total: 0,
                free: 0,
                prefixes: 0,
                free_prefixes: 0,
            });
            sim.enis.len() - 1
        }
    };
    let e = &mut sim.enis[idx];
    e.slots_used += count;
    e.total += count * size;
    e.free += count * size;
    if kind == CidrKind::Prefix {
        e.prefixes += count;
        e.free_prefixes += count;
    }
    let n = u32::try_from(count).unwrap_or(u32::MAX);
    match e.planned {
        Some(p) => {
            if let Some(Grow::NewEni { count, .. }) = plan.get_mut(p) {
                *count += n;
            }
        }
        None => {
            let id = e.id.clone();
            match plan
                .iter_mut()
                .find(|g| matches!(g, Grow::Existing { eni, .. } if *eni == id))
            {
                Some(Grow::Existing { count, .. }) => *count += n,
                _ => plan.push(Grow::Existing {
                    eni: id,
                    count: n,
                    kind,
                }),
            }
        }
    }
}

fn kind_of(pd: bool) -> CidrKind {
    if pd {
        CidrKind::Prefix
    } else {
        CidrKind::SecondaryIp
    }
}

/// Upstream's one-tick increase (ipam.md §5): at most one action. Exposed so the worked examples
/// can be replayed tick by tick.
pub fn next_increase(input: &PoolInput<'_>) -> Option<Grow> {
    let sim = Sim::new(input);
    let (target, count) = step(&sim, input.targets, input.limits)?;
    let kind = kind_of(sim.pd);
    let n = u32::try_from(count).unwrap_or(u32::MAX);
    Some(match target {
        Some(i) => Grow::Existing {
            eni: sim.enis[i].id.clone(),
            count: n,
            kind,
        },
        None => Grow::NewEni { count: n, kind },
    })
}

/// Our increase: upstream's step applied repeatedly on a simulated pool until it is no longer
/// low (or nothing more fits), merged per ENI. Existing-ENI actions come first, then new ENIs.
pub fn plan_increase(input: &PoolInput<'_>) -> Vec<Grow> {
    plan_increase_with(input, &[])
}

/// [`plan_increase`] with growth already in flight (`incoming`: actions issued to EC2 that have
/// not landed in the datastore yet). They count as done, so a new plan adds only what is still
/// missing, and the daemon can attach the next ENI while earlier ones are still attaching.
pub fn plan_increase_with(input: &PoolInput<'_>, incoming: &[Grow]) -> Vec<Grow> {
    let mut sim = Sim::new(input);
    let kind = kind_of(sim.pd);
    let mut scratch = Vec::new();
    for g in incoming {
        match g {
            Grow::Existing { eni, count, kind } => {
                if let Some(i) = sim
                    .enis
                    .iter()
                    .position(|e| e.planned.is_none() && e.id == *eni)
                {
                    apply(&mut sim, Some(i), i64::from(*count), &mut scratch, *kind);
                }
            }
            Grow::NewEni { count, kind } => {
                apply(&mut sim, None, i64::from(*count), &mut scratch, *kind);
                if let Some(e) = sim.enis.last_mut() {
                    e.fillable = false;
                }
            }
        }
    }
    let mut plan = Vec::new();
    // Each step adds at least one slot; the slot budget bounds the loop.
    let max_steps = (input.limits.eni_budget(input.targets).max(0) + 1)
        * (input.limits.slots_per_eni() + 1)
        + 1;
    for _ in 0..max_steps {
        let Some((target, count)) = step(&sim, input.targets, input.limits) else {
            break;
        };
        if count <= 0 {
            break;
        }
        apply(&mut sim, target, count, &mut plan, kind);
    }
    plan.sort_by_key(|g| matches!(g, Grow::NewEni { .. }));
    plan
}

/// When a prefix request failed because the subnet has no free aligned /28
/// (`InsufficientCidrBlocks`), the same need expressed as secondary IPs: up to 16 per prefix,
/// capped by the free slots of the ENI (`slots_used` of an existing ENI, 0 for a new one).
pub fn fallback_to_ips(g: &Grow, slots_used: usize, limits: &Limits) -> Option<Grow> {
    if g.kind() != CidrKind::Prefix {
        return None;
    }
    let room = (limits.slots_per_eni() - as_i64(slots_used)).max(0);
    let n = (i64::from(g.count()) * PREFIX_SIZE).min(room);
    if n <= 0 {
        return None;
    }
    let count = u32::try_from(n).unwrap_or(u32::MAX);
    Some(match g {
        Grow::Existing { eni, .. } => Grow::Existing {
            eni: eni.clone(),
            count,
            kind: CidrKind::SecondaryIp,
        },
        Grow::NewEni { .. } => Grow::NewEni {
            count,
            kind: CidrKind::SecondaryIp,
        },
    })
}

/// One CIDR to hand back to EC2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseCidr {
    /// Owning ENI.
    pub eni: EniId,
    /// The secondary IP (/32) or prefix (/28).
    pub cidr: Ipv4Net,
}

impl ReleaseCidr {
    /// The address for `UnassignPrivateIpAddresses` (secondary IP) — the network of a /32.
    pub fn ip(&self) -> Ipv4Addr {
        self.cidr.network()
    }
}

/// Empty CIDRs in release order: emptiest ENI first, then highest device number, then highest
/// network; only CIDRs with no assigned and no cooling address (ours: upstream ignores cooldown).
fn empty_cidrs(stats: &PoolStats, kind: CidrKind) -> Vec<ReleaseCidr> {
    let mut enis: Vec<&EniStats> = stats.enis.iter().filter(|e| !e.excluded).collect();
    enis.sort_by(|a, b| {
        (a.assigned(), std::cmp::Reverse(a.device_number))
            .cmp(&(b.assigned(), std::cmp::Reverse(b.device_number)))
    });
    let mut out = Vec::new();
    for e in enis {
        let mut cidrs: Vec<_> = e
            .cidrs
            .iter()
            .filter(|c| c.usable && c.kind == kind && c.is_empty())
            .collect();
        cidrs.sort_by_key(|c| std::cmp::Reverse(c.net));
        out.extend(cidrs.into_iter().map(|c| ReleaseCidr {
            eni: e.id.clone(),
            cidr: c.net,
        }));
    }
    out
}

/// Empty CIDRs that no longer belong: prefixes left over in secondary-IP mode, and any CIDR on
/// an excluded ENI (upstream releases both at start-up; we do it whenever they are empty).
pub fn stray_cidrs(stats: &PoolStats) -> Vec<ReleaseCidr> {
    let mut out = Vec::new();
    for e in &stats.enis {
        if e.trunk {
            continue;
        }
        for c in &e.cidrs {
            if c.is_empty() && (e.excluded || !c.usable) {
                out.push(ReleaseCidr {
                    eni: e.id.clone(),
                    cidr: c.net,
                });
            }
        }
    }
    out
}

/// ipam.md §6.1: the individual CIDRs to release now (caller enforces the 30 s gate). Nothing
/// while ADDs are waiting.
pub fn plan_release(input: &PoolInput<'_>) -> Vec<ReleaseCidr> {
    let sim = Sim::new(input);
    if sim.pending > 0 {
        return Vec::new();
    }
    let t = input.targets;
    let stats = input.stats;
    let mut out = Vec::new();
    if sim.pd {
        let over = if t.ip_targets_set() {
            prefix_targets_sim(&sim, t).1
        } else {
            (sim.free_prefixes() - i64::from(t.warm_prefix)).max(0)
        };
        let n = usize::try_from(over).unwrap_or(0);
        out.extend(empty_cidrs(stats, CidrKind::Prefix).into_iter().take(n));
        // /32 fallback IPs: release the empty ones the warm target does not need.
        let released_addrs = as_i64(out.len()) * PREFIX_SIZE;
        let need_free = if t.ip_targets_set() {
            i64::from(t.warm_ip)
        } else {
            PREFIX_SIZE * i64::from(t.warm_prefix)
        };
        let spare_free = sim.avail() - released_addrs - need_free;
        let spare_total = sim.total() - released_addrs - i64::from(t.minimum_ip);
        let n = usize::try_from(spare_free.min(spare_total).max(0)).unwrap_or(0);
        out.extend(
            empty_cidrs(stats, CidrKind::SecondaryIp)
                .into_iter()
                .take(n),
        );
    } else if t.ip_targets_set() {
        let n = usize::try_from(target_state_sim(&sim, t).1).unwrap_or(0);
        out.extend(
            empty_cidrs(stats, CidrKind::SecondaryIp)
                .into_iter()
                .take(n),
        );
    }
    out
}

/// ipam.md §4.4: should we look for ENIs to free?
fn remove_extra_sim(sim: &Sim, input: &PoolInput<'_>) -> bool {
    let t = input.targets;
    let l = input.limits;
    if sim.pending > 0 {
        return false;
    }
    if t.ip_targets_set() {
        return true;
    }
    let a = sim.avail();
    if !sim.pd {
        a >= (i64::from(t.warm_eni) + 1) * l.addrs_per_eni(false)
    } else {
        a >= (i64::from(t.warm_prefix) + 1) * l.addrs_per_eni(true)
            || input.stats.enis.iter().any(|e| {
                sim.enis.iter().any(|s| s.id == e.id)
                    && !e.is_primary
                    && !e.trunk
                    && !e.efa
                    && e.busy_anywhere() == 0
            })
    }
}

/// ipam.md §4.4 without pending adjustments, for the tables.
pub fn should_remove_extra_enis(input: &PoolInput<'_>) -> bool {
    remove_extra_sim(&Sim::new(input), input)
}

fn round16(v: i64) -> i64 {
    ceil_div(v, PREFIX_SIZE) * PREFIX_SIZE
}

/// ipam.md §6.2 against the simulated remaining ENIs.
fn deletable(e: &EniStats, sim: &Sim, t: &PoolTargets) -> bool {
    if e.is_primary || e.trunk || e.efa || e.age < ENI_MIN_AGE || e.busy_anywhere() > 0 {
        return false;
    }
    let others = sim.pod_enis().filter(|s| s.id != e.id);
    let (mut free, mut total, mut fp) = (0, 0, 0);
    for s in others {
        free += s.free;
        total += s.total;
        fp += s.free_prefixes;
    }
    let (w, m) = (i64::from(t.warm_ip), i64::from(t.minimum_ip));
    let (w, m) = if sim.pd {
        (round16(w), round16(m))
    } else {
        (w, m)
    };
    if w != 0 && free < w {
        return false;
    }
    if m != 0 && total < m {
        return false;
    }
    if sim.pd && t.warm_prefix != 0 && fp < i64::from(t.warm_prefix) {
        return false;
    }
    true
}

/// Upstream's single ENI removal for this tick (ipam.md §6.2), highest device number first.
pub fn next_eni_removal(input: &PoolInput<'_>) -> Option<EniId> {
    plan_eni_removal_inner(input, 1).into_iter().next()
}

/// Our ENI removal: every ENI that upstream would free over successive ticks, in order
/// (highest device number first). Nothing while ADDs are waiting.
pub fn plan_eni_removal(input: &PoolInput<'_>) -> Vec<EniId> {
    plan_eni_removal_inner(input, usize::MAX)
}

fn plan_eni_removal_inner(input: &PoolInput<'_>, limit: usize) -> Vec<EniId> {
    let mut sim = Sim::new(input);
    let mut out = Vec::new();
    let mut candidates: Vec<&EniStats> = input.stats.enis.iter().collect();
    candidates.sort_by_key(|e| std::cmp::Reverse(e.device_number));
    while out.len() < limit && remove_extra_sim(&sim, input) {
        let Some(e) = candidates
            .iter()
            .find(|e| !out.contains(&e.id) && deletable(e, &sim, input.targets))
        else {
            break;
        };
        out.push(e.id.clone());
        sim.enis.retain(|s| s.id != e.id);
    }
    out
}

/// The whole decision for one pool-manager pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Increase actions (empty when not low).
    pub grow: Vec<Grow>,
    /// CIDRs to release (empty while growing or inside the 30 s gate).
    pub release: Vec<ReleaseCidr>,
    /// ENIs to detach and delete (empty while growing).
    pub delete_enis: Vec<EniId>,
}

/// Deficit first, releases last (ipam.md §14): grow if low; otherwise release CIDRs (when the
/// decrease gate is open) and stray CIDRs, then free ENIs.
pub fn decide(input: &PoolInput<'_>, release_gate_open: bool) -> Decision {
    decide_with(input, release_gate_open, &[])
}

/// [`decide`] with growth in flight: nothing is released or deleted while any is.
pub fn decide_with(input: &PoolInput<'_>, release_gate_open: bool, incoming: &[Grow]) -> Decision {
    let grow = plan_increase_with(input, incoming);
    if !grow.is_empty() || input.pending > 0 || !incoming.is_empty() {
        return Decision {
            grow,
            ..Decision::default()
        };
    }
    let mut release = Vec::new();
    if release_gate_open {
        release = plan_release(input);
        for s in stray_cidrs(input.stats) {
            if !release.contains(&s) {
                release.push(s);
            }
        }
    }
    Decision {
        grow,
        release,
        delete_enis: plan_eni_removal(input),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::datastore::{CidrStats, Datastore, EniInfo, IpamKey, PodMeta};
    use std::time::{SystemTime, UNIX_EPOCH};

    const M5_LARGE: Limits = Limits {
        ipv4_per_eni: 10,
        max_enis: 3,
        max_pods: 29,
        unmanaged_enis: 0,
        trunk_reserve: 0,
    };
    const T3_MEDIUM: Limits = Limits {
        ipv4_per_eni: 6,
        max_enis: 3,
        max_pods: 17,
        unmanaged_enis: 0,
        trunk_reserve: 0,
    };

    fn targets(e: u32, w: u32, m: u32, p: u32, pd: bool) -> PoolTargets {
        PoolTargets {
            warm_eni: e,
            warm_ip: w,
            minimum_ip: m,
            warm_prefix: p,
            max_eni: None,
            prefix_delegation: pd,
        }
    }

    // ------------------------------------------------------------------------------------------
    // A small world: a real datastore, plus EC2 stand-in that applies Grow actions.
    // ------------------------------------------------------------------------------------------
    struct World {
        ds: Datastore,
        next_addr: u32,
        next_dev: u32,
        now: SystemTime,
        pods: Vec<IpamKey>,
        serial: u32,
        limits: Limits,
        targets: PoolTargets,
    }

    impl World {
        fn new(limits: Limits, targets: PoolTargets) -> Self {
            let mut w = World {
                ds: Datastore::new(targets.prefix_delegation, Duration::from_secs(30)),
                next_addr: u32::from(Ipv4Addr::new(10, 0, 16, 0)),
                next_dev: 0,
                now: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                pods: Vec::new(),
                serial: 0,
                limits,
                targets,
            };
            w.new_eni();
            w
        }
        fn new_eni(&mut self) -> EniId {
            let dev = self.next_dev;
            self.next_dev += 1;
            let id = format!("eni-{dev}");
            self.ds.add_eni(
                EniInfo {
                    id: id.clone(),
                    mac: format!("02:00:00:00:00:{dev:02x}"),
                    device_number: dev,
                    is_primary: dev == 0,
                    excluded: false,
                    trunk: false,
                    efa: false,
                    subnet: "10.0.0.0/16".parse().unwrap(),
                    subnet_id: "subnet-1".into(),
                    primary_ip: Ipv4Addr::new(10, 0, 0, 10 + dev as u8),
                },
                self.now,
            );
            id
        }
        fn add(&mut self, eni: &str, count: u32, kind: CidrKind) {
            for _ in 0..count {
                let (len, size) = if kind == CidrKind::Prefix {
                    (28, 16)
                } else {
                    (32, 1)
                };
                let net = Ipv4Net::new(Ipv4Addr::from(self.next_addr), len).unwrap();
                self.next_addr += size;
                self.ds.add_cidr(eni, net).unwrap();
            }
        }
        fn apply(&mut self, g: &Grow) {
            match g {
                Grow::Existing { eni, count, kind } => self.add(eni, *count, *kind),
                Grow::NewEni { count, kind } => {
                    let id = self.new_eni();
                    self.add(&id, *count, *kind);
                }
            }
        }
        fn stats(&self) -> PoolStats {
            self.ds.stats(self.now)
        }
        fn input<'a>(&'a self, s: &'a PoolStats, pending: usize) -> PoolInput<'a> {
            PoolInput {
                stats: s,
                targets: &self.targets,
                limits: &self.limits,
                pending,
            }
        }
        fn next(&self) -> Option<Grow> {
            let s = self.stats();
            next_increase(&self.input(&s, 0))
        }
        fn plan(&self, pending: usize) -> Vec<Grow> {
            let s = self.stats();
            plan_increase(&self.input(&s, pending))
        }
        /// Runs upstream's tick loop until not low; returns the number of ticks.
        fn tick_until_settled(&mut self) -> usize {
            let mut ticks = 0;
            while let Some(g) = self.next() {
                self.apply(&g);
                ticks += 1;
                assert!(ticks < 100);
            }
            ticks
        }
        fn set_pods(&mut self, n: usize) {
            while self.pods.len() > n {
                let k = self.pods.pop().unwrap();
                self.ds.release(&k, self.now).unwrap();
            }
            while self.pods.len() < n {
                self.serial += 1;
                let k = IpamKey::new("aws-cni", &format!("c{}", self.serial), "eth0");
                self.ds.assign(&k, PodMeta::default(), self.now).unwrap();
                self.pods.push(k);
            }
        }
        fn try_pods(&mut self, n: usize) -> usize {
            let mut ok = 0;
            for _ in 0..n {
                self.serial += 1;
                let k = IpamKey::new("aws-cni", &format!("c{}", self.serial), "eth0");
                if self.ds.assign(&k, PodMeta::default(), self.now).is_ok() {
                    self.pods.push(k);
                    ok += 1;
                }
            }
            ok
        }
        fn advance(&mut self, secs: u64) {
            self.now += Duration::from_secs(secs);
        }
        /// (ENIs, T, U, A)
        fn row(&self) -> (usize, usize, usize, usize) {
            let s = self.stats();
            (s.enis.len(), s.total(), s.assigned(), s.free())
        }
    }

    fn ip(eni: &str, n: u32) -> Grow {
        Grow::Existing {
            eni: eni.into(),
            count: n,
            kind: CidrKind::SecondaryIp,
        }
    }
    fn new_ips(n: u32) -> Grow {
        Grow::NewEni {
            count: n,
            kind: CidrKind::SecondaryIp,
        }
    }
    fn pfx(eni: &str, n: u32) -> Grow {
        Grow::Existing {
            eni: eni.into(),
            count: n,
            kind: CidrKind::Prefix,
        }
    }

    #[test]
    fn worked_example_m5_large_default() {
        let mut w = World::new(M5_LARGE, targets(1, 0, 0, 0, false));
        // | fresh node | 1 | 0 | 0 | 0 | low → assign 9 IPs to the primary ENI |
        assert_eq!(w.row(), (1, 0, 0, 0));
        assert_eq!(w.next(), Some(ip("eni-0", 9)));
        w.apply(&ip("eni-0", 9));
        // | next tick | 1 | 9 | 0 | 9 | not low |
        assert_eq!(w.row(), (1, 9, 0, 9));
        assert_eq!(w.next(), None);
        // | 1 pod | 1 | 9 | 1 | 8 | low; primary is full → new ENI with 9 IPs |
        w.set_pods(1);
        assert_eq!(w.row(), (1, 9, 1, 8));
        assert_eq!(w.next(), Some(new_ips(9)));
        w.apply(&new_ips(9));
        // | after | 2 | 18 | 1 | 17 | not low |
        assert_eq!(w.row(), (2, 18, 1, 17));
        assert_eq!(w.next(), None);
        // | 10 pods | 2 | 18 | 10 | 8 | low → third ENI with 9 IPs |
        w.set_pods(10);
        assert_eq!(w.row(), (2, 18, 10, 8));
        assert_eq!(w.next(), Some(new_ips(9)));
        w.apply(&new_ips(9));
        assert_eq!(w.row(), (3, 27, 10, 17));
        assert_eq!(w.next(), None);
        // | 19 pods | 3 | 27 | 19 | 8 | low, but no room for a 4th ENI |
        w.set_pods(19);
        assert_eq!(w.row(), (3, 27, 19, 8));
        let s = w.stats();
        assert!(is_low(&w.input(&s, 0)));
        assert_eq!(w.next(), None);
        assert!(w.plan(0).is_empty());
        // 27 pod IPs in total: the 28th ADD has nothing.
        assert_eq!(w.try_pods(9), 8);
        w.set_pods(27);
        // All pods deleted; within 60 s / cooldown nothing is freed.
        w.set_pods(0);
        let s = w.stats();
        assert_eq!((s.cooling(), s.free()), (27, 0));
        assert!(plan_eni_removal(&w.input(&s, 0)).is_empty());
        // | all pods deleted, ≥ 60 s later, cooldown over | 3 | 27 | 0 | 27 | free one per tick |
        w.advance(60);
        assert_eq!(w.row(), (3, 27, 0, 27));
        let s = w.stats();
        let inp = w.input(&s, 0);
        assert!(should_remove_extra_enis(&inp));
        assert_eq!(next_eni_removal(&inp), Some("eni-2".to_string()));
        // Ours: both in one decision; | steady | 1 | 9 | 0 | 9 |
        assert_eq!(plan_eni_removal(&inp), ["eni-2", "eni-1"]);
        w.ds.remove_eni("eni-2", false, w.now).unwrap();
        // | 2 | 18 | 0 | 18 | still ≥ 18 → free another |
        assert_eq!(w.row(), (2, 18, 0, 18));
        let s = w.stats();
        assert_eq!(next_eni_removal(&w.input(&s, 0)), Some("eni-1".to_string()));
        w.ds.remove_eni("eni-1", false, w.now).unwrap();
        assert_eq!(w.row(), (1, 9, 0, 9));
        let s = w.stats();
        assert!(!should_remove_extra_enis(&w.input(&s, 0)));
        assert!(plan_eni_removal(&w.input(&s, 0)).is_empty());
        // SIP with WARM_ENI_TARGET only never releases individual IPs.
        assert!(!is_high(&w.input(&s, 0)));
        assert!(plan_release(&w.input(&s, 0)).is_empty());
    }

    #[test]
    fn one_shot_plan_reaches_upstream_end_state() {
        // For several pod counts, planning once and applying everything gives the same pool as
        // upstream's tick-by-tick loop, in one decision.
        for cfg in [
            (M5_LARGE, targets(1, 0, 0, 0, false)),
            (M5_LARGE, targets(2, 0, 0, 0, false)),
            (M5_LARGE, targets(0, 0, 0, 0, false)),
            (M5_LARGE, targets(1, 2, 0, 0, false)),
            (M5_LARGE, targets(1, 5, 10, 0, false)),
            (T3_MEDIUM, targets(1, 0, 0, 0, false)),
            (T3_MEDIUM, targets(1, 1, 3, 0, false)),
            (
                Limits {
                    max_pods: 110,
                    ..M5_LARGE
                },
                targets(1, 0, 0, 1, true),
            ),
            (
                Limits {
                    max_pods: 110,
                    ..M5_LARGE
                },
                targets(1, 20, 0, 0, true),
            ),
            (
                Limits {
                    max_pods: 110,
                    ..M5_LARGE
                },
                targets(1, 0, 40, 2, true),
            ),
        ] {
            for pods in [0usize, 1, 5, 9, 17] {
                let mut up = World::new(cfg.0, cfg.1);
                let mut ours = World::new(cfg.0, cfg.1);
                up.tick_until_settled();
                for g in ours.plan(0) {
                    ours.apply(&g);
                }
                assert_eq!(up.row(), ours.row(), "{cfg:?} fresh");
                let n = pods.min(up.row().1);
                up.set_pods(n);
                ours.set_pods(n);
                let ticks = up.tick_until_settled();
                let plan = ours.plan(0);
                assert!(
                    plan.len() <= ticks.max(1),
                    "{cfg:?} {pods}: {plan:?} vs {ticks} ticks"
                );
                for g in &plan {
                    ours.apply(g);
                }
                assert_eq!(up.row(), ours.row(), "{cfg:?} pods={pods}");
                assert!(ours.plan(0).is_empty(), "{cfg:?} pods={pods}: settled");
            }
        }
    }

    #[test]
    fn worked_example_warm_ip_target_2() {
        let mut w = World::new(M5_LARGE, targets(1, 2, 0, 0, false));
        // fresh → short 2 → assign 2 (T=2)
        assert_eq!(w.next(), Some(ip("eni-0", 2)));
        w.apply(&ip("eni-0", 2));
        assert_eq!(w.row(), (1, 2, 0, 2));
        // One pod → A=1, short 1 → assign 1 (T=3)
        w.set_pods(1);
        assert_eq!(w.next(), Some(ip("eni-0", 1)));
        w.apply(&ip("eni-0", 1));
        assert_eq!(w.row(), (1, 3, 1, 2));
        // A burst of 7 pods with A=2: two ADDs succeed, five fail …
        assert_eq!(w.try_pods(7), 2);
        // … upstream then adds W − A = 2 per tick:
        assert_eq!(w.next(), Some(ip("eni-0", 2)));
        // Ours with the 5 waiting ADDs counted: W + 5 = 7 at once (6 fit the primary).
        assert_eq!(w.plan(5), vec![ip("eni-0", 6), new_ips(1)]);
        for g in w.plan(5) {
            w.apply(&g);
        }
        assert_eq!(w.try_pods(5), 5);
        assert_eq!(w.row(), (2, 10, 8, 2));
        // When pods go away: over = min(A − 2, T − 0) CIDRs.
        w.set_pods(3);
        w.advance(31);
        let s = w.stats();
        let inp = w.input(&s, 0);
        assert_eq!(target_state(&inp), (0, 5));
        assert!(is_high(&inp));
        let rel = plan_release(&inp);
        assert_eq!(rel.len(), 5);
        // None of them is in use.
        let used: Vec<_> = w.ds.assignments().iter().map(|a| a.addr).collect();
        assert!(rel.iter().all(|r| !used.contains(&r.ip())));
    }

    #[test]
    fn worked_example_warm5_min10() {
        let mut w = World::new(M5_LARGE, targets(1, 5, 10, 0, false));
        // fresh → short = max(5, 10) = 10 → the primary takes 9 → next tick short 1 → new ENI 1
        let s = w.stats();
        assert_eq!(target_state(&w.input(&s, 0)), (10, 0));
        assert_eq!(w.next(), Some(ip("eni-0", 9)));
        assert_eq!(w.plan(0), vec![ip("eni-0", 9), new_ips(1)]);
        for g in w.plan(0) {
            w.apply(&g);
        }
        assert_eq!(w.row(), (2, 10, 0, 10));
        // With 6 pods A=4 → short 1 → +1 on the second ENI (T=11)
        w.set_pods(6);
        assert_eq!(w.next(), Some(ip("eni-1", 1)));
        w.apply(&ip("eni-1", 1));
        assert_eq!(w.row().1, 11);
        // With 0 pods: over = min(11 − 5, 11 − 10) = 1 → release one IP
        w.set_pods(0);
        w.advance(61);
        let s = w.stats();
        let inp = w.input(&s, 0);
        assert_eq!(target_state(&inp), (0, 1));
        let rel = plan_release(&inp);
        assert_eq!(rel.len(), 1);
        assert_eq!(rel[0].eni, "eni-1");
        w.ds.remove_cidr(&rel[0].eni, rel[0].cidr, false, w.now)
            .unwrap();
        // The second ENI is then not deletable: the primary alone (9) would be below M.
        let s = w.stats();
        let inp = w.input(&s, 0);
        assert!(should_remove_extra_enis(&inp));
        assert!(plan_eni_removal(&inp).is_empty());
        assert!(!is_high(&inp));
    }

    #[test]
    fn worked_example_t3_medium_default() {
        let mut w = World::new(T3_MEDIUM, targets(1, 0, 0, 0, false));
        assert_eq!(w.next(), Some(ip("eni-0", 5)));
        w.apply(&ip("eni-0", 5));
        w.set_pods(1);
        assert_eq!(w.row(), (1, 5, 1, 4));
        assert_eq!(w.next(), Some(new_ips(5)));
        w.apply(&new_ips(5));
        w.set_pods(6);
        assert_eq!(w.row(), (2, 10, 6, 4));
        assert_eq!(w.next(), Some(new_ips(5)));
        w.apply(&new_ips(5));
        assert_eq!(w.row(), (3, 15, 6, 9));
        assert_eq!(w.next(), None);
        w.set_pods(11);
        assert_eq!(w.row(), (3, 15, 11, 4));
        let s = w.stats();
        assert!(is_low(&w.input(&s, 0)));
        assert_eq!(w.next(), None);
    }

    #[test]
    fn worked_example_t3_medium_warm1_min3() {
        let mut w = World::new(T3_MEDIUM, targets(1, 1, 3, 0, false));
        assert_eq!(w.next(), Some(ip("eni-0", 3)));
        w.apply(&ip("eni-0", 3));
        w.set_pods(3);
        assert_eq!(w.row(), (1, 3, 3, 0));
        assert_eq!(w.next(), Some(ip("eni-0", 1)));
        w.apply(&ip("eni-0", 1));
        // The node never holds more than one spare.
        for pods in 4..12 {
            w.set_pods(pods);
            for g in w.plan(0) {
                w.apply(&g);
            }
            let (_, t, u, a) = w.row();
            assert_eq!((t - u, a), (1, 1), "pods={pods}");
        }
    }

    #[test]
    fn worked_example_prefix_delegation_warm_prefix_1() {
        let limits = Limits {
            max_pods: 110,
            ..M5_LARGE
        };
        let mut w = World::new(limits, targets(1, 0, 0, 1, true));
        assert_eq!(limits.addrs_per_eni(true), 144);
        // fresh → A=0 < 16 → one /28 (T=16, F=1)
        assert_eq!(w.next(), Some(pfx("eni-0", 1)));
        w.apply(&pfx("eni-0", 1));
        let s = w.stats();
        assert_eq!((s.total(), s.free_prefixes()), (16, 1));
        // First pod → A=15 < 16 → second prefix (T=32, F=1)
        w.set_pods(1);
        assert_eq!(w.next(), Some(pfx("eni-0", 1)));
        w.apply(&pfx("eni-0", 1));
        let s = w.stats();
        assert_eq!((s.total(), s.free_prefixes()), (32, 1));
        // Growth one prefix at a time until T ≥ max pods (110 → 7 prefixes = 112).
        for pods in 2..=110 {
            w.set_pods(pods);
            w.tick_until_settled();
        }
        let s = w.stats();
        assert_eq!((s.prefixes(), s.total()), (7, 112));
        let inp = w.input(&s, 0);
        assert!(!is_low(&inp));
        // High when F > 1.
        assert!(!is_high(&inp));
        w.set_pods(60);
        w.advance(31);
        let s = w.stats();
        let inp = w.input(&s, 0);
        // 60 pods fill prefixes 1-4 (packing), 5-7 free → F=3 > 1 → release 2.
        assert_eq!(s.free_prefixes(), 3);
        assert!(is_high(&inp));
        let rel = plan_release(&inp);
        assert_eq!(rel.len(), 2);
        assert!(rel.iter().all(|r| r.cidr.prefix_len() == 28));
    }

    // ------------------------------------------------------------------------------------------
    // Decision tables on synthetic snapshots.
    // ------------------------------------------------------------------------------------------

    /// One ENI per tuple: (device, slots, assigned, cooling) with /32s (SIP) or /28s (PD).
    /// Assigned/cooling addresses pack into the lowest CIDRs.
    fn synth(pd: bool, enis: &[(u32, usize, usize, usize)]) -> PoolStats {
        let mut out = Vec::new();
        for &(dev, slots, assigned, cooling) in enis {
            let size = if pd { 16 } else { 1 };
            let (mut a, mut c) = (assigned, cooling);
            let cidrs = (0..slots)
                .map(|i| {
                    let ta = a.min(size);
                    a -= ta;
                    let tc = c.min(size - ta);
                    c -= tc;
                    let base = u32::from(Ipv4Addr::new(10, dev as u8, 0, 0)) + (i * size) as u32;
                    CidrStats {
                        net: Ipv4Net::new(Ipv4Addr::from(base), if pd { 28 } else { 32 }).unwrap(),
                        kind: if pd {
                            CidrKind::Prefix
                        } else {
                            CidrKind::SecondaryIp
                        },
                        usable: true,
                        size,
                        assigned: ta,
                        cooling: tc,
                    }
                })
                .collect();
            out.push(EniStats {
                id: format!("eni-{dev}"),
                device_number: dev,
                is_primary: dev == 0,
                excluded: false,
                trunk: false,
                efa: false,
                age: Duration::from_secs(3600),
                cidrs,
            });
        }
        PoolStats {
            prefix_mode: pd,
            enis: out,
        }
    }

    #[test]
    fn table_target_state() {
        // (W, M, T, U, cooling) → (short, over); A = T − U − cooling.
        let rows: &[(u32, u32, usize, usize, usize, i64, i64)] = &[
            (2, 0, 0, 0, 0, 2, 0),
            (2, 0, 2, 1, 0, 1, 0),
            (2, 0, 9, 2, 0, 0, 5),
            (5, 10, 0, 0, 0, 10, 0),
            (5, 10, 9, 0, 0, 1, 0),
            (5, 10, 11, 0, 0, 0, 1),
            (5, 10, 11, 6, 0, 0, 0),
            (0, 10, 12, 0, 0, 0, 2),
            (0, 10, 8, 8, 0, 2, 0),
            (1, 3, 3, 3, 0, 1, 0),
            // ours: cooling addresses are not available
            (2, 0, 3, 1, 2, 2, 0),
            (2, 0, 9, 0, 7, 0, 0),
        ];
        for &(w, m, t, u, c, short, over) in rows {
            let slots = t;
            let s = synth(false, &[(0, slots, u, c)]);
            let tg = targets(1, w, m, 0, false);
            let inp = PoolInput {
                stats: &s,
                targets: &tg,
                limits: &M5_LARGE,
                pending: 0,
            };
            assert_eq!(
                target_state(&inp),
                (short, over),
                "W={w} M={m} T={t} U={u} cooling={c}"
            );
        }
    }

    #[test]
    fn table_prefix_targets() {
        // (W, M, prefixes, U) → (shortPrefixes, overPrefixes)
        let rows: &[(u32, u32, usize, usize, i64, i64)] = &[
            (20, 0, 0, 0, 2, 0),
            (20, 0, 2, 0, 0, 0),
            (20, 0, 4, 0, 0, 2),  // F=4, TP − ceil(20/16)=2 → 2
            (20, 0, 4, 20, 0, 1), // packing: 20 pods use 2 prefixes, F=2; TP − ceil(40/16)=1
            (0, 40, 4, 0, 0, 1),  // TP − ceil(40/16) = 1
            (0, 40, 2, 0, 1, 0),  // short = 40 − 32 = 8 → 1 prefix
            (16, 16, 1, 0, 0, 0),
        ];
        for &(w, m, n, u, sp, op) in rows {
            let s = synth(true, &[(0, n, u, 0)]);
            let tg = targets(1, w, m, 0, true);
            let inp = PoolInput {
                stats: &s,
                targets: &tg,
                limits: &M5_LARGE,
                pending: 0,
            };
            assert_eq!(
                target_state_prefixes(&inp),
                (sp, op),
                "W={w} M={m} TP={n} U={u}"
            );
        }
    }

    #[test]
    fn table_is_low() {
        // (pd, E, W, M, P, slots, U, cooling, max_pods) → low
        type Row = (bool, u32, u32, u32, u32, usize, usize, usize, u32, bool);
        let rows: &[Row] = &[
            // SIP, WARM_ENI_TARGET: low ⇔ A < I × E or (E = 0 and A = 0)
            (false, 1, 0, 0, 0, 0, 0, 0, 29, true),
            (false, 1, 0, 0, 0, 9, 0, 0, 29, false),
            (false, 1, 0, 0, 0, 9, 1, 0, 29, true),
            (false, 2, 0, 0, 0, 9, 0, 0, 29, true),
            (false, 0, 0, 0, 0, 9, 8, 0, 29, false),
            (false, 0, 0, 0, 0, 9, 9, 0, 29, true),
            // cooling is not available (ours): 9 slots, 0 assigned, 1 cooling → A = 8 < 9
            (false, 1, 0, 0, 0, 9, 0, 1, 29, true),
            // T ≥ maxPods: never low
            (false, 1, 0, 0, 0, 9, 9, 0, 9, false),
            // IP targets: low ⇔ short > 0
            (false, 1, 2, 0, 0, 2, 0, 0, 29, false),
            (false, 1, 2, 0, 0, 2, 1, 0, 29, true),
            (false, 1, 0, 3, 0, 2, 0, 0, 29, true),
            // PD, WARM_PREFIX_TARGET: low ⇔ A < 16 × P or (P = 0 and A = 0)
            (true, 1, 0, 0, 1, 0, 0, 0, 110, true),
            (true, 1, 0, 0, 1, 1, 0, 0, 110, false),
            (true, 1, 0, 0, 1, 1, 1, 0, 110, true),
            (true, 1, 0, 0, 2, 2, 0, 0, 110, false),
            (true, 1, 0, 0, 2, 2, 1, 0, 110, true),
            (true, 1, 0, 0, 0, 1, 15, 0, 110, false),
            (true, 1, 0, 0, 0, 1, 16, 0, 110, true),
            (true, 1, 0, 0, 1, 7, 100, 0, 110, false),
        ];
        for &(pd, e, w, m, p, slots, u, c, mp, low) in rows {
            let s = synth(pd, &[(0, slots, u, c)]);
            let tg = targets(e, w, m, p, pd);
            let lim = Limits {
                max_pods: mp,
                ..M5_LARGE
            };
            let inp = PoolInput {
                stats: &s,
                targets: &tg,
                limits: &lim,
                pending: 0,
            };
            assert_eq!(is_low(&inp), low, "{:?}", (pd, e, w, m, p, slots, u, c, mp));
        }
    }

    #[test]
    fn table_is_high() {
        // (pd, W, M, P, slots, U, cooling) → high
        type Row = (bool, u32, u32, u32, usize, usize, usize, bool);
        let rows: &[Row] = &[
            (false, 0, 0, 0, 9, 0, 0, false), // SIP + WARM_ENI_TARGET: never
            (false, 2, 0, 0, 9, 0, 0, true),
            (false, 2, 0, 0, 3, 1, 0, false),
            (false, 2, 0, 0, 4, 1, 0, true),
            (false, 2, 0, 0, 4, 1, 1, false), // ours: the cooling one is not "over"
            (false, 0, 9, 0, 9, 0, 0, false),
            (false, 0, 9, 0, 10, 0, 0, true),
            (true, 0, 0, 1, 2, 0, 0, true),  // F=2 > P=1
            (true, 0, 0, 1, 2, 1, 0, false), // F=1
            (true, 0, 0, 1, 2, 0, 1, false), // ours: a cooling prefix is not free
            (true, 0, 0, 0, 1, 0, 0, true),  // P=0, F=1
            (true, 20, 0, 0, 4, 0, 0, true),
            (true, 20, 0, 0, 2, 0, 0, false),
        ];
        for &(pd, w, m, p, slots, u, c, high) in rows {
            let s = synth(pd, &[(0, slots, u, c)]);
            let tg = targets(1, w, m, p, pd);
            let lim = Limits {
                max_pods: 250,
                ..M5_LARGE
            };
            let inp = PoolInput {
                stats: &s,
                targets: &tg,
                limits: &lim,
                pending: 0,
            };
            assert_eq!(is_high(&inp), high, "{:?}", (pd, w, m, p, slots, u, c));
            assert_eq!(
                plan_release(&inp).is_empty(),
                !high,
                "{:?}",
                (pd, w, m, p, slots, u, c)
            );
            // Nothing is released while ADDs wait.
            let inp = PoolInput { pending: 1, ..inp };
            assert!(!is_high(&inp) && plan_release(&inp).is_empty());
        }
    }

    #[test]
    fn table_remove_extra_enis() {
        // (pd, E, W, P, enis: [(dev, slots, U, cooling)]) → should_remove, removal plan
        type Row = (
            bool,
            u32,
            u32,
            u32,
            &'static [(u32, usize, usize, usize)],
            bool,
            &'static [&'static str],
        );
        let rows: &[Row] = &[
            // SIP: A ≥ (E + 1) × I
            (
                false,
                1,
                0,
                0,
                &[(0, 9, 0, 0), (1, 9, 0, 0)],
                true,
                &["eni-1"],
            ),
            (false, 1, 0, 0, &[(0, 9, 1, 0), (1, 9, 0, 0)], false, &[]),
            (
                false,
                2,
                0,
                0,
                &[(0, 9, 0, 0), (1, 9, 0, 0), (2, 9, 0, 0)],
                true,
                &["eni-2"],
            ),
            (
                false,
                0,
                0,
                0,
                &[(0, 9, 0, 0), (1, 9, 0, 0), (2, 9, 0, 0)],
                true,
                &["eni-2", "eni-1"],
            ),
            // an ENI with pods or cooling addresses is not deletable; the next one is
            (
                false,
                0,
                0,
                0,
                &[(0, 9, 0, 0), (1, 9, 0, 0), (2, 9, 1, 0)],
                true,
                &["eni-1"],
            ),
            (
                false,
                0,
                0,
                0,
                &[(0, 9, 0, 0), (1, 9, 0, 0), (2, 9, 0, 1)],
                true,
                &["eni-1"],
            ),
            // IP targets: always look; W decides
            (
                false,
                1,
                9,
                0,
                &[(0, 9, 0, 0), (1, 9, 0, 0)],
                true,
                &["eni-1"],
            ),
            (false, 1, 10, 0, &[(0, 9, 0, 0), (1, 9, 0, 0)], true, &[]),
            // PD: any empty non-primary ENI triggers the look; P protects
            (
                true,
                1,
                0,
                1,
                &[(0, 1, 0, 0), (1, 1, 0, 0)],
                true,
                &["eni-1"],
            ),
            (true, 1, 0, 1, &[(0, 1, 1, 0), (1, 1, 0, 0)], true, &[]),
            (
                true,
                1,
                0,
                1,
                &[(0, 2, 1, 0), (1, 1, 0, 0)],
                true,
                &["eni-1"],
            ),
            (true, 1, 0, 1, &[(0, 1, 1, 0), (1, 1, 1, 0)], false, &[]),
            // W in PD is rounded up to 16
            // (others hold 20 free: 17 would fit, rounded 32 does not)
            (true, 1, 17, 0, &[(0, 2, 12, 0), (1, 1, 0, 0)], true, &[]),
            (
                true,
                1,
                16,
                0,
                &[(0, 2, 12, 0), (1, 1, 0, 0)],
                true,
                &["eni-1"],
            ),
        ];
        for &(pd, e, w, p, enis, remove, plan) in rows {
            let s = synth(pd, enis);
            let tg = targets(e, w, 0, p, pd);
            let inp = PoolInput {
                stats: &s,
                targets: &tg,
                limits: &M5_LARGE,
                pending: 0,
            };
            assert_eq!(
                should_remove_extra_enis(&inp),
                remove,
                "{:?}",
                (pd, e, w, p, enis)
            );
            assert_eq!(plan_eni_removal(&inp), plan, "{:?}", (pd, e, w, p, enis));
            let inp = PoolInput { pending: 1, ..inp };
            assert!(plan_eni_removal(&inp).is_empty());
        }
    }

    #[test]
    fn deletable_needs_age_and_not_primary() {
        let mut s = synth(false, &[(0, 9, 0, 0), (1, 9, 0, 0), (2, 9, 0, 0)]);
        let tg = targets(0, 0, 0, 0, false);
        s.enis[2].age = Duration::from_secs(59);
        let inp = PoolInput {
            stats: &s,
            targets: &tg,
            limits: &M5_LARGE,
            pending: 0,
        };
        assert_eq!(plan_eni_removal(&inp), ["eni-1"]);
        s.enis[1].efa = true;
        let inp = PoolInput {
            stats: &s,
            targets: &tg,
            limits: &M5_LARGE,
            pending: 0,
        };
        assert!(plan_eni_removal(&inp).is_empty());
    }

    #[test]
    fn max_eni_and_unmanaged_limit_growth() {
        let s = synth(false, &[(0, 9, 9, 0)]);
        for (max_eni, unmanaged, expect_new) in [
            (None, 0, true),
            (Some(1), 0, false),
            (Some(5), 2, false),
            (None, 1, true),
            (Some(0), 0, true),
        ] {
            let tg = PoolTargets {
                max_eni,
                ..targets(1, 0, 0, 0, false)
            };
            let lim = Limits {
                unmanaged_enis: unmanaged,
                ..M5_LARGE
            };
            let inp = PoolInput {
                stats: &s,
                targets: &tg,
                limits: &lim,
                pending: 0,
            };
            let plan = plan_increase(&inp);
            assert_eq!(
                !plan.is_empty(),
                expect_new,
                "{max_eni:?} {unmanaged}: {plan:?}"
            );
        }
        // MAX_ENI larger than the instance limit is capped by it.
        let tg = PoolTargets {
            max_eni: Some(10),
            ..targets(1, 0, 0, 0, false)
        };
        assert_eq!(M5_LARGE.max_eni(&tg), 3);
    }

    #[test]
    fn pending_adds_size_the_increase() {
        // m5.large, WARM_ENI_TARGET=1, full primary, 20 ADDs waiting: two new ENIs at once
        // (and not more: the third slot would exceed the ENI limit).
        let s = synth(false, &[(0, 9, 9, 0)]);
        let tg = targets(1, 0, 0, 0, false);
        let inp = PoolInput {
            stats: &s,
            targets: &tg,
            limits: &M5_LARGE,
            pending: 20,
        };
        assert_eq!(plan_increase(&inp), vec![new_ips(9), new_ips(9)]);
        // WARM_ENI_TARGET=0 with one waiting ADD and nothing free: grow.
        let tg = targets(0, 0, 0, 0, false);
        let inp = PoolInput {
            stats: &s,
            targets: &tg,
            limits: &M5_LARGE,
            pending: 1,
        };
        assert_eq!(plan_increase(&inp), vec![new_ips(9)]);
        // PD with pending ADDs beyond the partial prefix: enough prefixes for all plus P free.
        let s = synth(true, &[(0, 1, 10, 0)]);
        let tg = targets(1, 0, 0, 1, true);
        let lim = Limits {
            max_pods: 110,
            ..M5_LARGE
        };
        let inp = PoolInput {
            stats: &s,
            targets: &tg,
            limits: &lim,
            pending: 20,
        };
        // 6 free in the partial prefix, 14 spill into one new prefix, plus one free prefix.
        assert_eq!(plan_increase(&inp), vec![pfx("eni-0", 2)]);
    }

    #[test]
    fn growth_in_flight_counts_as_done() {
        let s = synth(false, &[(0, 9, 9, 0)]);
        let tg = targets(1, 0, 0, 0, false);
        let inp = PoolInput {
            stats: &s,
            targets: &tg,
            limits: &M5_LARGE,
            pending: 20,
        };
        assert_eq!(plan_increase_with(&inp, &[]), vec![new_ips(9), new_ips(9)]);
        // One new ENI already attaching: only the second is planned, and it is not "filled".
        assert_eq!(plan_increase_with(&inp, &[new_ips(9)]), vec![new_ips(9)]);
        assert!(plan_increase_with(&inp, &[new_ips(9), new_ips(9)]).is_empty());
        // In-flight fill of an existing ENI.
        let s = synth(false, &[(0, 2, 2, 0)]);
        let inp = PoolInput {
            stats: &s,
            targets: &tg,
            limits: &M5_LARGE,
            pending: 0,
        };
        assert_eq!(
            plan_increase_with(&inp, &[]),
            vec![ip("eni-0", 7), new_ips(9)]
        );
        assert_eq!(
            plan_increase_with(&inp, &[ip("eni-0", 7)]),
            vec![new_ips(9)]
        );
        // Nothing is released or deleted while growth is in flight.
        let s = synth(false, &[(0, 9, 0, 0), (1, 9, 0, 0)]);
        let tg = targets(1, 2, 0, 0, false);
        let inp = PoolInput {
            stats: &s,
            targets: &tg,
            limits: &M5_LARGE,
            pending: 0,
        };
        assert!(!decide_with(&inp, true, &[]).release.is_empty());
        let d = decide_with(&inp, true, &[ip("eni-0", 1)]);
        assert!(d.release.is_empty() && d.delete_enis.is_empty() && d.grow.is_empty());
    }

    #[test]
    fn growth_respects_max_pods() {
        let s = synth(false, &[(0, 0, 0, 0)]);
        let tg = targets(3, 0, 0, 0, false);
        let lim = Limits {
            max_pods: 12,
            ..M5_LARGE
        };
        let inp = PoolInput {
            stats: &s,
            targets: &tg,
            limits: &lim,
            pending: 0,
        };
        // Upstream stops once T ≥ max pods: 9 then 9 more (T=18 ≥ 12).
        assert_eq!(plan_increase(&inp), vec![ip("eni-0", 9), new_ips(9)]);
    }

    #[test]
    fn custom_networking_primary_not_filled() {
        let mut s = synth(false, &[(0, 0, 0, 0)]);
        s.enis[0].excluded = true;
        let tg = targets(1, 0, 0, 0, false);
        let inp = PoolInput {
            stats: &s,
            targets: &tg,
            limits: &M5_LARGE,
            pending: 0,
        };
        assert_eq!(plan_increase(&inp), vec![new_ips(9)]);
    }

    #[test]
    fn prefix_fallback_to_ips() {
        let lim = M5_LARGE;
        assert_eq!(
            fallback_to_ips(&pfx("eni-0", 1), 2, &lim),
            Some(ip("eni-0", 7))
        );
        assert_eq!(fallback_to_ips(&pfx("eni-0", 1), 9, &lim), None);
        assert_eq!(
            fallback_to_ips(
                &Grow::NewEni {
                    count: 2,
                    kind: CidrKind::Prefix
                },
                0,
                &lim
            ),
            Some(new_ips(9))
        );
        let small = Limits {
            ipv4_per_eni: 50,
            ..lim
        };
        assert_eq!(
            fallback_to_ips(&pfx("eni-0", 1), 0, &small),
            Some(ip("eni-0", 16))
        );
        assert_eq!(fallback_to_ips(&ip("eni-0", 3), 0, &lim), None);
        // After a fallback the /32s count in PD mode and satisfy WARM_PREFIX_TARGET's addresses.
        let mut s = synth(true, &[(0, 0, 0, 0)]);
        for i in 0..9u32 {
            s.enis[0].cidrs.push(CidrStats {
                net: Ipv4Net::new(Ipv4Addr::new(10, 0, 9, i as u8), 32).unwrap(),
                kind: CidrKind::SecondaryIp,
                usable: true,
                size: 1,
                assigned: 0,
                cooling: 0,
            });
        }
        let tg = targets(1, 0, 0, 1, true);
        let inp = PoolInput {
            stats: &s,
            targets: &tg,
            limits: &Limits {
                max_pods: 110,
                ..lim
            },
            pending: 0,
        };
        assert_eq!(s.total(), 9);
        // 9 < 16 still low: the next step goes to a new ENI (the primary has no slot left).
        assert_eq!(
            next_increase(&inp),
            Some(Grow::NewEni {
                count: 1,
                kind: CidrKind::Prefix
            })
        );
    }

    #[test]
    fn pd_releases_unneeded_fallback_ips() {
        // One full prefix + free prefix + 3 empty /32s, P=1: the /32s are not needed.
        let mut s = synth(true, &[(0, 2, 16, 0)]);
        for i in 0..3u32 {
            s.enis[0].cidrs.push(CidrStats {
                net: Ipv4Net::new(Ipv4Addr::new(10, 0, 9, i as u8), 32).unwrap(),
                kind: CidrKind::SecondaryIp,
                usable: true,
                size: 1,
                assigned: 0,
                cooling: 0,
            });
        }
        let tg = targets(1, 0, 0, 1, true);
        let inp = PoolInput {
            stats: &s,
            targets: &tg,
            limits: &M5_LARGE,
            pending: 0,
        };
        let rel = plan_release(&inp);
        assert_eq!(rel.len(), 3);
        assert!(rel.iter().all(|r| r.cidr.prefix_len() == 32));
    }

    #[test]
    fn stray_cidrs_and_decide() {
        let mut s = synth(false, &[(0, 9, 1, 0)]);
        s.enis[0].cidrs.push(CidrStats {
            net: "10.0.1.0/28".parse().unwrap(),
            kind: CidrKind::Prefix,
            usable: false,
            size: 16,
            assigned: 0,
            cooling: 0,
        });
        s.enis[0].cidrs.push(CidrStats {
            net: "10.0.2.0/28".parse().unwrap(),
            kind: CidrKind::Prefix,
            usable: false,
            size: 16,
            assigned: 1,
            cooling: 0,
        });
        assert_eq!(
            stray_cidrs(&s),
            vec![ReleaseCidr {
                eni: "eni-0".into(),
                cidr: "10.0.1.0/28".parse().unwrap()
            }]
        );
        let tg = targets(1, 0, 0, 0, false);
        let inp = PoolInput {
            stats: &s,
            targets: &tg,
            limits: &M5_LARGE,
            pending: 0,
        };
        // Low (A = 8 < 9): growing wins; no release in the same decision.
        let d = decide(&inp, true);
        assert_eq!(d.grow, vec![new_ips(9)]);
        assert!(d.release.is_empty() && d.delete_enis.is_empty());
        let s2 = synth(false, &[(0, 9, 0, 0)]);
        let mut s2 = s2;
        s2.enis[0]
            .cidrs
            .extend(s.enis[0].cidrs[9..].iter().cloned());
        let inp = PoolInput {
            stats: &s2,
            targets: &tg,
            limits: &M5_LARGE,
            pending: 0,
        };
        let d = decide(&inp, true);
        assert!(d.grow.is_empty());
        assert_eq!(d.release.len(), 1);
        assert!(decide(&inp, false).release.is_empty());
    }
}
