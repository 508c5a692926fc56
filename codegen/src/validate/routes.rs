//! `[[route]]`: methods, paths and upstream of each route, and whether earlier routes leave it
//! reachable.

use std::ops::Range;

use toml::Spanned;

use super::{Checker, MAX_IDS};
use crate::diagnostics::did_you_mean;
use crate::model::{MethodSet, Named, Priority, Route, RoutePath, Upstream, METHOD_NAMES};
use crate::pattern::{parse_path, PathKind};
use crate::raw::{RawMethods, RawRoute, Section};

impl Checker<'_> {
    /// `upstreams` is `None` when they could not be read, so upstream names cannot be checked.
    pub(super) fn routes(
        &mut self,
        raw: &[Spanned<Section<RawRoute>>],
        upstreams: Option<&[Upstream]>,
    ) -> Vec<Route> {
        if raw.is_empty() {
            self.file_error(
                "no routes are defined: every request would get 404".to_string(),
                "add `[[route]]` with `methods = \"*\"`, `paths = [\"/*\"]` and `upstream = \"default\"`",
            );
        }
        let upstream_names: Option<Vec<&str>> = upstreams.map(|upstreams| {
            upstreams
                .iter()
                .map(|upstream| upstream.name.as_str())
                .collect()
        });
        let mut routes: Vec<Route> = Vec::new();
        for raw_route in raw {
            let span = raw_route.span();
            let route = raw_route.get_ref();
            let methods = self.methods(route, &span);
            let paths = self.paths(route, &span);
            let upstream = self.route_upstream(route, &span, upstream_names.as_deref());
            let priority = match &route.value.priority {
                Some(raw) => self.named(
                    raw,
                    "priority",
                    "a route priority",
                    "\"high\" (may take reserved slots), \"normal\" (the default) or \"low\" \
                     (refused first when the queue fills)",
                ),
                None => Some(Priority::DEFAULT),
            };
            let (Some(methods), Some(paths), Some(upstream), Some(priority)) =
                (methods, paths, upstream, priority)
            else {
                continue;
            };
            let route = Route {
                methods,
                paths,
                upstream,
                retry_non_idempotent: route
                    .value
                    .retry_non_idempotent
                    .as_ref()
                    .is_some_and(|retry| *retry.get_ref()),
                priority,
                source: self.location(&span),
            };
            self.reachability(&route, &routes, raw_route);
            routes.push(route);
        }
        if routes.len() > MAX_IDS {
            self.file_error(
                format!("{} routes are too many", routes.len()),
                format!("Juggler supports up to {MAX_IDS}"),
            );
        }
        routes
    }

    fn methods(
        &mut self,
        route: &Section<RawRoute>,
        route_span: &Range<usize>,
    ) -> Option<MethodSet> {
        let Some(raw) = &route.value.methods else {
            if route.reported("methods") {
                return None;
            }
            self.error(
                route_span.clone(),
                "route has no `methods`".to_string(),
                "add `methods = \"*\"` for every method, or a list such as `methods = [\"GET\", \"HEAD\"]`",
            );
            return None;
        };
        let names = match raw.get_ref() {
            RawMethods::One(star) if star == "*" => return Some(MethodSet::ANY),
            RawMethods::One(name) => {
                self.error(
                    raw.span(),
                    format!("`methods = \"{name}\"` is neither \"*\" nor a list"),
                    format!(
                        "write `methods = [\"{}\"]`, or `methods = \"*\"` for every method",
                        name.to_ascii_uppercase()
                    ),
                );
                return None;
            }
            RawMethods::List(names) => names,
        };
        if names.is_empty() {
            self.error(
                raw.span(),
                "`methods` is empty: the route could never match".to_string(),
                "list methods such as [\"GET\", \"HEAD\"], or write `methods = \"*\"`",
            );
            return None;
        }
        let mut set = MethodSet::default();
        let mut valid = true;
        for name in names {
            let text = name.get_ref();
            let Some(bit) = MethodSet::from_name(text) else {
                valid = false;
                let help = if text == "*" {
                    "write `methods = \"*\"` without brackets for every method".to_string()
                } else if MethodSet::from_name(&text.to_ascii_uppercase()).is_some() {
                    format!(
                        "method names are upper case: write `{}`",
                        text.to_ascii_uppercase()
                    )
                } else {
                    format!(
                        "Juggler routes the standard methods only; {}",
                        did_you_mean(text, &METHOD_NAMES)
                    )
                };
                self.error(name.span(), format!("unknown HTTP method `{text}`"), help);
                continue;
            };
            if set.contains_all(bit) {
                self.error(
                    name.span(),
                    format!("method `{text}` is listed twice"),
                    "list it once",
                );
            }
            set = set.union(bit);
        }
        valid.then_some(set)
    }

    fn paths(
        &mut self,
        route: &Section<RawRoute>,
        route_span: &Range<usize>,
    ) -> Option<Vec<RoutePath>> {
        let Some(raw) = &route.value.paths else {
            if route.reported("paths") {
                return None;
            }
            self.error(
                route_span.clone(),
                "route has no `paths`".to_string(),
                "add `paths = [\"/*\"]` for every path, or exact paths and wildcards such as [\"/api/users\", \"/static/*\"]",
            );
            return None;
        };
        if raw.get_ref().is_empty() {
            self.error(
                raw.span(),
                "`paths` is empty: the route could never match".to_string(),
                "list paths such as [\"/api/users\", \"/static/*\"], or [\"/*\"] for every path",
            );
            return None;
        }
        let mut paths: Vec<RoutePath> = Vec::new();
        let mut valid = true;
        for path in raw.get_ref() {
            let text = path.get_ref();
            match parse_path(text) {
                Err(error) => {
                    valid = false;
                    self.error(path.span(), error.message, error.help);
                }
                Ok(_) if paths.iter().any(|seen| seen.text == *text) => {
                    self.error(
                        path.span(),
                        format!("path `{text}` is listed twice in this route"),
                        "list it once",
                    );
                }
                Ok(kind) => paths.push(RoutePath {
                    text: text.clone(),
                    kind,
                    source: self.location(&path.span()),
                }),
            }
        }
        valid.then_some(paths)
    }

    fn route_upstream(
        &mut self,
        route: &Section<RawRoute>,
        route_span: &Range<usize>,
        known: Option<&[&str]>,
    ) -> Option<usize> {
        let Some(raw) = &route.value.upstream else {
            if route.reported("upstream") {
                return None;
            }
            self.error(
                route_span.clone(),
                "route has no `upstream`".to_string(),
                format!(
                    "add `upstream = \"{}\"`",
                    known
                        .and_then(|known| known.first().copied())
                        .unwrap_or("default")
                ),
            );
            return None;
        };
        let name = raw.get_ref();
        let known = known?;
        let index = known.iter().position(|known| known == name);
        if index.is_none() {
            let help = if known.is_empty() {
                format!("define it in the load-balancer config as `[upstreams.{name}]`")
            } else {
                format!(
                    "{}; or define `[upstreams.{name}]` in the load-balancer config",
                    did_you_mean(name, known)
                )
            };
            self.error(
                raw.span(),
                format!("route sends to upstream `{name}`, which does not exist"),
                help,
            );
        }
        index
    }

    /// Refuses a route that duplicates an earlier one, and each path that earlier routes already
    /// answer for every method this route accepts (exact paths are checked before wildcards, so
    /// only an exact path can shadow an exact path and only a wildcard a wildcard).
    fn reachability(&mut self, route: &Route, earlier: &[Route], raw: &Spanned<Section<RawRoute>>) {
        let same_paths = |other: &Route| {
            other.paths.len() == route.paths.len()
                && route
                    .paths
                    .iter()
                    .all(|path| other.paths.iter().any(|theirs| theirs.text == path.text))
        };
        if let Some(first) = earlier
            .iter()
            .find(|other| other.methods == route.methods && same_paths(other))
        {
            self.error(
                raw.span(),
                format!(
                    "duplicate route: same methods and paths as the route at {}",
                    first.source
                ),
                "remove one of them (the first one always wins)",
            );
            return;
        }
        let path_spans = raw
            .get_ref()
            .value
            .paths
            .as_ref()
            .map(|paths| paths.get_ref().as_slice())
            .unwrap_or_default();
        for path in &route.paths {
            let covering: Vec<&Route> = earlier
                .iter()
                .filter(|other| {
                    other
                        .paths
                        .iter()
                        .any(|theirs| covers(&theirs.kind, &theirs.text, &path.kind, &path.text))
                })
                .collect();
            let methods = covering
                .iter()
                .fold(MethodSet::default(), |set, other| set.union(other.methods));
            if covering.is_empty() || !methods.contains_all(route.methods) {
                continue;
            }
            let by = covering
                .iter()
                .map(|other| other.source.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let span = path_spans
                .iter()
                .find(|raw_path| *raw_path.get_ref() == path.text)
                .map_or(raw.span(), Spanned::span);
            self.error(
                span,
                format!("path `{}` can never match: the route at {by} already takes every request to it", path.text),
                format!("move this route above {by} (first match wins), or remove the path"),
            );
        }
    }
}

/// Whether an earlier path answers every request a later path would.
fn covers(earlier: &PathKind, earlier_text: &str, later: &PathKind, later_text: &str) -> bool {
    match (earlier, later) {
        (PathKind::Exact, PathKind::Exact) => earlier_text == later_text,
        (PathKind::Wildcard(earlier), PathKind::Wildcard(later)) => earlier.covers(later),
        // Exact paths are matched before any wildcard, and a wildcard matches infinitely many.
        _ => false,
    }
}
