//! `[admin]`: the operators' listener (metrics, status page, drain API) and the file holding the
//! bearer token its mutating endpoints require.
//!
//! Any `host:port` is accepted, a public one too: binding the admin listener to every interface is
//! the operator's call (the shipped default is loopback). Only an address one of the client
//! listeners already uses is refused, since the two binds could never both succeed.

use toml::Spanned;

use super::Checker;
use crate::address::{check_address, PortZero};
use crate::model::{Admin, Listen};
use crate::raw::RawAdmin;

impl Checker<'_> {
    /// Checks `[admin]` against the final `[listen]` (checked before it).
    pub(super) fn admin(&mut self, raw: &RawAdmin, admin: &mut Admin, listen: &Listen) {
        if let Some(address) = &raw.listen {
            admin.listen = self.admin_address(address, listen);
        }
        if let Some(token_file) = &raw.token_file {
            if token_file.get_ref().trim().is_empty() {
                self.error(
                    token_file.span(),
                    "`token_file` in [admin] is empty".to_string(),
                    "name a file, relative to the directory Juggler runs in, e.g. \"juggler_config/admin.token\"",
                );
            }
            admin.token_file = token_file.get_ref().clone();
        }
    }

    /// `None` for `"off"`; the address otherwise, reported if it is malformed or taken.
    fn admin_address(&mut self, raw: &Spanned<String>, listen: &Listen) -> Option<String> {
        let text = raw.get_ref();
        if text == "off" {
            return None;
        }
        let port = match check_address(text, PortZero::Allowed) {
            Ok(port) => port,
            Err(error) => {
                self.error(
                    raw.span(),
                    format!("bad `admin.listen` address: {}", error.message),
                    format!("{}, or \"off\" to disable the admin listener", error.help),
                );
                return Some(text.clone());
            }
        };
        // Port 0 picks a free port at each bind, so two such listeners never collide.
        let taken_by = [("http", &listen.http), ("https", &listen.https)]
            .into_iter()
            .find(|(_, address)| address.as_deref() == Some(text.as_str()))
            .map(|(key, _)| key);
        if let Some(key) = taken_by.filter(|_| port != 0) {
            self.error(
                raw.span(),
                format!("`admin.listen` uses the same address as `listen.{key}` ({text})"),
                "give the admin listener its own port, e.g. \"127.0.0.1:9901\"",
            );
        }
        Some(text.clone())
    }
}
