//! The cloud's clock and certificate issuance: time moved forward with
//! `Cloud::advance_time` expires certificates and SAS tokens at DPS and the hubs (and the
//! offset survives a restart); a device registers with a CSR and gets a chain issued by its
//! enrollment's Device Registry policy, authenticates to its hub with it
//! (`certificateAuthority`), and renews it over `$iothub/credentials`. The peer is a raw
//! rumqttc client written to Azure's documented wire format, so every answer seen is the
//! emulator's own.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Broker, Event, MqttOptions, Packet, TlsConfiguration, Transport};

use super::support::*;
use crate::pki::KeyAlgorithm;

const DAY: i64 = 86_400;

/// Connects to `hub` as `device_id` with a SAS token; `Err` when the CONNECT is refused.
async fn connect_sas(
    emulator: &crate::emulator::Emulator,
    hub: &str,
    device_id: &str,
    token: String,
) -> Result<rumqttc::EventLoop, String> {
    let config = client_tls(&emulator.trust_pem(), None);
    let mut options = MqttOptions::new(device_id, Broker::tcp(hub, emulator.mqtt_port()));
    options.set_credentials(
        format!("{hub}/{device_id}/?api-version=2021-04-12"),
        token.into_bytes(),
    );
    options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
    options.set_keep_alive(30);
    let (client, mut events) = AsyncClient::builder(options).capacity(4).build();
    std::mem::forget(client);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok(events),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no CONNACK".into()),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn an_x509_device_expires_at_dps_and_at_its_hub_when_the_clock_moves_past_its_certificate() {
    let f = fixture(None);
    f.sensors_group();
    let device = f
        .inter
        .issue_device("short-lived", KeyAlgorithm::EcP256, days(1))
        .unwrap();
    let hub = provision(&f.emulator, &f.scope, "short-lived", device_auth(&device)).assigned_hub();
    runtime().block_on(async {
        HubDevice::connect(&f, &hub, &device, true).await.unwrap();
    });
    f.emulator.cloud().advance_time(2 * DAY).unwrap();
    let (status, code, message) =
        provision(&f.emulator, &f.scope, "short-lived", device_auth(&device)).refusal();
    assert_eq!((status, code), (401, 401_002), "{message}");
    assert!(message.contains("validity period"), "{message}");
    runtime().block_on(async {
        let refused = HubDevice::connect(&f, &hub, &device, true).await.err();
        assert!(refused.is_some(), "the hub took an expired certificate");
    });
}

#[test]
fn a_sas_token_expires_on_the_clouds_clock_and_the_offset_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(Some(dir.path().to_path_buf()));
    let hub = f.emulator.cloud().hub("hub-a").unwrap().host_name;
    let key = sas_device(&f, &hub, "sas-clock");
    let resource = format!("{hub}/devices/sas-clock");
    let token = crate::sas::build_token(&resource, &key, crate::clock::now() + 3600, None).unwrap();
    runtime().block_on(async {
        let mut live = connect_sas(&f.emulator, &hub, "sas-clock", token.clone())
            .await
            .unwrap();
        f.emulator.cloud().advance_time(2 * 3600).unwrap();
        // The live session ends at once: its token ran out in the cloud's time.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while live.poll().await.is_ok() {}
        })
        .await;
        assert!(closed.is_ok(), "the session outlived its token");
        let refused = connect_sas(&f.emulator, &hub, "sas-clock", token.clone()).await;
        assert!(refused.is_err(), "an expired token was accepted");
    });
    let offset = f.emulator.cloud().clock().offset_ms();
    assert!(offset >= 2 * 3600 * 1000);
    drop(f);
    let emulator = start(Some(dir.path().to_path_buf()));
    assert!(emulator.cloud().clock().offset_ms() >= offset);
    runtime().block_on(async {
        let refused = connect_sas(&emulator, &hub, "sas-clock", token).await;
        assert!(
            refused.is_err(),
            "an expired token was accepted after a restart"
        );
    });
}
