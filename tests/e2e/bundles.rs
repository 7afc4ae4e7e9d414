//! Bundle mode end to end: a real origin server over an origin directory,
//! a node syncing from it, real files on disk. Refusals that keep the
//! active bundle serving, Wasm modules shipped in a bundle, the automatic
//! revert after a failed health watch, `activate --previous`, restarts
//! (crash leftovers, corrupt blobs, persisted high-water marks), root and
//! keyset rotation, push notifications, and deduplicated downloads.

use std::path::Path;
use std::time::Duration;

use cathedral_bundle::{Timestamp, TrustState};
use cathedral_e2e::bundles::*;
use cathedral_e2e::*;
use cathedral_edge::bundles::SyncOutcome;
use cathedral_wasm_test_artifacts as guests;
use http::{Method, Request, StatusCode};
use serde_json::json;
use tokio::time::Instant;

/// The body of version `v`'s site.
fn page(v: u64) -> String {
    format!("<h1>version {v}</h1>")
}

/// Version `v`'s site: its index page says which version it is.
fn site(v: u64) -> Files {
    site_bundle(&page(v))
}

/// An origin with version 1 published, and a node (state in `state`)
/// that activated it in its first sync.
async fn origin_and_node(state: &Path) -> (BundleOrigin, BundleNode) {
    let origin = BundleOrigin::start().await;
    origin.publish(1, &site(1));
    let node = BundleNode::start(bundle_settings(&origin.url, origin.root_hex(), state)).await;
    assert_eq!(node.active_version(), Some(1));
    (origin, node)
}

/// Asserts that `GET /` answers version `v`'s page.
async fn assert_serves(node: &BundleNode, v: u64) {
    let (status, _, body) = get(&node.url("/")).await;
    assert_eq!((status, body), (StatusCode::OK, page(v)));
    assert_eq!(node.active_version(), Some(v));
}

/// Audit entries of `event` whose details have `key` = `value`.
fn audited(entries: &[cathedral_bundle::AuditEntry], event: &str, key: &str, value: &str) -> usize {
    entries
        .iter()
        .filter(|e| e.event == event && e.details[key] == value)
        .count()
}

// ---------------------------------------------------------------------------
// Refusals

/// Version 1 active; `doctor` publishes something bad (syncing first if
/// the case needs a newer state). The next sync must refuse it for
/// `reason`, the node must keep serving what it served, and the refusal
/// must be counted, audited (in a log that still verifies) and reported
/// — and be refused the same way when the origin offers it again.
async fn check(
    name: &str,
    doctor: impl AsyncFnOnce(&BundleOrigin, &BundleNode),
    reason: &'static str,
) {
    let state = tempfile::tempdir().unwrap();
    let (origin, node) = origin_and_node(state.path()).await;
    doctor(&origin, &node).await;
    let serving = node.active_version().expect("a bundle is active");

    let outcome = node.handle.sync_bundles().await;
    assert_eq!(outcome, Some(SyncOutcome::Refused { reason }), "{name}");
    assert_serves(&node, serving).await;
    let sample = format!("cathedral_bundle_refusals_total{{reason=\"{reason}\"}}");
    assert_eq!(node.metric(&sample).await, Some(1.0), "{name}: {sample}");
    let entries = node.audit();
    assert_eq!(
        audited(&entries, "refused", "reason", reason),
        1,
        "{name}: {entries:#?}"
    );
    let status = node.status().await;
    assert_eq!(status["last_refusal"]["reason"], reason, "{name}: {status}");
    assert_eq!(status["active"]["version"], serving, "{name}: {status}");

    let again = node.handle.sync_bundles().await;
    assert_eq!(
        again,
        Some(SyncOutcome::Refused { reason }),
        "{name}, again"
    );
    let status = node.status().await;
    assert_eq!(status["last_sync"]["result"], "refused", "{name}: {status}");
    assert_serves(&node, serving).await;
    node.stop().await;
}

#[tokio::test]
async fn refusals_of_tampered_origins_keep_the_active_bundle_serving() {
    check(
        "a blob tampered on the origin",
        async |o: &BundleOrigin, _: &BundleNode| {
            o.publish(2, &site(2));
            let blob = o.put_blob(page(2).as_bytes());
            std::fs::write(blob, page(2).replace('2', "X")).unwrap();
        },
        "hash-mismatch",
    )
    .await;
    check(
        "a blob longer than the manifest says",
        async |o: &BundleOrigin, _: &BundleNode| {
            o.publish(2, &site(2));
            let blob = o.put_blob(page(2).as_bytes());
            std::fs::write(blob, format!("{}<script>evil()</script>", page(2))).unwrap();
        },
        "size-mismatch",
    )
    .await;
    check(
        "a blob shorter than the manifest says",
        async |o: &BundleOrigin, _: &BundleNode| {
            o.publish(2, &site(2));
            let blob = o.put_blob(page(2).as_bytes());
            std::fs::write(blob, "<h1>v2</h1>").unwrap();
        },
        "size-mismatch",
    )
    .await;
    check(
        "a manifest signed by a key not in the keyset",
        async |o: &BundleOrigin, _: &BundleNode| {
            let manifest = o.manifest(2, &site(2));
            o.publish_signed(&manifest, &site(2), &[&key(99)], &[&o.signers[0]]);
        },
        "unknown-key",
    )
    .await;
    check(
        "a head signed by a key not in the keyset",
        async |o: &BundleOrigin, _: &BundleNode| {
            let hash = o.publish(2, &site(2));
            let head = o.head(2, &hash, o.manifest_size(&hash));
            o.put_head(&head, &[&key(99)]);
        },
        "unknown-key",
    )
    .await;
}

#[tokio::test]
async fn refusals_of_documents_out_of_place_keep_the_active_bundle_serving() {
    check(
        "a manifest for another region",
        async |o: &BundleOrigin, _: &BundleNode| {
            let mut manifest = o.manifest(2, &site(2));
            manifest.regions = vec!["us-east-1".into()];
            o.publish_manifest(&manifest, &site(2), &[&o.signers[0]]);
        },
        "wrong-scope",
    )
    .await;
    check(
        "an expired head",
        async |o: &BundleOrigin, _: &BundleNode| {
            let hash = o.publish(2, &site(2));
            let mut head = o.head(2, &hash, o.manifest_size(&hash));
            let now = Timestamp::now().unix();
            head.issued = Timestamp::from_unix(now - 7200);
            head.expires = Timestamp::from_unix(now - 3600);
            o.put_head(&head, &[&o.signers[0]]);
        },
        "expired",
    )
    .await;
    check(
        "version 1's head replayed after version 2 is active",
        async |o: &BundleOrigin, n: &BundleNode| {
            let old_head = o.read(&o.head_path());
            o.publish(2, &site(2));
            assert_eq!(
                n.handle.sync_bundles().await,
                Some(SyncOutcome::Activated { version: 2 })
            );
            o.write(&o.head_path(), &old_head);
        },
        "rollback",
    )
    .await;
    check(
        "keyset version 1 replayed after version 2 was accepted",
        async |o: &BundleOrigin, n: &BundleNode| {
            let old_keyset = o.read("keyset.json");
            let keyset = o.keyset(2, &[("signer-a", &key(10))]);
            o.put_keyset(&keyset, &[&key(1), &key(2)]);
            assert_eq!(n.handle.sync_bundles().await, Some(SyncOutcome::Unchanged));
            assert_eq!(n.status().await["keyset_version"], 2);
            o.write("keyset.json", &old_keyset);
        },
        "rollback",
    )
    .await;
}

#[tokio::test]
async fn refusals_of_bundles_the_node_cannot_run_keep_the_active_bundle_serving() {
    check(
        "a manifest listing a ../ path",
        async |o: &BundleOrigin, _: &BundleNode| {
            let mut files = site(2);
            files.add("../escape.txt", b"outside the bundle", "text/plain");
            o.publish(2, &files);
        },
        "invalid-path",
    )
    .await;
    check(
        "an edge config whose route names a missing upstream",
        async |o: &BundleOrigin, _: &BundleNode| {
            let mut files = Files::new(
                r#"
[routes.site]
path = "/"
upstream = "nowhere"
"#,
            );
            files.add("static/site/index.html", page(2).as_bytes(), "text/html");
            o.publish(2, &files);
        },
        "config",
    )
    .await;
    check(
        "a module that is not a component",
        async |o: &BundleOrigin, _: &BundleNode| {
            let mut files = Files::new(
                r#"
[modules.x]
path = "../modules/x.wasm"

[routes.site]
path = "/"
static = "../static/site"
filters = ["x"]
"#,
            );
            files
                .add("static/site/index.html", page(2).as_bytes(), "text/html")
                .add(
                    "modules/x.wasm",
                    b"\0asm but not really",
                    "application/wasm",
                );
            o.publish(2, &files);
        },
        "preflight",
    )
    .await;
    check(
        "a bundle for a newer runtime",
        async |o: &BundleOrigin, _: &BundleNode| {
            let mut manifest = o.manifest(2, &site(2));
            manifest.min_runtime = "99.0.0".into();
            o.publish_manifest(&manifest, &site(2), &[&o.signers[0]]);
        },
        "runtime-too-old",
    )
    .await;
}

// ---------------------------------------------------------------------------
// Wasm modules in a bundle

/// A bundle shipping a filter (personalize, on the static site) and a
/// handler (hello, on /app) as its own files.
fn wasm_bundle(greeting: &str) -> Files {
    let mut files = Files::new(&format!(
        r#"
[modules.personalize]
path = "../modules/personalize.wasm"

[modules.personalize.config]
primary = "hero"

[modules.personalize.config.experiment]
hero = ["control", "bold"]

[modules.hello]
path = "../modules/hello.wasm"

[modules.hello.config]
greeting = "{greeting}"

[routes.app]
path = "/app"
handler = "hello"

[routes.site]
path = "/"
static = "../static/site"
user_id = "cookie:uid"
filters = [{{ module = "personalize", fail = "open", response_body = true }}]
"#
    ));
    files
        .add(
            "static/site/index.html",
            b"<!doctype html><p id=hero>{{user.variant}}</p>",
            "text/html; charset=utf-8",
        )
        .add(
            "modules/personalize.wasm",
            &std::fs::read(guests::PERSONALIZE).unwrap(),
            "application/wasm",
        )
        .add(
            "modules/hello.wasm",
            &std::fs::read(guests::HELLO_HANDLER).unwrap(),
            "application/wasm",
        );
    files
}

#[tokio::test]
async fn a_bundle_ships_its_wasm_filter_and_handler() {
    let state = tempfile::tempdir().unwrap();
    let (origin, node) = origin_and_node(state.path()).await;
    origin.publish(2, &wasm_bundle("hello from bundle 2"));
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Activated { version: 2 })
    );

    // The filter rewrites the bundle's page: an anonymous visitor sees the
    // first variant, a known one gets an assignment header.
    let (status, headers, body) = get(&node.url("/")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "<!doctype html><p id=hero>control</p>");
    assert!(headers.contains_key("x-personalization"), "{headers:?}");
    let req = Request::get(node.url("/"))
        .header("cookie", "uid=ada")
        .body(full(""))
        .unwrap();
    let (status, headers, body) = send(req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!body.contains("{{"), "{body}");
    let assigned = headers["x-personalization"].to_str().unwrap();
    assert!(assigned.starts_with("variant.hero="), "{assigned}");
    let calls = node
        .metric("cathedral_module_calls_total{module=\"personalize\"}")
        .await;
    assert!(calls.is_some_and(|n| n >= 2.0), "{calls:?}");

    // The handler answers with the config the bundle gave it.
    let (status, _, body) = get(&node.url("/app/x")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("hello from bundle 2 /app/x"), "{body}");

    // A new version with other module config reaches the module.
    origin.publish(3, &wasm_bundle("hello from bundle 3"));
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Activated { version: 3 })
    );
    let (_, _, body) = get(&node.url("/app/x")).await;
    assert!(body.starts_with("hello from bundle 3 /app/x"), "{body}");
    node.stop().await;
}

// ---------------------------------------------------------------------------
// Reverts

/// Version `v` of the site with a filter that panics (fail closed).
fn panicking_site(v: u64) -> Files {
    let mut files = Files::new(
        r#"
[modules.boom]
path = "../modules/boom.wasm"

[routes.site]
path = "/"
static = "../static/site"
filters = ["boom"]
"#,
    );
    files
        .add(
            "static/site/index.html",
            page(v).as_bytes(),
            "text/html; charset=utf-8",
        )
        .add(
            "modules/boom.wasm",
            &std::fs::read(guests::PANIC).unwrap(),
            "application/wasm",
        );
    files
}

#[tokio::test]
async fn a_bundle_that_fails_its_health_watch_is_reverted_and_quarantined() {
    let state = tempfile::tempdir().unwrap();
    let origin = BundleOrigin::start().await;
    origin.publish(1, &site(1));
    let mut settings = bundle_settings(&origin.url, origin.root_hex(), state.path());
    settings.health_grace = Duration::from_secs(2);
    // The node's own first sync watches version 1 for the grace period.
    let node = BundleNode::start(settings).await;
    assert_serves(&node, 1).await;

    origin.publish(2, &panicking_site(2));
    let requests = async {
        let deadline = Instant::now() + PATIENCE;
        let mut unavailable = 0;
        while unavailable < 6 {
            assert!(Instant::now() < deadline, "version 2 never answered 503");
            let (status, _, _) = get(&node.url("/")).await;
            if status == StatusCode::SERVICE_UNAVAILABLE {
                unavailable += 1;
            } else {
                assert_eq!(status, StatusCode::OK);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let (outcome, ()) = tokio::join!(node.handle.sync_bundles(), requests);
    // The sync reports what it activated; the revert that followed its
    // health watch shows in /bundles, the audit log and the metrics.
    assert_eq!(outcome, Some(SyncOutcome::RolledBack { version: 2, to: 1 }));

    assert_serves(&node, 1).await;
    let status = node.status().await;
    assert_eq!(status["quarantined"], 2, "{status}");
    assert_eq!(status["high_water"], 2, "{status}");
    assert_eq!(status["previous"], json!([]), "{status}");
    let entries = node.audit();
    let reverts: Vec<_> = entries
        .iter()
        .filter(|e| e.event == "rolled-back")
        .collect();
    assert_eq!(reverts.len(), 1, "{entries:#?}");
    assert_eq!(reverts[0].details["trigger"], "health");
    assert_eq!(
        (
            reverts[0].details["from"].as_u64(),
            reverts[0].details["to"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(
        node.metric("cathedral_bundle_rollbacks_total").await,
        Some(1.0)
    );

    // The quarantined version is not activated again...
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Unchanged)
    );
    assert_serves(&node, 1).await;
    // ...a newer, healthy one is.
    origin.publish(3, &site(3));
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Activated { version: 3 })
    );
    assert_serves(&node, 3).await;
    let status = node.status().await;
    assert_eq!(status["quarantined"], json!(null), "{status}");
    assert_eq!(status["previous"], json!([1]), "{status}");
    node.stop().await;
}

#[tokio::test]
async fn an_operator_activates_the_previous_bundle() {
    let state = tempfile::tempdir().unwrap();
    let (origin, node) = origin_and_node(state.path()).await;
    origin.publish(2, &site(2));
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Activated { version: 2 })
    );

    let (status, body) = admin_request(Method::POST, &node.admin("/bundles/previous"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer, json!({"from": 2, "to": 1}));
    assert_serves(&node, 1).await;
    assert_eq!(node.status().await["quarantined"], 2);
    let entries = node.audit();
    assert_eq!(
        audited(&entries, "rolled-back", "trigger", "operator"),
        1,
        "{entries:#?}"
    );

    // Version 2 stays quarantined; nothing older is left to go back to.
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Unchanged)
    );
    assert_serves(&node, 1).await;
    let (status, body) = admin_request(Method::POST, &node.admin("/bundles/previous"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    origin.publish(3, &site(3));
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Activated { version: 3 })
    );
    assert_serves(&node, 3).await;
    node.stop().await;
}

#[tokio::test]
async fn activate_previous_needs_a_kept_bundle() {
    let state = tempfile::tempdir().unwrap();
    let origin = BundleOrigin::start().await;
    origin.publish(1, &site(1));
    let mut settings = bundle_settings(&origin.url, origin.root_hex(), state.path());
    settings.keep = 1;
    let node = BundleNode::start(settings).await;
    origin.publish(2, &site(2));
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Activated { version: 2 })
    );
    assert_eq!(node.status().await["previous"], json!([]));

    let (status, body) = admin_request(Method::POST, &node.admin("/bundles/previous"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("no previous bundle")),
        "{answer}"
    );
    assert_serves(&node, 2).await;
    node.stop().await;
}

// ---------------------------------------------------------------------------
// Restarts and crash safety

/// A node started on `state` as a restarted process would be, syncing
/// from `origin_url`.
async fn restart(state: &Path, origin_url: &str, root_hex: Vec<String>) -> BundleNode {
    BundleNode::start(bundle_settings(origin_url, root_hex, state)).await
}

#[tokio::test]
async fn a_restarted_node_serves_its_bundle_without_the_origin() {
    let state = tempfile::tempdir().unwrap();
    let (mut origin, node) = origin_and_node(state.path()).await;
    node.stop().await;
    origin.stop().await;

    let unreachable = Unreachable::new();
    let node = restart(state.path(), &unreachable.url, origin.root_hex()).await;
    assert_serves(&node, 1).await;
    let (status, _, body) = get(&node.admin("/readyz")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let status = node.status().await;
    assert_eq!(status["last_sync"]["result"], "failed", "{status}");
    assert_eq!(node.handle.sync_bundles().await, Some(SyncOutcome::Failed));
    assert_serves(&node, 1).await;
    let entries = node.audit();
    assert_eq!(
        entries
            .last()
            .map(|e| (e.event.as_str(), e.details["version"].as_u64())),
        Some(("started", Some(1))),
        "{entries:#?}"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_corrupt_blob_at_start_falls_back_to_the_previous_bundle() {
    let state = tempfile::tempdir().unwrap();
    let (origin, node) = origin_and_node(state.path()).await;
    origin.publish(2, &site(2));
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Activated { version: 2 })
    );
    node.stop().await;

    // Same size, other bytes: only the hash can tell.
    let blob = stored_blob(state.path(), page(2).as_bytes());
    std::fs::write(&blob, page(2).replace('2', "X")).unwrap();
    let unreachable = Unreachable::new();
    let node = restart(state.path(), &unreachable.url, origin.root_hex()).await;
    assert_serves(&node, 1).await;
    let entries = node.audit();
    assert_eq!(
        audited(&entries, "refused", "stage", "start"),
        1,
        "{entries:#?}"
    );
    assert_eq!(
        audited(&entries, "rolled-back", "trigger", "start"),
        1,
        "{entries:#?}"
    );
    assert_eq!(node.status().await["previous"], json!([]));
    node.stop().await;
}

#[tokio::test]
async fn a_blob_that_failed_verification_at_start_is_fetched_again() {
    // Larger than what static routes read whole (and check) on every
    // request: such files stream from the store as they are.
    let big = "0123456789abcdef".repeat(20 * 1024);
    let with_big = |v: u64| {
        let mut files = site(v);
        files.add("static/site/big.txt", big.as_bytes(), "text/plain");
        files
    };
    let state = tempfile::tempdir().unwrap();
    let (origin, node) = origin_and_node(state.path()).await;
    origin.publish(2, &with_big(2));
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Activated { version: 2 })
    );
    node.stop().await;

    let blob = stored_blob(state.path(), big.as_bytes());
    std::fs::write(&blob, big.replacen('0', "X", 1)).unwrap();
    let node = restart(state.path(), &origin.url, origin.root_hex()).await;
    // The start fell back to version 1; version 2 failed on this disk, not
    // in service, so it is not quarantined: the first sync fetched it again
    // — only the file that failed its hash — and serves it.
    assert_serves(&node, 2).await;
    assert_eq!(
        node.metric("cathedral_bundle_fetched_bytes_total")
            .await
            .unwrap(),
        big.len() as f64
    );
    assert_eq!(node.status().await["quarantined"], serde_json::Value::Null);
    let (status, _, body) = get(&node.url("/big.txt")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == big, "big.txt as published");
    node.stop().await;
}

#[tokio::test]
async fn a_corrupt_blob_at_start_without_a_previous_bundle_serves_nothing() {
    let state = tempfile::tempdir().unwrap();
    let (origin, node) = origin_and_node(state.path()).await;
    node.stop().await;

    let blob = stored_blob(state.path(), page(1).as_bytes());
    std::fs::write(&blob, page(1).replace('1', "X")).unwrap();
    let unreachable = Unreachable::new();
    let node = restart(state.path(), &unreachable.url, origin.root_hex()).await;
    assert_eq!(node.active_version(), None);
    let (status, _, _) = get(&node.url("/")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = get(&node.admin("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("no bundle activated yet"), "{body}");
    let entries = node.audit();
    assert_eq!(
        audited(&entries, "refused", "stage", "start"),
        1,
        "{entries:#?}"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_crash_after_staging_leaves_the_old_bundle_active() {
    let state = tempfile::tempdir().unwrap();
    let (origin, node) = origin_and_node(state.path()).await;
    node.stop().await;

    // What a crash after staging version 2's blob leaves: a temp file, the
    // blob in the store, current.json still naming version 1.
    let tmp = state.path().join("tmp");
    std::fs::write(tmp.join("blob-1234.partial"), b"half a blob").unwrap();
    let v2 = site(2);
    let (index, _) = &v2.0["static/site/index.html"];
    let blob = stored_blob(state.path(), index);
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::write(&blob, index).unwrap();

    let node = restart(state.path(), &origin.url, origin.root_hex()).await;
    assert_serves(&node, 1).await;
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "tmp/ is emptied"
    );

    let fetched = "cathedral_bundle_fetched_bytes_total";
    let before = node.metric(fetched).await.unwrap();
    origin.publish(2, &v2);
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Activated { version: 2 })
    );
    assert_serves(&node, 2).await;
    assert_eq!(
        node.metric(fetched).await.unwrap() - before,
        0.0,
        "the staged blob was kept and not fetched again"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_failed_commit_keeps_the_old_bundle_and_is_retried() {
    let state = tempfile::tempdir().unwrap();
    let (origin, node) = origin_and_node(state.path()).await;
    // The state directory cannot take a new current.json (as with a full
    // disk): a directory stands where the file is renamed to.
    let current = state.path().join("current.json");
    let saved = std::fs::read(&current).unwrap();
    std::fs::remove_file(&current).unwrap();
    std::fs::create_dir(&current).unwrap();
    origin.publish(2, &site(2));
    assert_eq!(node.handle.sync_bundles().await, Some(SyncOutcome::Failed));
    assert_serves(&node, 1).await;
    assert_eq!(node.status().await["high_water"], 1);
    let tmp = state.path().join("tmp");
    assert_eq!(
        std::fs::read_dir(tmp).unwrap().count(),
        0,
        "no temp file left"
    );

    // Once the disk is fine again, the next sync activates version 2.
    std::fs::remove_dir(&current).unwrap();
    std::fs::write(&current, saved).unwrap();
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Activated { version: 2 })
    );
    assert_serves(&node, 2).await;
    node.stop().await;
}

#[tokio::test]
async fn a_persisted_high_water_mark_refuses_rollbacks_after_restart() {
    // Node A activates version 1; node B, later, version 5.
    let state_a = tempfile::tempdir().unwrap();
    let state_b = tempfile::tempdir().unwrap();
    let (origin, node_a) = origin_and_node(state_a.path()).await;
    node_a.stop().await;
    origin.publish(5, &site(5));
    let node_b = restart(state_b.path(), &origin.url, origin.root_hex()).await;
    assert_serves(&node_b, 5).await;
    node_b.stop().await;

    // A's state with B's trust: current is version 1, the mark is 5.
    std::fs::copy(
        state_b.path().join("trust.json"),
        state_a.path().join("trust.json"),
    )
    .unwrap();
    let trust: TrustState =
        serde_json::from_slice(&std::fs::read(state_a.path().join("trust.json")).unwrap()).unwrap();
    assert_eq!(trust.high_water.values().copied().max(), Some(5));

    // Restarted, A's first sync takes version 5 (the mark itself is no
    // rollback); a head for version 3 is.
    let node = restart(state_a.path(), &origin.url, origin.root_hex()).await;
    assert_serves(&node, 5).await;
    assert_eq!(node.status().await["high_water"], 5);
    origin.publish(3, &site(3));
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Refused { reason: "rollback" })
    );
    assert_serves(&node, 5).await;
    node.stop().await;
}

// ---------------------------------------------------------------------------
// Keys

#[tokio::test]
async fn root_rotation_and_signing_key_revocation() {
    let state = tempfile::tempdir().unwrap();
    let (origin, node) = origin_and_node(state.path()).await;
    let (k1, k2, k3, k4) = (key(1), key(2), key(3), key(4));
    let (old_signer, new_signer) = (key(10), key(11));

    // Root 2 (keys 3, 4) signed by both roots; keyset 2, signed by the new
    // root, lists key 11 only; the head is re-signed by it.
    let root2 = cathedral_bundle::Root {
        version: 2,
        threshold: 2,
        keys: vec![k3.public(), k4.public()],
        created: Timestamp::now(),
    };
    origin.put_root(&root2, &[&k1, &k2, &k3, &k4]);
    let keyset2 = origin.keyset(2, &[("signer-b", &new_signer)]);
    origin.put_keyset(&keyset2, &[&k3, &k4]);
    let v1 = origin.read(&format!(
        "manifests/{}.json",
        node.status().await["active"]["manifest"].as_str().unwrap()
    ));
    let v1_hash = blake3::hash(&v1).to_hex().to_string();
    origin.put_head(&origin.head(1, &v1_hash, v1.len() as u64), &[&new_signer]);
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Unchanged)
    );
    let status = node.status().await;
    assert_eq!(
        (
            status["root_version"].as_u64(),
            status["keyset_version"].as_u64()
        ),
        (Some(2), Some(2)),
        "{status}"
    );
    let entries = node.audit();
    let updated = |event: &str| {
        entries
            .iter()
            .filter(|e| e.event == event && e.details["version"] == 2)
            .count()
    };
    assert_eq!(
        (updated("root-updated"), updated("keyset-updated")),
        (1, 1),
        "{entries:#?}"
    );

    // The revoked key signs nothing any more...
    let manifest = origin.manifest(2, &site(2));
    origin.publish_manifest(&manifest, &site(2), &[&old_signer]);
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Refused {
            reason: "unknown-key"
        })
    );
    assert_serves(&node, 1).await;
    // ...the new one does.
    origin.publish_manifest(&manifest, &site(2), &[&new_signer]);
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Activated { version: 2 })
    );
    assert_serves(&node, 2).await;
    node.stop().await;
}

#[tokio::test]
async fn a_root_signed_only_by_its_own_keys_is_refused() {
    let state = tempfile::tempdir().unwrap();
    let (origin, node) = origin_and_node(state.path()).await;
    let (k3, k4) = (key(3), key(4));
    let root2 = cathedral_bundle::Root {
        version: 2,
        threshold: 2,
        keys: vec![k3.public(), k4.public()],
        created: Timestamp::now(),
    };
    origin.put_root(&root2, &[&k3, &k4]);
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Refused {
            reason: "unknown-key"
        })
    );
    assert_eq!(node.status().await["root_version"], 1);
    assert_serves(&node, 1).await;
    let entries = node.audit();
    assert_eq!(
        audited(&entries, "refused", "reason", "unknown-key"),
        1,
        "{entries:#?}"
    );
    node.stop().await;
}

// ---------------------------------------------------------------------------
// Push

/// Polls `/bundles` (bounded) until version `v` is active.
async fn wait_active(node: &BundleNode, token: Option<&str>, v: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = admin_request(Method::GET, &node.admin("/bundles"), token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        if doc["active"]["version"] == v {
            return;
        }
        assert!(Instant::now() < deadline, "version {v} not active: {doc}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_push_notification_triggers_a_sync() {
    let state = tempfile::tempdir().unwrap();
    let (origin, node) = origin_and_node(state.path()).await;
    origin.publish(2, &site(2));
    let (status, body) = admin_request(Method::POST, &node.admin("/bundles/notify"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_active(&node, None, 2).await;
    assert_serves(&node, 2).await;
    node.stop().await;
}

#[tokio::test]
async fn push_notifications_need_the_admin_token() {
    const TOKEN: &str = "s3cret-admin-token";
    let state = tempfile::tempdir().unwrap();
    let origin = BundleOrigin::start().await;
    origin.publish(1, &site(1));
    let settings = bundle_settings(&origin.url, origin.root_hex(), state.path());
    let node = BundleNode::start_with(settings, |b| b.admin.token = Some(TOKEN.into())).await;
    assert_serves(&node, 1).await;

    origin.publish(2, &site(2));
    for token in [None, Some("wrong")] {
        let (status, body) =
            admin_request(Method::POST, &node.admin("/bundles/notify"), token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
    }
    let (status, _) = admin_request(Method::POST, &node.admin("/bundles/previous"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(node.active_version(), Some(1));

    let (status, body) =
        admin_request(Method::POST, &node.admin("/bundles/notify"), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_active(&node, Some(TOKEN), 2).await;
    assert_serves(&node, 2).await;
    node.stop().await;
}

// ---------------------------------------------------------------------------
// Downloads

#[tokio::test]
async fn only_changed_files_travel() {
    let css = "body { color: #333 }".repeat(20);
    let logo = vec![0x89u8; 3000];
    let bundle = |index: &str| {
        let mut files = site_bundle(index);
        files
            .add("static/site/app.css", css.as_bytes(), "text/css")
            .add("static/site/logo.png", &logo, "image/png");
        files
    };
    let origin = BundleOrigin::start().await;
    let v1 = bundle(&page(1));
    origin.publish(1, &v1);
    let state = tempfile::tempdir().unwrap();
    let node = BundleNode::start(bundle_settings(
        &origin.url,
        origin.root_hex(),
        state.path(),
    ))
    .await;
    assert_serves(&node, 1).await;
    let fetched = "cathedral_bundle_fetched_bytes_total";
    let all: usize = v1.0.values().map(|(bytes, _)| bytes.len()).sum();
    assert_eq!(node.metric(fetched).await, Some(all as f64));

    let v2 = bundle("<h1>version 2, now with a longer page</h1>");
    origin.publish(2, &v2);
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Activated { version: 2 })
    );
    let changed = v2.0["static/site/index.html"].0.len();
    assert_eq!(node.metric(fetched).await, Some((all + changed) as f64));
    let (_, _, body) = get(&node.url("/")).await;
    assert_eq!(body, "<h1>version 2, now with a longer page</h1>");
    assert_eq!(get(&node.url("/app.css")).await.2, css);
    node.stop().await;
}

#[tokio::test]
async fn an_edge_syncs_signed_bundles_and_switches_versions() {
    let origin = BundleOrigin::start().await;
    origin.publish(1, &site_bundle("<h1>version one</h1>"));
    let state = tempfile::tempdir().unwrap();
    let node = BundleNode::start(bundle_settings(
        &origin.url,
        origin.root_hex(),
        state.path(),
    ))
    .await;

    // The node's first sync (at start) activated version 1.
    assert_eq!(node.active_version(), Some(1));
    let (status, headers, body) = get(&node.url("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "<h1>version one</h1>");
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");

    let mut v2 = site_bundle("<h1>version two</h1>");
    v2.add("static/site/app.css", b"body{}", "text/css; charset=utf-8");
    origin.publish(2, &v2);
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Activated { version: 2 })
    );
    assert_eq!(get(&node.url("/")).await.2, "<h1>version two</h1>");
    assert_eq!(get(&node.url("/app.css")).await.2, "body{}");
    assert_eq!(
        node.handle.sync_bundles().await,
        Some(SyncOutcome::Unchanged)
    );
    let status = node.status().await;
    assert_eq!(status["active"]["version"], 2);
    assert_eq!(status["high_water"], 2);
    assert_eq!(status["previous"], serde_json::json!([1]));
}

#[tokio::test]
async fn an_operator_revert_does_not_wait_for_the_health_watch() {
    let state = tempfile::tempdir().unwrap();
    let origin = BundleOrigin::start().await;
    origin.publish(1, &site(1));
    let mut settings = bundle_settings(&origin.url, origin.root_hex(), state.path());
    settings.health_grace = std::time::Duration::from_secs(30);
    let node = std::sync::Arc::new(BundleNode::start(settings).await);
    assert_eq!(node.active_version(), Some(1));

    origin.publish(2, &site(2));
    let syncing = {
        let node = node.clone();
        tokio::spawn(async move { node.handle.sync_bundles().await })
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while node.active_version() != Some(2) {
        assert!(tokio::time::Instant::now() < deadline, "v2 never activated");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The sync is watching v2's health for 30 s; the operator's revert is
    // answered now, not after the watch.
    let (status, body) =
        admin_request(http::Method::POST, &node.admin("/bundles/previous"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        !syncing.is_finished(),
        "the revert did not wait for the watch"
    );
    assert_serves(&node, 1).await;
    assert_eq!(node.status().await["quarantined"], 2);
    syncing.abort();
}
