//! `ratelimit`: per-tier rate limits for an API, counted by the node's own
//! limiters (the `rate-limit` interface), answered with `429` and the IETF
//! `RateLimit` headers.
//!
//! # Who is counted, under which policy
//!
//! * A request whose API key header (`api_key_header`, default `x-api-key`)
//!   carries a key that the key table (`keys`) maps to a tier, or that a
//!   tier's `keys` array lists, is counted under **that tier's policy, per
//!   API key**. The key table is asked first; the tiers' arrays only for a
//!   key it does not name.
//! * Every other request — no key, an empty key, a key neither the key
//!   table nor a tier lists — is **anonymous**: counted under the
//!   `anonymous` policy **per client IP** (IPv4 addresses one by one, IPv6
//!   grouped by `/64`, as the node's native `client-ip` key does). Without
//!   an `anonymous` entry, anonymous requests are not limited by this
//!   module.
//! * A request whose path lies under one of `exempt` is never counted
//!   (health checks). Matching is by whole segments: `/api/health` covers
//!   `/api/health` and `/api/health/db`, not `/api/healthz`; a prefix ending
//!   in `/` covers everything that starts with it. A path with `.` or `..`
//!   segments, `%` escapes or `\` is never exempt, so `/api/health/../orders`
//!   cannot dodge the limit.
//!
//! Every request costs 1. The bucket keys are the node's own (`h:<key>` as
//! for a native policy with `key = "header:<name>"`, `ip:<address>` as for
//! `key = "client-ip"`), so a native route limit using the same policy shares
//! the buckets. Counters are the node's: per node, shared by every instance.
//!
//! # Config
//!
//! The node hands `[modules.<name>.config]` over as strings: numbers as
//! their text, arrays as compact JSON, and tables flattened into dotted keys
//! (`[modules.ratelimit.config.tiers.pro]` with `policy = "api-pro"` is the
//! key `tiers.pro.policy`). The keys read here:
//!
//! | key | value | default |
//! |---|---|---|
//! | `tiers.<tier>.policy`, `.keys`, `.quota`, `.window` | one tier per `<tier>` (below) | no tiers: every request is anonymous |
//! | `keys.<api-key>` | the key table: the name of the tier `<api-key>` belongs to (below) | no key table: the tiers' `keys` arrays decide |
//! | `anonymous.policy`, `.quota`, `.window` | the policy for requests without a known key (below) | no `anonymous.policy`: anonymous requests are not limited |
//! | `api_key_header` | the request header carrying the API key | `x-api-key` |
//! | `exempt` | path prefixes never limited: array (or comma-separated text) | none |
//! | `headers` | `"limited"`: RateLimit headers on 429s only; `"always"`: on allowed responses too | `"limited"` |
//! | `ipv4_prefix`, `ipv6_prefix` | group anonymous clients by network, as the native policies do (1–32, 1–128) | `32`, `64` |
//!
//! In a tier (or `anonymous`):
//!
//! * `policy`: the node's `[rate_limits.<name>]` policy to check. The module
//!   must be granted it (`[modules.<name>] rate_limits`).
//! * `keys`: the API keys of the tier, an array of strings (tiers only). A
//!   key should be listed once; if several tiers list it, the first tier by
//!   name wins. Every request with a key the key table does not name reads
//!   and parses every tier's array, so keep them to a few dozen keys.
//! * `quota`, `window`: what `RateLimit-Policy` announces (`q` and `w`),
//!   whole numbers. The module cannot read the policy's settings, so state
//!   them: `quota` is the policy's `burst` and `window` the seconds an empty
//!   bucket takes to refill (`per / rate × burst`, rounded up) — what the
//!   node announces for the same policy natively. Without both,
//!   `RateLimit-Policy` is left out.
//!
//! The key table, `[modules.ratelimit.config.keys]`, holds one line per API
//! key, `"<api-key>" = "<tier>"` (the key `keys.<api-key>`). Use it for
//! more than a few dozen keys: a request reads its own key's line and its
//! tier's `policy`, `quota` and `window`, so its cost does not grow with the
//! number of keys, while the tiers' `keys` arrays are parsed on every
//! request. Quote the API key: it may contain dots (`"k.1" = "pro"` is
//! `keys.k.1`, and the API key `k.1` finds it). A key in the table is
//! counted under the tier it names even if a tier's array lists it too.
//!
//! In `edge-config/edge.toml`:
//!
//! ```toml
//! [rate_limits.api-anon]
//! rate = 10                 # 10/s per client IP, bursts of 20: w = 0.1 s × 20 = 2
//! burst = 20
//!
//! [rate_limits.api-free]
//! rate = 60
//! per = "1m"                # 1/s per key, bursts of 10: w = 1 s × 10 = 10
//! burst = 10
//!
//! [rate_limits.api-pro]
//! rate = 100                # 100/s per key, bursts of 200: w = 10 ms × 200 = 2
//! burst = 200
//!
//! [modules.ratelimit]
//! path = "modules/ratelimit.wasm"
//! rate_limits = ["api-anon", "api-free", "api-pro"]
//!
//! [modules.ratelimit.config]
//! api_key_header = "x-api-key"
//! exempt = ["/api/health"]
//!
//! [modules.ratelimit.config.anonymous]
//! policy = "api-anon"
//! quota = 20
//! window = 2
//!
//! [modules.ratelimit.config.tiers.free]
//! policy = "api-free"
//! keys = ["k-alice", "k-bob"]
//! quota = 10
//! window = 10
//!
//! [modules.ratelimit.config.tiers.pro]
//! policy = "api-pro"
//! keys = ["k-carol"]
//! quota = 200
//! window = 2
//!
//! # For many keys: one line per key, naming its tier.
//! [modules.ratelimit.config.keys]
//! "k-dave" = "pro"
//! "k-erin.eu" = "free"
//! ```
//!
//! The module then reads `anonymous.policy` = `api-anon`,
//! `anonymous.quota` = `20`, `tiers.free.keys` = `["k-alice","k-bob"]`,
//! `tiers.pro.window` = `2`, `keys.k-erin.eu` = `free`, and so on. Inline
//! tables and dotted keys give the same keys
//! (`anonymous = { policy = "api-anon", quota = 20, window = 2 }`
//! inside `[modules.ratelimit.config]`), and a region overlay can change a
//! single one (`[modules.ratelimit.config.tiers.pro]` with `quota = 100`).
//! A tier's name may contain dots if quoted (`tiers."gold.eu"`): the field
//! is what follows the last dot.
//!
//! # A refused request
//!
//! Gets `429 Too Many Requests`, `content-type: application/json`,
//! `cache-control: no-store`, and, in the formats the node uses for its
//! native policies (draft-ietf-httpapi-ratelimit-headers, durations rounded
//! up to whole seconds):
//!
//! ```text
//! retry-after: 1
//! ratelimit-policy: "api-free";q=10;w=10
//! ratelimit: "api-free";r=0;t=10
//!
//! {"error":"rate_limited","policy":"api-free","retry_after":1}
//! ```
//!
//! `retry_after` (and `Retry-After`) is absent/`null` only when the request
//! can never be admitted (a cost above the policy's burst, which cost 1
//! never is). Allowed requests go on unchanged; with `headers = "always"`
//! their responses get `RateLimit-Policy` and `RateLimit` (the bucket as it
//! stands when the response goes out, read without spending from it), added
//! after any such headers already present. A `429` response is passed on
//! as it is.
//!
//! # Failing open
//!
//! Inside the module, trouble lets the request through and logs a warning
//! (the `log` interface; API keys are never logged): a policy the module is
//! not granted or the node does not know (`unknown-policy`), any other
//! error from the host, and config it cannot read: `tiers`, `keys` or
//! `anonymous` given as one value rather than a table (say, a JSON string),
//! a tier or `anonymous` without `policy` (a key table line naming a tier
//! that has no `policy` included). The module never panics on a request; put
//! it on routes with `fail = "open"` so that a failure of the module itself
//! (say, a timeout) lets requests through too.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cathedral_sdk::host::rate_limit::{self, Decision};
use cathedral_sdk::{
    Client, Filter, RequestAction, RequestHead, Response, ResponseAction, ResponseEdit, fields,
    log, settings,
};
use serde_json::{Value, json};

/// The largest sf-integer (RFC 9651 §3.3.1).
const SF_INTEGER_MAX: u64 = 999_999_999_999_999;

struct RateLimit;

/// A policy as the config names it.
struct Policy {
    name: String,
    /// `q` and `w` of `RateLimit-Policy`, when the config states them.
    announced: Option<(u64, u64)>,
}

/// What one request is counted as: a policy and a bucket key.
struct Limit {
    policy: Policy,
    key: String,
}

/// A tier's (or `anonymous`'s) fields as the config gives them:
/// `policy` → `api-pro`, `keys` → `["k1","k2"]`, `quota` → `100`.
type Fields = BTreeMap<String, String>;

impl Policy {
    /// From a tier's (or `anonymous`'s) fields; `None` without a `policy`.
    fn from_fields(fields: &Fields) -> Option<Self> {
        Self::read(|field| fields.get(field).cloned())
    }

    /// From the fields of the tier `tier`, each read with its own lookup
    /// (`tiers.<tier>.policy`, ...); `None` without a `policy`.
    fn of_tier(tier: &str) -> Option<Self> {
        Self::read(|field| settings::string(&format!("tiers.{tier}.{field}")))
    }

    /// From `field` (`policy`, `quota`, `window`) → value; `None` without a
    /// `policy`.
    fn read(field: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let name = field("policy")?;
        let number = |name| field(name).and_then(|v| v.trim().parse::<u64>().ok());
        Some(Self {
            name,
            announced: number("quota").zip(number("window")),
        })
    }

    /// `RateLimit-Policy: "<name>";q=<quota>;w=<window, ≥ 1>`
    fn policy_header(&self) -> Option<String> {
        let (quota, window) = self.announced?;
        let (q, w) = (quota.min(SF_INTEGER_MAX), window.clamp(1, SF_INTEGER_MAX));
        Some(format!("{};q={q};w={w}", sf_string(&self.name)))
    }

    /// `RateLimit: "<name>";r=<remaining>;t=<reset seconds>`
    fn ratelimit_header(&self, decision: &Decision) -> String {
        format!(
            "{};r={};t={}",
            sf_string(&self.name),
            decision.remaining,
            ceil_secs(decision.reset)
        )
    }
}

/// The fields of the config table `name` (`name.<field>` keys):
/// `Ok(None)` when there are none, `Err` (logged) when `name` is a single
/// value instead of a table.
fn table(name: &str) -> Result<Option<Fields>, ()> {
    ensure_table(name)?;
    let fields: Fields = settings::under(name).into_iter().collect();
    Ok((!fields.is_empty()).then_some(fields))
}

/// The tiers by name (`tiers.<tier>.<field>` keys; the field is what follows
/// the last dot): `Err` (logged) when `tiers` is a single value instead of
/// a table.
fn tiers() -> Result<BTreeMap<String, Fields>, ()> {
    ensure_table("tiers")?;
    let mut tiers: BTreeMap<String, Fields> = BTreeMap::new();
    for (rest, value) in settings::under("tiers") {
        if let Some((tier, field)) = rest.rsplit_once('.') {
            tiers
                .entry(tier.to_owned())
                .or_default()
                .insert(field.to_owned(), value);
        }
    }
    Ok(tiers)
}

/// `Err` (logged) when the config has `name` as a single value, where the
/// module expects a table (whose keys would be `name.<field>`).
fn ensure_table(name: &str) -> Result<(), ()> {
    if settings::string(name).is_none() {
        return Ok(());
    }
    log::warn(&format!(
        "config `{name}` is not a table; requests are let through"
    ));
    Err(())
}

/// The limit for a request with `api_key`: `Ok(None)` when neither the key
/// table nor a tier lists the key (the request is anonymous), `Err` (logged)
/// when the request is let through (config the module cannot read).
///
/// The key table answers with one lookup, and then the tier's fields with
/// one each; only a key it does not name costs a read of every tier.
fn keyed_limit(api_key: &str) -> Result<Option<Limit>, ()> {
    let (tier, policy) = match settings::string(&format!("keys.{api_key}")) {
        Some(tier) => {
            let policy = Policy::of_tier(&tier);
            (tier, policy)
        }
        None => {
            ensure_table("keys")?;
            let Some((tier, fields)) = tiers()?
                .into_iter()
                .find(|(_, fields)| lists(fields, api_key))
            else {
                return Ok(None);
            };
            let policy = Policy::from_fields(&fields);
            (tier, policy)
        }
    };
    let Some(policy) = policy else {
        log::warn(&format!(
            "tier `{tier}` names no policy; requests are let through"
        ));
        return Err(());
    };
    Ok(Some(Limit {
        policy,
        key: format!("h:{api_key}"),
    }))
}

/// Whether the tier lists `api_key` in its `keys` (a JSON array of strings).
fn lists(tier: &Fields, api_key: &str) -> bool {
    tier.get("keys")
        .and_then(|keys| serde_json::from_str::<Value>(keys).ok())
        .as_ref()
        .and_then(Value::as_array)
        .is_some_and(|keys| keys.iter().any(|k| k.as_str() == Some(api_key)))
}

/// The policy and key this request is counted under; `None` when it is not
/// counted (exempt, anonymous without an `anonymous` policy, or config the
/// module cannot read).
fn limit_for(request: &RequestHead, client: &Client) -> Option<Limit> {
    let path = request.path();
    if plain_path(path)
        && settings::list("exempt")
            .iter()
            .any(|prefix| fields::path_under(path, prefix))
    {
        return None;
    }
    let header = settings::string_or("api_key_header", "x-api-key");
    let api_key = request
        .header(&header)
        .map(str::trim)
        .filter(|k| !k.is_empty());
    if let Some(api_key) = api_key
        && let Some(limit) = keyed_limit(api_key).ok()?
    {
        return Some(limit);
    }
    let anonymous = table("anonymous").ok()??;
    let Some(policy) = Policy::from_fields(&anonymous) else {
        log::warn("config `anonymous` names no policy; requests are let through");
        return None;
    };
    Some(Limit {
        policy,
        key: ip_key(&client.ip),
    })
}

/// Whether `path` has no `.`/`..` segments, `%` escapes or backslashes: only
/// such paths may be exempt (the origin might read the others as another
/// path).
fn plain_path(path: &str) -> bool {
    !path.contains(['%', '\\']) && path.split('/').all(|s| s != "." && s != "..")
}

/// The node's `client-ip` key: `ip:203.0.113.7`, or for a grouped address
/// `ip:2001:db8:1:2::/64`.
fn ip_key(ip: &str) -> String {
    let Ok(addr) = ip.parse::<IpAddr>() else {
        return format!("ip:{ip}");
    };
    let prefix = |key, default, max| settings::u64_or(key, default).clamp(1, max) as u32;
    match addr.to_canonical() {
        IpAddr::V4(v4) => match prefix("ipv4_prefix", 32, 32) {
            32 => format!("ip:{v4}"),
            bits => {
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                format!("ip:{}/{bits}", Ipv4Addr::from(u32::from(v4) & mask))
            }
        },
        IpAddr::V6(v6) => match prefix("ipv6_prefix", 64, 128) {
            128 => format!("ip:{v6}"),
            bits => {
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                format!("ip:{}/{bits}", Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

/// Checks `cost` units of `limit`; `None` (logged) when the host could not.
fn check(limit: &Limit, cost: u32) -> Option<Decision> {
    match rate_limit::check(&limit.policy.name, &limit.key, cost) {
        Ok(decision) => Some(decision),
        Err(e) => {
            log::warn(&format!(
                "rate-limit policy `{}` could not be checked ({e:?}); the request is let through",
                limit.policy.name
            ));
            None
        }
    }
}

/// The 429 answer for a refused request.
fn refusal(policy: &Policy, decision: &Decision) -> RequestAction {
    let retry_after = decision.retry_after.map(|ms| ceil_secs(ms).max(1));
    let mut headers = vec![
        fields::field("content-type", "application/json"),
        fields::field("cache-control", "no-store"),
    ];
    if let Some(secs) = retry_after {
        headers.push(fields::field("retry-after", secs.to_string()));
    }
    if let Some(value) = policy.policy_header() {
        headers.push(fields::field("ratelimit-policy", value));
    }
    headers.push(fields::field(
        "ratelimit",
        policy.ratelimit_header(decision),
    ));
    let body = json!({
        "error": "rate_limited",
        "policy": policy.name,
        "retry_after": retry_after,
    });
    RequestAction::Respond(Response {
        status: 429,
        headers,
        body: Some(body.to_string().into_bytes()),
    })
}

/// Milliseconds as whole seconds, rounded up, clamped to the sf-integer
/// range.
fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).min(SF_INTEGER_MAX)
}

/// `s` as an sf-string (RFC 9651 §3.3.3): `"` and `\` escaped, anything
/// outside printable ASCII written as `?` (as the node does).
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// `values` of `name` already in `response`, then `ours`.
fn appended(response: &Response, name: &str, ours: String) -> Vec<(String, Vec<u8>)> {
    let existing = response
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| (name.to_owned(), v.clone()));
    existing.chain([fields::field(name, ours)]).collect()
}

impl Filter for RateLimit {
    fn on_request(request: RequestHead, client: Client) -> RequestAction {
        let Some(limit) = limit_for(&request, &client) else {
            return RequestAction::Continue;
        };
        match check(&limit, 1) {
            Some(decision) if !decision.allowed => refusal(&limit.policy, &decision),
            _ => RequestAction::Continue,
        }
    }

    fn on_response(request: RequestHead, client: Client, response: Response) -> ResponseAction {
        if response.status == 429 || settings::string_or("headers", "limited") != "always" {
            return ResponseAction::Pass;
        }
        let Some(limit) = limit_for(&request, &client) else {
            return ResponseAction::Pass;
        };
        // Cost 0 only reads the bucket: the request was counted already.
        let Some(decision) = check(&limit, 0) else {
            return ResponseAction::Pass;
        };
        let mut edit = ResponseEdit::new();
        if let Some(value) = limit.policy.policy_header() {
            edit.set_headers
                .extend(appended(&response, "ratelimit-policy", value));
        }
        edit.set_headers.extend(appended(
            &response,
            "ratelimit",
            limit.policy.ratelimit_header(&decision),
        ));
        edit.into_action()
    }
}

cathedral_sdk::export_filter!(RateLimit);
