//! The shipped data parses: `edge-config/node.toml` with every region overlay in `regions/`, and whatever Wasm modules it wires in are consistent.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::path::{Path, PathBuf};

use std::time::Duration;

use std::collections::BTreeSet;

use cathedral_config::{
    Bootstrap, CacheSettings, ClassChoice, ContentClassName, EdgeConfig, Overrides, RateLimitKey,
    RateLimitPolicy, RouteCache, RouteTarget, Scheme, load, render_effective,
};

fn repo() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).to_path_buf()
}

fn regions() -> Vec<String> {
    let mut regions: Vec<String> = std::fs::read_dir(repo().join("regions"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .map(|path| path.file_stem().unwrap().to_str().unwrap().to_owned())
        .collect();
    regions.sort();
    regions
}

#[test]
fn demo_config_loads_as_shipped() {
    let node = repo().join("edge-config/node.toml");
    let (bootstrap, edge) = load(&node, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bootstrap.region, "us-east-1");
    assert_eq!(bootstrap.listeners.len(), 1);
    assert_eq!(bootstrap.listeners[0].addr.to_string(), "127.0.0.1:8080");
    assert_eq!(bootstrap.admin.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(bootstrap.admin.token, None);
    assert!(bootstrap.regions_dir.ends_with("regions"));
    assert!(
        !bootstrap.regions_dir.to_string_lossy().contains(".."),
        "paths are normalized"
    );

    let site = edge
        .routes
        .iter()
        .find(|r| r.name == "site")
        .expect("route site");
    let RouteTarget::Static(static_site) = &site.target else {
        panic!("route site is not static: {site:?}");
    };
    assert!(static_site.root.join("index.html").is_file());
    assert!(static_site.root.join("404.html").is_file());
    let api = edge
        .routes
        .iter()
        .find(|r| r.name == "api")
        .expect("route api");
    assert_eq!(api.path_prefix, "/api");
    assert_eq!(api.target, RouteTarget::Upstream("api".into()));
    assert_eq!(edge.upstreams["api"].targets, ["127.0.0.1:9000"]);
    assert_eq!(site.cache, None, "static routes are not cached");
    assert_eq!(site.rate_limits, ["site-per-ip"]);
    assert_eq!(
        edge.rate_limits["site-per-ip"],
        RateLimitPolicy {
            name: "site-per-ip".into(),
            rate: 50,
            period: Duration::from_secs(1),
            burst: 100,
            penalty: None,
            key: RateLimitKey::ClientIp {
                ipv4_prefix: 32,
                ipv6_prefix: 64
            },
            max_keys: 100_000,
            headers_on_allowed: false,
        }
    );
    assert!(
        api.rate_limits.is_empty(),
        "/api is left to a Wasm rate limiter"
    );
    assert_eq!(
        api.cache,
        Some(RouteCache {
            class: ClassChoice::Fixed(ContentClassName::Api),
            ignore_query: vec![
                "utm_source".into(),
                "utm_medium".into(),
                "utm_campaign".into()
            ],
            ..RouteCache::default()
        })
    );
    assert_eq!(
        bootstrap.cache,
        CacheSettings::default(),
        "node.toml spells out the defaults"
    );
    let cache_dir = bootstrap.wasm.artifact_cache.as_deref();
    assert!(
        cache_dir.is_none_or(std::path::Path::is_absolute),
        "{cache_dir:?}"
    );
    check_modules("us-east-1", &bootstrap, &edge);
}

#[test]
fn every_region_loads() {
    let regions = regions();
    assert_eq!(
        regions,
        [
            "ap-southeast-1",
            "ap-southeast-2",
            "eu-central-1",
            "us-east-1",
            "us-west-2"
        ]
    );
    let node = repo().join("edge-config/node.toml");
    for region in regions {
        let overrides = Overrides {
            region: Some(region.clone()),
            ..Overrides::default()
        };
        let (bootstrap, edge) =
            load(&node, &overrides).unwrap_or_else(|e| panic!("region {region}:\n{e}"));
        assert_eq!(bootstrap.region, region);
        assert_eq!(edge.region, region);
        // Every region labels its responses.
        for route in &edge.routes {
            let label = route
                .response_headers
                .iter()
                .find(|(name, _)| name == "x-edge-region")
                .map(|(_, value)| value.to_str().unwrap());
            assert_eq!(
                label,
                Some(region.as_str()),
                "route {} in {region}",
                route.name
            );
        }
        // Regions away from the origin go through an https origin shield.
        let api = &edge.upstreams["api"];
        let expected = if region == "us-east-1" {
            Scheme::Http
        } else {
            Scheme::Https
        };
        assert_eq!(api.scheme, expected, "{region}");
        // Every region rate-limits the site with a policy that exists.
        let site = edge.routes.iter().find(|r| r.name == "site").unwrap();
        assert!(!site.rate_limits.is_empty(), "{region}");
        for name in &site.rate_limits {
            assert!(edge.rate_limits.contains_key(name), "{region}: {name}");
        }
        check_modules(&region, &bootstrap, &edge);
        common::round_trip(&bootstrap, &edge, &render_effective(&bootstrap, &edge));
    }
}

/// Whatever Wasm modules the shipped data wires in: every filter and handler
/// names a module that exists, no module is both, every component file
/// exists, and every module fits the engine's memory ceiling.
fn check_modules(region: &str, bootstrap: &Bootstrap, edge: &EdgeConfig) {
    for module in edge.modules.values() {
        assert!(
            module.path.is_absolute() && module.path.is_file(),
            "{region}: module {}: {}",
            module.name,
            module.path.display()
        );
        assert!(
            module.memory_limit_bytes <= bootstrap.wasm.max_memory_bytes,
            "{region}: module {}",
            module.name
        );
    }
    let mut filters = BTreeSet::new();
    let mut handlers = BTreeSet::new();
    for route in &edge.routes {
        for filter in &route.filters {
            filters.insert(filter.module.as_str());
        }
        if let RouteTarget::Handler(handler) = &route.target {
            handlers.insert(handler.module.as_str());
            for backend in &handler.backends {
                assert!(edge.upstreams.contains_key(backend), "{region}: {backend}");
            }
        }
    }
    for name in filters.iter().chain(&handlers) {
        assert!(edge.modules.contains_key(*name), "{region}: module {name}");
    }
    assert!(filters.is_disjoint(&handlers), "{region}");
}
