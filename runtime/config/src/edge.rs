//! The edge config (`[upstreams.*]`, `[rate_limits.*]`, `[modules.*]`, `[routes.*]`, and an overlay's `[region]`): global file and region overlay merged, then validated into an [`EdgeConfig`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use toml::{Table, Value};

use crate::bootstrap::check_duration;
use crate::error::{ConfigError, ConfigErrors, FileInfo, Key, Result, Sink, toml_string};
use crate::merge::{MAIN, OVERLAY, Origins, Provenance, merge};
use crate::modules::{MemoryCap, ModuleUses, build_filters, build_module, known, unknown_module};
use crate::raw::{
    CacheSwitch, Count, RawRateLimit, RawRegion, RawRoute, RawRouteCache, RawUpstream, check_keys,
    describe, section, table_section,
};
use crate::size::format_duration;
use crate::types::{
    CacheMode, ClassChoice, EdgeConfig, HandlerTarget, HostHeader, HostMatch, RateLimitKey,
    RateLimitPolicy, Route, RouteCache, RouteTarget, Scheme, StaticSite, Upstream,
    UpstreamProtocol, UpstreamTls,
};
use crate::validate;

pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub(crate) const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(300);
pub(crate) const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
pub(crate) const DEFAULT_POOL_MAX_IDLE: usize = 64;
pub(crate) const DEFAULT_INDEX: &str = "index.html";

/// Longest route `ttl`: a year keeps expiry arithmetic far from overflow
/// and is what immutable content is given anyway.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(31_557_600);

/// Rate-limit `per` when not set.
pub(crate) const DEFAULT_RATE_PERIOD: Duration = Duration::from_secs(1);
/// Keys a rate-limit policy tracks when `max_keys` is not set.
pub(crate) const DEFAULT_MAX_KEYS: usize = 100_000;
/// Largest `max_keys`: bounds a policy's memory (tens of bytes per key).
pub(crate) const MAX_MAX_KEYS: usize = 10_000_000;
/// Shortest `penalty` the limiter accepts (`cathedral-limits`' `PolicySpec`).
pub(crate) const MIN_PENALTY: Duration = Duration::from_millis(1);
/// Longest time an empty bucket may take to refill (`per / rate × burst`):
/// `cathedral-limits`' `MAX_WINDOW`, which keeps its instants inside a `u64`
/// of nanoseconds. The limiter also needs `per / rate` of at least 1 ns.
pub(crate) const MAX_REFILL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// [`MAX_REFILL`] in words, for messages.
const MAX_REFILL_TEXT: &str = "3650 days";

const TABLES: &[&str] = &["upstreams", "rate_limits", "modules", "routes", "region"];

impl Default for RouteCache {
    /// What an upstream route without a `cache` key gets: the origin's
    /// freshness, content classes detected per response, the full query in
    /// the key, no extra key headers, `Set-Cookie` responses not stored,
    /// `CDN-Cache-Control` forwarded.
    fn default() -> Self {
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
    }
}

/// A configuration file given as text: the global edge config or a region overlay.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Shown in error messages; an overlay's file stem must equal its `[region] id`.
    pub name: &'a Path,
    pub text: &'a str,
    /// Relative paths in the file (static roots, CA files) resolve against this.
    pub base_dir: &'a Path,
}

/// Parses `text` as a TOML table; syntax errors carry line and column.
pub(crate) fn parse_toml(text: &str, file: &Path) -> std::result::Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|error| {
        let message = error.message().trim().replace('\n', "; ");
        let position = error
            .span()
            .map(|span| {
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        ConfigError::new(file, "", format!("invalid TOML{position}: {message}"))
    })
}

fn file_info(source: &Source<'_>) -> FileInfo {
    FileInfo {
        name: source.name.to_path_buf(),
        base_dir: validate::absolute(source.base_dir),
    }
}

/// Merges `overlay` over `global` and validates the result for `region`.
pub(crate) fn parse(
    global: Source<'_>,
    overlay: Option<Source<'_>>,
    region: &str,
    memory_cap: Option<&MemoryCap>,
    files: &dyn crate::validate::FileTree,
) -> Result<EdgeConfig> {
    let main = file_info(&global);
    let over = overlay.as_ref().map(file_info);
    let mut errors = Vec::new();
    let global_table = parse_toml(global.text, global.name)
        .map_err(|e| errors.push(e))
        .ok();
    let overlay_table = match &overlay {
        Some(source) => parse_toml(source.text, source.name)
            .map_err(|e| errors.push(e))
            .ok(),
        None => None,
    };
    let Some(mut table) = global_table else {
        return Err(ConfigErrors(errors));
    };
    if overlay.is_some() && overlay_table.is_none() {
        return Err(ConfigErrors(errors));
    }

    if table.remove("region").is_some() {
        errors.push(ConfigError::new(
            &main.name,
            "region",
            "the [region] table belongs only in region overlays (regions/<id>.toml)",
        ));
    }
    let mut provenance = Provenance::default();
    provenance.record_table(&table, MAIN);
    if let (Some(overlay_table), Some(source)) = (overlay_table, &overlay) {
        if !overlay_table.contains_key("region") {
            errors.push(ConfigError::new(
                source.name,
                "region",
                "a region overlay needs a [region] table with id, name and jurisdiction",
            ));
        }
        merge(&mut table, overlay_table, OVERLAY, &mut provenance);
    }
    let origins = Origins::merged(main, over, provenance);
    let mut sink = Sink::with_files(&origins, files);
    match &overlay {
        Some(source) => {
            let stem = source.name.file_stem().and_then(|s| s.to_str());
            if table.contains_key("region") {
                check_region(table.get("region"), stem, region, &mut sink);
            }
        }
        None => {
            if let Err(message) = validate::check_region_id(region) {
                sink.push(&Key::root().field("node").field("region"), message);
            }
        }
    }
    let config = build(&table, region, memory_cap, &mut sink);
    errors.extend(sink.into_errors());
    match ConfigErrors::from_vec(errors) {
        None => Ok(config),
        Some(errors) => Err(errors),
    }
}

/// The overlay's `[region]` table: its id must be the file's stem and the node's region.
fn check_region(value: Option<&Value>, stem: Option<&str>, region: &str, sink: &mut Sink<'_>) {
    let key = Key::root().field("region");
    let Some(parsed) = section::<RawRegion>(value, &key, sink) else {
        return;
    };
    let raw = &parsed.value;
    let required =
        |name: &str, value: &Option<String>, what: &str, sink: &mut Sink<'_>| -> Option<String> {
            match value {
                Some(v) if v.trim().is_empty() => {
                    sink.push(
                        &key.field(name),
                        format!("expected {what}, found an empty string"),
                    );
                    None
                }
                Some(v) => Some(v.clone()),
                None if parsed.is_bad(name) => None,
                None => {
                    sink.push(
                        &key.field(name),
                        format!("required key is missing (expected {what})"),
                    );
                    None
                }
            }
        };
    let id = required("id", &raw.id, "the region id, e.g. \"eu-central-1\"", sink);
    required(
        "name",
        &raw.name,
        "a human-readable name, e.g. \"Europe (Frankfurt)\"",
        sink,
    );
    let jurisdiction = required(
        "jurisdiction",
        &raw.jurisdiction,
        "a code like \"EU\" or \"US\"",
        sink,
    );
    if let Some(id) = id {
        if let Err(message) = validate::check_region_id(&id) {
            sink.push(&key.field("id"), message);
        } else if let Some(stem) = stem.filter(|stem| *stem != id) {
            sink.push(
                &key.field("id"),
                format!(
                    "expected {} (the overlay's file name), found {}",
                    toml_string(stem),
                    toml_string(&id)
                ),
            );
        } else if id != region {
            sink.push(
                &key.field("id"),
                format!(
                    "this overlay is for region {} but the node's region is {}",
                    toml_string(&id),
                    toml_string(region)
                ),
            );
        }
    }
    if let Some(code) = jurisdiction
        && (code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()))
    {
        sink.push(
            &key.field("jurisdiction"),
            format!(
                "expected a two-letter upper-case code like \"EU\", \"US\" or \"SG\", found {}",
                toml_string(&code)
            ),
        );
    }
}

/// Validates the merged edge document.
fn build(
    table: &Table,
    region: &str,
    memory_cap: Option<&MemoryCap>,
    sink: &mut Sink<'_>,
) -> EdgeConfig {
    let root = Key::root();
    check_keys(
        table,
        TABLES,
        &root,
        &|name| match name {
            "node" | "listen" | "tls" | "admin" | "limits" | "bundles" => {
                Some("node-local settings belong in the bootstrap file (node.toml)")
            }
            "upstream" | "route" | "rate_limit" | "module" => Some("did you mean the plural?"),
            "wasm" => Some(
                "[wasm] holds node-local engine settings and belongs in the bootstrap file (node.toml)",
            ),
            "ratelimits" | "rate-limits" | "ratelimit" | "rate-limit" => {
                Some("did you mean rate_limits?")
            }
            _ => None,
        },
        sink,
    );

    let upstreams_key = root.field("upstreams");
    let upstream_tables = named_tables(table.get("upstreams"), &upstreams_key, "upstreams", sink);
    let declared: BTreeSet<&str> = upstream_tables
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    let mut upstreams = BTreeMap::new();
    for (name, value) in &upstream_tables {
        if let Some(upstream) = build_upstream(name, value, &upstreams_key.field(name), sink) {
            upstreams.insert(name.clone(), upstream);
        }
    }

    let policies_key = root.field("rate_limits");
    let policy_tables = named_tables(table.get("rate_limits"), &policies_key, "rate_limits", sink);
    // Every declared policy with its key when that could be read (even if
    // the policy has other errors), so routes are checked against it.
    let mut policy_keys: BTreeMap<String, Option<RateLimitKey>> = BTreeMap::new();
    let mut rate_limits = BTreeMap::new();
    for (name, value) in &policy_tables {
        let (policy, policy_key) = build_rate_limit(name, value, &policies_key.field(name), sink);
        policy_keys.insert(name.clone(), policy_key);
        if let Some(policy) = policy {
            rate_limits.insert(name.clone(), policy);
        }
    }

    let modules_key = root.field("modules");
    let module_tables = named_tables(table.get("modules"), &modules_key, "modules", sink);
    let declared_policies: BTreeSet<&str> = policy_keys.keys().map(String::as_str).collect();
    let mut modules = BTreeMap::new();
    for (name, value) in &module_tables {
        let key = modules_key.field(name);
        if let Some(module) = build_module(name, value, &key, &declared_policies, memory_cap, sink)
        {
            modules.insert(name.clone(), module);
        }
    }
    let declared_modules: BTreeSet<&str> = module_tables
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();

    let names = Known {
        upstreams: &declared,
        policies: &policy_keys,
        modules: &declared_modules,
    };
    let mut uses = ModuleUses::default();
    let routes_key = root.field("routes");
    let route_tables = named_tables(table.get("routes"), &routes_key, "routes", sink);
    let mut routes = Vec::new();
    // Each (host pattern, path) pair may belong to one route only: two
    // routes sharing one would tie in the router.
    let mut claimed: BTreeMap<(String, String), (String, Vec<String>)> = BTreeMap::new();
    for (name, value) in &route_tables {
        let key = routes_key.field(name);
        let Some(route) = build_route(name, value, &key, &names, &mut uses, sink) else {
            continue;
        };
        let mut hosts: Vec<String> = route.hosts.iter().map(host_text).collect();
        if hosts.is_empty() {
            hosts.push(String::from("*"));
        }
        hosts.sort();
        let clash = hosts.iter().find_map(|host| {
            claimed
                .get(&(host.clone(), route.path_prefix.clone()))
                .map(|c| (host, c))
        });
        if let Some((host, (first, first_hosts))) = clash {
            let message = if *first_hosts == hosts {
                format!(
                    "route {} has the same hosts and path ({}) as route {}",
                    toml_string(name),
                    toml_string(&route.path_prefix),
                    toml_string(first)
                )
            } else {
                format!(
                    "route {} and route {} both match host {} with path {}",
                    toml_string(name),
                    toml_string(first),
                    toml_string(host),
                    toml_string(&route.path_prefix)
                )
            };
            sink.push(&key.field("path"), message);
            continue;
        }
        for host in &hosts {
            claimed.insert(
                (host.clone(), route.path_prefix.clone()),
                (name.clone(), hosts.clone()),
            );
        }
        routes.push(route);
    }
    uses.check(sink);

    EdgeConfig {
        region: region.to_owned(),
        upstreams,
        routes,
        rate_limits,
        modules,
    }
}

/// The names routes may refer to: declared upstreams, rate-limit policies
/// (with their keys when readable) and modules, valid or not.
struct Known<'a> {
    upstreams: &'a BTreeSet<&'a str>,
    policies: &'a BTreeMap<String, Option<RateLimitKey>>,
    modules: &'a BTreeSet<&'a str>,
}

/// `[upstreams.<name>]` / `[rate_limits.<name>]` / `[routes.<name>]`: a table of named tables.
fn named_tables(
    value: Option<&Value>,
    key: &Key,
    what: &str,
    sink: &mut Sink<'_>,
) -> Vec<(String, Value)> {
    match value {
        None => Vec::new(),
        Some(Value::Table(table)) => table.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Some(other) => {
            sink.push(
                key,
                format!(
                    "expected a table of {what} ([{what}.<name>]), found {}",
                    describe(other)
                ),
            );
            Vec::new()
        }
    }
}

/// "no upstream named ..." for a name that is not in `upstreams`.
fn unknown_upstream(name: &str, upstreams: &BTreeSet<&str>) -> String {
    format!(
        "no upstream named {} ({})",
        toml_string(name),
        known(upstreams, "no upstreams are defined")
    )
}

/// `example.com` / `*.example.com`, as written.
pub(crate) fn host_text(host: &HostMatch) -> String {
    match host {
        HostMatch::Exact(name) => name.clone(),
        HostMatch::Suffix(suffix) => format!("*{suffix}"),
    }
}

fn build_upstream(name: &str, value: &Value, key: &Key, sink: &mut Sink<'_>) -> Option<Upstream> {
    let before = sink.error_count();
    if let Err(message) = validate::check_name(name) {
        sink.push(key, format!("invalid upstream name: {message}"));
    }
    let Value::Table(table) = value else {
        sink.push(
            key,
            format!(
                "expected a table ([upstreams.{}]), found {}",
                crate::error::toml_key(name),
                describe(value)
            ),
        );
        return None;
    };
    let parsed = table_section::<RawUpstream>(table, key, sink);
    let raw = &parsed.value;

    let targets_key = key.field("targets");
    let mut scheme = None;
    let mut targets = Vec::new();
    match &raw.targets {
        None if parsed.is_bad("targets") => {}
        None => sink.push(
            &targets_key,
            "required key is missing (expected URLs like [\"http://127.0.0.1:9000\"])",
        ),
        Some(urls) if urls.is_empty() => sink.push(
            &targets_key,
            "expected at least one URL, found an empty array",
        ),
        Some(urls) => {
            for (i, url) in urls.iter().enumerate() {
                match validate::parse_target(url) {
                    Ok((target_scheme, authority)) => {
                        let first = *scheme.get_or_insert(target_scheme);
                        if first != target_scheme {
                            sink.push(
                                &targets_key.index(i),
                                format!("all targets must use the same scheme; {} differs from the first", toml_string(url)),
                            );
                        } else if targets.contains(&authority) {
                            sink.push(
                                &targets_key.index(i),
                                format!("{} is listed twice", toml_string(url)),
                            );
                        } else {
                            targets.push(authority);
                        }
                    }
                    Err(message) => sink.push(&targets_key.index(i), message),
                }
            }
        }
    }
    let scheme = scheme.unwrap_or(Scheme::Http);

    let duration =
        |field: &str, value: Option<Duration>, default: Duration, sink: &mut Sink<'_>| match value
            .map(|d| check_duration(d, false))
        {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(message)) => {
                sink.push(&key.field(field), message);
                default
            }
        };
    let connect_timeout = duration(
        "connect_timeout",
        raw.connect_timeout.map(|d| d.0),
        DEFAULT_CONNECT_TIMEOUT,
        sink,
    );
    let first_byte_timeout = duration(
        "first_byte_timeout",
        raw.first_byte_timeout.map(|d| d.0),
        DEFAULT_FIRST_BYTE_TIMEOUT,
        sink,
    );
    let total_timeout = duration(
        "total_timeout",
        raw.total_timeout.map(|d| d.0),
        DEFAULT_TOTAL_TIMEOUT,
        sink,
    );
    let pool_idle_timeout = duration(
        "pool_idle_timeout",
        raw.pool_idle_timeout.map(|d| d.0),
        DEFAULT_POOL_IDLE_TIMEOUT,
        sink,
    );

    let https_only = |field: &str, sink: &mut Sink<'_>| {
        sink.push(
            &key.field(field),
            "only allowed for https upstreams (the targets use http)",
        );
    };
    let mut ca_file = None;
    if let Some(path) = &raw.ca_file {
        let ca_key = key.field("ca_file");
        if scheme == Scheme::Http {
            https_only("ca_file", sink);
        } else if path.is_empty() {
            sink.push(
                &ca_key,
                "expected a path to a PEM file, found an empty string",
            );
        } else {
            let path = validate::resolve(sink.base_dir(&ca_key), path);
            match sink.files().check_file(&path) {
                Ok(()) => ca_file = Some(path),
                Err(message) => sink.push(&ca_key, message),
            }
        }
    }
    let mut server_name = None;
    if let Some(name) = &raw.server_name {
        if scheme == Scheme::Http {
            https_only("server_name", sink);
        } else {
            match validate::upstream_server_name(name) {
                Ok(name) => server_name = Some(name),
                Err(message) => sink.push(&key.field("server_name"), message),
            }
        }
    }

    if sink.error_count() > before {
        return None;
    }
    Some(Upstream {
        name: name.to_owned(),
        scheme,
        targets,
        protocol: raw.protocol.map_or(UpstreamProtocol::Http1, |p| p.0),
        connect_timeout,
        first_byte_timeout,
        total_timeout,
        pool_idle_timeout,
        pool_max_idle: raw.pool_max_idle.map_or(DEFAULT_POOL_MAX_IDLE, |c| c.0),
        tls: (scheme == Scheme::Https).then_some(UpstreamTls {
            ca_file,
            server_name,
        }),
    })
}

/// A positive integer that fits `u32`.
fn positive_u32(value: usize, key: &Key, sink: &mut Sink<'_>) -> Option<u32> {
    match u32::try_from(value) {
        Ok(0) => {
            sink.push(key, "expected a positive integer, found 0");
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            sink.push(key, format!("expected at most {}, found {value}", u32::MAX));
            None
        }
    }
}

/// An integer in `min..=max`.
fn in_range(value: usize, min: usize, max: usize, key: &Key, sink: &mut Sink<'_>) -> Option<usize> {
    if (min..=max).contains(&value) {
        Some(value)
    } else {
        sink.push(
            key,
            format!("expected an integer between {min} and {max}, found {value}"),
        );
        None
    }
}

/// `[rate_limits.<name>]`. Returns the policy when it is valid, and its key
/// whenever that could be read (routes check `user-id` keys against it).
fn build_rate_limit(
    name: &str,
    value: &Value,
    key: &Key,
    sink: &mut Sink<'_>,
) -> (Option<RateLimitPolicy>, Option<RateLimitKey>) {
    let before = sink.error_count();
    if let Err(message) = validate::check_policy_name(name) {
        sink.push(key, format!("invalid rate-limit policy name: {message}"));
    }
    let Value::Table(table) = value else {
        sink.push(
            key,
            format!(
                "expected a table ([rate_limits.{}]), found {}",
                crate::error::toml_key(name),
                describe(value)
            ),
        );
        return (None, None);
    };
    let parsed = table_section::<RawRateLimit>(table, key, sink);
    let raw = &parsed.value;

    let rate_key = key.field("rate");
    let rate = match raw.rate {
        Some(Count(n)) => positive_u32(n, &rate_key, sink),
        None if parsed.is_bad("rate") => None,
        None => {
            sink.push(
                &rate_key,
                "required key is missing (expected the requests allowed per `per`, e.g. 10)",
            );
            None
        }
    };
    let duration = |field: &str, value: Option<Duration>, sink: &mut Sink<'_>| {
        value.and_then(|d| {
            check_duration(d, false)
                .map_err(|message| sink.push(&key.field(field), message))
                .ok()
        })
    };
    // `None` when `per` is bad (reported): nothing is checked against it then.
    let period = match raw.per {
        None if parsed.is_bad("per") => None,
        None => Some(DEFAULT_RATE_PERIOD),
        Some(per) => duration("per", Some(per.0), sink),
    };
    let mut burst = raw
        .burst
        .and_then(|Count(n)| positive_u32(n, &key.field("burst"), sink));
    let penalty = duration("penalty", raw.penalty.map(|d| d.0), sink).filter(|penalty| {
        let ok = *penalty >= MIN_PENALTY;
        if !ok {
            sink.push(
                &key.field("penalty"),
                format!(
                    "expected at least \"{}\", found \"{}\"",
                    format_duration(MIN_PENALTY),
                    format_duration(*penalty)
                ),
            );
        }
        ok
    });
    // The limiter counts in whole nanoseconds and keeps a bucket's refill
    // time bounded: what it would refuse at activation is refused here.
    let mut rate = rate;
    if let (Some(n), Some(period)) = (rate, period) {
        let per = toml_string(&format_duration(period));
        let interval = period / n;
        if interval.is_zero() {
            sink.push(
                &rate_key,
                format!(
                    "expected at most {} requests per {per} (one per nanosecond), found {n}",
                    period.as_nanos()
                ),
            );
            rate = None;
        } else if let Some(b) = burst
            && interval
                .checked_mul(b)
                .is_none_or(|refill| refill > MAX_REFILL)
        {
            let most = MAX_REFILL.as_nanos() / interval.as_nanos();
            sink.push(
                &key.field("burst"),
                format!(
                    "expected at most {most} (at {n} per {per}, an empty bucket of a larger burst takes more than {MAX_REFILL_TEXT} to refill), found {b}"
                ),
            );
            burst = None;
        }
    }

    let policy_key = match &raw.key {
        None if parsed.is_bad("key") => None,
        None => Some(RateLimitKey::ClientIp {
            ipv4_prefix: validate::DEFAULT_IPV4_PREFIX,
            ipv6_prefix: validate::DEFAULT_IPV6_PREFIX,
        }),
        Some(text) => validate::rate_limit_key(text)
            .map_err(|message| sink.push(&key.field("key"), message))
            .ok(),
    };
    // The prefixes group client IPs; with any other key they mean nothing.
    let prefix = |field: &str, value: Option<Count>, max: u8, sink: &mut Sink<'_>| {
        let Count(n) = value?;
        let field_key = key.field(field);
        match &policy_key {
            Some(RateLimitKey::ClientIp { .. }) | None => {
                in_range(n, 1, usize::from(max), &field_key, sink)
                    .and_then(|n| u8::try_from(n).ok())
            }
            Some(other) => {
                let elsewhere = sink
                    .other_file(&field_key, &key.field("key"))
                    .map(|file| format!(", set in {file}"))
                    .unwrap_or_default();
                sink.push(
                    &field_key,
                    format!(
                        "only allowed with key = \"client-ip\" (this policy is keyed by {}{elsewhere})",
                        toml_string(&validate::rate_limit_key_text(other))
                    ),
                );
                None
            }
        }
    };
    let ipv4_prefix = prefix("ipv4_prefix", raw.ipv4_prefix, 32, sink);
    let ipv6_prefix = prefix("ipv6_prefix", raw.ipv6_prefix, 128, sink);
    let policy_key = policy_key.map(|policy_key| match policy_key {
        RateLimitKey::ClientIp {
            ipv4_prefix: v4,
            ipv6_prefix: v6,
        } => RateLimitKey::ClientIp {
            ipv4_prefix: ipv4_prefix.unwrap_or(v4),
            ipv6_prefix: ipv6_prefix.unwrap_or(v6),
        },
        other => other,
    });
    let max_keys = raw
        .max_keys
        .and_then(|Count(n)| in_range(n, 1, MAX_MAX_KEYS, &key.field("max_keys"), sink))
        .unwrap_or(DEFAULT_MAX_KEYS);

    let (Some(rate), Some(period), Some(counted_by), false) = (
        rate,
        period,
        policy_key.clone(),
        sink.error_count() > before,
    ) else {
        return (None, policy_key);
    };
    let policy = RateLimitPolicy {
        name: name.to_owned(),
        rate,
        period,
        burst: burst.unwrap_or(rate),
        penalty,
        key: counted_by,
        max_keys,
        headers_on_allowed: raw.headers.is_some_and(|h| h.0),
    };
    (Some(policy), policy_key)
}

fn build_route(
    name: &str,
    value: &Value,
    key: &Key,
    names: &Known<'_>,
    uses: &mut ModuleUses,
    sink: &mut Sink<'_>,
) -> Option<Route> {
    let Known {
        upstreams,
        policies,
        modules,
    } = *names;
    let before = sink.error_count();
    if let Err(message) = validate::check_name(name) {
        sink.push(key, format!("invalid route name: {message}"));
    }
    let Value::Table(table) = value else {
        sink.push(
            key,
            format!(
                "expected a table ([routes.{}]), found {}",
                crate::error::toml_key(name),
                describe(value)
            ),
        );
        return None;
    };
    let parsed = table_section::<RawRoute>(table, key, sink);
    let raw = &parsed.value;

    // hosts
    let hosts_key = key.field("hosts");
    let mut hosts: Vec<HostMatch> = Vec::new();
    let mut any_host = false;
    for (i, pattern) in raw.hosts.iter().flatten().enumerate() {
        match validate::host_pattern(pattern) {
            Ok(None) => any_host = true,
            Ok(Some(host)) if hosts.contains(&host) => {
                sink.push(
                    &hosts_key.index(i),
                    format!("{} is listed twice", toml_string(pattern)),
                );
            }
            Ok(Some(host)) => hosts.push(host),
            Err(message) => sink.push(&hosts_key.index(i), message),
        }
    }
    if any_host && !hosts.is_empty() {
        sink.push(
            &hosts_key,
            "\"*\" (any host) cannot be combined with other hosts",
        );
    }

    // path
    let path_key = key.field("path");
    let path_prefix = match &raw.path {
        Some(path) => validate::path_prefix(path)
            .map_err(|message| sink.push(&path_key, message))
            .ok(),
        None if parsed.is_bad("path") => None,
        None => {
            sink.push(
                &path_key,
                "required key is missing (expected a path prefix like \"/\" or \"/api\")",
            );
            None
        }
    };

    // target: exactly one of static, upstream, handler.
    let kinds: Vec<&str> = [
        ("static", raw.static_dir.is_some()),
        ("upstream", raw.upstream.is_some()),
        ("handler", raw.handler.is_some()),
    ]
    .into_iter()
    .filter_map(|(kind, set)| set.then_some(kind))
    .collect();
    let only = |kind: &str| kinds.as_slice() == [kind];
    let what = if only("static") {
        "this route is static"
    } else if only("upstream") {
        "this route uses an upstream"
    } else if only("handler") {
        "this route uses a handler"
    } else {
        "this route has no single target"
    };
    if raw.host_header.is_some() && !only("upstream") && kinds.len() == 1 {
        sink.push(
            &key.field("host_header"),
            format!("only allowed on upstream routes ({what})"),
        );
    }
    if raw.index.is_some() && !only("static") && kinds.len() == 1 {
        sink.push(
            &key.field("index"),
            format!("only allowed on static routes ({what})"),
        );
    }
    if raw.backends.is_some() && raw.handler.is_none() {
        sink.push(
            &key.field("backends"),
            format!("only allowed on handler routes, with handler = \"<module>\" ({what})"),
        );
    }
    let target = if kinds.len() > 1 {
        let found: Vec<String> = kinds.iter().map(|k| toml_string(k)).collect();
        let found = match found.split_last() {
            Some((last, init)) => format!("{} and {last}", init.join(", ")),
            None => String::new(),
        };
        sink.push(
            key,
            format!(
                "set only one of \"static\" (a directory), \"upstream\" (an upstream name) or \"handler\" (a module name); found {found}"
            ),
        );
        None
    } else if let Some(dir) = &raw.static_dir {
        let index = raw
            .index
            .clone()
            .unwrap_or_else(|| DEFAULT_INDEX.to_owned());
        if let Err(message) = validate::index_name(&index) {
            sink.push(&key.field("index"), message);
        }
        let static_key = key.field("static");
        if dir.is_empty() {
            sink.push(
                &static_key,
                "expected a directory path, found an empty string",
            );
            None
        } else {
            let root = validate::resolve(sink.base_dir(&static_key), dir);
            match sink.files().check_dir(&root) {
                Ok(()) => Some(RouteTarget::Static(StaticSite { root, index })),
                Err(message) => {
                    sink.push(&static_key, message);
                    None
                }
            }
        }
    } else if let Some(upstream) = &raw.upstream {
        if upstreams.contains(upstream.as_str()) {
            Some(RouteTarget::Upstream(upstream.clone()))
        } else {
            sink.push(
                &key.field("upstream"),
                unknown_upstream(upstream, upstreams),
            );
            None
        }
    } else if let Some(module) = &raw.handler {
        let handler_key = key.field("handler");
        let module_ok = modules.contains(module.as_str());
        if module_ok {
            uses.handler(module, handler_key.clone());
        } else {
            sink.push(&handler_key, unknown_module(module, modules));
        }
        let backends_key = key.field("backends");
        let mut backends: Vec<String> = Vec::new();
        let mut backends_ok = true;
        for (i, backend) in raw.backends.iter().flatten().enumerate() {
            let item_key = backends_key.index(i);
            if backends.contains(backend) {
                sink.push(
                    &item_key,
                    format!("{} is listed twice", toml_string(backend)),
                );
                backends_ok = false;
            } else if upstreams.contains(backend.as_str()) {
                backends.push(backend.clone());
            } else {
                sink.push(&item_key, unknown_upstream(backend, upstreams));
                backends_ok = false;
            }
        }
        (module_ok && backends_ok).then(|| {
            RouteTarget::Handler(HandlerTarget {
                module: module.clone(),
                backends,
            })
        })
    } else {
        if !parsed.is_bad("static") && !parsed.is_bad("upstream") && !parsed.is_bad("handler") {
            sink.push(
                key,
                "missing a target: set \"static\" (a directory), \"upstream\" (an upstream name) or \"handler\" (a module name)",
            );
        }
        None
    };

    // filters (any kind of route)
    let filters = build_filters(
        raw.filters.as_deref().unwrap_or_default(),
        &key.field("filters"),
        modules,
        uses,
        sink,
    );

    let host_header = match (&raw.host_header, &target) {
        (Some(value), Some(RouteTarget::Upstream(_))) => validate::host_header(value)
            .map_err(|message| sink.push(&key.field("host_header"), message))
            .unwrap_or(HostHeader::Preserve),
        _ => HostHeader::Preserve,
    };

    // response_headers
    let headers_key = key.field("response_headers");
    let mut response_headers = Vec::new();
    for (header, value) in raw.response_headers.iter().flatten() {
        let header_key = headers_key.field(header);
        let name = match validate::response_header_name(header) {
            Ok(name) => name,
            Err(message) => {
                sink.push(&header_key, message);
                continue;
            }
        };
        if response_headers.iter().any(|(n, _)| n == name) {
            sink.push(
                &header_key,
                format!(
                    "{} is set twice (header names ignore case)",
                    toml_string(name.as_str())
                ),
            );
            continue;
        }
        match validate::header_value(value) {
            Ok(value) => response_headers.push((name, value)),
            Err(message) => sink.push(&header_key, message),
        }
    }

    response_headers.sort_by(|(a, _), (b, _)| a.as_str().cmp(b.as_str()));

    // cache: upstream routes cache unless told not to; static routes (local
    // content) and handler routes (answered by their component every time)
    // never do.
    let cache_key = key.field("cache");
    let uncached = if only("static") {
        Some("static routes serve local content and are not cached")
    } else if only("handler") {
        Some("handler routes are answered by their component on every request and are not cached")
    } else {
        None
    };
    let refuse = |found: &str, sink: &mut Sink<'_>| {
        if let Some(why) = uncached {
            sink.push(
                &cache_key,
                format!("{why} (expected cache = false or no cache key, found {found})"),
            );
        }
    };
    let cache = match &raw.cache {
        Some(CacheSwitch::Enabled(false)) => None,
        None if uncached.is_some() => None,
        None => Some(RouteCache::default()),
        Some(CacheSwitch::Enabled(true)) => {
            refuse("cache = true", sink);
            Some(RouteCache::default())
        }
        Some(CacheSwitch::Table(table)) => {
            refuse("a table", sink);
            // Checked on uncached routes too, so every problem shows at once.
            build_route_cache(table, &cache_key, sink)
        }
    };

    // user_id and rate_limits (static routes too: they are checked before
    // anything else on the route).
    let user_id = raw.user_id.as_deref().and_then(|text| {
        validate::user_id_source(text)
            .map_err(|message| sink.push(&key.field("user_id"), message))
            .ok()
    });
    let has_user_id = raw.user_id.is_some() || parsed.is_bad("user_id");
    let limits_key = key.field("rate_limits");
    let mut rate_limits: Vec<String> = Vec::new();
    for (i, policy) in raw.rate_limits.iter().flatten().enumerate() {
        let item_key = limits_key.index(i);
        if rate_limits.contains(policy) {
            sink.push(
                &item_key,
                format!("{} is listed twice", toml_string(policy)),
            );
            continue;
        }
        match policies.get(policy) {
            None => {
                let known = if policies.is_empty() {
                    String::from("no rate-limit policies are defined")
                } else {
                    format!(
                        "known: {}",
                        policies
                            .keys()
                            .map(String::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                sink.push(
                    &item_key,
                    format!(
                        "no rate-limit policy named {} ({known})",
                        toml_string(policy)
                    ),
                );
            }
            Some(Some(RateLimitKey::UserId)) if !has_user_id => {
                let policy_key = Key::root().field("rate_limits").field(policy).field("key");
                let elsewhere = sink
                    .other_file(&item_key, &policy_key)
                    .map(|file| format!(" (set in {file})"))
                    .unwrap_or_default();
                sink.push(
                    &item_key,
                    format!(
                        "policy {} is keyed by user-id{elsewhere} but route {} has no user_id (set user_id = \"cookie:<name>\" or \"header:<name>\" on the route)",
                        toml_string(policy),
                        toml_string(name)
                    ),
                );
            }
            Some(_) => {}
        }
        rate_limits.push(policy.clone());
    }

    if sink.error_count() > before {
        return None;
    }
    Some(Route {
        name: name.to_owned(),
        hosts,
        path_prefix: path_prefix?,
        target: target?,
        host_header,
        response_headers,
        cache,
        rate_limits,
        user_id,
        filters,
    })
}

/// `[routes.<name>.cache]` as a table. `None` when it has errors (reported).
fn build_route_cache(table: &Table, key: &Key, sink: &mut Sink<'_>) -> Option<RouteCache> {
    let before = sink.error_count();
    let parsed = table_section::<RawRouteCache>(table, key, sink);
    let raw = &parsed.value;
    let defaults = RouteCache::default();

    let mode = raw.mode.map_or(defaults.mode, |m| m.0);
    let ttl_key = key.field("ttl");
    let ttl = match raw.ttl {
        Some(ttl) if ttl.0.is_zero() => {
            sink.push(
                &ttl_key,
                "expected a positive duration like \"5m\", found \"0s\" (to not cache, set cache = false)",
            );
            None
        }
        Some(ttl) if ttl.0 > MAX_TTL => {
            sink.push(
                &ttl_key,
                format!(
                    "expected at most \"{}\", found \"{}\"",
                    format_duration(MAX_TTL),
                    format_duration(ttl.0)
                ),
            );
            None
        }
        Some(ttl) => Some(ttl.0),
        None => {
            if mode == CacheMode::Override && !parsed.is_bad("ttl") {
                // Name the file that asked for override, maybe an overlay.
                sink.push_caused_by(
                    &ttl_key,
                    &key.field("mode"),
                    "required with mode = \"override\" (expected a duration like \"5m\" that replaces the origin's freshness)",
                );
            }
            None
        }
    };

    // ignore_query
    let query_key = key.field("ignore_query");
    let mut ignore_query: Vec<String> = Vec::new();
    let params = raw.ignore_query.as_deref().unwrap_or_default();
    for (i, param) in params.iter().enumerate() {
        if let Err(message) = validate::query_param(param) {
            sink.push(&query_key.index(i), message);
        } else if ignore_query.contains(param) {
            sink.push(
                &query_key.index(i),
                format!("{} is listed twice", toml_string(param)),
            );
        } else {
            ignore_query.push(param.clone());
        }
    }
    if params.len() > 1 && params.iter().any(|p| p == "*") {
        sink.push(
            &query_key,
            "\"*\" (the whole query) cannot be combined with parameter names",
        );
    }

    // key_headers
    let headers_key = key.field("key_headers");
    let mut key_headers: Vec<http::HeaderName> = Vec::new();
    for (i, header) in raw.key_headers.iter().flatten().enumerate() {
        match validate::request_header_name(header) {
            Ok(name) if key_headers.contains(&name) => sink.push(
                &headers_key.index(i),
                format!(
                    "{} is listed twice (header names ignore case)",
                    toml_string(name.as_str())
                ),
            ),
            Ok(name) => key_headers.push(name),
            Err(message) => sink.push(&headers_key.index(i), message),
        }
    }

    if sink.error_count() > before {
        return None;
    }
    Some(RouteCache {
        mode,
        ttl,
        class: raw.class.map_or(defaults.class, |c| c.0),
        ignore_query,
        sort_query: raw.sort_query.unwrap_or(defaults.sort_query),
        key_headers,
        store_set_cookie: raw.store_set_cookie.unwrap_or(defaults.store_set_cookie),
        forward_cdn_cache_control: raw
            .forward_cdn_cache_control
            .unwrap_or(defaults.forward_cdn_cache_control),
    })
}
