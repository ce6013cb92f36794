//! The device-side hub client against servers built from the emulator's parts: the keep-alive
//! it asks for, and a hostile hub (garbage, oversized and stray packets) that must neither crash
//! it nor lose its message.

use std::time::Duration;

use bytes::Bytes;

use crate::emulator::tls::EmulatorTls;
use crate::hub::*;
use crate::provisioning::{DeviceAuth, Trust};

/// Accepts one TLS connection, answers its CONNECT and returns the keep-alive it asked for.
async fn keep_alive_sent(keep_alive: u16) -> u16 {
    use rumqttc::{ConnAck, ConnectReturnCode, Packet};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let tls = EmulatorTls::load_or_create(dir.path(), vec!["127.0.0.1".into()]).unwrap();
    let trust = Trust::from_pem(tls.trust_pem().as_bytes()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config().unwrap());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut read = bytes::BytesMut::new();
        let connect = loop {
            match Packet::read(&mut read, 1 << 20) {
                Ok(Packet::Connect(connect)) => break connect,
                Ok(other) => panic!("expected CONNECT, got {other:?}"),
                Err(rumqttc::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("the client sent a malformed packet: {e}"),
            }
            assert!(tls.read_buf(&mut read).await.unwrap() > 0, "closed early");
        };
        let mut out = bytes::BytesMut::new();
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
        })
        .write(&mut out, usize::MAX)
        .unwrap();
        tls.write_all(&out).await.unwrap();
        tls.flush().await.unwrap();
        connect.keep_alive
    });
    let mut options = HubConnectOptions::new(
        "127.0.0.1",
        port,
        "keep-alive-1",
        DeviceAuth::SymmetricKey("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into()),
    );
    options.keep_alive = keep_alive;
    options.reconnect = false;
    let client = HubClient::connect(options, &trust).await.unwrap();
    let sent = server.await.unwrap();
    drop(client);
    sent
}

#[test]
fn keep_alive_is_clamped_to_what_the_hub_serves() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert_eq!(keep_alive_sent(3600).await, MAX_KEEP_ALIVE_SECONDS);
        assert_eq!(keep_alive_sent(u16::MAX).await, 1177);
        // Within range, the caller's value goes out unchanged.
        assert_eq!(keep_alive_sent(1177).await, 1177);
        assert_eq!(keep_alive_sent(60).await, 60);
    });
}

/// What a hostile or broken hub sends right after CONNACK, one connection after another.
enum Misbehaviour {
    /// A reserved packet type with an invalid length.
    Garbage,
    /// A PUBLISH header announcing 200 MB that never come.
    Oversized,
    /// A PUBACK for nothing and a PUBLISH on a topic no device subscribes to, then good
    /// service.
    StrayPackets,
}

/// A hub that misbehaves on its first connections and then acknowledges what it gets.
/// Returns the payloads it acknowledged.
async fn hostile_hub(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    script: Vec<Misbehaviour>,
) -> Vec<Bytes> {
    use rumqttc::{ConnAck, ConnectReturnCode, Packet, PubAck, Publish, QoS};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stored = Vec::new();
    for misbehaviour in script {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut read = bytes::BytesMut::new();
        let next = async |tls: &mut tokio_rustls::server::TlsStream<_>,
                          read: &mut bytes::BytesMut| loop {
            match Packet::read(read, 1 << 20) {
                Ok(packet) => return Some(packet),
                Err(rumqttc::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("the client sent a malformed packet: {e}"),
            }
            if tls.read_buf(read).await.unwrap_or(0) == 0 {
                return None;
            }
        };
        assert!(matches!(
            next(&mut tls, &mut read).await,
            Some(Packet::Connect(..))
        ));
        let mut out = bytes::BytesMut::new();
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
        })
        .write(&mut out, usize::MAX)
        .unwrap();
        match misbehaviour {
            Misbehaviour::Garbage => out.extend_from_slice(&[0xF0, 0xFF, 0xFF, 0xFF, 0xFF]),
            Misbehaviour::Oversized => {
                // PUBLISH, remaining length 200 MB (variable-length encoding).
                out.extend_from_slice(&[0x30, 0x80, 0x80, 0xAF, 0x5F]);
            }
            Misbehaviour::StrayPackets => {
                Packet::PubAck(PubAck::new(999))
                    .write(&mut out, usize::MAX)
                    .unwrap();
                Packet::Publish(Publish::new("$iothub/nobody/listens", QoS::AtMostOnce, "x"))
                    .write(&mut out, usize::MAX)
                    .unwrap();
            }
        }
        tls.write_all(&out).await.unwrap();
        tls.flush().await.unwrap();
        if !matches!(misbehaviour, Misbehaviour::StrayPackets) {
            // The client must give this connection up; wait for it to close.
            while next(&mut tls, &mut read).await.is_some() {}
            continue;
        }
        while let Some(packet) = next(&mut tls, &mut read).await {
            if let Packet::Publish(publish) = packet {
                let mut ack = bytes::BytesMut::new();
                Packet::PubAck(PubAck::new(publish.pkid))
                    .write(&mut ack, usize::MAX)
                    .unwrap();
                tls.write_all(&ack).await.unwrap();
                tls.flush().await.unwrap();
                stored.push(publish.payload);
                return stored;
            }
        }
    }
    stored
}

#[test]
fn a_hostile_hub_neither_crashes_the_client_nor_loses_its_message() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let tls = EmulatorTls::load_or_create(dir.path(), vec!["127.0.0.1".into()]).unwrap();
        let trust = Trust::from_pem(tls.trust_pem().as_bytes()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config().unwrap());
        let hub = tokio::spawn(hostile_hub(
            listener,
            acceptor,
            vec![
                Misbehaviour::Garbage,
                Misbehaviour::Oversized,
                Misbehaviour::StrayPackets,
            ],
        ));
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_string();
        let options = HubConnectOptions::new(
            "127.0.0.1",
            port,
            "hostile-1",
            DeviceAuth::SymmetricKey(key),
        );
        let client = HubClient::connect(options, &trust).await.unwrap();
        let sent = tokio::time::timeout(
            Duration::from_secs(30),
            client.send_telemetry(&TelemetryMessage::new("survived")),
        )
        .await;
        assert!(
            matches!(sent, Ok(Ok(()))),
            "the message is acknowledged on a later connection: {sent:?}"
        );
        assert!(
            client.reconnects() >= 2,
            "both broken connections were given up"
        );
        let stored = hub.await.unwrap();
        assert_eq!(stored, vec![Bytes::from_static(b"survived")]);
        client.close().await;
    });
}
