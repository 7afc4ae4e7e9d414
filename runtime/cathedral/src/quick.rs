//! Quick modes: the edge config `cathedral serve` builds from its command
//! line instead of files. `--upstream URL` (from
//! [`cathedral_config::quick_upstream`]) or `--handler FILE.wasm` (one
//! catch-all route answered by a `wasi:http` component, as `wasmtime serve`
//! runs it), each with the `--filter FILE.wasm` components on that route.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cathedral_config::{
    ConfigError, ConfigErrors, EdgeConfig, FailPolicy, FilterRef, HandlerTarget, HostHeader,
    ModuleConfig, Route, RouteTarget,
};

/// Values that came from the command line are reported under this
/// pseudo-file, as `cathedral_config` does.
const COMMAND_LINE: &str = "<command line>";

/// A module's `cpu_deadline`, `wall_timeout` and `memory` defaults
/// (docs/configuration.md, `[modules.<name>]`).
const CPU_DEADLINE: Duration = Duration::from_millis(50);
const WALL_TIMEOUT: Duration = Duration::from_secs(30);
const MEMORY: u64 = 64 << 20;
/// A filter's `max_body` default (unused: quick filters get no body).
const MAX_BODY: u64 = 1 << 20;

/// What the quick route does.
#[derive(Debug, Clone)]
pub enum QuickTarget {
    /// `--upstream URL`.
    Upstream(String),
    /// `--handler FILE.wasm`.
    Handler(PathBuf),
}

/// The quick edge config: the route of `target`, with `filters` on it in
/// order (each fails closed and sees response heads only). Every module is
/// named after its file's stem and has the default limits, its memory
/// capped at `max_memory` (the bootstrap's `wasm.max_memory`).
pub fn edge_config(
    target: &QuickTarget,
    filters: &[PathBuf],
    region: &str,
    max_memory: u64,
) -> Result<EdgeConfig, ConfigErrors> {
    let mut errors = Vec::new();
    let mut modules = BTreeMap::new();
    let mut add_module = |key: &str, file: &Path| -> Option<String> {
        let path = match component_path(file) {
            Ok(path) => path,
            Err(message) => {
                errors.push(ConfigError::new(COMMAND_LINE, key, message));
                return None;
            }
        };
        let name = unique_name(&module_name(&path), &modules);
        modules.insert(
            name.clone(),
            ModuleConfig {
                name: name.clone(),
                path,
                cpu_deadline: CPU_DEADLINE,
                wall_timeout: WALL_TIMEOUT,
                memory_limit_bytes: MEMORY.min(max_memory),
                config: BTreeMap::new(),
                rate_limits: Vec::new(),
            },
        );
        Some(name)
    };

    let handler = match target {
        QuickTarget::Handler(file) => add_module("handler", file),
        QuickTarget::Upstream(_) => None,
    };
    let filters: Vec<FilterRef> = filters
        .iter()
        .enumerate()
        .filter_map(|(i, file)| add_module(&format!("filter[{i}]"), file))
        .map(|module| FilterRef {
            module,
            fail: FailPolicy::Closed,
            response_body: false,
            max_body_bytes: MAX_BODY,
        })
        .collect();

    let mut edge = match target {
        QuickTarget::Upstream(url) => match cathedral_config::quick_upstream(url, region) {
            Ok(edge) => edge,
            Err(e) => {
                errors.extend(e.0);
                return Err(ConfigErrors(errors));
            }
        },
        QuickTarget::Handler(_) => match handler {
            Some(module) => handler_config(module, region),
            None => return Err(ConfigErrors(errors)),
        },
    };
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    for route in &mut edge.routes {
        route.filters = filters.clone();
    }
    edge.modules = modules;
    Ok(edge)
}

/// One catch-all route named `handler`, answered by `module` with no
/// backends (its outgoing requests are all refused). Handler routes are not
/// cached: the component answers every request, as under `wasmtime serve`.
fn handler_config(module: String, region: &str) -> EdgeConfig {
    let route = Route {
        name: "handler".to_owned(),
        hosts: Vec::new(),
        path_prefix: "/".to_owned(),
        target: RouteTarget::Handler(HandlerTarget {
            module,
            backends: Vec::new(),
        }),
        host_header: HostHeader::Preserve,
        response_headers: Vec::new(),
        cache: None,
        rate_limits: Vec::new(),
        user_id: None,
        filters: Vec::new(),
    };
    EdgeConfig {
        region: region.to_owned(),
        upstreams: BTreeMap::new(),
        routes: vec![route],
        rate_limits: BTreeMap::new(),
        modules: BTreeMap::new(),
    }
}

/// `file` made absolute, if it is a readable file.
fn component_path(file: &Path) -> Result<PathBuf, String> {
    let path =
        std::path::absolute(file).map_err(|e| format!("cannot resolve {}: {e}", file.display()))?;
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        Ok(_) => Err(format!("not a file: {}", path.display())),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// A module name from the file's stem: lower-case letters, digits, `-` and
/// `_`, at most 64 characters (`Hello World.wasm` → `hello-world`).
pub fn module_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "module".to_owned()
    } else {
        name
    }
}

/// `name`, or `name-2`, `name-3`, ... when it is taken (the same file given
/// twice, or two files with one stem).
fn unique_name(name: &str, taken: &BTreeMap<String, ModuleConfig>) -> String {
    if !taken.contains_key(name) {
        return name.to_owned();
    }
    // Bounded: at most one more than the names taken.
    (2..=taken.len() + 2)
        .map(|n| {
            let suffix = format!("-{n}");
            let keep = 64usize.saturating_sub(suffix.len()).min(name.len());
            format!("{}{suffix}", &name[..keep])
        })
        .find(|candidate| !taken.contains_key(candidate))
        .unwrap_or_else(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_come_from_the_file_stem() {
        assert_eq!(module_name(Path::new("/x/personalize.wasm")), "personalize");
        assert_eq!(module_name(Path::new("Hello World.wasm")), "hello-world");
        assert_eq!(module_name(Path::new("/x/.wasm")), "-wasm");
        assert_eq!(module_name(Path::new("/")), "module");
        assert_eq!(module_name(&PathBuf::from("a".repeat(80))).len(), 64);
    }

    #[test]
    fn the_same_file_twice_gets_two_names() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.wasm");
        std::fs::write(&file, b"not checked here").unwrap();
        let edge = edge_config(
            &QuickTarget::Handler(file.clone()),
            &[file.clone(), file],
            "us-east-1",
            MEMORY,
        )
        .unwrap();
        let names: Vec<&str> = edge.modules.keys().map(String::as_str).collect();
        assert_eq!(names, ["f", "f-2", "f-3"]);
        let route = &edge.routes[0];
        assert_eq!(
            route.target,
            RouteTarget::Handler(HandlerTarget {
                module: "f".into(),
                backends: Vec::new()
            })
        );
        let filters: Vec<&str> = route.filters.iter().map(|f| f.module.as_str()).collect();
        assert_eq!(filters, ["f-2", "f-3"]);
        assert!(route.filters.iter().all(|f| f.fail == FailPolicy::Closed));
    }

    #[test]
    fn missing_files_are_command_line_errors() {
        let errors = edge_config(
            &QuickTarget::Upstream("http://127.0.0.1:9".into()),
            &[PathBuf::from("/no/such/filter.wasm")],
            "us-east-1",
            MEMORY,
        )
        .unwrap_err();
        let text = errors.0[0].to_string();
        assert!(
            text.starts_with("<command line>: filter[0]: cannot read"),
            "{text}"
        );
        let errors = edge_config(
            &QuickTarget::Handler(PathBuf::from("/no/such/handler.wasm")),
            &[],
            "us-east-1",
            MEMORY,
        )
        .unwrap_err();
        assert!(errors.0[0].to_string().contains("handler: cannot read"));
    }

    #[test]
    fn memory_fits_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.wasm");
        std::fs::write(&file, b"").unwrap();
        let edge = edge_config(&QuickTarget::Handler(file), &[], "us-east-1", 16 << 20).unwrap();
        assert_eq!(edge.modules["h"].memory_limit_bytes, 16 << 20);
    }
}
