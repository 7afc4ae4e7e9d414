//! One test per guest, named after it (see `every_guest_is_tested`).

use std::time::{Duration, Instant};

use cathedral_wasm::{ErrorKind, LogRate, ModuleSettings, RequestAction, ResponseAction};
use cathedral_wasm_test_artifacts as guests;
use http_body_util::BodyExt;

use crate::common::{self, Req, Resp, client, load, settings};

#[tokio::test]
pub(crate) async fn personalize() {
    let engine = common::engine();
    let module = load(
        &engine,
        "personalize",
        guests::PERSONALIZE,
        settings(&[
            ("experiment.hero", r#"["control", "bold"]"#),
            ("flag.new-nav", "100%"),
        ]),
    )
    .await;
    let resp = Resp::new(200, &[("content-type", "text/html")], None);
    let action = common::on_response(
        &module,
        &Req::get("/"),
        &resp,
        &client(Some("u-1"), None, "us-east-1"),
    )
    .await;
    let header = common::set_values(&action, "x-personalization");
    assert_eq!(header.len(), 1, "{action:?}");
    assert!(header[0].ends_with("flag.new-nav=on"), "{header:?}");
    assert_eq!(common::set_values(&action, "cache-control"), ["private"]);
}

#[tokio::test]
pub(crate) async fn compliance() {
    let engine = common::engine();
    let module = load(
        &engine,
        "compliance",
        guests::COMPLIANCE,
        settings(&[(
            "blocks",
            r#"[{"paths": ["/casino"], "countries": ["DE"], "policy": "https://example.com/policy"}]"#,
        )]),
    )
    .await;
    let env = client(None, Some("DE"), "eu-central-1");
    let RequestAction::Respond(response) =
        common::on_request(&module, &Req::get("/casino/roulette"), &env).await
    else {
        panic!("expected a 451");
    };
    assert_eq!(response.status(), 451);
    assert_eq!(
        response.headers()["link"],
        "<https://example.com/policy>; rel=\"blocked-by\""
    );
    let elsewhere = client(None, Some("US"), "eu-central-1");
    assert!(matches!(
        common::on_request(&module, &Req::get("/casino/roulette"), &elsewhere).await,
        RequestAction::Continue
    ));
}

#[tokio::test]
pub(crate) async fn empty_filter() {
    let engine = common::engine();
    let module = load(&engine, "empty-filter", guests::EMPTY_FILTER, settings(&[])).await;
    let env = client(Some("u"), Some("SE"), "eu-central-1");
    let req = Req::with("/a?b=c", &[("cookie", "a=1"), ("accept", "text/html")]);
    for _ in 0..50 {
        assert!(matches!(
            common::on_request(&module, &req, &env).await,
            RequestAction::Continue
        ));
    }
    let resp = Resp::new(200, &[("content-type", "text/html")], Some("<p>hi</p>"));
    assert!(matches!(
        common::on_response(&module, &req, &resp, &env).await,
        ResponseAction::Pass
    ));
    let stats = module.stats();
    assert_eq!((stats.calls, stats.total_failures()), (51, 0));
}

/// Two runaway guests on a 2-worker runtime: a healthy call completes while
/// both still run (they yield every epoch tick), then both are stopped at
/// their CPU deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn infinite_loop() {
    let engine = common::engine();
    let deadline = Duration::from_millis(300);
    let looping = load(
        &engine,
        "infinite-loop",
        guests::INFINITE_LOOP,
        ModuleSettings {
            cpu_deadline: deadline,
            ..settings(&[])
        },
    )
    .await;
    let healthy = load(&engine, "empty-filter", guests::EMPTY_FILTER, settings(&[])).await;
    let env = client(None, None, "us-east-1");

    let runaways: Vec<_> = (0..2)
        .map(|_| {
            let (module, env) = (looping.clone(), env.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let result = module.on_request(Req::get("/").head(), &env).await;
                (result, started.elapsed())
            })
        })
        .collect();
    while looping.stats().calls < 2 {
        tokio::task::yield_now().await;
    }
    for _ in 0..3 {
        let (module, env) = (healthy.clone(), env.clone());
        let result =
            tokio::spawn(async move { module.on_request(Req::get("/").head(), &env).await })
                .await
                .expect("task");
        assert!(matches!(result, Ok(RequestAction::Continue)), "{result:?}");
    }
    assert!(
        runaways.iter().all(|r| !r.is_finished()),
        "the healthy calls completed while both runaways were still running"
    );
    for runaway in runaways {
        let (result, took) = runaway.await.expect("task");
        let e = result.expect_err("a runaway cannot succeed");
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert!(
            matches!(e, cathedral_wasm::Error::Timeout { wall: false, limit, .. } if limit == deadline),
            "{e}"
        );
        assert!(
            took >= deadline,
            "stopped after {took:?}, before its CPU deadline"
        );
    }
    let stats = looping.stats();
    assert_eq!(stats.failures(ErrorKind::Timeout), 2);
    assert_eq!(stats.consecutive_failures, 2);

    // The hook that spins is configurable: a looping on-response times out too.
    let on_response = looping
        .with_settings(ModuleSettings {
            cpu_deadline: Duration::from_millis(20),
            ..settings(&[("hook", "response")])
        })
        .expect("settings");
    let req = Req::get("/");
    assert!(matches!(
        common::on_request(&on_response, &req, &env).await,
        RequestAction::Continue
    ));
    let resp = Resp::new(200, &[], None);
    let e = on_response
        .on_response(req.head(), resp.parts(), &env)
        .await
        .expect_err("spins");
    assert_eq!(e.kind(), ErrorKind::Timeout);
}

#[tokio::test]
pub(crate) async fn memory_bomb() {
    let engine = common::engine();
    let module = load(
        &engine,
        "memory-bomb",
        guests::MEMORY_BOMB,
        ModuleSettings {
            memory_limit: 16 << 20,
            ..settings(&[])
        },
    )
    .await;
    let env = client(None, None, "us-east-1");
    let e = module
        .on_request(Req::get("/").head(), &env)
        .await
        .expect_err("cannot allocate 1 GiB in 16 MiB");
    assert_eq!(e.kind(), ErrorKind::Oom, "{e}");
    assert!(e.to_string().contains("16777216"), "{e}");
    // Under its limit the same module completes: the limit is per module.
    let modest = module
        .with_settings(ModuleSettings {
            memory_limit: 16 << 20,
            ..settings(&[("bytes", "4194304")])
        })
        .expect("settings");
    assert!(matches!(
        common::on_request(&modest, &Req::get("/"), &env).await,
        RequestAction::Continue
    ));
    assert_eq!(module.stats().failures(ErrorKind::Oom), 1);
}

#[tokio::test]
pub(crate) async fn deep_recursion() {
    let engine = common::engine();
    let module = load(
        &engine,
        "deep-recursion",
        guests::DEEP_RECURSION,
        settings(&[]),
    )
    .await;
    let env = client(None, None, "us-east-1");
    let e = module
        .on_request(Req::get("/").head(), &env)
        .await
        .expect_err("overflows");
    assert_eq!(e.kind(), ErrorKind::Trap, "{e}");
    assert!(e.to_string().contains("call stack exhausted"), "{e}");
    let shallow = module
        .with_settings(settings(&[("depth", "100")]))
        .expect("settings");
    assert!(matches!(
        common::on_request(&shallow, &Req::get("/"), &env).await,
        RequestAction::Continue
    ));
}

#[tokio::test]
pub(crate) async fn panic() {
    let engine = common::engine();
    let module = load(&engine, "panic", guests::PANIC, settings(&[])).await;
    let env = client(None, None, "us-east-1");
    let e = module
        .on_request(Req::get("/").head(), &env)
        .await
        .expect_err("panics");
    assert_eq!(e.kind(), ErrorKind::Trap, "{e}");
    assert!(e.to_string().contains("fixture panic: boom"), "{e}");
    let custom = module
        .with_settings(settings(&[("message", "custom message 42")]))
        .expect("settings");
    let e = custom
        .on_request(Req::get("/").head(), &env)
        .await
        .expect_err("panics");
    assert!(e.to_string().contains("custom message 42"), "{e}");
    // The host is unharmed and the next call is a fresh instance.
    let e = module
        .on_request(Req::get("/").head(), &env)
        .await
        .expect_err("panics");
    assert_eq!(e.kind(), ErrorKind::Trap);
    assert_eq!(module.stats().failures(ErrorKind::Trap), 3);
}

#[tokio::test]
pub(crate) async fn giant_output() {
    let engine = common::engine_with(|c| {
        c.log_rate = LogRate {
            per_second: 1,
            burst: 50,
        };
    });
    let (lines, width) = (2_000u64, 2_000u64);
    let module = load(
        &engine,
        "giant-output",
        guests::GIANT_OUTPUT,
        ModuleSettings {
            cpu_deadline: Duration::from_secs(20),
            ..settings(&[
                ("lines", &lines.to_string()),
                ("line_bytes", &width.to_string()),
                ("log_lines", "1000"),
            ])
        },
    )
    .await;
    let env = client(None, None, "us-east-1");
    let started = Instant::now();
    assert!(matches!(
        common::on_request(&module, &Req::get("/"), &env).await,
        RequestAction::Continue
    ));
    let stats = module.stats();
    // Output beyond 64 KiB per call is dropped, exactly.
    let written = 2 * lines * (width + 1);
    assert_eq!(stats.output_bytes_dropped, written - 64 * 1024);
    // Lines (captured output and `log` calls alike) are bounded by the rate:
    // a burst of 50 plus one per second.
    let allowed = 50 + started.elapsed().as_secs() + 1;
    assert!(stats.log_lines <= allowed, "{stats:?}");
    assert!(stats.log_lines_dropped >= 1_000 - allowed, "{stats:?}");
}

#[tokio::test]
pub(crate) async fn bad_import() {
    let engine = common::engine();
    let bytes = std::fs::read(guests::BAD_IMPORT).expect("read");
    let e = engine
        .load("bad-import", bytes.clone(), settings(&[]))
        .await
        .expect_err("imports something we do not provide");
    assert_eq!(e.kind(), ErrorKind::Load, "{e}");
    assert!(
        e.to_string()
            .contains("imports instance `fixture:secrets/vault`"),
        "the error names the import: {e}"
    );
    let report = cathedral_wasm::check_component(bytes)
        .await
        .expect("a valid component");
    assert_eq!(report.kind(), None);
    let why = report.filter.clone().expect_err("not a filter");
    assert!(why.contains("fixture:secrets/vault"), "{why}");
    assert!(report.imports.iter().any(|i| i == "fixture:secrets/vault"));
    assert!(report.to_string().contains("not a filter"), "{report}");
}

#[tokio::test]
pub(crate) async fn hello_handler() {
    let engine = common::engine();
    let module = load(
        &engine,
        "hello-handler",
        guests::HELLO_HANDLER,
        settings(&[]),
    )
    .await;
    assert_eq!(module.kind(), cathedral_wasm::ModuleKind::Handler);
    let report = engine
        .check(std::fs::read(guests::HELLO_HANDLER).expect("read"))
        .await
        .expect("valid");
    assert_eq!(report.kind(), Some(cathedral_wasm::ModuleKind::Handler));
    assert!(report.to_string().starts_with("ok: a handler"), "{report}");
    assert!(
        report
            .exports
            .iter()
            .any(|e| e == "wasi:http/incoming-handler@0.2.12")
    );
    let env = client(Some("u-9"), None, "us-east-1");
    let get = |uri: &str| {
        http::Request::get(uri)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request")
    };
    let response = module
        .handle(get("http://www.example.com/hi?x=1"), &env)
        .await
        .expect("handled");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, "hello from a wasi:http handler /hi?x=1\n");

    let greeting = module
        .with_settings(settings(&[("greeting", "bonjour")]))
        .expect("settings");
    let response = greeting
        .handle(get("http://www.example.com/"), &env)
        .await
        .expect("handled");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, "bonjour /\n");
    assert_eq!(module.stats().calls, 2);
}

/// A smoke test; `tests/ratelimit_module.rs` covers the module in full. The
/// config is TOML through the node's validation, which flattens its tables
/// into the dotted keys the module reads.
#[tokio::test]
pub(crate) async fn ratelimit() {
    use cathedral_config::{Source, parse_edge};
    use cathedral_limits::{Limiter, PolicySpec, Quota};
    use cathedral_wasm::{ModuleConfig, RateLimitPolicy, RateLimits};
    use std::{num::NonZeroU32, path::Path, sync::Arc};

    let wasm = Path::new(guests::RATELIMIT);
    let text = format!(
        r#"
[rate_limits.anon]
rate = 1
per = "1h"

[modules.ratelimit]
path = {:?}
rate_limits = ["anon"]

[modules.ratelimit.config]
exempt = ["/health"]

[modules.ratelimit.config.anonymous]
policy = "anon"
quota = 1
window = 3600
"#,
        wasm.file_name()
            .and_then(|n| n.to_str())
            .expect("file name")
    );
    let source = Source {
        name: Path::new("edge.toml"),
        text: &text,
        base_dir: wasm.parent().expect("directory"),
    };
    let edge = parse_edge(source, None, "us-east-1").unwrap_or_else(|e| panic!("{e}\n{text}"));
    let config = edge.modules["ratelimit"].config.clone();
    assert_eq!(config["anonymous.policy"], "anon");

    let one = NonZeroU32::MIN;
    let quota = Quota::new(one, Duration::from_secs(3600), one).expect("quota");
    let anon: Arc<dyn RateLimitPolicy> =
        Arc::new(Limiter::new(PolicySpec::new("anon", quota)).expect("limiter"));
    let engine = common::engine();
    let module = load(
        &engine,
        "ratelimit",
        guests::RATELIMIT,
        ModuleSettings {
            config: ModuleConfig::new(config),
            rate_limits: RateLimits::new([("anon".to_owned(), anon)]),
            ..ModuleSettings::default()
        },
    )
    .await;
    let env = client(None, None, "us-east-1");
    assert!(matches!(
        common::on_request(&module, &Req::get("/api"), &env).await,
        RequestAction::Continue
    ));
    let RequestAction::Respond(response) =
        common::on_request(&module, &Req::get("/api"), &env).await
    else {
        panic!("expected a 429");
    };
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3600");
    assert_eq!(
        response.headers()["ratelimit-policy"],
        r#""anon";q=1;w=3600"#
    );
    assert!(matches!(
        common::on_request(&module, &Req::get("/health"), &env).await,
        RequestAction::Continue
    ));
}
