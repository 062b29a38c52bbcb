//! ML on libtorch: CSV parsing and feature encoding, images and archives,
//! the networks, the model registry's names, models loaded for inference
//! (users' TorchScript checked first), and the metrics the commands report.

pub mod archive;
pub mod cnn;
pub mod image;
pub mod loaded;
pub mod metrics;
pub mod network;
pub mod records;
pub mod registry;
pub mod spec;
pub mod table;
pub mod torchscript;
pub mod upload;
