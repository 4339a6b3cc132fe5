//! The `vpcsim` commands: `serve` (the long-running process), `up` (start `serve` detached and
//! wait until it is ready), `status` and `down` (also after a crash).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde::Serialize;
use tokio::sync::watch;

use super::state::{self, Description, ExternalDesc, NodeDesc, StateFile, SubnetDesc};
use super::{
    EC2_NODE_ADDR, EXT_HOST_ADDR, Fabric, FabricConfig, FabricError, IMDS_ADDR, ext_ns, ns, plan,
    sock, validate_prefix, vpc_ns,
};
use crate::{Sim, SimConfig};

/// Options of `vpcsim serve` / `vpcsim up`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Number of nodes (instances), each in its own namespace.
    pub nodes: usize,
    /// Instance type of every node.
    pub instance_type: String,
    /// VPC CIDR.
    pub vpc_cidr: Ipv4Net,
    /// Subnets; node `n` lands in subnet `(n - 1) % len`.
    pub subnets: Vec<Ipv4Net>,
    /// Namespace prefix.
    pub prefix: String,
    /// Directory for the state file, the log and the node-local directories.
    pub state_dir: PathBuf,
    /// Time an attach (and a detach) spends in `attaching` (`detaching`).
    pub attach_delay: Duration,
    /// IMDS (and fabric) lag behind EC2.
    pub imds_lag: Duration,
    /// Fixed loopback port for the EC2 API (0 = ephemeral).
    pub ec2_port: u16,
    /// Fixed loopback port for the admin API (0 = ephemeral).
    pub admin_port: u16,
    /// Model EC2's source/destination check in the VPC router.
    pub source_dest_check: bool,
    /// Seed of the emulator's random choices.
    pub seed: u64,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            nodes: 2,
            instance_type: "m5.large".into(),
            vpc_cidr: Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 16).unwrap_or_default(),
            subnets: vec![Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 19).unwrap_or_default()],
            prefix: "vsim".into(),
            state_dir: PathBuf::from(state::DEFAULT_STATE_DIR),
            attach_delay: Duration::ZERO,
            imds_lag: Duration::ZERO,
            ec2_port: 0,
            admin_port: 0,
            source_dest_check: true,
            seed: 1,
        }
    }
}

fn io_err(ctx: impl Into<String>) -> impl FnOnce(std::io::Error) -> FabricError {
    let ctx = ctx.into();
    move |source| FabricError::Io { ctx, source }
}

fn emu_err(ctx: &str, e: impl std::fmt::Debug) -> FabricError {
    FabricError::Invalid(format!("{ctx}: {e:?}"))
}

/// Progress line for humans (stderr).
fn progress(msg: impl std::fmt::Display) {
    eprintln!("vpcsim: {msg}");
}

/// Runs the emulator and the fabric until SIGTERM/SIGINT. `ready` is called once with the
/// description when everything is up (the `up` parent waits for it). Tears the fabric down on
/// the way out, also after a start-up error.
pub async fn serve(
    opts: ServeOptions,
    ready: impl FnOnce(&Description),
) -> Result<(), FabricError> {
    validate_prefix(&opts.prefix)?;
    if opts.nodes == 0 || opts.nodes > 64 {
        return Err(FabricError::Invalid(format!(
            "--nodes {} is out of range (1-64)",
            opts.nodes
        )));
    }
    if opts.subnets.is_empty() {
        return Err(FabricError::Invalid(
            "at least one subnet is required".into(),
        ));
    }
    // The fabric uses these ranges itself (next hop, IMDS/EC2 addresses, the "internet").
    for reserved in ["169.254.0.0/16", "203.0.113.0/24"] {
        let r: Ipv4Net = reserved.parse().unwrap_or_default();
        if r.contains(&opts.vpc_cidr.network()) || opts.vpc_cidr.contains(&r.network()) {
            return Err(FabricError::Invalid(format!(
                "VPC CIDR {} overlaps {reserved}, which the fabric uses itself",
                opts.vpc_cidr
            )));
        }
    }
    for s in &opts.subnets {
        if !opts.vpc_cidr.contains(s) {
            return Err(FabricError::Invalid(format!(
                "subnet {s} is not inside the VPC CIDR {}",
                opts.vpc_cidr
            )));
        }
    }
    std::fs::create_dir_all(&opts.state_dir).map_err(io_err(format!(
        "cannot create {}",
        opts.state_dir.display()
    )))?;
    let state_file = state::state_path(&opts.state_dir, &opts.prefix);
    if let Some(old) = state::read(&state_file)? {
        if serve_alive(&old) {
            return Err(FabricError::Invalid(format!(
                "vpcsim with prefix {} is already running (pid {}); run `vpcsim down --prefix {}`",
                opts.prefix, old.serve_pid, opts.prefix
            )));
        }
        progress(format!(
            "cleaning up a crashed instance of prefix {}",
            opts.prefix
        ));
        cleanup(&opts.state_dir, &opts.prefix, Some(&old));
    }
    let node_dirs = state::node_dirs_path(&opts.state_dir, &opts.prefix);
    let me = std::process::id();
    let mut st = StateFile {
        prefix: opts.prefix.clone(),
        serve_pid: me,
        serve_start_time: ns::pid_start_time(me as i32),
        mnt_inodes: Vec::new(),
        node_dirs: node_dirs.display().to_string(),
        description: None,
    };
    // Written before the first namespace exists, so `down` can always find what we made.
    state::write(&state_file, &st)?;

    let cfg = FabricConfig {
        prefix: opts.prefix.clone(),
        node_dirs: node_dirs.clone(),
        source_dest_check: opts.source_dest_check,
    };
    let fabric = {
        let cfg = cfg.clone();
        let created = tokio::task::spawn_blocking(move || Fabric::create(cfg))
            .await
            .map_err(|e| FabricError::Invalid(format!("fabric setup task died: {e}")))
            .and_then(|r| r);
        match created {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&state_file);
                return Err(e);
            }
        }
    };
    let result = serve_with(&opts, &fabric, &mut st, &state_file, ready).await;
    progress("shutting down");
    let f = Arc::clone(&fabric);
    let _ = tokio::task::spawn_blocking(move || f.destroy()).await;
    let _ = std::fs::remove_file(&state_file);
    let _ = std::fs::remove_dir_all(opts.state_dir.join(&opts.prefix));
    result
}

async fn serve_with(
    opts: &ServeOptions,
    fabric: &Arc<Fabric>,
    st: &mut StateFile,
    state_file: &Path,
    ready: impl FnOnce(&Description),
) -> Result<(), FabricError> {
    let sim = Sim::new(SimConfig {
        vpc_cidr: opts.vpc_cidr,
        attach_delay: opts.attach_delay,
        detach_delay: opts.attach_delay,
        imds_lag: opts.imds_lag,
        seed: opts.seed,
        ..SimConfig::default()
    });
    let region = SimConfig::default().region;
    let mut subnets = Vec::new();
    for (i, cidr) in opts.subnets.iter().enumerate() {
        let tags = vec![(
            "Name".to_owned(),
            format!("{}-subnet{}", opts.prefix, i + 1),
        )];
        let id = sim
            .add_subnet(*cidr, None, &tags)
            .map_err(|e| emu_err(&format!("cannot create subnet {cidr}"), e))?;
        subnets.push(SubnetDesc {
            subnet_id: id,
            cidr: cidr.to_string(),
            gateway: plan::gateway_of(*cidr).to_string(),
        });
    }
    let mut nodes = Vec::new();
    for n in 1..=opts.nodes {
        let subnet = &subnets[(n - 1) % subnets.len()];
        let inst = sim
            .add_instance(&opts.instance_type, &subnet.subnet_id)
            .map_err(|e| emu_err(&format!("cannot launch {}", opts.instance_type), e))?;
        let f = Arc::clone(fabric);
        let id = inst.instance_id.clone();
        let node = tokio::task::spawn_blocking(move || f.add_node(n, &id))
            .await
            .map_err(|e| FabricError::Invalid(format!("node setup task died: {e}")))??;
        st.mnt_inodes.push(node.mnt_inode);
        state::write(state_file, st)?;
        progress(format!(
            "{} is {} ({}, {} on {})",
            node.netns,
            inst.instance_id,
            opts.instance_type,
            inst.primary_ip,
            plan::mac_string(&inst.mac)
        ));
        nodes.push(NodeDesc {
            name: node.name.clone(),
            namespace: node.netns.clone(),
            instance_id: inst.instance_id.clone(),
            instance_type: inst.instance_type.clone(),
            availability_zone: inst.az.clone(),
            subnet_id: inst.subnet_id.clone(),
            primary_eni_id: inst.primary_eni_id.clone(),
            primary_ip: inst.primary_ip.to_string(),
            mac: plan::mac_string(&inst.mac),
            holder_pid: node.holder_pid,
            enter: node.enter_command(),
            dirs: node.dirs.clone(),
        });
    }
    // First reconcile before anything is announced: the primary ENIs must exist when `up`
    // returns.
    {
        let f = Arc::clone(fabric);
        let view = sim.fabric_view();
        tokio::task::spawn_blocking(move || f.reconcile(&view))
            .await
            .map_err(|e| FabricError::Invalid(format!("reconcile task died: {e}")))??;
    }

    // Listeners. Inside namespaces the socket is opened by a thread that entered the namespace.
    let ec2_lo = bind_loopback(opts.ec2_port).await?;
    let admin_lo = bind_loopback(opts.admin_port).await?;
    let ec2_addr = local_addr(&ec2_lo)?;
    let admin_addr = local_addr(&admin_lo)?;
    spawn_server(ec2_lo, sim.ec2_router(), "ec2 (loopback)");
    let view_gen = {
        let sim = Arc::clone(&sim);
        move || sim.fabric_view().generation
    };
    spawn_server(
        admin_lo,
        sim.admin_router()
            .merge(fabric_router(Arc::clone(fabric), view_gen)),
        "admin",
    );
    for node in fabric.nodes() {
        let imds = from_std(ns::bind_tcp(&node.netns, sock(IMDS_ADDR, 80))?)?;
        spawn_server(imds, sim.imds_router(&node.instance_id), "imds");
        let ec2 = from_std(ns::bind_tcp(&node.netns, sock(EC2_NODE_ADDR, 80))?)?;
        spawn_server(ec2, sim.ec2_router(), "ec2 (node)");
    }
    let ext = from_std(ns::bind_tcp(
        &ext_ns(&opts.prefix),
        sock(EXT_HOST_ADDR, 80),
    )?)?;
    tokio::spawn(async move {
        let app = whoami_router().into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(ext, app).await {
            tracing::warn!(error = %e, "external whoami server stopped");
        }
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let reconciler = {
        let changes = sim.subscribe();
        let sim = Arc::clone(&sim);
        tokio::spawn(Arc::clone(fabric).run_reconciler(move || sim.fabric_view(), changes, stop_rx))
    };

    let desc = Description {
        prefix: opts.prefix.clone(),
        pid: std::process::id(),
        state_file: state_file.display().to_string(),
        log_file: state::log_path(&opts.state_dir, &opts.prefix)
            .display()
            .to_string(),
        region,
        vpc_cidrs: vec![opts.vpc_cidr.to_string()],
        vpc_namespace: vpc_ns(&opts.prefix),
        subnets,
        ec2_endpoint: format!("http://{ec2_addr}"),
        ec2_endpoint_in_node: format!("http://{EC2_NODE_ADDR}"),
        imds_endpoint_in_node: format!("http://{IMDS_ADDR}"),
        admin_endpoint: format!("http://{admin_addr}"),
        external: ExternalDesc {
            namespace: ext_ns(&opts.prefix),
            address: EXT_HOST_ADDR.to_string(),
            whoami_url: format!("http://{EXT_HOST_ADDR}/"),
        },
        nodes,
    };
    st.description = Some(desc.clone());
    state::write(state_file, st)?;
    progress(format!(
        "up: {} node(s), EC2 {} (in nodes {}), admin {}",
        desc.nodes.len(),
        desc.ec2_endpoint,
        desc.ec2_endpoint_in_node,
        desc.admin_endpoint
    ));
    ready(&desc);

    let mut reconciler = reconciler;
    tokio::select! {
        r = wait_for_signal() => r?,
        _ = &mut reconciler => {
            progress("the fabric's VPC namespace disappeared; exiting");
            return Ok(());
        }
    }
    let _ = stop_tx.send(true);
    let _ = reconciler.await;
    Ok(())
}

async fn wait_for_signal() -> Result<(), FabricError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(io_err("cannot watch SIGTERM"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io_err("cannot watch SIGINT"))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

async fn bind_loopback(port: u16) -> Result<tokio::net::TcpListener, FabricError> {
    tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(io_err(format!("cannot listen on 127.0.0.1:{port}")))
}

fn local_addr(l: &tokio::net::TcpListener) -> Result<SocketAddr, FabricError> {
    l.local_addr().map_err(io_err("listener has no address"))
}

fn from_std(l: std::net::TcpListener) -> Result<tokio::net::TcpListener, FabricError> {
    tokio::net::TcpListener::from_std(l).map_err(io_err("cannot register a listener with tokio"))
}

fn spawn_server(listener: tokio::net::TcpListener, router: axum::Router, what: &'static str) {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!(error = %e, server = what, "listener stopped");
        }
    });
}

/// Answer of `GET /fabric/status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct FabricStatusResponse {
    /// The reconciler's own status.
    #[serde(flatten)]
    pub status: super::FabricStatus,
    /// Generation of the emulator's view right now.
    pub view_generation: u64,
    /// Whether the last applied view is the current one (every change so far is wired).
    pub in_sync: bool,
}

/// `GET /fabric/status` on the admin endpoint: the reconciler's progress, so tests can wait
/// until every change they made is wired (`in_sync`).
fn fabric_router(
    fabric: Arc<Fabric>,
    view_generation: impl Fn() -> u64 + Clone + Send + Sync + 'static,
) -> axum::Router {
    axum::Router::new().route(
        "/fabric/status",
        axum::routing::get(move || {
            let fabric = Arc::clone(&fabric);
            let view_generation = view_generation.clone();
            async move {
                let status = fabric.status();
                let view_generation = view_generation();
                axum::Json(FabricStatusResponse {
                    in_sync: status.applied_generation >= view_generation
                        && status.last_error.is_none(),
                    status,
                    view_generation,
                })
            }
        }),
    )
}

/// The external host's HTTP service: answers with the client address as it arrives, which is
/// the node's primary IP for SNATed pod traffic and the pod IP otherwise.
fn whoami_router() -> axum::Router {
    axum::Router::new().route(
        "/",
        axum::routing::get(
            |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>| async move {
                format!("{}\n", peer.ip())
            },
        ),
    )
}

fn serve_alive(st: &StateFile) -> bool {
    let pid = st.serve_pid as i32;
    ns::pid_alive(pid)
        && match st.serve_start_time {
            Some(t) => ns::pid_start_time(pid) == Some(t),
            None => true,
        }
}

/// Starts `vpcsim serve <serve_args>` detached (own process group, output to the log file),
/// waits until it prints its description, and returns it.
pub fn up(
    exe: &Path,
    serve_args: &[String],
    state_dir: &Path,
    prefix: &str,
    timeout: Duration,
) -> Result<Description, FabricError> {
    validate_prefix(prefix)?;
    std::fs::create_dir_all(state_dir)
        .map_err(io_err(format!("cannot create {}", state_dir.display())))?;
    let log = state::log_path(state_dir, prefix);
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io_err(format!("cannot open {}", log.display())))?;
    let log_start = log_file.metadata().map(|m| m.len()).unwrap_or(0);
    progress(format!("starting (log: {})", log.display()));
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(exe)
            .arg("serve")
            .args(serve_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            // Its own process group: a Ctrl-C meant for the caller does not reach it.
            .process_group(0)
            .spawn()
            .map_err(io_err(format!("cannot start {} serve", exe.display())))?
    };
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| FabricError::Invalid("serve has no stdout".into()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
    });
    let outcome = rx.recv_timeout(timeout);
    let fail = |why: String| {
        let tail = log_tail(&log, log_start);
        FabricError::Invalid(format!("{why}; serve log ({}):\n{tail}", log.display()))
    };
    match outcome {
        Ok(Ok(line)) if !line.trim().is_empty() => {
            serde_json::from_str(&line).map_err(|source| FabricError::Parse {
                cmd: "vpcsim serve (ready line)".into(),
                source,
            })
        }
        Ok(_) => {
            let status = child.wait().ok();
            Err(fail(format!(
                "vpcsim serve exited before it was ready ({status:?})"
            )))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            // It may have created namespaces before hanging.
            cleanup(
                state_dir,
                prefix,
                state::read(&state::state_path(state_dir, prefix))
                    .ok()
                    .flatten()
                    .as_ref(),
            );
            Err(fail(format!(
                "vpcsim serve was not ready within {timeout:?}"
            )))
        }
    }
}

fn log_tail(log: &Path, from: u64) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        use std::io::Seek;
        let _ = f.seek(std::io::SeekFrom::Start(from));
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A vpcsim started with [`up`] that is stopped with [`down`] when dropped, for tests that
/// drive the real binary (`exe`) and must not leave namespaces behind on any exit path.
#[derive(Debug)]
pub struct Running {
    /// The description printed by `up`.
    pub desc: Description,
    /// The state directory it was started with.
    pub state_dir: PathBuf,
    stopped: bool,
}

impl Running {
    /// Runs `exe up <args> --prefix <prefix> --state-dir <state_dir>` (see [`up`]); on failure
    /// cleans up whatever the attempt left.
    pub fn start(
        exe: &Path,
        prefix: &str,
        state_dir: &Path,
        args: &[String],
    ) -> Result<Running, FabricError> {
        let mut all = vec![
            format!("--prefix={prefix}"),
            format!("--state-dir={}", state_dir.display()),
        ];
        all.extend_from_slice(args);
        match up(exe, &all, state_dir, prefix, Duration::from_secs(60)) {
            Ok(desc) => Ok(Running {
                desc,
                state_dir: state_dir.to_path_buf(),
                stopped: false,
            }),
            Err(e) => {
                let _ = down(state_dir, prefix, Duration::from_secs(5));
                Err(e)
            }
        }
    }

    /// Stops it now (idempotent; also done on drop).
    pub fn stop(&mut self) -> Result<DownReport, FabricError> {
        self.stopped = true;
        down(&self.state_dir, &self.desc.prefix, Duration::from_secs(15))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.stop();
        }
    }
}

/// What `vpcsim status` prints.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Namespace prefix.
    pub prefix: String,
    /// Whether the serve process is alive.
    pub running: bool,
    /// Namespaces with the prefix that exist now.
    pub namespaces: Vec<String>,
    /// The description of the running instance.
    pub description: Option<Description>,
    /// The reconciler's status, from the admin endpoint.
    pub fabric: Option<serde_json::Value>,
}

/// `vpcsim status`.
pub fn status(state_dir: &Path, prefix: &str) -> Result<Status, FabricError> {
    validate_prefix(prefix)?;
    let st = state::read(&state::state_path(state_dir, prefix))?;
    let running = st.as_ref().is_some_and(serve_alive);
    let description = st.and_then(|s| s.description);
    let fabric = match (&description, running) {
        (Some(d), true) => http_get_json(&d.admin_endpoint, "/fabric/status").ok(),
        _ => None,
    };
    Ok(Status {
        prefix: prefix.to_owned(),
        running,
        namespaces: ns::list_with_prefix(&format!("{prefix}-")),
        description,
        fabric,
    })
}

/// Minimal HTTP/1.0 GET on loopback (no HTTP client dependency for one status call).
fn http_get_json(base: &str, path: &str) -> Result<serde_json::Value, FabricError> {
    let hostport = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(hostport)
        .map_err(io_err(format!("cannot connect to {hostport}")))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io_err("set timeout"))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n").map_err(io_err("send"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(io_err("receive"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| FabricError::Invalid(format!("bad HTTP response from {base}{path}")))?;
    serde_json::from_str(body).map_err(|source| FabricError::Parse {
        cmd: format!("GET {base}{path}"),
        source,
    })
}

/// What `vpcsim down` prints.
#[derive(Debug, Serialize)]
pub struct DownReport {
    /// Namespace prefix.
    pub prefix: String,
    /// Whether a live serve process was stopped.
    pub stopped_serve: bool,
    /// Namespaces deleted.
    pub namespaces_deleted: Vec<String>,
    /// Processes killed inside the namespaces.
    pub processes_killed: Vec<i32>,
}

/// `vpcsim down`: stop the serve process (SIGTERM, then SIGKILL after `grace`), kill whatever
/// is left inside the prefix's namespaces, delete them, remove the state. Idempotent.
pub fn down(state_dir: &Path, prefix: &str, grace: Duration) -> Result<DownReport, FabricError> {
    validate_prefix(prefix)?;
    let st = state::read(&state::state_path(state_dir, prefix))?;
    let mut stopped = false;
    if let Some(s) = st.as_ref().filter(|s| serve_alive(s)) {
        let pid = nix::unistd::Pid::from_raw(s.serve_pid as i32);
        progress(format!("stopping serve (pid {})", s.serve_pid));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while serve_alive(s) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if serve_alive(s) {
            progress("serve did not stop in time; killing it");
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(100));
        }
        stopped = true;
    }
    let (deleted, killed) = cleanup(state_dir, prefix, st.as_ref());
    Ok(DownReport {
        prefix: prefix.to_owned(),
        stopped_serve: stopped,
        namespaces_deleted: deleted,
        processes_killed: killed,
    })
}

/// Removes what a (possibly crashed) instance left: processes in its namespaces, the
/// namespaces, node-local directories and the state file.
fn cleanup(state_dir: &Path, prefix: &str, st: Option<&StateFile>) -> (Vec<String>, Vec<i32>) {
    let mnt: HashSet<u64> = st
        .map(|s| s.mnt_inodes.iter().copied().collect())
        .unwrap_or_default();
    let (deleted, killed) = super::sweep(prefix, &mnt);
    for n in &deleted {
        progress(format!("deleted namespace {n}"));
    }
    let _ = std::fs::remove_dir_all(state_dir.join(prefix));
    let _ = std::fs::remove_file(state::state_path(state_dir, prefix));
    (deleted, killed)
}
