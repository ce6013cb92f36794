//! MQTT over WebSockets, as Azure serves it on port 443 for devices behind firewalls: the
//! path and subprotocol both sides use, the frame limits, and [`WebSocketBytes`], which turns a
//! WebSocket into the byte stream the framed MQTT connection reads and writes (each flush of
//! MQTT packets is one binary message; a packet may arrive split over several).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The path IoT Hub and DPS serve MQTT over WebSockets on.
pub(crate) const MQTT_PATH: &str = "/$iothub/websocket";

/// The WebSocket subprotocol of MQTT 3.1.1 (what the official SDKs offer).
pub(crate) const MQTT_SUBPROTOCOL: &str = "mqtt";

/// The most bytes one written message carries. A flush of the framed connection can hold many
/// packets (a window of telemetry, a backlog of C2D); written as one message it could pass
/// the peer's message limit, which [`config`] sets to one packet's worth, as the official SDKs
/// send one packet a message. The stream is read as bytes, so the cut may fall anywhere.
const MAX_WRITTEN_MESSAGE: usize = 64 * 1024;

/// Limits of one WebSocket: a message or frame as large as the largest MQTT packet allowed,
/// and small eager buffers, so ten thousand idle devices over WebSockets cost what they cost
/// over plain TLS rather than tungstenite's 128 KiB read buffer each.
pub(crate) fn config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        // Every message goes out at once: MQTT's own framing already batches per flush.
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// A WebSocket read and written as a byte stream of binary messages. Pings are answered by
/// tungstenite; a text message is a protocol violation (MQTT travels in binary messages) and
/// ends the stream with an error; a close ends it cleanly.
pub(crate) struct WebSocketBytes<S> {
    socket: WebSocketStream<S>,
    /// What is left of the last binary message read.
    pending: Bytes,
}

impl<S> WebSocketBytes<S> {
    /// Wraps an open WebSocket (after its handshake).
    pub(crate) fn new(socket: WebSocketStream<S>) -> Self {
        WebSocketBytes {
            socket,
            pending: Bytes::new(),
        }
    }
}

fn io_error(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    match e {
        tokio_tungstenite::tungstenite::Error::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WebSocketBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.socket).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text message on an MQTT WebSocket (MQTT travels in binary messages)",
                    )));
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WebSocketBytes<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.socket).poll_ready(cx)).map_err(io_error)?;
        let written = buf.len().min(MAX_WRITTEN_MESSAGE);
        Pin::new(&mut self.socket)
            .start_send(Message::Binary(Bytes::copy_from_slice(&buf[..written])))
            .map_err(io_error)?;
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_close(cx).map_err(io_error)
    }
}

/// An MQTT connection's bytes, over TLS (`T`, port 8883) or over a WebSocket inside TLS (`W`
/// under the WebSocket, port 443). Both sides use it: the device clients with their TLS
/// stream, the emulator with its TLS stream and hyper's upgraded connection. Boxed, so a
/// session's state is as small whichever it carries.
pub(crate) enum MqttStream<T, W> {
    /// MQTT over TLS.
    Tls(Box<T>),
    /// MQTT over a WebSocket.
    WebSocket(Box<WebSocketBytes<W>>),
}

impl<T, W> AsyncRead for MqttStream<T, W>
where
    T: AsyncRead + Unpin,
    W: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MqttStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MqttStream::WebSocket(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T, W> AsyncWrite for MqttStream<T, W>
where
    T: AsyncWrite + Unpin,
    W: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MqttStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MqttStream::WebSocket(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MqttStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MqttStream::WebSocket(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MqttStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MqttStream::WebSocket(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// One write far larger than the peer's message limit (a flush of many packets) arrives
    /// whole: it goes out as several messages, each under the limit.
    #[test]
    fn a_large_flush_passes_a_peer_that_takes_one_packet_a_message() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (a, b) = tokio::io::duplex(16 * 1024);
            let limit = 100 * 1024;
            let client =
                WebSocketStream::from_raw_socket(a, Role::Client, Some(config(limit))).await;
            let server =
                WebSocketStream::from_raw_socket(b, Role::Server, Some(config(limit))).await;
            let mut writer = WebSocketBytes::new(client);
            let mut reader = WebSocketBytes::new(server);
            let sent: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
            let expected = sent.clone();
            let writing = tokio::spawn(async move {
                writer.write_all(&sent).await.unwrap();
                writer.flush().await.unwrap();
                writer
            });
            let mut received = vec![0u8; expected.len()];
            reader.read_exact(&mut received).await.unwrap();
            assert!(received == expected);
            drop(writing.await.unwrap());
        });
    }
}
