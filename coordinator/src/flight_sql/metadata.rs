//! What Flight SQL clients learn about the server and its catalog: `GetSqlInfo`,
//! `GetXdbcTypeInfo`, catalogs, schemas, tables, and the (empty) key listings.

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    Nullable, Searchable, SqlInfo, SqlNullOrdering, SqlOuterJoinsSupportLevel,
    SqlSupportedCaseSensitivity, SqlSupportedTransaction, SqlSupportedUnions, XdbcDataType,
    XdbcDatetimeSubcode,
};
use datafusion::datasource::TableType;
use sql::session::SYSTEM_SCHEMA;

use crate::engine::Engine;
use crate::error::{QueryError, Result};

/// Table types `GetTableTypes` lists, as Flight SQL and JDBC clients name them.
pub const TABLE_TYPES: [&str; 3] = ["SYSTEM TABLE", "TABLE", "VIEW"];

/// Schemas whose tables are the server's own.
fn is_system_schema(name: &str) -> bool {
    name == SYSTEM_SCHEMA || name == "pg_catalog" || name == "information_schema"
}

fn internal(e: impl std::fmt::Display) -> QueryError {
    QueryError::Internal {
        message: e.to_string(),
    }
}

/// The server's `GetSqlInfo` answers.
pub fn sql_info(engine: &Engine) -> Result<SqlInfoData> {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Flotilla");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, arrow_version());
    b.append(SqlInfo::FlightSqlServerReadOnly, false);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, true);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, false);
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, true);
    b.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(
        SqlInfo::SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32,
    );
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    b.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    b.append(SqlInfo::SqlKeywords, keywords());
    let functions = engine.function_names();
    b.append(
        SqlInfo::SqlNumericFunctions,
        pick(&functions, NUMERIC_FUNCTIONS),
    );
    b.append(
        SqlInfo::SqlStringFunctions,
        pick(&functions, STRING_FUNCTIONS),
    );
    b.append(
        SqlInfo::SqlSystemFunctions,
        pick(&functions, SYSTEM_FUNCTIONS),
    );
    b.append(
        SqlInfo::SqlDatetimeFunctions,
        pick(&functions, DATETIME_FUNCTIONS),
    );
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlExtraNameCharacters, "");
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(SqlInfo::SqlNullPlusNullIsNull, true);
    b.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsDifferentTableCorrelationNames, false);
    b.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    b.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    b.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    b.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    b.append(SqlInfo::SqlSupportsIntegrityEnhancementFacility, false);
    b.append(
        SqlInfo::SqlOuterJoinsSupportLevel,
        SqlOuterJoinsSupportLevel::SqlFullOuterJoins as i32,
    );
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlProcedureTerm, "function");
    b.append(SqlInfo::SqlCatalogTerm, "database");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    b.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    b.append(
        SqlInfo::SqlSupportedUnions,
        (1 << SqlSupportedUnions::SqlUnion as i32) | (1 << SqlSupportedUnions::SqlUnionAll as i32),
    );
    b.append(SqlInfo::SqlMaxColumnNameLength, 63i64);
    b.append(SqlInfo::SqlMaxColumnsInGroupBy, 0i64);
    b.append(SqlInfo::SqlMaxColumnsInOrderBy, 0i64);
    b.append(SqlInfo::SqlMaxColumnsInSelect, 0i64);
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.append(SqlInfo::SqlBatchUpdatesSupported, true);
    b.append(SqlInfo::SqlSavepointsSupported, false);
    b.append(SqlInfo::SqlNamedParametersSupported, false);
    b.append(SqlInfo::SqlStoredFunctionsUsingCallSyntaxSupported, false);
    b.build().map_err(internal)
}

/// The Arrow version of this build (arrow-flight and arrow move together).
fn arrow_version() -> &'static str {
    "59.3"
}

fn keywords() -> Vec<String> {
    datafusion::sql::sqlparser::keywords::ALL_KEYWORDS
        .iter()
        .map(|k| k.to_string())
        .collect()
}

const NUMERIC_FUNCTIONS: &[&str] = &[
    "abs", "acos", "asin", "atan", "atan2", "cbrt", "ceil", "cos", "cot", "degrees", "exp",
    "floor", "ln", "log", "log10", "log2", "mod", "pi", "power", "radians", "random", "round",
    "signum", "sin", "sqrt", "tan", "trunc",
];
const STRING_FUNCTIONS: &[&str] = &[
    "ascii",
    "btrim",
    "char_length",
    "chr",
    "concat",
    "concat_ws",
    "initcap",
    "left",
    "length",
    "lower",
    "lpad",
    "ltrim",
    "md5",
    "octet_length",
    "position",
    "regexp_replace",
    "repeat",
    "replace",
    "reverse",
    "right",
    "rpad",
    "rtrim",
    "split_part",
    "starts_with",
    "strpos",
    "substr",
    "substring",
    "to_hex",
    "translate",
    "trim",
    "upper",
];
const SYSTEM_FUNCTIONS: &[&str] = &[
    "coalesce",
    "current_database",
    "current_schema",
    "current_user",
    "nullif",
    "version",
];
const DATETIME_FUNCTIONS: &[&str] = &[
    "current_date",
    "current_time",
    "date_bin",
    "date_part",
    "date_trunc",
    "extract",
    "make_date",
    "now",
    "to_char",
    "to_date",
    "to_timestamp",
];

fn pick(registered: &[String], wanted: &[&str]) -> Vec<String> {
    wanted
        .iter()
        .filter(|w| registered.iter().any(|r| r == *w))
        .map(|w| w.to_uppercase())
        .collect()
}

/// The server's `GetXdbcTypeInfo` answers: the types results come in.
pub fn xdbc_info() -> Result<XdbcTypeInfoData> {
    let mut b = XdbcTypeInfoDataBuilder::new();
    let t = |name: &str, data_type: XdbcDataType, size: Option<i32>, searchable: Searchable| {
        XdbcTypeInfo {
            type_name: name.into(),
            data_type,
            column_size: size,
            literal_prefix: None,
            literal_suffix: None,
            create_params: None,
            nullable: Nullable::NullabilityNullable,
            case_sensitive: false,
            searchable,
            unsigned_attribute: None,
            fixed_prec_scale: false,
            auto_increment: Some(false),
            local_type_name: Some(name.into()),
            minimum_scale: None,
            maximum_scale: None,
            sql_data_type: data_type,
            datetime_subcode: None,
            num_prec_radix: None,
            interval_precision: None,
        }
    };
    let quoted = |mut info: XdbcTypeInfo| {
        info.literal_prefix = Some("'".into());
        info.literal_suffix = Some("'".into());
        info
    };
    let numeric = |mut info: XdbcTypeInfo| {
        info.unsigned_attribute = Some(false);
        info.num_prec_radix = Some(10);
        info
    };
    b.append(t(
        "BOOLEAN",
        XdbcDataType::XdbcBit,
        Some(1),
        Searchable::Basic,
    ));
    b.append(numeric(t(
        "SMALLINT",
        XdbcDataType::XdbcSmallint,
        Some(5),
        Searchable::Basic,
    )));
    b.append(numeric(t(
        "INTEGER",
        XdbcDataType::XdbcInteger,
        Some(10),
        Searchable::Basic,
    )));
    b.append(numeric(t(
        "BIGINT",
        XdbcDataType::XdbcBigint,
        Some(19),
        Searchable::Basic,
    )));
    b.append(numeric(t(
        "REAL",
        XdbcDataType::XdbcReal,
        Some(24),
        Searchable::Basic,
    )));
    b.append(numeric(t(
        "DOUBLE PRECISION",
        XdbcDataType::XdbcDouble,
        Some(53),
        Searchable::Basic,
    )));
    let mut decimal = numeric(t(
        "NUMERIC",
        XdbcDataType::XdbcNumeric,
        Some(38),
        Searchable::Basic,
    ));
    decimal.create_params = Some(vec!["precision".into(), "scale".into()]);
    decimal.minimum_scale = Some(0);
    decimal.maximum_scale = Some(38);
    b.append(decimal);
    let mut text = quoted(t("TEXT", XdbcDataType::XdbcVarchar, None, Searchable::Full));
    text.case_sensitive = true;
    b.append(text);
    let mut varchar = quoted(t(
        "VARCHAR",
        XdbcDataType::XdbcVarchar,
        None,
        Searchable::Full,
    ));
    varchar.case_sensitive = true;
    varchar.create_params = Some(vec!["length".into()]);
    b.append(varchar);
    b.append(quoted(t(
        "BYTEA",
        XdbcDataType::XdbcVarbinary,
        None,
        Searchable::None,
    )));
    let mut date = quoted(t(
        "DATE",
        XdbcDataType::XdbcDate,
        Some(10),
        Searchable::Basic,
    ));
    date.literal_prefix = Some("DATE '".into());
    date.sql_data_type = XdbcDataType::XdbcDatetime;
    date.datetime_subcode = Some(XdbcDatetimeSubcode::XdbcSubcodeYear);
    b.append(date);
    let mut time = quoted(t(
        "TIME",
        XdbcDataType::XdbcTime,
        Some(15),
        Searchable::Basic,
    ));
    time.literal_prefix = Some("TIME '".into());
    time.sql_data_type = XdbcDataType::XdbcDatetime;
    time.datetime_subcode = Some(XdbcDatetimeSubcode::XdbcSubcodeTime);
    b.append(time);
    let mut timestamp = quoted(t(
        "TIMESTAMP",
        XdbcDataType::XdbcTimestamp,
        Some(26),
        Searchable::Basic,
    ));
    timestamp.literal_prefix = Some("TIMESTAMP '".into());
    timestamp.sql_data_type = XdbcDataType::XdbcDatetime;
    timestamp.datetime_subcode = Some(XdbcDatetimeSubcode::XdbcSubcodeTimestamp);
    b.append(timestamp);
    b.build().map_err(internal)
}

/// `GetPrimaryKeys` columns (Flight SQL spec); Flotilla tables have no keys.
pub fn primary_keys_schema() -> Schema {
    Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ])
}

/// `GetImportedKeys` / `GetExportedKeys` / `GetCrossReference` columns.
pub fn foreign_keys_schema() -> Schema {
    Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ])
}

pub fn catalog_names(engine: &Engine) -> Vec<String> {
    let mut names = engine.catalog_list().catalog_names();
    names.sort();
    names
}

pub fn schema_names(engine: &Engine) -> Vec<(String, String)> {
    let list = engine.catalog_list();
    let mut out = Vec::new();
    for catalog in catalog_names(engine) {
        if let Some(provider) = list.catalog(&catalog) {
            let mut schemas = provider.schema_names();
            schemas.sort();
            out.extend(schemas.into_iter().map(|s| (catalog.clone(), s)));
        }
    }
    out
}

/// One row of `GetTables`.
pub struct TableRow {
    pub catalog: String,
    pub schema_name: String,
    pub name: String,
    pub table_type: &'static str,
    pub schema: SchemaRef,
}

pub async fn tables(engine: &Engine) -> Result<Vec<TableRow>> {
    let list = engine.catalog_list();
    let mut out = Vec::new();
    for (catalog, schema_name) in schema_names(engine) {
        let Some(schema) = list.catalog(&catalog).and_then(|c| c.schema(&schema_name)) else {
            continue;
        };
        let mut names = schema.table_names();
        names.sort();
        for name in names {
            let Some(table) = schema.table(&name).await? else {
                continue;
            };
            let table_type = if is_system_schema(&schema_name) {
                "SYSTEM TABLE"
            } else {
                match table.table_type() {
                    TableType::View => "VIEW",
                    _ => "TABLE",
                }
            };
            out.push(TableRow {
                catalog: catalog.clone(),
                schema_name: schema_name.clone(),
                name,
                table_type,
                schema: table.schema(),
            });
        }
    }
    Ok(out)
}
