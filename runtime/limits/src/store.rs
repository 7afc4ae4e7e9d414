//! One shard of the bounded key store: key digests → bucket state, with idle
//! expiry, a hard cap with eviction, and a table that never grows past the
//! size its cap needs.
//!
//! Invariant: we insert only while `len < capacity`, so the `HashMap` never
//! resizes or rehashes on its own; every reallocation goes through
//! [`Shard::rebuild`], which sizes the new table for at most `cap` entries
//! and leaves no tombstones behind.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem;

/// A key's state. Instants are nanoseconds since the limiter's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Entry {
    /// GCRA theoretical arrival time: when the bucket is full again.
    pub(crate) tat: u64,
    /// End of the penalty box; 0 or past = none.
    pub(crate) penalty_until: u64,
}

impl Entry {
    /// When this entry stops carrying information.
    fn expires_at(&self) -> u64 {
        self.tat.max(self.penalty_until)
    }

    /// Whether the entry may be dropped at `now`, `grace` nanoseconds after
    /// it stopped carrying information.
    pub(crate) fn idle(&self, now: u64, grace: u64) -> bool {
        self.expires_at().saturating_add(grace) <= now
    }
}

/// Keys are already SipHash digests: use them as their own hash.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed; this keeps the hasher total anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Table = HashMap<u64, Entry, BuildHasherDefault<DigestHasher>>;

/// Bytes per table slot: the digest, the entry, and a control byte.
pub(crate) const SLOT_BYTES: usize = mem::size_of::<(u64, Entry)>() + 1;

/// Control bytes hashbrown allocates beyond the slot count (one SIMD group).
const GROUP_BYTES: usize = 16;

/// Smallest table a growing shard allocates.
const MIN_CAPACITY: usize = 16;

/// One shard. Lives behind a `Mutex` in the limiter.
#[derive(Debug)]
pub(crate) struct Shard {
    table: Table,
    /// Most entries held at once.
    cap: usize,
    /// `table.capacity()` right after the last rebuild, before any removal
    /// could leave tombstones: tells the table's slot count.
    full_capacity: usize,
}

impl Shard {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            table: Table::default(),
            cap: cap.max(1),
            full_capacity: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn get(&self, digest: u64) -> Option<&Entry> {
        self.table.get(&digest)
    }

    pub(crate) fn get_mut(&mut self, digest: u64) -> Option<&mut Entry> {
        self.table.get_mut(&digest)
    }

    /// Inserts a key not yet present, making room first if the shard is at
    /// its cap or its table is full.
    pub(crate) fn insert(&mut self, digest: u64, entry: Entry, now: u64, grace: u64) {
        let at_cap = self.table.len() >= self.cap;
        if at_cap || self.table.len() >= self.table.capacity() {
            self.rebuild(now, grace, at_cap);
        }
        self.table.insert(digest, entry);
    }

    /// Drops idle entries; returns how many. Shrinks the table when it has
    /// become mostly empty.
    pub(crate) fn sweep(&mut self, now: u64, grace: u64) -> usize {
        let before = self.table.len();
        self.table.retain(|_, e| !e.idle(now, grace));
        let removed = before - self.table.len();
        if self.full_capacity > MIN_CAPACITY && self.table.len() * 4 < self.full_capacity {
            self.rebuild(now, grace, false);
        }
        removed
    }

    /// Moves the live entries into a fresh table sized for growth (double the
    /// live entries, at most `cap`). To `make_room` at the cap, it also evicts
    /// the live entries that would expire soonest until an eighth of the cap
    /// is free, so this O(cap) rebuild runs at most once per `cap / 8` new
    /// keys. Afterwards `len < capacity` and `len < cap`.
    fn rebuild(&mut self, now: u64, grace: u64, make_room: bool) {
        let old = mem::take(&mut self.table);
        let mut live: Vec<(u64, Entry)> = old
            .into_iter()
            .filter(|(_, e)| !e.idle(now, grace))
            .collect();
        let keep = self.cap - (self.cap / 8).max(1);
        if live.len() >= self.cap || (make_room && live.len() > keep) {
            let evict = live.len() - keep;
            if keep > 0 {
                live.select_nth_unstable_by_key(evict, |(_, e)| e.expires_at());
            }
            live.drain(..evict);
        }
        let capacity = (live.len() * 2)
            .clamp(MIN_CAPACITY, MAX_TABLE)
            .min(self.cap);
        let mut table = Table::with_capacity_and_hasher(capacity, Default::default());
        table.extend(live);
        self.full_capacity = table.capacity();
        self.table = table;
    }

    /// Estimated bytes held by the table (hashbrown's layout: a power-of-two
    /// slot count, a control byte per slot plus one group).
    pub(crate) fn accounted_bytes(&self) -> usize {
        table_bytes(slots_for_capacity(self.full_capacity))
    }

    /// The most bytes this shard's table can ever hold.
    pub(crate) fn bound_bytes(cap: usize) -> usize {
        table_bytes(slots_for_entries(cap.max(1)))
    }
}

/// Caps the growth step so `len * 2` cannot overflow in `rebuild`.
const MAX_TABLE: usize = usize::MAX / 4;

fn table_bytes(slots: usize) -> usize {
    if slots == 0 {
        0
    } else {
        slots.saturating_mul(SLOT_BYTES).saturating_add(GROUP_BYTES)
    }
}

/// Slots of a hashbrown table whose usable capacity is `capacity` (7/8 of
/// the slots, or slots − 1 for tables under 8 slots).
fn slots_for_capacity(capacity: usize) -> usize {
    match capacity {
        0 => 0,
        1..=7 => capacity + 1,
        _ => capacity / 7 * 8,
    }
}

/// An upper bound on the slots of `HashMap::with_capacity(entries)`.
fn slots_for_entries(entries: usize) -> usize {
    if entries < 15 {
        16
    } else {
        (entries.saturating_mul(8) / 7).next_power_of_two()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tat: u64) -> Entry {
        Entry {
            tat,
            penalty_until: 0,
        }
    }

    #[test]
    fn idle_entries() {
        #[track_caller]
        fn check(tat: u64, penalty_until: u64, now: u64, grace: u64, idle: bool) {
            let e = Entry { tat, penalty_until };
            assert_eq!(e.idle(now, grace), idle, "{e:?} now {now} grace {grace}");
        }
        check(10, 0, 9, 0, false);
        check(10, 0, 10, 0, true);
        check(10, 20, 10, 0, false);
        check(10, 20, 20, 0, true);
        check(10, 0, 10, 5, false);
        check(10, 0, 15, 5, true);
        check(u64::MAX, 0, u64::MAX, u64::MAX, true);
    }

    #[test]
    fn cap_evicts_soonest_expiring_first() {
        let mut shard = Shard::new(16);
        for d in 0..16 {
            shard.insert(d, entry(1000 + d), 0, 0);
        }
        assert_eq!(shard.len(), 16);
        // Full: the two entries expiring soonest (tat 1000, 1001) make room.
        shard.insert(100, entry(5000), 0, 0);
        assert_eq!(shard.len(), 15);
        assert!(shard.get(0).is_none() && shard.get(1).is_none());
        assert!(shard.get(2).is_some() && shard.get(100).is_some());
    }

    #[test]
    fn idle_entries_make_room_before_live_ones() {
        let mut shard = Shard::new(16);
        for d in 0..16 {
            // Even digests are idle at time 500, odd ones are not.
            shard.insert(d, entry(if d % 2 == 0 { 100 } else { 1000 }), 0, 0);
        }
        shard.insert(100, entry(1000), 500, 0);
        assert_eq!(shard.len(), 9);
        assert!((1..16).step_by(2).all(|d| shard.get(d).is_some()));
    }

    #[test]
    fn making_room_frees_an_eighth_even_when_few_are_idle() {
        let mut shard = Shard::new(16);
        for d in 0..16 {
            // Only digest 0 is idle at time 500.
            shard.insert(d, entry(if d == 0 { 100 } else { 1000 + d }), 0, 0);
        }
        shard.insert(100, entry(5000), 500, 0);
        // 16 - 16/8 kept (the idle one and the soonest to expire went), then
        // the new key.
        assert_eq!(shard.len(), 15);
        assert!(shard.get(0).is_none() && shard.get(1).is_none());
        assert!(shard.get(2).is_some() && shard.get(100).is_some());
    }

    #[test]
    fn table_never_outgrows_its_cap() {
        let cap = 1000;
        let mut shard = Shard::new(cap);
        for d in 0..100_000 {
            // Every entry stays live; churn through tombstones and evictions.
            shard.insert(d, entry(u64::MAX - d), 0, 0);
            if d % 97 == 0 {
                shard.table.remove(&(d / 2));
            }
            assert!(shard.len() <= cap);
            assert!(shard.accounted_bytes() <= Shard::bound_bytes(cap));
        }
        assert_eq!(Shard::bound_bytes(cap), 2048 * SLOT_BYTES + GROUP_BYTES);
    }

    #[test]
    fn sweep_drops_idle_and_shrinks() {
        let mut shard = Shard::new(10_000);
        for d in 0..10_000 {
            shard.insert(d, entry(if d < 9_900 { 10 } else { 100 }), 0, 0);
        }
        let big = shard.accounted_bytes();
        assert_eq!(shard.sweep(50, 0), 9_900);
        assert_eq!(shard.len(), 100);
        assert!(shard.accounted_bytes() < big / 10);
        assert_eq!(shard.sweep(100, 0), 100);
        assert_eq!(shard.len(), 0);
    }
}
