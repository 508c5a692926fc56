//! Any bytes as a backend's answer, through Juggler's real backend connection over loopback
//! (`BackendConn::read_head`, the public way in): never a panic, and a head it accepts is sane.
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use juggler::backend::conn::{BackendConn, FieldsWanted, Framing};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

struct Loopback {
    runtime: Runtime,
    listener: TcpListener,
    addr: SocketAddr,
}

thread_local! {
    static LOOPBACK: Loopback = {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        Loopback { runtime, listener, addr }
    };
}

fuzz_target!(|input: &[u8]| {
    if input.is_empty() {
        return;
    }
    let request_was_head = input[0] & 1 == 1;
    // Both ways an answer's fields are handed on: as a header map, and as the backend sent them.
    let fields = if input[0] & 2 == 2 { FieldsWanted::AsSent } else { FieldsWanted::HeaderMap };
    let answer = &input[1..];
    LOOPBACK.with(|lo| {
        lo.runtime.block_on(async {
            let addr = lo.addr.to_string();
            let (conn, accepted) = tokio::join!(
                BackendConn::connect(&addr, Duration::from_secs(1)),
                lo.listener.accept()
            );
            let (mut conn, (mut backend, _)) = (conn.unwrap(), accepted.unwrap());
            backend.write_all(answer).await.unwrap();
            backend.shutdown().await.unwrap();
            let head = tokio::time::timeout(Duration::from_secs(5), conn.read_head(request_was_head, fields))
                .await
                .expect("read_head hung on a closed connection");
            if let Ok(head) = head {
                assert!(!head.status.is_informational(), "interim response returned as final");
                if head.framing == Framing::UntilClose {
                    assert!(!head.keep_alive, "close-delimited body on a kept connection");
                }
                if fields == FieldsWanted::AsSent {
                    assert!(head.headers.is_empty() && head.forwarded.is_some(), "fields not as sent");
                }
            }
            // Abort (RST) rather than close: no TIME_WAIT, so millions of runs keep finding ports.
            let _ = backend.set_zero_linger();
        })
    });
});
