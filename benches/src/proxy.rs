//! `proxy`: the proxy-path scenario — the fixed-body origin measured directly (the ceiling)
//! and through `cathedral serve --upstream`, side by side in every run.
//!
//! The origin runs as a child process of this same binary rather than in-process: it gets its
//! own allocator, its own RSS and CPU figures, and is pinned exactly like cathedral, so the
//! harness process (which only waits while a run is measured) affects neither system.

use std::ffi::OsString;

use anyhow::bail;

use crate::harness::{self, Harness, RunnerArgs, RunnerConfig};
use crate::origin::MAX_BODY_SIZE;
use crate::process;
use crate::scenario::{Scenario, SystemUnderTest};

/// Arguments of `cathedral-bench proxy`.
#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub runner: RunnerArgs,
    /// Size in bytes of the origin's response body.
    #[arg(long, default_value_t = 64)]
    pub body_size: usize,
}

/// Validated `proxy` settings.
#[derive(Debug, Clone)]
struct ProxyConfig {
    runner: RunnerConfig,
    body_size: usize,
}

impl TryFrom<ProxyArgs> for ProxyConfig {
    type Error = anyhow::Error;

    fn try_from(args: ProxyArgs) -> anyhow::Result<Self> {
        let runner = RunnerConfig::try_from(&args.runner)?;
        if args.body_size > MAX_BODY_SIZE {
            bail!("--body-size {} exceeds {MAX_BODY_SIZE}", args.body_size);
        }
        Ok(Self {
            runner,
            body_size: args.body_size,
        })
    }
}

/// Entry point of `cathedral-bench proxy`.
pub fn main(args: ProxyArgs) -> anyhow::Result<()> {
    let config = ProxyConfig::try_from(args)?;
    harness::block_on(run(config))
}

async fn run(config: ProxyConfig) -> anyhow::Result<()> {
    let mut h = Harness::new("proxy", config.runner, 2, "--upstream").await?;
    let origin_addr = h.start_origin("origin", config.body_size, &[]).await?;
    let [listen, admin] = process::free_loopback_ports(2)?[..] else {
        bail!("expected two free ports");
    };
    let args: Vec<OsString> = vec![
        "serve".into(),
        "--upstream".into(),
        format!("http://{origin_addr}").into(),
        "--listen".into(),
        listen.to_string().into(),
        "--admin-listen".into(),
        admin.to_string().into(),
        "--log-format".into(),
        "json".into(),
    ];
    h.start_cathedral("cathedral", &args, listen).await?;

    let direct_url = format!("http://{origin_addr}/");
    let cathedral_url = format!("http://{listen}/");
    // One request each before spending minutes: a broken proxy path fails here, clearly.
    harness::probe("direct", &direct_url).await?;
    harness::probe("cathedral", &cathedral_url).await?;

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
        ratios: Vec::new(),
        counters: Vec::new(),
        load: h.config.load.clone(),
        runs: h.config.runs,
        quiet: h.config.quiet.clone(),
        notes: vec![
            h.pinning.description.clone(),
            format!("{} B bodies", config.body_size),
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
    h.measure(scenario, None).await?;
    h.stop().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_arguments_are_validated() {
        let args = |body_size| ProxyArgs {
            runner: harness::tests::args(),
            body_size,
        };
        assert!(ProxyConfig::try_from(args(64)).is_ok());
        let err = ProxyConfig::try_from(args(MAX_BODY_SIZE + 1))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("--body-size")));
        let mut bad_runs = args(64);
        bad_runs.runner.runs = 0;
        assert!(ProxyConfig::try_from(bad_runs).is_err());
    }
}
