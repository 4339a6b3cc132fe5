//! ipamd benchmarks on vpcsim with the real binaries (issue 4, "Benchmarks"). Not a test: it
//! measures and prints, it asserts nothing. Root only.
//!
//! 1. Fill a fresh node to max pods with an emulated attach latency: wall time, EC2 calls per
//!    action, and the time upstream's one-ENI-per-5-s-tick growth would need for the same
//!    number of ENIs.
//! 2. ipamd RSS at max pods.
//! 3. Restart to serving with a full checkpoint (`kill -9`, start, health check SERVING).
//! 4. EC2 calls during a steady state with constant pods (expected: 0 mutating).
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
    /// ipamd reconcile period during the run (`AWS_VPC_CNI_RECONCILE_SECONDS`); 1 s makes the
    /// default window 720 reconcile passes, as many as an hour at the default 5 s.
    #[arg(long, default_value_t = 1)]
    reconcile_secs: u64,
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
    let mut ipamd = Ipamd::start(
        &bins.ipamd,
        &vpc,
        &node,
        &tmp.path().join("node1"),
        &[("AWS_VPC_CNI_RECONCILE_SECONDS", &reconcile)],
    )?;
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
                        let deadline = Instant::now() + Duration::from_secs(300);
                        loop {
                            let t = Instant::now();
                            match cni.add(&mut p) {
                                Ok(_) => {
                                    if let Ok(mut l) = add_lat.lock() {
                                        l.push(t.elapsed());
                                    }
                                    break;
                                }
                                Err(e) if Instant::now() < deadline => {
                                    // As the kubelet: tear the sandbox down, try again.
                                    retries.fetch_add(1, Ordering::SeqCst);
                                    eprintln!("bench: retrying {}: {e:#}", p.name);
                                    let _ = cni.del(&p);
                                    std::thread::sleep(Duration::from_millis(200));
                                }
                                Err(e) => return Err(e),
                            }
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

    // ---- 2. RSS ----
    let rss = ipamd.memory()?;

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
    std::thread::sleep(Duration::from_secs(args.steady_secs));
    let steady = vpc.counters()?;
    let steady_elapsed = t_steady.elapsed();
    let rss_after = ipamd.memory()?;
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
    println!("| ipamd RSS at {pods_n} pods (after the fill) | {rss} |");
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
