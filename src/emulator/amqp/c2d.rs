//! Cloud-to-device messages from the service SDKs: a client's sender on
//! `amqps://{hub host}/messages/devicebound`, each message addressed by its `to`
//! (`/devices/{id}/messages/devicebound`). A message is queued for its device
//! (`HubEngine::send_c2d_as`, the queue the MQTT sessions deliver from) under its own message id, with its correlation id, content type and encoding as the
//! device's system properties, its application properties as they came, the feedback it asks
//! for (`iothub-ack`: one of the four names, else the message is rejected with
//! `amqp:invalid-field` and never reaches the device) and its expiry (`absolute-expiry-time`,
//! else the header's `ttl`, else the hub's default; capped at the longest the hub allows);
//! then it is accepted (settled, so the sender completes). A message the hub refuses (unknown
//! device, too large, a full queue) is rejected with the reason; one past the hub tier's C2D
//! throttle, with IoT Hub's throttling condition. The outcomes are answered on the feedback
//! node (`feedback.rs`).

use std::sync::Arc;

use fe2o3_amqp::Receiver;
use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition};
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::{Symbol, Value};

use super::AmqpContext;
use super::cbs::Grants;
use super::node::NodeMessage;
use crate::emulator::hub::C2dOptions;
use crate::emulator::model::HubRecord;
use crate::limits::HubOperation;
use crate::protocol::c2d::{ACK_PROPERTY, DeliveryAck, THROTTLED_CONDITION};

/// Receives the C2D messages of one sender link until it detaches.
pub(crate) async fn receive(
    mut receiver: Receiver,
    context: Arc<AmqpContext>,
    grants: Arc<Grants>,
    hub: HubRecord,
) {
    loop {
        let delivery = match receiver.recv::<Body<Value>>().await {
            Ok(delivery) => delivery,
            Err(e) => {
                log::debug!("emulator: AMQP C2D link ended: {e}");
                return;
            }
        };
        // A token expires: its link reaches nothing more.
        let outcome = if !grants.cover(
            &hub.name,
            &super::node::node_segments(crate::protocol::c2d::DEVICEBOUND_NODE),
        ) {
            Err((
                AmqpError::UnauthorizedAccess.into(),
                "The token authorizing this link expired.".to_string(),
            ))
        } else if let Err(refused) = context
            .hubs
            .admit(&hub.host_name, HubOperation::C2dSend, 1.0)
        {
            // The condition IoT Hub's AMQP endpoint throttles with (the service SDKs raise
            // their throttling error on it), with the 429001 text the REST API answers.
            Err((
                ErrorCondition::Custom(Symbol::from(THROTTLED_CONDITION)),
                refused.to_string(),
            ))
        } else {
            enqueue(&context, &hub, delivery.message())
        };
        let disposed = match outcome {
            Ok(()) => receiver.accept(&delivery).await,
            Err((condition, why)) => {
                log::info!("emulator: AMQP C2D message refused: {why}");
                let error = definitions::Error::new(condition, Some(why), None);
                receiver.reject(&delivery, error).await
            }
        };
        if disposed.is_err() {
            return;
        }
    }
}

type Refusal = (ErrorCondition, String);

fn enqueue(context: &AmqpContext, hub: &HubRecord, message: &NodeMessage) -> Result<(), Refusal> {
    let invalid = |why: &str| (AmqpError::InvalidField.into(), why.to_string());
    let properties = message.properties.as_ref();
    let to = properties
        .and_then(|p| p.to.as_deref())
        .ok_or_else(|| invalid("The message has no 'to'."))?;
    let device_id = crate::protocol::hub::c2d_device(to)
        .ok_or_else(|| invalid("'to' must be /devices/{deviceId}/messages/devicebound."))?;
    let body = crate::transport::amqp::body_bytes(&message.body).map_err(|why| invalid(&why))?;
    let mut bag = Vec::new();
    if let Some(p) = properties {
        if let Some(id) = &p.correlation_id {
            bag.push((
                "$.cid".to_string(),
                crate::transport::amqp::message_id_text(id),
            ));
        }
        if let Some(content_type) = &p.content_type {
            bag.push(("$.ct".to_string(), content_type.0.clone()));
        }
        if let Some(encoding) = &p.content_encoding {
            bag.push(("$.ce".to_string(), encoding.0.clone()));
        }
    }
    for (key, value) in message
        .application_properties
        .iter()
        .flat_map(|a| a.0.iter())
    {
        let value = crate::transport::amqp::simple_text(value);
        if key == ACK_PROPERTY {
            // Refused here with the AMQP condition; the engine reads it again from the bag.
            DeliveryAck::parse(&value).map_err(|why| invalid(&why))?;
        }
        bag.push((key.clone(), value));
    }
    let options = C2dOptions {
        message_id: properties
            .and_then(|p| p.message_id.as_ref())
            .map(crate::transport::amqp::message_id_text),
        absolute_expiry_ms: properties
            .and_then(|p| p.absolute_expiry_time.as_ref())
            .map(|t| t.milliseconds()),
        ttl_ms: message.header.as_ref().and_then(|h| h.ttl).map(i64::from),
    };
    context
        .hubs
        .send_c2d_as(&hub.host_name, device_id, options, &body, bag)
        .map(|_| ())
        .map_err(|e| (AmqpError::NotAllowed.into(), e.to_string()))
}
