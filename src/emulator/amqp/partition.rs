//! A partition reader: streams a partition's events from the durable store, from the start
//! position its selector named (never before the hub's retention), then tails it as telemetry
//! is committed (woken by the store's commit counter, never by polling). Sends are
//! pre-settled and wait for the client's link
//! credit, so nothing goes out beyond the credit granted; pages are read on the blocking pool
//! so a commit holding the store does not stall the runtime's workers.
//!
//! Each event carries what IoT Hub adds to a device's message: in the message annotations the
//! Event Hubs fields (`x-opt-sequence-number`, `x-opt-offset` as a string,
//! `x-opt-enqueued-time`) and IoT Hub's (`iothub-connection-device-id`,
//! `iothub-connection-module-id`, `iothub-connection-auth-method`,
//! `iothub-connection-auth-generation-id`, `iothub-enqueuedtime`, `iothub-message-source`);
//! in the properties the device's message id, correlation id, content type and encoding; the
//! device's application properties as strings; the body as one data section. The auth method
//! and generation are those the sending connection authenticated with, kept with each event
//! (events stored before they were kept report the device identity as it stands when read).
//!
//! A reader that asked for the runtime metric (`com.microsoft:enable-receiver-runtime-metric`,
//! the clients' `track_last_enqueued_event_properties`) gets the partition's last event with
//! each event, in the delivery annotations.

use std::sync::Arc;

use fe2o3_amqp::Sender;
use fe2o3_amqp::types::definitions::{self, AmqpError};
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Data, DeliveryAnnotations, Message, MessageAnnotations, Properties,
};
use fe2o3_amqp::types::primitives::{SimpleValue, Symbol, Timestamp, Value};

use super::AmqpContext;
use super::cbs::Grants;
use super::readers::{Membership, displaced_error};
use crate::emulator::model::{HubDevice, HubRecord};
use crate::emulator::store::{EventPosition, StoredEvent};
use crate::protocol::event_hubs::annotations;

/// Events read from the store at once.
const PAGE: usize = 256;

/// What `iothub-message-source` says of device telemetry.
const TELEMETRY_SOURCE: &str = "Telemetry";

/// What a partition link reads, as the router accepted it.
pub(crate) struct Reading {
    /// The entity the link named (the hub's name as the client spelled it).
    pub(crate) entity: String,
    /// The consumer group as the client spelled it.
    pub(crate) consumer_group: String,
    /// The hub.
    pub(crate) hub: HubRecord,
    /// The partition.
    pub(crate) partition: u32,
    /// Where reading starts.
    pub(crate) position: EventPosition,
    /// The reader's place among the partition's readers (epochs).
    pub(crate) membership: Membership,
    /// Whether the client asked for the partition's last event with each event.
    pub(crate) runtime_metric: bool,
}

/// Streams one partition on `sender` until the client detaches, its token expires (the
/// link's address, `entity` and `consumer_group`, is what a token must still cover) or a
/// reader with a higher epoch takes the partition over (`membership`).
pub(crate) async fn stream(
    mut sender: Sender,
    context: Arc<AmqpContext>,
    grants: Arc<Grants>,
    reading: Reading,
) {
    let Reading {
        entity,
        consumer_group,
        hub,
        partition,
        position,
        membership,
        runtime_metric,
    } = reading;
    let host = hub.host_name.to_ascii_lowercase();
    let mut committed = context.store.telemetry_committed();
    let store = context.store.clone();
    let start = {
        let host = host.clone();
        let retained_since = hub.events.retained_since(context.cloud.clock().now());
        tokio::task::spawn_blocking(move || {
            store.partition_start(&host, partition, &position, retained_since)
        })
        .await
    };
    let mut next = match start {
        Ok(Ok(next)) => next,
        Ok(Err(e)) => return fail(sender, &e.to_string()).await,
        Err(e) => return fail(sender, &e.to_string()).await,
    };
    loop {
        // A token expires: Azure closes the links it authorized unless the client put a new
        // one (the clients refresh theirs before that).
        if !grants.cover(
            &hub.name,
            &super::node::link_resource(&entity, &consumer_group, &partition.to_string()),
        ) {
            let error = definitions::Error::new(
                AmqpError::UnauthorizedAccess,
                Some("The token authorizing this link expired.".to_string()),
                None,
            );
            let _ = sender.close_with_error(error).await;
            return;
        }
        if membership.displaced.happened() {
            let _ = sender.close_with_error(displaced_error()).await;
            return;
        }
        committed.borrow_and_update();
        let store = context.store.clone();
        let page = {
            let host = host.clone();
            tokio::task::spawn_blocking(move || {
                let page = store.partition_events(&host, partition, next, PAGE)?;
                // Read after the page, so the last event told is never older than one sent.
                let last = if runtime_metric && !page.is_empty() {
                    store.partition_summary(&host, partition, 0)?.last
                } else {
                    None
                };
                Ok::<_, crate::error::Error>((page, last))
            })
            .await
        };
        let (page, last) = match page {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => return fail(sender, &e.to_string()).await,
            Err(e) => return fail(sender, &e.to_string()).await,
        };
        if page.is_empty() {
            tokio::select! {
                changed = committed.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = membership.displaced.wait() => continue,
                detached = sender.on_detach() => {
                    log::debug!("emulator: AMQP partition reader detached: {detached}");
                    let _ = sender.close().await;
                    return;
                }
            }
            continue;
        }
        for event in page {
            if membership.displaced.happened() {
                break;
            }
            // Events stored before their sender's auth was kept report the identity's now.
            let device = match event.sender {
                Some(_) => None,
                None => context.cloud.hub_device(&hub.host_name, &event.device_id),
            };
            next = event.sequence + 1;
            // Waits for credit; a client that detaches meanwhile ends it with an error.
            let mut message = event_message(&event, device.as_ref());
            if let Some(last) = last {
                message.delivery_annotations = Some(runtime_metric_annotations(
                    last,
                    context.cloud.clock().now_ms(),
                ));
            }
            if let Err(e) = sender.send(message).await {
                log::debug!("emulator: AMQP partition reader ended: {e}");
                return;
            }
        }
    }
}

async fn fail(sender: Sender, why: &str) {
    log::error!("emulator: an AMQP partition reader failed: {why}");
    let error = definitions::Error::new(
        AmqpError::InternalError,
        Some("The partition could not be read.".to_string()),
        None,
    );
    let _ = sender.close_with_error(error).await;
}

/// `iothub-connection-auth-method` as IoT Hub writes it, for a connection that authenticated
/// as `kind` (`sas` or `x509Certificate`).
fn auth_method(kind: &str) -> String {
    let issuer = if kind == "sas" { "iothub" } else { "external" };
    serde_json::json!({
        "scope": "device",
        "type": kind,
        "issuer": issuer,
        "acceptingIpFilterRule": null,
    })
    .to_string()
}

/// What a client that tracks the last enqueued event gets with each event: the partition's last
/// event (sequence number, offset, enqueued time) when the page was read at `now_ms` (the
/// cloud's clock, as the enqueued times are).
fn runtime_metric_annotations(
    (sequence, offset, enqueued): (i64, i64, i64),
    now_ms: i64,
) -> DeliveryAnnotations {
    DeliveryAnnotations::builder()
        .insert(
            Symbol::from("last_enqueued_sequence_number"),
            Value::Long(sequence),
        )
        .insert(
            Symbol::from("last_enqueued_offset"),
            Value::String(offset.to_string()),
        )
        .insert(
            Symbol::from("last_enqueued_time_utc"),
            Value::Timestamp(Timestamp::from_milliseconds(enqueued)),
        )
        .insert(
            Symbol::from("runtime_info_retrieval_time_utc"),
            Value::Timestamp(Timestamp::from_milliseconds(now_ms)),
        )
        .build()
}

/// An event as the Event Hubs clients receive it.
pub(crate) fn event_message(event: &StoredEvent, device: Option<&HubDevice>) -> Message<Data> {
    let at = Value::Timestamp(Timestamp::from_milliseconds(event.enqueued_millis));
    let mut annotations = MessageAnnotations::builder()
        .insert(
            Symbol::from(annotations::SEQUENCE_NUMBER),
            Value::Long(event.sequence),
        )
        .insert(
            Symbol::from(annotations::OFFSET),
            Value::String(event.offset.to_string()),
        )
        .insert(Symbol::from(annotations::ENQUEUED_TIME), at.clone())
        .insert(
            Symbol::from(annotations::DEVICE_ID),
            Value::String(event.device_id.clone()),
        );
    if let Some(module) = &event.module_id {
        annotations = annotations.insert(
            Symbol::from(annotations::MODULE_ID),
            Value::String(module.clone()),
        );
    }
    // The sender's auth as its connection stamped it; for older rows, the identity's now.
    let sender = event
        .sender
        .clone()
        .or_else(|| device.map(HubDevice::sender_auth));
    if let Some(sender) = sender {
        annotations = annotations
            .insert(
                Symbol::from(annotations::AUTH_METHOD),
                Value::String(auth_method(&sender.kind)),
            )
            .insert(
                Symbol::from(annotations::AUTH_GENERATION_ID),
                Value::String(sender.generation_id),
            );
    }
    let annotations = annotations
        .insert(Symbol::from(annotations::HUB_ENQUEUED_TIME), at)
        .insert(
            Symbol::from(annotations::MESSAGE_SOURCE),
            Value::String(TELEMETRY_SOURCE.into()),
        )
        .build();
    let system = |key: &str| {
        event
            .system_properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let mut properties = Properties::builder();
    if let Some(id) = system("mid") {
        properties = properties.message_id(id);
    }
    if let Some(id) = system("cid") {
        properties = properties.correlation_id(id);
    }
    if let Some(content_type) = system("ct") {
        properties = properties.content_type(Symbol::from(content_type));
    }
    if let Some(encoding) = system("ce") {
        properties = properties.content_encoding(Symbol::from(encoding));
    }
    let mut application = ApplicationProperties::builder();
    for (key, value) in &event.properties {
        application = application.insert(key.clone(), SimpleValue::String(value.clone()));
    }
    Message::builder()
        .message_annotations(annotations)
        .properties(properties.build())
        .application_properties(application.build())
        .data(event.body.clone())
        .build()
}
