//! A stored response ([`Entry`]) and what a lookup hands out: [`Hit`] and the per-entry
//! background-refresh guard ([`RefreshGuard`]); also the headers the caller strips for clients.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{AGE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::directives::{
    CATHEDRAL_CDN_CACHE_CONTROL, CDN_CACHE_CONTROL, DELTA_MAX, ResponseDirectives,
};
use crate::freshness::{Timing, current_age};
use crate::key::SecondaryKey;
use crate::policy::RoutePolicy;
use crate::storable::allows_authorized;

/// `Surrogate-Key`: space-separated purge tags set by the origin; never sent to clients.
pub const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
/// `Cache-Tag`: comma-separated purge tags set by the origin; never sent to clients.
pub const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

static STRIP_ALWAYS: [HeaderName; 3] = [CATHEDRAL_CDN_CACHE_CONTROL, SURROGATE_KEY, CACHE_TAG];
static STRIP_WITH_CDN: [HeaderName; 4] = [
    CATHEDRAL_CDN_CACHE_CONTROL,
    SURROGATE_KEY,
    CACHE_TAG,
    CDN_CACHE_CONTROL,
];

/// Response fields the caller must remove before sending any response of this route to a
/// client, cached or not: `Cathedral-CDN-Cache-Control`, `Surrogate-Key` and `Cache-Tag`
/// always, `CDN-Cache-Control` unless the route forwards it.
pub fn client_strip_list(policy: &RoutePolicy) -> &'static [HeaderName] {
    if policy.forward_cdn_cache_control {
        &STRIP_ALWAYS
    } else {
        &STRIP_WITH_CDN
    }
}

/// Removes [`client_strip_list`] fields from a response header section.
pub fn strip_for_client(headers: &mut HeaderMap, policy: &RoutePolicy) {
    for name in client_strip_list(policy) {
        headers.remove(name);
    }
}

const MAX_SURROGATE_KEYS: usize = 64;
const MAX_SURROGATE_KEY_LEN: usize = 256;

/// Purge tags of a response: `Surrogate-Key` (space-separated) and `Cache-Tag` (comma-separated).
pub(crate) fn surrogate_keys(headers: &HeaderMap) -> Vec<Box<str>> {
    let mut keys: Vec<Box<str>> = Vec::new();
    let mut add = |k: &str| {
        if !k.is_empty()
            && k.len() <= MAX_SURROGATE_KEY_LEN
            && keys.len() < MAX_SURROGATE_KEYS
            && !keys.iter().any(|have| &**have == k)
        {
            keys.push(k.into());
        }
    };
    for line in headers.get_all(SURROGATE_KEY) {
        if let Ok(line) = line.to_str() {
            line.split_ascii_whitespace().for_each(&mut add);
        }
    }
    for line in headers.get_all(CACHE_TAG) {
        if let Ok(line) = line.to_str() {
            line.split(',').map(str::trim).for_each(&mut add);
        }
    }
    keys
}

/// A stored response: head, body, blake3 hash and the freshness facts computed at store time.
pub struct Entry {
    pub(crate) id: u64,
    pub(crate) key: Arc<str>,
    pub(crate) secondary: SecondaryKey,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) hash: blake3::Hash,
    pub(crate) timing: Timing,
    pub(crate) corrected_initial_age: Duration,
    pub(crate) lifetime: Duration,
    pub(crate) directives: ResponseDirectives,
    pub(crate) surrogate_keys: Vec<Box<str>>,
    pub(crate) retain_until: SystemTime,
    pub(crate) weight: u32,
    pub(crate) soft_purged: AtomicBool,
    pub(crate) refreshing: AtomicBool,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .field("lifetime", &self.lifetime)
            .field("retain_until", &self.retain_until)
            .finish_non_exhaustive()
    }
}

/// Fixed bytes charged per entry on top of body and headers (bookkeeping, indexes, moka).
pub(crate) const ENTRY_OVERHEAD: usize = 512;

pub(crate) fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum()
}

impl Entry {
    /// The primary cache key (`scheme://host[:port]/path[?query]`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Stored status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Stored header section (without `Set-Cookie` and hop-by-hop fields).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The stored body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// blake3 hash of the body, computed when stored.
    pub fn hash(&self) -> &blake3::Hash {
        &self.hash
    }

    /// Purge tags parsed from `Surrogate-Key` / `Cache-Tag`.
    pub fn surrogate_keys(&self) -> impl Iterator<Item = &str> {
        self.surrogate_keys.iter().map(|k| &**k)
    }

    /// The freshness lifetime (zero after a soft purge).
    pub fn freshness_lifetime(&self) -> Duration {
        if self.soft_purged.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            self.lifetime
        }
    }

    /// `current_age` at `now` (RFC 9111 §4.2.3).
    pub fn current_age(&self, now: SystemTime) -> Duration {
        current_age(self.corrected_initial_age, self.timing.response_time, now)
    }

    /// Whether the entry is fresh at `now`.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        self.freshness_lifetime() > self.current_age(now)
    }

    /// Remaining freshness in whole seconds at `now`; negative once stale.
    pub fn ttl_secs(&self, now: SystemTime) -> i64 {
        let lifetime = i64::try_from(self.freshness_lifetime().as_secs()).unwrap_or(i64::MAX);
        let age = i64::try_from(self.current_age(now).as_secs()).unwrap_or(i64::MAX);
        lifetime.saturating_sub(age)
    }

    /// Status and header section to send at `now`, with `Age` set. The caller still strips
    /// [`client_strip_list`] fields (a [`Hit`] does that itself).
    pub fn response_head(&self, now: SystemTime) -> (StatusCode, HeaderMap) {
        let mut headers = self.headers.clone();
        headers.insert(AGE, age_value(self.current_age(now)));
        (self.status, headers)
    }

    /// Whether the entry has a validator (`ETag` or `Last-Modified`).
    pub fn has_validator(&self) -> bool {
        self.headers.contains_key(ETAG) || self.headers.contains_key(LAST_MODIFIED)
    }

    /// Conditional request fields to validate this entry upstream (RFC 9111 §4.3.1):
    /// `If-None-Match` from `ETag`, `If-Modified-Since` from `Last-Modified`. Empty when the
    /// entry has no validator (then the revalidation is a plain fetch).
    pub fn conditional_headers(&self) -> HeaderMap {
        let mut out = HeaderMap::new();
        for etag in self.headers.get_all(ETAG) {
            out.append(IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = self.headers.get(LAST_MODIFIED) {
            out.insert(IF_MODIFIED_SINCE, lm.clone());
        }
        out
    }

    /// Whether the response itself allows serving it stale under `stale-while-revalidate` /
    /// `stale-if-error`: not with `must-revalidate`, `proxy-revalidate` or unqualified
    /// `no-cache` (RFC 9111 §4.2.4). The `proxy-revalidate` implied by `s-maxage` yields to an
    /// explicit `stale-*` directive in the same response (see crate docs).
    pub(crate) fn stale_permitted(&self) -> bool {
        !self.directives.forbids_stale() && !self.directives.no_cache.is_all()
    }

    /// Whether a client's `max-stale` may be honoured (also not with `s-maxage`).
    pub(crate) fn client_stale_permitted(&self) -> bool {
        self.stale_permitted() && self.directives.s_maxage.is_none()
    }

    pub(crate) fn allows_authorized(&self) -> bool {
        allows_authorized(&self.directives)
    }

    pub(crate) fn swr_window(&self) -> Option<Duration> {
        self.directives
            .stale_while_revalidate
            .filter(|_| self.stale_permitted())
            .map(|s| Duration::from_secs(u64::from(s)))
    }

    pub(crate) fn sie_window(&self) -> Option<Duration> {
        self.directives
            .stale_if_error
            .filter(|_| self.stale_permitted())
            .map(|s| Duration::from_secs(u64::from(s)))
    }

    /// Re-hashes the body and compares with the hash taken at store time.
    pub(crate) fn verify(&self) -> bool {
        blake3::hash(&self.body) == self.hash
    }
}

fn age_value(age: Duration) -> HeaderValue {
    HeaderValue::from(age.as_secs().min(u64::from(DELTA_MAX)))
}

/// A stored response selected for this request. Serve it with [`Hit::response_head`] and
/// [`Hit::body`], or let [`Hit::respond`] apply conditionals, ranges and `HEAD`.
#[derive(Debug, Clone)]
pub struct Hit {
    pub(crate) entry: Arc<Entry>,
    pub(crate) now: SystemTime,
    pub(crate) strip: &'static [HeaderName],
    pub(crate) stale_if_error: bool,
    pub(crate) collapsed: bool,
}

impl Hit {
    pub(crate) fn new(entry: Arc<Entry>, now: SystemTime, policy: &RoutePolicy) -> Self {
        Self {
            entry,
            now,
            strip: client_strip_list(policy),
            stale_if_error: false,
            collapsed: false,
        }
    }

    /// The stored entry.
    pub fn entry(&self) -> &Arc<Entry> {
        &self.entry
    }

    /// `Age` in seconds at lookup time.
    pub fn age_secs(&self) -> u64 {
        self.entry.current_age(self.now).as_secs()
    }

    /// Remaining freshness in seconds at lookup time (negative when stale): `Cache-Status` `ttl`.
    pub fn ttl_secs(&self) -> i64 {
        self.entry.ttl_secs(self.now)
    }

    /// Whether the entry was stale at lookup time.
    pub fn is_stale(&self) -> bool {
        !self.entry.is_fresh(self.now)
    }

    /// Whether this hit came from a coalesced fetch led by another request.
    pub fn collapsed(&self) -> bool {
        self.collapsed
    }

    /// Whether the entry may be served if the upstream fails while revalidating it
    /// (`stale-if-error` from the response or the request, RFC 5861 §4), decided at lookup.
    pub fn stale_if_error_allowed(&self) -> bool {
        self.stale_if_error
    }

    /// Status and headers to send: `Age` set, internal fields stripped.
    pub fn response_head(&self) -> (StatusCode, HeaderMap) {
        let (status, mut headers) = self.entry.response_head(self.now);
        for name in self.strip {
            headers.remove(name);
        }
        (status, headers)
    }

    /// The stored body (cheap clone).
    pub fn body(&self) -> Bytes {
        self.entry.body.clone()
    }
}

/// Exclusive right to refresh one stale entry in the background (RFC 5861
/// `stale-while-revalidate`). At most one exists per entry; dropping it (after storing the
/// refreshed response, or on failure) lets a later request try again.
#[derive(Debug)]
pub struct RefreshGuard {
    entry: Arc<Entry>,
}

impl RefreshGuard {
    pub(crate) fn try_acquire(entry: &Arc<Entry>) -> Option<Self> {
        entry
            .refreshing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Self {
                entry: Arc::clone(entry),
            })
    }

    /// The entry being refreshed (pass it to `Cache::revalidated` on a 304).
    pub fn entry(&self) -> &Arc<Entry> {
        &self.entry
    }

    /// Conditional fields for the background request.
    pub fn conditional_headers(&self) -> HeaderMap {
        self.entry.conditional_headers()
    }
}

impl Drop for RefreshGuard {
    fn drop(&mut self) {
        self.entry.refreshing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
impl Entry {
    /// A fresh (60 s) entry for tests that need one without a cache.
    pub(crate) fn for_tests(key: &str, body: &'static [u8]) -> Arc<Self> {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Arc::new(Self {
            id: 0,
            key: key.into(),
            secondary: SecondaryKey::default(),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body),
            hash: blake3::hash(body),
            timing: Timing::at(now),
            corrected_initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(60),
            directives: ResponseDirectives::default(),
            surrogate_keys: Vec::new(),
            retain_until: now + Duration::from_secs(60),
            weight: 0,
            soft_purged: AtomicBool::new(false),
            refreshing: AtomicBool::new(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surrogate_keys_parse_both_fields() {
        let mut h = HeaderMap::new();
        h.append(SURROGATE_KEY, HeaderValue::from_static("  a  b a "));
        h.append(CACHE_TAG, HeaderValue::from_static("c, d ,,b"));
        let keys: Vec<_> = surrogate_keys(&h).into_iter().map(String::from).collect();
        assert_eq!(keys, ["a", "b", "c", "d"]);
    }

    #[test]
    fn client_strip_lists() {
        let forward = RoutePolicy::default();
        let strip = RoutePolicy {
            forward_cdn_cache_control: false,
            ..RoutePolicy::default()
        };
        let mut h = HeaderMap::new();
        for name in [
            "cathedral-cdn-cache-control",
            "cdn-cache-control",
            "surrogate-key",
            "cache-tag",
            "x-a",
        ] {
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
        }
        let mut a = h.clone();
        strip_for_client(&mut a, &forward);
        let mut left: Vec<_> = a.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["cdn-cache-control", "x-a"]);
        strip_for_client(&mut h, &strip);
        assert_eq!(
            h.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["x-a"]
        );
    }
}
