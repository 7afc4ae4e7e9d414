//! [`Limiter`]: one policy's limits over a sharded store of keys, checked
//! with governor's GCRA under an injected clock.

use std::fmt;
use std::hash::BuildHasher;
use std::hash::RandomState;
use std::num::NonZeroU32;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};

use crate::decision::{Decision, Outcome};
use crate::error::Result;
use crate::gcra::{Gcra, Verdict};
use crate::quota::{PolicySpec, Quota};
use crate::store::{Entry, Shard};

/// A shard never holds fewer keys than this, unless `max_keys` is smaller.
const MIN_KEYS_PER_SHARD: usize = 64;

/// Nor more than this, unless there are over 65,536 shards: a shard rebuilds
/// its table in one go under its lock (see `store.rs`), so its size bounds
/// that pause.
const MAX_KEYS_PER_SHARD: usize = 16_384;

/// Keeps each shard's lock on its own cache lines (128: adjacent-line
/// prefetch pairs them).
#[repr(align(128))]
struct Padded<T>(T);

/// Rate limits for one policy, per key. `Send + Sync`: share one behind an
/// `Arc`. See the crate docs for the algorithm, the memory bound and the
/// eviction policy.
pub struct Limiter<C: Clock = DefaultClock> {
    spec: PolicySpec,
    gcra: Gcra,
    /// Penalty box length, in nanoseconds.
    penalty: Option<u64>,
    /// How long an idle key is kept, in nanoseconds.
    grace: u64,
    clock: C,
    epoch: C::Instant,
    /// Keys a per-limiter random SipHash-1-3 seed.
    digest: RandomState,
    shards: Box<[Padded<Mutex<Shard>>]>,
    caps: Box<[usize]>,
    shard_mask: u64,
}

impl Limiter {
    /// A limiter on the default (quanta, monotonic) clock.
    pub fn new(spec: PolicySpec) -> Result<Self> {
        Self::with_clock(spec, DefaultClock::default())
    }
}

impl<C: Clock> Limiter<C> {
    /// A limiter reading time from `clock`; its "now" at construction is the
    /// limiter's epoch.
    pub fn with_clock(spec: PolicySpec, clock: C) -> Result<Self> {
        spec.validate()?;
        let shard_count = shard_count(spec.max_keys);
        let caps: Box<[usize]> = (0..shard_count)
            .map(|i| spec.max_keys / shard_count + usize::from(i < spec.max_keys % shard_count))
            .collect();
        let shards = caps
            .iter()
            .map(|&cap| Padded(Mutex::new(Shard::new(cap))))
            .collect();
        let epoch = clock.now();
        Ok(Self {
            gcra: Gcra::new(spec.quota),
            penalty: spec.penalty.map(nanos),
            grace: spec.idle_timeout.map_or(0, nanos),
            clock,
            epoch,
            digest: RandomState::new(),
            shards,
            caps,
            shard_mask: (shard_count - 1) as u64,
            spec,
        })
    }

    /// Checks a request of `cost` units for `key`, taking the cost from its
    /// bucket if admitted. Cost 0 is a pure query: nothing is taken and no
    /// entry is created. A cost above the burst is never admitted.
    pub fn check(&self, key: &str, cost: u32) -> Decision {
        let now = self.now();
        let digest = self.digest.hash_one(key);
        let cost = match NonZeroU32::new(cost) {
            Some(cost) if cost.get() <= self.gcra.burst() => cost,
            Some(_) => {
                let decision = self.query(digest, now);
                return Decision {
                    outcome: Outcome::ExceedsBurst,
                    retry_after: None,
                    ..decision
                };
            }
            None => return self.query(digest, now),
        };
        let mut shard = self.lock(digest);
        if let Some(entry) = shard.get_mut(digest) {
            return self.decide(entry, now, cost);
        }
        let mut entry = Entry::default();
        let decision = self.decide(&mut entry, now, cost);
        if !entry.idle(now, 0) {
            shard.insert(digest, entry, now, self.grace);
        }
        decision
    }

    /// Drops the keys that carry no information any more (full bucket, no
    /// penalty, idle for `idle_timeout`); returns how many. Locks one shard at
    /// a time; call it every few seconds.
    pub fn sweep(&self) -> usize {
        let now = self.now();
        self.shards
            .iter()
            .map(|s| lock(&s.0).sweep(now, self.grace))
            .sum()
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.0).len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The policy enforced.
    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    /// The policy's quota.
    pub fn quota(&self) -> &Quota {
        &self.spec.quota
    }

    /// The `RateLimit-Policy` field value for this policy.
    pub fn policy_header(&self) -> String {
        self.spec.policy_header()
    }

    /// The `RateLimit` field value of `decision` under this policy's name.
    pub fn ratelimit_header(&self, decision: &Decision) -> String {
        decision.ratelimit_header(&self.spec.name)
    }

    /// Estimated bytes held by the key store now (tables at hashbrown's
    /// layout, plus the shards themselves).
    pub fn accounted_bytes(&self) -> usize {
        let tables: usize = self
            .shards
            .iter()
            .map(|s| lock(&s.0).accounted_bytes())
            .sum();
        tables + self.fixed_bytes()
    }

    /// The most bytes the key store can hold in steady state, whatever keys
    /// arrive (a shard that is rebuilding briefly holds its old table and a
    /// list of its survivors as well).
    pub fn memory_bound_bytes(&self) -> usize {
        let tables: usize = self.caps.iter().map(|&cap| Shard::bound_bytes(cap)).sum();
        tables + self.fixed_bytes()
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn fixed_bytes(&self) -> usize {
        self.shards.len() * (size_of::<Padded<Mutex<Shard>>>() + size_of::<usize>())
    }

    /// Applies the policy to one key's entry.
    fn decide(&self, entry: &mut Entry, now: u64, cost: NonZeroU32) -> Decision {
        if entry.penalty_until > now {
            return self.penalized(entry, now, cost);
        }
        let tat = entry.tat.saturating_sub(now);
        match self.gcra.check(tat, cost) {
            Verdict::Allowed { tat } => {
                entry.tat = now.saturating_add(tat);
                self.decision(Outcome::Allowed, tat, None)
            }
            Verdict::Limited { retry_after } => match self.penalty {
                Some(penalty) => {
                    entry.penalty_until = now.saturating_add(penalty);
                    self.penalized(entry, now, cost)
                }
                None => self.decision(Outcome::Limited, tat, Some(retry_after)),
            },
            Verdict::ExceedsBurst => self.decision(Outcome::ExceedsBurst, tat, None),
        }
    }

    /// The decision for a key in the penalty box: refused until the penalty
    /// is over *and* the cost fits.
    fn penalized(&self, entry: &Entry, now: u64, cost: NonZeroU32) -> Decision {
        let tat = entry.tat.saturating_sub(now);
        let release = Duration::from_nanos(entry.penalty_until.saturating_sub(now));
        let fits = match self.gcra.check(tat, cost) {
            Verdict::Limited { retry_after } => retry_after,
            Verdict::Allowed { .. } | Verdict::ExceedsBurst => Duration::ZERO,
        };
        Decision {
            remaining: 0,
            reset: release.max(Duration::from_nanos(tat)),
            ..self.decision(Outcome::Penalized, tat, Some(release.max(fits)))
        }
    }

    /// Reports on a key without taking anything or creating an entry.
    fn query(&self, digest: u64, now: u64) -> Decision {
        let entry = self.lock(digest).get(digest).copied().unwrap_or_default();
        let tat = entry.tat.saturating_sub(now);
        if entry.penalty_until > now {
            let release = Duration::from_nanos(entry.penalty_until - now);
            return Decision {
                remaining: 0,
                reset: release.max(Duration::from_nanos(tat)),
                ..self.decision(Outcome::Penalized, tat, Some(release))
            };
        }
        self.decision(Outcome::Allowed, tat, None)
    }

    /// A decision for a bucket whose relative TAT is `tat`.
    fn decision(&self, outcome: Outcome, tat: u64, retry_after: Option<Duration>) -> Decision {
        Decision {
            outcome,
            limit: self.gcra.burst(),
            remaining: self.gcra.remaining(tat),
            reset: Duration::from_nanos(tat),
            retry_after,
        }
    }

    /// Nanoseconds since the epoch.
    fn now(&self) -> u64 {
        self.clock.now().duration_since(self.epoch).as_u64()
    }

    fn lock(&self, digest: u64) -> MutexGuard<'_, Shard> {
        // The digest's middle bits pick the shard; the table uses the low bits
        // for the slot and the top 7 as tags, so they stay well spread.
        let index = (digest >> 32) & self.shard_mask;
        lock(&self.shards[index as usize].0)
    }
}

/// Our critical sections leave a shard consistent at every step, so a
/// poisoned lock (a panic elsewhere while holding it) is safe to reuse.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The next power of two ≥ 4 × cores, or more if shards would hold over
/// [`MAX_KEYS_PER_SHARD`] keys; halved while they would hold fewer than
/// [`MIN_KEYS_PER_SHARD`].
fn shard_count(max_keys: usize) -> usize {
    let cores = thread::available_parallelism().map_or(1, usize::from);
    let by_size = max_keys.div_ceil(MAX_KEYS_PER_SHARD).min(1 << 16);
    let mut shards = (cores * 4).max(by_size).next_power_of_two();
    while shards > 1 && max_keys / shards < MIN_KEYS_PER_SHARD {
        shards /= 2;
    }
    shards
}

/// A validated duration (≤ [`crate::MAX_WINDOW`]) in nanoseconds.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl<C: Clock + fmt::Debug> fmt::Debug for Limiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("spec", &self.spec)
            .field("clock", &self.clock)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("test values are non-zero")
    }

    fn quota(rate: u32, period: Duration, burst: u32) -> Quota {
        Quota::new(nz(rate), period, nz(burst)).expect("valid test quota")
    }

    fn limiter(spec: PolicySpec) -> (Limiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock(spec, clock.clone()).expect("valid test spec");
        (limiter, clock)
    }

    const SEC: Duration = Duration::from_secs(1);
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Limiter>();
        assert_send_sync::<Limiter<FakeRelativeClock>>();
        assert_send_sync::<Arc<Limiter>>();
    }

    /// Drives one key at twice its rate for 10 s of injected time.
    #[test]
    fn admits_rate_times_duration_plus_burst() {
        #[track_caller]
        fn check(rate: u32, period: Duration, burst: u32) {
            let q = quota(rate, period, burst);
            let (l, clock) = limiter(PolicySpec::new("accuracy", q));
            // Half the emission interval T, rounded up: two steps must make a
            // whole T, or a burst-1 bucket (no tolerance) refuses every
            // arrival that comes a nanosecond early.
            let half = q.emission_interval().as_nanos().div_ceil(2);
            let step = Duration::from_nanos(u64::try_from(half).expect("T fits in u64"));
            let run = Duration::from_secs(10);
            let mut elapsed = Duration::ZERO;
            let mut admitted = 0u64;
            while elapsed < run {
                admitted += u64::from(l.check("k", 1).allowed());
                clock.advance(step);
                elapsed += step;
            }
            let expected =
                f64::from(rate) * run.as_secs_f64() / period.as_secs_f64() + f64::from(burst);
            let error = (admitted as f64 - expected).abs() / expected;
            assert!(
                error <= 0.02,
                "{rate}/{period:?} burst {burst}: admitted {admitted}, expected {expected}"
            );
        }
        check(100, SEC, 20);
        check(1, MS(1), 1);
        check(1000, SEC, 500);
        check(6000, Duration::from_secs(60), 50);
        check(50, MS(100), 5);
        check(30, SEC, 1);
        check(7, Duration::from_secs(3), 10);
    }

    #[test]
    fn burst_then_refill() {
        let (l, clock) = limiter(PolicySpec::new("api", quota(10, SEC, 5)));
        let got: Vec<(bool, u32)> = (0..6)
            .map(|_| l.check("k", 1))
            .map(|d| (d.allowed(), d.remaining))
            .collect();
        assert_eq!(
            got,
            [
                (true, 4),
                (true, 3),
                (true, 2),
                (true, 1),
                (true, 0),
                (false, 0)
            ]
        );
        let refused = l.check("k", 1);
        assert_eq!(refused.outcome, Outcome::Limited);
        assert_eq!(refused.retry_after, Some(MS(100)));
        assert_eq!(refused.reset, MS(500));
        assert_eq!(refused.limit, 5);
        clock.advance(MS(100));
        assert!(l.check("k", 1).allowed());
        clock.advance(MS(500));
        let d = l.check("k", 0);
        assert_eq!(
            (d.outcome, d.remaining, d.reset),
            (Outcome::Allowed, 5, Duration::ZERO)
        );
    }

    #[test]
    fn keys_are_independent() {
        let (l, _clock) = limiter(PolicySpec::new("api", quota(1, SEC, 3)));
        for _ in 0..3 {
            assert!(l.check("a", 1).allowed());
        }
        assert!(!l.check("a", 1).allowed());
        for key in ["b", "c", "a ", "A", ""] {
            let got: Vec<bool> = (0..4).map(|_| l.check(key, 1).allowed()).collect();
            assert_eq!(got, [true, true, true, false], "key {key:?}");
        }
        assert_eq!(l.len(), 6);
    }

    #[test]
    fn costs() {
        #[track_caller]
        fn check(costs: &[u32], expected: &[(Outcome, u32, Option<Duration>)]) {
            let (l, _clock) = limiter(PolicySpec::new("api", quota(10, SEC, 10)));
            let got: Vec<_> = costs
                .iter()
                .map(|&c| l.check("k", c))
                .map(|d| (d.outcome, d.remaining, d.retry_after))
                .collect();
            assert_eq!(got, expected, "costs {costs:?}");
        }
        use Outcome::*;
        check(
            &[4, 4, 4],
            &[
                (Allowed, 6, None),
                (Allowed, 2, None),
                (Limited, 2, Some(MS(200))),
            ],
        );
        check(&[10, 1], &[(Allowed, 0, None), (Limited, 0, Some(MS(100)))]);
        check(&[11], &[(ExceedsBurst, 10, None)]);
        check(
            &[3, 11, 0],
            &[
                (Allowed, 7, None),
                (ExceedsBurst, 7, None),
                (Allowed, 7, None),
            ],
        );
        check(
            &[0, 0, 10],
            &[(Allowed, 10, None), (Allowed, 10, None), (Allowed, 0, None)],
        );
        check(&[u32::MAX], &[(ExceedsBurst, 10, None)]);
    }

    #[test]
    fn queries_and_refusals_create_no_entries() {
        let (l, _clock) = limiter(PolicySpec::new("api", quota(10, SEC, 10)));
        assert!(l.check("q", 0).allowed());
        assert_eq!(l.check("big", 11).outcome, Outcome::ExceedsBurst);
        assert!(l.is_empty());
    }

    #[test]
    fn penalty_box_holds_then_releases() {
        let spec = PolicySpec {
            penalty: Some(Duration::from_secs(30)),
            ..PolicySpec::new("strict", quota(10, SEC, 2))
        };
        let (l, clock) = limiter(spec);
        assert!(l.check("k", 1).allowed());
        assert!(l.check("k", 1).allowed());
        let breach = l.check("k", 1);
        assert_eq!(breach.outcome, Outcome::Penalized);
        assert_eq!(breach.retry_after, Some(Duration::from_secs(30)));
        assert_eq!(breach.retry_after_secs(), Some(30));
        assert_eq!(breach.remaining, 0);
        // Held for the whole penalty, though the bucket refilled long ago.
        for (advance, left) in [(1, 29), (9, 20), (19, 1)] {
            clock.advance(Duration::from_secs(advance));
            let d = l.check("k", 1);
            assert!(d.penalized(), "{left}s before release: {d:?}");
            assert_eq!(d.retry_after, Some(Duration::from_secs(left)));
            assert_eq!(d.reset, Duration::from_secs(left));
            assert_eq!(l.check("k", 0).outcome, Outcome::Penalized);
        }
        // Other keys are unaffected.
        assert!(l.check("other", 1).allowed());
        clock.advance(SEC);
        let released = l.check("k", 1);
        assert_eq!(
            (released.outcome, released.remaining),
            (Outcome::Allowed, 1)
        );
    }

    #[test]
    fn penalty_box_releases_at_its_end() {
        let spec = PolicySpec {
            penalty: Some(Duration::from_secs(5)),
            ..PolicySpec::new("strict", quota(1, SEC, 1))
        };
        let (l, clock) = limiter(spec);
        assert!(l.check("k", 1).allowed());
        assert!(l.check("k", 1).penalized());
        clock.advance(Duration::from_secs(5) - Duration::from_nanos(1));
        assert!(l.check("k", 1).penalized());
        clock.advance(Duration::from_nanos(1));
        assert!(l.check("k", 1).allowed());
        // A second breach boxes it again.
        assert!(l.check("k", 1).penalized());
    }

    #[test]
    fn idle_keys_expire_on_sweep() {
        let (l, clock) = limiter(PolicySpec::new("api", quota(10, SEC, 10)));
        for i in 0..100 {
            let _ = l.check(&format!("k{i}"), 1 + i % 10);
        }
        assert_eq!(l.len(), 100);
        // cost c leaves the bucket full again after c × 100 ms.
        clock.advance(MS(500));
        assert_eq!(l.sweep(), 50);
        assert_eq!(l.len(), 50);
        clock.advance(MS(500));
        assert_eq!(l.sweep(), 50);
        assert!(l.is_empty());
    }

    #[test]
    fn idle_timeout_keeps_keys_longer() {
        let spec = PolicySpec {
            idle_timeout: Some(Duration::from_secs(60)),
            ..PolicySpec::new("api", quota(10, SEC, 10))
        };
        let (l, clock) = limiter(spec);
        let _ = l.check("k", 1);
        clock.advance(Duration::from_secs(60));
        assert_eq!(l.sweep(), 0);
        clock.advance(MS(100));
        assert_eq!(l.sweep(), 1);
    }

    #[test]
    fn penalized_keys_are_not_idle() {
        let spec = PolicySpec {
            penalty: Some(Duration::from_secs(60)),
            ..PolicySpec::new("api", quota(10, SEC, 1))
        };
        let (l, clock) = limiter(spec);
        let _ = l.check("k", 1);
        assert!(l.check("k", 1).penalized());
        clock.advance(Duration::from_secs(59));
        assert_eq!(l.sweep(), 0);
        assert!(l.check("k", 0).penalized());
        clock.advance(Duration::from_secs(1));
        assert_eq!(l.sweep(), 1);
    }

    #[test]
    fn evicted_key_starts_with_a_full_bucket() {
        let spec = PolicySpec {
            max_keys: 8,
            ..PolicySpec::new("tiny", quota(1, Duration::from_secs(3600), 2))
        };
        let (l, clock) = limiter(spec);
        assert_eq!(l.shard_count(), 1);
        assert!(l.check("victim", 2).allowed());
        assert!(!l.check("victim", 1).allowed());
        // Later keys spending as much expire later, so "victim" goes first.
        clock.advance(SEC);
        for i in 0..8 {
            assert!(l.check(&format!("flood{i}"), 2).allowed());
        }
        assert_eq!(l.len(), 8);
        let d = l.check("victim", 0);
        assert_eq!((d.remaining, d.reset), (2, Duration::ZERO));
        assert!(l.check("victim", 1).allowed());
    }

    #[test]
    fn a_million_keys_stay_within_the_cap() {
        let spec = PolicySpec {
            max_keys: 50_000,
            ..PolicySpec::new("flood", quota(1, Duration::from_secs(60), 10))
        };
        let (l, clock) = limiter(spec);
        let bound = l.memory_bound_bytes();
        let mut key = String::new();
        let mut peak_len = 0;
        let mut peak_bytes = 0;
        for i in 0..1_000_000u32 {
            key.clear();
            key.push_str("client-");
            key.push_str(itoa(i, &mut [0; 10]));
            assert!(l.check(&key, 1).allowed());
            if i % 10_000 == 0 {
                clock.advance(MS(1));
                peak_len = peak_len.max(l.len());
                peak_bytes = peak_bytes.max(l.accounted_bytes());
            }
        }
        peak_len = peak_len.max(l.len());
        peak_bytes = peak_bytes.max(l.accounted_bytes());
        assert!(peak_len <= 50_000, "{peak_len} keys");
        assert!(peak_len >= 40_000, "the cap is used: {peak_len} keys");
        assert!(peak_bytes <= bound, "{peak_bytes} bytes > bound {bound}");
        // 29..57 bytes per key of the cap, plus the shards themselves.
        let fixed = l.shard_count() * 256;
        assert!(bound <= 57 * 50_000 + fixed, "bound {bound}");
        // Nothing is idle (a minute per token), so nothing can be swept...
        assert_eq!(l.sweep(), 0);
        // ...until the buckets are full again.
        clock.advance(Duration::from_secs(60));
        l.sweep();
        assert!(l.is_empty());
        assert!(l.accounted_bytes() < bound / 10);
    }

    /// Decimal digits of `n` without allocating (keeps the million-key test
    /// fast in debug builds).
    fn itoa(mut n: u32, buf: &mut [u8; 10]) -> &str {
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        std::str::from_utf8(&buf[i..]).expect("ASCII digits")
    }

    #[test]
    fn concurrent_checks_never_exceed_gcra() {
        const THREADS: usize = 4;
        const ROUNDS: usize = 5_000;
        let q = quota(1000, SEC, 50);
        let (l, clock) = limiter(PolicySpec::new("shared", q));
        let l = Arc::new(l);
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let l = Arc::clone(&l);
                let clock = clock.clone();
                thread::spawn(move || {
                    let own = format!("own-{t}");
                    let (mut shared, mut mine) = (0u64, 0u64);
                    for round in 0..ROUNDS {
                        shared += u64::from(l.check("shared", 1).allowed());
                        mine += u64::from(l.check(&own, 1).allowed());
                        if t == 0 && round % 10 == 0 {
                            clock.advance(Duration::from_micros(100));
                        }
                    }
                    (shared, mine)
                })
            })
            .collect();
        let results: Vec<(u64, u64)> = handles
            .into_iter()
            .map(|h| h.join().expect("checker thread panicked"))
            .collect();
        let elapsed = Duration::from_micros(100) * (ROUNDS / 10) as u32;
        // GCRA admits at most burst + elapsed / T on one key.
        let ceiling = 50 + (elapsed.as_nanos() / q.emission_interval().as_nanos()) as u64;
        let shared: u64 = results.iter().map(|r| r.0).sum();
        assert!(
            shared <= ceiling,
            "shared key admitted {shared} > {ceiling}"
        );
        assert!(
            shared >= 50,
            "shared key admitted at least its burst: {shared}"
        );
        for (t, &(_, mine)) in results.iter().enumerate() {
            assert!(mine <= ceiling, "thread {t}: {mine} > {ceiling}");
            assert!(mine >= 50, "thread {t}: {mine}");
        }
    }

    #[test]
    fn concurrent_checks_at_a_fixed_instant_admit_exactly_the_burst() {
        let (l, _clock) = limiter(PolicySpec::new("shared", quota(1, SEC, 100)));
        let l = Arc::new(l);
        let admitted: u64 = (0..4)
            .map(|t| {
                let l = Arc::clone(&l);
                thread::spawn(move || {
                    let own = format!("own-{t}");
                    let mut shared = 0;
                    for _ in 0..1000 {
                        shared += u64::from(l.check("shared", 1).allowed());
                        assert!(l.check(&own, 0).remaining <= 100);
                    }
                    shared
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("checker thread panicked"))
            .sum();
        assert_eq!(admitted, 100);
    }

    #[test]
    fn headers_from_a_limiter() {
        let (l, clock) = limiter(PolicySpec::new("api", quota(100, SEC, 20)));
        assert_eq!(l.policy_header(), r#""api";q=20;w=1"#);
        let d = l.check("k", 5);
        assert_eq!(l.ratelimit_header(&d), r#""api";r=15;t=1"#);
        clock.advance(MS(50));
        let d = l.check("k", 0);
        assert_eq!(d.ratelimit_header("api"), r#""api";r=20;t=0"#);

        let daily = quota(1000, Duration::from_secs(86_400), 1000);
        let (l, _clock) = limiter(PolicySpec::new("daily", daily));
        assert_eq!(l.policy_header(), r#""daily";q=1000;w=86400"#);
        let d = l.check("k", 1);
        assert_eq!(d.ratelimit_header("daily"), r#""daily";r=999;t=87"#);
        let _ = l.check("k", 999);
        let d = l.check("k", 1);
        assert_eq!(d.retry_after_secs(), Some(87));
        assert_eq!(d.ratelimit_header("daily"), r#""daily";r=0;t=86400"#);
    }

    #[test]
    fn shard_count_scales_with_cores_and_keys() {
        let cores = thread::available_parallelism().map_or(1, usize::from);
        let most = (cores * 4).next_power_of_two();
        assert_eq!(shard_count(1), 1);
        assert_eq!(shard_count(127), 1);
        assert_eq!(shard_count(most * MIN_KEYS_PER_SHARD), most);
        assert_eq!(shard_count(most * MAX_KEYS_PER_SHARD), most);
        assert_eq!(shard_count(1_000_000), most.max(64));
        assert_eq!(shard_count(usize::MAX), 1 << 16);
    }

    #[test]
    fn caps_sum_to_max_keys() {
        for max_keys in [1, 63, 64, 1000, 99_999, 1_000_003] {
            let spec = PolicySpec {
                max_keys,
                ..PolicySpec::new("p", quota(1, SEC, 1))
            };
            let (l, _clock) = limiter(spec);
            assert_eq!(l.caps.iter().sum::<usize>(), max_keys);
        }
    }
}
