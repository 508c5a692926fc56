//! `host:port` addresses of backend servers and listeners.

/// Why an address is malformed, and how to write it instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressError {
    pub message: String,
    pub help: String,
}

/// Whether port 0 ("any free port") makes sense: for a listener yes, for a backend never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortZero {
    Allowed,
    Refused,
}

/// Checks `host:port` (`localhost:6901`, `10.0.0.5:80`, `[::1]:8080`); returns the port.
pub fn check_address(text: &str, port_zero: PortZero) -> Result<u16, AddressError> {
    let fail = |message: String, help: &str| AddressError {
        message,
        help: help.to_string(),
    };
    if let Some((scheme, _)) = text.split_once("://") {
        return Err(fail(
            format!("`{text}` has a scheme (`{scheme}://`)"),
            "write only host:port, e.g. \"localhost:6901\"",
        ));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(fail(
            format!("`{text}` has no port"),
            "write host:port, e.g. \"localhost:6901\"",
        ));
    };
    if !host_is_valid(host) {
        return Err(fail(
            format!("`{host}` in `{text}` is not a host name or IP address"),
            "write a name such as `localhost` or `backend-1.internal`, an IPv4 address, or an IPv6 address in brackets (`[::1]`)",
        ));
    }
    let range = match port_zero {
        PortZero::Allowed => "0-65535 (0 picks a free port)",
        PortZero::Refused => "1-65535",
    };
    match port.parse::<u16>() {
        Ok(0) if port_zero == PortZero::Refused => Err(fail(
            format!("port 0 in `{text}` cannot be connected to"),
            "use the port the server listens on (1-65535)",
        )),
        Ok(port) => Ok(port),
        Err(_) => Err(fail(
            format!("`{port}` in `{text}` is not a port number"),
            &format!("a port is a whole number in {range}"),
        )),
    }
}

fn host_is_valid(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_ipv4_and_bracketed_ipv6() {
        for good in [
            "localhost:6901",
            "10.0.0.5:80",
            "[::1]:8080",
            "a-b.example:65535",
        ] {
            assert!(check_address(good, PortZero::Refused).is_ok(), "{good}");
        }
        assert_eq!(check_address("0.0.0.0:0", PortZero::Allowed), Ok(0));
    }

    #[test]
    fn refuses_missing_or_bad_parts() {
        for bad in [
            "localhost",
            ":80",
            "localhost:",
            "localhost:0",
            "localhost:65536",
            "http://a:80",
            "a b:80",
            "::1:80",
            "host:80x",
        ] {
            assert!(check_address(bad, PortZero::Refused).is_err(), "{bad}");
        }
    }
}
