//! The kernel's TCP table, read the one way a test that counts connections needs: the sockets some
//! processes hold (matched to their descriptors by inode), each listed once.
//!
//! Count from the side that opens and closes the connections (Juggler's), not the backend's:
//! Juggler's socket leaves ESTABLISHED inside close(2), while the backend's side leaves it only
//! when the FIN is delivered, which on a loaded machine can come after Juggler's replacement
//! connection is established — a backend-side count then sees n + 1 that Juggler never held. A
//! connection a stopped backend has not accepted yet is ESTABLISHED on Juggler's side too.
//!
//! `/proc/<pid>/net/tcp` is no snapshot either: the kernel writes it a page per read(2) as it walks
//! its hash table, so a socket opened or closed between two reads shifts the walk and entries
//! already written come again. Entries are kept once per address pair; how many came twice is
//! kept for the curious.

use std::collections::HashSet;

/// One socket as the kernel's table shows it.
#[derive(Debug, Clone)]
pub struct TcpSocket {
    pub local_port: u16,
    pub remote_port: u16,
    /// The state's name in include/net/tcp_states.h.
    pub state: &'static str,
    /// `tx_queue:rx_queue` (hex bytes): unsent and unread data.
    pub queues: String,
}

/// The TCP sockets some processes hold at one reading.
#[derive(Debug, Default)]
pub struct HeldSockets {
    pub sockets: Vec<TcpSocket>,
    /// Entries the table listed more than once (see the module comment).
    pub listed_twice: usize,
}

impl HeldSockets {
    /// The sockets `pids` hold now, from the table of the first one's network namespace (every
    /// process given is assumed to share it). Gone processes simply hold nothing.
    pub fn of(pids: &[u32]) -> HeldSockets {
        let Some(first) = pids.first() else {
            return HeldSockets::default();
        };
        let inodes = socket_inodes(pids);
        let mut held = HeldSockets::default();
        let mut listed = HashSet::new();
        for table in ["tcp", "tcp6"] {
            let table =
                std::fs::read_to_string(format!("/proc/{first}/net/{table}")).unwrap_or_default();
            for line in table.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 10 || !inodes.contains(fields[9]) {
                    continue;
                }
                if !listed.insert((fields[1].to_owned(), fields[2].to_owned())) {
                    held.listed_twice += 1;
                    continue;
                }
                held.sockets.push(TcpSocket {
                    local_port: port_of(fields[1]),
                    remote_port: port_of(fields[2]),
                    state: state_name(fields[3]),
                    queues: fields[4].to_owned(),
                });
            }
        }
        held
    }

    /// The sockets whose remote end is on `port` (of 127.0.0.1 or ::1: tests stay on loopback).
    pub fn toward(&self, port: u16) -> impl Iterator<Item = &TcpSocket> {
        self.sockets
            .iter()
            .filter(move |socket| socket.remote_port == port)
    }

    /// The connections toward `port` that are open: ESTABLISHED.
    pub fn established_toward(&self, port: u16) -> usize {
        self.toward(port)
            .filter(|socket| socket.state == "ESTABLISHED")
            .count()
    }
}

/// The inodes of the sockets among the descriptors of `pids`.
fn socket_inodes(pids: &[u32]) -> HashSet<String> {
    pids.iter()
        .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy();
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect()
}

/// The port of a table address (`0100007F:1F90`).
fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|port| u16::from_str_radix(port, 16).ok())
        .unwrap_or(0)
}

/// The name of a state code (include/net/tcp_states.h).
fn state_name(code: &str) -> &'static str {
    match code {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "03" => "SYN_RECV",
        "04" => "FIN_WAIT1",
        "05" => "FIN_WAIT2",
        "06" => "TIME_WAIT",
        "07" => "CLOSE",
        "08" => "CLOSE_WAIT",
        "09" => "LAST_ACK",
        "0A" => "LISTEN",
        "0B" => "CLOSING",
        _ => "other",
    }
}
