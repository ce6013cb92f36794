//! The TLS machinery every side shares: the one crypto provider (ring) behind the device
//! clients, the REST clients and the emulator's listeners, and the operating system's roots.

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
