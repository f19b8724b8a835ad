//! The facade in a normal build: std's atomics, hints and the real futex.

pub(crate) use std::thread::yield_now;

pub(crate) mod sync {
    pub(crate) mod atomic {
        pub(crate) use std::sync::atomic::*;
    }
}

/// The OS layer, whose futex the models replace.
pub(crate) use crate::sys;
