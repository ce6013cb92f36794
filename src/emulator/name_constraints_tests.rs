//! The emulator CA's name constraints, checked by real verifiers: rustls (webpki) over real TLS
//! on loopback, and `openssl verify` when the OpenSSL command is installed. The CA's own server
//! certificate is accepted for the loopback names it serves; a leaf made with the CA's key for
//! any other name is rejected because of the constraints (the same leaf from an unconstrained
//! CA passes, so the rejection is the constraints' doing). Hub host names outside them are
//! refused, and a CA without constraints from an older data folder is replaced.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

use super::tests::support::start;
use super::*;
use crate::pki::{CaOptions, CertificateAuthority, Credential, KeyAlgorithm, Validity};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client_config(trust_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::pki::Certificate::chain_from_pem(trust_pem.as_bytes()).unwrap() {
        roots
            .add(CertificateDer::from(cert.der().to_vec()))
            .unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(crate::transport::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS handshake with `port` on 127.0.0.1, verifying the server as `name`; the server's
/// leaf on success, rustls's error otherwise.
async fn handshake(
    port: u16,
    trust_pem: &str,
    name: &str,
) -> std::result::Result<CertificateDer<'static>, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(trust_pem));
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    match connector.connect(server_name, tcp).await {
        Ok(stream) => Ok(stream.get_ref().1.peer_certificates().unwrap()[0].clone()),
        Err(e) => Err(format!("{e:?}")),
    }
}

/// Serves one TLS handshake on loopback with `leaf` (signed by `ca`) and returns its port.
async fn serve_leaf(leaf: &Credential) -> u16 {
    let chain = vec![CertificateDer::from(leaf.certificate().der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key().pkcs8_der().to_vec()));
    let config = rustls::ServerConfig::builder_with_provider(crate::transport::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        if let Ok((tcp, _)) = listener.accept().await {
            // The client's verdict is what the test looks at; the server side may fail.
            let _ = acceptor.accept(tcp).await;
        }
    });
    port
}

/// The emulator's CA with its key, as a user (or an attacker holding the key) would load it.
fn emulator_ca(dir: &Path) -> CertificateAuthority {
    CertificateAuthority::from_pem(
        &std::fs::read(dir.join(tls::CA_CERT_FILE)).unwrap(),
        &std::fs::read(dir.join(tls::CA_KEY_FILE)).unwrap(),
        None,
    )
    .unwrap()
}

fn unconstrained_ca() -> CertificateAuthority {
    CertificateAuthority::create_root(
        "Unconstrained",
        &CaOptions {
            algorithm: KeyAlgorithm::EcP256,
            validity: Validity::days(30, None).unwrap(),
            path_length: Some(0),
            organization: None,
        },
    )
    .unwrap()
}

fn leaf(ca: &CertificateAuthority, host: &str) -> Credential {
    ca.issue_server(&[host.to_string()], Validity::days(1, None).unwrap())
        .unwrap()
}

#[test]
fn the_emulator_ca_has_critical_name_constraints_for_loopback_and_localhost() {
    let emulator = start(None);
    let ca = emulator_ca(emulator.data_dir());
    let parsed = ca.credential().certificate().parsed();
    let constraints = parsed
        .name_constraints()
        .unwrap()
        .expect("no name constraints");
    assert!(constraints.critical);
    assert!(constraints.value.excluded_subtrees.is_none());
    let permitted: Vec<String> = constraints
        .value
        .permitted_subtrees
        .as_ref()
        .unwrap()
        .iter()
        .map(|s| format!("{:?}", s.base))
        .collect();
    assert_eq!(
        permitted,
        [
            "IPAddress([127, 0, 0, 0, 255, 0, 0, 0])",
            "IPAddress([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255])",
            "DNSName(\"localhost\")",
        ]
    );
}

#[test]
fn rustls_accepts_the_emulator_for_its_names_and_rejects_other_leaves_of_its_ca() {
    let emulator = start(None);
    emulator.create_hub("hub-a", "westeurope", None).unwrap();
    emulator
        .create_hub("hub-b", "westeurope", Some("hub-b.localhost"))
        .unwrap();
    let trust = emulator.trust_pem();
    let ca = emulator_ca(emulator.data_dir());
    let other = unconstrained_ca();
    runtime().block_on(async {
        let port = emulator.mqtt_port();
        for name in ["127.0.0.1", "localhost", "127.0.0.2", "hub-b.localhost"] {
            handshake(port, &trust, name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for host in ["example.com", "10.0.0.1", "hub.localhost.example.com"] {
            // The CA's key signs anything; the constraints are what make verifiers refuse it.
            let forged = serve_leaf(&leaf(&ca, host)).await;
            let error = handshake(forged, &trust, host).await.unwrap_err();
            assert!(error.contains("NameConstraintViolation"), "{host}: {error}");
            // The same leaf from a CA without constraints passes: the test can tell.
            let free = serve_leaf(&leaf(&other, host)).await;
            handshake(free, other.credential().certificate_pem(), host)
                .await
                .unwrap_or_else(|e| panic!("{host} (unconstrained): {e}"));
        }
        // Names the CA permits pass when a leaf is made for them.
        let fine = serve_leaf(&leaf(&ca, "x.localhost")).await;
        handshake(fine, &trust, "x.localhost").await.unwrap();
    });
}

fn openssl_verify(ca_pem: &str, leaf_pem: &str, check: &[&str]) -> Option<(bool, String)> {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    std::fs::write(&leaf, leaf_pem).unwrap();
    let output = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&ca)
        .args(check)
        .arg(&leaf)
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some((output.status.success(), text))
}

#[test]
fn openssl_accepts_the_emulator_for_its_names_and_rejects_other_leaves_of_its_ca() {
    let emulator = start(None);
    let trust = emulator.trust_pem();
    let served = runtime()
        .block_on(handshake(emulator.mqtt_port(), &trust, "127.0.0.1"))
        .unwrap();
    let served_pem = crate::pki::Certificate::from_der(&served).unwrap().pem();
    let Some((ok, text)) = openssl_verify(&trust, &served_pem, &["-verify_ip", "127.0.0.1"]) else {
        eprintln!("openssl is not installed: the OpenSSL half of this test is skipped");
        return;
    };
    assert!(ok, "{text}");
    let (ok, text) =
        openssl_verify(&trust, &served_pem, &["-verify_hostname", "localhost"]).unwrap();
    assert!(ok, "{text}");
    let ca = emulator_ca(emulator.data_dir());
    let other = unconstrained_ca();
    for (host, check) in [
        ("example.com", "-verify_hostname"),
        ("10.0.0.1", "-verify_ip"),
    ] {
        let forged = leaf(&ca, host).certificate_pem().to_string();
        let (ok, text) = openssl_verify(&trust, &forged, &[check, host]).unwrap();
        assert!(!ok, "{host}: {text}");
        assert!(text.contains("subtree violation"), "{host}: {text}");
        // Without asking for a name, the constraints alone still refuse it.
        let (ok, text) = openssl_verify(&trust, &forged, &[]).unwrap();
        assert!(!ok, "{host}: {text}");
        let free = leaf(&other, host).certificate_pem().to_string();
        let (ok, text) =
            openssl_verify(other.credential().certificate_pem(), &free, &[check, host]).unwrap();
        assert!(ok, "{host} (unconstrained): {text}");
    }
}

#[test]
fn hub_host_names_outside_the_constraints_are_refused() {
    let emulator = start(None);
    for host in [
        "contoso.azure-devices.net",
        "10.0.0.1",
        "localhost.example.com",
    ] {
        let error = emulator
            .create_hub("outside", "westeurope", Some(host))
            .unwrap_err();
        assert!(matches!(error, crate::Error::Config(_)), "{error:?}");
        assert!(
            error
                .to_string()
                .contains("outside the names the emulator's CA may vouch for"),
            "{error}"
        );
        assert!(emulator.cloud().hub("outside").is_err());
    }
    for (name, host) in [("dotted", "contoso.localhost"), ("ip-host", "127.0.0.77")] {
        emulator
            .create_hub(name, "westeurope", Some(host))
            .unwrap_or_else(|e| panic!("{host}: {e}"));
    }
}

#[test]
fn a_ca_without_constraints_from_an_older_data_folder_is_replaced() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    let old = unconstrained_ca();
    std::fs::write(
        dir.join(tls::CA_CERT_FILE),
        old.credential().certificate_pem(),
    )
    .unwrap();
    std::fs::write(
        dir.join(tls::CA_KEY_FILE),
        old.credential().private_key_pem(),
    )
    .unwrap();
    let emulator = start(Some(dir.clone()));
    let trust = emulator.trust_pem();
    assert_ne!(trust, old.credential().certificate_pem());
    assert_eq!(
        std::fs::read_to_string(dir.join(tls::CA_CERT_FILE)).unwrap(),
        trust
    );
    let ca = emulator_ca(&dir);
    assert!(
        ca.credential()
            .certificate()
            .parsed()
            .name_constraints()
            .unwrap()
            .is_some()
    );
    #[cfg(unix)]
    assert_eq!(super::secrets::mode_of(&dir.join(tls::CA_KEY_FILE)), 0o600);
    // The replacement is kept by the next start.
    drop(emulator);
    let again = start(Some(dir));
    assert_eq!(again.trust_pem(), trust);
}

/// The server certificate `tls` presents, as PEM.
fn served_pem(tls: &tls::EmulatorTls) -> String {
    crate::pki::Certificate::from_der(&tls.served_chain()[0])
        .unwrap()
        .pem()
}

#[test]
fn a_non_loopback_host_is_permitted_and_a_ca_that_left_it_out_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    // Documentation addresses: nothing is bound, only the CA and certificate are made.
    let first = tls::EmulatorTls::load_or_create(dir.path(), vec!["192.0.2.10".into()]).unwrap();
    first.check_host("192.0.2.10").unwrap();
    first.check_host("127.0.0.5").unwrap();
    assert!(first.check_host("192.0.2.11").is_err());
    // OpenSSL reads an IP-like CN as a DNS name when no DNS name is among the certificate's
    // names, and would hold it against the DNS constraints.
    if let Some((ok, text)) = openssl_verify(
        &first.trust_pem(),
        &served_pem(&first),
        &["-verify_ip", "192.0.2.10"],
    ) {
        assert!(ok, "{text}");
    }
    // A loopback start is covered by that CA: kept.
    let loopback =
        tls::EmulatorTls::load_or_create(dir.path(), vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
    assert_eq!(loopback.trust_pem(), first.trust_pem());
    // Another address is not: replaced by a CA for it, which no longer covers the first one.
    let moved = tls::EmulatorTls::load_or_create(dir.path(), vec!["198.51.100.7".into()]).unwrap();
    assert_ne!(moved.trust_pem(), first.trust_pem());
    moved.check_host("198.51.100.7").unwrap();
    assert!(moved.check_host("192.0.2.10").is_err());
}
