//! Conditional requests and byte ranges (RFC 9110 §13 and §14) for
//! representations the node serves itself.

use std::time::SystemTime;

use http::{HeaderMap, Method, header};

#[derive(Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Serve the representation (possibly a range of it).
    Proceed,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

/// Evaluates `If-Match`, `If-Unmodified-Since`, `If-None-Match` and
/// `If-Modified-Since` in the order of RFC 9110 §13.2.2.
pub fn evaluate(
    method: &Method,
    headers: &HeaderMap,
    etag: &str,
    modified: Option<SystemTime>,
) -> Precondition {
    if let Some(v) = header_str(headers, &header::IF_MATCH) {
        if !list_matches(v, etag, Comparison::Strong) {
            return Precondition::Failed;
        }
    } else if let (Some(v), Some(modified)) =
        (header_str(headers, &header::IF_UNMODIFIED_SINCE), modified)
        && let Ok(since) = httpdate::parse_http_date(v)
        && truncate(modified) > since
    {
        return Precondition::Failed;
    }
    let get_or_head = method == Method::GET || method == Method::HEAD;
    if let Some(v) = header_str(headers, &header::IF_NONE_MATCH) {
        if list_matches(v, etag, Comparison::Weak) {
            return if get_or_head {
                Precondition::NotModified
            } else {
                Precondition::Failed
            };
        }
    } else if get_or_head
        && let (Some(v), Some(modified)) =
            (header_str(headers, &header::IF_MODIFIED_SINCE), modified)
        && let Ok(since) = httpdate::parse_http_date(v)
        && truncate(modified) <= since
    {
        return Precondition::NotModified;
    }
    Precondition::Proceed
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Range {
    /// No usable Range header: send the whole representation.
    Full,
    /// Inclusive byte positions.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// A single `bytes=` range over a representation of `len` bytes. Multiple
/// ranges, other units and syntax errors all fall back to the full body,
/// as RFC 9110 §14.2 allows.
pub fn range(headers: &HeaderMap, len: u64, etag: &str, modified: Option<SystemTime>) -> Range {
    let Some(spec) = header_str(headers, &header::RANGE) else {
        return Range::Full;
    };
    if let Some(cond) = header_str(headers, &header::IF_RANGE) {
        let still_valid = if cond.starts_with('"') {
            // A strong validator is required for If-Range.
            !etag.starts_with("W/") && cond == etag
        } else {
            match (httpdate::parse_http_date(cond), modified) {
                (Ok(date), Some(m)) => truncate(m) == date,
                _ => false,
            }
        };
        if !still_valid {
            return Range::Full;
        }
    }
    parse_range(spec, len)
}

fn parse_range(spec: &str, len: u64) -> Range {
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return Range::Full;
    };
    if set.contains(',') {
        return Range::Full;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return Range::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if first.is_empty() {
        // Suffix range: the last N bytes.
        if !digits(last) {
            return Range::Full;
        }
        let n: u64 = last.parse().unwrap_or(u64::MAX);
        if n == 0 || len == 0 {
            return Range::Unsatisfiable;
        }
        return Range::Partial {
            start: len.saturating_sub(n),
            end: len - 1,
        };
    }
    if !digits(first) || !(last.is_empty() || digits(last)) {
        return Range::Full;
    }
    let start: u64 = first.parse().unwrap_or(u64::MAX);
    let end: u64 = if last.is_empty() {
        u64::MAX
    } else {
        last.parse().unwrap_or(u64::MAX)
    };
    if end < start {
        return Range::Full;
    }
    if start >= len {
        return Range::Unsatisfiable;
    }
    Range::Partial {
        start,
        end: end.min(len - 1),
    }
}

#[derive(Clone, Copy)]
enum Comparison {
    Strong,
    Weak,
}

fn list_matches(list: &str, etag: &str, cmp: Comparison) -> bool {
    if list.trim() == "*" {
        return true;
    }
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    list.split(',').map(str::trim).any(|candidate| match cmp {
        Comparison::Strong => {
            !candidate.starts_with("W/") && !etag.starts_with("W/") && candidate == etag
        }
        Comparison::Weak => opaque(candidate) == opaque(etag),
    })
}

/// HTTP dates have one-second resolution.
fn truncate(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::Duration;

    const ETAG: &str = "\"b3-abc\"";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn mtime() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn check_pre(method: Method, pairs: &[(&'static str, &str)], expected: Precondition) {
        assert_eq!(
            evaluate(&method, &headers(pairs), ETAG, Some(mtime())),
            expected,
            "{pairs:?}"
        );
    }

    #[test]
    fn preconditions() {
        let date = httpdate::fmt_http_date(mtime());
        let earlier = httpdate::fmt_http_date(mtime() - Duration::from_secs(10));
        check_pre(Method::GET, &[], Precondition::Proceed);
        check_pre(
            Method::GET,
            &[("if-none-match", ETAG)],
            Precondition::NotModified,
        );
        check_pre(
            Method::GET,
            &[("if-none-match", "W/\"b3-abc\"")],
            Precondition::NotModified,
        );
        check_pre(
            Method::GET,
            &[("if-none-match", "\"x\", \"b3-abc\"")],
            Precondition::NotModified,
        );
        check_pre(
            Method::GET,
            &[("if-none-match", "*")],
            Precondition::NotModified,
        );
        check_pre(
            Method::GET,
            &[("if-none-match", "\"x\"")],
            Precondition::Proceed,
        );
        check_pre(
            Method::HEAD,
            &[("if-modified-since", &date)],
            Precondition::NotModified,
        );
        check_pre(
            Method::GET,
            &[("if-modified-since", &earlier)],
            Precondition::Proceed,
        );
        // If-None-Match takes precedence over If-Modified-Since.
        check_pre(
            Method::GET,
            &[("if-none-match", "\"x\""), ("if-modified-since", &date)],
            Precondition::Proceed,
        );
        check_pre(Method::GET, &[("if-match", "\"x\"")], Precondition::Failed);
        check_pre(Method::GET, &[("if-match", ETAG)], Precondition::Proceed);
        check_pre(
            Method::GET,
            &[("if-match", "W/\"b3-abc\"")],
            Precondition::Failed,
        );
        check_pre(
            Method::GET,
            &[("if-unmodified-since", &earlier)],
            Precondition::Failed,
        );
        check_pre(
            Method::GET,
            &[("if-modified-since", "garbage")],
            Precondition::Proceed,
        );
    }

    fn check_range(pairs: &[(&'static str, &str)], len: u64, expected: Range) {
        assert_eq!(
            range(&headers(pairs), len, ETAG, Some(mtime())),
            expected,
            "{pairs:?}"
        );
    }

    #[test]
    fn ranges() {
        use Range::*;
        check_range(&[], 100, Full);
        check_range(&[("range", "bytes=0-9")], 100, Partial { start: 0, end: 9 });
        check_range(
            &[("range", "bytes=90-")],
            100,
            Partial { start: 90, end: 99 },
        );
        check_range(
            &[("range", "bytes=90-500")],
            100,
            Partial { start: 90, end: 99 },
        );
        check_range(
            &[("range", "bytes=-10")],
            100,
            Partial { start: 90, end: 99 },
        );
        check_range(
            &[("range", "bytes=-500")],
            100,
            Partial { start: 0, end: 99 },
        );
        check_range(&[("range", "bytes=100-")], 100, Unsatisfiable);
        check_range(&[("range", "bytes=-0")], 100, Unsatisfiable);
        check_range(&[("range", "bytes=0-0,5-6")], 100, Full);
        check_range(&[("range", "items=0-5")], 100, Full);
        check_range(&[("range", "bytes=5-1")], 100, Full);
        check_range(&[("range", "bytes=a-b")], 100, Full);
        check_range(
            &[("range", "bytes=0-9"), ("if-range", ETAG)],
            100,
            Partial { start: 0, end: 9 },
        );
        check_range(
            &[("range", "bytes=0-9"), ("if-range", "\"old\"")],
            100,
            Full,
        );
        check_range(
            &[
                ("range", "bytes=0-9"),
                ("if-range", &httpdate::fmt_http_date(mtime())),
            ],
            100,
            Partial { start: 0, end: 9 },
        );
    }
}
