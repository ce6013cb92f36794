//! One framed MQTT connection, generic over the stream (TLS in use; a hostile byte stream in
//! the fuzz tests): packets are read through a bounded buffer and written in batches. The
//! device clients (DPS and hub) and the emulator's listener all sit on it, on rumqttc's codec;
//! [`dial`] opens one from the device's side (TCP, through a proxy if asked; TLS; the
//! WebSocket upgrade when the transport is WebSockets; CONNECT, CONNACK).
//!
//! Written for tens of thousands of connections per process: both buffers start small, grow
//! with the traffic, and shrink back once a large packet has gone through, so an idle
//! connection that once carried 256 KB does not hold it.

use std::sync::Arc;

use bytes::BytesMut;
use rumqttc::{ConnAck, Connect, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::transport::proxy::Proxy;
use crate::transport::websocket::{self, MQTT_PATH, MQTT_SUBPROTOCOL, MqttStream, WebSocketBytes};

/// What the buffers start at and fall back to after a large packet.
const SMALL_BUFFER: usize = 1024;
/// An empty buffer larger than this is given back.
const KEEP_BUFFER: usize = 64 * 1024;

/// Why a framed connection failed.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The peer sent bytes that are not an MQTT packet, or a packet over the size limit
    /// (refused from its header, before its body is buffered).
    Malformed(rumqttc::Error),
    /// A packet that cannot be encoded (a topic too long for MQTT, say).
    Encode(rumqttc::PacketType, rumqttc::Error),
    /// Reading from the stream failed.
    Read(std::io::Error),
    /// Writing to the stream failed.
    Write(std::io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Malformed(e) => write!(f, "malformed MQTT packet: {e}"),
            FrameError::Encode(kind, e) => write!(f, "cannot encode {kind:?}: {e}"),
            FrameError::Read(e) => write!(f, "read failed: {e}"),
            FrameError::Write(e) => write!(f, "write failed: {e}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Malformed(e) | FrameError::Encode(_, e) => Some(e),
            FrameError::Read(e) | FrameError::Write(e) => Some(e),
        }
    }
}

/// A stream with its read and write buffers.
pub(crate) struct Framed<S> {
    /// The stream, for what the framing does not cover (shutdown, TLS state).
    pub stream: S,
    /// Bytes read and not yet a whole packet.
    pub(crate) read: BytesMut,
    /// Packets queued and not yet written.
    write: BytesMut,
    /// Largest packet read, header excluded.
    max_incoming: usize,
}

/// Gives back the memory an empty buffer kept after one large packet.
fn shrink(buffer: &mut BytesMut) {
    if buffer.is_empty() && buffer.capacity() > KEEP_BUFFER {
        *buffer = BytesMut::with_capacity(SMALL_BUFFER);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    /// Frames `stream` with small empty buffers; packets over `max_incoming` bytes are refused.
    pub(crate) fn new(stream: S, max_incoming: usize) -> Self {
        Framed {
            stream,
            read: BytesMut::with_capacity(SMALL_BUFFER),
            write: BytesMut::with_capacity(SMALL_BUFFER),
            max_incoming,
        }
    }

    /// The next packet; `None` at a clean end of stream.
    pub(crate) async fn read(&mut self) -> Result<Option<Packet>, FrameError> {
        loop {
            match Packet::read(&mut self.read, self.max_incoming) {
                Ok(packet) => {
                    shrink(&mut self.read);
                    return Ok(Some(packet));
                }
                Err(rumqttc::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(FrameError::Malformed(e)),
            }
            let n = self
                .stream
                .read_buf(&mut self.read)
                .await
                .map_err(FrameError::Read)?;
            if n == 0 {
                return Ok(None);
            }
        }
    }

    /// Encodes a packet into the write buffer without writing it yet.
    pub(crate) fn queue(&mut self, packet: &Packet) -> Result<(), FrameError> {
        packet
            .write(&mut self.write, usize::MAX)
            .map(|_| ())
            .map_err(|e| FrameError::Encode(packet.packet_type(), e))
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued(&self) -> usize {
        self.write.len()
    }

    /// Writes everything queued in one go.
    pub(crate) async fn flush(&mut self) -> Result<(), FrameError> {
        if self.write.is_empty() {
            return Ok(());
        }
        self.stream
            .write_all(&self.write)
            .await
            .map_err(FrameError::Write)?;
        self.stream.flush().await.map_err(FrameError::Write)?;
        self.write.clear();
        shrink(&mut self.write);
        Ok(())
    }

    /// Queues one packet and writes everything queued.
    pub(crate) async fn send(&mut self, packet: &Packet) -> Result<(), FrameError> {
        self.queue(packet)?;
        self.flush().await
    }

    /// What the read buffer holds in memory now (for tests of its bound).
    #[cfg(test)]
    pub(crate) fn read_capacity(&self) -> usize {
        self.read.capacity()
    }
}

/// A device's TLS stream to its server.
pub(crate) type TlsClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A device's connection to its server: MQTT over TLS, or over a WebSocket inside TLS.
pub(crate) type ClientStream = MqttStream<TlsClientStream, TlsClientStream>;

/// How a device's MQTT reaches its server (`"tls"` or `"websockets"` where a host names it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceTransport {
    /// MQTT over TLS, Azure's port 8883 (`"mqtt"`).
    #[default]
    #[serde(rename = "mqtt")]
    Tls,
    /// MQTT over a WebSocket inside TLS, Azure's port 443 (`/$iothub/websocket`): for
    /// networks that let only HTTPS out.
    WebSockets,
}

impl DeviceTransport {
    /// Azure's port for this transport.
    pub fn azure_port(self) -> u16 {
        match self {
            DeviceTransport::Tls => 8883,
            DeviceTransport::WebSockets => 443,
        }
    }
}

impl std::str::FromStr for DeviceTransport {
    type Err = crate::error::Error;

    /// `"mqtt"` (over TLS) or `"websockets"`, as hosts name them.
    fn from_str(name: &str) -> crate::error::Result<Self> {
        match name {
            "mqtt" => Ok(DeviceTransport::Tls),
            "websockets" => Ok(DeviceTransport::WebSockets),
            other => Err(crate::error::Error::config(format!(
                "transport {other:?}: expected \"mqtt\" (over TLS, port 8883) or \"websockets\" (port 443)"
            ))),
        }
    }
}

/// The way to the server: the transport and, where the network requires one, the HTTP
/// proxy the TCP connection is tunnelled through.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Via {
    /// MQTT over TLS or over WebSockets.
    #[serde(default)]
    pub transport: DeviceTransport,
    /// An HTTP CONNECT proxy (`http://[user:password@]host:port`); `None` dials directly.
    #[serde(default)]
    pub proxy: Option<Proxy>,
}

impl Via {
    /// The way hosts name it: a transport (`"mqtt"`, `"websockets"`) and a proxy URL.
    pub fn from_names(transport: &str, proxy: Option<&str>) -> crate::error::Result<Self> {
        Ok(Via {
            transport: transport.parse()?,
            proxy: proxy
                .map(Proxy::parse)
                .transpose()
                .map_err(crate::error::Error::config)?,
        })
    }
}

/// Why [`dial`] did not get a CONNACK.
#[derive(Debug)]
pub(crate) enum DialError {
    /// TCP could not connect.
    Unreachable(std::io::Error),
    /// The host is not a name TLS can check the server's certificate against.
    BadHost(rustls::pki_types::InvalidDnsNameError),
    /// The TLS handshake failed.
    Tls(std::io::Error),
    /// The WebSocket upgrade failed (refused by the server, or not a WebSocket server).
    WebSocket(tokio_tungstenite::tungstenite::Error),
    /// The MQTT exchange failed.
    Frame(FrameError),
    /// The server closed the connection before its CONNACK.
    Closed,
    /// The server answered CONNECT with another packet.
    Unexpected(rumqttc::PacketType),
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Unreachable(e) => write!(f, "cannot connect: {e}"),
            DialError::BadHost(e) => write!(f, "not a host name: {e}"),
            DialError::Tls(e) => write!(f, "TLS failed: {e}"),
            DialError::WebSocket(e) => write!(f, "WebSocket upgrade failed: {e}"),
            DialError::Frame(e) => e.fmt(f),
            DialError::Closed => f.write_str("the server closed the connection before CONNACK"),
            DialError::Unexpected(kind) => write!(f, "expected CONNACK, got {kind:?}"),
        }
    }
}

impl std::error::Error for DialError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DialError::Unreachable(e) => Some(e),
            DialError::BadHost(e) => Some(e),
            // rustls's own error, when the handshake failed on one: the io::Error around it
            // prints the same text but hides it from source().
            DialError::Tls(e) => match e.get_ref() {
                Some(inner) if inner.is::<rustls::Error>() => Some(inner),
                _ => Some(e),
            },
            DialError::WebSocket(e) => Some(e),
            DialError::Frame(e) => Some(e),
            DialError::Closed | DialError::Unexpected(_) => None,
        }
    }
}

/// The cause to keep for a failed TLS handshake: rustls's error itself when tokio-rustls
/// wrapped one in the `io::Error` it returns (whose `source()` would hide it), else the I/O
/// error. Same text either way.
pub(crate) fn tls_cause(error: std::io::Error) -> crate::error::BoxError {
    match error.downcast::<rustls::Error>() {
        Ok(tls) => Box::new(tls),
        Err(io) => Box::new(io),
    }
}

/// Dials `host:port` (TCP_NODELAY; through `via`'s proxy if any), completes TLS with `tls`
/// (the server's certificate checked against `host`) and, over WebSockets, the upgrade on
/// `/$iothub/websocket` with the `mqtt` subprotocol; then sends `connect` and reads the
/// answer: the framed connection and the server's CONNACK, whatever its return code (the
/// caller knows what a refusal means).
pub(crate) async fn dial(
    host: &str,
    port: u16,
    via: &Via,
    tls: Arc<rustls::ClientConfig>,
    connect: Connect,
    max_incoming: usize,
) -> Result<(Framed<ClientStream>, ConnAck), DialError> {
    dial_observed(host, port, via, tls, connect, max_incoming, &|_| {}).await
}

/// What [`dial_observed`] tells as it goes.
pub(crate) enum DialStep<'a> {
    /// The TCP connection is open (through the proxy, if any).
    Connected,
    /// The TLS handshake is done: the certificates the server presented, its own first.
    TlsDone {
        /// The server's chain as sent (DER).
        server_chain: &'a [rustls::pki_types::CertificateDer<'static>],
    },
}

/// [`dial`], telling `observe` of each step (a traced attempt shows them; nobody else pays
/// for more than a call to a no-op).
pub(crate) async fn dial_observed(
    host: &str,
    port: u16,
    via: &Via,
    tls: Arc<rustls::ClientConfig>,
    connect: Connect,
    max_incoming: usize,
    observe: &(dyn Fn(DialStep<'_>) + Sync),
) -> Result<(Framed<ClientStream>, ConnAck), DialError> {
    let tcp = match &via.proxy {
        Some(proxy) => proxy.tunnel(host, port).await,
        None => TcpStream::connect((host, port)).await,
    }
    .map_err(DialError::Unreachable)?;
    // Without TCP_NODELAY every small MQTT exchange waits ~40 ms for a delayed ACK.
    let _ = tcp.set_nodelay(true);
    observe(DialStep::Connected);
    let name =
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(DialError::BadHost)?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(DialError::Tls)?;
    observe(DialStep::TlsDone {
        server_chain: stream.get_ref().1.peer_certificates().unwrap_or_default(),
    });
    let stream = match via.transport {
        DeviceTransport::Tls => MqttStream::Tls(Box::new(stream)),
        DeviceTransport::WebSockets => {
            let socket = upgrade(host, port, stream, max_incoming).await?;
            MqttStream::WebSocket(Box::new(WebSocketBytes::new(socket)))
        }
    };
    let mut framed = Framed::new(stream, max_incoming);
    framed
        .send(&Packet::Connect(connect))
        .await
        .map_err(DialError::Frame)?;
    match framed.read().await.map_err(DialError::Frame)? {
        Some(Packet::ConnAck(ack)) => Ok((framed, ack)),
        Some(other) => Err(DialError::Unexpected(other.packet_type())),
        None => Err(DialError::Closed),
    }
}

/// The WebSocket upgrade as the official SDKs send it: `GET /$iothub/websocket` offering the
/// `mqtt` subprotocol (tungstenite refuses an answer that does not pick it).
async fn upgrade(
    host: &str,
    port: u16,
    stream: TlsClientStream,
    max_incoming: usize,
) -> Result<tokio_tungstenite::WebSocketStream<TlsClientStream>, DialError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!("wss://{authority}{MQTT_PATH}")
        .into_client_request()
        .map_err(DialError::WebSocket)?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        tokio_tungstenite::tungstenite::http::HeaderValue::from_static(MQTT_SUBPROTOCOL),
    );
    let (socket, _) = tokio_tungstenite::client_async_with_config(
        request,
        stream,
        Some(websocket::config(
            max_incoming.saturating_add(MQTT_ENVELOPE_BYTES),
        )),
    )
    .await
    .map_err(DialError::WebSocket)?;
    Ok(socket)
}

/// What a PUBLISH carries besides its payload, at most: a topic of up to 65,535 bytes with its
/// two-byte length, and a two-byte packet id. The emulator's packet limit leaves this room, and
/// a WebSocket's message limit leaves it over the largest packet taken.
pub(crate) const MQTT_ENVELOPE_BYTES: usize = 2 + u16::MAX as usize + 2;

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{PubAck, Publish, QoS};

    /// Packets written on one end come out whole on the other, however the bytes are split,
    /// and a large one leaves no large buffer behind.
    #[test]
    fn packets_cross_whole_and_buffers_shrink_back() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            // A pipe of 7 bytes: every packet arrives in pieces.
            let (a, b) = tokio::io::duplex(7);
            let mut left = Framed::new(a, 1024 * 1024);
            let mut right = Framed::new(b, 1024 * 1024);
            let mut big = Publish::new("t/big", QoS::AtLeastOnce, vec![7u8; 300 * 1024]);
            big.pkid = 1;
            let writer = tokio::spawn(async move {
                left.queue(&Packet::PubAck(PubAck::new(3))).unwrap();
                left.queue(&Packet::PingReq).unwrap();
                assert!(left.queued() > 0);
                left.flush().await.unwrap();
                assert_eq!(left.queued(), 0);
                left.send(&Packet::Publish(big)).await.unwrap();
                assert!(left.write.capacity() <= KEEP_BUFFER);
                left
            });
            assert_eq!(
                right.read().await.unwrap(),
                Some(Packet::PubAck(PubAck::new(3)))
            );
            assert_eq!(right.read().await.unwrap(), Some(Packet::PingReq));
            match right.read().await.unwrap() {
                Some(Packet::Publish(p)) => assert_eq!(p.payload.len(), 300 * 1024),
                other => panic!("{other:?}"),
            }
            assert!(right.read_capacity() <= KEEP_BUFFER);
            drop(writer.await.unwrap());
            assert!(right.read().await.unwrap().is_none());
        });
    }

    /// A packet over the limit is refused from its header; garbage is malformed.
    #[test]
    fn oversized_and_malformed_input_are_typed_errors() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let mut left = Framed::new(a, 1024 * 1024);
            let mut right = Framed::new(b, 100);
            left.send(&Packet::Publish(Publish::new(
                "t",
                QoS::AtMostOnce,
                vec![0u8; 200],
            )))
            .await
            .unwrap();
            assert!(matches!(right.read().await, Err(FrameError::Malformed(_))));

            let (mut raw, b) = tokio::io::duplex(64);
            let mut framed = Framed::new(b, 1024);
            raw.write_all(&[0xF0, 0x00]).await.unwrap();
            let error = framed.read().await.unwrap_err();
            assert!(matches!(error, FrameError::Malformed(_)), "{error}");
            assert!(error.to_string().starts_with("malformed MQTT packet"));
        });
    }
}
