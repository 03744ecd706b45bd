//! Other OS processes for multi-process tests: this test binary run again,
//! with only one (child-mode) test selected and its orders in the
//! environment.

use std::process::{Command, Stdio};

/// The variable that tells a child what to do; unset in a normal run.
pub(crate) const CHILD_VAR: &str = "KEYWARD_TEST_CHILD";

/// The orders this process was started with, if it is a child.
pub(crate) fn child_orders() -> Option<String> {
    std::env::var(CHILD_VAR).ok().filter(|o| !o.is_empty())
}

/// Runs `count` copies of this test binary at once, each running only the
/// test `test` with [`CHILD_VAR`] set to `orders(i)`, and waits for all;
/// panics if one fails. Returns what each printed.
pub(crate) async fn run_children(
    test: &str,
    count: usize,
    orders: impl Fn(usize) -> String,
) -> Vec<String> {
    let exe = std::env::current_exe().expect("the test binary's path");
    let children: Vec<_> = (0..count)
        .map(|i| {
            Command::new(&exe)
                .args(["--exact", test, "--nocapture", "--test-threads=1"])
                .env(CHILD_VAR, orders(i))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a child process")
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|child| {
                let output = child.wait_with_output().expect("wait for a child");
                let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
                assert!(
                    output.status.success(),
                    "a child process failed:\n{stdout}\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                stdout
            })
            .collect()
    })
    .await
    .expect("the waiting thread")
}
