//! A panic while handling one request (a bug, provoked here through the runtime's test-only hook)
//! costs that request alone: it gets `500`, the panic is logged with the request's details, its
//! keep-alive connection (over HTTP/2: the streams beside it) goes on, and every other client is
//! served meanwhile.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use juggler::table::Settings;
use juggler_testkit::*;

/// Log lines, captured for the assertion on what the panic report says.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn panicking_request() -> Request<Full<Bytes>> {
    Request::get("/about-to-panic?id=17")
        .header("host", "juggler.test")
        .header("x-juggler-test-panic", "1")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[juggler_testkit::test]
async fn a_panicking_request_gets_500_and_everyone_else_is_served() {
    let log = CapturedLog::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let backend = TestBackend::start("server").await;
    let juggler = TestJuggler::start(table(&[backend.addr], 2, Settings::DEFAULT)).await;

    // Other clients keep going while panics happen.
    let others = tokio::spawn({
        let addr = juggler.addr;
        async move {
            let mut served = 0;
            for _ in 0..50 {
                assert_eq!(get(addr, "/other").await.unwrap().status, 200);
                served += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            served
        }
    });
    let mut client = Client::connect(juggler.addr).await;
    for _ in 0..5 {
        let answer = client.send(panicking_request()).await.unwrap();
        assert_eq!(answer.status, 500);
        // The same keep-alive connection still carries ordinary requests.
        assert_eq!(client.get("/after").await.unwrap().status, 200);
    }
    assert_eq!(others.await.unwrap(), 50);
    assert_eq!(juggler.open_connections(), [2]);

    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let reports: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("panicked"))
        .collect();
    println!("panic reports: {reports:#?}");
    assert_eq!(reports.len(), 5);
    for report in reports {
        assert!(report.contains("ERROR"), "{report}");
        assert!(report.contains("/about-to-panic?id=17"), "{report}");
        assert!(report.contains("method=GET"), "{report}");
        assert!(report.contains("client=127.0.0.1"), "{report}");
    }
    juggler.shutdown().await.unwrap();
}

/// Over HTTP/2 a connection's streams share its task: a panicking stream must still cost only
/// itself, not the streams beside it on the same connection, nor the connection.
#[juggler_testkit::test]
async fn a_panicking_http2_stream_gets_500_and_the_streams_beside_it_are_served() {
    // A short delay keeps the ordinary streams in flight while the panics happen.
    let backend = TestBackend::start_with(Behaviour {
        name: "server".to_owned(),
        delay: Duration::from_millis(20),
    })
    .await;
    let (cert, files) = CertFiles::generate("h2-panic");
    let juggler =
        TestJuggler::start_https(table(&[backend.addr], 2, Settings::DEFAULT), &files).await;
    let client = juggler_testkit::tls::H2Client::connect(juggler.https_addr(), &cert).await;
    let mut streams = tokio::task::JoinSet::new();
    for n in 0..30 {
        let client = client.clone();
        streams.spawn(async move {
            let panics = n % 10 == 0;
            let answer = match panics {
                true => client.send(panicking_request()).await,
                false => client.get("/beside").await,
            };
            (panics, answer.unwrap().status)
        });
    }
    let mut statuses = (Vec::new(), Vec::new());
    while let Some(joined) = streams.join_next().await {
        let (panicked, status) = joined.unwrap();
        match panicked {
            true => statuses.0.push(status),
            false => statuses.1.push(status),
        }
    }
    assert_eq!(statuses.0, [500; 3]);
    assert_eq!(statuses.1, [200; 27]);
    // The connection itself goes on.
    assert_eq!(client.get("/after").await.unwrap().status, 200);
    juggler.shutdown().await.unwrap();
}
