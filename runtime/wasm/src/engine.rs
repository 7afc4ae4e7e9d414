//! [`WasmEngine`]: the per-process part — the wasmtime engine (pooling
//! allocator, epoch interruption), its epoch ticker, the two linkers, the
//! artifact cache, and per-module-name counters — and loading modules.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::artifact_cache::{ArtifactCache, Lookup};
use crate::error::{Error, Result};
use crate::host::bindings::FilterPre;
use crate::module::{Loaded, Module, ModuleKind, Pre};
use crate::output::LogSink;
use crate::settings::{EngineConfig, ModuleSettings};
use crate::state::StoreState;
use crate::stats::{EngineCounters, EngineStats, ModuleStats, ModuleStatsSnapshot};
use crate::{host, settings};

/// The export that makes a component a handler.
pub(crate) const HANDLER_EXPORT: &str = "wasi:http/incoming-handler@0.2";
/// The exports that make a component a filter.
pub(crate) const FILTER_EXPORTS: [&str; 2] = ["on-request", "on-response"];

/// The WebAssembly engine: one per process, shared by every activation.
/// Cheap to clone. The epoch ticker thread stops when the last clone (and
/// the last [`Module`] loaded by it) is dropped.
#[derive(Clone)]
pub struct WasmEngine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub(crate) engine: Engine,
    pub(crate) config: EngineConfig,
    filter_linker: Linker<StoreState>,
    handler_linker: Linker<StoreState>,
    cache: Option<ArtifactCache>,
    counters: EngineCounters,
    /// Per module name, across activations: counters and log sink.
    names: Mutex<Names>,
}

/// Per module name: its counters and log sink.
type Names = HashMap<Arc<str>, (Arc<ModuleStats>, Arc<LogSink>)>;

impl WasmEngine {
    /// Builds the engine, reserves the instance pool and starts the epoch
    /// ticker. Fails if the pool cannot be reserved or the artifact cache
    /// directory cannot be created.
    pub fn new(config: EngineConfig) -> Result<Self> {
        let engine_error = |reason: String| Error::Engine { reason };
        if config.epoch_tick.is_zero() {
            return Err(engine_error("epoch_tick must be positive".into()));
        }
        let mut wt = Config::new();
        wt.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            .async_stack_size(config.async_stack_size)
            .parallel_compilation(true);
        if let Some(pool) = &config.pooling {
            wt.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(pool)));
        }
        let engine = Engine::new(&wt).map_err(|e| engine_error(format!("{e:#}")))?;
        let filter_linker =
            host::filter_linker(&engine).map_err(|e| engine_error(format!("{e:#}")))?;
        let handler_linker =
            host::handler_linker(&engine).map_err(|e| engine_error(format!("{e:#}")))?;
        let cache = match &config.artifact_cache {
            Some(root) => Some(
                ArtifactCache::new(root, &engine)
                    .map_err(|e| engine_error(format!("artifact cache {}: {e}", root.display())))?,
            ),
            None => None,
        };
        start_ticker(&engine, config.epoch_tick).map_err(|e| engine_error(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(EngineInner {
                engine,
                config,
                filter_linker,
                handler_linker,
                cache,
                counters: EngineCounters::default(),
                names: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Compilation and artifact-cache counters.
    pub fn stats(&self) -> EngineStats {
        self.inner.counters.snapshot()
    }

    /// The counters of every module name loaded so far (they survive hot
    /// swaps), sorted by name: what the node exports as
    /// `cathedral_module_errors_total{module,kind}` and friends.
    pub fn module_stats(&self) -> Vec<(String, ModuleStatsSnapshot)> {
        let names = self.inner.lock_names();
        let mut all: Vec<_> = names
            .iter()
            .map(|(name, (stats, _))| (name.to_string(), stats.snapshot()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Compiles (or fetches from the artifact cache) and links a component,
    /// once per module per activation. Compilation runs on tokio's blocking
    /// pool, never on an async worker. The component must fit the `filter`
    /// or the `handler` world; [`Module::kind`] says which.
    ///
    /// # Errors
    ///
    /// [`Error::Load`] naming what is wrong: not a component, an import the
    /// host does not provide, a missing or mistyped export, a memory limit
    /// above the pool's.
    pub async fn load(
        &self,
        name: &str,
        bytes: impl Into<Bytes>,
        settings: ModuleSettings,
    ) -> Result<Module> {
        let name: Arc<str> = Arc::from(name);
        let bytes = bytes.into();
        self.inner.check_settings(&name, &settings)?;
        let hash = blake3::hash(&bytes);
        let component = self.compile(&name, bytes, hash).await?;
        let (kind, pre) = self.link(&name, &component)?;
        let (stats, sink) = self.inner.name_state(&name);
        Ok(Module::new(
            Arc::new(Loaded {
                name,
                kind,
                pre,
                hash,
                engine: self.inner.clone(),
                stats,
                sink,
            }),
            settings,
        ))
    }

    /// Compiles `bytes`, through the artifact cache when there is one.
    pub(crate) async fn compile(
        &self,
        name: &Arc<str>,
        bytes: Bytes,
        hash: blake3::Hash,
    ) -> Result<Component> {
        let inner = self.inner.clone();
        let module = name.clone();
        tokio::task::spawn_blocking(move || inner.compile_blocking(&module, &bytes, &hash))
            .await
            .map_err(|e| Error::load(name, format!("compilation task failed: {e}")))?
    }

    /// Links `component` as a filter or a handler.
    fn link(&self, name: &Arc<str>, component: &Component) -> Result<(ModuleKind, Pre)> {
        let exports = export_names(&self.inner.engine, component);
        let is_handler = exports.iter().any(|e| e.starts_with(HANDLER_EXPORT));
        let is_filter = exports.iter().any(|e| FILTER_EXPORTS.contains(&e.as_str()));
        let filter = || self.inner.link_filter(component);
        let handler = || self.inner.link_handler(component);
        match (is_filter, is_handler) {
            (true, _) => filter()
                .map(|pre| (ModuleKind::Filter, Pre::Filter(pre)))
                .map_err(|e| Error::load(name, format!("not a valid filter: {e}"))),
            (false, true) => handler()
                .map(|pre| (ModuleKind::Handler, Pre::Handler(pre)))
                .map_err(|e| Error::load(name, format!("not a valid handler: {e}"))),
            (false, false) => Err(Error::load(
                name,
                format!(
                    "exports neither `on-request`/`on-response` (a filter) nor \
                     `{HANDLER_EXPORT}.x` (a handler); it exports: [{}]",
                    exports.join(", ")
                ),
            )),
        }
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn link_filter(&self, component: &Component) -> Result<(), String> {
        self.inner.link_filter(component).map(drop)
    }

    pub(crate) fn link_handler(&self, component: &Component) -> Result<(), String> {
        self.inner.link_handler(component).map(drop)
    }
}

impl EngineInner {
    fn lock_names(&self) -> std::sync::MutexGuard<'_, Names> {
        // Inserting into a map cannot leave it half-updated.
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn name_state(&self, name: &Arc<str>) -> (Arc<ModuleStats>, Arc<LogSink>) {
        let mut names = self.lock_names();
        let (stats, sink) = names.entry(name.clone()).or_insert_with(|| {
            let stats = Arc::new(ModuleStats::default());
            let sink = Arc::new(LogSink::new(name.clone(), stats.clone(), &self.config));
            (stats, sink)
        });
        (stats.clone(), sink.clone())
    }

    pub(crate) fn check_settings(&self, name: &Arc<str>, settings: &ModuleSettings) -> Result<()> {
        if let Some(pool) = &self.config.pooling
            && settings.memory_limit > pool.max_memory_size
        {
            return Err(Error::load(
                name,
                format!(
                    "memory limit {} bytes is above the engine's pooling max_memory_size of {} bytes",
                    settings.memory_limit, pool.max_memory_size
                ),
            ));
        }
        if settings.cpu_deadline.is_zero() || settings.wall_timeout.is_zero() {
            return Err(Error::load(
                name,
                "cpu_deadline and wall_timeout must be positive",
            ));
        }
        Ok(())
    }

    fn link_filter(&self, component: &Component) -> Result<FilterPre<StoreState>, String> {
        let pre = self.instantiate_pre(&self.filter_linker, component)?;
        FilterPre::new(pre).map_err(|e| format!("{e:#}"))
    }

    fn link_handler(&self, component: &Component) -> Result<ProxyPre<StoreState>, String> {
        let pre = self.instantiate_pre(&self.handler_linker, component)?;
        ProxyPre::new(pre).map_err(|e| format!("{e:#}"))
    }

    fn instantiate_pre(
        &self,
        linker: &Linker<StoreState>,
        component: &Component,
    ) -> Result<InstancePre<StoreState>, String> {
        // wasmtime's message names the import ("component imports instance
        // `x`, but a matching implementation was not found in the linker")
        // and, in its chain, the mismatching item.
        linker
            .instantiate_pre(component)
            .map_err(|e| format!("{e:#}"))
    }

    /// Compiles on the current (blocking) thread, through the cache.
    fn compile_blocking(
        &self,
        name: &Arc<str>,
        bytes: &[u8],
        hash: &blake3::Hash,
    ) -> Result<Component> {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(cache) = &self.cache {
            match cache.load(hash) {
                Ok(Lookup::Hit(artifact)) => match deserialize(&self.engine, &artifact) {
                    Ok(component) => {
                        self.counters.cache_hits.fetch_add(1, Relaxed);
                        return Ok(component);
                    }
                    Err(e) => {
                        self.counters.cache_rejects.fetch_add(1, Relaxed);
                        cache.remove(hash);
                        tracing::warn!(module = %name, error = %e, "cached artifact refused by the engine; recompiling");
                    }
                },
                Ok(Lookup::Rejected(reason)) => {
                    self.counters.cache_rejects.fetch_add(1, Relaxed);
                    tracing::warn!(
                        module = %name,
                        path = %cache.path(hash).display(),
                        reason,
                        "cached artifact failed verification; recompiling"
                    );
                }
                Ok(Lookup::Miss) => {}
                Err(e) => {
                    self.counters.cache_errors.fetch_add(1, Relaxed);
                    tracing::warn!(module = %name, error = %e, "artifact cache read failed");
                }
            }
        }
        let component =
            Component::new(&self.engine, bytes).map_err(|e| Error::load(name, format!("{e:#}")))?;
        self.counters.compiles.fetch_add(1, Relaxed);
        if let Some(cache) = &self.cache {
            let written = component
                .serialize()
                .map_err(|e| io_error(format!("{e:#}")))
                .and_then(|artifact| cache.store(hash, &artifact));
            match written {
                Ok(()) => {
                    self.counters.cache_writes.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    self.counters.cache_errors.fetch_add(1, Relaxed);
                    tracing::warn!(module = %name, error = %e, "artifact cache write failed");
                }
            }
        }
        Ok(component)
    }
}

fn io_error(message: String) -> std::io::Error {
    std::io::Error::other(message)
}

/// Loads a verified artifact.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `Component::deserialize` requires bytes produced by
    // `Component::serialize` of a compatible engine, unmodified. The artifact
    // cache keeps one directory per engine compatibility hash, and `artifact`
    // hashed to the blake3 recorded when this process (or an earlier one with
    // the same engine) serialized it (see `artifact_cache.rs`).
    unsafe { Component::deserialize(engine, artifact) }
}

/// The component's export names.
pub(crate) fn export_names(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// The component's import names.
pub(crate) fn import_names(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// The pooling allocator's configuration.
fn pooling(p: &settings::PoolingConfig) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    let instances = p.max_instances.max(1);
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(p.max_core_instances_per_component))
        .max_core_instances_per_component(p.max_core_instances_per_component)
        .max_memories_per_component(p.max_memories_per_component)
        .max_tables_per_component(p.max_tables_per_component)
        .total_memories(instances.saturating_mul(p.max_memories_per_component.min(2)))
        .total_tables(instances.saturating_mul(p.max_tables_per_component.min(4)))
        .total_stacks(instances)
        .max_memory_size(p.max_memory_size)
        .table_elements(p.table_elements)
        .linear_memory_keep_resident(p.memory_keep_resident)
        .table_keep_resident(p.table_keep_resident)
        .pagemap_scan(if p.pagemap_scan {
            Enabled::Auto
        } else {
            Enabled::No
        });
    pool
}

/// Increments the engine's epoch every `tick` until the engine is dropped.
fn start_ticker(engine: &Engine, tick: Duration) -> std::io::Result<()> {
    let weak = engine.weak();
    thread::Builder::new()
        .name("cathedral-wasm-epoch".into())
        .spawn(move || {
            loop {
                thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .map(drop)
}

impl fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WasmEngine")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_ticker_does_not_keep_the_engine_alive() {
        let engine = WasmEngine::new(EngineConfig {
            pooling: None,
            ..EngineConfig::default()
        })
        .expect("engine");
        let weak = engine.inner.engine.weak();
        drop(engine);
        // The ticker holds a strong reference only while it increments the
        // epoch, for an instant each tick.
        for _ in 0..100_000 {
            if weak.upgrade().is_none() {
                return;
            }
            thread::yield_now();
        }
        panic!("the engine is still alive after the last handle was dropped");
    }
}
