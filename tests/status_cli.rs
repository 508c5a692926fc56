//! `juggler status`: the real binary against a running Juggler's admin listener prints every
//! backend in at most 100 columns, `--json` gives the report itself, and an admin address nobody
//! listens on is an error that names it.

use std::process::{Command, Output};

use juggler::admin::report::StatusReport;
use juggler::table::Settings;
use juggler_testkit::{addrs_of, bind_local, table, three_backends, Client, TestJuggler};

const TOKEN: &str = "status-cli-test-token";

/// `juggler status` with `args`, run off the test's runtime (it blocks for up to 3 s).
async fn juggler_status(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_juggler"))
            .arg("status")
            .args(&args)
            .output()
            .expect("cannot run juggler status")
    })
    .await
    .unwrap()
}

#[juggler_testkit::test]
async fn status_prints_every_backend_of_a_running_juggler_in_100_columns() {
    let backends = three_backends().await;
    let addresses: Vec<String> = addrs_of(&backends).iter().map(|a| a.to_string()).collect();
    let juggler =
        TestJuggler::start_with_admin(table(&addrs_of(&backends), 2, Settings::DEFAULT), TOKEN)
            .await;
    let admin = juggler.admin_addr().to_string();
    let mut client = Client::connect(juggler.addr).await;
    for _ in 0..30 {
        assert_eq!(client.get("/").await.unwrap().status, 200);
    }

    let printed = juggler_status(&["--admin", &admin]).await;
    let stdout = String::from_utf8_lossy(&printed.stdout);
    print!("{stdout}");
    assert!(
        printed.status.success(),
        "juggler status failed: {}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let header = stdout.lines().next().unwrap_or_default();
    assert!(
        header.starts_with(&format!("Juggler {}", env!("CARGO_PKG_VERSION"))),
        "{header}"
    );
    assert!(header.contains(&format!("admin {admin}")), "{header}");
    for line in stdout.lines() {
        assert!(
            line.chars().count() <= 100,
            "wider than 100 columns: {line:?}"
        );
    }
    let columns = stdout
        .lines()
        .find(|line| line.starts_with("UPSTREAM"))
        .expect("no table header");
    for column in [
        "BACKEND",
        "STATE",
        "BUSY/OPEN/N",
        "QUEUED",
        "REQ/S",
        "WAIT P99",
        "5XX",
    ] {
        assert!(columns.contains(column), "no {column} in {columns:?}");
    }
    for address in &addresses {
        let row = stdout
            .lines()
            .find(|line| line.contains(address.as_str()))
            .unwrap_or_else(|| panic!("no row for {address}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], "test", "{row}");
        assert_eq!(cells[2], "up", "{row}");
        assert!(
            cells[3].ends_with("/2"),
            "busy/open/n of a pool of 2: {row}"
        );
    }

    let json = juggler_status(&["--admin", &admin, "--json"]).await;
    assert!(json.status.success());
    let report: StatusReport =
        serde_json::from_slice(&json.stdout).expect("--json prints the report");
    let counted: Vec<(String, u64)> = report.upstreams[0]
        .backends
        .iter()
        .map(|backend| (backend.address.clone(), backend.requests))
        .collect();
    println!("requests per backend in the report: {counted:?}");
    let expected: Vec<(String, u64)> = addresses.iter().map(|a| (a.clone(), 10)).collect();
    assert_eq!(
        counted, expected,
        "30 requests in round robin over 3 backends"
    );
}

#[juggler_testkit::test]
async fn status_names_the_admin_address_it_cannot_reach() {
    // A port that was just free: nothing listens on it now.
    let listener = bind_local().await;
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);

    let failed = juggler_status(&["--admin", &address]).await;
    let stderr = String::from_utf8_lossy(&failed.stderr);
    println!("{stderr}");
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&address),
        "the error does not name {address}: {stderr}"
    );
    assert!(failed.stdout.is_empty());
}
