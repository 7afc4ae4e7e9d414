//! The per-request entry point: body limits, routing, dispatch to the
//! route's target, route response headers, access log and metrics.

use std::net::IpAddr;
use std::sync::Arc;

use cathedral_cache::{CacheStatus, Fwd};
use cathedral_config::UserIdSource;
use cathedral_wasm::{ClientInfo, RequestEnv};
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::info;

use crate::active::{RouteCtx, Target};
use crate::body::{Body, Observed, OnComplete};
use crate::cached;
use crate::client_addr;
use crate::conn::{ConnInfo, InFlight};
use crate::filters;
use crate::node::Shared;
use crate::proxy;
use crate::ratelimit;
use crate::responses::plain;
use crate::router::normalize_host;
use crate::static_files;

/// Facts about one request that the proxy and the access log share.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub client_ip: IpAddr,
    pub peer: std::net::SocketAddr,
    pub tls: bool,
    /// Lower-case, without port.
    pub host: String,
    /// The Host / :authority as the client sent it.
    pub authority: Option<HeaderValue>,
    /// The user id per the route's `user_id` source, derived once.
    pub user_id: Option<String>,
    /// ISO 3166-1 alpha-2 country from the configured trusted header.
    pub country: Option<String>,
}

pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let in_flight = conn.request_started();
    // The snapshot this request runs on, whatever reloads happen meanwhile.
    let active = shared.active.load_full();

    let authority = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| req.headers().get(header::HOST).cloned());
    let host = authority
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .map(normalize_host)
        .unwrap_or_default();
    let ctx = RequestCtx {
        client_ip: client_addr::client_ip(conn.peer.ip(), &shared.trusted_proxies, req.headers()),
        peer: conn.peer,
        tls: conn.tls,
        host,
        authority,
        user_id: None,
        country: None,
    };
    let mut ctx = ctx;
    let method = req.method().clone();
    // A cheap clone (shared bytes): the access log needs the path after
    // the request is gone.
    let uri = req.uri().clone();
    let path = uri.path();
    let version = req.version();

    let route = active.route(&ctx.host, path).cloned();
    // Only Wasm modules read the country: routes without them skip the
    // lookup.
    if route
        .as_ref()
        .is_some_and(|r| !r.filters.is_empty() || matches!(r.target, Target::Handler(_)))
    {
        ctx.country = country(&shared, conn.peer.ip(), ctx.client_ip, req.headers());
    }
    let (mut resp, upstream) = match &route {
        _ if version == Version::HTTP_11 && ctx.authority.is_none() => (
            plain(
                StatusCode::BAD_REQUEST,
                "HTTP/1.1 requests need a Host header",
            ),
            None,
        ),
        _ if declared_length(&req).is_some_and(|n| n > shared.limits.max_body_bytes) => (
            plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
            None,
        ),
        None => (
            plain(StatusCode::NOT_FOUND, "no route for this host and path"),
            None,
        ),
        Some(route) => {
            ctx.user_id = route
                .user_id
                .as_ref()
                .and_then(|src| user_id(src, req.headers()));
            let verdict = if route.rate_limits.is_empty() {
                ratelimit::Verdict::Allowed(Vec::new())
            } else {
                ratelimit::check(
                    &route.rate_limits,
                    &ratelimit::KeySource {
                        client_ip: ctx.client_ip,
                        headers: req.headers(),
                        user_id: ctx.user_id.as_deref(),
                        route: &route.name,
                    },
                )
            };
            match verdict {
                ratelimit::Verdict::Refused(resp) => (resp, None),
                ratelimit::Verdict::Allowed(extra) => {
                    let plain_route =
                        route.filters.is_empty() && !matches!(route.target, Target::Handler(_));
                    let (mut resp, upstream) = if plain_route {
                        dispatch(&shared, &ctx, route, req, None, false, &mut || {}).await
                    } else {
                        filtered(&shared, &ctx, route, req).await
                    };
                    for (name, value) in extra {
                        resp.headers_mut().append(name, value);
                    }
                    (resp, upstream)
                }
            }
        }
    };

    if let Some(route) = &route {
        for (name, value) in &route.response_headers {
            resp.headers_mut().insert(name.clone(), value.clone());
        }
    }

    let log = AccessLog {
        shared: shared.clone(),
        route: route.clone(),
        method,
        host: ctx.host,
        uri,
        version,
        status: resp.status().as_u16(),
        cache: cache_outcome(resp.headers()),
        upstream,
        client: ctx.client_ip,
        started,
        _in_flight: in_flight,
    };
    resp.map(|body| Observed::new(body, Box::new(log)).boxed_unsync())
}

/// Hands the request to the route's target. `no_store`: a request filter
/// said the response must not be stored, so the cache is bypassed.
/// `before_wait` runs before the target waits on an origin or a handler
/// (not for a cache hit or static content): it frees what the request
/// holds that others may need meanwhile (its filters' instances).
async fn dispatch(
    shared: &Arc<Shared>,
    ctx: &RequestCtx,
    route: &Arc<RouteCtx>,
    req: Request<Incoming>,
    env: Option<&RequestEnv>,
    no_store: bool,
    before_wait: &mut (dyn FnMut() + Send),
) -> (Response<Body>, Option<String>) {
    match &route.target {
        Target::Static(site) => {
            let (parts, _body) = req.into_parts();
            (
                static_files::serve(site, &parts, &route.path_prefix).await,
                None,
            )
        }
        Target::Upstream(up) => {
            let resp = match &route.cache {
                Some(policy) if !no_store => {
                    cached::serve(shared, ctx, route, up, policy, req, before_wait).await
                }
                Some(_) => {
                    before_wait();
                    let mut resp = proxy::forward(shared, ctx, route, up, req).await;
                    CacheStatus::forward(Fwd::Bypass)
                        .detail("no-store by filter")
                        .append_to(resp.headers_mut());
                    resp
                }
                None => {
                    before_wait();
                    proxy::forward(shared, ctx, route, up, req).await
                }
            };
            (resp, Some(up.name().to_owned()))
        }
        Target::Handler(handler) => {
            before_wait();
            let env = env
                .cloned()
                .unwrap_or_else(|| RequestEnv::new(client_info(shared, ctx)))
                .with_backends(handler.backends.clone());
            let resp = match handler.module.handle(req, &env).await {
                Ok(resp) => resp.map(|b| b.map_err(crate::BoxError::from).boxed_unsync()),
                // Counted and logged by the engine.
                Err(e) => plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "handler {} failed ({})",
                        handler.module.name(),
                        e.kind().as_str()
                    ),
                ),
            };
            (resp, None)
        }
    }
}

/// The client's country: from the configured header (believed only from a
/// trusted proxy, and only as two ASCII letters), else from the GeoIP
/// database by the client's address.
fn country(
    shared: &Shared,
    peer: std::net::IpAddr,
    client_ip: std::net::IpAddr,
    headers: &http::HeaderMap,
) -> Option<String> {
    let from_header = shared.country_header.as_ref().and_then(|name| {
        if !client_addr::is_trusted(peer.to_canonical(), &shared.trusted_proxies) {
            return None;
        }
        let value = headers.get(name)?.to_str().ok()?.trim();
        (value.len() == 2 && value.bytes().all(|b| b.is_ascii_alphabetic()))
            .then(|| value.to_ascii_uppercase())
    });
    from_header.or_else(|| shared.geoip.load().as_ref()?.country(client_ip))
}

/// What Wasm modules learn about the client.
fn client_info(shared: &Shared, ctx: &RequestCtx) -> ClientInfo {
    ClientInfo {
        ip: ctx.client_ip,
        country: ctx.country.clone(),
        region: shared.region_id.clone(),
        user_id: ctx.user_id.clone(),
    }
}

/// A route with Wasm filters or a handler: request filters, the target,
/// response filters; when a filter may read the body, conditionals and
/// ranges are answered after the filters, on the final representation.
async fn filtered(
    shared: &Arc<Shared>,
    ctx: &RequestCtx,
    route: &Arc<RouteCtx>,
    req: Request<Incoming>,
) -> (Response<Body>, Option<String>) {
    let env = RequestEnv::new(client_info(shared, ctx));
    let scheme = if ctx.tls { "https" } else { "http" };
    let authority = ctx
        .authority
        .as_ref()
        .and_then(|a| a.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let (mut parts, body) = req.into_parts();
    let mut chain = filters::Chain::new(&route.filters, &env);
    let no_store = match chain.on_request(&mut parts, scheme, &authority).await {
        filters::RequestOutcome::Respond(resp) => return (resp, None),
        filters::RequestOutcome::Continue { no_store } => no_store,
    };
    if chain.is_empty() {
        return dispatch(
            shared,
            ctx,
            route,
            Request::from_parts(parts, body),
            Some(&env),
            no_store,
            &mut || {},
        )
        .await;
    }
    // Filters that read bodies get the whole, identity-encoded
    // representation; the client's validators and range apply afterwards.
    let max_body = route
        .filters
        .iter()
        .filter(|f| f.response_body)
        .map(|f| f.max_body_bytes)
        .max();
    let client_conditionals = max_body.map(|_| take_conditionals(&mut parts.headers));
    let seen = parts.clone();
    let (resp, upstream) = dispatch(
        shared,
        ctx,
        route,
        Request::from_parts(parts, body),
        Some(&env),
        no_store,
        &mut || chain.release(),
    )
    .await;
    let (resp, _) = chain.on_response(&seen, scheme, &authority, resp).await;
    let resp = match (client_conditionals, max_body) {
        (Some(conditionals), Some(limit)) => {
            answer_conditionals(resp, &seen.method, &conditionals, limit).await
        }
        _ => resp,
    };
    (resp, upstream)
}

/// Removes (and returns) the fields the node answers itself after body
/// filters: validators, `Range`, and `Accept-Encoding` (so the body a filter
/// reads is not compressed).
fn take_conditionals(headers: &mut http::HeaderMap) -> http::HeaderMap {
    let mut taken = http::HeaderMap::new();
    for name in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_RANGE,
        header::RANGE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
    ] {
        for v in headers.get_all(&name) {
            taken.append(name.clone(), v.clone());
        }
        headers.remove(&name);
    }
    headers.remove(header::ACCEPT_ENCODING);
    taken
}

/// Applies the client's conditionals and single range to a complete 200
/// response of at most `limit` bytes; anything else passes unchanged (a full
/// 200 is always a correct answer).
async fn answer_conditionals(
    resp: Response<Body>,
    method: &http::Method,
    conditionals: &http::HeaderMap,
    limit: u64,
) -> Response<Body> {
    use http_body::Body as _;
    let small = resp.body().size_hint().exact().is_some_and(|n| n <= limit);
    if conditionals.is_empty() || resp.status() != StatusCode::OK || !small {
        return resp;
    }
    let (head, body) = resp.into_parts();
    let Ok(collected) = body.collect().await else {
        return plain(StatusCode::BAD_GATEWAY, "response body failed");
    };
    let served = cathedral_cache::serve::respond(
        method,
        conditionals,
        head.status,
        head.headers,
        collected.to_bytes(),
    );
    let mut out = Response::new(crate::body::full(served.body));
    *out.status_mut() = served.status;
    *out.headers_mut() = served.headers;
    out
}

/// The user id from the route's cookie or header, if present and sane.
fn user_id(source: &UserIdSource, headers: &http::HeaderMap) -> Option<String> {
    let raw = match source {
        UserIdSource::Cookie(name) => ratelimit::cookie(headers, name)?,
        UserIdSource::Header(name) => headers.get(name)?.to_str().ok()?,
    };
    let raw = raw.trim();
    (!raw.is_empty() && raw.len() <= 256).then(|| raw.to_owned())
}

fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
}

/// Written when the response body is done: one access-log line and the
/// request metrics.
struct AccessLog {
    shared: Arc<Shared>,
    route: Option<Arc<RouteCtx>>,
    method: http::Method,
    host: String,
    uri: http::Uri,
    version: Version,
    status: u16,
    /// `hit`, or why the request went forward (`uri-miss`, `stale`, ...);
    /// `-` on routes without a cache.
    cache: &'static str,
    upstream: Option<String>,
    client: IpAddr,
    started: Instant,
    _in_flight: InFlight,
}

impl OnComplete for AccessLog {
    fn complete(self: Box<Self>, bytes: u64, clean: bool) {
        let elapsed = self.started.elapsed();
        let route = self.route.as_ref().map(|r| r.name.as_str()).unwrap_or("-");
        let metrics = self
            .route
            .as_ref()
            .map(|r| &r.metrics)
            .unwrap_or(&self.shared.unrouted);
        metrics.count(self.status);
        metrics.duration.observe(elapsed.as_secs_f64());
        info!(
            target: "cathedral::access",
            client = %self.client,
            method = %self.method,
            host = %self.host,
            path = %self.uri.path(),
            proto = ?self.version,
            status = self.status,
            bytes,
            complete = clean,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            route,
            cache = self.cache,
            upstream = self.upstream.as_deref().unwrap_or("-"),
            region = %self.shared.region,
            "request"
        );
    }
}

/// The access log's short form of this node's `Cache-Status` member.
fn cache_outcome(headers: &http::HeaderMap) -> &'static str {
    let Some(value) = headers
        .get_all("cache-status")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(cathedral_cache::CACHE_NAME))
    else {
        return "-";
    };
    let params = || value.split(';').map(str::trim);
    if params().any(|p| p == "hit") {
        return "hit";
    }
    match params().find_map(|p| p.strip_prefix("fwd=")) {
        Some("uri-miss") => "uri-miss",
        Some("vary-miss") => "vary-miss",
        Some("miss") => "miss",
        Some("stale") => "stale",
        Some("request") => "request",
        Some("bypass") => "bypass",
        Some("method") => "method",
        _ => "other",
    }
}
