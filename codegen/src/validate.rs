//! Turns the raw files into a [`Config`], reporting every mistake with what to do about it.

use std::collections::HashMap;
use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use toml::Spanned;

use crate::address::{check_address, PortZero};
use crate::diagnostics::{closest, did_you_mean, Diagnostic, Diagnostics, SourceFile};
use crate::model::{
    Backend, Config, Listen, MethodSet, Route, RoutePath, Setting, Settings, TlsMode, Upstream,
    DEFAULT_POOL_SIZE, MAX_POOL_SIZE, METHOD_NAMES,
};
use crate::pattern::{parse_path, PathKind};
use crate::raw::{
    RawLimits, RawListen, RawLoadBalancer, RawMethods, RawProxy, RawQueue, RawRoute, RawServer,
    RawSize, RawUpstream, Section,
};
use crate::units::{
    format_duration, format_size, parse_duration, parse_size, DURATION_HELP, SIZE_HELP,
};

/// The two input files, parsed.
pub struct Inputs<'a> {
    pub routes_file: &'a SourceFile,
    /// `None` when the file is not valid TOML (already reported).
    pub routes: Option<Vec<Spanned<Section<RawRoute>>>>,
    pub load_balancer_file: &'a SourceFile,
    /// `None` when the file is not valid TOML (already reported).
    pub load_balancer: Option<RawLoadBalancer>,
    /// Display name of the config directory: the certificate and key default to files in it.
    pub config_dir: &'a str,
}

/// Checks everything; the `Config` is only meaningful when `diagnostics` stayed empty.
/// `sources` and `config_hash` are left empty for the caller, who read the files.
pub fn validate(inputs: Inputs<'_>, diagnostics: &mut Diagnostics) -> Config {
    let mut checker = Checker {
        file: inputs.load_balancer_file,
        diagnostics,
    };
    let mut settings = Settings::defaults(inputs.config_dir);
    let (mut upstreams, mut backends) = (Vec::new(), Vec::new());
    if let Some(raw) = &inputs.load_balancer {
        checker.listen(&raw.listen, &mut settings.listen);
        checker.queue(&raw.queue, &mut settings);
        checker.limits(&raw.limits, &mut settings);
        checker.proxy(&raw.proxy, &mut settings);
        (upstreams, backends) = checker.upstreams(&raw.upstreams);
    }

    checker.file = inputs.routes_file;
    let mut routes = Vec::new();
    if let Some(raw) = &inputs.routes {
        // Without a readable load-balancer file every upstream name would look unknown.
        let known = inputs
            .load_balancer
            .is_some()
            .then_some(upstreams.as_slice());
        routes = checker.routes(raw, known);
    }
    Config {
        sources: Vec::new(),
        config_hash: String::new(),
        backends,
        upstreams,
        routes,
        settings,
    }
}

/// Ids are `u16` newtypes in the generated table.
const MAX_IDS: usize = u16::MAX as usize + 1;

struct Checker<'a> {
    /// The file the spans being checked point into.
    file: &'a SourceFile,
    diagnostics: &'a mut Diagnostics,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: String, help: impl Into<String>) {
        self.diagnostics
            .push(Diagnostic::at(self.file, span, message, help.into()));
    }

    fn file_error(&mut self, message: String, help: impl Into<String>) {
        self.diagnostics
            .push(Diagnostic::file(&self.file.name, message, help.into()));
    }

    fn location(&self, span: &Range<usize>) -> String {
        self.file.location(span.start)
    }

    // ---- [listen] ----

    fn listen(&mut self, raw: &RawListen, listen: &mut Listen) {
        if let Some(http) = &raw.http {
            listen.http = self.listen_address("http", http);
        }
        if let Some(https) = &raw.https {
            listen.https = self.listen_address("https", https);
        }
        if let Some(tls) = &raw.tls {
            listen.tls = match tls.get_ref().as_str() {
                "auto" => TlsMode::Auto,
                "on" => TlsMode::On,
                "off" => TlsMode::Off,
                other => {
                    let guess = closest(other, &["auto", "on", "off"])
                        .map_or_else(String::new, |mode| format!("did you mean \"{mode}\"? "));
                    self.error(
                        tls.span(),
                        format!("`tls = \"{other}\"` is not a TLS mode"),
                        format!(
                            "{guess}write \"auto\" (HTTPS when the cert and key exist at start-up), \"on\" or \"off\""
                        ),
                    );
                    listen.tls
                }
            };
        }
        for (key, raw_path, path) in [
            ("tls_cert", &raw.tls_cert, &mut listen.tls_cert),
            ("tls_key", &raw.tls_key, &mut listen.tls_key),
        ] {
            if let Some(raw_path) = raw_path {
                if raw_path.get_ref().trim().is_empty() {
                    self.error(
                        raw_path.span(),
                        format!("`{key}` is empty"),
                        "name a PEM file, relative to the directory Juggler runs in",
                    );
                }
                *path = raw_path.get_ref().clone();
            }
        }
        if let Some(redirect) = &raw.redirect_http_to_https {
            listen.redirect_http_to_https = *redirect.get_ref();
            let https_possible = listen.https.is_some() && listen.tls != TlsMode::Off;
            if *redirect.get_ref() && !https_possible {
                self.error(
                    redirect.span(),
                    "`redirect_http_to_https = true` but HTTPS is off".to_string(),
                    "set `https` to an address and `tls` to \"auto\" or \"on\", or drop the redirect",
                );
            }
        }
        if let (Some(http), Some(https)) = (&raw.http, &raw.https) {
            if listen.http.is_none() && listen.https.is_none() {
                self.error(
                    https.span(),
                    "both listeners are \"off\": Juggler would accept no connections".to_string(),
                    "give `http` or `https` an address such as \"0.0.0.0:8080\"",
                );
            } else if listen.http.is_some() && listen.http == listen.https {
                self.error(
                    https.span(),
                    format!(
                        "`https` uses the same address as `http` ({})",
                        http.get_ref()
                    ),
                    "give each listener its own port",
                );
            }
        }
    }

    fn listen_address(&mut self, key: &str, raw: &Spanned<String>) -> Option<String> {
        let text = raw.get_ref();
        if text == "off" {
            return None;
        }
        if let Err(error) = check_address(text, PortZero::Allowed) {
            self.error(
                raw.span(),
                format!("bad `{key}` listen address: {}", error.message),
                format!("{}, or \"off\" to disable this listener", error.help),
            );
        }
        Some(text.clone())
    }

    // ---- [queue], [limits], [proxy] ----

    fn queue(&mut self, raw: &RawQueue, settings: &mut Settings) {
        self.integer(
            &raw.max_queued_per_server,
            "max_queued_per_server",
            0..=1_000_000,
            &mut settings.max_queued_per_server,
        );
        self.duration(&raw.timeout, "timeout", true, &mut settings.queue_timeout);
    }

    fn limits(&mut self, raw: &RawLimits, settings: &mut Settings) {
        self.size(
            &raw.max_header_bytes,
            "max_header_bytes",
            1024..=1024 * 1024,
            &mut settings.max_header_bytes,
        );
        self.size(
            &raw.max_body_bytes,
            "max_body_bytes",
            1..=1 << 40,
            &mut settings.max_body_bytes,
        );
        self.size(
            &raw.response_buffer_bytes,
            "response_buffer_bytes",
            1..=1 << 30,
            &mut settings.response_buffer_bytes,
        );
        self.integer(
            &raw.max_client_connections,
            "max_client_connections",
            1..=1_000_000,
            &mut settings.max_client_connections,
        );
        let timeouts = [
            (
                &raw.header_read_timeout,
                "header_read_timeout",
                &mut settings.header_read_timeout,
            ),
            (
                &raw.body_read_timeout,
                "body_read_timeout",
                &mut settings.body_read_timeout,
            ),
            (
                &raw.client_idle_timeout,
                "client_idle_timeout",
                &mut settings.client_idle_timeout,
            ),
            (
                &raw.backend_timeout,
                "backend_timeout",
                &mut settings.backend_timeout,
            ),
            (
                &raw.connect_timeout,
                "connect_timeout",
                &mut settings.connect_timeout,
            ),
            (
                &raw.tls_handshake_timeout,
                "tls_handshake_timeout",
                &mut settings.tls_handshake_timeout,
            ),
        ];
        for (raw, key, setting) in timeouts {
            self.duration(raw, key, true, setting);
        }
        // Zero is meaningful here: stop at once without waiting for requests in flight.
        self.duration(
            &raw.drain_timeout,
            "drain_timeout",
            false,
            &mut settings.drain_timeout,
        );
    }

    fn proxy(&mut self, raw: &RawProxy, settings: &mut Settings) {
        if let Some(forwarded) = &raw.forwarded_headers {
            settings.forwarded_headers = Setting {
                value: *forwarded.get_ref(),
                source: Some(self.location(&forwarded.span())),
            };
        }
        self.integer(
            &raw.max_retries,
            "max_retries",
            0..=10,
            &mut settings.max_retries,
        );
        self.integer(
            &raw.down_after_failures,
            "down_after_failures",
            1..=1000,
            &mut settings.down_after_failures,
        );
        self.integer(
            &raw.worker_threads,
            "worker_threads",
            0..=1024,
            &mut settings.worker_threads,
        );
    }

    fn integer<T: TryFrom<i64>>(
        &mut self,
        raw: &Option<Spanned<i64>>,
        key: &str,
        range: RangeInclusive<i64>,
        setting: &mut Setting<T>,
    ) {
        let Some(raw) = raw else { return };
        let value = *raw.get_ref();
        match T::try_from(value) {
            Ok(converted) if range.contains(&value) => {
                *setting = Setting {
                    value: converted,
                    source: Some(self.location(&raw.span())),
                }
            }
            _ => self.error(
                raw.span(),
                format!("`{key} = {value}` is out of range"),
                format!(
                    "write a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            ),
        }
    }

    fn duration(
        &mut self,
        raw: &Option<Spanned<String>>,
        key: &str,
        positive: bool,
        setting: &mut Setting<Duration>,
    ) {
        let Some(raw) = raw else { return };
        match parse_duration(raw.get_ref()) {
            Some(duration) if positive && duration.is_zero() => self.error(
                raw.span(),
                format!("`{key}` is zero"),
                format!(
                    "a zero timeout would fail every request; the default is \"{}\"",
                    format_duration(setting.value)
                ),
            ),
            Some(duration) => {
                *setting = Setting {
                    value: duration,
                    source: Some(self.location(&raw.span())),
                }
            }
            None => self.error(
                raw.span(),
                format!("`{key} = \"{}\"` is not a duration", raw.get_ref()),
                DURATION_HELP,
            ),
        }
    }

    fn size(
        &mut self,
        raw: &Option<Spanned<RawSize>>,
        key: &str,
        range: RangeInclusive<u64>,
        setting: &mut Setting<usize>,
    ) {
        let Some(raw) = raw else { return };
        let bytes = match raw.get_ref() {
            RawSize::Bytes(bytes) => u64::try_from(*bytes).ok(),
            RawSize::Text(text) => parse_size(text),
        };
        let Some(bytes) = bytes else {
            let written = match raw.get_ref() {
                RawSize::Bytes(bytes) => bytes.to_string(),
                RawSize::Text(text) => format!("\"{text}\""),
            };
            self.error(
                raw.span(),
                format!("`{key} = {written}` is not a size"),
                SIZE_HELP,
            );
            return;
        };
        match usize::try_from(bytes) {
            Ok(value) if range.contains(&bytes) => {
                *setting = Setting {
                    value,
                    source: Some(self.location(&raw.span())),
                }
            }
            _ => self.error(
                raw.span(),
                format!("`{key}` of {} is out of range", format_size(bytes)),
                format!(
                    "write a size from {} to {}",
                    format_size(*range.start()),
                    format_size(*range.end())
                ),
            ),
        }
    }

    // ---- [upstreams.*] ----

    fn upstreams(&mut self, raw: &[RawUpstream]) -> (Vec<Upstream>, Vec<Backend>) {
        if raw.is_empty() {
            self.file_error(
                "no upstreams are defined".to_string(),
                "add `[upstreams.default]` with `servers = [\"localhost:6901\"]`",
            );
        }
        let mut upstreams = Vec::new();
        let mut backends = Vec::new();
        // Lower-cased address → (upstream name, location), to find a server listed twice.
        let mut seen: HashMap<String, (String, String)> = HashMap::new();
        for (index, upstream) in raw.iter().enumerate() {
            let name = upstream.name.get_ref();
            let body = &upstream.section.value;
            let pool_size = match &body.connections_per_server {
                Some(raw) => self
                    .pool_size(raw, "connections_per_server")
                    .unwrap_or(DEFAULT_POOL_SIZE),
                None => DEFAULT_POOL_SIZE,
            };
            let servers = body.servers.as_ref();
            let missing = servers.is_none() && !upstream.section.reported("servers");
            if missing || servers.is_some_and(|servers| servers.get_ref().is_empty()) {
                let span = servers.map_or(upstream.name.span(), Spanned::span);
                self.error(
                    span,
                    format!("upstream `{name}` has no servers"),
                    "list its servers: `servers = [\"localhost:6901\", \"localhost:6902\"]`",
                );
            }
            let mut members = Vec::new();
            for server in servers
                .map(|servers| servers.get_ref().as_slice())
                .unwrap_or_default()
            {
                let Some((address, pool_size)) = self.server(server, pool_size) else {
                    continue;
                };
                let location = self.location(&server.span());
                match seen.get(&address.to_ascii_lowercase()) {
                    Some((other, first)) if other == name => self.error(
                        server.span(),
                        format!("server `{address}` is listed twice in upstream `{name}` (first at {first})"),
                        "list it once; give it `connections = n` for a bigger pool",
                    ),
                    Some((other, first)) => self.error(
                        server.span(),
                        format!("server `{address}` is in upstream `{other}` ({first}) and in `{name}`"),
                        "a server belongs to one upstream (Juggler holds one fixed pool per server): remove it from one",
                    ),
                    None => {
                        seen.insert(address.to_ascii_lowercase(), (name.clone(), location.clone()));
                    }
                }
                members.push(backends.len());
                backends.push(Backend {
                    address,
                    pool_size,
                    upstream: index,
                    source: location,
                });
            }
            upstreams.push(Upstream {
                name: name.clone(),
                backends: members,
                source: self.location(&upstream.name.span()),
            });
        }
        if backends.len() > MAX_IDS || upstreams.len() > MAX_IDS {
            self.file_error(
                format!(
                    "{} servers in {} upstreams are too many",
                    backends.len(),
                    upstreams.len()
                ),
                format!("Juggler supports up to {MAX_IDS} of each"),
            );
        }
        (upstreams, backends)
    }

    /// Address and pool size of one `servers` entry; `None` if it is unusable.
    fn server(
        &mut self,
        server: &Spanned<RawServer>,
        upstream_pool_size: usize,
    ) -> Option<(String, usize)> {
        let (address, span, pool_size) = match server.get_ref() {
            RawServer::Address(address) => (address.clone(), server.span(), upstream_pool_size),
            RawServer::Table { address: None, .. } => {
                self.error(
                    server.span(),
                    "server has no `address`".to_string(),
                    "write `{ address = \"host:port\", connections = 8 }`",
                );
                return None;
            }
            RawServer::Table {
                address: Some(address),
                connections,
            } => {
                let pool_size = match connections {
                    Some(raw) => self.pool_size(raw, "connections")?,
                    None => upstream_pool_size,
                };
                (address.get_ref().clone(), address.span(), pool_size)
            }
        };
        if let Err(error) = check_address(&address, PortZero::Refused) {
            self.error(
                span,
                format!("bad server address: {}", error.message),
                error.help,
            );
            return None;
        }
        Some((address, pool_size))
    }

    fn pool_size(&mut self, raw: &Spanned<i64>, key: &str) -> Option<usize> {
        let size = *raw.get_ref();
        if (1..=MAX_POOL_SIZE).contains(&size) {
            return usize::try_from(size).ok();
        }
        let why = if size < 1 {
            "a backend needs at least one connection"
        } else {
            "more would likely exhaust file descriptors or the backend"
        };
        self.error(
            raw.span(),
            format!("`{key} = {size}` is not a usable pool size"),
            format!("write 1 to {MAX_POOL_SIZE} ({why})"),
        );
        None
    }

    // ---- [[route]] ----

    /// `upstreams` is `None` when they could not be read, so upstream names cannot be checked.
    fn routes(
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
            let (Some(methods), Some(paths), Some(upstream)) = (methods, paths, upstream) else {
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
