//! The knobs: [`EngineConfig`] and [`PoolingConfig`] (per process) and
//! [`ModuleSettings`] (per module per activation), with their defaults.

use std::path::PathBuf;
use std::time::Duration;

use crate::host::config::ModuleConfig;
use crate::host::rate_limit::RateLimits;

/// 1 KiB.
const KIB: usize = 1024;
/// 1 MiB.
const MIB: usize = 1024 * 1024;

/// How the process-wide [`crate::WasmEngine`] is built. `Default` gives the
/// production settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The pooling instance allocator (`Some` by default): every instance's
    /// memories, tables and stacks come from slots reserved up front, so
    /// instantiation is a few microseconds and the number of concurrent
    /// instances is bounded. `None` allocates on demand (slower; for tools
    /// such as `cathedral module check`).
    pub pooling: Option<PoolingConfig>,
    /// The epoch tick: how often running guests are interrupted to yield to
    /// the async runtime and have their CPU time checked. The CPU deadline's
    /// resolution. Default 1 ms.
    pub epoch_tick: Duration,
    /// The most WebAssembly stack a call may use. Default 512 KiB.
    pub max_wasm_stack: usize,
    /// Size of each async (fiber) stack guests run on: `max_wasm_stack` plus
    /// room for host calls. Default 2 MiB.
    pub async_stack_size: usize,
    /// Where compiled artifacts are cached across restarts, or `None` to
    /// compile every module on every load. Default `None`; the node sets it.
    pub artifact_cache: Option<PathBuf>,
    /// Bound on a module's log lines (the `log` interface plus captured
    /// stdout/stderr lines), shared by all its instances.
    pub log_rate: LogRate,
    /// The most bytes of stdout and stderr captured per call; the rest is
    /// accepted and dropped (and counted). Default 64 KiB.
    pub max_output_per_call: usize,
    /// Longer log messages and output lines are truncated. Default 4 KiB.
    pub max_log_line: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            pooling: Some(PoolingConfig::default()),
            epoch_tick: Duration::from_millis(1),
            max_wasm_stack: 512 * KIB,
            async_stack_size: 2 * MIB,
            artifact_cache: None,
            log_rate: LogRate::default(),
            max_output_per_call: 64 * KIB,
            max_log_line: 4 * KIB,
        }
    }
}

/// Slots of the pooling allocator. Virtual address space is reserved for
/// every slot up front (about 4 GiB per memory slot on 64-bit hosts, which
/// costs nothing until touched); physical memory is used only by live
/// instances.
#[derive(Debug, Clone)]
pub struct PoolingConfig {
    /// Concurrent component instances (one per in-flight filter call or
    /// handler request). An instantiation past this fails with
    /// [`crate::ErrorKind::Busy`]. Default 1000.
    pub max_instances: u32,
    /// Core module instances a component may contain. Default 16.
    pub max_core_instances_per_component: u32,
    /// Linear memories a component may contain. Default 2.
    pub max_memories_per_component: u32,
    /// Tables a component may contain. Default 8.
    pub max_tables_per_component: u32,
    /// The largest any linear memory may grow; every module's
    /// [`ModuleSettings::memory_limit`] must fit. Default 64 MiB.
    pub max_memory_size: usize,
    /// The most elements a table may hold. Default 20,000.
    pub table_elements: usize,
    /// Bytes of each memory slot reset in place (rather than returned to the
    /// OS with `madvise`) when an instance ends, so the next instance of the
    /// slot takes no page faults. With `pagemap_scan` only the pages a guest
    /// dirtied count, so this bounds the resident memory each warm slot
    /// keeps. Default 1 MiB.
    pub memory_keep_resident: usize,
    /// The same for each table slot. Default 64 KiB.
    pub table_keep_resident: usize,
    /// Use Linux's `PAGEMAP_SCAN` (6.7+) to find the pages to reset, when the
    /// kernel has it. Default `true`.
    pub pagemap_scan: bool,
}

impl Default for PoolingConfig {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            max_core_instances_per_component: 16,
            max_memories_per_component: 2,
            max_tables_per_component: 8,
            max_memory_size: 64 * MIB,
            table_elements: 20_000,
            memory_keep_resident: MIB,
            table_keep_resident: 64 * KIB,
            pagemap_scan: true,
        }
    }
}

/// A token bucket over a module's log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRate {
    /// Lines per second, sustained. Default 100.
    pub per_second: u32,
    /// Lines at once. Default 200.
    pub burst: u32,
}

impl Default for LogRate {
    fn default() -> Self {
        Self {
            per_second: 100,
            burst: 200,
        }
    }
}

/// One module's limits and capabilities in one activation. `Default` gives
/// the defaults of the issue: 50 ms CPU, 64 MiB memory, no config, no rate
/// limit policies.
#[derive(Debug, Clone)]
pub struct ModuleSettings {
    /// CPU time one call may use (guest execution, not time spent waiting on
    /// the host). Past it the call fails with [`crate::ErrorKind::Timeout`].
    /// Measured in epoch ticks, so it is accurate to about one tick.
    /// Default 50 ms.
    pub cpu_deadline: Duration,
    /// Wall-clock bound on one call, including time suspended (and, for
    /// handlers, waiting on backends and streaming the body). Default 30 s.
    pub wall_timeout: Duration,
    /// The most linear memory an instance may have. Default 64 MiB.
    pub memory_limit: usize,
    /// What the `config` interface returns.
    pub config: ModuleConfig,
    /// The rate-limit policies the `rate-limit` interface may use.
    pub rate_limits: RateLimits,
}

impl Default for ModuleSettings {
    fn default() -> Self {
        Self {
            cpu_deadline: Duration::from_millis(50),
            wall_timeout: Duration::from_secs(30),
            memory_limit: 64 * MIB,
            config: ModuleConfig::default(),
            rate_limits: RateLimits::default(),
        }
    }
}
