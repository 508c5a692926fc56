//! Compiles the config into the binary: `routes.toml` + `juggler_config/load_balancer.toml` →
//! `$OUT_DIR/distributer.rs`, which `src/main.rs` includes as `distributer`.
//!
//! `JUGGLER_ROUTES=<file>` and `JUGGLER_CONFIG=<dir>` pick other inputs (relative to this
//! directory). A config mistake fails the build with `file:line:col` messages (one
//! `cargo::error=` per line), never a panic backtrace.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    // `cargo::error` lines alone fail the build ("build script logged errors"); a non-zero exit
    // or a panic would make cargo print the script's whole stdout again under the report.
    if let Err(report) = run() {
        for directive in juggler_codegen::cargo_errors(&report) {
            println!("{directive}");
        }
    }
}

fn run() -> Result<(), String> {
    println!("cargo::rerun-if-env-changed=JUGGLER_ROUTES");
    println!("cargo::rerun-if-env-changed=JUGGLER_CONFIG");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let routes = input("JUGGLER_ROUTES", "routes.toml");
    let config_dir = input("JUGGLER_CONFIG", "juggler_config");
    watch(&manifest_dir, &routes, &config_dir);

    let config = juggler_codegen::load_in(&manifest_dir, &routes, &config_dir)
        .map_err(|diagnostics| diagnostics.to_string())?;
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("distributer.rs");
    // Unchanged output keeps its mtime, so only this crate's own fingerprint decides a rebuild.
    juggler_codegen::write_if_changed(&out, &juggler_codegen::generate(&config))
        .map_err(|error| format!("cannot write {}: {error}", out.display()))?;
    Ok(())
}

fn input(variable: &str, default: &str) -> PathBuf {
    PathBuf::from(env::var_os(variable).unwrap_or_else(|| OsString::from(default)))
}

/// Reruns on edits to the routes file and to every `.toml` file of the config directory.
///
/// Not the directory itself: cargo would then scan every file in it, and the TLS certificate and
/// key live there too. They are read at run time (and on SIGHUP), never compiled in, so a rebuild
/// after `make ssl_cert` would be pointless.
fn watch(manifest_dir: &Path, routes: &Path, config_dir: &Path) {
    println!(
        "cargo::rerun-if-changed={}",
        manifest_dir.join(routes).display()
    );
    let config_dir = manifest_dir.join(config_dir);
    // Named even before it exists, so creating it triggers a rerun.
    let load_balancer = config_dir.join(juggler_codegen::LOAD_BALANCER_FILE);
    println!("cargo::rerun-if-changed={}", load_balancer.display());
    let entries = fs::read_dir(&config_dir).into_iter().flatten().flatten();
    for path in entries.map(|entry| entry.path()) {
        if path
            .extension()
            .is_some_and(|extension| extension == "toml")
            && path != load_balancer
        {
            println!("cargo::rerun-if-changed={}", path.display());
        }
    }
}
