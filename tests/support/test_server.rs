//! The `test_server` binary as a child process: started on a port (0: ephemeral) with a root and
//! flags, its address read from the line it prints once listening, signalled like a real backend
//! (SIGSTOP, SIGTERM), and killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the binary may take to print its listening line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `test_server`; killed (and reaped) on drop.
pub struct TestServerProcess {
    child: Child,
    pub addr: SocketAddr,
    /// The line it printed once listening (`test_server listening on <addr> root <dir>`).
    pub listening_line: String,
}

impl TestServerProcess {
    /// Starts `binary` serving `root` on 127.0.0.1:`port` with `flags`. The binary's path is the
    /// caller's `env!("CARGO_BIN_EXE_test_server")`: only a test of the package that builds it
    /// knows it.
    pub fn start(binary: &str, root: &Path, port: u16, flags: &[&str]) -> TestServerProcess {
        let mut child = Command::new(binary)
            .args(["--port", &port.to_string(), "--root"])
            .arg(root)
            .args(flags)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {binary}: {error}"));
        let stdout = child.stdout.take().unwrap();
        let (line_tx, line_rx) = mpsc::channel();
        // The reader thread ends when the child's stdout closes, i.e. when the child exits.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let listening_line = line_rx
            .recv_timeout(STARTUP_TIMEOUT)
            .expect("test_server did not print its listening line");
        let addr = listening_line
            .strip_prefix("test_server listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {listening_line:?}"));
        TestServerProcess {
            child,
            addr,
            listening_line,
        }
    }

    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: a signal to our own child, not yet reaped (it is reaped only here or in `drop`).
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "kill({signal}) failed");
    }

    /// Sends SIGTERM and waits (at most 10 s) for the exit status; how long the exit took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        self.signal(libc::SIGTERM);
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

impl Drop for TestServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
