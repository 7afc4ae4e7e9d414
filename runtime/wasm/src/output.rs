//! Guest output into the node's logs: [`LogSink`] (per module name: the
//! rate bound and the `tracing` events) and [`CallOutput`] (per call: the
//! captured stdout/stderr, cut into lines, capped in bytes).
//!
//! Events go to target `cathedral::guest` with a `module` field; stdout lines
//! at `info`, stderr lines at `warn`, `log` interface lines at their level.
//! A module's lines beyond its [`LogRate`] are dropped and counted, and the
//! next line admitted is preceded by one warning saying how many were lost.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::settings::{EngineConfig, LogRate};
use crate::stats::ModuleStats;

/// How many trailing stderr lines a trap message quotes.
const TAIL_LINES: usize = 3;
/// The longest stderr tail quoted, in bytes.
const TAIL_BYTES: usize = 512;

/// A log line's severity (the WIT `log.level`, plus the streams' levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Log,
    Stdout,
    Stderr,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Log => "log",
            Source::Stdout => "stdout",
            Source::Stderr => "stderr",
        }
    }
}

/// One module name's way into the logs, shared by all its instances.
#[derive(Debug)]
pub(crate) struct LogSink {
    module: Arc<str>,
    stats: Arc<ModuleStats>,
    bucket: Gcra,
    /// Lines dropped since the last line admitted.
    unreported: AtomicU64,
    max_line: usize,
    /// The host's own warnings about this module's failed calls: counted
    /// always, logged at most [`FAILURE_LOG_RATE`].
    failures: Gcra,
    unreported_failures: AtomicU64,
}

/// The most "module call failed" warnings per module: 10 per second, bursts
/// of 20. (Every failure is counted in [`ModuleStats`] regardless.)
const FAILURE_LOG_RATE: LogRate = LogRate {
    per_second: 10,
    burst: 20,
};

impl LogSink {
    pub(crate) fn new(module: Arc<str>, stats: Arc<ModuleStats>, config: &EngineConfig) -> Self {
        Self {
            module,
            stats,
            bucket: Gcra::new(config.log_rate),
            unreported: AtomicU64::new(0),
            max_line: config.max_log_line,
            failures: Gcra::new(FAILURE_LOG_RATE),
            unreported_failures: AtomicU64::new(0),
        }
    }

    /// Logs a failed call (`warn`, with `module` and `kind`), rate-bounded:
    /// a module failing on every request must not flood the logs.
    pub(crate) fn failure(&self, error: &crate::Error) {
        if !self.failures.admit() {
            self.unreported_failures.fetch_add(1, Relaxed);
            return;
        }
        let unlogged = self.unreported_failures.swap(0, Relaxed);
        tracing::warn!(
            module = %self.module,
            kind = error.kind().as_str(),
            error = %error,
            unlogged_failures_before = unlogged,
            "module call failed"
        );
    }

    /// Logs one line, unless the module is over its rate.
    pub(crate) fn emit(&self, level: Level, source: Source, line: &str) {
        if !self.bucket.admit() {
            self.unreported.fetch_add(1, Relaxed);
            self.stats.log_lines_dropped(1);
            return;
        }
        let dropped = self.unreported.swap(0, Relaxed);
        if dropped > 0 {
            tracing::warn!(
                target: "cathedral::guest",
                module = %self.module,
                dropped,
                "guest log lines dropped by the rate bound"
            );
        }
        self.stats.log_line();
        let line = truncate(line, self.max_line);
        let module = &*self.module;
        let source = source.as_str();
        match level {
            Level::Trace => tracing::trace!(target: "cathedral::guest", module, source, "{line}"),
            Level::Debug => tracing::debug!(target: "cathedral::guest", module, source, "{line}"),
            Level::Info => tracing::info!(target: "cathedral::guest", module, source, "{line}"),
            Level::Warn => tracing::warn!(target: "cathedral::guest", module, source, "{line}"),
            Level::Error => tracing::error!(target: "cathedral::guest", module, source, "{line}"),
        }
    }
}

/// The longest prefix of `s` within `max` bytes, on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A lock-free GCRA token bucket: admits `burst` at once and `per_second`
/// sustained.
#[derive(Debug)]
struct Gcra {
    base: Instant,
    /// Theoretical arrival time, nanoseconds since `base`.
    tat: AtomicU64,
    interval: u64,
    tolerance: u64,
}

impl Gcra {
    fn new(rate: LogRate) -> Self {
        let interval = 1_000_000_000 / u64::from(rate.per_second.max(1));
        Self {
            base: Instant::now(),
            tat: AtomicU64::new(0),
            interval,
            tolerance: interval.saturating_mul(u64::from(rate.burst.max(1)) - 1),
        }
    }

    fn admit(&self) -> bool {
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > self.tolerance {
                return false;
            }
            match self.tat.compare_exchange_weak(
                tat,
                start.saturating_add(self.interval),
                Relaxed,
                Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => tat = actual,
            }
        }
    }
}

/// One call's stdout and stderr: cut into lines for the [`LogSink`], at most
/// `cap` bytes in all; the rest is accepted and dropped.
#[derive(Debug)]
pub(crate) struct CallOutput {
    sink: Arc<LogSink>,
    state: Mutex<OutputState>,
}

#[derive(Debug, Default)]
struct OutputState {
    remaining: usize,
    dropped: u64,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// The last few stderr lines, for a trap message.
    tail: Vec<String>,
}

impl CallOutput {
    pub(crate) fn new(sink: Arc<LogSink>, cap: usize) -> Arc<Self> {
        Arc::new(Self {
            sink,
            state: Mutex::new(OutputState {
                remaining: cap,
                ..OutputState::default()
            }),
        })
    }

    /// The stream for the guest's stdout or stderr.
    pub(crate) fn stream(self: &Arc<Self>, source: Source) -> GuestStream {
        GuestStream {
            output: self.clone(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutputState> {
        // Every critical section leaves the state consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, source: Source, bytes: &[u8]) {
        let mut lines = Vec::new();
        {
            let mut state = self.lock();
            let taken = bytes.len().min(state.remaining);
            state.remaining -= taken;
            state.dropped += (bytes.len() - taken) as u64;
            let max_line = self.sink.max_line;
            let buffer = match source {
                Source::Stderr => &mut state.stderr,
                Source::Stdout | Source::Log => &mut state.stdout,
            };
            for &b in &bytes[..taken] {
                if b == b'\n' {
                    lines.push(String::from_utf8_lossy(buffer).into_owned());
                    buffer.clear();
                } else if buffer.len() < max_line {
                    buffer.push(b);
                }
            }
            if source == Source::Stderr {
                state.remember(&lines);
            }
        }
        for line in &lines {
            self.emit(source, line);
        }
    }

    fn emit(&self, source: Source, line: &str) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let level = if source == Source::Stderr {
            Level::Warn
        } else {
            Level::Info
        };
        self.sink.emit(level, source, line);
    }

    /// Logs what is left in the line buffers and counts dropped bytes. Call
    /// once the call is over.
    pub(crate) fn finish(&self) {
        let (stdout, stderr, dropped) = {
            let mut state = self.lock();
            let stdout = std::mem::take(&mut state.stdout);
            let stderr = std::mem::take(&mut state.stderr);
            if !stderr.is_empty() {
                let line = String::from_utf8_lossy(&stderr).into_owned();
                state.remember(std::slice::from_ref(&line));
            }
            (stdout, stderr, std::mem::take(&mut state.dropped))
        };
        for (source, rest) in [(Source::Stdout, stdout), (Source::Stderr, stderr)] {
            if !rest.is_empty() {
                self.emit(source, &String::from_utf8_lossy(&rest));
            }
        }
        if dropped > 0 {
            self.sink.stats.output_dropped(dropped);
            tracing::warn!(
                target: "cathedral::guest",
                module = %self.sink.module,
                dropped_bytes = dropped,
                "guest output past the per-call cap dropped"
            );
        }
    }

    /// The last stderr lines (e.g. a Rust panic message), joined, if any.
    pub(crate) fn stderr_tail(&self) -> Option<String> {
        let state = self.lock();
        if state.tail.is_empty() {
            return None;
        }
        let joined = state.tail.join(" ");
        Some(truncate(&joined, TAIL_BYTES).to_owned())
    }
}

impl OutputState {
    fn remember(&mut self, lines: &[String]) {
        for line in lines.iter().filter(|l| !l.trim().is_empty()) {
            if self.tail.len() == TAIL_LINES {
                self.tail.remove(0);
            }
            self.tail.push(truncate(line.trim(), TAIL_BYTES).to_owned());
        }
    }
}

/// The guest's stdout or stderr: always ready, never blocks, never fails.
#[derive(Debug, Clone)]
pub(crate) struct GuestStream {
    output: Arc<CallOutput>,
    source: Source,
}

/// What `check-write` grants; writes are accepted whatever the cap.
const WRITE_PERMIT: usize = 64 * 1024;

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestStream {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.output.write(self.source, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl AsyncWrite for GuestStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.output.write(self.source, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(per_second: u32, burst: u32) -> (Arc<LogSink>, Arc<ModuleStats>) {
        let stats = Arc::new(ModuleStats::default());
        let config = EngineConfig {
            log_rate: LogRate { per_second, burst },
            max_log_line: 8,
            ..EngineConfig::default()
        };
        let sink = Arc::new(LogSink::new(Arc::from("m"), stats.clone(), &config));
        (sink, stats)
    }

    #[test]
    fn rate_bound_admits_the_burst_then_drops() {
        let (sink, stats) = sink(1, 5);
        for _ in 0..20 {
            sink.emit(Level::Info, Source::Log, "x");
        }
        let snap = stats.snapshot();
        assert_eq!(snap.log_lines, 5);
        assert_eq!(snap.log_lines_dropped, 15);
    }

    #[test]
    fn failure_warnings_are_rate_bounded() {
        let (sink, _stats) = sink(1000, 1000);
        let e = crate::Error::guest(&Arc::from("m"), "bad");
        for _ in 0..100 {
            sink.failure(&e);
        }
        // A burst of 20 logged, the rest only counted (a second can hardly
        // pass in between, but allow for one more admission per 100 ms).
        let unlogged = sink.unreported_failures.load(Relaxed);
        assert!((75..=80).contains(&unlogged), "{unlogged}");
    }

    #[test]
    fn output_is_cut_into_lines_and_capped() {
        let (sink, stats) = sink(1000, 1000);
        let out = CallOutput::new(sink, 20);
        let mut stderr = out.stream(Source::Stderr);
        let mut stdout = out.stream(Source::Stdout);
        stdout
            .write(Bytes::from_static(b"one\ntwo\nthr"))
            .expect("never fails");
        stderr
            .write(Bytes::from_static(b"panicked at x\nboom\n"))
            .expect("never fails");
        stderr
            .write(Bytes::from_static(b"past the cap\n"))
            .expect("never fails");
        out.finish();
        let snap = stats.snapshot();
        // 20 bytes are taken: "one\ntwo\nthr" and "panicked " (its line
        // cut to 8 bytes); "one" and "two" are logged as they come, "thr"
        // and "panicked" by finish.
        assert_eq!(snap.log_lines, 4, "{snap:?}");
        assert_eq!(snap.output_bytes_dropped, 11 + 19 + 13 - 20);
        assert_eq!(out.stderr_tail().as_deref(), Some("panicked"));
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 8), "abc");
    }
}
