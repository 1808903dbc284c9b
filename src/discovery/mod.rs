//! Discovery: where the desired state comes from. Each source produces the same
//! `model::Desired` (services and nodes); `file` reads it from the YAML config file, `kube`
//! from the Kubernetes API.

pub mod file;
pub mod kube;
