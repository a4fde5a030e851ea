//! Postgres functions clients call in catalog queries.
//!
//! Most are evaluated row by row over [`ScalarValue`]s: they run over catalog relations of
//! a few thousand rows at most, and clarity matters more than speed here. Arguments are
//! accepted leniently (an oid may come as any integer or as a quoted integer), as
//! Postgres accepts unknown-typed literals.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use arrow::array::{new_empty_array, Array, ArrayRef, Int32Array, ListArray, StructArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use datafusion::catalog::{CatalogProviderList, TableFunctionImpl, TableProvider};
use datafusion::common::{exec_err, plan_err, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::datasource::MemTable;
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::tables::{self, postgres_settings};
use super::{types, CatalogNames, USER_NAME, USER_OID};
use crate::session::{DEFAULT_CATALOG, DEFAULT_SCHEMA};

/// When this process first registered the catalog functions: `pg_postmaster_start_time()`.
static START_TIME: LazyLock<SystemTime> = LazyLock::new(SystemTime::now);

/// One call of a function on one row.
struct Call<'a> {
    args: &'a [ScalarValue],
    options: &'a ConfigOptions,
    catalog_list: &'a Arc<dyn CatalogProviderList>,
    names: &'a OnceCell<CatalogNames>,
}

impl Call<'_> {
    /// Names and oids of the catalog, read once per batch.
    fn names(&self) -> &CatalogNames {
        self.names
            .get_or_init(|| CatalogNames::read(self.catalog_list.as_ref()))
    }

    fn arg(&self, i: usize) -> &ScalarValue {
        self.args.get(i).unwrap_or(&ScalarValue::Null)
    }

    fn int(&self, i: usize) -> Option<i64> {
        int_value(self.arg(i))
    }

    fn text(&self, i: usize) -> Option<String> {
        text_value(self.arg(i))
    }

    fn is_text(&self, i: usize) -> bool {
        matches!(
            self.arg(i),
            ScalarValue::Utf8(_) | ScalarValue::Utf8View(_) | ScalarValue::LargeUtf8(_)
        )
    }
}

fn int_value(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::Int8(v) => v.map(i64::from),
        ScalarValue::Int16(v) => v.map(i64::from),
        ScalarValue::Int32(v) => v.map(i64::from),
        ScalarValue::Int64(v) => *v,
        ScalarValue::UInt8(v) => v.map(i64::from),
        ScalarValue::UInt16(v) => v.map(i64::from),
        ScalarValue::UInt32(v) => v.map(i64::from),
        ScalarValue::UInt64(v) => v.and_then(|v| i64::try_from(v).ok()),
        ScalarValue::Utf8(v) | ScalarValue::Utf8View(v) | ScalarValue::LargeUtf8(v) => {
            v.as_deref().and_then(|s| s.trim().parse().ok())
        }
        _ => None,
    }
}

fn text_value(value: &ScalarValue) -> Option<String> {
    match value {
        ScalarValue::Utf8(v) | ScalarValue::Utf8View(v) | ScalarValue::LargeUtf8(v) => v.clone(),
        ScalarValue::Null => None,
        other if other.is_null() => None,
        other => Some(other.to_string()),
    }
}

fn bool_value(value: &ScalarValue) -> Option<bool> {
    match value {
        ScalarValue::Boolean(v) => *v,
        other => match text_value(other)?.to_ascii_lowercase().as_str() {
            "t" | "true" | "on" | "yes" | "1" => Some(true),
            "f" | "false" | "off" | "no" | "0" => Some(false),
            _ => None,
        },
    }
}

/// The elements of a list argument, `None` for `NULL` or a non-list.
fn list_values(value: &ScalarValue) -> Option<ArrayRef> {
    match value {
        ScalarValue::List(list) if !list.is_null(0) => Some(list.value(0)),
        ScalarValue::LargeList(list) if !list.is_null(0) => Some(list.value(0)),
        ScalarValue::FixedSizeList(list) if !list.is_null(0) => Some(list.value(0)),
        _ => None,
    }
}

fn utf8(value: impl Into<String>) -> ScalarValue {
    ScalarValue::Utf8(Some(value.into()))
}

fn text_list(items: &[&str]) -> ScalarValue {
    let values: Vec<ScalarValue> = items.iter().map(|s| utf8(*s)).collect();
    ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Utf8))
}

type Body = Arc<dyn Fn(&Call) -> Result<ScalarValue> + Send + Sync>;
type ReturnType = fn(&[DataType]) -> Result<DataType>;

/// A Postgres function evaluated row by row.
struct PgFunction {
    name: &'static str,
    arity: RangeInclusive<usize>,
    signature: Signature,
    return_type: ReturnType,
    body: Body,
    catalog_list: Arc<dyn CatalogProviderList>,
}

impl std::fmt::Debug for PgFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgFunction")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PartialEq for PgFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for PgFunction {}

impl std::hash::Hash for PgFunction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl PgFunction {
    fn call(
        &self,
        args: &[ScalarValue],
        options: &ConfigOptions,
        names: &OnceCell<CatalogNames>,
    ) -> Result<ScalarValue> {
        let call = Call {
            args,
            options,
            catalog_list: &self.catalog_list,
            names,
        };
        (self.body)(&call)
    }
}

impl ScalarUDFImpl for PgFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if !self.arity.contains(&arg_types.len()) {
            return plan_err!(
                "function {} takes {} to {} arguments, not {}",
                self.name,
                self.arity.start(),
                self.arity.end(),
                arg_types.len()
            );
        }
        Ok(arg_types.to_vec())
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        (self.return_type)(arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let return_type = args.return_field.data_type().clone();
        let typed = |value: ScalarValue| -> Result<ScalarValue> {
            if value.is_null() && value.data_type() != return_type {
                ScalarValue::try_from(&return_type)
            } else {
                Ok(value)
            }
        };
        let names = OnceCell::new();
        let scalars: Option<Vec<ScalarValue>> = args
            .args
            .iter()
            .map(|a| match a {
                ColumnarValue::Scalar(s) => Some(s.clone()),
                ColumnarValue::Array(_) => None,
            })
            .collect();
        if let Some(scalars) = scalars {
            let value = self.call(&scalars, &args.config_options, &names)?;
            return Ok(ColumnarValue::Scalar(typed(value)?));
        }
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let mut out = Vec::with_capacity(args.number_rows);
        for row in 0..args.number_rows {
            let values = arrays
                .iter()
                .map(|a| ScalarValue::try_from_array(a, row))
                .collect::<Result<Vec<_>>>()?;
            out.push(typed(self.call(&values, &args.config_options, &names)?)?);
        }
        let array = if out.is_empty() {
            new_empty_array(&return_type)
        } else {
            ScalarValue::iter_to_array(out)?
        };
        Ok(ColumnarValue::Array(array))
    }
}

/// Builds the functions, each holding `catalog_list` for name lookups.
struct Registry {
    catalog_list: Arc<dyn CatalogProviderList>,
    functions: Vec<ScalarUDF>,
}

impl Registry {
    fn add(
        &mut self,
        names: &[&'static str],
        arity: RangeInclusive<usize>,
        volatility: Volatility,
        return_type: ReturnType,
        body: impl Fn(&Call) -> Result<ScalarValue> + Send + Sync + 'static,
    ) {
        let body: Body = Arc::new(body);
        for name in names {
            let signature = if *arity.end() == 0 {
                Signature::nullary(volatility)
            } else {
                Signature::user_defined(volatility)
            };
            self.functions.push(ScalarUDF::new_from_impl(PgFunction {
                name,
                arity: arity.clone(),
                signature,
                return_type,
                body: Arc::clone(&body),
                catalog_list: Arc::clone(&self.catalog_list),
            }));
        }
    }

    /// A stable function (constant within a statement, so folded when its arguments are).
    fn stable(
        &mut self,
        names: &[&'static str],
        arity: RangeInclusive<usize>,
        return_type: ReturnType,
        body: impl Fn(&Call) -> Result<ScalarValue> + Send + Sync + 'static,
    ) {
        self.add(names, arity, Volatility::Stable, return_type, body);
    }
}

fn ret_text(_: &[DataType]) -> Result<DataType> {
    Ok(DataType::Utf8)
}

fn ret_bool(_: &[DataType]) -> Result<DataType> {
    Ok(DataType::Boolean)
}

fn ret_oid(_: &[DataType]) -> Result<DataType> {
    Ok(DataType::Int32)
}

fn ret_int4(_: &[DataType]) -> Result<DataType> {
    Ok(DataType::Int32)
}

fn ret_int8(_: &[DataType]) -> Result<DataType> {
    Ok(DataType::Int64)
}

fn ret_text_list(_: &[DataType]) -> Result<DataType> {
    Ok(DataType::new_list(DataType::Utf8, true))
}

fn ret_int8_list(_: &[DataType]) -> Result<DataType> {
    Ok(DataType::new_list(DataType::Int64, true))
}

fn ret_timestamptz(_: &[DataType]) -> Result<DataType> {
    Ok(DataType::Timestamp(
        TimeUnit::Microsecond,
        Some("UTC".into()),
    ))
}

/// `_pg_expandarray(anyarray)`: a list of `(x, n)` records, element and 1-based index.
fn ret_expandarray(args: &[DataType]) -> Result<DataType> {
    let element = match args.first() {
        Some(DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _)) => {
            f.data_type().clone()
        }
        _ => DataType::Null,
    };
    Ok(DataType::new_list(
        DataType::Struct(expandarray_fields(element)),
        true,
    ))
}

fn expandarray_fields(element: DataType) -> Fields {
    Fields::from(vec![
        Field::new("x", element, true),
        Field::new("n", DataType::Int32, true),
    ])
}

/// `NULL`, for functions describing objects Flotilla does not have (indexes,
/// constraints, triggers, defaults, comments).
fn null(_: &Call) -> Result<ScalarValue> {
    Ok(ScalarValue::Null)
}

fn always(value: bool) -> impl Fn(&Call) -> Result<ScalarValue> + Send + Sync + 'static {
    move |_| Ok(ScalarValue::Boolean(Some(value)))
}

/// The value of setting `name` (case-insensitive): a DataFusion option, or one of the
/// Postgres settings Flotilla reports.
pub(crate) fn setting_value(options: &ConfigOptions, name: &str) -> Option<String> {
    if let Some(value) = options
        .extensions
        .get::<super::SessionSettings>()
        .and_then(|settings| settings.get(name))
    {
        return Some(value.to_string());
    }
    if let Some(entry) = options
        .entries()
        .into_iter()
        .find(|e| e.key.eq_ignore_ascii_case(name))
    {
        return Some(entry.value.unwrap_or_default());
    }
    postgres_settings()
        .iter()
        .find(|s| s.name.eq_ignore_ascii_case(name))
        .map(|s| s.value.to_string())
}

/// Resolves a `regclass`-like argument to an oid: integers are oids already, text is a
/// name to look up (or a quoted integer).
fn relation_oid(call: &Call, i: usize) -> Option<i32> {
    if call.is_text(i) {
        let text = call.text(i)?;
        if let Ok(oid) = text.trim().parse::<i32>() {
            return Some(oid);
        }
        return call.names().resolve_relation(&text).map(|r| r.oid);
    }
    call.int(i).and_then(|v| i32::try_from(v).ok())
}

fn type_oid(call: &Call, i: usize) -> Option<i32> {
    if call.is_text(i) {
        let text = call.text(i)?;
        if let Ok(oid) = text.trim().parse::<i32>() {
            return Some(oid);
        }
        return types::by_name(&text).map(|t| t.oid);
    }
    call.int(i).and_then(|v| i32::try_from(v).ok())
}

fn namespace_oid(call: &Call, i: usize) -> Option<i32> {
    if call.is_text(i) {
        let text = call.text(i)?;
        if let Ok(oid) = text.trim().parse::<i32>() {
            return Some(oid);
        }
        return call.names().namespace_by_name(&text);
    }
    call.int(i).and_then(|v| i32::try_from(v).ok())
}

fn proc_oid(call: &Call, i: usize) -> Option<i32> {
    if call.is_text(i) {
        let text = call.text(i)?;
        if let Ok(oid) = text.trim().parse::<i32>() {
            return Some(oid);
        }
        return tables::proc_oid(&text.to_ascii_lowercase());
    }
    call.int(i).and_then(|v| i32::try_from(v).ok())
}

fn role_oid(call: &Call, i: usize) -> Option<i32> {
    if call.is_text(i) {
        let text = call.text(i)?;
        if let Ok(oid) = text.trim().parse::<i32>() {
            return Some(oid);
        }
        return (super::parse_identifier(&text)? == [USER_NAME]).then_some(USER_OID);
    }
    call.int(i).and_then(|v| i32::try_from(v).ok())
}

fn oid_value(oid: Option<i32>) -> ScalarValue {
    ScalarValue::Int32(oid)
}

/// `json_build_object(k1, v1, ...)` as Postgres prints it.
fn json_object(args: &[ScalarValue]) -> Result<ScalarValue> {
    if !args.len().is_multiple_of(2) {
        return exec_err!("json_build_object needs an even number of arguments");
    }
    let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let mut out = String::from("{");
    for (i, pair) in args.chunks(2).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let Some(key) = text_value(&pair[0]) else {
            return exec_err!("json_build_object: a key is null");
        };
        out.push_str(&quote(&key));
        out.push_str(" : ");
        let value = &pair[1];
        let json = match value {
            v if v.is_null() => "null".to_string(),
            ScalarValue::Boolean(Some(b)) => b.to_string(),
            v if v.data_type().is_numeric() => v.to_string(),
            v => quote(&text_value(v).unwrap_or_default()),
        };
        out.push_str(&json);
    }
    out.push('}');
    Ok(utf8(out))
}

/// Rewrites a LIKE pattern escaped with `escape` to one escaped with backslashes.
fn backslash_escapes(pattern: &str, escape: Option<char>) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            out.push('\\');
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

/// Human-readable byte counts, as `pg_size_pretty`.
fn size_pretty(bytes: i64) -> String {
    let mut size = bytes;
    for unit in ["bytes", "kB", "MB", "GB", "TB"] {
        if size.abs() < 10 * 1024 || unit == "TB" {
            return format!("{size} {unit}");
        }
        size = (size + if size < 0 { -512 } else { 512 }) / 1024;
    }
    unreachable!("the loop returns at the last unit")
}

/// All scalar functions, each holding `catalog_list` for name lookups.
pub(crate) fn scalar_functions(catalog_list: &Arc<dyn CatalogProviderList>) -> Vec<ScalarUDF> {
    LazyLock::force(&START_TIME);
    let mut r = Registry {
        catalog_list: Arc::clone(catalog_list),
        functions: Vec::new(),
    };

    // Session information.
    r.stable(&["version"], 0..=0, ret_text, |_| {
        Ok(utf8(super::version_string()))
    });
    r.stable(&["current_schema"], 0..=0, ret_text, |_| {
        Ok(utf8(DEFAULT_SCHEMA))
    });
    r.stable(&["current_schemas"], 1..=1, ret_text_list, |call| {
        Ok(match bool_value(call.arg(0)) {
            Some(true) => text_list(&[super::PG_CATALOG, DEFAULT_SCHEMA]),
            Some(false) => text_list(&[DEFAULT_SCHEMA]),
            None => ScalarValue::Null,
        })
    });
    r.stable(
        &["current_database", "current_catalog"],
        0..=0,
        ret_text,
        |_| Ok(utf8(DEFAULT_CATALOG)),
    );
    r.stable(
        &["current_user", "session_user", "user", "current_role"],
        0..=0,
        ret_text,
        |_| Ok(utf8(USER_NAME)),
    );
    r.stable(&["current_setting"], 1..=2, ret_text, |call| {
        let Some(name) = call.text(0) else {
            return Ok(ScalarValue::Null);
        };
        match setting_value(call.options, &name) {
            Some(value) => Ok(utf8(value)),
            None if bool_value(call.arg(1)) == Some(true) => Ok(ScalarValue::Null),
            None => exec_err!("unrecognized configuration parameter \"{name}\""),
        }
    });
    // Settings changed this way do not persist: the coordinator handles SET.
    r.add(
        &["set_config"],
        3..=3,
        Volatility::Volatile,
        ret_text,
        |call| Ok(call.text(1).map_or(ScalarValue::Null, utf8)),
    );
    r.stable(&["pg_backend_pid"], 0..=0, ret_int4, |_| {
        Ok(ScalarValue::Int32(Some(std::process::id() as i32)))
    });
    static XID: AtomicI64 = AtomicI64::new(1000);
    r.add(
        &["txid_current", "pg_current_xact_id"],
        0..=0,
        Volatility::Volatile,
        ret_int8,
        |_| {
            Ok(ScalarValue::Int64(Some(
                XID.fetch_add(1, Ordering::Relaxed),
            )))
        },
    );
    r.stable(&["pg_is_in_recovery"], 0..=0, ret_bool, always(false));
    r.stable(
        &["inet_server_addr", "inet_client_addr"],
        0..=0,
        ret_text,
        null,
    );
    r.stable(
        &["inet_server_port", "inet_client_port"],
        0..=0,
        ret_int4,
        null,
    );
    r.stable(
        &["pg_postmaster_start_time", "pg_conf_load_time"],
        0..=0,
        ret_timestamptz,
        |_| {
            let micros = START_TIME
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0);
            Ok(ScalarValue::TimestampMicrosecond(
                Some(micros),
                Some("UTC".into()),
            ))
        },
    );
    r.stable(
        &["getdatabaseencoding", "pg_client_encoding"],
        0..=0,
        ret_text,
        |_| Ok(utf8("UTF8")),
    );
    r.stable(&["pg_encoding_to_char"], 1..=1, ret_text, |call| {
        Ok(match call.int(0) {
            Some(6) => utf8("UTF8"),
            Some(0) => utf8("SQL_ASCII"),
            Some(_) => utf8(""),
            None => ScalarValue::Null,
        })
    });
    r.stable(&["pg_my_temp_schema"], 0..=0, ret_oid, |_| {
        Ok(oid_value(Some(0)))
    });
    r.stable(&["pg_is_other_temp_schema"], 1..=1, ret_bool, always(false));

    // Visibility and privileges: every object is visible to, and usable by, everyone.
    r.stable(&["pg_table_is_visible"], 1..=1, ret_bool, |call| {
        let Some(oid) = call.int(0) else {
            return Ok(ScalarValue::Null);
        };
        let names = call.names();
        let visible = names.relation_by_oid(oid as i32).is_some_and(|rel| {
            names
                .resolve_relation(&super::quote_identifier(&rel.name))
                .is_some_and(|found| found.oid == rel.oid)
        });
        Ok(ScalarValue::Boolean(Some(visible)))
    });
    r.stable(
        &[
            "pg_type_is_visible",
            "pg_function_is_visible",
            "pg_collation_is_visible",
            "pg_opclass_is_visible",
            "pg_operator_is_visible",
            "pg_conversion_is_visible",
            "pg_ts_config_is_visible",
        ],
        1..=1,
        ret_bool,
        |call| {
            Ok(ScalarValue::Boolean(
                (!call.arg(0).is_null()).then_some(true),
            ))
        },
    );
    r.stable(
        &[
            "has_table_privilege",
            "has_schema_privilege",
            "has_database_privilege",
            "has_any_column_privilege",
            "has_column_privilege",
            "has_function_privilege",
            "has_sequence_privilege",
            "has_tablespace_privilege",
            "has_type_privilege",
            "pg_has_role",
        ],
        2..=4,
        ret_bool,
        always(true),
    );
    r.stable(&["pg_get_userbyid"], 1..=1, ret_text, |call| {
        Ok(match call.int(0) {
            Some(oid) if oid == i64::from(USER_OID) => utf8(USER_NAME),
            Some(oid) => utf8(format!("unknown (OID={oid})")),
            None => ScalarValue::Null,
        })
    });

    // Types and names.
    r.stable(&["format_type"], 2..=2, ret_text, |call| {
        let Some(oid) = call.int(0) else {
            return Ok(ScalarValue::Null);
        };
        let typmod = call.int(1).map(|m| m as i32);
        Ok(utf8(
            types::format_type(oid as i32, typmod).unwrap_or_else(|| "???".to_string()),
        ))
    });
    r.stable(&["to_regclass"], 1..=1, ret_oid, |call| {
        Ok(oid_value(call.text(0).and_then(|t| {
            call.names().resolve_relation(&t).map(|r| r.oid)
        })))
    });
    r.stable(&["to_regtype"], 1..=1, ret_oid, |call| {
        Ok(oid_value(
            call.text(0).and_then(|t| types::by_name(&t).map(|t| t.oid)),
        ))
    });
    r.stable(&["to_regnamespace"], 1..=1, ret_oid, |call| {
        Ok(oid_value(
            call.text(0)
                .and_then(|t| call.names().namespace_by_name(&t)),
        ))
    });
    r.stable(&["to_regproc", "to_regprocedure"], 1..=1, ret_oid, |call| {
        Ok(oid_value(
            call.text(0)
                .and_then(|t| tables::proc_oid(&t.to_ascii_lowercase())),
        ))
    });
    r.stable(&["to_regrole"], 1..=1, ret_oid, |call| {
        Ok(oid_value(role_oid(call, 0).filter(|oid| *oid == USER_OID)))
    });
    // Casts to the reg* types, as the rewrite emits them: `x::regclass` compared or cast
    // to oid becomes `regclass_oid(x)`, printed or cast to text `regclass_text(x)`.
    r.stable(&["regclass_oid"], 1..=1, ret_oid, |call| {
        Ok(oid_value(relation_oid(call, 0)))
    });
    r.stable(&["regclass_text"], 1..=1, ret_text, |call| {
        Ok(match relation_oid(call, 0) {
            Some(oid) => utf8(call.names().relation_text(oid)),
            None => call.text(0).map_or(ScalarValue::Null, utf8),
        })
    });
    r.stable(&["regtype_oid"], 1..=1, ret_oid, |call| {
        Ok(oid_value(type_oid(call, 0)))
    });
    r.stable(&["regtype_text"], 1..=1, ret_text, |call| {
        Ok(match type_oid(call, 0) {
            Some(oid) => utf8(types::format_type(oid, None).unwrap_or_else(|| oid.to_string())),
            None => call.text(0).map_or(ScalarValue::Null, utf8),
        })
    });
    r.stable(&["regnamespace_oid"], 1..=1, ret_oid, |call| {
        Ok(oid_value(namespace_oid(call, 0)))
    });
    r.stable(&["regnamespace_text"], 1..=1, ret_text, |call| {
        Ok(match namespace_oid(call, 0) {
            Some(oid) => utf8(
                call.names()
                    .namespace_name(oid)
                    .map_or_else(|| oid.to_string(), super::quote_identifier),
            ),
            None => call.text(0).map_or(ScalarValue::Null, utf8),
        })
    });
    r.stable(&["regproc_oid"], 1..=1, ret_oid, |call| {
        Ok(oid_value(proc_oid(call, 0)))
    });
    r.stable(&["regproc_text"], 1..=1, ret_text, |call| {
        Ok(match proc_oid(call, 0) {
            Some(oid) => utf8(
                tables::procs()
                    .iter()
                    .find(|p| p.oid == oid)
                    .map_or_else(|| oid.to_string(), |p| p.name.clone()),
            ),
            None => call.text(0).map_or(ScalarValue::Null, utf8),
        })
    });
    r.stable(&["regrole_oid"], 1..=1, ret_oid, |call| {
        Ok(oid_value(role_oid(call, 0)))
    });
    r.stable(&["regrole_text"], 1..=1, ret_text, |call| {
        Ok(match role_oid(call, 0) {
            Some(USER_OID) => utf8(USER_NAME),
            Some(oid) => utf8(oid.to_string()),
            None => call.text(0).map_or(ScalarValue::Null, utf8),
        })
    });
    r.stable(&["quote_ident"], 1..=1, ret_text, |call| {
        Ok(call
            .text(0)
            .map_or(ScalarValue::Null, |t| utf8(super::quote_identifier(&t))))
    });
    r.stable(&["parse_ident"], 1..=2, ret_text_list, |call| {
        let Some(text) = call.text(0) else {
            return Ok(ScalarValue::Null);
        };
        let Some(parts) = super::parse_identifier(&text) else {
            return exec_err!("string is not a valid identifier: \"{text}\"");
        };
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        Ok(text_list(&parts))
    });

    // Object definitions and comments: Flotilla stores expressions as SQL text, and has
    // no indexes, constraints, triggers, sequences or comments.
    r.stable(&["pg_get_expr"], 2..=3, ret_text, |call| {
        Ok(call.text(0).map_or(ScalarValue::Null, utf8))
    });
    r.stable(&["pg_get_indexdef"], 1..=3, ret_text, null);
    r.stable(&["pg_get_constraintdef"], 1..=2, ret_text, null);
    r.stable(&["pg_get_viewdef"], 1..=2, ret_text, null);
    r.stable(
        &["pg_get_triggerdef", "pg_get_ruledef"],
        1..=2,
        ret_text,
        null,
    );
    r.stable(
        &[
            "pg_get_partkeydef",
            "pg_get_statisticsobjdef_columns",
            "pg_get_functiondef",
            "pg_get_function_arguments",
            "pg_get_function_identity_arguments",
            "pg_get_function_result",
        ],
        1..=1,
        ret_text,
        null,
    );
    r.stable(&["pg_get_serial_sequence"], 2..=2, ret_text, null);
    r.stable(
        &["obj_description", "shobj_description"],
        1..=2,
        ret_text,
        null,
    );
    r.stable(&["col_description"], 2..=2, ret_text, null);
    r.stable(&["pg_tablespace_location"], 1..=1, ret_text, |_| {
        Ok(utf8(""))
    });

    // Sizes and statistics: Flotilla's tables live in object stores, not pages.
    r.stable(
        &[
            "pg_relation_size",
            "pg_total_relation_size",
            "pg_table_size",
            "pg_indexes_size",
        ],
        1..=2,
        ret_int8,
        |call| Ok(ScalarValue::Int64((!call.arg(0).is_null()).then_some(0))),
    );
    r.stable(&["pg_stat_get_numscans"], 1..=1, ret_int8, |call| {
        Ok(ScalarValue::Int64((!call.arg(0).is_null()).then_some(0)))
    });
    r.stable(&["pg_size_pretty"], 1..=1, ret_text, |call| {
        Ok(call
            .int(0)
            .map_or(ScalarValue::Null, |b| utf8(size_pretty(b))))
    });
    r.stable(
        &["pg_relation_is_publishable"],
        1..=1,
        ret_bool,
        always(false),
    );
    // A table that is no partition is its own only ancestor.
    r.stable(&["pg_partition_ancestors"], 1..=1, ret_oid, |call| {
        Ok(oid_value(relation_oid(call, 0)))
    });

    // Arrays.
    r.stable(&["array_upper"], 2..=2, ret_int8, |call| {
        let len = list_values(call.arg(0)).map(|v| v.len() as i64);
        Ok(ScalarValue::Int64(match (len, call.int(1)) {
            (Some(len), Some(1)) if len > 0 => Some(len),
            _ => None,
        }))
    });
    r.stable(&["array_lower"], 2..=2, ret_int8, |call| {
        let len = list_values(call.arg(0)).map(|v| v.len() as i64);
        Ok(ScalarValue::Int64(match (len, call.int(1)) {
            (Some(len), Some(1)) if len > 0 => Some(1),
            _ => None,
        }))
    });
    // The rewrite wraps these two in `unnest`, as they return sets in Postgres.
    r.stable(&["generate_subscripts"], 2..=3, ret_int8_list, |call| {
        let Some(values) = list_values(call.arg(0)) else {
            return Ok(ScalarValue::Null);
        };
        if call.int(1) != Some(1) {
            return Ok(ScalarValue::Null);
        }
        let mut subscripts: Vec<ScalarValue> = (1..=values.len() as i64)
            .map(|i| ScalarValue::Int64(Some(i)))
            .collect();
        if bool_value(call.arg(2)) == Some(true) {
            subscripts.reverse();
        }
        Ok(ScalarValue::List(ScalarValue::new_list_nullable(
            &subscripts,
            &DataType::Int64,
        )))
    });
    r.stable(&["_pg_expandarray"], 1..=1, ret_expandarray, |call| {
        let element = match call.arg(0).data_type() {
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
                f.data_type().clone()
            }
            _ => DataType::Null,
        };
        let fields = expandarray_fields(element.clone());
        let item = Arc::new(Field::new_list_field(
            DataType::Struct(fields.clone()),
            true,
        ));
        let Some(values) = list_values(call.arg(0)) else {
            return Ok(ScalarValue::List(Arc::new(ListArray::new_null(item, 1))));
        };
        let n = Int32Array::from_iter_values(1..=values.len() as i32);
        let len = values.len();
        let records = StructArray::try_new(fields, vec![values, Arc::new(n)], None)?;
        let list = ListArray::try_new(
            item,
            OffsetBuffer::from_lengths([len]),
            Arc::new(records),
            None,
        )?;
        Ok(ScalarValue::List(Arc::new(list)))
    });
    r.stable(&["json_build_object"], 0..=100, ret_text, |call| {
        json_object(call.args)
    });
    // `LIKE pattern ESCAPE 'c'` as `LIKE like_escape(pattern, 'c')`: the pattern with
    // backslash escapes, the only ones DataFusion supports.
    r.stable(&["like_escape"], 2..=2, ret_text, |call| {
        let (Some(pattern), Some(escape)) = (call.text(0), call.text(1)) else {
            return Ok(ScalarValue::Null);
        };
        Ok(utf8(backslash_escapes(&pattern, escape.chars().next())))
    });

    r.functions
}

/// `pg_get_keywords()`: Postgres' keywords and their categories.
#[derive(Debug)]
struct KeywordsFunction;

impl TableFunctionImpl for KeywordsFunction {
    fn call_with_args(
        &self,
        args: datafusion::catalog::TableFunctionArgs,
    ) -> Result<Arc<dyn TableProvider>> {
        if !args.exprs().is_empty() {
            return plan_err!("pg_get_keywords takes no arguments");
        }
        let batch = tables::keywords_batch()?;
        Ok(Arc::new(MemTable::try_new(
            batch.schema(),
            vec![vec![batch]],
        )?))
    }
}

/// The table functions, by name.
pub(crate) fn table_functions() -> HashMap<&'static str, Arc<dyn TableFunctionImpl>> {
    HashMap::from([(
        "pg_get_keywords",
        Arc::new(KeywordsFunction) as Arc<dyn TableFunctionImpl>,
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_escapes_become_backslashes() {
        assert_eq!(backslash_escapes("pg/_%", Some('/')), "pg\\_%");
        assert_eq!(backslash_escapes("a\\b//", Some('/')), "a\\\\b\\/");
        assert_eq!(backslash_escapes("a/", Some('/')), "a\\");
    }

    #[test]
    fn sizes_print_like_postgres() {
        assert_eq!(size_pretty(100), "100 bytes");
        assert_eq!(size_pretty(20 * 1024), "20 kB");
        assert_eq!(size_pretty(30 * 1024 * 1024), "30 MB");
    }

    #[test]
    fn json_objects_print_like_postgres() {
        let args = [
            utf8("a"),
            ScalarValue::Boolean(Some(true)),
            utf8("b"),
            ScalarValue::Int64(Some(3)),
            utf8("c"),
            utf8("x\"y"),
        ];
        assert_eq!(
            json_object(&args).unwrap(),
            utf8(r#"{"a" : true, "b" : 3, "c" : "x\"y"}"#)
        );
    }

    #[test]
    fn settings_resolve_case_insensitively() {
        let options = ConfigOptions::new();
        assert_eq!(
            setting_value(&options, "datestyle").as_deref(),
            Some("ISO, MDY")
        );
        assert_eq!(
            setting_value(&options, "max_index_keys").as_deref(),
            Some("32")
        );
        assert!(setting_value(&options, "datafusion.execution.batch_size").is_some());
        assert_eq!(setting_value(&options, "no_such_setting"), None);
    }
}
