//! Cathedral's shared HTTP cache core: RFC 9111 shared-cache semantics (with RFC 9213 targeted
//! fields, RFC 5861 stale extensions, RFC 9211 `Cache-Status`), byte-bounded in-memory storage
//! on moka, blake3 integrity checks, request coalescing and purge.
//!
//! The crate knows nothing about sockets or hyper: the server hands it request and response
//! heads and complete bodies, and it answers with decisions ([`Lookup`], [`StoreOutcome`],
//! [`Revalidated`]) and pure helpers for what to send ([`Hit::respond`]).
//!
//! # Request path
//! 1. `let req = CacheRequest::new(&parts, tls);` then `cache.lookup(&req, &policy)`.
//! 2. [`Lookup::Hit`]: `hit.respond(&req)` (304 / 206 / 416 / `HEAD` handled), add
//!    `Cache-Status` from [`CacheStatus::from_lookup`].
//! 3. [`Lookup::Miss`]: `coalescer.join(&cache.key(&req, &policy)?)`. The leader fetches with
//!    [`upstream_headers`] (client conditionals and `Range` removed so the origin sends a whole,
//!    storable response), calls [`Cache::store`], publishes the entry (or "uncacheable") and
//!    answers its client with the original response (incl. `Set-Cookie`), minus
//!    [`client_strip_list`] fields. Waiters get [`Joined::Collapsed`] and serve
//!    [`Cache::collapsed_hit`], or go upstream themselves.
//! 4. [`Lookup::Revalidate`]: fetch with the `conditional` fields. 304 → [`Cache::revalidated`]
//!    and serve its hit; full response → [`Cache::store`]; 5xx or no answer →
//!    [`Cache::serve_stale_on_error`] decides between the stale hit and the error.
//! 5. [`Lookup::Stale`] (stale-while-revalidate): serve the hit now; if `refresh` is `Some`,
//!    spawn the background revalidation with it (one per entry), as in 4.
//! 6. [`Lookup::OnlyIfCachedMiss`]: answer 504. [`Lookup::Bypass`]: pass through; for unsafe
//!    methods call [`Cache::invalidate_after_unsafe`] with the response.
//!
//! # RFC choices
//! - Only `GET` responses are stored; `HEAD` is answered from them. 206 responses are not
//!   stored: ranges are served from whole cached objects ([`serve::evaluate_range`]).
//! - Qualified `private="f"` and `no-cache="f"`: the response is stored without the listed
//!   fields (they are never served from cache); the rest is reused normally.
//! - `must-revalidate`, `proxy-revalidate` and unqualified `no-cache` forbid any stale serving
//!   (`max-stale`, `stale-while-revalidate`, `stale-if-error`). `s-maxage` implies
//!   `proxy-revalidate`, so a client's `max-stale` is not honoured, but an explicit
//!   `stale-while-revalidate` / `stale-if-error` from the origin in the same response is.
//! - `immutable` (RFC 8246) is about clients not revalidating while fresh; this cache does not
//!   change behaviour for it: a request's `no-cache` or `max-age=0` still revalidates.
//! - A valid `Cathedral-CDN-Cache-Control`, else a valid `CDN-Cache-Control`, replaces
//!   `Cache-Control` and `Expires` entirely for this cache (RFC 9213).
//! - Duplicate directives: the first value wins. Invalid `max-age` / `s-maxage` = 0 (stale).
//! - Freshness is always computed at lookup from the injected [`Clock`]; moka's expiry only
//!   bounds retention (freshness + stale windows + revalidation grace when a validator exists).

mod cache;
mod clock;
mod coalesce;
mod directives;
mod entry;
mod freshness;
mod integrity;
mod key;
mod policy;
pub mod serve;
mod stats;
mod status;
mod storable;

pub use cache::{BypassReason, Cache, CacheConfig, Lookup, MissReason, Revalidated, StoreOutcome};
pub use clock::{Clock, ManualClock, SystemClock};
pub use coalesce::{AloneReason, Coalescer, Joined, LeaderGuard};
pub use directives::{CATHEDRAL_CDN_CACHE_CONTROL, CDN_CACHE_CONTROL};
pub use entry::{
    CACHE_TAG, Entry, Hit, RefreshGuard, SURROGATE_KEY, client_strip_list, strip_for_client,
};
pub use freshness::{Timing, is_heuristically_cacheable};
pub use integrity::{Integrity, ScrubReport, strong_etag};
pub use key::{CacheRequest, KeyOptions};
pub use policy::{ContentClass, RoutePolicy, TtlMode};
pub use serve::{RangeOutcome, Served, upstream_headers};
pub use stats::Stats;
pub use status::{CACHE_NAME, CACHE_STATUS, CacheStatus, Fwd};
pub use storable::NotStoredReason;
