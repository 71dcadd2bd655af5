//! One test per decode rule (and the matching encode refusals): each malformed or
//! forbidden input yields the right error and MQTT 5 reason code.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use ferrite_mqtt_codec::{
    Auth, Connect, DecodeError, Decoder, EncodeError, Packet, Properties, ProtocolVersion, PubAck,
    Publish, QoS, ReasonCode, SubAck, Subscribe, SubscriptionOptions, decode_packet,
};

const V3: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;
const MAX: u32 = 1 << 20;

/// Decode a complete packet on a connection in state `state`; the error if any.
fn error(bytes: &[u8], state: Option<ProtocolVersion>) -> DecodeError {
    match decode_packet(bytes, state, MAX) {
        Err(e) => e,
        Ok(other) => panic!("expected an error, got {other:?}"),
    }
}

fn malformed(bytes: &[u8], state: Option<ProtocolVersion>) {
    let e = error(bytes, state);
    assert_eq!(
        e.reason_code(),
        ReasonCode::MALFORMED_PACKET,
        "{e:?} for {bytes:02X?}"
    );
}

fn protocol_error(bytes: &[u8], state: Option<ProtocolVersion>) {
    let e = error(bytes, state);
    assert!(
        matches!(e, DecodeError::ProtocolError(_)),
        "{e:?} for {bytes:02X?}"
    );
    assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
}

fn ok(bytes: &[u8], state: Option<ProtocolVersion>) -> Packet {
    let (packet, used) = decode_packet(bytes, state, MAX).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    packet
}

/// A CONNECT with the given level byte, flags byte and payload after the keep alive
/// (for V5 the payload must start with the property length).
fn connect_bytes(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = vec![0, u8::try_from(name.len()).unwrap()];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0, 60]);
    body.extend_from_slice(rest);
    let mut packet = vec![0x10, u8::try_from(body.len()).unwrap()];
    packet.extend_from_slice(&body);
    packet
}

#[test]
fn reserved_fixed_header_flags() {
    // SUBSCRIBE, UNSUBSCRIBE and PUBREL need 0b0010.
    malformed(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], Some(V3));
    malformed(&[0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], Some(V3));
    malformed(&[0x60, 0x02, 0x00, 0x01], Some(V5));
    // Everything else needs 0.
    malformed(&[0x42, 0x02, 0x00, 0x01], Some(V5));
    malformed(&[0xC1, 0x00], Some(V3));
    malformed(&[0x11, 0x00], None);
    // Reported from the first byte alone, before the rest arrives.
    malformed(&[0xE8], Some(V5));
    // Packet type 0 is reserved.
    malformed(&[0x00, 0x00], Some(V5));
}

#[test]
fn qos_3() {
    let e = error(&[0x36, 0x04, 0x00, 0x01, b't', 0x00], Some(V5));
    assert_eq!(e, DecodeError::MalformedPacket("PUBLISH QoS 3"));
    // Will QoS 3.
    malformed(&connect_bytes(b"MQTT", 4, 0b0001_1100, &[0, 1, b'c']), None);
    // Subscription QoS 3: malformed in 3.1.1, a protocol error in 5.0.
    malformed(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x03], Some(V3));
    protocol_error(
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x03],
        Some(V5),
    );
}

#[test]
fn variable_byte_integer_longer_than_four_bytes() {
    malformed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], Some(V3));
    // Also inside a packet: a property length of five bytes.
    malformed(&[0xE0, 0x06, 0x00, 0x80, 0x80, 0x80, 0x80, 0x01], Some(V5));
    // Non-minimal encodings are malformed too (MQTT-1.5.5-1).
    malformed(&[0xC0, 0x80, 0x00], Some(V3));
}

#[test]
fn invalid_strings() {
    assert_eq!(
        error(&[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28], Some(V3)),
        DecodeError::InvalidUtf8
    );
    assert_eq!(
        DecodeError::InvalidUtf8.reason_code(),
        ReasonCode::MALFORMED_PACKET
    );
    // Surrogate code point encoded in UTF-8 (CESU) is not valid UTF-8.
    assert_eq!(
        error(&[0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80], Some(V5)),
        DecodeError::InvalidUtf8
    );
    // U+0000.
    malformed(&[0x30, 0x04, 0x00, 0x02, b'a', 0x00], Some(V3));
    // In a user property.
    malformed(
        &[
            0xE0, 0x09, 0x00, 0x07, 0x26, 0x00, 0x01, 0x00, 0x00, 0x01, b'v',
        ],
        Some(V5),
    );
}

#[test]
fn lengths_exceeding_remaining_length() {
    // Topic length 5 in a 3-byte body.
    malformed(&[0x30, 0x03, 0x00, 0x05, b'a'], Some(V3));
    // Property length beyond the packet.
    malformed(&[0xE0, 0x02, 0x00, 0x09], Some(V5));
    // PUBACK cut inside the packet id.
    malformed(&[0x40, 0x01, 0x00], Some(V3));
    // CONNECT client id longer than the packet.
    malformed(&connect_bytes(b"MQTT", 4, 0x02, &[0, 9, b'c']), None);
}

#[test]
fn leftover_bytes_inside_a_packet() {
    malformed(&[0xC0, 0x01, 0x00], Some(V3));
    malformed(&[0xD0, 0x01, 0x00], Some(V5));
    malformed(&[0x40, 0x03, 0x00, 0x01, 0x00], Some(V3));
    malformed(&[0xB0, 0x03, 0x00, 0x01, 0x00], Some(V3));
    malformed(&[0xE0, 0x01, 0x00], Some(V3));
    malformed(&[0x20, 0x03, 0x00, 0x00, 0x00], Some(V3));
    malformed(&[0x40, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00], Some(V5));
    malformed(&connect_bytes(b"MQTT", 4, 0x02, &[0, 1, b'c', 0xFF]), None);
}

#[test]
fn connect_protocol_name_and_level() {
    let e = error(&connect_bytes(b"MQIsdp", 3, 0x02, &[0, 1, b'c']), None);
    assert_eq!(e, DecodeError::UnsupportedProtocolVersion(3));
    assert_eq!(e.reason_code(), ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
    for level in [0, 3, 6, 255] {
        let e = error(&connect_bytes(b"MQTT", level, 0x02, &[0, 1, b'c']), None);
        assert_eq!(e, DecodeError::UnsupportedProtocolVersion(level));
    }
    protocol_error(&connect_bytes(b"MQTX", 4, 0x02, &[0, 1, b'c']), None);
    assert!(matches!(
        ok(&connect_bytes(b"MQTT", 4, 0x02, &[0, 1, b'c']), None),
        Packet::Connect(Connect { protocol: V3, .. })
    ));
    assert!(matches!(
        ok(&connect_bytes(b"MQTT", 5, 0x02, &[0, 0, 1, b'c']), None),
        Packet::Connect(Connect { protocol: V5, .. })
    ));
}

#[test]
fn connect_reserved_flag() {
    let e = error(&connect_bytes(b"MQTT", 4, 0x03, &[0, 1, b'c']), None);
    assert_eq!(
        e,
        DecodeError::MalformedPacket("CONNECT reserved flag is set")
    );
    malformed(&connect_bytes(b"MQTT", 5, 0x01, &[0, 0, 1, b'c']), None);
}

#[test]
fn will_flags_consistency() {
    // Will QoS 1 without the will flag.
    malformed(&connect_bytes(b"MQTT", 4, 0b0000_1010, &[0, 1, b'c']), None);
    // Will retain without the will flag.
    malformed(
        &connect_bytes(b"MQTT", 5, 0b0010_0010, &[0, 0, 1, b'c']),
        None,
    );
    // Will flag with its fields is fine.
    let packet = ok(
        &connect_bytes(b"MQTT", 4, 0b0011_0110, &[0, 1, b'c', 0, 1, b't', 0, 0]),
        None,
    );
    let Packet::Connect(connect) = packet else {
        panic!("not CONNECT")
    };
    let will = connect.will.unwrap();
    assert_eq!((will.qos, will.retain), (QoS::ExactlyOnce, true));
}

#[test]
fn password_without_user_name() {
    let rest = [0, 1, b'c', 0, 2, b'p', b'w'];
    protocol_error(&connect_bytes(b"MQTT", 4, 0b0100_0010, &rest), None);
    let v5_rest = [0, 0, 1, b'c', 0, 2, b'p', b'w'];
    let Packet::Connect(c) = ok(&connect_bytes(b"MQTT", 5, 0b0100_0010, &v5_rest), None) else {
        panic!("not CONNECT")
    };
    assert_eq!(
        (c.username, c.password),
        (None, Some(Bytes::from_static(b"pw")))
    );
    // Encoding refuses what 3.1.1 cannot express.
    let mut connect = Connect {
        protocol: V3,
        clean_start: true,
        keep_alive: 0,
        client_id: "c".into(),
        will: None,
        username: None,
        password: Some(Bytes::from_static(b"pw")),
        properties: Properties::default(),
    };
    assert!(matches!(
        Packet::Connect(connect.clone()).encode(V3, &mut BytesMut::new()),
        Err(EncodeError::Unsupported { version: V3, .. })
    ));
    connect.protocol = V5;
    assert!(
        Packet::Connect(connect)
            .encode(V5, &mut BytesMut::new())
            .is_ok()
    );
}

#[test]
fn empty_subscribe_and_unsubscribe() {
    protocol_error(&[0x82, 0x02, 0x00, 0x01], Some(V3));
    protocol_error(&[0x82, 0x03, 0x00, 0x01, 0x00], Some(V5));
    protocol_error(&[0xA2, 0x02, 0x00, 0x01], Some(V3));
    protocol_error(&[0xA2, 0x03, 0x00, 0x01, 0x00], Some(V5));
    let empty = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![],
        properties: Properties::default(),
    });
    assert!(matches!(
        empty.encode(V5, &mut BytesMut::new()),
        Err(EncodeError::InvalidPacket(_))
    ));
}

#[test]
fn subscription_options_reserved_bits_and_retain_handling() {
    // 3.1.1: bits 7-2 reserved (no local is a 5.0 bit).
    malformed(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04], Some(V3));
    // 5.0: bits 7-6 reserved.
    malformed(
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x40],
        Some(V5),
    );
    malformed(
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x80],
        Some(V5),
    );
    // Retain handling 3.
    let e = error(
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30],
        Some(V5),
    );
    assert_eq!(e, DecodeError::ProtocolError("retain handling 3"));
    let bad = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(
            "a".into(),
            SubscriptionOptions {
                retain_handling: 3,
                ..SubscriptionOptions::default()
            },
        )],
        properties: Properties::default(),
    });
    assert!(bad.encode(V5, &mut BytesMut::new()).is_err());
    let v5_only = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(
            "a".into(),
            SubscriptionOptions {
                no_local: true,
                ..SubscriptionOptions::default()
            },
        )],
        properties: Properties::default(),
    });
    assert!(matches!(
        v5_only.encode(V3, &mut BytesMut::new()),
        Err(EncodeError::Unsupported { .. })
    ));
}

#[test]
fn property_rules() {
    // Duplicate Session Expiry Interval in DISCONNECT.
    protocol_error(
        &[0xE0, 0x0C, 0x00, 0x0A, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2],
        Some(V5),
    );
    // Duplicate Reason String in PUBACK.
    protocol_error(
        &[
            0x40, 0x0C, 0x00, 0x01, 0x00, 0x08, 0x1F, 0, 1, b'a', 0x1F, 0, 1, b'b',
        ],
        Some(V5),
    );
    // User Property may repeat.
    assert!(matches!(
        ok(&[0xE0, 0x0E, 0x00, 0x0C, 0x26, 0, 1, b'a', 0, 0, 0x26, 0, 1, b'a', 0, 0], Some(V5)),
        Packet::Disconnect(d) if d.properties.user_properties.len() == 2
    ));
    // Unknown property identifier 0x05 is malformed.
    let e = error(&[0xE0, 0x04, 0x00, 0x02, 0x05, 0x00], Some(V5));
    assert_eq!(
        e,
        DecodeError::MalformedPacket("unknown property identifier")
    );
    // Topic Alias (PUBLISH only) in DISCONNECT is a protocol error.
    protocol_error(&[0xE0, 0x05, 0x00, 0x03, 0x23, 0x00, 0x01], Some(V5));
    // Will Delay Interval is a Will property, not a CONNECT property.
    protocol_error(
        &connect_bytes(b"MQTT", 5, 0x02, &[5, 0x18, 0, 0, 0, 1, 0, 0]),
        None,
    );
    // Out-of-range values: Receive Maximum 0, Maximum QoS 2.
    protocol_error(&[0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0x00, 0x00], Some(V5));
    protocol_error(&[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02], Some(V5));
    // Encoding a property the packet cannot carry fails.
    let ack = Packet::PubAck(PubAck {
        packet_id: 1,
        reason_code: ReasonCode::SUCCESS,
        properties: Properties {
            topic_alias: Some(1),
            ..Properties::default()
        },
    });
    assert_eq!(
        ack.encode(V5, &mut BytesMut::new()),
        Err(EncodeError::PropertyNotAllowed {
            property: "Topic Alias",
            packet: "PUBACK/PUBREC/PUBREL/PUBCOMP"
        })
    );
}

#[test]
fn packet_identifier_zero() {
    protocol_error(&[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00], Some(V3));
    protocol_error(&[0x40, 0x02, 0x00, 0x00], Some(V5));
    protocol_error(&[0x62, 0x02, 0x00, 0x00], Some(V3));
    protocol_error(&[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00], Some(V3));
    protocol_error(&[0x90, 0x03, 0x00, 0x00, 0x00], Some(V3));
    protocol_error(&[0xB0, 0x02, 0x00, 0x00], Some(V3));
    let zero = Packet::PubAck(PubAck::new(0));
    assert_eq!(
        zero.encode(V3, &mut BytesMut::new()),
        Err(EncodeError::InvalidPacket("packet identifier 0"))
    );
}

#[test]
fn publish_packet_id_and_topic_rules() {
    // DUP on QoS 0.
    protocol_error(&[0x38, 0x03, 0x00, 0x01, b't'], Some(V3));
    // Empty topic: never in 3.1.1; in 5.0 only with a Topic Alias.
    protocol_error(&[0x30, 0x02, 0x00, 0x00], Some(V3));
    protocol_error(&[0x30, 0x03, 0x00, 0x00, 0x00], Some(V5));
    assert!(matches!(
        ok(&[0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01], Some(V5)),
        Packet::Publish(p) if p.topic.is_empty() && p.properties.topic_alias == Some(1)
    ));

    let mut publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "t".into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::new(),
    };
    let mut out = BytesMut::new();
    let encode = |p: &Publish, out: &mut BytesMut| Packet::Publish(p.clone()).encode(V5, out);
    assert!(matches!(
        encode(&publish, &mut out),
        Err(EncodeError::InvalidPacket(_))
    ));
    publish.qos = QoS::AtMostOnce;
    publish.packet_id = Some(1);
    assert!(matches!(
        encode(&publish, &mut out),
        Err(EncodeError::InvalidPacket(_))
    ));
    publish.packet_id = None;
    publish.topic.clear();
    assert!(matches!(
        encode(&publish, &mut out),
        Err(EncodeError::InvalidPacket(_))
    ));
    assert!(out.is_empty(), "failed encodes append nothing");
}

#[test]
fn reason_codes_per_packet_type() {
    // Not authorized is not a PUBREL code.
    malformed(&[0x62, 0x03, 0x00, 0x01, 0x87], Some(V5));
    // Reserved 3.1.1 CONNACK return code and SUBACK return code.
    malformed(&[0x20, 0x02, 0x00, 0x06], Some(V3));
    malformed(&[0x90, 0x03, 0x00, 0x01, 0x03], Some(V3));
    // Session present with a refusal.
    protocol_error(&[0x20, 0x02, 0x01, 0x05], Some(V3));
    // CONNACK reserved flag bits.
    malformed(&[0x20, 0x02, 0x02, 0x00], Some(V3));
    let bad = Packet::SubAck(SubAck {
        packet_id: 1,
        reason_codes: vec![ReasonCode::SERVER_MOVED],
        properties: Properties::default(),
    });
    assert!(matches!(
        bad.encode(V5, &mut BytesMut::new()),
        Err(EncodeError::ReasonCodeNotAllowed {
            packet: "SUBACK",
            ..
        })
    ));
}

#[test]
fn auth_is_mqtt5_only() {
    protocol_error(&[0xF0, 0x00], Some(V3));
    let auth = Packet::Auth(Auth {
        reason_code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    });
    assert_eq!(
        auth.encode(V3, &mut BytesMut::new()),
        Err(EncodeError::Unsupported {
            what: "the AUTH packet",
            version: V3
        })
    );
    assert!(auth.encoded_len(V3).is_err());
}

#[test]
fn connection_state() {
    let connect = connect_bytes(b"MQTT", 5, 0x02, &[0, 0, 1, b'c']);
    let mut decoder = Decoder::new(MAX);
    assert_eq!(decoder.version(), None);

    // Anything but CONNECT first is a protocol error, from the first byte.
    let e = decoder
        .decode(&mut BytesMut::from(&[0xC0][..]))
        .unwrap_err();
    assert_eq!(e, DecodeError::ProtocolError("first packet is not CONNECT"));

    let mut buf = BytesMut::from(&connect[..]);
    assert!(matches!(
        decoder.decode(&mut buf),
        Ok(Some(Packet::Connect(_)))
    ));
    assert_eq!(decoder.version(), Some(V5));

    // A second CONNECT is a protocol error.
    let mut buf = BytesMut::from(&connect[..]);
    assert_eq!(
        decoder.decode(&mut buf),
        Err(DecodeError::ProtocolError("second CONNECT packet"))
    );
    protocol_error(&connect, Some(V3));
    protocol_error(&[0xC0, 0x00], None);
}

#[test]
fn packet_too_large_before_body() {
    let mut decoder = Decoder::new(100);
    decoder.set_version(V3);
    // Announces 200 bytes of body; only the header has arrived.
    let mut buf = BytesMut::from(&[0x30, 0xC8, 0x01][..]);
    let e = decoder.decode(&mut buf).unwrap_err();
    assert_eq!(
        e,
        DecodeError::PacketTooLarge {
            size: 203,
            max: 100
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::PACKET_TOO_LARGE);
    // The limit counts the fixed header: exactly max is accepted.
    let mut exact = vec![0x30, 98, 0x00, 0x01, b't'];
    exact.resize(100, b'x');
    assert!(matches!(
        decode_packet(&exact, Some(V3), 100),
        Ok(Some((_, 100)))
    ));
    assert!(matches!(
        decode_packet(&exact, Some(V3), 99),
        Err(DecodeError::PacketTooLarge { size: 100, max: 99 })
    ));
}

#[test]
fn encode_limits() {
    let long = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".repeat(65_536),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::new(),
    });
    assert_eq!(
        long.encoded_len(V3),
        Err(EncodeError::FieldTooLong {
            field: "topic name",
            len: 65_536
        })
    );
    // A payload over the remaining-length maximum (zeroed pages are never touched).
    let huge = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::from(vec![0u8; 268_435_455]),
    });
    let mut out = BytesMut::new();
    assert!(matches!(
        huge.encode(V5, &mut out),
        Err(EncodeError::TooLarge {
            field: "remaining length",
            ..
        })
    ));
    assert!(out.is_empty());
    let nul = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "a\0b".into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::new(),
    });
    assert_eq!(
        nul.encoded_len(V5),
        Err(EncodeError::NullCharacter {
            field: "topic name"
        })
    );
}

#[test]
fn v311_drops_what_it_cannot_carry() {
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: None,
        properties: Properties {
            message_expiry_interval: Some(5),
            ..Properties::default()
        },
        payload: Bytes::from_static(b"x"),
    });
    let mut out = BytesMut::new();
    publish.encode(V3, &mut out).unwrap();
    assert_eq!(&out[..], &[0x30, 0x04, 0x00, 0x01, b't', b'x']);
}
