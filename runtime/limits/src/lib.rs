//! Rate limiting for Cathedral: GCRA limits over a bounded, sharded key store.
//!
//! # What it does
//!
//! A [`Limiter`] enforces one policy ([`PolicySpec`]): "`rate` requests per
//! `period`, up to `burst` at once" ([`Quota`]), separately for every key (a
//! client address, an API key, a user id: any `&str`). [`Limiter::check`]
//! answers with a [`Decision`]: whether the request may proceed, how much of
//! the bucket is left, when it is full again, and when to retry, plus the
//! values of the `RateLimit-Policy`, `RateLimit` and `Retry-After` headers.
//! A limiter is `Send + Sync`; one per policy is shared behind an `Arc` by
//! every request and Wasm instance of a node.
//!
//! This crate knows nothing about tokio, hyper or wasmtime: time comes from an
//! injected [`clock::Clock`] (governor's clock abstraction; tests use
//! [`clock::FakeRelativeClock`]), and headers are plain strings.
//!
//! # The algorithm
//!
//! The Generic Cell Rate Algorithm (GCRA), as implemented by the `governor`
//! crate: a token bucket of `burst` tokens that refills one token every
//! emission interval `T = period / rate`, stored as a single number per key,
//! the *theoretical arrival time* (TAT): the instant at which the bucket is
//! full again. A request of cost `n` at time `now` is admitted when
//! `now >= TAT + (n - 1)·T - (burst - 1)·T`, and then moves the TAT to
//! `max(TAT, now) + n·T`. Over any interval of length `d` a key is admitted
//! at most `burst + d / T` cost units.
//!
//! governor's keyed limiter keeps its keys in an unbounded map. We keep our
//! own bounded store and let governor decide on one key's TAT at a time (see
//! `gcra.rs`): the store locates and locks the key's bucket, lends its TAT
//! to governor's GCRA, and writes back the result.
//!
//! * Cost `0` is a pure query: it reports the bucket without consuming from it
//!   (and without creating an entry for an unknown key).
//! * A cost above `burst` can never be admitted: [`Outcome::ExceedsBurst`],
//!   with no `retry_after`.
//! * Optional penalty box ([`PolicySpec::penalty`]): a key that is refused
//!   is refused outright for that long (its bucket keeps refilling meanwhile),
//!   then released.
//!
//! # The key store, its bound and its eviction policy
//!
//! Keys are not stored as strings: each key is reduced to a 64-bit SipHash-1-3
//! digest under a random per-limiter seed, so an entry has a fixed size
//! whatever the key's length and no allocation per key. Two distinct keys
//! share a bucket only if their digests collide: with `k` live keys that
//! happens with probability about `k² / 2⁶⁵` (≈ 3·10⁻⁸ for a million keys),
//! and without the seed a client cannot aim for a collision.
//!
//! The digests are spread over `S` shards, each a `Mutex<HashMap<u64,
//! Entry>>` on its own cache lines, so checks on different keys rarely
//! contend. `S` is the next power of two ≥ 4 × the available cores, raised
//! until a shard holds at most 16,384 keys (a shard makes room by rebuilding
//! its table under its lock, so this bounds that pause to a fraction of a
//! millisecond), and lowered while a shard would hold fewer than 64.
//!
//! * **Idle expiry.** An entry whose bucket is full again (and whose penalty,
//!   if any, is over) carries no information: dropping it changes no future
//!   decision. Such entries are dropped by [`Limiter::sweep`] (call it
//!   periodically; it locks one shard at a time) and whenever a shard has to
//!   make room. [`PolicySpec::idle_timeout`] keeps them that much longer.
//! * **Hard cap.** `max_keys` is split exactly over the shards. A new key in a
//!   full shard makes the shard drop its idle entries and, if that frees less
//!   than an eighth of the shard, evict the live entries whose state would
//!   expire soonest (the smallest TAT / penalty end: the keys closest to a full
//!   bucket) until an eighth is free, so that O(shard) rebuild runs once per
//!   eighth of a shard of new keys. **An evicted key starts again with a full
//!   bucket** (and no penalty): under a flood of distinct keys, limits become
//!   more lenient, never stricter, and memory stays bounded.
//! * **Memory bound.** A shard's table never grows past what
//!   `HashMap::with_capacity(shard_cap)` allocates (we rebuild it ourselves
//!   instead of letting it grow or accumulate tombstones): at most
//!   `next_power_of_two(shard_cap · 8/7)` slots of 25 bytes (8 digest + 16
//!   entry + 1 control byte). That is 29 to 57 bytes per key of `max_keys`
//!   (52 MB for a million keys, 3.3 MB for 100,000), plus ~136 bytes per
//!   shard; [`Limiter::memory_bound_bytes`] gives the exact figure for a
//!   limiter and [`Limiter::accounted_bytes`] the current estimate. While a
//!   shard rebuilds it briefly holds its old table and a list of its
//!   survivors as well (at most ~1 MB with 16,384-key shards).
//!
//! # Counters are per node
//!
//! Every count lives in this process's memory: a key is limited separately on
//! each edge node (and starts afresh when the node restarts). A policy of
//! 100 requests/s lets a client that spreads its requests over `N` nodes make
//! up to `N × 100`. Nothing here talks to other nodes.
//!
//! # Headers
//!
//! [`Quota::policy_header`], [`Decision::ratelimit_header`] and
//! [`Decision::retry_after_secs`] follow draft-ietf-httpapi-ratelimit-headers-09
//! (structured fields): see `headers.rs`.

mod decision;
mod error;
mod gcra;
mod headers;
mod limiter;
mod quota;
mod store;

pub use decision::{Decision, Outcome};
pub use error::{Error, Result};
pub use limiter::Limiter;
pub use quota::{DEFAULT_MAX_KEYS, MAX_KEYS, MAX_WINDOW, PolicySpec, Quota};

/// governor's clock abstraction, re-exported: implement [`clock::Clock`] to
/// drive a [`Limiter`] from another time source; tests use
/// [`clock::FakeRelativeClock`].
pub mod clock {
    pub use governor::clock::{Clock, DefaultClock, FakeRelativeClock, QuantaClock, Reference};
}
