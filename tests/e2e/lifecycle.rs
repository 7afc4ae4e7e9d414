//! Reloads and shutdown: in-flight requests finish on the snapshot they
//! started with, bad configs are rejected without disturbing service, and
//! shutdown drains in-flight work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cathedral_e2e::*;
use http::StatusCode;

fn two_route_config(origin: &str, label: &str) -> String {
    format!(
        r#"
[upstreams.origin]
targets = ["{origin}"]

[routes.all]
path = "/"
upstream = "origin"
response_headers = {{ "x-generation" = "{label}" }}
"#
    )
}

#[tokio::test]
async fn reload_swaps_atomically_and_in_flight_requests_keep_their_snapshot() {
    let origin = Origin::start().await;
    let node = TestNode::start(&two_route_config(&origin.url(), "one")).await;

    let held_url = node.url("/hold");
    let held = tokio::spawn(async move { get(&held_url).await });
    origin.wait_held(1).await;

    node.set_config(&two_route_config(&origin.url(), "two"));
    let outcome = node.handle.reload().await;
    assert!(outcome.activated, "{outcome:?}");
    assert_eq!(outcome.generation, 2);

    let (_, headers, _) = get(&node.url("/new")).await;
    assert_eq!(headers["x-generation"], "two");

    origin.release();
    let (status, headers, body) = tokio::time::timeout(PATIENCE, held).await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "released"));
    assert_eq!(
        headers["x-generation"], "one",
        "the in-flight request finished on its own snapshot"
    );
}

#[tokio::test]
async fn invalid_reload_is_rejected_and_service_continues() {
    let origin = Origin::start().await;
    let node = TestNode::start(&two_route_config(&origin.url(), "one")).await;
    node.set_config("[routes.broken]\npath = \"/\"\nupstream = \"missing\"\n");
    let outcome = node.handle.reload().await;
    assert!(!outcome.activated);
    assert_eq!(outcome.generation, 1);
    let text = outcome.errors.join("\n");
    assert!(text.contains("routes.broken.upstream"), "{text}");
    let (status, headers, _) = get(&node.url("/still")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-generation"], "one");
    assert_eq!(
        metric(&node, "cathedral_config_reloads_total{result=\"rejected\"}").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn reloads_under_load_drop_no_request() {
    let origin = Origin::start().await;
    let node = Arc::new(TestNode::start(&two_route_config(&origin.url(), "0")).await);
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (node, stop, failures, done) =
            (node.clone(), stop.clone(), failures.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let client = h1_client();
            // Bounded: at most 2,000 requests per worker.
            for _ in 0..2_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let req = http::Request::get(node.url("/x")).body(full("")).unwrap();
                match tokio::time::timeout(PATIENCE, client.request(req)).await {
                    Ok(Ok(resp)) if resp.status() == StatusCode::OK => {
                        use http_body_util::BodyExt;
                        if resp.into_body().collect().await.is_err() {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for generation in 1..=20 {
        node.set_config(&two_route_config(&origin.url(), &generation.to_string()));
        assert!(node.handle.reload().await.activated);
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(done.load(Ordering::Relaxed) > 0);
    assert_eq!(node.handle.generation(), 21);
}

#[tokio::test]
async fn shutdown_completes_in_flight_requests_then_stops_accepting() {
    let origin = Origin::start().await;
    let node = TestNode::proxy_to(&origin).await;
    let addr = node.addr();
    let held_url = node.url("/hold");
    let held = tokio::spawn(async move { get(&held_url).await });
    origin.wait_held(1).await;

    let TestNode { handle, dir, .. } = node;
    let shutdown = tokio::spawn(handle.shutdown());
    // The listener closes promptly; the in-flight request is still served.
    tokio::time::timeout(PATIENCE, async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the listener stopped accepting");
    origin.release();
    let (status, _, body) = tokio::time::timeout(PATIENCE, held).await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "released"));
    let drained = tokio::time::timeout(PATIENCE, shutdown)
        .await
        .unwrap()
        .unwrap();
    assert!(drained);
    drop(dir);
}
