//! Fuzz the MQTT decoder: arbitrary bytes must never panic, and every packet that
//! decodes must re-encode and decode back to itself.
#![no_main]

use bytes::BytesMut;
use ferrite_mqtt_codec::{Decoder, MAX_PACKET_SIZE, Packet, ProtocolVersion, decode_packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for state in [None, Some(ProtocolVersion::V311), Some(ProtocolVersion::V5)] {
        let Ok(Some((packet, used))) = decode_packet(data, state, MAX_PACKET_SIZE) else {
            continue;
        };
        assert!(used <= data.len());
        let version = match (&packet, state) {
            (Packet::Connect(connect), _) => connect.protocol,
            (_, Some(version)) => version,
            (_, None) => panic!("only CONNECT decodes before the version is known"),
        };
        let mut out = BytesMut::new();
        packet
            .encode(version, &mut out)
            .expect("every decoded packet re-encodes");
        assert_eq!(packet.encoded_len(version), Ok(out.len()));
        let again = decode_packet(&out, state, MAX_PACKET_SIZE);
        assert_eq!(again, Ok(Some((packet, out.len()))));
    }

    // The stateful decoder over the input as a connection's byte stream.
    let mut decoder = Decoder::new(MAX_PACKET_SIZE);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = decoder.decode(&mut buf) {}
});
