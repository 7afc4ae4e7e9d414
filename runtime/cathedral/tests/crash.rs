//! `kill -9` during a bundle sync: the real binary in bundle mode is killed
//! at several points while it fetches, stages and activates version 2; on
//! restart, with the origin gone, it serves exactly version 1 or exactly
//! version 2 — never a mix — its staging area is empty and its audit log's
//! chain is intact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use cathedral_e2e::bundles::{BundleOrigin, ENVIRONMENT, REGION, site_bundle};
use cathedral_e2e::{PATIENCE, get};
use common::Served;

/// A large file for version 2, so that a kill lands mid-transfer as well as
/// before and after it (deterministic bytes: xorshift).
fn big_file(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn node_toml(origin: &BundleOrigin) -> String {
    let keys: Vec<String> = origin
        .root_hex()
        .iter()
        .map(|k| format!("\"{k}\""))
        .collect();
    format!(
        r#"
[node]
region = "{REGION}"

[[listen]]
addr = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[bundles]
origins = ["{url}"]
environment = "{ENVIRONMENT}"
root_keys = [{keys}]
root_threshold = 2
state_dir = "state"
poll_interval = "1h"
health_grace = "0s"
"#,
        url = origin.url,
        keys = keys.join(", ")
    )
}

/// The node's public and admin base URLs, from its log.
fn addresses(served: &Served) -> (String, String) {
    let public = served.wait_for("serving")["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin = served.wait_for("admin API")["url"]
        .as_str()
        .unwrap()
        .to_owned();
    (public, admin)
}

async fn active_version(admin: &str) -> Option<u64> {
    let (_, _, body) = get(&format!("{admin}/bundles")).await;
    let status: serde_json::Value = serde_json::from_str(&body).ok()?;
    status["active"]["version"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_sync_restarts_on_exactly_one_whole_bundle() {
    let big = big_file(24 << 20);
    let mut outcomes = Vec::new();
    for delay_ms in [0u64, 2, 10, 30, 80, 200, 600] {
        let mut origin = BundleOrigin::start().await;
        origin.publish(1, &site_bundle("version one"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("node.toml"), node_toml(&origin)).unwrap();
        let args = ["--config", "node.toml", "--log-format", "json"];

        // Version 1 active.
        let mut served = Served::start(&args[..2], Some(dir.path()));
        let (_, admin) = tokio::task::block_in_place(|| addresses(&served));
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while active_version(&admin).await != Some(1) {
            assert!(tokio::time::Instant::now() < deadline, "v1 never activated");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Version 2 published and pushed; the node is killed `delay_ms`
        // into the sync.
        let mut v2 = site_bundle("version two");
        v2.add("static/site/big.bin", &big, "application/octet-stream");
        origin.publish(2, &v2);
        let req = http::Request::post(format!("{admin}/bundles/notify"))
            .body(cathedral_e2e::full(""))
            .unwrap();
        let (status, _, _) = cathedral_e2e::send(req).await;
        assert_eq!(status.as_u16(), 202);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        served.child.kill().unwrap();
        let _ = served.child.wait();
        origin.stop().await;

        // Restart with the origin gone: whatever is on disk, whole.
        let served = Served::start(&args[..2], Some(dir.path()));
        let (public, _) = tokio::task::block_in_place(|| addresses(&served));
        let (status, _, index) = get(&format!("{public}/")).await;
        assert_eq!(status.as_u16(), 200, "after a kill at {delay_ms} ms");
        let (big_status, big_headers, _) = get(&format!("{public}/big.bin")).await;
        match index.as_str() {
            "version one" => assert_eq!(big_status.as_u16(), 404, "v1 has no big.bin"),
            "version two" => {
                assert_eq!(big_status.as_u16(), 200);
                // The strong ETag is the served content's blake3.
                let b3 = blake3::hash(&big).to_hex();
                assert_eq!(
                    big_headers["etag"],
                    format!("\"b3-{}\"", &b3[..32]),
                    "v2's file whole"
                );
                assert_eq!(big_headers["content-length"], big.len().to_string());
            }
            other => panic!("after a kill at {delay_ms} ms the node serves {other:?}"),
        }
        outcomes.push((delay_ms, index));

        let state = dir.path().join("state");
        assert_eq!(
            std::fs::read_dir(state.join("tmp")).unwrap().count(),
            0,
            "staging leftovers are removed at start"
        );
        drop(served);
        cathedral_bundle::verify_audit_log(&state.join("audit.log"))
            .unwrap_or_else(|p| panic!("audit log after a kill at {delay_ms} ms: {p}"));
    }
    eprintln!("served after restart, by kill delay: {outcomes:?}");
}
