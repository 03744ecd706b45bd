//! The shared servers (PostgreSQL, Redis) that some tests need.

use std::io::Write;

/// The URL in the environment variable `var` (`DATABASE_URL`, `REDIS_URL`),
/// or `None` after telling the terminal that `test` is skipped. The line is
/// written to the real stderr, past the test harness's capture, so a plain
/// `cargo test` says what it did not run.
pub(crate) fn service_url(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            let _ = writeln!(std::io::stderr(), "skipped {test}: {var} is not set");
            None
        }
    }
}

/// A name no other test (in this or another process, now or in an earlier
/// run) uses: for a schema, a table or a Redis key prefix.
pub(crate) fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}_{}_{}_{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
