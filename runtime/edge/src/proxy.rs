//! Forwarding a request to an upstream: hop-by-hop headers removed both
//! ways, `Via`, `X-Forwarded-*` and `Forwarded` appended, `Host` preserved or
//! rewritten, bodies streamed both ways, WebSocket upgrades tunnelled, and
//! failures mapped to 502 / 504 / 413.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cathedral_config::HostHeader;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::active::RouteCtx;
use crate::body::{Body, Deadline, Limited};
use crate::client_addr::forwarded_node;
use crate::node::Shared;
use crate::responses::plain;
use crate::service::RequestCtx;
use crate::upstream::{UpstreamClient, UpstreamError};

/// Connection-specific fields (RFC 9110 §7.6.1) plus the legacy ones.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub async fn forward(
    shared: &Shared,
    ctx: &RequestCtx,
    route: &RouteCtx,
    upstream: &Arc<UpstreamClient>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let upgrade = upgrade_protocol(&req);
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    if let Err(resp) = prepare(ctx, route, upstream, &mut parts) {
        return *resp;
    }
    if let Some(proto) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, proto.clone());
    }
    let resp = match send(shared, upstream, parts, body).await {
        Ok(resp) => resp,
        Err(failure) => return failure.response,
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return match client_upgrade {
            Some(client_upgrade) => {
                tunnel(resp.response, client_upgrade, upstream.name().to_owned())
            }
            None => {
                warn!(upstream = %upstream.name(), "upstream switched protocols without being asked");
                shared.metrics.upstream_error(upstream.name(), "protocol");
                plain(
                    StatusCode::BAD_GATEWAY,
                    "upstream answered 101 to a request that asked for no upgrade",
                )
            }
        };
    }
    resp.streamed()
}

/// Rewrites a client request head for the upstream: hop-by-hop fields
/// removed, `Via` and the forwarding fields appended, the authority per the
/// route's `host_header`, the URI and version for the upstream's protocol.
pub fn prepare(
    ctx: &RequestCtx,
    route: &RouteCtx,
    upstream: &UpstreamClient,
    parts: &mut http::request::Parts,
) -> Result<(), Box<Response<Body>>> {
    let client_version = parts.version;
    strip_hop_by_hop(&mut parts.headers);
    append_via(&mut parts.headers, client_version);
    append_forwarded(&mut parts.headers, ctx);

    // The authority the upstream sees: in the URI (h2 `:authority`) and,
    // for HTTP/1.1, in `Host`. Where the connection goes is the upstream's
    // business (see `TargetConnector`).
    let host_value = match &route.host_header {
        HostHeader::Preserve => ctx.authority.clone(),
        HostHeader::Upstream => HeaderValue::from_str(upstream.primary_target()).ok(),
        HostHeader::Fixed(h) => HeaderValue::from_str(h).ok(),
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let authority = host_value
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<http::uri::Authority>().ok())
        .unwrap_or_else(|| {
            upstream
                .primary_target()
                .parse()
                .unwrap_or_else(|_| http::uri::Authority::from_static("upstream.invalid"))
        });
    parts.uri = match Uri::builder()
        .scheme(upstream.scheme())
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
    {
        Ok(uri) => uri,
        Err(e) => {
            warn!(upstream = %upstream.name(), error = %e, "cannot build upstream URI");
            return Err(Box::new(plain(
                StatusCode::BAD_GATEWAY,
                "upstream address is invalid",
            )));
        }
    };
    parts.version = match upstream.config.protocol {
        cathedral_config::UpstreamProtocol::Http1 => Version::HTTP_11,
        cathedral_config::UpstreamProtocol::Http2 => Version::HTTP_2,
    };
    match host_value {
        Some(v) if parts.version == Version::HTTP_11 => {
            parts.headers.insert(header::HOST, v);
        }
        _ => {
            parts.headers.remove(header::HOST);
        }
    }
    Ok(())
}

/// An upstream response head, hop-by-hop fields already removed and `Via`
/// appended, with the deadline its body must meet.
#[derive(Debug)]
pub struct Upstreamed {
    pub response: Response<Incoming>,
    deadline: Instant,
    timeout: std::time::Duration,
}

impl Upstreamed {
    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// The response with its body streamed to the client under the
    /// upstream's total timeout.
    pub fn streamed(self) -> Response<Body> {
        let (deadline, timeout) = (self.deadline, self.timeout);
        self.response
            .map(|b| Deadline::new(b, deadline, timeout).boxed_unsync())
    }
}

/// Why no upstream response: the answer to give the client instead.
#[derive(Debug)]
pub struct Failure {
    pub response: Response<Body>,
}

/// Sends a prepared request; maps failures to 502 / 504 / 413 with a log
/// line and a metric.
pub async fn send<B>(
    shared: &Shared,
    upstream: &UpstreamClient,
    parts: http::request::Parts,
    body: B,
) -> Result<Upstreamed, Failure>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::BoxError>,
{
    let body_too_large = Arc::new(AtomicBool::new(false));
    let body: Body =
        Limited::new(body, shared.limits.max_body_bytes, body_too_large.clone()).boxed_unsync();
    let timeout = upstream.config.total_timeout;
    let deadline = Instant::now() + timeout;
    let mut resp = match upstream.send(Request::from_parts(parts, body)).await {
        Ok(resp) => resp,
        Err(_) if body_too_large.load(Ordering::Relaxed) => {
            return Err(Failure {
                response: plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
            });
        }
        Err(e) => {
            return Err(Failure {
                response: upstream_failure(shared, upstream, &e),
            });
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        strip_hop_by_hop(resp.headers_mut());
        let version = resp.version();
        append_via(resp.headers_mut(), version);
    }
    Ok(Upstreamed {
        response: resp,
        deadline,
        timeout,
    })
}

fn upstream_failure(
    shared: &Shared,
    upstream: &UpstreamClient,
    e: &UpstreamError,
) -> Response<Body> {
    let (status, kind, detail) = match e {
        UpstreamError::Connect { .. } => (
            StatusCode::BAD_GATEWAY,
            "connect",
            "upstream connection failed",
        ),
        UpstreamError::FirstByteTimeout { .. } => {
            (StatusCode::GATEWAY_TIMEOUT, "timeout", "upstream timed out")
        }
        UpstreamError::Protocol { .. } => (
            StatusCode::BAD_GATEWAY,
            "protocol",
            "upstream exchange failed",
        ),
    };
    warn!(upstream = %upstream.name(), kind, error = %e, "upstream request failed");
    shared.metrics.upstream_error(upstream.name(), kind);
    plain(status, detail)
}

/// Splices the client and upstream connections once both sides upgraded.
fn tunnel(
    mut upstream_resp: Response<Incoming>,
    client: hyper::upgrade::OnUpgrade,
    upstream: String,
) -> Response<Body> {
    let upstream_upgrade = hyper::upgrade::on(&mut upstream_resp);
    tokio::spawn(async move {
        let (client_io, upstream_io) = match tokio::try_join!(client, upstream_upgrade) {
            Ok(pair) => pair,
            Err(e) => {
                debug!(upstream = %upstream, error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client_io = TokioIo::new(client_io);
        let mut upstream_io = TokioIo::new(upstream_io);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await {
            debug!(upstream = %upstream, error = %e, "tunnel closed with an error");
        }
    });
    let (mut parts, _) = upstream_resp.into_parts();
    // Keep the upgrade handshake fields; drop the other hop-by-hop ones.
    let upgrade = parts.headers.remove(header::UPGRADE);
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(u) = upgrade {
        parts.headers.insert(header::UPGRADE, u);
    }
    append_via(&mut parts.headers, Version::HTTP_11);
    Response::from_parts(parts, crate::body::empty())
}

/// The protocol an HTTP/1.1 client asks to upgrade to, if it does.
pub fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    req.headers().get(header::UPGRADE).cloned()
}

/// Removes hop-by-hop fields, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        if name == header::TE {
            // "TE: trailers" may pass (RFC 9110 §10.1.4); nothing else.
            let keep = headers
                .get(header::TE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("trailers"));
            if !keep {
                headers.remove(header::TE);
            }
            continue;
        }
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

fn append_via(headers: &mut HeaderMap, version: Version) {
    let proto = match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    };
    let ours = HeaderValue::from_static(match proto {
        "0.9" => "0.9 cathedral",
        "1.0" => "1.0 cathedral",
        "2" => "2 cathedral",
        "3" => "3 cathedral",
        _ => "1.1 cathedral",
    });
    headers.append(header::VIA, ours);
}

fn append_forwarded(headers: &mut HeaderMap, ctx: &RequestCtx) {
    let peer_ip = ctx.peer.ip().to_canonical();
    let peer = peer_ip.to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {peer}"),
        _ => peer,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    let proto = if ctx.tls { "https" } else { "http" };
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    let mut element = format!("for={};proto={proto}", forwarded_node(peer_ip));
    if let Some(host) = ctx.authority.as_ref().and_then(|h| h.to_str().ok())
        && host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        element.push_str(";host=\"");
        element.push_str(host);
        element.push('"');
    }
    if let Ok(v) = HeaderValue::from_str(&element) {
        headers.append(header::FORWARDED, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert!(h.contains_key(header::TE));
    }

    #[test]
    fn via_is_appended() {
        let mut h = HeaderMap::new();
        h.insert(header::VIA, HeaderValue::from_static("1.1 lb"));
        append_via(&mut h, Version::HTTP_2);
        let all: Vec<_> = h.get_all(header::VIA).iter().collect();
        assert_eq!(all, vec!["1.1 lb", "2 cathedral"]);
    }
}
