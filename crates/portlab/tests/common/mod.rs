//! Helpers shared by integration tests of this crate.

pub mod exporter;
pub mod trace;
