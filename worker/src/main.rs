//! `kubetemplater-worker`: parses its configuration, starts telemetry and hands over to
//! [`worker::run`]. Exits non-zero when the worker's Lease was lost (a supervisor restarts it;
//! the new process acquires the Lease in a new term).

use std::process::ExitCode;

use clap::Parser as _;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let args = worker::Args::parse();
    let telemetry = match telemetry::init(&args.telemetry, "kubetemplater-worker") {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("kubetemplater-worker: starting telemetry failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let result = worker::run(args, &telemetry, shutdown).await;
    if let Err(error) = &result {
        tracing::error!(error = %error, "kubetemplater-worker failed");
    }
    if let Err(error) = telemetry.shutdown() {
        eprintln!("kubetemplater-worker: flushing telemetry failed: {error}");
    }
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Cancels `token` on the first SIGTERM or SIGINT.
async fn cancel_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("installing the signal handlers failed; stop the process with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: leaving"),
        _ = int.recv() => tracing::info!("SIGINT: leaving"),
    }
    token.cancel();
}
