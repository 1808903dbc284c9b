//! Dataplane: moves the bytes. `proxy` accepts, picks a backend from the routes, connects and
//! relays. It reads routes and settings; it never changes them.

pub mod proxy;
