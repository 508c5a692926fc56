//! `[listen]`: the two listener addresses, the TLS mode, certificate and key, whether plain
//! HTTP redirects to HTTPS, and the networks trusted to send PROXY protocol headers. Unlike the
//! scalar sections these keys depend on each other.

use juggler_config::network::IpNetwork;
use toml::Spanned;

use super::Checker;
use crate::address::{check_address, PortZero};
use crate::model::{Listen, TlsMode};
use crate::raw::RawListen;

impl Checker<'_> {
    pub(super) fn listen(&mut self, raw: &RawListen, listen: &mut Listen) {
        if let Some(http) = &raw.http {
            listen.http = self.listen_address("http", http);
        }
        if let Some(https) = &raw.https {
            listen.https = self.listen_address("https", https);
        }
        if let Some(tls) = &raw.tls {
            listen.tls = self
                .named(
                    tls,
                    "tls",
                    "a TLS mode",
                    "\"auto\" (HTTPS when the cert and key exist at start-up), \"on\" or \"off\"",
                )
                .unwrap_or(listen.tls);
        }
        for (key, raw_path, path) in [
            ("tls_cert", &raw.tls_cert, &mut listen.tls_cert),
            ("tls_key", &raw.tls_key, &mut listen.tls_key),
        ] {
            if let Some(raw_path) = raw_path {
                if raw_path.get_ref().trim().is_empty() {
                    self.error(
                        raw_path.span(),
                        format!("`{key}` is empty"),
                        "name a PEM file, relative to the directory Juggler runs in",
                    );
                }
                *path = raw_path.get_ref().clone();
            }
        }
        if let Some(redirect) = &raw.redirect_http_to_https {
            listen.redirect_http_to_https = *redirect.get_ref();
            let https_possible = listen.https.is_some() && listen.tls != TlsMode::Off;
            if *redirect.get_ref() && !https_possible {
                self.error(
                    redirect.span(),
                    "`redirect_http_to_https = true` but HTTPS is off".to_string(),
                    "set `https` to an address and `tls` to \"auto\" or \"on\", or drop the redirect",
                );
            }
        }
        if let Some(networks) = &raw.proxy_protocol_from {
            listen.proxy_protocol_from = networks
                .get_ref()
                .iter()
                .filter_map(|network| self.proxy_network(network))
                .collect();
        }
        if let (Some(http), Some(https)) = (&raw.http, &raw.https) {
            if listen.http.is_none() && listen.https.is_none() {
                self.error(
                    https.span(),
                    "both listeners are \"off\": Juggler would accept no connections".to_string(),
                    "give `http` or `https` an address such as \"0.0.0.0:8080\"",
                );
            } else if listen.http.is_some() && listen.http == listen.https {
                self.error(
                    https.span(),
                    format!(
                        "`https` uses the same address as `http` ({})",
                        http.get_ref()
                    ),
                    "give each listener its own port",
                );
            }
        }
    }

    fn proxy_network(&mut self, raw: &Spanned<String>) -> Option<IpNetwork> {
        match IpNetwork::parse(raw.get_ref()) {
            Ok(network) => Some(network),
            Err(message) => {
                self.error(
                    raw.span(),
                    format!("bad `proxy_protocol_from` network: {message}"),
                    "write a network in CIDR notation, such as \"10.0.0.0/8\" or \"fd00::/8\"",
                );
                None
            }
        }
    }

    fn listen_address(&mut self, key: &str, raw: &Spanned<String>) -> Option<String> {
        let text = raw.get_ref();
        if text == "off" {
            return None;
        }
        if let Err(error) = check_address(text, PortZero::Allowed) {
            self.error(
                raw.span(),
                format!("bad `{key}` listen address: {}", error.message),
                format!("{}, or \"off\" to disable this listener", error.help),
            );
        }
        Some(text.clone())
    }
}
