//! The `Date` field of the responses Juggler dates itself (its own answers, and a backend's that
//! came undated), in both protocols.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::HeaderValue;

/// The current time as an HTTP date (`Sun, 06 Dec 2026 16:00:00 GMT`), formatted once a second
/// per thread.
pub(super) fn now() -> HeaderValue {
    thread_local! {
        static FORMATTED: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    FORMATTED.with_borrow_mut(|(at, value)| {
        if *at != second {
            *at = second;
            *value = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .expect("an HTTP date is a valid field value");
        }
        value.clone()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_date_is_an_http_date_of_now() {
        let value = super::now();
        let parsed = httpdate::parse_http_date(value.to_str().unwrap()).unwrap();
        let off = std::time::SystemTime::now()
            .duration_since(parsed)
            .unwrap_or_default();
        assert!(off < std::time::Duration::from_secs(2), "{value:?}");
    }
}
