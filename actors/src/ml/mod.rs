//! Tabular ML on libtorch: CSV parsing, feature encoding, the network and
//! the metrics the commands report.

pub mod metrics;
pub mod network;
pub mod records;
pub mod spec;
pub mod table;
