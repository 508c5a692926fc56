//! A real etcd (Debian's `etcd-server`, `/usr/bin/etcd`) for fleet tests: a single member on two
//! free loopback ports with its data in a temporary directory, stopped (and its data removed)
//! when dropped, also when a test panics. [`Etcd::stop`] and [`Etcd::restart`] take it away and
//! bring it back on the same ports and data, as an outage would.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::certs::TempDir;

/// Where the binary is; `ETCD` overrides it.
fn binary() -> String {
    std::env::var("ETCD").unwrap_or_else(|_| "/usr/bin/etcd".to_owned())
}

pub struct Etcd {
    child: Option<Child>,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
}

/// A port nobody listens on right now (the kernel's pick for port 0).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().unwrap().port()
}

impl Etcd {
    /// Starts etcd and waits (up to 20 s) until it answers `/health`.
    pub fn start() -> Etcd {
        let mut etcd = Etcd {
            child: None,
            dir: TempDir::new("etcd"),
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.restart();
        etcd
    }

    /// The client endpoint, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// A path in etcd's temporary directory, for a test's own files (an instance's control
    /// socket) that go when the test does.
    pub fn file(&self, name: &str) -> std::path::PathBuf {
        self.dir.file(name)
    }

    /// Kills etcd (SIGKILL): the cluster is gone until [`Etcd::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data directory, and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.file("etcd.log")).unwrap();
        let child = Command::new(binary())
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.dir.file("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {} (apt-get install etcd-server): {error}",
                    binary()
                )
            });
        self.child = Some(child);
        let started = Instant::now();
        while !self.healthy() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "etcd did not become healthy within 20 s: {}",
                std::fs::read_to_string(self.dir.file("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `/health` says so.
    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = b"GET /health HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n";
        if stream.write_all(request).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
