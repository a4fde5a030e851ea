//! Everything on the wire between Flotilla processes: the control plane
//! (registration, heartbeats, stats) and the exchange layer (our wrapper around
//! `datafusion-distributed`).

pub mod channels;
pub mod control;
pub mod error;
pub mod exchange;
pub mod failure;
pub mod faults;
pub mod guard;
pub mod net;

pub use error::{FlightError, Result};
