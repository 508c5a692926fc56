//! The PROXY protocol (v1 text, v2 binary; haproxy.org/download/2.9/doc/proxy-protocol.txt) on
//! the way in: an L4 balancer in front of Juggler opens each connection with a header naming the
//! real client, which then stands in for the balancer's address (`ClientInfo::ip`).
//!
//! Parsing is pure functions over bytes; [`read_header`] and [`refuse_spoofed`] apply them to a
//! socket by peeking, and consume exactly the header's bytes, so the request (or the TLS
//! handshake) after it reaches the HTTP code untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::metrics::ProxyRefusal;

const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header the specification allows, CRLF included.
const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED: usize = 16;
/// Addresses of the largest family (two AF_UNIX paths).
const V2_ADDRESSES_MAX: usize = 216;
/// TLVs after the addresses (balancers add a few: AWS its VPC endpoint id, haproxy the TLS
/// version or a unique id): bounded so a peer cannot make us buffer much before any request.
const V2_TLVS_MAX: usize = 512;
/// The longest v2 header accepted: 744 bytes.
const V2_MAX: usize = V2_FIXED + V2_ADDRESSES_MAX + V2_TLVS_MAX;
/// The most bytes ever looked at: the longer of the two formats.
const MAX_HEADER: usize = V2_MAX;

/// What the bytes received so far say.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Parsed {
    /// A header may still complete; every byte seen so far belongs to it (so they can be
    /// consumed from the socket without touching the request after it).
    Incomplete,
    /// A whole header of `len` bytes; `source`: the client it names, `None` to keep the peer's
    /// address (v1 `UNKNOWN`, v2 `LOCAL`, or a v2 family other than IPv4/IPv6).
    Header { len: usize, source: Option<IpAddr> },
    /// Not a valid header: the connection is closed.
    Invalid(&'static str),
}

/// Parses the PROXY header at the start of `bytes`.
pub(super) fn parse(bytes: &[u8]) -> Parsed {
    if bytes.first() == Some(&b'P') {
        parse_v1(bytes)
    } else {
        parse_v2(bytes)
    }
}

fn parse_v1(bytes: &[u8]) -> Parsed {
    let seen = bytes.len().min(V1_PREFIX.len());
    if bytes[..seen] != V1_PREFIX[..seen] {
        return Parsed::Invalid("bad v1 signature");
    }
    let Some(end) = bytes.iter().take(V1_MAX).position(|&byte| byte == b'\n') else {
        return if bytes.len() >= V1_MAX {
            Parsed::Invalid("v1 header longer than 107 bytes")
        } else {
            Parsed::Incomplete
        };
    };
    let len = end + 1;
    let Some(line) = bytes[..end].strip_suffix(b"\r") else {
        return Parsed::Invalid("v1 header not ended by CRLF");
    };
    let Ok(line) = std::str::from_utf8(&line[V1_PREFIX.len()..]) else {
        return Parsed::Invalid("v1 header not ASCII");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        // Whatever follows UNKNOWN is to be ignored.
        ["UNKNOWN", ..] => Parsed::Header { len, source: None },
        [family @ ("TCP4" | "TCP6"), source, destination, source_port, destination_port] => {
            let addresses = if *family == "TCP4" {
                source
                    .parse::<Ipv4Addr>()
                    .ok()
                    .map(IpAddr::V4)
                    .zip(destination.parse::<Ipv4Addr>().ok().map(IpAddr::V4))
            } else {
                source
                    .parse::<Ipv6Addr>()
                    .ok()
                    .map(IpAddr::V6)
                    .zip(destination.parse::<Ipv6Addr>().ok().map(IpAddr::V6))
            };
            let ports_ok = [source_port, destination_port]
                .iter()
                .all(|port| is_port(port));
            match addresses {
                Some((source, _)) if ports_ok => Parsed::Header {
                    len,
                    source: Some(source),
                },
                _ => Parsed::Invalid("bad v1 address or port"),
            }
        }
        _ => Parsed::Invalid("bad v1 protocol or field count"),
    }
}

/// A decimal port, 0-65535, without a leading zero (as the specification writes them).
fn is_port(text: &str) -> bool {
    !text.is_empty()
        && text.bytes().all(|byte| byte.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'))
        && text.parse::<u16>().is_ok()
}

fn parse_v2(bytes: &[u8]) -> Parsed {
    let seen = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..seen] != V2_SIGNATURE[..seen] {
        return Parsed::Invalid("bad signature");
    }
    if bytes.len() < V2_FIXED {
        return Parsed::Incomplete;
    }
    let (version_command, family) = (bytes[12], bytes[13]);
    if version_command >> 4 != 2 {
        return Parsed::Invalid("v2 header of an unknown version");
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Parsed::Invalid("v2 header with an unknown command"),
    };
    let body_len = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    let len = V2_FIXED + body_len;
    if len > V2_MAX {
        return Parsed::Invalid("v2 header longer than accepted");
    }
    // Family in the high nibble (unspecified, IPv4, IPv6, unix), transport in the low one
    // (unspecified, stream, datagram).
    let addresses_len = match family >> 4 {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        _ => return Parsed::Invalid("v2 header with an unknown address family"),
    };
    if family & 0x0f > 2 {
        return Parsed::Invalid("v2 header with an unknown transport");
    }
    if !local && body_len < addresses_len {
        return Parsed::Invalid("v2 header too short for its addresses");
    }
    if bytes.len() < len {
        return Parsed::Incomplete;
    }
    let body = &bytes[V2_FIXED..len];
    let source = match (local, family >> 4) {
        (true, _) => None,
        (false, 1) => Some(IpAddr::V4(Ipv4Addr::new(
            body[0], body[1], body[2], body[3],
        ))),
        (false, 2) => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        // Unspecified or unix: nothing to say about the client; the peer's address stays.
        (false, _) => None,
    };
    Parsed::Header { len, source }
}

/// Whether `bytes` start like a PROXY header, of either version: `None` while too few bytes
/// have arrived to tell.
pub(super) fn starts_with_signature(bytes: &[u8]) -> Option<bool> {
    let matches = |signature: &[u8]| {
        let seen = bytes.len().min(signature.len());
        (bytes[..seen] == signature[..seen]).then_some(seen == signature.len())
    };
    match (matches(V1_PREFIX), matches(V2_SIGNATURE)) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (None, None) => Some(false),
        _ => None,
    }
}

/// Why a connection is closed before any request.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refused {
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    #[error("no whole PROXY header within the header read timeout")]
    TooSlow,
    #[error("a PROXY header from a peer not in `proxy_protocol_from`")]
    Untrusted,
    #[error("nothing sent within the idle timeout")]
    Idle,
    #[error("connection closed before a request")]
    Closed,
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

impl Refused {
    /// The reason counted in `juggler_proxy_protocol_refused`; `None` for a connection that
    /// merely went away or stayed silent, as any connection may.
    pub(super) fn counted_as(&self) -> Option<ProxyRefusal> {
        match self {
            Refused::Untrusted => Some(ProxyRefusal::Untrusted),
            Refused::Malformed(_) => Some(ProxyRefusal::Malformed),
            Refused::TooSlow => Some(ProxyRefusal::Timeout),
            Refused::Idle | Refused::Closed | Refused::Io(_) => None,
        }
    }
}

/// Reads the PROXY header a trusted peer must open its connection with, consuming exactly its
/// bytes, within `timeout`; the client address it names, `None` to keep the peer's.
pub(super) async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<IpAddr>, Refused> {
    tokio::time::timeout(timeout, read_header_bytes(stream))
        .await
        .map_err(|_| Refused::TooSlow)?
}

async fn read_header_bytes(stream: &mut TcpStream) -> Result<Option<IpAddr>, Refused> {
    // What has been consumed so far: all of it header (see `Parsed::Incomplete`).
    let mut consumed = Vec::new();
    let mut window = [0u8; MAX_HEADER];
    loop {
        let free = MAX_HEADER - consumed.len();
        let peeked = stream.peek(&mut window[..free]).await?;
        if peeked == 0 {
            return Err(Refused::Closed);
        }
        let start = consumed.len();
        consumed.extend_from_slice(&window[..peeked]);
        match parse(&consumed) {
            Parsed::Header { len, source } => {
                // Take the header's bytes off the socket and leave what follows them.
                let mut header_rest = vec![0u8; len - start];
                stream.read_exact(&mut header_rest).await?;
                return Ok(source);
            }
            Parsed::Invalid(why) => return Err(Refused::Malformed(why)),
            // All header: consume them, so the next peek waits for more instead of returning
            // the same bytes.
            Parsed::Incomplete => {
                stream.read_exact(&mut window[..peeked]).await?;
            }
        }
    }
}

/// For a peer not trusted to send one: refuses a connection that opens with a PROXY signature
/// (someone trying to pass off another client's address), consuming nothing. Waits for the first
/// bytes up to `timeout` (the idle timeout: what a silent new connection gets anyway).
pub(super) async fn refuse_spoofed(stream: &TcpStream, timeout: Duration) -> Result<(), Refused> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut window = [0u8; V2_SIGNATURE.len()];
    let mut seen = 0;
    loop {
        let peek = tokio::time::timeout_at(deadline, stream.peek(&mut window));
        let Ok(peeked) = peek.await else {
            return Err(Refused::Idle);
        };
        let peeked = peeked?;
        if peeked == 0 {
            return Err(Refused::Closed);
        }
        match starts_with_signature(&window[..peeked]) {
            Some(true) => return Err(Refused::Untrusted),
            Some(false) => return Ok(()),
            // A strict prefix of a signature ("PRO"): peeking again at once would return the same
            // bytes, so give the rest a moment to arrive. Only a client that dribbles out the
            // first bytes of a request ever gets here.
            None if peeked == seen => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None => seen = peeked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: usize, source: &str) -> Parsed {
        Parsed::Header {
            len,
            source: Some(source.parse().unwrap()),
        }
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.push(0x20 | command);
        bytes.push(family);
        bytes.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    const V4_BODY: [u8; 12] = [192, 0, 2, 7, 10, 0, 0, 1, 0x30, 0x39, 0x1f, 0x90];

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 12345 8080\r\nGET / HTTP/1.1\r\n";
        assert_eq!(parse(line), header(42, "192.0.2.7"));
        let line = b"PROXY TCP6 2001:db8::7 fd00::1 65535 443\r\n\x16\x03";
        assert_eq!(parse(line), header(42, "2001:db8::7"));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                source: None
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff:: ffff:: 1 2\r\n"),
            Parsed::Header {
                len: 33,
                source: None
            }
        );
    }

    #[test]
    fn v1_truncated_is_incomplete() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 12345 8080\r\n";
        for end in 0..line.len() {
            assert_eq!(parse(&line[..end]), Parsed::Incomplete, "{end} bytes");
        }
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 12345\r\n"[..],
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 80\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 080 80\r\n",
            b"PROXY TCP4  192.0.2.7 10.0.0.1 1 80\r\n",
            b"PROXY UDP4 192.0.2.7 10.0.0.1 1 80\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 80\n",
            b"PROXX TCP4",
            b"POST / HTTP/1.1\r\n",
        ] {
            assert!(
                matches!(parse(bad), Parsed::Invalid(_)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 100]].concat();
        assert_eq!(
            parse(&long),
            Parsed::Invalid("v1 header longer than 107 bytes")
        );
    }

    #[test]
    fn v2_proxy_ipv4_and_ipv6_with_tlvs() {
        let mut bytes = v2(1, 0x11, &V4_BODY);
        bytes.extend_from_slice(b"GET /");
        assert_eq!(parse(&bytes), header(28, "192.0.2.7"));
        let mut body = vec![0x20, 0x01, 0x0d, 0xb8];
        body.extend_from_slice(&[0; 11]);
        body.push(7);
        body.extend_from_slice(&[0xfd; 16]);
        body.extend_from_slice(&[0, 1, 0, 2]);
        // One TLV (type 0x04 NOOP, 3 bytes): skipped with the header.
        body.extend_from_slice(&[0x04, 0, 3, 1, 2, 3]);
        assert_eq!(parse(&v2(1, 0x21, &body)), header(16 + 42, "2001:db8::7"));
    }

    #[test]
    fn v2_local_and_unspecified_keep_the_peer() {
        let keep = |len| Parsed::Header { len, source: None };
        assert_eq!(parse(&v2(0, 0x00, &[])), keep(16));
        assert_eq!(parse(&v2(0, 0x11, &V4_BODY)), keep(28));
        assert_eq!(parse(&v2(1, 0x00, &[])), keep(16));
    }

    #[test]
    fn v2_truncated_is_incomplete() {
        let bytes = v2(1, 0x11, &V4_BODY);
        for end in 0..bytes.len() {
            assert_eq!(parse(&bytes[..end]), Parsed::Incomplete, "{end} bytes");
        }
    }

    #[test]
    fn v2_malformed() {
        let mut bad_signature = v2(1, 0x11, &V4_BODY);
        bad_signature[5] = b'X';
        let mut version_1 = v2(1, 0x11, &V4_BODY);
        version_1[12] = 0x11;
        let cases = [
            bad_signature,
            version_1,
            v2(2, 0x11, &V4_BODY),
            v2(1, 0x41, &V4_BODY),
            v2(1, 0x13, &V4_BODY),
            v2(1, 0x11, &V4_BODY[..11]),
            v2(1, 0x21, &[0; 35]),
            v2(1, 0x11, &vec![0; V2_MAX - V2_FIXED + 1]),
        ];
        for bad in &cases {
            assert!(matches!(parse(bad), Parsed::Invalid(_)), "{bad:?}");
        }
        // The largest accepted header still parses.
        assert!(matches!(
            parse(&v2(1, 0x11, &vec![0; V2_MAX - V2_FIXED])),
            Parsed::Header { len: V2_MAX, .. }
        ));
    }

    #[test]
    fn signatures_are_recognised_from_their_first_bytes() {
        assert_eq!(starts_with_signature(b"PROXY TCP4"), Some(true));
        assert_eq!(starts_with_signature(&V2_SIGNATURE[..]), Some(true));
        assert_eq!(starts_with_signature(b"PRO"), None);
        assert_eq!(starts_with_signature(b"\r\n\r\n"), None);
        assert_eq!(starts_with_signature(b""), None);
        assert_eq!(starts_with_signature(b"POST /"), Some(false));
        assert_eq!(starts_with_signature(b"GET"), Some(false));
        assert_eq!(starts_with_signature(&[0x16, 0x03, 0x01]), Some(false));
    }
}
