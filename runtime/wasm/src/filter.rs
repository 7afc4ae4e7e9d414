//! The filter hooks' data on the host side: what the node hands a filter
//! ([`RequestHead`], [`ResponseParts`]) and what it gets back
//! ([`RequestAction`], [`ResponseAction`]), with the conversions to and from
//! the WIT types. Everything a guest returns is validated here; anything
//! invalid is a guest error, never a panic.

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::host::bindings::cathedral::edge::types as wit;

/// The request as a filter sees it, borrowed from the node's request.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// `"http"` or `"https"`: how the client reached the node.
    pub scheme: &'a str,
    /// The host (and port) the request is for.
    pub authority: &'a str,
    /// Path and query, starting with `/`.
    pub path_and_query: &'a str,
    /// The request headers (hop-by-hop headers already removed).
    pub headers: &'a HeaderMap,
}

impl<'a> RequestHead<'a> {
    /// The head of `parts`, which arrived over `scheme` for `authority`
    /// (usually the `Host` header).
    pub fn new(parts: &'a http::request::Parts, scheme: &'a str, authority: &'a str) -> Self {
        Self {
            method: &parts.method,
            scheme,
            authority,
            path_and_query: parts.uri.path_and_query().map_or("/", PathAndQuery::as_str),
            headers: &parts.headers,
        }
    }

    pub(crate) fn to_wit(self) -> wit::RequestHead {
        wit::RequestHead {
            method: self.method.as_str().to_owned(),
            scheme: self.scheme.to_owned(),
            authority: self.authority.to_owned(),
            path_with_query: self.path_and_query.to_owned(),
            headers: fields_to_wit(self.headers),
        }
    }
}

/// The response as `on-response` sees it, borrowed from the node's response.
#[derive(Debug, Clone, Copy)]
pub struct ResponseParts<'a> {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The decoded body, when the route hands bodies to filters and it fits
    /// the route's limit; `None` otherwise.
    pub body: Option<&'a [u8]>,
}

impl ResponseParts<'_> {
    pub(crate) fn to_wit(self) -> wit::Response {
        wit::Response {
            status: self.status.as_u16(),
            headers: fields_to_wit(self.headers),
            body: self.body.map(<[u8]>::to_vec),
        }
    }
}

fn fields_to_wit(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

/// What a filter decided about a request.
#[derive(Debug, Clone)]
pub enum RequestAction {
    /// Go on unchanged.
    Continue,
    /// Go on with these changes (apply them with [`RequestEdit::apply`]).
    Edit(RequestEdit),
    /// Answer now with this response; the request goes no further.
    Respond(http::Response<Bytes>),
}

/// Changes to a request, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestEdit {
    /// A new path and query.
    pub path_and_query: Option<PathAndQuery>,
    /// Headers to remove (applied first).
    pub remove_headers: Vec<HeaderName>,
    /// Headers to set: each name's existing values are replaced by those
    /// listed, in order.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Don't store the response in the shared cache.
    pub no_store: bool,
}

impl RequestEdit {
    /// Applies the path and header changes to `parts` (`no_store` is the
    /// node's to act on).
    pub fn apply(&self, parts: &mut http::request::Parts) {
        if let Some(path) = &self.path_and_query {
            let old = parts.uri.clone();
            let mut uri = old.clone().into_parts();
            uri.path_and_query = Some(path.clone());
            // Only the path changed, and it parsed on its own: this cannot
            // fail, but keep the old URI rather than panic if it ever does.
            parts.uri = http::Uri::from_parts(uri).unwrap_or(old);
        }
        apply_headers(&mut parts.headers, &self.remove_headers, &self.set_headers);
    }
}

/// What a filter decided about a response.
#[derive(Debug, Clone)]
pub enum ResponseAction {
    /// Pass it on unchanged.
    Pass,
    /// Pass it on with these changes.
    Edit(ResponseEdit),
}

/// Changes to a response, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseEdit {
    /// A new status.
    pub status: Option<StatusCode>,
    /// Headers to remove (applied first).
    pub remove_headers: Vec<HeaderName>,
    /// Headers to set, as in [`RequestEdit::set_headers`].
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// A new body. The node then drops `Content-Length`, `Content-Encoding`
    /// and ranges, and weakens the `ETag`.
    pub body: Option<Bytes>,
}

impl ResponseEdit {
    /// Applies the status and header changes to `parts` (the body is the
    /// node's to swap).
    pub fn apply(&self, parts: &mut http::response::Parts) {
        if let Some(status) = self.status {
            parts.status = status;
        }
        apply_headers(&mut parts.headers, &self.remove_headers, &self.set_headers);
    }
}

fn apply_headers(
    headers: &mut HeaderMap,
    remove: &[HeaderName],
    set: &[(HeaderName, HeaderValue)],
) {
    for name in remove {
        headers.remove(name);
    }
    for (name, _) in set {
        headers.remove(name);
    }
    for (name, value) in set {
        headers.append(name.clone(), value.clone());
    }
}

/// Headers a module may neither set nor remove: connection management and
/// message framing belong to the node. They are ignored, not errors.
fn reserved(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::CONTENT_LENGTH
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == header::HOST
        || name == header::PROXY_AUTHENTICATE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// An invalid answer from a guest.
pub(crate) type Invalid = String;

fn header_name(name: &str) -> Result<HeaderName, Invalid> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("invalid header name {name:?}"))
}

fn header_value(name: &HeaderName, value: Vec<u8>) -> Result<HeaderValue, Invalid> {
    HeaderValue::from_maybe_shared(Bytes::from(value))
        .map_err(|_| format!("invalid value for header {name}"))
}

fn status(code: u16) -> Result<StatusCode, Invalid> {
    match StatusCode::from_u16(code) {
        Ok(s) if (200..=599).contains(&code) => Ok(s),
        _ => Err(format!("status {code} is outside 200..=599")),
    }
}

fn removals(names: Vec<String>) -> Result<Vec<HeaderName>, Invalid> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let name = header_name(&name)?;
        if !reserved(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

fn settings(fields: Vec<(String, Vec<u8>)>) -> Result<Vec<(HeaderName, HeaderValue)>, Invalid> {
    let mut out = Vec::with_capacity(fields.len());
    for (name, value) in fields {
        let name = header_name(&name)?;
        let value = header_value(&name, value)?;
        if !reserved(&name) {
            out.push((name, value));
        }
    }
    Ok(out)
}

impl TryFrom<wit::RequestAction> for RequestAction {
    type Error = Invalid;

    fn try_from(action: wit::RequestAction) -> Result<Self, Invalid> {
        Ok(match action {
            wit::RequestAction::Continue => RequestAction::Continue,
            wit::RequestAction::Edit(edit) => {
                let path_and_query = match edit.path_with_query {
                    Some(path) => Some(path_and_query(&path)?),
                    None => None,
                };
                RequestAction::Edit(RequestEdit {
                    path_and_query,
                    remove_headers: removals(edit.remove_headers)?,
                    set_headers: settings(edit.set_headers)?,
                    no_store: edit.no_store,
                })
            }
            wit::RequestAction::Respond(response) => {
                let mut out = http::Response::new(Bytes::from(response.body.unwrap_or_default()));
                *out.status_mut() = status(response.status)?;
                apply_headers(out.headers_mut(), &[], &settings(response.headers)?);
                RequestAction::Respond(out)
            }
        })
    }
}

fn path_and_query(path: &str) -> Result<PathAndQuery, Invalid> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} does not start with '/'"));
    }
    path.parse()
        .map_err(|_| format!("invalid path and query {path:?}"))
}

impl TryFrom<wit::ResponseAction> for ResponseAction {
    type Error = Invalid;

    fn try_from(action: wit::ResponseAction) -> Result<Self, Invalid> {
        Ok(match action {
            wit::ResponseAction::Pass => ResponseAction::Pass,
            wit::ResponseAction::Edit(edit) => ResponseAction::Edit(ResponseEdit {
                status: edit.status.map(status).transpose()?,
                remove_headers: removals(edit.remove_headers)?,
                set_headers: settings(edit.set_headers)?,
                body: edit.body.map(Bytes::from),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
            .collect()
    }

    fn edit(path: Option<&str>, set: &[(&str, &[u8])]) -> wit::RequestAction {
        wit::RequestAction::Edit(wit::RequestEdit {
            path_with_query: path.map(str::to_owned),
            remove_headers: vec!["X-Remove".into(), "content-length".into()],
            set_headers: fields(set),
            no_store: true,
        })
    }

    #[test]
    fn request_edits_are_validated_and_reserved_headers_ignored() {
        let ok = RequestAction::try_from(edit(
            Some("/new?q=1"),
            &[
                ("Set-Cookie", b"a=1"),
                ("set-cookie", b"b=2"),
                ("connection", b"close"),
            ],
        ))
        .expect("valid");
        let RequestAction::Edit(e) = ok else {
            panic!("expected an edit")
        };
        assert_eq!(
            e.path_and_query.as_ref().map(PathAndQuery::as_str),
            Some("/new?q=1")
        );
        assert_eq!(e.remove_headers, vec![HeaderName::from_static("x-remove")]);
        assert_eq!(e.set_headers.len(), 2);
        assert!(e.no_store);

        let mut parts = http::Request::get("http://h/old?x")
            .header("x-remove", "1")
            .header("set-cookie", "old")
            .header("keep", "1")
            .body(())
            .expect("request")
            .into_parts()
            .0;
        e.apply(&mut parts);
        assert_eq!(parts.uri.to_string(), "http://h/new?q=1");
        let cookies: Vec<_> = parts.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert!(parts.headers.get("x-remove").is_none());
        assert!(parts.headers.get("keep").is_some());

        for (bad, why) in [
            (edit(Some("no-slash"), &[]), "does not start with '/'"),
            (edit(None, &[("bad name", b"v")]), "invalid header name"),
            (edit(None, &[("x", b"a\r\nb: c")]), "invalid value"),
        ] {
            let err = RequestAction::try_from(bad).expect_err("invalid");
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn respond_and_response_edits_check_the_status() {
        let respond = |status| {
            wit::RequestAction::Respond(wit::Response {
                status,
                headers: fields(&[("content-type", b"text/plain"), ("content-length", b"999")]),
                body: Some(b"blocked".to_vec()),
            })
        };
        let RequestAction::Respond(r) = RequestAction::try_from(respond(451)).expect("valid")
        else {
            panic!("expected a response")
        };
        assert_eq!(r.status(), 451);
        assert_eq!(r.body().as_ref(), b"blocked");
        assert!(r.headers().get("content-length").is_none());
        for bad in [0, 99, 101, 199, 600, 1000] {
            assert!(RequestAction::try_from(respond(bad)).is_err(), "{bad}");
        }
        let edit = |status| {
            wit::ResponseAction::Edit(wit::ResponseEdit {
                status,
                remove_headers: vec![],
                set_headers: fields(&[("cache-control", b"private")]),
                body: Some(b"new".to_vec()),
            })
        };
        let ResponseAction::Edit(e) = ResponseAction::try_from(edit(Some(203))).expect("valid")
        else {
            panic!("expected an edit")
        };
        assert_eq!(e.status, Some(StatusCode::NON_AUTHORITATIVE_INFORMATION));
        assert_eq!(e.body.as_deref(), Some(&b"new"[..]));
        assert!(ResponseAction::try_from(edit(Some(700))).is_err());
    }
}
