//! The SQLite datasource end to end: a real database file, the registry's query, the original's
//! activation rule, NULLs, and a named error for each way the settings can be wrong.

use std::collections::BTreeMap;
use std::time::Duration;

use api::{DataSource, SecretRef, SourceType, SqliteSource, TenantRegistrySpec, ValueMappings};
use sqlx::Connection as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tenant::datasource::{self, Secrets, Source, SourceError};

struct NoSecrets;

impl Secrets for NoSecrets {
    async fn value(&self, r: &SecretRef) -> Result<Vec<u8>, String> {
        Err(format!("secret {} not found", r.name))
    }
}

async fn database(dir: &tempfile::TempDir, sql: &str) -> String {
    let path = dir.path().join("tenants.db");
    let mut conn = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true),
    )
    .await
    .expect("create the database");
    sqlx::raw_sql(sql).execute(&mut conn).await.expect("seed");
    conn.close().await.expect("close");
    path.display().to_string()
}

fn spec(path: &str, table: &str, extra: &[(&str, &str)]) -> TenantRegistrySpec {
    TenantRegistrySpec {
        source: DataSource {
            type_: SourceType::Sqlite,
            sync_interval: "30s".into(),
            mysql: None,
            postgresql: None,
            sqlite: Some(SqliteSource {
                path: Some(path.to_owned()),
                url: None,
                table: table.to_owned(),
            }),
        },
        value_mappings: ValueMappings {
            uid: "id".into(),
            host_or_url: Some("url".into()),
            activate: "is_active".into(),
        },
        extra_value_mappings: extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        deletion_safety: None,
    }
}

async fn read(spec: &TenantRegistrySpec) -> Result<datasource::Rows, SourceError> {
    let settings = datasource::resolve(spec, &NoSecrets).await?;
    let source = Source::open(settings);
    let rows = source.read(Duration::from_secs(10)).await;
    source.close().await;
    rows
}

const SEED: &str = r#"
CREATE TABLE "tenant list" (id INTEGER, url TEXT, is_active TEXT, plan_id INTEGER, region TEXT);
INSERT INTO "tenant list" VALUES
  (1, 'https://one.example.com:8443/app', '1', 10, 'eu'),
  (2, 'two.example.com', 'true', NULL, 'us'),
  (3, 'three.example.com', 'yes', 30, NULL),
  (4, 'four.example.com', '0', 40, 'eu'),
  (5, 'five.example.com', 'tRuE', 50, 'eu'),
  (6, NULL, 'Yes', 60, 'ap'),
  (7, 'seven.example.com', NULL, 70, 'eu');
"#;

#[tokio::test]
async fn active_rows_come_back_with_their_mapped_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = database(&dir, SEED).await;
    let rows = read(&spec(
        &path,
        "tenant list",
        &[("planId", "plan_id"), ("region", "region")],
    ))
    .await
    .expect("read");
    assert_eq!(rows.total, 7);
    let uids: Vec<_> = rows.active.iter().map(|r| r.uid.as_str()).collect();
    assert_eq!(
        uids,
        ["1", "2", "3", "6"],
        "only the original's truthy values"
    );
    let one = &rows.active[0];
    assert_eq!(one.host_or_url, "https://one.example.com:8443/app");
    assert_eq!(one.extra["planId"], "10", "integers read as text");
    let vars = one.vars();
    assert_eq!(vars.get("host"), Some("one.example.com"));
    assert_eq!(rows.active[1].extra["planId"], "", "NULL reads as empty");
    assert_eq!(rows.active[2].extra["region"], "");
    assert_eq!(
        rows.active[3].vars().get("hostOrUrl"),
        Some("6"),
        "no hostOrUrl: the uid stands in"
    );
}

#[tokio::test]
async fn each_wrong_setting_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = database(&dir, SEED).await;

    let missing_table = read(&spec(&path, "tenants", &[])).await.unwrap_err();
    assert!(
        matches!(&missing_table, SourceError::UnknownTable { table, .. } if table == "tenants"),
        "{missing_table}"
    );
    assert_eq!(missing_table.cause(), "TableNotFound");

    let missing_column = read(&spec(&path, "tenant list", &[("plan", "plan")]))
        .await
        .unwrap_err();
    assert!(
        matches!(&missing_column, SourceError::UnknownColumn { columns, .. } if columns.contains("plan")),
        "{missing_column}"
    );

    let missing_file = read(&spec(
        &dir.path().join("nope.db").display().to_string(),
        "t",
        &[],
    ))
    .await
    .unwrap_err();
    assert_eq!(
        missing_file.cause(),
        "DatabaseUnreachable",
        "{missing_file}"
    );

    let mut empty_uid = spec(&path, "tenant list", &[]);
    empty_uid.value_mappings.uid.clear();
    let error = read(&empty_uid).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid source settings: valueMappings.uid must name a column"
    );
}

#[tokio::test]
async fn a_table_name_is_quoted_not_spliced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = database(&dir, SEED).await;
    let error = read(&spec(&path, "tenant list`; DROP TABLE `tenant list", &[]))
        .await
        .unwrap_err();
    assert_eq!(error.cause(), "TableNotFound", "{error}");
    let rows = read(&spec(&path, "tenant list", &[]))
        .await
        .expect("still there");
    assert_eq!(rows.total, 7);
}

#[tokio::test]
async fn the_fingerprint_follows_the_settings() {
    let a = datasource::resolve(&spec("/a.db", "t", &[]), &NoSecrets)
        .await
        .expect("resolve");
    let b = datasource::resolve(&spec("/a.db", "t", &[]), &NoSecrets)
        .await
        .expect("resolve");
    let c = datasource::resolve(&spec("/b.db", "t", &[]), &NoSecrets)
        .await
        .expect("resolve");
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_ne!(a.fingerprint(), c.fingerprint());
}
