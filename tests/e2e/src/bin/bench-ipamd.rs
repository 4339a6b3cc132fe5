//! ipamd benchmarks on vpcsim with the real binaries (issue 4, "Benchmarks"). Not a test: it
//! measures and prints, it asserts nothing. Root only.
//!
//! 1. Fill a fresh node to max pods with an emulated attach latency: wall time, EC2 calls per
//!    action, and the time upstream's one-ENI-per-5-s-tick growth would need for the same
//!    number of ENIs.
//! 2. ipamd RSS at max pods: right after the fill; after a churn (some pods deleted and
//!    re-added) and the pool settling; after restarts and the steady state.
//! 3. Restart to serving with a full checkpoint (`kill -9`, start, health check SERVING).
//! 4. EC2 calls during a steady state with constant pods (expected: 0 mutating).
//!
//! ipamd runs with its defaults (metrics and introspection on), scraped as Prometheus and an
//! operator would: the memory and the code a node keeps resident include serving them.
//!
//! Usage: see `docs/benchmarks/ipamd.md` (`scripts/bench-ipamd.sh` wraps it).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use awscni_e2e::vpc::{Counter, MUTATING_ACTIONS};
use awscni_e2e::{Bins, Cni, Ipamd, Pod, Vpc, stale, test_prefix};
use clap::Parser;

/// Upstream's pool-manager period: one ENI at most per tick (ipam.md §3).
const UPSTREAM_TICK: Duration = Duration::from_secs(5);
/// How long after the churn the second RSS reading is taken (see where it is used).
const SETTLE: Duration = Duration::from_secs(10);
/// Scrape period of ipamd's metrics during the steady state (a fast Prometheus).
const SCRAPE_EVERY: Duration = Duration::from_secs(5);
/// ipamd's default metrics and introspection endpoints, inside the node's namespace.
const METRICS: &str = "http://127.0.0.1:61678";
const INTROSPECTION: &str = "http://127.0.0.1:61679";
/// IP cooldown during the run (`IP_COOLDOWN_PERIOD`; default 30 s): at max pods a re-added
/// pod waits for a deleted pod's address to cool down, and 5 s keeps the churn short.
const COOLDOWN_SECS: &str = "5";

#[derive(Parser)]
#[command(about = "ipamd benchmarks on vpcsim (root only)")]
struct Args {
    /// Instance type of the node.
    #[arg(long, default_value = "m5.large")]
    instance_type: String,
    /// Emulated attach latency, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    attach_delay_ms: u64,
    /// Pods to fill the node with (default: the max-pods ipamd computes, minus the two
    /// host-network pods that need no address).
    #[arg(long)]
    pods: Option<usize>,
    /// Concurrent ADDs while filling (a kubelet starts several sandboxes at once).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Restarts to time.
    #[arg(long, default_value_t = 5)]
    restarts: usize,
    /// Steady-state observation window, in seconds.
    #[arg(long, default_value_t = 720)]
    steady_secs: u64,
    /// ipamd binary to measure (e.g. a release build); default: the one beside the others.
    #[arg(long)]
    ipamd: Option<std::path::PathBuf>,
    /// Pods deleted and added again after the fill, as a rolling update would (default: a
    /// tenth of the pods).
    #[arg(long)]
    churn: Option<usize>,
    /// Run ipamd without metrics and introspection (`DISABLE_METRICS`/`DISABLE_INTROSPECTION`),
    /// and scrape nothing.
    #[arg(long)]
    no_http: bool,
    /// ipamd reconcile period during the run (`AWS_VPC_CNI_RECONCILE_SECONDS`); 1 s makes the
    /// default window 720 reconcile passes, as many as an hour at the default 5 s.
    #[arg(long, default_value_t = 1)]
    reconcile_secs: u64,
}

/// RSS readings per measurement, [`SAMPLE_GAP`] apart.
const SAMPLES: usize = 5;
const SAMPLE_GAP: Duration = Duration::from_millis(500);

/// A memory measurement: the median of [`SAMPLES`] readings (by `VmRSS`) and the largest.
/// One reading alone varies by ±0.5 MiB with the moment it lands on: a reconcile pass over a
/// full node (every second here) allocates several hundred KiB that it frees at its end.
struct Sampled {
    median: awscni_e2e::ipamd::Memory,
    max_rss: u64,
}

impl std::fmt::Display for Sampled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (median of {SAMPLES} readings over {:.0} s; max {} KiB)",
            self.median,
            (SAMPLE_GAP * (SAMPLES as u32 - 1)).as_secs_f64(),
            self.max_rss
        )
    }
}

fn sample_memory(ipamd: &Ipamd) -> anyhow::Result<Sampled> {
    let mut readings = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        if i > 0 {
            std::thread::sleep(SAMPLE_GAP);
        }
        readings.push(ipamd.memory()?);
    }
    readings.sort_by_key(|m| m.rss);
    let max_rss = readings.last().map_or(0, |m| m.rss);
    Ok(Sampled {
        median: readings[SAMPLES / 2],
        max_rss,
    })
}

/// Adds `pod` as the kubelet does: a failed ADD is torn down (DEL) and tried again after
/// `pause`, until `give_up` has passed. Returns the successful ADD's latency; counts each retry
/// in `retries`.
fn add_retrying(
    cni: &Cni,
    pod: &mut Pod,
    give_up: Duration,
    pause: Duration,
    retries: &AtomicUsize,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + give_up;
    loop {
        let t = Instant::now();
        match cni.add(pod) {
            Ok(_) => return Ok(t.elapsed()),
            Err(e) if Instant::now() < deadline => {
                retries.fetch_add(1, Ordering::SeqCst);
                eprintln!("bench: retrying {}: {e:#}", pod.name);
                let _ = cni.del(pod);
                std::thread::sleep(pause);
            }
            Err(e) => return Err(e.context(format!("{} not added", pod.name))),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    awscni_e2e::require_root()?;
    let mut bins = Bins::locate()?;
    if let Some(p) = &args.ipamd {
        anyhow::ensure!(p.is_file(), "--ipamd {}: no such file", p.display());
        bins.ipamd = p.clone();
    }
    stale::sweep(Some(&bins.vpcsim));
    let prefix = test_prefix('z')?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .tempdir()?;
    let attach = args.attach_delay_ms.to_string();
    let vpc = Vpc::up(
        &bins.vpcsim,
        &prefix,
        &tmp.path().join("vpcsim"),
        1,
        &args.instance_type,
        &["--attach-delay-ms", &attach],
    )?;
    let node = vpc.node(0)?.clone();
    let reconcile = args.reconcile_secs.to_string();

    // ---- 1. fill ----
    vpc.reset_counters()?;
    let t0 = Instant::now();
    let http_off = if args.no_http { "true" } else { "false" };
    let mut ipamd = Ipamd::start(
        &bins.ipamd,
        &vpc,
        &node,
        &tmp.path().join("node1"),
        &[
            ("AWS_VPC_CNI_RECONCILE_SECONDS", &reconcile),
            ("IP_COOLDOWN_PERIOD", COOLDOWN_SECS),
            ("DISABLE_METRICS", http_off),
            ("DISABLE_INTROSPECTION", http_off),
            // As the DaemonSet runs it: a developer's RUST_BACKTRACE=1 makes every error ipamd
            // creates and handles capture (and some format) a backtrace, which runs and keeps
            // resident code a node never runs (measured: ~1 MiB of unwinder and symboliser).
            ("RUST_BACKTRACE", "0"),
            ("RUST_LIB_BACKTRACE", "0"),
        ],
    )?;
    // GETs the endpoints in the node's namespace; returns how many failed.
    let scrape = |paths: &[(&str, &str)]| -> usize {
        if args.no_http {
            return 0;
        }
        let r = awscni_e2e::net::in_netns(&node.namespace, || {
            paths
                .iter()
                .filter(
                    |(base, path)| match awscni_e2e::vpc::http(base, "GET", path, "") {
                        Ok((200, body)) if !body.is_empty() => false,
                        Ok((status, _)) => {
                            eprintln!("bench: GET {base}{path}: status {status}");
                            true
                        }
                        Err(e) => {
                            eprintln!("bench: GET {base}{path}: {e:#}");
                            true
                        }
                    },
                )
                .count()
        });
        r.unwrap_or_else(|e| {
            eprintln!("bench: scrape: {e:#}");
            paths.len()
        })
    };
    let all_endpoints = [
        (METRICS, "/metrics"),
        (INTROSPECTION, "/v1/enis"),
        (INTROSPECTION, "/v1/pods"),
        (INTROSPECTION, "/v1/pool"),
    ];
    let mut scrape_failures = 0;
    let serving = t0.elapsed();
    let cni = Cni::for_node(&bins.aws_cni, &ipamd);
    let pods_n = match args.pods {
        Some(n) => n,
        None => {
            let f = ipamd.dir.join("max-pods");
            let s = std::fs::read_to_string(&f)
                .with_context(|| format!("cannot read {} (pass --pods)", f.display()))?;
            let m: usize = s
                .trim()
                .parse()
                .with_context(|| format!("bad max-pods {s:?}"))?;
            m.saturating_sub(2)
        }
    };
    eprintln!(
        "bench: filling {} ({}) with {pods_n} pods, attach latency {} ms",
        node.name, args.instance_type, args.attach_delay_ms
    );
    let pods: Vec<Mutex<Pod>> = (0..pods_n)
        .map(|i| Pod::new(&prefix, &format!("b{i}"), &format!("bench{i}")).map(Mutex::new))
        .collect::<anyhow::Result<_>>()?;
    let next = AtomicUsize::new(0);
    let retries = AtomicUsize::new(0);
    let add_lat: Mutex<Vec<Duration>> = Mutex::new(Vec::new());
    let t_fill = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..args.concurrency.max(1))
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(p) = pods.get(i) else { return Ok(()) };
                        let mut p = p.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                        let lat = add_retrying(
                            &cni,
                            &mut p,
                            Duration::from_secs(300),
                            Duration::from_millis(200),
                            &retries,
                        )?;
                        if let Ok(mut l) = add_lat.lock() {
                            l.push(lat);
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        }
        Ok(())
    })?;
    let fill = t_fill.elapsed();
    let since_start = t0.elapsed();
    let fill_counters = vpc.counters()?;
    let enis = vpc.ec2()?.enis_of(&node.instance_id)?;
    let new_enis = enis.len().saturating_sub(1);
    let upstream = (UPSTREAM_TICK + Duration::from_millis(args.attach_delay_ms)) * new_enis as u32;
    let mut lat = add_lat
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    lat.sort();
    let median_add = lat.get(lat.len() / 2).copied().unwrap_or_default();

    // ---- 2. RSS, churn ----
    let rss = sample_memory(&ipamd)?;
    scrape_failures += scrape(&all_endpoints);
    let churn_n = args.churn.unwrap_or(pods_n / 10).min(pods_n);
    let t_churn = Instant::now();
    for p in pods.iter().rev().take(churn_n) {
        let p = p.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        cni.del(&p)?;
    }
    scrape_failures += scrape(&all_endpoints);
    let churn_retries = AtomicUsize::new(0);
    for p in pods.iter().rev().take(churn_n) {
        let mut p = p.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        // At max pods the only addresses are the deleted pods' ones, cooling down.
        add_retrying(
            &cni,
            &mut p,
            Duration::from_secs(120),
            Duration::from_millis(500),
            &churn_retries,
        )
        .context("churn")?;
    }
    let churn_retries = churn_retries.into_inner();
    let churn = t_churn.elapsed();
    scrape_failures += scrape(&all_endpoints);
    // Again once the pool has settled: ipamd returns freed heap to the kernel at most every
    // 5 s and idle blocking threads exit after 2 s, so this is what the node keeps.
    std::thread::sleep(SETTLE);
    let rss_settled = sample_memory(&ipamd)?;

    // ---- 3. restart to serving ----
    let mut restarts = Vec::new();
    for _ in 0..args.restarts {
        ipamd.kill9()?;
        let t = Instant::now();
        ipamd.spawn()?;
        ipamd.wait_serving(Duration::from_secs(60))?;
        restarts.push(t.elapsed());
    }
    restarts.sort();
    // ipamd logs its own start-up phases; print them so a slow restart can be explained.
    let log = std::fs::read_to_string(ipamd.logs().0).unwrap_or_default();
    let phases: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ipamd serving") || l.contains("EC2 client ready"))
        .collect();
    for l in phases.iter().rev().take(2 * args.restarts).rev() {
        eprintln!("restart: {l}");
    }
    let ckpt: serde_json::Value = serde_json::from_slice(&std::fs::read(ipamd.checkpoint())?)?;
    let restored = ckpt["allocations"].as_array().map_or(0, Vec::len);

    // ---- 4. steady state ----
    // Let the restarts' own start-up calls finish before counting.
    std::thread::sleep(Duration::from_secs(10));
    vpc.reset_counters()?;
    let t_steady = Instant::now();
    let mut scrapes = 0;
    while t_steady.elapsed() < Duration::from_secs(args.steady_secs) {
        std::thread::sleep(
            SCRAPE_EVERY
                .min(Duration::from_secs(args.steady_secs).saturating_sub(t_steady.elapsed())),
        );
        // Metrics every period, the introspection pages every sixth (an operator's dashboard).
        let n = if scrapes % 6 == 0 {
            all_endpoints.len()
        } else {
            1
        };
        scrape_failures += scrape(&all_endpoints[..n]);
        scrapes += 1;
    }
    let steady = vpc.counters()?;
    let steady_elapsed = t_steady.elapsed();
    let rss_after = sample_memory(&ipamd)?;
    let mutating: u64 = MUTATING_ACTIONS
        .iter()
        .filter_map(|a| steady.get(*a))
        .map(|c| c.calls)
        .sum();

    // ---- report ----
    let fmt_counters = |c: &BTreeMap<String, Counter>| -> String {
        c.iter()
            .filter(|(_, v)| v.calls > 0)
            .map(|(k, v)| format!("| {k} | {} | {} |", v.calls, v.errors))
            .collect::<Vec<_>>()
            .join("\n")
    };
    println!(
        "## ipamd benchmark: {} (attach latency {} ms, ipamd {})\n",
        args.instance_type,
        args.attach_delay_ms,
        bins.ipamd.display()
    );
    println!("| Measure | Value |\n|---|---|");
    println!(
        "| pods filled | {pods_n} (concurrency {}, {} ADD retries) |",
        args.concurrency,
        retries.load(Ordering::SeqCst)
    );
    println!(
        "| ENIs at the end | {} ({} attached during the fill) |",
        enis.len(),
        new_enis
    );
    println!("| ipamd start → serving | {:.3} s |", serving.as_secs_f64());
    println!(
        "| fill wall time (first ADD → last ADD done) | {:.2} s |",
        fill.as_secs_f64()
    );
    println!(
        "| ipamd start → node full | {:.2} s |",
        since_start.as_secs_f64()
    );
    println!(
        "| median ADD latency | {:.0} ms |",
        median_add.as_secs_f64() * 1000.0
    );
    println!(
        "| upstream estimate: {new_enis} ENI(s) × (5 s tick + {:.1} s attach) | {:.1} s (ours {:.1}× faster) |",
        args.attach_delay_ms as f64 / 1000.0,
        upstream.as_secs_f64(),
        if fill.as_secs_f64() > 0.0 {
            upstream.as_secs_f64() / fill.as_secs_f64()
        } else {
            0.0
        }
    );
    println!("| ipamd RSS at {pods_n} pods (right after the fill) | {rss} |");
    println!(
        "| churn: {churn_n} pods deleted and added again (cooldown {COOLDOWN_SECS} s) | {:.1} s, {churn_retries} ADD retries |",
        churn.as_secs_f64()
    );
    println!(
        "| ipamd RSS at {pods_n} pods (same process, {} s after the churn) | {rss_settled} |",
        SETTLE.as_secs()
    );
    println!(
        "| ipamd RSS at {pods_n} pods (restarted from the checkpoint, after the steady state) | {rss_after} |"
    );
    println!(
        "| restart → serving, {restored} allocations in the checkpoint ({} runs) | min {:.1} ms, median {:.1} ms, max {:.1} ms |",
        restarts.len(),
        restarts.first().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        restarts
            .get(restarts.len() / 2)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        restarts.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    );
    if args.no_http {
        println!("| metrics / introspection | off (--no-http) |");
    } else {
        println!(
            "| metrics / introspection | on; {scrapes} scrapes in the steady state, {scrape_failures} failed GETs |"
        );
    }
    println!(
        "| steady state: {:.0} s at reconcile {} s ({} reconcile passes) | {} EC2 calls, {mutating} mutating |",
        steady_elapsed.as_secs_f64(),
        args.reconcile_secs,
        steady_elapsed.as_secs() / args.reconcile_secs.max(1),
        steady.values().map(|c| c.calls).sum::<u64>()
    );
    println!(
        "\nEC2 calls during the fill (from ipamd start):\n\n| Action | Calls | Errors |\n|---|---|---|\n{}",
        fmt_counters(&fill_counters)
    );
    println!(
        "\nEC2 calls during the steady state:\n\n| Action | Calls | Errors |\n|---|---|---|\n{}",
        fmt_counters(&steady)
    );

    // Tear down: pods first (they hold veths in the node), then ipamd, then the VPC.
    drop(pods);
    drop(ipamd);
    drop(vpc);
    Ok(())
}
