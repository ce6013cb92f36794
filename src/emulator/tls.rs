//! The emulator's TLS: its own CA (made on first start, kept in the data folder), a server
//! certificate that covers every host name the emulator hands out (re-issued when a hub adds a
//! name), and a client-certificate verifier that checks possession of the key during the
//! handshake but leaves the chain to the application, as DPS does.
//!
//! Users trust the CA in their machine's or SDK's store, so it must not be able to vouch for
//! anything but the emulator: it carries critical name constraints permitting only the loopback
//! networks (127.0.0.0/8, ::1/128), `localhost` (and the names below it, such as
//! `hub.localhost`) and the address the emulator was started on when that is not loopback. A
//! hub host name outside them is refused when the hub is created or the emulator starts. A CA
//! found in the data folder without such constraints (made by an older dpskit), or whose
//! constraints leave out the address this start listens on, is replaced by a new one with a
//! warning: keeping it would leave a CA that can sign for any host in the trust stores of
//! every machine that trusted it, while replacing it only costs re-trusting
//! `emulator-ca.cert.pem`, which dpskit's own clients read afresh at each start. Its key is
//! owner-only (0600, tightened with a warning when found looser).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use crate::emulator::secrets;
use crate::error::{Error, Result};
use crate::pki::files::write_public;
use crate::pki::{CaOptions, CertificateAuthority, KeyAlgorithm, PermittedName, Validity};

/// File name of the emulator CA's certificate in the data folder.
pub(crate) const CA_CERT_FILE: &str = "emulator-ca.cert.pem";
/// File name of the emulator CA's private key in the data folder (mode 0600).
pub(crate) const CA_KEY_FILE: &str = "emulator-ca.key.pem";

/// The emulator's CA and current server certificate.
pub(crate) struct EmulatorTls {
    ca: CertificateAuthority,
    /// The CA's name constraints: the only host names a server certificate may carry.
    permitted: Vec<PermittedName>,
    hosts: RwLock<Vec<String>>,
    resolver: Arc<ServerCertResolver>,
}

/// The names a new CA may vouch for when the emulator listens on `host`.
pub(crate) fn permitted_names(host: IpAddr) -> Vec<PermittedName> {
    let mut permitted = vec![
        PermittedName::Ip(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
        PermittedName::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
        PermittedName::Dns("localhost".into()),
    ];
    if !host.is_loopback() {
        let bits = if host.is_ipv4() { 32 } else { 128 };
        permitted.push(PermittedName::Ip(host, bits));
    }
    permitted
}

/// The permitted subtrees of a CA's critical name constraints, when it has such constraints in
/// a form this module makes (DNS and IP subtrees only, nothing excluded); `None` otherwise.
fn constraints_of(ca: &CertificateAuthority) -> Option<Vec<PermittedName>> {
    use x509_parser::extensions::GeneralName;
    let parsed = ca.credential().certificate().parsed();
    let extension = parsed.name_constraints().ok()??;
    if !extension.critical || extension.value.excluded_subtrees.is_some() {
        return None;
    }
    let subtrees = extension.value.permitted_subtrees.as_ref()?;
    let mut permitted = Vec::with_capacity(subtrees.len());
    for subtree in subtrees {
        permitted.push(match &subtree.base {
            GeneralName::DNSName(name) => PermittedName::Dns((*name).to_string()),
            GeneralName::IPAddress(bytes) => {
                let (address, mask) = bytes.split_at(bytes.len() / 2);
                let ip = match address.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(address).ok()?),
                    16 => IpAddr::from(<[u8; 16]>::try_from(address).ok()?),
                    _ => return None,
                };
                let prefix = mask.iter().map(|b| b.count_ones()).sum::<u32>();
                PermittedName::Ip(ip, u8::try_from(prefix).ok()?)
            }
            _ => return None,
        });
    }
    (!permitted.is_empty()).then_some(permitted)
}

fn describe(permitted: &[PermittedName]) -> String {
    permitted
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn create_ca(
    cert_path: &Path,
    key_path: &Path,
    permitted: &[PermittedName],
) -> Result<CertificateAuthority> {
    let ca = CertificateAuthority::create_constrained_root(
        "dpskit Local Cloud CA",
        &CaOptions {
            algorithm: KeyAlgorithm::EcP256,
            validity: Validity::days(3650, None)?,
            path_length: Some(0),
            organization: Some("dpskit emulator".into()),
        },
        permitted,
    )?;
    // The key first: a certificate without its key would stop the next start.
    secrets::write_private(key_path, ca.credential().private_key_pem().as_bytes())?;
    write_public(cert_path, ca.credential().certificate_pem().as_bytes())?;
    Ok(ca)
}

impl EmulatorTls {
    /// Loads the CA from `data_dir`, or creates and saves it on first start (or when the CA
    /// found has no name constraints covering `hosts`: see the module header).
    pub(crate) fn load_or_create(data_dir: &Path, hosts: Vec<String>) -> Result<Self> {
        let cert_path = data_dir.join(CA_CERT_FILE);
        let key_path = data_dir.join(CA_KEY_FILE);
        let listen = hosts
            .iter()
            .find_map(|h| h.parse::<IpAddr>().ok())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let wanted = permitted_names(listen);
        // Before anything reads it: an older dpskit left the key at the umask's mode.
        secrets::private_file_if_present(&key_path)?;
        let ca = if cert_path.exists() && key_path.exists() {
            let cert = std::fs::read(&cert_path).map_err(|e| Error::io(&cert_path, e))?;
            let key = std::fs::read(&key_path).map_err(|e| Error::io(&key_path, e))?;
            let ca = CertificateAuthority::from_pem(&cert, &key, None)?;
            match constraints_of(&ca) {
                Some(permitted) if covers(&permitted, &hosts) => ca,
                found => {
                    log::warn!(
                        "emulator: the CA in {} {}; replaced it by a new CA limited to {}: \
                         clients must trust the new {CA_CERT_FILE}",
                        cert_path.display(),
                        match found {
                            None => "has no name constraints, so it could vouch for any host"
                                .to_string(),
                            Some(p) => format!("is limited to {}", describe(&p)),
                        },
                        describe(&wanted)
                    );
                    create_ca(&cert_path, &key_path, &wanted)?
                }
            }
        } else {
            create_ca(&cert_path, &key_path, &wanted)?
        };
        let permitted = constraints_of(&ca).unwrap_or(wanted);
        let resolver = Arc::new(ServerCertResolver {
            current: RwLock::new(issue(&ca, &hosts)?),
        });
        Ok(EmulatorTls {
            ca,
            permitted,
            hosts: RwLock::new(hosts),
            resolver,
        })
    }

    /// The server certificate (leaf first) the listeners present now.
    #[cfg(test)]
    pub(crate) fn served_chain(&self) -> Vec<CertificateDer<'static>> {
        self.resolver
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .cert
            .clone()
    }

    /// Refuses a host name the CA's name constraints leave out: a server certificate for it
    /// would be rejected by every client.
    pub(crate) fn check_host(&self, host: &str) -> Result<()> {
        if covers(&self.permitted, std::slice::from_ref(&host.to_string())) {
            Ok(())
        } else {
            let label = match host.parse::<IpAddr>() {
                Ok(_) => "hub",
                Err(_) => host.split('.').next().unwrap_or("hub"),
            };
            Err(Error::config(format!(
                "host name {host:?} is outside the names the emulator's CA may vouch for ({}): \
                 use a loopback address or a name under localhost (such as {label}.localhost)",
                describe(&self.permitted),
            )))
        }
    }

    /// PEM of the CA clients must trust.
    pub(crate) fn trust_pem(&self) -> String {
        self.ca.credential().certificate_pem().to_string()
    }

    /// Makes sure the server certificate covers `host`, re-issuing it if needed; a host outside
    /// the CA's name constraints is refused.
    pub(crate) fn cover_host(&self, host: &str) -> Result<()> {
        self.check_host(host)?;
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
    pub(crate) fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let provider = crate::transport::provider();
        let config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::emulator_caused("TLS configuration", e))?
            .with_client_cert_verifier(Arc::new(DeferredClientCertVerifier { provider }))
            .with_cert_resolver(self.resolver.clone());
        Ok(Arc::new(config))
    }
}

impl EmulatorTls {
    /// The configuration of the HTTPS listener: the same certificate, no client certificates,
    /// HTTP/1.1 by ALPN.
    pub(crate) fn https_config(&self) -> Result<Arc<ServerConfig>> {
        let mut config = ServerConfig::builder_with_provider(crate::transport::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::emulator_caused("TLS configuration", e))?
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The configuration of the AMQP endpoint (5671): the same certificate, no client
    /// certificates (its clients authenticate with CBS tokens) and no ALPN (the Event Hubs
    /// clients offer none).
    pub(crate) fn amqp_config(&self) -> Result<Arc<ServerConfig>> {
        let config = ServerConfig::builder_with_provider(crate::transport::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::emulator_caused("TLS configuration", e))?
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        Ok(Arc::new(config))
    }

    /// The configuration of port 443 on each resource's address: HTTP/1.1 by ALPN, and client
    /// certificates requested and optional as on 8883, because an X.509 device over
    /// WebSockets proves its identity in this handshake (a REST client sends none).
    pub(crate) fn web_config(&self) -> Result<Arc<ServerConfig>> {
        let provider = crate::transport::provider();
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::emulator_caused("TLS configuration", e))?
            .with_client_cert_verifier(Arc::new(DeferredClientCertVerifier { provider }))
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn covers(permitted: &[PermittedName], hosts: &[String]) -> bool {
    hosts
        .iter()
        .all(|host| permitted.iter().any(|p| p.permits(host)))
}

fn issue(ca: &CertificateAuthority, hosts: &[String]) -> Result<Arc<CertifiedKey>> {
    let mut names = hosts.to_vec();
    // With a DNS name among its names, OpenSSL skips checking the subject CN (an IP address
    // read as a DNS name) against the CA's DNS constraints.
    if !names.iter().any(|h| h.eq_ignore_ascii_case("localhost")) {
        names.push("localhost".into());
    }
    let credential = ca.issue_server(&names, Validity::days(825, None)?)?;
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
    let signer = crate::transport::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| Error::emulator_caused("server key", e))?;
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
