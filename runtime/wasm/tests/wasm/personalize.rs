//! `personalize` through the host API: assignments are
//! `blake3(flag ‖ user) mod 10000`, stable across calls and engines, each
//! rollout stage contains the previous one, and responses are rendered and
//! made private.

use std::collections::BTreeSet;

use cathedral_wasm::{Module, ModuleSettings, ResponseAction, WasmEngine};
use cathedral_wasm_test_artifacts as guests;

use crate::common::{self, Req, Resp, client, load, settings};

/// The bucket as the module must compute it, independently.
fn bucket(flag: &str, user: &str) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(flag.as_bytes());
    hasher.update(user.as_bytes());
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first) % 10_000
}

const CONFIG: &[(&str, &str)] = &[
    ("experiment.hero", r#"["control", "bold"]"#),
    ("flag.checkout", "1%"),
    ("flag.new-nav", "10%"),
];

async fn personalize(engine: &WasmEngine, config: &[(&str, &str)]) -> Module {
    load(engine, "personalize", guests::PERSONALIZE, settings(config)).await
}

/// The assignments header for `user`.
async fn header(module: &Module, user: Option<&str>) -> String {
    let resp = Resp::new(200, &[("content-type", "text/html; charset=utf-8")], None);
    let action = common::on_response(
        module,
        &Req::get("/"),
        &resp,
        &client(user, None, "us-east-1"),
    )
    .await;
    let mut values = common::set_values(&action, "x-personalization");
    assert_eq!(values.len(), 1, "{action:?}");
    values.remove(0)
}

fn expected(user: &str) -> String {
    let hero = ["control", "bold"][(bucket("hero", user) * 2 / 10_000) as usize];
    let on = |flag, threshold| {
        if bucket(flag, user) < threshold {
            "on"
        } else {
            "off"
        }
    };
    format!(
        "variant.hero={hero}; flag.checkout={}; flag.new-nav={}",
        on("checkout", 100),
        on("new-nav", 1000)
    )
}

#[tokio::test]
async fn assignment_is_the_specified_hash_and_never_flips() {
    let (a, b) = (common::engine(), common::engine());
    let on_a = personalize(&a, CONFIG).await;
    let on_b = personalize(&b, CONFIG).await;
    for user in ["u-1", "u-2", "alice", "bob@example.com", "ünïcode", "42"] {
        let first = header(&on_a, Some(user)).await;
        assert_eq!(first, expected(user), "user {user}");
        for _ in 0..3 {
            assert_eq!(
                header(&on_a, Some(user)).await,
                first,
                "same engine, user {user}"
            );
        }
        assert_eq!(
            header(&on_b, Some(user)).await,
            first,
            "another engine (edge), user {user}"
        );
    }
}

#[tokio::test]
async fn each_stage_contains_the_previous_one() {
    let engine = common::engine();
    let base = personalize(&engine, &[]).await;
    let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let mut previous = BTreeSet::new();
    for (stage, threshold) in [("0.1%", 10), ("1%", 100), ("10%", 1000), ("100%", 10_000)] {
        let module = base
            .with_settings(settings(&[("flag.launch", stage)]))
            .expect("settings");
        let mut enabled = BTreeSet::new();
        for user in &users {
            if header(&module, Some(user)).await == "flag.launch=on" {
                enabled.insert(user.clone());
            }
        }
        let want: BTreeSet<String> = users
            .iter()
            .filter(|u| bucket("launch", u) < threshold)
            .cloned()
            .collect();
        assert_eq!(enabled, want, "stage {stage}");
        assert!(
            previous.is_subset(&enabled),
            "stage {stage} lost users of the previous stage"
        );
        previous = enabled;
    }
    assert_eq!(previous.len(), users.len(), "100% is everyone");
}

#[tokio::test]
async fn weighted_variants_split_users_in_proportion() {
    let engine = common::engine();
    let module = personalize(&engine, &[("experiment.price", r#"["low:90", "high:10"]"#)]).await;
    let mut high = 0;
    for i in 0..400 {
        let user = format!("shopper-{i}");
        let got = header(&module, Some(&user)).await;
        let want = if bucket("price", &user) * 100 / 10_000 < 90 {
            "low"
        } else {
            "high"
        };
        assert_eq!(got, format!("variant.price={want}"), "{user}");
        high += usize::from(want == "high");
    }
    assert!(
        (10..=80).contains(&high),
        "about 10% of 400 get the 10% variant: {high}"
    );
}

#[tokio::test]
async fn html_is_rendered_and_made_private() {
    let engine = common::engine();
    let module = personalize(
        &engine,
        &[
            ("flag.new-nav", "100%"),
            ("experiment.hero", "control,bold"),
        ],
    )
    .await;
    let html = "<p class=\"{{user.flags}}\">{{user.variant}} {{variant.hero}} \
                nav={{flag.new-nav}} {{unknown}}</p>";
    let resp = Resp::new(
        200,
        &[
            ("content-type", "text/html; charset=utf-8"),
            ("cache-control", "public, max-age=60, s-maxage=300"),
        ],
        Some(html),
    );
    let user = "u-77";
    let hero = ["control", "bold"][(bucket("hero", user) * 2 / 10_000) as usize];
    let action = common::on_response(
        &module,
        &Req::get("/"),
        &resp,
        &client(Some(user), None, "us-east-1"),
    )
    .await;
    let ResponseAction::Edit(edit) = &action else {
        panic!("expected an edit: {action:?}");
    };
    let body = std::str::from_utf8(edit.body.as_deref().expect("rendered body")).expect("utf-8");
    assert_eq!(
        body,
        format!("<p class=\"new-nav\">{hero} {hero} nav=on {{{{unknown}}}}</p>")
    );
    assert_eq!(
        common::set_values(&action, "cache-control"),
        ["private, max-age=60"]
    );

    // Anonymous: first variant, flags off, still shareable.
    let action = common::on_response(
        &module,
        &Req::get("/"),
        &resp,
        &client(None, None, "us-east-1"),
    )
    .await;
    let ResponseAction::Edit(edit) = &action else {
        panic!("expected an edit: {action:?}");
    };
    let body = std::str::from_utf8(edit.body.as_deref().expect("rendered body")).expect("utf-8");
    assert_eq!(
        body,
        "<p class=\"\">control control nav=off {{unknown}}</p>"
    );
    assert!(common::set_values(&action, "cache-control").is_empty());

    // No body handed over: headers only.
    for resp in [Resp::new(200, &[("content-type", "text/html")], None)] {
        let action = common::on_response(
            &module,
            &Req::get("/"),
            &resp,
            &client(Some(user), None, "us-east-1"),
        )
        .await;
        let ResponseAction::Edit(edit) = &action else {
            panic!("expected an edit: {action:?}");
        };
        assert!(edit.body.is_none());
        assert_eq!(common::set_values(&action, "cache-control"), ["private"]);
    }
}

#[tokio::test]
async fn the_user_comes_from_the_route_or_the_configured_cookie_or_header() {
    let engine = common::engine();
    let module = personalize(
        &engine,
        &[
            ("flag.x", "50%"),
            ("user_cookie", "sid"),
            ("user_header", "x-user"),
        ],
    )
    .await;
    let resp = Resp::new(200, &[("content-type", "text/html")], None);
    let anonymous = client(None, None, "us-east-1");
    for user in ["a", "b", "c", "d", "e", "f"] {
        let want = if bucket("x", user) < 5000 {
            "on"
        } else {
            "off"
        };
        for req in [
            Req::with("/", &[("cookie", &format!("theme=dark; sid={user}"))]),
            Req::with("/", &[("x-user", user)]),
        ] {
            let action = common::on_response(&module, &req, &resp, &anonymous).await;
            assert_eq!(
                common::set_values(&action, "x-personalization"),
                [format!("flag.x={want}")]
            );
        }
    }
    // Nothing configured: the module leaves the response alone.
    let bare = module
        .with_settings(ModuleSettings::default())
        .expect("settings");
    let action = common::on_response(&bare, &Req::get("/"), &resp, &anonymous).await;
    assert!(matches!(action, ResponseAction::Pass));
}

#[tokio::test]
async fn only_the_configured_media_types_are_personalised() {
    let engine = common::engine();
    let check = |types: Option<&'static str>| {
        let mut config: Vec<(&str, &str)> = CONFIG.to_vec();
        if let Some(t) = types {
            config.push(("content_types", t));
        }
        config
    };
    let run = |module: Module, content_type: &'static str| async move {
        let resp = Resp::new(
            200,
            &[
                ("content-type", content_type),
                ("cache-control", "public, max-age=60"),
            ],
            Some("{{user.variant}}"),
        );
        common::on_response(
            &module,
            &Req::get("/x"),
            &resp,
            &client(Some("u-1"), None, "us-east-1"),
        )
        .await
    };
    // Default: HTML only. Stylesheets, scripts, JSON and images pass
    // untouched, so they stay shareable.
    let module = personalize(&engine, &check(None)).await;
    for ct in [
        "text/css",
        "application/javascript",
        "application/json",
        "image/png",
    ] {
        let action = run(module.clone(), ct).await;
        assert!(
            common::set_values(&action, "x-personalization").is_empty()
                && common::set_values(&action, "cache-control").is_empty(),
            "{ct}: {action:?}"
        );
    }
    let action = run(module.clone(), "text/html; charset=utf-8").await;
    assert_eq!(common::set_values(&action, "x-personalization").len(), 1);
    assert_eq!(
        common::set_values(&action, "cache-control"),
        ["private, max-age=60"]
    );
    // Configured: JSON too.
    let module = personalize(
        &engine,
        &check(Some(r#"["text/html", "application/json"]"#)),
    )
    .await;
    let action = run(module, "application/json").await;
    assert_eq!(
        common::set_values(&action, "x-personalization").len(),
        1,
        "{action:?}"
    );
}
