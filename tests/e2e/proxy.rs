//! Proxy correctness: forwarding headers, hop-by-hop removal, streaming
//! bodies both ways, WebSocket upgrades, 502 and 504.

use bytes::Bytes;
use cathedral_e2e::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

#[tokio::test]
async fn get_is_forwarded_with_proxy_headers() {
    let origin = Origin::start().await;
    let node = TestNode::proxy_to(&origin).await;

    let req = Request::get(node.url("/echo?q=1"))
        .header("host", "shop.example")
        .header("connection", "x-private")
        .header("x-private", "hop")
        .header("x-forwarded-for", "203.0.113.50")
        .header("te", "gzip")
        .body(full(""))
        .unwrap();
    let (status, headers, body) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["via"], "1.1 cathedral");

    let seen = echo_headers(&body);
    assert_eq!(seen["host"], vec!["shop.example"]);
    assert_eq!(seen["via"], vec!["1.1 cathedral"]);
    // Appended to what the (untrusted) client sent; the node's own
    // decision about the client is the TCP peer.
    assert_eq!(seen["x-forwarded-for"], vec!["203.0.113.50, 127.0.0.1"]);
    assert_eq!(seen["x-forwarded-proto"], vec!["http"]);
    assert_eq!(
        seen["forwarded"],
        vec!["for=127.0.0.1;proto=http;host=\"shop.example\""]
    );
    assert!(
        !seen.contains_key("x-private"),
        "connection-named header leaked: {body}"
    );
    assert!(!seen.contains_key("te"), "TE leaked: {body}");
    assert_eq!(origin.last_seen().uri, "/echo?q=1");
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed() {
    let origin = Origin::start().await;
    let node = TestNode::proxy_to(&origin).await;
    let (status, headers, body) = get(&node.url("/plain")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "origin:/plain");
    assert!(headers.get("x-origin-hop").is_none());
    assert!(headers.get("keep-alive").is_none());
}

#[tokio::test]
async fn host_header_can_be_rewritten_per_route() {
    let origin = Origin::start().await;
    let config = format!(
        r#"
[upstreams.origin]
targets = ["{}"]

[routes.fixed]
path = "/echo/fixed"
upstream = "origin"
host_header = "origin.internal"

[routes.upstream]
path = "/echo/up"
upstream = "origin"
host_header = "upstream"
"#,
        origin.url()
    );
    let node = TestNode::start(&config).await;
    let (_, _, body) = get(&node.url("/echo/fixed")).await;
    assert_eq!(echo_headers(&body)["host"], vec!["origin.internal"]);
    let (_, _, body) = get(&node.url("/echo/up")).await;
    assert_eq!(echo_headers(&body)["host"], vec![origin.addr.to_string()]);
}

/// The first chunk of a POST comes back through the proxy before the client
/// sends the second: neither direction is buffered whole.
#[tokio::test]
async fn post_bodies_stream_both_ways() {
    let origin = Origin::start().await;
    let node = TestNode::proxy_to(&origin).await;

    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
    let stream = ReceiverStream(rx);
    let req = Request::post(node.url("/stream-echo"))
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap();

    let resp = tokio::spawn(async move { h1_client().request(req).await });
    tx.send(Ok(Frame::data(Bytes::from_static(b"first chunk;"))))
        .await
        .unwrap();
    let resp = tokio::time::timeout(PATIENCE, resp)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first.into_data().unwrap(),
        Bytes::from_static(b"first chunk;")
    );

    // Now a large second part, then the end.
    let big = Bytes::from(vec![b'x'; 3 * 1024 * 1024]);
    tx.send(Ok(Frame::data(big.clone()))).await.unwrap();
    drop(tx);
    let rest = tokio::time::timeout(PATIENCE, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(rest.len(), big.len());
}

struct ReceiverStream<T>(mpsc::Receiver<T>);

impl<T> futures_util::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let origin = Origin::start().await;
    let node = TestNode::proxy_to(&origin).await;
    let (mut ws, resp) = tokio::time::timeout(
        PATIENCE,
        tokio_tungstenite::connect_async(format!("ws://{}/ws", node.addr())),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for msg in ["hello", "edge", "world"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg))
            .await
            .unwrap();
        let back = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn connect_failure_is_502() {
    // Bind and drop to find a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let node = TestNode::start(&proxy_config(&format!("http://127.0.0.1:{port}"))).await;
    let (status, _, body) = get(&node.url("/x")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("upstream connection failed"), "{body}");
    assert_eq!(
        metric(
            &node,
            "cathedral_upstream_errors_total{upstream=\"origin\",kind=\"connect\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn failover_to_the_next_target_on_connect_failure() {
    let origin = Origin::start().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = format!(
        r#"
[upstreams.origin]
targets = ["http://127.0.0.1:{dead}", "{}"]

[routes.all]
path = "/"
upstream = "origin"
"#,
        origin.url()
    );
    let node = TestNode::start(&config).await;
    for _ in 0..4 {
        let (status, _, _) = get(&node.url("/x")).await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn slow_origin_is_504() {
    let origin = Origin::start().await;
    let config = proxy_config_with(&origin.url(), "first_byte_timeout = \"200ms\"");
    let node = TestNode::start(&config).await;
    let (status, _, body) = get(&node.url("/silent")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.contains("upstream timed out"), "{body}");
    assert_eq!(
        metric(
            &node,
            "cathedral_upstream_errors_total{upstream=\"origin\",kind=\"timeout\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn h2_upstream() {
    let origin = Origin::start_h2().await;
    let config = proxy_config_with(&origin.url(), "protocol = \"h2\"");
    let node = TestNode::start(&config).await;
    let req = Request::get(node.url("/echo"))
        .header("host", "site.example")
        .body(full(""))
        .unwrap();
    let (status, _, _) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    let seen = origin.last_seen();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.uri, "http://site.example/echo");
}

#[tokio::test]
async fn total_timeout_cuts_a_slow_body() {
    // The origin's /hold never finishes within 300 ms; the node gives up on
    // the exchange as a whole.
    let origin = Origin::start().await;
    let config = proxy_config_with(
        &origin.url(),
        "first_byte_timeout = \"5s\"\ntotal_timeout = \"300ms\"",
    );
    let node = TestNode::start(&config).await;
    let (status, _, _) = get(&node.url("/hold")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn tls_upstream_verified_against_a_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = write_cert(dir.path(), "origin", &["origin.test"]);
    let origin = Origin::start_tls(&cert, &key).await;
    let config = format!(
        r#"
[upstreams.secure]
targets = ["https://{addr}"]
ca_file = "{ca}"
server_name = "origin.test"

[upstreams.unverifiable]
targets = ["https://{addr}"]
server_name = "origin.test"
ca_file = "{other}"

[routes.secure]
path = "/secure"
upstream = "secure"

[routes.unverifiable]
path = "/unverifiable"
upstream = "unverifiable"
"#,
        addr = origin.addr,
        ca = cert.display(),
        other = write_cert(dir.path(), "other", &["other.test"]).0.display(),
    );
    let node = TestNode::start(&config).await;
    let (status, _, body) = get(&node.url("/secure/x")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "origin:/secure/x")
    );
    // A certificate the CA file does not vouch for is a failed connection.
    let (status, _, _) = get(&node.url("/unverifiable/x")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(origin.requests(), 1);
}
