//! Why a source could not be read, precise enough to act on.

use api::SecretRef;

/// A failed read of a registry's source. Every variant says which object, setting or server is
/// at fault; the registry's `Ready` condition and a `DatabaseQueryFailed` event carry the message,
/// and no Tenant is deleted while reads fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The spec cannot be used as it is.
    #[error("invalid source settings: {0}")]
    Config(String),
    /// A referenced Secret or key is missing or unreadable.
    #[error("{field}: secret {name:?} key {key:?}: {problem}")]
    Secret {
        /// Which field referenced it (e.g. `source.mysql.passwordRef`).
        field: String,
        /// Secret name.
        name: String,
        /// Key in the Secret.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// No connection: refused, timed out, DNS, file missing.
    #[error("cannot reach the database at {address}: {detail}")]
    Unreachable {
        /// host:port or file.
        address: String,
        /// The driver's message.
        detail: String,
    },
    /// The server refused the login.
    #[error("the database refused user {user:?}: {detail}")]
    Authentication {
        /// The user name.
        user: String,
        /// The server's message.
        detail: String,
    },
    /// The database (schema) does not exist.
    #[error("database {database:?} does not exist: {detail}")]
    UnknownDatabase {
        /// The database name.
        database: String,
        /// The server's message.
        detail: String,
    },
    /// The table does not exist.
    #[error("table {table:?} does not exist: {detail}")]
    UnknownTable {
        /// The table name.
        table: String,
        /// The server's message.
        detail: String,
    },
    /// A mapped column does not exist.
    #[error("a mapped column is not in table {table:?} ({columns}): {detail}")]
    UnknownColumn {
        /// The table name.
        table: String,
        /// The mapped columns, for the reader.
        columns: String,
        /// The server's message.
        detail: String,
    },
    /// TLS setup or handshake failed.
    #[error("TLS to {address} failed: {detail}")]
    Tls {
        /// host:port.
        address: String,
        /// The driver's message.
        detail: String,
    },
    /// The query did not finish in time.
    #[error("the query did not finish within {seconds} s")]
    Timeout {
        /// The limit.
        seconds: u64,
    },
    /// Anything else the driver reported.
    #[error("query failed: {0}")]
    Query(String),
}

impl SourceError {
    /// A short CamelCase cause, used as the reason of the `DatabaseQueryFailed` event and in
    /// metrics.
    pub fn cause(&self) -> &'static str {
        match self {
            SourceError::Config(_) => "InvalidSource",
            SourceError::Secret { .. } => "SecretUnavailable",
            SourceError::Unreachable { .. } => "DatabaseUnreachable",
            SourceError::Authentication { .. } => "AuthenticationFailed",
            SourceError::UnknownDatabase { .. } => "DatabaseNotFound",
            SourceError::UnknownTable { .. } => "TableNotFound",
            SourceError::UnknownColumn { .. } => "ColumnNotFound",
            SourceError::Tls { .. } => "TLSFailed",
            SourceError::Timeout { .. } => "QueryTimeout",
            SourceError::Query(_) => "QueryFailed",
        }
    }

    pub(crate) fn secret(field: &str, r: &SecretRef, problem: impl Into<String>) -> Self {
        SourceError::Secret {
            field: field.to_owned(),
            name: r.name.clone(),
            key: r.key.clone(),
            problem: problem.into(),
        }
    }
}
