//! `load`: a closed-loop HTTP/1.1 keep-alive load generator on hyper.
//!
//! Each of N tasks owns one connection and sends one GET at a time (no pipelining), reading
//! the whole body before sending the next. Latency goes into a per-connection HDR histogram
//! (1 µs resolution, three significant figures); the histograms are merged at the end.
//! Requests that start during the warm-up are not counted at all; the run ends at the
//! deadline or when the optional request cap is reached, whichever comes first.
//!
//! Why a Rust generator rather than wrk: the scenarios drive it from the same binary that
//! starts the systems under test, so warm-up exclusion is exact (a request is measured iff
//! it starts after the warm-up deadline, rather than wrk's "run twice" approximation), the
//! result is JSON the scenario runner reads back without scraping text, it reports its own
//! CPU time so a saturated generator is visible, errors are counted by kind, and there is no
//! Debian package or Lua script to install on the benchmark machine.
//!
//! By default the loop is closed, so latencies are "at this concurrency": a slow response
//! delays the next request on that connection instead of queueing it (no coordinated-omission
//! correction). With `--rate` the loop is open per connection: each connection has a fixed
//! schedule (`connections / rate` seconds apart, connections staggered evenly), and latency is
//! measured from the *scheduled* start, so a late response also charges the requests that had
//! to wait behind it (coordinated omission corrected). `--ramp` spreads the connection opens
//! over the first seconds (e.g. 10,000 connections), so a connect storm does not overflow the
//! server's accept backlog; it must fit in the warm-up.
//!
//! `--header 'name: value'` adds request headers; `{n}` in a value is replaced by a number
//! cycling over `--cycle` distinct values (request `k` of connection `i` gets
//! `(i + k × connections) mod cycle`), e.g. many API keys or users.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{Request, Uri};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::procfs::{self, CpuTimes, Pid};
use crate::stats::{self, LatencySummary};

/// Upper bound on `--connections`.
pub const MAX_CONNECTIONS: usize = 20_000;

/// Upper bound on `--cycle` (the distinct header values are built before the run).
pub const MAX_CYCLE: u64 = 1_000_000;

/// Upper bound on `--header`.
pub const MAX_HEADERS: usize = 32;

/// Arguments of `cathedral-bench load`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Target URL: `http://` to a loopback address or `localhost`.
    #[arg(long)]
    pub url: String,
    /// Concurrent keep-alive connections, one task and one request in flight each.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Measured seconds, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring; nothing from this phase is counted.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Stop after this many measured requests (successful or not), even before --duration.
    #[arg(long)]
    pub max_requests: Option<u64>,
    /// Per-request timeout in seconds; a timed-out request counts as an error.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Generator threads [default: the CPUs this process may use; 1 = current-thread runtime].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the report as one line of JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Extra request header, `name: value` (repeatable); `{n}` in the value cycles over
    /// `--cycle` values.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// How many distinct values `{n}` in `--header` values takes (0 to N-1).
    #[arg(long, default_value_t = 1)]
    pub cycle: u64,
    /// Open loop: this many requests per second in total, spread evenly over the connections,
    /// latency measured from each request's scheduled start [default: closed loop].
    #[arg(long, value_name = "REQ_PER_SEC")]
    pub rate: Option<f64>,
    /// Seconds over which the connections are opened, evenly spread; at most --warmup.
    #[arg(long, default_value_t = 0.0)]
    pub ramp: f64,
}

/// Where the requests go: a resolved socket address plus what goes on the request line.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    host: HeaderValue,
    path: Uri,
}

impl Target {
    /// Accepts `http://HOST[:PORT][/PATH]` where HOST is a loopback IP or `localhost`.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("--url {url:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--url {url:?} must start with http:// (TLS is not supported)");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("--url {url:?} has no host"))?;
        let host = authority.host();
        let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .with_context(|| {
                    format!("--url host {host:?} must be an IP address or localhost")
                })?
        };
        if !ip.is_loopback() {
            bail!("--url host {host} is not a loopback address");
        }
        let port = authority.port_u16().unwrap_or(80);
        let path: Uri = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .with_context(|| format!("--url {url:?} has an invalid path"))?;
        Ok(Self {
            url: url.to_owned(),
            addr: SocketAddr::new(ip, port),
            host: HeaderValue::from_str(authority.as_str())?,
            path,
        })
    }

    /// A GET of the target path with its `Host` and `extra` headers (appended in order).
    pub fn request_with(&self, extra: &[(HeaderName, HeaderValue)]) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.path.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        for (name, value) in extra {
            headers.append(name.clone(), value.clone());
        }
        request
    }
}

/// The request headers of a run: for each of `cycle` numbers, the headers with `{n}` filled in.
#[derive(Debug, Clone, Default)]
pub struct HeaderSets {
    /// `sets[n]` are the headers of a request numbered `n`; empty without `--header`.
    sets: Vec<Vec<(HeaderName, HeaderValue)>>,
}

impl HeaderSets {
    /// Parses `name: value` specs and builds the `cycle` variants.
    pub fn parse(specs: &[String], cycle: u64) -> anyhow::Result<Self> {
        if specs.len() > MAX_HEADERS {
            bail!("at most {MAX_HEADERS} --header, not {}", specs.len());
        }
        if !(1..=MAX_CYCLE).contains(&cycle) {
            bail!("--cycle must be between 1 and {MAX_CYCLE}, not {cycle}");
        }
        let parsed: Vec<(HeaderName, &str)> = specs
            .iter()
            .map(|spec| {
                let (name, value) = spec
                    .split_once(':')
                    .with_context(|| format!("--header {spec:?} is not `name: value`"))?;
                let name = HeaderName::from_bytes(name.trim().as_bytes())
                    .with_context(|| format!("--header {spec:?}: invalid header name"))?;
                if name == HOST {
                    bail!("--header {spec:?}: the Host header comes from --url");
                }
                Ok((name, value.trim()))
            })
            .collect::<anyhow::Result<_>>()?;
        if parsed.is_empty() {
            return Ok(Self::default());
        }
        let templated = parsed.iter().any(|(_, v)| v.contains("{n}"));
        let variants = if templated { cycle } else { 1 };
        let sets = (0..variants)
            .map(|n| {
                parsed
                    .iter()
                    .map(|(name, template)| {
                        let value = template.replace("{n}", &n.to_string());
                        let value = HeaderValue::from_str(&value).with_context(|| {
                            format!("--header {name}: {template:?} gives an invalid value")
                        })?;
                        Ok((name.clone(), value))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self { sets })
    }

    /// The headers of request `k` of connection `index` out of `connections`.
    pub fn for_request(
        &self,
        index: usize,
        k: u64,
        connections: usize,
    ) -> &[(HeaderName, HeaderValue)] {
        if self.sets.is_empty() {
            return &[];
        }
        let n = (index as u64).wrapping_add(k.wrapping_mul(connections as u64))
            % self.sets.len() as u64;
        &self.sets[n as usize]
    }

    /// How many distinct header sets there are (1 without `{n}`, 0 without headers).
    pub fn variants(&self) -> usize {
        self.sets.len()
    }
}

/// When connection `index` opens and when its requests are scheduled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Connections open evenly over this span from the start.
    pub ramp: Duration,
    /// Open loop: time between two requests of one connection (`connections / rate`).
    pub interval: Option<Duration>,
    pub connections: usize,
}

impl Schedule {
    /// Offset from the start at which connection `index` opens.
    pub fn connect_offset(&self, index: usize) -> Duration {
        self.ramp
            .mul_f64(index as f64 / self.connections.max(1) as f64)
    }

    /// Open loop: offset from the start of request `k` of connection `index`: after the ramp,
    /// connections staggered evenly within one interval.
    pub fn request_offset(&self, index: usize, k: u64) -> Option<Duration> {
        let interval = self.interval?;
        let stagger = interval.mul_f64(index as f64 / self.connections.max(1) as f64);
        Some(self.ramp + stagger + interval.mul_f64(k as f64))
    }
}

/// Validated load parameters.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: Target,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub max_requests: Option<u64>,
    pub timeout: Duration,
    pub threads: usize,
    pub headers: HeaderSets,
    pub schedule: Schedule,
    /// `--rate`, when open loop.
    pub rate: Option<f64>,
}

impl TryFrom<&LoadArgs> for LoadConfig {
    type Error = anyhow::Error;

    fn try_from(args: &LoadArgs) -> anyhow::Result<Self> {
        let target = Target::parse(&args.url)?;
        if !(1..=MAX_CONNECTIONS).contains(&args.connections) {
            bail!(
                "--connections must be between 1 and {MAX_CONNECTIONS}, not {}",
                args.connections
            );
        }
        if args.max_requests == Some(0) {
            bail!("--max-requests must be at least 1");
        }
        let threads = match args.threads {
            Some(n) if (1..=256).contains(&n) => n,
            Some(n) => bail!("--threads must be between 1 and 256, not {n}"),
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        let warmup = seconds("--warmup", args.warmup, true, 600.0)?;
        let ramp = seconds("--ramp", args.ramp, true, 600.0)?;
        if ramp > warmup {
            bail!(
                "--ramp {} must fit in the warm-up (--warmup {}): connection opens are not measured",
                args.ramp,
                args.warmup
            );
        }
        let interval = match args.rate {
            None => None,
            Some(rate) if rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0 => {
                let interval = args.connections as f64 / rate;
                if interval > 3600.0 {
                    bail!(
                        "--rate {rate} over {} connections is below one request per connection per hour",
                        args.connections
                    );
                }
                Some(Duration::from_secs_f64(interval))
            }
            Some(rate) => bail!("--rate must be above 0 and at most 10000000, not {rate}"),
        };
        Ok(Self {
            target,
            connections: args.connections,
            duration: seconds("--duration", args.duration, false, 3600.0)?,
            warmup,
            max_requests: args.max_requests,
            timeout: seconds("--timeout", args.timeout, false, 600.0)?,
            threads,
            headers: HeaderSets::parse(&args.headers, args.cycle)?,
            schedule: Schedule {
                ramp,
                interval,
                connections: args.connections,
            },
            rate: args.rate,
        })
    }
}

/// Validates a seconds argument: finite, positive (or zero if `zero_ok`) and at most `max`.
pub fn seconds(name: &str, value: f64, zero_ok: bool, max: f64) -> anyhow::Result<Duration> {
    let low_ok = if zero_ok { value >= 0.0 } else { value > 0.0 };
    if !value.is_finite() || !low_ok || value > max {
        let low = if zero_ok { "0" } else { "more than 0" };
        bail!("{name} must be {low} and at most {max} seconds, not {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

/// Errors of the measured phase, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// TCP connect or HTTP/1 handshake failed (or timed out).
    pub connect: u64,
    /// Sending the request or reading the response head failed (e.g. connection reset).
    pub request: u64,
    /// The request did not complete within --timeout.
    pub timeout: u64,
    /// A complete response with a status outside 200–299.
    pub status: u64,
    /// The response body failed part-way.
    pub body: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect + self.request + self.timeout + self.status + self.body
    }

    fn add(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.request += other.request;
        self.timeout += other.timeout;
        self.status += other.status;
        self.body += other.body;
    }
}

/// The generator's own CPU use over the measured phase.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct GeneratorCpu {
    pub user_secs: f64,
    pub system_secs: f64,
    /// CPU seconds per wall second: near the number of generator CPUs means it is saturated.
    pub cores_used: f64,
    /// The CPUs the generator may run on.
    pub cpus_available: usize,
}

/// What one `load` run measured. Also the JSON printed by `load --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub url: String,
    pub connections: usize,
    pub threads: usize,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    pub max_requests: Option<u64>,
    /// From the end of the warm-up to the last measured completion.
    pub measured_secs: f64,
    /// Successful (2xx, whole body) measured requests.
    pub requests: u64,
    pub requests_per_sec: f64,
    /// Latency of the successful measured requests.
    pub latency: LatencySummary,
    pub errors: ErrorCounts,
    pub errors_total: u64,
    /// Non-2xx statuses seen, by code.
    pub statuses: std::collections::BTreeMap<u16, u64>,
    /// Response body bytes of the successful measured requests.
    pub body_bytes: u64,
    pub body_bytes_per_sec: f64,
    /// Requests completed during the warm-up (not otherwise counted).
    pub warmup_requests: u64,
    /// Connections opened over the whole run, including reconnects after a server close.
    pub connections_opened: u64,
    pub cpu: GeneratorCpu,
    /// Open loop: the offered rate in requests/s (`--rate`); `None` for a closed loop.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Seconds over which the connections were opened.
    #[serde(default)]
    pub ramp_secs: f64,
    /// Distinct header sets cycled over (0 without `--header`).
    #[serde(default)]
    pub header_variants: usize,
}

/// What the connection tasks share.
#[derive(Debug)]
struct Shared {
    target: Target,
    timeout: Duration,
    start: Instant,
    headers: HeaderSets,
    schedule: Schedule,
    connections: usize,
    warmup_end: Instant,
    deadline: Instant,
    max_requests: Option<u64>,
    /// Measured requests started so far, for the cap.
    started: AtomicU64,
}

/// One connection's tallies, merged at the end.
#[derive(Debug)]
struct ConnStats {
    histogram: Histogram<u64>,
    requests: u64,
    warmup_requests: u64,
    body_bytes: u64,
    errors: ErrorCounts,
    statuses: std::collections::BTreeMap<u16, u64>,
    connections_opened: u64,
    last_finish: Option<Instant>,
}

impl ConnStats {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            histogram: stats::latency_histogram()?,
            requests: 0,
            warmup_requests: 0,
            body_bytes: 0,
            errors: ErrorCounts::default(),
            statuses: Default::default(),
            connections_opened: 0,
            last_finish: None,
        })
    }

    fn merge(&mut self, other: ConnStats) -> anyhow::Result<()> {
        self.histogram.add(&other.histogram)?;
        self.requests += other.requests;
        self.warmup_requests += other.warmup_requests;
        self.body_bytes += other.body_bytes;
        self.errors.add(&other.errors);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.connections_opened += other.connections_opened;
        self.last_finish = self.last_finish.max(other.last_finish);
        Ok(())
    }

    fn finished_measured(&mut self, at: Instant) {
        self.last_finish = self.last_finish.max(Some(at));
    }
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Request,
    Status(u16),
    Body,
}

/// Entry point of `cathedral-bench load`.
pub fn main(args: LoadArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let config = LoadConfig::try_from(&args)?;
    let flavor = if config.threads == 1 {
        crate::origin::RuntimeFlavor::CurrentThread
    } else {
        crate::origin::RuntimeFlavor::MultiThread
    };
    let runtime = crate::origin::build_runtime(flavor, Some(config.threads))?;
    let report = runtime.block_on(run(&config))?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut stdout, &report)?;
        writeln!(stdout)?;
    } else {
        write!(stdout, "{}", render_text(&report))?;
    }
    stdout.flush()?;
    Ok(())
}

/// Runs the load described by `config` on the current tokio runtime.
pub async fn run(config: &LoadConfig) -> anyhow::Result<LoadReport> {
    let start = Instant::now();
    let warmup_end = start + config.warmup;
    let deadline = warmup_end + config.duration;
    let shared = Arc::new(Shared {
        target: config.target.clone(),
        timeout: config.timeout,
        start,
        headers: config.headers.clone(),
        schedule: config.schedule,
        connections: config.connections,
        warmup_end,
        deadline,
        max_requests: config.max_requests,
        started: AtomicU64::new(0),
    });

    let cpu_at_start = (Instant::now(), procfs::cpu_times(Pid::SelfProcess)?);
    let cpu_at_warmup_end = tokio::spawn(async move {
        tokio::time::sleep_until(warmup_end).await;
        procfs::cpu_times(Pid::SelfProcess).map(|cpu| (Instant::now(), cpu))
    });

    let tasks: Vec<_> = (0..config.connections)
        .map(|index| tokio::spawn(connection(Arc::clone(&shared), index)))
        .collect();
    let mut total = ConnStats::new()?;
    for task in tasks {
        total.merge(task.await.context("a connection task panicked")??)?;
    }
    let cpu_at_end = (Instant::now(), procfs::cpu_times(Pid::SelfProcess)?);
    let cpu_from = if cpu_at_warmup_end.is_finished() {
        cpu_at_warmup_end.await??
    } else {
        cpu_at_warmup_end.abort();
        cpu_at_start
    };

    let window_end = total.last_finish.unwrap_or(cpu_at_end.0.min(deadline));
    let measured_secs = window_end
        .saturating_duration_since(warmup_end)
        .as_secs_f64();
    let per_sec = |n: u64| {
        if measured_secs > 0.0 {
            n as f64 / measured_secs
        } else {
            0.0
        }
    };
    let cpu: CpuTimes = cpu_at_end.1.since(&cpu_from.1);
    let cpu_wall = cpu_at_end
        .0
        .saturating_duration_since(cpu_from.0)
        .as_secs_f64();
    Ok(LoadReport {
        url: config.target.url.clone(),
        connections: config.connections,
        threads: config.threads,
        warmup_secs: config.warmup.as_secs_f64(),
        duration_secs: config.duration.as_secs_f64(),
        max_requests: config.max_requests,
        measured_secs,
        requests: total.requests,
        requests_per_sec: per_sec(total.requests),
        latency: LatencySummary::from_histogram(&total.histogram),
        errors: total.errors,
        errors_total: total.errors.total(),
        statuses: total.statuses,
        body_bytes: total.body_bytes,
        body_bytes_per_sec: per_sec(total.body_bytes),
        warmup_requests: total.warmup_requests,
        connections_opened: total.connections_opened,
        cpu: GeneratorCpu {
            user_secs: cpu.user_secs,
            system_secs: cpu.system_secs,
            cores_used: if cpu_wall > 0.0 {
                cpu.total_secs() / cpu_wall
            } else {
                0.0
            },
            cpus_available: std::thread::available_parallelism().map_or(1, usize::from),
        },
        rate: config.rate,
        ramp_secs: config.schedule.ramp.as_secs_f64(),
        header_variants: config.headers.variants(),
    })
}

/// One connection's loop: closed (the next request when the previous one is done) or, with a
/// [`Schedule::interval`], open (each request at its scheduled time, or at once when late).
/// Bounded by the deadline (closed loop: every iteration checks it; open loop: no request
/// scheduled after it is sent, and one later than the request timeout is counted as a timeout
/// without being sent), by the request timeout, and by the request cap.
async fn connection(shared: Arc<Shared>, index: usize) -> anyhow::Result<ConnStats> {
    /// Pause after a failed connect, so a dead server does not turn into a busy loop.
    const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
    let mut stats = ConnStats::new()?;
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    // Open the connection at its place in the ramp (not at its first request), so that held
    // connections are established during the warm-up; a failure here is retried by the loop.
    tokio::time::sleep_until(shared.start + shared.schedule.connect_offset(index)).await;
    if let Ok(Ok(s)) = timeout(shared.timeout, connect(shared.target.addr)).await {
        stats.connections_opened += 1;
        sender = Some(s);
    }
    // Requests sent (or attempted) on this connection so far: picks header values and,
    // open loop, the next scheduled start.
    let mut k: u64 = 0;
    loop {
        let scheduled = shared
            .schedule
            .request_offset(index, k)
            .map(|offset| shared.start + offset);
        let now = match scheduled {
            // Open loop: every request scheduled before the deadline is sent, however late
            // (its lateness is its latency), unless it is later than the request timeout.
            Some(at) => {
                if at >= shared.deadline {
                    break;
                }
                tokio::time::sleep_until(at).await;
                let now = Instant::now();
                if now >= at + shared.timeout {
                    if at >= shared.warmup_end {
                        stats.errors.timeout += 1;
                        stats.finished_measured(now);
                    }
                    k += 1;
                    continue;
                }
                now
            }
            None => {
                let now = Instant::now();
                if now >= shared.deadline {
                    break;
                }
                now
            }
        };
        let measured = scheduled.unwrap_or(now) >= shared.warmup_end;
        let Some(ready) = sender.as_mut() else {
            match timeout(shared.timeout, connect(shared.target.addr)).await {
                Ok(Ok(s)) => {
                    stats.connections_opened += 1;
                    sender = Some(s);
                }
                Ok(Err(_)) | Err(_) => {
                    if measured {
                        stats.errors.connect += 1;
                        stats.finished_measured(Instant::now());
                    }
                    tokio::time::sleep_until(
                        (Instant::now() + CONNECT_BACKOFF).min(shared.deadline),
                    )
                    .await;
                }
            }
            continue;
        };
        // A keep-alive connection the server has closed is not an error: reconnect.
        if !matches!(timeout(shared.timeout, ready.ready()).await, Ok(Ok(()))) {
            sender = None;
            continue;
        }

        let sent = Instant::now();
        if scheduled.is_none() && sent >= shared.deadline {
            break;
        }
        // Open loop: latency counts from the scheduled start (coordinated omission corrected).
        let started = scheduled.unwrap_or(sent);
        let measured = started >= shared.warmup_end;
        if measured
            && let Some(cap) = shared.max_requests
            && shared.started.fetch_add(1, Ordering::Relaxed) >= cap
        {
            break;
        }
        let headers = shared.headers.for_request(index, k, shared.connections);
        k += 1;
        let outcome = timeout(shared.timeout, one_request(ready, &shared.target, headers)).await;
        let finished = Instant::now();
        if !measured {
            if matches!(outcome, Ok(Ok(_))) {
                stats.warmup_requests += 1;
            } else if !matches!(outcome, Ok(Err(Failure::Status(_)))) {
                sender = None;
            }
            continue;
        }
        stats.finished_measured(finished);
        match outcome {
            Ok(Ok(bytes)) => {
                let micros = finished.duration_since(started).as_micros();
                stats
                    .histogram
                    .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
                stats.requests += 1;
                stats.body_bytes += bytes;
            }
            Ok(Err(Failure::Status(code))) => {
                stats.errors.status += 1;
                *stats.statuses.entry(code).or_default() += 1;
            }
            Ok(Err(Failure::Request)) => {
                stats.errors.request += 1;
                sender = None;
            }
            Ok(Err(Failure::Body)) => {
                stats.errors.body += 1;
                sender = None;
            }
            Err(_elapsed) => {
                stats.errors.timeout += 1;
                sender = None;
            }
        }
    }
    Ok(stats)
}

/// Opens one HTTP/1.1 connection; its driver task ends when the sender is dropped.
async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        // Ends with an error when the server closes; the next request notices via `ready()`.
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends one GET and reads the whole body, returning the body length. Non-2xx bodies are read
/// too so the connection stays usable.
async fn one_request(
    sender: &mut SendRequest<Empty<Bytes>>,
    target: &Target,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<u64, Failure> {
    let response = sender
        .send_request(target.request_with(headers))
        .await
        .map_err(|_| Failure::Request)?;
    let status = response.status();
    let mut body = response.into_body();
    let mut bytes = 0u64;
    // Bounded by the body's length and, from the caller, by the request timeout.
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Failure::Body)?;
        if let Some(data) = frame.data_ref() {
            bytes += data.len() as u64;
        }
    }
    if status.is_success() {
        Ok(bytes)
    } else {
        Err(Failure::Status(status.as_u16()))
    }
}

/// The human-readable report of `load` without `--json`.
pub fn render_text(r: &LoadReport) -> String {
    let l = &r.latency;
    let e = &r.errors;
    format!(
        "target       {url}\n\
         load         {conns} connections, {threads} threads, warm-up {warm:.1} s, measured {measured:.2} s, {mode}\n\
         requests     {reqs} ({rps:.0} req/s), {mib:.2} MiB body ({mibs:.2} MiB/s)\n\
         latency      p50 {p50} µs  p90 {p90} µs  p99 {p99} µs  p99.9 {p999} µs  max {max} µs\n\
         errors       {errors} (connect {c}, request {rq}, timeout {t}, status {s}, body {b})\n\
         generator    {cpu:.2} CPU s over the measured phase = {cores:.2} of {avail} CPUs \
         (user {user:.2} s, system {sys:.2} s)\n",
        url = r.url,
        conns = r.connections,
        threads = r.threads,
        mode = match r.rate {
            Some(rate) => format!("open loop at {rate} req/s (latency from the scheduled start)"),
            None => "closed loop".to_owned(),
        },
        warm = r.warmup_secs,
        measured = r.measured_secs,
        reqs = r.requests,
        rps = r.requests_per_sec,
        mib = r.body_bytes as f64 / (1024.0 * 1024.0),
        mibs = r.body_bytes_per_sec / (1024.0 * 1024.0),
        p50 = l.p50_us,
        p90 = l.p90_us,
        p99 = l.p99_us,
        p999 = l.p999_us,
        max = l.max_us,
        errors = r.errors_total,
        c = e.connect,
        rq = e.request,
        t = e.timeout,
        s = e.status,
        b = e.body,
        cpu = r.cpu.user_secs + r.cpu.system_secs,
        cores = r.cpu.cores_used,
        avail = r.cpu.cpus_available,
        user = r.cpu.user_secs,
        sys = r.cpu.system_secs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::Origin;

    fn args(url: &str) -> LoadArgs {
        LoadArgs {
            url: url.to_owned(),
            connections: 4,
            duration: 10.0,
            warmup: 0.0,
            max_requests: None,
            timeout: 5.0,
            threads: Some(1),
            json: false,
            headers: Vec::new(),
            cycle: 1,
            rate: None,
            ramp: 0.0,
        }
    }

    fn check_url(url: &str, expected: Result<(&str, &str), &str>) {
        let got = Target::parse(url).map(|t| (t.addr.to_string(), t.path.to_string()));
        match (got, expected) {
            (Ok((addr, path)), Ok((want_addr, want_path))) => {
                assert_eq!(
                    (addr.as_str(), path.as_str()),
                    (want_addr, want_path),
                    "{url}"
                );
            }
            (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{url}: {e}"),
            (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn urls_must_be_plain_http_to_loopback() {
        check_url("http://127.0.0.1:8080/", Ok(("127.0.0.1:8080", "/")));
        check_url("http://127.0.0.1:8080", Ok(("127.0.0.1:8080", "/")));
        check_url("http://localhost/a?b=c", Ok(("127.0.0.1:80", "/a?b=c")));
        check_url("http://[::1]:9000/x", Ok(("[::1]:9000", "/x")));
        check_url("http://127.1.2.3:1/", Ok(("127.1.2.3:1", "/")));
        check_url("https://127.0.0.1/", Err("must start with http://"));
        check_url("http://10.0.0.1/", Err("not a loopback address"));
        check_url(
            "http://example.com/",
            Err("must be an IP address or localhost"),
        );
        check_url("/just/a/path", Err("must start with http://"));
        check_url("not a url", Err("is not a URL"));
    }

    #[test]
    fn load_arguments_are_validated() {
        let err = |a: LoadArgs| LoadConfig::try_from(&a).err().map(|e| e.to_string());
        assert_eq!(err(args("http://127.0.0.1:1/")), None);
        let mut a = args("http://127.0.0.1:1/");
        a.connections = 0;
        assert!(err(a).is_some_and(|e| e.contains("--connections")));
        let mut a = args("http://127.0.0.1:1/");
        a.duration = 0.0;
        assert!(err(a).is_some_and(|e| e.contains("--duration")));
        let mut a = args("http://127.0.0.1:1/");
        a.warmup = -1.0;
        assert!(err(a).is_some_and(|e| e.contains("--warmup")));
        let mut a = args("http://127.0.0.1:1/");
        a.timeout = f64::NAN;
        assert!(err(a).is_some_and(|e| e.contains("--timeout")));
        let mut a = args("http://127.0.0.1:1/");
        a.max_requests = Some(0);
        assert!(err(a).is_some_and(|e| e.contains("--max-requests")));
        let mut a = args("http://127.0.0.1:1/");
        a.threads = Some(0);
        assert!(err(a).is_some_and(|e| e.contains("--threads")));
    }

    #[test]
    fn seconds_bounds() {
        assert_eq!(
            seconds("x", 1.5, false, 10.0).ok(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(seconds("x", 0.0, true, 10.0).ok(), Some(Duration::ZERO));
        assert!(seconds("x", 0.0, false, 10.0).is_err());
        assert!(seconds("x", 11.0, false, 10.0).is_err());
        assert!(seconds("x", f64::INFINITY, true, 10.0).is_err());
    }

    #[test]
    fn header_values_cycle_over_connections_and_requests() -> anyhow::Result<()> {
        let sets = HeaderSets::parse(&["x-api-key: key-{n}".into(), "x-static:  same ".into()], 5)?;
        assert_eq!(sets.variants(), 5);
        let value = |index, k| -> String {
            let headers = sets.for_request(index, k, 3);
            assert_eq!(headers[1].1, "same");
            headers[0].1.to_str().unwrap_or("?").to_owned()
        };
        // (index + k × connections) mod cycle: connection 1's requests 0, 1, 2.
        assert_eq!(
            [value(1, 0), value(1, 1), value(1, 2)],
            ["key-1", "key-4", "key-2"]
        );
        assert_eq!(value(0, 5), "key-0");
        // Without {n} there is one set; without headers none.
        assert_eq!(HeaderSets::parse(&["a: b".into()], 1000)?.variants(), 1);
        assert!(HeaderSets::parse(&[], 7)?.for_request(3, 3, 3).is_empty());
        let err = |specs: &[&str], cycle| {
            let specs: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
            HeaderSets::parse(&specs, cycle)
                .err()
                .map(|e| e.to_string())
        };
        assert!(err(&["no colon"], 1).is_some_and(|e| e.contains("not `name: value`")));
        assert!(err(&["bad name: x"], 1).is_some_and(|e| e.contains("invalid header name")));
        assert!(err(&["host: x"], 1).is_some_and(|e| e.contains("--url")));
        assert!(err(&["a: \u{7}{n}"], 2).is_some_and(|e| e.contains("invalid value")));
        assert!(err(&["a: b"], 0).is_some_and(|e| e.contains("--cycle")));
        Ok(())
    }

    #[test]
    fn open_loop_schedules_are_staggered_after_the_ramp() {
        let s = Schedule {
            ramp: Duration::from_secs(10),
            interval: Some(Duration::from_secs(5)),
            connections: 4,
        };
        assert_eq!(s.connect_offset(0), Duration::ZERO);
        assert_eq!(s.connect_offset(2), Duration::from_secs(5));
        assert_eq!(s.request_offset(0, 0), Some(Duration::from_secs(10)));
        assert_eq!(s.request_offset(1, 0), Some(Duration::from_millis(11_250)));
        assert_eq!(s.request_offset(1, 2), Some(Duration::from_millis(21_250)));
        let closed = Schedule {
            interval: None,
            ..s
        };
        assert_eq!(closed.request_offset(1, 2), None);
    }

    #[test]
    fn rate_and_ramp_are_validated() {
        let err = |a: LoadArgs| LoadConfig::try_from(&a).err().map(|e| e.to_string());
        let mut a = args("http://127.0.0.1:1/");
        a.ramp = 1.0;
        assert!(
            err(a).is_some_and(|e| e.contains("--ramp")),
            "the ramp exceeds the warm-up"
        );
        let mut a = args("http://127.0.0.1:1/");
        a.rate = Some(0.0);
        assert!(err(a).is_some_and(|e| e.contains("--rate")));
        let mut a = args("http://127.0.0.1:1/");
        a.rate = Some(0.0001);
        assert!(err(a).is_some_and(|e| e.contains("per hour")));
        let mut a = args("http://127.0.0.1:1/");
        a.warmup = 2.0;
        a.ramp = 1.0;
        a.rate = Some(8.0);
        let config = LoadConfig::try_from(&a).ok();
        assert_eq!(
            config.map(|c| c.schedule.interval),
            Some(Some(Duration::from_millis(500))),
            "4 connections at 8 req/s: one request each every 500 ms"
        );
    }

    /// An open-loop run with headers against an in-process origin: the offered rate is what
    /// is measured, every connection opened once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_load_against_an_in_process_origin() -> anyhow::Result<()> {
        let origin = Origin::bind(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            16,
            crate::origin::ReplyHeaders::default(),
        )
        .await?;
        let addr = origin.local_addr()?;
        let server = tokio::spawn(origin.serve_until(tokio::time::sleep(Duration::from_secs(20))));
        let mut a = args(&format!("http://{addr}/"));
        a.connections = 8;
        a.warmup = 0.3;
        a.ramp = 0.2;
        a.duration = 1.0;
        a.rate = Some(200.0);
        a.headers = vec!["x-user: u{n}".into()];
        a.cycle = 10;
        let report = timeout(Duration::from_secs(20), run(&LoadConfig::try_from(&a)?)).await??;
        server.abort();
        assert_eq!(report.errors, ErrorCounts::default(), "{report:#?}");
        assert_eq!(report.connections_opened, 8);
        assert_eq!(report.rate, Some(200.0));
        assert_eq!(report.header_variants, 10);
        // 8 connections, one request each every 40 ms, a 1 s window: 25 each, however late
        // they are sent (the schedule, not the server or the machine, sets the count).
        assert!((195..=205).contains(&report.requests), "{report:#?}");
        assert!(render_text(&report).contains("open loop at 200 req/s"));
        Ok(())
    }

    /// The in-process end-to-end check: a real origin on 127.0.0.1:0, a real load run
    /// capped at 200 requests, all within a few seconds on loopback.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_against_an_in_process_origin() -> anyhow::Result<()> {
        const BODY: usize = 256;
        const REQUESTS: u64 = 200;
        let origin = Origin::bind(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            BODY,
            crate::origin::ReplyHeaders::default(),
        )
        .await?;
        let addr = origin.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(origin.serve_until(async {
            let _ = stopped.await;
        }));

        let mut load_args = args(&format!("http://{addr}/anything"));
        load_args.max_requests = Some(REQUESTS);
        let config = LoadConfig::try_from(&load_args)?;
        let report = timeout(Duration::from_secs(20), run(&config)).await??;

        let _ = stop.send(());
        timeout(Duration::from_secs(5), server).await???;

        assert_eq!(report.errors, ErrorCounts::default(), "{report:#?}");
        assert_eq!(report.requests, REQUESTS, "{report:#?}");
        assert_eq!(report.body_bytes, REQUESTS * BODY as u64);
        assert_eq!(report.connections_opened, 4);
        let l = &report.latency;
        assert_eq!(l.count, REQUESTS);
        assert!(l.min_us >= 1 && l.min_us <= l.p50_us, "{l:?}");
        assert!(
            l.p50_us <= l.p90_us && l.p90_us <= l.p99_us && l.p99_us <= l.p999_us,
            "{l:?}"
        );
        assert!(l.p999_us <= l.max_us && l.max_us < 5_000_000, "{l:?}");
        assert!(report.measured_secs > 0.0 && report.measured_secs < 20.0);
        assert!(report.requests_per_sec > 0.0);
        assert!(render_text(&report).contains("200 ("));
        let json = serde_json::to_string(&report)?;
        assert_eq!(serde_json::from_str::<LoadReport>(&json)?, report);
        Ok(())
    }
}
