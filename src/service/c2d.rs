//! A back end's cloud-to-device messages over AMQP, as Azure takes them and the official
//! service SDKs send them: a sender on `amqps://{hub host}:5671/messages/devicebound`
//! (authorized by a CBS put-token of the service policy's SAS for the hub's host), one message
//! per device addressed by its `to`, settled by the hub (accepted, or rejected with the reason);
//! and a receiver of delivery feedback on `/messages/servicebound/feedback`. The same code
//! talks to Azure and the emulator; only the port and the trust differ.
//!
//! What goes on a message is what `azure-iot-hub`'s `send_c2d_message` and Node's
//! `azure-iot-service` `Client.send` put there: a message id (the caller's or a fresh GUID),
//! `to` = `/devices/{id}/messages/devicebound`, the correlation id, content type and encoding
//! and absolute expiry time as AMQP properties, the caller's properties and `iothub-ack` as
//! application properties, the body as one data section. The vocabulary (nodes, `iothub-ack`,
//! the feedback record, the refusals' statuses) is `protocol::c2d`, shared with the emulator.

use std::time::Duration;

use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::link::{SendError, receiver::CreditMode};
use fe2o3_amqp::types::definitions::{self, AmqpError};
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageId, Outcome, Properties, Source,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Timestamp, Value};
use fe2o3_amqp::{Receiver, Sender};

use super::amqp::{ANSWER_TIMEOUT, AmqpConnection};
use super::dps::SasCredential;
use super::events::AMQPS_PORT;
use crate::error::{Error, Result};
use crate::protocol::c2d::{
    ACK_PROPERTY, DEVICEBOUND_NODE, DeliveryAck, FEEDBACK_NODE, FeedbackRecord, parse_feedback,
    send_refusal,
};
use crate::transport::Trust;
use crate::transport::amqp::body_bytes;

/// A cloud-to-device message as a back end writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct C2dMessage {
    /// The device it is for.
    pub device_id: String,
    /// The body, as the device will read it.
    pub body: Vec<u8>,
    /// Application properties (the device sees them in its property bag).
    pub properties: Vec<(String, String)>,
    /// The feedback asked for: `none`, `positive`, `negative` or `full` (`iothub-ack`).
    pub ack: Option<String>,
    /// How long the hub keeps it for the device (the hub's default, an hour, when `None`;
    /// the hub caps it at two days).
    pub expires_in: Option<Duration>,
    /// Its id (a fresh GUID when `None`); feedback names it.
    pub message_id: Option<String>,
    /// A correlation id for the device.
    pub correlation_id: Option<String>,
    /// The body's content type (`application/json`...).
    pub content_type: Option<String>,
    /// The body's content encoding (`utf-8`...).
    pub content_encoding: Option<String>,
}

/// The AMQP message a [`C2dMessage`] is sent as, with its message id; refuses (`Config`) an
/// `iothub-ack` that is not one of the four values, given twice, or a non-positive lifetime.
pub(crate) fn amqp_message(message: &C2dMessage, now_ms: i64) -> Result<(String, Message<Data>)> {
    let message_id = message
        .message_id
        .clone()
        .unwrap_or_else(crate::random::guid);
    if message_id.is_empty() {
        return Err(Error::config("a message id cannot be empty"));
    }
    let mut ack = match &message.ack {
        Some(ack) => Some(DeliveryAck::parse(ack).map_err(Error::config)?),
        None => None,
    };
    let mut application = ApplicationProperties::builder();
    for (key, value) in &message.properties {
        if key == ACK_PROPERTY {
            // The official Python SDK takes the ack as a property: read the same way.
            if ack.is_some() {
                return Err(Error::config(format!(
                    "'{ACK_PROPERTY}' is given both as ack and as a property"
                )));
            }
            ack = Some(DeliveryAck::parse(value).map_err(Error::config)?);
            continue;
        }
        application = application.insert(key.clone(), SimpleValue::String(value.clone()));
    }
    if let Some(ack) = ack {
        application = application.insert(ACK_PROPERTY, SimpleValue::String(ack.as_str().into()));
    }
    let mut properties = Properties::builder()
        .message_id(MessageId::String(message_id.clone()))
        .to(crate::protocol::hub::c2d_address(&message.device_id));
    if let Some(id) = &message.correlation_id {
        properties = properties.correlation_id(MessageId::String(id.clone()));
    }
    if let Some(content_type) = &message.content_type {
        properties = properties.content_type(Symbol::from(content_type.as_str()));
    }
    if let Some(encoding) = &message.content_encoding {
        properties = properties.content_encoding(Symbol::from(encoding.as_str()));
    }
    if let Some(lifetime) = message.expires_in {
        let ms = i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX);
        if ms <= 0 {
            return Err(Error::config("a message's lifetime must be positive"));
        }
        properties = properties
            .absolute_expiry_time(Timestamp::from_milliseconds(now_ms.saturating_add(ms)));
    }
    let amqp = Message::builder()
        .properties(properties.build())
        .application_properties(application.build())
        .data(Binary::from(message.body.clone()))
        .build();
    Ok((message_id, amqp))
}

/// The hub an AMQP client reaches: its host to dial, its port, the service policy's SAS.
struct HubEndpoint {
    credential: SasCredential,
    host: String,
    port: u16,
    trust: Trust,
}

impl HubEndpoint {
    /// From a service connection string (`HostName` may name the HTTPS port: AMQP has its
    /// own, `port` or 5671).
    fn new(connection_string: &str, port: Option<u16>, trust: &Trust) -> Result<HubEndpoint> {
        let credential = SasCredential::from_connection_string(connection_string, "IoT hub")?;
        let host = match credential.host().rsplit_once(':') {
            Some((host, _)) => host.to_string(),
            None => credential.host().to_string(),
        };
        Ok(HubEndpoint {
            credential,
            host,
            port: port.unwrap_or(AMQPS_PORT),
            trust: trust.clone(),
        })
    }

    /// A connection authorized for the hub; returns the token it put.
    async fn connect(&self) -> Result<(AmqpConnection, String)> {
        let mut amqp = AmqpConnection::open(&self.host, self.port, &self.trust).await?;
        let token = self.put_token(&mut amqp).await?;
        Ok((amqp, token))
    }

    /// Puts the credential's current token (the SDKs' audience: the token's `sr`, the host).
    async fn put_token(&self, amqp: &mut AmqpConnection) -> Result<String> {
        let token = self.credential.token()?;
        amqp.put_token(self.credential.host(), &token, "the IoT hub")
            .await?;
        Ok(token)
    }

    /// Puts a fresh token when the credential has renewed its own (a tenth of its life left),
    /// so a long-lived connection's grant never lapses.
    async fn renew(&self, amqp: &mut AmqpConnection, put: &mut String) -> Result<()> {
        if self.credential.token()? != *put {
            *put = self.put_token(amqp).await?;
        }
        Ok(())
    }
}

/// The open sender of a [`C2dClient`].
struct OpenSender {
    amqp: AmqpConnection,
    sender: Sender,
    token: String,
}

/// Sends cloud-to-device messages to one hub over one AMQP connection, opened on the first
/// send and opened again after a failure.
pub struct C2dClient {
    endpoint: HubEndpoint,
    open: tokio::sync::Mutex<Option<OpenSender>>,
}

impl std::fmt::Debug for C2dClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("C2dClient")
            .field("host", &self.endpoint.host)
            .field("port", &self.endpoint.port)
            .finish_non_exhaustive()
    }
}

impl C2dClient {
    /// A client of the hub a service connection string names (a policy with
    /// `ServiceConnect`), on its AMQP `port` (5671 when `None`), TLS checked against `trust`.
    /// Connects on the first send.
    pub fn from_connection_string(
        connection_string: &str,
        port: Option<u16>,
        trust: &Trust,
    ) -> Result<C2dClient> {
        Ok(C2dClient {
            endpoint: HubEndpoint::new(connection_string, port, trust)?,
            open: tokio::sync::Mutex::new(None),
        })
    }

    /// Sends a message and waits for the hub to settle it; returns its message id. A refusal
    /// is the hub's error (an unknown device: 404; a full queue: 403004; too large: 413).
    pub async fn send(&self, message: &C2dMessage) -> Result<String> {
        let (message_id, amqp) = amqp_message(message, crate::clock::now_ms())?;
        let mut open = self.open.lock().await;
        let reused = open.is_some();
        match self.send_on(&mut open, amqp.clone()).await {
            // A connection idle long enough for the hub to close it fails before anything is
            // sent: once on a fresh one. Nothing that may have reached the hub is sent again.
            Err(Unsent(e)) if reused => {
                log::debug!("C2D: the AMQP connection was closed ({e}); opening another");
                self.send_on(&mut open, amqp)
                    .await
                    .map_err(SendFailure::into_error)?;
            }
            other => other.map_err(SendFailure::into_error)?,
        }
        Ok(message_id)
    }

    async fn send_on(
        &self,
        open: &mut Option<OpenSender>,
        message: Message<Data>,
    ) -> std::result::Result<(), SendFailure> {
        let link = match open {
            Some(link) => link,
            None => open.insert(self.open_sender().await.map_err(Sent)?),
        };
        if let Err(e) = self.endpoint.renew(&mut link.amqp, &mut link.token).await {
            close(open.take()).await;
            return Err(Unsent(e));
        }
        let outcome = tokio::time::timeout(ANSWER_TIMEOUT, link.sender.send(message)).await;
        let failed = match outcome {
            Ok(Ok(outcome)) => return settled(outcome).map_err(Sent),
            Ok(Err(SendError::LinkStateError(e))) => Unsent(Error::transport_caused(
                "sending a cloud-to-device message",
                SendError::LinkStateError(e),
            )),
            Ok(Err(e)) => Sent(Error::transport_caused(
                "sending a cloud-to-device message",
                e,
            )),
            Err(_) => Sent(Error::timeout(
                "the IoT hub did not settle a cloud-to-device message within 30 s",
            )),
        };
        close(open.take()).await;
        Err(failed)
    }

    async fn open_sender(&self) -> Result<OpenSender> {
        let (mut amqp, token) = self.endpoint.connect().await?;
        let sender = Sender::attach(
            &mut amqp.session,
            format!("dpskit-c2d-{}", crate::random::guid()),
            DEVICEBOUND_NODE,
        )
        .await
        .map_err(|e| Error::transport_caused(format!("attaching to {DEVICEBOUND_NODE}"), e))?;
        Ok(OpenSender {
            amqp,
            sender,
            token,
        })
    }

    /// Closes the connection (the next send opens another).
    pub async fn close(&self) {
        close(self.open.lock().await.take()).await;
    }
}

/// A send that failed: `Unsent` when nothing reached the hub (safe to send again), `Sent`
/// when it may have.
enum SendFailure {
    Unsent(Error),
    Sent(Error),
}
use SendFailure::{Sent, Unsent};

impl SendFailure {
    fn into_error(self) -> Error {
        match self {
            Unsent(e) | Sent(e) => e,
        }
    }
}

async fn close(open: Option<OpenSender>) {
    if let Some(open) = open {
        let _ = open.sender.close().await;
        open.amqp.close().await;
    }
}

/// What the hub's settlement of a send means: accepted, or its refusal as the hub service
/// API's error (`protocol::c2d::send_refusal`).
fn settled(outcome: Outcome) -> Result<()> {
    let error = match outcome {
        Outcome::Accepted(_) => return Ok(()),
        Outcome::Rejected(rejected) => rejected.error,
        Outcome::Released(_) | Outcome::Modified(_) => {
            return Err(Error::service(
                503,
                503_000,
                "the IoT hub released the cloud-to-device message without taking it",
            ));
        }
        #[allow(unreachable_patterns)]
        _ => return Err(Error::protocol("an unexpected settlement of a send")),
    };
    let (condition, description) = match &error {
        Some(error) => (
            condition_text(&error.condition),
            error.description.clone().unwrap_or_default(),
        ),
        None => (String::new(), String::new()),
    };
    let (status, code) = send_refusal(&condition, &description);
    let message = if description.is_empty() {
        format!("the IoT hub rejected the message ({condition})")
    } else {
        format!("the IoT hub rejected the message: {description}")
    };
    Err(Error::Service(Box::new(crate::error::ServiceFailure {
        status,
        error_code: code,
        message,
        tracking_id: None,
        retry_after: None,
    })))
}

/// An AMQP error condition as its symbol (`amqp:not-found`...).
fn condition_text(condition: &definitions::ErrorCondition) -> String {
    use definitions::ErrorCondition as Condition;
    match condition {
        Condition::AmqpError(e) => Symbol::from(e).0,
        Condition::ConnectionError(e) => Symbol::from(e).0,
        Condition::SessionError(e) => Symbol::from(e).0,
        Condition::LinkError(e) => Symbol::from(e).0,
        Condition::Custom(symbol) => symbol.0.clone(),
        #[allow(unreachable_patterns)]
        _ => String::new(),
    }
}

/// One outcome IoT Hub reported for a cloud-to-device message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct C2dFeedback {
    /// The id of the message it is about.
    pub original_message_id: String,
    /// The device the message was for.
    pub device_id: String,
    /// The outcome: `Success`, `Expired`, `DeliveryCountExceeded`, `Rejected`, `Purged`.
    pub status: String,
    /// The outcome in words.
    pub description: String,
    /// When it happened, Unix milliseconds.
    pub enqueued_time_ms: i64,
    /// The generation of the device's identity.
    pub device_generation_id: String,
}

impl C2dFeedback {
    fn from_record(record: FeedbackRecord) -> std::result::Result<C2dFeedback, String> {
        let enqueued_time_ms = record.enqueued_unix_ms()?;
        let status = record.status_code.as_str().to_string();
        Ok(C2dFeedback {
            original_message_id: record.original_message_id,
            device_id: record.device_id,
            status,
            description: record.description,
            enqueued_time_ms,
            device_generation_id: record.device_generation_id,
        })
    }
}

/// Reads a feedback message's body into its records; `Err` says why it does not read.
pub(crate) fn feedback_of(body: &[u8]) -> std::result::Result<Vec<C2dFeedback>, String> {
    parse_feedback(body)?
        .into_iter()
        .map(C2dFeedback::from_record)
        .collect()
}

/// A receiver of a hub's delivery feedback (`/messages/servicebound/feedback`). Each feedback
/// message is accepted once its records are read (the hub then forgets it); one that does not
/// read is rejected and reported as an error, never skipped.
pub struct FeedbackReceiver {
    endpoint: HubEndpoint,
    amqp: AmqpConnection,
    receiver: Receiver,
    token: String,
    /// Whether the hub may send the next message (one credit at a time: a message the hub
    /// sends ahead stays locked to this receiver after it closes, hidden from the next one).
    credit: bool,
}

impl FeedbackReceiver {
    /// Connects to the hub a service connection string names, on its AMQP `port` (5671 when
    /// `None`), TLS checked against `trust`, and attaches to its feedback node.
    pub async fn open(
        connection_string: &str,
        port: Option<u16>,
        trust: &Trust,
    ) -> Result<FeedbackReceiver> {
        let endpoint = HubEndpoint::new(connection_string, port, trust)?;
        let (mut amqp, token) = endpoint.connect().await?;
        let receiver = Receiver::builder()
            .name(format!("dpskit-feedback-{}", crate::random::guid()))
            .source(Source::builder().address(FEEDBACK_NODE).build())
            .target(format!("dpskit-feedback-{}", crate::random::guid()))
            .credit_mode(CreditMode::Manual)
            .attach(&mut amqp.session)
            .await
            .map_err(|e| Error::transport_caused(format!("attaching to {FEEDBACK_NODE}"), e))?;
        Ok(FeedbackReceiver {
            endpoint,
            amqp,
            receiver,
            token,
            credit: false,
        })
    }

    /// The records of the next feedback message (waits for one; renews the token while it
    /// waits).
    pub async fn next(&mut self) -> Result<Vec<C2dFeedback>> {
        if !self.credit {
            self.receiver
                .set_credit(1)
                .await
                .map_err(|e| Error::transport_caused("asking for delivery feedback", e))?;
            self.credit = true;
        }
        let delivery = loop {
            // Wakes to put a fresh token before the one put lapses (recv is cancel-safe).
            match tokio::time::timeout(RENEW_CHECK, self.receiver.recv::<Body<Value>>()).await {
                Ok(delivery) => {
                    break delivery
                        .map_err(|e| Error::transport_caused("reading delivery feedback", e))?;
                }
                Err(_) => self.endpoint.renew(&mut self.amqp, &mut self.token).await?,
            }
        };
        self.credit = false;
        let read = body_bytes(delivery.body()).and_then(|body| feedback_of(&body));
        match read {
            Ok(records) => {
                self.receiver
                    .accept(&delivery)
                    .await
                    .map_err(|e| Error::transport_caused("accepting delivery feedback", e))?;
                Ok(records)
            }
            Err(why) => {
                let info = DeliveryInfo::from(delivery);
                let error =
                    definitions::Error::new(AmqpError::DecodeError, Some(why.clone()), None);
                let _ = self.receiver.reject(info, error).await;
                Err(Error::protocol(format!(
                    "the IoT hub sent a feedback message that does not read: {why}"
                )))
            }
        }
    }

    /// Reads feedback until a record about `message_id` arrives, for at most `timeout`; returns
    /// it with the other records read meanwhile (accepted too: the hub will not send them
    /// again). No record in time is a `Timeout` error.
    pub async fn wait_for(
        &mut self,
        message_id: &str,
        timeout: Duration,
    ) -> Result<(C2dFeedback, Vec<C2dFeedback>)> {
        let mut others = Vec::new();
        let found = tokio::time::timeout(timeout, async {
            loop {
                // The whole message is accepted: every record in it is kept, not only the one
                // waited for.
                let mut found = None;
                for record in self.next().await? {
                    if found.is_none() && record.original_message_id == message_id {
                        found = Some(record);
                    } else {
                        others.push(record);
                    }
                }
                if let Some(found) = found {
                    return Ok::<_, Error>(found);
                }
            }
        })
        .await
        .map_err(|_| {
            Error::timeout(format!(
                "no feedback about message {message_id} within {:.1} s",
                timeout.as_secs_f64()
            ))
        })??;
        Ok((found, others))
    }

    /// Detaches and closes the connection.
    pub async fn close(self) {
        let _ = self.receiver.close().await;
        self.amqp.close().await;
    }
}

/// How often a waiting feedback receiver checks its token (a tenth of its hour, as the
/// credential renews it).
const RENEW_CHECK: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::amqp::message_id_text;

    fn sample() -> C2dMessage {
        C2dMessage {
            device_id: "dev-1".into(),
            body: b"{\"on\":true}".to_vec(),
            properties: vec![("colour".into(), "red".into())],
            ack: Some("full".into()),
            expires_in: Some(Duration::from_secs(60)),
            message_id: Some("m-1".into()),
            correlation_id: Some("c-1".into()),
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
        }
    }

    /// Every field lands where the official senders put it.
    #[test]
    fn a_message_carries_what_the_service_sdks_send() {
        let (id, message) = amqp_message(&sample(), 1_000).unwrap();
        assert_eq!(id, "m-1");
        let properties = message.properties.unwrap();
        assert_eq!(
            properties.message_id.as_ref().map(message_id_text),
            Some("m-1".into())
        );
        assert_eq!(
            properties.to.as_deref(),
            Some("/devices/dev-1/messages/devicebound")
        );
        assert_eq!(
            properties.correlation_id.as_ref().map(message_id_text),
            Some("c-1".into())
        );
        assert_eq!(
            properties.content_type.map(|s| s.0),
            Some("application/json".into())
        );
        assert_eq!(
            properties.content_encoding.map(|s| s.0),
            Some("utf-8".into())
        );
        assert_eq!(
            properties.absolute_expiry_time.map(|t| t.milliseconds()),
            Some(61_000)
        );
        let application = message.application_properties.unwrap().0;
        assert_eq!(
            application.get("colour"),
            Some(&SimpleValue::String("red".into()))
        );
        assert_eq!(
            application.get(ACK_PROPERTY),
            Some(&SimpleValue::String("full".into()))
        );
        assert_eq!(message.body.0.as_slice(), b"{\"on\":true}");
    }

    #[test]
    fn defaults_are_a_fresh_id_and_nothing_else() {
        let message = C2dMessage {
            device_id: "d".into(),
            ..C2dMessage::default()
        };
        let (first, amqp) = amqp_message(&message, 0).unwrap();
        let (second, _) = amqp_message(&message, 0).unwrap();
        assert_ne!(first, second, "a fresh GUID each time");
        assert_eq!(first.len(), 36);
        let properties = amqp.properties.unwrap();
        assert!(properties.absolute_expiry_time.is_none());
        assert!(properties.correlation_id.is_none() && properties.content_type.is_none());
        let application = amqp.application_properties.map(|a| a.0).unwrap_or_default();
        assert!(application.get(ACK_PROPERTY).is_none());
    }

    #[test]
    fn acks_and_lifetimes_are_checked_before_sending() {
        let mut message = sample();
        message.ack = Some("always".into());
        assert!(matches!(amqp_message(&message, 0), Err(Error::Config(_))));
        // Given as a property (the Python SDK's way), it is read and checked the same.
        message.ack = None;
        message
            .properties
            .push((ACK_PROPERTY.into(), "negative".into()));
        let (_, amqp) = amqp_message(&message, 0).unwrap();
        assert_eq!(
            amqp.application_properties.unwrap().0.get(ACK_PROPERTY),
            Some(&SimpleValue::String("negative".into()))
        );
        message.ack = Some("full".into());
        assert!(
            matches!(amqp_message(&message, 0), Err(Error::Config(_))),
            "twice"
        );
        let mut message = sample();
        message.expires_in = Some(Duration::ZERO);
        assert!(matches!(amqp_message(&message, 0), Err(Error::Config(_))));
        message.expires_in = None;
        message.message_id = Some(String::new());
        assert!(matches!(amqp_message(&message, 0), Err(Error::Config(_))));
    }

    #[test]
    fn refusals_become_the_service_apis_errors() {
        use fe2o3_amqp::types::messaging::{Accepted, Rejected, Released};
        assert!(settled(Outcome::Accepted(Accepted {})).is_ok());
        let rejected = |condition: AmqpError, why: &str| {
            settled(Outcome::Rejected(Rejected {
                error: Some(definitions::Error::new(condition, Some(why.into()), None)),
            }))
            .unwrap_err()
        };
        let missing = rejected(AmqpError::NotFound, "Device 'x' not found");
        assert_eq!(missing.error_code(), Some(404_001));
        assert!(missing.to_string().contains("Device 'x' not found"));
        let full = rejected(
            AmqpError::NotAllowed,
            "403 (403004): Device 'x' already has 50 messages waiting.",
        );
        assert_eq!(full.error_code(), Some(403_004));
        let Error::Service(failure) = full else {
            panic!("not a service error")
        };
        assert_eq!(failure.kind(), crate::error::ServiceErrorKind::Other);
        assert!(matches!(
            settled(Outcome::Released(Released {})),
            Err(Error::Service(_))
        ));
    }

    #[test]
    fn feedback_bodies_read_into_records_or_say_why_not() {
        let body = br#"[{"originalMessageId":"m-1","enqueuedTimeUtc":"2026-01-02T03:04:05.6789012Z","statusCode":"Success","description":"Success","deviceId":"dev-1","deviceGenerationId":"6389"}]"#;
        let records = feedback_of(body).unwrap();
        assert_eq!(
            records,
            vec![C2dFeedback {
                original_message_id: "m-1".into(),
                device_id: "dev-1".into(),
                status: "Success".into(),
                description: "Success".into(),
                enqueued_time_ms: 1_767_323_045_678,
                device_generation_id: "6389".into(),
            }]
        );
        assert!(feedback_of(b"not json").is_err());
        assert!(feedback_of(br#"[{"originalMessageId":"m"}]"#).is_err());
    }
}
