//! `proxy`: the proxy-path scenario — the fixed-body origin measured directly (the ceiling)
//! and through `cathedral serve --upstream`, side by side in every run.
//!
//! The origin runs as a child process of this same binary rather than in-process: it gets its
//! own allocator, its own RSS and CPU figures, and is pinned exactly like cathedral, so the
//! harness process (which only waits while a run is measured) affects neither system.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};

use crate::load::{self, LoadConfig, MAX_CONNECTIONS};
use crate::origin::{self, MAX_BODY_SIZE};
use crate::process::{self, ManagedChild, PinMode, Pinning};
use crate::procfs::{self, MachineInfo};
use crate::report;
use crate::scenario::{
    self, Generator, LoadParams, ProcessInfo, Scenario, ScenarioResult, SystemUnderTest,
};

/// Arguments of `cathedral-bench proxy`.
#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// The cathedral binary [default: target/release/cathedral in the workspace].
    #[arg(long)]
    pub cathedral: Option<PathBuf>,
    /// Runs; each run measures both systems once, alternating which goes first.
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Measured seconds per system per run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds before each measurement.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Size in bytes of the origin's response body.
    #[arg(long, default_value_t = 64)]
    pub body_size: usize,
    /// Pin systems under test and generator to separate CPUs with taskset.
    #[arg(long, value_enum, default_value_t = PinMode::Auto)]
    pub pin: PinMode,
    /// Seconds to wait for each system to start accepting connections.
    #[arg(long, default_value_t = 20.0)]
    pub startup_timeout: f64,
    /// Where the JSON results go [default: benches/results].
    #[arg(long)]
    pub results_dir: Option<PathBuf>,
}

/// Validated `proxy` settings.
#[derive(Debug, Clone)]
struct ProxyConfig {
    cathedral: PathBuf,
    runs: u32,
    load: LoadParams,
    body_size: usize,
    pin: PinMode,
    startup_timeout: Duration,
    results_dir: PathBuf,
}

/// Per-request timeout of the proxy scenario's generator.
const REQUEST_TIMEOUT_SECS: f64 = 10.0;

fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

impl TryFrom<ProxyArgs> for ProxyConfig {
    type Error = anyhow::Error;

    fn try_from(args: ProxyArgs) -> anyhow::Result<Self> {
        if !(1..=100).contains(&args.runs) {
            bail!("--runs must be between 1 and 100, not {}", args.runs);
        }
        if !(1..=MAX_CONNECTIONS).contains(&args.connections) {
            bail!(
                "--connections must be between 1 and {MAX_CONNECTIONS}, not {}",
                args.connections
            );
        }
        if args.body_size > MAX_BODY_SIZE {
            bail!("--body-size {} exceeds {MAX_BODY_SIZE}", args.body_size);
        }
        let duration = load::seconds("--duration", args.duration, false, 3600.0)?;
        let warmup = load::seconds("--warmup", args.warmup, true, 600.0)?;
        let startup_timeout =
            load::seconds("--startup-timeout", args.startup_timeout, false, 600.0)?;
        Ok(Self {
            cathedral: args
                .cathedral
                .unwrap_or_else(|| workspace_root().join("target/release/cathedral")),
            runs: args.runs,
            load: LoadParams {
                connections: args.connections,
                warmup_secs: warmup.as_secs_f64(),
                duration_secs: duration.as_secs_f64(),
                max_requests: None,
                timeout_secs: REQUEST_TIMEOUT_SECS,
            },
            body_size: args.body_size,
            pin: args.pin,
            startup_timeout,
            results_dir: args
                .results_dir
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results")),
        })
    }
}

/// Entry point of `cathedral-bench proxy`. Ctrl-C stops the children (they are killed on drop).
pub fn main(args: ProxyArgs) -> anyhow::Result<()> {
    let config = ProxyConfig::try_from(args)?;
    let runtime = origin::build_runtime(origin::RuntimeFlavor::CurrentThread, None)?;
    runtime.block_on(async {
        tokio::select! {
            result = run(&config) => result,
            _ = tokio::signal::ctrl_c() => bail!("interrupted; stopped the systems under test"),
        }
    })
}

/// Fails with a build hint when `path` is missing, or when its `serve` lacks `--upstream`.
async fn check_cathedral(path: &Path) -> anyhow::Result<()> {
    if !path.is_file() {
        bail!(
            "no cathedral binary at {}: build it with `cargo build --release -p cathedral` \
             (from the workspace root) or pass --cathedral PATH",
            path.display()
        );
    }
    let mut command = tokio::process::Command::new(path);
    command
        .args(["serve", "--help"])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(10), command.output())
        .await
        .with_context(|| {
            format!(
                "`{} serve --help` did not finish within 10 s",
                path.display()
            )
        })?
        .with_context(|| format!("running `{} serve --help`", path.display()))?;
    let help = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !help.contains("--upstream") {
        bail!(
            "`{} serve --help` does not list --upstream (exit {}); this cathedral build has no \
             proxy quick mode yet — rebuild with `cargo build --release -p cathedral`",
            path.display(),
            output.status
        );
    }
    Ok(())
}

async fn run(config: &ProxyConfig) -> anyhow::Result<()> {
    use std::io::Write as _;
    check_cathedral(&config.cathedral).await?;
    let exe = std::env::current_exe().context("locating this binary")?;
    let allowed = procfs::allowed_cpus()?;
    let pinning = Pinning::plan(config.pin, &allowed, process::find_taskset());
    eprintln!("[proxy] {}", pinning.description);
    let (started_at, started_iso) = report::utc_timestamp(SystemTime::now());

    // Every child gets a hard lifetime in case this process is killed without cleaning up.
    let per_measurement =
        config.load.warmup_secs + config.load.duration_secs + config.load.timeout_secs + 30.0;
    let budget = f64::from(config.runs) * 2.0 * per_measurement
        + 2.0 * config.startup_timeout.as_secs_f64()
        + 60.0;

    let sut_cpus = pinning.sut_cpu_count(&allowed);
    let mut origin_command = pinning.command(&exe, pinning.sut_cpus.as_deref());
    origin_command
        .args(["origin", "--listen", "127.0.0.1:0"])
        .arg("--body-size")
        .arg(config.body_size.to_string())
        .arg("--exit-after")
        .arg(format!("{budget:.0}"));
    if sut_cpus == 1 {
        origin_command.args(["--runtime", "current-thread"]);
    } else {
        origin_command
            .args(["--runtime", "multi-thread", "--threads"])
            .arg(sut_cpus.to_string());
    }
    origin_command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let origin_line = format!("{:?}", origin_command.as_std());
    let mut origin_child = ManagedChild::spawn("origin", origin_command, None)?;
    let line = origin_child
        .first_stdout_line(config.startup_timeout)
        .await?;
    let origin_addr = origin::parse_listening_line(&line)
        .with_context(|| format!("origin printed {line:?}, not `listening on ADDR`"))?;
    origin_child
        .wait_until_accepting(origin_addr, config.startup_timeout)
        .await?;

    let [listen, admin] = process::free_loopback_ports(2)?[..] else {
        bail!("expected two free ports");
    };
    let log = std::env::temp_dir().join(format!(
        "cathedral-bench-{}-cathedral.log",
        std::process::id()
    ));
    let (stdout, stderr) = process::log_stdio(&log)?;
    let mut cathedral_command = pinning.command(&config.cathedral, pinning.sut_cpus.as_deref());
    cathedral_command
        .arg("serve")
        .arg("--upstream")
        .arg(format!("http://{origin_addr}"))
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--admin-listen")
        .arg(admin.to_string())
        .args(["--log-format", "json"])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    let cathedral_line = format!("{:?}", cathedral_command.as_std());
    let mut cathedral_child =
        ManagedChild::spawn("cathedral", cathedral_command, Some(log.clone()))?;
    cathedral_child
        .wait_until_accepting(listen, config.startup_timeout)
        .await?;
    eprintln!(
        "[proxy] origin on {origin_addr}, cathedral on {listen} (log: {})",
        log.display()
    );

    let direct_url = format!("http://{origin_addr}/");
    let cathedral_url = format!("http://{listen}/");
    // One request each before spending minutes: a broken proxy path fails here, clearly.
    probe("direct", &direct_url).await?;
    probe("cathedral", &cathedral_url).await?;

    let scenario = Scenario {
        name: "proxy".into(),
        systems: vec![
            SystemUnderTest {
                name: "direct".into(),
                url: direct_url,
                process: "origin".into(),
            },
            SystemUnderTest {
                name: "cathedral".into(),
                url: cathedral_url,
                process: "cathedral".into(),
            },
        ],
        baseline: "direct".into(),
        load: config.load.clone(),
        runs: config.runs,
        notes: vec![
            pinning.description.clone(),
            "origin: a child process of cathedral-bench (bare hyper, fixed body), pinned like cathedral".into(),
            "generator: `cathedral-bench load --json` as a child process per measurement, closed loop, \
             HTTP/1.1 keep-alive, one request in flight per connection"
                .into(),
            "cathedral row: the origin serves every proxied request too, on the same CPUs as cathedral, \
             so its ceiling is below the direct row by construction"
                .into(),
            "SUT CPUs, peak RSS: of the origin for `direct`, of cathedral alone for `cathedral`".into(),
        ],
    };
    let generator = Generator {
        exe,
        pinning: pinning.clone(),
    };
    let mut children = [origin_child, cathedral_child];
    let measurements = scenario::run(&scenario, &mut children, &generator).await?;
    let summary = scenario::summarise(&scenario, &measurements);

    let result = ScenarioResult {
        summary,
        scenario,
        started_utc: started_iso,
        harness_version: env!("CARGO_PKG_VERSION").into(),
        machine: MachineInfo::read(),
        pinning,
        processes: vec![
            ProcessInfo {
                name: "origin".into(),
                pid: children[0].pid(),
                command: origin_line,
            },
            ProcessInfo {
                name: "cathedral".into(),
                pid: children[1].pid(),
                command: cathedral_line,
            },
        ],
        measurements,
    };
    let path = report::write_json(&config.results_dir, &started_at, &result)?;

    let mut out = std::io::stdout().lock();
    write!(
        out,
        "{}",
        report::render_table(
            &result.scenario.name,
            &result.scenario.baseline,
            &result.summary
        )
    )?;
    writeln!(out)?;
    for note in &result.scenario.notes {
        writeln!(out, "- {note}")?;
    }
    writeln!(
        out,
        "- {} runs × {} s measured after {} s warm-up, {} connections, {} B bodies; raw results: {}",
        result.scenario.runs,
        result.scenario.load.duration_secs,
        result.scenario.load.warmup_secs,
        result.scenario.load.connections,
        config.body_size,
        path.display()
    )?;
    out.flush()?;

    for child in children {
        child.stop().await?;
    }
    // The log is only worth keeping when something went wrong (error paths return earlier).
    let _ = std::fs::remove_file(&log);
    Ok(())
}

/// Sends a single request to `url` and fails unless it succeeds.
async fn probe(name: &str, url: &str) -> anyhow::Result<()> {
    let config = LoadConfig::try_from(&load::LoadArgs {
        url: url.to_owned(),
        connections: 1,
        duration: 10.0,
        warmup: 0.0,
        max_requests: Some(1),
        timeout: 5.0,
        threads: Some(1),
        json: true,
    })?;
    let report = load::run(&config).await?;
    if report.requests != 1 {
        bail!(
            "probe request to {name} ({url}) failed: errors {:?}, statuses {:?}",
            report.errors,
            report.statuses
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ProxyArgs {
        ProxyArgs {
            cathedral: None,
            runs: 3,
            duration: 10.0,
            warmup: 2.0,
            connections: 64,
            body_size: 64,
            pin: PinMode::Auto,
            startup_timeout: 20.0,
            results_dir: None,
        }
    }

    #[test]
    fn defaults_point_into_the_workspace() -> anyhow::Result<()> {
        let config = ProxyConfig::try_from(args())?;
        assert!(config.cathedral.ends_with("target/release/cathedral"));
        assert!(config.cathedral.starts_with(workspace_root()));
        assert!(config.results_dir.ends_with("benches/results"));
        assert_eq!(config.load.connections, 64);
        Ok(())
    }

    #[test]
    fn proxy_arguments_are_validated() {
        let err = |a: ProxyArgs| ProxyConfig::try_from(a).err().map(|e| e.to_string());
        let mut a = args();
        a.runs = 0;
        assert!(err(a).is_some_and(|e| e.contains("--runs")));
        let mut a = args();
        a.connections = MAX_CONNECTIONS + 1;
        assert!(err(a).is_some_and(|e| e.contains("--connections")));
        let mut a = args();
        a.body_size = MAX_BODY_SIZE + 1;
        assert!(err(a).is_some_and(|e| e.contains("--body-size")));
        let mut a = args();
        a.duration = -1.0;
        assert!(err(a).is_some_and(|e| e.contains("--duration")));
    }

    #[tokio::test]
    async fn a_missing_cathedral_gets_a_build_hint() {
        let missing = Path::new("/nonexistent/cathedral");
        let err = check_cathedral(missing).await.err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("cargo build --release -p cathedral")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_cathedral_without_upstream_is_refused() {
        // `/bin/true serve --help` succeeds but prints nothing, like the placeholder binary.
        let err = check_cathedral(Path::new("/bin/true"))
            .await
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("does not list --upstream")),
            "{err:?}"
        );
    }
}
