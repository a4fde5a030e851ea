//! Rewrites what Postgres clients send into SQL DataFusion plans.
//!
//! Each rule keeps the statement's meaning for the catalog's data; the comments name the
//! clients whose statements need it. The rules, in the order a statement meets them:
//!
//! - Query: an `ORDER BY` that holds a subquery is moved into a wrapping query (Grafana).
//! - Select: `q.oid, q.*` over a catalog relation expands the wildcard; unnamed items get
//!   Postgres' column names (`version`, `?column?`) and duplicates get unique aliases
//!   (DBeaver, psql); a projected `x::regclass` prints the name; `x IN (subquery)` in the
//!   select list becomes an array lookup (Grafana).
//! - From: bare `pg_*` relations are qualified with `pg_catalog` (Metabase, pgcli);
//!   `pg_catalog.`-qualified table functions lose the qualifier; a scalar function in FROM
//!   becomes a one-row subquery, and a single-column table function takes its alias as
//!   column name (Grafana, pgjdbc).
//! - Scalar subqueries that refer to the outer query are made decorrelatable: outer-only
//!   conditions move to a `CASE`, and the result is aggregated with `first_value`; ones
//!   DataFusion cannot decorrelate at all (outer columns in the select list or in FROM)
//!   become `NULL`, which is their value over Flotilla's empty catalogs (psql `\d`,
//!   SQLAlchemy, pgcli).
//! - Expressions: `::regclass` and the other `reg*` casts become lookups
//!   (`regclass_oid('t')`) or names (`regclass_text(oid)`); `::oid`, `::name`, `::"char"`
//!   and `pg_catalog.` types become DataFusion types; `OPERATOR(pg_catalog.~)` becomes `~`;
//!   `COLLATE` is dropped; `= ANY(...)` / `<> ALL(...)` become `IN` lists or `array_has`;
//!   `'{a,b}'` array literals become arrays; a quoted literal compared with a catalog
//!   column takes the column's type (`indisprimary = 't'`, `relnamespace = 'public'`);
//!   `pg_catalog.` function qualifiers are dropped; `generate_subscripts` and
//!   `_pg_expandarray` are unnested.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    AccessExpr, BinaryOperator, CastKind, DataType, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentList, FunctionArguments, Ident, ObjectName, ObjectNamePart, OrderByExpr,
    OrderByKind, Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement,
    Subscript, TableAlias, TableAliasColumnDef, TableFactor, UnaryOperator, Value, ValueWithSpan,
    Visit, VisitMut, Visitor, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::tables::{self, T};
use super::{INFORMATION_SCHEMA, PG_CATALOG};

/// Rewrites one parsed statement so that DataFusion plans what Postgres clients send.
///
/// Statements without Postgres-only syntax come back unchanged in meaning; the rewrite
/// never fails, and leaves what it does not recognise for the planner to report.
pub fn rewrite(statement: &mut Statement) {
    let _ = VisitMut::visit(statement, &mut Rewriter::default());
}

/// Visits a statement, keeping track of whether the select being visited (or one it is
/// nested in) reads a catalog relation.
#[derive(Default)]
struct Rewriter {
    catalog_scopes: Vec<bool>,
    /// How many queries the visit is inside: 1 in the statement's own query.
    query_depth: usize,
}

impl Rewriter {
    fn in_catalog_query(&self) -> bool {
        self.catalog_scopes.iter().any(|reads| *reads)
    }
}

impl VisitorMut for Rewriter {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        self.query_depth += 1;
        wrap_order_by_subqueries(query);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &mut Query) -> ControlFlow<()> {
        self.query_depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &mut Select) -> ControlFlow<()> {
        self.catalog_scopes.push(reads_catalog(select));
        expand_catalog_wildcards(select);
        // Postgres' names for the result of catalog queries and of queries without FROM
        // (`SELECT version()`); queries of tables keep DataFusion's names.
        let postgres_names =
            self.query_depth <= 1 && (select.from.is_empty() || reads_catalog(select));
        name_projection(select, postgres_names);
        let catalog_query = self.in_catalog_query() || reads_catalog(select);
        for item in &mut select.projection {
            if let SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } = item {
                if self.query_depth <= 1 {
                    project_reg_cast(expr);
                }
                if catalog_query {
                    replace_in_subqueries(expr);
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_select(&mut self, _select: &mut Select) -> ControlFlow<()> {
        self.catalog_scopes.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        rewrite_table_factor(factor);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        match expr {
            Expr::Subquery(_) => fix_scalar_subquery(expr),
            Expr::Function(f) if is_array_subquery(f) => fix_array_subquery(expr),
            Expr::Cast { .. } => rewrite_cast_chain(expr),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if self.in_catalog_query() {
            type_literals(expr);
        }
        rewrite_expr(expr);
        ControlFlow::Continue(())
    }
}

// ---------------------------------------------------------------------------------------
// Small constructors and inspectors.

fn ident_name(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

fn name_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => ident_name(ident),
            other => other.to_string(),
        })
        .collect()
}

fn string_value(s: impl Into<String>) -> Expr {
    Expr::value(Value::SingleQuotedString(s.into()))
}

fn null() -> Expr {
    Expr::value(Value::Null)
}

fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|e| FunctionArg::Unnamed(FunctionArgExpr::Expr(e)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

fn cast(expr: Expr, data_type: DataType) -> Expr {
    Expr::Cast {
        kind: CastKind::DoubleColon,
        expr: Box::new(expr),
        data_type,
        array: false,
        format: None,
    }
}

fn take(expr: &mut Expr) -> Expr {
    std::mem::replace(expr, null())
}

fn peel(expr: &Expr) -> &Expr {
    match expr {
        Expr::Nested(inner) => peel(inner),
        other => other,
    }
}

fn string_literal(expr: &Expr) -> Option<&str> {
    match peel(expr) {
        Expr::Value(ValueWithSpan {
            value: Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s),
            ..
        }) => Some(s),
        _ => None,
    }
}

fn is_placeholder(expr: &Expr) -> bool {
    matches!(
        peel(expr),
        Expr::Value(ValueWithSpan {
            value: Value::Placeholder(_),
            ..
        })
    )
}

fn is_column_ref(expr: &Expr) -> bool {
    matches!(expr, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
}

/// The column name of a column reference: `a.attname` gives `attname`.
fn column_name(expr: &Expr) -> Option<String> {
    match peel(expr) {
        Expr::Identifier(ident) => Some(ident_name(ident)),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident_name),
        _ => None,
    }
}

/// Parses a template expression; templates are constants of this file.
fn template(sql: &str) -> Expr {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .unwrap_or_else(|e| panic!("template {sql} does not parse: {e}"))
}

fn function_args_mut(f: &mut Function) -> Vec<&mut Expr> {
    match &mut f.args {
        FunctionArguments::List(list) => list
            .args
            .iter_mut()
            .filter_map(|arg| match arg {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e))
                | FunctionArg::Named {
                    arg: FunctionArgExpr::Expr(e),
                    ..
                } => Some(e),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------
// Types.

/// The `reg*` types: an oid shown as a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    Class,
    Type,
    Namespace,
    Proc,
    Role,
}

impl Reg {
    fn oid_function(self) -> &'static str {
        match self {
            Reg::Class => "regclass_oid",
            Reg::Type => "regtype_oid",
            Reg::Namespace => "regnamespace_oid",
            Reg::Proc => "regproc_oid",
            Reg::Role => "regrole_oid",
        }
    }

    fn text_function(self) -> &'static str {
        match self {
            Reg::Class => "regclass_text",
            Reg::Type => "regtype_text",
            Reg::Namespace => "regnamespace_text",
            Reg::Proc => "regproc_text",
            Reg::Role => "regrole_text",
        }
    }
}

/// The lower-case name of a user-defined type (`pg_catalog.regtype` gives `regtype`); a
/// quoted name keeps its quotes, so `"char"` is told from `char`.
fn custom_type_name(data_type: &DataType) -> Option<String> {
    let DataType::Custom(name, _) = data_type else {
        return None;
    };
    let mut parts = name.0.iter().filter_map(|p| match p {
        ObjectNamePart::Identifier(ident) => Some(ident),
        _ => None,
    });
    let last = parts.next_back()?;
    let qualifier: Vec<&Ident> = parts.collect();
    if let [schema] = qualifier.as_slice() {
        if !schema.value.eq_ignore_ascii_case(PG_CATALOG) {
            return None;
        }
    } else if !qualifier.is_empty() {
        return None;
    }
    if last.quote_style.is_some() {
        return Some(format!("\"{}\"", last.value));
    }
    Some(last.value.to_lowercase())
}

fn reg_type(data_type: &DataType) -> Option<Reg> {
    if matches!(data_type, DataType::Regclass) {
        return Some(Reg::Class);
    }
    match custom_type_name(data_type)?.as_str() {
        "regclass" => Some(Reg::Class),
        "regtype" => Some(Reg::Type),
        "regnamespace" => Some(Reg::Namespace),
        "regproc" | "regprocedure" => Some(Reg::Proc),
        "regrole" => Some(Reg::Role),
        _ => None,
    }
}

fn is_oid_type(data_type: &DataType) -> bool {
    custom_type_name(data_type).as_deref() == Some("oid")
}

fn is_text_type(data_type: &DataType) -> bool {
    match data_type {
        DataType::Text
        | DataType::Varchar(_)
        | DataType::CharacterVarying(_)
        | DataType::CharVarying(_)
        | DataType::String(_) => true,
        other => matches!(
            custom_type_name(other).as_deref(),
            Some("text" | "varchar" | "name" | "bpchar")
        ),
    }
}

/// A DataFusion-plannable type for a Postgres type DataFusion does not know, or `None`
/// to keep the type.
fn plannable_type(data_type: &DataType) -> Option<DataType> {
    use datafusion::sql::sqlparser::ast::{ArrayElemTypeDef, ExactNumberInfo, TimezoneInfo};
    match data_type {
        DataType::Array(ArrayElemTypeDef::SquareBracket(inner, size)) => {
            let inner = plannable_type(inner)?;
            Some(DataType::Array(ArrayElemTypeDef::SquareBracket(
                Box::new(inner),
                *size,
            )))
        }
        DataType::Array(ArrayElemTypeDef::AngleBracket(inner)) => {
            let inner = plannable_type(inner)?;
            Some(DataType::Array(ArrayElemTypeDef::AngleBracket(Box::new(
                inner,
            ))))
        }
        DataType::Character(_)
        | DataType::CharacterVarying(_)
        | DataType::CharVarying(_)
        | DataType::JSON
        | DataType::JSONB
        | DataType::Uuid => Some(DataType::Text),
        DataType::Regclass => Some(DataType::Int(None)),
        DataType::Custom(..) => {
            let name = custom_type_name(data_type)?;
            Some(match name.as_str() {
                "oid" | "regclass" | "regtype" | "regnamespace" | "regproc" | "regprocedure"
                | "regrole" | "xid" | "cid" | "int4" | "integer" => DataType::Int(None),
                "int2" | "smallint" => DataType::SmallInt(None),
                "int8" | "bigint" => DataType::BigInt(None),
                "float4" | "real" => DataType::Real,
                "float8" => DataType::DoublePrecision,
                "bool" | "boolean" => DataType::Boolean,
                "numeric" | "decimal" => DataType::Numeric(ExactNumberInfo::None),
                "date" => DataType::Date,
                "timestamp" => DataType::Timestamp(None, TimezoneInfo::None),
                "timestamptz" => DataType::Timestamp(None, TimezoneInfo::Tz),
                "bytea" => DataType::Bytea,
                "text" | "varchar" | "name" | "bpchar" | "\"char\"" | "char" | "json" | "jsonb"
                | "uuid" | "xml" | "inet" | "pg_node_tree" | "unknown" | "anyarray" | "cstring" => {
                    DataType::Text
                }
                _ => return None,
            })
        }
        _ => None,
    }
}

fn is_array_type(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Array(_))
}

/// Element type of an array type.
fn array_element(data_type: &DataType) -> Option<&DataType> {
    use datafusion::sql::sqlparser::ast::ArrayElemTypeDef;
    match data_type {
        DataType::Array(ArrayElemTypeDef::SquareBracket(inner, _))
        | DataType::Array(ArrayElemTypeDef::AngleBracket(inner)) => Some(inner),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Array literals.

/// Parses a Postgres array literal such as `{r,"a b",NULL}`; `None` if `text` is not one.
fn parse_array_literal(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut items = Vec::new();
    if inner.trim().is_empty() {
        return Some(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut item = String::new();
        let mut quoted = false;
        if chars.peek() == Some(&'"') {
            quoted = true;
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => item.push(chars.next()?),
                    '"' => break,
                    c => item.push(c),
                }
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '{' || c == '"' {
                    // Nested arrays are not needed by any client query.
                    return None;
                }
                if c == '\\' {
                    chars.next();
                    item.push(chars.next()?);
                    continue;
                }
                item.push(c);
                chars.next();
            }
            item = item.trim_end().to_string();
        }
        if !quoted && item.eq_ignore_ascii_case("null") {
            items.push(None);
        } else {
            items.push(Some(item));
        }
        match chars.next() {
            None => return Some(items),
            Some(',') => continue,
            Some(_) => return None,
        }
    }
}

/// `ARRAY[...]` of the elements of an array literal: numbers where `numeric`, strings
/// otherwise.
fn array_expr(items: &[Option<String>], numeric: bool) -> Expr {
    let elem = items
        .iter()
        .map(|item| match item {
            None => null(),
            Some(s) if numeric && s.parse::<i64>().is_ok() => {
                Expr::value(Value::Number(s.clone(), false))
            }
            Some(s) => string_value(s.clone()),
        })
        .collect();
    Expr::Array(datafusion::sql::sqlparser::ast::Array { elem, named: true })
}

/// The elements of `expr` if it is a literal list: `ARRAY[...]`, `'{...}'`, or
/// `'{...}'::type[]`.
fn literal_list(expr: &Expr) -> Option<Vec<Expr>> {
    match peel(expr) {
        Expr::Array(array) => Some(array.elem.clone()),
        Expr::Cast {
            expr, data_type, ..
        } if is_array_type(data_type) => literal_list(expr),
        other => {
            let items = parse_array_literal(string_literal(other)?)?;
            Some(
                items
                    .into_iter()
                    .map(|item| item.map_or_else(null, string_value))
                    .collect(),
            )
        }
    }
}

// ---------------------------------------------------------------------------------------
// Column names.

/// The name Postgres gives an unnamed select-list item (`FigureColname`), or `None` for
/// `?column?`.
fn pg_column_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => column_name(expr),
        Expr::Nested(inner) | Expr::Collate { expr: inner, .. } => pg_column_name(inner),
        Expr::Function(f) => name_parts(&f.name).last().cloned(),
        Expr::Cast {
            expr, data_type, ..
        } => pg_column_name(expr).or_else(|| type_column_name(data_type)),
        Expr::Case { .. } => Some("case".into()),
        Expr::Exists { .. } => Some("exists".into()),
        Expr::Array(_) => Some("array".into()),
        Expr::Substring { .. } => Some("substring".into()),
        Expr::Position { .. } => Some("position".into()),
        Expr::Overlay { .. } => Some("overlay".into()),
        Expr::Extract { .. } => Some("extract".into()),
        Expr::Ceil { .. } => Some("ceil".into()),
        Expr::Floor { .. } => Some("floor".into()),
        Expr::Trim { trim_where, .. } => Some(
            match trim_where {
                Some(datafusion::sql::sqlparser::ast::TrimWhereField::Leading) => "ltrim",
                Some(datafusion::sql::sqlparser::ast::TrimWhereField::Trailing) => "rtrim",
                _ => "btrim",
            }
            .into(),
        ),
        Expr::CompoundFieldAccess { root, access_chain } => match access_chain.last() {
            Some(datafusion::sql::sqlparser::ast::AccessExpr::Dot(field)) => column_name(field),
            _ => pg_column_name(root),
        },
        Expr::Subquery(query) => match query.body.as_ref() {
            SetExpr::Select(select) => match select.projection.as_slice() {
                [SelectItem::ExprWithAlias { alias, .. }] => Some(ident_name(alias)),
                [SelectItem::UnnamedExpr(e)] => pg_column_name(e),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

fn type_column_name(data_type: &DataType) -> Option<String> {
    if let Some(element) = array_element(data_type) {
        return type_column_name(element);
    }
    Some(
        match data_type {
            DataType::Text => "text",
            DataType::Varchar(_) | DataType::CharacterVarying(_) => "varchar",
            DataType::SmallInt(_) | DataType::Int2(_) => "int2",
            DataType::Int(_) | DataType::Integer(_) | DataType::Int4(_) => "int4",
            DataType::BigInt(_) | DataType::Int8(_) => "int8",
            DataType::Boolean | DataType::Bool => "bool",
            DataType::Real | DataType::Float4 => "float4",
            DataType::DoublePrecision | DataType::Float8 => "float8",
            DataType::Numeric(_) | DataType::Decimal(_) => "numeric",
            DataType::Date => "date",
            DataType::Regclass => "regclass",
            other => return custom_type_name(other).map(|n| n.trim_matches('"').to_string()),
        }
        .to_string(),
    )
}

/// Names every select-list item the way Postgres does and makes the names unique, since
/// DataFusion rejects duplicate output names (and an unqualified name equal to a
/// qualified one) where Postgres allows them.
///
/// With `all`, for the statement's own result, every unnamed item gets Postgres' name
/// (`version()` is `version`, `count(*)` is `count`). In nested queries, whose names
/// only the statement itself reads, items keep DataFusion's names unless they collide.
fn name_projection(select: &mut Select, all: bool) {
    // Plain column references keep their names; other items avoid those names.
    let mut qualified: HashSet<String> = HashSet::new();
    let mut bare: HashSet<String> = HashSet::new();
    let mut computed: HashMap<String, usize> = HashMap::new();
    for item in &select.projection {
        if let SelectItem::UnnamedExpr(expr) = item {
            match column_name(expr).filter(|_| is_column_ref(expr)) {
                Some(name) => {
                    bare.insert(name);
                }
                None => {
                    let name = pg_column_name(expr).unwrap_or_else(|| "?column?".into());
                    *computed.entry(name).or_default() += 1;
                }
            }
        }
    }
    let mut unqualified: HashSet<String> = HashSet::new();
    let unique = |name: String, taken: &dyn Fn(&str) -> bool| -> String {
        if !taken(&name) {
            return name;
        }
        (1..)
            .map(|i| format!("{name}_{i}"))
            .find(|candidate| !taken(candidate))
            .unwrap_or(name)
    };
    for item in &mut select.projection {
        match item {
            SelectItem::UnnamedExpr(expr) if is_column_ref(expr) => {
                let key = expr.to_string().to_lowercase();
                if !qualified.insert(key) {
                    let name = column_name(expr).unwrap_or_default();
                    let alias = unique(name, &|n| bare.contains(n) || unqualified.contains(n));
                    unqualified.insert(alias.clone());
                    *item = SelectItem::ExprWithAlias {
                        expr: take(expr),
                        alias: Ident::with_quote('"', alias),
                    };
                }
            }
            SelectItem::UnnamedExpr(expr) => {
                let name = pg_column_name(expr).unwrap_or_else(|| "?column?".into());
                let collides = computed.get(&name).is_some_and(|n| *n > 1)
                    || bare.contains(&name)
                    || unqualified.contains(&name);
                if !all && !collides {
                    continue;
                }
                let alias = unique(name, &|n| bare.contains(n) || unqualified.contains(n));
                unqualified.insert(alias.clone());
                *item = SelectItem::ExprWithAlias {
                    expr: take(expr),
                    alias: Ident::with_quote('"', alias),
                };
            }
            SelectItem::ExprWithAlias { alias, .. } => {
                let name = ident_name(alias);
                if bare.contains(&name) || unqualified.contains(&name) {
                    let renamed = unique(name, &|n| bare.contains(n) || unqualified.contains(n));
                    *alias = Ident::with_quote('"', renamed.clone());
                    unqualified.insert(renamed);
                } else {
                    unqualified.insert(name);
                }
            }
            _ => {}
        }
    }
}

/// Whether a select reads a relation of `pg_catalog` or `information_schema`.
fn reads_catalog(select: &Select) -> bool {
    fn factor_reads(factor: &TableFactor) -> bool {
        match factor {
            TableFactor::Table {
                name, args: None, ..
            } => {
                let parts = name_parts(name);
                match parts.as_slice() {
                    [schema, _] => schema == PG_CATALOG || schema == INFORMATION_SCHEMA,
                    [relation] => {
                        relation.starts_with("pg_") && tables::columns_of(relation).is_some()
                    }
                    _ => false,
                }
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => {
                factor_reads(&table_with_joins.relation)
                    || table_with_joins
                        .joins
                        .iter()
                        .any(|j| factor_reads(&j.relation))
            }
            TableFactor::Derived { subquery, .. } => match subquery.body.as_ref() {
                SetExpr::Select(select) => reads_catalog(select),
                _ => false,
            },
            _ => false,
        }
    }
    select.from.iter().any(|table| {
        factor_reads(&table.relation) || table.joins.iter().any(|j| factor_reads(&j.relation))
    })
}

/// Whether a query reads a catalog relation anywhere in its FROM clauses.
fn query_reads_catalog(query: &Query) -> bool {
    struct Finder(bool);
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
            if reads_catalog(select) {
                self.0 = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut finder = Finder(false);
    let _ = Visit::visit(query, &mut finder);
    finder.0
}

/// The catalog relations in a select's FROM, by the name they are referred to with.
fn catalog_relations(select: &Select) -> Vec<(String, &'static str)> {
    let mut found = Vec::new();
    let mut visit = |factor: &TableFactor| {
        if let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = factor
        {
            let parts = name_parts(name);
            let relation = match parts.as_slice() {
                [schema, rel] if schema == PG_CATALOG => rel.as_str(),
                [rel] if rel.starts_with("pg_") => rel.as_str(),
                _ => return,
            };
            if let Some(columns) = tables::columns_of(relation) {
                let refer = alias
                    .as_ref()
                    .map(|a| ident_name(&a.name))
                    .unwrap_or_else(|| relation.to_string());
                found.push((refer, columns.0));
            }
        }
    };
    for table in &select.from {
        visit(&table.relation);
        for join in &table.joins {
            visit(&join.relation);
        }
    }
    found
}

/// Expands `q.*` where `q` is a catalog relation that the select list also names columns
/// of (`n.oid, n.*`), so that duplicate columns can be told apart (DBeaver).
fn expand_catalog_wildcards(select: &mut Select) {
    let relations = catalog_relations(select);
    if relations.is_empty() {
        return;
    }
    let qualifiers: HashSet<String> = select
        .projection
        .iter()
        .filter_map(|item| match item {
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts))
            | SelectItem::ExprWithAlias {
                expr: Expr::CompoundIdentifier(parts),
                ..
            } if parts.len() == 2 => Some(ident_name(&parts[0])),
            _ => None,
        })
        .collect();
    let mut projection = Vec::with_capacity(select.projection.len());
    for item in std::mem::take(&mut select.projection) {
        let SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(name), _) =
            &item
        else {
            projection.push(item);
            continue;
        };
        let parts = name_parts(name);
        let expansion = match parts.as_slice() {
            [q] if qualifiers.contains(q) => relations
                .iter()
                .find(|(refer, _)| refer == q)
                .and_then(|(_, rel)| tables::columns_of(rel)),
            _ => None,
        };
        match expansion {
            Some(columns) => {
                for column in columns.1 {
                    projection.push(SelectItem::UnnamedExpr(Expr::CompoundIdentifier(vec![
                        Ident::new(parts[0].clone()),
                        Ident::new(column),
                    ])));
                }
            }
            None => projection.push(item),
        }
    }
    select.projection = projection;
}

// ---------------------------------------------------------------------------------------
// Query structure.

/// Whether `expr` holds a subquery outside nested queries.
fn has_subquery(expr: &Expr) -> bool {
    struct Finder(bool);
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if matches!(
                expr,
                Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. }
            ) {
                self.0 = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut finder = Finder(false);
    let _ = Visit::visit(expr, &mut finder);
    finder.0
}

/// The output name of a select-list item, if it has a simple one.
fn output_name(item: &SelectItem) -> Option<String> {
    match item {
        SelectItem::ExprWithAlias { alias, .. } => Some(ident_name(alias)),
        SelectItem::UnnamedExpr(expr) => column_name(expr),
        _ => None,
    }
}

/// DataFusion cannot evaluate subqueries in ORDER BY. Sorts on such expressions move into
/// the select list of an inner query, and an outer query sorts by them:
/// `SELECT a ... ORDER BY f(x IN (SELECT ...))` becomes
/// `SELECT a FROM (SELECT a, f(...) AS __flotilla_order_1 ...) ORDER BY __flotilla_order_1`.
fn wrap_order_by_subqueries(query: &mut Query) {
    let has_subquery_sort = match query.order_by.as_ref().map(|o| &o.kind) {
        Some(OrderByKind::Expressions(exprs)) => exprs.iter().any(|e| has_subquery(&e.expr)),
        _ => false,
    };
    if !has_subquery_sort {
        return;
    }
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    if select.distinct.is_some() {
        return;
    }
    name_projection(select, true);
    let Some(names) = select
        .projection
        .iter()
        .map(output_name)
        .collect::<Option<Vec<String>>>()
    else {
        return;
    };
    let Some(mut order_by) = query.order_by.take() else {
        return;
    };
    let OrderByKind::Expressions(exprs) = &mut order_by.kind else {
        return;
    };
    let mut outer_order: Vec<OrderByExpr> = Vec::with_capacity(exprs.len());
    for (i, order) in exprs.drain(..).enumerate() {
        let keep = match peel(&order.expr) {
            Expr::Value(ValueWithSpan {
                value: Value::Number(..),
                ..
            }) => true,
            Expr::Identifier(ident) => names.contains(&ident_name(ident)),
            _ => false,
        };
        if keep {
            outer_order.push(order);
            continue;
        }
        let name = format!("__flotilla_order_{}", i + 1);
        select.projection.push(SelectItem::ExprWithAlias {
            expr: order.expr,
            alias: Ident::with_quote('"', name.clone()),
        });
        outer_order.push(OrderByExpr {
            expr: Expr::Identifier(Ident::with_quote('"', name)),
            options: order.options,
            with_fill: order.with_fill,
        });
    }
    *exprs = outer_order;
    let columns = names
        .iter()
        .map(|n| format!("\"{}\"", n.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ");
    let wrapper_sql = format!("SELECT {columns} FROM (SELECT 1) AS __flotilla_sorted");
    let Ok(mut wrapper) = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&wrapper_sql)
        .and_then(|mut p| p.parse_query())
    else {
        query.order_by = Some(order_by);
        return;
    };
    wrapper.order_by = Some(order_by);
    wrapper.limit_clause = query.limit_clause.take();
    wrapper.fetch = query.fetch.take();
    if let SetExpr::Select(outer) = wrapper.body.as_mut() {
        if let Some(TableFactor::Derived { subquery, .. }) =
            outer.from.first_mut().map(|t| &mut t.relation)
        {
            std::mem::swap(subquery.as_mut(), query);
        }
    }
    *query = *wrapper;
}

/// Table factors: qualifies bare `pg_*` relations, and adapts table functions.
fn rewrite_table_factor(factor: &mut TableFactor) {
    // pgcli: `SELECT * FROM unnest(current_schemas(true))` has column `unnest`.
    if let TableFactor::UNNEST {
        alias: alias @ None,
        array_exprs,
        with_offset: false,
        with_ordinality: false,
        ..
    } = factor
    {
        if array_exprs.len() == 1 {
            *alias = Some(TableAlias {
                explicit: true,
                name: Ident::new("unnest"),
                columns: vec![TableAliasColumnDef::from_name("unnest")],
                at: None,
            });
        }
        return;
    }
    let TableFactor::Table {
        name, alias, args, ..
    } = factor
    else {
        return;
    };
    let parts = name_parts(name);
    if args.is_none() {
        // Metabase: `LEFT JOIN "pg_stat_user_tables"`; pgcli: `LEFT JOIN pg_attrdef`.
        if let [relation] = parts.as_slice() {
            if relation.starts_with("pg_") && tables::columns_of(relation).is_some() {
                name.0
                    .insert(0, ObjectNamePart::Identifier(Ident::new(PG_CATALOG)));
            }
        }
        return;
    }
    let Some(function) = parts.last().cloned() else {
        return;
    };
    if parts.len() == 2 && (parts[0] == PG_CATALOG || parts[0] == INFORMATION_SCHEMA) {
        name.0.remove(0);
    }
    match function.as_str() {
        "generate_series" | "range" => {
            // Postgres names the column of a one-column function after the alias:
            // `generate_series(1, 3) AS s` has column `s` (Grafana, psql).
            if let Some(alias) = alias {
                if alias.columns.is_empty() {
                    alias
                        .columns
                        .push(TableAliasColumnDef::from_name(alias.name.value.clone()));
                }
            }
        }
        // Functions that return one value, used in FROM as one-row relations.
        "string_to_array"
        | "current_schemas"
        | "parse_ident"
        | "current_setting"
        | "current_schema"
        | "current_database"
        | "current_user"
        | "session_user"
        | "version"
        | "regexp_split_to_array" => {
            // A scalar function in FROM is a one-row relation (Grafana:
            // `string_to_array(current_setting('search_path'), ',') s`).
            let column = alias
                .as_ref()
                .map(|a| {
                    a.columns
                        .first()
                        .map(|c| c.name.value.clone())
                        .unwrap_or_else(|| a.name.value.clone())
                })
                .unwrap_or_else(|| function.clone());
            let args = args.take().map(|a| a.args).unwrap_or_default();
            let expr = Expr::Function(Function {
                name: ObjectName::from(vec![Ident::new(function.clone())]),
                uses_odbc_syntax: false,
                parameters: FunctionArguments::None,
                args: FunctionArguments::List(FunctionArgumentList {
                    duplicate_treatment: None,
                    args,
                    clauses: vec![],
                }),
                filter: None,
                null_treatment: None,
                over: None,
                within_group: vec![],
            });
            let sql = format!("SELECT NULL AS \"{}\"", column.replace('"', "\"\""));
            let Ok(mut subquery) = Parser::new(&PostgreSqlDialect {})
                .try_with_sql(&sql)
                .and_then(|mut p| p.parse_query())
            else {
                return;
            };
            if let SetExpr::Select(select) = subquery.body.as_mut() {
                if let Some(SelectItem::ExprWithAlias { expr: e, .. }) =
                    select.projection.first_mut()
                {
                    *e = expr;
                }
            }
            let alias = alias.take().unwrap_or_else(|| TableAlias {
                explicit: true,
                name: Ident::new(function),
                columns: vec![],
                at: None,
            });
            *factor = TableFactor::Derived {
                lateral: false,
                subquery,
                alias: Some(alias),
                sample: None,
            };
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// Correlated subqueries.

/// The names a select's FROM clause defines: aliases, or relation names (bare and
/// qualified).
fn defined_names(select: &Select) -> HashSet<String> {
    let mut names = HashSet::new();
    fn add(factor: &TableFactor, names: &mut HashSet<String>) {
        match factor {
            TableFactor::Table { name, alias, .. } => match alias {
                Some(alias) => {
                    names.insert(ident_name(&alias.name));
                }
                None => {
                    let parts = name_parts(name);
                    if let Some(last) = parts.last() {
                        names.insert(last.clone());
                    }
                    names.insert(parts.join("."));
                }
            },
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                if let Some(alias) = alias {
                    names.insert(ident_name(&alias.name));
                }
                add(&table_with_joins.relation, names);
                for join in &table_with_joins.joins {
                    add(&join.relation, names);
                }
            }
            TableFactor::Derived { alias, .. }
            | TableFactor::Function { alias, .. }
            | TableFactor::UNNEST { alias, .. }
            | TableFactor::TableFunction { alias, .. } => {
                if let Some(alias) = alias {
                    names.insert(ident_name(&alias.name));
                }
            }
            _ => {}
        }
    }
    for table in &select.from {
        add(&table.relation, &mut names);
        for join in &table.joins {
            add(&join.relation, &mut names);
        }
    }
    names
}

/// Finds references to relations that the visited fragment does not define itself.
struct OuterRefs {
    scopes: Vec<HashSet<String>>,
    found: bool,
}

impl OuterRefs {
    fn new(scopes: Vec<HashSet<String>>) -> Self {
        Self {
            scopes,
            found: false,
        }
    }

    fn defined(&self, qualifier: &str) -> bool {
        self.scopes.iter().any(|s| s.contains(qualifier))
    }
}

impl Visitor for OuterRefs {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        // The CTE names, and the body's relations for ORDER BY.
        let mut names: HashSet<String> = query
            .with
            .iter()
            .flat_map(|w| &w.cte_tables)
            .map(|cte| ident_name(&cte.alias.name))
            .collect();
        if let SetExpr::Select(select) = query.body.as_ref() {
            names.extend(defined_names(select));
        }
        self.scopes.push(names);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.scopes.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        self.scopes.push(defined_names(select));
        if select.from.is_empty() {
            // An unqualified name in a select without FROM can only be an outer column
            // (pgcli: `(select unnest(confkey) ...)`).
            self.scopes
                .push(HashSet::from(["\u{0}no-from".to_string()]));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if select.from.is_empty() {
            self.scopes.pop();
        }
        self.scopes.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let names: Vec<String> = parts.iter().map(ident_name).collect();
                let qualifier = &names[..names.len() - 1];
                let defined = self.defined(&qualifier.join("."))
                    || qualifier.last().is_some_and(|q| self.defined(q));
                if !defined {
                    self.found = true;
                    return ControlFlow::Break(());
                }
            }
            Expr::Identifier(_) => {
                let no_from = self
                    .scopes
                    .last()
                    .is_some_and(|s| s.contains("\u{0}no-from"));
                if no_from {
                    self.found = true;
                    return ControlFlow::Break(());
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

fn query_has_outer_refs(query: &Query) -> bool {
    let mut finder = OuterRefs::new(Vec::new());
    let _ = Visit::visit(query, &mut finder);
    finder.found
}

fn expr_has_outer_refs(expr: &Expr, scope: &HashSet<String>) -> bool {
    let mut finder = OuterRefs::new(vec![scope.clone()]);
    let _ = Visit::visit(expr, &mut finder);
    finder.found
}

/// Whether `expr` refers to the subquery's own relations (or to unqualified columns,
/// which are taken to be its own).
fn expr_has_inner_refs(expr: &Expr, scope: &HashSet<String>) -> bool {
    struct Inner<'a> {
        scope: &'a HashSet<String>,
        found: bool,
    }
    impl Visitor for Inner<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
            // Nested queries count as inner: they cannot be pulled up either way.
            self.found = true;
            ControlFlow::Break(())
        }
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            let inner = match expr {
                Expr::Identifier(_) => true,
                Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                    let names: Vec<String> = parts.iter().map(ident_name).collect();
                    let qualifier = &names[..names.len() - 1];
                    self.scope.contains(&qualifier.join("."))
                        || qualifier.last().is_some_and(|q| self.scope.contains(q))
                }
                _ => false,
            };
            if inner {
                self.found = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut finder = Inner {
        scope,
        found: false,
    };
    let _ = Visit::visit(expr, &mut finder);
    finder.found
}

fn split_conjunction(expr: Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_conjunction(*left, out);
            split_conjunction(*right, out);
        }
        Expr::Nested(inner)
            if matches!(
                inner.as_ref(),
                Expr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            split_conjunction(*inner, out)
        }
        other => out.push(other),
    }
}

fn conjunction(exprs: Vec<Expr>) -> Option<Expr> {
    exprs.into_iter().reduce(|left, right| Expr::BinaryOp {
        left: Box::new(left),
        op: BinaryOperator::And,
        right: Box::new(right),
    })
}

/// Whether `expr` is `inner_column = outer_expression` (either way round), the only
/// correlated condition DataFusion pulls up through an aggregate.
fn is_correlated_equality(expr: &Expr, scope: &HashSet<String>) -> bool {
    let Expr::BinaryOp {
        left,
        op: BinaryOperator::Eq,
        right,
    } = peel(expr)
    else {
        return false;
    };
    let side_ok = |column: &Expr, other: &Expr| {
        is_column_ref(peel(column))
            && expr_has_inner_refs(column, scope)
            && !expr_has_inner_refs(other, scope)
    };
    side_ok(left, right) || side_ok(right, left)
}

const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "first_value",
    "last_value",
    "json_agg",
    "jsonb_agg",
];

fn is_aggregated(select: &Select) -> bool {
    let has_group_by = !matches!(
        &select.group_by,
        datafusion::sql::sqlparser::ast::GroupByExpr::Expressions(e, _) if e.is_empty()
    );
    has_group_by
        || select.projection.iter().any(|item| match item {
            SelectItem::UnnamedExpr(Expr::Function(f))
            | SelectItem::ExprWithAlias {
                expr: Expr::Function(f),
                ..
            } => name_parts(&f.name)
                .last()
                .is_some_and(|n| AGGREGATES.contains(&n.as_str())),
            _ => false,
        })
}

/// Makes a correlated scalar subquery decorrelatable, or replaces it with `NULL` where
/// DataFusion cannot decorrelate it.
///
/// DataFusion decorrelates a scalar subquery whose result is aggregated and whose
/// correlated conditions are `inner_column = outer_value` in its WHERE clause. So:
/// conditions on outer columns only move into `CASE WHEN cond THEN (subquery) END`, and an
/// unaggregated result is aggregated with `first_value` (a scalar subquery has at most one
/// row, or Postgres fails it). Subqueries that use outer columns in their select list or
/// FROM clause, or in other conditions, become `NULL`: in the client queries that do this
/// (psql, SQLAlchemy, pgcli) they read defaults, identity sequences, policies and
/// publications, of which Flotilla has none, so `NULL` is also their value.
fn fix_scalar_subquery(expr: &mut Expr) {
    let Expr::Subquery(query) = expr else {
        return;
    };
    // Only catalog queries: a user query's subquery is left for DataFusion to plan or
    // refuse, since NULL is no stand-in for its result.
    if !query_has_outer_refs(query) || !query_reads_catalog(query) {
        return;
    }
    // What the subquery is replaced with where it cannot be decorrelated: a NULL of its
    // type where that matters (`unnest` of an `array_agg`, pgcli).
    let replacement = match query.body.as_ref() {
        SetExpr::Select(select)
            if select.projection.iter().any(|item| match item {
                SelectItem::UnnamedExpr(Expr::Function(f))
                | SelectItem::ExprWithAlias {
                    expr: Expr::Function(f),
                    ..
                } => name_parts(&f.name).last().is_some_and(|n| n == "array_agg"),
                _ => false,
            }) =>
        {
            template("CAST(NULL AS TEXT[])")
        }
        _ => null(),
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        *expr = replacement;
        return;
    };
    let scope = defined_names(select);
    if select.from.is_empty() || from_has_outer_refs(select) {
        *expr = replacement;
        return;
    }
    let projection_correlated = select.projection.iter().any(|item| match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
            expr_has_outer_refs(e, &scope)
        }
        _ => true,
    });
    if projection_correlated || select.projection.len() != 1 {
        *expr = replacement;
        return;
    }
    let mut conditions = Vec::new();
    if let Some(selection) = select.selection.take() {
        split_conjunction(selection, &mut conditions);
    }
    let mut kept = Vec::new();
    let mut hoisted = Vec::new();
    for condition in conditions {
        let outer = expr_has_outer_refs(&condition, &scope);
        let inner = expr_has_inner_refs(&condition, &scope);
        if !outer {
            kept.push(condition);
        } else if !inner {
            hoisted.push(condition);
        } else if is_correlated_equality(&condition, &scope) {
            kept.push(condition);
        } else {
            *expr = replacement;
            return;
        }
    }
    select.selection = conjunction(kept);
    if select
        .having
        .as_ref()
        .is_some_and(|h| expr_has_outer_refs(h, &scope))
    {
        *expr = replacement;
        return;
    }
    if !is_aggregated(select) {
        if let Some(SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }) =
            select.projection.first_mut()
        {
            let value = take(e);
            *e = call("first_value", vec![value]);
        }
        // A sort or limit over at most one row changes nothing, and would keep
        // DataFusion from decorrelating.
        query.order_by = None;
        query.limit_clause = None;
        query.fetch = None;
    }
    if let Some(guard) = conjunction(hoisted) {
        let subquery = take(expr);
        let mut case = template("CASE WHEN true THEN NULL END");
        if let Expr::Case { conditions, .. } = &mut case {
            conditions[0].condition = guard;
            conditions[0].result = subquery;
        }
        *expr = Expr::Nested(Box::new(case));
    }
}

/// Whether a select's FROM clause uses outer columns: in table function arguments,
/// derived tables or join conditions. DataFusion plans none of these.
fn from_has_outer_refs(select: &Select) -> bool {
    fn factor_has(factor: &TableFactor) -> bool {
        match factor {
            TableFactor::Table {
                args: Some(args), ..
            } => args.args.iter().any(|arg| {
                let mut finder = OuterRefs::new(vec![HashSet::new()]);
                let _ = Visit::visit(arg, &mut finder);
                finder.found
            }),
            TableFactor::Derived { subquery, .. } => query_has_outer_refs(subquery),
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => {
                factor_has(&table_with_joins.relation)
                    || table_with_joins
                        .joins
                        .iter()
                        .any(|j| factor_has(&j.relation))
            }
            TableFactor::Function { .. } | TableFactor::UNNEST { .. } => true,
            _ => false,
        }
    }
    let scope = defined_names(select);
    select.from.iter().any(|table| {
        factor_has(&table.relation)
            || table.joins.iter().any(|join| {
                if factor_has(&join.relation) {
                    return true;
                }
                let mut finder = OuterRefs::new(vec![scope.clone()]);
                let _ = Visit::visit(&join.join_operator, &mut finder);
                finder.found
            })
    })
}

fn is_array_subquery(f: &Function) -> bool {
    matches!(f.args, FunctionArguments::Subquery(_))
        && name_parts(&f.name).last().is_some_and(|n| n == "array")
}

/// `ARRAY(subquery)`: an aggregate over the subquery, or a `NULL` text array where the
/// subquery is correlated (psql's policy query, over an empty `pg_policy`).
fn fix_array_subquery(expr: &mut Expr) {
    let Expr::Function(Function {
        args: FunctionArguments::Subquery(query),
        ..
    }) = expr
    else {
        return;
    };
    if query_has_outer_refs(query) {
        if query_reads_catalog(query) {
            *expr = template("CAST(NULL AS TEXT[])");
        }
        return;
    }
    let subquery = std::mem::replace(query.as_mut(), *empty_query());
    let mut aggregate =
        template("(SELECT array_agg(__flotilla_array.v) FROM (SELECT 1) AS __flotilla_array(v))");
    replace_derived(&mut aggregate, subquery);
    *expr = aggregate;
}

fn empty_query() -> Box<Query> {
    match template("(SELECT 1)") {
        Expr::Subquery(q) => q,
        _ => unreachable!("the template is a subquery"),
    }
}

/// Puts `subquery` in place of the first derived table of the subquery expression `expr`.
fn replace_derived(expr: &mut Expr, subquery: Query) {
    let Expr::Subquery(outer) = peel_mut(expr) else {
        return;
    };
    let SetExpr::Select(select) = outer.body.as_mut() else {
        return;
    };
    if let Some(TableFactor::Derived { subquery: slot, .. }) =
        select.from.first_mut().map(|t| &mut t.relation)
    {
        **slot = subquery;
    }
}

fn peel_mut(expr: &mut Expr) -> &mut Expr {
    match expr {
        Expr::Nested(inner) => peel_mut(inner),
        other => other,
    }
}

/// `x [NOT] IN (subquery)` in a select list: DataFusion decorrelates IN only in WHERE, so
/// it becomes a lookup in the aggregated subquery (Grafana).
fn replace_in_subqueries(expr: &mut Expr) {
    struct Replacer {
        depth: usize,
    }
    impl VisitorMut for Replacer {
        type Break = ();
        fn pre_visit_query(&mut self, _query: &mut Query) -> ControlFlow<()> {
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _query: &mut Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
            if self.depth > 0 {
                return ControlFlow::Continue(());
            }
            let Expr::InSubquery {
                expr: needle,
                subquery,
                negated,
            } = expr
            else {
                return ControlFlow::Continue(());
            };
            if query_has_outer_refs(subquery) {
                return ControlFlow::Continue(());
            }
            let needle = take(needle);
            let negated = *negated;
            let subquery = std::mem::replace(subquery.as_mut(), *empty_query());
            let mut lookup =
                template("(SELECT array_agg(__flotilla_in.v) FROM (SELECT 1) AS __flotilla_in(v))");
            replace_derived(&mut lookup, subquery);
            let found = call(
                "coalesce",
                vec![
                    call("array_has", vec![lookup, needle]),
                    Expr::value(Value::Boolean(false)),
                ],
            );
            *expr = if negated {
                Expr::UnaryOp {
                    op: UnaryOperator::Not,
                    expr: Box::new(Expr::Nested(Box::new(found))),
                }
            } else {
                found
            };
            ControlFlow::Continue(())
        }
    }
    let _ = VisitMut::visit(expr, &mut Replacer { depth: 0 });
}

// ---------------------------------------------------------------------------------------
// Casts.

/// `x::regclass` as an item of the statement's result: Postgres prints the name (psql's
/// `\d`: `c.oid::pg_catalog.regclass`, `conrelid::pg_catalog.regclass AS ontable`).
/// Nested queries keep the oid, which their readers compare.
fn project_reg_cast(expr: &mut Expr) {
    let Expr::Cast {
        expr: inner,
        data_type,
        ..
    } = peel_mut(expr)
    else {
        return;
    };
    let Some(reg) = reg_type(data_type) else {
        return;
    };
    let value = take(inner);
    *expr = call(reg.text_function(), vec![text_placeholder(value)]);
}

/// Chains through a `reg*` type: `x::regclass::text` is the name, `x::regclass::oid` the
/// oid (psql, pgcli, SQLAlchemy).
fn rewrite_cast_chain(expr: &mut Expr) {
    let Expr::Cast {
        expr: inner,
        data_type: outer_type,
        ..
    } = expr
    else {
        return;
    };
    let Expr::Cast {
        expr: value,
        data_type: inner_type,
        ..
    } = peel_mut(inner)
    else {
        return;
    };
    let Some(reg) = reg_type(inner_type) else {
        return;
    };
    let function = if is_text_type(outer_type) {
        reg.text_function()
    } else if is_oid_type(outer_type) {
        reg.oid_function()
    } else {
        return;
    };
    let value = take(value);
    *expr = call(function, vec![text_placeholder(value)]);
}

/// A parameter cast to a `reg*` type is a name: typing it as text lets DataFusion infer
/// the parameter's type (SQLAlchemy: `CAST($2 AS REGCLASS)`).
fn text_placeholder(expr: Expr) -> Expr {
    if is_placeholder(&expr) {
        cast(expr, DataType::Text)
    } else {
        expr
    }
}

/// Rewrites the remaining casts DataFusion cannot plan.
fn rewrite_cast(expr: &mut Expr) {
    let Expr::Cast {
        expr: inner,
        data_type,
        ..
    } = expr
    else {
        return;
    };
    if let Some(reg) = reg_type(data_type) {
        let value = take(inner);
        *expr = call(reg.oid_function(), vec![text_placeholder(value)]);
        return;
    }
    if let Some(element) = array_element(data_type) {
        if reg_type(element).is_some() {
            // `proargtypes::regtype[]`: the oids themselves.
            *expr = take(inner);
            return;
        }
        // `'{a,b}'::text[]`: an array literal.
        if let Some(items) = string_literal(inner).and_then(parse_array_literal) {
            let numeric = !matches!(
                plannable_type(element).as_ref().unwrap_or(element),
                DataType::Text | DataType::Varchar(_) | DataType::Char(_)
            );
            **inner = array_expr(&items, numeric);
        }
    }
    if let Some(replacement) = plannable_type(data_type) {
        *data_type = replacement;
    }
}

// ---------------------------------------------------------------------------------------
// Expressions.

fn rewrite_expr(expr: &mut Expr) {
    match expr {
        // psql: `c.relname OPERATOR(pg_catalog.~) '^(t1)$' COLLATE pg_catalog.default`.
        Expr::Collate { expr: inner, .. } => {
            *expr = take(inner);
        }
        Expr::BinaryOp { op, .. } => {
            if let BinaryOperator::PGCustomBinaryOperator(parts) = op {
                if let Some(mapped) = parts.last().and_then(|o| operator(o)) {
                    *op = mapped;
                }
            }
        }
        Expr::AnyOp {
            left,
            compare_op: BinaryOperator::Eq,
            right,
            ..
        } => {
            *expr = any_equal(take(left), take(right), false);
        }
        Expr::AllOp {
            left,
            compare_op: BinaryOperator::NotEq,
            right,
        } => {
            *expr = any_equal(take(left), take(right), true);
        }
        Expr::Cast { .. } => rewrite_cast(expr),
        Expr::Function(_) => rewrite_function(expr),
        // pgjdbc: `(information_schema._pg_expandarray(i.indkey)).n`. DataFusion reads
        // record fields by subscript.
        Expr::CompoundFieldAccess { root, access_chain }
            if !matches!(**root, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) =>
        {
            for access in access_chain {
                if let AccessExpr::Dot(Expr::Identifier(field)) = access {
                    *access = AccessExpr::Subscript(Subscript::Index {
                        index: string_value(ident_name(field)),
                    });
                }
            }
        }
        // SQLAlchemy: `nspname NOT LIKE $1::VARCHAR || '%' ESCAPE '/'`. DataFusion escapes
        // with backslashes only; `like_escape` translates the pattern.
        Expr::Like {
            pattern,
            escape_char,
            ..
        }
        | Expr::ILike {
            pattern,
            escape_char,
            ..
        } => {
            let escape = match escape_char.as_ref().map(|v| &v.value) {
                Some(Value::SingleQuotedString(e)) if e != "\\" => e.clone(),
                _ => return,
            };
            let value = take(pattern);
            **pattern = call("like_escape", vec![value, string_value(escape)]);
            *escape_char = None;
        }
        _ => {}
    }
}

fn operator(symbol: &str) -> Option<BinaryOperator> {
    Some(match symbol {
        "~" => BinaryOperator::PGRegexMatch,
        "~*" => BinaryOperator::PGRegexIMatch,
        "!~" => BinaryOperator::PGRegexNotMatch,
        "!~*" => BinaryOperator::PGRegexNotIMatch,
        "~~" => BinaryOperator::PGLikeMatch,
        "!~~" => BinaryOperator::PGNotLikeMatch,
        "=" => BinaryOperator::Eq,
        "<>" | "!=" => BinaryOperator::NotEq,
        "<" => BinaryOperator::Lt,
        "<=" => BinaryOperator::LtEq,
        ">" => BinaryOperator::Gt,
        ">=" => BinaryOperator::GtEq,
        "||" => BinaryOperator::StringConcat,
        _ => return None,
    })
}

/// `x = ANY(list)` (or, `negated`, `x <> ALL(list)`): an IN list for literal lists, an
/// IN subquery for subqueries, `array_has` for array values.
fn any_equal(left: Expr, right: Expr, negated: bool) -> Expr {
    let right = match right {
        Expr::Nested(inner) => *inner,
        other => other,
    };
    if let Some(list) = literal_list(&right) {
        return Expr::InList {
            expr: Box::new(left),
            list,
            negated,
        };
    }
    if let Expr::Subquery(subquery) = right {
        return Expr::InSubquery {
            expr: Box::new(left),
            subquery,
            negated,
        };
    }
    let found = call("array_has", vec![right, left]);
    if negated {
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr: Box::new(Expr::Nested(Box::new(found))),
        }
    } else {
        found
    }
}

/// Types a quoted literal compared with a catalog column the way Postgres types an
/// unknown literal: as the column's type. `i.indisprimary = 't'` (psqlODBC),
/// `c.relnamespace = 'public'` (DBeaver: a name where an oid is due, looked up),
/// `pol.polroles = '{0}'` (psql).
fn type_literals(expr: &mut Expr) {
    let Expr::BinaryOp { left, op, right } = expr else {
        return;
    };
    if !matches!(
        op,
        BinaryOperator::Eq
            | BinaryOperator::NotEq
            | BinaryOperator::Lt
            | BinaryOperator::LtEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq
    ) {
        return;
    }
    for swap in [false, true] {
        let (column, literal) = if swap {
            (&**right, &mut **left)
        } else {
            (&**left, &mut **right)
        };
        let Some(name) = column_name(column).filter(|_| is_column_ref(peel(column))) else {
            continue;
        };
        let Some(ty) = tables::column_type(&name) else {
            continue;
        };
        let Some(text) = string_literal(literal).map(str::to_string) else {
            continue;
        };
        match ty {
            T::Bool => {
                let value = match text.to_ascii_lowercase().as_str() {
                    "t" | "true" | "y" | "yes" | "on" | "1" => true,
                    "f" | "false" | "n" | "no" | "off" | "0" => false,
                    _ => continue,
                };
                *literal = Expr::value(Value::Boolean(value));
            }
            T::Oid if text.trim().parse::<i64>().is_err() => {
                let function = if name.ends_with("namespace") || name.ends_with("nspid") {
                    Reg::Namespace.oid_function()
                } else {
                    Reg::Class.oid_function()
                };
                *literal = call(function, vec![string_value(text)]);
            }
            T::Int2Vec | T::OidVec | T::TextArr => {
                if let Some(items) = parse_array_literal(&text) {
                    *literal = array_expr(&items, ty != T::TextArr);
                }
            }
            _ => {}
        }
        return;
    }
}

/// Drops `pg_catalog.` from function names, and unnests the set-returning functions
/// `generate_subscripts` and `_pg_expandarray` (pgjdbc, SQLAlchemy, pgcli).
fn rewrite_function(expr: &mut Expr) {
    let Expr::Function(f) = expr else {
        return;
    };
    let parts = name_parts(&f.name);
    if parts.len() == 2 && (parts[0] == PG_CATALOG || parts[0] == INFORMATION_SCHEMA) {
        f.name.0.remove(0);
    }
    let Some(name) = parts.last() else {
        return;
    };
    if name == "generate_subscripts" || name == "_pg_expandarray" {
        let inner = take(expr);
        *expr = call("unnest", vec![inner]);
        return;
    }
    // Parameters given to reg* lookups are names.
    if name.starts_with("to_reg") {
        for arg in function_args_mut(f) {
            if is_placeholder(arg) {
                let value = take(arg);
                *arg = cast(value, DataType::Text);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_literals_parse() {
        assert_eq!(
            parse_array_literal("{r,p,\"a b\",NULL}"),
            Some(vec![
                Some("r".into()),
                Some("p".into()),
                Some("a b".into()),
                None
            ])
        );
        assert_eq!(parse_array_literal("{}"), Some(vec![]));
        assert_eq!(parse_array_literal("r,p"), None);
    }

    fn rewritten(sql: &str) -> String {
        let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        let mut statement = statements.remove(0);
        rewrite(&mut statement);
        statement.to_string()
    }

    #[test]
    fn operators_and_collations() {
        assert_eq!(
            rewritten("SELECT 1 FROM t WHERE c.relname OPERATOR(pg_catalog.~) '^(t1)$' COLLATE pg_catalog.default"),
            "SELECT 1 FROM t WHERE c.relname ~ '^(t1)$'"
        );
    }

    #[test]
    fn any_and_all() {
        assert_eq!(
            rewritten("SELECT a FROM t WHERE a = ANY('{r,p}') AND b <> ALL ('{x}'::text[]) AND c = ANY(ARRAY[$1::VARCHAR])"),
            "SELECT a FROM t WHERE a IN ('r', 'p') AND b NOT IN ('x') AND c IN ($1::VARCHAR)"
        );
        assert_eq!(
            rewritten("SELECT a FROM t WHERE a = ANY(current_schemas(true))"),
            "SELECT a FROM t WHERE array_has(current_schemas(true), a)"
        );
    }

    #[test]
    fn reg_casts() {
        assert_eq!(
            rewritten("SELECT c.oid::pg_catalog.regclass FROM pg_class c WHERE c.oid = 'pg_class'::regclass"),
            "SELECT regclass_text(c.oid) AS \"oid\" FROM pg_catalog.pg_class c WHERE c.oid = regclass_oid('pg_class')"
        );
        assert_eq!(
            rewritten("SELECT x FROM t WHERE y = 'clubs'::regclass::oid AND z = a.atttypid::regtype::text"),
            "SELECT x FROM t WHERE y = regclass_oid('clubs') AND z = regtype_text(a.atttypid)"
        );
    }

    #[test]
    fn projection_names() {
        assert_eq!(
            rewritten("SELECT pg_catalog.version()"),
            "SELECT version() AS \"version\""
        );
        assert_eq!(
            rewritten("SELECT pubname, NULL, NULL FROM p"),
            "SELECT pubname, NULL AS \"?column?\", NULL AS \"?column?_1\" FROM p"
        );
    }
}
