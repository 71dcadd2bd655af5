//! The error vocabulary: every crate's error type classifies itself into an [`ErrorKind`], and
//! the edges (MQTT reason codes, HTTP statuses) map kinds, never individual variants.

/// What kind of failure an error is, independent of the crate that raised it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The caller sent something invalid; retrying the same input fails again.
    InvalidInput,
    /// The caller is not allowed to do this.
    Unauthorized,
    /// The thing asked for does not exist.
    NotFound,
    /// The request conflicts with existing state (for example a field type conflict).
    Conflict,
    /// A resource is temporarily unavailable (overload, shutting down); retrying may help.
    Unavailable,
    /// A bug or an environment failure (disk, permissions) inside Ferrite.
    Internal,
}

/// Implemented by every crate's error type.
pub trait Classify {
    /// The kind of this error.
    fn kind(&self) -> ErrorKind;
    /// Whether retrying the same operation later may succeed.
    fn retryable(&self) -> bool {
        matches!(self.kind(), ErrorKind::Unavailable)
    }
}
