//! `cache`: the cache-hit scenario. For each object size, one fixed-body origin sending a
//! cacheable response, and in front of it three cathedral nodes started from generated config
//! files ([`crate::cache_config`]): cache on with the default integrity sampling, cache on
//! with `integrity = "always"`, and caching off on the route. The origin measured directly
//! is the ceiling. Every run measures all four, rotating the order; the origin's request
//! counter is read around every measurement so the table shows that hits never reached it.
//!
//! Everything else — children, pinning, runs, medians, ratios, JSON, markdown — is the shared
//! harness ([`crate::harness`], [`crate::scenario`]).

use std::ffi::OsString;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::cache_config::{self, CacheMode, NodeSpec};
use crate::client;
use crate::harness::{self, Harness, RunnerArgs, RunnerConfig};
use crate::origin::{MAX_BODY_SIZE, ReplyHeaders, STATS_PATH};
use crate::process;
use crate::scenario::{Counter, RatioSpec, Scenario, SystemUnderTest};

/// The system measuring the origin directly.
pub const CEILING: &str = "ceiling";

/// Name of the origin's request counter in the results.
pub const ORIGIN_COUNTER: &str = "origin";

/// The `Cache-Status` field (RFC 9211); several field lines form one list.
const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// The path every request asks for (the origin ignores it; it is the cache key).
const OBJECT_PATH: &str = "/object";

/// Arguments of `cathedral-bench cache`.
#[derive(clap::Args, Debug, Clone)]
pub struct CacheArgs {
    #[command(flatten)]
    pub runner: RunnerArgs,
    /// Object sizes in bytes; each size is its own scenario (own processes, own table).
    #[arg(long, value_delimiter = ',', default_values_t = [1024usize, 102_400])]
    pub sizes: Vec<usize>,
    /// `Cache-Control` of the origin's responses.
    #[arg(long, default_value = "public, max-age=3600")]
    pub cache_control: String,
    /// `ETag` of the origin's responses ("" for none).
    #[arg(long, default_value = "\"cathedral-bench-v1\"")]
    pub etag: String,
}

/// Validated `cache` settings.
#[derive(Debug, Clone)]
struct CacheConfig {
    runner: RunnerConfig,
    sizes: Vec<usize>,
    origin_args: Vec<String>,
}

impl TryFrom<CacheArgs> for CacheConfig {
    type Error = anyhow::Error;

    fn try_from(args: CacheArgs) -> anyhow::Result<Self> {
        let runner = RunnerConfig::try_from(&args.runner)?;
        if args.sizes.is_empty() || args.sizes.len() > 8 {
            bail!("--sizes takes 1 to 8 sizes, not {}", args.sizes.len());
        }
        if let Some(size) = args.sizes.iter().find(|s| **s > MAX_BODY_SIZE) {
            bail!("--sizes: {size} exceeds {MAX_BODY_SIZE}");
        }
        let etag = (!args.etag.is_empty()).then_some(args.etag.as_str());
        // Validated here so a bad value fails before any process starts.
        ReplyHeaders::parse(Some(&args.cache_control), etag)?;
        let mut origin_args = vec!["--cache-control".to_owned(), args.cache_control.clone()];
        if let Some(etag) = etag {
            origin_args.extend(["--etag".to_owned(), etag.to_owned()]);
        }
        Ok(Self {
            runner,
            sizes: args.sizes,
            origin_args,
        })
    }
}

/// `1024` → `1KiB`, `102400` → `100KiB`, `1048576` → `1MiB`, otherwise `<n>B`.
pub fn size_label(bytes: usize) -> String {
    match bytes {
        0 => "0B".to_owned(),
        b if b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b}B"),
    }
}

/// Whether a `Cache-Status` field value has a member for cache `cathedral` with the `hit`
/// parameter (RFC 9211: `cathedral; hit; ttl=3599`). Members are split on commas outside
/// quoted strings; other caches' members are ignored.
pub fn cache_status_is_hit(value: &str) -> bool {
    split_outside_quotes(value, ',').into_iter().any(|member| {
        let mut parts = split_outside_quotes(member, ';').into_iter().map(str::trim);
        parts.next() == Some("cathedral") && parts.any(|p| p == "hit" || p == "hit=?1")
    })
}

fn split_outside_quotes(s: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// What the pre-measurement check saw for one system.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeCheck {
    system: String,
    url: String,
    /// `Cache-Status` of the probe (after one filling request for cathedral systems).
    cache_status: Option<String>,
    body_bytes: usize,
    /// Origin requests caused by the probe alone: 0 for a hit.
    origin_requests_for_probe: u64,
}

/// Entry point of `cathedral-bench cache`.
pub fn main(args: CacheArgs) -> anyhow::Result<()> {
    let config = CacheConfig::try_from(args)?;
    harness::block_on(async {
        for &size in &config.sizes {
            run_size(&config, size).await?;
        }
        Ok(())
    })
}

async fn run_size(config: &CacheConfig, size: usize) -> anyhow::Result<()> {
    let name = format!("cache-{}", size_label(size));
    let systems = 1 + CacheMode::ALL.len();
    let mut h = Harness::new(&name, config.runner.clone(), systems, "--config").await?;
    let origin = h.start_origin("origin", size, &config.origin_args).await?;
    let counter_url = format!("http://{origin}{STATS_PATH}");

    let ports = process::free_loopback_ports(2 * CacheMode::ALL.len())?;
    let mut nodes = Vec::new();
    let mut generated = serde_json::Map::new();
    for (mode, pair) in CacheMode::ALL.into_iter().zip(ports.chunks(2)) {
        let [listen, admin] = pair[..] else {
            bail!("expected two ports per node");
        };
        let spec = NodeSpec {
            mode,
            listen,
            admin,
            origin,
        };
        let node_toml = cache_config::write(&h.scratch.join(mode.system_name()), &spec)?;
        generated.insert(
            mode.system_name().to_owned(),
            cache_config::files(&spec)
                .into_iter()
                .map(|(path, text)| (path.display().to_string(), text.into()))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        );
        let args: Vec<OsString> = vec![
            "serve".into(),
            "--config".into(),
            node_toml.into(),
            "--log-format".into(),
            "json".into(),
        ];
        h.start_cathedral(mode.system_name(), &args, listen).await?;
        nodes.push(spec);
    }

    // Fill each cache, then check one request: a hit that does not reach the origin for the
    // caching nodes; an origin request for the others.
    let mut checks = Vec::new();
    let direct_url = format!("http://{origin}{OBJECT_PATH}");
    checks.push(probe_check(CEILING, &direct_url, None, &counter_url, size, 1, &[]).await?);
    for spec in &nodes {
        let url = format!("http://{}{OBJECT_PATH}", spec.listen);
        let expected_origin_requests = u64::from(!spec.mode.caches());
        let check = probe_check(
            spec.mode.system_name(),
            &url,
            Some(&url),
            &counter_url,
            size,
            expected_origin_requests,
            &[],
        )
        .await?;
        let hit = check
            .cache_status
            .as_deref()
            .is_some_and(cache_status_is_hit);
        if hit != spec.mode.caches() {
            bail!(
                "{}: Cache-Status {:?} after a filling request; expected {}",
                check.system,
                check.cache_status,
                if spec.mode.caches() {
                    "a hit"
                } else {
                    "no hit"
                }
            );
        }
        eprintln!(
            "[{name}] {}: Cache-Status {:?}, origin requests for the probe: {}",
            check.system,
            check.cache_status.as_deref().unwrap_or("(none)"),
            check.origin_requests_for_probe
        );
        checks.push(check);
    }
    h.check_alive()?;

    let mut systems = vec![SystemUnderTest {
        name: CEILING.into(),
        url: direct_url,
        process: "origin".into(),
    }];
    systems.extend(nodes.iter().map(|spec| SystemUnderTest {
        name: spec.mode.system_name().into(),
        url: format!("http://{}{OBJECT_PATH}", spec.listen),
        process: spec.mode.system_name().into(),
    }));
    let ratio = |label: &str, numerator: CacheMode, denominator: CacheMode| RatioSpec {
        label: label.into(),
        numerator: numerator.system_name().into(),
        denominator: denominator.system_name().into(),
    };
    let mut notes = vec![
        h.pinning.description.clone(),
        format!(
            "{} B objects ({}), origin headers: {}",
            size,
            size_label(size),
            config.origin_args.join(" ")
        ),
        format!("{CEILING}: the origin measured directly (bare hyper, fixed body)"),
    ];
    notes.extend(
        CacheMode::ALL
            .iter()
            .map(|m| format!("{}: {}", m.system_name(), m.description())),
    );
    notes.extend([
        "every node: `cathedral serve --config <generated node.toml> --log-format json`, access log \
         to a file, everything else at its defaults (cache memory 256 MiB, scrubber 200 entries/s)"
            .to_owned(),
        "all systems under test (origin and the three nodes) share the SUT CPUs; idle ones only \
         wait. The cache-off row includes the origin's work, like the proxy scenario's cathedral row"
            .to_owned(),
        "origin requests per run: the change of the origin's own counter over each measurement \
         (warm-up included), median over runs; in brackets per request the generator made"
            .to_owned(),
        "SUT CPUs, peak RSS: of the origin for the ceiling, of the node alone for the others"
            .to_owned(),
    ]);
    let scenario = Scenario {
        name: name.clone(),
        systems,
        baseline: CEILING.into(),
        ratios: vec![
            ratio("cache on ÷ cache off", CacheMode::Sampled, CacheMode::Off),
            ratio(
                "integrity always ÷ 1 in 100",
                CacheMode::Always,
                CacheMode::Sampled,
            ),
            ratio(
                "native rate-limit policy ÷ none",
                CacheMode::RateLimited,
                CacheMode::Sampled,
            ),
        ],
        counters: vec![Counter {
            name: ORIGIN_COUNTER.into(),
            url: counter_url,
        }],
        load: h.config.load.clone(),
        runs: h.config.runs,
        quiet: h.config.quiet.clone(),
        notes,
    };
    let checks_json = serde_json::json!({
        "probes": checks,
        "generated_config": generated,
    });
    let (result, _) = h.measure(scenario, Some(checks_json)).await?;

    // A hit row whose origin counter moved means the numbers are not cache hits.
    for row in &result.summary {
        let caching = CacheMode::ALL
            .iter()
            .any(|m| m.caches() && m.system_name() == row.system);
        let per_request = row
            .counters
            .get(ORIGIN_COUNTER)
            .and_then(|c| c.per_client_request);
        if caching && per_request.is_some_and(|p| p > 0.001) {
            eprintln!(
                "[{name}] WARNING: {} sent {:.3} origin requests per client request: not all hits",
                row.system,
                per_request.unwrap_or_default()
            );
        }
    }
    h.stop().await
}

/// For cathedral systems (`fill` set) one GET fills the cache first; then the origin counter
/// is read around one probe GET, which must return `size` bytes and cause exactly
/// `expected_origin_requests` origin requests. Both GETs carry `headers`.
pub async fn probe_check(
    system: &str,
    url: &str,
    fill: Option<&str>,
    counter_url: &str,
    size: usize,
    expected_origin_requests: u64,
    headers: &[(http::HeaderName, http::HeaderValue)],
) -> anyhow::Result<ProbeCheck> {
    const WITHIN: Duration = Duration::from_secs(10);
    if let Some(fill) = fill {
        let filled = client::get_with(fill, headers, WITHIN).await?;
        if !filled.status.is_success() {
            bail!("{system}: filling GET {fill} answered {}", filled.status);
        }
    }
    let before = client::read_counter(counter_url).await?;
    let fetched = client::get_with(url, headers, WITHIN)
        .await
        .with_context(|| format!("probing {system}"))?;
    let after = client::read_counter(counter_url).await?;
    if !fetched.status.is_success() || fetched.body.len() != size {
        bail!(
            "{system}: GET {url} answered {} with {} body bytes, expected 200 with {size}",
            fetched.status,
            fetched.body.len()
        );
    }
    let origin_requests = after.saturating_sub(before);
    if origin_requests != expected_origin_requests {
        bail!(
            "{system}: one GET caused {origin_requests} origin requests, expected \
             {expected_origin_requests}"
        );
    }
    Ok(ProbeCheck {
        system: system.to_owned(),
        url: url.to_owned(),
        cache_status: {
            let values: Vec<_> = fetched
                .headers
                .get_all(CACHE_STATUS)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(", "))
        },
        body_bytes: fetched.body.len(),
        origin_requests_for_probe: origin_requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> CacheArgs {
        CacheArgs {
            runner: harness::tests::args(),
            sizes: vec![1024, 102_400],
            cache_control: "public, max-age=3600".into(),
            etag: "\"v1\"".into(),
        }
    }

    #[test]
    fn cache_arguments_are_validated() -> anyhow::Result<()> {
        let config = CacheConfig::try_from(args())?;
        assert_eq!(
            config.origin_args,
            [
                "--cache-control",
                "public, max-age=3600",
                "--etag",
                "\"v1\""
            ]
        );
        let mut no_etag = args();
        no_etag.etag = String::new();
        assert_eq!(CacheConfig::try_from(no_etag)?.origin_args.len(), 2);
        let err = |a: CacheArgs| CacheConfig::try_from(a).err().map(|e| e.to_string());
        let mut a = args();
        a.sizes = vec![];
        assert!(err(a).is_some_and(|e| e.contains("--sizes")));
        let mut a = args();
        a.sizes = vec![MAX_BODY_SIZE + 1];
        assert!(err(a).is_some_and(|e| e.contains("--sizes")));
        let mut a = args();
        a.etag = "unquoted".into();
        assert!(err(a).is_some_and(|e| e.contains("--etag")));
        Ok(())
    }

    #[test]
    fn size_labels() {
        let labels: Vec<_> = [0, 64, 1024, 1536, 102_400, 1 << 20]
            .into_iter()
            .map(size_label)
            .collect();
        assert_eq!(labels, ["0B", "64B", "1KiB", "1536B", "100KiB", "1MiB"]);
    }

    #[test]
    fn cache_status_hits_are_recognised() {
        for hit in [
            "cathedral; hit; ttl=3599",
            "cathedral;hit",
            "cathedral; hit=?1",
            "upstream-cache; fwd=miss, cathedral; hit; ttl=10",
            "cathedral; hit; ttl=-5; detail=\"stale, revalidating\"",
        ] {
            assert!(cache_status_is_hit(hit), "{hit}");
        }
        for miss in [
            "",
            "cathedral; fwd=uri-miss; stored",
            "cathedral; fwd=bypass",
            "other; hit",
            "cathedral; detail=\"hit\"",
            "cathedral; fwd=miss; detail=\"x, cathedral; hit\"",
            "cathedralx; hit",
        ] {
            assert!(!cache_status_is_hit(miss), "{miss}");
        }
    }
}
