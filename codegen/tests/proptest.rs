//! Property tests over the build-time inputs (issue 5 point 6; cargo-fuzz needs a nightly
//! toolchain, so proptest stands in): random routes/configs, valid-ish and mutated, never make the
//! parser, validator, generator or summary panic; and every config the validator accepts produces
//! a file `syn` parses. Full compiles of generated files are covered by the golden fixtures
//! (`tests/codegen.rs` in the root crate `include!`s each and routes requests through it).

use juggler_codegen::{from_sources, generate, summary, SourceFile};
use juggler_config::router::METHOD_NAMES;
use proptest::prelude::*;
use proptest::sample::select;

const UPSTREAMS: &[&str] = &["default", "api", "static", "a-b", "x_1", "Ü", ""];
const SEGMENTS: &[&str] = &[
    "api", "users", "static", "v1", "*", "a.b", "%20", "ü", "", "**", "a*", "?q", "..",
];
const DURATIONS: &[&str] = &[
    "\"10s\"",
    "\"0s\"",
    "\"250ms\"",
    "\"2m\"",
    "\"1h\"",
    "\"abc\"",
    "\"-1s\"",
    "5",
    "\"\"",
    "\"99999999999h\"",
];
const SIZES: &[&str] = &[
    "16384",
    "\"16KiB\"",
    "\"1MiB\"",
    "\"1GiB\"",
    "0",
    "-1",
    "\"1XB\"",
    "\"512B\"",
    "1e3",
    "18446744073709551615",
];
const SETTINGS: &[(&str, &[&str])] = &[
    (
        "queue",
        &[
            "max_queued_per_server = 0",
            "max_queued_per_server = 1000001",
            "timeout = $D",
        ],
    ),
    (
        "limits",
        &[
            "max_header_bytes = $S",
            "max_body_bytes = $S",
            "header_read_timeout = $D",
            "backend_timeout = $D",
            "response_buffer_bytes = $S",
            "max_client_connections = 0",
            "drain_timeout = $D",
        ],
    ),
    (
        "proxy",
        &[
            "max_retries = 11",
            "max_retries = 1",
            "down_after_failures = 0",
            "worker_threads = 4",
            "forwarded_headers = true",
        ],
    ),
    (
        "listen",
        &[
            "http = \"off\"",
            "http = \"127.0.0.1:0\"",
            "https = \"[::1]:8443\"",
            "tls = \"on\"",
            "tls = \"maybe\"",
            "redirect_http_to_https = true",
        ],
    ),
];

fn path(valid: bool) -> impl Strategy<Value = String> {
    let segments = if valid { &SEGMENTS[..6] } else { SEGMENTS };
    prop::collection::vec(select(segments), usize::from(valid)..4).prop_map(|segments| {
        let mut path = String::new();
        for segment in segments {
            path.push('/');
            path.push_str(segment);
        }
        if path.is_empty() {
            path.push('/');
        }
        path
    })
}

fn methods(valid: bool) -> impl Strategy<Value = String> {
    let mut names = METHOD_NAMES.to_vec();
    if !valid {
        names.extend(["get", "BREW", ""]);
    }
    let min = usize::from(valid);
    prop_oneof![
        Just("\"*\"".to_owned()),
        prop::collection::btree_set(select(names), min..4).prop_map(|names| {
            let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
            format!("[{}]", quoted.join(", "))
        }),
    ]
}

fn route(valid: bool) -> impl Strategy<Value = String> {
    let upstreams = if valid { &UPSTREAMS[..3] } else { UPSTREAMS };
    (
        methods(valid),
        prop::collection::btree_set(path(valid), usize::from(valid)..4),
        select(upstreams),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(methods, paths, upstream, retry)| {
            let paths: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
            let mut text = format!(
                "[[route]]\nmethods = {methods}\npaths = [{}]\nupstream = {upstream:?}\n",
                paths.join(", ")
            );
            if let Some(retry) = retry {
                text.push_str(&format!("retry_non_idempotent = {retry}\n"));
            }
            text
        })
}

fn server(valid: bool) -> impl Strategy<Value = String> {
    let hosts = [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "example.test",
        "",
        "1.2.3",
    ];
    let host = select(hosts[..if valid { 4 } else { 6 }].to_vec());
    let port = if valid { 1u32..65536 } else { 0u32..70000 };
    let connections = if valid { 1u32..1025 } else { 0u32..1100 };
    (host, port, prop::option::of(connections)).prop_map(|(host, port, connections)| {
        match connections {
            Some(n) => format!("{{ address = \"{host}:{port}\", connections = {n} }}"),
            None => format!("\"{host}:{port}\""),
        }
    })
}

fn upstream(valid: bool, name: &'static str) -> impl Strategy<Value = String> {
    let name = if valid {
        Just(name).boxed()
    } else {
        select(UPSTREAMS).boxed()
    };
    let per_server = if valid { 1u32..1025 } else { 0u32..1100 };
    (
        name,
        prop::option::of(per_server),
        prop::collection::vec(server(valid), usize::from(valid)..4),
    )
        .prop_map(|(name, per_server, servers)| {
            let mut text = format!("[upstreams.{name:?}]\n");
            if let Some(n) = per_server {
                text.push_str(&format!("connections_per_server = {n}\n"));
            }
            text.push_str(&format!("servers = [{}]\n", servers.join(", ")));
            text
        })
}

/// Settings lines that are always accepted, for configs meant to pass.
const VALID_SETTINGS: &[&str] = &[
    "[queue]\ntimeout = \"250ms\"\n",
    "[limits]\nmax_body_bytes = \"1MiB\"\nbackend_timeout = \"2m\"\n",
    "[proxy]\nmax_retries = 0\nforwarded_headers = true\n",
    "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"off\"\n",
];

fn settings(valid: bool) -> BoxedStrategy<String> {
    if valid {
        return prop::option::of(select(VALID_SETTINGS))
            .prop_map(|text| text.unwrap_or_default().to_owned())
            .boxed();
    }
    prop::collection::vec(
        (
            0..SETTINGS.len(),
            any::<prop::sample::Index>(),
            select(DURATIONS),
            select(SIZES),
        ),
        0..5,
    )
    .prop_map(|picks| {
        let mut text = String::new();
        for (section, key, duration, size) in picks {
            let (name, lines) = SETTINGS[section];
            let line = key.get(lines).replace("$D", duration).replace("$S", size);
            text.push_str(&format!("[{name}]\n{line}\n"));
        }
        text
    })
    .boxed()
}

/// A routes file and a load-balancer file: built from valid pieces only (`valid`), so that many
/// pass the validator, or from pieces that are often wrong.
fn config(valid: bool) -> impl Strategy<Value = (String, String)> {
    let upstreams = if valid {
        (
            upstream(true, "default"),
            upstream(true, "api"),
            upstream(true, "static"),
        )
            .prop_map(|(a, b, c)| vec![a, b, c])
            .boxed()
    } else {
        prop::collection::vec(upstream(false, ""), 0..3).boxed()
    };
    (
        prop::collection::vec(route(valid), usize::from(valid)..6),
        settings(valid),
        upstreams,
    )
        .prop_map(|(routes, settings, upstreams)| {
            (routes.concat(), format!("{settings}{}", upstreams.concat()))
        })
}

/// Byte-level damage to a TOML text, on char boundaries.
#[derive(Debug, Clone)]
enum Mutation {
    Delete {
        at: prop::sample::Index,
        len: usize,
    },
    Insert {
        at: prop::sample::Index,
        text: &'static str,
    },
    Truncate {
        at: prop::sample::Index,
    },
    DuplicateLine {
        at: prop::sample::Index,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let junk = select(
        &[
            "[",
            "]",
            "{",
            "}",
            "=",
            "\"",
            "#",
            "\n",
            "*",
            "/",
            ",",
            "[[route]]\n",
            "\\u0000",
            "'",
            "ü",
            "\r",
            "\t",
            "0x",
            "inf",
            "-",
            ".",
            "[upstreams]\n",
        ][..],
    );
    prop_oneof![
        (any::<prop::sample::Index>(), 1usize..20)
            .prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<prop::sample::Index>(), junk).prop_map(|(at, text)| Mutation::Insert { at, text }),
        any::<prop::sample::Index>().prop_map(|at| Mutation::Truncate { at }),
        any::<prop::sample::Index>().prop_map(|at| Mutation::DuplicateLine { at }),
    ]
}

fn boundary(text: &str, at: &prop::sample::Index) -> usize {
    let mut offset = at.index(text.len() + 1);
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

fn mutate(text: &str, mutation: &Mutation) -> String {
    let mut text = text.to_owned();
    match mutation {
        Mutation::Delete { at, len } => {
            let start = boundary(&text, at);
            let mut end = (start + len).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            text.replace_range(start..end, "");
        }
        Mutation::Insert { at, text: junk } => {
            let offset = boundary(&text, at);
            text.insert_str(offset, junk);
        }
        Mutation::Truncate { at } => {
            let offset = boundary(&text, at);
            text.truncate(offset);
        }
        Mutation::DuplicateLine { at } => {
            let lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() {
                let line = lines[at.index(lines.len())];
                text = format!("{text}\n{line}\n");
            }
        }
    }
    text
}

/// Runs the whole pipeline: validation never panics; an accepted config generates a file that
/// parses as Rust, and a summary. Returns whether the config was accepted.
fn pipeline(routes: &str, load_balancer: &str) -> Result<bool, TestCaseError> {
    let result = from_sources(
        SourceFile {
            name: "routes.toml".into(),
            text: routes.into(),
        },
        SourceFile {
            name: "juggler_config/load_balancer.toml".into(),
            text: load_balancer.into(),
        },
        "juggler_config",
    );
    match result {
        Ok(config) => {
            let generated = generate(&config);
            if let Err(error) = syn::parse_file(&generated) {
                return Err(TestCaseError::fail(format!(
                    "accepted config generated unparsable code: {error}\n--- routes\n{routes}\n\
                     --- load_balancer\n{load_balancer}\n--- generated\n{generated}"
                )));
            }
            prop_assert!(generated.contains("pub static TABLE"), "{generated}");
            let _ = summary(&config);
            Ok(true)
        }
        Err(diagnostics) => {
            prop_assert!(!diagnostics.is_empty());
            // Rendering the report walks every span back to a line and column.
            let report = diagnostics.to_string();
            prop_assert!(report.contains("error"), "{report}");
            Ok(false)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn valid_ish_configs_never_panic_and_accepted_ones_generate_rust(
        (routes, lb) in prop_oneof![config(true), config(false)]
    ) {
        pipeline(&routes, &lb)?;
    }

    #[test]
    fn mutated_configs_never_panic(
        (routes, lb) in prop_oneof![config(true), config(false)],
        routes_damage in prop::collection::vec(mutation(), 0..3),
        lb_damage in prop::collection::vec(mutation(), 0..3),
    ) {
        let routes = routes_damage.iter().fold(routes, |text, m| mutate(&text, m));
        let lb = lb_damage.iter().fold(lb, |text, m| mutate(&text, m));
        pipeline(&routes, &lb)?;
    }

    #[test]
    fn arbitrary_text_never_panics(routes in any::<String>(), lb in any::<String>()) {
        pipeline(&routes, &lb)?;
    }
}

/// The generators must reach accepted configs often enough for the syn check to mean something.
#[test]
fn a_fair_share_of_generated_configs_is_accepted() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = config(true);
    let samples = 400;
    let mut accepted = 0;
    for _ in 0..samples {
        let (routes, lb) = strategy.new_tree(&mut runner).unwrap().current();
        if pipeline(&routes, &lb).unwrap() {
            accepted += 1;
        } else if std::env::var_os("SHOW_REJECTED").is_some() {
            let result = from_sources(
                SourceFile {
                    name: "r".into(),
                    text: routes,
                },
                SourceFile {
                    name: "l".into(),
                    text: lb,
                },
                "c",
            );
            println!("{}", result.err().unwrap());
        }
    }
    println!("{accepted} of {samples} generated configs accepted by the validator");
    assert!(
        accepted * 20 >= samples,
        "only {accepted} of {samples} accepted"
    );
}
