//! Presenting scenario results: the markdown table for stdout, the raw JSON file under
//! `results/`, and the UTC timestamps naming it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context as _;

use crate::scenario::{RatioSummary, ScenarioResult, SystemSummary};
use crate::stats::Spread;

/// The markdown table: one row per system, baseline first as given by the scenario. When the
/// scenario has counters, each gets a column: its median change per measurement and, in
/// brackets, per client request.
pub fn render_table(scenario: &str, baseline: &str, rows: &[SystemSummary]) -> String {
    let counters: Vec<String> = rows
        .iter()
        .flat_map(|r| r.counters.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut out = String::new();
    let counter_heads: String = counters
        .iter()
        .map(|c| format!(" {c} requests per run (per client request) |"))
        .collect();
    let _ = writeln!(
        out,
        "| scenario | system | req/s median [min–max] | p50 | p99 | errors |{counter_heads} peak RSS | ratio vs {baseline} | SUT CPUs | generator CPUs | other load, worst run (CPUs) |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|{}---:|---:|---:|---:|---:|",
        "---:|".repeat(counters.len())
    );
    for row in rows {
        let counter_cells: String = counters
            .iter()
            .map(|c| {
                let cell = row.counters.get(c).map_or_else(dash, |s| {
                    let per = s
                        .per_client_request
                        .map_or_else(dash, |p| format!("{p:.3}"));
                    format!("{:.0} ({per})", s.per_measurement)
                });
                format!(" {cell} |")
            })
            .collect();
        let _ = writeln!(
            out,
            "| {scenario} | {system} | {rps} | {p50} | {p99} | {errors} |{counter_cells} {rss} | {ratio} | {sut} | {generator} | {other} |",
            system = row.system,
            rps = row.requests_per_sec.map_or_else(dash, |s| spread(&s, 0)),
            p50 = row.p50_us.map_or_else(dash, micros),
            p99 = row.p99_us.map_or_else(dash, micros),
            errors = row.errors,
            rss = row.peak_rss_bytes.map_or_else(dash, mebibytes),
            ratio = row.ratio_vs_baseline.map_or_else(dash, |s| spread(&s, 2)),
            sut = row.sut_cores_used.map_or_else(dash, |c| format!("{c:.2}")),
            generator = row
                .generator_cores_used
                .map_or_else(dash, |c| format!("{c:.2}")),
            other = row
                .other_cores_used_max
                .map_or_else(dash, |c| format!("{c:.2}")),
        );
    }
    out
}

/// The scenario's extra ratios (requests/s, per run, median [min–max]); empty without any.
pub fn render_ratios(scenario: &str, ratios: &[RatioSummary]) -> String {
    if ratios.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | ratio of req/s | systems | per run, median [min–max] |"
    );
    let _ = writeln!(out, "|---|---|---|---:|");
    for r in ratios {
        let _ = writeln!(
            out,
            "| {scenario} | {} | {} / {} | {} |",
            r.label,
            r.numerator,
            r.denominator,
            r.ratio.map_or_else(dash, |s| spread(&s, 2))
        );
    }
    out
}

/// Everything printed after a scenario: the table, the ratios, the notes, and a line with
/// the load parameters and the path of the raw results.
pub fn render_result(result: &ScenarioResult, json_path: &Path) -> String {
    let scenario = &result.scenario;
    let mut out = render_table(&scenario.name, &scenario.baseline, &result.summary);
    let ratios = render_ratios(&scenario.name, &result.ratios);
    if !ratios.is_empty() {
        out.push('\n');
        out.push_str(&ratios);
    }
    out.push('\n');
    for note in &scenario.notes {
        let _ = writeln!(out, "- {note}");
    }
    if let Some(q) = &scenario.quiet {
        let _ = writeln!(
            out,
            "- quiet gate: each measurement waited (up to {} s) for other work to use at most \
             {} CPUs and was repeated (up to {} times) when it used more meanwhile; {} \
             measurements discarded",
            q.max_wait_secs,
            q.max_other_cores,
            q.retries,
            result.discarded.len()
        );
    }
    let _ = writeln!(
        out,
        "- {} runs × {} s measured after {} s warm-up, {} connections; raw results: {}",
        scenario.runs,
        scenario.load.duration_secs,
        scenario.load.warmup_secs,
        scenario.load.connections,
        json_path.display()
    );
    out
}

fn dash() -> String {
    "—".to_owned()
}

/// `median [min–max]` with `decimals` digits after the point.
fn spread(s: &Spread, decimals: usize) -> String {
    format!(
        "{:.d$} [{:.d$}–{:.d$}]",
        s.median,
        s.min,
        s.max,
        d = decimals
    )
}

/// Microseconds as `850 µs` below a millisecond, else `1.23 ms`.
fn micros(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A UTC timestamp as `(file-name form, ISO 8601 form)`, e.g.
/// `("20260314T101502Z", "2026-03-14T10:15:02Z")`.
pub fn utc_timestamp(at: SystemTime) -> (String, String) {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let (y, mo, d) = civil_from_days(days);
    (
        format!("{y:04}{mo:02}{d:02}T{h:02}{m:02}{s:02}Z"),
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z"),
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's
/// `civil_from_days`, restricted to dates after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Writes `dir/<scenario>-<stamp>.json` (via a `.tmp` file and a rename) and returns its path.
pub fn write_json(dir: &Path, stamp: &str, result: &ScenarioResult) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}-{stamp}.json", result.scenario.name));
    let tmp = dir.join(format!("{}-{stamp}.json.tmp", result.scenario.name));
    let json = serde_json::to_vec_pretty(result)?;
    std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{PinMode, Pinning};
    use crate::procfs::MachineInfo;
    use crate::scenario::tests::{measurement, scenario};
    use crate::scenario::{Counter, ProcessInfo, RatioSpec, ratios, summarise};
    use std::time::Duration;

    #[test]
    fn table_rendering() {
        let s = scenario();
        let ms = [
            measurement(1, "direct", 100_000.0, 500, 1500, 0),
            measurement(1, "cathedral", 45_000.0, 1000, 2000, 3),
        ];
        let table = render_table(&s.name, &s.baseline, &summarise(&s, &ms));
        let expected = "\
| scenario | system | req/s median [min–max] | p50 | p99 | errors | peak RSS | ratio vs direct | SUT CPUs | generator CPUs | other load, worst run (CPUs) |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| proxy | direct | 100000 [100000–100000] | 500 µs | 1.50 ms | 0 | 1.0 MiB | — | 0.90 | 0.50 | 0.10 |
| proxy | cathedral | 45000 [45000–45000] | 1.00 ms | 2.00 ms | 3 | 1.0 MiB | 0.45 [0.45–0.45] | 0.90 | 0.50 | 0.10 |
";
        assert_eq!(table, expected);
    }

    #[test]
    fn table_of_a_system_without_runs_shows_dashes() {
        let s = scenario();
        let table = render_table(&s.name, &s.baseline, &summarise(&s, &[]));
        assert!(
            table.contains("| proxy | cathedral | — | — | — | 0 | — | — | — | — | — |"),
            "{table}"
        );
    }

    fn check_time(secs: u64, expected: (&str, &str)) {
        let (file, iso) = utc_timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!((file.as_str(), iso.as_str()), expected, "{secs}");
    }

    #[test]
    fn utc_timestamps() {
        check_time(0, ("19700101T000000Z", "1970-01-01T00:00:00Z"));
        check_time(951_782_400, ("20000229T000000Z", "2000-02-29T00:00:00Z"));
        check_time(1_773_483_302, ("20260314T101502Z", "2026-03-14T10:15:02Z"));
        check_time(4_102_444_799, ("20991231T235959Z", "2099-12-31T23:59:59Z"));
        check_time(4_107_542_399, ("21000228T235959Z", "2100-02-28T23:59:59Z"));
    }

    #[test]
    fn json_lands_in_the_results_dir() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("cathedral-bench-json-{}", std::process::id()));
        let s = scenario();
        let measurements = vec![measurement(1, "direct", 10.0, 1, 2, 0)];
        let result = ScenarioResult {
            summary: summarise(&s, &measurements),
            scenario: s,
            started_utc: "2026-03-14T10:15:02Z".into(),
            harness_version: "0.1.0".into(),
            machine: MachineInfo::read(),
            pinning: Pinning::plan(PinMode::Off, &[0, 1], None),
            processes: vec![ProcessInfo {
                name: "origin".into(),
                pid: 1,
                command: "cathedral-bench origin".into(),
            }],
            measurements,
            discarded: Vec::new(),
            ratios: Vec::new(),
            checks: None,
        };
        let path = write_json(&dir.join("results"), "20260314T101502Z", &result)?;
        assert_eq!(path, dir.join("results/proxy-20260314T101502Z.json"));
        let value: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        assert_eq!(value["scenario"]["name"], "proxy");
        assert_eq!(value["measurements"][0]["load"]["requests_per_sec"], 10.0);
        assert_eq!(value["summary"][0]["system"], "direct");
        assert_eq!(
            std::fs::read_dir(path.parent().context("parent")?)?.count(),
            1,
            "no .tmp left"
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn counters_and_ratios_are_rendered() {
        let mut s = scenario();
        s.counters = vec![Counter {
            name: "origin".into(),
            url: "http://127.0.0.1:1/n".into(),
        }];
        s.ratios = vec![RatioSpec {
            label: "slowdown".into(),
            numerator: "cathedral".into(),
            denominator: "direct".into(),
        }];
        let mut direct = measurement(1, "direct", 100.0, 500, 1500, 0);
        direct.counters.insert("origin".into(), 1000);
        let mut cathedral = measurement(1, "cathedral", 50.0, 500, 1500, 0);
        cathedral.counters.insert("origin".into(), 0);
        let ms = [direct, cathedral];
        let table = render_table(&s.name, &s.baseline, &summarise(&s, &ms));
        assert!(
            table.contains("| errors | origin requests per run (per client request) | peak RSS |"),
            "{table}"
        );
        assert!(
            table.contains("|---:|---:|---:|---:|---:|---:|---:|---:|"),
            "{table}"
        );
        assert!(table.contains("| 0 | 1000 (1.000) | 1.0 MiB |"), "{table}");
        assert!(table.contains("| 0 | 0 (0.000) | 1.0 MiB |"), "{table}");
        let ratios = render_ratios(&s.name, &ratios(&s, &ms));
        assert_eq!(
            ratios,
            "| scenario | ratio of req/s | systems | per run, median [min–max] |\n\
             |---|---|---|---:|\n\
             | proxy | slowdown | cathedral / direct | 0.50 [0.50–0.50] |\n"
        );
        assert_eq!(render_ratios("x", &[]), "");
    }
}
