//! What a policy allows: [`Quota`] ("`rate` requests per `period`, up to
//! `burst` at once") and [`PolicySpec`] (a named quota plus the key store's
//! settings), with their validation.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::headers;

/// The longest time an empty bucket may take to refill (`period / rate ×
/// burst`), and the longest penalty or idle timeout: about ten years. Keeps
/// every instant the limiter computes far inside a `u64` of nanoseconds.
pub const MAX_WINDOW: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// The most keys one limiter may be configured to hold (about a billion,
/// i.e. up to ~60 GB; real policies want far fewer).
pub const MAX_KEYS: usize = 1 << 30;

/// `max_keys` of [`PolicySpec::new`]: ~3–6 MB of key store.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Longest policy name accepted, in bytes.
const MAX_NAME_LEN: usize = 128;

/// "`rate` requests per `period`, up to `burst` at once".
///
/// One request is earned every `period / rate` (the emission interval,
/// truncated to whole nanoseconds); at most `burst` can be saved up. Build
/// it with [`Quota::new`], which validates; a [`crate::Limiter`] validates
/// again, since the fields are public.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    /// Requests earned per `period`.
    pub rate: NonZeroU32,
    /// The period over which `rate` requests are earned.
    pub period: Duration,
    /// The most requests admitted at once (the bucket size).
    pub burst: NonZeroU32,
}

impl Quota {
    /// A validated quota.
    pub fn new(rate: NonZeroU32, period: Duration, burst: NonZeroU32) -> Result<Self> {
        let quota = Self {
            rate,
            period,
            burst,
        };
        quota.validate()?;
        Ok(quota)
    }

    /// `rate` per second, up to `burst` at once.
    pub fn per_second(rate: NonZeroU32, burst: NonZeroU32) -> Result<Self> {
        Self::new(rate, Duration::from_secs(1), burst)
    }

    /// Checks the period is non-zero, the emission interval at least 1 ns, and
    /// the refill window at most [`MAX_WINDOW`].
    pub fn validate(&self) -> Result<()> {
        if self.period.is_zero() {
            return Err(Error::ZeroPeriod);
        }
        let interval = self.emission_interval();
        if interval.is_zero() {
            return Err(Error::RateTooFine {
                rate: self.rate.get(),
                period: self.period,
            });
        }
        let window = interval.checked_mul(self.burst.get());
        match window {
            Some(w) if w <= MAX_WINDOW => Ok(()),
            _ => Err(Error::WindowTooLong {
                burst: self.burst.get(),
                window,
                max: MAX_WINDOW,
            }),
        }
    }

    /// The time to earn one request: `period / rate`, truncated to whole
    /// nanoseconds (so the effective rate is at least `rate`, never less).
    pub fn emission_interval(&self) -> Duration {
        self.period / self.rate.get()
    }

    /// The time an empty bucket takes to refill: `emission_interval × burst`
    /// (saturating; at most [`MAX_WINDOW`] for a valid quota).
    pub fn refill_window(&self) -> Duration {
        self.emission_interval()
            .checked_mul(self.burst.get())
            .unwrap_or(Duration::MAX)
    }

    /// The `RateLimit-Policy` field value for this quota under `policy`:
    /// `"<policy>";q=<burst>;w=<refill window in seconds, rounded up, ≥ 1>`.
    ///
    /// `q` is the bucket size and `w` the time an empty bucket takes to refill,
    /// so a client that spends at most `q` units per `w` seconds is never
    /// refused. See `headers.rs` for the draft followed and the rounding.
    pub fn policy_header(&self, policy: &str) -> String {
        headers::policy(policy, self.burst.get(), self.refill_window())
    }

    /// The equivalent governor quota (emission interval and burst).
    pub(crate) fn to_governor(self) -> governor::Quota {
        let interval = self.emission_interval().max(Duration::from_nanos(1));
        governor::Quota::with_period(interval)
            .expect("the interval is at least one nanosecond")
            .allow_burst(self.burst)
    }
}

/// One rate-limiting policy: a named [`Quota`] applied per key, with the
/// key store's settings. Build with [`PolicySpec::new`] and adjust the
/// public fields; [`crate::Limiter::new`] validates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// Names the policy in headers: 1 to 128 bytes of printable ASCII.
    pub name: String,
    /// What each key is allowed.
    pub quota: Quota,
    /// If set, a key that is refused is refused outright for this long (its
    /// bucket refills meanwhile), then released. At least 1 ms.
    pub penalty: Option<Duration>,
    /// Hard cap on the keys held at once (1 ..= [`MAX_KEYS`]); see the crate
    /// docs for the eviction policy and the memory bound.
    pub max_keys: usize,
    /// How long a key whose bucket is full again (and which is not in the
    /// penalty box) is kept before [`crate::Limiter::sweep`] may drop it.
    /// `None` drops it as soon as it carries no information. Keeping idle keys
    /// a little longer only saves re-inserting keys that come back often; it
    /// never changes a decision.
    pub idle_timeout: Option<Duration>,
}

impl PolicySpec {
    /// A policy with no penalty box, [`DEFAULT_MAX_KEYS`] and no idle grace.
    pub fn new(name: impl Into<String>, quota: Quota) -> Self {
        Self {
            name: name.into(),
            quota,
            penalty: None,
            max_keys: DEFAULT_MAX_KEYS,
            idle_timeout: None,
        }
    }

    /// Checks the name, the quota and the store settings; returns the first
    /// problem found.
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        self.quota.validate()?;
        if self.max_keys == 0 || self.max_keys > MAX_KEYS {
            return Err(Error::MaxKeysOutOfRange {
                policy: self.name.clone(),
                max_keys: self.max_keys,
                limit: MAX_KEYS,
            });
        }
        let in_range = |setting, value: Option<Duration>, min| match value {
            Some(value) if value < min || value > MAX_WINDOW => Err(Error::DurationOutOfRange {
                policy: self.name.clone(),
                setting,
                value,
                min,
                max: MAX_WINDOW,
            }),
            _ => Ok(()),
        };
        in_range("penalty", self.penalty, Duration::from_millis(1))?;
        in_range("idle_timeout", self.idle_timeout, Duration::ZERO)
    }

    /// The `RateLimit-Policy` field value for this policy.
    pub fn policy_header(&self) -> String {
        self.quota.policy_header(&self.name)
    }
}

fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME_LEN {
        "it is longer than 128 bytes"
    } else if !name.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        "only printable ASCII may appear in a header string"
    } else {
        return Ok(());
    };
    Err(Error::InvalidPolicyName {
        name: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("test values are non-zero")
    }

    #[test]
    fn quota_validation() {
        #[track_caller]
        fn check(rate: u32, period: Duration, burst: u32, expected: Result<Duration>) {
            let got = Quota::new(nz(rate), period, nz(burst)).map(|q| q.emission_interval());
            assert_eq!(got, expected, "rate {rate} per {period:?} burst {burst}");
        }
        let secs = Duration::from_secs;
        check(100, secs(1), 20, Ok(Duration::from_millis(10)));
        check(3, secs(1), 1, Ok(Duration::from_nanos(333_333_333)));
        check(1, secs(86_400), 1, Ok(secs(86_400)));
        check(1, Duration::ZERO, 1, Err(Error::ZeroPeriod));
        check(
            2_000_000_000,
            secs(1),
            1,
            Err(Error::RateTooFine {
                rate: 2_000_000_000,
                period: secs(1),
            }),
        );
        check(
            1,
            secs(86_400),
            10_000,
            Err(Error::WindowTooLong {
                burst: 10_000,
                window: Some(secs(864_000_000)),
                max: MAX_WINDOW,
            }),
        );
        check(
            1,
            Duration::MAX,
            u32::MAX,
            Err(Error::WindowTooLong {
                burst: u32::MAX,
                window: None,
                max: MAX_WINDOW,
            }),
        );
    }

    #[test]
    fn policy_validation() {
        let quota = Quota::per_second(nz(10), nz(10)).expect("valid quota");
        #[track_caller]
        fn check(spec: PolicySpec, expected: &str) {
            let got = spec.validate().err().map(|e| e.to_string());
            assert_eq!(got.as_deref().unwrap_or("ok"), expected);
        }
        let base = PolicySpec::new("api", quota);
        check(base.clone(), "ok");
        check(
            PolicySpec {
                name: String::new(),
                ..base.clone()
            },
            r#"policy name "" is invalid: it is empty"#,
        );
        check(
            PolicySpec {
                name: "caf\u{e9}".into(),
                ..base.clone()
            },
            "policy name \"caf\u{e9}\" is invalid: only printable ASCII may appear in a header string",
        );
        check(
            PolicySpec {
                name: "x".repeat(129),
                ..base.clone()
            },
            &format!(
                "policy name \"{}\" is invalid: it is longer than 128 bytes",
                "x".repeat(129)
            ),
        );
        check(
            PolicySpec {
                max_keys: 0,
                ..base.clone()
            },
            r#"policy "api": max_keys 0 must be between 1 and 1073741824"#,
        );
        check(
            PolicySpec {
                penalty: Some(Duration::ZERO),
                ..base.clone()
            },
            r#"policy "api": penalty of 0ns must be between 1ms and 315360000s"#,
        );
        check(
            PolicySpec {
                idle_timeout: Some(MAX_WINDOW * 2),
                ..base.clone()
            },
            r#"policy "api": idle_timeout of 630720000s must be between 0ns and 315360000s"#,
        );
        check(
            PolicySpec {
                penalty: Some(Duration::from_secs(30)),
                idle_timeout: Some(Duration::ZERO),
                name: r#"a "quoted" \ name"#.into(),
                ..base
            },
            "ok",
        );
    }
}
