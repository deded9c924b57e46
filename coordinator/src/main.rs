//! `kubetemplater-coordinator`: parses its configuration, starts telemetry and hands over to
//! [`coordinator::run`].

use std::process::ExitCode;

use clap::Parser as _;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let args = coordinator::Args::parse();
    let telemetry = match telemetry::init(&args.telemetry, "kubetemplater-coordinator") {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("kubetemplater-coordinator: starting telemetry failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let result = coordinator::run(args, &telemetry, shutdown).await;
    if let Err(error) = &result {
        tracing::error!(error = %error, "kubetemplater-coordinator failed");
    }
    if let Err(error) = telemetry.shutdown() {
        eprintln!("kubetemplater-coordinator: flushing telemetry failed: {error}");
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
        _ = term.recv() => tracing::info!("SIGTERM: stepping down"),
        _ = int.recv() => tracing::info!("SIGINT: stepping down"),
    }
    token.cancel();
}
