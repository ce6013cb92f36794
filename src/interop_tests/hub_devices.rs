//! dpskit's hub client and a fleet's connections against the emulator's hubs: telemetry,
//! twins, methods and C2D through the client, reconnects with replay and SAS renewal, and
//! oversized telemetry refused before it is sent.

use std::time::Duration;

use crate::emulator::tests::support::*;
use crate::error::Error;

#[test]
fn dpskit_hub_client_and_fleet_connections_against_the_hub() {
    use crate::fleet::HubConnections;
    use crate::hub::{HubClient, HubConnectOptions, TelemetryMessage};
    use crate::provisioning::{DeviceAuth, Trust};

    let f = fixture(None);
    f.sensors_group();
    let trust = Trust::from_pem(f.emulator.trust_pem().as_bytes()).unwrap();
    let port = f.emulator.mqtt_port();
    let ids: Vec<String> = (0..12).map(|i| format!("fleet-{i:02}")).collect();
    let mut devices = Vec::new();
    for id in &ids {
        let device = f.device(id);
        let hub = provision(&f.emulator, &f.scope, id, device_auth(&device)).assigned_hub();
        devices.push(HubConnectOptions::new(
            hub,
            port,
            id.clone(),
            DeviceAuth::X509(device.shared_credential()),
        ));
    }
    let stranger = f.device("never-provisioned");
    let hub_a = f.emulator.cloud().hub("hub-a").unwrap().host_name;
    let sas_key = sas_device(&f, &hub_a, "sas-fleet");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let hubs = f.emulator.hubs().clone();
    runtime.block_on(async {
        // One device, every property kind: the hub decodes what the client encoded.
        let first = devices[0].clone();
        let client = HubClient::connect(first.clone(), &trust).await.unwrap();
        let message = TelemetryMessage {
            body: bytes::Bytes::from_static(br#"{"t":1}"#),
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            message_id: Some("m/1".into()),
            correlation_id: Some("c 1".into()),
            properties: vec![
                ("unit".into(), "\u{b0}C".into()),
                ("a&b".into(), "x=y".into()),
            ],
        };
        client.send_telemetry(&message).await.unwrap();
        let records = hubs.telemetry(&first.host, Some("fleet-00")).unwrap();
        let [record] = &records[..] else {
            panic!("{records:?}")
        };
        assert_eq!(record.body, br#"{"t":1}"#);
        let mut properties = record.properties.clone();
        properties.sort();
        assert_eq!(
            properties,
            vec![
                ("a&b".into(), "x=y".into()),
                ("unit".into(), "\u{b0}C".into())
            ]
        );
        for (key, value) in [
            ("mid", "m/1"),
            ("cid", "c 1"),
            ("ct", "application/json"),
            ("ce", "utf-8"),
        ] {
            assert!(
                record
                    .system_properties
                    .contains(&(key.into(), value.into())),
                "{key}: {record:?}"
            );
        }
        client.disconnect().await.unwrap();

        // SAS: a good key connects, a wrong one is refused with 401.
        let sas = HubClient::connect(
            HubConnectOptions::new(
                hub_a.clone(),
                port,
                "sas-fleet",
                DeviceAuth::SymmetricKey(sas_key.clone()),
            ),
            &trust,
        )
        .await
        .unwrap();
        sas.send_telemetry(&TelemetryMessage::new("sas"))
            .await
            .unwrap();
        drop(sas);
        let wrong = HubClient::connect(
            HubConnectOptions::new(
                hub_a.clone(),
                port,
                "sas-fleet",
                DeviceAuth::SymmetricKey(crate::sas::generate_key().unwrap()),
            ),
            &trust,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&wrong, Error::Service(s) if s.status == 401),
            "{wrong:?}"
        );

        // Many at once, plus a device the hub does not know: it alone fails.
        let mut all = devices.clone();
        all.push(HubConnectOptions::new(
            hub_a.clone(),
            port,
            "never-provisioned",
            DeviceAuth::X509(stranger.shared_credential()),
        ));
        let (connections, report) = HubConnections::connect(all, &trust, 4).await;
        assert_eq!(report.connected, ids.len());
        assert_eq!(report.failures.len(), 1);
        assert_eq!(report.failures[0].0, "never-provisioned");
        assert!(matches!(&report.failures[0].1, Error::Service(s) if s.status == 401));
        let sent = connections
            .send_telemetry(50, bytes::Bytes::from_static(b"x"), 8)
            .await;
        assert!(sent.failures.is_empty(), "{:?}", sent.failures);
        assert_eq!((sent.sent, sent.acknowledged), (600, 600));
        connections.close().await;
    });
    // Every acknowledged message is stored: 1 + 50 per device for the first, 50 for the rest.
    let stored: usize = ["hub-a", "hub-b"]
        .iter()
        .map(|h| {
            let host = f.emulator.cloud().hub(h).unwrap().host_name;
            hubs.telemetry(&host, None)
                .unwrap()
                .iter()
                .filter(|r| r.device_id.starts_with("fleet-"))
                .count()
        })
        .sum();
    assert_eq!(stored, 601);
}

#[test]
fn hub_client_reconnects_replays_and_renews_sas_tokens() {
    use crate::hub::{ConnectionState, HubClient, HubConnectOptions, TelemetryMessage};
    use crate::provisioning::{DeviceAuth, Trust};

    let f = fixture(None);
    let (device, hub) = provisioned(&f, "resilient-1");
    let trust = Trust::from_pem(f.emulator.trust_pem().as_bytes()).unwrap();
    let hubs = f.emulator.hubs().clone();
    let sas_key = sas_device(&f, &hub, "renewing-1");
    f.emulator.tracer().watch(Some("renewing-1"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut options = HubConnectOptions::new(
            hub.clone(),
            f.emulator.mqtt_port(),
            "resilient-1",
            DeviceAuth::X509(device.shared_credential()),
        );
        options.receive = true;
        let client = HubClient::connect(options, &trust).await.unwrap();
        client
            .send_telemetry(&TelemetryMessage::new("before"))
            .await
            .unwrap();
        // The hub drops the device; a C2D message waits for it meanwhile.
        assert!(hubs.drop_connection(&hub, "resilient-1"));
        hubs.send_c2d(&hub, "resilient-1", b"while away", vec![])
            .unwrap();
        // Sending right away waits for the reconnect and its PUBACK: nothing is lost.
        client
            .send_telemetry(&TelemetryMessage::new("after"))
            .await
            .unwrap();
        assert_eq!(client.connection_state(), ConnectionState::Connected);
        let message = tokio::time::timeout(Duration::from_secs(10), client.next_message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message.body, b"while away");
        client.close().await;
        assert_eq!(client.connection_state(), ConnectionState::Closed);

        // A 3 s SAS token is renewed before it runs out (the hub would close the connection
        // with 401003 at expiry); messages keep flowing across the renewal.
        let mut options = HubConnectOptions::new(
            hub.clone(),
            f.emulator.mqtt_port(),
            "renewing-1",
            DeviceAuth::SymmetricKey(sas_key.clone()),
        );
        options.sas_ttl = Duration::from_secs(3);
        let client = HubClient::connect(options, &trust).await.unwrap();
        for i in 0..10 {
            client
                .send_telemetry(&TelemetryMessage::new(format!("tick {i}")))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        client.close().await;
    });
    let bodies: Vec<String> = hubs
        .telemetry(&hub, Some("resilient-1"))
        .unwrap()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    // Nothing lost, in order. QoS 1 is at least once, on Azure as here: when the hub took
    // "after" from the connection it was dropping, the PUBACK died with it and the client sent
    // it again on the new one.
    assert_eq!(
        bodies.first().map(String::as_str),
        Some("before"),
        "{bodies:?}"
    );
    assert!(
        (2..=3).contains(&bodies.len()) && bodies[1..].iter().all(|b| b == "after"),
        "{bodies:?}"
    );
    assert_eq!(hubs.telemetry(&hub, Some("renewing-1")).unwrap().len(), 10);
    let connects = f
        .emulator
        .tracer()
        .events("renewing-1")
        .iter()
        .filter(|e| e.kind == "CONNECT")
        .count();
    assert!(
        connects >= 2,
        "the token was renewed by reconnecting ({connects} CONNECTs)"
    );
}

/// Telemetry over IoT Hub's 256 KB is refused by the device before it is queued, by the client
/// and by the fleet's send path: queued, the hub would drop the connection and the client would
/// send it again after every reconnect. The connection survives and carries the next message.
#[test]
fn oversized_telemetry_is_refused_before_it_is_sent() {
    use crate::fleet::HubConnections;
    use crate::hub::{HubClient, HubConnectOptions, MAX_TELEMETRY_BYTES, TelemetryMessage};
    use crate::provisioning::{DeviceAuth, Trust};

    let f = fixture(None);
    let trust = Trust::from_pem(f.emulator.trust_pem().as_bytes()).unwrap();
    let port = f.emulator.mqtt_port();
    let hub = f.emulator.cloud().hub("hub-a").unwrap().host_name;
    let key = sas_device(&f, &hub, "big-sender");
    let options = HubConnectOptions::new(
        hub.clone(),
        port,
        "big-sender",
        DeviceAuth::SymmetricKey(key),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let hubs = f.emulator.hubs().clone();
    let too_big = bytes::Bytes::from(vec![b'x'; 300_000]);
    let is_size_refusal = |e: &Error| matches!(e, Error::Config(m) if m.to_string().contains(&MAX_TELEMETRY_BYTES.to_string()));
    runtime.block_on(async {
        let client = HubClient::connect(options.clone(), &trust).await.unwrap();
        // The guard only keeps a regression from hanging the suite: queued, the message would
        // never be acknowledged.
        let refused = tokio::time::timeout(
            Duration::from_secs(30),
            client.send_telemetry(&TelemetryMessage::new(too_big.clone())),
        )
        .await
        .expect("refused at once, not queued")
        .unwrap_err();
        assert!(is_size_refusal(&refused), "{refused:?}");
        // The properties count too: a body under the limit with a large property is refused.
        let mut with_properties = TelemetryMessage::new(vec![b'y'; MAX_TELEMETRY_BYTES - 100]);
        with_properties
            .properties
            .push(("note".into(), "z".repeat(200)));
        let refused = client.send_telemetry(&with_properties).await.unwrap_err();
        assert!(is_size_refusal(&refused), "{refused:?}");
        client
            .send_telemetry(&TelemetryMessage::new("normal"))
            .await
            .unwrap();
        // The largest message the client lets through, properties and all, is one the hub
        // accepts: a device is never left replaying a message the hub keeps refusing.
        let mut largest = TelemetryMessage::new("");
        largest.message_id = Some("largest".into());
        largest.properties.push(("note".into(), "z".repeat(1000)));
        largest.body = bytes::Bytes::from(vec![b'L'; MAX_TELEMETRY_BYTES - largest.size()]);
        assert_eq!(largest.size(), MAX_TELEMETRY_BYTES);
        tokio::time::timeout(Duration::from_secs(30), client.send_telemetry(&largest))
            .await
            .expect("the hub acknowledges the largest message the client sends")
            .unwrap();
        assert_eq!(
            client.connection_state(),
            crate::hub::ConnectionState::Connected
        );
        assert_eq!(client.reconnects(), 0, "the hub never dropped the device");
        client.disconnect().await.unwrap();

        let (connections, report) = HubConnections::connect(vec![options], &trust, 1).await;
        assert_eq!(report.connected, 1, "{:?}", report.failures);
        let refused = connections.send_telemetry(1, too_big, 1).await;
        assert_eq!((refused.sent, refused.acknowledged), (0, 0));
        let [(device, error)] = &refused.failures[..] else {
            panic!("{:?}", refused.failures)
        };
        assert_eq!(device, "big-sender");
        assert!(is_size_refusal(error), "{error:?}");
        let sent = connections
            .send_telemetry(2, bytes::Bytes::from_static(b"fine"), 2)
            .await;
        assert!(sent.failures.is_empty(), "{:?}", sent.failures);
        assert_eq!(sent.acknowledged, 2);
        connections.close().await;
    });
    let bodies: Vec<Vec<u8>> = hubs
        .telemetry(&hub, Some("big-sender"))
        .unwrap()
        .into_iter()
        .map(|r| {
            if r.body.len() > 6 {
                b"<largest>".to_vec()
            } else {
                r.body
            }
        })
        .collect();
    assert_eq!(
        bodies,
        vec![
            b"normal".to_vec(),
            b"<largest>".to_vec(),
            b"fine".to_vec(),
            b"fine".to_vec()
        ]
    );
}
