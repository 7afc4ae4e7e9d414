//! Headers and cookies: reading [`Fields`](crate::Fields) and building edits.

use crate::Fields;

/// The first value of header `name` (case-insensitive), if it is UTF-8.
pub fn get<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .find_map(|(_, v)| std::str::from_utf8(v).ok())
}

/// Every value of header `name` (case-insensitive) that is UTF-8, in order.
pub fn get_all<'a, 'n>(
    fields: &'a Fields,
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    fields
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
}

/// Whether header `name` is present.
pub fn contains(fields: &Fields, name: &str) -> bool {
    fields.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
}

/// Headers from `(name, value)` text pairs.
pub fn from_pairs(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec()))
        .collect()
}

/// One header entry from text.
pub fn field(name: &str, value: impl AsRef<str>) -> (String, Vec<u8>) {
    (
        name.to_ascii_lowercase(),
        value.as_ref().as_bytes().to_vec(),
    )
}

/// Every `(name, value)` cookie of the request's `cookie` header(s).
pub fn cookies(fields: &Fields) -> impl Iterator<Item = (&str, &str)> {
    get_all(fields, "cookie").flat_map(parse_cookie_header)
}

/// The value of cookie `name`.
pub fn cookie<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    cookies(fields).find(|(n, _)| *n == name).map(|(_, v)| v)
}

/// The `(name, value)` pairs of one `cookie` header value (`a=1; b=2`).
pub fn parse_cookie_header(value: &str) -> impl Iterator<Item = (&str, &str)> {
    value.split(';').filter_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        let name = name.trim();
        let value = value.trim().trim_matches('"');
        (!name.is_empty()).then_some((name, value))
    })
}

/// The cookie name a `set-cookie` value sets (`id=1; Path=/` → `id`).
pub fn set_cookie_name(value: &str) -> Option<&str> {
    let (name, _) = value.split(';').next()?.split_once('=')?;
    let name = name.trim();
    (!name.is_empty()).then_some(name)
}

/// The `cookie` header value without the cookies `drop` matches, or `None`
/// when no cookie is left. Cookies keep their order.
pub fn filter_cookie_header(value: &str, drop: impl Fn(&str) -> bool) -> Option<String> {
    let kept: Vec<String> = parse_cookie_header(value)
        .filter(|(name, _)| !drop(name))
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// Whether `name` matches `pattern`: equal, or `pattern` ends in `*` and
/// `name` starts with the rest (`_ga*` matches `_ga` and `_ga_XYZ`).
/// Case-insensitive.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix)),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// The media type of a `content-type` value, lower-case, without parameters.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Whether `path` is `prefix` or lies under it (`/shop` covers `/shop` and
/// `/shop/cart`, not `/shopping`). A prefix ending in `/` covers everything
/// that starts with it.
pub fn path_under(path: &str, prefix: &str) -> bool {
    if prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
}
