//! The IoT Hub device API: telemetry, twins, direct methods and C2D, persistent sessions and one
//! connection per device, refusals and protocol violations, SAS expiry, wills, and the size
//! limits IoT Hub counts.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Broker, Event, MqttOptions, Packet, PublishOptions, QoS, TlsConfiguration,
    Transport,
};
use serde_json::Value;

use super::support::*;
use crate::emulator::*;
use crate::pki::issue::now;

#[test]
fn hub_telemetry_twin_methods_and_c2d() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "hub-dev-1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hubs = f.emulator.hubs().clone();
    runtime.block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, false).await.unwrap();
        d.subscribe_all("hub-dev-1").await;
        d.client
            .publish(
                "devices/hub-dev-1/messages/events/%24.mid=m-1&%24.ct=application%2Fjson&$.ce=utf-8&unit=%C2%B0C",
                r#"{"t":21}"#,
                PublishOptions::at_least_once(),
            )
            .await
            .unwrap();
        d.until(|p| matches!(p, Packet::PubAck(_))).await.unwrap();
        // PUBACK came after the commit: the record is already there.
        let [record] = &hubs.telemetry(&hub, Some("hub-dev-1")).unwrap()[..] else { panic!() };
        assert_eq!(record.body, br#"{"t":21}"#);
        assert_eq!(record.properties, vec![("unit".to_string(), "\u{b0}C".to_string())]);
        assert!(record.system_properties.contains(&("mid".into(), "m-1".into())));
        assert!(record.system_properties.contains(&("ct".into(), "application/json".into())));
        assert!(record.system_properties.contains(&("ce".into(), "utf-8".into())));

        d.client.publish("$iothub/twin/GET/?$rid=1", " ", PublishOptions::at_least_once()).await.unwrap();
        let (topic, body) = d.next_publish().await.unwrap();
        assert_eq!(topic, "$iothub/twin/res/200/?$rid=1");
        let twin: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(twin["desired"]["$version"], 1);
        d.client
            .publish("$iothub/twin/PATCH/properties/reported/?$rid=2", r#"{"fw":"1.0"}"#, PublishOptions::at_least_once())
            .await
            .unwrap();
        let (topic, _) = d.next_publish().await.unwrap();
        assert_eq!(topic, "$iothub/twin/res/204/?$rid=2&$version=2");

        let desired = serde_json::json!({"interval": 7});
        hubs.update_desired(&hub, "hub-dev-1", desired.as_object().unwrap()).unwrap();
        let (topic, body) = d.next_publish().await.unwrap();
        assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), serde_json::json!({"interval": 7, "$version": 2}));

        let call = {
            let hubs = hubs.clone();
            let hub = hub.clone();
            tokio::spawn(async move {
                hubs.invoke_method(&hub, "hub-dev-1", "reboot", serde_json::json!({"in": 1}), Duration::from_secs(5)).await
            })
        };
        let (topic, body) = d.next_publish().await.unwrap();
        let rid = topic.strip_prefix("$iothub/methods/POST/reboot/?$rid=").unwrap().to_string();
        assert_eq!(body, br#"{"in":1}"#);
        d.client
            .publish(format!("$iothub/methods/res/201/?$rid={rid}"), r#"{"ok":true}"#, PublishOptions::at_least_once())
            .await
            .unwrap();
        let (poll_more, answer) = tokio::join!(d.until(|p| matches!(p, Packet::PubAck(_))), call);
        poll_more.unwrap();
        assert_eq!(answer.unwrap().unwrap(), (201, serde_json::json!({"ok": true})));

        hubs.send_c2d(&hub, "hub-dev-1", b"hi", vec![("k".into(), "v w".into())]).unwrap();
        let (topic, body) = d.next_publish().await.unwrap();
        assert!(topic.starts_with("devices/hub-dev-1/messages/devicebound/%24.mid="), "{topic}");
        assert!(topic.contains("%24.to=%2Fdevices%2Fhub-dev-1%2Fmessages%2Fdevicebound"), "{topic}");
        assert!(topic.ends_with("&k=v%20w"), "{topic}");
        assert_eq!(body, b"hi");
    });
}

#[test]
fn hub_persistent_sessions_and_one_connection_per_device() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "hub-dev-2");
    let hubs = f.emulator.hubs().clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut first = HubDevice::connect(&f, &hub, &device, false).await.unwrap();
        first.subscribe_all("hub-dev-2").await;
        first.client.disconnect().await.unwrap();
        let _ = first.until(|_| false).await;
        // Offline: the message waits; the resumed session gets it without subscribing again.
        hubs.send_c2d(&hub, "hub-dev-2", b"queued", vec![]).unwrap();
        let mut second = HubDevice::connect(&f, &hub, &device, false).await.unwrap();
        let (_, body) = second.next_publish().await.unwrap();
        assert_eq!(body, b"queued");
        // A third connection of the same device closes the second.
        let _third = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        assert!(
            second.until(|_| false).await.is_err(),
            "the older connection is closed"
        );
        // clean_session=1 dropped the subscriptions: methods now find the device offline.
        let offline = hubs
            .invoke_method(&hub, "hub-dev-2", "x", Value::Null, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            matches!(&offline, crate::Error::Service(s) if s.error_code == Some(404_103)),
            "{offline}"
        );
    });
    // At most 50 messages wait per device.
    for _ in 0..50 {
        hubs.send_c2d(&hub, "hub-dev-2", b"x", vec![]).unwrap();
    }
    let full = hubs.send_c2d(&hub, "hub-dev-2", b"x", vec![]).unwrap_err();
    assert!(
        matches!(&full, crate::Error::Service(s) if s.error_code == Some(403_004)),
        "{full}"
    );
}

#[test]
fn hub_refusals_and_protocol_violations() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "hub-dev-3");
    let impostor = f.device("hub-dev-3"); // same CN, other key and thumbprint
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let refused = HubDevice::connect(&f, &hub, &impostor, true).await;
        assert!(
            refused.is_err(),
            "a certificate with another thumbprint is refused"
        );
        let unknown = f.device("never-provisioned");
        assert!(HubDevice::connect(&f, &hub, &unknown, true).await.is_err());

        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        d.client
            .subscribe("devices/hub-dev-3/other/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        assert!(
            d.until(|p| matches!(p, Packet::SubAck(_))).await.is_err(),
            "unsupported filter closes the connection"
        );

        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        d.client
            .publish(
                "devices/hub-dev-3/messages/events/",
                vec![0u8; 300 * 1024],
                PublishOptions::at_least_once(),
            )
            .await
            .unwrap();
        assert!(
            d.until(|p| matches!(p, Packet::PubAck(_))).await.is_err(),
            "oversized telemetry closes the connection"
        );
    });
    assert!(
        f.emulator
            .hubs()
            .telemetry(&hub, Some("hub-dev-3"))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn sas_devices_are_disconnected_when_their_token_expires() {
    let f = fixture(None);
    let hub = f.emulator.cloud().hub("hub-a").unwrap().host_name;
    let key = sas_device(&f, &hub, "sas-dev");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let connect = |token: String| {
            let config = client_tls(&f.emulator.trust_pem(), None);
            let mut options =
                MqttOptions::new("sas-dev", Broker::tcp(hub.clone(), f.emulator.mqtt_port()));
            options.set_credentials(
                format!("{hub}/sas-dev/?api-version=2019-10-01"),
                token.into_bytes(),
            );
            options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
            AsyncClient::builder(options).capacity(4).build()
        };
        let resource = format!("{hub}/devices/sas-dev");
        // A wrong key is refused at CONNECT.
        let (_c, mut events) = connect(
            crate::sas::build_token(
                &resource,
                &crate::sas::generate_key().unwrap(),
                now() + 60,
                None,
            )
            .unwrap(),
        );
        assert!(matches!(
            events.poll().await,
            Err(rumqttc::ConnectionError::ConnectionRefused(_))
        ));
        // A good token that runs out in two seconds: accepted, then disconnected.
        let (_c, mut events) =
            connect(crate::sas::build_token(&resource, &key, now() + 2, None).unwrap());
        let started = std::time::Instant::now();
        assert!(matches!(
            events.poll().await,
            Ok(Event::Incoming(Packet::ConnAck(_)))
        ));
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if events.poll().await.is_err() {
                    break;
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the hub closes the connection when the token expires"
        );
        assert!(started.elapsed() >= Duration::from_millis(900));
    });
}

#[test]
fn hub_forwards_the_will_of_a_device_that_drops_without_disconnect() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "will-dev");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hubs = f.emulator.hubs().clone();
    let will = |topic: &str| {
        Some(rumqttc::LastWill::new(
            topic,
            "bye",
            QoS::AtLeastOnce,
            false,
        ))
    };
    let wills = || {
        hubs.telemetry(&hub, Some("will-dev"))
            .unwrap()
            .into_iter()
            .filter(|r| {
                r.properties
                    .contains(&("iothub-MessageType".into(), "Will".into()))
            })
            .collect::<Vec<_>>()
    };
    runtime.block_on(async {
        // A clean DISCONNECT: no will.
        let mut d = HubDevice::connect_with_will(
            &f,
            &hub,
            &device,
            true,
            will("devices/will-dev/messages/events/"),
        )
        .await
        .unwrap();
        d.client.disconnect().await.unwrap();
        while d.events.poll().await.is_ok() {}
        // A will on another topic is ignored, and the connection is still accepted.
        let d = HubDevice::connect_with_will(&f, &hub, &device, true, will("alerts/will-dev"))
            .await
            .unwrap();
        drop(d);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(wills().is_empty(), "{:?}", wills());

        // The connection just ends: the hub forwards the will as telemetry.
        let d = HubDevice::connect_with_will(
            &f,
            &hub,
            &device,
            true,
            will("devices/will-dev/messages/events/%24.ct=text%2Fplain&reason=power%20lost"),
        )
        .await
        .unwrap();
        drop(d);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while wills().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let [record] = &wills()[..] else {
        panic!("one will expected: {:?}", wills())
    };
    assert_eq!(record.body, b"bye");
    assert!(
        record
            .properties
            .contains(&("reason".into(), "power lost".into())),
        "{record:?}"
    );
    assert!(
        record
            .system_properties
            .contains(&("ct".into(), "text/plain".into())),
        "{record:?}"
    );
}

/// The emulator counts what IoT Hub counts against 256 KB: the body and the properties. A
/// message over it is answered, as on Azure over MQTT, by closing the connection; the same
/// properties with a smaller body are stored.
#[test]
fn the_hub_counts_properties_against_256_kb() {
    use crate::emulator::hub::MAX_D2C_BYTES;

    let f = fixture(None);
    let (device, hub) = provisioned(&f, "counted-dev");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hubs = f.emulator.hubs().clone();
    let topic = format!(
        "devices/counted-dev/messages/events/note={}",
        "z".repeat(200)
    );
    runtime.block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        // note (4) + 200 + body: fits with 204 bytes of properties, not with one more of body.
        let fits = vec![b'a'; MAX_D2C_BYTES - 204];
        d.client
            .publish(topic.clone(), fits, PublishOptions::at_least_once())
            .await
            .unwrap();
        d.until(|p| matches!(p, Packet::PubAck(_))).await.unwrap();
        let over = vec![b'b'; MAX_D2C_BYTES - 203];
        d.client
            .publish(topic.clone(), over, PublishOptions::at_least_once())
            .await
            .unwrap();
        let dropped = d.until(|p| matches!(p, Packet::PubAck(_))).await;
        assert!(
            dropped.is_err(),
            "the hub acknowledged an oversized message"
        );
    });
    let stored = hubs.telemetry(&hub, Some("counted-dev")).unwrap();
    let [record] = &stored[..] else {
        panic!("{} records", stored.len())
    };
    assert_eq!(record.body.len(), MAX_D2C_BYTES - 204);
}

/// The hub keeps a twin's reported section to 32 KB (403100, Azure's words) and a method
/// response to 128 KB (the call fails with 413001 and the connection is closed unacknowledged),
/// against a device client that sends them anyway.
#[test]
fn the_hub_refuses_oversized_reported_sections_and_method_responses() {
    use crate::limits::{MAX_METHOD_PAYLOAD_BYTES, MAX_TWIN_SECTION_BYTES};

    let f = fixture(None);
    let (device, hub) = provisioned(&f, "hub-limits");
    let hubs = f.emulator.hubs().clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        d.subscribe_all("hub-limits").await;
        // {"a":"..."} exactly at the limit is taken; one byte more is refused.
        let section = |total: usize| format!(r#"{{"a":"{}"}}"#, "r".repeat(total - 8));
        for (rid, size, status) in [
            (1, MAX_TWIN_SECTION_BYTES + 1, 403),
            (2, MAX_TWIN_SECTION_BYTES, 204),
        ] {
            d.client
                .publish(
                    format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
                    section(size),
                    PublishOptions::at_least_once(),
                )
                .await
                .unwrap();
            let (topic, body) = d.next_publish().await.unwrap();
            assert!(
                topic.starts_with(&format!("$iothub/twin/res/{status}/?$rid={rid}")),
                "{topic}"
            );
            if status == 403 {
                let answer: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(answer["errorCode"], 403_100);
                assert!(
                    answer["message"]
                        .as_str()
                        .unwrap()
                        .contains("'Properties.Reported' size")
                );
            }
        }
        // The section is full: a further property grows it past the limit.
        d.client
            .publish(
                "$iothub/twin/PATCH/properties/reported/?$rid=3",
                r#"{"b":1}"#,
                PublishOptions::at_least_once(),
            )
            .await
            .unwrap();
        let (topic, _) = d.next_publish().await.unwrap();
        assert!(topic.starts_with("$iothub/twin/res/403/?$rid=3"), "{topic}");

        let call = {
            let hubs = hubs.clone();
            let hub = hub.clone();
            tokio::spawn(async move {
                hubs.invoke_method(
                    &hub,
                    "hub-limits",
                    "dump",
                    Value::Null,
                    Duration::from_secs(30),
                )
                .await
            })
        };
        let (topic, _) = d.next_publish().await.unwrap();
        let rid = topic
            .strip_prefix("$iothub/methods/POST/dump/?$rid=")
            .unwrap()
            .to_string();
        let answer = format!(r#""{}""#, "m".repeat(MAX_METHOD_PAYLOAD_BYTES - 1));
        d.client
            .publish(
                format!("$iothub/methods/res/200/?$rid={rid}"),
                answer,
                PublishOptions::at_least_once(),
            )
            .await
            .unwrap();
        let (acknowledged, outcome) =
            tokio::join!(d.until(|p| matches!(p, Packet::PubAck(_))), call);
        assert!(
            acknowledged.is_err(),
            "the hub acknowledged an oversized method response"
        );
        match outcome.unwrap() {
            Err(Error::Service(s)) => {
                assert_eq!((s.status, s.error_code), (413, Some(413_001)));
                assert!(s.message.contains("128 KB"), "{}", s.message);
            }
            other => panic!("{other:?}"),
        }
    });
}

/// The properties an embedded device applies from a twin section: like the Azure SDK for
/// Embedded C's twin sample, it reads members in document order and stops at `$version`.
fn properties_before_version(section: &[u8]) -> Vec<String> {
    let Ok(Value::Object(members)) = serde_json::from_slice::<Value>(section) else {
        panic!("not a JSON object: {}", String::from_utf8_lossy(section));
    };
    members
        .keys()
        .take_while(|key| *key != "$version")
        .cloned()
        .collect()
}

/// Twins byte for byte as IoT Hub's documentation shows them (the MQTT guide's GET reply and
/// desired-patch notification): members in the order they were set, never sorted, and
/// `$version` last, so a device that stops reading at `$version` sees every property.
#[test]
fn twins_are_laid_out_as_iot_hub_writes_them() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "hub-dev-layout");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hubs = f.emulator.hubs().clone();
    runtime.block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, false).await.unwrap();
        d.subscribe_all("hub-dev-layout").await;

        let patch = serde_json::json!({"telemetrySendFrequency": "5m", "route": null});
        hubs.update_desired(&hub, "hub-dev-layout", patch.as_object().unwrap())
            .unwrap();
        let (topic, body) = d.next_publish().await.unwrap();
        assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            r#"{"telemetrySendFrequency":"5m","route":null,"$version":2}"#
        );
        assert_eq!(
            properties_before_version(&body),
            ["telemetrySendFrequency", "route"]
        );

        // Set in an order no sort gives: "zeta" before "batteryLevel".
        d.client
            .publish(
                "$iothub/twin/PATCH/properties/reported/?$rid=1",
                r#"{"zeta":1,"batteryLevel":55}"#,
                PublishOptions::at_least_once(),
            )
            .await
            .unwrap();
        let (topic, _) = d.next_publish().await.unwrap();
        assert_eq!(topic, "$iothub/twin/res/204/?$rid=1&$version=2");

        d.client
            .publish(
                "$iothub/twin/GET/?$rid=2",
                " ",
                PublishOptions::at_least_once(),
            )
            .await
            .unwrap();
        let (topic, body) = d.next_publish().await.unwrap();
        assert_eq!(topic, "$iothub/twin/res/200/?$rid=2");
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            concat!(
                r#"{"desired":{"telemetrySendFrequency":"5m","$version":2},"#,
                r#""reported":{"zeta":1,"batteryLevel":55,"$version":2}}"#
            )
        );
        let twin: Value = serde_json::from_slice(&body).unwrap();
        let desired = serde_json::to_vec(&twin["desired"]).unwrap();
        assert_eq!(
            properties_before_version(&desired),
            ["telemetrySendFrequency"]
        );

        let document = hubs.service_twin(&hub, "hub-dev-layout").unwrap();
        let keys: Vec<&String> = document.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["deviceId", "etag", "version", "tags", "properties"]);
        let reported = serde_json::to_string(&document["properties"]["reported"]).unwrap();
        assert_eq!(reported, r#"{"zeta":1,"batteryLevel":55,"$version":2}"#);
    });
}

/// A direct method given a connect timeout waits for its device to come online and subscribe
/// (`connectTimeoutInSeconds`), then reaches it; a twin replace reaches the device as the merge
/// patch that turns the old desired properties into the new ones (removed keys, nested ones
/// too, as null); a disabled identity is refused at CONNECT.
#[test]
fn methods_wait_for_their_device_replaces_arrive_as_patches_and_disabled_devices_stay_out() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "hub-dev-wait");
    let hubs = f.emulator.hubs().clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Offline and no connect timeout: 404103 at once.
        let offline = hubs
            .invoke_method_waiting(
                &hub,
                "hub-dev-wait",
                "m",
                Value::Null,
                Duration::ZERO,
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&offline, crate::Error::Service(s) if s.error_code == Some(404_103)),
            "{offline}"
        );
        let call = {
            let (hubs, hub) = (hubs.clone(), hub.clone());
            tokio::spawn(async move {
                hubs.invoke_method_waiting(
                    &hub,
                    "hub-dev-wait",
                    "wake",
                    serde_json::json!(1),
                    Duration::from_secs(60),
                    Duration::from_secs(30),
                )
                .await
            })
        };
        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        d.client
            .subscribe("$iothub/twin/PATCH/properties/desired/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        d.until(|p| matches!(p, Packet::SubAck(_))).await.unwrap();
        // The waiting call goes out once methods are subscribed, maybe before the SUBACK:
        // next_publish skips the SUBACK, not the request.
        d.client
            .subscribe("$iothub/methods/POST/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let (topic, _) = d.next_publish().await.unwrap();
        let rid = topic
            .strip_prefix("$iothub/methods/POST/wake/?$rid=")
            .expect(&topic)
            .to_string();
        d.client
            .publish(
                format!("$iothub/methods/res/200/?$rid={rid}"),
                "2",
                PublishOptions::at_least_once(),
            )
            .await
            .unwrap();
        let (acked, answer) = tokio::join!(d.until(|p| matches!(p, Packet::PubAck(_))), call);
        acked.unwrap();
        assert_eq!(answer.unwrap().unwrap(), (200, serde_json::json!(2)));

        let before = serde_json::json!({"a": 1, "nested": {"x": 1, "y": 2}, "gone": true});
        hubs.update_desired(&hub, "hub-dev-wait", before.as_object().unwrap())
            .unwrap();
        d.next_publish().await.unwrap();
        let (tags, desired) = (
            serde_json::json!({"site": "lab"}),
            serde_json::json!({"a": 2, "nested": {"y": 2}}),
        );
        let twin = hubs
            .write_twin(
                &hub,
                "hub-dev-wait",
                crate::emulator::hub::TwinWrite::Replace {
                    tags: tags.as_object().unwrap(),
                    desired: desired.as_object().unwrap(),
                },
                None,
            )
            .unwrap();
        assert_eq!(twin["tags"], tags);
        assert_eq!(
            twin["properties"]["desired"],
            serde_json::json!({"a": 2, "nested": {"y": 2}, "$version": 3})
        );
        let (topic, body) = d.next_publish().await.unwrap();
        assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=3");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"a":2,"nested":{"y":2,"x":null},"gone":null,"$version":3}"#
        );

        let mut identity = f.emulator.cloud().hub_device(&hub, "hub-dev-wait").unwrap();
        identity.registry.status = model::DeviceStatus::Disabled;
        f.emulator.cloud().put_hub_device(identity).unwrap();
        drop(d);
        let refused = HubDevice::connect(&f, &hub, &device, true).await;
        assert!(refused.is_err(), "a disabled device connected");
    });
}

/// Events past their hub's retention leave the data folder: what the hub received before the
/// retention goes, except each partition's last event (its numbers go on from it), and a
/// reader from the start of the retention finds nothing of it.
#[test]
fn events_past_the_retention_are_deleted_except_each_partitions_last() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "retained-dev");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hubs = f.emulator.hubs().clone();
    runtime.block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, false).await.unwrap();
        for n in 0..3 {
            d.client
                .publish(
                    "devices/retained-dev/messages/events/",
                    format!("{n}"),
                    PublishOptions::at_least_once(),
                )
                .await
                .unwrap();
            d.until(|p| matches!(p, Packet::PubAck(_))).await.unwrap();
        }
    });
    assert_eq!(hubs.telemetry(&hub, None).unwrap().len(), 3);
    // Within the retention (a day by default) nothing goes.
    assert_eq!(hubs.drop_expired_events(crate::clock::now()).unwrap(), 0);
    let two_days_on = crate::clock::now() + 2 * 86_400;
    assert_eq!(hubs.drop_expired_events(two_days_on).unwrap(), 2);
    let left = hubs.telemetry(&hub, None).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].body, b"2");
}
