//! Cache directive parsing: `Cache-Control` (RFC 9111 §5.2) for requests and responses, and the
//! targeted `CDN-Cache-Control` / `Cathedral-CDN-Cache-Control` fields (RFC 9213, Structured Fields).

use http::header::{CACHE_CONTROL, PRAGMA};
use http::{HeaderMap, HeaderName, HeaderValue};
use sfv::{BareItem, ListEntry, Parser};

/// The node-targeted field: the most specific target for this cache, never forwarded to clients.
pub const CATHEDRAL_CDN_CACHE_CONTROL: HeaderName =
    HeaderName::from_static("cathedral-cdn-cache-control");
/// The RFC 9213 field aimed at every CDN.
pub const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// Targeted fields in order of precedence, most specific first (RFC 9213 §2.1 target list).
pub(crate) const TARGETED_FIELDS: [HeaderName; 2] =
    [CATHEDRAL_CDN_CACHE_CONTROL, CDN_CACHE_CONTROL];

/// The largest delta-seconds we represent (RFC 9111 §1.2.2: saturate at 2^31).
pub(crate) const DELTA_MAX: u32 = 1 << 31;

/// Whether a directive that may carry a field-name list is present, and in which form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum FieldScope {
    /// Directive absent.
    #[default]
    Absent,
    /// Unqualified form: applies to the whole response.
    All,
    /// Qualified form: applies to the listed header fields only.
    Fields(Vec<HeaderName>),
}

impl FieldScope {
    fn merge(&mut self, other: FieldScope) {
        match (&mut *self, other) {
            (_, FieldScope::Absent) | (FieldScope::All, _) => {}
            (slot, FieldScope::All) => *slot = FieldScope::All,
            (FieldScope::Fields(have), FieldScope::Fields(more)) => have.extend(more),
            (slot @ FieldScope::Absent, fields) => *slot = fields,
        }
    }

    pub(crate) fn is_all(&self) -> bool {
        matches!(self, FieldScope::All)
    }

    pub(crate) fn fields(&self) -> &[HeaderName] {
        match self {
            FieldScope::Fields(fields) => fields,
            FieldScope::Absent | FieldScope::All => &[],
        }
    }
}

/// Response cache directives this cache acts on.
///
/// Value-bearing directives keep their first occurrence (RFC 9111 §4.2.1 allows "first wins").
/// An invalid `max-age` / `s-maxage` value (not delta-seconds) counts as `0`: the response is
/// treated as stale rather than as fresh for an unknown time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ResponseDirectives {
    pub max_age: Option<u32>,
    pub s_maxage: Option<u32>,
    pub no_store: bool,
    pub no_cache: FieldScope,
    pub private: FieldScope,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub immutable: bool,
    pub stale_while_revalidate: Option<u32>,
    pub stale_if_error: Option<u32>,
}

/// Which field the effective response directives came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirectiveSource {
    /// `Cache-Control` (plus `Expires` for freshness).
    CacheControl,
    /// A valid targeted field (RFC 9213); `Cache-Control` and `Expires` are ignored.
    Targeted,
}

/// `max-stale` request directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MaxStale {
    /// `max-stale` without a value: any staleness is acceptable.
    Any,
    /// `max-stale=N`.
    Secs(u32),
}

/// Request cache directives (RFC 9111 §5.2.1, RFC 5861 §4 for `stale-if-error`).
///
/// Invalid values on requests are ignored (the directive is dropped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RequestDirectives {
    pub no_cache: bool,
    pub no_store: bool,
    pub max_age: Option<u32>,
    pub max_stale: Option<MaxStale>,
    pub min_fresh: Option<u32>,
    pub only_if_cached: bool,
    pub stale_if_error: Option<u32>,
}

/// Parses delta-seconds (RFC 9111 §1.2.2): 1*DIGIT, saturating at 2^31.
pub(crate) fn parse_delta(value: &str) -> Option<u32> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut n: u64 = 0;
    for b in value.bytes() {
        n = (n * 10 + u64::from(b - b'0')).min(u64::from(DELTA_MAX));
    }
    u32::try_from(n).ok()
}

/// Splits combined `Cache-Control` lines into `(lower-cased name, unquoted value)` pairs.
pub(crate) fn raw_directives<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for value in values {
        let text = String::from_utf8_lossy(value.as_bytes());
        let mut chars = text.chars().peekable();
        loop {
            while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
            if chars.peek().is_none() {
                break;
            }
            let mut name = String::new();
            while let Some(c) = chars.next_if(|c| *c != '=' && *c != ',') {
                name.push(c);
            }
            // `name = value` (whitespace around `=`) is not valid syntax: keep the directive
            // with an empty, invalid argument.
            let mut malformed = name.ends_with(char::is_whitespace);
            let name = name.trim().to_ascii_lowercase();
            let mut arg = None;
            if chars.next_if_eq(&'=').is_some() {
                malformed |= chars.peek().is_some_and(|c| c.is_whitespace());
                let mut v = String::new();
                if chars.next_if_eq(&'"').is_some() {
                    while let Some(c) = chars.next() {
                        match c {
                            '"' => break,
                            '\\' => {
                                if let Some(escaped) = chars.next() {
                                    v.push(escaped);
                                }
                            }
                            c => v.push(c),
                        }
                    }
                    // Anything but whitespace between the closing quote and the next comma
                    // makes the argument invalid.
                    while let Some(c) = chars.next_if(|c| *c != ',') {
                        malformed |= !c.is_whitespace();
                    }
                } else {
                    while let Some(c) = chars.next_if(|c| *c != ',') {
                        v.push(c);
                    }
                    v = v.trim_end().to_owned();
                }
                arg = Some(if malformed { String::new() } else { v });
            }
            if !name.is_empty() {
                out.push((name, arg));
            }
        }
    }
    out
}

fn field_names(list: &str) -> Vec<HeaderName> {
    list.split(',')
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

fn scope_from_arg(arg: Option<&str>) -> FieldScope {
    match arg {
        None => FieldScope::All,
        Some(list) => {
            let fields = field_names(list);
            // `no-cache=""` names nothing; treat it as the unqualified form (the safe reading).
            if fields.is_empty() {
                FieldScope::All
            } else {
                FieldScope::Fields(fields)
            }
        }
    }
}

impl ResponseDirectives {
    /// Parses `Cache-Control` field lines.
    pub(crate) fn from_cache_control(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for (name, arg) in raw_directives(headers.get_all(CACHE_CONTROL).iter()) {
            let delta_or_zero = || Some(arg.as_deref().and_then(parse_delta).unwrap_or(0));
            match name.as_str() {
                "max-age" => d.max_age = d.max_age.or_else(delta_or_zero),
                "s-maxage" => d.s_maxage = d.s_maxage.or_else(delta_or_zero),
                "no-store" => d.no_store = true,
                "no-cache" => d.no_cache.merge(scope_from_arg(arg.as_deref())),
                "private" => d.private.merge(scope_from_arg(arg.as_deref())),
                "public" => d.public = true,
                "must-revalidate" => d.must_revalidate = true,
                "proxy-revalidate" => d.proxy_revalidate = true,
                "must-understand" => d.must_understand = true,
                "immutable" => d.immutable = true,
                "stale-while-revalidate" => {
                    d.stale_while_revalidate = d
                        .stale_while_revalidate
                        .or_else(|| arg.as_deref().and_then(parse_delta));
                }
                "stale-if-error" => {
                    d.stale_if_error = d
                        .stale_if_error
                        .or_else(|| arg.as_deref().and_then(parse_delta));
                }
                _ => {}
            }
        }
        d
    }

    /// Parses one targeted field (RFC 9213) as a Structured Field Dictionary.
    ///
    /// Returns `None` when the field is absent or fails to parse; the caller then ignores it
    /// entirely. A directive whose value has the wrong type is ignored on its own.
    pub(crate) fn from_targeted(headers: &HeaderMap, field: &HeaderName) -> Option<Self> {
        let mut combined: Vec<u8> = Vec::new();
        for line in headers.get_all(field) {
            if !combined.is_empty() {
                combined.extend_from_slice(b", ");
            }
            combined.extend_from_slice(line.as_bytes());
        }
        if combined.iter().all(|b| b.is_ascii_whitespace()) {
            return None;
        }
        let dict = Parser::parse_dictionary(&combined).ok()?;
        let mut d = Self::default();
        for (name, member) in &dict {
            let item = match member {
                ListEntry::Item(item) => Some(&item.bare_item),
                ListEntry::InnerList(_) => None,
            };
            let delta = || match item {
                Some(BareItem::Integer(n)) if *n >= 0 => {
                    Some(u32::try_from((*n).min(i64::from(DELTA_MAX))).unwrap_or(DELTA_MAX))
                }
                _ => None,
            };
            let flag = matches!(item, Some(BareItem::Boolean(true)));
            let scope = || match member {
                ListEntry::Item(item) => match &item.bare_item {
                    BareItem::Boolean(true) => FieldScope::All,
                    BareItem::String(list) => scope_from_arg(Some(list)),
                    BareItem::Token(name) => scope_from_arg(Some(name)),
                    _ => FieldScope::Absent,
                },
                ListEntry::InnerList(list) => {
                    let fields: Vec<HeaderName> = list
                        .items
                        .iter()
                        .filter_map(|i| match &i.bare_item {
                            BareItem::String(s) | BareItem::Token(s) => {
                                HeaderName::from_bytes(s.as_bytes()).ok()
                            }
                            _ => None,
                        })
                        .collect();
                    if fields.is_empty() {
                        FieldScope::All
                    } else {
                        FieldScope::Fields(fields)
                    }
                }
            };
            match name.as_str() {
                "max-age" => d.max_age = delta(),
                "s-maxage" => d.s_maxage = delta(),
                "stale-while-revalidate" => d.stale_while_revalidate = delta(),
                "stale-if-error" => d.stale_if_error = delta(),
                "no-store" => d.no_store = flag,
                "public" => d.public = flag,
                "must-revalidate" => d.must_revalidate = flag,
                "proxy-revalidate" => d.proxy_revalidate = flag,
                "must-understand" => d.must_understand = flag,
                "immutable" => d.immutable = flag,
                "no-cache" => d.no_cache = scope(),
                "private" => d.private = scope(),
                _ => {}
            }
        }
        Some(d)
    }

    /// The directives this cache obeys: the most specific valid targeted field, else `Cache-Control`.
    pub(crate) fn effective(headers: &HeaderMap) -> (Self, DirectiveSource) {
        for field in &TARGETED_FIELDS {
            if let Some(d) = Self::from_targeted(headers, field) {
                return (d, DirectiveSource::Targeted);
            }
        }
        (
            Self::from_cache_control(headers),
            DirectiveSource::CacheControl,
        )
    }

    /// True when the response forbids serving it stale (RFC 9111 §4.2.4) through an explicit
    /// `must-revalidate` or `proxy-revalidate` (the latter applies to shared caches).
    pub(crate) fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate
    }
}

impl RequestDirectives {
    /// Parses the request's `Cache-Control`; `Pragma: no-cache` counts as `no-cache` only when
    /// the request has no `Cache-Control` (RFC 9111 §5.4, legacy HTTP/1.0 clients).
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        if !headers.contains_key(CACHE_CONTROL) {
            d.no_cache = raw_directives(headers.get_all(PRAGMA).iter())
                .iter()
                .any(|(name, _)| name == "no-cache");
            return d;
        }
        for (name, arg) in raw_directives(headers.get_all(CACHE_CONTROL).iter()) {
            let delta = || arg.as_deref().and_then(parse_delta);
            match name.as_str() {
                "no-cache" => d.no_cache = true,
                "no-store" => d.no_store = true,
                "only-if-cached" => d.only_if_cached = true,
                "max-age" => d.max_age = d.max_age.or_else(delta),
                "min-fresh" => d.min_fresh = d.min_fresh.or_else(delta),
                "stale-if-error" => d.stale_if_error = d.stale_if_error.or_else(delta),
                "max-stale" if d.max_stale.is_none() => {
                    d.max_stale = match arg.as_deref() {
                        None => Some(MaxStale::Any),
                        Some(v) => parse_delta(v).map(MaxStale::Secs),
                    };
                }
                _ => {}
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    fn check_resp(lines: &[&str], expected: ResponseDirectives) {
        let pairs: Vec<_> = lines.iter().map(|l| ("cache-control", *l)).collect();
        assert_eq!(
            ResponseDirectives::from_cache_control(&headers(&pairs)),
            expected,
            "{lines:?}"
        );
    }

    #[test]
    fn response_cache_control() {
        let d = ResponseDirectives::default;
        check_resp(
            &["max-age=60"],
            ResponseDirectives {
                max_age: Some(60),
                ..d()
            },
        );
        check_resp(
            &["MAX-AGE=60"],
            ResponseDirectives {
                max_age: Some(60),
                ..d()
            },
        );
        check_resp(
            &["max-age=\"60\""],
            ResponseDirectives {
                max_age: Some(60),
                ..d()
            },
        );
        check_resp(
            &["max-age=60, max-age=0"],
            ResponseDirectives {
                max_age: Some(60),
                ..d()
            },
        );
        check_resp(
            &["max-age=0", "max-age=60"],
            ResponseDirectives {
                max_age: Some(0),
                ..d()
            },
        );
        check_resp(
            &["max-age=-1"],
            ResponseDirectives {
                max_age: Some(0),
                ..d()
            },
        );
        check_resp(
            &["max-age=1.5"],
            ResponseDirectives {
                max_age: Some(0),
                ..d()
            },
        );
        check_resp(
            &["max-age"],
            ResponseDirectives {
                max_age: Some(0),
                ..d()
            },
        );
        check_resp(
            &["max-age=99999999999999999999"],
            ResponseDirectives {
                max_age: Some(DELTA_MAX),
                ..d()
            },
        );
        check_resp(
            &[" public ,s-maxage=10,, must-revalidate"],
            ResponseDirectives {
                public: true,
                s_maxage: Some(10),
                must_revalidate: true,
                ..d()
            },
        );
        check_resp(
            &["no-cache", "no-cache=\"x-a\""],
            ResponseDirectives {
                no_cache: FieldScope::All,
                ..d()
            },
        );
        check_resp(
            &["no-cache=\"X-A, x-b\""],
            ResponseDirectives {
                no_cache: FieldScope::Fields(vec![
                    HeaderName::from_static("x-a"),
                    HeaderName::from_static("x-b"),
                ]),
                ..d()
            },
        );
        check_resp(
            &["private=set-cookie, no-store"],
            ResponseDirectives {
                private: FieldScope::Fields(vec![HeaderName::from_static("set-cookie")]),
                no_store: true,
                ..d()
            },
        );
        check_resp(
            &["stale-while-revalidate=30, stale-if-error=abc, immutable, must-understand"],
            ResponseDirectives {
                stale_while_revalidate: Some(30),
                immutable: true,
                must_understand: true,
                ..d()
            },
        );
        check_resp(
            &["community=\"UCI, x\", max-age=5"],
            ResponseDirectives {
                max_age: Some(5),
                ..d()
            },
        );
        check_resp(&["=garbage;;, ,=1"], d());
        let mut h = HeaderMap::new();
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_bytes(b"\xff\xfe, max-age=3").unwrap(),
        );
        assert_eq!(
            ResponseDirectives::from_cache_control(&h),
            ResponseDirectives {
                max_age: Some(3),
                ..d()
            }
        );
    }

    fn check_req(cc: Option<&str>, pragma: Option<&str>, expected: RequestDirectives) {
        let mut pairs = Vec::new();
        if let Some(cc) = cc {
            pairs.push(("cache-control", cc));
        }
        if let Some(p) = pragma {
            pairs.push(("pragma", p));
        }
        assert_eq!(
            RequestDirectives::parse(&headers(&pairs)),
            expected,
            "{cc:?}"
        );
    }

    #[test]
    fn request_cache_control() {
        let d = RequestDirectives::default;
        check_req(
            Some("no-cache"),
            None,
            RequestDirectives {
                no_cache: true,
                ..d()
            },
        );
        check_req(
            None,
            Some("no-cache"),
            RequestDirectives {
                no_cache: true,
                ..d()
            },
        );
        check_req(
            Some("max-age=5"),
            Some("no-cache"),
            RequestDirectives {
                max_age: Some(5),
                ..d()
            },
        );
        check_req(Some("max-age=abc"), None, d());
        check_req(
            Some("max-stale"),
            None,
            RequestDirectives {
                max_stale: Some(MaxStale::Any),
                ..d()
            },
        );
        check_req(
            Some("max-stale=10, min-fresh=3, only-if-cached, no-store, stale-if-error=60"),
            None,
            RequestDirectives {
                max_stale: Some(MaxStale::Secs(10)),
                min_fresh: Some(3),
                only_if_cached: true,
                no_store: true,
                stale_if_error: Some(60),
                ..d()
            },
        );
    }

    fn check_targeted(
        pairs: &[(&str, &str)],
        expected: Option<(ResponseDirectives, DirectiveSource)>,
    ) {
        let h = headers(pairs);
        let got = ResponseDirectives::effective(&h);
        match expected {
            Some(e) => assert_eq!(got, e, "{pairs:?}"),
            None => assert_eq!(got.1, DirectiveSource::CacheControl, "{pairs:?}"),
        }
    }

    #[test]
    fn targeted_fields_precedence_and_validity() {
        let d = ResponseDirectives::default;
        let t = DirectiveSource::Targeted;
        check_targeted(
            &[
                ("cache-control", "max-age=10"),
                ("cdn-cache-control", "max-age=20"),
            ],
            Some((
                ResponseDirectives {
                    max_age: Some(20),
                    ..d()
                },
                t,
            )),
        );
        check_targeted(
            &[
                ("cdn-cache-control", "max-age=20"),
                (
                    "cathedral-cdn-cache-control",
                    "max-age=30, stale-while-revalidate=5",
                ),
            ],
            Some((
                ResponseDirectives {
                    max_age: Some(30),
                    stale_while_revalidate: Some(5),
                    ..d()
                },
                t,
            )),
        );
        // An invalid most-specific field is ignored entirely; the next one applies.
        check_targeted(
            &[
                ("cdn-cache-control", "max-age=20"),
                ("cathedral-cdn-cache-control", "max-age=30, ="),
            ],
            Some((
                ResponseDirectives {
                    max_age: Some(20),
                    ..d()
                },
                t,
            )),
        );
        check_targeted(&[("cdn-cache-control", "max-age=\"x\"")], {
            Some((d(), t))
        });
        check_targeted(&[("cdn-cache-control", "max-age=1.5, no-store")], {
            Some((
                ResponseDirectives {
                    no_store: true,
                    ..d()
                },
                t,
            ))
        });
        check_targeted(&[("cdn-cache-control", "MAX-AGE=5")], None);
        check_targeted(&[("cdn-cache-control", "")], None);
        check_targeted(
            &[(
                "cdn-cache-control",
                "private=(\"x-a\" \"x-b\"), no-cache, public=?0",
            )],
            Some((
                ResponseDirectives {
                    private: FieldScope::Fields(vec![
                        HeaderName::from_static("x-a"),
                        HeaderName::from_static("x-b"),
                    ]),
                    no_cache: FieldScope::All,
                    ..d()
                },
                t,
            )),
        );
        check_targeted(
            &[
                ("cdn-cache-control", "max-age=60"),
                ("cdn-cache-control", "must-revalidate"),
            ],
            Some((
                ResponseDirectives {
                    max_age: Some(60),
                    must_revalidate: true,
                    ..d()
                },
                t,
            )),
        );
    }
}
