//! The one integration-test binary: real `flotilla` processes, real clients.

mod bad_input;
mod catalog;
mod layout;
mod psql;
mod slt;
mod tpch;
