//! A seeded, bounded fuzz of the emulator's MQTT reader as the network reaches it: real TLS
//! connections that CONNECT as a legitimate DPS client or hub device and then send mutated
//! packet streams (every state a session can be in). Nothing may panic in the emulator, every
//! connection ends, and a legitimate device provisions and sends telemetry afterwards.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::{Connect, ConnectAuth, Packet, PubAck, Publish, QoS, Subscribe, Unsubscribe};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tests::support::{Fixture, client_tls, device_auth, fixture, provision, provisioned};
use crate::fuzz::{Rng, watch_emulator_panics};

/// Connections per session kind (DPS, hub); each carries several mutated packets.
const CASES: usize = 150;

fn encode(packet: Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    packet.write(&mut out, 1 << 20).unwrap();
    out.to_vec()
}

fn publish(topic: &str, payload: &[u8], pkid: u16) -> Vec<u8> {
    let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
    publish.pkid = pkid;
    encode(Packet::Publish(publish))
}

fn subscribe(filter: &str, pkid: u16) -> Vec<u8> {
    let mut subscribe = Subscribe::new(filter, QoS::AtLeastOnce);
    subscribe.pkid = pkid;
    encode(Packet::Subscribe(subscribe))
}

fn unsubscribe(filter: &str, pkid: u16) -> Vec<u8> {
    let mut unsubscribe = Unsubscribe::new(filter);
    unsubscribe.pkid = pkid;
    encode(Packet::Unsubscribe(unsubscribe))
}

/// Valid packets of a DPS session, to be mutated.
fn dps_seeds() -> Vec<Vec<u8>> {
    vec![
        subscribe("$dps/registrations/res/#", 1),
        publish(
            "$dps/registrations/PUT/iotdps-register/?$rid=1",
            br#"{"registrationId":"fuzz-dps","payload":{"a":[1,2,{"b":null}]}}"#,
            2,
        ),
        publish(
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=4.abc.def",
            b" ",
            3,
        ),
        encode(Packet::PingReq),
        encode(Packet::PubAck(PubAck::new(9))),
        unsubscribe("$dps/registrations/res/#", 4),
    ]
}

/// Valid packets of a hub session, to be mutated.
fn hub_seeds(id: &str) -> Vec<Vec<u8>> {
    vec![
        subscribe(&format!("devices/{id}/messages/devicebound/#"), 1),
        subscribe("$iothub/methods/POST/#", 2),
        subscribe("$iothub/twin/res/#", 3),
        subscribe("$iothub/twin/PATCH/properties/desired/#", 4),
        publish(
            &format!("devices/{id}/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&k=v"),
            br#"{"t":21.5}"#,
            5,
        ),
        publish("$iothub/twin/GET/?$rid=7", b" ", 6),
        publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=8",
            br#"{"fw":{"v":"1.0"},"gone":null}"#,
            7,
        ),
        publish("$iothub/methods/res/200/?$rid=abc", br#"{"ok":1}"#, 8),
        encode(Packet::PingReq),
        encode(Packet::PubAck(PubAck::new(1))),
        unsubscribe("$iothub/twin/res/#", 9),
    ]
}

/// A few seeds, each maybe mutated (byte set, bit flip, insertion, truncation), concatenated.
fn mutated_stream(seeds: &[Vec<u8>], random: &mut Rng) -> Vec<u8> {
    let mut stream = Vec::new();
    for _ in 0..1 + random.below(6) {
        let mut bytes = seeds[random.below(seeds.len())].clone();
        for _ in 0..random.below(4) {
            let i = random.below(bytes.len());
            match random.below(4) {
                0 if i < bytes.len() => bytes[i] = random.byte(),
                1 if i < bytes.len() => bytes[i] ^= 1 << random.below(8),
                2 => bytes.insert(i.min(bytes.len()), random.byte()),
                _ => bytes.truncate(i),
            }
        }
        stream.extend(bytes);
    }
    stream
}

/// One connection: TLS with the device's certificate, a valid CONNECT, the mutated stream,
/// then read until the emulator closes or goes quiet. Returns how the emulator ended it.
async fn one_case(
    f: &Fixture,
    device: &crate::pki::DeviceCredential,
    username: &str,
    host: &str,
    stream: &[u8],
) -> &'static str {
    let credential = device.credential();
    let chain = vec![credential.certificate().der().to_vec()];
    let config = client_tls(&f.emulator.trust_pem(), Some((chain, credential.key())));
    let tcp = tokio::net::TcpStream::connect((host, f.emulator.mqtt_port()))
        .await
        .unwrap();
    let server_name = ServerName::try_from(host.to_string()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .unwrap();
    let mut connect = Connect::new(device.registration_id());
    connect.auth = ConnectAuth::Username {
        username: username.into(),
    };
    connect.keep_alive = 30;
    tls.write_all(&encode(Packet::Connect(connect)))
        .await
        .unwrap();
    if tls.write_all(stream).await.is_err() || tls.flush().await.is_err() {
        return "closed while writing";
    }
    let mut sink = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_millis(100), tls.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return "closed by the emulator",
            Ok(Ok(_)) => {}
            // Waiting for the rest of a truncated packet, or simply served: leave.
            Err(_) => return "still open",
        }
    }
}

#[test]
fn fuzz_the_mqtt_listener_in_dps_and_hub_sessions_300_connections() {
    let panics_before = watch_emulator_panics();
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "fuzz-hub");
    let dps_device = f.device("fuzz-dps");
    let dps_username = format!("{}/registrations/fuzz-dps/api-version=2019-03-31", f.scope);
    let hub_username = format!("{hub}/fuzz-hub/?api-version=2019-10-01");
    let (dps_seeds, hub_seeds) = (dps_seeds(), hub_seeds("fuzz-hub"));
    let mut random = Rng::new(0x9E37_79B9_7F4A_7C15);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut endings = std::collections::BTreeMap::<&str, usize>::new();
    runtime.block_on(async {
        for case in 0..2 * CASES {
            let ending = if case % 2 == 0 {
                let stream = mutated_stream(&dps_seeds, &mut random);
                one_case(&f, &dps_device, &dps_username, "127.0.0.1", &stream).await
            } else {
                let stream = mutated_stream(&hub_seeds, &mut random);
                one_case(&f, &device, &hub_username, &hub, &stream).await
            };
            *endings.entry(ending).or_default() += 1;
        }
    });
    println!(
        "listener fuzz: {} connections, endings {endings:?}",
        2 * CASES
    );
    assert_eq!(
        watch_emulator_panics(),
        panics_before,
        "the emulator panicked on fuzzed input"
    );
    // Both kinds of ending happen, or the mutations were too mild or too wild to test much.
    assert!(endings.get("closed by the emulator").copied().unwrap_or(0) > 10);
    assert!(endings.get("still open").copied().unwrap_or(0) > 10);
    // Still serving: a legitimate device provisions, and the hub device's telemetry is whole.
    provision(&f.emulator, &f.scope, "fuzz-dps", device_auth(&dps_device)).assigned_hub();
    for record in f.emulator.hubs().telemetry(&hub, Some("fuzz-hub")).unwrap() {
        assert_eq!(record.device_id, "fuzz-hub");
    }
}
