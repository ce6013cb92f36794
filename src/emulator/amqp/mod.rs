//! AMQP 1.0 on port 5671 of each hub's address: the hub's built-in Event Hub-compatible
//! endpoint (`messages/events`), as the official Event Hubs clients read it, and the
//! service side's cloud-to-device sends (`messages/devicebound`, `c2d`) and their delivery
//! feedback (`messages/servicebound/feedback`, `feedback`).
//!
//! Azure's clients open TLS straight on 5671 (no AMQP TLS upgrade), so the TLS handshake is
//! ours (`listener`), with the emulator's certificate, and fe2o3-amqp's acceptor runs the AMQP
//! connection over the decrypted stream, behind a shim that writes its performatives at full
//! length (`wire_compat`: the Python clients read fields by position). Nothing but `$cbs` is
//! served before a token covers it (`sasl` lets every client's mechanism through and judges
//! the service token IoT Hub's SASL PLAIN carries, `cbs` judges the tokens put on `$cbs`, both
//! with the REST APIs' SAS check); `router` dispatches each attach by role
//! and address; `management` answers `$management`'s READs; `partition` streams a
//! partition's events from the durable store (`store`'s per-partition numbering), from the
//! position its `selector` filter names, pre-settled and within the credit the client grants;
//! `readers` keeps epochs and the readers' cap per partition.
//!
//! One port serves every hub (entities are hubs' names), bound where the web port is; when
//! 5671 cannot be bound a free port is used instead, said once in the log. Connections are
//! capped, the TLS, SASL and Open exchange has a deadline, and a connection silent for its
//! idle timeout is closed (the clients keep it alive with empty frames); frames and the
//! messages a client sends are bounded (256 KiB each); a malformed frame ends its own
//! connection only.

mod c2d;
mod cbs;
mod feedback;
mod listener;
mod management;
mod node;
mod partition;
mod readers;
mod router;
mod sasl;
mod selector;
#[cfg(test)]
mod tests;
mod wire_compat;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::emulator::Cloud;
use crate::emulator::store::Store;

pub(crate) use listener::serve;

/// Azure's port for AMQP over TLS.
pub const AMQP_PORT: u16 = 5671;

/// Connections served at once; further ones wait in the accept backlog.
const MAX_CONNECTIONS: usize = 256;
/// Time allowed for the TLS handshake, SASL and the AMQP Open.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The idle timeout the endpoint announces and keeps: Azure's 240 s (the clients send empty
/// frames within half of it).
const IDLE_TIMEOUT_MS: u32 = 240_000;

/// What the AMQP listener serves from.
pub(crate) struct AmqpContext {
    /// Hubs and their policies.
    pub(crate) cloud: Arc<Cloud>,
    /// The durable events.
    pub(crate) store: Arc<Store>,
    /// The hubs' C2D queues.
    pub(crate) hubs: Arc<crate::emulator::hub::HubEngine>,
    /// TLS with the emulator's certificate.
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    /// The connection cap.
    pub(crate) slots: Arc<Semaphore>,
    /// The listeners, for the ports a token's `sr` may name.
    pub(crate) listeners: Arc<crate::emulator::Listeners>,
    /// Who reads each partition (epochs, the readers' cap).
    pub(crate) readers: Arc<readers::Readers>,
}

impl AmqpContext {
    /// A context over the emulator's parts.
    pub(crate) fn new(
        cloud: Arc<Cloud>,
        store: Arc<Store>,
        hubs: Arc<crate::emulator::hub::HubEngine>,
        acceptor: tokio_rustls::TlsAcceptor,
        listeners: Arc<crate::emulator::Listeners>,
    ) -> Self {
        AmqpContext {
            cloud,
            store,
            hubs,
            acceptor,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            listeners,
            readers: Arc::default(),
        }
    }

    /// The ports a token's `sr` may name after the host: this endpoint's (configured and
    /// Azure's) and the web port's (the IoT Hub service SDK signs its connection string's
    /// `HostName`, which names the web port when 443 could not be bound).
    pub(crate) fn accepted_ports(&self) -> Vec<u16> {
        vec![
            AMQP_PORT,
            self.listeners.amqp_port(),
            crate::emulator::WEB_PORT,
            self.listeners.web_port(),
        ]
    }
}
