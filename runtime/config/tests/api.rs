//! The public entry points beyond the golden files: overrides, defaults, quick mode, in-memory sources, error shapes.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

mod common;

use cathedral_config::{
    BundleSettings, CacheMode, CacheSettings, ClassChoice, ConfigError, ContentClassName,
    FailPolicy, FilterRef, HandlerTarget, HostHeader, IntegrityCheck, Limits, ModuleConfig,
    Overrides, RateLimitKey, RateLimitPolicy, RouteCache, RouteTarget, Scheme, Source, TlsVersion,
    UpstreamTls, UserIdSource, WasmSettings, default_bootstrap, load, load_bootstrap, load_edge,
    parse_edge, quick_upstream, render_effective,
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Writes `files` (path, contents) under a fresh temporary directory.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, contents) in files {
        let path = dir.path().join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }
    dir
}

const US_EAST: &str = "[region]\nid = \"us-east-1\"\nname = \"US East\"\njurisdiction = \"US\"\n";
const EU_CENTRAL: &str =
    "[region]\nid = \"eu-central-1\"\nname = \"Europe\"\njurisdiction = \"EU\"\n";

/// Every error as `key: message`, files aside.
fn keyed(errors: &cathedral_config::ConfigErrors) -> Vec<String> {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.key, e.message))
        .collect()
}

#[test]
fn defaults() {
    let bootstrap = default_bootstrap(&Overrides::default()).unwrap();
    assert_eq!(bootstrap.region, "us-east-1");
    assert_eq!(bootstrap.listeners.len(), 1);
    assert_eq!(bootstrap.listeners[0].addr, addr("127.0.0.1:8080"));
    assert!(!bootstrap.listeners[0].proxy_protocol);
    assert!(bootstrap.tls_listeners.is_empty());
    assert_eq!(bootstrap.admin.listen, addr("127.0.0.1:9090"));
    assert_eq!(bootstrap.admin.token, None);
    assert!(bootstrap.trusted_proxies.is_empty());
    assert!(bootstrap.edge_config.is_absolute());
    let limits = Limits {
        max_header_bytes: 16 * 1024,
        max_headers: 100,
        max_body_bytes: 10 * 1024 * 1024,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 10_000,
        shutdown_grace: Duration::from_secs(30),
    };
    assert_eq!(bootstrap.limits, limits);
    assert_eq!(Limits::default(), limits);
    let cache = CacheSettings {
        memory_bytes: 256 * 1024 * 1024,
        max_object_bytes: 16 * 1024 * 1024,
        integrity: IntegrityCheck::Sample(100),
        scrub_per_second: 200,
        coalesce_timeout: Duration::from_secs(10),
        coalesce_max_waiters: 1024,
    };
    assert_eq!(bootstrap.cache, cache);
    assert_eq!(CacheSettings::default(), cache);
    assert_eq!(
        RouteCache::default(),
        RouteCache {
            mode: CacheMode::Origin,
            ttl: None,
            class: ClassChoice::Auto,
            ignore_query: Vec::new(),
            sort_query: false,
            key_headers: Vec::new(),
            store_set_cookie: false,
            forward_cdn_cache_control: true,
        }
    );
    // No bootstrap file to put an artifact cache next to: none.
    let wasm = WasmSettings {
        artifact_cache: None,
        max_instances: 1000,
        max_memory_bytes: 64 * 1024 * 1024,
    };
    assert_eq!(bootstrap.wasm, wasm);
    assert_eq!(WasmSettings::default(), wasm);
}

/// `[wasm]`: the artifact cache defaults to `.cathedral/wasm-cache` next to
/// the bootstrap file, resolves relative to it, and `false` turns it off.
#[test]
fn wasm_settings() {
    let dir = tree(&[("etc/node.toml", "")]);
    let path = dir.path().join("etc/node.toml");
    let bootstrap = load_bootstrap(&path, &Overrides::default()).unwrap();
    assert_eq!(
        bootstrap.wasm,
        WasmSettings {
            artifact_cache: Some(dir.path().join("etc/.cathedral/wasm-cache")),
            max_instances: 1000,
            max_memory_bytes: 64 << 20,
        }
    );
    for (text, expected) in [
        (
            "[wasm]\nartifact_cache = '../var/wasm'\nmax_instances = 100000\nmax_memory = '4GiB'",
            Ok(WasmSettings {
                artifact_cache: Some(dir.path().join("var/wasm")),
                max_instances: 100_000,
                max_memory_bytes: 4 << 30,
            }),
        ),
        (
            "[wasm]\nartifact_cache = false\nmax_instances = 1\nmax_memory = 1048576",
            Ok(WasmSettings {
                artifact_cache: None,
                max_instances: 1,
                max_memory_bytes: 1 << 20,
            }),
        ),
        (
            "[wasm]\nmax_memory = '4097MiB'\nmax_instances = -1",
            Err(vec![
                "wasm.max_instances: expected a non-negative integer, found -1",
                "wasm.max_memory: expected between 1MiB and 4GiB, found 4097MiB",
            ]),
        ),
        (
            "wasm = 'on'",
            Err(vec!["wasm: expected a table, found the string \"on\""]),
        ),
    ] {
        fs::write(&path, text).unwrap();
        let got = load_bootstrap(&path, &Overrides::default());
        match expected {
            Ok(wasm) => {
                let bootstrap = got.unwrap_or_else(|e| panic!("{text}: {e}"));
                assert_eq!(bootstrap.wasm, wasm, "{text}");
                let edge = quick_upstream("http://127.0.0.1:1", "us-east-1").unwrap();
                common::round_trip(&bootstrap, &edge, &render_effective(&bootstrap, &edge));
            }
            Err(messages) => assert_eq!(keyed(&got.unwrap_err()), messages, "{text}"),
        }
    }
}

const ROOT_A: &str = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";
const ROOT_B: &str = "ec3353fa9d9bd15c02f83155b516cd88b2f1beed488bb0988d2cd5f7442e76a4";

/// `[bundles]`: absent is local mode; the required keys alone give the
/// documented defaults with `state_dir` next to the bootstrap file; every
/// bound is inclusive; what the golden files cannot show (the table not
/// being a table, an empty table, a zero threshold against known keys) is
/// an error on the right key. Every accepted case round-trips.
#[test]
fn bundle_settings() {
    assert_eq!(
        default_bootstrap(&Overrides::default()).unwrap().bundles,
        None
    );
    let dir = tree(&[("etc/node.toml", "")]);
    let path = dir.path().join("etc/node.toml");
    assert_eq!(
        load_bootstrap(&path, &Overrides::default())
            .unwrap()
            .bundles,
        None
    );

    let required = format!(
        "[bundles]\norigins = ['https://origin.example.net']\nenvironment = 'production'\nroot_keys = ['{ROOT_A}']\n"
    );
    let defaults = BundleSettings {
        origins: vec!["https://origin.example.net".into()],
        environment: "production".into(),
        root_keys: vec![ROOT_A.into()],
        root_threshold: 1,
        state_dir: dir.path().join("etc/.cathedral/bundles"),
        poll_interval: Duration::from_secs(30),
        fetch_timeout: Duration::from_secs(60),
        max_manifest_bytes: 8 << 20,
        max_bundle_bytes: 2 << 30,
        keep: 3,
        health_grace: Duration::from_secs(10),
    };
    let eight_origins: Vec<String> = (1..=8)
        .map(|i| format!("'https://o{i}.example.net/p'"))
        .collect();
    let sixteen_keys: Vec<String> = (0..16u8)
        .map(|i| format!("'{}'", format!("{i:02x}").repeat(32)))
        .collect();
    for (text, expected) in [
        (required.clone(), Ok(defaults.clone())),
        // Lower bounds, sizes as integers, an absolute state_dir.
        (
            format!(
                "{required}root_threshold = 1\nstate_dir = '/var/lib/cathedral'\npoll_interval = '1s'\nfetch_timeout = '1ms'\nmax_manifest = 1024\nmax_bundle = 1048576\nkeep = 2\nhealth_grace = '0s'"
            ),
            Ok(BundleSettings {
                state_dir: "/var/lib/cathedral".into(),
                poll_interval: Duration::from_secs(1),
                fetch_timeout: Duration::from_millis(1),
                max_manifest_bytes: 1024,
                max_bundle_bytes: 1 << 20,
                keep: 2,
                health_grace: Duration::ZERO,
                ..defaults.clone()
            }),
        ),
        // Upper bounds: 8 origins, 16 keys, a 16-of-16 root, a state_dir
        // relative to etc/.
        (
            format!(
                "[bundles]\norigins = [{}]\nenvironment = '{}'\nroot_keys = [{}]\nroot_threshold = 16\nstate_dir = '../state'\npoll_interval = '24h'\nfetch_timeout = '24h'\nmax_manifest = '64MiB'\nmax_bundle = '1024GiB'\nkeep = 20\nhealth_grace = '24h'",
                eight_origins.join(", "),
                "e".repeat(64),
                sixteen_keys.join(", ")
            ),
            Ok(BundleSettings {
                origins: (1..=8)
                    .map(|i| format!("https://o{i}.example.net/p"))
                    .collect(),
                environment: "e".repeat(64),
                root_keys: (0..16u8).map(|i| format!("{i:02x}").repeat(32)).collect(),
                root_threshold: 16,
                state_dir: dir.path().join("state"),
                poll_interval: Duration::from_secs(86_400),
                fetch_timeout: Duration::from_secs(86_400),
                max_manifest_bytes: 64 << 20,
                max_bundle_bytes: 1 << 40,
                keep: 20,
                health_grace: Duration::from_secs(86_400),
            }),
        ),
        (
            format!(
                "[bundles]\norigins = ['https://a.example.net', 'https://b.example.net']\nenvironment = 'production'\nroot_keys = ['{ROOT_A}', '{ROOT_B}']\nroot_threshold = 2"
            ),
            Ok(BundleSettings {
                origins: vec![
                    "https://a.example.net".into(),
                    "https://b.example.net".into(),
                ],
                root_keys: vec![ROOT_A.into(), ROOT_B.into()],
                root_threshold: 2,
                ..defaults.clone()
            }),
        ),
        (
            String::from("bundles = 'on'"),
            Err(vec![r#"bundles: expected a table, found the string "on""#]),
        ),
        (
            String::from("bundles = {}"),
            Err(vec![
                r#"bundles.origins: required key is missing (expected URLs like ["https://origin.example.net"])"#,
                r#"bundles.environment: required key is missing (expected an environment name like "production")"#,
                r#"bundles.root_keys: required key is missing (expected the root public keys as hex, like ["<64 hex digits>"])"#,
            ]),
        ),
        (
            format!("{required}root_threshold = 0"),
            Err(vec![
                "bundles.root_threshold: expected an integer between 1 and 1 (the number of root_keys), found 0",
            ]),
        ),
        (
            format!("{required}root_threshold = 2"),
            Err(vec![
                "bundles.root_threshold: expected an integer between 1 and 1 (the number of root_keys), found 2",
            ]),
        ),
        (
            format!(
                "[bundles]\norigins = ['https://a.example.net', 'https://b.example.net', 'HTTPS://A.example.net/']\nenvironment = 'production'\nroot_keys = ['{ROOT_A}']"
            ),
            Err(vec![
                r#"bundles.origins[2]: "HTTPS://A.example.net/" is listed twice (same as bundles.origins[0])"#,
            ]),
        ),
        (
            format!("{required}fetch_timeout = '24h 1ns'\nhealth_grace = '-1s'"),
            Err(vec![
                r#"bundles.health_grace: expected a duration like "2s", found "-1s""#,
                r#"bundles.fetch_timeout: expected at most "24h", found "1day 1ns""#,
            ]),
        ),
    ] {
        fs::write(&path, &text).unwrap();
        let got = load_bootstrap(&path, &Overrides::default());
        match expected {
            Ok(bundles) => {
                let bootstrap = got.unwrap_or_else(|e| panic!("{text}: {e}"));
                assert_eq!(bootstrap.bundles, Some(bundles), "{text}");
                let edge = quick_upstream("http://127.0.0.1:1", "us-east-1").unwrap();
                let rendered = render_effective(&bootstrap, &edge);
                assert!(rendered.contains("\n[bundles]\n"), "{rendered}");
                common::round_trip(&bootstrap, &edge, &rendered);
            }
            Err(messages) => assert_eq!(keyed(&got.unwrap_err()), messages, "{text}"),
        }
    }

    // Local mode renders no [bundles] table, and round-trips to local mode.
    fs::write(&path, "").unwrap();
    let bootstrap = load_bootstrap(&path, &Overrides::default()).unwrap();
    let edge = quick_upstream("http://127.0.0.1:1", "us-east-1").unwrap();
    let rendered = render_effective(&bootstrap, &edge);
    assert!(!rendered.contains("[bundles]"), "{rendered}");
    common::round_trip(&bootstrap, &edge, &rendered);

    // The region names the bundle scope: an overridden region is checked
    // in bundle mode as in local mode.
    fs::write(&path, &required).unwrap();
    let overrides = Overrides {
        region: Some("eu_west".into()),
        ..Overrides::default()
    };
    assert_eq!(
        keyed(&load_bootstrap(&path, &overrides).unwrap_err()),
        [
            r#"node.region: expected a region id like "us-east-1" (lower-case letters, digits and '-'), found "eu_west" (from overrides)"#
        ]
    );
}

/// Modules through the in-memory entry point: an overlay overrides single
/// config keys (and is named in errors about them), relative paths resolve
/// against the file that set them, and the memory ceiling is checked
/// without a bootstrap.
#[test]
fn modules_and_overlays() {
    let base = tempfile::tempdir().unwrap();
    for file in [
        "bundle/modules/c.wasm",
        "overlays/modules/c.wasm",
        "bundle/h.wasm",
    ] {
        let path = base.path().join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "x").unwrap();
    }
    let global = r#"
[upstreams.api]
targets = ["http://127.0.0.1:9000"]

[modules.compliance]
path = "modules/c.wasm"
memory = "4GiB"

[modules.compliance.config]
banner = "cookies"
levels = [1, 2]
strict = true

[modules.compliance.config.copy]
title = "Privacy"
lines = 2

[modules.hello]
path = "h.wasm"

[routes.api]
path = "/api"
upstream = "api"
filters = ["compliance"]

[routes.hello]
path = "/hello"
handler = "hello"
backends = ["api"]
"#;
    let overlay = format!(
        "{EU_CENTRAL}\n[modules.compliance]\npath = \"modules/c.wasm\"\n\n[modules.compliance.config]\nbanner = \"gdpr\"\nlevels = [3]\n\n[modules.compliance.config.copy]\nlines = 3\n"
    );
    let global_dir = base.path().join("bundle");
    let overlay_dir = base.path().join("overlays");
    let global_source = Source {
        name: Path::new("bundle/edge.toml"),
        text: global,
        base_dir: &global_dir,
    };
    let overlay_source = Source {
        name: Path::new("overlays/eu-central-1.toml"),
        text: &overlay,
        base_dir: &overlay_dir,
    };
    let edge = parse_edge(global_source, Some(overlay_source), "eu-central-1").unwrap();
    let compliance = &edge.modules["compliance"];
    assert_eq!(compliance.path, overlay_dir.join("modules/c.wasm"));
    assert_eq!(
        compliance.memory_limit_bytes,
        4 << 30,
        "no cap without a bootstrap"
    );
    let config: Vec<(&str, &str)> = compliance
        .config
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        config,
        [
            ("banner", "gdpr"),
            ("copy.lines", "3"),
            ("copy.title", "Privacy"),
            ("levels", "[3]"),
            ("strict", "true"),
        ],
        "keys merge one by one, nested tables too; arrays replace"
    );
    assert_eq!(
        edge.modules["hello"],
        ModuleConfig {
            name: "hello".into(),
            path: global_dir.join("h.wasm"),
            cpu_deadline: Duration::from_millis(50),
            wall_timeout: Duration::from_secs(30),
            memory_limit_bytes: 64 << 20,
            config: Default::default(),
            rate_limits: Vec::new(),
        }
    );
    let api = edge.routes.iter().find(|r| r.name == "api").unwrap();
    assert_eq!(
        api.filters,
        [FilterRef {
            module: "compliance".into(),
            fail: FailPolicy::Closed,
            response_body: false,
            max_body_bytes: 1 << 20,
        }]
    );
    let hello = edge.routes.iter().find(|r| r.name == "hello").unwrap();
    assert_eq!(
        hello.target,
        RouteTarget::Handler(HandlerTarget {
            module: "hello".into(),
            backends: vec!["api".into()],
        })
    );
    assert_eq!(
        hello.cache, None,
        "handler routes are not cached: their component answers every request"
    );
    assert!(hello.filters.is_empty());

    // Errors name the file that set the key: overridden keys the overlay,
    // the others the global file.
    // (An empty key inside a table value is fine: it is JSON.)
    let broken = overlay
        .replace("banner = \"gdpr\"", "\"\" = \"gdpr\"")
        .replace("lines = 3", "\"\" = 3")
        .replace("modules/c.wasm", "modules/missing.wasm");
    let errors = parse_edge(
        global_source,
        Some(Source {
            text: &broken,
            ..overlay_source
        }),
        "eu-central-1",
    )
    .unwrap_err();
    let dir = overlay_dir.display();
    assert_eq!(
        errors.to_string(),
        format!(
            "overlays/eu-central-1.toml: modules.compliance.path: file not found: {dir}/modules/missing.wasm\n\
             overlays/eu-central-1.toml: modules.compliance.config.\"\": expected a non-empty key, found an empty string"
        )
    );
    let errors = parse_edge(
        Source {
            text: &global.replace("memory = \"4GiB\"", "memory = \"4097MiB\""),
            ..global_source
        },
        Some(overlay_source),
        "eu-central-1",
    )
    .unwrap_err();
    assert_eq!(
        errors.to_string(),
        "bundle/edge.toml: modules.compliance.memory: expected between 1MiB and 4GiB, found 4097MiB"
    );
}

/// A module's memory fits the bootstrap's `wasm.max_memory`: checked by
/// `load` (naming the bootstrap file) and `load_edge`, not by `parse_edge`.
#[test]
fn module_memory_cap() {
    let dir = tree(&[
        ("node.toml", "[wasm]\nmax_memory = '128MiB'\n"),
        (
            "edge.toml",
            "[modules.a]\npath = 'a.wasm'\nmemory = '128MiB'\n\n[modules.b]\npath = 'a.wasm'\nmemory = '256MiB'\n",
        ),
        ("a.wasm", "x"),
        ("regions/us-east-1.toml", US_EAST),
    ]);
    let node = dir.path().join("node.toml");
    let errors = load(&node, &Overrides::default()).unwrap_err();
    assert_eq!(
        errors.to_string(),
        format!(
            "{}: modules.b.memory: expected at most wasm.max_memory in {} (128MiB), found 256MiB",
            dir.path().join("edge.toml").display(),
            node.display()
        )
    );
    let bootstrap = load_bootstrap(&node, &Overrides::default()).unwrap();
    assert_eq!(
        keyed(&load_edge(&bootstrap).unwrap_err()),
        [
            "modules.b.memory: expected at most the bootstrap's wasm.max_memory (128MiB), found 256MiB"
        ]
    );
    let text = fs::read_to_string(dir.path().join("edge.toml")).unwrap();
    let source = Source {
        name: Path::new("edge.toml"),
        text: &text,
        base_dir: dir.path(),
    };
    assert_eq!(
        parse_edge(source, None, "us-east-1").unwrap().modules["b"].memory_limit_bytes,
        256 << 20
    );

    // A bootstrap with other errors still caps the modules.
    fs::write(
        &node,
        "[wasm]\nmax_memory = '128MiB'\n\n[limits]\nmax_headers = 0\n",
    )
    .unwrap();
    assert_eq!(
        keyed(&load(&node, &Overrides::default()).unwrap_err()),
        [
            "limits.max_headers: expected a positive integer, found 0",
            &format!(
                "modules.b.memory: expected at most wasm.max_memory in {} (128MiB), found 256MiB",
                node.display()
            ),
        ]
    );
}

/// Which routes cache, and the errors about cache keys name the file that set them.
#[test]
fn route_cache_and_overlays() {
    let global = r#"
[upstreams.o]
targets = ["http://127.0.0.1:9000"]

[routes.site]
path = "/"
static = "."

[routes.plain]
path = "/plain"
upstream = "o"

[routes.api]
path = "/api"
upstream = "o"

[routes.api.cache]
class = "api"
ignore_query = ["utm_source"]

[routes.live]
path = "/live"
upstream = "o"
cache = false
"#;
    let dir = tempfile::tempdir().unwrap();
    let global_source = Source {
        name: Path::new("edge.toml"),
        text: global,
        base_dir: dir.path(),
    };
    let edge = parse_edge(global_source, None, "us-east-1").unwrap();
    let cache_of = |edge: &cathedral_config::EdgeConfig, name: &str| {
        edge.routes
            .iter()
            .find(|r| r.name == name)
            .unwrap()
            .cache
            .clone()
    };
    assert_eq!(cache_of(&edge, "site"), None, "static routes never cache");
    assert_eq!(cache_of(&edge, "plain"), Some(RouteCache::default()));
    assert_eq!(cache_of(&edge, "live"), None);
    assert_eq!(
        cache_of(&edge, "api"),
        Some(RouteCache {
            class: ClassChoice::Fixed(ContentClassName::Api),
            ignore_query: vec!["utm_source".into()],
            ..RouteCache::default()
        })
    );

    // The overlay changes one key of a table, turns a table off and a
    // boolean into a table.
    let overlay = format!(
        "{EU_CENTRAL}\n[routes.api.cache]\nkey_headers = [\"X-Tier\"]\n\n[routes.plain]\ncache = false\n\n[routes.live.cache]\nmode = \"override\"\nttl = \"1s\"\n"
    );
    let overlay_source = Source {
        name: Path::new("regions/eu-central-1.toml"),
        text: &overlay,
        base_dir: dir.path(),
    };
    let edge = parse_edge(global_source, Some(overlay_source), "eu-central-1").unwrap();
    assert_eq!(cache_of(&edge, "plain"), None);
    assert_eq!(
        cache_of(&edge, "api"),
        Some(RouteCache {
            class: ClassChoice::Fixed(ContentClassName::Api),
            ignore_query: vec!["utm_source".into()],
            key_headers: vec![http::HeaderName::from_static("x-tier")],
            ..RouteCache::default()
        })
    );
    assert_eq!(
        cache_of(&edge, "live"),
        Some(RouteCache {
            mode: CacheMode::Override,
            ttl: Some(Duration::from_secs(1)),
            ..RouteCache::default()
        })
    );

    // Errors name the file each key came from.
    let overlay = format!(
        "{EU_CENTRAL}\n[routes.api.cache]\nmode = \"override\"\n\n[routes.live.cache]\nclass = \"nope\"\n\n[routes.site]\ncache = true\n"
    );
    let overlay_source = Source {
        text: &overlay,
        ..overlay_source
    };
    let errors = parse_edge(global_source, Some(overlay_source), "eu-central-1").unwrap_err();
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            r#"regions/eu-central-1.toml: routes.api.cache.ttl: required with mode = "override" (expected a duration like "5m" that replaces the origin's freshness)"#,
            r#"regions/eu-central-1.toml: routes.live.cache.class: expected "auto", "none", "image", "fingerprinted", "font", "video", "api", "per-user" or "realtime", found "nope""#,
            r#"regions/eu-central-1.toml: routes.site.cache: static routes serve local content and are not cached (expected cache = false or no cache key, found cache = true)"#,
        ]
    );
}

/// Rate-limit policies: defaults, every key kind, routes' lists and user
/// ids, what an overlay can change, and errors naming the file of each key.
#[test]
fn rate_limits_and_overlays() {
    let global = r#"
[upstreams.o]
targets = ["http://127.0.0.1:9000"]

[rate_limits.per-ip]
rate = 10

[rate_limits.per-user]
rate = 100
per = "1m"
burst = 20
penalty = "30s"
key = "user-id"
max_keys = 5000
headers = "always"

[routes.api]
path = "/api"
upstream = "o"
rate_limits = ["per-ip", "per-user"]
user_id = "cookie:uid"

[routes.site]
path = "/"
static = "."
"#;
    let dir = tempfile::tempdir().unwrap();
    let global_source = Source {
        name: Path::new("edge.toml"),
        text: global,
        base_dir: dir.path(),
    };
    let edge = parse_edge(global_source, None, "us-east-1").unwrap();
    let route = |edge: &cathedral_config::EdgeConfig, name: &str| {
        edge.routes.iter().find(|r| r.name == name).unwrap().clone()
    };
    let per_ip = RateLimitPolicy {
        name: "per-ip".into(),
        rate: 10,
        period: Duration::from_secs(1),
        burst: 10,
        penalty: None,
        key: RateLimitKey::ClientIp {
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        },
        max_keys: 100_000,
        headers_on_allowed: false,
    };
    let per_user = RateLimitPolicy {
        name: "per-user".into(),
        rate: 100,
        period: Duration::from_secs(60),
        burst: 20,
        penalty: Some(Duration::from_secs(30)),
        key: RateLimitKey::UserId,
        max_keys: 5000,
        headers_on_allowed: true,
    };
    assert_eq!(
        edge.rate_limits,
        [
            ("per-ip".to_owned(), per_ip.clone()),
            ("per-user".to_owned(), per_user.clone())
        ]
        .into_iter()
        .collect()
    );
    let api = route(&edge, "api");
    assert_eq!(api.rate_limits, ["per-ip", "per-user"]);
    assert_eq!(api.user_id, Some(UserIdSource::Cookie("uid".into())));
    let site = route(&edge, "site");
    assert!(site.rate_limits.is_empty());
    assert_eq!(site.user_id, None);
    let bootstrap = default_bootstrap(&Overrides::default()).unwrap();
    common::round_trip(&bootstrap, &edge, &render_effective(&bootstrap, &edge));

    // The overlay changes one key of a policy, adds a policy, replaces a
    // route's list and gives the static route a policy and a user id.
    let overlay = format!(
        "{EU_CENTRAL}\n[rate_limits.per-ip]\nipv6_prefix = 56\nkey = \"client-ip\"\n\n[rate_limits.per-key]\nrate = 1\nkey = \"header:X-Api-Key\"\n\n[routes.api]\nrate_limits = [\"per-key\"]\n\n[routes.site]\nrate_limits = [\"per-user\", \"per-ip\"]\nuser_id = \"header:X-User\"\n"
    );
    let overlay_source = Source {
        name: Path::new("regions/eu-central-1.toml"),
        text: &overlay,
        base_dir: dir.path(),
    };
    let edge = parse_edge(global_source, Some(overlay_source), "eu-central-1").unwrap();
    assert_eq!(
        edge.rate_limits["per-ip"],
        RateLimitPolicy {
            key: RateLimitKey::ClientIp {
                ipv4_prefix: 32,
                ipv6_prefix: 56,
            },
            ..per_ip
        }
    );
    assert_eq!(edge.rate_limits["per-user"], per_user);
    assert_eq!(
        edge.rate_limits["per-key"].key,
        RateLimitKey::Header(http::HeaderName::from_static("x-api-key"))
    );
    assert_eq!(
        edge.rate_limits["per-key"].burst, 1,
        "burst defaults to rate"
    );
    assert_eq!(route(&edge, "api").rate_limits, ["per-key"]);
    assert_eq!(
        route(&edge, "api").user_id,
        Some(UserIdSource::Cookie("uid".into())),
        "kept from the global file"
    );
    let site = route(&edge, "site");
    assert_eq!(site.rate_limits, ["per-user", "per-ip"]);
    assert_eq!(
        site.user_id,
        Some(UserIdSource::Header(http::HeaderName::from_static(
            "x-user"
        )))
    );
    common::round_trip(&bootstrap, &edge, &render_effective(&bootstrap, &edge));

    // Errors name the file each key came from.
    let overlay = format!(
        "{EU_CENTRAL}\n[rate_limits.per-ip]\nkey = \"cookie:a b\"\n\n[rate_limits.per-user]\nburst = 0\n\n[routes.site]\nrate_limits = [\"per-user\", \"nope\"]\n"
    );
    let overlay_source = Source {
        text: &overlay,
        ..overlay_source
    };
    let errors = parse_edge(global_source, Some(overlay_source), "eu-central-1").unwrap_err();
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            r#"regions/eu-central-1.toml: rate_limits.per-ip.key: expected a cookie name after "cookie:" (an RFC 6265 token: visible ASCII without separators such as ; , = / or spaces), like "cookie:session", found "cookie:a b""#,
            r#"regions/eu-central-1.toml: rate_limits.per-user.burst: expected a positive integer, found 0"#,
            r#"regions/eu-central-1.toml: routes.site.rate_limits[0]: policy "per-user" is keyed by user-id (set in edge.toml) but route "site" has no user_id (set user_id = "cookie:<name>" or "header:<name>" on the route)"#,
            r#"regions/eu-central-1.toml: routes.site.rate_limits[1]: no rate-limit policy named "nope" (known: per-ip, per-user)"#,
        ]
    );
}

/// The limiter's bounds, exactly: one request per nanosecond, an empty
/// bucket refilled within 3650 days, a penalty of at least 1ms.
#[test]
fn rate_limit_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let check = |policy: &str, expected: &[&str]| {
        let text = format!("[rate_limits.p]\n{policy}\n");
        let source = Source {
            name: Path::new("edge.toml"),
            text: &text,
            base_dir: dir.path(),
        };
        let got = parse_edge(source, None, "us-east-1")
            .map(|_| Vec::new())
            .unwrap_or_else(|errors| keyed(&errors));
        assert_eq!(got, expected, "{policy}");
    };
    check("rate = 1000000000\nper = '1s'", &[]);
    check(
        "rate = 1000000001\nper = '1s'",
        &[
            "rate_limits.p.rate: expected at most 1000000000 requests per \"1s\" (one per nanosecond), found 1000000001",
        ],
    );
    check("rate = 4294967295\nper = '24h'\nburst = 4294967295", &[]);
    check("rate = 1\nper = '24h'\nburst = 3650", &[]);
    check(
        "rate = 1\nper = '24h'\nburst = 3651",
        &[
            "rate_limits.p.burst: expected at most 3650 (at 1 per \"1day\", an empty bucket of a larger burst takes more than 3650 days to refill), found 3651",
        ],
    );
    check("rate = 1\npenalty = '1ms'", &[]);
    check(
        "rate = 1\npenalty = '999us'",
        &["rate_limits.p.penalty: expected at least \"1ms\", found \"999us\""],
    );
    // A bad `per` is reported once, not measured against `rate` as well.
    check(
        "rate = 4294967295\nper = 'soon'",
        &["rate_limits.p.per: expected a duration like \"2s\", found \"soon\""],
    );
}

#[test]
fn default_bootstrap_applies_and_checks_overrides() {
    let overrides = Overrides {
        region: Some("eu-central-1".into()),
        listen: Some(addr("127.0.0.1:0")),
        admin_listen: Some(addr("127.0.0.1:0")),
        ..Overrides::default()
    };
    let bootstrap = default_bootstrap(&overrides).unwrap();
    assert_eq!(bootstrap.region, "eu-central-1");
    assert_eq!(bootstrap.listeners[0].addr, addr("127.0.0.1:0"));
    assert_eq!(
        bootstrap.admin.listen,
        addr("127.0.0.1:0"),
        "port 0 twice is no clash"
    );

    let public_admin = Overrides {
        admin_listen: Some(addr("0.0.0.0:9090")),
        ..Overrides::default()
    };
    let errors = default_bootstrap(&public_admin).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "<built-in defaults>: admin.token: required because the admin_listen override (0.0.0.0:9090) \
         is not a loopback address; set admin.token or listen on 127.0.0.1"
    );
    let with_token = Overrides {
        admin_token: Some("s3cret".into()),
        ..public_admin
    };
    assert_eq!(
        default_bootstrap(&with_token)
            .unwrap()
            .admin
            .token
            .as_deref(),
        Some("s3cret")
    );

    let bad = Overrides {
        region: Some("../../etc".into()),
        admin_token: Some("two words".into()),
        tls_listen: Some(addr("127.0.0.1:8443")),
        ..Overrides::default()
    };
    assert_eq!(
        keyed(&default_bootstrap(&bad).unwrap_err()),
        [
            r#"node.region: expected a region id like "us-east-1" (lower-case letters, digits and '-'), found "../../etc" (from overrides)"#,
            "tls.certificates: the tls_listen override needs at least one [[tls.certificates]] entry",
            "admin.token: expected a token of visible ASCII characters without spaces (the value is not shown) (from overrides)",
        ]
    );
}

#[test]
fn file_overrides() {
    let node = r#"
[node]
trusted_proxies = ["10.0.0.0/8"]

[[listen]]
addr = "127.0.0.1:8080"
proxy_protocol = true

[[listen]]
addr = "127.0.0.1:8081"

[[listen]]
addr = "127.0.0.1:8443"
tls = true
min_version = "1.2"

[tls]
min_version = "1.2"

[[tls.certificates]]
server_names = ["localhost"]
cert = "cert.pem"
key = "key.pem"

[admin]
token = "from-file"
"#;
    let dir = tree(&[("node.toml", node), ("cert.pem", "x"), ("key.pem", "x")]);
    let path = dir.path().join("node.toml");

    let from_file = load_bootstrap(&path, &Overrides::default()).unwrap();
    assert_eq!(from_file.listeners.len(), 2);
    assert!(from_file.listeners[0].proxy_protocol);
    assert_eq!(from_file.tls_listeners.len(), 1);
    assert_eq!(
        from_file.tls_listeners[0].certificates[0].cert,
        dir.path().join("cert.pem")
    );
    assert_eq!(from_file.admin.token.as_deref(), Some("from-file"));

    let overrides = Overrides {
        region: Some("eu-central-1".into()),
        listen: Some(addr("127.0.0.1:0")),
        tls_listen: Some(addr("127.0.0.1:0")),
        admin_listen: Some(addr("[::1]:0")),
        admin_token: Some("from-overrides".into()),
    };
    let overridden = load_bootstrap(&path, &overrides).unwrap();
    assert_eq!(overridden.region, "eu-central-1");
    assert_eq!(
        overridden.listeners.len(),
        1,
        "listen replaces all plain listeners"
    );
    assert_eq!(overridden.listeners[0].addr, addr("127.0.0.1:0"));
    assert!(!overridden.listeners[0].proxy_protocol);
    assert_eq!(
        overridden.tls_listeners.len(),
        1,
        "tls_listen replaces all TLS listeners"
    );
    assert_eq!(overridden.tls_listeners[0].addr, addr("127.0.0.1:0"));
    assert_eq!(
        overridden.tls_listeners[0].min_version,
        TlsVersion::Tls12,
        "from [tls]"
    );
    assert_eq!(
        overridden.tls_listeners[0].certificates,
        from_file.tls_listeners[0].certificates
    );
    assert_eq!(overridden.admin.listen, addr("[::1]:0"));
    assert_eq!(overridden.admin.token.as_deref(), Some("from-overrides"));

    // The token never shows in the rendered config.
    let edge = quick_upstream("http://127.0.0.1:9000", "eu-central-1").unwrap();
    let rendered = render_effective(&overridden, &edge);
    assert!(!rendered.contains("from-overrides"));
    assert!(rendered.contains("token = \"<redacted>\""));
}

#[test]
fn load_reports_bootstrap_and_edge_errors_together() {
    let dir = tree(&[
        (
            "node.toml",
            "[node]\nregion = \"us-east-1\"\n\n[limits]\nmax_headers = 0\n",
        ),
        (
            "edge.toml",
            "[routes.a]\npath = \"/\"\nupstream = \"missing\"\n",
        ),
        ("regions/us-east-1.toml", US_EAST),
    ]);
    let errors = load(&dir.path().join("node.toml"), &Overrides::default()).unwrap_err();
    assert_eq!(
        keyed(&errors),
        [
            "limits.max_headers: expected a positive integer, found 0",
            r#"routes.a.upstream: no upstream named "missing" (no upstreams are defined)"#,
        ]
    );
    assert_eq!(errors.0[0].file, dir.path().join("node.toml"));
    assert_eq!(errors.0[1].file, dir.path().join("edge.toml"));
}

#[test]
fn load_edge_region_selection() {
    let dir = tree(&[
        ("node.toml", ""),
        (
            "edge.toml",
            "[upstreams.o]\ntargets = [\"http://127.0.0.1:1\"]\n",
        ),
        ("regions/us-east-1.toml", US_EAST),
        ("regions/eu-central-1.toml", EU_CENTRAL),
    ]);
    let overrides = Overrides {
        region: Some("eu-central-1".into()),
        ..Overrides::default()
    };
    let bootstrap = load_bootstrap(&dir.path().join("node.toml"), &overrides).unwrap();
    assert_eq!(load_edge(&bootstrap).unwrap().region, "eu-central-1");

    let mut unknown = bootstrap.clone();
    unknown.region = "ap-south-1".into();
    let errors = load_edge(&unknown).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].key, "node.region");
    assert!(
        errors.0[0]
            .message
            .ends_with("for region \"ap-south-1\" (known regions: eu-central-1, us-east-1)"),
        "{}",
        errors.0[0].message
    );

    // A region that is not an id never reaches the file system.
    let mut traversal = bootstrap;
    traversal.region = "../edge".into();
    assert_eq!(load_edge(&traversal).unwrap_err().0[0].key, "node.region");
}

#[test]
fn unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let errors = load(&missing, &Overrides::default()).unwrap_err();
    assert_eq!(errors.0, [ConfigError::new(&missing, "", "file not found")]);

    let dir = tree(&[("node.toml", ""), ("regions/us-east-1.toml", US_EAST)]);
    let errors = load(&dir.path().join("node.toml"), &Overrides::default()).unwrap_err();
    assert_eq!(
        errors.0,
        [ConfigError::new(
            dir.path().join("edge.toml"),
            "",
            "file not found"
        )]
    );

    let dir = tree(&[("node.toml", "")]);
    fs::write(dir.path().join("node.toml"), b"[node]\nregion = \"\xff\"\n").unwrap();
    let errors = load(&dir.path().join("node.toml"), &Overrides::default()).unwrap_err();
    assert_eq!(errors.0[0].message, "not UTF-8 text");
}

#[test]
fn parse_edge_in_memory_names_the_file_of_each_key() {
    let base = tempfile::tempdir().unwrap();
    fs::create_dir_all(base.path().join("bundle/site")).unwrap();
    fs::create_dir_all(base.path().join("overlays/site-eu")).unwrap();
    let global = "[upstreams.o]\ntargets = [\"http://127.0.0.1:9000\"]\n\n[routes.site]\npath = \"/\"\nstatic = \"site\"\n";
    let overlay = format!(
        "{EU_CENTRAL}\n[routes.site]\nstatic = \"site-eu\"\n\n[upstreams.o]\npool_max_idle = -3\n"
    );
    let global_dir = base.path().join("bundle");
    let overlay_dir = base.path().join("overlays");
    let global_source = Source {
        name: Path::new("bundle/edge.toml"),
        text: global,
        base_dir: &global_dir,
    };
    let overlay_source = Source {
        name: Path::new("overlays/eu-central-1.toml"),
        text: &overlay,
        base_dir: &overlay_dir,
    };
    let errors = parse_edge(global_source, Some(overlay_source), "eu-central-1").unwrap_err();
    assert_eq!(
        errors.to_string(),
        "overlays/eu-central-1.toml: upstreams.o.pool_max_idle: expected a non-negative integer, found -3"
    );

    let fixed = overlay.replace("pool_max_idle = -3", "pool_max_idle = 3");
    let overlay_source = Source {
        text: &fixed,
        ..overlay_source
    };
    let edge = parse_edge(global_source, Some(overlay_source), "eu-central-1").unwrap();
    let RouteTarget::Static(site) = &edge.routes[0].target else {
        panic!("static route expected");
    };
    assert_eq!(
        site.root,
        overlay_dir.join("site-eu"),
        "relative to the overlay that set it"
    );
    assert_eq!(edge.upstreams["o"].pool_max_idle, 3);

    // Without an overlay; the global alone.
    let edge = parse_edge(global_source, None, "us-east-1").unwrap();
    let RouteTarget::Static(site) = &edge.routes[0].target else {
        panic!("static route expected");
    };
    assert_eq!(site.root, global_dir.join("site"));

    // The overlay must be for the node's region.
    let errors = parse_edge(global_source, Some(overlay_source), "us-east-1").unwrap_err();
    assert_eq!(
        keyed(&errors),
        [
            r#"region.id: this overlay is for region "eu-central-1" but the node's region is "us-east-1""#
        ]
    );
}

#[test]
fn quick_mode() {
    let edge = quick_upstream("http://127.0.0.1:9000", "us-east-1").unwrap();
    assert_eq!(edge.region, "us-east-1");
    let upstream = &edge.upstreams["upstream"];
    assert_eq!(upstream.scheme, Scheme::Http);
    assert_eq!(upstream.targets, ["127.0.0.1:9000"]);
    assert_eq!(upstream.tls, None);
    assert_eq!(upstream.connect_timeout, Duration::from_secs(2));
    assert_eq!(edge.routes.len(), 1);
    let route = &edge.routes[0];
    assert_eq!(route.name, "upstream");
    assert!(route.hosts.is_empty());
    assert_eq!(route.path_prefix, "/");
    assert_eq!(route.target, RouteTarget::Upstream("upstream".into()));
    assert_eq!(route.host_header, HostHeader::Preserve);
    assert!(route.rate_limits.is_empty());
    assert_eq!(route.user_id, None);
    assert!(route.filters.is_empty());
    assert!(edge.rate_limits.is_empty(), "quick mode has no policies");
    assert!(edge.modules.is_empty(), "quick mode has no modules");
    assert_eq!(
        route.cache,
        Some(RouteCache {
            class: ClassChoice::Disabled,
            ..RouteCache::default()
        }),
        "quick mode caches by RFC 9111 alone"
    );
    let bootstrap = default_bootstrap(&Overrides::default()).unwrap();
    common::round_trip(&bootstrap, &edge, &render_effective(&bootstrap, &edge));

    let tls = quick_upstream("https://origin.example.com/", "us-east-1").unwrap();
    let upstream = &tls.upstreams["upstream"];
    assert_eq!(upstream.scheme, Scheme::Https);
    assert_eq!(upstream.targets, ["origin.example.com:443"]);
    assert_eq!(
        upstream.tls,
        Some(UpstreamTls {
            ca_file: None,
            server_name: None
        })
    );

    let errors = quick_upstream("http://127.0.0.1:9000/app", "Mars").unwrap_err();
    assert_eq!(
        errors.to_string(),
        "<command line>: node.region: expected a region id like \"us-east-1\" (lower-case letters, digits and '-'), found \"Mars\"\n\
         <command line>: upstream: \"http://127.0.0.1:9000/app\": a target URL has no path (found \"/app\"); routes choose paths"
    );
}

/// No input panics: a few hostile documents go through every entry point.
#[test]
fn hostile_input_is_an_error_not_a_panic() {
    let inputs = [
        "",
        "=",
        "[[routes]]\npath = 1",
        "routes = 1\nupstreams = []",
        "[routes.a]\nhosts = [[]]\npath = \"/\u{0}\"\nupstream = \"\"",
        "[routes.\"\"]\npath = \"/\"\nstatic = \"\"",
        "[upstreams.a]\ntargets = [\"http://[::1\", \"http://\", \"https://a:99999\"]\nconnect_timeout = \"18446744073709551615s\"",
        "[[listen]]\naddr = \"[::1]:99999\"\n[limits]\nmax_body_bytes = 1e9\nmax_connections = 9223372036854775807",
        "node = 1\nlisten = 2\ntls = 3\nadmin = 4\nlimits = 5",
        "[tls]\ncertificates = [1, {}]\n[[listen]]\ntls = true",
        "[region]\nid = 5",
        "[cache]\nintegrity = '1/'\nmemory = 1e9\n[routes.a]\npath = '/'\nupstream = 'a'\ncache = { ttl = '99999999999999999h', key_headers = [[]], class = 5 }",
        "rate_limits = [1]\n[routes.a]\npath = '/'\nstatic = '.'\nrate_limits = ['x']\nuser_id = 'header:'",
        "[rate_limits.\"\"]\nrate = 9223372036854775807\nburst = 9223372036854775807\nipv4_prefix = 9223372036854775807\nipv6_prefix = 255\nmax_keys = 9223372036854775807\nper = '99999999999999999h'\nkey = 'cookie:\\u0000'",
        "[rate_limits.a]\nrate = 1\nkey = 'user-id'\n[routes.a]\npath = '/'\nstatic = '.'\nrate_limits = ['a', 'a', 'b']\nuser_id = 'cookie:'",
        "wasm = 1\nmodules = 2\n[routes.a]\npath = '/'\nhandler = 3\nfilters = [[], {}, '', 1e400]\nbackends = [1]",
        "[wasm]\nartifact_cache = '\\u0000'\nmax_instances = 9223372036854775807\nmax_memory = '18446744073709551615'\n[modules.\"\"]\npath = '\\u0000'\nmemory = '18446744073709551615'\ncpu_deadline = '99999999999999999h'\nwall_timeout = '99999999999999999h'\nrate_limits = [[]]\nconfig = { \"\" = nan, a = [inf, { b = -inf }] }",
        "[bundles]\norigins = ['http://[::1', '', 'https://a:99999999999999999999', \"https://\\u0000\", \"http://a/\\u0000\", 'http://a/\\x', 'https://a/b/../..']\nenvironment = \"\\u0000\"\nroot_keys = [\"\\u00e9\\u00e9\", '', \"\\u0000\"]\nroot_threshold = 9223372036854775807\nstate_dir = \"\\u0000\"\npoll_interval = '99999999999999999h'\nmax_manifest = '18446744073709551615'\nmax_bundle = 9223372036854775807\nkeep = 9223372036854775807\nhealth_grace = '1ns'",
        "bundles = []\n[[bundles]]",
        "[modules.a]\npath = '.'\nconfig = { x = 1979-05-27T07:32:00Z }\n[routes.a]\npath = '/'\nhandler = 'a'\nfilters = ['a', 'a', { module = 'a', max_body = '18446744073709551615', fail = 1 }]\nbackends = ['a', 'a']",
    ];
    let dir = tree(&[("regions/us-east-1.toml", US_EAST)]);
    for input in inputs {
        fs::write(dir.path().join("node.toml"), input).unwrap();
        fs::write(dir.path().join("edge.toml"), input).unwrap();
        let loaded = load(&dir.path().join("node.toml"), &Overrides::default());
        assert_eq!(loaded.is_ok(), input.is_empty(), "{input:?}: {loaded:?}");
        let source = Source {
            name: Path::new("us-east-1.toml"),
            text: input,
            base_dir: dir.path(),
        };
        let parsed = parse_edge(source, Some(source), "us-east-1");
        assert!(
            parsed.is_err(),
            "{input:?}: an overlay needs [region] (and more)"
        );
        assert!(quick_upstream(input, input).is_err(), "{input:?}");
    }
}

#[test]
fn geoip_database_path() {
    let dir = tree(&[("etc/node.toml", ""), ("geo/country.mmdb", "x")]);
    let path = dir.path().join("etc/node.toml");
    let load = |text: &str| {
        fs::write(&path, text).unwrap();
        load_bootstrap(&path, &Overrides::default())
    };
    assert_eq!(load("").unwrap().geoip_db, None);
    assert_eq!(
        load("[node]\ngeoip_db = '../geo/country.mmdb'")
            .unwrap()
            .geoip_db,
        Some(dir.path().join("geo/country.mmdb")),
        "relative to the bootstrap file"
    );
    let rendered = {
        let b = load("[node]\ngeoip_db = '../geo/country.mmdb'").unwrap();
        let edge = cathedral_config::parse_edge(
            cathedral_config::Source {
                name: Path::new("edge.toml"),
                text: "",
                base_dir: dir.path(),
            },
            None,
            "us-east-1",
        )
        .unwrap();
        cathedral_config::render_effective(&b, &edge)
    };
    assert!(rendered.contains("geoip_db = "), "{rendered}");
    for (text, expected) in [
        (
            "[node]\ngeoip_db = ''",
            "node.geoip_db: expected the path of a MaxMind database file",
        ),
        (
            "[node]\ngeoip_db = 'missing.mmdb'",
            "node.geoip_db: file not found",
        ),
        ("[node]\ngeoip_db = '../geo'", "node.geoip_db: "),
        ("[node]\ngeoip_db = 3", "node.geoip_db"),
    ] {
        let errors = load(text).unwrap_err();
        let got = keyed(&errors).join("\n");
        assert!(got.contains(expected), "{text}: {got}");
    }
}
