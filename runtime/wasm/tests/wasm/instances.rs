//! [`FilterInstance`]: a filter's two hooks for one request share one
//! instance until it is released or a hook fails.

use std::time::Duration;

use cathedral_wasm::{ErrorKind, FilterInstance, ModuleSettings, RequestAction, ResponseAction};
use cathedral_wasm_test_artifacts as guests;

use crate::common::{self, Req, Resp, client, load, settings};

#[tokio::test]
async fn both_hooks_run_in_one_instance_until_it_is_released() {
    let engine = common::engine();
    let module = load(&engine, "empty-filter", guests::EMPTY_FILTER, settings(&[])).await;
    let env = client(None, None, "us-east-1");
    let (req, resp) = (Req::get("/"), Resp::new(200, &[], None));

    let mut hooks = FilterInstance::new(&module, &env);
    assert!(!hooks.is_live(), "no instance before the first hook");
    let action = hooks.on_request(req.head()).await.expect("on-request");
    assert!(matches!(action, RequestAction::Continue), "{action:?}");
    assert!(hooks.is_live());
    let action = hooks.on_response(req.head(), resp.parts()).await;
    assert!(matches!(action, Ok(ResponseAction::Pass)), "{action:?}");
    let stats = module.stats();
    assert_eq!((stats.calls, stats.instances), (2, 1), "{stats:?}");

    // Released (as before an origin fetch): the next hook makes a new one.
    hooks.release();
    assert!(!hooks.is_live());
    let action = hooks.on_response(req.head(), resp.parts()).await;
    assert!(matches!(action, Ok(ResponseAction::Pass)), "{action:?}");
    let stats = module.stats();
    assert_eq!((stats.calls, stats.instances), (3, 2), "{stats:?}");

    // Another request never shares this one's instance.
    let mut other = FilterInstance::new(&module, &env);
    other.on_request(req.head()).await.expect("on-request");
    assert_eq!(module.stats().instances, 3);
}

#[tokio::test]
async fn a_failed_hook_drops_the_instance() {
    let engine = common::engine();
    let module = load(
        &engine,
        "infinite-loop",
        guests::INFINITE_LOOP,
        ModuleSettings {
            cpu_deadline: Duration::from_millis(100),
            ..settings(&[("hook", "response")])
        },
    )
    .await;
    let env = client(None, None, "us-east-1");
    let (req, resp) = (Req::get("/"), Resp::new(200, &[], None));

    let mut hooks = FilterInstance::new(&module, &env);
    hooks.on_request(req.head()).await.expect("on-request");
    let e = hooks
        .on_response(req.head(), resp.parts())
        .await
        .expect_err("on-response spins");
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(
        !hooks.is_live(),
        "a timed-out instance is never entered again"
    );
    // The next hook on the same request runs in a fresh instance.
    hooks.on_request(req.head()).await.expect("on-request");
    let stats = module.stats();
    assert_eq!((stats.calls, stats.instances), (3, 2), "{stats:?}");
    assert_eq!(stats.failures(ErrorKind::Timeout), 1);
}

#[tokio::test]
async fn each_hook_gets_the_whole_cpu_deadline() {
    let engine = common::engine();
    // Each hook runs for 60% of the deadline: together they would overrun
    // it, each alone does not.
    let module = load(
        &engine,
        "infinite-loop",
        guests::INFINITE_LOOP,
        ModuleSettings {
            cpu_deadline: Duration::from_millis(500),
            wall_timeout: Duration::from_secs(30),
            ..settings(&[("hook", "both"), ("spin_ms", "300")])
        },
    )
    .await;
    let env = client(None, None, "us-east-1");
    let (req, resp) = (Req::get("/"), Resp::new(200, &[], None));
    let mut hooks = FilterInstance::new(&module, &env);
    let action = hooks.on_request(req.head()).await;
    assert!(matches!(action, Ok(RequestAction::Continue)), "{action:?}");
    assert!(hooks.is_live());
    let action = hooks.on_response(req.head(), resp.parts()).await;
    assert!(matches!(action, Ok(ResponseAction::Pass)), "{action:?}");
    let stats = module.stats();
    assert_eq!((stats.calls, stats.instances), (2, 1), "{stats:?}");
}

#[tokio::test]
async fn a_handler_is_not_a_filter_instance() {
    let engine = common::engine();
    let module = load(
        &engine,
        "hello-handler",
        guests::HELLO_HANDLER,
        settings(&[]),
    )
    .await;
    let env = client(None, None, "us-east-1");
    let mut hooks = FilterInstance::new(&module, &env);
    let e = hooks
        .on_request(Req::get("/").head())
        .await
        .expect_err("handler");
    assert_eq!(e.kind(), ErrorKind::GuestError, "{e}");
    assert!(!hooks.is_live());
}
