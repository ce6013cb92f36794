//! The device side of DPS: register over MQTT with an X.509 certificate or a SAS token, poll
//! the operation until it is assigned or fails, honour `retry-after`, give up at a deadline.
//! Written to the documented protocol so the same code works against Azure and the emulator,
//! on the same lean MQTT connection as the hub client ([`crate::transport::mqtt`]) and with
//! DPS's vocabulary from [`crate::protocol::dps`]. A request with a CSR asks DPS for an
//! operational certificate (Azure's certificate management preview); the chain it answers is
//! checked to be the one asked for before it reaches the caller. Every step (dial, TLS,
//! CONNECT, each request and answer) can be observed through [`RegistrationHooks::trace`],
//! which `dpskit doctor --connect` records and fleets leave at its no-op default.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{Connect, ConnectAuth, ConnectReturnCode, Packet, PubAck, Publish, QoS, Subscribe};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::pki::{
    Certificate, CertificateRequest, Credential, DeviceCredential, KeyAlgorithm, PrivateKey,
};
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
    /// A certificate signing request for the device's operational certificate (CN = the
    /// registration id): sent as `csr` on [`wire::CSR_API_VERSION`], and DPS answers with
    /// the certificate its enrollment's policy issued ([`RegistrationResult::issued_chain`]).
    pub csr: Option<CertificateRequest>,
    /// The clock SAS tokens are signed with: the system clock, or the clock of the local cloud
    /// the device lives in (whose time may have been moved forward).
    pub clock: Clock,
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
    /// The certificate DPS issued for the request's CSR, then its issuers up to the root;
    /// checked to be a chain issued for that CSR ([`check_issued_chain`]). Empty without a CSR.
    pub issued_chain: Vec<Certificate>,
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

    /// One step of the registration as the device sees it (`dpskit doctor --connect` prints
    /// them); the default ignores it, so a fleet pays for nothing but the call.
    fn trace(&self, step: TraceEvent<'_>) {
        let _ = step;
    }
}

/// A step of one registration, as [`RegistrationHooks::trace`] is told it. Borrowed: a hook
/// that keeps nothing copies nothing. Never a secret: the SAS token is not part of it.
#[derive(Debug)]
pub(crate) enum TraceEvent<'a> {
    /// About to open a TCP connection to `host:port`.
    Dial {
        /// DPS's host.
        host: &'a str,
        /// Its port.
        port: u16,
    },
    /// TCP is open.
    Connected,
    /// The TLS handshake is done.
    Tls {
        /// The server's chain as it presented it (DER), its own certificate first.
        server_chain: &'a [rustls::pki_types::CertificateDer<'static>],
        /// The credential the device presented (`Credential::sent_chain` is what it sent);
        /// `None` with a symmetric key.
        client: Option<&'a Credential>,
    },
    /// CONNECT sent with this username.
    Connect {
        /// The username (the SAS token, if any, goes in the password and is not shown).
        username: &'a str,
    },
    /// The CONNACK's return code.
    ConnAck {
        /// As rumqttc names it.
        code: ConnectReturnCode,
    },
    /// SUBSCRIBE sent.
    Subscribe {
        /// The filter.
        filter: &'a str,
    },
    /// The register request sent.
    Register {
        /// Its topic.
        topic: &'a str,
        /// Its body.
        body: &'a str,
    },
    /// An operation status poll sent.
    Poll {
        /// Its topic.
        topic: &'a str,
    },
    /// An answer from DPS.
    Answer {
        /// The status its topic carries.
        status: u16,
        /// Its `retry-after`, if any.
        retry_after: Option<u32>,
        /// Its body.
        body: &'a [u8],
    },
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
        csr: request.csr.as_ref().map(CertificateRequest::to_base64),
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
    let client_version = concat!("dpskit/", env!("CARGO_PKG_VERSION"));
    // Only a CSR needs the preview api-version: without one the request stays what the
    // official SDKs send.
    let username = match &request.csr {
        Some(_) => {
            wire::username_with(&request.id_scope, id, wire::CSR_API_VERSION, client_version)
        }
        None => wire::username(&request.id_scope, id, client_version),
    };
    let mut connect = Connect::new(id.clone());
    connect.keep_alive = KEEP_ALIVE_SECONDS;
    connect.clean_session = true;
    connect.auth = match &request.auth {
        DeviceAuth::X509(_) => ConnectAuth::Username { username },
        DeviceAuth::SymmetricKey(key) => {
            let expiry = request.clock.now() + SAS_TTL_SECONDS;
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
    let username = match &connect.auth {
        ConnectAuth::Username { username } | ConnectAuth::UsernamePassword { username, .. } => {
            username.clone()
        }
        _ => String::new(),
    };
    hooks.trace(TraceEvent::Dial {
        host: &request.host,
        port: request.port,
    });
    let observe = |step: mqtt::DialStep<'_>| match step {
        mqtt::DialStep::Connected => hooks.trace(TraceEvent::Connected),
        mqtt::DialStep::TlsDone { server_chain } => {
            hooks.trace(TraceEvent::Tls {
                server_chain,
                client: request.auth.credential(),
            });
            // The CONNECT goes right after the handshake (or the WebSocket upgrade).
            hooks.trace(TraceEvent::Connect {
                username: &username,
            });
        }
    };
    let dialled = tokio::time::timeout(
        CONNECT_TIMEOUT,
        mqtt::dial_observed(
            &request.host,
            request.port,
            &request.via,
            tls,
            connect,
            MAX_PACKET_BYTES,
            &observe,
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
    hooks.trace(TraceEvent::ConnAck { code: ack.code });
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
    hooks.trace(TraceEvent::Subscribe {
        filter: wire::RESPONSE_FILTER,
    });
    session.subscribe(wire::RESPONSE_FILTER).await?;
    let mut rid: u32 = 0;
    let mut pending_operation: Option<String> = None;
    let mut pacer = PollPacer::default();
    let mut refusals: u32 = 0;
    loop {
        let (topic, payload) = match session.next().await? {
            Packet::SubAck(_) => {
                rid += 1;
                let topic = register_topic(rid);
                hooks.trace(TraceEvent::Register {
                    topic: &topic,
                    body: &body,
                });
                session.publish(topic, &body).await?;
                continue;
            }
            Packet::Publish(publish) => {
                if publish.qos != QoS::AtMostOnce {
                    session
                        .send(Packet::PubAck(PubAck::new(publish.pkid)))
                        .await?;
                }
                if let Ok((status, retry_after)) =
                    parse_response_topic(&String::from_utf8_lossy(&publish.topic))
                {
                    hooks.trace(TraceEvent::Answer {
                        status,
                        retry_after,
                        body: &publish.payload,
                    });
                }
                (publish.topic, publish.payload)
            }
            _ => continue,
        };
        let next = match interpret(id, &request.auth, &topic, &payload)
            .and_then(|reply| with_issued_chain(reply, request.csr.as_ref()))
        {
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
                    None => {
                        let topic = register_topic(rid);
                        hooks.trace(TraceEvent::Register {
                            topic: &topic,
                            body: &body,
                        });
                        session.publish(topic, &body).await?
                    }
                    Some(op) => {
                        let topic = poll_topic(rid, op);
                        hooks.trace(TraceEvent::Poll { topic: &topic });
                        session.publish(topic, " ").await?
                    }
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
                let topic = poll_topic(rid, &operation_id);
                hooks.trace(TraceEvent::Poll { topic: &topic });
                session.publish(topic, " ").await?;
                pending_operation = Some(operation_id);
            }
            Reply::Assigned(result, _) => {
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
    /// The registration is assigned; with the issued chain as DPS sent it (base64 DER), not
    /// yet checked.
    Assigned(Box<RegistrationResult>, Option<Vec<String>>),
}

/// An assigned answer's chain checked against the CSR sent ([`check_issued_chain`]): what a
/// device with a CSR must get back before it trusts the answer. A chain nobody asked for is
/// ignored (the device has no key for it).
fn with_issued_chain(reply: Reply, csr: Option<&CertificateRequest>) -> Result<Reply> {
    let Reply::Assigned(mut result, chain) = reply else {
        return Ok(reply);
    };
    if let Some(csr) = csr {
        let Some(chain) = chain.filter(|c| !c.is_empty()) else {
            return Err(Error::protocol(format!(
                "DPS assigned {} without issuing a certificate for its CSR: the enrollment has \
                 no certificate policy (link a Device Registry policy to it, or register \
                 without a CSR)",
                result.registration_id
            )));
        };
        let expected = result.registration_id.clone();
        result.issued_chain = check_issued_chain(&chain, csr, &expected, "DPS")?;
    }
    Ok(Reply::Assigned(result, None))
}

/// The CSR a device sends for its operational certificate and the key it is for: a new key of
/// `algorithm` and a CSR with CN = `common_name`; or the caller's `csr` (PEM or DER, its
/// signature checked) with its `key` when the caller has it. A key that is not the CSR's is a
/// [`Error::Config`]: the issued certificate could never be used with it.
pub fn certificate_request(
    common_name: &str,
    csr: Option<&[u8]>,
    key: Option<&[u8]>,
    algorithm: KeyAlgorithm,
) -> Result<(CertificateRequest, Option<PrivateKey>)> {
    let key = key.map(|k| PrivateKey::from_bytes(k, None)).transpose()?;
    let Some(csr) = csr else {
        let key = match key {
            Some(key) => key,
            None => PrivateKey::generate(algorithm)?,
        };
        let request = CertificateRequest::generate(common_name, &key)?;
        return Ok((request, Some(key)));
    };
    let request = CertificateRequest::from_pem_or_der(csr)?;
    if let Some(key) = &key
        && key.public_key_der() != request.public_key_der()
    {
        return Err(Error::config(
            "the private key given is not the CSR's: the issued certificate would be for \
             another key",
        ));
    }
    Ok((request, key))
}

/// A new key of `algorithm` and a CSR for it with CN = `common_name`, made on the blocking
/// pool (an RSA key takes long enough to stall the devices sharing a worker).
pub async fn new_certificate_request(
    common_name: &str,
    algorithm: KeyAlgorithm,
) -> Result<(CertificateRequest, PrivateKey)> {
    let common_name = common_name.to_string();
    let (csr, key) = tokio::task::spawn_blocking(move || {
        certificate_request(&common_name, None, None, algorithm)
    })
    .await
    .map_err(|e| Error::config_caused("making a device key failed", e))??;
    let key = key.ok_or_else(|| Error::config("no key was made for the CSR"))?;
    Ok((csr, key))
}

/// The credential an issued chain makes with the key its CSR was made for: the leaf, the key,
/// and the issuers (issuing CA, root), ready for the hub.
pub fn issued_credential(chain: &[Certificate], key: PrivateKey) -> Result<DeviceCredential> {
    let (leaf, issuers) = chain
        .split_first()
        .ok_or_else(|| Error::cert("an issued chain holds at least the device certificate"))?;
    DeviceCredential::new(Credential::new(leaf.clone(), key, issuers.to_vec())?)
}

/// Reads an issued chain (base64 DER, as DPS and IoT Hub send it) and checks it is one for
/// `csr`: the leaf first with the CSR's public key and CN = `common_name`, each certificate
/// signed by the next. `who` names the sender in the errors. Anything else is a
/// [`Error::Protocol`] naming what is wrong: a device must not install a credential that
/// cannot work.
pub(crate) fn check_issued_chain(
    chain: &[String],
    csr: &CertificateRequest,
    common_name: &str,
    who: &str,
) -> Result<Vec<Certificate>> {
    use base64::Engine;
    if chain.is_empty() {
        return Err(Error::protocol(format!(
            "{who} issued an empty certificate chain"
        )));
    }
    let certificates = chain
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let der = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| {
                    Error::protocol_caused(
                        format!("certificate {i} of the chain {who} issued is not base64"),
                        e,
                    )
                })?;
            Certificate::from_der(&der).map_err(|e| {
                Error::protocol_caused(
                    format!(
                        "certificate {i} of the chain {who} issued is not an X.509 certificate"
                    ),
                    e,
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let leaf = &certificates[0];
    if leaf.parsed().public_key().raw != csr.public_key_der() {
        return Err(Error::protocol(format!(
            "the first certificate {who} issued ({}) is not for the CSR's key: the chain must \
             start with the device's own certificate",
            crate::pki::chain::describe(leaf)
        )));
    }
    let cn = leaf.info().common_name.as_deref();
    if cn != Some(common_name) {
        return Err(Error::protocol(format!(
            "the certificate {who} issued has CN {} but the device is '{common_name}'",
            cn.map_or_else(|| "(none)".to_string(), |cn| format!("'{cn}'"))
        )));
    }
    for (i, pair) in certificates.windows(2).enumerate() {
        let (child, issuer) = (&pair[0], &pair[1]);
        if !issuer.is_issuer_name_of(child) || !child.is_signed_by(issuer) {
            return Err(Error::protocol(format!(
                "certificate {i} of the chain {who} issued ({}) is not signed by certificate {} \
                 ({}): the chain must run from the leaf to the root, each issued by the next",
                crate::pki::chain::describe(child),
                i + 1,
                crate::pki::chain::describe(issuer)
            )));
        }
    }
    Ok(certificates)
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
            Ok(Reply::Assigned(
                Box::new(RegistrationResult {
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
                    issued_chain: Vec::new(),
                }),
                state.issued_certificate_chain,
            ))
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
/// credential: the offline checks' problems (the rules `dpskit doctor` applies too, written
/// once in `crate::diagnosis::offline`), and a chain that stops at the leaf, which is only a
/// warning before DPS is asked but the likely cause once it refused.
fn diagnose(registration_id: &str, auth: &DeviceAuth) -> Vec<String> {
    use crate::diagnosis::credential::{CredentialSource, HeldCredential};
    use crate::diagnosis::{Verdict, offline};
    let DeviceAuth::X509(credential) = auth else {
        return Vec::new();
    };
    // The key belongs to the leaf (`Credential` checked it), so it is not handed over.
    let held = HeldCredential {
        source: CredentialSource::InMemory,
        certificates: std::iter::once(credential.certificate())
            .chain(credential.issuers())
            .cloned()
            .collect(),
        key: None,
    };
    let options = offline::OfflineOptions {
        registration_id: Some(registration_id),
        now: crate::clock::now(),
        expiry_warning_days: 0,
    };
    offline::check(&held, &options)
        .into_iter()
        .filter(|c| {
            c.verdict == Verdict::Problem
                || c.verdict == Verdict::Warning && c.id == offline::CHAIN_COMPLETE
        })
        .map(|c| c.evidence)
        .collect()
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
            csr: None,
            clock: crate::clock::Clock::system(),
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

    /// A root, an issuing CA under it, and a leaf it issued for a CSR: what DPS and the hub
    /// send back, as base64 DER (leaf, ICA, root), with the CSR.
    fn issued(cn: &str) -> (Vec<String>, CertificateRequest, Vec<Certificate>) {
        use crate::pki::{CaOptions, CertificateAuthority, Validity};
        use base64::Engine;
        let options = |path_length| CaOptions {
            algorithm: KeyAlgorithm::EcP384,
            validity: Validity::days(5, None).unwrap(),
            path_length,
            organization: None,
        };
        let root = CertificateAuthority::create_root("ns Root CA", &options(None)).unwrap();
        let ica = root
            .create_intermediate("ns policy ICA", &options(Some(0)))
            .unwrap();
        let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        let csr = CertificateRequest::generate(cn, &key).unwrap();
        let leaf = ica
            .issue_for_request(&csr, cn, Validity::days(30, None).unwrap())
            .unwrap();
        let chain = vec![
            leaf,
            ica.credential().certificate().clone(),
            root.credential().certificate().clone(),
        ];
        let text = chain
            .iter()
            .map(|c| base64::engine::general_purpose::STANDARD.encode(c.der()))
            .collect();
        (text, csr, chain)
    }

    fn protocol_message(result: Result<Vec<Certificate>>) -> String {
        match result {
            Err(Error::Protocol(detail)) => detail.to_string(),
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn an_issued_chain_for_the_csr_in_order_is_accepted() {
        let (text, csr, chain) = issued("dev-1");
        let checked = check_issued_chain(&text, &csr, "dev-1", "DPS").unwrap();
        assert_eq!(checked, chain);
        // The leaf and its issuing CA alone (no root) are a chain too.
        assert_eq!(
            check_issued_chain(&text[..2], &csr, "dev-1", "DPS").unwrap(),
            chain[..2]
        );
    }

    #[test]
    fn an_issued_chain_out_of_order_is_refused_naming_the_link() {
        let (mut text, csr, _) = issued("dev-1");
        text.swap(1, 2);
        let message = protocol_message(check_issued_chain(&text, &csr, "dev-1", "DPS"));
        assert!(
            message.contains("certificate 0 of the chain DPS issued")
                && message.contains("not signed by certificate 1"),
            "{message}"
        );
        // Root first: the leaf is not first, so the key is not the CSR's.
        let (mut text, csr, _) = issued("dev-1");
        text.reverse();
        let message = protocol_message(check_issued_chain(&text, &csr, "dev-1", "the hub"));
        assert!(message.contains("not for the CSR's key"), "{message}");
    }

    #[test]
    fn an_issued_certificate_for_another_key_or_device_is_refused() {
        let (text, _, _) = issued("dev-1");
        let (_, foreign, _) = issued("dev-1");
        let message = protocol_message(check_issued_chain(&text, &foreign, "dev-1", "DPS"));
        assert!(message.contains("not for the CSR's key"), "{message}");
        let (text, csr, _) = issued("dev-1");
        let message = protocol_message(check_issued_chain(&text, &csr, "dev-2", "DPS"));
        assert!(
            message.contains("has CN 'dev-1' but the device is 'dev-2'"),
            "{message}"
        );
    }

    #[test]
    fn an_issued_chain_that_does_not_decode_is_refused() {
        let (_, csr, _) = issued("dev-1");
        let message = protocol_message(check_issued_chain(&[], &csr, "dev-1", "DPS"));
        assert!(message.contains("empty certificate chain"), "{message}");
        let message = protocol_message(check_issued_chain(&["!!".into()], &csr, "dev-1", "DPS"));
        assert!(
            message.contains("certificate 0") && message.contains("not base64"),
            "{message}"
        );
        let message = protocol_message(check_issued_chain(
            &["TUlJQg==".into()],
            &csr,
            "dev-1",
            "DPS",
        ));
        assert!(message.contains("not an X.509 certificate"), "{message}");
    }

    #[test]
    fn an_assigned_answer_without_the_chain_a_csr_asked_for_is_an_error() {
        let result = || {
            Box::new(RegistrationResult {
                status: "assigned".into(),
                registration_id: "dev-1".into(),
                assigned_hub: Some("hub".into()),
                device_id: Some("dev-1".into()),
                substatus: None,
                etag: None,
                created: None,
                last_updated: None,
                payload: None,
                operation_id: "op".into(),
                issued_chain: Vec::new(),
            })
        };
        let (text, csr, chain) = issued("dev-1");
        let error = with_issued_chain(Reply::Assigned(result(), None), Some(&csr)).unwrap_err();
        assert!(matches!(error, Error::Protocol(_)), "{error:?}");
        assert!(
            error.to_string().contains("no certificate policy"),
            "{error}"
        );
        match with_issued_chain(Reply::Assigned(result(), Some(text.clone())), Some(&csr)) {
            Ok(Reply::Assigned(r, _)) => assert_eq!(r.issued_chain, chain),
            other => panic!("{other:?}"),
        }
        // Without a CSR, a chain is nobody's: ignored.
        match with_issued_chain(Reply::Assigned(result(), Some(text)), None) {
            Ok(Reply::Assigned(r, _)) => assert!(r.issued_chain.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_csr_is_made_for_a_new_key_or_checked_against_the_given_one() {
        let (csr, key) = certificate_request("dev-1", None, None, KeyAlgorithm::EcP384).unwrap();
        let key = key.unwrap();
        assert_eq!(csr.common_name(), Some("dev-1"));
        assert_eq!(key.algorithm(), KeyAlgorithm::EcP384);
        let pem = csr.to_pem();
        let key_pem = key.pkcs8_pem();
        let (again, with_key) = certificate_request(
            "x",
            Some(pem.as_bytes()),
            Some(key_pem.as_bytes()),
            KeyAlgorithm::EcP256,
        )
        .unwrap();
        assert_eq!(again.der(), csr.der());
        assert!(with_key.is_some());
        let (_, none) =
            certificate_request("x", Some(csr.der()), None, KeyAlgorithm::EcP256).unwrap();
        assert!(none.is_none());
        let other = PrivateKey::generate(KeyAlgorithm::EcP256)
            .unwrap()
            .pkcs8_pem();
        let error = certificate_request(
            "x",
            Some(pem.as_bytes()),
            Some(other.as_bytes()),
            KeyAlgorithm::EcP256,
        )
        .unwrap_err();
        assert!(matches!(error, Error::Config(_)), "{error:?}");
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
