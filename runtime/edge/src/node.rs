//! Starting, reloading and stopping a node.
//!
//! State has three lifetimes: built once per process ([`Shared`]: metrics,
//! limits, listeners), once per activation (`Active`: routes, upstream
//! clients, static sites) and once per request (`RequestCtx`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use cathedral_cache::{Cache, CacheConfig, Coalescer, Integrity, SystemClock};
use cathedral_config::{
    Bootstrap, CacheSettings, Certificate, IntegrityCheck, Limits, WasmSettings,
};
use cathedral_wasm::{EngineConfig, PoolingConfig, WasmEngine};
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

use crate::active::{Active, BuildCtx};
use crate::admin;
use crate::bundles::BundleManager;
use crate::conn::{self, Listener};
use crate::error::{Error, Result};
use crate::files::Loaded;
use crate::geoip::GeoIp;
use crate::metrics::{Metrics, ReloadLabel, RouteMetrics};
use crate::tls::{self, CertResolver};

/// Where the activated configuration comes from on reload: local files, or
/// the active signed bundle.
pub trait ConfigSource: Send + Sync + 'static {
    /// Reads and validates the configuration; the error lists every problem.
    /// Blocking: the node calls it off the async threads.
    fn load(&self) -> Result<Loaded, String>;
}

/// Consecutive failures after which `/readyz` flags a module as failing
/// (and a fresh bundle is judged unhealthy).
pub(crate) const FAILING_AFTER: u64 = 5;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// The generation now active (unchanged when the reload was rejected).
    pub generation: u64,
    pub activated: bool,
    /// Every problem found; empty on full success. Certificates that fail to
    /// load are reported here while the previous ones stay in use.
    pub errors: Vec<String>,
}

/// Node-wide state shared by every connection and request.
#[derive(Debug)]
pub struct Shared {
    pub active: ArcSwap<Active>,
    pub metrics: Metrics,
    pub limits: Limits,
    pub trusted_proxies: Vec<IpNet>,
    pub country_header: Option<http::HeaderName>,
    /// The GeoIP database, when `[node] geoip_db` names one; replaced on
    /// reload.
    pub geoip: arc_swap::ArcSwapOption<GeoIp>,
    pub region: String,
    /// The region as Wasm modules see it (one shared allocation).
    pub region_id: Arc<str>,
    pub admin_token: Option<String>,
    /// Requests that matched no route (or were refused before routing).
    pub unrouted: RouteMetrics,
    pub cache: Arc<Cache>,
    pub coalescer: Coalescer,
    pub wasm: Arc<WasmHost>,
    /// Set in bundle mode.
    pub bundles: OnceLock<Arc<BundleManager>>,
    shutting_down: AtomicBool,
    reloader: Reloader,
    status: Mutex<Status>,
}

struct Reloader {
    source: Arc<dyn ConfigSource>,
    geoip_db: Option<std::path::PathBuf>,
    certs: Vec<Certificate>,
    resolver: Option<Arc<CertResolver>>,
    lock: tokio::sync::Mutex<()>,
    generation: AtomicU64,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// The process's WebAssembly engine, created when the first configuration
/// with modules is activated (a node without modules never reserves the
/// instance pool).
pub struct WasmHost {
    settings: WasmSettings,
    engine: OnceLock<Result<WasmEngine, String>>,
}

impl std::fmt::Debug for WasmHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmHost")
            .field("settings", &self.settings)
            .field("started", &self.started().is_some())
            .finish()
    }
}

impl WasmHost {
    pub fn new(settings: WasmSettings) -> Self {
        Self {
            settings,
            engine: OnceLock::new(),
        }
    }

    /// The engine, starting it on first use.
    pub fn engine(&self) -> Result<&WasmEngine> {
        let engine = self.engine.get_or_init(|| {
            let config = EngineConfig {
                pooling: Some(PoolingConfig {
                    max_instances: self.settings.max_instances,
                    max_memory_size: usize::try_from(self.settings.max_memory_bytes)
                        .unwrap_or(usize::MAX),
                    ..PoolingConfig::default()
                }),
                artifact_cache: self.settings.artifact_cache.clone(),
                ..EngineConfig::default()
            };
            WasmEngine::new(config).map_err(|e| e.to_string())
        });
        engine.as_ref().map_err(|e| Error::Wasm(e.clone()))
    }

    /// The engine if it has been started.
    pub fn started(&self) -> Option<&WasmEngine> {
        self.engine.get().and_then(|e| e.as_ref().ok())
    }
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub listeners: Vec<String>,
    pub last_reload: Option<(SystemTime, ReloadOutcome)>,
}

impl Shared {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Re-reads the configuration and certificates and activates them; on
    /// any configuration error the running snapshot stays untouched.
    /// Concurrent reloads and activations are serialized.
    pub async fn reload(self: &Arc<Self>) -> ReloadOutcome {
        let _serial = self.reloader.lock.lock().await;
        let mut errors = Vec::new();

        if let Some(resolver) = &self.reloader.resolver
            && let Err(e) = resolver.reload(&self.reloader.certs)
        {
            error!(error = %e, "certificate reload failed; keeping the current certificates");
            errors.push(e.to_string());
        }

        if let Some(path) = self.reloader.geoip_db.clone() {
            match tokio::task::spawn_blocking(move || GeoIp::open(&path)).await {
                Ok(Ok(db)) => self.geoip.store(Some(Arc::new(db))),
                Ok(Err(e)) => {
                    error!(error = %e, "GeoIP database reload failed; keeping the current one");
                    errors.push(e);
                }
                Err(e) => errors.push(format!("GeoIP reload task failed: {e}")),
            }
        }

        let this = self.clone();
        let loaded = tokio::task::spawn_blocking(move || this.reloader.source.load())
            .await
            .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
        match loaded {
            Ok(loaded) => self.activate_locked(loaded, || Ok(()), errors).await,
            Err(e) => self.finish(Err(e), errors),
        }
    }

    /// Activates `loaded`: builds the snapshot off to the side (a failure
    /// leaves the running one untouched), then runs `commit` (blocking, off
    /// the async threads; its error rejects the activation), then swaps the
    /// snapshot in. Serialized with reloads.
    pub async fn activate(
        self: &Arc<Self>,
        loaded: Loaded,
        commit: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> ReloadOutcome {
        let _serial = self.reloader.lock.lock().await;
        self.activate_locked(loaded, commit, Vec::new()).await
    }

    async fn activate_locked(
        &self,
        loaded: Loaded,
        commit: impl FnOnce() -> Result<(), String> + Send + 'static,
        errors: Vec<String>,
    ) -> ReloadOutcome {
        let generation = self.reloader.generation.load(Ordering::Relaxed) + 1;
        let previous = self.active.load_full();
        let cx = BuildCtx {
            metrics: &self.metrics,
            wasm: &self.wasm,
        };
        let built = match Active::build(loaded, generation, Some(&previous), &cx).await {
            Ok(active) => tokio::task::spawn_blocking(commit)
                .await
                .unwrap_or_else(|e| Err(format!("commit task failed: {e}")))
                .map(|()| active),
            Err(e) => Err(e.to_string()),
        };
        self.finish(built, errors)
    }

    /// Swaps in a built snapshot (or reports why there is none) and records
    /// the outcome.
    fn finish(&self, built: Result<Active, String>, mut errors: Vec<String>) -> ReloadOutcome {
        let activated = match built {
            Ok(active) => {
                let generation = active.generation;
                let label = active.label.clone();
                self.reloader
                    .generation
                    .store(generation, Ordering::Relaxed);
                self.active.store(Arc::new(active));
                self.metrics.config_generation.set(generation as i64);
                info!(
                    generation,
                    source = label.as_deref().unwrap_or("local files"),
                    "configuration activated"
                );
                true
            }
            Err(e) => {
                error!(errors = %e, "configuration rejected; still serving the previous one");
                errors.push(e);
                false
            }
        };
        let result = if activated && errors.is_empty() {
            "ok"
        } else if activated {
            "partial"
        } else {
            "rejected"
        };
        self.metrics
            .reloads
            .get_or_create(&ReloadLabel { result })
            .inc();
        let outcome = ReloadOutcome {
            generation: self.reloader.generation.load(Ordering::Relaxed),
            activated,
            errors,
        };
        if let Ok(mut status) = self.status.lock() {
            status.last_reload = Some((SystemTime::now(), outcome.clone()));
        }
        outcome
    }
}

/// Starts nodes.
#[derive(Debug)]
pub struct Node;

impl Node {
    /// Binds every listener, activates `edge` as generation 1 and starts
    /// serving. Fails without serving anything if a listener cannot be bound
    /// or the configuration cannot be activated.
    pub async fn start(
        bootstrap: Bootstrap,
        edge: impl Into<Loaded>,
        source: Arc<dyn ConfigSource>,
    ) -> Result<NodeHandle> {
        let mut metrics = Metrics::new();
        let wasm = Arc::new(WasmHost::new(bootstrap.wasm.clone()));
        metrics.register_modules(wasm.clone());
        let cache = Arc::new(Cache::new(
            cache_config(&bootstrap.cache),
            Arc::new(SystemClock),
        ));
        metrics.register_cache(cache.clone());
        let coalescer = Coalescer::new(
            bootstrap.cache.coalesce_max_waiters,
            bootstrap.cache.coalesce_timeout,
        );
        let active = Active::build(
            edge.into(),
            1,
            None,
            &BuildCtx {
                metrics: &metrics,
                wasm: &wasm,
            },
        )
        .await?;
        metrics.config_generation.set(1);

        let certs: Vec<Certificate> = bootstrap
            .tls_listeners
            .first()
            .map(|l| l.certificates.clone())
            .unwrap_or_default();
        let resolver = if bootstrap.tls_listeners.is_empty() {
            None
        } else {
            Some(Arc::new(CertResolver::load(&certs)?))
        };

        let mut listeners = Vec::new();
        for l in &bootstrap.listeners {
            let socket = bind(l.addr).await?;
            let addr = local_addr(&socket, l.addr)?;
            listeners.push((
                Listener {
                    name: format!("http://{addr}"),
                    socket,
                    tls: None,
                    proxy_protocol: l.proxy_protocol,
                },
                addr,
            ));
        }
        let mut tls_listeners = Vec::new();
        for l in &bootstrap.tls_listeners {
            let socket = bind(l.addr).await?;
            let addr = local_addr(&socket, l.addr)?;
            let resolver = resolver
                .clone()
                .ok_or_else(|| Error::Tls("TLS listener without certificates".into()))?;
            let config = tls::server_config(l.min_version, resolver)?;
            tls_listeners.push((
                Listener {
                    name: format!("https://{addr}"),
                    socket,
                    tls: Some(TlsAcceptor::from(Arc::new(config))),
                    proxy_protocol: l.proxy_protocol,
                },
                addr,
            ));
        }
        let admin_socket = bind(bootstrap.admin.listen).await?;
        let admin_addr = local_addr(&admin_socket, bootstrap.admin.listen)?;

        let http_addrs: Vec<SocketAddr> = listeners.iter().map(|(_, a)| *a).collect();
        let tls_addrs: Vec<SocketAddr> = tls_listeners.iter().map(|(_, a)| *a).collect();
        let status = Status {
            listeners: listeners
                .iter()
                .chain(tls_listeners.iter())
                .map(|(l, _)| l.name.clone())
                .collect(),
            last_reload: None,
        };

        let geoip = match bootstrap.geoip_db.clone() {
            Some(path) => Some(Arc::new(
                tokio::task::spawn_blocking(move || GeoIp::open(&path))
                    .await
                    .map_err(|e| Error::Config(e.to_string()))?
                    .map_err(Error::Config)?,
            )),
            None => None,
        };
        let unrouted = RouteMetrics::new(&metrics, "-");
        let shared = Arc::new(Shared {
            active: ArcSwap::from_pointee(active),
            unrouted,
            metrics,
            cache,
            coalescer,
            wasm,
            bundles: OnceLock::new(),
            limits: bootstrap.limits.clone(),
            trusted_proxies: bootstrap.trusted_proxies.clone(),
            country_header: bootstrap.country_header.clone(),
            geoip: arc_swap::ArcSwapOption::new(geoip),
            region: bootstrap.region.clone(),
            region_id: Arc::from(bootstrap.region.as_str()),
            admin_token: bootstrap.admin.token.clone(),
            shutting_down: AtomicBool::new(false),
            reloader: Reloader {
                source,
                geoip_db: bootstrap.geoip_db.clone(),
                certs,
                resolver,
                lock: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(1),
            },
            status: Mutex::new(status),
        });

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let max_connections = u32::try_from(
            bootstrap
                .limits
                .max_connections
                .clamp(1, Semaphore::MAX_PERMITS),
        )
        .unwrap_or(u32::MAX);
        let permits = Arc::new(Semaphore::new(max_connections as usize));
        let mut tasks = Vec::new();
        for (listener, addr) in listeners.into_iter().chain(tls_listeners) {
            info!(listener = %listener.name, %addr, "listening");
            tasks.push(tokio::spawn(conn::accept_loop(
                listener,
                shared.clone(),
                permits.clone(),
                shutdown_rx.clone(),
            )));
        }
        let mut background = Vec::new();
        if bootstrap.cache.scrub_per_second > 0 {
            background.push(tokio::spawn(scrub(
                shared.clone(),
                bootstrap.cache.scrub_per_second,
            )));
        }
        background.push(tokio::spawn(sweep_limiters(shared.clone())));
        info!(addr = %admin_addr, "admin API listening");
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let admin_task = tokio::spawn(admin::serve(admin_socket, shared.clone(), admin_stop_rx));

        Ok(NodeHandle {
            shared,
            shutdown_tx,
            admin_stop_tx,
            http_addrs,
            tls_addrs,
            admin_addr,
            tasks,
            background,
            admin_task,
            permits,
            max_connections,
        })
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    // std's listener sets SO_REUSEADDR on Unix via tokio; a restart can
    // rebind while old connections sit in TIME_WAIT.
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

fn local_addr(socket: &TcpListener, addr: SocketAddr) -> Result<SocketAddr> {
    socket
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })
}

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    admin_stop_tx: watch::Sender<bool>,
    http_addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    admin_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    /// Periodic work: the cache scrubber, the rate-limit key sweeper.
    background: Vec<JoinHandle<()>>,
    admin_task: JoinHandle<()>,
    permits: Arc<Semaphore>,
    max_connections: u32,
}

impl NodeHandle {
    pub fn http_addrs(&self) -> &[SocketAddr] {
        &self.http_addrs
    }

    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The generation of the active configuration snapshot.
    pub fn generation(&self) -> u64 {
        self.shared.active.load().generation
    }

    pub async fn reload(&self) -> ReloadOutcome {
        self.shared.reload().await
    }

    /// Puts the node in bundle mode: `manager` serves the admin bundle
    /// endpoints, and its sync loop runs until shutdown.
    pub fn attach_bundles(&mut self, manager: Arc<BundleManager>) {
        if self.shared.bundles.set(manager.clone()).is_ok() {
            if let Some(v) = manager.active_version() {
                self.shared
                    .metrics
                    .bundles
                    .active_version
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
            self.background
                .push(tokio::spawn(manager.run(self.shared.clone())));
        }
    }

    /// Runs one bundle sync now and waits for it (tests and tools; the
    /// sync loop does the same on its own).
    pub async fn sync_bundles(&self) -> Option<crate::bundles::SyncOutcome> {
        let manager = self.shared.bundles.get()?.clone();
        Some(manager.sync(&self.shared).await)
    }

    /// The node's shared HTTP cache (it outlives reloads).
    pub fn cache(&self) -> &Arc<Cache> {
        &self.shared.cache
    }

    /// Stops accepting, asks every connection to finish its in-flight
    /// requests, and waits up to the configured grace period. Returns
    /// `true` when every connection closed in time.
    pub async fn shutdown(self) -> bool {
        let grace = self.shared.limits.shutdown_grace;
        self.shared.shutting_down.store(true, Ordering::Relaxed);
        let _ = self.shutdown_tx.send(true);
        for task in &self.tasks {
            task.abort();
        }
        // Every open connection holds a permit; all of them back means done.
        let drained = tokio::time::timeout(grace, self.permits.acquire_many(self.max_connections))
            .await
            .is_ok();
        if drained {
            info!("all connections closed");
        } else {
            warn!(grace = ?grace, "shutdown grace period over; dropping remaining connections");
        }
        let _ = self.admin_stop_tx.send(true);
        self.admin_task.abort();
        for task in &self.background {
            task.abort();
        }
        drained
    }
}

fn cache_config(settings: &CacheSettings) -> CacheConfig {
    CacheConfig {
        memory_bytes: settings.memory_bytes,
        max_object_bytes: settings.max_object_bytes,
        integrity: match settings.integrity {
            IntegrityCheck::Sample(n) => Integrity::Sample(n),
            IntegrityCheck::Always => Integrity::Always,
        },
        ..CacheConfig::default()
    }
}

/// Re-verifies stored bodies at a bounded rate, one batch per second.
async fn scrub(shared: Arc<Shared>, per_second: u32) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let cache = shared.cache.clone();
        let report = tokio::task::spawn_blocking(move || cache.scrub(per_second as usize)).await;
        if let Ok(report) = report
            && report.failed > 0
        {
            error!(
                failed = report.failed,
                checked = report.checked,
                "cache scrubber found corrupted entries; evicted"
            );
        }
    }
}

/// Forgets rate-limit keys whose buckets are full again, so idle clients
/// cost no memory.
async fn sweep_limiters(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let active = shared.active.load_full();
        if active.policies.is_empty() {
            continue;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for policy in active.policies.values() {
                policy.limiter.sweep();
            }
        })
        .await;
    }
}
