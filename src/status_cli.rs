//! `juggler status`: the status page's table in a terminal, for when no browser is at hand.
//!
//! It fetches `GET /status.json` from the admin listener with one hand-written HTTP/1.1 request
//! over a plain `TcpStream` (the admin listener is local and speaks plain HTTP; a full HTTP client
//! would be a dependency for one GET), reads it into the admin server's own report types, and
//! prints one line per backend in at most 100 columns. `--json` prints the report as received.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use juggler::admin::report::{BackendReport, StatusReport};

/// How long connecting, sending and reading the answer may take together.
const TIMEOUT: Duration = Duration::from_secs(3);

/// The most of an answer read; a status report of hundreds of backends is far smaller.
const MAX_ANSWER_BYTES: u64 = 16 << 20;

/// The table never gets wider than this.
const WIDTH: usize = 100;

/// Print the status of the running Juggler (the status page's table) from its admin listener.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The admin listener, `host:port` (default: `[admin] listen` of the compiled-in config).
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,

    /// Print the report as JSON, exactly as `GET /status.json` gives it.
    #[arg(long)]
    json: bool,
}

/// Why `juggler status` could not print anything, and the exit code that says so.
pub enum Failure {
    /// No admin address: the compiled-in config turns the admin listener off (exit code 2).
    NoAddress,
    /// The admin listener could not be reached or gave no report (exit code 1).
    Fetch(anyhow::Error),
}

/// Fetches the report from `args.admin`, or from `configured` (the compiled-in `[admin] listen`),
/// and prints it.
pub fn run(args: &StatusArgs, configured: Option<&str>) -> Result<(), Failure> {
    let admin = match (&args.admin, configured) {
        (Some(address), _) => address
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned(),
        (None, Some(listen)) => local_address(listen),
        (None, None) => return Err(Failure::NoAddress),
    };
    let body = fetch_status(&admin).map_err(Failure::Fetch)?;
    let printed = if args.json {
        let body = String::from_utf8_lossy(&body);
        format!("{}\n", body.trim_end())
    } else {
        let report: StatusReport = serde_json::from_slice(&body)
            .with_context(|| {
                format!("{admin} answered /status.json with something that is not a status report")
            })
            .map_err(Failure::Fetch)?;
        render(&report, &admin)
    };
    // Written rather than `print!`ed: a reader that goes away (`| head`) is no reason to panic.
    match std::io::stdout().lock().write_all(printed.as_bytes()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::Fetch(error.into()))
        }
        _ => Ok(()),
    }
}

/// The address to reach a listener bound to `listen` from this machine: a wildcard address
/// (`0.0.0.0`, `[::]`) is reached over loopback.
fn local_address(listen: &str) -> String {
    if let Some(port) = listen.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = listen.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        listen.to_owned()
    }
}

/// The body of `GET /status.json` from `admin`, within [`TIMEOUT`] in all.
fn fetch_status(admin: &str) -> Result<Vec<u8>> {
    let deadline = Instant::now() + TIMEOUT;
    let addresses: Vec<_> = admin
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve the admin address {admin} (expected host:port)"))?
        .collect();
    let mut last_error = None;
    let mut stream = None;
    for address in &addresses {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(address, left.max(Duration::from_millis(1))) {
            Ok(connected) => {
                stream = Some(connected);
                break;
            }
            Err(error) => last_error = Some(error),
        }
    }
    let Some(mut stream) = stream else {
        let reason = last_error.map_or("no address".to_owned(), |error| error.to_string());
        bail!("cannot connect to Juggler's admin listener at {admin}: {reason} (is Juggler running, with its admin listener there? --admin ADDR names another)");
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))?;
    let request = format!(
        "GET /status.json HTTP/1.1\r\nHost: {admin}\r\nAccept: application/json\r\n\
         User-Agent: juggler-status/{}\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("cannot send the request to {admin}"))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER_BYTES)
        .read_to_end(&mut answer)
        .with_context(|| format!("no complete answer from {admin} within {TIMEOUT:?}"))?;
    body_of(&answer).with_context(|| format!("bad answer from {admin}"))
}

/// The body of a whole HTTP/1.1 answer read until the server closed: `200` only, framed by
/// `Content-Length`, chunked, or by the close itself.
fn body_of(answer: &[u8]) -> Result<Vec<u8>> {
    let Some(end) = answer.windows(4).position(|window| window == b"\r\n\r\n") else {
        bail!("the connection closed before the end of the response head");
    };
    let head = String::from_utf8_lossy(&answer[..end]);
    let body = &answer[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).unwrap_or_default();
    if status != "200" {
        bail!("GET /status.json answered `{status_line}`");
    }
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().context("bad Content-Length")?);
        }
    }
    if chunked {
        return dechunk(body);
    }
    match length {
        Some(length) if body.len() < length => {
            bail!("the body ended after {} of {length} bytes", body.len())
        }
        Some(length) => Ok(body[..length].to_vec()),
        None => Ok(body.to_vec()),
    }
}

/// A chunked body, decoded (chunk extensions and trailers ignored).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|window| window == b"\r\n") else {
            bail!("a chunk size line is cut off");
        };
        let line = std::str::from_utf8(&rest[..line_end]).context("bad chunk size")?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).context("bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            bail!("a chunk is cut off");
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// The header lines and the table, as printed: at most [`WIDTH`] columns.
pub fn render(report: &StatusReport, admin: &str) -> String {
    let mut out = String::new();
    let mut header = format!(
        "Juggler {} · config {} · up {} · RSS {} · {} fds · admin {admin}",
        report.version,
        report.config_hash.chars().take(12).collect::<String>(),
        duration(report.uptime_seconds),
        mebibytes(report.resident_bytes),
        report.open_fds,
    );
    fit(&mut header, WIDTH);
    out.push_str(&header);
    out.push('\n');
    let clients: Vec<String> = report
        .listeners
        .iter()
        .map(|listener| {
            format!(
                "{} {}: {} clients, {} requests",
                listener.name,
                listener.address,
                thousands(listener.connections),
                thousands(listener.requests)
            )
        })
        .collect();
    if !clients.is_empty() {
        let mut line = clients.join(" · ");
        fit(&mut line, WIDTH);
        out.push_str(&line);
        out.push('\n');
    }
    out.push('\n');

    let mut rows = vec![[
        "UPSTREAM".to_owned(),
        "BACKEND".to_owned(),
        "STATE".to_owned(),
        "BUSY/OPEN/N".to_owned(),
        "QUEUED".to_owned(),
        "REQ/S".to_owned(),
        "WAIT P99".to_owned(),
        "5XX".to_owned(),
    ]];
    for upstream in &report.upstreams {
        for backend in &upstream.backends {
            rows.push(row(&upstream.name, backend));
        }
    }
    out.push_str(&table(&rows));
    if let Some(fleet) = &report.fleet {
        out.push('\n');
        out.push_str(&fleet_lines(fleet));
    }
    out
}

/// The fleet's part: this instance's standing and, per backend, its share of the fleet's `n`.
fn fleet_lines(fleet: &juggler::admin::FleetReport) -> String {
    let contact = fleet
        .last_etcd_contact_unix
        .map_or("never".to_owned(), |at| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |now| now.as_secs_f64());
            format!("{} ago", duration((now - at).max(0.0)))
        });
    let mut header = format!(
        "fleet: instance {} · {} · {} instances · etcd answered {contact} · {}",
        fleet.instance, fleet.state, fleet.instances_seen, fleet.prefix
    );
    fit(&mut header, WIDTH);
    let mut out = header + "\n";
    for backend in &fleet.backends {
        let mut line = format!(
            "  {}: share {} (holding {}), fleet {} of {}",
            backend.address, backend.share, backend.limit, backend.fleet_total, backend.pool_size
        );
        fit(&mut line, WIDTH);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// One backend's cells, in the order of the table's columns.
fn row(upstream: &str, backend: &BackendReport) -> [String; 8] {
    // The page's "queueing": up, but requests are waiting for a connection.
    let state = if backend.state.as_str() == "up" && backend.queued > 0 {
        "queueing".to_owned()
    } else {
        backend.state.to_string()
    };
    let per_second = backend
        .history
        .requests_per_second
        .last()
        .copied()
        .unwrap_or_default();
    [
        upstream.to_owned(),
        backend.address.to_string(),
        state,
        format!("{}/{}/{}", backend.busy, backend.open, backend.pool_size),
        backend.queued.to_string(),
        format!("{per_second:.0}"),
        backend
            .wait_p99_ms
            .map_or("-".to_owned(), |wait| format!("{} ms", milliseconds(wait))),
        backend.responses.server_error.to_string(),
    ]
}

/// Left-aligned text columns, right-aligned numbers; the upstream and backend columns give way
/// (ending in `…`) when the whole would not fit in [`WIDTH`].
fn table(rows: &[[String; 8]]) -> String {
    const GAP: usize = 2;
    const NUMERIC: [bool; 8] = [false, false, false, true, true, true, true, true];
    let mut widths = [0; 8];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let total = |widths: &[usize; 8]| widths.iter().sum::<usize>() + GAP * (widths.len() - 1);
    // Shrink the widest of the two name columns until the table fits (each keeps 8 columns).
    while total(&widths) > WIDTH && (widths[0] > 8 || widths[1] > 8) {
        let widest = if widths[1] >= widths[0] { 1 } else { 0 };
        widths[widest] -= 1;
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            let mut cell = cell.clone();
            fit(&mut cell, widths[column]);
            let pad = widths[column] - cell.chars().count();
            if column > 0 {
                line.push_str(&" ".repeat(GAP));
            }
            if NUMERIC[column] {
                line.push_str(&" ".repeat(pad));
                line.push_str(&cell);
            } else {
                line.push_str(&cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Cuts `text` to `width` characters, the last one `…`, if it is longer.
fn fit(text: &mut String, width: usize) {
    if text.chars().count() > width {
        *text = text.chars().take(width.saturating_sub(1)).collect();
        text.push('…');
    }
}

/// `78909` as `78,909`.
fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn milliseconds(value: f64) -> String {
    if value < 1.0 {
        format!("{value:.2}")
    } else if value < 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn duration(seconds: f64) -> String {
    let seconds = seconds.max(0.0) as u64;
    let (days, hours, minutes) = (seconds / 86_400, seconds / 3_600 % 24, seconds / 60 % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) => format!("{minutes}m {}s", seconds % 60),
        (0, _, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_address_when_the_admin_listener_is_off_and_none_is_given() {
        let args = StatusArgs {
            admin: None,
            json: false,
        };
        assert!(matches!(run(&args, None), Err(Failure::NoAddress)));
    }

    #[test]
    fn wildcard_listen_addresses_are_reached_over_loopback() {
        assert_eq!(local_address("0.0.0.0:9901"), "127.0.0.1:9901");
        assert_eq!(local_address("[::]:9901"), "[::1]:9901");
        assert_eq!(local_address("127.0.0.1:9901"), "127.0.0.1:9901");
    }

    #[test]
    fn bodies_framed_every_way_are_read() {
        let fixed = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(body_of(fixed).unwrap(), b"{}");
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{\"\r\n3;x=y\r\na\":\r\n1\r\n1\r\n0\r\n\r\n";
        assert_eq!(body_of(chunked).unwrap(), b"{\"a\":1");
        let closed = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n[1]";
        assert_eq!(body_of(closed).unwrap(), b"[1]");
        let refused = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let error = body_of(refused).unwrap_err().to_string();
        assert!(error.contains("404 Not Found"), "{error}");
        assert!(body_of(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
        assert!(body_of(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn the_fleet_part_names_the_state_and_each_share() {
        let fleet = juggler::admin::FleetReport {
            instance: "edge-1".to_owned(),
            prefix: "/juggler/shop".to_owned(),
            state: "fallback".to_owned(),
            instances_seen: 3,
            last_etcd_contact_unix: None,
            backends: vec![juggler::admin::FleetBackendReport {
                address: "10.0.0.7:8080".to_owned(),
                pool_size: 12,
                share: 5,
                limit: 1,
                fleet_total: 12,
            }],
        };
        let printed = fleet_lines(&fleet);
        print!("{printed}");
        assert!(printed.contains("instance edge-1 · fallback · 3 instances · etcd answered never"));
        assert!(printed.contains("10.0.0.7:8080: share 5 (holding 1), fleet 12 of 12"));
    }

    #[test]
    fn long_names_are_cut_so_the_table_fits_100_columns() {
        let rows = [
            [
                "UPSTREAM",
                "BACKEND",
                "STATE",
                "BUSY/OPEN/N",
                "QUEUED",
                "REQ/S",
                "WAIT P99",
                "5XX",
            ]
            .map(str::to_owned),
            [
                "an-upstream-with-a-very-long-name".to_owned(),
                "backend-with-a-long-host-name.internal.example.com:8080".to_owned(),
                "draining".to_owned(),
                "1000/1000/1000".to_owned(),
                "1000000".to_owned(),
                "123456".to_owned(),
                "12345 ms".to_owned(),
                "123456789".to_owned(),
            ],
        ];
        let printed = table(&rows);
        print!("{printed}");
        for line in printed.lines() {
            assert!(
                line.chars().count() <= WIDTH,
                "{line:?} is wider than {WIDTH}"
            );
        }
        assert!(printed.contains('…'));
        assert!(printed.contains("1000/1000/1000"));
    }

    #[test]
    fn large_counts_are_grouped_by_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(78_909), "78,909");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(42.7), "42s");
        assert_eq!(duration(125.0), "2m 5s");
        assert_eq!(duration(7_384.0), "2h 3m");
        assert_eq!(duration(200_000.0), "2d 7h");
    }
}
