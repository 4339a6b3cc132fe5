//! One `ipamd` process inside a node's network namespace; killed on drop.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::{Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::vpc::{NodeDesc, Vpc};

/// How long a fresh ipamd may take to answer its health check (failure bound only).
pub const SERVING_TIMEOUT: Duration = Duration::from_secs(60);

/// An ipamd for one node, with its own socket, checkpoint, logs and max-pods file in `dir`.
#[derive(Debug)]
pub struct Ipamd {
    bin: PathBuf,
    /// The node's network namespace.
    pub node_ns: String,
    /// Working directory (socket, checkpoint, logs).
    pub dir: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Ipamd {
    /// Environment for an ipamd on `node` of `vpc`: endpoint override, static credentials
    /// (the default chain would otherwise look for an instance role), and every file path in
    /// `dir` so nothing touches the host's `/var/run/aws-node`. `extra` (upstream variable
    /// names) is applied last and wins.
    pub fn env_for(vpc: &Vpc, dir: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let p = |f: &str| dir.join(f).display().to_string();
        let mut env: Vec<(String, String)> = vec![
            (
                "AWS_ENDPOINT_URL_EC2".into(),
                vpc.desc.ec2_endpoint_in_node.clone(),
            ),
            ("AWS_ACCESS_KEY_ID".into(), "AKIDE2E".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "e2e-secret".into()),
            ("AWS_VPC_CNI_IPAMD_SOCKET".into(), p("ipamd.sock")),
            ("AWS_VPC_K8S_CNI_BACKING_STORE".into(), p("ipam.json")),
            ("AWS_VPC_K8S_CNI_LOG_FILE".into(), p("ipamd.log")),
            ("AWS_VPC_K8S_PLUGIN_LOG_FILE".into(), p("plugin.log")),
            ("AWS_VPC_CNI_MAX_PODS_FILE".into(), p("max-pods")),
            // DEBUG also turns on the AWS SDK's per-request tracing, which drowns the daemon's own
            // lines in the failure messages.
            ("AWS_VPC_K8S_CNI_LOGLEVEL".into(), "INFO".into()),
            ("DISABLE_METRICS".into(), "true".into()),
            ("DISABLE_INTROSPECTION".into(), "true".into()),
        ];
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        env
    }

    /// Starts ipamd on `node` and waits until it is serving.
    pub fn start(
        bin: &Path,
        vpc: &Vpc,
        node: &NodeDesc,
        dir: &Path,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut me = Self {
            bin: bin.to_path_buf(),
            node_ns: node.namespace.clone(),
            dir: dir.to_path_buf(),
            env: Self::env_for(vpc, dir, extra),
            child: None,
        };
        me.spawn()?;
        me.wait_serving(SERVING_TIMEOUT)?;
        Ok(me)
    }

    /// Unix socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("ipamd.sock")
    }

    /// Checkpoint path.
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("ipam.json")
    }

    /// Log file (ipamd's own) and the captured stdout/stderr.
    pub fn logs(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("ipamd.log"), self.dir.join("ipamd.out"))
    }

    /// Pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process (`ip netns exec <node> ipamd`; `ip` execs, so the child pid is
    /// ipamd's). Output is appended to `ipamd.out`, across restarts.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "ipamd is already running");
        let out_path = self.logs().1;
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .with_context(|| format!("cannot open {}", out_path.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node_ns])
            .arg(&self.bin)
            .env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env(crate::OWNER_ENV, std::process::id().to_string())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the gRPC health check over the Unix socket answers SERVING; fails early
    /// (with the log tail) if the process exits.
    pub fn wait_serving(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    self.child = None;
                    bail!(
                        "ipamd in {} exited ({status}) before serving\n{}\n{}",
                        self.node_ns,
                        crate::tail(&self.logs().1, 40),
                        crate::tail(&self.logs().0, 40)
                    );
                }
            } else {
                bail!("ipamd is not running");
            }
            if health(&self.socket()).unwrap_or(false) {
                return Ok(start.elapsed());
            }
            if Instant::now() >= deadline {
                bail!(
                    "ipamd in {} not serving after {timeout:?}\n{}\n{}",
                    self.node_ns,
                    crate::tail(&self.logs().1, 40),
                    crate::tail(&self.logs().0, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `kill -9`, and reaps the process.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            c.wait().context("cannot reap ipamd")?;
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `grace` for the exit (SIGKILL after that).
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let Some(mut c) = self.child.take() else {
            return Ok(None);
        };
        let pid = Pid::from_raw(i32::try_from(c.id()).context("pid out of range")?);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            if let Some(s) = c.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("ipamd did not exit within {grace:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Memory of the running process from `/proc/<pid>/status`, in KiB.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        let pid = self.pid().context("ipamd is not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in /proc/{pid}/status"))
        };
        Ok(Memory {
            rss: field("VmRSS:")?,
            anon: field("RssAnon:")?,
            file: field("RssFile:")?,
            hwm: field("VmHWM:")?,
            threads: field("Threads:")?,
        })
    }

    /// Log tails for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        format!(
            "{}\n{}",
            crate::tail(&self.logs().1, n),
            crate::tail(&self.logs().0, n)
        )
    }
}

/// Memory figures of a process, in KiB (see proc(5)).
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// `VmRSS`: resident set, anonymous + file-backed + shared.
    pub rss: u64,
    /// `RssAnon`: heap, stacks and other private memory.
    pub anon: u64,
    /// `RssFile`: resident pages of mapped files (the binary, libc).
    pub file: u64,
    /// `VmHWM`: peak resident set.
    pub hwm: u64,
    /// Thread count (not KiB).
    pub threads: u64,
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} MiB ({} KiB: anon {}, file {}; peak {} KiB; {} threads)",
            self.rss as f64 / 1024.0,
            self.rss,
            self.anon,
            self.file,
            self.hwm,
            self.threads
        )
    }
}

impl Drop for Ipamd {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

/// `grpc.health.v1.Health/Check` for service `""` over the Unix socket: true when SERVING.
pub fn health(socket: &Path) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let path = socket.to_path_buf();
    rt.block_on(async move {
        // The URI is a placeholder: the connector dials the socket.
        let ep = Endpoint::from_static("http://ipamd.sock").connect_timeout(Duration::from_secs(1));
        let chan = tokio::time::timeout(
            Duration::from_secs(2),
            ep.connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(s))
                }
            })),
        )
        .await
        .context("connect timeout")??;
        let mut client = HealthClient::new(chan);
        let resp = tokio::time::timeout(
            Duration::from_secs(2),
            client.check(HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await
        .context("health check timeout")??;
        Ok(resp.into_inner().status == ServingStatus::Serving as i32)
    })
}
