//! The trust anchors a client checks servers against: the emulator's CA or Azure's public
//! roots, parsed once and shared; and the TLS client configuration built on them for one
//! device (its certificate chain, its session cache) or one REST client.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::{Error, Result};
use crate::pki::{Certificate, Credential};

/// Trust anchors for the servers' certificates (DPS, the hubs, ARM and the service APIs),
/// shared by every client in the process (one parse of the PEM, not one per device).
#[derive(Clone)]
pub struct Trust {
    roots: Arc<rustls::RootCertStore>,
}

impl Trust {
    /// Trusts the certificates in `pem` (the emulator's CA, or Azure's roots).
    pub fn from_pem(pem: &[u8]) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in Certificate::chain_from_pem(pem)? {
            roots
                .add(CertificateDer::from(cert.der().to_vec()))
                .map_err(|e| Error::cert_caused("unusable trust anchor", e))?;
        }
        Ok(Trust {
            roots: Arc::new(roots),
        })
    }

    /// The operating system's roots: what Azure's endpoints chain to.
    pub fn system() -> Self {
        Trust {
            roots: Arc::new(super::system_roots()),
        }
    }

    /// The anchors, shared.
    pub(crate) fn roots(&self) -> Arc<rustls::RootCertStore> {
        self.roots.clone()
    }

    /// A client configuration for one device presenting `credential` (its chain is sent, less
    /// any self-signed root; `None`: no client certificate, for a SAS device);
    /// `resumable_sessions` TLS sessions are kept for resuming after a reconnect (0: none, a
    /// full handshake each time).
    pub(crate) fn client_config(
        &self,
        credential: Option<&Credential>,
        resumable_sessions: usize,
    ) -> Result<rustls::ClientConfig> {
        let builder = rustls::ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config_caused("TLS configuration", e))?
            .with_root_certificates(self.roots.clone());
        let mut config = match credential {
            Some(credential) => {
                let chain = credential
                    .sent_chain()
                    .map(|c| CertificateDer::from(c.der().to_vec()))
                    .collect();
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                    credential.key().pkcs8_der().to_vec(),
                ));
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::cert_caused("unusable client certificate", e))?
            }
            None => builder.with_no_client_auth(),
        };
        // rustls' default cache of 256 sessions per configuration would cost tens of KB per
        // device; each stored session holds the server's chain (about 2 KB).
        config.resumption = match resumable_sessions {
            0 => rustls::client::Resumption::disabled(),
            n => rustls::client::Resumption::in_memory_sessions(n),
        };
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Azure's endpoints chain to public roots: a client configuration for either kind of
    /// device builds on the system's roots (no network; a host without any still builds one,
    /// which then trusts nothing).
    #[test]
    fn client_configurations_build_on_the_system_roots() {
        use crate::pki::{CaOptions, CertificateAuthority, KeyAlgorithm, Validity};
        let trust = Trust::system();
        let config = trust.client_config(None, 2).unwrap();
        assert!(!config.client_auth_cert_resolver.has_certs());
        let root = CertificateAuthority::create_root(
            "System Roots Test",
            &CaOptions {
                algorithm: KeyAlgorithm::EcP256,
                validity: Validity::days(1, None).unwrap(),
                path_length: None,
                organization: None,
            },
        )
        .unwrap();
        let device = root
            .issue_device(
                "sys-1",
                KeyAlgorithm::EcP256,
                Validity::days(1, None).unwrap(),
            )
            .unwrap();
        let config = trust.client_config(Some(device.credential()), 0).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
        // The same anchors as rustls-native-certs finds, none dropped on the way.
        let native = rustls_native_certs::load_native_certs().certs.len();
        assert!(trust.roots().len() <= native);
        if native > 0 {
            assert!(
                !trust.roots().is_empty(),
                "{native} system roots, none kept"
            );
        }
    }
}
