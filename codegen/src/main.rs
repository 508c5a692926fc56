//! `juggler-routes`: validate the config, write a readable copy of the generated `distributer.rs`
//! and print a summary. `make routes` runs it; `build.rs` does the same work for `cargo build`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: juggler-routes [--routes routes.toml] [--config juggler_config] \
                     [--out target/juggler/distributer.rs]\n\
                     --routes and --config default to $JUGGLER_ROUTES and $JUGGLER_CONFIG when set";

struct Args {
    routes: PathBuf,
    config: PathBuf,
    out: PathBuf,
}

/// `Ok(None)` when help was asked for.
fn parse_args() -> Result<Option<Args>, String> {
    // The same defaults and overrides as build.rs, so `JUGGLER_CONFIG=dir make routes` shows the
    // table `JUGGLER_CONFIG=dir make all` compiles in.
    let input = |variable: &str, default: &str| {
        std::env::var_os(variable).map_or_else(|| PathBuf::from(default), PathBuf::from)
    };
    let mut args = Args {
        routes: input("JUGGLER_ROUTES", "routes.toml"),
        config: input("JUGGLER_CONFIG", "juggler_config"),
        out: PathBuf::from("target/juggler/distributer.rs"),
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let slot = match flag.as_str() {
            "--routes" => &mut args.routes,
            "--config" => &mut args.config,
            "--out" => &mut args.out,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        };
        *slot = words
            .next()
            .map(PathBuf::from)
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
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
    // A closed stdout (`juggler-routes | head`) is not worth a panic: the file is written.
    let _ = write!(
        std::io::stdout(),
        "{}\nGenerated: {}\n",
        juggler_codegen::summary(&config),
        args.out.display()
    );
    ExitCode::SUCCESS
}
