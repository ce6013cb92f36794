//! dpskit's events reader against the emulator's built-in endpoint over real TLS and AMQP:
//! a live stream outliving its first token, refusals read as the service's typed errors, and
//! events carrying the auth their connection had when they were sent.

use std::time::Duration;

use rumqttc::{Packet, PublishOptions};

use crate::emulator::tests::support::*;
use crate::protocol::event_hubs::{LATEST, StartPosition};
use crate::service::events::{EventHubConnectionString, EventReader, EventStream};
use crate::transport::Trust;

/// The hub's event hub connection string with its `service` policy, as ARM describes it.
fn events_target(f: &Fixture, hub_host: &str) -> EventHubConnectionString {
    let record = f
        .emulator
        .cloud()
        .hubs()
        .into_iter()
        .find(|h| h.host_name == hub_host)
        .unwrap();
    let key = &record.policy("service").unwrap().primary_key;
    EventHubConnectionString::parse(&format!(
        "Endpoint=sb://{hub_host}/;SharedAccessKeyName=service;SharedAccessKey={key};EntityPath={}",
        record.name
    ))
    .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A stream whose tokens live 3 s keeps reading well past the first one's expiry: it puts a
/// fresh token before each expires, and the emulator (like Azure) closes the links of a token
/// that ran out.
#[test]
fn a_live_stream_renews_its_token_before_the_hub_closes_its_links() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "renew-dev");
    let target = events_target(&f, &hub);
    let trust = Trust::from_pem(f.emulator.trust_pem().as_bytes()).unwrap();
    let port = Some(f.emulator.amqp_port());
    runtime().block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, false).await.unwrap();
        let reader = EventReader::connect_with(&target, port, &trust, 3)
            .await
            .unwrap();
        let latest = StartPosition::Offset {
            offset: LATEST.into(),
            inclusive: false,
        };
        let mut stream = EventStream::open_on(reader, "$Default", &latest, None)
            .await
            .unwrap();
        let topic = "devices/renew-dev/messages/events/";
        for (body, wait_before) in [("before", 0), ("after", 5), ("later", 4)] {
            tokio::time::sleep(Duration::from_secs(wait_before)).await;
            d.client
                .publish(topic, body, PublishOptions::at_least_once())
                .await
                .unwrap();
            // The device's event loop sends the publish; the hub's PUBACK means it is stored.
            d.until(|p| matches!(p, Packet::PubAck(_))).await.unwrap();
            let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .unwrap_or_else(|_| panic!("no event {body:?} within 10 s"))
                .expect("the stream ended")
                .unwrap_or_else(|e| panic!("the stream failed before {body:?}: {e}"));
            assert_eq!(event.body, body.as_bytes());
            assert_eq!(event.device_id.as_deref(), Some("renew-dev"));
        }
    });
}

/// An unknown consumer group is the service's 404 and a key the hub never issued its 401,
/// typed as the REST APIs' refusals are, not a transport failure.
#[test]
fn refusals_read_as_the_services_typed_errors() {
    let f = fixture(None);
    let (_device, hub) = provisioned(&f, "refused-dev");
    let target = events_target(&f, &hub);
    let trust = Trust::from_pem(f.emulator.trust_pem().as_bytes()).unwrap();
    let port = Some(f.emulator.amqp_port());
    let status = |e: crate::Error| match e {
        crate::Error::Service(s) => s.status,
        other => panic!("not a service refusal: {other:?}"),
    };
    runtime().block_on(async {
        let refused = match EventStream::open(
            &target,
            port,
            &trust,
            "nobody",
            &StartPosition::earliest(),
            None,
        )
        .await
        {
            Err(e) => e,
            Ok(mut stream) => tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("neither refused nor ended")
                .expect("the stream ended without a refusal")
                .unwrap_err(),
        };
        assert_eq!(status(refused), 404);

        let forged = EventHubConnectionString::parse(&format!(
            "Endpoint=sb://{hub}/;SharedAccessKeyName=service;SharedAccessKey={};EntityPath={}",
            crate::sas::generate_key().unwrap(),
            target.event_hub
        ))
        .unwrap();
        let refused = EventReader::connect(&forged, port, &trust)
            .await
            .err()
            .unwrap();
        assert_eq!(status(refused), 401);
    });
}

/// An event carries the auth method and generation of the connection that sent it, as IoT Hub
/// stamps it: deleting the device and re-creating it with another credential changes the
/// events it sends afterwards, not those it sent before.
#[test]
fn events_keep_the_auth_their_connection_had_when_they_were_sent() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "stamped-dev");
    let target = events_target(&f, &hub);
    let trust = Trust::from_pem(f.emulator.trust_pem().as_bytes()).unwrap();
    let port = Some(f.emulator.amqp_port());
    let cloud = f.emulator.cloud();
    let before = cloud.hub_device(&hub, "stamped-dev").unwrap();
    runtime().block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, false).await.unwrap();
        d.client
            .publish(
                "devices/stamped-dev/messages/events/",
                "x509",
                PublishOptions::at_least_once(),
            )
            .await
            .unwrap();
        d.until(|p| matches!(p, Packet::PubAck(_))).await.unwrap();
    });
    // The identity is replaced by a SAS one, with a new generation.
    cloud.delete_hub_device(&hub, "stamped-dev").unwrap();
    let replaced = crate::emulator::model::HubDevice {
        auth: crate::emulator::model::DeviceAuth::Sas {
            primary_key: crate::sas::generate_key().unwrap(),
            secondary_key: crate::sas::generate_key().unwrap(),
        },
        created: before.created + 1,
        registry: Default::default(),
        ..before.clone()
    };
    cloud.put_hub_device(replaced.clone()).unwrap();
    assert_ne!(replaced.generation_id(), before.generation_id());
    let events = runtime().block_on(async {
        crate::service::events::read_retained(&target, port, &trust, "$Default")
            .await
            .unwrap()
    });
    assert_eq!(events.len(), 1);
    let annotation = |key: &str| events[0].annotations.get(key).cloned().unwrap_or_default();
    let method: serde_json::Value =
        serde_json::from_str(&annotation("iothub-connection-auth-method")).unwrap();
    assert_eq!(method["type"], "x509Certificate");
    assert_eq!(method["issuer"], "external");
    assert_eq!(
        annotation("iothub-connection-auth-generation-id"),
        before.generation_id()
    );
}
