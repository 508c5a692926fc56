//! Build-time code generation for Juggler: `routes.toml` + `juggler_config/load_balancer.toml`
//! → `distributer.rs`, a static `juggler::table::RouteTable` and its `match_route` function.
//!
//! # Layout
//! - [`raw`]: the files as written, every value with its byte span (serde + toml's spanned tree).
//! - [`validate`](mod@validate): raw files → [`Config`], collecting every mistake as a [`Diagnostic`].
//! - [`pattern`], [`address`], [`units`]: the small languages inside values (paths, `host:port`,
//!   `"10s"`, `"16KiB"`).
//! - [`emit`]: [`generate`], a pure `Config` → formatted Rust source.
//! - [`summary`](mod@summary): the human-readable overview `juggler-routes` prints.
//!
//! `build.rs` calls [`load_in`], [`generate`] and [`write_if_changed`], and prints the
//! [`Diagnostics`] report through [`cargo_errors`] when the config is wrong; the `juggler-routes`
//! binary does the same work for `make routes`.

use std::fs;
use std::io;
use std::path::Path;

pub mod address;
pub mod diagnostics;
pub mod emit;
pub mod model;
pub mod pattern;
pub mod raw;
pub mod summary;
pub mod units;
pub mod validate;

pub use diagnostics::{Diagnostic, Diagnostics, SourceFile};
pub use emit::generate;
pub use model::Config;
pub use summary::summary;

/// The file inside the config directory that holds listeners, limits and upstreams.
pub const LOAD_BALANCER_FILE: &str = "load_balancer.toml";

/// Reads and validates the routes file and `<config_dir>/load_balancer.toml`, paths relative to
/// the current directory.
pub fn load(routes: &Path, config_dir: &Path) -> Result<Config, Diagnostics> {
    load_in(Path::new(""), routes, config_dir)
}

/// Like [`load`], with relative paths resolved against `base`; messages and the generated file
/// still name them as given (`routes.toml`, not `/home/.../routes.toml`).
pub fn load_in(base: &Path, routes: &Path, config_dir: &Path) -> Result<Config, Diagnostics> {
    let load_balancer = config_dir.join(LOAD_BALANCER_FILE);
    let mut diagnostics = Diagnostics::default();
    let routes = read(base, routes, &mut diagnostics);
    let load_balancer = read(base, &load_balancer, &mut diagnostics);
    match (routes, load_balancer) {
        (Some(routes), Some(load_balancer)) => {
            let config_dir = config_dir.display().to_string();
            from_sources(routes, load_balancer, config_dir.trim_end_matches('/'))
        }
        _ => Err(diagnostics),
    }
}

fn read(base: &Path, path: &Path, diagnostics: &mut Diagnostics) -> Option<SourceFile> {
    let name = path.display().to_string();
    match fs::read_to_string(base.join(path)) {
        Ok(text) => Some(SourceFile { name, text }),
        Err(error) => {
            diagnostics.push(Diagnostic::file(
                &name,
                format!("cannot read the file: {error}"),
                "set JUGGLER_ROUTES=<file> / JUGGLER_CONFIG=<dir> (relative to the project root), \
                 or restore the shipped file from git"
                    .to_string(),
            ));
            None
        }
    }
}

/// Validates two files already in memory (what [`load`] does after reading them; tests call it
/// with inline TOML). `config_dir` is where the certificate and key default to.
pub fn from_sources(
    routes: SourceFile,
    load_balancer: SourceFile,
    config_dir: &str,
) -> Result<Config, Diagnostics> {
    let mut diagnostics = Diagnostics::default();
    let raw_routes = raw::Reader {
        source: &routes,
        diagnostics: &mut diagnostics,
    }
    .routes();
    let raw_load_balancer = raw::Reader {
        source: &load_balancer,
        diagnostics: &mut diagnostics,
    }
    .load_balancer();
    let inputs = validate::Inputs {
        routes_file: &routes,
        routes: raw_routes,
        load_balancer_file: &load_balancer,
        load_balancer: raw_load_balancer,
        config_dir,
    };
    let mut config = validate::validate(inputs, &mut diagnostics);
    if !diagnostics.is_empty() {
        return Err(diagnostics.sorted());
    }
    config.config_hash = config_hash(&[&routes, &load_balancer]);
    config.sources = vec![routes.name, load_balancer.name];
    Ok(config)
}

/// FNV-1a 64 of the files' bytes, folded to 32 bits: 8 hex digits that change with any edit.
pub fn config_hash(files: &[&SourceFile]) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for file in files {
        // The length first, so that moving text from one file to the other changes the hash.
        for byte in (file.text.len() as u64)
            .to_le_bytes()
            .iter()
            .chain(file.text.as_bytes())
        {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    format!("{:08x}", (hash ^ (hash >> 32)) as u32)
}

/// Writes `contents` unless the file already holds exactly that, so an unchanged config does not
/// touch the file's mtime (and nothing downstream rebuilds). Returns whether it wrote.
pub fn write_if_changed(path: &Path, contents: &str) -> io::Result<bool> {
    if fs::read(path).is_ok_and(|existing| existing == contents.as_bytes()) {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, contents)?;
    Ok(true)
}

/// A report as `cargo::error=` directives, one per line: cargo shows each as its own `error:`
/// line and fails the build, so a build script can stop with a readable message, not a panic.
pub fn cargo_errors(report: &str) -> Vec<String> {
    report
        .lines()
        .map(|line| format!("cargo::error={line}"))
        .collect()
}

#[cfg(test)]
mod tests;
