//! Port 443 on each resource's own address, as Azure serves it: HTTPS for the service APIs
//! (a hub's address answers the official service SDK's `https://{hub host}/devices/...`, the
//! DPS address its service API, the DPS's `serviceOperationsHostName`), and MQTT over WebSockets on `/$iothub/websocket`
//! (subprotocol `mqtt`) for devices behind firewalls, DPS and hubs alike.
//!
//! A WebSocket session is the MQTT listener's session (`server::session`) over another stream:
//! the identity is still what this TLS handshake proved (client certificates are requested
//! and optional, as on 8883), the connection counts against the MQTT listener's cap, and its
//! CONNECT deadline runs from the upgrade. The HTTP side keeps the REST listener's cap and
//! deadlines.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::emulator::rest::{self, RestContext};
use crate::emulator::server::{self, DeviceStream, ServerContext};
use crate::transport::mqtt::MQTT_ENVELOPE_BYTES;
use crate::transport::websocket::{self, MQTT_PATH, MQTT_SUBPROTOCOL, MqttStream, WebSocketBytes};

/// What the web listener serves from: the REST listener's context (APIs, cap, deadlines) and
/// the MQTT listener's (engines, limits, connection slots).
pub(crate) struct WebContext {
    /// The REST APIs.
    pub(crate) rest: Arc<RestContext>,
    /// The MQTT sessions.
    pub(crate) server: Arc<ServerContext>,
    /// TLS with client certificates requested (devices over WebSockets present theirs here).
    pub(crate) acceptor: TlsAcceptor,
}

/// Accepts connections on `listener` until the runtime stops.
pub(crate) async fn serve(listener: TcpListener, context: Arc<WebContext>) {
    let (slots, acceptor) = (context.rest.slots.clone(), context.acceptor.clone());
    let header_timeout = context.rest.limits.header_timeout;
    rest::accept_tls(
        "HTTPS/WebSocket",
        listener,
        slots,
        acceptor,
        header_timeout,
        move |tls, peer| {
            let context = context.clone();
            async move {
                // Parsed only for an upgrade: a REST client's certificate (if any) is not its
                // identity, its SAS token is.
                let presented: Arc<Vec<rustls::pki_types::CertificateDer<'static>>> = Arc::new(
                    tls.get_ref()
                        .1
                        .peer_certificates()
                        .unwrap_or_default()
                        .iter()
                        .map(|c| c.clone().into_owned())
                        .collect(),
                );
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let context = context.clone();
                    let presented = presented.clone();
                    async move {
                        let response = if is_upgrade(&request) {
                            upgrade(request, &presented, &context)
                        } else {
                            rest::handle(request, rest::Entrance::Resource, &context.rest).await
                        };
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                if let Err(e) = rest::http1(header_timeout)
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await
                {
                    log::debug!("emulator: connection on the web port from {peer} ended: {e}");
                }
            }
        },
    )
    .await;
}

/// Whether a request asks for a WebSocket (then it is answered here, whatever its path, so a
/// wrong path gets the WebSocket refusal rather than a REST 404).
fn is_upgrade<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn refuse(status: StatusCode, why: &str) -> Response<Full<Bytes>> {
    log::info!("emulator: WebSocket upgrade refused ({status}): {why}");
    let mut response = Response::new(Full::new(Bytes::from(why.to_string())));
    *response.status_mut() = status;
    response
}

/// Answers a WebSocket upgrade (RFC 6455 section 4.2) for MQTT and starts the session on the
/// upgraded connection; anything else about the request is refused before any MQTT is read.
fn upgrade(
    mut request: Request<Incoming>,
    presented: &Arc<Vec<rustls::pki_types::CertificateDer<'static>>>,
    context: &Arc<WebContext>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "a WebSocket opens with GET");
    }
    if request.uri().path() != MQTT_PATH {
        return refuse(
            StatusCode::NOT_FOUND,
            &format!("WebSockets are served on {MQTT_PATH} only"),
        );
    }
    let headers = request.headers();
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|item| item.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has_token(CONNECTION, "upgrade") {
        return refuse(StatusCode::BAD_REQUEST, "Connection: Upgrade is missing");
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "only WebSocket version 13 is served",
        );
    }
    // Azure serves MQTT over WebSockets with the `mqtt` subprotocol; a client that does not
    // offer it would not speak what follows.
    if !has_token(SEC_WEBSOCKET_PROTOCOL, MQTT_SUBPROTOCOL) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the WebSocket subprotocol `mqtt` is not offered",
        );
    }
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY) else {
        return refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing");
    };
    let accept = derive_accept_key(key.as_bytes());
    let Ok(slot) = context.server.slots.clone().try_acquire_owned() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "{} connections already open",
                context.server.limits.max_connections
            ),
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let server = context.server.clone();
    let chain = server::presented_chain(presented, server.limits.max_chain_length);
    tokio::spawn(async move {
        let _slot = slot;
        let accepted_at = tokio::time::Instant::now();
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                log::info!("emulator: WebSocket upgrade failed: {e}");
                return;
            }
        };
        let max_message = server
            .limits
            .max_packet_size
            .saturating_add(MQTT_ENVELOPE_BYTES);
        let socket = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(websocket::config(max_message)),
        )
        .await;
        let stream: DeviceStream = MqttStream::WebSocket(Box::new(WebSocketBytes::new(socket)));
        if let Err(reason) = server::session(stream, chain, &server, accepted_at).await {
            log::info!("emulator: closed a WebSocket session: {reason}");
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("mqtt"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}
