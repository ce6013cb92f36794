//! The AMQP listener: TLS accepted under the REST listeners' cap-and-deadline loop, then
//! fe2o3-amqp's acceptor (SASL, AMQP header, Open) over the padded stream, then one task per
//! session. Everything a connection does ends with it; an error is logged, never raised.

use std::net::SocketAddr;
use std::sync::Arc;

use fe2o3_amqp::acceptor::{ConnectionAcceptor, SessionAcceptor};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use super::cbs::Grants;
use super::sasl::TokenSasl;
use super::wire_compat::PadPerformatives;
use super::{AmqpContext, HANDSHAKE_TIMEOUT, IDLE_TIMEOUT_MS};

/// The largest frame either side may send. Not fe2o3's default (u32::MAX): a default is
/// written as null, and pyamqp compares the field as a number.
const MAX_FRAME_SIZE: u32 = 256 * 1024;
/// Channels (sessions) per connection; not the default for the same reason.
const CHANNEL_MAX: u16 = 4096;
/// Links per session; not the default (u32::MAX) for the same reason (pyamqp's
/// `len(handles) >= handle_max` fails on null).
const HANDLE_MAX: u32 = 4095;

/// Accepts AMQP connections on `listener` until the runtime stops.
pub(crate) async fn serve(listener: TcpListener, context: Arc<AmqpContext>) {
    let (slots, acceptor) = (context.slots.clone(), context.acceptor.clone());
    crate::emulator::rest::accept_tls(
        "AMQP",
        listener,
        slots,
        acceptor,
        HANDSHAKE_TIMEOUT,
        move |tls, peer| {
            let context = context.clone();
            async move {
                if let Err(why) = connection(tls, peer, context).await {
                    log::info!("emulator: AMQP connection from {peer} ended: {why}");
                }
            }
        },
    )
    .await;
}

async fn connection(
    tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    context: Arc<AmqpContext>,
) -> Result<(), String> {
    // Built per connection (it is cheap) so nothing of one connection's SASL reaches another;
    // a token SASL PLAIN carried is the connection's first grant.
    let grants = Arc::new(Grants::new(context.cloud.clock().clone()));
    let acceptor = ConnectionAcceptor::builder()
        .container_id("dpskit-emulator")
        .max_frame_size(MAX_FRAME_SIZE)
        .channel_max(CHANNEL_MAX)
        .idle_time_out(IDLE_TIMEOUT_MS)
        .sasl_acceptor(TokenSasl::new(context.clone(), grants.clone()))
        .build();
    let mut connection = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        acceptor.accept(PadPerformatives::new(tls)),
    )
    .await
    .map_err(|_| "no AMQP Open within the handshake deadline".to_string())?
    .map_err(|e| format!("AMQP open failed: {e}"))?;
    log::debug!("emulator: AMQP connection from {peer} open");
    let sessions = SessionAcceptor::builder().handle_max(HANDLE_MAX).build();
    while let Some(incoming) = connection.next_incoming_session().await {
        let session = sessions
            .accept_incoming_session(incoming, &mut connection)
            .await
            .map_err(|e| format!("a session could not begin: {e}"))?;
        tokio::spawn(super::router::session(
            session,
            context.clone(),
            grants.clone(),
        ));
    }
    // The clients close by dropping the socket after Close, which reads as an error here.
    let _ = connection.on_close().await;
    Ok(())
}
