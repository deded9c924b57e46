//! Datasources: the database table a TenantRegistry reads (MySQL/MariaDB, PostgreSQL, SQLite).
//!
//! [`resolve`] turns a registry's spec and its Secrets into [`Settings`]; [`Source::open`] makes a
//! small, lazily connecting pool from them (kept between syncs, replaced when the settings'
//! fingerprint changes); [`Source::read`] runs the one `SELECT` of a sync and streams its rows,
//! keeping only the active ones, so the table is never held in memory twice.
//!
//! TLS: with a `tls` block the server certificate is verified (against `caRef` or the webpki
//! roots) and a client certificate is offered when given; without one, TLS is used when the
//! server offers it (MySQL `PREFERRED`, PostgreSQL `sslMode`, default `prefer`).

mod error;
pub mod query;

use std::str::FromStr as _;
use std::time::{Duration, Instant};

use api::{DatabaseTls, PostgreSqlSslMode, SecretRef, SourceType, TenantRegistrySpec};
use futures::TryStreamExt as _;
use sha2::{Digest as _, Sha256};
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPoolOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{MySqlPool, PgPool, SqlitePool};

pub use error::SourceError;
pub use query::{Columns, Dialect, Row, is_active};

/// Connections one registry's pool may hold. A sync runs one query at a time; the second
/// connection lets a slow read and a settings check overlap.
const MAX_CONNECTIONS: u32 = 2;
/// How long to wait for a connection (the original pings with a 5 s timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections are closed after this long (the original's pool keeps them 5 minutes).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the values of referenced Secrets come from (the registry's namespace).
pub trait Secrets {
    /// The bytes under `r.key` in Secret `r.name`; `Err` says what is wrong ("not found", "has
    /// no key …", "forbidden …").
    fn value(
        &self,
        r: &SecretRef,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, String>> + Send;
}

/// Everything needed to connect and query, resolved from a registry's spec and Secrets.
#[derive(Debug, Clone)]
pub struct Settings {
    dialect: Dialect,
    address: String,
    user: String,
    database: String,
    table: String,
    columns: Columns,
    connect: Connect,
    fingerprint: String,
}

#[derive(Debug, Clone)]
enum Connect {
    MySql(MySqlConnectOptions),
    Postgres(PgConnectOptions),
    Sqlite(SqliteConnectOptions),
}

impl Settings {
    /// A digest of everything that shapes the connection and the query (password and
    /// certificates included): a pool is reused while it is unchanged.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The dialect of the source.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// host:port, or the SQLite file or URL.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The `SELECT` a sync runs.
    pub fn query(&self) -> String {
        query::select(self.dialect, &self.table, &self.columns)
    }

    /// The columns read, in query order.
    pub fn columns(&self) -> &Columns {
        &self.columns
    }
}

fn port(field: &str, port: i32) -> Result<u16, SourceError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| SourceError::Config(format!("{field}: port {port} is not in 1-65535")))
}

fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, SourceError> {
    if value.is_empty() {
        Err(SourceError::Config(format!("{field} must not be empty")))
    } else {
        Ok(value)
    }
}

async fn secret(
    secrets: &impl Secrets,
    field: &str,
    r: &SecretRef,
    digest: &mut Sha256,
) -> Result<Vec<u8>, SourceError> {
    let value = secrets
        .value(r)
        .await
        .map_err(|problem| SourceError::secret(field, r, problem))?;
    digest.update(field.as_bytes());
    digest.update((value.len() as u64).to_le_bytes());
    digest.update(&value);
    Ok(value)
}

fn utf8(field: &str, r: &SecretRef, bytes: Vec<u8>) -> Result<String, SourceError> {
    String::from_utf8(bytes).map_err(|_| SourceError::secret(field, r, "the value is not UTF-8"))
}

/// Certificates of a `tls` block, read from their Secrets.
struct TlsFiles {
    ca: Option<Vec<u8>>,
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
}

async fn tls_files(
    secrets: &impl Secrets,
    field: &str,
    tls: &DatabaseTls,
    digest: &mut Sha256,
) -> Result<TlsFiles, SourceError> {
    if tls.server_name.is_some() {
        return Err(SourceError::Config(format!(
            "{field}.serverName is not supported by the database drivers: connect with a host \
             name the server certificate names"
        )));
    }
    if tls.client_cert_ref.is_some() != tls.client_key_ref.is_some() {
        return Err(SourceError::Config(format!(
            "{field}: clientCertRef and clientKeyRef must be set together"
        )));
    }
    let mut read = async |name: &str, r: &Option<SecretRef>| match r {
        Some(r) => secret(secrets, &format!("{field}.{name}"), r, digest)
            .await
            .map(Some),
        None => Ok(None),
    };
    Ok(TlsFiles {
        ca: read("caRef", &tls.ca_ref).await?,
        cert: read("clientCertRef", &tls.client_cert_ref).await?,
        key: read("clientKeyRef", &tls.client_key_ref).await?,
    })
}

/// Resolves a registry's source: checks the settings, reads the password and certificates from
/// their Secrets, and builds the connection options.
pub async fn resolve(
    spec: &TenantRegistrySpec,
    secrets: &impl Secrets,
) -> Result<Settings, SourceError> {
    let columns = Columns::of_registry(spec);
    if let Some(field) = columns.empty_mapping() {
        return Err(SourceError::Config(format!("{field} must name a column")));
    }
    let mut digest = Sha256::new();
    digest.update(serde_json::to_vec(&spec.source).unwrap_or_default());
    digest.update(serde_json::to_vec(&spec.value_mappings).unwrap_or_default());
    digest.update(serde_json::to_vec(&spec.extra_value_mappings).unwrap_or_default());
    let source = &spec.source;
    let missing = |block: &str| {
        SourceError::Config(format!(
            "source.type is {} but source.{block} is not set",
            source.type_
        ))
    };
    let (dialect, address, user, database, table, connect) = match source.type_ {
        SourceType::Mysql => {
            let m = source.mysql.as_ref().ok_or_else(|| missing("mysql"))?;
            let host = required("source.mysql.host", &m.host)?;
            let port = port("source.mysql.port", m.port)?;
            let user = required("source.mysql.username", &m.username)?;
            let database = required("source.mysql.database", &m.database)?;
            let table = required("source.mysql.table", &m.table)?;
            let mut options = MySqlConnectOptions::new()
                .host(host)
                .port(port)
                .username(user)
                .database(database)
                .ssl_mode(MySqlSslMode::Preferred);
            if let Some(r) = &m.password_ref {
                let field = "source.mysql.passwordRef";
                let password = utf8(field, r, secret(secrets, field, r, &mut digest).await?)?;
                options = options.password(&password);
            }
            if let Some(tls) = &m.tls {
                let files = tls_files(secrets, "source.mysql.tls", tls, &mut digest).await?;
                options = options.ssl_mode(if tls.insecure_skip_verify {
                    MySqlSslMode::Required
                } else {
                    MySqlSslMode::VerifyIdentity
                });
                if let Some(ca) = files.ca {
                    options = options.ssl_ca_from_pem(ca);
                }
                if let (Some(cert), Some(key)) = (files.cert, files.key) {
                    options = options
                        .ssl_client_cert_from_pem(cert)
                        .ssl_client_key_from_pem(key);
                }
            }
            (
                Dialect::MySql,
                format!("{host}:{port}"),
                user.to_owned(),
                database.to_owned(),
                table.to_owned(),
                Connect::MySql(options),
            )
        }
        SourceType::Postgresql => {
            let p = source
                .postgresql
                .as_ref()
                .ok_or_else(|| missing("postgresql"))?;
            let host = required("source.postgresql.host", &p.host)?;
            let port = port("source.postgresql.port", p.port)?;
            let user = required("source.postgresql.username", &p.username)?;
            let database = required("source.postgresql.database", &p.database)?;
            let table = required("source.postgresql.table", &p.table)?;
            let mut options = PgConnectOptions::new_without_pgpass()
                .host(host)
                .port(port)
                .username(user)
                .database(database)
                .application_name("kubetemplater")
                .ssl_mode(match p.ssl_mode {
                    PostgreSqlSslMode::Disable => PgSslMode::Disable,
                    PostgreSqlSslMode::Prefer => PgSslMode::Prefer,
                    PostgreSqlSslMode::Require => PgSslMode::Require,
                    PostgreSqlSslMode::VerifyCa => PgSslMode::VerifyCa,
                    PostgreSqlSslMode::VerifyFull => PgSslMode::VerifyFull,
                });
            if let Some(r) = &p.password_ref {
                let field = "source.postgresql.passwordRef";
                let password = utf8(field, r, secret(secrets, field, r, &mut digest).await?)?;
                options = options.password(&password);
            }
            if let Some(tls) = &p.tls {
                let files = tls_files(secrets, "source.postgresql.tls", tls, &mut digest).await?;
                if tls.insecure_skip_verify {
                    options = options.ssl_mode(PgSslMode::Require);
                } else if matches!(
                    p.ssl_mode,
                    PostgreSqlSslMode::Disable | PostgreSqlSslMode::Prefer
                ) {
                    // A tls block asks for verified TLS; sslMode only weakens it when explicit.
                    options = options.ssl_mode(PgSslMode::VerifyFull);
                }
                if let Some(ca) = files.ca {
                    options = options.ssl_root_cert_from_pem(ca);
                }
                if let (Some(cert), Some(key)) = (files.cert, files.key) {
                    options = options
                        .ssl_client_cert_from_pem(cert)
                        .ssl_client_key_from_pem(key);
                }
            }
            (
                Dialect::Postgres,
                format!("{host}:{port}"),
                user.to_owned(),
                database.to_owned(),
                table.to_owned(),
                Connect::Postgres(options),
            )
        }
        SourceType::Sqlite => {
            let s = source.sqlite.as_ref().ok_or_else(|| missing("sqlite"))?;
            let table = required("source.sqlite.table", &s.table)?;
            let (address, options) = match (&s.path, &s.url) {
                (Some(path), None) => (
                    path.clone(),
                    SqliteConnectOptions::new()
                        .filename(required("source.sqlite.path", path)?)
                        .read_only(true),
                ),
                (None, Some(url)) => (
                    url.clone(),
                    SqliteConnectOptions::from_str(url).map_err(|e| {
                        SourceError::Config(format!("source.sqlite.url {url:?}: {e}"))
                    })?,
                ),
                _ => {
                    return Err(SourceError::Config(
                        "exactly one of source.sqlite.path and source.sqlite.url must be set"
                            .to_owned(),
                    ));
                }
            };
            (
                Dialect::Sqlite,
                address,
                String::new(),
                String::new(),
                table.to_owned(),
                Connect::Sqlite(options.create_if_missing(false)),
            )
        }
    };
    Ok(Settings {
        dialect,
        address,
        user,
        database,
        table,
        columns,
        connect,
        fingerprint: hex::encode(digest.finalize()),
    })
}

#[derive(Debug, Clone)]
enum Pool {
    MySql(MySqlPool),
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// An open source: settings and their pool. Connections are made on the first read.
#[derive(Debug, Clone)]
pub struct Source {
    settings: Settings,
    query: String,
    pool: Pool,
}

/// What one read returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rows {
    /// The active rows, in the table's order.
    pub active: Vec<Row>,
    /// Every row the query returned, active or not.
    pub total: usize,
}

impl Source {
    /// A source with a pool that connects when first used (at most two connections, 5 s to
    /// connect, idle ones closed after 5 minutes). Must be called inside a Tokio runtime.
    pub fn open(settings: Settings) -> Source {
        let query = settings.query();
        let pool = match &settings.connect {
            Connect::MySql(options) => Pool::MySql(
                MySqlPoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .idle_timeout(IDLE_TIMEOUT)
                    .connect_lazy_with(options.clone()),
            ),
            Connect::Postgres(options) => Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .idle_timeout(IDLE_TIMEOUT)
                    .connect_lazy_with(options.clone()),
            ),
            Connect::Sqlite(options) => Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .idle_timeout(IDLE_TIMEOUT)
                    .connect_lazy_with(options.clone()),
            ),
        };
        Source {
            settings,
            query,
            pool,
        }
    }

    /// The settings this source was opened with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Runs the sync's query and streams its rows, keeping the active ones. Fails, naming the
    /// cause, when the server cannot be reached, refuses the login, or lacks the database, the
    /// table or a column; or when the whole read takes longer than `timeout`.
    pub async fn read(&self, timeout: Duration) -> Result<Rows, SourceError> {
        let started = Instant::now();
        let read = async {
            match &self.pool {
                Pool::MySql(pool) => self.collect(sqlx::query(&self.query).fetch(pool)).await,
                Pool::Postgres(pool) => self.collect(sqlx::query(&self.query).fetch(pool)).await,
                Pool::Sqlite(pool) => self.collect(sqlx::query(&self.query).fetch(pool)).await,
            }
        };
        let rows = match tokio::time::timeout(timeout, read).await {
            Err(_) => {
                return Err(SourceError::Timeout {
                    seconds: timeout.as_secs(),
                });
            }
            // The pool hides why it could not connect: one direct attempt tells.
            Ok(Err(sqlx::Error::PoolTimedOut)) => return Err(self.diagnose().await),
            Ok(Err(error)) => return Err(self.classify(error)),
            Ok(Ok(rows)) => rows,
        };
        tracing::debug!(
            address = %self.settings.address,
            total = rows.total,
            active = rows.active.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "read the tenant table"
        );
        Ok(rows)
    }

    async fn collect<R>(
        &self,
        mut stream: impl futures::Stream<Item = Result<R, sqlx::Error>> + Unpin,
    ) -> Result<Rows, sqlx::Error>
    where
        R: sqlx::Row,
        usize: sqlx::ColumnIndex<R>,
        for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let columns = &self.settings.columns;
        let width = columns.len();
        let mut rows = Rows::default();
        while let Some(row) = stream.try_next().await? {
            rows.total += 1;
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(row.try_get::<Option<String>, usize>(i)?);
            }
            let row = Row::from_values(columns, values.into_iter());
            if is_active(&row.activate) {
                rows.active.push(row);
            }
        }
        Ok(rows)
    }

    /// Why no connection could be made: one connection attempt outside the pool, classified.
    async fn diagnose(&self) -> SourceError {
        use sqlx::ConnectOptions as _;
        let attempt = async {
            match &self.settings.connect {
                Connect::MySql(options) => options.connect().await.map(|_| ()),
                Connect::Postgres(options) => options.connect().await.map(|_| ()),
                Connect::Sqlite(options) => options.connect().await.map(|_| ()),
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Err(error)) => self.classify(error),
            // Connected now, or still hanging: report the pool's view.
            Ok(Ok(())) | Err(_) => SourceError::Unreachable {
                address: self.settings.address.clone(),
                detail: format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
            },
        }
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        match &self.pool {
            Pool::MySql(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
            Pool::Sqlite(pool) => pool.close().await,
        }
    }

    fn classify(&self, error: sqlx::Error) -> SourceError {
        let s = &self.settings;
        let detail = error.to_string();
        let unreachable = || SourceError::Unreachable {
            address: s.address.clone(),
            detail: detail.clone(),
        };
        match &error {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                unreachable()
            }
            sqlx::Error::Tls(_) => SourceError::Tls {
                address: s.address.clone(),
                detail,
            },
            sqlx::Error::Database(db) => {
                let code = match s.dialect {
                    Dialect::MySql => db
                        .try_downcast_ref::<MySqlDatabaseError>()
                        .map(|e| e.number().to_string()),
                    Dialect::Postgres | Dialect::Sqlite => db.code().map(|c| c.into_owned()),
                };
                let message = db.message();
                match (s.dialect, code.as_deref()) {
                    (Dialect::MySql, Some("1045" | "1044" | "1698"))
                    | (Dialect::Postgres, Some("28P01" | "28000")) => SourceError::Authentication {
                        user: s.user.clone(),
                        detail,
                    },
                    (Dialect::MySql, Some("1049")) | (Dialect::Postgres, Some("3D000")) => {
                        SourceError::UnknownDatabase {
                            database: s.database.clone(),
                            detail,
                        }
                    }
                    (Dialect::MySql, Some("1146")) | (Dialect::Postgres, Some("42P01")) => {
                        SourceError::UnknownTable {
                            table: s.table.clone(),
                            detail,
                        }
                    }
                    (Dialect::MySql, Some("1054")) | (Dialect::Postgres, Some("42703")) => {
                        self.unknown_column(detail)
                    }
                    (Dialect::Sqlite, _) if message.starts_with("no such table") => {
                        SourceError::UnknownTable {
                            table: s.table.clone(),
                            detail,
                        }
                    }
                    (Dialect::Sqlite, _) if message.starts_with("no such column") => {
                        self.unknown_column(detail)
                    }
                    (Dialect::Sqlite, _) if message.contains("unable to open database file") => {
                        unreachable()
                    }
                    _ => SourceError::Query(detail),
                }
            }
            _ => SourceError::Query(detail),
        }
    }

    fn unknown_column(&self, detail: String) -> SourceError {
        SourceError::UnknownColumn {
            table: self.settings.table.clone(),
            columns: self
                .settings
                .columns
                .in_order()
                .collect::<Vec<_>>()
                .join(", "),
            detail,
        }
    }
}
