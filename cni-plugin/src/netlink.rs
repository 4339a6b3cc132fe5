//! A small synchronous rtnetlink facade with intent-level verbs.
//!
//! **Shared code:** the `aws-cni` plugin uses it to wire pods, and ipamd uses it for its host
//! networking (ENI links found by MAC, per-ENI tables, policy rules, pruning pod rules). Keep
//! it free of plugin- or daemon-specific policy.
//!
//! Design (after netavark's netlink module): one `NETLINK_ROUTE` socket per namespace, one
//! request at a time, sequence numbers checked, every mutation sent with `NLM_F_ACK` so errors
//! come back synchronously. No async runtime is needed, which keeps the one-shot plugin cheap.
//! Packet types from `netlink-packet-route` never appear in the public API: callers see
//! [`Link`], [`Address`], [`Route`], [`Rule`], [`Neighbour`] and [`MacAddr`].
//!
//! Idempotency is built into the verbs: rule and address creation report
//! [`Created::AlreadyThere`] on `EEXIST`; deletions report [`Deleted::WasAbsent`] on
//! `ENOENT`/`ENODEV`/`ESRCH`/`EADDRNOTAVAIL`. That is what lets DEL run any number of times.
//!
//! A socket is bound to the namespace of the thread that created it. To work inside another
//! namespace, create the socket there: `pod_ns.run_in(Netlink::open)??` (see [`crate::netns`]).

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::str::FromStr;

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The main routing table (`RT_TABLE_MAIN`).
pub const TABLE_MAIN: u32 = 254;
/// The local routing table (`RT_TABLE_LOCAL`).
pub const TABLE_LOCAL: u32 = 255;

/// A netlink failure, naming the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    /// The kernel refused the request with an errno.
    #[error("{op}: {}", io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// What we asked for, e.g. `add route 10.0.0.1/32 dev eni123 table 254`.
        op: String,
        /// Positive errno value.
        errno: i32,
    },
    /// The socket itself failed (send/recv).
    #[error("{op}: netlink socket: {source}")]
    Io {
        /// What we asked for.
        op: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The kernel's answer could not be decoded or was not what the protocol promises.
    #[error("{op}: unexpected netlink reply: {detail}")]
    Protocol {
        /// What we asked for.
        op: String,
        /// What was wrong.
        detail: String,
    },
    /// A caller-side precondition failed (e.g. an interface name that is too long).
    #[error("{0}")]
    Invalid(String),
}

impl NlError {
    /// The errno when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { errno, .. } => Some(*errno),
            Self::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True for `EEXIST`.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// True for the errnos that mean "the object is not there".
    pub fn is_absent(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENOENT | libc::ENODEV | libc::ESRCH | libc::EADDRNOTAVAIL)
        )
    }
}

/// Outcome of an idempotent create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The object was created by this call.
    Created,
    /// It existed already (`EEXIST`); nothing changed.
    AlreadyThere,
}

/// Outcome of an idempotent delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The object was removed by this call.
    Removed,
    /// It was not there in the first place.
    WasAbsent,
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random locally-administered unicast MAC (first byte: `0x02` set, `0x01` cleared),
    /// as upstream picks the host-veth MAC. Reads the kernel's random pool.
    pub fn random_local() -> io::Result<Self> {
        use std::io::Read;
        let mut b = [0u8; 6];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        b[0] = (b[0] | 0x02) & !0x01;
        Ok(Self(b))
    }

    fn from_slice(v: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(v).ok().map(Self)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(format!("invalid MAC address {s:?}"));
        }
        let mut b = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            b[i] = u8::from_str_radix(p, 16).map_err(|_| format!("invalid MAC address {s:?}"))?;
        }
        Ok(Self(b))
    }
}

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address, when the link has one.
    pub mac: Option<MacAddr>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Link kind (`veth`, `dummy`, ...) when the kernel reports one.
    pub kind: Option<String>,
    /// `IFLA_LINK`: for a veth, the peer's ifindex (in the peer's namespace).
    pub peer_index: Option<u32>,
}

/// An interface address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Interface index.
    pub index: u32,
    /// Address with prefix length.
    pub addr: IpNet,
    /// True while IPv6 duplicate address detection has not finished (`IFA_F_TENTATIVE`).
    pub tentative: bool,
    /// True when DAD failed (`IFA_F_DADFAILED`).
    pub dad_failed: bool,
}

/// Route scope, the subset we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// `scope global` (`RT_SCOPE_UNIVERSE`).
    #[default]
    Universe,
    /// `scope link`: destination directly attached.
    Link,
    /// `scope host`: local address.
    Host,
    /// Any other scope value.
    Other(u8),
}

/// A unicast route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix (`0.0.0.0/0` for a default route).
    pub dst: IpNet,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output interface index, if any.
    pub oif: Option<u32>,
    /// Routing table ([`TABLE_MAIN`] = 254).
    pub table: u32,
    /// Route scope.
    pub scope: Scope,
    /// Preferred source address, if any.
    pub pref_src: Option<IpAddr>,
}

impl Route {
    /// `dst dev <oif> scope link` in `table`.
    pub fn link_scope(dst: IpNet, oif: u32, table: u32) -> Self {
        Self {
            dst,
            gateway: None,
            oif: Some(oif),
            table,
            scope: Scope::Link,
            pref_src: None,
        }
    }

    /// `dst via gw dev <oif>` in `table`.
    pub fn via(dst: IpNet, gw: IpAddr, oif: u32, table: u32) -> Self {
        Self {
            dst,
            gateway: Some(gw),
            oif: Some(oif),
            table,
            scope: Scope::Universe,
            pref_src: None,
        }
    }

    /// Host route (`/32` or `/128`) to `ip` out of `oif`, scope link, in `table`.
    pub fn host(ip: IpAddr, oif: u32, table: u32) -> Self {
        Self::link_scope(host_net(ip), oif, table)
    }

    /// Default route for the family of `gw`, via `gw` out of `oif`.
    pub fn default_via(gw: IpAddr, oif: u32, table: u32) -> Self {
        let dst = match gw {
            IpAddr::V4(_) => IpNet::V4(ipnet::Ipv4Net::default()),
            IpAddr::V6(_) => IpNet::V6(ipnet::Ipv6Net::default()),
        };
        Self::via(dst, gw, oif, table)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev #{oif}")?;
        }
        if self.scope == Scope::Link {
            write!(f, " scope link")?;
        }
        write!(f, " table {}", self.table)
    }
}

/// The `/32` (IPv4) or `/128` (IPv6) network of a single address.
pub fn host_net(ip: IpAddr) -> IpNet {
    match ip {
        IpAddr::V4(a) => IpNet::V4(ipnet::Ipv4Net::from(a)),
        IpAddr::V6(a) => IpNet::V6(ipnet::Ipv6Net::from(a)),
    }
}

/// A policy routing rule (`ip rule`), the subset upstream uses: a `lookup <table>` action with
/// optional source, destination, fwmark/mask and input interface selectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// True for an IPv6 rule. Must agree with `src`/`dst` when they are set.
    pub v6: bool,
    /// Priority (`prio`). `None` lets the kernel pick (only sensible for add).
    pub priority: Option<u32>,
    /// `from` selector.
    pub src: Option<IpNet>,
    /// `to` selector.
    pub dst: Option<IpNet>,
    /// `fwmark value/mask` selector.
    pub fwmark: Option<(u32, u32)>,
    /// `iif` selector (interface name).
    pub iif: Option<String>,
    /// Table to look up.
    pub table: u32,
}

impl Rule {
    /// `lookup table prio priority` for the family of `v6`, with no selectors yet.
    pub fn lookup(v6: bool, table: u32, priority: u32) -> Self {
        Self {
            v6,
            priority: Some(priority),
            src: None,
            dst: None,
            fwmark: None,
            iif: None,
            table,
        }
    }

    /// Adds a `from` selector (sets the family from it).
    pub fn from(mut self, src: IpNet) -> Self {
        self.v6 = matches!(src, IpNet::V6(_));
        self.src = Some(src);
        self
    }

    /// Adds a `to` selector (sets the family from it).
    pub fn to(mut self, dst: IpNet) -> Self {
        self.v6 = matches!(dst, IpNet::V6(_));
        self.dst = Some(dst);
        self
    }

    /// Adds a `fwmark value/mask` selector.
    pub fn fwmark(mut self, mark: u32, mask: u32) -> Self {
        self.fwmark = Some((mark, mask));
        self
    }

    /// True when `other` (typically from [`Netlink::rules`]) has the same selectors, table and
    /// priority as this one. A `None` priority here matches any priority.
    pub fn matches(&self, other: &Rule) -> bool {
        self.v6 == other.v6
            && (self.priority.is_none() || self.priority == other.priority)
            && self.src == other.src
            && self.dst == other.dst
            && self.fwmark == other.fwmark
            && self.iif == other.iif
            && self.table == other.table
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.priority {
            write!(f, "prio {p} ")?;
        }
        match self.src {
            Some(s) => write!(f, "from {s}")?,
            None => write!(f, "from all")?,
        }
        if let Some(d) = self.dst {
            write!(f, " to {d}")?;
        }
        if let Some((m, k)) = self.fwmark {
            write!(f, " fwmark {m:#x}/{k:#x}")?;
        }
        if let Some(i) = &self.iif {
            write!(f, " iif {i}")?;
        }
        write!(f, " lookup {}", self.table)
    }
}

/// A neighbour (ARP/NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// Interface index.
    pub index: u32,
    /// Protocol address.
    pub ip: IpAddr,
    /// Link-layer address, when resolved.
    pub mac: Option<MacAddr>,
    /// `NUD_PERMANENT`.
    pub permanent: bool,
}

/// Parameters for [`Netlink::create_veth`].
#[derive(Debug)]
pub struct VethSpec<'a> {
    /// Name of the end created in the socket's namespace.
    pub name: &'a str,
    /// MTU for both ends.
    pub mtu: u32,
    /// Bring the local end up at creation (upstream also sets it up explicitly afterwards,
    /// because the create-time flag is not honoured everywhere).
    pub up: bool,
    /// Name of the peer end.
    pub peer_name: &'a str,
    /// MAC of the peer end (the kernel picks a random one when `None`).
    pub peer_mac: Option<MacAddr>,
    /// Namespace the peer is born in. The peer is created directly there, so no namespace
    /// move is needed: moving a link between namespaces serialises concurrent pod creation on
    /// a kernel RCU barrier; creating it in place avoids that (upstream does the same).
    pub peer_netns: Option<BorrowedFd<'a>>,
}

/// Maximum interface name length (`IFNAMSIZ - 1`).
pub const IFNAME_MAX: usize = 15;

/// A `NETLINK_ROUTE` socket bound to the namespace it was opened in.
pub struct Netlink {
    sock: Socket,
    seq: u32,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink")
            .field("fd", &self.sock.as_raw_fd())
            .finish()
    }
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NlError> {
        let io = |source| NlError::Io {
            op: "open".into(),
            source,
        };
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(io)?;
        sock.bind_auto().map_err(io)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(io)?;
        // Large dumps (hundreds of veths and rules on a busy node) arrive in bursts.
        let _ = sock.set_rx_buf_sz(1 << 20);
        Ok(Self { sock, seq: 0 })
    }

    // ---------- transport ----------

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16, op: &str) -> Result<u32, NlError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock.send(&buf, 0).map_err(|source| NlError::Io {
            op: op.to_string(),
            source,
        })?;
        Ok(self.seq)
    }

    /// Sends `msg` and collects replies until the ACK (for a request) or `NLMSG_DONE` (for a
    /// dump). Replies to other sequence numbers (left over from an earlier failed call) are
    /// skipped.
    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let seq = self.send(msg, flags, op)?;
        let mut out = Vec::new();
        loop {
            let (buf, _) = self.sock.recv_from_full().map_err(|source| NlError::Io {
                op: op.to_string(),
                source,
            })?;
            let mut off = 0usize;
            while off + 16 <= buf.len() {
                let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
                    as usize;
                if len < 16 || off + len > buf.len() {
                    return Err(NlError::Protocol {
                        op: op.to_string(),
                        detail: format!("bad message length {len}"),
                    });
                }
                let chunk = &buf[off..off + len];
                off += (len + 3) & !3;
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(chunk);
                let msg = match parsed {
                    Ok(m) => m,
                    // One undecodable object in a dump (an exotic link kind, say) must not make
                    // the whole listing fail; skip it. For a plain request it is an error.
                    Err(e) if dump => {
                        let _ = e;
                        continue;
                    }
                    Err(e) => {
                        return Err(NlError::Protocol {
                            op: op.to_string(),
                            detail: e.to_string(),
                        });
                    }
                };
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(out),
                        Some(code) => {
                            return Err(NlError::Kernel {
                                op: op.to_string(),
                                errno: -code.get(),
                            });
                        }
                    },
                    NetlinkPayload::InnerMessage(inner) => {
                        out.push(inner);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// A dump whose replies are handed to `f` as raw message payloads (after the 16-byte
    /// netlink header), without decoding them into packet types. Used where a dump is large
    /// and only one attribute matters.
    fn dump_raw(
        &mut self,
        msg: RouteNetlinkMessage,
        op: &str,
        mut f: impl FnMut(&[u8]),
    ) -> Result<(), NlError> {
        const NLMSG_ERROR: u16 = 2;
        const NLMSG_DONE: u16 = 3;
        let seq = self.send(msg, NLM_F_DUMP, op)?;
        loop {
            let (buf, _) = self.sock.recv_from_full().map_err(|source| NlError::Io {
                op: op.to_string(),
                source,
            })?;
            let mut off = 0usize;
            while off + 16 <= buf.len() {
                let word = |i: usize| {
                    [
                        buf[off + i],
                        buf[off + i + 1],
                        buf[off + i + 2],
                        buf[off + i + 3],
                    ]
                };
                let len = u32::from_ne_bytes(word(0)) as usize;
                let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let mseq = u32::from_ne_bytes(word(8));
                if len < 16 || off + len > buf.len() {
                    return Err(NlError::Protocol {
                        op: op.to_string(),
                        detail: format!("bad message length {len}"),
                    });
                }
                let payload = &buf[off + 16..off + len];
                off += (len + 3) & !3;
                if mseq != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(0);
                        if code == 0 {
                            return Ok(());
                        }
                        return Err(NlError::Kernel {
                            op: op.to_string(),
                            errno: -code,
                        });
                    }
                    _ => f(payload),
                }
            }
        }
    }

    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16, op: &str) -> Result<(), NlError> {
        self.exchange(msg, flags | NLM_F_ACK, op).map(|_| ())
    }

    fn created(r: Result<(), NlError>) -> Result<Created, NlError> {
        match r {
            Ok(()) => Ok(Created::Created),
            Err(e) if e.is_exists() => Ok(Created::AlreadyThere),
            Err(e) => Err(e),
        }
    }

    fn deleted(r: Result<(), NlError>) -> Result<Deleted, NlError> {
        match r {
            Ok(()) => Ok(Deleted::Removed),
            Err(e) if e.is_absent() => Ok(Deleted::WasAbsent),
            Err(e) => Err(e),
        }
    }

    // ---------- links ----------

    /// All links in this namespace.
    ///
    /// Statistics are not requested, and each reply is decoded and reduced to a [`Link`] as it
    /// arrives: a node with hundreds of pod veths would otherwise hold every fully decoded
    /// message (kilobytes each, per-family attributes included) at once — measured at ~9 MiB
    /// of transient heap per listing with 735 pods.
    pub fn links(&mut self) -> Result<Vec<Link>, NlError> {
        use netlink_packet_core::Parseable;
        let mut out = Vec::new();
        self.dump_raw(link_dump_request(), "list links", |p| {
            // One undecodable object (an exotic link kind, say) must not make the whole listing
            // fail; it is skipped, as in `exchange`.
            if let Ok(m) = <LinkMessage as Parseable<[u8]>>::parse(p) {
                out.push(link_from(m));
            }
        })?;
        Ok(out)
    }

    /// Hardware addresses of every link in this namespace. Much cheaper than [`Self::links`]
    /// on a node with hundreds of veths: statistics are not requested and only `IFLA_ADDRESS`
    /// is read from each reply (a full decode grows ADD latency linearly with the pod count).
    pub fn link_macs(&mut self) -> Result<Vec<MacAddr>, NlError> {
        let mut out = Vec::new();
        self.link_addresses("list link addresses", |_, mac| out.push(mac))?;
        Ok(out)
    }

    /// Calls `f(ifindex, mac)` for every link that has a hardware address, reading only the
    /// `ifinfomsg` header and `IFLA_ADDRESS` of each raw reply (no statistics requested).
    fn link_addresses(&mut self, op: &str, mut f: impl FnMut(u32, MacAddr)) -> Result<(), NlError> {
        const IFINFOMSG_LEN: usize = 16;
        const IFLA_ADDRESS: u16 = 1;
        self.dump_raw(link_dump_request(), op, |p| {
            if p.len() < IFINFOMSG_LEN {
                return;
            }
            // struct ifinfomsg: family u8, pad u8, type u16, index i32, flags u32, change u32.
            let index = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]);
            let mut a = IFINFOMSG_LEN;
            while a + 4 <= p.len() {
                let alen = u16::from_ne_bytes([p[a], p[a + 1]]) as usize;
                let atype = u16::from_ne_bytes([p[a + 2], p[a + 3]]) & 0x3fff;
                if alen < 4 || a + alen > p.len() {
                    break;
                }
                if atype == IFLA_ADDRESS {
                    if let Some(m) = MacAddr::from_slice(&p[a + 4..a + alen]) {
                        f(index, m);
                    }
                    break;
                }
                a += (alen + 3) & !3;
            }
        })
    }

    /// The link named `name`, if it exists.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NlError> {
        check_ifname(name)?;
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(m, &format!("get link {name}"))
    }

    /// The link with index `index`, if it exists.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, NlError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.get_link(m, &format!("get link #{index}"))
    }

    /// The link whose hardware address is `mac` (ENIs are located by MAC, never by name,
    /// because udev may rename them).
    ///
    /// Scans the raw dump for `IFLA_ADDRESS` only, then fetches the one match: ipamd polls this
    /// while an ENI attaches, on nodes with hundreds of veths.
    pub fn link_by_mac(&mut self, mac: MacAddr) -> Result<Option<Link>, NlError> {
        let Some(index) = self.link_index_by_mac(mac)? else {
            return Ok(None);
        };
        // The link can vanish between the two requests; that is "not found", not an error.
        self.link_by_index(index)
    }

    /// Interface index of the first link whose `IFLA_ADDRESS` is `mac`.
    fn link_index_by_mac(&mut self, mac: MacAddr) -> Result<Option<u32>, NlError> {
        let mut found = None;
        self.link_addresses("find link by MAC", |index, m| {
            if found.is_none() && m == mac {
                found = Some(index);
            }
        })?;
        Ok(found)
    }

    fn get_link(&mut self, m: LinkMessage, op: &str) -> Result<Option<Link>, NlError> {
        match self.exchange(RouteNetlinkMessage::GetLink(m), 0, op) {
            Ok(msgs) => Ok(msgs.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from(l)),
                _ => None,
            })),
            Err(e) if e.is_absent() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn set_link(
        &mut self,
        index: u32,
        f: impl FnOnce(&mut LinkMessage),
        op: &str,
    ) -> Result<(), NlError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        f(&mut m);
        self.ack(RouteNetlinkMessage::SetLink(m), 0, op)
    }

    /// Sets the link administratively up.
    pub fn set_up(&mut self, index: u32) -> Result<(), NlError> {
        self.set_link(
            index,
            |m| {
                m.header.flags = LinkFlags::Up;
                m.header.change_mask = LinkFlags::Up;
            },
            &format!("set link #{index} up"),
        )
    }

    /// Sets the link administratively down.
    pub fn set_down(&mut self, index: u32) -> Result<(), NlError> {
        self.set_link(
            index,
            |m| {
                m.header.flags = LinkFlags::empty();
                m.header.change_mask = LinkFlags::Up;
            },
            &format!("set link #{index} down"),
        )
    }

    /// Sets the link MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NlError> {
        self.set_link(
            index,
            |m| m.attributes.push(LinkAttribute::Mtu(mtu)),
            &format!("set link #{index} mtu {mtu}"),
        )
    }

    /// Creates a veth pair: `spec.name` here, `spec.peer_name` in `spec.peer_netns` (or here).
    /// Fails with `EEXIST` (see [`NlError::is_exists`]) when either name is taken.
    pub fn create_veth(&mut self, spec: &VethSpec<'_>) -> Result<(), NlError> {
        check_ifname(spec.name)?;
        check_ifname(spec.peer_name)?;
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(spec.peer_name.to_string()));
        peer.attributes.push(LinkAttribute::Mtu(spec.mtu));
        if let Some(mac) = spec.peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        }
        if let Some(fd) = spec.peer_netns {
            peer.attributes.push(LinkAttribute::NetNsFd(fd.as_raw_fd()));
        }
        let mut m = LinkMessage::default();
        if spec.up {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        }
        m.attributes
            .push(LinkAttribute::IfName(spec.name.to_string()));
        m.attributes.push(LinkAttribute::Mtu(spec.mtu));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.ack(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("create veth {} (peer {})", spec.name, spec.peer_name),
        )
    }

    /// Deletes the link with index `index` (for a veth this removes both ends).
    pub fn delete_link(&mut self, index: u32) -> Result<Deleted, NlError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        Self::deleted(self.ack(
            RouteNetlinkMessage::DelLink(m),
            0,
            &format!("delete link #{index}"),
        ))
    }

    /// Deletes the link named `name` if it exists.
    pub fn delete_link_by_name(&mut self, name: &str) -> Result<Deleted, NlError> {
        check_ifname(name)?;
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        Self::deleted(self.ack(
            RouteNetlinkMessage::DelLink(m),
            0,
            &format!("delete link {name}"),
        ))
    }

    // ---------- addresses ----------

    /// Adds `addr` to the link (`EEXIST` → [`Created::AlreadyThere`]).
    pub fn add_address(&mut self, index: u32, addr: IpNet) -> Result<Created, NlError> {
        let m = addr_msg(index, addr);
        Self::created(self.ack(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add address {addr} to link #{index}"),
        ))
    }

    /// Removes `addr` from the link.
    pub fn del_address(&mut self, index: u32, addr: IpNet) -> Result<Deleted, NlError> {
        let m = addr_msg(index, addr);
        Self::deleted(self.ack(
            RouteNetlinkMessage::DelAddress(m),
            0,
            &format!("delete address {addr} from link #{index}"),
        ))
    }

    /// Addresses in this namespace, optionally only those of one link.
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>, NlError> {
        let msgs = self.exchange(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
            "list addresses",
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if index.is_some_and(|i| i != a.header.index) {
                continue;
            }
            let mut ip = None;
            let mut local = None;
            let mut flags: u32 = u32::from(a.header.flags.bits());
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Address(x) => ip = Some(*x),
                    AddressAttribute::Local(x) => local = Some(*x),
                    AddressAttribute::Flags(f) => flags = f.bits(),
                    _ => {}
                }
            }
            // For IPv4 IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on
            // point-to-point links); IPv6 only sends IFA_ADDRESS.
            let Some(ip) = local.or(ip) else { continue };
            let Ok(addr) = IpNet::new(ip, a.header.prefix_len) else {
                continue;
            };
            out.push(Address {
                index: a.header.index,
                addr,
                tentative: flags & 0x40 != 0,
                dad_failed: flags & 0x08 != 0,
            });
        }
        Ok(out)
    }

    // ---------- routes ----------

    /// `ip route replace`.
    pub fn replace_route(&mut self, r: &Route) -> Result<(), NlError> {
        self.ack(
            RouteNetlinkMessage::NewRoute(route_msg(r, true)),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("replace route {r}"),
        )
    }

    /// `ip route add` (`EEXIST` → [`Created::AlreadyThere`]).
    pub fn add_route(&mut self, r: &Route) -> Result<Created, NlError> {
        Self::created(self.ack(
            RouteNetlinkMessage::NewRoute(route_msg(r, true)),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add route {r}"),
        ))
    }

    /// `ip route del`. Unset fields of `r` (gateway, oif) act as wildcards, like `ip route del`.
    pub fn del_route(&mut self, r: &Route) -> Result<Deleted, NlError> {
        Self::deleted(self.ack(
            RouteNetlinkMessage::DelRoute(route_msg(r, false)),
            0,
            &format!("delete route {r}"),
        ))
    }

    /// Unicast routes of one family, optionally only those in `table`.
    pub fn routes(&mut self, v6: bool, table: Option<u32>) -> Result<Vec<Route>, NlError> {
        let mut q = RouteMessage::default();
        q.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let msgs = self.exchange(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP, "list routes")?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if r.header.kind != RouteType::Unicast {
                continue;
            }
            let Some(route) = route_from(&r) else {
                continue;
            };
            if table.is_some_and(|t| t != route.table) {
                continue;
            }
            out.push(route);
        }
        Ok(out)
    }

    // ---------- rules ----------

    /// `ip rule add` (`EEXIST` → [`Created::AlreadyThere`]; the kernel reports `EEXIST` for an
    /// identical rule only when `NLM_F_EXCL` is set, which we do, so repeated adds never stack
    /// duplicate rules).
    pub fn add_rule(&mut self, r: &Rule) -> Result<Created, NlError> {
        Self::created(self.ack(
            RouteNetlinkMessage::NewRule(rule_msg(r)),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add rule {r}"),
        ))
    }

    /// `ip rule del` of the first rule matching `r`.
    pub fn del_rule(&mut self, r: &Rule) -> Result<Deleted, NlError> {
        Self::deleted(self.ack(
            RouteNetlinkMessage::DelRule(rule_msg(r)),
            0,
            &format!("delete rule {r}"),
        ))
    }

    /// Deletes every rule matching `r` (older upstream versions could leave several identical
    /// ones behind). Returns how many were removed.
    pub fn del_rules_all(&mut self, r: &Rule) -> Result<usize, NlError> {
        let mut n = 0;
        // Bounded: each iteration removes one rule, and a node never has thousands of copies.
        for _ in 0..1024 {
            match self.del_rule(r)? {
                Deleted::Removed => n += 1,
                Deleted::WasAbsent => return Ok(n),
            }
        }
        Ok(n)
    }

    /// Rules of one family (only `lookup <table>` rules are returned; others are skipped).
    pub fn rules(&mut self, v6: bool) -> Result<Vec<Rule>, NlError> {
        let mut q = RuleMessage::default();
        q.header.family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let msgs = self.exchange(RouteNetlinkMessage::GetRule(q), NLM_F_DUMP, "list rules")?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRule(r) = m else {
                continue;
            };
            if r.header.action != RuleAction::ToTable {
                continue;
            }
            let mut rule = Rule::lookup(v6, u32::from(r.header.table), 0);
            rule.priority = Some(0);
            let mut mark = None;
            let mut mask = None;
            for a in &r.attributes {
                match a {
                    RuleAttribute::Priority(p) => rule.priority = Some(*p),
                    RuleAttribute::Table(t) => rule.table = *t,
                    RuleAttribute::Source(ip) => {
                        rule.src = IpNet::new(*ip, r.header.src_len).ok();
                    }
                    RuleAttribute::Destination(ip) => {
                        rule.dst = IpNet::new(*ip, r.header.dst_len).ok();
                    }
                    RuleAttribute::FwMark(m) => mark = Some(*m),
                    RuleAttribute::FwMask(m) => mask = Some(*m),
                    RuleAttribute::Iifname(n) => rule.iif = Some(n.clone()),
                    _ => {}
                }
            }
            if let Some(m) = mark {
                rule.fwmark = Some((m, mask.unwrap_or(u32::MAX)));
            }
            out.push(rule);
        }
        Ok(out)
    }

    // ---------- neighbours ----------

    /// Adds or replaces a permanent neighbour entry (`ip neigh replace ... nud permanent`).
    pub fn replace_permanent_neighbour(
        &mut self,
        index: u32,
        ip: IpAddr,
        mac: MacAddr,
    ) -> Result<(), NlError> {
        let mut m = NeighbourMessage::default();
        m.header.family = family_of(ip);
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        self.ack(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("set neighbour {ip} lladdr {mac} permanent on link #{index}"),
        )
    }

    /// Neighbour entries of one family, optionally only those on one link.
    pub fn neighbours(&mut self, v6: bool, index: Option<u32>) -> Result<Vec<Neighbour>, NlError> {
        let mut q = NeighbourMessage::default();
        q.header.family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let msgs = self.exchange(
            RouteNetlinkMessage::GetNeighbour(q),
            NLM_F_DUMP,
            "list neighbours",
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if index.is_some_and(|i| i != n.header.ifindex) {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(x)) => {
                        ip = Some(IpAddr::V4(*x))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(x)) => {
                        ip = Some(IpAddr::V6(*x))
                    }
                    NeighbourAttribute::LinkLayerAddress(b) => mac = MacAddr::from_slice(b),
                    _ => {}
                }
            }
            let Some(ip) = ip else { continue };
            out.push(Neighbour {
                index: n.header.ifindex,
                ip,
                mac,
                permanent: n.header.state == NeighbourState::Permanent,
            });
        }
        Ok(out)
    }
}

fn check_ifname(name: &str) -> Result<(), NlError> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.contains(['/', ':']) {
        return Err(NlError::Invalid(format!(
            "invalid interface name {name:?} (1..={IFNAME_MAX} bytes, no '/' or ':')"
        )));
    }
    Ok(())
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// A link dump request that asks the kernel to leave statistics out of every reply (they are
/// most of each message and nothing here reads them).
fn link_dump_request() -> RouteNetlinkMessage {
    let mut q = LinkMessage::default();
    q.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    RouteNetlinkMessage::GetLink(q)
}

fn link_from(l: LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: l.header.flags.contains(LinkFlags::Up),
        kind: None,
        peer_index: None,
    };
    for a in l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(b) => link.mac = MacAddr::from_slice(&b),
            LinkAttribute::Mtu(m) => link.mtu = m,
            LinkAttribute::Link(i) => link.peer_index = Some(i),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn addr_msg(index: u32, addr: IpNet) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family_of(addr.addr());
    m.header.prefix_len = addr.prefix_len();
    m.header.index = index;
    m.header.scope = AddressScope::Universe;
    m.attributes.push(AddressAttribute::Local(addr.addr()));
    m.attributes.push(AddressAttribute::Address(addr.addr()));
    m
}

fn set_table(header: &mut RouteHeader, attrs: &mut Vec<RouteAttribute>, table: u32) {
    // The header field is 8 bits; tables above 255 (e.g. 10100 for network card 1) only fit in
    // RTA_TABLE. Like iproute2, send both when it fits and RT_TABLE_UNSPEC otherwise.
    header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    attrs.push(RouteAttribute::Table(table));
}

fn route_msg(r: &Route, create: bool) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family_of(r.dst.addr());
    m.header.destination_prefix_length = r.dst.prefix_len();
    m.header.scope = match r.scope {
        Scope::Universe => RouteScope::Universe,
        Scope::Link => RouteScope::Link,
        Scope::Host => RouteScope::Host,
        Scope::Other(x) => RouteScope::from(x),
    };
    if create {
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
    } else {
        // For deletes, RT_SCOPE_NOWHERE means "any scope" to the kernel.
        m.header.scope = RouteScope::NoWhere;
    }
    let mut attrs = Vec::new();
    set_table(&mut m.header, &mut attrs, r.table);
    if r.dst.prefix_len() > 0 {
        attrs.push(RouteAttribute::Destination(RouteAddress::from(
            r.dst.addr(),
        )));
    }
    if let Some(gw) = r.gateway {
        attrs.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(oif) = r.oif {
        attrs.push(RouteAttribute::Oif(oif));
    }
    if let Some(src) = r.pref_src {
        attrs.push(RouteAttribute::PrefSource(RouteAddress::from(src)));
    }
    m.attributes = attrs;
    m
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(x) => Some(IpAddr::V4(*x)),
        RouteAddress::Inet6(x) => Some(IpAddr::V6(*x)),
        _ => None,
    }
}

fn route_from(r: &RouteMessage) -> Option<Route> {
    let v6 = r.header.address_family == AddressFamily::Inet6;
    let mut dst_ip: IpAddr = if v6 {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    };
    let mut route = Route {
        dst: IpNet::new(dst_ip, 0).ok()?,
        gateway: None,
        oif: None,
        table: u32::from(r.header.table),
        scope: match r.header.scope {
            RouteScope::Universe => Scope::Universe,
            RouteScope::Link => Scope::Link,
            RouteScope::Host => Scope::Host,
            other => Scope::Other(u8::from(other)),
        },
        pref_src: None,
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => dst_ip = route_addr(d)?,
            RouteAttribute::Gateway(g) => route.gateway = route_addr(g),
            RouteAttribute::Oif(o) => route.oif = Some(*o),
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::PrefSource(s) => route.pref_src = route_addr(s),
            _ => {}
        }
    }
    route.dst = IpNet::new(dst_ip, r.header.destination_prefix_length).ok()?;
    Some(route)
}

fn rule_msg(r: &Rule) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = if r.v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    m.header.action = RuleAction::ToTable;
    m.header.table = u8::try_from(r.table).unwrap_or(0);
    m.attributes.push(RuleAttribute::Table(r.table));
    if let Some(p) = r.priority {
        m.attributes.push(RuleAttribute::Priority(p));
    }
    if let Some(src) = r.src {
        m.header.src_len = src.prefix_len();
        m.attributes.push(RuleAttribute::Source(src.addr()));
    }
    if let Some(dst) = r.dst {
        m.header.dst_len = dst.prefix_len();
        m.attributes.push(RuleAttribute::Destination(dst.addr()));
    }
    if let Some((mark, mask)) = r.fwmark {
        m.attributes.push(RuleAttribute::FwMark(mark));
        m.attributes.push(RuleAttribute::FwMask(mask));
    }
    if let Some(iif) = &r.iif {
        m.attributes.push(RuleAttribute::Iifname(iif.clone()));
    }
    m
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mac_roundtrip_and_random_bits() {
        let m: MacAddr = "5e:3a:91:0c:7d:12".parse().unwrap();
        assert_eq!(m.to_string(), "5e:3a:91:0c:7d:12");
        assert!("5e:3a:91".parse::<MacAddr>().is_err());
        assert!("zz:3a:91:0c:7d:12".parse::<MacAddr>().is_err());
        for _ in 0..64 {
            let r = MacAddr::random_local().unwrap();
            assert_eq!(r.0[0] & 0x03, 0x02, "{r}");
        }
    }

    #[test]
    fn rule_display_and_match() {
        let ip: IpAddr = "10.0.70.11".parse().unwrap();
        let r = Rule::lookup(false, 2, 1536).from(host_net(ip));
        assert_eq!(r.to_string(), "prio 1536 from 10.0.70.11/32 lookup 2");
        let mut any = r.clone();
        any.priority = None;
        assert!(any.matches(&r));
        assert!(!Rule::lookup(false, 3, 1536).from(host_net(ip)).matches(&r));
    }

    #[test]
    fn big_table_goes_to_attribute() {
        let r = Route::host("10.0.0.1".parse().unwrap(), 3, 10100);
        let m = route_msg(&r, true);
        assert_eq!(m.header.table, 0);
        assert!(m.attributes.contains(&RouteAttribute::Table(10100)));
    }
}
