//! `cathedral-bench`: Cathedral's load harness — a fixed-body origin, a closed-loop HTTP/1.1
//! load generator, and scenario runners that start the systems under test, drive them side
//! by side, and report a markdown table plus raw JSON under `benches/results/`.
//!
//! Module map: [`origin`] and [`load`] are the two halves of any measurement; [`scenario`]
//! runs systems under test against them and summarises; [`harness`] is the one code path
//! around it (arguments, children, results); [`proxy`] and [`cache`] (with [`cache_config`])
//! are cathedral-only scenarios; [`compare`] runs cathedral beside nginx, Varnish and
//! `wasmtime serve` ([`peers`] provisions them, [`nginx_config`], [`varnish_config`] and
//! [`compare_config`] generate their configs, [`chart`] draws the SVG); [`process`] (children, pinning), [`procfs`] (CPU, RSS),
//! [`client`] (one-shot GETs), [`stats`] and [`report`] support them.

mod cache;
mod cache_config;
mod chart;
mod client;
mod compare;
mod compare_config;
mod harness;
mod load;
mod nginx_config;
mod origin;
mod peers;
mod process;
mod procfs;
mod proxy;
mod report;
mod scenario;
mod stats;
mod varnish_config;
mod wrk;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "cathedral-bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve a fixed body to every GET over HTTP/1.1 keep-alive (the upstream and the ceiling).
    Origin(origin::OriginArgs),
    /// Closed-loop keep-alive load against one URL; reports req/s, latency percentiles, errors.
    Load(load::LoadArgs),
    /// Proxy-path scenario: the origin directly vs through `cathedral serve --upstream`.
    Proxy(proxy::ProxyArgs),
    /// Cache-hit scenario: cathedral with the cache on (integrity 1 in 100, always) and off,
    /// and the origin directly, per object size.
    Cache(cache::CacheArgs),
    /// cathedral side by side with nginx, Varnish and `wasmtime serve`: builds and installs what it
    /// needs, runs every scenario, writes JSON, markdown and an SVG chart (BENCHMARKS.md).
    Compare(compare::CompareArgs),
    /// Builds and installs what `compare` needs (same flags), then prints the versions.
    Prepare(compare::CompareArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Origin(args) => origin::main(args),
        Command::Load(args) => load::main(args),
        Command::Proxy(args) => proxy::main(args),
        Command::Cache(args) => cache::main(args),
        Command::Compare(args) => compare::main(args),
        Command::Prepare(args) => compare::prepare(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn subcommands_parse() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from([
            "cathedral-bench",
            "load",
            "--url",
            "http://127.0.0.1:8080/",
            "--connections",
            "8",
            "--duration",
            "1.5",
            "--warmup",
            "0",
            "--max-requests",
            "100",
            "--json",
        ])?;
        let Command::Load(load) = cli.command else {
            anyhow::bail!("expected load, got {:?}", cli.command);
        };
        assert_eq!(
            (load.connections, load.duration, load.max_requests),
            (8, 1.5, Some(100))
        );
        assert!(load.json);
        assert!(
            Cli::try_parse_from(["cathedral-bench", "load"]).is_err(),
            "--url is required"
        );
        assert!(
            Cli::try_parse_from(["cathedral-bench", "origin", "--runtime", "multi-thread"]).is_ok()
        );
        assert!(
            Cli::try_parse_from(["cathedral-bench", "proxy", "--runs", "1", "--pin", "off"])
                .is_ok()
        );
        let cli = Cli::try_parse_from([
            "cathedral-bench",
            "cache",
            "--sizes",
            "1024,4096",
            "--runs",
            "5",
        ])?;
        let Command::Cache(cache) = cli.command else {
            anyhow::bail!("expected cache, got {:?}", cli.command);
        };
        assert_eq!((cache.sizes, cache.runner.runs), (vec![1024, 4096], 5));
        assert_eq!(cache.cache_control, "public, max-age=3600");
        let cli = Cli::try_parse_from([
            "cathedral-bench",
            "origin",
            "--cache-control",
            "max-age=60",
            "--etag",
            "\"x\"",
        ])?;
        let Command::Origin(origin) = cli.command else {
            anyhow::bail!("expected origin, got {:?}", cli.command);
        };
        assert_eq!(origin.cache_control.as_deref(), Some("max-age=60"));
        Ok(())
    }
}
