//! The admin API: separate listener, bearer token, metrics, health,
//! readiness, reload.

use cathedral_e2e::*;
use http::{Request, StatusCode};

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let origin = Origin::start().await;
    let node = TestNode::proxy_to(&origin).await;
    for _ in 0..3 {
        get(&node.url("/a")).await;
    }
    get(&node.url("/status/503")).await;
    assert_eq!(
        metric(
            &node,
            "cathedral_http_requests_total{route=\"all\",status=\"200\"}"
        )
        .await,
        Some(3.0)
    );
    assert_eq!(
        metric(
            &node,
            "cathedral_http_requests_total{route=\"all\",status=\"503\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &node,
            "cathedral_http_request_duration_seconds_count{route=\"all\"}"
        )
        .await,
        Some(4.0)
    );
    let (_, _, text) = get(&node.admin_url("/metrics")).await;
    assert!(text.contains("cathedral_open_connections"), "{text}");
}

#[tokio::test]
async fn health_and_readiness() {
    let origin = Origin::start().await;
    let node = TestNode::proxy_to(&origin).await;
    let (status, _, _) = get(&node.admin_url("/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = get(&node.admin_url("/readyz")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"ready\":true"), "{body}");
    assert!(body.contains("\"generation\":1"), "{body}");
}

#[tokio::test]
async fn admin_is_not_served_on_the_public_listener() {
    let origin = Origin::start().await;
    let node = TestNode::proxy_to(&origin).await;
    let (_, _, body) = get(&node.url("/metrics")).await;
    assert_eq!(
        body, "origin:/metrics",
        "the public listener proxied it like any path"
    );
}

#[tokio::test]
async fn token_is_required_when_configured() {
    let origin = Origin::start().await;
    let node = TestNode::start_with(
        &proxy_config(&origin.url()),
        |_| {},
        |b, _| {
            b.admin.token = Some("s3cret-token".into());
        },
    )
    .await;
    let (status, headers, _) = get(&node.admin_url("/metrics")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.contains_key("www-authenticate"));
    let wrong = Request::get(node.admin_url("/metrics"))
        .header("authorization", "Bearer nope")
        .body(full(""))
        .unwrap();
    assert_eq!(send(wrong).await.0, StatusCode::UNAUTHORIZED);
    let right = Request::get(node.admin_url("/metrics"))
        .header("authorization", "Bearer s3cret-token")
        .body(full(""))
        .unwrap();
    assert_eq!(send(right).await.0, StatusCode::OK);
}

#[tokio::test]
async fn reload_endpoint() {
    let origin = Origin::start().await;
    let node = TestNode::proxy_to(&origin).await;
    let (status, _, body) = send(
        Request::post(node.admin_url("/reload"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"generation\":2"), "{body}");
    node.set_config("not toml [");
    let (status, _, body) = send(
        Request::post(node.admin_url("/reload"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("\"activated\":false"), "{body}");
    let (status, _, _) = send(
        Request::get(node.admin_url("/reload"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}
