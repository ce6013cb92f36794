//! The AMQP endpoint driven as an attacker would, by fe2o3-amqp's own client side over TLS
//! (raw AMQP, so every refusal is the endpoint's): links without a token, tokens that must be
//! refused, and a malformed frame; cloud-to-device sends (a malformed `iothub-ack` refused) and
//! the feedback node (settled by the client's outcome, closed to every token but the hub's
//! `ServiceConnect`). The official Event Hubs client is the peer of
//! `tests/test_azure_eventhub_peer.py`.

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Message, Properties};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::emulator::Emulator;
use crate::emulator::tests::support::{client_tls, start};

async fn tls(emulator: &Emulator, host: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_tls(&emulator.trust_pem(), None)));
    let tcp = TcpStream::connect((host, emulator.amqp_port()))
        .await
        .unwrap();
    connector
        .connect(ServerName::try_from(host.to_string()).unwrap(), tcp)
        .await
        .unwrap()
}

async fn open(emulator: &Emulator, host: &str) -> (ConnectionHandle<()>, SessionHandle<()>) {
    let mut connection = Connection::builder()
        .container_id("attacker")
        .hostname(host)
        .sasl_profile(SaslProfile::Anonymous)
        .open_with_stream(tls(emulator, host).await)
        .await
        .unwrap();
    let session = Session::begin(&mut connection).await.unwrap();
    (connection, session)
}

/// Puts `token` on `$cbs` and returns the status code of the answer.
async fn put_token(session: &mut SessionHandle<()>, token: &str) -> i32 {
    let mut requests = Sender::attach(session, "cbs-requests", "$cbs")
        .await
        .unwrap();
    let mut replies = Receiver::attach(session, "cbs-replies", "$cbs")
        .await
        .unwrap();
    let request = Message::builder()
        .properties(Properties::builder().message_id(7u64).build())
        .application_properties(
            ApplicationProperties::builder()
                .insert("operation", SimpleValue::String("put-token".into()))
                .insert(
                    "type",
                    SimpleValue::String("servicebus.windows.net:sastoken".into()),
                )
                .build(),
        )
        .value(token.to_string())
        .build();
    requests.send(request).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), replies.recv::<Body<Value>>())
        .await
        .expect("no CBS answer")
        .unwrap();
    replies.accept(&reply).await.unwrap();
    let _ = requests.close().await;
    let _ = replies.close().await;
    let message = reply.into_message();
    assert_eq!(
        message.properties.and_then(|p| p.correlation_id),
        Some(7u64.into()),
        "the answer names the request"
    );
    match message
        .application_properties
        .and_then(|p| p.0.get("status-code").cloned())
    {
        Some(SimpleValue::Int(code)) => code,
        other => panic!("no status-code: {other:?}"),
    }
}

/// Why a partition link was refused (`None`: it was not, an event or nothing arrived).
async fn partition_refusal(session: &mut SessionHandle<()>, hub: &str) -> Option<String> {
    static READERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "reader-{}",
        READERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let address = format!("{hub}/ConsumerGroups/$Default/Partitions/0");
    let mut receiver = match Receiver::attach(session, name, address).await {
        Ok(receiver) => receiver,
        Err(e) => return Some(format!("{e:?}")),
    };
    match tokio::time::timeout(Duration::from_secs(5), receiver.recv::<Body<Value>>()).await {
        Ok(Err(e)) => Some(format!("{e:?}")),
        _ => None,
    }
}

fn token(host: &str, hub: &str, key_name: &str, key: &str, expiry: i64) -> String {
    crate::sas::build_token(&format!("sb://{host}/{hub}"), key, expiry, Some(key_name)).unwrap()
}

#[test]
fn nothing_but_cbs_is_served_before_a_service_connect_token_of_the_hub_covers_it() {
    let emulator = start(None);
    let hub = emulator.create_hub("amqp-hub", "westus", None).unwrap();
    let other = emulator.create_hub("amqp-other", "westus", None).unwrap();
    let key = |name: &str| hub.policy(name).unwrap().primary_key.clone();
    let later = crate::clock::now() + 3600;
    emulator.runtime_handle().unwrap().block_on(async {
        let (_connection, mut session) = open(&emulator, &hub.host_name).await;
        let refusal = partition_refusal(&mut session, &hub.name).await;
        assert!(
            refusal
                .as_deref()
                .is_some_and(|r| r.contains("UnauthorizedAccess")),
            "{refusal:?}"
        );
        let refused = [
            "not a token".to_string(),
            token(&hub.host_name, &hub.name, "service", &key("device"), later),
            // A policy of the hub, signed by its key, without ServiceConnect.
            token(
                &hub.host_name,
                &hub.name,
                "registryRead",
                &key("registryRead"),
                later,
            ),
            token(
                &hub.host_name,
                &hub.name,
                "service",
                &key("service"),
                crate::clock::now() - 1,
            ),
            token(
                &hub.host_name,
                &hub.name,
                "iothubowner",
                &other.primary_key,
                later,
            ),
            token("203.0.113.9", &hub.name, "service", &key("service"), later),
        ];
        for bad in &refused {
            assert_eq!(put_token(&mut session, bad).await, 401, "{bad}");
        }
        assert!(partition_refusal(&mut session, &hub.name).await.is_some());
        let good = token(&hub.host_name, &hub.name, "service", &key("service"), later);
        assert_eq!(put_token(&mut session, &good).await, 200);
        assert_eq!(partition_refusal(&mut session, &hub.name).await, None);
        // The grant is this hub's: another hub's events stay closed.
        let refusal = partition_refusal(&mut session, &other.name).await;
        assert!(
            refusal
                .as_deref()
                .is_some_and(|r| r.contains("UnauthorizedAccess")),
            "{refusal:?}"
        );
    });
}

#[test]
fn a_malformed_frame_closes_its_own_connection_and_no_other() {
    let emulator = start(None);
    let hub = emulator.create_hub("amqp-frames", "westus", None).unwrap();
    let key = hub.policy("service").unwrap().primary_key.clone();
    emulator.runtime_handle().unwrap().block_on(async {
        let (_connection, mut session) = open(&emulator, &hub.host_name).await;
        let mut raw = tls(&emulator, &hub.host_name).await;
        // The SASL header, then a frame whose size says less than its own header.
        raw.write_all(b"AMQP\x03\x01\x00\x00\x00\x00\x00\x02\x02\x01\x00\x00")
            .await
            .unwrap();
        raw.flush().await.unwrap();
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(15), raw.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "the malformed connection was left open");
        let good = token(
            &hub.host_name,
            &hub.name,
            "service",
            &key,
            crate::clock::now() + 60,
        );
        assert_eq!(put_token(&mut session, &good).await, 200);
    });
}

#[test]
fn a_c2d_message_joins_its_devices_queue_with_its_id_and_properties_once_a_token_allows() {
    use fe2o3_amqp::types::messaging::Outcome;

    let emulator = start(None);
    let (hub, _) = hub_with_device(&emulator, "amqp-c2d");
    let target = format!("amqps://{}/messages/devicebound", hub.host_name);
    let message = |to: &str| {
        Message::builder()
            .properties(
                Properties::builder()
                    .message_id(String::from("m-1"))
                    .to(to)
                    .correlation_id(String::from("c-1"))
                    .content_type("text/plain")
                    .build(),
            )
            .application_properties(
                ApplicationProperties::builder()
                    .insert("k", SimpleValue::String("v".into()))
                    .insert("iothub-ack", SimpleValue::String("full".into()))
                    .build(),
            )
            .data(b"hello".to_vec())
            .build()
    };
    emulator.runtime_handle().unwrap().block_on(async {
        let (_connection, mut session) = open(&emulator, &hub.host_name).await;
        // Before a token: the sender's link is closed, nothing is queued.
        let refused = match Sender::attach(&mut session, "c2d-early", target.as_str()).await {
            Ok(mut sender) => sender
                .send(message("/devices/dev-1/messages/devicebound"))
                .await
                .is_err(),
            Err(_) => true,
        };
        assert!(refused, "a C2D message was taken before any token");
        // The IoT Hub service SDK's token: sr is the hub host, signed with the decoded key.
        let owner = crate::sas::build_token(
            &hub.host_name,
            &hub.primary_key,
            crate::clock::now() + 60,
            Some("iothubowner"),
        )
        .unwrap();
        assert_eq!(put_token(&mut session, &owner).await, 200);
        let mut sender = Sender::attach(&mut session, "c2d", target.as_str())
            .await
            .unwrap();
        let outcome = sender
            .send(message("/devices/dev-1/messages/devicebound"))
            .await
            .unwrap();
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
        let unknown = sender
            .send(message("/devices/nobody/messages/devicebound"))
            .await;
        assert!(
            !matches!(unknown, Ok(Outcome::Accepted(_))),
            "a message to an unknown device was accepted"
        );
    });
    let queue = emulator.hubs().c2d_queue(&hub.host_name, "dev-1").unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].message_id, "m-1");
    assert_eq!(queue[0].ack, crate::protocol::c2d::DeliveryAck::Full);
    let mut properties = queue[0].properties.clone();
    properties.sort();
    assert_eq!(
        properties,
        vec![
            ("$.cid".to_string(), "c-1".to_string()),
            ("$.ct".to_string(), "text/plain".to_string()),
            ("k".to_string(), "v".to_string()),
        ]
    );
}

#[test]
fn a_taken_amqp_port_falls_back_to_one_free_port_for_every_hub() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let emulator = Emulator::start(crate::emulator::EmulatorConfig {
        port: 0,
        web_port: 0,
        amqp_port: port,
        worker_threads: Some(2),
        ..Default::default()
    })
    .unwrap();
    let chosen = emulator.amqp_port();
    assert!(chosen != port && chosen != 0, "{chosen}");
    let first = emulator.create_hub("fallback-a", "westus", None).unwrap();
    let second = emulator.create_hub("fallback-b", "westus", None).unwrap();
    assert_eq!(emulator.amqp_port(), chosen, "one port serves every hub");
    emulator.runtime_handle().unwrap().block_on(async {
        for hub in [&first, &second] {
            let key = hub.policy("service").unwrap().primary_key.clone();
            let (_connection, mut session) = open(&emulator, &hub.host_name).await;
            let good = token(
                &hub.host_name,
                &hub.name,
                "service",
                &key,
                crate::clock::now() + 60,
            );
            assert_eq!(
                put_token(&mut session, &good).await,
                200,
                "{}",
                hub.host_name
            );
        }
    });
}

/// A hub with one SAS device (`dev-1`); returns the hub and the device's key.
fn hub_with_device(emulator: &Emulator, name: &str) -> (crate::emulator::model::HubRecord, String) {
    let hub = emulator.create_hub(name, "westus", None).unwrap();
    let key = crate::sas::generate_key().unwrap();
    emulator
        .cloud()
        .put_hub_device(crate::emulator::model::HubDevice {
            device_id: "dev-1".into(),
            hub: hub.host_name.clone(),
            auth: crate::emulator::model::DeviceAuth::Sas {
                primary_key: key.clone(),
                secondary_key: crate::sas::generate_key().unwrap(),
            },
            initial_twin: None,
            created: crate::clock::now(),
            registry: Default::default(),
            issued_by: None,
        })
        .unwrap();
    (hub, key)
}

/// The IoT Hub service SDK's token for `policy` (sr is the hub host).
fn hub_token(hub: &crate::emulator::model::HubRecord, policy: &str, expiry: i64) -> String {
    let key = hub.policy(policy).unwrap().primary_key.clone();
    crate::sas::build_token(&hub.host_name, &key, expiry, Some(policy)).unwrap()
}

/// Queues a message asking for full feedback and completes it as a device would: one
/// `Success` record waits on the hub's feedback queue.
fn completed_message(emulator: &Emulator, hub: &str, id: &str) {
    let hubs = emulator.hubs();
    let options = crate::emulator::hub::C2dOptions {
        message_id: Some(id.into()),
        ..Default::default()
    };
    let ack = vec![("iothub-ack".to_string(), "full".to_string())];
    hubs.send_c2d_as(hub, "dev-1", options, b"x", ack).unwrap();
    hubs.c2d_acknowledged(hub, "dev-1", id);
}

fn feedback_address(host: &str) -> String {
    format!("amqps://{host}/messages/servicebound/feedback")
}

/// The next feedback delivery on `receiver`, if one arrives within `wait`.
async fn next_feedback(
    receiver: &mut Receiver,
    wait: Duration,
) -> Option<fe2o3_amqp::link::delivery::Delivery<Body<Value>>> {
    match tokio::time::timeout(wait, receiver.recv::<Body<Value>>()).await {
        Ok(Ok(delivery)) => Some(delivery),
        Ok(Err(e)) => panic!("the feedback link failed: {e:?}"),
        Err(_) => None,
    }
}

fn records(delivery: &fe2o3_amqp::link::delivery::Delivery<Body<Value>>) -> Vec<String> {
    let body = crate::transport::amqp::body_bytes(&delivery.message().body).unwrap();
    crate::protocol::c2d::parse_feedback(&body)
        .unwrap()
        .into_iter()
        .map(|r| format!("{}:{:?}", r.original_message_id, r.status_code))
        .collect()
}

#[test]
fn feedback_is_offered_unsettled_and_settled_by_the_clients_outcome() {
    let emulator = start(None);
    let (hub, _) = hub_with_device(&emulator, "amqp-feedback");
    let host = hub.host_name.clone();
    emulator.runtime_handle().unwrap().block_on(async {
        let (_connection, mut session) = open(&emulator, &host).await;
        let owner = hub_token(&hub, "service", crate::clock::now() + 600);
        assert_eq!(put_token(&mut session, &owner).await, 200);
        // Node's FeedbackReceiver spells the node serviceBound.
        let address = format!("amqps://{host}/messages/serviceBound/feedback");
        let mut receiver = Receiver::attach(&mut session, "feedback-1", address)
            .await
            .unwrap();
        assert!(
            next_feedback(&mut receiver, Duration::from_millis(300))
                .await
                .is_none(),
            "feedback before any outcome"
        );
        // The link is waiting now: new feedback wakes it.
        completed_message(&emulator, &host, "m-1");
        let first = next_feedback(&mut receiver, Duration::from_secs(10))
            .await
            .expect("new feedback did not reach the waiting link");
        assert_eq!(records(&first), vec!["m-1:Success"]);
        let properties = first.message().properties.clone().unwrap();
        assert_eq!(
            properties.content_type.as_ref().map(|c| c.as_str()),
            Some(crate::protocol::c2d::FEEDBACK_CONTENT_TYPE)
        );
        assert_eq!(
            properties.user_id.as_ref().map(|u| u.to_vec()),
            Some(hub.name.as_bytes().to_vec()),
            "user-id is the hub's name"
        );
        let first_id = properties.message_id.clone().unwrap();
        // Released: offered again, the same message.
        receiver.release(&first).await.unwrap();
        let again = next_feedback(&mut receiver, Duration::from_secs(10))
            .await
            .expect("a released message was not offered again");
        assert_eq!(
            again.message().properties.clone().unwrap().message_id,
            Some(first_id)
        );
        assert_eq!(
            again.message().header.as_ref().map(|h| h.delivery_count),
            Some(1)
        );
        // Detached with it unsettled: the next receiver gets it.
        receiver.close().await.unwrap();
        let mut receiver = Receiver::attach(&mut session, "feedback-2", feedback_address(&host))
            .await
            .unwrap();
        let third = next_feedback(&mut receiver, Duration::from_secs(10))
            .await
            .expect("feedback left unsettled by a detached link was lost");
        assert_eq!(records(&third), vec!["m-1:Success"]);
        // Accepted: gone.
        receiver.accept(&third).await.unwrap();
        assert!(
            next_feedback(&mut receiver, Duration::from_millis(500))
                .await
                .is_none(),
            "a completed feedback message came back"
        );
        // Rejected: dead-lettered, gone as well.
        completed_message(&emulator, &host, "m-2");
        let fourth = next_feedback(&mut receiver, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(records(&fourth), vec!["m-2:Success"]);
        receiver
            .reject(&fourth, None::<fe2o3_amqp::types::definitions::Error>)
            .await
            .unwrap();
        assert!(
            next_feedback(&mut receiver, Duration::from_millis(500))
                .await
                .is_none()
        );
        let _ = receiver.close().await;
    });
    assert!(matches!(
        emulator.hubs().feedback().take(&host).unwrap(),
        crate::emulator::feedback::Taken::Nothing(None)
    ));
}

/// Why a feedback link was refused (`None`: it was not).
async fn feedback_refusal(session: &mut SessionHandle<()>, host: &str) -> Option<String> {
    static LINKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "feedback-{}",
        LINKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut receiver = match Receiver::attach(session, name, feedback_address(host)).await {
        Ok(receiver) => receiver,
        Err(e) => return Some(format!("{e:?}")),
    };
    match tokio::time::timeout(Duration::from_secs(2), receiver.recv::<Body<Value>>()).await {
        Ok(Err(e)) => Some(format!("{e:?}")),
        Ok(Ok(_)) => None,
        Err(_) => {
            let _ = receiver.close().await;
            None
        }
    }
}

#[test]
fn only_a_service_connect_token_of_the_hub_reads_its_feedback() {
    let emulator = start(None);
    let (hub, device_key) = hub_with_device(&emulator, "amqp-feedback-auth");
    let (other, _) = hub_with_device(&emulator, "amqp-feedback-other");
    let host = hub.host_name.clone();
    completed_message(&emulator, &host, "secret");
    let later = crate::clock::now() + 600;
    emulator.runtime_handle().unwrap().block_on(async {
        let (_connection, mut session) = open(&emulator, &host).await;
        let unauthorized = |refusal: Option<String>| {
            assert!(
                refusal
                    .as_deref()
                    .is_some_and(|r| r.contains("UnauthorizedAccess")),
                "{refusal:?}"
            );
        };
        unauthorized(feedback_refusal(&mut session, &host).await);
        let device_sas =
            crate::sas::build_token(&format!("{host}/devices/dev-1"), &device_key, later, None)
                .unwrap();
        for refused in [
            hub_token(&hub, "registryRead", later),
            hub_token(&hub, "service", crate::clock::now() - 1),
            device_sas,
        ] {
            assert_eq!(put_token(&mut session, &refused).await, 401, "{refused}");
            unauthorized(feedback_refusal(&mut session, &host).await);
        }
        // Another hub's owner reaches its own feedback, not this hub's.
        let theirs = hub_token(&other, "iothubowner", later);
        assert_eq!(put_token(&mut session, &theirs).await, 200);
        unauthorized(feedback_refusal(&mut session, &host).await);
    });
    assert!(
        matches!(
            emulator.hubs().feedback().take(&host).unwrap(),
            crate::emulator::feedback::Taken::Message(_)
        ),
        "a refused link took the feedback"
    );
}

#[test]
fn a_c2d_message_with_a_malformed_ack_is_rejected_and_never_queued() {
    use fe2o3_amqp::types::messaging::Outcome;

    let emulator = start(None);
    let (hub, _) = hub_with_device(&emulator, "amqp-bad-ack");
    emulator.runtime_handle().unwrap().block_on(async {
        let (_connection, mut session) = open(&emulator, &hub.host_name).await;
        let owner = hub_token(&hub, "iothubowner", crate::clock::now() + 60);
        assert_eq!(put_token(&mut session, &owner).await, 200);
        let target = format!("amqps://{}/messages/devicebound", hub.host_name);
        let mut sender = Sender::attach(&mut session, "c2d", target.as_str())
            .await
            .unwrap();
        let message = |ack: &str| {
            Message::builder()
                .properties(
                    Properties::builder()
                        .to("/devices/dev-1/messages/devicebound")
                        .absolute_expiry_time(
                            fe2o3_amqp::types::primitives::Timestamp::from_milliseconds(
                                crate::clock::now_ms() + 60_000,
                            ),
                        )
                        .build(),
                )
                .application_properties(
                    ApplicationProperties::builder()
                        .insert("iothub-ack", SimpleValue::String(ack.into()))
                        .build(),
                )
                .data(b"hello".to_vec())
                .build()
        };
        let outcome = sender.send(message("sometimes")).await.unwrap();
        let Outcome::Rejected(rejected) = outcome else {
            panic!("{outcome:?}")
        };
        let error = rejected.error.unwrap();
        assert_eq!(
            error.condition,
            fe2o3_amqp::types::definitions::ErrorCondition::AmqpError(
                fe2o3_amqp::types::definitions::AmqpError::InvalidField
            )
        );
        assert!(
            error.description.unwrap_or_default().contains("iothub-ack"),
            "the refusal names the property"
        );
        let outcome = sender.send(message("negative")).await.unwrap();
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    });
    let queue = emulator.hubs().c2d_queue(&hub.host_name, "dev-1").unwrap();
    assert_eq!(queue.len(), 1, "only the well-formed message");
    assert_eq!(queue[0].ack, crate::protocol::c2d::DeliveryAck::Negative);
    assert!(queue[0].sender_expiry, "absolute-expiry-time is kept");
}

/// Opens a connection authenticated by SASL PLAIN, as IoT Hub's "SASL PLAIN" option does it.
async fn open_plain(
    emulator: &Emulator,
    host: &str,
    username: &str,
    password: &str,
) -> Result<(ConnectionHandle<()>, SessionHandle<()>), String> {
    let mut connection = Connection::builder()
        .container_id("plain-client")
        .hostname(host)
        .sasl_profile(SaslProfile::Plain {
            username: username.to_string(),
            password: password.to_string(),
        })
        .open_with_stream(tls(emulator, host).await)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let session = Session::begin(&mut connection)
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok((connection, session))
}

#[test]
fn a_service_token_in_sasl_plain_covers_the_connection_and_a_forged_one_fails_sasl() {
    let emulator = start(None);
    let (hub, device_key) = hub_with_device(&emulator, "amqp-plain");
    let (other, _) = hub_with_device(&emulator, "amqp-plain-other");
    let host = hub.host_name.clone();
    completed_message(&emulator, &host, "plain-1");
    let later = crate::clock::now() + 600;
    emulator.runtime_handle().unwrap().block_on(async {
        let service = hub_token(&hub, "service", later);
        let username = format!("service@sas.root.{}", hub.name);
        let (_connection, mut session) = open_plain(&emulator, &host, &username, &service)
            .await
            .expect("a service token in PLAIN opens the connection");
        // No put-token: the PLAIN token alone reaches the feedback node.
        let mut receiver =
            Receiver::attach(&mut session, "plain-feedback", feedback_address(&host))
                .await
                .unwrap();
        let delivery = next_feedback(&mut receiver, Duration::from_secs(10))
            .await
            .expect("feedback arrives");
        assert_eq!(records(&delivery), ["plain-1:Success"]);
        receiver.accept(&delivery).await.unwrap();

        let device_sas =
            crate::sas::build_token(&format!("{host}/devices/dev-1"), &device_key, later, None)
                .unwrap();
        // The policy's name and the hub's address, signed with a key that is not the policy's.
        let forged = crate::sas::build_token(
            &hub.host_name,
            &crate::sas::generate_key().unwrap(),
            later,
            Some("service"),
        )
        .unwrap();
        for (username, password, why) in [
            (username.clone(), forged, "a forged signature"),
            (
                username.clone(),
                hub_token(&hub, "service", crate::clock::now() - 1),
                "expired",
            ),
            (
                username.clone(),
                hub_token(&hub, "registryRead", later),
                "no ServiceConnect",
            ),
            (username.clone(), device_sas, "a device's token"),
            (
                format!("iothubowner@sas.root.{}", hub.name),
                hub_token(&other, "iothubowner", later),
                "another hub's token",
            ),
            (
                format!("service@sas.{}", hub.name),
                service.clone(),
                "a device-style username",
            ),
            (
                "service".to_string(),
                service.clone(),
                "no hub in the username",
            ),
        ] {
            assert!(
                open_plain(&emulator, &host, &username, &password)
                    .await
                    .is_err(),
                "SASL PLAIN passed with {why}"
            );
        }
    });
}
