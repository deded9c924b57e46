//! Shared by the MariaDB and PostgreSQL datasource tests: the shared server of an engine, a
//! fresh database per test, a registry spec pointing at it, and Secrets backed by a map.
//!
//! The servers belong to the shared layout (`devcluster::Layout::shared()`): every test of every
//! process uses them, so nothing here stops them; each test takes its own database and user.

use std::collections::BTreeMap;
use std::time::Duration;

use api::{
    DataSource, MySqlSource, PostgreSqlSource, PostgreSqlSslMode, SecretRef, SourceType,
    TenantRegistrySpec, ValueMappings,
};
use devcluster::Layout;
use devcluster::database::{Connection, DatabaseServer, Engine, unique_name};
use tenant::datasource::{self, Rows, Secrets, Source, SourceError};

/// How long one read may take. Longer than the pool's 5 s connect timeout, so an unreachable
/// server reads as `Unreachable`, not `Timeout`.
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// The Secret and key the password is read from.
pub fn password_ref() -> SecretRef {
    SecretRef {
        name: "tenant-db".into(),
        key: "password".into(),
    }
}

/// Secrets of the registry's namespace: (name, key) → value.
#[derive(Debug, Default, Clone)]
pub struct MapSecrets(BTreeMap<(String, String), Vec<u8>>);

impl MapSecrets {
    /// One Secret key holding `value`.
    pub fn with(r: &SecretRef, value: &str) -> Self {
        let mut map = BTreeMap::new();
        map.insert((r.name.clone(), r.key.clone()), value.as_bytes().to_vec());
        Self(map)
    }
}

impl Secrets for MapSecrets {
    async fn value(&self, r: &SecretRef) -> Result<Vec<u8>, String> {
        if !self.0.keys().any(|(name, _)| *name == r.name) {
            return Err(format!("secret {:?} not found", r.name));
        }
        self.0
            .get(&(r.name.clone(), r.key.clone()))
            .cloned()
            .ok_or_else(|| format!("secret {:?} has no key {:?}", r.name, r.key))
    }
}

/// A fresh database with its own user on the shared server of an engine.
#[derive(Debug, Clone)]
pub struct Db {
    /// The shared server.
    pub server: DatabaseServer,
    /// The test's database and user.
    pub conn: Connection,
}

impl Db {
    /// Starts (or reuses) the shared server and creates a database named after `prefix`, then
    /// runs `seed` in it as the admin.
    pub async fn new(engine: Engine, prefix: &str, seed: &str) -> Db {
        let prefix = prefix.to_owned();
        let seed = seed.to_owned();
        tokio::task::spawn_blocking(move || {
            let server = DatabaseServer::start(&Layout::shared(), engine)
                .unwrap_or_else(|e| panic!("start the shared {engine} server: {e}"));
            let conn = server
                .create_database(&unique_name(&prefix))
                .unwrap_or_else(|e| panic!("create a {engine} database: {e}"));
            server
                .execute(&conn.database, &seed)
                .unwrap_or_else(|e| panic!("seed the {engine} database: {e}"));
            Db { server, conn }
        })
        .await
        .expect("database setup thread")
    }

    /// Runs SQL as the admin in the test's database and returns what the client printed.
    pub async fn execute(&self, sql: &str) -> String {
        let server = self.server.clone();
        let database = self.conn.database.clone();
        let sql = sql.to_owned();
        tokio::task::spawn_blocking(move || {
            server
                .execute(&database, &sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        })
        .await
        .expect("SQL thread")
    }

    /// The server's ids of the test user's open sessions, sorted.
    pub async fn sessions(&self) -> Vec<String> {
        let user = &self.conn.username;
        let sql = match self.conn.engine {
            Engine::MariaDb => format!(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{user}' ORDER BY ID"
            ),
            Engine::PostgreSql => format!(
                "SELECT pid FROM pg_stat_activity WHERE usename = '{user}' \
                 AND backend_type = 'client backend' ORDER BY pid"
            ),
        };
        self.execute(&sql)
            .await
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// The Secrets holding the test user's password under [`password_ref`].
    pub fn secrets(&self) -> MapSecrets {
        MapSecrets::with(&password_ref(), &self.conn.password)
    }

    /// A registry reading `table` of the test's database as the test's user: uid `id`,
    /// hostOrUrl `url`, activate `activate`, and the extra mappings (variable, column).
    pub fn spec(&self, table: &str, activate: &str, extra: &[(&str, &str)]) -> TenantRegistrySpec {
        let c = &self.conn;
        let (type_, mysql, postgresql) = match c.engine {
            Engine::MariaDb => (
                SourceType::Mysql,
                Some(MySqlSource {
                    host: c.host.clone(),
                    port: i32::from(c.port),
                    username: c.username.clone(),
                    password_ref: Some(password_ref()),
                    database: c.database.clone(),
                    table: table.to_owned(),
                    tls: None,
                }),
                None,
            ),
            Engine::PostgreSql => (
                SourceType::Postgresql,
                None,
                Some(PostgreSqlSource {
                    host: c.host.clone(),
                    port: i32::from(c.port),
                    username: c.username.clone(),
                    password_ref: Some(password_ref()),
                    database: c.database.clone(),
                    table: table.to_owned(),
                    ssl_mode: PostgreSqlSslMode::default(),
                    tls: None,
                }),
            ),
        };
        TenantRegistrySpec {
            source: DataSource {
                type_,
                sync_interval: "30s".into(),
                mysql,
                postgresql,
                sqlite: None,
            },
            value_mappings: ValueMappings {
                uid: "id".into(),
                host_or_url: Some("url".into()),
                activate: activate.to_owned(),
            },
            extra_value_mappings: extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            deletion_safety: None,
        }
    }
}

/// Resolves `spec`, opens a source, reads once and closes it.
pub async fn read(spec: &TenantRegistrySpec, secrets: &impl Secrets) -> Result<Rows, SourceError> {
    let source = Source::open(datasource::resolve(spec, secrets).await?);
    let rows = source.read(READ_TIMEOUT).await;
    source.close().await;
    rows
}

/// The uids of the active rows, in numeric order (the query has no `ORDER BY`).
pub fn uids(rows: &Rows) -> Vec<i64> {
    let mut uids: Vec<i64> = rows
        .active
        .iter()
        .map(|r| r.uid.parse().expect("numeric uid"))
        .collect();
    uids.sort_unstable();
    uids
}

/// The active row with `uid`.
pub fn row<'a>(rows: &'a Rows, uid: &str) -> &'a datasource::Row {
    rows.active
        .iter()
        .find(|r| r.uid == uid)
        .unwrap_or_else(|| panic!("no active row {uid} in {:?}", rows.active))
}

/// Asserts the variant of an error by its cause, showing the error when it differs.
#[track_caller]
pub fn assert_cause(error: &SourceError, cause: &str) {
    assert_eq!(error.cause(), cause, "{error}");
}

/// A port nothing listens on.
/// A port on 127.0.0.1 that refuses connections for as long as the returned socket lives: bound,
/// never listening. A port that was merely free when picked can be taken meanwhile, even by the
/// client's own connection (an ephemeral source port equal to the destination connects to
/// itself), which then fails with a reset instead of a refusal.
pub fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("binding 127.0.0.1:0");
    let port = socket.local_addr().expect("its address").port();
    (socket, port)
}

impl Db {
    /// The port and password Secret of `spec`'s source, whatever the engine.
    fn source_fields<'a>(
        &self,
        spec: &'a mut TenantRegistrySpec,
    ) -> (&'a mut i32, &'a mut Option<SecretRef>) {
        match self.conn.engine {
            Engine::MariaDb => {
                let m = spec.source.mysql.as_mut().expect("a mysql source");
                (&mut m.port, &mut m.password_ref)
            }
            Engine::PostgreSql => {
                let p = spec
                    .source
                    .postgresql
                    .as_mut()
                    .expect("a postgresql source");
                (&mut p.port, &mut p.password_ref)
            }
        }
    }

    /// The field name of the password Secret in errors (`source.mysql.passwordRef` …).
    fn password_field(&self) -> &'static str {
        match self.conn.engine {
            Engine::MariaDb => "source.mysql.passwordRef",
            Engine::PostgreSql => "source.postgresql.passwordRef",
        }
    }
}

/// A port nothing listens on is `Unreachable` (naming the address, with the refusal), and a
/// password Secret that does not exist is `Secret` (naming the field, Secret and key).
pub async fn unreachable_and_missing_secret_are_named(db: &Db) {
    let secrets = db.secrets();
    let (_refusing, port) = refusing_port();
    let mut spec = db.spec("tenants", "is_active", &[]);
    *db.source_fields(&mut spec).0 = i32::from(port);
    let error = read(&spec, &secrets).await.expect_err("nothing listens");
    assert!(
        matches!(&error, SourceError::Unreachable { address, detail }
            if *address == format!("127.0.0.1:{port}") && detail.contains("refused")),
        "{error}"
    );
    assert_cause(&error, "DatabaseUnreachable");

    let mut spec = db.spec("tenants", "is_active", &[]);
    *db.source_fields(&mut spec).1 = Some(SecretRef {
        name: "no-such-secret".into(),
        key: "password".into(),
    });
    let error = datasource::resolve(&spec, &secrets)
        .await
        .expect_err("missing secret");
    let wanted = db.password_field();
    assert!(
        matches!(&error, SourceError::Secret { field, name, key, .. }
            if field == wanted && name == "no-such-secret" && key == "password"),
        "{error}"
    );
    assert_cause(&error, "SecretUnavailable");
}

/// Two reads on one source use one pooled connection, and the second sees a row inserted in
/// between. The seed's `tenants` table has 18 rows, 7 of them active by `active_text`.
pub async fn the_pool_is_kept(db: &Db, extras: &[(&str, &str)]) {
    let source = Source::open(
        datasource::resolve(&db.spec("tenants", "active_text", extras), &db.secrets())
            .await
            .expect("resolve"),
    );
    let first = source.read(READ_TIMEOUT).await.expect("first read");
    assert_eq!((first.total, first.active.len()), (18, 7));
    let sessions = db.sessions().await;
    assert_eq!(sessions.len(), 1, "one pooled connection: {sessions:?}");

    db.execute("INSERT INTO tenants (id, url, active_text, plan_id) VALUES (19, 'new.example.com', 'Yes', 190)")
        .await;
    let second = source.read(READ_TIMEOUT).await.expect("second read");
    assert_eq!(second.total, 19);
    assert_eq!(uids(&second), [1, 2, 3, 4, 5, 6, 7, 19]);
    assert_eq!(row(&second, "19").extra["planId"], "190");
    assert_eq!(
        db.sessions().await,
        sessions,
        "the second read reused the connection"
    );
    source.close().await;
}
