//! `loadtest`: parses arguments and hands over to the library (usage: `loadtest --help`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = loadtest::Args::parse();
    // Unlocked handles: the progress bar writes to stderr from its own thread, so holding the
    // stderr lock for the whole run would deadlock it.
    loadtest::run(args, &mut std::io::stdout(), &mut std::io::stderr())
}
