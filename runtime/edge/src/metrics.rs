//! The node's Prometheus metrics: one registry per node, passed through
//! context (never a global), rendered by the admin API.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamError {
    pub upstream: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyDecision {
    pub policy: String,
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabel {
    pub result: &'static str,
}

/// Request counters and the latency histogram of one route, resolved once
/// per activation so the request path does no label allocation or map
/// lookup after a status has been seen once.
#[derive(Debug)]
pub struct RouteMetrics {
    route: String,
    family: Family<RouteStatus, Counter>,
    by_status: Box<[OnceLock<Counter>]>,
    pub duration: Histogram,
}

impl RouteMetrics {
    pub fn new(metrics: &Metrics, route: &str) -> Self {
        Self {
            route: route.to_owned(),
            family: metrics.requests.clone(),
            by_status: (0..600).map(|_| OnceLock::new()).collect(),
            duration: metrics
                .duration
                .get_or_create(&RouteLabel {
                    route: route.to_owned(),
                })
                .clone(),
        }
    }

    pub fn count(&self, status: u16) {
        let make = || {
            self.family
                .get_or_create(&RouteStatus {
                    route: self.route.clone(),
                    status,
                })
                .clone()
        };
        match self.by_status.get(usize::from(status)) {
            Some(slot) => slot.get_or_init(make).inc(),
            None => make().inc(),
        };
    }
}

type HistogramFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~26 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 19,
    ))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteStatus, Counter>,
    pub duration: HistogramFamily,
    pub upstream_errors: Family<UpstreamError, Counter>,
    pub open_connections: Gauge,
    pub connection_errors: Family<ListenerLabel, Counter>,
    pub reloads: Family<ReloadLabel, Counter>,
    pub config_generation: Gauge,
    pub ratelimit_decisions: Family<PolicyDecision, Counter>,
    pub bundles: BundleMetrics,
}

/// Signed-bundle sync figures (zero on a node in local mode).
#[derive(Debug, Clone, Default)]
pub struct BundleMetrics {
    pub syncs: Family<ResultLabel, Counter>,
    pub refusals: Family<ReasonLabel, Counter>,
    pub activations: Counter,
    pub rollbacks: Counter,
    pub fetched_bytes: Counter,
    pub active_version: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RouteStatus, Counter>::default();
        registry.register(
            "cathedral_http_requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        let duration: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "cathedral_http_request_duration_seconds",
            "Time from request head to the end of the response body, by route",
            duration.clone(),
        );
        let upstream_errors = Family::<UpstreamError, Counter>::default();
        registry.register(
            "cathedral_upstream_errors",
            "Failed upstream exchanges, by upstream and kind (connect, timeout, protocol)",
            upstream_errors.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "cathedral_open_connections",
            "Client connections currently open on the public listeners",
            open_connections.clone(),
        );
        let connection_errors = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "cathedral_connection_errors",
            "Client connections that failed before or during HTTP, by listener and reason",
            connection_errors.clone(),
        );
        let reloads = Family::<ReloadLabel, Counter>::default();
        registry.register(
            "cathedral_config_reloads",
            "Configuration reload attempts, by result",
            reloads.clone(),
        );
        let config_generation = Gauge::default();
        registry.register(
            "cathedral_config_generation",
            "Generation number of the active configuration snapshot",
            config_generation.clone(),
        );
        let ratelimit_decisions = Family::<PolicyDecision, Counter>::default();
        registry.register(
            "cathedral_ratelimit_decisions",
            "Native rate-limit decisions, by policy and decision (allowed, limited, penalized, exceeds_burst)",
            ratelimit_decisions.clone(),
        );
        let bundles = BundleMetrics::default();
        registry.register(
            "cathedral_bundle_syncs",
            "Bundle sync attempts, by result (activated, unchanged, refused, failed)",
            bundles.syncs.clone(),
        );
        registry.register(
            "cathedral_bundle_refusals",
            "Bundle documents refused, by reason",
            bundles.refusals.clone(),
        );
        registry.register(
            "cathedral_bundle_activations",
            "Bundles activated",
            bundles.activations.clone(),
        );
        registry.register(
            "cathedral_bundle_rollbacks",
            "Reverts to a previous bundle (failed health after activation, or activate --previous)",
            bundles.rollbacks.clone(),
        );
        registry.register(
            "cathedral_bundle_fetched_bytes",
            "Bytes of bundle files downloaded from the origin",
            bundles.fetched_bytes.clone(),
        );
        registry.register(
            "cathedral_bundle_active_version",
            "Version of the active bundle (0 in local mode or before the first bundle)",
            bundles.active_version.clone(),
        );
        Self {
            registry,
            requests,
            ratelimit_decisions,
            bundles,
            duration,
            upstream_errors,
            open_connections,
            connection_errors,
            reloads,
            config_generation,
        }
    }

    /// Prometheus text exposition (OpenMetrics flavour).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn upstream_error(&self, upstream: &str, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamError {
                upstream: upstream.to_owned(),
                kind,
            })
            .inc();
    }

    pub fn connection_error(&self, listener: &str, reason: &'static str) {
        self.connection_errors
            .get_or_create(&ListenerLabel {
                listener: listener.to_owned(),
                reason,
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Exposes the cache's own counters at scrape time, so the request path
/// never touches the registry for them.
#[derive(Debug)]
struct CacheCollector {
    cache: std::sync::Arc<cathedral_cache::Cache>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

impl prometheus_client::collector::Collector for CacheCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        let s = self.cache.stats();
        let counters: [(&str, &str, u64); 7] = [
            (
                "cathedral_cache_hits",
                "Requests answered from the cache",
                s.hits,
            ),
            (
                "cathedral_cache_misses",
                "Lookups that found nothing usable",
                s.misses,
            ),
            (
                "cathedral_cache_stale_served",
                "Stale responses served (stale-while-revalidate, stale-if-error, max-stale)",
                s.stale_served,
            ),
            (
                "cathedral_cache_revalidations",
                "Conditional requests sent to revalidate stale entries",
                s.revalidations,
            ),
            ("cathedral_cache_stores", "Responses stored", s.stores),
            (
                "cathedral_cache_integrity_failures",
                "Stored bodies whose blake3 no longer matched (evicted and refetched)",
                s.integrity_failures,
            ),
            (
                "cathedral_cache_scrubbed",
                "Entries re-verified by the background scrubber",
                s.scrubbed,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let m = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(m)?;
        }
        let evictions = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "cathedral_cache_evictions",
            "Entries evicted, by cause: size (capacity), expired (retention over), removed (purge, invalidation, integrity)",
            None,
            evictions.metric_type(),
        )?;
        for (cause, value) in [
            ("size", s.evicted_size),
            ("expired", s.evicted_expired),
            ("removed", s.removed),
        ] {
            let labels = CauseLabel { cause };
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        for (name, help, value) in [
            (
                "cathedral_cache_bytes",
                "Weighted bytes held by the cache",
                s.bytes,
            ),
            (
                "cathedral_cache_entries",
                "URLs held by the cache",
                s.entries,
            ),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let m = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(m)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Adds the cache's figures to this registry.
    pub fn register_cache(&mut self, cache: std::sync::Arc<cathedral_cache::Cache>) {
        self.registry
            .register_collector(Box::new(CacheCollector { cache }));
    }
}

/// Exposes per-module call and failure counts (kept by the Wasm engine
/// across activations) at scrape time.
#[derive(Debug)]
struct ModuleCollector {
    wasm: std::sync::Arc<crate::node::WasmHost>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModuleKindLabel {
    module: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModuleLabel {
    module: String,
}

impl prometheus_client::collector::Collector for ModuleCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;

        let Some(engine) = self.wasm.started() else {
            return Ok(());
        };
        let stats = engine.module_stats();
        let kind = ConstCounter::new(0u64).metric_type();
        let mut errors = encoder.encode_descriptor(
            "cathedral_module_errors",
            "Wasm module failures, by module and kind (trap, timeout, oom, load, guest_error, busy, engine)",
            None,
            kind,
        )?;
        for (module, s) in &stats {
            for (k, n) in s.failures_by_kind() {
                let labels = ModuleKindLabel {
                    module: module.clone(),
                    kind: k.as_str(),
                };
                ConstCounter::new(n).encode(errors.encode_family(&labels)?)?;
            }
        }
        type Counter = fn(&cathedral_wasm::ModuleStatsSnapshot) -> u64;
        let per_module: [(&str, &str, Counter); 2] = [
            (
                "cathedral_module_calls",
                "Wasm module calls, by module",
                |s| s.calls,
            ),
            (
                "cathedral_module_instances",
                "Wasm instances made for calls, by module (a filter's two hooks share one on a cache hit)",
                |s| s.instances,
            ),
        ];
        for (name, help, value) in per_module {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (module, s) in &stats {
                let labels = ModuleLabel {
                    module: module.clone(),
                };
                ConstCounter::new(value(s)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    /// Adds the Wasm modules' figures to this registry.
    pub fn register_modules(&mut self, wasm: std::sync::Arc<crate::node::WasmHost>) {
        self.registry
            .register_collector(Box::new(ModuleCollector { wasm }));
    }
}
