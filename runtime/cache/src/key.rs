//! Cache keys: the primary key (scheme, host, path and query, with per-route options) and the
//! secondary key from `Vary` plus route key headers (RFC 9111 §2, §4.1).

use http::header::{HOST, VARY};
use http::uri::Authority;
use http::{HeaderMap, HeaderName, Method, Uri, request};

/// The request as the cache sees it. Borrowed from the server's request head.
#[derive(Debug, Clone, Copy)]
pub struct CacheRequest<'a> {
    /// Request method; `HEAD` is answered from the `GET` entry.
    pub method: &'a Method,
    /// Request target; origin-form (`/path?q`) or absolute-form.
    pub uri: &'a Uri,
    /// Request header fields.
    pub headers: &'a HeaderMap,
    /// Whether the request arrived over TLS: the key's scheme when the URI carries none.
    pub tls: bool,
}

impl<'a> CacheRequest<'a> {
    /// Borrows a request head. The scheme is taken from the URI when absolute, else from `tls`.
    pub fn new(parts: &'a request::Parts, tls: bool) -> Self {
        Self {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            tls,
        }
    }

    pub(crate) fn scheme(&self) -> String {
        match self.uri.scheme_str() {
            Some(s) => s.to_ascii_lowercase(),
            None if self.tls => "https".to_owned(),
            None => "http".to_owned(),
        }
    }
}

/// Per-route cache key options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyOptions {
    /// Query parameter names left out of the key (exact, case-sensitive match on the raw name).
    /// `"*"` leaves out the whole query.
    pub ignore_query_params: Vec<String>,
    /// Sort query parameters so that `?a=1&b=2` and `?b=2&a=1` share an entry.
    pub sort_query: bool,
    /// Request header fields added to the key (e.g. a user id header for per-user content).
    /// They act like `Vary` fields that every response of the route carries.
    pub headers: Vec<HeaderName>,
}

/// Normalises `scheme`, `authority` and lower-cases the host, dropping the scheme's default port.
pub(crate) fn origin(scheme: &str, authority: &Authority) -> String {
    let host = authority.host().to_ascii_lowercase();
    let default_port = match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    match authority.port_u16() {
        Some(port) if Some(port) != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    }
}

fn request_authority(req: &CacheRequest<'_>) -> Option<Authority> {
    if let Some(a) = req.uri.authority() {
        return Some(a.clone());
    }
    let host = req.headers.get(HOST)?;
    Authority::try_from(host.as_bytes()).ok()
}

/// The request's origin (`scheme://host[:port]`), or `None` without a usable host.
pub(crate) fn request_origin(req: &CacheRequest<'_>) -> Option<String> {
    let authority = request_authority(req)?;
    if authority.host().is_empty() {
        return None;
    }
    Some(origin(&req.scheme(), &authority))
}

/// Applies the query options to a raw query string; `None` when nothing remains.
fn key_query<'q>(query: Option<&'q str>, opts: &KeyOptions) -> Option<std::borrow::Cow<'q, str>> {
    let query = query?;
    if opts.ignore_query_params.is_empty() && !opts.sort_query {
        return Some(query.into());
    }
    if opts.ignore_query_params.iter().any(|p| p == "*") {
        return None;
    }
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split('=').next().unwrap_or(p);
            !opts.ignore_query_params.iter().any(|i| i == name)
        })
        .collect();
    if opts.sort_query {
        params.sort_unstable();
    }
    if params.is_empty() {
        None
    } else {
        Some(params.join("&").into())
    }
}

/// Builds a primary key from an origin and a path-and-query.
pub(crate) fn key_for(origin: &str, path: &str, query: Option<&str>, opts: &KeyOptions) -> String {
    let path = if path.is_empty() { "/" } else { path };
    match key_query(query, opts) {
        Some(q) => format!("{origin}{path}?{q}"),
        None => format!("{origin}{path}"),
    }
}

/// The primary cache key of a request: `scheme://host[:port]/path[?query]`.
/// The method is not part of it: only `GET` responses are stored and `HEAD` reads them.
pub(crate) fn primary_key(req: &CacheRequest<'_>, opts: &KeyOptions) -> Option<String> {
    let origin = request_origin(req)?;
    Some(key_for(&origin, req.uri.path(), req.uri.query(), opts))
}

/// The field names listed in `Vary`; `None` for `Vary: *` or an unparseable name
/// (a response that can never be matched).
pub(crate) fn vary_fields(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names: Vec<HeaderName> = Vec::new();
    for line in headers.get_all(VARY) {
        let line = line.to_str().ok()?;
        for name in line.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Some(names)
}

/// Normalised value of a request field for secondary-key comparison (RFC 9111 §4.1):
/// all field lines combined, list members trimmed of whitespace, empty members dropped;
/// case-folded where the field's values are case-insensitive tokens.
pub(crate) fn normalized_value(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut lines = headers.get_all(name).iter().peekable();
    lines.peek()?;
    let fold = matches!(
        name.as_str(),
        "accept-encoding" | "accept-language" | "accept-charset"
    );
    let mut out = String::new();
    for line in lines {
        let text = String::from_utf8_lossy(line.as_bytes());
        for member in text.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            if !out.is_empty() {
                out.push(',');
            }
            if fold {
                out.push_str(&member.to_ascii_lowercase());
            } else {
                out.push_str(member);
            }
        }
    }
    Some(out)
}

/// The secondary key of a stored response: each selecting field with the value the original
/// request carried (`None` = absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SecondaryKey(Vec<(HeaderName, Option<String>)>);

impl SecondaryKey {
    pub(crate) fn capture<'n>(
        names: impl IntoIterator<Item = &'n HeaderName>,
        headers: &HeaderMap,
    ) -> Self {
        let mut fields: Vec<(HeaderName, Option<String>)> = Vec::new();
        for name in names {
            if fields.iter().all(|(n, _)| n != name) {
                fields.push((name.clone(), normalized_value(headers, name)));
            }
        }
        Self(fields)
    }

    /// Whether a request selects this stored response.
    pub(crate) fn matches(&self, headers: &HeaderMap) -> bool {
        self.0
            .iter()
            .all(|(name, value)| normalized_value(headers, name).as_deref() == value.as_deref())
    }

    pub(crate) fn weight(&self) -> usize {
        self.0
            .iter()
            .map(|(n, v)| n.as_str().len() + v.as_ref().map_or(0, String::len) + 16)
            .sum()
    }
}

/// Resolves a `Location` / `Content-Location` reference against the request (RFC 3986 §5,
/// without dot-segment removal) into `(origin, path, query)`. `None` if unusable.
pub(crate) fn resolve_reference(
    scheme: &str,
    base_origin: &str,
    base_path: &str,
    reference: &str,
) -> Option<(String, String, Option<String>)> {
    let reference = reference.trim();
    let reference = reference.split('#').next().unwrap_or_default();
    if reference.is_empty() {
        return None;
    }
    let split = |pq: &str| -> (String, Option<String>) {
        match pq.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (pq.to_owned(), None),
        }
    };
    let absolute = if reference.starts_with("//") {
        Some(format!("{scheme}:{reference}"))
    } else if reference.contains("://") {
        Some(reference.to_owned())
    } else {
        None
    };
    if let Some(absolute) = absolute {
        let uri: Uri = absolute.parse().ok()?;
        let origin = origin(&uri.scheme_str()?.to_ascii_lowercase(), uri.authority()?);
        let pq = uri.path_and_query().map_or("/", |p| p.as_str());
        let (path, query) = split(pq);
        let path = if path.is_empty() {
            "/".to_owned()
        } else {
            path
        };
        return Some((origin, path, query));
    }
    if reference.starts_with('/') {
        let (path, query) = split(reference);
        return Some((base_origin.to_owned(), path, query));
    }
    if let Some(query) = reference.strip_prefix('?') {
        return Some((
            base_origin.to_owned(),
            base_path.to_owned(),
            Some(query.to_owned()),
        ));
    }
    let dir = base_path.rsplit_once('/').map_or("", |(d, _)| d);
    let (path, query) = split(reference);
    Some((base_origin.to_owned(), format!("{dir}/{path}"), query))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Request};

    fn check_key(
        uri: &str,
        host: Option<&str>,
        tls: bool,
        opts: &KeyOptions,
        expected: Option<&str>,
    ) {
        let mut builder = Request::get(uri);
        if let Some(h) = host {
            builder = builder.header("host", h);
        }
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        let got = primary_key(&CacheRequest::new(&parts, tls), opts);
        assert_eq!(got.as_deref(), expected, "{uri} {host:?}");
    }

    #[test]
    fn primary_keys() {
        let plain = KeyOptions::default();
        check_key(
            "/a?b=1",
            Some("Example.COM"),
            false,
            &plain,
            Some("http://example.com/a?b=1"),
        );
        check_key(
            "/a",
            Some("example.com:80"),
            false,
            &plain,
            Some("http://example.com/a"),
        );
        check_key(
            "/a",
            Some("example.com:443"),
            true,
            &plain,
            Some("https://example.com/a"),
        );
        check_key(
            "/a",
            Some("example.com:443"),
            false,
            &plain,
            Some("http://example.com:443/a"),
        );
        check_key(
            "/a",
            Some("[::1]:8080"),
            false,
            &plain,
            Some("http://[::1]:8080/a"),
        );
        check_key(
            "https://Ex.com:443/x",
            None,
            false,
            &plain,
            Some("https://ex.com/x"),
        );
        check_key("/a", None, false, &plain, None);
        check_key("/a", Some("bad host/"), false, &plain, None);
        let opts = KeyOptions {
            ignore_query_params: vec!["utm_source".into(), "fbclid".into()],
            sort_query: true,
            ..KeyOptions::default()
        };
        check_key(
            "/a?z=1&utm_source=x&a=2&fbclid",
            Some("h"),
            false,
            &opts,
            Some("http://h/a?a=2&z=1"),
        );
        check_key(
            "/a?utm_source=x",
            Some("h"),
            false,
            &opts,
            Some("http://h/a"),
        );
        let all = KeyOptions {
            ignore_query_params: vec!["*".into()],
            ..KeyOptions::default()
        };
        check_key("/a?x=1", Some("h"), false, &all, Some("http://h/a"));
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

    fn check_vary(vary: &[&str], stored: &[(&str, &str)], req: &[(&str, &str)], expected: bool) {
        let resp = map(&vary.iter().map(|v| ("vary", *v)).collect::<Vec<_>>());
        let matched = vary_fields(&resp)
            .map(|names| SecondaryKey::capture(&names, &map(stored)).matches(&map(req)));
        assert_eq!(
            matched.unwrap_or(false),
            expected,
            "{vary:?} {stored:?} {req:?}"
        );
    }

    #[test]
    fn vary_matching() {
        check_vary(&[], &[], &[("accept", "x")], true);
        check_vary(&["accept"], &[("accept", "x")], &[("accept", "x")], true);
        check_vary(&["Accept"], &[("accept", "x")], &[("accept", "y")], false);
        check_vary(&["accept"], &[], &[], true);
        check_vary(&["accept"], &[], &[("accept", "x")], false);
        check_vary(&["accept"], &[("accept", "x")], &[], false);
        check_vary(&["*"], &[], &[], false);
        check_vary(&["accept, *"], &[], &[], false);
        check_vary(
            &["accept-encoding"],
            &[("accept-encoding", "gzip, br")],
            &[("accept-encoding", "gzip"), ("accept-encoding", " BR ")],
            true,
        );
        check_vary(
            &["accept-encoding"],
            &[("accept-encoding", "gzip,br")],
            &[("accept-encoding", "br,gzip")],
            false,
        );
        check_vary(
            &["a", "b"],
            &[("a", "1"), ("b", "2")],
            &[("b", "2"), ("a", "1")],
            true,
        );
        check_vary(&["a", "b"], &[("a", "1"), ("b", "2")], &[("a", "1")], false);
        check_vary(
            &["x-case"],
            &[("x-case", "Foo")],
            &[("x-case", "foo")],
            false,
        );
    }

    fn check_resolve(reference: &str, expected: Option<(&str, &str, Option<&str>)>) {
        let got = resolve_reference("https", "https://h", "/a/b", reference);
        let got = got
            .as_ref()
            .map(|(o, p, q)| (o.as_str(), p.as_str(), q.as_deref()));
        assert_eq!(got, expected, "{reference}");
    }

    #[test]
    fn reference_resolution() {
        check_resolve("/x?y=1#frag", Some(("https://h", "/x", Some("y=1"))));
        check_resolve("c", Some(("https://h", "/a/c", None)));
        check_resolve("?q", Some(("https://h", "/a/b", Some("q"))));
        check_resolve("//H:443/z", Some(("https://h", "/z", None)));
        check_resolve("http://h/z", Some(("http://h", "/z", None)));
        check_resolve(
            "https://other.example",
            Some(("https://other.example", "/", None)),
        );
        check_resolve("", None);
        check_resolve("https://", None);
    }
}
