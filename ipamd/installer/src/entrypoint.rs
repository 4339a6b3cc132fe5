//! The `aws-node` container's main sequence (operations.md §6):
//! install the plugin, start ipamd, wait for its health check, write the conflist, then stay
//! with ipamd until it exits.
//!
//! The conflist is the node's "network ready" signal: kubelet reports the node NotReady until a
//! CNI config exists. Writing it only after ipamd answers SERVING means no pod is scheduled to a
//! node whose daemon cannot yet hand out addresses.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::config::{DEFAULT_IPAMD_BIN, EntrypointConfig, FALLBACK_IPAMD_BIN};
use crate::conflist::{self, CONFLIST_NAME};
use crate::fsutil::{self, FsError};
use crate::health::{self, Target};

/// File name of the plugin in the host CNI bin dir (the conflist's `type`).
pub const PLUGIN_NAME: &str = "aws-cni";

/// Knobs of the sequence that are not part of upstream's environment.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Delay between health checks while waiting for ipamd (upstream polls once a second).
    pub poll_interval: Duration,
    /// Connect timeout of each health check.
    pub connect_timeout: Duration,
    /// RPC timeout of each health check.
    pub rpc_timeout: Duration,
    /// Extra arguments passed to ipamd.
    pub ipamd_args: Vec<OsString>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(5),
            ipamd_args: Vec::new(),
        }
    }
}

/// Failures of the sequence; each maps to a non-zero exit.
#[derive(Debug, thiserror::Error)]
pub enum EntrypointError {
    /// Installing the plugin or writing the conflist failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The conflist template could not be rendered.
    #[error(transparent)]
    Render(#[from] conflist::RenderError),
    /// ipamd could not be started.
    #[error("cannot start ipamd {bin}: {source}")]
    Spawn {
        /// The binary that was executed.
        bin: PathBuf,
        /// The exec error.
        #[source]
        source: std::io::Error,
    },
    /// Waiting on the child or installing signal handlers failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Chooses the ipamd binary: explicit setting, else upstream's image path when present, else
/// `ipamd` resolved through `PATH` by exec.
pub fn ipamd_binary(cfg: &EntrypointConfig) -> PathBuf {
    if let Some(b) = &cfg.ipamd_bin {
        return b.clone();
    }
    if Path::new(DEFAULT_IPAMD_BIN).is_file() {
        return PathBuf::from(DEFAULT_IPAMD_BIN);
    }
    PathBuf::from(FALLBACK_IPAMD_BIN)
}

/// Exit code for a child status, shell-style (128 + signal number when killed).
fn status_code(st: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 1,
    }
}

fn forward(child: &Child, sig: Signal) {
    let Some(pid) = child.id() else {
        return;
    };
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) => tracing::info!(%sig, pid, "forwarded signal to ipamd"),
        Err(e) => tracing::warn!(%sig, pid, error = %e, "could not forward signal to ipamd"),
    }
}

/// Runs the whole sequence and returns the process exit code.
pub async fn run(cfg: &EntrypointConfig, opts: &RunOptions) -> Result<i32, EntrypointError> {
    let started = Instant::now();
    // Handlers first, so a SIGTERM arriving during start-up is forwarded, not fatal to us alone.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let dest = fsutil::install_file(&cfg.plugin_src, &cfg.host_cni_bin_path, PLUGIN_NAME, 0o755)?;
    tracing::info!(src = %cfg.plugin_src.display(), dest = %dest.display(), "installed CNI plugin");

    let bin = ipamd_binary(cfg);
    let mut child = Command::new(&bin)
        .args(&opts.ipamd_args)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|source| EntrypointError::Spawn {
            bin: bin.clone(),
            source,
        })?;
    tracing::info!(bin = %bin.display(), pid = child.id(), "started ipamd");

    let target = Target::Unix(cfg.ipamd_socket.clone());
    let mut terminating = false;
    let mut attempts: u64 = 0;
    // Phase 1: wait for SERVING, watching the child and signals at the same time.
    loop {
        attempts += 1;
        let check = async {
            let r = health::check(&target, "", opts.connect_timeout, opts.rpc_timeout).await;
            if !matches!(r, Ok(ServingStatus::Serving)) {
                tokio::time::sleep(opts.poll_interval).await;
            }
            r
        };
        tokio::select! {
            st = child.wait() => {
                let st = st?;
                if terminating {
                    tracing::info!(status = %st, "ipamd stopped before becoming healthy");
                    return Ok(status_code(st));
                }
                tracing::error!(status = %st, "ipamd exited before becoming healthy; conflist not written");
                return Ok(nonzero(status_code(st)));
            }
            _ = sigterm.recv() => { terminating = true; forward(&child, Signal::SIGTERM); }
            _ = sigint.recv() => { terminating = true; forward(&child, Signal::SIGINT); }
            r = check, if !terminating => match r {
                Ok(ServingStatus::Serving) => break,
                // Node init (ENI attach, pool fill) can take tens of seconds: say so now and
                // then, not on every poll.
                Ok(s) if attempts == 1 || attempts.rem_euclid(10) == 0 => tracing::info!(
                    attempt = attempts, status = s.as_str_name(), "waiting for ipamd to be healthy"
                ),
                Err(e) if attempts == 1 || attempts.rem_euclid(10) == 0 => tracing::info!(
                    attempt = attempts, error = %e, "waiting for ipamd to be healthy"
                ),
                Ok(s) => tracing::debug!(attempt = attempts, status = s.as_str_name(), "ipamd not serving yet"),
                Err(e) => tracing::debug!(attempt = attempts, error = %e, "ipamd not healthy yet"),
            },
        }
    }
    tracing::info!(
        attempts,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ipamd is healthy"
    );

    let written = conflist::render(cfg)
        .map_err(EntrypointError::from)
        .and_then(|text| {
            fsutil::write_file(
                &cfg.host_cni_confdir_path,
                CONFLIST_NAME,
                text.as_bytes(),
                0o644,
            )
            .map_err(EntrypointError::from)
        });
    match written {
        Ok(path) => {
            tracing::info!(path = %path.display(), "wrote CNI conflist; node network is ready")
        }
        Err(e) => {
            // Do not leave ipamd running without a conflist behind us (outside a container
            // nothing else would stop it).
            stop_child(&mut child).await;
            return Err(e);
        }
    }

    // Phase 2: stay with ipamd. It never exits on its own while healthy, so any exit that we
    // did not ask for is a failure, even with status 0: kubelet must restart the container.
    loop {
        tokio::select! {
            st = child.wait() => {
                let st = st?;
                if terminating {
                    tracing::info!(status = %st, "ipamd stopped");
                    return Ok(status_code(st));
                }
                tracing::error!(status = %st, "ipamd exited unexpectedly");
                return Ok(nonzero(status_code(st)));
            }
            _ = sigterm.recv() => { terminating = true; forward(&child, Signal::SIGTERM); }
            _ = sigint.recv() => { terminating = true; forward(&child, Signal::SIGINT); }
        }
    }
}

/// SIGTERM, up to 10 s of grace (the DaemonSet's termination grace period), then SIGKILL.
async fn stop_child(child: &mut Child) {
    forward(child, Signal::SIGTERM);
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        tracing::warn!("ipamd ignored SIGTERM; killing it");
        let _ = child.kill().await;
    }
}

fn nonzero(code: i32) -> i32 {
    if code == 0 { 1 } else { code }
}
