//! Header field values as plain strings: `RateLimit-Policy` and `RateLimit`
//! per draft-ietf-httpapi-ratelimit-headers-09, and `Retry-After`.
//!
//! Both draft fields are structured-field Lists (RFC 9651) with one member
//! per policy; the member is the policy name as an sf-string with integer
//! parameters. We emit one member (the caller joins several with `, `):
//!
//! * `RateLimit-Policy: "<name>";q=<burst>;w=<window>`: the quota `q` in
//!   units per window of `w` seconds. For a GCRA bucket we publish the bucket
//!   size and the time an empty bucket takes to refill, so a client that
//!   spends at most `q` per `w` is never refused.
//! * `RateLimit: "<name>";r=<remaining>;t=<reset>`: `r` units left now, and
//!   `t` seconds until the bucket is full again.
//! * `Retry-After: <seconds>` (RFC 9110, delay-seconds).
//!
//! Durations are rounded *up* to whole seconds, so a client that waits that
//! long is not refused early. `t` may be 0 (the bucket is full now); `w` and
//! `Retry-After` are at least 1. Integers are clamped to the sf-integer
//! maximum. In the name, `"` and `\` are escaped; characters outside
//! printable ASCII (which a validated [`crate::PolicySpec`] name never has)
//! are written as `?`.

use std::fmt::Write as _;
use std::time::Duration;

/// The largest sf-integer (RFC 9651 §3.3.1).
const SF_INTEGER_MAX: u64 = 999_999_999_999_999;

/// `"<name>";q=<quota>;w=<window secs, ≥ 1>`
pub(crate) fn policy(name: &str, quota: u32, window: Duration) -> String {
    let mut out = sf_string(name);
    let w = ceil_secs(window).max(1);
    let _ = write!(out, ";q={quota};w={w}");
    out
}

/// `"<name>";r=<remaining>;t=<reset secs>`
pub(crate) fn ratelimit(name: &str, remaining: u32, reset: Duration) -> String {
    let mut out = sf_string(name);
    let _ = write!(out, ";r={remaining};t={}", ceil_secs(reset));
    out
}

/// `Retry-After` delay-seconds: rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    ceil_secs(wait).max(1)
}

/// Whole seconds, rounded up, clamped to the sf-integer range.
fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    secs.min(SF_INTEGER_MAX)
}

/// `s` as an sf-string (RFC 9651 §3.3.3), with room for the parameters.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 24);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn rounds_up_to_seconds() {
        #[track_caller]
        fn check(wait: Duration, retry_after: u64, reset: u64) {
            assert_eq!(
                retry_after_secs(wait),
                retry_after,
                "Retry-After for {wait:?}"
            );
            assert_eq!(ceil_secs(wait), reset, "t for {wait:?}");
        }
        check(Duration::ZERO, 1, 0);
        check(Duration::from_nanos(1), 1, 1);
        check(MS(200), 1, 1);
        check(MS(1000), 1, 1);
        check(MS(1001), 2, 2);
        check(MS(59_999), 60, 60);
        check(Duration::MAX, SF_INTEGER_MAX, SF_INTEGER_MAX);
    }

    #[test]
    fn field_values() {
        #[track_caller]
        fn check(got: String, expected: &str) {
            assert_eq!(got, expected);
        }
        check(policy("api", 20, MS(200)), r#""api";q=20;w=1"#);
        check(policy("api", 100, MS(100_000)), r#""api";q=100;w=100"#);
        check(
            policy("daily", 5000, MS(86_400_001)),
            r#""daily";q=5000;w=86401"#,
        );
        check(ratelimit("api", 7, MS(2500)), r#""api";r=7;t=3"#);
        check(ratelimit("api", 20, Duration::ZERO), r#""api";r=20;t=0"#);
        check(
            ratelimit(r#"say "hi" \o/"#, 0, MS(1)),
            r#""say \"hi\" \\o/";r=0;t=1"#,
        );
        check(ratelimit("caf\u{e9}\n", 1, MS(0)), r#""caf??";r=1;t=0"#);
    }
}
