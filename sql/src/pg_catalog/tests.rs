//! End to end: what clients send parses, rewrites, plans and runs, and the catalog
//! describes the tables that exist.
//!
//! The client statements come from `shared/clients-fixtures/*.sql` and from the captured
//! traffic in `shared/docs/clients-appendix.md`, read at test time; where they are absent
//! the tests say so and pass.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::array_value_to_string;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;

use super::{register_functions, register_schema, rewrite};
use crate::config::FlotillaConfig;
use crate::session::{session_config, DEFAULT_CATALOG, SYSTEM_SCHEMA};

fn table(fields: Vec<Field>) -> Arc<MemTable> {
    let schema = Arc::new(Schema::new(fields));
    Arc::new(MemTable::try_new(schema, vec![vec![]]).expect("an empty table builds"))
}

/// A session configured like the coordinator's, with TPC-H-like tables in
/// `flotilla.public`, a system table, the catalog schema and the functions.
fn context() -> SessionContext {
    let state = SessionStateBuilder::new()
        .with_config(session_config(&FlotillaConfig::default()))
        .with_default_features()
        .build();
    let ctx = SessionContext::new_with_state(state);
    let decimal = DataType::Decimal128(15, 2);
    ctx.register_table(
        "nation",
        table(vec![
            Field::new("n_nationkey", DataType::Int64, false),
            Field::new("n_name", DataType::Utf8View, false),
            Field::new("n_regionkey", DataType::Int64, false),
            Field::new("n_comment", DataType::Utf8View, true),
        ]),
    )
    .unwrap();
    ctx.register_table(
        "lineitem",
        table(vec![
            Field::new("l_orderkey", DataType::Int64, false),
            Field::new("l_linenumber", DataType::Int32, false),
            Field::new("l_quantity", decimal.clone(), false),
            Field::new("l_extendedprice", decimal.clone(), false),
            Field::new("l_discount", decimal, false),
            Field::new("l_returnflag", DataType::Utf8View, false),
            Field::new("l_shipdate", DataType::Date32, false),
            Field::new("l_comment", DataType::Utf8View, false),
        ]),
    )
    .unwrap();
    ctx.register_table(
        "customer",
        table(vec![
            Field::new("c_custkey", DataType::Int64, false),
            Field::new("c_name", DataType::Utf8View, false),
            Field::new("c_acctbal", DataType::Decimal128(15, 2), false),
        ]),
    )
    .unwrap();
    let catalog = ctx.catalog(DEFAULT_CATALOG).expect("default catalog");
    let system = Arc::new(MemorySchemaProvider::new());
    catalog.register_schema(SYSTEM_SCHEMA, system).unwrap();
    ctx.register_table(
        format!("{SYSTEM_SCHEMA}.executors").as_str(),
        table(vec![
            Field::new("executor_id", DataType::Utf8, false),
            Field::new("pid", DataType::Int64, false),
        ]),
    )
    .unwrap();
    register_schema(ctx.state().catalog_list()).unwrap();
    register_functions(&ctx).unwrap();
    ctx
}

/// Parses one statement, rewrites it, binds `params` (text values, cast to the types the
/// plan infers) and runs it.
async fn run(
    ctx: &SessionContext,
    sql: &str,
    params: &[String],
) -> Result<Vec<RecordBatch>, String> {
    let mut statements = DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {})
        .map_err(|e| format!("parse: {e}"))?;
    if statements.len() != 1 {
        return Err(format!("{} statements", statements.len()));
    }
    let mut statement = statements.pop_front().expect("one statement");
    if let DFStatement::Statement(inner) = &mut statement {
        rewrite(inner);
    }
    let state = ctx.state();
    let mut plan = state
        .statement_to_plan(statement.clone())
        .await
        .map_err(|e| format!("plan: {e}\nrewritten: {statement}"))?;
    if !params.is_empty() {
        let types = plan.get_parameter_types().map_err(|e| e.to_string())?;
        let values = params
            .iter()
            .enumerate()
            .map(|(i, value)| {
                let text = ScalarValue::Utf8(Some(value.clone()));
                match types.get(&format!("${}", i + 1)).cloned().flatten() {
                    Some(t) => text.cast_to(&t),
                    None => Ok(text),
                }
            })
            .collect::<datafusion::error::Result<Vec<_>>>()
            .map_err(|e| format!("bind: {e}"))?;
        plan = plan
            .with_param_values(values)
            .map_err(|e| format!("bind: {e}\nrewritten: {statement}"))?;
    }
    let frame = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(|e| format!("plan: {e}\nrewritten: {statement}"))?;
    frame
        .collect()
        .await
        .map_err(|e| format!("run: {e}\nrewritten: {statement}"))
}

async fn query(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
    run(ctx, sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}\n{e}"))
}

/// Every row as text, columns joined by `|`.
fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .map(|c| {
                    if c.logical_nulls().is_some_and(|n| n.is_null(row)) {
                        "NULL".to_string()
                    } else {
                        array_value_to_string(c, row).unwrap_or_default()
                    }
                })
                .collect();
            out.push(cells.join("|"));
        }
    }
    out
}

fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// Whether a client statement is one the catalog emulation answers (a query); others
/// (`SET`, `SHOW`, transaction control) are the coordinator's.
fn is_query(sql: &str) -> bool {
    let code: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    let head = code.trim_start().to_ascii_lowercase();
    head.starts_with("select") || head.starts_with("with")
}

/// Runs every statement; returns the failures and the statements skipped as not queries.
async fn run_all(
    ctx: &SessionContext,
    statements: &[(String, String, Vec<String>)],
) -> (Vec<String>, Vec<String>, usize) {
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    let mut ran = 0;
    for (origin, sql, params) in statements {
        if !is_query(sql) {
            skipped.push(format!(
                "{origin}: {}",
                sql.trim().lines().last().unwrap_or("")
            ));
            continue;
        }
        ran += 1;
        if let Err(e) = run(ctx, sql, params).await {
            failures.push(format!("{origin}:\n{}\n=> {e}\n", sql.trim()));
        }
    }
    (failures, skipped, ran)
}

/// Statements of the fixture files, split on `-- next` lines.
fn fixture_statements() -> Option<Vec<(String, String, Vec<String>)>> {
    let dir = shared_dir().join("clients-fixtures");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let mut statements = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).ok()?;
        let name = file.file_name()?.to_string_lossy().to_string();
        let mut current = String::new();
        let mut index = 0;
        for line in text.lines().chain(std::iter::once("-- next")) {
            if line.trim() == "-- next" {
                if !current.trim().is_empty() {
                    index += 1;
                    statements.push((format!("{name} #{index}"), current.clone(), Vec::new()));
                }
                current.clear();
            } else {
                current.push_str(line);
                current.push('\n');
            }
        }
    }
    Some(statements)
}

/// The bound values of a `-- parameters: $1 = 'a', $2 = 'b'` line.
fn parse_parameters(line: &str) -> Vec<String> {
    let mut values = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find("= '") {
        let mut value = String::new();
        let mut chars = rest[start + 3..].char_indices().peekable();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            if c == '\'' {
                if chars.peek().map(|(_, c)| *c) == Some('\'') {
                    chars.next();
                    value.push('\'');
                    continue;
                }
                end = start + 3 + i + 1;
                break;
            }
            value.push(c);
        }
        values.push(value);
        rest = &rest[end.min(rest.len())..];
    }
    values
}

/// The catalog statements of the captured client traffic: every `statement:` and
/// `execute ...:` entry that is a query and does not read the capture's own table `t1`,
/// with its bound parameters.
fn appendix_statements() -> Option<Vec<(String, String, Vec<String>)>> {
    let text = std::fs::read_to_string(shared_dir().join("docs/clients-appendix.md")).ok()?;
    let mut statements: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut section = String::new();
    let mut current: Option<(String, String, Vec<String>)> = None;
    let mut index = 0;
    let finish = |current: &mut Option<(String, String, Vec<String>)>,
                  statements: &mut Vec<(String, String, Vec<String>)>| {
        if let Some(statement) = current.take() {
            statements.push(statement);
        }
    };
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            finish(&mut current, &mut statements);
            section = title.to_string();
            continue;
        }
        let body = line.strip_prefix("statement: ").or_else(|| {
            line.strip_prefix("execute ")
                .and_then(|rest| rest.split_once(": ").map(|(_, sql)| sql))
        });
        if let Some(sql) = body {
            finish(&mut current, &mut statements);
            index += 1;
            current = Some((
                format!("appendix {section} #{index}"),
                format!("{sql}\n"),
                Vec::new(),
            ));
        } else if let Some(params) = line.trim_start().strip_prefix("-- parameters:") {
            if let Some(current) = &mut current {
                current.2 = parse_parameters(params);
            }
        } else if line.starts_with('\t') {
            if let Some(current) = &mut current {
                current.1.push_str(line);
                current.1.push('\n');
            }
        } else {
            finish(&mut current, &mut statements);
        }
    }
    finish(&mut current, &mut statements);
    let reads_t1 = |sql: &str| sql.to_ascii_lowercase().contains("from t1");
    Some(
        statements
            .into_iter()
            .filter(|(_, sql, _)| is_query(sql) && !reads_t1(sql))
            .collect(),
    )
}

#[tokio::test]
async fn fixture_statements_run() {
    let Some(statements) = fixture_statements() else {
        println!("no client fixtures at {}; skipped", shared_dir().display());
        return;
    };
    let ctx = context();
    let (failures, skipped, ran) = run_all(&ctx, &statements).await;
    println!("{ran} fixture queries ran; skipped (not queries, answered by the coordinator):");
    for s in &skipped {
        println!("  {s}");
    }
    assert!(ran > 0);
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Statements of the appendix and how many rows they must return once the capture's
/// table `t1` (oid 16384) is replaced by `nation`.
const APPENDIX_ROWS: &[(&str, usize)] = &[
    // psql \d and \dt.
    ("pg_catalog.pg_get_userbyid(c.relowner)", 3),
    // psql \d t1: the columns.
    ("WHERE a.attrelid = '", 4),
    // SQLAlchemy: columns.
    ("pg_catalog.format_type(pg_catalog.pg_attribute.atttypid", 4),
    // pgjdbc: getColumns, and the column metadata of a result set.
    ("row_number() OVER (PARTITION BY a.attrelid", 4),
    ("UNION ALL SELECT 16384, 4", 4),
    // psqlODBC: SQLColumns.
    (
        "inner join pg_catalog.pg_attribute a on (not a.attisdropped)",
        4,
    ),
];

#[tokio::test]
async fn appendix_statements_run() {
    let Some(statements) = appendix_statements() else {
        println!("no clients appendix at {}; skipped", shared_dir().display());
        return;
    };
    let ctx = context();
    let (failures, _, ran) = run_all(&ctx, &statements).await;
    println!("{ran} appendix queries ran");
    assert!(ran > 0);
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Against a table that exists, the reflection queries describe it.
    let oid =
        rows(&query(&ctx, "SELECT oid FROM pg_class WHERE relname = 'nation'").await).remove(0);
    let mut checked = 0;
    for (origin, sql, params) in &statements {
        let Some((_, expected)) = APPENDIX_ROWS
            .iter()
            .find(|(marker, _)| sql.contains(marker))
        else {
            continue;
        };
        let sql = sql.replace("'t1'", "'nation'").replace("16384", &oid);
        let params: Vec<String> = params
            .iter()
            .map(|p| match p.as_str() {
                "t1" => "nation".to_string(),
                "16384" => oid.clone(),
                other => other.to_string(),
            })
            .collect();
        let batches = run(&ctx, &sql, &params)
            .await
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        assert_eq!(rows(&batches).len(), *expected, "{origin}:\n{sql}");
        checked += 1;
    }
    assert!(
        checked >= APPENDIX_ROWS.len(),
        "only {checked} reflection queries found"
    );
}

/// Npgsql's type loading, which Power BI sends (`tests/clients/npgsql.sql`: the
/// shape of Npgsql 4 and the current one), and its follow-up queries.
#[tokio::test]
async fn npgsql_loads_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/npgsql.sql");
    let text = std::fs::read_to_string(&path).expect("tests/clients/npgsql.sql");
    let ctx = context();
    let mut loaded = 0;
    for sql in text.split("\n-- next") {
        let sql: String = sql
            .lines()
            .filter(|l| !l.starts_with("-- "))
            .collect::<Vec<_>>()
            .join("\n");
        if sql.trim() == "DISCARD ALL" {
            continue;
        }
        let result = rows(&query(&ctx, &sql).await);
        if sql.contains("Load all supported types") {
            assert!(result.iter().any(|r| r.contains("|int4|")), "{result:?}");
            assert!(result.iter().any(|r| r.contains("|_int4|")), "{result:?}");
            loaded += 1;
        }
    }
    assert_eq!(loaded, 2, "both shapes of the type-loading query ran");
}

const PSQL_DT: &str = r#"SELECT n.nspname as "Schema",
  c.relname as "Name",
  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' WHEN 'I' THEN 'partitioned index' END as "Type",
  pg_catalog.pg_get_userbyid(c.relowner) as "Owner"
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam
WHERE c.relkind IN ('r','p','')
      AND n.nspname <> 'pg_catalog'
      AND n.nspname !~ '^pg_toast'
      AND n.nspname <> 'information_schema'
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 1,2;"#;

#[tokio::test]
async fn psql_lists_tables() {
    let ctx = context();
    let batches = query(&ctx, PSQL_DT).await;
    let schema = batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["Schema", "Name", "Type", "Owner"]);
    assert_eq!(
        rows(&batches),
        [
            "public|customer|table|flotilla",
            "public|lineitem|table|flotilla",
            "public|nation|table|flotilla",
        ]
    );
}

#[tokio::test]
async fn psql_describes_a_table() {
    let ctx = context();
    let find = "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c \
        LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
        WHERE c.relname OPERATOR(pg_catalog.~) '^(nation)$' COLLATE pg_catalog.default \
        AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 2, 3;";
    let found = rows(&query(&ctx, find).await);
    assert_eq!(found.len(), 1, "{found:?}");
    let oid = found[0].split('|').next().unwrap().to_string();
    assert!(found[0].ends_with("|public|nation"), "{found:?}");
    let columns = format!(
        "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), \
        (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true) FROM pg_catalog.pg_attrdef d \
         WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef), \
        a.attnotnull, \
        (SELECT c.collname FROM pg_catalog.pg_collation c, pg_catalog.pg_type t \
         WHERE c.oid = a.attcollation AND t.oid = a.atttypid AND a.attcollation <> t.typcollation) AS attcollation, \
        a.attidentity, a.attgenerated \
        FROM pg_catalog.pg_attribute a \
        WHERE a.attrelid = '{oid}' AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum;"
    );
    assert_eq!(
        rows(&query(&ctx, &columns).await),
        [
            "n_nationkey|bigint|NULL|true|NULL||",
            "n_name|text|NULL|true|NULL||",
            "n_regionkey|bigint|NULL|true|NULL||",
            "n_comment|text|NULL|false|NULL||",
        ]
    );
    let count = "SELECT count(*) FROM pg_catalog.pg_attribute WHERE attrelid = 'nation'::regclass";
    assert_eq!(rows(&query(&ctx, count).await), ["4"]);
}

#[tokio::test]
async fn pgjdbc_lists_columns_with_types() {
    let ctx = context();
    let sql = "SELECT * FROM (SELECT n.nspname,c.relname,a.attname,a.atttypid,\
        a.attnotnull OR (t.typtype = 'd' AND t.typnotnull) AS attnotnull,a.atttypmod,a.attlen,\
        t.typtypmod,row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum) AS attnum, \
        nullif(a.attidentity, '') as attidentity,nullif(a.attgenerated, '') as attgenerated,\
        pg_catalog.pg_get_expr(def.adbin, def.adrelid) AS adsrc,dsc.description,t.typbasetype,t.typtype, \
        t.typname, pg_catalog.format_type(a.atttypid, a.atttypmod) AS formatted \
        FROM pg_catalog.pg_namespace n  JOIN pg_catalog.pg_class c ON (c.relnamespace = n.oid)  \
        JOIN pg_catalog.pg_attribute a ON (a.attrelid=c.oid)  JOIN pg_catalog.pg_type t ON (a.atttypid = t.oid)  \
        LEFT JOIN pg_catalog.pg_attrdef def ON (a.attrelid=def.adrelid AND a.attnum = def.adnum)  \
        LEFT JOIN pg_catalog.pg_description dsc ON (c.oid=dsc.objoid AND a.attnum = dsc.objsubid)  \
        WHERE c.relkind in ('r','p','v','f','m') and a.attnum > 0 AND NOT a.attisdropped  \
        AND n.nspname LIKE 'public' AND c.relname LIKE 'lineitem') c \
        WHERE true AND attname LIKE '%' ORDER BY nspname,c.relname,attnum";
    let batches = query(&ctx, sql).await;
    let columns: Vec<String> = rows(&batches)
        .iter()
        .map(|r| {
            let cells: Vec<&str> = r.split('|').collect();
            format!("{} {} {} {}", cells[2], cells[3], cells[15], cells[16])
        })
        .collect();
    assert_eq!(
        columns,
        [
            "l_orderkey 20 int8 bigint",
            "l_linenumber 23 int4 integer",
            "l_quantity 1700 numeric numeric(15,2)",
            "l_extendedprice 1700 numeric numeric(15,2)",
            "l_discount 1700 numeric numeric(15,2)",
            "l_returnflag 25 text text",
            "l_shipdate 1082 date date",
            "l_comment 25 text text",
        ]
    );
}

#[tokio::test]
async fn functions_answer_like_postgres() {
    let ctx = context();
    assert_eq!(
        rows(
            &query(
                &ctx,
                "SELECT format_type(20, -1), format_type(1700, 983046), format_type(25, NULL)"
            )
            .await
        ),
        ["bigint|numeric(15,2)|text"]
    );
    let version = query(&ctx, "select pg_catalog.version()").await;
    assert_eq!(version[0].schema().field(0).name(), "version");
    let text = rows(&version).remove(0);
    assert!(text.starts_with("PostgreSQL 16.6 "), "{text}");
    assert_eq!(
        rows(
            &query(
                &ctx,
                "SELECT current_schema(), current_database(), current_user, session_user"
            )
            .await
        ),
        ["public|flotilla|flotilla|flotilla"]
    );
    assert_eq!(
        rows(&query(&ctx, "SELECT (pg_catalog.current_schemas(true))[1], array_upper(current_schemas(false), 1)").await),
        ["pg_catalog|1"]
    );
    assert_eq!(
        rows(&query(&ctx, "SELECT quote_ident('public'), quote_ident('User'), quote_ident('select'), parse_ident('public.\"Games\"')").await),
        ["public|\"User\"|\"select\"|[public, Games]"]
    );
    assert_eq!(
        rows(
            &query(
                &ctx,
                "SELECT setting FROM pg_catalog.pg_settings WHERE name='max_index_keys'"
            )
            .await
        ),
        ["32"]
    );
    assert_eq!(
        rows(
            &query(
                &ctx,
                "SELECT current_setting('server_version'), current_setting('search_path')"
            )
            .await
        ),
        ["16.6|\"$user\", public"]
    );
    assert_eq!(
        rows(&query(&ctx, "SELECT 'int4'::regtype::oid, to_regtype('hstore'), 'bigint'::regtype::text, 23::regtype, 'pg_class'::regclass").await),
        ["23|NULL|bigint|integer|pg_class"]
    );
}

#[tokio::test]
async fn regclass_matches_pg_class() {
    let ctx = context();
    let sql = "SELECT c.oid = 'nation'::regclass, c.oid = 'public.nation'::regclass, \
        c.oid::regclass, 'pg_class'::regclass::oid = 1259 \
        FROM pg_catalog.pg_class c WHERE c.relname = 'nation'";
    assert_eq!(rows(&query(&ctx, sql).await), ["true|true|nation|true"]);
    // Oids are stable: another session over another catalog list agrees.
    let oid = |ctx: SessionContext| async move {
        rows(&query(&ctx, "SELECT oid FROM pg_class WHERE relname = 'lineitem'").await)
    };
    assert_eq!(oid(context()).await, oid(context()).await);
    let visible = "SELECT relname, pg_table_is_visible(oid) FROM pg_class \
        WHERE relname IN ('nation', 'executors', 'pg_type') ORDER BY 1";
    assert_eq!(
        rows(&query(&ctx, visible).await),
        ["executors|false", "nation|true", "pg_type|true"]
    );
}

#[tokio::test]
async fn namespaces_reflect_the_catalog() {
    let ctx = context();
    let sql = "SELECT nspname AS TABLE_SCHEM, NULL AS TABLE_CATALOG FROM pg_catalog.pg_namespace \
        WHERE nspname <> 'pg_toast' AND (nspname !~ '^pg_temp_' OR nspname = (pg_catalog.current_schemas(true))[1]) \
        AND (nspname !~ '^pg_toast_temp_' OR nspname = replace((pg_catalog.current_schemas(true))[1], 'pg_temp_', 'pg_toast_temp_')) \
        ORDER BY TABLE_SCHEM";
    assert_eq!(
        rows(&query(&ctx, sql).await),
        [
            "flotilla|NULL",
            "information_schema|NULL",
            "pg_catalog|NULL",
            "public|NULL",
        ]
    );
    let tables =
        "SELECT schemaname, tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 2";
    assert_eq!(
        rows(&query(&ctx, tables).await),
        ["public|customer", "public|lineitem", "public|nation"]
    );
}

#[tokio::test]
async fn statements_without_catalog_syntax_are_kept() {
    let ctx = context();
    let sql =
        "SELECT n_name, count(*) AS c FROM nation WHERE n_regionkey = 1 GROUP BY n_name ORDER BY 1";
    assert!(rows(&query(&ctx, sql).await).is_empty());
    let batches = query(&ctx, "SELECT 1, 'a' || 'b'").await;
    assert_eq!(rows(&batches), ["1|ab"]);
    // Results of table queries keep DataFusion's column names.
    let batches = query(&ctx, "SELECT count(*), max(n_name) AS m FROM nation").await;
    let schema = batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["count(*)", "m"]);
}

/// `text` with the numbers of generated names (`__common_expr_3`) removed: the optimizer
/// numbers them per session.
fn without_generated_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("__") {
        let (head, tail) = rest.split_at(start);
        out.push_str(head);
        let name_len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..name_len];
        out.push_str(name.trim_end_matches(|c: char| c.is_ascii_digit()));
        rest = &tail[name_len..];
    }
    out.push_str(rest);
    out
}

/// The TPC-H queries plan the same with and without the rewrite: it leaves statements
/// without Postgres catalog syntax alone.
#[tokio::test]
async fn tpch_plans_are_unchanged() {
    let dir = shared_dir().join("tpch/queries");
    if !dir.is_dir() {
        println!("no TPC-H queries at {}; skipped", dir.display());
        return;
    }
    let ctx = context();
    for table in [
        "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier",
    ] {
        let schema = crate::tpch::batches(table, 0.001, 1, 1).schema();
        let _ = ctx.deregister_table(table);
        ctx.register_table(
            table,
            Arc::new(MemTable::try_new(schema, vec![vec![]]).unwrap()),
        )
        .unwrap();
    }
    let state = ctx.state();
    for n in 1..=22 {
        let path = dir.join(format!("q{n:02}.sql"));
        let sql = std::fs::read_to_string(&path).unwrap();
        let sql = sql.trim().trim_end_matches(';');
        let plan = |rewritten: bool| {
            let state = state.clone();
            async move {
                let mut statement = DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {})
                    .unwrap()
                    .pop_front()
                    .unwrap();
                if let (true, DFStatement::Statement(inner)) = (rewritten, &mut statement) {
                    rewrite(inner);
                }
                let plan = state.statement_to_plan(statement).await.unwrap();
                without_generated_numbers(
                    &state.optimize(&plan).unwrap().display_indent().to_string(),
                )
            }
        };
        let original = plan(false).await;
        let rewritten = plan(true).await;
        let differences: Vec<String> = original
            .lines()
            .zip(rewritten.lines())
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("- {a}\n+ {b}"))
            .collect();
        assert!(
            differences.is_empty(),
            "q{n:02}:\n{}",
            differences.join("\n")
        );
    }
}

/// Subqueries of table queries that DataFusion cannot decorrelate are refused, not
/// replaced: only catalog queries get the stand-ins.
#[tokio::test]
async fn user_subqueries_are_not_replaced() {
    let ctx = context();
    let sql = "SELECT (SELECT c.c_name || n.n_name FROM customer c WHERE c.c_custkey = n.n_nationkey) FROM nation n";
    assert!(run(&ctx, sql, &[]).await.is_err());
}
