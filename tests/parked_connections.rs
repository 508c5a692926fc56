//! Idle plain connections park outside any task, in one epoll set per server (`client::park`).
//! These tests check what the lot must keep exact: a parked connection still holds its place
//! under the connection cap, gives it back when its client closes, and serves its next request
//! whole, however much of it arrives at once.

use std::time::Duration;

use juggler_testkit::wire::Wire;
use juggler_testkit::*;

/// Longer than the 50 ms park delay.
const PARKED: Duration = Duration::from_millis(200);

const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: juggler.test\r\n\r\n";

#[juggler_testkit::test]
async fn parked_connections_hold_their_slot_until_their_client_closes() {
    const CAP: usize = 8;
    let settings = settings_with(|s| s.limits.max_client_connections = CAP);
    let (_backend, juggler) = start_one_backend("server", 2, settings).await;
    let mut parked = Vec::new();
    for _ in 0..CAP {
        let mut wire = Wire::connect(juggler.addr).await;
        wire.send(GET).await;
        assert_eq!(wire.read_response(false).await.status, 200);
        parked.push(wire);
    }
    tokio::time::sleep(PARKED).await;

    // At the cap: the kernel completes the handshake, Juggler does not accept.
    let mut waiting = Wire::connect(juggler.addr).await;
    waiting.send(GET).await;
    let (early, closed) = waiting.rest(Duration::from_millis(300)).await;
    assert!(
        early.is_empty() && !closed,
        "served past the cap: {early:?}"
    );

    // Two parked clients leave: their slots come back, and the waiting client is served.
    parked.truncate(CAP - 2);
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(3), waiting.read_response(false))
        .await
        .expect("a slot freed by a parked client that closed");
    println!(
        "waiting client served {:?} after two parked clients closed",
        started.elapsed()
    );
    assert_eq!(answer.status, 200);

    // The others are still parked, and each is served again.
    for wire in &mut parked {
        wire.send(GET).await;
        assert_eq!(wire.read_response(false).await.status, 200);
    }
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn a_parked_connection_serves_a_head_larger_than_its_first_read() {
    let (_backend, juggler) = start_one_backend("server", 1, settings_with(|_| {})).await;
    let mut wire = Wire::connect(juggler.addr).await;
    wire.send(GET).await;
    assert_eq!(wire.read_response(false).await.status, 200);
    tokio::time::sleep(PARKED).await;

    // The lot reads at most 2 KiB when a parked client speaks; hyper reads the rest.
    let filler = "a".repeat(6000);
    let big = format!("GET /x HTTP/1.1\r\nHost: juggler.test\r\nX-Filler: {filler}\r\n\r\n");
    wire.send(big.as_bytes()).await;
    let answer = wire.read_response(false).await;
    println!(
        "{} B head on a parked connection: {}",
        big.len(),
        answer.status
    );
    assert_eq!(answer.status, 200);

    // Parked again, then a head that trickles in: the first byte wakes it, the rest follows.
    tokio::time::sleep(PARKED).await;
    for chunk in GET.chunks(7) {
        wire.send(chunk).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(wire.read_response(false).await.status, 200);
    juggler.shutdown().await.unwrap();
}
