//! Durations (`"250ms"`, `"10s"`, `"2m"`) and byte sizes (`16384`, `"16KiB"`) as written in the config.

use std::time::Duration;

const DURATION_UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)];
const SIZE_UNITS: [(&str, u64); 4] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
];

pub const DURATION_HELP: &str =
    "write a whole number with a unit: \"250ms\", \"10s\", \"2m\" or \"1h\"";
pub const SIZE_HELP: &str =
    "write a number of bytes (16384) or a whole number with a unit: \"512B\", \"16KiB\", \"1MiB\", \"1GiB\"";

/// `"10s"` → 10 seconds; `None` if the text is not a whole number followed by a known unit.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let millis = parse_with_units(text, &DURATION_UNITS)?;
    Some(Duration::from_millis(millis))
}

/// `"16KiB"` → 16384; `None` if the text is not a whole number followed by a known unit.
pub fn parse_size(text: &str) -> Option<u64> {
    parse_with_units(text, &SIZE_UNITS)
}

fn parse_with_units(text: &str, units: &[(&str, u64)]) -> Option<u64> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number.parse().ok()?;
    let (_, scale) = units.iter().find(|(name, _)| *name == unit.trim_start())?;
    number.checked_mul(*scale)
}

/// A duration the way an operator would write it back: `"10s"`, `"250ms"`.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    match millis {
        0 => "0s".to_string(),
        _ if millis % 3_600_000 == 0 => format!("{}h", millis / 3_600_000),
        _ if millis % 60_000 == 0 => format!("{}m", millis / 60_000),
        _ if millis % 1000 == 0 => format!("{}s", millis / 1000),
        _ => format!("{millis}ms"),
    }
}

/// A size the way an operator would write it back: `"16KiB"`, `"100B"`.
pub fn format_size(bytes: u64) -> String {
    SIZE_UNITS
        .iter()
        .rev()
        .find(|(_, scale)| bytes != 0 && bytes % scale == 0)
        .map_or_else(
            || format!("{bytes}B"),
            |(name, scale)| format!("{}{name}", bytes / scale),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_known_unit() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("10 sec"), None);
        assert_eq!(parse_duration("1.5s"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(parse_size("16KiB"), Some(16384));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("512B"), Some(512));
        assert_eq!(parse_size("16kb"), None);
        assert_eq!(parse_size("99999999999999999999GiB"), None);
    }

    #[test]
    fn formatting_picks_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_size(16 * 1024 * 1024), "16MiB");
        assert_eq!(format_size(1000), "1000B");
    }
}
