//! `ipamd`: the node daemon. Configuration comes from upstream's environment variables (see
//! docs/ipamd.md); there are no command-line flags besides `--version`.

use std::fs::OpenOptions;
use std::process::ExitCode;
use std::sync::Mutex;

use ipamd::config::Config;
use tracing_subscriber::EnvFilter;

fn init_logging(cfg: &Config) {
    // RUST_LOG overrides AWS_VPC_K8S_CNI_LOGLEVEL for debugging.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cfg.log_level.tracing_filter()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match cfg.log_file.as_str() {
        "stdout" => builder.with_writer(std::io::stdout).init(),
        "stderr" => builder.with_writer(std::io::stderr).init(),
        path => {
            let file = std::path::Path::new(path)
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| OpenOptions::new().create(true).append(true).open(path));
            match file {
                // JSON lines like upstream's log file.
                Ok(f) => builder.json().with_writer(Mutex::new(f)).init(),
                Err(e) => {
                    builder.with_writer(std::io::stderr).init();
                    tracing::warn!(path, error = %e, "cannot open log file; logging to stderr");
                }
            }
        }
    }
}

fn main() -> ExitCode {
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
    init_logging(&cfg);
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
