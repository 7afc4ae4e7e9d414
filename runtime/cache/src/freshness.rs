//! Freshness and age arithmetic (RFC 9111 §4.2): explicit and heuristic lifetimes, `Age`.

use std::time::{Duration, SystemTime};

use http::header::{AGE, DATE, EXPIRES, LAST_MODIFIED};
use http::{HeaderMap, HeaderName, StatusCode};

use crate::directives::{DELTA_MAX, DirectiveSource, ResponseDirectives, parse_delta};

/// When the exchange that produced a response happened, read from the cache's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// When the request was sent upstream (`request_time` in RFC 9111 §4.2.3).
    pub request_time: SystemTime,
    /// When the response head was received (`response_time` in RFC 9111 §4.2.3).
    pub response_time: SystemTime,
}

impl Timing {
    /// A zero-latency exchange at `at`.
    pub fn at(at: SystemTime) -> Self {
        Self {
            request_time: at,
            response_time: at,
        }
    }
}

/// Status codes defined as heuristically cacheable (RFC 9110 §15.1).
pub fn is_heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Status codes whose caching requirements this cache understands (for `must-understand`,
/// RFC 9111 §5.2.2.3): the final status codes defined by RFC 9110.
pub(crate) fn is_understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=206
            | 300..=305
            | 307
            | 308
            | 400..=418
            | 421..=422
            | 426
            | 500..=505
    )
}

fn secs(n: u32) -> Duration {
    Duration::from_secs(u64::from(n))
}

/// Parses an HTTP-date header (first field line); `None` if absent or invalid.
pub(crate) fn header_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    let value = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(value.trim()).ok()
}

/// The `Age` header as delta-seconds; an absent or invalid value counts as 0.
pub(crate) fn age_value(headers: &HeaderMap) -> Duration {
    headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| parse_delta(v.trim()))
        .map(secs)
        .unwrap_or_default()
}

fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

/// `corrected_initial_age` (RFC 9111 §4.2.3).
pub(crate) fn corrected_initial_age(headers: &HeaderMap, timing: Timing) -> Duration {
    let date = header_date(headers, &DATE).unwrap_or(timing.response_time);
    let apparent_age = since(timing.response_time, date);
    let response_delay = since(timing.response_time, timing.request_time);
    let corrected_age_value = age_value(headers).saturating_add(response_delay);
    apparent_age.max(corrected_age_value)
}

/// `current_age` (RFC 9111 §4.2.3): `corrected_initial_age + resident_time`.
pub(crate) fn current_age(
    corrected_initial_age: Duration,
    response_time: SystemTime,
    now: SystemTime,
) -> Duration {
    corrected_initial_age.saturating_add(since(now, response_time))
}

/// The explicit freshness lifetime (RFC 9111 §4.2.1), for a shared cache:
/// `s-maxage`, then `max-age`, then `Expires − Date`. With a targeted field in effect,
/// `Expires` is ignored (RFC 9213 §2.1). An invalid `Expires` (or several differing ones)
/// means "already expired".
pub(crate) fn explicit_lifetime(
    d: &ResponseDirectives,
    source: DirectiveSource,
    headers: &HeaderMap,
    response_time: SystemTime,
) -> Option<Duration> {
    if let Some(s) = d.s_maxage {
        return Some(secs(s));
    }
    if let Some(m) = d.max_age {
        return Some(secs(m));
    }
    if source == DirectiveSource::Targeted {
        return None;
    }
    let mut lines = headers.get_all(EXPIRES).iter();
    let first = lines.next()?;
    if lines.any(|other| other != first) {
        return Some(Duration::ZERO);
    }
    let Some(expires) = first
        .to_str()
        .ok()
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
    else {
        return Some(Duration::ZERO);
    };
    let date = header_date(headers, &DATE).unwrap_or(response_time);
    Some(since(expires, date).min(secs(DELTA_MAX)))
}

/// Heuristic freshness (RFC 9111 §4.2.2): 10% of `Date − Last-Modified`, capped at `cap`.
/// Zero when there is no usable `Last-Modified`.
pub(crate) fn heuristic_lifetime(
    headers: &HeaderMap,
    response_time: SystemTime,
    cap: Duration,
) -> Duration {
    let Some(last_modified) = header_date(headers, &LAST_MODIFIED) else {
        return Duration::ZERO;
    };
    let date = header_date(headers, &DATE).unwrap_or(response_time);
    (since(date, last_modified) / 10).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn date(offset: i64) -> String {
        let t = if offset >= 0 {
            t0() + Duration::from_secs(offset.unsigned_abs())
        } else {
            t0() - Duration::from_secs(offset.unsigned_abs())
        };
        httpdate::fmt_http_date(t)
    }

    fn headers(pairs: &[(&str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    /// (headers, request_time offset, response_time offset) -> corrected_initial_age secs
    fn check_age(pairs: &[(&str, String)], req: u64, resp: u64, expected: u64) {
        let timing = Timing {
            request_time: t0() + Duration::from_secs(req),
            response_time: t0() + Duration::from_secs(resp),
        };
        assert_eq!(
            corrected_initial_age(&headers(pairs), timing),
            Duration::from_secs(expected),
            "{pairs:?}"
        );
    }

    #[test]
    fn age_arithmetic() {
        // No Date, no Age, no delay.
        check_age(&[], 0, 0, 0);
        // apparent_age = response_time - Date.
        check_age(&[("date", date(0))], 0, 10, 10);
        // Date in the future: apparent age clamps at 0; response_delay counts.
        check_age(&[("date", date(100))], 0, 2, 2);
        // corrected_age_value = Age + response_delay wins over apparent_age.
        check_age(&[("date", date(0)), ("age", "30".into())], 0, 5, 35);
        check_age(&[("date", date(-100)), ("age", "30".into())], 0, 5, 105);
        // Invalid Age values are ignored.
        check_age(&[("age", "-5".into())], 0, 0, 0);
        check_age(&[("age", "1.5".into())], 0, 0, 0);
        check_age(&[("age", "abc".into())], 3, 4, 1);
        check_age(&[("age", "7, 9".into())], 0, 0, 7);
        // Unparseable Date: treated as absent.
        check_age(&[("date", "yesterday".into())], 0, 1, 1);
        // current_age adds resident time.
        let cia = Duration::from_secs(5);
        assert_eq!(
            current_age(cia, t0(), t0() + Duration::from_secs(7)),
            Duration::from_secs(12)
        );
        assert_eq!(current_age(cia, t0(), t0() - Duration::from_secs(7)), cia);
    }

    fn check_lifetime(cc: &str, pairs: &[(&str, String)], expected: Option<u64>) {
        let mut all = pairs.to_vec();
        if !cc.is_empty() {
            all.push(("cache-control", cc.to_owned()));
        }
        let h = headers(&all);
        let (d, src) = ResponseDirectives::effective(&h);
        assert_eq!(
            explicit_lifetime(&d, src, &h, t0()),
            expected.map(Duration::from_secs),
            "{cc} {pairs:?}"
        );
    }

    #[test]
    fn explicit_lifetime_precedence() {
        check_lifetime("", &[], None);
        check_lifetime("max-age=60", &[], Some(60));
        check_lifetime("max-age=60, s-maxage=10", &[], Some(10));
        check_lifetime(
            "max-age=60",
            &[("expires", date(3600)), ("date", date(0))],
            Some(60),
        );
        check_lifetime(
            "",
            &[("expires", date(3600)), ("date", date(0))],
            Some(3600),
        );
        check_lifetime(
            "",
            &[("expires", date(3600)), ("date", date(600))],
            Some(3000),
        );
        check_lifetime("", &[("expires", date(3600))], Some(3600));
        check_lifetime("", &[("expires", date(-10)), ("date", date(0))], Some(0));
        check_lifetime("", &[("expires", "0".into())], Some(0));
        check_lifetime(
            "",
            &[
                ("expires", date(3600)),
                ("expires", date(60)),
                ("date", date(0)),
            ],
            Some(0),
        );
        // A valid targeted field wins, and Expires is then ignored.
        check_lifetime(
            "max-age=60",
            &[("cdn-cache-control", "max-age=5".into())],
            Some(5),
        );
        check_lifetime(
            "max-age=60",
            &[
                ("cdn-cache-control", "no-store".into()),
                ("expires", date(100)),
            ],
            None,
        );
        check_lifetime(
            "max-age=60",
            &[("cdn-cache-control", "max-age=5, s-maxage=7".into())],
            Some(7),
        );
        // An invalid targeted field is ignored: Cache-Control and Expires apply again.
        check_lifetime(
            "",
            &[
                ("cdn-cache-control", "max-age=5,,".into()),
                ("expires", date(100)),
            ],
            Some(100),
        );
    }

    #[test]
    fn heuristic_lifetime_is_a_tenth_of_the_age_capped() {
        let cap = Duration::from_secs(86_400);
        let h = headers(&[("date", date(0)), ("last-modified", date(-1000))]);
        assert_eq!(heuristic_lifetime(&h, t0(), cap), Duration::from_secs(100));
        let h = headers(&[("date", date(0)), ("last-modified", date(-100 * 86_400))]);
        assert_eq!(heuristic_lifetime(&h, t0(), cap), cap);
        let h = headers(&[("date", date(0)), ("last-modified", date(100))]);
        assert_eq!(heuristic_lifetime(&h, t0(), cap), Duration::ZERO);
        let h = headers(&[("date", date(0))]);
        assert_eq!(heuristic_lifetime(&h, t0(), cap), Duration::ZERO);
        for code in [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501] {
            assert!(is_heuristically_cacheable(
                StatusCode::from_u16(code).unwrap()
            ));
        }
        for code in [201, 302, 303, 307, 400, 403, 500, 502, 503, 504] {
            assert!(!is_heuristically_cacheable(
                StatusCode::from_u16(code).unwrap()
            ));
        }
    }
}
