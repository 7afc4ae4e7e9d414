//! Wasm modules through the node: the personalize and compliance filters on
//! real routes (personalisation after the cache, 451 by country, consent,
//! redaction), a handler route and its backends, hostile guests (runaway,
//! memory bomb, panic, an import we do not provide) and their fail
//! policies, a hot swap under load, and the demo configuration as shipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cathedral_config::{Bootstrap, Overrides};
use cathedral_e2e::*;
use cathedral_edge::Node;
use cathedral_wasm_test_artifacts as guests;
use http::{Request, StatusCode};

/// The client's country arrives in `x-country` from a trusted proxy (every
/// test client is on 127.0.0.1).
fn country_from_header(bootstrap: &mut Bootstrap, _: &Path) {
    bootstrap.country_header = Some(http::HeaderName::from_static("x-country"));
    bootstrap.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
}

async fn get_with(url: &str, headers: &[(&str, &str)]) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(req.body(full("")).unwrap()).await
}

/// A module metric sample, 0 when absent.
async fn module_metric(node: &TestNode, name: &str, labels: &str) -> f64 {
    metric(node, &format!("{name}{{{labels}}}"))
        .await
        .unwrap_or(0.0)
}

async fn module_errors(node: &TestNode, module: &str, kind: &str) -> f64 {
    module_metric(
        node,
        "cathedral_module_errors_total",
        &format!("module=\"{module}\",kind=\"{kind}\""),
    )
    .await
}

/// Waits (bounded) until `module` has been called at least `n` times.
async fn wait_calls(node: &TestNode, module: &str, n: f64) {
    let labels = format!("module=\"{module}\"");
    tokio::time::timeout(PATIENCE, async {
        while module_metric(node, "cathedral_module_calls_total", &labels).await < n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the module was called in time");
}

// ---------------------------------------------------------------------------
// personalize

const PAGE: &str = "<!doctype html><p id=hero>{{user.variant}}</p><p id=nav>{{flag.new-nav}}</p>";

fn personalize_config(origin: &str) -> String {
    format!(
        r#"
[upstreams.origin]
targets = ["{origin}"]

[modules.personalize]
path = "{path}"

[modules.personalize.config]
primary = "hero"

[modules.personalize.config.experiment]
hero = ["control", "bold"]

[modules.personalize.config.flag]
new-nav = "50%"

[routes.site]
path = "/"
upstream = "origin"
user_id = "cookie:uid"
filters = [{{ module = "personalize", fail = "open", response_body = true }}]
"#,
        path = guests::PERSONALIZE
    )
}

#[tokio::test]
async fn personalize_runs_after_the_cache_one_generic_copy_many_users() {
    let origin = Origin::start().await;
    origin.script(
        "/page",
        Scripted::ok(
            PAGE,
            &[
                ("content-type", "text/html; charset=utf-8"),
                ("cache-control", "public, max-age=300"),
                ("etag", "\"page-v1\""),
            ],
        ),
    );
    let node = TestNode::start(&personalize_config(&origin.url())).await;

    let mut first: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..12 {
        let user = format!("user-{i}");
        let cookie = format!("uid={user}");
        let (status, headers, body) = get_with(&node.url("/page"), &[("cookie", &cookie)]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(!body.contains("{{"), "placeholders filled in: {body}");
        let assigned = headers["x-personalization"].to_str().unwrap();
        assert!(assigned.starts_with("variant.hero="), "{assigned}");
        assert!(
            headers["cache-control"]
                .to_str()
                .unwrap()
                .starts_with("private"),
            "a personalised answer is private downstream: {headers:?}"
        );
        assert!(
            headers["etag"].to_str().unwrap().starts_with("W/"),
            "the body changed: the validator is weak"
        );
        first.insert(user, body);
    }
    assert_eq!(
        origin.count_for("/page"),
        1,
        "the generic copy is fetched once and cached; personalisation happens after the cache"
    );
    // A HEAD of the personalised page does not claim the generic copy's
    // length (the GET it stands for is rendered per user).
    let head = Request::head(node.url("/page"))
        .header("cookie", "uid=user-1")
        .body(full(""))
        .unwrap();
    let (status, headers, _) = send(head).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !headers.contains_key("content-length"),
        "no unpersonalised length on HEAD: {headers:?}"
    );
    // Both hooks of a request share one instance on a hit; the miss
    // released its instance before the origin fetch and made another for
    // on-response: 13 requests, 26 calls, 12 + 2 instances.
    let labels = "module=\"personalize\"";
    assert_eq!(
        module_metric(&node, "cathedral_module_calls_total", labels).await,
        26.0
    );
    assert_eq!(
        module_metric(&node, "cathedral_module_instances_total", labels).await,
        14.0
    );
    let heroes: BTreeSet<&str> = first
        .values()
        .map(|b| {
            b.split("<p id=hero>")
                .nth(1)
                .unwrap()
                .split('<')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(
        heroes,
        BTreeSet::from(["bold", "control"]),
        "users get different variants of one cached page"
    );
    let navs: BTreeSet<&str> = first
        .values()
        .map(|b| {
            b.split("<p id=nav>")
                .nth(1)
                .unwrap()
                .split('<')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(navs, BTreeSet::from(["off", "on"]), "a 50% rollout");

    // Each user's variant is stable across requests (all cache hits).
    for (user, body) in &first {
        let cookie = format!("uid={user}");
        let (_, headers, again) = get_with(&node.url("/page"), &[("cookie", &cookie)]).await;
        assert_eq!(&again, body, "{user}");
        assert!(
            headers["cache-status"].to_str().unwrap().contains("hit"),
            "{headers:?}"
        );
    }
    // Anonymous visitors get the first variant, every flag off, and a
    // shareable answer.
    let (_, headers, body) = get(&node.url("/page")).await;
    assert!(
        body.contains("<p id=hero>control</p><p id=nav>off</p>"),
        "{body}"
    );
    assert!(
        headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("public"),
        "{headers:?}"
    );
    assert_eq!(origin.count_for("/page"), 1);
}

// ---------------------------------------------------------------------------
// compliance

fn compliance_config(origin: &str) -> String {
    format!(
        r#"
[upstreams.origin]
targets = ["{origin}"]

[modules.compliance]
path = "{path}"

[[modules.compliance.config.blocks]]
paths = ["/offers/betting"]
countries = ["DE", "FR"]
policy = "https://example.com/legal/gambling"
reason = "No licence here."

[modules.compliance.config.consent]
required = true
cookie = "consent"

[modules.compliance.config.strip]
cookies = ["_ga", "_ga_*", "_fbp"]
headers = ["x-tracking-id"]

[modules.compliance.config.redact]
fields = ["email", "iban"]
paths = ["/api/"]

[modules.compliance.config.headers]
x-data-region = "eu"

[routes.all]
path = "/"
upstream = "origin"
cache = false
filters = [{{ module = "compliance", response_body = true }}]
"#,
        path = guests::COMPLIANCE
    )
}

/// The test GeoIP database maps loopback to DE (tests/fixtures/geoip).
fn country_from_geoip(bootstrap: &mut Bootstrap, _: &Path) {
    bootstrap.geoip_db =
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/geoip/test-country.mmdb"));
}

#[tokio::test]
async fn the_country_comes_from_the_geoip_database_when_no_header_gives_one() {
    let origin = Origin::start().await;
    let node = TestNode::start_with(
        &compliance_config(&origin.url()),
        |_| {},
        country_from_geoip,
    )
    .await;
    // 127.0.0.1 is in DE by the test database: blocked.
    let (status, _, body) = get(&node.url("/offers/betting")).await;
    assert_eq!(status.as_u16(), 451, "{body}");
    assert_eq!(origin.requests(), 0);
    // A country header from a trusted proxy wins over the database.
    let node = TestNode::start_with(
        &compliance_config(&origin.url()),
        |_| {},
        |b, p| {
            country_from_geoip(b, p);
            country_from_header(b, p);
        },
    )
    .await;
    let (status, _, body) = get_with(&node.url("/offers/betting"), &[("x-country", "US")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = get(&node.url("/offers/betting")).await;
    assert_eq!(status.as_u16(), 451, "no header: the database decides");
}

#[tokio::test]
async fn compliance_answers_451_with_the_policy_for_a_blocked_path_and_country() {
    let origin = Origin::start().await;
    let node = TestNode::start_with(
        &compliance_config(&origin.url()),
        |_| {},
        country_from_header,
    )
    .await;
    for country in ["DE", "fr"] {
        let (status, headers, body) = get_with(
            &node.url("/offers/betting/today"),
            &[("x-country", country)],
        )
        .await;
        assert_eq!(status.as_u16(), 451, "{country}: {body}");
        assert_eq!(
            headers["link"],
            "<https://example.com/legal/gambling>; rel=\"blocked-by\""
        );
        assert!(body.contains("No licence here."), "{body}");
        assert_eq!(headers["x-data-region"], "eu");
    }
    assert_eq!(
        origin.requests(),
        0,
        "a blocked request never leaves the edge"
    );
    // Another country, no country, another path: served.
    for (path, country) in [
        ("/offers/betting", Some("US")),
        ("/offers/betting", None),
        ("/offers/other", Some("DE")),
    ] {
        let headers: Vec<(&str, &str)> = country.map(|c| ("x-country", c)).into_iter().collect();
        let (status, _, body) = get_with(&node.url(path), &headers).await;
        assert_eq!(status, StatusCode::OK, "{path} {country:?}: {body}");
        assert_eq!(body, format!("origin:{path}"));
    }
}

#[tokio::test]
async fn compliance_strips_tracking_without_consent_both_ways() {
    let origin = Origin::start().await;
    origin.script(
        "/login",
        Scripted::ok(
            "welcome",
            &[
                ("set-cookie", "session=s2; Path=/; HttpOnly"),
                ("set-cookie", "_ga=GA1.2.3; Path=/; Max-Age=63072000"),
                ("set-cookie", "_fbp=fb.1.2; Path=/"),
            ],
        ),
    );
    let node = TestNode::start(&compliance_config(&origin.url())).await;
    let tracking = "_ga=GA1.1; session=s1; _ga_ABC=GS1; _fbp=fb.1";

    // No consent: tracking cookies and headers never reach the origin...
    let (status, _, body) = get_with(
        &node.url("/echo"),
        &[("cookie", tracking), ("x-tracking-id", "t-1")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = echo_headers(&body);
    assert_eq!(seen["cookie"], ["session=s1"], "{body}");
    assert!(!seen.contains_key("x-tracking-id"), "{body}");
    // ...and the origin's tracking Set-Cookies never reach the client.
    let (_, headers, _) = get(&node.url("/login")).await;
    let set: Vec<&str> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(set, ["session=s2; Path=/; HttpOnly"]);

    // A refusal recorded in the consent cookie is no consent.
    let refused = format!("{tracking}; consent=denied");
    let (_, _, body) = get_with(&node.url("/echo"), &[("cookie", &refused)]).await;
    assert_eq!(
        echo_headers(&body)["cookie"],
        ["session=s1; consent=denied"]
    );

    // With consent everything passes.
    let consented = format!("{tracking}; consent=yes");
    let (_, _, body) = get_with(
        &node.url("/echo"),
        &[("cookie", &consented), ("x-tracking-id", "t-1")],
    )
    .await;
    let seen = echo_headers(&body);
    assert_eq!(seen["cookie"], [consented.as_str()], "{body}");
    assert_eq!(seen["x-tracking-id"], ["t-1"]);
    let (_, headers, _) = get_with(&node.url("/login"), &[("cookie", "consent=yes")]).await;
    assert_eq!(headers.get_all("set-cookie").iter().count(), 3);
}

#[tokio::test]
async fn compliance_redacts_json_fields_in_api_answers() {
    let origin = Origin::start().await;
    let json = r#"{"name":"Ada","email":"ada@example.com","accounts":[{"iban":"DE89370400440532013000","currency":"EUR"}]}"#;
    for path in ["/api/profile", "/public/profile"] {
        origin.script(
            path,
            Scripted::ok(
                json,
                &[("content-type", "application/json"), ("etag", "\"p1\"")],
            ),
        );
    }
    let node = TestNode::start(&compliance_config(&origin.url())).await;
    let (status, headers, body) = get(&node.url("/api/profile")).await;
    assert_eq!(status, StatusCode::OK);
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(value["name"], "Ada");
    assert_eq!(value["email"], "[redacted]");
    assert_eq!(value["accounts"][0]["iban"], "[redacted]");
    assert_eq!(value["accounts"][0]["currency"], "EUR");
    assert_eq!(
        headers["content-length"].to_str().unwrap(),
        body.len().to_string()
    );
    assert_eq!(headers["etag"], "W/\"p1\"", "the representation changed");
    assert_eq!(headers["x-data-region"], "eu");
    // Outside the redacted paths the JSON passes untouched.
    let (_, headers, body) = get(&node.url("/public/profile")).await;
    assert_eq!(body, json);
    assert_eq!(headers["etag"], "\"p1\"");
}

// ---------------------------------------------------------------------------
// handlers

#[tokio::test]
async fn a_handler_route_answers_and_reaches_only_its_backends() {
    let origin = Origin::start().await;
    let stranger = Origin::start().await;
    let config = format!(
        r#"
[upstreams.origin]
targets = ["{origin}"]

[upstreams.other]
targets = ["{stranger}"]

[modules.hello]
path = "{path}"

[modules.hello.config]
greeting = "hello from the edge"

[routes.app]
path = "/"
handler = "hello"
backends = ["origin"]
cache = false
user_id = "header:x-user"

[routes.app.response_headers]
x-served-by = "handler"
"#,
        origin = origin.url(),
        stranger = stranger.url(),
        path = guests::HELLO_HANDLER
    );
    let node = TestNode::start(&config).await;

    let (status, headers, body) = get(&node.url("/greet?x=1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "hello from the edge /greet?x=1\n");
    assert_eq!(headers["x-served-by"], "handler");
    let (_, _, body) = get_with(&node.url("/user"), &[("x-user", "ada")]).await;
    assert_eq!(body, "ada", "the route's user id reaches the handler");

    // Its backend, by upstream name or by its configured origin.
    for url in ["http://origin/x".to_owned(), format!("{}/y", origin.url())] {
        let (status, _, body) = get(&node.url(&format!("/fetch?url={url}"))).await;
        assert_eq!(status, StatusCode::OK, "{url}: {body}");
        assert!(body.starts_with("origin:/"), "{body}");
    }
    assert_eq!(origin.requests(), 2);

    // Anything else is refused before a connection is made: an upstream the
    // route does not name, the admin API, the node itself.
    for url in [
        format!("{}/x", stranger.url()),
        "http://other/x".to_owned(),
        node.admin_url("/metrics"),
        node.url("/greet"),
    ] {
        let (status, _, body) = get(&node.url(&format!("/fetch?url={url}"))).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{url}: {body}");
        assert!(body.contains("HttpRequestDenied"), "{url}: {body}");
    }
    assert_eq!(stranger.requests(), 0);
    assert_eq!(origin.requests(), 2);
}

// ---------------------------------------------------------------------------
// hostile guests

/// Two runaway filters on a 2-worker node: a request on another route is
/// answered while both spin; then each is stopped at its CPU deadline and
/// answered 503 (fail closed), with the timeouts counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_filter_fails_closed_while_other_routes_keep_serving() {
    let origin = Origin::start().await;
    let config = format!(
        r#"
[upstreams.origin]
targets = ["{origin}"]

[modules.spin]
path = "{path}"
cpu_deadline = "2s"

[routes.spin]
path = "/spin"
upstream = "origin"
cache = false
filters = ["spin"]

[routes.ok]
path = "/"
upstream = "origin"
cache = false
"#,
        origin = origin.url(),
        path = guests::INFINITE_LOOP
    );
    let node = TestNode::start(&config).await;
    let runaways: Vec<_> = (0..2)
        .map(|_| {
            let url = node.url("/spin");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    wait_calls(&node, "spin", 2.0).await;

    let (status, _, body) = get(&node.url("/healthy")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "origin:/healthy"));
    assert!(
        runaways.iter().all(|r| !r.is_finished()),
        "the healthy request was answered while both runaways still ran"
    );
    for runaway in runaways {
        let (status, _, body) = runaway.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("module spin failed"), "{body}");
    }
    assert_eq!(module_errors(&node, "spin", "timeout").await, 2.0);
    assert_eq!(
        origin.count_for("/spin"),
        0,
        "a closed failure stops the request"
    );
}

#[tokio::test]
async fn hostile_filters_fail_closed_or_open_as_configured_and_are_counted() {
    let origin = Origin::start().await;
    let config = format!(
        r#"
[upstreams.origin]
targets = ["{origin}"]

[modules.bomb]
path = "{bomb}"
memory = "16MiB"

[modules.boom]
path = "{panic}"

[modules.spin]
path = "{spin}"
cpu_deadline = "20ms"

[routes.bomb]
path = "/bomb"
upstream = "origin"
cache = false
filters = ["bomb"]

[routes.boom]
path = "/boom"
upstream = "origin"
cache = false
filters = ["boom"]

[routes.lenient]
path = "/lenient"
upstream = "origin"
cache = false
filters = [{{ module = "spin", fail = "open" }}]
"#,
        origin = origin.url(),
        bomb = guests::MEMORY_BOMB,
        panic = guests::PANIC,
        spin = guests::INFINITE_LOOP,
    );
    let node = TestNode::start(&config).await;

    let (status, _, body) = get(&node.url("/bomb")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(module_errors(&node, "bomb", "oom").await, 1.0);

    let (status, _, body) = get(&node.url("/boom")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(module_errors(&node, "boom", "trap").await, 1.0);
    assert_eq!(origin.requests(), 0);

    // fail = "open": the runaway is stopped and skipped, the request served.
    let (status, _, body) = get(&node.url("/lenient/x")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "origin:/lenient/x")
    );
    assert_eq!(module_errors(&node, "spin", "timeout").await, 1.0);

    // The node is unharmed: the same module fails the same way again, and
    // one that keeps failing shows in /readyz (the node stays ready).
    for _ in 0..4 {
        let (status, _, _) = get(&node.url("/bomb")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(module_errors(&node, "bomb", "oom").await, 5.0);
    let (status, _, readyz) = get(&node.admin_url("/readyz")).await;
    assert_eq!(status, StatusCode::OK, "{readyz}");
    let readyz: serde_json::Value = serde_json::from_str(&readyz).unwrap();
    let modules = readyz["modules"].as_array().unwrap();
    let bomb = modules.iter().find(|m| m["name"] == "bomb").unwrap();
    assert_eq!(bomb["consecutive_failures"], 5, "{readyz}");
    assert_eq!(bomb["failing"], true, "{readyz}");
    let boom = modules.iter().find(|m| m["name"] == "boom").unwrap();
    assert_eq!(boom["failing"], false, "{readyz}");
}

fn bad_import_config(origin: &str) -> String {
    format!(
        r#"
[upstreams.origin]
targets = ["{origin}"]

[modules.vault]
path = "{path}"

[routes.all]
path = "/"
upstream = "origin"
filters = ["vault"]
"#,
        path = guests::BAD_IMPORT
    )
}

#[tokio::test]
async fn a_module_importing_what_we_do_not_provide_is_refused() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let edge = parse_edge(&bad_import_config(&origin.url()), dir.path()).unwrap();
    let err = Node::start(
        loopback_bootstrap(),
        edge.clone(),
        Arc::new(FixedSource(edge)),
    )
    .await
    .expect_err("the node does not start with a module it cannot link");
    let text = err.to_string();
    assert!(text.contains("vault"), "names the module: {text}");
    assert!(
        text.contains("`fixture:secrets/vault`"),
        "names the import: {text}"
    );

    // On a running node the reload is rejected and service goes on.
    let node = TestNode::proxy_to(&origin).await;
    node.set_config(&bad_import_config(&origin.url()));
    let outcome = node.handle.reload().await;
    assert!(!outcome.activated, "{outcome:?}");
    let errors = outcome.errors.join("\n");
    assert!(errors.contains("`fixture:secrets/vault`"), "{errors}");
    let (status, _, body) = get(&node.url("/still")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "origin:/still"));
}

// ---------------------------------------------------------------------------
// hot swap

/// Generation `n` stamps every response through module `stamp`: the
/// compliance component (odd) or the personalize component (even), so each
/// reload swaps the component itself, not just its settings.
fn stamp_config(origin: &str, n: usize) -> String {
    let module = if n % 2 == 1 {
        format!(
            "path = \"{}\"\n[modules.stamp.config.headers]\nx-stamp = \"compliance-{n}\"\n",
            guests::COMPLIANCE
        )
    } else {
        format!(
            "path = \"{}\"\n[modules.stamp.config]\nheader = \"x-stamp\"\n\
             [modules.stamp.config.experiment]\ngen = [\"personalize-{n}\"]\n",
            guests::PERSONALIZE
        )
    };
    format!(
        r#"
[upstreams.origin]
targets = ["{origin}"]

[routes.all]
path = "/"
upstream = "origin"
cache = false
filters = ["stamp"]

[modules.stamp]
{module}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_swap_under_load_drops_no_request() {
    let origin = Origin::start().await;
    // HTML pages: the personalize generations only stamp HTML.
    for path in ["/x", "/after"] {
        origin.script(
            path,
            Scripted::ok(&format!("origin:{path}"), &[("content-type", "text/html")]),
        );
    }
    let node = Arc::new(TestNode::start(&stamp_config(&origin.url(), 1)).await);
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let stamps = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (node, stop, failures, done, stamps) = (
            node.clone(),
            stop.clone(),
            failures.clone(),
            done.clone(),
            stamps.clone(),
        );
        workers.push(tokio::spawn(async move {
            let client = h1_client();
            // Bounded: at most 5,000 requests per worker.
            for _ in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let req = Request::get(node.url("/x")).body(full("")).unwrap();
                let outcome = match tokio::time::timeout(PATIENCE, client.request(req)).await {
                    Ok(Ok(resp)) => {
                        use http_body_util::BodyExt;
                        let status = resp.status();
                        let stamp = resp
                            .headers()
                            .get("x-stamp")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                        match (status, stamp, body) {
                            (StatusCode::OK, Some(stamp), Ok(body))
                                if &body[..] == b"origin:/x" =>
                            {
                                Ok(stamp)
                            }
                            (status, stamp, body) => {
                                Err(format!("{status} {stamp:?} {:?}", body.map(|b| b.len())))
                            }
                        }
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out".to_owned()),
                };
                match outcome {
                    Ok(stamp) => {
                        stamps.lock().unwrap().insert(stamp);
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Load is flowing before the first swap.
    tokio::time::timeout(PATIENCE, async {
        while done.load(Ordering::Relaxed) < 20 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("requests flow");
    for n in 2..=4 {
        node.set_config(&stamp_config(&origin.url(), n));
        let outcome = node.handle.reload().await;
        assert!(outcome.activated, "{outcome:?}");
        let before = done.load(Ordering::Relaxed);
        tokio::time::timeout(PATIENCE, async {
            while done.load(Ordering::Relaxed) < before + 20 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("requests flow after the swap");
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let stamps = std::mem::take(&mut *stamps.lock().unwrap());
    for expected in ["compliance-1", "variant.gen=personalize-2", "compliance-3"] {
        assert!(
            stamps.contains(expected),
            "{expected} missing from {stamps:?}"
        );
    }
    let (_, headers, _) = get(&node.url("/after")).await;
    assert_eq!(headers["x-stamp"], "variant.gen=personalize-4");
    assert_eq!(node.handle.generation(), 4);
}

// ---------------------------------------------------------------------------
// the demo

/// Starts the shipped demo configuration for `region` on ephemeral ports
/// (no artifact cache: nothing is written into the repository).
async fn demo_node(region: &str) -> cathedral_edge::NodeHandle {
    let node_toml = Path::new(env!("CARGO_MANIFEST_DIR")).join("../edge-config/node.toml");
    let overrides = Overrides {
        region: Some(region.to_owned()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Overrides::default()
    };
    let (mut bootstrap, edge) =
        cathedral_config::load(&node_toml, &overrides).unwrap_or_else(|e| panic!("{e}"));
    bootstrap.wasm.artifact_cache = None;
    Node::start(bootstrap, edge.clone(), Arc::new(FixedSource(edge)))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_demo_site_is_personalised_and_follows_its_region_rules() {
    let eu = demo_node("eu-central-1").await;
    let base = format!("http://{}", eu.http_addrs()[0]);

    let (status, headers, body) = get_with(&format!("{base}/"), &[("cookie", "uid=alice")]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains("{{"), "every placeholder filled in: {body}");
    assert!(
        headers["x-personalization"]
            .to_str()
            .unwrap()
            .contains("variant.hero="),
        "{headers:?}"
    );
    assert_eq!(headers["x-data-region"], "eu");
    let (_, _, again) = get_with(&format!("{base}/"), &[("cookie", "uid=alice")]).await;
    assert_eq!(again, body, "alice's page is stable");

    // Betting offers: 451 in Germany (from the trusted country header),
    // not blocked elsewhere (the page does not exist: 404).
    let url = format!("{base}/offers/sports-betting");
    let (status, headers, _) = get_with(&url, &[("x-client-country", "DE")]).await;
    assert_eq!(status.as_u16(), 451);
    assert!(
        headers["link"]
            .to_str()
            .unwrap()
            .contains("rel=\"blocked-by\""),
        "{headers:?}"
    );
    let (status, _, _) = get_with(&url, &[("x-client-country", "US")]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    eu.shutdown().await;

    // The US overlay has other rules: no betting block, its own header.
    let us = demo_node("us-east-1").await;
    let base = format!("http://{}", us.http_addrs()[0]);
    let (status, headers, _) = get_with(
        &format!("{base}/offers/sports-betting"),
        &[("x-client-country", "DE")],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["x-data-region"], "us");
    let (status, _, _) = get_with(
        &format!("{base}/downloads/enterprise/x.tar.gz"),
        &[("x-client-country", "IR")],
    )
    .await;
    assert_eq!(status.as_u16(), 451);
    us.shutdown().await;
}
