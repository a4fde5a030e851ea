//! The one integration-test binary: real `flotilla` processes, real clients.

mod bad_input;
mod catalog;
mod chaos;
mod clients;
mod compose;
mod fixtures;
mod flight_sql;
mod gpu_stages;
mod layout;
mod lifecycle;
mod object_store;
mod protocol;
mod psql;
mod slt;
mod tpch;
