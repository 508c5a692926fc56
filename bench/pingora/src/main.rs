//! Pingora as a peer in `make bench`: the smallest proxy on the `pingora` crates that does what the
//! other balancers are asked to do — round robin over the bench's backends, HTTP/1.1 keep-alive to
//! them, plain HTTP and HTTPS (HTTP/1.1 and HTTP/2 by ALPN) towards the clients.
//!
//! bench/targets.py builds it (`cargo build --release` here, its own workspace) and starts it as
//!
//! ```text
//! bench-pingora --threads 2 --http 127.0.0.1:18084 [--https 127.0.0.1:18447 --cert C --key K]
//!               --pid-file F --backend 127.0.0.1:19001 --backend 127.0.0.1:19002 ...
//! ```
//!
//! Pingora has no bound on connections per backend: it keeps up to `upstream_keepalive_pool_size`
//! idle ones (set as high as nginx's `keepalive`) and opens more when all are busy.

use async_trait::async_trait;
use pingora::lb::{selection::RoundRobin, LoadBalancer};
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use std::sync::Arc;

/// What the command line asks for.
struct Args {
    threads: usize,
    http: String,
    /// HTTPS listener with its certificate and key, when the bench has TLS.
    https: Option<(String, String, String)>,
    pid_file: String,
    backends: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        threads: 2,
        http: String::new(),
        https: None,
        pid_file: String::new(),
        backends: vec![],
    };
    let (mut https, mut cert, mut key) = (None, None, None);
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--threads" => {
                args.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?
            }
            "--http" => args.http = value()?,
            "--https" => https = Some(value()?),
            "--cert" => cert = Some(value()?),
            "--key" => key = Some(value()?),
            "--pid-file" => args.pid_file = value()?,
            "--backend" => args.backends.push(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.http.is_empty() || args.backends.is_empty() || args.pid_file.is_empty() {
        return Err("--http, --pid-file and at least one --backend are required".into());
    }
    args.https = match (https, cert, key) {
        (Some(addr), Some(cert), Some(key)) => Some((addr, cert, key)),
        (None, None, None) => None,
        _ => return Err("--https needs --cert and --key".into()),
    };
    Ok(args)
}

/// The proxy: every request goes to the next backend in round-robin order.
struct RoundRobinProxy(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for RoundRobinProxy {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        // No health checks are configured, so every backend is always a candidate.
        let backend = self
            .0
            .select(b"", 256)
            .ok_or_else(|| pingora::Error::new_str("no backend to select"))?;
        Ok(Box::new(HttpPeer::new(backend, false, String::new())))
    }
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(problem) => {
            eprintln!("bench-pingora: {problem}");
            std::process::exit(2);
        }
    };
    let conf = ServerConf {
        threads: args.threads,
        // The same idle-connection room as nginx's `keepalive 4096` in the bench.
        upstream_keepalive_pool_size: 4096,
        // The default SIGTERM waits 60 s + 5 s before exiting; the bench stops it between scenarios.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: args.pid_file.clone(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let upstreams = match LoadBalancer::try_from_iter(args.backends.iter().map(String::as_str)) {
        Ok(upstreams) => upstreams,
        Err(error) => {
            eprintln!("bench-pingora: backends {:?}: {error}", args.backends);
            std::process::exit(2);
        }
    };
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        RoundRobinProxy(Arc::new(upstreams)),
    );
    proxy.add_tcp(&args.http);
    if let Some((addr, cert, key)) = &args.https {
        let mut tls = match TlsSettings::intermediate(cert, key) {
            Ok(tls) => tls,
            Err(error) => {
                eprintln!("bench-pingora: TLS settings from {cert} and {key}: {error}");
                std::process::exit(2);
            }
        };
        tls.enable_h2();
        proxy.add_tls_with_settings(addr, None, tls);
    }
    server.add_service(proxy);
    server.run_forever();
}
