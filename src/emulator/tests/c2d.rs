//! A cloud-to-device message's life cycle in the hub engine and the feedback it leaves: the ack
//! asked for (and refused when malformed), expiry (by the sweeper, with no device connected, and
//! after a restart), delivery counts and dead-lettering, completion by a device over MQTT, and
//! purges. Deliveries are read from the engine's own session channel, or by a rumqttc device
//! over TLS where the wire matters.

use std::time::Duration;

use rumqttc::{Event, Packet, QoS};

use super::support::*;
use crate::emulator::Emulator;
use crate::emulator::feedback::Taken;
use crate::emulator::hub::{C2dOptions, HubEngine, Outbound};
use crate::protocol::c2d::{FeedbackRecord, FeedbackStatus, MAX_DELIVERY_COUNT};
use crate::protocol::hub::Subscription;

/// A hub with one SAS device; returns the hub's host.
fn hub_with_device(emulator: &Emulator, name: &str, device_id: &str) -> String {
    let hub = emulator.create_hub(name, "westus", None).unwrap();
    emulator
        .cloud()
        .put_hub_device(crate::emulator::model::HubDevice {
            device_id: device_id.into(),
            hub: hub.host_name.clone(),
            auth: crate::emulator::model::DeviceAuth::Sas {
                primary_key: crate::sas::generate_key().unwrap(),
                secondary_key: crate::sas::generate_key().unwrap(),
            },
            initial_twin: None,
            created: crate::clock::now(),
            registry: Default::default(),
            issued_by: None,
        })
        .unwrap();
    hub.host_name
}

fn send(hubs: &HubEngine, hub: &str, device: &str, id: &str, ack: &str, expiry_ms: Option<i64>) {
    hubs.send_c2d_as(
        hub,
        device,
        C2dOptions {
            message_id: Some(id.into()),
            absolute_expiry_ms: expiry_ms,
            ttl_ms: None,
        },
        b"body",
        vec![("iothub-ack".into(), ack.into())],
    )
    .unwrap();
}

/// Every feedback record the hub has, completing the messages they came in.
fn drain_feedback(hubs: &HubEngine, hub: &str) -> Vec<FeedbackRecord> {
    let mut records = Vec::new();
    while let Taken::Message(message) = hubs.feedback().take(hub).unwrap() {
        records.extend(message.records.clone());
        assert!(hubs.feedback().complete(hub, &message.lock_token).unwrap());
    }
    records
}

/// Waits (up to 10 s) until `done` holds; false if it never did.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// The C2D message ids an engine session was handed so far.
fn delivered(outbound: &mut tokio::sync::mpsc::Receiver<Outbound>) -> Vec<String> {
    let mut ids = Vec::new();
    while let Ok(message) = outbound.try_recv() {
        if let Outbound::Publish { c2d: Some(id), .. } = message {
            ids.push(id);
        }
    }
    ids
}

#[test]
fn a_malformed_ack_is_refused_and_a_valid_one_is_kept_apart_from_the_properties() {
    let emulator = start(None);
    let hubs = emulator.hubs().clone();
    let hub = hub_with_device(&emulator, "c2d-ack", "dev");
    for bad in ["Full", "sometimes", ""] {
        let refused = hubs
            .send_c2d(&hub, "dev", b"x", vec![("iothub-ack".into(), bad.into())])
            .unwrap_err();
        assert!(
            matches!(&refused, crate::Error::Service(s) if s.status == 400),
            "{refused}"
        );
    }
    assert!(
        hubs.c2d_queue(&hub, "dev").unwrap().is_empty(),
        "nothing queued"
    );
    send(&hubs, &hub, "dev", "m-1", "positive", None);
    let [queued] = &hubs.c2d_queue(&hub, "dev").unwrap()[..] else {
        panic!("one message queued")
    };
    assert_eq!(queued.ack, crate::protocol::c2d::DeliveryAck::Positive);
    assert!(queued.properties.is_empty(), "{:?}", queued.properties);
    assert!(!queued.sender_expiry);
    let default_ttl = crate::protocol::c2d::DEFAULT_TTL_SECONDS * 1000;
    let ttl = queued.expiry_ms() - queued.enqueued * 1000;
    assert!(
        (default_ttl - 1000..=default_ttl + 1000).contains(&ttl),
        "the default time to live: {ttl} ms"
    );
}

#[test]
fn expired_messages_leave_at_their_expiry_with_feedback_and_are_never_delivered() {
    let emulator = start(None);
    let hubs = emulator.hubs().clone();
    let hub = hub_with_device(&emulator, "c2d-expiry", "dev");
    let now = crate::clock::now_ms();
    // Already expired when sent: queued, then swept; never handed to the device.
    send(&hubs, &hub, "dev", "past", "full", Some(now - 1));
    send(&hubs, &hub, "dev", "soon", "negative", Some(now + 300));
    send(&hubs, &hub, "dev", "quiet", "none", Some(now + 300));
    send(&hubs, &hub, "dev", "later", "full", None);
    assert!(
        eventually(|| hubs.c2d_queue(&hub, "dev").unwrap().len() == 1),
        "no device connected, yet the sweeper removed the expired messages"
    );
    let mut records = drain_feedback(&hubs, &hub);
    records.sort_by(|a, b| a.original_message_id.cmp(&b.original_message_id));
    let outcomes: Vec<(&str, FeedbackStatus, &str)> = records
        .iter()
        .map(|r| {
            (
                r.original_message_id.as_str(),
                r.status_code,
                r.device_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("past", FeedbackStatus::Expired, "dev"),
            ("soon", FeedbackStatus::Expired, "dev"),
        ],
        "'quiet' asked for nothing"
    );
    assert_eq!(records[0].description, "Message Expired");
    assert!(!records[0].device_generation_id.is_empty());
    // The device connects: only the live message is delivered.
    let mut session = hubs.open_session(&hub, "dev", true);
    hubs.subscribe(&hub, "dev", |s| s.set(Subscription::C2d, true));
    assert_eq!(delivered(&mut session.outbound), vec!["later".to_string()]);
}

#[test]
fn past_the_delivery_count_a_message_is_dead_lettered() {
    let emulator = start(None);
    let hubs = emulator.hubs().clone();
    let hub = hub_with_device(&emulator, "c2d-count", "dev");
    send(&hubs, &hub, "dev", "m", "negative", None);
    for delivery in 1..=MAX_DELIVERY_COUNT {
        // A device that never completes it: each new session delivers it again.
        let mut session = hubs.open_session(&hub, "dev", false);
        if delivery == 1 {
            hubs.subscribe(&hub, "dev", |s| s.set(Subscription::C2d, true));
        } else {
            hubs.resume(&hub, "dev");
        }
        assert_eq!(delivered(&mut session.outbound), vec!["m".to_string()]);
        assert_eq!(
            hubs.c2d_queue(&hub, "dev").unwrap()[0].delivery_count,
            delivery
        );
        hubs.close_session(&hub, "dev", session.generation, false);
    }
    let mut session = hubs.open_session(&hub, "dev", false);
    hubs.resume(&hub, "dev");
    assert!(
        delivered(&mut session.outbound).is_empty(),
        "delivered an 11th time"
    );
    assert!(hubs.c2d_queue(&hub, "dev").unwrap().is_empty());
    let records = drain_feedback(&hubs, &hub);
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].status_code,
        FeedbackStatus::DeliveryCountExceeded
    );
    assert_eq!(records[0].description, "Message Delivery Count Exceeded");
}

#[test]
fn a_purge_empties_the_queue_and_reports_what_was_asked() {
    let emulator = start(None);
    let hubs = emulator.hubs().clone();
    let hub = hub_with_device(&emulator, "c2d-purge", "dev");
    send(&hubs, &hub, "dev", "a", "full", None);
    send(&hubs, &hub, "dev", "b", "positive", None);
    send(&hubs, &hub, "dev", "c", "negative", None);
    assert_eq!(hubs.purge_c2d(&hub, "dev").unwrap(), 3);
    assert!(hubs.c2d_queue(&hub, "dev").unwrap().is_empty());
    let ids: Vec<String> = drain_feedback(&hubs, &hub)
        .into_iter()
        .inspect(|r| assert_eq!(r.status_code, FeedbackStatus::Purged))
        .map(|r| r.original_message_id)
        .collect();
    assert_eq!(
        ids,
        vec!["a", "c"],
        "a positive ack hears nothing of a purge"
    );
    assert_eq!(hubs.purge_c2d(&hub, "dev").unwrap(), 0);
    assert!(hubs.purge_c2d(&hub, "nobody").is_err());
}

#[test]
fn queues_expiries_and_feedback_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hub = {
        let emulator = start(Some(dir.path().to_path_buf()));
        let hubs = emulator.hubs().clone();
        let hub = hub_with_device(&emulator, "c2d-restart", "dev");
        send(&hubs, &hub, "dev", "purged", "full", None);
        hubs.purge_c2d(&hub, "dev").unwrap();
        let expiry = crate::clock::now_ms() + 3000;
        send(&hubs, &hub, "dev", "short", "full", Some(expiry));
        send(&hubs, &hub, "dev", "long", "positive", None);
        hub
    };
    let emulator = start(Some(dir.path().to_path_buf()));
    let hubs = emulator.hubs().clone();
    let queue = hubs.c2d_queue(&hub, "dev").unwrap();
    let kept: Vec<(&str, &str, bool)> = queue
        .iter()
        .map(|m| (m.message_id.as_str(), m.ack.as_str(), m.sender_expiry))
        .collect();
    assert!(kept.contains(&("long", "positive", false)), "{kept:?}");
    // Unless it expired before the restart (its feedback below says so either way).
    if let Some(short) = kept.iter().find(|m| m.0 == "short") {
        assert_eq!(short, &("short", "full", true));
    }
    // Nothing is sent after the restart: the sweeper knows the expiry from the store.
    assert!(
        eventually(|| hubs.c2d_queue(&hub, "dev").unwrap().len() == 1),
        "the short-lived message outlived its expiry after a restart"
    );
    let mut outcomes: Vec<(String, FeedbackStatus)> = drain_feedback(&hubs, &hub)
        .into_iter()
        .map(|r| (r.original_message_id, r.status_code))
        .collect();
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        outcomes,
        vec![
            ("purged".to_string(), FeedbackStatus::Purged),
            ("short".to_string(), FeedbackStatus::Expired),
        ]
    );
}

#[test]
fn a_device_completing_a_message_over_mqtt_leaves_success_feedback() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "c2d-mqtt-1");
    let hubs = f.emulator.hubs().clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let expiry = crate::clock::now_ms() + 3_600_000;
    send(&hubs, &hub, "c2d-mqtt-1", "asked", "full", Some(expiry));
    send(&hubs, &hub, "c2d-mqtt-1", "unasked", "none", None);
    let topics = runtime.block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        d.client
            .subscribe(
                "devices/c2d-mqtt-1/messages/devicebound/#",
                QoS::AtLeastOnce,
            )
            .await
            .unwrap();
        // rumqttc acknowledges each PUBLISH as it reads it.
        let mut topics = Vec::new();
        while topics.len() < 2 {
            match tokio::time::timeout(Duration::from_secs(5), d.events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    topics.push(String::from_utf8_lossy(&p.topic).into_owned());
                }
                Ok(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        // Keep the connection read until the hub processed the PUBACKs.
        let hubs = hubs.clone();
        let hub = hub.clone();
        while !hubs.c2d_queue(&hub, "c2d-mqtt-1").unwrap().is_empty() {
            let _ = tokio::time::timeout(Duration::from_millis(50), d.events.poll()).await;
        }
        topics
    });
    let expected_exp = format!(
        "%24.exp={}",
        crate::emulator::cloud::azure_time_ms(expiry).replace(':', "%3A")
    );
    assert!(
        topics[0].starts_with(&format!(
            "devices/c2d-mqtt-1/messages/devicebound/{expected_exp}&%24.mid=asked&"
        )),
        "{}",
        topics[0]
    );
    assert!(topics[0].ends_with("&iothub-ack=full"), "{}", topics[0]);
    assert!(
        !topics[1].contains("%24.exp"),
        "no expiry told when the sender set none"
    );
    assert!(!topics[1].contains("iothub-ack"), "{}", topics[1]);
    let records = drain_feedback(&hubs, &hub);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].original_message_id, "asked");
    assert_eq!(records[0].status_code, FeedbackStatus::Success);
    assert_eq!(records[0].description, "Success");
    assert_eq!(records[0].device_id, "c2d-mqtt-1");
}
