//! Running under systemd (issue 21): the real `juggler` binary speaks systemd's two protocols to
//! the test, which plays the service manager. A Unix datagram socket stands in for
//! `$NOTIFY_SOCKET`; listening sockets the test binds are passed as descriptors 3, 4, … with
//! `$LISTEN_FDS`, `$LISTEN_PID` and `$LISTEN_FDNAMES` (socket activation), which also keeps the
//! binary's compiled-in ports (8080, 9901) out of the test. systemd itself does not run.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use juggler_testkit::tls::https_client;
use juggler_testkit::{get, TempDir, TestCert};
use tokio::net::UnixDatagram;

const JUGGLER: &str = env!("CARGO_BIN_EXE_juggler");
/// The longest a process may take to start, report, or exit.
const WITHIN: Duration = Duration::from_secs(15);

/// The test's end of `$NOTIFY_SOCKET`: every message Juggler sent, in order.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(path: PathBuf) -> NotifySocket {
        NotifySocket {
            socket: UnixDatagram::bind(&path).unwrap(),
            path,
            seen: Vec::new(),
        }
    }

    /// The next message with the line `line` (`READY=1`); earlier ones are kept in `seen`.
    async fn until(&mut self, line: &str) -> String {
        let mut buf = vec![0u8; 4096];
        loop {
            let received = tokio::time::timeout(WITHIN, self.socket.recv(&mut buf)).await;
            let Ok(Ok(length)) = received else {
                panic!("no {line} within {WITHIN:?}; received {:?}", self.seen);
            };
            let message = String::from_utf8_lossy(&buf[..length]).into_owned();
            println!("notify: {message:?}");
            self.seen.push(message.clone());
            if message.lines().any(|sent| sent == line) {
                return message;
            }
        }
    }

    /// Whatever else arrives within `quiet`.
    async fn rest(&mut self, quiet: Duration) -> Vec<String> {
        let mut buf = vec![0u8; 4096];
        let mut rest = Vec::new();
        while let Ok(Ok(length)) = tokio::time::timeout(quiet, self.socket.recv(&mut buf)).await {
            let message = String::from_utf8_lossy(&buf[..length]).into_owned();
            println!("notify: {message:?}");
            self.seen.push(message.clone());
            rest.push(message);
        }
        rest
    }
}

/// The value of `KEY=` in one notification.
fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message.lines().find_map(|line| line.strip_prefix(key))
}

/// A `juggler` process started by the test, killed if still running when dropped.
struct Juggler {
    child: Child,
    log: PathBuf,
}

/// Starts `juggler args` in `dir` with `$NOTIFY_SOCKET` at `notify` and the sockets `passed` as
/// descriptors 3, 4, … named `names` (`http:admin`); its stderr goes to `dir/<log>`.
fn juggler(
    dir: &TempDir,
    notify: &Path,
    args: &[&str],
    (passed, names): (&[RawFd], &str),
    log: &str,
) -> Juggler {
    let mut command = match passed.is_empty() {
        true => Command::new(JUGGLER),
        false => {
            // $LISTEN_PID must be the pid of the process that uses the sockets: a shell's `$$`
            // is the pid its `exec` hands on to Juggler.
            let mut shell = Command::new("/bin/sh");
            shell
                .arg("-c")
                .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
                .arg(JUGGLER);
            shell
        }
    };
    let log = dir.file(log);
    command
        .args(args)
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", notify)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
    if !passed.is_empty() {
        command
            .env("LISTEN_FDS", passed.len().to_string())
            .env("LISTEN_FDNAMES", names);
        let mut fds = [-1; 4];
        fds[..passed.len()].copy_from_slice(passed);
        let count = passed.len();
        // SAFETY: the closure runs in the forked child before exec and makes only
        // async-signal-safe calls (fcntl, dup2) on descriptors this process owns; it allocates
        // nothing.
        unsafe {
            command.pre_exec(move || pass_as_3_and_on(&fds[..count]));
        }
    }
    Juggler {
        child: command.spawn().expect("cannot start juggler"),
        log,
    }
}

/// In the forked child: `fds` become descriptors 3, 4, … without close-on-exec.
fn pass_as_3_and_on(fds: &[RawFd]) -> io::Result<()> {
    // First out of the way of 3, 4, …, which one of them may already be; these copies close
    // on exec.
    let mut high = [-1; 4];
    for (copy, fd) in high.iter_mut().zip(fds) {
        // SAFETY: fcntl on a descriptor this process holds open.
        *copy = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100) };
        if *copy < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    for (index, copy) in high[..fds.len()].iter().enumerate() {
        // SAFETY: dup2 onto a fixed number; the copy it makes is inherited across exec.
        if unsafe { libc::dup2(*copy, 3 + index as RawFd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Juggler {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Its exit status, once it exits by itself within [`WITHIN`].
    async fn exited(&mut self) -> ExitStatus {
        for _ in 0..(WITHIN.as_millis() / 20) {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "juggler {} did not exit within {WITHIN:?}: {}",
            self.pid(),
            self.log()
        );
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Juggler {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A process the test did not start itself (the upgrade's new process, started by the reload
/// command), killed if still alive when dropped.
struct Adopted(libc::pid_t);

impl Adopted {
    /// Alive and not a zombie (it is not the test's child, so the test cannot reap it).
    fn alive(&self) -> bool {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.0)).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.trim().chars().next());
        matches!(state, Some(state) if state != 'Z')
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on a pid the test saw alive.
        unsafe { libc::kill(self.0, signal) };
    }

    async fn gone(&self) {
        for _ in 0..(WITHIN.as_millis() / 20) {
            if !self.alive() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("process {} did not exit within {WITHIN:?}", self.0);
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        if self.alive() {
            self.signal(libc::SIGKILL);
        }
    }
}

fn listening() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}

#[juggler_testkit::test]
async fn ready_comes_once_it_serves_and_an_upgrade_hands_the_main_pid_to_the_new_process() {
    let dir = TempDir::new("systemd-notify");
    let mut notify = NotifySocket::bind(dir.file("notify.sock"));
    // HTTPS on (the compiled config's `tls = "auto"` finds a certificate at the relative path it
    // names): a TLS client cannot move to the new process, which the test uses below.
    let cert = TestCert::generate();
    fs::create_dir(dir.file("juggler_config")).unwrap();
    fs::write(dir.file("juggler_config/server.crt"), &cert.cert_pem).unwrap();
    fs::write(dir.file("juggler_config/server.key"), &cert.key_pem).unwrap();
    let (http, http_addr) = listening();
    let (https, https_addr) = listening();
    let (admin, admin_addr) = listening();
    let control = dir.file("juggler.sock");
    let control = control.to_str().unwrap();
    let sockets = [http.as_raw_fd(), https.as_raw_fd(), admin.as_raw_fd()];
    let mut first = juggler(
        &dir,
        &notify.path,
        &["--control-socket", control],
        (&sockets, "http:https:admin"),
        "first.log",
    );

    let ready = notify.until("READY=1").await;
    // Serving by then, on the sockets the test bound (so Juggler bound none itself): the first
    // request after READY=1 is answered. No backend of the compiled config runs here, so any
    // HTTP status counts; the admin listener answers 200.
    let answer = get(http_addr, "/")
        .await
        .expect("no answer right after READY=1");
    println!("GET / right after READY=1: {}", answer.status);
    let metrics = get(admin_addr, "/metrics").await.unwrap();
    assert_eq!(metrics.status, 200);
    assert_eq!(
        field(&ready, "STATUS="),
        Some(format!("serving http {http_addr}, https {https_addr}, admin {admin_addr}").as_str()),
        "{ready:?}"
    );
    assert_eq!(
        field(&ready, "MAINPID="),
        None,
        "the started process is the main one"
    );

    // An idle TLS keep-alive client holds the old process past the takeover (its TLS session
    // cannot move): the old process answers its next request itself, with `Connection: close`,
    // and exits only after that, so the test can see where READY=1 falls.
    let mut held = https_client(https_addr, &cert).await;
    let before = held.get("/").await.unwrap();
    assert!(!before.headers.contains_key("connection"), "{before:?}");

    // A reload whose new process cannot start (its certificate is garbage) fails, and the old
    // process tells the manager it serves on as the main process.
    fs::write(dir.file("juggler_config/server.crt"), "not a certificate\n").unwrap();
    let mut failed = juggler(
        &dir,
        &notify.path,
        &["--upgrade", "--detach", "--control-socket", control],
        (&[], ""),
        "failed-reload.log",
    );
    notify.until("RELOADING=1").await;
    let serving_on = notify.until("READY=1").await;
    assert_eq!(
        field(&serving_on, "MAINPID="),
        Some(first.pid().to_string().as_str()),
        "{serving_on:?}"
    );
    assert!(
        field(&serving_on, "STATUS=")
            .is_some_and(|status| status.ends_with("(an upgrade was abandoned)")),
        "{serving_on:?}"
    );
    let failed_status = failed.exited().await;
    println!("the failed reload: {failed_status}\n{}", failed.log());
    assert!(!failed_status.success());
    assert!(failed.log().contains("server.crt"), "{}", failed.log());
    assert!(first.running());
    // Once: the old process is not left probing its own control socket and abandoning that too.
    let after_failure = notify.rest(Duration::from_millis(300)).await;
    assert!(after_failure.is_empty(), "{after_failure:?}");
    fs::write(dir.file("juggler_config/server.crt"), &cert.cert_pem).unwrap();

    // The upgrade as the unit's ExecReload runs it: the command exits once the new process
    // serves, and the new process is another one.
    let mut reload = juggler(
        &dir,
        &notify.path,
        &["--upgrade", "--detach", "--control-socket", control],
        (&[], ""),
        "reload.log",
    );
    let reloading = notify.until("RELOADING=1").await;
    assert!(
        field(&reloading, "STATUS=").is_some_and(
            |status| status.starts_with("upgrade: handing over to a new process (pid ")
        ),
        "{reloading:?}"
    );
    assert!(field(&reloading, "MONOTONIC_USEC=").is_some());
    let taken = notify.until("READY=1").await;
    let main_pid: libc::pid_t = field(&taken, "MAINPID=")
        .expect("the new process names itself the main one")
        .parse()
        .unwrap();
    let successor = Adopted(main_pid);
    assert!(successor.alive());
    assert_ne!(
        main_pid as u32,
        reload.pid(),
        "systemd refuses its reload command as the main process"
    );
    assert!(
        first.running(),
        "the old process exited before the new one's MAINPID= and READY=1"
    );
    let first_pid = first.pid();
    assert_ne!(main_pid as u32, first_pid);
    assert!(
        field(&taken, "STATUS=")
            .is_some_and(|status| status.ends_with(&format!("taking over from pid {first_pid}"))),
        "{taken:?}"
    );
    let reloaded = reload.exited().await;
    assert!(reloaded.success(), "{reloaded}: {}", reload.log());

    // The old process answers the held client's next request and exits, leaving the service
    // to the new one.
    let last = held.get("/").await.unwrap();
    println!(
        "the held TLS client's next request: {} {:?}",
        last.status, last.headers
    );
    assert_eq!(
        last.headers.get("connection").map(|value| value.as_bytes()),
        Some(&b"close"[..]),
        "answered by the old process, which closes"
    );
    let old_exit = first.exited().await;
    assert!(old_exit.success(), "{old_exit}: {}", first.log());
    let after = notify.rest(Duration::from_millis(300)).await;
    assert!(
        after.iter().all(|message| !message.contains("STOPPING=1")),
        "the old process must not say STOPPING=1 for a service it handed over: {after:?}"
    );
    assert!(get(http_addr, "/").await.is_ok());
    assert_eq!(get(admin_addr, "/metrics").await.unwrap().status, 200);

    // Stopping (systemctl stop sends SIGTERM): STOPPING=1 while it drains.
    successor.signal(libc::SIGTERM);
    let stopping = notify.until("STOPPING=1").await;
    assert!(field(&stopping, "STATUS=").is_some_and(|status| status.starts_with("draining")));
    successor.gone().await;
    println!("notifications in order: {:#?}", notify.seen);
}

/// Starts Juggler with `passed` and returns its stderr once it has failed to start.
async fn start_up_error(label: &str, passed: (&[RawFd], &str)) -> String {
    let dir = TempDir::new(label);
    let notify = NotifySocket::bind(dir.file("notify.sock"));
    let mut process = juggler(&dir, &notify.path, &[], passed, "juggler.log");
    let status = process.exited().await;
    let log = process.log();
    println!("{label}: {status}\n{log}");
    assert_eq!(status.code(), Some(1), "{log}");
    log
}

#[juggler_testkit::test]
async fn passed_sockets_that_fit_no_listener_are_a_start_up_error_naming_them() {
    let (http, _) = listening();
    let (admin, _) = listening();
    let (https, https_addr) = listening();
    // HTTPS is off in a directory without a certificate: nothing claims the socket named https.
    let all_three = [http.as_raw_fd(), admin.as_raw_fd(), https.as_raw_fd()];
    let unclaimed = start_up_error("systemd-unclaimed", (&all_three, "http:admin:https")).await;
    assert!(
        unclaimed.contains(&format!(
            "the socket passed as https on {https_addr} stands for no listener"
        )),
        "{unclaimed}"
    );

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let not_tcp = start_up_error("systemd-udp", (&[udp.as_raw_fd()], "http")).await;
    assert!(
        not_tcp.contains("descriptor 3 (http) is not a listening TCP socket"),
        "{not_tcp}"
    );

    let miscounted = start_up_error("systemd-names", (&[http.as_raw_fd()], "http:admin")).await;
    assert!(
        miscounted.contains("LISTEN_FDNAMES names 2 sockets, LISTEN_FDS passes 1"),
        "{miscounted}"
    );
}
