//! Benchmarks of `cathedral-limits`: nanoseconds per `Limiter::check` on one
//! hot key, on a million cold keys, and on a flood of new keys past the cap,
//! single-threaded and from two threads, each beside a naive
//! `Mutex<HashMap<String, (tokens, last)>>` token bucket.

use std::collections::HashMap;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use cathedral_limits::{Limiter, PolicySpec, Quota};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// Distinct keys in the cold-key benchmarks.
const COLD_KEYS: usize = 1_000_000;

/// The hot-key quota: so generous (10⁹ per second, burst 10⁶) that every
/// check is admitted, the path that writes the bucket back.
fn hot_quota() -> Quota {
    let rate = NonZeroU32::new(1_000_000_000).expect("non-zero");
    let burst = NonZeroU32::new(1_000_000).expect("non-zero");
    Quota::per_second(rate, burst).expect("valid quota")
}

/// The cold-key quota: one per hour, burst 1000. Every check in a run is
/// admitted, and every key stays live (not idle) for hours, so the store
/// really holds all the keys it is given and the flood really evicts.
fn cold_quota() -> Quota {
    let one = NonZeroU32::new(1).expect("non-zero");
    let burst = NonZeroU32::new(1000).expect("non-zero");
    Quota::new(one, Duration::from_secs(3600), burst).expect("valid quota")
}

fn limiter(quota: Quota, max_keys: usize) -> Limiter {
    let spec = PolicySpec {
        max_keys,
        ..PolicySpec::new("bench", quota)
    };
    Limiter::new(spec).expect("valid policy")
}

/// The baseline: one mutex over a `HashMap<String, (tokens, last refill)>`,
/// refilled from `Instant::now()` on every check.
struct NaiveBucket {
    map: Mutex<HashMap<String, (f64, Instant)>>,
    per_sec: f64,
    burst: f64,
}

impl NaiveBucket {
    fn new(quota: Quota) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            per_sec: f64::from(quota.rate.get()) / quota.period.as_secs_f64(),
            burst: f64::from(quota.burst.get()),
        }
    }

    fn check(&self, key: &str, cost: u32) -> bool {
        let cost = f64::from(cost);
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get_mut(key) {
            Some((tokens, last)) => {
                let earned = now.duration_since(*last).as_secs_f64() * self.per_sec;
                *tokens = (*tokens + earned).min(self.burst);
                *last = now;
                let allowed = *tokens >= cost;
                if allowed {
                    *tokens -= cost;
                }
                allowed
            }
            None => {
                let allowed = cost <= self.burst;
                let left = if allowed {
                    self.burst - cost
                } else {
                    self.burst
                };
                map.insert(key.to_owned(), (left, now));
                allowed
            }
        }
    }
}

fn cold_keys(prefix: &str) -> Vec<String> {
    (0..COLD_KEYS).map(|i| format!("{prefix}-{i}")).collect()
}

fn hot_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("limits/hot_key");
    let limiter = limiter(hot_quota(), 1000);
    group.bench_function("cathedral", |b| {
        b.iter(|| limiter.check(black_box("203.0.113.7"), 1));
    });
    let naive = NaiveBucket::new(hot_quota());
    group.bench_function("naive_mutex_hashmap", |b| {
        b.iter(|| naive.check(black_box("203.0.113.7"), 1));
    });
    group.finish();
}

fn cold_1m_keys(c: &mut Criterion) {
    let mut group = c.benchmark_group("limits/cold_1m_keys");
    let keys = cold_keys("client");
    let limiter = limiter(cold_quota(), 2 * COLD_KEYS);
    let naive = NaiveBucket::new(cold_quota());
    for key in &keys {
        let _ = limiter.check(key, 1);
        naive.check(key, 1);
    }
    group.bench_function("cathedral", |b| {
        let mut cycle = keys.iter().cycle();
        b.iter(|| {
            let key = cycle.next().expect("cycle never ends");
            limiter.check(black_box(key), 1)
        });
    });
    group.bench_function("naive_mutex_hashmap", |b| {
        let mut cycle = keys.iter().cycle();
        b.iter(|| {
            let key = cycle.next().expect("cycle never ends");
            naive.check(black_box(key), 1)
        });
    });
    group.finish();
}

/// A flood of new keys: a million keys cycled through a store capped at
/// 100,000, so every check inserts a key and the store keeps evicting. The
/// baseline has no cap: its map just grows to the million keys.
fn flood_new_keys(c: &mut Criterion) {
    let mut group = c.benchmark_group("limits/flood_1m_keys_cap_100k");
    let keys = cold_keys("flood");
    let limiter = limiter(cold_quota(), 100_000);
    let naive = NaiveBucket::new(cold_quota());
    for key in &keys {
        let _ = limiter.check(key, 1);
        naive.check(key, 1);
    }
    group.bench_function("cathedral", |b| {
        let mut cycle = keys.iter().cycle();
        b.iter(|| {
            let key = cycle.next().expect("cycle never ends");
            limiter.check(black_box(key), 1)
        });
    });
    group.bench_function("naive_mutex_hashmap", |b| {
        let mut cycle = keys.iter().cycle();
        b.iter(|| {
            let key = cycle.next().expect("cycle never ends");
            naive.check(black_box(key), 1)
        });
    });
    group.finish();
}

/// Runs `iters` checks on each of two threads at once, each cycling through
/// its own keys; returns the wall time (so the result is the time per check
/// of one thread while the other runs too).
fn two_threads(
    iters: u64,
    key_sets: &[Vec<String>; 2],
    check: &(dyn Fn(&str) -> bool + Sync),
) -> Duration {
    let start = Instant::now();
    thread::scope(|s| {
        for keys in key_sets {
            s.spawn(move || {
                for key in keys.iter().cycle().take(iters as usize) {
                    black_box(check(black_box(key)));
                }
            });
        }
    });
    start.elapsed()
}

/// Two threads, one hot key each.
fn two_threads_hot(c: &mut Criterion) {
    let mut group = c.benchmark_group("limits/2_threads_hot_key_each");
    let key_sets = [
        vec!["203.0.113.7".to_owned()],
        vec!["198.51.100.9".to_owned()],
    ];
    let limiter = limiter(hot_quota(), 1000);
    let naive = NaiveBucket::new(hot_quota());
    group.bench_function(BenchmarkId::new("cathedral", "per_thread"), |b| {
        b.iter_custom(|iters| two_threads(iters, &key_sets, &|k| limiter.check(k, 1).allowed()));
    });
    group.bench_function(BenchmarkId::new("naive_mutex_hashmap", "per_thread"), |b| {
        b.iter_custom(|iters| two_threads(iters, &key_sets, &|k| naive.check(k, 1)));
    });
    group.finish();
}

/// Two threads, each cycling through its own million cold keys.
fn two_threads_cold(c: &mut Criterion) {
    let mut group = c.benchmark_group("limits/2_threads_cold_keys");
    let key_sets = [cold_keys("a"), cold_keys("b")];
    let limiter = limiter(cold_quota(), 4 * COLD_KEYS);
    let naive = NaiveBucket::new(cold_quota());
    for key in key_sets.iter().flatten() {
        let _ = limiter.check(key, 1);
        naive.check(key, 1);
    }
    group.bench_function(BenchmarkId::new("cathedral", "per_thread"), |b| {
        b.iter_custom(|iters| two_threads(iters, &key_sets, &|k| limiter.check(k, 1).allowed()));
    });
    group.bench_function(BenchmarkId::new("naive_mutex_hashmap", "per_thread"), |b| {
        b.iter_custom(|iters| two_threads(iters, &key_sets, &|k| naive.check(k, 1)));
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = hot_key, cold_1m_keys, flood_new_keys, two_threads_hot, two_threads_cold
}
criterion_main!(benches);
