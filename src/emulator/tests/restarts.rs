//! What survives a restart: the configuration and registrations, acknowledged telemetry (a
//! clean stop and SIGKILL), and persistent hub sessions.

use std::path::PathBuf;

use rumqttc::{Packet, PublishOptions};
use serde_json::Value;

use super::support::*;
use crate::pki::KeyAlgorithm;

#[test]
fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(Some(dir.path().to_path_buf()));
    f.sensors_group();
    let device = f.device("durable-1");
    let hub = provision(&f.emulator, &f.scope, "durable-1", device_auth(&device)).assigned_hub();
    let trust = f.emulator.trust_pem();
    let Fixture {
        emulator,
        scope,
        inter,
        ..
    } = f;
    drop(emulator);
    let emulator = start(Some(dir.path().to_path_buf()));
    assert_eq!(emulator.trust_pem(), trust, "the CA is kept");
    assert!(emulator.cloud().dps("dps").unwrap().certificates[0].is_verified);
    assert_eq!(emulator.cloud().registrations("dps", None).len(), 1);
    assert_eq!(emulator.cloud().hub_devices(&hub).len(), 1);
    let another = inter
        .issue_device("durable-2", KeyAlgorithm::EcP256, days(5))
        .unwrap();
    provision(&emulator, &scope, "durable-2", device_auth(&another)).assigned_hub();
}

#[test]
fn telemetry_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(Some(dir.path().to_path_buf()));
    let (device, hub) = provisioned(&f, "hub-dev-4");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        // Publish and drive the event loop together: the client's request queue is bounded.
        for i in 0..100 {
            d.client
                .publish(
                    "devices/hub-dev-4/messages/events/",
                    format!("{i}"),
                    PublishOptions::at_least_once(),
                )
                .await
                .unwrap();
            d.until(|p| matches!(p, Packet::PubAck(_))).await.unwrap();
        }
    });
    drop(f);
    let emulator = start(Some(dir.path().to_path_buf()));
    let records = emulator.hubs().telemetry(&hub, Some("hub-dev-4")).unwrap();
    let bodies: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(bodies, (0..100).map(|i| i.to_string()).collect::<Vec<_>>());
}

/// The child half of [`acknowledged_telemetry_survives_sigkill`]: runs only when the parent
/// re-executes this test binary with `DPSKIT_KILL_CHILD_DIR` set.
#[test]
#[ignore = "run by acknowledged_telemetry_survives_sigkill in a child process"]
fn kill_child_streams_telemetry() {
    use std::io::Write;
    let Ok(dir) = std::env::var("DPSKIT_KILL_CHILD_DIR") else {
        return;
    };
    let f = fixture(Some(PathBuf::from(dir)));
    let (device, hub) = provisioned(&f, "kill-dev");
    println!("HUB {hub}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        for i in 0.. {
            d.client
                .publish(
                    "devices/kill-dev/messages/events/",
                    format!("{i}"),
                    PublishOptions::at_least_once(),
                )
                .await
                .unwrap();
            d.until(|p| matches!(p, Packet::PubAck(_))).await.unwrap();
            // Only what the hub acknowledged is reported to the parent.
            println!("ACKED {i}");
            std::io::stdout().flush().unwrap();
        }
    });
}

/// A process killed with SIGKILL in the middle of a telemetry stream loses no acknowledged
/// message: every one is there after a restart.
#[test]
fn acknowledged_telemetry_survives_sigkill() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "emulator::tests::restarts::kill_child_streams_telemetry",
            "--nocapture",
        ])
        .env("DPSKIT_KILL_CHILD_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut hub = String::new();
    let mut acked: i64 = -1;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(h) = line.strip_prefix("HUB ") {
            hub = h.to_string();
        }
        if let Some(n) = line.strip_prefix("ACKED ") {
            acked = n.parse().unwrap();
            if acked >= 300 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    child.wait().unwrap();
    assert!(acked >= 300, "the child streamed {acked} messages");
    let emulator = start(Some(dir.path().to_path_buf()));
    let stored: Vec<i64> = emulator
        .hubs()
        .telemetry(&hub, Some("kill-dev"))
        .unwrap()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).parse().unwrap())
        .collect();
    assert!(
        stored.len() as i64 > acked,
        "{} stored, {acked} acknowledged",
        stored.len()
    );
    assert_eq!(
        stored[..=acked as usize],
        (0..=acked).collect::<Vec<_>>()[..]
    );
}

#[test]
fn persistent_sessions_survive_an_emulator_restart() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(Some(dir.path().to_path_buf()));
    let (device, hub) = provisioned(&f, "hub-dev-5");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, false).await.unwrap();
        d.subscribe_all("hub-dev-5").await;
        d.client.disconnect().await.unwrap();
        let _ = d.until(|_| false).await;
    });
    let Fixture {
        emulator,
        scope,
        root,
        inter,
    } = f;
    drop(emulator);
    let f = Fixture {
        emulator: start(Some(dir.path().to_path_buf())),
        scope,
        root,
        inter,
    };
    let hubs = f.emulator.hubs().clone();
    hubs.send_c2d(&hub, "hub-dev-5", b"after restart", vec![])
        .unwrap();
    runtime.block_on(async {
        // Like the Python SDK: reconnect with clean_session=0 and never subscribe again.
        let mut d = HubDevice::connect(&f, &hub, &device, false).await.unwrap();
        let (_, body) = d.next_publish().await.unwrap();
        assert_eq!(body, b"after restart");
        let patch = serde_json::json!({"interval": 9});
        hubs.update_desired(&hub, "hub-dev-5", patch.as_object().unwrap())
            .unwrap();
        let (topic, _) = d.next_publish().await.unwrap();
        assert!(
            topic.starts_with("$iothub/twin/PATCH/properties/desired/"),
            "{topic}"
        );
    });
    // A clean session forgets them, also on disk.
    runtime.block_on(async {
        let d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        drop(d);
    });
    drop(f);
    let store = crate::emulator::store::Store::open(dir.path()).unwrap();
    let sessions: Vec<Value> = store.all(crate::emulator::store::kind::SESSION).unwrap();
    assert!(sessions.is_empty(), "{sessions:?}");
}
