//! `ipamd`: the node daemon. Configuration comes from upstream's environment variables (see
//! docs/ipamd.md); there are no command-line flags besides `--version`. `ipamd status` renders
//! the introspection endpoint for an operator (docs/operations.md).

use std::process::ExitCode;

use ipamd::config::Config;

/// Caps glibc's malloc arenas at one. glibc gives every thread that meets contention its own
/// arena (up to 8 × cores), each keeping its freed memory; ipamd's allocations are small and
/// its threads few (2 workers + short-lived blocking threads), so extra arenas only hold
/// fragmented, unreturned memory (RSS) without buying any speed: with two, the second arena
/// held 1.6 MiB after a 735-pod fill (long-lived pod records interleaved with freed request
/// buffers), per smaps.
#[cfg(target_env = "gnu")]
fn limit_malloc_arenas() {
    // SAFETY: `mallopt` only changes allocator tunables; it is called first thing in `main`,
    // before any other thread exists, with a valid parameter/value pair.
    #[allow(unsafe_code)]
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    if ok != 1 {
        // Not fatal: only memory use differs.
        eprintln!("ipamd: mallopt(M_ARENA_MAX) not applied");
    }
}

/// Other C libraries have no arenas to cap.
#[cfg(not(target_env = "gnu"))]
fn limit_malloc_arenas() {}

/// `pow`, defined here so that ipamd does not need libm.so.6 at all.
///
/// It is the only libm symbol ipamd references (tokio's scheduler statistics and the AWS SDK's
/// rate limiter call `f64::powf`), yet mapping libm.so.6 kept ~0.5 MiB of it resident (its code
/// and read-only data in 64 KiB fault-around blocks, plus the dynamic loader's work on it), a
/// twentieth of ipamd's RSS target. With the symbol defined in the executable, the linker
/// resolves `pow` here and drops libm (rustc links with `--as-needed`); `readelf -d` shows no
/// `libm.so.6` in NEEDED. The implementation is the `libm` crate's (a port of musl's, < 1 ULP),
/// plenty for an EWMA and a backoff curve.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
// SAFETY: exporting an unmangled symbol is unsafe because it may clash with another definition;
// `pow` is meant to take libm's place (same C signature and semantics), and nothing else in the
// executable defines it.
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("status") {
        return ipamd::introspect::status_main(&args[2..]);
    }
    if std::env::args().any(|a| a == "--version" || a == "-V") {
        println!("ipamd {}", awscni_proto::VERSION);
        return ExitCode::SUCCESS;
    }
    let (cfg, warnings) = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ipamd: {e}");
            return ExitCode::FAILURE;
        }
    };
    ipamd::logging::init(&cfg);
    tracing::info!(version = awscni_proto::VERSION, "ipamd starting");
    for w in &warnings {
        tracing::warn!("{w}");
    }
    for line in cfg.to_string().lines() {
        tracing::info!(target: "ipamd::config", "{line}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Blocking work is short netlink/iptables/file calls; a few threads suffice, and each
        // idle one costs a stack and, with glibc, possibly an arena.
        .max_blocking_threads(8)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    // The daemon runs as a task on a worker thread, not on the main thread inside `block_on`:
    // start-up polls deep futures (restore, concurrent IMDS reads, the SDK's client set-up), and
    // the stack pages that touches stay resident for the life of the process. On the main
    // thread that was ~290 KiB of RSS; the workers' stacks are that deep anyway.
    let daemon = rt.spawn(ipamd::daemon::run(cfg, awscni_proto::VERSION));
    match rt.block_on(daemon) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "ipamd failed");
            eprintln!("ipamd: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!(error = %e, "ipamd's main task failed");
            eprintln!("ipamd: main task failed: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// The exported `pow` keeps libm's semantics for what its callers pass (exponents of an
    /// EWMA and a backoff), and the C special cases.
    #[test]
    fn pow_matches_libm_semantics() {
        let exact = [
            (2.0, 10.0, 1024.0),
            (2.0, -2.0, 0.25),
            (10.0, 3.0, 1000.0),
            (0.0, 0.0, 1.0),
            (f64::NAN, 0.0, 1.0),
            (1.0, f64::NAN, 1.0),
            (0.0, 3.0, 0.0),
            (f64::INFINITY, -1.0, 0.0),
            (0.5, f64::INFINITY, 0.0),
            (-2.0, 3.0, -8.0),
        ];
        for (x, y, want) in exact {
            assert_eq!(super::pow(x, y), want, "pow({x}, {y})");
        }
        assert!(super::pow(-8.0, 1.0 / 3.0).is_nan());
        assert!(super::pow(f64::NAN, 1.0).is_nan());
        // Non-integer exponents: within a few ULP of exp(y·ln x).
        for (x, y) in [(0.9, 3.5), (1.5, 0.5), (0.8, 100.0), (7.0, -0.25)] {
            let got = super::pow(x, y);
            let want = (y * f64::ln(x)).exp();
            assert!(
                ((got - want) / want).abs() < 1e-14,
                "pow({x}, {y}) = {got}, want ≈ {want}"
            );
        }
    }
}
