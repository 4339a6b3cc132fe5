//! `vpcsim`: an AWS VPC in a box (EC2 + IMDS emulator and a network-namespace fabric).
//!
//! stdout carries exactly one JSON document per command; progress for humans goes to stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::Ipv4Net;
use vpcsim::fabric::run::{self, ServeOptions};
use vpcsim::fabric::state::DEFAULT_STATE_DIR;

#[derive(Parser)]
#[command(
    name = "vpcsim",
    version,
    about = "An AWS VPC in a box: EC2/IMDS emulator + netns fabric"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the emulator and the fabric in the background and print their JSON description.
    Up(ServeArgs),
    /// Run the emulator and the fabric in the foreground until SIGTERM/SIGINT (what `up`
    /// starts); prints the description as one JSON line when ready.
    Serve(ServeArgs),
    /// Print the JSON status of an instance.
    Status(Where),
    /// Stop an instance and remove every namespace and process it created (also after a crash).
    Down(Where),
    /// Run a command inside a node (its network and mount namespaces), e.g.
    /// `vpcsim exec node1 -- ip addr`.
    Exec(ExecArgs),
}

#[derive(Args, Clone)]
struct ExecArgs {
    #[command(flatten)]
    at: Where,
    /// The node: its name (`node1`), namespace (`vsim-node1`) or instance id.
    node: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Which instance: its prefix and state directory.
#[derive(Args, Clone)]
struct Where {
    /// Namespace prefix (`<prefix>-vpc`, `<prefix>-ext`, `<prefix>-node1`, …).
    #[arg(long, default_value = "vsim")]
    prefix: String,
    /// Directory of the state file, the log and the node-local directories.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

#[derive(Args, Clone)]
struct ServeArgs {
    #[command(flatten)]
    at: Where,
    /// Number of nodes (instances, one namespace each).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Instance type of every node.
    #[arg(long, default_value = "m5.large")]
    instance_type: String,
    /// VPC CIDR.
    #[arg(long, default_value = "10.0.0.0/16")]
    vpc_cidr: Ipv4Net,
    /// Subnet CIDRs, comma-separated; node N goes to subnet (N-1) mod count.
    #[arg(long, value_delimiter = ',', default_value = "10.0.0.0/19")]
    subnets: Vec<Ipv4Net>,
    /// Time an attach/detach spends in `attaching`/`detaching`, in milliseconds.
    #[arg(long, default_value_t = 0)]
    attach_delay_ms: u64,
    /// Lag of IMDS (and of the fabric) behind EC2, in milliseconds.
    #[arg(long, default_value_t = 0)]
    imds_lag_ms: u64,
    /// Loopback port of the EC2 API (0 = ephemeral).
    #[arg(long, default_value_t = 0)]
    ec2_port: u16,
    /// Loopback port of the admin API (0 = ephemeral).
    #[arg(long, default_value_t = 0)]
    admin_port: u16,
    /// Do not model EC2's source/destination check in the VPC router.
    #[arg(long)]
    no_source_dest_check: bool,
    /// Seed of the emulator's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `up` only: how long to wait for the background process to be ready, in seconds.
    #[arg(long, default_value_t = 60)]
    ready_timeout_secs: u64,
}

impl ServeArgs {
    fn options(&self) -> ServeOptions {
        ServeOptions {
            nodes: self.nodes,
            instance_type: self.instance_type.clone(),
            vpc_cidr: self.vpc_cidr,
            subnets: self.subnets.clone(),
            prefix: self.at.prefix.clone(),
            state_dir: self.at.state_dir.clone(),
            attach_delay: Duration::from_millis(self.attach_delay_ms),
            imds_lag: Duration::from_millis(self.imds_lag_ms),
            ec2_port: self.ec2_port,
            admin_port: self.admin_port,
            source_dest_check: !self.no_source_dest_check,
            seed: self.seed,
        }
    }

    /// The same options as `serve` arguments (for the re-exec by `up`).
    fn to_args(&self) -> Vec<String> {
        let subnets: Vec<String> = self.subnets.iter().map(ToString::to_string).collect();
        let mut v = vec![
            format!("--prefix={}", self.at.prefix),
            format!("--state-dir={}", self.at.state_dir.display()),
            format!("--nodes={}", self.nodes),
            format!("--instance-type={}", self.instance_type),
            format!("--vpc-cidr={}", self.vpc_cidr),
            format!("--subnets={}", subnets.join(",")),
            format!("--attach-delay-ms={}", self.attach_delay_ms),
            format!("--imds-lag-ms={}", self.imds_lag_ms),
            format!("--ec2-port={}", self.ec2_port),
            format!("--admin-port={}", self.admin_port),
            format!("--seed={}", self.seed),
        ];
        if self.no_source_dest_check {
            v.push("--no-source-dest-check".into());
        }
        v
    }
}

fn print_json(v: &impl serde::Serialize, pretty: bool) -> Result<(), String> {
    let s = if pretty {
        serde_json::to_string_pretty(v)
    } else {
        serde_json::to_string(v)
    }
    .map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{s}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vpcsim: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Up(a) => {
            let exe = std::env::current_exe()
                .map_err(|e| format!("cannot find the vpcsim binary: {e}"))?;
            let desc = run::up(
                &exe,
                &a.to_args(),
                &a.at.state_dir,
                &a.at.prefix,
                Duration::from_secs(a.ready_timeout_secs),
            )
            .map_err(|e| e.to_string())?;
            eprintln!(
                "vpcsim: up: {} node(s) ({}), EC2 {} (in nodes {}), admin {}; `vpcsim down --prefix {}` to stop",
                desc.nodes.len(),
                desc.nodes
                    .iter()
                    .map(|n| n.namespace.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                desc.ec2_endpoint,
                desc.ec2_endpoint_in_node,
                desc.admin_endpoint,
                desc.prefix
            );
            print_json(&desc, true)
        }
        Cmd::Serve(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the runtime: {e}"))?;
            let opts = a.options();
            rt.block_on(run::serve(opts, |desc| {
                if let Err(e) = print_json(desc, false) {
                    tracing::warn!(error = %e, "cannot announce readiness");
                }
            }))
            .map_err(|e| e.to_string())
        }
        Cmd::Status(w) => {
            let st = run::status(&w.state_dir, &w.prefix).map_err(|e| e.to_string())?;
            print_json(&st, true)
        }
        Cmd::Exec(a) => exec_in_node(&a),
        Cmd::Down(w) => {
            let report = run::down(&w.state_dir, &w.prefix, Duration::from_secs(15))
                .map_err(|e| e.to_string())?;
            eprintln!(
                "vpcsim: down: {} namespace(s) deleted, {} process(es) killed",
                report.namespaces_deleted.len(),
                report.processes_killed.len()
            );
            print_json(&report, true)
        }
    }
}

/// Replaces this process with `nsenter` into the node's holder (network + mount namespaces).
fn exec_in_node(a: &ExecArgs) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let path = vpcsim::fabric::state::state_path(&a.at.state_dir, &a.at.prefix);
    let st = vpcsim::fabric::state::read(&path)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "no vpcsim with prefix {} ({} missing)",
                a.at.prefix,
                path.display()
            )
        })?;
    let desc = st
        .description
        .ok_or_else(|| format!("vpcsim with prefix {} is not ready", a.at.prefix))?;
    let node = desc
        .nodes
        .iter()
        .find(|n| n.name == a.node || n.namespace == a.node || n.instance_id == a.node)
        .ok_or_else(|| {
            let names: Vec<&str> = desc.nodes.iter().map(|n| n.name.as_str()).collect();
            format!("no node {:?}; nodes are {names:?}", a.node)
        })?;
    let mut argv = node.enter.clone();
    argv.extend(a.command.iter().cloned());
    let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
    Err(format!("cannot run {argv:?}: {err}"))
}
