//! Postgres' SQL keywords, for `pg_get_keywords()` and `quote_ident`.

use std::sync::LazyLock;

/// Reserved keywords (`R`): never usable as names without quotes.
#[rustfmt::skip]
const RESERVED: &[&str] = &[
    "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "both", "case",
    "cast", "check", "collate", "column", "constraint", "create", "current_catalog",
    "current_date", "current_role", "current_time", "current_timestamp", "current_user", "default",
    "deferrable", "desc", "distinct", "do", "else", "end", "except", "false", "fetch", "for",
    "foreign", "from", "grant", "group", "having", "in", "initially", "intersect", "into",
    "lateral", "leading", "limit", "localtime", "localtimestamp", "not", "null", "offset", "on",
    "only", "or", "order", "placing", "primary", "references", "returning", "select",
    "session_user", "some", "symmetric", "system_user", "table", "then", "to", "trailing", "true",
    "union", "unique", "user", "using", "variadic", "when", "where", "window", "with",
];

/// Keywords that can be function or type names (`T`).
#[rustfmt::skip]
const TYPE_FUNC_NAME: &[&str] = &[
    "authorization", "binary", "collation", "concurrently", "cross", "current_schema", "freeze",
    "full", "ilike", "inner", "is", "isnull", "join", "left", "like", "natural", "notnull",
    "outer", "overlaps", "right", "similar", "tablesample", "verbose",
];

/// Keywords that can be column names (`C`).
#[rustfmt::skip]
const COL_NAME: &[&str] = &[
    "between", "bigint", "bit", "boolean", "char", "character", "coalesce", "dec", "decimal",
    "exists", "extract", "float", "greatest", "grouping", "inout", "int", "integer", "interval",
    "json", "json_array", "json_arrayagg", "json_object", "json_objectagg", "least", "national",
    "nchar", "none", "normalize", "nullif", "numeric", "out", "overlay", "position", "precision",
    "real", "row", "setof", "smallint", "substring", "time", "timestamp", "treat", "trim",
    "values", "varchar", "xmlattributes", "xmlconcat", "xmlelement", "xmlexists", "xmlforest",
    "xmlnamespaces", "xmlparse", "xmlpi", "xmlroot", "xmlserialize", "xmltable",
];

/// Unreserved keywords (`U`): usable as names anywhere.
#[rustfmt::skip]
const UNRESERVED: &[&str] = &[
    "abort", "absolute", "access", "action", "add", "admin", "after", "aggregate", "also", "alter",
    "always", "assertion", "assignment", "at", "attach", "attribute", "backward", "before",
    "begin", "by", "cache", "call", "called", "cascade", "cascaded", "catalog", "chain",
    "characteristics", "checkpoint", "class", "close", "cluster", "columns", "comment", "comments",
    "commit", "committed", "configuration", "conflict", "connection", "constraints", "content",
    "continue", "conversion", "copy", "cost", "csv", "cube", "current", "cursor", "cycle", "data",
    "database", "day", "deallocate", "declare", "defaults", "deferred", "definer", "delete",
    "delimiter", "delimiters", "depends", "detach", "dictionary", "disable", "discard", "document",
    "domain", "double", "drop", "each", "enable", "encoding", "encrypted", "enum", "escape",
    "event", "exclude", "excluding", "exclusive", "execute", "explain", "expression", "extension",
    "external", "family", "filter", "first", "following", "force", "forward", "function",
    "functions", "generated", "global", "granted", "groups", "handler", "header", "hold", "hour",
    "identity", "if", "immediate", "immutable", "implicit", "import", "include", "including",
    "increment", "index", "indexes", "inherit", "inherits", "inline", "input", "insensitive",
    "insert", "instead", "invoker", "isolation", "key", "label", "language", "large", "last",
    "leakproof", "level", "listen", "load", "local", "location", "lock", "locked", "logged",
    "mapping", "match", "matched", "materialized", "maxvalue", "merge", "method", "minute",
    "minvalue", "mode", "month", "move", "name", "names", "new", "next", "nfc", "nfd", "nfkc",
    "nfkd", "no", "normalized", "nothing", "notify", "nowait", "nulls", "object", "of", "off",
    "oids", "old", "operator", "option", "options", "ordinality", "others", "over", "overriding",
    "owned", "owner", "parallel", "parameter", "parser", "partial", "partition", "passing",
    "password", "plans", "policy", "preceding", "prepare", "prepared", "preserve", "prior",
    "privileges", "procedural", "procedure", "procedures", "program", "publication", "quote",
    "range", "read", "reassign", "recheck", "recursive", "ref", "referencing", "refresh",
    "reindex", "relative", "release", "rename", "repeatable", "replace", "replica", "reset",
    "restart", "restrict", "return", "returns", "revoke", "role", "rollback", "rollup", "routine",
    "routines", "rows", "rule", "savepoint", "schema", "schemas", "scroll", "search", "second",
    "security", "sequence", "sequences", "serializable", "server", "session", "set", "sets",
    "share", "show", "simple", "skip", "snapshot", "sql", "stable", "standalone", "start",
    "statement", "statistics", "stdin", "stdout", "storage", "stored", "strict", "strip",
    "subscription", "support", "sysid", "system", "tables", "tablespace", "temp", "template",
    "temporary", "text", "ties", "transaction", "transform", "trigger", "truncate", "trusted",
    "type", "types", "uescape", "unbounded", "uncommitted", "unencrypted", "unknown", "unlisten",
    "unlogged", "until", "update", "vacuum", "valid", "validate", "validator", "value", "varying",
    "version", "view", "views", "volatile", "whitespace", "within", "without", "work", "wrapper",
    "write", "xml", "year", "yes", "zone",
];

/// Every keyword with its category code (`U`, `C`, `T`, `R`), sorted by word.
pub(crate) fn keywords() -> &'static [(&'static str, char)] {
    static ALL: LazyLock<Vec<(&'static str, char)>> = LazyLock::new(|| {
        let mut all: Vec<(&'static str, char)> = RESERVED
            .iter()
            .map(|w| (*w, 'R'))
            .chain(TYPE_FUNC_NAME.iter().map(|w| (*w, 'T')))
            .chain(COL_NAME.iter().map(|w| (*w, 'C')))
            .chain(UNRESERVED.iter().map(|w| (*w, 'U')))
            .collect();
        all.sort();
        all.dedup_by_key(|(w, _)| *w);
        all
    });
    &ALL
}

/// Whether `quote_ident` must quote `word`: it is a keyword that is not unreserved.
pub(crate) fn needs_quoting(word: &str) -> bool {
    keywords()
        .binary_search_by_key(&word, |(w, _)| w)
        .is_ok_and(|i| keywords()[i].1 != 'U')
}

/// `pg_get_keywords().catdesc` for a category code.
pub(crate) fn category_description(code: char) -> &'static str {
    match code {
        'R' => "reserved",
        'T' => "reserved (can be function or type name)",
        'C' => "unreserved (cannot be function or type name)",
        _ => "unreserved",
    }
}
