//! Object storage adapters behind the actors' [`ObjectStore`] port.
//!
//! [`ObjectStore`]: mlq_actors::ports::ObjectStore

pub mod fs;

pub use fs::FsStore;
