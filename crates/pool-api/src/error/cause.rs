//! The causes other errors carry: [`CodecError`] (a value that did not encode or decode) and
//! [`OsError`] (an `io::Error` that can be cloned and compared). A leaf: every error type of
//! the crate holds these, and they hold nothing of the crate.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::sync::Arc;

/// Why a value could not be encoded or decoded: what was being done ("decoding the result
/// of task 3"), and the encoder's own error as the source, when there is one. The encoding
/// itself is an implementation detail, so its error type is not named here.
#[derive(Clone)]
pub struct CodecError {
    what: Cow<'static, str>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl CodecError {
    /// An error with no underlying cause (a frame cut short, a count that does not match).
    pub(crate) fn new(what: impl Into<Cow<'static, str>>) -> CodecError {
        CodecError {
            what: what.into(),
            source: None,
        }
    }

    /// The encoder's error `source`, met while doing `what`.
    pub(crate) fn caused_by(
        what: impl Into<Cow<'static, str>>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> CodecError {
        CodecError {
            what: what.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// What was being encoded or decoded when it failed.
    pub fn what(&self) -> &str {
        &self.what
    }
}

/// `map_err(codec("decoding ..."))`: wraps an encoder's error with what was being done (`?`
/// then makes it an `Error::Codec`).
pub(crate) fn codec<E>(what: &'static str) -> impl FnOnce(E) -> CodecError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| CodecError::caused_by(what, e)
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "cannot encode or decode: {}: {source}", self.what),
            None => write!(f, "cannot encode or decode: {}", self.what),
        }
    }
}

impl fmt::Debug for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodecError")
            .field("what", &self.what)
            .field("source", &self.source.as_ref().map(ToString::to_string))
            .finish()
    }
}

impl std::error::Error for CodecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Equal when they say the same (what, and the source's message).
impl PartialEq for CodecError {
    fn eq(&self, other: &CodecError) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for CodecError {}

/// An `io::Error` that can be cloned and compared (by kind, code and message), as the
/// connection errors hold it.
#[derive(Clone, Debug)]
pub struct OsError(pub Arc<io::Error>);

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for OsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl PartialEq for OsError {
    fn eq(&self, other: &OsError) -> bool {
        same_io(&self.0, &other.0)
    }
}

impl Eq for OsError {}

impl From<io::Error> for OsError {
    fn from(e: io::Error) -> OsError {
        OsError(Arc::new(e))
    }
}

/// An OS error of a transport, or another error of pool-ipc's as the source of one.
pub(crate) fn transport_io<E: std::error::Error + Send + Sync + 'static>(e: E) -> OsError {
    OsError::from(io::Error::other(e))
}

/// Whether two OS errors say the same: kind, code and message.
pub(crate) fn same_io(a: &io::Error, b: &io::Error) -> bool {
    a.kind() == b.kind() && a.raw_os_error() == b.raw_os_error() && a.to_string() == b.to_string()
}
