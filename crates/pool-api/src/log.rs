//! Where the library reports what it cannot return to a caller (a worker that failed to start
//! and is retried, a callback that panicked): through `tracing` when the `tracing` feature is
//! on (the default), nowhere otherwise. The library itself never prints.
//!
//! The macros take `tracing`'s event syntax as the call sites use it (`%field`, `?field`,
//! `name = %value`, then a message with format arguments). Without the feature they expand to
//! borrows of the same values, so a value computed only to be logged is not "unused".

#[cfg(feature = "tracing")]
macro_rules! error {
    ($($event:tt)*) => { ::tracing::error!($($event)*) };
}

#[cfg(feature = "tracing")]
macro_rules! warning {
    ($($event:tt)*) => { ::tracing::warn!($($event)*) };
}

#[cfg(not(feature = "tracing"))]
macro_rules! error {
    ($($event:tt)*) => { $crate::log::quiet!($($event)*) };
}

#[cfg(not(feature = "tracing"))]
macro_rules! warning {
    ($($event:tt)*) => { $crate::log::quiet!($($event)*) };
}

/// Borrows every value an event names, and nothing more.
#[cfg(not(feature = "tracing"))]
macro_rules! quiet {
    () => {};
    ($name:ident = % $value:expr $(, $($rest:tt)*)?) => {{ let _ = &$value; $crate::log::quiet!($($($rest)*)?) }};
    ($name:ident = ? $value:expr $(, $($rest:tt)*)?) => {{ let _ = &$value; $crate::log::quiet!($($($rest)*)?) }};
    (% $value:ident $(, $($rest:tt)*)?) => {{ let _ = &$value; $crate::log::quiet!($($($rest)*)?) }};
    (? $value:ident $(, $($rest:tt)*)?) => {{ let _ = &$value; $crate::log::quiet!($($($rest)*)?) }};
    ($message:literal $(, $argument:expr)* $(,)?) => {{ $( let _ = &$argument; )* }};
}

pub(crate) use {error, warning};

#[cfg(not(feature = "tracing"))]
pub(crate) use quiet;
