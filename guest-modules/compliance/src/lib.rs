//! `compliance`: a region's legal rules, applied on the edge.
//!
//! # Config (from `regions/<id>.toml`, so it differs per region)
//!
//! | key | meaning |
//! |---|---|
//! | `blocks` | JSON array of rules `{"paths": [...], "countries": [...], "policy": URL, "reason": text}`: a request for one of `paths` (prefixes) from one of `countries` (ISO codes, `*` for any) is answered `451 Unavailable For Legal Reasons` (RFC 7725) with `Link: <policy>; rel="blocked-by"` |
//! | `consent.required` | whether tracking needs consent here (EU: `true`) |
//! | `consent.cookie` | the consent cookie's name (default `consent`); consent is its presence, unless its value is `0`, `false`, `no`, `denied` or `rejected` |
//! | `strip.cookies` | tracking cookies (names, `prefix*` patterns) removed from requests and from responses' `set-cookie` when consent is required and absent |
//! | `strip.headers` | request headers removed in that case too |
//! | `redact.fields` | JSON object keys whose values are replaced, at any depth, in JSON responses under `redact.paths` |
//! | `redact.paths` | path prefixes whose JSON is redacted (default `/api/`) |
//! | `redact.replacement` | what replaces a redacted value (default `"[redacted]"`) |
//! | `no_store.paths` | path prefixes whose responses must not be stored in the shared cache (data residency) |
//! | `headers.NAME` | a header added to every response |

use cathedral_sdk::{
    Client, Filter, RequestAction, RequestEdit, RequestHead, Response, ResponseAction,
    ResponseEdit, fields, settings,
};
use serde_json::Value;

struct Compliance;

/// One blocking rule.
struct Block {
    paths: Vec<String>,
    countries: Vec<String>,
    policy: Option<String>,
    reason: Option<String>,
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn blocks() -> Vec<Block> {
    let Some(Value::Array(rules)) = settings::json("blocks") else {
        return Vec::new();
    };
    rules
        .iter()
        .map(|rule| Block {
            paths: string_list(rule.get("paths")),
            countries: string_list(rule.get("countries")),
            policy: rule
                .get("policy")
                .and_then(Value::as_str)
                .map(str::to_owned),
            reason: rule
                .get("reason")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
        .collect()
}

impl Block {
    fn matches(&self, path: &str, country: Option<&str>) -> bool {
        let country_listed = self
            .countries
            .iter()
            .any(|c| c == "*" || country.is_some_and(|country| c.eq_ignore_ascii_case(country)));
        country_listed && self.paths.iter().any(|p| fields::path_under(path, p))
    }

    fn response(&self, region: &str) -> RequestAction {
        let reason = self
            .reason
            .as_deref()
            .unwrap_or("This content is not available in your country for legal reasons.");
        let mut headers = vec![
            fields::field("content-type", "text/html; charset=utf-8"),
            fields::field("cache-control", "private, no-store"),
        ];
        let policy_html = match &self.policy {
            Some(policy) => {
                headers.push(fields::field(
                    "link",
                    format!("<{policy}>; rel=\"blocked-by\""),
                ));
                format!("<p><a href=\"{}\">Why?</a></p>", escape(policy))
            }
            None => String::new(),
        };
        headers.extend(region_headers());
        let body = format!(
            "<!doctype html>\n<title>451 Unavailable For Legal Reasons</title>\n\
             <h1>Unavailable For Legal Reasons</h1>\n<p>{}</p>\n{policy_html}\n\
             <p>Region: {}</p>\n",
            escape(reason),
            escape(region)
        );
        RequestAction::Respond(Response {
            status: 451,
            headers,
            body: Some(body.into_bytes()),
        })
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Whether tracking must be stripped from this request.
fn strip_tracking(request: &RequestHead) -> bool {
    if !settings::bool_or("consent.required", false) {
        return false;
    }
    let cookie = settings::string_or("consent.cookie", "consent");
    match request.cookie(&cookie) {
        None => true,
        Some(value) => matches!(
            value.trim().to_ascii_lowercase().as_str(),
            "0" | "false" | "no" | "denied" | "rejected"
        ),
    }
}

fn is_tracking(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| fields::name_matches(p, name))
}

fn region_headers() -> Vec<(String, Vec<u8>)> {
    settings::under("headers")
        .into_iter()
        .map(|(name, value)| fields::field(&name, value))
        .collect()
}

/// Replaces the value of every key in `keys` (case-insensitive), at any
/// depth. Returns whether anything changed.
fn redact(value: &mut Value, keys: &[String], replacement: &Value) -> bool {
    match value {
        Value::Object(map) => {
            let mut changed = false;
            for (key, v) in map.iter_mut() {
                if keys.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                    *v = replacement.clone();
                    changed = true;
                } else {
                    changed |= redact(v, keys, replacement);
                }
            }
            changed
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, v| redact(v, keys, replacement) | changed),
        _ => false,
    }
}

fn is_json(media_type: Option<&str>) -> bool {
    media_type.is_some_and(|m| m == "application/json" || m.ends_with("+json"))
}

impl Filter for Compliance {
    fn on_request(request: RequestHead, client: Client) -> RequestAction {
        let path = request.path().to_owned();
        if let Some(block) = blocks()
            .into_iter()
            .find(|b| b.matches(&path, client.country.as_deref()))
        {
            return block.response(&client.region);
        }
        let mut edit = RequestEdit::new();
        if strip_tracking(&request) {
            let cookies = settings::list("strip.cookies");
            let mut changed = false;
            let mut kept = Vec::new();
            for value in fields::get_all(&request.headers, "cookie") {
                match fields::filter_cookie_header(value, |name| is_tracking(&cookies, name)) {
                    Some(filtered) => {
                        changed |= filtered != value;
                        kept.push(filtered);
                    }
                    None => changed = true,
                }
            }
            if changed {
                edit.remove_headers.push("cookie".into());
                edit.set_headers
                    .extend(kept.into_iter().map(|v| fields::field("cookie", v)));
            }
            for header in settings::list("strip.headers") {
                if fields::contains(&request.headers, &header) {
                    edit.remove_headers.push(header.to_ascii_lowercase());
                }
            }
        }
        edit.no_store = settings::list("no_store.paths")
            .iter()
            .any(|p| fields::path_under(&path, p));
        edit.into_action()
    }

    fn on_response(request: RequestHead, _client: Client, response: Response) -> ResponseAction {
        let mut edit = ResponseEdit::new();
        if strip_tracking(&request) {
            let cookies = settings::list("strip.cookies");
            let all: Vec<&[u8]> = response
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
                .map(|(_, v)| v.as_slice())
                .collect();
            let kept: Vec<&[u8]> = all
                .iter()
                .copied()
                .filter(|v| {
                    let name = std::str::from_utf8(v)
                        .ok()
                        .and_then(fields::set_cookie_name);
                    !name.is_some_and(|name| is_tracking(&cookies, name))
                })
                .collect();
            if kept.len() != all.len() {
                edit.remove_headers.push("set-cookie".into());
                edit.set_headers.extend(
                    kept.into_iter()
                        .map(|v| ("set-cookie".to_owned(), v.to_vec())),
                );
            }
        }
        let redact_keys = settings::list("redact.fields");
        let under = {
            let paths = settings::list("redact.paths");
            let paths = if paths.is_empty() {
                vec!["/api/".to_owned()]
            } else {
                paths
            };
            paths.iter().any(|p| fields::path_under(request.path(), p))
        };
        if let (false, true, true, Some(body)) = (
            redact_keys.is_empty(),
            under,
            is_json(response.media_type().as_deref()),
            response.body.as_deref(),
        ) {
            match serde_json::from_slice::<Value>(body) {
                Ok(mut json) => {
                    let replacement =
                        Value::String(settings::string_or("redact.replacement", "[redacted]"));
                    if redact(&mut json, &redact_keys, &replacement)
                        && let Ok(bytes) = serde_json::to_vec(&json)
                    {
                        edit.body = Some(bytes);
                    }
                }
                Err(e) => cathedral_sdk::log::warn(&format!("response JSON not redacted: {e}")),
            }
        }
        edit.set_headers.extend(region_headers());
        edit.into_action()
    }
}

cathedral_sdk::export_filter!(Compliance);
