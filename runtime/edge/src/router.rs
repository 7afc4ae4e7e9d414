//! Route selection: host (exact or `*.suffix`) and path prefix, the most
//! specific match wins.
//!
//! Specificity is decided by host first (exact beats a longer suffix beats a
//! shorter suffix beats any host), then by path prefix length — the way
//! nginx picks a server block before a location.

use cathedral_config::{HostMatch, Route};

#[derive(Debug)]
pub struct Router<T> {
    /// Sorted most specific first.
    entries: Vec<Entry<T>>,
}

#[derive(Debug)]
struct Entry<T> {
    host: Option<HostMatch>,
    prefix: String,
    value: T,
}

impl<T> Router<T> {
    /// Builds a router over `routes`, attaching `make(route)` to each.
    pub fn new<'a>(
        routes: impl IntoIterator<Item = &'a Route>,
        mut make: impl FnMut(&Route) -> T,
    ) -> Self {
        let mut entries = Vec::new();
        for route in routes {
            let hosts: Vec<Option<HostMatch>> = if route.hosts.is_empty() {
                vec![None]
            } else {
                route.hosts.iter().cloned().map(Some).collect()
            };
            for host in hosts {
                let rank = match &host {
                    Some(HostMatch::Exact(h)) => (2, h.len(), route.path_prefix.len()),
                    Some(HostMatch::Suffix(s)) => (1, s.len(), route.path_prefix.len()),
                    None => (0, 0, route.path_prefix.len()),
                };
                entries.push((host, route, rank));
            }
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.2));
        let entries = entries
            .into_iter()
            .map(|(host, route, _)| Entry {
                host,
                prefix: route.path_prefix.clone(),
                value: make(route),
            })
            .collect();
        Self { entries }
    }

    /// `host` is lower-case without a port; `path` is the request path.
    pub fn find(&self, host: &str, path: &str) -> Option<&T> {
        self.entries
            .iter()
            .find(|e| host_matches(e.host.as_ref(), host) && prefix_matches(&e.prefix, path))
            .map(|e| &e.value)
    }
}

fn host_matches(pattern: Option<&HostMatch>, host: &str) -> bool {
    match pattern {
        None => true,
        Some(HostMatch::Exact(h)) => h == host,
        Some(HostMatch::Suffix(s)) => host.len() > s.len() && host.ends_with(s.as_str()),
    }
}

/// Whole-segment prefix match: `/api` matches `/api` and `/api/x`, not `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Lower-cases a `Host` / `:authority` value and drops the port.
pub fn normalize_host(raw: &str) -> String {
    let without_port = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: keep the brackets, drop a port after them.
        match rest.find(']') {
            Some(end) => &raw[..end + 2],
            None => raw,
        }
    } else {
        match raw.rfind(':') {
            Some(i) if raw[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &raw[..i],
            _ => raw,
        }
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cathedral_config::{HostHeader, RouteTarget};

    fn route(name: &str, hosts: &[&str], prefix: &str) -> Route {
        Route {
            name: name.into(),
            hosts: hosts
                .iter()
                .map(|h| match h.strip_prefix('*') {
                    Some(s) => HostMatch::Suffix(s.to_owned()),
                    None => HostMatch::Exact((*h).to_owned()),
                })
                .collect(),
            path_prefix: prefix.into(),
            target: RouteTarget::Upstream("u".into()),
            host_header: HostHeader::Preserve,
            response_headers: vec![],
            cache: None,
            rate_limits: vec![],
            user_id: None,
            filters: vec![],
        }
    }

    fn check(host: &str, path: &str, expected: Option<&str>) {
        let routes = [
            route("any-root", &[], "/"),
            route("any-api", &[], "/api"),
            route("wild", &["*.example.com"], "/"),
            route("deep-wild", &["*.img.example.com"], "/"),
            route("exact", &["www.example.com"], "/"),
            route("exact-api", &["www.example.com"], "/api/v2"),
        ];
        let router = Router::new(routes.iter(), |r| r.name.clone());
        assert_eq!(
            router.find(host, path).map(String::as_str),
            expected,
            "{host} {path}"
        );
    }

    #[test]
    fn most_specific_route_wins() {
        check("other.test", "/", Some("any-root"));
        check("other.test", "/api", Some("any-api"));
        check("other.test", "/api/x", Some("any-api"));
        check("other.test", "/apix", Some("any-root"));
        check("a.example.com", "/api", Some("wild"));
        check("example.com", "/", Some("any-root"));
        check("x.img.example.com", "/", Some("deep-wild"));
        check("www.example.com", "/api/v2/users", Some("exact-api"));
        check("www.example.com", "/api/v1", Some("exact"));
    }

    #[test]
    fn no_route_without_catch_all() {
        let routes = [route("exact", &["a.test"], "/x")];
        let router = Router::new(routes.iter(), |r| r.name.clone());
        assert!(router.find("a.test", "/y").is_none());
        assert!(router.find("b.test", "/x").is_none());
    }

    #[test]
    fn normalizes_hosts() {
        for (raw, want) in [
            ("Example.COM", "example.com"),
            ("example.com:8080", "example.com"),
            ("example.com.", "example.com"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
            ("127.0.0.1:80", "127.0.0.1"),
        ] {
            assert_eq!(normalize_host(raw), want, "{raw}");
        }
    }
}
