//! Balance: desired services × node weights (and other clusters' scores) → the `Plan`
//! (per frontend, backends with weight, share, reason and what selected them). Pure; the
//! data planes program it.

pub mod clusters;
pub mod metrics;
pub mod plan;
pub mod saving;
