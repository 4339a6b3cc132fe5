//! `ipamd`: the node daemon. Configuration comes from upstream's environment variables (see
//! docs/ipamd.md); there are no command-line flags besides `--version`. `ipamd status` renders
//! the introspection endpoint for an operator (docs/operations.md).

use std::process::ExitCode;

use ipamd::config::Config;

fn main() -> ExitCode {
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
