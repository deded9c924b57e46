//! The `postgresql` datasource against a real PostgreSQL server (devcluster's shared one, a
//! fresh database and user per test): values read as text, the original's activation rule,
//! quoted (and case-sensitive) table names, a named error for each way the settings can be
//! wrong, the pool kept between reads, and TLS as sslMode says.

mod common;

use api::PostgreSqlSslMode;
use common::{Db, MapSecrets, assert_cause, read, row, uids};
use devcluster::database::{Engine, unique_name};
use tenant::datasource::SourceError;

const SEED: &str = r#"
CREATE TABLE tenants (
  id INT PRIMARY KEY,
  url VARCHAR(255),
  is_active BOOLEAN,
  active_text TEXT,
  plan_id INT,
  region TEXT,
  created_at TIMESTAMP
);
INSERT INTO tenants VALUES
  (1, 'https://one.example.com:8443/app', TRUE, '1', 10, 'eu', '2024-01-02 03:04:05'),
  (2, 'two.example.com', FALSE, 'true', NULL, 'us', '2024-02-29 23:59:59'),
  (3, 'three.example.com', TRUE, 'TRUE', -30, NULL, NULL),
  (4, 'four.example.com', FALSE, 'True', 40, 'eu', NULL),
  (5, 'five.example.com', FALSE, 'yes', 50, 'eu', NULL),
  (6, NULL, TRUE, 'YES', 60, 'ap', NULL),
  (7, 'seven.example.com', NULL, 'Yes', 70, 'eu', NULL),
  (8, 'eight.example.com', FALSE, 'tRuE', 80, 'eu', NULL),
  (9, 'nine.example.com', FALSE, '0', 90, 'eu', NULL),
  (10, 'ten.example.com', FALSE, 'false', 100, 'eu', NULL),
  (11, 'eleven.example.com', FALSE, 'y', 110, 'eu', NULL),
  (12, 'twelve.example.com', FALSE, 'on', 120, 'eu', NULL),
  (13, 'thirteen.example.com', FALSE, ' 1', 130, 'eu', NULL),
  (14, 'fourteen.example.com', FALSE, '1 ', 140, 'eu', NULL),
  (15, 'fifteen.example.com', FALSE, '', 150, 'eu', NULL),
  (16, 'sixteen.example.com', FALSE, NULL, 160, 'eu', NULL),
  (17, 'seventeen.example.com', FALSE, 'yEs', 170, 'eu', NULL),
  (18, 'eighteen.example.com', FALSE, 't', 180, 'eu', NULL);
CREATE TABLE "tenant list" (id INT, url TEXT, is_active BOOLEAN);
INSERT INTO "tenant list" VALUES (1, 'a.example.com', TRUE), (2, 'b.example.com', FALSE);
CREATE TABLE "Tenant Rows" (id INT, url TEXT, is_active BOOLEAN);
INSERT INTO "Tenant Rows" VALUES (3, 'c.example.com', TRUE);
CREATE TABLE "say ""hi""" (id INT, url TEXT, is_active BOOLEAN);
INSERT INTO "say ""hi""" VALUES (4, 'd.example.com', TRUE);
"#;

const EXTRAS: &[(&str, &str)] = &[
    ("planId", "plan_id"),
    ("region", "region"),
    ("createdAt", "created_at"),
];

fn postgresql(spec: &mut api::TenantRegistrySpec) -> &mut api::PostgreSqlSource {
    spec.source
        .postgresql
        .as_mut()
        .expect("a postgresql source")
}

#[tokio::test]
async fn active_rows_come_back_with_their_mapped_values() {
    let db = Db::new(Engine::PostgreSql, "tenant_values", SEED).await;

    // BOOLEAN reads as "true"/"false".
    let rows = read(&db.spec("tenants", "is_active", EXTRAS), &db.secrets())
        .await
        .expect("read with a BOOLEAN activation column");
    assert_eq!(rows.total, 18);
    assert_eq!(uids(&rows), [1, 3, 6]);
    let one = row(&rows, "1");
    assert_eq!(one.activate, "true");
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

    // A TEXT column: exactly the original's truth table.
    let rows = read(&db.spec("tenants", "active_text", EXTRAS), &db.secrets())
        .await
        .expect("read with a TEXT activation column");
    assert_eq!(rows.total, 18);
    assert_eq!(uids(&rows), [1, 2, 3, 4, 5, 6, 7]);
    let two = row(&rows, "2");
    assert_eq!(two.activate, "true");
    assert_eq!(two.extra["planId"], "", "NULL INT reads as empty");
    assert_eq!(two.extra["createdAt"], "2024-02-29 23:59:59");
}

#[tokio::test]
async fn table_names_are_quoted_not_spliced() {
    let db = Db::new(Engine::PostgreSql, "tenant_quoting", SEED).await;
    let secrets = db.secrets();

    for (table, total, active) in [
        ("tenant list", 2, vec![1]),
        ("Tenant Rows", 1, vec![3]),
        ("public.Tenant Rows", 1, vec![3]),
        ("say \"hi\"", 1, vec![4]),
    ] {
        let rows = read(&db.spec(table, "is_active", &[]), &secrets)
            .await
            .unwrap_or_else(|e| panic!("table {table:?}: {e}"));
        assert_eq!((rows.total, uids(&rows)), (total, active), "{table:?}");
    }

    // Quoted names are case-sensitive: the unquoted spelling's folding does not apply.
    let error = read(&db.spec("tenant rows", "is_active", &[]), &secrets)
        .await
        .expect_err("a different table");
    assert_cause(&error, "TableNotFound");

    let injected = "tenant list\"; DROP TABLE \"tenant list";
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
    let db = Db::new(Engine::PostgreSql, "tenant_errors", SEED).await;
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

    let missing_db = unique_name("missing");
    let mut spec = db.spec("tenants", "is_active", &[]);
    postgresql(&mut spec).database = missing_db.clone();
    let error = read(&spec, &secrets).await.expect_err("unknown database");
    assert!(
        matches!(&error, SourceError::UnknownDatabase { database, .. } if *database == missing_db),
        "{error}"
    );
    assert_cause(&error, "DatabaseNotFound");

    common::unreachable_and_missing_secret_are_named(&db).await;
}

#[tokio::test]
async fn the_pool_is_kept_between_reads() {
    let db = Db::new(Engine::PostgreSql, "tenant_pool", SEED).await;
    common::the_pool_is_kept(&db, EXTRAS).await;
}

#[tokio::test]
async fn tls_follows_the_ssl_mode() {
    let db = Db::new(Engine::PostgreSql, "tenant_tls", SEED).await;
    let offers_tls = db.execute("SHOW ssl").await.trim() == "on";
    eprintln!("PostgreSQL offers TLS: {offers_tls}");

    // No tls block, sslMode prefer (the default): TLS if offered, plain otherwise.
    let rows = read(&db.spec("tenants", "is_active", &[]), &db.secrets())
        .await
        .expect("read with sslMode prefer");
    assert_eq!(rows.total, 18);

    let mut spec = db.spec("tenants", "is_active", &[]);
    postgresql(&mut spec).ssl_mode = PostgreSqlSslMode::Disable;
    let rows = read(&spec, &db.secrets())
        .await
        .expect("read with sslMode disable");
    assert_eq!(rows.total, 18);

    let mut spec = db.spec("tenants", "is_active", &[]);
    postgresql(&mut spec).ssl_mode = PostgreSqlSslMode::Require;
    let result = read(&spec, &db.secrets()).await;
    if offers_tls {
        assert_eq!(result.expect("read over TLS").total, 18);
    } else {
        let error = result.expect_err("the server offers no TLS");
        assert!(matches!(error, SourceError::Tls { .. }), "{error}");
        assert_cause(&error, "TLSFailed");
    }
}
