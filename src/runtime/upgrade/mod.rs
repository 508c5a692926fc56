//! Zero-downtime binary upgrade: a new Juggler process (the successor) takes over the listening
//! sockets, the idle client connections and the pooled backend connections of the running one
//! (the predecessor), so no connection is refused, no keep-alive client sees its connection
//! closed, and each backend sees at most `n` connections from both processes together.
//!
//! The predecessor listens on a control Unix socket (mode 0600, same user only). The successor
//! connects, and over one connection, each message a line with descriptors attached (`wire`):
//! ```text
//! successor → HELLO <protocol> <config hash>
//! predecessor → WELCOME <protocol> <config hash>            (or REFUSE <reason>)
//! predecessor → LISTENER <http|https|admin> <address> [passed] + fd   one per listener
//! predecessor → LISTENERS
//! successor → ACCEPTING                                      it accepts on them from now on
//! predecessor → CLIENT + fd                                  an idle plain HTTP/1.1 connection
//! predecessor → BACKEND <address> <retire-ms|-> + fd         an idle pooled backend connection
//! predecessor → RELEASED <address>                           it holds no connection to it any more
//! predecessor → DONE                                         it holds nothing; it exits
//! ```
//! Until ACCEPTING the predecessor changes nothing, so a successor that fails to start (bad
//! certificate, unknown listener) leaves it serving untouched. If the successor goes away after
//! ACCEPTING, the predecessor accepts again and keeps its remaining connections. One takeover at
//! a time: a process still taking over from its predecessor answers a successor's HELLO only
//! once that predecessor has said DONE or gone.
//!
//! `passed` marks a listener the service manager passed (socket activation): the successor uses
//! it for its name whatever address its own config has, as the predecessor did. Under a service
//! manager (`systemd`), the predecessor says RELOADING=1 at HELLO, and the successor says
//! MAINPID=<its pid> and READY=1 before ACCEPTING, so before the predecessor can exit.

mod wire;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::admin::AdminServer;
use crate::backend::conn::BackendConn;
use crate::backend::pool::{HandedConn, HandoverSink};
use crate::client::{HandedOver, Listeners, Phase, Server};
use crate::metrics::ListenerKind;
use crate::proxy::Proxy;
use crate::systemd;
use wire::{Frame, Link};

/// Bumped whenever a message changes meaning; both sides must speak the same one.
pub const PROTOCOL: u32 = 1;

/// How long a successor may take from connecting to saying it accepts (it loads its certificate
/// and starts its listeners in between).
const GREETING_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a successor waits for WELCOME before saying why it waits: the running process answers
/// only once its own takeover from the process before it is over.
const SAY_WHY_AFTER: Duration = Duration::from_secs(1);

/// How often the predecessor looks whether a backend or the whole process is done.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// Why a takeover could not happen (the running process is unaffected by any of them).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("no running Juggler to take over at {path}: {source}")]
    NoPredecessor { path: PathBuf, source: io::Error },
    #[error("the running Juggler refused the takeover: {0}")]
    Refused(String),
    #[error("the running Juggler is still taking over from the one before it and did not answer within {0:?}; try again once it has finished")]
    Busy(Duration),
    #[error("upgrade protocol error: {0}")]
    Protocol(#[from] io::Error),
    #[error("the new config listens for {scheme} on {address}, which the running Juggler does not; stop it and start the new binary instead")]
    UnknownListener {
        scheme: &'static str,
        address: String,
    },
}

/// What the successor received from the predecessor before it starts serving.
#[derive(Debug)]
pub struct Predecessor {
    link: Link,
    /// The predecessor's config hash, for the log.
    pub config_hash: String,
    /// Scheme, bound address, socket, and whether the service manager passed it.
    listeners: Vec<(&'static str, SocketAddr, OwnedFd, bool)>,
}

/// Connects to the running Juggler at `path` and receives its listeners. Nothing changes for the
/// running process until [`serve`] tells it the successor accepts. A running process still taking
/// over from the one before it answers once that is over: waited for at most `patience`.
pub async fn connect(
    path: &Path,
    config_hash: &str,
    patience: Duration,
) -> Result<Predecessor, UpgradeError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| UpgradeError::NoPredecessor {
            path: path.to_owned(),
            source,
        })?;
    let mut link = Link::new(stream);
    link.send(&format!("HELLO {PROTOCOL} {config_hash}"), &[])
        .await?;
    let welcome = await_welcome(&mut link, patience).await?;
    if welcome.word(0)? != "WELCOME" {
        return Err(UpgradeError::Refused(welcome.words[1..].join(" ")));
    }
    let config_hash = welcome.word(2)?.to_owned();
    let mut listeners = Vec::new();
    loop {
        let mut frame = expect(&mut link).await?;
        match frame.word(0)? {
            "LISTENERS" => break,
            "LISTENER" => {
                let scheme = match frame.word(1)? {
                    "http" => "http",
                    "https" => "https",
                    "admin" => "admin",
                    _ => return Err(wire::malformed(&frame.words).into()),
                };
                let address = frame
                    .word(2)?
                    .parse()
                    .map_err(|_| wire::malformed(&frame.words))?;
                let fd = frame
                    .fds
                    .pop()
                    .ok_or_else(|| wire::malformed(&frame.words))?;
                let passed = frame.word(3).is_ok_and(|word| word == "passed");
                listeners.push((scheme, address, fd, passed));
            }
            _ => return Err(wire::malformed(&frame.words).into()),
        }
    }
    Ok(Predecessor {
        link,
        config_hash,
        listeners,
    })
}

impl Predecessor {
    /// The predecessor's listener for `scheme` on `address` (as configured: `0.0.0.0:8080`), or
    /// its listener for `scheme` that the service manager passed, wherever that is bound.
    pub fn take_listener(
        &mut self,
        scheme: &'static str,
        address: &str,
    ) -> Result<TcpListener, UpgradeError> {
        let unknown = || UpgradeError::UnknownListener {
            scheme,
            address: address.to_owned(),
        };
        let wanted: Option<SocketAddr> = address.parse().ok();
        let index = self
            .listeners
            .iter()
            .position(|(kind, bound, _, _)| *kind == scheme && Some(*bound) == wanted)
            .or_else(|| {
                self.listeners
                    .iter()
                    .position(|(kind, _, _, passed)| *kind == scheme && *passed)
            })
            .ok_or_else(unknown)?;
        let (_, bound, fd, passed) = self.listeners.swap_remove(index);
        if passed {
            systemd::mark_from_manager(bound);
        }
        let listener = std::net::TcpListener::from(fd);
        listener.set_nonblocking(true)?;
        Ok(TcpListener::from_std(listener)?)
    }
}

/// The answer to HELLO, said to be waited for once it is slow in coming (a receive given up
/// halfway loses nothing: the link keeps what it got).
async fn await_welcome(link: &mut Link, patience: Duration) -> Result<Frame, UpgradeError> {
    if let Ok(answer) = tokio::time::timeout(SAY_WHY_AFTER.min(patience), expect(link)).await {
        return Ok(answer?);
    }
    tracing::info!(
        at_most = ?patience,
        "upgrade: the running Juggler is still taking over from the one before it; waiting"
    );
    let rest = patience.saturating_sub(SAY_WHY_AFTER);
    match tokio::time::timeout(rest, expect(link)).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(UpgradeError::Busy(patience)),
    }
}

async fn expect(link: &mut Link) -> io::Result<Frame> {
    link.recv()
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "control connection closed"))
}

/// The control socket of a running Juggler, bound at `path` with mode 0600 (a stale file from a
/// process that is gone is replaced).
pub async fn bind_control(path: &Path) -> io::Result<UnixListener> {
    if UnixStream::connect(path).await.is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is the control socket of a running Juggler: take it over with --upgrade",
                path.display()
            ),
        ));
    }
    let _ = std::fs::remove_file(path);
    let bound = UnixListener::bind(path)?;
    // Only the owner may connect; every peer is also checked to be the same user (`same_user`),
    // which covers the instant before this.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(bound)
}

/// A control socket put at `path` in place of the predecessor's in one step: bound and listening
/// under a name of its own, then renamed over `path`, so that whoever connects to `path` at any
/// instant reaches a listening socket, the predecessor's or this one. Removing the file and
/// binding again left an instant with no file at all and one with a socket not yet listening:
/// a `--upgrade` then was told that no Juggler runs.
fn replace_control(path: &Path) -> io::Result<UnixListener> {
    let mut staging = path.as_os_str().to_owned();
    staging.push(".new");
    let staging = PathBuf::from(staging);
    let _ = std::fs::remove_file(&staging);
    let bound = UnixListener::bind(&staging)?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&staging, path));
    if let Err(error) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(error);
    }
    Ok(bound)
}

/// Serves `listeners` (and the admin listener with its bearer token, if on) until `shutdown`
/// completes or a successor has taken everything over; takes over from `predecessor` first when
/// there is one. Successors knock at the control socket
/// `control_path`, which a successor binds anew once it accepts (until then the predecessor's
/// stays reachable, in case this one fails).
pub async fn serve(
    listeners: Listeners,
    admin: Option<(TcpListener, String)>,
    proxy: Arc<Proxy>,
    shutdown: impl std::future::Future<Output = ()>,
    control_path: &Path,
    predecessor: Option<Predecessor>,
) -> io::Result<()> {
    let listener_fds = listener_fds(&listeners, admin.as_ref().map(|(listener, _)| listener))?;
    let admin = match admin {
        Some((listener, token)) => Some(AdminServer::start(
            listener,
            Arc::clone(&proxy),
            token,
            client_addresses(&listeners),
        )?),
        None => None,
    };
    let control = match &predecessor {
        None => Some(bind_control(control_path).await?),
        Some(_) => None,
    };
    let (clients_tx, mut clients_rx) = mpsc::unbounded_channel();
    if predecessor.is_some() {
        for pool in &proxy.pools {
            pool.inherit();
        }
    }
    let server = Server::start(listeners, proxy, clients_tx)?;
    let serving = serving_status(&listener_fds);
    let (mut predecessor, mut control) = match predecessor {
        Some(predecessor) => {
            let link = match start_successor(predecessor, &serving).await {
                Ok(link) => Some(link),
                Err(error) => {
                    // Gone before it heard from us: serve alone, opening our own connections.
                    tracing::warn!(%error, "upgrade: the previous process went away; serving alone");
                    for pool in &server.proxy().pools {
                        pool.end_inheritance();
                    }
                    systemd::status(&serving);
                    None
                }
            };
            (link, replace_control(control_path)?)
        }
        None => {
            let control = control.ok_or_else(|| io::Error::other("control socket not bound"))?;
            systemd::ready(&serving);
            (None, control)
        }
    };
    // The control socket file this process bound, to tell it from another's at the same path.
    let mut ours = file_identity(control_path);
    tokio::pin!(shutdown);
    let mut handed_over = false;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            frame = next_frame(&mut predecessor) => {
                if !take_from_predecessor(frame, &server) {
                    predecessor = None;
                    systemd::status(&serving);
                }
            }
            // One takeover at a time: while this process still receives from its predecessor,
            // a successor that knocks waits (its HELLO unanswered) until that one is done.
            // Handing over meanwhile, this process could say DONE and exit with the
            // predecessor's later connections unread in the link, closed with it, and the
            // predecessor, its link broken, would serve on beside the successor.
            accepted = control.accept(), if predecessor.is_none() => {
                let Ok((link, _)) = accepted else { continue };
                if !same_user(&link) {
                    tracing::warn!("control socket: refused a peer of another user");
                    continue;
                }
                // The successor accepts on the admin socket too: two accepting processes would
                // split operators' requests between two views.
                if let Some(admin) = &admin {
                    admin.pause(true);
                }
                let mut reloading = false;
                let handed = hand_over(link, &server, &listener_fds, &mut clients_rx, &mut reloading);
                if handed.await {
                    tracing::info!("upgrade: everything handed over; exiting");
                    handed_over = true;
                    break;
                }
                if let Some(admin) = &admin {
                    admin.pause(false);
                }
                if reloading {
                    // Ends the reload the HELLO began and takes the main PID back from a
                    // successor that may have claimed it before it went away.
                    systemd::ready_as_main(&format!("{serving} (an upgrade was abandoned)"));
                }
                // A successor that died after binding the control path left it dead: take it
                // back (a live listener there is left alone). Not when the path is still ours:
                // the liveness probe would connect to this very listener, whose next accept
                // would be that probe, taken for a successor that went away, and so on forever.
                if file_identity(control_path) != ours {
                    if let Ok(rebound) = bind_control(control_path).await {
                        control = rebound;
                        ours = file_identity(control_path);
                    }
                }
            }
        }
    }
    // The successor has bound the path anew; otherwise nobody listens there any more.
    if !handed_over {
        let _ = std::fs::remove_file(control_path);
        systemd::stopping("draining: finishing the requests in flight");
    }
    server.drain().await;
    // Last: the operators' view stays up while the requests drain.
    if let Some(admin) = admin {
        admin.finish().await;
    }
    Ok(())
}

/// Which file is at `path` (device and inode), if any.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::metadata(path).ok()?;
    Some((file.dev(), file.ino()))
}

/// What the service manager shows while this process serves: `serving http 0.0.0.0:8080, …`.
fn serving_status(listener_fds: &[(&'static str, SocketAddr, OwnedFd)]) -> String {
    let listeners: Vec<String> = listener_fds
        .iter()
        .map(|(scheme, address, _)| format!("{scheme} {address}"))
        .collect();
    format!("serving {}", listeners.join(", "))
}

/// Duplicates of the listening sockets, to hand to a successor.
fn listener_fds(
    listeners: &Listeners,
    admin: Option<&TcpListener>,
) -> io::Result<Vec<(&'static str, SocketAddr, OwnedFd)>> {
    let https = listeners.https.as_ref().map(|(listener, _)| listener);
    [
        ("http", listeners.http.as_ref()),
        ("https", https),
        ("admin", admin),
    ]
    .into_iter()
    .filter_map(|(scheme, listener)| Some((scheme, listener?)))
    .map(|(scheme, listener)| {
        Ok((
            scheme,
            listener.local_addr()?,
            listener.as_fd().try_clone_to_owned()?,
        ))
    })
    .collect()
}

/// The client listeners' addresses, for the admin report.
fn client_addresses(listeners: &Listeners) -> Vec<(ListenerKind, String)> {
    let https = listeners.https.as_ref().map(|(listener, _)| listener);
    [
        (ListenerKind::Http, listeners.http.as_ref()),
        (ListenerKind::Https, https),
    ]
    .into_iter()
    .filter_map(|(kind, listener)| Some((kind, listener?.local_addr().ok()?.to_string())))
    .collect()
}

/// The process at the other end of a control connection, for the service manager's status.
fn peer_pid(link: impl AsFd) -> Option<i32> {
    let peer = rustix::net::sockopt::socket_peercred(link).ok()?;
    Some(peer.pid.as_raw_nonzero().get())
}

fn same_user(link: &UnixStream) -> bool {
    rustix::net::sockopt::socket_peercred(link)
        .is_ok_and(|peer| peer.uid == rustix::process::getuid())
}

/// Tells the predecessor this process accepts now; from then on it hands over what it holds.
async fn start_successor(predecessor: Predecessor, serving: &str) -> io::Result<Link> {
    let Predecessor {
        link, config_hash, ..
    } = predecessor;
    // The service manager follows this process from here: told before ACCEPTING, so before the
    // predecessor can hand over everything and exit.
    let from = peer_pid(&link).map_or_else(String::new, |pid| format!(" from pid {pid}"));
    systemd::ready_as_main(&format!("{serving}; taking over{from}"));
    link.send("ACCEPTING", &[]).await?;
    tracing::info!(
        predecessor_config = config_hash,
        "upgrade: accepting on the inherited listeners"
    );
    Ok(link)
}

/// Cancel-safe (`Link::recv`): the `select!` in [`serve`] drops it whenever another branch wins.
async fn next_frame(predecessor: &mut Option<Link>) -> io::Result<Option<Frame>> {
    match predecessor {
        Some(link) => link.recv().await,
        None => std::future::pending().await,
    }
}

/// Adopts what the predecessor sends; `false` when it has nothing more to send.
fn take_from_predecessor(frame: io::Result<Option<Frame>>, server: &Server) -> bool {
    let pools = &server.proxy().pools;
    // The predecessor gone (or having said DONE): nothing of it is left to wait for.
    let predecessor_done = || {
        for pool in pools {
            pool.end_inheritance();
        }
        false
    };
    let Ok(Some(mut frame)) = frame else {
        return predecessor_done();
    };
    let fd = frame.fds.pop();
    let address = frame.word(1).unwrap_or_default();
    match (frame.word(0).unwrap_or_default(), fd) {
        ("CLIENT", Some(fd)) => server.adopt_client(fd, address.parse().ok()),
        ("BACKEND", Some(fd)) => {
            let retire_in = frame
                .word(2)
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis);
            if let Some(pool) = pools.iter().find(|pool| pool.spec.address == address) {
                match BackendConn::adopt(fd, retire_in) {
                    Ok(conn) => pool.adopt(conn),
                    Err(error) => {
                        tracing::debug!(%error, "handed-over backend connection unusable")
                    }
                }
            }
        }
        ("RELEASED", None) => {
            for pool in pools.iter().filter(|pool| pool.spec.address == address) {
                pool.end_inheritance();
            }
        }
        ("DONE", None) => {
            tracing::info!("upgrade: the previous process has handed everything over");
            return predecessor_done();
        }
        _ => tracing::warn!(words = ?frame.words, "upgrade: unexpected message ignored"),
    }
    true
}

/// The predecessor's side of one takeover; `true` once everything is handed over (the process
/// then exits), `false` if the successor went away first (this process serves on as before).
/// `reloading` is set once the service manager has been told RELOADING=1.
async fn hand_over(
    link: UnixStream,
    server: &Server,
    listener_fds: &[(&'static str, SocketAddr, OwnedFd)],
    clients: &mut mpsc::UnboundedReceiver<HandedOver>,
    reloading: &mut bool,
) -> bool {
    // Bounded: a peer that connects and goes quiet must not keep this process from its signals
    // or from the next successor.
    let mut link = Link::new(link);
    let greeting = greet(&mut link, server, listener_fds, reloading);
    match tokio::time::timeout(GREETING_TIMEOUT, greeting).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return false,
        Ok(Err(error)) => {
            tracing::warn!(%error, "upgrade: takeover abandoned before it started");
            return false;
        }
        Err(_) => {
            tracing::warn!("upgrade: the new process did not start accepting in time; serving on");
            return false;
        }
    }
    let detour = listener_fds
        .iter()
        .find(|(scheme, _, _)| *scheme == "http")
        .map(|(_, address, _)| *address);
    let handed = transfer(&mut link, server, clients, detour).await;
    if let Err(error) = &handed {
        tracing::warn!(%error, "upgrade: the new process went away; serving on");
        server.set_phase(Phase::Serving);
        for pool in &server.proxy().pools {
            pool.keep_connections();
        }
    }
    handed.is_ok()
}

/// HELLO, WELCOME, the listeners, and the successor's ACCEPTING; `Ok(false)` if refused.
async fn greet(
    link: &mut Link,
    server: &Server,
    listener_fds: &[(&'static str, SocketAddr, OwnedFd)],
    reloading: &mut bool,
) -> io::Result<bool> {
    let hello = expect(link).await?;
    let ours = server.proxy().table.config_hash;
    if hello.word(0)? != "HELLO" || hello.word(1)? != PROTOCOL.to_string() {
        let reason = format!("REFUSE protocol {PROTOCOL} expected, got {:?}", hello.words);
        link.send(&reason, &[]).await?;
        return Ok(false);
    }
    let theirs = hello.word(2)?.to_owned();
    let to = peer_pid(&*link).map_or_else(String::new, |pid| format!(" (pid {pid})"));
    systemd::reloading(&format!("upgrade: handing over to a new process{to}"));
    *reloading = true;
    link.send(&format!("WELCOME {PROTOCOL} {ours}"), &[])
        .await?;
    for (scheme, address, fd) in listener_fds {
        let passed = match systemd::is_from_manager(*address) {
            true => " passed",
            false => "",
        };
        let line = format!("LISTENER {scheme} {address}{passed}");
        link.send(&line, &[fd.as_fd()]).await?;
    }
    link.send("LISTENERS", &[]).await?;
    let accepting = expect(link).await?;
    if accepting.word(0)? != "ACCEPTING" {
        return Err(wire::malformed(&accepting.words));
    }
    tracing::info!(
        config = ours,
        successor_config = theirs,
        "upgrade: the new process accepts; handing over"
    );
    Ok(true)
}

/// Hands over clients as they become idle and backend connections as they come back, until
/// nothing is left (or the drain timeout passes); `Err` if the successor went away.
async fn transfer(
    link: &mut Link,
    server: &Server,
    clients: &mut mpsc::UnboundedReceiver<HandedOver>,
    detour: Option<SocketAddr>,
) -> io::Result<()> {
    let proxy = server.proxy();
    let (backends_tx, mut backends_rx) = mpsc::unbounded_channel();
    server.set_phase(Phase::HandingOver);
    let sink = HandoverSink {
        successor: backends_tx,
        requests_in_progress: Arc::clone(&proxy.requests_in_progress),
        detour,
    };
    for pool in &proxy.pools {
        pool.hand_over_to(sink.clone());
    }
    drop(sink);
    let mut released = vec![false; proxy.pools.len()];
    let (mut clients_sent, mut backends_sent) = (0usize, 0usize);
    let deadline = tokio::time::Instant::now() + proxy.table.settings.limits.drain_timeout;
    let mut tick = tokio::time::interval(POLL_EVERY);
    loop {
        tokio::select! {
            Some(client) = clients.recv() => {
                send_client(link, client).await?;
                clients_sent += 1;
            }
            Some(conn) = backends_rx.recv() => {
                send_backend(link, conn).await?;
                backends_sent += 1;
            }
            // The successor only ever closes its end: it died.
            gone = link.recv() => {
                return Err(match gone {
                    Err(error) => error,
                    Ok(_) => io::ErrorKind::ConnectionAborted.into(),
                });
            }
            _ = tick.tick() => {
                for pool in &proxy.pools {
                    pool.hand_over_idle();
                }
                // A connection in a channel still counts as open (its count travels with it and
                // goes once it is sent), so a count of zero below means the channels are empty
                // too; emptied here so that nothing waits for the next tick.
                while let Ok(client) = clients.try_recv() {
                    send_client(link, client).await?;
                    clients_sent += 1;
                }
                while let Ok(conn) = backends_rx.try_recv() {
                    send_backend(link, conn).await?;
                    backends_sent += 1;
                }
                for (pool, released) in proxy.pools.iter().zip(&mut released) {
                    if !*released && pool.open_connections() == 0 {
                        link.send(&format!("RELEASED {}", pool.spec.address), &[]).await?;
                        *released = true;
                    }
                }
                let all_released = released.iter().all(|released| *released);
                let timed_out = tokio::time::Instant::now() >= deadline;
                if (server.open_connections() == 0 && all_released) || timed_out {
                    link.send("DONE", &[]).await?;
                    tracing::info!(
                        clients = clients_sent,
                        backend_connections = backends_sent,
                        timed_out,
                        "upgrade: handed over"
                    );
                    return Ok(());
                }
            }
        }
    }
}

/// `CLIENT <address>`: the address its requests are attributed to goes along, as the PROXY
/// header that named it will not come again. The connection stops counting as open here, once
/// sent (its permit goes with `client`).
async fn send_client(link: &Link, client: HandedOver) -> io::Result<()> {
    let HandedOver {
        socket,
        client_ip,
        permit,
    } = client;
    link.send(&format!("CLIENT {client_ip}"), &[socket.as_fd()])
        .await?;
    drop(permit);
    Ok(())
}

/// `BACKEND <address> <retire-ms|->`; the connection stops counting in its pool once sent.
async fn send_backend(link: &Link, handed: HandedConn) -> io::Result<()> {
    let HandedConn {
        address,
        conn,
        counted,
    } = handed;
    let (socket, retire_in) = conn.into_socket()?;
    let retire = retire_in.map_or("-".to_owned(), |rest| rest.as_millis().to_string());
    let line = format!("BACKEND {address} {retire}");
    link.send(&line, &[socket.as_fd()]).await?;
    drop(counted);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// While the control socket is replaced, every connection to its path reaches a listening
    /// socket, and afterwards the new one.
    #[tokio::test]
    async fn a_replaced_control_socket_is_reachable_at_every_instant() {
        let dir = std::env::temp_dir().join(format!("juggler-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("juggler.sock");
        let _ = std::fs::remove_file(&path);
        let old = bind_control(&path).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (connected, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let prober = {
            let (path, stop) = (path.clone(), Arc::clone(&stop));
            let (connected, failed) = (Arc::clone(&connected), Arc::clone(&failed));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match std::os::unix::net::UnixStream::connect(&path) {
                        Ok(_) => connected.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        };
        // Replaced many times while probed: each replacement is an instant a non-atomic one would
        // show as a failed connect.
        let mut new = None;
        for _ in 0..200 {
            new = Some(replace_control(&path).unwrap());
        }
        stop.store(true, Ordering::Relaxed);
        prober.join().unwrap();
        assert_eq!(
            failed.load(Ordering::Relaxed),
            0,
            "a connect found no listener"
        );
        assert!(connected.load(Ordering::Relaxed) > 0);
        let mut staging = path.as_os_str().to_owned();
        staging.push(".new");
        assert!(
            !Path::new(&staging).exists(),
            "nothing left under the staging name"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The path now leads to the last socket bound, not the first.
        let _probe = UnixStream::connect(&path).await.unwrap();
        let accepted = tokio::time::timeout(Duration::from_secs(5), new.unwrap().accept()).await;
        assert!(accepted.is_ok_and(|accepted| accepted.is_ok()));
        drop(old);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
