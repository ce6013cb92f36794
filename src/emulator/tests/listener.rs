//! The shared MQTT listener against garbage: a bad connection closes alone, and mutated packets
//! and topics never panic the parsers.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{Packet, QoS};

use super::support::*;

#[test]
fn garbage_closes_only_that_connection() {
    use std::io::{Read, Write};
    let f = fixture(None);
    f.sensors_group();
    let port = f.emulator.mqtt_port();
    // Plain bytes instead of a TLS handshake, and a connection that never speaks.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.write_all(b"\x10\xff\xff\xff\xffGARBAGE").unwrap();
    let mut sink = [0u8; 64];
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = raw.read(&mut sink);
    let _silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Garbage after a good TLS handshake.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = client_tls(&f.emulator.trust_pem(), None);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        for garbage in [
            &b"\x30\x7f"[..],
            b"\xe0\x00",
            b"\x10\x04\x00\x04MQTX",
            &[0xffu8; 300][..],
        ] {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let mut tls = connector
                .connect("127.0.0.1".try_into().unwrap(), tcp)
                .await
                .unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            tls.write_all(garbage).await.unwrap();
            let mut buf = [0u8; 16];
            let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
                .await
                .unwrap()
                .unwrap_or(0);
            assert_eq!(
                n, 0,
                "the emulator closes a connection that sends {garbage:?}"
            );
        }
    });
    let device = f.device("after-garbage");
    provision(&f.emulator, &f.scope, "after-garbage", device_auth(&device)).assigned_hub();
}

/// A small deterministic fuzz run over everything the listener parses from the network: MQTT
/// packets (the codec), CONNECT usernames, DPS topics and SAS tokens. Mutations of valid
/// packets reach deep into the parsers; nothing may panic.
#[test]
fn fuzz_packet_and_topic_parsing() {
    use bytes::BytesMut;
    use rumqttc::{Connect, ConnectAuth, Subscribe};

    let mut seeds = Vec::new();
    let mut connect = Connect::new("dev-1");
    connect.auth = ConnectAuth::UsernamePassword {
        username: "0ne00000001/registrations/dev-1/api-version=2019-03-31".into(),
        password: "SharedAccessSignature sr=0ne00000001%2Fregistrations%2Fdev-1&sig=abc%3D&se=1"
            .into(),
    };
    let mut publish = rumqttc::Publish::new(
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&operationId=5.a",
        QoS::AtLeastOnce,
        b" ".to_vec(),
    );
    publish.pkid = 7;
    let mut subscribe = Subscribe::new("$dps/registrations/res/#", QoS::AtLeastOnce);
    subscribe.pkid = 1;
    for packet in [
        Packet::Connect(connect),
        Packet::Publish(publish),
        Packet::Subscribe(subscribe),
        Packet::PingReq,
    ] {
        let mut out = BytesMut::new();
        packet.write(&mut out, 1 << 20).unwrap();
        seeds.push(out.to_vec());
    }
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut parsed = 0;
    for _ in 0..50_000 {
        let mut bytes = seeds[(next() % seeds.len() as u64) as usize].clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() as usize) % bytes.len().max(1);
            match next() % 4 {
                0 if i < bytes.len() => bytes[i] = next() as u8,
                1 if i < bytes.len() => bytes[i] ^= 1 << (next() % 8),
                2 => bytes.insert(i.min(bytes.len()), next() as u8),
                _ => bytes.truncate(i),
            }
        }
        let mut buffer = BytesMut::from(&bytes[..]);
        while let Ok(packet) = Packet::read(&mut buffer, 4096) {
            parsed += 1;
            match packet {
                Packet::Connect(c) => {
                    if let ConnectAuth::UsernamePassword { username, password } = &c.auth {
                        let _ = crate::protocol::route(username);
                        let _ = crate::sas::SasToken::parse(&String::from_utf8_lossy(password));
                    }
                }
                Packet::Publish(p) => {
                    let _ =
                        crate::protocol::dps::Request::parse(&String::from_utf8_lossy(&p.topic));
                }
                _ => {}
            }
        }
    }
    // The mutations must leave many packets parseable, or the run tests nothing deep.
    assert!(parsed > 5_000, "only {parsed} mutated packets parsed");
}
