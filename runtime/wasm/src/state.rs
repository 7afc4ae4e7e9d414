//! Per-call state: the `T` of every `Store<T>` ([`StoreState`]), built
//! fresh for each call and dropped with it, so nothing a guest does outlives
//! its call. Holds the call's context (module, settings, client), WASI and
//! `wasi:http` contexts, the memory limiter and the CPU budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, UpdateDeadline};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::WasiHttpCtx;

use crate::host::client_info::ClientInfo;
use crate::host::http::BackendHooks;
use crate::output::{CallOutput, LogSink};
use crate::settings::ModuleSettings;

/// The most elements a table may grow to, whatever the guest asks.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// What a host interface needs to know about the call it serves.
pub(crate) struct CallContext {
    pub(crate) settings: Arc<ModuleSettings>,
    pub(crate) client: Arc<ClientInfo>,
    pub(crate) sink: Arc<LogSink>,
}

/// The data of one call's store.
pub(crate) struct StoreState {
    pub(crate) call: CallContext,
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) http: WasiHttpCtx,
    pub(crate) hooks: BackendHooks,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) cpu: CpuBudget,
    pub(crate) output: Arc<CallOutput>,
}

/// Caps linear memory at the module's limit and notes when a guest hit it,
/// so that the trap that usually follows (a Rust allocation failure aborts)
/// is reported as `oom`.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit: usize,
    pub(crate) hit: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: usize) -> Self {
        Self { limit, hit: false }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.hit = true;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|max| desired <= max))
    }
}

/// The error an epoch callback returns when a guest has used up its CPU
/// deadline.
#[derive(Debug, thiserror::Error)]
#[error("CPU deadline exceeded")]
pub(crate) struct CpuDeadline;

/// A guest's CPU time, charged at each epoch tick that finds it running.
///
/// Each tick the guest yields to the async runtime (so runaway guests
/// cannot stall a worker thread) and is charged the time it ran since it
/// last resumed, at most one tick: time spent suspended — waiting for a
/// worker, or in an async host call such as an outgoing request — is not
/// CPU time. When the charge reaches the deadline the call traps with
/// [`CpuDeadline`].
#[derive(Debug)]
pub(crate) struct CpuBudget {
    limit: Duration,
    tick: Duration,
    used: Duration,
    origin: Instant,
    /// When the current run slice began, as nanoseconds since `origin`; the
    /// yield future stores the time the guest resumed.
    slice_start: Option<Arc<AtomicU64>>,
    pub(crate) exhausted: bool,
}

impl CpuBudget {
    pub(crate) fn new(limit: Duration, tick: Duration) -> Self {
        Self {
            limit,
            tick,
            used: Duration::ZERO,
            origin: Instant::now(),
            slice_start: None,
            exhausted: false,
        }
    }

    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// The epoch callback: charge, then yield or stop.
    pub(crate) fn on_tick(&mut self) -> wasmtime::Result<UpdateDeadline> {
        let now = self.origin.elapsed();
        let start = self
            .slice_start
            .as_ref()
            .map_or(Duration::ZERO, |s| Duration::from_nanos(s.load(Relaxed)));
        self.used += now.saturating_sub(start).min(self.tick);
        if self.used >= self.limit {
            self.exhausted = true;
            return Err(wasmtime::Error::new(CpuDeadline));
        }
        let cell = self
            .slice_start
            .get_or_insert_with(|| Arc::new(AtomicU64::new(0)))
            .clone();
        cell.store(nanos(now), Relaxed);
        let origin = self.origin;
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                tokio::task::yield_now().await;
                cell.store(nanos(origin.elapsed()), Relaxed);
            }),
        ))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limiter_refuses_past_the_limit_and_remembers() {
        let mut l = MemoryLimiter::new(1 << 20);
        assert!(l.memory_growing(0, 1 << 20, None).expect("no error"));
        assert!(!l.hit);
        assert!(!l.memory_growing(1 << 20, 2 << 20, None).expect("no error"));
        assert!(l.hit);
        assert!(l.table_growing(0, 10, Some(20)).expect("no error"));
        assert!(!l.table_growing(0, 30, Some(20)).expect("no error"));
        assert!(
            !l.table_growing(0, MAX_TABLE_ELEMENTS + 1, None)
                .expect("no error")
        );
    }

    #[test]
    fn cpu_budget_charges_at_most_a_tick_per_callback() {
        // Every callback finds the current slice 10 s old (started at the
        // origin), yet charges one tick: a 3-tick budget lasts exactly three
        // callbacks.
        let mut b = CpuBudget::new(Duration::from_millis(3), Duration::from_millis(1));
        b.origin -= Duration::from_secs(10);
        for _ in 0..2 {
            assert!(b.on_tick().is_ok());
            b.slice_start
                .as_ref()
                .expect("set by on_tick")
                .store(0, Relaxed);
        }
        assert!(!b.exhausted);
        assert!(b.on_tick().is_err());
        assert!(b.exhausted);
    }
}
