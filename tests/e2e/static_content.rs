//! Static routes: types, validators, conditionals, ranges, HEAD, the
//! site's 404 page, and paths that try to escape the root.

use cathedral_e2e::*;
use http::{Request, StatusCode};

const SITE: &str = r#"
[routes.site]
path = "/"
static = "{dir}/site"
"#;

fn fill(dir: &std::path::Path) {
    let site = dir.join("site");
    std::fs::create_dir_all(site.join("css")).unwrap();
    std::fs::create_dir_all(site.join("docs")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(site.join("404.html"), "<h1>lost</h1>").unwrap();
    std::fs::write(site.join("css/site.css"), "body{}").unwrap();
    std::fs::write(site.join("docs/index.html"), "docs").unwrap();
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(site.join("big.bin"), big).unwrap();
    std::fs::write(dir.join("secret.txt"), "outside the root").unwrap();
    std::os::unix::fs::symlink(dir.join("secret.txt"), site.join("escape.txt")).unwrap();
}

async fn node() -> TestNode {
    TestNode::start_with(SITE, fill, |_, _| {}).await
}

#[tokio::test]
async fn serves_files_with_type_and_validators() {
    let node = node().await;
    let (status, headers, body) = get(&node.url("/")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "<h1>home</h1>"));
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with("\"b3-") && etag.len() == 32 + 5, "{etag}");
    assert!(headers.contains_key("last-modified"));
    assert_eq!(headers["accept-ranges"], "bytes");

    let (status, headers, _) = get(&node.url("/css/site.css")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/css; charset=utf-8");

    // The ETag is the content's blake3.
    let expected = blake3::hash(b"<h1>home</h1>").to_hex();
    assert_eq!(etag, format!("\"b3-{}\"", &expected[..32]));
}

#[tokio::test]
async fn conditional_get_and_head() {
    let node = node().await;
    let (_, headers, _) = get(&node.url("/index.html")).await;
    let etag = headers["etag"].clone();
    let last_modified = headers["last-modified"].clone();

    let req = Request::get(node.url("/index.html"))
        .header("if-none-match", etag.clone())
        .body(full(""))
        .unwrap();
    let (status, headers, body) = send(req).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(headers["etag"], etag);

    let req = Request::get(node.url("/index.html"))
        .header("if-modified-since", last_modified)
        .body(full(""))
        .unwrap();
    assert_eq!(send(req).await.0, StatusCode::NOT_MODIFIED);

    let req = Request::get(node.url("/index.html"))
        .header("if-match", "\"other\"")
        .body(full(""))
        .unwrap();
    assert_eq!(send(req).await.0, StatusCode::PRECONDITION_FAILED);

    let req = Request::head(node.url("/index.html"))
        .body(full(""))
        .unwrap();
    let (status, headers, body) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], "13");
    assert!(body.is_empty());
}

#[tokio::test]
async fn single_ranges_small_and_streamed() {
    let node = node().await;
    let req = Request::get(node.url("/index.html"))
        .header("range", "bytes=4-9")
        .body(full(""))
        .unwrap();
    let (status, headers, body) = send(req).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(headers["content-range"], "bytes 4-9/13");
    assert_eq!(body, "home</");

    // A file above the inline limit is streamed from disk, from an offset.
    let req = Request::get(node.url("/big.bin"))
        .header("range", "bytes=500000-")
        .body(full(""))
        .unwrap();
    let resp = h1_client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    use http_body_util::BodyExt;
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let expected: Vec<u8> = (500_000..600_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(bytes.as_ref(), &expected[..]);

    let req = Request::get(node.url("/index.html"))
        .header("range", "bytes=100-")
        .body(full(""))
        .unwrap();
    let (status, headers, _) = send(req).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(headers["content-range"], "bytes */13");
}

#[tokio::test]
async fn whole_large_file_streams_intact() {
    let node = node().await;
    let resp = h1_client()
        .request(Request::get(node.url("/big.bin")).body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    use http_body_util::BodyExt;
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes.len(), 600_000);
    assert!(bytes.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
}

#[tokio::test]
async fn directories_redirect_and_missing_files_get_the_site_404() {
    let node = node().await;
    let (status, headers, _) = get(&node.url("/docs?x=1")).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers["location"], "/docs/?x=1");
    let (status, _, body) = get(&node.url("/docs/")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "docs"));
    let (status, _, body) = get(&node.url("/nope.html")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "<h1>lost</h1>")
    );
}

#[tokio::test]
async fn paths_cannot_escape_the_root() {
    let node = node().await;
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/css/..%2f..%2fsecret.txt",
        "/a%00b",
        "/escape.txt",
    ] {
        let raw = raw_exchange(
            node.addr(),
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(!raw.contains("outside the root"), "{path} leaked: {raw}");
        let status = status_of(&raw).unwrap();
        assert!(status == 400 || status == 404, "{path} -> {status}");
    }
}

#[tokio::test]
async fn only_get_and_head() {
    let node = node().await;
    let (status, headers, _) = send(
        Request::post(node.url("/index.html"))
            .body(full("x"))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET, HEAD");
}
