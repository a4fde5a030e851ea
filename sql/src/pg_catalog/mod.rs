//! Postgres catalog emulation: the `pg_catalog` schema, the Postgres functions clients
//! call, and a rewrite of the SQL they send, so that psql, pgjdbc, psqlODBC, SQLAlchemy,
//! DBeaver, Metabase, Grafana, pgAdmin, pgcli and Npgsql can browse Flotilla's tables.
//!
//! Three entry points, called by the coordinator:
//!
//! - [`register_schema`] once, on the shared catalog list: adds schema `pg_catalog` to
//!   catalog `flotilla`. Its relations compute their rows when scanned, from the catalog
//!   list as it is then, so tables created or dropped later show up at once.
//! - [`register_functions`] once per session: `version()`, `format_type`,
//!   `pg_table_is_visible`, `has_table_privilege` and the rest.
//! - [`rewrite`] on every parsed statement before planning: turns Postgres-only syntax
//!   (`::regclass`, `OPERATOR(pg_catalog.~)`, `= ANY('{r,v}')`, ...) into SQL DataFusion
//!   plans with the same meaning for the catalog's data.
//!
//! Object ids are stable across queries and restarts: namespaces and the core catalog
//! relations have fixed oids, other relations an oid derived from schema and name (see
//! [`CatalogNames`]). Oid columns are `Int32` (all oids are below 2^31), so that they join
//! with each other and compare with integers, quoted integers and parameters.

mod functions;
mod keywords;
mod rewrite;
mod settings;
mod tables;
pub mod types;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::information_schema::{
    InformationSchemaProvider, INFORMATION_SCHEMA_TABLES,
};
use datafusion::catalog::{CatalogProviderList, SchemaProvider, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

pub use rewrite::rewrite;
pub use settings::SessionSettings;

use crate::error::{Result, SqlError};
use crate::session::{DEFAULT_CATALOG, DEFAULT_SCHEMA, SYSTEM_SCHEMA};

/// Name of the emulated catalog schema.
pub const PG_CATALOG: &str = "pg_catalog";
/// Name of DataFusion's information schema, which Flotilla also lists in `pg_namespace`.
pub const INFORMATION_SCHEMA: &str = "information_schema";

/// The Postgres release Flotilla reports (`server_version`, `version()`).
pub const SERVER_VERSION: &str = "16.6";
/// `server_version_num` for [`SERVER_VERSION`].
pub const SERVER_VERSION_NUM: &str = "160006";

/// The role every session runs as: `current_user`, owner of every object.
pub const USER_NAME: &str = "flotilla";
pub(crate) const USER_OID: i32 = 10;
/// Oid of the one database, `flotilla`.
pub(crate) const DATABASE_OID: i32 = 5;

pub(crate) const PG_CATALOG_OID: i32 = 11;
pub(crate) const PUBLIC_OID: i32 = 2200;
pub(crate) const SYSTEM_SCHEMA_OID: i32 = 12000;
pub(crate) const INFORMATION_SCHEMA_OID: i32 = 13183;
/// First oid Postgres hands out to user objects; derived oids are at least this.
const FIRST_NORMAL_OID: i32 = 16384;

/// The `version()` text: starts like Postgres' own, which client version checks parse.
pub fn version_string() -> String {
    format!(
        "PostgreSQL {SERVER_VERSION} (Flotilla {}) on {}-pc-linux-gnu, compiled by rustc, 64-bit",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    )
}

/// Adds schema `pg_catalog` to `catalog_list`'s catalog `flotilla`.
///
/// The schema's relations hold only a weak reference to `catalog_list` and compute their
/// rows at scan time, so this is called once, on the catalog list every session shares.
/// Fails if catalog `flotilla` does not exist.
pub fn register_schema(catalog_list: &Arc<dyn CatalogProviderList>) -> Result<()> {
    let catalog =
        catalog_list
            .catalog(DEFAULT_CATALOG)
            .ok_or_else(|| SqlError::CatalogNotFound {
                name: DEFAULT_CATALOG.to_string(),
            })?;
    let schema = tables::PgCatalogSchema::new(Arc::downgrade(catalog_list));
    catalog.register_schema(PG_CATALOG, Arc::new(schema))?;
    Ok(())
}

/// Registers the Postgres functions on a session: scalar functions such as `version()`,
/// `format_type(oid, typmod)` and `pg_get_expr`, and the table function
/// `pg_get_keywords()`.
///
/// Call once per [`SessionContext`], after it is built over the shared catalog list: the
/// functions that resolve names (`to_regclass`, `pg_table_is_visible`) read the session's
/// catalog list. Functions are registered under their bare names; [`rewrite`] strips a
/// `pg_catalog.` qualifier from calls.
pub fn register_functions(ctx: &SessionContext) -> Result<()> {
    let catalog_list = Arc::clone(ctx.state().catalog_list());
    for udf in functions::scalar_functions(&catalog_list) {
        ctx.register_udf(udf);
    }
    for (name, udtf) in functions::table_functions() {
        ctx.register_udtf(name, udtf);
    }
    Ok(())
}

/// One relation's names and oids.
#[derive(Debug, Clone)]
pub(crate) struct RelationName {
    pub schema: String,
    pub name: String,
    pub oid: i32,
    pub namespace: i32,
}

/// Every schema and relation name of catalog `flotilla` with its oid. Reading it needs no
/// table provider, so functions can use it synchronously.
///
/// Oids: the four built-in schemas and the core `pg_catalog` relations have fixed oids;
/// other schemas and relations get an FNV-1a hash of their qualified name, mapped into
/// `16384..2^31`. Should two names hash alike, the one that sorts later takes the next
/// free oid, so an oid can change only when a colliding relation is created or dropped.
#[derive(Debug, Clone, Default)]
pub(crate) struct CatalogNames {
    pub namespaces: Vec<(String, i32)>,
    pub relations: Vec<RelationName>,
}

impl CatalogNames {
    pub fn read(catalog_list: &dyn CatalogProviderList) -> Self {
        let Some(catalog) = catalog_list.catalog(DEFAULT_CATALOG) else {
            return Self::default();
        };
        let mut schemas = catalog.schema_names();
        if !schemas.iter().any(|s| s == INFORMATION_SCHEMA) {
            schemas.push(INFORMATION_SCHEMA.to_string());
        }
        schemas.sort();
        let mut used: HashSet<i32> = HashSet::new();
        let namespaces: Vec<(String, i32)> = schemas
            .iter()
            .map(|s| {
                let oid = namespace_oid(s);
                used.insert(oid);
                (s.clone(), oid)
            })
            .collect();

        let mut pending = Vec::new();
        for (schema, namespace) in &namespaces {
            let mut names: Vec<String> = if schema == INFORMATION_SCHEMA {
                INFORMATION_SCHEMA_TABLES
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            } else {
                match catalog.schema(schema) {
                    Some(provider) => provider.table_names(),
                    None => continue,
                }
            };
            names.sort();
            for name in names {
                pending.push(RelationName {
                    schema: schema.clone(),
                    name,
                    oid: 0,
                    namespace: *namespace,
                });
            }
        }
        // Fixed oids first, so that a hash never takes one.
        let mut relations = Vec::with_capacity(pending.len());
        let mut hashed = Vec::new();
        for mut rel in pending {
            match (rel.schema == PG_CATALOG)
                .then(|| tables::fixed_oid(&rel.name))
                .flatten()
            {
                Some(oid) => {
                    used.insert(oid);
                    rel.oid = oid;
                    relations.push(rel);
                }
                None => hashed.push(rel),
            }
        }
        for mut rel in hashed {
            let mut oid = hash_oid(&rel.schema, &rel.name);
            while !used.insert(oid) {
                oid = if oid == i32::MAX {
                    FIRST_NORMAL_OID
                } else {
                    oid + 1
                };
            }
            rel.oid = oid;
            relations.push(rel);
        }
        relations.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
        Self {
            namespaces,
            relations,
        }
    }

    pub fn relation_by_oid(&self, oid: i32) -> Option<&RelationName> {
        self.relations.iter().find(|r| r.oid == oid)
    }

    /// Resolves a relation name as `::regclass` does: `nation`, `public.nation`,
    /// `"Nation"`. Unqualified names are looked up in `pg_catalog`, then `public`.
    pub fn resolve_relation(&self, text: &str) -> Option<&RelationName> {
        let parts = parse_identifier(text)?;
        let find = |schema: &str, name: &str| {
            self.relations
                .iter()
                .find(|r| r.schema == schema && r.name == name)
        };
        match parts.as_slice() {
            [name] => SEARCH_PATH.iter().find_map(|schema| find(schema, name)),
            [schema, name] => find(schema, name),
            [catalog, schema, name] if catalog == DEFAULT_CATALOG => find(schema, name),
            _ => None,
        }
    }

    /// The text form of a `regclass`: the bare name where the search path finds this
    /// relation by it, else `schema.name`. Unknown oids print as numbers, as in Postgres.
    pub fn relation_text(&self, oid: i32) -> String {
        let Some(rel) = self.relation_by_oid(oid) else {
            return oid.to_string();
        };
        let visible = self
            .resolve_relation(&quote_identifier(&rel.name))
            .is_some_and(|found| found.oid == oid);
        if visible {
            quote_identifier(&rel.name)
        } else {
            format!(
                "{}.{}",
                quote_identifier(&rel.schema),
                quote_identifier(&rel.name)
            )
        }
    }

    pub fn namespace_by_name(&self, text: &str) -> Option<i32> {
        let parts = parse_identifier(text)?;
        let [name] = parts.as_slice() else {
            return None;
        };
        self.namespaces
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, oid)| *oid)
    }

    pub fn namespace_name(&self, oid: i32) -> Option<&str> {
        self.namespaces
            .iter()
            .find(|(_, o)| *o == oid)
            .map(|(n, _)| n.as_str())
    }
}

/// Schemas an unqualified name is looked up in, in order (`pg_catalog` is implicitly
/// first in Postgres).
pub(crate) const SEARCH_PATH: [&str; 2] = [PG_CATALOG, DEFAULT_SCHEMA];

/// Fixed oids of the built-in schemas; a hash for any other.
pub(crate) fn namespace_oid(schema: &str) -> i32 {
    match schema {
        PG_CATALOG => PG_CATALOG_OID,
        DEFAULT_SCHEMA => PUBLIC_OID,
        SYSTEM_SCHEMA => SYSTEM_SCHEMA_OID,
        INFORMATION_SCHEMA => INFORMATION_SCHEMA_OID,
        other => hash_oid("", other),
    }
}

/// FNV-1a of `schema`, a NUL, and `name`, mapped into `16384..2^31`.
fn hash_oid(schema: &str, name: &str) -> i32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in schema.bytes().chain([0u8]).chain(name.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let span = (i32::MAX - FIRST_NORMAL_OID) as u64;
    FIRST_NORMAL_OID + (hash % span) as i32
}

/// Splits a possibly qualified, possibly quoted identifier the way Postgres does:
/// unquoted parts fold to lower case, `""` inside quotes is one `"`. `None` if malformed.
pub(crate) fn parse_identifier(text: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' || c.is_whitespace() {
                    break;
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(parts),
            Some('.') => {
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
            }
            Some(_) => return None,
        }
    }
}

/// `quote_ident`: quotes an identifier unless it is a plain lower-case name that is not a
/// reserved keyword.
pub(crate) fn quote_identifier(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
        && !keywords::needs_quoting(name);
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// One relation as the catalog relations describe it.
#[derive(Debug, Clone)]
pub(crate) struct Relation {
    pub names: RelationName,
    /// `r` for tables, `v` for views.
    pub kind: char,
    /// `p` permanent, `t` temporary.
    pub persistence: char,
    pub schema: SchemaRef,
    pub definition: Option<String>,
}

/// The catalog with every relation's provider read: what a scan of a catalog relation
/// describes.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub names: CatalogNames,
    pub relations: Vec<Relation>,
}

impl Snapshot {
    pub async fn read(catalog_list: Arc<dyn CatalogProviderList>) -> Result<Self, DataFusionError> {
        let names = CatalogNames::read(catalog_list.as_ref());
        let catalog = catalog_list.catalog(DEFAULT_CATALOG);
        let information_schema = InformationSchemaProvider::new(Arc::clone(&catalog_list));
        let mut relations = Vec::with_capacity(names.relations.len());
        for rel in &names.relations {
            let provider: Option<Arc<dyn TableProvider>> = if rel.schema == INFORMATION_SCHEMA {
                information_schema.table(&rel.name).await?
            } else {
                match catalog.as_ref().and_then(|c| c.schema(&rel.schema)) {
                    Some(schema) => schema.table(&rel.name).await?,
                    None => None,
                }
            };
            // A relation dropped since the names were read is left out.
            let Some(provider) = provider else {
                continue;
            };
            let (kind, persistence) = match provider.table_type() {
                TableType::Base => ('r', 'p'),
                TableType::View => ('v', 'p'),
                TableType::Temporary => ('r', 't'),
            };
            relations.push(Relation {
                names: rel.clone(),
                kind,
                persistence,
                schema: provider.schema(),
                definition: provider.get_table_definition().map(str::to_string),
            });
        }
        Ok(Self { names, relations })
    }
}
