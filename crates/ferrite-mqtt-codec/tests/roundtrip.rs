//! Property tests: every packet type round-trips in every version it exists in, and the
//! decoder is total (no panic, no premature success, no unchecked allocation) on any input.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use ferrite_mqtt_codec::{
    Auth, ConnAck, Connect, DecodeError, Decoder, Disconnect, MAX_PACKET_SIZE, Packet, Properties,
    ProtocolVersion, PubAck, Publish, QoS, ReasonCode, SubAck, Subscribe, SubscriptionOptions,
    UnsubAck, Unsubscribe, Will, decode_packet,
};
use proptest::collection::vec;
use proptest::option::of as opt;
use proptest::prelude::*;
use proptest::sample::select;

const V3: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

/// Strings MQTT accepts (no U+0000; `\PC` excludes all control characters).
fn text() -> impl Strategy<Value = String> {
    "\\PC{0,8}"
}

fn bin() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn packet_id() -> impl Strategy<Value = u16> {
    1u16..
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    opt(0u8..=1)
}

/// Any combination of valid property values, regardless of packet type.
fn any_properties() -> impl Strategy<Value = Properties> {
    let publish = (
        flag(),
        opt(any::<u32>()),
        opt(text()),
        opt(text()),
        opt(bin()),
        vec(1u32..=268_435_455, 0..3),
        opt(1u16..),
    );
    let connect = (
        opt(any::<u32>()),
        opt(text()),
        opt(bin()),
        flag(),
        flag(),
        opt(1u16..),
        opt(any::<u16>()),
        opt(1u32..),
        opt(any::<u32>()),
    );
    let connack = (
        opt(text()),
        opt(any::<u16>()),
        opt(text()),
        opt(text()),
        opt(text()),
        flag(),
        flag(),
        flag(),
        flag(),
        flag(),
    );
    let users = vec((text(), text()), 0..3);
    (publish, connect, connack, users).prop_map(|(p, c, a, user_properties)| Properties {
        payload_format_indicator: p.0,
        message_expiry_interval: p.1,
        content_type: p.2,
        response_topic: p.3,
        correlation_data: p.4,
        subscription_identifiers: p.5,
        topic_alias: p.6,
        session_expiry_interval: c.0,
        authentication_method: c.1,
        authentication_data: c.2,
        request_problem_information: c.3,
        request_response_information: c.4,
        receive_maximum: c.5,
        topic_alias_maximum: c.6,
        maximum_packet_size: c.7,
        will_delay_interval: c.8,
        assigned_client_identifier: a.0,
        server_keep_alive: a.1,
        response_information: a.2,
        server_reference: a.3,
        reason_string: a.4,
        maximum_qos: a.5,
        retain_available: a.6,
        wildcard_subscription_available: a.7,
        subscription_identifier_available: a.8,
        shared_subscription_available: a.9,
        user_properties,
    })
}

/// Where a property list sits; the allowed sets follow MQTT 5.0 section 2.2.2.2 and are
/// written out independently of the codec's own table.
#[derive(Clone, Copy, Debug)]
enum Ctx {
    Connect,
    Will,
    ConnAck,
    Publish,
    Ack,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
}

/// Keep only the properties `ctx` allows.
fn restrict(p: Properties, ctx: Ctx) -> Properties {
    let d = Properties::default();
    let user_properties = p.user_properties;
    match ctx {
        Ctx::Connect => Properties {
            session_expiry_interval: p.session_expiry_interval,
            authentication_method: p.authentication_method,
            authentication_data: p.authentication_data,
            request_problem_information: p.request_problem_information,
            request_response_information: p.request_response_information,
            receive_maximum: p.receive_maximum,
            topic_alias_maximum: p.topic_alias_maximum,
            maximum_packet_size: p.maximum_packet_size,
            user_properties,
            ..d
        },
        Ctx::Will => Properties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            will_delay_interval: p.will_delay_interval,
            user_properties,
            ..d
        },
        Ctx::ConnAck => Properties {
            session_expiry_interval: p.session_expiry_interval,
            assigned_client_identifier: p.assigned_client_identifier,
            server_keep_alive: p.server_keep_alive,
            authentication_method: p.authentication_method,
            authentication_data: p.authentication_data,
            response_information: p.response_information,
            server_reference: p.server_reference,
            reason_string: p.reason_string,
            receive_maximum: p.receive_maximum,
            topic_alias_maximum: p.topic_alias_maximum,
            maximum_qos: p.maximum_qos,
            retain_available: p.retain_available,
            maximum_packet_size: p.maximum_packet_size,
            wildcard_subscription_available: p.wildcard_subscription_available,
            subscription_identifier_available: p.subscription_identifier_available,
            shared_subscription_available: p.shared_subscription_available,
            user_properties,
            ..d
        },
        Ctx::Publish => Properties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            subscription_identifiers: p.subscription_identifiers,
            topic_alias: p.topic_alias,
            user_properties,
            ..d
        },
        Ctx::Ack => Properties {
            reason_string: p.reason_string,
            user_properties,
            ..d
        },
        Ctx::Subscribe => Properties {
            subscription_identifiers: p.subscription_identifiers.into_iter().take(1).collect(),
            user_properties,
            ..d
        },
        Ctx::Unsubscribe => Properties {
            user_properties,
            ..d
        },
        Ctx::Disconnect => Properties {
            session_expiry_interval: p.session_expiry_interval,
            server_reference: p.server_reference,
            reason_string: p.reason_string,
            user_properties,
            ..d
        },
        Ctx::Auth => Properties {
            authentication_method: p.authentication_method,
            authentication_data: p.authentication_data,
            reason_string: p.reason_string,
            user_properties,
            ..d
        },
    }
}

/// Properties valid for `ctx` in `v` (always empty for 3.1.1).
fn props(v: ProtocolVersion, ctx: Ctx) -> BoxedStrategy<Properties> {
    match v {
        V3 => Just(Properties::default()).boxed(),
        V5 => any_properties().prop_map(move |p| restrict(p, ctx)).boxed(),
    }
}

fn codes(list: &[u8]) -> impl Strategy<Value = ReasonCode> + use<> {
    select(list.iter().copied().map(ReasonCode).collect::<Vec<_>>())
}

fn connect(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let will = (text(), bin(), qos(), any::<bool>(), props(v, Ctx::Will)).prop_map(
        |(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        },
    );
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        opt(will),
        opt(text()),
        opt(bin()),
        props(v, Ctx::Connect),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // 3.1.1 forbids a password without a user name.
                let username = match (v, &password, username) {
                    (V3, Some(_), None) => Some("user".to_owned()),
                    (_, _, username) => username,
                };
                Packet::Connect(Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                })
            },
        )
        .boxed()
}

fn connack(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let reason = match v {
        // The codes that survive the 3.1.1 return-code mapping unchanged.
        V3 => codes(&[0x00, 0x84, 0x85, 0x88, 0x86, 0x87]).boxed(),
        V5 => codes(&[
            0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90,
            0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
        ])
        .boxed(),
    };
    (any::<bool>(), reason, props(v, Ctx::ConnAck))
        .prop_map(|(session_present, reason_code, properties)| {
            Packet::ConnAck(ConnAck {
                session_present: session_present && !reason_code.is_error(),
                reason_code,
                properties,
            })
        })
        .boxed()
}

fn publish(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        text(),
        packet_id(),
        props(v, Ctx::Publish),
        bin(),
    )
        .prop_map(
            move |(dup, qos, retain, topic, id, mut properties, payload)| {
                let topic = match (v, topic.is_empty()) {
                    (V3, true) => "t".to_owned(),
                    _ => topic,
                };
                if topic.is_empty() && properties.topic_alias.is_none() {
                    properties.topic_alias = Some(1);
                }
                let qos0 = qos == QoS::AtMostOnce;
                Packet::Publish(Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic,
                    packet_id: if qos0 { None } else { Some(id) },
                    properties,
                    payload,
                })
            },
        )
        .boxed()
}

/// PUBACK/PUBREC (`rel == false`) or PUBREL/PUBCOMP (`rel == true`) bodies.
fn puback(v: ProtocolVersion, rel: bool) -> BoxedStrategy<PubAck> {
    let reason = match (v, rel) {
        (V3, _) => Just(ReasonCode::SUCCESS).boxed(),
        (V5, false) => codes(&[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]).boxed(),
        (V5, true) => codes(&[0x00, 0x92]).boxed(),
    };
    (packet_id(), reason, props(v, Ctx::Ack))
        .prop_map(|(packet_id, reason_code, properties)| PubAck {
            packet_id,
            reason_code,
            properties,
        })
        .boxed()
}

fn subscribe(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let options = (qos(), any::<bool>(), any::<bool>(), 0u8..=2).prop_map(
        move |(qos, nl, rap, rh)| match v {
            V3 => SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            },
            V5 => SubscriptionOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: rh,
            },
        },
    );
    (
        packet_id(),
        vec((text(), options), 1..4),
        props(v, Ctx::Subscribe),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        })
        .boxed()
}

fn suback(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let reason = match v {
        V3 => codes(&[0x00, 0x01, 0x02, 0x80]).boxed(),
        V5 => codes(&[
            0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
        ])
        .boxed(),
    };
    (packet_id(), vec(reason, 1..4), props(v, Ctx::Ack))
        .prop_map(|(packet_id, reason_codes, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reason_codes,
                properties,
            })
        })
        .boxed()
}

fn unsubscribe(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    (packet_id(), vec(text(), 1..4), props(v, Ctx::Unsubscribe))
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        })
        .boxed()
}

fn unsuback(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let reasons = match v {
        V3 => Just(Vec::new()).boxed(),
        V5 => vec(codes(&[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91]), 1..4).boxed(),
    };
    (packet_id(), reasons, props(v, Ctx::Ack))
        .prop_map(|(packet_id, reason_codes, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reason_codes,
                properties,
            })
        })
        .boxed()
}

fn disconnect(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let reason = match v {
        V3 => Just(ReasonCode::NORMAL_DISCONNECTION).boxed(),
        V5 => codes(&[
            0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93,
            0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1,
            0xA2,
        ])
        .boxed(),
    };
    (reason, props(v, Ctx::Disconnect))
        .prop_map(|(reason_code, properties)| {
            Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            })
        })
        .boxed()
}

fn auth() -> BoxedStrategy<Packet> {
    (codes(&[0x00, 0x18, 0x19]), props(V5, Ctx::Auth))
        .prop_map(|(reason_code, properties)| {
            Packet::Auth(Auth {
                reason_code,
                properties,
            })
        })
        .boxed()
}

/// Any packet valid after CONNECT on a `v` connection.
fn post_connect_packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut options = vec![
        connack(v),
        publish(v),
        puback(v, false).prop_map(Packet::PubAck).boxed(),
        puback(v, false).prop_map(Packet::PubRec).boxed(),
        puback(v, true).prop_map(Packet::PubRel).boxed(),
        puback(v, true).prop_map(Packet::PubComp).boxed(),
        subscribe(v),
        suback(v),
        unsubscribe(v),
        unsuback(v),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect(v),
    ];
    if v == V5 {
        options.push(auth());
    }
    proptest::strategy::Union::new(options).boxed()
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    select(vec![V3, V5])
}

/// A version and any packet valid in it.
fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| {
        let packet = prop_oneof![1 => connect(v), 6 => post_connect_packet(v)];
        (Just(v), packet)
    })
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

/// Decoder state a packet is received in: CONNECT only before the version is known.
fn state_for(packet: &Packet, v: ProtocolVersion) -> Option<ProtocolVersion> {
    match packet {
        Packet::Connect(_) => None,
        _ => Some(v),
    }
}

fn encode(packet: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    packet.encode(v, &mut out).unwrap();
    out
}

fn check_round_trip(v: ProtocolVersion, packet: &Packet) -> Result<(), TestCaseError> {
    let bytes = encode(packet, v);
    prop_assert_eq!(packet.encoded_len(v).unwrap(), bytes.len());
    let decoded = decode_packet(&bytes, state_for(packet, v), MAX_PACKET_SIZE);
    prop_assert_eq!(decoded, Ok(Some((packet.clone(), bytes.len()))));

    // The stateful decoder agrees and consumes exactly the packet.
    let mut decoder = Decoder::new(MAX_PACKET_SIZE);
    if !matches!(packet, Packet::Connect(_)) {
        decoder.set_version(v);
    }
    let mut buf = bytes.clone();
    buf.extend_from_slice(&[0xC0]);
    prop_assert_eq!(decoder.decode(&mut buf), Ok(Some(packet.clone())));
    prop_assert_eq!(&buf[..], &[0xC0][..]);
    prop_assert_eq!(decoder.version(), Some(v));
    Ok(())
}

macro_rules! round_trip_tests {
    ($($name:ident: $strategy:expr, $version:expr;)*) => {
        proptest! {
            $(
                #[test]
                fn $name(packet in $strategy) {
                    check_round_trip($version, &packet)?;
                }
            )*
        }
    };
}

round_trip_tests! {
    connect_v311: connect(V3), V3;
    connect_v5: connect(V5), V5;
    connack_v311: connack(V3), V3;
    connack_v5: connack(V5), V5;
    publish_v311: publish(V3), V3;
    publish_v5: publish(V5), V5;
    puback_v311: puback(V3, false).prop_map(Packet::PubAck), V3;
    puback_v5: puback(V5, false).prop_map(Packet::PubAck), V5;
    pubrec_v311: puback(V3, false).prop_map(Packet::PubRec), V3;
    pubrec_v5: puback(V5, false).prop_map(Packet::PubRec), V5;
    pubrel_v311: puback(V3, true).prop_map(Packet::PubRel), V3;
    pubrel_v5: puback(V5, true).prop_map(Packet::PubRel), V5;
    pubcomp_v311: puback(V3, true).prop_map(Packet::PubComp), V3;
    pubcomp_v5: puback(V5, true).prop_map(Packet::PubComp), V5;
    subscribe_v311: subscribe(V3), V3;
    subscribe_v5: subscribe(V5), V5;
    suback_v311: suback(V3), V3;
    suback_v5: suback(V5), V5;
    unsubscribe_v311: unsubscribe(V3), V3;
    unsubscribe_v5: unsubscribe(V5), V5;
    unsuback_v311: unsuback(V3), V3;
    unsuback_v5: unsuback(V5), V5;
    pingreq_v311: Just(Packet::PingReq), V3;
    pingreq_v5: Just(Packet::PingReq), V5;
    pingresp_v311: Just(Packet::PingResp), V3;
    pingresp_v5: Just(Packet::PingResp), V5;
    disconnect_v311: disconnect(V3), V3;
    disconnect_v5: disconnect(V5), V5;
    auth_v5: auth(), V5;
}

proptest! {
    /// Arbitrary bytes never panic, whatever the decoder state.
    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..256), max in 0u32..512) {
        for state in [None, Some(V3), Some(V5)] {
            let result = decode_packet(&bytes, state, max);
            if let Ok(Some((_, used))) = result {
                prop_assert!(used <= bytes.len() && used <= max as usize);
            }
            let mut decoder = Decoder::new(max);
            if let Some(v) = state {
                decoder.set_version(v);
            }
            let mut buf = BytesMut::from(&bytes[..]);
            // Bounded: every Ok(Some) consumes at least two bytes.
            while let Ok(Some(_)) = decoder.decode(&mut buf) {}
        }
    }

    /// Valid packets with a few bytes overwritten never panic either, and whatever
    /// decodes re-encodes (encode accepts everything decode accepts) to bytes that
    /// decode to the same packet.
    #[test]
    fn corrupted_packets_never_panic(
        (v, packet) in versioned_packet(),
        edits in vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = encode(&packet, v).to_vec();
        for (at, value) in edits {
            let len = bytes.len();
            bytes[at % len] = value;
        }
        let state = state_for(&packet, v);
        if let Ok(Some((decoded, _))) = decode_packet(&bytes, state, MAX_PACKET_SIZE) {
            let version = match &decoded {
                Packet::Connect(c) => c.protocol,
                _ => v,
            };
            let again = encode(&decoded, version);
            let redecoded = decode_packet(&again, state, MAX_PACKET_SIZE);
            prop_assert_eq!(redecoded, Ok(Some((decoded, again.len()))));
        }
    }

    /// Every strict prefix of a valid packet is "need more bytes", and leaves the
    /// decoder's buffer untouched.
    #[test]
    fn truncated_packets_need_more((v, packet) in versioned_packet()) {
        let bytes = encode(&packet, v);
        let state = state_for(&packet, v);
        for cut in 0..bytes.len() {
            prop_assert_eq!(decode_packet(&bytes[..cut], state, MAX_PACKET_SIZE), Ok(None));
            let mut decoder = Decoder::new(MAX_PACKET_SIZE);
            if let Some(v) = state {
                decoder.set_version(v);
            }
            let mut buf = BytesMut::from(&bytes[..cut]);
            prop_assert_eq!(decoder.decode(&mut buf), Ok(None));
            prop_assert_eq!(&buf[..], &bytes[..cut]);
        }
    }

    /// A remaining length above the limit fails as soon as the length is readable,
    /// before any body byte arrives and without growing the buffer.
    #[test]
    fn oversized_remaining_length_fails_early(
        remaining in 0u32..=268_435_455,
        max in 0u32..=1_000_000,
        kind in select(vec![0x30u8, 0x82, 0xC0, 0xE0]),
    ) {
        let mut header = vec![kind];
        let mut rest = remaining;
        loop {
            let byte = (rest & 0x7F) as u8;
            rest >>= 7;
            header.push(if rest > 0 { byte | 0x80 } else { byte });
            if rest == 0 { break; }
        }
        let size = header.len() + remaining as usize;
        prop_assume!(size > max as usize);
        let expected = DecodeError::PacketTooLarge { size, max };
        prop_assert_eq!(decode_packet(&header, Some(V5), max), Err(expected.clone()));

        let mut decoder = Decoder::new(max);
        decoder.set_version(V3);
        let mut buf = BytesMut::from(&header[..]);
        let capacity = buf.capacity();
        prop_assert_eq!(decoder.decode(&mut buf), Err(expected));
        prop_assert_eq!(buf.capacity(), capacity);
        prop_assert_eq!(&buf[..], &header[..]);
    }

    /// A connection's byte stream, cut into arbitrary chunks, decodes to the packets
    /// that were sent, in order; the decoder learns the version from CONNECT.
    #[test]
    fn stream_in_chunks(
        (v, first, rest) in version()
            .prop_flat_map(|v| (Just(v), connect(v), vec(post_connect_packet(v), 0..6))),
        chunk in 1usize..40,
    ) {
        let mut wire = encode(&first, v);
        for p in &rest {
            wire.extend_from_slice(&encode(p, v));
        }
        let mut decoder = Decoder::new(MAX_PACKET_SIZE);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(p) = decoder.decode(&mut buf).unwrap() {
                got.push(p);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoder.version(), Some(v));
        let mut expected = vec![first];
        expected.extend(rest);
        prop_assert_eq!(got, expected);
    }
}
