//! Runs governor's GCRA on one bucket of our own store.
//!
//! governor's keyed `RateLimiter` asks a [`StateStore`] to "measure and
//! replace" the theoretical arrival time (TAT) of a key. By the time we ask,
//! our store has already located the key's bucket and holds its shard's
//! lock, so the key we hand governor *is* that bucket's TAT, on loan
//! ([`Loan`]), and our state store ([`LoanStore`]) only reads and writes it.
//!
//! Time: governor reads its own clock. We pin that clock at zero
//! ([`ArrivalFrame`]) and translate TATs into the frame of the request's
//! arrival (`relative TAT = TAT - now`, where 0 means "the bucket is full").
//! GCRA only ever compares the TAT with "now", so the decisions are the same,
//! and the limiter's injected clock, read once per check, stays the only
//! source of time.

use std::cell::Cell;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{InsufficientCapacity, RateLimiter};

use crate::quota::Quota;

/// The TAT of the bucket being checked, relative to the request's arrival
/// (nanoseconds until the bucket is full; 0 = full), lent to governor.
///
/// governor requires keys of keyed stores to be `Eq + Hash + Clone` (for its
/// own maps); [`LoanStore`] never hashes or compares them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Loan(Cell<u64>);

impl Hash for Loan {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.get().hash(state);
    }
}

/// The state store governor decides through: the state is in the key.
#[derive(Debug, Clone, Copy, Default)]
struct LoanStore;

impl StateStore for LoanStore {
    type Key = Loan;

    fn measure_and_replace<T, F, E>(&self, key: &Loan, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let (outcome, tat) = f(Some(Nanos::from(key.0.get())))?;
        key.0.set(tat.as_u64());
        Ok(outcome)
    }
}

/// governor's clock, pinned at the request's arrival.
#[derive(Debug, Clone, Copy, Default)]
struct ArrivalFrame;

impl Clock for ArrivalFrame {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(0)
    }
}

/// What governor decided for one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Admitted; the bucket's new relative TAT.
    Allowed { tat: u64 },
    /// Refused; the wait until the cost fits.
    Limited { retry_after: Duration },
    /// Refused forever: the cost exceeds the burst.
    ExceedsBurst,
}

/// One quota's GCRA, shared by all of a limiter's keys.
#[derive(Debug)]
pub(crate) struct Gcra {
    limiter: RateLimiter<Loan, LoanStore, ArrivalFrame, NoOpMiddleware<Nanos>>,
    /// Emission interval T, in nanoseconds (≥ 1).
    t: u64,
    /// Bucket size.
    burst: u32,
}

impl Gcra {
    pub(crate) fn new(quota: Quota) -> Self {
        let quota = quota.to_governor();
        let t = Nanos::from(quota.replenish_interval()).as_u64().max(1);
        Self {
            limiter: RateLimiter::new(quota, LoanStore, ArrivalFrame),
            t,
            burst: quota.burst_size().get(),
        }
    }

    /// Decides a request of `cost` on a bucket whose relative TAT is `tat`.
    pub(crate) fn check(&self, tat: u64, cost: NonZeroU32) -> Verdict {
        let loan = Loan(Cell::new(tat));
        match self.limiter.check_key_n(&loan, cost) {
            Ok(Ok(())) => Verdict::Allowed {
                tat: loan.0.into_inner(),
            },
            Ok(Err(not_until)) => Verdict::Limited {
                retry_after: not_until.wait_time_from(Nanos::from(0)),
            },
            Err(InsufficientCapacity(_)) => Verdict::ExceedsBurst,
        }
    }

    /// Units that could be spent now from a bucket whose relative TAT is
    /// `tat` (governor's `StateSnapshot::remaining_burst_capacity`, whose
    /// inputs it does not expose).
    pub(crate) fn remaining(&self, tat: u64) -> u32 {
        let capacity = self.t.saturating_mul(u64::from(self.burst));
        let units = capacity.saturating_sub(tat) / self.t;
        u32::try_from(units).unwrap_or(u32::MAX).min(self.burst)
    }

    pub(crate) fn burst(&self) -> u32 {
        self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("test values are non-zero")
    }

    /// rate 10/s (T = 100 ms), burst 5 (τ = 400 ms).
    fn gcra() -> Gcra {
        Gcra::new(Quota::per_second(nz(10), nz(5)).expect("valid quota"))
    }

    #[test]
    fn verdicts_in_the_arrival_frame() {
        const MS: u64 = 1_000_000;
        #[track_caller]
        fn check(tat: u64, cost: u32, expected: Verdict) {
            assert_eq!(
                gcra().check(tat, nz(cost)),
                expected,
                "tat {tat} cost {cost}"
            );
        }
        let limited = |ms| Verdict::Limited {
            retry_after: Duration::from_millis(ms),
        };
        check(0, 1, Verdict::Allowed { tat: 100 * MS });
        check(0, 5, Verdict::Allowed { tat: 500 * MS });
        check(0, 6, Verdict::ExceedsBurst);
        check(400 * MS, 1, Verdict::Allowed { tat: 500 * MS });
        check(450 * MS, 1, limited(50));
        check(500 * MS, 1, limited(100));
        check(300 * MS, 3, limited(100));
        check(200 * MS, 3, Verdict::Allowed { tat: 500 * MS });
    }

    #[test]
    fn remaining_units() {
        const MS: u64 = 1_000_000;
        let g = gcra();
        let got: Vec<u32> = [
            0,
            1,
            99 * MS,
            100 * MS,
            101 * MS,
            400 * MS,
            500 * MS,
            u64::MAX,
        ]
        .into_iter()
        .map(|tat| g.remaining(tat))
        .collect();
        assert_eq!(got, [5, 4, 4, 4, 3, 1, 0, 0]);
    }
}
