//! Delivery feedback to a back end: a client's receiver on
//! `amqps://{hub host}/messages/servicebound/feedback` (uamqp's `ReceiveClient` as the az CLI's
//! IoT extension opens it, the Node service SDK's `FeedbackReceiver`, .NET's feedback
//! processor). Each feedback message the hub's queue (`emulator::feedback`) hands out is sent
//! unsettled as IoT Hub writes it: one Data section with the records' JSON array, a GUID
//! `message-id`, the hub's name as `user-id`, `content-type`
//! `application/vnd.microsoft.iothub.feedback.json`, its enqueued time as the
//! `iothub-enqueuedtime` annotation and its earlier deliveries in the header. The client's
//! outcome settles it: accepted completes it (gone), released or modified abandons it
//! (offered again), rejected dead-letters it (gone); a link detaching with it unsettled
//! abandons it. With nothing to send the link waits for new feedback, or for a message
//! another receiver holds to be free again. A token expiring closes the link.
//!
//! Not as on Azure: the delivery tag is fe2o3's 4-byte counter, where IoT Hub uses the
//! message's lock token (a GUID, which .NET's processor reads as one).

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::Sender;
use fe2o3_amqp::types::definitions::{self, AmqpError};
use fe2o3_amqp::types::messaging::{
    Data, Header, Message, MessageAnnotations, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, Symbol, Timestamp, Value};

use super::AmqpContext;
use super::cbs::Grants;
use super::node::node_segments;
use crate::emulator::feedback::{FeedbackMessage, Taken};
use crate::emulator::model::HubRecord;
use crate::protocol::c2d::{FEEDBACK_CONTENT_TYPE, FEEDBACK_NODE, feedback_headers};

/// The longest a waiting link sleeps before it looks again (its token may have expired).
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Offers `hub`'s feedback on one receiver link until it detaches.
pub(crate) async fn offer(
    mut sender: Sender,
    context: Arc<AmqpContext>,
    grants: Arc<Grants>,
    hub: HubRecord,
) {
    let feedback = context.hubs.feedback();
    let mut offered = feedback.offered();
    loop {
        if !grants.cover(&hub.name, &node_segments(FEEDBACK_NODE)) {
            let error = definitions::Error::new(
                AmqpError::UnauthorizedAccess,
                Some("The token authorizing this link expired.".to_string()),
                None,
            );
            let _ = sender.close_with_error(error).await;
            return;
        }
        offered.borrow_and_update();
        let taken = match feedback.take(&hub.host_name) {
            Ok(taken) => taken,
            Err(e) => {
                log::error!("hub {}: cannot read its feedback: {e}", hub.name);
                let error = definitions::Error::new(
                    AmqpError::InternalError,
                    Some("The feedback could not be read.".to_string()),
                    None,
                );
                let _ = sender.close_with_error(error).await;
                return;
            }
        };
        let message = match taken {
            Taken::Message(message) => message,
            Taken::Nothing(free_at) => {
                let wait = free_at.map_or(MAX_WAIT, |at| {
                    let ms = (at - feedback.clock().now_ms()).max(1) as u64;
                    Duration::from_millis(ms).min(MAX_WAIT)
                });
                tokio::select! {
                    changed = offered.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    () = tokio::time::sleep(wait) => {}
                    // The cloud's clock moved: a lock may have run out.
                    () = feedback.clock().moved() => {}
                    detached = sender.on_detach() => {
                        log::debug!("emulator: AMQP feedback receiver detached: {detached}");
                        let _ = sender.close().await;
                        return;
                    }
                }
                continue;
            }
        };
        // Waits for credit, then for the client's outcome; a client that detaches meanwhile
        // ends it with an error.
        let outcome = sender.send(amqp_message(&hub, &message)).await;
        let host = &hub.host_name;
        let token = &message.lock_token;
        let settled = match &outcome {
            Ok(Outcome::Accepted(_)) => feedback.complete(host, token),
            Ok(Outcome::Rejected(_)) => feedback.dead_letter(host, token),
            Ok(_) | Err(_) => feedback.abandon(host, token),
        };
        match settled {
            Ok(true) => {}
            Ok(false) => log::info!(
                "hub {}: feedback message {} was settled after its lock ran out",
                hub.name,
                message.message_id
            ),
            Err(e) => log::error!("hub {}: cannot settle its feedback: {e}", hub.name),
        }
        if let Err(e) = outcome {
            log::debug!("emulator: AMQP feedback receiver ended: {e}");
            return;
        }
    }
}

/// A feedback message as IoT Hub sends it.
fn amqp_message(hub: &HubRecord, message: &FeedbackMessage) -> Message<Data> {
    let enqueued = Value::Timestamp(Timestamp::from_milliseconds(message.enqueued_ms));
    let properties = Properties::builder()
        .message_id(message.message_id.clone())
        .user_id(Binary::from(hub.name.as_bytes().to_vec()))
        .content_type(Symbol::from(FEEDBACK_CONTENT_TYPE))
        .absolute_expiry_time(Timestamp::from_milliseconds(message.expires_ms))
        .creation_time(Timestamp::from_milliseconds(message.enqueued_ms))
        .build();
    let header = Header {
        delivery_count: message.delivery_count.saturating_sub(1),
        ..Header::default()
    };
    Message::builder()
        .header(header)
        .message_annotations(
            MessageAnnotations::builder()
                .insert(Symbol::from(feedback_headers::ENQUEUED_TIME), enqueued)
                .build(),
        )
        .properties(properties)
        .data(message.body())
        .build()
}
