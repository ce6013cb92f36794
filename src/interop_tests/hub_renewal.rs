//! The hub client's certificate renewal against a scripted hub on real TLS: what it sends
//! (the certificate-management api-version, the `$iothub/credentials/res/#` subscription, the
//! request body IoT Hub parses) and how it reads each answer IoT Hub may give: 202 then 200,
//! a chain issued for another key, a pending request (409005), and silence.

use std::time::Duration;

use base64::Engine;
use bytes::BytesMut;
use rumqttc::{ConnAck, ConnectReturnCode, Packet, PubAck, Publish, QoS, SubAck};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::emulator::tls::EmulatorTls;
use crate::error::{Error, ServiceErrorKind};
use crate::hub::*;
use crate::pki::{
    CaOptions, Certificate, CertificateAuthority, CertificateRequest, KeyAlgorithm, PrivateKey,
    Validity,
};
use crate::protocol::credentials::{self, IssueCertificateRequest};
use crate::provisioning::{DeviceAuth, Trust};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const DEVICE: &str = "renew-1";

/// How the scripted hub answers the renewal request.
#[derive(Clone, Copy)]
enum Script {
    /// 202, then 200 with a chain issued for the CSR's key.
    Issue,
    /// 202, then 200 with a chain issued for another key.
    IssueForeign,
    /// 409005 naming a pending request.
    Conflict,
    /// Nothing at all.
    Silence,
}

/// What the hub saw of the device.
struct Seen {
    username: String,
    filters: Vec<String>,
    request: IssueCertificateRequest,
}

fn base64_chain(chain: &[Certificate]) -> Vec<String> {
    chain
        .iter()
        .map(|c| base64::engine::general_purpose::STANDARD.encode(c.der()))
        .collect()
}

fn write(packet: Packet, out: &mut BytesMut) {
    packet.write(out, usize::MAX).unwrap();
}

/// Serves one connection by `script`; returns what the device sent.
async fn scripted_hub(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    script: Script,
) -> Seen {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut tls = acceptor.accept(tcp).await.unwrap();
    let mut read = BytesMut::new();
    let mut username = String::new();
    let mut filters = Vec::new();
    let mut seen = None;
    loop {
        let packet = loop {
            match Packet::read(&mut read, 1 << 20) {
                Ok(packet) => break Some(packet),
                Err(rumqttc::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("the client sent a malformed packet: {e}"),
            }
            if tls.read_buf(&mut read).await.unwrap_or(0) == 0 {
                break None;
            }
        };
        // The connection stays up until the device leaves (a silent hub must not close it).
        let Some(packet) = packet else {
            return Seen {
                username,
                filters,
                request: seen.expect("the device left before renewing"),
            };
        };
        let mut out = BytesMut::new();
        match packet {
            Packet::Connect(connect) => {
                if let rumqttc::ConnectAuth::Username { username: u }
                | rumqttc::ConnectAuth::UsernamePassword { username: u, .. } = connect.auth
                {
                    username = u;
                }
                write(
                    Packet::ConnAck(ConnAck {
                        session_present: false,
                        code: ConnectReturnCode::Success,
                    }),
                    &mut out,
                );
            }
            Packet::Subscribe(subscribe) => {
                filters.extend(subscribe.filters.iter().map(|f| f.path.clone()));
                let codes = subscribe
                    .filters
                    .iter()
                    .map(|_| rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce))
                    .collect();
                write(Packet::SubAck(SubAck::new(subscribe.pkid, codes)), &mut out);
            }
            Packet::Publish(publish) => {
                write(Packet::PubAck(PubAck::new(publish.pkid)), &mut out);
                let topic = String::from_utf8(publish.topic.to_vec()).unwrap();
                let rid = credentials::parse_request_topic(&topic)
                    .expect("a renewal request with a $rid")
                    .to_string();
                let request = IssueCertificateRequest::parse(&publish.payload, DEVICE)
                    .expect("a request IoT Hub accepts");
                let answer = |status: u16, body: serde_json::Value, out: &mut BytesMut| {
                    write(
                        Packet::Publish(Publish::new(
                            credentials::response_topic(status, &rid),
                            QoS::AtMostOnce,
                            body.to_string(),
                        )),
                        out,
                    )
                };
                let accepted = serde_json::json!({
                    "correlationId": "c-1",
                    "operationExpires": "2026-01-31T12:52:20.565000000Z",
                });
                match script {
                    Script::Issue | Script::IssueForeign => {
                        let csr = CertificateRequest::from_base64(&request.csr).unwrap();
                        let chain = match script {
                            Script::Issue => issued_chain(&csr),
                            _ => {
                                let other = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
                                issued_chain(&CertificateRequest::generate(DEVICE, &other).unwrap())
                            }
                        };
                        answer(202, accepted, &mut out);
                        answer(
                            200,
                            serde_json::json!({
                                "correlationId": "c-1",
                                "certificates": base64_chain(&chain),
                            }),
                            &mut out,
                        );
                    }
                    Script::Conflict => answer(
                        409,
                        serde_json::json!({
                            "errorCode": 409005,
                            "message": credentials::messages::OPERATION_ACTIVE,
                            "trackingId": "t-1",
                            "timestampUtc": "2026-01-31T00:49:39.467401528Z",
                            "info": {"requestId": "earlier-1", "operationExpires": "2026-01-31T12:52:20Z"},
                        }),
                        &mut out,
                    ),
                    Script::Silence => {}
                }
                seen = Some(request);
            }
            _ => {}
        }
        // The device may be gone already (it closes once it has its answer).
        let _ = tls.write_all(&out).await;
        let _ = tls.flush().await;
    }
}

/// A policy's chain for `csr`: leaf (CN = the device), issuing CA, root.
fn issued_chain(csr: &CertificateRequest) -> Vec<Certificate> {
    let options = |path_length| CaOptions {
        algorithm: KeyAlgorithm::EcP384,
        validity: Validity::days(5, None).unwrap(),
        path_length,
        organization: None,
    };
    let root = CertificateAuthority::create_root("ns Root CA", &options(None)).unwrap();
    let ica = root
        .create_intermediate("policy ICA", &options(Some(0)))
        .unwrap();
    let leaf = ica
        .issue_for_request(csr, DEVICE, Validity::days(30, None).unwrap())
        .unwrap();
    vec![
        leaf,
        ica.credential().certificate().clone(),
        root.credential().certificate().clone(),
    ]
}

/// Connects a renewing device to a hub following `script` and renews once.
fn renew(script: Script) -> (Result<Vec<Certificate>, Error>, CertificateRequest, Seen) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let tls = EmulatorTls::load_or_create(dir.path(), vec!["127.0.0.1".into()]).unwrap();
        let trust = Trust::from_pem(tls.trust_pem().as_bytes()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config().unwrap());
        let hub = tokio::spawn(scripted_hub(listener, acceptor, script));
        let mut options = HubConnectOptions::new(
            "127.0.0.1",
            port,
            DEVICE,
            DeviceAuth::SymmetricKey(KEY.into()),
        );
        options.reconnect = false;
        options.certificate_renewal = true;
        // Silence ends the wait: short, so the test does not sit out three minutes.
        options.renewal_timeout = Duration::from_secs(2);
        let client = HubClient::connect(options, &trust).await.unwrap();
        let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        let csr = CertificateRequest::generate(DEVICE, &key).unwrap();
        let renewed = client.renew_certificate(&csr, None).await;
        client.close().await;
        let seen = hub.await.unwrap();
        (renewed, csr, seen)
    })
}

#[test]
fn a_renewal_sends_what_iot_hub_reads_and_returns_the_checked_chain() {
    let (renewed, csr, seen) = renew(Script::Issue);
    let chain = renewed.unwrap();
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[0].info().common_name.as_deref(), Some(DEVICE));
    assert!(
        seen.username
            .contains(&format!("api-version={}", credentials::API_VERSION)),
        "{}",
        seen.username
    );
    // The one filter (the connection task and connect() each subscribe on a fresh session,
    // as they do for the four of a receiving device).
    assert!(
        seen.filters
            .iter()
            .all(|f| f == credentials::RESPONSE_FILTER)
            && !seen.filters.is_empty(),
        "{:?}",
        seen.filters
    );
    assert_eq!(seen.request.id, DEVICE);
    assert_eq!(seen.request.csr, csr.to_base64());
    assert_eq!(seen.request.replace, None);
}

#[test]
fn a_chain_issued_for_another_key_is_refused() {
    let (renewed, _, _) = renew(Script::IssueForeign);
    let error = renewed.unwrap_err();
    assert!(matches!(error, Error::Protocol(_)), "{error:?}");
    assert!(
        error.to_string().contains("not for the CSR's key"),
        "{error}"
    );
}

#[test]
fn a_pending_request_is_a_conflict_naming_it() {
    let (renewed, _, _) = renew(Script::Conflict);
    match renewed.unwrap_err() {
        Error::Service(failure) => {
            assert_eq!(failure.kind(), ServiceErrorKind::Conflict);
            assert_eq!(failure.error_code, Some(409_005));
            assert!(
                failure.message.contains("pending request: earlier-1"),
                "{}",
                failure.message
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[test]
fn a_hub_that_never_issues_times_the_renewal_out() {
    let (renewed, _, _) = renew(Script::Silence);
    let error = renewed.unwrap_err();
    assert!(matches!(error, Error::Timeout(_)), "{error:?}");
    assert!(
        error.to_string().contains("issued no certificate"),
        "{error}"
    );
}
