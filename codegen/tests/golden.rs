//! Golden files: each `tests/fixtures/codegen/<name>/` holds `routes.toml` and `load_balancer.toml`
//! and either `expected.rs` (the generated file) or `expected.err` (the report). Run with
//! `BLESS=1` to rewrite them after an intended change, then review the diff.

use std::fs;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What codegen makes of one fixture: the generated file, or the report.
fn output(name: &str) -> (&'static str, String) {
    let dir = Path::new("tests/fixtures/codegen").join(name);
    match juggler_codegen::load_in(&repo_root(), &dir.join("routes.toml"), &dir) {
        Ok(config) => ("expected.rs", juggler_codegen::generate(&config)),
        Err(diagnostics) => ("expected.err", format!("{diagnostics}\n")),
    }
}

#[test]
fn generated_files_and_reports_match_the_golden_files() {
    let bless = std::env::var_os("BLESS").is_some();
    let fixtures = repo_root().join("tests/fixtures/codegen");
    let mut names: Vec<String> = fs::read_dir(&fixtures)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 6, "fixtures missing: {names:?}");
    let mut mismatched = Vec::new();
    for name in &names {
        let (file, actual) = output(name);
        let path = fixtures.join(name).join(file);
        let other = if file == "expected.rs" {
            "expected.err"
        } else {
            "expected.rs"
        };
        if bless {
            fs::write(&path, &actual).unwrap();
            let _ = fs::remove_file(fixtures.join(name).join(other));
            println!("blessed {}", path.display());
            continue;
        }
        assert!(
            !fixtures.join(name).join(other).exists(),
            "{name}: codegen produced {file} but {other} exists (re-bless with BLESS=1)"
        );
        let expected = fs::read_to_string(&path).unwrap_or_default();
        println!("{name}: {file}, {} lines", actual.lines().count());
        if expected != actual {
            println!("--- {name}/{file} differs; actual:\n{actual}");
            mismatched.push(name.clone());
        }
    }
    assert!(
        mismatched.is_empty(),
        "golden files differ (run with BLESS=1 after checking): {mismatched:?}"
    );
}

#[test]
fn generation_is_deterministic() {
    let (_, first) = output("priority");
    let (_, second) = output("priority");
    assert_eq!(first, second);
}
