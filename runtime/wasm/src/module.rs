//! [`Module`]: a loaded component (its `InstancePre`, once per activation)
//! and its settings; each call builds a fresh store and instance, runs the
//! guest under its limits, and turns whatever happened into a value or an
//! [`Error`] of the right kind, counted and logged.

use std::fmt;
use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::engine::EngineInner;
use crate::error::{Error, Result};
use crate::filter::{RequestAction, RequestHead, ResponseAction, ResponseParts};
use crate::filter_instance::FilterInstance;
use crate::host::bindings::FilterPre;
use crate::host::client_info::ClientInfo;
use crate::host::http::{BackendHooks, Backends};
use crate::host::wasi;
use crate::output::{CallOutput, LogSink};
use crate::settings::ModuleSettings;
use crate::state::{CallContext, CpuBudget, CpuDeadline, MemoryLimiter, StoreState};
use crate::stats::{ModuleStats, ModuleStatsSnapshot};

/// Which world a component fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleKind {
    /// `cathedral:edge/filter`: `on-request` and `on-response`.
    Filter,
    /// `cathedral:edge/handler`: `wasi:http/incoming-handler`.
    Handler,
}

impl fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModuleKind::Filter => "filter",
            ModuleKind::Handler => "handler",
        })
    }
}

/// Per-request data for a call: who is asking and, for handlers, which
/// backends the route allows. Build it once per request; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RequestEnv {
    /// The client, as the node determined it.
    pub client: Arc<ClientInfo>,
    /// The backends a handler may send requests to (the route's).
    pub backends: Backends,
}

impl RequestEnv {
    /// An environment for `client`, with no backends.
    pub fn new(client: ClientInfo) -> Self {
        Self {
            client: Arc::new(client),
            backends: Backends::default(),
        }
    }

    /// The same, allowing `backends`.
    pub fn with_backends(mut self, backends: Backends) -> Self {
        self.backends = backends;
        self
    }
}

pub(crate) enum Pre {
    Filter(FilterPre<StoreState>),
    Handler(ProxyPre<StoreState>),
}

/// What one load produced, shared by every handle of the module.
pub(crate) struct Loaded {
    pub(crate) name: Arc<str>,
    pub(crate) kind: ModuleKind,
    pub(crate) pre: Pre,
    pub(crate) hash: blake3::Hash,
    pub(crate) engine: Arc<EngineInner>,
    pub(crate) stats: Arc<ModuleStats>,
    pub(crate) sink: Arc<LogSink>,
}

/// A loaded module: cheap to clone (two `Arc`s), `Send + Sync`. Keep one per
/// module per activation in the activation's snapshot; calls on it never
/// share state.
#[derive(Clone)]
pub struct Module {
    pub(crate) loaded: Arc<Loaded>,
    pub(crate) settings: Arc<ModuleSettings>,
}

impl Module {
    pub(crate) fn new(loaded: Arc<Loaded>, settings: ModuleSettings) -> Self {
        Self {
            loaded,
            settings: Arc::new(settings),
        }
    }

    /// The module's name (its label in logs and metrics).
    pub fn name(&self) -> &str {
        &self.loaded.name
    }

    /// Filter or handler.
    pub fn kind(&self) -> ModuleKind {
        self.loaded.kind
    }

    /// The blake3 of the component's bytes, hex.
    pub fn hash(&self) -> String {
        self.loaded.hash.to_hex().to_string()
    }

    /// Its settings.
    pub fn settings(&self) -> &ModuleSettings {
        &self.settings
    }

    /// The same compiled module with other settings (say, another route's
    /// config): no compilation, no new `InstancePre`.
    pub fn with_settings(&self, settings: ModuleSettings) -> Result<Self> {
        self.loaded
            .engine
            .check_settings(&self.loaded.name, &settings)?;
        Ok(Self::new(self.loaded.clone(), settings))
    }

    /// The counters of this module's name.
    pub fn stats(&self) -> ModuleStatsSnapshot {
        self.loaded.stats.snapshot()
    }

    /// Runs `on-request` in a fresh instance (a [`FilterInstance`] used for
    /// one hook).
    ///
    /// # Errors
    ///
    /// A trap, timeout, OOM or invalid answer, as an [`Error`] of that kind
    /// (already counted in [`Module::stats`] and logged).
    pub async fn on_request(
        &self,
        head: RequestHead<'_>,
        env: &RequestEnv,
    ) -> Result<RequestAction> {
        FilterInstance::new(self, env).on_request(head).await
    }

    /// Runs `on-response` in a fresh instance. `head` is the request as the
    /// origin saw it (after request filters' edits).
    ///
    /// # Errors
    ///
    /// As [`Module::on_request`].
    pub async fn on_response(
        &self,
        head: RequestHead<'_>,
        response: ResponseParts<'_>,
        env: &RequestEnv,
    ) -> Result<ResponseAction> {
        FilterInstance::new(self, env)
            .on_response(head, response)
            .await
    }

    /// The filter world's `InstancePre`, or the error for calling a handler
    /// as a filter.
    pub(crate) fn filter_pre(&self) -> Result<&FilterPre<StoreState>> {
        match &self.loaded.pre {
            Pre::Filter(pre) => Ok(pre),
            Pre::Handler(_) => Err(self.not_a(ModuleKind::Filter)),
        }
    }

    pub(crate) fn not_a(&self, kind: ModuleKind) -> Error {
        Error::GuestError {
            module: self.loaded.name.clone(),
            message: format!("called as a {kind}, but the module is a {}", self.kind()),
        }
    }

    /// A fresh store, for one call or for the hooks of one request. Each
    /// call on it starts with [`Call::begin`].
    pub(crate) fn call(&self, env: &RequestEnv) -> Call {
        let loaded = &self.loaded;
        let config = &loaded.engine.config;
        loaded.stats.instance();
        let output = CallOutput::new(loaded.sink.clone(), config.max_output_per_call);
        let state = StoreState {
            call: CallContext {
                settings: self.settings.clone(),
                client: env.client.clone(),
                sink: loaded.sink.clone(),
            },
            wasi: wasi::context(&output),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: BackendHooks {
                module: loaded.name.clone(),
                backends: env.backends.clone(),
            },
            limiter: MemoryLimiter::new(self.settings.memory_limit),
            cpu: CpuBudget::new(self.settings.cpu_deadline, config.epoch_tick),
            output,
        };
        let mut store = Store::new(&loaded.engine.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|mut cx| cx.data_mut().cpu.on_tick());
        Call {
            module: self.clone(),
            store,
        }
    }
}

/// A store in use: one call, or the hooks of one request. What to report
/// at the end of each call.
pub(crate) struct Call {
    pub(crate) module: Module,
    pub(crate) store: Store<StoreState>,
}

impl Call {
    /// Starts a call on this store: counts it, and gives it the whole CPU
    /// deadline (the deadline is per call, whether or not the store served
    /// an earlier hook).
    pub(crate) fn begin(&mut self) {
        self.module.loaded.stats.call();
        let settings = &self.module.settings;
        let tick = self.module.loaded.engine.config.epoch_tick;
        let state = self.store.data_mut();
        state.cpu = CpuBudget::new(settings.cpu_deadline, tick);
        state.limiter.hit = false;
        self.store.set_epoch_deadline(1);
    }

    /// Runs `f` on the store under the wall-clock timeout, and classifies a
    /// failure by what the store saw (CPU deadline, memory limit) and the
    /// error itself.
    pub(crate) async fn run<R>(
        &mut self,
        f: impl AsyncFnOnce(&mut Store<StoreState>) -> wasmtime::Result<R>,
    ) -> Result<R> {
        let wall = self.module.settings.wall_timeout;
        match tokio::time::timeout(wall, f(&mut self.store)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.classify(&e)),
            Err(_elapsed) => Err(Error::Timeout {
                module: self.module.loaded.name.clone(),
                limit: wall,
                wall: true,
            }),
        }
    }

    /// What a wasmtime error means for this call.
    fn classify(&self, e: &wasmtime::Error) -> Error {
        let module = self.module.loaded.name.clone();
        let state = self.store.data();
        if state.cpu.exhausted || e.is::<CpuDeadline>() {
            return Error::Timeout {
                module,
                limit: state.cpu.limit(),
                wall: false,
            };
        }
        if state.limiter.hit {
            return Error::Oom {
                module,
                limit: state.limiter.limit(),
            };
        }
        if let Some(busy) = e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
            return Error::Busy {
                module,
                reason: busy.to_string(),
            };
        }
        if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return Error::GuestError {
                module,
                message: format!("the guest called exit({})", exit.0),
            };
        }
        let mut message = match e.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{e:#}"),
        };
        if let Some(tail) = state.output.stderr_tail() {
            message.push_str("; guest stderr: ");
            message.push_str(&tail);
        }
        Error::Trap { module, message }
    }

    /// Flushes output, counts and logs the outcome of the call.
    pub(crate) fn finish<R>(&self, outcome: Result<R>) -> Result<R> {
        self.store.data().output.finish();
        report(&self.module, outcome.as_ref().err());
        outcome
    }
}

/// Counts a call's outcome and logs a failure (rate-bounded).
pub(crate) fn report(module: &Module, failure: Option<&Error>) {
    let stats = &module.loaded.stats;
    match failure {
        None => stats.success(),
        Some(e) => {
            stats.failure(e.kind());
            module.loaded.sink.failure(e);
        }
    }
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module")
            .field("name", &self.loaded.name)
            .field("kind", &self.loaded.kind)
            .field("hash", &self.hash())
            .field("settings", &self.settings)
            .finish()
    }
}
