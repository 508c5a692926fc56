//! Clients that stay quiet: a connection whose client sends nothing for longer than the park
//! delay, before its first request or between requests, is parked and served as soon as it
//! speaks (the bench once caught the stall guard taking such a first park for a loop and closing
//! the connection).

use std::time::Duration;

use juggler::table::Settings;
use juggler_testkit::*;

#[juggler_testkit::test]
async fn connections_quiet_before_and_between_requests_are_served() {
    let (_backend, juggler) = start_one_backend("server", 2, Settings::DEFAULT).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(Client::connect(juggler.addr).await);
    }
    // Well past the 50 ms park delay, with not one byte sent yet.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for round in 0..3 {
        for client in &mut clients {
            let answer = client.get("/").await.unwrap();
            assert_eq!(answer.status, 200, "round {round}");
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    juggler.shutdown().await.unwrap();
}
