//! Integration tests of the `test_server` binary: the real executable on 127.0.0.1, port 0, talked
//! to with a hyper client and, where the exact bytes on the wire matter (keep-alive, traversal
//! paths a client library might normalise), with a raw `TcpStream`.

use std::io::{BufRead, BufReader as StdBufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Upper bound for any single test; a hang is a failure, not a stuck CI job.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the binary may take to print its listening line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Written outside the served root; no response may ever contain it.
const SECRET: &str = "SECRET-OUTSIDE-THE-ROOT";

/// A directory tree under the system temp dir, removed on drop:
/// `base/Cargo.toml` (the secret, outside the root) and `base/root/…` (what is served).
struct TestRoot {
    base: PathBuf,
    root: PathBuf,
}

impl TestRoot {
    fn create() -> TestRoot {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let base = std::env::temp_dir().join(format!(
            "juggler-test-server-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(base.join("Cargo.toml"), format!("{SECRET}\n")).unwrap();
        std::fs::write(root.join("test.txt"), "server 1\n").unwrap();
        std::fs::write(root.join("page.html"), "<p>hi</p>\n").unwrap();
        std::fs::write(root.join("data.json"), "{}\n").unwrap();
        std::fs::write(root.join("blob.bin"), [0u8, 1, 2]).unwrap();
        std::fs::write(root.join("hello world.txt"), "spaced\n").unwrap();
        // A symlink inside the root that points outside it must not be followed out.
        std::os::unix::fs::symlink(base.join("Cargo.toml"), root.join("escape.txt")).unwrap();
        TestRoot { base, root }
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// The `test_server` binary running as a child process; killed on drop.
struct RunningServer {
    child: Child,
    addr: SocketAddr,
}

impl RunningServer {
    fn start(root: &Path) -> RunningServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_test_server"))
            .args(["--port", "0", "--root"])
            .arg(root)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (line_tx, line_rx) = mpsc::channel();
        // The reader thread ends when the child's stdout closes, i.e. when the child exits.
        std::thread::spawn(move || {
            for line in StdBufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = RunningServer {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let line = line_rx
            .recv_timeout(STARTUP_TIMEOUT)
            .expect("test_server did not print its listening line");
        server.addr = parse_listening_line(&line, root);
        println!("started: {line}");
        server
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    fn terminate(&mut self) -> (ExitStatus, Duration) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: sending a signal to our own child process, whose pid we still own (not reaped).
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "kill(SIGTERM) failed");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no exit 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// A response read by the hyper client.
struct Fetched {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Fetched {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("missing header {name}"))
            .to_str()
            .unwrap()
    }
}

/// One request over a fresh connection with hyper's HTTP/1 client.
async fn fetch(addr: SocketAddr, method: Method, path: &str) -> Fetched {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    drop(sender);
    driver.abort();
    Fetched {
        status,
        headers,
        body,
    }
}

/// A response read off a raw connection.
struct RawResponse {
    status: u16,
    content_length: usize,
    body: Vec<u8>,
}

/// Writes `request_target` verbatim in a GET and reads one response from the same connection.
async fn raw_get(connection: &mut BufReader<TcpStream>, request_target: &str) -> RawResponse {
    let request = format!("GET {request_target} HTTP/1.1\r\nHost: test\r\n\r\n");
    connection
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .unwrap();
    let mut status_line = String::new();
    connection.read_line(&mut status_line).await.unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"))
        .parse()
        .unwrap();
    let mut content_length = None;
    loop {
        let mut line = String::new();
        connection.read_line(&mut line).await.unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.trim().parse().unwrap());
        }
    }
    let content_length = content_length.expect("response without Content-Length");
    let mut body = vec![0; content_length];
    connection.read_exact(&mut body).await.unwrap();
    RawResponse {
        status,
        content_length,
        body,
    }
}

async fn raw_connect(addr: SocketAddr) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(addr).await.unwrap())
}

#[tokio::test]
async fn shipped_roots_serve_their_test_file() {
    timeout(TEST_TIMEOUT, async {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        for n in 1..=3 {
            let server = RunningServer::start(&manifest_dir.join(format!("test_server_root_{n}")));
            let response = fetch(server.addr, Method::GET, "/test.txt").await;
            println!("root {n}: {} body {:?}", response.status, response.body);
            assert_eq!(response.status, StatusCode::OK);
            assert_eq!(response.body, format!("server {n}\n"));
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn get_and_head_report_length_and_content_type() {
    timeout(TEST_TIMEOUT, async {
        let tree = TestRoot::create();
        let server = RunningServer::start(&tree.root);

        let get = fetch(server.addr, Method::GET, "/test.txt").await;
        println!(
            "GET /test.txt: {} {:?} {:?}",
            get.status, get.headers, get.body
        );
        assert_eq!(get.status, StatusCode::OK);
        assert_eq!(get.body, "server 1\n");
        assert_eq!(get.header("content-length"), "9");
        assert!(get.header("content-type").starts_with("text/plain"));

        let head = fetch(server.addr, Method::HEAD, "/test.txt").await;
        println!(
            "HEAD /test.txt: {} {:?} body {} bytes",
            head.status,
            head.headers,
            head.body.len()
        );
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.header("content-length"), "9");
        assert!(head.header("content-type").starts_with("text/plain"));
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
                response.header("content-type")
            );
            assert_eq!(response.status, StatusCode::OK, "{path}");
            assert!(
                response.header("content-type").starts_with(content_type),
                "{path}"
            );
            assert_eq!(response.body, body, "{path}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn keep_alive_serves_two_requests_on_one_connection() {
    timeout(TEST_TIMEOUT, async {
        let tree = TestRoot::create();
        let server = RunningServer::start(&tree.root);
        let mut connection = raw_connect(server.addr).await;
        let local = connection.get_ref().local_addr().unwrap();
        for round in 1..=2 {
            let response = raw_get(&mut connection, "/test.txt").await;
            println!(
                "request {round} on connection {local}: {} length {} body {:?}",
                response.status,
                response.content_length,
                String::from_utf8_lossy(&response.body)
            );
            assert_eq!(response.status, 200);
            assert_eq!(response.body, b"server 1\n");
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn missing_files_and_directories_are_404() {
    timeout(TEST_TIMEOUT, async {
        let tree = TestRoot::create();
        let server = RunningServer::start(&tree.root);
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
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn path_traversal_never_reads_outside_the_root() {
    timeout(TEST_TIMEOUT, async {
        let tree = TestRoot::create();
        let server = RunningServer::start(&tree.root);
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
            let mut connection = raw_connect(server.addr).await;
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
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn other_methods_get_405_with_allow() {
    timeout(TEST_TIMEOUT, async {
        let tree = TestRoot::create();
        let server = RunningServer::start(&tree.root);
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            let response = fetch(server.addr, method.clone(), "/test.txt").await;
            println!(
                "{method} /test.txt: {} allow {:?}",
                response.status,
                response.headers.get("allow")
            );
            assert_eq!(response.status, StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(response.header("allow"), "GET, HEAD");
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn sigterm_exits_cleanly_with_an_idle_connection_open() {
    timeout(TEST_TIMEOUT, async {
        let tree = TestRoot::create();
        let mut server = RunningServer::start(&tree.root);
        // An idle keep-alive connection must not hold the shutdown up.
        let mut connection = raw_connect(server.addr).await;
        assert_eq!(raw_get(&mut connection, "/test.txt").await.status, 200);

        let (status, took) = server.terminate();
        println!("exit after SIGTERM: {status} in {took:?}");
        assert!(status.success(), "exit status {status}");
        assert!(took < Duration::from_secs(3), "shutdown took {took:?}");

        let mut rest = Vec::new();
        let read = connection.read_to_end(&mut rest).await.unwrap_or(0);
        assert_eq!(
            read, 0,
            "idle connection got unexpected bytes after shutdown"
        );
    })
    .await
    .unwrap();
}
