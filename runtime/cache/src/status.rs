//! The `Cache-Status` response field (RFC 9211) for this cache, named `cathedral`.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::cache::{BypassReason, Lookup, MissReason};

/// `Cache-Status` field name.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The cache name used in `Cache-Status`.
pub const CACHE_NAME: &str = "cathedral";

/// Why the request went forward (RFC 9211 §2.2 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// No stored response for the URI.
    UriMiss,
    /// Stored responses for the URI, none matching the request's `Vary` fields.
    VaryMiss,
    /// Not in cache, reason unspecified (integrity failure, `only-if-cached`...).
    Miss,
    /// A stored response was stale and had to be validated.
    Stale,
    /// A usable response existed but the request's semantics prevented its use.
    Request,
    /// Configured or protocol-required bypass.
    Bypass,
    /// The request method is not cacheable.
    Method,
}

impl Fwd {
    fn as_str(self) -> &'static str {
        match self {
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Miss => "miss",
            Fwd::Stale => "stale",
            Fwd::Request => "request",
            Fwd::Bypass => "bypass",
            Fwd::Method => "method",
        }
    }
}

/// Builder for this cache's `Cache-Status` list member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStatus {
    hit: bool,
    fwd: Option<Fwd>,
    fwd_status: Option<u16>,
    ttl: Option<i64>,
    stored: bool,
    collapsed: bool,
    detail: Option<String>,
}

impl CacheStatus {
    /// Served from cache without going forward.
    pub fn hit(ttl: i64) -> Self {
        Self {
            hit: true,
            ttl: Some(ttl),
            ..Self::default()
        }
    }

    /// The request went forward.
    pub fn forward(fwd: Fwd) -> Self {
        Self {
            fwd: Some(fwd),
            ..Self::default()
        }
    }

    /// The starting point for a lookup outcome; add `fwd_status`, `stored`, `collapsed` as the
    /// request proceeds.
    pub fn from_lookup(lookup: &Lookup) -> Self {
        match lookup {
            Lookup::Hit(hit) => Self::hit(hit.ttl_secs()).collapsed(hit.collapsed()),
            Lookup::Stale { hit, .. } => Self::hit(hit.ttl_secs()).detail("stale-while-revalidate"),
            Lookup::Revalidate { hit, .. } if hit.is_stale() => {
                Self::forward(Fwd::Stale).ttl(hit.ttl_secs())
            }
            Lookup::Revalidate { hit, .. } => Self::forward(Fwd::Request).ttl(hit.ttl_secs()),
            Lookup::Miss(MissReason::Uri) => Self::forward(Fwd::UriMiss),
            Lookup::Miss(MissReason::Vary) => Self::forward(Fwd::VaryMiss),
            Lookup::Miss(MissReason::Authorization) => {
                Self::forward(Fwd::Request).detail("authorization")
            }
            Lookup::Miss(MissReason::Integrity) => Self::forward(Fwd::Miss).detail("integrity"),
            Lookup::OnlyIfCachedMiss => Self::forward(Fwd::Miss).detail("only-if-cached"),
            Lookup::Bypass(BypassReason::Method) => Self::forward(Fwd::Method),
            Lookup::Bypass(BypassReason::NoHost) => Self::forward(Fwd::Bypass).detail("no-host"),
            Lookup::Bypass(BypassReason::RealTime) => {
                Self::forward(Fwd::Bypass).detail("real-time")
            }
        }
    }

    /// Status code of the forwarded response (`fwd-status`).
    #[must_use]
    pub fn fwd_status(mut self, status: StatusCode) -> Self {
        self.fwd_status = Some(status.as_u16());
        self
    }

    /// Remaining freshness in seconds (`ttl`; negative when stale).
    #[must_use]
    pub fn ttl(mut self, ttl: i64) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Whether the forwarded response was stored (`stored`).
    #[must_use]
    pub fn stored(mut self, stored: bool) -> Self {
        self.stored = stored;
        self
    }

    /// Whether the request was collapsed with another (`collapsed`).
    #[must_use]
    pub fn collapsed(mut self, collapsed: bool) -> Self {
        self.collapsed = collapsed;
        self
    }

    /// Free-form detail (`detail`), sent as an sf-string; non-printable characters dropped.
    #[must_use]
    pub fn detail(mut self, detail: &str) -> Self {
        self.detail = Some(detail.chars().filter(|c| (' '..='~').contains(c)).collect());
        self
    }

    /// Serialises the list member, e.g. `cathedral; fwd=uri-miss; fwd-status=200; stored`.
    pub fn value(&self) -> String {
        let mut out = String::from(CACHE_NAME);
        if self.hit {
            out.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            let _ = write!(out, "; fwd={}", fwd.as_str());
        }
        if let Some(status) = self.fwd_status {
            let _ = write!(out, "; fwd-status={status}");
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(out, "; ttl={ttl}");
        }
        if self.stored {
            out.push_str("; stored");
        }
        if self.collapsed {
            out.push_str("; collapsed");
        }
        if let Some(detail) = &self.detail {
            out.push_str("; detail=\"");
            for c in detail.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        out
    }

    /// As a header value.
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.value()).unwrap_or(HeaderValue::from_static(CACHE_NAME))
    }

    /// Appends this cache's member to the response's `Cache-Status` list (caches closer to the
    /// client come last, RFC 9211 §2).
    pub fn append_to(&self, headers: &mut HeaderMap) {
        headers.append(CACHE_STATUS, self.header_value());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: CacheStatus, expected: &str) {
        assert_eq!(status.value(), expected);
        // Every value we emit is a valid RFC 8941 List.
        assert!(
            sfv::Parser::parse_list(expected.as_bytes()).is_ok(),
            "{expected}"
        );
    }

    #[test]
    fn cache_status_values() {
        check(CacheStatus::hit(30), "cathedral; hit; ttl=30");
        check(
            CacheStatus::hit(-5).detail("stale-while-revalidate"),
            "cathedral; hit; ttl=-5; detail=\"stale-while-revalidate\"",
        );
        check(
            CacheStatus::forward(Fwd::UriMiss)
                .fwd_status(StatusCode::OK)
                .stored(true),
            "cathedral; fwd=uri-miss; fwd-status=200; stored",
        );
        check(
            CacheStatus::forward(Fwd::Stale)
                .fwd_status(StatusCode::NOT_MODIFIED)
                .ttl(60),
            "cathedral; fwd=stale; fwd-status=304; ttl=60",
        );
        check(
            CacheStatus::hit(3).collapsed(true),
            "cathedral; hit; ttl=3; collapsed",
        );
        check(
            CacheStatus::forward(Fwd::VaryMiss),
            "cathedral; fwd=vary-miss",
        );
        check(CacheStatus::forward(Fwd::Request), "cathedral; fwd=request");
        check(CacheStatus::forward(Fwd::Bypass), "cathedral; fwd=bypass");
        check(CacheStatus::forward(Fwd::Method), "cathedral; fwd=method");
        check(
            CacheStatus::forward(Fwd::Miss).detail("a\"b\\c\n"),
            "cathedral; fwd=miss; detail=\"a\\\"b\\\\c\"",
        );
        let mut h = HeaderMap::new();
        h.append(CACHE_STATUS, HeaderValue::from_static("origin-cache; hit"));
        CacheStatus::hit(1).append_to(&mut h);
        assert_eq!(h.get_all(CACHE_STATUS).iter().count(), 2);
    }
}
