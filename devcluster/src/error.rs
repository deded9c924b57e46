//! One error type for everything devcluster does, each variant naming what failed.

use std::path::PathBuf;

/// What can go wrong while building, starting, stopping or using the local control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Go toolchain is not on `PATH`, so the named tool cannot be built.
    #[error(
        "cannot build {tool}: the `go` command was not found on PATH. devcluster builds the real \
         Kubernetes control plane from Go modules; install Go 1.26 or newer and try again"
    )]
    GoMissing {
        /// The tool that needed Go.
        tool: &'static str,
    },

    /// `go build` failed; the log holds the compiler's output.
    #[error("building {tool} failed (exit {status}); full log: {log}\n--- last lines ---\n{tail}")]
    BuildFailed {
        /// The tool being built.
        tool: &'static str,
        /// Exit status text of `go build`.
        status: String,
        /// Path of the build log.
        log: PathBuf,
        /// Last lines of the build log.
        tail: String,
    },

    /// A port that a component must listen on is taken by some other process.
    #[error(
        "port {port} on 127.0.0.1, needed by {component}, is already in use by another process; \
         stop that process (`ss -ltnp 'sport = :{port}'` shows it) or run `cargo xtask down` if it is \
         a devcluster left over from an earlier run"
    )]
    PortBusy {
        /// The component that needed the port.
        component: &'static str,
        /// The port.
        port: u16,
    },

    /// A component exited while devcluster was starting it or waiting for it.
    #[error("{component} exited ({status}) while starting; log: {log}\n--- last lines ---\n{tail}")]
    ProcessExited {
        /// The component.
        component: String,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },

    /// A component did not become ready in time.
    #[error(
        "{component} did not become ready within {seconds}s ({last}); log: {log}\n--- last lines ---\n{tail}"
    )]
    NotReady {
        /// The component.
        component: String,
        /// How long devcluster waited.
        seconds: u64,
        /// The last readiness probe result.
        last: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },

    /// A file or directory could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What devcluster tried to do.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A process could not be started.
    #[error("starting {component} ({program}): {source}")]
    Spawn {
        /// The component.
        component: String,
        /// The program path.
        program: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Certificates or keys could not be generated.
    #[error("generating {what}: {source}")]
    Pki {
        /// What was being generated.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },

    /// A state file (endpoints, pids) is malformed.
    #[error("reading {path}: {message}")]
    BadState {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// The system's shard processes cannot be scaled as asked.
    #[error("cannot scale the workers: {message}")]
    Scale {
        /// Why.
        message: String,
    },

    /// No control plane is running where one was expected.
    #[error("no devcluster is running (no live {path}); start one with `cargo xtask up`")]
    NotRunning {
        /// The endpoints file that was looked for.
        path: PathBuf,
    },

    /// A Kubernetes client could not be built or a call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A command we ran (e.g. `kubectl apply`) failed.
    #[error("{what} failed:\n{output}")]
    Command {
        /// The command.
        what: String,
        /// Its error output.
        output: String,
    },

    /// An HTTP probe could not be set up.
    #[error("{action}: {source}")]
    Http {
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },

    /// A database server (MariaDB, PostgreSQL) could not be prepared, started, reached or stopped.
    #[error("{engine}: {step} failed: {message}")]
    Database {
        /// The engine (`mariadb`, `postgresql`).
        engine: &'static str,
        /// The step that failed (e.g. `initializing the data directory`).
        step: String,
        /// What went wrong, with the last log lines where there is a log.
        message: String,
    },

    /// A database engine's programs are missing and cannot be installed from here.
    #[error(
        "{engine}: {missing} not found, and devcluster installs packages only when running as \
         root; install them with `sudo apt-get install -y --no-install-recommends {packages}`, or \
         set {env} to the admin URL of an existing server"
    )]
    DatabasePackagesMissing {
        /// The engine (`mariadb`, `postgresql`).
        engine: &'static str,
        /// The programs that were looked for.
        missing: String,
        /// The Debian packages that provide them, space-separated.
        packages: String,
        /// The environment variable that points the tests at an existing server instead.
        env: &'static str,
    },

    /// `apt-get install` failed (also after an `apt-get update`).
    #[error(
        "installing {packages} with apt-get failed ({status}), also after `apt-get update`; \
         log: {log}\n--- last lines ---\n{tail}"
    )]
    InstallFailed {
        /// The Debian packages, space-separated.
        packages: String,
        /// Exit status of the last `apt-get` run.
        status: String,
        /// The log with apt-get's output.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },

    /// SQL run through a database's command-line client failed (or could not connect).
    #[error("{engine}: {session} failed ({status}):\n{stderr}")]
    Sql {
        /// The engine (`mariadb`, `postgresql`).
        engine: &'static str,
        /// The client, user and database (`` `psql` as user `app` on database `orders` ``).
        session: String,
        /// The client's exit status.
        status: String,
        /// Its error output (the server's error message).
        stderr: String,
    },
}

/// Result alias for devcluster.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube {
            action,
            source: Box::new(source),
        }
    }
}
