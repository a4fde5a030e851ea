//! Session, catalog, configuration and data policy: everything about SQL that
//! needs no network. See `ARCHITECTURE.md` for where this crate sits.

pub mod catalog;
pub mod config;
pub mod error;
pub mod names;
pub mod object_stores;
pub mod pg_catalog;
pub mod policy;
pub mod rules;
pub mod session;
pub mod tpch;

pub use error::{ErrorKind, Result, SqlError};
