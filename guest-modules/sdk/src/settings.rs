//! Typed access to the module's config (the `config` host interface).
//!
//! Values arrive as strings: text verbatim, numbers and booleans in TOML
//! syntax, arrays and tables as JSON (see `wit/host.wit`).

use crate::host::config;

/// The value of `key` as text.
pub fn string(key: &str) -> Option<String> {
    config::get(key)
}

/// The value of `key`, or `default`.
pub fn string_or(key: &str, default: &str) -> String {
    config::get(key).unwrap_or_else(|| default.to_owned())
}

/// The value of `key` as a list of strings: a JSON array of strings, or
/// comma-separated text. Empty when the key is absent.
pub fn list(key: &str) -> Vec<String> {
    config::get(key).map(|v| parse_list(&v)).unwrap_or_default()
}

/// Parses a JSON array of strings, or comma-separated text.
pub fn parse_list(value: &str) -> Vec<String> {
    let trimmed = value.trim();
    if trimmed.starts_with('[')
        && let Ok(items) = serde_json::from_str::<Vec<String>>(trimmed)
    {
        return items;
    }
    trimmed
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The value of `key` as a boolean (`true`/`false`, `yes`/`no`, `1`/`0`).
pub fn bool_or(key: &str, default: bool) -> bool {
    match config::get(key).as_deref().map(str::trim) {
        Some("true" | "yes" | "1" | "on") => true,
        Some("false" | "no" | "0" | "off") => false,
        _ => default,
    }
}

/// The value of `key` as an unsigned number.
pub fn u64_or(key: &str, default: u64) -> u64 {
    config::get(key)
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The value of `key` parsed as JSON.
pub fn json(key: &str) -> Option<serde_json::Value> {
    config::get(key).and_then(|v| serde_json::from_str(&v).ok())
}

/// Every `(rest, value)` whose key is `prefix.rest`, sorted by key. Only
/// these entries are copied into the guest (the host's `config.under`), so
/// reading one table costs what the table holds, not what the whole config
/// holds; to read one value, [`string`] is cheaper still.
pub fn under(prefix: &str) -> Vec<(String, String)> {
    config::under(prefix)
}
