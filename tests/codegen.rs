//! The golden generated files (`tests/fixtures/codegen/*/expected.rs`) compile inside the real
//! crate, and their `match_route` routes requests the way `routes.toml` documents: exact paths
//! before wildcards, route order, fall-through on method, `405` with the union of methods.

use juggler::http::{Method, Uri};
use juggler::router::MethodSet;
use juggler::table::{
    BackendId, BalancePolicy, LogFormat, RouteId, RouteMatch, RouteTable, Settings, TlsMode,
};

mod default_config {
    include!("fixtures/codegen/default/expected.rs");
}

mod priority {
    include!("fixtures/codegen/priority/expected.rs");
}

mod minimal {
    include!("fixtures/codegen/minimal/expected.rs");
}

mod exact_only {
    include!("fixtures/codegen/exact_only/expected.rs");
}

mod weighted {
    include!("fixtures/codegen/weighted/expected.rs");
}

mod protected {
    include!("fixtures/codegen/protected/expected.rs");
}

#[test]
fn protection_keys_reach_the_table_with_their_defaults_filled_in() {
    let [default, plain] = &protected::TABLE.upstreams else {
        panic!("two upstreams expected");
    };
    let protection = default.protection;
    let check = protection.health_check.expect("health_check set");
    println!("{protection:?}");
    assert_eq!(check.path, "/healthz");
    assert_eq!(check.interval, std::time::Duration::from_millis(500));
    assert_eq!(check.timeout, std::time::Duration::from_secs(1), "default");
    assert_eq!(check.expect, (204, 204));
    assert_eq!((check.fails, check.passes), (3, 2));
    assert_eq!(protection.slow_start, std::time::Duration::from_secs(30));
    assert_eq!(protection.eject_after_5xx, 5);
    assert_eq!(protection.adaptive_min, Some(2));
    assert_eq!(
        protected::TABLE.backends[0].pool_size,
        16,
        "max is the pool size"
    );
    assert!(plain.protection.health_check.is_none());
    assert_eq!(plain.protection.eject_after_5xx, 0);
}

mod fleet {
    include!("fixtures/codegen/fleet/expected.rs");
}

fn route(table: &RouteTable, method: &str, path: &str) -> RouteMatch {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let decision = (table.match_route)(&method, path);
    println!("{method} {path} -> {decision:?}");
    decision
}

fn found(route: u16) -> RouteMatch {
    RouteMatch::Found(RouteId(route))
}

fn not_allowed(methods: &[&str]) -> RouteMatch {
    let set = methods
        .iter()
        .map(|name| MethodSet::from_name(name).unwrap())
        .fold(MethodSet::EMPTY, MethodSet::union);
    RouteMatch::MethodNotAllowed(set)
}

/// The table this build compiled in, as `src/main.rs` includes it.
mod distributer {
    include!(concat!(env!("OUT_DIR"), "/distributer.rs"));
}

#[test]
fn describe_lists_the_compiled_servers_and_routes() {
    let text = juggler::describe::describe(&distributer::TABLE);
    println!("{text}");
    for backend in distributer::TABLE.backends {
        assert!(text.contains(backend.address));
    }
    assert!(text.contains("routes"));
}

#[test]
fn shipped_config_is_three_servers_with_five_connections_and_default_settings() {
    let mut tables = vec![&default_config::TABLE];
    // The crate's own table is the shipped config unless this build picked other inputs.
    let shipped =
        option_env!("JUGGLER_ROUTES").is_none() && option_env!("JUGGLER_CONFIG").is_none();
    if shipped {
        tables.push(&distributer::TABLE);
    }
    for table in tables {
        let servers: Vec<(&str, usize)> = table
            .backends
            .iter()
            .map(|b| (b.address, b.pool_size))
            .collect();
        println!("servers: {servers:?}, hash {}", table.config_hash);
        assert_eq!(
            servers,
            [
                ("localhost:6901", 5),
                ("localhost:6902", 5),
                ("localhost:6903", 5)
            ]
        );
        assert_eq!(table.upstreams[0].name, "default");
        assert_eq!(
            table.upstreams[0].backends,
            [BackendId(0), BackendId(1), BackendId(2)]
        );
        assert_eq!(
            format!("{:?}", table.settings),
            format!("{:?}", Settings::DEFAULT)
        );
        assert_eq!(route(table, "GET", "/test.txt"), found(0));
        assert_eq!(route(table, "DELETE", "/"), found(0));
        assert_eq!(
            route(table, "PURGE", "/a"),
            RouteMatch::MethodNotAllowed(MethodSet::ANY)
        );
        assert_eq!(table.config_hash.len(), 8);
    }
    if shipped {
        assert_eq!(
            distributer::TABLE.sources,
            ["routes.toml", "juggler_config/load_balancer.toml"]
        );
    }
}

#[test]
fn omitted_settings_take_the_documented_defaults() {
    let settings = &minimal::TABLE.settings;
    let defaults = &Settings::DEFAULT;
    assert_eq!(
        format!("{:?}", settings.queue),
        format!("{:?}", defaults.queue)
    );
    assert_eq!(
        format!("{:?}", settings.limits),
        format!("{:?}", defaults.limits)
    );
    assert_eq!(
        format!("{:?}", settings.proxy),
        format!("{:?}", defaults.proxy)
    );
    assert_eq!(settings.listen.http, defaults.listen.http);
    assert_eq!(settings.listen.https, defaults.listen.https);
    assert_eq!(settings.listen.tls, defaults.listen.tls);
    assert_eq!(
        settings.listen.redirect_http_to_https,
        defaults.listen.redirect_http_to_https
    );
    // The certificate and key default to files in the config directory this table came from.
    assert_eq!(
        settings.listen.tls_cert,
        "tests/fixtures/codegen/minimal/server.crt"
    );
    assert_eq!(settings.admin.listen, defaults.admin.listen);
    assert_eq!(settings.admin.listen, Some("127.0.0.1:9901"));
    assert_eq!(
        settings.admin.token_file,
        "tests/fixtures/codegen/minimal/admin.token"
    );
    assert_eq!(settings.log.format, LogFormat::Text);
    assert_eq!(minimal::BACKEND_0_POOL_SIZE, 5);
}

#[test]
fn exact_paths_beat_wildcards() {
    let table = &priority::TABLE;
    assert_eq!(route(table, "GET", "/static/special"), found(5));
    assert_eq!(route(table, "GET", "/static/other"), found(0));
    assert_eq!(route(table, "HEAD", "/api/users"), found(0));
    assert_eq!(route(table, "POST", "/api/users"), found(1));
}

#[test]
fn a_path_match_with_the_wrong_method_falls_through_to_later_routes() {
    let table = &priority::TABLE;
    // Exact `/api/users` takes GET, HEAD, POST; PUT falls through to the `/api/*` wildcard.
    assert_eq!(route(table, "PUT", "/api/users"), found(4));
    // Exact `/static/special` takes GET; DELETE falls through past `/static/*` (GET, HEAD) to route 3.
    assert_eq!(route(table, "DELETE", "/static/special"), found(3));
}

#[test]
fn method_not_allowed_lists_every_route_whose_path_matched() {
    let table = &priority::TABLE;
    assert_eq!(
        route(table, "DELETE", "/api/users"),
        not_allowed(&["GET", "HEAD", "POST", "PUT"])
    );
    assert_eq!(
        route(table, "POST", "/static/x"),
        not_allowed(&["GET", "HEAD", "DELETE"])
    );
    assert_eq!(
        route(table, "PURGE", "/api/users"),
        not_allowed(&["GET", "HEAD", "POST", "PUT"])
    );
    let RouteMatch::MethodNotAllowed(allowed) = route(table, "POST", "/static/x") else {
        panic!("expected 405");
    };
    assert_eq!(allowed.allow_header(), "GET, HEAD, DELETE");
}

#[test]
fn middle_wildcards_match_exactly_one_segment() {
    let table = &priority::TABLE;
    assert_eq!(route(table, "GET", "/wild/x/hello/y"), found(2));
    assert_eq!(route(table, "GET", "/wild/x/hello/"), found(2));
    assert_eq!(
        route(table, "GET", "/wild/x/y/hello/z"),
        RouteMatch::NotFound
    );
    assert_eq!(route(table, "GET", "/wild//hello/z"), RouteMatch::NotFound);
    assert_eq!(route(table, "GET", "/wild/x/hello"), RouteMatch::NotFound);
    assert_eq!(route(table, "GET", "/a/b/c"), found(2));
    assert_eq!(route(table, "GET", "/a/b/c/d"), RouteMatch::NotFound);
}

#[test]
fn paths_are_matched_without_the_query() {
    let table = &priority::TABLE;
    let uri: Uri = "/api/users?id=7".parse().unwrap();
    // The caller hands over `uri.path()`; the query never reaches the matcher.
    assert_eq!(route(table, "GET", uri.path()), found(0));
    let uri: Uri = "/static/special?v=2".parse().unwrap();
    assert_eq!(route(table, "GET", uri.path()), found(5));
}

#[test]
fn unmatched_paths_are_not_found() {
    let table = &priority::TABLE;
    assert_eq!(route(table, "GET", "/"), RouteMatch::NotFound);
    assert_eq!(route(table, "GET", "/static"), RouteMatch::NotFound);
    assert_eq!(route(table, "GET", "/api"), RouteMatch::NotFound);
    assert_eq!(route(table, "GET", "/nothing/here"), RouteMatch::NotFound);
}

#[test]
fn upstreams_pools_and_settings_come_from_the_config() {
    let table = &priority::TABLE;
    let backends: Vec<(&str, usize, u16)> = table
        .backends
        .iter()
        .map(|b| (b.address, b.pool_size, b.upstream.0))
        .collect();
    println!("backends: {backends:?}");
    assert_eq!(
        backends,
        [
            ("127.0.0.1:7001", 2, 0),
            ("127.0.0.1:7002", 7, 0),
            ("[::1]:7003", 5, 1)
        ]
    );
    let names: Vec<&str> = table.upstreams.iter().map(|u| u.name).collect();
    assert_eq!(names, ["api", "static"]);
    assert!(table.routes[1].retry_non_idempotent);
    assert!(!table.routes[0].retry_non_idempotent);
    assert_eq!(table.routes[0].paths, ["/api/users", "/static/*"]);
    assert_eq!(
        table.routes[5].source,
        "tests/fixtures/codegen/priority/routes.toml:31"
    );
    let settings = &table.settings;
    assert_eq!(settings.listen.http, Some("127.0.0.1:18080"));
    assert_eq!(settings.listen.https, None);
    assert_eq!(settings.listen.tls, TlsMode::Off);
    assert_eq!(settings.queue.max_queued_per_server, 16);
    assert_eq!(settings.queue.timeout.as_millis(), 250);
    assert_eq!(settings.limits.max_header_bytes, 8192);
    assert_eq!(settings.limits.max_body_bytes, 1 << 20);
    assert_eq!(settings.limits.backend_timeout.as_secs(), 120);
    assert!(settings.limits.drain_timeout.is_zero());
    assert!(settings.proxy.forwarded_headers);
    assert_eq!(settings.proxy.max_retries, 0);
    assert_eq!(settings.proxy.worker_threads, 2);
    assert_eq!(settings.admin.listen, None);
    assert_eq!(settings.admin.token_file, "/run/juggler/admin.token");
    assert_eq!(settings.log.format, LogFormat::Json);
}

#[test]
fn a_single_exact_path_compiles_to_an_if() {
    let table = &exact_only::TABLE;
    assert_eq!(route(table, "GET", "/health"), found(0));
    assert_eq!(
        route(table, "POST", "/health"),
        not_allowed(&["GET", "HEAD"])
    );
    assert_eq!(route(table, "GET", "/health/"), RouteMatch::NotFound);
}

#[test]
fn weights_and_policies_are_compiled_in() {
    let table = &weighted::TABLE;
    let servers: Vec<(&str, usize, u32)> = table
        .backends
        .iter()
        .map(|b| (b.address, b.pool_size, b.weight))
        .collect();
    println!("{servers:?}");
    assert_eq!(
        servers,
        [
            ("api1:8080", 4, 3),
            ("api2:8080", 2, 1),
            ("api3:8080", 4, 1),
            ("static1:80", 5, 5),
            ("static2:80", 5, 1),
            ("static3:80", 5, 1),
        ]
    );
    let policies: Vec<(&str, BalancePolicy)> = table
        .upstreams
        .iter()
        .map(|u| (u.name, u.balance))
        .collect();
    assert_eq!(
        policies,
        [
            ("api", BalancePolicy::LeastQueued),
            ("static", BalancePolicy::RoundRobin)
        ]
    );
    // Every shipped and fixture table without `balance` or `weight` keeps today's behaviour.
    for table in [&default_config::TABLE, &minimal::TABLE, &priority::TABLE] {
        assert!(table
            .upstreams
            .iter()
            .all(|u| u.balance == BalancePolicy::RoundRobin));
        assert!(table.backends.iter().all(|b| b.weight == 1));
    }
    assert_eq!(route(table, "POST", "/api/users"), found(0));
    assert_eq!(route(table, "GET", "/index.html"), found(1));
}

#[test]
fn a_fleet_section_is_compiled_in_and_omitted_keys_take_their_defaults() {
    let fleet = fleet::TABLE
        .settings
        .fleet
        .as_ref()
        .expect("[fleet] compiled in");
    println!("{fleet:?}");
    assert_eq!(fleet.etcd, ["http://10.0.0.5:2379", "http://10.0.0.6:2379"]);
    assert_eq!(fleet.lease, std::time::Duration::from_secs(3));
    assert_eq!(fleet.fallback_lease, std::time::Duration::from_secs(30));
    assert_eq!(fleet.fallback_share, 2);
    assert_eq!(fleet.prefix, Some("/juggler/shop"));
    assert!(
        minimal::TABLE.settings.fleet.is_none(),
        "no [fleet]: no fleet"
    );
}
