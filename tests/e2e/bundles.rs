//! Bundle mode end to end: a real origin server over an origin directory,
//! a node syncing from it, real files on disk.

use cathedral_e2e::bundles::*;
use cathedral_e2e::*;
use cathedral_edge::bundles::SyncOutcome;
use http::StatusCode;

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
