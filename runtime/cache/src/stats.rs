//! Cache counters (lock-free atomics) and their point-in-time [`Stats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared with moka's eviction listener.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale_served: AtomicU64,
    pub revalidations: AtomicU64,
    pub stores: AtomicU64,
    pub not_stored: AtomicU64,
    pub evicted_size: AtomicU64,
    pub evicted_expired: AtomicU64,
    pub removed: AtomicU64,
    pub integrity_failures: AtomicU64,
    pub scrubbed: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// A snapshot of the cache's counters. Entries are stored responses (variants count separately).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Lookups answered from the cache with a fresh (or client-accepted stale) response.
    pub hits: u64,
    /// Lookups that found nothing usable (including `only-if-cached` misses).
    pub misses: u64,
    /// Stale responses served: `stale-while-revalidate`, `max-stale`, `stale-if-error`.
    pub stale_served: u64,
    /// Lookups that asked the caller to validate a stored response upstream.
    pub revalidations: u64,
    /// Responses stored (including 304 updates).
    pub stores: u64,
    /// Responses offered to `store` and refused.
    pub not_stored: u64,
    /// Entries evicted to stay within the memory bound (or refused admission).
    pub evicted_size: u64,
    /// Entries that reached the end of their retention.
    pub evicted_expired: u64,
    /// Entries removed explicitly: purge, invalidation, integrity failure.
    pub removed: u64,
    /// Bodies whose blake3 hash no longer matched.
    pub integrity_failures: u64,
    /// Entries re-verified by the scrubber.
    pub scrubbed: u64,
    /// Stored responses (all variants).
    pub entries: u64,
    /// Accounted (weighted) bytes.
    pub bytes: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self, entries: u64, bytes: u64) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            hits: get(&self.hits),
            misses: get(&self.misses),
            stale_served: get(&self.stale_served),
            revalidations: get(&self.revalidations),
            stores: get(&self.stores),
            not_stored: get(&self.not_stored),
            evicted_size: get(&self.evicted_size),
            evicted_expired: get(&self.evicted_expired),
            removed: get(&self.removed),
            integrity_failures: get(&self.integrity_failures),
            scrubbed: get(&self.scrubbed),
            entries,
            bytes,
        }
    }
}
