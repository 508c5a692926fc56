//! The access-log line: one per request, formatted straight into the thread's log buffer.
//!
//! Measured with callgrind (issue 18), the access log cost about 4,300 instructions per request
//! even with the line formatted by hand: the `tracing` event around it (dispatch, a visitor call
//! per field, the formatter's own line buffer, a copy into the log buffer). [`AccessLine::log`]
//! skips all of that where the subscriber is the binary's: when the thread's `tracing`
//! subscriber formats events with [`AccessFormat`] (colourless) and writes them to a
//! [`LogBuffer`], the line is written into that thread's buffer directly, numbers by `itoa`, the
//! timestamp's date and time to the second reused within its second. Under any other subscriber
//! (colours on, a test's own formatter) the line goes out as the `tracing` event it always was,
//! so the general formatter writes it. The tests compare both ways byte for byte.
//!
//! Whether a line is written at all is `RUST_LOG`'s decision, as for any event:
//! [`AccessLine::enabled`] asks `tracing`, whose per-callsite cache answers from the filter
//! without consulting it again until the set of subscribers changes.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::callsite::{Callsite as _, DefaultCallsite, Identifier};
use tracing::field::FieldSet;
use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
use tracing::metadata::Kind;
use tracing::{Dispatch, Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Json, Writer};
use tracing_subscriber::fmt::time::SystemTime as SystemClock;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::LogBuffer;

/// The `tracing` target of the one-line-per-request access log: `RUST_LOG` turns it on and off
/// (`juggler::access=off`), and lines written without an event still carry it.
pub const ACCESS_LOG: &str = "juggler::access";

/// What the access log says about one request, in the order its line says it.
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub client: IpAddr,
    pub method: &'a http::Method,
    pub path: &'a str,
    pub status: u16,
    /// The backend's `host:port`, empty when none was tried.
    pub backend: &'a str,
    /// The backend's usable slots when it answered: n, or less during slow start or under the
    /// adaptive limit.
    pub backend_limit: usize,
    pub queued_us: u64,
    pub total_us: u64,
    /// The response body's length, 0 when not known in advance.
    pub bytes: u64,
}

/// The callsite [`AccessLine::enabled`] asks about: registered with `tracing` on first use, it
/// keeps the subscribers' interest in the access log's target until they change. Written out
/// rather than by `tracing::callsite!`, which registers again (a compare-and-swap) every call.
static ACCESS_CALLSITE: DefaultCallsite = DefaultCallsite::new(&ACCESS_METADATA);
static ACCESS_METADATA: Metadata<'static> = Metadata::new(
    "access line",
    ACCESS_LOG,
    Level::INFO,
    Some(file!()),
    Some(line!()),
    Some(module_path!()),
    FieldSet::new(&[], Identifier(&ACCESS_CALLSITE)),
    Kind::EVENT,
);

/// The line's fields in order, as `name: Kind(value)` for `$line` (an [`AccessLine`]): the one
/// list the text line, the JSON line and the `tracing` event are written from, each by a macro
/// of its own that `$write!` names and that gets the list as its arguments.
macro_rules! access_fields {
    ($line:expr, $write:ident!()) => {
        $write!(
            request_id: Str($line.request_id),
            client: Ip($line.client),
            method: Shown($line.method.as_str()),
            path: Str($line.path),
            status: Number(u64::from($line.status)),
            backend: Str($line.backend),
            backend_limit: Number($line.backend_limit as u64),
            queued_us: Number($line.queued_us),
            total_us: Number($line.total_us),
            bytes: Number($line.bytes)
        )
    };
}

impl AccessLine<'_> {
    /// Whether `RUST_LOG` lets the access log through: asked once per request, before anything
    /// is gathered for its line. Decided as `tracing::info!` decides for its event: where the
    /// callsite's cached interest is "always" (the filter lets the target through whatever the
    /// context), the subscriber is not asked again. (`tracing::enabled!` asks it every time: the
    /// filter's directives matched against the target on every request.)
    pub fn enabled() -> bool {
        if Level::INFO > STATIC_MAX_LEVEL || Level::INFO > LevelFilter::current() {
            return false;
        }
        let interest = ACCESS_CALLSITE.interest();
        interest.is_always()
            || (!interest.is_never()
                && tracing::dispatcher::get_default(|dispatch| {
                    dispatch.enabled(ACCESS_CALLSITE.metadata())
                }))
    }

    /// Writes the line where this thread's subscriber writes its events (the caller has asked
    /// [`AccessLine::enabled`]).
    pub fn log(&self) {
        let written = tracing::dispatcher::get_default(|dispatch| {
            let (Some(style), Some(buffer)) =
                (direct_style(dispatch), dispatch.downcast_ref::<LogBuffer>())
            else {
                return false;
            };
            buffer.append_line(|out| self.write(style, out));
            true
        });
        if !written {
            self.emit_event();
        }
    }

    /// The line as a `tracing` event, for a subscriber this module does not write for: the
    /// fields of [`access_fields!`], in its order.
    fn emit_event(&self) {
        macro_rules! event {
            ($($name:ident: $kind:ident($value:expr)),*) => {
                tracing::info!(target: ACCESS_LOG, $($name = event_value!($kind, $value)),*)
            };
        }
        /// A value as the event records it: strings and numbers as they are, the others by
        /// their `Display` (a `%value` field).
        macro_rules! event_value {
            (Str, $value:expr) => {
                $value
            };
            (Number, $value:expr) => {
                $value
            };
            (Shown, $value:expr) => {
                tracing::field::display($value)
            };
            (Ip, $value:expr) => {
                tracing::field::display($value)
            };
        }
        access_fields!(self, event!());
    }

    /// The whole line, as `tracing_subscriber`'s default text format or its flattened JSON
    /// format writes the event of [`AccessLine::emit_event`]. Each field is written by code of
    /// its own, so the names and separators are copies of known length the compiler inlines
    /// (looping over the fields, every copy was a call to `memcpy`).
    fn write(&self, style: Style, out: &mut Vec<u8>) {
        match style {
            Style::Text => {
                // `2026-12-06T03:46:54.761215Z  INFO juggler::access: request_id="…" client=…`
                macro_rules! text {
                    ($($name:ident: $kind:ident($value:expr)),*) => {$(
                        out.extend_from_slice(concat!(" ", stringify!($name), "=").as_bytes());
                        Value::$kind($value).write_text(out);
                    )*};
                }
                timestamp(out);
                // The level right-aligned in five columns, as `{:>5}`.
                out.extend_from_slice(b"  INFO ");
                out.extend_from_slice(ACCESS_LOG.as_bytes());
                out.extend_from_slice(b":");
                access_fields!(self, text!());
                out.push(b'\n');
            }
            Style::Json => {
                // `{"timestamp":"…","level":"INFO","request_id":"…",…,"target":"juggler::access"}`
                macro_rules! json {
                    ($($name:ident: $kind:ident($value:expr)),*) => {$(
                        out.extend_from_slice(concat!(",\"", stringify!($name), "\":").as_bytes());
                        Value::$kind($value).write_json(out);
                    )*};
                }
                out.extend_from_slice(b"{\"timestamp\":\"");
                timestamp(out);
                out.extend_from_slice(b"\",\"level\":\"INFO\"");
                access_fields!(self, json!());
                out.extend_from_slice(b",\"target\":");
                json_string(out, ACCESS_LOG);
                out.extend_from_slice(b"}\n");
            }
        }
    }
}

/// A field's value, as the formatters tell them apart.
#[derive(Clone, Copy)]
enum Value<'a> {
    /// A string: quoted and escaped as `Debug` escapes it in text, a JSON string in JSON.
    Str(&'a str),
    /// A `%value` field's `Display` text: bare in text, a JSON string in JSON.
    Shown(&'a str),
    /// The client's address, a `%value` field too.
    Ip(IpAddr),
    /// Bare in both.
    Number(u64),
}

impl Value<'_> {
    // Inlined where the variant is known, so that only its arm is left.
    #[inline(always)]
    fn write_text(self, out: &mut Vec<u8>) {
        match self {
            Value::Str(text) => debug_string(out, text),
            Value::Shown(text) => out.extend_from_slice(text.as_bytes()),
            Value::Ip(ip) => write_ip(out, ip),
            Value::Number(number) => {
                out.extend_from_slice(itoa::Buffer::new().format(number).as_bytes())
            }
        }
    }

    #[inline(always)]
    fn write_json(self, out: &mut Vec<u8>) {
        match self {
            Value::Str(text) | Value::Shown(text) => json_string(out, text),
            // Digits, dots, hex digits and colons: nothing to escape.
            Value::Ip(ip) => {
                out.push(b'"');
                write_ip(out, ip);
                out.push(b'"');
            }
            Value::Number(number) => {
                out.extend_from_slice(itoa::Buffer::new().format(number).as_bytes())
            }
        }
    }
}

/// The client's address as `IpAddr`'s `Display` writes it; an IPv4 address from [`OCTETS`]
/// rather than `core::fmt`'s four calls, one per octet (a thousand instructions a line), or
/// four `itoa` calls and their copies of unknown length.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = [0; 16];
            let mut len = 0;
            for octet in v4.octets() {
                let (digits, digits_len) = OCTETS[usize::from(octet)];
                // Four bytes whatever the octet's length: a copy of known size, no call.
                text[len..len + 4].copy_from_slice(&digits);
                len += usize::from(digits_len);
            }
            // Without the last octet's dot.
            out.extend_from_slice(&text[..len - 1]);
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Each octet's decimal text and a dot after it (`"10."`), padded to four bytes, with the
/// length of the text and dot.
static OCTETS: [([u8; 4], u8); 256] = {
    let mut octets = [([0; 4], 0); 256];
    let mut octet = 0;
    while octet < 256 {
        octets[octet] = if octet >= 100 {
            (
                [digit(octet / 100), digit(octet / 10), digit(octet), b'.'],
                4,
            )
        } else if octet >= 10 {
            ([digit(octet / 10), digit(octet), b'.', 0], 3)
        } else {
            ([digit(octet), b'.', 0, 0], 2)
        };
        octet += 1;
    }
    octets
};

/// The last decimal digit of `value`, as text.
const fn digit(value: usize) -> u8 {
    b'0' + (value % 10) as u8
}

/// The event formatter for `tracing_subscriber::fmt` in the binary (and in tests that log as it
/// does): it formats every event as the `general` format it wraps, which must be the default
/// `Full` text format or the JSON format with `flatten_event(true)`; finding it in the
/// subscriber, [`AccessLine::log`] writes access lines itself, the same bytes.
pub struct AccessFormat<F> {
    general: F,
    /// How access lines are written without an event; `None` leaves them to `general` (colours).
    direct: Option<Style>,
}

#[derive(Clone, Copy)]
enum Style {
    Text,
    Json,
}

impl<F> AccessFormat<F> {
    /// Wraps `tracing_subscriber`'s default text format, without colours (see [`Self::with_ansi`]).
    pub fn text(general: F) -> AccessFormat<F> {
        AccessFormat {
            general,
            direct: Some(Style::Text),
        }
    }

    /// Wraps `tracing_subscriber`'s JSON format with `flatten_event(true)`.
    pub fn json(general: F) -> AccessFormat<F> {
        AccessFormat {
            general,
            direct: Some(Style::Json),
        }
    }

    /// Whether the subscriber writes colour codes (its own `with_ansi`): then text access lines
    /// are left to the general formatter, which colours them.
    pub fn with_ansi(self, ansi: bool) -> AccessFormat<F> {
        AccessFormat {
            direct: self
                .direct
                .filter(|style| !ansi || matches!(style, Style::Json)),
            ..self
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
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        self.general.format_event(ctx, writer, event)
    }
}

/// How this subscriber would format the access event, when [`AccessLine::write`] can write the
/// same bytes: it formats with an [`AccessFormat`] around one of the two formats `main` uses.
/// (Juggler opens no spans, so no line is inside one, where the general formatter would add the
/// span.)
fn direct_style(dispatch: &Dispatch) -> Option<Style> {
    if let Some(format) = dispatch.downcast_ref::<AccessFormat<Format<Full, SystemClock>>>() {
        return format.direct;
    }
    dispatch
        .downcast_ref::<AccessFormat<Format<Json, SystemClock>>>()
        .and_then(|format| format.direct)
}

thread_local! {
    /// The second the thread's last timestamp was in and its date and time to the second
    /// (`2026-12-06T03:46:54`): the calendar arithmetic runs once a second per thread rather
    /// than once a line, and the text is copied as bytes of known length.
    static SECOND: Cell<(u64, [u8; DATE_TIME_LEN])> =
        const { Cell::new((u64::MAX, [0; DATE_TIME_LEN])) };
}

/// `2026-12-06T03:46:54`: 19 bytes until the year 10000.
const DATE_TIME_LEN: usize = 19;

/// `2026-12-06T03:46:54.761215Z`, as `tracing_subscriber`'s `SystemTime` writes it.
fn timestamp(out: &mut Vec<u8>) {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let fraction = fraction(since_epoch.subsec_micros());
    let date_time = match SECOND.get() {
        (cached, date_time) if cached == seconds => date_time,
        _ => {
            let mut text = String::with_capacity(DATE_TIME_LEN);
            let _ = write_date_time(&mut text, seconds);
            let Ok(date_time) = <[u8; DATE_TIME_LEN]>::try_from(text.as_bytes()) else {
                // Past the year 9999: longer, written as it is and not kept.
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(&fraction);
                return;
            };
            SECOND.set((seconds, date_time));
            date_time
        }
    };
    out.extend_from_slice(&date_time);
    out.extend_from_slice(&fraction);
}

/// `.761215Z`: the microseconds (below a million) in six digits, as `{:06}`, two at a time.
fn fraction(micros: u32) -> [u8; 8] {
    let micros = micros as usize;
    let [a, b] = DECIMAL_PAIRS[micros / 10_000 % 100];
    let [c, d] = DECIMAL_PAIRS[micros / 100 % 100];
    let [e, f] = DECIMAL_PAIRS[micros % 100];
    [b'.', a, b, c, d, e, f, b'Z']
}

/// The numbers 0 to 99 as two decimal digits each.
static DECIMAL_PAIRS: [[u8; 2]; 100] = {
    let mut pairs = [[0; 2]; 100];
    let mut number = 0;
    while number < 100 {
        pairs[number] = [b'0' + (number / 10) as u8, b'0' + (number % 10) as u8];
        number += 1;
    }
    pairs
};

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

/// For each byte, whether a string holding it is written as it is: by `Debug` (printable ASCII
/// but `"` and `\\`) and by JSON (anything from space up but `"` and `\\`). One lookup a byte
/// rather than four comparisons: the path is scanned on every line.
const PLAIN: [u8; 256] = {
    let mut plain = [0; 256];
    let mut byte = 0x20;
    while byte < 256 {
        if byte != b'"' as usize && byte != b'\\' as usize {
            plain[byte] = JSON_PLAIN | if byte < 0x7f { DEBUG_PLAIN } else { 0 };
        }
        byte += 1;
    }
    plain
};
const DEBUG_PLAIN: u8 = 1;
const JSON_PLAIN: u8 = 2;

/// `text` as Rust's `Debug` writes a string (the text format's string fields): quoted, escaped
/// only where a byte is not plain printable ASCII.
fn debug_string(out: &mut Vec<u8>, text: &str) {
    quoted(out, text, DEBUG_PLAIN, |out, text| {
        let _ = write!(out, "{text:?}");
    });
}

/// `text` as a JSON string, escaped as `serde_json` escapes it.
fn json_string(out: &mut Vec<u8>, text: &str) {
    quoted(out, text, JSON_PLAIN, |out, text| {
        let _ = serde_json::to_writer(out, text);
    });
}

/// `text` in quotes as it is when every byte is plain for the format (`plain`, one bit of
/// [`PLAIN`]), else as `escaped` writes it.
fn quoted(out: &mut Vec<u8>, text: &str, plain: u8, escaped: impl FnOnce(&mut Vec<u8>, &str)) {
    if text.bytes().all(|b| PLAIN[usize::from(b)] & plain != 0) {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        escaped(out, text);
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

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

    /// A buffer over `sink` that writes only when flushed.
    fn buffer_over(sink: &Captured) -> LogBuffer {
        LogBuffer::new(sink.clone(), usize::MAX, 1 << 16, Duration::from_secs(3600)).unwrap()
    }

    #[test]
    fn client_addresses_are_displayed_as_ip_addr_displays_them() {
        let every_octet = (0..=255).map(|octet| IpAddr::from([octet, 7, 255 - octet, octet]));
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "9.99.100.249",
            "1.10.200.255",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
            "fe80::1:2",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
        ]
        .map(|ip| ip.parse().unwrap())
        .into_iter()
        .chain(every_octet)
        {
            let mut shown = Vec::new();
            write_ip(&mut shown, ip);
            assert_eq!(String::from_utf8(shown).unwrap(), ip.to_string());
        }
    }

    /// Access lines as `Proxy::handle` logs them, with awkward strings in some, each way the
    /// thread's subscriber has it written; whether this subscriber has them written directly.
    fn log_access_lines() -> bool {
        for (request_id, client, path, backend) in [
            ("abc123", "10.1.2.3", "/plain/path?x=1", "localhost:6901"),
            (
                "quo\"te",
                "fe80::1:2",
                "/tab\there/ünïcode/\u{7f}/back\\slash",
                "",
            ),
        ] {
            if AccessLine::enabled() {
                AccessLine {
                    request_id,
                    client: client.parse().unwrap(),
                    method: &http::Method::GET,
                    path,
                    status: 200,
                    backend,
                    backend_limit: 8,
                    queued_us: 0,
                    total_us: 1_234_567,
                    bytes: 12,
                }
                .log();
            }
        }
        tracing::dispatcher::get_default(|dispatch| {
            direct_style(dispatch).is_some() && dispatch.downcast_ref::<LogBuffer>().is_some()
        })
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
        let (general, direct) = (Captured::default(), Captured::default());
        let subscriber = tracing_subscriber::fmt()
            .with_writer(general.clone())
            .with_ansi(false)
            .finish();
        let by_event = tracing::subscriber::with_default(subscriber, log_access_lines);
        let buffer = buffer_over(&direct);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(false)
            .map_event_format(AccessFormat::text)
            .finish();
        let by_hand = tracing::subscriber::with_default(subscriber, log_access_lines);
        buffer.flush();
        println!("{}", direct.text());
        assert!(!by_event && by_hand);
        assert_eq!(direct.text().lines().count(), 2);
        assert_eq!(
            without_timestamps(&direct.text()),
            without_timestamps(&general.text())
        );
    }

    #[test]
    fn json_lines_are_the_general_formatters_byte_for_byte() {
        let (general, direct) = (Captured::default(), Captured::default());
        let subscriber = tracing_subscriber::fmt()
            .with_writer(general.clone())
            .json()
            .flatten_event(true)
            .finish();
        let by_event = tracing::subscriber::with_default(subscriber, log_access_lines);
        let buffer = buffer_over(&direct);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .json()
            .flatten_event(true)
            .map_event_format(AccessFormat::json)
            .finish();
        let by_hand = tracing::subscriber::with_default(subscriber, log_access_lines);
        buffer.flush();
        println!("{}", direct.text());
        assert!(!by_event && by_hand);
        assert_eq!(direct.text().lines().count(), 2);
        assert_eq!(
            without_timestamps(&direct.text()),
            without_timestamps(&general.text())
        );
    }

    /// With colours on, or the access target filtered out, no line is written by hand: the
    /// general formatter colours it, the filter drops it.
    #[test]
    fn colours_and_the_filter_are_left_to_the_subscriber() {
        let coloured = Captured::default();
        let buffer = buffer_over(&coloured);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(true)
            .map_event_format(|general| AccessFormat::text(general).with_ansi(true))
            .finish();
        let by_hand = tracing::subscriber::with_default(subscriber, log_access_lines);
        buffer.flush();
        assert!(!by_hand);
        assert!(coloured.text().contains("\x1b["), "{}", coloured.text());
        assert_eq!(coloured.text().lines().count(), 2);

        let filtered = Captured::default();
        let buffer = buffer_over(&filtered);
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("info,juggler::access=off")
            .with_writer(buffer.clone())
            .with_ansi(false)
            .map_event_format(AccessFormat::text)
            .finish();
        let by_hand = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not an access line");
            log_access_lines()
        });
        buffer.flush();
        assert!(by_hand);
        assert_eq!(filtered.text().lines().count(), 1, "{}", filtered.text());
    }

    #[test]
    fn strings_are_escaped_as_debug_and_serde_json_escape_them() {
        let mut texts: Vec<String> = (0..=0x7fu8)
            .map(|b| format!("a{}z", char::from(b)))
            .collect();
        texts.extend(["", "plain/path?x=1", "ünïcode", "\u{80}\u{a0}\u{2028}"].map(String::from));
        for text in texts {
            let (mut debug, mut json) = (Vec::new(), Vec::new());
            debug_string(&mut debug, &text);
            json_string(&mut json, &text);
            assert_eq!(String::from_utf8(debug).unwrap(), format!("{text:?}"));
            assert_eq!(
                String::from_utf8(json).unwrap(),
                serde_json::to_string(&text).unwrap()
            );
        }
    }

    #[test]
    fn fractions_are_six_digits() {
        for micros in [0, 7, 10, 99, 100, 4_560, 10_000, 123_456, 999_999] {
            assert_eq!(fraction(micros), *format!(".{micros:06}Z").as_bytes());
        }
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
            &SystemClock,
            &mut Writer::new(&mut general),
        )
        .unwrap();
        let mut direct = Vec::new();
        timestamp(&mut direct);
        let direct = String::from_utf8(direct).unwrap();
        assert_eq!(direct.len(), general.len());
        assert_eq!(direct[..16], general[..16], "{direct} vs {general}");
        assert!(
            direct[19..20] == *"." && direct[20..26].bytes().all(|b| b.is_ascii_digit()),
            "{direct}"
        );
    }
}
