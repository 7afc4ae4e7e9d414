//! Golden tests: each `valid/*.toml` loads and renders to the `.out` next to it; each `invalid/*.toml` fails with the `.err` next to it.
//!
//! A case file holds several files, each introduced by a marker line
//! `#- <relative path>` (text before the first marker describes the case).
//! The files are written to a temporary directory and `<dir>/node.toml` is
//! loaded with `cathedral_config::load`. The directory is shown as `$DIR` in
//! the expected output. Run with `BLESS=1` to rewrite the expected files.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::fs;
use std::path::{Path, PathBuf};

mod common;

use cathedral_config::{Overrides, load, render_effective};

const MARKER: &str = "#- ";

/// Splits a case into `(relative path, contents)` pairs.
fn files_of(case: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = Vec::new();
    for line in case.lines() {
        if let Some(path) = line.strip_prefix(MARKER) {
            files.push((path.trim().to_owned(), String::new()));
        } else if let Some((_, text)) = files.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    files
}

/// Loads the case; returns whether it loaded and the rendered config or errors.
fn run(case: &Path) -> (bool, String) {
    let text = fs::read_to_string(case).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = files_of(&text);
    assert!(
        !files.is_empty(),
        "{}: no `#- <path>` markers",
        case.display()
    );
    for (path, contents) in files {
        let path = dir.path().join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }
    let root = dir.path().to_str().unwrap();
    match load(&dir.path().join("node.toml"), &Overrides::default()) {
        Ok((bootstrap, edge)) => {
            let rendered = render_effective(&bootstrap, &edge);
            common::round_trip(&bootstrap, &edge, &rendered);
            (true, rendered.replace(root, "$DIR"))
        }
        Err(errors) => (false, format!("{errors}\n").replace(root, "$DIR")),
    }
}

fn cases(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir);
    let mut cases: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    cases.sort();
    cases
}

#[test]
fn ui() {
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    let mut count = 0;
    for (dir, should_load, extension) in [("valid", true, "out"), ("invalid", false, "err")] {
        for case in cases(dir) {
            count += 1;
            let (loaded, actual) = run(&case);
            let name = case
                .strip_prefix(env!("CARGO_MANIFEST_DIR"))
                .unwrap()
                .display()
                .to_string();
            if loaded != should_load {
                failures.push(format!(
                    "{name}: expected it to {}load, got:\n{actual}",
                    if should_load { "" } else { "fail to " }
                ));
                continue;
            }
            let expected_path = case.with_extension(extension);
            if bless {
                fs::write(&expected_path, &actual).unwrap();
                continue;
            }
            let expected = fs::read_to_string(&expected_path).unwrap_or_default();
            if expected != actual {
                failures.push(format!(
                    "{name}: output differs from {}\n--- expected\n{expected}\n--- actual\n{actual}",
                    expected_path.display()
                ));
            }
        }
    }
    assert!(count >= 10, "only {count} golden cases found");
    assert!(
        failures.is_empty(),
        "{} of {count} golden cases failed (BLESS=1 rewrites the expected files):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
