//! [`FleetError`], the one error type of this crate, and its [`Classify`] mapping.

use std::path::PathBuf;

use ferrite_core::{Classify, ErrorKind};

/// Everything that can go wrong in the fleet layer.
///
/// Edges map the [`ErrorKind`] (via [`Classify`]) to HTTP statuses or MQTT reason codes; the
/// variants carry the context an operator needs to fix the input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// A field of the request is invalid.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which field or input.
        what: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// The object asked for does not exist.
    #[error("{what} {id:?} not found")]
    NotFound {
        /// What kind of object (device, credential, policy …).
        what: &'static str,
        /// Its identifier.
        id: String,
    },
    /// An object with this identifier exists already.
    #[error("{what} {id:?} already exists")]
    AlreadyExists {
        /// What kind of object.
        what: &'static str,
        /// Its identifier.
        id: String,
    },
    /// The request conflicts with the current state (for example: no CA configured, too many
    /// credentials on one device).
    #[error("{0}")]
    Conflict(String),
    /// A claim token is unknown or revoked.
    #[error("claim token is not valid")]
    ClaimInvalid,
    /// A claim token has expired.
    #[error("claim token has expired")]
    ClaimExpired,
    /// A claim token has been used as often as it allows.
    #[error("claim token has been used up")]
    ClaimExhausted,
    /// A certificate or certificate request could not be used.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The embedded database failed.
    #[error("fleet database: {0}")]
    Storage(#[from] Box<redb::Error>),
    /// A stored record could not be decoded: a bug or a damaged file.
    #[error("fleet database record {what} is damaged: {reason}")]
    Corrupt {
        /// Which record.
        what: String,
        /// The decoding error.
        reason: String,
    },
    /// The data folder is written by a newer Ferrite.
    #[error("fleet database format {found} is newer than this build supports ({supported})")]
    NewerFormat {
        /// Format version found on disk.
        found: u32,
        /// Newest format this build reads.
        supported: u32,
    },
    /// A file of the data folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A cryptographic primitive failed (no randomness, key generation failed).
    #[error("crypto: {0}")]
    Crypto(String),
}

impl FleetError {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            what,
            id: id.into(),
        }
    }

    pub(crate) fn exists(what: &'static str, id: impl Into<String>) -> Self {
        Self::AlreadyExists {
            what,
            id: id.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for FleetError {
            fn from(e: $t) -> Self {
                Self::Storage(Box::new(redb::Error::from(e)))
            }
        }
    )*};
}

from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
);

impl Classify for FleetError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid { .. } | Self::Certificate(_) => ErrorKind::InvalidInput,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::AlreadyExists { .. } | Self::Conflict(_) => ErrorKind::Conflict,
            Self::ClaimInvalid | Self::ClaimExpired | Self::ClaimExhausted => {
                ErrorKind::Unauthorized
            }
            Self::Storage(e) => match **e {
                redb::Error::DatabaseAlreadyOpen => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            Self::Corrupt { .. } | Self::NewerFormat { .. } | Self::Io { .. } | Self::Crypto(_) => {
                ErrorKind::Internal
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(
            FleetError::invalid("tag", "x").kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            FleetError::not_found("device", "d").kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            FleetError::exists("device", "d").kind(),
            ErrorKind::Conflict
        );
        assert_eq!(FleetError::ClaimExpired.kind(), ErrorKind::Unauthorized);
        assert_eq!(
            FleetError::from(redb::Error::DatabaseAlreadyOpen).kind(),
            ErrorKind::Unavailable
        );
        assert!(FleetError::from(redb::Error::DatabaseAlreadyOpen).retryable());
        assert!(!FleetError::ClaimInvalid.retryable());
    }
}
