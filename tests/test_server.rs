//! Integration tests of the `test_server` binary: the real executable on 127.0.0.1, port 0, talked
//! to with a hyper client and, where the exact bytes on the wire matter (keep-alive, traversal
//! paths a client library might normalise), with a raw `TcpStream`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use juggler_testkit::wire::{RawResponse, Wire};
use juggler_testkit::{Answer, Client, TempDir, TestServerProcess};

/// Written outside the served root; no response may ever contain it.
const SECRET: &str = "SECRET-OUTSIDE-THE-ROOT";

/// A directory tree in a temporary directory, removed on drop:
/// `base/Cargo.toml` (the secret, outside the root) and `base/root/…` (what is served).
struct TestRoot {
    root: PathBuf,
    _base: TempDir,
}

impl TestRoot {
    fn create() -> TestRoot {
        let base = TempDir::new("test-server");
        let root = base.file("root");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(base.file("Cargo.toml"), format!("{SECRET}\n")).unwrap();
        std::fs::write(root.join("test.txt"), "server 1\n").unwrap();
        std::fs::write(root.join("page.html"), "<p>hi</p>\n").unwrap();
        std::fs::write(root.join("data.json"), "{}\n").unwrap();
        std::fs::write(root.join("blob.bin"), [0u8, 1, 2]).unwrap();
        std::fs::write(root.join("hello world.txt"), "spaced\n").unwrap();
        // A symlink inside the root that points outside it must not be followed out.
        std::os::unix::fs::symlink(base.file("Cargo.toml"), root.join("escape.txt")).unwrap();
        TestRoot { root, _base: base }
    }
}

/// `test_server` serving a fresh [`TestRoot`], which lives as long as the server.
fn serve_test_root() -> (TestServerProcess, TestRoot) {
    let tree = TestRoot::create();
    (RunningServer::start(&tree.root), tree)
}

/// The `test_server` binary running as a child process, its listening line checked.
struct RunningServer;

impl RunningServer {
    fn start(root: &Path) -> TestServerProcess {
        Self::start_with(root, &[])
    }

    /// With extra flags (`--delay`, `--fail-rate`).
    fn start_with(root: &Path, flags: &[&str]) -> TestServerProcess {
        let server = TestServerProcess::start(env!("CARGO_BIN_EXE_test_server"), root, 0, flags);
        assert_eq!(
            parse_listening_line(&server.listening_line, root),
            server.addr
        );
        println!("started: {}", server.listening_line);
        server
    }
}

/// `test_server listening on <addr> root <dir>` → `<addr>`, checking the rest of the line.
fn parse_listening_line(line: &str, root: &Path) -> SocketAddr {
    let rest = line
        .strip_prefix("test_server listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    let (addr, dir) = rest.split_once(" root ").unwrap();
    assert_eq!(Path::new(dir), std::fs::canonicalize(root).unwrap());
    let addr: SocketAddr = addr.parse().unwrap();
    assert!(
        addr.ip().is_loopback(),
        "default bind must be loopback, got {addr}"
    );
    assert_ne!(addr.port(), 0);
    addr
}

/// One request over a fresh connection with hyper's HTTP/1 client.
async fn fetch(addr: SocketAddr, method: Method, path: &str) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    Client::connect(addr).await.send(request).await.unwrap()
}

/// The value of header `name`, which must be there.
fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
}

/// Writes `request_target` verbatim in a GET and reads one response (with a `Content-Length`)
/// from the same connection.
async fn raw_get(connection: &mut Wire, request_target: &str) -> RawResponse {
    let request = format!("GET {request_target} HTTP/1.1\r\nHost: test\r\n\r\n");
    connection.send(request.as_bytes()).await;
    let response = connection.read_response(false).await;
    assert!(
        response.header("content-length").is_some(),
        "no Content-Length"
    );
    response
}

#[juggler_testkit::test(current_thread)]
async fn shipped_roots_serve_their_test_file() {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    for n in 1..=3 {
        let server = RunningServer::start(&manifest_dir.join(format!("test_server_root_{n}")));
        let response = fetch(server.addr, Method::GET, "/test.txt").await;
        println!("root {n}: {} body {:?}", response.status, response.body);
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.body, format!("server {n}\n"));
    }
}

#[juggler_testkit::test(current_thread)]
async fn get_and_head_report_length_and_content_type() {
    let (server, _tree) = serve_test_root();

    let get = fetch(server.addr, Method::GET, "/test.txt").await;
    println!(
        "GET /test.txt: {} {:?} {:?}",
        get.status, get.headers, get.body
    );
    assert_eq!(get.status, StatusCode::OK);
    assert_eq!(get.body, "server 1\n");
    assert_eq!(header(&get, "content-length"), "9");
    assert!(header(&get, "content-type").starts_with("text/plain"));

    let head = fetch(server.addr, Method::HEAD, "/test.txt").await;
    println!(
        "HEAD /test.txt: {} {:?} body {} bytes",
        head.status,
        head.headers,
        head.body.len()
    );
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(header(&head, "content-length"), "9");
    assert!(header(&head, "content-type").starts_with("text/plain"));
    assert!(head.body.is_empty());

    for (path, content_type, body) in [
        ("/page.html", "text/html", &b"<p>hi</p>\n"[..]),
        ("/data.json", "application/json", b"{}\n"),
        ("/blob.bin", "application/octet-stream", &[0, 1, 2]),
        ("/hello%20world.txt", "text/plain", b"spaced\n"),
        ("/test.txt?query=ignored", "text/plain", b"server 1\n"),
    ] {
        let response = fetch(server.addr, Method::GET, path).await;
        println!(
            "GET {path}: {} {}",
            response.status,
            header(&response, "content-type")
        );
        assert_eq!(response.status, StatusCode::OK, "{path}");
        assert!(
            header(&response, "content-type").starts_with(content_type),
            "{path}"
        );
        assert_eq!(response.body, body, "{path}");
    }
}

#[juggler_testkit::test(current_thread)]
async fn keep_alive_serves_two_requests_on_one_connection() {
    let (server, _tree) = serve_test_root();
    let mut connection = Wire::connect(server.addr).await;
    let local = connection.stream.local_addr().unwrap();
    for round in 1..=2 {
        let response = raw_get(&mut connection, "/test.txt").await;
        println!(
            "request {round} on connection {local}: {} length {} body {:?}",
            response.status,
            response.header("content-length").unwrap(),
            String::from_utf8_lossy(&response.body)
        );
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"server 1\n");
    }
}

#[juggler_testkit::test(current_thread)]
async fn missing_files_and_directories_are_404() {
    let (server, _tree) = serve_test_root();
    for path in [
        "/missing.txt",
        "/sub",
        "/sub/",
        "/",
        "/test.txt/inner",
        "/nope/test.txt",
    ] {
        let response = fetch(server.addr, Method::GET, path).await;
        println!("GET {path}: {}", response.status);
        assert_eq!(response.status, StatusCode::NOT_FOUND, "{path}");
    }
}

#[juggler_testkit::test(current_thread)]
async fn path_traversal_never_reads_outside_the_root() {
    let (server, _tree) = serve_test_root();
    // Each of these, resolved naively, names `base/Cargo.toml` (the secret) or a symlink to it.
    for target in [
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/%2E%2E/Cargo.toml",
        "/a/../../Cargo.toml",
        "/..%2fCargo.toml",
        "/a/..%2f..%2fCargo.toml",
        "/a%2f..%2f..%2fCargo.toml",
        "/..%5cCargo.toml",
        "/escape.txt",
    ] {
        // A fresh connection each time: a rejected request must not depend on earlier ones.
        let mut connection = Wire::connect(server.addr).await;
        let response = raw_get(&mut connection, target).await;
        let body = String::from_utf8_lossy(&response.body);
        println!("GET {target}: {} {:?}", response.status, body.trim_end());
        assert!(
            response.status == 400 || response.status == 404,
            "{target} answered {}",
            response.status
        );
        assert!(
            !body.contains(SECRET),
            "{target} leaked the file outside the root"
        );
    }
    // The server is still healthy after the attempts.
    let response = fetch(server.addr, Method::GET, "/test.txt").await;
    assert_eq!(response.status, StatusCode::OK);
}

#[juggler_testkit::test(current_thread)]
async fn other_methods_get_405_with_allow() {
    let (server, _tree) = serve_test_root();
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
        let response = fetch(server.addr, method.clone(), "/test.txt").await;
        println!(
            "{method} /test.txt: {} allow {:?}",
            response.status,
            response.headers.get("allow")
        );
        assert_eq!(response.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(header(&response, "allow"), "GET, HEAD");
    }
}

#[juggler_testkit::test(current_thread)]
async fn sigterm_exits_cleanly_with_an_idle_connection_open() {
    let (mut server, _tree) = serve_test_root();
    // An idle keep-alive connection must not hold the shutdown up.
    let mut connection = Wire::connect(server.addr).await;
    assert_eq!(raw_get(&mut connection, "/test.txt").await.status, 200);

    let (status, took) = server.terminate();
    println!("exit after SIGTERM: {status} in {took:?}");
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");

    let (rest, closed) = connection.rest(Duration::from_secs(5)).await;
    assert!(
        rest.is_empty(),
        "idle connection got bytes after shutdown: {rest:?}"
    );
    assert!(closed, "idle connection left open after shutdown");
}

#[juggler_testkit::test(current_thread)]
async fn delay_and_fail_rate_make_an_uneven_backend() {
    let tree = TestRoot::create();
    let slow = RunningServer::start_with(&tree.root, &["--delay", "150ms"]);
    let started = Instant::now();
    let answer = fetch(slow.addr, Method::GET, "/test.txt").await;
    let took = started.elapsed();
    println!("--delay 150ms: {} in {took:?}", answer.status);
    assert_eq!(answer.status, StatusCode::OK);
    assert!(took >= Duration::from_millis(150), "{took:?}");

    let ranged = RunningServer::start_with(&tree.root, &["--delay", "1ms..40ms"]);
    let started = Instant::now();
    for _ in 0..10 {
        let answer = fetch(ranged.addr, Method::GET, "/test.txt").await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let took = started.elapsed();
    println!("--delay 1ms..40ms: 10 requests in {took:?}");
    assert!(took >= Duration::from_millis(10), "{took:?}");

    let failing = RunningServer::start_with(&tree.root, &["--fail-rate", "1"]);
    let answer = fetch(failing.addr, Method::GET, "/test.txt").await;
    println!("--fail-rate 1: {}", answer.status);
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);

    let refused = Command::new(env!("CARGO_BIN_EXE_test_server"))
        .args(["--port", "0", "--root"])
        .arg(&tree.root)
        .args(["--fail-rate", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    println!("--fail-rate 2: {stderr}");
    assert!(!refused.status.success());
    assert!(stderr.contains("not a fraction"), "{stderr}");
}
