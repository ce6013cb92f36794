//! The TLS machinery every side shares: the one crypto provider (ring) behind the device
//! clients, the REST clients and the emulator's listeners, and the operating system's roots;
//! and the one jittered backoff the clients wait with between attempts.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The one crypto provider of the crate.
pub fn provider() -> Arc<CryptoProvider> {
    // One shared provider: every device's client configuration holds it, and its lists of
    // suites and groups would otherwise be copied ten thousand times in a fleet.
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The operating system's trust anchors: what Azure's endpoints (and webhooks) chain to.
pub fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // One unusable system certificate must not make Azure unreachable; the others serve.
        let _ = roots.add(cert);
    }
    roots
}

/// 1 s doubling per failure up to 30 s, with ±50 % jitter so that a fleet does not retry in
/// lockstep: device registrations and reconnects, and the REST clients' retries when the
/// service gave no `Retry-After`.
pub(crate) fn jittered_backoff(failures: u32) -> std::time::Duration {
    let base = (1u64 << failures.saturating_sub(1).min(5)).min(30) as f64;
    let mut byte = [0u8; 1];
    let _ = crate::pki::keys::fill_random(&mut byte);
    std::time::Duration::from_secs_f64(base * (0.5 + f64::from(byte[0]) / 255.0))
}
