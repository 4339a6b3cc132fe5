//! Client-side token bucket in front of every EC2 call.
//!
//! Upstream calls EC2 from every node with no client-side limit, so a fleet scaling out at once
//! throttles itself (`RequestLimitExceeded`) for the whole account/region (ipam.md §13 #6).
//! Cilium's operator puts one bucket (default 4 QPS, burst 20) in front of every call and every
//! page; we do the same per daemon and measure how long callers waited so the metrics layer can
//! export it.
//!
//! The bucket works by *reservation*: a caller takes a token immediately, possibly driving the
//! balance negative, and then sleeps for as long as the debt takes to refill. This keeps callers in
//! FIFO order without a queue and never holds the lock across an `.await`.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Settings of a [`TokenBucket`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimiterSettings {
    /// Sustained rate: tokens added per second. Must be finite and > 0.
    pub qps: f64,
    /// Bucket size: how many calls may go out back to back after an idle period. Must be ≥ 1.
    pub burst: u32,
}

impl Default for LimiterSettings {
    /// Cilium's defaults, which are well below EC2's per-account mutating-call budget.
    fn default() -> Self {
        Self {
            qps: 4.0,
            burst: 20,
        }
    }
}

/// An invalid limiter setting.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LimiterError {
    /// `qps` was zero, negative, NaN or infinite.
    #[error("EC2 rate limit qps must be a finite number > 0, got {0}")]
    BadQps(f64),
    /// `burst` was zero.
    #[error("EC2 rate limit burst must be >= 1, got {0}")]
    BadBurst(u32),
}

#[derive(Debug)]
struct State {
    /// Current balance; negative while callers are waiting for reserved tokens.
    tokens: f64,
    last: Instant,
    acquired: u64,
    waited_total: Duration,
    waited_max: Duration,
}

/// Counters of a [`TokenBucket`], for the metrics layer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LimiterStats {
    /// Tokens handed out so far.
    pub acquired: u64,
    /// Sum of the time callers spent waiting for a token.
    pub waited_total: Duration,
    /// Longest single wait.
    pub waited_max: Duration,
}

/// A token bucket shared by every EC2 call of the daemon.
#[derive(Debug)]
pub struct TokenBucket {
    settings: LimiterSettings,
    state: Mutex<State>,
}

impl TokenBucket {
    /// A full bucket with the given settings.
    pub fn new(settings: LimiterSettings) -> Result<Self, LimiterError> {
        if !settings.qps.is_finite() || settings.qps <= 0.0 {
            return Err(LimiterError::BadQps(settings.qps));
        }
        if settings.burst == 0 {
            return Err(LimiterError::BadBurst(settings.burst));
        }
        Ok(Self {
            settings,
            state: Mutex::new(State {
                tokens: f64::from(settings.burst),
                last: Instant::now(),
                acquired: 0,
                waited_total: Duration::ZERO,
                waited_max: Duration::ZERO,
            }),
        })
    }

    /// The settings this bucket was built with.
    pub fn settings(&self) -> LimiterSettings {
        self.settings
    }

    /// Reserve one token and return how long the caller must wait before using it.
    fn reserve(&self) -> Duration {
        let mut st = match self.state.lock() {
            Ok(g) => g,
            // A panic while holding this lock cannot leave the numbers inconsistent in a way
            // that matters (worst case one token is lost), so keep going.
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(st.last).as_secs_f64();
        st.last = now;
        st.tokens = (st.tokens + elapsed * self.settings.qps).min(f64::from(self.settings.burst));
        st.tokens -= 1.0;
        let wait = if st.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-st.tokens / self.settings.qps)
        };
        st.acquired += 1;
        st.waited_total += wait;
        st.waited_max = st.waited_max.max(wait);
        wait
    }

    /// Take one token, sleeping until it is available. Returns the time spent waiting.
    pub async fn acquire(&self) -> Duration {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }

    /// Counters so far.
    pub fn stats(&self) -> LimiterStats {
        let st = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        LimiterStats {
            acquired: st.acquired,
            waited_total: st.waited_total,
            waited_max: st.waited_max,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rejects_bad_settings() {
        assert_eq!(
            TokenBucket::new(LimiterSettings { qps: 0.0, burst: 1 }).unwrap_err(),
            LimiterError::BadQps(0.0)
        );
        assert!(
            TokenBucket::new(LimiterSettings {
                qps: f64::NAN,
                burst: 1
            })
            .is_err()
        );
        assert_eq!(
            TokenBucket::new(LimiterSettings { qps: 1.0, burst: 0 }).unwrap_err(),
            LimiterError::BadBurst(0)
        );
    }

    // Paused tokio time: sleeps advance the clock instantly, so these tests check the bucket's
    // arithmetic without depending on wall-clock timing.
    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let b = TokenBucket::new(LimiterSettings { qps: 2.0, burst: 3 }).unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.acquire().await, Duration::ZERO);
        }
        // The 4th and 5th calls wait for refill at 2/s: 0.5 s each, one after the other.
        assert_eq!(b.acquire().await, Duration::from_millis(500));
        assert_eq!(b.acquire().await, Duration::from_millis(500));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let s = b.stats();
        assert_eq!(s.acquired, 5);
        assert_eq!(s.waited_total, Duration::from_secs(1));
        assert_eq!(s.waited_max, Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn refills_up_to_burst_only() {
        let b = TokenBucket::new(LimiterSettings {
            qps: 10.0,
            burst: 2,
        })
        .unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(b.acquire().await, Duration::ZERO);
        assert_eq!(b.acquire().await, Duration::ZERO);
        // A long idle period must not bank more than `burst` tokens.
        assert_eq!(b.acquire().await, Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_are_spaced() {
        let b =
            std::sync::Arc::new(TokenBucket::new(LimiterSettings { qps: 4.0, burst: 1 }).unwrap());
        let mut waits = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..4 {
            let b = b.clone();
            handles.push(tokio::spawn(async move { b.acquire().await }));
        }
        for h in handles {
            waits.push(h.await.unwrap());
        }
        waits.sort();
        assert_eq!(
            waits,
            vec![
                Duration::ZERO,
                Duration::from_millis(250),
                Duration::from_millis(500),
                Duration::from_millis(750)
            ]
        );
    }
}
