//! Reading upstream aws-node environment variables, with every problem collected.
//!
//! ipamd and the `aws-vpc-cni` entrypoint read many of the same variables (`ENABLE_IPv6`,
//! `AWS_VPC_ENI_MTU`, `IP_COOLDOWN_PERIOD`, ...) from the same DaemonSet manifest, so they read
//! them through this one [`Reader`]: a variable cannot be valid for one binary and invalid for the
//! other because two copies of a parser drifted apart. The crate has no dependencies because the
//! entrypoint links it and must not pull the AWS SDK or an async runtime.
//!
//! Rules shared by every getter:
//!
//! * **Empty means unset.** Upstream reads with `os.Getenv(x) != ""`, so a manifest entry with
//!   `value: ""` behaves as if absent.
//! * **Wrong type → error.** A value that does not parse (not a Go boolean, not a base-10 integer,
//!   out of the range upstream's entrypoint enforces, not an absolute path, not one of an
//!   enumeration) is recorded as an error naming the variable and the value; the getter returns
//!   the default so that reading goes on and the operator sees every bad variable in one pass.
//! * **Upstream fallback → warning.** Where upstream silently clamps or ignores a well-typed value
//!   (negative warm targets, unknown log level), the getter returns upstream's fallback and
//!   records a warning saying what is used instead.
//!
//! Values are looked up through the [`Env`] trait, so tests inject a map or a closure instead of
//! mutating the process environment (which is shared by every test thread).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::{Bound, RangeBounds};
use std::path::PathBuf;
use std::time::Duration;

mod snat;

pub use snat::RandomizeSnat;

/// A source of environment variables.
pub trait Env {
    /// The value of `name`, or `None` when it is not set.
    fn var(&self, name: &str) -> Option<String>;
}

impl<F> Env for F
where
    F: Fn(&str) -> Option<String> + ?Sized,
{
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// One bad (error) or adjusted (warning) variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Variable name, upstream spelling (e.g. `POD_MTU`).
    pub var: &'static str,
    /// The value as found (for list variables: the offending item; empty for cross-variable
    /// problems that have no single value).
    pub value: String,
    /// What is wrong and what is accepted, or (warnings) what is used instead.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug-quoted so that empty values, spaces and control characters are visible.
        write!(f, "{}={:?}: {}", self.var, self.value, self.reason)
    }
}

impl std::error::Error for Problem {}

/// Displays problems separated by `; `, for one-line start-up errors.
#[derive(Debug, Clone, Copy)]
pub struct Joined<'a>(pub &'a [Problem]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The unit of a duration variable (upstream encodes it in the name: `..._MS`, `..._SECONDS`, or
/// documents it, e.g. `IP_COOLDOWN_PERIOD` in seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Whole seconds.
    Seconds,
    /// Whole milliseconds.
    Milliseconds,
}

/// How an enumeration variable's value is compared with the accepted spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// Exact spelling, as upstream compares most enumerations (`prng`, not `Prng`).
    Exact,
    /// ASCII case ignored (upstream lower-cases log levels before comparing).
    Ignore,
}

/// What an unknown value of an enumeration variable is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnknown {
    /// Start-up error (upstream also fails, or a silent default would change behaviour).
    Error,
    /// Warning; the default is used, as upstream does.
    Warn,
}

/// Upstream's boolean parsing (Go's `strconv.ParseBool`): exactly these twelve spellings.
pub fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// "must be between 1 and 3600", "must be at least 0", ... for an integer range.
fn describe_range<T: fmt::Display>(range: &impl RangeBounds<T>) -> String {
    match (range.start_bound(), range.end_bound()) {
        (Bound::Included(lo), Bound::Included(hi)) => format!("must be between {lo} and {hi}"),
        (lo, hi) => {
            let mut parts = Vec::new();
            match lo {
                Bound::Included(v) => parts.push(format!("at least {v}")),
                Bound::Excluded(v) => parts.push(format!("above {v}")),
                Bound::Unbounded => {}
            }
            match hi {
                Bound::Included(v) => parts.push(format!("at most {v}")),
                Bound::Excluded(v) => parts.push(format!("below {v}")),
                Bound::Unbounded => {}
            }
            format!("must be {}", parts.join(" and "))
        }
    }
}

/// Reads variables from an [`Env`] and collects errors and warnings.
///
/// Getters never fail: on a bad value they record a [`Problem`] and return the default, and
/// [`Reader::finish`] decides at the end.
pub struct Reader<'a> {
    env: &'a dyn Env,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl<'a> Reader<'a> {
    /// A reader over `env` with no problems recorded yet.
    pub fn new(env: &'a dyn Env) -> Self {
        Self {
            env,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The value of `var`, with set-but-empty treated as unset (upstream behaviour).
    pub fn raw(&self, var: &str) -> Option<String> {
        self.env.var(var).filter(|v| !v.is_empty())
    }

    /// Records an error for `var`.
    pub fn error(&mut self, var: &'static str, value: &str, reason: impl Into<String>) {
        self.errors.push(Problem {
            var,
            value: value.to_owned(),
            reason: reason.into(),
        });
    }

    /// Records a warning for `var` (a value accepted with upstream's fallback).
    pub fn warn(&mut self, var: &'static str, value: &str, reason: impl Into<String>) {
        self.warnings.push(Problem {
            var,
            value: value.to_owned(),
            reason: reason.into(),
        });
    }

    /// The warnings when no error was recorded, else every error, both in reading order.
    pub fn finish(self) -> Result<Vec<Problem>, Vec<Problem>> {
        if self.errors.is_empty() {
            Ok(self.warnings)
        } else {
            Err(self.errors)
        }
    }

    /// A free-form string, `default` when unset.
    pub fn string(&self, var: &str, default: &str) -> String {
        self.raw(var).unwrap_or_else(|| default.to_owned())
    }

    /// A Go boolean ([`parse_go_bool`]); anything else is an error. Upstream logs and uses the
    /// default instead: we refuse, because `ENABLE_PREFIX_DELEGATION=yes` silently meaning
    /// `false` changes pool sizing without a trace.
    pub fn bool(&mut self, var: &'static str, default: bool) -> bool {
        let Some(v) = self.raw(var) else {
            return default;
        };
        match parse_go_bool(&v) {
            Some(b) => b,
            None => {
                self.error(
                    var,
                    &v,
                    "not a boolean (accepted: 1 t T TRUE true True 0 f F FALSE false False)",
                );
                default
            }
        }
    }

    /// A base-10 `i64` (Go `strconv.Atoi`: optional sign, no surrounding spaces), returned with
    /// its text for messages; `None` when unset or (error recorded) unparsable.
    pub fn int(&mut self, var: &'static str) -> Option<(String, i64)> {
        let v = self.raw(var)?;
        match v.parse::<i64>() {
            Ok(n) => Some((v, n)),
            Err(_) => {
                self.error(var, &v, "not a base-10 integer");
                None
            }
        }
    }

    /// An integer of type `T` inside `range`; unparsable or outside is an error and gives
    /// `default`.
    pub fn int_in<T>(&mut self, var: &'static str, range: impl RangeBounds<T>, default: T) -> T
    where
        T: TryFrom<i64> + PartialOrd + fmt::Display,
    {
        self.int_within(var, &range, "").unwrap_or(default)
    }

    /// A duration given as a whole number of `unit`s inside `range` (in that unit); unparsable
    /// or outside is an error and gives `default`.
    pub fn duration_in(
        &mut self,
        var: &'static str,
        unit: Unit,
        range: impl RangeBounds<u64>,
        default: Duration,
    ) -> Duration {
        let (name, from): (&str, fn(u64) -> Duration) = match unit {
            Unit::Seconds => (" seconds", Duration::from_secs),
            Unit::Milliseconds => (" milliseconds", Duration::from_millis),
        };
        self.int_within(var, &range, name).map_or(default, from)
    }

    fn int_within<T>(
        &mut self,
        var: &'static str,
        range: &impl RangeBounds<T>,
        unit: &str,
    ) -> Option<T>
    where
        T: TryFrom<i64> + PartialOrd + fmt::Display,
    {
        let (v, n) = self.int(var)?;
        match T::try_from(n) {
            Ok(t) if range.contains(&t) => Some(t),
            // Not representable in T (e.g. negative for an unsigned type) is out of range too.
            _ => {
                self.error(var, &v, format!("{}{unit}", describe_range(range)));
                None
            }
        }
    }

    /// A non-negative count. Negative values give `on_negative` with a warning: upstream clamps
    /// them silently (ipam.md §4), and refusing would break manifests upstream accepts. Not an
    /// integer, or above `u32::MAX`, is an error and gives `default`.
    pub fn count(&mut self, var: &'static str, default: u32, on_negative: u32) -> u32 {
        let Some((v, n)) = self.int(var) else {
            return default;
        };
        if n < 0 {
            self.warn(
                var,
                &v,
                format!("negative; using {on_negative} like upstream"),
            );
            return on_negative;
        }
        match u32::try_from(n) {
            Ok(n) => n,
            Err(_) => {
                self.error(var, &v, format!("too large (at most {})", u32::MAX));
                default
            }
        }
    }

    /// An absolute path; a relative one is an error (the daemon's and the plugin's working
    /// directories are not the operator's) and gives `default`.
    pub fn abs_path(&mut self, var: &'static str, default: &str) -> PathBuf {
        let Some(v) = self.raw(var) else {
            return PathBuf::from(default);
        };
        if v.starts_with('/') {
            PathBuf::from(v)
        } else {
            self.error(var, &v, "must be an absolute path");
            PathBuf::from(default)
        }
    }

    /// An `http://` or `https://` URL with something after the scheme; anything else is an
    /// error and gives `None`.
    pub fn url(&mut self, var: &'static str) -> Option<String> {
        let v = self.raw(var)?;
        let rest = v
            .strip_prefix("http://")
            .or_else(|| v.strip_prefix("https://"));
        if rest.is_some_and(|r| !r.is_empty()) {
            Some(v)
        } else {
            self.error(var, &v, "not an http:// or https:// URL");
            None
        }
    }

    /// A comma-separated list, items trimmed, empty items dropped (upstream splits on `,` and
    /// tolerates `a, b,`). Unset is an empty list. Items are not validated here: the caller
    /// parses each and records problems against the item.
    pub fn list(&self, var: &str) -> Vec<String> {
        self.raw(var)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One of `options` (spelling → value), compared per `case`; unset gives `default`, an
    /// unknown value an error or a warning per `on_unknown`, and `default`.
    pub fn choice<T: Copy + PartialEq>(
        &mut self,
        var: &'static str,
        case: Case,
        options: &[(&str, T)],
        default: T,
        on_unknown: OnUnknown,
    ) -> T {
        let ignore_case = case == Case::Ignore;
        let Some(v) = self.raw(var) else {
            return default;
        };
        let found = options.iter().find(|(name, _)| {
            if ignore_case {
                name.eq_ignore_ascii_case(&v)
            } else {
                *name == v
            }
        });
        if let Some(&(_, t)) = found {
            return t;
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let accepted = format!(
            "accepted{}: {}",
            if ignore_case { ", any case" } else { "" },
            names.join(", ")
        );
        match on_unknown {
            OnUnknown::Error => self.error(var, &v, accepted),
            OnUnknown::Warn => {
                let used = options
                    .iter()
                    .find(|(_, t)| *t == default)
                    .map_or("the default", |(n, _)| *n);
                self.warn(
                    var,
                    &v,
                    format!("unknown value; using {used} like upstream ({accepted})"),
                );
            }
        }
        default
    }
}

#[cfg(test)]
mod tests;
