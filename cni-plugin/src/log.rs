//! A tiny line logger for the one-shot plugin. Never writes to stdout (stdout carries the CNI
//! result). A full `tracing-subscriber` stack would add size and start-up cost for a process
//! that lives for milliseconds and writes a handful of lines.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Upstream's default plugin log file (`AWS_VPC_K8S_PLUGIN_LOG_FILE` default).
pub const DEFAULT_LOG_FILE: &str = "/var/log/aws-routed-eni/plugin.log";

/// Log levels, most verbose first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warn.
    Warn,
    /// Error.
    Error,
}

impl Level {
    /// Parses upstream's level names, case-insensitively; unknown → debug (as upstream).
    /// `fatal` maps to error.
    pub fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "info" => Self::Info,
            "warn" | "warning" => Self::Warn,
            "error" | "fatal" => Self::Error,
            _ => Self::Debug,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

enum Sink {
    Stderr,
    File(std::fs::File),
}

struct Logger {
    level: Level,
    sink: Mutex<Sink>,
    ctx: String,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Installs the logger. `file`: `None` → [`DEFAULT_LOG_FILE`]; `""` or `"stderr"` → stderr.
/// If the file cannot be opened, logs go to stderr (logging must never fail a CNI verb).
/// `ctx` is prefixed to every line (verb and container ID).
pub fn init(file: Option<&str>, level: Option<&str>, ctx: String) {
    let level = level.map(Level::parse).unwrap_or(Level::Debug);
    let path = file.unwrap_or(DEFAULT_LOG_FILE);
    let sink = if path.is_empty() || path == "stderr" {
        Sink::Stderr
    } else {
        if let Some(dir) = std::path::Path::new(path).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Sink::File(f),
            Err(_) => Sink::Stderr,
        }
    };
    let _ = LOGGER.set(Logger {
        level,
        sink: Mutex::new(sink),
        ctx,
    });
}

/// Writes one line at `level` (no-op before [`init`] or below the configured level).
pub fn write(level: Level, msg: std::fmt::Arguments<'_>) {
    let Some(l) = LOGGER.get() else { return };
    if level < l.level {
        return;
    }
    let line = format!("{} {} {} {}\n", timestamp(), level.as_str(), l.ctx, msg);
    if let Ok(mut s) = l.sink.lock() {
        let _ = match &mut *s {
            Sink::Stderr => std::io::stderr().write_all(line.as_bytes()),
            // One write(2) per line on an O_APPEND file keeps concurrent plugin processes'
            // lines from interleaving.
            Sink::File(f) => f.write_all(line.as_bytes()),
        };
    }
}

/// RFC 3339 UTC timestamp with milliseconds, without a date crate.
fn timestamp() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// `log!(Level::Info, "...", args)`.
#[macro_export]
macro_rules! log {
    ($lvl:expr, $($arg:tt)*) => {
        $crate::log::write($lvl, format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_timestamp() {
        assert_eq!(Level::parse("DEBUG"), Level::Debug);
        assert_eq!(Level::parse("Fatal"), Level::Error);
        assert_eq!(Level::parse("nonsense"), Level::Debug);
        let t = timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20"), "{t}");
    }
}
