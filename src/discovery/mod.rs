//! Discovery: where the desired state comes from. Each source produces the same
//! `model::Desired` (services and nodes); `file` reads it from the YAML config file.

pub mod file;
