//! The bootstrap file's tables (`[node]`, `[[listen]]`, `[tls]`, `[admin]`, `[limits]`, `[cache]`, `[wasm]`, `[bundles]`) to a validated [`Bootstrap`], overrides applied.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use toml::{Table, Value};

use crate::error::{ConfigErrors, FileInfo, Key, Result, Sink, toml_string};
use crate::merge::Origins;
use crate::raw::{
    ArtifactCache, Count, RawAdmin, RawBundles, RawCache, RawCertificate, RawLimits, RawListen,
    RawNode, RawTls, RawWasm, check_keys, describe, section, table_section,
};
use crate::size::{format_duration, format_size};
use crate::types::{
    Admin, Bootstrap, BundleSettings, CacheSettings, Certificate, IntegrityCheck, Limits, Listener,
    TlsListener, TlsVersion, WasmSettings,
};
use crate::validate;

/// Values given on the command line (or by the embedding program) that win
/// over the bootstrap file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Replaces `node.region`.
    pub region: Option<String>,
    /// Replaces every plain `[[listen]]` entry with one listener on this address.
    pub listen: Option<SocketAddr>,
    /// Replaces every TLS `[[listen]]` entry with one TLS listener on this
    /// address (minimum version from `[tls]`; needs `[[tls.certificates]]`).
    pub tls_listen: Option<SocketAddr>,
    /// Replaces `admin.listen`.
    pub admin_listen: Option<SocketAddr>,
    /// Replaces `admin.token`.
    pub admin_token: Option<String>,
}

pub(crate) const DEFAULT_REGION: &str = "us-east-1";
pub(crate) const DEFAULT_EDGE_CONFIG: &str = "edge.toml";
pub(crate) const DEFAULT_REGIONS_DIR: &str = "regions";
pub(crate) const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
pub(crate) const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);
pub(crate) const DEFAULT_TLS_MIN_VERSION: TlsVersion = TlsVersion::Tls13;

/// Longest duration any setting accepts: keeps deadline arithmetic far from overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// Below 1 KiB ordinary requests fail; above 1 MiB a header limit protects nothing.
const MIN_HEADER_BYTES: u64 = 1024;
const MAX_HEADER_BYTES: u64 = 1024 * 1024;

/// Below 1 MiB the cache could hold next to nothing.
const MIN_CACHE_MEMORY: u64 = 1 << 20;

const TABLES: &[&str] = &[
    "node", "listen", "tls", "admin", "limits", "cache", "wasm", "bundles",
];

/// `[wasm] max_instances` bounds.
pub(crate) const MAX_WASM_INSTANCES: u32 = 100_000;
/// Smallest linear memory a module or the engine may be given.
pub(crate) const MIN_WASM_MEMORY: u64 = 1 << 20;
/// Largest linear memory: a 32-bit Wasm memory cannot grow beyond 4 GiB.
pub(crate) const MAX_WASM_MEMORY: u64 = 4 << 30;

impl Default for Limits {
    /// The documented defaults: 16 KiB of headers, 100 headers, 10 MiB
    /// bodies, 10 s to read the head, 60 s idle, 10 000 connections, 30 s grace.
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl Default for CacheSettings {
    /// The documented defaults: 256 MiB of memory, objects up to 16 MiB,
    /// one hit in 100 re-verified, 200 entries scrubbed per second, and
    /// coalesced requests waiting up to 10 s, at most 1024 per fetch.
    fn default() -> Self {
        CacheSettings {
            memory_bytes: 256 << 20,
            max_object_bytes: 16 << 20,
            integrity: IntegrityCheck::Sample(100),
            scrub_per_second: 200,
            coalesce_timeout: Duration::from_secs(10),
            coalesce_max_waiters: 1024,
        }
    }
}

/// `[wasm] artifact_cache` when not set: relative to the bootstrap file.
pub(crate) const DEFAULT_ARTIFACT_CACHE: &str = ".cathedral/wasm-cache";

impl Default for WasmSettings {
    /// The documented defaults without a bootstrap file to place the
    /// artifact cache next to: no artifact cache (compile at every start),
    /// 1000 instances, 64 MiB of linear memory per instance.
    fn default() -> Self {
        WasmSettings {
            artifact_cache: None,
            max_instances: 1000,
            max_memory_bytes: 64 << 20,
        }
    }
}

impl WasmSettings {
    /// The defaults for a bootstrap file in `base_dir`: the artifact cache
    /// is `<base_dir>/.cathedral/wasm-cache`.
    pub(crate) fn with_cache_in(base_dir: &std::path::Path) -> Self {
        WasmSettings {
            artifact_cache: Some(validate::resolve(base_dir, DEFAULT_ARTIFACT_CACHE)),
            ..WasmSettings::default()
        }
    }
}

/// Where the edge config lives, known even when other bootstrap tables are
/// wrong, so `load` can report the edge config's errors too.
#[derive(Debug, Clone)]
pub(crate) struct EdgeLocation {
    pub region: String,
    pub edge_config: PathBuf,
    pub regions_dir: PathBuf,
}

#[derive(Debug)]
pub(crate) struct Built {
    pub location: Option<EdgeLocation>,
    /// `[wasm] max_memory` (or its default) when `[wasm]` is valid, even if
    /// other tables are not: modules are checked against it.
    pub max_memory: Option<u64>,
    pub result: Result<Bootstrap>,
}

/// What a listener address was set by, for duplicate reports.
#[derive(Debug, Clone)]
struct Claim {
    addr: SocketAddr,
    key: Key,
    label: String,
}

/// Validates the bootstrap document `table` read from `file`, then applies `overrides`.
pub(crate) fn build(table: &Table, file: FileInfo, overrides: &Overrides) -> Built {
    let origins = Origins::single(file);
    let mut sink = Sink::new(&origins);
    let root = Key::root();
    let base_dir = sink.base_dir(&root).to_path_buf();

    check_keys(
        table,
        TABLES,
        &root,
        &|name| match name {
            "routes" | "upstreams" => Some(
                "routes and upstreams belong in the edge config (node.edge_config) or a region overlay",
            ),
            "region" => {
                Some("the node's region is node.region; [region] tables belong in region overlays")
            }
            "edge_config" | "regions_dir" | "trusted_proxies" => Some("this key belongs in [node]"),
            "modules" => Some(
                "modules belong in the edge config (node.edge_config) or a region overlay; the node-wide engine settings are [wasm]",
            ),
            "bundle" => Some("did you mean [bundles]?"),
            "origins" | "environment" | "root_keys" | "root_threshold" => {
                Some("this key belongs in [bundles]")
            }
            _ => None,
        },
        &mut sink,
    );

    // [node]
    let node_key = root.field("node");
    let node = section::<RawNode>(table.get("node"), &node_key, &mut sink);
    let mut location_known = node.as_ref().is_some_and(|n| {
        !n.is_bad("region") && !n.is_bad("edge_config") && !n.is_bad("regions_dir")
    });
    let (node, proxies_known) = match node {
        Some(parsed) => {
            let known = !parsed.is_bad("trusted_proxies");
            (parsed.value, known)
        }
        None => (RawNode::default(), false),
    };

    let region_key = node_key.field("region");
    let region = match &overrides.region {
        Some(region) => {
            if let Err(message) = validate::check_region_id(region) {
                sink.push(&region_key, format!("{message} (from overrides)"));
                location_known = false;
            }
            region.clone()
        }
        None => {
            let region = node.region.unwrap_or_else(|| DEFAULT_REGION.to_owned());
            if let Err(message) = validate::check_region_id(&region) {
                sink.push(&region_key, message);
                location_known = false;
            }
            region
        }
    };
    let mut path_of = |name: &str, value: Option<String>, default: &str, sink: &mut Sink<'_>| {
        let value = value.unwrap_or_else(|| default.to_owned());
        if value.is_empty() {
            sink.push(
                &node_key.field(name),
                "expected a path, found an empty string",
            );
            location_known = false;
        }
        validate::resolve(&base_dir, &value)
    };
    let edge_config = path_of(
        "edge_config",
        node.edge_config,
        DEFAULT_EDGE_CONFIG,
        &mut sink,
    );
    let regions_dir = path_of(
        "regions_dir",
        node.regions_dir,
        DEFAULT_REGIONS_DIR,
        &mut sink,
    );
    let trusted_proxies: Vec<IpNet> = node
        .trusted_proxies
        .unwrap_or_default()
        .into_iter()
        .map(|cidr| cidr.0)
        .collect();
    let country_header = match node.country_header.as_deref() {
        None => None,
        Some(name) => match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) if !name.is_empty() => Some(h),
            _ => {
                sink.push(
                    &Key::root().field("node").field("country_header"),
                    format!("expected a header name like \"cf-ipcountry\", found {name:?}"),
                );
                None
            }
        },
    };
    let geoip_db = node.geoip_db.as_deref().and_then(|path| {
        let key = Key::root().field("node").field("geoip_db");
        if path.is_empty() {
            sink.push(
                &key,
                "expected the path of a MaxMind database file, found \"\"",
            );
            return None;
        }
        let resolved = validate::resolve(&base_dir, path);
        match validate::existing_file(&resolved) {
            Ok(()) => Some(resolved),
            Err(message) => {
                sink.push(&key, message);
                None
            }
        }
    });
    let location = location_known.then(|| EdgeLocation {
        region: region.clone(),
        edge_config: edge_config.clone(),
        regions_dir: regions_dir.clone(),
    });

    // [tls]
    let tls = build_tls(table.get("tls"), &root.field("tls"), &base_dir, &mut sink);

    // [[listen]]
    let mut plain: Vec<(Listener, Claim)> = Vec::new();
    let mut secure: Vec<(TlsListener, Claim)> = Vec::new();
    let listen_key = root.field("listen");
    match table.get("listen") {
        None => plain.push((
            Listener {
                addr: DEFAULT_LISTEN,
                proxy_protocol: false,
            },
            Claim {
                addr: DEFAULT_LISTEN,
                key: listen_key.clone(),
                label: String::from("the default listener"),
            },
        )),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let key = listen_key.index(i);
                let Value::Table(entry) = item else {
                    sink.push(&key, format!("expected a table, found {}", describe(item)));
                    continue;
                };
                let parsed = table_section::<RawListen>(entry, &key, &mut sink);
                let raw = &parsed.value;
                let tls_on = raw.tls.unwrap_or(false);
                let proxy_protocol = raw.proxy_protocol.unwrap_or(false);
                if proxy_protocol && proxies_known && trusted_proxies.is_empty() {
                    sink.push(
                        &key.field("proxy_protocol"),
                        "requires node.trusted_proxies to list the proxies allowed to send PROXY headers",
                    );
                }
                if raw.min_version.is_some() && !tls_on {
                    sink.push(
                        &key.field("min_version"),
                        "only allowed on a TLS listener (tls = true)",
                    );
                }
                if tls_on && tls.declared == 0 {
                    sink.push(
                        &key.field("tls"),
                        "a TLS listener needs at least one [[tls.certificates]] entry",
                    );
                }
                let Some(addr) = raw.addr.map(|a| a.0) else {
                    if !parsed.is_bad("addr") {
                        sink.push(
                            &key.field("addr"),
                            "required key is missing (expected a socket address like \"127.0.0.1:8080\")",
                        );
                    }
                    continue;
                };
                let claim = Claim {
                    addr,
                    key: key.field("addr"),
                    label: key.to_string(),
                };
                if tls_on {
                    let min_version = raw.min_version.map_or(tls.min_version, |v| v.0);
                    secure.push((
                        TlsListener {
                            addr,
                            proxy_protocol,
                            min_version,
                            certificates: tls.certificates.clone(),
                        },
                        claim,
                    ));
                } else {
                    plain.push((
                        Listener {
                            addr,
                            proxy_protocol,
                        },
                        claim,
                    ));
                }
            }
        }
        Some(other) => sink.push(
            &listen_key,
            format!(
                "expected an array of tables ([[listen]]), found {}",
                describe(other)
            ),
        ),
    }

    // [admin]
    let admin_key = root.field("admin");
    let admin = section::<RawAdmin>(table.get("admin"), &admin_key, &mut sink)
        .map(|p| p.value)
        .unwrap_or_default();
    let mut admin_listen = admin.listen.map_or(DEFAULT_ADMIN_LISTEN, |a| a.0);
    let token_key = admin_key.field("token");
    let mut token = admin.token;
    if let Some(file_token) = &token
        && let Err(message) = validate::admin_token(file_token)
    {
        sink.push(&token_key, message);
    }

    // [limits]
    let limits = build_limits(table.get("limits"), &root.field("limits"), &mut sink);

    // [cache]
    let cache = build_cache(table.get("cache"), &root.field("cache"), &mut sink);

    // [wasm]
    let wasm_errors = sink.error_count();
    let wasm = build_wasm(table.get("wasm"), &root.field("wasm"), &base_dir, &mut sink);
    let max_memory = (sink.error_count() == wasm_errors).then_some(wasm.max_memory_bytes);

    // [bundles]. Its scope is `environment` plus `node.region`, which
    // `check_region_id` above already keeps to a plain name.
    let bundles = build_bundles(
        table.get("bundles"),
        &root.field("bundles"),
        &base_dir,
        &mut sink,
    );

    // Overrides.
    if let Some(addr) = overrides.listen {
        plain = vec![(
            Listener {
                addr,
                proxy_protocol: false,
            },
            Claim {
                addr,
                key: listen_key.clone(),
                label: String::from("the listen override"),
            },
        )];
    }
    if let Some(addr) = overrides.tls_listen {
        if tls.declared == 0 {
            sink.push(
                &root.field("tls").field("certificates"),
                "the tls_listen override needs at least one [[tls.certificates]] entry",
            );
        }
        secure = vec![(
            TlsListener {
                addr,
                proxy_protocol: false,
                min_version: tls.min_version,
                certificates: tls.certificates.clone(),
            },
            Claim {
                addr,
                key: listen_key.clone(),
                label: String::from("the tls_listen override"),
            },
        )];
    }
    let mut admin_label = String::from("admin.listen");
    if let Some(addr) = overrides.admin_listen {
        admin_listen = addr;
        admin_label = String::from("the admin_listen override");
    }
    if let Some(override_token) = &overrides.admin_token {
        if let Err(message) = validate::admin_token(override_token) {
            sink.push(&token_key, format!("{message} (from overrides)"));
        }
        token = Some(override_token.clone());
    }

    // Whole-file checks.
    let listen_empty = matches!(table.get("listen"), Some(Value::Array(items)) if items.is_empty());
    if plain.is_empty() && secure.is_empty() && listen_empty {
        sink.push(&listen_key, "no listeners: add a [[listen]] entry, or remove `listen = []` to get the default 127.0.0.1:8080");
    }
    if token.is_none() && !admin_listen.ip().is_loopback() {
        sink.push(
            &token_key,
            format!(
                "required because {admin_label} ({admin_listen}) is not a loopback address; set admin.token or listen on 127.0.0.1"
            ),
        );
    }
    let mut claims: Vec<Claim> = plain.iter().map(|(_, c)| c.clone()).collect();
    claims.extend(secure.iter().map(|(_, c)| c.clone()));
    claims.push(Claim {
        addr: admin_listen,
        key: admin_key.field("listen"),
        label: admin_label,
    });
    for (i, claim) in claims.iter().enumerate() {
        // Port 0 asks the OS for a fresh port each time: never a clash.
        if claim.addr.port() == 0 {
            continue;
        }
        if let Some(earlier) = claims.iter().take(i).find(|c| c.addr == claim.addr) {
            sink.push(
                &claim.key,
                format!("{} is already used by {}", claim.addr, earlier.label),
            );
        }
    }

    let bootstrap = Bootstrap {
        region,
        listeners: plain.into_iter().map(|(l, _)| l).collect(),
        tls_listeners: secure.into_iter().map(|(l, _)| l).collect(),
        admin: Admin {
            listen: admin_listen,
            token,
        },
        limits,
        trusted_proxies,
        country_header,
        geoip_db,
        edge_config,
        regions_dir,
        cache,
        wasm,
        bundles,
    };
    let result = match ConfigErrors::from_vec(sink.into_errors()) {
        None => Ok(bootstrap),
        Some(errors) => Err(errors),
    };
    Built {
        location,
        max_memory,
        result,
    }
}

struct TlsSettings {
    min_version: TlsVersion,
    certificates: Vec<Certificate>,
    /// Entries written in the file, valid or not: "no certificates" is only
    /// reported when there are none at all.
    declared: usize,
}

fn build_tls(
    value: Option<&Value>,
    key: &Key,
    base_dir: &std::path::Path,
    sink: &mut Sink<'_>,
) -> TlsSettings {
    let mut settings = TlsSettings {
        min_version: DEFAULT_TLS_MIN_VERSION,
        certificates: Vec::new(),
        declared: 0,
    };
    let mut table = match value {
        None => return settings,
        Some(Value::Table(table)) => table.clone(),
        Some(other) => {
            sink.push(key, format!("expected a table, found {}", describe(other)));
            return settings;
        }
    };
    let certificates = table.remove("certificates");
    let parsed = table_section::<RawTls>(&table, key, sink);
    if let Some(version) = parsed.value.min_version {
        settings.min_version = version.0;
    }
    let certs_key = key.field("certificates");
    let entries = match certificates {
        None => Vec::new(),
        Some(Value::Array(entries)) => entries,
        Some(other) => {
            sink.push(
                &certs_key,
                format!(
                    "expected an array of tables ([[tls.certificates]]), found {}",
                    describe(&other)
                ),
            );
            Vec::new()
        }
    };
    settings.declared = entries.len();
    for (i, entry) in entries.iter().enumerate() {
        let key = certs_key.index(i);
        let Value::Table(entry) = entry else {
            sink.push(&key, format!("expected a table, found {}", describe(entry)));
            continue;
        };
        let errors_before = sink.error_count();
        let mut parsed = table_section::<RawCertificate>(entry, &key, sink);
        let raw = std::mem::take(&mut parsed.value);
        let mut server_names = Vec::new();
        match raw.server_names {
            Some(names) if names.is_empty() => {
                sink.push(&key.field("server_names"), "expected at least one name, found an empty array");
            }
            Some(names) => {
                for (j, name) in names.iter().enumerate() {
                    match validate::server_name_pattern(name) {
                        Ok(name) => server_names.push(name),
                        Err(message) => sink.push(&key.field("server_names").index(j), message),
                    }
                }
            }
            None if parsed.is_bad("server_names") => {}
            None => sink.push(
                &key.field("server_names"),
                "required key is missing (expected names like [\"example.com\", \"*.example.com\"])",
            ),
        }
        let file = |name: &str, value: Option<String>, sink: &mut Sink<'_>| -> Option<PathBuf> {
            let file_key = key.field(name);
            match value {
                Some(path) if path.is_empty() => {
                    sink.push(
                        &file_key,
                        "expected a path to a PEM file, found an empty string",
                    );
                    None
                }
                Some(path) => {
                    let path = validate::resolve(base_dir, &path);
                    match validate::existing_file(&path) {
                        Ok(()) => Some(path),
                        Err(message) => {
                            sink.push(&file_key, message);
                            None
                        }
                    }
                }
                None => {
                    if !parsed.is_bad(name) {
                        sink.push(
                            &file_key,
                            "required key is missing (expected a path to a PEM file)",
                        );
                    }
                    None
                }
            }
        };
        let cert = file("cert", raw.cert, sink);
        let private_key = file("key", raw.key, sink);
        if let (Some(cert), Some(key)) = (cert, private_key)
            && sink.error_count() == errors_before
        {
            settings.certificates.push(Certificate {
                server_names,
                cert,
                key,
            });
        }
    }
    settings
}

fn build_limits(value: Option<&Value>, key: &Key, sink: &mut Sink<'_>) -> Limits {
    let mut limits = Limits::default();
    let Some(parsed) = section::<RawLimits>(value, key, sink) else {
        return limits;
    };
    let raw = parsed.value;
    if let Some(size) = raw.max_header_bytes {
        match usize::try_from(size.0) {
            Ok(bytes) if (MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&size.0) => {
                limits.max_header_bytes = bytes
            }
            _ => sink.push(
                &key.field("max_header_bytes"),
                format!(
                    "expected between {} and {}, found {}",
                    format_size(MIN_HEADER_BYTES),
                    format_size(MAX_HEADER_BYTES),
                    format_size(size.0)
                ),
            ),
        }
    }
    if let Some(count) = raw.max_headers {
        positive(
            &mut limits.max_headers,
            count.0,
            &key.field("max_headers"),
            sink,
        );
    }
    if let Some(size) = raw.max_body_bytes {
        limits.max_body_bytes = size.0;
    }
    if let Some(count) = raw.max_connections {
        positive(
            &mut limits.max_connections,
            count.0,
            &key.field("max_connections"),
            sink,
        );
    }
    for (name, field, value, zero_ok) in [
        (
            "header_read_timeout",
            &mut limits.header_read_timeout,
            raw.header_read_timeout,
            false,
        ),
        (
            "idle_timeout",
            &mut limits.idle_timeout,
            raw.idle_timeout,
            false,
        ),
        (
            "shutdown_grace",
            &mut limits.shutdown_grace,
            raw.shutdown_grace,
            true,
        ),
    ] {
        if let Some(duration) = value {
            match check_duration(duration.0, zero_ok) {
                Ok(d) => *field = d,
                Err(message) => sink.push(&key.field(name), message),
            }
        }
    }
    limits
}

fn build_cache(value: Option<&Value>, key: &Key, sink: &mut Sink<'_>) -> CacheSettings {
    let mut cache = CacheSettings::default();
    let Some(parsed) = section::<RawCache>(value, key, sink) else {
        return cache;
    };
    // Whether `memory` holds what the file meant, so `max_object_size` can be compared to it.
    let mut memory_known = !parsed.is_bad("memory");
    let raw = parsed.value;
    if let Some(size) = raw.memory {
        if size.0 < MIN_CACHE_MEMORY {
            sink.push(
                &key.field("memory"),
                format!(
                    "expected at least {}, found {}",
                    format_size(MIN_CACHE_MEMORY),
                    format_size(size.0)
                ),
            );
            memory_known = false;
        } else {
            cache.memory_bytes = size.0;
        }
    }
    if let Some(size) = raw.max_object_size {
        let object_key = key.field("max_object_size");
        if size.0 == 0 {
            sink.push(
                &object_key,
                "expected a positive byte size like \"16MiB\", found 0B (to cache nothing on a route, set cache = false on it)",
            );
        } else if memory_known && size.0 > cache.memory_bytes {
            let memory = match raw.memory {
                Some(_) => String::from("cache.memory"),
                None => String::from("the default cache.memory"),
            };
            sink.push(
                &object_key,
                format!(
                    "expected at most {memory} ({}), found {}",
                    format_size(cache.memory_bytes),
                    format_size(size.0)
                ),
            );
        } else {
            cache.max_object_bytes = size.0;
        }
    } else if memory_known && cache.max_object_bytes > cache.memory_bytes {
        // A small memory with the default object size: objects above the
        // memory could never be stored anyway.
        cache.max_object_bytes = cache.memory_bytes;
    }
    if let Some(integrity) = raw.integrity {
        cache.integrity = integrity.0;
    }
    if let Some(count) = raw.scrub_per_second {
        match u32::try_from(count.0) {
            Ok(rate) => cache.scrub_per_second = rate,
            Err(_) => sink.push(
                &key.field("scrub_per_second"),
                format!("expected at most {}, found {}", u32::MAX, count.0),
            ),
        }
    }
    if let Some(duration) = raw.coalesce_timeout {
        match check_duration(duration.0, false) {
            Ok(d) => cache.coalesce_timeout = d,
            Err(message) => sink.push(&key.field("coalesce_timeout"), message),
        }
    }
    if let Some(count) = raw.coalesce_max_waiters {
        positive(
            &mut cache.coalesce_max_waiters,
            count.0,
            &key.field("coalesce_max_waiters"),
            sink,
        );
    }
    cache
}

fn build_wasm(
    value: Option<&Value>,
    key: &Key,
    base_dir: &std::path::Path,
    sink: &mut Sink<'_>,
) -> WasmSettings {
    let mut wasm = WasmSettings::with_cache_in(base_dir);
    let Some(parsed) = section::<RawWasm>(value, key, sink) else {
        return wasm;
    };
    let raw = parsed.value;
    match raw.artifact_cache {
        None => {}
        Some(ArtifactCache::Off) => wasm.artifact_cache = None,
        Some(ArtifactCache::Path(path)) => {
            wasm.artifact_cache = Some(validate::resolve(base_dir, &path));
        }
    }
    if let Some(Count(n)) = raw.max_instances {
        match u32::try_from(n) {
            Ok(n) if (1..=MAX_WASM_INSTANCES).contains(&n) => wasm.max_instances = n,
            _ => sink.push(
                &key.field("max_instances"),
                format!("expected an integer between 1 and {MAX_WASM_INSTANCES}, found {n}"),
            ),
        }
    }
    if let Some(size) = raw.max_memory {
        match check_wasm_memory(size.0) {
            Ok(bytes) => wasm.max_memory_bytes = bytes,
            Err(message) => sink.push(&key.field("max_memory"), message),
        }
    }
    wasm
}

/// `[bundles]` bounds and defaults (see `docs/configuration.md`).
pub(crate) const DEFAULT_BUNDLE_STATE_DIR: &str = ".cathedral/bundles";
const MAX_ORIGINS: usize = 8;
const MAX_ROOT_KEYS: usize = 16;
const DEFAULT_ROOT_THRESHOLD: usize = 1;
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// Polling faster than once a second only loads the origin.
const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_HEALTH_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_MAX_MANIFEST: u64 = 8 << 20;
const MIN_MAX_MANIFEST: u64 = 1 << 10;
const MAX_MAX_MANIFEST: u64 = 64 << 20;
const DEFAULT_MAX_BUNDLE: u64 = 2 << 30;
const MIN_MAX_BUNDLE: u64 = 1 << 20;
const MAX_MAX_BUNDLE: u64 = 1 << 40;
const DEFAULT_KEEP: usize = 3;
/// `activate --previous` needs the active bundle and one before it.
const MIN_KEEP: usize = 2;
const MAX_KEEP: usize = 20;

/// `[bundles]`: `None` when the table is absent (local mode). When it is
/// present the settings are returned even if some keys were wrong (those
/// are reported and left at their defaults).
fn build_bundles(
    value: Option<&Value>,
    key: &Key,
    base_dir: &std::path::Path,
    sink: &mut Sink<'_>,
) -> Option<BundleSettings> {
    let parsed = section::<RawBundles>(Some(value?), key, sink)?;
    let mut bundles = BundleSettings {
        origins: Vec::new(),
        environment: String::new(),
        root_keys: Vec::new(),
        root_threshold: DEFAULT_ROOT_THRESHOLD,
        state_dir: validate::resolve(base_dir, DEFAULT_BUNDLE_STATE_DIR),
        poll_interval: DEFAULT_POLL_INTERVAL,
        fetch_timeout: DEFAULT_FETCH_TIMEOUT,
        max_manifest_bytes: DEFAULT_MAX_MANIFEST,
        max_bundle_bytes: DEFAULT_MAX_BUNDLE,
        keep: DEFAULT_KEEP,
        health_grace: DEFAULT_HEALTH_GRACE,
    };
    let raw = &parsed.value;
    let required = |name: &str, expected: &str, sink: &mut Sink<'_>| {
        if !parsed.is_bad(name) {
            sink.push(
                &key.field(name),
                format!("required key is missing (expected {expected})"),
            );
        }
    };

    let origins_key = key.field("origins");
    match &raw.origins {
        None => required(
            "origins",
            "URLs like [\"https://origin.example.net\"]",
            sink,
        ),
        Some(urls) => {
            list_length(
                urls.len(),
                MAX_ORIGINS,
                "origins",
                "URL",
                &origins_key,
                sink,
            );
            bundles.origins = distinct(urls, &origins_key, validate::origin_url, "", sink);
        }
    }

    match &raw.environment {
        None => required(
            "environment",
            "an environment name like \"production\"",
            sink,
        ),
        Some(name) => match validate::environment_name(name) {
            Ok(()) => bundles.environment.clone_from(name),
            Err(message) => sink.push(&key.field("environment"), message),
        },
    }

    // The number of root keys when every one of them is valid: the bound
    // of `root_threshold`.
    let keys_key = key.field("root_keys");
    let mut key_count = None;
    match &raw.root_keys {
        None => required(
            "root_keys",
            "the root public keys as hex, like [\"<64 hex digits>\"]",
            sink,
        ),
        Some(keys) => {
            let errors_before = sink.error_count();
            list_length(
                keys.len(),
                MAX_ROOT_KEYS,
                "root keys",
                "key",
                &keys_key,
                sink,
            );
            let check = |root_key: &str| validate::root_key(root_key).map(|()| root_key.to_owned());
            let note = "; a threshold counts distinct keys";
            bundles.root_keys = distinct(keys, &keys_key, check, note, sink);
            if sink.error_count() == errors_before {
                key_count = Some(bundles.root_keys.len());
            }
        }
    }
    if let Some(Count(threshold)) = raw.root_threshold {
        let (max, why) = match key_count {
            Some(n) => (n, " (the number of root_keys)"),
            None => (MAX_ROOT_KEYS, ""),
        };
        if (1..=max).contains(&threshold) {
            bundles.root_threshold = threshold;
        } else {
            sink.push(
                &key.field("root_threshold"),
                format!("expected an integer between 1 and {max}{why}, found {threshold}"),
            );
        }
    }

    match &raw.state_dir {
        None => {}
        Some(dir) if dir.is_empty() => sink.push(
            &key.field("state_dir"),
            "expected a directory path, found an empty string",
        ),
        Some(dir) => bundles.state_dir = validate::resolve(base_dir, dir),
    }

    if let Some(duration) = raw.poll_interval {
        let interval = duration.0;
        if (MIN_POLL_INTERVAL..=MAX_DURATION).contains(&interval) {
            bundles.poll_interval = interval;
        } else {
            sink.push(
                &key.field("poll_interval"),
                format!(
                    "expected between \"1s\" and \"24h\", found \"{}\"",
                    format_duration(interval)
                ),
            );
        }
    }
    for (name, field, value, zero_ok) in [
        (
            "fetch_timeout",
            &mut bundles.fetch_timeout,
            raw.fetch_timeout,
            false,
        ),
        (
            "health_grace",
            &mut bundles.health_grace,
            raw.health_grace,
            true,
        ),
    ] {
        if let Some(duration) = value {
            match check_duration(duration.0, zero_ok) {
                Ok(d) => *field = d,
                Err(message) => sink.push(&key.field(name), message),
            }
        }
    }

    for (name, field, value, min, max) in [
        (
            "max_manifest",
            &mut bundles.max_manifest_bytes,
            raw.max_manifest,
            MIN_MAX_MANIFEST,
            MAX_MAX_MANIFEST,
        ),
        (
            "max_bundle",
            &mut bundles.max_bundle_bytes,
            raw.max_bundle,
            MIN_MAX_BUNDLE,
            MAX_MAX_BUNDLE,
        ),
    ] {
        if let Some(size) = value {
            if (min..=max).contains(&size.0) {
                *field = size.0;
            } else {
                sink.push(
                    &key.field(name),
                    format!(
                        "expected between {} and {}, found {}",
                        format_size(min),
                        format_size(max),
                        format_size(size.0)
                    ),
                );
            }
        }
    }

    if let Some(Count(keep)) = raw.keep {
        if (MIN_KEEP..=MAX_KEEP).contains(&keep) {
            bundles.keep = keep;
        } else {
            sink.push(
                &key.field("keep"),
                format!("expected an integer between {MIN_KEEP} and {MAX_KEEP}, found {keep}"),
            );
        }
    }
    Some(bundles)
}

/// Checks every entry of the list at `key` with `check`, which returns it
/// in its one spelling, and keeps the distinct ones; a repeat is reported
/// on its index, naming the entry it repeats (and `note`).
fn distinct(
    entries: &[String],
    key: &Key,
    check: impl Fn(&str) -> std::result::Result<String, String>,
    note: &str,
    sink: &mut Sink<'_>,
) -> Vec<String> {
    let mut kept: Vec<(usize, String)> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match check(entry) {
            Ok(value) => match kept.iter().find(|(_, k)| *k == value) {
                Some((first, _)) => sink.push(
                    &key.index(i),
                    format!(
                        "{} is listed twice (same as {}{note})",
                        toml_string(entry),
                        key.index(*first)
                    ),
                ),
                None => kept.push((i, value)),
            },
            Err(message) => sink.push(&key.index(i), message),
        }
    }
    kept.into_iter().map(|(_, value)| value).collect()
}

/// A required list holds 1 to `max` entries; reported on the list's key.
fn list_length(len: usize, max: usize, what: &str, one: &str, key: &Key, sink: &mut Sink<'_>) {
    if len == 0 {
        sink.push(
            key,
            format!("expected at least one {one}, found an empty array"),
        );
    } else if len > max {
        sink.push(key, format!("expected at most {max} {what}, found {len}"));
    }
}

/// A linear memory size: 1 MiB to 4 GiB.
pub(crate) fn check_wasm_memory(bytes: u64) -> std::result::Result<u64, String> {
    if (MIN_WASM_MEMORY..=MAX_WASM_MEMORY).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(format!(
            "expected between {} and {}, found {}",
            format_size(MIN_WASM_MEMORY),
            format_size(MAX_WASM_MEMORY),
            format_size(bytes)
        ))
    }
}

fn positive(field: &mut usize, value: usize, key: &Key, sink: &mut Sink<'_>) {
    if value == 0 {
        sink.push(key, "expected a positive integer, found 0");
    } else {
        *field = value;
    }
}

/// Timeouts must be positive (`zero_ok` for grace periods) and at most a day.
pub(crate) fn check_duration(
    duration: Duration,
    zero_ok: bool,
) -> std::result::Result<Duration, String> {
    if duration.is_zero() && !zero_ok {
        Err(String::from(
            "expected a positive duration like \"2s\", found \"0s\"",
        ))
    } else if duration > MAX_DURATION {
        Err(format!(
            "expected at most \"24h\", found \"{}\"",
            format_duration(duration)
        ))
    } else {
        Ok(duration)
    }
}
