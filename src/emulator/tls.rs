//! The emulator's TLS: its own CA (made on first start, kept in the data folder), a server
//! certificate that covers every host name the emulator hands out (re-issued when a hub adds a
//! name), and a client-certificate verifier that checks possession of the key during the
//! handshake but leaves the chain to the application, as DPS does.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use crate::error::{Error, Result};
use crate::pki::files::{write_public, write_secret};
use crate::pki::{CaOptions, CertificateAuthority, KeyAlgorithm, Validity};

/// The one crypto provider of the crate.
pub fn provider() -> Arc<CryptoProvider> {
    // One shared provider: every device's client configuration holds it, and its lists of
    // suites and groups would otherwise be copied ten thousand times in a fleet.
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

const CA_CERT_FILE: &str = "emulator-ca.cert.pem";
const CA_KEY_FILE: &str = "emulator-ca.key.pem";

/// The emulator's CA and current server certificate.
pub struct EmulatorTls {
    ca: CertificateAuthority,
    hosts: RwLock<Vec<String>>,
    resolver: Arc<ServerCertResolver>,
}

impl EmulatorTls {
    /// Loads the CA from `data_dir`, or creates and saves it on first start.
    pub fn load_or_create(data_dir: &Path, hosts: Vec<String>) -> Result<Self> {
        let cert_path = data_dir.join(CA_CERT_FILE);
        let key_path = data_dir.join(CA_KEY_FILE);
        let ca = if cert_path.exists() && key_path.exists() {
            let cert = std::fs::read(&cert_path).map_err(|e| Error::io(&cert_path, e))?;
            let key = std::fs::read(&key_path).map_err(|e| Error::io(&key_path, e))?;
            CertificateAuthority::from_pem(&cert, &key, None)?
        } else {
            let ca = CertificateAuthority::create_root(
                "dpskit Local Cloud CA",
                &CaOptions {
                    algorithm: KeyAlgorithm::EcP256,
                    validity: Validity::days(3650, None)?,
                    path_length: Some(0),
                    organization: Some("dpskit emulator".into()),
                },
            )?;
            write_secret(&key_path, ca.credential().private_key_pem().as_bytes())?;
            write_public(&cert_path, ca.credential().certificate_pem().as_bytes())?;
            ca
        };
        let resolver = Arc::new(ServerCertResolver {
            current: RwLock::new(issue(&ca, &hosts)?),
        });
        Ok(EmulatorTls {
            ca,
            hosts: RwLock::new(hosts),
            resolver,
        })
    }

    /// PEM of the CA clients must trust.
    pub fn trust_pem(&self) -> String {
        self.ca.credential().certificate_pem().to_string()
    }

    /// Makes sure the server certificate covers `host`, re-issuing it if needed.
    pub fn cover_host(&self, host: &str) -> Result<()> {
        let mut hosts = self.hosts.write().unwrap_or_else(|e| e.into_inner());
        if hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            return Ok(());
        }
        hosts.push(host.to_string());
        let key = issue(&self.ca, &hosts)?;
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = key;
        Ok(())
    }

    /// The rustls server configuration: TLS 1.2 and 1.3, client certificates requested and
    /// optional (SAS clients send none).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let provider = provider();
        let config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::Emulator(format!("TLS configuration: {e}")))?
            .with_client_cert_verifier(Arc::new(DeferredClientCertVerifier { provider }))
            .with_cert_resolver(self.resolver.clone());
        Ok(Arc::new(config))
    }
}

impl EmulatorTls {
    /// The configuration of the HTTPS listener: the same certificate, no client certificates,
    /// HTTP/1.1 by ALPN.
    pub fn https_config(&self) -> Result<Arc<ServerConfig>> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::Emulator(format!("TLS configuration: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn issue(ca: &CertificateAuthority, hosts: &[String]) -> Result<Arc<CertifiedKey>> {
    let credential = ca.issue_server(hosts, Validity::days(825, None)?)?;
    let mut chain = vec![CertificateDer::from(
        credential.certificate().der().to_vec(),
    )];
    chain.extend(
        credential
            .issuers()
            .iter()
            .map(|c| CertificateDer::from(c.der().to_vec())),
    );
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        credential.key().pkcs8_der().to_vec(),
    ));
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| Error::Emulator(format!("server key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

#[derive(Debug)]
struct ServerCertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// Requests a client certificate and checks the handshake signature (possession of the key),
/// accepting any chain: DPS judges the chain after CONNECT and answers 401, never a TLS alert.
#[derive(Debug)]
struct DeferredClientCertVerifier {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for DeferredClientCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
