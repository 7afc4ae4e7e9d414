//! A cross-check of the in-repo load generator with `wrk` (Debian's package): after a
//! scenario's measurements, `wrk` drives each of its systems once with the same connections
//! on the same pinned CPU, and its requests/s and p99 are reported beside ours. Agreement
//! says the numbers are not an artefact of our generator; `wrk` is C with an event loop per
//! thread and no per-request allocation, so a system it drives much faster than ours would
//! mean our generator was the bottleneck.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::process::Pinning;

/// What one `wrk` run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WrkResult {
    pub system: String,
    pub requests_per_sec: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    /// Non-2xx/3xx responses and socket errors wrk reported.
    pub errors: u64,
    /// Our generator's median requests/s for the same system in the same scenario.
    pub ours_requests_per_sec: Option<f64>,
}

/// `wrk` on `PATH` or in `/usr/bin`.
pub fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("wrk"))
        .find(|candidate| candidate.is_file())
}

/// A latency as wrk prints it (`812.00us`, `1.23ms`, `2.00s`) in microseconds.
pub fn parse_latency(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// Requests/s, p50, p99 and errors from `wrk --latency` output.
pub fn parse_output(text: &str) -> Option<(f64, Option<f64>, Option<f64>, u64)> {
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = 0u64;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = parse_latency(v);
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = parse_latency(v);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors += v
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Some((rps?, p50, p99, errors))
}

/// Runs `wrk -t1 -cN -dS --latency URL` pinned like our generator.
pub async fn run(
    wrk: &Path,
    pinning: &Pinning,
    url: &str,
    connections: usize,
    duration_secs: f64,
) -> anyhow::Result<(f64, Option<f64>, Option<f64>, u64)> {
    let secs = duration_secs.ceil().max(1.0) as u64;
    let mut command = pinning.command(wrk, pinning.generator_cpus.as_deref());
    command
        .arg("-t1")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().context("starting wrk")?;
    let output = tokio::time::timeout(Duration::from_secs(secs + 30), child.wait_with_output())
        .await
        .context("wrk did not finish")??;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            output.status,
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_output(&text).with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_latencies_parse() {
        assert_eq!(parse_latency("812.00us"), Some(812.0));
        assert_eq!(parse_latency(" 1.23ms"), Some(1230.0));
        assert_eq!(parse_latency("2.00s"), Some(2_000_000.0));
        assert_eq!(parse_latency("1.00m"), Some(60_000_000.0));
        assert_eq!(parse_latency("fast"), None);
    }

    #[test]
    fn wrk_output_parses() {
        let text = "Running 2s test @ http://127.0.0.1:8080/\n\
  1 threads and 64 connections\n\
  Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
    Latency   620.11us  105.22us   3.01ms   80.00%\n\
    Req/Sec   100.00k     2.00k  110.00k    70.00%\n\
  Latency Distribution\n\
     50%  601.00us\n\
     75%  650.00us\n\
     90%  700.00us\n\
     99%    1.10ms\n\
  200000 requests in 2.00s, 30.00MB read\n\
  Socket errors: connect 0, read 2, write 0, timeout 1\n\
  Non-2xx or 3xx responses: 4\n\
Requests/sec: 100012.34\n\
Transfer/sec:     15.00MB\n";
        assert_eq!(
            parse_output(text),
            Some((100_012.34, Some(601.0), Some(1100.0), 7))
        );
        assert_eq!(parse_output("nothing"), None);
    }
}
