//! The access-log line, formatted without the general formatter's machinery.
//!
//! Measured with callgrind (issue 18), `tracing_subscriber`'s formatter spent about 15,000
//! instructions on each access line, a third of everything Juggler did for the request: a
//! `core::fmt` call per field and per styled fragment, the timestamp's calendar arithmetic on
//! every line, serde for JSON. [`AccessFormat`] writes the same bytes for the access log's event
//! directly: field names and strings copied, numbers by `itoa`, the date part of the timestamp
//! reused within its second; [`ClientIp`] does the same for the client's address. Every other
//! event, and every event when colours are on, goes to the general formatter it wraps. The tests
//! compare both formatters' output byte for byte.

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The `tracing` target of the one-line-per-request access log.
pub const ACCESS_LOG: &str = "juggler::access";

/// The client's address in the access line, as `IpAddr`'s `Display` writes it: an IPv4 address
/// without `core::fmt`'s four calls, one per octet (a thousand instructions a line).
pub struct ClientIp(pub IpAddr);

impl fmt::Display for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let IpAddr::V4(v4) = self.0 else {
            return fmt::Display::fmt(&self.0, f);
        };
        let mut text = [0u8; 15];
        let mut len = 0;
        for (n, octet) in v4.octets().into_iter().enumerate() {
            if n > 0 {
                text[len] = b'.';
                len += 1;
            }
            let mut digits = itoa::Buffer::new();
            let digits = digits.format(octet).as_bytes();
            text[len..len + digits.len()].copy_from_slice(digits);
            len += digits.len();
        }
        // Digits and dots only.
        f.write_str(std::str::from_utf8(&text[..len]).unwrap_or_default())
    }
}

/// The event formatter for `tracing_subscriber::fmt`: the access line by hand, everything else
/// by `general`, which must be the default `Full` text or the flattened JSON format (`style`
/// says which), so that both write the same bytes.
pub struct AccessFormat<F> {
    general: F,
    style: Style,
}

#[derive(Clone, Copy)]
enum Style {
    /// `2026-12-06T03:46:54.761215Z  INFO juggler::access: request_id="…" client=127.0.0.1 …`
    Text,
    /// `{"timestamp":"…","level":"INFO","request_id":"…",…,"target":"juggler::access"}`
    Json,
}

impl<F> AccessFormat<F> {
    /// Wraps `tracing_subscriber`'s default text format.
    pub fn text(general: F) -> AccessFormat<F> {
        AccessFormat {
            general,
            style: Style::Text,
        }
    }

    /// Wraps `tracing_subscriber`'s JSON format with `flatten_event(true)`.
    pub fn json(general: F) -> AccessFormat<F> {
        AccessFormat {
            general,
            style: Style::Json,
        }
    }
}

impl<S, N, F> FormatEvent<S, N> for AccessFormat<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        // Only the access log's own line (fields, no message: the general formatter writes a
        // message its own way), never inside a span (it would print the span), never in colour.
        let by_hand = metadata.target() == ACCESS_LOG
            && metadata.fields().field("message").is_none()
            && !writer.has_ansi_escapes()
            && ctx.lookup_current().is_none();
        if !by_hand {
            return self.general.format_event(ctx, writer, event);
        }
        let mut line = LINE.with_borrow_mut(std::mem::take);
        line.clear();
        match self.style {
            Style::Text => {
                timestamp(&mut line);
                // The level right-aligned in five columns, as `{:>5}`.
                let level = metadata.level().as_str();
                line.push_str(&"      "[..6 - level.len()]);
                line.push_str(level);
                line.push(' ');
                line.push_str(metadata.target());
                line.push_str(": ");
                event.record(&mut TextFields {
                    line: &mut line,
                    first: true,
                });
                line.push('\n');
            }
            Style::Json => {
                line.push_str("{\"timestamp\":\"");
                timestamp(&mut line);
                line.push_str("\",\"level\":\"");
                line.push_str(metadata.level().as_str());
                line.push('"');
                event.record(&mut JsonFields { line: &mut line });
                line.push_str(",\"target\":");
                json_string(&mut line, metadata.target());
                line.push_str("}\n");
            }
        }
        let written = writer.write_str(&line);
        LINE.with_borrow_mut(|kept| *kept = line);
        written
    }
}

thread_local! {
    /// The line being formatted: one buffer per thread, kept between lines.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
    /// The timestamp's date and time to the second (`2026-12-06T03:46:54`) and the second it is
    /// for: the calendar arithmetic runs once a second rather than once a line.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `2026-12-06T03:46:54.761215Z`, as `tracing_subscriber`'s `SystemTime` writes it.
fn timestamp(line: &mut String) {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_epoch.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != seconds {
            text.clear();
            let _ = write_date_time(text, seconds);
            *cached = seconds;
        }
        line.push_str(text);
    });
    let micros = since_epoch.subsec_micros();
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(micros);
    line.push('.');
    line.push_str(&"000000"[digits.len()..]);
    line.push_str(digits);
    line.push('Z');
}

/// `seconds` since the Unix epoch as `YYYY-MM-DDTHH:MM:SS` (UTC), by the days-to-civil
/// algorithm (Howard Hinnant's `civil_from_days`).
fn write_date_time(out: &mut String, seconds: u64) -> fmt::Result {
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The text format's fields: `name=value`, separated by spaces; strings quoted and escaped as
/// Rust's `Debug` does, numbers bare, `%value` fields as their `Display` text.
struct TextFields<'a> {
    line: &'a mut String,
    first: bool,
}

impl TextFields<'_> {
    fn name(&mut self, field: &Field) {
        if !self.first {
            self.line.push(' ');
        }
        self.first = false;
        self.line.push_str(field.name());
        self.line.push('=');
    }
}

impl Visit for TextFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.name(field);
        // `Debug` of a string: quoted, and escaped only where a byte is not plain printable ASCII.
        if value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            self.line.push('"');
            self.line.push_str(value);
            self.line.push('"');
        } else {
            let _ = write!(self.line, "{value:?}");
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.name(field);
        let _ = write!(self.line, "{value:?}");
    }
}

/// The flattened JSON format's fields: `,"name":value` each, strings JSON-escaped, numbers bare,
/// `%value` fields as strings of their `Display` text.
struct JsonFields<'a> {
    line: &'a mut String,
}

impl JsonFields<'_> {
    fn name(&mut self, field: &Field) {
        self.line.push(',');
        json_string(self.line, field.name());
        self.line.push(':');
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.name(field);
        json_string(self.line, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.name(field);
        json_string(self.line, &format!("{value:?}"));
    }
}

/// `text` as a JSON string, escaped as `serde_json` escapes it.
fn json_string(line: &mut String, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        line.push('"');
        line.push_str(text);
        line.push('"');
    } else if let Ok(escaped) = serde_json::to_string(text) {
        line.push_str(&escaped);
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn client_addresses_are_displayed_as_ip_addr_displays_them() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
            "fe80::1:2",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ClientIp(ip).to_string(), ip.to_string());
        }
    }

    /// The access event as `Proxy::handle` logs it, with awkward strings in it.
    fn log_access_lines() {
        let ip = ClientIp(IpAddr::from([10, 1, 2, 3]));
        for (id, path) in [
            ("abc123", "/plain/path?x=1"),
            ("quo\"te", "/tab\there/ünïcode/\u{7f}/back\\slash"),
        ] {
            tracing::info!(
                target: ACCESS_LOG,
                request_id = id,
                client = %ip,
                method = %http::Method::GET,
                path,
                status = 200u16,
                backend = "localhost:6901",
                queued_us = 0u64,
                total_us = 1_234_567u64,
                bytes = 12u64,
            );
        }
        tracing::info!(target: ACCESS_LOG, "a message, not an access line");
    }

    /// The lines without their timestamps, which differ between two formatters' runs.
    fn without_timestamps(text: &str) -> Vec<String> {
        text.lines()
            .map(|line| {
                let at = match line.strip_prefix("{\"timestamp\":\"") {
                    Some(_) => "{\"timestamp\":\"".len(),
                    None => 0,
                };
                assert_timestamp(&line[at..at + 27]);
                format!("{}{}", &line[..at], &line[at + 27..])
            })
            .collect()
    }

    fn assert_timestamp(stamp: &str) {
        assert_eq!(stamp.len(), 27, "{stamp}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{stamp}"
        );
    }

    #[test]
    fn text_lines_are_the_general_formatters_byte_for_byte() {
        let (general, fast) = (Captured::default(), Captured::default());
        let subscriber = tracing_subscriber::fmt()
            .with_writer(general.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, log_access_lines);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(fast.clone())
            .with_ansi(false)
            .map_event_format(AccessFormat::text)
            .finish();
        tracing::subscriber::with_default(subscriber, log_access_lines);
        println!("{}", fast.text());
        assert_eq!(
            without_timestamps(&fast.text()),
            without_timestamps(&general.text())
        );
    }

    #[test]
    fn json_lines_are_the_general_formatters_byte_for_byte() {
        let (general, fast) = (Captured::default(), Captured::default());
        let subscriber = tracing_subscriber::fmt()
            .with_writer(general.clone())
            .json()
            .flatten_event(true)
            .finish();
        tracing::subscriber::with_default(subscriber, log_access_lines);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(fast.clone())
            .json()
            .flatten_event(true)
            .map_event_format(AccessFormat::json)
            .finish();
        tracing::subscriber::with_default(subscriber, log_access_lines);
        println!("{}", fast.text());
        assert_eq!(
            without_timestamps(&fast.text()),
            without_timestamps(&general.text())
        );
    }

    #[test]
    fn timestamps_follow_the_calendar() {
        let mut text = String::new();
        for (seconds, expected) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_796_528_814, "2026-12-06T03:46:54"),
            (4_107_542_399, "2100-02-28T23:59:59"),
        ] {
            text.clear();
            write_date_time(&mut text, seconds).unwrap();
            assert_eq!(text, expected, "{seconds}");
        }
        // Against the general formatter's clock, to the second (a tick may fall between).
        let mut general = String::new();
        tracing_subscriber::fmt::time::FormatTime::format_time(
            &tracing_subscriber::fmt::time::SystemTime,
            &mut Writer::new(&mut general),
        )
        .unwrap();
        let mut fast = String::new();
        timestamp(&mut fast);
        assert_eq!(fast.len(), general.len());
        assert_eq!(fast[..16], general[..16], "{fast} vs {general}");
    }
}
