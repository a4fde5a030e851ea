//! The Postgres types Flotilla reports, and how Arrow types map onto them.
//!
//! This table is the source of truth for `pg_type`, for `atttypid`/`attlen`/`atttypmod` in
//! `pg_attribute`, for `format_type` and for `::regtype` lookups. [`arrow_to_pg`] mirrors
//! the wire mapping of the coordinator (`coordinator/src/pg/encode.rs`, `pg_type`), so that
//! what `pg_attribute` says about a column is what a client sees in a RowDescription.

use std::sync::LazyLock;

use arrow::datatypes::DataType;

/// Well-known type oids.
pub mod oid {
    pub const BOOL: i32 = 16;
    pub const BYTEA: i32 = 17;
    pub const CHAR: i32 = 18;
    pub const NAME: i32 = 19;
    pub const INT8: i32 = 20;
    pub const INT2: i32 = 21;
    pub const INT4: i32 = 23;
    pub const TEXT: i32 = 25;
    pub const OID: i32 = 26;
    pub const FLOAT4: i32 = 700;
    pub const FLOAT8: i32 = 701;
    pub const BPCHAR: i32 = 1042;
    pub const VARCHAR: i32 = 1043;
    pub const DATE: i32 = 1082;
    pub const TIME: i32 = 1083;
    pub const TIMESTAMP: i32 = 1114;
    pub const TIMESTAMPTZ: i32 = 1184;
    pub const NUMERIC: i32 = 1700;
    pub const CSTRING: i32 = 2275;
}

/// Collation oids of `pg_collation`'s rows.
pub const DEFAULT_COLLATION: i32 = 100;
pub const C_COLLATION: i32 = 950;

/// One row of `pg_type`, in the shape Postgres 16 has it.
#[derive(Debug, Clone)]
pub struct PgType {
    pub oid: i32,
    pub typname: String,
    /// The name `format_type` prints (`bigint` for `int8`).
    pub sql_name: String,
    pub typlen: i16,
    pub typbyval: bool,
    /// `b` base, `p` pseudo-type.
    pub typtype: char,
    pub typcategory: char,
    pub typispreferred: bool,
    pub typelem: i32,
    pub typarray: i32,
    /// Names of the input, output, receive and send functions (rows of `pg_proc`).
    pub io: [String; 4],
    pub typalign: char,
    pub typstorage: char,
    pub typcollation: i32,
}

/// (oid, typname, sql name, typlen, byval, typtype, category, preferred, array oid,
/// io prefix, align, storage, collation). Io functions are named `{prefix}in`,
/// `{prefix}out`, `{prefix}recv` and `{prefix}send`, as in Postgres.
type BaseRow = (
    i32,
    &'static str,
    &'static str,
    i16,
    bool,
    char,
    char,
    bool,
    i32,
    &'static str,
    char,
    char,
    i32,
);

#[rustfmt::skip]
const BASE_TYPES: &[BaseRow] = &[
    (16, "bool", "boolean", 1, true, 'b', 'B', true, 1000, "bool", 'c', 'p', 0),
    (17, "bytea", "bytea", -1, false, 'b', 'U', false, 1001, "bytea", 'i', 'x', 0),
    (18, "char", "\"char\"", 1, true, 'b', 'Z', false, 1002, "char", 'c', 'p', 0),
    (19, "name", "name", 64, false, 'b', 'S', false, 1003, "name", 'c', 'p', C_COLLATION),
    (20, "int8", "bigint", 8, true, 'b', 'N', false, 1016, "int8", 'd', 'p', 0),
    (21, "int2", "smallint", 2, true, 'b', 'N', false, 1005, "int2", 's', 'p', 0),
    (22, "int2vector", "int2vector", -1, false, 'b', 'A', false, 1006, "int2vector", 'i', 'p', 0),
    (23, "int4", "integer", 4, true, 'b', 'N', false, 1007, "int4", 'i', 'p', 0),
    (24, "regproc", "regproc", 4, true, 'b', 'N', false, 1008, "regproc", 'i', 'p', 0),
    (25, "text", "text", -1, false, 'b', 'S', true, 1009, "text", 'i', 'x', DEFAULT_COLLATION),
    (26, "oid", "oid", 4, true, 'b', 'N', true, 1028, "oid", 'i', 'p', 0),
    (30, "oidvector", "oidvector", -1, false, 'b', 'A', false, 1013, "oidvector", 'i', 'p', 0),
    (114, "json", "json", -1, false, 'b', 'U', false, 199, "json_", 'i', 'x', 0),
    (194, "pg_node_tree", "pg_node_tree", -1, false, 'b', 'Z', false, 0, "pg_node_tree_", 'i', 'x', DEFAULT_COLLATION),
    (700, "float4", "real", 4, true, 'b', 'N', false, 1021, "float4", 'i', 'p', 0),
    (701, "float8", "double precision", 8, true, 'b', 'N', true, 1022, "float8", 'd', 'p', 0),
    (705, "unknown", "unknown", -2, false, 'p', 'X', false, 0, "unknown", 'c', 'p', 0),
    (869, "inet", "inet", -1, false, 'b', 'I', true, 1041, "inet_", 'i', 'm', 0),
    (1042, "bpchar", "character", -1, false, 'b', 'S', false, 1014, "bpchar", 'i', 'x', DEFAULT_COLLATION),
    (1043, "varchar", "character varying", -1, false, 'b', 'S', false, 1015, "varchar", 'i', 'x', DEFAULT_COLLATION),
    (1082, "date", "date", 4, true, 'b', 'D', false, 1182, "date_", 'i', 'p', 0),
    (1083, "time", "time without time zone", 8, true, 'b', 'D', false, 1183, "time_", 'd', 'p', 0),
    (1114, "timestamp", "timestamp without time zone", 8, true, 'b', 'D', false, 1115, "timestamp_", 'd', 'p', 0),
    (1184, "timestamptz", "timestamp with time zone", 8, true, 'b', 'D', true, 1185, "timestamptz_", 'd', 'p', 0),
    (1186, "interval", "interval", 16, false, 'b', 'T', true, 1187, "interval_", 'd', 'p', 0),
    (1266, "timetz", "time with time zone", 12, false, 'b', 'D', false, 1270, "timetz_", 'd', 'p', 0),
    (1700, "numeric", "numeric", -1, false, 'b', 'N', false, 1231, "numeric_", 'i', 'm', 0),
    (2205, "regclass", "regclass", 4, true, 'b', 'N', false, 2210, "regclass", 'i', 'p', 0),
    (2206, "regtype", "regtype", 4, true, 'b', 'N', false, 2211, "regtype", 'i', 'p', 0),
    (2249, "record", "record", -1, false, 'p', 'P', false, 2287, "record_", 'd', 'x', 0),
    (2275, "cstring", "cstring", -2, false, 'p', 'P', false, 1263, "cstring_", 'c', 'p', 0),
    (2276, "any", "\"any\"", 4, true, 'p', 'P', false, 0, "any_", 'i', 'p', 0),
    (2277, "anyarray", "anyarray", -1, false, 'p', 'P', false, 0, "anyarray_", 'd', 'x', 0),
    (2278, "void", "void", 4, true, 'p', 'P', false, 0, "void_", 'i', 'p', 0),
    (2279, "trigger", "trigger", 4, true, 'p', 'P', false, 0, "trigger_", 'i', 'p', 0),
    (2281, "internal", "internal", 8, true, 'p', 'P', false, 0, "internal_", 'd', 'p', 0),
    (2283, "anyelement", "anyelement", 4, true, 'p', 'P', false, 0, "anyelement_", 'i', 'p', 0),
    (2950, "uuid", "uuid", 16, false, 'b', 'U', false, 2951, "uuid_", 'c', 'p', 0),
    (3802, "jsonb", "jsonb", -1, false, 'b', 'U', false, 3807, "jsonb_", 'i', 'x', 0),
    (4089, "regnamespace", "regnamespace", 4, true, 'b', 'N', false, 4090, "regnamespace", 'i', 'p', 0),
    (4096, "regrole", "regrole", 4, true, 'b', 'N', false, 4097, "regrole", 'i', 'p', 0),
];

/// Element oids of the two vector types, which Postgres gives a `typelem` without being
/// arrays in the `array_in` sense.
fn vector_elem(oid: i32) -> i32 {
    match oid {
        22 => oid::INT2,
        30 => oid::OID,
        _ => 0,
    }
}

fn io_names(prefix: &str) -> [String; 4] {
    ["in", "out", "recv", "send"].map(|suffix| format!("{prefix}{suffix}"))
}

/// Every row of `pg_type`: the base and pseudo types, then their array types, by oid.
pub fn all_types() -> &'static [PgType] {
    static TYPES: LazyLock<Vec<PgType>> = LazyLock::new(|| {
        let mut types = Vec::new();
        for &(oid, name, sql, len, byval, typtype, cat, pref, array, io, align, storage, coll) in
            BASE_TYPES
        {
            types.push(PgType {
                oid,
                typname: name.to_string(),
                sql_name: sql.to_string(),
                typlen: len,
                typbyval: byval,
                typtype,
                typcategory: cat,
                typispreferred: pref,
                typelem: vector_elem(oid),
                typarray: array,
                io: io_names(io),
                typalign: align,
                typstorage: storage,
                typcollation: coll,
            });
            if array != 0 {
                types.push(PgType {
                    oid: array,
                    typname: format!("_{name}"),
                    sql_name: format!("{sql}[]"),
                    typlen: -1,
                    typbyval: false,
                    typtype: 'b',
                    typcategory: 'A',
                    typispreferred: false,
                    typelem: oid,
                    typarray: 0,
                    io: io_names("array_"),
                    typalign: if align == 'd' { 'd' } else { 'i' },
                    typstorage: 'x',
                    typcollation: coll,
                });
            }
        }
        types.sort_by_key(|t| t.oid);
        types
    });
    &TYPES
}

/// The type with oid `oid`, if Flotilla reports it.
pub fn by_oid(oid: i32) -> Option<&'static PgType> {
    let types = all_types();
    types
        .binary_search_by_key(&oid, |t| t.oid)
        .ok()
        .map(|i| &types[i])
}

/// Resolves a type name as `::regtype` and `to_regtype` do: `int4`, `integer`,
/// `pg_catalog.int4`, `character varying`, `text[]`, `"char"`. Case-insensitive except
/// for the quoted `"char"`.
pub fn by_name(name: &str) -> Option<&'static PgType> {
    let name = name.trim();
    if let Some(element) = name.strip_suffix("[]") {
        let element = by_name(element)?;
        return by_oid(element.typarray).filter(|_| element.typarray != 0);
    }
    let name = name
        .strip_prefix("pg_catalog.")
        .or_else(|| name.strip_prefix("\"pg_catalog\"."))
        .unwrap_or(name);
    if name == "\"char\"" {
        return by_oid(oid::CHAR);
    }
    let lower = name.trim_matches('"').to_ascii_lowercase();
    // Type modifiers do not change the type: `numeric(15,2)`, `varchar(10)`.
    let base = match lower.find('(') {
        Some(i) => lower[..i].trim_end().to_string(),
        None => lower,
    };
    let alias = match base.as_str() {
        "integer" | "int" => "int4",
        "smallint" => "int2",
        "bigint" => "int8",
        "boolean" => "bool",
        "real" => "float4",
        "double precision" | "float" => "float8",
        "decimal" => "numeric",
        "character varying" => "varchar",
        "character" | "char" => "bpchar",
        "timestamp without time zone" => "timestamp",
        "timestamp with time zone" => "timestamptz",
        "time without time zone" => "time",
        "time with time zone" => "timetz",
        other => other,
    };
    all_types().iter().find(|t| t.typname == alias)
}

/// How a column of some Arrow type is described to Postgres clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnType {
    pub oid: i32,
    pub typlen: i16,
    /// `atttypmod`: `-1`, or for `numeric(p, s)` `((p << 16) | s) + 4`.
    pub typmod: i32,
}

/// The Postgres type a column of `data_type` is sent as. Mirrors the coordinator's wire
/// mapping: types without a better match are sent as `text`.
pub fn arrow_to_pg(data_type: &DataType) -> ColumnType {
    let (oid, typmod) = match data_type {
        DataType::Boolean => (oid::BOOL, -1),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => (oid::INT2, -1),
        DataType::Int32 | DataType::UInt16 => (oid::INT4, -1),
        DataType::Int64 | DataType::UInt32 => (oid::INT8, -1),
        DataType::UInt64 => (oid::NUMERIC, -1),
        DataType::Float16 | DataType::Float32 => (oid::FLOAT4, -1),
        DataType::Float64 => (oid::FLOAT8, -1),
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => {
            let scale = i32::from(*s).max(0);
            (oid::NUMERIC, ((i32::from(*p) << 16) | scale) + 4)
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => (oid::TEXT, -1),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => (oid::BYTEA, -1),
        DataType::Date32 | DataType::Date64 => (oid::DATE, -1),
        DataType::Time32(_) | DataType::Time64(_) => (oid::TIME, -1),
        DataType::Timestamp(_, None) => (oid::TIMESTAMP, -1),
        DataType::Timestamp(_, Some(_)) => (oid::TIMESTAMPTZ, -1),
        DataType::Dictionary(_, value) => return arrow_to_pg(value),
        _ => (oid::TEXT, -1),
    };
    let typlen = by_oid(oid).map(|t| t.typlen).unwrap_or(-1);
    ColumnType {
        oid,
        typlen,
        typmod,
    }
}

/// `format_type(oid, typmod)`: the SQL name of a type, with its modifier. `None` for an
/// unknown oid is printed `???` by Postgres; callers decide.
pub fn format_type(oid: i32, typmod: Option<i32>) -> Option<String> {
    let t = by_oid(oid)?;
    let typmod = typmod.unwrap_or(-1);
    if t.typcategory == 'A' && t.typelem != 0 && t.typname.starts_with('_') {
        return Some(format!("{}[]", format_type(t.typelem, Some(typmod))?));
    }
    let name = match (t.oid, typmod) {
        (oid::NUMERIC, m) if m >= 4 => {
            let m = m - 4;
            format!("numeric({},{})", (m >> 16) & 0xffff, m & 0xffff)
        }
        (oid::VARCHAR, m) if m >= 4 => format!("character varying({})", m - 4),
        (oid::BPCHAR, m) if m >= 4 => format!("character({})", m - 4),
        (oid::BPCHAR, _) => "bpchar".to_string(),
        (oid::TIMESTAMP, m) if m >= 0 => format!("timestamp({m}) without time zone"),
        (oid::TIMESTAMPTZ, m) if m >= 0 => format!("timestamp({m}) with time zone"),
        (oid::TIME, m) if m >= 0 => format!("time({m}) without time zone"),
        _ => t.sql_name.clone(),
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_sorted_and_unique() {
        let types = all_types();
        assert!(types.windows(2).all(|w| w[0].oid < w[1].oid));
        assert_eq!(by_oid(1007).map(|t| t.typname.as_str()), Some("_int4"));
        assert_eq!(by_oid(23).map(|t| t.typarray), Some(1007));
    }

    #[test]
    fn names_resolve() {
        assert_eq!(by_name("integer").map(|t| t.oid), Some(23));
        assert_eq!(by_name("pg_catalog.int8").map(|t| t.oid), Some(20));
        assert_eq!(by_name("text[]").map(|t| t.oid), Some(1009));
        assert_eq!(by_name("\"char\"").map(|t| t.oid), Some(18));
        assert_eq!(by_name("character varying(10)").map(|t| t.oid), Some(1043));
        assert!(by_name("hstore").is_none());
    }

    #[test]
    fn format_types() {
        assert_eq!(format_type(20, Some(-1)).as_deref(), Some("bigint"));
        let numeric = arrow_to_pg(&DataType::Decimal128(15, 2));
        assert_eq!(
            format_type(numeric.oid, Some(numeric.typmod)).as_deref(),
            Some("numeric(15,2)")
        );
        assert_eq!(format_type(1009, None).as_deref(), Some("text[]"));
        assert_eq!(
            format_type(1043, Some(14)).as_deref(),
            Some("character varying(10)")
        );
        assert_eq!(format_type(42, None), None);
    }
}
