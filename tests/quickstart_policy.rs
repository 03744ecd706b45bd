//! The quickstart's policy routes, on the example's own router (included
//! from `examples/quickstart.rs`): scopes per route, issuing and revoking
//! keys over HTTP, problem bodies for bad input.

#[allow(dead_code)]
#[path = "../examples/quickstart.rs"]
mod quickstart;

use axum::body::Body;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

async fn send(app: &Router, method: &str, path: &str, key: Option<&str>, body: &str) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    if !body.is_empty() {
        request = request.header("content-type", "application/json");
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

fn is_problem(answer: &Answer, status: StatusCode) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.headers["content-type"], "application/problem+json");
    assert_eq!(answer.json()["status"], status.as_u16());
}

#[tokio::test]
async fn reader_may_read_but_not_write() {
    let (app, admin, reader) = quickstart::build().await.unwrap();
    let reader = reader.expose_secret();
    let admin = admin.expose_secret();

    assert_eq!(
        send(&app, "GET", "/pets", Some(reader), "").await.status,
        StatusCode::OK
    );
    let refused = send(&app, "POST", "/pets", Some(reader), r#"{"name":"Ada"}"#).await;
    is_problem(&refused, StatusCode::FORBIDDEN);
    assert_eq!(
        refused.headers["www-authenticate"],
        r#"Bearer realm="api", error="insufficient_scope", scope="pets:write""#
    );
    assert!(refused.json()["detail"]
        .as_str()
        .unwrap()
        .contains("pets:write"));

    let made = send(
        &app,
        "POST",
        "/pets",
        Some(admin),
        r#"{"name":"Ada","kind":"owl"}"#,
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    assert_eq!(made.json()["name"], "Ada");
    let listed = send(&app, "GET", "/pets", Some(reader), "").await.json();
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "Ada"));

    is_problem(
        &send(&app, "POST", "/pets", Some(admin), "{not json").await,
        StatusCode::BAD_REQUEST,
    );
    // The routes that existed before still answer as before.
    assert_eq!(
        send(&app, "GET", "/health", None, "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, "GET", "/pets", None, "").await.status,
        StatusCode::UNAUTHORIZED
    );
    let me = send(&app, "GET", "/me", Some(reader), "").await;
    assert_eq!(me.json()["owner"], "reader");
    assert!(!me.body.contains(reader));
}

#[tokio::test]
async fn admin_issues_and_revokes_keys() {
    let (app, admin, reader) = quickstart::build().await.unwrap();
    let admin = admin.expose_secret();

    let issued = send(
        &app,
        "POST",
        "/keys",
        Some(admin),
        r#"{"scopes": ["pets:read"], "owner": "bob", "expires_in_seconds": 3600}"#,
    )
    .await;
    assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.body);
    let issued = issued.json();
    let key = issued["key"].as_str().unwrap().to_owned();
    let key_id = issued["key_id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk_live_"));
    assert!(key.contains(&key_id));

    let me = send(&app, "GET", "/me", Some(&key), "").await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["owner"], "bob");
    assert_eq!(me.json()["scopes"], json!(["pets:read"]));
    assert_eq!(
        send(&app, "GET", "/pets", Some(&key), "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, "POST", "/pets", Some(&key), r#"{"name":"x"}"#)
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    // Revoked at once: the very next request is refused.
    let revoked = send(&app, "DELETE", &format!("/keys/{key_id}"), Some(admin), "").await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    let refused = send(&app, "GET", "/pets", Some(&key), "").await;
    is_problem(&refused, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.headers["www-authenticate"],
        r#"Bearer realm="api", error="invalid_token""#
    );

    // Only keys:admin may manage keys.
    let reader = reader.expose_secret();
    let refused = send(
        &app,
        "POST",
        "/keys",
        Some(reader),
        r#"{"scopes": ["pets:read"], "owner": "eve"}"#,
    )
    .await;
    is_problem(&refused, StatusCode::FORBIDDEN);
    assert_eq!(
        refused.headers["www-authenticate"],
        r#"Bearer realm="api", error="insufficient_scope", scope="keys:admin""#
    );
    let refused = send(&app, "DELETE", &format!("/keys/{key_id}"), Some(reader), "").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn bad_key_requests_are_400_problems() {
    let (app, admin, _) = quickstart::build().await.unwrap();
    let admin = admin.expose_secret();
    for body in [
        "{not json",
        "",
        "[1, 2]",
        r#"{"owner": "bob"}"#,
        r#"{"scopes": "pets:read", "owner": "bob"}"#,
        r#"{"scopes": [1], "owner": "bob"}"#,
        r#"{"scopes": ["Pets:Read"], "owner": "bob"}"#,
        r#"{"scopes": ["pets read"], "owner": "bob"}"#,
        r#"{"scopes": ["*"], "owner": "bob"}"#,
        r#"{"scopes": ["pets:read"]}"#,
        r#"{"scopes": ["pets:read"], "owner": ""}"#,
        r#"{"scopes": ["pets:read"], "owner": "bob", "expires_in_seconds": -5}"#,
        r#"{"scopes": ["pets:read"], "owner": "bob", "expires_in_seconds": "soon"}"#,
        r#"{"scopes": ["pets:read"], "owner": "bob", "expires_in_seconds": 18446744073709551615}"#,
    ] {
        let answer = send(&app, "POST", "/keys", Some(admin), body).await;
        is_problem(&answer, StatusCode::BAD_REQUEST);
        assert!(!answer.body.contains(admin), "{body}");
    }
    let scope_error = send(
        &app,
        "POST",
        "/keys",
        Some(admin),
        r#"{"scopes": ["Pets:Read"], "owner": "bob"}"#,
    )
    .await;
    assert!(scope_error.json()["detail"]
        .as_str()
        .unwrap()
        .contains("scope"));

    // An admin cannot hand out a scope it does not hold itself.
    let beyond = send(
        &app,
        "POST",
        "/keys",
        Some(admin),
        r#"{"scopes": ["billing:refund"], "owner": "bob"}"#,
    )
    .await;
    is_problem(&beyond, StatusCode::FORBIDDEN);

    is_problem(
        &send(&app, "DELETE", "/keys/not-a-key-id", Some(admin), "").await,
        StatusCode::BAD_REQUEST,
    );
    is_problem(
        &send(&app, "DELETE", "/keys/AAAAAAAAAAAA", Some(admin), "").await,
        StatusCode::NOT_FOUND,
    );
}

#[tokio::test]
async fn the_reader_key_is_limited_to_a_burst_of_five() {
    let (app, admin, reader) = quickstart::build().await.unwrap();
    let reader = reader.expose_secret();
    for remaining in (0..5).rev() {
        let answer = send(&app, "GET", "/pets", Some(reader), "").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.headers["ratelimit-policy"], r#""burst";q=5;w=1"#);
        assert_eq!(
            answer.headers["ratelimit"],
            format!(r#""burst";r={remaining};t=1"#).as_str()
        );
    }
    // The system clock runs: a unit comes back every 200 ms, so allow a
    // few more tries on a very slow machine, but one of them must be 429.
    let mut refused = None;
    for _ in 0..10 {
        let answer = send(&app, "GET", "/pets", Some(reader), "").await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(answer);
            break;
        }
    }
    let refused = refused.expect("the reader key was never limited");
    is_problem(&refused, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(refused.json()["violated-policies"], json!(["burst"]));
    assert_eq!(
        refused.json()["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );

    // The admin key has its own, larger budget.
    let answer = send(&app, "GET", "/pets", Some(admin.expose_secret()), "").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["ratelimit-policy"], r#""burst";q=100;w=1"#);
}

#[tokio::test]
async fn usage_counts_every_request_against_its_key() {
    let (app, admin, reader) = quickstart::build().await.unwrap();
    let (admin, reader) = (admin.expose_secret(), reader.expose_secret());
    assert_eq!(
        send(&app, "GET", "/pets", Some(reader), "").await.status,
        StatusCode::OK
    );
    let denied = send(&app, "POST", "/pets", Some(reader), r#"{"name":"Ada"}"#).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    // The reader may not read usage: 403, counted too.
    let denied = send(&app, "GET", "/usage", Some(reader), "").await;
    is_problem(&denied, StatusCode::FORBIDDEN);
    assert_eq!(
        send(&app, "GET", "/pets", None, "").await.status,
        StatusCode::UNAUTHORIZED
    );

    let usage = send(&app, "GET", "/usage", Some(admin), "").await;
    assert_eq!(usage.status, StatusCode::OK, "{}", usage.body);
    let usage = usage.json();
    let me = send(&app, "GET", "/me", Some(reader), "").await.json();
    let reader_usage = usage["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == me["key_id"])
        .expect("the reader key is in the report");
    assert_eq!(reader_usage["requests"], 3);
    assert_eq!(reader_usage["allowed"], 1);
    assert_eq!(reader_usage["denied"], 2);
    assert!(!usage.to_string().contains(reader));
}
