//! Helpers shared by the installer's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const ENTRYPOINT: &str = env!("CARGO_BIN_EXE_aws-vpc-cni");
pub const PROBE: &str = env!("CARGO_BIN_EXE_grpc-health-probe");
pub const FAKE_IPAMD: &str = env!("CARGO_BIN_EXE_fake-ipamd");

/// A child process killed (SIGKILL, by its own pid) and reaped when the test ends, also on
/// panic.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Waits for exit up to `limit`; None if it is still running then.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(st) = self.0.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).unwrap()
    }
}

/// Polls `cond` every 20 ms for up to `limit`.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A scratch layout: host CNI bin and conf dirs, a plugin source, a socket and a report file.
pub struct Layout {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    pub conf: PathBuf,
    pub plugin_src: PathBuf,
    pub socket: PathBuf,
    pub report: PathBuf,
}

impl Layout {
    pub fn new() -> Self {
        // Under /tmp: a Unix socket path must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("awscni-inst")
            .tempdir_in("/tmp")
            .unwrap();
        let bin = dir.path().join("opt-cni-bin");
        let conf = dir.path().join("etc-cni-net.d");
        let plugin_src = dir.path().join("aws-cni-src");
        std::fs::write(&plugin_src, b"\x7fELF pretend plugin").unwrap();
        Self {
            socket: dir.path().join("ipamd.sock"),
            report: dir.path().join("report"),
            bin,
            conf,
            plugin_src,
            dir,
        }
    }

    /// The entrypoint command with this layout's environment and the fake ipamd.
    pub fn entrypoint(&self) -> Command {
        let mut c = Command::new(ENTRYPOINT);
        c.args(["run", "--health-poll-ms", "50"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOST_CNI_BIN_PATH", &self.bin)
            .env("HOST_CNI_CONFDIR_PATH", &self.conf)
            .env("AWS_VPC_CNI_PLUGIN_SRC", &self.plugin_src)
            .env("AWS_VPC_CNI_IPAMD_BIN", FAKE_IPAMD)
            .env("AWS_VPC_CNI_IPAMD_SOCKET", &self.socket)
            .env("FAKE_IPAMD_REPORT", &self.report);
        c
    }

    /// Starts the entrypoint with stdout/stderr going to `entrypoint.log` in the scratch dir
    /// (read back with [`Layout::log`] in assertion messages).
    pub fn spawn(&self, cmd: &mut Command) -> Proc {
        let log = std::fs::File::create(self.dir.path().join("entrypoint.log")).unwrap();
        let log2 = log.try_clone().unwrap();
        Proc(cmd.stdout(log).stderr(log2).spawn().unwrap())
    }

    /// What the entrypoint (and the fake ipamd) printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("entrypoint.log")).unwrap_or_default()
    }

    pub fn conflist(&self) -> PathBuf {
        self.conf.join("10-aws.conflist")
    }

    pub fn report_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.report)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Names of the entries of `dir`, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
