//! The table name: validated once, then spliced into statements built once.

use idem_core::{Error, StoreError};

/// The table a store uses unless told otherwise.
pub(crate) const DEFAULT_TABLE: &str = "idem_records";

/// A table name that is safe to splice into SQL: an ASCII identifier, 1–48 characters
/// (so that `<table>_expires_at` stays within PostgreSQL's 63), not starting with a digit.
#[derive(Clone, Debug)]
pub(crate) struct Table(String);

impl Default for Table {
    fn default() -> Self {
        Table(DEFAULT_TABLE.to_owned())
    }
}

impl Table {
    pub(crate) fn new(name: &str) -> Result<Table, Error> {
        let valid = !name.is_empty()
            && name.len() <= 48
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if valid {
            Ok(Table(name.to_owned()))
        } else {
            Err(Error::Store(StoreError::Config(format!(
                "invalid table name {name:?}: use 1 to 48 ASCII letters, digits and underscores, \
                 not starting with a digit"
            ))))
        }
    }

    /// `template` with every `{t}` replaced by the table name.
    pub(crate) fn sql(&self, template: &str) -> sqlx::SqlStr {
        use sqlx::SqlSafeStr;
        // Safe: the name was validated as a plain identifier above.
        sqlx::AssertSqlSafe(template.replace("{t}", &self.0)).into_sql_str()
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
        for good in ["idem_records", "t", "_x1", "A_b_9"] {
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
            assert!(
                matches!(Table::new(bad), Err(Error::Store(StoreError::Config(_)))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn statements_name_the_table() {
        let t = Table::new("my_table").unwrap();
        assert_eq!(
            t.sql("DELETE FROM {t} WHERE {t}.x").as_str(),
            "DELETE FROM my_table WHERE my_table.x"
        );
    }
}
