//! Validation on inline TOML: each kind of mistake, its message, its `line:col` and its help.

use std::path::Path;

use super::*;
use crate::model::{BalancePolicy, IpNetwork, LogFormat};

const LB: &str = "[upstreams.default]\nservers = [\"localhost:6901\", \"localhost:6902\"]\n";
const ROUTES: &str = "[[route]]\nmethods = \"*\"\npaths = [\"/*\"]\nupstream = \"default\"\n";

fn check(routes: &str, load_balancer: &str) -> Result<Config, Diagnostics> {
    from_sources(
        SourceFile {
            name: "routes.toml".into(),
            text: routes.into(),
        },
        SourceFile {
            name: "lb.toml".into(),
            text: load_balancer.into(),
        },
        "juggler_config",
    )
}

/// The mistakes as `file:line:col: message` plus their help, in report order.
fn errors(routes: &str, load_balancer: &str) -> Vec<(String, String)> {
    let diagnostics = check(routes, load_balancer).expect_err("the config should be refused");
    println!("{diagnostics}");
    diagnostics
        .iter()
        .map(|d| (format!("{}: {}", d.location(), d.message), d.help.clone()))
        .collect()
}

/// Exactly one mistake, and it is this one.
fn only_error(routes: &str, load_balancer: &str) -> (String, String) {
    let mut all = errors(routes, load_balancer);
    assert_eq!(all.len(), 1, "expected one mistake, got {all:#?}");
    all.remove(0)
}

fn route(methods: &str, paths: &str) -> String {
    format!("[[route]]\nmethods = {methods}\npaths = {paths}\nupstream = \"default\"\n\n")
}

#[test]
fn shipped_shape_is_accepted_with_defaults() {
    let config = check(ROUTES, LB).unwrap();
    assert_eq!(config.backends.len(), 2);
    assert_eq!(config.backends[1].pool_size, 5);
    assert_eq!(config.routes[0].source, "routes.toml:1");
    assert_eq!(config.settings.listen.tls_cert, "juggler_config/server.crt");
    assert_eq!(
        config.settings.admin.token_file,
        "juggler_config/admin.token"
    );
    assert_eq!(config.config_hash.len(), 8);
}

#[test]
fn unknown_keys_suggest_the_closest_known_key() {
    let (error, help) = only_error(
        ROUTES,
        "[upstreams.default]\nconections_per_server = 5\nservers = [\"a:1\"]\n",
    );
    assert_eq!(
        error,
        "lb.toml:2:1: unknown key `conections_per_server` in [upstreams.default]"
    );
    assert!(
        help.starts_with("did you mean `connections_per_server`?"),
        "{help}"
    );

    let (error, help) = only_error(
        "[[route]]\nmetods = \"*\"\npaths = [\"/*\"]\nupstream = \"default\"\n",
        LB,
    );
    assert_eq!(error, "routes.toml:2:1: unknown key `metods` in [[route]]");
    assert!(help.starts_with("did you mean `methods`?"), "{help}");

    let (error, help) = only_error(ROUTES, &format!("{LB}[limits]\nmax_body_byte = 5\n"));
    assert_eq!(
        error,
        "lb.toml:4:1: unknown key `max_body_byte` in [limits]"
    );
    assert!(help.starts_with("did you mean `max_body_bytes`?"), "{help}");

    let (error, help) = only_error(ROUTES, &format!("{LB}[limit]\n"));
    assert_eq!(error, "lb.toml:3:2: unknown key `limit` at the top level");
    assert!(help.starts_with("did you mean `limits`?"), "{help}");

    let (error, help) = only_error(
        ROUTES,
        "[upstreams.default]\nservers = [{ address = \"a:1\", conections = 3 }]\n",
    );
    assert_eq!(error, "lb.toml:2:12: unknown key `conections` in a server");
    assert!(help.starts_with("did you mean `connections`?"), "{help}");
}

#[test]
fn route_to_an_unknown_upstream_lists_the_known_ones() {
    let lb = format!("{LB}[upstreams.images]\nservers = [\"img:80\"]\n");
    let (error, help) = only_error(
        "[[route]]\nmethods = \"*\"\npaths = [\"/*\"]\nupstream = \"imgaes\"\n",
        &lb,
    );
    assert_eq!(
        error,
        "routes.toml:4:12: route sends to upstream `imgaes`, which does not exist"
    );
    assert!(help.contains("did you mean `images`?"), "{help}");
    assert!(help.contains("`default`, `images`"), "{help}");
}

#[test]
fn an_upstream_needs_servers() {
    let (error, _) = only_error(ROUTES, "[upstreams.default]\nservers = []\n");
    assert_eq!(error, "lb.toml:2:11: upstream `default` has no servers");
    let (error, help) = only_error(ROUTES, "[upstreams.default]\nconnections_per_server = 2\n");
    assert_eq!(error, "lb.toml:1:12: upstream `default` has no servers");
    assert!(help.contains("servers = ["), "{help}");
    let all = errors(ROUTES, "");
    assert_eq!(all[0].0, "lb.toml: no upstreams are defined");
}

#[test]
fn server_addresses_need_a_host_and_a_port() {
    let cases = [
        ("\"localhost\"", "`localhost` has no port"),
        (
            "\":6901\"",
            "`` in `:6901` is not a host name or IP address",
        ),
        (
            "\"localhost:0\"",
            "port 0 in `localhost:0` cannot be connected to",
        ),
        (
            "\"localhost:70000\"",
            "`70000` in `localhost:70000` is not a port number",
        ),
        (
            "\"http://localhost:80\"",
            "`http://localhost:80` has a scheme (`http://`)",
        ),
    ];
    for (server, message) in cases {
        let (error, _) = only_error(
            ROUTES,
            &format!("[upstreams.default]\nservers = [{server}]\n"),
        );
        assert_eq!(
            error,
            format!("lb.toml:2:12: bad server address: {message}")
        );
    }
}

#[test]
fn pool_sizes_must_be_between_one_and_the_bound() {
    let (error, help) = only_error(
        ROUTES,
        "[upstreams.default]\nconnections_per_server = 0\nservers = [\"a:1\"]\n",
    );
    assert_eq!(
        error,
        "lb.toml:2:26: `connections_per_server = 0` is not a usable pool size"
    );
    assert!(help.starts_with("write 1 to 1024"), "{help}");
    let (error, _) = only_error(
        ROUTES,
        "[upstreams.default]\nservers = [{ address = \"a:1\", connections = 5000 }]\n",
    );
    assert_eq!(
        error,
        "lb.toml:2:45: `connections = 5000` is not a usable pool size"
    );
    let config = check(
        ROUTES,
        "[upstreams.default]\nconnections_per_server = 2\nservers = [\"a:1\", { address = \"b:1\", connections = 1024 }]\n",
    )
    .unwrap();
    let sizes: Vec<usize> = config
        .backends
        .iter()
        .map(|backend| backend.pool_size)
        .collect();
    assert_eq!(sizes, [2, 1024]);
}

#[test]
fn weights_must_be_between_one_and_the_bound() {
    let (error, help) = only_error(
        ROUTES,
        "[upstreams.default]\nservers = [{ address = \"a:1\", weight = 0 }]\n",
    );
    assert_eq!(error, "lb.toml:2:40: `weight = 0` is not a usable weight");
    assert!(help.starts_with("write 1 to 1000"), "{help}");
    let (error, _) = only_error(
        ROUTES,
        "[upstreams.default]\nservers = [{ address = \"a:1\", weight = 1001 }]\n",
    );
    assert_eq!(
        error,
        "lb.toml:2:40: `weight = 1001` is not a usable weight"
    );
    let config = check(
        ROUTES,
        "[upstreams.default]\nservers = [\"a:1\", { address = \"b:1\", weight = 1000, connections = 3 }]\n",
    )
    .unwrap();
    let servers: Vec<(u32, usize)> = config
        .backends
        .iter()
        .map(|backend| (backend.weight, backend.pool_size))
        .collect();
    assert_eq!(servers, [(1, 5), (1000, 3)]);
}

#[test]
fn balance_names_a_known_policy() {
    let (error, help) = only_error(
        ROUTES,
        "[upstreams.default]\nbalance = \"least_queue\"\nservers = [\"a:1\"]\n",
    );
    assert_eq!(
        error,
        "lb.toml:2:11: `balance = \"least_queue\"` is not a balancing policy"
    );
    assert!(help.starts_with("did you mean \"least_queued\"?"), "{help}");
    let (error, _) = only_error(
        ROUTES,
        "[upstreams.default]\nbalance = 3\nservers = [\"a:1\"]\n",
    );
    assert!(error.starts_with("lb.toml:2:11: invalid type"), "{error}");
    let config = check(
        ROUTES,
        "[upstreams.default]\nbalance = \"least_queued\"\nservers = [\"a:1\"]\n",
    )
    .unwrap();
    assert_eq!(config.upstreams[0].balance, BalancePolicy::LeastQueued);
    assert_eq!(
        config.upstreams[0].balance_source.as_deref(),
        Some("lb.toml:2")
    );
    let config = check(ROUTES, LB).unwrap();
    assert_eq!(config.upstreams[0].balance, BalancePolicy::RoundRobin);
}

#[test]
fn a_server_belongs_to_one_upstream() {
    let lb = "[upstreams.a]\nservers = [\"s:1\"]\n\n[upstreams.b]\nservers = [\"S:1\", \"t:1\", \"t:1\"]\n";
    let all = errors(
        "[[route]]\nmethods = \"*\"\npaths = [\"/*\"]\nupstream = \"a\"\n",
        lb,
    );
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(
        all[0].0,
        "lb.toml:5:12: server `S:1` is in upstream `a` (lb.toml:2) and in `b`"
    );
    assert_eq!(
        all[1].0,
        "lb.toml:5:26: server `t:1` is listed twice in upstream `b` (first at lb.toml:5)"
    );
}

#[test]
fn duplicate_routes_are_refused() {
    let routes = format!(
        "{}{}",
        route("[\"GET\"]", "[\"/a\", \"/b/*\"]"),
        route("[\"GET\"]", "[\"/b/*\", \"/a\"]")
    );
    let (error, help) = only_error(&routes, LB);
    assert_eq!(
        error,
        "routes.toml:6:1: duplicate route: same methods and paths as the route at routes.toml:1"
    );
    assert!(help.contains("first one always wins"), "{help}");
}

#[test]
fn paths_that_earlier_routes_always_take_are_refused() {
    // A wildcard covered by an earlier wildcard whose methods include all of this route's.
    let (error, help) = only_error(
        &format!(
            "{}{}",
            route("\"*\"", "[\"/static/*\"]"),
            route("[\"GET\"]", "[\"/static/img/*\"]")
        ),
        LB,
    );
    assert_eq!(error, "routes.toml:8:10: path `/static/img/*` can never match: the route at routes.toml:1 already takes every request to it");
    assert!(
        help.starts_with("move this route above routes.toml:1"),
        "{help}"
    );

    // Covered by the union of two earlier routes' methods.
    let routes = format!(
        "{}{}{}",
        route("[\"GET\"]", "[\"/*\"]"),
        route("[\"POST\"]", "[\"/api/*\"]"),
        route("[\"GET\", \"POST\"]", "[\"/api/*/x\"]")
    );
    let (error, _) = only_error(&routes, LB);
    assert!(error.starts_with("routes.toml:13:10: path `/api/*/x` can never match: the route at routes.toml:1, routes.toml:6"), "{error}");

    // The same exact path again with fewer methods.
    let (error, _) = only_error(
        &format!(
            "{}{}",
            route("[\"GET\", \"HEAD\"]", "[\"/a\", \"/b\"]"),
            route("[\"HEAD\"]", "[\"/b\"]")
        ),
        LB,
    );
    assert!(
        error.starts_with("routes.toml:8:10: path `/b` can never match"),
        "{error}"
    );
}

#[test]
fn reachable_later_routes_are_accepted() {
    let routes = [
        route("[\"GET\"]", "[\"/*\"]"),
        // Exact paths are tried before wildcards: not shadowed by `/*`.
        route("[\"GET\"]", "[\"/api/users\"]"),
        route("[\"POST\"]", "[\"/static/*\"]"),
        // GET and POST are taken by the two routes above, PUT is not.
        route("[\"GET\", \"PUT\"]", "[\"/static/*/x\"]"),
        // `/a/*` does not cover `/*/b`.
        route("[\"PUT\"]", "[\"/a/*\"]"),
        route("[\"PUT\"]", "[\"/*/b\"]"),
    ]
    .concat();
    let config = check(&routes, LB).unwrap();
    assert_eq!(config.routes.len(), 6);
}

#[test]
fn methods_must_be_known_upper_case_names() {
    let (error, help) = only_error(&route("[\"GET\", \"get\"]", "[\"/*\"]"), LB);
    assert_eq!(error, "routes.toml:2:19: unknown HTTP method `get`");
    assert_eq!(help, "method names are upper case: write `GET`");
    let (error, help) = only_error(&route("[\"PSOT\"]", "[\"/*\"]"), LB);
    assert_eq!(error, "routes.toml:2:12: unknown HTTP method `PSOT`");
    assert!(help.contains("did you mean `POST`?"), "{help}");
    let (error, _) = only_error(&route("[\"PURGE\"]", "[\"/*\"]"), LB);
    assert_eq!(error, "routes.toml:2:12: unknown HTTP method `PURGE`");
    let (error, help) = only_error(&route("\"GET\"", "[\"/*\"]"), LB);
    assert_eq!(
        error,
        "routes.toml:2:11: `methods = \"GET\"` is neither \"*\" nor a list"
    );
    assert!(help.starts_with("write `methods = [\"GET\"]`"), "{help}");
    let (error, _) = only_error(&route("[]", "[\"/*\"]"), LB);
    assert_eq!(
        error,
        "routes.toml:2:11: `methods` is empty: the route could never match"
    );
    let (error, _) = only_error(&route("[\"GET\", \"GET\"]", "[\"/*\"]"), LB);
    assert_eq!(error, "routes.toml:2:19: method `GET` is listed twice");
}

#[test]
fn malformed_wildcards_are_refused() {
    let cases = [
        ("/a*", "`*` in `/a*` is not a whole segment (`a*`)"),
        ("*/x", "path `*/x` does not start with `/`"),
        ("/**", "`**` in `/**` is not a wildcard Juggler knows"),
        ("/a//*", "path `/a//*` has an empty segment (`//`)"),
        ("static/*", "path `static/*` does not start with `/`"),
        ("/a/*/", "wildcard pattern `/a/*/` ends with `/`"),
        ("/a?b=1", "path `/a?b=1` contains a query or fragment"),
    ];
    for (path, message) in cases {
        let (error, _) = only_error(&route("\"*\"", &format!("[\"{path}\"]")), LB);
        assert_eq!(error, format!("routes.toml:3:10: {message}"));
    }
    let (error, _) = only_error(&route("\"*\"", "[\"/a\", \"/a\"]"), LB);
    assert_eq!(
        error,
        "routes.toml:3:16: path `/a` is listed twice in this route"
    );
}

#[test]
fn durations_and_sizes_need_units() {
    let lb = format!(
        "{LB}[queue]\ntimeout = \"10\"\n[limits]\nmax_body_bytes = \"16MB\"\nmax_header_bytes = 100\nconnect_timeout = \"0s\"\ndrain_timeout = \"0s\"\nbackend_timeout = 30\n"
    );
    let all = errors(ROUTES, &lb);
    let messages: Vec<&str> = all.iter().map(|(error, _)| error.as_str()).collect();
    assert_eq!(
        messages,
        [
            "lb.toml:4:11: `timeout = \"10\"` is not a duration",
            "lb.toml:6:18: `max_body_bytes = \"16MB\"` is not a size",
            "lb.toml:7:20: `max_header_bytes` of 100B is out of range",
            "lb.toml:8:19: `connect_timeout` is zero",
            "lb.toml:10:19: invalid type: integer `30`, expected a string",
        ]
    );
    assert!(all[0].1.contains("\"10s\""), "{}", all[0].1);
    assert!(all[1].1.contains("\"16KiB\""), "{}", all[1].1);
    let config = check(
        ROUTES,
        &format!("{LB}[limits]\nmax_body_bytes = 1000\ndrain_timeout = \"250ms\"\n"),
    )
    .unwrap();
    let max_body = config.settings.scalar("limits", "max_body_bytes").unwrap();
    assert_eq!(max_body.value, 1000);
    assert_eq!(
        max_body.written,
        Some(crate::model::Written {
            text: "1000".to_string(),
            source: "lb.toml:4".to_string()
        })
    );
    let drain = config.settings.scalar("limits", "drain_timeout").unwrap();
    assert_eq!(drain.duration(), std::time::Duration::from_millis(250));
    assert_eq!(drain.shown(), "\"250ms\"");
}

#[test]
fn listen_addresses_and_tls_settings_are_checked() {
    let all = errors(
        ROUTES,
        &format!("{LB}[listen]\nhttp = \"0.0.0.0\"\nhttps = \"off\"\ntls = \"of\"\nredirect_http_to_https = true\n"),
    );
    let messages: Vec<&str> = all.iter().map(|(error, _)| error.as_str()).collect();
    assert_eq!(
        messages,
        [
            "lb.toml:4:8: bad `http` listen address: `0.0.0.0` has no port",
            "lb.toml:6:7: `tls = \"of\"` is not a TLS mode",
            "lb.toml:7:26: `redirect_http_to_https = true` but HTTPS is off",
        ]
    );
    assert!(
        all[1].1.starts_with("did you mean \"off\"?"),
        "{}",
        all[1].1
    );
    let (error, _) = only_error(
        ROUTES,
        &format!("{LB}[listen]\nhttp = \"off\"\nhttps = \"off\"\n"),
    );
    assert_eq!(
        error,
        "lb.toml:5:9: both listeners are \"off\": Juggler would accept no connections"
    );
    let (error, _) = only_error(
        ROUTES,
        &format!("{LB}[listen]\nhttp = \"[::]:80\"\nhttps = \"[::]:80\"\n"),
    );
    assert_eq!(
        error,
        "lb.toml:5:9: `https` uses the same address as `http` ([::]:80)"
    );
    let config = check(
        ROUTES,
        &format!("{LB}[listen]\nhttp = \"off\"\ntls = \"on\"\n"),
    )
    .unwrap();
    assert_eq!(config.settings.listen.http, None);
}

#[test]
fn admin_and_log_take_their_defaults_when_left_out() {
    let config = check(ROUTES, LB).unwrap();
    let (admin, log) = (&config.settings.admin, &config.settings.log);
    assert_eq!(admin.listen.as_deref(), Some("127.0.0.1:9901"));
    assert_eq!(admin.token_file, "juggler_config/admin.token");
    assert_eq!(log.format, LogFormat::Text);
    assert_eq!(log.format_source, None);
    // The same defaults as the runtime's hand-written tables use.
    let runtime = &juggler_config::table::Settings::DEFAULT;
    assert_eq!(admin.listen.as_deref(), runtime.admin.listen);
    assert_eq!(admin.token_file, runtime.admin.token_file);
    assert_eq!(log.format, runtime.log.format);
    // Like the certificate, the token file defaults to a file of the config directory in use.
    let elsewhere = from_sources(
        SourceFile {
            name: "routes.toml".into(),
            text: ROUTES.into(),
        },
        SourceFile {
            name: "lb.toml".into(),
            text: LB.into(),
        },
        "/etc/juggler",
    )
    .unwrap();
    assert_eq!(
        elsewhere.settings.admin.token_file,
        "/etc/juggler/admin.token"
    );
}

#[test]
fn admin_listener_can_be_off_and_the_log_json() {
    let config = check(
        ROUTES,
        &format!("{LB}[admin]\nlisten = \"off\"\ntoken_file = \"/run/juggler/token\"\n[log]\nformat = \"json\"\n"),
    )
    .unwrap();
    assert_eq!(config.settings.admin.listen, None);
    assert_eq!(config.settings.admin.token_file, "/run/juggler/token");
    assert_eq!(config.settings.log.format, LogFormat::Json);
    assert_eq!(
        config.settings.log.format_source.as_deref(),
        Some("lb.toml:7")
    );
    // Any host:port is the operator's call: every interface, IPv6, a name, a port picked at bind.
    for address in [
        "0.0.0.0:9901",
        "[::1]:9901",
        "admin.internal:80",
        "127.0.0.1:0",
    ] {
        let config = check(ROUTES, &format!("{LB}[admin]\nlisten = \"{address}\"\n")).unwrap();
        assert_eq!(config.settings.admin.listen.as_deref(), Some(address));
    }
    // Two listeners on port 0 each get their own free port.
    check(
        ROUTES,
        &format!("{LB}[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
}

#[test]
fn a_bad_admin_address_names_the_key() {
    let (error, help) = only_error(ROUTES, &format!("{LB}[admin]\nlisten = \"9901\"\n"));
    assert_eq!(
        error,
        "lb.toml:4:10: bad `admin.listen` address: `9901` has no port"
    );
    assert!(
        help.ends_with("or \"off\" to disable the admin listener"),
        "{help}"
    );
    let (error, _) = only_error(
        ROUTES,
        &format!("{LB}[admin]\nlisten = \"http://127.0.0.1:9901\"\n"),
    );
    assert_eq!(
        error,
        "lb.toml:4:10: bad `admin.listen` address: `http://127.0.0.1:9901` has a scheme (`http://`)"
    );
    let (error, help) = only_error(ROUTES, &format!("{LB}[admin]\nlisten = \"0.0.0.0:8080\"\n"));
    assert_eq!(
        error,
        "lb.toml:4:10: `admin.listen` uses the same address as `listen.http` (0.0.0.0:8080)"
    );
    assert!(help.contains("its own port"), "{help}");
    let (error, _) = only_error(ROUTES, &format!("{LB}[admin]\nlisten = 9901\n"));
    assert!(error.starts_with("lb.toml:4:10: invalid type"), "{error}");
    let (error, _) = only_error(ROUTES, &format!("{LB}[admin]\ntoken_file = \" \"\n"));
    assert_eq!(error, "lb.toml:4:14: `token_file` in [admin] is empty");
}

#[test]
fn an_unknown_log_format_lists_the_known_ones() {
    let (error, help) = only_error(ROUTES, &format!("{LB}[log]\nformat = \"JSON\"\n"));
    assert_eq!(
        error,
        "lb.toml:4:10: `format = \"JSON\"` is not a log format"
    );
    assert!(help.starts_with("did you mean \"json\"?"), "{help}");
    let (error, help) = only_error(ROUTES, &format!("{LB}[log]\nformat = \"logfmt\"\n"));
    assert_eq!(
        error,
        "lb.toml:4:10: `format = \"logfmt\"` is not a log format"
    );
    assert!(
        help.contains("\"text\"") && help.contains("\"json\""),
        "{help}"
    );
}

#[test]
fn unknown_keys_in_admin_and_log_are_refused() {
    let all = errors(
        ROUTES,
        &format!(
            "{LB}[admin]\nlisten = \"off\"\ntoken_fle = \"t\"\n[log]\nlevel = \"info\"\n[admn]\n"
        ),
    );
    assert_eq!(all.len(), 3, "{all:#?}");
    assert_eq!(all[0].0, "lb.toml:5:1: unknown key `token_fle` in [admin]");
    assert!(
        all[0].1.starts_with("did you mean `token_file`?"),
        "{}",
        all[0].1
    );
    assert_eq!(all[1].0, "lb.toml:7:1: unknown key `level` in [log]");
    assert!(all[1].1.contains("`format`"), "{}", all[1].1);
    assert_eq!(all[2].0, "lb.toml:8:2: unknown key `admn` at the top level");
    assert!(
        all[2].1.starts_with("did you mean `admin`?"),
        "{}",
        all[2].1
    );
}

#[test]
fn log_buffering_is_checked_like_the_scalar_settings() {
    let all = errors(
        ROUTES,
        &format!("{LB}[log]\nformat = \"json\"\nbuffer = \"lots\"\nflush = \"0s\"\nbufer = 0\n"),
    );
    let messages: Vec<&str> = all.iter().map(|(error, _)| error.as_str()).collect();
    assert_eq!(
        messages,
        [
            "lb.toml:5:10: `buffer = \"lots\"` is not a size",
            "lb.toml:6:9: `flush` is zero",
            "lb.toml:7:1: unknown key `bufer` in [log]",
        ]
    );
    assert!(all[1].1.contains("\"1s\""), "{}", all[1].1);
    assert!(
        all[2].1.starts_with("did you mean `buffer`?"),
        "{}",
        all[2].1
    );
    let config = check(
        ROUTES,
        &format!("{LB}[log]\nbuffer = 0\nflush = \"250ms\"\nformat = \"json\"\n"),
    )
    .unwrap();
    let log = &config.settings;
    assert_eq!(log.log.format, crate::model::LogFormat::Json);
    assert_eq!(log.scalar("log", "buffer").unwrap().value, 0);
    assert_eq!(log.scalar("log", "flush").unwrap().value, 250);
    let defaults = check(ROUTES, LB).unwrap();
    assert_eq!(
        defaults.settings.scalar("log", "buffer").unwrap().value,
        64 * 1024
    );
}

#[test]
fn counts_are_range_checked() {
    let all = errors(
        ROUTES,
        &format!("{LB}[proxy]\nmax_retries = 11\ndown_after_failures = 0\nworker_threads = -1\n[queue]\nmax_queued_per_server = \"5\"\n"),
    );
    let messages: Vec<&str> = all.iter().map(|(error, _)| error.as_str()).collect();
    assert_eq!(
        messages,
        [
            "lb.toml:4:15: `max_retries = 11` is out of range",
            "lb.toml:5:23: `down_after_failures = 0` is out of range",
            "lb.toml:6:18: `worker_threads = -1` is out of range",
            "lb.toml:8:25: invalid type: string \"5\", expected i64",
        ]
    );
    assert_eq!(all[3].1, "write a whole number without quotes, e.g. `5`");
}

#[test]
fn every_mistake_of_both_files_is_reported_at_once() {
    let routes = "[[route]]\nmetods = \"*\"\npaths = [\"/a*\"]\nupstream = \"nope\"\n\n[[route]]\nmethods = [\"get\"]\npaths = [\"/b\"]\nupstream = \"default\"\n";
    let lb = "[upstreams.default]\nconections_per_server = 5\nservers = [\"a:1\", \"b\"]\n[limits]\nmax_body_bytes = \"5x\"\ndrain_timeout = \"soon\"\n";
    let diagnostics = check(routes, lb).unwrap_err();
    let locations: Vec<String> = diagnostics.iter().map(Diagnostic::location).collect();
    assert_eq!(
        locations,
        [
            "lb.toml:2:1",
            "lb.toml:3:19",
            "lb.toml:5:18",
            "lb.toml:6:17",
            "routes.toml:2:1",
            "routes.toml:3:10",
            "routes.toml:4:12",
            "routes.toml:7:12",
        ]
    );
    assert!(diagnostics
        .to_string()
        .ends_with("8 errors in the Juggler config"));
}

#[test]
fn missing_required_keys_are_named() {
    let all = errors("[[route]]\nupstream = \"default\"\n", LB);
    assert_eq!(all[0].0, "routes.toml:1:1: route has no `methods`");
    assert_eq!(all[1].0, "routes.toml:1:1: route has no `paths`");
    let (error, _) = only_error("[[route]]\nmethods = \"*\"\npaths = [\"/*\"]\n", LB);
    assert_eq!(error, "routes.toml:1:1: route has no `upstream`");
    let (error, _) = only_error("", LB);
    assert_eq!(
        error,
        "routes.toml: no routes are defined: every request would get 404"
    );
}

#[test]
fn toml_syntax_errors_point_at_the_mistake() {
    let (error, _) = only_error("[[route]]\nmethods = \"*\npaths = [\"/*\"]\n", LB);
    assert_eq!(
        error,
        "routes.toml:2:13: invalid TOML: invalid basic string, expected `\"`"
    );
}

#[test]
fn unreadable_files_are_reported_by_name() {
    let diagnostics = load(
        Path::new("/nonexistent/routes.toml"),
        Path::new("/nonexistent/config"),
    )
    .unwrap_err();
    let locations: Vec<String> = diagnostics.iter().map(Diagnostic::location).collect();
    assert_eq!(
        locations,
        [
            "/nonexistent/routes.toml",
            "/nonexistent/config/load_balancer.toml"
        ]
    );
    assert!(diagnostics
        .to_string()
        .contains("error: cannot read the file"));
}

#[test]
fn build_script_report_is_one_cargo_error_per_line() {
    let diagnostics = check(&route("[\"get\"]", "[\"/*\"]"), LB).unwrap_err();
    let directives = cargo_errors(&diagnostics.to_string());
    assert_eq!(
        directives,
        [
            "cargo::error=routes.toml:2:12: error: unknown HTTP method `get`",
            "cargo::error=2 | methods = [\"get\"]",
            "cargo::error=  |            ^^^^^",
            "cargo::error=help: method names are upper case: write `GET`",
            "cargo::error=1 error in the Juggler config",
        ]
    );
}

#[test]
fn the_hash_follows_the_bytes() {
    let file = |text: &str| SourceFile {
        name: "x".into(),
        text: text.into(),
    };
    let (a, b, ab) = (file("a"), file("b"), file("ab"));
    let empty = file("");
    assert_ne!(config_hash(&[&a, &b]), config_hash(&[&b, &a]));
    assert_ne!(config_hash(&[&ab, &empty]), config_hash(&[&a, &b]));
    assert_eq!(config_hash(&[&a, &b]), config_hash(&[&a, &b]));
}

#[test]
fn write_if_changed_leaves_identical_files_alone() {
    let dir = std::env::temp_dir().join(format!("juggler-codegen-{}", std::process::id()));
    let path = dir.join("nested/distributer.rs");
    assert!(write_if_changed(&path, "a").unwrap());
    assert!(!write_if_changed(&path, "a").unwrap());
    assert!(write_if_changed(&path, "b").unwrap());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "b");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `[admin]` and `[log]` are not scalar sections, so the check below does not see them: the shipped
/// file sets each key to its default and the README's reference table has a row for it.
#[test]
fn admin_and_log_are_shipped_at_their_defaults_and_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let shipped = SourceFile {
        name: "juggler_config/load_balancer.toml".into(),
        text: std::fs::read_to_string(root.join("juggler_config").join(LOAD_BALANCER_FILE))
            .unwrap(),
    };
    let shipped = from_sources(
        SourceFile {
            name: "routes.toml".into(),
            text: ROUTES.into(),
        },
        shipped,
        "juggler_config",
    )
    .unwrap();
    let defaults = crate::model::Settings::defaults("juggler_config");
    assert_eq!(shipped.settings.admin.listen, defaults.admin.listen);
    assert_eq!(shipped.settings.admin.token_file, defaults.admin.token_file);
    assert_eq!(shipped.settings.log.format, defaults.log.format);
    for key in ["admin.listen", "admin.token_file", "log.format"] {
        let row = format!("| `{key}` |");
        assert!(
            readme.lines().any(|line| line.starts_with(&row)),
            "README.md has no row {row}"
        );
    }
}

/// Whether `written` (a TOML value or a README cell, quotes and all) means the spec's default.
fn is_default(spec: &juggler_config::schema::SettingSpec, written: &str) -> bool {
    use juggler_config::schema::Kind;
    let text = written.trim().trim_matches('"');
    let value = match spec.kind {
        Kind::Size => text.parse().ok().or_else(|| units::parse_size(text)),
        Kind::Duration => {
            units::parse_duration(text).and_then(|d| u64::try_from(d.as_millis()).ok())
        }
        Kind::Count => text.parse().ok(),
        Kind::Bool => text.parse::<bool>().ok().map(u64::from),
    };
    value == Some(spec.default)
}

/// The shipped `load_balancer.toml` and the README's reference table show every scalar setting
/// with its default, so a setting added to the schema cannot stay undocumented.
#[test]
fn every_scalar_setting_is_shipped_and_documented_with_its_default() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let shipped =
        std::fs::read_to_string(root.join("juggler_config").join(LOAD_BALANCER_FILE)).unwrap();
    let shipped: toml::Table = toml::from_str(&shipped).unwrap();
    let mut wrong = Vec::new();
    for section in juggler_config::table::SPECIFIED_SETTINGS.iter() {
        for spec in section.settings {
            let name = format!("{}.{}", section.name, spec.key);
            let row = format!("| `{name}` |");
            let readme_default = readme
                .lines()
                .find_map(|line| line.strip_prefix(&row))
                .and_then(|rest| rest.split('|').next())
                .map(|cell| cell.trim().trim_matches('`').to_string());
            if !readme_default
                .as_deref()
                .is_some_and(|cell| is_default(spec, cell))
            {
                wrong.push(format!("README.md row {name}: {readme_default:?}"));
            }
            let shipped_value = shipped
                .get(section.name)
                .and_then(|table| table.get(spec.key))
                .map(toml::Value::to_string);
            if !shipped_value
                .as_deref()
                .is_some_and(|value| is_default(spec, value))
            {
                wrong.push(format!("load_balancer.toml {name}: {shipped_value:?}"));
            }
        }
    }
    println!(
        "checked {} sections",
        juggler_config::table::SPECIFIED_SETTINGS.len()
    );
    assert!(
        wrong.is_empty(),
        "not documented with its default: {wrong:#?}"
    );
}

#[test]
fn proxy_protocol_networks_are_checked() {
    let config = check(
        ROUTES,
        &format!(
            "{LB}[listen]\nproxy_protocol_from = [\"10.0.0.0/8\", \"fd00::/8\", \"127.0.0.1\"]\n"
        ),
    )
    .unwrap();
    assert_eq!(
        config.settings.listen.proxy_protocol_from,
        [
            IpNetwork::v4([10, 0, 0, 0], 8),
            IpNetwork::v6([0xfd00, 0, 0, 0, 0, 0, 0, 0], 8),
            IpNetwork::v4([127, 0, 0, 1], 32),
        ]
    );
    let all = errors(
        ROUTES,
        &format!("{LB}[listen]\nproxy_protocol_from = [\"10.0.0.1/8\", \"10.0.0/8\"]\n"),
    );
    let messages: Vec<&str> = all.iter().map(|(error, _)| error.as_str()).collect();
    assert_eq!(
        messages,
        [
            "lb.toml:4:24: bad `proxy_protocol_from` network: `10.0.0.1/8` has host bits set past the /8 prefix (the network is 10.0.0.0/8)",
            "lb.toml:4:38: bad `proxy_protocol_from` network: `10.0.0` is not an IPv4 or IPv6 address",
        ]
    );
    assert!(all[0].1.contains("CIDR notation"), "{}", all[0].1);
}
