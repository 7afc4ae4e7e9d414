//! The release commands as operators run them: `keys`, `bundle build`,
//! `sign`, `verify`, `publish`, `push`, `activate`, `origin serve` and
//! `audit verify`, on the real binary in temp dirs. Network only on
//! loopback, ports picked by the OS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// How long anything may take before a test gives up.
const PATIENCE: Duration = Duration::from_secs(30);

fn cathedral() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cathedral"))
}

/// Runs `cathedral ARGS` in `dir`.
fn run(dir: &Path, args: &[&str]) -> Output {
    cathedral().current_dir(dir).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit code, showing the output when it differs; returns
/// (stdout, stderr).
#[track_caller]
fn expect(out: &Output, code: i32) -> (String, String) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

/// A release workspace: root keys a and b (threshold 2), signing key
/// `signer`, root v1, keyset v1, and a site config with one static route
/// (two files) and one upstream route, plus an overlay for eu-central-1.
struct Release {
    tmp: tempfile::TempDir,
}

const ENV: &str = "production";
const REGION: &str = "eu-central-1";

impl Release {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let r = Release { tmp };
        for name in ["root-a", "root-b", "signer"] {
            let (stdout, _) = expect(
                &r.run(&["keys", "generate", "--out", "keys", "--name", name]),
                0,
            );
            let public = fs::read_to_string(r.path("keys").join(format!("{name}.pub"))).unwrap();
            assert_eq!(stdout, public, "prints the public key");
        }
        expect(
            &r.run(&[
                "keys",
                "root",
                "--version",
                "1",
                "--threshold",
                "2",
                "--key",
                "keys/root-a.pub",
                "--key",
                "keys/root-b.pub",
                "--sign",
                "keys/root-a.key",
                "--sign",
                "keys/root-b.key",
                "--out",
                "root-1.json",
            ]),
            0,
        );
        expect(
            &r.run(&[
                "keys",
                "keyset",
                "--version",
                "1",
                "--signer",
                "release=keys/signer.pub",
                "--sign",
                "keys/root-a.key",
                "--sign",
                "keys/root-b.key",
                "--root",
                "root-1.json",
                "--out",
                "keyset.json",
            ]),
            0,
        );
        r.write("cfg/site/index.html", "<h1>hello</h1>\n");
        r.write("cfg/site/css/site.css", "h1 { color: teal }\n");
        r.write(
            "cfg/edge.toml",
            "# the test site\n\
             [upstreams.api]\n\
             targets = [\"http://127.0.0.1:9\"]\n\
             \n\
             [routes.site]\n\
             path = \"/\"\n\
             static = \"site\" # two files\n\
             index = \"index.html\"\n\
             \n\
             [routes.api]\n\
             path = \"/api\"\n\
             upstream = \"api\"\n",
        );
        r.write(
            "regions/eu-central-1.toml",
            "[region]\nid = \"eu-central-1\"\nname = \"Frankfurt\"\njurisdiction = \"DE\"\n\
             [routes.site.response_headers]\nx-edge-region = \"eu-central-1\"\n",
        );
        r
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn write(&self, rel: &str, contents: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, contents).unwrap();
    }

    fn run(&self, args: &[&str]) -> Output {
        run(self.tmp.path(), args)
    }

    fn build(&self, config: &str, version: &str, out: &str) -> Output {
        self.run(&[
            "bundle",
            "build",
            "--config",
            config,
            "--regions",
            "regions",
            "--environment",
            ENV,
            "--region",
            REGION,
            "--region",
            "us-east-1",
            "--version",
            version,
            "--out",
            out,
        ])
    }

    /// Builds and signs `out` from cfg/edge.toml.
    fn signed_bundle(&self, version: &str, out: &str) {
        expect(&self.build("cfg/edge.toml", version, out), 0);
        expect(
            &self.run(&["bundle", "sign", out, "--key", "keys/signer.key"]),
            0,
        );
    }

    fn publish(&self, dir: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "bundle",
            "publish",
            dir,
            "--origin",
            "origin",
            "--key",
            "keys/signer.key",
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    fn verify_origin(&self) -> Output {
        self.run(&[
            "bundle",
            "verify",
            "--origin",
            "origin",
            "--environment",
            ENV,
            "--region",
            REGION,
            "--root-key",
            "keys/root-a.pub",
            "--root-key",
            "keys/root-b.pub",
            "--root-threshold",
            "2",
        ])
    }

    fn verify_dir(&self, dir: &str, keyset: &str) -> Output {
        self.run(&[
            "bundle",
            "verify",
            "--dir",
            dir,
            "--keyset",
            keyset,
            "--root-key",
            "keys/root-a.pub",
            "--root-key",
            "keys/root-b.pub",
            "--root-threshold",
            "2",
        ])
    }
}

#[test]
fn build_sign_publish_verify_and_catch_a_tampered_blob() {
    let r = Release::new();
    let (stdout, _) = expect(&r.build("cfg/edge.toml", "1", "build-1"), 0);
    assert!(
        stdout.contains("bundle v1 for production (eu-central-1, us-east-1): 4 files"),
        "{stdout}"
    );
    assert!(
        stdout.contains("no region overlay for us-east-1"),
        "{stdout}"
    );

    // The manifest lists the rewritten config, the overlay and the site.
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(r.path("build-1/manifest.json")).unwrap()).unwrap();
    let files = manifest["files"].as_array().unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "config/edge.toml",
            "config/regions/eu-central-1.toml",
            "static/site/css/site.css",
            "static/site/index.html"
        ]
    );
    assert_eq!(files[3]["content_type"], "text/html; charset=utf-8");
    assert_eq!(files[0]["content_type"], "application/toml");
    let config_blob = files[0]["blake3"].as_str().unwrap();
    let config = fs::read_to_string(r.path("build-1/blobs").join(config_blob)).unwrap();
    assert!(
        config.contains("static = \"../static/site\" # two files"),
        "rewritten, comments kept:\n{config}"
    );

    // Signers sign one after another.
    expect(
        &r.run(&["bundle", "sign", "build-1", "--key", "keys/signer.key"]),
        0,
    );
    let (stdout, _) = expect(
        &r.run(&["bundle", "sign", "build-1", "--key", "keys/root-a.key"]),
        0,
    );
    assert!(stdout.contains("2 signature(s)"), "{stdout}");

    let (stdout, _) = expect(&r.verify_dir("build-1", "keyset.json"), 0);
    for line in [
        "✓ keyset v1 signed by 2 of 2 root keys",
        "✓ manifest v1 for production/eu-central-1,us-east-1 signed by 1 of 1 keyset keys",
        "✓ 4 files,",
        "every blake3 matches",
        "✓ config valid for eu-central-1, us-east-1",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }

    let (stdout, _) = expect(
        &r.publish(
            "build-1",
            &["--root", "root-1.json", "--keyset", "keyset.json"],
        ),
        0,
    );
    assert!(
        stdout.contains("copied 4 blob(s)") && stdout.contains("0 already there"),
        "{stdout}"
    );
    for f in [
        "root/1.json",
        "keyset.json",
        "keysets/1.json",
        "heads/production/eu-central-1.json",
        "heads/production/us-east-1.json",
    ] {
        assert!(r.path("origin").join(f).is_file(), "{f}");
    }

    let (stdout, _) = expect(&r.verify_origin(), 0);
    for line in [
        "✓ root v1 is the pinned root (2 keys, threshold 2), signed by 2 of them",
        "✓ keyset v1 signed by 2 of 2 root keys",
        "✓ head production/eu-central-1: version 1",
        "match the head",
        "✓ manifest v1 for production/eu-central-1,us-east-1",
        "✓ 4 files,",
        "✓ config valid",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert_eq!(stdout.lines().count(), 7, "{stdout}");

    // Re-publishing copies nothing and re-signs the heads.
    let (stdout, _) = expect(&r.publish("build-1", &[]), 0);
    assert!(
        stdout.contains("copied 0 blob(s)") && stdout.contains("4 already there"),
        "{stdout}"
    );

    // Version 2 changes one file: one new blob, plus the manifest.
    r.write("cfg/site/index.html", "<h1>hello again</h1>\n");
    r.signed_bundle("2", "build-2");
    let (stdout, _) = expect(&r.publish("build-2", &[]), 0);
    assert!(stdout.contains("copied 1 blob(s)"), "{stdout}");
    let (stdout, _) = expect(&r.verify_origin(), 0);
    assert!(stdout.contains("head production/eu-central-1: version 2"));
    // Heads never go back.
    let (_, stderr) = expect(&r.publish("build-1", &[]), 2);
    assert!(
        stderr.contains("production/eu-central-1 is at version 2"),
        "{stderr}"
    );

    // A tampered blob in the origin is named.
    let v2: serde_json::Value =
        serde_json::from_slice(&fs::read(r.path("build-2/manifest.json")).unwrap()).unwrap();
    let index = v2["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "static/site/index.html")
        .unwrap();
    let hash = index["blake3"].as_str().unwrap();
    let blob = r.path("origin/blobs").join(hash);
    fs::write(&blob, "<h1>hello agaim</h1>\n").unwrap(); // same size
    let (stdout, stderr) = expect(&r.verify_origin(), 2);
    assert!(
        stdout.contains("✓ keyset v1"),
        "checks before it pass: {stdout}"
    );
    assert!(
        stderr.contains("✗ static/site/index.html")
            && stderr.contains(&format!("blobs/{hash}"))
            && stderr.contains("blake3"),
        "{stderr}"
    );
}

#[test]
fn a_keyset_not_signed_by_the_root_is_refused() {
    let r = Release::new();
    r.signed_bundle("1", "build");
    // Signed by the signing key, not by root keys: written (nothing to
    // check it against), refused by verify.
    expect(
        &r.run(&[
            "keys",
            "keyset",
            "--version",
            "2",
            "--signer",
            "release=keys/signer.pub",
            "--sign",
            "keys/signer.key",
            "--out",
            "rogue.json",
        ]),
        0,
    );
    let (_, stderr) = expect(&r.verify_dir("build", "rogue.json"), 2);
    assert!(
        stderr.contains("✗ rogue.json") && stderr.contains("not a trusted key"),
        "{stderr}"
    );
    // One root key of two is not enough either, and --root says so up front.
    let (_, stderr) = expect(
        &r.run(&[
            "keys",
            "keyset",
            "--version",
            "2",
            "--signer",
            "release=keys/signer.pub",
            "--sign",
            "keys/root-a.key",
            "--root",
            "root-1.json",
            "--out",
            "half.json",
        ]),
        2,
    );
    assert!(stderr.contains("2 of its keys must sign"), "{stderr}");
    assert!(!r.path("half.json").exists());
    // A keyset the origin's root refuses is not published, nor anything after it.
    let (_, stderr) = expect(
        &r.publish(
            "build",
            &["--root", "root-1.json", "--keyset", "rogue.json"],
        ),
        2,
    );
    assert!(
        stderr.contains("rogue.json") && stderr.contains("not a trusted key"),
        "{stderr}"
    );
    assert!(
        !r.path("origin/keyset.json").exists(),
        "never put before edges"
    );
    assert!(!r.path("origin/heads/production/eu-central-1.json").exists());
}

#[test]
fn build_names_a_missing_file_precisely_and_writes_nothing() {
    let r = Release::new();
    r.write(
        "cfg/broken.toml",
        "[modules.greeter]\npath = \"wasm/greeter.wasm\"\n\n[routes.site]\npath = \"/\"\nstatic = \"site\"\n",
    );
    let (_, stderr) = expect(&r.build("cfg/broken.toml", "1", "out"), 2);
    assert!(
        stderr.contains(
            "cfg/broken.toml: modules.greeter.path: file not found: cfg/wasm/greeter.wasm"
        ),
        "{stderr}"
    );
    assert!(!r.path("out").exists());

    // A link out of a static root is refused, never followed or skipped.
    std::os::unix::fs::symlink("/etc/hostname", r.path("cfg/site/leak.txt")).unwrap();
    let (_, stderr) = expect(&r.build("cfg/edge.toml", "1", "out"), 2);
    assert!(
        stderr.contains("leak.txt: a symbolic link to") && stderr.contains("outside"),
        "{stderr}"
    );
    fs::remove_file(r.path("cfg/site/leak.txt")).unwrap();

    // Config problems are listed with file and key, for the regions built.
    r.write(
        "cfg/invalid.toml",
        "[routes.api]\npath = \"/api\"\nupstream = \"nope\"\n",
    );
    let (_, stderr) = expect(&r.build("cfg/invalid.toml", "1", "out"), 2);
    assert!(
        stderr.contains("cfg/invalid.toml: routes.api.upstream: no upstream named \"nope\""),
        "{stderr}"
    );
    assert!(!r.path("out").exists());

    // Modules and CA files are bundled and their keys rewritten.
    r.write("cfg/wasm/greeter.wasm", "\0asm not really");
    let (stdout, _) = expect(&r.build("cfg/broken.toml", "1", "out"), 0);
    assert!(stdout.contains("1 module(s)"), "{stdout}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(r.path("out/manifest.json")).unwrap()).unwrap();
    let module = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "modules/greeter.wasm")
        .expect("the module is in the bundle");
    assert_eq!(module["content_type"], "application/wasm");
}

#[test]
fn root_rotation_chains_from_the_previous_root() {
    let r = Release::new();
    expect(
        &r.run(&["keys", "generate", "--out", "keys", "--name", "root-c"]),
        0,
    );
    let root2 = |signers: &[&str], previous: bool, out: &str| {
        let mut args = vec![
            "keys",
            "root",
            "--version",
            "2",
            "--threshold",
            "1",
            "--key",
            "keys/root-c.pub",
            "--out",
            out,
        ];
        if previous {
            args.extend(["--previous", "root-1.json"]);
        }
        for s in signers {
            args.extend(["--sign", s]);
        }
        r.run(&args)
    };
    let (_, stderr) = expect(&root2(&["keys/root-c.key"], false, "r.json"), 2);
    assert!(stderr.contains("--previous"), "{stderr}");
    let (_, stderr) = expect(
        &root2(&["keys/root-a.key", "keys/root-c.key"], true, "r.json"),
        2,
    );
    assert!(stderr.contains("would not chain"), "{stderr}");
    let (_, stderr) = expect(
        &root2(&["keys/root-a.key", "keys/root-b.key"], true, "r.json"),
        2,
    );
    assert!(
        stderr.contains("would not chain"),
        "new keys must sign too: {stderr}"
    );
    assert!(!r.path("r.json").exists());
    let (stdout, _) = expect(
        &root2(
            &["keys/root-a.key", "keys/root-b.key", "keys/root-c.key"],
            true,
            "root-2.json",
        ),
        0,
    );
    assert!(stdout.contains("root v2"), "{stdout}");

    // After rotation the keyset is signed by the new root, and an origin
    // with both roots verifies from the pinned v1.
    expect(
        &r.run(&[
            "keys",
            "keyset",
            "--version",
            "2",
            "--signer",
            "release=keys/signer.pub@30d",
            "--sign",
            "keys/root-c.key",
            "--root",
            "root-2.json",
            "--out",
            "keyset-2.json",
        ]),
        0,
    );
    r.signed_bundle("1", "build");
    expect(
        &r.publish(
            "build",
            &[
                "--root",
                "root-1.json",
                "--root",
                "root-2.json",
                "--keyset",
                "keyset-2.json",
            ],
        ),
        0,
    );
    let (stdout, _) = expect(&r.verify_origin(), 0);
    assert!(
        stdout.contains("✓ root v2 signed by 2 of root v1's 2 keys and 1 of its own 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("✓ keyset v2 signed by 1 of 1 root keys"),
        "{stdout}"
    );
}

#[test]
fn keys_are_never_overwritten() {
    let r = Release::new();
    let before = fs::read(r.path("keys/signer.key")).unwrap();
    let (_, stderr) = expect(
        &r.run(&["keys", "generate", "--out", "keys", "--name", "signer"]),
        2,
    );
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(fs::read(r.path("keys/signer.key")).unwrap(), before);
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(r.path("keys/signer.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn audit_verify_finds_an_edited_line() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("audit.log");
    let head = {
        let mut log = cathedral_bundle::AuditLog::open(&path).unwrap();
        for v in 1..=3 {
            log.append("activated", serde_json::json!({ "version": v }))
                .unwrap();
        }
        log.last_hash().to_owned()
    };
    let log = path.to_str().unwrap();
    let (stdout, _) = expect(&run(tmp.path(), &["audit", "verify", log]), 0);
    assert_eq!(
        stdout.trim(),
        format!("✓ 3 entries, chain intact, head {head}")
    );
    let edited = fs::read_to_string(&path)
        .unwrap()
        .replacen("\"version\":2", "\"version\":1", 1);
    fs::write(&path, edited).unwrap();
    let (_, stderr) = expect(&run(tmp.path(), &["audit", "verify", log]), 2);
    assert!(stderr.starts_with("✗ line 2: "), "{stderr}");
    let (_, stderr) = expect(&run(tmp.path(), &["audit", "verify", "missing.log"]), 2);
    assert!(stderr.starts_with("error: missing.log"), "{stderr}");
}

/// A one-shot HTTP server on loopback: answers one request with `status`
/// and `body`, and hands back the request head it read.
fn fake_admin(status: &str, body: &'static str) -> (String, thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let status = status.to_owned();
    let handle = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        String::from_utf8(head).unwrap().to_lowercase()
    });
    (url, handle)
}

#[test]
fn push_notifies_every_edge_and_activate_asks_for_the_previous_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let (good, good_seen) = fake_admin("202 Accepted", r#"{"sync":"scheduled"}"#);
    let (bad, bad_seen) = fake_admin("401 Unauthorized", "bad token");
    let out = cathedral()
        .current_dir(tmp.path())
        .args(["bundle", "push", "--edge", &good, "--edge", &bad])
        .env("CATHEDRAL_ADMIN_TOKEN", "t0ken")
        .output()
        .unwrap();
    let (stdout, stderr) = expect(&out, 1);
    assert!(
        stdout.contains(&format!("{good}: 202 {{\"sync\":\"scheduled\"}}")),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("error: {bad}: 401 Unauthorized bad token")),
        "{stderr}"
    );
    for seen in [good_seen.join().unwrap(), bad_seen.join().unwrap()] {
        assert!(
            seen.starts_with("post /bundles/notify http/1.1\r\n"),
            "{seen}"
        );
        assert!(seen.contains("authorization: bearer t0ken\r\n"), "{seen}");
    }

    let (admin, seen) = fake_admin("200 OK", r#"{"from":2,"to":1}"#);
    let (stdout, _) = expect(
        &run(
            tmp.path(),
            &[
                "bundle",
                "activate",
                "--previous",
                "--admin",
                &admin,
                "--token",
                "x",
            ],
        ),
        0,
    );
    assert_eq!(stdout.trim(), r#"{"from":2,"to":1}"#);
    assert!(seen.join().unwrap().starts_with("post /bundles/previous "));
    let (admin, _seen) = fake_admin("409 Conflict", r#"{"error":"no previous bundle"}"#);
    let (_, stderr) = expect(
        &run(
            tmp.path(),
            &["bundle", "activate", "--previous", "--admin", &admin],
        ),
        1,
    );
    assert!(stderr.contains("no previous bundle"), "{stderr}");
    // Only plain http admin URLs; bad usage is exit 2.
    expect(
        &run(tmp.path(), &["bundle", "push", "--edge", "ftp://x"]),
        2,
    );
}

/// A child process killed if the test ends before it was waited for.
struct Reaped(Option<std::process::Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn origin_serve_serves_the_published_files_until_sigterm() {
    let r = Release::new();
    r.signed_bundle("1", "build");
    expect(
        &r.publish(
            "build",
            &["--root", "root-1.json", "--keyset", "keyset.json"],
        ),
        0,
    );
    let mut child = Reaped(Some(
        cathedral()
            .current_dir(r.tmp.path())
            .args([
                "origin",
                "serve",
                "--dir",
                "origin",
                "--listen",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let stderr = child.0.as_mut().unwrap().stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let url = loop {
        let line = rx
            .recv_timeout(PATIENCE)
            .expect("the origin logs its address");
        if line.contains("origin ready")
            && let Some(url) = line.split("url=").nth(1)
        {
            break url.trim().to_owned();
        }
    };
    let addr = url.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET /keyset.json HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = text(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let keyset = fs::read_to_string(r.path("keyset.json")).unwrap();
    assert!(response.ends_with(&keyset), "{response}");

    let mut origin = child.0.take().unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &origin.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = done_tx.send(origin.wait().map(|s| s.code()));
    });
    let code = done_rx
        .recv_timeout(PATIENCE)
        .expect("the origin stops on SIGTERM")
        .unwrap();
    assert_eq!(code, Some(0));
}
