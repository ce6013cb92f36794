//! The device side of IoT Hub over MQTT: connect with an X.509 chain or a SAS token and send
//! telemetry at QoS 1, returning once the hub has acknowledged it. Written to the documented
//! protocol (username, topics, property bags as the official SDKs send them) so that the same
//! code talks to Azure, to the emulator, or to any MQTT broker used as a stand-in.
//! With [`HubConnectOptions::certificate_renewal`] it also renews a certificate DPS issued,
//! over IoT Hub's `$iothub/credentials` topics (certificate management preview).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::error::{Error, Result, ServiceFailure};
use crate::pki::{Certificate, CertificateRequest, DeviceCredential, KeyAlgorithm};
use crate::protocol::bags::{encode_property_bag, parse_property_bag};
use crate::protocol::credentials;
use crate::protocol::hub::{self as wire, CloudPublish, DeviceRequest, Subscription};
use crate::provisioning::DeviceAuth;
use crate::transport::Trust;
use crate::transport::mqtt::Via;

mod connection;
#[cfg(test)]
mod fuzz_tests;

/// The api-version the IoT Hub MQTT documentation uses.
const API_VERSION: &str = "2021-04-12";
/// How long [`HubClient::renew_certificate`] waits for the issued certificate by default: the
/// C SDK's `csr_timeout_secs` default (3 minutes).
pub const DEFAULT_RENEWAL_TIMEOUT: Duration = Duration::from_secs(180);
/// SAS tokens for the hub are valid this long (the Python SDK's default).
const SAS_TTL_SECONDS: i64 = 3600;

/// IoT Hub's largest device-to-cloud message: 256 KB (Azure's "IoT Hub quotas and
/// throttling", and the wire spec's section 3.2; a larger one is refused with 413001, which
/// over MQTT means a dropped connection). The Python SDK refuses telemetry over this size
/// before sending it (`TELEMETRY_MESSAGE_SIZE_LIMIT = 262144`, a `ValueError`), and so does
/// [`HubClient::queue_telemetry`].
pub(crate) const MAX_TELEMETRY_BYTES: usize = crate::limits::MAX_D2C_MESSAGE_BYTES;

/// The longest keep-alive IoT Hub serves: the hub disconnects a device after 1.5 times its
/// keep-alive, capped at 1,767 s, so 1,177 s is the largest value it honours ("Communicate
/// with an IoT hub using the MQTT protocol", keep-alive section; the wire spec's section 3.1).
/// [`HubClient::connect`] clamps `keep_alive` to it.
pub(crate) const MAX_KEEP_ALIVE_SECONDS: u16 = crate::limits::MAX_KEEP_ALIVE_SECONDS;

/// The longest IoT Hub waits for a device to answer a direct method: `responseTimeoutInSeconds`
/// is 5 to 300 ("Understand and invoke direct methods from IoT Hub"; the emulator's REST API
/// clamps to the same range). [`method_timeout`] refuses longer ones.
pub const MAX_METHOD_TIMEOUT_SECONDS: u64 = crate::limits::MAX_METHOD_RESPONSE_TIMEOUT_SECONDS;

/// The largest direct-method response payload: 128 KB, both directions ("IoT Hub quotas and
/// throttling"; the wire spec's section 3.5). [`HubClient::respond`] refuses a larger one
/// before sending; the hub would close the connection and fail the call (413001).
pub(crate) const MAX_METHOD_RESPONSE_BYTES: usize = crate::limits::MAX_METHOD_PAYLOAD_BYTES;

/// The largest reported-properties section of a twin: 32 KB of JSON (device twins, "Device
/// twin size"; the wire spec's section 3.4). [`HubClient::update_reported`] refuses a patch
/// whose own JSON is larger before sending (it could only pass by deleting properties; the
/// hub refuses any change that leaves the section larger with 403100).
pub(crate) const MAX_REPORTED_BYTES: usize = crate::limits::MAX_TWIN_SECTION_BYTES;

/// MQTT 3.1.1 writes a topic's length in two bytes.
const MAX_TOPIC_BYTES: usize = u16::MAX as usize;

/// Where and how one device connects to its hub.
#[derive(Debug, Clone)]
pub struct HubConnectOptions {
    /// The hub's host name (`assignedHub`): dialled, checked against the server certificate,
    /// and written into the username and the SAS audience.
    pub host: String,
    /// Port: 8883 for MQTT over TLS, 443 over WebSockets (Azure's; the emulator's web port).
    pub port: u16,
    /// MQTT over TLS or WebSockets, and the proxy if any.
    pub via: Via,
    /// Device id in that hub.
    pub device_id: String,
    /// X.509 chain or device key.
    pub auth: DeviceAuth,
    /// Seconds between keep-alive pings (the Python SDK uses 60); values above
    /// [`MAX_KEEP_ALIVE_SECONDS`] are clamped to it.
    pub keep_alive: u16,
    /// `false` asks the hub to keep subscriptions and queued C2D messages across connections,
    /// as every official SDK does.
    pub clean_session: bool,
    /// QoS 1 messages sent before the first PUBACK must come back.
    pub max_in_flight: u16,
    /// Give up on TLS + CONNACK after this long.
    pub connect_timeout: Duration,
    /// Subscribe to C2D, direct methods, twin responses and desired patches at connect (a
    /// device that only sends telemetry skips it).
    pub receive: bool,
    /// After a connection loss, dial again with backoff (messages not acknowledged are sent
    /// again); `false` ends the client at the first loss.
    pub reconnect: bool,
    /// Lifetime of the SAS tokens made for a symmetric-key device (renewed a minute early).
    pub sas_ttl: Duration,
    /// TLS sessions kept to resume after a reconnect (a shorter handshake); 0 saves about
    /// 4 KB per device, which fleets of thousands prefer.
    pub tls_sessions: usize,
    /// Connect on IoT Hub's certificate-management api-version
    /// ([`credentials::API_VERSION`]) and subscribe to its answers, so that
    /// [`HubClient::renew_certificate`] works. Off by default: the connection stays what the
    /// official SDKs send.
    pub certificate_renewal: bool,
    /// How long a renewal waits for the issued certificate.
    pub renewal_timeout: Duration,
    /// The clock SAS tokens are signed with (the system's, or the local cloud's).
    pub clock: Clock,
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
            via: Via::default(),
            device_id: device_id.into(),
            auth,
            keep_alive: 60,
            clean_session: false,
            max_in_flight: 100,
            connect_timeout: Duration::from_secs(30),
            receive: false,
            reconnect: true,
            sas_ttl: Duration::from_secs(SAS_TTL_SECONDS as u64),
            tls_sessions: 2,
            certificate_renewal: false,
            renewal_timeout: DEFAULT_RENEWAL_TIMEOUT,
            clock: Clock::system(),
        }
    }
}

/// Where a hub connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Before the first CONNACK.
    Connecting,
    /// Connected.
    Connected,
    /// Lost; dialling again with backoff.
    Reconnecting,
    /// Closed for good (by the device, or a failure before it ever connected).
    Closed,
}

/// Renew a SAS token this long before it expires (or a quarter of its life, if shorter).
const SAS_RENEW_MARGIN: Duration = Duration::from_secs(60);

/// What it takes to make a fresh SAS token for the hub.
struct SasRenewal {
    audience: String,
    key: String,
    ttl: Duration,
    clock: Clock,
}

impl SasRenewal {
    /// A token valid for `ttl` from now, and when to renew it.
    fn token(&self) -> Result<(String, tokio::time::Instant)> {
        let ttl = self.ttl.max(Duration::from_secs(2));
        let expiry = self.clock.now() + ttl.as_secs() as i64;
        let token = crate::sas::build_token(&self.audience, &self.key, expiry, None)?;
        let margin = SAS_RENEW_MARGIN.min(ttl / 4);
        Ok((token, tokio::time::Instant::now() + ttl - margin))
    }
}

/// The four subscriptions of a device that receives.
fn subscription_filters(device_id: &str) -> Vec<String> {
    Subscription::all_filters(device_id)
}

/// What a device subscribes to at connect: the four of a device that receives, and the
/// renewal answers' filter when it renews (the hub answers only a subscribed device, and
/// keeps the answer for the session until it is).
fn connect_filters(device_id: &str, receive: bool, renewal: bool) -> Vec<String> {
    let mut filters = if receive {
        subscription_filters(device_id)
    } else {
        Vec::new()
    };
    if renewal {
        filters.push(credentials::RESPONSE_FILTER.to_string());
    }
    filters
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
        encode_property_bag(
            system
                .iter()
                .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
                .chain(custom.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        )
    }

    /// What IoT Hub counts against [`MAX_TELEMETRY_BYTES`]: the body plus the properties.
    /// Azure counts property names and values; the percent-encoded bag counted here is never
    /// smaller, so a message that passes here passes the hub.
    pub fn size(&self) -> usize {
        self.body.len() + self.property_bag().len()
    }

    /// The size the hub counts and meters ([`crate::protocol::counted_message_size`]): the
    /// body and the properties' names and values, decoded, system ones without `$.`. Never
    /// more than [`TelemetryMessage::size`].
    pub fn counted_size(&self) -> usize {
        let system = [
            ("mid", &self.message_id),
            ("cid", &self.correlation_id),
            ("ct", &self.content_type),
            ("ce", &self.content_encoding),
        ];
        crate::protocol::counted_message_size(
            self.body.len(),
            system
                .iter()
                .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
                .chain(
                    self.properties
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str())),
                ),
        )
    }

    /// Refuses a message the hub would refuse for its size, before it is sent: over MQTT the
    /// hub answers one by closing the connection, and a client that queued it would send it
    /// again after every reconnect.
    pub fn check_size(&self) -> Result<()> {
        let size = self.size();
        if size > MAX_TELEMETRY_BYTES {
            return Err(Error::config(format!(
                "a telemetry message is at most {MAX_TELEMETRY_BYTES} bytes (256 KB) of body and \
                 properties; this one has {size} ({} of body)",
                self.body.len()
            )));
        }
        Ok(())
    }
}

/// Why the connection ended, once it has: the error itself, the cause of every later call's.
type ClosedReason = Arc<Mutex<Option<Arc<Error>>>>;

/// A cloud-to-device message as the device received it.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudMessage {
    /// Body bytes.
    pub body: Vec<u8>,
    /// Application properties, in the order the hub sent them.
    pub properties: Vec<(String, String)>,
    /// System properties (`mid`, `to`, `ct`, `ce`, ...), without the `$.` prefix.
    pub system_properties: Vec<(String, String)>,
}

/// A direct method call waiting for the device's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodRequest {
    /// Method name.
    pub name: String,
    /// Request id to answer with.
    pub rid: String,
    /// Payload (`null` when empty).
    pub payload: serde_json::Value,
}

/// Twin requests waiting for their answer (status, body), by `$rid`.
type TwinWaiters = Mutex<std::collections::HashMap<String, oneshot::Sender<(u16, Vec<u8>)>>>;

/// Renewals waiting for their answers (status, body), by `$rid`: a 202 then a 200 or an
/// error arrive for the same one.
type RenewalWaiters =
    Mutex<std::collections::HashMap<String, tokio::sync::mpsc::UnboundedSender<(u16, Vec<u8>)>>>;

/// Where incoming publishes go.
#[derive(Default)]
struct Inbox {
    twin_waiters: TwinWaiters,
    renewals: RenewalWaiters,
    c2d: Mutex<Option<tokio::sync::mpsc::UnboundedSender<CloudMessage>>>,
    desired: Mutex<Option<tokio::sync::mpsc::UnboundedSender<serde_json::Value>>>,
    methods: Mutex<Option<tokio::sync::mpsc::UnboundedSender<MethodRequest>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inbox {
    /// Routes one PUBLISH from the hub by its topic.
    fn deliver(&self, device_id: &str, topic: &str, payload: &[u8]) {
        if let Some((status, rid)) = credentials::parse_response_topic(topic) {
            match lock(&self.renewals).get(rid) {
                Some(waiter) => {
                    let _ = waiter.send((status, payload.to_vec()));
                }
                None => log::debug!("hub client {device_id}: an answer to no renewal ({topic})"),
            }
            return;
        }
        match CloudPublish::parse(topic, device_id) {
            Some(CloudPublish::TwinResponse { status, rid, .. }) => {
                if let Some(waiter) = lock(&self.twin_waiters).remove(&rid) {
                    let _ = waiter.send((status, payload.to_vec()));
                }
            }
            Some(CloudPublish::DesiredPatch { .. }) => {
                let patch = serde_json::from_slice(payload).unwrap_or(serde_json::Value::Null);
                if let Some(tx) = lock(&self.desired).as_ref() {
                    let _ = tx.send(patch);
                }
            }
            Some(CloudPublish::MethodRequest { name, rid }) => {
                let payload = serde_json::from_slice(payload).unwrap_or(serde_json::Value::Null);
                if let Some(tx) = lock(&self.methods).as_ref() {
                    let _ = tx.send(MethodRequest { name, rid, payload });
                }
            }
            Some(CloudPublish::C2d { bag, .. }) => {
                let (properties, system_properties) = parse_property_bag(&bag);
                if let Some(tx) = lock(&self.c2d).as_ref() {
                    let _ = tx.send(CloudMessage {
                        body: payload.to_vec(),
                        properties,
                        system_properties,
                    });
                }
            }
            None => log::debug!("hub client {device_id}: ignored a publish on {topic}"),
        }
    }

    /// Ends every stream and wakes every waiter (the connection is gone).
    fn close(&self) {
        lock(&self.twin_waiters).clear();
        lock(&self.renewals).clear();
        lock(&self.c2d).take();
        lock(&self.desired).take();
        lock(&self.methods).take();
    }
}

/// The receiving ends a client hands out.
struct Streams {
    c2d: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<CloudMessage>>,
    desired: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>>,
    methods: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<MethodRequest>>,
}

/// A device connected to its hub. Dropping it closes the connection.
pub struct HubClient {
    state: Arc<Mutex<ConnectionState>>,
    reconnects: Arc<std::sync::atomic::AtomicU32>,
    close_requested: Arc<tokio::sync::Notify>,
    commands: tokio::sync::mpsc::Sender<connection::Command>,
    events_topic: String,
    device_id: String,
    closed: ClosedReason,
    task: JoinHandle<()>,
    inbox: Arc<Inbox>,
    /// What the hub sends the device (`None` without `receive`).
    streams: Option<Streams>,
    next_rid: std::sync::atomic::AtomicU64,
    /// Connected for renewals (`HubConnectOptions::certificate_renewal`).
    certificate_renewal: bool,
    renewal_timeout: Duration,
    /// The key algorithm of the certificate it connected with (none with a key): a renewal
    /// keeps it unless told otherwise.
    key_algorithm: Option<KeyAlgorithm>,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl HubClient {
    /// Opens TLS to `options.host`, sends CONNECT and waits for CONNACK (and for the
    /// subscriptions, with `options.receive`).
    pub async fn connect(options: HubConnectOptions, trust: &Trust) -> Result<HubClient> {
        let device_id = options.device_id.clone();
        let api_version = if options.certificate_renewal {
            credentials::API_VERSION
        } else {
            API_VERSION
        };
        let username = wire::username(
            &options.host,
            &device_id,
            api_version,
            concat!("dpskit/", env!("CARGO_PKG_VERSION")),
        );
        let sas = match &options.auth {
            DeviceAuth::X509(_) => None,
            DeviceAuth::SymmetricKey(key) => Some(SasRenewal {
                audience: wire::sas_audience(&options.host, &device_id),
                key: key.clone(),
                ttl: options.sas_ttl,
                clock: options.clock.clone(),
            }),
        };
        let window = usize::from(options.max_in_flight.max(1));
        let settings = connection::Settings {
            host: options.host.clone(),
            port: options.port,
            via: options.via.clone(),
            client_id: device_id.clone(),
            username,
            sas,
            keep_alive: clamp_keep_alive(options.keep_alive),
            clean_session: options.clean_session,
            max_in_flight: window,
            connect_timeout: options.connect_timeout,
            reconnect: options.reconnect,
            resubscribe: Some(connect_filters(
                &device_id,
                options.receive,
                options.certificate_renewal,
            ))
            .filter(|filters| !filters.is_empty()),
            tls: Arc::new(trust.client_config(options.auth.credential(), options.tls_sessions)?),
        };
        let closed: ClosedReason = Arc::default();
        let inbox = Arc::new(Inbox::default());
        // Each channel allocates a block of slots up front: a device that only sends (a fleet
        // of thousands) goes without them.
        let streams = options.receive.then(|| {
            let (c2d_tx, c2d_rx) = tokio::sync::mpsc::unbounded_channel();
            let (desired_tx, desired_rx) = tokio::sync::mpsc::unbounded_channel();
            let (methods_tx, methods_rx) = tokio::sync::mpsc::unbounded_channel();
            *lock(&inbox.c2d) = Some(c2d_tx);
            *lock(&inbox.desired) = Some(desired_tx);
            *lock(&inbox.methods) = Some(methods_tx);
            Streams {
                c2d: tokio::sync::Mutex::new(c2d_rx),
                desired: tokio::sync::Mutex::new(desired_rx),
                methods: tokio::sync::Mutex::new(methods_rx),
            }
        });
        let state = Arc::new(Mutex::new(ConnectionState::Connecting));
        let reconnects = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let close_requested = Arc::new(tokio::sync::Notify::new());
        // The channel holds the window: senders wait while it is full, so PUBACKs pace them.
        let (commands, commands_rx) = tokio::sync::mpsc::channel(window);
        let (connected_tx, connected_rx) = oneshot::channel::<Result<()>>();
        let shared = connection::Shared {
            inbox: inbox.clone(),
            state: state.clone(),
            closed: closed.clone(),
            reconnects: reconnects.clone(),
            close_requested: close_requested.clone(),
        };
        let task = tokio::spawn(connection::run(settings, commands_rx, shared, connected_tx));
        let failure = match connected_rx.await {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error),
            Err(_) => Some(Error::transport(format!(
                "the connection of {device_id} to {} ended before CONNACK",
                options.host
            ))),
        };
        if let Some(error) = failure {
            task.abort();
            return Err(error);
        }
        let hub_client = HubClient {
            state,
            reconnects,
            close_requested,
            commands,
            events_topic: wire::telemetry_prefix(&device_id),
            device_id,
            closed,
            task,
            inbox,
            streams,
            next_rid: std::sync::atomic::AtomicU64::new(1),
            certificate_renewal: options.certificate_renewal,
            renewal_timeout: options.renewal_timeout,
            key_algorithm: options.auth.credential().map(|c| c.key().algorithm()),
        };
        let filters = connect_filters(
            &hub_client.device_id,
            options.receive,
            options.certificate_renewal,
        );
        if !filters.is_empty() {
            hub_client.subscribe(filters).await?;
        }
        Ok(hub_client)
    }

    /// Hands a command to the connection task.
    async fn command(&self, command: connection::Command) -> Result<()> {
        self.commands
            .send(command)
            .await
            .map_err(|_| self.closed_error())
    }

    /// Subscribes to `filters` (QoS 1) and waits for the SUBACK.
    async fn subscribe(&self, filters: Vec<String>) -> Result<()> {
        let (done, acknowledged) = oneshot::channel();
        self.command(connection::Command::Subscribe {
            filters,
            done: Some(done),
        })
        .await?;
        tokio::time::timeout(Duration::from_secs(30), acknowledged)
            .await
            .map_err(|_| Error::timeout(format!("{}: no SUBACK within 30 s", self.device_id)))?
            .map_err(|_| self.closed_error())?
    }

    /// Publishes at QoS 1 without waiting for the PUBACK.
    async fn publish(&self, topic: String, payload: Bytes) -> Result<()> {
        self.command(connection::Command::Publish(Box::new(
            connection::PublishRequest {
                topic,
                payload,
                done: None,
            },
        )))
        .await
    }

    /// Publishes a twin request (made for a fresh `$rid`) and waits for its
    /// `$iothub/twin/res/` answer.
    async fn twin_request(
        &self,
        request: fn(String) -> DeviceRequest,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>)> {
        let rid = self
            .next_rid
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_string();
        let (tx, rx) = oneshot::channel();
        lock(&self.inbox.twin_waiters).insert(rid.clone(), tx);
        self.publish(request(rid.clone()).topic(), Bytes::from(body))
            .await?;
        let answer = tokio::time::timeout(Duration::from_secs(30), rx).await;
        lock(&self.inbox.twin_waiters).remove(&rid);
        match answer {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(Error::timeout(format!(
                "{}: the twin request got no answer within 30 s",
                self.device_id
            ))),
        }
    }

    /// The twin as the device sees it: `{"desired": {...}, "reported": {...}}` with versions.
    pub async fn get_twin(&self) -> Result<serde_json::Value> {
        let (status, body) = self
            .twin_request(|rid| DeviceRequest::TwinGet { rid }, b" ".to_vec())
            .await?;
        if status != 200 {
            return Err(twin_error(status, &body, "reading the twin"));
        }
        serde_json::from_slice(&body).map_err(|e| Error::protocol_caused("the twin is not JSON", e))
    }

    /// Patches the reported properties (`null` deletes a property). A patch whose JSON is
    /// over [`MAX_REPORTED_BYTES`] is refused before sending ([`Error::Config`]).
    pub async fn update_reported(&self, patch: &serde_json::Value) -> Result<()> {
        let patch = patch.to_string().into_bytes();
        if patch.len() > MAX_REPORTED_BYTES {
            return Err(Error::config(format!(
                "a reported-properties patch is at most {MAX_REPORTED_BYTES} bytes of JSON (IoT \
                 Hub's 32 KB twin section); this one has {}",
                patch.len()
            )));
        }
        let (status, body) = self
            .twin_request(|rid| DeviceRequest::ReportedPatch { rid }, patch)
            .await?;
        if status != 204 && status != 200 {
            return Err(twin_error(status, &body, "updating reported properties"));
        }
        Ok(())
    }

    /// Asks the hub for a new certificate for `request`'s key (its CN should be the device
    /// id) and returns it with its issuers, leaf first up to the root, checked to be issued for
    /// that key and this device ([`crate::provisioning::check_issued_chain`]). `replace` is
    /// `"*"` or the id of a pending request to cancel first.
    ///
    /// The hub accepts (202), then issues (200); a refusal is the hub's error: another request
    /// pending (409005) is a conflict naming it, throttling (429xxx) says when to try again,
    /// a CSR that fails verification (400040) names why. The live connection stays up; the
    /// new certificate is for the next connection (the current one stays valid until it
    /// expires). Needs a client connected with
    /// [`HubConnectOptions::certificate_renewal`].
    pub async fn renew_certificate(
        &self,
        request: &CertificateRequest,
        replace: Option<&str>,
    ) -> Result<Vec<Certificate>> {
        if !self.certificate_renewal {
            return Err(Error::config(format!(
                "{} was connected without certificate renewal: connect with it on (IoT Hub's \
                 {} api-version) to renew its certificate",
                self.device_id,
                credentials::API_VERSION
            )));
        }
        if let Some(replace) = replace
            && replace != credentials::REPLACE_ANY
            && !credentials::is_valid_request_id(replace)
        {
            return Err(Error::config(format!(
                "replace must be '*' or a request id (4 to 36 letters, digits and dashes, not \
                 starting or ending with a dash), not {replace:?}"
            )));
        }
        let body = serde_json::to_vec(&credentials::IssueCertificateRequest {
            id: self.device_id.clone(),
            csr: request.to_base64(),
            replace: replace.map(str::to_string),
        })
        .map_err(|e| Error::protocol_caused("cannot encode the renewal request", e))?;
        let rid = crate::random::guid();
        let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
        lock(&self.inbox.renewals).insert(rid.clone(), tx);
        let exchange = async {
            self.publish(credentials::request_topic(&rid), Bytes::from(body))
                .await?;
            loop {
                let Some((status, body)) = answers.recv().await else {
                    return Err(self.closed_error());
                };
                match renewal_answer(&self.device_id, &rid, status, &body)? {
                    RenewalAnswer::Accepted => continue,
                    RenewalAnswer::Issued(chain) => {
                        return crate::provisioning::check_issued_chain(
                            &chain,
                            request,
                            &self.device_id,
                            "the hub",
                        );
                    }
                }
            }
        };
        let outcome = tokio::time::timeout(self.renewal_timeout, exchange).await;
        lock(&self.inbox.renewals).remove(&rid);
        outcome.unwrap_or_else(|_| {
            Err(Error::timeout(format!(
                "{}: the hub issued no certificate for renewal request {rid} within {:.0} s",
                self.device_id,
                self.renewal_timeout.as_secs_f64()
            )))
        })
    }

    /// [`HubClient::renew_certificate`] with a new key: `algorithm`, else the current
    /// certificate's, else EC P-256, and a CSR with CN = the device id; returns the new
    /// credential (the issued certificate, its issuers and the new key).
    pub async fn renew_credential(
        &self,
        algorithm: Option<KeyAlgorithm>,
        replace: Option<&str>,
    ) -> Result<DeviceCredential> {
        let algorithm = algorithm
            .or(self.key_algorithm)
            .unwrap_or(KeyAlgorithm::EcP256);
        let (csr, key) =
            crate::provisioning::new_certificate_request(&self.device_id, algorithm).await?;
        let chain = self.renew_certificate(&csr, replace).await?;
        crate::provisioning::issued_credential(&chain, key)
    }

    /// The next cloud-to-device message (`None` once the connection is closed, or at once
    /// for a client connected without `receive`).
    pub async fn next_message(&self) -> Option<CloudMessage> {
        self.streams.as_ref()?.c2d.lock().await.recv().await
    }

    /// The next desired-properties patch (`None` once the connection is closed, or without
    /// `receive`).
    pub async fn next_desired(&self) -> Option<serde_json::Value> {
        self.streams.as_ref()?.desired.lock().await.recv().await
    }

    /// The next direct method call (`None` once the connection is closed, or without
    /// `receive`).
    pub async fn next_method(&self) -> Option<MethodRequest> {
        self.streams.as_ref()?.methods.lock().await.recv().await
    }

    /// Answers a direct method call. A payload whose JSON is over
    /// [`MAX_METHOD_RESPONSE_BYTES`] is refused before sending ([`Error::Config`]).
    pub async fn respond(&self, rid: &str, status: u16, payload: &serde_json::Value) -> Result<()> {
        let payload = payload.to_string();
        if payload.len() > MAX_METHOD_RESPONSE_BYTES {
            return Err(Error::config(format!(
                "a direct-method response is at most {MAX_METHOD_RESPONSE_BYTES} bytes of JSON \
                 (IoT Hub's 128 KB); this one has {}",
                payload.len()
            )));
        }
        let topic = DeviceRequest::MethodResponse {
            rid: rid.to_string(),
            status,
        }
        .topic();
        self.publish(topic, Bytes::from(payload)).await
    }

    /// Where the connection stands (reconnects happen on their own).
    pub fn connection_state(&self) -> ConnectionState {
        *lock(&self.state)
    }

    /// How many times the connection was lost and dialled again.
    pub fn reconnects(&self) -> u32 {
        self.reconnects.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The device id this client connected as.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Queues one telemetry message at QoS 1 and returns a future that resolves when the hub
    /// acknowledges it. Queuing waits while `max_in_flight` messages are unacknowledged, so a
    /// caller can keep a window of acknowledgements outstanding without unbounded memory.
    ///
    /// A message over [`MAX_TELEMETRY_BYTES`] (or whose topic would not fit an MQTT topic) is
    /// refused at once with [`Error::Config`], before it is queued; the connection is not
    /// touched.
    pub async fn queue_telemetry(&self, message: &TelemetryMessage) -> Result<PendingAck> {
        message.check_size()?;
        let topic = format!("{}{}", self.events_topic, message.property_bag());
        if topic.len() > MAX_TOPIC_BYTES {
            return Err(Error::config(format!(
                "the properties of a telemetry message make a topic of {} bytes; MQTT allows \
                 {MAX_TOPIC_BYTES}",
                topic.len()
            )));
        }
        let (done, acknowledged) = oneshot::channel();
        self.command(connection::Command::Publish(Box::new(
            connection::PublishRequest {
                topic,
                payload: message.body.clone(),
                done: Some(done),
            },
        )))
        .await?;
        Ok(PendingAck {
            acknowledged,
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
    pub async fn disconnect(self) -> Result<()> {
        self.close().await;
        Ok(())
    }

    /// Like [`HubClient::disconnect`], for a shared client: sends DISCONNECT and waits (at
    /// most 5 s) for the connection to end.
    pub async fn close(&self) {
        // Reaches the task even while it waits to dial again (and reads no commands).
        self.close_requested.notify_one();
        let (done, finished) = oneshot::channel();
        if self
            .commands
            .send(connection::Command::Disconnect { done })
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(5), finished).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.task.is_finished() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.task.abort();
        *lock(&self.state) = ConnectionState::Closed;
    }

    fn closed_error(&self) -> Error {
        closed_error(&self.closed, &self.device_id)
    }
}

impl Drop for HubClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A telemetry message the hub has not acknowledged yet.
#[derive(Debug)]
pub struct PendingAck {
    acknowledged: oneshot::Receiver<Result<()>>,
    closed: ClosedReason,
    device_id: String,
}

impl PendingAck {
    /// Waits for the PUBACK; fails if the client is closed first (a lost connection does not
    /// fail it: the message is sent again after the reconnect).
    pub async fn acknowledged(self) -> Result<()> {
        self.await
    }
}

/// Polling a `PendingAck` in place lets a sender watch its oldest acknowledgement and its next
/// send time together (`select!`) without boxing a future per message.
impl std::future::Future for PendingAck {
    type Output = Result<()>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<()>> {
        std::pin::Pin::new(&mut self.acknowledged)
            .poll(cx)
            .map(|received| {
                received.unwrap_or_else(|_| Err(closed_error(&self.closed, &self.device_id)))
            })
    }
}

/// A direct-method response timeout of `seconds`, refused with [`Error::Config`] unless it is a
/// positive number of seconds no longer than IoT Hub's [`MAX_METHOD_TIMEOUT_SECONDS`]: Azure
/// does not accept a longer `responseTimeoutInSeconds`, and waiting longer against the emulator
/// would promise what Azure does not do.
pub fn method_timeout(seconds: f64) -> Result<Duration> {
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(Error::config(format!(
            "timeout must be a positive number of seconds, not {seconds}"
        )));
    }
    if seconds > MAX_METHOD_TIMEOUT_SECONDS as f64 {
        return Err(Error::config(format!(
            "a direct method's response timeout is at most {MAX_METHOD_TIMEOUT_SECONDS} s on \
             IoT Hub, not {seconds}"
        )));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `keep_alive` within what IoT Hub serves: at most [`MAX_KEEP_ALIVE_SECONDS`]. A longer one
/// would let the hub drop a healthy idle device before its next ping.
pub(crate) fn clamp_keep_alive(keep_alive: u16) -> u16 {
    keep_alive.min(MAX_KEEP_ALIVE_SECONDS)
}

fn twin_error(status: u16, body: &[u8], what: &str) -> Error {
    let details: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    Error::Service(Box::new(ServiceFailure {
        status,
        error_code: details["errorCode"]
            .as_u64()
            .and_then(|c| u32::try_from(c).ok()),
        message: format!(
            "{what}: the hub answered {status}: {}",
            details["message"].as_str().unwrap_or("no details")
        ),
        tracking_id: None,
        retry_after: None,
    }))
}

/// Where a renewal stands after one answer.
#[derive(Debug, PartialEq)]
enum RenewalAnswer {
    /// 202: the hub is issuing it.
    Accepted,
    /// 200: the issued chain, base64 DER, not yet checked.
    Issued(Vec<String>),
}

/// Reads one answer to renewal request `rid`: the 202, the 200 with its certificates, or the
/// hub's refusal as a typed error (a 409 is a conflict naming the pending request, a 429
/// carries the hub's retry-after, a rejected CSR names the certificate authority's reason).
fn renewal_answer(device_id: &str, rid: &str, status: u16, body: &[u8]) -> Result<RenewalAnswer> {
    let malformed = |e: serde_json::Error| {
        Error::protocol_caused(
            format!("the hub's {status} answer to renewal request {rid} of {device_id}"),
            e,
        )
    };
    match status {
        202 => {
            serde_json::from_slice::<credentials::Accepted>(body).map_err(malformed)?;
            Ok(RenewalAnswer::Accepted)
        }
        200 => {
            let issued: credentials::Issued = serde_json::from_slice(body).map_err(malformed)?;
            Ok(RenewalAnswer::Issued(issued.certificates))
        }
        _ => {
            let error: credentials::ErrorBody = serde_json::from_slice(body).map_err(malformed)?;
            let info = error.info.clone().unwrap_or_default();
            let mut message = format!(
                "the hub refused renewal request {rid} of {device_id}: {}",
                error.message
            );
            match error.error_code {
                credentials::codes::OPERATION_ACTIVE => message.push_str(&format!(
                    " (pending request: {}, expires {}; renew with replace='*' or that id to \
                     cancel it)",
                    info.request_id.as_deref().unwrap_or("unknown"),
                    info.operation_expires.as_deref().unwrap_or("unknown")
                )),
                credentials::codes::THROTTLED_DEVICE | credentials::codes::THROTTLED_HUB => {
                    let whose = if error.error_code == credentials::codes::THROTTLED_DEVICE {
                        "this device"
                    } else {
                        "this hub"
                    };
                    message.push_str(&format!(" (too many renewal requests for {whose}"));
                    if let Some(seconds) = error.retry_after {
                        message.push_str(&format!("; try again in {seconds} s"));
                    }
                    message.push(')');
                }
                credentials::codes::CSR_REJECTED => message.push_str(&format!(
                    " (credentialError: {}{})",
                    info.credential_error.as_deref().unwrap_or("none given"),
                    info.credential_message
                        .as_deref()
                        .map(|m| format!(", {m}"))
                        .unwrap_or_default()
                )),
                _ => {}
            }
            Err(Error::Service(Box::new(ServiceFailure {
                status,
                error_code: Some(error.error_code),
                message,
                tracking_id: Some(error.tracking_id).filter(|t| !t.is_empty()),
                retry_after: error.retry_after.map(f64::from),
            })))
        }
    }
}

fn closed_error(closed: &ClosedReason, device_id: &str) -> Error {
    let reason = closed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let message = format!("the hub connection of {device_id} is closed");
    match reason {
        Some(reason) => Error::transport_caused(message, reason),
        None => Error::transport(message),
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

    #[test]
    fn the_counted_size_is_what_the_hub_counts_from_the_bag() {
        let message = TelemetryMessage {
            body: Bytes::from_static(b"{\"t\":1}"),
            content_type: Some("application/json".into()),
            content_encoding: None,
            message_id: Some("sensor-1-7".into()),
            correlation_id: None,
            properties: vec![("zone".into(), "a/b c".into())],
        };
        // 7 of body, mid + sensor-1-7 (13), ct + application/json (18), zone + a/b c (9).
        assert_eq!(message.counted_size(), 47);
        let (properties, system) = parse_property_bag(&message.property_bag());
        let decoded = properties
            .iter()
            .chain(&system)
            .map(|(k, v)| (k.as_str(), v.as_str()));
        assert_eq!(
            crate::protocol::counted_message_size(message.body.len(), decoded),
            message.counted_size()
        );
        assert!(message.counted_size() < message.size());
    }

    #[test]
    fn renewal_subscribes_to_the_credentials_answers_beside_the_four() {
        assert!(connect_filters("d", false, false).is_empty());
        assert_eq!(
            connect_filters("d", false, true),
            ["$iothub/credentials/res/#"]
        );
        let both = connect_filters("d", true, true);
        assert_eq!(both.len(), 5);
        assert_eq!(both[..4], subscription_filters("d")[..]);
    }

    fn refusal(code: u32, info: serde_json::Value) -> Vec<u8> {
        serde_json::json!({
            "errorCode": code,
            "message": "refused",
            "trackingId": "t-1",
            "timestampUtc": "2026-01-31T00:49:39.467401528Z",
            "info": info,
            "retryAfter": 7,
        })
        .to_string()
        .into_bytes()
    }

    fn service(result: Result<RenewalAnswer>) -> ServiceFailure {
        match result {
            Err(Error::Service(failure)) => *failure,
            other => panic!("expected a service error, got {other:?}"),
        }
    }

    #[test]
    fn renewal_answers_read_as_the_hub_sends_them() {
        let accepted =
            br#"{"correlationId":"c-1","operationExpires":"2026-01-31T12:52:20.565000000Z"}"#;
        assert_eq!(
            renewal_answer("d", "r1", 202, accepted).unwrap(),
            RenewalAnswer::Accepted
        );
        let issued = br#"{"correlationId":"c-1","certificates":["QQ==","Qg=="]}"#;
        assert_eq!(
            renewal_answer("d", "r1", 200, issued).unwrap(),
            RenewalAnswer::Issued(vec!["QQ==".into(), "Qg==".into()])
        );
        let broken = renewal_answer("d", "r1", 200, b"{}").unwrap_err();
        assert!(matches!(broken, Error::Protocol(_)), "{broken:?}");
    }

    #[test]
    fn renewal_refusals_are_typed_and_name_what_the_device_needs() {
        let conflict = service(renewal_answer(
            "d",
            "r2",
            409,
            &refusal(
                409_005,
                serde_json::json!({"requestId": "r1", "operationExpires": "2026-01-31T12:52:20Z"}),
            ),
        ));
        assert_eq!((conflict.status, conflict.error_code), (409, Some(409_005)));
        assert!(
            conflict.message.contains("pending request: r1")
                && conflict.message.contains("replace"),
            "{}",
            conflict.message
        );
        assert_eq!(conflict.kind(), crate::error::ServiceErrorKind::Conflict);
        let throttled = service(renewal_answer(
            "d",
            "r3",
            429,
            &refusal(429_002, serde_json::Value::Null),
        ));
        assert_eq!((throttled.status, throttled.retry_after), (429, Some(7.0)));
        assert_eq!(throttled.kind(), crate::error::ServiceErrorKind::Throttled);
        assert!(
            throttled
                .message
                .contains("too many renewal requests for this device; try again in 7 s"),
            "{}",
            throttled.message
        );
        let rejected = service(renewal_answer(
            "d",
            "r4",
            400,
            &refusal(
                400_040,
                serde_json::json!({"credentialError": "KeyTypeNotAllowed", "credentialMessage": "RSA-4096"}),
            ),
        ));
        assert!(
            rejected
                .message
                .contains("credentialError: KeyTypeNotAllowed, RSA-4096"),
            "{}",
            rejected.message
        );
        assert_eq!(rejected.tracking_id.as_deref(), Some("t-1"));
    }

    #[test]
    fn method_timeouts_stop_at_300_s() {
        assert_eq!(method_timeout(300.0).unwrap(), Duration::from_secs(300));
        assert_eq!(method_timeout(0.5).unwrap(), Duration::from_millis(500));
        for refused in [300.5, 3600.0, 0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(method_timeout(refused), Err(Error::Config(_))),
                "{refused}"
            );
        }
        let message = method_timeout(301.0).unwrap_err().to_string();
        assert!(message.contains("at most 300 s"), "{message}");
    }

    #[test]
    fn telemetry_size_counts_body_and_properties_up_to_256_kb() {
        let mut message = TelemetryMessage::new(vec![0u8; MAX_TELEMETRY_BYTES - 40]);
        message.content_type = Some("application/json".into());
        message.properties.push(("k".into(), "v".into()));
        let bag = message.property_bag().len();
        assert!(bag > 0);
        assert_eq!(message.size(), MAX_TELEMETRY_BYTES - 40 + bag);
        // Exactly at the limit passes; one byte more, of body or of properties, does not.
        message.body = Bytes::from(vec![0u8; MAX_TELEMETRY_BYTES - bag]);
        message.check_size().unwrap();
        message.body = Bytes::from(vec![0u8; MAX_TELEMETRY_BYTES - bag + 1]);
        assert!(matches!(message.check_size(), Err(Error::Config(_))));
        message.body = Bytes::from(vec![0u8; MAX_TELEMETRY_BYTES - bag]);
        message.properties[0].1.push('w');
        assert!(matches!(message.check_size(), Err(Error::Config(_))));
    }
}
