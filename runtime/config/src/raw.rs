//! Raw serde structs mirroring the TOML files, and section-by-section deserialization that reports every error.
//!
//! Every field is optional here (defaults and "required" are decided in
//! validation, which can say which key is missing). Leaf values that have a
//! syntax of their own — sizes, durations, socket addresses, CIDRs, enum
//! strings — are parsed by small `Deserialize` impls so that a bad value is
//! reported with its exact key path by `serde_path_to_error`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Visitor};
use toml::{Table, Value};

use crate::error::{Key, Seg, Sink, toml_string};
use crate::size::{DURATION_EXPECTED, SIZE_EXPECTED, parse_duration, parse_size};
use crate::types::{
    CacheMode, ClassChoice, ContentClassName, FailPolicy, IntegrityCheck, TlsVersion,
    UpstreamProtocol,
};

// ---------------------------------------------------------------------------
// Bootstrap file

/// `[node]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    pub region: Option<String>,
    pub edge_config: Option<String>,
    pub regions_dir: Option<String>,
    pub trusted_proxies: Option<Vec<Cidr>>,
    pub country_header: Option<String>,
    pub geoip_db: Option<String>,
}

/// One `[[listen]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListen {
    pub addr: Option<Addr>,
    pub tls: Option<bool>,
    pub proxy_protocol: Option<bool>,
    pub min_version: Option<RawTlsVersion>,
}

/// `[tls]` without its `certificates` array, which is read entry by entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub min_version: Option<RawTlsVersion>,
}

/// One `[[tls.certificates]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub server_names: Option<Vec<String>>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Option<Addr>,
    pub token: Option<String>,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub max_header_bytes: Option<ByteSize>,
    pub max_headers: Option<Count>,
    pub max_body_bytes: Option<ByteSize>,
    pub header_read_timeout: Option<HumanDuration>,
    pub idle_timeout: Option<HumanDuration>,
    pub max_connections: Option<Count>,
    pub shutdown_grace: Option<HumanDuration>,
}

/// `[cache]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    pub memory: Option<ByteSize>,
    pub max_object_size: Option<ByteSize>,
    pub integrity: Option<Integrity>,
    pub scrub_per_second: Option<Count>,
    pub coalesce_timeout: Option<HumanDuration>,
    pub coalesce_max_waiters: Option<Count>,
}

/// `[wasm]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWasm {
    pub artifact_cache: Option<ArtifactCache>,
    pub max_instances: Option<Count>,
    pub max_memory: Option<ByteSize>,
}

/// `[bundles]`. Present means bundle mode; `origins`, `environment` and
/// `root_keys` are required, which validation reports.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBundles {
    pub origins: Option<Vec<String>>,
    pub environment: Option<String>,
    pub root_keys: Option<Vec<String>>,
    pub root_threshold: Option<Count>,
    pub state_dir: Option<String>,
    pub poll_interval: Option<HumanDuration>,
    pub fetch_timeout: Option<HumanDuration>,
    pub max_manifest: Option<ByteSize>,
    pub max_bundle: Option<ByteSize>,
    pub keep: Option<Count>,
    pub health_grace: Option<HumanDuration>,
}

// ---------------------------------------------------------------------------
// Edge config and region overlays

/// `[region]`, only in overlays.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRegion {
    pub id: Option<String>,
    pub name: Option<String>,
    pub jurisdiction: Option<String>,
}

/// One `[upstreams.<name>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub targets: Option<Vec<String>>,
    pub protocol: Option<RawProtocol>,
    pub connect_timeout: Option<HumanDuration>,
    pub first_byte_timeout: Option<HumanDuration>,
    pub total_timeout: Option<HumanDuration>,
    pub pool_idle_timeout: Option<HumanDuration>,
    pub pool_max_idle: Option<Count>,
    pub ca_file: Option<String>,
    pub server_name: Option<String>,
}

/// One `[routes.<name>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub hosts: Option<Vec<String>>,
    pub path: Option<String>,
    #[serde(rename = "static")]
    pub static_dir: Option<String>,
    pub index: Option<String>,
    pub upstream: Option<String>,
    pub host_header: Option<String>,
    pub response_headers: Option<BTreeMap<String, String>>,
    pub cache: Option<CacheSwitch>,
    pub rate_limits: Option<Vec<String>>,
    pub user_id: Option<String>,
    /// Module names or filter tables, read entry by entry.
    pub filters: Option<Vec<Value>>,
    pub handler: Option<String>,
    pub backends: Option<Vec<String>>,
}

/// One `[modules.<name>]`. `config` is kept as TOML: its values are
/// converted to strings in validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModule {
    pub path: Option<String>,
    pub cpu_deadline: Option<HumanDuration>,
    pub wall_timeout: Option<HumanDuration>,
    pub memory: Option<ByteSize>,
    pub rate_limits: Option<Vec<String>>,
    pub config: Option<Table>,
}

/// One entry of a route's `filters` written as a table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFilter {
    pub module: Option<String>,
    pub fail: Option<RawFailPolicy>,
    pub response_body: Option<bool>,
    pub max_body: Option<ByteSize>,
}

/// One `[rate_limits.<name>]`. `key` and the ranges are checked in
/// validation, where the other keys of the policy are known.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub rate: Option<Count>,
    pub per: Option<HumanDuration>,
    pub burst: Option<Count>,
    pub penalty: Option<HumanDuration>,
    pub key: Option<String>,
    pub ipv4_prefix: Option<Count>,
    pub ipv6_prefix: Option<Count>,
    pub max_keys: Option<Count>,
    pub headers: Option<RawRateLimitHeaders>,
}

/// `[routes.<name>.cache]`, read on its own (see [`CacheSwitch`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouteCache {
    pub mode: Option<RawCacheMode>,
    pub ttl: Option<HumanDuration>,
    pub class: Option<RawClass>,
    pub ignore_query: Option<Vec<String>>,
    pub sort_query: Option<bool>,
    pub key_headers: Option<Vec<String>>,
    pub store_set_cookie: Option<bool>,
    pub forward_cdn_cache_control: Option<bool>,
}

// ---------------------------------------------------------------------------
// Leaf values

/// A byte size: a non-negative integer or a string such as `"16KiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SIZE_EXPECTED)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("expected {SIZE_EXPECTED}, found {v}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A humantime duration string such as `"10s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION_EXPECTED)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "expected {DURATION_EXPECTED}, found the integer {v} (a duration needs a unit, e.g. \"{v}s\")"
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A count: a non-negative integer that fits `usize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Count(pub usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                usize::try_from(v)
                    .map(Count)
                    .map_err(|_| E::custom(format!("expected a non-negative integer, found {v}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                usize::try_from(v)
                    .map(Count)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A route's `cache`: a boolean, or a table kept as TOML so that it can be
/// read as a section of its own and every bad key in it reported.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CacheSwitch {
    Enabled(bool),
    Table(Table),
}

impl<'de> Deserialize<'de> for CacheSwitch {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CacheSwitch;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean or a table")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<CacheSwitch, E> {
                Ok(CacheSwitch::Enabled(v))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<CacheSwitch, A::Error> {
                Table::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(CacheSwitch::Table)
            }
        }
        deserializer.deserialize_any(V)
    }
}

pub(crate) const ARTIFACT_CACHE_EXPECTED: &str =
    "a directory path, or false to compile modules at every start";

/// `[wasm] artifact_cache`: a path, or `false` for no artifact cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ArtifactCache {
    Path(String),
    Off,
}

impl<'de> Deserialize<'de> for ArtifactCache {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ArtifactCache;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(ARTIFACT_CACHE_EXPECTED)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ArtifactCache, E> {
                if v {
                    Err(E::custom(format!(
                        "expected {ARTIFACT_CACHE_EXPECTED}, found the boolean true (leave the key out for the default directory)"
                    )))
                } else {
                    Ok(ArtifactCache::Off)
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ArtifactCache, E> {
                if v.is_empty() {
                    Err(E::custom(format!(
                        "expected {ARTIFACT_CACHE_EXPECTED}, found an empty string"
                    )))
                } else {
                    Ok(ArtifactCache::Path(v.to_owned()))
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}

pub(crate) const INTEGRITY_EXPECTED: &str =
    r#""always", a sample like "1/100" (verify one hit in 100), or a positive integer"#;

/// `[cache] integrity`: `"always"`, `"1/N"`, or the integer `N`, with `N ≥ 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Integrity(pub IntegrityCheck);

impl<'de> Deserialize<'de> for Integrity {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Integrity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(INTEGRITY_EXPECTED)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Integrity, E> {
                sample(u64::try_from(v).ok())
                    .ok_or_else(|| E::custom(format!("expected {INTEGRITY_EXPECTED}, found {v}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Integrity, E> {
                sample(Some(v))
                    .ok_or_else(|| E::custom(format!("expected {INTEGRITY_EXPECTED}, found {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Integrity, E> {
                if v == "always" {
                    return Ok(Integrity(IntegrityCheck::Always));
                }
                // Digits only: `u64::from_str` would also take a sign.
                let n = v
                    .strip_prefix("1/")
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|n| n.parse::<u64>().ok());
                sample(n).ok_or_else(|| {
                    E::custom(format!(
                        "expected {INTEGRITY_EXPECTED}, found {}",
                        toml_string(v)
                    ))
                })
            }
        }
        /// One hit in `n`, for `1 ≤ n ≤ u32::MAX`.
        fn sample(n: Option<u64>) -> Option<Integrity> {
            n.filter(|n| *n >= 1)
                .and_then(|n| u32::try_from(n).ok())
                .map(|n| Integrity(IntegrityCheck::Sample(n)))
        }
        deserializer.deserialize_any(V)
    }
}

pub(crate) const ADDR_EXPECTED: &str = r#"a socket address like "127.0.0.1:8080" or "[::1]:8080""#;

/// A socket address string such as `"127.0.0.1:8080"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Addr(pub SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Addr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(ADDR_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Addr, E> {
                v.parse().map(Addr).map_err(|_| {
                    E::custom(format!(
                        "expected {ADDR_EXPECTED}, found {}",
                        toml_string(v)
                    ))
                })
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A network in CIDR notation; a bare address means that one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr(pub IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str = r#"a network like "10.0.0.0/8" or an address like "::1""#;
        impl Visitor<'_> for V {
            type Value = Cidr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Cidr, E> {
                if let Ok(net) = v.parse::<IpNet>() {
                    // `10.1.2.3/8` is most likely a typo; insist on the network address.
                    if net.trunc() != net {
                        return Err(E::custom(format!(
                            "{} has host bits set (did you mean \"{}\"?)",
                            toml_string(v),
                            net.trunc()
                        )));
                    }
                    return Ok(Cidr(net));
                }
                v.parse::<IpAddr>()
                    .map(|ip| Cidr(IpNet::from(ip)))
                    .map_err(|_| {
                        E::custom(format!("expected {EXPECTED}, found {}", toml_string(v)))
                    })
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Implements `Deserialize` for a string enum with a clear message listing the choices.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident($inner:ty) { $($text:literal => $value:expr),+ $(,)? } hint: $hint:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) struct $name(pub $inner);

        impl $name {
            pub(crate) const CHOICES: &[&str] = &[$($text),+];
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(&one_of($name::CHOICES))
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        match v {
                            $($text => Ok($name($value)),)+
                            _ => Err(E::custom(format!(
                                "expected {}, found {}",
                                one_of($name::CHOICES),
                                toml_string(v)
                            ))),
                        }
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$name, E> {
                        Err(E::custom(format!(
                            "expected {}, found the number {v}{}",
                            one_of($name::CHOICES),
                            $hint
                        )))
                    }
                }
                deserializer.deserialize_any(V)
            }
        }
    };
}

string_enum! {
    /// `"1.2"` or `"1.3"`.
    RawTlsVersion(TlsVersion) { "1.2" => TlsVersion::Tls12, "1.3" => TlsVersion::Tls13 }
    hint: " (write the version as a quoted string)"
}

string_enum! {
    /// `"http1"` or `"h2"`.
    RawProtocol(UpstreamProtocol) { "http1" => UpstreamProtocol::Http1, "h2" => UpstreamProtocol::Http2 }
    hint: ""
}

string_enum! {
    /// `"origin"` or `"override"`.
    RawCacheMode(CacheMode) { "origin" => CacheMode::Origin, "override" => CacheMode::Override }
    hint: ""
}

string_enum! {
    /// `"auto"`, `"none"`, or a content class name.
    RawClass(ClassChoice) {
        "auto" => ClassChoice::Auto,
        "none" => ClassChoice::Disabled,
        "image" => ClassChoice::Fixed(ContentClassName::Image),
        "fingerprinted" => ClassChoice::Fixed(ContentClassName::Fingerprinted),
        "font" => ClassChoice::Fixed(ContentClassName::Font),
        "video" => ClassChoice::Fixed(ContentClassName::Video),
        "api" => ClassChoice::Fixed(ContentClassName::Api),
        "per-user" => ClassChoice::Fixed(ContentClassName::PerUser),
        "realtime" => ClassChoice::Fixed(ContentClassName::RealTime),
    }
    hint: ""
}

string_enum! {
    /// `"limited"` (RateLimit headers only on 429) or `"always"`: whether
    /// allowed responses carry them too.
    RawRateLimitHeaders(bool) { "limited" => false, "always" => true }
    hint: ""
}

string_enum! {
    /// `"closed"` (answer 503) or `"open"` (skip the module).
    RawFailPolicy(FailPolicy) { "closed" => FailPolicy::Closed, "open" => FailPolicy::Open }
    hint: ""
}

/// `one of "a", "b"` / `"a"`.
pub(crate) fn one_of(choices: &[&str]) -> String {
    let quoted: Vec<String> = choices.iter().map(|c| toml_string(c)).collect();
    match quoted.as_slice() {
        [only] => only.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
        [] => String::from("nothing"),
    }
}

// ---------------------------------------------------------------------------
// Section deserialization

/// A deserialized section and the keys of it that were bad (reported, and
/// left at their defaults in `value` so validation can go on).
#[derive(Debug)]
pub(crate) struct Parsed<T> {
    pub value: T,
    bad: BTreeSet<String>,
}

impl<T> Parsed<T> {
    /// Whether `key` of this section had an error already reported.
    pub(crate) fn is_bad(&self, key: &str) -> bool {
        self.bad.contains(key)
    }
}

/// Deserializes the section at `key`. Absent means all defaults. Every bad
/// key of the section is reported; `None` only when the section is not a
/// table at all.
pub(crate) fn section<T: DeserializeOwned + Default>(
    value: Option<&Value>,
    key: &Key,
    sink: &mut Sink<'_>,
) -> Option<Parsed<T>> {
    match value {
        None => Some(Parsed {
            value: T::default(),
            bad: BTreeSet::new(),
        }),
        Some(Value::Table(table)) => Some(table_section(table, key, sink)),
        Some(other) => {
            sink.push(key, format!("expected a table, found {}", describe(other)));
            None
        }
    }
}

/// As [`section`], for a table that is known to be present.
pub(crate) fn table_section<T: DeserializeOwned + Default>(
    table: &Table,
    key: &Key,
    sink: &mut Sink<'_>,
) -> Parsed<T> {
    let first = match serde_path_to_error::deserialize::<_, T>(Value::Table(table.clone())) {
        Ok(value) => {
            return Parsed {
                value,
                bad: BTreeSet::new(),
            };
        }
        Err(error) => error,
    };
    // Retry each key alone: every field is optional, so a one-key table
    // fails exactly when that key is bad. This reports all of them.
    let mut bad = BTreeSet::new();
    for (name, value) in table {
        let single = Table::from_iter([(name.clone(), value.clone())]);
        if let Err(error) = serde_path_to_error::deserialize::<_, T>(Value::Table(single)) {
            report(&error, key, sink);
            bad.insert(name.clone());
        }
    }
    let good: Table = table
        .iter()
        .filter(|(name, _)| !bad.contains(*name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let value = match serde_path_to_error::deserialize::<_, T>(Value::Table(good)) {
        Ok(value) if !bad.is_empty() => value,
        // Only a combination of keys is wrong (or nothing was singled out):
        // report the original error and treat the whole section as bad.
        _ => {
            report(&first, key, sink);
            bad.extend(table.keys().cloned());
            T::default()
        }
    };
    Parsed { value, bad }
}

/// Reports keys of `table` not in `allowed`. `hint` explains where such keys belong.
pub(crate) fn check_keys(
    table: &Table,
    allowed: &[&str],
    parent: &Key,
    hint: &dyn Fn(&str) -> Option<&'static str>,
    sink: &mut Sink<'_>,
) {
    for name in table.keys() {
        if allowed.contains(&name.as_str()) {
            continue;
        }
        let mut message = format!(
            "unknown key {} (expected one of: {})",
            toml_string(name),
            allowed.join(", ")
        );
        if let Some(hint) = hint(name) {
            message.push_str("; ");
            message.push_str(hint);
        }
        sink.push(&parent.field(name), message);
    }
}

fn report(error: &serde_path_to_error::Error<toml::de::Error>, section: &Key, sink: &mut Sink<'_>) {
    let mut key = section.clone();
    for segment in error.path().iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => key.push(Seg::Index(*index)),
            serde_path_to_error::Segment::Map { key: name } => key.push(Seg::Name(name.clone())),
            serde_path_to_error::Segment::Enum { variant } => key.push(Seg::Name(variant.clone())),
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    let raw = error.inner().message();
    let (message, unknown) = humanize(raw);
    if let Some(field) = unknown
        && key.last_name() != Some(field.as_str())
    {
        key.push(Seg::Name(field));
    }
    sink.push(&key, message);
}

/// Rewrites serde's messages into "expected X, found Y" form. Also returns
/// the field name of an unknown-field error, to complete the key path.
pub(crate) fn humanize(message: &str) -> (String, Option<String>) {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once('`')
    {
        let names = backticked(expected);
        let hint = if names.is_empty() {
            String::from("this table takes no keys")
        } else {
            format!("expected one of: {}", names.join(", "))
        };
        return (
            format!("unknown key {} ({hint})", toml_string(field)),
            Some(field.to_owned()),
        );
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.split_once(", expected ")
        {
            let expected = match expected {
                "a sequence" => "an array",
                "a map" => "a table",
                other => other,
            };
            return (
                format!("expected {expected}, found {}", found_text(found)),
                None,
            );
        }
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.trim_end_matches('`');
        return (
            format!("required key {} is missing", toml_string(field)),
            None,
        );
    }
    (message.to_owned(), None)
}

/// serde's "found" wording in TOML terms.
fn found_text(found: &str) -> String {
    let plain = found.replace('`', "");
    for (serde_word, ours) in [
        ("integer ", "the integer "),
        ("boolean ", "the boolean "),
        ("floating point ", "the number "),
        ("string ", "the string "),
    ] {
        if let Some(rest) = plain.strip_prefix(serde_word) {
            return format!("{ours}{rest}");
        }
    }
    match plain.as_str() {
        "sequence" => String::from("an array"),
        "map" => String::from("a table"),
        _ => plain,
    }
}

/// The names in "`a`, `b`" in order.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// A short description of a TOML value for "found ..." messages.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {}", toml_string(s)),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Float(x) => format!("the number {x}"),
        Value::Boolean(b) => format!("the boolean {b}"),
        Value::Datetime(d) => format!("the date-time {d}"),
        Value::Array(_) => String::from("an array"),
        Value::Table(_) => String::from("a table"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FileInfo;
    use crate::merge::Origins;

    /// Deserializes `text` as the section `section` of type `T` and returns
    /// the reported errors as "key: message" lines.
    fn errors_of<T: DeserializeOwned + Default + fmt::Debug>(
        section_name: &str,
        text: &str,
    ) -> Vec<String> {
        let table: Table = text.parse().unwrap();
        let origins = Origins::single(FileInfo {
            name: "f.toml".into(),
            base_dir: "/".into(),
        });
        let mut sink = Sink::new(&origins);
        let value = Value::Table(table);
        let key =
            section_name
                .split('.')
                .fold(Key::root(), |key, name| match name.split_once('[') {
                    Some((name, index)) => key
                        .field(name)
                        .index(index.trim_end_matches(']').parse().unwrap()),
                    None => key.field(name),
                });
        let result = section::<T>(Some(&value), &key, &mut sink).unwrap();
        let errors: Vec<String> = sink
            .into_errors()
            .into_iter()
            .map(|e| format!("{}: {}", e.key, e.message))
            .collect();
        assert_eq!(result.bad.len(), errors.len(), "{errors:?}");
        errors
    }

    fn check<T: DeserializeOwned + Default + fmt::Debug>(
        section_name: &str,
        text: &str,
        expected: &[&str],
    ) {
        assert_eq!(
            errors_of::<T>(section_name, text),
            expected,
            "input {text:?}"
        );
    }

    #[test]
    fn section_errors() {
        check::<RawLimits>("limits", "max_headers = 100\nidle_timeout = '5s'", &[]);
        check::<RawLimits>(
            "limits",
            "idle_timeout = 'fast'\nmax_headers = -1\nbogus = 1",
            &[
                r#"limits.bogus: unknown key "bogus" (expected one of: max_header_bytes, max_headers, max_body_bytes, header_read_timeout, idle_timeout, max_connections, shutdown_grace)"#,
                r#"limits.idle_timeout: expected a duration like "2s", found "fast""#,
                "limits.max_headers: expected a non-negative integer, found -1",
            ],
        );
        check::<RawLimits>(
            "limits",
            "idle_timeout = 10",
            &[
                r#"limits.idle_timeout: expected a duration like "2s", found the integer 10 (a duration needs a unit, e.g. "10s")"#,
            ],
        );
        check::<RawLimits>(
            "limits",
            "max_body_bytes = true",
            &[
                r#"limits.max_body_bytes: expected a byte size like "16KiB" (an integer followed by B, KB, KiB, MB, MiB, GB or GiB), found the boolean true"#,
            ],
        );
        check::<RawRoute>(
            "routes.a",
            "hosts = ['a', 5]",
            &[r#"routes.a.hosts[1]: expected a string, found the integer 5"#],
        );
        check::<RawRoute>(
            "routes.a",
            "path = ['/']",
            &[r#"routes.a.path: expected a string, found an array"#],
        );
        check::<RawRoute>(
            "routes.a",
            "[response_headers]\nx-a = 1",
            &[r#"routes.a.response_headers.x-a: expected a string, found the integer 1"#],
        );
        check::<RawUpstream>(
            "upstreams.o",
            "protocol = 'h3'",
            &[r#"upstreams.o.protocol: expected "http1" or "h2", found "h3""#],
        );
        check::<RawListen>(
            "listen[0]",
            "min_version = 1.3\naddr = 'nowhere'",
            &[
                r#"listen[0].addr: expected a socket address like "127.0.0.1:8080" or "[::1]:8080", found "nowhere""#,
                r#"listen[0].min_version: expected "1.2" or "1.3", found the number 1.3 (write the version as a quoted string)"#,
            ],
        );
        check::<RawNode>(
            "node",
            "trusted_proxies = ['10.1.2.3/8', 'x', '::1']",
            &[
                r#"node.trusted_proxies[0]: "10.1.2.3/8" has host bits set (did you mean "10.0.0.0/8"?)"#,
            ],
        );
        check::<RawNode>(
            "node",
            "trusted_proxies = ['x']",
            &[
                r#"node.trusted_proxies[0]: expected a network like "10.0.0.0/8" or an address like "::1", found "x""#,
            ],
        );
    }

    #[test]
    fn cache_section_errors() {
        check::<RawCache>(
            "cache",
            "integrity = 'always'\nmemory = '1GiB'\nscrub_per_second = 0",
            &[],
        );
        for good in [
            "integrity = '1/1'",
            "integrity = 1",
            "integrity = 4294967295",
        ] {
            check::<RawCache>("cache", good, &[]);
        }
        let expected = r#"cache.integrity: expected "always", a sample like "1/100" (verify one hit in 100), or a positive integer, found"#;
        for (input, found) in [
            ("integrity = 0", "0"),
            ("integrity = -5", "-5"),
            ("integrity = 4294967296", "4294967296"),
            ("integrity = '1/0'", r#""1/0""#),
            ("integrity = '1/+5'", r#""1/+5""#),
            ("integrity = '1/'", r#""1/""#),
            ("integrity = '2/100'", r#""2/100""#),
            ("integrity = '100'", r#""100""#),
            ("integrity = 'Always'", r#""Always""#),
            ("integrity = '1/99999999999'", r#""1/99999999999""#),
        ] {
            check::<RawCache>("cache", input, &[&format!("{expected} {found}")]);
        }
        check::<RawCache>(
            "cache",
            "integrity = 1.5",
            &[&format!("{expected} the number 1.5")],
        );
        check::<RawRoute>(
            "routes.a",
            "cache = 1",
            &[r#"routes.a.cache: expected a boolean or a table, found the integer 1"#],
        );
        check::<RawRoute>("routes.a", "cache = false", &[]);
        check::<RawRoute>("routes.a", "[cache]\nanything = 'checked later'", &[]);
        check::<RawRouteCache>(
            "routes.a.cache",
            "mode = 'Origin'\nclass = 'images'\nkey_headers = 'x-a'",
            &[
                r#"routes.a.cache.class: expected "auto", "none", "image", "fingerprinted", "font", "video", "api", "per-user" or "realtime", found "images""#,
                r#"routes.a.cache.key_headers: expected an array, found the string "x-a""#,
                r#"routes.a.cache.mode: expected "origin" or "override", found "Origin""#,
            ],
        );
    }

    #[test]
    fn rate_limit_section_errors() {
        check::<RawRateLimit>(
            "rate_limits.a",
            "rate = 10\nper = '1m'\nburst = 0\npenalty = '30s'\nkey = 'anything, checked later'\nipv4_prefix = 99\nipv6_prefix = 0\nmax_keys = 0\nheaders = 'always'",
            &[],
        );
        check::<RawRateLimit>("rate_limits.a", "headers = 'limited'", &[]);
        check::<RawRateLimit>(
            "rate_limits.a",
            "rate = 1.5\nper = 1\nburst = -2\nkey = ['client-ip']\nheaders = true\nlimit = 5",
            &[
                r#"rate_limits.a.burst: expected a non-negative integer, found -2"#,
                r#"rate_limits.a.headers: expected "limited" or "always", found the boolean true"#,
                r#"rate_limits.a.key: expected a string, found an array"#,
                r#"rate_limits.a.limit: unknown key "limit" (expected one of: rate, per, burst, penalty, key, ipv4_prefix, ipv6_prefix, max_keys, headers)"#,
                r#"rate_limits.a.per: expected a duration like "2s", found the integer 1 (a duration needs a unit, e.g. "1s")"#,
                r#"rate_limits.a.rate: expected a non-negative integer, found the number 1.5"#,
            ],
        );
        check::<RawRateLimit>(
            "rate_limits.a",
            "headers = 'Always'",
            &[r#"rate_limits.a.headers: expected "limited" or "always", found "Always""#],
        );
        check::<RawRoute>(
            "routes.a",
            "rate_limits = ['a', 'b']\nuser_id = 'checked later'",
            &[],
        );
        check::<RawRoute>(
            "routes.a",
            "rate_limits = ['a', {}]\nuser_id = ['cookie:uid']",
            &[
                r#"routes.a.rate_limits[1]: expected a string, found a table"#,
                r#"routes.a.user_id: expected a string, found an array"#,
            ],
        );
    }

    #[test]
    fn wasm_section_errors() {
        check::<RawWasm>(
            "wasm",
            "artifact_cache = 'x'\nmax_instances = 5\nmax_memory = '1GiB'",
            &[],
        );
        check::<RawWasm>("wasm", "artifact_cache = false", &[]);
        check::<RawWasm>(
            "wasm",
            "artifact_cache = true\nmax_instances = '5'\nmax_memory = 1.5",
            &[
                r#"wasm.artifact_cache: expected a directory path, or false to compile modules at every start, found the boolean true (leave the key out for the default directory)"#,
                r#"wasm.max_instances: expected a non-negative integer, found the string "5""#,
                r#"wasm.max_memory: expected a byte size like "16KiB" (an integer followed by B, KB, KiB, MB, MiB, GB or GiB), found the number 1.5"#,
            ],
        );
        check::<RawWasm>(
            "wasm",
            "artifact_cache = ''",
            &[
                r#"wasm.artifact_cache: expected a directory path, or false to compile modules at every start, found an empty string"#,
            ],
        );
        check::<RawWasm>(
            "wasm",
            "artifact_cache = 3",
            &[
                r#"wasm.artifact_cache: expected a directory path, or false to compile modules at every start, found the integer 3"#,
            ],
        );
    }

    #[test]
    fn module_and_filter_section_errors() {
        check::<RawModule>(
            "modules.m",
            "path = 'm.wasm'\ncpu_deadline = '5ms'\nwall_timeout = '1s'\nmemory = '8MiB'\nrate_limits = ['a']\n[config]\na = 1\nb = [{ c = 'd' }]",
            &[],
        );
        check::<RawModule>(
            "modules.m",
            "path = ['m.wasm']\nrate_limits = 'a'\nconfig = 1\nmemory = '1 MiB'",
            &[
                r#"modules.m.config: expected a table, found the integer 1"#,
                r#"modules.m.memory: expected a byte size like "16KiB" (an integer followed by B, KB, KiB, MB, MiB, GB or GiB), found "1 MiB""#,
                r#"modules.m.path: expected a string, found an array"#,
                r#"modules.m.rate_limits: expected an array, found the string "a""#,
            ],
        );
        check::<RawRoute>(
            "routes.a",
            "filters = ['a', { module = 'b' }, 3]\nhandler = 'h'\nbackends = ['x']",
            &[],
        );
        check::<RawRoute>(
            "routes.a",
            "filters = { module = 'b' }\nhandler = ['h']\nbackends = 'x'",
            &[
                r#"routes.a.backends: expected an array, found the string "x""#,
                r#"routes.a.filters: expected an array, found a table"#,
                r#"routes.a.handler: expected a string, found an array"#,
            ],
        );
        check::<RawFilter>(
            "routes.a.filters[0]",
            "module = 'm'\nfail = 'open'\nresponse_body = true\nmax_body = '2MiB'",
            &[],
        );
        check::<RawFilter>(
            "routes.a.filters[1]",
            "module = 1\nfail = 'Open'\nresponse_body = 'yes'\nmax_body = -1\nretries = 2",
            &[
                r#"routes.a.filters[1].fail: expected "closed" or "open", found "Open""#,
                r#"routes.a.filters[1].max_body: expected a byte size like "16KiB" (an integer followed by B, KB, KiB, MB, MiB, GB or GiB), found -1"#,
                r#"routes.a.filters[1].module: expected a string, found the integer 1"#,
                r#"routes.a.filters[1].response_body: expected a boolean, found the string "yes""#,
                r#"routes.a.filters[1].retries: unknown key "retries" (expected one of: module, fail, response_body, max_body)"#,
            ],
        );
    }

    #[test]
    fn non_table_section() {
        assert_eq!(
            errors_of::<RawAdmin>("admin", "x = 1").len(),
            1,
            "unknown key in admin is reported"
        );
        let origins = Origins::single(FileInfo {
            name: "f.toml".into(),
            base_dir: "/".into(),
        });
        let mut sink = Sink::new(&origins);
        let value = Value::Integer(3);
        assert!(
            section::<RawAdmin>(Some(&value), &Key::root().field("admin"), &mut sink).is_none()
        );
        let errors = sink.into_errors();
        assert_eq!(
            errors[0].to_string(),
            "f.toml: admin: expected a table, found the integer 3"
        );
    }
}
