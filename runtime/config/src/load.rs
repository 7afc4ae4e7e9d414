//! Entry points: reading the bootstrap file and the files it names, built-in defaults, and quick mode.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use toml::Table;

use crate::bootstrap::{self, Built, Overrides};
use crate::edge::{
    self, DEFAULT_CONNECT_TIMEOUT, DEFAULT_FIRST_BYTE_TIMEOUT, DEFAULT_POOL_IDLE_TIMEOUT,
    DEFAULT_POOL_MAX_IDLE, DEFAULT_TOTAL_TIMEOUT, Source,
};
use crate::error::{ConfigError, ConfigErrors, FileInfo, Result, toml_string};
use crate::modules::MemoryCap;
use crate::types::{
    Bootstrap, ClassChoice, EdgeConfig, HostHeader, Route, RouteCache, RouteTarget, Scheme,
    Upstream, UpstreamProtocol, UpstreamTls,
};
use crate::validate::{self, FileTree, LocalFiles};

/// The pseudo-file errors about built-in defaults (and overrides applied to them) name.
const DEFAULTS_FILE: &str = "<built-in defaults>";
/// The pseudo-file errors about quick mode's arguments name.
const COMMAND_LINE: &str = "<command line>";

/// Reads and validates the bootstrap file at `path`, then applies `overrides`.
/// Relative paths in the file resolve against its directory and are made absolute.
pub fn load_bootstrap(path: &Path, overrides: &Overrides) -> Result<Bootstrap> {
    read_bootstrap(path, overrides).result
}

/// Reads `bootstrap.edge_config` and `regions_dir/<region>.toml`, merges the
/// overlay over the global file, and validates the result. Every module's
/// `memory` must fit the bootstrap's `wasm.max_memory`.
pub fn load_edge(bootstrap: &Bootstrap) -> Result<EdgeConfig> {
    let cap = MemoryCap {
        bytes: bootstrap.wasm.max_memory_bytes,
        label: String::from("the bootstrap's wasm.max_memory"),
    };
    edge_from_files(
        &bootstrap.region,
        &bootstrap.edge_config,
        &bootstrap.regions_dir,
        None,
        Some(&cap),
    )
}

/// [`load_bootstrap`] then [`load_edge`]. When the bootstrap is wrong but
/// still says where the edge config is, the edge config is checked as well
/// and the errors of both are returned together.
///
/// Every module's `memory` must fit the bootstrap's `wasm.max_memory`
/// (checked here, where both are known; [`parse_edge`] cannot).
pub fn load(path: &Path, overrides: &Overrides) -> Result<(Bootstrap, EdgeConfig)> {
    let Built {
        location,
        max_memory,
        result,
    } = read_bootstrap(path, overrides);
    let cap = max_memory.map(|bytes| MemoryCap {
        bytes,
        label: format!("wasm.max_memory in {}", path.display()),
    });
    match result {
        Ok(bootstrap) => {
            let edge = edge_from_files(
                &bootstrap.region,
                &bootstrap.edge_config,
                &bootstrap.regions_dir,
                Some(path),
                cap.as_ref(),
            )?;
            Ok((bootstrap, edge))
        }
        Err(mut errors) => {
            if let Some(location) = location
                && let Err(more) = edge_from_files(
                    &location.region,
                    &location.edge_config,
                    &location.regions_dir,
                    Some(path),
                    cap.as_ref(),
                )
            {
                errors.0.extend(more);
            }
            Err(errors)
        }
    }
}

/// Validates an edge config given as text: `global`, with the region
/// `overlay` merged over it if given, for the node's `region`. An overlay's
/// `[region] id` must equal both its file stem and `region`.
///
/// Modules' `memory` is checked against the 4 GiB ceiling only: the
/// bootstrap's `wasm.max_memory` is not known here (see [`load`]).
pub fn parse_edge(
    global: Source<'_>,
    overlay: Option<Source<'_>>,
    region: &str,
) -> Result<EdgeConfig> {
    edge::parse(global, overlay, region, None, &LocalFiles)
}

/// [`parse_edge`] for an edge config whose file references (module
/// components, static roots, CA files) are checked against `files` instead
/// of the local filesystem — a signed bundle's file list — and whose
/// modules' `memory` must fit `memory_cap` when given.
pub fn parse_edge_in(
    global: Source<'_>,
    overlay: Option<Source<'_>>,
    region: &str,
    memory_cap: Option<&MemoryCap>,
    files: &dyn FileTree,
) -> Result<EdgeConfig> {
    edge::parse(global, overlay, region, memory_cap, files)
}

/// The bootstrap with no file: plain listener 127.0.0.1:8080, admin
/// 127.0.0.1:9090, region `us-east-1`, default limits and cache, `edge.toml` and
/// `regions/` in the current directory; `overrides` applied and validated.
/// The Wasm settings are [`WasmSettings::default`](crate::WasmSettings):
/// with no bootstrap file to put it next to, there is no artifact cache
/// (`artifact_cache` is `None`, modules are compiled at every start).
pub fn default_bootstrap(overrides: &Overrides) -> Result<Bootstrap> {
    let file = FileInfo {
        name: PathBuf::from(DEFAULTS_FILE),
        base_dir: validate::absolute(Path::new(".")),
    };
    bootstrap::build(&Table::new(), file, overrides)
        .result
        .map(|mut bootstrap| {
            bootstrap.wasm.artifact_cache = None;
            bootstrap
        })
}

/// Quick mode (`cathedral serve --upstream URL`): one upstream named
/// `upstream` built from `url` (http or https, no path), one catch-all route
/// named `upstream` to it, every other setting at its default except the
/// route's cache, which uses no content-class defaults (`class = "none"`).
/// No rate-limit policies.
pub fn quick_upstream(url: &str, region: &str) -> Result<EdgeConfig> {
    let mut errors = Vec::new();
    if let Err(message) = validate::check_region_id(region) {
        errors.push(ConfigError::new(COMMAND_LINE, "node.region", message));
    }
    let target = validate::parse_target(url)
        .map_err(|message| errors.push(ConfigError::new(COMMAND_LINE, "upstream", message)))
        .ok();
    let (Some((scheme, authority)), true) = (target, errors.is_empty()) else {
        return Err(ConfigErrors(errors));
    };
    const NAME: &str = "upstream";
    let upstream = Upstream {
        name: NAME.to_owned(),
        scheme,
        targets: vec![authority],
        protocol: UpstreamProtocol::Http1,
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
        total_timeout: DEFAULT_TOTAL_TIMEOUT,
        pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
        pool_max_idle: DEFAULT_POOL_MAX_IDLE,
        tls: (scheme == Scheme::Https).then_some(UpstreamTls {
            ca_file: None,
            server_name: None,
        }),
    };
    let route = Route {
        name: NAME.to_owned(),
        hosts: Vec::new(),
        path_prefix: String::from("/"),
        target: RouteTarget::Upstream(NAME.to_owned()),
        host_header: HostHeader::Preserve,
        response_headers: Vec::new(),
        // Pure RFC 9111: without an edge config nobody chose class defaults.
        cache: Some(RouteCache {
            class: ClassChoice::Disabled,
            ..RouteCache::default()
        }),
        rate_limits: Vec::new(),
        user_id: None,
        filters: Vec::new(),
    };
    Ok(EdgeConfig {
        region: region.to_owned(),
        upstreams: [(NAME.to_owned(), upstream)].into_iter().collect(),
        routes: vec![route],
        rate_limits: BTreeMap::new(),
        modules: BTreeMap::new(),
    })
}

fn read_bootstrap(path: &Path, overrides: &Overrides) -> Built {
    let failed = |error: ConfigError| Built {
        location: None,
        max_memory: None,
        result: Err(error.into()),
    };
    let text = match read(path, path) {
        Ok(text) => text,
        Err(error) => return failed(error),
    };
    let table = match edge::parse_toml(&text, path) {
        Ok(table) => table,
        Err(error) => return failed(error),
    };
    let file = FileInfo {
        name: path.to_path_buf(),
        base_dir: validate::absolute(parent(path)),
    };
    bootstrap::build(&table, file, overrides)
}

fn edge_from_files(
    region: &str,
    edge_config: &Path,
    regions_dir: &Path,
    bootstrap_file: Option<&Path>,
    memory_cap: Option<&MemoryCap>,
) -> Result<EdgeConfig> {
    let region_file = bootstrap_file.map_or_else(|| shown(regions_dir), Path::to_path_buf);
    // The region names a file: never let it name anything but one in regions_dir.
    if let Err(message) = validate::check_region_id(region) {
        return Err(ConfigError::new(region_file, "node.region", message).into());
    }
    let mut errors = Vec::new();
    let global_name = shown(edge_config);
    let global_text = read(edge_config, &global_name)
        .map_err(|e| errors.push(e))
        .ok();
    let overlay_path = regions_dir.join(format!("{region}.toml"));
    let overlay_name = shown(&overlay_path);
    let overlay_text = match std::fs::read_to_string(&overlay_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            errors.push(ConfigError::new(
                region_file,
                "node.region",
                format!(
                    "no overlay file {} for region {} ({})",
                    overlay_name.display(),
                    toml_string(region),
                    known_regions(regions_dir)
                ),
            ));
            None
        }
        Err(e) => {
            errors.push(read_error(&overlay_name, &e));
            None
        }
    };
    let (Some(global_text), Some(overlay_text)) = (global_text, overlay_text) else {
        return Err(ConfigErrors(errors));
    };
    edge::parse(
        Source {
            name: &global_name,
            text: &global_text,
            base_dir: parent(edge_config),
        },
        Some(Source {
            name: &overlay_name,
            text: &overlay_text,
            base_dir: regions_dir,
        }),
        region,
        memory_cap,
        &LocalFiles,
    )
}

/// The directory of `path`, `.` for a bare file name.
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// `path` as shown in errors: relative to the current directory when inside it.
fn shown(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf())
}

fn read(path: &Path, name: &Path) -> std::result::Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| read_error(name, &e))
}

fn read_error(name: &Path, error: &io::Error) -> ConfigError {
    let message = match error.kind() {
        io::ErrorKind::NotFound => String::from("file not found"),
        io::ErrorKind::InvalidData => String::from("not UTF-8 text"),
        _ => format!("cannot read the file: {error}"),
    };
    ConfigError::new(name, "", message)
}

/// "known regions: a, b" from the `*.toml` files in `dir`.
fn known_regions(dir: &Path) -> String {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            return format!(
                "cannot read the regions directory {}: {e}",
                shown(dir).display()
            );
        }
    };
    let mut regions: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .filter_map(|path| path.file_stem().and_then(|s| s.to_str()).map(str::to_owned))
        .collect();
    regions.sort();
    if regions.is_empty() {
        format!("{} has no region overlays", shown(dir).display())
    } else {
        format!("known regions: {}", regions.join(", "))
    }
}
