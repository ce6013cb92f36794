//! The device's MQTT connection to its hub, written for many devices per process: the shared
//! framed connection ([`crate::transport::mqtt`]: small buffers that grow with the traffic),
//! and only the state a device uses (a few packet ids in flight). One task per device owns
//! the socket; the client talks to it through a bounded channel, so the window of
//! unacknowledged messages paces senders.
//! Lost connections are dialled again with backoff; messages not acknowledged are sent again
//! (DUP) on the new connection, unless the hub has closed it [`MAX_STALLED_CONNECTIONS`] times in
//! a row without acknowledging any (it refuses them: then the client ends with that reason);
//! SAS tokens are renewed by reconnecting before they expire.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    ConnectAuth, ConnectReturnCode, Packet, PubAck, Publish, QoS, Subscribe, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::{ClosedReason, ConnectionState, Inbox, SasRenewal, closed_error, lock};
use crate::error::{Error, Result, ServiceFailure};
use crate::transport::jittered_backoff as reconnect_delay;
use crate::transport::mqtt::{self, DialError, FrameError, Framed, Via};

/// Largest packet accepted from the hub (C2D is at most 64 KB, twins 32 KB per section).
pub(super) const MAX_INCOMING: usize = 256 * 1024;
/// Connections in a row a hub may close with messages outstanding and none acknowledged
/// before the client gives up on them (each after a reconnect delay of about a second).
const MAX_STALLED_CONNECTIONS: u32 = 5;

/// A QoS 1 PUBLISH to send; `done` resolves at its PUBACK.
pub(super) struct PublishRequest {
    pub topic: String,
    pub payload: Bytes,
    pub done: Option<oneshot::Sender<Result<()>>>,
}

/// What the client asks of the connection task.
pub(super) enum Command {
    /// A publish, boxed: the command channel allocates a block of 32 commands per device up
    /// front, and a small enum keeps that block small.
    Publish(Box<PublishRequest>),
    /// A SUBSCRIBE; `done` resolves at its SUBACK.
    Subscribe {
        filters: Vec<String>,
        done: Option<oneshot::Sender<Result<()>>>,
    },
    /// DISCONNECT, then the task ends.
    Disconnect { done: oneshot::Sender<()> },
}

/// How to (re)connect.
pub(super) struct Settings {
    pub host: String,
    pub port: u16,
    pub via: Via,
    pub client_id: String,
    pub username: String,
    pub sas: Option<SasRenewal>,
    pub keep_alive: u16,
    pub clean_session: bool,
    pub max_in_flight: usize,
    pub connect_timeout: Duration,
    pub reconnect: bool,
    pub resubscribe: Option<Vec<String>>,
    pub tls: Arc<rustls::ClientConfig>,
}

/// What the task shares with the client.
pub(super) struct Shared {
    pub inbox: Arc<Inbox>,
    pub state: Arc<Mutex<ConnectionState>>,
    pub closed: ClosedReason,
    /// Connections lost and dialled again: fleets report them as retries.
    pub reconnects: Arc<std::sync::atomic::AtomicU32>,
    /// Signalled by `close()`: ends the task even while it dials or waits to dial again, when
    /// no command is read (a permit is kept, so a signal sent before the wait is not lost).
    pub close_requested: Arc<tokio::sync::Notify>,
}

/// A request the hub has not acknowledged yet.
enum Outstanding {
    Publish {
        packet: Publish,
        done: Option<oneshot::Sender<Result<()>>>,
    },
    Subscribe {
        packet: Subscribe,
        done: Option<oneshot::Sender<Result<()>>>,
    },
}

/// The requests in flight by packet id, with the count of publishes kept alongside (the
/// window check runs for every command, so it must not walk the map).
#[derive(Default)]
pub(super) struct InFlight {
    requests: BTreeMap<u16, Outstanding>,
    publishes: usize,
    /// Publishes the hub has acknowledged, ever: a connection that ends with publishes
    /// outstanding and this unchanged made no progress.
    acknowledged: u64,
}

impl InFlight {
    fn insert(&mut self, pkid: u16, request: Outstanding) {
        if matches!(request, Outstanding::Publish { .. }) {
            self.publishes += 1;
        }
        if let Some(Outstanding::Publish { .. }) = self.requests.insert(pkid, request) {
            self.publishes -= 1;
        }
    }

    fn remove(&mut self, pkid: u16) -> Option<Outstanding> {
        let removed = self.requests.remove(&pkid);
        if let Some(Outstanding::Publish { .. }) = removed {
            self.publishes -= 1;
        }
        removed
    }

    fn take_all(&mut self) -> BTreeMap<u16, Outstanding> {
        self.publishes = 0;
        std::mem::take(&mut self.requests)
    }
}

/// The socket framed for MQTT; generic so that the fuzz tests can put a hostile byte stream
/// where the TLS stream goes. A packet over [`MAX_INCOMING`] is refused from its header.
pub(super) struct Wire<S = mqtt::ClientStream>(pub(super) Framed<S>);

/// What a framing failure means to the device: the hub sent garbage (a protocol error) or
/// the connection broke.
fn wire_error(error: FrameError) -> Error {
    match error {
        FrameError::Malformed(e) => Error::protocol_caused("malformed packet from the hub", e),
        FrameError::Encode(kind, e) => Error::protocol_caused(format!("cannot encode {kind:?}"), e),
        FrameError::Read(e) => Error::transport_caused("read failed", e),
        FrameError::Write(e) => Error::transport_caused("write failed", e),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// A wire over `stream` with small empty buffers (the fuzz tests' hostile streams; real
    /// ones come from [`dial`]).
    #[cfg(test)]
    pub(super) fn new(stream: S) -> Self {
        Wire(Framed::new(stream, MAX_INCOMING))
    }

    /// The next packet from the hub; `None` at a clean end of stream.
    pub(super) async fn read(&mut self) -> Result<Option<Packet>> {
        self.0.read().await.map_err(wire_error)
    }

    fn queue(&mut self, packet: &Packet) -> Result<()> {
        self.0.queue(packet).map_err(wire_error)
    }

    async fn flush(&mut self) -> Result<()> {
        self.0.flush().await.map_err(wire_error)
    }

    /// Shuts the stream down (TLS close_notify), whatever is queued.
    async fn shutdown(&mut self) {
        let _ = self.0.stream.shutdown().await;
    }
}

/// TLS + CONNECT + CONNACK; returns the wire and whether the hub kept the session.
async fn dial(settings: &Settings, password: Option<&str>) -> Result<(Wire, bool)> {
    let mut connect = rumqttc::Connect::new(settings.client_id.clone());
    connect.keep_alive = settings.keep_alive;
    connect.clean_session = settings.clean_session;
    connect.auth = match password {
        Some(p) => ConnectAuth::UsernamePassword {
            username: settings.username.clone(),
            password: Bytes::copy_from_slice(p.as_bytes()),
        },
        None => ConnectAuth::Username {
            username: settings.username.clone(),
        },
    };
    let host = &settings.host;
    let address = format!("{host}:{}", settings.port);
    let dialled = mqtt::dial(
        host,
        settings.port,
        &settings.via,
        settings.tls.clone(),
        connect,
        MAX_INCOMING,
    )
    .await;
    match dialled {
        Ok((wire, ack)) if ack.code == ConnectReturnCode::Success => {
            Ok((Wire(wire), ack.session_present))
        }
        Ok((_, ack)) => Err(refused(host, &settings.client_id, ack.code)),
        Err(DialError::Unreachable(e)) => Err(Error::transport_caused(
            format!("cannot reach {address}"),
            e,
        )),
        Err(DialError::BadHost(e)) => Err(Error::config_caused(
            format!("{host} is not a host name"),
            e,
        )),
        Err(DialError::Tls(e)) => Err(Error::transport_caused(
            format!("TLS with {address} failed"),
            mqtt::tls_cause(e),
        )),
        Err(DialError::WebSocket(e)) => Err(Error::transport_caused(
            format!("WebSocket upgrade with {address} failed"),
            e,
        )),
        Err(DialError::Frame(e)) => Err(wire_error(e)),
        Err(DialError::Unexpected(kind)) => {
            Err(Error::protocol(format!("expected CONNACK, got {kind:?}")))
        }
        Err(DialError::Closed) => Err(Error::transport(format!(
            "{host} closed the connection before CONNACK"
        ))),
    }
}

fn refused(host: &str, device_id: &str, code: ConnectReturnCode) -> Error {
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

/// Why one connection ended.
pub(super) enum Ending {
    /// The device asked to disconnect (or dropped its client).
    Closed,
    /// The connection broke.
    Lost(Error),
    /// The SAS token is about to expire: reconnect with a fresh one.
    Renew,
}

/// The connection task: dials, serves, redials, until the client disconnects.
pub(super) async fn run(
    settings: Settings,
    mut commands: mpsc::Receiver<Command>,
    shared: Shared,
    connected: oneshot::Sender<Result<()>>,
) {
    let mut connected = Some(connected);
    let mut outstanding = InFlight::default();
    let mut next_pkid: u16 = 0;
    let mut failures: u32 = 0;
    // Connections in a row the hub closed while messages were outstanding and none of them
    // was acknowledged.
    let mut stalled: u32 = 0;
    let id = settings.client_id.clone();
    // Every way out of the loop is the reason the client ends for good.
    let reason = loop {
        let (password, renew_at) = match &settings.sas {
            Some(sas) => match sas.token() {
                Ok((token, renew_at)) => (Some(token), Some(renew_at)),
                Err(e) => {
                    break e;
                }
            },
            None => (None, None),
        };
        let dialling = tokio::time::timeout(
            settings.connect_timeout,
            dial(&settings, password.as_deref()),
        );
        let dialled = tokio::select! {
            dialled = dialling => dialled.unwrap_or_else(|_| {
                Err(Error::timeout(format!(
                    "{id} got no CONNACK from {} within {:.1} s",
                    settings.host,
                    settings.connect_timeout.as_secs_f64()
                )))
            }),
            () = shared.close_requested.notified() => {
                break closed_by_device(&id);
            }
        };
        let (mut wire, session_present) = match dialled {
            Ok(done) => done,
            Err(error) => {
                if connected.is_some() || !settings.reconnect {
                    break error;
                }
                failures += 1;
                let why = format!("reconnecting failed ({error})");
                if wait_to_redial(&shared, &id, failures, &why).await {
                    break closed_by_device(&id);
                }
                continue;
            }
        };
        failures = 0;
        *lock(&shared.state) = ConnectionState::Connected;
        if let Some(tx) = connected.take() {
            let _ = tx.send(Ok(()));
        }
        // What the hub never acknowledged goes again, in order, marked DUP.
        let mut replay: Vec<Packet> = outstanding
            .requests
            .values()
            .map(|o| match o {
                Outstanding::Publish { packet, .. } => {
                    let mut again = packet.clone();
                    again.dup = true;
                    Packet::Publish(again)
                }
                Outstanding::Subscribe { packet, .. } => Packet::Subscribe(packet.clone()),
            })
            .collect();
        if !session_present && let Some(filters) = &settings.resubscribe {
            next_pkid = next_id(next_pkid, &outstanding);
            let packet = subscribe_packet(next_pkid, filters);
            replay.push(Packet::Subscribe(packet.clone()));
            outstanding.insert(next_pkid, Outstanding::Subscribe { packet, done: None });
        }
        let acknowledged_before = outstanding.acknowledged;
        let ending = match replay.iter().try_for_each(|p| wire.queue(p)) {
            Ok(()) => match wire.flush().await {
                Ok(()) => {
                    serve(
                        &settings,
                        &mut wire,
                        &mut commands,
                        &shared,
                        &mut outstanding,
                        &mut next_pkid,
                        renew_at,
                    )
                    .await
                }
                Err(e) => Ending::Lost(e),
            },
            Err(e) => Ending::Lost(e),
        };
        match ending {
            Ending::Closed => {
                break closed_by_device(&id);
            }
            Ending::Renew => {
                log::info!("hub client {id}: renewing its SAS token");
                wire.shutdown().await;
            }
            Ending::Lost(error) if settings.reconnect => {
                if outstanding.publishes > 0 && outstanding.acknowledged == acknowledged_before {
                    stalled += 1;
                } else {
                    stalled = 0;
                }
                if stalled >= MAX_STALLED_CONNECTIONS {
                    // The hub takes the connection but drops it on what the device sends: it
                    // refuses a message, and sending it again forever would hang every sender.
                    break Error::transport_caused(
                        format!(
                            "{} closed {id}'s connection {stalled} times in a row without \
                             acknowledging any of its {} outstanding messages: it refuses them \
                             (a spent daily quota, 403002, or a throttled hub look like this \
                             over MQTT)",
                            settings.host, outstanding.publishes
                        ),
                        error,
                    );
                }
                failures += 1;
                shared
                    .reconnects
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *lock(&shared.state) = ConnectionState::Reconnecting;
                let why = format!("connection lost ({error})");
                if wait_to_redial(&shared, &id, failures, &why).await {
                    break closed_by_device(&id);
                }
            }
            Ending::Lost(error) => {
                break error;
            }
        }
    };
    finish(&shared, &id, &mut outstanding, &mut connected, reason);
}

/// Why waiters fail once the device itself closed the client.
fn closed_by_device(id: &str) -> Error {
    Error::transport(format!("{id} disconnected"))
}

/// Says why the connection is down, waits the backoff that `failures` calls for, and returns
/// true when `close()` was called meanwhile.
async fn wait_to_redial(shared: &Shared, id: &str, failures: u32, why: &str) -> bool {
    let delay = reconnect_delay(failures);
    log::info!(
        "hub client {id}: {why}; dialling again in {:.1} s",
        delay.as_secs_f64()
    );
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        () = shared.close_requested.notified() => true,
    }
}

/// Ends the client for good: every waiter learns why.
fn finish(
    shared: &Shared,
    id: &str,
    outstanding: &mut InFlight,
    connected: &mut Option<oneshot::Sender<Result<()>>>,
    error: Error,
) {
    // While connect() still waits nothing has been handed out: its caller gets the error
    // itself. Otherwise the error is shared, the cause of every waiter's and later call's.
    let error = match connected.take() {
        Some(tx) => tx.send(Err(error)).err().and_then(Result::err),
        None => Some(error),
    };
    *lock(&shared.closed) = error.map(Arc::new);
    *lock(&shared.state) = ConnectionState::Closed;
    shared.inbox.close();
    for (_, waiting) in outstanding.take_all() {
        let done = match waiting {
            Outstanding::Publish { done, .. } | Outstanding::Subscribe { done, .. } => done,
        };
        if let Some(done) = done {
            let _ = done.send(Err(closed_error(&shared.closed, id)));
        }
    }
}

/// The next free packet id (1..=65535), skipping ids still in flight.
fn next_id(mut last: u16, outstanding: &InFlight) -> u16 {
    loop {
        last = last.checked_add(1).unwrap_or(1);
        if !outstanding.requests.contains_key(&last) {
            return last;
        }
    }
}

fn subscribe_packet(pkid: u16, filters: &[String]) -> Subscribe {
    Subscribe {
        pkid,
        filters: filters
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
            .collect(),
    }
}

/// Queues one command's packet; `Some(done)` when it is the DISCONNECT (not queued).
fn queue_command<S: AsyncRead + AsyncWrite + Unpin>(
    command: Command,
    wire: &mut Wire<S>,
    outstanding: &mut InFlight,
    next_pkid: &mut u16,
) -> Result<Option<oneshot::Sender<()>>> {
    match command {
        Command::Publish(request) => {
            let PublishRequest {
                topic,
                payload,
                done,
            } = *request;
            *next_pkid = next_id(*next_pkid, outstanding);
            let packet = Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: Bytes::from(topic.into_bytes()),
                pkid: *next_pkid,
                payload,
            };
            wire.queue(&Packet::Publish(packet.clone()))?;
            outstanding.insert(*next_pkid, Outstanding::Publish { packet, done });
            Ok(None)
        }
        Command::Subscribe { filters, done } => {
            *next_pkid = next_id(*next_pkid, outstanding);
            let packet = subscribe_packet(*next_pkid, &filters);
            wire.queue(&Packet::Subscribe(packet.clone()))?;
            outstanding.insert(*next_pkid, Outstanding::Subscribe { packet, done });
            Ok(None)
        }
        Command::Disconnect { done } => Ok(Some(done)),
    }
}

/// Serves one connection until it ends.
pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    settings: &Settings,
    wire: &mut Wire<S>,
    commands: &mut mpsc::Receiver<Command>,
    shared: &Shared,
    outstanding: &mut InFlight,
    next_pkid: &mut u16,
    renew_at: Option<tokio::time::Instant>,
) -> Ending {
    let keep_alive = Duration::from_secs(u64::from(settings.keep_alive.max(5)));
    let mut ping_due = tokio::time::Instant::now() + keep_alive;
    let mut awaiting_pong = false;
    loop {
        let room = outstanding.publishes < settings.max_in_flight;
        tokio::select! {
            read = wire.read() => {
                let packet = match read {
                    Ok(Some(packet)) => packet,
                    Ok(None) => return Ending::Lost(Error::transport(format!("{} closed the connection", settings.host))),
                    Err(e) => return Ending::Lost(e),
                };
                match packet {
                    Packet::PubAck(ack) => {
                        match outstanding.remove(ack.pkid) {
                            Some(Outstanding::Publish { done, .. }) => {
                                outstanding.acknowledged += 1;
                                if let Some(done) = done {
                                    let _ = done.send(Ok(()));
                                }
                            }
                            Some(other) => {
                                outstanding.insert(ack.pkid, other);
                            }
                            None => {}
                        }
                    }
                    Packet::SubAck(ack) => {
                        if let Some(Outstanding::Subscribe { done: Some(done), .. }) = outstanding.remove(ack.pkid) {
                            let refused = ack.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure));
                            let _ = done.send(if refused {
                                Err(Error::protocol("the hub refused a subscription"))
                            } else {
                                Ok(())
                            });
                        }
                    }
                    Packet::Publish(publish) => {
                        if publish.qos != QoS::AtMostOnce {
                            if let Err(e) = wire.queue(&Packet::PubAck(PubAck::new(publish.pkid))) {
                                return Ending::Lost(e);
                            }
                            if let Err(e) = wire.flush().await {
                                return Ending::Lost(e);
                            }
                        }
                        let topic = String::from_utf8_lossy(&publish.topic);
                        shared.inbox.deliver(&settings.client_id, &topic, &publish.payload);
                    }
                    Packet::PingResp => awaiting_pong = false,
                    _ => {}
                }
            }
            command = commands.recv(), if room => {
                let mut next = command;
                // Everything already waiting goes out in one write, within the window.
                loop {
                    let Some(command) = next else {
                        // The client is gone: leave cleanly.
                        let _ = wire.queue(&Packet::Disconnect);
                        let _ = wire.flush().await;
                        return Ending::Closed;
                    };
                    match queue_command(command, wire, outstanding, next_pkid) {
                        Ok(None) => {}
                        Ok(Some(done)) => {
                            let _ = wire.queue(&Packet::Disconnect);
                            let _ = wire.flush().await;
                            wire.shutdown().await;
                            let _ = done.send(());
                            return Ending::Closed;
                        }
                        Err(e) => return Ending::Lost(e),
                    }
                    if outstanding.publishes >= settings.max_in_flight {
                        break;
                    }
                    match commands.try_recv() {
                        Ok(command) => next = Some(command),
                        Err(_) => break,
                    }
                }
                if let Err(e) = wire.flush().await {
                    return Ending::Lost(e);
                }
                ping_due = tokio::time::Instant::now() + keep_alive;
            }
            () = tokio::time::sleep_until(ping_due) => {
                if awaiting_pong {
                    return Ending::Lost(Error::transport(format!("{} did not answer PINGREQ", settings.host)));
                }
                awaiting_pong = true;
                if let Err(e) = wire.queue(&Packet::PingReq) {
                    return Ending::Lost(e);
                }
                if let Err(e) = wire.flush().await {
                    return Ending::Lost(e);
                }
                ping_due = tokio::time::Instant::now() + keep_alive;
            }
            () = async {
                match renew_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => return Ending::Renew,
        }
    }
}
