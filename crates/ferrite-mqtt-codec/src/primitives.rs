//! Wire primitives shared by every packet: Variable Byte Integers, big-endian integers,
//! UTF-8 Encoded Strings, Binary Data, a bounds-checked [`Reader`] for decoding and the
//! [`Sink`] trait that lets one encoding routine both measure and write a packet.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};

/// Largest value a Variable Byte Integer can carry (four bytes of seven bits).
pub(crate) const MAX_VARINT: u32 = 268_435_455;

/// Number of bytes `value` takes as a Variable Byte Integer (values above
/// [`MAX_VARINT`] are rejected by [`write_varint`] before this matters).
pub(crate) const fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Parse a Variable Byte Integer from the front of `buf`.
///
/// `Ok(None)` if `buf` ends before the integer does; otherwise the value and its length.
/// Rejects encodings longer than four bytes and non-minimal encodings (MQTT-1.5.5-1).
pub(crate) fn parse_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (i, &byte) in buf.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(DecodeError::MalformedPacket(
                    "variable byte integer is not minimally encoded",
                ));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::MalformedPacket(
            "variable byte integer longer than 4 bytes",
        ))
    } else {
        Ok(None)
    }
}

/// Somewhere encoded bytes go: a real buffer, or a [`Counter`] that only measures.
///
/// Every packet is encoded by one generic routine run twice, once into a `Counter` (to
/// learn the remaining length, and to validate) and once into the output buffer, so the
/// length computation can never disagree with the bytes written.
pub(crate) trait Sink {
    /// Append raw bytes.
    fn write_slice(&mut self, bytes: &[u8]);

    /// Append one byte.
    fn write_u8(&mut self, value: u8) {
        self.write_slice(&[value]);
    }

    /// Append a big-endian Two Byte Integer.
    fn write_u16(&mut self, value: u16) {
        self.write_slice(&value.to_be_bytes());
    }

    /// Append a big-endian Four Byte Integer.
    fn write_u32(&mut self, value: u32) {
        self.write_slice(&value.to_be_bytes());
    }
}

impl Sink for BytesMut {
    fn write_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A [`Sink`] that only counts bytes.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    /// Bytes "written" so far.
    pub(crate) len: usize,
}

impl Sink for Counter {
    fn write_slice(&mut self, bytes: &[u8]) {
        self.len = self.len.saturating_add(bytes.len());
    }
}

/// Append `value` as a Variable Byte Integer.
pub(crate) fn write_varint<S: Sink>(
    sink: &mut S,
    field: &'static str,
    value: usize,
) -> Result<(), EncodeError> {
    let mut rest = u32::try_from(value)
        .ok()
        .filter(|v| *v <= MAX_VARINT)
        .ok_or(EncodeError::TooLarge { field, value })?;
    loop {
        // Truncation intended: the low seven bits.
        let mut byte = (rest & 0x7F) as u8;
        rest >>= 7;
        if rest > 0 {
            byte |= 0x80;
        }
        sink.write_u8(byte);
        if rest == 0 {
            return Ok(());
        }
    }
}

/// The two-byte length prefix for a string or binary field.
fn length_prefix(field: &'static str, len: usize) -> Result<u16, EncodeError> {
    u16::try_from(len).map_err(|_| EncodeError::FieldTooLong { field, len })
}

/// Append Binary Data: a two-byte length then the bytes.
pub(crate) fn write_binary<S: Sink>(
    sink: &mut S,
    field: &'static str,
    value: &[u8],
) -> Result<(), EncodeError> {
    sink.write_u16(length_prefix(field, value.len())?);
    sink.write_slice(value);
    Ok(())
}

/// Append a UTF-8 Encoded String, refusing U+0000 which the receiver would reject.
pub(crate) fn write_string<S: Sink>(
    sink: &mut S,
    field: &'static str,
    value: &str,
) -> Result<(), EncodeError> {
    if value.contains('\0') {
        return Err(EncodeError::NullCharacter { field });
    }
    write_binary(sink, field, value.as_bytes())
}

/// Error for any read past the end of the packet (or of a length-delimited section).
const TRUNCATED: DecodeError = DecodeError::MalformedPacket("field exceeds remaining length");

/// Bounds-checked reader over one packet body (or a length-delimited part of one).
///
/// Holds [`Bytes`] so binary fields and payloads are zero-copy slices of the frame.
#[derive(Debug)]
pub(crate) struct Reader {
    /// The unread bytes.
    buf: Bytes,
}

impl Reader {
    /// A reader over `buf`.
    pub(crate) const fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    /// True when every byte has been read.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Unread byte count.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Take the next `len` bytes.
    pub(crate) fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if len > self.buf.len() {
            return Err(TRUNCATED);
        }
        Ok(self.buf.split_to(len))
    }

    /// Take everything that is left (a PUBLISH payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// A reader over the next `len` bytes, which are consumed from this one.
    pub(crate) fn sub_reader(&mut self, len: usize) -> Result<Self, DecodeError> {
        self.take(len).map(Self::new)
    }

    /// Fail unless every byte has been read.
    pub(crate) fn expect_end(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::MalformedPacket(
                "unexpected bytes after the end of the packet",
            ))
        }
    }

    /// Read one byte.
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u8())
    }

    /// Read a big-endian Two Byte Integer.
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u16())
    }

    /// Read a big-endian Four Byte Integer.
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u32())
    }

    /// Read a Variable Byte Integer.
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        match parse_varint(&self.buf)? {
            Some((value, len)) => {
                self.buf.advance(len);
                Ok(value)
            }
            None => Err(TRUNCATED),
        }
    }

    /// Read a Variable Byte Integer used as a length.
    pub(crate) fn varint_len(&mut self) -> Result<usize, DecodeError> {
        // u32 -> usize is lossless on every platform this crate supports (>= 32 bit).
        self.varint().map(|v| v as usize)
    }

    /// Read Binary Data (two-byte length prefix).
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// Read a UTF-8 Encoded String; rejects invalid UTF-8 and U+0000.
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        let text = std::str::from_utf8(&raw).map_err(|_| DecodeError::InvalidUtf8)?;
        if text.contains('\0') {
            return Err(DecodeError::MalformedPacket(
                "string contains the null character U+0000",
            ));
        }
        Ok(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn encode_varint(value: usize) -> Vec<u8> {
        let mut out = BytesMut::new();
        write_varint(&mut out, "test", value).unwrap();
        out.to_vec()
    }

    #[test]
    fn varint_spec_boundaries() {
        // The boundary table from MQTT 5.0 section 1.5.5.
        let cases: [(usize, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (value, bytes) in cases {
            assert_eq!(encode_varint(value), bytes, "{value}");
            assert_eq!(varint_len(value), bytes.len());
            assert_eq!(
                parse_varint(bytes).unwrap(),
                Some((u32::try_from(value).unwrap(), bytes.len()))
            );
        }
    }

    #[test]
    fn varint_errors() {
        assert!(matches!(
            write_varint(&mut Counter::default(), "x", 268_435_456),
            Err(EncodeError::TooLarge { .. })
        ));
        assert_eq!(parse_varint(&[0x80, 0x80]).unwrap(), None);
        assert_eq!(parse_varint(&[]).unwrap(), None);
        assert!(matches!(
            parse_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(DecodeError::MalformedPacket(_))
        ));
        assert!(matches!(
            parse_varint(&[0x80, 0x00]),
            Err(DecodeError::MalformedPacket(_))
        ));
    }

    #[test]
    fn strings_are_checked() {
        let mut r = Reader::new(Bytes::from_static(&[0, 2, 0xC3, 0x28]));
        assert_eq!(r.string(), Err(DecodeError::InvalidUtf8));
        let mut r = Reader::new(Bytes::from_static(&[0, 2, b'a', 0]));
        assert!(matches!(r.string(), Err(DecodeError::MalformedPacket(_))));
        let mut r = Reader::new(Bytes::from_static(&[0, 5, b'a']));
        assert!(matches!(r.string(), Err(DecodeError::MalformedPacket(_))));
        let mut r = Reader::new(Bytes::from_static(&[0, 2, 0xC3, 0xA9]));
        assert_eq!(r.string().unwrap(), "é");
        assert!(matches!(
            write_string(&mut Counter::default(), "s", "a\0"),
            Err(EncodeError::NullCharacter { .. })
        ));
        assert!(matches!(
            write_binary(&mut Counter::default(), "b", &[0; 65_536]),
            Err(EncodeError::FieldTooLong { len: 65_536, .. })
        ));
    }
}
