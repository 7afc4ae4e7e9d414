//! The admin API, on its own listener and never on the public ones:
//! `/metrics`, `/healthz`, `/readyz`, `POST /reload`, `POST /purge` and, in
//! bundle mode, `GET /bundles`, `POST /bundles/notify` and
//! `POST /bundles/previous` — behind a bearer token when one is configured.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, warn};

use crate::body::{Body, full};
use crate::node::Shared;
use crate::responses::{json, plain};

/// Admin connections at most; the admin API is for operators and scrapers.
const MAX_ADMIN_CONNECTIONS: usize = 64;

pub async fn serve(socket: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let permit = match permits.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let (stream, peer) = tokio::select! {
            r = socket.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&shared, req).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "admin connection error");
            }
            drop(permit);
        });
    }
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    if !authorized(shared, &req) {
        let mut resp = plain(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"cathedral-admin\""),
        );
        return resp;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => plain(StatusCode::OK, "alive"),
        (&Method::GET, "/readyz") => readyz(shared),
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(full(shared.metrics.render()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        (&Method::POST, "/reload") => {
            let outcome = shared.reload().await;
            let status = if outcome.activated {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            json(
                status,
                &json!({
                    "activated": outcome.activated,
                    "generation": outcome.generation,
                    "errors": outcome.errors,
                }),
            )
        }
        (&Method::POST, "/purge") => purge(shared, req).await,
        (method, path @ ("/bundles" | "/bundles/notify" | "/bundles/previous")) => {
            bundles(shared, method, path).await
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/reload" | "/purge") => {
            plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => plain(StatusCode::NOT_FOUND, "no such admin endpoint"),
    }
}

/// The bundle endpoints; 404 on a node in local mode.
async fn bundles(shared: &Arc<Shared>, method: &Method, path: &str) -> Response<Body> {
    let Some(manager) = shared.bundles.get() else {
        return plain(
            StatusCode::NOT_FOUND,
            "this node is in local mode: no [bundles] in its bootstrap",
        );
    };
    match (method, path) {
        (&Method::GET, "/bundles") => json(StatusCode::OK, &manager.status_json()),
        (&Method::POST, "/bundles/notify") => {
            manager.notify();
            json(StatusCode::ACCEPTED, &json!({ "sync": "scheduled" }))
        }
        (&Method::POST, "/bundles/previous") => match manager.activate_previous(shared).await {
            Ok((from, to)) => json(StatusCode::OK, &json!({ "from": from, "to": to })),
            Err(e) => json(StatusCode::CONFLICT, &json!({ "error": e })),
        },
        _ => plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

use crate::node::FAILING_AFTER;

/// Purge requests are small JSON documents.
const MAX_PURGE_BODY: usize = 64 * 1024;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    url: Option<String>,
    prefix: Option<String>,
    surrogate_key: Option<String>,
    #[serde(default)]
    soft: bool,
}

/// `POST /purge` with exactly one of `url`, `prefix`, `surrogate_key`, and
/// optionally `"soft": true` (mark stale instead of removing). Answers how
/// many entries it touched. Acts on this node's cache only.
async fn purge(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    use http_body_util::BodyExt;
    let bytes = match http_body_util::Limited::new(req.into_body(), MAX_PURGE_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "purge request body too large or unreadable",
            );
        }
    };
    let purge: PurgeRequest = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => {
            return json(
                StatusCode::BAD_REQUEST,
                &json!({ "error": format!("invalid purge request: {e}") }),
            );
        }
    };
    let (kind, target, purged) = match (&purge.url, &purge.prefix, &purge.surrogate_key) {
        (Some(url), None, None) => {
            let uri: http::Uri = match url.parse() {
                Ok(u) => u,
                Err(e) => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        &json!({ "error": format!("url: {e}") }),
                    );
                }
            };
            let Some(authority) = uri.authority().map(|a| a.host().to_ascii_lowercase()) else {
                return json(
                    StatusCode::BAD_REQUEST,
                    &json!({ "error": "url must be absolute, e.g. https://example.com/path" }),
                );
            };
            // The URL's route decides its key options (ignored query
            // parameters, sorting, key headers).
            let active = shared.active.load();
            let key = active
                .route(&authority, uri.path())
                .and_then(|r| r.cache.as_ref())
                .map(|p| p.key.clone())
                .unwrap_or_default();
            (
                "url",
                url.clone(),
                shared.cache.purge_url(&uri, &key, purge.soft),
            )
        }
        (None, Some(prefix), None) => (
            "prefix",
            prefix.clone(),
            shared.cache.purge_prefix(prefix, purge.soft),
        ),
        (None, None, Some(tag)) => (
            "surrogate_key",
            tag.clone(),
            shared.cache.purge_surrogate_key(tag, purge.soft),
        ),
        _ => {
            return json(
                StatusCode::BAD_REQUEST,
                &json!({ "error": "give exactly one of url, prefix, surrogate_key" }),
            );
        }
    };
    tracing::info!(kind, target = %target, soft = purge.soft, purged, "cache purge");
    if let Some(manager) = shared.bundles.get() {
        manager
            .audit(
                "purged",
                json!({ "kind": kind, "target": target, "soft": purge.soft, "purged": purged }),
            )
            .await;
    }
    json(
        StatusCode::OK,
        &json!({ "purged": purged, "soft": purge.soft }),
    )
}

fn readyz(shared: &Shared) -> Response<Body> {
    let active = shared.active.load();
    let status = shared.status();
    let (ready, reason) = if shared.is_shutting_down() {
        (false, Some("shutting down"))
    } else if status.listeners.is_empty() {
        (false, Some("no public listener bound"))
    } else if shared
        .bundles
        .get()
        .is_some_and(|m| m.active_version().is_none())
    {
        (false, Some("bundle mode: no bundle activated yet"))
    } else {
        (true, None)
    };
    let last_reload = status.last_reload.map(|(at, o)| {
        json!({
            "at_unix": at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "activated": o.activated,
            "generation": o.generation,
            "errors": o.errors,
        })
    });
    // A module that keeps failing shows here; it does not make the node
    // unready (its route's fail policy already decides what clients see).
    let modules: Vec<serde_json::Value> = shared
        .wasm
        .started()
        .map(|engine| engine.module_stats())
        .unwrap_or_default()
        .into_iter()
        .map(|(name, s)| {
            json!({
                "name": name,
                "calls": s.calls,
                "failures": s.total_failures(),
                "consecutive_failures": s.consecutive_failures,
                "failing": s.consecutive_failures >= FAILING_AFTER,
            })
        })
        .collect();
    let body = json!({
        "ready": ready,
        "reason": reason,
        "region": shared.region,
        "config": {
            "generation": active.generation,
            "routes": active.config.routes.len(),
            "upstreams": active.config.upstreams.len(),
        },
        "last_reload": last_reload,
        "source": active.label,
        "bundles": shared.bundles.get().map(|m| m.status_json()),
        "listeners": status.listeners,
        "modules": modules,
    });
    json(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &body,
    )
}

fn authorized<B>(shared: &Shared, req: &Request<B>) -> bool {
    let Some(expected) = &shared.admin_token else {
        return true;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(presented.as_bytes(), expected.as_bytes())
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
