//! Wasm filter chains on a route: `on-request` in order before the cache
//! lookup (a filter may edit the request, answer it, or mark it not to be
//! stored), `on-response` in reverse order after it, so one generic cached
//! copy is personalised per user. Each filter's `fail` policy decides what a
//! trap, timeout or out-of-memory does. A [`Chain`] holds one
//! [`FilterInstance`] per filter for the request: a cache hit runs both
//! hooks of a filter in one instance; before an origin fetch the node
//! releases them.

use bytes::{Bytes, BytesMut};
use cathedral_config::FailPolicy;
use cathedral_wasm::{
    FilterInstance, Module, RequestAction, RequestEnv, RequestHead, ResponseAction, ResponseParts,
};
use http::request::Parts;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use tracing::warn;

use crate::body::{Body, Prefixed, full};
use crate::responses::plain;

/// One filter as a route uses it.
#[derive(Clone)]
pub struct RouteFilter {
    pub module: Module,
    pub fail: FailPolicy,
    pub response_body: bool,
    pub max_body_bytes: u64,
}

impl std::fmt::Debug for RouteFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteFilter")
            .field("module", &self.module.name())
            .field("fail", &self.fail)
            .field("response_body", &self.response_body)
            .finish()
    }
}

/// What the request filters decided.
#[derive(Debug)]
pub enum RequestOutcome {
    /// Go on to the target; `no_store` when a filter said the response must
    /// not be stored.
    Continue { no_store: bool },
    /// A filter answered (or failed closed).
    Respond(Response<Body>),
}

fn failed_closed(module: &str) -> Response<Body> {
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("module {module} failed; the route fails closed"),
    )
}

/// A route's filters for one request: one [`FilterInstance`] each.
pub struct Chain<'a> {
    filters: &'a [RouteFilter],
    instances: Vec<FilterInstance>,
}

impl<'a> Chain<'a> {
    /// The hooks of `filters` for the request `env` describes. Makes no
    /// instance yet.
    pub fn new(filters: &'a [RouteFilter], env: &RequestEnv) -> Self {
        Self {
            filters,
            instances: filters
                .iter()
                .map(|f| FilterInstance::new(&f.module, env))
                .collect(),
        }
    }

    /// Whether the route has no filters.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Frees every instance the chain holds (and its pool slot): before
    /// the request waits on an origin or a handler.
    pub fn release(&mut self) {
        self.instances.iter_mut().for_each(FilterInstance::release);
    }

    /// Runs every filter's `on-request`, in order, on `parts`.
    pub async fn on_request(
        &mut self,
        parts: &mut Parts,
        scheme: &str,
        authority: &str,
    ) -> RequestOutcome {
        let mut no_store = false;
        for (f, instance) in self.filters.iter().zip(&mut self.instances) {
            let action = instance
                .on_request(RequestHead::new(parts, scheme, authority))
                .await;
            match action {
                Ok(RequestAction::Continue) => {}
                Ok(RequestAction::Edit(edit)) => {
                    edit.apply(parts);
                    no_store |= edit.no_store;
                }
                Ok(RequestAction::Respond(resp)) => {
                    return RequestOutcome::Respond(resp.map(full));
                }
                // The engine has counted and logged the failure.
                Err(_) if f.fail == FailPolicy::Open => {}
                Err(_) => return RequestOutcome::Respond(failed_closed(f.module.name())),
            }
        }
        RequestOutcome::Continue { no_store }
    }

    /// Runs every filter's `on-response`, in reverse order. Filters that
    /// asked for the body get it whole (up to their limit); a body over the
    /// limit follows the filter's `fail` policy. Returns the final response
    /// and whether a filter replaced the body.
    pub async fn on_response(
        &mut self,
        request: &Parts,
        scheme: &str,
        authority: &str,
        resp: Response<Body>,
    ) -> (Response<Body>, bool) {
        let filters = self.filters;
        let (mut head, body) = resp.into_parts();
        let mut body = Pending::Streaming(body);
        let mut replaced = false;
        for (f, instance) in filters.iter().zip(&mut self.instances).rev() {
            let bytes = if f.response_body {
                match body.buffer(f.max_body_bytes).await {
                    Ok(b) => Some(b),
                    Err(Buffering::TooLarge(rest)) => {
                        body = Pending::Streaming(rest);
                        warn!(module = %f.module.name(), limit = f.max_body_bytes, "response body over the filter's limit");
                        if f.fail == FailPolicy::Open {
                            continue;
                        }
                        return (failed_closed(f.module.name()), false);
                    }
                    Err(Buffering::Failed(e)) => {
                        warn!(module = %f.module.name(), error = %e, "response body failed before the filter");
                        return (
                            plain(StatusCode::BAD_GATEWAY, "upstream response failed"),
                            false,
                        );
                    }
                }
            } else {
                None
            };
            let parts = ResponseParts {
                status: head.status,
                headers: &head.headers,
                body: bytes.as_deref(),
            };
            match instance
                .on_response(RequestHead::new(request, scheme, authority), parts)
                .await
            {
                Ok(ResponseAction::Pass) => {}
                Ok(ResponseAction::Edit(edit)) => {
                    edit.apply(&mut head);
                    if let Some(new) = edit.body {
                        body = Pending::Whole(new);
                        replaced = true;
                    }
                }
                Err(_) if f.fail == FailPolicy::Open => {}
                Err(_) => return (failed_closed(f.module.name()), false),
            }
        }
        if request.method == http::Method::HEAD && filters.iter().any(|f| f.response_body) {
            // A HEAD carries no body for the filters to edit, but the GET they
            // stand for may be edited: the length of the unedited body would
            // be wrong, and the real one is unknown without rendering it.
            head.headers.remove(header::CONTENT_LENGTH);
        }
        if replaced {
            // The representation changed: its length, encoding and ranges no
            // longer hold, and a strong validator would lie.
            for name in [
                header::CONTENT_LENGTH,
                header::CONTENT_ENCODING,
                header::CONTENT_RANGE,
            ] {
                head.headers.remove(name);
            }
            if let Some(etag) = head.headers.get(header::ETAG).and_then(|v| v.to_str().ok())
                && !etag.starts_with("W/")
                && let Ok(weak) = HeaderValue::from_str(&format!("W/{etag}"))
            {
                head.headers.insert(header::ETAG, weak);
            }
        }
        (Response::from_parts(head, body.into_body()), replaced)
    }
}

/// A response body that filters may have read whole.
enum Pending {
    Streaming(Body),
    Whole(Bytes),
}

enum Buffering {
    /// Over the limit: what was read, then the rest.
    TooLarge(Body),
    Failed(crate::BoxError),
}

impl Pending {
    async fn buffer(&mut self, limit: u64) -> Result<Bytes, Buffering> {
        let streaming = match std::mem::replace(self, Pending::Whole(Bytes::new())) {
            Pending::Whole(b) => {
                *self = Pending::Whole(b.clone());
                return Ok(b);
            }
            Pending::Streaming(s) => s,
        };
        let mut body = streaming;
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(Buffering::Failed)?;
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                if buf.len() as u64 > limit {
                    return Err(Buffering::TooLarge(
                        Prefixed::new(buf.freeze(), body).boxed_unsync(),
                    ));
                }
            }
        }
        let whole = buf.freeze();
        *self = Pending::Whole(whole.clone());
        Ok(whole)
    }

    fn into_body(self) -> Body {
        match self {
            Pending::Streaming(b) => b,
            Pending::Whole(b) => full(b),
        }
    }
}
