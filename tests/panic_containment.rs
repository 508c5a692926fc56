//! A panic while handling one request (a bug, provoked here through the runtime's test-only hook)
//! costs that request alone: it gets `500`, the panic is logged with the request's details, its
//! keep-alive connection goes on, and every other client is served meanwhile.

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
