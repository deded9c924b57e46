//! `ktctl`: kubetemplater's command line. Parses arguments and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = ktctl::Args::parse();
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    ktctl::run(args, &mut stdout, &mut stderr)
}
