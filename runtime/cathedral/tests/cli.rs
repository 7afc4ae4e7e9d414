//! The `cathedral` binary as operators run it: exit codes, `config check`,
//! `module check`, quick modes (`--upstream`, `--handler`, `--filter`),
//! SIGHUP reload and SIGTERM shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use cathedral_e2e::{Origin, get};
use cathedral_wasm_test_artifacts as guests;

mod common;

use common::{Served, cathedral};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn config_check_prints_the_effective_demo_config() {
    let out = cathedral()
        .current_dir(repo_root())
        .args(["config", "check"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[routes.site]"), "{text}");
    assert!(
        text.contains("idle_timeout"),
        "defaults are filled in: {text}"
    );
}

#[test]
fn config_check_of_a_bundle_mode_bootstrap_shows_the_bundle_settings() {
    let dir = tempfile::tempdir().unwrap();
    let key = "ab".repeat(32);
    std::fs::write(
        dir.path().join("node.toml"),
        format!(
            "[bundles]\norigins = [\"http://127.0.0.1:7000\"]\nenvironment = \"demo\"\nroot_keys = [\"{key}\"]\n"
        ),
    )
    .unwrap();
    let out = cathedral()
        .args(["config", "check", "--config"])
        .arg(dir.path().join("node.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Bundle mode"), "{text}");
    assert!(text.contains("environment = \"demo\""), "{text}");
    assert!(
        !text.contains("[routes"),
        "no local edge config is read: {text}"
    );
}

#[test]
fn config_check_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("regions")).unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        "[node]\nregion = \"xx-test-1\"\nregions_dir = \"regions\"\n[limits]\nidle_timeout = \"soon\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("regions/xx-test-1.toml"),
        "[region]\nid = \"xx-test-1\"\nname = \"Test\"\njurisdiction = \"US\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("edge.toml"),
        "[routes.a]\npath = \"/\"\nupstream = \"nope\"\n[routes.b]\npath = \"/b\"\nstatic = \"missing-dir\"\ncolour = \"red\"\n",
    )
    .unwrap();
    let out = cathedral()
        .args(["config", "check", "--config"])
        .arg(dir.path().join("node.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "node.toml: limits.idle_timeout",
        "edge.toml: routes.a.upstream",
        "routes.b",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn bad_usage_exits_2() {
    let out = cathedral()
        .args(["serve", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = cathedral().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_everywhere() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["config", "check", "--help"],
        &["module", "--help"],
        &["module", "check", "--help"],
        &["tls", "self-signed", "--help"],
    ] {
        let out = cathedral().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty());
    }
}

#[test]
fn bind_failure_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = cathedral()
        .args([
            "serve",
            "--upstream",
            "http://127.0.0.1:9",
            "--admin-listen",
            "127.0.0.1:0",
            "--listen",
            &addr,
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&addr));
}

#[test]
fn tls_self_signed_writes_a_usable_pair() {
    let dir = tempfile::tempdir().unwrap();
    let out = cathedral()
        .args(["tls", "self-signed", "--out"])
        .arg(dir.path())
        .args(["--name", "edge.test"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = std::fs::read_to_string(dir.path().join("cert.pem")).unwrap();
    assert!(cert.contains("BEGIN CERTIFICATE"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_mode_serves_and_sigterm_exits_0() {
    let origin = Origin::start().await;
    let url = origin.url();
    let mut served = Served::start(
        &[
            "--upstream",
            &url,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        None,
    );
    let serving = tokio::task::block_in_place(|| served.wait_for("serving"));
    let base = serving["url"].as_str().unwrap().to_owned();
    let (status, _, body) = get(&format!("{base}/hello")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "origin:/hello"));

    served.signal("-TERM");
    let code = tokio::task::block_in_place(|| served.wait_exit());
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_files() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("regions")).unwrap();
    std::fs::write(
        dir.path().join("regions/us-east-1.toml"),
        "[region]\nid = \"us-east-1\"\nname = \"US East\"\njurisdiction = \"US\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        "[node]\nregions_dir = \"regions\"\n[[listen]]\naddr = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let edge = |label: &str| {
        format!(
            "[upstreams.o]\ntargets = [\"{}\"]\n[routes.all]\npath = \"/\"\nupstream = \"o\"\nresponse_headers = {{ \"x-label\" = \"{label}\" }}\n",
            origin.url()
        )
    };
    std::fs::write(dir.path().join("edge.toml"), edge("first")).unwrap();
    let mut served = Served::start(&["--config", "node.toml"], Some(dir.path()));
    let serving = tokio::task::block_in_place(|| served.wait_for("serving"));
    let base = serving["url"].as_str().unwrap().to_owned();
    let (_, headers, _) = get(&format!("{base}/")).await;
    assert_eq!(headers["x-label"], "first");

    std::fs::write(dir.path().join("edge.toml"), edge("second")).unwrap();
    served.signal("-HUP");
    tokio::task::block_in_place(|| served.wait_for("configuration activated"));
    let (_, headers, _) = get(&format!("{base}/")).await;
    assert_eq!(headers["x-label"], "second");

    // A broken file is rejected; the node keeps the second config.
    std::fs::write(dir.path().join("edge.toml"), "[routes.x]\npath = 3\n").unwrap();
    served.signal("-HUP");
    tokio::task::block_in_place(|| {
        served.wait_for("configuration rejected; still serving the previous one")
    });
    let (_, headers, _) = get(&format!("{base}/")).await;
    assert_eq!(headers["x-label"], "second");

    served.signal("-INT");
    assert_eq!(tokio::task::block_in_place(|| served.wait_exit()), Some(0));
}

/// `cathedral module check FILE`: exit status, stdout and stderr.
fn module_check(file: &str) -> (Option<i32>, String, String) {
    let out = cathedral()
        .args(["module", "check", file])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn module_check_recognises_a_filter() {
    let (code, out, err) = module_check(guests::PERSONALIZE);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.starts_with("ok: a filter (cathedral:edge/filter@0.1.0)"),
        "{out}"
    );
    assert!(out.contains("  on-request\n"), "exports listed: {out}");
    assert!(
        out.contains("  cathedral:edge/config@0.1.0\n"),
        "imports listed: {out}"
    );
}

#[test]
fn module_check_recognises_a_handler() {
    let (code, out, err) = module_check(guests::HELLO_HANDLER);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("ok: a handler"), "{out}");
    assert!(out.contains("wasi:http/incoming-handler"), "{out}");
}

#[test]
fn module_check_names_the_import_we_do_not_provide() {
    let (code, out, _) = module_check(guests::BAD_IMPORT);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.starts_with("error: fits neither world"), "{out}");
    let why = out
        .lines()
        .find(|l| l.trim_start().starts_with("not a filter:"))
        .expect("why it is not a filter");
    assert!(why.contains("`fixture:secrets/vault`"), "{why}");
}

#[test]
fn module_check_refuses_what_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "not wasm").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    for (file, needle) in [
        (&text, "not a WebAssembly file"),
        (&core, "a core WebAssembly module, not a component"),
        (&dir.path().join("missing.wasm"), "cannot read"),
    ] {
        let (code, out, err) = module_check(file.to_str().unwrap());
        assert_eq!(code, Some(2), "{file:?}: {out}{err}");
        assert!(err.contains(needle), "{file:?}: {err}");
    }
}

#[test]
fn quick_module_flags_are_checked() {
    // --filter needs a quick route; --handler and --upstream exclude each other.
    let out = cathedral()
        .args(["serve", "--filter", guests::PERSONALIZE])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = cathedral()
        .args(["serve", "--handler", guests::HELLO_HANDLER])
        .args(["--upstream", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
    // A file that is not there is a command-line error.
    let out = cathedral()
        .args(["serve", "--upstream", "http://127.0.0.1:9"])
        .args(["--filter", "/no/such/filter.wasm"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("<command line>: filter[0]: cannot read /no/such/filter.wasm"),
        "{err}"
    );
}

/// Starts a quick-mode node with `args`; returns it with its public and
/// admin base URLs.
fn quick(args: &[&str]) -> (Served, String, String) {
    let mut all = args.to_vec();
    all.extend(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    let served = Served::start(&all, None);
    let (base, admin) = tokio::task::block_in_place(|| {
        let serving = served.wait_for("serving");
        let admin = served.wait_for("admin API");
        (
            serving["url"].as_str().unwrap().to_owned(),
            admin["url"].as_str().unwrap().to_owned(),
        )
    });
    (served, base, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_handler_answers_every_request_with_the_component() {
    let (mut served, base, _) = quick(&["--handler", guests::HELLO_HANDLER]);
    for path in ["/", "/any/path?q=1"] {
        let (status, headers, body) = get(&format!("{base}{path}")).await;
        assert_eq!(status.as_u16(), 200, "{body}");
        assert_eq!(body, format!("hello from a wasi:http handler {path}\n"));
        assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    }
    // The quick handler has no backends: it can call nothing.
    let (status, _, body) = get(&format!("{base}/fetch?url=http://127.0.0.1:9/")).await;
    assert_eq!(status.as_u16(), 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");

    served.signal("-TERM");
    assert_eq!(tokio::task::block_in_place(|| served.wait_exit()), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_upstream_runs_filters_on_the_quick_route() {
    let origin = Origin::start().await;
    let url = origin.url();
    let (mut served, base, admin) = quick(&["--upstream", &url, "--filter", guests::PERSONALIZE]);
    let (status, _, body) = get(&format!("{base}/hello")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "origin:/hello"));
    // One request: personalize's on-request and on-response, both clean.
    let (_, _, metrics) = get(&format!("{admin}/metrics")).await;
    assert!(
        metrics.contains("cathedral_module_calls_total{module=\"personalize\"} 2\n"),
        "{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("cathedral_module_errors_total") && !l.ends_with(" 0")),
        "{metrics}"
    );

    served.signal("-TERM");
    assert_eq!(tokio::task::block_in_place(|| served.wait_exit()), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_filters_fail_closed() {
    let origin = Origin::start().await;
    let url = origin.url();
    let (mut served, base, _) = quick(&["--upstream", &url, "--filter", guests::INFINITE_LOOP]);
    let (status, _, body) = get(&format!("{base}/x")).await;
    assert_eq!(status.as_u16(), 503, "{body}");
    assert!(body.contains("fixture_infinite_loop"), "{body}");
    assert_eq!(origin.requests(), 0, "a failed filter stops the request");

    served.signal("-TERM");
    assert_eq!(tokio::task::block_in_place(|| served.wait_exit()), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_quick_mode_components() {
    let origin = Origin::start().await;
    let url = origin.url();
    let dir = tempfile::tempdir().unwrap();
    let filter = dir.path().join("filter.wasm");
    std::fs::copy(guests::EMPTY_FILTER, &filter).unwrap();
    let (mut served, base, _) = quick(&["--upstream", &url, "--filter", filter.to_str().unwrap()]);
    let (status, _, _) = get(&format!("{base}/x")).await;
    assert_eq!(status.as_u16(), 200);

    // The author rebuilds the component (here: into one that never returns).
    std::fs::copy(guests::INFINITE_LOOP, &filter).unwrap();
    served.signal("-HUP");
    tokio::task::block_in_place(|| served.wait_for("configuration activated"));
    let (status, _, body) = get(&format!("{base}/x")).await;
    assert_eq!(status.as_u16(), 503, "{body}");
    assert!(body.contains("module filter failed"), "{body}");

    served.signal("-TERM");
    assert_eq!(tokio::task::block_in_place(|| served.wait_exit()), Some(0));
}
