//! Benchmarks of `cathedral-wasm`: what one filter call costs the request
//! path — a fresh store and instance of the empty filter plus the call of
//! its `on-request` (target: under 10 µs) and `on-response` — with the
//! production engine (pooling allocator, epoch interruption), beside the
//! same call on an engine that allocates instances on demand (the naive
//! baseline), and the `personalize` module on an HTML page for scale.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use cathedral_wasm::{
    ClientInfo, EngineConfig, Module, ModuleConfig, ModuleSettings, RequestEnv, RequestHead,
    ResponseParts, WasmEngine,
};
use cathedral_wasm_test_artifacts as guests;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn load(
    rt: &Runtime,
    engine: &WasmEngine,
    name: &str,
    path: &str,
    settings: ModuleSettings,
) -> Module {
    let bytes = std::fs::read(path).expect("guest built by cathedral-wasm-test-artifacts");
    rt.block_on(engine.load(name, bytes, settings))
        .expect("load")
}

/// A browser-like request: eight headers, a cookie.
fn request() -> http::request::Parts {
    http::Request::get("/products/42?ref=home")
        .header("host", "www.example.com")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        )
        .header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )
        .header("accept-language", "en-US,en;q=0.5")
        .header("accept-encoding", "gzip, deflate, br")
        .header("cookie", "uid=u-12345; theme=dark; _ga=GA1.2.3.4")
        .header("sec-fetch-mode", "navigate")
        .header("upgrade-insecure-requests", "1")
        .body(())
        .expect("request")
        .into_parts()
        .0
}

fn env() -> RequestEnv {
    RequestEnv::new(ClientInfo {
        ip: IpAddr::from([203, 0, 113, 7]),
        country: Some("DE".into()),
        region: Arc::from("eu-central-1"),
        user_id: Some("u-12345".into()),
    })
}

fn bench_empty_filter(c: &mut Criterion) {
    let rt = runtime();
    let pooled = WasmEngine::new(EngineConfig::default()).expect("engine");
    let on_demand = WasmEngine::new(EngineConfig {
        pooling: None,
        ..EngineConfig::default()
    })
    .expect("engine");
    let parts = request();
    let env = env();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("text/html"));
    headers.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=60"),
    );

    let mut group = c.benchmark_group("wasm/empty-filter");
    for (label, engine) in [("pooling", &pooled), ("on-demand", &on_demand)] {
        let module = load(
            &rt,
            engine,
            "empty",
            guests::EMPTY_FILTER,
            ModuleSettings::default(),
        );
        group.bench_function(format!("on-request instantiate+call ({label})"), |b| {
            b.iter(|| {
                let head = RequestHead::new(&parts, "https", "www.example.com");
                black_box(
                    rt.block_on(module.on_request(head, &env))
                        .expect("continue"),
                )
            })
        });
        group.bench_function(
            format!("on-response instantiate+call, no body ({label})"),
            |b| {
                b.iter(|| {
                    let head = RequestHead::new(&parts, "https", "www.example.com");
                    let response = ResponseParts {
                        status: StatusCode::OK,
                        headers: &headers,
                        body: None,
                    };
                    black_box(
                        rt.block_on(module.on_response(head, response, &env))
                            .expect("pass"),
                    )
                })
            },
        );
    }
    group.finish();
}

fn bench_personalize(c: &mut Criterion) {
    let rt = runtime();
    let engine = WasmEngine::new(EngineConfig::default()).expect("engine");
    let config: ModuleConfig = [
        ("experiment.hero", r#"["control", "bold"]"#),
        ("flag.new-nav", "10%"),
        ("flag.checkout", "1%"),
    ]
    .into_iter()
    .collect();
    let module = load(
        &rt,
        &engine,
        "personalize",
        guests::PERSONALIZE,
        ModuleSettings {
            config,
            ..ModuleSettings::default()
        },
    );
    let parts = request();
    let env = env();
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=60"),
    );
    let page = format!(
        "<!doctype html><html class=\"{{{{user.flags}}}}\"><body><h1>{{{{variant.hero}}}}</h1>{}</body></html>",
        "<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit.</p>".repeat(160)
    );
    let mut group = c.benchmark_group("wasm/personalize");
    group.bench_function("on-response, 10 KiB HTML page", |b| {
        b.iter(|| {
            let head = RequestHead::new(&parts, "https", "www.example.com");
            let response = ResponseParts {
                status: StatusCode::OK,
                headers: &headers,
                body: Some(page.as_bytes()),
            };
            black_box(
                rt.block_on(module.on_response(head, response, &env))
                    .expect("edit"),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench_empty_filter, bench_personalize);
criterion_main!(benches);
