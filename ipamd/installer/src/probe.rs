//! `grpc-health-probe`: a drop-in for the probe upstream ships at `/app/grpc-health-probe`.
//!
//! Flags follow Go's `flag` package, which upstream's probe uses: `-name=value`, `--name=value`,
//! `-name value` (not for booleans), `-bool`, `-bool=false`, parsing stops at `--`. The exit
//! codes are the contract kubelet probes and runbooks rely on.

use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;

use crate::health::{self, CheckError, Target};

/// Healthy: the service answered `SERVING`.
pub const EXIT_OK: i32 = 0;
/// Invalid command-line arguments.
pub const EXIT_INVALID_ARGUMENTS: i32 = 1;
/// The connection could not be established.
pub const EXIT_CONNECTION_FAILURE: i32 = 2;
/// The RPC failed or timed out.
pub const EXIT_RPC_FAILURE: i32 = 3;
/// The service answered with a status other than `SERVING`.
pub const EXIT_UNHEALTHY: i32 = 4;

/// Parsed probe arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeArgs {
    /// `-addr`: where the health service listens.
    pub addr: Target,
    /// `-service`: the service name to check (`""` = the whole server).
    pub service: String,
    /// `-connect-timeout` (default 1s).
    pub connect_timeout: Duration,
    /// `-rpc-timeout` (default 1s).
    pub rpc_timeout: Duration,
    /// `-user-agent` (default `grpc_health_probe`).
    pub user_agent: String,
    /// `-v`: verbose output.
    pub verbose: bool,
    /// `-rpc-header name: value` (repeatable): extra request metadata.
    pub headers: Vec<(String, String)>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Run a check.
    Run(ProbeArgs),
    /// `-h` / `-help`: print usage and exit 0 (as Go's flag package does).
    Help,
}

/// Usage text.
pub const USAGE: &str = "Usage of grpc-health-probe:
  -addr string
        (required) tcp host:port or unix:///path/to.sock to connect to
  -connect-timeout duration
        timeout for establishing connection (default 1s)
  -rpc-header value
        additional RPC headers in 'name: value' format. May specify more than one via multiple flags.
  -rpc-timeout duration
        timeout for health check rpc (default 1s)
  -service string
        service name to check (default \"\")
  -user-agent string
        user-agent header value of health check requests (default \"grpc_health_probe\")
  -v    verbose logs
TLS, ALTS, SPIFFE and gzip flags of the upstream probe are recognised and refused: ipamd's
socket is plain-text.";

const BOOL_FLAGS: [&str; 1] = ["v"];
const UNSUPPORTED_FLAGS: [&str; 9] = [
    "tls",
    "tls-no-verify",
    "tls-ca-cert",
    "tls-client-cert",
    "tls-client-key",
    "tls-server-name",
    "alts",
    "spiffe",
    "gzip",
];

/// Parses the arguments (without the program name).
pub fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<Parsed, String> {
    let mut addr: Option<String> = None;
    let mut service = String::new();
    let mut connect_timeout = Duration::from_secs(1);
    let mut rpc_timeout = Duration::from_secs(1);
    let mut user_agent = "grpc_health_probe".to_string();
    let mut verbose = false;
    let mut headers = Vec::new();

    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_ref();
        i += 1;
        if arg == "--" {
            break;
        }
        let Some(body) = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-'))
            .filter(|b| !b.is_empty() && !b.starts_with('-') && !b.starts_with('='))
        else {
            return Err(format!("unexpected argument {arg:?}"));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if name == "h" || name == "help" {
            return Ok(Parsed::Help);
        }
        if UNSUPPORTED_FLAGS.contains(&name) {
            return Err(format!(
                "flag -{name} is not supported: ipamd's socket is plain-text gRPC"
            ));
        }
        if BOOL_FLAGS.contains(&name) {
            let v = match inline {
                None => true,
                Some(v) => crate::config::parse_go_bool(&v)
                    .ok_or_else(|| format!("invalid boolean value {v:?} for -{name}"))?,
            };
            verbose = v;
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => {
                let Some(v) = args.get(i) else {
                    return Err(format!("flag needs an argument: -{name}"));
                };
                i += 1;
                v.as_ref().to_string()
            }
        };
        match name {
            "addr" => addr = Some(value),
            "service" => service = value,
            "user-agent" => user_agent = value,
            "connect-timeout" => connect_timeout = positive_duration(name, &value)?,
            "rpc-timeout" => rpc_timeout = positive_duration(name, &value)?,
            "rpc-header" => {
                let (k, v) = value
                    .split_once(':')
                    .ok_or_else(|| format!("-rpc-header {value:?}: expected 'name: value'"))?;
                let k = k.trim().to_ascii_lowercase();
                if k.is_empty() {
                    return Err(format!("-rpc-header {value:?}: empty header name"));
                }
                headers.push((k, v.trim().to_string()));
            }
            _ => return Err(format!("flag provided but not defined: -{name}")),
        }
    }
    if let Some(extra) = args.get(i) {
        return Err(format!("unexpected argument {:?}", extra.as_ref()));
    }
    let addr = addr.ok_or_else(|| "-addr not specified".to_string())?;
    let addr = Target::parse(&addr).map_err(|e| format!("-addr {e}"))?;
    Ok(Parsed::Run(ProbeArgs {
        addr,
        service,
        connect_timeout,
        rpc_timeout,
        user_agent,
        verbose,
        headers,
    }))
}

fn positive_duration(flag: &str, v: &str) -> Result<Duration, String> {
    let d = parse_go_duration(v).map_err(|e| format!("invalid value {v:?} for -{flag}: {e}"))?;
    if d.is_zero() {
        return Err(format!(
            "-{flag} must be greater than zero (specified: {v})"
        ));
    }
    Ok(d)
}

/// Parses a Go `time.Duration` string (`300ms`, `1.5s`, `2h45m`, `0`). Negative durations are
/// rejected here because no timeout can be negative.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let body = s.strip_prefix('+').unwrap_or(s);
    if body.starts_with('-') {
        return Err("negative duration".into());
    }
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.is_empty() {
        return Err("empty duration".into());
    }
    let mut total_ns: f64 = 0.0;
    let mut rest = body;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {s:?}"))?;
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return Err(format!("invalid duration {s:?}"));
        }
        let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(format!("unknown unit {unit:?} in duration {s:?}")),
        };
        total_ns += n * scale;
        rest = next;
    }
    // Go's Duration is an int64 of nanoseconds.
    if !total_ns.is_finite() || total_ns > i64::MAX as f64 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_nanos(total_ns.round() as u64))
}

fn fmt_duration(d: Duration) -> String {
    format!("{d:?}")
}

/// Runs one check and returns the process exit code, printing upstream-style messages to
/// stderr.
pub async fn run(args: &ProbeArgs) -> i32 {
    if args.verbose {
        eprintln!(
            "parsed options: addr={} service={:?} conn_timeout={} rpc_timeout={}",
            args.addr,
            args.service,
            fmt_duration(args.connect_timeout),
            fmt_duration(args.rpc_timeout)
        );
    }
    let channel =
        match health::connect(&args.addr, args.connect_timeout, Some(&args.user_agent)).await {
            Ok(c) => c,
            Err(CheckError::ConnectTimeout { target, timeout }) => {
                eprintln!(
                    "timeout: failed to connect service {target:?} within {}",
                    fmt_duration(timeout)
                );
                return EXIT_CONNECTION_FAILURE;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_CONNECTION_FAILURE;
            }
        };
    if args.verbose {
        eprintln!("connection established to {}", args.addr);
    }
    match health::check_on(channel, &args.service, args.rpc_timeout, &args.headers).await {
        Ok(ServingStatus::Serving) => {
            eprintln!("status: SERVING");
            EXIT_OK
        }
        Ok(other) => {
            eprintln!(
                "service unhealthy (responded with {:?})",
                other.as_str_name()
            );
            EXIT_UNHEALTHY
        }
        Err(CheckError::RpcTimeout(t)) => {
            eprintln!(
                "timeout: health rpc did not complete within {}",
                fmt_duration(t)
            );
            EXIT_RPC_FAILURE
        }
        Err(CheckError::Rpc(s)) if s.code() == tonic::Code::Unimplemented => {
            eprintln!(
                "error: this server does not implement the grpc health protocol \
                 (grpc.health.v1.Health): {}",
                s.message()
            );
            EXIT_RPC_FAILURE
        }
        Err(CheckError::Rpc(s)) => {
            eprintln!(
                "error: health rpc failed: code={:?} message={:?}",
                s.code(),
                s.message()
            );
            EXIT_RPC_FAILURE
        }
        // check_on never returns connection errors; treat them as RPC failures regardless.
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_RPC_FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn run_args(v: &[&str]) -> ProbeArgs {
        match parse_args(v).unwrap() {
            Parsed::Run(a) => a,
            Parsed::Help => panic!("help"),
        }
    }

    #[test]
    fn upstream_manifest_command_line() {
        let a = run_args(&[
            "-addr=unix:///var/run/aws-node/ipamd.sock",
            "-connect-timeout=5s",
            "-rpc-timeout=5s",
        ]);
        assert_eq!(a.addr, Target::Unix("/var/run/aws-node/ipamd.sock".into()));
        assert_eq!(a.connect_timeout, Duration::from_secs(5));
        assert_eq!(a.rpc_timeout, Duration::from_secs(5));
        assert_eq!(a.service, "");
        assert!(!a.verbose);
    }

    #[test]
    fn go_flag_spellings() {
        let a = run_args(&[
            "--addr",
            "unix:/x.sock",
            "-service",
            "grpc.health.v1.aws-node",
            "-v",
            "--rpc-timeout",
            "1.5s",
            "-rpc-header",
            "X-Foo: bar",
        ]);
        assert_eq!(a.addr, Target::Unix("/x.sock".into()));
        assert_eq!(a.service, "grpc.health.v1.aws-node");
        assert!(a.verbose);
        assert_eq!(a.rpc_timeout, Duration::from_millis(1500));
        assert_eq!(a.connect_timeout, Duration::from_secs(1));
        assert_eq!(a.headers, vec![("x-foo".to_string(), "bar".to_string())]);
        assert!(!run_args(&["-addr=:1", "-v=false"]).verbose);
        assert_eq!(parse_args(&["-h"]).unwrap(), Parsed::Help);
        assert_eq!(parse_args(&["--help"]).unwrap(), Parsed::Help);
    }

    #[test]
    fn bad_arguments() {
        for bad in [
            &[][..],
            &["-addr"][..],
            &["-addr="][..],
            &["-addr=unix://relative"][..],
            &["-addr=:1", "-connect-timeout=0s"][..],
            &["-addr=:1", "-rpc-timeout=-1s"][..],
            &["-addr=:1", "-rpc-timeout=5"][..],
            &["-addr=:1", "-bogus=1"][..],
            &["-addr=:1", "-tls"][..],
            &["-addr=:1", "extra"][..],
            &["-addr=:1", "-v=maybe"][..],
            &["-addr=:1", "-rpc-header=novalue"][..],
        ] {
            assert!(parse_args(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn go_durations() {
        let ok = [
            ("5s", Duration::from_secs(5)),
            ("100ms", Duration::from_millis(100)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("1.5s", Duration::from_millis(1500)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("0", Duration::ZERO),
            ("+3s", Duration::from_secs(3)),
        ];
        for (s, d) in ok {
            assert_eq!(parse_go_duration(s).unwrap(), d, "{s}");
        }
        for bad in ["", "s", "5", "5x", "1..2s", "-1s", "5 s", "."] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
