//! The activated configuration: one immutable snapshot of routes, upstream
//! clients and static sites, built off to the side and swapped in whole.

use std::collections::HashMap;
use std::sync::Arc;

use cathedral_cache::{ContentClass, KeyOptions, RoutePolicy, TtlMode};
use cathedral_config::{
    CacheMode, ClassChoice, ContentClassName, EdgeConfig, HostHeader, RouteCache, RouteTarget,
    UserIdSource,
};
use http::{HeaderName, HeaderValue};

use crate::content::DirectorySource;
use crate::error::{Error, Result};
use crate::metrics::{Metrics, RouteMetrics};
use crate::ratelimit::Policy;
use crate::router::Router;
use crate::static_files::StaticContent;
use crate::upstream::UpstreamClient;

#[derive(Debug)]
pub struct Active {
    pub generation: u64,
    pub config: Arc<EdgeConfig>,
    upstreams: HashMap<String, Arc<UpstreamClient>>,
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
}

#[derive(Debug)]
pub enum Target {
    Upstream(Arc<UpstreamClient>),
    Static(StaticContent),
}

impl Active {
    /// Builds a snapshot. Upstream clients whose configuration did not
    /// change are carried over from `previous`, keeping their pooled
    /// connections warm across reloads.
    pub fn build(
        config: EdgeConfig,
        generation: u64,
        previous: Option<&Active>,
        metrics: &Metrics,
    ) -> Result<Self> {
        let mut upstreams = HashMap::new();
        for (name, up) in &config.upstreams {
            let reused = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|old| old.config == *up)
                .cloned();
            let client = match reused {
                Some(c) => c,
                None => UpstreamClient::new(up)?,
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
                        DirectorySource::new(&site.root).map_err(|source| Error::StaticRoot {
                            route: route.name.clone(),
                            path: site.root.clone(),
                            source,
                        })?;
                    Target::Static(StaticContent {
                        source: Arc::new(source),
                        index: site.index.clone(),
                    })
                }
            };
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
            config: Arc::new(config),
            upstreams,
            policies,
            router,
        })
    }

    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<RouteCtx>> {
        self.router.find(host, path)
    }
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
