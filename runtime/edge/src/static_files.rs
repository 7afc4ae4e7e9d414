//! Static routes: answers GET and HEAD from a [`ContentSource`] with the
//! right Content-Type, Last-Modified, a strong blake3 ETag, conditional
//! requests and single byte ranges.

use std::sync::Arc;

use http::{HeaderValue, Method, Response, StatusCode, header, request::Parts};
use percent_encoding::percent_decode_str;
use tracing::warn;

use crate::body::{Body, empty};
use crate::conditional::{self, Precondition, Range};
use crate::content::{ContentObject, ContentSource, Lookup};
use crate::responses::plain;

#[derive(Debug)]
pub struct StaticContent {
    pub source: Arc<dyn ContentSource>,
    pub index: String,
}

pub async fn serve(site: &StaticContent, req: &Parts, route_prefix: &str) -> Response<Body> {
    if req.method != Method::GET && req.method != Method::HEAD {
        let mut resp = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "static content answers GET and HEAD",
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let url_path = req.uri.path();
    let Some(rel) = relative_path(url_path, route_prefix, &site.index) else {
        return plain(StatusCode::BAD_REQUEST, "invalid path");
    };
    match site.source.open(&rel).await {
        Ok(Lookup::File(obj)) => represent(obj, &rel, req, StatusCode::OK).await,
        Ok(Lookup::Directory) => {
            let mut location = format!("{url_path}/");
            if let Some(q) = req.uri.query() {
                location.push('?');
                location.push_str(q);
            }
            let mut resp = plain(StatusCode::MOVED_PERMANENTLY, "this is a directory");
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp
        }
        Ok(Lookup::NotFound) => not_found(site, req).await,
        Err(e) => {
            warn!(path = %rel, error = %e, "static content read failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "content could not be read",
            )
        }
    }
}

/// The site's own `404.html` when it has one.
async fn not_found(site: &StaticContent, req: &Parts) -> Response<Body> {
    if let Ok(Lookup::File(obj)) = site.source.open("404.html").await {
        // Conditionals and ranges apply only to 200 responses.
        return represent(obj, "404.html", req, StatusCode::NOT_FOUND).await;
    }
    plain(StatusCode::NOT_FOUND, "no such file")
}

async fn represent(
    obj: ContentObject,
    rel: &str,
    req: &Parts,
    status: StatusCode,
) -> Response<Body> {
    let etag = obj.etag();
    let len = obj.len;
    let modified = obj.modified;
    let mut resp = Response::new(empty());
    {
        let h = resp.headers_mut();
        let ct = obj
            .content_type
            .as_deref()
            .and_then(|ct| HeaderValue::from_str(ct).ok())
            .unwrap_or_else(|| content_type(rel));
        h.insert(header::CONTENT_TYPE, ct);
        if let Ok(v) = HeaderValue::from_str(&etag) {
            h.insert(header::ETAG, v);
        }
        if let Some(m) = modified
            && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(m))
        {
            h.insert(header::LAST_MODIFIED, v);
        }
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    if status == StatusCode::OK {
        match conditional::evaluate(&req.method, &req.headers, &etag, modified) {
            Precondition::Proceed => {}
            Precondition::NotModified => {
                *resp.status_mut() = StatusCode::NOT_MODIFIED;
                resp.headers_mut().remove(header::CONTENT_TYPE);
                return resp;
            }
            Precondition::Failed => {
                return plain(StatusCode::PRECONDITION_FAILED, "precondition failed");
            }
        }
    }
    let (start, end) = match (
        status,
        conditional::range(&req.headers, len, &etag, modified),
    ) {
        (StatusCode::OK, Range::Partial { start, end }) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            (start, end)
        }
        (StatusCode::OK, Range::Unsatisfiable) => {
            let mut r = plain(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
        _ => {
            *resp.status_mut() = status;
            (0, len.saturating_sub(1))
        }
    };
    let body_len = if len == 0 { 0 } else { end - start + 1 };
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    if req.method == Method::HEAD || body_len == 0 {
        return resp;
    }
    match obj.body(start, end).await {
        Ok(body) => {
            *resp.body_mut() = body;
            resp
        }
        Err(e) => {
            warn!(path = %rel, error = %e, "static content read failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "content could not be read",
            )
        }
    }
}

fn content_type(rel: &str) -> HeaderValue {
    let mime = mime_guess::from_path(rel).first_or_octet_stream();
    let text = mime.type_() == mime_guess::mime::TEXT
        || mime.essence_str() == "application/javascript"
        || mime.essence_str() == "application/json"
        || mime.essence_str() == "image/svg+xml";
    let value = if text && mime.get_param("charset").is_none() {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.to_string()
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

/// Maps a request path under `route_prefix` to a validated relative path.
/// Returns `None` for anything that could step outside the root: `..`,
/// `.`, empty segments, backslashes, NUL, or invalid UTF-8 once decoded.
pub fn relative_path(url_path: &str, route_prefix: &str, index: &str) -> Option<String> {
    let rest = if route_prefix == "/" {
        url_path
    } else {
        url_path.strip_prefix(route_prefix)?
    };
    let decoded = percent_decode_str(rest).decode_utf8().ok()?;
    let trimmed = decoded.trim_start_matches('/');
    let mut out = String::with_capacity(trimmed.len() + index.len());
    if trimmed.is_empty() || trimmed.ends_with('/') {
        out.push_str(trimmed);
        out.push_str(index);
    } else {
        out.push_str(trimmed);
    }
    for segment in out.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." || segment.contains(['\\', '\0'])
        {
            return None;
        }
        if segment.chars().any(char::is_control) {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, prefix: &str, expected: Option<&str>) {
        assert_eq!(
            relative_path(url, prefix, "index.html").as_deref(),
            expected,
            "{url}"
        );
    }

    #[test]
    fn maps_and_rejects_paths() {
        check("/", "/", Some("index.html"));
        check("/about.html", "/", Some("about.html"));
        check("/docs/", "/", Some("docs/index.html"));
        check("/css/site.css", "/", Some("css/site.css"));
        check("/static/a.css", "/static", Some("a.css"));
        check("/static", "/static", Some("index.html"));
        check("/a%20b.txt", "/", Some("a b.txt"));
        check("/../etc/passwd", "/", None);
        check("/a/../../etc/passwd", "/", None);
        check("/%2e%2e/etc/passwd", "/", None);
        check("/a%2f..%2f..%2fetc", "/", None);
        check("/a%5c..%5cetc", "/", None);
        check("/a%00b", "/", None);
        check("/a//b", "/", None);
        check("/./a", "/", None);
        check("/%ff", "/", None);
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("site.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("logo.svg"), "image/svg+xml; charset=utf-8");
        assert_eq!(content_type("x.png"), "image/png");
        assert_eq!(content_type("blob"), "application/octet-stream");
    }
}
