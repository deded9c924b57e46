//! The `mysql` datasource against a real MariaDB server (devcluster's shared one, a fresh
//! database and user per test): values read as text, the original's activation rule, quoted
//! table names, a named error for each way the settings can be wrong, the pool kept between
//! reads, and TLS only when asked for.

mod common;

use api::DatabaseTls;
use common::{Db, MapSecrets, assert_cause, read, row, uids};
use devcluster::database::{Engine, unique_name};
use tenant::datasource::SourceError;

const SEED: &str = "
CREATE TABLE tenants (
  id INT PRIMARY KEY,
  url VARCHAR(255),
  is_active BOOLEAN,
  active_text VARCHAR(16),
  plan_id INT,
  region VARCHAR(32),
  created_at DATETIME
);
INSERT INTO tenants VALUES
  (1, 'https://one.example.com:8443/app', TRUE, '1', 10, 'eu', '2024-01-02 03:04:05'),
  (2, 'two.example.com', FALSE, 'true', NULL, 'us', '2024-02-29 23:59:59'),
  (3, 'three.example.com', 1, 'TRUE', -30, NULL, NULL),
  (4, 'four.example.com', 0, 'True', 40, 'eu', NULL),
  (5, 'five.example.com', 2, 'yes', 50, 'eu', NULL),
  (6, NULL, 1, 'YES', 60, 'ap', NULL),
  (7, 'seven.example.com', NULL, 'Yes', 70, 'eu', NULL),
  (8, 'eight.example.com', 0, 'tRuE', 80, 'eu', NULL),
  (9, 'nine.example.com', 0, '0', 90, 'eu', NULL),
  (10, 'ten.example.com', 0, 'false', 100, 'eu', NULL),
  (11, 'eleven.example.com', 0, 'y', 110, 'eu', NULL),
  (12, 'twelve.example.com', 0, 'on', 120, 'eu', NULL),
  (13, 'thirteen.example.com', 0, ' 1', 130, 'eu', NULL),
  (14, 'fourteen.example.com', 0, '1 ', 140, 'eu', NULL),
  (15, 'fifteen.example.com', 0, '', 150, 'eu', NULL),
  (16, 'sixteen.example.com', 0, NULL, 160, 'eu', NULL),
  (17, 'seventeen.example.com', 0, 'yEs', 170, 'eu', NULL),
  (18, 'eighteen.example.com', 0, '2', 180, 'eu', NULL);
CREATE TABLE `tenant list` (id INT, url VARCHAR(255), is_active BOOLEAN);
INSERT INTO `tenant list` VALUES (1, 'a.example.com', TRUE), (2, 'b.example.com', FALSE);
CREATE TABLE `odd``name` (id INT, url VARCHAR(255), is_active BOOLEAN);
INSERT INTO `odd``name` VALUES (7, 'odd.example.com', TRUE);
";

const EXTRAS: &[(&str, &str)] = &[
    ("planId", "plan_id"),
    ("region", "region"),
    ("createdAt", "created_at"),
];

fn mysql(spec: &mut api::TenantRegistrySpec) -> &mut api::MySqlSource {
    spec.source.mysql.as_mut().expect("a mysql source")
}

#[tokio::test]
async fn active_rows_come_back_with_their_mapped_values() {
    let db = Db::new(Engine::MariaDb, "tenant_values", SEED).await;

    // BOOLEAN is TINYINT(1): it reads as "1"/"0" (and 2 as "2", which is not active).
    let rows = read(&db.spec("tenants", "is_active", EXTRAS), &db.secrets())
        .await
        .expect("read with a BOOLEAN activation column");
    assert_eq!(rows.total, 18);
    assert_eq!(uids(&rows), [1, 3, 6]);
    let one = row(&rows, "1");
    assert_eq!(one.activate, "1");
    assert_eq!(one.host_or_url, "https://one.example.com:8443/app");
    assert_eq!(one.extra["planId"], "10", "INT reads as decimal text");
    assert_eq!(one.extra["region"], "eu");
    assert_eq!(one.extra["createdAt"], "2024-01-02 03:04:05");
    assert_eq!(one.vars().get("host"), Some("one.example.com"));
    let three = row(&rows, "3");
    assert_eq!(three.extra["planId"], "-30");
    assert_eq!(three.extra["region"], "", "NULL reads as empty");
    assert_eq!(three.extra["createdAt"], "");
    let six = row(&rows, "6");
    assert_eq!(six.host_or_url, "");
    assert_eq!(six.vars().get("hostOrUrl"), Some("6"), "the uid stands in");

    // A VARCHAR column: exactly the original's truth table.
    let rows = read(&db.spec("tenants", "active_text", EXTRAS), &db.secrets())
        .await
        .expect("read with a VARCHAR activation column");
    assert_eq!(rows.total, 18);
    assert_eq!(uids(&rows), [1, 2, 3, 4, 5, 6, 7]);
    let two = row(&rows, "2");
    assert_eq!(two.activate, "true");
    assert_eq!(two.extra["planId"], "", "NULL INT reads as empty");
    assert_eq!(two.extra["createdAt"], "2024-02-29 23:59:59");
}

#[tokio::test]
async fn table_names_are_quoted_not_spliced() {
    let db = Db::new(Engine::MariaDb, "tenant_quoting", SEED).await;
    let secrets = db.secrets();

    let rows = read(&db.spec("tenant list", "is_active", &[]), &secrets)
        .await
        .expect("a table name with a space");
    assert_eq!((rows.total, uids(&rows)), (2, vec![1]));

    let rows = read(&db.spec("odd`name", "is_active", &[]), &secrets)
        .await
        .expect("a table name with a backquote");
    assert_eq!((rows.total, uids(&rows)), (1, vec![7]));

    let injected = "tenant list`; DROP TABLE `tenant list";
    let error = read(&db.spec(injected, "is_active", &[]), &secrets)
        .await
        .expect_err("no such table");
    assert!(
        matches!(&error, SourceError::UnknownTable { table, .. } if table == injected),
        "{error}"
    );
    assert_cause(&error, "TableNotFound");
    let rows = read(&db.spec("tenant list", "is_active", &[]), &secrets)
        .await
        .expect("the table is still there");
    assert_eq!(rows.total, 2);
}

#[tokio::test]
async fn each_wrong_setting_is_named() {
    let db = Db::new(Engine::MariaDb, "tenant_errors", SEED).await;
    let secrets = db.secrets();

    let error = read(&db.spec("missing", "is_active", &[]), &secrets)
        .await
        .expect_err("missing table");
    assert!(
        matches!(&error, SourceError::UnknownTable { table, .. } if table == "missing"),
        "{error}"
    );
    assert_cause(&error, "TableNotFound");

    let error = read(
        &db.spec("tenants", "is_active", &[("plan", "plan")]),
        &secrets,
    )
    .await
    .expect_err("missing column");
    assert!(
        matches!(&error, SourceError::UnknownColumn { table, columns, .. }
            if table == "tenants" && columns == "id, url, is_active, plan"),
        "{error}"
    );
    assert_cause(&error, "ColumnNotFound");

    let error = read(
        &db.spec("tenants", "is_active", &[]),
        &MapSecrets::with(&common::password_ref(), "not-the-password"),
    )
    .await
    .expect_err("wrong password");
    assert!(
        matches!(&error, SourceError::Authentication { user, .. } if *user == db.conn.username),
        "{error}"
    );
    assert_cause(&error, "AuthenticationFailed");

    // A user with global privileges learns that the database does not exist (1049)...
    let admin = db.server.admin_connection().clone();
    let missing_db = unique_name("missing");
    let mut spec = db.spec("tenants", "is_active", &[]);
    let m = mysql(&mut spec);
    m.username = admin.username.clone();
    m.database = missing_db.clone();
    let error = read(
        &spec,
        &MapSecrets::with(&common::password_ref(), &admin.password),
    )
    .await
    .expect_err("unknown database");
    assert!(
        matches!(&error, SourceError::UnknownDatabase { database, .. } if *database == missing_db),
        "{error}"
    );
    assert_cause(&error, "DatabaseNotFound");
    // ...one limited to its own database is only told that it may not use it (1044), which
    // reads as a refused login; the server's message names the database.
    let mut spec = db.spec("tenants", "is_active", &[]);
    mysql(&mut spec).database = missing_db.clone();
    let error = read(&spec, &secrets)
        .await
        .expect_err("a database the user may not use");
    assert_cause(&error, "AuthenticationFailed");
    assert!(error.to_string().contains(&missing_db), "{error}");

    common::unreachable_and_missing_secret_are_named(&db).await;
}

#[tokio::test]
async fn the_pool_is_kept_between_reads() {
    let db = Db::new(Engine::MariaDb, "tenant_pool", SEED).await;
    common::the_pool_is_kept(&db, EXTRAS).await;
}

#[tokio::test]
async fn tls_is_used_only_when_asked_for() {
    let db = Db::new(Engine::MariaDb, "tenant_tls", SEED).await;
    let have_ssl = db.execute("SHOW GLOBAL VARIABLES LIKE 'have_ssl'").await;
    let offers_tls = have_ssl.split_whitespace().nth(1) == Some("YES");
    eprintln!("MariaDB offers TLS: {offers_tls} ({})", have_ssl.trim());

    // Without a tls block: TLS if offered (PREFERRED), plain otherwise; either way it reads.
    let rows = read(&db.spec("tenants", "is_active", &[]), &db.secrets())
        .await
        .expect("read without a tls block");
    assert_eq!(rows.total, 18);

    // With one, TLS is required.
    let mut spec = db.spec("tenants", "is_active", &[]);
    mysql(&mut spec).tls = Some(DatabaseTls {
        insecure_skip_verify: true,
        ..DatabaseTls::default()
    });
    let result = read(&spec, &db.secrets()).await;
    if offers_tls {
        assert_eq!(result.expect("read over TLS").total, 18);
    } else {
        let error = result.expect_err("the server offers no TLS");
        assert!(matches!(error, SourceError::Tls { .. }), "{error}");
        assert_cause(&error, "TLSFailed");
    }
}
