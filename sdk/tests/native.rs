//! A plugin's logic, tested natively: the SDK's HTTP client against a real server on loopback,
//! secret placeholders, logs and the clock.

use engine_sdk::http::Client;
use engine_sdk::secrets::Secret;
use engine_sdk::testing;
use engine_sdk::{Error, ErrorExt};
use std::sync::Arc;

/// Serves `/json` with a JSON body, echoes the Authorization header on `/echo`, and answers
/// `/missing` with a Google-style 404.
fn server() -> (u16, Arc<tiny_http::Server>) {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let port = server.server_addr().to_ip().unwrap().port();
    let srv = server.clone();
    std::thread::spawn(move || {
        for mut request in srv.incoming_requests() {
            let mut body = String::new();
            let _ = request.as_reader().read_to_string(&mut body);
            let auth = request
                .headers()
                .iter()
                .find(|h| h.field.equiv("authorization"))
                .map(|h| h.value.to_string())
                .unwrap_or_default();
            let (status, text) = match request.url() {
                "/json" => (200, r#"{"name":"api","revisions":3}"#.to_string()),
                "/echo" => (200, format!("{} {}", auth, body)),
                _ => (
                    404,
                    r#"{"error":{"message":"no such service"}}"#.to_string(),
                ),
            };
            let _ =
                request.respond(tiny_http::Response::from_string(text).with_status_code(status));
        }
    });
    (port, server)
}

#[derive(serde::Deserialize, Debug, PartialEq)]
struct Service {
    name: String,
    revisions: u32,
}

#[test]
fn json_round_trip_against_a_real_server() {
    let (port, _server) = server();
    let client = Client::new();
    let service: Service = client
        .get(&format!("http://127.0.0.1:{port}/json"))
        .send_json()
        .unwrap();
    assert_eq!(
        service,
        Service {
            name: "api".into(),
            revisions: 3
        }
    );
    let echoed = client
        .post(&format!("http://127.0.0.1:{port}/echo"))
        .json(&serde_json::json!({"image": "api:2"}))
        .send()
        .unwrap()
        .text();
    assert_eq!(echoed, r#" {"image":"api:2"}"#);
}

#[test]
fn a_404_is_a_not_found_error_with_the_apis_message() {
    let (port, _server) = server();
    let err = Client::new()
        .get(&format!("http://127.0.0.1:{port}/missing"))
        .send()
        .unwrap_err();
    assert_eq!(err, Error::not_found("HTTP 404: no such service"));
}

#[test]
fn secrets_are_placeholders_that_the_transport_fills_in() {
    let (port, _server) = server();
    assert!(Secret::open("token").is_err(), "not granted yet");
    testing::grant_secret("token", "value-from-test");
    let secret = Secret::open("token").unwrap();
    assert!(!secret.placeholder().contains("value-from-test"));
    let echoed = Client::new()
        .get(&format!("http://127.0.0.1:{port}/echo"))
        .bearer(&secret)
        .send()
        .unwrap()
        .text();
    assert_eq!(echoed, "Bearer value-from-test ");
}

#[test]
fn logs_and_clock_work_natively() {
    engine_sdk::log::write(
        engine_sdk::log::Level::Info,
        "deploying",
        &[("service", "api")],
    );
    let logs = testing::take_logs();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].message, "deploying");
    assert_eq!(logs[0].fields, [("service".to_string(), "api".to_string())]);
    testing::set_now_ms(42);
    assert_eq!(engine_sdk::clock::now_ms(), 42);
}

#[test]
fn update_plans_list_changed_fields_and_map_keys() {
    let deployed = r#"{"image":"api:1","env":{"LOG_LEVEL":"info","MODE":"a"},"port":8080}"#;
    let desired = serde_json::json!({"image": "api:2", "env": {"LOG_LEVEL": "debug", "MODE": "a", "NEW": "x"}, "port": 8080});
    let plan = engine_sdk::update_plan(deployed, &desired, &["image", "env", "port"]);
    assert_eq!(plan.action, engine_sdk::PlanAction::Update);
    let fields: Vec<(String, Option<String>, Option<String>)> = plan
        .changes
        .into_iter()
        .map(|c| (c.field, c.before, c.after))
        .collect();
    assert_eq!(
        fields,
        [
            (
                "image".into(),
                Some(r#""api:1""#.into()),
                Some(r#""api:2""#.into())
            ),
            (
                "env.LOG_LEVEL".into(),
                Some(r#""info""#.into()),
                Some(r#""debug""#.into())
            ),
            ("env.NEW".into(), None, Some(r#""x""#.into())),
        ]
    );
    let same = engine_sdk::update_plan(
        deployed,
        &serde_json::from_str(deployed).unwrap(),
        &["image", "env"],
    );
    assert_eq!(same.action, engine_sdk::PlanAction::NoChange);
    // A field left unset is the same whether it is missing or null.
    let unset = engine_sdk::update_plan(
        r#"{"image":"api:1"}"#,
        &serde_json::json!({"image": "api:1", "startup_probe": null}),
        &["image", "startup_probe"],
    );
    assert_eq!(unset.action, engine_sdk::PlanAction::NoChange);
}

#[test]
fn create_plans_list_the_fields_the_desired_form_sets() {
    let desired =
        serde_json::json!({"image": "api:1", "env": {}, "args": [], "port": null, "cpu": 2});
    let plan = engine_sdk::create_plan(
        &desired,
        &["image", "env", "args", "port", "cpu"],
        "create api".into(),
    );
    assert_eq!(plan.action, engine_sdk::PlanAction::Create);
    assert_eq!(plan.summary, "create api");
    let fields: Vec<(String, Option<String>)> = plan
        .changes
        .into_iter()
        .map(|c| (c.field, c.after))
        .collect();
    assert_eq!(
        fields,
        [
            ("image".into(), Some(r#""api:1""#.into())),
            ("cpu".into(), Some("2".into()))
        ]
    );
}

#[test]
fn the_shared_finish_promotes_retires_the_previous_revision_only_and_is_done() {
    use engine_sdk::strategy::{Decision, Finish, Observation, Rollout};
    let rollout = |stable: Option<&str>| Rollout {
        service: "api".into(),
        stable: stable.map(String::from),
        candidate: "api-r2".into(),
        features: Vec::new(),
        config: "{}".into(),
    };
    let (stage, decision, _) = Finish::start();
    assert_eq!((stage, decision), (Finish::Promoting, Decision::Promote));
    let after_promotion = |stable, retire| {
        let next = Finish::Promoting.next(&rollout(stable), &Observation::Promoted, retire);
        next.map(|(stage, decision, _)| (stage, decision))
    };
    assert_eq!(
        after_promotion(Some("api-r1"), true),
        Some((Finish::Retiring, Decision::Retire("api-r1".into())))
    );
    let done = Some((Finish::Done, Decision::Done));
    assert_eq!(after_promotion(Some("api-r1"), false), done);
    assert_eq!(after_promotion(None, true), done, "nothing to retire");
    assert_eq!(
        after_promotion(Some("api-r2"), true),
        done,
        "the candidate itself is never retired"
    );
    let retired = Observation::Retired("api-r1".into());
    let next = Finish::Retiring.next(&rollout(Some("api-r1")), &retired, true);
    assert_eq!(next.map(|(s, d, _)| (s, d)), done);
    // An observation that does not follow the stage is the strategy's to report.
    assert!(
        Finish::Promoting
            .next(&rollout(None), &Observation::Waited, true)
            .is_none()
    );
    assert!(
        Finish::Done
            .next(&rollout(None), &Observation::Promoted, true)
            .is_none()
    );
}
