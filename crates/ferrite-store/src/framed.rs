//! The store's small metadata files (`catalog.bin`, `latest.bin`): a header and a postcard
//! payload, replaced atomically.
//!
//! ```text
//! magic: 4 bytes | version: u16 LE | reserved: u16 = 0 | len: u32 LE | crc32: u32 LE | payload
//! ```
//!
//! Written to `{name}.tmp`, fsynced, renamed over `{name}`, and the folder fsynced, so a crash
//! leaves the old file or the new one, never a mix.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::catalog::sync_dir;
use crate::error::StoreError;

const HEADER_LEN: usize = 16;

/// One kind of file: its magic, format version and name in messages.
pub(crate) struct Format {
    pub(crate) magic: &'static [u8; 4],
    pub(crate) version: u16,
    pub(crate) what: &'static str,
}

impl Format {
    /// Write `value` durably to `root/name`.
    pub(crate) fn write<T: Serialize>(
        &self,
        root: &Path,
        name: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let payload =
            postcard::to_allocvec(value).map_err(|e| StoreError::Encode(e.to_string()))?;
        let len = u32::try_from(payload.len())
            .map_err(|_| StoreError::Encode(format!("the {} exceeds 4 GiB", self.what)))?;
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.extend_from_slice(self.magic);
        bytes.extend_from_slice(&self.version.to_le_bytes());
        bytes.extend_from_slice(&0u16.to_le_bytes());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let tmp = root.join(format!("{name}.tmp"));
        let path = root.join(name);
        let mut f = File::create(&tmp).map_err(|e| StoreError::io("creating", &tmp, e))?;
        f.write_all(&bytes)
            .map_err(|e| StoreError::io("writing", &tmp, e))?;
        f.sync_all()
            .map_err(|e| StoreError::io("fsyncing", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| StoreError::io("renaming", &tmp, e))?;
        sync_dir(root)
    }

    /// The payload of a file's `bytes`, once magic, version, length and checksum are right;
    /// otherwise why not.
    pub(crate) fn payload<'a>(&self, bytes: &'a [u8]) -> Result<&'a [u8], String> {
        self.payload_since(bytes, self.version).map(|(_, p)| p)
    }

    /// The format version and payload of a file written in any version from `oldest` to
    /// this one, once magic, length and checksum are right; otherwise why not.
    pub(crate) fn payload_since<'a>(
        &self,
        bytes: &'a [u8],
        oldest: u16,
    ) -> Result<(u16, &'a [u8]), String> {
        if bytes.len() < HEADER_LEN || &bytes[..4] != self.magic {
            return Err(format!("not a Ferrite {}", self.what));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if !(oldest..=self.version).contains(&version) {
            let reads = if oldest == self.version {
                self.version.to_string()
            } else {
                format!("{oldest} to {}", self.version)
            };
            return Err(format!(
                "{} format version {version} is not supported (this build reads {reads})",
                self.what
            ));
        }
        let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        let crc = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        bytes
            .get(HEADER_LEN..HEADER_LEN.saturating_add(len))
            .filter(|p| crc32fast::hash(p) == crc)
            .map(|p| (version, p))
            .ok_or_else(|| format!("the {} is damaged (length or checksum)", self.what))
    }
}
