//! The admin API (`keyward::admin`) through a real `axum::Router`, nested
//! at `/admin`: every operation, its errors as problem documents, the
//! OpenAPI document read back by an independent parser, and the usage
//! routes over requests counted on a fake clock.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use keyward::admin::{AdminApi, ProblemType};
use keyward::auth::Principal;
use keyward::clock::{Clock, FakeClock};
use keyward::manager::IssueOptions;
use keyward::usage::RollupSink;
use keyward::{KeyFormat, Keyward, MemoryStore, RequireScopes};
use serde_json::{json, Value};
use tower::ServiceExt;

struct Fixture {
    app: Router,
    clock: FakeClock,
    /// An admin key: `keys:admin pets:read pets:write`.
    admin: String,
    keyward: Keyward<RollupSink>,
}

async fn fixture_with(configure: impl FnOnce(AdminApi) -> AdminApi) -> Fixture {
    let clock = FakeClock::default();
    let usage = RollupSink::new();
    let keyward = Keyward::new(MemoryStore::new(), KeyFormat::new("sk_test").unwrap())
        .with_clock(clock.clone())
        .with_sink(usage.clone());
    let admin = keyward
        .manager()
        .issue(IssueOptions::new("ops").scopes("keys:admin pets:read pets:write".parse().unwrap()))
        .await
        .unwrap();
    let api = configure(AdminApi::new(keyward.manager(), usage));
    let app = Router::new()
        .route(
            "/pets",
            get(|p: Principal| async move { p.owner().to_owned() })
                .route_layer(RequireScopes::try_all(["pets:read"]).unwrap()),
        )
        .layer(keyward.auth_layer())
        .nest("/admin", api.router())
        .layer(keyward.usage_layer());
    Fixture {
        app,
        clock,
        admin: admin.key.expose_secret().to_owned(),
        keyward,
    }
}

async fn fixture() -> Fixture {
    fixture_with(|api| api).await
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }

    /// Asserts a problem document of `kind`, and returns its detail.
    fn problem(&self, kind: ProblemType) -> String {
        assert_eq!(self.status, kind.status, "{}", self.body);
        assert_eq!(self.headers["content-type"], "application/problem+json");
        let body = self.json();
        assert_eq!(body["type"], kind.uri, "{}", self.body);
        assert_eq!(body["title"], kind.title);
        assert_eq!(body["status"], kind.status.as_u16());
        let detail = body["detail"].as_str().unwrap().to_owned();
        assert!(!detail.is_empty());
        detail
    }
}

async fn call(app: &Router, method: &str, path: &str, key: Option<&str>, body: &str) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
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

impl Fixture {
    async fn admin(&self, method: &str, path: &str, body: &str) -> Answer {
        call(&self.app, method, path, Some(&self.admin), body).await
    }

    async fn issue(&self, body: Value) -> Value {
        let answer = self.admin("POST", "/admin/keys", &body.to_string()).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        answer.json()
    }
}

#[tokio::test]
async fn the_key_lifecycle_over_http() {
    let f = fixture().await;
    let issued = f
        .issue(json!({
            "owner": "acme", "scopes": ["pets:read"], "name": "CI",
            "expires_in_seconds": 3600, "metadata": {"team": "billing"},
            "limits": [{"rate": {"name": "burst", "quota": 5, "window_ms": 1000}}]
        }))
        .await;
    let key = issued["key"].as_str().unwrap().to_owned();
    let id = issued["key_id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk_test_") && key.contains(&id));
    assert_eq!(issued["owner"], "acme");
    assert_eq!(issued["name"], "CI");
    assert_eq!(issued["status"], "active");
    assert_eq!(issued["scopes"], json!(["pets:read"]));
    assert_eq!(issued["metadata"]["team"], "billing");
    assert!(issued["metadata"]["issued_by"].is_string());
    assert_eq!(
        issued["limits"],
        json!([{"rate": {"name": "burst", "quota": 5, "window_ms": 1000, "burst": 5}}])
    );
    assert_eq!(issued["expires_at"], "2025-01-01T01:00:00Z");
    assert!(issued.get("hash").is_none());
    // The new key works on the protected API.
    assert_eq!(
        call(&f.app, "GET", "/pets", Some(&key), "").await.status,
        StatusCode::OK
    );

    // Get: the record, never the key.
    let got = f.admin("GET", &format!("/admin/keys/{id}"), "").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json()["key_id"], id.as_str());
    assert!(!got.body.contains(&key) && !got.body.contains("sha256"));

    // Disable, enable.
    let disabled = f
        .admin("POST", &format!("/admin/keys/{id}/disable"), "")
        .await;
    assert_eq!(disabled.json()["status"], "disabled");
    assert_eq!(
        call(&f.app, "GET", "/pets", Some(&key), "").await.status,
        StatusCode::UNAUTHORIZED
    );
    let enabled = f
        .admin("POST", &format!("/admin/keys/{id}/enable"), "")
        .await;
    assert_eq!(enabled.json()["status"], "active");
    assert_eq!(
        call(&f.app, "GET", "/pets", Some(&key), "").await.status,
        StatusCode::OK
    );

    // Scopes and limits.
    let scoped = f
        .admin(
            "PUT",
            &format!("/admin/keys/{id}/scopes"),
            r#"{"scopes": ["pets:write"]}"#,
        )
        .await;
    assert_eq!(scoped.json()["scopes"], json!(["pets:write"]));
    assert_eq!(
        call(&f.app, "GET", "/pets", Some(&key), "").await.status,
        StatusCode::FORBIDDEN
    );
    let limited = f
        .admin(
            "PUT",
            &format!("/admin/keys/{id}/limits"),
            r#"{"limits": [{"credits": {"name": "monthly", "capacity": 100, "refill": {"amount": 100, "interval_ms": 2592000000}}}]}"#,
        )
        .await;
    assert_eq!(limited.status, StatusCode::OK, "{}", limited.body);
    assert_eq!(limited.json()["limits"][0]["credits"]["capacity"], 100);
    assert!(!limited.body.contains(&key));

    // Rotate: the successor's plaintext, once; the old key ends after the grace.
    let rotated = f
        .admin(
            "POST",
            &format!("/admin/keys/{id}/rotate"),
            r#"{"grace_seconds": 60}"#,
        )
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.body);
    let rotated = rotated.json();
    let successor = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(successor, key);
    assert_eq!(rotated["previous"]["key_id"], id.as_str());
    assert_eq!(rotated["previous"]["expires_at"], "2025-01-01T00:01:00Z");
    assert_eq!(rotated["scopes"], json!(["pets:write"]));
    assert!(rotated["previous"].get("key").is_none());

    // Revoke: final, idempotent; a revoked key cannot come back.
    let successor_id = rotated["key_id"].as_str().unwrap();
    for _ in 0..2 {
        let revoked = f
            .admin("DELETE", &format!("/admin/keys/{successor_id}"), "")
            .await;
        assert_eq!(revoked.status, StatusCode::NO_CONTENT);
        assert!(revoked.body.is_empty());
    }
    for (method, op, body) in [
        ("POST", "enable", ""),
        ("POST", "disable", ""),
        ("POST", "rotate", r#"{"grace_seconds": 0}"#),
        ("PUT", "scopes", r#"{"scopes": []}"#),
        ("PUT", "limits", r#"{"limits": []}"#),
    ] {
        let answer = f
            .admin(method, &format!("/admin/keys/{successor_id}/{op}"), body)
            .await;
        answer.problem(ProblemType::KEY_REVOKED);
    }
    let got = f
        .admin("GET", &format!("/admin/keys/{successor_id}"), "")
        .await;
    assert_eq!(got.json()["status"], "revoked");
    assert_eq!(got.json()["revoked_at"], "2025-01-01T00:00:00Z");

    // An expired key is not rotated.
    f.clock.advance(Duration::from_secs(120));
    f.admin(
        "POST",
        &format!("/admin/keys/{id}/rotate"),
        r#"{"grace_seconds": 0}"#,
    )
    .await
    .problem(ProblemType::KEY_EXPIRED);
}

#[tokio::test]
async fn an_owners_keys_come_in_pages_in_a_stable_order() {
    let f = fixture().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        // Two keys share each creation time: the id breaks the tie.
        if i % 2 == 0 {
            f.clock.advance(Duration::from_secs(1));
        }
        let issued = f.issue(json!({"owner": "acme", "scopes": []})).await;
        ids.push(issued["key_id"].as_str().unwrap().to_owned());
    }
    f.issue(json!({"owner": "someone else", "scopes": []}))
        .await;

    let mut seen = Vec::new();
    let mut path = "/admin/keys?owner=acme&limit=2".to_owned();
    loop {
        let page = f.admin("GET", &path, "").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let page = page.json();
        let keys = page["keys"].as_array().unwrap();
        assert!(keys.len() <= 2);
        for key in keys {
            assert_eq!(key["owner"], "acme");
            assert!(key.get("key").is_none());
            seen.push(key["key_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/admin/keys?owner=acme&limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    let mut expected = ids.clone();
    // Oldest first; within one second, by id.
    expected[0..2].sort();
    expected[2..4].sort();
    assert_eq!(seen, expected);
    // The same listing, in one page, in the same order.
    let all = f.admin("GET", "/admin/keys?owner=acme", "").await.json();
    let all: Vec<_> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(all, seen);
    assert_eq!(
        f.admin("GET", "/admin/keys?owner=nobody", "").await.json(),
        json!({"keys": [], "next_cursor": null})
    );

    for bad in [
        "/admin/keys",
        "/admin/keys?owner=acme&limit=0",
        "/admin/keys?owner=acme&limit=1001",
        "/admin/keys?owner=acme&limit=many",
        "/admin/keys?owner=acme&cursor=junk",
        "/admin/keys?owner=acme&colour=blue",
    ] {
        f.admin("GET", bad, "")
            .await
            .problem(ProblemType::INVALID_QUERY);
    }
}

#[tokio::test]
async fn bad_input_gets_a_problem_that_says_what_is_wrong() {
    let f = fixture().await;
    let cases: &[(&str, &str, &str, ProblemType, &str)] = &[
        (
            "POST",
            "/admin/keys",
            "{not json",
            ProblemType::INVALID_BODY,
            "key must be a string",
        ),
        (
            "POST",
            "/admin/keys",
            "",
            ProblemType::INVALID_BODY,
            "empty",
        ),
        (
            "POST",
            "/admin/keys",
            "[1]",
            ProblemType::INVALID_BODY,
            "invalid type",
        ),
        (
            "POST",
            "/admin/keys",
            r#"{"owner": "a", "scopes": [], "colour": "red"}"#,
            ProblemType::INVALID_BODY,
            "unknown field `colour`",
        ),
        (
            "POST",
            "/admin/keys",
            r#"{"scopes": []}"#,
            ProblemType::INVALID_BODY,
            "missing field `owner`",
        ),
        (
            "POST",
            "/admin/keys",
            r#"{"owner": "", "scopes": []}"#,
            ProblemType::INVALID_BODY,
            "\"owner\"",
        ),
        (
            "POST",
            "/admin/keys",
            r#"{"owner": "a", "scopes": ["Pets:Read"]}"#,
            ProblemType::INVALID_SCOPE,
            "\"Pets:Read\"",
        ),
        (
            "POST",
            "/admin/keys",
            r#"{"owner": "a", "scopes": ["billing:refund"]}"#,
            ProblemType::SCOPE_NOT_HELD,
            "billing:refund",
        ),
        (
            "POST",
            "/admin/keys",
            r#"{"owner": "a", "scopes": [], "expires_in_seconds": 0}"#,
            ProblemType::INVALID_BODY,
            "expires_in_seconds",
        ),
        (
            "POST",
            "/admin/keys",
            r#"{"owner": "a", "scopes": [], "expires_in_seconds": 3153600001}"#,
            ProblemType::INVALID_BODY,
            "100 years",
        ),
        (
            "POST",
            "/admin/keys",
            r#"{"owner": "a", "scopes": [], "expires_in_seconds": -1}"#,
            ProblemType::INVALID_BODY,
            "invalid value",
        ),
        (
            "POST",
            "/admin/keys",
            r#"{"owner": "a", "scopes": [], "limits": [{"rate": {"name": "a", "quota": 1, "window_ms": 1000}}, {"rate": {"name": "a", "quota": 2, "window_ms": 1000}}]}"#,
            ProblemType::INVALID_LIMITS,
            "two policies",
        ),
        (
            "POST",
            "/admin/keys",
            r#"{"owner": "a", "scopes": [], "limits": [{"rate": {"name": "a", "quota": 1, "window_ms": 10}}]}"#,
            ProblemType::INVALID_LIMITS,
            "at least one second",
        ),
        (
            "POST",
            "/admin/keys",
            r#"{"owner": "a", "scopes": [], "limits": [{"rate": {"name": "a", "quota": 1, "window_ms": 1000, "extra": 1}}]}"#,
            ProblemType::INVALID_BODY,
            "unknown field `extra`",
        ),
        (
            "GET",
            "/admin/keys/not-a-key-id",
            "",
            ProblemType::INVALID_KEY_ID,
            "12",
        ),
        (
            "GET",
            "/admin/keys/AAAAAAAAAAAA",
            "",
            ProblemType::KEY_NOT_FOUND,
            "AAAAAAAAAAAA",
        ),
        (
            "DELETE",
            "/admin/keys/AAAAAAAAAAAA",
            "",
            ProblemType::KEY_NOT_FOUND,
            "AAAAAAAAAAAA",
        ),
        (
            "POST",
            "/admin/keys/AAAAAAAAAAAA/disable",
            "",
            ProblemType::KEY_NOT_FOUND,
            "AAAAAAAAAAAA",
        ),
        (
            "POST",
            "/admin/keys/AAAAAAAAAAAA/rotate",
            r#"{"grace_seconds": 1}"#,
            ProblemType::KEY_NOT_FOUND,
            "AAAAAAAAAAAA",
        ),
        (
            "POST",
            "/admin/keys/AAAAAAAAAAAA/rotate",
            r#"{"grace_seconds": 3153600001}"#,
            ProblemType::INVALID_BODY,
            "grace_seconds",
        ),
        (
            "POST",
            "/admin/keys/AAAAAAAAAAAA/rotate",
            r#"{"grace": 1}"#,
            ProblemType::INVALID_BODY,
            "unknown field `grace`",
        ),
        (
            "PUT",
            "/admin/keys/AAAAAAAAAAAA/scopes",
            r#"{"scopes": "pets:read"}"#,
            ProblemType::INVALID_BODY,
            "invalid type",
        ),
        (
            "PUT",
            "/admin/keys/AAAAAAAAAAAA/limits",
            r#"{"limits": [{"rate": {"name": "Burst", "quota": 1, "window_ms": 1000}}]}"#,
            ProblemType::INVALID_LIMITS,
            "policy names",
        ),
        (
            "GET",
            "/admin/keys/AAAAAAAAAAAA/usage",
            "",
            ProblemType::KEY_NOT_FOUND,
            "AAAAAAAAAAAA",
        ),
        (
            "GET",
            "/admin/usage?from=yesterday",
            "",
            ProblemType::INVALID_QUERY,
            "RFC 3339",
        ),
        (
            "GET",
            "/admin/usage?from=2025-01-02T00:00:00Z&to=2025-01-01T00:00:00Z",
            "",
            ProblemType::INVALID_QUERY,
            "before",
        ),
        (
            "GET",
            "/admin/usage?from=2020-01-01T00:00:00Z",
            "",
            ProblemType::INVALID_QUERY,
            "366 days",
        ),
        (
            "GET",
            "/admin/usage?step_minutes=0",
            "",
            ProblemType::INVALID_QUERY,
            "step_minutes",
        ),
        (
            "GET",
            "/admin/usage?from=2024-06-01T00:00:00Z&step_minutes=1",
            "",
            ProblemType::INVALID_QUERY,
            "wider step",
        ),
        (
            "GET",
            "/admin/owners/acme/usage?after=x",
            "",
            ProblemType::INVALID_QUERY,
            "after",
        ),
        (
            "GET",
            "/admin/owners/acme/usage?limit=0",
            "",
            ProblemType::INVALID_QUERY,
            "limit",
        ),
    ];
    for (method, path, body, kind, says) in cases {
        let answer = f.admin(method, path, body).await;
        let detail = answer.problem(*kind);
        assert!(
            detail.contains(says),
            "{method} {path} {body}: {detail:?} does not say {says:?}"
        );
        assert!(!answer.body.contains(&f.admin));
    }
    // Nothing was created by the refused requests.
    let listed = f.admin("GET", "/admin/keys?owner=a", "").await.json();
    assert_eq!(listed["keys"], json!([]));
}

#[tokio::test]
async fn the_api_is_protected_by_keyward_itself() {
    let f = fixture().await;
    let reader = f
        .issue(json!({"owner": "acme", "scopes": ["pets:read"]}))
        .await;
    let reader = reader["key"].as_str().unwrap();
    for (method, path) in [
        ("POST", "/admin/keys"),
        ("GET", "/admin/keys?owner=acme"),
        ("GET", "/admin/keys/AAAAAAAAAAAA"),
        ("GET", "/admin/usage"),
        ("GET", "/admin/owners/acme/usage"),
    ] {
        let anonymous = call(&f.app, method, path, None, "").await;
        assert_eq!(
            anonymous.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
        let weak = call(&f.app, method, path, Some(reader), "").await;
        assert_eq!(weak.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(
            weak.headers["www-authenticate"],
            r#"Bearer realm="api", error="insufficient_scope", scope="keys:admin""#
        );
    }
    // The document and the page need no key.
    let document = call(&f.app, "GET", "/admin/openapi.json", None, "").await;
    assert_eq!(document.status, StatusCode::OK);
    assert_eq!(document.json()["servers"], json!([{"url": "/admin"}]));
    let page = f
        .app
        .clone()
        .oneshot(
            Request::get("/admin/usage")
                .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'sha256-"));
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    // No unauthenticated request made any state: only the two keys exist.
    assert_eq!(
        f.keyward
            .manager()
            .list_by_owner("acme")
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_configured_scope_and_delegation() {
    let f = fixture_with(|api| {
        api.scope("ops:keys".parse().unwrap())
            .usage_scope("ops:usage".parse().unwrap())
            .grant_any_scope()
    })
    .await;
    // The fixture's admin key holds keys:admin, not ops:keys.
    let refused = f.admin("GET", "/admin/keys?owner=a", "").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let ops = f
        .keyward
        .manager()
        .issue(IssueOptions::new("ops").scopes("ops:keys".parse().unwrap()))
        .await
        .unwrap();
    let ops = ops.key.expose_secret();
    // It may grant a scope it does not hold (grant_any_scope) ...
    let issued = call(
        &f.app,
        "POST",
        "/admin/keys",
        Some(ops),
        r#"{"owner": "a", "scopes": ["billing:refund"]}"#,
    )
    .await;
    assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.body);
    // ... but not read usage, which needs ops:usage.
    let usage = call(&f.app, "GET", "/admin/usage", Some(ops), "").await;
    assert_eq!(usage.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn usage_per_key_per_owner_and_for_all_keys() {
    let f = fixture().await;
    let one = f
        .issue(json!({"owner": "acme", "scopes": ["pets:read"]}))
        .await;
    let two = f.issue(json!({"owner": "acme", "scopes": []})).await;
    let other = f
        .issue(json!({"owner": "zed", "scopes": ["pets:read"]}))
        .await;
    let key = |v: &Value| v["key"].as_str().unwrap().to_owned();
    let id = |v: &Value| v["key_id"].as_str().unwrap().to_owned();

    // Hour 0: key one 2 allowed; key two 1 denied (scope).
    for k in [key(&one), key(&one), key(&two)] {
        call(&f.app, "GET", "/pets", Some(&k), "").await;
    }
    // Hour 1: key one 1 allowed, the other owner's key 1 allowed.
    f.clock.advance(Duration::from_secs(3600));
    call(&f.app, "GET", "/pets", Some(&key(&one)), "").await;
    call(&f.app, "GET", "/pets", Some(&key(&other)), "").await;
    f.clock.advance(Duration::from_secs(60));

    let per_key = f
        .admin(
            "GET",
            &format!("/admin/keys/{}/usage?step_minutes=60", id(&one)),
            "",
        )
        .await;
    assert_eq!(per_key.status, StatusCode::OK, "{}", per_key.body);
    let per_key = per_key.json();
    let entry = &per_key["keys"][0];
    assert_eq!(
        (entry["requests"].as_u64(), entry["allowed"].as_u64()),
        (Some(3), Some(3))
    );
    let series = entry["series"].as_array().unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(series[0]["start"], "2025-01-01T00:00:00Z");
    assert_eq!(series[0]["allowed"], 2);
    assert_eq!(series[1]["start"], "2025-01-01T01:00:00Z");
    assert_eq!(per_key["step_minutes"], 60);
    assert_eq!(per_key["range"]["end"], "2025-01-01T01:01:00Z");

    let owner = f.admin("GET", "/admin/owners/acme/usage", "").await.json();
    let keys = owner["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{owner}");
    let two_usage = keys
        .iter()
        .find(|k| k["key_id"] == id(&two).as_str())
        .unwrap();
    assert_eq!(
        (two_usage["denied"].as_u64(), two_usage["allowed"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(
        two_usage["denied_by_reason"],
        json!({"insufficient_scope": 1})
    );
    assert!(two_usage.get("series").is_none());

    // A range: only hour 1.
    let later = f
        .admin(
            "GET",
            "/admin/owners/acme/usage?from=2025-01-01T01:00:00Z",
            "",
        )
        .await
        .json();
    assert_eq!(later["keys"].as_array().unwrap().len(), 1);
    assert_eq!(later["keys"][0]["requests"], 1);

    // Every key, a page of one at a time, by key id.
    let mut seen = BTreeSet::new();
    let mut path = "/admin/usage?limit=1".to_owned();
    loop {
        let page = f.admin("GET", &path, "").await.json();
        for k in page["keys"].as_array().unwrap() {
            assert!(seen.insert(k["key_id"].as_str().unwrap().to_owned()));
        }
        match page["next_after"].as_str() {
            Some(after) => path = format!("/admin/usage?limit=1&after={after}"),
            None => break,
        }
    }
    // The three keys, and the admin key's own calls to this API.
    assert!(seen.contains(&id(&one)) && seen.contains(&id(&two)) && seen.contains(&id(&other)));

    // A key that made no request: one entry of zeros.
    let quiet = f.issue(json!({"owner": "acme", "scopes": []})).await;
    let quiet_usage = f
        .admin("GET", &format!("/admin/keys/{}/usage", id(&quiet)), "")
        .await
        .json();
    assert_eq!(quiet_usage["keys"][0]["requests"], 0);
    assert_eq!(quiet_usage["keys"][0]["owner"], "acme");
    let _ = f.clock.now();
}

/// The OpenAPI document parses as OpenAPI 3.1 with an independent reader
/// (oas3), every reference in it resolves, and its operations are exactly
/// the router's: each documented one is routed (a request without a key
/// is refused by authentication, not unrouted), each method a documented
/// path does not list is `405`, and paths it does not list are `404`.
#[tokio::test]
async fn the_openapi_document_matches_the_router() {
    let f = fixture().await;
    let answer = call(&f.app, "GET", "/admin/openapi.json", None, "").await;
    assert_eq!(answer.headers["content-type"], "application/json");
    let spec = oas3::from_json(&answer.body).expect("an OpenAPI 3.1 document");
    let version = spec.validate_version().expect("a supported version");
    assert_eq!((version.major, version.minor), (3, 1));

    // Every $ref points at something.
    let raw = answer.json();
    let mut refs = Vec::new();
    collect_refs(&raw, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        let pointer = reference.strip_prefix('#').expect("a local reference");
        assert!(raw.pointer(pointer).is_some(), "dangling {reference}");
    }

    let methods = ["GET", "POST", "PUT", "PATCH", "DELETE"];
    let mut operations = BTreeSet::new();
    for (path, method, operation) in spec.operations() {
        operation
            .request_body(&spec)
            .expect("its request body resolves");
        operation.parameters(&spec).expect("its parameters resolve");
        assert!(operation.operation_id.is_some(), "{method} {path}");
        assert!(!operation.responses(&spec).is_empty(), "{method} {path}");
        operations.insert((path.clone(), method.to_string()));
    }
    let expected: BTreeSet<(String, String)> = [
        ("/keys", "POST"),
        ("/keys", "GET"),
        ("/keys/{key_id}", "GET"),
        ("/keys/{key_id}", "DELETE"),
        ("/keys/{key_id}/rotate", "POST"),
        ("/keys/{key_id}/disable", "POST"),
        ("/keys/{key_id}/enable", "POST"),
        ("/keys/{key_id}/scopes", "PUT"),
        ("/keys/{key_id}/limits", "PUT"),
        ("/keys/{key_id}/usage", "GET"),
        ("/owners/{owner}/usage", "GET"),
        ("/usage", "GET"),
        ("/openapi.json", "GET"),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_owned(), m.to_owned()))
    .collect();
    assert_eq!(operations, expected);

    let paths: BTreeSet<&String> = operations.iter().map(|(p, _)| p).collect();
    for path in paths {
        let concrete = format!(
            "/admin{}",
            path.replace("{key_id}", "AAAAAAAAAAAA")
                .replace("{owner}", "acme")
        );
        for method in methods {
            let answer = call(&f.app, method, &concrete, None, "").await;
            if operations.contains(&(path.clone(), method.to_owned())) {
                let public = path == "/openapi.json";
                let expected = if public {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                };
                assert_eq!(answer.status, expected, "{method} {concrete}");
            } else {
                assert_eq!(
                    answer.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {concrete} is routed but not documented"
                );
            }
        }
    }
    for unrouted in [
        "/admin/",
        "/admin/key",
        "/admin/keys/AAAAAAAAAAAA/other",
        "/admin/owners/acme",
    ] {
        assert_eq!(
            call(&f.app, "GET", unrouted, Some(&f.admin), "")
                .await
                .status,
            StatusCode::NOT_FOUND,
            "{unrouted}"
        );
    }
    // Every problem type is documented in the module and stable.
    assert!(ProblemType::ALL
        .iter()
        .all(|kind| kind.uri.starts_with("urn:keyward:problem:")));
    // The document the API hands out without a router is the same.
    let standalone: Value =
        serde_json::from_str(&AdminApi::new(f.keyward.manager(), RollupSink::new()).openapi_json())
            .unwrap();
    assert_eq!(standalone["paths"], raw["paths"]);
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (name, inner) in map {
                match (name.as_str(), inner) {
                    ("$ref", Value::String(reference)) => out.push(reference.clone()),
                    _ => collect_refs(inner, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, out)),
        _ => {}
    }
}

/// The usage source is a trait: PostgreSQL's shared usage (`PgUsage`,
/// fed by a `BatchingSink`) plugs in as the in-memory rollups do.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_usage_plugs_in() {
    use keyward::usage::{BatchingSink, PgUsage};
    let Some(url) = support::services::service_url("DATABASE_URL", "postgres_usage_plugs_in")
    else {
        return;
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&url)
        .await
        .expect("DATABASE_URL is set, so PostgreSQL must answer");
    let schema = support::services::unique_name("kw_admin");
    let usage = PgUsage::new(pool.clone(), &schema).unwrap();
    usage.migrate().await.unwrap();
    let sink = BatchingSink::builder(usage.exporter()).spawn();
    let keyward = Keyward::new(MemoryStore::new(), KeyFormat::new("sk_test").unwrap())
        .with_sink(sink.clone());
    let admin = keyward
        .manager()
        .issue(IssueOptions::new("ops").scopes("keys:admin".parse().unwrap()))
        .await
        .unwrap();
    let app = Router::new()
        .nest("/admin", AdminApi::new(keyward.manager(), usage).router())
        .layer(keyward.usage_layer());
    let key = admin.key.expose_secret();
    let id = admin.record.id;
    for _ in 0..3 {
        let answer = call(&app, "GET", &format!("/admin/keys/{id}"), Some(key), "").await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    sink.shutdown().await; // exported: every process would now see them
    let answer = call(
        &app,
        "GET",
        "/admin/owners/ops/usage?step_minutes=60",
        Some(key),
        "",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let report = answer.json();
    assert_eq!(report["keys"][0]["key_id"], id.to_string());
    assert_eq!(report["keys"][0]["allowed"], 3);
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
}

fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "[a-z:*. ]{0,12}".prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("owner".to_owned()),
                    Just("scopes".to_owned()),
                    Just("name".to_owned()),
                    Just("expires_in_seconds".to_owned()),
                    Just("grace_seconds".to_owned()),
                    Just("limits".to_owned()),
                    Just("rate".to_owned()),
                    Just("quota".to_owned()),
                    Just("window_ms".to_owned()),
                    Just("metadata".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..5,
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Whatever body arrives, the answer is a success or a problem
    /// document, never a server error, and a refused request changes
    /// nothing.
    #[test]
    fn any_body_gets_an_answer_and_refusals_change_nothing(
        body in proptest::prop_oneof![
            proptest::strategy::Strategy::prop_map(json_value(), |v| v.to_string()),
            "\\PC{0,60}",
        ],
        target in 0usize..4,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let f = fixture().await;
            let existing = f.issue(json!({"owner": "acme", "scopes": ["pets:read"]})).await;
            let id = existing["key_id"].as_str().unwrap().to_owned();
            let before = f.admin("GET", &format!("/admin/keys/{id}"), "").await.body;
            let (method, path) = [
                ("POST", "/admin/keys".to_owned()),
                ("POST", format!("/admin/keys/{id}/rotate")),
                ("PUT", format!("/admin/keys/{id}/scopes")),
                ("PUT", format!("/admin/keys/{id}/limits")),
            ][target].clone();
            let answer = f.admin(method, &path, &body).await;
            assert!(answer.status.as_u16() < 500, "{method} {path} {body:?}: {}", answer.body);
            if !answer.status.is_success() {
                assert_eq!(answer.headers["content-type"], "application/problem+json");
                let after = f.admin("GET", &format!("/admin/keys/{id}"), "").await.body;
                assert_eq!(after, before, "{body:?}");
                let all = f.keyward.store().list_by_owner("acme").await.unwrap();
                assert_eq!(all.len(), 1);
            }
        });
    }
}
