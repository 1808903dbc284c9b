//! The per-thread scratch buffer: bytes pass through it between a read and a write that
//! happen with no await in between, so idle connections and sessions hold no buffer.

use std::cell::RefCell;

/// Large enough for a whole UDP datagram and a good TCP read.
pub const SCRATCH_BYTES: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice());
}

/// Runs `f` with this thread's scratch buffer. `f` must not call `with_scratch` again.
pub fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        // Only reachable by re-entrance; a fresh buffer keeps that correct, if slower.
        Err(_) => f(&mut vec![0u8; SCRATCH_BYTES]),
    })
}
