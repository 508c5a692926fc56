//! Round robin and the fixed pools, end to end over loopback.

use std::time::Duration;

use juggler::table::Settings;
use juggler_testkit::*;

#[juggler_testkit::test]
async fn round_robin_on_one_connection_and_across_many() {
    let backends = three_backends().await;
    let juggler = TestJuggler::start(table(&addrs_of(&backends), 2, Settings::DEFAULT)).await;

    let mut client = Client::connect(juggler.addr).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(client.get("/test.txt").await.unwrap().text());
    }
    println!("one connection: {seen:?}");
    assert_eq!(
        seen,
        ["server 1", "server 2", "server 3", "server 1", "server 2", "server 3"]
    );

    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(get(juggler.addr, "/test.txt").await.unwrap().text());
    }
    println!("fresh connections: {seen:?}");
    assert_eq!(
        seen,
        ["server 1", "server 2", "server 3", "server 1", "server 2", "server 3"]
    );
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn each_backend_sees_exactly_n_connections_under_500_clients() {
    const POOL: usize = 4;
    const CLIENTS: usize = 500;
    const REQUESTS_PER_CLIENT: usize = 4;
    let backends = three_backends().await;
    let juggler = TestJuggler::start(table(&addrs_of(&backends), POOL, Settings::DEFAULT)).await;

    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let addr = juggler.addr;
        clients.spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut ok = 0;
            for _ in 0..REQUESTS_PER_CLIENT {
                if client.get("/test.txt").await.unwrap().status == 200 {
                    ok += 1;
                }
            }
            ok
        });
    }
    let mut succeeded = 0;
    while let Some(ok) = clients.join_next().await {
        succeeded += ok.unwrap();
    }
    let accepted: Vec<usize> = backends.iter().map(|b| b.accepted()).collect();
    let requests: Vec<usize> = backends.iter().map(|b| b.stats.requests.get()).collect();
    println!(
        "{succeeded} of {} requests succeeded; backend connections accepted {accepted:?}; \
         requests per backend {requests:?}",
        CLIENTS * REQUESTS_PER_CLIENT
    );
    assert_eq!(succeeded, CLIENTS * REQUESTS_PER_CLIENT);
    assert_eq!(accepted, [POOL; 3]);
    assert_eq!(
        requests.iter().sum::<usize>(),
        CLIENTS * REQUESTS_PER_CLIENT
    );
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn single_connection_pool_queues_without_overlap() {
    let backend = TestBackend::start_with(Behaviour {
        name: "slow".into(),
        delay: Duration::from_millis(10),
    })
    .await;
    let juggler = TestJuggler::start(table(&[backend.addr], 1, Settings::DEFAULT)).await;
    let ok = gets_at_once(juggler.addr, "/x", 50).await;
    println!(
        "{ok}/50 ok; backend max in flight {}, connections accepted {}",
        backend.stats.max_in_flight.get(),
        backend.accepted()
    );
    assert_eq!(ok, 50);
    assert_eq!(backend.stats.max_in_flight.get(), 1);
    assert_eq!(backend.accepted(), 1);
    juggler.shutdown().await.unwrap();
}
