//! Timing evidence for SECURITY.md: a dudect-style test of the request
//! path's verification (Reparaz, Balasch, Verbauwhede, "dude, is my code
//! constant time?", 2017).
//!
//! ```sh
//! nice -n 19 cargo run --release --example timing                  # every pair, 10^6 samples a class
//! nice -n 19 cargo run --release --example timing -- 2000000 first_vs_last
//! nice -n 19 cargo run --release --example timing -- --cached      # through a CachedStore
//! ```
//!
//! Each pair of classes is a pair of inputs that must be refused in the same
//! time. Requests go through an [`AuthLayer`] over a `MemoryStore` of 1 000
//! keys (800 active, 100 revoked, 100 expired), or a `CachedStore` in front
//! of it whose entries (found and not found) are all cached, to a trivial
//! inner service; each call is polled with a no-op waker and timed alone
//! with `Instant`. For every sample the class is drawn at random, then the
//! input at random among the class's keys (made before the timed calls), so
//! drift, frequency scaling and the other processes on the machine fall on
//! both classes alike. `--pool N` draws from the first N keys of each set
//! only (`--pool 1`: one key asked again and again, as an attacker probing
//! one id would). The layer keeps its default refusal floor (a refused key
//! takes at least 1 µs from its look-up on); `--floor NANOS` sets another,
//! `--floor 0` turns it off, to time the check's own steps. `--usage` puts
//! the `AuthLayer` inside a `UsageLayer` recording into a `RollupSink`, as
//! the quickstart does, so that the sink's work is timed too.
//!
//! The first 100 000 samples are a warm-up: they are not counted, and fix
//! the crop thresholds (the pooled 50th, 90th and 99th percentiles, as
//! dudect crops the slow tail that interrupts and migrations make). Welch's
//! t statistic is then computed per crop and uncropped; dudect's bound is
//! |t| < 4.5 (above it, the classes' times differ, with near certainty).
//!
//! Pairs:
//! - `wrong_vs_wrong` and `unknown_vs_unknown`: controls, both classes of
//!   the same kind (wrong secrets for the active ids; unknown ids, from a
//!   set of 800): what the harness reports when there is nothing to find;
//! - `unknown_vs_wrong`: a well-formed key whose id is not in the store, vs
//!   an active id with a wrong secret (does timing tell which ids exist?).
//!   Both classes draw from 800 ids: how many distinct ids a class cycles
//!   through decides how warm the memory it reads stays, which is not the
//!   question asked (through a cache, each unknown id has an entry too);
//! - `first_vs_last`: an active id whose secret differs from the right one
//!   in its first character, vs in its last (is the compare constant-time?);
//! - `revoked_vs_wrong`: the right secret of a revoked key, vs a wrong
//!   secret of a revoked key (does the 401 tell that the secret was right?);
//! - `expired_vs_wrong`: the same for expired keys.
//!
//! Every wrong key carries a right checksum, so that each reaches the store.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use http_body_util::Empty;
use keyward::auth::AuthLayer;
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher};
use keyward::record::{KeyRecord, KeyStatus};
use keyward::store::{CachedStore, KeyStore, MemoryStore};
use keyward::usage::{RollupSink, UsageLayer};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

const KEYS_ACTIVE: usize = 800;
const KEYS_REVOKED: usize = 100;
const KEYS_EXPIRED: usize = 100;
/// Well-formed keys whose ids the store does not hold: as many as the
/// active ids they are compared with.
const UNKNOWN: usize = KEYS_ACTIVE;
const WARM_UP: usize = 100_000;
const BATCH: usize = 10_000;
const BOUND: f64 = 4.5;
const PAIRS: [&str; 6] = [
    "wrong_vs_wrong",
    "unknown_vs_unknown",
    "unknown_vs_wrong",
    "first_vs_last",
    "revoked_vs_wrong",
    "expired_vs_wrong",
];

fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}

async fn inner(_: Request<()>) -> Result<Response<()>, Infallible> {
    Ok(Response::new(()))
}

/// xorshift64*: the class and input draws (not a secret, only unpredictable
/// to the code under test's branch predictor and caches).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Welford's running mean and variance.
#[derive(Default, Clone, Copy)]
struct Moments {
    n: f64,
    mean: f64,
    m2: f64,
}

impl Moments {
    fn push(&mut self, x: f64) {
        self.n += 1.0;
        let delta = x - self.mean;
        self.mean += delta / self.n;
        self.m2 += delta * (x - self.mean);
    }

    fn variance(&self) -> f64 {
        self.m2 / (self.n - 1.0)
    }
}

fn welch_t(a: &Moments, b: &Moments) -> f64 {
    (a.mean - b.mean) / (a.variance() / a.n + b.variance() / b.n).sqrt()
}

/// The store's keys.
struct Keys {
    store: MemoryStore,
    format: KeyFormat,
    generator: KeyGenerator,
    active: Vec<ApiKey>,
    revoked: Vec<ApiKey>,
    expired: Vec<ApiKey>,
    unknown: Vec<ApiKey>,
    /// How many keys of each set the classes draw from.
    pool: usize,
}

/// What a class presents; each sample is made afresh, outside the timed
/// call.
#[derive(Clone, Copy)]
enum Class<'a> {
    /// A key whose id the store does not hold.
    Unknown,
    /// One of these keys' ids with a new random secret.
    WrongSecret(&'a [ApiKey]),
    /// One of these keys, its secret changed in the first character.
    ChangedFirst(&'a [ApiKey]),
    /// One of these keys, its secret changed in the last character.
    ChangedLast(&'a [ApiKey]),
    /// One of these keys, as issued.
    Right(&'a [ApiKey]),
}

fn bearer(key: &ApiKey) -> HeaderValue {
    HeaderValue::try_from(format!("Bearer {}", key.expose_secret())).unwrap()
}

impl Keys {
    fn new(format: KeyFormat, pool: usize) -> Self {
        let generator = KeyGenerator::new(format.clone());
        let hasher = KeyHasher::sha256();
        let store = MemoryStore::with_capacity(KEYS_ACTIVE + KEYS_REVOKED + KEYS_EXPIRED);
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let issue = |status: KeyStatus, expires: Option<SystemTime>| {
            let key = generator.generate().unwrap();
            let mut record =
                KeyRecord::new(key.id(), hasher.hash(key.secret()), "owner", now - day)
                    .with_scopes("pets:read".parse().unwrap())
                    .with_status(status);
            if let Some(at) = expires {
                record = record.with_expires_at(at);
            }
            ready(store.insert(record)).unwrap();
            key
        };
        let active = (0..KEYS_ACTIVE)
            .map(|_| issue(KeyStatus::Active, None))
            .collect();
        let revoked = (0..KEYS_REVOKED)
            .map(|_| issue(KeyStatus::Revoked, None))
            .collect();
        let expired = (0..KEYS_EXPIRED)
            .map(|_| issue(KeyStatus::Active, Some(now - Duration::from_secs(60))))
            .collect();
        let unknown = (0..UNKNOWN)
            .map(|_| generator.generate().unwrap())
            .collect();
        Self {
            store,
            format,
            generator,
            active,
            revoked,
            expired,
            unknown,
            pool,
        }
    }

    /// A class's next input.
    /// A class's next input. Every class does the same work to make it
    /// (a new random key, a copy of a secret, a key built from parts), so
    /// that the heap the timed call meets does not differ by class.
    fn input(&self, class: Class<'_>, rng: &mut Rng) -> HeaderValue {
        let mut pick = |keys: &[ApiKey]| {
            let keys = &keys[..self.pool.min(keys.len())];
            keys[rng.below(keys.len())].clone()
        };
        let other = self.generator.generate().unwrap();
        let last = self.format.secret_len() - 1;
        let (key, from_other, change) = match class {
            Class::Unknown => (pick(&self.unknown), false, None),
            Class::WrongSecret(keys) => (pick(keys), true, None),
            Class::ChangedFirst(keys) => (pick(keys), false, Some(0)),
            Class::ChangedLast(keys) => (pick(keys), false, Some(last)),
            Class::Right(keys) => (pick(keys), false, None),
        };
        let source = if from_other { &other } else { &key };
        let mut secret = source.secret().as_bytes().to_vec();
        if let Some(at) = change {
            secret[at] = if secret[at] == b'a' { b'b' } else { b'a' };
        }
        let secret = std::str::from_utf8(&secret).unwrap();
        bearer(&self.format.key_from_parts(key.id(), secret).unwrap())
    }

    fn pair(&self, name: &str) -> (Class<'_>, Class<'_>) {
        match name {
            "wrong_vs_wrong" => (
                Class::WrongSecret(&self.active),
                Class::WrongSecret(&self.active),
            ),
            "unknown_vs_unknown" => (Class::Unknown, Class::Unknown),
            "unknown_vs_wrong" => (Class::Unknown, Class::WrongSecret(&self.active)),
            "first_vs_last" => (
                Class::ChangedFirst(&self.active),
                Class::ChangedLast(&self.active),
            ),
            "revoked_vs_wrong" => (
                Class::Right(&self.revoked),
                Class::WrongSecret(&self.revoked),
            ),
            "expired_vs_wrong" => (
                Class::Right(&self.expired),
                Class::WrongSecret(&self.expired),
            ),
            _ => unreachable!(),
        }
    }
}

/// Runs one pair: `samples` per class (about: the class is drawn at random
/// for each), after the warm-up.
fn run_pair<S>(service: &mut S, keys: &Keys, name: &str, samples: usize)
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Rng(seed | 1);
    let (a, b) = keys.pair(name);
    let mut requests = Vec::with_capacity(BATCH);
    let mut times: Vec<(bool, u64)> = Vec::with_capacity(BATCH);
    let mut batch = |rng: &mut Rng, times: &mut Vec<(bool, u64)>| {
        requests.clear();
        times.clear();
        for _ in 0..BATCH {
            let is_b = rng.next() & 1 == 1;
            let value = keys.input(if is_b { b } else { a }, rng);
            let request = Request::get("/pets")
                .header(AUTHORIZATION, value)
                .body(())
                .unwrap();
            requests.push((is_b, request));
        }
        for (is_b, request) in requests.drain(..) {
            ready(service.ready()).unwrap();
            let start = Instant::now();
            let response = ready(service.call(request));
            let took = start.elapsed();
            black_box(&response);
            drop(response);
            times.push((is_b, took.as_nanos() as u64));
        }
    };

    // Warm-up: caches, branch predictors, and the crop thresholds.
    let mut warm = Vec::with_capacity(WARM_UP);
    while warm.len() < WARM_UP {
        batch(&mut rng, &mut times);
        warm.extend(times.iter().map(|&(_, t)| t));
    }
    warm.sort_unstable();
    let percentile = |p: f64| warm[((warm.len() as f64 * p) as usize).min(warm.len() - 1)];
    let crops: [(&str, u64); 4] = [
        ("all", u64::MAX),
        ("p99", percentile(0.99)),
        ("p90", percentile(0.90)),
        ("p50", percentile(0.50)),
    ];

    let mut moments = [[Moments::default(); 2]; 4];
    let mut counted = 0;
    while counted < 2 * samples {
        batch(&mut rng, &mut times);
        for &(is_b, t) in &times {
            for (crop, (_, threshold)) in crops.iter().enumerate() {
                if t <= *threshold {
                    moments[crop][usize::from(is_b)].push(t as f64);
                }
            }
        }
        counted += times.len();
    }

    let all = &moments[0];
    let mut line = format!(
        "{name:<18} n = {:>8} / {:>8}   mean {:>7.1} / {:>7.1} ns   median-crop mean {:>6.1} / {:>6.1} ns   t:",
        all[0].n, all[1].n, all[0].mean, all[1].mean, moments[3][0].mean, moments[3][1].mean,
    );
    let mut worst: f64 = 0.0;
    for (crop, (label, _)) in crops.iter().enumerate() {
        let t = welch_t(&moments[crop][0], &moments[crop][1]);
        worst = worst.max(t.abs());
        line.push_str(&format!(" {label} {t:+6.2}"));
    }
    let verdict = if worst < BOUND { "ok" } else { "ABOVE BOUND" };
    println!("{line}   max |t| {worst:5.2} {verdict}");
}

fn main() {
    let mut samples = 1_000_000;
    let mut cached = false;
    let mut pool = usize::MAX;
    let mut floor = Some(keyward::auth::DEFAULT_REFUSAL_FLOOR);
    let mut usage = false;
    let mut args = std::env::args().skip(1);
    let mut pairs = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--cached" {
            cached = true;
        } else if arg == "--pool" {
            pool = args.next().and_then(|n| n.parse().ok()).unwrap_or(0).max(1);
        } else if arg == "--usage" {
            usage = true;
        } else if arg == "--floor" {
            let Some(nanos) = args.next().and_then(|n| n.parse::<u64>().ok()) else {
                eprintln!("--floor takes nanoseconds (0: no floor)");
                std::process::exit(2);
            };
            floor = (nanos > 0).then(|| Duration::from_nanos(nanos));
        } else if let Ok(n) = arg.parse() {
            samples = n;
        } else if PAIRS.contains(&arg.as_str()) {
            pairs.push(arg);
        } else {
            eprintln!(
                "usage: timing [SAMPLES_PER_CLASS] [--cached] [--usage] [--pool N] [--floor NANOS] [{}]...",
                PAIRS.join("|")
            );
            std::process::exit(2);
        }
    }
    if pairs.is_empty() {
        pairs = PAIRS.iter().map(|p| p.to_string()).collect();
    }

    let keys = Keys::new(KeyFormat::new("sk_live").unwrap(), pool);
    match floor {
        Some(floor) => println!("refusals take at least {floor:?} from the look-up on"),
        None => println!("no refusal floor (--floor 0)"),
    }
    if pool < usize::MAX {
        println!("each class draws from at most {pool} keys of its set");
    }
    println!(
        "{samples} samples a class (about), after {WARM_UP} warm-up samples; classes a / b; bound |t| < {BOUND}"
    );
    if cached {
        // The runtime runs the cache's clock refresher (and its misses,
        // here only while filling it).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let store = runtime.block_on(async {
            let store = CachedStore::builder(keys.store.clone())
                .ttl(Duration::from_secs(3600))
                .negative_ttl(Duration::from_secs(3600))
                .build();
            // Every id of every class cached, found and not found, in a
            // random order: an entry inserted into a fuller table probes
            // longer, so the classes must not be cached one after another.
            let mut ids: Vec<_> = [&keys.active, &keys.revoked, &keys.expired, &keys.unknown]
                .into_iter()
                .flatten()
                .map(ApiKey::id)
                .collect();
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            for i in (1..ids.len()).rev() {
                ids.swap(i, rng.below(i + 1));
            }
            for id in &ids {
                store.find(id).await.unwrap();
                assert!(store.find_immediate(id).is_some());
            }
            store
        });
        println!("through a CachedStore (every entry cached) over a MemoryStore of 1 000 keys");
        run_pairs(store, &keys, &pairs, samples, floor, usage);
    } else {
        println!("through a MemoryStore of 1 000 keys");
        run_pairs(keys.store.clone(), &keys, &pairs, samples, floor, usage);
    }
}

/// Runs each pair through an `AuthLayer` over `store`, inside a
/// `UsageLayer` recording into a `RollupSink` with `usage` (as the
/// quickstart does: the sink's work is on the response's path too).
fn run_pairs(
    store: impl KeyStore,
    keys: &Keys,
    pairs: &[String],
    samples: usize,
    floor: Option<Duration>,
    usage: bool,
) {
    let auth = AuthLayer::new(store, keys.format.clone()).refusal_floor(floor);
    if usage {
        println!("inside a UsageLayer recording into a RollupSink");
        // The usage layer reads bodies' sizes: an empty body, not `()`.
        let mut service = ServiceBuilder::new()
            .map_request(|request: Request<()>| request.map(|()| Empty::<Bytes>::new()))
            .layer(UsageLayer::new(RollupSink::new()))
            .layer(auth)
            .service(service_fn(|_: Request<Empty<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            }));
        for pair in pairs {
            run_pair(&mut service, keys, pair, samples);
        }
    } else {
        let mut service = auth.layer(service_fn(inner));
        for pair in pairs {
            run_pair(&mut service, keys, pair, samples);
        }
    }
}
