//! The relations of schema `pg_catalog`.
//!
//! Each relation is a [`TableDef`]: Postgres 16's column names (the subset clients read),
//! Arrow types for them, and where its rows come from. `pg_namespace`, `pg_class`,
//! `pg_attribute`, `pg_tables`, `pg_views` and `pg_stat_user_tables` describe the catalog
//! at scan time; `pg_type`, `pg_proc`, `pg_am`, `pg_database`, `pg_roles` and a few more
//! hold fixed rows; `pg_settings` lists the session's options; the rest are empty,
//! because Flotilla has no indexes, constraints, triggers, policies or publications.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Weak};

use arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Int16Builder, Int32Builder, Int64Builder,
    ListBuilder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{CatalogProviderList, SchemaProvider, Session, TableProvider};
use datafusion::config::ConfigOptions;
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::types::{self, oid as type_oid};
use super::{
    Snapshot, DATABASE_OID, INFORMATION_SCHEMA, PG_CATALOG, PG_CATALOG_OID, USER_NAME, USER_OID,
};

/// Column types of catalog relations. Oids and `regproc`s are `Int32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum T {
    Oid,
    Int2,
    Int4,
    Int8,
    Float4,
    Bool,
    Text,
    /// Postgres' one-byte `"char"`, as a one-character string.
    Char,
    Int2Vec,
    OidVec,
    TextArr,
    Timestamptz,
}

impl T {
    pub fn data_type(self) -> DataType {
        match self {
            T::Oid | T::Int4 => DataType::Int32,
            T::Int2 => DataType::Int16,
            T::Int8 => DataType::Int64,
            T::Float4 => DataType::Float32,
            T::Bool => DataType::Boolean,
            T::Text | T::Char => DataType::Utf8,
            T::Int2Vec => DataType::new_list(DataType::Int16, true),
            T::OidVec => DataType::new_list(DataType::Int32, true),
            T::TextArr => DataType::new_list(DataType::Utf8, true),
            T::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }
}

/// One column: name, type, and whether a row that does not set it gets `NULL` (else the
/// type's zero: `false`, `0`, `''`, `{}`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Col {
    pub name: &'static str,
    pub ty: T,
    pub nullable: bool,
}

const fn c(name: &'static str, ty: T) -> Col {
    Col {
        name,
        ty,
        nullable: false,
    }
}

const fn n(name: &'static str, ty: T) -> Col {
    Col {
        name,
        ty,
        nullable: true,
    }
}

/// A value for one cell.
#[derive(Debug, Clone)]
pub(crate) enum V {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    Str(String),
    I16s(Vec<i16>),
    I32s(Vec<i32>),
    Strs(Vec<String>),
}

fn s(text: impl Into<String>) -> V {
    V::Str(text.into())
}

fn ch(c: char) -> V {
    V::Str(c.to_string())
}

/// Where a relation's rows come from.
#[derive(Clone, Copy)]
pub(crate) enum Source {
    Empty,
    Fixed(fn(&mut Rows) -> Result<()>),
    Catalog(fn(&Snapshot, &mut Rows) -> Result<()>),
    Settings(fn(&ConfigOptions, &mut Rows) -> Result<()>),
}

/// A relation of `pg_catalog`.
pub(crate) struct TableDef {
    pub name: &'static str,
    /// `r` for relations that are tables in Postgres, `v` for views.
    pub kind: char,
    /// Postgres' own oid for the core catalog tables.
    pub oid: Option<i32>,
    pub columns: &'static [Col],
    pub source: Source,
}

impl std::fmt::Debug for TableDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableDef")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TableDef {
    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(c.name, c.ty.data_type(), true))
                .collect::<Vec<_>>(),
        ))
    }
}

/// Rows of one relation under construction, column by column.
pub(crate) struct Rows {
    columns: &'static [Col],
    values: Vec<Vec<V>>,
}

impl Rows {
    fn new(columns: &'static [Col]) -> Self {
        Self {
            columns,
            values: columns.iter().map(|_| Vec::new()).collect(),
        }
    }

    /// Adds a row; columns it does not name get their default.
    fn push(&mut self, cells: Vec<(&'static str, V)>) -> Result<()> {
        let mut row: Vec<Option<V>> = vec![None; self.columns.len()];
        for (name, value) in cells {
            let i = self
                .columns
                .iter()
                .position(|c| c.name == name)
                .ok_or_else(|| {
                    DataFusionError::Internal(format!("catalog relation has no column {name}"))
                })?;
            row[i] = Some(value);
        }
        for ((cell, col), values) in row.into_iter().zip(self.columns).zip(&mut self.values) {
            values.push(cell.unwrap_or_else(|| default_value(col)));
        }
        Ok(())
    }

    fn finish(self, schema: SchemaRef) -> Result<RecordBatch> {
        let arrays = self
            .columns
            .iter()
            .zip(self.values)
            .map(|(col, values)| build_array(col, values))
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(schema, arrays)?)
    }
}

fn default_value(col: &Col) -> V {
    if col.nullable {
        return V::Null;
    }
    match col.ty {
        T::Bool => V::Bool(false),
        T::Oid | T::Int4 => V::I32(0),
        T::Int2 => V::I16(0),
        T::Int8 => V::I64(0),
        T::Float4 => V::F32(0.0),
        T::Text | T::Char => s(""),
        T::Int2Vec => V::I16s(Vec::new()),
        T::OidVec => V::I32s(Vec::new()),
        T::TextArr => V::Strs(Vec::new()),
        T::Timestamptz => V::Null,
    }
}

fn build_array(col: &Col, values: Vec<V>) -> Result<ArrayRef> {
    let mismatch = |v: &V| {
        DataFusionError::Internal(format!(
            "catalog column {} of type {:?} got {v:?}",
            col.name, col.ty
        ))
    };
    macro_rules! scalar {
        ($builder:expr, $variant:ident) => {{
            let mut b = $builder;
            for v in &values {
                match v {
                    V::Null => b.append_null(),
                    V::$variant(x) => b.append_value(x.clone()),
                    other => return Err(mismatch(other)),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    macro_rules! list {
        ($builder:expr, $variant:ident) => {{
            let mut b = ListBuilder::new($builder);
            for v in &values {
                match v {
                    V::Null => b.append_null(),
                    V::$variant(items) => {
                        for item in items {
                            b.values().append_value(item.clone());
                        }
                        b.append(true);
                    }
                    other => return Err(mismatch(other)),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(match col.ty {
        T::Oid | T::Int4 => scalar!(Int32Builder::new(), I32),
        T::Int2 => scalar!(Int16Builder::new(), I16),
        T::Int8 => scalar!(Int64Builder::new(), I64),
        T::Float4 => scalar!(Float32Builder::new(), F32),
        T::Bool => scalar!(BooleanBuilder::new(), Bool),
        T::Text | T::Char => scalar!(StringBuilder::new(), Str),
        T::Int2Vec => list!(Int16Builder::new(), I16s),
        T::OidVec => list!(Int32Builder::new(), I32s),
        T::TextArr => list!(StringBuilder::new(), Strs),
        // No row sets a time stamp yet: they are all unknown.
        T::Timestamptz => {
            let mut b = TimestampMicrosecondBuilder::new();
            for v in &values {
                match v {
                    V::Null => b.append_null(),
                    other => return Err(mismatch(other)),
                }
            }
            Arc::new(b.finish().with_timezone("UTC")) as ArrayRef
        }
    })
}

/// A relation of `pg_catalog`: computes its rows when scanned.
#[derive(Debug)]
pub(crate) struct PgCatalogTable {
    def: &'static TableDef,
    schema: SchemaRef,
    catalog_list: Weak<dyn CatalogProviderList>,
}

#[async_trait]
impl TableProvider for PgCatalogTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        if self.def.kind == 'v' {
            TableType::View
        } else {
            TableType::Base
        }
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut rows = Rows::new(self.def.columns);
        match self.def.source {
            Source::Empty => {}
            Source::Fixed(fill) => fill(&mut rows)?,
            Source::Settings(fill) => fill(state.config_options(), &mut rows)?,
            Source::Catalog(fill) => {
                let catalog_list = self.catalog_list.upgrade().ok_or_else(|| {
                    DataFusionError::Internal("the catalog list was dropped".into())
                })?;
                let snapshot = Snapshot::read(catalog_list).await?;
                fill(&snapshot, &mut rows)?;
            }
        }
        let batch = rows.finish(Arc::clone(&self.schema))?;
        let table = MemTable::try_new(Arc::clone(&self.schema), vec![vec![batch]])?;
        table.scan(state, projection, filters, limit).await
    }
}

/// Schema `pg_catalog`: a fixed set of relations; tables cannot be added to it.
#[derive(Debug)]
pub(crate) struct PgCatalogSchema {
    tables: HashMap<&'static str, Arc<PgCatalogTable>>,
}

impl PgCatalogSchema {
    pub fn new(catalog_list: Weak<dyn CatalogProviderList>) -> Self {
        let tables = TABLES
            .iter()
            .map(|def| {
                let table = PgCatalogTable {
                    def,
                    schema: def.schema(),
                    catalog_list: Weak::clone(&catalog_list),
                };
                (def.name, Arc::new(table))
            })
            .collect();
        Self { tables }
    }
}

#[async_trait]
impl SchemaProvider for PgCatalogSchema {
    fn owner_name(&self) -> Option<&str> {
        Some(USER_NAME)
    }

    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tables.keys().map(|n| n.to_string()).collect();
        names.sort();
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(self
            .tables
            .get(name)
            .map(|t| Arc::clone(t) as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }
}

/// Postgres' oid for a core catalog relation of `pg_catalog`.
pub(crate) fn fixed_oid(name: &str) -> Option<i32> {
    TABLES.iter().find(|d| d.name == name).and_then(|d| d.oid)
}

/// The name and column names of catalog relation `name`.
pub(crate) fn columns_of(name: &str) -> Option<(&'static str, Vec<&'static str>)> {
    TABLES
        .iter()
        .find(|d| d.name == name)
        .map(|d| (d.name, d.columns.iter().map(|c| c.name).collect()))
}

/// The type of a column named `name` in the catalog relations, where every relation
/// that has such a column agrees on it. The rewrite uses it to type literals the way
/// Postgres types an unknown-typed literal compared with a column.
pub(crate) fn column_type(name: &str) -> Option<T> {
    static TYPES: LazyLock<HashMap<&'static str, Option<T>>> = LazyLock::new(|| {
        let mut map: HashMap<&'static str, Option<T>> = HashMap::new();
        for def in TABLES {
            for col in def.columns {
                map.entry(col.name)
                    .and_modify(|t| {
                        if *t != Some(col.ty) {
                            *t = None;
                        }
                    })
                    .or_insert(Some(col.ty));
            }
        }
        map
    });
    TYPES.get(name).copied().flatten()
}

// ---------------------------------------------------------------------------------------
// Functions of pg_proc: the input/output functions of every type in pg_type.

/// First oid of the procedures in `pg_proc`.
const PROC_OID_BASE: i32 = 9000;

/// One row of `pg_proc`.
#[derive(Debug, Clone)]
pub(crate) struct Proc {
    pub oid: i32,
    pub name: String,
    pub arg: i32,
    pub ret: i32,
}

/// Every procedure of `pg_proc`, by oid.
pub(crate) fn procs() -> &'static [Proc] {
    static PROCS: LazyLock<Vec<Proc>> = LazyLock::new(|| {
        let mut procs: Vec<Proc> = Vec::new();
        for t in types::all_types() {
            let is_array = t.io[0] == "array_in";
            let value = if is_array { 2277 } else { t.oid };
            let signatures = [
                (type_oid::CSTRING, value),
                (value, type_oid::CSTRING),
                (2281, value),
                (value, type_oid::BYTEA),
            ];
            for (name, (arg, ret)) in t.io.iter().zip(signatures) {
                if procs.iter().any(|p| &p.name == name) {
                    continue;
                }
                procs.push(Proc {
                    oid: PROC_OID_BASE + procs.len() as i32,
                    name: name.clone(),
                    arg,
                    ret,
                });
            }
        }
        procs
    });
    &PROCS
}

/// The oid of procedure `name` (`array_in`, `pg_catalog.int4in`), as `::regproc` gives.
pub(crate) fn proc_oid(name: &str) -> Option<i32> {
    let name = name.strip_prefix("pg_catalog.").unwrap_or(name);
    procs().iter().find(|p| p.name == name).map(|p| p.oid)
}

// ---------------------------------------------------------------------------------------
// Row sources.

fn namespace_rows(snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
    for (name, oid) in &snapshot.names.namespaces {
        rows.push(vec![
            ("oid", V::I32(*oid)),
            ("nspname", s(name)),
            ("nspowner", V::I32(USER_OID)),
        ])?;
    }
    Ok(())
}

fn class_rows(snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
    for rel in &snapshot.relations {
        let table = rel.kind == 'r';
        rows.push(vec![
            ("oid", V::I32(rel.names.oid)),
            ("relname", s(&rel.names.name)),
            ("relnamespace", V::I32(rel.names.namespace)),
            ("relowner", V::I32(USER_OID)),
            ("relam", V::I32(if table { HEAP_AM_OID } else { 0 })),
            ("relfilenode", V::I32(if table { rel.names.oid } else { 0 })),
            ("reltuples", V::F32(-1.0)),
            ("relpersistence", ch(rel.persistence)),
            ("relkind", ch(rel.kind)),
            ("relnatts", V::I16(rel.schema.fields().len() as i16)),
            ("relispopulated", V::Bool(true)),
            ("relreplident", ch(if table { 'd' } else { 'n' })),
        ])?;
    }
    Ok(())
}

fn attribute_rows(snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
    for rel in &snapshot.relations {
        for (i, field) in rel.schema.fields().iter().enumerate() {
            let column = types::arrow_to_pg(field.data_type());
            let pg = types::by_oid(column.oid);
            rows.push(vec![
                ("attrelid", V::I32(rel.names.oid)),
                ("attname", s(field.name())),
                ("atttypid", V::I32(column.oid)),
                ("attlen", V::I16(column.typlen)),
                ("attnum", V::I16(i as i16 + 1)),
                ("atttypmod", V::I32(column.typmod)),
                ("attbyval", V::Bool(pg.is_some_and(|t| t.typbyval))),
                ("attalign", ch(pg.map_or('i', |t| t.typalign))),
                ("attstorage", ch(pg.map_or('x', |t| t.typstorage))),
                ("attnotnull", V::Bool(!field.is_nullable())),
                ("attislocal", V::Bool(true)),
                ("attstattarget", V::I16(-1)),
                ("attcollation", V::I32(pg.map_or(0, |t| t.typcollation))),
            ])?;
        }
    }
    Ok(())
}

fn type_rows(rows: &mut Rows) -> Result<()> {
    let proc = |name: &str| V::I32(proc_oid(name).unwrap_or(0));
    for t in types::all_types() {
        rows.push(vec![
            ("oid", V::I32(t.oid)),
            ("typname", s(&t.typname)),
            ("typnamespace", V::I32(PG_CATALOG_OID)),
            ("typowner", V::I32(USER_OID)),
            ("typlen", V::I16(t.typlen)),
            ("typbyval", V::Bool(t.typbyval)),
            ("typtype", ch(t.typtype)),
            ("typcategory", ch(t.typcategory)),
            ("typispreferred", V::Bool(t.typispreferred)),
            ("typisdefined", V::Bool(true)),
            ("typdelim", s(",")),
            ("typelem", V::I32(t.typelem)),
            ("typarray", V::I32(t.typarray)),
            ("typinput", proc(&t.io[0])),
            ("typoutput", proc(&t.io[1])),
            ("typreceive", proc(&t.io[2])),
            ("typsend", proc(&t.io[3])),
            ("typalign", ch(t.typalign)),
            ("typstorage", ch(t.typstorage)),
            ("typtypmod", V::I32(-1)),
            ("typcollation", V::I32(t.typcollation)),
        ])?;
    }
    Ok(())
}

fn proc_rows(rows: &mut Rows) -> Result<()> {
    for p in procs() {
        rows.push(vec![
            ("oid", V::I32(p.oid)),
            ("proname", s(&p.name)),
            ("pronamespace", V::I32(PG_CATALOG_OID)),
            ("proowner", V::I32(USER_OID)),
            ("prolang", V::I32(INTERNAL_LANGUAGE_OID)),
            ("procost", V::F32(1.0)),
            ("prokind", ch('f')),
            ("proisstrict", V::Bool(true)),
            ("provolatile", ch('i')),
            ("proparallel", ch('s')),
            ("pronargs", V::I16(1)),
            ("prorettype", V::I32(p.ret)),
            ("proargtypes", V::I32s(vec![p.arg])),
            ("prosrc", s(&p.name)),
        ])?;
    }
    Ok(())
}

fn database_rows(rows: &mut Rows) -> Result<()> {
    rows.push(vec![
        ("oid", V::I32(DATABASE_OID)),
        ("datname", s(crate::session::DEFAULT_CATALOG)),
        ("datdba", V::I32(USER_OID)),
        ("encoding", V::I32(UTF8_ENCODING)),
        ("datlocprovider", ch('c')),
        ("datallowconn", V::Bool(true)),
        ("datconnlimit", V::I32(-1)),
        ("datminmxid", V::I32(1)),
        ("dattablespace", V::I32(DEFAULT_TABLESPACE_OID)),
        ("datcollate", s("C.UTF-8")),
        ("datctype", s("C.UTF-8")),
    ])
}

fn settings_rows(options: &ConfigOptions, rows: &mut Rows) -> Result<()> {
    let changed = options.extensions.get::<super::SessionSettings>();
    for setting in postgres_settings() {
        let session = changed.and_then(|c| c.get(setting.name));
        rows.push(vec![
            ("name", s(setting.name)),
            ("setting", s(session.unwrap_or(setting.value))),
            ("unit", setting.unit.map_or(V::Null, s)),
            ("category", s(setting.category)),
            ("short_desc", s(setting.description)),
            ("context", s(setting.context)),
            ("vartype", s(setting.vartype)),
            (
                "source",
                s(if session.is_some() {
                    "session"
                } else {
                    "default"
                }),
            ),
            ("boot_val", s(setting.value)),
            ("reset_val", s(setting.value)),
        ])?;
    }
    for entry in options.entries() {
        let value = entry.value.unwrap_or_default();
        rows.push(vec![
            ("name", s(&entry.key)),
            ("setting", s(&value)),
            ("category", s("DataFusion")),
            ("short_desc", s(entry.description)),
            ("context", s("user")),
            ("vartype", s("string")),
            ("source", s("default")),
            ("boot_val", s(&value)),
            ("reset_val", s(&value)),
        ])?;
    }
    Ok(())
}

fn am_rows(rows: &mut Rows) -> Result<()> {
    for (oid, name, kind) in [
        (HEAP_AM_OID, "heap", 't'),
        (403, "btree", 'i'),
        (405, "hash", 'i'),
    ] {
        rows.push(vec![
            ("oid", V::I32(oid)),
            ("amname", s(name)),
            ("amtype", ch(kind)),
        ])?;
    }
    Ok(())
}

fn role_rows(rows: &mut Rows) -> Result<()> {
    rows.push(vec![
        ("rolname", s(USER_NAME)),
        ("rolsuper", V::Bool(true)),
        ("rolinherit", V::Bool(true)),
        ("rolcreaterole", V::Bool(true)),
        ("rolcreatedb", V::Bool(true)),
        ("rolcanlogin", V::Bool(true)),
        ("rolreplication", V::Bool(true)),
        ("rolconnlimit", V::I32(-1)),
        ("rolpassword", s("********")),
        ("rolbypassrls", V::Bool(true)),
        ("oid", V::I32(USER_OID)),
    ])
}

fn user_rows(rows: &mut Rows) -> Result<()> {
    rows.push(vec![
        ("usename", s(USER_NAME)),
        ("usesysid", V::I32(USER_OID)),
        ("usecreatedb", V::Bool(true)),
        ("usesuper", V::Bool(true)),
        ("userepl", V::Bool(true)),
        ("usebypassrls", V::Bool(true)),
        ("passwd", s("********")),
    ])
}

fn table_rows(snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
    for rel in snapshot.relations.iter().filter(|r| r.kind == 'r') {
        rows.push(vec![
            ("schemaname", s(&rel.names.schema)),
            ("tablename", s(&rel.names.name)),
            ("tableowner", s(USER_NAME)),
        ])?;
    }
    Ok(())
}

fn view_rows(snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
    for rel in snapshot.relations.iter().filter(|r| r.kind == 'v') {
        rows.push(vec![
            ("schemaname", s(&rel.names.schema)),
            ("viewname", s(&rel.names.name)),
            ("viewowner", s(USER_NAME)),
            ("definition", rel.definition.clone().map_or(V::Null, V::Str)),
        ])?;
    }
    Ok(())
}

fn stat_user_table_rows(snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
    let user_tables = snapshot.relations.iter().filter(|r| {
        r.kind == 'r' && r.names.schema != PG_CATALOG && r.names.schema != INFORMATION_SCHEMA
    });
    for rel in user_tables {
        rows.push(vec![
            ("relid", V::I32(rel.names.oid)),
            ("schemaname", s(&rel.names.schema)),
            ("relname", s(&rel.names.name)),
        ])?;
    }
    Ok(())
}

fn collation_rows(rows: &mut Rows) -> Result<()> {
    for (oid, name, provider) in [
        (types::DEFAULT_COLLATION, "default", 'd'),
        (types::C_COLLATION, "C", 'c'),
        (951, "POSIX", 'c'),
    ] {
        let locale = if provider == 'c' { s(name) } else { V::Null };
        rows.push(vec![
            ("oid", V::I32(oid)),
            ("collname", s(name)),
            ("collnamespace", V::I32(PG_CATALOG_OID)),
            ("collowner", V::I32(USER_OID)),
            ("collprovider", ch(provider)),
            ("collisdeterministic", V::Bool(true)),
            ("collencoding", V::I32(-1)),
            ("collcollate", locale.clone()),
            ("collctype", locale),
        ])?;
    }
    Ok(())
}

fn tablespace_rows(rows: &mut Rows) -> Result<()> {
    for (oid, name) in [(DEFAULT_TABLESPACE_OID, "pg_default"), (1664, "pg_global")] {
        rows.push(vec![
            ("oid", V::I32(oid)),
            ("spcname", s(name)),
            ("spcowner", V::I32(USER_OID)),
        ])?;
    }
    Ok(())
}

fn language_rows(rows: &mut Rows) -> Result<()> {
    for (oid, name) in [(INTERNAL_LANGUAGE_OID, "internal"), (13, "c"), (14, "sql")] {
        rows.push(vec![
            ("oid", V::I32(oid)),
            ("lanname", s(name)),
            ("lanowner", V::I32(USER_OID)),
            ("lanpltrusted", V::Bool(name == "sql")),
        ])?;
    }
    Ok(())
}

fn timezone_rows(rows: &mut Rows) -> Result<()> {
    rows.push(vec![
        ("name", s("UTC")),
        ("abbrev", s("UTC")),
        ("utc_offset", s("00:00:00")),
        ("is_dst", V::Bool(false)),
    ])
}

fn keyword_rows(rows: &mut Rows) -> Result<()> {
    for &(word, code) in super::keywords::keywords() {
        rows.push(vec![
            ("word", s(word)),
            ("catcode", ch(code)),
            ("barelabel", V::Bool(true)),
            ("catdesc", s(super::keywords::category_description(code))),
            ("baredesc", s("can be bare label")),
        ])?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Settings clients read from pg_settings and current_setting().

/// A Postgres setting with the value Flotilla reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PgSetting {
    pub name: &'static str,
    pub value: &'static str,
    pub unit: Option<&'static str>,
    pub category: &'static str,
    pub description: &'static str,
    pub context: &'static str,
    pub vartype: &'static str,
}

const fn setting(
    name: &'static str,
    value: &'static str,
    vartype: &'static str,
    description: &'static str,
) -> PgSetting {
    PgSetting {
        name,
        value,
        unit: None,
        category: "Client Connection Defaults",
        description,
        context: "user",
        vartype,
    }
}

const fn preset(name: &'static str, value: &'static str, description: &'static str) -> PgSetting {
    PgSetting {
        name,
        value,
        unit: None,
        category: "Preset Options",
        description,
        context: "internal",
        vartype: "string",
    }
}

/// The Postgres settings Flotilla reports, with their fixed values.
pub(crate) fn postgres_settings() -> &'static [PgSetting] {
    const SETTINGS: &[PgSetting] = &[
        setting(
            "application_name",
            "",
            "string",
            "Sets the application name.",
        ),
        setting(
            "bytea_output",
            "hex",
            "enum",
            "Sets the output format for bytea.",
        ),
        setting(
            "client_encoding",
            "UTF8",
            "string",
            "Sets the client's character set encoding.",
        ),
        setting(
            "client_min_messages",
            "notice",
            "enum",
            "Sets the message levels sent to the client.",
        ),
        setting(
            "DateStyle",
            "ISO, MDY",
            "string",
            "Sets the display format for date and time values.",
        ),
        setting(
            "default_transaction_isolation",
            "read committed",
            "enum",
            "Sets the transaction isolation level of each new transaction.",
        ),
        setting(
            "default_transaction_read_only",
            "off",
            "bool",
            "Sets the default read-only status of new transactions.",
        ),
        setting(
            "extra_float_digits",
            "1",
            "integer",
            "Sets the number of digits displayed for floating-point values.",
        ),
        setting(
            "IntervalStyle",
            "postgres",
            "enum",
            "Sets the display format for interval values.",
        ),
        setting(
            "lock_timeout",
            "0",
            "integer",
            "Sets the maximum allowed duration of any wait for a lock.",
        ),
        setting(
            "search_path",
            "\"$user\", public",
            "string",
            "Sets the schema search order for names that are not schema-qualified.",
        ),
        setting(
            "statement_timeout",
            "0",
            "integer",
            "Sets the maximum allowed duration of any statement.",
        ),
        setting(
            "TimeZone",
            "UTC",
            "string",
            "Sets the time zone for displaying and interpreting time stamps.",
        ),
        setting(
            "transaction_isolation",
            "read committed",
            "enum",
            "Sets the current transaction's isolation level.",
        ),
        setting(
            "transaction_read_only",
            "off",
            "bool",
            "Sets the current transaction's read-only status.",
        ),
        setting(
            "standard_conforming_strings",
            "on",
            "bool",
            "Causes '...' strings to treat backslashes literally.",
        ),
        setting("row_security", "on", "bool", "Enable row security."),
        setting(
            "lc_messages",
            "C.UTF-8",
            "string",
            "Sets the language in which messages are displayed.",
        ),
        setting(
            "lc_monetary",
            "C.UTF-8",
            "string",
            "Sets the locale for formatting monetary amounts.",
        ),
        setting(
            "lc_numeric",
            "C.UTF-8",
            "string",
            "Sets the locale for formatting numbers.",
        ),
        setting(
            "lc_time",
            "C.UTF-8",
            "string",
            "Sets the locale for formatting date and time values.",
        ),
        setting(
            "default_text_search_config",
            "pg_catalog.english",
            "string",
            "Sets default text search configuration.",
        ),
        setting(
            "idle_in_transaction_session_timeout",
            "0",
            "integer",
            "Sets the maximum allowed idle time between queries, when in a transaction.",
        ),
        preset(
            "server_version",
            super::SERVER_VERSION,
            "Shows the server version.",
        ),
        preset(
            "server_version_num",
            super::SERVER_VERSION_NUM,
            "Shows the server version as an integer.",
        ),
        preset(
            "server_encoding",
            "UTF8",
            "Shows the server (database) character set encoding.",
        ),
        preset(
            "integer_datetimes",
            "on",
            "Shows whether datetimes are integer based.",
        ),
        preset(
            "max_index_keys",
            "32",
            "Shows the maximum number of index keys.",
        ),
        preset(
            "max_identifier_length",
            "63",
            "Shows the maximum identifier length.",
        ),
        preset(
            "max_function_args",
            "100",
            "Shows the maximum number of function arguments.",
        ),
        preset("block_size", "8192", "Shows the size of a disk block."),
        preset(
            "is_superuser",
            "on",
            "Shows whether the current user is a superuser.",
        ),
        preset(
            "session_authorization",
            USER_NAME,
            "Sets the session user name.",
        ),
        PgSetting {
            name: "max_connections",
            value: "100",
            unit: None,
            category: "Connections and Authentication",
            description: "Sets the maximum number of concurrent connections.",
            context: "postmaster",
            vartype: "integer",
        },
        PgSetting {
            name: "port",
            value: "5432",
            unit: None,
            category: "Connections and Authentication",
            description: "Sets the TCP port the server listens on.",
            context: "postmaster",
            vartype: "integer",
        },
        PgSetting {
            name: "ssl",
            value: "off",
            unit: None,
            category: "Connections and Authentication",
            description: "Enables SSL connections.",
            context: "sighup",
            vartype: "bool",
        },
        PgSetting {
            name: "work_mem",
            value: "4096",
            unit: Some("kB"),
            category: "Resource Usage",
            description: "Sets the maximum memory to be used for query workspaces.",
            context: "user",
            vartype: "integer",
        },
        PgSetting {
            name: "shared_buffers",
            value: "16384",
            unit: Some("8kB"),
            category: "Resource Usage",
            description: "Sets the number of shared memory buffers used by the server.",
            context: "postmaster",
            vartype: "integer",
        },
    ];
    SETTINGS
}

// ---------------------------------------------------------------------------------------
// Relation definitions.

const HEAP_AM_OID: i32 = 2;
const INTERNAL_LANGUAGE_OID: i32 = 12;
const DEFAULT_TABLESPACE_OID: i32 = 1663;
/// `pg_database.encoding` of UTF8.
pub(crate) const UTF8_ENCODING: i32 = 6;

use T::*;

#[rustfmt::skip]
static TABLES: &[TableDef] = &[
    TableDef { name: "pg_aggregate", kind: 'r', oid: Some(2600), source: Source::Empty, columns: &[
        c("aggfnoid", Oid), c("aggkind", Char), c("aggnumdirectargs", Int2), c("aggtransfn", Oid),
        c("aggfinalfn", Oid), c("aggtranstype", Oid), n("agginitval", Text),
    ]},
    TableDef { name: "pg_am", kind: 'r', oid: Some(2601), source: Source::Fixed(am_rows), columns: &[
        c("oid", Oid), c("amname", Text), c("amhandler", Oid), c("amtype", Char),
    ]},
    TableDef { name: "pg_attrdef", kind: 'r', oid: Some(2604), source: Source::Empty, columns: &[
        c("oid", Oid), c("adrelid", Oid), c("adnum", Int2), c("adbin", Text),
    ]},
    TableDef { name: "pg_attribute", kind: 'r', oid: Some(1249), source: Source::Catalog(attribute_rows), columns: &[
        c("attrelid", Oid), c("attname", Text), c("atttypid", Oid), c("attlen", Int2), c("attnum", Int2),
        c("attcacheoff", Int4), c("atttypmod", Int4), c("attndims", Int2), c("attbyval", Bool),
        c("attalign", Char), c("attstorage", Char), c("attcompression", Char), c("attnotnull", Bool),
        c("atthasdef", Bool), c("atthasmissing", Bool), c("attidentity", Char), c("attgenerated", Char),
        c("attisdropped", Bool), c("attislocal", Bool), c("attinhcount", Int2), c("attstattarget", Int2),
        c("attcollation", Oid), n("attacl", TextArr), n("attoptions", TextArr), n("attfdwoptions", TextArr),
        n("attmissingval", Text),
    ]},
    TableDef { name: "pg_auth_members", kind: 'r', oid: Some(1261), source: Source::Empty, columns: &[
        c("oid", Oid), c("roleid", Oid), c("member", Oid), c("grantor", Oid), c("admin_option", Bool),
        c("inherit_option", Bool), c("set_option", Bool),
    ]},
    TableDef { name: "pg_authid", kind: 'r', oid: Some(1260), source: Source::Fixed(role_rows), columns: &[
        c("oid", Oid), c("rolname", Text), c("rolsuper", Bool), c("rolinherit", Bool), c("rolcreaterole", Bool),
        c("rolcreatedb", Bool), c("rolcanlogin", Bool), c("rolreplication", Bool), c("rolbypassrls", Bool),
        c("rolconnlimit", Int4), n("rolpassword", Text), n("rolvaliduntil", Timestamptz),
    ]},
    TableDef { name: "pg_available_extensions", kind: 'v', oid: None, source: Source::Empty, columns: &[
        c("name", Text), n("default_version", Text), n("installed_version", Text), n("comment", Text),
    ]},
    TableDef { name: "pg_cast", kind: 'r', oid: Some(2605), source: Source::Empty, columns: &[
        c("oid", Oid), c("castsource", Oid), c("casttarget", Oid), c("castfunc", Oid), c("castcontext", Char),
        c("castmethod", Char),
    ]},
    TableDef { name: "pg_class", kind: 'r', oid: Some(1259), source: Source::Catalog(class_rows), columns: &[
        c("oid", Oid), c("relname", Text), c("relnamespace", Oid), c("reltype", Oid), c("reloftype", Oid),
        c("relowner", Oid), c("relam", Oid), c("relfilenode", Oid), c("reltablespace", Oid),
        c("relpages", Int4), c("reltuples", Float4), c("relallvisible", Int4), c("reltoastrelid", Oid),
        c("relhasindex", Bool), c("relisshared", Bool), c("relpersistence", Char), c("relkind", Char),
        c("relnatts", Int2), c("relchecks", Int2), c("relhasrules", Bool), c("relhastriggers", Bool),
        c("relhassubclass", Bool), c("relrowsecurity", Bool), c("relforcerowsecurity", Bool),
        c("relispopulated", Bool), c("relreplident", Char), c("relispartition", Bool), c("relrewrite", Oid),
        c("relfrozenxid", Int4), c("relminmxid", Int4), n("relacl", TextArr), n("reloptions", TextArr),
        n("relpartbound", Text),
    ]},
    TableDef { name: "pg_collation", kind: 'r', oid: Some(3456), source: Source::Fixed(collation_rows), columns: &[
        c("oid", Oid), c("collname", Text), c("collnamespace", Oid), c("collowner", Oid),
        c("collprovider", Char), c("collisdeterministic", Bool), c("collencoding", Int4),
        n("collcollate", Text), n("collctype", Text), n("colliculocale", Text), n("collicurules", Text),
        n("collversion", Text),
    ]},
    TableDef { name: "pg_constraint", kind: 'r', oid: Some(2606), source: Source::Empty, columns: &[
        c("oid", Oid), c("conname", Text), c("connamespace", Oid), c("contype", Char),
        c("condeferrable", Bool), c("condeferred", Bool), c("convalidated", Bool), c("conrelid", Oid),
        c("contypid", Oid), c("conindid", Oid), c("conparentid", Oid), c("confrelid", Oid),
        c("confupdtype", Char), c("confdeltype", Char), c("confmatchtype", Char), c("conislocal", Bool),
        c("coninhcount", Int2), c("connoinherit", Bool), n("conkey", Int2Vec), n("confkey", Int2Vec),
        n("conpfeqop", OidVec), n("conppeqop", OidVec), n("conffeqop", OidVec),
        n("confdelsetcols", Int2Vec), n("conexclop", OidVec), n("conbin", Text),
    ]},
    TableDef { name: "pg_database", kind: 'r', oid: Some(1262), source: Source::Fixed(database_rows), columns: &[
        c("oid", Oid), c("datname", Text), c("datdba", Oid), c("encoding", Int4), c("datlocprovider", Char),
        c("datistemplate", Bool), c("datallowconn", Bool), c("datconnlimit", Int4), c("datfrozenxid", Int4),
        c("datminmxid", Int4), c("dattablespace", Oid), c("datcollate", Text), c("datctype", Text),
        n("daticulocale", Text), n("daticurules", Text), n("datcollversion", Text), n("datacl", TextArr),
    ]},
    TableDef { name: "pg_depend", kind: 'r', oid: Some(2608), source: Source::Empty, columns: &[
        c("classid", Oid), c("objid", Oid), c("objsubid", Int4), c("refclassid", Oid), c("refobjid", Oid),
        c("refobjsubid", Int4), c("deptype", Char),
    ]},
    TableDef { name: "pg_description", kind: 'r', oid: Some(2609), source: Source::Empty, columns: &[
        c("objoid", Oid), c("classoid", Oid), c("objsubid", Int4), c("description", Text),
    ]},
    TableDef { name: "pg_enum", kind: 'r', oid: Some(3501), source: Source::Empty, columns: &[
        c("oid", Oid), c("enumtypid", Oid), c("enumsortorder", Float4), c("enumlabel", Text),
    ]},
    TableDef { name: "pg_event_trigger", kind: 'r', oid: Some(3466), source: Source::Empty, columns: &[
        c("oid", Oid), c("evtname", Text), c("evtevent", Text), c("evtowner", Oid), c("evtfoid", Oid),
        c("evtenabled", Char), n("evttags", TextArr),
    ]},
    TableDef { name: "pg_extension", kind: 'r', oid: Some(3079), source: Source::Empty, columns: &[
        c("oid", Oid), c("extname", Text), c("extowner", Oid), c("extnamespace", Oid),
        c("extrelocatable", Bool), c("extversion", Text), n("extconfig", OidVec), n("extcondition", TextArr),
    ]},
    TableDef { name: "pg_foreign_data_wrapper", kind: 'r', oid: Some(2328), source: Source::Empty, columns: &[
        c("oid", Oid), c("fdwname", Text), c("fdwowner", Oid), c("fdwhandler", Oid), c("fdwvalidator", Oid),
        n("fdwacl", TextArr), n("fdwoptions", TextArr),
    ]},
    TableDef { name: "pg_foreign_server", kind: 'r', oid: Some(1417), source: Source::Empty, columns: &[
        c("oid", Oid), c("srvname", Text), c("srvowner", Oid), c("srvfdw", Oid), n("srvtype", Text),
        n("srvversion", Text), n("srvacl", TextArr), n("srvoptions", TextArr),
    ]},
    TableDef { name: "pg_foreign_table", kind: 'r', oid: Some(3118), source: Source::Empty, columns: &[
        c("ftrelid", Oid), c("ftserver", Oid), n("ftoptions", TextArr),
    ]},
    TableDef { name: "pg_index", kind: 'r', oid: Some(2610), source: Source::Empty, columns: &[
        c("indexrelid", Oid), c("indrelid", Oid), c("indnatts", Int2), c("indnkeyatts", Int2),
        c("indisunique", Bool), c("indnullsnotdistinct", Bool), c("indisprimary", Bool),
        c("indisexclusion", Bool), c("indimmediate", Bool), c("indisclustered", Bool), c("indisvalid", Bool),
        c("indcheckxmin", Bool), c("indisready", Bool), c("indislive", Bool), c("indisreplident", Bool),
        c("indkey", Int2Vec), c("indcollation", OidVec), c("indclass", OidVec), c("indoption", Int2Vec),
        n("indexprs", Text), n("indpred", Text),
    ]},
    TableDef { name: "pg_indexes", kind: 'v', oid: None, source: Source::Empty, columns: &[
        c("schemaname", Text), c("tablename", Text), c("indexname", Text), n("tablespace", Text),
        c("indexdef", Text),
    ]},
    TableDef { name: "pg_inherits", kind: 'r', oid: Some(2611), source: Source::Empty, columns: &[
        c("inhrelid", Oid), c("inhparent", Oid), c("inhseqno", Int4), c("inhdetachpending", Bool),
    ]},
    TableDef { name: "pg_language", kind: 'r', oid: Some(2612), source: Source::Fixed(language_rows), columns: &[
        c("oid", Oid), c("lanname", Text), c("lanowner", Oid), c("lanispl", Bool), c("lanpltrusted", Bool),
        c("lanplcallfoid", Oid), c("laninline", Oid), c("lanvalidator", Oid), n("lanacl", TextArr),
    ]},
    TableDef { name: "pg_locks", kind: 'v', oid: None, source: Source::Empty, columns: &[
        c("locktype", Text), n("database", Oid), n("relation", Oid), n("page", Int4), n("tuple", Int2),
        n("virtualxid", Text), n("transactionid", Int8), n("classid", Oid), n("objid", Oid),
        n("objsubid", Int2), n("virtualtransaction", Text), n("pid", Int4), c("mode", Text),
        c("granted", Bool), c("fastpath", Bool), n("waitstart", Timestamptz),
    ]},
    TableDef { name: "pg_matviews", kind: 'v', oid: None, source: Source::Empty, columns: &[
        c("schemaname", Text), c("matviewname", Text), c("matviewowner", Text), n("tablespace", Text),
        c("hasindexes", Bool), c("ispopulated", Bool), n("definition", Text),
    ]},
    TableDef { name: "pg_namespace", kind: 'r', oid: Some(2615), source: Source::Catalog(namespace_rows), columns: &[
        c("oid", Oid), c("nspname", Text), c("nspowner", Oid), n("nspacl", TextArr),
    ]},
    TableDef { name: "pg_opclass", kind: 'r', oid: Some(2616), source: Source::Empty, columns: &[
        c("oid", Oid), c("opcmethod", Oid), c("opcname", Text), c("opcnamespace", Oid), c("opcowner", Oid),
        c("opcfamily", Oid), c("opcintype", Oid), c("opcdefault", Bool), c("opckeytype", Oid),
    ]},
    TableDef { name: "pg_operator", kind: 'r', oid: Some(2617), source: Source::Empty, columns: &[
        c("oid", Oid), c("oprname", Text), c("oprnamespace", Oid), c("oprowner", Oid), c("oprkind", Char),
        c("oprcanmerge", Bool), c("oprcanhash", Bool), c("oprleft", Oid), c("oprright", Oid),
        c("oprresult", Oid), c("oprcom", Oid), c("oprnegate", Oid), c("oprcode", Oid),
        c("oprrest", Oid), c("oprjoin", Oid),
    ]},
    TableDef { name: "pg_partitioned_table", kind: 'r', oid: Some(3350), source: Source::Empty, columns: &[
        c("partrelid", Oid), c("partstrat", Char), c("partnatts", Int2), c("partdefid", Oid),
        c("partattrs", Int2Vec), c("partclass", OidVec), c("partcollation", OidVec), n("partexprs", Text),
    ]},
    TableDef { name: "pg_policy", kind: 'r', oid: Some(3256), source: Source::Empty, columns: &[
        c("oid", Oid), c("polname", Text), c("polrelid", Oid), c("polcmd", Char), c("polpermissive", Bool),
        c("polroles", OidVec), n("polqual", Text), n("polwithcheck", Text),
    ]},
    TableDef { name: "pg_proc", kind: 'r', oid: Some(1255), source: Source::Fixed(proc_rows), columns: &[
        c("oid", Oid), c("proname", Text), c("pronamespace", Oid), c("proowner", Oid), c("prolang", Oid),
        c("procost", Float4), c("prorows", Float4), c("provariadic", Oid), c("prosupport", Oid),
        c("prokind", Char), c("prosecdef", Bool), c("proleakproof", Bool), c("proisstrict", Bool),
        c("proretset", Bool), c("provolatile", Char), c("proparallel", Char), c("pronargs", Int2),
        c("pronargdefaults", Int2), c("prorettype", Oid), c("proargtypes", OidVec),
        n("proallargtypes", OidVec), n("proargmodes", TextArr), n("proargnames", TextArr),
        n("proargdefaults", Text), n("protrftypes", OidVec), c("prosrc", Text), n("probin", Text),
        n("prosqlbody", Text), n("proconfig", TextArr), n("proacl", TextArr),
    ]},
    TableDef { name: "pg_publication", kind: 'r', oid: Some(6104), source: Source::Empty, columns: &[
        c("oid", Oid), c("pubname", Text), c("pubowner", Oid), c("puballtables", Bool), c("pubinsert", Bool),
        c("pubupdate", Bool), c("pubdelete", Bool), c("pubtruncate", Bool), c("pubviaroot", Bool),
    ]},
    TableDef { name: "pg_publication_namespace", kind: 'r', oid: Some(6237), source: Source::Empty, columns: &[
        c("oid", Oid), c("pnpubid", Oid), c("pnnspid", Oid),
    ]},
    TableDef { name: "pg_publication_rel", kind: 'r', oid: Some(6106), source: Source::Empty, columns: &[
        c("oid", Oid), c("prpubid", Oid), c("prrelid", Oid), n("prqual", Text), n("prattrs", Int2Vec),
    ]},
    TableDef { name: "pg_publication_tables", kind: 'v', oid: None, source: Source::Empty, columns: &[
        c("pubname", Text), c("schemaname", Text), c("tablename", Text), n("attnames", TextArr),
        n("rowfilter", Text),
    ]},
    TableDef { name: "pg_range", kind: 'r', oid: Some(3541), source: Source::Empty, columns: &[
        c("rngtypid", Oid), c("rngsubtype", Oid), c("rngmultitypid", Oid), c("rngcollation", Oid),
        c("rngsubopc", Oid), c("rngcanonical", Oid), c("rngsubdiff", Oid),
    ]},
    TableDef { name: "pg_replication_slots", kind: 'v', oid: None, source: Source::Empty, columns: &[
        c("slot_name", Text), n("plugin", Text), c("slot_type", Text), n("datoid", Oid), n("database", Text),
        c("temporary", Bool), c("active", Bool), n("active_pid", Int4), n("xmin", Int8),
        n("catalog_xmin", Int8), n("restart_lsn", Text), n("confirmed_flush_lsn", Text),
        n("wal_status", Text), n("safe_wal_size", Int8), c("two_phase", Bool), n("conflicting", Bool),
    ]},
    TableDef { name: "pg_rewrite", kind: 'r', oid: Some(2618), source: Source::Empty, columns: &[
        c("oid", Oid), c("rulename", Text), c("ev_class", Oid), c("ev_type", Char), c("ev_enabled", Char),
        c("is_instead", Bool), n("ev_qual", Text), n("ev_action", Text),
    ]},
    TableDef { name: "pg_roles", kind: 'v', oid: None, source: Source::Fixed(role_rows), columns: &[
        c("rolname", Text), c("rolsuper", Bool), c("rolinherit", Bool), c("rolcreaterole", Bool),
        c("rolcreatedb", Bool), c("rolcanlogin", Bool), c("rolreplication", Bool), c("rolconnlimit", Int4),
        n("rolpassword", Text), n("rolvaliduntil", Timestamptz), c("rolbypassrls", Bool),
        n("rolconfig", TextArr), c("oid", Oid),
    ]},
    TableDef { name: "pg_sequence", kind: 'r', oid: Some(2224), source: Source::Empty, columns: &[
        c("seqrelid", Oid), c("seqtypid", Oid), c("seqstart", Int8), c("seqincrement", Int8),
        c("seqmax", Int8), c("seqmin", Int8), c("seqcache", Int8), c("seqcycle", Bool),
    ]},
    TableDef { name: "pg_sequences", kind: 'v', oid: None, source: Source::Empty, columns: &[
        c("schemaname", Text), c("sequencename", Text), c("sequenceowner", Text), c("data_type", Text),
        c("start_value", Int8), c("min_value", Int8), c("max_value", Int8), c("increment_by", Int8),
        c("cycle", Bool), c("cache_size", Int8), n("last_value", Int8),
    ]},
    TableDef { name: "pg_settings", kind: 'v', oid: None, source: Source::Settings(settings_rows), columns: &[
        c("name", Text), c("setting", Text), n("unit", Text), c("category", Text), c("short_desc", Text),
        n("extra_desc", Text), c("context", Text), c("vartype", Text), c("source", Text),
        n("min_val", Text), n("max_val", Text), n("enumvals", TextArr), n("boot_val", Text),
        n("reset_val", Text), n("sourcefile", Text), n("sourceline", Int4), c("pending_restart", Bool),
    ]},
    TableDef { name: "pg_shdescription", kind: 'r', oid: Some(2396), source: Source::Empty, columns: &[
        c("objoid", Oid), c("classoid", Oid), c("description", Text),
    ]},
    TableDef { name: "pg_stat_activity", kind: 'v', oid: None, source: Source::Empty, columns: &[
        n("datid", Oid), n("datname", Text), c("pid", Int4), n("leader_pid", Int4), n("usesysid", Oid),
        n("usename", Text), c("application_name", Text), n("client_addr", Text), n("client_hostname", Text),
        n("client_port", Int4), n("backend_start", Timestamptz), n("xact_start", Timestamptz),
        n("query_start", Timestamptz), n("state_change", Timestamptz), n("wait_event_type", Text),
        n("wait_event", Text), n("state", Text), n("backend_xid", Int8), n("backend_xmin", Int8),
        n("query_id", Int8), c("query", Text), c("backend_type", Text),
    ]},
    TableDef { name: "pg_stat_user_tables", kind: 'v', oid: None, source: Source::Catalog(stat_user_table_rows), columns: &[
        c("relid", Oid), c("schemaname", Text), c("relname", Text), c("seq_scan", Int8),
        n("last_seq_scan", Timestamptz), c("seq_tup_read", Int8), c("idx_scan", Int8),
        n("last_idx_scan", Timestamptz), c("idx_tup_fetch", Int8), c("n_tup_ins", Int8),
        c("n_tup_upd", Int8), c("n_tup_del", Int8), c("n_tup_hot_upd", Int8), c("n_tup_newpage_upd", Int8),
        c("n_live_tup", Int8), c("n_dead_tup", Int8), c("n_mod_since_analyze", Int8),
        c("n_ins_since_vacuum", Int8), n("last_vacuum", Timestamptz), n("last_autovacuum", Timestamptz),
        n("last_analyze", Timestamptz), n("last_autoanalyze", Timestamptz), c("vacuum_count", Int8),
        c("autovacuum_count", Int8), c("analyze_count", Int8), c("autoanalyze_count", Int8),
    ]},
    TableDef { name: "pg_statistic_ext", kind: 'r', oid: Some(3381), source: Source::Empty, columns: &[
        c("oid", Oid), c("stxrelid", Oid), c("stxname", Text), c("stxnamespace", Oid), c("stxowner", Oid),
        n("stxstattarget", Int2), c("stxkeys", Int2Vec), c("stxkind", TextArr), n("stxexprs", Text),
    ]},
    TableDef { name: "pg_tables", kind: 'v', oid: None, source: Source::Catalog(table_rows), columns: &[
        c("schemaname", Text), c("tablename", Text), c("tableowner", Text), n("tablespace", Text),
        c("hasindexes", Bool), c("hasrules", Bool), c("hastriggers", Bool), c("rowsecurity", Bool),
    ]},
    TableDef { name: "pg_tablespace", kind: 'r', oid: Some(1213), source: Source::Fixed(tablespace_rows), columns: &[
        c("oid", Oid), c("spcname", Text), c("spcowner", Oid), n("spcacl", TextArr), n("spcoptions", TextArr),
    ]},
    TableDef { name: "pg_timezone_names", kind: 'v', oid: None, source: Source::Fixed(timezone_rows), columns: &[
        c("name", Text), c("abbrev", Text), c("utc_offset", Text), c("is_dst", Bool),
    ]},
    TableDef { name: "pg_trigger", kind: 'r', oid: Some(2620), source: Source::Empty, columns: &[
        c("oid", Oid), c("tgrelid", Oid), c("tgparentid", Oid), c("tgname", Text), c("tgfoid", Oid),
        c("tgtype", Int2), c("tgenabled", Char), c("tgisinternal", Bool), c("tgconstrrelid", Oid),
        c("tgconstrindid", Oid), c("tgconstraint", Oid), c("tgdeferrable", Bool), c("tginitdeferred", Bool),
        c("tgnargs", Int2), c("tgattr", Int2Vec), c("tgargs", Text), n("tgqual", Text),
        n("tgoldtable", Text), n("tgnewtable", Text),
    ]},
    TableDef { name: "pg_type", kind: 'r', oid: Some(1247), source: Source::Fixed(type_rows), columns: &[
        c("oid", Oid), c("typname", Text), c("typnamespace", Oid), c("typowner", Oid), c("typlen", Int2),
        c("typbyval", Bool), c("typtype", Char), c("typcategory", Char), c("typispreferred", Bool),
        c("typisdefined", Bool), c("typdelim", Char), c("typrelid", Oid), c("typsubscript", Oid),
        c("typelem", Oid), c("typarray", Oid), c("typinput", Oid), c("typoutput", Oid),
        c("typreceive", Oid), c("typsend", Oid), c("typmodin", Oid), c("typmodout", Oid),
        c("typanalyze", Oid), c("typalign", Char), c("typstorage", Char), c("typnotnull", Bool),
        c("typbasetype", Oid), c("typtypmod", Int4), c("typndims", Int4), c("typcollation", Oid),
        n("typdefaultbin", Text), n("typdefault", Text), n("typacl", TextArr),
    ]},
    TableDef { name: "pg_user", kind: 'v', oid: None, source: Source::Fixed(user_rows), columns: &[
        c("usename", Text), c("usesysid", Oid), c("usecreatedb", Bool), c("usesuper", Bool),
        c("userepl", Bool), c("usebypassrls", Bool), n("passwd", Text), n("valuntil", Timestamptz),
        n("useconfig", TextArr),
    ]},
    TableDef { name: "pg_views", kind: 'v', oid: None, source: Source::Catalog(view_rows), columns: &[
        c("schemaname", Text), c("viewname", Text), c("viewowner", Text), n("definition", Text),
    ]},
];

/// Columns of the `pg_get_keywords()` table function.
pub(crate) static KEYWORD_COLUMNS: &[Col] = &[
    c("word", Text),
    c("catcode", Char),
    c("barelabel", Bool),
    c("catdesc", Text),
    c("baredesc", Text),
];

/// The rows of `pg_get_keywords()`.
pub(crate) fn keywords_batch() -> Result<RecordBatch> {
    let mut rows = Rows::new(KEYWORD_COLUMNS);
    keyword_rows(&mut rows)?;
    let schema = Arc::new(Schema::new(
        KEYWORD_COLUMNS
            .iter()
            .map(|c| Field::new(c.name, c.ty.data_type(), true))
            .collect::<Vec<_>>(),
    ));
    rows.finish(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations_are_sorted_and_unique() {
        assert!(TABLES.windows(2).all(|w| w[0].name < w[1].name));
        for def in TABLES {
            let mut names: Vec<&str> = def.columns.iter().map(|c| c.name).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), def.columns.len(), "{}", def.name);
        }
    }

    #[test]
    fn fixed_sources_build() {
        for def in TABLES {
            let mut rows = Rows::new(def.columns);
            match def.source {
                Source::Fixed(fill) => fill(&mut rows).unwrap(),
                Source::Settings(fill) => fill(&ConfigOptions::new(), &mut rows).unwrap(),
                Source::Empty | Source::Catalog(_) => {}
            }
            rows.finish(def.schema()).unwrap();
        }
        keywords_batch().unwrap();
    }

    #[test]
    fn every_type_has_its_io_procs() {
        for t in types::all_types() {
            for name in &t.io {
                assert!(proc_oid(name).is_some(), "{name}");
            }
        }
        assert_eq!(column_type("indisprimary"), Some(T::Bool));
        assert_eq!(column_type("relnamespace"), Some(T::Oid));
    }
}
