//! Fault injection per EC2 action: added latency, an error rate with a chosen code, and a
//! token-bucket throttle that answers `RequestLimitExceeded` like EC2's request-rate limits.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::model::ApiError;

/// The action key that applies to every action without a fault of its own.
pub const ANY_ACTION: &str = "*";

/// Faults for one action (JSON body of `PUT /faults/{action}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Latency added before the action runs, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Probability (0.0–1.0) that a call fails with `error_code` instead of running.
    #[serde(default)]
    pub error_rate: f64,
    /// Code of injected errors (default `InternalError`); its HTTP status follows AWS
    /// (`RequestLimitExceeded`/`Unavailable` 503, `InternalError` 500, `UnauthorizedOperation`
    /// 403, others 400).
    #[serde(default)]
    pub error_code: Option<String>,
    /// Token-bucket throttle; calls finding the bucket empty get `RequestLimitExceeded`.
    #[serde(default)]
    pub throttle: Option<Throttle>,
}

/// A token bucket: `burst` tokens, refilled at `rate_per_sec`; each call takes one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Throttle {
    /// Refill rate in tokens per second.
    pub rate_per_sec: f64,
    /// Bucket capacity (and initial fill).
    pub burst: f64,
}

#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// What the fault layer decided for one call.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    /// Latency to add before answering.
    pub latency: Duration,
    /// Error to answer with instead of running the action.
    pub error: Option<ApiError>,
    /// Whether `error` comes from the throttle.
    pub throttled: bool,
}

/// Fault configuration and runtime state (buckets, seeded RNG).
#[derive(Debug)]
pub struct Faults {
    specs: BTreeMap<String, FaultSpec>,
    buckets: BTreeMap<String, Bucket>,
    rng: StdRng,
}

impl Faults {
    /// No faults; `seed` drives the error-rate draws.
    pub fn new(seed: u64) -> Self {
        Self {
            specs: BTreeMap::new(),
            buckets: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Current specs by action.
    pub fn specs(&self) -> &BTreeMap<String, FaultSpec> {
        &self.specs
    }

    /// Sets the faults of `action` (or of every action: [`ANY_ACTION`]); refills its bucket.
    pub fn set(&mut self, action: &str, spec: FaultSpec) -> Result<(), String> {
        if !(0.0..=1.0).contains(&spec.error_rate) {
            return Err(format!(
                "error_rate {} is outside 0.0..=1.0",
                spec.error_rate
            ));
        }
        if let Some(t) = &spec.throttle {
            // Written so that NaN fails too.
            let rate_ok = t.rate_per_sec.is_finite() && t.rate_per_sec >= 0.0;
            let burst_ok = t.burst.is_finite() && t.burst >= 1.0;
            if !rate_ok || !burst_ok {
                return Err(format!(
                    "throttle needs rate_per_sec >= 0 and burst >= 1, got {} and {}",
                    t.rate_per_sec, t.burst
                ));
            }
        }
        self.buckets.remove(action);
        self.specs.insert(action.to_string(), spec);
        Ok(())
    }

    /// Removes the faults of `action`; returns whether there were any.
    pub fn clear(&mut self, action: &str) -> bool {
        self.buckets.remove(action);
        self.specs.remove(action).is_some()
    }

    /// Removes every fault.
    pub fn clear_all(&mut self) {
        self.specs.clear();
        self.buckets.clear();
    }

    /// Decides the fate of one call to `action` at `now`.
    pub fn decide(&mut self, action: &str, now: Instant) -> Decision {
        let key = if self.specs.contains_key(action) {
            action
        } else if self.specs.contains_key(ANY_ACTION) {
            ANY_ACTION
        } else {
            return Decision::default();
        };
        let Some(spec) = self.specs.get(key).cloned() else {
            return Decision::default();
        };
        let mut d = Decision {
            latency: Duration::from_millis(spec.latency_ms),
            ..Decision::default()
        };
        if let Some(t) = &spec.throttle {
            // One bucket per action even under "*", like EC2's per-action buckets.
            let b = self.buckets.entry(action.to_string()).or_insert(Bucket {
                tokens: t.burst,
                last: now,
            });
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens = (b.tokens + elapsed * t.rate_per_sec).min(t.burst);
            b.last = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
            } else {
                d.error = Some(ApiError::new(
                    "RequestLimitExceeded",
                    "Request limit exceeded.",
                ));
                d.throttled = true;
                return d;
            }
        }
        if spec.error_rate > 0.0 && self.rng.random::<f64>() < spec.error_rate {
            let code = spec.error_code.as_deref().unwrap_or("InternalError");
            let message = match code {
                "RequestLimitExceeded" => "Request limit exceeded.".to_string(),
                "InternalError" => "An internal error has occurred".to_string(),
                other => format!("Injected fault {other} for {action}"),
            };
            d.error = Some(ApiError::new(code, message));
        }
        d
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bucket_refills_at_rate() {
        let mut f = Faults::new(1);
        f.set(
            "A",
            FaultSpec {
                throttle: Some(Throttle {
                    rate_per_sec: 1.0,
                    burst: 2.0,
                }),
                ..Default::default()
            },
        )
        .unwrap();
        let t0 = Instant::now();
        assert!(f.decide("A", t0).error.is_none());
        assert!(f.decide("A", t0).error.is_none());
        let third = f.decide("A", t0);
        assert!(third.throttled);
        assert_eq!(third.error.unwrap().code, "RequestLimitExceeded");
        // Other actions are not affected.
        assert!(f.decide("B", t0).error.is_none());
        assert!(
            f.decide("A", t0 + Duration::from_millis(1100))
                .error
                .is_none()
        );
        assert!(
            f.decide("A", t0 + Duration::from_millis(1100))
                .error
                .is_some()
        );
    }

    #[test]
    fn error_rate_is_seeded_and_roughly_right() {
        let run = || {
            let mut f = Faults::new(42);
            f.set(
                ANY_ACTION,
                FaultSpec {
                    error_rate: 0.3,
                    error_code: Some("Unavailable".into()),
                    ..Default::default()
                },
            )
            .unwrap();
            let now = Instant::now();
            (0..1000)
                .map(|_| f.decide("X", now).error.is_some())
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let n = a.iter().filter(|b| **b).count();
        assert!(
            (200..400).contains(&n),
            "{n} errors out of 1000 at rate 0.3"
        );
    }

    #[test]
    fn rejects_bad_specs() {
        let mut f = Faults::new(1);
        assert!(
            f.set(
                "A",
                FaultSpec {
                    error_rate: 1.5,
                    ..Default::default()
                }
            )
            .is_err()
        );
    }
}
