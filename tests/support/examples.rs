//! An example's binary, built for a test that starts it as an OS process.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

/// Builds `examples/<name>.rs` with `cargo build --example <name>`, with the
/// features this test binary was built with, into the same target
/// directory (so that `cargo test` reuses what it built), and returns the
/// executable's path. Call it once per test binary (behind a `OnceLock`).
pub(crate) fn build_example(name: &str) -> PathBuf {
    // <target>/<profile>/deps/<test>-<hash>
    let exe = std::env::current_exe().expect("the test binary's path");
    let target_dir = exe
        .ancestors()
        .nth(3)
        .expect("the test binary lives in <target>/<profile>/deps");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--example", name, "--message-format=json"])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    // The same features as this build, so the library is not rebuilt: every
    // feature of Cargo.toml is listed here.
    let features = [
        ("axum", cfg!(feature = "axum")),
        ("serde", cfg!(feature = "serde")),
        ("test-util", cfg!(feature = "test-util")),
        ("tokio", cfg!(feature = "tokio")),
        ("secret-scanning", cfg!(feature = "secret-scanning")),
        ("postgres", cfg!(feature = "postgres")),
        ("signatures", cfg!(feature = "signatures")),
        ("redis", cfg!(feature = "redis")),
        ("metrics", cfg!(feature = "metrics")),
        ("admin", cfg!(feature = "admin")),
        ("jwt", cfg!(feature = "jwt")),
    ];
    if features.iter().all(|(_, on)| *on) {
        command.arg("--all-features");
    } else {
        let on: Vec<&str> = features
            .iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| *name)
            .collect();
        command.arg("--features").arg(on.join(","));
    }
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run cargo build --example {name}: {e}"));
    assert!(
        output.status.success(),
        "cargo build --example {name} failed"
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|message| {
            message["reason"] == "compiler-artifact"
                && message["target"]["name"] == name
                && message["target"]["kind"][0] == "example"
        })
        .and_then(|artifact| artifact["executable"].as_str().map(PathBuf::from))
        .expect("cargo names the example's executable")
}
