//! The shared cache through the real node: hits and `Age`, coalescing,
//! `Vary`, directives, `Authorization`, revalidation, stale serving,
//! invalidation, purge, targeted cache-control fields, integrity, metrics.

use std::sync::Arc;

use cathedral_e2e::*;
use http::{HeaderMap, Request, StatusCode};

fn cache_status(headers: &HeaderMap) -> String {
    headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

async fn get_with(url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req.body(full("")).unwrap()).await
}

async fn cached_node(origin: &Origin) -> TestNode {
    TestNode::proxy_to(origin).await
}

#[tokio::test]
async fn fresh_responses_are_served_from_the_cache_with_age() {
    let origin = Origin::start().await;
    origin.script(
        "/page",
        Scripted::ok("hello", &[("cache-control", "max-age=60")]),
    );
    let node = cached_node(&origin).await;

    let (status, headers, body) = get(&node.url("/page")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));
    let first = cache_status(&headers);
    assert!(first.starts_with("cathedral; fwd=uri-miss"), "{first}");
    assert!(
        first.contains("fwd-status=200") && first.contains("stored"),
        "{first}"
    );

    let (status, headers, body) = get(&node.url("/page")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));
    let second = cache_status(&headers);
    assert!(second.starts_with("cathedral; hit"), "{second}");
    assert!(
        headers.contains_key("age"),
        "Age is sent on cached responses"
    );
    assert_eq!(origin.count_for("/page"), 1);

    // HEAD is answered from the GET entry.
    let (status, headers, body) =
        send(Request::head(node.url("/page")).body(full("")).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    assert!(cache_status(&headers).contains("hit"));
    assert_eq!(origin.count_for("/page"), 1);
    assert_eq!(metric(&node, "cathedral_cache_hits_total").await, Some(2.0));
}

#[tokio::test]
async fn a_hundred_concurrent_misses_make_one_origin_request() {
    let origin = Origin::start().await;
    // /hold answers only when released, with a cacheable response.
    let node = Arc::new(cached_node(&origin).await);
    origin.script(
        "/cold",
        Scripted::ok("x", &[("cache-control", "max-age=60")]),
    );
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let url = node.url("/cold");
        tasks.push(tokio::spawn(async move { get(&url).await }));
    }
    for t in tasks {
        let (status, _, body) = tokio::time::timeout(PATIENCE, t).await.unwrap().unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "x"));
    }
    assert_eq!(origin.count_for("/cold"), 1);
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let origin = Origin::start().await;
    origin.script(
        "/v",
        Scripted::ok(
            "variant",
            &[("cache-control", "max-age=60"), ("vary", "accept-language")],
        ),
    );
    let node = cached_node(&origin).await;
    get_with(&node.url("/v"), &[("accept-language", "de")]).await;
    let (_, h, _) = get_with(&node.url("/v"), &[("accept-language", "de")]).await;
    assert!(cache_status(&h).contains("hit"));
    let (_, h, _) = get_with(&node.url("/v"), &[("accept-language", "fr")]).await;
    assert!(
        cache_status(&h).contains("fwd=vary-miss"),
        "{}",
        cache_status(&h)
    );
    assert_eq!(origin.count_for("/v"), 2);

    origin.script(
        "/star",
        Scripted::ok("s", &[("cache-control", "max-age=60"), ("vary", "*")]),
    );
    get(&node.url("/star")).await;
    get(&node.url("/star")).await;
    assert_eq!(origin.count_for("/star"), 2, "Vary: * never matches");
}

#[tokio::test]
async fn no_store_private_and_set_cookie_are_not_shared() {
    let origin = Origin::start().await;
    origin.script("/ns", Scripted::ok("a", &[("cache-control", "no-store")]));
    origin.script(
        "/private",
        Scripted::ok("b", &[("cache-control", "private, max-age=60")]),
    );
    origin.script(
        "/cookie",
        Scripted::ok(
            "c",
            &[
                ("cache-control", "max-age=60"),
                ("set-cookie", "session=alice"),
            ],
        ),
    );
    let node = cached_node(&origin).await;
    for path in ["/ns", "/private", "/cookie"] {
        let (_, headers, _) = get(&node.url(path)).await;
        if path == "/cookie" {
            assert_eq!(
                headers["set-cookie"], "session=alice",
                "the client that caused the fetch gets its cookie"
            );
        }
        let (_, headers, _) = get(&node.url(path)).await;
        assert!(
            !cache_status(&headers).contains("hit"),
            "{path}: {}",
            cache_status(&headers)
        );
        assert_eq!(origin.count_for(path), 2, "{path}");
    }
}

#[tokio::test]
async fn set_cookie_responses_are_stored_without_the_cookie_when_the_route_opts_in() {
    let origin = Origin::start().await;
    origin.script(
        "/cookie",
        Scripted::ok(
            "c",
            &[
                ("cache-control", "max-age=60"),
                ("set-cookie", "session=alice"),
            ],
        ),
    );
    let config = format!(
        r#"
[upstreams.origin]
targets = ["{}"]

[routes.all]
path = "/"
upstream = "origin"

[routes.all.cache]
store_set_cookie = true
"#,
        origin.url()
    );
    let node = TestNode::start(&config).await;
    let (_, first, _) = get(&node.url("/cookie")).await;
    assert_eq!(first["set-cookie"], "session=alice");
    let (_, second, _) = get(&node.url("/cookie")).await;
    assert!(cache_status(&second).contains("hit"));
    assert!(
        second.get("set-cookie").is_none(),
        "a cookie is never replayed to another user"
    );
}

#[tokio::test]
async fn authorization_requests_bypass_unless_the_response_allows_sharing() {
    let origin = Origin::start().await;
    origin.script(
        "/auth",
        Scripted::ok("secret", &[("cache-control", "max-age=60")]),
    );
    origin.script(
        "/auth-public",
        Scripted::ok("shared", &[("cache-control", "public, max-age=60")]),
    );
    let node = cached_node(&origin).await;
    let auth = [("authorization", "Bearer alice")];
    get_with(&node.url("/auth"), &auth).await;
    get_with(&node.url("/auth"), &auth).await;
    assert_eq!(origin.count_for("/auth"), 2);
    // Nor does an anonymous request get alice's copy.
    get(&node.url("/auth")).await;
    assert_eq!(origin.count_for("/auth"), 3);

    get_with(&node.url("/auth-public"), &auth).await;
    let (_, h, _) = get_with(&node.url("/auth-public"), &auth).await;
    assert!(cache_status(&h).contains("hit"));
    assert_eq!(origin.count_for("/auth-public"), 1);
}

#[tokio::test]
async fn stale_entries_revalidate_with_their_etag() {
    let origin = Origin::start().await;
    origin.script(
        "/etag",
        Scripted::ok(
            "body-v1",
            &[("cache-control", "max-age=0"), ("etag", "\"v1\"")],
        ),
    );
    let node = cached_node(&origin).await;
    get(&node.url("/etag")).await;
    let (status, headers, body) = get(&node.url("/etag")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "body-v1"));
    let cs = cache_status(&headers);
    assert!(
        cs.contains("fwd=stale") && cs.contains("fwd-status=304"),
        "{cs}"
    );
    let seen = origin.last_seen();
    assert_eq!(seen.headers["if-none-match"], "\"v1\"");
    assert_eq!(origin.count_for("/etag"), 2);
}

#[tokio::test]
async fn stale_if_error_masks_an_origin_error() {
    let origin = Origin::start().await;
    origin.script(
        "/sie",
        Scripted::ok("good", &[("cache-control", "max-age=0, stale-if-error=60")]),
    );
    let node = cached_node(&origin).await;
    get(&node.url("/sie")).await;
    origin.script("/sie", Scripted::ok("broken", &[]).status(503));
    let (status, headers, body) = get(&node.url("/sie")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "good"));
    assert!(
        cache_status(&headers).contains("fwd-status=503"),
        "{}",
        cache_status(&headers)
    );
}

#[tokio::test]
async fn stale_if_error_masks_an_origin_that_is_down() {
    let origin = Origin::start().await;
    origin.script(
        "/down",
        Scripted::ok("kept", &[("cache-control", "max-age=0, stale-if-error=60")]),
    );
    let node = cached_node(&origin).await;
    get(&node.url("/down")).await;
    // Point the route at a port where nobody listens; the cache outlives the reload.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    node.set_config(&proxy_config(&format!("http://127.0.0.1:{dead}")));
    assert!(node.handle.reload().await.activated);
    let (status, _, body) = get(&node.url("/down")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "kept"));
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background() {
    let origin = Origin::start().await;
    origin.script(
        "/swr",
        Scripted::ok(
            "v1",
            &[("cache-control", "max-age=0, stale-while-revalidate=60")],
        ),
    );
    let node = cached_node(&origin).await;
    get(&node.url("/swr")).await;
    origin.script(
        "/swr",
        Scripted::ok(
            "v2",
            &[("cache-control", "max-age=60, stale-while-revalidate=60")],
        ),
    );
    let (status, headers, body) = get(&node.url("/swr")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "v1"),
        "stale served at once"
    );
    assert!(
        cache_status(&headers).contains("hit"),
        "{}",
        cache_status(&headers)
    );
    origin.wait_count("/swr", 2).await;
    // The refreshed copy is served once the background fetch has stored it.
    let body = tokio::time::timeout(PATIENCE, async {
        loop {
            let (_, _, body) = get(&node.url("/swr")).await;
            if body == "v2" {
                return body;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(body, "v2");
    assert_eq!(origin.count_for("/swr"), 2, "one background refresh");
}

#[tokio::test]
async fn only_if_cached_misses_get_504() {
    let origin = Origin::start().await;
    let node = cached_node(&origin).await;
    let (status, _, _) = get_with(
        &node.url("/nothing"),
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(origin.requests(), 0);
}

#[tokio::test]
async fn request_no_cache_revalidates_and_no_store_is_not_stored() {
    let origin = Origin::start().await;
    origin.script(
        "/rc",
        Scripted::ok("r", &[("cache-control", "max-age=60"), ("etag", "\"r\"")]),
    );
    let node = cached_node(&origin).await;
    get(&node.url("/rc")).await;
    let (_, h, _) = get_with(&node.url("/rc"), &[("cache-control", "no-cache")]).await;
    assert!(cache_status(&h).contains("fwd="), "{}", cache_status(&h));
    assert_eq!(origin.count_for("/rc"), 2);

    origin.script(
        "/rns",
        Scripted::ok("n", &[("cache-control", "max-age=60")]),
    );
    get_with(&node.url("/rns"), &[("cache-control", "no-store")]).await;
    get(&node.url("/rns")).await;
    assert_eq!(origin.count_for("/rns"), 2);
}

#[tokio::test]
async fn unsafe_methods_invalidate_the_target_and_its_location() {
    let origin = Origin::start().await;
    origin.script(
        "/item",
        Scripted::ok("item", &[("cache-control", "max-age=60")]),
    );
    origin.script(
        "/list",
        Scripted::ok("list", &[("cache-control", "max-age=60")]),
    );
    origin.script(
        "/item-update",
        Scripted::ok("done", &[("location", "/list")]),
    );
    let node = cached_node(&origin).await;
    get(&node.url("/item")).await;
    get(&node.url("/list")).await;
    send(Request::post(node.url("/item")).body(full("x")).unwrap()).await;
    get(&node.url("/item")).await;
    assert_eq!(
        origin.count_for("/item"),
        3,
        "GET, POST, GET after invalidation"
    );

    send(
        Request::put(node.url("/item-update"))
            .body(full("x"))
            .unwrap(),
    )
    .await;
    get(&node.url("/list")).await;
    assert_eq!(origin.count_for("/list"), 2, "Location was invalidated");
}

#[tokio::test]
async fn client_conditionals_and_ranges_are_answered_from_the_cache() {
    let origin = Origin::start().await;
    origin.script(
        "/doc",
        Scripted::ok(
            "0123456789",
            &[("cache-control", "max-age=60"), ("etag", "\"d\"")],
        ),
    );
    let node = cached_node(&origin).await;
    get(&node.url("/doc")).await;
    let (status, _, body) = get_with(&node.url("/doc"), &[("if-none-match", "\"d\"")]).await;
    assert_eq!((status, body.as_str()), (StatusCode::NOT_MODIFIED, ""));
    let (status, headers, body) = get_with(&node.url("/doc"), &[("range", "bytes=2-4")]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::PARTIAL_CONTENT, "234")
    );
    assert_eq!(headers["content-range"], "bytes 2-4/10");
    assert_eq!(origin.count_for("/doc"), 1);
}

#[tokio::test]
async fn targeted_cache_control_takes_precedence_and_ours_is_not_forwarded() {
    let origin = Origin::start().await;
    origin.script(
        "/cdn",
        Scripted::ok(
            "c",
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60"),
                ("cathedral-cdn-cache-control", "max-age=120"),
            ],
        ),
    );
    let node = cached_node(&origin).await;
    let (_, first, _) = get(&node.url("/cdn")).await;
    assert!(first.get("cathedral-cdn-cache-control").is_none());
    assert_eq!(first["cdn-cache-control"], "max-age=60");
    let (_, second, _) = get(&node.url("/cdn")).await;
    let cs = cache_status(&second);
    assert!(
        cs.contains("hit") && cs.contains("ttl=1"),
        "the node-targeted max-age=120 applies: {cs}"
    );
    assert_eq!(origin.count_for("/cdn"), 1);
}

#[tokio::test]
async fn purge_by_url_prefix_and_surrogate_key() {
    let origin = Origin::start().await;
    for path in ["/p/a", "/p/b", "/q/c"] {
        origin.script(
            path,
            Scripted::ok(
                path,
                &[
                    ("cache-control", "max-age=60"),
                    ("surrogate-key", "team-q"),
                    ("etag", "\"e\""),
                ],
            ),
        );
    }
    let node = cached_node(&origin).await;
    for path in ["/p/a", "/p/b", "/q/c"] {
        let (_, headers, _) = get(&node.url(path)).await;
        assert!(
            headers.get("surrogate-key").is_none(),
            "surrogate keys are not sent to clients"
        );
    }
    let purge = |body: String| {
        let url = node.admin_url("/purge");
        async move { send(Request::post(url).body(full(body)).unwrap()).await }
    };
    let host = node.addr().to_string();

    let (status, _, body) = purge(format!(r#"{{"url": "http://{host}/p/a"}}"#)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"purged\":1"), "{body}");
    get(&node.url("/p/a")).await;
    assert_eq!(origin.count_for("/p/a"), 2);

    let (_, _, body) = purge(format!(r#"{{"prefix": "http://{host}/p/"}}"#)).await;
    assert!(body.contains("\"purged\":2"), "{body}");

    let (_, _, body) = purge(r#"{"surrogate_key": "team-q", "soft": true}"#.to_owned()).await;
    assert!(body.contains("\"soft\":true"), "{body}");
    // Soft purge marks stale: the next request revalidates (304) instead of refetching.
    let (_, headers, _) = get(&node.url("/q/c")).await;
    assert!(
        cache_status(&headers).contains("fwd-status=304"),
        "{}",
        cache_status(&headers)
    );

    let (status, _, _) = purge(r#"{"url": "x", "prefix": "y"}"#.to_owned()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = purge("not json".to_owned()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// Stores `/integrity`, then flips bytes of the stored body in place.
async fn corrupted(scrub_per_second: u32) -> (Origin, TestNode) {
    let origin = Origin::start().await;
    origin.script(
        "/integrity",
        Scripted::ok("precious", &[("cache-control", "max-age=60")]),
    );
    let config = proxy_config(&origin.url());
    let node = TestNode::start_with(
        &config,
        |_| {},
        move |b, _| {
            b.cache.integrity = cathedral_config::IntegrityCheck::Always;
            b.cache.scrub_per_second = scrub_per_second;
        },
    )
    .await;
    get(&node.url("/integrity")).await;
    let req = Request::get(node.url("/integrity"))
        .header("host", node.addr().to_string())
        .body(())
        .unwrap();
    let (parts, ()) = req.into_parts();
    let creq = cathedral_cache::CacheRequest::new(&parts, false);
    assert!(
        node.handle
            .cache()
            .corrupt_for_testing(&creq, &cathedral_cache::RoutePolicy::default())
    );
    (origin, node)
}

#[tokio::test]
async fn a_corrupted_body_is_detected_on_a_hit_evicted_and_refetched() {
    let (origin, node) = corrupted(0).await;
    let (status, _, body) = get(&node.url("/integrity")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "precious"),
        "never the corrupted bytes"
    );
    assert_eq!(origin.count_for("/integrity"), 2);
    assert_eq!(
        metric(&node, "cathedral_cache_integrity_failures_total").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn the_scrubber_finds_corruption_nobody_asked_for() {
    let (origin, node) = corrupted(1000).await;
    tokio::time::timeout(PATIENCE, async {
        while metric(&node, "cathedral_cache_integrity_failures_total").await != Some(1.0) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the scrubber ran and found the corrupted entry");
    let (status, headers, body) = get(&node.url("/integrity")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "precious"));
    // Evicted (or, if the request raced the eviction, rejected on the hit
    // path): either way it went forward, never served from the bad copy.
    assert!(
        cache_status(&headers).contains("fwd="),
        "it was evicted: {}",
        cache_status(&headers)
    );
    assert_eq!(origin.count_for("/integrity"), 2);
}

#[tokio::test]
async fn content_class_defaults_apply_when_the_origin_is_silent() {
    let origin = Origin::start().await;
    origin.script(
        "/img/logo.png",
        Scripted::ok("png", &[("content-type", "image/png")]),
    );
    let node = cached_node(&origin).await;
    let (_, headers, _) = get(&node.url("/img/logo.png")).await;
    assert!(
        cache_status(&headers).contains("ttl=43200"),
        "images: 12 h: {}",
        cache_status(&headers)
    );
    get(&node.url("/img/logo.png")).await;
    assert_eq!(origin.count_for("/img/logo.png"), 1);
}

#[tokio::test]
async fn quick_mode_uses_pure_rfc_freshness() {
    let origin = Origin::start().await;
    origin.script(
        "/img/a.png",
        Scripted::ok("png", &[("content-type", "image/png")]),
    );
    let edge = cathedral_config::quick_upstream(&origin.url(), "us-east-1").unwrap();
    let source = Arc::new(FixedSource(edge.clone()));
    let handle = cathedral_edge::Node::start(loopback_bootstrap(), edge, source)
        .await
        .unwrap();
    let url = format!("http://{}/img/a.png", handle.http_addrs()[0]);
    get(&url).await;
    get(&url).await;
    assert_eq!(
        origin.count_for("/img/a.png"),
        2,
        "no default TTL without freshness information"
    );
}

#[tokio::test]
async fn objects_over_the_size_limit_stream_through_uncached() {
    let origin = Origin::start().await;
    let big = "b".repeat(3 * 1024 * 1024);
    origin.script(
        "/big",
        Scripted::ok(&big, &[("cache-control", "max-age=60")]),
    );
    let node = TestNode::start_with(
        &proxy_config(&origin.url()),
        |_| {},
        |b, _| {
            b.cache.max_object_bytes = 1024 * 1024;
        },
    )
    .await;
    let (status, _, body) = get(&node.url("/big")).await;
    assert_eq!((status, body.len()), (StatusCode::OK, big.len()));
    get(&node.url("/big")).await;
    assert_eq!(origin.count_for("/big"), 2);
}

#[tokio::test]
async fn routes_can_turn_caching_off() {
    let origin = Origin::start().await;
    origin.script("/n", Scripted::ok("n", &[("cache-control", "max-age=60")]));
    let config = format!(
        "[upstreams.origin]\ntargets = [\"{}\"]\n[routes.all]\npath = \"/\"\nupstream = \"origin\"\ncache = false\n",
        origin.url()
    );
    let node = TestNode::start(&config).await;
    let (_, headers, _) = get(&node.url("/n")).await;
    assert!(headers.get("cache-status").is_none());
    get(&node.url("/n")).await;
    assert_eq!(origin.count_for("/n"), 2);
}
