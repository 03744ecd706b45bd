//! What an exporter such as metrics-exporter-prometheus does per event:
//! the key's handle looked up in a sharded registry, then an atomic add.
//! Shared by `benches/stack.rs` and `examples/profile.rs` (by `#[path]`).

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};

pub(crate) struct RegistryRecorder(Registry<Key, AtomicStorage>);

impl Recorder for RegistryRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

/// Installs it as the global recorder if `KEYWARD_BENCH_RECORDER=registry`.
pub(crate) fn install_if_asked() {
    if std::env::var("KEYWARD_BENCH_RECORDER").as_deref() == Ok("registry") {
        metrics::set_global_recorder(RegistryRecorder(Registry::atomic()))
            .unwrap_or_else(|_| panic!("no other recorder"));
        eprintln!("metrics: reporting to a registry recorder");
    }
}
