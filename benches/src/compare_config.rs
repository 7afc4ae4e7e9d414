//! Configuration files of the comparison's cathedral nodes (`cathedral serve --config`): a
//! bootstrap file, an edge file and the region overlay, generated as text (pure) and written
//! into a directory. Schema: docs/configuration.md; `cathedral config check` accepts every
//! kind (tested).
//!
//! Every node: one plain listener, the admin API on its own port, the defaults of
//! edge-config/node.toml for everything else, except `[limits] max_connections` = 16,384 —
//! the same connection ceiling nginx gets (`worker_connections`), above the 10,000-connection
//! scenario's load — and, for the filter scenario's two nodes, the demo's trusted proxy and
//! country header so the compliance module sees a client country.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::cache_config::{REGION, quoted, region_toml, write_files};
use crate::nginx_config::WORKER_CONNECTIONS;

/// The request header carrying the API key the `ratelimit` module counts by.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The header carrying the client's country (trusted from 127.0.0.1).
pub const COUNTRY_HEADER: &str = "x-client-country";

/// API key number `n` as the filter scenario's key table lists it and the generator sends it.
pub fn api_key(n: usize) -> String {
    format!("bench-key-{n}")
}

/// The generator's `--header` specs for the filter scenario: an API key and a user cycling
/// over `{n}`, and a client country.
pub fn filter_request_headers() -> Vec<String> {
    vec![
        format!("{API_KEY_HEADER}: bench-key-{{n}}"),
        "cookie: uid=user-{n}".to_owned(),
        format!("{COUNTRY_HEADER}: US"),
    ]
}

/// What a node does with its one catch-all route to the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// Cache on (route defaults): the cache-hit and 10,000-connection scenarios.
    CacheHit,
    /// `cache = false`: the proxy scenario.
    NoCache,
    /// The filter scenario's route — cache on, `user_id` from the `uid` cookie, the three
    /// demo modules loaded with their policies — with (`chain`) or without its filters.
    Filters { chain: bool, api_keys: usize },
}

/// One node's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSpec {
    pub kind: NodeKind,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub origin: SocketAddr,
}

/// Paths of the three demo modules (`ratelimit`, `compliance`, `personalize`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modules {
    pub ratelimit: PathBuf,
    pub compliance: PathBuf,
    pub personalize: PathBuf,
}

/// The bootstrap file.
pub fn bootstrap_toml(spec: &NodeSpec) -> String {
    let mut out = format!(
        "# cathedral-bench compare: {:?}\n\
         [node]\n\
         region = {region}\n\
         edge_config = \"edge.toml\"\n\
         regions_dir = \"regions\"\n",
        spec.kind,
        region = quoted(REGION),
    );
    if matches!(spec.kind, NodeKind::Filters { .. }) {
        let _ = writeln!(
            out,
            "trusted_proxies = [\"127.0.0.1/32\"]\ncountry_header = {}",
            quoted(COUNTRY_HEADER)
        );
    }
    let _ = write!(
        out,
        "\n[[listen]]\naddr = {listen}\n\n[admin]\nlisten = {admin}\n\n\
         [limits]\nmax_connections = {WORKER_CONNECTIONS}\n",
        listen = quoted(&spec.listen.to_string()),
        admin = quoted(&spec.admin.to_string()),
    );
    out
}

/// The edge file.
pub fn edge_toml(spec: &NodeSpec, modules: &Modules) -> String {
    let mut out = format!(
        "[upstreams.origin]\ntargets = [{}]\n",
        quoted(&format!("http://{}", spec.origin))
    );
    let NodeKind::Filters { chain, api_keys } = spec.kind else {
        out.push_str("\n[routes.bench]\npath = \"/\"\nupstream = \"origin\"\n");
        if spec.kind == NodeKind::NoCache {
            out.push_str("cache = false\n");
        }
        return out;
    };
    // The ratelimit module's key table, the format its docs give for large key sets: one
    // `"<key>" = "bench"` line per key.
    let keys: String = (0..api_keys)
        .map(|n| format!("{} = \"bench\"\n", quoted(&api_key(n))))
        .collect();
    let _ = write!(
        out,
        r#"
# Limits far above the offered load: the scenario prices the chain, not 429s.
[rate_limits.bench-keys]
rate = 1000000
per = "1s"
burst = 1000000
key = "header:{API_KEY_HEADER}"
max_keys = 100000

[rate_limits.bench-anon]
rate = 1000000
per = "1s"
burst = 1000000

[modules.ratelimit]
path = {ratelimit}
rate_limits = ["bench-keys", "bench-anon"]

[modules.ratelimit.config]
api_key_header = "{API_KEY_HEADER}"
exempt = ["/health"]

[modules.ratelimit.config.anonymous]
policy = "bench-anon"
quota = 1000000
window = 1

[modules.ratelimit.config.tiers.bench]
policy = "bench-keys"
quota = 1000000
window = 1

[modules.ratelimit.config.keys]
{keys}
[modules.personalize]
path = {personalize}
cpu_deadline = "50ms"
wall_timeout = "1s"
memory = "32MiB"

[modules.personalize.config]
user_cookie = "uid"
header = "x-personalization"
primary = "hero"

[modules.personalize.config.experiment]
hero = ["classic:50", "edge-first:50"]
cta = ["try-it", "read-the-docs"]

[modules.personalize.config.flag]
new-nav = "10%"
dark-mode = "100%"
live-chat = "off"

[modules.compliance]
path = {compliance}
cpu_deadline = "50ms"
wall_timeout = "1s"
memory = "32MiB"

[modules.compliance.config.consent]
required = false
cookie = "consent"

[modules.compliance.config.redact]
paths = ["/api/"]
replacement = "[redacted]"
fields = ["ssn", "tax_id", "card_number"]

[[modules.compliance.config.blocks]]
paths = ["/downloads/enterprise"]
countries = ["CU", "IR", "KP", "SY"]
policy = "https://cathedral.example/legal/export-controls"
reason = "Export-controlled software is not available in your country."

[modules.compliance.config.headers]
x-data-region = "us"

[routes.bench]
path = "/"
upstream = "origin"
user_id = "cookie:uid"
"#,
        ratelimit = quoted(&modules.ratelimit.display().to_string()),
        personalize = quoted(&modules.personalize.display().to_string()),
        compliance = quoted(&modules.compliance.display().to_string()),
        keys = keys,
    );
    if chain {
        // The demo's orders and fail policies: the API route's ratelimit then compliance
        // (both closed), the site route's personalize (open, reading bodies up to 256 KiB).
        out.push_str(
            "filters = [\n    \"ratelimit\",\n    \"compliance\",\n    \
             { module = \"personalize\", fail = \"open\", response_body = true, max_body = \"256KiB\" },\n]\n",
        );
    }
    out
}

/// The generated files, relative path → contents.
pub fn files(spec: &NodeSpec, modules: &Modules) -> Vec<(PathBuf, String)> {
    vec![
        (PathBuf::from("node.toml"), bootstrap_toml(spec)),
        (PathBuf::from("edge.toml"), edge_toml(spec, modules)),
        (
            Path::new("regions").join(format!("{REGION}.toml")),
            region_toml(),
        ),
    ]
}

/// Writes [`files`] under `dir` (created) and returns the bootstrap file's path.
pub fn write(dir: &Path, spec: &NodeSpec, modules: &Modules) -> anyhow::Result<PathBuf> {
    write_files(dir, files(spec, modules))
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;
    use std::process::Command;

    fn spec(kind: NodeKind) -> NodeSpec {
        NodeSpec {
            kind,
            listen: SocketAddr::from(([127, 0, 0, 1], 18_081)),
            admin: SocketAddr::from(([127, 0, 0, 1], 19_091)),
            origin: SocketAddr::from(([127, 0, 0, 1], 18_001)),
        }
    }

    fn modules() -> Modules {
        Modules {
            ratelimit: crate::peers::filter_module("ratelimit"),
            compliance: crate::peers::filter_module("compliance"),
            personalize: crate::peers::filter_module("personalize"),
        }
    }

    const FILTERS: NodeKind = NodeKind::Filters {
        chain: true,
        api_keys: 3,
    };
    const NO_FILTERS: NodeKind = NodeKind::Filters {
        chain: false,
        api_keys: 3,
    };

    #[test]
    fn the_two_filter_nodes_differ_only_in_their_filters() {
        let m = modules();
        let with = edge_toml(&spec(FILTERS), &m);
        let without = edge_toml(&spec(NO_FILTERS), &m);
        let (head, filters) = with
            .split_once("filters = [")
            .expect("the chain node lists filters");
        assert_eq!(head, without);
        assert!(filters.contains("\"ratelimit\",\n    \"compliance\",\n"));
        assert!(with.contains(
            "[modules.ratelimit.config.keys]\n\"bench-key-0\" = \"bench\"\n\
             \"bench-key-1\" = \"bench\"\n\"bench-key-2\" = \"bench\"\n\n"
        ));
        assert!(!with.contains("keys = ["), "no tier lists the keys");
        assert_eq!(
            bootstrap_toml(&spec(FILTERS)).replace("true", "false"),
            bootstrap_toml(&spec(NO_FILTERS))
        );
        assert!(bootstrap_toml(&spec(FILTERS)).contains(
            "trusted_proxies = [\"127.0.0.1/32\"]\ncountry_header = \"x-client-country\"\n"
        ));
    }

    #[test]
    fn cache_and_proxy_nodes() {
        let m = modules();
        let hit = edge_toml(&spec(NodeKind::CacheHit), &m);
        let off = edge_toml(&spec(NodeKind::NoCache), &m);
        assert_eq!(format!("{hit}cache = false\n"), off);
        assert!(!hit.contains("modules"));
        let boot = bootstrap_toml(&spec(NodeKind::CacheHit));
        assert!(
            boot.contains("[limits]\nmax_connections = 16384\n"),
            "{boot}"
        );
        assert!(!boot.contains("trusted_proxies"));
    }

    #[test]
    fn generator_headers_use_the_listed_keys() -> anyhow::Result<()> {
        let sets = crate::load::HeaderSets::parse(&filter_request_headers(), 3)?;
        let first = sets.for_request(2, 0, 64);
        let values: Vec<_> = first
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?")))
            .collect();
        assert_eq!(
            values,
            [
                format!("x-api-key: {}", api_key(2)),
                "cookie: uid=user-2".to_owned(),
                "x-client-country: US".to_owned()
            ]
        );
        Ok(())
    }

    /// The cathedral binary to check configs with (as in `cache_config`'s test).
    fn cathedral_binary() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("CATHEDRAL_BIN") {
            return Some(PathBuf::from(path));
        }
        let root = crate::harness::workspace_root();
        ["target/debug/cathedral", "target/release/cathedral"]
            .into_iter()
            .map(|p| root.join(p))
            .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
            .max()
            .map(|(_, p)| p)
    }

    /// Every kind of node passes `cathedral config check`, with the effective configuration
    /// it prints showing the intended route, limits and filters.
    #[test]
    fn generated_configs_pass_cathedral_config_check() -> anyhow::Result<()> {
        let Some(cathedral) = cathedral_binary() else {
            eprintln!("SKIPPED: no cathedral binary (build it or set CATHEDRAL_BIN)");
            return Ok(());
        };
        let m = modules();
        if [&m.ratelimit, &m.compliance, &m.personalize]
            .iter()
            .any(|p| !p.is_file())
        {
            eprintln!("SKIPPED: the demo modules are not built (building cathedral builds them)");
            return Ok(());
        }
        let root = std::env::temp_dir().join(format!(
            "cathedral-bench-compare-config-{}",
            std::process::id()
        ));
        for (i, kind) in [NodeKind::CacheHit, NodeKind::NoCache, FILTERS, NO_FILTERS]
            .into_iter()
            .enumerate()
        {
            let node = write(&root.join(i.to_string()), &spec(kind), &m)?;
            let output = Command::new(&cathedral)
                .args(["config", "check", "--config"])
                .arg(&node)
                .output()
                .with_context(|| format!("running {}", cathedral.display()))?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "{kind:?}: config check failed ({}):\n{}{stdout}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            for expected in [
                "addr = \"127.0.0.1:18081\"\n",
                "max_connections = 16384\n",
                "targets = [\"http://127.0.0.1:18001\"]\n",
            ] {
                assert!(
                    stdout.contains(expected),
                    "{kind:?}: {expected:?} in:\n{stdout}"
                );
            }
            assert_eq!(
                stdout.contains("cache = false\n"),
                kind == NodeKind::NoCache,
                "{kind:?}:\n{stdout}"
            );
            assert_eq!(
                stdout.contains("module = \"personalize\""),
                kind == FILTERS,
                "{kind:?}:\n{stdout}"
            );
            // The module reads each key's tier from its key table, one key per API key.
            let filters = matches!(kind, NodeKind::Filters { .. });
            for expected in [
                "\"keys.bench-key-0\" = \"bench\"\n",
                "\"keys.bench-key-2\" = \"bench\"\n",
                "\"tiers.bench.policy\" = \"bench-keys\"\n",
            ] {
                assert_eq!(
                    stdout.contains(expected),
                    filters,
                    "{kind:?}: {expected:?} in:\n{stdout}"
                );
            }
            assert!(!stdout.contains("tiers.bench.keys"), "{kind:?}:\n{stdout}");
        }
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }
}
