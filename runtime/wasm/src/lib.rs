//! Cathedral's WebAssembly host: runs sandboxed components on the request
//! path — *filters* (the `cathedral:edge/filter` world: `on-request`,
//! `on-response`) and *handlers* (the `cathedral:edge/handler` world, i.e.
//! `wasi:http/proxy` plus our imports) — with hard limits. The only crate
//! that depends on wasmtime. The guest interface is `wit/` at the
//! repository root.
//!
//! # State, by lifetime
//!
//! * **Per process: [`WasmEngine`]** ([`WasmEngine::new`] with an
//!   [`EngineConfig`]). The wasmtime engine with the pooling allocator (on by
//!   default, sized by [`PoolingConfig`]) and epoch interruption, an epoch
//!   ticker thread (stops when the engine and every module are dropped), the
//!   `filter` and `handler` linkers, the compiled-artifact disk cache, and
//!   per-module-name counters that survive hot swaps.
//! * **Per activation: [`Module`]** ([`WasmEngine::load`], async: compiles
//!   on tokio's blocking pool, or reads a verified artifact from the cache).
//!   Holds the component's `InstancePre` and its [`ModuleSettings`] (CPU
//!   deadline, memory limit, wall timeout, config map, granted rate-limit
//!   policies). Cheap to clone; immutable; put it in the activation snapshot.
//! * **Per request: [`RequestEnv`]** (the [`ClientInfo`] and the route's
//!   [`Backends`]) and a fresh store and instance: per handler call, and per
//!   [`FilterInstance`] — one filter's hooks for one request, which run in
//!   one instance while the node keeps it (a cache hit), or each in its own
//!   after [`FilterInstance::release`] (before an origin fetch). Nothing
//!   leaks between requests or users.
//!
//! # Calling modules from the node (phase 2)
//!
//! ```text
//! // Once per process:
//! let engine = WasmEngine::new(EngineConfig {
//!     artifact_cache: Some(state_dir.join("wasm-cache")),
//!     ..EngineConfig::default()
//! })?;
//! // Once per module per activation (in the reload task, not a request):
//! let settings = ModuleSettings { config, rate_limits, ..ModuleSettings::default() };
//! let personalize = engine.load("personalize", bytes, settings).await?;
//! assert_eq!(personalize.kind(), ModuleKind::Filter);
//!
//! // Per request, after routing and native rate limits:
//! let env = RequestEnv::new(ClientInfo { ip, country, region, user_id });
//! // One FilterInstance per filter of the route:
//! let mut instance = FilterInstance::new(&filter, &env);
//! // Request filters, in route order, BEFORE the cache lookup:
//! let head = RequestHead::new(&parts, scheme, host);
//! match instance.on_request(head).await {
//!     Ok(RequestAction::Continue) => {}
//!     Ok(RequestAction::Edit(edit)) => { edit.apply(&mut parts); no_store |= edit.no_store; }
//!     Ok(RequestAction::Respond(response)) => return respond(response), // skip cache and origin
//!     Err(e) => match fail_policy { Closed => return status_503(), Open => {} }, // e.kind()
//! }
//! // ... cache lookup; a hit keeps the instances. On a miss, release them
//! // (`instance.release()`) before the origin, static content, or a handler:
//! let response = handler.handle(request, &env.clone().with_backends(route_backends)).await?;
//! // ... store per cache policy; then response filters, AFTER the cache:
//! let parts_view = ResponseParts { status, headers: &headers, body: body_if_route_wants_it };
//! match instance.on_response(head, parts_view).await {
//!     Ok(ResponseAction::Pass) => {}
//!     Ok(ResponseAction::Edit(edit)) => { edit.apply(&mut response_parts); /* swap body if Some */ }
//!     Err(e) => { /* fail policy */ }
//! }
//! ```
//!
//! # Limits
//!
//! * **CPU**: epoch interruption. Every [`EngineConfig::epoch_tick`] (1 ms)
//!   a running guest yields to the async runtime (so two runaway guests
//!   cannot stall a 2-thread node) and is charged for the time it ran; past
//!   [`ModuleSettings::cpu_deadline`] (50 ms) the call fails with
//!   [`ErrorKind::Timeout`]. Free when not hit: no per-instruction fuel.
//!   [`ModuleSettings::wall_timeout`] bounds the whole call as well.
//! * **Memory**: [`ModuleSettings::memory_limit`] (64 MiB) through a
//!   `ResourceLimiter`, within the pool's `max_memory_size`; an allocation
//!   failure the guest does not survive is [`ErrorKind::Oom`].
//! * **Stack**: [`EngineConfig::max_wasm_stack`] (512 KiB); overflow traps.
//! * **Instances**: the pool's `max_instances`; past it, [`ErrorKind::Busy`].
//! * **Output**: guest stdout/stderr is captured into `tracing` (target
//!   `cathedral::guest`, field `module`), at most
//!   [`EngineConfig::max_output_per_call`] bytes per call, and every log line
//!   (these and the `log` interface's) goes through a per-module token bucket
//!   ([`EngineConfig::log_rate`]).
//! * **Capabilities**: WASI `cli`/`io`/`clocks`/`random` only, empty
//!   environment and arguments, no preopened directories, no sockets;
//!   handlers add `wasi:http` with outgoing requests restricted to the
//!   route's [`Backends`] (everything else, loopback and admin included, gets
//!   `HTTP-request-denied`).
//!
//! # Failures and metrics
//!
//! Every call's failure is one [`Error`] whose [`ErrorKind`] (`trap`,
//! `timeout`, `oom`, `load`, `guest_error`, `busy`) drives the route's fail
//! policy. The crate has no metrics dependency: it **counts** every call and
//! failure itself, per module *name*, in counters the engine keeps across
//! activations ([`WasmEngine::module_stats`], [`Module::stats`]), and logs
//! failures (`warn`, with `module` and `kind`; at most 10 per second per
//! module, the rest counted in the next line). The node exports those
//! counters at scrape time as `cathedral_module_errors_total{module,kind}`
//! (so failures after a handler's response head, which never reach the
//! caller as an `Err`, are counted too) and shows
//! [`ModuleStatsSnapshot::consecutive_failures`] in `/readyz`. It must not
//! count the `Err`s it receives a second time.
//!
//! # Compiled artifacts
//!
//! With [`EngineConfig::artifact_cache`] set, compiled components are kept on
//! disk keyed by the component's blake3 and the engine's compatibility hash;
//! each file records its artifact's blake3, verified before the (unsafe)
//! deserialization; a mismatch is refused, counted
//! ([`EngineStats::cache_rejects`]) and recompiled.
//!
//! # Checking a component
//!
//! [`check_component`] (or [`WasmEngine::check`] on an existing engine)
//! reports whether a component fits `filter` or `handler` and otherwise
//! names the wrong import or export; its `Display` is what
//! `cathedral module check` prints.

mod artifact_cache;
mod check;
mod engine;
mod error;
mod filter;
mod filter_instance;
mod handler;
mod host;
mod module;
mod output;
mod settings;
mod state;
mod stats;

pub use check::{CheckReport, check_component};
pub use engine::WasmEngine;
pub use error::{Error, ErrorKind, Result};
pub use filter::{
    RequestAction, RequestEdit, RequestHead, ResponseAction, ResponseEdit, ResponseParts,
};
pub use filter_instance::FilterInstance;
pub use handler::HandlerBody;
pub use host::client_info::ClientInfo;
pub use host::config::ModuleConfig;
pub use host::http::{Backend, Backends, InvalidBackend};
pub use host::rate_limit::{RateLimitPolicy, RateLimits};
pub use module::{Module, ModuleKind, RequestEnv};
pub use settings::{EngineConfig, LogRate, ModuleSettings, PoolingConfig};
pub use stats::{EngineStats, ModuleStats, ModuleStatsSnapshot};
