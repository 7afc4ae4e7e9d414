//! Validated configuration types: what the rest of the node consumes.
//!
//! Every value here has been parsed and checked: durations are `Duration`,
//! sizes are byte counts, addresses are `SocketAddr`, names refer to things
//! that exist. Nothing in this file touches the file system.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;

/// The local, per-node part of the configuration. It never comes from a
/// bundle: listeners, certificates, the admin token, the region, limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    /// The region this node serves; selects `regions/<region>.toml`.
    pub region: String,
    /// Plain HTTP listeners (HTTP/1.1 and h2c with prior knowledge).
    pub listeners: Vec<Listener>,
    /// TLS listeners (HTTP/1.1 and h2 by ALPN).
    pub tls_listeners: Vec<TlsListener>,
    pub admin: Admin,
    pub limits: Limits,
    /// Peers whose `X-Forwarded-For` / `Forwarded` / PROXY header is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// A request header carrying the client's country (ISO 3166-1 alpha-2),
    /// set by a trusted proxy or load balancer in front of the node
    /// (`[node] country_header = "cf-ipcountry"`). Believed only when the
    /// request comes from one of `trusted_proxies`.
    pub country_header: Option<http::HeaderName>,
    /// A MaxMind-format country database (GeoLite2-Country, GeoIP2-Country
    /// or a City database) looked up by client IP when `country_header`
    /// gives no country (`[node] geoip_db`, absolute after loading).
    pub geoip_db: Option<PathBuf>,
    /// Where the activated edge config is read from in local mode.
    pub edge_config: PathBuf,
    /// Directory holding one `<region>.toml` overlay per region.
    pub regions_dir: PathBuf,
    /// The node's shared HTTP cache: sized for this machine, so node-local.
    pub cache: CacheSettings,
    /// The WebAssembly engine: node resources, so node-local.
    pub wasm: WasmSettings,
    /// Bundle mode (`[bundles]`): where signed bundles come from and the
    /// root of trust they are verified against. `None` (no `[bundles]`
    /// table) is local mode: the edge config is read from `edge_config`.
    pub bundles: Option<BundleSettings>,
}

/// Bundle mode (`[bundles]` in the bootstrap file): the node activates
/// only signed bundles from its origins (see `docs/bundles.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleSettings {
    /// Base URLs of the origin, tried in order (1 to 8, `http` or `https`,
    /// optional path prefix). Distinct, in one spelling: scheme and host
    /// lower-case, no default port, no trailing `/`.
    pub origins: Vec<String>,
    /// The environment whose bundles this node takes (`heads/<environment>/`);
    /// 1 to 64 lower-case letters, digits and `-`. With the node's region it
    /// makes the scope a bundle must name.
    pub environment: String,
    /// The pinned root (version 1): ed25519 public keys as 64 lower-case hex
    /// digits, 1 to 16, distinct. Not yet checked to be curve points.
    pub root_keys: Vec<String>,
    /// Root keys that must sign (default 1; at most `root_keys.len()`).
    pub root_threshold: usize,
    /// Trust state, audit log and bundle store (absolute; default
    /// `.cathedral/bundles` next to the bootstrap file).
    pub state_dir: PathBuf,
    /// Time between polls of the origin (default 30 s, 1 s to 24 h); the
    /// node adds jitter.
    pub poll_interval: Duration,
    /// Deadline of one transfer (default 60 s, at most 24 h).
    pub fetch_timeout: Duration,
    /// Largest manifest envelope fetched (default 8 MiB, 1 KiB to 64 MiB).
    pub max_manifest_bytes: u64,
    /// Largest bundle, all files together (default 2 GiB, 1 MiB to 1 TiB).
    pub max_bundle_bytes: u64,
    /// Bundles kept on disk for `activate --previous` (default 3, 2 to 20).
    pub keep: usize,
    /// How long the node watches its health after an activation before it
    /// keeps the new bundle (default 10 s, at most 24 h; zero: no watch).
    pub health_grace: Duration,
}

/// Engine-wide WebAssembly settings (`[wasm]` in the bootstrap file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmSettings {
    /// Where compiled modules are cached across restarts (`artifact_cache`,
    /// relative to the bootstrap file); `None` compiles at every start.
    /// Default: `.cathedral/wasm-cache` next to the bootstrap file.
    pub artifact_cache: Option<PathBuf>,
    /// Instances that may run at once, node-wide (default 1000).
    pub max_instances: u32,
    /// Linear memory one instance may ever reserve (default 64 MiB); a
    /// module's `memory` may not exceed it.
    pub max_memory_bytes: u64,
}

/// Node-wide cache sizing and integrity checking (`[cache]` in the
/// bootstrap file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Memory bound for stored responses, headers included (default 256 MiB).
    pub memory_bytes: u64,
    /// Larger responses stream through uncached (default 16 MiB).
    pub max_object_bytes: u64,
    /// Which memory hits have their body's blake3 re-verified.
    pub integrity: IntegrityCheck,
    /// Entries the background scrubber re-verifies per second (default 200;
    /// 0 turns the scrubber off).
    pub scrub_per_second: u32,
    /// How long requests wait for a coalesced fetch of the same key before
    /// going upstream themselves (default 10 s).
    pub coalesce_timeout: Duration,
    /// Requests that may wait on one in-flight fetch (default 1024).
    pub coalesce_max_waiters: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityCheck {
    /// Verify one hit in `n` (default 100). `integrity = "1/100"` or `100`.
    Sample(u32),
    /// Verify every hit. `integrity = "always"`.
    Always,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    /// Expect a PROXY protocol (v1 or v2) header from a trusted proxy.
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    pub addr: SocketAddr,
    pub proxy_protocol: bool,
    pub min_version: TlsVersion,
    /// Chosen by SNI; the first one is the default when SNI is absent or unknown.
    pub certificates: Vec<Certificate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// Names this certificate answers for: exact (`example.com`) or
    /// wildcard (`*.example.com`, one label).
    pub server_names: Vec<String>,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// Bearer token required on every admin request. Required unless the
    /// admin address is loopback.
    pub token: Option<String>,
}

/// Connection and request limits, each with a documented default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of the request line and headers (default 16 KiB) → 431.
    pub max_header_bytes: usize,
    /// Number of request headers (default 100) → 431.
    pub max_headers: usize,
    /// Request body bytes (default 10 MiB) → 413.
    pub max_body_bytes: u64,
    /// Time allowed to receive the request head (default 10 s); slower
    /// clients are disconnected.
    pub header_read_timeout: Duration,
    /// Idle keep-alive connections are closed after this (default 60 s).
    pub idle_timeout: Duration,
    /// Open client connections at most (default 10 000); excess waits in
    /// the accept backlog.
    pub max_connections: usize,
    /// How long in-flight requests get to finish on shutdown (default 30 s).
    pub shutdown_grace: Duration,
}

/// The activated configuration: routes, upstreams and everything later
/// issues add. Comes from local files or from a signed bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeConfig {
    /// The region whose overlay was merged in.
    pub region: String,
    pub upstreams: BTreeMap<String, Upstream>,
    /// In no particular order: the router picks the most specific match.
    pub routes: Vec<Route>,
    /// Named native rate-limit policies (`[rate_limits.<name>]`), attached
    /// to routes by name.
    pub rate_limits: BTreeMap<String, RateLimitPolicy>,
    /// Wasm components (`[modules.<name>]`), used as route filters or
    /// handlers.
    pub modules: BTreeMap<String, ModuleConfig>,
}

/// A native rate-limit policy: GCRA with `rate` requests per `period`, up to
/// `burst` at once. Counters are per node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPolicy {
    pub name: String,
    /// Requests per `period` (≥ 1).
    pub rate: u32,
    /// The period `rate` is counted over (`per = "1s"`, default 1 s).
    pub period: Duration,
    /// Requests allowed at once (≥ 1; default = `rate`).
    pub burst: u32,
    /// A key that is refused is refused for this long (penalty box).
    pub penalty: Option<Duration>,
    /// What the counter is keyed by.
    pub key: RateLimitKey,
    /// Keys tracked at most (default 100 000); beyond it, the keys closest
    /// to a full bucket are forgotten first.
    pub max_keys: usize,
    /// Also send `RateLimit` / `RateLimit-Policy` on allowed responses
    /// (default false: only on 429).
    pub headers_on_allowed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The client IP as the node determined it (`key = "client-ip"`), with
    /// IPv4 / IPv6 grouped by prefix (defaults /32 and /64).
    ClientIp { ipv4_prefix: u8, ipv6_prefix: u8 },
    /// A request header's value (`key = "header:x-api-key"`); requests
    /// without it are keyed by client IP.
    Header(HeaderName),
    /// A cookie's value (`key = "cookie:session"`); requests without it are
    /// keyed by client IP.
    Cookie(String),
    /// The route's user id (`key = "user-id"`, needs `user_id` on the
    /// route); requests without one are keyed by client IP.
    UserId,
    /// One counter for the whole route (`key = "route"`).
    Route,
}

/// Where a route reads the user id from (`user_id = "cookie:uid"` or
/// `"header:x-user-id"`): derived once per request, used by rate-limit keys
/// and Wasm modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserIdSource {
    Cookie(String),
    Header(HeaderName),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub name: String,
    pub scheme: Scheme,
    /// `host:port` authorities, tried round-robin; at least one.
    pub targets: Vec<String>,
    pub protocol: UpstreamProtocol,
    /// Default 2 s.
    pub connect_timeout: Duration,
    /// Until response headers arrive, default 30 s.
    pub first_byte_timeout: Duration,
    /// Whole exchange including the body, default 300 s.
    pub total_timeout: Duration,
    /// Idle pooled connections are dropped after this, default 90 s.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per target, default 64.
    pub pool_max_idle: usize,
    /// Only for `https` upstreams.
    pub tls: Option<UpstreamTls>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// PEM CA bundle; `None` means the system roots.
    pub ca_file: Option<PathBuf>,
    /// SNI and verified name; `None` means the target's host.
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    /// Empty means any host.
    pub hosts: Vec<HostMatch>,
    /// Starts with `/`. Matches on whole segments: `/api` matches `/api`
    /// and `/api/x`, not `/apix`.
    pub path_prefix: String,
    pub target: RouteTarget,
    pub host_header: HostHeader,
    /// Added to every response of this route.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// `None`: responses of this route are never cached. Static routes never
    /// cache (their content is local already).
    pub cache: Option<RouteCache>,
    /// Names of `rate_limits` policies checked in order before anything
    /// else on the route; the first refusal answers 429.
    pub rate_limits: Vec<String>,
    /// Where this route's user id comes from, if anywhere.
    pub user_id: Option<UserIdSource>,
    /// Wasm filters in order: `on-request` runs before the cache lookup in
    /// this order, `on-response` after it in reverse order.
    pub filters: Vec<FilterRef>,
}

/// A filter on a route (`filters = ["name"]` or `[[routes.x.filters]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterRef {
    /// Names an entry in `EdgeConfig::modules` whose component fits `filter`.
    pub module: String,
    /// What a trap, timeout or out-of-memory does (default closed: 503).
    pub fail: FailPolicy,
    /// Hand the decoded response body to `on-response` (default false).
    pub response_body: bool,
    /// Largest body handed over (default 1 MiB); a bigger body follows the
    /// `fail` policy.
    pub max_body_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPolicy {
    /// Answer 503 with a short body.
    Closed,
    /// Skip the module and continue.
    Open,
}

/// One Wasm component the edge config names (`[modules.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleConfig {
    pub name: String,
    /// The component file (absolute after loading; in bundle mode a bundle
    /// path).
    pub path: PathBuf,
    /// CPU time per call (default 50 ms).
    pub cpu_deadline: Duration,
    /// Wall time per call, waiting included (default 30 s).
    pub wall_timeout: Duration,
    /// Linear memory cap per instance (default 64 MiB).
    pub memory_limit_bytes: u64,
    /// What the module's `config` interface returns, region overlay applied.
    /// TOML strings pass as they are; numbers and booleans as their text;
    /// arrays and tables as JSON.
    pub config: BTreeMap<String, String>,
    /// Rate-limit policies the module may check through the `rate-limit`
    /// interface.
    pub rate_limits: Vec<String>,
}

/// How a route uses the shared cache (`[routes.<name>.cache]`). Upstream
/// routes cache by default with the content-class defaults; `cache = false`
/// turns caching off for a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCache {
    /// `origin` (default): the origin's freshness wins and `ttl` or the
    /// class default applies only when the origin gives none. `override`:
    /// `ttl` replaces the origin's freshness.
    pub mode: CacheMode,
    /// Freshness supplied by the route (required with `mode = "override"`).
    pub ttl: Option<Duration>,
    /// A fixed content class for every response of the route, detection per
    /// response from path and Content-Type (`class = "auto"`, default), or
    /// no class defaults (`class = "none"`, pure RFC 9111).
    pub class: ClassChoice,
    /// Query parameters left out of the key; `["*"]` drops the whole query.
    pub ignore_query: Vec<String>,
    /// Sort query parameters in the key (default false).
    pub sort_query: bool,
    /// Request headers added to the key (e.g. a user id for per-user content).
    pub key_headers: Vec<HeaderName>,
    /// Store responses that carry `Set-Cookie`; the stored copy never
    /// replays the cookie (default false).
    pub store_set_cookie: bool,
    /// Forward `CDN-Cache-Control` to clients (default true).
    pub forward_cdn_cache_control: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    Origin,
    Override,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassChoice {
    /// Detect per response (`"auto"`).
    Auto,
    /// No class defaults (`"none"`): only the origin's headers and RFC
    /// heuristics decide.
    Disabled,
    /// `"image"`, `"fingerprinted"`, `"font"`, `"video"`, `"api"`,
    /// `"per-user"`, `"realtime"`.
    Fixed(ContentClassName),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentClassName {
    Image,
    Fingerprinted,
    Font,
    Video,
    Api,
    PerUser,
    RealTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Lower-cased, no port.
    Exact(String),
    /// `*.example.com` stored as `.example.com`: matches any name ending in it.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteTarget {
    /// Name of an entry in `EdgeConfig::upstreams`.
    Upstream(String),
    Static(StaticSite),
    /// A `handler` component (`wasi:http/proxy`) answers the route.
    Handler(HandlerTarget),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerTarget {
    /// Names an entry in `EdgeConfig::modules` whose component fits `handler`.
    pub module: String,
    /// Upstreams the handler's outgoing `wasi:http` requests may reach;
    /// everything else is refused.
    pub backends: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticSite {
    /// In local mode a directory; absolute after loading.
    pub root: PathBuf,
    /// File served for a path ending in `/`, default `index.html`.
    pub index: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostHeader {
    /// Forward the client's `Host` (default).
    Preserve,
    /// Use the upstream target's authority.
    Upstream,
    /// Use this value.
    Fixed(String),
}
