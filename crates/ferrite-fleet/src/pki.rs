//! X.509 for mutual TLS: the fleet CA, device certificates, mapping a presented certificate
//! to its device, and revocation.
//!
//! The CA is created by [`Fleet::ca_init`] (ECDSA P-256, like `ferrite cert ca init`) or
//! imported from an operator's PEM files ([`Fleet::ca_import`]); either way it lives in
//! `ca/ca.pem` and `ca/ca.key` (0600) in the fleet folder, and the server's rustls verifier
//! trusts `ca.pem` for client certificates. Chain validation is rustls's job; this module only
//! maps and revokes.
//!
//! A device certificate names its device twice: subject CN = device id and a URI SAN
//! `urn:ferrite:device:{id}`. Mapping prefers the SAN (so an operator CA may use a friendly CN)
//! and falls back to the CN.
//!
//! Revocation is checked on every connect ([`Fleet::is_revoked`]): a certificate we issued is
//! revoked if its record says so; one we did not issue (an operator CA's) is revoked if its
//! serial was revoked or its device's *cut-off* time (set by revoking all of a device's
//! certificates, or deleting the device) is at or after its notBefore.

use std::path::Path;

use ferrite_core::{DeviceId, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;

use crate::audit::Actor;
use crate::fleet::{FleetEvent, Tx, lock, read, write};
use crate::schema::{CERT_CUTOFFS, CERTS, CERTS_BY_DEVICE, DEVICES, from_json, plus, to_json};
use crate::secret::{encode_hex, write_private};
use crate::{Fleet, FleetError};

/// Prefix of the URI SAN that names a device.
pub const DEVICE_SAN_PREFIX: &str = "urn:ferrite:device:";

const CA_DIR: &str = "ca";
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";

/// The loaded CA.
pub(crate) struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Load `dir/ca/` if a CA was created or imported.
    pub(crate) fn load(dir: &Path) -> Result<Option<Self>, FleetError> {
        let cert_path = dir.join(CA_DIR).join(CA_CERT);
        let key_path = dir.join(CA_DIR).join(CA_KEY);
        let cert_pem = match std::fs::read_to_string(&cert_path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FleetError::io(cert_path, e)),
        };
        let key_pem =
            std::fs::read_to_string(&key_path).map_err(|e| FleetError::io(&key_path, e))?;
        Self::from_pem(&cert_pem, &key_pem).map(Some)
    }

    fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, FleetError> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| FleetError::Certificate(format!("CA key: {e}")))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| FleetError::Certificate(format!("CA certificate PEM: {e}")))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| FleetError::Certificate(format!("CA certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(FleetError::Certificate(
                "the certificate is not a CA (basicConstraints CA:false)".into(),
            ));
        }
        if *cert.public_key().subject_public_key.data != *key.public_key_raw() {
            return Err(FleetError::Certificate(
                "the key does not belong to the certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| FleetError::Certificate(format!("CA certificate: {e}")))?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }
}

/// A certificate issued to a device.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// The device it names.
    pub device: DeviceId,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8) — only when the server generated it
    /// ([`Fleet::issue_cert`]); never stored.
    pub key_pem: Option<String>,
    /// The CA certificate, PEM, for the device's chain.
    pub ca_pem: String,
    /// End of validity.
    pub not_after: Timestamp,
}

/// A certificate as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Its device, when known.
    pub device: Option<DeviceId>,
    /// Whether this CA issued it (`false`: only its revocation is recorded).
    pub issued: bool,
    /// When it was issued.
    pub issued_at: Option<Timestamp>,
    /// End of validity.
    pub not_after: Option<Timestamp>,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
}

/// What a presented client certificate says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresentedCert {
    /// The device it names.
    pub device: DeviceId,
    /// Serial number, lowercase hex without leading zero bytes.
    pub serial: String,
    /// Start of validity (second precision).
    pub not_before: Timestamp,
}

/// Read the device id, serial and notBefore of a client certificate (DER). Pure.
///
/// The device is the URI SAN `urn:ferrite:device:{id}` if present (two different ones are an
/// error), else the subject CN.
pub fn parse_client_cert(der: &[u8]) -> Result<PresentedCert, FleetError> {
    let bad = |m: String| FleetError::Certificate(m);
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| bad(format!("unreadable certificate: {e}")))?;
    let mut from_san: Option<&str> = None;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad(format!("subject alternative names: {e}")))?;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let GeneralName::URI(uri) = name
            && let Some(id) = uri.strip_prefix(DEVICE_SAN_PREFIX)
        {
            if from_san.is_some_and(|prev| prev != id) {
                return Err(bad("the certificate names two different devices".into()));
            }
            from_san = Some(id);
        }
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok());
    let id = from_san
        .or(cn)
        .ok_or_else(|| bad("the certificate names no device (no device SAN, no CN)".into()))?;
    let device = DeviceId::new(id).map_err(|e| bad(format!("the certificate's device id: {e}")))?;
    let nb = cert.validity().not_before.timestamp();
    Ok(PresentedCert {
        device,
        serial: normalize_serial_bytes(cert.raw_serial()),
        not_before: Timestamp::from_nanos(nb.saturating_mul(1_000_000_000)),
    })
}

fn normalize_serial_bytes(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    encode_hex(&raw[start..])
}

/// Accept `0A:1b:…`, `0x0a1b…` or plain hex; lowercase, no leading zero bytes.
fn normalize_serial(s: &str) -> Result<String, FleetError> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    let hex = if !hex.len().is_multiple_of(2) {
        format!("0{hex}")
    } else {
        hex
    };
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(FleetError::invalid("serial", "expected hexadecimal digits"));
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0))
        .collect();
    Ok(normalize_serial_bytes(&bytes))
}

fn offset_time(t: Timestamp) -> Result<time::OffsetDateTime, FleetError> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.as_nanos()))
        .map_err(|e| FleetError::Certificate(format!("time out of range: {e}")))
}

fn cert_err(e: rcgen::Error) -> FleetError {
    FleetError::Certificate(e.to_string())
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CertRecord {
    serial: String,
    device: Option<DeviceId>,
    issued: bool,
    issued_at: Option<Timestamp>,
    not_after: Option<Timestamp>,
    revoked_at: Option<Timestamp>,
}

impl From<CertRecord> for CertInfo {
    fn from(r: CertRecord) -> Self {
        Self {
            serial: r.serial,
            device: r.device,
            issued: r.issued,
            issued_at: r.issued_at,
            not_after: r.not_after,
            revoked_at: r.revoked_at,
        }
    }
}

/// Mark every certificate of `device` revoked and set its cut-off; returns how many recorded
/// certificates were newly revoked. Emits [`FleetEvent::CertRevoked`] for the device.
pub(crate) fn revoke_device_certs_tx(
    tx: &mut Tx<'_>,
    device: &DeviceId,
) -> Result<usize, FleetError> {
    let serials: Vec<String> = {
        let idx = tx.txn.open_table(CERTS_BY_DEVICE)?;
        let mut v = Vec::new();
        for row in idx.range::<(&str, &str)>((device.as_str(), "")..)? {
            let (k, _) = row?;
            let (d, s) = k.value();
            if d != device.as_str() {
                break;
            }
            v.push(s.to_owned());
        }
        v
    };
    let mut n = 0;
    {
        let mut certs = tx.txn.open_table(CERTS)?;
        for s in &serials {
            let rec = certs.get(s.as_str())?.map(|v| v.value().to_vec());
            let Some(bytes) = rec else { continue };
            let mut rec: CertRecord = from_json(&bytes, s)?;
            if rec.revoked_at.is_none() {
                rec.revoked_at = Some(tx.now);
                certs.insert(s.as_str(), to_json(&rec)?.as_slice())?;
                n += 1;
            }
        }
    }
    tx.txn
        .open_table(CERT_CUTOFFS)?
        .insert(device.as_str(), tx.now.as_nanos())?;
    tx.emit(FleetEvent::CertRevoked {
        device: Some(device.clone()),
        serial: None,
    });
    Ok(n)
}

impl Fleet {
    fn ca(&self) -> Result<std::sync::Arc<Ca>, FleetError> {
        read(&self.inner().ca).clone().ok_or_else(|| {
            FleetError::Conflict("no CA is configured: create one (ca init) or import one".into())
        })
    }

    /// Where the CA certificate (PEM) is kept, for a TLS listener that trusts the fleet's CA.
    /// The file exists once a CA is configured.
    pub fn ca_cert_path(&self) -> std::path::PathBuf {
        self.dir().join(CA_DIR).join(CA_CERT)
    }

    /// The CA certificate (PEM), if a CA is configured.
    pub fn ca_cert_pem(&self) -> Option<String> {
        read(&self.inner().ca).as_ref().map(|c| c.cert_pem.clone())
    }

    /// Create the fleet CA (ECDSA P-256, self-signed, valid for `ca_validity`) under
    /// `ca/` in the fleet folder; returns its certificate PEM. Fails if a CA exists.
    pub fn ca_init(&self, actor: &Actor, common_name: &str) -> Result<String, FleetError> {
        if common_name.is_empty() || common_name.len() > 64 {
            return Err(FleetError::invalid("common name", "must be 1–64 bytes"));
        }
        let _one_at_a_time = lock(&self.inner().ca_admin);
        if read(&self.inner().ca).is_some() {
            return Err(FleetError::Conflict("a CA exists already".into()));
        }
        let now = self.now();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "Ferrite");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = offset_time(now)?;
        params.not_after = offset_time(plus(now, self.config().ca_validity))?;
        params.serial_number = Some(SerialNumber::from_slice(&self.new_serial()?));
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = params.self_signed(&key).map_err(cert_err)?;
        let cert_pem = cert.pem();
        self.store_ca_files(&cert_pem, &key.serialize_pem())?;
        let ca = Ca {
            cert_pem: cert_pem.clone(),
            issuer: Issuer::new(params, key),
        };
        *write(&self.inner().ca) = Some(std::sync::Arc::new(ca));
        self.write(actor, |tx| {
            tx.emit(FleetEvent::CaChanged);
            tx.audit(
                "ca.init",
                "ca",
                serde_json::json!({"common_name": common_name}),
            )
        })?;
        Ok(cert_pem)
    }

    /// Use an operator's CA (certificate and private key, PEM) to issue device certificates.
    /// Checks that it is a CA and that the key matches. Fails if a CA exists.
    pub fn ca_import(
        &self,
        actor: &Actor,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<(), FleetError> {
        let _one_at_a_time = lock(&self.inner().ca_admin);
        if read(&self.inner().ca).is_some() {
            return Err(FleetError::Conflict("a CA exists already".into()));
        }
        let ca = Ca::from_pem(cert_pem, key_pem)?;
        self.store_ca_files(cert_pem, key_pem)?;
        *write(&self.inner().ca) = Some(std::sync::Arc::new(ca));
        self.write(actor, |tx| {
            tx.emit(FleetEvent::CaChanged);
            tx.audit("ca.import", "ca", serde_json::Value::Null)
        })?;
        Ok(())
    }

    fn store_ca_files(&self, cert_pem: &str, key_pem: &str) -> Result<(), FleetError> {
        let dir = self.dir().join(CA_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| FleetError::io(&dir, e))?;
        write_private(&dir.join(CA_KEY), key_pem.as_bytes())?;
        write_private(&dir.join(CA_CERT), cert_pem.as_bytes())
    }

    fn new_serial(&self) -> Result<Vec<u8>, FleetError> {
        let mut b = self.inner().secrets.random_vec(16)?;
        // Positive (top bit clear) and no leading zero byte, so the hex form is canonical.
        b[0] = (b[0] & 0x3f) | 0x40;
        Ok(b)
    }

    fn device_params(
        &self,
        device: &DeviceId,
        now: Timestamp,
    ) -> Result<(CertificateParams, String), FleetError> {
        let serial = self.new_serial()?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, device.as_str());
        p.distinguished_name = dn;
        let uri = format!("{DEVICE_SAN_PREFIX}{device}");
        p.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(cert_err)?)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        p.not_before = offset_time(now)?;
        p.not_after = offset_time(plus(now, self.config().cert_validity))?;
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        Ok((p, encode_hex(&serial)))
    }

    /// Record an issued certificate inside a transaction.
    fn record_cert_tx(
        &self,
        tx: &mut Tx<'_>,
        cert: &IssuedCert,
        action: &str,
    ) -> Result<(), FleetError> {
        if tx
            .txn
            .open_table(DEVICES)?
            .get(cert.device.as_str())?
            .is_none()
        {
            return Err(FleetError::not_found("device", cert.device.as_str()));
        }
        let rec = CertRecord {
            serial: cert.serial.clone(),
            device: Some(cert.device.clone()),
            issued: true,
            issued_at: Some(tx.now),
            not_after: Some(cert.not_after),
            revoked_at: None,
        };
        tx.txn
            .open_table(CERTS)?
            .insert(cert.serial.as_str(), to_json(&rec)?.as_slice())?;
        tx.txn
            .open_table(CERTS_BY_DEVICE)?
            .insert((cert.device.as_str(), cert.serial.as_str()), ())?;
        tx.audit(
            action,
            cert.device.as_str(),
            serde_json::json!({"serial": cert.serial, "not_after": cert.not_after}),
        )
    }

    /// Sign a certificate for `device` from a PEM certificate request. The request's subject
    /// and extensions are ignored: the certificate names the device as described in the
    /// module docs. Its signature is verified (proof of key possession).
    pub(crate) fn sign_csr_inner(
        &self,
        device: &DeviceId,
        csr_pem: &str,
        now: Timestamp,
    ) -> Result<IssuedCert, FleetError> {
        let ca = self.ca()?;
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| FleetError::Certificate(format!("certificate request: {e}")))?;
        let (params, serial) = self.device_params(device, now)?;
        let not_after = plus(now, self.config().cert_validity);
        csr.params = params;
        let cert = csr.signed_by(&ca.issuer).map_err(cert_err)?;
        Ok(IssuedCert {
            device: device.clone(),
            serial,
            cert_pem: cert.pem(),
            key_pem: None,
            ca_pem: ca.cert_pem.clone(),
            not_after,
        })
    }

    /// Issue a certificate and a fresh key for `device` (which must exist). The key is in the
    /// result only.
    pub fn issue_cert(&self, actor: &Actor, device: &DeviceId) -> Result<IssuedCert, FleetError> {
        let ca = self.ca()?;
        let now = self.now();
        let key = KeyPair::generate().map_err(cert_err)?;
        let (params, serial) = self.device_params(device, now)?;
        let cert = params.signed_by(&key, &ca.issuer).map_err(cert_err)?;
        let issued = IssuedCert {
            device: device.clone(),
            serial,
            cert_pem: cert.pem(),
            key_pem: Some(key.serialize_pem()),
            ca_pem: ca.cert_pem.clone(),
            not_after: plus(now, self.config().cert_validity),
        };
        self.write(actor, |tx| self.record_cert_tx(tx, &issued, "cert.issue"))?;
        Ok(issued)
    }

    /// Sign a device's certificate request (PEM); see [`Fleet::issue_cert`].
    pub fn sign_csr(
        &self,
        actor: &Actor,
        device: &DeviceId,
        csr_pem: &str,
    ) -> Result<IssuedCert, FleetError> {
        let issued = self.sign_csr_inner(device, csr_pem, self.now())?;
        self.write(actor, |tx| {
            self.record_cert_tx(tx, &issued, "cert.sign_csr")
        })?;
        Ok(issued)
    }

    /// Inside a claim transaction: sign and record.
    pub(crate) fn sign_csr_tx(
        &self,
        tx: &mut Tx<'_>,
        device: &DeviceId,
        csr_pem: &str,
    ) -> Result<IssuedCert, FleetError> {
        let issued = self.sign_csr_inner(device, csr_pem, tx.now)?;
        self.record_cert_tx(tx, &issued, "cert.sign_csr")?;
        Ok(issued)
    }

    /// The device named by a presented client certificate (DER).
    pub fn device_for_cert(&self, der: &[u8]) -> Result<DeviceId, FleetError> {
        parse_client_cert(der).map(|p| p.device)
    }

    /// Whether a presented client certificate (DER) is revoked; see the module docs.
    pub fn is_revoked(&self, der: &[u8]) -> Result<bool, FleetError> {
        let p = parse_client_cert(der)?;
        self.is_revoked_parsed(&p)
    }

    pub(crate) fn is_revoked_parsed(&self, p: &PresentedCert) -> Result<bool, FleetError> {
        let txn = self.db().begin_read()?;
        let certs = txn.open_table(CERTS)?;
        let rec: Option<CertRecord> = certs
            .get(p.serial.as_str())?
            .map(|v| from_json(v.value(), &p.serial))
            .transpose()?;
        if let Some(r) = &rec {
            if r.revoked_at.is_some() {
                return Ok(true);
            }
            if r.issued {
                return Ok(false);
            }
        }
        let cutoff = txn
            .open_table(CERT_CUTOFFS)?
            .get(p.device.as_str())?
            .map(|v| v.value());
        Ok(cutoff.is_some_and(|c| p.not_before.as_nanos() <= c))
    }

    /// Revoke one certificate by serial (hex; `:` separators allowed). Works for certificates
    /// this CA did not issue too. Emits [`FleetEvent::CertRevoked`].
    pub fn revoke_cert(&self, actor: &Actor, serial: &str) -> Result<(), FleetError> {
        let serial = normalize_serial(serial)?;
        self.write(actor, |tx| {
            let mut certs = tx.txn.open_table(CERTS)?;
            let old: Option<CertRecord> = certs
                .get(serial.as_str())?
                .map(|v| from_json(v.value(), &serial))
                .transpose()?;
            let mut rec = old.unwrap_or(CertRecord {
                serial: serial.clone(),
                device: None,
                issued: false,
                issued_at: None,
                not_after: None,
                revoked_at: None,
            });
            let newly = rec.revoked_at.is_none();
            rec.revoked_at.get_or_insert(tx.now);
            certs.insert(serial.as_str(), to_json(&rec)?.as_slice())?;
            drop(certs);
            if newly {
                tx.emit(FleetEvent::CertRevoked {
                    device: rec.device.clone(),
                    serial: Some(serial.clone()),
                });
            }
            tx.audit(
                "cert.revoke",
                &serial,
                serde_json::json!({"device": rec.device}),
            )
        })
    }

    /// Revoke every certificate of a device, including ones an operator CA issued before now;
    /// returns how many recorded certificates were newly revoked.
    pub fn revoke_device_certs(
        &self,
        actor: &Actor,
        device: &DeviceId,
    ) -> Result<usize, FleetError> {
        self.write(actor, |tx| {
            let n = revoke_device_certs_tx(tx, device)?;
            tx.audit(
                "cert.revoke_device",
                device.as_str(),
                serde_json::json!({"revoked": n}),
            )?;
            Ok(n)
        })
    }

    /// The certificates recorded for a device.
    pub fn list_certs(&self, device: &DeviceId) -> Result<Vec<CertInfo>, FleetError> {
        let txn = self.db().begin_read()?;
        let idx = txn.open_table(CERTS_BY_DEVICE)?;
        let certs = txn.open_table(CERTS)?;
        let mut out = Vec::new();
        for row in idx.range::<(&str, &str)>((device.as_str(), "")..)? {
            let (k, _) = row?;
            let (d, s) = k.value();
            if d != device.as_str() {
                break;
            }
            if let Some(v) = certs.get(s)? {
                out.push(from_json::<CertRecord>(v.value(), s)?.into());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_normalization() {
        assert_eq!(normalize_serial("0A:1B").expect("ok"), "0a1b");
        assert_eq!(normalize_serial("0x00ff").expect("ok"), "ff");
        assert_eq!(normalize_serial("abc").expect("ok"), "0abc");
        assert!(normalize_serial("xyz").is_err());
        assert!(normalize_serial("").is_err());
        assert_eq!(normalize_serial_bytes(&[0, 0]), "00");
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(matches!(
            parse_client_cert(b"not a cert"),
            Err(FleetError::Certificate(_))
        ));
    }

    #[test]
    fn mapping_prefers_san_then_cn() {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Friendly Name");
        p.distinguished_name = dn;
        p.subject_alt_names = vec![SanType::URI(
            format!("{DEVICE_SAN_PREFIX}meter-7")
                .try_into()
                .expect("uri"),
        )];
        let cert = p.self_signed(&key).expect("cert");
        assert_eq!(
            parse_client_cert(cert.der())
                .expect("parse")
                .device
                .as_str(),
            "meter-7"
        );

        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "meter-8");
        p.distinguished_name = dn;
        let cert = p.self_signed(&key).expect("cert");
        assert_eq!(
            parse_client_cert(cert.der())
                .expect("parse")
                .device
                .as_str(),
            "meter-8"
        );

        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![
            SanType::URI(format!("{DEVICE_SAN_PREFIX}a").try_into().expect("uri")),
            SanType::URI(format!("{DEVICE_SAN_PREFIX}b").try_into().expect("uri")),
        ];
        let cert = p.self_signed(&key).expect("cert");
        assert!(parse_client_cert(cert.der()).is_err(), "two devices");

        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "not/a/device");
        p.distinguished_name = dn;
        let cert = p.self_signed(&key).expect("cert");
        assert!(parse_client_cert(cert.der()).is_err(), "invalid id");
    }
}
