//! The device side of DPS: register over MQTT with an X.509 certificate or a SAS token, poll
//! the operation until it is assigned or fails, honour `retry-after`, give up at a deadline.
//! Written to the documented protocol so the same code works against Azure and the emulator,
//! on the same lean MQTT connection as the hub client ([`crate::transport::mqtt`]) and with
//! DPS's vocabulary from [`crate::protocol::dps`].

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{Connect, ConnectAuth, ConnectReturnCode, Packet, PubAck, Publish, QoS, Subscribe};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::pki::Credential;
use crate::protocol::dps::{
    self as wire, DeviceRegistration, RegistrationOperationStatus, Request, Response,
};
// Where the device clients' callers have always found it; it lives in the transport.
pub(crate) use crate::transport::Trust;
use crate::transport::jittered_backoff;
use crate::transport::mqtt::{self, DialError, FrameError, Framed, Via};

/// SAS tokens are valid this long (the Python SDK's default).
const SAS_TTL_SECONDS: i64 = 3600;
/// DPS's largest message: 96 KB ("Azure IoT Hub Device Provisioning Service quotas and
/// limits", not adjustable; the wire spec's section 6). A register request over it is refused
/// before dialling, with [`Error::Config`].
pub(crate) const MAX_REGISTRATION_BYTES: usize = crate::limits::MAX_DPS_MESSAGE_BYTES;
/// The largest MQTT packet the client reads (what it sends is held to
/// [`MAX_REGISTRATION_BYTES`]). DPS's answers echo the payload of a custom allocation and
/// carry the registration state around it, so this leaves room above
/// [`MAX_REGISTRATION_BYTES`] (256 KB, IoT Hub's own message ceiling).
const MAX_PACKET_BYTES: usize = 256 * 1024;
/// Seconds between keep-alive pings: the Python SDK's default, well inside what DPS allows
/// (the Python SDK accepts 1 to 1,740) and IoT Hub's ceiling of 1,177 s.
const KEEP_ALIVE_SECONDS: u16 = 60;
/// TCP, TLS and CONNACK must be done within this long (what the rumqttc event loop this
/// client used to run on allowed): a server that takes the connection but never answers
/// is a transport failure the caller may retry, long before the request's deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a device proves who it is.
#[derive(Clone)]
pub enum DeviceAuth {
    /// Certificate + key; the chain (leaf + intermediates) is sent in the TLS handshake.
    X509(Arc<Credential>),
    /// A device key (base64): an individual key or one derived from a group key.
    SymmetricKey(String),
}

impl std::fmt::Debug for DeviceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceAuth::X509(c) => f.debug_tuple("X509").field(c.certificate()).finish(),
            DeviceAuth::SymmetricKey(_) => f.write_str("SymmetricKey(<redacted>)"),
        }
    }
}

/// One provisioning request.
#[derive(Debug, Clone)]
pub struct ProvisioningRequest {
    /// DPS host (Azure: `global.azure-devices-provisioning.net`).
    pub host: String,
    /// Port: 8883 for MQTT over TLS, 443 over WebSockets (Azure's; the emulator's web port).
    pub port: u16,
    /// MQTT over TLS or WebSockets, and the proxy if any.
    pub via: Via,
    /// ID scope.
    pub id_scope: String,
    /// Registration id.
    pub registration_id: String,
    /// Credential.
    pub auth: DeviceAuth,
    /// Custom payload sent with the request.
    pub payload: Option<Value>,
    /// Give up after this long.
    pub timeout: Duration,
}

/// What DPS answered.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationResult {
    /// `assigned` (errors are returned as [`Error`]).
    pub status: String,
    /// Registration id.
    pub registration_id: String,
    /// Assigned hub host name.
    pub assigned_hub: Option<String>,
    /// Device id in that hub.
    pub device_id: Option<String>,
    /// `initialAssignment`, ...
    pub substatus: Option<String>,
    /// Record etag.
    pub etag: Option<String>,
    /// First registration time (Azure's string).
    pub created: Option<String>,
    /// Last registration time.
    pub last_updated: Option<String>,
    /// Payload returned by custom allocation.
    pub payload: Option<Value>,
    /// DPS operation id.
    pub operation_id: String,
}

impl DeviceAuth {
    /// The certificate and key the device presents in the TLS handshake (none for a key).
    pub(crate) fn credential(&self) -> Option<&Credential> {
        match self {
            DeviceAuth::X509(credential) => Some(credential),
            DeviceAuth::SymmetricKey(_) => None,
        }
    }
}

/// A future a [`RegistrationHooks`] method returns.
pub(crate) type HookFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// What a registration tells its caller as it goes, and how it waits between two requests.
/// The defaults count nothing and simply sleep.
pub(crate) trait RegistrationHooks: Send + Sync {
    /// DPS answered 429 or 5xx; the device is about to wait and ask again (fleets count those
    /// retries as they happen).
    fn throttled(&self) {}

    /// Waits until `until`, when DPS's `retry-after` and the poll pacing let the next request
    /// go. The connection stays open but idle meanwhile: a fleet gives back the slot that
    /// bounds its handshakes and requests here, and takes one again before returning.
    fn wait_until(&self, until: tokio::time::Instant) -> HookFuture<'_> {
        Box::pin(tokio::time::sleep_until(until))
    }
}

/// Sleeps and counts nothing.
struct NoHooks;

impl RegistrationHooks for NoHooks {}

/// Registers a device with DPS and waits for the final answer.
pub async fn provision(request: &ProvisioningRequest, trust: &Trust) -> Result<RegistrationResult> {
    provision_observed(request, trust, &NoHooks).await
}

/// [`provision`], telling `hooks` of every 429 or 5xx the service answers and letting them
/// do the waiting between requests.
pub(crate) async fn provision_observed(
    request: &ProvisioningRequest,
    trust: &Trust,
    hooks: &dyn RegistrationHooks,
) -> Result<RegistrationResult> {
    let deadline = tokio::time::Instant::now() + request.timeout;
    match tokio::time::timeout_at(deadline, exchange(request, trust, hooks)).await {
        Ok(result) => result,
        Err(_) => Err(Error::timeout(format!(
            "provisioning {} did not finish within {:.1} s",
            request.registration_id,
            request.timeout.as_secs_f64()
        ))),
    }
}

async fn exchange(
    request: &ProvisioningRequest,
    trust: &Trust,
    hooks: &dyn RegistrationHooks,
) -> Result<RegistrationResult> {
    let id = &request.registration_id;
    let body = serde_json::to_string(&DeviceRegistration {
        registration_id: id.clone(),
        payload: request.payload.clone(),
        csr: None,
    })
    .map_err(|e| Error::protocol_caused("cannot encode the registration request", e))?;
    if body.len() > MAX_REGISTRATION_BYTES {
        // DPS would refuse it; refused here, the caller learns why instead of seeing a
        // dropped connection.
        return Err(Error::config(format!(
            "a registration request is at most {MAX_REGISTRATION_BYTES} bytes (DPS's 96 KB \
             message limit); the one for {id} has {} with its payload",
            body.len()
        )));
    }
    let username = wire::username(
        &request.id_scope,
        id,
        concat!("dpskit/", env!("CARGO_PKG_VERSION")),
    );
    let mut connect = Connect::new(id.clone());
    connect.keep_alive = KEEP_ALIVE_SECONDS;
    connect.clean_session = true;
    connect.auth = match &request.auth {
        DeviceAuth::X509(_) => ConnectAuth::Username { username },
        DeviceAuth::SymmetricKey(key) => {
            let expiry = crate::clock::now() + SAS_TTL_SECONDS;
            let token = crate::sas::build_token(
                &wire::sas_audience(&request.id_scope, id),
                key,
                expiry,
                Some("registration"),
            )?;
            ConnectAuth::UsernamePassword {
                username,
                password: token.into_bytes().into(),
            }
        }
    };
    // One registration per connection, and a retry builds a new configuration: a session
    // cache would never be used.
    let tls = Arc::new(trust.client_config(request.auth.credential(), 0)?);
    let dialled = tokio::time::timeout(
        CONNECT_TIMEOUT,
        mqtt::dial(
            &request.host,
            request.port,
            &request.via,
            tls,
            connect,
            MAX_PACKET_BYTES,
        ),
    )
    .await
    .map_err(|_| {
        Error::transport(format!(
            "connection to DPS failed for {id}: no CONNACK within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))
    })?;
    let (framed, ack) = dialled.map_err(|e| connection_error(id, e))?;
    if ack.code != ConnectReturnCode::Success {
        return Err(Error::Service(Box::new(crate::error::ServiceFailure {
            status: 401,
            error_code: None,
            message: format!(
                "DPS refused the connection of {id}: {:?} (wrong ID scope, or a bad or expired SAS token)",
                ack.code
            ),
            tracking_id: None,
            retry_after: None,
        })));
    }
    let mut session = Session::new(framed, id);
    // DPS answers on the subscription only: the request goes once it is in place.
    session.subscribe(wire::RESPONSE_FILTER).await?;
    let mut rid: u32 = 0;
    let mut pending_operation: Option<String> = None;
    let mut pacer = PollPacer::default();
    let mut refusals: u32 = 0;
    loop {
        let (topic, payload) = match session.next().await? {
            Packet::SubAck(_) => {
                rid += 1;
                session.publish(register_topic(rid), &body).await?;
                continue;
            }
            Packet::Publish(publish) => {
                if publish.qos != QoS::AtMostOnce {
                    session
                        .send(Packet::PubAck(PubAck::new(publish.pkid)))
                        .await?;
                }
                (publish.topic, publish.payload)
            }
            _ => continue,
        };
        let next = match interpret(id, &request.auth, &topic, &payload) {
            Ok(next) => next,
            Err(error) => {
                session.disconnect().await;
                return Err(error);
            }
        };
        match next {
            Reply::Throttled { retry_after } => {
                // Throttled or a service hiccup: repeat the same request after the advised
                // delay, or with exponential backoff and jitter when the service gave none.
                refusals += 1;
                hooks.throttled();
                let advised = tokio::time::Instant::now() + backoff(retry_after, refusals);
                hooks.wait_until(pacer.reserve(advised)).await;
                rid += 1;
                match &pending_operation {
                    None => session.publish(register_topic(rid), &body).await?,
                    Some(op) => session.publish(poll_topic(rid, op), " ").await?,
                }
            }
            Reply::Assigning {
                operation_id,
                retry_after,
            } => {
                let advised = tokio::time::Instant::now()
                    + Duration::from_secs(retry_after.unwrap_or(2).into());
                hooks.wait_until(pacer.reserve(advised)).await;
                rid += 1;
                session.publish(poll_topic(rid, &operation_id), " ").await?;
                pending_operation = Some(operation_id);
            }
            Reply::Assigned(result) => {
                session.disconnect().await;
                return Ok(*result);
            }
        }
    }
}

/// The device's one connection to DPS: the shared framed connection, its packet ids, and the
/// keep-alive pings sent while it waits for an answer.
struct Session<'a> {
    framed: Framed<mqtt::ClientStream>,
    id: &'a str,
    next_pkid: u16,
    ping_due: tokio::time::Instant,
    awaiting_pong: bool,
}

impl<'a> Session<'a> {
    const KEEP_ALIVE: Duration = Duration::from_secs(KEEP_ALIVE_SECONDS as u64);

    fn new(framed: Framed<mqtt::ClientStream>, id: &'a str) -> Self {
        Session {
            framed,
            id,
            next_pkid: 0,
            ping_due: tokio::time::Instant::now() + Self::KEEP_ALIVE,
            awaiting_pong: false,
        }
    }

    fn failed(&self, error: FrameError) -> Error {
        match error {
            FrameError::Malformed(e) => {
                Error::protocol_caused(format!("malformed packet from DPS for {}", self.id), e)
            }
            other => {
                Error::transport_caused(format!("connection to DPS failed for {}", self.id), other)
            }
        }
    }

    /// Writes one packet now; the keep-alive counts from here.
    async fn send(&mut self, packet: Packet) -> Result<()> {
        let sent = self.framed.send(&packet).await;
        self.ping_due = tokio::time::Instant::now() + Self::KEEP_ALIVE;
        sent.map_err(|e| self.failed(e))
    }

    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        self.next_pkid
    }

    /// Subscribes at QoS 1; the SUBACK comes through [`Session::next`].
    async fn subscribe(&mut self, filter: &str) -> Result<()> {
        let mut subscribe = Subscribe::new(filter, QoS::AtLeastOnce);
        subscribe.pkid = self.pkid();
        self.send(Packet::Subscribe(subscribe)).await
    }

    /// Publishes a request at QoS 1 (DPS's PUBACK is not waited for: its answer follows).
    async fn publish(&mut self, topic: String, payload: &str) -> Result<()> {
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload.as_bytes().to_vec());
        publish.pkid = self.pkid();
        self.send(Packet::Publish(publish)).await
    }

    /// The next packet from DPS, pinging while none comes; a PINGREQ unanswered by the next
    /// one fails the connection, as a silent server must not hold the device.
    async fn next(&mut self) -> Result<Packet> {
        loop {
            tokio::select! {
                read = self.framed.read() => {
                    return match read {
                        Ok(Some(Packet::PingResp)) => {
                            self.awaiting_pong = false;
                            continue;
                        }
                        Ok(Some(packet)) => Ok(packet),
                        Ok(None) => Err(Error::transport(format!(
                            "connection to DPS failed for {}: DPS closed the connection",
                            self.id
                        ))),
                        Err(e) => Err(self.failed(e)),
                    };
                }
                () = tokio::time::sleep_until(self.ping_due) => {
                    if self.awaiting_pong {
                        return Err(Error::transport(format!(
                            "connection to DPS failed for {}: no answer to PINGREQ",
                            self.id
                        )));
                    }
                    self.awaiting_pong = true;
                    self.send(Packet::PingReq).await?;
                }
            }
        }
    }

    /// Says goodbye (DISCONNECT, TLS close), best effort: the answer is already in hand.
    async fn disconnect(mut self) {
        let _ = self.framed.send(&Packet::Disconnect).await;
        let _ = self.framed.stream.shutdown().await;
    }
}

/// What a DPS reply asks of the device.
#[derive(Debug)]
enum Reply {
    /// 429 or 5xx: send the same request again, after `retry-after` seconds if given.
    Throttled { retry_after: Option<u32> },
    /// 202: poll the operation after `retry-after` seconds (2 without).
    Assigning {
        operation_id: String,
        retry_after: Option<u32>,
    },
    /// The registration is assigned.
    Assigned(Box<RegistrationResult>),
}

/// Reads one PUBLISH from DPS: its topic (status, retry-after) and JSON body. Anything DPS
/// would not send is a typed error (protocol, or the refusal the status says), never a panic:
/// the bytes come from the network.
fn interpret(id: &str, auth: &DeviceAuth, topic: &[u8], payload: &[u8]) -> Result<Reply> {
    let topic = String::from_utf8_lossy(topic);
    let (status, retry_after) = parse_response_topic(&topic)?;
    let body: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
    if status == 429 || status >= 500 {
        return Ok(Reply::Throttled { retry_after });
    }
    if status >= 300 {
        return Err(refused(id, status, &body, auth));
    }
    let reply = RegistrationOperationStatus::from_value(&body);
    match reply.status.as_deref() {
        Some("assigning") | Some("unassigned") => {
            let operation_id = reply
                .operation_id
                .ok_or_else(|| Error::protocol("a 202 reply without operationId"))?;
            Ok(Reply::Assigning {
                operation_id,
                retry_after,
            })
        }
        Some("assigned") => {
            let state = reply.registration_state.unwrap_or_default();
            Ok(Reply::Assigned(Box::new(RegistrationResult {
                status: "assigned".into(),
                registration_id: state.registration_id.unwrap_or_else(|| id.to_string()),
                assigned_hub: state.assigned_hub,
                device_id: state.device_id,
                substatus: state.substatus,
                etag: state.etag,
                created: state.created_date_time_utc,
                last_updated: state.last_updated_date_time_utc,
                payload: state.payload,
                operation_id: reply.operation_id.unwrap_or_default(),
            })))
        }
        _ => Err(refused(id, status, &body["registrationState"], auth)),
    }
}

fn register_topic(rid: u32) -> String {
    Request::Register {
        rid: rid.to_string(),
    }
    .topic()
}

fn poll_topic(rid: u32, operation_id: &str) -> String {
    Request::Poll {
        rid: rid.to_string(),
        operation_id: operation_id.to_string(),
    }
    .topic()
}

/// `$dps/registrations/res/{status}/?$rid=..[&retry-after=..]` → (status, retry-after).
fn parse_response_topic(topic: &str) -> Result<(u16, Option<u32>)> {
    Response::parse(topic)
        .map(|r| (r.status, r.retry_after))
        .ok_or_else(|| Error::protocol(format!("unexpected DPS response topic {topic:?}")))
}

/// At most 5 status polls in any 10 s, as DPS asks of clients (retry-after is honoured on top).
#[derive(Default)]
struct PollPacer {
    recent: std::collections::VecDeque<tokio::time::Instant>,
}

impl PollPacer {
    const WINDOW: Duration = Duration::from_secs(10);
    const MAX_IN_WINDOW: usize = 5;

    /// When the next poll may go, given DPS asked for no earlier than `advised`; that time is
    /// booked. Returned rather than slept on, so one wait covers both and whoever waits can
    /// give its resources back for all of it.
    fn reserve(&mut self, advised: tokio::time::Instant) -> tokio::time::Instant {
        while self
            .recent
            .front()
            .is_some_and(|t| advised.saturating_duration_since(*t) >= Self::WINDOW)
        {
            self.recent.pop_front();
        }
        let mut at = advised;
        if self.recent.len() >= Self::MAX_IN_WINDOW
            && let Some(oldest) = self.recent.pop_front()
        {
            at = at.max(oldest + Self::WINDOW);
        }
        self.recent.push_back(at);
        at
    }
}

/// How long to wait after a 429 or 5xx: the service's retry-after, else [`jittered_backoff`].
fn backoff(retry_after: Option<u32>, refusals: u32) -> Duration {
    match retry_after {
        Some(seconds) => Duration::from_secs(seconds.into()),
        None => jittered_backoff(refusals),
    }
}

/// What the device can tell about why its X.509 registration was refused, from its own
/// credential: the causes users hit most (see the wire-protocol notes, section 9).
fn diagnose(registration_id: &str, auth: &DeviceAuth) -> Vec<String> {
    let DeviceAuth::X509(credential) = auth else {
        return Vec::new();
    };
    let leaf = credential.certificate().info();
    let mut causes = Vec::new();
    match leaf.common_name.as_deref() {
        Some(cn) if cn != registration_id => causes.push(format!(
            "the certificate's CN is '{cn}' but the registration id is '{registration_id}': they must be equal"
        )),
        None => causes.push("the certificate has no CN: it must equal the registration id".into()),
        _ => {}
    }
    let intermediates = credential
        .issuers()
        .iter()
        .filter(|c| !c.info().is_self_signed)
        .count();
    // A leaf signed directly by a root it holds needs no intermediates.
    let signed_by_root = credential
        .issuers()
        .iter()
        .any(|c| c.info().is_self_signed && c.info().subject == leaf.issuer);
    if !leaf.is_self_signed && intermediates == 0 && !signed_by_root {
        causes.push(format!(
            "no chain is sent: the leaf is signed by '{}', and unless that is the CA DPS trusts \
             directly, the intermediates must be sent too (load the device from its full chain)",
            leaf.issuer
        ));
    }
    let now = crate::clock::now();
    if now > leaf.not_after {
        causes.push("the device certificate has expired".into());
    } else if now < leaf.not_before {
        causes.push("the device certificate is not valid yet (check the clock)".into());
    }
    causes
}

fn refused(id: &str, status: u16, body: &Value, auth: &DeviceAuth) -> Error {
    let details = crate::protocol::dps::ErrorDetails::from_value(body);
    let error_code = details.error_code;
    let message = details
        .message
        .as_deref()
        .or(details.error_message.as_deref())
        .unwrap_or("no message");
    let causes = diagnose(id, auth);
    let diagnosis = if causes.is_empty() {
        String::new()
    } else {
        format!(" | Likely cause: {}", causes.join("; "))
    };
    Error::RegistrationFailed {
        status: status.to_string(),
        error_code,
        message: format!(
            "DPS refused the registration of {id}: {status}{} {message}{diagnosis}",
            error_code.map(|c| format!(" ({c})")).unwrap_or_default()
        ),
    }
}

fn connection_error(id: &str, error: DialError) -> Error {
    match error {
        DialError::BadHost(e) => Error::config_caused(format!("DPS's host for {id}"), e),
        other => Error::transport_caused(format!("connection to DPS failed for {id}"), other),
    }
}

/// Provisions many devices concurrently (at most `concurrency` in flight) on the current
/// runtime; results keep the input order.
pub async fn provision_many(
    requests: Vec<ProvisioningRequest>,
    trust: Trust,
    concurrency: usize,
) -> Vec<(Result<RegistrationResult>, Duration)> {
    crate::transport::bounded::spawn_bounded(requests, concurrency, |request| {
        let trust = trust.clone();
        async move {
            let start = tokio::time::Instant::now();
            let result = provision(&request, &trust).await;
            (result, start.elapsed())
        }
    })
    .await
    .into_iter()
    .map(|joined| {
        joined.unwrap_or_else(|e| {
            (
                Err(Error::transport_caused("provisioning task failed", e)),
                Duration::ZERO,
            )
        })
    })
    .collect()
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// DPS's port closed: a transport error whose root cause is the operating system's
    /// "connection refused" (what Python raises TransportError from), with the words it
    /// always had.
    #[test]
    fn a_refused_connection_is_a_transport_error_caused_by_the_os_error() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let request = ProvisioningRequest {
            host: "127.0.0.1".into(),
            port,
            via: Via::default(),
            id_scope: "0ne00000000".into(),
            registration_id: "dev-1".into(),
            auth: DeviceAuth::SymmetricKey("AAAA".into()),
            payload: None,
            timeout: Duration::from_secs(30),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let error = runtime
            .block_on(provision(&request, &Trust::system()))
            .unwrap_err();
        assert!(matches!(error, Error::Transport(_)), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("connection to DPS failed for dev-1: cannot connect: "),
            "{error}"
        );
        let (root, path) = error.os_cause().expect("the OS error at the root");
        assert_eq!(root.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(path.is_none());
    }

    #[test]
    fn backoff_honours_retry_after_and_grows_with_jitter() {
        assert_eq!(backoff(Some(7), 3), Duration::from_secs(7));
        for refusals in 1..8 {
            let base = (1u64 << (refusals - 1).min(5)).min(30) as f64;
            let d = backoff(None, refusals).as_secs_f64();
            assert!(d >= base * 0.5 && d <= base * 1.5, "{refusals}: {d}");
        }
    }

    #[test]
    fn the_diagnosis_names_what_the_device_got_wrong() {
        use crate::pki::{CaOptions, CertificateAuthority, KeyAlgorithm, Validity};
        let options = |path_length| CaOptions {
            algorithm: KeyAlgorithm::EcP256,
            validity: Validity::days(5, None).unwrap(),
            path_length,
            organization: None,
        };
        let root = CertificateAuthority::create_root("Diag Root", &options(None)).unwrap();
        let inter = root
            .create_intermediate("Diag Inter", &options(Some(0)))
            .unwrap();
        let days = Validity::days(1, None).unwrap();
        // Signed by a root it holds: nothing to say.
        let direct = root
            .issue_device("dev-1", KeyAlgorithm::EcP256, days)
            .unwrap();
        assert!(diagnose("dev-1", &DeviceAuth::X509(direct.shared_credential())).is_empty());
        // With its intermediate: nothing; under another id: the CN.
        let full = inter
            .issue_device("dev-2", KeyAlgorithm::EcP256, days)
            .unwrap();
        assert!(diagnose("dev-2", &DeviceAuth::X509(full.shared_credential())).is_empty());
        let wrong = diagnose("dev-3", &DeviceAuth::X509(full.shared_credential()));
        assert_eq!(wrong.len(), 1);
        assert!(wrong[0].contains("CN is 'dev-2'"), "{wrong:?}");
        // The leaf alone: the chain is missing.
        let leaf_only = crate::pki::Credential::from_pem(
            full.credential().certificate().pem().as_bytes(),
            full.credential().key().pkcs8_pem().as_bytes(),
            None,
        )
        .unwrap();
        let missing = diagnose("dev-2", &DeviceAuth::X509(Arc::new(leaf_only)));
        assert!(
            missing.iter().any(|c| c.contains("no chain is sent")),
            "{missing:?}"
        );
        assert!(diagnose("x", &DeviceAuth::SymmetricKey("k".into())).is_empty());
    }

    #[test]
    fn the_pacer_allows_five_polls_per_ten_seconds() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut pacer = PollPacer::default();
            let start = tokio::time::Instant::now();
            for _ in 0..5 {
                tokio::time::sleep_until(pacer.reserve(tokio::time::Instant::now())).await;
            }
            assert!(start.elapsed() < Duration::from_millis(1));
            tokio::time::sleep_until(pacer.reserve(tokio::time::Instant::now())).await;
            assert!(start.elapsed() >= Duration::from_secs(10));
            // A later retry-after is kept when the window is already clear by then.
            let advised = tokio::time::Instant::now() + Duration::from_secs(30);
            assert_eq!(pacer.reserve(advised), advised);
        });
    }
}
