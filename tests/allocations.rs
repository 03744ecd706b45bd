//! What the request path allocates, counted by dhat's heap profiler in
//! testing mode (its global allocator needs no `unsafe` of ours). One
//! test in this file: dhat runs one profiler at a time in a process.

use std::convert::Infallible;
use std::time::SystemTime;

use http::{Request, Response, StatusCode};
use keyward::auth::origin::AllowedOrigin;
use keyward::{
    AuthLayer, CredentialKind, KeyFormat, KeyGenerator, KeyHasher, KeyRecord, KeyStore,
    MemoryStore, Principal,
};
use tower::{ServiceBuilder, ServiceExt};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// A publishable key's origin check (`Origin` or `Referer`, exact or
/// wildcard, in any case) allocates nothing: its request costs what an API
/// key's does, to the allocation.
#[test]
fn an_origin_check_allocates_nothing() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    let format = KeyFormat::new("pk_live").unwrap();
    let generator = KeyGenerator::new(format.clone());
    let (api_key, publishable) = (generator.generate().unwrap(), generator.generate().unwrap());
    let store = MemoryStore::new();
    let record = |key: &keyward::ApiKey| {
        KeyRecord::new(
            key.id(),
            KeyHasher::sha256().hash(key.secret()),
            "acme",
            SystemTime::now(),
        )
    };
    let origins: Vec<AllowedOrigin> = ["https://shop.example.net", "https://*.example.com"]
        .iter()
        .map(|o| o.parse().unwrap())
        .collect();
    runtime.block_on(async {
        store.insert(record(&api_key)).await.unwrap();
        store
            .insert(record(&publishable).with_publishable(origins))
            .await
            .unwrap();
    });
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(store, format))
        .service_fn(|request: Request<()>| async move {
            let kind = request
                .extensions()
                .get::<Principal>()
                .map(|p| p.credential());
            let mut response = Response::new(());
            response.extensions_mut().insert(kind);
            Ok::<_, Infallible>(response)
        });

    // The same headers, in the same order, for both keys (an API key has
    // no allowed origins: its origin is not read).
    let request = |key: &keyward::ApiKey, header: &str, origin: &str| {
        Request::get("/")
            .header("x-api-key", key.expose_secret())
            .header(header, origin)
            .body(())
            .unwrap()
    };
    // Allocations while the layer answers `request` (built before, dropped
    // after).
    let allocations = |request: Request<()>, expected: Option<CredentialKind>| {
        let before = dhat::HeapStats::get().total_blocks;
        let response = runtime.block_on(service.clone().oneshot(request)).unwrap();
        let after = dhat::HeapStats::get().total_blocks;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.extensions().get::<Option<CredentialKind>>(),
            Some(&expected)
        );
        after - before
    };

    for (header, origin) in [
        ("origin", "https://shop.example.net"),
        ("origin", "HTTPS://Shop.Example.NET:443"),
        ("origin", "https://eu.App.example.com"),
        ("referer", "https://eu.app.EXAMPLE.com/cart?id=7"),
    ] {
        let mut counts = Vec::new();
        // The first round warms up what is built once (the stand-ins,
        // tracing's interest cache); the second is compared.
        for _ in 0..2 {
            counts = vec![
                allocations(
                    request(&api_key, header, origin),
                    Some(CredentialKind::ApiKey),
                ),
                allocations(
                    request(&publishable, header, origin),
                    Some(CredentialKind::Publishable),
                ),
            ];
        }
        assert_eq!(
            counts[1], counts[0],
            "{header}: {origin}: allocations of a publishable key's request, then an API key's"
        );
    }
}
