//! The one query a sync runs, and how its rows are read.
//!
//! As the original: the uid, hostOrUrl and activate columns, then every extra column in sorted
//! variable-name order; no `WHERE`, no `ORDER BY`; every value read as a nullable string (NULL
//! becomes ""). Unlike the original, the table name is quoted too (it was spliced in raw), and
//! each value is cast to text in SQL so integer, boolean and date columns read the same on every
//! database.

use std::collections::BTreeMap;

use api::{TenantRegistrySpec, ValueMappings};

/// The SQL dialect of a source: how identifiers are quoted and values cast to text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// MySQL and MariaDB: `` `name` ``, `CAST(… AS CHAR)`.
    MySql,
    /// PostgreSQL: `"name"`, `CAST(… AS TEXT)`.
    Postgres,
    /// SQLite: `` `name` ``, `CAST(… AS TEXT)`.
    Sqlite,
}

impl Dialect {
    /// One identifier, quoted; a quote inside it is doubled.
    pub fn quote(self, ident: &str) -> String {
        let quote = match self {
            // SQLite takes a double-quoted name it cannot resolve as a string literal (a
            // misspelt column would read as its own name); backquotes never fall back.
            Dialect::MySql | Dialect::Sqlite => '`',
            Dialect::Postgres => '"',
        };
        let mut quoted = String::with_capacity(ident.len() + 2);
        quoted.push(quote);
        for c in ident.chars() {
            if c == quote {
                quoted.push(quote);
            }
            quoted.push(c);
        }
        quoted.push(quote);
        quoted
    }

    /// A table name, each dot-separated part quoted (`schema.table` → `"schema"."table"`).
    pub fn quote_table(self, table: &str) -> String {
        table
            .split('.')
            .map(|part| self.quote(part))
            .collect::<Vec<_>>()
            .join(".")
    }

    fn text_cast(self, column: &str) -> String {
        let target = match self {
            Dialect::MySql => "CHAR",
            Dialect::Postgres | Dialect::Sqlite => "TEXT",
        };
        format!("CAST({} AS {target})", self.quote(column))
    }
}

/// The columns a registry reads, in query order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// Column of the tenant's uid.
    pub uid: String,
    /// Column of the tenant's host or URL, when mapped.
    pub host_or_url: Option<String>,
    /// Column of the activation flag.
    pub activate: String,
    /// Extra variables: (variable name, column), sorted by variable name.
    pub extras: Vec<(String, String)>,
}

impl Columns {
    /// The columns of a registry's value mappings.
    pub fn of(mappings: &ValueMappings, extra: &BTreeMap<String, String>) -> Self {
        Self {
            uid: mappings.uid.clone(),
            host_or_url: mappings
                .host_or_url
                .clone()
                .filter(|column| !column.is_empty()),
            activate: mappings.activate.clone(),
            extras: extra
                .iter()
                .map(|(var, column)| (var.clone(), column.clone()))
                .collect(),
        }
    }

    /// The columns of a registry.
    pub fn of_registry(spec: &TenantRegistrySpec) -> Self {
        Self::of(&spec.value_mappings, &spec.extra_value_mappings)
    }

    /// Every column in query order.
    pub fn in_order(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.uid.as_str())
            .chain(self.host_or_url.as_deref())
            .chain(std::iter::once(self.activate.as_str()))
            .chain(self.extras.iter().map(|(_, column)| column.as_str()))
    }

    /// Number of columns selected.
    pub fn len(&self) -> usize {
        2 + usize::from(self.host_or_url.is_some()) + self.extras.len()
    }

    /// Always false: uid and activate are always read.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The first empty column name, as `(field, variable)`, if any.
    pub fn empty_mapping(&self) -> Option<String> {
        if self.uid.is_empty() {
            return Some("valueMappings.uid".to_owned());
        }
        if self.activate.is_empty() {
            return Some("valueMappings.activate".to_owned());
        }
        self.extras
            .iter()
            .find(|(var, column)| var.is_empty() || column.is_empty())
            .map(|(var, _)| format!("extraValueMappings.{var}"))
    }
}

/// The `SELECT` of one sync.
pub fn select(dialect: Dialect, table: &str, columns: &Columns) -> String {
    let list = columns
        .in_order()
        .map(|column| dialect.text_cast(column))
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT {list} FROM {}", dialect.quote_table(table))
}

/// The original's activation rule: the row is used only when its activate value is exactly one
/// of `1 true TRUE True yes YES Yes`.
pub fn is_active(value: &str) -> bool {
    matches!(
        value,
        "1" | "true" | "TRUE" | "True" | "yes" | "YES" | "Yes"
    )
}

/// One active row, as templates see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `.uid`.
    pub uid: String,
    /// `.hostOrUrl` as read ("" when unmapped or NULL).
    pub host_or_url: String,
    /// `.activate`, raw.
    pub activate: String,
    /// Extra variables: name → value (NULL → "").
    pub extra: BTreeMap<String, String>,
}

impl Row {
    /// Builds a row from its values in query order (see [`Columns::in_order`]); `None` (NULL)
    /// becomes "".
    pub fn from_values(columns: &Columns, mut values: impl Iterator<Item = Option<String>>) -> Row {
        let mut next = || values.next().flatten().unwrap_or_default();
        let uid = next();
        let host_or_url = if columns.host_or_url.is_some() {
            next()
        } else {
            String::new()
        };
        let activate = next();
        let extra = columns
            .extras
            .iter()
            .map(|(var, _)| (var.clone(), next()))
            .collect();
        Row {
            uid,
            host_or_url,
            activate,
            extra,
        }
    }

    /// Template variables of this row: the built-ins, then every extra (an extra may shadow a
    /// built-in, as in the original).
    pub fn vars(&self) -> engine::render::Vars {
        engine::render::Vars::tenant(&self.uid, &self.host_or_url, &self.activate)
            .with_extra(self.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Columns {
        Columns::of(
            &ValueMappings {
                uid: "id".into(),
                host_or_url: Some("url".into()),
                activate: "is_active".into(),
            },
            &BTreeMap::from([
                ("region".to_owned(), "region".to_owned()),
                ("planId".to_owned(), "plan_id".to_owned()),
            ]),
        )
    }

    #[test]
    fn the_query_selects_mapped_columns_in_the_originals_order() {
        assert_eq!(
            select(Dialect::MySql, "tenants", &columns()),
            "SELECT CAST(`id` AS CHAR), CAST(`url` AS CHAR), CAST(`is_active` AS CHAR), \
             CAST(`plan_id` AS CHAR), CAST(`region` AS CHAR) FROM `tenants`"
        );
        assert_eq!(
            select(Dialect::Postgres, "public.tenants", &columns()),
            "SELECT CAST(\"id\" AS TEXT), CAST(\"url\" AS TEXT), CAST(\"is_active\" AS TEXT), \
             CAST(\"plan_id\" AS TEXT), CAST(\"region\" AS TEXT) FROM \"public\".\"tenants\""
        );
    }

    #[test]
    fn identifiers_cannot_break_out_of_their_quotes() {
        assert_eq!(Dialect::MySql.quote("a`b"), "`a``b`");
        assert_eq!(
            Dialect::Postgres.quote_table("t\"; DROP TABLE x; --"),
            "\"t\"\"; DROP TABLE x; --\""
        );
    }

    #[test]
    fn without_host_or_url_the_column_is_not_selected() {
        let mut columns = columns();
        columns.host_or_url = None;
        assert_eq!(
            columns.in_order().collect::<Vec<_>>(),
            ["id", "is_active", "plan_id", "region"]
        );
        let row = Row::from_values(
            &columns,
            [Some("t1"), Some("1"), None, Some("eu")]
                .into_iter()
                .map(|v| v.map(str::to_owned)),
        );
        assert_eq!(row.uid, "t1");
        assert_eq!(row.host_or_url, "");
        assert_eq!(row.extra["planId"], "");
        assert_eq!(row.extra["region"], "eu");
        assert_eq!(row.vars().get("hostOrUrl"), Some("t1"));
    }

    #[test]
    fn activation_is_the_originals_exact_truth_table() {
        for yes in ["1", "true", "TRUE", "True", "yes", "YES", "Yes"] {
            assert!(is_active(yes), "{yes}");
        }
        for no in [
            "", "0", "false", "tRUE", "y", "on", " 1", "1 ", "2", "t", "yEs",
        ] {
            assert!(!is_active(no), "{no:?}");
        }
    }

    #[test]
    fn empty_mappings_are_named() {
        let mut columns = columns();
        assert_eq!(columns.empty_mapping(), None);
        columns.extras[0].1.clear();
        assert_eq!(
            columns.empty_mapping().as_deref(),
            Some("extraValueMappings.planId")
        );
        columns.uid.clear();
        assert_eq!(
            columns.empty_mapping().as_deref(),
            Some("valueMappings.uid")
        );
    }
}
