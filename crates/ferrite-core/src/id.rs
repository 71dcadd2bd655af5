//! Validated identifiers: [`DeviceId`] and [`Measurement`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier is empty.
    #[error("{what} must not be empty")]
    Empty {
        /// Which identifier.
        what: &'static str,
    },
    /// The identifier is longer than allowed.
    #[error("{what} is {len} bytes long; the maximum is {max}")]
    TooLong {
        /// Which identifier.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The maximum length in bytes.
        max: usize,
    },
    /// The identifier contains a character that is not allowed.
    #[error("{what} contains {ch:?}; allowed are {allowed}")]
    BadChar {
        /// Which identifier.
        what: &'static str,
        /// The offending character.
        ch: char,
        /// The allowed characters, for the message.
        allowed: &'static str,
    },
}

/// The identity of one device: 1–128 bytes of `A-Z a-z 0-9 _ - . :`.
///
/// The character set keeps a device id usable unescaped as an MQTT topic level, a file name
/// and a SQL string literal.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl DeviceId {
    /// Longest accepted device id, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validate and wrap a device id.
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        check(
            &id,
            "device id",
            Self::MAX_LEN,
            "A-Z a-z 0-9 _ - . :",
            |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'),
        )?;
        Ok(Self(id))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DeviceId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<DeviceId> for String {
    fn from(value: DeviceId) -> Self {
        value.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a measurement, which is the name of its SQL table: 1–64 bytes of
/// `a-z A-Z 0-9 _`, not starting with a digit, so it needs no quoting in SQL.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Measurement(String);

impl Measurement {
    /// Longest accepted measurement name, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Validate and wrap a measurement name.
    pub fn new(name: impl Into<String>) -> Result<Self, IdError> {
        let name = name.into();
        check(&name, "measurement", Self::MAX_LEN, "a-z A-Z 0-9 _", |c| {
            c.is_ascii_alphanumeric() || c == '_'
        })?;
        if let Some(first) = name.chars().next().filter(char::is_ascii_digit) {
            return Err(IdError::BadChar {
                what: "measurement",
                ch: first,
                allowed: "a letter or _ first",
            });
        }
        Ok(Self(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Measurement {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Measurement> for String {
    fn from(value: Measurement) -> Self {
        value.0
    }
}

impl fmt::Display for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check(
    s: &str,
    what: &'static str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    if s.len() > max {
        return Err(IdError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    match s.chars().find(|c| !ok(*c)) {
        Some(ch) => Err(IdError::BadChar { what, ch, allowed }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        assert!(DeviceId::new("truck-17.a:b_c").is_ok());
        assert_eq!(DeviceId::new(""), Err(IdError::Empty { what: "device id" }));
        assert!(matches!(
            DeviceId::new("a/b"),
            Err(IdError::BadChar { ch: '/', .. })
        ));
        assert!(matches!(
            DeviceId::new("x".repeat(129)),
            Err(IdError::TooLong { len: 129, .. })
        ));
    }

    #[test]
    fn measurements() {
        assert!(Measurement::new("engine_2").is_ok());
        assert!(Measurement::new("2engine").is_err());
        assert!(Measurement::new("eng-ine").is_err());
    }
}
