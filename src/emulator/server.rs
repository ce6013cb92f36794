//! The MQTT-over-TLS listener shared by DPS and the hubs: accepts connections (TCP_NODELAY),
//! completes TLS, waits for CONNECT within a deadline, routes by username, and runs the session.
//! [`session`] is the same for MQTT over WebSockets (`web.rs` hands over the upgraded stream).
//! Anything malformed closes that one connection, with a log line; the listener keeps serving.
//!
//! Identity is what the handshake proved: the presented chain exactly as presented, leaf first
//! (a certificate that does not parse, or a chain past the limit, refuses the client), and a
//! client id equal to the identity of the username. A DPS client must register within the
//! connect deadline; a hub session stops reading while `TELEMETRY_WINDOW` messages wait for
//! their PUBACK, so every queue between a connection and the store is bounded.
//!
//! The CONNECT's api-version switches the certificate management preview on: a DPS session
//! at 2025-07-01-preview or later may send a CSR; a hub session at 2025-08-01-preview or later
//! may subscribe to and publish on `$iothub/credentials/` (for any other they are unknown
//! topics, which close the connection). A SAS session ends when its token expires on the
//! cloud's clock.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rumqttc::{
    ConnAck, ConnectAuth, ConnectReturnCode, Packet, PubAck, Publish, QoS, SubAck,
    SubscribeReasonCode,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::emulator::dps::{DeviceIdentity, DpsEngine, Reply};
use crate::emulator::quotas::Throttled;
use crate::emulator::store::{SenderAuth, TelemetryRecord};
use crate::emulator::trace::{TraceEvent, Tracer, unix_now};
use crate::limits::HubOperation;
use crate::pki::Certificate;
use crate::protocol::credentials;
use crate::protocol::dps::{self, Request as DpsRequest};
use crate::protocol::hub::{CloudPublish, DeviceRequest, Subscription, TopicError, telemetry_bag};
use crate::protocol::{
    Route, api_version_at_least, parse_property_bag, route, username_api_version,
};
use crate::transport::mqtt::{Framed, MQTT_ENVELOPE_BYTES};
use crate::transport::websocket::MqttStream;

/// Listener limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time allowed for the TLS handshake plus CONNECT; a DPS client must also have sent its
    /// register request within it, so a connection that never registers cannot hold a slot.
    pub connect_timeout: Duration,
    /// Largest MQTT packet accepted, not counting a PUBLISH's topic and packet id: those may
    /// add up to [`MQTT_ENVELOPE_BYTES`], so that IoT Hub's largest message (256 KB of body
    /// and properties, the properties riding in the topic) fits under the default.
    pub max_packet_size: usize,
    /// Concurrent connections before new ones are refused.
    pub max_connections: usize,
    /// Most certificates a client may present (leaf included); longer chains are refused
    /// before any of them is parsed, so a hostile chain costs no CPU.
    pub max_chain_length: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 256 * 1024,
            max_connections: 20_000,
            max_chain_length: DEFAULT_MAX_CHAIN_LENGTH,
        }
    }
}

/// Leaf, up to eight intermediates and a root: deeper than any PKI the walkthrough builds or
/// Azure's documentation shows, far shorter than what makes chain building expensive.
pub(crate) const DEFAULT_MAX_CHAIN_LENGTH: usize = 10;

/// The certificates a client presented, leaf first, exactly as presented, or why they are
/// refused. Every one must parse: dropping one that does not would promote the next to leaf,
/// and the next may be someone else's public certificate while the handshake proved the key of
/// the dropped one.
pub(crate) fn presented_chain(
    presented: &[rustls::pki_types::CertificateDer<'_>],
    max_chain_length: usize,
) -> Result<Vec<Certificate>, String> {
    if presented.len() > max_chain_length {
        return Err(format!(
            "the client presented {} certificates; at most {max_chain_length} are accepted",
            presented.len()
        ));
    }
    presented
        .iter()
        .enumerate()
        .map(|(index, der)| {
            Certificate::from_der(der).map_err(|e| {
                let which = if index == 0 {
                    "the client's certificate".to_string()
                } else {
                    format!("certificate {} of the presented chain", index + 1)
                };
                format!("{which} cannot be parsed ({e})")
            })
        })
        .collect()
}

/// What every connection needs.
pub(crate) struct ServerContext {
    /// TLS acceptor with the emulator's certificate.
    pub acceptor: TlsAcceptor,
    /// DPS registration engine.
    pub dps: Arc<DpsEngine>,
    /// IoT Hub engine.
    pub hubs: Arc<crate::emulator::hub::HubEngine>,
    /// Exchange traces.
    pub tracer: Arc<Tracer>,
    /// Limits.
    pub limits: Limits,
    /// Connection slots.
    pub slots: Arc<Semaphore>,
}

/// Accepts connections on `listener` until the runtime shuts down.
pub(crate) async fn serve(listener: TcpListener, context: Arc<ServerContext>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                log::warn!("emulator: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = context.slots.clone().try_acquire_owned() else {
            log::warn!(
                "emulator: refusing {peer}: {} connections already open",
                context.limits.max_connections
            );
            continue;
        };
        let context = context.clone();
        tokio::spawn(async move {
            if let Err(reason) = handle(stream, &context).await {
                log::info!("emulator: closed {peer}: {reason}");
            }
            drop(permit);
        });
    }
}

/// A device connection's bytes: MQTT over TLS (8883), or over a WebSocket inside TLS (443,
/// handed over by the web listener once the upgrade is answered). One session code serves both.
pub(crate) type DeviceStream = MqttStream<TlsStream<TcpStream>, TokioIo<hyper::upgrade::Upgraded>>;

/// One client's connection: the shared framing (small buffers that grow with the traffic and
/// shrink back, so ten thousand idle connections fit in ~30 KB each) and the packet ids of
/// what the server publishes.
struct Connection {
    wire: Framed<DeviceStream>,
    next_pkid: u16,
}

impl Connection {
    /// Reads the next packet; `Ok(None)` when the peer closed the connection.
    async fn read(&mut self) -> Result<Option<Packet>, String> {
        self.wire.read().await.map_err(|e| e.to_string())
    }

    /// Encodes a packet into the output buffer without writing it yet.
    fn queue(&mut self, packet: Packet) -> Result<(), String> {
        self.wire.queue(&packet).map_err(|e| e.to_string())
    }

    /// Writes everything queued in one go.
    async fn flush(&mut self) -> Result<(), String> {
        self.wire.flush().await.map_err(|e| e.to_string())
    }

    async fn send(&mut self, packet: Packet) -> Result<(), String> {
        self.queue(packet)?;
        self.flush().await
    }

    /// Encodes a QoS 1 PUBLISH; returns its packet id.
    fn queue_publish(&mut self, topic: String, payload: Vec<u8>) -> Result<u16, String> {
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload);
        publish.pkid = self.next_pkid;
        self.queue(Packet::Publish(publish))?;
        Ok(self.next_pkid)
    }

    async fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<(), String> {
        self.queue_publish(topic, payload)?;
        self.flush().await
    }
}

async fn handle(stream: TcpStream, context: &ServerContext) -> Result<(), String> {
    // Without TCP_NODELAY small MQTT packets wait for delayed ACKs (~40 ms per exchange).
    stream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let deadline = context.limits.connect_timeout;
    let accepted_at = tokio::time::Instant::now();
    let tls = tokio::time::timeout(deadline, context.acceptor.accept(stream))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let chain = presented_chain(
        tls.get_ref().1.peer_certificates().unwrap_or_default(),
        context.limits.max_chain_length,
    );
    session(MqttStream::Tls(Box::new(tls)), chain, context, accepted_at).await
}

/// Runs one device connection once its transport is up, whichever it is: reads CONNECT within
/// the connect deadline (counted from `accepted_at`), routes it, and serves the session.
/// `chain` is what the TLS handshake under the stream proved.
pub(crate) async fn session(
    stream: DeviceStream,
    chain: Result<Vec<Certificate>, String>,
    context: &ServerContext,
    accepted_at: tokio::time::Instant,
) -> Result<(), String> {
    let deadline = context.limits.connect_timeout;
    let mut connection = Connection {
        wire: Framed::new(
            stream,
            context
                .limits
                .max_packet_size
                .saturating_add(MQTT_ENVELOPE_BYTES),
        ),
        next_pkid: 0,
    };
    let first = tokio::time::timeout(deadline, connection.read())
        .await
        .map_err(|_| "no CONNECT within the connect timeout".to_string())??;
    let connect = match first {
        Some(Packet::Connect(connect)) => connect,
        Some(other) => return Err(format!("expected CONNECT, got {:?}", other.packet_type())),
        None => return Ok(()),
    };
    let (username, password) = match &connect.auth {
        ConnectAuth::None => (None, None),
        ConnectAuth::Username { username } => (Some(username.as_str()), None),
        ConnectAuth::UsernamePassword { username, password } => {
            (Some(username.as_str()), Some(password.to_vec()))
        }
    };
    let keep_alive = connect.keep_alive;
    let client_id = connect.client_id.clone();
    let trace = SessionTrace {
        tracer: &context.tracer,
        client_id: &client_id,
    };
    trace.emit(|| TraceEvent {
        at: unix_now(),
        direction: "device->cloud",
        kind: "CONNECT".into(),
        topic: None,
        status: None,
        detail: format!(
            "client_id={client_id} username={} clean_session={} keep_alive={keep_alive} password={} client_certificates={}",
            username.unwrap_or(""),
            connect.clean_session,
            if password.is_some() {
                "<SAS token>"
            } else {
                "none"
            },
            match &chain {
                Ok(chain) => chain.len().to_string(),
                Err(why) => format!("refused: {why}"),
            }
        ),
    });
    match username.and_then(route) {
        Some(Route::Dps {
            id_scope,
            registration_id,
        }) => {
            // Every SDK sends the registration id as client id; DPS refuses a session that
            // claims one registration in the username and another in the client id.
            if !client_id.eq_ignore_ascii_case(&registration_id) {
                let why = format!(
                    "client id {client_id:?} is not the registration id {registration_id:?}"
                );
                return refuse(
                    &mut connection,
                    ConnectReturnCode::BadClientId,
                    &why,
                    &trace,
                    format!("DPS CONNECT refused: {why}"),
                )
                .await;
            }
            let identity = match context.dps.authenticate(
                &id_scope,
                &registration_id,
                password.as_deref(),
                chain,
            ) {
                Ok(identity) => DeviceIdentity {
                    csr_api_version: username
                        .and_then(username_api_version)
                        .is_some_and(|v| api_version_at_least(v, dps::CSR_API_VERSION)),
                    ..identity
                },
                Err((code, why)) => {
                    let log = format!("DPS CONNECT of {registration_id:?} refused: {why}");
                    return refuse(&mut connection, code, &why, &trace, log).await;
                }
            };
            trace.emit(|| connack_event(ConnectReturnCode::Success, "accepted"));
            connection
                .send(Packet::ConnAck(ConnAck::new(
                    ConnectReturnCode::Success,
                    false,
                )))
                .await?;
            // The register request is due within the same deadline as the CONNECT: DPS
            // connections exist to register, and one that never does must not keep its slot.
            let register_by = accepted_at + deadline;
            dps_session(
                &mut connection,
                context,
                &identity,
                (keep_alive, register_by),
                &trace,
            )
            .await
        }
        Some(Route::Hub {
            host,
            device_id,
            module_id,
        }) => {
            if module_id.is_some() {
                let log =
                    format!("module client {device_id:?}: module identities are not emulated yet");
                let why = "module identities are not emulated";
                return refuse(
                    &mut connection,
                    ConnectReturnCode::NotAuthorized,
                    why,
                    &trace,
                    log,
                )
                .await;
            }
            // IoT Hub requires the device id as client id: a client id naming another device
            // must not become that device's session.
            if client_id != device_id {
                let why = format!("client id {client_id:?} is not the device id {device_id:?}");
                return refuse(
                    &mut connection,
                    ConnectReturnCode::BadClientId,
                    &why,
                    &trace,
                    format!("hub CONNECT refused: {why}"),
                )
                .await;
            }
            // A presented chain that cannot be trusted refuses the connection, whatever the
            // credential: the hub never guesses which certificate the device meant.
            let authenticated = chain.and_then(|chain| {
                context
                    .hubs
                    .authenticate(&host, &device_id, password.as_deref(), &chain)
            });
            let (hub, identity) = match authenticated {
                Ok(found) => found,
                Err(why) => {
                    return refuse(
                        &mut connection,
                        ConnectReturnCode::NotAuthorized,
                        &why,
                        &trace,
                        format!("hub CONNECT of {device_id:?} refused: {why}"),
                    )
                    .await;
                }
            };
            if let Err(why) = context.hubs.admit_connection(&hub) {
                return refuse(
                    &mut connection,
                    ConnectReturnCode::ServiceUnavailable,
                    &why,
                    &trace,
                    format!("hub CONNECT of {device_id:?} refused: {why}"),
                )
                .await;
            }
            let clean_session = connect.clean_session;
            let mut session = context.hubs.open_session(&hub, &device_id, clean_session);
            trace.emit(|| connack_event(ConnectReturnCode::Success, "accepted"));
            connection
                .send(Packet::ConnAck(ConnAck::new(
                    ConnectReturnCode::Success,
                    session.session_present,
                )))
                .await?;
            if session.session_present {
                context.hubs.resume(&hub, &device_id);
            }
            // A SAS connection ends when its token expires (401003) in the cloud's time; SDKs
            // reconnect with a new one.
            let token_expiry = password
                .as_deref()
                .and_then(|p| std::str::from_utf8(p).ok())
                .and_then(|t| crate::sas::SasToken::parse(t).ok())
                .map(|t| t.expiry);
            let link = DeviceLink {
                hub: &hub,
                device_id: &device_id,
                keep_alive,
                token_expiry,
                // Renewal is served only to a device that connects with its api-version;
                // to any other its topics are unknown ones, which close the connection.
                renewal: username
                    .and_then(username_api_version)
                    .is_some_and(|v| api_version_at_least(v, credentials::API_VERSION)),
                // The identity at CONNECT stamps what this connection sends: a device deleted
                // and re-created later does not rewrite its earlier messages.
                sender: std::sync::Arc::new(identity.sender_auth()),
            };
            let will = connect.last_will.clone().and_then(|will| {
                let sender = &link.sender;
                will_record(&hub, &device_id, sender, will, context.hubs.enqueued_now())
            });
            let result = hub_session(&mut connection, context, &link, &mut session, &trace).await;
            context
                .hubs
                .close_session(&hub, &device_id, session.generation, clean_session);
            // IoT Hub forwards the will as telemetry when a device goes without DISCONNECT.
            if let Some(will) = will.filter(|_| result != Ok(SessionEnd::Disconnect))
                && let Err(e) = context.hubs.store_telemetry(will, None, None).await
            {
                log::warn!("emulator: storing the will of {device_id:?} failed: {e}");
            }
            result.map(|_| ())
        }
        None => {
            connection
                .send(Packet::ConnAck(ConnAck::new(
                    ConnectReturnCode::BadUserNamePassword,
                    false,
                )))
                .await?;
            Err(format!(
                "CONNECT username {:?} is neither a DPS nor a hub username",
                username.unwrap_or("")
            ))
        }
    }
}

/// Answers a CONNECT with the refusal `code` (traced with `why`) and ends the connection with
/// `log` as the reason.
async fn refuse(
    connection: &mut Connection,
    code: ConnectReturnCode,
    why: &str,
    trace: &SessionTrace<'_>,
    log: String,
) -> Result<(), String> {
    trace.emit(|| connack_event(code, why));
    connection
        .send(Packet::ConnAck(ConnAck::new(code, false)))
        .await?;
    Err(log)
}

/// The telemetry record a will becomes, or `None` (logged) when its topic is not the device's
/// telemetry topic, the only will topic IoT Hub accepts.
fn will_record(
    hub: &str,
    device_id: &str,
    sender: &std::sync::Arc<SenderAuth>,
    will: rumqttc::LastWill,
    enqueued: f64,
) -> Option<TelemetryRecord> {
    let Some(bag) = telemetry_bag(&will.topic, device_id) else {
        log::info!(
            "emulator: ignored the will of {device_id:?}: topic {:?} is not its telemetry topic",
            will.topic
        );
        return None;
    };
    let (mut properties, system_properties) = parse_property_bag(bag);
    properties.push(("iothub-MessageType".into(), "Will".into()));
    Some(TelemetryRecord {
        sequence: 0,
        hub: hub.to_ascii_lowercase(),
        device_id: device_id.to_string(),
        module_id: None,
        enqueued,
        body: will.message.to_vec(),
        properties,
        system_properties,
        sender: Some(sender.clone()),
    })
}

/// The topic of a device's PUBLISH, traced; QoS 2 is refused (DPS and IoT Hub close the
/// connection).
fn inbound_topic(publish: &Publish, trace: &SessionTrace<'_>) -> Result<String, String> {
    if publish.qos == QoS::ExactlyOnce {
        return Err("QoS 2 PUBLISH is not supported: the connection is closed".into());
    }
    // MQTT topics are UTF-8; a server closes the connection on anything else (MQTT-1.5.3-1)
    // rather than guess what a mangled topic meant.
    let topic = String::from_utf8(publish.topic.to_vec())
        .map_err(|_| "a PUBLISH topic that is not UTF-8: the connection is closed".to_string())?;
    trace.emit(|| {
        event(
            "device->cloud",
            "PUBLISH",
            Some(topic.clone()),
            None,
            String::from_utf8_lossy(&publish.payload).into_owned(),
        )
    });
    Ok(topic)
}

/// A session's trace: its events are built only while someone watches its client id, so an
/// untraced fleet pays no copies of topics and bodies.
struct SessionTrace<'a> {
    tracer: &'a crate::emulator::trace::Tracer,
    client_id: &'a str,
}

impl SessionTrace<'_> {
    fn emit(&self, make: impl FnOnce() -> TraceEvent) {
        if self.tracer.is_watching(self.client_id) {
            self.tracer.record(self.client_id, make());
        }
    }
}

/// A trace entry stamped now.
fn event(
    direction: &'static str,
    kind: &str,
    topic: Option<String>,
    status: Option<u16>,
    detail: String,
) -> TraceEvent {
    TraceEvent {
        at: unix_now(),
        direction,
        kind: kind.into(),
        topic,
        status,
        detail,
    }
}

fn connack_event(code: ConnectReturnCode, why: &str) -> TraceEvent {
    event(
        "cloud->device",
        "CONNACK",
        None,
        Some(code as u16),
        format!("{code:?}: {why}"),
    )
}

/// Serves one DPS client until it disconnects. `(keep_alive, register_by)`: the client's
/// keep-alive, and when its first register (or status) request is due.
async fn dps_session(
    connection: &mut Connection,
    context: &ServerContext,
    identity: &DeviceIdentity,
    (keep_alive, register_by): (u16, tokio::time::Instant),
    trace: &SessionTrace<'_>,
) -> Result<(), String> {
    // MQTT: the server may drop a client silent for 1.5 keep-alive periods. With keep-alive 0
    // we still do not wait forever on a connection that never speaks.
    let idle = if keep_alive == 0 {
        Duration::from_secs(1800)
    } else {
        Duration::from_millis(u64::from(keep_alive) * 1500)
    };
    let mut requested = false;
    loop {
        let idle_until = tokio::time::Instant::now() + idle;
        let until = if requested {
            idle_until
        } else {
            idle_until.min(register_by)
        };
        let packet = match tokio::time::timeout_at(until, connection.read()).await {
            Err(_) if !requested => {
                return Err("no register request within the connect deadline".into());
            }
            Err(_) => return Err("keep-alive expired".into()),
            Ok(result) => match result? {
                Some(packet) => packet,
                None => return Ok(()),
            },
        };
        match packet {
            Packet::Subscribe(subscribe) => {
                let codes = subscribe
                    .filters
                    .iter()
                    .map(|f| {
                        trace.emit(|| {
                            event(
                                "device->cloud",
                                "SUBSCRIBE",
                                Some(f.path.clone()),
                                None,
                                format!("qos={:?}", f.qos),
                            )
                        });
                        if f.path == dps::RESPONSE_FILTER {
                            // DPS grants QoS 2 requests as QoS 1.
                            SubscribeReasonCode::Success(match f.qos {
                                QoS::AtMostOnce => QoS::AtMostOnce,
                                _ => QoS::AtLeastOnce,
                            })
                        } else {
                            SubscribeReasonCode::Failure
                        }
                    })
                    .collect();
                connection
                    .send(Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
                    .await?;
            }
            Packet::Unsubscribe(unsubscribe) => {
                connection
                    .send(Packet::UnsubAck(rumqttc::UnsubAck::new(unsubscribe.pkid)))
                    .await?;
            }
            Packet::Publish(publish) => {
                let topic = inbound_topic(&publish, trace)?;
                // Judged before the PUBACK, as on the hub: a publish DPS does not take closes
                // the connection unacknowledged.
                let request = DpsRequest::parse(&topic).ok_or_else(|| {
                    format!("unsupported DPS topic {topic:?}: the connection is closed")
                })?;
                if publish.qos == QoS::AtLeastOnce {
                    connection
                        .send(Packet::PubAck(PubAck::new(publish.pkid)))
                        .await?;
                }
                requested = true;
                let (rid, reply) = match request {
                    DpsRequest::Register { rid } => {
                        (rid, context.dps.register(identity, &publish.payload).await)
                    }
                    DpsRequest::Poll { rid, operation_id } => {
                        (rid, context.dps.poll(identity, &operation_id))
                    }
                };
                send_reply(connection, &rid, reply, trace).await?;
            }
            Packet::PingReq => connection.send(Packet::PingResp).await?,
            Packet::PubAck(_) => {}
            Packet::Disconnect => {
                trace.emit(|| event("device->cloud", "DISCONNECT", None, None, String::new()));
                return Ok(());
            }
            other => {
                return Err(format!(
                    "unexpected {:?} from a DPS client",
                    other.packet_type()
                ));
            }
        }
    }
}

async fn send_reply(
    connection: &mut Connection,
    rid: &str,
    reply: Reply,
    trace: &SessionTrace<'_>,
) -> Result<(), String> {
    let topic = dps::Response {
        status: reply.status,
        rid: rid.to_string(),
        retry_after: reply.retry_after,
    }
    .topic();
    trace.emit(|| {
        event(
            "cloud->device",
            "PUBLISH",
            Some(topic.clone()),
            Some(reply.status),
            String::from_utf8_lossy(&reply.body).into_owned(),
        )
    });
    connection.publish(topic, reply.body.to_vec()).await
}

/// Serves one device connected to a hub until it disconnects or a newer connection replaces it.
/// Who is connected to a hub, and for how long.
struct DeviceLink<'a> {
    hub: &'a str,
    device_id: &'a str,
    keep_alive: u16,
    /// When a SAS token runs out, on the cloud's clock (Unix seconds).
    token_expiry: Option<i64>,
    /// Whether the CONNECT named the certificate renewal api-version.
    renewal: bool,
    /// How the connection authenticated, stamped on each message it sends.
    sender: std::sync::Arc<SenderAuth>,
}

/// How a hub session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    /// The device sent DISCONNECT: no will is published.
    Disconnect,
    /// The connection closed without DISCONNECT.
    Dropped,
    /// A newer connection of the same device took over.
    Replaced,
}

async fn hub_session(
    connection: &mut Connection,
    context: &ServerContext,
    link: &DeviceLink<'_>,
    session: &mut crate::emulator::hub::SessionHandle,
    trace: &SessionTrace<'_>,
) -> Result<SessionEnd, String> {
    let DeviceLink {
        hub,
        device_id,
        keep_alive,
        token_expiry,
        renewal,
        ref sender,
    } = *link;
    let renewal_filter = |path: &str| renewal && path == credentials::RESPONSE_FILTER;
    use crate::emulator::hub::{MAX_D2C_BYTES, TELEMETRY_WINDOW};

    let idle = if keep_alive == 0 {
        Duration::from_secs(1800)
    } else {
        // IoT Hub caps the keep-alive window at 1767 s.
        Duration::from_millis((u64::from(keep_alive) * 1500).min(1_767_000))
    };
    use crate::emulator::hub::Outbound;
    let own_queue = context
        .hubs
        .session_sender(hub, device_id)
        .ok_or_else(|| "the session was replaced before it started".to_string())?;
    let mut delayed: std::collections::VecDeque<(std::time::Instant, u16)> = Default::default();
    // QoS 1 telemetry stored or being stored whose PUBACK has not gone out: at the window the
    // session stops reading, so the device's flood waits in its own TCP buffers.
    let mut unacknowledged = 0usize;
    // C2D deliveries waiting for the device's PUBACK, by packet id.
    let mut c2d_pending: std::collections::HashMap<u16, String> = Default::default();
    // Why the hub refused a message (throttled, quota spent): it reads nothing more, sends the
    // acknowledgements of what it already stored (their messages are not sent again), then
    // closes the connection without acknowledging the refused one.
    let mut closing: Option<String> = None;
    loop {
        if unacknowledged == 0
            && let Some(why) = closing.take()
        {
            return Err(why);
        }
        let packet = tokio::select! {
            read = tokio::time::timeout(idle, connection.read()), if unacknowledged < TELEMETRY_WINDOW && closing.is_none() => match read {
                Err(_) => return Err("keep-alive expired".into()),
                Ok(result) => match result? {
                    Some(packet) => packet,
                    None => return Ok(SessionEnd::Dropped),
                },
            },
            () = async {
                match delayed.front() {
                    Some((at, _)) => tokio::time::sleep_until((*at).into()).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = std::time::Instant::now();
                while delayed.front().is_some_and(|(at, _)| *at <= now) {
                    if let Some((_, pkid)) = delayed.pop_front() {
                        unacknowledged -= 1;
                        connection.queue(Packet::PubAck(PubAck::new(pkid)))?;
                    }
                }
                flush_unless_kicked(connection, session, device_id).await?;
                continue;
            }
            outbound = session.outbound.recv() => {
                let Some(mut message) = outbound else { return Ok(SessionEnd::Replaced) };
                // Everything already waiting goes out in one write (PUBACKs come in bursts).
                loop {
                    match message {
                        // Delayed acknowledgements keep their order behind earlier ones.
                        Outbound::PubAck { pkid, not_before: Some(at) } if at > std::time::Instant::now() || !delayed.is_empty() => {
                            delayed.push_back((at, pkid));
                        }
                        Outbound::PubAck { pkid, .. } => {
                            unacknowledged -= 1;
                            connection.queue(Packet::PubAck(PubAck::new(pkid)))?;
                        }
                        Outbound::NotStored => {
                            return Err("telemetry could not be stored: closing the connection so the device sends it again".into());
                        }
                        Outbound::Publish { topic, payload, c2d } => {
                            trace.emit(|| event("cloud->device", "PUBLISH", Some(topic.clone()), None, String::from_utf8_lossy(&payload).into_owned()));
                            let pkid = connection.queue_publish(topic, payload)?;
                            if let Some(message_id) = c2d {
                                c2d_pending.insert(pkid, message_id);
                            }
                        }
                    }
                    if connection.wire.queued() >= MAX_WRITE_BATCH {
                        break;
                    }
                    match session.outbound.try_recv() {
                        Ok(next) => message = next,
                        Err(_) => break,
                    }
                }
                flush_unless_kicked(connection, session, device_id).await?;
                continue;
            }
            () = async {
                match token_expiry {
                    Some(at) => until_cloud_time(context.hubs.clock(), at).await,
                    None => std::future::pending().await,
                }
            } => {
                return Err(format!("{device_id}'s SAS token expired (401003): disconnected"));
            }
            () = session.kick.notified() => return Err(kicked(device_id)),
        };
        match packet {
            Packet::Subscribe(subscribe) => {
                let mut codes = Vec::new();
                for filter in &subscribe.filters {
                    trace.emit(|| {
                        event(
                            "device->cloud",
                            "SUBSCRIBE",
                            Some(filter.path.clone()),
                            None,
                            format!("qos={:?}", filter.qos),
                        )
                    });
                    if !renewal_filter(&filter.path)
                        && Subscription::parse(&filter.path, device_id).is_none()
                    {
                        // IoT Hub is not a general broker: it drops the connection instead of
                        // answering an unsupported subscription.
                        return Err(format!("unsupported subscription {:?}", filter.path));
                    }
                    codes.push(SubscribeReasonCode::Success(match filter.qos {
                        QoS::AtMostOnce => QoS::AtMostOnce,
                        _ => QoS::AtLeastOnce,
                    }));
                }
                // In force before the SUBACK, as on IoT Hub: a device that waits for it and
                // then has the service patch its twin must get the patch.
                context.hubs.subscribe(hub, device_id, |s| {
                    for filter in &subscribe.filters {
                        if renewal_filter(&filter.path) {
                            s.credentials = true;
                        } else if let Some(subscription) =
                            Subscription::parse(&filter.path, device_id)
                        {
                            s.set(subscription, true);
                        }
                    }
                });
                // Traced once in force, so a test (or a user) waiting on the trace knows a
                // message sent now reaches the device.
                trace.emit(|| {
                    event(
                        "cloud->device",
                        "SUBACK",
                        None,
                        None,
                        subscribe
                            .filters
                            .iter()
                            .map(|f| f.path.as_str())
                            .collect::<Vec<_>>()
                            .join(" "),
                    )
                });
                connection
                    .send(Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
                    .await?;
            }
            Packet::Unsubscribe(unsubscribe) => {
                context.hubs.subscribe(hub, device_id, |s| {
                    for path in &unsubscribe.topics {
                        if renewal_filter(path) {
                            s.credentials = false;
                            continue;
                        }
                        // Any other filter was never granted; it stands for the C2D one, as
                        // the device may spell it another way.
                        let subscription =
                            Subscription::parse(path, device_id).unwrap_or(Subscription::C2d);
                        s.set(subscription, false);
                    }
                });
                connection
                    .send(Packet::UnsubAck(rumqttc::UnsubAck::new(unsubscribe.pkid)))
                    .await?;
            }
            Packet::Publish(publish) => {
                let topic = inbound_topic(&publish, trace)?;
                if let Some(bag) = telemetry_bag(&topic, device_id) {
                    // Latency and traffic shaping delay the acknowledgement; past the shaping
                    // window the hub throttles.
                    let delay = match context.hubs.admit_message(hub) {
                        Ok(delay) => delay,
                        Err(why) => {
                            closing = Some(why);
                            continue;
                        }
                    };
                    let not_before = (!delay.is_zero()).then(|| std::time::Instant::now() + delay);
                    let (properties, system_properties) = parse_property_bag(bag);
                    // IoT Hub counts the body and the properties, names and values, against its
                    // 256 KB (dpskit's client counts the encoded bag, never less).
                    let size = crate::protocol::counted_message_size(
                        publish.payload.len(),
                        properties
                            .iter()
                            .chain(&system_properties)
                            .map(|(k, v)| (k.as_str(), v.as_str())),
                    );
                    if size > MAX_D2C_BYTES {
                        return Err(format!(
                            "telemetry of {size} bytes with its properties exceeds 256 KB (413001)"
                        ));
                    }
                    // Metered as Azure meters it once the hub enforces its tier; a spent quota
                    // closes the connection without the PUBACK.
                    if let Err(why) = context.hubs.meter_message(hub, size) {
                        closing = Some(why);
                        continue;
                    }
                    let record = TelemetryRecord {
                        sequence: 0,
                        hub: hub.to_ascii_lowercase(),
                        device_id: device_id.to_string(),
                        module_id: None,
                        enqueued: context.hubs.enqueued_now(),
                        body: publish.payload.to_vec(),
                        properties,
                        system_properties,
                        sender: Some(sender.clone()),
                    };
                    // Acknowledged only once it is committed (a kill loses nothing acknowledged);
                    // the writer sends the PUBACK through this session's queue.
                    let ack = (publish.qos == QoS::AtLeastOnce)
                        .then(|| (publish.pkid, own_queue.clone()));
                    unacknowledged += usize::from(ack.is_some());
                    context
                        .hubs
                        .store_telemetry(record, ack, not_before)
                        .await
                        .map_err(|e| format!("storing telemetry failed: {e}"))?;
                    continue;
                }
                if renewal && credentials::is_request_topic(&topic) {
                    // Without a `$rid` IoT Hub answers nothing and may drop the connection: it
                    // is closed here, so the device learns at once.
                    let rid = credentials::parse_request_topic(&topic).ok_or_else(|| {
                        format!(
                            "renewal request {topic:?} without a $rid: the connection is closed"
                        )
                    })?;
                    if publish.qos == QoS::AtLeastOnce {
                        connection
                            .send(Packet::PubAck(PubAck::new(publish.pkid)))
                            .await?;
                    }
                    context
                        .hubs
                        .request_certificate(hub, device_id, rid, &publish.payload);
                    continue;
                }
                // The topic is judged before the PUBACK: a publish the hub does not take closes
                // the connection unacknowledged, so the device never believes it was accepted.
                let request = device_request(&topic)?;
                if let DeviceRequest::MethodResponse { rid, status } = &request {
                    // An answer the hub refuses (over 128 KB) closes the connection
                    // unacknowledged, like any publish the hub does not take.
                    context
                        .hubs
                        .method_response(hub, device_id, rid, *status, &publish.payload)?;
                }
                if publish.qos == QoS::AtLeastOnce {
                    connection
                        .send(Packet::PubAck(PubAck::new(publish.pkid)))
                        .await?;
                }
                match request {
                    DeviceRequest::TwinGet { rid } => {
                        let twin = context
                            .hubs
                            .admit(hub, HubOperation::TwinRead, 1.0)
                            .map_err(Throttled::into_error)
                            .and_then(|()| context.hubs.device_twin(hub, device_id));
                        let (status, body) = match twin {
                            Ok(twin) => (200, twin.to_string()),
                            Err(e) => error_reply(&e),
                        };
                        reply_twin(connection, status, &rid, None, body, trace).await?;
                    }
                    DeviceRequest::ReportedPatch { rid } => {
                        match context
                            .hubs
                            .admit(hub, HubOperation::TwinUpdate, 1.0)
                            .map_err(Throttled::into_error)
                            .and_then(|()| {
                                context
                                    .hubs
                                    .patch_reported(hub, device_id, &publish.payload)
                            }) {
                            Ok(version) => {
                                reply_twin(
                                    connection,
                                    204,
                                    &rid,
                                    Some(version),
                                    String::new(),
                                    trace,
                                )
                                .await?
                            }
                            Err(e) => {
                                let (status, body) = error_reply(&e);
                                reply_twin(connection, status, &rid, None, body, trace).await?;
                            }
                        }
                    }
                    DeviceRequest::MethodResponse { .. } => {
                        // Delivered before the PUBACK, above.
                    }
                }
            }
            Packet::PingReq => connection.send(Packet::PingResp).await?,
            Packet::PubAck(ack) => {
                if let Some(message_id) = c2d_pending.remove(&ack.pkid) {
                    context.hubs.c2d_acknowledged(hub, device_id, &message_id);
                }
            }
            Packet::Disconnect => return Ok(SessionEnd::Disconnect),
            other => {
                return Err(format!(
                    "unexpected {:?} from a device",
                    other.packet_type()
                ));
            }
        }
    }
}

/// Resolves once the cloud's clock reaches `at` (Unix seconds): sleeps until then in real time,
/// and looks again whenever the clock is moved forward.
async fn until_cloud_time(clock: &crate::clock::Clock, at: i64) {
    loop {
        let moved = clock.moved();
        tokio::pin!(moved);
        let already_moved = crate::emulator::hub::arm(moved.as_mut());
        let left_ms = at.saturating_mul(1000).saturating_sub(clock.now_ms());
        if left_ms <= 0 {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(left_ms as u64)) => {}
            () = moved, if !already_moved => {}
        }
    }
}

/// Reads a device's non-telemetry topic; any other topic is one IoT Hub closes the
/// connection for.
fn device_request(topic: &str) -> Result<DeviceRequest, String> {
    DeviceRequest::parse(topic).map_err(|e| match e {
        TopicError::BadMethodStatus => {
            format!("bad method status in {topic:?}: IoT Hub closes the connection")
        }
        TopicError::Unsupported => {
            format!("unsupported topic {topic:?}: IoT Hub closes the connection")
        }
    })
}

/// Most bytes gathered from a session's queue into one write.
const MAX_WRITE_BATCH: usize = 64 * 1024;

/// Why a session ended when the hub closed it.
fn kicked(device_id: &str) -> String {
    format!(
        "{device_id}'s connection was closed by the hub (a newer connection, 400027, a device that stopped reading, or fault injection)"
    )
}

/// Writes what is queued; a device that stops reading blocks the write, so the hub's kick
/// (a newer connection, or a full queue) must still end the session.
async fn flush_unless_kicked(
    connection: &mut Connection,
    session: &crate::emulator::hub::SessionHandle,
    device_id: &str,
) -> Result<(), String> {
    tokio::select! {
        flushed = connection.flush() => flushed,
        () = session.kick.notified() => Err(kicked(device_id)),
    }
}

fn error_reply(error: &crate::error::Error) -> (u16, String) {
    match error {
        crate::error::Error::Service(s) => (
            s.status,
            serde_json::json!({"errorCode": s.error_code, "message": s.message}).to_string(),
        ),
        other => (
            500,
            serde_json::json!({"message": other.to_string()}).to_string(),
        ),
    }
}

async fn reply_twin(
    connection: &mut Connection,
    status: u16,
    rid: &str,
    version: Option<u64>,
    body: String,
    trace: &SessionTrace<'_>,
) -> Result<(), String> {
    let topic = CloudPublish::TwinResponse {
        status,
        rid: rid.to_string(),
        version,
    }
    .topic();
    trace.emit(|| {
        event(
            "cloud->device",
            "PUBLISH",
            Some(topic.clone()),
            Some(status),
            body.clone(),
        )
    });
    connection.publish(topic, body.into_bytes()).await
}
