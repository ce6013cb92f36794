//! The transport every side shares: the one crypto provider (ring) behind the device
//! clients, the REST clients and the emulator's listeners, the operating system's roots and
//! the clients' [`Trust`] built on them;
//! one framed MQTT connection ([`mqtt`]) under the hub client and the emulator's listener,
//! over TLS or over a WebSocket ([`websocket`], port 443);
//! the one jittered backoff the clients wait with between attempts; the one bounded
//! concurrent spawning ([`bounded`]) the clients open many connections with; and AMQP values
//! read as text and bytes ([`amqp`]) by the events endpoint and its reader.

pub(crate) mod amqp;
pub(crate) mod bounded;
pub(crate) mod mqtt;
pub(crate) mod proxy;
mod trust;
pub(crate) mod websocket;

pub use trust::Trust;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The one crypto provider of the crate.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    // One shared provider: every device's client configuration holds it, and its lists of
    // suites and groups would otherwise be copied ten thousand times in a fleet.
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The operating system's trust anchors: what Azure's endpoints (and webhooks) chain to. Read
/// the platform's way by `rustls-native-certs` (the Windows certificate store, the macOS
/// keychain, the OpenSSL files and `SSL_CERT_FILE`/`SSL_CERT_DIR` elsewhere), so no `cfg` here.
pub(crate) fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        // One unusable system certificate must not make Azure unreachable; the others serve.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        // Otherwise the first sign would be an "unknown issuer" from Azure's TLS handshake.
        log::warn!(
            "no usable trusted root certificates were found on this system ({}): TLS to Azure \
             will fail; install the system's CA certificates or set SSL_CERT_FILE",
            if found.errors.is_empty() {
                "the store is empty".to_string()
            } else {
                found
                    .errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        );
    }
    roots
}

/// 1 s doubling per failure up to 30 s, with ±50 % jitter so that a fleet does not retry in
/// lockstep: device registrations and reconnects, and the REST clients' retries when the
/// service gave no `Retry-After`.
pub(crate) fn jittered_backoff(failures: u32) -> std::time::Duration {
    let base = (1u64 << failures.saturating_sub(1).min(5)).min(30) as f64;
    let mut byte = [0u8; 1];
    let _ = crate::random::fill_random(&mut byte);
    std::time::Duration::from_secs_f64(base * (0.5 + f64::from(byte[0]) / 255.0))
}
