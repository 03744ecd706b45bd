//! Signs one request with keyward's `RequestSigner` (HTTP Message
//! Signatures, RFC 9421) and prints it as a `curl` command line, ready to
//! run against `examples/credentials` (or any keyward service that
//! verifies signatures).
//!
//! ```sh
//! cargo run -q --example sign_request --features signatures -- \
//!     KEY_ID PRIVATE_KEY METHOD URL [BODY]
//! # for instance, with the lines examples/credentials printed:
//! eval "$(cargo run -q --example sign_request --features signatures -- \
//!     "$SIGNING_KEY_ID" "$SIGNING_PRIVATE_KEY" POST http://127.0.0.1:3000/echo '{"hello":"world"}')"
//! ```
//!
//! `PRIVATE_KEY` is an Ed25519 private key as base64 of its 32-byte seed
//! (what `KeyManager::issue_key_pair` hands out). The signature covers the
//! method, authority, path, query and, with a body, its `Content-Digest`;
//! it carries a nonce and the current time, so the printed line works once,
//! within five minutes.

use http::Request;
use keyward::signature::{RequestSigner, SigningKey};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: sign_request KEY_ID PRIVATE_KEY METHOD URL [BODY]";
    let (Some(key_id), Some(private_key), Some(method), Some(url)) =
        (args.next(), args.next(), args.next(), args.next())
    else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let body = args.next().unwrap_or_default();

    let key = SigningKey::ed25519_from_base64(&private_key)?;
    let mut request = Request::builder()
        .method(method.as_str())
        .uri(url.as_str())
        .body(body.clone().into_bytes())?;
    RequestSigner::new(key_id, key).sign(&mut request)?;

    let mut line = format!("curl -sS -X {} {}", shell_quote(&method), shell_quote(&url));
    for (name, value) in request.headers() {
        let header = format!("{}: {}", name, value.to_str()?);
        line.push_str(&format!(" -H {}", shell_quote(&header)));
    }
    if !body.is_empty() {
        line.push_str(&format!(" --data-binary {}", shell_quote(&body)));
    }
    println!("{line}");
    Ok(())
}

/// `s` in single quotes for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
