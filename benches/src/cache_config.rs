//! Configuration files for the cache scenario's cathedral nodes: a bootstrap file, an edge
//! file and the region overlay it requires, generated as text (pure) and written into a
//! directory. Schema: docs/configuration.md; `cathedral config check --config FILE` accepts
//! them (tested).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The region every generated node runs as; its overlay is generated too.
pub const REGION: &str = "us-east-1";

/// Which cache configuration a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum CacheMode {
    /// Cache on, `[cache] integrity` left at its default (one memory hit in 100 re-hashed).
    Sampled,
    /// Cache on, `integrity = "always"`: every memory hit re-hashes the body.
    Always,
    /// `cache = false` on the route: every request goes to the origin.
    Off,
    /// Cache on (default integrity) with a native rate-limit policy on the
    /// route whose limits are far above the offered load: what checking a
    /// policy costs on the cache-hit path.
    RateLimited,
}

impl CacheMode {
    pub const ALL: [CacheMode; 4] = [
        CacheMode::Sampled,
        CacheMode::Always,
        CacheMode::Off,
        CacheMode::RateLimited,
    ];

    /// The system's name in tables and results.
    pub fn system_name(self) -> &'static str {
        match self {
            CacheMode::Sampled => "cache-1in100",
            CacheMode::Always => "cache-always",
            CacheMode::Off => "cache-off",
            CacheMode::RateLimited => "cache-ratelimit",
        }
    }

    /// One line for the notes.
    pub fn description(self) -> &'static str {
        match self {
            CacheMode::Sampled => {
                "cache on, default integrity (1 memory hit in 100 re-hashed with blake3)"
            }
            CacheMode::Always => "cache on, `integrity = \"always\"` (every hit re-hashed)",
            CacheMode::Off => "`cache = false` on the route: every request goes to the origin",
            CacheMode::RateLimited => {
                "cache on, plus a native rate-limit policy per client IP with limits far above the load"
            }
        }
    }

    /// Whether requests after the first should be answered from the cache.
    pub fn caches(self) -> bool {
        self != CacheMode::Off
    }
}

/// One node's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSpec {
    pub mode: CacheMode,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub origin: SocketAddr,
}

/// A TOML basic string (quotes, backslashes and control characters escaped).
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The bootstrap file: one plain listener, the admin API, the node's region and files, and
/// `[cache] integrity = "always"` for [`CacheMode::Always`] (nothing otherwise: defaults).
pub fn bootstrap_toml(spec: &NodeSpec) -> String {
    let mut out = format!(
        "# cathedral-bench cache scenario: {}\n\
         [node]\n\
         region = {region}\n\
         edge_config = \"edge.toml\"\n\
         regions_dir = \"regions\"\n\
         \n\
         [[listen]]\n\
         addr = {listen}\n\
         \n\
         [admin]\n\
         listen = {admin}\n",
        spec.mode.system_name(),
        region = quoted(REGION),
        listen = quoted(&spec.listen.to_string()),
        admin = quoted(&spec.admin.to_string()),
    );
    if spec.mode == CacheMode::Always {
        out.push_str("\n[cache]\nintegrity = \"always\"\n");
    }
    out
}

/// The edge file: one upstream (the origin) and one catch-all route to it, with
/// `cache = false` for [`CacheMode::Off`].
pub fn edge_toml(spec: &NodeSpec) -> String {
    let mut out = format!(
        "[upstreams.origin]\n\
         targets = [{}]\n\
         \n\
         [routes.bench]\n\
         path = \"/\"\n\
         upstream = \"origin\"\n",
        quoted(&format!("http://{}", spec.origin))
    );
    match spec.mode {
        CacheMode::Off => out.push_str("cache = false\n"),
        CacheMode::RateLimited => out.push_str(
            "rate_limits = [\"bench\"]\n\
             \n\
             [rate_limits.bench]\n\
             rate = 1000000\n\
             per = \"1s\"\n\
             burst = 1000000\n\
             key = \"client-ip\"\n",
        ),
        CacheMode::Sampled | CacheMode::Always => {}
    }
    out
}

/// The overlay `regions/<REGION>.toml`: only the required `[region]` table.
pub fn region_toml() -> String {
    format!(
        "[region]\nid = {}\nname = \"Benchmark node\"\njurisdiction = \"US\"\n",
        quoted(REGION)
    )
}

/// The generated files, relative path → contents.
pub fn files(spec: &NodeSpec) -> Vec<(PathBuf, String)> {
    vec![
        (PathBuf::from("node.toml"), bootstrap_toml(spec)),
        (PathBuf::from("edge.toml"), edge_toml(spec)),
        (
            Path::new("regions").join(format!("{REGION}.toml")),
            region_toml(),
        ),
    ]
}

/// Writes [`files`] under `dir` (created) and returns the bootstrap file's path, the one to
/// give `cathedral serve --config`.
pub fn write(dir: &Path, spec: &NodeSpec) -> anyhow::Result<PathBuf> {
    write_files(dir, files(spec))
}

/// Writes `files` (path relative to `dir`, text) under `dir` and returns the path of the
/// bootstrap file among them, `node.toml`.
pub fn write_files(dir: &Path, files: Vec<(PathBuf, String)>) -> anyhow::Result<PathBuf> {
    for (relative, text) in files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir.join("node.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn spec(mode: CacheMode) -> NodeSpec {
        NodeSpec {
            mode,
            listen: SocketAddr::from(([127, 0, 0, 1], 18_081)),
            admin: SocketAddr::from(([127, 0, 0, 1], 19_091)),
            origin: SocketAddr::from(([127, 0, 0, 1], 18_001)),
        }
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(quoted("a"), "\"a\"");
        assert_eq!(quoted("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }

    #[test]
    fn modes_differ_only_where_they_should() {
        let [sampled, always, off, limited] =
            CacheMode::ALL.map(|m| (bootstrap_toml(&spec(m)), edge_toml(&spec(m))));
        assert_eq!(
            limited.0.replace("cache-ratelimit", "cache-1in100"),
            sampled.0
        );
        assert!(limited.1.contains("rate_limits = [\"bench\"]\n"));
        assert!(limited.1.contains("[rate_limits.bench]\nrate = 1000000\n"));
        assert!(!sampled.0.contains("[cache]") && !off.0.contains("[cache]"));
        assert!(always.0.contains("[cache]\nintegrity = \"always\"\n"));
        assert!(off.1.ends_with("cache = false\n"));
        assert_eq!(sampled.1, always.1);
        assert!(!sampled.1.contains("cache"));
        assert!(sampled.0.contains("addr = \"127.0.0.1:18081\"\n"));
        assert!(
            sampled
                .0
                .contains("[admin]\nlisten = \"127.0.0.1:19091\"\n")
        );
        assert!(
            sampled
                .1
                .contains("targets = [\"http://127.0.0.1:18001\"]\n")
        );
        let names: Vec<_> = CacheMode::ALL.iter().map(|m| m.system_name()).collect();
        assert_eq!(
            names,
            [
                "cache-1in100",
                "cache-always",
                "cache-off",
                "cache-ratelimit"
            ]
        );
    }

    /// The `cathedral` binary to check configs with: `CATHEDRAL_BIN`, else the newer of
    /// target/debug/cathedral and target/release/cathedral.
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

    /// Every generated configuration passes `cathedral config check`, and the effective
    /// configuration it prints is the one intended (addresses, integrity mode, route cache).
    #[test]
    fn generated_configs_pass_cathedral_config_check() -> anyhow::Result<()> {
        let Some(cathedral) = cathedral_binary() else {
            eprintln!(
                "SKIPPED: no cathedral binary; build it (`cargo build -p cathedral`) or set \
                 CATHEDRAL_BIN to check the generated configs with `cathedral config check`"
            );
            return Ok(());
        };
        let root = std::env::temp_dir().join(format!(
            "cathedral-bench-config-check-{}",
            std::process::id()
        ));
        for mode in CacheMode::ALL {
            let spec = spec(mode);
            let dir = root.join(mode.system_name());
            let node = write(&dir, &spec)?;
            let output = Command::new(&cathedral)
                .args(["config", "check", "--config"])
                .arg(&node)
                .output()
                .with_context(|| format!("running {}", cathedral.display()))?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success(),
                "{} config check --config {} failed ({}):\n{stderr}{stdout}",
                cathedral.display(),
                node.display(),
                output.status
            );
            let integrity = if mode == CacheMode::Always {
                "integrity = \"always\"\n"
            } else {
                "integrity = \"1/100\"\n"
            };
            for expected in [
                "region = \"us-east-1\"\n",
                "addr = \"127.0.0.1:18081\"\n",
                "[admin]\nlisten = \"127.0.0.1:19091\"\n",
                integrity,
                "targets = [\"http://127.0.0.1:18001\"]\n",
                "upstream = \"origin\"\n",
            ] {
                assert!(
                    stdout.contains(expected),
                    "{mode:?}: expected {expected:?} in:\n{stdout}"
                );
            }
            assert_eq!(
                stdout.contains("cache = false\n"),
                mode == CacheMode::Off,
                "{mode:?}:\n{stdout}"
            );
        }
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }
}
