//! The activated configuration: one immutable snapshot of routes, upstream
//! clients and static sites, built off to the side and swapped in whole.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use cathedral_cache::{ContentClass, KeyOptions, RoutePolicy, TtlMode};
use cathedral_config::{
    CacheMode, ClassChoice, ContentClassName, EdgeConfig, HostHeader, RouteCache, RouteTarget,
    UserIdSource,
};
use http::{HeaderName, HeaderValue};

use cathedral_wasm::{
    Backend, Backends, Module, ModuleConfig as WasmModuleConfig, ModuleKind, ModuleSettings,
    RateLimitPolicy, RateLimits,
};

use crate::error::{Error, Result};
use crate::files::{Files, Loaded};
use crate::filters::RouteFilter;
use crate::metrics::{Metrics, RouteMetrics};
use crate::node::WasmHost;
use crate::ratelimit::Policy;
use crate::router::Router;
use crate::static_files::StaticContent;
use crate::upstream::UpstreamClient;

#[derive(Debug)]
pub struct Active {
    pub generation: u64,
    /// Where this snapshot came from, e.g. `bundle production/eu-central-1
    /// v42`; `None` for local files.
    pub label: Option<String>,
    pub config: Arc<EdgeConfig>,
    upstreams: HashMap<String, Arc<UpstreamClient>>,
    /// Loaded Wasm components by name, with the blake3 of their bytes.
    modules: HashMap<String, (String, Module)>,
    /// Rate-limit policies by name, with their counters.
    pub policies: HashMap<String, Arc<Policy>>,
    router: Router<Arc<RouteCtx>>,
}

/// Everything a request needs from its route, resolved at activation.
#[derive(Debug)]
pub struct RouteCtx {
    pub name: String,
    pub path_prefix: String,
    pub target: Target,
    pub host_header: HostHeader,
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    pub metrics: RouteMetrics,
    /// `None`: the route never uses the cache.
    pub cache: Option<Arc<RoutePolicy>>,
    /// Native rate limits, checked in order before anything else.
    pub rate_limits: Vec<Arc<Policy>>,
    pub user_id: Option<UserIdSource>,
    /// Wasm filters in route order.
    pub filters: Vec<RouteFilter>,
}

#[derive(Debug)]
pub enum Target {
    Upstream(Arc<UpstreamClient>),
    Static(StaticContent),
    Handler(HandlerCtx),
}

/// A Wasm handler answering a route, with the backends it may call.
#[derive(Clone)]
pub struct HandlerCtx {
    pub module: Module,
    pub backends: Backends,
}

impl std::fmt::Debug for HandlerCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerCtx")
            .field("module", &self.module.name())
            .finish_non_exhaustive()
    }
}

/// What building a snapshot needs from the node.
#[derive(Debug)]
pub struct BuildCtx<'a> {
    pub metrics: &'a Metrics,
    pub wasm: &'a WasmHost,
}

impl Active {
    /// Builds a snapshot. Upstream clients whose configuration did not
    /// change are carried over from `previous`, keeping their pooled
    /// connections warm across reloads.
    pub async fn build(
        loaded: Loaded,
        generation: u64,
        previous: Option<&Active>,
        cx: &BuildCtx<'_>,
    ) -> Result<Self> {
        let Loaded {
            config,
            files,
            label,
        } = loaded;
        let metrics = cx.metrics;
        let mut upstreams = HashMap::new();
        for (name, up) in &config.upstreams {
            let reused = previous
                .and_then(|p| p.upstreams.get(name))
                // A CA file is re-read on every activation: the same path may
                // hold other certificates now.
                .filter(|old| old.config == *up && !has_ca_file(up))
                .cloned();
            let client = match reused {
                Some(c) => c,
                None => UpstreamClient::new(up, files.as_ref())?,
            };
            upstreams.insert(name.clone(), client);
        }
        let mut policies = HashMap::new();
        for (name, policy) in &config.rate_limits {
            // Unchanged policies keep their counters across reloads.
            let reused = previous
                .and_then(|p| p.policies.get(name))
                .filter(|old| old.config == *policy)
                .cloned();
            let policy = match reused {
                Some(p) => p,
                None => Policy::new(policy, metrics)?,
            };
            policies.insert(name.clone(), policy);
        }
        let modules = load_modules(&config, &files, previous, &policies, cx.wasm).await?;
        let module = |name: &str, kind: ModuleKind, route: &str| -> Result<Module> {
            let (_, m) = modules
                .get(name)
                .ok_or_else(|| Error::Config(format!("route {route}: no module named {name:?}")))?;
            if m.kind() != kind {
                return Err(Error::Config(format!(
                    "route {route}: module {name} is a {} component, used as a {kind}",
                    m.kind()
                )));
            }
            Ok(m.clone())
        };
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let target = match &route.target {
                RouteTarget::Upstream(name) => {
                    Target::Upstream(upstreams.get(name).cloned().ok_or_else(|| {
                        Error::Config(format!("route {}: no upstream named {name:?}", route.name))
                    })?)
                }
                RouteTarget::Static(site) => {
                    let source =
                        files
                            .static_source(&site.root)
                            .map_err(|source| Error::StaticRoot {
                                route: route.name.clone(),
                                path: site.root.clone(),
                                source,
                            })?;
                    Target::Static(StaticContent {
                        source,
                        index: site.index.clone(),
                    })
                }
                RouteTarget::Handler(h) => {
                    let mut backends = Vec::new();
                    for name in &h.backends {
                        let up = upstreams.get(name).ok_or_else(|| {
                            Error::Config(format!(
                                "route {}: no upstream named {name:?}",
                                route.name
                            ))
                        })?;
                        let origin = format!("{}://{}", up.scheme(), up.primary_target());
                        backends.push(
                            Backend::new(name.clone(), &origin)
                                .map_err(|e| Error::Config(e.to_string()))?,
                        );
                    }
                    Target::Handler(HandlerCtx {
                        module: module(&h.module, ModuleKind::Handler, &route.name)?,
                        backends: Backends::new(backends),
                    })
                }
            };
            let filters = route
                .filters
                .iter()
                .map(|f| {
                    Ok(RouteFilter {
                        module: module(&f.module, ModuleKind::Filter, &route.name)?,
                        fail: f.fail,
                        response_body: f.response_body,
                        max_body_bytes: f.max_body_bytes,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            routes.push((
                route,
                Arc::new(RouteCtx {
                    name: route.name.clone(),
                    path_prefix: route.path_prefix.clone(),
                    target,
                    host_header: route.host_header.clone(),
                    response_headers: route.response_headers.clone(),
                    metrics: RouteMetrics::new(metrics, &route.name),
                    cache: route.cache.as_ref().map(|c| Arc::new(route_policy(c))),
                    rate_limits: route
                        .rate_limits
                        .iter()
                        .map(|name| {
                            policies.get(name).cloned().ok_or_else(|| {
                                Error::Config(format!(
                                    "route {}: no rate limit named {name:?}",
                                    route.name
                                ))
                            })
                        })
                        .collect::<Result<_>>()?,
                    user_id: route.user_id.clone(),
                    filters,
                }),
            ));
        }
        let by_name: HashMap<&str, Arc<RouteCtx>> = routes
            .iter()
            .map(|(r, c)| (r.name.as_str(), c.clone()))
            .collect();
        let router = Router::new(config.routes.iter(), |r| {
            by_name
                .get(r.name.as_str())
                .cloned()
                .expect("every route was resolved above")
        });
        Ok(Self {
            generation,
            label,
            config: Arc::new(config),
            upstreams,
            modules,
            policies,
            router,
        })
    }

    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<RouteCtx>> {
        self.router.find(host, path)
    }
}

/// Loads every configured component. One whose bytes and settings did not
/// change since `previous` is carried over without recompiling.
async fn load_modules(
    config: &EdgeConfig,
    files: &Arc<dyn Files>,
    previous: Option<&Active>,
    policies: &HashMap<String, Arc<Policy>>,
    wasm: &WasmHost,
) -> Result<HashMap<String, (String, Module)>> {
    let mut modules = HashMap::new();
    if config.modules.is_empty() {
        return Ok(modules);
    }
    let engine = wasm.engine()?;
    for (name, mc) in &config.modules {
        let (reader, path) = (files.clone(), mc.path.clone());
        let bytes = tokio::task::spawn_blocking(move || reader.read(&path))
            .await
            .map_err(io::Error::other)
            .and_then(|r| r)
            .map_err(|e| Error::Module {
                module: name.clone(),
                reason: format!("cannot read {}: {e}", mc.path.display()),
            })?;
        let hash = blake3::hash(&bytes).to_hex().to_string();
        let mut rate_limits: Vec<(String, Arc<dyn RateLimitPolicy>)> = Vec::new();
        for policy in &mc.rate_limits {
            let p = policies.get(policy).ok_or_else(|| Error::Module {
                module: name.clone(),
                reason: format!("no rate limit named {policy:?}"),
            })?;
            rate_limits.push((policy.clone(), p.limiter.clone()));
        }
        let settings = ModuleSettings {
            cpu_deadline: mc.cpu_deadline,
            wall_timeout: mc.wall_timeout,
            memory_limit: usize::try_from(mc.memory_limit_bytes).unwrap_or(usize::MAX),
            config: WasmModuleConfig::new(mc.config.clone()),
            rate_limits: RateLimits::new(rate_limits),
        };
        let reused = previous
            .and_then(|p| p.modules.get(name))
            .filter(|(old_hash, _)| *old_hash == hash);
        let module = match reused {
            Some((_, old)) => old.with_settings(settings),
            None => engine.load(name, bytes, settings).await,
        }
        .map_err(|e| Error::ModuleLoad(e.to_string()))?;
        modules.insert(name.clone(), (hash, module));
    }
    Ok(modules)
}

fn has_ca_file(up: &cathedral_config::Upstream) -> bool {
    up.tls.as_ref().is_some_and(|t| t.ca_file.is_some())
}

/// The cache crate's view of a route's `[cache]` settings.
fn route_policy(c: &RouteCache) -> RoutePolicy {
    let class = match c.class {
        ClassChoice::Fixed(name) => Some(match name {
            ContentClassName::Image => ContentClass::Image,
            ContentClassName::Fingerprinted => ContentClass::Fingerprinted,
            ContentClassName::Font => ContentClass::Font,
            ContentClassName::Video => ContentClass::Video,
            ContentClassName::Api => ContentClass::Api,
            ContentClassName::PerUser => ContentClass::PerUser,
            ContentClassName::RealTime => ContentClass::RealTime,
        }),
        ClassChoice::Auto | ClassChoice::Disabled => None,
    };
    RoutePolicy {
        mode: match c.mode {
            CacheMode::Origin => TtlMode::Origin,
            CacheMode::Override => TtlMode::Override,
        },
        default_ttl: c.ttl,
        class,
        detect_class: c.class == ClassChoice::Auto,
        key: KeyOptions {
            ignore_query_params: c.ignore_query.clone(),
            sort_query: c.sort_query,
            headers: c.key_headers.clone(),
        },
        store_set_cookie: c.store_set_cookie,
        forward_cdn_cache_control: c.forward_cdn_cache_control,
        ..RoutePolicy::default()
    }
}
