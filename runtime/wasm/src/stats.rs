//! Counters: per module name ([`ModuleStats`], kept by the engine across
//! activations so they only ever grow) and per engine ([`EngineStats`]).
//! The node exports them as Prometheus metrics at scrape time; this crate
//! has no metrics dependency.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::error::ErrorKind;

/// Counters of one module name, shared by every load of that name in one
/// engine (so a hot swap does not reset them). Lock-free.
#[derive(Debug, Default)]
pub struct ModuleStats {
    calls: AtomicU64,
    instances: AtomicU64,
    failures: [AtomicU64; ErrorKind::ALL.len()],
    consecutive_failures: AtomicU64,
    log_lines: AtomicU64,
    log_lines_dropped: AtomicU64,
    output_bytes_dropped: AtomicU64,
}

/// A copy of a [`ModuleStats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleStatsSnapshot {
    /// Calls made (filter hooks and handler requests), failed or not.
    pub calls: u64,
    /// Stores made for calls, each for one instance (a full pool refuses
    /// some): fewer than `calls` when both hooks of a filter ran in one
    /// instance.
    pub instances: u64,
    /// Failures by kind, in [`ErrorKind::ALL`] order (`failures[k.index()]`).
    failures: [u64; ErrorKind::ALL.len()],
    /// Failures since the last success: what `/readyz` shows for a module
    /// that keeps failing.
    pub consecutive_failures: u64,
    /// Log lines written (the `log` interface and captured output).
    pub log_lines: u64,
    /// Log lines dropped by the rate bound.
    pub log_lines_dropped: u64,
    /// Bytes of stdout/stderr dropped past the per-call cap.
    pub output_bytes_dropped: u64,
}

impl ModuleStatsSnapshot {
    /// Failures of `kind` so far.
    pub fn failures(&self, kind: ErrorKind) -> u64 {
        self.failures[kind.index()]
    }

    /// Every `(kind, count)`, zero counts included, for export as
    /// `cathedral_module_errors_total{module,kind}`.
    pub fn failures_by_kind(&self) -> impl Iterator<Item = (ErrorKind, u64)> + '_ {
        ErrorKind::ALL.iter().map(|&k| (k, self.failures(k)))
    }

    /// All failures, every kind.
    pub fn total_failures(&self) -> u64 {
        self.failures.iter().sum()
    }
}

impl ModuleStats {
    pub(crate) fn call(&self) {
        self.calls.fetch_add(1, Relaxed);
    }

    pub(crate) fn instance(&self) {
        self.instances.fetch_add(1, Relaxed);
    }

    pub(crate) fn success(&self) {
        self.consecutive_failures.store(0, Relaxed);
    }

    pub(crate) fn failure(&self, kind: ErrorKind) {
        self.failures[kind.index()].fetch_add(1, Relaxed);
        self.consecutive_failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn log_line(&self) {
        self.log_lines.fetch_add(1, Relaxed);
    }

    pub(crate) fn log_lines_dropped(&self, n: u64) {
        self.log_lines_dropped.fetch_add(n, Relaxed);
    }

    pub(crate) fn output_dropped(&self, bytes: u64) {
        self.output_bytes_dropped.fetch_add(bytes, Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> ModuleStatsSnapshot {
        ModuleStatsSnapshot {
            calls: self.calls.load(Relaxed),
            instances: self.instances.load(Relaxed),
            failures: std::array::from_fn(|i| self.failures[i].load(Relaxed)),
            consecutive_failures: self.consecutive_failures.load(Relaxed),
            log_lines: self.log_lines.load(Relaxed),
            log_lines_dropped: self.log_lines_dropped.load(Relaxed),
            output_bytes_dropped: self.output_bytes_dropped.load(Relaxed),
        }
    }
}

/// Counters of one engine: compilation and the artifact cache.
#[derive(Debug, Default)]
pub(crate) struct EngineCounters {
    pub(crate) compiles: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    pub(crate) cache_rejects: AtomicU64,
    pub(crate) cache_writes: AtomicU64,
    pub(crate) cache_errors: AtomicU64,
}

/// A copy of an engine's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineStats {
    /// Components compiled from source (cache misses and uncached loads).
    pub compiles: u64,
    /// Loads answered from the artifact cache (verified, not recompiled).
    pub cache_hits: u64,
    /// Cached artifacts refused because their recorded blake3 did not match
    /// their bytes (corrupt or tampered): recompiled instead.
    pub cache_rejects: u64,
    /// Artifacts written to the cache.
    pub cache_writes: u64,
    /// Cache reads or writes that failed with an I/O error (the module was
    /// compiled anyway).
    pub cache_errors: u64,
}

impl EngineCounters {
    pub(crate) fn snapshot(&self) -> EngineStats {
        EngineStats {
            compiles: self.compiles.load(Relaxed),
            cache_hits: self.cache_hits.load(Relaxed),
            cache_rejects: self.cache_rejects.load(Relaxed),
            cache_writes: self.cache_writes.load(Relaxed),
            cache_errors: self.cache_errors.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_by_kind_and_success_resets_the_streak() {
        let s = ModuleStats::default();
        s.call();
        s.failure(ErrorKind::Timeout);
        s.call();
        s.failure(ErrorKind::Trap);
        let snap = s.snapshot();
        assert_eq!(snap.calls, 2);
        assert_eq!(snap.failures(ErrorKind::Timeout), 1);
        assert_eq!(snap.failures(ErrorKind::Trap), 1);
        assert_eq!(snap.failures(ErrorKind::Oom), 0);
        assert_eq!(snap.total_failures(), 2);
        assert_eq!(snap.consecutive_failures, 2);
        s.success();
        assert_eq!(s.snapshot().consecutive_failures, 0);
        assert_eq!(
            s.snapshot().failures_by_kind().count(),
            ErrorKind::ALL.len()
        );
    }
}
