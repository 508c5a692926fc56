//! The service manager's two channels into a daemon, as systemd defines them, so that Juggler runs
//! as a `Type=notify` service with socket activation:
//! - **Notifications** (`sd_notify(3)`): newline-separated `KEY=value` lines in one datagram to the
//!   Unix socket named by `$NOTIFY_SOCKET` (a path, or an abstract name after `@`). Juggler says
//!   `READY=1` once it serves, `RELOADING=1` when a successor starts taking over, `MAINPID=` +
//!   `READY=1` from the successor (so the manager follows the new process), `STOPPING=1` when it
//!   drains, and a `STATUS=` line at each of these. Without `$NOTIFY_SOCKET` nothing is sent.
//! - **Socket activation** (`sd_listen_fds(3)`): listening sockets passed as descriptors 3, 4, …
//!   with `$LISTEN_FDS` (how many), `$LISTEN_PID` (for which process: a child that inherited the
//!   variables ignores them) and `$LISTEN_FDNAMES` (colon-separated names). A socket named `http`,
//!   `https` or `admin` stands in for that listener; an unnamed one for the listener configured
//!   on its address. The variables are removed once read, as `sd_listen_fds` does.
//!
//! Both protocols are a few lines, written here instead of linking libsystemd or taking a crate
//! for them; `listenfd` does the one step safe Rust cannot take, owning a descriptor known only by
//! its number (it checks it is a TCP socket and marks it close-on-exec).

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::sync::{Mutex, OnceLock};

use tokio::net::TcpListener;

/// The names a passed socket may carry (`FileDescriptorName=` in a `.socket` unit).
const LISTENER_NAMES: [&str; 3] = ["http", "https", "admin"];

// ---------------------------------------------------------------------------------------------
// Notifications

/// The manager's notification socket, opened on first use; `None` when not run by one.
fn notifier() -> Option<&'static (UnixDatagram, UnixAddr)> {
    static NOTIFIER: OnceLock<Option<(UnixDatagram, UnixAddr)>> = OnceLock::new();
    NOTIFIER
        .get_or_init(|| {
            let path = std::env::var_os("NOTIFY_SOCKET")?;
            let address = match path.as_bytes() {
                [b'@', name @ ..] => UnixAddr::from_abstract_name(name),
                _ => UnixAddr::from_pathname(&path),
            };
            let opened = address.and_then(|address| Ok((UnixDatagram::unbound()?, address)));
            match opened {
                Ok(notifier) => Some(notifier),
                Err(error) => {
                    tracing::warn!(%error, socket = ?path, "cannot use $NOTIFY_SOCKET");
                    None
                }
            }
        })
        .as_ref()
}

/// Sends `lines` (`KEY=value`, one per line) to the service manager, if there is one. A manager
/// that cannot be told is logged, never fatal: serving matters more than reporting it.
fn notify(lines: &str) {
    let Some((socket, address)) = notifier() else {
        return;
    };
    // Blocking, as libsystemd's sd_notify: the manager reads its socket at once, and a dropped
    // READY=1 would leave the unit starting until its timeout.
    if let Err(error) = socket.send_to_addr(lines.as_bytes(), address) {
        tracing::warn!(%error, "cannot notify the service manager");
    }
}

/// One `STATUS=` line: the manager shows it (`systemctl status`) until the next one.
fn status_line(status: &str) -> String {
    format!("STATUS={}", status.replace('\n', " "))
}

/// Serving: the listeners accept and the pools are open or opening.
pub fn ready(status: &str) {
    notify(&format!("READY=1\n{}", status_line(status)));
}

/// Serving, and this process is now the service's main process: sent by the successor of an
/// upgrade before its predecessor can exit, so the manager follows it instead of taking the
/// predecessor's exit for the service's end (the unit needs `NotifyAccess=all`). Also sent by a
/// predecessor that takes the service back from a successor that went away.
pub fn ready_as_main(status: &str) {
    notify(&format!(
        "MAINPID={}\nREADY=1\n{}",
        std::process::id(),
        status_line(status)
    ));
}

/// A successor has started taking over: the service is reloading until it says `READY=1`.
pub fn reloading(status: &str) {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    // MONOTONIC_USEC dates the reload, as the protocol asks of RELOADING=1 since systemd 253.
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={usec}\n{}",
        status_line(status)
    ));
}

/// Shutting down: finishing what was accepted. Never sent by a process that handed over to a
/// successor: with `NotifyAccess=all` it would stop the service the successor now runs.
pub fn stopping(status: &str) {
    notify(&format!("STOPPING=1\n{}", status_line(status)));
}

/// A new `STATUS=` text only.
pub fn status(status: &str) {
    notify(&status_line(status));
}

// ---------------------------------------------------------------------------------------------
// Socket activation

/// Why the passed sockets cannot be used; Juggler does not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("socket activation: {variable}={value:?} is not a number")]
    NotANumber {
        variable: &'static str,
        value: String,
    },
    #[error("socket activation: LISTEN_FDNAMES names {names} sockets, LISTEN_FDS passes {count}")]
    NameCount { names: usize, count: usize },
    #[error("socket activation: the socket passed as descriptor {fd} ({name}) is not a listening TCP socket: {reason}")]
    NotListening {
        fd: usize,
        name: String,
        reason: String,
    },
    #[error("socket activation: the socket passed as {name} on {address} stands for no listener of this Juggler ({wanted}); name it http, https or admin (FileDescriptorName=) for a listener that is on")]
    Unclaimed {
        name: String,
        address: SocketAddr,
        wanted: String,
    },
}

/// A socket the manager passed, until the listener it stands for claims it.
#[derive(Debug)]
struct Passed {
    /// Its name if it is one of [`LISTENER_NAMES`], else matched by address.
    name: Option<String>,
    /// How the error messages call it: its name, or "descriptor N".
    label: String,
    listener: std::net::TcpListener,
    address: SocketAddr,
}

/// The listening sockets passed to this process.
#[derive(Debug, Default)]
pub struct PassedSockets {
    sockets: Vec<Passed>,
    /// The listeners asked for so far (`http 0.0.0.0:8080`), for the error about a socket none
    /// of them claimed.
    wanted: Vec<String>,
}

impl PassedSockets {
    /// Takes the sockets passed to this process (none without `$LISTEN_FDS`, or when
    /// `$LISTEN_PID` names another) and removes the three variables from the environment.
    ///
    /// Changing the environment races with threads reading it: call this before the runtime
    /// starts its threads.
    pub fn from_env() -> Result<PassedSockets, ActivationError> {
        let count = std::env::var_os("LISTEN_FDS");
        let pid = std::env::var_os("LISTEN_PID");
        let names = std::env::var_os("LISTEN_FDNAMES");
        let Some(count) = count else {
            return Ok(PassedSockets::default());
        };
        let own_pid = std::process::id() as usize;
        let for_us = pid.is_some_and(|pid| number("LISTEN_PID", &pid).ok() == Some(own_pid));
        if !for_us {
            // Meant for another process (whose child this is): not ours to use, nor to pass on.
            for variable in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
                std::env::remove_var(variable);
            }
            return Ok(PassedSockets::default());
        }
        let count = number("LISTEN_FDS", &count)?;
        // listenfd reads LISTEN_FDS and LISTEN_PID again (and removes them) to own the descriptors.
        let mut fds = listenfd::ListenFd::from_env();
        std::env::remove_var("LISTEN_FDNAMES");
        let names: Vec<String> = match names {
            Some(names) if !names.is_empty() => names
                .to_string_lossy()
                .split(':')
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        if !names.is_empty() && names.len() != count {
            return Err(ActivationError::NameCount {
                names: names.len(),
                count,
            });
        }
        let mut sockets = Vec::with_capacity(count);
        for index in 0..count {
            let fd = 3 + index;
            let name = names.get(index).cloned();
            let label = name.clone().unwrap_or_else(|| format!("descriptor {fd}"));
            let not_listening = |reason: String| ActivationError::NotListening {
                fd,
                name: label.clone(),
                reason,
            };
            let listener = fds
                .take_tcp_listener(index)
                .map_err(|error| not_listening(error.to_string()))?
                .ok_or_else(|| not_listening("not passed".to_owned()))?;
            sockets.push(Passed::new(name, label.clone(), listener).map_err(not_listening)?);
        }
        Ok(PassedSockets {
            sockets,
            wanted: Vec::new(),
        })
    }

    /// Sockets handed over directly: the unit tests' way in, with sockets bound in-process.
    #[cfg(test)]
    fn from_listeners(
        listeners: Vec<(Option<&str>, std::net::TcpListener)>,
    ) -> Result<PassedSockets, ActivationError> {
        let sockets = listeners
            .into_iter()
            .enumerate()
            .map(|(index, (name, listener))| {
                let label = name.map_or_else(|| format!("descriptor {}", 3 + index), str::to_owned);
                Passed::new(name.map(str::to_owned), label.clone(), listener).map_err(|reason| {
                    ActivationError::NotListening {
                        fd: 3 + index,
                        name: label,
                        reason,
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(PassedSockets {
            sockets,
            wanted: Vec::new(),
        })
    }

    /// How many sockets are left unclaimed.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The passed socket for the listener `scheme` (`http`, `https`, `admin`) configured on
    /// `address`: the one of that name, else an unnamed one bound to that address.
    pub fn take_std(&mut self, scheme: &str, address: &str) -> Option<std::net::TcpListener> {
        self.wanted.push(format!("{scheme} {address}"));
        let configured: Option<SocketAddr> = address.parse().ok();
        let index = self
            .sockets
            .iter()
            .position(|passed| passed.name.as_deref() == Some(scheme))
            .or_else(|| {
                self.sockets
                    .iter()
                    .position(|passed| passed.name.is_none() && Some(passed.address) == configured)
            })?;
        let passed = self.sockets.remove(index);
        mark_from_manager(passed.address);
        Some(passed.listener)
    }

    /// Every passed socket was claimed; a socket left over is an error naming it (a unit that
    /// passes a socket nobody serves would leave its clients waiting in the backlog).
    pub fn finish(&mut self) -> Result<(), ActivationError> {
        match self.sockets.pop() {
            None => Ok(()),
            Some(passed) => Err(ActivationError::Unclaimed {
                name: passed.label,
                address: passed.address,
                wanted: match self.wanted.is_empty() {
                    true => "it has no listener on".to_owned(),
                    false => format!("listeners: {}", self.wanted.join(", ")),
                },
            }),
        }
    }
}

impl Passed {
    fn new(
        name: Option<String>,
        label: String,
        listener: std::net::TcpListener,
    ) -> Result<Passed, String> {
        // A socket that is bound but not listening would take no connection; listenfd has
        // checked it is a TCP socket.
        match rustix::net::sockopt::socket_acceptconn(&listener) {
            Ok(true) => {}
            Ok(false) => return Err("it is not listening (ListenStream=, not Accept=yes)".into()),
            Err(error) => return Err(error.to_string()),
        }
        let address = listener.local_addr().map_err(|error| error.to_string())?;
        let name = name.filter(|name| LISTENER_NAMES.contains(&name.as_str()));
        Ok(Passed {
            name,
            label,
            listener,
            address,
        })
    }
}

fn number(variable: &'static str, value: &OsString) -> Result<usize, ActivationError> {
    value
        .to_str()
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| ActivationError::NotANumber {
            variable,
            value: value.to_string_lossy().into_owned(),
        })
}

/// The sockets passed to this process, from [`adopt_passed_sockets`] until serving starts.
static PASSED: Mutex<Option<PassedSockets>> = Mutex::new(None);

/// Reads the passed sockets from the environment into this process's set (see
/// [`PassedSockets::from_env`]; call it before the runtime starts its threads); how many.
pub fn adopt_passed_sockets() -> Result<usize, ActivationError> {
    let passed = PassedSockets::from_env()?;
    let count = passed.len();
    *lock(&PASSED) = Some(passed);
    Ok(count)
}

/// The passed socket standing for listener `scheme` on `address`, if the manager passed one
/// (see [`PassedSockets::take_std`]).
pub fn take_passed_listener(scheme: &str, address: &str) -> io::Result<Option<TcpListener>> {
    let taken = lock(&PASSED)
        .as_mut()
        .and_then(|passed| passed.take_std(scheme, address));
    let Some(listener) = taken else {
        return Ok(None);
    };
    tracing::info!(
        scheme,
        address = %listener.local_addr()?,
        configured = address,
        "socket activation: serving on the passed socket"
    );
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener).map(Some)
}

/// Every passed socket found its listener (see [`PassedSockets::finish`]).
pub fn all_passed_sockets_claimed() -> Result<(), ActivationError> {
    match lock(&PASSED).as_mut() {
        Some(passed) => passed.finish(),
        None => Ok(()),
    }
}

/// Local addresses of this process's listening sockets that the service manager owns: passed to
/// it, or to a predecessor it took them from. An upgrade hands them to the successor marked so,
/// and the successor uses each for its name whatever address its own config gives.
static FROM_MANAGER: Mutex<Vec<SocketAddr>> = Mutex::new(Vec::new());

/// Records the listener bound to `address` as the service manager's.
pub fn mark_from_manager(address: SocketAddr) {
    lock(&FROM_MANAGER).push(address);
}

/// Whether the listener bound to `address` is the service manager's.
pub fn is_from_manager(address: SocketAddr) -> bool {
    lock(&FROM_MANAGER).contains(&address)
}

/// A poisoned lock still holds valid data here (plain lists); a panic elsewhere must not turn
/// into one in the listener set-up.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listening() -> std::net::TcpListener {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap()
    }

    #[test]
    fn named_sockets_stand_for_their_listener_whatever_its_address() {
        let (http, admin) = (listening(), listening());
        let http_addr = http.local_addr().unwrap();
        let mut passed =
            PassedSockets::from_listeners(vec![(Some("admin"), admin), (Some("http"), http)])
                .unwrap();
        let taken = passed.take_std("http", "0.0.0.0:8080").unwrap();
        assert_eq!(taken.local_addr().unwrap(), http_addr);
        assert!(is_from_manager(http_addr));
        assert!(passed.take_std("https", "0.0.0.0:8443").is_none());
        assert!(passed.take_std("admin", "127.0.0.1:9901").is_some());
        passed.finish().unwrap();
    }

    #[test]
    fn an_unnamed_socket_stands_for_the_listener_on_its_address() {
        let socket = listening();
        let address = socket.local_addr().unwrap().to_string();
        // systemd names a socket after its unit unless FileDescriptorName= says otherwise.
        let mut passed =
            PassedSockets::from_listeners(vec![(Some("juggler.socket"), socket)]).unwrap();
        assert!(passed.take_std("http", "127.0.0.1:1").is_none());
        assert!(passed.take_std("admin", &address).is_some());
        passed.finish().unwrap();
    }

    #[test]
    fn a_socket_no_listener_claims_is_an_error_naming_it() {
        let socket = listening();
        let address = socket.local_addr().unwrap();
        let mut passed = PassedSockets::from_listeners(vec![(Some("https"), socket)]).unwrap();
        assert!(passed.take_std("http", "0.0.0.0:8080").is_none());
        let error = passed.finish().unwrap_err().to_string();
        println!("{error}");
        assert!(
            error.contains(&format!("passed as https on {address}")),
            "{error}"
        );
        assert!(error.contains("listeners: http 0.0.0.0:8080"), "{error}");
    }

    #[test]
    fn a_socket_that_does_not_listen_is_refused() {
        let bound_only = std::net::TcpStream::connect(listening().local_addr().unwrap()).unwrap();
        // A connected stream is a TCP socket, not a listening one.
        let socket = std::net::TcpListener::from(std::os::fd::OwnedFd::from(bound_only));
        let error = PassedSockets::from_listeners(vec![(Some("http"), socket)])
            .unwrap_err()
            .to_string();
        println!("{error}");
        assert!(error.contains("not a listening TCP socket"), "{error}");
    }
}
