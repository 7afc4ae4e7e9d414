//! `compare`: cathedral side by side with the systems it competes with, on one machine, in one
//! command. It provisions what it needs ([`crate::peers`]: the release cathedral, the demo's
//! filter modules, a `wasi:http` hello component, nginx and Varnish from Debian packages, the
//! `wasmtime` CLI at the workspace's wasmtime version), raises the file-descriptor limit, runs
//! the scenarios below through the shared harness ([`crate::harness`], one JSON file each), and
//! writes a combined JSON, a markdown report and an SVG chart; a full (non-`--quick`) run
//! appends the report to BENCHMARKS.md.
//!
//! Scenarios (each with the bare origin as the ceiling row, the same origin and payload for
//! every system, systems rotated per run, ratios per run):
//! - `cache-1k`, `cache-100k`: cache hits, cathedral vs nginx `proxy_cache` and Varnish
//!   ([`crate::varnish_config`]), 64 connections;
//! - `proxy`: 1 KiB through cathedral (`cache = false`) vs nginx `proxy_pass` and Varnish in
//!   pass mode, 64 connections;
//! - `handler`: one `wasi:http/proxy` component, `cathedral serve --handler` vs `wasmtime
//!   serve` with the pooling allocator, without and with `-W timeout`;
//! - `filters`: a cache-hit route with the demo's ratelimit + compliance + personalize chain
//!   vs the same route without filters, requests carrying cycled API keys and users;
//! - `c10k`: 10,000 keep-alive connections held for 60 s at a modest open-loop rate, cache
//!   hits, cathedral vs nginx and Varnish.
//!
//! Varnish is optional: when it cannot be installed or found, its rows are left out of the
//! scenarios it belongs to, each of which says so in a caveat, and the run goes on.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::cache::{self, CEILING, ORIGIN_COUNTER, size_label};
use crate::chart::{self, ChartGroup};
use crate::client;
use crate::compare_config::{self, Modules, NodeKind, NodeSpec};
use crate::harness::{self, Harness, RunnerArgs, RunnerConfig, workspace_root};
use crate::load::HeaderSets;
use crate::nginx_config::{self, NginxMode, NginxSpec};
use crate::origin::{MAX_BODY_SIZE, STATS_PATH};
use crate::peers::{self, Varnish, Versions};
use crate::process::{self, Accounting};
use crate::procfs::MachineInfo;
use crate::report;
use crate::scenario::{
    Counter, LoadParams, RatioSpec, RatioSummary, Scenario, ScenarioResult, SystemSummary,
    SystemUnderTest,
};
use crate::varnish_config::{self, VarnishMode, VarnishSpec, WorkDir};
use crate::wrk::{self, WrkResult};

/// The scenarios `compare` can run.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ScenarioKind {
    /// Cache hits of a 1 KiB object: cathedral vs nginx proxy_cache and Varnish.
    #[value(name = "cache-1k")]
    Cache1k,
    /// Cache hits of a 100 KiB object: cathedral vs nginx proxy_cache and Varnish.
    #[value(name = "cache-100k")]
    Cache100k,
    /// Proxying with caching off: cathedral vs nginx proxy_pass and Varnish in pass mode.
    Proxy,
    /// A wasi:http hello handler: cathedral serve --handler vs wasmtime serve.
    Handler,
    /// The filter chain on a cache-hit route vs the same route without filters.
    Filters,
    /// 10,000 concurrent keep-alive connections at a modest rate (cathedral, nginx, Varnish).
    C10k,
}

impl ScenarioKind {
    pub const ALL: [ScenarioKind; 6] = [
        ScenarioKind::Cache1k,
        ScenarioKind::Cache100k,
        ScenarioKind::Proxy,
        ScenarioKind::Handler,
        ScenarioKind::Filters,
        ScenarioKind::C10k,
    ];

    /// Whether `wrk` cross-checks this scenario (closed loop, no per-request headers).
    fn cross_checked(self) -> bool {
        matches!(
            self,
            ScenarioKind::Cache1k
                | ScenarioKind::Cache100k
                | ScenarioKind::Proxy
                | ScenarioKind::Handler
        )
    }

    fn needs_nginx(self) -> bool {
        matches!(
            self,
            ScenarioKind::Cache1k
                | ScenarioKind::Cache100k
                | ScenarioKind::Proxy
                | ScenarioKind::C10k
        )
    }

    /// Whether Varnish has a row in this scenario (the same ones as nginx).
    fn has_varnish(self) -> bool {
        self.needs_nginx()
    }
}

/// Whether the systems write access logs.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AccessLog {
    /// cathedral, nginx and Varnish (through varnishncsa) log every request, one JSON line
    /// each, to a file.
    On,
    /// Neither logs requests.
    Off,
}

/// Arguments of `cathedral-bench compare`.
#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    #[command(flatten)]
    pub runner: RunnerArgs,
    /// Smoke mode: 1 run of 2 s after 1 s warm-up (c10k: held 5 s after a 6 s warm-up);
    /// results go to target/bench-results-quick and never into BENCHMARKS.md.
    #[arg(long)]
    pub quick: bool,
    /// Scenarios to run, comma-separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenarios: Vec<ScenarioKind>,
    /// Access logs of cathedral, nginx and Varnish (the handler scenario always runs without: `wasmtime
    /// serve` has no access log; with `on` it adds a cathedral row with its log on).
    #[arg(long, value_enum, default_value_t = AccessLog::On)]
    pub access_log: AccessLog,
    /// c10k: concurrent connections.
    #[arg(long, default_value_t = 10_000)]
    pub c10k_connections: usize,
    /// c10k: measured seconds the connections are held.
    #[arg(long, default_value_t = 60.0)]
    pub c10k_duration: f64,
    /// c10k: warm-up seconds (connections opened, one request each, not measured).
    #[arg(long, default_value_t = 20.0)]
    pub c10k_warmup: f64,
    /// c10k: seconds over which the connections are opened (inside the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub c10k_ramp: f64,
    /// c10k: requests per second over all connections (open loop).
    #[arg(long, default_value_t = 2_000.0)]
    pub c10k_rate: f64,
    /// filters: distinct API keys (and users) the requests cycle over; the rate-limit tier
    /// lists them all.
    #[arg(long, default_value_t = 1_000)]
    pub api_keys: usize,
    /// handler: the `-W timeout=` of the `wasmtime-timeout` row (cathedral's CPU deadline for
    /// quick-mode handlers is 50 ms, always on).
    #[arg(long, default_value = "50ms")]
    pub wasmtime_timeout: String,
    /// Do not build anything (use the existing release cathedral, demo modules and hello
    /// component).
    #[arg(long)]
    pub no_build: bool,
    /// Do not install nginx, Varnish or the wasmtime CLI when missing; fail instead (for
    /// Varnish: leave its rows out, with a caveat).
    #[arg(long)]
    pub no_install: bool,
    /// Do not append the report to BENCHMARKS.md (a --quick run never does).
    #[arg(long)]
    pub no_append: bool,
    /// Skip the cross-check of our load generator with `wrk` (installed from Debian's package
    /// when missing; the cache, proxy and handler scenarios, once per system after the runs).
    #[arg(long)]
    pub no_wrk: bool,
}

/// Per-scenario load settings of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub quick: bool,
    pub scenarios: Vec<ScenarioKind>,
    pub access_log: AccessLog,
    /// The 64-connection scenarios' load.
    pub load: LoadParams,
    /// The c10k scenario's load.
    pub c10k: LoadParams,
    pub api_keys: usize,
    pub wasmtime_timeout: String,
    pub build: bool,
    pub install: bool,
    pub append: bool,
    /// `--cathedral` was given: use it, build nothing of cathedral's.
    pub cathedral_given: bool,
    /// Cross-check with wrk.
    pub wrk: bool,
}

impl Plan {
    /// Validates `args` into the runner settings and the plan.
    pub fn new(args: &CompareArgs) -> anyhow::Result<(RunnerConfig, Plan)> {
        let mut runner_args = args.runner.clone();
        let (mut c10k_duration, mut c10k_warmup, mut c10k_ramp) =
            (args.c10k_duration, args.c10k_warmup, args.c10k_ramp);
        if args.quick {
            runner_args.runs = 1;
            runner_args.duration = 2.0;
            runner_args.warmup = 1.0;
            (c10k_duration, c10k_warmup, c10k_ramp) = (5.0, 6.0, 3.0);
            if runner_args.results_dir.is_none() {
                runner_args.results_dir = Some(workspace_root().join("target/bench-results-quick"));
            }
        }
        let runner = RunnerConfig::try_from(&runner_args)?;
        if !(1..=crate::load::MAX_CONNECTIONS).contains(&args.c10k_connections) {
            bail!(
                "--c10k-connections must be between 1 and {}, not {}",
                crate::load::MAX_CONNECTIONS,
                args.c10k_connections
            );
        }
        let c10k_duration = crate::load::seconds("--c10k-duration", c10k_duration, false, 3600.0)?;
        let c10k_warmup = crate::load::seconds("--c10k-warmup", c10k_warmup, true, 600.0)?;
        let c10k_ramp = crate::load::seconds("--c10k-ramp", c10k_ramp, true, 600.0)?;
        if c10k_ramp > c10k_warmup {
            bail!("--c10k-ramp must be at most --c10k-warmup: connection opens are not measured");
        }
        if !(args.c10k_rate.is_finite() && args.c10k_rate > 0.0 && args.c10k_rate <= 1e6) {
            bail!(
                "--c10k-rate must be above 0 and at most 1000000, not {}",
                args.c10k_rate
            );
        }
        if !(1..=100_000).contains(&args.api_keys) {
            bail!(
                "--api-keys must be between 1 and 100000, not {}",
                args.api_keys
            );
        }
        let timeout = humantime_ms(&args.wasmtime_timeout).with_context(|| {
            format!(
                "--wasmtime-timeout {:?} is not a duration like 50ms or 1s",
                args.wasmtime_timeout
            )
        })?;
        let mut scenarios = if args.scenarios.is_empty() {
            ScenarioKind::ALL.to_vec()
        } else {
            args.scenarios.clone()
        };
        let mut seen = Vec::new();
        scenarios.retain(|s| {
            let first = !seen.contains(s);
            seen.push(*s);
            first
        });
        let c10k = LoadParams {
            connections: args.c10k_connections,
            warmup_secs: c10k_warmup.as_secs_f64(),
            duration_secs: c10k_duration.as_secs_f64(),
            rate: Some(args.c10k_rate),
            ramp_secs: c10k_ramp.as_secs_f64(),
            ..runner.load.clone()
        };
        let plan = Plan {
            quick: args.quick,
            scenarios,
            access_log: args.access_log,
            load: runner.load.clone(),
            c10k,
            api_keys: args.api_keys,
            wasmtime_timeout: format!("{timeout}ms"),
            build: !args.no_build,
            install: !args.no_install,
            append: !args.quick && !args.no_append,
            cathedral_given: args.runner.cathedral.is_some(),
            wrk: !args.no_wrk,
        };
        Ok((runner, plan))
    }

    fn needs(&self, kind: ScenarioKind) -> bool {
        self.scenarios.contains(&kind)
    }

    /// Systems measured in scenario `kind` (with Varnish where it has a row).
    pub fn systems(&self, kind: ScenarioKind) -> usize {
        match kind {
            ScenarioKind::Handler => 4 + usize::from(self.access_log == AccessLog::On),
            _ => 3 + usize::from(kind.has_varnish()),
        }
    }

    /// Rough wall-clock seconds of the measurements (not the builds or installs): every
    /// measurement's warm-up and duration plus ~3 s of generator start and counter reads,
    /// ~10 s of start-up and probes per scenario, and the wrk cross-check.
    pub fn estimated_secs(&self, runs: u32) -> f64 {
        self.scenarios
            .iter()
            .map(|&kind| {
                let load = if kind == ScenarioKind::C10k {
                    &self.c10k
                } else {
                    &self.load
                };
                let systems = self.systems(kind) as f64;
                let measure =
                    systems * f64::from(runs) * (load.warmup_secs + load.duration_secs + 3.0);
                let wrk = if self.wrk && kind.cross_checked() {
                    systems * load.duration_secs.ceil()
                } else {
                    0.0
                };
                measure + wrk + 10.0
            })
            .sum()
    }

    /// File descriptors the harness and its children need: the most connections of any
    /// scenario plus room for everything else.
    pub fn needed_fds(&self) -> u64 {
        let most = if self.needs(ScenarioKind::C10k) {
            self.c10k.connections.max(self.load.connections)
        } else {
            self.load.connections
        };
        most as u64 + 1024
    }
}

/// A duration like `50ms`, `1s`, `2m` in whole milliseconds (at least 1).
pub fn humantime_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        _ => return None,
    };
    (ms >= 1).then_some(ms)
}

/// Raises this process's `RLIMIT_NOFILE` soft limit towards `needed` (children inherit it):
/// to the hard limit, and past it when running as root. Returns `(soft, hard)` afterwards.
pub fn raise_nofile(needed: u64) -> anyhow::Result<(u64, u64)> {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get().context("reading RLIMIT_NOFILE")?;
    if soft >= needed {
        return Ok((soft, hard));
    }
    if hard >= needed {
        Resource::NOFILE
            .set(needed, hard)
            .context("raising the RLIMIT_NOFILE soft limit")?;
    } else if peers::is_root() {
        Resource::NOFILE
            .set(needed, needed)
            .context("raising RLIMIT_NOFILE (soft and hard) as root")?;
    } else {
        Resource::NOFILE
            .set(hard, hard)
            .context("raising the RLIMIT_NOFILE soft limit")?;
    }
    Ok(Resource::NOFILE.get()?)
}

/// One scenario's outcome in the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioOutcome {
    pub kind: ScenarioKind,
    /// e.g. `cache hit, 1 KiB, 64 connections`.
    pub title: String,
    pub load: LoadParams,
    pub summary: Vec<SystemSummary>,
    pub ratios: Vec<RatioSummary>,
    pub notes: Vec<String>,
    /// The scenario's own results file.
    pub results_file: Option<PathBuf>,
    /// Findings of the post-measurement checks (hits that were not hits, non-2xx answers,
    /// reconnects); empty when everything was as intended.
    pub warnings: Vec<String>,
    /// Rows whose numbers describe the load generator rather than the system (it used nearly
    /// all of its CPUs): a limit of the measurement, not a failed check.
    #[serde(default)]
    pub caveats: Vec<String>,
    /// Why the scenario produced no numbers.
    pub error: Option<String>,
    /// `wrk` driving the same systems after the runs (empty when not done).
    pub cross_check: Vec<WrkResult>,
}

/// Everything one `compare` produced: `results/compare-<stamp>.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub started_utc: String,
    pub finished_utc: String,
    pub command: String,
    pub plan: Plan,
    pub runs: u32,
    pub versions: Versions,
    pub machine: MachineInfo,
    pub pinning: String,
    /// `RLIMIT_NOFILE` (soft, hard) the harness and its children ran with.
    pub nofile: (u64, u64),
    /// Whether Varnish took part, and with an access log.
    pub varnish: VarnishStatus,
    pub scenarios: Vec<ScenarioOutcome>,
}

/// Varnish's part in a comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum VarnishStatus {
    /// No scenario of the plan has a Varnish row.
    NotUsed,
    /// Varnish could not be had: its rows were left out.
    Unavailable { reason: String },
    /// Varnish ran; `access_log` is whether varnishncsa wrote its access log.
    Used { access_log: bool },
}

/// Varnish as provisioned for a comparison.
#[derive(Debug, Clone)]
enum VarnishPeer {
    NotNeeded,
    Missing(String),
    Found(Varnish),
}

impl VarnishPeer {
    fn varnishd(&self) -> Option<&Path> {
        match self {
            VarnishPeer::Found(v) => Some(&v.varnishd),
            _ => None,
        }
    }

    /// Whether Varnish writes an access log under `log`.
    fn logs(&self, log: AccessLog) -> bool {
        matches!(self, VarnishPeer::Found(v) if v.varnishncsa.is_some()) && log == AccessLog::On
    }

    fn status(&self, log: AccessLog) -> VarnishStatus {
        match self {
            VarnishPeer::NotNeeded => VarnishStatus::NotUsed,
            VarnishPeer::Missing(reason) => VarnishStatus::Unavailable {
                reason: reason.clone(),
            },
            VarnishPeer::Found(_) => VarnishStatus::Used {
                access_log: self.logs(log),
            },
        }
    }
}

/// What every scenario runner needs.
#[derive(Debug, Clone)]
struct Context {
    runner: RunnerConfig,
    plan: Plan,
    nginx: Option<PathBuf>,
    nginx_without: Vec<String>,
    varnish: VarnishPeer,
    wasmtime: Option<PathBuf>,
    hello: Option<PathBuf>,
    wrk: Option<PathBuf>,
    modules: Modules,
    /// The soft `RLIMIT_NOFILE` after raising it (nginx's `worker_rlimit_nofile`).
    nofile: u64,
}

/// What [`provision`] built and found.
#[derive(Debug, Clone)]
struct Provisioned {
    cathedral: PathBuf,
    nginx: Option<PathBuf>,
    varnish: VarnishPeer,
    wasmtime: Option<PathBuf>,
    hello: Option<PathBuf>,
    wrk: Option<PathBuf>,
}

/// Entry point of `cathedral-bench prepare`: provisioning only, then the versions.
pub fn prepare(args: CompareArgs) -> anyhow::Result<()> {
    let (runner, plan) = Plan::new(&args)?;
    let p = provision(&runner, &plan)?;
    let versions = peers::versions(
        &p.cathedral,
        p.nginx.as_deref(),
        p.varnish.varnishd(),
        p.wasmtime.as_deref(),
    );
    println!("{}", serde_json::to_string_pretty(&versions)?);
    Ok(())
}

/// Builds and installs what `plan` needs.
fn provision(runner: &RunnerConfig, plan: &Plan) -> anyhow::Result<Provisioned> {
    let cathedral = if plan.build && !plan.cathedral_given {
        peers::build_cathedral()?
    } else {
        runner.cathedral.clone()
    };
    let hello = if plan.needs(ScenarioKind::Handler) {
        let built = workspace_root()
            .join("target/bench-guests/wasm32-wasip2/release/bench_wasi_hello.wasm");
        Some(if plan.build || !built.is_file() {
            peers::build_hello_guest()?
        } else {
            built
        })
    } else {
        None
    };
    let nginx = if plan.scenarios.iter().any(|s| s.needs_nginx()) {
        Some(peers::ensure_nginx(plan.install)?)
    } else {
        None
    };
    let varnish = if plan.scenarios.iter().any(|s| s.has_varnish()) {
        match peers::ensure_varnish(plan.install) {
            Ok(varnish) => {
                if varnish.varnishncsa.is_none() && plan.access_log == AccessLog::On {
                    eprintln!(
                        "[prepare] varnishncsa not found: Varnish runs without an access log"
                    );
                }
                VarnishPeer::Found(varnish)
            }
            Err(e) => {
                eprintln!("[prepare] Varnish is not available, its rows are left out: {e:#}");
                VarnishPeer::Missing(format!("{e:#}"))
            }
        }
    } else {
        VarnishPeer::NotNeeded
    };
    let wasmtime = if plan.needs(ScenarioKind::Handler) {
        Some(peers::ensure_wasmtime(plan.install)?)
    } else {
        None
    };
    let wrk = if plan.wrk && plan.scenarios.iter().any(|s| s.cross_checked()) {
        let wrk = peers::ensure_wrk(plan.install);
        if wrk.is_none() {
            eprintln!("[prepare] wrk is not available: the cross-check is skipped");
        }
        wrk
    } else {
        None
    };
    Ok(Provisioned {
        cathedral,
        nginx,
        varnish,
        wasmtime,
        hello,
        wrk,
    })
}

/// Entry point of `cathedral-bench compare`.
pub fn main(args: CompareArgs) -> anyhow::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let (mut runner, plan) = Plan::new(&args)?;
    let (started_stamp, started_utc) = report::utc_timestamp(SystemTime::now());
    let Provisioned {
        cathedral,
        nginx,
        varnish,
        wasmtime,
        hello,
        wrk,
    } = provision(&runner, &plan)?;
    runner.cathedral = cathedral;
    let nofile = raise_nofile(plan.needed_fds())?;
    eprintln!(
        "[compare] RLIMIT_NOFILE soft {} hard {} (needed {})",
        nofile.0,
        nofile.1,
        plan.needed_fds()
    );
    let versions = peers::versions(
        &runner.cathedral,
        nginx.as_deref(),
        varnish.varnishd(),
        wasmtime.as_deref(),
    );
    eprintln!("[compare] versions: {versions:?}");
    eprintln!(
        "[compare] {} scenario(s), about {:.0} minutes of measuring",
        plan.scenarios.len(),
        plan.estimated_secs(runner.runs) / 60.0
    );
    let context = Context {
        nginx_without: nginx
            .as_deref()
            .map(|n| nginx_config::modules_without(&peers::nginx_configure_args(n)))
            .unwrap_or_default(),
        runner: runner.clone(),
        plan: plan.clone(),
        nginx,
        varnish: varnish.clone(),
        wasmtime,
        hello,
        wrk,
        nofile: nofile.0,
        modules: Modules {
            ratelimit: peers::filter_module("ratelimit"),
            compliance: peers::filter_module("compliance"),
            personalize: peers::filter_module("personalize"),
        },
    };
    let mut outcomes = Vec::new();
    let mut pinning = String::new();
    harness::block_on(async {
        for &kind in &plan.scenarios {
            if kind == ScenarioKind::C10k && nofile.0 < plan.needed_fds() {
                outcomes.push(failed(
                    kind,
                    &plan,
                    format!(
                        "RLIMIT_NOFILE is {} but {} connections need {}: raise it (ulimit -n) and rerun",
                        nofile.0,
                        plan.c10k.connections,
                        plan.needed_fds()
                    ),
                ));
                continue;
            }
            match run_scenario(&context, kind).await {
                Ok((outcome, pin)) => {
                    pinning = pin;
                    outcomes.push(outcome);
                }
                Err(e) => {
                    eprintln!("[compare] {kind:?} failed: {e:#}");
                    outcomes.push(failed(kind, &plan, format!("{e:#}")));
                }
            }
        }
        Ok(())
    })?;
    let comparison = Comparison {
        started_utc,
        finished_utc: report::utc_timestamp(SystemTime::now()).1,
        command,
        runs: runner.runs,
        plan: plan.clone(),
        versions,
        machine: MachineInfo::read(),
        pinning,
        nofile,
        varnish: varnish.status(plan.access_log),
        scenarios: outcomes,
    };
    let paths = write_outputs(&runner.results_dir, &started_stamp, &comparison)?;
    let markdown = render_markdown(&comparison, &paths);
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        write!(out, "{markdown}")?;
        out.flush()?;
    }
    if plan.append {
        let md = workspace_root().join("BENCHMARKS.md");
        append(&md, &markdown)?;
        eprintln!("[compare] appended the report to {}", md.display());
    }
    let failures: Vec<_> = comparison
        .scenarios
        .iter()
        .filter(|s| s.error.is_some())
        .map(|s| format!("{:?}", s.kind))
        .collect();
    if !failures.is_empty() {
        bail!("scenarios failed: {}", failures.join(", "));
    }
    Ok(())
}

/// The outcome of a scenario that could not run.
fn failed(kind: ScenarioKind, plan: &Plan, error: String) -> ScenarioOutcome {
    ScenarioOutcome {
        kind,
        title: title(kind, plan),
        load: load_for(kind, plan),
        summary: Vec::new(),
        ratios: Vec::new(),
        notes: Vec::new(),
        results_file: None,
        warnings: Vec::new(),
        caveats: Vec::new(),
        error: Some(error),
        cross_check: Vec::new(),
    }
}

/// The title of a scenario in tables and the chart.
pub fn title(kind: ScenarioKind, plan: &Plan) -> String {
    let c = plan.load.connections;
    match kind {
        ScenarioKind::Cache1k => format!("cache hit, 1 KiB, {c} connections"),
        ScenarioKind::Cache100k => format!("cache hit, 100 KiB, {c} connections"),
        ScenarioKind::Proxy => format!("proxy, cache off, 1 KiB, {c} connections"),
        ScenarioKind::Handler => format!("wasi:http hello handler, {c} connections"),
        ScenarioKind::Filters => format!(
            "filter chain on a cache hit, 1 KiB, {c} connections, {} keys",
            plan.api_keys
        ),
        ScenarioKind::C10k => format!(
            "{} keep-alive connections held {} s at {} req/s, 1 KiB hits",
            plan.c10k.connections,
            plan.c10k.duration_secs,
            plan.c10k.rate.unwrap_or_default()
        ),
    }
}

/// The generator load of a scenario.
fn load_for(kind: ScenarioKind, plan: &Plan) -> LoadParams {
    match kind {
        ScenarioKind::C10k => plan.c10k.clone(),
        ScenarioKind::Filters => LoadParams {
            headers: compare_config::filter_request_headers(),
            cycle: plan.api_keys as u64,
            ..plan.load.clone()
        },
        _ => plan.load.clone(),
    }
}

/// The origin arguments making its body cacheable for a year-long hour.
fn cacheable() -> Vec<String> {
    vec![
        "--cache-control".into(),
        "public, max-age=3600".into(),
        "--etag".into(),
        "\"cathedral-bench-v1\"".into(),
    ]
}

/// Runs one scenario; returns its outcome and the pinning description.
async fn run_scenario(
    context: &Context,
    kind: ScenarioKind,
) -> anyhow::Result<(ScenarioOutcome, String)> {
    match kind {
        ScenarioKind::Cache1k => proxied(context, kind, 1024, true).await,
        ScenarioKind::Cache100k => proxied(context, kind, 102_400, true).await,
        ScenarioKind::Proxy => proxied(context, kind, 1024, false).await,
        ScenarioKind::C10k => proxied(context, kind, 1024, true).await,
        ScenarioKind::Handler => handler(context).await,
        ScenarioKind::Filters => filters(context).await,
    }
}

/// A fresh harness for scenario `name` of `systems` systems with `load`.
async fn harness_for(
    context: &Context,
    name: &str,
    systems: usize,
    load: &LoadParams,
    needed_flag: &str,
) -> anyhow::Result<Harness> {
    let mut runner = context.runner.clone();
    runner.load = load.clone();
    Harness::new(name, runner, systems, needed_flag).await
}

/// The environment that turns cathedral's access log on or off.
/// Starts the release cathedral as `name` with `args` (JSON logs appended), its access log
/// on or off, and waits until it accepts on `listen`.
async fn start_cathedral(
    h: &mut Harness,
    context: &Context,
    name: &str,
    mut args: Vec<OsString>,
    log: AccessLog,
    listen: SocketAddr,
) -> anyhow::Result<()> {
    args.extend(["--log-format".into(), "json".into()]);
    let env = match log {
        AccessLog::On => [("RUST_LOG", "info")],
        AccessLog::Off => [("RUST_LOG", "info,cathedral::access=off")],
    };
    let cathedral = context.runner.cathedral.clone();
    h.start_program(name, &cathedral, &args, &env, listen, Accounting::Process)
        .await
}

/// Writes a node's config into the scratch dir and starts it; returns its listen address
/// and the generated files.
async fn start_node(
    h: &mut Harness,
    context: &Context,
    name: &str,
    kind: NodeKind,
    origin: SocketAddr,
    log: AccessLog,
) -> anyhow::Result<(SocketAddr, serde_json::Value)> {
    let [listen, admin] = process::free_loopback_ports(2)?[..] else {
        bail!("expected two free ports");
    };
    let spec = NodeSpec {
        kind,
        listen,
        admin,
        origin,
    };
    let node = compare_config::write(&h.scratch.join(name), &spec, &context.modules)?;
    let files: serde_json::Map<_, _> = compare_config::files(&spec, &context.modules)
        .into_iter()
        .map(|(path, text)| (path.display().to_string(), text.into()))
        .collect();
    let args: Vec<OsString> = vec!["serve".into(), "--config".into(), node.into()];
    start_cathedral(h, context, name, args, log, listen).await?;
    Ok((listen, files.into()))
}

/// Writes an nginx config into the scratch dir and starts nginx on it.
async fn start_nginx(
    h: &mut Harness,
    context: &Context,
    name: &str,
    mode: NginxMode,
    origin: SocketAddr,
) -> anyhow::Result<(SocketAddr, String)> {
    let nginx = context.nginx.clone().context("nginx was not provisioned")?;
    let [listen] = process::free_loopback_ports(1)?[..] else {
        bail!("expected a free port");
    };
    let spec = NginxSpec {
        mode,
        listen,
        origin,
        dir: h.scratch.join(name),
        workers: h.sut_cpu_count(),
        access_log: context.plan.access_log == AccessLog::On,
        without: context.nginx_without.clone(),
        nofile: context.nofile,
    };
    nginx_config::write(&spec)?;
    h.start_program(
        name,
        &nginx,
        &nginx_config::args(&spec),
        &[],
        listen,
        Accounting::Tree,
    )
    .await?;
    Ok((listen, nginx_config::nginx_conf(&spec)))
}

/// A Varnish instance started by [`start_varnish`].
struct StartedVarnish {
    listen: SocketAddr,
    /// The VCL and both command lines, for the results file.
    generated: serde_json::Value,
    /// The access log varnishncsa writes, when it runs.
    access_log: Option<PathBuf>,
    /// Removed when dropped: keep until the harness has stopped Varnish.
    _workdir: WorkDir,
}

/// Writes a VCL into the scratch dir and starts `varnishd -F` on it as child `name` (its
/// manager and cache process counted together), and `varnishncsa` beside it when access logs
/// are on and it is installed.
async fn start_varnish(
    h: &mut Harness,
    context: &Context,
    varnish: &Varnish,
    name: &str,
    mode: VarnishMode,
    origin: SocketAddr,
) -> anyhow::Result<StartedVarnish> {
    let [listen] = process::free_loopback_ports(1)?[..] else {
        bail!("expected a free port");
    };
    let dir = h.scratch.join(name);
    let workdir = WorkDir::create(name, &dir.join("work"))?;
    let spec = VarnishSpec {
        mode,
        listen,
        origin,
        dir,
        workdir: workdir.path.clone(),
        access_log: context.varnish.logs(context.plan.access_log),
    };
    varnish_config::write(&spec)?;
    let args = varnish_config::varnishd_args(&spec)?;
    h.start_program(
        name,
        &varnish.varnishd,
        &args,
        &[],
        listen,
        Accounting::Tree,
    )
    .await?;
    let show = |args: &[OsString]| -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    };
    let mut generated = serde_json::json!({
        "vcl": varnish_config::vcl(&spec)?,
        "varnishd": show(&args),
    });
    let access_log = match (&varnish.varnishncsa, spec.access_log) {
        (Some(varnishncsa), true) => {
            let log_args = varnish_config::varnishncsa_args(&spec);
            h.start_companion(name, &format!("{name}-varnishncsa"), varnishncsa, &log_args)?;
            generated["varnishncsa"] = show(&log_args).into();
            let log = spec.access_log_path();
            // varnishncsa logs from where the shared-memory log is when it attaches: until a
            // request shows up in its file, requests could go unlogged. The counter path is
            // not counted by the origin.
            let url = format!("http://{listen}{STATS_PATH}");
            let within = std::time::Duration::from_secs(10);
            let deadline = tokio::time::Instant::now() + within;
            while line_count(&log) == 0 {
                if tokio::time::Instant::now() >= deadline {
                    h.check_alive()?;
                    bail!("varnishncsa logged no request to Varnish within {within:?}");
                }
                client::get(&url, std::time::Duration::from_secs(5))
                    .await
                    .with_context(|| format!("GET {url} through Varnish"))?;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Some(log)
        }
        _ => None,
    };
    Ok(StartedVarnish {
        listen,
        generated,
        access_log,
        _workdir: workdir,
    })
}

/// Lines in the file at `path` (0 when it cannot be read).
fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

/// Waits until the file at `path` has at least `lines` lines, failing after `within`.
async fn wait_for_lines(
    path: &Path,
    lines: usize,
    within: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let found = line_count(path);
        if found >= lines {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{} has {found} line(s) after {within:?}, expected at least {lines}",
                path.display()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A system measured through `url`, its CPU and RSS read from child `name`.
fn system(name: &str, url: String) -> SystemUnderTest {
    SystemUnderTest {
        name: name.into(),
        url,
        process: name.into(),
    }
}

fn ratio(numerator: &str, denominator: &str) -> RatioSpec {
    RatioSpec {
        label: format!("{numerator} ÷ {denominator}"),
        numerator: numerator.into(),
        denominator: denominator.into(),
    }
}

/// Notes every scenario shares.
fn common_notes(h: &Harness, context: &Context, kind: ScenarioKind) -> Vec<String> {
    vec![
        h.pinning.description.clone(),
        format!(
            "{CEILING}: the bare hyper origin (cathedral-bench origin, {}) answering the same body \
             directly — the limit of the stack on this machine",
            if h.sut_cpu_count() == 1 {
                "one thread"
            } else {
                "one thread per SUT CPU"
            }
        ),
        access_log_note(
            context.plan.access_log,
            if kind.has_varnish() {
                &context.varnish
            } else {
                &VarnishPeer::NotNeeded
            },
        ),
    ]
}

/// The scenarios' access-log note.
fn access_log_note(log: AccessLog, varnish: &VarnishPeer) -> String {
    match (log, varnish) {
        (AccessLog::Off, _) => "access logs off for every system".to_owned(),
        (AccessLog::On, VarnishPeer::Found(v)) if v.varnishncsa.is_none() => {
            "access logs on: cathedral's JSON access log (its non-blocking writer thread) and \
             nginx's JSON access_log (buffer=64k flush=1s), each to a file; Varnish WITHOUT an \
             access log (varnishncsa not found): a mismatch in Varnish's favour"
                .to_owned()
        }
        (AccessLog::On, VarnishPeer::Found(_)) => {
            "access logs on: cathedral's JSON access log (its non-blocking writer thread), \
             nginx's JSON access_log (buffer=64k flush=1s) and Varnish's varnishncsa (-j, a JSON \
             line with nginx's fields, a separate process reading Varnish's shared-memory log, \
             pinned with Varnish and counted in its CPU and RSS), each to a file"
                .to_owned()
        }
        (AccessLog::On, _) => {
            "access logs on: cathedral's JSON access log (its non-blocking writer thread) \
             and nginx's JSON access_log (buffer=64k flush=1s), each to a file"
                .to_owned()
        }
    }
}

/// cache-1k, cache-100k, proxy and c10k: the origin, a cathedral node and nginx in front of
/// it, the origin measured directly as the ceiling.
async fn proxied(
    context: &Context,
    kind: ScenarioKind,
    size: usize,
    cached: bool,
) -> anyhow::Result<(ScenarioOutcome, String)> {
    let plan = &context.plan;
    let load = load_for(kind, plan);
    let name = format!(
        "compare-{}",
        match kind {
            ScenarioKind::C10k => "c10k".to_owned(),
            ScenarioKind::Proxy => format!("proxy-{}", size_label(size)),
            _ => format!("cache-{}", size_label(size)),
        }
    );
    let with_varnish = kind.has_varnish() && matches!(context.varnish, VarnishPeer::Found(_));
    let systems = 3 + usize::from(with_varnish);
    let mut h = harness_for(context, &name, systems, &load, "--config").await?;
    let origin_args = if cached { cacheable() } else { Vec::new() };
    let origin = h.start_origin("origin", size, &origin_args).await?;
    let counter_url = format!("http://{origin}{STATS_PATH}");
    let node_kind = if cached {
        NodeKind::CacheHit
    } else {
        NodeKind::NoCache
    };
    let (node, node_files) = start_node(
        &mut h,
        context,
        "cathedral",
        node_kind,
        origin,
        plan.access_log,
    )
    .await?;
    let mode = if cached {
        NginxMode::Cache
    } else {
        NginxMode::Proxy
    };
    let (nginx, nginx_conf) = start_nginx(&mut h, context, "nginx", mode, origin).await?;
    let mut caveats = Vec::new();
    let varnish = match &context.varnish {
        VarnishPeer::Found(v) if kind.has_varnish() => {
            let mode = if cached {
                VarnishMode::Cache
            } else {
                VarnishMode::Pass
            };
            Some(start_varnish(&mut h, context, v, "varnish", mode, origin).await?)
        }
        VarnishPeer::Missing(why) if kind.has_varnish() => {
            caveats.push(format!("{name}: varnish: not measured: {why}"));
            None
        }
        _ => None,
    };

    const PATH: &str = "/object";
    let mut urls = vec![
        (CEILING, format!("http://{origin}{PATH}")),
        ("cathedral", format!("http://{node}{PATH}")),
        ("nginx", format!("http://{nginx}{PATH}")),
    ];
    if let Some(v) = &varnish {
        urls.push(("varnish", format!("http://{}{PATH}", v.listen)));
    }
    let varnish_log = varnish.as_ref().and_then(|v| v.access_log.as_deref());
    let logged_before = varnish_log.map_or(0, line_count);
    let mut checks = Vec::new();
    for (system, url) in &urls {
        let is_proxy = *system != CEILING;
        let expected = u64::from(!(cached && is_proxy));
        let fill = (cached && is_proxy).then_some(url.as_str());
        checks
            .push(cache::probe_check(system, url, fill, &counter_url, size, expected, &[]).await?);
    }
    if let Some(log) = varnish_log {
        // The probe (and the filling GET) must have reached varnishncsa's file.
        let probes = 1 + usize::from(cached);
        wait_for_lines(
            log,
            logged_before + probes,
            std::time::Duration::from_secs(10),
        )
        .await
        .context("varnishncsa does not write Varnish's access log")?;
    }
    h.check_alive()?;

    let mut notes = common_notes(&h, context, kind);
    notes.push(format!(
        "{} B body ({}){}; one GET /object per request",
        size,
        size_label(size),
        if cached {
            ", origin sends `Cache-Control: public, max-age=3600` and an ETag"
        } else {
            ", no cache headers"
        }
    ));
    notes.push(if cached {
        "cathedral: `serve --config` with one upstream route (cache on, defaults: 256 MiB memory, \
         integrity 1 in 100); nginx: proxy_cache (disk cache, served via sendfile from the page cache); \
         each filled by one GET and checked to answer the next without an origin request"
            .to_owned()
    } else {
        "cathedral: `serve --config`, one upstream route with `cache = false`; nginx: proxy_pass with \
         upstream keep-alive; both forward to the origin, which runs on the same CPUs and is paid for \
         in these rows"
            .to_owned()
    });
    if varnish.is_some() {
        notes.push(format!(
            "varnish: `varnishd -F -a ADDR -T none -n WORKDIR -f VCL -s {} -p timeout_idle={}` \
             ({}; thread pools at Varnish's defaults; timeout_idle is nginx's keepalive_timeout, \
             Varnish's default 5 s would close the c10k connections between requests); its manager \
             and cache process pinned like every system, CPU and peak RSS summed over them{} (RSS \
             an upper bound: the shared-memory log counts in every process mapping it)",
            varnish_config::STORAGE,
            varnish_config::TIMEOUT_IDLE_SECS,
            if cached {
                "the built-in VCL: cached per the origin's Cache-Control, no TTL of our own, filled \
                 by one GET and checked like the others"
            } else {
                "`return (pass)` in vcl_recv: every request forwarded to the origin"
            },
            if context.varnish.logs(plan.access_log) {
                " and varnishncsa"
            } else {
                ""
            }
        ));
    }
    if kind == ScenarioKind::C10k {
        notes.push(format!(
            "open loop: {} req/s over {} connections (one request per connection every {:.1} s), \
             connections opened over {} s, latency from each request's scheduled start; \
             cathedral max_connections = nginx worker_connections = {}; Varnish timeout_idle {} s",
            plan.c10k.rate.unwrap_or_default(),
            plan.c10k.connections,
            plan.c10k.connections as f64 / plan.c10k.rate.unwrap_or(1.0),
            plan.c10k.ramp_secs,
            nginx_config::WORKER_CONNECTIONS,
            varnish_config::TIMEOUT_IDLE_SECS
        ));
    }
    let scenario = Scenario {
        name: name.clone(),
        systems: urls
            .iter()
            .map(|(system_name, url)| SystemUnderTest {
                name: (*system_name).into(),
                url: url.clone(),
                process: if *system_name == CEILING {
                    "origin".into()
                } else {
                    (*system_name).into()
                },
            })
            .collect(),
        baseline: CEILING.into(),
        ratios: if varnish.is_some() {
            vec![ratio("cathedral", "nginx"), ratio("cathedral", "varnish")]
        } else {
            vec![ratio("cathedral", "nginx")]
        },
        counters: vec![Counter {
            name: ORIGIN_COUNTER.into(),
            url: counter_url,
        }],
        load: load.clone(),
        runs: h.config.runs,
        quiet: h.config.quiet.clone(),
        notes: notes.clone(),
    };
    let mut generated = serde_json::json!({ "cathedral": node_files, "nginx": nginx_conf });
    if let Some(v) = &varnish {
        generated["varnish"] = v.generated.clone();
    }
    let checks_json = serde_json::json!({
        "probes": checks,
        "generated_config": generated,
    });
    let (result, path) = h.measure(scenario, Some(checks_json)).await?;
    let mut warnings = Vec::new();
    if cached {
        warnings.extend(not_all_hits(&result, &["cathedral", "nginx", "varnish"]));
    }
    warnings.extend(non_2xx(&result));
    if kind == ScenarioKind::C10k {
        warnings.extend(reconnects(&result, load.connections));
    }
    let cross = cross_check(context, kind, &h, &result, &mut warnings).await;
    let pinning = h.pinning.description.clone();
    h.stop().await?;
    drop(varnish);
    let mut outcome = outcome(kind, plan, &result, path, notes, warnings, cross);
    for caveat in caveats {
        eprintln!("[compare] CAVEAT: {caveat}");
        outcome.caveats.push(caveat);
    }
    Ok((outcome, pinning))
}

/// The hello handler: the same component under cathedral and `wasmtime serve`.
async fn handler(context: &Context) -> anyhow::Result<(ScenarioOutcome, String)> {
    let plan = &context.plan;
    let kind = ScenarioKind::Handler;
    let load = load_for(kind, plan);
    let hello = context
        .hello
        .clone()
        .context("the hello component was not built")?;
    let wasmtime = context
        .wasmtime
        .clone()
        .context("the wasmtime CLI was not provisioned")?;
    let with_log_row = plan.access_log == AccessLog::On;
    let systems = 4 + usize::from(with_log_row);
    let mut h = harness_for(context, "compare-handler", systems, &load, "--handler").await?;
    let origin = h
        .start_origin("origin", peers::HELLO_BODY.len(), &[])
        .await?;
    let mut urls = vec![(CEILING.to_owned(), format!("http://{origin}/"))];
    let mut cathedral_rows = vec![("cathedral", AccessLog::Off)];
    if with_log_row {
        cathedral_rows.push(("cathedral-accesslog", AccessLog::On));
    }
    for (name, log) in cathedral_rows {
        let [listen, admin] = process::free_loopback_ports(2)?[..] else {
            bail!("expected two free ports");
        };
        let args: Vec<OsString> = vec![
            "serve".into(),
            "--handler".into(),
            hello.clone().into(),
            "--listen".into(),
            listen.to_string().into(),
            "--admin-listen".into(),
            admin.to_string().into(),
        ];
        start_cathedral(&mut h, context, name, args, log, listen).await?;
        urls.push((name.to_owned(), format!("http://{listen}/")));
    }
    for (name, timeout) in [
        ("wasmtime", None),
        ("wasmtime-timeout", Some(plan.wasmtime_timeout.as_str())),
    ] {
        let [listen] = process::free_loopback_ports(1)?[..] else {
            bail!("expected a free port");
        };
        let args = wasmtime_serve_args(listen, timeout, &hello);
        h.start_program(name, &wasmtime, &args, &[], listen, Accounting::Process)
            .await?;
        urls.push((name.to_owned(), format!("http://{listen}/")));
    }
    let mut checks = Vec::new();
    for (name, url) in &urls {
        let fetched = client::get(url, std::time::Duration::from_secs(10))
            .await
            .with_context(|| format!("probing {name}"))?;
        let body_ok = if name == CEILING {
            fetched.body.len() == peers::HELLO_BODY.len()
        } else {
            fetched.body.as_ref() == peers::HELLO_BODY
        };
        if !fetched.status.is_success() || !body_ok {
            bail!(
                "{name}: GET {url} answered {} with {:?}, expected 200 with {:?}",
                fetched.status,
                String::from_utf8_lossy(&fetched.body),
                String::from_utf8_lossy(peers::HELLO_BODY)
            );
        }
        checks.push(serde_json::json!({
            "system": name,
            "url": url,
            "status": fetched.status.as_u16(),
            "body_bytes": fetched.body.len(),
            "headers": fetched.headers.iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?"))).collect::<Vec<_>>(),
        }));
    }
    h.check_alive()?;
    let mut notes = common_notes(&h, context, kind);
    notes[2] = format!(
        "access logs: off for `cathedral` and both wasmtime rows (`wasmtime serve` has no access log){}",
        if with_log_row {
            "; `cathedral-accesslog` is the same node with its JSON access log on"
        } else {
            ""
        }
    );
    notes.extend([
        format!(
            "the component: benches/guests/wasi-hello ({} bytes of .wasm), a plain wasi:http/proxy \
             handler answering a fixed {}-byte body; the ceiling origin sends as many bytes",
            std::fs::metadata(&hello).map(|m| m.len()).unwrap_or(0),
            peers::HELLO_BODY.len()
        ),
        "cathedral: `serve --handler FILE` (quick mode: pooling allocator, epoch-based CPU deadline \
         of 50 ms per request always on, wall timeout 30 s, fresh instance per request)"
            .to_owned(),
        format!(
            "wasmtime: `wasmtime serve {}`; wasmtime-timeout adds `-W timeout={}`",
            wasmtime_serve_args(SocketAddr::from(([127, 0, 0, 1], 0)), None, Path::new("FILE"))
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
                .replace("127.0.0.1:0", "ADDR"),
            plan.wasmtime_timeout
        ),
    ]);
    let mut ratios = vec![
        ratio("cathedral", "wasmtime"),
        ratio("cathedral", "wasmtime-timeout"),
    ];
    if with_log_row {
        ratios.push(ratio("cathedral-accesslog", "wasmtime-timeout"));
    }
    let scenario = Scenario {
        name: "compare-handler".into(),
        systems: urls
            .iter()
            .map(|(n, url)| {
                let mut s = system(n, url.clone());
                if n == CEILING {
                    s.process = "origin".into();
                }
                s
            })
            .collect(),
        baseline: CEILING.into(),
        ratios,
        counters: Vec::new(),
        load: load.clone(),
        runs: h.config.runs,
        quiet: h.config.quiet.clone(),
        notes: notes.clone(),
    };
    let (result, path) = h
        .measure(scenario, Some(serde_json::json!({ "probes": checks })))
        .await?;
    let mut warnings = non_2xx(&result);
    let cross = cross_check(context, kind, &h, &result, &mut warnings).await;
    let pinning = h.pinning.description.clone();
    h.stop().await?;
    Ok((
        outcome(kind, plan, &result, path, notes, warnings, cross),
        pinning,
    ))
}

/// `wasmtime serve` arguments: the address, the pooling allocator, WASI CLI interfaces (a
/// Rust `std` component imports `wasi:cli/environment` and friends beyond the proxy world),
/// and the optional `-W timeout`.
pub fn wasmtime_serve_args(
    listen: SocketAddr,
    timeout: Option<&str>,
    wasm: &Path,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "serve".into(),
        "--addr".into(),
        listen.to_string().into(),
        "-O".into(),
        "pooling-allocator=y".into(),
        "-S".into(),
        "cli=y".into(),
    ];
    if let Some(timeout) = timeout {
        args.push("-W".into());
        args.push(format!("timeout={timeout}").into());
    }
    args.push(wasm.into());
    args
}

/// The filter chain on a cache hit vs the same route without filters.
async fn filters(context: &Context) -> anyhow::Result<(ScenarioOutcome, String)> {
    let plan = &context.plan;
    let kind = ScenarioKind::Filters;
    let load = load_for(kind, plan);
    const SIZE: usize = 1024;
    let mut h = harness_for(context, "compare-filters", 3, &load, "--config").await?;
    let origin = h.start_origin("origin", SIZE, &cacheable()).await?;
    let counter_url = format!("http://{origin}{STATS_PATH}");
    let mut urls = vec![(CEILING.to_owned(), format!("http://{origin}/object"))];
    let mut files = serde_json::Map::new();
    for (name, chain) in [("cathedral-nofilters", false), ("cathedral-filters", true)] {
        let node_kind = NodeKind::Filters {
            chain,
            api_keys: plan.api_keys,
        };
        let (listen, generated) =
            start_node(&mut h, context, name, node_kind, origin, plan.access_log).await?;
        files.insert(name.into(), generated);
        urls.push((name.to_owned(), format!("http://{listen}/object")));
    }
    let headers = HeaderSets::parse(&load.headers, load.cycle)?;
    let probe_headers = headers.for_request(0, 0, 1).to_vec();
    let mut checks = Vec::new();
    for (name, url) in &urls {
        let is_node = name != CEILING;
        let fill = is_node.then_some(url.as_str());
        checks.push(
            cache::probe_check(
                name,
                url,
                fill,
                &counter_url,
                SIZE,
                u64::from(!is_node),
                &probe_headers,
            )
            .await?,
        );
    }
    h.check_alive()?;
    let mut notes = common_notes(&h, context, kind);
    notes.extend([
        format!(
            "every request (every system) carries `x-api-key: bench-key-N`, `cookie: uid=user-N` and \
             `x-client-country: US`, N cycling over {} values",
            plan.api_keys
        ),
        format!(
            "cathedral-filters: the route runs ratelimit (closed) → compliance (closed) → personalize \
             (open, response body up to 256 KiB) as in the demo; ratelimit's key table names all {} keys \
             (`[config.keys]`, the documented format for large key sets) for one tier with a policy of \
             1,000,000/s and burst 1,000,000 per key (far above the load: no 429s)",
            plan.api_keys
        ),
        "cathedral-nofilters: the same node and route (modules loaded, user_id from the uid cookie) \
         without `filters`; both serve cache hits of the same 1 KiB object"
            .to_owned(),
    ]);
    let scenario = Scenario {
        name: "compare-filters".into(),
        systems: urls
            .iter()
            .map(|(n, url)| {
                let mut s = system(n, url.clone());
                if n == CEILING {
                    s.process = "origin".into();
                }
                s
            })
            .collect(),
        baseline: CEILING.into(),
        ratios: vec![ratio("cathedral-filters", "cathedral-nofilters")],
        counters: vec![Counter {
            name: ORIGIN_COUNTER.into(),
            url: counter_url,
        }],
        load: load.clone(),
        runs: h.config.runs,
        quiet: h.config.quiet.clone(),
        notes: notes.clone(),
    };
    let (result, path) = h
        .measure(
            scenario,
            Some(serde_json::json!({ "probes": checks, "generated_config": files })),
        )
        .await?;
    let mut warnings = not_all_hits(&result, &["cathedral-nofilters", "cathedral-filters"]);
    warnings.extend(non_2xx(&result));
    let pinning = h.pinning.description.clone();
    h.stop().await?;
    Ok((
        outcome(kind, plan, &result, path, notes, warnings, Vec::new()),
        pinning,
    ))
}

/// Builds a [`ScenarioOutcome`] from a measured scenario.
fn outcome(
    kind: ScenarioKind,
    plan: &Plan,
    result: &ScenarioResult,
    path: PathBuf,
    notes: Vec<String>,
    warnings: Vec<String>,
    cross_check: Vec<WrkResult>,
) -> ScenarioOutcome {
    for w in &warnings {
        eprintln!("[compare] WARNING: {w}");
    }
    let caveats = generator_bound(result);
    for c in &caveats {
        eprintln!("[compare] CAVEAT: {c}");
    }
    ScenarioOutcome {
        kind,
        title: title(kind, plan),
        load: result.scenario.load.clone(),
        summary: result.summary.clone(),
        ratios: result.ratios.clone(),
        notes,
        results_file: Some(path),
        warnings,
        caveats,
        error: None,
        cross_check,
    }
}

/// Share of its CPUs above which the generator counts as saturated.
const GENERATOR_BOUND: f64 = 0.9;

/// Systems whose measurements had the generator using at least [`GENERATOR_BOUND`] of the CPUs
/// it may use (median over runs): their requests/s are a floor, set by the generator.
pub fn generator_bound(result: &ScenarioResult) -> Vec<String> {
    result
        .summary
        .iter()
        .filter_map(|row| {
            let used = row.generator_cores_used?;
            let cpus = result
                .measurements
                .iter()
                .find(|m| m.system == row.system)
                .map_or(1, |m| m.load.cpu.cpus_available.max(1));
            (used >= GENERATOR_BOUND * cpus as f64).then(|| {
                format!(
                    "{}: {}: the load generator used {used:.2} of its {cpus} CPU(s): these req/s \
                     are the generator's limit, a floor for the system (compare the wrk cross-check)",
                    result.scenario.name, row.system
                )
            })
        })
        .collect()
}

/// Drives every system of `result` once with `wrk` (when available and the scenario is
/// cross-checked), pinned like our generator; failures become warnings.
async fn cross_check(
    context: &Context,
    kind: ScenarioKind,
    h: &Harness,
    result: &ScenarioResult,
    warnings: &mut Vec<String>,
) -> Vec<WrkResult> {
    let Some(wrk) = context.wrk.as_deref() else {
        return Vec::new();
    };
    if !kind.cross_checked() {
        return Vec::new();
    }
    let load = &result.scenario.load;
    let mut out = Vec::new();
    for system in &result.scenario.systems {
        eprintln!(
            "[{}] wrk cross-check: {}",
            result.scenario.name, system.name
        );
        match wrk::run(
            wrk,
            &h.pinning,
            &system.url,
            load.connections,
            load.duration_secs,
        )
        .await
        {
            Ok((requests_per_sec, p50_us, p99_us, errors)) => out.push(WrkResult {
                system: system.name.clone(),
                requests_per_sec,
                p50_us,
                p99_us,
                errors,
                ours_requests_per_sec: result
                    .summary
                    .iter()
                    .find(|row| row.system == system.name)
                    .and_then(|row| row.requests_per_sec.map(|r| r.median)),
            }),
            Err(e) => warnings.push(format!(
                "{}: {}: wrk cross-check failed: {e:#}",
                result.scenario.name, system.name
            )),
        }
    }
    out
}

/// Caching systems whose origin counter moved by more than 1 in 1000 client requests.
pub fn not_all_hits(result: &ScenarioResult, caching: &[&str]) -> Vec<String> {
    result
        .summary
        .iter()
        .filter(|row| caching.contains(&row.system.as_str()))
        .filter_map(|row| {
            let per = row.counters.get(ORIGIN_COUNTER)?.per_client_request?;
            (per > 0.001).then(|| {
                format!(
                    "{}: {}: {per:.3} origin requests per client request — not all cache hits",
                    result.scenario.name, row.system
                )
            })
        })
        .collect()
}

/// Systems that received responses outside 2xx.
pub fn non_2xx(result: &ScenarioResult) -> Vec<String> {
    result
        .summary
        .iter()
        .filter(|row| !row.statuses.is_empty())
        .map(|row| {
            format!(
                "{}: {}: non-2xx responses {:?}",
                result.scenario.name, row.system, row.statuses
            )
        })
        .collect()
}

/// Systems that made the generator reconnect (the server closed held connections).
pub fn reconnects(result: &ScenarioResult, connections: usize) -> Vec<String> {
    result
        .summary
        .iter()
        .filter_map(|row| {
            let opened = row.connections_opened_max?;
            (opened > connections as u64).then(|| {
                format!(
                    "{}: {}: {} connections opened for {connections} (the server closed {} held connections)",
                    result.scenario.name,
                    row.system,
                    opened,
                    opened - connections as u64
                )
            })
        })
        .collect()
}

/// Where a comparison's files went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPaths {
    pub json: PathBuf,
    pub svg: PathBuf,
    pub markdown: PathBuf,
}

/// Writes `compare-<stamp>.{json,svg,md}` into `dir`.
fn write_outputs(dir: &Path, stamp: &str, comparison: &Comparison) -> anyhow::Result<OutputPaths> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let paths = OutputPaths {
        json: dir.join(format!("compare-{stamp}.json")),
        svg: dir.join(format!("compare-{stamp}.svg")),
        markdown: dir.join(format!("compare-{stamp}.md")),
    };
    std::fs::write(&paths.json, serde_json::to_vec_pretty(comparison)?)
        .with_context(|| format!("writing {}", paths.json.display()))?;
    std::fs::write(&paths.svg, render_chart(comparison))
        .with_context(|| format!("writing {}", paths.svg.display()))?;
    std::fs::write(&paths.markdown, render_markdown(comparison, &paths))
        .with_context(|| format!("writing {}", paths.markdown.display()))?;
    Ok(paths)
}

/// The chart of a comparison.
pub fn render_chart(c: &Comparison) -> String {
    let groups: Vec<ChartGroup<'_>> = c
        .scenarios
        .iter()
        .filter(|s| s.error.is_none())
        .map(|s| ChartGroup {
            title: s.title.clone(),
            systems: &s.summary,
        })
        .collect();
    render_chart_groups(c, &groups)
}

fn render_chart_groups(c: &Comparison, groups: &[ChartGroup<'_>]) -> String {
    chart::render_svg(
        &format!(
            "cathedral vs nginx, Varnish and wasmtime serve{}",
            if c.plan.quick {
                " (QUICK SMOKE RUN, not results)"
            } else {
                ""
            }
        ),
        &format!(
            "{} · commit {} · {} run(s) · {}",
            c.started_utc,
            short_commit(&c.versions),
            c.runs,
            c.machine.cpu_model.as_deref().unwrap_or("unknown CPU")
        ),
        groups,
    )
}

fn short_commit(v: &Versions) -> String {
    let commit = v
        .commit
        .as_deref()
        .map_or("unknown", |c| &c[..c.len().min(7)]);
    if v.uncommitted.is_empty() {
        commit.to_owned()
    } else {
        format!("{commit}+uncommitted")
    }
}

/// A path relative to the workspace root when it lies inside it.
fn shown(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn dash() -> String {
    "—".to_owned()
}

/// The markdown report: provenance, one table of every system, the head-to-head ratios, the
/// chart, checks, and where the raw results are.
pub fn render_markdown(c: &Comparison, paths: &OutputPaths) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### {}{} — commit {}\n",
        c.started_utc,
        if c.plan.quick {
            " (quick smoke run: NOT results)"
        } else {
            ""
        },
        short_commit(&c.versions)
    );
    let v = &c.versions;
    let m = &c.machine;
    let _ = writeln!(out, "- Command: `{}`", c.command);
    let _ = writeln!(
        out,
        "- Machine: {} ({} CPUs online, allowed {}), kernel {}, {:.0} GiB; somaxconn {}; \
         RLIMIT_NOFILE {} (hard {}) for the harness and every child",
        m.cpu_model.as_deref().unwrap_or("?"),
        m.online_cpus.map_or_else(dash, |n| n.to_string()),
        m.allowed_cpus.as_deref().unwrap_or("?"),
        m.kernel.as_deref().unwrap_or("?"),
        m.memory_total_bytes.unwrap_or(0) as f64 / f64::from(1u32 << 30),
        v.somaxconn.as_deref().unwrap_or("?"),
        c.nofile.0,
        c.nofile.1
    );
    let _ = writeln!(
        out,
        "- Versions: {} (binary {}{}; workspace at commit {}{}), {}, {}, {}, {}",
        v.cathedral.as_deref().unwrap_or("cathedral ?"),
        if c.plan.build && !c.plan.cathedral_given {
            "built by this run"
        } else {
            "as found, not rebuilt"
        },
        v.cathedral_built_utc
            .as_deref()
            .map_or_else(String::new, |t| format!(", written {t}")),
        v.commit.as_deref().unwrap_or("?"),
        uncommitted_note(&v.uncommitted),
        v.nginx.as_deref().unwrap_or("nginx not used"),
        match (&c.varnish, v.varnish.as_deref()) {
            (VarnishStatus::Unavailable { .. }, _) => "Varnish unavailable (rows left out)",
            (_, Some(line)) => line,
            (_, None) => "varnish not used",
        },
        v.wasmtime.as_deref().unwrap_or("wasmtime not used"),
        v.rustc.as_deref().unwrap_or("rustc ?")
    );
    let _ = writeln!(
        out,
        "- Pinning: {}",
        if c.pinning.is_empty() {
            "—"
        } else {
            &c.pinning
        }
    );
    let _ = writeln!(
        out,
        "- Load: {} run(s) per scenario, systems rotated each run; {} s measured after {} s warm-up \
         at {} connections (closed loop); c10k: {} connections opened over {} s, {} req/s open loop, \
         {} s measured after {} s warm-up",
        c.runs,
        c.plan.load.duration_secs,
        c.plan.load.warmup_secs,
        c.plan.load.connections,
        c.plan.c10k.connections,
        c.plan.c10k.ramp_secs,
        c.plan.c10k.rate.unwrap_or_default(),
        c.plan.c10k.duration_secs,
        c.plan.c10k.warmup_secs
    );
    let _ = writeln!(
        out,
        "- Access logs: {}\n",
        match (c.plan.access_log, &c.varnish) {
            (AccessLog::Off, _) => "off for every system",
            (AccessLog::On, VarnishStatus::Used { access_log: true }) =>
                "on for cathedral, nginx and Varnish (varnishncsa beside it, counted as \
                 Varnish's) (JSON lines to a file); off for cathedral and wasmtime in the handler \
                 scenario (`wasmtime serve` has none), whose `cathedral-accesslog` row has it on",
            (AccessLog::On, VarnishStatus::Used { access_log: false }) =>
                "on for cathedral and nginx (JSON lines to a file), OFF for Varnish \
                 (varnishncsa not found: a mismatch in Varnish's favour); off for cathedral and \
                 wasmtime in the handler scenario (`wasmtime serve` has none), whose \
                 `cathedral-accesslog` row has it on",
            (AccessLog::On, _) =>
                "on for cathedral and nginx (JSON lines to a file); off for cathedral \
                              and wasmtime in the handler scenario (`wasmtime serve` has none), \
                              whose `cathedral-accesslog` row has it on",
        }
    );
    let _ = writeln!(
        out,
        "| scenario | system | req/s median [min–max] | p50 | p99 | p99.9 | errors | peak RSS | SUT CPUs | generator CPUs | ÷ ceiling (per run) | other load, worst run |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for s in &c.scenarios {
        if let Some(error) = &s.error {
            let _ = writeln!(
                out,
                "| {} | **failed**: {} | | | | | | | | | | |",
                s.title,
                error.replace('|', "\\|").replace('\n', " ")
            );
            continue;
        }
        for row in &s.summary {
            let errors = if row.statuses.is_empty() {
                row.errors.to_string()
            } else {
                format!(
                    "{} ({})",
                    row.errors,
                    row.statuses
                        .iter()
                        .map(|(code, n)| format!("{n}× {code}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.title,
                row.system,
                row.requests_per_sec.map_or_else(dash, |r| format!(
                    "{} [{}–{}]",
                    chart::thousands(r.median),
                    chart::thousands(r.min),
                    chart::thousands(r.max)
                )),
                row.p50_us.map_or_else(dash, chart::micros),
                row.p99_us.map_or_else(dash, chart::micros),
                row.p999_us.map_or_else(dash, chart::micros),
                errors,
                row.peak_rss_bytes
                    .map_or_else(dash, |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
                row.sut_cores_used.map_or_else(dash, |x| format!("{x:.2}")),
                row.generator_cores_used
                    .map_or_else(dash, |x| format!("{x:.2}")),
                row.ratio_vs_baseline.map_or_else(dash, |r| format!(
                    "{:.2} [{:.2}–{:.2}]",
                    r.median, r.min, r.max
                )),
                row.other_cores_used_max
                    .map_or_else(dash, |x| format!("{x:.2}")),
            );
        }
    }
    let _ = writeln!(
        out,
        "\n| scenario | cathedral ÷ peer | req/s ratio per run, median [min–max] | p99 (cathedral, peer) |\n\
         |---|---|---:|---:|"
    );
    for s in c.scenarios.iter().filter(|s| s.error.is_none()) {
        for r in &s.ratios {
            let p99 = |name: &str| {
                s.summary
                    .iter()
                    .find(|row| row.system == name)
                    .and_then(|row| row.p99_us)
                    .map_or_else(dash, chart::micros)
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {}, {} |",
                s.title,
                r.label,
                r.ratio.map_or_else(dash, |x| format!(
                    "**{:.2}** [{:.2}–{:.2}]",
                    x.median, x.min, x.max
                )),
                p99(&r.numerator),
                p99(&r.denominator)
            );
        }
    }
    let warnings: Vec<&String> = c.scenarios.iter().flat_map(|s| &s.warnings).collect();
    out.push('\n');
    if warnings.is_empty() {
        let _ = writeln!(out, "Checks passed: {}.\n", passed_checks(c).join("; "));
    } else {
        out.push_str("Checks that failed:\n\n");
        for w in warnings {
            let _ = writeln!(out, "- {w}");
        }
        out.push('\n');
    }
    let caveats: Vec<&String> = c.scenarios.iter().flat_map(|s| &s.caveats).collect();
    if !caveats.is_empty() {
        out.push_str("Caveats:\n\n");
        for caveat in caveats {
            let _ = writeln!(out, "- {caveat}");
        }
        out.push('\n');
    }
    let cross: Vec<(&ScenarioOutcome, &WrkResult)> = c
        .scenarios
        .iter()
        .flat_map(|s| s.cross_check.iter().map(move |w| (s, w)))
        .collect();
    if !cross.is_empty() {
        let _ = writeln!(
            out,
            "Cross-check with wrk (`wrk -t1 -cN -dS --latency`, pinned like our generator, once per \
             system after the runs, no warm-up of its own):\n\n\
             | scenario | system | wrk req/s | ours, median req/s | wrk ÷ ours | wrk p50 | wrk p99 | wrk errors |\n\
             |---|---|---:|---:|---:|---:|---:|---:|"
        );
        for (s, w) in cross {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                s.title,
                w.system,
                chart::thousands(w.requests_per_sec),
                w.ours_requests_per_sec.map_or_else(dash, chart::thousands),
                w.ours_requests_per_sec
                    .filter(|o| *o > 0.0)
                    .map_or_else(dash, |o| format!("{:.2}", w.requests_per_sec / o)),
                w.p50_us.map_or_else(dash, chart::micros),
                w.p99_us.map_or_else(dash, chart::micros),
                w.errors
            );
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "Chart: ![throughput and p99 per scenario]({})\n\nRaw results: `{}` (this comparison, every \
         summary) and one file per scenario with every measurement, probe and generated config: {}.\n",
        shown(&paths.svg),
        shown(&paths.json),
        c.scenarios
            .iter()
            .filter_map(|s| s.results_file.as_deref())
            .map(|p| format!("`{}`", shown(p)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out
}

/// " plus uncommitted changes in A, B, ..." (at most six paths named), or nothing.
fn uncommitted_note(paths: &[String]) -> String {
    const SHOWN: usize = 6;
    match paths.len() {
        0 => String::new(),
        n if n <= SHOWN => format!(" plus uncommitted changes in {}", paths.join(", ")),
        n => format!(
            " plus uncommitted changes in {} and {} more (listed in the JSON)",
            paths[..SHOWN].join(", "),
            n - SHOWN
        ),
    }
}

/// What the post-measurement checks established, for the scenarios that ran.
fn passed_checks(c: &Comparison) -> Vec<String> {
    let ran = |k: &[ScenarioKind]| {
        c.scenarios
            .iter()
            .any(|s| s.error.is_none() && k.contains(&s.kind))
    };
    let mut checks = Vec::new();
    if ran(&[
        ScenarioKind::Cache1k,
        ScenarioKind::Cache100k,
        ScenarioKind::Filters,
        ScenarioKind::C10k,
    ]) {
        checks.push(
            "every cache row was a hit (a probe after one filling GET cost the origin no request, \
             and the origin's counter stayed flat while it was measured)"
                .to_owned(),
        );
    }
    checks.push("no system answered outside 2xx".to_owned());
    if ran(&[ScenarioKind::C10k]) {
        checks.push("no server closed a held c10k connection".to_owned());
    }
    checks
}

/// Appends `markdown` to the file at `path` (which must exist), after a blank line.
pub fn append(path: &Path, markdown: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    write!(file, "\n{markdown}").with_context(|| format!("appending to {}", path.display()))?;
    Ok(())
}

/// The body sizes the comparison uses (kept within the origin's limit).
const _: () = assert!(102_400 <= MAX_BODY_SIZE);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::tests::args as runner_args;
    use crate::scenario::tests::{measurement, scenario};
    use crate::scenario::{ratios, summarise};

    fn args() -> CompareArgs {
        CompareArgs {
            runner: runner_args(),
            quick: false,
            scenarios: Vec::new(),
            access_log: AccessLog::On,
            c10k_connections: 10_000,
            c10k_duration: 60.0,
            c10k_warmup: 20.0,
            c10k_ramp: 10.0,
            c10k_rate: 2_000.0,
            api_keys: 1_000,
            wasmtime_timeout: "50ms".into(),
            no_build: false,
            no_install: false,
            no_append: false,
            no_wrk: false,
        }
    }

    #[test]
    fn the_plan_covers_every_scenario_by_default() -> anyhow::Result<()> {
        let (runner, plan) = Plan::new(&args())?;
        assert_eq!(plan.scenarios, ScenarioKind::ALL);
        assert_eq!(runner.runs, 3);
        assert!(plan.append && plan.build && plan.install);
        assert_eq!(plan.c10k.connections, 10_000);
        assert_eq!(plan.c10k.rate, Some(2_000.0));
        assert_eq!(plan.c10k.duration_secs, 60.0);
        assert_eq!(plan.load.rate, None);
        assert_eq!(plan.needed_fds(), 11_024);
        assert_eq!(plan.wasmtime_timeout, "50ms");
        let filters = load_for(ScenarioKind::Filters, &plan);
        assert_eq!(filters.cycle, 1_000);
        assert_eq!(filters.headers.len(), 3);
        assert!(load_for(ScenarioKind::Proxy, &plan).headers.is_empty());
        Ok(())
    }

    #[test]
    fn a_full_run_takes_about_forty_minutes() -> anyhow::Result<()> {
        let (runner, plan) = Plan::new(&args())?;
        // cache ×2 and proxy (4 systems with Varnish × 3 runs × 15 s + 40 s wrk + 10 s),
        // handler (5 systems: 225 + 50 + 10), filters (3 systems: 135 + 10), c10k (4 × 3 × 83 s
        // + 10).
        let expected = 3.0 * 230.0 + 285.0 + 145.0 + 1006.0;
        assert_eq!(plan.estimated_secs(runner.runs), expected);
        assert!((30.0 * 60.0..40.0 * 60.0).contains(&expected));
        assert_eq!(plan.systems(ScenarioKind::Cache1k), 4);
        assert_eq!(plan.systems(ScenarioKind::C10k), 4);
        assert_eq!(plan.systems(ScenarioKind::Filters), 3);
        let mut quick = args();
        quick.quick = true;
        let (runner, plan) = Plan::new(&quick)?;
        assert!(plan.estimated_secs(runner.runs) < 5.0 * 60.0);
        Ok(())
    }

    #[test]
    fn quick_mode_is_short_and_never_appends() -> anyhow::Result<()> {
        let mut a = args();
        a.quick = true;
        a.scenarios = vec![
            ScenarioKind::Handler,
            ScenarioKind::Handler,
            ScenarioKind::Proxy,
        ];
        let (runner, plan) = Plan::new(&a)?;
        assert_eq!(runner.runs, 1);
        assert_eq!(plan.load.duration_secs, 2.0);
        assert_eq!(plan.c10k.duration_secs, 5.0);
        assert!(!plan.append);
        assert!(runner.results_dir.ends_with("target/bench-results-quick"));
        assert_eq!(plan.scenarios, [ScenarioKind::Handler, ScenarioKind::Proxy]);
        assert_eq!(plan.needed_fds(), 64 + 1024);
        Ok(())
    }

    #[test]
    fn compare_arguments_are_validated() {
        let err = |a: CompareArgs| Plan::new(&a).err().map(|e| e.to_string());
        let mut a = args();
        a.c10k_ramp = 30.0;
        assert!(err(a).is_some_and(|e| e.contains("--c10k-ramp")));
        let mut a = args();
        a.c10k_rate = 0.0;
        assert!(err(a).is_some_and(|e| e.contains("--c10k-rate")));
        let mut a = args();
        a.api_keys = 0;
        assert!(err(a).is_some_and(|e| e.contains("--api-keys")));
        let mut a = args();
        a.wasmtime_timeout = "soon".into();
        assert!(err(a).is_some_and(|e| e.contains("--wasmtime-timeout")));
        let mut a = args();
        a.c10k_connections = 0;
        assert!(err(a).is_some_and(|e| e.contains("--c10k-connections")));
    }

    #[test]
    fn durations_in_milliseconds() {
        assert_eq!(humantime_ms("50ms"), Some(50));
        assert_eq!(humantime_ms("2s"), Some(2000));
        assert_eq!(humantime_ms("1m"), Some(60_000));
        assert_eq!(humantime_ms("0ms"), None);
        assert_eq!(humantime_ms("50"), None);
        assert_eq!(humantime_ms("ms"), None);
        assert_eq!(humantime_ms("5h"), None);
    }

    #[test]
    fn wasmtime_serve_gets_the_pooling_allocator_and_the_timeout() {
        let listen = SocketAddr::from(([127, 0, 0, 1], 18_000));
        let show = |a: Vec<OsString>| {
            a.iter()
                .map(|x| x.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            show(wasmtime_serve_args(listen, None, Path::new("h.wasm"))),
            "serve --addr 127.0.0.1:18000 -O pooling-allocator=y -S cli=y h.wasm"
        );
        assert_eq!(
            show(wasmtime_serve_args(
                listen,
                Some("50ms"),
                Path::new("h.wasm")
            )),
            "serve --addr 127.0.0.1:18000 -O pooling-allocator=y -S cli=y -W timeout=50ms h.wasm"
        );
    }

    /// A comparison of two scenarios made of the scenario tests' measurements.
    fn comparison() -> anyhow::Result<Comparison> {
        let (_, plan) = Plan::new(&args())?;
        let mut s = scenario();
        s.ratios = vec![ratio("cathedral", "direct")];
        let ms = [
            measurement(1, "direct", 100_000.0, 500, 1500, 0),
            measurement(1, "cathedral", 45_000.0, 1000, 2000, 0),
            measurement(2, "cathedral", 50_000.0, 1100, 2100, 2),
            measurement(2, "direct", 90_000.0, 500, 1600, 0),
        ];
        let mut summary = summarise(&s, &ms);
        summary[1].statuses.insert(429, 2);
        let measured = ScenarioOutcome {
            kind: ScenarioKind::Cache1k,
            title: title(ScenarioKind::Cache1k, &plan),
            load: plan.load.clone(),
            summary,
            ratios: ratios(&s, &ms),
            notes: vec!["a note".into()],
            results_file: Some(workspace_root().join("benches/results/compare-cache-1KiB-x.json")),
            warnings: vec!["compare-cache-1KiB: cathedral: non-2xx responses {429: 2}".into()],
            caveats: vec!["compare-cache-1KiB: direct: the load generator used 0.97".into()],
            error: None,
            cross_check: vec![WrkResult {
                system: "direct".into(),
                requests_per_sec: 99_000.0,
                p50_us: Some(480.0),
                p99_us: Some(1400.0),
                errors: 0,
                ours_requests_per_sec: Some(95_000.0),
            }],
        };
        let broken = failed(
            ScenarioKind::Handler,
            &plan,
            "wasmtime | exploded\nbadly".into(),
        );
        Ok(Comparison {
            started_utc: "2026-11-27T00:00:00Z".into(),
            finished_utc: "2026-11-27T00:30:00Z".into(),
            command: "cathedral-bench compare".into(),
            runs: 2,
            plan,
            versions: Versions {
                commit: Some("0123456789abcdef".into()),
                uncommitted: vec!["M runtime/edge/src/lib.rs".into()],
                cathedral: Some("cathedral 0.1.0".into()),
                cathedral_built_utc: Some("2026-11-26T23:59:00Z".into()),
                nginx: Some("nginx version: nginx/1.22.1".into()),
                varnish: Some("varnishd (varnish-7.1.1 revision 7cee1c5)".into()),
                wasmtime: Some("wasmtime 48.0.8".into()),
                rustc: Some("rustc 1.95.0".into()),
                somaxconn: Some("4096".into()),
            },
            machine: MachineInfo::read(),
            pinning: "pinned with taskset: systems under test on CPU 0, load generator on CPU 1"
                .into(),
            nofile: (20_000, 20_000),
            varnish: VarnishStatus::Used { access_log: true },
            scenarios: vec![measured, broken],
        })
    }

    fn paths() -> OutputPaths {
        let dir = workspace_root().join("benches/results");
        OutputPaths {
            json: dir.join("compare-x.json"),
            svg: dir.join("compare-x.svg"),
            markdown: dir.join("compare-x.md"),
        }
    }

    #[test]
    fn the_report_has_every_row_ratio_and_provenance() -> anyhow::Result<()> {
        let md = render_markdown(&comparison()?, &paths());
        for expected in [
            "### 2026-11-27T00:00:00Z — commit 0123456+uncommitted\n",
            "cathedral 0.1.0 (binary built by this run, written 2026-11-26T23:59:00Z; workspace at commit 0123456789abcdef plus uncommitted changes in M runtime/edge/src/lib.rs)",
            "Checks that failed:",
            "Caveats:\n\n- compare-cache-1KiB: direct: the load generator used 0.97\n",
            "nginx version: nginx/1.22.1, varnishd (varnish-7.1.1 revision 7cee1c5), wasmtime 48.0.8, rustc 1.95.0",
            "- Access logs: on for cathedral, nginx and Varnish (varnishncsa beside it",
            "RLIMIT_NOFILE 20000 (hard 20000)",
            "| cache hit, 1 KiB, 64 connections | direct | 95,000 [90,000–100,000] | 500 µs | 1.55 ms |",
            "| 2 (2× 429) |",
            "| cache hit, 1 KiB, 64 connections | cathedral ÷ direct | **0.50** [0.45–0.56] | 2.05 ms, 1.55 ms |",
            "| wasi:http hello handler, 64 connections | **failed**: wasmtime \\| exploded badly |",
            "- compare-cache-1KiB: cathedral: non-2xx responses {429: 2}\n",
            "![throughput and p99 per scenario](benches/results/compare-x.svg)",
            "`benches/results/compare-x.json`",
            "`benches/results/compare-cache-1KiB-x.json`",
            "| cache hit, 1 KiB, 64 connections | direct | 99,000 | 95,000 | 1.04 | 480 µs | 1.40 ms | 0 |",
        ] {
            assert!(md.contains(expected), "{expected:?} missing in:\n{md}");
        }
        // Every table row has as many cells as its header.
        for line in md.lines().filter(|l| l.starts_with("| cache hit")) {
            let cells = line.matches(" | ").count();
            assert!([11, 7, 3].contains(&cells), "{cells} in {line}");
        }
        Ok(())
    }

    #[test]
    fn the_report_says_what_became_of_varnish() -> anyhow::Result<()> {
        let mut c = comparison()?;
        c.varnish = VarnishStatus::Unavailable {
            reason: "apt-get failed".into(),
        };
        let md = render_markdown(&c, &paths());
        assert!(
            md.contains("nginx/1.22.1, Varnish unavailable (rows left out), wasmtime"),
            "{md}"
        );
        c.varnish = VarnishStatus::Used { access_log: false };
        let md = render_markdown(&c, &paths());
        assert!(
            md.contains("OFF for Varnish (varnishncsa not found: a mismatch in Varnish's favour)"),
            "{md}"
        );
        c.plan.access_log = AccessLog::Off;
        assert!(render_markdown(&c, &paths()).contains("- Access logs: off for every system\n"));
        c.varnish = VarnishStatus::NotUsed;
        c.versions.varnish = None;
        assert!(render_markdown(&c, &paths()).contains("nginx/1.22.1, varnish not used, wasmtime"));
        assert_eq!(
            serde_json::to_value(VarnishStatus::Unavailable { reason: "x".into() })?,
            serde_json::json!({"status": "unavailable", "reason": "x"})
        );
        Ok(())
    }

    #[test]
    fn the_access_log_note_names_a_varnish_without_a_log() {
        let found = |varnishncsa: Option<&str>| {
            VarnishPeer::Found(Varnish {
                varnishd: PathBuf::from("/usr/sbin/varnishd"),
                varnishncsa: varnishncsa.map(PathBuf::from),
            })
        };
        let with_log = found(Some("/usr/bin/varnishncsa"));
        assert!(with_log.logs(AccessLog::On));
        assert!(!with_log.logs(AccessLog::Off));
        assert!(access_log_note(AccessLog::On, &with_log).contains("Varnish's varnishncsa"));
        let without = found(None);
        assert!(!without.logs(AccessLog::On));
        assert!(access_log_note(AccessLog::On, &without).contains("Varnish WITHOUT an access log"));
        assert_eq!(
            without.status(AccessLog::On),
            VarnishStatus::Used { access_log: false }
        );
        let missing = VarnishPeer::Missing("no apt".into());
        assert!(!access_log_note(AccessLog::On, &missing).contains("Varnish"));
        assert_eq!(missing.varnishd(), None);
        assert_eq!(
            access_log_note(AccessLog::Off, &with_log),
            "access logs off for every system"
        );
        assert_eq!(
            VarnishPeer::NotNeeded.status(AccessLog::On),
            VarnishStatus::NotUsed
        );
    }

    #[tokio::test]
    async fn waiting_for_log_lines_times_out() -> anyhow::Result<()> {
        let dir =
            std::env::temp_dir().join(format!("cathedral-bench-lines-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("access.log");
        std::fs::write(&path, "one\ntwo\n")?;
        wait_for_lines(&path, 2, std::time::Duration::from_secs(1)).await?;
        let err = wait_for_lines(&path, 3, std::time::Duration::from_millis(100))
            .await
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("has 2 line(s)")),
            "{err:?}"
        );
        assert!(
            wait_for_lines(&dir.join("missing"), 1, std::time::Duration::ZERO)
                .await
                .is_err()
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn the_chart_of_a_comparison_skips_failed_scenarios() -> anyhow::Result<()> {
        let svg = render_chart(&comparison()?);
        let doc = roxmltree::Document::parse(&svg)?;
        let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
        assert!(texts.contains(&"cache hit, 1 KiB, 64 connections"));
        assert!(!texts.iter().any(|t| t.contains("hello handler")));
        assert!(
            texts
                .iter()
                .any(|t| t.contains("commit 0123456+uncommitted"))
        );
        Ok(())
    }

    #[test]
    fn checks_flag_misses_errors_and_reconnects() -> anyhow::Result<()> {
        let mut s = scenario();
        s.counters = vec![Counter {
            name: ORIGIN_COUNTER.into(),
            url: "http://127.0.0.1:1/n".into(),
        }];
        let mut direct = measurement(1, "direct", 100.0, 1, 1, 0);
        direct.counters.insert(ORIGIN_COUNTER.into(), 1000);
        let mut cathedral = measurement(1, "cathedral", 100.0, 1, 1, 1);
        cathedral.counters.insert(ORIGIN_COUNTER.into(), 500);
        cathedral.load.statuses.insert(503, 1);
        cathedral.load.connections_opened = 70;
        let ms = vec![direct, cathedral];
        let result = ScenarioResult {
            summary: summarise(&s, &ms),
            ratios: Vec::new(),
            scenario: s,
            started_utc: String::new(),
            harness_version: String::new(),
            machine: MachineInfo::read(),
            pinning: crate::process::Pinning::plan(crate::process::PinMode::Off, &[0], None),
            processes: Vec::new(),
            measurements: ms,
            discarded: Vec::new(),
            checks: None,
        };
        let misses = not_all_hits(&result, &["cathedral"]);
        assert_eq!(misses.len(), 1);
        assert!(
            misses[0].contains("0.500 origin requests per client request"),
            "{misses:?}"
        );
        assert!(not_all_hits(&result, &["nginx"]).is_empty());
        assert_eq!(
            non_2xx(&result),
            ["proxy: cathedral: non-2xx responses {503: 1}"]
        );
        assert!(
            generator_bound(&result).is_empty(),
            "0.5 of 1 CPU is not saturated"
        );
        let mut busy = result.clone();
        busy.measurements[0].load.cpu.cpus_available = 1;
        busy.summary[0].generator_cores_used = Some(0.95);
        let bound = generator_bound(&busy);
        assert_eq!(bound.len(), 1);
        assert!(
            bound[0].starts_with("proxy: direct: the load generator used 0.95 of its 1 CPU(s)"),
            "{bound:?}"
        );
        let closed = reconnects(&result, 64);
        assert_eq!(closed.len(), 1);
        assert!(
            closed[0].contains("70 connections opened for 64"),
            "{closed:?}"
        );
        Ok(())
    }

    #[test]
    fn uncommitted_paths_are_named_up_to_six() {
        assert_eq!(uncommitted_note(&[]), "");
        let paths: Vec<String> = (1..=8).map(|i| format!("M f{i}")).collect();
        assert_eq!(
            uncommitted_note(&paths[..2]),
            " plus uncommitted changes in M f1, M f2"
        );
        assert_eq!(
            uncommitted_note(&paths),
            " plus uncommitted changes in M f1, M f2, M f3, M f4, M f5, M f6 and 2 more (listed in the JSON)"
        );
    }

    #[test]
    fn passed_checks_name_only_what_ran() -> anyhow::Result<()> {
        let mut c = comparison()?;
        c.scenarios[0].warnings.clear();
        let checks = passed_checks(&c);
        assert_eq!(checks.len(), 2, "{checks:?}");
        assert!(checks[0].starts_with("every cache row was a hit"));
        c.scenarios[0].kind = ScenarioKind::Proxy;
        assert_eq!(passed_checks(&c), ["no system answered outside 2xx"]);
        let md = render_markdown(&c, &paths());
        assert!(
            md.contains("Checks passed: no system answered outside 2xx.\n"),
            "{md}"
        );
        Ok(())
    }

    #[test]
    fn append_adds_to_the_end() -> anyhow::Result<()> {
        let dir =
            std::env::temp_dir().join(format!("cathedral-bench-append-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("BENCHMARKS.md");
        std::fs::write(&path, "# Benchmarks\n")?;
        append(&path, "### run\n")?;
        assert_eq!(std::fs::read_to_string(&path)?, "# Benchmarks\n\n### run\n");
        assert!(append(&dir.join("missing.md"), "x").is_err());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
