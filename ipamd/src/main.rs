//! `ipamd`: the node daemon. Configuration comes from upstream's environment variables (see
//! docs/ipamd.md); there are no command-line flags besides `--version`. `ipamd status` renders
//! the introspection endpoint for an operator (docs/operations.md).

use std::process::ExitCode;

use ipamd::config::Config;

/// Caps glibc's malloc arenas at two. glibc gives every thread that meets contention its own
/// arena (up to 8 × cores), each keeping its freed memory; ipamd's allocations are small and
/// its threads few (2 workers + short-lived blocking threads), so extra arenas only hold
/// fragmented, unreturned memory (RSS) without buying any speed.
#[cfg(target_env = "gnu")]
fn limit_malloc_arenas() {
    // SAFETY: `mallopt` only changes allocator tunables; it is called first thing in `main`,
    // before any other thread exists, with a valid parameter/value pair.
    #[allow(unsafe_code)]
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    if ok != 1 {
        // Not fatal: only memory use differs.
        eprintln!("ipamd: mallopt(M_ARENA_MAX) not applied");
    }
}

/// Other C libraries have no arenas to cap.
#[cfg(not(target_env = "gnu"))]
fn limit_malloc_arenas() {}

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
    match rt.block_on(ipamd::daemon::run(cfg, awscni_proto::VERSION)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "ipamd failed");
            eprintln!("ipamd: {e}");
            ExitCode::FAILURE
        }
    }
}
