//! Input limits and hostile clients: 431, 413, slowloris, idle keep-alive,
//! the connection cap, malformed requests.

use std::time::Duration;

use cathedral_e2e::*;
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn oversized_headers_get_431() {
    let origin = Origin::start().await;
    let node = TestNode::start_with(
        &proxy_config(&origin.url()),
        |_| {},
        |b, _| {
            b.limits.max_header_bytes = 8 * 1024;
        },
    )
    .await;
    let big = "a".repeat(9 * 1024);
    let raw = raw_exchange(
        node.addr(),
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), Some(431), "{raw}");
    assert_eq!(origin.requests(), 0);
    // The node keeps serving.
    assert_eq!(get(&node.url("/ok")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn too_many_headers_get_431() {
    let origin = Origin::start().await;
    let node = TestNode::start_with(
        &proxy_config(&origin.url()),
        |_| {},
        |b, _| {
            b.limits.max_headers = 10;
        },
    )
    .await;
    let mut req = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..20 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let raw = raw_exchange(node.addr(), req.as_bytes()).await;
    assert_eq!(status_of(&raw), Some(431), "{raw}");
}

#[tokio::test]
async fn declared_large_body_gets_413_without_reaching_the_origin() {
    let origin = Origin::start().await;
    let node = TestNode::start_with(
        &proxy_config(&origin.url()),
        |_| {},
        |b, _| {
            b.limits.max_body_bytes = 1024;
        },
    )
    .await;
    let req = Request::post(node.url("/echo"))
        .body(full(vec![b'x'; 2048]))
        .unwrap();
    let (status, _, _) = send(req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(origin.requests(), 0);
}

#[tokio::test]
async fn chunked_body_over_the_limit_gets_413() {
    let origin = Origin::start().await;
    let node = TestNode::start_with(
        &proxy_config(&origin.url()),
        |_| {},
        |b, _| {
            b.limits.max_body_bytes = 1024;
        },
    )
    .await;
    let mut req = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'y'; 0x200]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let raw = raw_exchange(node.addr(), &req).await;
    assert_eq!(status_of(&raw), Some(413), "{raw}");
    // Under the limit passes.
    let req = Request::post(node.url("/echo"))
        .body(full(vec![b'x'; 1000]))
        .unwrap();
    let (status, _, body) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("body-bytes=1000"), "{body}");
}

#[tokio::test]
async fn slowloris_is_disconnected_by_the_header_timeout() {
    let origin = Origin::start().await;
    let node = TestNode::start_with(
        &proxy_config(&origin.url()),
        |_| {},
        |b, _| {
            b.limits.header_read_timeout = Duration::from_millis(300);
        },
    )
    .await;
    let mut stream = TcpStream::connect(node.addr()).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // The server must close the connection on its own, without a response.
    let mut buf = Vec::new();
    let n = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut buf))
        .await
        .expect("the node closed the slow connection");
    assert_eq!(n.unwrap_or(0), 0, "{}", String::from_utf8_lossy(&buf));
    assert_eq!(origin.requests(), 0);
    assert_eq!(get(&node.url("/ok")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn slow_first_bytes_are_disconnected_too() {
    let origin = Origin::start().await;
    let node = TestNode::start_with(
        &proxy_config(&origin.url()),
        |_| {},
        |b, _| {
            b.limits.header_read_timeout = Duration::from_millis(300);
            b.limits.idle_timeout = Duration::from_secs(60);
        },
    )
    .await;
    // Connect and send nothing: the handshake deadline closes it.
    let mut stream = TcpStream::connect(node.addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(n.unwrap_or(0), 0);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let origin = Origin::start().await;
    let node = TestNode::start_with(
        &proxy_config(&origin.url()),
        |_| {},
        |b, _| {
            b.limits.idle_timeout = Duration::from_millis(400);
            b.limits.header_read_timeout = Duration::from_secs(30);
        },
    )
    .await;
    let mut stream = TcpStream::connect(node.addr()).await.unwrap();
    stream
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Stay idle: the node closes the connection after the idle timeout.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle connection was not closed");
}

#[tokio::test]
async fn excess_connections_wait_for_a_free_slot() {
    let origin = Origin::start().await;
    let node = TestNode::start_with(
        &proxy_config(&origin.url()),
        |_| {},
        |b, _| {
            b.limits.max_connections = 1;
        },
    )
    .await;
    // The first connection holds the only slot with a request in flight.
    let mut first = TcpStream::connect(node.addr()).await.unwrap();
    first
        .write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    origin.wait_held(1).await;

    // The second is accepted by the kernel but not served yet.
    let second_url = node.url("/second");
    let mut second = tokio::spawn(async move { get(&second_url).await });
    // Without the cap it would be answered at once; with it, it waits.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut second)
            .await
            .is_err(),
        "the second connection was served while the only slot was taken"
    );
    assert_eq!(origin.requests(), 1);

    origin.release();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, first.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
    drop(first);
    let (status, _, body) = tokio::time::timeout(PATIENCE, second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "origin:/second"));
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_node_keeps_serving() {
    let origin = Origin::start().await;
    let node = TestNode::proxy_to(&origin).await;
    for garbage in [
        &b"NOT A REQUEST\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let raw = raw_exchange(node.addr(), garbage).await;
        assert_eq!(
            status_of(&raw),
            Some(400),
            "{:?} -> {raw}",
            String::from_utf8_lossy(garbage)
        );
    }
    assert_eq!(origin.requests(), 0);
    assert_eq!(get(&node.url("/ok")).await.0, StatusCode::OK);
}
