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
        // `max-age=0` asks for validation (a reload); other values bound the age.
        let age_ok = rd.max_age.is_none_or(|m| m > 0 && age <= secs(m));
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

#[cfg(test)]
impl Cache {
    /// Checks that the key index and moka hold exactly the same entries.
    fn index_matches_store(&self) -> bool {
        self.run_pending_tasks();
        let mut stored: Vec<IndexKey> = self
            .store
            .iter()
            .flat_map(|(k, v)| {
                v.entries
                    .iter()
                    .map(|e| (Arc::clone(&*k), e.id))
                    .collect::<Vec<_>>()
            })
            .collect();
        stored.sort();
        let indexed: Vec<IndexKey> = lock(&self.shared.indexes.by_key).keys().cloned().collect();
        stored == indexed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::key::KeyOptions;
    use crate::policy::TtlMode;
    use crate::status::CacheStatus;
    use http::{HeaderName, HeaderValue, Request, request};

    struct H {
        clock: Arc<ManualClock>,
        start: SystemTime,
        cache: Cache,
    }

    fn rfc() -> RoutePolicy {
        RoutePolicy::pure_rfc()
    }

    impl H {
        fn new() -> Self {
            Self::with(CacheConfig {
                integrity: Integrity::Sample(0),
                ..CacheConfig::default()
            })
        }

        fn with(config: CacheConfig) -> Self {
            let clock = Arc::new(ManualClock::fixed());
            let start = clock.now();
            let cache = Cache::new(config, Arc::clone(&clock) as Arc<dyn Clock>);
            Self {
                clock,
                start,
                cache,
            }
        }

        fn advance(&self, secs: u64) {
            self.clock.advance(Duration::from_secs(secs));
        }

        /// Header value; `@N` / `@-N` is an HTTP-date N seconds from the test start.
        fn value(&self, v: &str) -> HeaderValue {
            match v.strip_prefix('@') {
                Some(offset) => {
                    let n: i64 = offset.parse().unwrap();
                    let t = if n >= 0 {
                        self.start + Duration::from_secs(n.unsigned_abs())
                    } else {
                        self.start - Duration::from_secs(n.unsigned_abs())
                    };
                    HeaderValue::from_str(&httpdate::fmt_http_date(t)).unwrap()
                }
                None => HeaderValue::from_str(v).unwrap(),
            }
        }

        fn headers(&self, pairs: &[(&str, &str)]) -> HeaderMap {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), self.value(v));
            }
            h
        }

        fn parts(&self, method: &str, uri: &str, pairs: &[(&str, &str)]) -> request::Parts {
            let mut b = Request::builder().method(method).uri(uri);
            if !uri.contains("://") {
                b = b.header("host", "example.com");
            }
            let (mut parts, ()) = b.body(()).unwrap().into_parts();
            parts.headers.extend(self.headers(pairs));
            parts
        }

        #[allow(clippy::too_many_arguments)]
        fn store_with(
            &self,
            method: &str,
            uri: &str,
            req: &[(&str, &str)],
            status: u16,
            resp: &[(&str, &str)],
            body: &'static [u8],
            policy: &RoutePolicy,
        ) -> StoreOutcome {
            let parts = self.parts(method, uri, req);
            self.cache.store(
                &CacheRequest::new(&parts, false),
                StatusCode::from_u16(status).unwrap(),
                &self.headers(resp),
                Bytes::from_static(body),
                Timing::at(self.clock.now()),
                policy,
            )
        }

        fn store(&self, uri: &str, resp: &[(&str, &str)]) -> Arc<Entry> {
            match self.store_with("GET", uri, &[], 200, resp, b"hello", &rfc()) {
                StoreOutcome::Stored(e) => e,
                StoreOutcome::NotStored(r) => panic!("not stored: {r:?}"),
            }
        }

        fn lookup_with(
            &self,
            method: &str,
            uri: &str,
            req: &[(&str, &str)],
            policy: &RoutePolicy,
        ) -> Lookup {
            let parts = self.parts(method, uri, req);
            self.cache.lookup(&CacheRequest::new(&parts, false), policy)
        }

        fn lookup(&self, uri: &str, req: &[(&str, &str)]) -> Lookup {
            self.lookup_with("GET", uri, req, &rfc())
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Expect {
        NotStored(NotStoredReason),
        Hit,
        StaleHit,
        Swr,
        Revalidate,
        Miss(MissReason),
        OnlyIfCached,
        Bypass(BypassReason),
    }

    fn outcome(l: &Lookup) -> Expect {
        match l {
            Lookup::Hit(h) if h.is_stale() => Expect::StaleHit,
            Lookup::Hit(_) => Expect::Hit,
            Lookup::Stale { .. } => Expect::Swr,
            Lookup::Revalidate { .. } => Expect::Revalidate,
            Lookup::Miss(r) => Expect::Miss(*r),
            Lookup::OnlyIfCachedMiss => Expect::OnlyIfCached,
            Lookup::Bypass(r) => Expect::Bypass(*r),
        }
    }

    /// Stores a 200 with `resp` (plus an ETag so stale entries are kept for revalidation),
    /// advances the clock by `advance` seconds, looks up with request fields `req`.
    fn check(resp: &[(&str, &str)], advance: u64, req: &[(&str, &str)], expected: Expect) {
        let h = H::new();
        let mut resp = resp.to_vec();
        resp.push(("etag", "\"v\""));
        let got = match h.store_with("GET", "/p", &[], 200, &resp, b"hello", &rfc()) {
            StoreOutcome::NotStored(r) => Expect::NotStored(r),
            StoreOutcome::Stored(_) => {
                h.advance(advance);
                outcome(&h.lookup("/p", req))
            }
        };
        assert_eq!(got, expected, "resp={resp:?} advance={advance} req={req:?}");
    }

    #[test]
    fn freshness_precedence() {
        use Expect::*;
        check(&[("cache-control", "max-age=60")], 59, &[], Hit);
        check(&[("cache-control", "max-age=60")], 60, &[], Revalidate);
        // s-maxage beats max-age for a shared cache.
        check(
            &[("cache-control", "max-age=100, s-maxage=10")],
            11,
            &[],
            Revalidate,
        );
        check(
            &[("cache-control", "max-age=5, s-maxage=100")],
            50,
            &[],
            Hit,
        );
        // max-age beats Expires.
        check(
            &[
                ("cache-control", "max-age=10"),
                ("expires", "@100"),
                ("date", "@0"),
            ],
            50,
            &[],
            Revalidate,
        );
        check(&[("expires", "@100"), ("date", "@0")], 99, &[], Hit);
        check(&[("expires", "@100"), ("date", "@0")], 101, &[], Revalidate);
        check(&[("expires", "0"), ("date", "@0")], 0, &[], Revalidate);
        // CDN-Cache-Control beats Cache-Control; the node-targeted field beats both.
        check(
            &[
                ("cache-control", "max-age=10"),
                ("cdn-cache-control", "max-age=100"),
            ],
            50,
            &[],
            Hit,
        );
        check(
            &[
                ("cdn-cache-control", "max-age=100"),
                ("cathedral-cdn-cache-control", "max-age=10"),
            ],
            50,
            &[],
            Revalidate,
        );
        check(
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=100"),
            ],
            50,
            &[],
            Hit,
        );
        check(
            &[
                ("cache-control", "max-age=100"),
                ("cdn-cache-control", "no-store"),
            ],
            0,
            &[],
            NotStored(NotStoredReason::NoStore),
        );
        // The targeted field makes Expires irrelevant too.
        check(
            &[
                ("cdn-cache-control", "max-age=100"),
                ("expires", "@-10"),
                ("date", "@0"),
            ],
            50,
            &[],
            Hit,
        );
        // An invalid targeted field is ignored entirely.
        check(
            &[
                ("cache-control", "max-age=10"),
                ("cdn-cache-control", "max-age=100,,"),
            ],
            50,
            &[],
            Revalidate,
        );
        // Heuristic: 10% of Date - Last-Modified.
        check(&[("last-modified", "@-1000"), ("date", "@0")], 99, &[], Hit);
        check(
            &[("last-modified", "@-1000"), ("date", "@0")],
            101,
            &[],
            Revalidate,
        );
        // Age from upstream and apparent age count against freshness.
        check(
            &[("cache-control", "max-age=60"), ("age", "50")],
            9,
            &[],
            Hit,
        );
        check(
            &[("cache-control", "max-age=60"), ("age", "50")],
            11,
            &[],
            Revalidate,
        );
        check(
            &[("cache-control", "max-age=60"), ("date", "@-30")],
            29,
            &[],
            Hit,
        );
        check(
            &[("cache-control", "max-age=60"), ("date", "@-30")],
            31,
            &[],
            Revalidate,
        );
    }

    #[test]
    fn request_directives() {
        use Expect::*;
        let ma60 = [("cache-control", "max-age=60")];
        check(&ma60, 11, &[("cache-control", "max-age=10")], Revalidate);
        check(&ma60, 9, &[("cache-control", "max-age=10")], Hit);
        check(&ma60, 0, &[("cache-control", "max-age=0")], Revalidate);
        check(&ma60, 1, &[("cache-control", "max-age=0")], Revalidate);
        check(&ma60, 0, &[("cache-control", "no-cache")], Revalidate);
        check(&ma60, 0, &[("pragma", "no-cache")], Revalidate);
        check(&ma60, 29, &[("cache-control", "min-fresh=30")], Hit);
        check(&ma60, 31, &[("cache-control", "min-fresh=30")], Revalidate);
        let ma10 = [("cache-control", "max-age=10")];
        check(&ma10, 20, &[("cache-control", "max-stale")], StaleHit);
        check(&ma10, 20, &[("cache-control", "max-stale=15")], StaleHit);
        check(&ma10, 20, &[("cache-control", "max-stale=5")], Revalidate);
        check(
            &ma10,
            20,
            &[("cache-control", "max-stale, max-age=5")],
            Revalidate,
        );
        check(
            &[("cache-control", "max-age=10, must-revalidate")],
            20,
            &[("cache-control", "max-stale")],
            Revalidate,
        );
        check(
            &[("cache-control", "max-age=10, proxy-revalidate")],
            20,
            &[("cache-control", "max-stale")],
            Revalidate,
        );
        check(
            &[("cache-control", "s-maxage=10")],
            20,
            &[("cache-control", "max-stale")],
            Revalidate,
        );
        check(&ma60, 0, &[("cache-control", "only-if-cached")], Hit);
        check(
            &ma10,
            20,
            &[("cache-control", "only-if-cached")],
            OnlyIfCached,
        );
        check(
            &ma10,
            20,
            &[("cache-control", "only-if-cached, max-stale")],
            StaleHit,
        );
        // A request's no-store does not prevent using what is already stored.
        check(&ma60, 0, &[("cache-control", "no-store")], Hit);
    }

    #[test]
    fn response_directives() {
        use Expect::*;
        check(
            &[("cache-control", "max-age=60, no-cache")],
            0,
            &[],
            Revalidate,
        );
        check(
            &[("cache-control", "max-age=60, no-cache=\"x-a\"")],
            0,
            &[],
            Hit,
        );
        check(
            &[("cache-control", "max-age=60, private")],
            0,
            &[],
            NotStored(NotStoredReason::Private),
        );
        check(
            &[("cache-control", "max-age=60, private=\"x-a\"")],
            0,
            &[],
            Hit,
        );
        check(
            &[("cache-control", "max-age=60, no-store")],
            0,
            &[],
            NotStored(NotStoredReason::NoStore),
        );
        check(
            &[("cache-control", "max-age=60, immutable")],
            0,
            &[("cache-control", "no-cache")],
            Revalidate,
        );
        check(
            &[("cache-control", "max-age=60, immutable")],
            1,
            &[("cache-control", "max-age=0")],
            Revalidate,
        );
        // stale-while-revalidate window.
        let swr = [("cache-control", "max-age=10, stale-while-revalidate=30")];
        check(&swr, 20, &[], Swr);
        check(&swr, 40, &[], Swr);
        check(&swr, 41, &[], Revalidate);
        check(&swr, 20, &[("cache-control", "max-age=5")], Revalidate);
        check(&swr, 20, &[("cache-control", "min-fresh=1")], Revalidate);
        check(
            &[(
                "cache-control",
                "max-age=10, stale-while-revalidate=30, must-revalidate",
            )],
            20,
            &[],
            Revalidate,
        );
        check(
            &[(
                "cache-control",
                "max-age=10, stale-while-revalidate=30, no-cache",
            )],
            20,
            &[],
            Revalidate,
        );
        // Documented choice: s-maxage's implied proxy-revalidate yields to an explicit SWR.
        check(
            &[("cache-control", "s-maxage=10, stale-while-revalidate=30")],
            20,
            &[],
            Swr,
        );
        check(
            &[("cdn-cache-control", "max-age=10, stale-while-revalidate=30")],
            20,
            &[],
            Swr,
        );
    }

    #[test]
    fn statuses() {
        let h = H::new();
        type Case<'a> = (u16, &'a [(&'a str, &'a str)], Option<NotStoredReason>);
        let cases: &[Case<'_>] = &[
            (200, &[("cache-control", "max-age=60")], None),
            (203, &[("cache-control", "max-age=60")], None),
            (204, &[("cache-control", "max-age=60")], None),
            (301, &[("last-modified", "@-1000"), ("date", "@0")], None),
            (404, &[("last-modified", "@-1000"), ("date", "@0")], None),
            (410, &[("last-modified", "@-1000"), ("date", "@0")], None),
            (500, &[("cache-control", "max-age=60")], None),
            (302, &[("cache-control", "max-age=60")], None),
            (
                500,
                &[("last-modified", "@-1000"), ("date", "@0")],
                Some(NotStoredReason::Status),
            ),
            (
                302,
                &[("last-modified", "@-1000"), ("date", "@0")],
                Some(NotStoredReason::Status),
            ),
            (
                206,
                &[("cache-control", "max-age=60")],
                Some(NotStoredReason::Partial),
            ),
            (
                304,
                &[("cache-control", "max-age=60")],
                Some(NotStoredReason::Status),
            ),
            (
                100,
                &[("cache-control", "max-age=60")],
                Some(NotStoredReason::Status),
            ),
        ];
        for (i, (status, resp, expected)) in cases.iter().enumerate() {
            let uri = format!("/s{i}");
            let body: &'static [u8] = if *status == 204 || *status == 304 || *status == 100 {
                b""
            } else {
                b"x"
            };
            let got = match h.store_with("GET", &uri, &[], *status, resp, body, &rfc()) {
                StoreOutcome::Stored(_) => None,
                StoreOutcome::NotStored(r) => Some(r),
            };
            assert_eq!(got, *expected, "{status} {resp:?}");
            if expected.is_none() {
                let Lookup::Hit(hit) = h.lookup(&uri, &[]) else {
                    panic!("{status}")
                };
                assert_eq!(hit.response_head().0.as_u16(), *status);
            }
        }
    }

    #[test]
    fn stale_entries_without_validator_are_dropped_after_freshness() {
        let h = H::new();
        h.store("/p", &[("cache-control", "max-age=10")]);
        h.advance(11);
        assert_eq!(outcome(&h.lookup("/p", &[])), Expect::Miss(MissReason::Uri));
        // With a stale-if-error window it is kept for that long.
        h.store("/q", &[("cache-control", "max-age=10, stale-if-error=60")]);
        h.advance(30);
        assert_eq!(outcome(&h.lookup("/q", &[])), Expect::Revalidate);
        // Nothing at all to keep: not stored.
        let got = h.store_with(
            "GET",
            "/r",
            &[],
            200,
            &[("cache-control", "max-age=0")],
            b"x",
            &rfc(),
        );
        assert!(matches!(
            got,
            StoreOutcome::NotStored(NotStoredReason::NotFresh)
        ));
    }

    #[test]
    fn age_header_on_served_responses() {
        let h = H::new();
        h.store(
            "/p",
            &[
                ("cache-control", "max-age=600"),
                ("age", "10"),
                ("date", "@0"),
            ],
        );
        h.advance(5);
        let Lookup::Hit(hit) = h.lookup("/p", &[]) else {
            panic!()
        };
        let (_, headers) = hit.response_head();
        assert_eq!(headers.get("age").unwrap(), "15");
        assert_eq!(hit.age_secs(), 15);
        assert_eq!(hit.ttl_secs(), 585);
        assert_eq!(
            CacheStatus::from_lookup(&Lookup::Hit(hit)).value(),
            "cathedral; hit; ttl=585"
        );
    }

    #[test]
    fn vary_variants() {
        let h = H::new();
        let policy = rfc();
        let resp = [("cache-control", "max-age=60"), ("vary", "Accept-Encoding")];
        let s = |ae: &str, body: &'static [u8]| {
            h.store_with(
                "GET",
                "/v",
                &[("accept-encoding", ae)],
                200,
                &resp,
                body,
                &policy,
            )
        };
        assert!(matches!(s("gzip", b"gz"), StoreOutcome::Stored(_)));
        let body = |req: &[(&str, &str)]| match h.lookup("/v", req) {
            Lookup::Hit(hit) => Some(hit.body()),
            _ => None,
        };
        assert_eq!(
            body(&[("accept-encoding", "gzip")]).as_deref(),
            Some(&b"gz"[..])
        );
        assert_eq!(
            body(&[("accept-encoding", " gzip ")]).as_deref(),
            Some(&b"gz"[..])
        );
        assert_eq!(
            outcome(&h.lookup("/v", &[("accept-encoding", "br")])),
            Expect::Miss(MissReason::Vary)
        );
        assert_eq!(
            outcome(&h.lookup("/v", &[])),
            Expect::Miss(MissReason::Vary)
        );
        assert!(matches!(s("br", b"br"), StoreOutcome::Stored(_)));
        assert_eq!(
            body(&[("accept-encoding", "br")]).as_deref(),
            Some(&b"br"[..])
        );
        assert_eq!(
            body(&[("accept-encoding", "gzip")]).as_deref(),
            Some(&b"gz"[..])
        );
        // A new response for the same selection replaces the old one.
        assert!(matches!(s("gzip", b"gz2"), StoreOutcome::Stored(_)));
        assert_eq!(
            body(&[("accept-encoding", "gzip")]).as_deref(),
            Some(&b"gz2"[..])
        );
        assert_eq!(h.cache.entries(), 2);
        // Vary: * is never stored.
        let star = h.store_with(
            "GET",
            "/star",
            &[],
            200,
            &[("cache-control", "max-age=60"), ("vary", "*")],
            b"x",
            &policy,
        );
        assert!(matches!(
            star,
            StoreOutcome::NotStored(NotStoredReason::VaryStar)
        ));
        assert!(h.cache.index_matches_store());
    }

    #[test]
    fn variants_are_bounded_per_url() {
        let h = H::with(CacheConfig {
            max_variants: 3,
            integrity: Integrity::Sample(0),
            ..CacheConfig::default()
        });
        let resp = [("cache-control", "max-age=60"), ("vary", "x-v")];
        for v in ["1", "2", "3", "4"] {
            h.store_with("GET", "/v", &[("x-v", v)], 200, &resp, b"x", &rfc());
        }
        assert_eq!(h.cache.entries(), 3);
        assert_eq!(
            outcome(&h.lookup("/v", &[("x-v", "1")])),
            Expect::Miss(MissReason::Vary)
        );
        assert_eq!(outcome(&h.lookup("/v", &[("x-v", "4")])), Expect::Hit);
        assert!(h.cache.index_matches_store());
    }

    #[test]
    fn key_options_and_key_headers() {
        let h = H::new();
        let policy = RoutePolicy {
            key: KeyOptions {
                ignore_query_params: vec!["utm".into()],
                sort_query: true,
                headers: vec![HeaderName::from_static("x-user")],
            },
            class: Some(ContentClass::PerUser),
            ..RoutePolicy::default()
        };
        let s = |user: &str, body: &'static [u8]| {
            h.store_with(
                "GET",
                "/me?b=2&a=1&utm=x",
                &[("x-user", user)],
                200,
                &[],
                body,
                &policy,
            )
        };
        assert!(matches!(s("ann", b"ann"), StoreOutcome::Stored(_)));
        assert!(matches!(s("bob", b"bob"), StoreOutcome::Stored(_)));
        let get =
            |user: &str| match h.lookup_with("GET", "/me?a=1&b=2", &[("x-user", user)], &policy) {
                Lookup::Hit(hit) => Some(hit.body()),
                _ => None,
            };
        assert_eq!(get("ann").as_deref(), Some(&b"ann"[..]));
        assert_eq!(get("bob").as_deref(), Some(&b"bob"[..]));
        assert_eq!(get("cat"), None);
        // Per-user class: one minute.
        h.advance(61);
        assert_eq!(get("ann"), None);
    }

    #[test]
    fn methods_and_bypass() {
        let h = H::new();
        h.store("/p", &[("cache-control", "max-age=60")]);
        assert_eq!(
            outcome(&h.lookup_with("HEAD", "/p", &[], &rfc())),
            Expect::Hit
        );
        assert_eq!(
            outcome(&h.lookup_with("POST", "/p", &[], &rfc())),
            Expect::Bypass(BypassReason::Method)
        );
        assert_eq!(
            outcome(&h.lookup_with("DELETE", "/p", &[], &rfc())),
            Expect::Bypass(BypassReason::Method)
        );
        assert_eq!(
            outcome(&h.lookup("/p", &[("upgrade", "websocket"), ("connection", "Upgrade")])),
            Expect::Bypass(BypassReason::RealTime)
        );
        let rt = RoutePolicy {
            class: Some(ContentClass::RealTime),
            ..rfc()
        };
        assert_eq!(
            outcome(&h.lookup_with("GET", "/p", &[], &rt)),
            Expect::Bypass(BypassReason::RealTime)
        );
        let parts = h.parts("GET", "/p", &[]);
        let mut no_host = parts;
        no_host.headers.remove("host");
        assert_eq!(
            outcome(&h.cache.lookup(&CacheRequest::new(&no_host, false), &rfc())),
            Expect::Bypass(BypassReason::NoHost)
        );
        let post = h.store_with(
            "POST",
            "/p",
            &[],
            200,
            &[("cache-control", "max-age=60")],
            b"x",
            &rfc(),
        );
        assert!(matches!(
            post,
            StoreOutcome::NotStored(NotStoredReason::Method)
        ));
        let head = h.store_with(
            "HEAD",
            "/h",
            &[],
            200,
            &[("cache-control", "max-age=60")],
            b"",
            &rfc(),
        );
        assert!(matches!(
            head,
            StoreOutcome::NotStored(NotStoredReason::Method)
        ));
        let nostore = h.store_with(
            "GET",
            "/n",
            &[("cache-control", "no-store")],
            200,
            &[("cache-control", "max-age=60")],
            b"x",
            &rfc(),
        );
        assert!(matches!(
            nostore,
            StoreOutcome::NotStored(NotStoredReason::RequestNoStore)
        ));
        // HEAD gets the GET entry's head without a body.
        let parts = h.parts("HEAD", "/p", &[]);
        let req = CacheRequest::new(&parts, false);
        let Lookup::Hit(hit) = h.cache.lookup(&req, &rfc()) else {
            panic!()
        };
        let served = hit.respond(&req);
        assert_eq!(served.status, StatusCode::OK);
        assert!(served.body.is_empty());
    }

    #[test]
    fn authorization_rules() {
        use Expect::*;
        let h = H::new();
        let auth = [("authorization", "Bearer x")];
        h.store("/plain", &[("cache-control", "max-age=60")]);
        assert_eq!(
            outcome(&h.lookup("/plain", &auth)),
            Miss(MissReason::Authorization)
        );
        for (uri, cc) in [
            ("/pub", "max-age=60, public"),
            ("/s", "s-maxage=60"),
            ("/mr", "max-age=60, must-revalidate"),
        ] {
            let got = h.store_with(
                "GET",
                uri,
                &auth,
                200,
                &[("cache-control", cc)],
                b"x",
                &rfc(),
            );
            assert!(matches!(got, StoreOutcome::Stored(_)), "{cc}");
            assert_eq!(outcome(&h.lookup(uri, &auth)), Hit, "{cc}");
        }
        let got = h.store_with(
            "GET",
            "/priv",
            &auth,
            200,
            &[("cache-control", "max-age=60")],
            b"x",
            &rfc(),
        );
        assert!(matches!(
            got,
            StoreOutcome::NotStored(NotStoredReason::Authorization)
        ));
    }

    #[test]
    fn set_cookie_only_with_opt_in_and_never_stored() {
        let h = H::new();
        let resp = [
            ("cache-control", "max-age=60"),
            ("set-cookie", "sid=1"),
            ("x-a", "1"),
        ];
        let got = h.store_with("GET", "/c", &[], 200, &resp, b"x", &rfc());
        assert!(matches!(
            got,
            StoreOutcome::NotStored(NotStoredReason::SetCookie)
        ));
        let opt_in = RoutePolicy {
            store_set_cookie: true,
            ..rfc()
        };
        let StoreOutcome::Stored(e) = h.store_with("GET", "/c", &[], 200, &resp, b"x", &opt_in)
        else {
            panic!()
        };
        assert!(!e.headers().contains_key("set-cookie"));
        let Lookup::Hit(hit) = h.lookup_with("GET", "/c", &[], &opt_in) else {
            panic!()
        };
        let (_, headers) = hit.response_head();
        assert!(!headers.contains_key("set-cookie"));
        assert_eq!(headers.get("x-a").unwrap(), "1");
    }

    #[test]
    fn qualified_private_and_no_cache_fields_are_not_stored() {
        let h = H::new();
        let e = h.store(
            "/q",
            &[
                (
                    "cache-control",
                    "max-age=60, private=\"x-secret\", no-cache=\"x-fresh\"",
                ),
                ("x-secret", "s"),
                ("x-fresh", "f"),
                ("x-ok", "o"),
            ],
        );
        assert!(!e.headers().contains_key("x-secret"));
        assert!(!e.headers().contains_key("x-fresh"));
        assert_eq!(e.headers().get("x-ok").unwrap(), "o");
    }

    #[test]
    fn internal_headers_are_stripped_for_clients() {
        let h = H::new();
        let resp = [
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "max-age=60"),
            ("cathedral-cdn-cache-control", "max-age=60"),
            ("surrogate-key", "a b"),
            ("cache-tag", "c"),
        ];
        h.store("/i", &resp);
        let names = |policy: &RoutePolicy| {
            let Lookup::Hit(hit) = h.lookup_with("GET", "/i", &[], policy) else {
                panic!()
            };
            let (_, headers) = hit.response_head();
            let mut names: Vec<String> = headers.keys().map(|k| k.to_string()).collect();
            names.sort();
            names
        };
        assert_eq!(
            names(&rfc()),
            ["age", "cache-control", "cdn-cache-control", "date"]
        );
        let strip = RoutePolicy {
            forward_cdn_cache_control: false,
            ..rfc()
        };
        assert_eq!(names(&strip), ["age", "cache-control", "date"]);
    }

    #[test]
    fn revalidation_with_304_updates_headers_and_freshness() {
        let h = H::new();
        let e = h.store(
            "/r",
            &[
                ("cache-control", "max-age=10"),
                ("etag", "\"a\""),
                ("last-modified", "@-100"),
                ("x-h", "1"),
                ("content-length", "5"),
            ],
        );
        h.advance(20);
        let Lookup::Revalidate { hit, conditional } = h.lookup("/r", &[]) else {
            panic!()
        };
        assert_eq!(conditional.get("if-none-match").unwrap(), "\"a\"");
        assert_eq!(
            conditional.get("if-modified-since").unwrap(),
            &h.value("@-100")
        );
        assert_eq!(
            CacheStatus::from_lookup(&Lookup::Revalidate {
                hit: hit.clone(),
                conditional: conditional.clone()
            })
            .value(),
            "cathedral; fwd=stale; ttl=-10"
        );
        let update = h.headers(&[
            ("cache-control", "max-age=100"),
            ("x-h", "2"),
            ("content-length", "0"),
            ("etag", "\"a\""),
        ]);
        let Revalidated::Stored(updated) =
            h.cache
                .revalidated(hit.entry(), &update, Timing::at(h.clock.now()), &rfc())
        else {
            panic!()
        };
        assert!(!updated.is_stale());
        let Lookup::Hit(again) = h.lookup("/r", &[]) else {
            panic!()
        };
        let (_, headers) = again.response_head();
        assert_eq!(headers.get("x-h").unwrap(), "2");
        assert_eq!(headers.get("content-length").unwrap(), "5");
        assert_eq!(headers.get("age").unwrap(), "0");
        assert_eq!(headers.get("date").unwrap(), &h.value("@20"));
        assert_eq!(again.body(), Bytes::from_static(b"hello"));
        assert_eq!(again.entry().hash(), e.hash());
        assert_eq!(h.cache.entries(), 1);
        h.advance(99);
        assert_eq!(outcome(&h.lookup("/r", &[])), Expect::Hit);
        h.advance(2);
        assert_eq!(outcome(&h.lookup("/r", &[])), Expect::Revalidate);
        assert!(h.cache.index_matches_store());
    }

    #[test]
    fn revalidation_edge_cases() {
        let h = H::new();
        h.store("/r", &[("cache-control", "max-age=10"), ("etag", "\"a\"")]);
        h.advance(20);
        let Lookup::Revalidate { hit, .. } = h.lookup("/r", &[]) else {
            panic!()
        };
        let now = Timing::at(h.clock.now());
        let other = h.headers(&[("etag", "\"b\""), ("cache-control", "max-age=100")]);
        assert!(matches!(
            h.cache.revalidated(hit.entry(), &other, now, &rfc()),
            Revalidated::Mismatch
        ));
        let no_store = h.headers(&[("cache-control", "no-store")]);
        let Revalidated::NotStored {
            hit: served,
            reason,
        } = h.cache.revalidated(hit.entry(), &no_store, now, &rfc())
        else {
            panic!()
        };
        assert_eq!(reason, NotStoredReason::NoStore);
        assert_eq!(served.body(), Bytes::from_static(b"hello"));
        assert_eq!(outcome(&h.lookup("/r", &[])), Expect::Miss(MissReason::Uri));
        assert!(h.cache.index_matches_store());
    }

    #[test]
    fn stale_if_error() {
        let h = H::new();
        h.store(
            "/e",
            &[
                ("cache-control", "max-age=10, stale-if-error=60"),
                ("etag", "\"a\""),
            ],
        );
        h.store(
            "/m",
            &[
                (
                    "cache-control",
                    "max-age=10, stale-if-error=60, must-revalidate",
                ),
                ("etag", "\"a\""),
            ],
        );
        h.store("/n", &[("cache-control", "max-age=10"), ("etag", "\"a\"")]);
        h.advance(30);
        let revalidate = |uri: &str, req: &[(&str, &str)]| match h.lookup(uri, req) {
            Lookup::Revalidate { hit, .. } => hit,
            other => panic!("{other:?}"),
        };
        let hit = revalidate("/e", &[]);
        assert!(
            h.cache
                .serve_stale_on_error(&hit, Some(StatusCode::SERVICE_UNAVAILABLE))
        );
        assert!(h.cache.serve_stale_on_error(&hit, None));
        assert!(
            !h.cache
                .serve_stale_on_error(&hit, Some(StatusCode::NOT_FOUND))
        );
        assert!(
            !h.cache
                .serve_stale_on_error(&hit, Some(StatusCode::NOT_IMPLEMENTED))
        );
        assert!(
            !h.cache
                .serve_stale_on_error(&revalidate("/m", &[]), Some(StatusCode::BAD_GATEWAY))
        );
        assert!(
            !h.cache
                .serve_stale_on_error(&revalidate("/n", &[]), Some(StatusCode::BAD_GATEWAY))
        );
        // The request form (RFC 5861 §4).
        let hit = revalidate("/n", &[("cache-control", "stale-if-error=30")]);
        assert!(
            h.cache
                .serve_stale_on_error(&hit, Some(StatusCode::BAD_GATEWAY))
        );
        let hit = revalidate("/n", &[("cache-control", "stale-if-error=10")]);
        assert!(
            !h.cache
                .serve_stale_on_error(&hit, Some(StatusCode::BAD_GATEWAY))
        );
        h.advance(41);
        let hit = revalidate("/e", &[]);
        assert!(
            !h.cache
                .serve_stale_on_error(&hit, Some(StatusCode::SERVICE_UNAVAILABLE))
        );
        assert_eq!(h.cache.stats().stale_served, 3);
    }

    #[test]
    fn stale_while_revalidate_refreshes_once_per_entry() {
        let h = H::new();
        h.store(
            "/s",
            &[
                ("cache-control", "max-age=10, stale-while-revalidate=60"),
                ("etag", "\"a\""),
            ],
        );
        h.advance(20);
        let Lookup::Stale {
            hit,
            refresh: Some(guard),
        } = h.lookup("/s", &[])
        else {
            panic!()
        };
        assert_eq!(hit.ttl_secs(), -10);
        assert_eq!(
            guard.conditional_headers().get("if-none-match").unwrap(),
            "\"a\""
        );
        for _ in 0..5 {
            let Lookup::Stale { refresh, .. } = h.lookup("/s", &[]) else {
                panic!()
            };
            assert!(refresh.is_none());
        }
        // The refresh failed: the guard is dropped and the next request may try again.
        drop(guard);
        let Lookup::Stale {
            refresh: Some(guard),
            ..
        } = h.lookup("/s", &[])
        else {
            panic!()
        };
        // The refresh succeeds with a 304.
        let update = h.headers(&[("cache-control", "max-age=10, stale-while-revalidate=60")]);
        let Revalidated::Stored(_) =
            h.cache
                .revalidated(guard.entry(), &update, Timing::at(h.clock.now()), &rfc())
        else {
            panic!()
        };
        drop(guard);
        assert_eq!(outcome(&h.lookup("/s", &[])), Expect::Hit);
    }

    #[test]
    fn invalidation_after_unsafe_methods() {
        let h = H::new();
        let cc = [("cache-control", "max-age=60")];
        let fill = || {
            for p in ["/a", "/b", "/c", "/d"] {
                h.store(p, &cc);
            }
        };
        let invalidate = |method: &str, status: u16, resp: &[(&str, &str)]| {
            let parts = h.parts(method, "/a", &[]);
            h.cache.invalidate_after_unsafe(
                &CacheRequest::new(&parts, false),
                StatusCode::from_u16(status).unwrap(),
                &h.headers(resp),
                &rfc(),
            )
        };
        fill();
        assert_eq!(invalidate("GET", 200, &[]), 0);
        assert_eq!(invalidate("OPTIONS", 200, &[]), 0);
        assert_eq!(invalidate("POST", 500, &[]), 0);
        assert_eq!(invalidate("POST", 404, &[]), 0);
        assert_eq!(
            invalidate(
                "POST",
                201,
                &[
                    ("location", "/b"),
                    ("content-location", "http://other.example/c")
                ]
            ),
            2
        );
        assert_eq!(outcome(&h.lookup("/a", &[])), Expect::Miss(MissReason::Uri));
        assert_eq!(outcome(&h.lookup("/b", &[])), Expect::Miss(MissReason::Uri));
        assert_eq!(outcome(&h.lookup("/c", &[])), Expect::Hit);
        fill();
        assert_eq!(
            invalidate(
                "PUT",
                303,
                &[
                    ("location", "http://EXAMPLE.com:80/c"),
                    ("content-location", "d")
                ]
            ),
            3
        );
        fill();
        assert_eq!(invalidate("PURGE-LIKE", 204, &[]), 1);
        assert!(h.cache.index_matches_store());
    }

    #[test]
    fn client_conditionals_and_ranges_from_cache() {
        let h = H::new();
        h.store(
            "/f",
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"v\""),
                ("last-modified", "@-100"),
            ],
        );
        let serve = |req: &[(&str, &str)]| {
            let parts = h.parts("GET", "/f", req);
            let req = CacheRequest::new(&parts, false);
            let Lookup::Hit(hit) = h.cache.lookup(&req, &rfc()) else {
                panic!()
            };
            hit.respond(&req)
        };
        assert_eq!(
            serve(&[("if-none-match", "W/\"v\"")]).status,
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            serve(&[("if-modified-since", "@-100")]).status,
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            serve(&[("if-modified-since", "@-101")]).status,
            StatusCode::OK
        );
        let r = serve(&[("range", "bytes=1-3")]);
        assert_eq!(
            (r.status, &r.body[..]),
            (StatusCode::PARTIAL_CONTENT, &b"ell"[..])
        );
        assert_eq!(
            serve(&[("range", "bytes=9-")]).status,
            StatusCode::RANGE_NOT_SATISFIABLE
        );
        assert_eq!(serve(&[("range", "bytes=0-0,2-3")]).status, StatusCode::OK);
        assert_eq!(
            serve(&[("range", "bytes=0-1"), ("if-range", "\"v\"")]).status,
            StatusCode::PARTIAL_CONTENT
        );
        assert_eq!(
            serve(&[("range", "bytes=0-1"), ("if-range", "\"w\"")]).status,
            StatusCode::OK
        );
    }

    #[test]
    fn integrity_always_catches_corruption() {
        let h = H::with(CacheConfig {
            integrity: Integrity::Always,
            ..CacheConfig::default()
        });
        h.store("/i", &[("cache-control", "max-age=60")]);
        assert_eq!(outcome(&h.lookup("/i", &[])), Expect::Hit);
        let parts = h.parts("GET", "/i", &[]);
        assert!(
            h.cache
                .corrupt_for_testing(&CacheRequest::new(&parts, false), &rfc())
        );
        assert_eq!(
            outcome(&h.lookup("/i", &[])),
            Expect::Miss(MissReason::Integrity)
        );
        assert_eq!(outcome(&h.lookup("/i", &[])), Expect::Miss(MissReason::Uri));
        assert_eq!(h.cache.stats().integrity_failures, 1);
        assert!(h.cache.index_matches_store());
    }

    #[test]
    fn integrity_sampling() {
        let h = H::with(CacheConfig {
            integrity: Integrity::Sample(2),
            ..CacheConfig::default()
        });
        h.store("/i", &[("cache-control", "max-age=60")]);
        assert_eq!(outcome(&h.lookup("/i", &[])), Expect::Hit); // sample 0: verified, fine
        let parts = h.parts("GET", "/i", &[]);
        assert!(
            h.cache
                .corrupt_for_testing(&CacheRequest::new(&parts, false), &rfc())
        );
        assert_eq!(outcome(&h.lookup("/i", &[])), Expect::Hit); // sample 1: not verified
        assert_eq!(
            outcome(&h.lookup("/i", &[])),
            Expect::Miss(MissReason::Integrity)
        );
        assert_eq!(h.cache.stats().integrity_failures, 1);
    }

    #[test]
    fn scrubber_visits_every_entry_in_bounded_steps() {
        let h = H::new();
        for i in 0..10 {
            h.store(&format!("/s{i}"), &[("cache-control", "max-age=60")]);
        }
        for i in [3, 7] {
            let parts = h.parts("GET", &format!("/s{i}"), &[]);
            assert!(
                h.cache
                    .corrupt_for_testing(&CacheRequest::new(&parts, false), &rfc())
            );
        }
        let mut total = ScrubReport::default();
        let mut calls = 0;
        loop {
            let r = h.cache.scrub(4);
            assert!(r.checked <= 4);
            calls += 1;
            total.checked += r.checked;
            total.failed += r.failed;
            if r.wrapped {
                break;
            }
        }
        assert_eq!(calls, 3);
        assert_eq!((total.checked, total.failed), (10, 2));
        assert_eq!(h.cache.entries(), 8);
        assert_eq!(
            outcome(&h.lookup("/s3", &[])),
            Expect::Miss(MissReason::Uri)
        );
        let stats = h.cache.stats();
        assert_eq!((stats.integrity_failures, stats.scrubbed), (2, 10));
        // The next cycle finds nothing wrong.
        let r = h.cache.scrub(100);
        assert_eq!((r.checked, r.failed, r.wrapped), (8, 0, true));
        assert!(h.cache.index_matches_store());
    }

    #[test]
    fn purge_url_prefix_and_surrogate_keys() {
        let h = H::new();
        let fill = || {
            h.store(
                "/static/a.css",
                &[
                    ("cache-control", "max-age=60"),
                    ("surrogate-key", "css all"),
                ],
            );
            h.store(
                "/static/b.js",
                &[("cache-control", "max-age=60"), ("cache-tag", "js, all")],
            );
            h.store(
                "/page",
                &[
                    ("cache-control", "max-age=60"),
                    ("etag", "\"p\""),
                    ("surrogate-key", "all"),
                ],
            );
            h.store("/page?x=1", &[("cache-control", "max-age=60")]);
        };
        fill();
        let url = |u: &str| u.parse::<Uri>().unwrap();
        let plain = KeyOptions::default();
        assert_eq!(
            h.cache
                .purge_url(&url("http://EXAMPLE.com/page"), &plain, false),
            1
        );
        assert_eq!(
            outcome(&h.lookup("/page", &[])),
            Expect::Miss(MissReason::Uri)
        );
        assert_eq!(outcome(&h.lookup("/page?x=1", &[])), Expect::Hit);
        assert_eq!(h.cache.purge_url(&url("/relative"), &plain, false), 0);
        assert_eq!(
            h.cache.purge_prefix("HTTP://example.com:80/static/", false),
            2
        );
        assert_eq!(
            outcome(&h.lookup("/static/a.css", &[])),
            Expect::Miss(MissReason::Uri)
        );
        assert_eq!(h.cache.purge_prefix("http://example.com/static/", false), 0);
        fill();
        assert_eq!(h.cache.purge_surrogate_key("js", false), 1);
        assert_eq!(h.cache.purge_surrogate_key("js", false), 0);
        assert_eq!(h.cache.purge_surrogate_key("all", false), 2);
        assert_eq!(h.cache.purge_surrogate_key("nothing", false), 0);
        assert_eq!(h.cache.entries(), 1);
        assert!(h.cache.index_matches_store());
        // Soft purge: entries stay but must revalidate.
        fill();
        assert_eq!(h.cache.purge_surrogate_key("all", true), 3);
        assert_eq!(outcome(&h.lookup("/page", &[])), Expect::Revalidate);
        assert_eq!(outcome(&h.lookup("/page?x=1", &[])), Expect::Hit);
        assert_eq!(
            h.cache
                .purge_url(&url("http://example.com/page?x=1"), &plain, true),
            1
        );
        assert_eq!(outcome(&h.lookup("/page?x=1", &[])), Expect::Revalidate);
        assert_eq!(h.cache.purge_prefix("http://example.com/", true), 4);
        assert_eq!(h.cache.entries(), 4);
        assert_eq!(h.cache.stats().removed, 6);
    }

    #[test]
    fn memory_bound_holds_under_twice_the_capacity() {
        let capacity = 200_000u64;
        let h = H::with(CacheConfig {
            memory_bytes: capacity,
            integrity: Integrity::Sample(0),
            ..CacheConfig::default()
        });
        static BODY: [u8; 2000] = [7u8; 2000];
        let mut inserted = 0u64;
        let mut i = 0;
        while inserted < 2 * capacity {
            let uri = format!("/m{i}");
            let StoreOutcome::Stored(e) = h.store_with(
                "GET",
                &uri,
                &[],
                200,
                &[("cache-control", "max-age=600")],
                &BODY,
                &rfc(),
            ) else {
                panic!()
            };
            inserted += u64::from(e.weight);
            i += 1;
        }
        h.cache.run_pending_tasks();
        assert!(
            h.cache.bytes() <= capacity,
            "{} > {capacity}",
            h.cache.bytes()
        );
        assert!(h.cache.bytes() > 0);
        let stats = h.cache.stats();
        assert!(stats.evicted_size > 0);
        assert_eq!(stats.entries, h.cache.store.entry_count());
        assert!(h.cache.index_matches_store());
    }

    #[test]
    fn object_size_limits_and_incomplete_bodies() {
        let h = H::with(CacheConfig {
            max_object_bytes: 4,
            integrity: Integrity::Sample(0),
            ..CacheConfig::default()
        });
        let cc = [("cache-control", "max-age=60")];
        let got = h.store_with("GET", "/big", &[], 200, &cc, b"12345", &rfc());
        assert!(matches!(
            got,
            StoreOutcome::NotStored(NotStoredReason::TooLarge)
        ));
        let parts = h.parts("GET", "/big", &[]);
        let pre = h.cache.precheck(
            &CacheRequest::new(&parts, false),
            StatusCode::OK,
            &h.headers(&[("content-length", "1000"), ("cache-control", "max-age=60")]),
            &rfc(),
        );
        assert_eq!(pre, Err(NotStoredReason::TooLarge));
        let pre = h.cache.precheck(
            &CacheRequest::new(&parts, false),
            StatusCode::OK,
            &h.headers(&cc),
            &rfc(),
        );
        assert_eq!(pre, Ok(()));
        let got = h.store_with(
            "GET",
            "/cut",
            &[],
            200,
            &[("cache-control", "max-age=60"), ("content-length", "4")],
            b"12",
            &rfc(),
        );
        assert!(matches!(
            got,
            StoreOutcome::NotStored(NotStoredReason::Incomplete)
        ));
    }

    #[test]
    fn content_class_defaults_and_override() {
        let h = H::new();
        let cdn = RoutePolicy::default();
        let stored = |uri: &str, resp: &[(&str, &str)], policy: &RoutePolicy| match h.store_with(
            "GET",
            uri,
            &[],
            200,
            resp,
            b"x",
            policy,
        ) {
            StoreOutcome::Stored(e) => Ok(e.freshness_lifetime().as_secs()),
            StoreOutcome::NotStored(r) => Err(r),
        };
        assert_eq!(stored("/img/a.png", &[], &cdn), Ok(12 * 3600));
        assert_eq!(stored("/app.3f9a1c.js", &[], &cdn), Ok(365 * 86_400));
        assert_eq!(stored("/f.woff2", &[], &cdn), Ok(30 * 86_400));
        assert_eq!(
            stored("/api/x", &[("content-type", "application/json")], &cdn),
            Ok(300)
        );
        assert_eq!(
            stored("/img/b.png", &[("cache-control", "max-age=5")], &cdn),
            Ok(5)
        );
        assert_eq!(
            stored("/sse", &[("content-type", "text/event-stream")], &cdn),
            Err(NotStoredReason::RealTime)
        );
        assert_eq!(
            stored("/img/c.png", &[], &rfc()),
            Err(NotStoredReason::NotFresh)
        );
        let over = RoutePolicy {
            mode: TtlMode::Override,
            default_ttl: Some(Duration::from_secs(30)),
            ..cdn.clone()
        };
        assert_eq!(
            stored("/img/d.png", &[("cache-control", "max-age=5")], &over),
            Ok(30)
        );
        h.advance(11 * 3600);
        assert_eq!(
            outcome(&h.lookup_with("GET", "/img/a.png", &[], &cdn)),
            Expect::Hit
        );
    }

    #[test]
    fn collapsed_hits_recheck_the_waiting_request() {
        let h = H::new();
        let resp = [("cache-control", "max-age=60"), ("vary", "accept")];
        let StoreOutcome::Stored(e) =
            h.store_with("GET", "/c", &[("accept", "a")], 200, &resp, b"x", &rfc())
        else {
            panic!()
        };
        let check = |uri: &str, req: &[(&str, &str)]| {
            let parts = h.parts("GET", uri, req);
            h.cache
                .collapsed_hit(&CacheRequest::new(&parts, false), &e, &rfc())
                .map(|hit| hit.collapsed())
        };
        assert_eq!(check("/c", &[("accept", "a")]), Some(true));
        assert_eq!(check("/c", &[("accept", "b")]), None);
        assert_eq!(check("/other", &[("accept", "a")]), None);
        assert_eq!(
            check("/c", &[("accept", "a"), ("authorization", "x")]),
            None
        );
        h.advance(61);
        assert_eq!(check("/c", &[("accept", "a")]), None);
    }

    #[test]
    fn lookup_cache_status_values() {
        let h = H::new();
        let status = |l: &Lookup| CacheStatus::from_lookup(l).value();
        assert_eq!(status(&h.lookup("/none", &[])), "cathedral; fwd=uri-miss");
        h.store_with(
            "GET",
            "/v",
            &[("accept", "a")],
            200,
            &[("cache-control", "max-age=60"), ("vary", "accept")],
            b"x",
            &rfc(),
        );
        assert_eq!(
            status(&h.lookup("/v", &[("accept", "b")])),
            "cathedral; fwd=vary-miss"
        );
        assert_eq!(
            status(&h.lookup("/v", &[("accept", "a"), ("cache-control", "no-cache")])),
            "cathedral; fwd=request; ttl=60"
        );
        assert_eq!(
            status(&h.lookup_with("POST", "/v", &[], &rfc())),
            "cathedral; fwd=method"
        );
        assert_eq!(
            status(&h.lookup("/none", &[("cache-control", "only-if-cached")])),
            "cathedral; fwd=miss; detail=\"only-if-cached\""
        );
        let stats = h.cache.stats();
        assert_eq!((stats.misses, stats.revalidations, stats.stores), (3, 1, 1));
    }
}
