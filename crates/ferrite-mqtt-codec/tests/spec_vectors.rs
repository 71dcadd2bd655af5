//! Hand-written byte vectors, laid out as in the MQTT 3.1.1 and 5.0 specs: each test
//! decodes the bytes, compares with the expected packet, and encodes it back.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use ferrite_mqtt_codec::{
    Auth, ConnAck, Connect, Disconnect, Packet, Properties, ProtocolVersion, PubAck, Publish, QoS,
    ReasonCode, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will, decode_packet,
};

const V3: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;
const MAX: u32 = 1 << 20;

fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    packet.encode(version, &mut out).unwrap();
    assert_eq!(packet.encoded_len(version).unwrap(), out.len());
    out.to_vec()
}

/// Decode `bytes` as a whole packet on a `version` connection (CONNECT: before one).
fn decode(bytes: &[u8], version: ProtocolVersion) -> Packet {
    let state = if bytes.first().is_some_and(|b| b >> 4 == 1) {
        None
    } else {
        Some(version)
    };
    let (packet, used) = decode_packet(bytes, state, MAX).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    packet
}

/// Decode must give `expected` and encode must give the bytes back.
fn check(bytes: &[u8], version: ProtocolVersion, expected: &Packet) {
    assert_eq!(&decode(bytes, version), expected);
    assert_eq!(encode(expected, version), bytes);
}

#[test]
fn connect_v311_minimal() {
    let bytes = [
        0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03, b'a',
        b'b', b'c',
    ];
    let expected = Packet::Connect(Connect {
        protocol: V3,
        clean_start: true,
        keep_alive: 60,
        client_id: "abc".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    });
    check(&bytes, V3, &expected);
}

#[test]
fn connect_v311_with_will_and_credentials() {
    // Flags 0xEE: user name, password, will retain, will QoS 1, will, clean session.
    let bytes = [
        0x10, 0x1A, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xEE, 0x00, 0x0A, 0x00, 0x01, b'c',
        0x00, 0x01, b't', 0x00, 0x02, b'h', b'i', 0x00, 0x01, b'u', 0x00, 0x01, b'p',
    ];
    let expected = Packet::Connect(Connect {
        protocol: V3,
        clean_start: true,
        keep_alive: 10,
        client_id: "c".into(),
        will: Some(Will {
            topic: "t".into(),
            payload: Bytes::from_static(b"hi"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        properties: Properties::default(),
    });
    check(&bytes, V3, &expected);
}

#[test]
fn connect_v5_with_properties_and_will_properties() {
    // Receive Maximum 20, empty client id.
    let bytes = [
        0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x03, 0x21, 0x00,
        0x14, 0x00, 0x00,
    ];
    let expected = Packet::Connect(Connect {
        protocol: V5,
        clean_start: true,
        keep_alive: 60,
        client_id: String::new(),
        will: None,
        username: None,
        password: None,
        properties: Properties {
            receive_maximum: Some(20),
            ..Properties::default()
        },
    });
    check(&bytes, V5, &expected);

    // Will with a Will Delay Interval of 10 s.
    let bytes = [
        0x10, 0x1A, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x06, 0x00, 0x00, 0x00, 0x00, 0x01,
        b'c', 0x05, 0x18, 0x00, 0x00, 0x00, 0x0A, 0x00, 0x01, b't', 0x00, 0x01, b'x',
    ];
    let expected = Packet::Connect(Connect {
        protocol: V5,
        clean_start: true,
        keep_alive: 0,
        client_id: "c".into(),
        will: Some(Will {
            topic: "t".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties {
                will_delay_interval: Some(10),
                ..Properties::default()
            },
        }),
        username: None,
        password: None,
        properties: Properties::default(),
    });
    check(&bytes, V5, &expected);
}

#[test]
fn connack_both_versions() {
    let ok = ConnAck {
        session_present: true,
        reason_code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    };
    check(&[0x20, 0x02, 0x01, 0x00], V3, &Packet::ConnAck(ok.clone()));
    check(&[0x20, 0x03, 0x01, 0x00, 0x00], V5, &Packet::ConnAck(ok));

    let refused = ConnAck {
        session_present: false,
        reason_code: ReasonCode::NOT_AUTHORIZED,
        properties: Properties::default(),
    };
    check(&[0x20, 0x02, 0x00, 0x05], V3, &Packet::ConnAck(refused));
    // 3.1.1 return code 3 covers three MQTT 5 codes.
    let busy = Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: ReasonCode::SERVER_BUSY,
        properties: Properties::default(),
    });
    assert_eq!(encode(&busy, V3), [0x20, 0x02, 0x00, 0x03]);

    let v5 = ConnAck {
        session_present: false,
        reason_code: ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        properties: Properties {
            reason_string: Some("no".into()),
            ..Properties::default()
        },
    };
    check(
        &[0x20, 0x08, 0x00, 0x86, 0x05, 0x1F, 0x00, 0x02, b'n', b'o'],
        V5,
        &Packet::ConnAck(v5),
    );
}

#[test]
fn publish_v311_and_v5_with_properties() {
    let qos0 = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: "t".into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::from_static(b"x"),
    };
    check(
        &[0x31, 0x04, 0x00, 0x01, b't', b'x'],
        V3,
        &Packet::Publish(qos0),
    );

    // QoS 1, topic "a/b", id 10, Payload Format Indicator 1, Topic Alias 5, payload "hi".
    let bytes = [
        0x32, 0x0F, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, 0x05, 0x01, 0x01, 0x23, 0x00, 0x05,
        b'h', b'i',
    ];
    let expected = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "a/b".into(),
        packet_id: Some(10),
        properties: Properties {
            payload_format_indicator: Some(1),
            topic_alias: Some(5),
            ..Properties::default()
        },
        payload: Bytes::from_static(b"hi"),
    };
    check(&bytes, V5, &Packet::Publish(expected));

    // QoS 2 + DUP, empty topic with a Topic Alias, empty payload.
    let bytes = [0x3C, 0x08, 0x00, 0x00, 0x00, 0x01, 0x03, 0x23, 0x00, 0x02];
    let expected = Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: String::new(),
        packet_id: Some(1),
        properties: Properties {
            topic_alias: Some(2),
            ..Properties::default()
        },
        payload: Bytes::new(),
    };
    check(&bytes, V5, &Packet::Publish(expected));
}

#[test]
fn puback_short_forms_v5() {
    let success = Packet::PubAck(PubAck::new(10));
    check(&[0x40, 0x02, 0x00, 0x0A], V5, &success);
    check(&[0x40, 0x02, 0x00, 0x0A], V3, &success);
    // The long forms of Success decode to the same packet.
    assert_eq!(decode(&[0x40, 0x03, 0x00, 0x0A, 0x00], V5), success);
    assert_eq!(decode(&[0x40, 0x04, 0x00, 0x0A, 0x00, 0x00], V5), success);

    // Reason code without properties: 3 bytes.
    let no_subscribers = PubAck {
        packet_id: 10,
        reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
        properties: Properties::default(),
    };
    check(
        &[0x40, 0x03, 0x00, 0x0A, 0x10],
        V5,
        &Packet::PubAck(no_subscribers.clone()),
    );
    // 3.1.1 has no reason codes: only the packet id is sent.
    assert_eq!(
        encode(&Packet::PubAck(no_subscribers), V3),
        [0x40, 0x02, 0x00, 0x0A]
    );

    // PUBREL has flags 0b0010 and its own codes.
    let rel = PubAck {
        packet_id: 1,
        reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
        properties: Properties::default(),
    };
    check(&[0x62, 0x03, 0x00, 0x01, 0x92], V5, &Packet::PubRel(rel));
    check(
        &[0x50, 0x02, 0x00, 0x07],
        V5,
        &Packet::PubRec(PubAck::new(7)),
    );
    check(
        &[0x70, 0x02, 0x00, 0x07],
        V3,
        &Packet::PubComp(PubAck::new(7)),
    );
}

#[test]
fn subscribe_and_suback() {
    let sub = Subscribe {
        packet_id: 1,
        filters: vec![(
            "a/b".into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..SubscriptionOptions::default()
            },
        )],
        properties: Properties::default(),
    };
    check(
        &[0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'b', 0x01],
        V3,
        &Packet::Subscribe(sub),
    );

    // Subscription Identifier 7; options QoS 1 | No Local | RAP | Retain Handling 2 = 0x2D.
    let sub = Subscribe {
        packet_id: 2,
        filters: vec![(
            "x".into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2,
            },
        )],
        properties: Properties {
            subscription_identifiers: vec![7],
            ..Properties::default()
        },
    };
    check(
        &[
            0x82, 0x09, 0x00, 0x02, 0x02, 0x0B, 0x07, 0x00, 0x01, b'x', 0x2D,
        ],
        V5,
        &Packet::Subscribe(sub),
    );

    let suback = SubAck {
        packet_id: 10,
        reason_codes: vec![
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GRANTED_QOS_1,
            ReasonCode(0x80),
        ],
        properties: Properties::default(),
    };
    check(
        &[0x90, 0x05, 0x00, 0x0A, 0x00, 0x01, 0x80],
        V3,
        &Packet::SubAck(suback),
    );
    // Any MQTT 5 error code is "Failure" (0x80) in 3.1.1.
    let denied = Packet::SubAck(SubAck {
        packet_id: 10,
        reason_codes: vec![ReasonCode::GRANTED_QOS_2, ReasonCode::NOT_AUTHORIZED],
        properties: Properties::default(),
    });
    assert_eq!(encode(&denied, V3), [0x90, 0x04, 0x00, 0x0A, 0x02, 0x80]);
    check(&[0x90, 0x05, 0x00, 0x0A, 0x00, 0x02, 0x87], V5, &denied);
}

#[test]
fn unsubscribe_and_unsuback() {
    let unsub = Unsubscribe {
        packet_id: 2,
        filters: vec!["x".into()],
        properties: Properties::default(),
    };
    check(
        &[0xA2, 0x05, 0x00, 0x02, 0x00, 0x01, b'x'],
        V3,
        &Packet::Unsubscribe(unsub.clone()),
    );
    check(
        &[0xA2, 0x06, 0x00, 0x02, 0x00, 0x00, 0x01, b'x'],
        V5,
        &Packet::Unsubscribe(unsub),
    );

    let v5 = UnsubAck {
        packet_id: 2,
        reason_codes: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
        properties: Properties::default(),
    };
    check(
        &[0xB0, 0x04, 0x00, 0x02, 0x00, 0x11],
        V5,
        &Packet::UnsubAck(v5.clone()),
    );
    // 3.1.1: no payload; decodes with no reason codes.
    assert_eq!(encode(&Packet::UnsubAck(v5), V3), [0xB0, 0x02, 0x00, 0x02]);
    let v3 = UnsubAck {
        packet_id: 2,
        reason_codes: vec![],
        properties: Properties::default(),
    };
    check(&[0xB0, 0x02, 0x00, 0x02], V3, &Packet::UnsubAck(v3));
}

#[test]
fn ping() {
    check(&[0xC0, 0x00], V3, &Packet::PingReq);
    check(&[0xD0, 0x00], V5, &Packet::PingResp);
}

#[test]
fn disconnect_v311_and_v5() {
    let normal = Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION));
    check(&[0xE0, 0x00], V3, &normal);
    check(&[0xE0, 0x00], V5, &normal);

    // Session taken over, as a broker sends it (with an empty property length).
    let taken = Packet::Disconnect(Disconnect::new(ReasonCode::SESSION_TAKEN_OVER));
    assert_eq!(decode(&[0xE0, 0x02, 0x8E, 0x00], V5), taken);
    check(&[0xE0, 0x01, 0x8E], V5, &taken);
    // 3.1.1 DISCONNECT has no body.
    assert_eq!(encode(&taken, V3), [0xE0, 0x00]);

    let expiry = Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::NORMAL_DISCONNECTION,
        properties: Properties {
            session_expiry_interval: Some(60),
            ..Properties::default()
        },
    });
    check(
        &[0xE0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x3C],
        V5,
        &expiry,
    );
}

#[test]
fn auth_v5() {
    let empty = Packet::Auth(Auth {
        reason_code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    });
    check(&[0xF0, 0x00], V5, &empty);
    let cont = Packet::Auth(Auth {
        reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Properties {
            authentication_method: Some("m".into()),
            ..Properties::default()
        },
    });
    check(&[0xF0, 0x06, 0x18, 0x04, 0x15, 0x00, 0x01, b'm'], V5, &cont);
}

#[test]
fn packet_type_names() {
    assert_eq!(Packet::PingReq.packet_type_name(), "PINGREQ");
    assert_eq!(Packet::PubRel(PubAck::new(1)).packet_type_name(), "PUBREL");
    assert_eq!(
        Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)).packet_type_name(),
        "DISCONNECT"
    );
}
