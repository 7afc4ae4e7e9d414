//! The cache: byte-bounded moka storage of response variants, lookups (RFC 9111 §4), stores,
//! 304 updates, invalidation after unsafe methods, purge through secondary indexes kept by
//! moka's eviction listener, integrity sampling and the scrubber.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LOCATION, ETAG, LOCATION};
use http::uri::Authority;
use http::{HeaderMap, Method, StatusCode, Uri};
use moka::Expiry;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use tracing::{debug, error};

use crate::clock::Clock;
use crate::directives::{MaxStale, RequestDirectives, ResponseDirectives};
use crate::entry::{ENTRY_OVERHEAD, Entry, Hit, RefreshGuard, header_bytes, surrogate_keys};
use crate::freshness::{Timing, corrected_initial_age};
use crate::integrity::{Integrity, ScrubReport};
use crate::key::{
    CacheRequest, KeyOptions, SecondaryKey, key_for, origin, primary_key, request_origin,
    resolve_reference, vary_fields,
};
use crate::policy::{ContentClass, RoutePolicy};
use crate::stats::{Counters, Stats, add, bump};
use crate::storable::{
    Analysis, NotStoredReason, analyze, content_length, is_upgrade, merge_304, precheck,
    storage_headers,
};

/// Cache sizing and behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Memory bound: weighted bytes (body + headers + key + a fixed per-entry overhead).
    pub memory_bytes: u64,
    /// Larger bodies are not stored; the caller streams them through.
    pub max_object_bytes: u64,
    /// Verification of bodies on memory hits.
    pub integrity: Integrity,
    /// How long a stale entry with a validator is kept for conditional revalidation
    /// (beyond its `stale-while-revalidate` / `stale-if-error` windows).
    pub revalidation_grace: Duration,
    /// Variants (distinct `Vary` selections) kept per URL; the oldest go first.
    pub max_variants: usize,
    /// Upper bound on how long any entry is retained.
    pub max_retention: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            max_object_bytes: 16 << 20,
            integrity: Integrity::default(),
            revalidation_grace: Duration::from_secs(3600),
            max_variants: 16,
            max_retention: Duration::from_secs(400 * 86_400),
        }
    }
}

/// Why a lookup found nothing usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissReason {
    /// Nothing stored for the URL.
    Uri,
    /// Stored variants exist but none matches the request's `Vary` fields.
    Vary,
    /// The request has `Authorization` and the stored response does not allow sharing it.
    Authorization,
    /// The stored body failed its integrity check and was evicted.
    Integrity,
}

/// Why a request does not use the cache at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BypassReason {
    /// Not `GET`/`HEAD`. After the response, call [`Cache::invalidate_after_unsafe`].
    Method,
    /// No usable host to key on.
    NoHost,
    /// WebSocket upgrade or a real-time route: pass through.
    RealTime,
}

/// The result of [`Cache::lookup`].
#[derive(Debug)]
pub enum Lookup {
    /// Serve the hit (fresh, or stale within the client's `max-stale`).
    Hit(Hit),
    /// `stale-while-revalidate`: serve the stale hit now. `refresh` is `Some` for exactly one
    /// caller per entry: it revalidates in the background (conditional fields on the guard),
    /// then calls [`Cache::revalidated`] or [`Cache::store`] and drops the guard.
    Stale {
        /// The stale response to serve.
        hit: Hit,
        /// The background refresh duty, if this request won it.
        refresh: Option<RefreshGuard>,
    },
    /// Validate upstream before serving: send `conditional` (empty when the entry has no
    /// validator). On 304 call [`Cache::revalidated`]; on a full response [`Cache::store`];
    /// on a 5xx or no answer, [`Cache::serve_stale_on_error`] says whether to serve `hit`.
    Revalidate {
        /// The stored response being validated.
        hit: Hit,
        /// `If-None-Match` / `If-Modified-Since` to add to the upstream request.
        conditional: HeaderMap,
    },
    /// Fetch upstream (coalesce with [`crate::Coalescer`]), then [`Cache::store`].
    Miss(MissReason),
    /// The request said `only-if-cached` and nothing usable is stored: answer 504.
    OnlyIfCachedMiss,
    /// Don't use the cache for this request.
    Bypass(BypassReason),
}

/// The result of [`Cache::store`].
#[derive(Debug)]
pub enum StoreOutcome {
    /// Stored (admission by moka's policy may still drop it later).
    Stored(Arc<Entry>),
    /// Not stored; serve the response to this client only.
    NotStored(NotStoredReason),
}

/// The result of [`Cache::revalidated`].
#[derive(Debug)]
pub enum Revalidated {
    /// The stored response was updated; serve this hit.
    Stored(Hit),
    /// Serve this updated response to this request; it is no longer stored.
    NotStored {
        /// The updated response.
        hit: Hit,
        /// Why it is not stored any more.
        reason: NotStoredReason,
    },
    /// The 304's validator does not match the stored response: refetch unconditionally.
    Mismatch,
}

/// The stored responses of one URL (one moka entry).
#[derive(Debug)]
struct Variants {
    entries: Vec<Arc<Entry>>,
    weight: u32,
    retain: Duration,
}

impl Variants {
    fn new(entries: Vec<Arc<Entry>>, now: SystemTime) -> Arc<Self> {
        let weight = entries
            .iter()
            .map(|e| e.weight)
            .fold(0u32, u32::saturating_add);
        let retain = entries
            .iter()
            .map(|e| e.retain_until.duration_since(now).unwrap_or_default())
            .max()
            .unwrap_or_default();
        Arc::new(Self {
            entries,
            weight,
            retain,
        })
    }
}

/// moka's per-entry expiry: the retention computed from the cache clock at store time
/// (freshness + stale windows + revalidation grace). Freshness itself is decided at lookup.
struct RetainExpiry;

impl Expiry<Arc<str>, Arc<Variants>> for RetainExpiry {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Arc<Variants>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.retain)
    }

    fn expire_after_update(
        &self,
        _key: &Arc<str>,
        value: &Arc<Variants>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.retain)
    }
}

type IndexKey = (Arc<str>, u64);
type KeyIndex = BTreeMap<IndexKey, Weak<Entry>>;
type TagIndex = HashMap<Box<str>, HashMap<u64, Arc<str>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Secondary indexes: ordered (key, entry id) for prefix purge and the scrubber cursor, and
/// surrogate key → entries. Entries are added before they enter moka and removed by the
/// eviction listener (or by the store path for variants it replaces), never by scanning.
#[derive(Debug, Default)]
struct Indexes {
    by_key: Mutex<KeyIndex>,
    by_tag: Mutex<TagIndex>,
}

impl Indexes {
    fn add(&self, e: &Arc<Entry>) {
        lock(&self.by_key).insert((Arc::clone(&e.key), e.id), Arc::downgrade(e));
        if !e.surrogate_keys.is_empty() {
            let mut tags = lock(&self.by_tag);
            for tag in &e.surrogate_keys {
                tags.entry(tag.clone())
                    .or_default()
                    .insert(e.id, Arc::clone(&e.key));
            }
        }
    }

    fn remove(&self, entries: &[Arc<Entry>]) {
        if entries.is_empty() {
            return;
        }
        {
            let mut keys = lock(&self.by_key);
            for e in entries {
                keys.remove(&(Arc::clone(&e.key), e.id));
            }
        }
        let mut tags = lock(&self.by_tag);
        for e in entries {
            for tag in &e.surrogate_keys {
                if let Some(ids) = tags.get_mut(tag) {
                    ids.remove(&e.id);
                    if ids.is_empty() {
                        tags.remove(tag);
                    }
                }
            }
        }
    }

    fn len(&self) -> usize {
        lock(&self.by_key).len()
    }
}

/// State shared with moka's eviction listener.
#[derive(Debug, Default)]
struct Shared {
    indexes: Indexes,
    counters: Counters,
}

impl Shared {
    fn on_removal(&self, value: &Variants, cause: RemovalCause) {
        let n = value.entries.len() as u64;
        match cause {
            // The store path unindexes the variants it drops; the others live on.
            RemovalCause::Replaced => return,
            RemovalCause::Size => add(&self.counters.evicted_size, n),
            RemovalCause::Expired => add(&self.counters.evicted_expired, n),
            RemovalCause::Explicit => add(&self.counters.removed, n),
        }
        self.indexes.remove(&value.entries);
    }
}

/// Which stored variants a new entry replaces.
#[derive(Clone, Copy)]
enum Replace<'a> {
    /// Every variant the storing request selects.
    Matching(&'a HeaderMap),
    /// One entry (a 304 update or a test corruption).
    Id(u64),
}

/// The shared HTTP cache. Share it behind an `Arc`; every method takes `&self`.
pub struct Cache {
    store: moka::sync::Cache<Arc<str>, Arc<Variants>>,
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
    config: CacheConfig,
    next_id: AtomicU64,
    sample_tick: AtomicU64,
    scrub_cursor: Mutex<Option<IndexKey>>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("config", &self.config)
            .field("entries", &self.entries())
            .field("bytes", &self.bytes())
            .finish_non_exhaustive()
    }
}

fn secs(n: u32) -> Duration {
    Duration::from_secs(u64::from(n))
}

/// The path (and query) part of a primary key.
fn key_path(key: &str) -> &str {
    let rest = key.split_once("://").map_or(key, |(_, r)| r);
    rest.find('/').map_or("/", |i| &rest[i..])
}

fn etag_opaque(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(ETAG)?.to_str().ok()?.trim();
    Some(v.strip_prefix("W/").unwrap_or(v))
}

impl Cache {
    /// A cache bounded by `config.memory_bytes`, reading time from `clock`.
    pub fn new(config: CacheConfig, clock: Arc<dyn Clock>) -> Self {
        let shared = Arc::new(Shared::default());
        let listener = Arc::clone(&shared);
        let store = moka::sync::Cache::builder()
            .max_capacity(config.memory_bytes)
            .weigher(|_key: &Arc<str>, value: &Arc<Variants>| value.weight)
            .expire_after(RetainExpiry)
            .eviction_listener(move |_key, value: Arc<Variants>, cause| {
                listener.on_removal(&value, cause);
            })
            .build();
        Self {
            store,
            shared,
            clock,
            config,
            next_id: AtomicU64::new(1),
            sample_tick: AtomicU64::new(0),
            scrub_cursor: Mutex::new(None),
        }
    }

    /// The cache's clock reading; use it for [`Timing`] of upstream exchanges.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The primary key of a request: the key to coalesce misses on.
    pub fn key(&self, req: &CacheRequest<'_>, policy: &RoutePolicy) -> Option<String> {
        primary_key(req, &policy.key)
    }

    /// Looks a request up (RFC 9111 §4). `HEAD` is answered from the stored `GET` response.
    pub fn lookup(&self, req: &CacheRequest<'_>, policy: &RoutePolicy) -> Lookup {
        if *req.method != Method::GET && *req.method != Method::HEAD {
            return Lookup::Bypass(BypassReason::Method);
        }
        if is_upgrade(req.headers) || policy.class == Some(ContentClass::RealTime) {
            return Lookup::Bypass(BypassReason::RealTime);
        }
        let Some(key) = primary_key(req, &policy.key) else {
            return Lookup::Bypass(BypassReason::NoHost);
        };
        let rd = RequestDirectives::parse(req.headers);
        let now = self.clock.now();
        let Some(variants) = self.store.get(key.as_str()) else {
            return self.miss(&rd, MissReason::Uri);
        };
        let mut any_live = false;
        let mut chosen: Option<&Arc<Entry>> = None;
        for e in variants.entries.iter().filter(|e| e.retain_until > now) {
            any_live = true;
            if e.secondary.matches(req.headers)
                && chosen.is_none_or(|c| e.timing.response_time > c.timing.response_time)
            {
                chosen = Some(e);
            }
        }
        let Some(entry) = chosen.cloned() else {
            let reason = if any_live {
                MissReason::Vary
            } else {
                MissReason::Uri
            };
            return self.miss(&rd, reason);
        };
        if req.headers.contains_key(AUTHORIZATION) && !entry.allows_authorized() {
            return self.miss(&rd, MissReason::Authorization);
        }
        if self.sample_integrity() && !entry.verify() {
            self.integrity_failure(&entry, "hit");
            return self.miss(&rd, MissReason::Integrity);
        }
        self.decide(entry, &rd, now, policy)
    }

    fn miss(&self, rd: &RequestDirectives, reason: MissReason) -> Lookup {
        bump(&self.shared.counters.misses);
        if rd.only_if_cached {
            Lookup::OnlyIfCachedMiss
        } else {
            Lookup::Miss(reason)
        }
    }

    /// Chooses between serving, serving stale, and validating (RFC 9111 §4.2.4, §4.3; RFC 5861).
    fn decide(
        &self,
        entry: Arc<Entry>,
        rd: &RequestDirectives,
        now: SystemTime,
        policy: &RoutePolicy,
    ) -> Lookup {
        let counters = &self.shared.counters;
        let age = entry.current_age(now);
        let lifetime = entry.freshness_lifetime();
        let fresh = lifetime > age;
        let staleness = age.saturating_sub(lifetime);
        let mut hit = Hit::new(Arc::clone(&entry), now, policy);
        hit.stale_if_error = entry.stale_permitted()
            && (entry.sie_window().is_some_and(|w| staleness <= w)
                || rd.stale_if_error.is_some_and(|s| staleness <= secs(s)));

        let must_validate = rd.no_cache || entry.directives.no_cache.is_all();
        let age_ok = rd.max_age.is_none_or(|m| age <= secs(m));
        if !must_validate && age_ok {
            if fresh {
                let min_fresh_ok = rd
                    .min_fresh
                    .is_none_or(|m| lifetime.saturating_sub(age) >= secs(m));
                if min_fresh_ok {
                    bump(&counters.hits);
                    return Lookup::Hit(hit);
                }
            } else if rd.min_fresh.is_none() {
                let client_accepts = match rd.max_stale {
                    Some(MaxStale::Any) => true,
                    Some(MaxStale::Secs(s)) => staleness <= secs(s),
                    None => false,
                };
                if client_accepts && entry.client_stale_permitted() {
                    bump(&counters.hits);
                    bump(&counters.stale_served);
                    return Lookup::Hit(hit);
                }
                if entry.swr_window().is_some_and(|w| staleness <= w) {
                    bump(&counters.stale_served);
                    let refresh = RefreshGuard::try_acquire(&entry);
                    return Lookup::Stale { hit, refresh };
                }
            }
        }
        if rd.only_if_cached {
            bump(&counters.misses);
            return Lookup::OnlyIfCachedMiss;
        }
        bump(&counters.revalidations);
        let conditional = entry.conditional_headers();
        Lookup::Revalidate { hit, conditional }
    }

    /// Whether the upstream failure lets the caller serve `hit` stale (`stale-if-error`,
    /// RFC 5861 §4). `upstream` is the upstream status, or `None` when it did not answer.
    /// Errors are 500, 502, 503, 504 and no answer. Counts a stale serve when it returns true.
    pub fn serve_stale_on_error(&self, hit: &Hit, upstream: Option<StatusCode>) -> bool {
        let is_error = upstream.is_none_or(|s| matches!(s.as_u16(), 500 | 502 | 503 | 504));
        let serve = is_error && hit.stale_if_error;
        if serve {
            bump(&self.shared.counters.stale_served);
        }
        serve
    }

    /// Whether a response could be stored, judged from the heads (including `Content-Length`
    /// against `max_object_bytes`): decide whether to buffer the body or stream it through.
    pub fn precheck(
        &self,
        req: &CacheRequest<'_>,
        status: StatusCode,
        headers: &HeaderMap,
        policy: &RoutePolicy,
    ) -> Result<(), NotStoredReason> {
        precheck(
            req,
            status,
            headers,
            policy,
            self.config.max_object_bytes,
            self.clock.now(),
        )
        .map(|_| ())
    }

    /// Stores a complete upstream response to `req` (RFC 9111 §3). The stored copy has no
    /// `Set-Cookie`, hop-by-hop fields, or fields named by qualified `private` / `no-cache`.
    pub fn store(
        &self,
        req: &CacheRequest<'_>,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        timing: Timing,
        policy: &RoutePolicy,
    ) -> StoreOutcome {
        match self.try_store(req, status, headers, body, timing, policy) {
            Ok(entry) => {
                bump(&self.shared.counters.stores);
                StoreOutcome::Stored(entry)
            }
            Err(reason) => {
                bump(&self.shared.counters.not_stored);
                debug!(reason = reason.as_str(), "response not stored");
                StoreOutcome::NotStored(reason)
            }
        }
    }

    fn try_store(
        &self,
        req: &CacheRequest<'_>,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        timing: Timing,
        policy: &RoutePolicy,
    ) -> Result<Arc<Entry>, NotStoredReason> {
        let max = self.config.max_object_bytes;
        let analysis = precheck(req, status, headers, policy, max, timing.response_time)?;
        let len = body.len() as u64;
        if len > max {
            return Err(NotStoredReason::TooLarge);
        }
        if content_length(headers).is_some_and(|cl| cl != len) {
            return Err(NotStoredReason::Incomplete);
        }
        let key = primary_key(req, &policy.key).ok_or(NotStoredReason::NoHost)?;
        let vary = vary_fields(headers).ok_or(NotStoredReason::VaryStar)?;
        let secondary = SecondaryKey::capture(vary.iter().chain(&policy.key.headers), req.headers);
        let stored = storage_headers(headers, &analysis.directives, timing.response_time);
        let hash = blake3::hash(&body);
        let entry = self.build_entry(
            key.into(),
            secondary,
            status,
            stored,
            body,
            hash,
            timing,
            analysis,
        );
        if entry.retain_until <= self.clock.now() {
            return Err(NotStoredReason::NotFresh);
        }
        Ok(self.insert(Arc::new(entry), Replace::Matching(req.headers)))
    }

    #[allow(clippy::too_many_arguments)]
    fn build_entry(
        &self,
        key: Arc<str>,
        secondary: SecondaryKey,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        hash: blake3::Hash,
        timing: Timing,
        analysis: Analysis,
    ) -> Entry {
        let corrected_initial_age = corrected_initial_age(&headers, timing);
        let mut entry = Entry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            surrogate_keys: surrogate_keys(&headers),
            weight: 0,
            key,
            secondary,
            status,
            headers,
            body,
            hash,
            timing,
            corrected_initial_age,
            lifetime: analysis.lifetime,
            directives: analysis.directives,
            retain_until: timing.response_time,
            soft_purged: Default::default(),
            refreshing: Default::default(),
        };
        let remaining = entry.lifetime.saturating_sub(corrected_initial_age);
        let mut keep = entry
            .swr_window()
            .unwrap_or_default()
            .max(entry.sie_window().unwrap_or_default());
        if entry.has_validator() {
            keep = keep.max(self.config.revalidation_grace);
        }
        let retain = remaining
            .saturating_add(keep)
            .min(self.config.max_retention);
        entry.retain_until = timing
            .response_time
            .checked_add(retain)
            .unwrap_or(timing.response_time);
        let weight = entry.body.len()
            + header_bytes(&entry.headers)
            + entry.key.len()
            + entry.secondary.weight()
            + ENTRY_OVERHEAD;
        entry.weight = u32::try_from(weight).unwrap_or(u32::MAX);
        entry
    }

    /// Puts `entry` into its URL's variant set, dropping the variants it replaces, expired ones,
    /// and the oldest beyond `max_variants`.
    fn insert(&self, entry: Arc<Entry>, replace: Replace<'_>) -> Arc<Entry> {
        // Index first: if moka rejects or evicts it at once, the listener unindexes it after.
        self.shared.indexes.add(&entry);
        let now = self.clock.now();
        let max_variants = self.config.max_variants.max(1);
        let mut dropped = Vec::new();
        let new = Arc::clone(&entry);
        let _ = self
            .store
            .entry(Arc::clone(&entry.key))
            .and_compute_with(|current| {
                let mut entries = vec![new];
                if let Some(current) = current {
                    for e in &current.value().entries {
                        let replaced = match replace {
                            Replace::Matching(headers) => e.secondary.matches(headers),
                            Replace::Id(id) => e.id == id,
                        };
                        if replaced || e.retain_until <= now || entries.len() >= max_variants {
                            dropped.push(Arc::clone(e));
                        } else {
                            entries.push(Arc::clone(e));
                        }
                    }
                }
                Op::Put(Variants::new(entries, now))
            });
        self.shared.indexes.remove(&dropped);
        entry
    }

    /// Removes the given entries of one URL; returns how many were removed.
    fn remove_ids(&self, key: &Arc<str>, ids: &[u64]) -> usize {
        let now = self.clock.now();
        let mut removed = Vec::new();
        let mut whole = false;
        let _ = self
            .store
            .entry(Arc::clone(key))
            .and_compute_with(|current| {
                let Some(current) = current else {
                    return Op::Nop;
                };
                let (gone, keep): (Vec<_>, Vec<_>) = current
                    .value()
                    .entries
                    .iter()
                    .cloned()
                    .partition(|e| ids.contains(&e.id));
                removed = gone;
                if removed.is_empty() {
                    Op::Nop
                } else if keep.is_empty() {
                    whole = true;
                    Op::Remove
                } else {
                    Op::Put(Variants::new(keep, now))
                }
            });
        if !whole {
            // A whole removal is counted by the eviction listener.
            add(&self.shared.counters.removed, removed.len() as u64);
        }
        self.shared.indexes.remove(&removed);
        removed.len()
    }

    /// Updates a stored response with a 304 from its revalidation (RFC 9111 §4.3.4, §3.2) and
    /// recomputes its freshness. `entry` is the one validated (`Lookup::Revalidate`'s hit or
    /// the SWR guard's entry).
    pub fn revalidated(
        &self,
        entry: &Arc<Entry>,
        headers_304: &HeaderMap,
        timing: Timing,
        policy: &RoutePolicy,
    ) -> Revalidated {
        if let (Some(new), Some(old)) = (etag_opaque(headers_304), etag_opaque(&entry.headers))
            && new != old
        {
            return Revalidated::Mismatch;
        }
        let merged = merge_304(&entry.headers, headers_304, timing.response_time);
        let path = key_path(&entry.key);
        let analyzed = analyze(
            entry.status,
            &merged,
            policy,
            path,
            false,
            timing.response_time,
        );
        let reason = match analyzed {
            Ok(analysis) => {
                let headers = storage_headers(&merged, &analysis.directives, timing.response_time);
                let updated = self.build_entry(
                    Arc::clone(&entry.key),
                    entry.secondary.clone(),
                    entry.status,
                    headers,
                    entry.body.clone(),
                    entry.hash,
                    timing,
                    analysis,
                );
                let now = self.clock.now();
                if updated.retain_until > now {
                    let updated = self.insert(Arc::new(updated), Replace::Id(entry.id));
                    bump(&self.shared.counters.stores);
                    return Revalidated::Stored(Hit::new(updated, now, policy));
                }
                self.remove_ids(&entry.key, &[entry.id]);
                return Revalidated::NotStored {
                    hit: Hit::new(Arc::new(updated), now, policy),
                    reason: NotStoredReason::NotFresh,
                };
            }
            Err(reason) => reason,
        };
        // The updated response is no longer storable: serve it once, drop the stored one.
        let (directives, _) = ResponseDirectives::effective(&merged);
        let headers = storage_headers(&merged, &directives, timing.response_time);
        let analysis = Analysis {
            directives,
            lifetime: Duration::ZERO,
        };
        let updated = self.build_entry(
            Arc::clone(&entry.key),
            entry.secondary.clone(),
            entry.status,
            headers,
            entry.body.clone(),
            entry.hash,
            timing,
            analysis,
        );
        self.remove_ids(&entry.key, &[entry.id]);
        bump(&self.shared.counters.not_stored);
        Revalidated::NotStored {
            hit: Hit::new(Arc::new(updated), self.clock.now(), policy),
            reason,
        }
    }

    /// Turns an entry published by a coalescing leader into a hit for a waiting request, if it
    /// suits it: same URL, matching `Vary`, `Authorization` allowed, fresh and not `no-cache`.
    /// `None`: go upstream.
    pub fn collapsed_hit(
        &self,
        req: &CacheRequest<'_>,
        entry: &Arc<Entry>,
        policy: &RoutePolicy,
    ) -> Option<Hit> {
        let now = self.clock.now();
        let usable = primary_key(req, &policy.key).as_deref() == Some(&*entry.key)
            && entry.retain_until > now
            && entry.secondary.matches(req.headers)
            && (!req.headers.contains_key(AUTHORIZATION) || entry.allows_authorized())
            && entry.is_fresh(now)
            && !entry.directives.no_cache.is_all();
        if !usable {
            return None;
        }
        bump(&self.shared.counters.hits);
        let mut hit = Hit::new(Arc::clone(entry), now, policy);
        hit.collapsed = true;
        Some(hit)
    }

    /// Invalidation after an unsafe method (RFC 9111 §4.4): a non-error response (2xx/3xx) to
    /// any method other than GET, HEAD, OPTIONS, TRACE invalidates the target URI and the
    /// same-origin `Location` / `Content-Location` URIs. Returns the entries removed.
    pub fn invalidate_after_unsafe(
        &self,
        req: &CacheRequest<'_>,
        status: StatusCode,
        headers: &HeaderMap,
        policy: &RoutePolicy,
    ) -> usize {
        let safe = matches!(
            *req.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        if safe || !(status.is_success() || status.is_redirection()) {
            return 0;
        }
        let Some(origin) = request_origin(req) else {
            return 0;
        };
        let mut keys = vec![key_for(
            &origin,
            req.uri.path(),
            req.uri.query(),
            &policy.key,
        )];
        let scheme = req.scheme();
        for field in [LOCATION, CONTENT_LOCATION] {
            let Some(value) = headers.get(field).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            if let Some((o, path, query)) =
                resolve_reference(&scheme, &origin, req.uri.path(), value)
                && o == origin
            {
                let key = key_for(&o, &path, query.as_deref(), &policy.key);
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
        keys.iter().map(|k| self.purge_key(k, false)).sum()
    }

    fn purge_key(&self, key: &str, soft: bool) -> usize {
        if soft {
            self.store.get(key).map_or(0, |v| {
                for e in &v.entries {
                    e.soft_purged.store(true, Ordering::Relaxed);
                }
                v.entries.len()
            })
        } else {
            self.store.remove(key).map_or(0, |v| v.entries.len())
        }
    }

    /// Purges one URL (absolute: scheme and authority), with the route's key options.
    /// `soft` marks the entries stale (the next request revalidates) instead of removing them.
    /// Returns the number of entries touched.
    pub fn purge_url(&self, url: &Uri, key: &KeyOptions, soft: bool) -> usize {
        let (Some(scheme), Some(authority)) = (url.scheme_str(), url.authority()) else {
            return 0;
        };
        let origin = origin(&scheme.to_ascii_lowercase(), authority);
        self.purge_key(&key_for(&origin, url.path(), url.query(), key), soft)
    }

    /// Purges every entry whose key starts with `prefix` (`scheme://host[:port]/path-prefix`;
    /// scheme and host are normalised like keys). Returns the number of entries touched.
    pub fn purge_prefix(&self, prefix: &str, soft: bool) -> usize {
        let prefix = normalize_prefix(prefix);
        let start: Arc<str> = prefix.as_str().into();
        let targets: Vec<(Arc<str>, u64, Weak<Entry>)> = lock(&self.shared.indexes.by_key)
            .range((start, 0)..)
            .take_while(|((k, _), _)| k.starts_with(prefix.as_str()))
            .map(|((k, id), w)| (Arc::clone(k), *id, w.clone()))
            .collect();
        self.purge_targets(targets, soft)
    }

    /// Purges every entry tagged `tag` by `Surrogate-Key` or `Cache-Tag`.
    /// Returns the number of entries touched.
    pub fn purge_surrogate_key(&self, tag: &str, soft: bool) -> usize {
        let ids: Vec<(Arc<str>, u64)> = lock(&self.shared.indexes.by_tag)
            .get(tag)
            .map(|m| m.iter().map(|(id, k)| (Arc::clone(k), *id)).collect())
            .unwrap_or_default();
        let targets: Vec<(Arc<str>, u64, Weak<Entry>)> = {
            let by_key = lock(&self.shared.indexes.by_key);
            ids.into_iter()
                .filter_map(|(k, id)| {
                    let w = by_key.get(&(Arc::clone(&k), id))?.clone();
                    Some((k, id, w))
                })
                .collect()
        };
        self.purge_targets(targets, soft)
    }

    fn purge_targets(&self, targets: Vec<(Arc<str>, u64, Weak<Entry>)>, soft: bool) -> usize {
        if soft {
            return targets
                .iter()
                .filter_map(|(_, _, w)| w.upgrade())
                .map(|e| e.soft_purged.store(true, Ordering::Relaxed))
                .count();
        }
        let mut by_key: BTreeMap<Arc<str>, Vec<u64>> = BTreeMap::new();
        for (k, id, _) in targets {
            by_key.entry(k).or_default().push(id);
        }
        by_key.iter().map(|(k, ids)| self.remove_ids(k, ids)).sum()
    }

    fn sample_integrity(&self) -> bool {
        match self.config.integrity {
            Integrity::Always => true,
            Integrity::Sample(0) => false,
            Integrity::Sample(n) => self
                .sample_tick
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(u64::from(n)),
        }
    }

    fn integrity_failure(&self, entry: &Entry, source: &'static str) {
        error!(
            key = %entry.key,
            entry_id = entry.id,
            source,
            "cached body failed blake3 verification; entry evicted"
        );
        bump(&self.shared.counters.integrity_failures);
        self.remove_ids(&entry.key, &[entry.id]);
    }

    /// Re-verifies up to `max_entries` stored bodies, continuing where the previous call
    /// stopped (a cursor over the key index). Run it from a periodic task at a bounded rate;
    /// it evicts and counts mismatches.
    pub fn scrub(&self, max_entries: usize) -> ScrubReport {
        if max_entries == 0 {
            return ScrubReport::default();
        }
        let mut cursor = lock(&self.scrub_cursor);
        let batch: Vec<(IndexKey, Weak<Entry>)> = {
            let index = lock(&self.shared.indexes.by_key);
            let range = match cursor.take() {
                Some(after) => index.range((Bound::Excluded(after), Bound::Unbounded)),
                None => index.range::<IndexKey, _>(..),
            };
            range
                .take(max_entries)
                .map(|(k, w)| (k.clone(), w.clone()))
                .collect()
        };
        let wrapped = batch.len() < max_entries;
        *cursor = if wrapped {
            None
        } else {
            batch.last().map(|(k, _)| k.clone())
        };
        drop(cursor);
        let mut report = ScrubReport {
            wrapped,
            ..ScrubReport::default()
        };
        for (_, weak) in batch {
            let Some(entry) = weak.upgrade() else {
                continue;
            };
            report.checked += 1;
            bump(&self.shared.counters.scrubbed);
            if !entry.verify() {
                report.failed += 1;
                self.integrity_failure(&entry, "scrub");
            }
        }
        report
    }

    /// Counter snapshot.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot(self.entries(), self.bytes())
    }

    /// Accounted (weighted) bytes, as moka sees them (eventually consistent; see
    /// [`Cache::run_pending_tasks`]).
    pub fn bytes(&self) -> u64 {
        self.store.weighted_size()
    }

    /// Stored responses (all variants of all URLs).
    pub fn entries(&self) -> u64 {
        self.shared.indexes.len() as u64
    }

    /// Runs moka's pending maintenance (evictions, expirations, listener calls) now.
    pub fn run_pending_tasks(&self) {
        self.store.run_pending_tasks();
    }

    /// Test hook: replaces the body of the entry `req` selects with a corrupted copy that
    /// keeps the original hash. Returns whether an entry was corrupted.
    #[doc(hidden)]
    pub fn corrupt_for_testing(&self, req: &CacheRequest<'_>, policy: &RoutePolicy) -> bool {
        let Some(key) = primary_key(req, &policy.key) else {
            return false;
        };
        let Some(variants) = self.store.get(key.as_str()) else {
            return false;
        };
        let Some(e) = variants
            .entries
            .iter()
            .find(|e| e.secondary.matches(req.headers))
        else {
            return false;
        };
        let mut body = e.body.to_vec();
        match body.first_mut() {
            Some(b) => *b ^= 0xff,
            None => body.push(0),
        }
        let bad = Entry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            key: Arc::clone(&e.key),
            secondary: e.secondary.clone(),
            status: e.status,
            headers: e.headers.clone(),
            body: Bytes::from(body),
            hash: e.hash,
            timing: e.timing,
            corrected_initial_age: e.corrected_initial_age,
            lifetime: e.lifetime,
            directives: e.directives.clone(),
            surrogate_keys: e.surrogate_keys.clone(),
            retain_until: e.retain_until,
            weight: e.weight,
            soft_purged: Default::default(),
            refreshing: Default::default(),
        };
        self.insert(Arc::new(bad), Replace::Id(e.id));
        true
    }
}

/// Normalises a purge prefix's scheme and authority like a primary key.
fn normalize_prefix(prefix: &str) -> String {
    let Some((scheme, rest)) = prefix.split_once("://") else {
        return prefix.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    match Authority::try_from(authority) {
        Ok(a) => format!("{}{path}", origin(&scheme.to_ascii_lowercase(), &a)),
        Err(_) => prefix.to_owned(),
    }
}
