//! `juggler-routes`: validate the config, write a readable copy of the generated `distributer.rs`
//! and print a summary. `make routes` runs it; `build.rs` does the same work for `cargo build`.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: juggler-routes [--routes routes.toml] [--config juggler_config] \
                     [--out target/juggler/distributer.rs]";

struct Args {
    routes: PathBuf,
    config: PathBuf,
    out: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        routes: PathBuf::from("routes.toml"),
        config: PathBuf::from("juggler_config"),
        out: PathBuf::from("target/juggler/distributer.rs"),
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let slot = match flag.as_str() {
            "--routes" => &mut args.routes,
            "--config" => &mut args.config,
            "--out" => &mut args.out,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        };
        *slot = words
            .next()
            .map(PathBuf::from)
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let config = match juggler_codegen::load(&args.routes, &args.config) {
        Ok(config) => config,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) =
        juggler_codegen::write_if_changed(&args.out, &juggler_codegen::generate(&config))
    {
        eprintln!("cannot write {}: {error}", args.out.display());
        return ExitCode::FAILURE;
    }
    print!("{}", juggler_codegen::summary(&config));
    println!("\nGenerated: {}", args.out.display());
    ExitCode::SUCCESS
}
