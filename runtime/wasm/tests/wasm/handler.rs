//! Handlers: `wasi:http` outgoing requests reach only the route's backends;
//! `client-info` and `rate-limit` work from a handler.

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use cathedral_limits::{Limiter, PolicySpec, Quota};
use cathedral_wasm::{
    Backend, Backends, Module, ModuleSettings, RateLimitPolicy, RateLimits, RequestEnv,
};
use cathedral_wasm_test_artifacts as guests;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::common::{self, client, load, settings};

/// A local HTTP server answering `body` and counting requests.
async fn server(body: &'static str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    counter.fetch_add(1, SeqCst);
                    async move {
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                            body.as_bytes(),
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, hits)
}

async fn get(module: &Module, uri: &str, env: &RequestEnv) -> (u16, String) {
    let request = http::Request::get(uri)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = module.handle(request, env).await.expect("handled");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn outgoing_requests_reach_only_the_routes_backends() {
    let (origin, origin_hits) = server("origin says hi").await;
    let (admin, admin_hits) = server("admin metrics").await;
    let engine = common::engine();
    let module = load(
        &engine,
        "hello-handler",
        guests::HELLO_HANDLER,
        settings(&[]),
    )
    .await;
    let backends =
        Backends::new([Backend::new("origin", &format!("http://{origin}")).expect("backend")]);
    let env = client(None, None, "us-east-1").with_backends(backends);

    for url in ["http://origin/x", &format!("http://{origin}/x")] {
        let (status, body) = get(
            &module,
            &format!("http://www.example.com/fetch?url={url}"),
            &env,
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "origin says hi"), "{url}");
    }
    assert_eq!(origin_hits.load(SeqCst), 2);

    for url in [
        format!("http://{admin}/metrics"),
        format!("http://localhost:{}/x", origin.port()),
        "https://origin:443/x".to_owned(),
        format!("http://origin@{admin}/metrics"),
        "http://203.0.113.9/".to_owned(),
    ] {
        let (status, body) = get(
            &module,
            &format!("http://www.example.com/fetch?url={url}"),
            &env,
        )
        .await;
        assert_eq!(status, 502, "{url}: {body}");
        assert!(body.contains("HttpRequestDenied"), "{url}: {body}");
    }
    // A route without backends can call nothing at all.
    let bare = client(None, None, "us-east-1");
    let (status, body) = get(
        &module,
        "http://www.example.com/fetch?url=http://origin/x",
        &bare,
    )
    .await;
    assert_eq!(
        (status, body.contains("HttpRequestDenied")),
        (502, true),
        "{body}"
    );
    assert_eq!(
        admin_hits.load(SeqCst),
        0,
        "no refused request reached its server"
    );
    assert_eq!(origin_hits.load(SeqCst), 2);
}

#[tokio::test]
async fn client_info_and_rate_limits_from_a_handler() {
    let engine = common::engine();
    let nz = |n| NonZeroU32::new(n).expect("non-zero");
    let quota = Quota::new(nz(1), Duration::from_secs(3600), nz(2)).expect("quota");
    let limiter: Arc<dyn RateLimitPolicy> =
        Arc::new(Limiter::new(PolicySpec::new("api", quota)).expect("limiter"));
    let granted = ModuleSettings {
        rate_limits: RateLimits::new([("api".to_owned(), limiter)]),
        ..settings(&[])
    };
    let module = load(&engine, "hello-handler", guests::HELLO_HANDLER, granted).await;
    let env = client(Some("u-42"), None, "us-east-1");
    assert_eq!(
        get(&module, "http://h/user", &env).await,
        (200, "u-42".to_owned())
    );
    assert_eq!(
        get(&module, "http://h/user", &client(None, None, "r")).await,
        (200, "anonymous".to_owned())
    );

    assert_eq!(
        get(&module, "http://h/limit?k1", &env).await,
        (200, "remaining 1".to_owned())
    );
    assert_eq!(
        get(&module, "http://h/limit?k1", &env).await,
        (200, "remaining 0".to_owned())
    );
    let (status, body) = get(&module, "http://h/limit?k1", &env).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.starts_with("retry-after Some("), "{body}");
    assert_eq!(
        get(&module, "http://h/limit?k2", &env).await.0,
        200,
        "keys are independent"
    );

    // A module granted no policies cannot use any.
    let ungranted = module.with_settings(settings(&[])).expect("settings");
    let (status, body) = get(&ungranted, "http://h/limit?k1", &env).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("unknown-policy"), "{body}");
}
