//! The statements a store runs, built once per table from its dialect's templates.

use sqlx::SqlStr;

use crate::dialect::Dialect;
use crate::table::Table;

/// Every statement of a store on one table.
pub(crate) struct Statements<D: Dialect> {
    pub(crate) read: SqlStr,
    pub(crate) renew: SqlStr,
    pub(crate) complete: SqlStr,
    pub(crate) completed: SqlStr,
    pub(crate) release: SqlStr,
    pub(crate) purge: SqlStr,
    pub(crate) schema: Vec<SqlStr>,
    /// The dialect's own: its claim's writes.
    pub(crate) own: D::Statements,
}

impl<D: Dialect> Statements<D> {
    pub(crate) fn new(table: &Table) -> Self {
        let sql = |template: &str| D::sql(table, template);
        let t = D::TEMPLATES;
        Statements {
            read: sql(t.read),
            renew: sql(t.renew),
            complete: sql(t.complete),
            completed: sql(t.completed),
            release: sql(t.release),
            purge: sql(t.purge),
            schema: t.schema.iter().map(|s| sql(s)).collect(),
            own: D::statements(table),
        }
    }
}
