//! Turns the raw files into a [`Config`], reporting every mistake with what to do about it.
//!
//! One file per config section: [`listen`], [`settings`] (the scalar sections `[queue]`,
//! `[limits]`, `[proxy]`, driven by [`crate::schema`]), [`admin`], [`log`], [`fleet`], [`upstreams`] and
//! [`routes`].

use std::ops::Range;

use toml::Spanned;

use crate::diagnostics::{closest, Diagnostic, Diagnostics, SourceFile};
use crate::model::{Config, Named, Settings};
use crate::raw::{RawLoadBalancer, RawRoute, Section};

mod admin;
mod fleet;
mod listen;
mod log;
mod routes;
mod settings;
mod upstreams;

/// The two input files, parsed.
pub struct Inputs<'a> {
    pub routes_file: &'a SourceFile,
    /// `None` when the file is not valid TOML (already reported).
    pub routes: Option<Vec<Spanned<Section<RawRoute>>>>,
    pub load_balancer_file: &'a SourceFile,
    /// `None` when the file is not valid TOML (already reported).
    pub load_balancer: Option<RawLoadBalancer>,
    /// Display name of the config directory: the certificate, key and admin token default to
    /// files in it.
    pub config_dir: &'a str,
}

/// Checks everything; the `Config` is only meaningful when `diagnostics` stayed empty.
/// `sources` and `config_hash` are left empty for the caller, who read the files.
pub fn validate(inputs: Inputs<'_>, diagnostics: &mut Diagnostics) -> Config {
    let mut checker = Checker {
        file: inputs.load_balancer_file,
        diagnostics,
    };
    let mut settings = Settings::defaults(inputs.config_dir);
    let (mut upstreams, mut backends) = (Vec::new(), Vec::new());
    if let Some(raw) = &inputs.load_balancer {
        checker.listen(&raw.listen, &mut settings.listen);
        checker.settings(&raw.settings, &mut settings);
        checker.admin(&raw.admin, &mut settings.admin, &settings.listen);
        checker.log(&raw.log, &mut settings.log);
        settings.fleet = raw.fleet.as_ref().and_then(|fleet| checker.fleet(fleet));
        (upstreams, backends) = checker.upstreams(&raw.upstreams);
    }

    checker.file = inputs.routes_file;
    let mut routes = Vec::new();
    if let Some(raw) = &inputs.routes {
        // Without a readable load-balancer file every upstream name would look unknown.
        let known = inputs
            .load_balancer
            .is_some()
            .then_some(upstreams.as_slice());
        routes = checker.routes(raw, known);
    }
    Config {
        sources: Vec::new(),
        config_hash: String::new(),
        backends,
        upstreams,
        routes,
        settings,
    }
}

/// Ids are `u16` newtypes in the generated table.
const MAX_IDS: usize = u16::MAX as usize + 1;

struct Checker<'a> {
    /// The file the spans being checked point into.
    file: &'a SourceFile,
    diagnostics: &'a mut Diagnostics,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: String, help: impl Into<String>) {
        self.diagnostics
            .push(Diagnostic::at(self.file, span, message, help.into()));
    }

    fn file_error(&mut self, message: String, help: impl Into<String>) {
        self.diagnostics
            .push(Diagnostic::file(&self.file.name, message, help.into()));
    }

    fn location(&self, span: &Range<usize>) -> String {
        self.file.location(span.start)
    }

    /// `key = "name"` for a setting with a fixed set of names. An unknown name is an error that
    /// guesses the closest known one, then lists the choices (`choices` describes them).
    fn named<T: Named>(
        &mut self,
        raw: &Spanned<String>,
        key: &str,
        what: &str,
        choices: &str,
    ) -> Option<T> {
        let name = raw.get_ref();
        if let Some(value) = T::from_name(name) {
            return Some(value);
        }
        let names: Vec<&str> = T::NAMES.iter().map(|(name, _)| *name).collect();
        let guess = closest(name, &names)
            .map_or_else(String::new, |known| format!("did you mean \"{known}\"? "));
        self.error(
            raw.span(),
            format!("`{key} = \"{name}\"` is not {what}"),
            format!("{guess}write {choices}"),
        );
        None
    }
}
