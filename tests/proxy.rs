//! The test-owned fault proxy itself: what the backend fault tests rely on.

mod support;

use std::time::Duration;

use support::proxy::FaultProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo server on a free port.
async fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                while let Ok(n) = socket.read(&mut buffer).await {
                    if n == 0 || socket.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(message).await?;
    let mut answer = vec![0u8; message.len()];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}

#[tokio::test]
async fn passes_stalls_cuts_and_restores() {
    let proxy = FaultProxy::start(&echo_server().await).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"hello").await.unwrap(), b"hello");

    proxy.stall();
    let stalled =
        tokio::time::timeout(Duration::from_millis(200), round_trip(&mut stream, b"x")).await;
    assert!(stalled.is_err(), "a stalled proxy must not answer");
    proxy.restore();
    let mut rest = [0u8; 1];
    stream.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"x", "a restored proxy delivers what was held");

    proxy.cut();
    let mut buffer = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buffer)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a cut closes open connections"
    );
    let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(2), round_trip(&mut fresh, b"y")).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "a cut proxy closes new connections"
    );

    proxy.restore();
    let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut again, b"back").await.unwrap(), b"back");
    assert_eq!(proxy.accepted(), 3);
}

#[test]
fn url_rewriting_keeps_user_database_and_scheme() {
    let url = "postgres://postgres@127.0.0.1:5432/test";
    assert_eq!(support::proxy::host_port(url), "127.0.0.1:5432");
    assert_eq!(
        support::proxy::host_port("redis://127.0.0.1:6379"),
        "127.0.0.1:6379"
    );
    assert_eq!(
        support::proxy::host_port("redis://127.0.0.1:6379/2"),
        "127.0.0.1:6379"
    );
}
