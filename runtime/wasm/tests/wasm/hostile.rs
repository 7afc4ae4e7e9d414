//! Limits beyond the per-guest tests: pool exhaustion, wall-clock timeouts,
//! calling a module as the wrong kind, and futures that the node can spawn.

use std::time::Duration;

use cathedral_wasm::{ErrorKind, ModuleSettings, PoolingConfig, RequestAction};
use cathedral_wasm_test_artifacts as guests;

use crate::common::{self, Req, client, load, settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_answers_busy_not_a_hang() {
    let engine = common::engine_with(|c| {
        c.pooling = Some(PoolingConfig {
            max_instances: 2,
            ..PoolingConfig::default()
        })
    });
    let looping = load(
        &engine,
        "infinite-loop",
        guests::INFINITE_LOOP,
        ModuleSettings {
            cpu_deadline: Duration::from_secs(2),
            ..settings(&[])
        },
    )
    .await;
    let probe = load(&engine, "empty-filter", guests::EMPTY_FILTER, settings(&[])).await;
    let env = client(None, None, "us-east-1");
    let runaways: Vec<_> = (0..2)
        .map(|_| {
            let (module, env) = (looping.clone(), env.clone());
            tokio::spawn(async move { module.on_request(Req::get("/").head(), &env).await })
        })
        .collect();
    // The fixture logs once it holds an instance, and keeps it for its
    // whole 2 s deadline: once both have logged, the pool is full.
    let waiting = std::time::Instant::now();
    while looping.stats().log_lines < 2 {
        assert!(
            waiting.elapsed() < Duration::from_secs(20),
            "the runaways never started: {:?}",
            looping.stats()
        );
        tokio::task::yield_now().await;
    }
    let busy = probe.on_request(Req::get("/").head(), &env).await.err();
    let busy = busy.expect("a third concurrent instance is refused");
    assert_eq!(busy.kind(), ErrorKind::Busy, "{busy}");
    assert!(busy.to_string().contains("busy"), "{busy}");
    for r in runaways {
        assert_eq!(
            r.await.expect("task").expect_err("runaway").kind(),
            ErrorKind::Timeout
        );
    }
    // Slots come back.
    assert!(matches!(
        common::on_request(&probe, &Req::get("/"), &env).await,
        RequestAction::Continue
    ));
}

#[tokio::test]
async fn the_wall_timeout_bounds_a_call_too() {
    let engine = common::engine();
    let looping = load(
        &engine,
        "infinite-loop",
        guests::INFINITE_LOOP,
        ModuleSettings {
            cpu_deadline: Duration::from_secs(60),
            wall_timeout: Duration::from_millis(100),
            ..settings(&[])
        },
    )
    .await;
    let e = looping
        .on_request(Req::get("/").head(), &client(None, None, "r"))
        .await
        .expect_err("stopped");
    assert!(
        matches!(e, cathedral_wasm::Error::Timeout { wall: true, .. }),
        "{e}"
    );
}

#[tokio::test]
async fn wrong_kinds_and_limits_are_refused() {
    let engine = common::engine();
    let handler = load(
        &engine,
        "hello-handler",
        guests::HELLO_HANDLER,
        settings(&[]),
    )
    .await;
    let e = handler
        .on_request(Req::get("/").head(), &client(None, None, "r"))
        .await
        .expect_err("not a filter");
    assert_eq!(e.kind(), ErrorKind::GuestError);
    let filter = load(&engine, "empty-filter", guests::EMPTY_FILTER, settings(&[])).await;
    let request = http::Request::get("http://h/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("req");
    let e = filter
        .handle(request, &client(None, None, "r"))
        .await
        .expect_err("not a handler");
    assert_eq!(e.kind(), ErrorKind::GuestError);

    let too_big = ModuleSettings {
        memory_limit: 1 << 30,
        ..settings(&[])
    };
    let e = filter
        .with_settings(too_big)
        .expect_err("above the pool's max_memory_size");
    assert_eq!(e.kind(), ErrorKind::Load);

    let e = engine
        .load("junk", &b"not wasm"[..], settings(&[]))
        .await
        .expect_err("junk");
    assert_eq!(e.kind(), ErrorKind::Load);
    assert!(engine.check(&b"\0asm junk"[..]).await.is_err());
}

#[test]
fn calls_are_send_so_the_node_can_spawn_them() {
    fn assert_send<T: Send>(_: &T) {}
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let engine = common::engine();
        let module = load(&engine, "empty-filter", guests::EMPTY_FILTER, settings(&[])).await;
        let env = client(None, None, "r");
        let req = Req::get("/");
        let fut = module.on_request(req.head(), &env);
        assert_send(&fut);
        assert!(matches!(fut.await, Ok(RequestAction::Continue)));
        let request = http::Request::get("http://h/")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("req");
        assert_send(&module.handle(request, &env));
    });
}
