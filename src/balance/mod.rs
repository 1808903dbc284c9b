//! Balance: desired services × node weights → the `Plan` (per frontend, backends with
//! weight, share and reason). Pure; the data planes program it.

pub mod metrics;
pub mod plan;
pub mod saving;
