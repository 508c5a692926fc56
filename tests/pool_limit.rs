//! A pool held below its configured `n` (`BackendPool::set_limit`, which the fleet share, slow
//! start and the adaptive limit use): lowered under load, the backend soon sees no more than the new
//! limit in connections and requests at once, every request is still answered, and raised again
//! the pool opens the slots back up.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use juggler::backend::pool::LimitSource;
use juggler::table::Settings;
use juggler_testkit::*;

/// `clients` client connections sending GETs one after another until `stop` is set; counts the
/// answers that were not 200.
fn load(
    addr: std::net::SocketAddr,
    clients: usize,
    stop: &Arc<AtomicBool>,
    failed: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..clients)
        .map(|_| {
            let stop = Arc::clone(stop);
            let failed = Arc::clone(failed);
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                let mut answered = 0;
                while !stop.load(Ordering::Relaxed) {
                    match client.get("/x").await {
                        Ok(answer) if answer.status == 200 => answered += 1,
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            client = Client::connect(addr).await;
                        }
                    }
                }
                answered
            })
        })
        .collect()
}

/// Polls every 2 ms until `done` holds, for at most `within`; the time it took.
async fn settles(within: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if done() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

#[juggler_testkit::test]
async fn a_lowered_limit_bounds_connections_and_requests_and_a_raised_one_reopens() {
    let backend = TestBackend::start_with(Behaviour {
        name: "a".to_owned(),
        delay: Duration::from_millis(3),
    })
    .await;
    let juggler = TestJuggler::start(table(&[backend.addr], 6, Settings::DEFAULT)).await;
    let pool = Arc::clone(&juggler.proxy.pools[0]);
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let clients = load(juggler.addr, 16, &stop, &failed);

    let saturated = settles(Duration::from_secs(5), || {
        backend.stats.in_flight.get() == 6
    })
    .await;
    assert!(
        saturated.is_some(),
        "the pool never carried 6 requests at once"
    );

    assert_eq!(pool.set_limit(LimitSource::FleetShare, Some(2)), 2);
    let lowered = settles(Duration::from_secs(5), || {
        backend.open() <= 2 && pool.open_connections() <= 2
    })
    .await;
    println!("lowered 6 -> 2: backend at 2 connections after {lowered:?}");
    assert!(
        lowered.is_some(),
        "backend still holds {} connections",
        backend.open()
    );
    // From now on the bound is the new limit, sampled for a while under the same load.
    let mut most_connections = 0;
    let mut most_in_flight = 0;
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_millis(500) {
        most_connections = most_connections.max(backend.open());
        most_in_flight = most_in_flight.max(backend.stats.in_flight.get());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!("at limit 2: at most {most_connections} connections, {most_in_flight} in flight");
    assert!(most_connections <= 2 && most_in_flight <= 2);
    assert_eq!(pool.busy_slots(), 2, "16 clients keep both slots busy");

    // A second source lower still wins; lifting both gives the pool its `n` back.
    assert_eq!(pool.set_limit(LimitSource::Protection, Some(1)), 1);
    assert!(settles(Duration::from_secs(5), || backend.open() <= 1)
        .await
        .is_some());
    pool.set_limit(LimitSource::Protection, None);
    assert_eq!(pool.set_limit(LimitSource::FleetShare, None), 6);
    let raised = settles(Duration::from_secs(5), || {
        backend.open() == 6 && backend.stats.in_flight.get() == 6
    })
    .await;
    println!("raised to 6: 6 connections busy after {raised:?}");
    assert!(raised.is_some());

    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for client in clients {
        answered += client.await.unwrap();
    }
    println!(
        "{answered} answered, {} failed",
        failed.load(Ordering::Relaxed)
    );
    assert!(answered > 100);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "a limit change failed requests"
    );
    assert!(backend.accepted() >= 6);
    juggler.shutdown().await.unwrap();
}

/// The refill opens a connection, and the limit is lowered before the connect completes (too late
/// for `set_limit` to find it idle and close it): once open, the connection must be closed, or the
/// pool stays above its limit for good (and a fleet instance, which records a share it gives up
/// only once its pool is down to it, never gives the share up). The backend's accept queue is
/// kept full, so the kernel drops the pool's SYN and the connect completes only when the SYN is
/// sent again, a second later, after the limit was lowered and the queue emptied.
#[juggler_testkit::test]
async fn a_connection_still_opening_when_the_limit_is_lowered_is_closed_once_open() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the accept queue: the first connect that does not complete at once found it full.
    let mut queued = Vec::new();
    while queued.len() < 16 {
        let connect = tokio::net::TcpStream::connect(addr);
        match tokio::time::timeout(Duration::from_millis(200), connect).await {
            Ok(Ok(stream)) => queued.push(stream),
            _ => break,
        }
    }
    assert!(queued.len() < 16, "the accept queue never filled");

    let juggler = TestJuggler::start(table(&[addr], 2, Settings::DEFAULT)).await;
    let pool = Arc::clone(&juggler.proxy.pools[0]);
    let opening = settles(Duration::from_secs(2), || pool.open_connections() == 1).await;
    assert!(opening.is_some(), "the refill did not start a connection");
    assert_eq!(pool.set_limit(LimitSource::FleetShare, Some(0)), 0);
    assert_eq!(
        pool.open_connections(),
        1,
        "the connection is still opening: nothing idle to close yet"
    );

    // Empty the queue (and keep accepting): the pool's connect completes at its SYN's resend.
    let accepted = Arc::new(AtomicUsize::new(0));
    let acceptor = tokio::spawn({
        let accepted = Arc::clone(&accepted);
        async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
                accepted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let expected = queued.len() + 1;
    let connected = settles(Duration::from_secs(5), || {
        accepted.load(Ordering::Relaxed) == expected
    })
    .await;
    assert!(connected.is_some(), "the pool's connect never completed");
    let closed = settles(Duration::from_secs(2), || pool.open_connections() == 0).await;
    println!("the pool's connect completed after {connected:?}; closed after {closed:?}");
    assert!(
        closed.is_some(),
        "limit 0, yet the pool keeps {} connection(s) open ({} idle)",
        pool.open_connections(),
        pool.idle_connections()
    );

    // Raised again, the pool opens its connections.
    assert_eq!(pool.set_limit(LimitSource::FleetShare, None), 2);
    let reopened = settles(Duration::from_secs(5), || pool.open_connections() == 2).await;
    assert!(
        reopened.is_some(),
        "the pool did not open its connections again"
    );
    acceptor.abort();
    drop(queued);
    juggler.shutdown().await.unwrap();
}
