//! `aws-vpc-cni`: the aws-node container entrypoint (upstream's binary name).
//!
//! - `aws-vpc-cni` / `aws-vpc-cni run [-- IPAMD_ARGS...]`: the main sequence.
//! - `aws-vpc-cni init` (or invoked as `aws-vpc-cni-init`): the init container's step.
//! - `aws-vpc-cni render-conflist`: print the conflist the environment would produce.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use aws_vpc_cni_installer::config::{EntrypointConfig, InitConfig};
use aws_vpc_cni_installer::{conflist, entrypoint, init};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "aws-vpc-cni",
    about = "aws-node entrypoint: install aws-cni, start ipamd, write 10-aws.conflist once ipamd is healthy",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Main sequence (the default): install the plugin, start ipamd, wait for health, write the
    /// conflist, wait on ipamd.
    Run {
        /// Delay between health checks while waiting for ipamd, in milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        health_poll_ms: u64,
        /// Arguments passed to ipamd.
        #[arg(last = true)]
        ipamd_args: Vec<OsString>,
    },
    /// Init container step: sysctls on the primary interface of this network namespace, and
    /// the standard CNI plugins copied into HOST_CNI_BIN_PATH.
    Init,
    /// Print the conflist this environment renders to stdout, without installing anything.
    RenderConflist,
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("aws-vpc-cni: cannot start runtime: {e}");
            ExitCode::FAILURE
        })
}

fn entry_config() -> Result<EntrypointConfig, ExitCode> {
    EntrypointConfig::from_env().map_err(|errs| {
        for e in &errs.0 {
            tracing::error!("invalid environment: {e}");
        }
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    init_logging();
    // Upstream's init image runs a binary of this name; a symlink to us behaves the same.
    let invoked_as_init = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n == "aws-vpc-cni-init")
        })
        .unwrap_or(false);
    let cmd = if invoked_as_init {
        Cmd::Init
    } else {
        Cli::parse().cmd.unwrap_or(Cmd::Run {
            health_poll_ms: 1000,
            ipamd_args: Vec::new(),
        })
    };
    match cmd {
        Cmd::RenderConflist => {
            let cfg = match entry_config() {
                Ok(c) => c,
                Err(code) => return code,
            };
            match conflist::render(&cfg) {
                Ok(s) => {
                    print!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Init => {
            let cfg = match InitConfig::from_env() {
                Ok(c) => c,
                Err(errs) => {
                    for e in &errs.0 {
                        tracing::error!("invalid environment: {e}");
                    }
                    return ExitCode::FAILURE;
                }
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(init::run(&cfg)) {
                Ok(()) => {
                    tracing::info!("init done");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!("init failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Run {
            health_poll_ms,
            ipamd_args,
        } => {
            let cfg = match entry_config() {
                Ok(c) => c,
                Err(code) => return code,
            };
            let opts = entrypoint::RunOptions {
                poll_interval: Duration::from_millis(health_poll_ms),
                ipamd_args,
                ..entrypoint::RunOptions::default()
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(entrypoint::run(&cfg, &opts)) {
                Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
