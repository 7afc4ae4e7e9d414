//! The compiled-artifact disk cache: a restart loads without compiling, and
//! a tampered artifact is refused (recompiled), never loaded.

use std::path::{Path, PathBuf};

use cathedral_wasm::{EngineStats, RequestAction, WasmEngine};
use cathedral_wasm_test_artifacts as guests;

use crate::common::{self, Req, client, settings};

fn engine(dir: &Path) -> WasmEngine {
    common::engine_with(|c| c.artifact_cache = Some(dir.to_path_buf()))
}

fn cwasm_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("cache dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(cwasm_files(&path));
        } else if path.extension().is_some_and(|e| e == "cwasm") {
            files.push(path);
        }
    }
    files
}

/// Loads the empty filter on a fresh engine over `dir`, checks it works,
/// and returns the engine's counters.
async fn load_fresh(dir: &Path) -> EngineStats {
    let engine = engine(dir);
    let bytes = std::fs::read(guests::EMPTY_FILTER).expect("read");
    let module = engine
        .load("empty", bytes, settings(&[]))
        .await
        .expect("load");
    let action = common::on_request(&module, &Req::get("/"), &client(None, None, "r")).await;
    assert!(matches!(action, RequestAction::Continue));
    engine.stats()
}

#[tokio::test]
async fn a_restart_does_not_recompile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = load_fresh(dir.path()).await;
    assert_eq!(
        (first.compiles, first.cache_hits, first.cache_writes),
        (1, 0, 1),
        "{first:?}"
    );
    assert_eq!(cwasm_files(dir.path()).len(), 1);
    let second = load_fresh(dir.path()).await;
    assert_eq!(
        (second.compiles, second.cache_hits, second.cache_rejects),
        (0, 1, 0),
        "{second:?}"
    );
}

#[tokio::test]
async fn a_tampered_artifact_is_refused_and_recompiled() {
    let dir = tempfile::tempdir().expect("tempdir");
    load_fresh(dir.path()).await;
    let [file] = cwasm_files(dir.path()).try_into().expect("one artifact");
    let tampers: [fn(&mut Vec<u8>); 2] = [
        |bytes| {
            let at = bytes.len() / 2;
            bytes[at] ^= 0x40;
        },
        |bytes| bytes.truncate(bytes.len() - 100),
    ];
    for tamper in tampers {
        let mut bytes = std::fs::read(&file).expect("read artifact");
        tamper(&mut bytes);
        std::fs::write(&file, &bytes).expect("tamper");
        let stats = load_fresh(dir.path()).await;
        assert_eq!(
            (
                stats.cache_rejects,
                stats.cache_hits,
                stats.compiles,
                stats.cache_writes
            ),
            (1, 0, 1, 1),
            "{stats:?}"
        );
        // The recompiled artifact replaced it, and verifies.
        let stats = load_fresh(dir.path()).await;
        assert_eq!((stats.cache_hits, stats.compiles), (1, 0), "{stats:?}");
    }
}
