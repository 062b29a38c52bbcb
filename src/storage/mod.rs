//! Object storage adapters behind the actors' [`ObjectStore`] port.
//!
//! [`ObjectStore`]: mlq_actors::ports::ObjectStore

pub mod collector;
pub mod fs;
pub mod janitor;
pub mod s3;

pub use self::s3::{S3Config, S3Store};
pub use fs::FsStore;
pub use janitor::Janitor;
