//! Throwaway MariaDB and PostgreSQL servers for tests (the datasources of Tenant Operator).
//!
//! [`DatabaseServer::start`] runs one server per engine and [`Layout`], with its data under
//! `<layout root>/db/<mariadb|postgresql>/data/`, listening on 127.0.0.1 only (a port picked once
//! and remembered in `<layout root>/db/<engine>/state.json`, so a restart comes back on the same
//! port) and on a unix socket inside the data directory. The server is started directly, in its
//! own process group with its output in the layout's log (`logs/mariadb.log`,
//! `logs/postgresql.log`); no systemd, no service scripts. It outlives the process that started
//! it: later calls (other tests, other test processes) reuse it, and [`stop_all`] ends it.
//!
//! - **MariaDB** runs as the current user (`mariadbd --user=root` when that is root); the admin is
//!   `root` over the unix socket (no password) and `kt_admin` (password) over TCP.
//! - **PostgreSQL** refuses to run as root: when devcluster runs as root, `initdb` and `postgres`
//!   run as the `postgres` system user (through `setpriv`) and the data directory belongs to it.
//!   `pg_hba.conf` trusts the admin (`postgres`) on the unix socket and asks everyone else for a
//!   scram-sha-256 password, on the socket and on 127.0.0.1.
//!
//! When a server's programs are missing and devcluster runs as root, they are installed from
//! Debian packages (`apt-get install`, serialized by a machine-wide lock); otherwise the error names
//! the packages to install.
//!
//! Each test takes its own database and user with [`DatabaseServer::create_database`] (names from
//! [`unique_name`] keep concurrent tests and test processes apart). A test that stops the server to
//! simulate an outage ([`DatabaseServer::stop`]) should use a private layout, since every test of
//! the layout shares the server.
//!
//! With `KUBETEMPLATER_TEST_MARIADB_URL` / `KUBETEMPLATER_TEST_POSTGRES_URL` set to an admin URL
//! (`mysql://root:secret@db.example:3306/`, `postgres://postgres:secret@db.example:5432/postgres`),
//! that server is used instead and nothing is started; only its command-line client is needed.
//!
//! Everything here blocks (it runs the engines' command-line clients); from async code call it
//! through `tokio::task::spawn_blocking`.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, chown, geteuid};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::cluster::free_port;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::process::{self, ProcessRecord, tail_of};

/// Environment variable with the admin URL of an existing MariaDB/MySQL server to use instead of
/// starting one (`mysql://user:password@host:port/`).
pub const MARIADB_URL_ENV: &str = "KUBETEMPLATER_TEST_MARIADB_URL";
/// Environment variable with the admin URL of an existing PostgreSQL server to use instead of
/// starting one (`postgres://user:password@host:port/postgres`).
pub const POSTGRES_URL_ENV: &str = "KUBETEMPLATER_TEST_POSTGRES_URL";

/// How long a starting server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a server may take to shut down after SIGTERM (SIGINT for PostgreSQL) before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How long a client waits for a connection before giving up.
const CONNECT_TIMEOUT_SECS: u32 = 10;
/// The MariaDB admin account for TCP connections (`root` is kept to the unix socket).
const MARIADB_TCP_ADMIN: &str = "kt_admin";
/// Where PostgreSQL versions are installed on Debian.
const POSTGRES_LIB: &str = "/usr/lib/postgresql";
/// Longest path a unix socket can have (`sun_path` is 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Database and user names `create_database` refuses: it drops the database first.
const RESERVED_NAMES: &[&str] = &[
    "mysql",
    "information_schema",
    "performance_schema",
    "sys",
    "root",
    "mariadb.sys",
    MARIADB_TCP_ADMIN,
    "postgres",
    "template0",
    "template1",
    "public",
];

/// A database engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Engine {
    /// MariaDB (speaks the MySQL protocol; Tenant Operator's `mysql` datasource).
    MariaDb,
    /// PostgreSQL.
    PostgreSql,
}

impl Engine {
    /// Both engines.
    pub const ALL: [Engine; 2] = [Engine::MariaDb, Engine::PostgreSql];

    /// Lower-case name, used for directories and logs: `mariadb`, `postgresql`.
    pub fn name(self) -> &'static str {
        match self {
            Engine::MariaDb => "mariadb",
            Engine::PostgreSql => "postgresql",
        }
    }

    /// The URL scheme of [`Connection::url`]: `mysql`, `postgres`.
    pub fn url_scheme(self) -> &'static str {
        match self {
            Engine::MariaDb => "mysql",
            Engine::PostgreSql => "postgres",
        }
    }

    /// The environment variable that names an existing server to use instead of starting one.
    pub fn url_env(self) -> &'static str {
        match self {
            Engine::MariaDb => MARIADB_URL_ENV,
            Engine::PostgreSql => POSTGRES_URL_ENV,
        }
    }

    /// The default TCP port of the engine (for URLs that leave it out).
    pub fn default_port(self) -> u16 {
        match self {
            Engine::MariaDb => 3306,
            Engine::PostgreSql => 5432,
        }
    }

    /// Debian packages with the server and its client.
    pub fn server_packages(self) -> &'static [&'static str] {
        match self {
            Engine::MariaDb => &["mariadb-server", "mariadb-client"],
            Engine::PostgreSql => &["postgresql", "postgresql-client"],
        }
    }

    /// Debian packages with only the client (enough for an external server).
    pub fn client_packages(self) -> &'static [&'static str] {
        match self {
            Engine::MariaDb => &["mariadb-client"],
            Engine::PostgreSql => &["postgresql-client"],
        }
    }

    fn admin_user(self) -> &'static str {
        match self {
            Engine::MariaDb => "root",
            Engine::PostgreSql => "postgres",
        }
    }

    fn admin_database(self) -> &'static str {
        match self {
            Engine::MariaDb => "mysql",
            Engine::PostgreSql => "postgres",
        }
    }

    fn error(self, step: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Database {
            engine: self.name(),
            step: step.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to reach one database as one user over TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The engine.
    pub engine: Engine,
    /// Host name or address (`127.0.0.1` for a server devcluster started).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User name.
    pub username: String,
    /// The user's password.
    pub password: String,
    /// Database name.
    pub database: String,
}

impl Connection {
    /// The connection as a URL: `mysql://user:pass@127.0.0.1:port/db` or
    /// `postgres://user:pass@127.0.0.1:port/db` (user and password percent-encoded).
    pub fn url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "{}://{}:{}@{}:{}/{}",
            self.engine.url_scheme(),
            percent_encode(&self.username),
            percent_encode(&self.password),
            host,
            self.port,
            percent_encode(&self.database),
        )
    }

    /// The same server and user, another database.
    pub fn with_database(&self, database: &str) -> Connection {
        Connection {
            database: database.to_owned(),
            ..self.clone()
        }
    }
}

/// A database name unique to this call: `prefix` (lower-cased, non-alphanumerics turned into
/// `_`, at most 40 characters) and 10 random characters. Valid for both engines and for
/// [`DatabaseServer::create_database`].
pub fn unique_name(prefix: &str) -> String {
    let mut name: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        name.insert_str(0, "t_");
    }
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(10)
        .map(|b| char::from(b).to_ascii_lowercase())
        .collect();
    format!("{name}_{suffix}")
}

/// A running MariaDB or PostgreSQL server: one devcluster started (or found running) for a
/// layout, or an external one named by [`Engine::url_env`].
///
/// Dropping it leaves the server running (other tests share it); [`DatabaseServer::stop`] or
/// [`stop_all`] end it.
#[derive(Debug, Clone)]
pub struct DatabaseServer {
    engine: Engine,
    /// The admin over TCP (for a local server: `kt_admin`/`postgres` with the generated password).
    admin: Connection,
    /// `None` for an external server.
    local: Option<Local>,
}

/// A server devcluster runs.
#[derive(Debug, Clone)]
struct Local {
    layout: Layout,
    paths: Paths,
    programs: Programs,
}

/// The files of one engine in one layout.
#[derive(Debug, Clone)]
struct Paths {
    /// `<root>/db/<engine>`: state file, lock, data directory.
    dir: PathBuf,
    /// The data directory (`datadir`, `PGDATA`).
    data: PathBuf,
    /// Port, admin password and the running process.
    state: PathBuf,
    /// Held while the server is started or stopped.
    lock: PathBuf,
    /// The server's log.
    log: PathBuf,
    /// The log of data-directory initialization.
    init_log: PathBuf,
}

impl Paths {
    fn new(layout: &Layout, engine: Engine) -> Self {
        let dir = layout.root().join("db").join(engine.name());
        Self {
            data: dir.join("data"),
            state: dir.join("state.json"),
            lock: dir.join("server.lock"),
            log: layout.log(engine.name()),
            init_log: layout.log(&format!("{}-init", engine.name())),
            dir,
        }
    }

    /// MariaDB: the socket file; PostgreSQL: the socket directory (the data directory).
    fn socket(&self, engine: Engine) -> PathBuf {
        match engine {
            Engine::MariaDb => self.data.join("mysqld.sock"),
            Engine::PostgreSql => self.data.clone(),
        }
    }
}

/// The programs of a server installation.
#[derive(Debug, Clone)]
struct Programs {
    /// `mariadbd` / `postgres`.
    server: PathBuf,
    /// `mariadb-install-db` / `initdb`.
    init: PathBuf,
    /// `mariadb` / `psql`.
    client: PathBuf,
}

/// What `state.json` remembers.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    /// The TCP port, picked once.
    port: u16,
    /// The password of the TCP admin.
    admin_password: String,
    /// Whether the data directory was initialized and the admin accounts set up.
    #[serde(default)]
    ready: bool,
    /// The running server, if any.
    #[serde(default)]
    process: Option<ProcessRecord>,
}

impl State {
    fn fresh() -> Result<Self> {
        Ok(Self {
            port: free_port()?,
            admin_password: random_password(),
            ready: false,
            process: None,
        })
    }

    fn load(path: &Path) -> Result<Option<Self>> {
        match fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::BadState {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io {
                action: "reading",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes atomically, readable by the owner only (it holds the admin password).
    fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::BadState {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let tmp = path.with_extension("json.tmp");
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(Error::io("writing", &tmp))?;
        file.write_all(text.as_bytes())
            .map_err(Error::io("writing", &tmp))?;
        drop(file);
        fs::rename(&tmp, path).map_err(Error::io("writing", path))
    }
}

/// An exclusive `flock` on a file, released on drop. Excludes other threads (each opens the file
/// itself) and other processes alike.
#[derive(Debug)]
struct FileLock(File);

impl FileLock {
    fn acquire(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(Error::io("opening", path))?;
        file.lock().map_err(Error::io("locking", path))?;
        Ok(Self(file))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl DatabaseServer {
    /// Starts (or reuses, if this layout's server of that engine is already running) a server
    /// with data under `<layout root>/db/<mariadb|postgresql>/`.
    ///
    /// Installs the engine's Debian packages first when its programs are missing (as root only).
    /// Safe to call from many threads and processes at once: exactly one server starts, the
    /// others reuse it. After [`stop`](Self::stop), brings the server back on the same port with
    /// the same data. With [`Engine::url_env`] set, uses that server instead (after checking that
    /// it answers).
    pub fn start(layout: &Layout, engine: Engine) -> Result<Self> {
        if let Some(url) = std::env::var(engine.url_env())
            .ok()
            .filter(|u| !u.trim().is_empty())
        {
            return Self::external(layout, engine, url.trim());
        }
        ensure_installed(layout, engine, true)?;
        let paths = Paths::new(layout, engine);
        fs::create_dir_all(&paths.dir).map_err(Error::io("creating", &paths.dir))?;
        let _lock = FileLock::acquire(&paths.lock)?;
        let mut state = match State::load(&paths.state)? {
            Some(state) => state,
            None => {
                let state = State::fresh()?;
                state.save(&paths.state)?;
                state
            }
        };
        let programs = find_server_programs(engine, data_version(engine, &paths.data).as_deref())
            .ok_or_else(|| {
            engine.error(
                "finding the server programs",
                format!(
                    "{} are installed but not found",
                    engine.server_packages().join(" ")
                ),
            )
        })?;
        let server = DatabaseServer {
            engine,
            admin: local_admin(engine, &state),
            local: Some(Local {
                layout: layout.clone(),
                paths: paths.clone(),
                programs,
            }),
        };
        if let Some(record) = state.process.take() {
            if record.is_alive() && state.ready {
                // Started by an earlier call: it answered then, it should answer now.
                match server.wait_answering(&record, Duration::from_secs(30)) {
                    Ok(()) => {
                        state.process = Some(record);
                        return Ok(server);
                    }
                    Err(err) => tracing::warn!(
                        engine = engine.name(),
                        pid = record.pid,
                        %err,
                        "database server is running but does not answer; restarting it"
                    ),
                }
            }
            // Dead, half-started or not answering: end whatever is left of its process group.
            shut_down(engine, &paths, &record);
            state.save(&paths.state)?;
        }
        server.start_stopped(&mut state)?;
        Ok(server)
    }

    fn external(layout: &Layout, engine: Engine, url: &str) -> Result<Self> {
        let admin = parse_admin_url(engine, url)?;
        ensure_installed(layout, engine, false)?;
        let server = DatabaseServer {
            engine,
            admin,
            local: None,
        };
        server
            .execute(&server.admin.database, "SELECT 1")
            .map_err(|err| {
                engine.error(
                    format!("reaching the server named by {}", engine.url_env()),
                    err.to_string(),
                )
            })?;
        Ok(server)
    }

    /// The engine.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The TCP port the server listens on (on 127.0.0.1 for a local server).
    pub fn port(&self) -> u16 {
        self.admin.port
    }

    /// Whether this is an external server named by [`Engine::url_env`] (it cannot be stopped).
    pub fn is_external(&self) -> bool {
        self.local.is_none()
    }

    /// The admin account over TCP, on the engine's admin database (`mysql`, `postgres`).
    pub fn admin_connection(&self) -> &Connection {
        &self.admin
    }

    /// The server's log (`None` for an external server).
    pub fn log(&self) -> Option<&Path> {
        self.local.as_ref().map(|l| l.paths.log.as_path())
    }

    /// The running server process as recorded in the state file (`None` when stopped or
    /// external).
    pub fn process(&self) -> Option<ProcessRecord> {
        let local = self.local.as_ref()?;
        State::load(&local.paths.state)
            .ok()
            .flatten()?
            .process
            .filter(ProcessRecord::is_alive)
    }

    /// Whether the server is running: for a local server, whether its recorded process is alive
    /// (whoever started or stopped it); for an external one, whether it answers.
    pub fn is_running(&self) -> bool {
        match &self.local {
            Some(_) => self.process().is_some(),
            None => self.execute(&self.admin.database, "SELECT 1").is_ok(),
        }
    }

    /// A fresh, empty database with its own user (named like the database) and a random
    /// password, for one test. The user logs in with its password over TCP (127.0.0.1 for a
    /// local server) and may do anything in its database; tables the admin creates there with
    /// [`execute`](Self::execute) are accessible to it too. An existing database and user of that
    /// name are dropped first.
    ///
    /// `name`: lower-case letters, digits and `_`, starting with a letter or `_`, at most 63
    /// characters (see [`unique_name`]); the engines' own databases and users are refused.
    pub fn create_database(&self, name: &str) -> Result<Connection> {
        validate_name(self.engine, name)?;
        let password = random_password();
        match self.engine {
            Engine::MariaDb => {
                // `_` is a wildcard in a GRANT's database name.
                let grant_db = name.replace('_', "\\_");
                self.execute(
                    &self.admin.database,
                    &format!(
                        "DROP DATABASE IF EXISTS `{name}`;\n\
                         DROP USER IF EXISTS '{name}'@'%';\n\
                         CREATE DATABASE `{name}` CHARACTER SET utf8mb4;\n\
                         CREATE USER '{name}'@'%' IDENTIFIED BY '{password}';\n\
                         GRANT ALL PRIVILEGES ON `{grant_db}`.* TO '{name}'@'%';\n"
                    ),
                )?;
            }
            Engine::PostgreSql => {
                self.execute(
                    &self.admin.database,
                    &format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE);\n\
                         DROP ROLE IF EXISTS \"{name}\";\n\
                         CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}';\n\
                         CREATE DATABASE \"{name}\" OWNER \"{name}\" ENCODING 'UTF8' TEMPLATE template0;\n\
                         REVOKE ALL ON DATABASE \"{name}\" FROM PUBLIC;\n"
                    ),
                )?;
                let admin = match &self.local {
                    Some(_) => self.engine.admin_user().to_owned(),
                    None => self.admin.username.clone(),
                };
                self.execute(
                    name,
                    &format!(
                        "ALTER DEFAULT PRIVILEGES FOR ROLE \"{admin}\" IN SCHEMA public \
                           GRANT ALL ON TABLES TO \"{name}\";\n\
                         ALTER DEFAULT PRIVILEGES FOR ROLE \"{admin}\" IN SCHEMA public \
                           GRANT ALL ON SEQUENCES TO \"{name}\";\n\
                         GRANT ALL ON SCHEMA public TO \"{name}\";\n"
                    ),
                )?;
            }
        }
        Ok(Connection {
            engine: self.engine,
            host: self.admin.host.clone(),
            port: self.admin.port,
            username: name.to_owned(),
            password,
            database: name.to_owned(),
        })
    }

    /// Runs SQL (one or more statements, stopping at the first error) as the admin through the
    /// engine's command-line client (`mariadb` / `psql`) against `database`, and returns what
    /// it printed: one line per result row, columns separated by tabs, no headers.
    pub fn execute(&self, database: &str, sql: &str) -> Result<String> {
        let client = match &self.local {
            Some(local) => ClientTarget::LocalAdmin {
                paths: &local.paths,
                port: self.admin.port,
                database,
            },
            None => ClientTarget::Tcp(self.admin.with_database(database)),
        };
        run_client(self.engine, &self.client_program()?, &client, sql)
    }

    /// Runs SQL like [`execute`](Self::execute), but as the user of `connection`, logging in
    /// with its password over TCP (what an application does). Fails with the server's message
    /// on bad credentials.
    pub fn execute_as(&self, connection: &Connection, sql: &str) -> Result<String> {
        run_client(
            self.engine,
            &self.client_program()?,
            &ClientTarget::Tcp(connection.clone()),
            sql,
        )
    }

    /// Stops the server (SIGTERM — PostgreSQL: SIGINT, its fast shutdown — then SIGKILL after
    /// 30 s); the data is kept. [`start`](Self::start) brings it back on the same port with the
    /// same data (tests use this to simulate an outage). Stopping a stopped server is a no-op;
    /// an external server cannot be stopped.
    pub fn stop(&self) -> Result<()> {
        let Some(local) = &self.local else {
            return Err(self.engine.error(
                "stopping the server",
                format!(
                    "the server is external ({} is set); devcluster only stops servers it started",
                    self.engine.url_env()
                ),
            ));
        };
        stop_local(self.engine, &local.paths)
    }

    fn client_program(&self) -> Result<PathBuf> {
        match &self.local {
            Some(local) => Ok(local.programs.client.clone()),
            None => find_client(self.engine).ok_or_else(|| {
                self.engine.error(
                    "finding the client",
                    format!("none of {} found", client_names(self.engine).join(", ")),
                )
            }),
        }
    }

    fn local(&self) -> Result<&Local> {
        self.local.as_ref().ok_or_else(|| {
            self.engine
                .error("managing the server", "the server is external")
        })
    }

    /// Starts the (stopped) server of `state`, initializing its data directory first when it
    /// was never set up completely. Called with the server lock held.
    fn start_stopped(&self, state: &mut State) -> Result<()> {
        let local = self.local()?;
        let engine = self.engine;
        let socket = local.paths.socket(engine);
        let socket_file = match engine {
            Engine::MariaDb => socket.clone(),
            Engine::PostgreSql => socket.join(format!(".s.PGSQL.{}", state.port)),
        };
        if socket_file.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(engine.error(
                "choosing the unix socket",
                format!(
                    "{} is longer than the {MAX_SOCKET_PATH} bytes a unix socket path may have; use \
                     a layout with a shorter root",
                    socket_file.display()
                ),
            ));
        }
        let fresh = !state.ready || !data_initialized(engine, &local.paths.data);
        if fresh {
            state.ready = false;
            state.save(&local.paths.state)?;
            self.initialize(local)?;
        }
        if TcpListener::bind(("127.0.0.1", state.port)).is_err() {
            return Err(Error::PortBusy {
                component: engine.name(),
                port: state.port,
            });
        }
        let (program, args) = self.server_command(local, state.port);
        let mut started = process::spawn(engine.name(), &program, &args, &local.paths.log)?;
        // Through `setpriv`, the process becomes the server program once it has exec'd.
        started.record.program = local.programs.server.clone();
        let record = started.record.clone();
        let waited = (|| {
            let deadline = Instant::now() + READY_TIMEOUT;
            let mut last = String::from("not probed yet");
            while Instant::now() < deadline {
                started.check_running()?;
                match self.ping() {
                    Ok(()) => return Ok(()),
                    Err(err) => last = err.to_string(),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(Error::NotReady {
                component: engine.name().to_owned(),
                seconds: READY_TIMEOUT.as_secs(),
                last,
                log: record.log.clone(),
                tail: tail_of(&record.log, 40),
            })
        })();
        if let Err(err) = waited {
            shut_down(engine, &local.paths, &record);
            return Err(err);
        }
        if fresh && let Err(err) = self.bootstrap(state) {
            shut_down(engine, &local.paths, &record);
            return Err(err);
        }
        state.ready = true;
        state.process = Some(record.clone());
        state.save(&local.paths.state)?;
        tracing::info!(
            engine = engine.name(),
            port = state.port,
            pid = record.pid,
            log = %local.paths.log.display(),
            "database server started"
        );
        Ok(())
    }

    /// Waits until an already running server answers.
    fn wait_answering(&self, record: &ProcessRecord, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.ping() {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() >= deadline || !record.is_alive() => return Err(err),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn ping(&self) -> Result<()> {
        self.execute(self.engine.admin_database(), "SELECT 1")
            .map(drop)
    }

    /// A fresh data directory: wipes what is there and runs `mariadb-install-db` / `initdb`.
    fn initialize(&self, local: &Local) -> Result<()> {
        let engine = self.engine;
        let data = &local.paths.data;
        if data.exists() {
            fs::remove_dir_all(data).map_err(Error::io("removing", data))?;
        }
        fs::create_dir_all(data).map_err(Error::io("creating", data))?;
        fs::set_permissions(data, fs::Permissions::from_mode(0o700))
            .map_err(Error::io("setting permissions of", data))?;
        let log = &local.paths.init_log;
        let (program, args) = match engine {
            Engine::MariaDb => {
                let mut args = vec![
                    "--no-defaults".to_owned(),
                    format!("--datadir={}", data.display()),
                    "--auth-root-authentication-method=normal".to_owned(),
                    "--skip-test-db".to_owned(),
                    "--skip-name-resolve".to_owned(),
                ];
                if geteuid().is_root() {
                    args.insert(1, "--user=root".to_owned());
                }
                (local.programs.init.clone(), args)
            }
            Engine::PostgreSql => {
                if geteuid().is_root() {
                    let user = postgres_user(engine)?;
                    chown(data, Some(user.uid), Some(user.gid)).map_err(|e| {
                        engine.error("handing the data directory to `postgres`", e.to_string())
                    })?;
                    ensure_searchable_by(engine, &local.layout, &local.paths.dir, &user)?;
                }
                let args = vec![
                    format!("--pgdata={}", data.display()),
                    "--username=postgres".to_owned(),
                    "--encoding=UTF8".to_owned(),
                    "--locale=C".to_owned(),
                    "--auth-local=trust".to_owned(),
                    "--auth-host=scram-sha-256".to_owned(),
                    "--no-sync".to_owned(),
                    "--no-instructions".to_owned(),
                ];
                as_postgres(&local.programs.init, args)
            }
        };
        run_logged(
            engine,
            "initializing the data directory",
            &program,
            &args,
            log,
        )?;
        if engine == Engine::PostgreSql {
            let hba = data.join("pg_hba.conf");
            fs::write(&hba, PG_HBA).map_err(Error::io("writing", &hba))?;
            if geteuid().is_root() {
                let user = postgres_user(engine)?;
                chown(&hba, Some(user.uid), Some(user.gid)).map_err(|e| {
                    engine.error("handing pg_hba.conf to `postgres`", e.to_string())
                })?;
            }
        }
        Ok(())
    }

    /// After the first start: the admin accounts for TCP.
    fn bootstrap(&self, state: &State) -> Result<()> {
        let password = &state.admin_password;
        let sql = match self.engine {
            // `mariadb-install-db` also makes root (no password) for 127.0.0.1, ::1 and the host
            // name: keep root to the unix socket, and no anonymous users.
            Engine::MariaDb => format!(
                "DELETE FROM mysql.global_priv WHERE User = '' OR (User = 'root' AND Host <> 'localhost');\n\
                 FLUSH PRIVILEGES;\n\
                 CREATE OR REPLACE USER '{MARIADB_TCP_ADMIN}'@'%' IDENTIFIED BY '{password}';\n\
                 GRANT ALL PRIVILEGES ON *.* TO '{MARIADB_TCP_ADMIN}'@'%' WITH GRANT OPTION;\n"
            ),
            Engine::PostgreSql => format!("ALTER ROLE postgres PASSWORD '{password}';\n"),
        };
        self.execute(self.engine.admin_database(), &sql)
            .map(drop)
            .map_err(|e| {
                self.engine
                    .error("setting up the admin account", e.to_string())
            })
    }

    /// The program and arguments that run the server in the foreground.
    fn server_command(&self, local: &Local, port: u16) -> (PathBuf, Vec<String>) {
        let data = &local.paths.data;
        let socket = local.paths.socket(self.engine);
        match self.engine {
            Engine::MariaDb => {
                let mut args = vec![
                    "--no-defaults".to_owned(),
                    format!("--datadir={}", data.display()),
                    format!("--socket={}", socket.display()),
                    format!("--port={port}"),
                    "--bind-address=127.0.0.1".to_owned(),
                    "--skip-name-resolve".to_owned(),
                    format!("--pid-file={}", data.join("mariadbd.pid").display()),
                    "--character-set-server=utf8mb4".to_owned(),
                    "--collation-server=utf8mb4_general_ci".to_owned(),
                    "--max-connections=300".to_owned(),
                    "--innodb-buffer-pool-size=64M".to_owned(),
                    // Throwaway data: do not wait for the disk on every commit.
                    "--innodb-flush-log-at-trx-commit=2".to_owned(),
                ];
                if geteuid().is_root() {
                    args.insert(1, "--user=root".to_owned());
                }
                (local.programs.server.clone(), args)
            }
            Engine::PostgreSql => {
                let settings = [
                    "listen_addresses=127.0.0.1".to_owned(),
                    format!("port={port}"),
                    format!("unix_socket_directories={}", socket.display()),
                    "max_connections=300".to_owned(),
                    "shared_buffers=64MB".to_owned(),
                    // Throwaway data: do not wait for the disk (a clean stop still writes it all).
                    "fsync=off".to_owned(),
                    "synchronous_commit=off".to_owned(),
                    "full_page_writes=off".to_owned(),
                    "logging_collector=off".to_owned(),
                ];
                let mut args = vec![format!("-D{}", data.display())];
                for s in settings {
                    args.push("-c".to_owned());
                    args.push(s);
                }
                as_postgres(&local.programs.server, args)
            }
        }
    }
}

/// Stops every database server devcluster runs for `layout` (data kept). For `cargo xtask down`
/// and test cleanup; servers named by the URL variables are left alone.
pub fn stop_all(layout: &Layout) -> Result<()> {
    let mut first_error = None;
    for engine in Engine::ALL {
        let paths = Paths::new(layout, engine);
        if paths.state.exists()
            && let Err(err) = stop_local(engine, &paths)
        {
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Stops the server recorded in `paths` (if any) and records that it is stopped.
fn stop_local(engine: Engine, paths: &Paths) -> Result<()> {
    let _lock = FileLock::acquire(&paths.lock)?;
    let Some(mut state) = State::load(&paths.state)? else {
        return Ok(());
    };
    if let Some(record) = state.process.take() {
        shut_down(engine, paths, &record);
        state.save(&paths.state)?;
        tracing::info!(
            engine = engine.name(),
            pid = record.pid,
            "database server stopped"
        );
    }
    Ok(())
}

/// Ends a recorded server process group; PostgreSQL gets SIGINT first (fast shutdown: it
/// disconnects clients instead of waiting for them), then the SIGTERM/SIGKILL of
/// [`ProcessRecord::stop`].
fn shut_down(engine: Engine, paths: &Paths, record: &ProcessRecord) {
    if engine == Engine::PostgreSql
        && record.is_alive()
        && let Ok(pid) = i32::try_from(record.pid)
    {
        let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && !process::group_members(record.pid).is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    record.stop(STOP_GRACE);
    // A killed server leaves its pid file: remove it so that a recycled pid never makes the
    // next start believe the server is still running.
    let pid_file = match engine {
        Engine::MariaDb => paths.data.join("mariadbd.pid"),
        Engine::PostgreSql => paths.data.join("postmaster.pid"),
    };
    if !record.is_alive() {
        let _ = fs::remove_file(pid_file);
    }
}

/// `pg_hba.conf`: the admin is trusted on the unix socket; everyone else gives a password.
const PG_HBA: &str = "# Written by kubetemplater devcluster (devcluster/src/database.rs).\n\
# TYPE  DATABASE  USER      ADDRESS        METHOD\n\
local   all       postgres                 trust\n\
local   all       all                      scram-sha-256\n\
host    all       all       127.0.0.1/32   scram-sha-256\n";

fn local_admin(engine: Engine, state: &State) -> Connection {
    Connection {
        engine,
        host: "127.0.0.1".to_owned(),
        port: state.port,
        username: match engine {
            Engine::MariaDb => MARIADB_TCP_ADMIN.to_owned(),
            Engine::PostgreSql => "postgres".to_owned(),
        },
        password: state.admin_password.clone(),
        database: engine.admin_database().to_owned(),
    }
}

/// Where the client connects.
#[derive(Debug)]
enum ClientTarget<'a> {
    /// A local server's admin over its unix socket, without a password.
    LocalAdmin {
        paths: &'a Paths,
        port: u16,
        database: &'a str,
    },
    /// Any user over TCP with a password.
    Tcp(Connection),
}

/// Runs `sql` through `mariadb` / `psql` (fed on stdin) and returns its output.
fn run_client(
    engine: Engine,
    client: &Path,
    target: &ClientTarget<'_>,
    sql: &str,
) -> Result<String> {
    let mut cmd = Command::new(client);
    let (user, database) = match target {
        ClientTarget::LocalAdmin { database, .. } => (engine.admin_user().to_owned(), *database),
        ClientTarget::Tcp(c) => (c.username.clone(), c.database.as_str()),
    };
    match engine {
        Engine::MariaDb => {
            cmd.args([
                "--no-defaults",
                "--batch",
                "--skip-column-names",
                &format!("--connect-timeout={CONNECT_TIMEOUT_SECS}"),
                &format!("--user={user}"),
                &format!("--database={database}"),
            ]);
            match target {
                ClientTarget::LocalAdmin { paths, .. } => {
                    cmd.arg("--protocol=socket")
                        .arg(format!("--socket={}", paths.socket(engine).display()))
                        .env_remove("MYSQL_PWD");
                }
                ClientTarget::Tcp(c) => {
                    cmd.args([
                        "--protocol=tcp",
                        &format!("--host={}", c.host),
                        &format!("--port={}", c.port),
                    ])
                    .env("MYSQL_PWD", &c.password);
                }
            }
        }
        Engine::PostgreSql => {
            cmd.args([
                "--no-psqlrc",
                "--quiet",
                "--no-align",
                "--tuples-only",
                "--field-separator=\t",
                "--no-password",
                "--set=ON_ERROR_STOP=1",
                &format!("--username={user}"),
                &format!("--dbname={database}"),
                "--file=-",
            ])
            .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_SECS.to_string())
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS");
            match target {
                ClientTarget::LocalAdmin { paths, port, .. } => {
                    cmd.arg(format!("--host={}", paths.socket(engine).display()))
                        .arg(format!("--port={port}"))
                        .env_remove("PGPASSWORD");
                }
                ClientTarget::Tcp(c) => {
                    cmd.arg(format!("--host={}", c.host))
                        .arg(format!("--port={}", c.port))
                        .env("PGPASSWORD", &c.password);
                }
            }
        }
    }
    let session = format!(
        "`{}` as user `{user}` on database `{database}`",
        client.display()
    );
    let sql_error = |status: String, stderr: String| Error::Sql {
        engine: engine.name(),
        session: session.clone(),
        status,
        stderr,
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| sql_error("not started".into(), e.to_string()))?;
    // Feed stdin from another thread so a large result cannot block a large script.
    let stdin = child.stdin.take();
    let script = sql.to_owned();
    let writer = std::thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(script.as_bytes());
            let _ = stdin.write_all(b"\n");
        }
    });
    let output = child
        .wait_with_output()
        .map_err(|e| sql_error("not waited for".into(), e.to_string()))?;
    let _ = writer.join();
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(sql_error(
            output.status.to_string(),
            String::from_utf8_lossy(&output.stderr)
                .trim_end()
                .to_owned(),
        ))
    }
}

/// `program args` as the `postgres` system user when running as root (PostgreSQL refuses to run
/// as root), through `setpriv`, which execs the program in place (the pid stays the server's).
fn as_postgres(program: &Path, args: Vec<String>) -> (PathBuf, Vec<String>) {
    if !geteuid().is_root() {
        return (program.to_path_buf(), args);
    }
    let mut wrapped = vec![
        "--reuid=postgres".to_owned(),
        "--regid=postgres".to_owned(),
        "--init-groups".to_owned(),
        "--".to_owned(),
        program.display().to_string(),
    ];
    wrapped.extend(args);
    (
        find_program(&["setpriv"]).unwrap_or_else(|| PathBuf::from("setpriv")),
        wrapped,
    )
}

fn postgres_user(engine: Engine) -> Result<User> {
    User::from_name("postgres")
        .map_err(|e| engine.error("looking up the `postgres` user", e.to_string()))?
        .ok_or_else(|| {
            engine.error(
                "looking up the `postgres` user",
                "there is no `postgres` system user (the Debian package `postgresql` creates it); \
                 PostgreSQL refuses to run as root",
            )
        })
}

/// The `postgres` user must be able to enter every directory above its data directory. Grants
/// that (others may search, not read) inside the layout root, which may be a private 0700
/// temporary directory; outside it, fails naming the directory.
fn ensure_searchable_by(engine: Engine, layout: &Layout, dir: &Path, user: &User) -> Result<()> {
    let root = layout.root();
    for ancestor in dir.ancestors() {
        let meta = fs::metadata(ancestor).map_err(Error::io("reading", ancestor))?;
        let mode = meta.mode();
        let searchable = if meta.uid() == user.uid.as_raw() {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid.as_raw() {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if searchable {
            continue;
        }
        if ancestor.starts_with(root) {
            fs::set_permissions(ancestor, fs::Permissions::from_mode(mode | 0o001))
                .map_err(Error::io("making searchable", ancestor))?;
        } else {
            return Err(engine.error(
                "preparing the data directory",
                format!(
                    "PostgreSQL runs as the `postgres` user, which cannot enter {}; make it \
                     searchable (`chmod o+x {}`) or use a layout root below a directory it can enter",
                    ancestor.display(),
                    ancestor.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Runs a one-off program (initialization) with its output appended to `log`.
fn run_logged(
    engine: Engine,
    step: &str,
    program: &Path,
    args: &[String],
    log: &Path,
) -> Result<()> {
    let (out, err) = process::log_outputs(log)?;
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(|source| Error::Spawn {
            component: format!("{engine} ({step})"),
            program: program.to_path_buf(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(engine.error(
            step,
            format!(
                "`{} {}` exited with {status}; log: {}\n--- last lines ---\n{}",
                program.display(),
                args.join(" "),
                log.display(),
                tail_of(log, 60)
            ),
        ))
    }
}

/// Installs the engine's Debian packages when its programs are missing (server and client, or
/// only the client). Only as root; one install at a time on the machine.
fn ensure_installed(layout: &Layout, engine: Engine, server: bool) -> Result<()> {
    let present = || {
        if server {
            find_server_programs(engine, None).is_some()
        } else {
            find_client(engine).is_some()
        }
    };
    if present() {
        return Ok(());
    }
    let packages = if server {
        engine.server_packages()
    } else {
        engine.client_packages()
    };
    if !geteuid().is_root() {
        return Err(Error::DatabasePackagesMissing {
            engine: engine.name(),
            missing: missing_description(engine, server),
            packages: packages.join(" "),
            env: engine.url_env(),
        });
    }
    let _lock = FileLock::acquire(&install_lock_path())?;
    if present() {
        return Ok(());
    }
    let log = layout.log("apt-get");
    tracing::info!(packages = %packages.join(" "), log = %log.display(), "installing database packages");
    apt_install(packages, &log)?;
    if present() {
        Ok(())
    } else {
        Err(engine.error(
            "installing the packages",
            format!(
                "apt-get installed {} but {} still not found; log: {}",
                packages.join(" "),
                missing_description(engine, server),
                log.display()
            ),
        ))
    }
}

fn missing_description(engine: Engine, server: bool) -> String {
    match (engine, server) {
        (Engine::MariaDb, true) => "mariadbd (or mysqld), mariadb-install-db and mariadb".into(),
        (Engine::PostgreSql, true) => {
            format!("{POSTGRES_LIB}/<version>/bin/{{postgres,initdb,psql}}")
        }
        (engine, false) => client_names(engine).join(" or "),
    }
}

/// The machine-wide lock serializing package installs (apt allows one at a time anyway, and a
/// second install of the same packages should just wait and find them).
fn install_lock_path() -> PathBuf {
    let run_lock = Path::new("/run/lock");
    let dir = if run_lock.is_dir() {
        run_lock.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join("kubetemplater-devcluster-apt.lock")
}

/// `apt-get install`, and when that fails `apt-get update` and once more.
fn apt_install(packages: &[&str], log: &Path) -> Result<()> {
    let install: Vec<String> = [
        "-y",
        "--no-install-recommends",
        "-o",
        "DPkg::Lock::Timeout=600",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
        "install",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain(packages.iter().map(|p| (*p).to_owned()))
    .collect();
    let update: Vec<String> = ["-o", "DPkg::Lock::Timeout=600", "update"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let mut status = run_apt(&install, log)?;
    if !status.success() {
        tracing::info!("apt-get install failed; running apt-get update and trying again");
        let _ = run_apt(&update, log)?;
        status = run_apt(&install, log)?;
    }
    if status.success() {
        Ok(())
    } else {
        Err(Error::InstallFailed {
            packages: packages.join(" "),
            status: status.to_string(),
            log: log.to_path_buf(),
            tail: tail_of(log, 30),
        })
    }
}

fn run_apt(args: &[String], log: &Path) -> Result<std::process::ExitStatus> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    }
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(Error::io("opening", log))?;
    let _ = writeln!(out, "\n$ apt-get {}", args.join(" "));
    let err = out.try_clone().map_err(Error::io("opening", log))?;
    Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(|source| Error::Spawn {
            component: "apt-get".into(),
            program: "apt-get".into(),
            source,
        })
}

fn client_names(engine: Engine) -> &'static [&'static str] {
    match engine {
        Engine::MariaDb => &["mariadb", "mysql"],
        Engine::PostgreSql => &["psql"],
    }
}

/// A program on `PATH` or in the usual system directories.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    names
        .iter()
        .find_map(|name| dirs.iter().map(|d| d.join(name)).find(|p| is_executable(p)))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Installed PostgreSQL versions (`/usr/lib/postgresql/<version>/bin` with postgres, initdb and
/// psql), newest first.
fn postgres_versions() -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(POSTGRES_LIB) else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.to_owned();
            let key: Vec<u32> = version
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            let bin = e.path().join("bin");
            ["postgres", "initdb", "psql"]
                .iter()
                .all(|p| is_executable(&bin.join(p)))
                .then_some((key, version, bin))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, v, bin)| (v, bin)).collect()
}

/// The server programs; for PostgreSQL the version `preferred` (that of an existing data
/// directory) when installed, else the newest.
fn find_server_programs(engine: Engine, preferred: Option<&str>) -> Option<Programs> {
    match engine {
        Engine::MariaDb => Some(Programs {
            server: find_program(&["mariadbd", "mysqld"])?,
            init: find_program(&["mariadb-install-db", "mysql_install_db"])?,
            client: find_program(&["mariadb", "mysql"])?,
        }),
        Engine::PostgreSql => {
            let versions = postgres_versions();
            let (_, bin) = preferred
                .and_then(|want| versions.iter().find(|(v, _)| v == want))
                .or_else(|| versions.first())?;
            Some(Programs {
                server: bin.join("postgres"),
                init: bin.join("initdb"),
                client: bin.join("psql"),
            })
        }
    }
}

fn find_client(engine: Engine) -> Option<PathBuf> {
    match engine {
        Engine::MariaDb => find_program(client_names(engine)),
        Engine::PostgreSql => postgres_versions()
            .first()
            .map(|(_, bin)| bin.join("psql"))
            .or_else(|| {
                // postgresql-client alone: no server, psql still under its version directory.
                fs::read_dir(POSTGRES_LIB).ok().and_then(|entries| {
                    entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.path().join("bin").join("psql"))
                        .find(|p| is_executable(p))
                })
            })
            .or_else(|| find_program(&["psql"])),
    }
}

/// The PostgreSQL version of an existing data directory (`PG_VERSION`).
fn data_version(engine: Engine, data: &Path) -> Option<String> {
    match engine {
        Engine::MariaDb => None,
        Engine::PostgreSql => {
            let mut text = String::new();
            File::open(data.join("PG_VERSION"))
                .ok()?
                .read_to_string(&mut text)
                .ok()?;
            Some(text.trim().to_owned())
        }
    }
}

/// Whether the data directory holds an initialized server (and, for PostgreSQL, one the
/// installed programs can run).
fn data_initialized(engine: Engine, data: &Path) -> bool {
    match engine {
        Engine::MariaDb => data.join("mysql").is_dir(),
        Engine::PostgreSql => data_version(engine, data)
            .is_some_and(|v| postgres_versions().iter().any(|(have, _)| *have == v)),
    }
}

fn validate_name(engine: Engine, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(engine.error(
            format!("creating database `{name}`"),
            "a name is 1 to 63 lower-case letters, digits and `_`, starting with a letter or `_`",
        ));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(engine.error(
            format!("creating database `{name}`"),
            "that is one of the server's own databases or users",
        ));
    }
    Ok(())
}

fn random_password() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses an admin URL: `scheme://[user[:password]@]host[:port][/database][?…]`.
fn parse_admin_url(engine: Engine, url: &str) -> Result<Connection> {
    let bad = |why: &str| {
        engine.error(
            format!("reading {}", engine.url_env()),
            format!(
                "`{url}` is not an admin URL like `{}://user:password@host:port/`: {why}",
                engine.url_scheme()
            ),
        )
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no `scheme://`"))?;
    let schemes: &[&str] = match engine {
        Engine::MariaDb => &["mysql", "mariadb"],
        Engine::PostgreSql => &["postgres", "postgresql"],
    };
    if !schemes.contains(&scheme.to_ascii_lowercase().as_str()) {
        return Err(bad(&format!(
            "the scheme must be one of {}",
            schemes.join(", ")
        )));
    }
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        Some(info) => {
            let (u, p) = info.split_once(':').unwrap_or((info, ""));
            (
                percent_decode(u).ok_or_else(|| bad("bad percent-encoding in the user"))?,
                percent_decode(p).ok_or_else(|| bad("bad percent-encoding in the password"))?,
            )
        }
        None => (engine.admin_user().to_owned(), String::new()),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
        (host.to_owned(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (hostport.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad("the port is not a number"))?,
        None => engine.default_port(),
    };
    let database =
        percent_decode(path).ok_or_else(|| bad("bad percent-encoding in the database"))?;
    Ok(Connection {
        engine,
        host,
        port,
        username: if username.is_empty() {
            engine.admin_user().to_owned()
        } else {
            username
        },
        password,
        database: if database.is_empty() {
            engine.admin_database().to_owned()
        } else {
            database
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_round_trip() {
        let c = Connection {
            engine: Engine::PostgreSql,
            host: "127.0.0.1".into(),
            port: 5433,
            username: "app".into(),
            password: "p@ss:w/rd".into(),
            database: "orders".into(),
        };
        assert_eq!(
            c.url(),
            "postgres://app:p%40ss%3Aw%2Frd@127.0.0.1:5433/orders"
        );
        assert_eq!(parse_admin_url(Engine::PostgreSql, &c.url()).unwrap(), c);
        let m = parse_admin_url(Engine::MariaDb, "mysql://root:secret@db.example").unwrap();
        assert_eq!(
            (
                m.host.as_str(),
                m.port,
                m.username.as_str(),
                m.password.as_str(),
                m.database.as_str()
            ),
            ("db.example", 3306, "root", "secret", "mysql")
        );
        let v6 = parse_admin_url(Engine::MariaDb, "mariadb://[::1]:3307/x?ssl=false").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.database.as_str()),
            ("::1", 3307, "x")
        );
        assert_eq!(v6.url(), "mysql://root:@[::1]:3307/x");
        let err = parse_admin_url(Engine::PostgreSql, "mysql://a@b/")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(POSTGRES_URL_ENV) && err.contains("scheme"),
            "{err}"
        );
        assert!(parse_admin_url(Engine::PostgreSql, "postgres://h:port/").is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name(Engine::MariaDb, "orders_1").is_ok());
        for bad in [
            "",
            "Orders",
            "1abc",
            "a-b",
            "mysql",
            "postgres",
            "template1",
            &"x".repeat(64),
        ] {
            assert!(validate_name(Engine::PostgreSql, bad).is_err(), "{bad:?}");
        }
        let a = unique_name("Tenant Rows!");
        assert!(a.starts_with("tenant_rows__"), "{a}");
        assert!(validate_name(Engine::MariaDb, &a).is_ok(), "{a}");
        assert_ne!(a, unique_name("Tenant Rows!"));
        assert!(validate_name(Engine::MariaDb, &unique_name("9lives")).is_ok());
    }

    #[test]
    fn unreachable_external_server_names_the_variable() {
        // An admin URL that cannot connect: the error says which variable pointed there.
        let port = free_port().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let url = format!("postgres://postgres:x@127.0.0.1:{port}/postgres");
        if find_client(Engine::PostgreSql).is_none() {
            return;
        }
        let err = DatabaseServer::external(&layout, Engine::PostgreSql, &url)
            .unwrap_err()
            .to_string();
        assert!(err.contains(POSTGRES_URL_ENV), "{err}");
    }
}
