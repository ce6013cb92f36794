//! The emulator's DPS, driven over real TLS and MQTT on 127.0.0.1 by a rumqttc client.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Broker, Event, MqttOptions, Packet, PublishOptions, QoS, TlsConfiguration,
    Transport,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;

use super::*;
use crate::emulator::model::{
    AllocationPolicy, Attestation, EnrollmentSettings, ProvisioningStatus,
};
use crate::pki::issue::now;
use crate::pki::{CaOptions, CertificateAuthority, Credential, KeyAlgorithm, Validity};

pub(super) fn start(data_dir: Option<PathBuf>) -> Emulator {
    Emulator::start(EmulatorConfig {
        data_dir,
        port: 0,
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

pub(super) fn ca_pair() -> (CertificateAuthority, CertificateAuthority) {
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
pub(super) struct Present(Arc<rustls::sign::CertifiedKey>);

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
pub(super) fn client_tls(
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
pub(super) enum Outcome {
    /// CONNECT refused.
    Refused(String),
    /// The DPS replies, in order: (status, body).
    Replies(Vec<(u16, Value)>),
}

impl Outcome {
    pub(super) fn last(&self) -> (u16, Value) {
        match self {
            Outcome::Replies(r) => r.last().cloned().unwrap(),
            Outcome::Refused(why) => panic!("CONNECT refused: {why}"),
        }
    }

    pub(super) fn assigned_hub(&self) -> String {
        let (status, body) = self.last();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "assigned", "{body}");
        body["registrationState"]["assignedHub"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub(super) fn refusal(&self) -> (u16, u64, String) {
        let (status, body) = self.last();
        (
            status,
            body["errorCode"].as_u64().unwrap_or(0),
            body["message"].as_str().unwrap_or("").to_string(),
        )
    }
}

pub(super) enum Auth<'a> {
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
pub(super) fn provision(
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

pub(super) async fn provision_async(
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
pub(super) async fn provision_body_async(
    trust: String,
    port: u16,
    scope: &str,
    registration_id: &str,
    auth: Auth<'_>,
    register_body: String,
) -> Outcome {
    let mut options = MqttOptions::new(registration_id, Broker::tcp("127.0.0.1", port));
    let username = format!(
        "{scope}/registrations/{registration_id}/api-version=2019-03-31&ClientVersion=dpskit-test"
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

pub(super) struct Fixture {
    pub(super) emulator: Emulator,
    pub(super) scope: String,
    pub(super) root: CertificateAuthority,
    pub(super) inter: CertificateAuthority,
}

/// A DPS with two linked hubs and a root (verified by PoP) + intermediate hierarchy.
pub(super) fn fixture(data_dir: Option<PathBuf>) -> Fixture {
    fixture_on(start(data_dir))
}

/// The same DPS and hubs on an emulator started by the caller.
pub(super) fn fixture_on(emulator: Emulator) -> Fixture {
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
    pub(super) fn sensors_group(&self) {
        x509_group(
            self,
            "sensors",
            self.inter.credential().certificate(),
            EnrollmentSettings::default(),
        );
    }

    /// A device certificate from the intermediate, valid for 5 days.
    pub(super) fn device(&self, registration_id: &str) -> crate::pki::DeviceCredential {
        self.inter
            .issue_device(registration_id, KeyAlgorithm::EcP256, days(5))
            .unwrap()
    }
}

pub(super) fn x509_group(
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

pub(super) fn device_auth(device: &crate::pki::DeviceCredential) -> Auth<'_> {
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

pub(super) fn days(n: i64) -> Validity {
    Validity::days(n, None).unwrap()
}

#[test]
fn x509_group_on_a_verified_intermediate_chain() {
    let f = fixture(None);
    f.sensors_group();
    let device = f.device("sensor-001");
    let outcome = provision(&f.emulator, &f.scope, "sensor-001", device_auth(&device));
    let Outcome::Replies(replies) = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(replies[0].0, 202);
    assert_eq!(replies[0].1["status"], "assigning");
    let hub = outcome.assigned_hub();
    let (_, body) = outcome.last();
    let state = &body["registrationState"];
    assert_eq!(state["deviceId"], "sensor-001");
    assert_eq!(state["substatus"], "initialAssignment");
    assert_eq!(state["x509"]["enrollmentGroupId"], "sensors");
    assert!(state["etag"].as_str().unwrap().len() > 10);
    // DPS registered the device in the hub as a thumbprint ("self-signed") identity.
    let devices = f.emulator.cloud().hub_devices(&hub);
    assert_eq!(devices.len(), 1);
    match &devices[0].auth {
        model::DeviceAuth::SelfSigned {
            primary_thumbprint, ..
        } => {
            assert_eq!(
                primary_thumbprint,
                &device.credential().certificate().info().thumbprint_sha1
            )
        }
        other => panic!("{other:?}"),
    }
    let records = f.emulator.cloud().registrations("dps", Some("sensors"));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].assigned_hub.as_deref(), Some(hub.as_str()));
}

#[test]
fn refusals_match_azure_and_a_good_device_still_provisions() {
    let f = fixture(None);
    // A group on a CA that is uploaded but never verified.
    let (_, unverified) = ca_pair();
    f.emulator
        .cloud()
        .upload_ca_certificate(
            "dps",
            "unverified",
            unverified.credential().certificate(),
            false,
            None,
        )
        .unwrap();
    f.emulator
        .cloud()
        .put_enrollment_group(
            "dps",
            "unverified-group",
            EnrollmentSpec {
                attestation: Some(Attestation::X509 {
                    ca_references: vec!["unverified".into()],
                    certificates: vec![],
                }),
                ..EnrollmentSpec::default()
            },
            None,
        )
        .unwrap();
    let stranger = unverified
        .issue_device("stranger", KeyAlgorithm::EcP256, days(5))
        .unwrap();
    let (status, code, message) =
        provision(&f.emulator, &f.scope, "stranger", device_auth(&stranger)).refusal();
    assert_eq!((status, code), (401, 401_002), "{message}");
    assert!(message.contains("not verified"), "{message}");

    f.sensors_group();
    // CN differs from the registration id.
    let device = f.device("sensor-002");
    let (status, _, message) =
        provision(&f.emulator, &f.scope, "someone-else", device_auth(&device)).refusal();
    assert_eq!(status, 401);
    assert!(
        message.contains("does not match the registration id"),
        "{message}"
    );

    // Expired leaf.
    let old = f
        .inter
        .issue_device(
            "sensor-old",
            KeyAlgorithm::EcP256,
            Validity::days(1, Some(now() - 3 * 86_400)).unwrap(),
        )
        .unwrap();
    let (status, _, message) =
        provision(&f.emulator, &f.scope, "sensor-old", device_auth(&old)).refusal();
    assert_eq!(status, 401);
    assert!(message.contains("validity"), "{message}");

    // Chain not sent: only the leaf, whose issuer (the intermediate) is the group's certificate,
    // is fine; a group on the root needs the intermediate in the chain.
    let root_group_device = f.device("via-root");
    let mut settings = EnrollmentSettings {
        provisioning_status: ProvisioningStatus::Enabled,
        ..EnrollmentSettings::default()
    };
    let c = root_group_device.credential();
    let leaf_only = Auth::X509 {
        chain: vec![c.certificate()],
        credential: c,
    };
    f.emulator
        .cloud()
        .delete_enrollment_group("dps", "sensors", None)
        .unwrap();
    x509_group(
        &f,
        "root-group",
        f.root.credential().certificate(),
        settings.clone(),
    );
    let (status, _, message) = provision(&f.emulator, &f.scope, "via-root", leaf_only).refusal();
    assert_eq!(status, 401);
    assert!(message.contains("only the leaf was sent"), "{message}");
    provision(
        &f.emulator,
        &f.scope,
        "via-root",
        device_auth(&root_group_device),
    )
    .assigned_hub();

    // Disabled group.
    settings.provisioning_status = ProvisioningStatus::Disabled;
    x509_group(
        &f,
        "root-group",
        f.root.credential().certificate(),
        settings,
    );
    let (status, _, message) = provision(
        &f.emulator,
        &f.scope,
        "via-root",
        device_auth(&root_group_device),
    )
    .refusal();
    assert_eq!(status, 401);
    assert!(message.contains("disabled"), "{message}");

    // Unknown scope: CONNECT refused.
    assert!(matches!(
        provision(
            &f.emulator,
            "0ne99999999",
            "sensor-002",
            device_auth(&device)
        ),
        Outcome::Refused(_)
    ));

    // And a good device right after.
    f.sensors_group();
    provision(&f.emulator, &f.scope, "sensor-002", device_auth(&device)).assigned_hub();
}

#[test]
fn individual_x509_enrollment_beats_groups() {
    let f = fixture(None);
    f.sensors_group();
    let device = f.device("special-1");
    let settings = EnrollmentSettings {
        allocation_policy: Some(AllocationPolicy::Static),
        iot_hubs: vec![f.emulator.cloud().hub("hub-b").unwrap().host_name],
        ..EnrollmentSettings::default()
    };
    f.emulator
        .cloud()
        .put_enrollment(
            "dps",
            "special-1",
            EnrollmentSpec {
                attestation: Some(Attestation::X509 {
                    ca_references: vec![],
                    certificates: vec![base64::Engine::encode(
                        &base64::engine::general_purpose::STANDARD,
                        device.credential().certificate().der(),
                    )],
                }),
                settings,
                device_id: Some("special-device".into()),
            },
            None,
        )
        .unwrap();
    let outcome = provision(&f.emulator, &f.scope, "special-1", device_auth(&device));
    assert_eq!(
        outcome.assigned_hub(),
        f.emulator.cloud().hub("hub-b").unwrap().host_name
    );
    let (_, body) = outcome.last();
    assert_eq!(body["registrationState"]["deviceId"], "special-device");
    assert_eq!(body["registrationState"]["x509"], serde_json::json!({}));
}

#[test]
fn symmetric_key_group_with_derived_keys() {
    let f = fixture(None);
    let group_key = crate::sas::generate_key().unwrap();
    f.emulator
        .cloud()
        .put_enrollment_group(
            "dps",
            "keys",
            EnrollmentSpec {
                attestation: Some(Attestation::SymmetricKey {
                    primary_key: group_key.clone(),
                    secondary_key: crate::sas::generate_key().unwrap(),
                }),
                ..EnrollmentSpec::default()
            },
            None,
        )
        .unwrap();
    let token = |id: &str, key: &str| {
        crate::sas::build_token(
            &format!("{}/registrations/{id}", f.scope),
            key,
            now() + 3600,
            Some("registration"),
        )
        .unwrap()
    };
    let derived = crate::sas::derive_device_key(&group_key, "sym-007").unwrap();
    let outcome = provision(
        &f.emulator,
        &f.scope,
        "sym-007",
        Auth::Sas(token("sym-007", &derived)),
    );
    let hub = outcome.assigned_hub();
    assert_eq!(
        outcome.last().1["registrationState"]["symmetricKey"]["enrollmentGroupId"],
        "keys"
    );
    let device = f
        .emulator
        .cloud()
        .hub_devices(&hub)
        .into_iter()
        .find(|d| d.device_id == "sym-007")
        .unwrap();
    assert_eq!(
        device.auth,
        model::DeviceAuth::Sas {
            primary_key: derived.clone(),
            secondary_key: crate::sas::derive_device_key(
                &f.emulator
                    .cloud()
                    .enrollment_group("dps", "keys")
                    .unwrap()
                    .attestation_secondary(),
                "sym-007"
            )
            .unwrap()
        }
    );
    // The group key itself, or another device's derived key, is refused at CONNECT.
    assert!(matches!(
        provision(
            &f.emulator,
            &f.scope,
            "sym-008",
            Auth::Sas(token("sym-008", &group_key))
        ),
        Outcome::Refused(_)
    ));
    assert!(matches!(
        provision(
            &f.emulator,
            &f.scope,
            "sym-008",
            Auth::Sas(token("sym-008", &derived))
        ),
        Outcome::Refused(_)
    ));
}

impl model::EnrollmentGroup {
    fn attestation_secondary(&self) -> String {
        match &self.attestation {
            Attestation::SymmetricKey { secondary_key, .. } => secondary_key.clone(),
            Attestation::X509 { .. } => String::new(),
        }
    }
}

#[test]
fn hashed_allocation_spreads_devices_over_both_hubs() {
    let f = fixture(None);
    f.sensors_group();
    let ids: Vec<String> = (0..30).map(|i| format!("spread-{i:03}")).collect();
    let devices = f
        .inter
        .issue_devices(&ids, KeyAlgorithm::EcP256, days(5))
        .unwrap();
    let mut per_hub = std::collections::HashMap::<String, usize>::new();
    for device in &devices {
        let hub = provision(
            &f.emulator,
            &f.scope,
            device.registration_id(),
            device_auth(device),
        )
        .assigned_hub();
        *per_hub.entry(hub).or_default() += 1;
    }
    assert_eq!(per_hub.len(), 2, "{per_hub:?}");
    assert!(per_hub.values().all(|n| *n >= 6), "{per_hub:?}");
    // Stable: the same device lands on the same hub again.
    let again = provision(
        &f.emulator,
        &f.scope,
        devices[0].registration_id(),
        device_auth(&devices[0]),
    )
    .assigned_hub();
    let first = f
        .emulator
        .cloud()
        .registration("dps", devices[0].registration_id())
        .unwrap();
    assert_eq!(Some(again), first.assigned_hub);
}

#[test]
fn knobs_throttle_and_delay() {
    let f = fixture(None);
    f.sensors_group();
    let device = f.device("slow-1");
    f.emulator
        .update_dps_knobs("dps", |k| k.refuse_next = 1)
        .unwrap();
    let (status, code, _) =
        provision(&f.emulator, &f.scope, "slow-1", device_auth(&device)).refusal();
    assert_eq!((status, code), (429, 429_001));
    f.emulator
        .update_dps_knobs("dps", |k| k.assignment_latency = Duration::from_millis(300))
        .unwrap();
    let outcome = provision(&f.emulator, &f.scope, "slow-1", device_auth(&device));
    let Outcome::Replies(replies) = &outcome else {
        panic!()
    };
    assert!(
        replies.len() >= 3,
        "a poll before the latency elapsed answers 202: {replies:?}"
    );
    outcome.assigned_hub();
    f.emulator
        .update_dps_knobs("dps", |k| {
            k.assignment_latency = Duration::ZERO;
            k.registrations_per_minute = Some(1);
        })
        .unwrap();
    provision(&f.emulator, &f.scope, "slow-1", device_auth(&device)).assigned_hub();
    let (status, _, message) =
        provision(&f.emulator, &f.scope, "slow-1", device_auth(&device)).refusal();
    assert_eq!(status, 429, "{message}");
}

#[test]
fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(Some(dir.path().to_path_buf()));
    f.sensors_group();
    let device = f.device("durable-1");
    let hub = provision(&f.emulator, &f.scope, "durable-1", device_auth(&device)).assigned_hub();
    let trust = f.emulator.trust_pem();
    let Fixture {
        emulator,
        scope,
        inter,
        ..
    } = f;
    drop(emulator);
    let emulator = start(Some(dir.path().to_path_buf()));
    assert_eq!(emulator.trust_pem(), trust, "the CA is kept");
    assert!(emulator.cloud().dps("dps").unwrap().certificates[0].is_verified);
    assert_eq!(emulator.cloud().registrations("dps", None).len(), 1);
    assert_eq!(emulator.cloud().hub_devices(&hub).len(), 1);
    let another = inter
        .issue_device("durable-2", KeyAlgorithm::EcP256, days(5))
        .unwrap();
    provision(&emulator, &scope, "durable-2", device_auth(&another)).assigned_hub();
}

#[test]
fn garbage_closes_only_that_connection() {
    use std::io::{Read, Write};
    let f = fixture(None);
    f.sensors_group();
    let port = f.emulator.mqtt_port();
    // Plain bytes instead of a TLS handshake, and a connection that never speaks.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.write_all(b"\x10\xff\xff\xff\xffGARBAGE").unwrap();
    let mut sink = [0u8; 64];
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = raw.read(&mut sink);
    let _silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Garbage after a good TLS handshake.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = client_tls(&f.emulator.trust_pem(), None);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        for garbage in [
            &b"\x30\x7f"[..],
            b"\xe0\x00",
            b"\x10\x04\x00\x04MQTX",
            &[0xffu8; 300][..],
        ] {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let mut tls = connector
                .connect("127.0.0.1".try_into().unwrap(), tcp)
                .await
                .unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            tls.write_all(garbage).await.unwrap();
            let mut buf = [0u8; 16];
            let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
                .await
                .unwrap()
                .unwrap_or(0);
            assert_eq!(
                n, 0,
                "the emulator closes a connection that sends {garbage:?}"
            );
        }
    });
    let device = f.device("after-garbage");
    provision(&f.emulator, &f.scope, "after-garbage", device_auth(&device)).assigned_hub();
}

#[test]
fn proof_of_possession_rules() {
    let f = fixture(None);
    let cloud = f.emulator.cloud();
    cloud
        .upload_ca_certificate(
            "dps",
            "inter",
            f.inter.credential().certificate(),
            false,
            None,
        )
        .unwrap();
    let code = cloud
        .generate_verification_code("dps", "inter", None)
        .unwrap();
    let code_text = code.verification_code.clone().unwrap();
    // Signed by the wrong key.
    let wrong = f
        .root
        .create_verification_certificate(&code_text, days(1))
        .unwrap();
    let e = cloud
        .verify_certificate("dps", "inter", &wrong, Some(&code.etag))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not signed by the private key"), "{e}");
    // Stale etag.
    let right = f
        .inter
        .create_verification_certificate(&code_text, days(1))
        .unwrap();
    let e = cloud
        .verify_certificate("dps", "inter", &right, Some("\"stale\""))
        .unwrap_err();
    assert!(
        matches!(&e, crate::Error::Service(s) if s.status == 412),
        "{e}"
    );
    // Right key, current code; then the code is used up.
    let done = cloud
        .verify_certificate("dps", "inter", &right, Some(&code.etag))
        .unwrap();
    assert!(done.is_verified && done.verification_code.is_none());
    assert!(
        cloud
            .verify_certificate("dps", "inter", &right, None)
            .is_err()
    );
}

/// A small deterministic fuzz run over everything the listener parses from the network: MQTT
/// packets (the codec), CONNECT usernames, DPS topics and SAS tokens. Mutations of valid
/// packets reach deep into the parsers; nothing may panic.
#[test]
fn fuzz_packet_and_topic_parsing() {
    use bytes::BytesMut;
    use rumqttc::{Connect, ConnectAuth, Subscribe};

    let mut seeds = Vec::new();
    let mut connect = Connect::new("dev-1");
    connect.auth = ConnectAuth::UsernamePassword {
        username: "0ne00000001/registrations/dev-1/api-version=2019-03-31".into(),
        password: "SharedAccessSignature sr=0ne00000001%2Fregistrations%2Fdev-1&sig=abc%3D&se=1"
            .into(),
    };
    let mut publish = rumqttc::Publish::new(
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&operationId=5.a",
        QoS::AtLeastOnce,
        b" ".to_vec(),
    );
    publish.pkid = 7;
    let mut subscribe = Subscribe::new("$dps/registrations/res/#", QoS::AtLeastOnce);
    subscribe.pkid = 1;
    for packet in [
        Packet::Connect(connect),
        Packet::Publish(publish),
        Packet::Subscribe(subscribe),
        Packet::PingReq,
    ] {
        let mut out = BytesMut::new();
        packet.write(&mut out, 1 << 20).unwrap();
        seeds.push(out.to_vec());
    }
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut parsed = 0;
    for _ in 0..50_000 {
        let mut bytes = seeds[(next() % seeds.len() as u64) as usize].clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() as usize) % bytes.len().max(1);
            match next() % 4 {
                0 if i < bytes.len() => bytes[i] = next() as u8,
                1 if i < bytes.len() => bytes[i] ^= 1 << (next() % 8),
                2 => bytes.insert(i.min(bytes.len()), next() as u8),
                _ => bytes.truncate(i),
            }
        }
        let mut buffer = BytesMut::from(&bytes[..]);
        while let Ok(packet) = Packet::read(&mut buffer, 4096) {
            parsed += 1;
            match packet {
                Packet::Connect(c) => {
                    if let ConnectAuth::UsernamePassword { username, password } = &c.auth {
                        let _ = crate::protocol::route(username);
                        let _ = crate::sas::SasToken::parse(&String::from_utf8_lossy(password));
                    }
                }
                Packet::Publish(p) => {
                    let _ =
                        crate::protocol::dps::Request::parse(&String::from_utf8_lossy(&p.topic));
                }
                _ => {}
            }
        }
    }
    // The mutations must leave many packets parseable, or the run tests nothing deep.
    assert!(parsed > 5_000, "only {parsed} mutated packets parsed");
}

// ---- IoT Hub device API ------------------------------------------------------------------

/// A device connected to its hub with a rumqttc client.
pub(super) struct HubDevice {
    pub(super) client: AsyncClient,
    pub(super) events: rumqttc::EventLoop,
}

impl HubDevice {
    pub(super) async fn connect(
        f: &Fixture,
        hub: &str,
        device: &crate::pki::DeviceCredential,
        clean_session: bool,
    ) -> Result<Self, String> {
        Self::connect_with_will(f, hub, device, clean_session, None).await
    }

    async fn connect_with_will(
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
    pub(super) async fn next_publish(&mut self) -> Result<(String, Vec<u8>), String> {
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
    pub(super) async fn until(
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

    pub(super) async fn subscribe_all(&mut self, id: &str) {
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
pub(super) fn sas_device(f: &Fixture, hub: &str, device_id: &str) -> String {
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
        })
        .unwrap();
    key
}

/// A provisioned X.509 device and the host of the hub DPS assigned.
pub(super) fn provisioned(f: &Fixture, id: &str) -> (crate::pki::DeviceCredential, String) {
    f.sensors_group();
    let device = f.device(id);
    let hub = provision(&f.emulator, &f.scope, id, device_auth(&device)).assigned_hub();
    (device, hub)
}

#[test]
fn hub_telemetry_twin_methods_and_c2d() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "hub-dev-1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hubs = f.emulator.hubs().clone();
    runtime.block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, false).await.unwrap();
        d.subscribe_all("hub-dev-1").await;
        d.client
            .publish(
                "devices/hub-dev-1/messages/events/%24.mid=m-1&%24.ct=application%2Fjson&$.ce=utf-8&unit=%C2%B0C",
                r#"{"t":21}"#,
                PublishOptions::at_least_once(),
            )
            .await
            .unwrap();
        d.until(|p| matches!(p, Packet::PubAck(_))).await.unwrap();
        // PUBACK came after the commit: the record is already there.
        let [record] = &hubs.telemetry(&hub, Some("hub-dev-1")).unwrap()[..] else { panic!() };
        assert_eq!(record.body, br#"{"t":21}"#);
        assert_eq!(record.properties, vec![("unit".to_string(), "\u{b0}C".to_string())]);
        assert!(record.system_properties.contains(&("mid".into(), "m-1".into())));
        assert!(record.system_properties.contains(&("ct".into(), "application/json".into())));
        assert!(record.system_properties.contains(&("ce".into(), "utf-8".into())));

        d.client.publish("$iothub/twin/GET/?$rid=1", " ", PublishOptions::at_least_once()).await.unwrap();
        let (topic, body) = d.next_publish().await.unwrap();
        assert_eq!(topic, "$iothub/twin/res/200/?$rid=1");
        let twin: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(twin["desired"]["$version"], 1);
        d.client
            .publish("$iothub/twin/PATCH/properties/reported/?$rid=2", r#"{"fw":"1.0"}"#, PublishOptions::at_least_once())
            .await
            .unwrap();
        let (topic, _) = d.next_publish().await.unwrap();
        assert_eq!(topic, "$iothub/twin/res/204/?$rid=2&$version=2");

        let desired = serde_json::json!({"interval": 7});
        hubs.update_desired(&hub, "hub-dev-1", desired.as_object().unwrap()).unwrap();
        let (topic, body) = d.next_publish().await.unwrap();
        assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), serde_json::json!({"interval": 7, "$version": 2}));

        let call = {
            let hubs = hubs.clone();
            let hub = hub.clone();
            tokio::spawn(async move {
                hubs.invoke_method(&hub, "hub-dev-1", "reboot", serde_json::json!({"in": 1}), Duration::from_secs(5)).await
            })
        };
        let (topic, body) = d.next_publish().await.unwrap();
        let rid = topic.strip_prefix("$iothub/methods/POST/reboot/?$rid=").unwrap().to_string();
        assert_eq!(body, br#"{"in":1}"#);
        d.client
            .publish(format!("$iothub/methods/res/201/?$rid={rid}"), r#"{"ok":true}"#, PublishOptions::at_least_once())
            .await
            .unwrap();
        let (poll_more, answer) = tokio::join!(d.until(|p| matches!(p, Packet::PubAck(_))), call);
        poll_more.unwrap();
        assert_eq!(answer.unwrap().unwrap(), (201, serde_json::json!({"ok": true})));

        hubs.send_c2d(&hub, "hub-dev-1", b"hi", vec![("k".into(), "v w".into())]).unwrap();
        let (topic, body) = d.next_publish().await.unwrap();
        assert!(topic.starts_with("devices/hub-dev-1/messages/devicebound/%24.mid="), "{topic}");
        assert!(topic.contains("%24.to=%2Fdevices%2Fhub-dev-1%2Fmessages%2Fdevicebound"), "{topic}");
        assert!(topic.ends_with("&k=v%20w"), "{topic}");
        assert_eq!(body, b"hi");
    });
}

#[test]
fn hub_persistent_sessions_and_one_connection_per_device() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "hub-dev-2");
    let hubs = f.emulator.hubs().clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut first = HubDevice::connect(&f, &hub, &device, false).await.unwrap();
        first.subscribe_all("hub-dev-2").await;
        first.client.disconnect().await.unwrap();
        let _ = first.until(|_| false).await;
        // Offline: the message waits; the resumed session gets it without subscribing again.
        hubs.send_c2d(&hub, "hub-dev-2", b"queued", vec![]).unwrap();
        let mut second = HubDevice::connect(&f, &hub, &device, false).await.unwrap();
        let (_, body) = second.next_publish().await.unwrap();
        assert_eq!(body, b"queued");
        // A third connection of the same device closes the second.
        let _third = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        assert!(
            second.until(|_| false).await.is_err(),
            "the older connection is closed"
        );
        // clean_session=1 dropped the subscriptions: methods now find the device offline.
        let offline = hubs
            .invoke_method(&hub, "hub-dev-2", "x", Value::Null, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            matches!(&offline, crate::Error::Service(s) if s.error_code == Some(404_103)),
            "{offline}"
        );
    });
    // At most 50 messages wait per device.
    for _ in 0..50 {
        hubs.send_c2d(&hub, "hub-dev-2", b"x", vec![]).unwrap();
    }
    let full = hubs.send_c2d(&hub, "hub-dev-2", b"x", vec![]).unwrap_err();
    assert!(
        matches!(&full, crate::Error::Service(s) if s.error_code == Some(403_004)),
        "{full}"
    );
}

#[test]
fn hub_refusals_and_protocol_violations() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "hub-dev-3");
    let impostor = f.device("hub-dev-3"); // same CN, other key and thumbprint
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let refused = HubDevice::connect(&f, &hub, &impostor, true).await;
        assert!(
            refused.is_err(),
            "a certificate with another thumbprint is refused"
        );
        let unknown = f.device("never-provisioned");
        assert!(HubDevice::connect(&f, &hub, &unknown, true).await.is_err());

        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        d.client
            .subscribe("devices/hub-dev-3/other/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        assert!(
            d.until(|p| matches!(p, Packet::SubAck(_))).await.is_err(),
            "unsupported filter closes the connection"
        );

        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        d.client
            .publish(
                "devices/hub-dev-3/messages/events/",
                vec![0u8; 300 * 1024],
                PublishOptions::at_least_once(),
            )
            .await
            .unwrap();
        assert!(
            d.until(|p| matches!(p, Packet::PubAck(_))).await.is_err(),
            "oversized telemetry closes the connection"
        );
    });
    assert!(
        f.emulator
            .hubs()
            .telemetry(&hub, Some("hub-dev-3"))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn telemetry_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(Some(dir.path().to_path_buf()));
    let (device, hub) = provisioned(&f, "hub-dev-4");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        // Publish and drive the event loop together: the client's request queue is bounded.
        for i in 0..100 {
            d.client
                .publish(
                    "devices/hub-dev-4/messages/events/",
                    format!("{i}"),
                    PublishOptions::at_least_once(),
                )
                .await
                .unwrap();
            d.until(|p| matches!(p, Packet::PubAck(_))).await.unwrap();
        }
    });
    drop(f);
    let emulator = start(Some(dir.path().to_path_buf()));
    let records = emulator.hubs().telemetry(&hub, Some("hub-dev-4")).unwrap();
    let bodies: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(bodies, (0..100).map(|i| i.to_string()).collect::<Vec<_>>());
}

/// The child half of [`acknowledged_telemetry_survives_sigkill`]: runs only when the parent
/// re-executes this test binary with `DPSKIT_KILL_CHILD_DIR` set.
#[test]
#[ignore = "run by acknowledged_telemetry_survives_sigkill in a child process"]
fn kill_child_streams_telemetry() {
    use std::io::Write;
    let Ok(dir) = std::env::var("DPSKIT_KILL_CHILD_DIR") else {
        return;
    };
    let f = fixture(Some(PathBuf::from(dir)));
    let (device, hub) = provisioned(&f, "kill-dev");
    println!("HUB {hub}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        for i in 0.. {
            d.client
                .publish(
                    "devices/kill-dev/messages/events/",
                    format!("{i}"),
                    PublishOptions::at_least_once(),
                )
                .await
                .unwrap();
            d.until(|p| matches!(p, Packet::PubAck(_))).await.unwrap();
            // Only what the hub acknowledged is reported to the parent.
            println!("ACKED {i}");
            std::io::stdout().flush().unwrap();
        }
    });
}

/// A process killed with SIGKILL in the middle of a telemetry stream loses no acknowledged
/// message: every one is there after a restart.
#[test]
fn acknowledged_telemetry_survives_sigkill() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "emulator::tests::kill_child_streams_telemetry",
            "--nocapture",
        ])
        .env("DPSKIT_KILL_CHILD_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut hub = String::new();
    let mut acked: i64 = -1;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(h) = line.strip_prefix("HUB ") {
            hub = h.to_string();
        }
        if let Some(n) = line.strip_prefix("ACKED ") {
            acked = n.parse().unwrap();
            if acked >= 300 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    child.wait().unwrap();
    assert!(acked >= 300, "the child streamed {acked} messages");
    let emulator = start(Some(dir.path().to_path_buf()));
    let stored: Vec<i64> = emulator
        .hubs()
        .telemetry(&hub, Some("kill-dev"))
        .unwrap()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).parse().unwrap())
        .collect();
    assert!(
        stored.len() as i64 > acked,
        "{} stored, {acked} acknowledged",
        stored.len()
    );
    assert_eq!(
        stored[..=acked as usize],
        (0..=acked).collect::<Vec<_>>()[..]
    );
}

#[test]
fn hub_knobs_refuse_drop_and_throttle() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "knob-dev");
    let hubs = f.emulator.hubs().clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        hubs.update_knobs(&hub, |k| k.refuse_next_connections = 1);
        assert!(HubDevice::connect(&f, &hub, &device, true).await.is_err());
        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        assert!(hubs.drop_connection(&hub, "knob-dev"));
        assert!(
            d.until(|_| false).await.is_err(),
            "dropped by fault injection"
        );
        assert!(
            !hubs.drop_connection(&hub, "knob-dev"),
            "nothing left to drop"
        );

        hubs.update_knobs(&hub, |k| k.connections_per_second = Some(1));
        let _first = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        assert!(
            HubDevice::connect(&f, &hub, &device, true).await.is_err(),
            "second connection in the same second"
        );
        hubs.update_knobs(&hub, |k| k.connections_per_second = None);

        hubs.update_knobs(&hub, |k| k.messages_per_second = Some(2));
        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        for i in 0..12 {
            d.client
                .publish(
                    "devices/knob-dev/messages/events/",
                    format!("{i}"),
                    PublishOptions::at_least_once(),
                )
                .await
                .unwrap();
        }
        // Shaped for a second, then throttled: the hub drops the connection (429001).
        let closed = d.until(|_| false).await.unwrap_err();
        assert_ne!(closed, "timed out", "the throttled connection is closed");
    });
    let stored = f
        .emulator
        .hubs()
        .telemetry(&hub, Some("knob-dev"))
        .unwrap()
        .len();
    // The first message passes at once; the shaped ones behind it are stored only if their
    // delay ends before the throttle closes the connection (never acknowledged otherwise, so
    // a device sends them again), which depends on the machine's load.
    assert!(
        (1..12).contains(&stored),
        "{stored} messages got through the throttle"
    );
}

#[test]
fn sas_devices_are_disconnected_when_their_token_expires() {
    let f = fixture(None);
    let hub = f.emulator.cloud().hub("hub-a").unwrap().host_name;
    let key = sas_device(&f, &hub, "sas-dev");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let connect = |token: String| {
            let config = client_tls(&f.emulator.trust_pem(), None);
            let mut options =
                MqttOptions::new("sas-dev", Broker::tcp(hub.clone(), f.emulator.mqtt_port()));
            options.set_credentials(
                format!("{hub}/sas-dev/?api-version=2019-10-01"),
                token.into_bytes(),
            );
            options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
            AsyncClient::builder(options).capacity(4).build()
        };
        let resource = format!("{hub}/devices/sas-dev");
        // A wrong key is refused at CONNECT.
        let (_c, mut events) = connect(
            crate::sas::build_token(
                &resource,
                &crate::sas::generate_key().unwrap(),
                now() + 60,
                None,
            )
            .unwrap(),
        );
        assert!(matches!(
            events.poll().await,
            Err(rumqttc::ConnectionError::ConnectionRefused(_))
        ));
        // A good token that runs out in two seconds: accepted, then disconnected.
        let (_c, mut events) =
            connect(crate::sas::build_token(&resource, &key, now() + 2, None).unwrap());
        let started = std::time::Instant::now();
        assert!(matches!(
            events.poll().await,
            Ok(Event::Incoming(Packet::ConnAck(_)))
        ));
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if events.poll().await.is_err() {
                    break;
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the hub closes the connection when the token expires"
        );
        assert!(started.elapsed() >= Duration::from_millis(900));
    });
}

#[test]
fn dpskit_hub_client_and_fleet_connections_against_the_hub() {
    use crate::fleet::HubConnections;
    use crate::hub::{HubClient, HubConnectOptions, TelemetryMessage};
    use crate::provisioning::{DeviceAuth, Trust};

    let f = fixture(None);
    f.sensors_group();
    let trust = Trust::from_pem(f.emulator.trust_pem().as_bytes()).unwrap();
    let port = f.emulator.mqtt_port();
    let ids: Vec<String> = (0..12).map(|i| format!("fleet-{i:02}")).collect();
    let mut devices = Vec::new();
    for id in &ids {
        let device = f.device(id);
        let hub = provision(&f.emulator, &f.scope, id, device_auth(&device)).assigned_hub();
        devices.push(HubConnectOptions::new(
            hub,
            port,
            id.clone(),
            DeviceAuth::X509(device.shared_credential()),
        ));
    }
    let stranger = f.device("never-provisioned");
    let hub_a = f.emulator.cloud().hub("hub-a").unwrap().host_name;
    let sas_key = sas_device(&f, &hub_a, "sas-fleet");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let hubs = f.emulator.hubs().clone();
    runtime.block_on(async {
        // One device, every property kind: the hub decodes what the client encoded.
        let first = devices[0].clone();
        let client = HubClient::connect(first.clone(), &trust).await.unwrap();
        let message = TelemetryMessage {
            body: bytes::Bytes::from_static(br#"{"t":1}"#),
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            message_id: Some("m/1".into()),
            correlation_id: Some("c 1".into()),
            properties: vec![
                ("unit".into(), "\u{b0}C".into()),
                ("a&b".into(), "x=y".into()),
            ],
        };
        client.send_telemetry(&message).await.unwrap();
        let records = hubs.telemetry(&first.host, Some("fleet-00")).unwrap();
        let [record] = &records[..] else {
            panic!("{records:?}")
        };
        assert_eq!(record.body, br#"{"t":1}"#);
        let mut properties = record.properties.clone();
        properties.sort();
        assert_eq!(
            properties,
            vec![
                ("a&b".into(), "x=y".into()),
                ("unit".into(), "\u{b0}C".into())
            ]
        );
        for (key, value) in [
            ("mid", "m/1"),
            ("cid", "c 1"),
            ("ct", "application/json"),
            ("ce", "utf-8"),
        ] {
            assert!(
                record
                    .system_properties
                    .contains(&(key.into(), value.into())),
                "{key}: {record:?}"
            );
        }
        client.disconnect().await.unwrap();

        // SAS: a good key connects, a wrong one is refused with 401.
        let sas = HubClient::connect(
            HubConnectOptions::new(
                hub_a.clone(),
                port,
                "sas-fleet",
                DeviceAuth::SymmetricKey(sas_key.clone()),
            ),
            &trust,
        )
        .await
        .unwrap();
        sas.send_telemetry(&TelemetryMessage::new("sas"))
            .await
            .unwrap();
        drop(sas);
        let wrong = HubClient::connect(
            HubConnectOptions::new(
                hub_a.clone(),
                port,
                "sas-fleet",
                DeviceAuth::SymmetricKey(crate::sas::generate_key().unwrap()),
            ),
            &trust,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&wrong, Error::Service(s) if s.status == 401),
            "{wrong:?}"
        );

        // Many at once, plus a device the hub does not know: it alone fails.
        let mut all = devices.clone();
        all.push(HubConnectOptions::new(
            hub_a.clone(),
            port,
            "never-provisioned",
            DeviceAuth::X509(stranger.shared_credential()),
        ));
        let (connections, report) = HubConnections::connect(all, &trust, 4).await;
        assert_eq!(report.connected, ids.len());
        assert_eq!(report.failures.len(), 1);
        assert_eq!(report.failures[0].0, "never-provisioned");
        assert!(matches!(&report.failures[0].1, Error::Service(s) if s.status == 401));
        let sent = connections
            .send_telemetry(50, bytes::Bytes::from_static(b"x"), 8)
            .await;
        assert!(sent.failures.is_empty(), "{:?}", sent.failures);
        assert_eq!((sent.sent, sent.acknowledged), (600, 600));
        connections.close().await;
    });
    // Every acknowledged message is stored: 1 + 50 per device for the first, 50 for the rest.
    let stored: usize = ["hub-a", "hub-b"]
        .iter()
        .map(|h| {
            let host = f.emulator.cloud().hub(h).unwrap().host_name;
            hubs.telemetry(&host, None)
                .unwrap()
                .iter()
                .filter(|r| r.device_id.starts_with("fleet-"))
                .count()
        })
        .sum();
    assert_eq!(stored, 601);
}

#[test]
fn hub_forwards_the_will_of_a_device_that_drops_without_disconnect() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "will-dev");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hubs = f.emulator.hubs().clone();
    let will = |topic: &str| {
        Some(rumqttc::LastWill::new(
            topic,
            "bye",
            QoS::AtLeastOnce,
            false,
        ))
    };
    let wills = || {
        hubs.telemetry(&hub, Some("will-dev"))
            .unwrap()
            .into_iter()
            .filter(|r| {
                r.properties
                    .contains(&("iothub-MessageType".into(), "Will".into()))
            })
            .collect::<Vec<_>>()
    };
    runtime.block_on(async {
        // A clean DISCONNECT: no will.
        let mut d = HubDevice::connect_with_will(
            &f,
            &hub,
            &device,
            true,
            will("devices/will-dev/messages/events/"),
        )
        .await
        .unwrap();
        d.client.disconnect().await.unwrap();
        while d.events.poll().await.is_ok() {}
        // A will on another topic is ignored, and the connection is still accepted.
        let d = HubDevice::connect_with_will(&f, &hub, &device, true, will("alerts/will-dev"))
            .await
            .unwrap();
        drop(d);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(wills().is_empty(), "{:?}", wills());

        // The connection just ends: the hub forwards the will as telemetry.
        let d = HubDevice::connect_with_will(
            &f,
            &hub,
            &device,
            true,
            will("devices/will-dev/messages/events/%24.ct=text%2Fplain&reason=power%20lost"),
        )
        .await
        .unwrap();
        drop(d);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while wills().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let [record] = &wills()[..] else {
        panic!("one will expected: {:?}", wills())
    };
    assert_eq!(record.body, b"bye");
    assert!(
        record
            .properties
            .contains(&("reason".into(), "power lost".into())),
        "{record:?}"
    );
    assert!(
        record
            .system_properties
            .contains(&("ct".into(), "text/plain".into())),
        "{record:?}"
    );
}

#[test]
fn persistent_sessions_survive_an_emulator_restart() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(Some(dir.path().to_path_buf()));
    let (device, hub) = provisioned(&f, "hub-dev-5");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, false).await.unwrap();
        d.subscribe_all("hub-dev-5").await;
        d.client.disconnect().await.unwrap();
        let _ = d.until(|_| false).await;
    });
    let Fixture {
        emulator,
        scope,
        root,
        inter,
    } = f;
    drop(emulator);
    let f = Fixture {
        emulator: start(Some(dir.path().to_path_buf())),
        scope,
        root,
        inter,
    };
    let hubs = f.emulator.hubs().clone();
    hubs.send_c2d(&hub, "hub-dev-5", b"after restart", vec![])
        .unwrap();
    runtime.block_on(async {
        // Like the Python SDK: reconnect with clean_session=0 and never subscribe again.
        let mut d = HubDevice::connect(&f, &hub, &device, false).await.unwrap();
        let (_, body) = d.next_publish().await.unwrap();
        assert_eq!(body, b"after restart");
        let patch = serde_json::json!({"interval": 9});
        hubs.update_desired(&hub, "hub-dev-5", patch.as_object().unwrap())
            .unwrap();
        let (topic, _) = d.next_publish().await.unwrap();
        assert!(
            topic.starts_with("$iothub/twin/PATCH/properties/desired/"),
            "{topic}"
        );
    });
    // A clean session forgets them, also on disk.
    runtime.block_on(async {
        let d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        drop(d);
    });
    drop(f);
    let store = crate::emulator::store::Store::open(dir.path()).unwrap();
    let sessions: Vec<Value> = store.all(crate::emulator::store::kind::SESSION).unwrap();
    assert!(sessions.is_empty(), "{sessions:?}");
}

#[test]
fn arm_certificates_and_proof_of_possession_over_https() {
    use crate::provisioning::Trust;
    use crate::service::arm::ArmClient;

    let emulator = start(None);
    emulator.cloud().create_dps("dps", "westeurope").unwrap();
    let (root, inter) = ca_pair();
    let trust = Trust::from_pem(emulator.trust_pem().as_bytes()).unwrap();
    let endpoint = format!("https://127.0.0.1:{}", emulator.https_port());
    let arm = ArmClient::new(
        &endpoint,
        crate::emulator::DEFAULT_SUBSCRIPTION_ID,
        crate::emulator::DEFAULT_RESOURCE_GROUP,
        crate::service::arm::static_token("any-token"),
        &trust,
    )
    .unwrap();
    let status = |e: crate::Error| match e {
        crate::Error::Service(s) => (s.status, s.error_code),
        other => panic!("not a service error: {other:?}"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The one-call way, for the root.
        let proven = arm.prove_possession("dps", "root", &root).await.unwrap();
        assert!(proven.is_verified);
        let info = root.credential().certificate().info();
        assert_eq!(proven.thumbprint, info.thumbprint_sha1.to_ascii_uppercase());
        assert!(proven.subject.contains("CN="), "{}", proven.subject);
        for date in [&proven.expiry, &proven.created, &proven.updated] {
            assert!(httpdate::parse_http_date(date).is_ok(), "not RFC 1123: {date}");
        }
        // Proving it again changes nothing.
        assert_eq!(arm.prove_possession("dps", "root", &root).await.unwrap().etag, proven.etag);

        // The manual way, for the intermediate, with every etag rule.
        let uploaded = arm
            .upload_ca_certificate("dps", "inter", inter.credential().certificate(), false, None)
            .await
            .unwrap();
        assert!(!uploaded.is_verified);
        let again = arm
            .upload_ca_certificate("dps", "inter", inter.credential().certificate(), false, None)
            .await
            .unwrap_err();
        assert_eq!(status(again).0, 412, "an update needs If-Match");
        let coded = arm.generate_verification_code("dps", "inter", &uploaded.etag).await.unwrap();
        assert_ne!(coded.etag, uploaded.etag);
        let code = coded.verification_code.clone().unwrap();
        let stale = arm.generate_verification_code("dps", "inter", &uploaded.etag).await.unwrap_err();
        assert_eq!(status(stale).0, 412);
        // Signed by the wrong key (the root's): refused.
        let forged = root.create_verification_certificate(&code, days(1)).unwrap();
        let refused = arm.verify_certificate("dps", "inter", &coded.etag, &forged).await.unwrap_err();
        assert_eq!(status(refused).0, 400);
        let current = arm.ca_certificate("dps", "inter").await.unwrap();
        assert!(!current.is_verified);
        let fresh = arm.generate_verification_code("dps", "inter", &current.etag).await.unwrap();
        let signed = inter
            .create_verification_certificate(fresh.verification_code.as_deref().unwrap(), days(1))
            .unwrap();
        let verified = arm.verify_certificate("dps", "inter", &fresh.etag, &signed).await.unwrap();
        assert!(verified.is_verified);

        let listed = arm.ca_certificates("dps").await.unwrap();
        let mut names: Vec<_> = listed.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["inter", "root"]);

        let stale = arm.delete_ca_certificate("dps", "inter", &uploaded.etag).await.unwrap_err();
        assert_eq!(status(stale).0, 412);
        arm.delete_ca_certificate("dps", "inter", &verified.etag).await.unwrap();
        assert_eq!(status(arm.ca_certificate("dps", "inter").await.unwrap_err()).0, 404);
        assert_eq!(status(arm.ca_certificates("no-such-dps").await.unwrap_err()).0, 404);

        // Without a bearer token ARM answers 401.
        let http = crate::service::http_client(&trust, Duration::from_secs(5)).unwrap();
        let response = http
            .get(format!(
                "{endpoint}/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/dpskit-local/providers/Microsoft.Devices/provisioningServices/dps/certificates?api-version=2026-11-01"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
    });
    // The same state the in-process API sees.
    assert!(
        emulator
            .cloud()
            .ca_certificate("dps", "root")
            .unwrap()
            .is_verified
    );
}

#[test]
fn arm_resources_hubs_dps_keys_and_links_over_https() {
    use crate::provisioning::Trust;
    use crate::service::arm::ArmClient;

    let emulator = start(None);
    let trust = Trust::from_pem(emulator.trust_pem().as_bytes()).unwrap();
    let endpoint = format!("https://127.0.0.1:{}", emulator.https_port());
    let arm = ArmClient::new(
        &endpoint,
        crate::emulator::DEFAULT_SUBSCRIPTION_ID,
        crate::emulator::DEFAULT_RESOURCE_GROUP,
        crate::service::arm::static_token("any-token"),
        &trust,
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let hub_a = arm.create_hub("arm-hub-a", "westeurope").await.unwrap();
        let hub_b = arm.create_hub("arm-hub-b", "northeurope").await.unwrap();
        assert_eq!(hub_a.provisioning_state, "Succeeded");
        assert_ne!(hub_a.host_name, hub_b.host_name);
        // Creating again returns the same hub.
        assert_eq!(
            arm.create_hub("arm-hub-a", "westeurope").await.unwrap(),
            hub_a
        );
        let dps = arm.create_dps("arm-dps", "westeurope").await.unwrap();
        assert!(dps.id_scope.starts_with("0ne"), "{dps:?}");
        assert!(dps.linked_hubs.is_empty());
        assert_eq!(
            dps.service_operations_host_name,
            format!("127.0.0.1:{}", emulator.https_port())
        );

        let keys = arm.dps_keys("arm-dps").await.unwrap();
        assert_eq!(keys.key_name, "provisioningserviceowner");
        assert_eq!(
            keys.primary_key,
            emulator.cloud().dps("arm-dps").unwrap().primary_key
        );
        assert!(
            !keys.to_string().contains(&keys.primary_key),
            "keys are redacted when printed"
        );
        let hub_keys = arm.hub_keys("arm-hub-a").await.unwrap();
        assert_eq!(
            hub_keys.primary_key,
            emulator.cloud().hub("arm-hub-a").unwrap().primary_key
        );

        // Linking twice, as the CLI does: the first link comes back masked and is kept.
        arm.link_hub("arm-dps", "arm-hub-a", Some(2), true, None)
            .await
            .unwrap();
        let linked = arm
            .link_hub("arm-dps", "arm-hub-b", None, false, None)
            .await
            .unwrap();
        let hosts: Vec<_> = linked
            .linked_hubs
            .iter()
            .map(|l| l.host_name.clone())
            .collect();
        assert_eq!(hosts.len(), 2, "{hosts:?}");
        assert!(
            linked
                .linked_hubs
                .iter()
                .all(|l| l.connection_string.ends_with("SharedAccessKey=****"))
        );
        let stored = emulator.cloud().dps("arm-dps").unwrap().linked_hubs;
        let a = stored.iter().find(|l| l.hub == "arm-hub-a").unwrap();
        assert_eq!((a.allocation_weight, a.apply_allocation_policy), (2, true));
        let b = stored.iter().find(|l| l.hub == "arm-hub-b").unwrap();
        assert!(!b.apply_allocation_policy);

        assert_eq!(arm.dps_instances().await.unwrap().len(), 1);
        assert_eq!(arm.hubs().await.unwrap().len(), 2);
        arm.delete_hub("arm-hub-b").await.unwrap();
        assert_eq!(
            arm.dps("arm-dps").await.unwrap().linked_hubs.len(),
            1,
            "deleting a hub unlinks it"
        );
        arm.delete_dps("arm-dps").await.unwrap();
        let gone = arm.dps("arm-dps").await.unwrap_err();
        assert!(
            matches!(&gone, crate::Error::Service(s) if s.status == 404),
            "{gone:?}"
        );
    });
    // A hub created over ARM is reachable over MQTT at once.
    let host = emulator.cloud().hub("arm-hub-a").unwrap().host_name;
    std::net::TcpStream::connect((host.as_str(), emulator.mqtt_port())).unwrap();
}

#[test]
fn dps_service_client_enrollments_and_registrations_over_https() {
    use crate::provisioning::Trust;
    use crate::service::dps::DpsServiceClient;

    let f = fixture(None);
    let (_device, _hub) = provisioned(&f, "svc-dev-1");
    let dps = f.emulator.cloud().dps("dps").unwrap();
    let authority = format!("127.0.0.1:{}", f.emulator.https_port());
    let trust = Trust::from_pem(f.emulator.trust_pem().as_bytes()).unwrap();
    let connection = |key: &str| {
        format!(
            "HostName={authority};SharedAccessKeyName=provisioningserviceowner;SharedAccessKey={key}"
        )
    };
    let client =
        DpsServiceClient::from_connection_string(&connection(&dps.primary_key), None, &trust)
            .unwrap();
    let status = |e: crate::Error| match e {
        crate::Error::Service(s) => (s.status, s.error_code),
        other => panic!("not a service error: {other:?}"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The group the fixture provisioned through, as the service shows it.
        let sensors: serde_json::Value = client.enrollment_group("sensors").await.unwrap();
        assert_eq!(sensors["attestation"]["type"], "x509");
        let registrations: Vec<serde_json::Value> = client.registrations("sensors").await.unwrap();
        assert_eq!(registrations.len(), 1);
        assert_eq!(registrations[0]["registrationId"], "svc-dev-1");
        assert_eq!(registrations[0]["status"], "assigned");

        let body = serde_json::json!({
            "enrollmentGroupId": "keys",
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": null, "secondaryKey": null}},
            "allocationPolicy": "static",
            "iotHubs": [f.emulator.cloud().hub("hub-b").unwrap().host_name],
        });
        let created: serde_json::Value = client.put_enrollment_group("keys", &body, None).await.unwrap();
        assert_eq!(created["allocationPolicy"], "static");
        let keys: serde_json::Value = client.enrollment_group_attestation("keys").await.unwrap();
        assert_eq!(keys["symmetricKey"]["primaryKey"], created["attestation"]["symmetricKey"]["primaryKey"]);
        let mut ids: Vec<String> = client
            .enrollment_groups::<serde_json::Value>()
            .await
            .unwrap()
            .iter()
            .map(|g| g["enrollmentGroupId"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        assert_eq!(ids, ["keys", "sensors"]);
        let stale = client.delete_enrollment_group("keys", Some("\"stale\"")).await.unwrap_err();
        assert_eq!(status(stale).0, 412);
        client
            .delete_enrollment_group("keys", created["etag"].as_str())
            .await
            .unwrap();
        assert_eq!(status(client.enrollment_group::<serde_json::Value>("keys").await.unwrap_err()).0, 404);

        let individual = serde_json::json!({
            "registrationId": "solo",
            "deviceId": "solo-device",
            "attestation": {"type": "symmetricKey"},
        });
        let solo: serde_json::Value = client.put_enrollment("solo", &individual, None).await.unwrap();
        assert_eq!(solo["deviceId"], "solo-device");
        assert_eq!(client.enrollments::<serde_json::Value>().await.unwrap().len(), 1);
        client.delete_enrollment("solo", None).await.unwrap();

        let state: serde_json::Value = client.registration("svc-dev-1").await.unwrap();
        client.delete_registration("svc-dev-1", state["etag"].as_str()).await.unwrap();
        assert_eq!(status(client.registration::<serde_json::Value>("svc-dev-1").await.unwrap_err()).0, 404);

        let intruder = DpsServiceClient::from_connection_string(
            &connection(&crate::sas::generate_key().unwrap()),
            None,
            &trust,
        )
        .unwrap();
        let refused = intruder.enrollment_groups::<serde_json::Value>().await.unwrap_err();
        assert_eq!(status(refused), (401, Some(401_002)));
    });
}

#[test]
fn hub_service_client_identities_twins_methods_c2d_and_telemetry() {
    use crate::hub::{HubClient, HubConnectOptions, TelemetryMessage};
    use crate::provisioning::{DeviceAuth, Trust};
    use crate::service::hub::HubServiceClient;

    let f = fixture(None);
    let (device, hub) = provisioned(&f, "svc-hub-dev");
    let record = f
        .emulator
        .cloud()
        .hubs()
        .into_iter()
        .find(|h| h.host_name == hub)
        .unwrap();
    let endpoint = format!("https://127.0.0.1:{}", f.emulator.https_port());
    let pem = f.emulator.trust_pem();
    let trust = Trust::from_pem(pem.as_bytes()).unwrap();
    let connection =
        |key: &str| format!("HostName={hub};SharedAccessKeyName=iothubowner;SharedAccessKey={key}");
    let owner = connection(&record.primary_key);
    let service =
        HubServiceClient::from_connection_string(&owner, Some(&endpoint), &trust).unwrap();
    let status = |e: crate::Error| match e {
        crate::Error::Service(s) => (s.status, s.error_code),
        other => panic!("not a service error: {other:?}"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let identity = service.device("svc-hub-dev").await.unwrap();
        assert_eq!(identity["authentication"]["type"], "selfSigned");
        assert_eq!(
            identity["authentication"]["x509Thumbprint"]["primaryThumbprint"],
            device.credential().certificate().info().thumbprint_sha1.to_ascii_uppercase()
        );
        assert_eq!(identity["connectionState"], "Disconnected");

        // A device that sends telemetry and answers a method (raw MQTT, as a device SDK would).
        let mut d = HubDevice::connect(&f, &hub, &device, false).await.unwrap();
        d.subscribe_all("svc-hub-dev").await;
        assert_eq!(service.device("svc-hub-dev").await.unwrap()["connectionState"], "Connected");
        let (owner, endpoint, trust) = (owner.clone(), endpoint.clone(), trust.clone());
        let call = tokio::spawn(async move {
            let service = HubServiceClient::from_connection_string(&owner, Some(&endpoint), &trust).unwrap();
            service
                .invoke_method("svc-hub-dev", "reboot", &serde_json::json!({"delay": 1}), Duration::from_secs(10))
                .await
        });
        let (topic, body) = d.next_publish().await.unwrap();
        let rid = topic.strip_prefix("$iothub/methods/POST/reboot/?$rid=").unwrap().to_string();
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), serde_json::json!({"delay": 1}));
        d.client
            .publish(format!("$iothub/methods/res/200/?$rid={rid}"), r#"{"rebooting":true}"#, PublishOptions::at_least_once())
            .await
            .unwrap();
        let (acked, answer) = tokio::join!(d.until(|p| matches!(p, Packet::PubAck(_))), call);
        acked.unwrap();
        assert_eq!(answer.unwrap().unwrap(), (200, serde_json::json!({"rebooting": true})));

        let twin = service
            .patch_twin("svc-hub-dev", &serde_json::json!({"tags": {"site": "lab"}, "properties": {"desired": {"interval": 3}}}))
            .await
            .unwrap();
        assert_eq!(twin["tags"]["site"], "lab");
        assert_eq!(twin["properties"]["desired"]["interval"], 3);
        let (topic, _) = d.next_publish().await.unwrap();
        assert!(topic.starts_with("$iothub/twin/PATCH/properties/desired/"), "{topic}");

        service.send_c2d("svc-hub-dev", b"hello", &[("k".into(), "v".into())]).await.unwrap();
        let (topic, body) = d.next_publish().await.unwrap();
        assert!(topic.starts_with("devices/svc-hub-dev/messages/devicebound/"), "{topic}");
        assert_eq!(body, b"hello");
        drop(d);

        let sender = HubClient::connect(
            HubConnectOptions::new(hub.clone(), f.emulator.mqtt_port(), "svc-hub-dev", DeviceAuth::X509(device.shared_credential())),
            &Trust::from_pem(pem.as_bytes()).unwrap(),
        )
        .await
        .unwrap();
        let mut message = TelemetryMessage::new("21.5");
        message.properties.push(("unit".into(), "C".into()));
        sender.send_telemetry(&message).await.unwrap();
        let stored = service.telemetry(Some("svc-hub-dev")).await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].body, b"21.5");
        assert_eq!(stored[0].properties, [("unit".to_string(), "C".to_string())]);

        // Identities: a SAS device with generated keys, then deleted.
        let made = service
            .put_device("svc-sas", &serde_json::json!({"deviceId": "svc-sas", "authentication": {"type": "sas", "symmetricKey": {"primaryKey": null, "secondaryKey": null}}}))
            .await
            .unwrap();
        assert_eq!(made["authentication"]["symmetricKey"]["primaryKey"].as_str().unwrap().len(), 44);
        assert_eq!(service.twins().await.unwrap().len(), 2);
        service.delete_device("svc-sas").await.unwrap();
        assert_eq!(status(service.device("svc-sas").await.unwrap_err()), (404, Some(404_001)));
        let offline = service
            .invoke_method("svc-sas", "x", &Value::Null, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(status(offline).0, 404);
    });
}

#[test]
fn hub_client_reconnects_replays_and_renews_sas_tokens() {
    use crate::hub::{ConnectionState, HubClient, HubConnectOptions, TelemetryMessage};
    use crate::provisioning::{DeviceAuth, Trust};

    let f = fixture(None);
    let (device, hub) = provisioned(&f, "resilient-1");
    let trust = Trust::from_pem(f.emulator.trust_pem().as_bytes()).unwrap();
    let hubs = f.emulator.hubs().clone();
    let sas_key = sas_device(&f, &hub, "renewing-1");
    f.emulator.tracer().watch(Some("renewing-1"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut options = HubConnectOptions::new(
            hub.clone(),
            f.emulator.mqtt_port(),
            "resilient-1",
            DeviceAuth::X509(device.shared_credential()),
        );
        options.receive = true;
        let client = HubClient::connect(options, &trust).await.unwrap();
        client
            .send_telemetry(&TelemetryMessage::new("before"))
            .await
            .unwrap();
        // The hub drops the device; a C2D message waits for it meanwhile.
        assert!(hubs.drop_connection(&hub, "resilient-1"));
        hubs.send_c2d(&hub, "resilient-1", b"while away", vec![])
            .unwrap();
        // Sending right away waits for the reconnect and its PUBACK: nothing is lost.
        client
            .send_telemetry(&TelemetryMessage::new("after"))
            .await
            .unwrap();
        assert_eq!(client.connection_state(), ConnectionState::Connected);
        let message = tokio::time::timeout(Duration::from_secs(10), client.next_message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message.body, b"while away");
        client.close().await;
        assert_eq!(client.connection_state(), ConnectionState::Closed);

        // A 3 s SAS token is renewed before it runs out (the hub would close the connection
        // with 401003 at expiry); messages keep flowing across the renewal.
        let mut options = HubConnectOptions::new(
            hub.clone(),
            f.emulator.mqtt_port(),
            "renewing-1",
            DeviceAuth::SymmetricKey(sas_key.clone()),
        );
        options.sas_ttl = Duration::from_secs(3);
        let client = HubClient::connect(options, &trust).await.unwrap();
        for i in 0..10 {
            client
                .send_telemetry(&TelemetryMessage::new(format!("tick {i}")))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        client.close().await;
    });
    let bodies: Vec<String> = hubs
        .telemetry(&hub, Some("resilient-1"))
        .unwrap()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    // Nothing lost, in order. QoS 1 is at least once, on Azure as here: when the hub took
    // "after" from the connection it was dropping, the PUBACK died with it and the client sent
    // it again on the new one.
    assert_eq!(
        bodies.first().map(String::as_str),
        Some("before"),
        "{bodies:?}"
    );
    assert!(
        (2..=3).contains(&bodies.len()) && bodies[1..].iter().all(|b| b == "after"),
        "{bodies:?}"
    );
    assert_eq!(hubs.telemetry(&hub, Some("renewing-1")).unwrap().len(), 10);
    let connects = f
        .emulator
        .tracer()
        .events("renewing-1")
        .iter()
        .filter(|e| e.kind == "CONNECT")
        .count();
    assert!(
        connects >= 2,
        "the token was renewed by reconnecting ({connects} CONNECTs)"
    );
}

/// Telemetry over IoT Hub's 256 KB is refused by the device before it is queued, by the client
/// and by the fleet's send path: queued, the hub would drop the connection and the client would
/// send it again after every reconnect. The connection survives and carries the next message.
#[test]
fn oversized_telemetry_is_refused_before_it_is_sent() {
    use crate::fleet::HubConnections;
    use crate::hub::{HubClient, HubConnectOptions, MAX_TELEMETRY_BYTES, TelemetryMessage};
    use crate::provisioning::{DeviceAuth, Trust};

    let f = fixture(None);
    let trust = Trust::from_pem(f.emulator.trust_pem().as_bytes()).unwrap();
    let port = f.emulator.mqtt_port();
    let hub = f.emulator.cloud().hub("hub-a").unwrap().host_name;
    let key = sas_device(&f, &hub, "big-sender");
    let options = HubConnectOptions::new(
        hub.clone(),
        port,
        "big-sender",
        DeviceAuth::SymmetricKey(key),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let hubs = f.emulator.hubs().clone();
    let too_big = bytes::Bytes::from(vec![b'x'; 300_000]);
    let is_size_refusal =
        |e: &Error| matches!(e, Error::Config(m) if m.contains(&MAX_TELEMETRY_BYTES.to_string()));
    runtime.block_on(async {
        let client = HubClient::connect(options.clone(), &trust).await.unwrap();
        // The guard only keeps a regression from hanging the suite: queued, the message would
        // never be acknowledged.
        let refused = tokio::time::timeout(
            Duration::from_secs(30),
            client.send_telemetry(&TelemetryMessage::new(too_big.clone())),
        )
        .await
        .expect("refused at once, not queued")
        .unwrap_err();
        assert!(is_size_refusal(&refused), "{refused:?}");
        // The properties count too: a body under the limit with a large property is refused.
        let mut with_properties = TelemetryMessage::new(vec![b'y'; MAX_TELEMETRY_BYTES - 100]);
        with_properties
            .properties
            .push(("note".into(), "z".repeat(200)));
        let refused = client.send_telemetry(&with_properties).await.unwrap_err();
        assert!(is_size_refusal(&refused), "{refused:?}");
        client
            .send_telemetry(&TelemetryMessage::new("normal"))
            .await
            .unwrap();
        // The largest message the client lets through, properties and all, is one the hub
        // accepts: a device is never left replaying a message the hub keeps refusing.
        let mut largest = TelemetryMessage::new("");
        largest.message_id = Some("largest".into());
        largest.properties.push(("note".into(), "z".repeat(1000)));
        largest.body = bytes::Bytes::from(vec![b'L'; MAX_TELEMETRY_BYTES - largest.size()]);
        assert_eq!(largest.size(), MAX_TELEMETRY_BYTES);
        tokio::time::timeout(Duration::from_secs(30), client.send_telemetry(&largest))
            .await
            .expect("the hub acknowledges the largest message the client sends")
            .unwrap();
        assert_eq!(
            client.connection_state(),
            crate::hub::ConnectionState::Connected
        );
        assert_eq!(client.reconnects(), 0, "the hub never dropped the device");
        client.disconnect().await.unwrap();

        let (connections, report) = HubConnections::connect(vec![options], &trust, 1).await;
        assert_eq!(report.connected, 1, "{:?}", report.failures);
        let refused = connections.send_telemetry(1, too_big, 1).await;
        assert_eq!((refused.sent, refused.acknowledged), (0, 0));
        let [(device, error)] = &refused.failures[..] else {
            panic!("{:?}", refused.failures)
        };
        assert_eq!(device, "big-sender");
        assert!(is_size_refusal(error), "{error:?}");
        let sent = connections
            .send_telemetry(2, bytes::Bytes::from_static(b"fine"), 2)
            .await;
        assert!(sent.failures.is_empty(), "{:?}", sent.failures);
        assert_eq!(sent.acknowledged, 2);
        connections.close().await;
    });
    let bodies: Vec<Vec<u8>> = hubs
        .telemetry(&hub, Some("big-sender"))
        .unwrap()
        .into_iter()
        .map(|r| {
            if r.body.len() > 6 {
                b"<largest>".to_vec()
            } else {
                r.body
            }
        })
        .collect();
    assert_eq!(
        bodies,
        vec![
            b"normal".to_vec(),
            b"<largest>".to_vec(),
            b"fine".to_vec(),
            b"fine".to_vec()
        ]
    );
}

/// The emulator counts what IoT Hub counts against 256 KB: the body and the properties. A
/// message over it is answered, as on Azure over MQTT, by closing the connection; the same
/// properties with a smaller body are stored.
#[test]
fn the_hub_counts_properties_against_256_kb() {
    use crate::emulator::hub::MAX_D2C_BYTES;

    let f = fixture(None);
    let (device, hub) = provisioned(&f, "counted-dev");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hubs = f.emulator.hubs().clone();
    let topic = format!(
        "devices/counted-dev/messages/events/note={}",
        "z".repeat(200)
    );
    runtime.block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        // note (4) + 200 + body: fits with 204 bytes of properties, not with one more of body.
        let fits = vec![b'a'; MAX_D2C_BYTES - 204];
        d.client
            .publish(topic.clone(), fits, PublishOptions::at_least_once())
            .await
            .unwrap();
        d.until(|p| matches!(p, Packet::PubAck(_))).await.unwrap();
        let over = vec![b'b'; MAX_D2C_BYTES - 203];
        d.client
            .publish(topic.clone(), over, PublishOptions::at_least_once())
            .await
            .unwrap();
        let dropped = d.until(|p| matches!(p, Packet::PubAck(_))).await;
        assert!(
            dropped.is_err(),
            "the hub acknowledged an oversized message"
        );
    });
    let stored = hubs.telemetry(&hub, Some("counted-dev")).unwrap();
    let [record] = &stored[..] else {
        panic!("{} records", stored.len())
    };
    assert_eq!(record.body.len(), MAX_D2C_BYTES - 204);
}

/// dpskit's DPS client sends a registration with a custom payload far above rumqttc's default
/// 10 KB packet limit, and refuses one above DPS's 96 KB message limit before dialling.
#[test]
fn dpskit_provisioning_carries_a_large_custom_payload() {
    use crate::provisioning::{
        DeviceAuth, MAX_REGISTRATION_BYTES, ProvisioningRequest, Trust, provision,
    };

    let f = fixture(None);
    f.sensors_group();
    let trust = Trust::from_pem(f.emulator.trust_pem().as_bytes()).unwrap();
    let device = f.device("big-payload");
    let request = |payload: Value| ProvisioningRequest {
        host: "127.0.0.1".into(),
        port: f.emulator.mqtt_port(),
        id_scope: f.scope.clone(),
        registration_id: "big-payload".into(),
        auth: DeviceAuth::X509(device.shared_credential()),
        payload: Some(payload),
        timeout: Duration::from_secs(60),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let large = serde_json::json!({"inventory": "i".repeat(20_000)});
        let result = provision(&request(large), &trust).await.unwrap();
        assert_eq!(result.status, "assigned");
        assert_eq!(result.device_id.as_deref(), Some("big-payload"));

        let oversized = serde_json::json!({"inventory": "i".repeat(MAX_REGISTRATION_BYTES)});
        let refused = provision(&request(oversized), &trust).await.unwrap_err();
        assert!(
            matches!(&refused, Error::Config(m) if m.contains("96 KB")),
            "{refused:?}"
        );
    });
}

/// DPS refuses a register request over its 96 KB message limit (400004, as for any body it
/// cannot validate), from a client that sends it anyway; one just under the limit registers.
#[test]
fn dps_refuses_a_registration_over_96_kb() {
    use crate::limits::MAX_DPS_MESSAGE_BYTES;

    let f = fixture(None);
    f.sensors_group();
    let device = f.device("dps-too-big");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = |total: usize| {
        let head = r#"{"registrationId":"dps-too-big","payload":{"x":""}}"#.len();
        format!(
            r#"{{"registrationId":"dps-too-big","payload":{{"x":"{}"}}}}"#,
            "x".repeat(total - head)
        )
    };
    for (size, expected) in [
        (MAX_DPS_MESSAGE_BYTES + 1, 400),
        (MAX_DPS_MESSAGE_BYTES, 200),
    ] {
        let register = body(size);
        assert_eq!(register.len(), size);
        let outcome = runtime.block_on(provision_body_async(
            f.emulator.trust_pem(),
            f.emulator.mqtt_port(),
            &f.scope,
            "dps-too-big",
            device_auth(&device),
            register,
        ));
        let Outcome::Replies(replies) = outcome else {
            panic!("refused at connect: {outcome:?}")
        };
        let (status, answer) = replies.last().unwrap();
        assert_eq!(*status, expected, "{answer}");
        if expected == 400 {
            assert_eq!(replies.len(), 1, "refused at once: {replies:?}");
            assert_eq!(answer["errorCode"], 400_004);
            assert!(
                answer["message"].as_str().unwrap().contains("96 KB"),
                "{answer}"
            );
        }
    }
}

/// The hub keeps a twin's reported section to 32 KB (403100, Azure's words) and a method
/// response to 128 KB (the call fails with 413001 and the connection is closed unacknowledged),
/// against a device client that sends them anyway.
#[test]
fn the_hub_refuses_oversized_reported_sections_and_method_responses() {
    use crate::limits::{MAX_METHOD_PAYLOAD_BYTES, MAX_TWIN_SECTION_BYTES};

    let f = fixture(None);
    let (device, hub) = provisioned(&f, "hub-limits");
    let hubs = f.emulator.hubs().clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        d.subscribe_all("hub-limits").await;
        // {"a":"..."} exactly at the limit is taken; one byte more is refused.
        let section = |total: usize| format!(r#"{{"a":"{}"}}"#, "r".repeat(total - 8));
        for (rid, size, status) in [
            (1, MAX_TWIN_SECTION_BYTES + 1, 403),
            (2, MAX_TWIN_SECTION_BYTES, 204),
        ] {
            d.client
                .publish(
                    format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
                    section(size),
                    PublishOptions::at_least_once(),
                )
                .await
                .unwrap();
            let (topic, body) = d.next_publish().await.unwrap();
            assert!(
                topic.starts_with(&format!("$iothub/twin/res/{status}/?$rid={rid}")),
                "{topic}"
            );
            if status == 403 {
                let answer: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(answer["errorCode"], 403_100);
                assert!(
                    answer["message"]
                        .as_str()
                        .unwrap()
                        .contains("'Properties.Reported' size")
                );
            }
        }
        // The section is full: a further property grows it past the limit.
        d.client
            .publish(
                "$iothub/twin/PATCH/properties/reported/?$rid=3",
                r#"{"b":1}"#,
                PublishOptions::at_least_once(),
            )
            .await
            .unwrap();
        let (topic, _) = d.next_publish().await.unwrap();
        assert!(topic.starts_with("$iothub/twin/res/403/?$rid=3"), "{topic}");

        let call = {
            let hubs = hubs.clone();
            let hub = hub.clone();
            tokio::spawn(async move {
                hubs.invoke_method(
                    &hub,
                    "hub-limits",
                    "dump",
                    Value::Null,
                    Duration::from_secs(30),
                )
                .await
            })
        };
        let (topic, _) = d.next_publish().await.unwrap();
        let rid = topic
            .strip_prefix("$iothub/methods/POST/dump/?$rid=")
            .unwrap()
            .to_string();
        let answer = format!(r#""{}""#, "m".repeat(MAX_METHOD_PAYLOAD_BYTES - 1));
        d.client
            .publish(
                format!("$iothub/methods/res/200/?$rid={rid}"),
                answer,
                PublishOptions::at_least_once(),
            )
            .await
            .unwrap();
        let (acknowledged, outcome) =
            tokio::join!(d.until(|p| matches!(p, Packet::PubAck(_))), call);
        assert!(
            acknowledged.is_err(),
            "the hub acknowledged an oversized method response"
        );
        match outcome.unwrap() {
            Err(Error::Service(s)) => {
                assert_eq!((s.status, s.error_code), (413, Some(413_001)));
                assert!(s.message.contains("128 KB"), "{}", s.message);
            }
            other => panic!("{other:?}"),
        }
    });
}

/// A hub enforcing the free tier: its daily quota metered in 0.5 KB blocks is spent by a few
/// large messages, the next one closes the connection unacknowledged (403002), and `usage`
/// shows the meter; the tier's connection rate refuses past 100 new connections at once.
#[test]
fn free_tier_preset_meters_the_daily_quota_and_throttles_connections() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "quota-dev");
    let hubs = f.emulator.hubs().clone();
    let sku = crate::limits::HubSku::new("F1", 1).unwrap();
    let name = f
        .emulator
        .cloud()
        .hubs()
        .into_iter()
        .find(|h| h.host_name == hub)
        .unwrap()
        .name;
    let record = f
        .emulator
        .cloud()
        .set_hub_sku(&name, Some(sku), true)
        .unwrap();
    assert_eq!((record.sku, record.presets), (Some(sku), true));
    hubs.set_preset(&hub, Some(sku));
    let before = hubs.usage(&hub).unwrap();
    assert_eq!(
        (
            before.sku.as_str(),
            before.daily_quota,
            before.meter_block_bytes
        ),
        ("F1", 8_000, 512)
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // 200 KB is 400 blocks of 0.5 KB: twenty messages spend the 8,000, the 21st is refused.
    let body = vec![b'x'; 200 * 1024];
    runtime.block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        // Published from a task while `until` drives the connection: the client's request
        // queue holds fewer messages than these.
        let client = d.client.clone();
        let sender = tokio::spawn(async move {
            for _ in 0..21 {
                let sent = client
                    .publish(
                        "devices/quota-dev/messages/events/",
                        body.clone(),
                        PublishOptions::at_least_once(),
                    )
                    .await;
                if sent.is_err() {
                    break;
                }
            }
        });
        let closed = d.until(|_| false).await.unwrap_err();
        assert_ne!(closed, "timed out", "the hub closes the connection");
        sender.abort();
    });
    let usage = hubs.usage(&hub).unwrap();
    assert_eq!((usage.messages_used, usage.quota_refusals), (8_000, 1));
    assert_eq!(usage.resets_at % 86_400, 0, "the meter resets at 00:00 UTC");
    // The writer commits in batches after the hub took the messages.
    let stored = || hubs.telemetry(&hub, Some("quota-dev")).unwrap().len();
    for _ in 0..100 {
        if stored() >= 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stored(), 20, "the refused message is not stored");

    // F1 takes 100 new connections a second (the device's took one of them), not 150.
    let admitted = (0..150)
        .filter(|_| hubs.admit_connection(&hub).is_ok())
        .count();
    assert!((99..150).contains(&admitted), "{admitted} admitted");
    assert!(hubs.usage(&hub).unwrap().throttled["connections"] >= 1);

    // Without the preset the hub enforces nothing again.
    hubs.set_preset(&hub, None);
    assert!((0..150).all(|_| hubs.admit_connection(&hub).is_ok()));
    assert!(hubs.meter_message(&hub, 1 << 20).is_ok());
}
