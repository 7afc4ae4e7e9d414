//! Scenarios: systems under test, each with a target URL, plus load parameters; the runner
//! that measures them run by run, alternating the order, and the per-system summary.
//!
//! A scenario module (e.g. `proxy`) starts its processes, describes them as a [`Scenario`],
//! and hands both to [`run`]; everything after that — generator launches, CPU and RSS
//! sampling, medians, ratios against the baseline — is shared by every scenario.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::time::Instant;

use crate::load::LoadReport;
use crate::process::{ManagedChild, Pinning};
use crate::procfs::MachineInfo;
use crate::stats::{self, Spread};

/// Load applied to every system of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadParams {
    pub connections: usize,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    pub max_requests: Option<u64>,
    pub timeout_secs: f64,
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

/// Systems under test + load parameters + how many runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    pub name: String,
    pub systems: Vec<SystemUnderTest>,
    /// Name of the system every other one is compared with (ratio of requests/s).
    pub baseline: String,
    pub load: LoadParams,
    pub runs: u32,
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
}

/// Drives every system once per run, in [`Scenario::order`], checking after each measurement
/// that every child is still alive.
pub async fn run(
    scenario: &Scenario,
    children: &mut [ManagedChild],
    generator: &Generator,
) -> anyhow::Result<Vec<Measurement>> {
    let mut measurements = Vec::new();
    for run in 1..=scenario.runs {
        for system in scenario.order(run) {
            eprintln!(
                "[{}] run {run}/{}: {} ({})",
                scenario.name, scenario.runs, system.name, system.url
            );
            let before: Vec<_> = children
                .iter()
                .map(|c| c.cpu_times())
                .collect::<anyhow::Result<_>>()?;
            let started = Instant::now();
            let load = drive(generator, &system.url, &scenario.load).await?;
            let wall = started.elapsed().as_secs_f64();
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
            eprintln!(
                "[{}]   {:.0} req/s, p50 {} µs, p99 {} µs, {} errors, generator {:.2} CPUs",
                scenario.name,
                load.requests_per_sec,
                load.latency.p50_us,
                load.latency.p99_us,
                load.errors_total,
                load.cpu.cores_used
            );
            measurements.push(Measurement {
                run,
                system: system.name.clone(),
                load,
                process_cpu,
                peak_rss_bytes,
            });
        }
    }
    Ok(measurements)
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
    /// Errors summed over all runs.
    pub errors: u64,
    /// Largest `VmHWM` of this system's process.
    pub peak_rss_bytes: Option<u64>,
    /// requests/s of this system divided by the baseline's, computed per run; `None` for the
    /// baseline itself.
    pub ratio_vs_baseline: Option<Spread>,
    /// Median CPUs used by this system's process.
    pub sut_cores_used: Option<f64>,
    /// Median CPUs used by the generator.
    pub generator_cores_used: Option<f64>,
}

/// Summarises measurements per system, in the scenario's system order.
pub fn summarise(scenario: &Scenario, measurements: &[Measurement]) -> Vec<SystemSummary> {
    let of = |name: &str| -> Vec<&Measurement> {
        let mut ms: Vec<_> = measurements.iter().filter(|m| m.system == name).collect();
        ms.sort_by_key(|m| m.run);
        ms
    };
    let rps_by_run = |ms: &[&Measurement]| -> BTreeMap<u32, f64> {
        ms.iter()
            .map(|m| (m.run, m.load.requests_per_sec))
            .collect()
    };
    let baseline = rps_by_run(&of(&scenario.baseline));
    scenario
        .systems
        .iter()
        .map(|system| {
            let ms = of(&system.name);
            let values =
                |f: &dyn Fn(&Measurement) -> f64| -> Vec<f64> { ms.iter().map(|m| f(m)).collect() };
            let ratio_vs_baseline = (system.name != scenario.baseline)
                .then(|| {
                    let mine = rps_by_run(&ms);
                    let (num, den): (Vec<f64>, Vec<f64>) = mine
                        .iter()
                        .filter_map(|(run, rps)| Some((*rps, *baseline.get(run)?)))
                        .unzip();
                    stats::spread(&stats::per_run_ratios(&num, &den))
                })
                .flatten();
            SystemSummary {
                system: system.name.clone(),
                runs: ms.len(),
                requests_per_sec: stats::spread(&values(&|m| m.load.requests_per_sec)),
                p50_us: stats::median(&values(&|m| m.load.latency.p50_us as f64)),
                p99_us: stats::median(&values(&|m| m.load.latency.p99_us as f64)),
                errors: ms.iter().map(|m| m.load.errors_total).sum(),
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
    pub summary: Vec<SystemSummary>,
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
            load: LoadParams {
                connections: 64,
                warmup_secs: 2.0,
                duration_secs: 10.0,
                max_requests: None,
                timeout_secs: 10.0,
            },
            runs: 3,
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
    }
}
