//! Native rate-limit policies on the request path: the key each policy
//! counts by, the 429 answer with `Retry-After`, `RateLimit-Policy` and
//! `RateLimit`, and the decision metric.
//!
//! Limiters live in the activated snapshot but are carried over to the next
//! one when their policy did not change, so a reload does not reset anyone's
//! counters.

use std::net::IpAddr;
use std::sync::Arc;

use cathedral_config::{RateLimitKey, RateLimitPolicy};
use cathedral_limits::{Limiter, Outcome, PolicySpec, Quota};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use ipnet::IpNet;

use crate::body::Body;
use crate::error::{Error, Result};
use crate::metrics::{Metrics, PolicyDecision};
use crate::responses::plain;
use prometheus_client::metrics::counter::Counter;

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// One policy with its counters.
#[derive(Debug)]
pub struct Policy {
    pub config: RateLimitPolicy,
    pub limiter: Arc<Limiter>,
    policy_header: HeaderValue,
    /// `cathedral_ratelimit_decisions_total` per outcome, resolved once.
    decisions: [Counter; 4],
}

impl Policy {
    pub fn new(config: &RateLimitPolicy, metrics: &Metrics) -> Result<Arc<Self>> {
        let invalid =
            |reason: String| Error::Config(format!("rate limit {}: {reason}", config.name));
        let rate = std::num::NonZeroU32::new(config.rate)
            .ok_or_else(|| invalid("rate must be at least 1".into()))?;
        let burst = std::num::NonZeroU32::new(config.burst)
            .ok_or_else(|| invalid("burst must be at least 1".into()))?;
        let quota = Quota::new(rate, config.period, burst).map_err(|e| invalid(e.to_string()))?;
        let mut spec = PolicySpec::new(config.name.clone(), quota);
        spec.penalty = config.penalty;
        spec.max_keys = config.max_keys;
        let limiter = Limiter::new(spec).map_err(|e| invalid(e.to_string()))?;
        let policy_header = HeaderValue::from_str(&limiter.policy_header())
            .map_err(|e| invalid(format!("policy header: {e}")))?;
        let decisions = ["allowed", "limited", "penalized", "exceeds_burst"].map(|decision| {
            metrics
                .ratelimit_decisions
                .get_or_create(&PolicyDecision {
                    policy: config.name.clone(),
                    decision,
                })
                .clone()
        });
        Ok(Arc::new(Self {
            config: config.clone(),
            limiter: Arc::new(limiter),
            policy_header,
            decisions,
        }))
    }
}

/// What the request carries that keys may be drawn from.
#[derive(Debug)]
pub struct KeySource<'a> {
    pub client_ip: IpAddr,
    pub headers: &'a HeaderMap,
    pub user_id: Option<&'a str>,
    pub route: &'a str,
}

/// The counter key for this request under `key`. Requests without the
/// header, cookie or user id a policy keys on are counted by client IP.
pub fn key_for(key: &RateLimitKey, src: &KeySource<'_>) -> String {
    let by_ip = || ip_key(src.client_ip, 32, 64);
    match key {
        RateLimitKey::ClientIp {
            ipv4_prefix,
            ipv6_prefix,
        } => ip_key(src.client_ip, *ipv4_prefix, *ipv6_prefix),
        RateLimitKey::Header(name) => match src
            .headers
            .get(name)
            .filter(|v| !v.as_bytes().trim_ascii().is_empty())
        {
            Some(v) => format!("h:{}", String::from_utf8_lossy(v.as_bytes().trim_ascii())),
            None => by_ip(),
        },
        RateLimitKey::Cookie(name) => match cookie(src.headers, name) {
            Some(v) => format!("c:{v}"),
            None => by_ip(),
        },
        RateLimitKey::UserId => match src.user_id {
            Some(u) => format!("u:{u}"),
            None => by_ip(),
        },
        RateLimitKey::Route => format!("r:{}", src.route),
    }
}

/// `ip:203.0.113.7` or, grouped, `ip:2001:db8:1:2::/64`.
fn ip_key(ip: IpAddr, v4: u8, v6: u8) -> String {
    let ip = ip.to_canonical();
    let prefix = if ip.is_ipv4() { v4 } else { v6 };
    let full = if ip.is_ipv4() { 32 } else { 128 };
    if prefix >= full {
        return format!("ip:{ip}");
    }
    match IpNet::new(ip, prefix) {
        Ok(net) => format!("ip:{}", net.trunc()),
        Err(_) => format!("ip:{ip}"),
    }
}

/// A cookie's value from the request's `Cookie` fields.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// The outcome of a route's policies for one request.
#[derive(Debug)]
pub enum Verdict {
    /// Proceed; add these headers to the response (policies with
    /// `headers = "always"`).
    Allowed(Vec<(HeaderName, HeaderValue)>),
    Refused(Response<Body>),
}

/// Checks every policy of the route in order; the first refusal answers.
pub fn check(policies: &[Arc<Policy>], src: &KeySource<'_>) -> Verdict {
    let mut headers = Vec::new();
    for policy in policies {
        let key = key_for(&policy.config.key, src);
        let decision = policy.limiter.check(&key, 1);
        let slot = match decision.outcome {
            Outcome::Allowed => 0,
            Outcome::Limited => 1,
            Outcome::Penalized => 2,
            Outcome::ExceedsBurst => 3,
        };
        policy.decisions[slot].inc();
        let ratelimit = HeaderValue::from_str(&policy.limiter.ratelimit_header(&decision)).ok();
        if decision.allowed() {
            if policy.config.headers_on_allowed {
                headers.push((RATELIMIT_POLICY, policy.policy_header.clone()));
                if let Some(v) = ratelimit {
                    headers.push((RATELIMIT, v));
                }
            }
            continue;
        }
        let retry = decision.retry_after_secs();
        let detail = match retry {
            Some(secs) => format!(
                "rate limit {} exceeded; retry in {secs} s",
                policy.config.name
            ),
            None => format!("rate limit {} exceeded", policy.config.name),
        };
        let mut resp = plain(StatusCode::TOO_MANY_REQUESTS, &detail);
        let h = resp.headers_mut();
        if let Some(secs) = retry {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        h.insert(RATELIMIT_POLICY, policy.policy_header.clone());
        if let Some(v) = ratelimit {
            h.insert(RATELIMIT, v);
        }
        return Verdict::Refused(resp);
    }
    Verdict::Allowed(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src<'a>(ip: &str, headers: &'a HeaderMap, user: Option<&'a str>) -> KeySource<'a> {
        KeySource {
            client_ip: ip.parse().unwrap(),
            headers,
            user_id: user,
            route: "api",
        }
    }

    fn check_key(
        key: RateLimitKey,
        ip: &str,
        pairs: &[(&'static str, &str)],
        user: Option<&str>,
        expected: &str,
    ) {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(*k, HeaderValue::from_str(v).unwrap());
        }
        assert_eq!(
            key_for(&key, &src(ip, &headers, user)),
            expected,
            "{key:?} {ip} {pairs:?}"
        );
    }

    #[test]
    fn keys() {
        let ip = RateLimitKey::ClientIp {
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        };
        check_key(ip.clone(), "203.0.113.7", &[], None, "ip:203.0.113.7");
        check_key(
            ip.clone(),
            "2001:db8:1:2:3:4:5:6",
            &[],
            None,
            "ip:2001:db8:1:2::/64",
        );
        check_key(
            ip.clone(),
            "::ffff:203.0.113.7",
            &[],
            None,
            "ip:203.0.113.7",
        );
        let v4_24 = RateLimitKey::ClientIp {
            ipv4_prefix: 24,
            ipv6_prefix: 48,
        };
        check_key(v4_24.clone(), "203.0.113.7", &[], None, "ip:203.0.113.0/24");
        check_key(v4_24, "2001:db8:1:2::9", &[], None, "ip:2001:db8:1::/48");
        let h = RateLimitKey::Header(HeaderName::from_static("x-api-key"));
        check_key(h.clone(), "1.2.3.4", &[("x-api-key", "k1")], None, "h:k1");
        check_key(h.clone(), "1.2.3.4", &[], None, "ip:1.2.3.4");
        check_key(h, "1.2.3.4", &[("x-api-key", "")], None, "ip:1.2.3.4");
        let c = RateLimitKey::Cookie("sid".into());
        check_key(
            c.clone(),
            "1.2.3.4",
            &[("cookie", "a=1; sid=xyz; b=2")],
            None,
            "c:xyz",
        );
        check_key(
            c.clone(),
            "1.2.3.4",
            &[("cookie", "a=1"), ("cookie", "sid=\"q\"")],
            None,
            "c:q",
        );
        check_key(c, "1.2.3.4", &[("cookie", "sidx=1")], None, "ip:1.2.3.4");
        check_key(
            RateLimitKey::UserId,
            "1.2.3.4",
            &[],
            Some("alice"),
            "u:alice",
        );
        check_key(RateLimitKey::UserId, "1.2.3.4", &[], None, "ip:1.2.3.4");
        check_key(RateLimitKey::Route, "1.2.3.4", &[], None, "r:api");
    }
}
