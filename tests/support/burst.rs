//! A small real stack (UsageLayer, AuthLayer on a MemoryStore, a handler)
//! that sends a burst of requests with two keys: one good, one revoked.
//! Several processes rebuild the same keys from the same orders.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, Response};
use keyward::auth::AuthLayer;
use keyward::clock::FakeClock;
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher};
use keyward::record::{KeyRecord, KeyStatus};
use keyward::store::{KeyStore, MemoryStore};
use keyward::usage::{UsageLayer, UsageSink};
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// The keys and the time every process of a burst uses.
pub(crate) struct Burst {
    pub(crate) format: KeyFormat,
    pub(crate) good: ApiKey,
    pub(crate) revoked: ApiKey,
    pub(crate) owner: String,
    /// Requests are recorded at this time (a fake clock), so that every
    /// process counts into the same minute.
    pub(crate) at: SystemTime,
}

impl Burst {
    /// Fresh keys of `owner`, at the current second.
    pub(crate) fn new(owner: &str) -> Self {
        let format = KeyFormat::new("sk_burst").unwrap();
        let generator = KeyGenerator::new(format.clone());
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        Self {
            good: generator.generate().unwrap(),
            revoked: generator.generate().unwrap(),
            format,
            owner: owner.to_owned(),
            at: UNIX_EPOCH + Duration::from_secs(secs),
        }
    }

    /// The burst as a child's orders (one field a line; after `extra`).
    pub(crate) fn orders(&self, extra: &str) -> String {
        let secs = self.at.duration_since(UNIX_EPOCH).unwrap().as_secs();
        format!(
            "{extra}\n{secs}\n{}\n{}\n{}",
            self.good.expose_secret(),
            self.revoked.expose_secret(),
            self.owner
        )
    }

    /// The burst from [`Burst::orders`], and the `extra` line.
    pub(crate) fn from_orders(orders: &str) -> (Self, String) {
        let mut lines = orders.splitn(5, '\n');
        let mut next = || lines.next().expect("a complete order").to_owned();
        let extra = next();
        let secs: u64 = next().parse().unwrap();
        let format = KeyFormat::new("sk_burst").unwrap();
        let good = ApiKey::parse(&format, &next()).unwrap();
        let revoked = ApiKey::parse(&format, &next()).unwrap();
        let owner = next();
        let burst = Self {
            format,
            good,
            revoked,
            owner,
            at: UNIX_EPOCH + Duration::from_secs(secs),
        };
        (burst, extra)
    }

    /// Sends `n` requests with the good key and, after every fifth, one
    /// with the revoked key, through a stack recording into `sink`;
    /// returns (allowed, denied).
    pub(crate) async fn run(&self, sink: impl UsageSink, n: u64) -> (u64, u64) {
        let store = MemoryStore::new();
        let hash = |key: &ApiKey| KeyHasher::sha256().hash(key.secret());
        let record =
            |key: &ApiKey| KeyRecord::new(key.id(), hash(key), self.owner.as_str(), self.at);
        store.insert(record(&self.good)).await.unwrap();
        store
            .insert(record(&self.revoked).with_status(KeyStatus::Revoked))
            .await
            .unwrap();
        let clock = FakeClock::new(self.at);
        let service = ServiceBuilder::new()
            .layer(
                UsageLayer::new(sink)
                    .clock(clock.clone())
                    .first_used_capacity(0),
            )
            .layer(AuthLayer::new(store, self.format.clone()).clock(clock))
            .service(service_fn(|_: Request<String>| async {
                Ok::<_, Infallible>(Response::new(String::from("ok")))
            }));
        let (mut allowed, mut denied) = (0, 0);
        for i in 0..n {
            let key = if i % 5 == 4 {
                &self.revoked
            } else {
                &self.good
            };
            let request = Request::get("/pets")
                .header("authorization", format!("Bearer {}", key.expose_secret()))
                .body(String::new())
                .unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            if response.status().is_success() {
                allowed += 1;
            } else {
                denied += 1;
            }
        }
        (allowed, denied)
    }
}
