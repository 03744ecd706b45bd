//! `examples/credentials.rs` as a user runs it: the example binary (built
//! by cargo with this test's features) started as an OS process on
//! `127.0.0.1:0`; every credential it prints is used over real TCP against
//! `GET /whoami` and `POST /echo`, and the signed requests are made with
//! the crate's `RequestSigner`.
#![cfg(all(
    feature = "signatures",
    feature = "jwt",
    feature = "axum",
    feature = "serde"
))]

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use http::Request;
use keyward::signature::{RequestSigner, SigningKey};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The example's binary, built once: `cargo build --example credentials`
/// with this test's features, into the same target directory.
fn example_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| support::examples::build_example("credentials"))
}

/// The running example; killed when dropped.
struct Example {
    child: Child,
    addr: String,
    lines: Vec<(String, String)>,
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Example {
    fn start() -> Self {
        let mut child = Command::new(example_binary())
            .arg("127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the example");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        // listening on, api key, jwt, jwt secret, imported key, signing key id,
        // signing private key, publishable key, allowed origin.
        while lines.len() < 9 {
            let line = receiver
                .recv_timeout(Duration::from_secs(30))
                .expect("the example prints its lines within 30 s");
            let (name, value) = match line.strip_prefix("listening on ") {
                Some(url) => ("listening on", url),
                None => line.split_once(": ").expect("`name: value` lines"),
            };
            lines.push((name.to_owned(), value.to_owned()));
        }
        let addr = lines[0]
            .1
            .strip_prefix("http://")
            .expect("listening on http://ADDR:PORT")
            .to_owned();
        assert_eq!(lines[0].0, "listening on");
        assert!(!addr.ends_with(":0"), "a real port: {addr}");
        Example { child, addr, lines }
    }

    fn line(&self, name: &str) -> &str {
        self.lines
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("the example prints `{name}: …`"))
    }

    /// Sends `request` (headers and body as given, plus Host and
    /// Connection) over a fresh connection; the status and the body.
    async fn send(&self, request: &Request<Vec<u8>>) -> (u16, String) {
        let mut raw = format!(
            "{} {} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-length: {}\r\n",
            request.method(),
            request.uri().path_and_query().map_or("/", |p| p.as_str()),
            self.addr,
            request.body().len()
        )
        .into_bytes();
        for (name, value) in request.headers() {
            raw.extend_from_slice(name.as_str().as_bytes());
            raw.extend_from_slice(b": ");
            raw.extend_from_slice(value.as_bytes());
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(request.body());
        let mut stream = TcpStream::connect(&self.addr).await.expect("connect");
        stream.write_all(&raw).await.expect("send");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn get(path: &str, headers: &[(&str, &str)]) -> Request<Vec<u8>> {
    let mut builder = Request::get(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Vec::new()).unwrap()
}

fn whoami(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

#[tokio::test]
async fn every_printed_credential_works_over_tcp() {
    let example = tokio::task::spawn_blocking(Example::start).await.unwrap();
    let api_key = example.line("api key").to_owned();
    assert!(api_key.starts_with("sk_live_"));

    // API key: bearer, X-API-Key, Basic auth's user name.
    let bearer = format!("Bearer {api_key}");
    let (status, body) = example
        .send(&get("/whoami", &[("authorization", &bearer)]))
        .await;
    assert_eq!(status, 200, "{body}");
    let who = whoami(&body);
    assert_eq!(who["owner"], "api-client");
    assert_eq!(who["credential"], "api_key");
    assert_eq!(who["scopes"], serde_json::json!(["pets:read"]));
    assert!(!body.contains(&api_key));

    let basic = {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{api_key}:"))
        )
    };
    let (status, body) = example
        .send(&get("/whoami", &[("authorization", &basic)]))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(whoami(&body)["credential"], "api_key");

    let echo = Request::post("/echo")
        .header("x-api-key", &api_key)
        .body(b"hello".to_vec())
        .unwrap();
    assert_eq!(example.send(&echo).await, (200, "hello".to_owned()));

    // The JWT-based key, as a bearer token.
    let jwt = example.line("jwt").to_owned();
    assert_eq!(jwt.split('.').count(), 3, "a JWT: {jwt}");
    let (status, body) = example
        .send(&get(
            "/whoami",
            &[("authorization", &format!("Bearer {jwt}"))],
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let who = whoami(&body);
    assert_eq!(who["owner"], "jwt-client");
    assert_eq!(who["credential"], "jwt");
    let secret = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(example.line("jwt secret"))
            .expect("base64url")
    };
    assert_eq!(secret.len(), 32);
    // A token signed with another secret: refused like any bad key.
    let mut forged = jwt.clone();
    forged.truncate(jwt.rfind('.').unwrap() + 1);
    forged.push_str("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let (status, _) = example
        .send(&get(
            "/whoami",
            &[("authorization", &format!("Bearer {forged}"))],
        ))
        .await;
    assert_eq!(status, 401);

    // The publishable key: from its origin only.
    let publishable = example.line("publishable key").to_owned();
    let origin = example.line("allowed origin").to_owned();
    let (status, body) = example
        .send(&get(
            "/whoami",
            &[("x-api-key", &publishable), ("origin", &origin)],
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(whoami(&body)["credential"], "publishable");
    for headers in [
        vec![("x-api-key", publishable.as_str())],
        vec![("x-api-key", publishable.as_str()), ("origin", "null")],
        vec![
            ("x-api-key", publishable.as_str()),
            ("origin", "https://app.example.com.evil.io"),
        ],
    ] {
        let (status, body) = example.send(&get("/whoami", &headers)).await;
        assert_eq!(status, 403, "{headers:?}: {body}");
    }

    // The imported key.
    let imported = example.line("imported key").to_owned();
    assert_eq!(imported.len(), 32);
    let (status, body) = example
        .send(&get("/whoami", &[("x-api-key", &imported)]))
        .await;
    assert_eq!(status, 200, "{body}");
    let who = whoami(&body);
    assert_eq!(who["owner"], "old-client");
    assert_eq!(who["credential"], "imported");

    // Signed requests, with the printed key pair.
    let key_id = example.line("signing key id").to_owned();
    let private_key = SigningKey::ed25519_from_base64(example.line("signing private key"))
        .expect("base64 of a 32-byte seed");
    let signer = RequestSigner::new(key_id.as_str(), private_key);
    let mut signed = Request::post(example.url("/echo"))
        .body(br#"{"hello":"world"}"#.to_vec())
        .unwrap();
    signer.sign(&mut signed).unwrap();
    assert_eq!(
        example.send(&signed).await,
        (200, r#"{"hello":"world"}"#.to_owned())
    );
    // The same signed request again: a replay.
    assert_eq!(example.send(&signed).await.0, 401);
    let mut who_signs = Request::get(example.url("/whoami"))
        .body(Vec::new())
        .unwrap();
    signer.sign(&mut who_signs).unwrap();
    let (status, body) = example.send(&who_signs).await;
    assert_eq!(status, 200, "{body}");
    let who = whoami(&body);
    assert_eq!(who["credential"], "signature");
    assert_eq!(who["key_id"], key_id.as_str());
    // A tampered body never reaches the handler whole.
    let mut tampered = Request::post(example.url("/echo"))
        .body(br#"{"hello":"world"}"#.to_vec())
        .unwrap();
    signer.sign(&mut tampered).unwrap();
    *tampered.body_mut() = br#"{"hello":"there"}"#.to_vec();
    let (status, body) = example.send(&tampered).await;
    assert_ne!(status, 200);
    assert!(!body.contains("there"));

    // Two credentials: refused; none: 401.
    let mut both = Request::get(example.url("/whoami"))
        .body(Vec::new())
        .unwrap();
    signer.sign(&mut both).unwrap();
    both.headers_mut()
        .insert("x-api-key", api_key.parse().unwrap());
    assert_eq!(example.send(&both).await.0, 400);
    assert_eq!(example.send(&get("/whoami", &[])).await.0, 401);
}
