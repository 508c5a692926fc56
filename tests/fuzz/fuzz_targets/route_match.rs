//! The generated route matcher (the `priority` codegen fixture: exact and wildcard paths, method
//! fall-through, 405) against the rules as `routes.toml` documents them, written out here with
//! `PathPattern`: any method and path must get the same answer from both.
#![no_main]

use http::Method;
use juggler::router::{MethodSet, PathPattern, Segment};
use juggler::table::{RouteId, RouteMatch};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

mod fixture {
    include!("../../fixtures/codegen/priority/expected.rs");
}

fn pattern(path: &'static str) -> PathPattern {
    let (body, prefix) = match path.strip_suffix("/*") {
        Some(body) => (body, true),
        None => (path, false),
    };
    let segments: Vec<Segment> = body
        .split('/')
        .skip(1)
        .filter(|piece| !(prefix && piece.is_empty() && body.is_empty()))
        .map(|piece| if piece == "*" { Segment::Any } else { Segment::Literal(piece) })
        .collect();
    PathPattern { segments: Vec::leak(segments), prefix }
}

/// Each route's paths as patterns, with whether each is exact; built once (the segments are
/// leaked, and a leak per run would be reported as one).
fn patterns() -> &'static [Vec<(bool, PathPattern)>] {
    static PATTERNS: OnceLock<Vec<Vec<(bool, PathPattern)>>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        let routes = fixture::TABLE.routes.iter();
        let paths = |r: &juggler::table::Route| r.paths.iter().map(|p| (!p.contains('*'), pattern(p))).collect();
        routes.map(paths).collect()
    })
}

/// Exact paths first, then wildcards; in each, the first route in file order whose path matches
/// and whose methods include the method; else 405 with every path-matching route's methods.
fn reference(method: &Method, path: &str) -> RouteMatch {
    let routes = &fixture::TABLE.routes;
    let mut allowed = MethodSet::EMPTY;
    for exact in [true, false] {
        for (id, (route, paths)) in routes.iter().zip(patterns()).enumerate() {
            let hit = paths
                .iter()
                .filter(|(is_exact, _)| *is_exact == exact)
                .any(|(_, p)| p.matches(path));
            if hit {
                if route.methods.contains(method) {
                    return RouteMatch::Found(RouteId(id as u16));
                }
                allowed = allowed.union(route.methods);
            }
        }
    }
    if allowed.is_empty() {
        RouteMatch::NotFound
    } else {
        RouteMatch::MethodNotAllowed(allowed)
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&pick, path)) = input.split_first() else { return };
    let Ok(path) = std::str::from_utf8(path) else { return };
    let method = match pick % 4 {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::DELETE,
        _ => Method::PUT,
    };
    let generated = (fixture::TABLE.match_route)(&method, path);
    assert_eq!(generated, reference(&method, path), "{method} {path:?}");
});
