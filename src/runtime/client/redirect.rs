//! The plain listener's answer when `listen.redirect_http_to_https` is on: a `308` to the same
//! host, path and query on the HTTPS listener, so a client that typed `http://` ends up on TLS.
//!
//! `308` rather than `301`: clients must repeat the same method and body, so a POST stays a POST.

use http::uri::Authority;
use http::{header, HeaderValue, Response, StatusCode};

use crate::backend::ResponseBody;
use crate::proxy::request::RequestHead;
use crate::proxy::text_response;

/// The answer to the request `head` on the plain listener: `308 Permanent Redirect` with
/// `Location: https://<host><:https_port unless 443><path and query>`.
///
/// The host is the one the client asked for (the absolute-form target's authority if it sent
/// one, else the `Host` header) without its port, since the plain port means nothing on the
/// HTTPS side. A request that names no usable host cannot be redirected and gets `400`.
pub(crate) fn https_redirect(head: &impl RequestHead, https_port: u16) -> Response<ResponseBody> {
    let Some(location) = https_location(head, https_port) else {
        return text_response(
            StatusCode::BAD_REQUEST,
            "a Host header is required to redirect to HTTPS\n",
        );
    };
    let mut response = text_response(StatusCode::PERMANENT_REDIRECT, "moved to HTTPS\n");
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// The `Location` for [`https_redirect`], or `None` when the request names no valid host.
fn https_location(head: &impl RequestHead, https_port: u16) -> Option<HeaderValue> {
    let host = requested_host(head)?;
    // `OPTIONS *` (asterisk form) has no path to keep; the site root is the closest thing.
    let path_and_query = Some(head.path_and_query())
        .filter(|target| target.starts_with('/'))
        .unwrap_or("/");
    let location = if https_port == 443 {
        format!("https://{host}{path_and_query}")
    } else {
        format!("https://{host}:{https_port}{path_and_query}")
    };
    // Every piece came out of a parsed URI or authority, so this only fails on bytes the
    // parsers let through that a header value cannot carry; treat that as no valid host.
    HeaderValue::from_str(&location).ok()
}

/// The host (without port) the client addressed. RFC 9112 §3.2.2: an absolute-form target's
/// authority wins over `Host`.
fn requested_host(head: &impl RequestHead) -> Option<String> {
    let authority = head.authority().or_else(|| head.field_text("host"))?;
    let authority = authority.parse::<Authority>().ok()?;
    // `Host` is `uri-host [":" port]`: user information there is malformed, and redirecting
    // to it would put credentials into the client's next request line.
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return None;
    }
    Some(authority.host().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::request::Parts;
    use http::{Method, Request};
    use http_body_util::BodyExt;

    fn request(method: Method, target: &str, host: Option<&str>) -> Parts {
        let mut builder = Request::builder().method(method).uri(target);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn location(response: &Response<ResponseBody>) -> Option<&str> {
        response
            .headers()
            .get(header::LOCATION)
            .map(|value| value.to_str().unwrap())
    }

    #[test]
    fn redirects_to_the_same_host_path_and_query_on_the_https_port() {
        let cases = [
            // (target, Host, HTTPS port, expected Location)
            (
                "/test.txt",
                Some("localhost:8080"),
                8443,
                "https://localhost:8443/test.txt",
            ),
            (
                "/a/b?x=1&y=%20",
                Some("example.test"),
                443,
                "https://example.test/a/b?x=1&y=%20",
            ),
            ("/", Some("example.test:80"), 443, "https://example.test/"),
            ("/v6", Some("[::1]:8080"), 8443, "https://[::1]:8443/v6"),
            ("/ip", Some("127.0.0.1"), 8443, "https://127.0.0.1:8443/ip"),
            // Absolute form: its authority wins over Host.
            (
                "http://other.test:81/x?q",
                Some("ignored.test"),
                8443,
                "https://other.test:8443/x?q",
            ),
            ("*", Some("example.test"), 443, "https://example.test/"),
        ];
        for (target, host, port, expected) in cases {
            let method = if target == "*" {
                Method::OPTIONS
            } else {
                Method::GET
            };
            let response = https_redirect(&request(method, target, host), port);
            assert_eq!(
                response.status(),
                StatusCode::PERMANENT_REDIRECT,
                "{target}"
            );
            assert_eq!(location(&response), Some(expected), "{target} {host:?}");
        }
    }

    #[test]
    fn method_is_kept_by_using_308() {
        let response = https_redirect(&request(Method::POST, "/form", Some("example.test")), 8443);
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(location(&response), Some("https://example.test:8443/form"));
    }

    #[test]
    fn no_usable_host_is_a_bad_request() {
        for host in [None, Some(""), Some("bad host"), Some("user@evil.test")] {
            let response = https_redirect(&request(Method::GET, "/x", host), 8443);
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{host:?}");
            assert_eq!(location(&response), None, "{host:?}");
        }
    }

    #[tokio::test]
    async fn body_says_where_the_content_went() {
        let response = https_redirect(&request(Method::GET, "/", Some("a.test")), 8443);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"moved to HTTPS\n");
    }
}
