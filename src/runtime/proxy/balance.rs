//! Per-request round robin: which backend of an upstream a request tries first, and in what order
//! it falls back to the others. Kept apart from the pools (what a backend can take) so the policy
//! reads on its own.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::table::{BackendId, RouteTable, UpstreamId};

/// One round-robin cursor per upstream, shared by every client connection: request k of an
/// upstream, from whichever client, starts at backend k mod m.
#[derive(Debug)]
pub(crate) struct RoundRobin {
    cursors: Vec<AtomicUsize>,
}

impl RoundRobin {
    pub(crate) fn new(table: &RouteTable) -> RoundRobin {
        RoundRobin {
            cursors: table
                .upstreams
                .iter()
                .map(|_| AtomicUsize::new(0))
                .collect(),
        }
    }

    /// The upstream's backends in the order this request should try them: the next one in turn
    /// first, then the ones after it, wrapping around, `passes` times over.
    pub(crate) fn order<'t>(
        &self,
        table: &'t RouteTable,
        upstream: UpstreamId,
        passes: usize,
    ) -> impl Iterator<Item = BackendId> + 't {
        let backends = table.upstream(upstream).backends;
        let start = self.cursors[usize::from(upstream.0)].fetch_add(1, Ordering::Relaxed);
        (0..backends.len() * passes).map(move |offset| backends[(start + offset) % backends.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::MethodSet;
    use crate::table::{BackendSpec, RouteMatch, Settings, Upstream};

    static BACKENDS: [BackendSpec; 3] = [
        BackendSpec {
            address: "127.0.0.1:1",
            pool_size: 1,
            upstream: UpstreamId(0),
        },
        BackendSpec {
            address: "127.0.0.1:2",
            pool_size: 1,
            upstream: UpstreamId(0),
        },
        BackendSpec {
            address: "127.0.0.1:3",
            pool_size: 1,
            upstream: UpstreamId(0),
        },
    ];
    static UPSTREAMS: [Upstream; 1] = [Upstream {
        name: "all",
        backends: &[BackendId(0), BackendId(1), BackendId(2)],
    }];

    fn no_routes(_: &http::Method, _: &str) -> RouteMatch {
        RouteMatch::MethodNotAllowed(MethodSet::EMPTY)
    }

    static TABLE: RouteTable = RouteTable {
        backends: &BACKENDS,
        upstreams: &UPSTREAMS,
        routes: &[],
        match_route: no_routes,
        settings: Settings::DEFAULT,
        config_hash: "test",
        sources: &[],
    };

    #[test]
    fn each_request_starts_at_the_next_backend() {
        let round_robin = RoundRobin::new(&TABLE);
        let firsts: Vec<u16> = (0..6)
            .map(|_| {
                round_robin
                    .order(&TABLE, UpstreamId(0), 1)
                    .next()
                    .unwrap()
                    .0
            })
            .collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        let fallback: Vec<u16> = round_robin
            .order(&TABLE, UpstreamId(0), 2)
            .map(|id| id.0)
            .collect();
        assert_eq!(fallback, [0, 1, 2, 0, 1, 2]);
    }
}
