//! End-to-end behaviour of the fleet layer through its public API, on a temporary folder and
//! a manual clock: registry, import/export, credentials, certificates, claims, ACL, API tokens,
//! audit, presence, authentication and events.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrite_core::{Classify, DeviceId, ErrorKind, ManualClock, Timestamp};
use ferrite_fleet::*;

const T0: i64 = 1_700_000_000_000_000_000;

fn open(dir: &Path) -> (Fleet, ManualClock) {
    open_with(dir, FleetConfig::default())
}

fn open_with(dir: &Path, config: FleetConfig) -> (Fleet, ManualClock) {
    let clock = ManualClock::new(Timestamp::from_nanos(T0));
    let fleet = Fleet::open_with_clock(dir, config, Arc::new(clock.clone())).unwrap();
    (fleet, clock)
}

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn op() -> Actor {
    Actor::operator("tester")
}

fn advance(clock: &ManualClock, d: Duration) {
    let now = ferrite_core::Clock::now(clock);
    clock.set(Timestamp::from_nanos(
        now.as_nanos() + i64::try_from(d.as_nanos()).unwrap(),
    ));
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_nanos(T0 + secs * 1_000_000_000)
}

fn device(
    fleet: &Fleet,
    name: &str,
    groups: &[&str],
    ty: Option<&str>,
    tags: &[(&str, &str)],
) -> Device {
    let new = NewDevice {
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        device_type: ty.map(str::to_owned),
        tags: tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..NewDevice::new(id(name))
    };
    fleet.create_device(&op(), new).unwrap()
}

fn attempt<'a>(
    client_id: &'a str,
    username: Option<&'a str>,
    password: Option<&'a [u8]>,
    cert: Option<&'a [u8]>,
) -> ConnectAttempt<'a> {
    ConnectAttempt {
        client_id,
        username,
        password,
        peer: ip(1),
        client_cert: cert,
    }
}

fn peer() -> SocketAddr {
    "192.0.2.10:50000".parse().unwrap()
}

fn ip(n: u8) -> IpAddr {
    IpAddr::from([192, 0, 2, n])
}

fn drain(rx: &mut tokio::sync::broadcast::Receiver<FleetEvent>) -> Vec<FleetEvent> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    p.contents
}

// ---------------------------------------------------------------------------------------
// Registry

#[test]
fn registry_crud_and_persistence_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (fleet, clock) = open(dir.path());
        let d = device(
            &fleet,
            "pump-1",
            &["pumps"],
            Some("pump"),
            &[("site", "berlin")],
        );
        assert_eq!(d.name, "pump-1");
        assert_eq!(d.created, at(0));
        assert!(d.enabled);
        let err = fleet
            .create_device(&op(), NewDevice::new(id("pump-1")))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);

        advance(&clock, Duration::from_secs(10));
        let patch = DevicePatch {
            name: Some("Pump one".into()),
            firmware_version: Some(Some("1.2.3".into())),
            ..DevicePatch::default()
        };
        let d = fleet.update_device(&op(), &id("pump-1"), &patch).unwrap();
        assert_eq!(d.updated, at(10));
        assert_eq!(d.created, at(0));
        // The same patch again changes nothing, not even `updated`.
        advance(&clock, Duration::from_secs(10));
        let again = fleet.update_device(&op(), &id("pump-1"), &patch).unwrap();
        assert_eq!(again.updated, at(10));

        let bad = DevicePatch {
            groups: Some(BTreeSet::from(["a/b".to_owned()])),
            ..DevicePatch::default()
        };
        let err = fleet.update_device(&op(), &id("pump-1"), &bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(
            fleet
                .update_device(&op(), &id("nope"), &patch)
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );

        device(&fleet, "pump-2", &[], None, &[]);
        fleet.delete_device(&op(), &id("pump-2")).unwrap();
        assert!(fleet.get_device(&id("pump-2")).unwrap().is_none());
        assert_eq!(
            fleet
                .delete_device(&op(), &id("pump-2"))
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
    }
    // Reopen: everything is still there.
    let (fleet, _clock) = open(dir.path());
    let d = fleet.get_device(&id("pump-1")).unwrap().unwrap();
    assert_eq!(d.name, "Pump one");
    assert_eq!(d.firmware_version.as_deref(), Some("1.2.3"));
    assert_eq!(d.tags.get("site").map(String::as_str), Some("berlin"));
    assert_eq!(d.updated, at(10));
    assert!(fleet.get_device(&id("pump-2")).unwrap().is_none());
}

#[test]
fn listing_filters_and_stable_cursor_pagination() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, clock) = open(dir.path());
    for i in [1, 3, 5, 7, 9] {
        let groups: &[&str] = if i % 3 == 0 { &["g3"] } else { &[] };
        device(
            &fleet,
            &format!("d{i}"),
            groups,
            Some(if i < 5 { "a" } else { "b" }),
            &[("odd", "yes")],
        );
    }
    fleet.set_enabled(&op(), &id("d7"), false).unwrap();
    fleet.connected(&id("d5"), 1, peer(), at(1));

    let all = DeviceFilter::default();
    let p1 = fleet.list_devices(&all, None, 2).unwrap();
    assert_eq!(ids(&p1.items), ["d1", "d3"]);
    let cursor = p1.next.clone().unwrap();
    // Inserts before and after the cursor between pages: no repeats, no skips of old items.
    advance(&clock, Duration::from_secs(1));
    device(&fleet, "d0", &[], None, &[]);
    device(&fleet, "d4", &[], None, &[]);
    let p2 = fleet.list_devices(&all, Some(&cursor), 2).unwrap();
    assert_eq!(ids(&p2.items), ["d4", "d5"]);
    let p3 = fleet.list_devices(&all, p2.next.as_ref(), 2).unwrap();
    assert_eq!(ids(&p3.items), ["d7", "d9"]);
    assert!(p3.next.is_none());
    // A cursor survives being sent to a client and back.
    let c = Cursor::parse(cursor.as_str().to_owned());
    assert_eq!(
        ids(&fleet.list_devices(&all, Some(&c), 1).unwrap().items),
        ["d4"]
    );
    assert!(
        fleet
            .list_devices(&all, Some(&Cursor::parse("zz")), 1)
            .is_err()
    );

    let by = |f: DeviceFilter| -> Vec<String> {
        let page = fleet.list_devices(&f, None, 100).unwrap();
        ids(&page.items).into_iter().map(str::to_owned).collect()
    };
    assert_eq!(
        by(DeviceFilter {
            device_type: Some("b".into()),
            ..DeviceFilter::default()
        }),
        ["d5", "d7", "d9"]
    );
    assert_eq!(
        by(DeviceFilter {
            group: Some("g3".into()),
            ..DeviceFilter::default()
        }),
        ["d3", "d9"]
    );
    assert_eq!(
        by(DeviceFilter {
            enabled: Some(false),
            ..DeviceFilter::default()
        }),
        ["d7"]
    );
    assert_eq!(
        by(DeviceFilter {
            online: Some(true),
            ..DeviceFilter::default()
        }),
        ["d5"]
    );
    assert_eq!(
        by(DeviceFilter {
            tags: BTreeMap::from([("odd".into(), "yes".into())]),
            device_type: Some("a".into()),
            ..DeviceFilter::default()
        }),
        ["d1", "d3"]
    );
    assert_eq!(
        by(DeviceFilter {
            id_prefix: Some("d".into()),
            online: Some(false),
            enabled: Some(true),
            ..DeviceFilter::default()
        }),
        ["d0", "d1", "d3", "d4", "d9"]
    );
    // Filtered paging: the cursor is the last returned id.
    let f = DeviceFilter {
        device_type: Some("b".into()),
        ..DeviceFilter::default()
    };
    let p = fleet.list_devices(&f, None, 1).unwrap();
    let p = fleet.list_devices(&f, p.next.as_ref(), 1).unwrap();
    assert_eq!(ids(&p.items), ["d7"]);
}

fn ids(items: &[Device]) -> Vec<&str> {
    items.iter().map(|d| d.id.as_str()).collect()
}

// ---------------------------------------------------------------------------------------
// Import / export

#[test]
fn ndjson_import_is_idempotent_and_reports_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, clock) = open(dir.path());
    let mut input = String::new();
    for i in 0..600 {
        input.push_str(&format!(
            r#"{{"id":"m{i:04}","type":"meter","groups":["g{}"],"tags":{{"site":"s{}"}}}}"#,
            i % 3,
            i % 5
        ));
        input.push('\n');
    }
    input.push_str("\n{\"id\":\"bad/id\"}\nnot json\n{\"id\":\"x1\",\"groups\":[\"+\"]}\n");
    let mut calls = Vec::new();
    let r = fleet
        .import(&op(), ImportFormat::Ndjson, input.as_bytes(), |p| {
            calls.push(p.clone())
        })
        .unwrap();
    assert_eq!(
        (r.created, r.updated, r.unchanged, r.failed),
        (600, 0, 0, 3)
    );
    assert_eq!(r.records, 603);
    let lines: Vec<u64> = r.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [602, 603, 604]);
    assert!(calls.len() >= 3, "progress after each batch");
    assert!(calls.windows(2).all(|w| w[0].created <= w[1].created));
    let before = fleet.get_device(&id("m0007")).unwrap().unwrap();

    advance(&clock, Duration::from_secs(60));
    let audit_before = fleet
        .audit(&AuditQuery {
            limit: 1000,
            ..AuditQuery::default()
        })
        .unwrap()
        .items
        .len();
    let r2 = fleet
        .import(&op(), ImportFormat::Ndjson, input.as_bytes(), |_| {})
        .unwrap();
    assert_eq!(
        (r2.created, r2.updated, r2.unchanged, r2.failed),
        (0, 0, 600, 3)
    );
    let after = fleet.get_device(&id("m0007")).unwrap().unwrap();
    assert_eq!(after, before, "nothing changed, `updated` not bumped");
    let audit_after = fleet
        .audit(&AuditQuery {
            limit: 1000,
            ..AuditQuery::default()
        })
        .unwrap()
        .items
        .len();
    assert_eq!(
        audit_before, audit_after,
        "no-op import writes no audit entries"
    );

    // A changed record updates only what it names.
    let r3 = fleet
        .import(
            &op(),
            ImportFormat::Ndjson,
            r#"{"id":"m0007","firmware_version":"2.0"}"#.as_bytes(),
            |_| {},
        )
        .unwrap();
    assert_eq!(r3.updated, 1);
    let d = fleet.get_device(&id("m0007")).unwrap().unwrap();
    assert_eq!(d.firmware_version.as_deref(), Some("2.0"));
    assert_eq!(d.device_type.as_deref(), Some("meter"));
    assert_eq!(d.updated, at(60));
}

#[test]
fn csv_import_export_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, _clock) = open(dir.path());
    let csv = "id,name,type,groups,enabled,tag:site,tag:floor\n\
               c1,Boiler,boiler,heat;north,true,berlin,2\n\
               c2,,,,false,,\n\
               c3,\"Name, with comma\",boiler,heat,,paris,\n\
               bad id,x,,,,,\n";
    let r = fleet
        .import(&op(), ImportFormat::Csv, csv.as_bytes(), |_| {})
        .unwrap();
    assert_eq!((r.created, r.failed), (3, 1));
    assert_eq!(r.errors[0].line, 5);
    let c1 = fleet.get_device(&id("c1")).unwrap().unwrap();
    assert_eq!(c1.groups, BTreeSet::from(["heat".into(), "north".into()]));
    assert_eq!(c1.tags.len(), 2);
    let c2 = fleet.get_device(&id("c2")).unwrap().unwrap();
    assert_eq!(c2.name, "c2");
    assert!(!c2.enabled);
    assert!(c2.tags.is_empty());
    assert_eq!(
        fleet.get_device(&id("c3")).unwrap().unwrap().name,
        "Name, with comma"
    );

    let again = fleet
        .import(&op(), ImportFormat::Csv, csv.as_bytes(), |_| {})
        .unwrap();
    assert_eq!((again.created, again.updated, again.unchanged), (0, 0, 3));

    // Export in both formats; importing the export changes nothing.
    for format in [ImportFormat::Csv, ImportFormat::Ndjson] {
        let mut out = Vec::new();
        assert_eq!(fleet.export(format, &mut out).unwrap(), 3);
        let r = fleet.import(&op(), format, out.as_slice(), |_| {}).unwrap();
        assert_eq!(
            (r.created, r.updated, r.unchanged, r.failed),
            (0, 0, 3, 0),
            "{format:?}"
        );
    }
    // Into a fresh fleet, the export recreates the same registry.
    let mut out = Vec::new();
    fleet.export(ImportFormat::Ndjson, &mut out).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let (other, _c) = open(dir2.path());
    other
        .import(&op(), ImportFormat::Ndjson, out.as_slice(), |_| {})
        .unwrap();
    let mut out_csv = Vec::new();
    fleet.export(ImportFormat::Csv, &mut out_csv).unwrap();
    let mut other_csv = Vec::new();
    other.export(ImportFormat::Csv, &mut other_csv).unwrap();
    assert_eq!(
        String::from_utf8(out_csv).unwrap(),
        String::from_utf8(other_csv).unwrap()
    );

    assert!(
        fleet
            .import(&op(), ImportFormat::Csv, "name\nx\n".as_bytes(), |_| {})
            .is_err()
    );
}

// ---------------------------------------------------------------------------------------
// Credentials

#[test]
fn token_rotation_keeps_both_valid_until_the_old_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, clock) = open(dir.path());
    device(&fleet, "d1", &[], None, &[]);
    let d1 = id("d1");
    let old = fleet
        .create_credential(&op(), &d1, "factory", None)
        .unwrap();
    assert!(old.token.expose().starts_with("fd_"));
    assert_eq!(
        fleet.verify(&d1, old.token.expose().as_bytes()).unwrap(),
        Some(old.info.id.clone())
    );

    let new = fleet
        .rotate_credential(&op(), &d1, &old.info.id, None, "2025")
        .unwrap();
    assert_ne!(old.token, new.token);
    assert!(
        fleet
            .verify(&d1, old.token.expose().as_bytes())
            .unwrap()
            .is_some()
    );
    assert_eq!(
        fleet.verify(&d1, new.token.expose().as_bytes()).unwrap(),
        Some(new.info.id.clone())
    );
    assert_eq!(fleet.list_credentials(&d1).unwrap().len(), 2);

    let mut rx = fleet.subscribe();
    fleet.revoke_credential(&op(), &d1, &old.info.id).unwrap();
    assert!(
        fleet
            .verify(&d1, old.token.expose().as_bytes())
            .unwrap()
            .is_none()
    );
    assert!(
        fleet
            .verify(&d1, new.token.expose().as_bytes())
            .unwrap()
            .is_some()
    );
    assert_eq!(
        drain(&mut rx),
        [FleetEvent::CredentialRevoked {
            device: d1.clone(),
            credential: old.info.id.clone()
        }]
    );

    // Rotation with a grace period: the old one expires by itself.
    let third = fleet
        .rotate_credential(
            &op(),
            &d1,
            &new.info.id,
            Some(Duration::from_secs(60)),
            "grace",
        )
        .unwrap();
    advance(&clock, Duration::from_secs(59));
    assert!(
        fleet
            .verify(&d1, new.token.expose().as_bytes())
            .unwrap()
            .is_some()
    );
    advance(&clock, Duration::from_secs(1));
    assert!(
        fleet
            .verify(&d1, new.token.expose().as_bytes())
            .unwrap()
            .is_none()
    );
    assert!(
        fleet
            .verify(&d1, third.token.expose().as_bytes())
            .unwrap()
            .is_some()
    );

    // Wrong token, other device's token, disabled device.
    device(&fleet, "d2", &[], None, &[]);
    assert!(
        fleet
            .verify(&id("d2"), third.token.expose().as_bytes())
            .unwrap()
            .is_none()
    );
    assert!(fleet.verify(&d1, b"fd_wrong").unwrap().is_none());
    assert!(fleet.verify(&id("ghost"), b"fd_wrong").unwrap().is_none());
    fleet.set_enabled(&op(), &d1, false).unwrap();
    assert!(
        fleet
            .verify(&d1, third.token.expose().as_bytes())
            .unwrap()
            .is_none()
    );
    fleet.set_enabled(&op(), &d1, true).unwrap();
    assert!(
        fleet
            .verify(&d1, third.token.expose().as_bytes())
            .unwrap()
            .is_some()
    );

    // Tokens are never stored in clear.
    drop(fleet);
    let raw = std::fs::read(dir.path().join(DB_FILE)).unwrap();
    let needle = third.token.expose().as_bytes();
    assert!(!raw.windows(needle.len()).any(|w| w == needle));
}

#[test]
fn credential_limits_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = FleetConfig {
        max_credentials_per_device: 2,
        ..FleetConfig::default()
    };
    let (fleet, clock) = open_with(dir.path(), config);
    device(&fleet, "d1", &[], None, &[]);
    let d1 = id("d1");
    assert_eq!(
        fleet
            .create_credential(&op(), &id("ghost"), "x", None)
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        fleet
            .create_credential(&op(), &d1, "x", Some(at(-1)))
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
    fleet
        .create_credential(&op(), &d1, "a", Some(at(10)))
        .unwrap();
    fleet.create_credential(&op(), &d1, "b", None).unwrap();
    assert_eq!(
        fleet
            .create_credential(&op(), &d1, "c", None)
            .unwrap_err()
            .kind(),
        ErrorKind::Conflict
    );
    // Once one has expired, it no longer counts.
    advance(&clock, Duration::from_secs(11));
    fleet.create_credential(&op(), &d1, "c", None).unwrap();
    assert_eq!(fleet.list_credentials(&d1).unwrap().len(), 2);
    assert_eq!(
        fleet
            .revoke_credential(&op(), &d1, "nope")
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn ten_thousand_verifies_are_fast() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, _clock) = open(dir.path());
    device(&fleet, "d1", &[], None, &[]);
    let d1 = id("d1");
    let issued = fleet.create_credential(&op(), &d1, "", None).unwrap();
    fleet.create_credential(&op(), &d1, "second", None).unwrap();
    let token = issued.token.expose().as_bytes();
    let start = Instant::now();
    for _ in 0..10_000 {
        assert!(fleet.verify(&d1, token).unwrap().is_some());
    }
    let took = start.elapsed();
    // Typically ~30 ms in a debug build; the bound leaves room for a loaded CI machine.
    assert!(
        took < Duration::from_millis(900),
        "10,000 verifies took {took:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Certificates

#[test]
fn certificates_issue_map_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, clock) = open(dir.path());
    device(&fleet, "cam-1", &[], None, &[]);
    let cam = id("cam-1");
    assert_eq!(
        fleet.issue_cert(&op(), &cam).unwrap_err().kind(),
        ErrorKind::Conflict,
        "no CA"
    );

    let ca_pem = fleet.ca_init(&op(), "Test Fleet CA").unwrap();
    assert!(ca_pem.contains("BEGIN CERTIFICATE"));
    assert_eq!(
        fleet.ca_init(&op(), "again").unwrap_err().kind(),
        ErrorKind::Conflict
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let issued = fleet.issue_cert(&op(), &cam).unwrap();
    assert!(issued.key_pem.as_deref().unwrap().contains("PRIVATE KEY"));
    assert_eq!(issued.ca_pem, ca_pem);
    let der = pem_to_der(&issued.cert_pem);
    let presented = parse_client_cert(&der).unwrap();
    assert_eq!(presented.device, cam);
    assert_eq!(presented.serial, issued.serial);
    assert_eq!(fleet.device_for_cert(&der).unwrap(), cam);
    assert!(!fleet.is_revoked(&der).unwrap());
    assert_eq!(
        fleet.issue_cert(&op(), &id("ghost")).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // The certificate chains to the CA: its issuer is the CA's subject.
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let ca_der = pem_to_der(&ca_pem);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    assert_eq!(cert.issuer(), ca.subject());
    assert!(cert.verify_signature(Some(ca.public_key())).is_ok());

    // CSR: the device keeps its key; the subject is ours, not the request's.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "someone-else");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let signed = fleet.sign_csr(&op(), &cam, &csr).unwrap();
    assert!(signed.key_pem.is_none());
    let der2 = pem_to_der(&signed.cert_pem);
    assert_eq!(fleet.device_for_cert(&der2).unwrap(), cam);
    let (_, c2) = x509_parser::parse_x509_certificate(&der2).unwrap();
    assert_eq!(
        &*c2.public_key().subject_public_key.data,
        key.public_key_raw()
    );
    assert!(fleet.sign_csr(&op(), &cam, "garbage").is_err());
    assert_eq!(fleet.list_certs(&cam).unwrap().len(), 2);

    // Revoke one by serial: only that one.
    let mut rx = fleet.subscribe();
    let colon_serial = issued
        .serial
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    fleet.revoke_cert(&op(), &colon_serial).unwrap();
    assert!(fleet.is_revoked(&der).unwrap());
    assert!(!fleet.is_revoked(&der2).unwrap());
    assert_eq!(
        drain(&mut rx),
        [FleetEvent::CertRevoked {
            device: Some(cam.clone()),
            serial: Some(issued.serial.clone())
        }]
    );

    // Revoke all of the device's: the CSR one too; a certificate issued afterwards works.
    advance(&clock, Duration::from_secs(5));
    assert_eq!(fleet.revoke_device_certs(&op(), &cam).unwrap(), 1);
    assert!(fleet.is_revoked(&der2).unwrap());
    assert_eq!(
        drain(&mut rx),
        [FleetEvent::CertRevoked {
            device: Some(cam.clone()),
            serial: None
        }]
    );
    let fresh = fleet.issue_cert(&op(), &cam).unwrap();
    assert!(!fleet.is_revoked(&pem_to_der(&fresh.cert_pem)).unwrap());

    // The CA survives a reopen.
    drop(fleet);
    let (fleet, _clock) = open(dir.path());
    assert_eq!(fleet.ca_cert_pem().as_deref(), Some(ca_pem.as_str()));
    assert!(fleet.issue_cert(&op(), &cam).is_ok());
}

#[test]
fn operator_ca_import_and_external_certificates() {
    // An operator's CA, made outside Ferrite.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Operator CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let dir = tempfile::tempdir().unwrap();
    let (fleet, clock) = open(dir.path());
    let other_key = rcgen::KeyPair::generate().unwrap();
    assert!(
        fleet
            .ca_import(&op(), &ca_cert.pem(), &other_key.serialize_pem())
            .is_err(),
        "key mismatch"
    );
    let leaf = rcgen::CertificateParams::new(vec!["example.org".to_owned()])
        .unwrap()
        .self_signed(&other_key)
        .unwrap();
    assert!(
        fleet
            .ca_import(&op(), &leaf.pem(), &other_key.serialize_pem())
            .is_err(),
        "not a CA"
    );
    fleet
        .ca_import(&op(), &ca_cert.pem(), &issuer.key().serialize_pem())
        .unwrap();
    device(&fleet, "ext-1", &[], None, &[]);
    assert!(fleet.issue_cert(&op(), &id("ext-1")).is_ok());

    // A certificate the operator issued elsewhere, CN = device id, notBefore = now.
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "ext-1");
    p.not_before = time::OffsetDateTime::from_unix_timestamp(T0 / 1_000_000_000).unwrap();
    let k = rcgen::KeyPair::generate().unwrap();
    let external = p.signed_by(&k, &issuer).unwrap();
    let der = external.der().to_vec();
    assert!(!fleet.is_revoked(&der).unwrap());
    advance(&clock, Duration::from_secs(1));
    fleet.revoke_device_certs(&op(), &id("ext-1")).unwrap();
    assert!(
        fleet.is_revoked(&der).unwrap(),
        "cut-off covers certificates we never saw"
    );
}

// ---------------------------------------------------------------------------------------
// Claims

fn claim_template() -> ClaimTemplate {
    ClaimTemplate {
        device_type: Some("meter".into()),
        tags: BTreeMap::from([("batch".into(), "7".into())]),
        groups: BTreeSet::from(["meters".into()]),
        id_prefix: Some("m-".into()),
    }
}

#[test]
fn claim_applies_template_and_enforces_expiry_and_uses() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, clock) = open(dir.path());
    let claim = fleet
        .create_claim(
            &op(),
            NewClaim {
                label: "batch 7".into(),
                template: claim_template(),
                expires_at: Some(at(3600)),
                max_uses: 2,
            },
        )
        .unwrap();
    let token = claim.token.expose();
    assert!(token.starts_with("fc_"));

    // Generated id with the prefix, template applied, token credential that works.
    let p = fleet.claim(token, None, None).unwrap();
    assert!(p.device.id.as_str().starts_with("m-"));
    assert_eq!(p.device.device_type.as_deref(), Some("meter"));
    assert_eq!(p.device.groups, BTreeSet::from(["meters".into()]));
    assert_eq!(p.device.tags.get("batch").map(String::as_str), Some("7"));
    let ProvisionedCredential::Token(cred) = &p.credential else {
        panic!("expected a token credential");
    };
    assert!(
        fleet
            .verify(&p.device.id, cred.token.expose().as_bytes())
            .unwrap()
            .is_some()
    );

    // Requested ids must carry the prefix; taken ids are refused; neither counts as a use.
    let err = fleet.claim(token, Some(id("x-1")), None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = fleet
        .claim(token, Some(p.device.id.clone()), None)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    // With a CSR but no CA: refused, nothing created.
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    assert!(fleet.claim(token, Some(id("m-csr")), Some(&csr)).is_err());
    assert!(fleet.get_device(&id("m-csr")).unwrap().is_none());
    assert_eq!(fleet.list_claims().unwrap()[0].uses, 1);

    // With a CA, the CSR path returns a certificate naming the device.
    fleet.ca_init(&op(), "CA").unwrap();
    let p2 = fleet.claim(token, Some(id("m-csr")), Some(&csr)).unwrap();
    let ProvisionedCredential::Certificate(cert) = &p2.credential else {
        panic!("expected a certificate");
    };
    assert_eq!(
        fleet.device_for_cert(&pem_to_der(&cert.cert_pem)).unwrap(),
        id("m-csr")
    );

    // Used up.
    assert!(matches!(
        fleet.claim(token, None, None),
        Err(FleetError::ClaimExhausted)
    ));
    assert_eq!(fleet.list_claims().unwrap()[0].uses, 2);

    // Expiry.
    let c2 = fleet
        .create_claim(
            &op(),
            NewClaim {
                label: "short".into(),
                template: ClaimTemplate::default(),
                expires_at: Some(at(60)),
                max_uses: 10,
            },
        )
        .unwrap();
    advance(&clock, Duration::from_secs(60));
    assert!(matches!(
        fleet.claim(c2.token.expose(), None, None),
        Err(FleetError::ClaimExpired)
    ));
    // Unknown and revoked tokens.
    assert!(matches!(
        fleet.claim("fc_nope", None, None),
        Err(FleetError::ClaimInvalid)
    ));
    let c3 = fleet
        .create_claim(
            &op(),
            NewClaim {
                label: "revoked".into(),
                template: ClaimTemplate::default(),
                expires_at: None,
                max_uses: 10,
            },
        )
        .unwrap();
    fleet.revoke_claim(&op(), &c3.info.id).unwrap();
    let err = fleet.claim(c3.token.expose(), None, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized);

    // The audit log names the claim as the actor of the provisioning.
    let entries = fleet
        .audit(&AuditQuery {
            limit: 1000,
            ..AuditQuery::default()
        })
        .unwrap()
        .items;
    assert!(entries.iter().any(|e| e.action == "device.claim"
        && e.actor
            == Actor::Claim {
                id: claim.info.id.clone()
            }));
}

#[test]
fn concurrent_claims_never_exceed_max_uses() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, _clock) = open(dir.path());
    let claim = fleet
        .create_claim(
            &op(),
            NewClaim {
                label: "race".into(),
                template: ClaimTemplate::default(),
                expires_at: None,
                max_uses: 3,
            },
        )
        .unwrap();
    let token = claim.token.expose().to_owned();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let fleet = fleet.clone();
            let token = token.clone();
            std::thread::spawn(move || fleet.claim(&token, None, None).is_ok())
        })
        .collect();
    let ok = handles
        .into_iter()
        .filter(|_| true)
        .map(|h| h.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(ok, 3);
    assert_eq!(fleet.counts().unwrap().total, 3);
    assert_eq!(fleet.list_claims().unwrap()[0].uses, 3);
}

// ---------------------------------------------------------------------------------------
// Authorization

fn policies() -> Vec<Policy> {
    let rule = |access, topics: &[&str]| Rule {
        access,
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
    };
    vec![
        Policy {
            name: "sensors".into(),
            description: "group config and events".into(),
            attach: vec![
                Attach::Group("sensors".into()),
                Attach::Group("pumps".into()),
            ],
            allow: vec![
                rule(Access::Subscribe, &["config/${group}/#"]),
                rule(Access::Publish, &["groups/${group}/events"]),
            ],
            deny: vec![],
        },
        Policy {
            name: "meters".into(),
            description: String::new(),
            attach: vec![Attach::Type("meter".into())],
            allow: vec![
                rule(Access::Both, &["fleet/meters/${device_id}/#"]),
                rule(Access::Subscribe, &["fleet/broadcast"]),
            ],
            deny: vec![],
        },
        Policy {
            name: "no-debug".into(),
            description: String::new(),
            attach: vec![Attach::All],
            allow: vec![rule(Access::Subscribe, &["sites/${tag:site}/+/alerts"])],
            deny: vec![rule(Access::Both, &["devices/${device_id}/debug/#"])],
        },
    ]
}

#[test]
fn acl_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, _clock) = open(dir.path());
    for p in policies() {
        fleet.put_policy(&op(), &p).unwrap();
    }
    let d1 = device(
        &fleet,
        "d1",
        &["sensors"],
        Some("meter"),
        &[("site", "berlin")],
    );
    let d2 = device(&fleet, "d2", &["sensors", "pumps"], None, &[]);
    let d3 = device(&fleet, "d3", &[], Some("gateway"), &[("site", "paris")]);
    let devices = [&d1, &d2, &d3];

    use Action::{Publish as P, Subscribe as S};
    const A: bool = true;
    const D: bool = false;
    // (action, topic or filter, expected for d1, d2, d3) — every cell asserted.
    let matrix: &[(Action, &str, [bool; 3])] = &[
        (P, "devices/d1/telemetry", [A, D, D]),
        (P, "devices/d2/telemetry", [D, A, D]),
        (P, "devices/d3/status", [D, D, A]),
        (S, "devices/d1/#", [D, D, D]), // overlaps the denied debug subtree
        (S, "devices/d1/telemetry", [A, D, D]),
        (S, "devices/d3/commands/+", [D, D, A]),
        (P, "devices/d1/debug/x", [D, D, D]),
        (S, "devices/d2/debug/#", [D, D, D]),
        (S, "config/sensors/#", [A, A, D]),
        (S, "config/pumps/valve", [D, A, D]),
        (S, "config/+/valve", [D, D, D]),
        (P, "config/sensors/x", [D, D, D]),
        (P, "groups/sensors/events", [A, A, D]),
        (P, "groups/pumps/events", [D, A, D]),
        (S, "groups/sensors/events", [D, D, D]),
        (P, "fleet/meters/d1/status", [A, D, D]),
        (S, "fleet/meters/d1/#", [A, D, D]),
        (S, "fleet/meters/+/status", [D, D, D]),
        (S, "fleet/broadcast", [A, D, D]),
        (P, "fleet/broadcast", [D, D, D]),
        (S, "sites/berlin/+/alerts", [A, D, D]),
        (S, "sites/paris/z1/alerts", [D, D, A]),
        (S, "sites/+/z1/alerts", [D, D, D]),
        (S, "#", [D, D, D]),
        (S, "devices/+/telemetry", [D, D, D]),
        (P, "$SYS/broker/uptime", [D, D, D]),
        (S, "$share/workers/devices/d3/telemetry", [D, D, A]),
        (P, "devices/d1/+", [D, D, D]),
    ];
    let policies = fleet.list_policies();
    for (action, topic, expected) in matrix {
        for (d, want) in devices.iter().zip(expected) {
            let got = fleet.authorize(&d.id, *action, topic).unwrap().is_allowed();
            assert_eq!(got, *want, "{} {action:?} {topic}", d.id);
            // The pure function agrees with the cached path.
            let pure = authorize(&DeviceContext::from(*d), &policies, *action, topic).is_allowed();
            assert_eq!(pure, *want, "pure: {} {action:?} {topic}", d.id);
        }
    }
    assert_eq!(
        fleet.authorize(&id("ghost"), P, "devices/ghost/x").unwrap(),
        Decision::Deny
    );
}

#[test]
fn acl_follows_policy_and_device_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, _clock) = open(dir.path());
    let d = device(&fleet, "d1", &[], None, &[]);
    let mut rx = fleet.subscribe();
    assert!(
        !fleet
            .authorize(&d.id, Action::Subscribe, "config/ops/x")
            .unwrap()
            .is_allowed()
    );

    let policy = Policy {
        name: "ops".into(),
        description: String::new(),
        attach: vec![Attach::Group("ops".into())],
        allow: vec![Rule {
            access: Access::Subscribe,
            topics: vec!["config/${group}/#".into()],
        }],
        deny: vec![],
    };
    fleet.put_policy(&op(), &policy).unwrap();
    assert_eq!(drain(&mut rx), [FleetEvent::PoliciesChanged]);
    assert!(
        !fleet
            .authorize(&d.id, Action::Subscribe, "config/ops/x")
            .unwrap()
            .is_allowed()
    );

    let patch = DevicePatch {
        groups: Some(BTreeSet::from(["ops".into()])),
        ..DevicePatch::default()
    };
    fleet.update_device(&op(), &d.id, &patch).unwrap();
    assert_eq!(
        drain(&mut rx),
        [FleetEvent::DeviceChanged {
            device: d.id.clone()
        }]
    );
    assert!(
        fleet
            .authorize(&d.id, Action::Subscribe, "config/ops/x")
            .unwrap()
            .is_allowed()
    );
    let acl = fleet.acl(&d.id).unwrap().unwrap();
    assert!(
        acl.rules()
            .any(|(e, a, f)| e == Effect::Allow && a == Action::Subscribe && f == "config/ops/#")
    );

    fleet.delete_policy(&op(), "ops").unwrap();
    assert!(
        !fleet
            .authorize(&d.id, Action::Subscribe, "config/ops/x")
            .unwrap()
            .is_allowed()
    );
    assert_eq!(
        fleet.delete_policy(&op(), "ops").unwrap_err().kind(),
        ErrorKind::NotFound
    );

    let bad = Policy {
        name: "bad".into(),
        description: String::new(),
        attach: vec![Attach::All],
        allow: vec![Rule {
            access: Access::Both,
            topics: vec!["x/${nope}".into()],
        }],
        deny: vec![],
    };
    assert_eq!(
        fleet.put_policy(&op(), &bad).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert!(fleet.get_policy("bad").is_none());

    // Policies persist.
    fleet.put_policy(&op(), &policy).unwrap();
    drop(fleet);
    let (fleet, _clock) = open(dir.path());
    assert_eq!(fleet.get_policy("ops"), Some(policy));
    assert!(
        fleet
            .authorize(&d.id, Action::Subscribe, "config/ops/x")
            .unwrap()
            .is_allowed()
    );
}

// ---------------------------------------------------------------------------------------
// API tokens, RBAC, audit

#[test]
fn api_tokens_bootstrap_verify_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, clock) = open(dir.path());
    let admin = fleet.bootstrap_admin(&Actor::System).unwrap().unwrap();
    assert!(admin.token.expose().starts_with("fa_"));
    assert!(
        fleet.bootstrap_admin(&Actor::System).unwrap().is_none(),
        "only once"
    );

    let principal = fleet
        .verify_api_token(admin.token.expose())
        .unwrap()
        .unwrap();
    assert_eq!(principal.role, Role::Admin);
    assert_eq!(principal.name, "admin");
    assert!(principal.can(Permission::ManageTokens));

    let viewer = fleet
        .create_api_token(&principal.actor(), "dashboard", Role::Viewer)
        .unwrap();
    let v = fleet
        .verify_api_token(viewer.token.expose())
        .unwrap()
        .unwrap();
    assert!(v.can(Permission::Query));
    assert!(!v.can(Permission::WriteDevices));
    let operator = fleet
        .create_api_token(&principal.actor(), "ops", Role::Operator)
        .unwrap();
    let o = fleet
        .verify_api_token(operator.token.expose())
        .unwrap()
        .unwrap();
    assert!(o.can(Permission::WriteDevices) && !o.can(Permission::ManagePolicies));

    assert!(fleet.verify_api_token("fa_nope").unwrap().is_none());
    fleet
        .revoke_api_token(&principal.actor(), &viewer.info.id)
        .unwrap();
    assert!(
        fleet
            .verify_api_token(viewer.token.expose())
            .unwrap()
            .is_none()
    );
    assert_eq!(
        fleet.revoke_api_token(&op(), "nope").unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // last_used is recorded, coalesced to once per interval.
    let listed = fleet.list_api_tokens().unwrap();
    let a = listed.iter().find(|t| t.id == admin.info.id).unwrap();
    assert_eq!(a.last_used, Some(at(0)));
    advance(&clock, Duration::from_secs(30));
    fleet.verify_api_token(admin.token.expose()).unwrap();
    let a = fleet
        .list_api_tokens()
        .unwrap()
        .into_iter()
        .find(|t| t.id == admin.info.id)
        .unwrap();
    assert_eq!(a.last_used, Some(at(0)));
    advance(&clock, Duration::from_secs(31));
    fleet.verify_api_token(admin.token.expose()).unwrap();
    let a = fleet
        .list_api_tokens()
        .unwrap()
        .into_iter()
        .find(|t| t.id == admin.info.id)
        .unwrap();
    assert_eq!(a.last_used, Some(at(61)));
    assert!(
        fleet
            .list_api_tokens()
            .unwrap()
            .iter()
            .find(|t| t.id == viewer.info.id)
            .unwrap()
            .revoked_at
            .is_some()
    );

    // Revoking the only admin lets bootstrap create a new one.
    fleet
        .revoke_api_token(&Actor::System, &admin.info.id)
        .unwrap();
    assert!(fleet.bootstrap_admin(&Actor::System).unwrap().is_some());
}

#[test]
fn audit_log_records_changes_with_time_range_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, clock) = open(dir.path());
    device(&fleet, "a1", &[], None, &[]);
    advance(&clock, Duration::from_secs(10));
    fleet.set_enabled(&op(), &id("a1"), false).unwrap();
    fleet
        .create_credential(&op(), &id("a1"), "l", None)
        .unwrap();
    advance(&clock, Duration::from_secs(10));
    fleet.delete_device(&Actor::System, &id("a1")).unwrap();

    let all = fleet
        .audit(&AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        })
        .unwrap();
    let actions: Vec<&str> = all.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "device.create",
            "device.update",
            "credential.create",
            "device.delete"
        ]
    );
    assert!(all.items.iter().all(|e| e.target == "a1"));
    assert_eq!(all.items[0].actor, op());
    assert_eq!(all.items[3].actor, Actor::System);
    assert_eq!(all.items[1].at, at(10));
    assert!(
        !all.items[2].detail.to_string().contains("fd_"),
        "no secrets in the log"
    );

    let range = fleet
        .audit(&AuditQuery {
            since: Some(at(10)),
            until: Some(at(20)),
            limit: 100,
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(range.items.len(), 2);

    let p1 = fleet
        .audit(&AuditQuery {
            limit: 3,
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(p1.items.len(), 3);
    let p2 = fleet
        .audit(&AuditQuery {
            limit: 3,
            after: p1.next.clone(),
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(p2.items.len(), 1);
    assert_eq!(p2.items[0].action, "device.delete");
    assert!(p2.next.is_none());

    // Sequence numbers keep increasing across a reopen.
    let last_seq = all.items[3].seq;
    drop(fleet);
    let (fleet, clock) = open(dir.path());
    advance(&clock, Duration::from_secs(30));
    device(&fleet, "a2", &[], None, &[]);
    let q = AuditQuery {
        target: Some("a2".into()),
        limit: 10,
        ..AuditQuery::default()
    };
    assert!(fleet.audit(&q).unwrap().items[0].seq > last_seq);

    assert_eq!(fleet.prune_audit(&op(), at(15)).unwrap(), 3);
    let left = fleet
        .audit(&AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        })
        .unwrap()
        .items;
    assert_eq!(left.iter().filter(|e| e.action == "audit.prune").count(), 1);
}

// ---------------------------------------------------------------------------------------
// Presence

#[test]
fn presence_survives_takeover() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, _clock) = open(dir.path());
    let d = device(&fleet, "d1", &[], None, &[]);
    assert!(fleet.presence(&d.id).is_none());
    assert!(fleet.connected(&d.id, 1, peer(), at(1)));
    assert!(
        fleet.connected(&d.id, 2, peer(), at(2)),
        "takeover by connection 2"
    );
    assert!(
        !fleet.disconnected(&d.id, 1, "taken over", at(3)),
        "old connection closing late"
    );
    assert!(fleet.is_online(&d.id));
    let p = fleet.presence(&d.id).unwrap();
    assert_eq!(
        (p.online, p.connection, p.connected_at),
        (true, Some(2), Some(at(2)))
    );
    // A connect that arrives after a newer one does not replace it.
    assert!(!fleet.connected(&d.id, 1, peer(), at(4)));
    assert_eq!(fleet.presence(&d.id).unwrap().connection, Some(2));
    assert!(fleet.disconnected(&d.id, 2, "keep-alive timeout", at(5)));
    assert!(!fleet.is_online(&d.id));
    let p = fleet.presence(&d.id).unwrap();
    assert_eq!(p.disconnected_at, Some(at(5)));
    assert_eq!(p.last_reason.as_deref(), Some("keep-alive timeout"));
    assert_eq!(p.last_seen, Some(at(5)));
    fleet.seen(&d.id, at(4));
    assert_eq!(
        fleet.presence(&d.id).unwrap().last_seen,
        Some(at(5)),
        "never goes back"
    );
}

#[test]
fn presence_is_flushed_in_batches_and_starts_offline_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (fleet, _clock) = open(dir.path());
        for i in 0..4 {
            device(&fleet, &format!("p{i}"), &[], None, &[]);
        }
        fleet.set_enabled(&op(), &id("p3"), false).unwrap();
        fleet.connected(&id("p0"), 10, peer(), at(1));
        fleet.connected(&id("p1"), 11, peer(), at(1));
        fleet.disconnected(&id("p1"), 11, "bye", at(2));
        fleet.connected(&id("unknown"), 12, peer(), at(1));
        let c = fleet.counts().unwrap();
        assert_eq!((c.total, c.online, c.never_seen, c.disabled), (4, 1, 2, 1));
        assert_eq!(
            fleet.flush_presence().unwrap(),
            2,
            "unknown devices are not written"
        );
        assert_eq!(fleet.flush_presence().unwrap(), 0, "nothing new");
        fleet.seen(&id("p0"), at(7));
        assert_eq!(fleet.flush_presence().unwrap(), 1);
        assert_eq!(
            fleet.get_device(&id("p0")).unwrap().unwrap().last_seen,
            Some(at(7))
        );
    }
    let (fleet, _clock) = open(dir.path());
    let c = fleet.counts().unwrap();
    assert_eq!(
        (c.total, c.online, c.never_seen),
        (4, 0, 2),
        "all offline after restart"
    );
    let p0 = fleet.presence(&id("p0")).unwrap();
    assert!(!p0.online);
    assert_eq!(p0.last_seen, Some(at(7)));
    assert_eq!(
        fleet.presence(&id("p1")).unwrap().last_reason.as_deref(),
        Some("bye")
    );
    // Deleting a device forgets its presence.
    fleet.delete_device(&op(), &id("p1")).unwrap();
    assert!(fleet.presence(&id("p1")).is_none());
}

#[test]
fn reconnect_storm_of_ten_thousand_devices() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, _clock) = open(dir.path());
    let mut ndjson = String::new();
    for i in 0..10_000 {
        ndjson.push_str(&format!("{{\"id\":\"s{i:05}\"}}\n"));
    }
    fleet
        .import(&op(), ImportFormat::Ndjson, ndjson.as_bytes(), |_| {})
        .unwrap();
    let ids: Vec<DeviceId> = (0..10_000).map(|i| id(&format!("s{i:05}"))).collect();
    let start = Instant::now();
    let mut conn = 0u64;
    for round in 0..2 {
        for d in &ids {
            conn += 1;
            fleet.connected(d, conn, peer(), at(round));
        }
    }
    for d in &ids[..5_000] {
        // The first round's connections close late: no effect.
        fleet.disconnected(d, 1, "late", at(3));
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "30,000 presence updates took {took:?}"
    );
    assert_eq!(fleet.counts().unwrap().online, 10_000);
    assert_eq!(fleet.flush_presence().unwrap(), 10_000, "one batched write");
}

// ---------------------------------------------------------------------------------------
// Authentication, limiter, events

#[test]
fn authenticate_with_tokens_and_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, _clock) = open(dir.path());
    let d = device(&fleet, "d1", &[], None, &[]);
    let cred = fleet.create_credential(&op(), &d.id, "", None).unwrap();

    let token = cred.token.expose().as_bytes();

    let ok = fleet
        .authenticate(&attempt("d1", Some("d1"), Some(token), None))
        .unwrap();
    assert_eq!(ok.device, d.id);
    assert_eq!(
        ok.method,
        AuthMethod::Token {
            credential: cred.info.id.clone()
        }
    );
    assert!(
        ok.acl
            .authorize(Action::Publish, "devices/d1/telemetry")
            .is_allowed()
    );
    // Username may be omitted: the client id names the device.
    assert!(
        fleet
            .authenticate(&attempt("d1", None, Some(token), None))
            .is_ok()
    );
    assert_eq!(
        fleet
            .authenticate(&attempt("d1", Some("d1"), Some(b"fd_bad"), None))
            .unwrap_err(),
        AuthRefusal::BadCredentials
    );
    assert_eq!(
        fleet
            .authenticate(&attempt("d1", Some("d1"), None, None))
            .unwrap_err(),
        AuthRefusal::MissingCredentials
    );
    assert_eq!(
        fleet
            .authenticate(&attempt("other", Some("d1"), Some(token), None))
            .unwrap_err(),
        AuthRefusal::ClientIdMismatch
    );
    assert_eq!(
        fleet
            .authenticate(&attempt("x/y", None, Some(token), None))
            .unwrap_err(),
        AuthRefusal::BadCredentials
    );
    fleet.set_enabled(&op(), &d.id, false).unwrap();
    assert_eq!(
        fleet
            .authenticate(&attempt("d1", None, Some(token), None))
            .unwrap_err(),
        AuthRefusal::NotAuthorized
    );
    fleet.set_enabled(&op(), &d.id, true).unwrap();
    assert!(fleet.session_valid(&d.id, &ok.method).unwrap());

    // Certificates.
    fleet.ca_init(&op(), "CA").unwrap();
    let cert = fleet.issue_cert(&op(), &d.id).unwrap();
    let der = pem_to_der(&cert.cert_pem);
    let by_cert = fleet
        .authenticate(&attempt("d1", None, None, Some(&der)))
        .unwrap();
    assert_eq!(by_cert.device, d.id);
    assert!(
        matches!(by_cert.method, AuthMethod::Certificate { ref serial, .. } if *serial == cert.serial)
    );
    assert!(fleet.session_valid(&d.id, &by_cert.method).unwrap());
    fleet.revoke_cert(&op(), &cert.serial).unwrap();
    assert_eq!(
        fleet
            .authenticate(&attempt("d1", None, None, Some(&der)))
            .unwrap_err(),
        AuthRefusal::NotAuthorized
    );
    assert!(!fleet.session_valid(&d.id, &by_cert.method).unwrap());
    assert_eq!(
        fleet
            .authenticate(&attempt("d1", None, None, Some(b"junk")))
            .unwrap_err(),
        AuthRefusal::BadCredentials
    );
    fleet
        .revoke_credential(&op(), &d.id, &cred.info.id)
        .unwrap();
    assert!(!fleet.session_valid(&d.id, &ok.method).unwrap());

    // Without the client-id rule a device may use any client id.
    drop(fleet);
    let config = FleetConfig {
        client_id_must_match: false,
        ..FleetConfig::default()
    };
    let (fleet, _clock) = open_with(dir.path(), config);
    let cred = fleet.create_credential(&op(), &d.id, "", None).unwrap();
    assert!(
        fleet
            .authenticate(&attempt(
                "anything",
                Some("d1"),
                Some(cred.token.expose().as_bytes()),
                None
            ))
            .is_ok()
    );
}

#[test]
fn brute_force_is_throttled_per_address_and_device() {
    let dir = tempfile::tempdir().unwrap();
    let config = FleetConfig {
        limiter: LimiterConfig {
            per_ip: Budget {
                burst: 5,
                refill_every: Duration::from_secs(10),
            },
            per_device: Budget {
                burst: 3,
                refill_every: Duration::from_secs(10),
            },
            max_tracked: 1000,
        },
        ..FleetConfig::default()
    };
    let (fleet, clock) = open_with(dir.path(), config);
    let d = device(&fleet, "d1", &[], None, &[]);
    let cred = fleet.create_credential(&op(), &d.id, "", None).unwrap();
    let try_from = |n: u8, device: &'static str, password: &[u8]| {
        fleet.authenticate(&ConnectAttempt {
            client_id: device,
            username: None,
            password: Some(password),
            peer: ip(n),
            client_cert: None,
        })
    };
    // Guessing d1's token from many addresses: the device budget stops it.
    for n in 0..3 {
        assert_eq!(
            try_from(n, "d1", b"guess").unwrap_err(),
            AuthRefusal::BadCredentials
        );
    }
    assert!(matches!(
        try_from(9, "d1", b"guess"),
        Err(AuthRefusal::Throttled { .. })
    ));
    // Even the right token is refused while throttled (no credential work is done).
    assert!(matches!(
        try_from(9, "d1", cred.token.expose().as_bytes()),
        Err(AuthRefusal::Throttled { .. })
    ));
    // Guessing many devices from one address: the address budget stops it.
    for dev in ["a", "b", "c", "d", "e"] {
        let r = fleet.authenticate(&ConnectAttempt {
            client_id: dev,
            username: None,
            password: Some(b"guess"),
            peer: ip(100),
            client_cert: None,
        });
        assert_eq!(r.unwrap_err(), AuthRefusal::BadCredentials);
    }
    assert!(matches!(
        try_from(100, "f", b"guess"),
        Err(AuthRefusal::Throttled { .. })
    ));
    let stats = fleet.limiter().stats();
    assert_eq!(stats.refused_by_device, 2);
    assert_eq!(stats.refused_by_ip, 1);
    assert_eq!(stats.failures, 8);
    // Budgets refill with time.
    advance(&clock, Duration::from_secs(10));
    assert!(try_from(9, "d1", cred.token.expose().as_bytes()).is_ok());
}

#[test]
fn disabling_and_deleting_emit_events_and_end_access() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, _clock) = open(dir.path());
    let d = device(&fleet, "d1", &[], None, &[]);
    let cred = fleet.create_credential(&op(), &d.id, "", None).unwrap();
    let mut rx = fleet.subscribe();
    fleet.set_enabled(&op(), &d.id, false).unwrap();
    fleet.set_enabled(&op(), &d.id, false).unwrap(); // no-op: no second event
    assert_eq!(
        drain(&mut rx),
        [FleetEvent::DeviceDisabled {
            device: d.id.clone()
        }]
    );
    assert_eq!(
        fleet
            .authorize(&d.id, Action::Publish, "devices/d1/x")
            .unwrap(),
        Decision::Deny
    );
    fleet.set_enabled(&op(), &d.id, true).unwrap();
    fleet.delete_device(&op(), &d.id).unwrap();
    let events = drain(&mut rx);
    assert!(events.contains(&FleetEvent::DeviceDeleted {
        device: d.id.clone()
    }));
    assert!(
        fleet
            .verify(&d.id, cred.token.expose().as_bytes())
            .unwrap()
            .is_none()
    );
    // Re-created with the same id, it does not inherit the old credential.
    device(&fleet, "d1", &[], None, &[]);
    assert!(
        fleet
            .verify(&d.id, cred.token.expose().as_bytes())
            .unwrap()
            .is_none()
    );
    assert!(fleet.list_credentials(&d.id).unwrap().is_empty());
}

#[test]
fn a_second_open_of_the_same_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_fleet, _clock) = open(dir.path());
    let err = Fleet::open(dir.path(), FleetConfig::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
}

#[test]
fn every_source_file_starts_with_a_module_doc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["src", "tests"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    text.starts_with("//!"),
                    "{} lacks a //! module doc",
                    path.display()
                );
            }
        }
    }
}
