//! Whether a response may be stored and for how long (RFC 9111 §3, §4.2, RFC 9213), and how
//! its header section is cleaned for storage and updated by a 304 (RFC 9111 §3.1, §3.2).

use std::time::{Duration, SystemTime};

use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, DATE, HeaderValue, PROXY_AUTHENTICATE,
    SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, Method, StatusCode};

use crate::directives::{RequestDirectives, ResponseDirectives};
use crate::freshness::{
    explicit_lifetime, heuristic_lifetime, is_heuristically_cacheable, is_understood,
};
use crate::key::{CacheRequest, vary_fields};
use crate::policy::{ContentClass, RoutePolicy, TtlMode};

/// Why a response was not stored (or a request not looked up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotStoredReason {
    /// Only `GET` responses are stored.
    Method,
    /// The request had no usable host.
    NoHost,
    /// The request carried `Cache-Control: no-store`.
    RequestNoStore,
    /// The status code is not cacheable by default and the response has no explicit freshness
    /// (or is 1xx / 304).
    Status,
    /// 206 Partial Content: this cache stores only whole objects and serves ranges from them.
    Partial,
    /// `no-store` (not overridden by `must-understand`).
    NoStore,
    /// `must-understand` with a status code this cache does not implement.
    MustUnderstand,
    /// Unqualified `private`: a shared cache must not store it.
    Private,
    /// The request had `Authorization` and the response lacks `public`, `s-maxage` and
    /// `must-revalidate` (RFC 9111 §3.5).
    Authorization,
    /// `Set-Cookie` on a route that does not opt in to storing such responses.
    SetCookie,
    /// `Vary: *` (or an unparseable `Vary`): no request could ever match it.
    VaryStar,
    /// Real-time content (event streams, upgrades) is never cached.
    RealTime,
    /// Per-user content on a route whose key does not include the user.
    PerUserWithoutKey,
    /// `Content-Length` disagrees with the body received: an incomplete response.
    Incomplete,
    /// The body exceeds `CacheConfig::max_object_bytes`; stream it through instead.
    TooLarge,
    /// Already stale with nothing to keep it for (no validator, no stale window).
    NotFresh,
    /// A 304's validator does not match the stored response: refetch unconditionally.
    ValidatorMismatch,
}

impl NotStoredReason {
    /// A short token for `Cache-Status` `detail` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStoredReason::Method => "method",
            NotStoredReason::NoHost => "no-host",
            NotStoredReason::RequestNoStore => "request-no-store",
            NotStoredReason::Status => "status",
            NotStoredReason::Partial => "partial",
            NotStoredReason::NoStore => "no-store",
            NotStoredReason::MustUnderstand => "must-understand",
            NotStoredReason::Private => "private",
            NotStoredReason::Authorization => "authorization",
            NotStoredReason::SetCookie => "set-cookie",
            NotStoredReason::VaryStar => "vary-star",
            NotStoredReason::RealTime => "real-time",
            NotStoredReason::PerUserWithoutKey => "per-user-without-key",
            NotStoredReason::Incomplete => "incomplete",
            NotStoredReason::TooLarge => "too-large",
            NotStoredReason::NotFresh => "not-fresh",
            NotStoredReason::ValidatorMismatch => "validator-mismatch",
        }
    }
}

/// What storing a response implies, computed from its head.
#[derive(Debug, Clone)]
pub(crate) struct Analysis {
    pub directives: ResponseDirectives,
    pub lifetime: Duration,
}

/// Request-side conditions for storing (RFC 9111 §3 items on the request).
pub(crate) fn check_request(req: &CacheRequest<'_>) -> Result<(), NotStoredReason> {
    if req.method != Method::GET {
        return Err(NotStoredReason::Method);
    }
    if RequestDirectives::parse(req.headers).no_store {
        return Err(NotStoredReason::RequestNoStore);
    }
    if is_upgrade(req.headers) {
        return Err(NotStoredReason::RealTime);
    }
    Ok(())
}

/// A WebSocket (or other) upgrade request.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        || headers.get_all(CONNECTION).iter().any(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
}

/// Whether the response allows a shared cache to answer a request carrying `Authorization`.
pub(crate) fn allows_authorized(d: &ResponseDirectives) -> bool {
    d.public || d.s_maxage.is_some() || d.must_revalidate
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

/// Response-side storage decision and freshness lifetime for a shared cache.
///
/// `path` is the request path (with query) for class detection; `authorized` says whether the
/// request carried `Authorization`.
pub(crate) fn analyze(
    status: StatusCode,
    headers: &HeaderMap,
    policy: &RoutePolicy,
    path: &str,
    authorized: bool,
    response_time: SystemTime,
) -> Result<Analysis, NotStoredReason> {
    if status.is_informational() || status == StatusCode::NOT_MODIFIED {
        return Err(NotStoredReason::Status);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        return Err(NotStoredReason::Partial);
    }
    let ct = content_type(headers);
    let class = policy.effective_class(path, ct);
    let event_stream = ct.is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|e| e.trim().eq_ignore_ascii_case("text/event-stream"))
    });
    if event_stream || class == Some(ContentClass::RealTime) {
        return Err(NotStoredReason::RealTime);
    }
    let (directives, source) = ResponseDirectives::effective(headers);
    if directives.must_understand {
        if !is_understood(status) {
            return Err(NotStoredReason::MustUnderstand);
        }
        // An understood status with must-understand overrides no-store (RFC 9111 §5.2.2.3).
    } else if directives.no_store {
        return Err(NotStoredReason::NoStore);
    }
    if directives.private.is_all() {
        return Err(NotStoredReason::Private);
    }
    if authorized && !allows_authorized(&directives) {
        return Err(NotStoredReason::Authorization);
    }
    if headers.contains_key(SET_COOKIE) && !policy.store_set_cookie {
        return Err(NotStoredReason::SetCookie);
    }
    if vary_fields(headers).is_none() {
        return Err(NotStoredReason::VaryStar);
    }
    if class == Some(ContentClass::PerUser) && policy.key.headers.is_empty() {
        return Err(NotStoredReason::PerUserWithoutKey);
    }
    let explicit = explicit_lifetime(&directives, source, headers, response_time);
    let default_cacheable = is_heuristically_cacheable(status);
    let fallback = default_cacheable
        .then(|| policy.fallback_ttl(class))
        .flatten();
    let lifetime = match (policy.mode, fallback, explicit) {
        (TtlMode::Override, Some(f), _) => f,
        (_, _, Some(e)) => e,
        (_, Some(f), None) => f,
        (_, None, None) if default_cacheable || directives.public => {
            heuristic_lifetime(headers, response_time, policy.heuristic_cap)
        }
        (_, None, None) => return Err(NotStoredReason::Status),
    };
    Ok(Analysis {
        directives,
        lifetime,
    })
}

/// Whether a response to `req` could be stored, judged from the heads only (the body length
/// is checked against `Content-Length`). Use it to decide whether to buffer a body.
pub(crate) fn precheck(
    req: &CacheRequest<'_>,
    status: StatusCode,
    headers: &HeaderMap,
    policy: &RoutePolicy,
    max_object_bytes: u64,
    now: SystemTime,
) -> Result<Analysis, NotStoredReason> {
    check_request(req)?;
    if let Some(len) = content_length(headers)
        && len > max_object_bytes
    {
        return Err(NotStoredReason::TooLarge);
    }
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    analyze(
        status,
        headers,
        policy,
        path,
        req.headers.contains_key(AUTHORIZATION),
        now,
    )
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const PROXY_AUTHENTICATION_INFO: HeaderName = HeaderName::from_static("proxy-authentication-info");
const SET_COOKIE2: HeaderName = HeaderName::from_static("set-cookie2");

/// Fields never stored (RFC 9111 §3.1): hop-by-hop fields, those named by `Connection`, and
/// cookies (never replayed to another user).
fn unstorable_fields(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names = vec![
        CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        TE,
        TRANSFER_ENCODING,
        UPGRADE,
        TRAILER,
        PROXY_AUTHENTICATE,
        PROXY_AUTHENTICATION_INFO,
        SET_COOKIE,
        SET_COOKIE2,
    ];
    for line in headers.get_all(CONNECTION) {
        let text = String::from_utf8_lossy(line.as_bytes());
        names.extend(
            text.split(',')
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
        );
    }
    names
}

/// The header section as stored: unstorable fields removed, the fields named by qualified
/// `private` / `no-cache` removed (they may not be reused without revalidation: we never reuse
/// them), and a `Date` added when the origin sent none (RFC 9110 §6.6.1).
pub(crate) fn storage_headers(
    headers: &HeaderMap,
    directives: &ResponseDirectives,
    response_time: SystemTime,
) -> HeaderMap {
    let mut out = headers.clone();
    for name in unstorable_fields(headers)
        .iter()
        .chain(directives.private.fields())
        .chain(directives.no_cache.fields())
    {
        out.remove(name);
    }
    if !out.contains_key(DATE)
        && let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(response_time))
    {
        out.insert(DATE, date);
    }
    out
}

/// Fields a 304 does not update (RFC 9111 §3.2): framing and content-coding of the stored body,
/// hop-by-hop fields, cookies, and `Vary` (the stored secondary key depends on it).
fn kept_on_update(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length" | "content-encoding" | "content-range" | "transfer-encoding" | "vary"
    )
}

/// Updates a stored header section with the fields of a 304 (RFC 9111 §3.2): each field in the
/// 304 replaces the stored field of the same name, except those listed in [`kept_on_update`]
/// and the unstorable ones.
pub(crate) fn merge_304(
    stored: &HeaderMap,
    update: &HeaderMap,
    response_time: SystemTime,
) -> HeaderMap {
    let unstorable = unstorable_fields(update);
    let mut out = stored.clone();
    for name in update.keys() {
        if kept_on_update(name) || unstorable.contains(name) {
            continue;
        }
        out.remove(name);
        for value in update.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    if !update.contains_key(DATE)
        && let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(response_time))
    {
        out.insert(DATE, date);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyOptions;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// (status, response headers, route, authorized) -> lifetime secs or reason
    fn check(
        status: u16,
        pairs: &[(&str, &str)],
        policy: &RoutePolicy,
        authorized: bool,
        expected: Result<u64, NotStoredReason>,
    ) {
        let got = analyze(
            StatusCode::from_u16(status).unwrap(),
            &map(pairs),
            policy,
            "/page",
            authorized,
            t0(),
        )
        .map(|a| a.lifetime.as_secs());
        assert_eq!(got, expected, "{status} {pairs:?} auth={authorized}");
    }

    #[test]
    fn storability_and_lifetime() {
        use NotStoredReason::*;
        let rfc = RoutePolicy::pure_rfc();
        let lm = httpdate::fmt_http_date(t0() - Duration::from_secs(1000));
        let date = httpdate::fmt_http_date(t0());
        check(200, &[("cache-control", "max-age=60")], &rfc, false, Ok(60));
        check(200, &[], &rfc, false, Ok(0));
        check(
            200,
            &[("last-modified", &lm), ("date", &date)],
            &rfc,
            false,
            Ok(100),
        );
        check(
            404,
            &[("last-modified", &lm), ("date", &date)],
            &rfc,
            false,
            Ok(100),
        );
        // Not heuristically cacheable: only with explicit freshness or public.
        check(
            500,
            &[("last-modified", &lm), ("date", &date)],
            &rfc,
            false,
            Err(Status),
        );
        check(500, &[("cache-control", "max-age=5")], &rfc, false, Ok(5));
        check(
            302,
            &[("expires", &date), ("date", &date)],
            &rfc,
            false,
            Ok(0),
        );
        check(
            302,
            &[
                ("cache-control", "public"),
                ("last-modified", &lm),
                ("date", &date),
            ],
            &rfc,
            false,
            Ok(100),
        );
        // Explicit freshness wins over heuristics.
        check(
            200,
            &[
                ("cache-control", "max-age=7"),
                ("last-modified", &lm),
                ("date", &date),
            ],
            &rfc,
            false,
            Ok(7),
        );
        check(101, &[], &rfc, false, Err(Status));
        check(
            304,
            &[("cache-control", "max-age=60")],
            &rfc,
            false,
            Err(Status),
        );
        check(
            206,
            &[("cache-control", "max-age=60")],
            &rfc,
            false,
            Err(Partial),
        );
        check(
            200,
            &[("cache-control", "max-age=60, no-store")],
            &rfc,
            false,
            Err(NoStore),
        );
        check(
            200,
            &[("cache-control", "max-age=60, no-store, must-understand")],
            &rfc,
            false,
            Ok(60),
        );
        check(
            299,
            &[("cache-control", "max-age=60, no-store, must-understand")],
            &rfc,
            false,
            Err(MustUnderstand),
        );
        check(
            200,
            &[("cache-control", "max-age=60, private")],
            &rfc,
            false,
            Err(Private),
        );
        check(
            200,
            &[("cache-control", "max-age=60, private=\"x-a\"")],
            &rfc,
            false,
            Ok(60),
        );
        check(
            200,
            &[("cache-control", "max-age=60, no-cache")],
            &rfc,
            false,
            Ok(60),
        );
        // Authorization (RFC 9111 §3.5).
        check(
            200,
            &[("cache-control", "max-age=60")],
            &rfc,
            true,
            Err(Authorization),
        );
        check(
            200,
            &[("cache-control", "max-age=60, public")],
            &rfc,
            true,
            Ok(60),
        );
        check(200, &[("cache-control", "s-maxage=60")], &rfc, true, Ok(60));
        check(
            200,
            &[("cache-control", "max-age=60, must-revalidate")],
            &rfc,
            true,
            Ok(60),
        );
        check(
            200,
            &[("cache-control", "max-age=60, proxy-revalidate")],
            &rfc,
            true,
            Err(Authorization),
        );
        // Targeted fields override Cache-Control entirely.
        check(
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=30"),
            ],
            &rfc,
            false,
            Ok(30),
        );
        check(
            200,
            &[
                ("cache-control", "max-age=30"),
                ("cathedral-cdn-cache-control", "no-store"),
            ],
            &rfc,
            false,
            Err(NoStore),
        );
        check(
            200,
            &[("set-cookie", "a=b"), ("cache-control", "max-age=5")],
            &rfc,
            false,
            Err(SetCookie),
        );
        let cookies = RoutePolicy {
            store_set_cookie: true,
            ..RoutePolicy::pure_rfc()
        };
        check(
            200,
            &[("set-cookie", "a=b"), ("cache-control", "max-age=5")],
            &cookies,
            false,
            Ok(5),
        );
        check(
            200,
            &[("vary", "*"), ("cache-control", "max-age=5")],
            &rfc,
            false,
            Err(VaryStar),
        );
        check(
            200,
            &[("content-type", "text/event-stream")],
            &rfc,
            false,
            Err(RealTime),
        );
    }

    #[test]
    fn route_defaults_and_override() {
        let minute = Duration::from_secs(60);
        let origin = RoutePolicy {
            default_ttl: Some(minute),
            ..RoutePolicy::pure_rfc()
        };
        let over = RoutePolicy {
            mode: TtlMode::Override,
            ..origin.clone()
        };
        check(200, &[], &origin, false, Ok(60));
        check(
            200,
            &[("cache-control", "max-age=5")],
            &origin,
            false,
            Ok(5),
        );
        check(200, &[("cache-control", "max-age=5")], &over, false, Ok(60));
        check(
            200,
            &[("cache-control", "max-age=5, no-store")],
            &over,
            false,
            Err(NotStoredReason::NoStore),
        );
        // The default only covers statuses cacheable by default.
        check(500, &[], &over, false, Err(NotStoredReason::Status));
        let per_user = RoutePolicy {
            class: Some(ContentClass::PerUser),
            ..RoutePolicy::default()
        };
        check(
            200,
            &[],
            &per_user,
            false,
            Err(NotStoredReason::PerUserWithoutKey),
        );
        let keyed = RoutePolicy {
            key: KeyOptions {
                headers: vec![HeaderName::from_static("x-user")],
                ..KeyOptions::default()
            },
            ..per_user
        };
        check(200, &[], &keyed, false, Ok(60));
        let api = RoutePolicy {
            class: Some(ContentClass::Api),
            ..RoutePolicy::default()
        };
        check(200, &[], &api, false, Ok(300));
    }

    #[test]
    fn stored_headers_are_cleaned() {
        let h = map(&[
            ("connection", "x-hop, close"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("set-cookie", "a=b"),
            (
                "cache-control",
                "max-age=5, private=\"x-secret\", no-cache=\"x-fresh\"",
            ),
            ("x-secret", "s"),
            ("x-fresh", "f"),
            ("x-keep", "k"),
        ]);
        let (d, _) = ResponseDirectives::effective(&h);
        let out = storage_headers(&h, &d, t0());
        for gone in [
            "connection",
            "x-hop",
            "keep-alive",
            "transfer-encoding",
            "set-cookie",
            "x-secret",
            "x-fresh",
        ] {
            assert!(!out.contains_key(gone), "{gone}");
        }
        assert_eq!(out.get("x-keep").unwrap(), "k");
        assert_eq!(out.get("date").unwrap(), &httpdate::fmt_http_date(t0()));
    }

    #[test]
    fn update_from_304() {
        let stored = map(&[
            ("content-length", "10"),
            ("content-encoding", "gzip"),
            ("etag", "\"a\""),
            ("x-old", "1"),
            ("x-multi", "1"),
            ("cache-control", "max-age=1"),
            ("vary", "accept"),
            ("date", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ]);
        let update = map(&[
            ("content-length", "0"),
            ("content-encoding", "br"),
            ("x-multi", "2"),
            ("x-multi", "3"),
            ("x-new", "n"),
            ("cache-control", "max-age=100"),
            ("vary", "*"),
            ("set-cookie", "c=d"),
        ]);
        let out = merge_304(&stored, &update, t0());
        assert_eq!(out.get("content-length").unwrap(), "10");
        assert_eq!(out.get("content-encoding").unwrap(), "gzip");
        assert_eq!(out.get("vary").unwrap(), "accept");
        assert_eq!(out.get("x-old").unwrap(), "1");
        assert_eq!(out.get("x-new").unwrap(), "n");
        assert_eq!(out.get("etag").unwrap(), "\"a\"");
        assert_eq!(out.get("cache-control").unwrap(), "max-age=100");
        assert_eq!(
            out.get_all("x-multi").iter().collect::<Vec<_>>(),
            ["2", "3"]
        );
        assert!(!out.contains_key("set-cookie"));
        assert_eq!(out.get("date").unwrap(), &httpdate::fmt_http_date(t0()));
    }
}
