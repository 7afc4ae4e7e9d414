//! Answering a request from a whole stored response: client conditionals (`If-None-Match`,
//! `If-Modified-Since` → 304) and single byte ranges (`Range`, `If-Range` → 206 / 416).
//! Pure functions over heads and bodies.

use std::time::Duration;

use bytes::Bytes;
use http::header::{
    AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, CONTENT_RANGE, DATE, ETAG, EXPIRES,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE, VARY,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::entry::Hit;
use crate::freshness::header_date;
use crate::key::CacheRequest;

/// A complete response to send to the client.
#[derive(Debug, Clone)]
pub struct Served {
    /// Status code (200, 304, 206, 416, or whatever was stored).
    pub status: StatusCode,
    /// Header section; `Content-Length` is set for 206 and 416.
    pub headers: HeaderMap,
    /// Body (empty for 304, 416 and `HEAD`).
    pub body: Bytes,
}

/// An entity-tag: weakness flag and opaque-tag including its quotes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EntityTag<'a> {
    weak: bool,
    opaque: &'a str,
}

/// Parses a comma-separated list of entity-tags; stops at the first malformed member.
fn entity_tags(value: &str) -> Vec<EntityTag<'_>> {
    let mut out = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return out;
        }
        let weak = rest.starts_with("W/");
        if weak {
            rest = &rest[2..];
        }
        if !rest.starts_with('"') {
            return out;
        }
        let Some(end) = rest[1..].find('"') else {
            return out;
        };
        out.push(EntityTag {
            weak,
            opaque: &rest[..end + 2],
        });
        rest = &rest[end + 2..];
    }
}

fn stored_etag(headers: &HeaderMap) -> Option<EntityTag<'_>> {
    let value = headers.get(ETAG)?.to_str().ok()?;
    entity_tags(value).into_iter().next()
}

/// Whether a client's `If-None-Match` / `If-Modified-Since` lets the cache answer 304 from a
/// stored response (RFC 9110 §13.1.2, §13.1.3, §13.2.2; RFC 9111 §4.3.2). `If-Match` and
/// `If-Unmodified-Since` are not evaluated by caches. Only `GET`/`HEAD` and stored 200/203.
pub fn is_not_modified(
    method: &Method,
    req_headers: &HeaderMap,
    status: StatusCode,
    resp_headers: &HeaderMap,
) -> bool {
    if (method != Method::GET && method != Method::HEAD) || !matches!(status.as_u16(), 200 | 203) {
        return false;
    }
    if req_headers.contains_key(IF_NONE_MATCH) {
        let stored = stored_etag(resp_headers);
        return req_headers.get_all(IF_NONE_MATCH).iter().any(|line| {
            let Ok(line) = line.to_str() else {
                return false;
            };
            if line.trim() == "*" {
                return true;
            }
            stored.as_ref().is_some_and(|s| {
                entity_tags(line).iter().any(|t| t.opaque == s.opaque) // weak comparison
            })
        });
    }
    let Some(since) = header_date(req_headers, &IF_MODIFIED_SINCE) else {
        return false;
    };
    match header_date(resp_headers, &LAST_MODIFIED).or_else(|| header_date(resp_headers, &DATE)) {
        Some(modified) => modified <= since,
        None => false,
    }
}

/// The header section of a 304 generated from a stored response (RFC 9110 §15.4.5).
pub fn not_modified_headers(resp_headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    let keep_last_modified = !resp_headers.contains_key(ETAG);
    for name in [
        CACHE_CONTROL,
        CONTENT_LOCATION,
        DATE,
        ETAG,
        EXPIRES,
        VARY,
        AGE,
    ]
    .into_iter()
    .chain(keep_last_modified.then_some(LAST_MODIFIED))
    {
        for value in resp_headers.get_all(&name) {
            out.append(name.clone(), value.clone());
        }
    }
    // Targeted cache fields guide downstream caches; keep them when the route forwards them.
    if let Some(v) = resp_headers.get(crate::directives::CDN_CACHE_CONTROL) {
        out.insert(crate::directives::CDN_CACHE_CONTROL, v.clone());
    }
    out
}

/// How to answer a `Range` request from a whole object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOutcome {
    /// Send the whole object (no range, an ignored range, several ranges, failed `If-Range`).
    Full,
    /// 206 with bytes `start..=end`.
    Partial {
        /// First byte offset.
        start: u64,
        /// Last byte offset, inclusive.
        end: u64,
    },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// Whether `If-Range` allows the range (RFC 9110 §13.1.5): a strong ETag equal to the stored
/// strong ETag, or a date equal to a strong `Last-Modified` (at least 1 s before `Date`).
fn if_range_matches(value: &HeaderValue, resp_headers: &HeaderMap) -> bool {
    let Ok(value) = value.to_str() else {
        return false;
    };
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        let tags = entity_tags(value);
        let (Some(tag), Some(stored)) = (tags.first(), stored_etag(resp_headers)) else {
            return false;
        };
        return !tag.weak && !stored.weak && tag.opaque == stored.opaque;
    }
    let (Ok(date), Some(modified), Some(sent)) = (
        httpdate::parse_http_date(value),
        header_date(resp_headers, &LAST_MODIFIED),
        header_date(resp_headers, &DATE),
    ) else {
        return false;
    };
    date == modified
        && sent
            .duration_since(modified)
            .is_ok_and(|d| d >= Duration::from_secs(1))
}

/// Evaluates `Range` (and `If-Range`) for a `GET` of a whole stored 200 response of `len` bytes.
/// Only a single `bytes` range is honoured; anything else is answered with the whole object.
pub fn evaluate_range(
    method: &Method,
    req_headers: &HeaderMap,
    status: StatusCode,
    resp_headers: &HeaderMap,
    len: u64,
) -> RangeOutcome {
    if method != Method::GET || status != StatusCode::OK {
        return RangeOutcome::Full;
    }
    let Some(range) = req_headers.get(RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeOutcome::Full;
    };
    if let Some(if_range) = req_headers.get(IF_RANGE)
        && !if_range_matches(if_range, resp_headers)
    {
        return RangeOutcome::Full;
    }
    let Some((unit, set)) = range.split_once('=') else {
        return RangeOutcome::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeOutcome::Full;
    }
    let specs: Vec<&str> = set
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let [spec] = specs.as_slice() else {
        return RangeOutcome::Full;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return RangeOutcome::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last N bytes.
        let Some(n) = parse_u64(last) else {
            return RangeOutcome::Full;
        };
        if n == 0 || len == 0 {
            return RangeOutcome::Unsatisfiable;
        }
        return RangeOutcome::Partial {
            start: len.saturating_sub(n),
            end: len - 1,
        };
    }
    let Some(start) = parse_u64(first) else {
        return RangeOutcome::Full;
    };
    let end = if last.is_empty() {
        None
    } else {
        match parse_u64(last) {
            Some(end) if end >= start => Some(end),
            _ => return RangeOutcome::Full, // invalid range-spec: ignore the field
        }
    };
    if start >= len {
        return RangeOutcome::Unsatisfiable;
    }
    RangeOutcome::Partial {
        start,
        end: end.map_or(len - 1, |e| e.min(len - 1)),
    }
}

/// Answers a request from a stored response head (already carrying `Age`, internal fields
/// stripped) and whole body: 304 for a matching client conditional, 206/416 for a single
/// byte range, else the stored response; `HEAD` gets the same head without a body.
pub fn respond(
    method: &Method,
    req_headers: &HeaderMap,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
) -> Served {
    let head = method == Method::HEAD;
    if is_not_modified(method, req_headers, status, &headers) {
        return Served {
            status: StatusCode::NOT_MODIFIED,
            headers: not_modified_headers(&headers),
            body: Bytes::new(),
        };
    }
    let len = body.len() as u64;
    match evaluate_range(method, req_headers, status, &headers, len) {
        RangeOutcome::Full => Served {
            status,
            headers,
            body: if head { Bytes::new() } else { body },
        },
        RangeOutcome::Partial { start, end } => {
            let mut headers = headers;
            let content_range = format!("bytes {start}-{end}/{len}");
            if let Ok(v) = HeaderValue::from_str(&content_range) {
                headers.insert(CONTENT_RANGE, v);
            }
            headers.insert(CONTENT_LENGTH, HeaderValue::from(end - start + 1));
            let (start, end) = (
                usize::try_from(start).unwrap_or(usize::MAX),
                usize::try_from(end).unwrap_or(usize::MAX),
            );
            Served {
                status: StatusCode::PARTIAL_CONTENT,
                headers,
                body: body.slice(start..=end),
            }
        }
        RangeOutcome::Unsatisfiable => {
            let mut out = HeaderMap::new();
            for name in [DATE, AGE, CACHE_CONTROL] {
                if let Some(v) = headers.get(&name) {
                    out.insert(name, v.clone());
                }
            }
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                out.insert(CONTENT_RANGE, v);
            }
            out.insert(CONTENT_LENGTH, HeaderValue::from(0u64));
            Served {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                headers: out,
                body: Bytes::new(),
            }
        }
    }
}

impl Hit {
    /// Answers `req` from this hit: conditionals, a single range, `HEAD`; `Age` set and
    /// internal fields stripped.
    pub fn respond(&self, req: &CacheRequest<'_>) -> Served {
        let (status, headers) = self.response_head();
        respond(req.method, req.headers, status, headers, self.body())
    }
}

/// Request fields for an upstream fetch that fills the cache: the client's `If-None-Match`,
/// `If-Modified-Since`, `If-Range` and `Range` are removed so the origin answers with a whole,
/// storable response (the cache answers the client's conditionals and range itself), and
/// `conditional` (from [`crate::Lookup::Revalidate`] or a [`crate::RefreshGuard`]) is added.
/// For bodies too large to cache (see `Cache::precheck`) forward the client's fields instead.
pub fn upstream_headers(client: &HeaderMap, conditional: Option<&HeaderMap>) -> HeaderMap {
    let mut out = client.clone();
    for name in [IF_NONE_MATCH, IF_MODIFIED_SINCE, IF_RANGE, RANGE] {
        out.remove(name);
    }
    if let Some(conditional) = conditional {
        for (name, value) in conditional {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    const LM: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
    const LM_PLUS: &str = "Mon, 01 Jan 2024 00:00:01 GMT";
    const LM_MINUS: &str = "Sun, 31 Dec 2023 23:59:59 GMT";
    const DATE_LATER: &str = "Tue, 02 Jan 2024 00:00:00 GMT";

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

    fn stored() -> HeaderMap {
        map(&[
            ("etag", "W/\"v1\""),
            ("last-modified", LM),
            ("date", DATE_LATER),
        ])
    }

    fn check_nm(method: Method, req: &[(&str, &str)], resp: &HeaderMap, expected: bool) {
        assert_eq!(
            is_not_modified(&method, &map(req), StatusCode::OK, resp),
            expected,
            "{method} {req:?}"
        );
    }

    #[test]
    fn conditionals() {
        let s = stored();
        check_nm(Method::GET, &[], &s, false);
        check_nm(Method::GET, &[("if-none-match", "\"v1\"")], &s, true);
        check_nm(Method::HEAD, &[("if-none-match", "W/\"v1\"")], &s, true);
        check_nm(
            Method::GET,
            &[("if-none-match", "\"x\", W/\"v1\"")],
            &s,
            true,
        );
        check_nm(
            Method::GET,
            &[("if-none-match", "\"a,b\", \"v1\"")],
            &s,
            true,
        );
        check_nm(Method::GET, &[("if-none-match", "\"v2\"")], &s, false);
        check_nm(Method::GET, &[("if-none-match", "*")], &s, true);
        check_nm(Method::POST, &[("if-none-match", "*")], &s, false);
        // INM takes precedence over IMS.
        check_nm(
            Method::GET,
            &[("if-none-match", "\"v2\""), ("if-modified-since", LM)],
            &s,
            false,
        );
        check_nm(Method::GET, &[("if-modified-since", LM)], &s, true);
        check_nm(Method::GET, &[("if-modified-since", LM_PLUS)], &s, true);
        check_nm(Method::GET, &[("if-modified-since", LM_MINUS)], &s, false);
        check_nm(Method::GET, &[("if-modified-since", "garbage")], &s, false);
        // Without Last-Modified the stored Date is the modification time.
        let no_lm = map(&[("date", LM)]);
        check_nm(Method::GET, &[("if-modified-since", LM)], &no_lm, true);
        check_nm(Method::GET, &[("if-none-match", "\"v1\"")], &no_lm, false);
        assert!(!is_not_modified(
            &Method::GET,
            &map(&[("if-none-match", "*")]),
            StatusCode::NOT_FOUND,
            &s
        ));
    }

    fn check_range(req: &[(&str, &str)], resp: &HeaderMap, len: u64, expected: RangeOutcome) {
        assert_eq!(
            evaluate_range(&Method::GET, &map(req), StatusCode::OK, resp, len),
            expected,
            "{req:?}"
        );
    }

    #[test]
    fn ranges() {
        use RangeOutcome::*;
        let s = map(&[
            ("etag", "\"v1\""),
            ("last-modified", LM),
            ("date", DATE_LATER),
        ]);
        check_range(&[], &s, 10, Full);
        check_range(
            &[("range", "bytes=0-4")],
            &s,
            10,
            Partial { start: 0, end: 4 },
        );
        check_range(
            &[("range", "Bytes = 2-")],
            &s,
            10,
            Partial { start: 2, end: 9 },
        );
        check_range(
            &[("range", "bytes=-3")],
            &s,
            10,
            Partial { start: 7, end: 9 },
        );
        check_range(
            &[("range", "bytes=-30")],
            &s,
            10,
            Partial { start: 0, end: 9 },
        );
        check_range(
            &[("range", "bytes=5-100")],
            &s,
            10,
            Partial { start: 5, end: 9 },
        );
        check_range(&[("range", "bytes=10-")], &s, 10, Unsatisfiable);
        check_range(&[("range", "bytes=10-20")], &s, 10, Unsatisfiable);
        check_range(&[("range", "bytes=-0")], &s, 10, Unsatisfiable);
        check_range(&[("range", "bytes=0-0")], &s, 0, Unsatisfiable);
        check_range(&[("range", "bytes=0-1,4-5")], &s, 10, Full);
        check_range(&[("range", "bytes=5-2")], &s, 10, Full);
        check_range(&[("range", "bytes=a-b")], &s, 10, Full);
        check_range(&[("range", "items=0-1")], &s, 10, Full);
        check_range(
            &[("range", "bytes=99999999999999999999999-")],
            &s,
            10,
            Unsatisfiable,
        );
        // If-Range: strong ETag match, weak never matches, exact strong date.
        check_range(
            &[("range", "bytes=0-1"), ("if-range", "\"v1\"")],
            &s,
            10,
            Partial { start: 0, end: 1 },
        );
        check_range(
            &[("range", "bytes=0-1"), ("if-range", "\"v2\"")],
            &s,
            10,
            Full,
        );
        check_range(
            &[("range", "bytes=0-1"), ("if-range", "W/\"v1\"")],
            &s,
            10,
            Full,
        );
        check_range(
            &[("range", "bytes=0-1"), ("if-range", LM)],
            &s,
            10,
            Partial { start: 0, end: 1 },
        );
        check_range(
            &[("range", "bytes=0-1"), ("if-range", LM_PLUS)],
            &s,
            10,
            Full,
        );
        let weak_lm = map(&[("last-modified", LM), ("date", LM)]);
        check_range(
            &[("range", "bytes=0-1"), ("if-range", LM)],
            &weak_lm,
            10,
            Full,
        );
        let weak_etag = map(&[("etag", "W/\"v1\"")]);
        check_range(
            &[("range", "bytes=0-1"), ("if-range", "\"v1\"")],
            &weak_etag,
            10,
            Full,
        );
        assert_eq!(
            evaluate_range(
                &Method::HEAD,
                &map(&[("range", "bytes=0-1")]),
                StatusCode::OK,
                &s,
                10
            ),
            Full
        );
    }

    #[test]
    fn respond_builds_responses() {
        let body = Bytes::from_static(b"0123456789");
        let s = map(&[
            ("etag", "\"v1\""),
            ("content-type", "text/plain"),
            ("x-a", "1"),
            ("age", "3"),
        ]);
        let r = respond(
            &Method::GET,
            &map(&[("range", "bytes=2-4")]),
            StatusCode::OK,
            s.clone(),
            body.clone(),
        );
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.body, Bytes::from_static(b"234"));
        assert_eq!(r.headers.get("content-range").unwrap(), "bytes 2-4/10");
        assert_eq!(r.headers.get("content-length").unwrap(), "3");
        let r = respond(
            &Method::GET,
            &map(&[("range", "bytes=20-")]),
            StatusCode::OK,
            s.clone(),
            body.clone(),
        );
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.headers.get("content-range").unwrap(), "bytes */10");
        assert!(r.body.is_empty());
        let r = respond(
            &Method::GET,
            &map(&[("if-none-match", "\"v1\"")]),
            StatusCode::OK,
            s.clone(),
            body.clone(),
        );
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        assert!(r.body.is_empty());
        assert_eq!(r.headers.get("etag").unwrap(), "\"v1\"");
        assert_eq!(r.headers.get("age").unwrap(), "3");
        assert!(!r.headers.contains_key("content-type"));
        assert!(!r.headers.contains_key("x-a"));
        let r = respond(
            &Method::HEAD,
            &HeaderMap::new(),
            StatusCode::OK,
            s.clone(),
            body.clone(),
        );
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body.is_empty());
        assert_eq!(r.headers.get("x-a").unwrap(), "1");
        let r = respond(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            s,
            body.clone(),
        );
        assert_eq!(r.body, body);
    }

    #[test]
    fn upstream_headers_drop_client_conditionals() {
        let client = map(&[
            ("if-none-match", "\"c\""),
            ("if-modified-since", LM),
            ("range", "bytes=0-1"),
            ("if-range", "\"c\""),
            ("accept", "text/html"),
        ]);
        let ours = map(&[("if-none-match", "\"v1\"")]);
        let out = upstream_headers(&client, Some(&ours));
        assert_eq!(out.len(), 2);
        assert_eq!(out.get("if-none-match").unwrap(), "\"v1\"");
        assert_eq!(out.get("accept").unwrap(), "text/html");
        assert_eq!(upstream_headers(&client, None).len(), 1);
    }
}
