//! `aws-cni`: CNI plugin executable. All logic is in the library ([`aws_cni::cmd::run`]).

use std::io::Write;

fn main() {
    let get = |k: &str| std::env::var(k).ok();
    // A panic must still produce a CNI error document on stdout (the default hook's message
    // goes to stderr, which is fine: stderr is for logs).
    let outcome = std::panic::catch_unwind(|| aws_cni::cmd::run(&get, &mut std::io::stdin()))
        .unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            let e = aws_cni::error::PluginError::Internal(format!("internal error: {what}"));
            aws_cni::cmd::Outcome {
                stdout: Some(
                    aws_cni::types::error_json(
                        aws_cni::types::CURRENT_VERSION,
                        e.cni_code(),
                        e.summary(),
                        Some(&e.to_string()),
                    )
                    .to_string(),
                ),
                stderr: None,
                exit_code: 1,
            }
        });
    if let Some(s) = &outcome.stderr {
        let _ = std::io::stderr().write_all(s.as_bytes());
    }
    if let Some(s) = &outcome.stdout {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(s.as_bytes());
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
    std::process::exit(outcome.exit_code);
}
