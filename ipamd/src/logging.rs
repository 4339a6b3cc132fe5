//! Daemon logging (operations.md §4): `AWS_VPC_K8S_CNI_LOG_FILE` (`stdout`, `stderr` or a path)
//! at `AWS_VPC_K8S_CNI_LOGLEVEL`, `RUST_LOG` overriding the level for debugging.
//!
//! Files get upstream's JSON lines — `{"level":"info","ts":"…","caller":"file.rs:123",
//! "msg":"…", …fields}` — so log shippers and support scripts parsing aws-node's `ipamd.log` keep
//! working, and are rotated by size (100 MB, 5 backups, as upstream; numbered `.1`…`.5` rather
//! than lumberjack's timestamped, gzip-compressed names). stdout/stderr default to readable text;
//! ours, `AWS_VPC_CNI_LOG_FORMAT=json|text`, overrides the format for any destination.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::Config;

/// Rotate the log file once it would exceed this size (upstream: lumberjack `MaxSize` 100 MB).
pub const MAX_LOG_BYTES: u64 = 100 * 1024 * 1024;
/// Rotated files kept (upstream: `MaxBackups` 5).
pub const LOG_BACKUPS: u32 = 5;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Upstream's JSON lines.
    Json,
    /// tracing's human-readable text.
    Text,
}

/// The format for a destination: `AWS_VPC_CNI_LOG_FORMAT` when valid, else JSON for files and
/// text for stdout/stderr.
pub fn format_for(log_file: &str, env_format: Option<&str>) -> Format {
    match env_format.map(str::to_ascii_lowercase).as_deref() {
        Some("json") => Format::Json,
        Some("text") => Format::Text,
        _ if log_file == "stdout" || log_file == "stderr" => Format::Text,
        _ => Format::Json,
    }
}

#[derive(Default)]
struct Fields {
    msg: Option<String>,
    rest: Map<String, Value>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, v: Value) {
        match field.name() {
            "message" => {
                self.msg = Some(match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            // Never let a field shadow the four fixed keys.
            n @ ("level" | "ts" | "caller" | "msg") => {
                self.rest.insert(format!("field.{n}"), v);
            }
            n => {
                self.rest.insert(n.to_owned(), v);
            }
        }
    }
}

/// Formats events as upstream's zap JSON lines: `level`, `ts` (ISO 8601, UTC, milliseconds),
/// `caller`, `msg`, then the event's fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamJson;

/// Upstream's level names (zap lower-case).
fn level_name(l: &tracing::Level) -> &'static str {
    match *l {
        tracing::Level::ERROR => "error",
        tracing::Level::WARN => "warn",
        tracing::Level::INFO => "info",
        tracing::Level::DEBUG => "debug",
        tracing::Level::TRACE => "debug",
    }
}

/// `2006-01-02T15:04:05.000Z` like zap's ISO 8601 encoder.
pub fn iso8601_millis(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// zap's short caller: the last directory and the file name (`ipamd/ipamd.go` upstream;
/// `ipamd/daemon.rs` here, Cargo's `src` directory skipped).
pub fn short_caller(file: &str) -> String {
    let mut parts: Vec<&str> = file
        .split(['/', '\\'])
        .filter(|p| !p.is_empty() && *p != "src")
        .collect();
    let name = parts.pop().unwrap_or(file);
    match parts.pop() {
        Some(dir) => format!("{dir}/{name}"),
        None => name.to_owned(),
    }
}

/// One JSON line for an event (without the newline).
fn json_line(event: &Event<'_>, now: time::OffsetDateTime) -> String {
    let meta = event.metadata();
    let mut f = Fields::default();
    event.record(&mut f);
    let caller = match (meta.file(), meta.line()) {
        (Some(file), Some(line)) => format!("{}:{line}", short_caller(file)),
        _ => meta.target().to_owned(),
    };
    let mut obj = Map::new();
    obj.insert("level".into(), Value::from(level_name(meta.level())));
    obj.insert("ts".into(), Value::from(iso8601_millis(now)));
    obj.insert("caller".into(), Value::from(caller));
    obj.insert("msg".into(), Value::from(f.msg.unwrap_or_default()));
    obj.extend(f.rest);
    Value::Object(obj).to_string()
}

impl<S, N> FormatEvent<S, N> for UpstreamJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writeln!(
            writer,
            "{}",
            json_line(event, time::OffsetDateTime::now_utc())
        )
    }
}

struct RotState {
    file: File,
    size: u64,
    /// The last byte written ended a line: only then may the file rotate, so that a record
    /// written in several pieces never straddles two files.
    at_line_start: bool,
}

/// An append-only log file rotated by size: `path` → `path.1` → … → `path.<backups>`.
#[derive(Clone)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    backups: u32,
    state: Arc<Mutex<RotState>>,
}

impl RotatingFile {
    /// Opens (creating parent directories) `path` for appending.
    pub fn open(path: &Path, max_bytes: u64, backups: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            max_bytes,
            backups,
            state: Arc::new(Mutex::new(RotState {
                file,
                size,
                at_line_start: true,
            })),
        })
    }

    fn backup(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&self, st: &mut RotState) -> io::Result<()> {
        st.file.flush()?;
        if self.backups == 0 {
            st.file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&self.path)?;
        } else {
            for n in (1..self.backups).rev() {
                let from = self.backup(n);
                if from.exists() {
                    std::fs::rename(&from, self.backup(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.backup(1))?;
            st.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        }
        st.size = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.at_line_start && st.size > 0 && st.size + buf.len() as u64 > self.max_bytes {
            // A failed rotation must not lose the line: keep writing to the current file.
            if let Err(e) = self.rotate(&mut st) {
                let _ = writeln!(io::stderr(), "ipamd: cannot rotate log file: {e}");
            }
        }
        let n = st.file.write(buf)?;
        st.size += n as u64;
        if n > 0 {
            st.at_line_start = buf[n - 1] == b'\n';
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .file
            .flush()
    }
}

/// Installs the global subscriber for the daemon. Falls back to stderr (with a warning) when
/// the log file cannot be opened, so a bad path never hides the daemon's own errors.
pub fn init(cfg: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cfg.log_level.tracing_filter()));
    let env_format = std::env::var("AWS_VPC_CNI_LOG_FORMAT").ok();
    let format = format_for(&cfg.log_file, env_format.as_deref());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let mut failed = None;
    let json = format == Format::Json;
    let res = match cfg.log_file.as_str() {
        "stdout" if json => builder
            .event_format(UpstreamJson)
            .with_writer(io::stdout)
            .try_init(),
        "stdout" => builder.with_writer(io::stdout).try_init(),
        "stderr" if json => builder
            .event_format(UpstreamJson)
            .with_writer(io::stderr)
            .try_init(),
        "stderr" => builder.with_writer(io::stderr).try_init(),
        path => match RotatingFile::open(Path::new(path), MAX_LOG_BYTES, LOG_BACKUPS) {
            Ok(f) if json => builder
                .event_format(UpstreamJson)
                .with_writer(move || f.clone())
                .try_init(),
            Ok(f) => builder
                .with_ansi(false)
                .with_writer(move || f.clone())
                .try_init(),
            Err(e) => {
                failed = Some((path.to_owned(), e));
                builder.with_writer(io::stderr).try_init()
            }
        },
    };
    if let Err(e) = res {
        eprintln!("ipamd: cannot install the logger: {e}");
    }
    if let Some((path, e)) = failed {
        tracing::warn!(path, error = %e, "cannot open log file; logging to stderr");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn format_choice() {
        assert_eq!(format_for("stdout", None), Format::Text);
        assert_eq!(format_for("stderr", None), Format::Text);
        assert_eq!(format_for("/var/log/x.log", None), Format::Json);
        assert_eq!(format_for("stdout", Some("JSON")), Format::Json);
        assert_eq!(format_for("/x", Some("text")), Format::Text);
        assert_eq!(format_for("/x", Some("yaml")), Format::Json);
    }

    #[test]
    fn short_callers() {
        assert_eq!(short_caller("ipamd/src/daemon.rs"), "ipamd/daemon.rs");
        assert_eq!(
            short_caller("/r/.cargo/registry/src/x/hyper-1.12.0/src/proto/h1/conn.rs"),
            "h1/conn.rs"
        );
        assert_eq!(short_caller("main.rs"), "main.rs");
    }

    #[test]
    fn iso8601() {
        let t = time::macros::datetime!(2024-03-05 07:08:09.123456 UTC);
        assert_eq!(iso8601_millis(t), "2024-03-05T07:08:09.123Z");
    }

    /// Events written through the real subscriber stack into a real file come out as upstream's
    /// JSON lines with the event's fields.
    #[test]
    fn json_lines_to_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ipamd.log");
        let f = RotatingFile::open(&path, MAX_LOG_BYTES, 2).unwrap();
        let sub = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(UpstreamJson)
                .with_writer(move || f.clone()),
        );
        tracing::subscriber::with_default(sub, || {
            tracing::info!(eni = "eni-1", count = 3, "assigned addresses");
            tracing::warn!(msg = "shadow", "second");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        let a = &lines[0];
        assert_eq!(a["level"], "info");
        assert_eq!(a["msg"], "assigned addresses");
        assert_eq!(a["eni"], "eni-1");
        assert_eq!(a["count"], 3);
        assert!(
            a["caller"]
                .as_str()
                .unwrap()
                .starts_with("ipamd/logging.rs:"),
            "{a}"
        );
        let ts = a["ts"].as_str().unwrap();
        assert_eq!(ts.len(), "2024-03-05T07:08:09.123Z".len());
        assert!(ts.ends_with('Z'));
        assert_eq!(lines[1]["level"], "warn");
        assert_eq!(lines[1]["msg"], "second");
        assert_eq!(lines[1]["field.msg"], "shadow");
    }

    #[test]
    fn rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipamd.log");
        let mut f = RotatingFile::open(&path, 130, 2).unwrap();
        for i in 0..7 {
            // 60-byte records, written whole as the fmt layer does: two fit in 130 bytes.
            f.write_all(format!("{i:059}\n").as_bytes()).unwrap();
        }
        f.flush().unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&path), format!("{:059}\n", 6));
        assert_eq!(read(&f.backup(1)), format!("{:059}\n{:059}\n", 4, 5));
        assert_eq!(read(&f.backup(2)), format!("{:059}\n{:059}\n", 2, 3));
        // Only `backups` old files are kept.
        assert!(!f.backup(3).exists());

        // A record written in pieces never straddles two files.
        let path = dir.path().join("pieces.log");
        let mut f = RotatingFile::open(&path, 130, 3).unwrap();
        for i in 0..20 {
            writeln!(f, "{i:059}").unwrap();
        }
        let mut lines = 0;
        for p in [path.clone(), f.backup(1), f.backup(2), f.backup(3)] {
            let t = read(&p);
            assert!(t.ends_with('\n'), "{t:?}");
            assert!(t.lines().all(|l| l.len() == 59), "{t:?}");
            lines += t.lines().count();
        }
        assert!(lines < 20, "old files were not dropped");
    }
}
