//! Who the client is: PROXY protocol from a trusted balancer, and refusal
//! of PROXY headers from anyone else.

use cathedral_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn proxied_node(origin: &Origin, trusted: &[&str]) -> TestNode {
    let trusted: Vec<ipnet::IpNet> = trusted.iter().map(|s| s.parse().unwrap()).collect();
    TestNode::start_with(
        &proxy_config(&origin.url()),
        |_| {},
        move |b, _| {
            b.listeners[0].proxy_protocol = true;
            b.trusted_proxies = trusted;
        },
    )
    .await
}

#[tokio::test]
async fn proxy_protocol_from_a_trusted_balancer_names_the_client() {
    let origin = Origin::start().await;
    let node = proxied_node(&origin, &["127.0.0.1/32"]).await;
    let raw = raw_exchange(
        node.addr(),
        b"PROXY TCP4 198.51.100.7 127.0.0.1 4711 80\r\nGET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), Some(200), "{raw}");
    let seen = echo_headers(&raw);
    assert_eq!(seen["x-forwarded-for"], vec!["198.51.100.7"]);
    assert_eq!(
        seen["forwarded"],
        vec!["for=198.51.100.7;proto=http;host=\"x\""]
    );
}

#[tokio::test]
async fn proxy_protocol_from_an_untrusted_peer_is_refused() {
    let origin = Origin::start().await;
    let node = proxied_node(&origin, &["10.0.0.0/8"]).await;
    let mut stream = TcpStream::connect(node.addr()).await.unwrap();
    stream
        .write_all(
            b"PROXY TCP4 198.51.100.7 127.0.0.1 4711 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out))
        .await
        .unwrap();
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert_eq!(origin.requests(), 0);
}

#[tokio::test]
async fn a_missing_proxy_header_is_refused() {
    let origin = Origin::start().await;
    let node = proxied_node(&origin, &["127.0.0.1/32"]).await;
    let raw = raw_exchange(node.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(raw.is_empty(), "{raw}");
    assert_eq!(origin.requests(), 0);
}
