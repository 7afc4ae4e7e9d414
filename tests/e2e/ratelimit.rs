//! Native rate-limit policies through the node: 429 with `Retry-After` and
//! the RateLimit headers, keys, the penalty box, concurrency, reloads.

use std::sync::Arc;

use cathedral_e2e::*;
use http::{Request, StatusCode};

fn config(origin: &str, policy: &str) -> String {
    format!(
        r#"
[upstreams.origin]
targets = ["{origin}"]

[routes.all]
path = "/"
upstream = "origin"
cache = false
rate_limits = ["p"]

[rate_limits.p]
{policy}
"#
    )
}

async fn get_key(url: &str, key: &str) -> (StatusCode, http::HeaderMap, String) {
    send(
        Request::get(url)
            .header("x-api-key", key)
            .body(full(""))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn over_the_burst_gets_429_with_retry_after_and_ratelimit_headers() {
    let origin = Origin::start().await;
    // 2 per hour: nothing refills during the test.
    let node = TestNode::start(&config(&origin.url(), "rate = 2\nper = \"1h\"\nburst = 2")).await;
    for _ in 0..2 {
        let (status, headers, _) = get(&node.url("/x")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            headers.get("ratelimit").is_none(),
            "headers only on 429 by default"
        );
    }
    let (status, headers, body) = get(&node.url("/x")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(body.contains("rate limit p exceeded"), "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1700..=1800).contains(&retry),
        "one token per 30 min: {retry}"
    );
    assert!(
        headers["ratelimit-policy"]
            .to_str()
            .unwrap()
            .starts_with("\"p\";q=2;w=")
    );
    assert!(
        headers["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"p\";r=0;t=")
    );
    assert_eq!(
        origin.requests(),
        2,
        "refused requests never reach the origin"
    );
    assert_eq!(
        metric(
            &node,
            "cathedral_ratelimit_decisions_total{policy=\"p\",decision=\"limited\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &node,
            "cathedral_ratelimit_decisions_total{policy=\"p\",decision=\"allowed\"}"
        )
        .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn headers_on_allowed_responses_when_asked() {
    let origin = Origin::start().await;
    let node = TestNode::start(&config(
        &origin.url(),
        "rate = 5\nper = \"1h\"\nburst = 5\nheaders = \"always\"",
    ))
    .await;
    let (status, headers, _) = get(&node.url("/x")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["ratelimit-policy"]
            .to_str()
            .unwrap()
            .starts_with("\"p\";q=5")
    );
    assert!(
        headers["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"p\";r=4;")
    );
}

#[tokio::test]
async fn header_keys_are_independent() {
    let origin = Origin::start().await;
    let node = TestNode::start(&config(
        &origin.url(),
        "rate = 1\nper = \"1h\"\nburst = 1\nkey = \"header:x-api-key\"",
    ))
    .await;
    assert_eq!(get_key(&node.url("/x"), "alice").await.0, StatusCode::OK);
    assert_eq!(
        get_key(&node.url("/x"), "alice").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(get_key(&node.url("/x"), "bob").await.0, StatusCode::OK);
    // Without the header, the client IP is the key.
    assert_eq!(get(&node.url("/x")).await.0, StatusCode::OK);
    assert_eq!(get(&node.url("/x")).await.0, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_penalty_box_holds_a_key_for_its_duration() {
    let origin = Origin::start().await;
    let node = TestNode::start(&config(
        &origin.url(),
        "rate = 6\nper = \"1m\"\nburst = 1\npenalty = \"10m\"",
    ))
    .await;
    assert_eq!(get(&node.url("/x")).await.0, StatusCode::OK);
    let (status, headers, _) = get(&node.url("/x")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        retry >= 599,
        "penalized for 10 minutes, not the 10 s refill: {retry}"
    );
    assert_eq!(
        metric(
            &node,
            "cathedral_ratelimit_decisions_total{policy=\"p\",decision=\"penalized\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn concurrent_clients_get_exactly_the_burst() {
    let origin = Origin::start().await;
    let node = Arc::new(
        TestNode::start(&config(
            &origin.url(),
            "rate = 10\nper = \"1h\"\nburst = 20",
        ))
        .await,
    );
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let url = node.url("/x");
        tasks.push(tokio::spawn(async move { get(&url).await.0 }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        match tokio::time::timeout(PATIENCE, t).await.unwrap().unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, limited), (20, 180));
    assert_eq!(origin.requests(), 20);
}

#[tokio::test]
async fn counters_survive_a_reload_of_an_unchanged_policy() {
    let origin = Origin::start().await;
    let text = config(&origin.url(), "rate = 1\nper = \"1h\"\nburst = 1");
    let node = TestNode::start(&text).await;
    assert_eq!(get(&node.url("/x")).await.0, StatusCode::OK);
    assert_eq!(get(&node.url("/x")).await.0, StatusCode::TOO_MANY_REQUESTS);
    node.set_config(&format!(
        "{text}\n[routes.all.response_headers]\nx-changed = \"yes\"\n"
    ));
    assert!(node.handle.reload().await.activated);
    let (status, headers, _) = get(&node.url("/x")).await;
    assert_eq!(headers["x-changed"], "yes", "the new snapshot is active");
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the counter was kept"
    );
}
