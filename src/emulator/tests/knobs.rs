//! The knobs (throttle, delay, refuse, drop) of DPS and the hubs, and the tier presets' daily
//! quota and throttles.

use std::time::Duration;

use rumqttc::PublishOptions;

use super::support::*;

#[test]
fn knobs_throttle_and_delay() {
    let f = fixture(None);
    f.sensors_group();
    let device = f.device("slow-1");
    f.emulator
        .update_dps_knobs("dps", |k| k.refuse_next = 1)
        .unwrap();
    let (status, code, _) =
        provision(&f.emulator, &f.scope, "slow-1", device_auth(&device)).refusal();
    assert_eq!((status, code), (429, 429_001));
    f.emulator
        .update_dps_knobs("dps", |k| k.assignment_latency = Duration::from_millis(300))
        .unwrap();
    let outcome = provision(&f.emulator, &f.scope, "slow-1", device_auth(&device));
    let Outcome::Replies(replies) = &outcome else {
        panic!()
    };
    assert!(
        replies.len() >= 3,
        "a poll before the latency elapsed answers 202: {replies:?}"
    );
    outcome.assigned_hub();
    f.emulator
        .update_dps_knobs("dps", |k| {
            k.assignment_latency = Duration::ZERO;
            k.registrations_per_minute = Some(1);
        })
        .unwrap();
    provision(&f.emulator, &f.scope, "slow-1", device_auth(&device)).assigned_hub();
    let (status, _, message) =
        provision(&f.emulator, &f.scope, "slow-1", device_auth(&device)).refusal();
    assert_eq!(status, 429, "{message}");
}

#[test]
fn hub_knobs_refuse_drop_and_throttle() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "knob-dev");
    let hubs = f.emulator.hubs().clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        hubs.update_knobs(&hub, |k| k.refuse_next_connections = 1);
        assert!(HubDevice::connect(&f, &hub, &device, true).await.is_err());
        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        assert!(hubs.drop_connection(&hub, "knob-dev"));
        assert!(
            d.until(|_| false).await.is_err(),
            "dropped by fault injection"
        );
        assert!(
            !hubs.drop_connection(&hub, "knob-dev"),
            "nothing left to drop"
        );

        hubs.update_knobs(&hub, |k| k.connections_per_second = Some(1));
        let _first = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        assert!(
            HubDevice::connect(&f, &hub, &device, true).await.is_err(),
            "second connection in the same second"
        );
        hubs.update_knobs(&hub, |k| k.connections_per_second = None);

        hubs.update_knobs(&hub, |k| k.messages_per_second = Some(2));
        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        for i in 0..12 {
            d.client
                .publish(
                    "devices/knob-dev/messages/events/",
                    format!("{i}"),
                    PublishOptions::at_least_once(),
                )
                .await
                .unwrap();
        }
        // Shaped for a second, then throttled: the hub drops the connection (429001).
        let closed = d.until(|_| false).await.unwrap_err();
        assert_ne!(closed, "timed out", "the throttled connection is closed");
    });
    let stored = f
        .emulator
        .hubs()
        .telemetry(&hub, Some("knob-dev"))
        .unwrap()
        .len();
    // The first message passes at once; the shaped ones behind it are stored only if their
    // delay ends before the throttle closes the connection (never acknowledged otherwise, so
    // a device sends them again), which depends on the machine's load.
    assert!(
        (1..12).contains(&stored),
        "{stored} messages got through the throttle"
    );
}

/// A hub enforcing the free tier: its daily quota metered in 0.5 KB blocks is spent by a few
/// large messages, the next one closes the connection unacknowledged (403002), and `usage`
/// shows the meter; the tier's connection rate refuses past 100 new connections at once.
#[test]
fn free_tier_preset_meters_the_daily_quota_and_throttles_connections() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "quota-dev");
    let hubs = f.emulator.hubs().clone();
    let sku = crate::limits::HubSku::new("F1", 1).unwrap();
    let name = f
        .emulator
        .cloud()
        .hubs()
        .into_iter()
        .find(|h| h.host_name == hub)
        .unwrap()
        .name;
    let record = f
        .emulator
        .cloud()
        .set_hub_sku(&name, Some(sku), true)
        .unwrap();
    assert_eq!((record.sku, record.presets), (Some(sku), true));
    hubs.set_preset(&hub, Some(sku));
    let before = hubs.usage(&hub).unwrap();
    assert_eq!(
        (
            before.sku.as_str(),
            before.daily_quota,
            before.meter_block_bytes
        ),
        ("F1", 8_000, 512)
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // 200 KB is 400 blocks of 0.5 KB: twenty messages spend the 8,000, the 21st is refused.
    let body = vec![b'x'; 200 * 1024];
    runtime.block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        // Published from a task while `until` drives the connection: the client's request
        // queue holds fewer messages than these.
        let client = d.client.clone();
        let sender = tokio::spawn(async move {
            for _ in 0..21 {
                let sent = client
                    .publish(
                        "devices/quota-dev/messages/events/",
                        body.clone(),
                        PublishOptions::at_least_once(),
                    )
                    .await;
                if sent.is_err() {
                    break;
                }
            }
        });
        let closed = d.until(|_| false).await.unwrap_err();
        assert_ne!(closed, "timed out", "the hub closes the connection");
        sender.abort();
    });
    let usage = hubs.usage(&hub).unwrap();
    assert_eq!((usage.messages_used, usage.quota_refusals), (8_000, 1));
    assert_eq!(usage.resets_at % 86_400, 0, "the meter resets at 00:00 UTC");
    // The writer commits in batches after the hub took the messages.
    let stored = || hubs.telemetry(&hub, Some("quota-dev")).unwrap().len();
    for _ in 0..100 {
        if stored() >= 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stored(), 20, "the refused message is not stored");

    // F1 takes 100 new connections a second (the device's took one of them), not 150.
    let admitted = (0..150)
        .filter(|_| hubs.admit_connection(&hub).is_ok())
        .count();
    assert!((99..150).contains(&admitted), "{admitted} admitted");
    assert!(hubs.usage(&hub).unwrap().throttled["connections"] >= 1);

    // Without the preset the hub enforces nothing again.
    hubs.set_preset(&hub, None);
    assert!((0..150).all(|_| hubs.admit_connection(&hub).is_ok()));
    assert!(hubs.meter_message(&hub, 1 << 20).is_ok());
}
