//! Scenarios: systems under test, each with a target URL, plus load parameters; the runner
//! that measures them run by run, alternating the order, and the per-system summary.
//!
//! A scenario module (e.g. `proxy`, `cache`) starts its processes through
//! [`crate::harness::Harness`], describes them as a [`Scenario`], and hands both to [`run`];
//! everything after that — generator launches, CPU and RSS sampling, counters read before and
//! after each measurement, medians, ratios computed per run — is shared by every scenario.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::time::Instant;

use crate::load::LoadReport;
use crate::process::{ManagedChild, Pinning};
use crate::procfs::{self, MachineInfo};
use crate::stats::{self, Spread};

/// Load applied to every system of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadParams {
    pub connections: usize,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    pub max_requests: Option<u64>,
    pub timeout_secs: f64,
    /// `--header` specs of the generator (`{n}` cycles over `cycle` values).
    pub headers: Vec<String>,
    pub cycle: u64,
    /// Open loop at this many requests/s in total; `None`: closed loop.
    pub rate: Option<f64>,
    /// Seconds over which the generator opens its connections (inside the warm-up).
    pub ramp_secs: f64,
}

/// One system to measure: the URL the generator drives, and the child process whose CPU
/// and peak RSS are attributed to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemUnderTest {
    pub name: String,
    pub url: String,
    /// [`ManagedChild::name`] of the process this system's CPU and RSS are read from.
    pub process: String,
}

/// A counter read over HTTP before and after every measurement (e.g. the origin's request
/// count at [`crate::origin::STATS_PATH`]); each measurement records the difference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Counter {
    pub name: String,
    /// Answers the count as a decimal number in plain text.
    pub url: String,
}

/// A ratio of requests/s between two systems, computed per run, reported as the median.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RatioSpec {
    /// How the table names it, e.g. "cache on / cache off".
    pub label: String,
    pub numerator: String,
    pub denominator: String,
}

/// Keeping other work on a shared machine out of the numbers: before each measurement, wait
/// (bounded) until the machine is quiet; after it, measure again (bounded) if other work used
/// more than `max_other_cores` meanwhile. Discarded measurements are kept in the results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuietGate {
    /// Most CPUs that work outside the scenario may use, before and during a measurement.
    pub max_other_cores: f64,
    /// Longest wait for a quiet machine before one measurement; after it, measure anyway.
    pub max_wait_secs: f64,
    /// How many times one measurement is repeated when it was disturbed.
    pub retries: u32,
}

impl QuietGate {
    /// Whether attempt `attempt` (0-based) of a measurement during which other work used
    /// `other_cores` CPUs is discarded and measured again.
    pub fn disturbed(&self, attempt: u32, other_cores: Option<f64>) -> bool {
        attempt < self.retries && other_cores.is_some_and(|o| o > self.max_other_cores)
    }
}

/// Systems under test + load parameters + how many runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    pub name: String,
    pub systems: Vec<SystemUnderTest>,
    /// Name of the system every other one is compared with (ratio of requests/s).
    pub baseline: String,
    /// Further ratios reported below the table (besides every system vs the baseline).
    pub ratios: Vec<RatioSpec>,
    /// Counters whose change over each measurement is recorded (e.g. origin requests).
    pub counters: Vec<Counter>,
    pub load: LoadParams,
    pub runs: u32,
    /// Wait for and insist on a quiet machine; `None` measures regardless.
    pub quiet: Option<QuietGate>,
    /// Fairness notes printed under the table and stored with the results.
    pub notes: Vec<String>,
}

impl Scenario {
    /// The order systems are measured in during `run` (1-based): rotated by one each run, so
    /// with two systems the order alternates and neither always goes first.
    pub fn order(&self, run: u32) -> Vec<&SystemUnderTest> {
        let n = self.systems.len().max(1);
        let shift = (run.saturating_sub(1) as usize) % n;
        let mut order: Vec<_> = self.systems.iter().collect();
        order.rotate_left(shift);
        order
    }
}

/// How the load generator is launched: this binary's `load --json`, pinned per [`Pinning`].
#[derive(Debug, Clone)]
pub struct Generator {
    pub exe: PathBuf,
    pub pinning: Pinning,
}

/// CPU use of one process during one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProcessCpu {
    pub cpu_secs: f64,
    /// CPU seconds per wall second over the whole load run, warm-up included.
    pub cores_used: f64,
}

/// One system measured once.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurement {
    pub run: u32,
    pub system: String,
    pub load: LoadReport,
    /// Every scenario process, by name.
    pub process_cpu: BTreeMap<String, ProcessCpu>,
    /// `VmHWM` of every scenario process after this measurement, by name.
    pub peak_rss_bytes: BTreeMap<String, u64>,
    /// Change of every [`Scenario::counters`] entry over this measurement (the whole generator
    /// run, warm-up included), by name.
    pub counters: BTreeMap<String, u64>,
    /// CPUs busy with work outside the scenario (other users of a shared machine) over this
    /// measurement: machine-wide busy time minus the scenario's processes, the harness and the
    /// generator, per wall second. Near 0 on a quiet machine.
    pub other_cores_used: Option<f64>,
}

impl Measurement {
    /// Requests the generator completed or failed, warm-up included: what a counter at the
    /// system under test would see (plus at most one in flight per connection at the end).
    pub fn client_requests(&self) -> u64 {
        self.load.warmup_requests + self.load.requests + self.load.errors_total
    }
}

/// Reads every counter of the scenario.
async fn read_counters(counters: &[Counter]) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut values = BTreeMap::new();
    for counter in counters {
        let value = crate::client::read_counter(&counter.url)
            .await
            .with_context(|| format!("reading counter {}", counter.name))?;
        values.insert(counter.name.clone(), value);
    }
    Ok(values)
}

/// What [`run`] measured: the measurements that count, and those discarded by the
/// [`QuietGate`] because other work disturbed them.
#[derive(Debug, Clone, Default)]
pub struct RunOutput {
    pub measurements: Vec<Measurement>,
    pub discarded: Vec<Measurement>,
}

/// Drives every system once per run, in [`Scenario::order`], checking after each measurement
/// that every child is still alive; with a [`QuietGate`], waits for a quiet machine before each
/// measurement and repeats disturbed ones.
pub async fn run(
    scenario: &Scenario,
    children: &mut [ManagedChild],
    generator: &Generator,
) -> anyhow::Result<RunOutput> {
    let mut out = RunOutput::default();
    for run in 1..=scenario.runs {
        for system in scenario.order(run) {
            // Bounded: at most 1 + retries attempts.
            for attempt in 0.. {
                if let Some(gate) = &scenario.quiet {
                    wait_for_quiet(&scenario.name, gate, children).await?;
                }
                eprintln!(
                    "[{}] run {run}/{}: {} ({})",
                    scenario.name, scenario.runs, system.name, system.url
                );
                let m = measure_once(scenario, system, run, children, generator).await?;
                let retry = scenario
                    .quiet
                    .as_ref()
                    .is_some_and(|g| g.disturbed(attempt, m.other_cores_used));
                if retry {
                    eprintln!(
                        "[{}]   discarded: other work used {:.2} CPUs meanwhile; measuring again",
                        scenario.name,
                        m.other_cores_used.unwrap_or_default()
                    );
                    out.discarded.push(m);
                } else {
                    out.measurements.push(m);
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// CPUs used by work outside the scenario over `window`: machine-wide busy time minus the
/// scenario's children and this process with its reaped children.
async fn other_load(children: &[ManagedChild], window: Duration) -> anyhow::Result<f64> {
    let children_cpu = |children: &[ManagedChild]| -> anyhow::Result<f64> {
        children
            .iter()
            .map(|c| Ok(c.cpu_times()?.total_secs()))
            .sum()
    };
    let (machine, ours, kids) = (
        procfs::machine_busy_secs()?,
        procfs::self_and_reaped_children_secs()?,
        children_cpu(children)?,
    );
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let wall = started.elapsed().as_secs_f64();
    let other = (procfs::machine_busy_secs()? - machine)
        - (procfs::self_and_reaped_children_secs()? - ours)
        - (children_cpu(children)? - kids);
    Ok((other / wall.max(1e-3)).max(0.0))
}

/// Waits until work outside the scenario uses at most `gate.max_other_cores` over a 2 s
/// window, or `gate.max_wait_secs` have passed (then it goes ahead and says so).
async fn wait_for_quiet(
    name: &str,
    gate: &QuietGate,
    children: &[ManagedChild],
) -> anyhow::Result<()> {
    const WINDOW: Duration = Duration::from_secs(2);
    let deadline = Instant::now() + Duration::from_secs_f64(gate.max_wait_secs);
    let mut said = false;
    // Bounded by `deadline`: every iteration takes WINDOW.
    loop {
        let other = other_load(children, WINDOW).await?;
        if other <= gate.max_other_cores {
            return Ok(());
        }
        if Instant::now() >= deadline {
            eprintln!(
                "[{name}] the machine is still busy ({other:.2} CPUs of other work) after {} s; \
                 measuring anyway",
                gate.max_wait_secs
            );
            return Ok(());
        }
        if !said {
            eprintln!(
                "[{name}] waiting for a quiet machine: other work uses {other:.2} CPUs \
                 (at most {} wanted, waiting up to {} s)",
                gate.max_other_cores, gate.max_wait_secs
            );
            said = true;
        }
    }
}

/// Measures one system once: counters, CPU and RSS of every child, the generator's report.
async fn measure_once(
    scenario: &Scenario,
    system: &SystemUnderTest,
    run: u32,
    children: &mut [ManagedChild],
    generator: &Generator,
) -> anyhow::Result<Measurement> {
    let before: Vec<_> = children
        .iter()
        .map(|c| c.cpu_times())
        .collect::<anyhow::Result<_>>()?;
    let counters_before = read_counters(&scenario.counters).await?;
    let ours_before = procfs::self_and_reaped_children_secs()?;
    let machine_before = procfs::machine_busy_secs()?;
    let started = Instant::now();
    let load = drive(generator, &system.url, &scenario.load).await?;
    let wall = started.elapsed().as_secs_f64();
    let machine_busy = procfs::machine_busy_secs()? - machine_before;
    let ours = procfs::self_and_reaped_children_secs()? - ours_before;
    let counters_after = read_counters(&scenario.counters).await?;
    let counters: BTreeMap<String, u64> = counters_after
        .iter()
        .map(|(name, after)| {
            let before = counters_before.get(name).copied().unwrap_or(0);
            (name.clone(), after.saturating_sub(before))
        })
        .collect();
    let mut process_cpu = BTreeMap::new();
    let mut peak_rss_bytes = BTreeMap::new();
    for (child, before) in children.iter_mut().zip(before) {
        child
            .check_alive()
            .with_context(|| format!("while measuring {}", system.name))?;
        let cpu_secs = child.cpu_times()?.since(&before).total_secs();
        let cores_used = if wall > 0.0 { cpu_secs / wall } else { 0.0 };
        process_cpu.insert(
            child.name.clone(),
            ProcessCpu {
                cpu_secs,
                cores_used,
            },
        );
        peak_rss_bytes.insert(child.name.clone(), child.peak_rss_bytes()?);
    }
    let children_cpu: f64 = process_cpu.values().map(|c| c.cpu_secs).sum();
    let other_cores_used =
        (wall > 0.0).then(|| ((machine_busy - ours - children_cpu) / wall).max(0.0));
    let counted: String = counters
        .iter()
        .map(|(name, n)| format!(", {name} +{n}"))
        .collect();
    eprintln!(
        "[{}]   {:.0} req/s, p50 {} µs, p99 {} µs, {} errors, generator {:.2} CPUs, \
         other load {:.2} CPUs{counted}",
        scenario.name,
        load.requests_per_sec,
        load.latency.p50_us,
        load.latency.p99_us,
        load.errors_total,
        load.cpu.cores_used,
        other_cores_used.unwrap_or_default()
    );
    Ok(Measurement {
        run,
        system: system.name.clone(),
        load,
        process_cpu,
        peak_rss_bytes,
        counters,
        other_cores_used,
    })
}

/// Runs the generator as a child process (`load --json`) and parses its report.
async fn drive(generator: &Generator, url: &str, load: &LoadParams) -> anyhow::Result<LoadReport> {
    let mut command = generator
        .pinning
        .command(&generator.exe, generator.pinning.generator_cpus.as_deref());
    command
        .arg("load")
        .arg("--url")
        .arg(url)
        .arg("--connections")
        .arg(load.connections.to_string())
        .arg("--warmup")
        .arg(load.warmup_secs.to_string())
        .arg("--duration")
        .arg(load.duration_secs.to_string())
        .arg("--timeout")
        .arg(load.timeout_secs.to_string())
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(max) = load.max_requests {
        command.arg("--max-requests").arg(max.to_string());
    }
    for header in &load.headers {
        command.arg("--header").arg(header);
    }
    if load.cycle != 1 {
        command.arg("--cycle").arg(load.cycle.to_string());
    }
    if let Some(rate) = load.rate {
        command.arg("--rate").arg(rate.to_string());
    }
    if load.ramp_secs > 0.0 {
        command.arg("--ramp").arg(load.ramp_secs.to_string());
    }
    let limit =
        Duration::from_secs_f64(load.warmup_secs + load.duration_secs + load.timeout_secs + 30.0);
    let child = command.spawn().context("starting the load generator")?;
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .with_context(|| format!("the load generator did not finish within {limit:?}"))??;
    if !output.status.success() {
        bail!("the load generator failed with {}", output.status);
    }
    serde_json::from_slice(&output.stdout).context("parsing the load generator's JSON report")
}

/// The per-system figures of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemSummary {
    pub system: String,
    pub runs: usize,
    pub requests_per_sec: Option<Spread>,
    /// Median over runs of each run's p50.
    pub p50_us: Option<f64>,
    /// Median over runs of each run's p99.
    pub p99_us: Option<f64>,
    /// Median over runs of each run's p99.9.
    pub p999_us: Option<f64>,
    /// Errors summed over all runs.
    pub errors: u64,
    /// Of [`SystemSummary::errors`], complete responses outside 2xx, by status, over all runs.
    pub statuses: BTreeMap<u16, u64>,
    /// Most connections the generator opened in one run (reconnects after a server close
    /// included): above the configured connections means the server closed some.
    pub connections_opened_max: Option<u64>,
    /// Largest `VmHWM` of this system's process.
    pub peak_rss_bytes: Option<u64>,
    /// requests/s of this system divided by the baseline's, computed per run; `None` for the
    /// baseline itself.
    pub ratio_vs_baseline: Option<Spread>,
    /// Median CPUs used by this system's process.
    pub sut_cores_used: Option<f64>,
    /// Median CPUs used by the generator.
    pub generator_cores_used: Option<f64>,
    /// Every scenario counter as seen during this system's measurements, by counter name.
    pub counters: BTreeMap<String, CounterSummary>,
    /// Largest [`Measurement::other_cores_used`] of this system's runs: how disturbed its
    /// worst run was.
    pub other_cores_used_max: Option<f64>,
}

/// One counter over one system's measurements.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CounterSummary {
    /// Median change per measurement.
    pub per_measurement: f64,
    /// Median of (change / client requests) per measurement: about 1 when every request
    /// reached what is counted, 0 when none did.
    pub per_client_request: Option<f64>,
}

/// A [`RatioSpec`] evaluated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RatioSummary {
    pub label: String,
    pub numerator: String,
    pub denominator: String,
    /// Per-run ratios of requests/s: median [min–max]; `None` without a run measuring both.
    pub ratio: Option<Spread>,
}

/// Measurements of `system`, by run.
fn of_system<'m>(measurements: &'m [Measurement], system: &str) -> Vec<&'m Measurement> {
    let mut ms: Vec<_> = measurements.iter().filter(|m| m.system == system).collect();
    ms.sort_by_key(|m| m.run);
    ms
}

/// requests/s of `numerator` over `denominator`, paired by run (runs missing either are
/// skipped), as median [min–max].
pub fn per_run_ratio(
    measurements: &[Measurement],
    numerator: &str,
    denominator: &str,
) -> Option<Spread> {
    let den: BTreeMap<u32, f64> = of_system(measurements, denominator)
        .iter()
        .map(|m| (m.run, m.load.requests_per_sec))
        .collect();
    let (num, den): (Vec<f64>, Vec<f64>) = of_system(measurements, numerator)
        .iter()
        .filter_map(|m| Some((m.load.requests_per_sec, *den.get(&m.run)?)))
        .unzip();
    stats::spread(&stats::per_run_ratios(&num, &den))
}

/// Evaluates the scenario's [`Scenario::ratios`].
pub fn ratios(scenario: &Scenario, measurements: &[Measurement]) -> Vec<RatioSummary> {
    scenario
        .ratios
        .iter()
        .map(|spec| RatioSummary {
            label: spec.label.clone(),
            numerator: spec.numerator.clone(),
            denominator: spec.denominator.clone(),
            ratio: per_run_ratio(measurements, &spec.numerator, &spec.denominator),
        })
        .collect()
}

/// Summarises measurements per system, in the scenario's system order.
pub fn summarise(scenario: &Scenario, measurements: &[Measurement]) -> Vec<SystemSummary> {
    scenario
        .systems
        .iter()
        .map(|system| {
            let ms = of_system(measurements, &system.name);
            let values =
                |f: &dyn Fn(&Measurement) -> f64| -> Vec<f64> { ms.iter().map(|m| f(m)).collect() };
            let ratio_vs_baseline = (system.name != scenario.baseline)
                .then(|| per_run_ratio(measurements, &system.name, &scenario.baseline))
                .flatten();
            let counters = scenario
                .counters
                .iter()
                .filter_map(|counter| {
                    let deltas: Vec<(f64, u64)> = ms
                        .iter()
                        .filter_map(|m| {
                            let delta = *m.counters.get(&counter.name)?;
                            Some((delta as f64, m.client_requests()))
                        })
                        .collect();
                    let per_measurement =
                        stats::median(&deltas.iter().map(|(d, _)| *d).collect::<Vec<_>>())?;
                    let per_client_request = stats::median(
                        &deltas
                            .iter()
                            .filter(|(_, n)| *n > 0)
                            .map(|(d, n)| d / *n as f64)
                            .collect::<Vec<_>>(),
                    );
                    Some((
                        counter.name.clone(),
                        CounterSummary {
                            per_measurement,
                            per_client_request,
                        },
                    ))
                })
                .collect();
            SystemSummary {
                system: system.name.clone(),
                runs: ms.len(),
                requests_per_sec: stats::spread(&values(&|m| m.load.requests_per_sec)),
                p50_us: stats::median(&values(&|m| m.load.latency.p50_us as f64)),
                p99_us: stats::median(&values(&|m| m.load.latency.p99_us as f64)),
                p999_us: stats::median(&values(&|m| m.load.latency.p999_us as f64)),
                errors: ms.iter().map(|m| m.load.errors_total).sum(),
                statuses: ms.iter().fold(BTreeMap::new(), |mut all, m| {
                    for (code, n) in &m.load.statuses {
                        *all.entry(*code).or_default() += n;
                    }
                    all
                }),
                connections_opened_max: ms.iter().map(|m| m.load.connections_opened).max(),
                peak_rss_bytes: ms
                    .iter()
                    .filter_map(|m| m.peak_rss_bytes.get(&system.process).copied())
                    .max(),
                ratio_vs_baseline,
                sut_cores_used: stats::median(
                    &ms.iter()
                        .filter_map(|m| m.process_cpu.get(&system.process).map(|c| c.cores_used))
                        .collect::<Vec<_>>(),
                ),
                generator_cores_used: stats::median(&values(&|m| m.load.cpu.cores_used)),
                counters,
                other_cores_used_max: ms
                    .iter()
                    .filter_map(|m| m.other_cores_used)
                    .reduce(f64::max),
            }
        })
        .collect()
}

/// Everything a scenario run produced: what goes into `results/<scenario>-<stamp>.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub scenario: Scenario,
    pub started_utc: String,
    pub harness_version: String,
    pub machine: MachineInfo,
    pub pinning: Pinning,
    /// Every process of the scenario with its command line.
    pub processes: Vec<ProcessInfo>,
    pub measurements: Vec<Measurement>,
    /// Measurements repeated because other work disturbed them ([`QuietGate`]); not in the
    /// summary.
    pub discarded: Vec<Measurement>,
    pub summary: Vec<SystemSummary>,
    /// The scenario's extra ratios, evaluated.
    pub ratios: Vec<RatioSummary>,
    /// Scenario-specific checks made before measuring (e.g. the cache scenario's probes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<serde_json::Value>,
}

/// A scenario process as recorded in the results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessInfo {
    pub name: String,
    pub pid: u32,
    pub command: String,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::load::{ErrorCounts, GeneratorCpu};
    use crate::stats::LatencySummary;

    pub(crate) fn scenario() -> Scenario {
        Scenario {
            name: "proxy".into(),
            systems: vec![
                SystemUnderTest {
                    name: "direct".into(),
                    url: "http://127.0.0.1:1/".into(),
                    process: "origin".into(),
                },
                SystemUnderTest {
                    name: "cathedral".into(),
                    url: "http://127.0.0.1:2/".into(),
                    process: "cathedral".into(),
                },
            ],
            baseline: "direct".into(),
            ratios: Vec::new(),
            counters: Vec::new(),
            load: LoadParams {
                connections: 64,
                warmup_secs: 2.0,
                duration_secs: 10.0,
                max_requests: None,
                timeout_secs: 10.0,
                headers: Vec::new(),
                cycle: 1,
                rate: None,
                ramp_secs: 0.0,
            },
            runs: 3,
            quiet: None,
            notes: vec!["a note".into()],
        }
    }

    pub(crate) fn measurement(
        run: u32,
        system: &str,
        rps: f64,
        p50: u64,
        p99: u64,
        errors: u64,
    ) -> Measurement {
        let process = if system == "direct" {
            "origin"
        } else {
            "cathedral"
        };
        Measurement {
            run,
            system: system.into(),
            load: LoadReport {
                url: String::new(),
                connections: 64,
                threads: 1,
                warmup_secs: 2.0,
                duration_secs: 10.0,
                max_requests: None,
                measured_secs: 10.0,
                requests: (rps * 10.0) as u64,
                requests_per_sec: rps,
                latency: LatencySummary {
                    count: 1,
                    p50_us: p50,
                    p99_us: p99,
                    ..LatencySummary::default()
                },
                errors: ErrorCounts {
                    status: errors,
                    ..ErrorCounts::default()
                },
                errors_total: errors,
                statuses: BTreeMap::new(),
                body_bytes: 0,
                body_bytes_per_sec: 0.0,
                warmup_requests: 0,
                connections_opened: 64,
                cpu: GeneratorCpu {
                    cores_used: 0.5,
                    ..GeneratorCpu::default()
                },
                rate: None,
                ramp_secs: 0.0,
                header_variants: 0,
            },
            process_cpu: [(
                process.to_owned(),
                ProcessCpu {
                    cpu_secs: 9.0,
                    cores_used: 0.9,
                },
            )]
            .into(),
            peak_rss_bytes: [(process.to_owned(), u64::from(run) << 20)].into(),
            counters: BTreeMap::new(),
            other_cores_used: Some(0.1 * f64::from(run)),
        }
    }

    #[test]
    fn order_alternates_between_runs() {
        let s = scenario();
        let names = |run| {
            s.order(run)
                .iter()
                .map(|x| x.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(1), ["direct", "cathedral"]);
        assert_eq!(names(2), ["cathedral", "direct"]);
        assert_eq!(names(3), ["direct", "cathedral"]);
    }

    #[test]
    fn summary_takes_medians_and_per_run_ratios() {
        let s = scenario();
        let ms = [
            measurement(1, "direct", 100.0, 500, 900, 0),
            measurement(1, "cathedral", 40.0, 1000, 2000, 1),
            measurement(2, "cathedral", 60.0, 1100, 2100, 0),
            measurement(2, "direct", 200.0, 400, 800, 0),
            measurement(3, "direct", 150.0, 450, 850, 0),
            measurement(3, "cathedral", 75.0, 1200, 2200, 2),
        ];
        let summary = summarise(&s, &ms);
        let direct = &summary[0];
        assert_eq!(direct.system, "direct");
        assert_eq!(
            direct.requests_per_sec,
            Some(Spread {
                median: 150.0,
                min: 100.0,
                max: 200.0
            })
        );
        assert_eq!(direct.p50_us, Some(450.0));
        assert_eq!(direct.ratio_vs_baseline, None);
        assert_eq!(direct.peak_rss_bytes, Some(3 << 20));
        let cathedral = &summary[1];
        assert_eq!(cathedral.errors, 3);
        assert_eq!(cathedral.p99_us, Some(2100.0));
        // Per-run ratios 0.4, 0.3, 0.5: median 0.4, not 60/150.
        let ratio = cathedral
            .ratio_vs_baseline
            .map(|r| (r.median, r.min, r.max));
        assert_eq!(ratio, Some((0.4, 0.3, 0.5)));
        assert_eq!(cathedral.sut_cores_used, Some(0.9));
        assert_eq!(cathedral.generator_cores_used, Some(0.5));
        assert_eq!(cathedral.other_cores_used_max, Some(0.1 * 3.0));
    }

    #[test]
    fn extra_ratios_are_per_run_medians() {
        let mut s = scenario();
        s.ratios = vec![
            RatioSpec {
                label: "inverse".into(),
                numerator: "direct".into(),
                denominator: "cathedral".into(),
            },
            RatioSpec {
                label: "unknown".into(),
                numerator: "nginx".into(),
                denominator: "direct".into(),
            },
        ];
        let ms = [
            measurement(1, "direct", 100.0, 1, 1, 0),
            measurement(1, "cathedral", 50.0, 1, 1, 0),
            measurement(2, "direct", 300.0, 1, 1, 0),
            measurement(2, "cathedral", 100.0, 1, 1, 0),
            // Run 3 lost its cathedral measurement: it pairs with nothing.
            measurement(3, "direct", 1000.0, 1, 1, 0),
            measurement(4, "direct", 400.0, 1, 1, 0),
            measurement(4, "cathedral", 100.0, 1, 1, 0),
        ];
        let r = ratios(&s, &ms);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].label, "inverse");
        // Per-run 2, 3, 4 → median 3 (the ratio of medians would be 300/100 here too, but the
        // range shows per-run values).
        assert_eq!(
            r[0].ratio,
            Some(Spread {
                median: 3.0,
                min: 2.0,
                max: 4.0
            })
        );
        assert_eq!(r[1].ratio, None);
        assert_eq!(
            per_run_ratio(&ms, "cathedral", "direct").map(|s| s.median),
            Some(1.0 / 3.0)
        );
    }

    #[test]
    fn counters_are_summarised_per_system() {
        let mut s = scenario();
        s.counters = vec![Counter {
            name: "origin".into(),
            url: "http://127.0.0.1:1/count".into(),
        }];
        let with = |mut m: Measurement, warmup: u64, delta: u64| {
            m.load.warmup_requests = warmup;
            m.counters.insert("origin".into(), delta);
            m
        };
        // measurement() gives rps × 10 s requests: 1000 + warm-up.
        let ms = [
            with(measurement(1, "direct", 100.0, 1, 1, 0), 0, 1000),
            with(measurement(2, "direct", 100.0, 1, 1, 0), 1000, 2000),
            with(measurement(1, "cathedral", 100.0, 1, 1, 0), 0, 0),
            with(measurement(2, "cathedral", 100.0, 1, 1, 0), 0, 2),
        ];
        assert_eq!(ms[1].client_requests(), 2000);
        let summary = summarise(&s, &ms);
        let direct = summary[0].counters["origin"];
        assert_eq!(direct.per_measurement, 1500.0);
        assert_eq!(direct.per_client_request, Some(1.0));
        let cathedral = summary[1].counters["origin"];
        assert_eq!(cathedral.per_measurement, 1.0);
        assert_eq!(cathedral.per_client_request, Some(0.001));
        // Without counters nothing is reported.
        assert!(summarise(&scenario(), &ms)[0].counters.is_empty());
    }

    #[test]
    fn the_quiet_gate_retries_disturbed_measurements_a_bounded_number_of_times() {
        let gate = QuietGate {
            max_other_cores: 0.3,
            max_wait_secs: 60.0,
            retries: 2,
        };
        assert!(!gate.disturbed(0, Some(0.3)));
        assert!(!gate.disturbed(0, None));
        assert!(gate.disturbed(0, Some(0.31)));
        assert!(gate.disturbed(1, Some(1.5)));
        assert!(
            !gate.disturbed(2, Some(1.5)),
            "the last attempt counts whatever happened"
        );
    }
}
