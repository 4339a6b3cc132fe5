//! The CNI verbs. [`run`] takes the environment and stdin and returns what to print and the
//! exit code; `main` only does the I/O. Exactly one JSON document goes to stdout (result or
//! error), or nothing (DEL/GC/STATUS success); logs go to the log file or stderr.

use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;

use awscni_proto::ext::{CheckAllocationRequest, GcRequest, ValidAttachment};
use awscni_proto::rpc::{AddNetworkRequest, DelNetworkRequest, IpAllocationMetadata};
use serde_json::Value;

use crate::args::{self, CniEnv, Command};
use crate::error::PluginError;
use crate::ipamd::{self, Ipamd, RpcError};
use crate::log::Level;
use crate::netlink::Netlink;
use crate::netns::NetNs;
use crate::state::{self, AttachmentState};
use crate::types::{
    CURRENT_VERSION, CniResult, IpConfig, NetConf, RouteConfig, SUPPORTED_VERSIONS, SpecVersion,
    error_json, version_json,
};
use crate::wiring::{self, PodSpec};
use crate::{log, netlink};

/// Largest stdin we accept. Real configs are a few KiB; this bounds memory for garbage input.
pub const MAX_STDIN: u64 = 1 << 20;

/// Upstream's substring for "DEL of a key ipamd does not know" (wire-contract.md §7).
const UNKNOWN_POD: &str = "datastore: unknown pod";

/// What the process should print and return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The one JSON document for stdout, if any.
    pub stdout: Option<String>,
    /// Text for stderr (the "about" text), if any.
    pub stderr: Option<String>,
    /// Exit code.
    pub exit_code: i32,
}

impl Outcome {
    fn ok(stdout: Option<Value>) -> Self {
        Self {
            stdout: stdout.map(|v| v.to_string()),
            stderr: None,
            exit_code: 0,
        }
    }

    /// The outcome of a verb that panicked: a CNI error document with code 199.
    pub fn internal_error(what: &str) -> Self {
        Self::err(CURRENT_VERSION, &PluginError::Internal(what.to_string()))
    }

    /// Writes the outcome (stderr text, then the stdout document and a newline) and returns
    /// the exit code to use. When the document cannot be written, the runtime would read an
    /// empty stdout and, with exit code 0, take a failed ADD for a success with an empty
    /// result; so that is reported on stderr and turned into exit code 1.
    pub fn emit(&self, stdout: &mut dyn std::io::Write, stderr: &mut dyn std::io::Write) -> i32 {
        if let Some(s) = &self.stderr {
            // The "about" text only; nothing to do if stderr is gone.
            let _ = stderr.write_all(s.as_bytes());
        }
        let Some(doc) = &self.stdout else {
            return self.exit_code;
        };
        let written = stdout
            .write_all(doc.as_bytes())
            .and_then(|()| stdout.write_all(b"\n"))
            .and_then(|()| stdout.flush());
        match written {
            Ok(()) => self.exit_code,
            Err(e) => {
                let msg = format!(
                    "aws-cni: cannot write the CNI {} to stdout: {e}\n",
                    if self.exit_code == 0 {
                        "result"
                    } else {
                        "error"
                    }
                );
                let _ = stderr.write_all(msg.as_bytes());
                log!(Level::Error, "cannot write to stdout: {e}");
                if self.exit_code == 0 {
                    1
                } else {
                    self.exit_code
                }
            }
        }
    }

    fn err(version: &str, e: &PluginError) -> Self {
        let details = e.to_string();
        Self {
            stdout: Some(
                error_json(version, e.cni_code(), e.summary(), Some(&details)).to_string(),
            ),
            stderr: None,
            exit_code: 1,
        }
    }
}

/// Wall-clock phase timings, logged at debug level (where a slow ADD/DEL spends its time).
struct Phases {
    last: std::time::Instant,
    out: Vec<String>,
}

impl Phases {
    fn new() -> Self {
        Self {
            last: std::time::Instant::now(),
            out: Vec::new(),
        }
    }

    fn mark(&mut self, what: &str) {
        let now = std::time::Instant::now();
        self.out.push(format!(
            "{what}={:.2}ms",
            (now - self.last).as_secs_f64() * 1000.0
        ));
        self.last = now;
    }

    fn log(&self) {
        log!(Level::Debug, "timing {}", self.out.join(" "));
    }
}

/// Everything a verb needs, parsed and validated.
struct Ctx {
    env: CniEnv,
    conf: NetConf,
    version: SpecVersion,
    network: String,
    veth_prefix: String,
    mtu: u32,
    socket: PathBuf,
    state_dir: PathBuf,
    /// `TRACEPARENT`/`TRACESTATE`/`BAGGAGE` from the environment, forwarded to ipamd.
    trace: Vec<(String, String)>,
}

/// Runs one invocation.
pub fn run(get: &dyn Fn(&str) -> Option<String>, stdin: &mut dyn Read) -> Outcome {
    let command = match args::command(get) {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Outcome {
                stdout: None,
                stderr: Some(format!(
                    "CNI aws-cni plugin {}\nCNI protocol versions supported: {}\n",
                    awscni_proto::VERSION,
                    SUPPORTED_VERSIONS.join(", ")
                )),
                exit_code: 0,
            };
        }
        Err(e) => return Outcome::err(CURRENT_VERSION, &e),
    };
    if command == Command::Version {
        // stdin is optional here; echo its version when it is one we support.
        let raw = read_stdin(stdin).unwrap_or_default();
        let v = serde_json::from_slice::<Value>(&raw)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .filter(|v| SpecVersion::parse(v).is_some())
            .unwrap_or_else(|| CURRENT_VERSION.to_string());
        return Outcome::ok(Some(version_json(&v)));
    }
    let env = match args::from_env(command, get) {
        Ok(e) => e,
        Err(e) => return Outcome::err(CURRENT_VERSION, &e),
    };
    let (ctx, raw_version) = match parse(env, get, stdin) {
        Ok(c) => {
            let v = c.version.as_str().to_string();
            (c, v)
        }
        Err((v, e)) => return Outcome::err(&v, &e),
    };
    log::init(
        ctx.conf.plugin_log_file.as_deref(),
        ctx.conf.plugin_log_level.as_deref(),
        format!(
            "[{} net={} cid={} if={} pod={}/{}]",
            command.as_str(),
            ctx.network,
            ctx.env.container_id,
            ctx.env.ifname,
            ctx.env.pod.namespace,
            ctx.env.pod.name
        ),
    );
    log!(Level::Debug, "start netns={:?}", ctx.env.netns);
    let res = match command {
        Command::Add => add(&ctx).map(Some),
        Command::Del => del(&ctx).map(|()| None),
        Command::Check => check(&ctx).map(|()| None),
        Command::Status => status(&ctx).map(|()| None),
        Command::Gc => gc(&ctx).map(|()| None),
        Command::Version => Ok(None),
    };
    match res {
        Ok(out) => {
            log!(Level::Info, "ok");
            Outcome::ok(out)
        }
        Err(e) => {
            log!(Level::Error, "failed (code {}): {e}", e.cni_code());
            Outcome::err(&raw_version, &e)
        }
    }
}

fn read_stdin(stdin: &mut dyn Read) -> Result<Vec<u8>, PluginError> {
    let mut buf = Vec::new();
    stdin
        .take(MAX_STDIN + 1)
        .read_to_end(&mut buf)
        .map_err(|e| PluginError::Io(format!("error reading from stdin: {e}")))?;
    if buf.len() as u64 > MAX_STDIN {
        return Err(PluginError::Io(format!(
            "stdin is larger than {MAX_STDIN} bytes (1 MiB); refusing to parse it"
        )));
    }
    Ok(buf)
}

/// Reads and validates stdin. On error, also returns the version to put in the error.
fn parse(
    env: CniEnv,
    get: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
) -> Result<Ctx, (String, PluginError)> {
    let cur = |e| (CURRENT_VERSION.to_string(), e);
    let raw = read_stdin(stdin).map_err(cur)?;
    let value: Value = serde_json::from_slice(&raw).map_err(|e| {
        cur(PluginError::Decode(format!(
            "error parsing network config: {e}"
        )))
    })?;
    if !value.is_object() {
        return Err(cur(PluginError::Decode(
            "network config must be a JSON object".into(),
        )));
    }
    let conf: NetConf = serde_json::from_value(value).map_err(|e| {
        cur(PluginError::Decode(format!(
            "error parsing network config: {e}"
        )))
    })?;
    let supported = format!("[{}]", SUPPORTED_VERSIONS.join(" "));
    let version = match conf.cni_version.as_deref() {
        None | Some("") => {
            return Err(cur(PluginError::IncompatibleVersion(format!(
                "config has no cniVersion (treated as 0.1.0), plugin supports {supported}"
            ))));
        }
        Some(v) => SpecVersion::parse(v).ok_or_else(|| {
            cur(PluginError::IncompatibleVersion(format!(
                "incompatible CNI versions; config is \"{v}\", plugin supports {supported}"
            )))
        })?,
    };
    let vs = version.as_str().to_string();
    let bad = |e| (vs.clone(), e);
    let gate = match env.command {
        Command::Check if version < SpecVersion::V040 => Some("0.4.0"),
        Command::Status | Command::Gc if version < SpecVersion::V110 => Some("1.1.0"),
        _ => None,
    };
    if let Some(min) = gate {
        return Err(bad(PluginError::IncompatibleVersion(format!(
            "config version \"{}\" does not allow {} (needs {min} or later)",
            version.as_str(),
            env.command.as_str()
        ))));
    }
    let network = match conf.name.as_deref() {
        None | Some("") => {
            return Err(bad(PluginError::Config(
                "missing network name (netconf key \"name\")".into(),
            )));
        }
        Some(n) if !args::valid_id(n) => {
            return Err(bad(PluginError::Config(format!(
                "invalid network name {n:?}: must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"
            ))));
        }
        Some(n) => n.to_string(),
    };
    let veth_prefix = conf
        .veth_prefix
        .clone()
        .unwrap_or_else(|| wiring::DEFAULT_VETH_PREFIX.to_string());
    if veth_prefix.chars().count() > 4 {
        return Err(bad(PluginError::Config(format!(
            "conf.VethPrefix can be at most 4 characters long (got {veth_prefix:?})"
        ))));
    }
    if matches!(veth_prefix.as_str(), "eth" | "lo" | "vlan" | "") {
        return Err(bad(PluginError::Config(format!(
            "vethPrefix {veth_prefix:?} is reserved (must not be empty, eth, lo or vlan)"
        ))));
    }
    if veth_prefix
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(bad(PluginError::Config(format!(
            "vethPrefix {veth_prefix:?} contains characters not allowed in interface names"
        ))));
    }
    if conf.plugin_log_file.as_deref() == Some("stdout") {
        return Err(bad(PluginError::Config(
            "pluginLogFile must not be stdout (stdout carries the CNI result)".into(),
        )));
    }
    let mtu = wiring::parse_mtu(conf.mtu.as_ref());
    let socket = ipamd::socket_path(
        conf.ipamd_socket.as_deref(),
        get(awscni_proto::IPAMD_SOCKET_ENV).as_deref(),
    );
    let state_dir = state::state_dir(
        conf.state_dir.as_deref(),
        get(state::STATE_DIR_ENV).as_deref(),
    );
    let trace = ["TRACEPARENT", "TRACESTATE", "BAGGAGE"]
        .iter()
        .filter_map(|k| get(k).map(|v| (k.to_string(), v)))
        .collect();
    Ok(Ctx {
        env,
        conf,
        version,
        network,
        veth_prefix,
        mtu,
        socket,
        state_dir,
        trace,
    })
}

fn rpc_err(e: RpcError) -> PluginError {
    match e {
        RpcError::Unreachable { .. } => PluginError::TryAgain(e.to_string()),
        RpcError::VersionMismatch { .. } => PluginError::VersionMismatch(e.to_string()),
        RpcError::Status { .. } => PluginError::Ipamd(e.to_string()),
    }
}

fn alloc_ip(m: &IpAllocationMetadata) -> Result<IpAddr, PluginError> {
    let s = if m.i_pv4_addr.is_empty() {
        &m.i_pv6_addr
    } else {
        &m.i_pv4_addr
    };
    s.parse()
        .map_err(|_| PluginError::Ipamd(format!("ipamd returned an invalid address {s:?}")))
}

impl Ctx {
    fn ipamd(&self) -> Result<Ipamd, RpcError> {
        Ipamd::connect(&self.socket).map(|c| c.with_trace_context(&|k| self.trace_env(k)))
    }

    fn trace_env(&self, k: &str) -> Option<String> {
        self.trace
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
    }

    fn host_veth(&self) -> String {
        wiring::host_veth_name(
            &self.veth_prefix,
            &self.env.pod.namespace,
            &self.env.pod.name,
            &self.env.container_id,
        )
    }

    fn state_file(&self) -> PathBuf {
        state::file(
            &self.state_dir,
            &self.network,
            &self.env.container_id,
            &self.env.ifname,
        )
    }

    fn prev_result(&self) -> Option<CniResult> {
        let v = self.conf.prev_result.as_ref()?;
        match CniResult::from_value(v) {
            Ok(r) => Some(r),
            Err(e) => {
                log!(Level::Warn, "ignoring prevResult: {e}");
                None
            }
        }
    }

    fn open_pod_ns(&self) -> Result<NetNs, PluginError> {
        NetNs::open(&self.env.netns).map_err(|e| {
            if e.is_gone() {
                PluginError::ContainerUnknown(format!(
                    "network namespace {} does not exist",
                    self.env.netns
                ))
            } else {
                PluginError::Netns(e)
            }
        })
    }
}

/// What a previous result tells us about our attachment (ours, or upstream's encoding of
/// datapath.md §12, so DELs of pods created by upstream still clean up after an upgrade).
#[derive(Debug, Default)]
struct PrevInfo {
    ips: Vec<IpAddr>,
    host_veth: Option<String>,
    table: Option<u32>,
}

fn prev_info(r: &CniResult, ifname: &str) -> PrevInfo {
    let mut info = PrevInfo::default();
    let Some(c) = r
        .interfaces
        .iter()
        .position(|i| i.name == ifname && !i.sandbox.is_empty())
    else {
        return info;
    };
    if c > 0 {
        let h = &r.interfaces[c - 1];
        if h.sandbox.is_empty() && !h.name.starts_with("dummy") {
            info.host_veth = Some(h.name.clone());
        }
    }
    // Upstream smuggles the route table into the container interface's `mac` and the device
    // number into the dummy interface's `sandbox`.
    let cont = &r.interfaces[c];
    if let Ok(t) = cont.mac.parse::<i32>() {
        info.table = Some(wiring::host_table(t));
    } else if let Some(dev) = r
        .interfaces
        .iter()
        .find(|i| i.name.starts_with("dummy"))
        .and_then(|d| d.sandbox.parse::<i32>().ok())
    {
        info.table = Some(wiring::host_table(dev + 1));
    }
    for ip in &r.ips {
        if ip.interface.is_none() || ip.interface == Some(c as i64) {
            let addr = ip.address.split('/').next().unwrap_or_default();
            if let Ok(a) = addr.parse() {
                info.ips.push(a);
            }
        }
    }
    info
}

// ---------------------------------------------------------------- ADD

fn add(ctx: &Ctx) -> Result<Value, PluginError> {
    let mut t = Phases::new();
    let pod_ns = ctx.open_pod_ns()?;
    let host_ns = NetNs::current()?;
    let mut pod_nl = pod_ns
        .run_in(Netlink::open)?
        .map_err(PluginError::nl("open netlink in the pod"))?;
    let mut host_nl = Netlink::open().map_err(PluginError::nl("open netlink"))?;
    let host_veth = ctx.host_veth();
    if wiring::remove_own_leftover(&mut host_nl, &mut pod_nl, &ctx.env.ifname, &host_veth)? {
        log!(
            Level::Info,
            "removed {host_veth}/{} left from an earlier attachment in this netns",
            ctx.env.ifname
        );
    }
    // Refuse before asking ipamd for anything: no state change on this error.
    wiring::ensure_absent(&mut pod_nl, &pod_ns, &ctx.env.ifname)?;

    t.mark("netns");
    let ipamd = ctx.ipamd().map_err(rpc_err)?;
    t.mark("connect");
    let pod = &ctx.env.pod;
    let reply = ipamd
        .add(AddNetworkRequest {
            k8s_pod_name: pod.name.clone(),
            k8s_pod_namespace: pod.namespace.clone(),
            k8s_pod_infra_container_id: pod.infra_container_id.clone(),
            netns: ctx.env.netns.clone(),
            if_name: ctx.env.ifname.clone(),
            network_name: ctx.network.clone(),
            container_id: ctx.env.container_id.clone(),
            client_version: awscni_proto::VERSION.to_string(),
            requires_multi_nic_attachment: false,
        })
        .map_err(rpc_err)?;
    if !reply.success {
        return Err(PluginError::TryAgain(
            "add cmd: failed to assign an IP address to container: ipamd has no free address right now (the pool refills on its own; the runtime will retry)".into(),
        ));
    }
    t.mark("AddNetwork");
    let Some(meta) = reply.ip_allocation_metadata.first() else {
        return Err(PluginError::Ipamd(
            "ipamd reported success but returned no address".into(),
        ));
    };
    let ip = alloc_ip(meta)?;
    let table = wiring::host_table(meta.route_table_id);
    log!(
        Level::Info,
        "ipamd assigned {ip} (device {}, table {table}); host veth {host_veth}",
        meta.device_number
    );

    // Record what DEL needs before touching the kernel, so a DEL after a half-finished ADD
    // can clean up even with ipamd gone.
    let st_path = ctx.state_file();
    let st = AttachmentState {
        network: ctx.network.clone(),
        container_id: ctx.env.container_id.clone(),
        ifname: ctx.env.ifname.clone(),
        ips: vec![ip],
        table,
        device_number: meta.device_number,
        host_veth: host_veth.clone(),
        netns: ctx.env.netns.clone(),
    };
    if let Err(e) = state::save(&st_path, &st) {
        log!(
            Level::Warn,
            "cannot write local state {}: {e} (DEL without ipamd will rely on prevResult)",
            st_path.display()
        );
    }

    let spec = PodSpec {
        ifname: &ctx.env.ifname,
        host_veth: &host_veth,
        mtu: ctx.mtu,
        ip,
        table,
    };
    let wired = match wiring::setup(&mut host_nl, &host_ns, &mut pod_nl, &pod_ns, &spec) {
        Ok(w) => w,
        Err(e) => {
            log!(Level::Error, "wiring failed, rolling back: {e}");
            // Upstream: release with Reason=SetupNSFailed, result ignored.
            let _ = ipamd.del(del_request(ctx, "SetupNSFailed"));
            if let Err(t) = wiring::teardown(
                &mut host_nl,
                &[ip],
                std::slice::from_ref(&host_veth),
                &ctx.veth_prefix,
                wiring::Links::DeleteNamed,
            ) {
                log!(Level::Warn, "rollback: {t}");
            }
            let _ = state::remove(&st_path);
            return Err(e);
        }
    };

    t.mark("wiring");
    t.log();
    let gw = wiring::gateway_for(ip).to_string();
    let mut res = ctx.prev_result().unwrap_or_default();
    let base = res.interfaces.len() as i64;
    res.interfaces.push(crate::types::Interface {
        name: host_veth,
        mac: wired.host_mac.to_string(),
        ..Default::default()
    });
    res.interfaces.push(crate::types::Interface {
        name: ctx.env.ifname.clone(),
        mac: wired.pod_mac.to_string(),
        mtu: Some(ctx.mtu),
        sandbox: ctx.env.netns.clone(),
        ..Default::default()
    });
    res.ips.push(IpConfig {
        address: netlink::host_net(ip).to_string(),
        gateway: Some(gw.clone()),
        interface: Some(base + 1),
    });
    res.routes.push(RouteConfig {
        dst: if ip.is_ipv6() { "::/0" } else { "0.0.0.0/0" }.into(),
        gw: Some(gw),
        ..Default::default()
    });
    Ok(res.render(ctx.version))
}

fn del_request(ctx: &Ctx, reason: &str) -> DelNetworkRequest {
    let pod = &ctx.env.pod;
    DelNetworkRequest {
        k8s_pod_name: pod.name.clone(),
        k8s_pod_namespace: pod.namespace.clone(),
        k8s_pod_infra_container_id: pod.infra_container_id.clone(),
        reason: reason.into(),
        if_name: ctx.env.ifname.clone(),
        network_name: ctx.network.clone(),
        container_id: ctx.env.container_id.clone(),
        client_version: awscni_proto::VERSION.to_string(),
        k8s_pod_uid: pod.uid.clone(),
    }
}

// ---------------------------------------------------------------- DEL

fn del(ctx: &Ctx) -> Result<(), PluginError> {
    let mut t = Phases::new();
    let st_path = ctx.state_file();
    let st = state::load(&st_path).unwrap_or_else(|e| {
        log!(Level::Warn, "cannot read {}: {e}", st_path.display());
        None
    });
    let prev = ctx
        .prev_result()
        .map(|r| prev_info(&r, &ctx.env.ifname))
        .unwrap_or_default();

    let mut ips: Vec<IpAddr> = Vec::new();
    let mut veths = vec![ctx.host_veth()];
    if let Some(s) = &st {
        ips.extend(&s.ips);
        veths.push(s.host_veth.clone());
    }
    veths.extend(prev.host_veth.clone());

    let mut daemon_error = None;
    match ctx
        .ipamd()
        .and_then(|c| c.del(del_request(ctx, "PodDeleted")))
    {
        Ok(r) if r.success => {
            for m in &r.ip_allocation_metadata {
                match alloc_ip(m) {
                    Ok(ip) => ips.push(ip),
                    Err(e) => log!(Level::Warn, "{e}"),
                }
            }
            log!(Level::Info, "ipamd released {ips:?}");
        }
        Ok(_) => {
            // Upstream fails the DEL here; we still clean up locally first.
            daemon_error = Some(PluginError::Ipamd(
                "del cmd: failed to process delete request (ipamd answered Success=false)".into(),
            ));
        }
        Err(RpcError::Status { ref message, .. }) if message.contains(UNKNOWN_POD) => {
            log!(Level::Info, "ipamd does not know this attachment");
        }
        Err(e) => {
            // ipamd down, hung, or a different build: tear down locally and report success,
            // as upstream does; ipamd reconciles its datastore when it is back. Only here is
            // prevResult trusted for addresses: when ipamd answers, a cached result may be
            // stale (a repeated DEL after the address went to another pod).
            log!(
                Level::Warn,
                "{e}; tearing down host state from local state / prevResult"
            );
            ips.extend(&prev.ips);
        }
    }

    t.mark("DelNetwork");
    ips.sort();
    ips.dedup();
    veths.sort();
    veths.dedup();
    // While the pod netns exists the veth pair is left alone, as upstream does: the runtime
    // owns the netns and destroys it right after DEL, and the kernel then removes the pair in
    // its batched, asynchronous netns cleanup. Deleting it here would put 12-20 ms on the
    // runtime's critical path (unregistering a netdev waits for an RCU barrier; measured in
    // docs/benchmarks/plugin.md). Host routes and rules are always removed, so a kept netns
    // is isolated; a re-ADD into it removes the leftover pair (`remove_own_leftover`). When
    // the netns is gone or unknown, any host veth still around is deleted.
    let netns_alive = !ctx.env.netns.is_empty() && std::path::Path::new(&ctx.env.netns).exists();
    let mut host_nl = Netlink::open().map_err(PluginError::nl("open netlink"))?;
    let links = if netns_alive {
        wiring::Links::Keep
    } else {
        wiring::Links::DeleteNamed
    };
    let res = wiring::teardown(&mut host_nl, &ips, &veths, &ctx.veth_prefix, links);
    t.mark("teardown");
    t.log();
    res?;
    if let Err(e) = state::remove(&st_path) {
        log!(Level::Warn, "cannot remove {}: {e}", st_path.display());
    }
    match daemon_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------- CHECK

fn check(ctx: &Ctx) -> Result<(), PluginError> {
    let pod_ns = ctx.open_pod_ns()?;
    let prev = ctx
        .prev_result()
        .map(|r| prev_info(&r, &ctx.env.ifname))
        .unwrap_or_default();
    let st = state::load(&ctx.state_file()).ok().flatten();

    let ipamd = ctx.ipamd().map_err(rpc_err)?;
    let alloc = match ipamd.check_allocation(CheckAllocationRequest {
        network_name: ctx.network.clone(),
        container_id: ctx.env.container_id.clone(),
        if_name: ctx.env.ifname.clone(),
        client_version: awscni_proto::VERSION.to_string(),
    }) {
        Ok(r) if r.found => r.allocation,
        Ok(_) => {
            return Err(PluginError::CheckFailed(format!(
                "ipamd holds no address for network {} container {} interface {}",
                ctx.network, ctx.env.container_id, ctx.env.ifname
            )));
        }
        Err(RpcError::Status {
            code: tonic::Code::Unimplemented,
            ..
        }) => {
            log!(
                Level::Warn,
                "ipamd does not implement CheckAllocation (upstream daemon?); skipping the IPAM check"
            );
            None
        }
        Err(e) => return Err(rpc_err(e)),
    };
    let alloc_ip = alloc.as_ref().map(alloc_ip).transpose()?;
    let expected = prev
        .ips
        .first()
        .copied()
        .or_else(|| st.as_ref().and_then(|s| s.ips.first().copied()));
    let ip = match (expected, alloc_ip) {
        (Some(e), Some(a)) if e != a => {
            return Err(PluginError::CheckFailed(format!(
                "the pod has {e} but ipamd holds {a} for this attachment"
            )));
        }
        (Some(e), _) => e,
        (None, Some(a)) => a,
        (None, None) => {
            return Err(PluginError::CheckFailed(
                "no address known for this attachment (no prevResult, no local state, nothing in ipamd)".into(),
            ));
        }
    };
    let table = alloc
        .as_ref()
        .map(|a| wiring::host_table(a.route_table_id))
        .or(st.as_ref().map(|s| s.table))
        .or(prev.table)
        .unwrap_or(netlink::TABLE_MAIN);
    let host_veth = ctx.host_veth();
    let spec = PodSpec {
        ifname: &ctx.env.ifname,
        host_veth: &host_veth,
        mtu: ctx.mtu,
        ip,
        table,
    };
    let mut host_nl = Netlink::open().map_err(PluginError::nl("open netlink"))?;
    let mut pod_nl = pod_ns
        .run_in(Netlink::open)?
        .map_err(PluginError::nl("open netlink in the pod"))?;
    wiring::check(&mut host_nl, &mut pod_nl, &pod_ns, &spec)
}

// ---------------------------------------------------------------- STATUS

fn status(ctx: &Ctx) -> Result<(), PluginError> {
    let ipamd = ctx
        .ipamd()
        .map_err(|e| PluginError::NotAvailable(e.to_string()))?;
    match ipamd.healthy() {
        Ok((true, _)) => Ok(()),
        Ok((false, s)) => Err(PluginError::NotAvailable(format!(
            "ipamd at {} reports health status {s}; it is not ready to serve ADD",
            ctx.socket.display()
        ))),
        Err(e) => Err(PluginError::NotAvailable(e.to_string())),
    }
}

// ---------------------------------------------------------------- GC

fn gc(ctx: &Ctx) -> Result<(), PluginError> {
    let mut valid: Vec<(String, String)> = ctx
        .conf
        .valid_attachments
        .iter()
        .chain(ctx.conf.legacy_attachments.iter())
        .flatten()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    valid.sort();
    valid.dedup();
    let mut errors: Vec<String> = Vec::new();
    let mut stale_ips: Vec<IpAddr> = Vec::new();
    let mut stale_veths: Vec<String> = Vec::new();

    // Local state of attachments that are no longer valid (DELs that ran with ipamd down).
    for (path, st) in state::list(&ctx.state_dir) {
        if st.network != ctx.network
            || valid.contains(&(st.container_id.clone(), st.ifname.clone()))
        {
            continue;
        }
        stale_ips.extend(&st.ips);
        stale_veths.push(st.host_veth.clone());
        if let Err(e) = state::remove(&path) {
            errors.push(format!("remove {}: {e}", path.display()));
        }
    }

    match ctx.ipamd() {
        Err(e) => errors.push(e.to_string()),
        Ok(ipamd) => match ipamd.gc(GcRequest {
            network_name: ctx.network.clone(),
            valid_attachments: valid
                .iter()
                .map(|(c, i)| ValidAttachment {
                    container_id: c.clone(),
                    if_name: i.clone(),
                })
                .collect(),
            client_version: awscni_proto::VERSION.to_string(),
        }) {
            Ok(r) => {
                for rel in &r.released {
                    if let Some(a) = &rel.allocation {
                        match alloc_ip(a) {
                            Ok(ip) => stale_ips.push(ip),
                            Err(e) => errors.push(e.to_string()),
                        }
                    }
                }
                log!(
                    Level::Info,
                    "ipamd released {} allocations",
                    r.released.len()
                );
            }
            Err(RpcError::Status {
                code: tonic::Code::Unimplemented,
                ..
            }) => log!(
                Level::Warn,
                "ipamd does not implement GarbageCollect (upstream daemon?); nothing released"
            ),
            Err(e) => errors.push(e.to_string()),
        },
    }

    stale_ips.sort();
    stale_ips.dedup();
    if !stale_ips.is_empty() || !stale_veths.is_empty() {
        let mut host_nl = Netlink::open().map_err(PluginError::nl("open netlink"))?;
        // GC: the netns of stale attachments may be assumed gone; remove any veth left.
        if let Err(e) = wiring::teardown(
            &mut host_nl,
            &stale_ips,
            &stale_veths,
            &ctx.veth_prefix,
            wiring::Links::DeleteNamedAndRouted,
        ) {
            errors.push(e.to_string());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else if errors.iter().all(|e| e.contains("not reachable")) {
        Err(PluginError::TryAgain(errors.join("; ")))
    } else {
        Err(PluginError::Internal(format!("GC: {}", errors.join("; "))))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn run_with(env: &[(&str, &str)], stdin: &str) -> Outcome {
        let m: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let get = move |k: &str| m.get(k).cloned();
        run(&get, &mut stdin.as_bytes())
    }

    fn code(o: &Outcome) -> i64 {
        let v: Value = serde_json::from_str(o.stdout.as_deref().unwrap()).unwrap();
        v["code"].as_i64().unwrap()
    }

    const ADD_ENV: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/cnit-none"),
        ("CNI_IFNAME", "eth0"),
    ];

    #[test]
    fn about_and_version() {
        let o = run_with(&[], "");
        assert_eq!(o.exit_code, 0);
        assert!(o.stdout.is_none());
        assert!(o.stderr.unwrap().contains("1.1.0"));
        let o = run_with(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
        let v: Value = serde_json::from_str(&o.stdout.unwrap()).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
        let o = run_with(&[("CNI_COMMAND", "BOGUS")], "");
        assert_eq!(code(&o), 4);
    }

    #[test]
    fn bad_inputs_have_precise_codes() {
        assert_eq!(code(&run_with(ADD_ENV, "{not json")), 6);
        assert_eq!(code(&run_with(ADD_ENV, "[1,2]")), 6);
        assert_eq!(code(&run_with(ADD_ENV, r#"{"name":"n"}"#)), 1);
        assert_eq!(
            code(&run_with(ADD_ENV, r#"{"cniVersion":"0.2.0","name":"n"}"#)),
            1
        );
        assert_eq!(code(&run_with(ADD_ENV, r#"{"cniVersion":"1.0.0"}"#)), 7);
        assert_eq!(
            code(&run_with(
                ADD_ENV,
                r#"{"cniVersion":"1.0.0","name":"n","vethPrefix":"abcde"}"#
            )),
            7
        );
        assert_eq!(
            code(&run_with(
                ADD_ENV,
                r#"{"cniVersion":"1.0.0","name":"n","vethPrefix":"eth"}"#
            )),
            7
        );
        let big = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","pad":"{}"}}"#,
            "x".repeat(1 << 20)
        );
        let o = run_with(ADD_ENV, &big);
        assert_eq!(code(&o), 5);
        assert!(o.stdout.unwrap().contains("1 MiB"));
        assert_eq!(
            code(&run_with(
                ADD_ENV,
                r#"{"cniVersion":"1.0.0","name":"n","pluginLogFile":"stdout"}"#
            )),
            7
        );
        assert_eq!(
            code(&run_with(
                ADD_ENV,
                r#"{"cniVersion":"1.0.0","name":"bad name"}"#
            )),
            7
        );
        let mut check_env = ADD_ENV.to_vec();
        check_env[0] = ("CNI_COMMAND", "CHECK");
        assert_eq!(
            code(&run_with(
                &check_env,
                r#"{"cniVersion":"0.3.1","name":"n"}"#
            )),
            1
        );
        assert_eq!(
            code(&run_with(
                &[("CNI_COMMAND", "STATUS")],
                r#"{"cniVersion":"1.0.0","name":"n"}"#
            )),
            1
        );
    }

    /// A stdout that refuses every write, like a closed pipe or a full disk.
    struct Broken;

    impl std::io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(libc::EPIPE))
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_unwritable_result_is_a_failure_named_on_stderr() {
        let ok = Outcome::ok(Some(serde_json::json!({"cniVersion": "1.0.0"})));
        let mut err = Vec::new();
        assert_eq!(ok.emit(&mut Broken, &mut err), 1);
        let err = String::from_utf8(err).unwrap();
        assert!(err.contains("cannot write the CNI result"), "{err}");
        assert!(err.contains("Broken pipe"), "{err}");

        let failed = Outcome::internal_error("boom");
        let mut err = Vec::new();
        assert_eq!(failed.emit(&mut Broken, &mut err), 1);
        assert!(String::from_utf8(err).unwrap().contains("CNI error"));

        let mut out = Vec::new();
        let mut err = Vec::new();
        assert_eq!(ok.emit(&mut out, &mut err), 0);
        assert_eq!(out, b"{\"cniVersion\":\"1.0.0\"}\n");
        assert!(err.is_empty());
        // DEL success prints nothing, so nothing can fail.
        assert_eq!(Outcome::ok(None).emit(&mut Broken, &mut Vec::new()), 0);
    }

    #[test]
    fn prev_result_parsing_ours_and_upstream() {
        let upstream: CniResult = serde_json::from_str(
            r#"{"cniVersion":"0.4.0","interfaces":[{"name":"eni0761ccbeace"},
            {"name":"eth0","mac":"2","sandbox":"/var/run/netns/x"},
            {"name":"dummy0761ccbeace","mac":"0","sandbox":"1"}],
            "ips":[{"version":"4","interface":1,"address":"10.0.70.11/32"}],"dns":{}}"#,
        )
        .unwrap();
        let i = prev_info(&upstream, "eth0");
        assert_eq!(i.ips, vec!["10.0.70.11".parse::<IpAddr>().unwrap()]);
        assert_eq!(i.host_veth.as_deref(), Some("eni0761ccbeace"));
        assert_eq!(i.table, Some(2));
        let ours: CniResult = serde_json::from_str(
            r#"{"cniVersion":"1.1.0","interfaces":[{"name":"eniabc","mac":"02:00:00:00:00:01"},
            {"name":"eth0","mac":"02:00:00:00:00:02","sandbox":"/x"}],
            "ips":[{"interface":1,"address":"10.0.0.5/32","gateway":"169.254.1.1"}]}"#,
        )
        .unwrap();
        let i = prev_info(&ours, "eth0");
        assert_eq!(i.ips, vec!["10.0.0.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(i.host_veth.as_deref(), Some("eniabc"));
        assert_eq!(i.table, None);
        assert!(prev_info(&ours, "eth1").ips.is_empty());
    }
}
