//! What the emulator's tests share: an emulator on a temporary folder, CA pairs, a rumqttc
//! client (raw MQTT, so every refusal seen is the emulator's own) that provisions a device or
//! holds a hub session, and a fixture with two hubs, a DPS and a verified X.509 group.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Broker, Event, MqttOptions, Packet, PublishOptions, QoS, TlsConfiguration,
    Transport,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;

use crate::emulator::model::{self, Attestation, EnrollmentSettings};
use crate::emulator::*;
use crate::pki::issue::now;
use crate::pki::{CaOptions, CertificateAuthority, Credential, KeyAlgorithm, Validity};

pub(crate) fn start(data_dir: Option<PathBuf>) -> Emulator {
    Emulator::start(EmulatorConfig {
        data_dir,
        port: 0,
        web_port: 0,
        amqp_port: 0,
        worker_threads: Some(2),
        poll_retry_after: 0,
        // Lying length fields and silent clients wait for this deadline.
        limits: Limits {
            connect_timeout: Duration::from_secs(1),
            ..EmulatorConfig::default().limits
        },
        ..EmulatorConfig::default()
    })
    .unwrap()
}

pub(crate) fn ca_pair() -> (CertificateAuthority, CertificateAuthority) {
    let options = |path_length| CaOptions {
        algorithm: KeyAlgorithm::EcP256,
        validity: Validity::days(30, None).unwrap(),
        path_length,
        organization: None,
    };
    let root = CertificateAuthority::create_root("Test Root", &options(None)).unwrap();
    let inter = root
        .create_intermediate("Test Intermediate", &options(Some(0)))
        .unwrap();
    (root, inter)
}

/// A client certificate chain presented as given (raw DER, which need not parse), signed for
/// with a key of the caller's: rustls's own builder would refuse a leaf it cannot read.
#[derive(Debug)]
pub(crate) struct Present(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Present {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A TLS client configuration that trusts the emulator's CA (`trust_pem`) and, when given,
/// presents `chain` (raw DER, leaf first) with `key`.
pub(crate) fn client_tls(
    trust_pem: &str,
    presented: Option<(Vec<Vec<u8>>, &crate::pki::PrivateKey)>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(
            crate::pki::Certificate::from_pem(trust_pem.as_bytes())
                .unwrap()
                .der()
                .to_vec(),
        ))
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(crate::transport::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let Some((chain, key)) = presented else {
        return builder.with_no_client_auth();
    };
    let signer = crate::transport::provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.pkcs8_der().to_vec(),
        )))
        .unwrap();
    let certified = rustls::sign::CertifiedKey::new(
        chain.into_iter().map(CertificateDer::from).collect(),
        signer,
    );
    builder.with_client_cert_resolver(Arc::new(Present(Arc::new(certified))))
}

/// What a device saw.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// CONNECT refused.
    Refused(String),
    /// The DPS replies, in order: (status, body).
    Replies(Vec<(u16, Value)>),
}

impl Outcome {
    pub(crate) fn last(&self) -> (u16, Value) {
        match self {
            Outcome::Replies(r) => r.last().cloned().unwrap(),
            Outcome::Refused(why) => panic!("CONNECT refused: {why}"),
        }
    }

    pub(crate) fn assigned_hub(&self) -> String {
        let (status, body) = self.last();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "assigned", "{body}");
        body["registrationState"]["assignedHub"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub(crate) fn refusal(&self) -> (u16, u64, String) {
        let (status, body) = self.last();
        (
            status,
            body["errorCode"].as_u64().unwrap_or(0),
            body["message"].as_str().unwrap_or("").to_string(),
        )
    }
}

pub(crate) enum Auth<'a> {
    X509 {
        chain: Vec<&'a crate::pki::Certificate>,
        credential: &'a Credential,
    },
    /// Certificates as raw DER (some need not parse) with the key of the first.
    X509Der {
        chain: Vec<Vec<u8>>,
        credential: &'a Credential,
    },
    Sas(String),
}

/// Provisions one device: CONNECT, SUBSCRIBE (waiting for SUBACK), register, poll to the end.
pub(crate) fn provision(
    emulator: &Emulator,
    scope: &str,
    registration_id: &str,
    auth: Auth<'_>,
) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(provision_async(
        emulator.trust_pem(),
        emulator.mqtt_port(),
        scope,
        registration_id,
        auth,
    ))
}

pub(crate) async fn provision_async(
    trust: String,
    port: u16,
    scope: &str,
    registration_id: &str,
    auth: Auth<'_>,
) -> Outcome {
    let body = format!("{{\"registrationId\":\"{registration_id}\",\"payload\":null}}");
    provision_body_async(trust, port, scope, registration_id, auth, body).await
}

/// [`provision_async`] with the register request's body as given (a client that does not
/// check what it sends).
pub(crate) async fn provision_body_async(
    trust: String,
    port: u16,
    scope: &str,
    registration_id: &str,
    auth: Auth<'_>,
    register_body: String,
) -> Outcome {
    let at = (port, "2019-03-31");
    provision_at_version_async(trust, at, scope, registration_id, auth, register_body).await
}

/// [`provision_body_async`] naming `api_version` in the CONNECT username.
pub(crate) async fn provision_at_version_async(
    trust: String,
    (port, api_version): (u16, &str),
    scope: &str,
    registration_id: &str,
    auth: Auth<'_>,
    register_body: String,
) -> Outcome {
    let mut options = MqttOptions::new(registration_id, Broker::tcp("127.0.0.1", port));
    let username = format!(
        "{scope}/registrations/{registration_id}/api-version={api_version}&ClientVersion=dpskit-test"
    );
    let config = match &auth {
        Auth::X509 { chain, credential } => {
            options.set_username(username);
            let chain = chain.iter().map(|c| c.der().to_vec()).collect();
            client_tls(&trust, Some((chain, credential.key())))
        }
        Auth::X509Der { chain, credential } => {
            options.set_username(username);
            client_tls(&trust, Some((chain.clone(), credential.key())))
        }
        Auth::Sas(token) => {
            options.set_credentials(username, token.clone().into_bytes());
            client_tls(&trust, None)
        }
    };
    options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
    options.set_keep_alive(30);
    // Room for bodies past DPS's limit (rumqttc's default is 10 KB).
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::builder(options).capacity(10).build();
    let mut replies = Vec::new();
    let mut register_body = Some(register_body);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, events.poll())
            .await
            .expect("DPS exchange timed out");
        match event {
            Err(e) => return Outcome::Refused(e.to_string()),
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                client
                    .subscribe("$dps/registrations/res/#", QoS::AtLeastOnce)
                    .await
                    .unwrap();
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                client
                    .publish(
                        "$dps/registrations/PUT/iotdps-register/?$rid=1",
                        register_body.take().unwrap_or_default(),
                        PublishOptions::at_least_once(),
                    )
                    .await
                    .unwrap();
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = String::from_utf8_lossy(&p.topic).to_string();
                let status: u16 = topic.split('/').nth(3).unwrap().parse().unwrap();
                assert!(topic.contains("?$rid="), "{topic}");
                let body: Value = serde_json::from_slice(&p.payload).unwrap();
                replies.push((status, body.clone()));
                if status == 202 {
                    let op = body["operationId"].as_str().unwrap();
                    client
                        .publish(
                            format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId={op}"),
                            " ",
                            PublishOptions::at_least_once(),
                        )
                        .await
                        .unwrap();
                } else {
                    let _ = client.disconnect().await;
                    return Outcome::Replies(replies);
                }
            }
            Ok(_) => {}
        }
    }
}

pub(crate) struct Fixture {
    pub(crate) emulator: Emulator,
    pub(crate) scope: String,
    pub(crate) root: CertificateAuthority,
    pub(crate) inter: CertificateAuthority,
}

/// A DPS with two linked hubs and a root (verified by PoP) + intermediate hierarchy.
pub(crate) fn fixture(data_dir: Option<PathBuf>) -> Fixture {
    fixture_on(start(data_dir))
}

/// The same DPS and hubs on an emulator started by the caller.
pub(crate) fn fixture_on(emulator: Emulator) -> Fixture {
    let cloud = emulator.cloud();
    emulator.create_hub("hub-a", "westeurope", None).unwrap();
    emulator.create_hub("hub-b", "northeurope", None).unwrap();
    let dps = cloud.create_dps("dps", "westeurope").unwrap();
    cloud.link_hub("dps", "hub-a", 1, true, None).unwrap();
    cloud.link_hub("dps", "hub-b", 1, true, None).unwrap();
    let (root, inter) = ca_pair();
    cloud
        .upload_ca_certificate("dps", "root", root.credential().certificate(), false, None)
        .unwrap();
    let code = cloud
        .generate_verification_code("dps", "root", None)
        .unwrap();
    let verification = root
        .create_verification_certificate(
            code.verification_code.as_deref().unwrap(),
            Validity::days(1, None).unwrap(),
        )
        .unwrap();
    let verified = cloud
        .verify_certificate("dps", "root", &verification, Some(&code.etag))
        .unwrap();
    assert!(verified.is_verified);
    Fixture {
        emulator,
        scope: dps.id_scope,
        root,
        inter,
    }
}

impl Fixture {
    /// The usual X.509 group: "sensors", on the (unverified, inline) intermediate certificate,
    /// trusted because it chains to the verified root.
    pub(crate) fn sensors_group(&self) {
        x509_group(
            self,
            "sensors",
            self.inter.credential().certificate(),
            EnrollmentSettings::default(),
        );
    }

    /// A device certificate from the intermediate, valid for 5 days.
    pub(crate) fn device(&self, registration_id: &str) -> crate::pki::DeviceCredential {
        self.inter
            .issue_device(registration_id, KeyAlgorithm::EcP256, days(5))
            .unwrap()
    }
}

pub(crate) fn x509_group(
    f: &Fixture,
    group_id: &str,
    certificate: &crate::pki::Certificate,
    settings: EnrollmentSettings,
) {
    f.emulator
        .cloud()
        .put_enrollment_group(
            "dps",
            group_id,
            EnrollmentSpec {
                attestation: Some(Attestation::X509 {
                    ca_references: vec![],
                    certificates: vec![base64::Engine::encode(
                        &base64::engine::general_purpose::STANDARD,
                        certificate.der(),
                    )],
                }),
                settings,
                device_id: None,
            },
            None,
        )
        .unwrap();
}

pub(crate) fn device_auth(device: &crate::pki::DeviceCredential) -> Auth<'_> {
    let credential = device.credential();
    let mut chain = vec![credential.certificate()];
    chain.extend(
        credential
            .issuers()
            .iter()
            .filter(|c| !c.info().is_self_signed),
    );
    Auth::X509 { chain, credential }
}

pub(crate) fn days(n: i64) -> Validity {
    Validity::days(n, None).unwrap()
}

/// A device connected to its hub with a rumqttc client.
pub(crate) struct HubDevice {
    pub(crate) client: AsyncClient,
    pub(crate) events: rumqttc::EventLoop,
}

impl HubDevice {
    pub(crate) async fn connect(
        f: &Fixture,
        hub: &str,
        device: &crate::pki::DeviceCredential,
        clean_session: bool,
    ) -> Result<Self, String> {
        Self::connect_with_will(f, hub, device, clean_session, None).await
    }

    pub(crate) async fn connect_with_will(
        f: &Fixture,
        hub: &str,
        device: &crate::pki::DeviceCredential,
        clean_session: bool,
        will: Option<rumqttc::LastWill>,
    ) -> Result<Self, String> {
        let id = device.registration_id();
        let credential = device.credential();
        let chain = vec![credential.certificate().der().to_vec()];
        let config = client_tls(&f.emulator.trust_pem(), Some((chain, credential.key())));
        let mut options = MqttOptions::new(id, Broker::tcp(hub, f.emulator.mqtt_port()));
        options.set_username(format!("{hub}/{id}/?api-version=2019-10-01"));
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
        options.set_clean_session(clean_session);
        options.set_keep_alive(30);
        // Room for IoT Hub's largest messages (rumqttc's default is 10 KB).
        options.set_max_packet_size(1 << 20, 1 << 20);
        if let Some(will) = will {
            options.set_last_will(will);
        }
        let (client, mut events) = AsyncClient::builder(options).capacity(16).build();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    return Ok(HubDevice { client, events });
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("no CONNACK".into()),
            }
        }
    }

    /// The next PUBLISH from the hub (acknowledgements and the like skipped).
    pub(crate) async fn next_publish(&mut self) -> Result<(String, Vec<u8>), String> {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    return Ok((
                        String::from_utf8_lossy(&p.topic).into_owned(),
                        p.payload.to_vec(),
                    ));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("nothing arrived".into()),
            }
        }
    }

    /// Drives the event loop until `packet_matches` sees a packet (or an error).
    pub(crate) async fn until(
        &mut self,
        packet_matches: impl Fn(&Packet) -> bool,
    ) -> Result<(), String> {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.events.poll()).await {
                Ok(Ok(Event::Incoming(p))) if packet_matches(&p) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("timed out".into()),
            }
        }
    }

    pub(crate) async fn subscribe_all(&mut self, id: &str) {
        for filter in [
            format!("devices/{id}/messages/devicebound/#"),
            "$iothub/methods/POST/#".to_string(),
            "$iothub/twin/res/#".to_string(),
            "$iothub/twin/PATCH/properties/desired/#".to_string(),
        ] {
            self.client
                .subscribe(filter, QoS::AtLeastOnce)
                .await
                .unwrap();
            self.until(|p| matches!(p, Packet::SubAck(_)))
                .await
                .unwrap();
        }
    }
}

/// A SAS device identity registered straight in `hub` (no DPS); returns its primary key.
pub(crate) fn sas_device(f: &Fixture, hub: &str, device_id: &str) -> String {
    let key = crate::sas::generate_key().unwrap();
    f.emulator
        .cloud()
        .put_hub_device(model::HubDevice {
            device_id: device_id.into(),
            hub: hub.to_string(),
            auth: model::DeviceAuth::Sas {
                primary_key: key.clone(),
                secondary_key: crate::sas::generate_key().unwrap(),
            },
            initial_twin: None,
            created: now(),
            registry: Default::default(),
            issued_by: None,
        })
        .unwrap();
    key
}

/// A provisioned X.509 device and the host of the hub DPS assigned.
pub(crate) fn provisioned(f: &Fixture, id: &str) -> (crate::pki::DeviceCredential, String) {
    f.sensors_group();
    let device = f.device(id);
    let hub = provision(&f.emulator, &f.scope, id, device_auth(&device)).assigned_hub();
    (device, hub)
}
