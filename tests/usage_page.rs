//! The admin API's usage page in a real browser: headless Chromium
//! (Debian's `chromium`), driven over the DevTools protocol, loads the page
//! from a test server, the key and owner are typed into the form, and the
//! test reads the rendered charts from the DOM, takes a screenshot that
//! must not be blank, and checks that the console shows no error and that
//! the key went out in a header only.
//!
//! Without Chromium the test skips and says so; with `CI=true` it fails
//! instead (`.ci/run` installs `chromium`).

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use base64ct::{Base64, Encoding};
use futures_util::{SinkExt, StreamExt};
use keyward::admin::AdminApi;
use keyward::auth::Principal;
use keyward::clock::FakeClock;
use keyward::manager::IssueOptions;
use keyward::usage::RollupSink;
use keyward::{KeyFormat, Keyward, MemoryStore, RequireScopes};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tower::ServiceExt;

const CHROMIUM: &str = "/usr/bin/chromium";
/// How long any one step may take before the test gives up.
const STEP: Duration = Duration::from_secs(30);

/// The browser to use, or `None` after saying why the test is skipped.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from(CHROMIUM), PathBuf::from);
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {} is missing: .ci/run installs the `chromium` package",
        path.display()
    );
    // Past the harness's capture, so a plain `cargo test` says it.
    let _ = writeln!(
        std::io::stderr(),
        "skipped the usage page's browser test: {} is missing (apt-get install chromium)",
        path.display()
    );
    None
}

/// A DevTools protocol connection to the browser, with one page attached
/// (flat sessions).
struct DevTools {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: Option<String>,
    next_id: u64,
    /// Every event received so far, in order.
    events: Vec<Value>,
}

impl DevTools {
    async fn connect(url: &str) -> Self {
        let (socket, _) = timeout(STEP, tokio_tungstenite::connect_async(url))
            .await
            .expect("connecting to DevTools in time")
            .expect("a DevTools connection");
        Self {
            socket,
            session: None,
            next_id: 0,
            events: Vec::new(),
        }
    }

    async fn receive(&mut self) -> Value {
        loop {
            let message = timeout(STEP, self.socket.next())
                .await
                .expect("the browser answered in time")
                .expect("the connection is open")
                .expect("a message");
            if let Message::Text(text) = message {
                return serde_json::from_str(text.as_str()).expect("DevTools speaks JSON");
            }
        }
    }

    /// Calls `method` (on the attached page, once there is one) and
    /// returns its result; events that arrive meanwhile are kept.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            command["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::text(command.to_string()))
            .await
            .expect("sending a command");
        loop {
            let message = self.receive().await;
            if message["id"] == id {
                assert!(message.get("error").is_none(), "{method}: {message}");
                return message["result"].clone();
            }
            if message.get("method").is_some() {
                self.events.push(message);
            }
        }
    }

    /// Waits for an event called `method`.
    async fn event(&mut self, method: &str) -> Value {
        if let Some(event) = self.events.iter().find(|e| e["method"] == method) {
            return event.clone();
        }
        loop {
            let message = self.receive().await;
            if message.get("method").is_some() {
                self.events.push(message.clone());
                if message["method"] == method {
                    return message;
                }
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Types `text` into the element `selector`, as a user would: focus,
    /// then key input.
    async fn type_into(&mut self, selector: &str, text: &str) {
        let focused = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({selector:?}); e.focus(); return document.activeElement === e; }})()"
            ))
            .await;
        assert_eq!(focused, json!(true), "{selector} takes the focus");
        self.call("Input.insertText", json!({"text": text})).await;
    }

    async fn press_enter(&mut self) {
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": "Enter", "code": "Enter",
                       "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13,
                       "text": if kind == "keyDown" { "\r" } else { "" }}),
            )
            .await;
        }
    }
}

/// A browser process, killed when dropped.
struct Browser {
    child: tokio::process::Child,
    _profile: TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts headless Chromium on a fresh profile; returns it and its
/// DevTools address.
async fn launch(path: &PathBuf) -> (Browser, String) {
    let profile = std::env::temp_dir().join(format!(
        "keyward-chromium-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&profile).unwrap();
    let mut child = tokio::process::Command::new(path)
        .args([
            "--headless=new",
            // Root in a container: Chromium's sandbox needs namespaces
            // that are not there.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--window-size=1000,900",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = timeout(STEP, async {
        while let Some(line) = lines.next_line().await.expect("chromium's stderr") {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                return url.trim().to_owned();
            }
        }
        panic!("chromium exited without a DevTools address");
    })
    .await
    .expect("chromium started in time");
    // Keep draining stderr so the browser never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (
        Browser {
            child,
            _profile: TempDir(profile),
        },
        url,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_page_draws_an_owners_keys_in_a_browser() {
    let Some(chromium) = chromium() else {
        return;
    };

    // The service: a protected route, the admin API at /admin, usage
    // counted per minute on a fake clock.
    let clock = FakeClock::default();
    let usage = RollupSink::new();
    let keyward = Keyward::new(MemoryStore::new(), KeyFormat::new("sk_test").unwrap())
        .with_clock(clock.clone())
        .with_sink(usage.clone());
    let admin = keyward
        .manager()
        .issue(IssueOptions::new("ops").scopes("keys:admin".parse().unwrap()))
        .await
        .unwrap();
    let admin_key = admin.key.expose_secret().to_owned();
    let app = Router::new()
        .route(
            "/pets",
            get(|p: Principal| async move { p.owner().to_owned() })
                .route_layer(RequireScopes::try_all(["pets:read"]).unwrap()),
        )
        .layer(keyward.auth_layer())
        .nest("/admin", AdminApi::new(keyward.manager(), usage).router())
        .layer(keyward.usage_layer());

    // Two keys of acme: one reads pets (allowed), one lacks the scope
    // (denied), over three hours.
    let reader = keyward
        .manager()
        .issue(
            IssueOptions::new("acme")
                .name("reader")
                .scopes("pets:read".parse().unwrap()),
        )
        .await
        .unwrap();
    let other = keyward
        .manager()
        .issue(IssueOptions::new("acme").name("no scope"))
        .await
        .unwrap();
    for hour in 0..3u32 {
        for _ in 0..=hour {
            for key in [&reader.key, &other.key] {
                let request = http::Request::get("/pets")
                    .header("x-api-key", key.expose_secret())
                    .body(axum::body::Body::empty())
                    .unwrap();
                app.clone().oneshot(request).await.unwrap();
            }
        }
        clock.advance(Duration::from_secs(3600));
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let (_browser, devtools_url) = launch(&chromium).await;
    let mut devtools = DevTools::connect(&devtools_url).await;
    let target = devtools
        .call("Target.createTarget", json!({"url": "about:blank"}))
        .await;
    let attached = devtools
        .call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )
        .await;
    devtools.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
    for domain in ["Page", "Runtime", "Log", "Network"] {
        devtools.call(&format!("{domain}.enable"), json!({})).await;
    }
    devtools
        .call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1000, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;

    let page_url = format!("http://{address}/admin/usage");
    devtools
        .call("Page.navigate", json!({"url": page_url}))
        .await;
    devtools.event("Page.loadEventFired").await;
    assert_eq!(devtools.eval("document.title").await, "API key usage");

    devtools.type_into("#key", &admin_key).await;
    devtools.type_into("#owner", "acme").await;
    devtools.press_enter().await;

    // Wait (bounded) for the script to draw both keys' charts.
    let mut charts = 0;
    let deadline = tokio::time::Instant::now() + STEP;
    while tokio::time::Instant::now() < deadline {
        charts = devtools
            .eval("document.querySelectorAll('svg.chart').length")
            .await
            .as_u64()
            .unwrap();
        if charts == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        charts,
        2,
        "status: {}",
        devtools
            .eval("document.querySelector('#status').textContent")
            .await
    );

    // The charts' elements: 24 hourly bars of each kind per key, some of
    // them drawn, allowed for the reader, denied for the other key.
    let drawn = devtools
        .eval(
            "[...document.querySelectorAll('svg.chart')].map(c => ({ \
               id: c.dataset.keyId, \
               allowed: [...c.querySelectorAll('rect.allowed')].map(r => +r.getAttribute('height')), \
               denied: [...c.querySelectorAll('rect.denied')].map(r => +r.getAttribute('height')), \
               box: c.getBoundingClientRect().width }))",
        )
        .await;
    let find = |id: &str| {
        drawn
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("a chart for {id}: {drawn}"))
            .clone()
    };
    let heights = |chart: &Value, kind: &str| -> Vec<f64> {
        chart[kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_f64().unwrap())
            .collect()
    };
    let reader_chart = find(&reader.record.id.to_string());
    let other_chart = find(&other.record.id.to_string());
    for chart in [&reader_chart, &other_chart] {
        assert_eq!(heights(chart, "allowed").len(), 24);
        assert_eq!(heights(chart, "denied").len(), 24);
        assert!(chart["box"].as_f64().unwrap() > 100.0);
    }
    // 1, 2 and 3 requests in the last three whole hours before "now"
    // (the current, empty hour is the last bar).
    let allowed = heights(&reader_chart, "allowed");
    assert!(allowed[20..23].iter().all(|h| *h > 0.0), "{allowed:?}");
    assert!(
        allowed[20] < allowed[21] && allowed[21] < allowed[22],
        "{allowed:?}"
    );
    assert!(allowed[..20].iter().all(|h| *h == 0.0));
    assert!(heights(&reader_chart, "denied").iter().all(|h| *h == 0.0));
    let denied = heights(&other_chart, "denied");
    assert!(denied[20..23].iter().all(|h| *h > 0.0), "{denied:?}");
    assert!(heights(&other_chart, "allowed").iter().all(|h| *h == 0.0));

    // Never a secret on the page; nothing kept in cookies or storage.
    let text = devtools
        .eval("document.body.innerText + document.documentElement.outerHTML")
        .await;
    let text = text.as_str().unwrap();
    for secret in [
        admin_key.as_str(),
        reader.key.expose_secret(),
        other.key.expose_secret(),
    ] {
        assert!(!text.contains(secret), "a key on the page");
    }
    assert!(text.contains(&reader.record.id.to_string()));
    assert_eq!(
        devtools
            .eval("document.cookie.length + localStorage.length + sessionStorage.length")
            .await,
        json!(0)
    );

    // The screenshot is not blank: the charts' colours are in it.
    let shot = devtools
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = Base64::decode_vec(shot["data"].as_str().unwrap()).unwrap();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("usage_page.png");
    std::fs::write(&out, &png).unwrap();
    let (width, height, pixels) = decode(&png);
    assert!(width >= 800 && height >= 600, "{width}x{height}");
    let count = |wanted: [u8; 3]| {
        pixels
            .chunks_exact(3)
            .filter(|p| p.iter().zip(wanted).all(|(a, b)| a.abs_diff(b) <= 8))
            .count()
    };
    let green = count([0x2e, 0x7d, 0x32]);
    let red = count([0xc6, 0x28, 0x28]);
    assert!(
        green > 200 && red > 200,
        "allowed {green} px, denied {red} px ({})",
        out.display()
    );
    let first = &pixels[..3];
    assert!(
        pixels.chunks_exact(3).any(|p| p != first),
        "a blank screenshot"
    );

    // The key went out in a header, never in a URL.
    let requests: Vec<&Value> = devtools
        .events
        .iter()
        .filter(|e| e["method"] == "Network.requestWillBeSent")
        .collect();
    let api_calls: Vec<&&Value> = requests
        .iter()
        .filter(|e| {
            e["params"]["request"]["url"]
                .as_str()
                .is_some_and(|u| u.contains("/admin/keys") || u.contains("/usage?"))
        })
        .collect();
    assert_eq!(api_calls.len(), 2, "{requests:?}");
    for event in &requests {
        let url = event["params"]["request"]["url"].as_str().unwrap();
        assert!(!url.contains(&admin_key), "the key in a URL: {url}");
    }
    for call in api_calls {
        assert_eq!(
            call["params"]["request"]["headers"]["X-API-Key"],
            admin_key.as_str()
        );
    }

    // The console shows no error: no exception, no console.error, no
    // browser log entry at error level (CSP violations land there).
    let errors: Vec<&Value> = devtools
        .events
        .iter()
        .filter(|e| {
            e["method"] == "Runtime.exceptionThrown"
                || (e["method"] == "Runtime.consoleAPICalled" && e["params"]["type"] == "error")
                || (e["method"] == "Log.entryAdded" && e["params"]["entry"]["level"] == "error")
        })
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");

    server.abort();
}

/// Decodes a PNG into RGB pixels.
fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buffer = vec![
        0;
        reader
            .output_buffer_size()
            .expect("a PNG that fits in memory")
    ];
    let info = reader.next_frame(&mut buffer).expect("a frame");
    let bytes = &buffer[..info.buffer_size()];
    let pixels = match info.color_type {
        png::ColorType::Rgb => bytes.to_vec(),
        png::ColorType::Rgba => bytes
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        other => panic!("unexpected colour type {other:?}"),
    };
    (info.width, info.height, pixels)
}
