//! The IPVS data plane: the Plan's services and power weights programmed into the kernel's
//! IPVS `wrr` over generic netlink, instead of relaying in userspace.

pub mod message;
pub mod reconcile;
