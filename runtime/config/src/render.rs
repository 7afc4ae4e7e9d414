//! The effective configuration as TOML text, in the files' own schema with every default filled in (`cathedral config check`).

use std::path::Path;

use crate::edge::host_text;
use crate::error::{toml_key, toml_string};
use crate::modules::fail_text;
use crate::size::{format_duration, format_size};
use crate::types::{
    Bootstrap, BundleSettings, CacheMode, CacheSettings, ClassChoice, ContentClassName, EdgeConfig,
    HostHeader, IntegrityCheck, ModuleConfig, RateLimitKey, RateLimitPolicy, Route, RouteCache,
    RouteTarget, Scheme, TlsVersion, Upstream, UpstreamProtocol, WasmSettings,
};
use crate::validate::{rate_limit_key_text, user_id_text};

/// Renders `bootstrap` and `edge` as one TOML document: the bootstrap
/// tables (`[node]`, `[[listen]]`, `[[tls.certificates]]`, `[admin]`,
/// `[limits]`, `[cache]`, `[wasm]`, `[bundles]` in bundle mode), then the edge tables (`[upstreams.*]`,
/// `[rate_limits.*]`, `[modules.*]`, `[routes.*]` with their
/// `[[routes.*.filters]]`).
/// A module's `config` is shown as the strings the module reads.
/// Every default is written out; paths are absolute; the admin token is
/// shown as `"<redacted>"`. Each part parses back to the same values.
pub fn render_effective(bootstrap: &Bootstrap, edge: &EdgeConfig) -> String {
    let mut doc = Doc::default();
    doc.line("# Effective configuration: every default filled in, relative paths resolved.");
    doc.line(&format!(
        "# Bootstrap (node-local) tables first, then the edge config merged with the overlay of region {}.",
        toml_string(&edge.region)
    ));
    render_bootstrap(&mut doc, bootstrap);
    render_edge(&mut doc, edge);
    doc.0
}

#[derive(Default)]
struct Doc(String);

impl Doc {
    fn line(&mut self, line: &str) {
        self.0.push_str(line);
        self.0.push('\n');
    }

    fn table(&mut self, header: &str) {
        self.0.push('\n');
        self.line(header);
    }

    fn value(&mut self, key: &str, value: &str) {
        self.line(&format!("{} = {value}", toml_key(key)));
    }

    fn string(&mut self, key: &str, value: &str) {
        self.value(key, &toml_string(value));
    }

    fn path(&mut self, key: &str, path: &Path) {
        self.string(key, &path.to_string_lossy());
    }

    fn strings<S: AsRef<str>>(&mut self, key: &str, values: &[S]) {
        let items: Vec<String> = values.iter().map(|v| toml_string(v.as_ref())).collect();
        self.value(key, &format!("[{}]", items.join(", ")));
    }
}

fn tls_version(version: TlsVersion) -> &'static str {
    match version {
        TlsVersion::Tls12 => "1.2",
        TlsVersion::Tls13 => "1.3",
    }
}

fn render_bootstrap(doc: &mut Doc, b: &Bootstrap) {
    doc.table("[node]");
    doc.string("region", &b.region);
    doc.path("edge_config", &b.edge_config);
    doc.path("regions_dir", &b.regions_dir);
    let proxies: Vec<String> = b.trusted_proxies.iter().map(ToString::to_string).collect();
    doc.strings("trusted_proxies", &proxies);
    if let Some(h) = &b.country_header {
        doc.string("country_header", h.as_str());
    }
    if let Some(p) = &b.geoip_db {
        doc.path("geoip_db", p);
    }

    for listener in &b.listeners {
        doc.table("[[listen]]");
        doc.string("addr", &listener.addr.to_string());
        doc.value("tls", "false");
        doc.value("proxy_protocol", &listener.proxy_protocol.to_string());
    }
    for listener in &b.tls_listeners {
        doc.table("[[listen]]");
        doc.string("addr", &listener.addr.to_string());
        doc.value("tls", "true");
        doc.value("proxy_protocol", &listener.proxy_protocol.to_string());
        doc.string("min_version", tls_version(listener.min_version));
    }
    if b.listeners.is_empty() && b.tls_listeners.is_empty() {
        doc.table("# no listeners");
    }
    // Every TLS listener carries all certificates; show them once.
    if let Some(listener) = b.tls_listeners.first() {
        for certificate in &listener.certificates {
            doc.table("[[tls.certificates]]");
            doc.strings("server_names", &certificate.server_names);
            doc.path("cert", &certificate.cert);
            doc.path("key", &certificate.key);
        }
    }

    doc.table("[admin]");
    doc.string("listen", &b.admin.listen.to_string());
    match &b.admin.token {
        Some(_) => doc.string("token", "<redacted>"),
        None => doc.line("# token: not set (allowed because the admin address is loopback)"),
    }

    let l = &b.limits;
    doc.table("[limits]");
    doc.string(
        "max_header_bytes",
        &format_size(u64::try_from(l.max_header_bytes).unwrap_or(u64::MAX)),
    );
    doc.value("max_headers", &l.max_headers.to_string());
    doc.string("max_body_bytes", &format_size(l.max_body_bytes));
    doc.string(
        "header_read_timeout",
        &format_duration(l.header_read_timeout),
    );
    doc.string("idle_timeout", &format_duration(l.idle_timeout));
    doc.value("max_connections", &l.max_connections.to_string());
    doc.string("shutdown_grace", &format_duration(l.shutdown_grace));

    render_cache(doc, &b.cache);
    render_wasm(doc, &b.wasm);
    if let Some(bundles) = &b.bundles {
        render_bundles(doc, bundles);
    }
}

fn render_bundles(doc: &mut Doc, b: &BundleSettings) {
    doc.table("[bundles]");
    doc.strings("origins", &b.origins);
    doc.string("environment", &b.environment);
    doc.strings("root_keys", &b.root_keys);
    doc.value("root_threshold", &b.root_threshold.to_string());
    doc.path("state_dir", &b.state_dir);
    doc.string("poll_interval", &format_duration(b.poll_interval));
    doc.string("fetch_timeout", &format_duration(b.fetch_timeout));
    doc.string("max_manifest", &format_size(b.max_manifest_bytes));
    doc.string("max_bundle", &format_size(b.max_bundle_bytes));
    doc.value("keep", &b.keep.to_string());
    doc.string("health_grace", &format_duration(b.health_grace));
}

fn render_wasm(doc: &mut Doc, w: &WasmSettings) {
    doc.table("[wasm]");
    match &w.artifact_cache {
        Some(path) => doc.path("artifact_cache", path),
        None => doc.line(
            "artifact_cache = false # no artifact cache: modules are compiled at every start",
        ),
    }
    doc.value("max_instances", &w.max_instances.to_string());
    doc.string("max_memory", &format_size(w.max_memory_bytes));
}

fn render_module(doc: &mut Doc, module: &ModuleConfig) {
    let name = toml_key(&module.name);
    doc.table(&format!("[modules.{name}]"));
    doc.path("path", &module.path);
    doc.string("cpu_deadline", &format_duration(module.cpu_deadline));
    doc.string("wall_timeout", &format_duration(module.wall_timeout));
    doc.string("memory", &format_size(module.memory_limit_bytes));
    doc.strings("rate_limits", &module.rate_limits);
    // The values as the module reads them: every one a string.
    doc.table(&format!("[modules.{name}.config]"));
    for (key, value) in &module.config {
        doc.string(key, value);
    }
}

fn render_filters(doc: &mut Doc, route: &Route) {
    for filter in &route.filters {
        doc.table(&format!("[[routes.{}.filters]]", toml_key(&route.name)));
        doc.string("module", &filter.module);
        doc.string("fail", fail_text(filter.fail));
        doc.value("response_body", &filter.response_body.to_string());
        doc.string("max_body", &format_size(filter.max_body_bytes));
    }
}

fn render_cache(doc: &mut Doc, c: &CacheSettings) {
    doc.table("[cache]");
    doc.string("memory", &format_size(c.memory_bytes));
    doc.string("max_object_size", &format_size(c.max_object_bytes));
    let integrity = match c.integrity {
        IntegrityCheck::Sample(n) => format!("1/{n}"),
        IntegrityCheck::Always => String::from("always"),
    };
    doc.string("integrity", &integrity);
    doc.value("scrub_per_second", &c.scrub_per_second.to_string());
    doc.string("coalesce_timeout", &format_duration(c.coalesce_timeout));
    doc.value("coalesce_max_waiters", &c.coalesce_max_waiters.to_string());
}

/// The TOML spelling of a class choice (`"auto"`, `"none"`, `"per-user"`, ...).
pub(crate) fn class_text(class: ClassChoice) -> &'static str {
    match class {
        ClassChoice::Auto => "auto",
        ClassChoice::Disabled => "none",
        ClassChoice::Fixed(name) => match name {
            ContentClassName::Image => "image",
            ContentClassName::Fingerprinted => "fingerprinted",
            ContentClassName::Font => "font",
            ContentClassName::Video => "video",
            ContentClassName::Api => "api",
            ContentClassName::PerUser => "per-user",
            ContentClassName::RealTime => "realtime",
        },
    }
}

fn render_route_cache(doc: &mut Doc, route: &Route, cache: &RouteCache) {
    doc.table(&format!("[routes.{}.cache]", toml_key(&route.name)));
    let mode = match cache.mode {
        CacheMode::Origin => "origin",
        CacheMode::Override => "override",
    };
    doc.string("mode", mode);
    match cache.ttl {
        Some(ttl) => doc.string("ttl", &format_duration(ttl)),
        None if cache.class == ClassChoice::Disabled => {
            doc.line("# ttl: not set, only the origin's headers decide freshness");
        }
        None => {
            doc.line(
                "# ttl: not set, the class default applies when the origin gives no freshness",
            );
        }
    }
    doc.string("class", class_text(cache.class));
    doc.strings("ignore_query", &cache.ignore_query);
    doc.value("sort_query", &cache.sort_query.to_string());
    let key_headers: Vec<&str> = cache.key_headers.iter().map(|h| h.as_str()).collect();
    doc.strings("key_headers", &key_headers);
    doc.value("store_set_cookie", &cache.store_set_cookie.to_string());
    doc.value(
        "forward_cdn_cache_control",
        &cache.forward_cdn_cache_control.to_string(),
    );
}

fn render_edge(doc: &mut Doc, edge: &EdgeConfig) {
    if edge.upstreams.is_empty() {
        doc.table("# no upstreams");
    }
    for upstream in edge.upstreams.values() {
        render_upstream(doc, upstream);
    }
    for policy in edge.rate_limits.values() {
        render_rate_limit(doc, policy);
    }
    for module in edge.modules.values() {
        render_module(doc, module);
    }
    if edge.routes.is_empty() {
        doc.table("# no routes: every request is answered 404");
    }
    for route in &edge.routes {
        doc.table(&format!("[routes.{}]", toml_key(&route.name)));
        let hosts: Vec<String> = if route.hosts.is_empty() {
            vec![String::from("*")]
        } else {
            route.hosts.iter().map(host_text).collect()
        };
        doc.strings("hosts", &hosts);
        doc.string("path", &route.path_prefix);
        match &route.target {
            RouteTarget::Static(site) => {
                doc.path("static", &site.root);
                doc.string("index", &site.index);
            }
            RouteTarget::Handler(handler) => {
                doc.string("handler", &handler.module);
                doc.strings("backends", &handler.backends);
            }
            RouteTarget::Upstream(name) => {
                doc.string("upstream", name);
                let host_header = match &route.host_header {
                    HostHeader::Preserve => "preserve",
                    HostHeader::Upstream => "upstream",
                    HostHeader::Fixed(host) => host,
                };
                doc.string("host_header", host_header);
            }
        }
        if route.cache.is_none() {
            doc.value("cache", "false");
        }
        if !route.rate_limits.is_empty() {
            doc.strings("rate_limits", &route.rate_limits);
        }
        if let Some(source) = &route.user_id {
            doc.string("user_id", &user_id_text(source));
        }
        render_filters(doc, route);
        if !route.response_headers.is_empty() {
            doc.table(&format!(
                "[routes.{}.response_headers]",
                toml_key(&route.name)
            ));
            for (name, value) in &route.response_headers {
                let value = String::from_utf8_lossy(value.as_bytes());
                doc.string(name.as_str(), &value);
            }
        }
        if let Some(cache) = &route.cache {
            render_route_cache(doc, route, cache);
        }
    }
}

fn render_rate_limit(doc: &mut Doc, policy: &RateLimitPolicy) {
    doc.table(&format!("[rate_limits.{}]", toml_key(&policy.name)));
    doc.value("rate", &policy.rate.to_string());
    doc.string("per", &format_duration(policy.period));
    doc.value("burst", &policy.burst.to_string());
    match policy.penalty {
        Some(penalty) => doc.string("penalty", &format_duration(penalty)),
        None => doc.line(
            "# penalty: not set, a refused key is allowed again as soon as its bucket has room",
        ),
    }
    doc.string("key", &rate_limit_key_text(&policy.key));
    if let RateLimitKey::ClientIp {
        ipv4_prefix,
        ipv6_prefix,
    } = policy.key
    {
        doc.value("ipv4_prefix", &ipv4_prefix.to_string());
        doc.value("ipv6_prefix", &ipv6_prefix.to_string());
    }
    doc.value("max_keys", &policy.max_keys.to_string());
    doc.string(
        "headers",
        if policy.headers_on_allowed {
            "always"
        } else {
            "limited"
        },
    );
}

fn render_upstream(doc: &mut Doc, upstream: &Upstream) {
    doc.table(&format!("[upstreams.{}]", toml_key(&upstream.name)));
    let scheme = match upstream.scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    let targets: Vec<String> = upstream
        .targets
        .iter()
        .map(|t| format!("{scheme}://{t}"))
        .collect();
    doc.strings("targets", &targets);
    let protocol = match upstream.protocol {
        UpstreamProtocol::Http1 => "http1",
        UpstreamProtocol::Http2 => "h2",
    };
    doc.string("protocol", protocol);
    doc.string(
        "connect_timeout",
        &format_duration(upstream.connect_timeout),
    );
    doc.string(
        "first_byte_timeout",
        &format_duration(upstream.first_byte_timeout),
    );
    doc.string("total_timeout", &format_duration(upstream.total_timeout));
    doc.string(
        "pool_idle_timeout",
        &format_duration(upstream.pool_idle_timeout),
    );
    doc.value("pool_max_idle", &upstream.pool_max_idle.to_string());
    if let Some(tls) = &upstream.tls {
        match &tls.ca_file {
            Some(path) => doc.path("ca_file", path),
            None => doc.line("# ca_file: not set, the system roots are trusted"),
        }
        match &tls.server_name {
            Some(name) => doc.string("server_name", name),
            None => doc.line("# server_name: not set, each target's host is verified"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spelling the parser accepts renders back to itself.
    #[test]
    fn class_spellings_round_trip() {
        for text in crate::raw::RawClass::CHOICES {
            let value: toml::Value = toml::Value::String((*text).to_owned());
            let parsed: crate::raw::RawClass = value.try_into().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(class_text(parsed.0), *text);
        }
    }

    #[test]
    fn rate_limit_headers_spellings_round_trip() {
        for text in crate::raw::RawRateLimitHeaders::CHOICES {
            let value = toml::Value::String((*text).to_owned());
            let parsed: crate::raw::RawRateLimitHeaders =
                value.try_into().unwrap_or_else(|e| panic!("{e}"));
            let rendered = if parsed.0 { "always" } else { "limited" };
            assert_eq!(rendered, *text);
        }
    }
}
