//! Result column names as Postgres gives them.
//!
//! DataFusion names an unaliased expression after its full text (`count(*)`,
//! `Int64(1)`); Postgres names it after the function (`count`), the cast's
//! operand, or `?column?`, and allows two columns of the same name. Clients show
//! and key rows by these names, so the top-level select list of a query gets
//! Postgres' names as aliases before planning. A name that would repeat one
//! already in the list carries [`DUPLICATE_MARKER`] and a number through planning
//! (DataFusion needs unique names); [`display_schema`] strips it from the result.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::sql::sqlparser::ast::{
    Expr, Ident, ObjectNamePart, Query, SelectItem, SetExpr, Statement,
};

/// Suffix that keeps a repeated column name unique while a query is planned.
pub const DUPLICATE_MARKER: &str = "__flotilla_dup_";

/// Aliases the unaliased items of a query's top-level select list with the
/// names Postgres gives them. Other statements are left alone.
pub fn name_columns(statement: &mut Statement) {
    if let Statement::Query(query) = statement {
        name_query_columns(query);
    }
}

fn name_query_columns(query: &mut Query) {
    let mut body = query.body.as_mut();
    // In a set operation the first branch names the columns.
    loop {
        match body {
            SetExpr::SetOperation { left, .. } => body = left.as_mut(),
            SetExpr::Query(inner) => {
                name_query_columns(inner);
                return;
            }
            SetExpr::Select(select) => {
                let mut seen: HashSet<String> = HashSet::new();
                let mut duplicates = 0;
                for item in select.projection.iter_mut() {
                    let natural = match item {
                        SelectItem::ExprWithAlias { alias, .. } => Some(ident_name(alias)),
                        SelectItem::UnnamedExpr(Expr::Identifier(ident)) => Some(ident_name(ident)),
                        SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => {
                            parts.last().map(ident_name)
                        }
                        SelectItem::UnnamedExpr(_) => None,
                        // Wildcards expand to names not known here.
                        _ => continue,
                    };
                    if let Some(name) = natural {
                        seen.insert(name);
                        continue;
                    }
                    let SelectItem::UnnamedExpr(expr) = item else {
                        continue;
                    };
                    let name = postgres_name(expr);
                    let alias = if seen.insert(name.clone()) {
                        name
                    } else {
                        duplicates += 1;
                        format!("{name}{DUPLICATE_MARKER}{duplicates}")
                    };
                    let expr = std::mem::replace(
                        expr,
                        Expr::value(datafusion::sql::sqlparser::ast::Value::Null),
                    );
                    *item = SelectItem::ExprWithAlias {
                        expr,
                        alias: Ident::with_quote('"', alias),
                    };
                }
                return;
            }
            _ => return,
        }
    }
}

/// The name an identifier gives a column: unquoted ones fold to lower case.
fn ident_name(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// Postgres' name for an unaliased select-list expression.
fn postgres_name(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(ident) => ident_name(ident),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident_name).unwrap_or_default(),
        Expr::Function(function) => match function.name.0.last() {
            Some(ObjectNamePart::Identifier(ident)) => ident_name(ident),
            _ => "?column?".to_string(),
        },
        Expr::Cast {
            expr: inner,
            data_type,
            ..
        } => match inner.as_ref() {
            Expr::Value(_) => data_type.to_string().to_lowercase(),
            other => postgres_name(other),
        },
        Expr::Nested(inner) => postgres_name(inner),
        Expr::Case { .. } => "case".to_string(),
        Expr::Exists { .. } => "exists".to_string(),
        Expr::Extract { .. } => "extract".to_string(),
        Expr::Substring { .. } => "substring".to_string(),
        Expr::Trim { .. } => "btrim".to_string(),
        Expr::Position { .. } => "position".to_string(),
        Expr::Array(_) => "array".to_string(),
        Expr::Subquery(query) => match query.body.as_ref() {
            SetExpr::Select(select) if select.projection.len() == 1 => {
                match &select.projection[0] {
                    SelectItem::ExprWithAlias { alias, .. } => ident_name(alias),
                    SelectItem::UnnamedExpr(e) => postgres_name(e),
                    _ => "?column?".to_string(),
                }
            }
            _ => "?column?".to_string(),
        },
        _ => "?column?".to_string(),
    }
}

/// The name a client sees for a planned column.
pub fn display_name(name: &str) -> &str {
    match name.rfind(DUPLICATE_MARKER) {
        Some(at)
            if name[at + DUPLICATE_MARKER.len()..]
                .chars()
                .all(|c| c.is_ascii_digit()) =>
        {
            &name[..at]
        }
        _ => name,
    }
}

/// `schema` with the names clients see, or `None` if no name changes.
pub fn display_schema(schema: &SchemaRef) -> Option<SchemaRef> {
    if !schema
        .fields()
        .iter()
        .any(|f| display_name(f.name()) != f.name())
    {
        return None;
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_name(display_name(f.name())))
        .collect();
    Some(Arc::new(Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn named(sql: &str) -> String {
        let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        name_columns(&mut statements[0]);
        statements[0].to_string()
    }

    #[test]
    fn expressions_get_postgres_names() {
        assert_eq!(named("SELECT 1"), "SELECT 1 AS \"?column?\"");
        assert_eq!(
            named("SELECT count(*), a, t.b FROM t"),
            "SELECT count(*) AS \"count\", a, t.b FROM t"
        );
        assert_eq!(
            named("SELECT min(d), CAST(min(d) AS TIMESTAMP) FROM t"),
            format!("SELECT min(d) AS \"min\", CAST(min(d) AS TIMESTAMP) AS \"min{DUPLICATE_MARKER}1\" FROM t")
        );
        assert_eq!(
            named("SELECT x AS y, 2 FROM t"),
            "SELECT x AS y, 2 AS \"?column?\" FROM t"
        );
        assert_eq!(
            named("SELECT pg_catalog.version()"),
            "SELECT pg_catalog.version() AS \"version\""
        );
        assert_eq!(
            named("SELECT a FROM t UNION SELECT count(*) FROM u"),
            "SELECT a FROM t UNION SELECT count(*) FROM u"
        );
        assert_eq!(named("SET x = 1"), "SET x = 1");
    }

    #[test]
    fn markers_are_stripped_for_display() {
        assert_eq!(display_name(&format!("min{DUPLICATE_MARKER}3")), "min");
        assert_eq!(display_name("plain"), "plain");
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("min", arrow::datatypes::DataType::Int32, true),
            Field::new(
                format!("min{DUPLICATE_MARKER}1"),
                arrow::datatypes::DataType::Int32,
                true,
            ),
        ]));
        let shown = display_schema(&schema).unwrap();
        assert_eq!(shown.field(1).name(), "min");
        assert!(display_schema(&Arc::new(Schema::empty())).is_none());
    }
}
