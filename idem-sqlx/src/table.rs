//! The table name: validated once, then spliced (quoted) into statements built once.

use idem_core::Error;
use std::sync::Arc;

/// The table a store uses unless told otherwise.
pub(crate) const DEFAULT_TABLE: &str = "idem_records";

/// How a database quotes identifiers.
#[cfg_attr(
    not(all(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(dead_code)
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quoting {
    /// `"name"`, folded to lower case as PostgreSQL folds an unquoted name, so that a table
    /// made by a version that did not quote (`MyTable` → `mytable`) is still the one used.
    Postgres,
    /// `"name"` (SQLite compares identifiers case-insensitively, quoted or not).
    Sqlite,
    /// `` `name` `` (case follows the server's `lower_case_table_names`, quoted or not).
    MySql,
}

impl Quoting {
    fn quote(self, ident: &str) -> String {
        match self {
            Quoting::Postgres => format!("\"{}\"", ident.to_ascii_lowercase()),
            Quoting::Sqlite => format!("\"{ident}\""),
            Quoting::MySql => format!("`{ident}`"),
        }
    }
}

/// A table name that is safe to splice into SQL: an ASCII identifier, 1–48 characters
/// (so that `<table>_expires_at` stays within PostgreSQL's 63), not starting with a digit.
/// Statements quote it, so reserved words (`order`, `select`, `key`, …) work as names.
// `Arc<str>`: cheap to clone with the store (onto a task, after a cancelled claim).
#[derive(Clone, Debug)]
pub struct Table(Arc<str>);

impl Default for Table {
    fn default() -> Self {
        Table(DEFAULT_TABLE.into())
    }
}

impl Table {
    pub(crate) fn new(name: &str) -> Result<Table, Error> {
        let valid = !name.is_empty()
            && name.len() <= 48
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if valid {
            Ok(Table(name.into()))
        } else {
            Err(Error::Config(format!(
                "invalid table name {name:?}: use 1 to 48 ASCII letters, digits and underscores, \
                 not starting with a digit"
            )))
        }
    }

    /// `template` with every `{t}` replaced by the quoted table name and every `{i}` by the
    /// quoted name of its expiry index (`<table>_expires_at`).
    pub(crate) fn sql(&self, quoting: Quoting, template: &str) -> sqlx::SqlStr {
        use sqlx::SqlSafeStr;
        let index = format!("{}_expires_at", self.0);
        // Safe: the name was validated as a plain identifier above, and identifiers made of
        // ASCII letters, digits and underscores need no escaping inside quotes.
        let sql = template
            .replace("{t}", &quoting.quote(&self.0))
            .replace("{i}", &quoting.quote(&index));
        sqlx::AssertSqlSafe(sql).into_sql_str()
    }

    pub(crate) fn name(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_identifiers_pass() {
        for good in ["idem_records", "t", "_x1", "A_b_9", "select", "order"] {
            assert!(Table::new(good).is_ok(), "{good}");
        }
        let long = "x".repeat(49);
        for bad in [
            "",
            "1abc",
            "a-b",
            "a b",
            "a;drop table x",
            "a.b",
            "\"a\"",
            "é",
            "a`",
            &long,
        ] {
            assert!(matches!(Table::new(bad), Err(Error::Config(_))), "{bad:?}");
        }
    }

    #[test]
    fn statements_quote_the_table_and_its_index() {
        let t = Table::new("My_Table").unwrap();
        let template = "CREATE INDEX {i} ON {t} (x); DELETE FROM {t} WHERE {t}.x";
        assert_eq!(
            t.sql(Quoting::Postgres, template).as_str(),
            "CREATE INDEX \"my_table_expires_at\" ON \"my_table\" (x); \
             DELETE FROM \"my_table\" WHERE \"my_table\".x"
        );
        assert_eq!(
            t.sql(Quoting::Sqlite, template).as_str(),
            "CREATE INDEX \"My_Table_expires_at\" ON \"My_Table\" (x); \
             DELETE FROM \"My_Table\" WHERE \"My_Table\".x"
        );
        assert_eq!(
            t.sql(Quoting::MySql, template).as_str(),
            "CREATE INDEX `My_Table_expires_at` ON `My_Table` (x); \
             DELETE FROM `My_Table` WHERE `My_Table`.x"
        );
    }
}
