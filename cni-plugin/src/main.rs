//! `aws-cni`: CNI plugin executable. All logic is in the library ([`aws_cni::cmd::run`]).

use aws_cni::log::Level;

fn main() {
    // The default hook prints the panic to stderr; the runtime only shows a plugin's stderr
    // in some error paths, so the panic also goes to the plugin log (a no-op before the log
    // is set up from the netconf).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        aws_cni::log!(Level::Error, "panic: {info}");
    }));
    let get = |k: &str| std::env::var(k).ok();
    // A panic must still produce a CNI error document on stdout.
    let outcome = std::panic::catch_unwind(|| aws_cni::cmd::run(&get, &mut std::io::stdin()))
        .unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            aws_cni::cmd::Outcome::internal_error(&format!("internal error: {what}"))
        });
    let code = outcome.emit(&mut std::io::stdout().lock(), &mut std::io::stderr());
    std::process::exit(code);
}
