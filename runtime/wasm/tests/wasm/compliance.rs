//! `compliance` through the host API, with realistic per-region configs:
//! 451 blocks with a policy link, consent-based cookie and header
//! stripping, JSON redaction, residency "don't store", region headers.

use cathedral_wasm::{Module, RequestAction, ResponseAction};
use cathedral_wasm_test_artifacts as guests;

use crate::common::{self, Req, Resp, client, load, settings};

/// Frankfurt: EU consent rules, gambling blocked for two countries,
/// personal data redacted from the API, account data never cached.
const EU_CENTRAL_1: &[(&str, &str)] = &[
    (
        "blocks",
        r#"[{"paths": ["/casino", "/betting/"], "countries": ["DE", "FR"],
             "policy": "https://www.example.com/legal/gambling",
             "reason": "Online gambling is not licensed in your country."}]"#,
    ),
    ("consent.required", "true"),
    ("consent.cookie", "cookie_consent"),
    ("strip.cookies", r#"["_ga*", "_gid", "_fbp"]"#),
    ("strip.headers", r#"["x-tracking-id"]"#),
    ("redact.fields", r#"["email", "phone"]"#),
    ("redact.paths", r#"["/api/"]"#),
    ("no_store.paths", r#"["/api/account"]"#),
    ("headers.x-data-region", "eu"),
];

/// N. Virginia: no consent requirement, a US-only block, no redaction.
const US_EAST_1: &[(&str, &str)] = &[
    (
        "blocks",
        r#"[{"paths": ["/sweepstakes"], "countries": ["US"], "policy": "https://www.example.com/legal/us"}]"#,
    ),
    ("consent.required", "false"),
    ("strip.cookies", r#"["_ga*"]"#),
    ("headers.x-data-region", "us"),
];

async fn compliance(config: &[(&str, &str)]) -> Module {
    load(
        &common::engine(),
        "compliance",
        guests::COMPLIANCE,
        settings(config),
    )
    .await
}

#[tokio::test]
async fn blocked_paths_answer_451_with_a_policy_link() {
    let eu = compliance(EU_CENTRAL_1).await;
    #[track_caller]
    fn is_451(action: &RequestAction) -> bool {
        matches!(action, RequestAction::Respond(r) if r.status() == 451)
    }
    for (path, country, blocked) in [
        ("/casino", Some("DE"), true),
        ("/casino/poker?table=3", Some("FR"), true),
        ("/betting/football", Some("de"), true),
        ("/casinos", Some("DE"), false),
        ("/casino", Some("AT"), false),
        ("/casino", None, false),
        ("/", Some("DE"), false),
    ] {
        let env = client(None, country, "eu-central-1");
        let req = Req::with(path, &[("cookie", "cookie_consent=yes")]);
        let action = common::on_request(&eu, &req, &env).await;
        assert_eq!(
            is_451(&action),
            blocked,
            "{path} from {country:?}: {action:?}"
        );
    }
    let action = common::on_request(
        &eu,
        &Req::get("/casino"),
        &client(None, Some("DE"), "eu-central-1"),
    )
    .await;
    let RequestAction::Respond(r) = action else {
        panic!("blocked");
    };
    assert_eq!(
        r.headers()["link"],
        "<https://www.example.com/legal/gambling>; rel=\"blocked-by\""
    );
    assert_eq!(r.headers()["cache-control"], "private, no-store");
    assert_eq!(r.headers()["x-data-region"], "eu");
    let body = std::str::from_utf8(r.body()).expect("utf-8");
    assert!(
        body.contains("Online gambling is not licensed in your country."),
        "{body}"
    );
    assert!(body.contains("eu-central-1"), "{body}");

    // Another region, other rules.
    let us = compliance(US_EAST_1).await;
    let at_home = client(None, Some("US"), "us-east-1");
    assert!(is_451(
        &common::on_request(&us, &Req::get("/sweepstakes/win"), &at_home).await
    ));
    assert!(!is_451(
        &common::on_request(
            &us,
            &Req::get("/casino"),
            &client(None, Some("DE"), "us-east-1")
        )
        .await
    ));
}

#[tokio::test]
async fn tracking_is_stripped_without_consent() {
    let eu = compliance(EU_CENTRAL_1).await;
    let env = client(None, Some("DE"), "eu-central-1");
    let cookies = "_ga=GA1.2.3; session=abc; _ga_XYZ=1; _gid=2; theme=dark";
    for consent in [None, Some("0"), Some("denied")] {
        let cookie = match consent {
            Some(value) => format!("{cookies}; cookie_consent={value}"),
            None => cookies.to_owned(),
        };
        let req = Req::with("/shop", &[("cookie", &cookie), ("x-tracking-id", "t-1")]);
        let RequestAction::Edit(edit) = common::on_request(&eu, &req, &env).await else {
            panic!("expected an edit without consent ({consent:?})");
        };
        let want_cookie = match consent {
            Some(value) => format!("session=abc; theme=dark; cookie_consent={value}"),
            None => "session=abc; theme=dark".to_owned(),
        };
        let set: Vec<_> = edit
            .set_headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().expect("text")))
            .collect();
        assert_eq!(set, [("cookie", want_cookie.as_str())]);
        let removed: Vec<_> = edit.remove_headers.iter().map(|n| n.as_str()).collect();
        assert_eq!(removed, ["cookie", "x-tracking-id"]);
        assert!(!edit.no_store);

        let resp = Resp::new(
            200,
            &[
                ("set-cookie", "_ga=GA1.2.9; Path=/"),
                ("set-cookie", "session=new; HttpOnly"),
                ("set-cookie", "_fbp=fb.1"),
            ],
            None,
        );
        let action = common::on_response(&eu, &req, &resp, &env).await;
        assert_eq!(
            common::set_values(&action, "set-cookie"),
            ["session=new; HttpOnly"]
        );
    }

    // With consent, nothing is touched (but the region header is added).
    let req = Req::with(
        "/shop",
        &[
            ("cookie", &format!("{cookies}; cookie_consent=yes")),
            ("x-tracking-id", "t"),
        ],
    );
    assert!(matches!(
        common::on_request(&eu, &req, &env).await,
        RequestAction::Continue
    ));
    let resp = Resp::new(200, &[("set-cookie", "_ga=1")], None);
    let action = common::on_response(&eu, &req, &resp, &env).await;
    assert!(common::set_values(&action, "set-cookie").is_empty());
    assert_eq!(common::set_values(&action, "x-data-region"), ["eu"]);

    // No consent rule in the US: tracking cookies stay.
    let us = compliance(US_EAST_1).await;
    let req = Req::with("/shop", &[("cookie", cookies)]);
    assert!(matches!(
        common::on_request(&us, &req, &client(None, Some("US"), "us-east-1")).await,
        RequestAction::Continue
    ));
}

#[tokio::test]
async fn api_json_is_redacted_and_account_data_not_stored() {
    let eu = compliance(EU_CENTRAL_1).await;
    let env = client(Some("u-1"), Some("DE"), "eu-central-1");
    let consent = [("cookie", "cookie_consent=yes")];
    let json = r#"{"users":[{"name":"Ada","email":"ada@example.com","contact":{"Phone":"+49 1"}}],"count":1}"#;
    let resp = Resp::new(
        200,
        &[("content-type", "application/json; charset=utf-8")],
        Some(json),
    );
    let action = common::on_response(&eu, &Req::with("/api/users", &consent), &resp, &env).await;
    let ResponseAction::Edit(edit) = &action else {
        panic!("expected an edit: {action:?}");
    };
    let body: serde_json::Value =
        serde_json::from_slice(edit.body.as_deref().expect("redacted body")).expect("json");
    assert_eq!(
        body,
        serde_json::json!({"users": [{"name": "Ada", "email": "[redacted]", "contact": {"Phone": "[redacted]"}}], "count": 1})
    );

    // Outside the API, or not JSON: untouched.
    for (path, content_type) in [
        ("/shop/users", "application/json"),
        ("/api/users", "text/html"),
    ] {
        let resp = Resp::new(200, &[("content-type", content_type)], Some(json));
        let action = common::on_response(&eu, &Req::with(path, &consent), &resp, &env).await;
        let ResponseAction::Edit(edit) = &action else {
            panic!("the region header is always added: {action:?}");
        };
        assert!(edit.body.is_none(), "{path} {content_type}");
    }

    // Residency: account data is marked "don't store".
    let RequestAction::Edit(edit) =
        common::on_request(&eu, &Req::with("/api/account/42", &consent), &env).await
    else {
        panic!("expected a no-store edit");
    };
    assert!(edit.no_store);
    assert!(edit.set_headers.is_empty() && edit.remove_headers.is_empty());
}
