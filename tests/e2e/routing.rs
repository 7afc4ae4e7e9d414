//! Routing end to end: host and path specificity, unmatched requests,
//! route response headers.

use cathedral_e2e::*;
use http::{Request, StatusCode};

#[tokio::test]
async fn most_specific_route_wins() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    let config = format!(
        r#"
[upstreams.a]
targets = ["{}"]

[upstreams.b]
targets = ["{}"]

[routes.default]
path = "/"
upstream = "a"

[routes.api]
path = "/api"
upstream = "b"
response_headers = {{ "x-route" = "api" }}

[routes.shop]
hosts = ["*.shop.example"]
path = "/"
upstream = "b"
"#,
        a.url(),
        b.url()
    );
    let node = TestNode::start(&config).await;
    let get_host = |host: &'static str, path: &'static str| {
        let url = node.url(path);
        async move {
            send(
                Request::get(url)
                    .header("host", host)
                    .body(full(""))
                    .unwrap(),
            )
            .await
        }
    };

    let (status, headers, _) = get_host("www.example", "/api/users").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-route"], "api");
    assert_eq!(b.requests(), 1);

    get_host("www.example", "/apix").await;
    assert_eq!(a.requests(), 1);

    get_host("eu.shop.example", "/api/users").await;
    assert_eq!(b.requests(), 2);

    get_host("shop.example", "/").await;
    assert_eq!(a.requests(), 2);
}

#[tokio::test]
async fn unmatched_requests_get_404() {
    let origin = Origin::start().await;
    let config = format!(
        r#"
[upstreams.origin]
targets = ["{}"]

[routes.only]
hosts = ["only.example"]
path = "/"
upstream = "origin"
"#,
        origin.url()
    );
    let node = TestNode::start(&config).await;
    let (status, _, body) = get(&node.url("/")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("no route"), "{body}");
    assert_eq!(origin.requests(), 0);
}
