//! No secret in any log line, `Debug` or `Display` output, or response.

mod support;

use std::time::SystemTime;

use http::Request;
use http_body_util::BodyExt;
use keyward::auth::{AuthLayer, Principal};
use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
use keyward::record::KeyRecord;
use keyward::reject::Rejection;
use keyward::store::{KeyStore, MemoryStore};
use tower::{service_fn, ServiceExt};

use support::CapturedLogs;

#[tokio::test]
async fn full_requests_leave_no_secret_in_logs_or_debug_output() {
    let (captured, _guard) = CapturedLogs::start();

    let format = KeyFormat::new("sk_live").unwrap();
    let generator = KeyGenerator::new(format.clone());
    let key = generator.generate().unwrap();
    let revoked = generator.generate().unwrap();
    let store = MemoryStore::new();
    for (k, owner) in [(&key, "acme"), (&revoked, "gone")] {
        let record = KeyRecord::new(
            k.id(),
            KeyHasher::sha256().hash(k.secret()),
            owner,
            SystemTime::now(),
        );
        store.insert(record).await.unwrap();
    }
    store
        .revoke(&revoked.id(), SystemTime::now())
        .await
        .unwrap();

    let layer = AuthLayer::new(store.clone(), format);
    let service = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(|request: Request<String>| async move {
            let principal = request.extensions().get::<Principal>().cloned();
            tracing::info!(?principal, headers = ?request.headers(), "handler saw");
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
        }));

    let mut changed = key.expose_secret().to_owned();
    changed.pop();
    changed.push('0');
    let presented = [
        key.expose_secret().to_owned(),
        revoked.expose_secret().to_owned(),
        changed,
        format!("{}x", key.expose_secret()),
    ];
    let mut seen = String::new();
    for value in &presented {
        for header in ["authorization", "x-api-key"] {
            let value = if header == "authorization" {
                format!("Bearer {value}")
            } else {
                value.clone()
            };
            let request = Request::get("/")
                .header(header, value)
                .body(String::new())
                .unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            let (parts, body) = response.into_parts();
            tracing::info!(?parts, rejection = ?parts.extensions.get::<Rejection>(), "response");
            let body = body.collect().await.unwrap().to_bytes();
            seen.push_str(&format!("{parts:?} {}", String::from_utf8_lossy(&body)));
        }
    }
    seen.push_str(&format!("{key:?} {key} {revoked:?} {layer:?} {store:?}"));
    let principal = store.find(&key.id()).await.unwrap().map(Principal::new);
    seen.push_str(&format!("{principal:?}"));

    let logs = captured.text();
    assert!(
        logs.contains("API key refused"),
        "the refusals were logged:\n{logs}"
    );
    assert!(
        logs.contains(key.id().as_str()),
        "key ids are logged:\n{logs}"
    );
    for secret in [key.secret(), revoked.secret(), &key.secret()[..16]] {
        assert!(!logs.contains(secret), "a secret reached the logs:\n{logs}");
        assert!(
            !seen.contains(secret),
            "a secret reached a response or Debug output"
        );
    }
}
