//! The one code path every scenario goes through around [`scenario::run`]: shared arguments
//! (runs, durations, connections, pinning, the cathedral binary, where results go), starting
//! the fixed-body origin and cathedral as pinned, logged, lifetime-bounded children, and, after
//! the runs, the summary, the JSON file under `results/` and the markdown on stdout.
//!
//! A scenario module only decides which systems to start and how to describe them.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};

use crate::load::{self, LoadConfig, MAX_CONNECTIONS};
use crate::origin;
use crate::process::{self, Accounting, ManagedChild, PinMode, Pinning};
use crate::procfs::{self, MachineInfo};
use crate::report;
use crate::scenario::{
    self, Generator, LoadParams, ProcessInfo, QuietGate, Scenario, ScenarioResult,
};

/// Arguments every scenario subcommand shares (flattened into its own).
#[derive(clap::Args, Debug, Clone)]
pub struct RunnerArgs {
    /// The cathedral binary [default: target/release/cathedral in the workspace].
    #[arg(long)]
    pub cathedral: Option<PathBuf>,
    /// Runs; each run measures every system once, rotating which goes first.
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
    /// Pin systems under test and generator to separate CPUs with taskset.
    #[arg(long, value_enum, default_value_t = PinMode::Auto)]
    pub pin: PinMode,
    /// Seconds to wait for each system to start accepting connections.
    #[arg(long, default_value_t = 20.0)]
    pub startup_timeout: f64,
    /// Where the JSON results go [default: benches/results].
    #[arg(long)]
    pub results_dir: Option<PathBuf>,
    /// On a shared machine: wait before each measurement until other work uses at most this
    /// many CPUs, and measure again when it used more meanwhile [default: measure regardless].
    #[arg(long, value_name = "CPUS")]
    pub max_other_load: Option<f64>,
    /// With --max-other-load: longest wait for a quiet machine per measurement, in seconds.
    #[arg(long, default_value_t = 600.0)]
    pub quiet_wait: f64,
    /// With --max-other-load: how often one disturbed measurement is repeated.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
}

/// Validated [`RunnerArgs`].
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub cathedral: PathBuf,
    pub runs: u32,
    pub load: LoadParams,
    pub pin: PinMode,
    pub startup_timeout: Duration,
    pub results_dir: PathBuf,
    pub quiet: Option<QuietGate>,
}

/// Per-request timeout of the scenarios' generator.
const REQUEST_TIMEOUT_SECS: f64 = 10.0;

pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

impl TryFrom<&RunnerArgs> for RunnerConfig {
    type Error = anyhow::Error;

    fn try_from(args: &RunnerArgs) -> anyhow::Result<Self> {
        if !(1..=100).contains(&args.runs) {
            bail!("--runs must be between 1 and 100, not {}", args.runs);
        }
        if !(1..=MAX_CONNECTIONS).contains(&args.connections) {
            bail!(
                "--connections must be between 1 and {MAX_CONNECTIONS}, not {}",
                args.connections
            );
        }
        let duration = load::seconds("--duration", args.duration, false, 3600.0)?;
        let warmup = load::seconds("--warmup", args.warmup, true, 600.0)?;
        let startup_timeout =
            load::seconds("--startup-timeout", args.startup_timeout, false, 600.0)?;
        let quiet = match args.max_other_load {
            None => None,
            Some(cpus) if cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0 => {
                if args.retries > 10 {
                    bail!("--retries must be at most 10, not {}", args.retries);
                }
                Some(QuietGate {
                    max_other_cores: cpus,
                    max_wait_secs: load::seconds("--quiet-wait", args.quiet_wait, true, 7200.0)?
                        .as_secs_f64(),
                    retries: args.retries,
                })
            }
            Some(cpus) => bail!("--max-other-load must be above 0 CPUs, not {cpus}"),
        };
        Ok(Self {
            cathedral: args
                .cathedral
                .clone()
                .unwrap_or_else(|| workspace_root().join("target/release/cathedral")),
            runs: args.runs,
            load: LoadParams {
                connections: args.connections,
                warmup_secs: warmup.as_secs_f64(),
                duration_secs: duration.as_secs_f64(),
                max_requests: None,
                timeout_secs: REQUEST_TIMEOUT_SECS,
                headers: Vec::new(),
                cycle: 1,
                rate: None,
                ramp_secs: 0.0,
            },
            pin: args.pin,
            startup_timeout,
            results_dir: args
                .results_dir
                .clone()
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results")),
            quiet,
        })
    }
}

/// Runs a scenario's async body on a current-thread runtime; Ctrl-C stops the children (they
/// are killed on drop).
pub fn block_on(body: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = origin::build_runtime(origin::RuntimeFlavor::CurrentThread, None)?;
    runtime.block_on(async {
        tokio::select! {
            result = body => result,
            _ = tokio::signal::ctrl_c() => bail!("interrupted; stopped the systems under test"),
        }
    })
}

/// Fails with a build hint when `path` is missing, or when its `serve` lacks `needed_flag`.
pub async fn check_cathedral(path: &Path, needed_flag: &str) -> anyhow::Result<()> {
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
    if !output.status.success() || !help.contains(needed_flag) {
        bail!(
            "`{} serve --help` does not list {needed_flag} (exit {}); this cathedral build is \
             too old for this scenario — rebuild with `cargo build --release -p cathedral`",
            path.display(),
            output.status
        );
    }
    Ok(())
}

/// A scenario's processes and its scratch directory, from start to results.
#[derive(Debug)]
pub struct Harness {
    pub config: RunnerConfig,
    name: String,
    exe: PathBuf,
    allowed: Vec<usize>,
    pub pinning: Pinning,
    stamp: String,
    started_iso: String,
    /// Every child exits on its own after this many seconds (`origin --exit-after`) or is
    /// killed with the harness; a safety net if the harness itself is killed.
    child_lifetime_secs: f64,
    /// Logs and generated configuration; removed after a successful run, kept on failure.
    pub scratch: PathBuf,
    children: Vec<ManagedChild>,
    processes: Vec<ProcessInfo>,
}

impl Harness {
    /// Checks the cathedral binary (its `serve --help` must list `needed_flag`), plans pinning
    /// and creates the scratch directory, for a scenario measuring `systems` systems.
    pub async fn new(
        name: &str,
        config: RunnerConfig,
        systems: usize,
        needed_flag: &str,
    ) -> anyhow::Result<Self> {
        check_cathedral(&config.cathedral, needed_flag).await?;
        let exe = std::env::current_exe().context("locating this binary")?;
        let allowed = procfs::allowed_cpus()?;
        let pinning = Pinning::plan(config.pin, &allowed, process::find_taskset());
        eprintln!("[{name}] {}", pinning.description);
        let (stamp, started_iso) = report::utc_timestamp(SystemTime::now());
        let (attempts, quiet_wait) = config.quiet.as_ref().map_or((1.0, 0.0), |q| {
            (f64::from(q.retries) + 1.0, q.max_wait_secs)
        });
        let per_measurement = attempts
            * (config.load.warmup_secs
                + config.load.duration_secs
                + config.load.timeout_secs
                + 30.0
                + quiet_wait);
        let child_lifetime_secs = f64::from(config.runs) * systems as f64 * per_measurement
            + (systems as f64 + 2.0) * config.startup_timeout.as_secs_f64()
            + 120.0;
        let scratch = std::env::temp_dir().join(format!(
            "cathedral-bench-{}-{name}-{stamp}",
            std::process::id()
        ));
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        Ok(Self {
            config,
            name: name.to_owned(),
            exe,
            allowed,
            pinning,
            stamp,
            started_iso,
            child_lifetime_secs,
            scratch,
            children: Vec::new(),
            processes: Vec::new(),
        })
    }

    fn record(&mut self, child: ManagedChild, command: String) {
        self.processes.push(ProcessInfo {
            name: child.name.clone(),
            pid: child.pid(),
            command,
        });
        self.children.push(child);
    }

    /// Starts `cathedral-bench origin` on `127.0.0.1:0` as child `name`, pinned like every
    /// system under test, with `extra_args` (e.g. `--cache-control`), and returns its address
    /// once it accepts connections.
    pub async fn start_origin(
        &mut self,
        name: &str,
        body_size: usize,
        extra_args: &[String],
    ) -> anyhow::Result<SocketAddr> {
        let sut_cpus = self.pinning.sut_cpu_count(&self.allowed);
        let mut command = self
            .pinning
            .command(&self.exe, self.pinning.sut_cpus.as_deref());
        command
            .args(["origin", "--listen", "127.0.0.1:0"])
            .arg("--body-size")
            .arg(body_size.to_string())
            .arg("--exit-after")
            .arg(format!("{:.0}", self.child_lifetime_secs));
        if sut_cpus == 1 {
            command.args(["--runtime", "current-thread"]);
        } else {
            command
                .args(["--runtime", "multi-thread", "--threads"])
                .arg(sut_cpus.to_string());
        }
        command
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let line = format!("{:?}", command.as_std());
        let mut child = ManagedChild::spawn(name, command, None)?;
        let first = child.first_stdout_line(self.config.startup_timeout).await?;
        let addr = origin::parse_listening_line(&first)
            .with_context(|| format!("{name} printed {first:?}, not `listening on ADDR`"))?;
        child
            .wait_until_accepting(addr, self.config.startup_timeout)
            .await?;
        self.record(child, line);
        Ok(addr)
    }

    /// Starts `cathedral <args>` as child `name`, pinned like every system under test, its
    /// output in `<scratch>/<name>.log`, and waits until `listen` accepts connections.
    pub async fn start_cathedral(
        &mut self,
        name: &str,
        args: &[OsString],
        listen: SocketAddr,
    ) -> anyhow::Result<()> {
        let cathedral = self.config.cathedral.clone();
        self.start_program(name, &cathedral, args, &[], listen, Accounting::Process)
            .await
    }

    /// `program <args>` with `env` added, pinned like every system under test, its output
    /// going to `<scratch>/<name>.log`; with that log's path and the command line as recorded.
    fn pinned_command(
        &self,
        name: &str,
        program: &Path,
        args: &[OsString],
        env: &[(&str, &str)],
    ) -> anyhow::Result<(tokio::process::Command, PathBuf, String)> {
        let log = self.scratch.join(format!("{name}.log"));
        let (stdout, stderr) = process::log_stdio(&log)?;
        let mut command = self
            .pinning
            .command(program, self.pinning.sut_cpus.as_deref());
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let env_prefix: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        let line = format!("{env_prefix}{:?}", command.as_std());
        Ok((command, log, line))
    }

    /// Starts `program <args>` (with `env` added) as child `name`, pinned like every system
    /// under test, its output in `<scratch>/<name>.log`, and waits until `listen` accepts
    /// connections; CPU and RSS are read per `accounting`.
    pub async fn start_program(
        &mut self,
        name: &str,
        program: &Path,
        args: &[OsString],
        env: &[(&str, &str)],
        listen: SocketAddr,
        accounting: Accounting,
    ) -> anyhow::Result<()> {
        let (command, log, line) = self.pinned_command(name, program, args, env)?;
        let mut child = ManagedChild::spawn_with(name, command, Some(log.clone()), accounting)?;
        child
            .wait_until_accepting(listen, self.config.startup_timeout)
            .await?;
        eprintln!(
            "[{}] {name} on {listen} (log: {})",
            self.name,
            log.display()
        );
        self.record(child, line);
        Ok(())
    }

    /// Starts `program <args>` as companion `name` of the already started child `of` (e.g.
    /// Varnish's `varnishncsa` beside `varnishd`): pinned like every system under test, its
    /// output in `<scratch>/<name>.log`, its CPU time and peak RSS counted as `of`'s, checked
    /// and stopped with it. There is no port to wait for: the caller checks that it works.
    pub fn start_companion(
        &mut self,
        of: &str,
        name: &str,
        program: &Path,
        args: &[OsString],
    ) -> anyhow::Result<()> {
        let (command, log, line) = self.pinned_command(name, program, args, &[])?;
        let companion = ManagedChild::spawn(name, command, Some(log.clone()))?;
        let pid = companion.pid();
        let server = self
            .children
            .iter_mut()
            .find(|c| c.name == of)
            .with_context(|| format!("no child {of} to attach {name} to"))?;
        server.add_companion(companion);
        eprintln!(
            "[{}] {name} beside {of} (log: {})",
            self.name,
            log.display()
        );
        self.processes.push(ProcessInfo {
            name: name.to_owned(),
            pid,
            command: line,
        });
        Ok(())
    }

    /// How many CPUs the systems under test may use (nginx's `worker_processes`).
    pub fn sut_cpu_count(&self) -> usize {
        self.pinning.sut_cpu_count(&self.allowed)
    }

    /// Fails unless every child is still running.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.children.iter_mut().try_for_each(|c| c.check_alive())
    }

    /// Runs `scenario` over the started children, then summarises, writes
    /// `results/<scenario>-<stamp>.json` and prints the tables and notes.
    pub async fn measure(
        &mut self,
        scenario: Scenario,
        checks: Option<serde_json::Value>,
    ) -> anyhow::Result<(ScenarioResult, PathBuf)> {
        let generator = Generator {
            exe: self.exe.clone(),
            pinning: self.pinning.clone(),
        };
        let output = scenario::run(&scenario, &mut self.children, &generator).await?;
        let measurements = output.measurements;
        let result = ScenarioResult {
            discarded: output.discarded,
            summary: scenario::summarise(&scenario, &measurements),
            ratios: scenario::ratios(&scenario, &measurements),
            scenario,
            started_utc: self.started_iso.clone(),
            harness_version: env!("CARGO_PKG_VERSION").into(),
            machine: MachineInfo::read(),
            pinning: self.pinning.clone(),
            processes: self.processes.clone(),
            measurements,
            checks,
        };
        let path = report::write_json(&self.config.results_dir, &self.stamp, &result)?;
        {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            write!(out, "{}", report::render_result(&result, &path))?;
            out.flush()?;
        }
        Ok((result, path))
    }

    /// Stops every child and removes the scratch directory (logs included: they only matter
    /// when something failed, and error paths return before this).
    pub async fn stop(self) -> anyhow::Result<()> {
        for child in self.children {
            child.stop().await?;
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
        Ok(())
    }
}

/// Sends a single request to `url` and fails unless it succeeds.
pub async fn probe(name: &str, url: &str) -> anyhow::Result<()> {
    let config = LoadConfig::try_from(&load::LoadArgs {
        url: url.to_owned(),
        connections: 1,
        duration: 10.0,
        warmup: 0.0,
        max_requests: Some(1),
        timeout: 5.0,
        threads: Some(1),
        json: true,
        headers: Vec::new(),
        cycle: 1,
        rate: None,
        ramp: 0.0,
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
pub(crate) mod tests {
    use super::*;

    pub(crate) fn args() -> RunnerArgs {
        RunnerArgs {
            cathedral: None,
            runs: 3,
            duration: 10.0,
            warmup: 2.0,
            connections: 64,
            pin: PinMode::Auto,
            startup_timeout: 20.0,
            results_dir: None,
            max_other_load: None,
            quiet_wait: 600.0,
            retries: 3,
        }
    }

    #[test]
    fn defaults_point_into_the_workspace() -> anyhow::Result<()> {
        let config = RunnerConfig::try_from(&args())?;
        assert!(config.cathedral.ends_with("target/release/cathedral"));
        assert!(config.cathedral.starts_with(workspace_root()));
        assert!(config.results_dir.ends_with("benches/results"));
        assert_eq!(config.load.connections, 64);
        Ok(())
    }

    #[test]
    fn runner_arguments_are_validated() {
        let err = |a: RunnerArgs| RunnerConfig::try_from(&a).err().map(|e| e.to_string());
        let mut a = args();
        a.runs = 0;
        assert!(err(a).is_some_and(|e| e.contains("--runs")));
        let mut a = args();
        a.connections = MAX_CONNECTIONS + 1;
        assert!(err(a).is_some_and(|e| e.contains("--connections")));
        let mut a = args();
        a.duration = -1.0;
        assert!(err(a).is_some_and(|e| e.contains("--duration")));
        let mut a = args();
        a.startup_timeout = f64::NAN;
        assert!(err(a).is_some_and(|e| e.contains("--startup-timeout")));
        let mut a = args();
        a.max_other_load = Some(0.0);
        assert!(err(a).is_some_and(|e| e.contains("--max-other-load")));
        let mut a = args();
        a.max_other_load = Some(0.3);
        a.retries = 11;
        assert!(err(a).is_some_and(|e| e.contains("--retries")));
        let mut a = args();
        a.max_other_load = Some(0.3);
        a.quiet_wait = -1.0;
        assert!(err(a).is_some_and(|e| e.contains("--quiet-wait")));
    }

    #[test]
    fn the_quiet_gate_is_off_by_default() -> anyhow::Result<()> {
        assert_eq!(RunnerConfig::try_from(&args())?.quiet, None);
        let mut a = args();
        a.max_other_load = Some(0.3);
        assert_eq!(
            RunnerConfig::try_from(&a)?.quiet,
            Some(QuietGate {
                max_other_cores: 0.3,
                max_wait_secs: 600.0,
                retries: 3
            })
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_missing_cathedral_gets_a_build_hint() {
        let missing = Path::new("/nonexistent/cathedral");
        let err = check_cathedral(missing, "--upstream")
            .await
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("cargo build --release -p cathedral")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_cathedral_without_the_flag_is_refused() {
        // `/bin/true serve --help` succeeds but prints nothing, like the placeholder binary.
        let err = check_cathedral(Path::new("/bin/true"), "--upstream")
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
