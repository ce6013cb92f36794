//! The AMQP connection dpskit's service clients share: the events reader (`events.rs`) and the
//! cloud-to-device sender and feedback receiver (`c2d.rs`) open it the same way, so TLS, SASL
//! and claims-based security are written once.
//!
//! A connection is TCP, TLS checked against the caller's `Trust` (the emulator's CA, or the
//! system roots for Azure), AMQP with SASL ANONYMOUS (the token, not SASL, authenticates, as
//! every official client does it), one session; then a CBS put-token of a SAS token on the
//! `$cbs` request/response node before any other link. A link error the peer answers with is
//! typed here (`link_error`) by the condition's status in `protocol::event_hubs`.

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::{LinkStateError, ReceiverAttachError, RecvError};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::protocol::event_hubs::{self, keys};
use crate::transport::Trust;
use crate::transport::amqp::{condition_text, message_id_text, simple_text};

/// How long a CBS or management answer may take.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// One AMQP connection with its one session.
pub(crate) struct AmqpConnection {
    connection: ConnectionHandle<()>,
    /// The session every link of this connection is attached on.
    pub(crate) session: SessionHandle<()>,
}

impl AmqpConnection {
    /// Dials `host:port`, TLS checked against `trust`, opens AMQP (SASL ANONYMOUS) and begins
    /// a session.
    pub(crate) async fn open(host: &str, port: u16, trust: &Trust) -> Result<AmqpConnection> {
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| Error::transport_caused(format!("cannot reach {host}:{port}"), e))?;
        let _ = tcp.set_nodelay(true);
        let config = Arc::new(trust.client_config(None, 0)?);
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| Error::config_caused(format!("{host:?} is not a host name"), e))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                Error::transport_caused(
                    format!("TLS with {host}:{port}"),
                    crate::transport::mqtt::tls_cause(e),
                )
            })?;
        let mut connection = Connection::builder()
            .container_id(format!("dpskit-{}", crate::random::guid()))
            .hostname(host)
            .sasl_profile(SaslProfile::Anonymous)
            .open_with_stream(tls)
            .await
            .map_err(|e| Error::transport_caused(format!("AMQP open with {host}:{port}"), e))?;
        let session = Session::begin(&mut connection)
            .await
            .map_err(|e| Error::transport_caused("AMQP session", e))?;
        Ok(AmqpConnection {
            connection,
            session,
        })
    }

    /// A sender to and a receiver from the request/response node `node`.
    pub(crate) async fn node(&mut self, node: &str) -> Result<NodeLinks> {
        let suffix = crate::random::guid();
        let sender = Sender::attach(&mut self.session, format!("{node}-sender-{suffix}"), node)
            .await
            .map_err(|e| Error::transport_caused(format!("attaching to {node}"), e))?;
        let receiver = Receiver::builder()
            .name(format!("{node}-receiver-{suffix}"))
            .source(node)
            .target(format!("{node}-client-{suffix}"))
            .attach(&mut self.session)
            .await
            .map_err(|e| Error::transport_caused(format!("attaching to {node}"), e))?;
        Ok(NodeLinks {
            sender,
            receiver,
            requests: 0,
        })
    }

    /// Puts a SAS `token` for `audience` to CBS; a refused token is the service's error
    /// (401: an authentication error), naming `service` ("the event hub", "the IoT hub").
    pub(crate) async fn put_token(
        &mut self,
        audience: &str,
        token: &str,
        service: &str,
    ) -> Result<()> {
        let mut links = self.node(event_hubs::CBS_NODE).await?;
        let properties = ApplicationProperties::builder()
            .insert(
                keys::OPERATION,
                SimpleValue::String(event_hubs::PUT_TOKEN.into()),
            )
            .insert(
                keys::TYPE,
                SimpleValue::String(event_hubs::SAS_TOKEN_TYPE.into()),
            )
            .insert(keys::NAME, SimpleValue::String(audience.into()))
            .build();
        let answer = links
            .request(
                properties,
                Body::Value(AmqpValue(Value::String(token.to_string()))),
            )
            .await;
        links.close().await;
        let (status, description, _) = answer?;
        if status == 200 || status == 202 {
            return Ok(());
        }
        Err(Error::service(
            status,
            0,
            format!("{service} refused the token: {status} {description}"),
        ))
    }

    /// Ends the session and closes the connection.
    pub(crate) async fn close(mut self) {
        let _ = self.session.end().await;
        let _ = self.connection.close().await;
    }
}

/// The two links of a request/response node (`$cbs`, `$management`), its answers matched to
/// its requests by correlation id.
pub(crate) struct NodeLinks {
    sender: Sender,
    receiver: Receiver,
    requests: u64,
}

impl NodeLinks {
    /// Sends one request and reads its answer: status, description, body.
    pub(crate) async fn request(
        &mut self,
        properties: ApplicationProperties,
        body: Body<Value>,
    ) -> Result<(u16, String, Value)> {
        self.requests += 1;
        let id = format!("dpskit-{}", self.requests);
        let message = Message::builder()
            .properties(
                Properties::builder()
                    .message_id(MessageId::String(id.clone()))
                    .build(),
            )
            .application_properties(properties)
            .body(body)
            .build();
        let (sender, receiver) = (&mut self.sender, &mut self.receiver);
        let exchange = async {
            sender
                .send(message)
                .await
                .map_err(|e| Error::transport_caused("sending a request", e))?;
            loop {
                let delivery = receiver
                    .recv::<Body<Value>>()
                    .await
                    .map_err(|e| Error::transport_caused("reading an answer", e))?;
                let _ = receiver.accept(&delivery).await;
                let answer = delivery.into_message();
                let correlates = answer
                    .properties
                    .as_ref()
                    .and_then(|p| p.correlation_id.as_ref())
                    .is_some_and(|c| message_id_text(c) == id);
                if !correlates {
                    // An answer to an earlier request that timed out: not this one's.
                    continue;
                }
                let property = |key: &str| {
                    answer
                        .application_properties
                        .as_ref()
                        .and_then(|p| p.0.get(key))
                        .cloned()
                };
                let status = property(keys::STATUS_CODE)
                    .and_then(|v| simple_integer(&v))
                    .and_then(|s| u16::try_from(s).ok())
                    .ok_or_else(|| Error::protocol("an answer without a status-code"))?;
                let description = property(keys::STATUS_DESCRIPTION)
                    .map(|v| simple_text(&v))
                    .unwrap_or_default();
                let body = match answer.body {
                    Body::Value(AmqpValue(value)) => value,
                    _ => Value::Null,
                };
                return Ok((status, description, body));
            }
        };
        tokio::time::timeout(ANSWER_TIMEOUT, exchange)
            .await
            .map_err(|_| Error::transport("no answer within 30 s"))?
    }

    /// Detaches both links.
    pub(crate) async fn close(self) {
        let _ = self.sender.close().await;
        let _ = self.receiver.close().await;
    }
}

/// A link error the peer closed or refused a link with, as dpskit's error: a condition that
/// judges the request (`protocol::event_hubs::link_error_status`) is the service's refusal,
/// typed by its status (unauthorized, not found, displaced...); a service timeout is a
/// timeout; anything else (the link or connection broke) a transport failure.
pub(crate) fn link_error(context: &str, error: &definitions::Error) -> Error {
    let condition = condition_text(&error.condition);
    let description = error.description.as_deref().unwrap_or("no description");
    let message = format!("{context}: {condition}: {description}");
    match event_hubs::link_error_status(&condition) {
        Some(408) => Error::timeout(message),
        Some(status) => Error::service(status, 0, message),
        None => Error::transport(message),
    }
}

/// A failed attach as dpskit's error: the peer's refusal typed ([`link_error`]), anything
/// else a transport failure keeping its cause.
pub(crate) fn attach_error(context: &str, error: ReceiverAttachError) -> Error {
    match error {
        ReceiverAttachError::RemoteClosedWithError(refusal) => link_error(context, &refusal),
        other => Error::transport_caused(context.to_string(), other),
    }
}

/// A failed receive as dpskit's error: a link the peer closed with an error typed
/// ([`link_error`]), anything else a transport failure keeping its cause.
pub(crate) fn receive_error(context: &str, error: RecvError) -> Error {
    match error {
        RecvError::LinkStateError(
            LinkStateError::RemoteClosedWithError(refusal)
            | LinkStateError::RemoteDetachedWithError(refusal),
        ) => link_error(context, &refusal),
        other => Error::transport_caused(context.to_string(), other),
    }
}

/// An integer application property (a status code), whatever width the peer wrote it in.
pub(crate) fn simple_integer(value: &SimpleValue) -> Option<i64> {
    match value {
        SimpleValue::Int(n) => Some(i64::from(*n)),
        SimpleValue::Long(n) => Some(*n),
        SimpleValue::Uint(n) => Some(i64::from(*n)),
        SimpleValue::Ulong(n) => i64::try_from(*n).ok(),
        SimpleValue::Short(n) => Some(i64::from(*n)),
        _ => None,
    }
}
