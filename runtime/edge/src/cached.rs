//! The shared cache on the request path of upstream routes: lookup, a
//! coalesced fetch and store on a miss, revalidation, stale serving
//! (`stale-while-revalidate`, `stale-if-error`), invalidation after unsafe
//! methods, and the `Cache-Status` field on every answer.
//!
//! The RFC 9111 decisions live in `cathedral-cache`; this file moves bytes
//! between it, the client and the upstream.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use cathedral_cache::{
    CacheRequest, CacheStatus, Entry, Hit, Joined, Lookup, RefreshGuard, Revalidated, RoutePolicy,
    StoreOutcome, Timing, serve, strip_for_client,
};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use tracing::{debug, warn};

use crate::active::RouteCtx;
use crate::body::{Body, Prefixed, full};
use crate::node::Shared;
use crate::proxy::{self, Failure, Upstreamed};
use crate::responses::plain;
use crate::service::RequestCtx;
use crate::upstream::UpstreamClient;

/// Everything a cached exchange needs, owned so a background refresh can
/// outlive the request that started it.
#[derive(Clone)]
struct Exchange {
    shared: Arc<Shared>,
    ctx: RequestCtx,
    route: Arc<RouteCtx>,
    upstream: Arc<UpstreamClient>,
    policy: Arc<RoutePolicy>,
}

/// Serves `req` through the cache. `before_wait` runs once the answer is
/// known not to be a stored response served at once (a miss, a
/// revalidation, a bypass, an upgrade): before any origin wait.
pub async fn serve(
    shared: &Arc<Shared>,
    ctx: &RequestCtx,
    route: &Arc<RouteCtx>,
    upstream: &Arc<UpstreamClient>,
    policy: &Arc<RoutePolicy>,
    req: Request<hyper::body::Incoming>,
    before_wait: &mut (dyn FnMut() + Send),
) -> Response<Body> {
    // Upgrades (WebSockets) are connections, not representations.
    if proxy::upgrade_protocol(&req).is_some() {
        before_wait();
        return proxy::forward(shared, ctx, route, upstream, req).await;
    }
    let x = Exchange {
        shared: shared.clone(),
        ctx: ctx.clone(),
        route: route.clone(),
        upstream: upstream.clone(),
        policy: policy.clone(),
    };
    let (parts, body) = req.into_parts();
    let lookup = {
        let creq = CacheRequest::new(&parts, ctx.tls);
        shared.cache.lookup(&creq, policy)
    };
    let status = CacheStatus::from_lookup(&lookup);
    if !matches!(lookup, Lookup::Hit(_) | Lookup::Stale { .. }) {
        before_wait();
    }
    match lookup {
        Lookup::Hit(hit) => x.serve_hit(&hit, &parts, status),
        Lookup::Stale { hit, refresh } => {
            if let Some(guard) = refresh {
                let refresher = x.clone();
                let parts = parts.clone();
                tokio::spawn(async move { refresher.refresh(parts, guard).await });
            }
            x.serve_hit(&hit, &parts, status)
        }
        Lookup::Revalidate { hit, conditional } => {
            x.revalidate(&parts, hit, conditional, status).await
        }
        Lookup::Miss(_) => x.miss(&parts, status).await,
        Lookup::OnlyIfCachedMiss => {
            let mut resp = plain(StatusCode::GATEWAY_TIMEOUT, "not in cache (only-if-cached)");
            status.append_to(resp.headers_mut());
            resp
        }
        Lookup::Bypass(_) => x.bypass(parts, body, status).await,
    }
}

impl Exchange {
    /// Answers from a stored response: conditionals, a single range and
    /// HEAD handled, internal fields stripped, `Age` set.
    fn serve_hit(&self, hit: &Hit, parts: &Parts, status: CacheStatus) -> Response<Body> {
        let creq = CacheRequest::new(parts, self.ctx.tls);
        let served = hit.respond(&creq);
        self.answer(served, status)
    }

    fn answer(&self, served: serve::Served, status: CacheStatus) -> Response<Body> {
        let mut resp = Response::new(full(served.body));
        *resp.status_mut() = served.status;
        *resp.headers_mut() = served.headers;
        strip_for_client(resp.headers_mut(), &self.policy);
        status.append_to(resp.headers_mut());
        resp
    }

    /// A miss: one fetch per key at a time; the others wait for it.
    async fn miss(&self, parts: &Parts, status: CacheStatus) -> Response<Body> {
        let key = (parts.method == Method::GET)
            .then(|| {
                self.shared
                    .cache
                    .key(&CacheRequest::new(parts, self.ctx.tls), &self.policy)
            })
            .flatten();
        let Some(key) = key else {
            return self.fetch_and_store(parts, status).await.0;
        };
        match self.shared.coalescer.join(&key).await {
            Joined::Leader(guard) => {
                let (resp, stored) = self.fetch_and_store(parts, status).await;
                match stored {
                    Some(entry) => guard.publish_stored(entry),
                    None => guard.publish_uncacheable(),
                }
                resp
            }
            Joined::Collapsed(entry) => {
                let creq = CacheRequest::new(parts, self.ctx.tls);
                match self.shared.cache.collapsed_hit(&creq, &entry, &self.policy) {
                    Some(hit) => {
                        let status = CacheStatus::from_lookup(&Lookup::Hit(hit.clone()));
                        self.serve_hit(&hit, parts, status)
                    }
                    None => self.fetch_and_store(parts, status).await.0,
                }
            }
            Joined::Alone(_) => self.fetch_and_store(parts, status).await.0,
        }
    }

    /// Fetches a whole representation (client conditionals and Range are
    /// answered here, not upstream) and stores it when it may be stored.
    async fn fetch_and_store(
        &self,
        parts: &Parts,
        status: CacheStatus,
    ) -> (Response<Body>, Option<Arc<Entry>>) {
        match self.fetch(parts, None).await {
            Ok((resp, timing)) => self.store_and_answer(parts, resp, timing, status).await,
            Err(failure) => (with_status(failure.response, status), None),
        }
    }

    /// Sends the client's request upstream as a cache fill: `GET` (or `HEAD`)
    /// without a body, client validators replaced by `conditional`.
    async fn fetch(
        &self,
        client: &Parts,
        conditional: Option<&HeaderMap>,
    ) -> Result<(Upstreamed, Timing), Failure> {
        let mut parts = client.clone();
        parts.headers = serve::upstream_headers(&client.headers, conditional);
        parts.headers.remove(http::header::CONTENT_LENGTH);
        proxy::prepare(&self.ctx, &self.route, &self.upstream, &mut parts).map_err(|response| {
            Failure {
                response: *response,
            }
        })?;
        let request_time = self.shared.cache.now();
        let resp = proxy::send(&self.shared, &self.upstream, parts, Empty::<Bytes>::new()).await?;
        let response_time = self.shared.cache.now();
        Ok((
            resp,
            Timing {
                request_time,
                response_time,
            },
        ))
    }

    async fn store_and_answer(
        &self,
        parts: &Parts,
        resp: Upstreamed,
        timing: Timing,
        status: CacheStatus,
    ) -> (Response<Body>, Option<Arc<Entry>>) {
        let upstream_status = resp.status();
        let status = status.fwd_status(upstream_status);
        let creq = CacheRequest::new(parts, self.ctx.tls);
        let storable = parts.method == Method::GET
            && self
                .shared
                .cache
                .precheck(
                    &creq,
                    upstream_status,
                    resp.response.headers(),
                    &self.policy,
                )
                .is_ok();
        if !storable {
            let mut out = resp.streamed();
            strip_for_client(out.headers_mut(), &self.policy);
            status.append_to(out.headers_mut());
            return (out, None);
        }
        let limit = self.shared.cache.config().max_object_bytes;
        let (head, body) = match buffer(resp, limit).await {
            Ok(Buffered::Complete(head, body)) => (head, body),
            Ok(Buffered::TooLarge(mut out)) => {
                strip_for_client(out.headers_mut(), &self.policy);
                status.append_to(out.headers_mut());
                return (out, None);
            }
            Err(e) => {
                warn!(upstream = %self.upstream.name(), error = %e, "upstream body failed while filling the cache");
                self.shared
                    .metrics
                    .upstream_error(self.upstream.name(), "body");
                let out = plain(StatusCode::BAD_GATEWAY, "upstream response failed");
                return (with_status(out, status), None);
            }
        };
        let outcome = self.shared.cache.store(
            &creq,
            head.status,
            &head.headers,
            body.clone(),
            timing,
            &self.policy,
        );
        let entry = match outcome {
            StoreOutcome::Stored(entry) => Some(entry),
            StoreOutcome::NotStored(reason) => {
                debug!(?reason, "response not stored");
                None
            }
        };
        let mut status = status.stored(entry.is_some());
        if let Some(e) = &entry {
            status = status.ttl(e.ttl_secs(self.shared.cache.now()));
        }
        // This client gets the response as the origin sent it (its
        // Set-Cookie included), with its own conditionals and range applied.
        let served = serve::respond(
            &parts.method,
            &parts.headers,
            head.status,
            head.headers,
            body,
        );
        (self.answer(served, status), entry)
    }

    /// A stale entry that must be validated before use.
    async fn revalidate(
        &self,
        parts: &Parts,
        hit: Hit,
        conditional: HeaderMap,
        status: CacheStatus,
    ) -> Response<Body> {
        match self.fetch(parts, Some(&conditional)).await {
            Err(failure) => {
                if self.shared.cache.serve_stale_on_error(&hit, None) {
                    return self.serve_hit(&hit, parts, status.detail("stale-if-error"));
                }
                with_status(failure.response, status)
            }
            Ok((resp, timing)) if resp.status() == StatusCode::NOT_MODIFIED => {
                let headers = resp.response.headers().clone();
                let status = status.fwd_status(StatusCode::NOT_MODIFIED);
                match self
                    .shared
                    .cache
                    .revalidated(hit.entry(), &headers, timing, &self.policy)
                {
                    Revalidated::Stored(fresh) => {
                        self.serve_hit(&fresh, parts, status.stored(true))
                    }
                    Revalidated::NotStored { hit, .. } => self.serve_hit(&hit, parts, status),
                    Revalidated::Mismatch => self.fetch_and_store(parts, status).await.0,
                }
            }
            Ok((resp, _))
                if self
                    .shared
                    .cache
                    .serve_stale_on_error(&hit, Some(resp.status())) =>
            {
                let status = status.fwd_status(resp.status()).detail("stale-if-error");
                self.serve_hit(&hit, parts, status)
            }
            Ok((resp, timing)) => self.store_and_answer(parts, resp, timing, status).await.0,
        }
    }

    /// `stale-while-revalidate`: refreshes one entry in the background while
    /// the stale copy is served. Holding `guard` keeps others from doing the
    /// same; it is released when this returns.
    async fn refresh(self, client: Parts, guard: RefreshGuard) {
        let conditional = guard.conditional_headers();
        let (resp, timing) = match self.fetch(&client, Some(&conditional)).await {
            Ok(x) => x,
            Err(_) => {
                debug!(upstream = %self.upstream.name(), "background refresh failed; the stale copy stays");
                return;
            }
        };
        if resp.status() == StatusCode::NOT_MODIFIED {
            let headers = resp.response.headers().clone();
            let _ = self
                .shared
                .cache
                .revalidated(guard.entry(), &headers, timing, &self.policy);
        } else if !resp.status().is_server_error() {
            let _ = self
                .store_and_answer(&client, resp, timing, CacheStatus::default())
                .await;
        }
        drop(guard);
    }

    /// Methods the cache does not serve: forwarded with their body; a
    /// successful unsafe method invalidates what it changed.
    async fn bypass(
        &self,
        mut parts: Parts,
        body: hyper::body::Incoming,
        status: CacheStatus,
    ) -> Response<Body> {
        let unsafe_method = !matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        let original = unsafe_method.then(|| parts.clone());
        if let Err(resp) = proxy::prepare(&self.ctx, &self.route, &self.upstream, &mut parts) {
            return *resp;
        }
        match proxy::send(&self.shared, &self.upstream, parts, body).await {
            Ok(resp) => {
                if let Some(original) = original {
                    let creq = CacheRequest::new(&original, self.ctx.tls);
                    self.shared.cache.invalidate_after_unsafe(
                        &creq,
                        resp.status(),
                        resp.response.headers(),
                        &self.policy,
                    );
                }
                let status = status.fwd_status(resp.status());
                let mut out = resp.streamed();
                strip_for_client(out.headers_mut(), &self.policy);
                status.append_to(out.headers_mut());
                out
            }
            Err(failure) => with_status(failure.response, status),
        }
    }
}

fn with_status(mut resp: Response<Body>, status: CacheStatus) -> Response<Body> {
    status.append_to(resp.headers_mut());
    resp
}

enum Buffered {
    Complete(http::response::Parts, Bytes),
    /// Over the object limit: streams on (what was read, then the rest).
    TooLarge(Response<Body>),
}

/// Reads an upstream body whole, up to `limit` bytes.
async fn buffer(resp: Upstreamed, limit: u64) -> Result<Buffered, crate::BoxError> {
    let streamed = resp.streamed();
    let (head, mut body) = streamed.into_parts();
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() as u64 > limit {
                let rest = Prefixed::new(buf.freeze(), body).boxed_unsync();
                return Ok(Buffered::TooLarge(Response::from_parts(head, rest)));
            }
        }
    }
    Ok(Buffered::Complete(head, buf.freeze()))
}
