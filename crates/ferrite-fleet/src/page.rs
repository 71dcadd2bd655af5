//! Cursor pagination: [`Page`] and the opaque [`Cursor`].
//!
//! A cursor names the last item returned (a device id, an audit key …), hex-encoded so callers
//! treat it as opaque. Listing resumes strictly after it, so inserts and deletes between two
//! pages never repeat or skip an item that existed throughout.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::FleetError;
use crate::secret::encode_hex;

/// Largest page any list returns, whatever the caller asks for.
pub const MAX_PAGE: usize = 1000;

/// An opaque position in a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(String);

impl Cursor {
    pub(crate) fn from_key(key: &[u8]) -> Self {
        Self(encode_hex(key))
    }

    pub(crate) fn key(&self) -> Result<Vec<u8>, FleetError> {
        let bad = || FleetError::invalid("cursor", "not a cursor this server returned");
        let s = self.0.as_bytes();
        if !s.len().is_multiple_of(2) {
            return Err(bad());
        }
        s.chunks_exact(2)
            .map(|p| {
                let hi = char::from(p[0]).to_digit(16).ok_or_else(bad)?;
                let lo = char::from(p[1]).to_digit(16).ok_or_else(bad)?;
                u8::try_from(hi * 16 + lo).map_err(|_| bad())
            })
            .collect()
    }

    pub(crate) fn key_str(&self) -> Result<String, FleetError> {
        String::from_utf8(self.key()?)
            .map_err(|_| FleetError::invalid("cursor", "not a cursor this server returned"))
    }

    /// The cursor as text, for a URL query parameter.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A cursor received back from a client.
    pub fn parse(s: impl Into<String>) -> Self {
        Self(s.into())
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Page<T> {
    /// The items, in key order.
    pub items: Vec<T>,
    /// Where the next page starts; `None` when this is the last page.
    pub next: Option<Cursor>,
}

/// Clamp a requested page size to `1..=MAX_PAGE`.
pub(crate) fn clamp_limit(limit: usize) -> usize {
    limit.clamp(1, MAX_PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_garbage() {
        let c = Cursor::from_key(b"dev-1");
        assert_eq!(c.key_str().expect("ok"), "dev-1");
        assert_eq!(Cursor::parse(c.as_str()), c);
        assert!(Cursor::parse("xyz").key().is_err());
        assert!(Cursor::parse("abc").key().is_err());
        assert_eq!(clamp_limit(0), 1);
        assert_eq!(clamp_limit(1_000_000), MAX_PAGE);
    }
}
