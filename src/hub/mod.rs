//! The device side of IoT Hub over MQTT: connect with an X.509 chain or a SAS token and send
//! telemetry at QoS 1, returning once the hub has acknowledged it. Written to the documented
//! protocol (username, topics, property bags as the official SDKs send them) so that the same
//! code talks to Azure, to the emulator, or to any MQTT broker used as a stand-in.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, Broker, ConnectReturnCode, ConnectionError, Event, MqttOptions, NetworkOptions,
    Outgoing, Packet, PublishOptions, TlsConfiguration, Transport,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result, ServiceFailure};
use crate::provisioning::{DeviceAuth, Trust};
use crate::sas::url_encode;

/// The api-version the IoT Hub MQTT documentation uses.
const API_VERSION: &str = "2021-04-12";
/// SAS tokens for the hub are valid this long (the Python SDK's default).
const SAS_TTL_SECONDS: i64 = 3600;

/// Where and how one device connects to its hub.
#[derive(Debug, Clone)]
pub struct HubConnectOptions {
    /// The hub's host name (`assignedHub`): dialled, checked against the server certificate,
    /// and written into the username and the SAS audience.
    pub host: String,
    /// MQTT port (8883 on Azure).
    pub port: u16,
    /// Device id in that hub.
    pub device_id: String,
    /// X.509 chain or device key.
    pub auth: DeviceAuth,
    /// Seconds between keep-alive pings (the Python SDK uses 60).
    pub keep_alive: u16,
    /// `false` asks the hub to keep subscriptions and queued C2D messages across connections,
    /// as every official SDK does.
    pub clean_session: bool,
    /// QoS 1 messages sent before the first PUBACK must come back.
    pub max_in_flight: u16,
    /// Give up on TLS + CONNACK after this long.
    pub connect_timeout: Duration,
}

impl HubConnectOptions {
    /// Options with the official SDKs' defaults for `device_id` at `host:port`.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        device_id: impl Into<String>,
        auth: DeviceAuth,
    ) -> Self {
        HubConnectOptions {
            host: host.into(),
            port,
            device_id: device_id.into(),
            auth,
            keep_alive: 60,
            clean_session: false,
            max_in_flight: 100,
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// One device-to-cloud message: a body plus the properties IoT Hub carries with it.
#[derive(Debug, Clone, Default)]
pub struct TelemetryMessage {
    /// Message body, sent as is.
    pub body: Bytes,
    /// `$.ct`, e.g. `application/json` (routing queries on the body need it).
    pub content_type: Option<String>,
    /// `$.ce`, e.g. `utf-8`.
    pub content_encoding: Option<String>,
    /// `$.mid`.
    pub message_id: Option<String>,
    /// `$.cid`.
    pub correlation_id: Option<String>,
    /// Application properties.
    pub properties: Vec<(String, String)>,
}

impl TelemetryMessage {
    /// A message with only a body.
    pub fn new(body: impl Into<Bytes>) -> Self {
        TelemetryMessage {
            body: body.into(),
            ..TelemetryMessage::default()
        }
    }

    /// The property bag that follows `devices/{id}/messages/events/`: system properties in the
    /// Python SDK's order, then application properties sorted by key, each key and value
    /// percent-encoded (so `$.mid` travels as `%24.mid`).
    pub fn property_bag(&self) -> String {
        let system = [
            ("$.mid", &self.message_id),
            ("$.cid", &self.correlation_id),
            ("$.ct", &self.content_type),
            ("$.ce", &self.content_encoding),
        ];
        let mut custom: Vec<&(String, String)> = self.properties.iter().collect();
        custom.sort_by(|a, b| a.0.cmp(&b.0));
        system
            .iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
            .chain(custom.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Why the connection ended, once it has.
type ClosedReason = Arc<Mutex<Option<String>>>;

/// A device connected to its hub. Dropping it closes the connection.
pub struct HubClient {
    client: AsyncClient,
    events_topic: String,
    device_id: String,
    closed: ClosedReason,
    event_loop: JoinHandle<()>,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl HubClient {
    /// Opens TLS to `options.host`, sends CONNECT and waits for CONNACK.
    pub async fn connect(options: HubConnectOptions, trust: &Trust) -> Result<HubClient> {
        let device_id = options.device_id.clone();
        let mut mqtt = MqttOptions::new(
            device_id.clone(),
            Broker::tcp(options.host.clone(), options.port),
        );
        let username = format!(
            "{}/{device_id}/?api-version={API_VERSION}&DeviceClientType={}",
            options.host,
            url_encode(&format!("dpskit/{}", env!("CARGO_PKG_VERSION")))
        );
        match &options.auth {
            DeviceAuth::X509(_) => {
                mqtt.set_username(username);
            }
            DeviceAuth::SymmetricKey(key) => {
                let expiry = crate::pki::issue::now() + SAS_TTL_SECONDS;
                let audience = format!("{}/devices/{device_id}", options.host);
                let token = crate::sas::build_token(&audience, key, expiry, None)?;
                mqtt.set_credentials(username, token.into_bytes());
            }
        }
        mqtt.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
            trust.client_config(&options.auth)?,
        ))));
        mqtt.set_keep_alive(options.keep_alive);
        mqtt.set_clean_session(options.clean_session);
        mqtt.set_inflight(options.max_in_flight.max(1));
        // The request channel only has to cover the window: PUBACKs, not the queue, pace us.
        mqtt.set_request_channel_capacity(usize::from(options.max_in_flight.max(1)));
        let (client, mut events) = AsyncClient::builder(mqtt).build();
        let mut network = NetworkOptions::new();
        // Without TCP_NODELAY small exchanges wait ~40 ms for a delayed ACK.
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(options.connect_timeout.as_secs().max(1));
        events.set_network_options(network);

        let (connected_tx, connected_rx) = oneshot::channel::<Result<()>>();
        let closed: ClosedReason = Arc::default();
        let host = options.host.clone();
        let id = device_id.clone();
        let closed_by_loop = closed.clone();
        let event_loop = tokio::spawn(async move {
            let mut connected = Some(connected_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = connected.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    // Polling on after our own DISCONNECT would dial the hub again.
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(error) => {
                        let error = connection_error(&host, &id, error);
                        *closed_by_loop.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(error.to_string());
                        if let Some(tx) = connected.take() {
                            let _ = tx.send(Err(error));
                        }
                        // Dropping the event loop fails every pending PUBACK notice.
                        return;
                    }
                }
            }
        });
        let outcome = tokio::time::timeout(options.connect_timeout, connected_rx).await;
        let failure = match outcome {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(error))) => Some(error),
            Ok(Err(_)) => Some(Error::Transport(format!(
                "the connection of {device_id} to {} ended before CONNACK",
                options.host
            ))),
            Err(_) => Some(Error::Timeout(format!(
                "{device_id} got no CONNACK from {} within {:.1} s",
                options.host,
                options.connect_timeout.as_secs_f64()
            ))),
        };
        if let Some(error) = failure {
            event_loop.abort();
            return Err(error);
        }
        Ok(HubClient {
            client,
            events_topic: format!("devices/{device_id}/messages/events/"),
            device_id,
            closed,
            event_loop,
        })
    }

    /// The device id this client connected as.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Queues one telemetry message at QoS 1 and returns a future that resolves when the hub
    /// acknowledges it. Queuing waits while `max_in_flight` messages are unacknowledged, so a
    /// caller can keep a window of acknowledgements outstanding without unbounded memory.
    pub async fn queue_telemetry(&self, message: &TelemetryMessage) -> Result<PendingAck> {
        let topic = format!("{}{}", self.events_topic, message.property_bag());
        let notice = self
            .client
            .publish_tracked(topic, message.body.clone(), PublishOptions::at_least_once())
            .await
            .map_err(|_| self.closed_error())?;
        Ok(PendingAck {
            notice,
            closed: self.closed.clone(),
            device_id: self.device_id.clone(),
        })
    }

    /// Sends one telemetry message at QoS 1 and returns after the hub's PUBACK.
    pub async fn send_telemetry(&self, message: &TelemetryMessage) -> Result<()> {
        self.queue_telemetry(message).await?.acknowledged().await
    }

    /// Sends DISCONNECT (so the hub does not publish a will) and waits briefly for the
    /// connection to close.
    pub async fn disconnect(mut self) -> Result<()> {
        let sent = self
            .client
            .disconnect_with_timeout(Duration::from_secs(5))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.event_loop).await;
        sent.map_err(|e| Error::Transport(format!("disconnect of {}: {e}", self.device_id)))
    }

    fn closed_error(&self) -> Error {
        closed_error(&self.closed, &self.device_id)
    }
}

impl Drop for HubClient {
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

/// A telemetry message the hub has not acknowledged yet.
#[derive(Debug)]
pub struct PendingAck {
    notice: rumqttc::PublishNotice,
    closed: ClosedReason,
    device_id: String,
}

impl PendingAck {
    /// Waits for the PUBACK; fails if the connection ends first.
    pub async fn acknowledged(self) -> Result<()> {
        match self.notice.wait_async().await {
            Ok(_) => Ok(()),
            Err(_) => Err(closed_error(&self.closed, &self.device_id)),
        }
    }
}

fn closed_error(closed: &ClosedReason, device_id: &str) -> Error {
    let reason = closed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Error::Transport(match reason {
        Some(reason) => format!("the hub connection of {device_id} is closed: {reason}"),
        None => format!("the hub connection of {device_id} is closed"),
    })
}

fn connection_error(host: &str, device_id: &str, error: ConnectionError) -> Error {
    match error {
        ConnectionError::ConnectionRefused(code) => {
            let (status, why) = match code {
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => (
                    401,
                    "not authorized (unknown device, wrong key or certificate, or an expired token)",
                ),
                ConnectReturnCode::ServiceUnavailable => (
                    503,
                    "server unavailable (throttled, or the hub refuses connections)",
                ),
                _ => (400, "refused"),
            };
            Error::Service(Box::new(ServiceFailure {
                status,
                error_code: None,
                message: format!("{host} refused the connection of {device_id}: {why} ({code:?})"),
                tracking_id: None,
                retry_after: None,
            }))
        }
        other => Error::Transport(format!("connection of {device_id} to {host}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_bag_matches_the_python_sdk() {
        let message = TelemetryMessage {
            body: Bytes::from_static(b"{}"),
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            message_id: Some("abc".into()),
            correlation_id: None,
            properties: vec![("zeta".into(), "a/b".into()), ("temp".into(), "21".into())],
        };
        assert_eq!(
            message.property_bag(),
            "%24.mid=abc&%24.ct=application%2Fjson&%24.ce=utf-8&temp=21&zeta=a%2Fb"
        );
        assert_eq!(TelemetryMessage::new("x").property_bag(), "");
    }
}
