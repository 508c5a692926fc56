//! Raw request heads as hyper would parse them (httparse), then Juggler's smuggling checks: never
//! a panic, and the two rules they exist for always hold.
#![no_main]

use http::{HeaderName, HeaderValue, Request, Version};
use juggler::fuzzing::request_ambiguity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let mut fields = [httparse::EMPTY_HEADER; 100];
    let mut head = httparse::Request::new(&mut fields);
    let Ok(httparse::Status::Complete(_)) = head.parse(input) else {
        return;
    };
    let version = if head.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let mut builder = Request::builder()
        .method(head.method.unwrap_or("GET"))
        .uri(head.path.unwrap_or("/"))
        .version(version);
    for field in head.headers.iter() {
        // hyper refuses what `http` cannot hold; those never reach the checks.
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.as_bytes()),
            HeaderValue::from_bytes(field.value),
        ) else {
            return;
        };
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(()) else { return };
    let two_hosts = request.headers().get_all(http::header::HOST).iter().count() > 1;
    let only_chunked = request
        .headers()
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|line| line.as_bytes().split(|b| *b == b','))
        .map(|coding| coding.trim_ascii())
        .filter(|coding| !coding.is_empty())
        .all(|coding| coding.eq_ignore_ascii_case(b"chunked"));
    let verdict = request_ambiguity(request);
    if two_hosts {
        assert!(verdict.is_some(), "two Host headers passed");
    }
    if !only_chunked {
        assert!(verdict.is_some(), "a coding other than chunked passed");
    }
});
