//! The `ratelimit` guest (`guest-modules/ratelimit`) against real wasmtime
//! and the host's real limiters: `RateLimits` built from
//! `cathedral_limits::Limiter`s on one fake clock, so every decision, header
//! and refill is deterministic.
//!
//! The module's config is written as an operator writes it in
//! `edge-config/edge.toml` and goes through the node's own validation
//! (`cathedral_config::parse_edge`), which flattens the config's tables into
//! the dotted keys the module reads; the limiters follow the parsed
//! `[rate_limits.*]` policies.
//!
//! Policies: `api-anon` 1/s, burst 2 (anonymous clients, per IP);
//! `api-free` 1 per 10 s, burst 3; `api-pro` 10/s, burst 10.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cathedral_config::{EdgeConfig, Source, parse_edge};
use cathedral_limits::clock::FakeRelativeClock;
use cathedral_limits::{Limiter, PolicySpec, Quota};
use cathedral_wasm::{
    ClientInfo, EngineConfig, Module, ModuleConfig, ModuleSettings, PoolingConfig, RateLimitPolicy,
    RateLimits, RequestAction, RequestEnv, RequestHead, ResponseAction, ResponseParts, WasmEngine,
};
use cathedral_wasm_test_artifacts as guests;
use http::{HeaderMap, StatusCode};

/// The edge config around the module's `config`: its policies and the
/// module, granted them.
const EDGE: &str = r#"
[rate_limits.api-anon]
rate = 1
burst = 2

[rate_limits.api-free]
rate = 1
per = "10s"
burst = 3

[rate_limits.api-pro]
rate = 10

[modules.ratelimit]
path = "modules/ratelimit.wasm"
rate_limits = ["api-anon", "api-free", "api-pro"]
"#;

/// The module's config with `top` as the first lines of
/// `[modules.ratelimit.config]`.
fn config_with(top: &str) -> String {
    format!(
        r#"
[modules.ratelimit.config]
{top}
exempt = ["/api/health", "/status/"]

[modules.ratelimit.config.anonymous]
policy = "api-anon"
quota = 2
window = 2

[modules.ratelimit.config.tiers.free]
policy = "api-free"
keys = ["k-free"]
quota = 3
window = 30

[modules.ratelimit.config.tiers.pro]
policy = "api-pro"
keys = ["k-pro-1", "k-pro-2"]
quota = 10
window = 1
"#
    )
}

/// The config most tests use.
fn config() -> String {
    config_with(r#"api_key_header = "x-api-key""#)
}

/// A directory standing for `edge-config/`: `modules/ratelimit.wasm` is the
/// guest, so the config's `path` resolves to it.
fn config_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("modules")).expect("mkdir modules");
        std::fs::copy(guests::RATELIMIT, dir.path().join("modules/ratelimit.wasm"))
            .expect("copy the ratelimit guest");
        dir
    })
    .path()
}

/// `text` (an edge config) through the node's validation.
fn parse(text: &str) -> EdgeConfig {
    let source = Source {
        name: Path::new("edge.toml"),
        text,
        base_dir: config_dir(),
    };
    parse_edge(source, None, "eu-central-1").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// [`EDGE`] with `config` (the module's `[modules.ratelimit.config]` and
/// its subtables) through the node's validation.
fn edge(config: &str) -> EdgeConfig {
    parse(&format!("{EDGE}{config}"))
}

/// The strings the node hands the module for `config`.
fn node_config(config: &str) -> ModuleConfig {
    ModuleConfig::new(edge(config).modules["ratelimit"].config.clone())
}

const IP_A: &str = "203.0.113.7";
const IP_B: &str = "198.51.100.23";

type FakeLimiter = Limiter<FakeRelativeClock>;

/// The module, the limiters it is granted, and their clock.
struct Harness {
    module: Module,
    clock: FakeRelativeClock,
    anon: Arc<FakeLimiter>,
    free: Arc<FakeLimiter>,
}

/// A compiled-artifact cache shared by the tests of this binary.
fn shared_cache() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
        .to_path_buf()
}

/// A limiter for the parsed policy `name`, on `clock`.
fn limiter(edge: &EdgeConfig, name: &str, clock: &FakeRelativeClock) -> Arc<FakeLimiter> {
    let policy = &edge.rate_limits[name];
    let nz = |n| NonZeroU32::new(n).expect("non-zero");
    let quota = Quota::new(nz(policy.rate), policy.period, nz(policy.burst)).expect("quota");
    Arc::new(Limiter::with_clock(PolicySpec::new(name, quota), clock.clone()).expect("limiter"))
}

impl Harness {
    /// The module with `config` (`[modules.ratelimit.config]` and its
    /// subtables, as TOML), granted the three policies of [`EDGE`].
    async fn new(config: &str) -> Self {
        Self::load(&edge(config)).await
    }

    /// The module as `edge` configures it, granted its policies (which
    /// include `api-anon` and `api-free`).
    async fn load(edge: &EdgeConfig) -> Self {
        let module_config = &edge.modules["ratelimit"];
        let clock = FakeRelativeClock::default();
        let limiters: BTreeMap<&str, Arc<FakeLimiter>> = module_config
            .rate_limits
            .iter()
            .map(|name| (name.as_str(), limiter(edge, name, &clock)))
            .collect();
        let engine = WasmEngine::new(EngineConfig {
            pooling: Some(PoolingConfig {
                max_instances: 16,
                ..PoolingConfig::default()
            }),
            artifact_cache: Some(shared_cache()),
            ..EngineConfig::default()
        })
        .expect("engine");
        let granted = limiters.iter().map(|(name, limiter)| {
            let policy: Arc<dyn RateLimitPolicy> = limiter.clone();
            ((*name).to_owned(), policy)
        });
        let settings = ModuleSettings {
            config: ModuleConfig::new(module_config.config.clone()),
            rate_limits: RateLimits::new(granted),
            ..ModuleSettings::default()
        };
        let bytes = std::fs::read(&module_config.path).expect("read the ratelimit guest");
        let module = engine
            .load("ratelimit", bytes, settings)
            .await
            .expect("load ratelimit");
        Self {
            module,
            clock,
            anon: limiters["api-anon"].clone(),
            free: limiters["api-free"].clone(),
        }
    }

    /// `on-request` for `GET path` from `ip`, with the API key `key`.
    async fn request(&self, path: &str, key: Option<&str>, ip: &str) -> RequestAction {
        let (parts, env) = request(path, key, ip);
        self.module
            .on_request(RequestHead::new(&parts, "https", "api.example.com"), &env)
            .await
            .unwrap_or_else(|e| panic!("on-request {path}: {e}"))
    }

    /// Whether the request goes on (`Continue`) or is refused with a 429.
    async fn allowed(&self, path: &str, key: Option<&str>, ip: &str) -> bool {
        match self.request(path, key, ip).await {
            RequestAction::Continue => true,
            RequestAction::Respond(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => false,
            other => panic!("{path} from {ip}: unexpected {other:?}"),
        }
    }

    /// How many of `n` requests in a row are allowed.
    async fn allowed_of(&self, n: usize, path: &str, key: Option<&str>, ip: &str) -> usize {
        let mut allowed = 0;
        for _ in 0..n {
            allowed += usize::from(self.allowed(path, key, ip).await);
        }
        allowed
    }

    /// The policy named in the body of the 429 that `key` gets once its
    /// bucket is spent.
    async fn refusing_policy(&self, key: Option<&str>, ip: &str) -> String {
        for _ in 0..20 {
            if let RequestAction::Respond(r) = self.request("/api/orders", key, ip).await {
                let body: serde_json::Value = serde_json::from_slice(r.body()).expect("JSON body");
                return body["policy"].as_str().expect("policy").to_owned();
            }
        }
        panic!("{key:?} was never refused");
    }
}

fn request(path: &str, key: Option<&str>, ip: &str) -> (http::request::Parts, RequestEnv) {
    let mut builder = http::Request::get(path);
    if let Some(key) = key {
        builder = builder.header("x-api-key", key);
    }
    let parts = builder.body(()).expect("request").into_parts().0;
    let env = RequestEnv::new(ClientInfo {
        ip: ip.parse::<IpAddr>().expect("ip"),
        region: Arc::from("eu-central-1"),
        ..ClientInfo::default()
    });
    (parts, env)
}

/// What the module reads: every value of a nested table under its dotted
/// key, arrays as compact JSON, numbers as their text.
#[test]
fn the_node_hands_the_module_dotted_keys() {
    let config = node_config(&config());
    let expected = [
        ("anonymous.policy", "api-anon"),
        ("anonymous.quota", "2"),
        ("anonymous.window", "2"),
        ("api_key_header", "x-api-key"),
        ("exempt", r#"["/api/health","/status/"]"#),
        ("tiers.free.keys", r#"["k-free"]"#),
        ("tiers.free.policy", "api-free"),
        ("tiers.free.quota", "3"),
        ("tiers.free.window", "30"),
        ("tiers.pro.keys", r#"["k-pro-1","k-pro-2"]"#),
        ("tiers.pro.policy", "api-pro"),
        ("tiers.pro.quota", "10"),
        ("tiers.pro.window", "1"),
    ];
    assert_eq!(config.iter().collect::<Vec<_>>(), expected);
}

/// The example in the module's crate docs, as an operator copies it into
/// `edge-config/edge.toml`, is valid and does what the docs say.
#[tokio::test]
async fn the_documented_config_works() {
    let docs = include_str!("../../../guest-modules/ratelimit/src/lib.rs");
    let lines: Vec<&str> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .skip_while(|l| *l != "```toml")
        .skip(1)
        .take_while(|l| *l != "```")
        .collect();
    let text = lines.join("\n");
    assert!(
        text.contains("[modules.ratelimit.config.tiers.pro]"),
        "{text}"
    );
    let edge = parse(&text);
    let h = Harness::load(&edge).await;

    // api-free: burst 10 per key, then a 429 announcing what the node
    // announces for the same policy natively.
    assert_eq!(
        h.allowed_of(12, "/api/orders", Some("k-bob"), IP_A).await,
        10
    );
    let RequestAction::Respond(response) = h.request("/api/orders", Some("k-bob"), IP_A).await
    else {
        panic!("expected a 429");
    };
    assert_eq!(
        response.headers()["ratelimit-policy"],
        h.free.policy_header()
    );
    assert_eq!(
        response.headers()["ratelimit-policy"],
        r#""api-free";q=10;w=10"#
    );
    // api-pro for k-carol, api-anon (burst 20) for everyone else.
    assert_eq!(
        h.allowed_of(200, "/api/orders", Some("k-carol"), IP_A)
            .await,
        200
    );
    assert_eq!(h.refusing_policy(Some("k-carol"), IP_A).await, "api-pro");
    assert_eq!(h.allowed_of(25, "/api/orders", None, IP_B).await, 20);
    let RequestAction::Respond(response) = h.request("/api/orders", None, IP_B).await else {
        panic!("expected a 429");
    };
    assert_eq!(
        response.headers()["ratelimit-policy"],
        h.anon.policy_header()
    );
    // The health check is exempt.
    assert_eq!(h.allowed_of(25, "/api/health", None, IP_B).await, 25);
    // The key table: k-erin.eu is free (burst 10), k-dave pro (burst 200).
    assert_eq!(
        h.allowed_of(12, "/api/orders", Some("k-erin.eu"), IP_A)
            .await,
        10
    );
    assert_eq!(h.refusing_policy(Some("k-erin.eu"), IP_A).await, "api-free");
    assert_eq!(
        h.allowed_of(201, "/api/orders", Some("k-dave"), IP_A).await,
        200
    );
    assert_eq!(h.refusing_policy(Some("k-dave"), IP_A).await, "api-pro");
}

/// Inline tables give the same keys as `[...]` tables, and a quoted tier
/// name may contain dots.
#[tokio::test]
async fn inline_tables_and_dotted_tier_names() {
    let h = Harness::new(
        r#"
[modules.ratelimit.config]
anonymous = { policy = "api-anon", quota = 2, window = 2 }
tiers."free.eu" = { policy = "api-free", keys = ["k-eu"] }
"#,
    )
    .await;
    assert_eq!(h.refusing_policy(Some("k-eu"), IP_A).await, "api-free");
    assert_eq!(h.refusing_policy(None, IP_B).await, "api-anon");
}

#[tokio::test]
async fn tiers_get_their_own_limits() {
    let h = Harness::new(&config()).await;
    // Each tier's burst, then refusals.
    assert_eq!(
        h.allowed_of(5, "/api/orders", Some("k-free"), IP_A).await,
        3
    );
    assert_eq!(
        h.allowed_of(15, "/api/orders", Some("k-pro-1"), IP_A).await,
        10
    );
    // Every key of a tier has its own bucket.
    assert_eq!(
        h.allowed_of(15, "/api/orders", Some("k-pro-2"), IP_A).await,
        10
    );
    // The keys' requests did not touch the IP's anonymous bucket.
    assert_eq!(h.allowed_of(4, "/api/orders", None, IP_A).await, 2);
    // The buckets are the host's, under the node's own key format.
    let free = h.free.check("h:k-free", 0);
    assert_eq!(free.remaining, 0, "{free:?}");
    assert_eq!(h.anon.check(&format!("ip:{IP_A}"), 0).remaining, 0);
}

#[tokio::test]
async fn keys_in_the_header_map_to_their_tier() {
    let h = Harness::new(&config()).await;
    assert_eq!(h.refusing_policy(Some("k-free"), IP_A).await, "api-free");
    assert_eq!(h.refusing_policy(Some("k-pro-2"), IP_A).await, "api-pro");
    // Surrounding whitespace is not part of the key.
    assert_eq!(h.refusing_policy(Some(" k-pro-1 "), IP_A).await, "api-pro");
    // Unknown, empty and absent keys are anonymous, per IP.
    assert_eq!(h.refusing_policy(Some("k-nobody"), IP_B).await, "api-anon");
    let other = "192.0.2.1";
    assert_eq!(h.refusing_policy(Some("  "), other).await, "api-anon");
    assert!(
        !h.allowed("/api/orders", None, other).await,
        "the same IP's bucket"
    );
    // Keys are case-sensitive.
    assert_eq!(
        h.refusing_policy(Some("K-FREE"), "192.0.2.2").await,
        "api-anon"
    );

    // The header's name comes from the config (matched case-insensitively).
    let custom = Harness::new(&config_with(r#"api_key_header = "X-Customer-Key""#)).await;
    let (mut parts, env) = request("/api/orders", Some("k-free"), IP_A);
    for _ in 0..2 {
        // x-api-key is not the header any more: anonymous, burst 2.
        let action = custom
            .module
            .on_request(RequestHead::new(&parts, "https", "h"), &env)
            .await
            .expect("on-request");
        assert!(matches!(action, RequestAction::Continue), "{action:?}");
    }
    parts
        .headers
        .insert("x-customer-key", "k-free".parse().expect("value"));
    for _ in 0..3 {
        let action = custom
            .module
            .on_request(RequestHead::new(&parts, "https", "h"), &env)
            .await
            .expect("on-request");
        assert!(
            matches!(action, RequestAction::Continue),
            "free tier: {action:?}"
        );
    }
    assert_eq!(
        custom.refusing_policy(Some("k-free"), IP_A).await,
        "api-anon"
    );
}

#[tokio::test]
async fn anonymous_clients_are_limited_per_ip() {
    let h = Harness::new(&config()).await;
    assert_eq!(h.allowed_of(5, "/api/orders", None, IP_A).await, 2);
    // Another IP is independent, and so is the first IP's tiered key.
    assert_eq!(h.allowed_of(5, "/api/orders", None, IP_B).await, 2);
    assert!(h.allowed("/api/orders", Some("k-free"), IP_A).await);
    // Every route path counts against the same bucket.
    assert!(!h.allowed("/api/other", None, IP_A).await);

    // IPv6 clients are grouped by /64, as the node's client-ip key does.
    let (one, same_64, other_64) = ("2001:db8:1:2::7", "2001:db8:1:2:ffff::1", "2001:db8:1:3::7");
    assert_eq!(h.allowed_of(2, "/api/orders", None, one).await, 2);
    assert!(!h.allowed("/api/orders", None, same_64).await, "same /64");
    assert_eq!(h.allowed_of(3, "/api/orders", None, other_64).await, 2);
    assert_eq!(h.anon.check("ip:2001:db8:1:2::/64", 0).remaining, 0);
    // An IPv4-mapped address is its IPv4 address.
    assert!(!h.allowed("/api/orders", None, "::ffff:203.0.113.7").await);
}

#[tokio::test]
async fn exempt_paths_are_never_limited() {
    let h = Harness::new(&config()).await;
    assert_eq!(h.allowed_of(3, "/api/orders", None, IP_A).await, 2);
    assert_eq!(
        h.allowed_of(3, "/api/orders", Some("k-free"), IP_A).await,
        3
    );
    for path in [
        "/api/health",
        "/api/health/db",
        "/api/health?full=1",
        "/status/",
        "/status/x",
    ] {
        assert_eq!(h.allowed_of(25, path, None, IP_A).await, 25, "{path}");
        assert_eq!(
            h.allowed_of(25, path, Some("k-free"), IP_A).await,
            25,
            "{path}"
        );
    }
    // Only whole segments, and only plain paths, are exempt.
    for path in [
        "/api/healthz",
        "/api/health/../orders",
        "/api/health/%2e%2e/orders",
        "/api/health\\..\\orders",
        "/status",
    ] {
        assert!(!h.allowed(path, None, IP_A).await, "{path}");
    }
    // Exempt requests spent nothing.
    h.clock.advance(Duration::from_secs(1));
    assert!(h.allowed("/api/orders", None, IP_A).await);
}

#[tokio::test]
async fn the_429_is_exact() {
    let h = Harness::new(&config()).await;
    assert_eq!(
        h.allowed_of(3, "/api/orders", Some("k-free"), IP_A).await,
        3
    );
    // 4 s later the bucket (one unit per 10 s) still has nothing: the next
    // unit comes at 10 s, the bucket is full at 30 s.
    h.clock.advance(Duration::from_secs(4));
    let RequestAction::Respond(response) = h.request("/api/orders", Some("k-free"), IP_A).await
    else {
        panic!("expected a 429");
    };
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().expect("text").to_owned()))
        .collect();
    headers.sort();
    let expected = [
        ("cache-control", "no-store"),
        ("content-type", "application/json"),
        ("ratelimit", r#""api-free";r=0;t=26"#),
        ("ratelimit-policy", r#""api-free";q=3;w=30"#),
        ("retry-after", "6"),
    ]
    .map(|(n, v)| (n.to_owned(), v.to_owned()));
    assert_eq!(headers, expected);
    assert_eq!(
        std::str::from_utf8(response.body()).expect("UTF-8"),
        r#"{"error":"rate_limited","policy":"api-free","retry_after":6}"#
    );

    // The same values as the node's native formatting of the same policy
    // (a refused check spends nothing).
    let native = h.free.check("h:k-free", 1);
    assert!(!native.allowed());
    assert_eq!(
        response.headers()["ratelimit-policy"],
        h.free.policy_header()
    );
    assert_eq!(
        response.headers()["ratelimit"],
        h.free.ratelimit_header(&native)
    );
    assert_eq!(
        response.headers()["retry-after"],
        native.retry_after_secs().expect("retry").to_string()
    );

    // Anonymous: burst 2 at 1/s; a refusal 1 ms after the burst waits ~1 s.
    assert_eq!(h.allowed_of(2, "/api/orders", None, IP_B).await, 2);
    h.clock.advance(Duration::from_millis(1));
    let RequestAction::Respond(response) = h.request("/api/orders", None, IP_B).await else {
        panic!("expected a 429");
    };
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.headers()["ratelimit-policy"],
        r#""api-anon";q=2;w=2"#
    );
    assert_eq!(response.headers()["ratelimit"], r#""api-anon";r=0;t=2"#);
    assert_eq!(
        response.body().as_ref(),
        br#"{"error":"rate_limited","policy":"api-anon","retry_after":1}"#
    );

    // Without quota and window in the config, RateLimit-Policy is left out.
    let bare = "[modules.ratelimit.config.anonymous]\npolicy = \"api-anon\"\n";
    let h = Harness::new(bare).await;
    assert_eq!(h.allowed_of(2, "/", None, IP_A).await, 2);
    let RequestAction::Respond(response) = h.request("/", None, IP_A).await else {
        panic!("expected a 429");
    };
    assert!(!response.headers().contains_key("ratelimit-policy"));
    assert_eq!(response.headers()["ratelimit"], r#""api-anon";r=0;t=2"#);
}

#[tokio::test]
async fn a_refilled_bucket_admits_again() {
    let h = Harness::new(&config()).await;
    assert_eq!(h.allowed_of(3, "/api/orders", None, IP_A).await, 2);
    assert_eq!(
        h.allowed_of(4, "/api/orders", Some("k-free"), IP_A).await,
        3
    );
    // One anonymous unit per second: after 999 ms still refused, at 1 s one more.
    h.clock.advance(Duration::from_millis(999));
    assert!(!h.allowed("/api/orders", None, IP_A).await);
    h.clock.advance(Duration::from_millis(1));
    assert_eq!(h.allowed_of(2, "/api/orders", None, IP_A).await, 1);
    // After a full window both buckets are full again.
    h.clock.advance(Duration::from_secs(30));
    assert_eq!(h.allowed_of(3, "/api/orders", None, IP_A).await, 2);
    assert_eq!(
        h.allowed_of(4, "/api/orders", Some("k-free"), IP_A).await,
        3
    );
}

#[tokio::test]
async fn trouble_fails_open() {
    let h = Harness::new(&config()).await;
    // A module granted none of its policies lets everything through.
    let ungranted = h
        .module
        .with_settings(ModuleSettings {
            config: node_config(&config()),
            ..ModuleSettings::default()
        })
        .expect("settings");
    for key in [None, Some("k-free"), Some("k-pro-1")] {
        let (parts, env) = request("/api/orders", key, IP_A);
        for _ in 0..20 {
            let action = ungranted
                .on_request(RequestHead::new(&parts, "https", "h"), &env)
                .await
                .expect("no failure");
            assert!(matches!(action, RequestAction::Continue), "{action:?}");
        }
    }
    // Config it cannot read lets through the requests that need it (and
    // nothing traps): (config, anonymous admitted, `k-free` admitted) of 12.
    let anonymous = "[modules.ratelimit.config.anonymous]\npolicy = \"api-anon\"\nquota = 2\n";
    let free =
        "[modules.ratelimit.config.tiers.free]\npolicy = \"api-free\"\nkeys = [\"k-free\"]\n";
    let cases = [
        // `tiers` is not a table.
        (
            format!("[modules.ratelimit.config]\ntiers = [1, 2]\n{anonymous}"),
            2,
            12,
        ),
        // `anonymous` is not a table.
        (
            format!("[modules.ratelimit.config]\nanonymous = \"api-anon\"\n{free}"),
            12,
            3,
        ),
        // Neither names a policy.
        (
            "[modules.ratelimit.config.tiers.free]\nkeys = [\"k-free\"]\n\
             [modules.ratelimit.config.anonymous]\nquota = 2\n"
                .to_owned(),
            12,
            12,
        ),
        // The single JSON values an earlier version of the module read.
        (
            r#"[modules.ratelimit.config]
tiers = '{"free":{"keys":["k-free"],"policy":"api-free"}}'
anonymous = '{"policy":"api-anon"}'
"#
            .to_owned(),
            12,
            12,
        ),
    ];
    for (config, anonymous, keyed) in cases {
        let broken = Harness::new(&config).await;
        let got = (
            broken.allowed_of(12, "/api/orders", None, IP_A).await,
            broken
                .allowed_of(12, "/api/orders", Some("k-free"), IP_A)
                .await,
        );
        assert_eq!(got, (anonymous, keyed), "{config}");
        assert_eq!(broken.module.stats().total_failures(), 0);
    }
    // No config at all: nothing is limited.
    let empty = Harness::new("").await;
    assert_eq!(empty.allowed_of(12, "/", Some("k-free"), IP_A).await, 12);
    assert_eq!(h.module.stats().total_failures(), 0);
    assert_eq!(ungranted.stats().total_failures(), 0);
}

/// `on-response` for a response with `status` and `headers`.
async fn on_response(
    h: &Harness,
    key: Option<&str>,
    status: u16,
    headers: &[(&str, &str)],
) -> ResponseAction {
    let (parts, env) = request("/api/orders", key, IP_A);
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    let response = ResponseParts {
        status: StatusCode::from_u16(status).expect("status"),
        headers: &map,
        body: None,
    };
    h.module
        .on_response(RequestHead::new(&parts, "https", "h"), response, &env)
        .await
        .expect("on-response")
}

fn set_headers(action: &ResponseAction) -> Vec<(String, String)> {
    match action {
        ResponseAction::Pass => Vec::new(),
        ResponseAction::Edit(edit) => edit
            .set_headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().expect("text").to_owned()))
            .collect(),
    }
}

#[tokio::test]
async fn allowed_responses_get_headers_only_when_asked() {
    // By default allowed responses are left alone.
    let h = Harness::new(&config()).await;
    assert!(h.allowed("/api/orders", Some("k-free"), IP_A).await);
    assert!(matches!(
        on_response(&h, Some("k-free"), 200, &[]).await,
        ResponseAction::Pass
    ));

    let h = Harness::new(&config_with(
        "api_key_header = \"x-api-key\"\nheaders = \"always\"",
    ))
    .await;
    assert!(h.allowed("/api/orders", Some("k-free"), IP_A).await);
    h.clock.advance(Duration::from_secs(2));
    // The bucket as it stands (read without spending): 2 left, full in 8 s.
    let action = on_response(&h, Some("k-free"), 200, &[]).await;
    let expected = [
        ("ratelimit-policy", r#""api-free";q=3;w=30"#),
        ("ratelimit", r#""api-free";r=2;t=8"#),
    ]
    .map(|(n, v)| (n.to_owned(), v.to_owned()));
    assert_eq!(set_headers(&action), expected);
    let again = on_response(&h, Some("k-free"), 200, &[]).await;
    assert_eq!(set_headers(&again), expected, "nothing was spent");
    // Added after a policy's headers already present (a native policy's).
    let native = [
        ("ratelimit-policy", r#""site";q=100;w=2"#),
        ("ratelimit", r#""site";r=99;t=1"#),
    ];
    let action = on_response(&h, None, 200, &native).await;
    let expected = [
        ("ratelimit-policy", r#""site";q=100;w=2"#),
        ("ratelimit-policy", r#""api-anon";q=2;w=2"#),
        ("ratelimit", r#""site";r=99;t=1"#),
        ("ratelimit", r#""api-anon";r=2;t=0"#),
    ]
    .map(|(n, v)| (n.to_owned(), v.to_owned()));
    assert_eq!(set_headers(&action), expected);
    // 429s (the module's own included) and exempt paths are left alone.
    assert!(matches!(
        on_response(&h, Some("k-free"), 429, &[]).await,
        ResponseAction::Pass
    ));
    let (parts, env) = request("/api/health", None, IP_A);
    let empty = HeaderMap::new();
    let health = h
        .module
        .on_response(
            RequestHead::new(&parts, "https", "h"),
            ResponseParts {
                status: StatusCode::OK,
                headers: &empty,
                body: None,
            },
            &env,
        )
        .await
        .expect("on-response");
    assert!(matches!(health, ResponseAction::Pass));
}

/// [`config`] plus the key table `[modules.ratelimit.config.keys]` with
/// `lines`, and `extra` tables after it.
fn config_with_keys(lines: &str, extra: &str) -> String {
    format!(
        "{}\n[modules.ratelimit.config.keys]\n{lines}\n{extra}",
        config()
    )
}

/// A key the key table names is counted under that tier's policy, in its
/// own bucket `h:<api-key>`, with the tier's quota and window announced.
#[tokio::test]
async fn the_key_table_names_the_tier() {
    let h = Harness::new(&config_with_keys(r#""k-table" = "free""#, "")).await;
    assert_eq!(
        h.allowed_of(3, "/api/orders", Some("k-table"), IP_A).await,
        3
    );
    assert_eq!(h.free.check("h:k-table", 0).remaining, 0);
    // Other keys of the tier have their own buckets.
    assert_eq!(h.free.check("h:k-free", 0).remaining, 3);
    let RequestAction::Respond(response) = h.request("/api/orders", Some("k-table"), IP_A).await
    else {
        panic!("expected a 429");
    };
    assert_eq!(
        response.headers()["ratelimit-policy"],
        r#""api-free";q=3;w=30"#
    );
    assert_eq!(response.headers()["ratelimit"], r#""api-free";r=0;t=30"#);
    assert_eq!(
        response.body().as_ref(),
        br#"{"error":"rate_limited","policy":"api-free","retry_after":10}"#
    );
    // The keyed requests did not touch the IP's anonymous bucket.
    assert_eq!(h.allowed_of(3, "/api/orders", None, IP_A).await, 2);
    assert_eq!(h.module.stats().total_failures(), 0);
}

/// An API key with dots is one line of the key table (the node joins the
/// key to `keys.` with a dot), found by the whole key only.
#[tokio::test]
async fn a_key_with_dots_in_the_key_table() {
    let text = config_with_keys(r#""k.dot.1" = "pro""#, "");
    assert_eq!(node_config(&text).get("keys.k.dot.1"), Some("pro"));
    let h = Harness::new(&text).await;
    assert_eq!(
        h.allowed_of(12, "/api/orders", Some("k.dot.1"), IP_A).await,
        10
    );
    assert_eq!(h.refusing_policy(Some("k.dot.1"), IP_A).await, "api-pro");
    // Parts of the key are other keys: unknown, so anonymous.
    assert_eq!(h.refusing_policy(Some("k.dot"), IP_B).await, "api-anon");
    assert_eq!(h.refusing_policy(Some("k"), "192.0.2.1").await, "api-anon");
}

/// The key table is asked first: a key it names is counted under its tier
/// even when another tier's `keys` array lists the key.
#[tokio::test]
async fn the_key_table_beats_the_tier_arrays() {
    let h = Harness::new(&config_with_keys(r#""k-pro-1" = "free""#, "")).await;
    // `tiers.pro.keys` lists k-pro-1 (burst 10), the table says free (3).
    assert_eq!(
        h.allowed_of(12, "/api/orders", Some("k-pro-1"), IP_A).await,
        3
    );
    assert_eq!(h.refusing_policy(Some("k-pro-1"), IP_A).await, "api-free");
    assert_eq!(h.free.check("h:k-pro-1", 0).remaining, 0);
    // The other key of the pro tier is still pro.
    assert_eq!(h.refusing_policy(Some("k-pro-2"), IP_A).await, "api-pro");
}

/// A key table line naming a tier without a policy (or no tier at all)
/// lets that key's requests through, uncounted, as a tier without a policy
/// does; nothing fails.
#[tokio::test]
async fn a_key_table_tier_without_a_policy_lets_requests_through() {
    let h = Harness::new(&config_with_keys(
        "\"k-bare\" = \"bare\"\n\"k-ghost\" = \"ghost\"\n\"k-pro-1\" = \"ghost\"",
        "[modules.ratelimit.config.tiers.bare]\nquota = 5\nwindow = 5\n",
    ))
    .await;
    // k-pro-1 is listed by the pro tier too: the table's line wins.
    for key in ["k-bare", "k-ghost", "k-pro-1"] {
        assert_eq!(
            h.allowed_of(25, "/api/orders", Some(key), IP_A).await,
            25,
            "{key}"
        );
    }
    // Not counted as anonymous either.
    assert_eq!(h.allowed_of(3, "/api/orders", None, IP_A).await, 2);
    assert_eq!(h.module.stats().total_failures(), 0);
}

/// A key the table does not name falls back to the tiers' arrays, and a key
/// neither names is anonymous.
#[tokio::test]
async fn unknown_keys_fall_back_to_the_arrays_then_anonymous() {
    let h = Harness::new(&config_with_keys(r#""k-table" = "pro""#, "")).await;
    assert_eq!(
        h.allowed_of(5, "/api/orders", Some("k-free"), IP_A).await,
        3
    );
    assert_eq!(h.refusing_policy(Some("k-free"), IP_A).await, "api-free");
    assert_eq!(h.refusing_policy(Some("k-pro-2"), IP_A).await, "api-pro");
    assert_eq!(
        h.allowed_of(3, "/api/orders", Some("k-nobody"), IP_B).await,
        2
    );
    assert_eq!(h.refusing_policy(Some("k-nobody"), IP_B).await, "api-anon");
    assert_eq!(h.anon.check(&format!("ip:{IP_B}"), 0).remaining, 0);
    // A key table given as one value is config the module cannot read:
    // keyed requests are let through, anonymous ones still counted.
    let broken = Harness::new(&config_with(
        "api_key_header = \"x-api-key\"\nkeys = [\"k-free\"]",
    ))
    .await;
    assert_eq!(
        broken
            .allowed_of(12, "/api/orders", Some("k-free"), IP_A)
            .await,
        12
    );
    assert_eq!(broken.allowed_of(3, "/api/orders", None, IP_A).await, 2);
    assert_eq!(broken.module.stats().total_failures(), 0);
}

/// With `headers = "always"`, the response of a key the table names gets
/// its tier's headers: the same lookup as `on-request`.
#[tokio::test]
async fn key_table_headers_on_allowed_responses() {
    let h = Harness::new(&format!(
        "{}\n[modules.ratelimit.config.keys]\n\"k-table\" = \"free\"\n\"k-pro-1\" = \"free\"\n",
        config_with("api_key_header = \"x-api-key\"\nheaders = \"always\""),
    ))
    .await;
    for key in ["k-table", "k-pro-1"] {
        assert!(h.allowed("/api/orders", Some(key), IP_A).await);
        let action = on_response(&h, Some(key), 200, &[]).await;
        let expected = [
            ("ratelimit-policy", r#""api-free";q=3;w=30"#),
            ("ratelimit", r#""api-free";r=2;t=10"#),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()));
        assert_eq!(set_headers(&action), expected, "{key}");
    }
}

/// `settings::under` (the host's `config.under`) hands the module only the
/// `tiers.*` entries: tables whose names merely start with `tiers`, sorting
/// just before (`tiers-`) and after (`tiers/`) `tiers.`, are no tiers.
#[tokio::test]
async fn only_the_tiers_table_holds_tiers() {
    let siblings = r#"
[modules.ratelimit.config.tiersx.pro]
policy = "api-pro"
keys = ["k-x"]

[modules.ratelimit.config."tiers-pro"]
policy = "api-pro"
keys = ["k-dash"]

[modules.ratelimit.config."tiers/pro"]
policy = "api-pro"
keys = ["k-slash"]
"#;
    let text = format!("{}{siblings}", config());
    let keys = node_config(&text);
    assert_eq!(keys.get("tiers-pro.policy"), Some("api-pro"));
    assert_eq!(keys.get("tiers/pro.keys"), Some(r#"["k-slash"]"#));
    let under: Vec<(&str, &str)> = keys.under("tiers").collect();
    assert_eq!(
        under.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [
            "free.keys",
            "free.policy",
            "free.quota",
            "free.window",
            "pro.keys",
            "pro.policy",
            "pro.quota",
            "pro.window"
        ]
    );
    let h = Harness::new(&text).await;
    let ips = ["192.0.2.1", "192.0.2.2", "192.0.2.3"];
    for (key, ip) in ["k-x", "k-dash", "k-slash"].into_iter().zip(ips) {
        assert_eq!(
            h.allowed_of(3, "/api/orders", Some(key), ip).await,
            2,
            "{key}"
        );
        assert_eq!(h.refusing_policy(Some(key), ip).await, "api-anon", "{key}");
    }
    assert_eq!(h.refusing_policy(Some("k-pro-1"), IP_A).await, "api-pro");
}
