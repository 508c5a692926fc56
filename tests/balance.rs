//! Balancing policies end to end over loopback: smooth weighted round robin (issue 15, part 1) and
//! `least_queued` (part 2) with one slow backend, always within each backend's `n` connections.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use juggler::table::{BalancePolicy, Settings};
use juggler_testkit::*;

/// Backends named `a`, `b`, `c`, ... answering with their name after `delays[i]`.
async fn named_backends(delays: &[Duration]) -> Vec<TestBackend> {
    let mut backends = Vec::new();
    for (index, delay) in delays.iter().enumerate() {
        let name = char::from(b'a' + index as u8).to_string();
        backends.push(
            TestBackend::start_with(Behaviour {
                name,
                delay: *delay,
            })
            .await,
        );
    }
    backends
}

/// `count` requests one after the other on one client connection; the backends' names in order.
async fn sequence(juggler: &TestJuggler, count: usize) -> String {
    let mut client = Client::connect(juggler.addr).await;
    let mut seen = String::new();
    for _ in 0..count {
        let answer = client.get("/x").await.unwrap();
        assert_eq!(answer.status, 200);
        seen.push_str(&answer.text());
    }
    seen
}

#[juggler_testkit::test]
async fn weights_5_1_1_give_nginx_s_smooth_order() {
    let backends = named_backends(&[Duration::ZERO; 3]).await;
    let servers: Vec<(SocketAddr, u32)> = addrs_of(&backends).into_iter().zip([5, 1, 1]).collect();
    let table = balanced_table(&servers, 2, BalancePolicy::RoundRobin, Settings::DEFAULT);
    let juggler = TestJuggler::start(table).await;
    let first = sequence(&juggler, 7).await;
    let second = sequence(&juggler, 7).await;
    println!("weights 5/1/1: {first} {second}");
    // nginx's documented sequence for weights 5, 1, 1, again and again.
    assert_eq!(first, "aabacaa");
    assert_eq!(second, "aabacaa");
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn a_down_backend_s_share_goes_to_the_others_by_weight() {
    let backends = named_backends(&[Duration::ZERO; 2]).await;
    // A server that refuses connections, weighted heaviest: `b` and `c` are the live ones.
    let dead = {
        let listener = bind_local().await;
        listener.local_addr().unwrap()
    };
    let servers = [(dead, 3), (backends[0].addr, 2), (backends[1].addr, 1)];
    let settings = settings_with(|s| s.proxy.down_after_failures = 1);
    let juggler = TestJuggler::start(balanced_table(
        &servers,
        2,
        BalancePolicy::RoundRobin,
        settings,
    ))
    .await;
    let started = Instant::now();
    while !juggler.proxy.pools[0].is_down() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "dead server never marked down"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = sequence(&juggler, 60).await;
    let (a, b) = (seen.matches('a').count(), seen.matches('b').count());
    println!("weights 3 (down) / 2 / 1, 60 requests: {seen} -> a {a}, b {b}");
    // The live servers keep their 2 : 1, to the request, interleaved.
    assert_eq!((a, b), (40, 20));
    assert_eq!(&seen[..6], "abaaba");
    juggler.shutdown().await.unwrap();
}

const POOL: usize = 4;
const REQUESTS: usize = 300;
const SLOW: Duration = Duration::from_millis(200);
const FAST: Duration = Duration::from_millis(2);

/// 300 requests at once over 300 client connections against three backends, the first of which
/// sleeps `SLOW` per request; returns the requests each backend served and the time it took.
async fn burst_against_a_slow_backend(balance: BalancePolicy) -> (Vec<usize>, Duration) {
    let backends = named_backends(&[SLOW, FAST, FAST]).await;
    let servers: Vec<(SocketAddr, u32)> = addrs_of(&backends).into_iter().map(|a| (a, 1)).collect();
    let juggler =
        TestJuggler::start(balanced_table(&servers, POOL, balance, Settings::DEFAULT)).await;
    let started = Instant::now();
    let ok = gets_at_once(juggler.addr, "/x", REQUESTS).await;
    let took = started.elapsed();
    let served: Vec<usize> = backends.iter().map(|b| b.stats.requests.get()).collect();
    let most_in_flight: Vec<usize> = backends
        .iter()
        .map(|b| b.stats.max_in_flight.get())
        .collect();
    let accepted: Vec<usize> = backends.iter().map(|b| b.accepted()).collect();
    println!(
        "{balance:?}: {ok}/{REQUESTS} ok in {took:?}; served {served:?}; most in flight \
         {most_in_flight:?}; connections accepted {accepted:?} (n = {POOL})"
    );
    assert_eq!(ok, REQUESTS, "every request succeeds");
    assert_eq!(served.iter().sum::<usize>(), REQUESTS);
    for backend in 0..3 {
        assert!(
            most_in_flight[backend] <= POOL,
            "backend {backend} above n in flight"
        );
        assert!(
            accepted[backend] <= POOL,
            "backend {backend} saw more than n connections"
        );
    }
    juggler.shutdown().await.unwrap();
    (served, took)
}

#[juggler_testkit::test]
async fn least_queued_keeps_requests_off_a_slow_backend() {
    let (served, took) = burst_against_a_slow_backend(BalancePolicy::LeastQueued).await;
    let (round_robin, round_robin_took) =
        burst_against_a_slow_backend(BalancePolicy::RoundRobin).await;
    // The slow backend's fair share by capacity: requests per second it can serve (n / SLOW)
    // against the fast ones' as measured in this run (their 2n connections served the rest in
    // `took`), plus the n requests its free connections take at the start, before any answer.
    let fast = (served[1] + served[2]) as f64;
    let fast_hold = (2 * POOL) as f64 * took.as_secs_f64() / fast;
    let (slow_rate, fast_rate) = (
        POOL as f64 / SLOW.as_secs_f64(),
        (2 * POOL) as f64 / fast_hold,
    );
    let fair = REQUESTS as f64 * slow_rate / (slow_rate + fast_rate) + POOL as f64;
    println!(
        "slow backend served {} of {REQUESTS} with least_queued in {took:?} (fair share by \
         capacity {fair:.1}: fast backends held a connection {:.1} ms per request), {} with \
         round_robin in {round_robin_took:?}",
        served[0],
        fast_hold * 1000.0,
        round_robin[0]
    );
    assert!(
        served[0] as f64 <= fair,
        "slow backend got {} of {REQUESTS}",
        served[0]
    );
    assert_eq!(round_robin[0], REQUESTS / 3);
    assert!(
        took < round_robin_took,
        "least_queued was not faster than round robin"
    );
}
