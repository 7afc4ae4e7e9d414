//! Wasm modules (`[modules.<name>]`) and how routes use them (`filters`, `handler`): validation, and the conversion of a module's `config` values to the strings the module reads.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use toml::Value;

use crate::bootstrap::check_wasm_memory;
use crate::error::{Key, Sink, toml_key, toml_string};
use crate::raw::{RawFilter, RawModule, describe, table_section};
use crate::size::{format_duration, format_size};
use crate::types::{FailPolicy, FilterRef, ModuleConfig};
use crate::validate;

/// `cpu_deadline` when not set.
pub(crate) const DEFAULT_CPU_DEADLINE: Duration = Duration::from_millis(50);
/// Shortest and longest `cpu_deadline`.
const MIN_CPU_DEADLINE: Duration = Duration::from_millis(1);
const MAX_CPU_DEADLINE: Duration = Duration::from_secs(10);
/// `wall_timeout` when not set.
pub(crate) const DEFAULT_WALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `wall_timeout`.
const MAX_WALL_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// A module's `memory` when not set.
pub(crate) const DEFAULT_MODULE_MEMORY: u64 = 64 << 20;
/// A filter's `max_body` when not set.
pub(crate) const DEFAULT_MAX_BODY: u64 = 1 << 20;
/// Largest filter `max_body`: the body is buffered in the node's memory.
const MAX_MAX_BODY: u64 = 64 << 20;

/// The bootstrap's `[wasm] max_memory`, which no module's `memory` may
/// exceed, and how to name it in errors.
#[derive(Debug, Clone)]
pub struct MemoryCap {
    pub bytes: u64,
    /// E.g. `wasm.max_memory in edge-config/node.toml`.
    pub label: String,
}

/// `[modules.<name>]`. `None` when it has errors (reported).
pub(crate) fn build_module(
    name: &str,
    value: &Value,
    key: &Key,
    policies: &BTreeSet<&str>,
    memory_cap: Option<&MemoryCap>,
    sink: &mut Sink<'_>,
) -> Option<ModuleConfig> {
    let before = sink.error_count();
    if let Err(message) = validate::check_policy_name(name) {
        sink.push(key, format!("invalid module name: {message}"));
    }
    let Value::Table(table) = value else {
        sink.push(
            key,
            format!(
                "expected a table ([modules.{}]), found {}",
                toml_key(name),
                describe(value)
            ),
        );
        return None;
    };
    let parsed = table_section::<RawModule>(table, key, sink);
    let raw = &parsed.value;

    // path: relative to the file that set it, and the component must exist.
    let path_key = key.field("path");
    let path = match &raw.path {
        Some(path) if path.is_empty() => {
            sink.push(
                &path_key,
                "expected a path to a .wasm component, found an empty string",
            );
            None
        }
        Some(path) => {
            let path = validate::resolve(sink.base_dir(&path_key), path);
            match sink.files().check_file(&path) {
                Ok(()) => Some(path),
                Err(message) => {
                    sink.push(&path_key, message);
                    None
                }
            }
        }
        None if parsed.is_bad("path") => None,
        None => {
            sink.push(
                &path_key,
                "required key is missing (expected a path to a .wasm component, like \"modules/personalize.wasm\")",
            );
            None
        }
    };

    let cpu_deadline = match raw.cpu_deadline {
        None => DEFAULT_CPU_DEADLINE,
        Some(d) if (MIN_CPU_DEADLINE..=MAX_CPU_DEADLINE).contains(&d.0) => d.0,
        Some(d) => {
            sink.push(
                &key.field("cpu_deadline"),
                format!(
                    "expected between \"{}\" and \"{}\", found \"{}\"",
                    format_duration(MIN_CPU_DEADLINE),
                    format_duration(MAX_CPU_DEADLINE),
                    format_duration(d.0)
                ),
            );
            DEFAULT_CPU_DEADLINE
        }
    };
    let wall_key = key.field("wall_timeout");
    let wall_timeout = match raw.wall_timeout {
        None => DEFAULT_WALL_TIMEOUT,
        Some(d) if d.0.is_zero() => {
            sink.push(
                &wall_key,
                "expected a positive duration like \"30s\", found \"0s\"",
            );
            DEFAULT_WALL_TIMEOUT
        }
        Some(d) if d.0 > MAX_WALL_TIMEOUT => {
            sink.push(
                &wall_key,
                format!(
                    "expected at most \"{}\", found \"{}\"",
                    format_duration(MAX_WALL_TIMEOUT),
                    format_duration(d.0)
                ),
            );
            DEFAULT_WALL_TIMEOUT
        }
        Some(d) => d.0,
    };

    let memory_key = key.field("memory");
    let memory_limit_bytes = match raw.memory {
        None if parsed.is_bad("memory") => None,
        None => Some(DEFAULT_MODULE_MEMORY),
        Some(size) => check_wasm_memory(size.0)
            .map_err(|message| sink.push(&memory_key, message))
            .ok(),
    };
    if let (Some(bytes), Some(cap)) = (memory_limit_bytes, memory_cap)
        && bytes > cap.bytes
    {
        let found = match raw.memory {
            Some(_) => format_size(bytes),
            None => format!(
                "the default {} (set memory on the module, or raise wasm.max_memory)",
                format_size(bytes)
            ),
        };
        sink.push(
            &memory_key,
            format!(
                "expected at most {} ({}), found {found}",
                cap.label,
                format_size(cap.bytes)
            ),
        );
    }

    // rate_limits: policies the module may check.
    let limits_key = key.field("rate_limits");
    let mut rate_limits: Vec<String> = Vec::new();
    for (i, policy) in raw.rate_limits.iter().flatten().enumerate() {
        let item_key = limits_key.index(i);
        if rate_limits.contains(policy) {
            sink.push(
                &item_key,
                format!("{} is listed twice", toml_string(policy)),
            );
        } else if !policies.contains(policy.as_str()) {
            sink.push(
                &item_key,
                format!(
                    "no rate-limit policy named {} ({})",
                    toml_string(policy),
                    known(policies, "no rate-limit policies are defined")
                ),
            );
        } else {
            rate_limits.push(policy.clone());
        }
    }

    // config: every value becomes the string the module reads.
    let config_key = key.field("config");
    let mut config = BTreeMap::new();
    for (name, value) in raw.config.iter().flatten() {
        if name.is_empty() {
            sink.push(
                &config_key.field(name),
                "expected a non-empty key, found an empty string",
            );
            continue;
        }
        flatten_config(name, value, &mut config);
    }

    if sink.error_count() > before {
        return None;
    }
    Some(ModuleConfig {
        name: name.to_owned(),
        path: path?,
        cpu_deadline,
        wall_timeout,
        memory_limit_bytes: memory_limit_bytes?,
        config,
        rate_limits,
    })
}

/// "known: a, b", or `none` when there are no names.
pub(crate) fn known(names: &BTreeSet<&str>, none: &str) -> String {
    if names.is_empty() {
        none.to_owned()
    } else {
        format!(
            "known: {}",
            names.iter().copied().collect::<Vec<_>>().join(", ")
        )
    }
}

/// "no module named ..." for a name that is not in `modules`.
pub(crate) fn unknown_module(name: &str, modules: &BTreeSet<&str>) -> String {
    format!(
        "no module named {} ({})",
        toml_string(name),
        known(modules, "no modules are defined")
    )
}

/// Where each module is used: as a handler (the routes' `handler` keys) and
/// as a filter (the routes' `filters` entries). A component fits one world,
/// so a module used both ways is an error.
#[derive(Debug, Default)]
pub(crate) struct ModuleUses(BTreeMap<String, (Vec<Key>, Vec<Key>)>);

impl ModuleUses {
    pub(crate) fn handler(&mut self, module: &str, key: Key) {
        self.0.entry(module.to_owned()).or_default().0.push(key);
    }

    pub(crate) fn filter(&mut self, module: &str, key: Key) {
        self.0.entry(module.to_owned()).or_default().1.push(key);
    }

    /// Reports every handler use of a module that is also used as a filter.
    pub(crate) fn check(&self, sink: &mut Sink<'_>) {
        for (module, (handlers, filters)) in &self.0 {
            if filters.is_empty() {
                continue;
            }
            let filter_uses: Vec<String> = filters.iter().map(ToString::to_string).collect();
            for handler in handlers {
                sink.push(
                    handler,
                    format!(
                        "module {} is also used as a filter ({}); a component implements either the filter world or the handler world, so one module cannot be both",
                        toml_string(module),
                        filter_uses.join(", ")
                    ),
                );
            }
        }
    }
}

/// A route's `filters`: each entry a module name or a table. Entries with
/// errors are reported and left out.
pub(crate) fn build_filters(
    entries: &[Value],
    key: &Key,
    modules: &BTreeSet<&str>,
    uses: &mut ModuleUses,
    sink: &mut Sink<'_>,
) -> Vec<FilterRef> {
    let mut filters: Vec<FilterRef> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let item_key = key.index(i);
        let before = sink.error_count();
        let (filter, module_key) = match entry {
            Value::String(module) => (
                Some(FilterRef {
                    module: module.clone(),
                    fail: FailPolicy::Closed,
                    response_body: false,
                    max_body_bytes: DEFAULT_MAX_BODY,
                }),
                item_key.clone(),
            ),
            Value::Table(table) => (
                build_filter_table(table, &item_key, sink),
                item_key.field("module"),
            ),
            other => {
                sink.push(
                    &item_key,
                    format!(
                        "expected a module name or a table like {{ module = \"name\", fail = \"open\" }}, found {}",
                        describe(other)
                    ),
                );
                (None, item_key.clone())
            }
        };
        let Some(filter) = filter else {
            continue;
        };
        if !modules.contains(filter.module.as_str()) {
            sink.push(&module_key, unknown_module(&filter.module, modules));
        } else if filters.iter().any(|f| f.module == filter.module) {
            sink.push(
                &module_key,
                format!(
                    "module {} is listed twice (a route runs each filter once)",
                    toml_string(&filter.module)
                ),
            );
        } else {
            uses.filter(&filter.module, item_key.clone());
        }
        if sink.error_count() == before {
            filters.push(filter);
        }
    }
    filters
}

/// One `[[routes.<name>.filters]]` table. `None` when `module` is missing
/// or bad; other errors are reported and leave their defaults.
fn build_filter_table(table: &toml::Table, key: &Key, sink: &mut Sink<'_>) -> Option<FilterRef> {
    let parsed = table_section::<RawFilter>(table, key, sink);
    let raw = &parsed.value;
    let max_body_bytes = match raw.max_body {
        None => DEFAULT_MAX_BODY,
        Some(size) if size.0 > MAX_MAX_BODY => {
            sink.push(
                &key.field("max_body"),
                format!(
                    "expected at most {}, found {}",
                    format_size(MAX_MAX_BODY),
                    format_size(size.0)
                ),
            );
            DEFAULT_MAX_BODY
        }
        Some(size) => size.0,
    };
    let module = match &raw.module {
        Some(module) => module.clone(),
        None => {
            if !parsed.is_bad("module") {
                sink.push(
                    &key.field("module"),
                    "required key is missing (expected the name of a [modules.<name>] entry)",
                );
            }
            return None;
        }
    };
    Some(FilterRef {
        module,
        fail: raw.fail.map_or(FailPolicy::Closed, |f| f.0),
        response_body: raw.response_body.unwrap_or(false),
        max_body_bytes,
    })
}

/// The TOML spelling of a fail policy.
pub(crate) fn fail_text(fail: FailPolicy) -> &'static str {
    match fail {
        FailPolicy::Closed => "closed",
        FailPolicy::Open => "open",
    }
}

/// A module `config` value as the module reads it: strings as they are;
/// integers, floats, booleans and date-times as their TOML text; arrays
/// and tables as compact JSON.
/// Adds `value` under `key`: tables become dotted keys
/// (`[config.consent] required = true` → `consent.required` = `"true"`), as
/// the WIT `config` interface documents; everything else is one entry of
/// [`config_text`].
pub(crate) fn flatten_config(key: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Table(table) => {
            for (sub, v) in table {
                flatten_config(&format!("{key}.{sub}"), v, out);
            }
        }
        other => {
            out.insert(key.to_owned(), config_text(other));
        }
    }
}

pub(crate) fn config_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Integer(i) => i.to_string(),
        Value::Float(x) => float_text(*x),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => d.to_string(),
        Value::Array(_) | Value::Table(_) => {
            let mut out = String::new();
            write_json(value, &mut out);
            out
        }
    }
}

/// A float as TOML writes it: `0.5`, `1.0`, `1e20`, `inf`, `-inf`, `nan`.
fn float_text(x: f64) -> String {
    if x.is_nan() {
        String::from("nan")
    } else if x.is_infinite() {
        String::from(if x > 0.0 { "inf" } else { "-inf" })
    } else {
        // Debug always shows a fraction or an exponent: `1.0`, `1e20`.
        format!("{x:?}")
    }
}

/// Compact JSON for a TOML value: no spaces, table keys sorted, date-times
/// as strings, non-finite floats (which JSON cannot express) as `null`.
fn write_json(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => json_string(s, out),
        Value::Integer(i) => out.push_str(&i.to_string()),
        Value::Float(x) if x.is_finite() => out.push_str(&float_text(*x)),
        Value::Float(_) => out.push_str("null"),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Datetime(d) => json_string(&d.to_string(), out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Value::Table(table) => {
            let mut entries: Vec<(&String, &Value)> = table.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (name, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(name, out);
                out.push(':');
                write_json(item, out);
            }
            out.push('}');
        }
    }
}

/// A JSON string literal: `"` and `\` escaped, control characters as
/// `\n`, `\t`, ... or `\u00XX`; everything else as it is (UTF-8).
fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `config_text` of the value `v` in the TOML line `v = <toml>`.
    fn text(toml: &str) -> String {
        let table: toml::Table = format!("v = {toml}").parse().unwrap();
        config_text(&table["v"])
    }

    #[test]
    fn nested_tables_become_dotted_keys() {
        let table: toml::Table = r#"
            cookie = "uid"
            [consent]
            required = true
            cookies = ["_ga", "_fbp"]
            [consent.banner]
            text = "hi"
        "#
        .parse()
        .unwrap();
        let mut out = BTreeMap::new();
        for (k, v) in &table {
            flatten_config(k, v, &mut out);
        }
        let got: Vec<(&str, &str)> = out.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("consent.banner.text", "hi"),
                ("consent.cookies", r#"["_ga","_fbp"]"#),
                ("consent.required", "true"),
                ("cookie", "uid"),
            ]
        );
    }

    #[test]
    fn scalars_as_text() {
        assert_eq!(text(r#""uid""#), "uid");
        assert_eq!(text(r#""""#), "");
        assert_eq!(
            text(r#""a \"q\" \\ ü\n""#),
            "a \"q\" \\ ü\n",
            "as is, unescaped"
        );
        assert_eq!(text("'C:\\path'"), "C:\\path");
        assert_eq!(text("42"), "42");
        assert_eq!(text("-7"), "-7");
        assert_eq!(text("0x1F"), "31");
        assert_eq!(text("1_000"), "1000");
        assert_eq!(text("9223372036854775807"), "9223372036854775807");
        assert_eq!(text("0.5"), "0.5");
        assert_eq!(text("1.0"), "1.0");
        assert_eq!(text("-2.5e-3"), "-0.0025");
        assert_eq!(text("1e20"), "1e20");
        assert_eq!(text("inf"), "inf");
        assert_eq!(text("-inf"), "-inf");
        assert_eq!(text("nan"), "nan");
        assert_eq!(text("true"), "true");
        assert_eq!(text("false"), "false");
        assert_eq!(text("1979-05-27T07:32:00Z"), "1979-05-27T07:32:00Z");
        assert_eq!(text("1979-05-27"), "1979-05-27");
    }

    #[test]
    fn arrays_and_tables_as_compact_json() {
        assert_eq!(text("[]"), "[]");
        assert_eq!(text("{}"), "{}");
        assert_eq!(text(r#"["a", "b"]"#), r#"["a","b"]"#);
        assert_eq!(text("[1, 2.5, true]"), "[1,2.5,true]");
        assert_eq!(text("[[1], [2, [3]]]"), "[[1],[2,[3]]]");
        // Keys sorted, nested values converted the same way.
        assert_eq!(
            text(r#"{ z = 1, a = { y = [1, "x"], b = false }, "m n" = "o" }"#),
            r#"{"a":{"b":false,"y":[1,"x"]},"m n":"o","z":1}"#
        );
        // Date-times are strings; non-finite floats are null.
        assert_eq!(
            text("[1979-05-27T07:32:00Z, 07:32:00, nan, inf, -inf]"),
            r#"["1979-05-27T07:32:00Z","07:32:00",null,null,null]"#
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(
            text(r#"["quote \" backslash \\ slash /"]"#),
            r#"["quote \" backslash \\ slash /"]"#
        );
        assert_eq!(
            text(r#"["nl \n cr \r tab \t bs \b ff \f nul \u0000 esc \u001B del \u007F"]"#),
            "[\"nl \\n cr \\r tab \\t bs \\b ff \\f nul \\u0000 esc \\u001b del \u{7f}\"]"
        );
        assert_eq!(text(r#"["ünï €𝄞"]"#), r#"["ünï €𝄞"]"#, "UTF-8 as is");
        assert_eq!(
            text(r#"{ "ke\"y" = 1, "a\nb" = 2 }"#),
            r#"{"a\nb":2,"ke\"y":1}"#,
            "keys are escaped too"
        );
    }

    /// Every converted array or table is valid JSON that a JSON parser
    /// reads back to the same structure (checked here with TOML's own
    /// inline syntax where the two agree: strings, integers, booleans,
    /// arrays; objects become inline tables).
    #[test]
    fn json_reads_back_as_the_same_value() {
        for toml in [
            r#"["a", "b\"c", "d\\e", "f\ng", "h\u0001"]"#,
            r#"[1, -2, true, false, ["x", []]]"#,
            r#"{ a = 1, b = ["x", { c = "d" }] }"#,
        ] {
            let json = text(toml);
            // JSON objects `{"k":v}` become TOML inline tables `{"k"=v}`:
            // replace the separators outside strings.
            let mut as_toml = String::new();
            let mut in_string = false;
            let mut escaped = false;
            for c in json.chars() {
                match c {
                    _ if escaped => {
                        escaped = false;
                        as_toml.push(c);
                    }
                    '\\' if in_string => {
                        escaped = true;
                        as_toml.push(c);
                    }
                    '"' => {
                        in_string = !in_string;
                        as_toml.push(c);
                    }
                    ':' if !in_string => as_toml.push('='),
                    c => as_toml.push(c),
                }
            }
            let original: toml::Table = format!("v = {toml}").parse().unwrap();
            let reread: toml::Table = format!("v = {as_toml}").parse().unwrap();
            assert_eq!(original, reread, "{toml} → {json}");
        }
    }
}
