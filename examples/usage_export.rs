//! Usage export into PostgreSQL: events a second, and the CPU it costs on
//! both sides (this process, and the PostgreSQL backend that serves it).
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --release --features postgres --example usage_export          # 100 000 events
//! DATABASE_URL=... cargo run --release --features postgres --example usage_export 400000 3
//! ```
//!
//! Arguments: the number of events, and the rounds of each configuration
//! (the median is printed). The events are real request events: a
//! `UsageLayer` over an `AuthLayer` answers requests from 100 keys (one in
//! ten refused) while a fake clock moves a second every 100 requests, and
//! a sink keeps the events. Then, for each way of writing (one statement
//! with arrays, or `COPY` in a transaction) and each batch size, a fresh
//! schema is migrated and the events are handed to `PgUsageExporter` one
//! batch after the other, as a `BatchingSink`'s worker does: raw events,
//! per-minute rollups and, with a keys table, the keys' `last_used_at`.
//!
//! CPU: this process's user+system time (from `/proc/self/stat`) and that
//! of the PostgreSQL backend serving its one connection (from
//! `/proc/<pid>/stat`, so the server must run on this machine; Linux
//! only, clock ticks of 10 ms). The numbers are from one machine, shared
//! with whatever else runs on it.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use http::{Request, Response};
use keyward::auth::AuthLayer;
use keyward::clock::FakeClock;
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher};
use keyward::postgres::QualifiedName;
use keyward::record::{KeyRecord, KeyStatus};
use keyward::store::{KeyStore, MemoryStore};
use keyward::usage::{sink_fn, PgUsage, UsageEvent, UsageExporter, UsageLayer};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tower::{service_fn, ServiceBuilder, ServiceExt};

const KEYS: usize = 100;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let events: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(1), |a| a.parse())?;
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL")?;

    let (events, key_ids) = make_events(events).await?;
    let options: PgConnectOptions = url
        .parse::<PgConnectOptions>()?
        .application_name("keyward_usage_export");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .connect_with(options)
        .await?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await?;
    println!(
        "{} events, {KEYS} keys, {rounds} round(s) each, median; backend pid {backend}",
        events.len()
    );
    println!(
        "{:<30} {:>6} {:>12} {:>14} {:>14}",
        "write", "batch", "events/s", "client µs/ev", "server µs/ev"
    );
    for copy in [false, true] {
        for keys_table in [false, true] {
            for batch in [64, 512, 2048] {
                let mut results = Vec::new();
                for _ in 0..rounds {
                    results.push(
                        run(&pool, backend, &events, &key_ids, batch, copy, keys_table).await?,
                    );
                }
                results.sort_by(|a, b| a.0.total_cmp(&b.0));
                let (rate, client, server) = results[results.len() / 2];
                let name = format!(
                    "{}{}",
                    if copy {
                        "COPY + upsert"
                    } else {
                        "one statement"
                    },
                    if keys_table { " + last_used_at" } else { "" }
                );
                println!("{name:<30} {batch:>6} {rate:>12.0} {client:>14.2} {server:>14.2}");
            }
        }
    }
    Ok(())
}

/// One configuration: (events a second, client CPU µs an event, server CPU
/// µs an event).
async fn run(
    pool: &PgPool,
    backend: i32,
    events: &[UsageEvent],
    key_ids: &[String],
    batch: usize,
    copy: bool,
    keys_table: bool,
) -> Result<(f64, f64, f64), Box<dyn std::error::Error>> {
    let schema = format!("kw_usage_bench_{}", std::process::id());
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(pool)
        .await?;
    let mut usage = PgUsage::new(pool.clone(), &schema)?;
    usage.migrate().await?;
    if keys_table {
        sqlx::query(&format!(
            "CREATE TABLE {schema}.keys (id text PRIMARY KEY, owner text NOT NULL, last_used_at timestamptz)"
        ))
        .execute(pool)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO {schema}.keys (id, owner) SELECT unnest($1::text[]), 'acme'"
        ))
        .bind(key_ids)
        .execute(pool)
        .await?;
        usage = usage.keys_table(QualifiedName::new(&schema, "keys")?);
    }
    let mut exporter = usage.exporter().copy_events(copy);
    let batches: Vec<Vec<UsageEvent>> = events.chunks(batch).map(<[_]>::to_vec).collect();

    let (client, server) = (cpu_ticks("self"), cpu_ticks(&backend.to_string()));
    let started = Instant::now();
    for batch in batches {
        exporter.export(batch).await;
    }
    let elapsed = started.elapsed();
    let client = cpu_ticks("self") - client;
    let server = cpu_ticks(&backend.to_string()) - server;
    let stats = exporter.stats();
    assert_eq!(
        (stats.events, stats.dropped),
        (events.len() as u64, 0),
        "{stats:?}"
    );
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(pool)
        .await?;

    let n = events.len() as f64;
    // A tick is 10 ms: 10 000 µs.
    Ok((
        n / elapsed.as_secs_f64(),
        client as f64 * 10_000.0 / n,
        server as f64 * 10_000.0 / n,
    ))
}

/// User + system clock ticks of process `pid` (`self` for this one).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), 1-based from
    // the state: utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// `n` request events from a real stack, and the keys' ids.
async fn make_events(
    n: usize,
) -> Result<(Vec<UsageEvent>, Vec<String>), Box<dyn std::error::Error>> {
    let format = KeyFormat::new("sk_bench")?;
    let generator = KeyGenerator::new(format.clone());
    let clock = FakeClock::new(UNIX_EPOCH + Duration::from_secs(1_767_225_600));
    let store = MemoryStore::new();
    let mut keys: Vec<ApiKey> = Vec::new();
    for i in 0..KEYS {
        let key = generator.generate()?;
        let record = KeyRecord::new(
            key.id(),
            KeyHasher::sha256().hash(key.secret()),
            format!("owner-{}", i % 10),
            UNIX_EPOCH,
        );
        // One key in ten is revoked: its requests are refused.
        let record = if i % 10 == 9 {
            record.with_status(KeyStatus::Revoked)
        } else {
            record
        };
        store.insert(record).await?;
        keys.push(key);
    }
    let kept = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let sink = {
        let kept = Arc::clone(&kept);
        sink_fn(move |event| kept.lock().unwrap().push(event))
    };
    let service = ServiceBuilder::new()
        .layer(
            UsageLayer::new(sink)
                .clock(clock.clone())
                .first_used_capacity(0),
        )
        .layer(AuthLayer::new(store, format).clock(clock.clone()))
        .service(service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    for i in 0..n {
        let key = &keys[i % KEYS];
        let request = Request::get("/pets")
            .header("authorization", format!("Bearer {}", key.expose_secret()))
            .body(String::new())?;
        service.clone().oneshot(request).await?;
        if i % 100 == 99 {
            clock.advance(Duration::from_secs(1));
        }
    }
    let events = std::mem::take(&mut *kept.lock().unwrap());
    Ok((events, keys.iter().map(|k| k.id().to_string()).collect()))
}
