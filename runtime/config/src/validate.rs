//! Value checks shared by the bootstrap and the edge config: names, host names, URLs, paths, headers, files.
//!
//! Each check returns the normalized value or a message saying what was
//! expected and what was found; callers attach the key and file.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Component, Path, PathBuf};

use http::uri::{Authority, PathAndQuery, Uri};
use http::{HeaderName, HeaderValue};

use crate::error::toml_string;
use crate::types::{HostHeader, HostMatch, RateLimitKey, Scheme, UserIdSource};

/// Upstream and route names: they appear in logs, metrics and error messages.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected a name of at most 64 letters, digits, '-' and '_', found {}",
            toml_string(name)
        ))
    }
}

/// Rate-limit policy names: they appear in `RateLimit-Policy` headers,
/// logs and metrics, so they are kept lower-case.
pub(crate) fn check_policy_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected a name of at most 64 lower-case letters, digits, '-' and '_', found {}",
            toml_string(name)
        ))
    }
}

/// Region ids name a file (`regions/<id>.toml`), so they are kept plain.
pub(crate) fn check_region_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected a region id like \"us-east-1\" (lower-case letters, digits and '-'), found {}",
            toml_string(id)
        ))
    }
}

/// A DNS name, lower-cased: labels of letters, digits and '-', not starting
/// or ending with '-', at most 63 bytes each and 253 in all.
fn dns_name(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let ok = !lower.is_empty() && lower.len() <= 253 && lower.split('.').all(label_ok);
    ok.then_some(lower)
}

/// A host as it appears in a `Host` header without the port: a DNS name,
/// an IPv4 address or a bracketed IPv6 address. Lower-cased.
fn host_name(host: &str) -> Option<String> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(|ip| format!("[{ip}]"));
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Some(host.to_owned());
    }
    dns_name(host)
}

/// A certificate's server name: exact (`example.com`) or a one-label
/// wildcard (`*.example.com`). Lower-cased.
pub(crate) fn server_name_pattern(pattern: &str) -> Result<String, String> {
    let checked = match pattern.strip_prefix("*.") {
        Some(rest) => dns_name(rest).map(|rest| format!("*.{rest}")),
        None => dns_name(pattern),
    };
    checked.ok_or_else(|| {
        format!(
            "expected a DNS name like \"example.com\" or \"*.example.com\", found {}",
            toml_string(pattern)
        )
    })
}

/// A TLS server name for an upstream: a DNS name or an IP address.
pub(crate) fn upstream_server_name(name: &str) -> Result<String, String> {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Ok(name.to_owned());
    }
    dns_name(name).ok_or_else(|| {
        format!(
            "expected a DNS name like \"origin.example.com\" or an IP address, found {}",
            toml_string(name)
        )
    })
}

/// A route host: exact, `*.suffix`, or `*` (any host, returned as `None`).
pub(crate) fn host_pattern(pattern: &str) -> Result<Option<HostMatch>, String> {
    if pattern == "*" {
        return Ok(None);
    }
    let matched = match pattern.strip_prefix("*.") {
        Some(rest) => dns_name(rest).map(|rest| HostMatch::Suffix(format!(".{rest}"))),
        None => host_name(pattern).map(HostMatch::Exact),
    };
    match matched {
        Some(host) => Ok(Some(host)),
        None if pattern.contains(':') && !pattern.starts_with('[') => Err(format!(
            "expected a host name without a port, found {}",
            toml_string(pattern)
        )),
        None => Err(format!(
            "expected a host like \"example.com\", \"*.example.com\" or \"*\", found {}",
            toml_string(pattern)
        )),
    }
}

pub(crate) const URL_EXPECTED: &str = r#"a URL like "http://127.0.0.1:9000""#;

/// An upstream target URL: `http` or `https`, a host, an optional port, no
/// path (or `/`), query, fragment or user info. Returns the scheme and the
/// `host:port` authority with the port defaulted to 80 or 443.
pub(crate) fn parse_target(url: &str) -> Result<(Scheme, String), String> {
    let quoted = toml_string(url);
    let expected = || format!("expected {URL_EXPECTED}, found {quoted}");
    if url.contains('#') {
        return Err(format!("{quoted}: a target URL has no fragment"));
    }
    let uri: Uri = url.parse().map_err(|_| expected())?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
        Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
        Some(other) => {
            return Err(format!(
                "{quoted}: unsupported scheme {} (expected \"http\" or \"https\")",
                toml_string(other)
            ));
        }
        None => return Err(expected()),
    };
    let Some(authority) = uri.authority() else {
        return Err(expected());
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "{quoted}: a target URL has no user info (credentials)"
        ));
    }
    let host = host_name(authority.host()).ok_or_else(expected)?;
    let port = match explicit_port(authority, &quoted, expected)? {
        Some(port) => port,
        None => match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        },
    };
    if !matches!(uri.path(), "" | "/") {
        return Err(format!(
            "{quoted}: a target URL has no path (found {}); routes choose paths",
            toml_string(uri.path())
        ));
    }
    if uri.query().is_some() {
        return Err(format!("{quoted}: a target URL has no query"));
    }
    Ok((scheme, format!("{host}:{port}")))
}

/// The port written after the host, if any: 1 to 65535, digits only.
/// `expected()` is the error when what follows the host is not `:<digits>`.
fn explicit_port(
    authority: &Authority,
    quoted: &str,
    expected: impl Fn() -> String,
) -> Result<Option<u16>, String> {
    // What follows the host: "" or ":<port>".
    let port_text = authority
        .as_str()
        .get(authority.host().len()..)
        .unwrap_or("");
    match port_text.strip_prefix(':') {
        None if port_text.is_empty() => Ok(None),
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            match digits.parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("{quoted}: the port must be between 1 and 65535")),
                Ok(port) => Ok(Some(port)),
            }
        }
        _ => Err(expected()),
    }
}

pub(crate) const ORIGIN_EXPECTED: &str =
    r#"a URL like "https://origin.example.net" or "https://bucket.example.net/cathedral""#;

/// A bundle origin (`[bundles] origins`): `http` or `https`, a host, an
/// optional port and an optional path prefix of whole segments; no query,
/// fragment or user info. Returned in one spelling, so that two ways of
/// writing one origin compare equal: scheme and host lower-cased, the
/// scheme's default port left out, no trailing `/`
/// (`HTTPS://Origin.example.net:443/cathedral/` is
/// `https://origin.example.net/cathedral`).
pub(crate) fn origin_url(url: &str) -> Result<String, String> {
    let quoted = toml_string(url);
    let expected = || format!("expected {ORIGIN_EXPECTED}, found {quoted}");
    if url.contains('#') {
        return Err(format!("{quoted}: an origin URL has no fragment"));
    }
    let uri: Uri = url.parse().map_err(|_| expected())?;
    let (scheme, default_port) = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => ("http", 80),
        Some(s) if s.eq_ignore_ascii_case("https") => ("https", 443),
        Some(other) => {
            return Err(format!(
                "{quoted}: unsupported scheme {} (expected \"http\" or \"https\")",
                toml_string(other)
            ));
        }
        None => return Err(expected()),
    };
    let Some(authority) = uri.authority() else {
        return Err(expected());
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "{quoted}: an origin URL has no user info (credentials)"
        ));
    }
    let host = host_name(authority.host()).ok_or_else(expected)?;
    let port = match explicit_port(authority, &quoted, expected)? {
        Some(port) if port != default_port => format!(":{port}"),
        _ => String::new(),
    };
    if uri.query().is_some() {
        return Err(format!("{quoted}: an origin URL has no query"));
    }
    let path = match uri.path() {
        "" | "/" => String::new(),
        // RFC 3986 path characters only: URL parsers disagree about the
        // others (a WHATWG parser reads `\\` as `/`), and a prefix needs none.
        path if !path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&b)) =>
        {
            return Err(format!(
                "{quoted}: expected a path prefix of letters, digits and -._~!$&'()*+,;=:@/ (no percent-encoding), found {}",
                toml_string(path)
            ));
        }
        path => path_prefix(path).map_err(|message| format!("{quoted}: {message}"))?,
    };
    Ok(format!("{scheme}://{host}{port}{path}"))
}

/// A bundle environment (`[bundles] environment`): it names a directory
/// on the origin (`heads/<environment>/`), so it is kept plain.
pub(crate) fn environment_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected an environment name like \"production\" (1 to 64 lower-case letters, digits and '-', not starting with '-'), found {}",
            toml_string(name)
        ))
    }
}

/// A pinned root key (`[bundles] root_keys`): an ed25519 public key as 64
/// lower-case hex digits. Whether it is a usable curve point is checked by
/// the node, which knows ed25519; this crate does not.
pub(crate) fn root_key(key: &str) -> Result<(), String> {
    let hex = key.bytes().all(|b| b.is_ascii_hexdigit());
    if key.len() == 64 && hex && !key.bytes().any(|b| b.is_ascii_uppercase()) {
        return Ok(());
    }
    let chars = key.chars().count();
    let found = if chars == 64 {
        toml_string(key)
    } else {
        let plural = if chars == 1 { "" } else { "s" };
        format!("{} ({chars} character{plural})", toml_string(key))
    };
    let hint = if hex && key.len() == 64 {
        " (write the hex digits in lower case)"
    } else {
        ""
    };
    Err(format!(
        "expected an ed25519 public key as 64 lower-case hex digits, found {found}{hint}"
    ))
}

/// A route's path prefix: starts with `/`, whole segments (no empty, `.` or
/// `..` segment), no query or fragment. A trailing `/` (except the root) is
/// dropped: `/api/` and `/api` are the same prefix.
pub(crate) fn path_prefix(path: &str) -> Result<String, String> {
    let quoted = toml_string(path);
    if !path.starts_with('/') {
        return Err(format!(
            "expected a path starting with \"/\", found {quoted}"
        ));
    }
    if path.contains(['?', '#']) {
        return Err(format!(
            "expected a path without query or fragment, found {quoted}"
        ));
    }
    if path.parse::<PathAndQuery>().is_err()
        || path.contains(|c: char| c.is_whitespace() || c == '%')
    {
        return Err(format!(
            "expected a path of URL characters (no spaces, no percent-encoding), found {quoted}"
        ));
    }
    if path == "/" {
        return Ok(path.to_owned());
    }
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let body = trimmed.strip_prefix('/').unwrap_or(trimmed);
    if body.split('/').any(|seg| matches!(seg, "" | "." | "..")) {
        return Err(format!(
            "expected a path without empty, \".\" or \"..\" segments, found {quoted}"
        ));
    }
    Ok(trimmed.to_owned())
}

/// A static site's index file name: one path segment.
pub(crate) fn index_name(name: &str) -> Result<(), String> {
    if name.is_empty() || matches!(name, "." | "..") || name.contains(['/', '\\', '\0']) {
        Err(format!(
            "expected a file name like \"index.html\", found {}",
            toml_string(name)
        ))
    } else {
        Ok(())
    }
}

/// Response header names that describe the connection or the message
/// framing, which a route must not set.
const FORBIDDEN_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "content-length",
];

/// A response header name: valid, lower-cased, not hop-by-hop or framing.
pub(crate) fn response_header_name(name: &str) -> Result<HeaderName, String> {
    let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        format!(
            "expected a header name like \"x-frame-options\", found {}",
            toml_string(name)
        )
    })?;
    if FORBIDDEN_HEADERS.contains(&parsed.as_str()) {
        return Err(format!(
            "{} is a hop-by-hop or framing header and cannot be set by a route",
            toml_string(parsed.as_str())
        ));
    }
    Ok(parsed)
}

/// A request header name added to a route's cache key: valid, lower-cased.
pub(crate) fn request_header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        format!(
            "expected a header name like \"x-user-id\", found {}",
            toml_string(name)
        )
    })
}

/// A cookie name: an RFC 6265 token (visible ASCII except separators).
/// Case-sensitive, kept as written.
pub(crate) fn cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_graphic()
                && !matches!(
                    b,
                    b'(' | b')'
                        | b'<'
                        | b'>'
                        | b'@'
                        | b','
                        | b';'
                        | b':'
                        | b'\\'
                        | b'"'
                        | b'/'
                        | b'['
                        | b']'
                        | b'?'
                        | b'='
                        | b'{'
                        | b'}'
                )
        })
}

/// What `header:` and `cookie:` refer to, parsed.
enum Source {
    Header(HeaderName),
    Cookie(String),
}

/// `header:<name>` (lower-cased) or `cookie:<name>`; `None` when `text`
/// has neither prefix.
fn header_or_cookie(text: &str) -> Option<Result<Source, String>> {
    if let Some(name) = text.strip_prefix("header:") {
        return Some(
            HeaderName::from_bytes(name.as_bytes())
                .map(Source::Header)
                .map_err(|_| {
                    format!(
                        "expected a header name after \"header:\", like \"header:x-api-key\", found {}",
                        toml_string(text)
                    )
                }),
        );
    }
    if let Some(name) = text.strip_prefix("cookie:") {
        return Some(if cookie_name(name) {
            Ok(Source::Cookie(name.to_owned()))
        } else {
            Err(format!(
                "expected a cookie name after \"cookie:\" (an RFC 6265 token: visible ASCII without separators such as ; , = / or spaces), like \"cookie:session\", found {}",
                toml_string(text)
            ))
        });
    }
    None
}

/// A rate-limit policy's `key`. Client IPs get the default prefixes here;
/// the policy's `ipv4_prefix` / `ipv6_prefix` replace them.
pub(crate) fn rate_limit_key(text: &str) -> Result<RateLimitKey, String> {
    match text {
        "client-ip" => Ok(RateLimitKey::ClientIp {
            ipv4_prefix: DEFAULT_IPV4_PREFIX,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }),
        "user-id" => Ok(RateLimitKey::UserId),
        "route" => Ok(RateLimitKey::Route),
        other => match header_or_cookie(other) {
            Some(Ok(Source::Header(name))) => Ok(RateLimitKey::Header(name)),
            Some(Ok(Source::Cookie(name))) => Ok(RateLimitKey::Cookie(name)),
            Some(Err(message)) => Err(message),
            None => Err(format!(
                "expected \"client-ip\", \"header:<name>\", \"cookie:<name>\", \"user-id\" or \"route\", found {}",
                toml_string(other)
            )),
        },
    }
}

/// Default `ipv4_prefix` of a client-IP key: every address on its own.
pub(crate) const DEFAULT_IPV4_PREFIX: u8 = 32;
/// Default `ipv6_prefix` of a client-IP key: one /64, what a single
/// subscriber or host is usually given.
pub(crate) const DEFAULT_IPV6_PREFIX: u8 = 64;

/// A route's `user_id`: `cookie:<name>` or `header:<name>`.
pub(crate) fn user_id_source(text: &str) -> Result<UserIdSource, String> {
    match header_or_cookie(text) {
        Some(Ok(Source::Header(name))) => Ok(UserIdSource::Header(name)),
        Some(Ok(Source::Cookie(name))) => Ok(UserIdSource::Cookie(name)),
        Some(Err(message)) => Err(message),
        None => Err(format!(
            "expected \"cookie:<name>\" or \"header:<name>\", found {}",
            toml_string(text)
        )),
    }
}

/// The TOML spelling of a rate-limit key (`"client-ip"`, `"header:x-api-key"`, ...).
pub(crate) fn rate_limit_key_text(key: &RateLimitKey) -> String {
    match key {
        RateLimitKey::ClientIp { .. } => String::from("client-ip"),
        RateLimitKey::Header(name) => format!("header:{name}"),
        RateLimitKey::Cookie(name) => format!("cookie:{name}"),
        RateLimitKey::UserId => String::from("user-id"),
        RateLimitKey::Route => String::from("route"),
    }
}

/// The TOML spelling of a user id source (`"cookie:uid"`, `"header:x-user-id"`).
pub(crate) fn user_id_text(source: &UserIdSource) -> String {
    match source {
        UserIdSource::Cookie(name) => format!("cookie:{name}"),
        UserIdSource::Header(name) => format!("header:{name}"),
    }
}

/// A query parameter name left out of a cache key, as it appears in the
/// URL (case-sensitive, not decoded), or `*` for the whole query.
pub(crate) fn query_param(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'&' | b'=' | b'#'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected a query parameter name like \"utm_source\" (visible ASCII without '&', '=' or '#'), or \"*\", found {}",
            toml_string(name)
        ))
    }
}

/// A header value: visible ASCII, spaces and tabs.
pub(crate) fn header_value(value: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value).map_err(|_| {
        format!(
            "expected a header value of visible ASCII characters, found {}",
            toml_string(value)
        )
    })
}

/// `"preserve"`, `"upstream"`, or a fixed `host[:port]`.
pub(crate) fn host_header(value: &str) -> Result<HostHeader, String> {
    match value {
        "preserve" => Ok(HostHeader::Preserve),
        "upstream" => Ok(HostHeader::Upstream),
        fixed => {
            let valid = fixed
                .parse::<Authority>()
                .ok()
                .filter(|a| !a.as_str().contains('@') && host_name(a.host()).is_some())
                .is_some()
                && HeaderValue::from_str(fixed).is_ok();
            if valid {
                Ok(HostHeader::Fixed(fixed.to_owned()))
            } else {
                Err(format!(
                    "expected \"preserve\", \"upstream\" or a host like \"origin.example.com\", found {}",
                    toml_string(fixed)
                ))
            }
        }
    }
}

/// A bearer token: visible ASCII without spaces.
pub(crate) fn admin_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err(String::from("expected a token, found an empty string"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(String::from(
            "expected a token of visible ASCII characters without spaces (the value is not shown)",
        ));
    }
    Ok(())
}

/// `path` made absolute against the current directory, with `.` and `..`
/// removed lexically.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    normalize(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
}

/// `path` as written in a file whose directory is `base_dir`.
pub(crate) fn resolve(base_dir: &Path, path: &str) -> PathBuf {
    absolute(&base_dir.join(path))
}

/// Removes `.` and resolves `..` lexically.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if out.file_name().is_some() {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Where the files an edge config refers to (module components, static
/// roots, CA files) must exist: on the local filesystem, or in a bundle's
/// file list (where absolute paths are rooted at the bundle).
pub trait FileTree: std::fmt::Debug {
    /// `path` (absolute) must name a file.
    fn check_file(&self, path: &Path) -> Result<(), String>;
    /// `path` (absolute) must name a directory.
    fn check_dir(&self, path: &Path) -> Result<(), String>;
}

/// The local filesystem.
#[derive(Debug, Clone, Copy)]
pub struct LocalFiles;

impl FileTree for LocalFiles {
    fn check_file(&self, path: &Path) -> Result<(), String> {
        existing_file(path)
    }

    fn check_dir(&self, path: &Path) -> Result<(), String> {
        existing_dir(path)
    }
}

/// The path must name an existing regular file.
pub(crate) fn existing_file(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(format!("{} is not a file", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(format!("file not found: {}", path.display()))
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The path must name an existing directory.
pub(crate) fn existing_dir(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(format!("directory not found: {}", path.display()))
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        fn check(url: &str, expected: Result<(Scheme, &str), &str>) {
            let got = parse_target(url);
            let expected = expected
                .map(|(s, a)| (s, a.to_owned()))
                .map_err(str::to_owned);
            assert_eq!(got, expected, "{url}");
        }
        check(
            "http://127.0.0.1:9000",
            Ok((Scheme::Http, "127.0.0.1:9000")),
        );
        check(
            "http://127.0.0.1:9000/",
            Ok((Scheme::Http, "127.0.0.1:9000")),
        );
        check(
            "https://Origin.Example.com",
            Ok((Scheme::Https, "origin.example.com:443")),
        );
        check("HTTP://a", Ok((Scheme::Http, "a:80")));
        check("http://[::1]:81", Ok((Scheme::Http, "[::1]:81")));
        check(
            "http://a/api",
            Err(r#""http://a/api": a target URL has no path (found "/api"); routes choose paths"#),
        );
        check(
            "http://a/?x=1",
            Err(r#""http://a/?x=1": a target URL has no query"#),
        );
        check(
            "http://u:p@a",
            Err(r#""http://u:p@a": a target URL has no user info (credentials)"#),
        );
        check(
            "http://a#f",
            Err(r#""http://a#f": a target URL has no fragment"#),
        );
        check(
            "ftp://a",
            Err(r#""ftp://a": unsupported scheme "ftp" (expected "http" or "https")"#),
        );
        check(
            "http://a:0",
            Err(r#""http://a:0": the port must be between 1 and 65535"#),
        );
        check(
            "https://a:99999",
            Err(r#""https://a:99999": the port must be between 1 and 65535"#),
        );
        check("http://[::1]", Ok((Scheme::Http, "[::1]:80")));
        check(
            "127.0.0.1:9000",
            Err(r#"expected a URL like "http://127.0.0.1:9000", found "127.0.0.1:9000""#),
        );
        check(
            "not a url",
            Err(r#"expected a URL like "http://127.0.0.1:9000", found "not a url""#),
        );
        check(
            "http://a_b",
            Err(r#"expected a URL like "http://127.0.0.1:9000", found "http://a_b""#),
        );
        check(
            "http://a:",
            Err(r#"expected a URL like "http://127.0.0.1:9000", found "http://a:""#),
        );
        check(
            "",
            Err(r#"expected a URL like "http://127.0.0.1:9000", found """#),
        );
    }

    #[test]
    fn path_prefixes() {
        fn check(path: &str, expected: Result<&str, &str>) {
            assert_eq!(
                path_prefix(path),
                expected.map(str::to_owned).map_err(str::to_owned),
                "{path}"
            );
        }
        check("/", Ok("/"));
        check("/api", Ok("/api"));
        check("/api/", Ok("/api"));
        check("/a/b.c/d-e_f~", Ok("/a/b.c/d-e_f~"));
        check(
            "api",
            Err(r#"expected a path starting with "/", found "api""#),
        );
        check("", Err(r#"expected a path starting with "/", found """#));
        check(
            "/a?b",
            Err(r#"expected a path without query or fragment, found "/a?b""#),
        );
        check(
            "/a b",
            Err(
                r#"expected a path of URL characters (no spaces, no percent-encoding), found "/a b""#,
            ),
        );
        check(
            "/a%20b",
            Err(
                r#"expected a path of URL characters (no spaces, no percent-encoding), found "/a%20b""#,
            ),
        );
        check(
            "//",
            Err(r#"expected a path without empty, "." or ".." segments, found "//""#),
        );
        check(
            "/a//b",
            Err(r#"expected a path without empty, "." or ".." segments, found "/a//b""#),
        );
        check(
            "/a/../b",
            Err(r#"expected a path without empty, "." or ".." segments, found "/a/../b""#),
        );
        check(
            "/./",
            Err(r#"expected a path without empty, "." or ".." segments, found "/./""#),
        );
    }

    #[test]
    fn hosts() {
        fn check(pattern: &str, expected: Result<Option<HostMatch>, &str>) {
            assert_eq!(
                host_pattern(pattern),
                expected.map_err(str::to_owned),
                "{pattern}"
            );
        }
        check("*", Ok(None));
        check(
            "Example.COM",
            Ok(Some(HostMatch::Exact("example.com".into()))),
        );
        check(
            "*.example.com",
            Ok(Some(HostMatch::Suffix(".example.com".into()))),
        );
        check("127.0.0.1", Ok(Some(HostMatch::Exact("127.0.0.1".into()))));
        check("[::1]", Ok(Some(HostMatch::Exact("[::1]".into()))));
        check(
            "example.com:8080",
            Err(r#"expected a host name without a port, found "example.com:8080""#),
        );
        check(
            "*.*.example.com",
            Err(
                r#"expected a host like "example.com", "*.example.com" or "*", found "*.*.example.com""#,
            ),
        );
        check(
            "ex ample.com",
            Err(
                r#"expected a host like "example.com", "*.example.com" or "*", found "ex ample.com""#,
            ),
        );
        check(
            "-a.com",
            Err(r#"expected a host like "example.com", "*.example.com" or "*", found "-a.com""#),
        );
        check(
            "a..com",
            Err(r#"expected a host like "example.com", "*.example.com" or "*", found "a..com""#),
        );
        check(
            "",
            Err(r#"expected a host like "example.com", "*.example.com" or "*", found """#),
        );
        assert_eq!(
            server_name_pattern("*.Example.com"),
            Ok("*.example.com".to_owned())
        );
        assert!(server_name_pattern("*").is_err());
        assert!(server_name_pattern("a.*.com").is_err());
    }

    #[test]
    fn host_headers() {
        assert_eq!(host_header("preserve"), Ok(HostHeader::Preserve));
        assert_eq!(host_header("upstream"), Ok(HostHeader::Upstream));
        assert_eq!(
            host_header("origin.example.com"),
            Ok(HostHeader::Fixed("origin.example.com".into()))
        );
        assert_eq!(
            host_header("origin.example.com:8443"),
            Ok(HostHeader::Fixed("origin.example.com:8443".into()))
        );
        for bad in ["", "a b", "u@host", "http://x", "Preserve!"] {
            assert!(host_header(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rate_limit_keys() {
        fn check(text: &str, expected: Result<RateLimitKey, &str>) {
            let got = rate_limit_key(text);
            assert_eq!(got, expected.clone().map_err(str::to_owned), "{text}");
            if let Ok(key) = &got {
                // The rendered spelling parses back to the same key.
                assert_eq!(rate_limit_key(&rate_limit_key_text(key)).as_ref(), Ok(key));
            }
        }
        let header = |name: &'static str| HeaderName::from_static(name);
        let unknown = |found: &str| {
            format!(
                r#"expected "client-ip", "header:<name>", "cookie:<name>", "user-id" or "route", found {}"#,
                toml_string(found)
            )
        };
        let bad_header = |found: &str| {
            format!(
                r#"expected a header name after "header:", like "header:x-api-key", found {}"#,
                toml_string(found)
            )
        };
        let bad_cookie = |found: &str| {
            format!(
                r#"expected a cookie name after "cookie:" (an RFC 6265 token: visible ASCII without separators such as ; , = / or spaces), like "cookie:session", found {}"#,
                toml_string(found)
            )
        };
        check(
            "client-ip",
            Ok(RateLimitKey::ClientIp {
                ipv4_prefix: 32,
                ipv6_prefix: 64,
            }),
        );
        check("user-id", Ok(RateLimitKey::UserId));
        check("route", Ok(RateLimitKey::Route));
        check(
            "header:x-api-key",
            Ok(RateLimitKey::Header(header("x-api-key"))),
        );
        check(
            "header:X-Api-Key",
            Ok(RateLimitKey::Header(header("x-api-key"))),
        );
        check(
            "cookie:Session_ID",
            Ok(RateLimitKey::Cookie("Session_ID".into())),
        );
        check(
            "cookie:__Host-sid!#$%&'*+.^`|~",
            Ok(RateLimitKey::Cookie("__Host-sid!#$%&'*+.^`|~".into())),
        );
        for bad in [
            "",
            "ip",
            "Client-IP",
            "client_ip",
            "Header:x",
            "user_id",
            "routes",
            "header",
            "cookie",
        ] {
            check(bad, Err(&unknown(bad)));
        }
        for bad in ["header:", "header:x api", "header:x:y", "header:é"] {
            check(bad, Err(&bad_header(bad)));
        }
        for bad in [
            "cookie:",
            "cookie:a b",
            "cookie:a;b",
            "cookie:a=b",
            "cookie:a,b",
            "cookie:a/b",
            "cookie:\"a\"",
            "cookie:a:b",
            "cookie:(a)",
            "cookie:a\tb",
            "cookie:é",
        ] {
            check(bad, Err(&bad_cookie(bad)));
        }
    }

    #[test]
    fn user_ids() {
        fn check(text: &str, expected: Result<UserIdSource, &str>) {
            let got = user_id_source(text);
            assert_eq!(got, expected.clone().map_err(str::to_owned), "{text}");
            if let Ok(source) = &got {
                assert_eq!(user_id_source(&user_id_text(source)).as_ref(), Ok(source));
            }
        }
        check("cookie:uid", Ok(UserIdSource::Cookie("uid".into())));
        check(
            "header:X-User-Id",
            Ok(UserIdSource::Header(HeaderName::from_static("x-user-id"))),
        );
        for bad in ["uid", "user-id", "client-ip", "route", "Cookie:uid", ""] {
            check(
                bad,
                Err(&format!(
                    r#"expected "cookie:<name>" or "header:<name>", found {}"#,
                    toml_string(bad)
                )),
            );
        }
        assert!(user_id_source("cookie:a b").is_err());
        assert!(user_id_source("header:").is_err());
    }

    #[test]
    fn policy_names() {
        for good in ["a", "api-per-ip", "per_user_2", &"a".repeat(64)] {
            assert_eq!(check_policy_name(good), Ok(()), "{good}");
        }
        for bad in ["", "Api", "a.b", "a b", "ä", &"a".repeat(65)] {
            assert_eq!(
                check_policy_name(bad),
                Err(format!(
                    "expected a name of at most 64 lower-case letters, digits, '-' and '_', found {}",
                    toml_string(bad)
                )),
                "{bad}"
            );
        }
    }

    #[test]
    fn origin_urls() {
        fn check(input: &str, expected: Result<&str, &str>) {
            assert_eq!(
                origin_url(input),
                expected.map(str::to_owned).map_err(str::to_owned),
                "input {input:?}"
            );
            // The one spelling is its own spelling.
            if let Ok(origin) = expected {
                assert_eq!(origin_url(origin).as_deref(), Ok(origin), "{origin:?}");
            }
        }
        let expected = |found: &str| {
            format!(
                r#"expected a URL like "https://origin.example.net" or "https://bucket.example.net/cathedral", found "{found}""#
            )
        };
        check(
            "https://origin.example.net",
            Ok("https://origin.example.net"),
        );
        check(
            "https://origin.example.net/",
            Ok("https://origin.example.net"),
        );
        check(
            "HTTP://Origin.Example.NET:80/",
            Ok("http://origin.example.net"),
        );
        check("https://o.example:443", Ok("https://o.example"));
        check("http://o.example:443", Ok("http://o.example:443"));
        check("https://o.example:80", Ok("https://o.example:80"));
        check(
            "https://bucket.example.net/cathedral/",
            Ok("https://bucket.example.net/cathedral"),
        );
        check(
            "https://bucket.example.net/a/b-c/d_e.f",
            Ok("https://bucket.example.net/a/b-c/d_e.f"),
        );
        check("http://127.0.0.1:7000", Ok("http://127.0.0.1:7000"));
        check("http://[::1]:7000/x", Ok("http://[::1]:7000/x"));
        check("http://[0:0::1]", Ok("http://[::1]"));
        check(
            "ftp://o.example",
            Err(r#""ftp://o.example": unsupported scheme "ftp" (expected "http" or "https")"#),
        );
        check("o.example", Err(&expected("o.example")));
        check("/cathedral", Err(&expected("/cathedral")));
        check("https://", Err(&expected("https://")));
        check("", Err(&expected("")));
        check("https://o_x.example", Err(&expected("https://o_x.example")));
        check("https://o.example:", Err(&expected("https://o.example:")));
        check(
            "https://o.example:+1",
            Err(&expected("https://o.example:+1")),
        );
        check(
            "https://o.example:65536",
            Err(r#""https://o.example:65536": the port must be between 1 and 65535"#),
        );
        check(
            "https://o.example?a=1",
            Err(r#""https://o.example?a=1": an origin URL has no query"#),
        );
        check(
            "https://o.example/x?",
            Err(r#""https://o.example/x?": an origin URL has no query"#),
        );
        check(
            "https://o.example/x#",
            Err(r#""https://o.example/x#": an origin URL has no fragment"#),
        );
        check(
            "https://u@o.example",
            Err(r#""https://u@o.example": an origin URL has no user info (credentials)"#),
        );
        for bad_path in ["/a//b", "/./a", "/a/..", "//"] {
            let url = format!("https://o.example{bad_path}");
            assert_eq!(
                origin_url(&url),
                Err(format!(
                    r#""{url}": expected a path without empty, "." or ".." segments, found "{bad_path}""#
                ))
            );
        }
        check(
            "https://o.example/a:b@c/d;e=f,g+h$i!j*k(l)m'n&o~p",
            Ok("https://o.example/a:b@c/d;e=f,g+h$i!j*k(l)m'n&o~p"),
        );
        for bad_path in ["/%41", "/a\\b", "/a|b", "/a^b", "/a\"b", "/é"] {
            let url = format!("https://o.example{bad_path}");
            let message = origin_url(&url);
            if url.parse::<Uri>().is_ok() {
                assert_eq!(
                    message,
                    Err(format!(
                        "{}: expected a path prefix of letters, digits and -._~!$&'()*+,;=:@/ (no percent-encoding), found {}",
                        toml_string(&url),
                        toml_string(bad_path)
                    ))
                );
            } else {
                assert_eq!(message, Err(expected(&url)), "{url:?}");
            }
        }
        assert!(origin_url("https://o.example/a b").is_err());
    }

    #[test]
    fn environment_names() {
        for good in ["production", "staging-2", "p", "0", &"a".repeat(64)] {
            assert_eq!(environment_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "-prod",
            "Prod",
            "prod_1",
            "a.b",
            "a/b",
            "é",
            &"a".repeat(65),
        ] {
            assert_eq!(
                environment_name(bad),
                Err(format!(
                    "expected an environment name like \"production\" (1 to 64 lower-case letters, digits and '-', not starting with '-'), found {}",
                    toml_string(bad)
                )),
                "{bad}"
            );
        }
    }

    #[test]
    fn root_keys() {
        let good = "0123456789abcdef".repeat(4);
        assert_eq!(root_key(&good), Ok(()));
        let expected = "expected an ed25519 public key as 64 lower-case hex digits, found";
        let upper = good.to_uppercase();
        let one_upper = good.replacen('a', "A", 1);
        let non_hex = good.replacen('0', "g", 1);
        let short = good[..63].to_owned();
        let long = format!("{good}0");
        let prefixed = format!("0x{}", &good[2..]);
        let spaced = format!(" {}", &good[1..]);
        let wide = "é".repeat(32);
        let lower_case = " (write the hex digits in lower case)";
        for (bad, note) in [
            (&upper, lower_case),
            (&one_upper, lower_case),
            (&non_hex, ""),
            (&short, " (63 characters)"),
            (&long, " (65 characters)"),
            (&String::new(), " (0 characters)"),
            (&prefixed, ""),
            (&spaced, ""),
            (&wide, " (32 characters)"),
            (&String::from("a"), " (1 character)"),
        ] {
            let found = format!("{}{note}", toml_string(bad));
            assert_eq!(root_key(bad), Err(format!("{expected} {found}")), "{bad:?}");
        }
    }

    #[test]
    fn normalizing() {
        assert_eq!(
            normalize(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(normalize(Path::new("/../a")), PathBuf::from("/a"));
        assert_eq!(normalize(Path::new("a/../../b")), PathBuf::from("../b"));
        assert_eq!(normalize(Path::new("./")), PathBuf::from("."));
        assert_eq!(
            resolve(Path::new("/etc/cathedral"), "../regions"),
            PathBuf::from("/etc/regions")
        );
        assert_eq!(
            resolve(Path::new("/etc/cathedral"), "/srv/site"),
            PathBuf::from("/srv/site")
        );
    }

    #[test]
    fn names() {
        assert!(check_name("api-v2_eu").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a.b").is_err());
        assert!(check_name(&"a".repeat(65)).is_err());
        assert!(check_region_id("eu-central-1").is_ok());
        assert!(check_region_id("EU").is_err());
        assert!(check_region_id("../etc").is_err());
        assert!(check_region_id("-x").is_err());
        assert!(index_name("index.html").is_ok());
        assert!(index_name("a/index.html").is_err());
        assert!(index_name("..").is_err());
        assert!(response_header_name("X-Frame-Options").is_ok());
        assert!(response_header_name("Connection").is_err());
        assert!(response_header_name("bad header").is_err());
        assert!(header_value("DENY").is_ok());
        assert!(header_value("bad\nvalue").is_err());
        assert!(admin_token("s3cret-token").is_ok());
        assert!(admin_token("has space").is_err());
        assert!(admin_token("").is_err());
        assert_eq!(
            request_header_name("X-User-Id").map(|h| h.to_string()),
            Ok("x-user-id".to_owned())
        );
        assert!(request_header_name("x user").is_err());
        assert!(request_header_name("").is_err());
        for good in ["utm_source", "*", "a.b[]", "%C3%A9"] {
            assert_eq!(query_param(good), Ok(()), "{good}");
        }
        for bad in ["", "a=b", "a&b", "a#", "a b", "é"] {
            assert!(query_param(bad).is_err(), "{bad}");
        }
    }
}
