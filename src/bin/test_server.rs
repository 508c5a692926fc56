//! `test_server`: a small static-file HTTP/1.1 server used as a Juggler backend.
//!
//! The counterpart of the original Juggler's `serc --port=6901 --root=./test_server_root_1`:
//! `make run`, the benchmarks and the integration tests start three of these behind Juggler.
//!
//! It serves regular files under `--root` for GET and HEAD, keeps connections alive (Juggler
//! holds a fixed pool of keep-alive connections to each backend), and never serves anything
//! outside its root:
//! - a request whose percent-decoded path has a `..` segment, or a segment that decodes to
//!   `/`, `\` or NUL, is answered `400 Bad Request` — such a path is an attack or a broken
//!   client, never a file name;
//! - a path that resolves (through symlinks) outside the root is answered `404 Not Found`, the
//!   same as a missing file, so the answer reveals nothing about the rest of the disk.
//!
//! For uneven backend sets without extra tools: `--delay 50ms` answers every request after 50 ms,
//! `--delay 1ms..200ms` after a time drawn uniformly from that range, and `--fail-rate 0.01`
//! answers about one request in a hundred `500 Internal Server Error` instead. `--capacity 6`
//! serves six requests at once at full speed and slows each one beyond that by 20 ms per extra
//! request in progress: a backend whose right `n` is 6, for the adaptive limit.
//!
//! Once bound it prints `test_server listening on <addr> root <dir>` on stdout: scripts and tests
//! wait for that line, and with `--port 0` read the real port from it. One line per request is
//! logged to stderr when `RUST_LOG` asks for it (e.g. `RUST_LOG=info`). SIGINT or SIGTERM stops
//! accepting, lets in-flight requests finish (bounded by [`DRAIN_TIMEOUT`]) and exits 0.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{debug, info, warn};

/// How long open connections get to finish their current request after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Static-file HTTP/1.1 test backend for Juggler (GET/HEAD, keep-alive)"
)]
struct Args {
    /// TCP port to listen on; 0 picks a free port (the listening line shows which).
    #[arg(long)]
    port: u16,

    /// Directory whose files are served; nothing outside it is ever served.
    #[arg(long)]
    root: PathBuf,

    /// Address to bind. Loopback by default so a test backend is never exposed by accident.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    bind: IpAddr,

    /// Wait before each answer: a fixed time ("50ms", "1s") or a uniform range ("1ms..200ms").
    #[arg(long, value_parser = parse_delay)]
    delay: Option<Delay>,

    /// Fraction of requests (0 to 1) answered `500 Internal Server Error`, at random.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fail_rate)]
    fail_rate: f64,

    /// Requests it serves at once at full speed: each request that finds more in progress waits
    /// an extra 20 ms per request beyond this (a backend whose queueing shows as latency).
    #[arg(long)]
    capacity: Option<usize>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_request_log();
    // The error chain on one line (e.g. "cannot listen on …: Address in use"), no backtrace.
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("test_server: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let root = std::fs::canonicalize(&args.root)
        .with_context(|| format!("cannot open root directory {}", args.root.display()))?;
    if !root.is_dir() {
        bail!("root {} is not a directory", root.display());
    }

    // Signal handlers are installed before the listening line is printed, so a signal sent by a
    // script the moment it sees that line is never lost.
    let signals = ShutdownSignals::install()?;

    let addr = SocketAddr::new(args.bind, args.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener
        .local_addr()
        .context("cannot read the bound address")?;
    // stdout is line-buffered, so this line reaches a pipe at once. A closed stdout (the
    // launching script went away) is no reason to stop serving, hence the ignored result.
    let _ = writeln!(
        io::stdout(),
        "test_server listening on {bound} root {}",
        root.display()
    );

    let site = Arc::new(Site {
        root: Arc::from(root),
        delay: args.delay,
        fail_rate: args.fail_rate,
        dice: Dice::seeded(),
        capacity: args.capacity,
        in_progress: AtomicUsize::new(0),
    });
    serve(listener, site, signals.wait()).await;
    Ok(())
}

/// Installs a stderr logger only when `RUST_LOG` is set: by default the server is silent, because
/// a per-request line would cost more than serving the request does during a benchmark.
fn init_request_log() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(io::stderr)
            .init();
    }
}

/// SIGINT and SIGTERM, registered up front.
struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<ShutdownSignals> {
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => info!("SIGINT received, shutting down"),
            _ = self.terminate.recv() => info!("SIGTERM received, shutting down"),
        }
    }
}

/// Accepts connections until `shutdown` completes, then drains the open ones.
async fn serve(
    listener: TcpListener,
    site: Arc<Site>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => spawn_connection(stream, peer, &site, &graceful),
                Err(err) => {
                    warn!(%err, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    // Graceful shutdown closes idle keep-alive connections at once and lets busy ones finish.
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("connections still open after {DRAIN_TIMEOUT:?}; exiting anyway");
    }
}

fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    site: &Arc<Site>,
    graceful: &GracefulShutdown,
) {
    // Responses are small and written in one go; Nagle would only add latency to them.
    if let Err(err) = stream.set_nodelay(true) {
        debug!(%peer, %err, "cannot set TCP_NODELAY");
    }
    let site = Arc::clone(site);
    let service = service_fn(move |request| {
        let site = Arc::clone(&site);
        async move { Ok::<_, Infallible>(site.respond(request, peer).await) }
    });
    let connection = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        // A client resetting its connection is routine for a test backend, not worth a warning.
        if let Err(err) = connection.await {
            debug!(%peer, %err, "connection ended with an error");
        }
    });
}

/// The directory being served.
struct Site {
    /// Canonical (absolute, symlink-free) root, so a resolved file can be checked to lie under it.
    /// Shared with the blocking tasks that read files.
    root: Arc<Path>,
    /// `--delay`: how long each answer waits (a slow backend, or an uneven one).
    delay: Option<Delay>,
    /// `--fail-rate`: the fraction of requests answered `500`.
    fail_rate: f64,
    dice: Dice,
    /// `--capacity`: requests served at once before each one is slowed.
    capacity: Option<usize>,
    /// Requests being answered now.
    in_progress: AtomicUsize,
}

/// One request counted in [`Site::in_progress`] until dropped.
struct InProgress<'a>(&'a AtomicUsize);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What each request beyond `--capacity` adds to the wait of one that finds it in progress.
const OVER_CAPACITY_DELAY: Duration = Duration::from_millis(20);

impl Site {
    async fn respond(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let method = request.method();
        let path = request.uri().path();
        let at_once = self.in_progress.fetch_add(1, Ordering::Relaxed) + 1;
        let _in_progress = InProgress(&self.in_progress);
        if let Some(excess) = self
            .capacity
            .and_then(|capacity| at_once.checked_sub(capacity))
        {
            let excess = u32::try_from(excess).unwrap_or(u32::MAX);
            tokio::time::sleep(OVER_CAPACITY_DELAY.saturating_mul(excess)).await;
        }
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay.sample(&self.dice)).await;
        }
        let response = if self.fail_rate > 0.0 && self.dice.unit() < self.fail_rate {
            error_response(StatusCode::INTERNAL_SERVER_ERROR)
        } else {
            self.respond_to(method, path).await
        };
        info!(
            %peer,
            %method,
            path,
            status = response.status().as_u16(),
            "request"
        );
        response
    }

    async fn respond_to(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        let is_head = match *method {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED);
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
                return response;
            }
        };
        let relative = match relative_file_path(path) {
            Ok(relative) => relative,
            Err(PathRejected) => return error_response(StatusCode::BAD_REQUEST),
        };
        // std::fs on tokio's blocking pool: one hop for the whole lookup and read, which is what
        // tokio::fs would do per call.
        let root = Arc::clone(&self.root);
        let loaded =
            tokio::task::spawn_blocking(move || load_file(&root, &relative, is_head)).await;
        match loaded {
            Ok(Ok(file)) => file_response(file.content_type, file.len, file.contents),
            Ok(Err(status)) => error_response(status),
            Err(err) => {
                warn!(%err, "file read task failed");
                error_response(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }
}

/// `--delay`: every answer waits between `min` and `max` (equal for a fixed delay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delay {
    min: Duration,
    max: Duration,
}

impl Delay {
    fn sample(&self, dice: &Dice) -> Duration {
        self.min + (self.max - self.min).mul_f64(dice.unit())
    }
}

/// `"50ms"` or `"1ms..200ms"`.
fn parse_delay(text: &str) -> Result<Delay, String> {
    let (min, max) = match text.split_once("..") {
        Some((min, max)) => (parse_duration(min)?, parse_duration(max)?),
        None => {
            let fixed = parse_duration(text)?;
            (fixed, fixed)
        }
    };
    if min > max {
        return Err(format!("`{text}`: the range runs backwards"));
    }
    Ok(Delay { min, max })
}

/// A whole number with a unit: `"250us"`, `"50ms"`, `"2s"`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit: write e.g. \"50ms\" or \"1ms..200ms\""))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number"))?;
    match unit {
        "us" => Ok(Duration::from_micros(number)),
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        _ => Err(format!(
            "`{unit}` in `{text}` is not a unit: use us, ms or s"
        )),
    }
}

fn parse_fail_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a fraction from 0 to 1 (e.g. 0.01)"
        )),
    }
}

/// A small shared random source (splitmix64): delays and failures need no cryptographic quality,
/// and a lock-free counter keeps the server free of extra dependencies and contention.
struct Dice(AtomicU64);

impl Dice {
    fn seeded() -> Dice {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        Dice(AtomicU64::new(
            nanos ^ (u64::from(std::process::id()) << 32),
        ))
    }

    /// A number in [0, 1).
    fn unit(&self) -> f64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A file ready to be sent.
struct LoadedFile {
    content_type: &'static str,
    /// The file's length, sent as Content-Length also for HEAD, where `contents` stays empty.
    len: u64,
    contents: Bytes,
}

/// Reads the regular file at `relative` under `root` (only its length for HEAD).
fn load_file(root: &Path, relative: &Path, is_head: bool) -> Result<LoadedFile, StatusCode> {
    let file = resolve_under_root(root, relative)?;
    let content_type = content_type_for(&file);
    if is_head {
        let len = std::fs::metadata(&file)
            .map_err(|err| status_for_io_error(&err))?
            .len();
        return Ok(LoadedFile {
            content_type,
            len,
            contents: Bytes::new(),
        });
    }
    let contents = std::fs::read(&file).map_err(|err| status_for_io_error(&err))?;
    Ok(LoadedFile {
        content_type,
        len: contents.len() as u64,
        contents: Bytes::from(contents),
    })
}

/// Maps a checked relative path to a regular file that really lies under the canonical `root`.
fn resolve_under_root(root: &Path, relative: &Path) -> Result<PathBuf, StatusCode> {
    let canonical =
        std::fs::canonicalize(root.join(relative)).map_err(|err| status_for_io_error(&err))?;
    // A symlink inside the root may point anywhere; only its target decides.
    if !canonical.starts_with(root) {
        return Err(StatusCode::NOT_FOUND);
    }
    let metadata = std::fs::metadata(&canonical).map_err(|err| status_for_io_error(&err))?;
    if !metadata.is_file() {
        // Directories are not listed and have no index file.
        return Err(StatusCode::NOT_FOUND);
    }
    Ok(canonical)
}

/// A request path that must not be turned into a file path.
#[derive(Debug, PartialEq, Eq)]
struct PathRejected;

/// Turns a URI path into a relative file path, refusing anything that could climb out of the
/// root. Checked after percent-decoding, so `%2e%2e` and `..%2f` are caught like `..`.
fn relative_file_path(uri_path: &str) -> Result<PathBuf, PathRejected> {
    let mut relative = PathBuf::new();
    for raw_segment in uri_path.split('/') {
        let segment = percent_decode(raw_segment).ok_or(PathRejected)?;
        if segment.is_empty() || segment == "." {
            continue;
        }
        if segment == ".." || segment.contains(['/', '\\', '\0']) {
            return Err(PathRejected);
        }
        relative.push(segment);
    }
    Ok(relative)
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let high = hex_value(*bytes.get(index + 1)?)?;
            let low = hex_value(*bytes.get(index + 2)?)?;
            decoded.push(high << 4 | low);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn content_type_for(file: &Path) -> &'static str {
    let extension = file
        .extension()
        .and_then(|extension| extension.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("txt") => "text/plain; charset=utf-8",
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

fn status_for_io_error(err: &io::Error) -> StatusCode {
    match err.kind() {
        // NotADirectory: a path like `/test.txt/x` goes through a file.
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => StatusCode::NOT_FOUND,
        io::ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn file_response(content_type: &'static str, len: u64, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    response
}

/// A short plain-text error, e.g. `404 Not Found`.
fn error_response(status: StatusCode) -> Response<Full<Bytes>> {
    let text = format!("{status}\n");
    let len = text.len() as u64;
    let mut response = file_response("text/plain; charset=utf-8", len, Bytes::from(text));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_encoded_paths_map_under_the_root() {
        assert_eq!(
            relative_file_path("/test.txt"),
            Ok(PathBuf::from("test.txt"))
        );
        assert_eq!(
            relative_file_path("/a//./b/c.txt"),
            Ok(PathBuf::from("a/b/c.txt"))
        );
        assert_eq!(
            relative_file_path("/hello%20world.txt"),
            Ok(PathBuf::from("hello world.txt"))
        );
        assert_eq!(relative_file_path("/"), Ok(PathBuf::new()));
    }

    #[test]
    fn climbing_or_smuggled_separators_are_rejected() {
        for path in [
            "/../Cargo.toml",
            "/%2e%2e/Cargo.toml",
            "/%2E%2E/Cargo.toml",
            "/a/../../Cargo.toml",
            "/..%2fCargo.toml",
            "/a%5c..%5cCargo.toml",
            "/a%00.txt",
            "/bad%2",
            "/bad%zz",
            "/%ff.txt",
        ] {
            assert_eq!(relative_file_path(path), Err(PathRejected), "{path}");
        }
    }

    #[test]
    fn delays_are_fixed_or_a_range() {
        let ms = Duration::from_millis;
        assert_eq!(
            parse_delay("50ms"),
            Ok(Delay {
                min: ms(50),
                max: ms(50)
            })
        );
        assert_eq!(
            parse_delay("1ms..200ms"),
            Ok(Delay {
                min: ms(1),
                max: ms(200)
            })
        );
        assert_eq!(
            parse_delay("500us..2s").map(|d| d.max),
            Ok(Duration::from_secs(2))
        );
        for bad in ["50", "ms", "5m", "200ms..1ms", "-1ms", "1.5ms"] {
            assert!(parse_delay(bad).is_err(), "{bad}");
        }
        let dice = Dice::seeded();
        let range = parse_delay("1ms..200ms").unwrap();
        for _ in 0..1000 {
            let delay = range.sample(&dice);
            assert!(delay >= ms(1) && delay <= ms(200), "{delay:?}");
        }
    }

    #[test]
    fn fail_rate_is_a_fraction_and_holds_on_average() {
        assert_eq!(parse_fail_rate("0.01"), Ok(0.01));
        for bad in ["1.5", "-0.1", "a", "NaN"] {
            assert!(parse_fail_rate(bad).is_err(), "{bad}");
        }
        let dice = Dice::seeded();
        let failed = (0..100_000).filter(|_| dice.unit() < 0.01).count();
        println!("fail rate 0.01: {failed} of 100000");
        assert!((700..1300).contains(&failed), "{failed}");
    }

    #[test]
    fn content_type_follows_the_extension() {
        assert_eq!(
            content_type_for(Path::new("a.TXT")),
            "text/plain; charset=utf-8"
        );
        assert_eq!(content_type_for(Path::new("a.json")), "application/json");
        assert_eq!(content_type_for(Path::new("a")), "application/octet-stream");
    }
}
