//! `pipeline = true` (issue 18): a request that would wait for a pooled connection is written
//! behind the one a busy connection carries. Against a real backend that reads whatever arrives
//! and answers in order: every client gets its own answer, the backend still sees `n` connections
//! with at most one request waiting behind the one it answers, a connection that closes after an
//! answer costs no request (the one behind it is sent again), and nothing with a body, nothing
//! non-idempotent and nothing on an upstream without `pipeline` is ever written behind another.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::Request;
use http_body_util::Full;
use juggler::table::Settings;
use juggler_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the pipelining backend saw.
#[derive(Debug, Default)]
struct PipeStats {
    /// The most complete requests ever buffered on one connection when it began an answer (the
    /// one answered included): 2 means one waited behind it.
    deepest: Count,
    /// Connections open at once, at most.
    most_open: Count,
    open: Count,
    answered: Count,
}

/// How the backend treats each connection.
#[derive(Debug, Clone, Copy)]
struct Serving {
    /// Time taken over each answer.
    delay: Duration,
    /// Answers per connection, the last with `Connection: close` (0: keep it open).
    close_after: usize,
}

/// A backend on raw TCP that reads requests as they come (pipelined ones too) and answers them
/// one at a time, in order, each with its request line's path as the body.
async fn pipelining_backend(serving: Serving) -> Backend<PipeStats> {
    Backend::serve(
        bind_local().await,
        PipeStats::default(),
        move |stream, stats| async move {
            stats.most_open.raise_to(stats.open.bump());
            serve(stream, &stats, serving).await;
        },
    )
}

/// One complete request at the front of `buffer`: its path and its length (head and body).
fn front_request(buffer: &[u8]) -> Option<(String, usize)> {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut fields);
    let httparse::Status::Complete(head) = request.parse(buffer).unwrap() else {
        return None;
    };
    let body: usize = request
        .headers
        .iter()
        .find(|field| field.name.eq_ignore_ascii_case("content-length"))
        .map_or(0, |field| {
            std::str::from_utf8(field.value).unwrap().parse().unwrap()
        });
    (buffer.len() >= head + body).then(|| (request.path.unwrap().to_owned(), head + body))
}

/// Complete requests in `buffer`.
fn complete_requests(mut buffer: &[u8]) -> usize {
    let mut count = 0;
    while let Some((_, len)) = front_request(buffer) {
        buffer = &buffer[len..];
        count += 1;
    }
    count
}

/// Serves one connection, counted open in `stats` until it is closed: by the client, or by the
/// backend itself as soon as it has decided to close (before its last answer is out, which may
/// already bring the next connection).
async fn serve(mut stream: TcpStream, stats: &PipeStats, serving: Serving) {
    let mut buffer = BytesMut::new();
    let mut answers = 0;
    loop {
        let Some((path, len)) = front_request(&buffer) else {
            match stream.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        };
        tokio::time::sleep(serving.delay).await;
        // Everything sent meanwhile, to see what waits behind this request.
        let mut more = [0u8; 4096];
        while let Ok(read) = stream.try_read(&mut more) {
            if read == 0 {
                break;
            }
            buffer.extend_from_slice(&more[..read]);
        }
        stats.deepest.raise_to(complete_requests(&buffer));
        buffer.advance(len);
        answers += 1;
        let closing = serving.close_after != 0 && answers == serving.close_after;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{}\r\n{path}",
            path.len(),
            if closing { "connection: close\r\n" } else { "" }
        );
        stats.answered.bump();
        if closing {
            stats.open.drop_one();
            let _ = stream.write_all(answer.as_bytes()).await;
            return;
        }
        if stream.write_all(answer.as_bytes()).await.is_err() {
            break;
        }
    }
    stats.open.drop_one();
}

/// `clients` connections each sending `per_client` requests made by `request(client, n)` one
/// after another; every answer must be a 200 whose body is the request's own path.
async fn load(
    addr: std::net::SocketAddr,
    clients: usize,
    per_client: usize,
    request: fn(usize, usize) -> Request<Full<bytes::Bytes>>,
) {
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            tokio::spawn(async move {
                let mut connection = Client::connect(addr).await;
                for n in 0..per_client {
                    let request = request(client, n);
                    let path = request.uri().path().to_owned();
                    let answer = connection.send(request).await.expect("answered");
                    assert_eq!(answer.status, 200, "{path}: {}", answer.text());
                    assert_eq!(answer.text(), path, "an answer reached the wrong request");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

fn get_request(client: usize, n: usize) -> Request<Full<bytes::Bytes>> {
    Request::get(format!("/c{client}/r{n}"))
        .header("host", "test")
        .body(Full::default())
        .unwrap()
}

fn post_request(client: usize, n: usize) -> Request<Full<bytes::Bytes>> {
    post(
        &format!("/c{client}/r{n}"),
        bytes::Bytes::from_static(b"a body"),
    )
}

const POOL: usize = 2;

#[juggler_testkit::test]
async fn waiting_requests_ride_behind_busy_ones_and_each_client_gets_its_own_answer() {
    let backend = pipelining_backend(Serving {
        delay: Duration::from_millis(2),
        close_after: 0,
    })
    .await;
    let juggler =
        TestJuggler::start(pipelined_table(&[backend.addr], POOL, Settings::DEFAULT)).await;
    load(juggler.addr, 24, 15, get_request).await;

    let counted = juggler.proxy.pools[0].counters.snapshot();
    assert!(counted.pipelined > 0, "no request rode: {counted:?}");
    assert_eq!(backend.stats.answered.get(), 24 * 15);
    assert_eq!(
        backend.stats.deepest.get(),
        2,
        "none or more than one waited behind an answer"
    );
    assert_eq!(
        backend.accepted(),
        POOL,
        "the backend saw more than n connections"
    );
    assert_eq!(counted.pipeline_lost, 0);
}

#[juggler_testkit::test]
async fn a_connection_closed_after_an_answer_loses_the_request_behind_it_but_no_client_does() {
    let backend = pipelining_backend(Serving {
        delay: Duration::from_millis(2),
        close_after: 3,
    })
    .await;
    let juggler =
        TestJuggler::start(pipelined_table(&[backend.addr], POOL, Settings::DEFAULT)).await;
    load(juggler.addr, 16, 12, get_request).await;

    let counted = juggler.proxy.pools[0].counters.snapshot();
    assert!(counted.pipeline_lost > 0, "no ride was lost: {counted:?}");
    assert!(counted.pipelined > 0, "no request rode: {counted:?}");
    // Sent again on a connection of the same backend, not counted as a re-send elsewhere.
    assert_eq!(counted.resends, 0, "{counted:?}");
    assert!(
        backend.stats.most_open.get() <= POOL,
        "more than n connections at once"
    );
    assert!(backend.stats.deepest.get() <= 2);
}

#[juggler_testkit::test]
async fn requests_with_a_body_never_ride() {
    let backend = pipelining_backend(Serving {
        delay: Duration::from_millis(2),
        close_after: 0,
    })
    .await;
    let juggler =
        TestJuggler::start(pipelined_table(&[backend.addr], POOL, Settings::DEFAULT)).await;
    load(juggler.addr, 16, 10, post_request).await;

    assert_eq!(juggler.proxy.pools[0].counters.snapshot().pipelined, 0);
    assert_eq!(
        backend.stats.deepest.get(),
        1,
        "a request was written behind another"
    );
    assert_eq!(backend.accepted(), POOL);
}

#[juggler_testkit::test]
async fn without_pipeline_nothing_rides() {
    let backend = pipelining_backend(Serving {
        delay: Duration::from_millis(2),
        close_after: 0,
    })
    .await;
    let juggler = TestJuggler::start(table(&[backend.addr], POOL, Settings::DEFAULT)).await;
    load(juggler.addr, 16, 10, get_request).await;

    assert_eq!(juggler.proxy.pools[0].counters.snapshot().pipelined, 0);
    assert_eq!(
        backend.stats.deepest.get(),
        1,
        "a request was written behind another"
    );
}

/// A rider whose client leaves while it waits behind a slow answer: the connection it was
/// written on is closed after that answer (its own answer would be read by nobody, or by the next
/// request), and the next requests get their own answers over a fresh connection.
#[juggler_testkit::test]
async fn a_rider_whose_client_left_never_leaves_its_answer_to_the_next_request() {
    let backend = pipelining_backend(Serving {
        delay: Duration::from_millis(500),
        close_after: 0,
    })
    .await;
    let juggler = TestJuggler::start(pipelined_table(&[backend.addr], 1, Settings::DEFAULT)).await;
    let addr = juggler.addr;
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));
    // `/x` holds the only slot for 500 ms; `/a` and then `/b` queue behind it. When `/x` is
    // answered `/a` takes the slot and writes `/b` behind itself.
    let x = tokio::spawn(async move { get(addr, "/x").await });
    pause(50).await;
    let a = tokio::spawn(async move { get(addr, "/a").await });
    pause(50).await;
    let mut leaving = TcpStream::connect(addr).await.unwrap();
    leaving
        .write_all(b"GET /b HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    // Gone while `/a` is being answered, `/b` written behind it.
    pause(550).await;
    drop(leaving);
    assert_eq!(x.await.unwrap().unwrap().text(), "/x");
    assert_eq!(a.await.unwrap().unwrap().text(), "/a");
    for n in 0..3 {
        let path = format!("/after/{n}");
        assert_eq!(get(addr, &path).await.unwrap().text(), path);
    }
    assert_eq!(
        backend.stats.deepest.get(),
        2,
        "/b was not written behind /a"
    );
    let counted = juggler.proxy.pools[0].counters.snapshot();
    assert_eq!(counted.pipelined, 0, "{counted:?}");
    assert_eq!(
        backend.accepted(),
        2,
        "the connection with /b's answer on it was not closed"
    );
}
