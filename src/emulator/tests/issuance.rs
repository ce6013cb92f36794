//! The cloud's clock and certificate issuance: time moved forward with
//! `Cloud::advance_time` expires certificates and SAS tokens at DPS and the hubs (and the
//! offset survives a restart); a device registers with a CSR and gets a chain issued by its
//! enrollment's Device Registry policy, authenticates to its hub with it
//! (`certificateAuthority`), and renews it over `$iothub/credentials`. The peer is a raw
//! rumqttc client written to Azure's documented wire format, so every answer seen is the
//! emulator's own.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Broker, Event, MqttOptions, Packet, TlsConfiguration, Transport};

use super::support::*;
use crate::pki::KeyAlgorithm;

const DAY: i64 = 86_400;

/// Connects to `hub` as `device_id` with a SAS token; `Err` when the CONNECT is refused.
async fn connect_sas(
    emulator: &crate::emulator::Emulator,
    hub: &str,
    device_id: &str,
    token: String,
) -> Result<rumqttc::EventLoop, String> {
    let config = client_tls(&emulator.trust_pem(), None);
    let mut options = MqttOptions::new(device_id, Broker::tcp(hub, emulator.mqtt_port()));
    options.set_credentials(
        format!("{hub}/{device_id}/?api-version=2021-04-12"),
        token.into_bytes(),
    );
    options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
    options.set_keep_alive(30);
    let (client, mut events) = AsyncClient::builder(options).capacity(4).build();
    std::mem::forget(client);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok(events),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no CONNACK".into()),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn an_x509_device_expires_at_dps_and_at_its_hub_when_the_clock_moves_past_its_certificate() {
    let f = fixture(None);
    f.sensors_group();
    let device = f
        .inter
        .issue_device("short-lived", KeyAlgorithm::EcP256, days(1))
        .unwrap();
    let hub = provision(&f.emulator, &f.scope, "short-lived", device_auth(&device)).assigned_hub();
    runtime().block_on(async {
        HubDevice::connect(&f, &hub, &device, true).await.unwrap();
    });
    f.emulator.cloud().advance_time(2 * DAY).unwrap();
    let (status, code, message) =
        provision(&f.emulator, &f.scope, "short-lived", device_auth(&device)).refusal();
    assert_eq!((status, code), (401, 401_002), "{message}");
    assert!(message.contains("validity period"), "{message}");
    runtime().block_on(async {
        let refused = HubDevice::connect(&f, &hub, &device, true).await.err();
        assert!(refused.is_some(), "the hub took an expired certificate");
    });
}

#[test]
fn a_sas_token_expires_on_the_clouds_clock_and_the_offset_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(Some(dir.path().to_path_buf()));
    let hub = f.emulator.cloud().hub("hub-a").unwrap().host_name;
    let key = sas_device(&f, &hub, "sas-clock");
    let resource = format!("{hub}/devices/sas-clock");
    let token = crate::sas::build_token(&resource, &key, crate::clock::now() + 3600, None).unwrap();
    runtime().block_on(async {
        let mut live = connect_sas(&f.emulator, &hub, "sas-clock", token.clone())
            .await
            .unwrap();
        f.emulator.cloud().advance_time(2 * 3600).unwrap();
        // The live session ends at once: its token ran out in the cloud's time.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while live.poll().await.is_ok() {}
        })
        .await;
        assert!(closed.is_ok(), "the session outlived its token");
        let refused = connect_sas(&f.emulator, &hub, "sas-clock", token.clone()).await;
        assert!(refused.is_err(), "an expired token was accepted");
    });
    let offset = f.emulator.cloud().clock().offset_ms();
    assert!(offset >= 2 * 3600 * 1000);
    drop(f);
    let emulator = start(Some(dir.path().to_path_buf()));
    assert!(emulator.cloud().clock().offset_ms() >= offset);
    runtime().block_on(async {
        let refused = connect_sas(&emulator, &hub, "sas-clock", token).await;
        assert!(
            refused.is_err(),
            "an expired token was accepted after a restart"
        );
    });
}

// ---- Issuance: DPS with a CSR, the hub's CA authentication and renewal ----

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rumqttc::{PublishOptions, QoS};
use serde_json::{Value, json};

use crate::emulator::EnrollmentSpec;
use crate::emulator::dps::DpsKnobChange;
use crate::emulator::hub::HubKnobChange;
use crate::emulator::model::{
    Attestation, CredentialPolicyRef, DeviceAuth, EnrollmentSettings, IssuedBy,
};
use crate::pki::{Certificate, CertificateRequest, PrivateKey};

const DPS_CSR_VERSION: &str = "2025-07-01-preview";
const HUB_RENEWAL_VERSION: &str = "2025-08-01-preview";
/// The policy's validity, days.
const VALIDITY_DAYS: i64 = 30;

/// The usual fixture, with a Device Registry namespace and policy linked to the DPS and both
/// hubs.
fn issuing_fixture() -> Fixture {
    let f = fixture(None);
    let cloud = f.emulator.cloud();
    cloud
        .create_device_registry_namespace("adr-ns", "westeurope")
        .unwrap();
    cloud
        .create_credential_policy("adr-ns", "pol", VALIDITY_DAYS as u32, "ECC")
        .unwrap();
    cloud.link_dps_to_namespace("dps", "adr-ns").unwrap();
    cloud.link_hub_to_namespace("hub-a", "adr-ns").unwrap();
    cloud.link_hub_to_namespace("hub-b", "adr-ns").unwrap();
    f
}

fn with_policy() -> EnrollmentSettings {
    EnrollmentSettings {
        credential_policy: Some(CredentialPolicyRef {
            policy: "pol".into(),
            ..CredentialPolicyRef::default()
        }),
        ..EnrollmentSettings::default()
    }
}

fn csr(cn: &str, key: &PrivateKey) -> String {
    CertificateRequest::generate(cn, key).unwrap().to_base64()
}

/// Registers over raw MQTT with `body` at `api_version`.
fn register(f: &Fixture, id: &str, auth: Auth<'_>, api_version: &str, body: Value) -> Outcome {
    runtime().block_on(provision_at_version_async(
        f.emulator.trust_pem(),
        (f.emulator.mqtt_port(), api_version),
        &f.scope,
        id,
        auth,
        body.to_string(),
    ))
}

/// The issued chain of an assigned answer, decoded, after checking its order: each
/// certificate issued by the next, ending with a self-signed root.
fn issued_chain(answer: &Value) -> Vec<Certificate> {
    let chain: Vec<Certificate> = answer["registrationState"]["issuedCertificateChain"]
        .as_array()
        .unwrap_or_else(|| panic!("no chain in {answer}"))
        .iter()
        .map(|c| Certificate::from_der(&BASE64.decode(c.as_str().unwrap()).unwrap()).unwrap())
        .collect();
    check_order(&chain);
    chain
}

fn check_order(chain: &[Certificate]) {
    assert_eq!(chain.len(), 3, "leaf, issuing CA, root");
    assert!(chain[0].is_signed_by(&chain[1]) && !chain[0].info().is_self_signed);
    assert!(chain[1].is_signed_by(&chain[2]));
    assert!(chain[2].info().is_self_signed);
}

/// The SubjectPublicKeyInfo a certificate carries.
fn public_key(certificate: &Certificate) -> Vec<u8> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.der()).unwrap();
    parsed.public_key().raw.to_vec()
}

/// Checks a leaf: CN, key, validity of the policy's days from the cloud's now.
fn check_leaf(f: &Fixture, leaf: &Certificate, cn: &str, key: &PrivateKey) {
    let info = leaf.info();
    assert_eq!(info.common_name.as_deref(), Some(cn));
    assert_eq!(public_key(leaf), key.public_key_der(), "the CSR's key");
    assert_eq!(info.not_after - info.not_before, VALIDITY_DAYS * DAY);
    let now = f.emulator.cloud().clock().now();
    assert!(
        info.not_before <= now && info.not_before > now - 3600,
        "from the cloud's now"
    );
}

/// A hub session over raw MQTT at `api_version`, presenting `chain` with `key`.
async fn connect_x509(
    f: &Fixture,
    hub: &str,
    id: &str,
    (chain, key): (&[Certificate], &PrivateKey),
    api_version: &str,
    clean_session: bool,
) -> Result<HubDevice, String> {
    let der = chain.iter().map(|c| c.der().to_vec()).collect();
    let config = client_tls(&f.emulator.trust_pem(), Some((der, key)));
    let mut options = MqttOptions::new(id, Broker::tcp(hub, f.emulator.mqtt_port()));
    options.set_username(format!("{hub}/{id}/?api-version={api_version}"));
    options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
    options.set_clean_session(clean_session);
    options.set_keep_alive(30);
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

async fn subscribe_credentials(device: &mut HubDevice) {
    device
        .client
        .subscribe("$iothub/credentials/res/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    device
        .until(|p| matches!(p, Packet::SubAck(_)))
        .await
        .unwrap();
}

async fn request(device: &mut HubDevice, rid: &str, body: Value) {
    request_raw(device, rid, body.to_string().into_bytes()).await
}

async fn request_raw(device: &mut HubDevice, rid: &str, body: Vec<u8>) {
    device
        .client
        .publish(
            format!("$iothub/credentials/POST/issueCertificate/?$rid={rid}"),
            body,
            PublishOptions::at_least_once(),
        )
        .await
        .unwrap();
}

/// The next renewal answer: (status, rid, body).
async fn answer(device: &mut HubDevice) -> (u16, String, Value) {
    let (topic, body) = device.next_publish().await.unwrap();
    let rest = topic
        .strip_prefix("$iothub/credentials/res/")
        .unwrap_or_else(|| panic!("not a renewal answer: {topic}"));
    let (status, query) = rest.split_once("/?$rid=").unwrap();
    (
        status.parse().unwrap(),
        query.split('&').next().unwrap().to_string(),
        serde_json::from_slice(&body).unwrap(),
    )
}

/// A renewal that succeeds: 202 then 200 with the same correlation id; the new chain.
async fn renew(device: &mut HubDevice, id: &str, rid: &str, key: &PrivateKey) -> Vec<Certificate> {
    request(device, rid, json!({"id": id, "csr": csr(id, key)})).await;
    let (status, answered, accepted) = answer(device).await;
    assert_eq!((status, answered.as_str()), (202, rid), "{accepted}");
    assert!(
        accepted["operationExpires"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let (status, answered, issued) = answer(device).await;
    assert_eq!((status, answered.as_str()), (200, rid), "{issued}");
    assert_eq!(issued["correlationId"], accepted["correlationId"]);
    let chain: Vec<Certificate> = issued["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Certificate::from_der(&BASE64.decode(c.as_str().unwrap()).unwrap()).unwrap())
        .collect();
    check_order(&chain);
    chain
}

#[test]
fn an_x509_device_registers_with_a_csr_connects_with_the_issued_chain_and_renews_it() {
    let f = issuing_fixture();
    x509_group(
        &f,
        "sensors",
        f.inter.credential().certificate(),
        with_policy(),
    );
    let bootstrap = f.device("csr-x509");
    let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
    let body = json!({"registrationId": "csr-x509", "csr": csr("csr-x509", &key)});
    let outcome = register(
        &f,
        "csr-x509",
        device_auth(&bootstrap),
        DPS_CSR_VERSION,
        body,
    );
    let Outcome::Replies(replies) = &outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        replies[..replies.len() - 1]
            .iter()
            .all(|(_, b)| b["registrationState"]["issuedCertificateChain"].is_null()),
        "only the assigned answer carries the chain"
    );
    let hub = outcome.assigned_hub();
    let chain = issued_chain(&outcome.last().1);
    check_leaf(&f, &chain[0], "csr-x509", &key);
    let cloud = f.emulator.cloud();
    let identity = cloud.hub_device(&hub, "csr-x509").unwrap();
    assert_eq!(identity.auth, DeviceAuth::CertificateAuthority);
    assert_eq!(
        identity.issued_by,
        Some(IssuedBy {
            namespace: "adr-ns".into(),
            policy: "pol".into()
        })
    );
    let record = serde_json::to_value(cloud.registration("dps", "csr-x509").unwrap()).unwrap();
    assert!(!record.to_string().contains("issuedCertificateChain"));

    runtime().block_on(async {
        // The issued chain authenticates (the whole chain, or leaf and issuing CA); the
        // bootstrap certificate no longer does.
        connect_x509(&f, &hub, "csr-x509", (&chain, &key), "2021-04-12", true)
            .await
            .unwrap();
        connect_x509(
            &f,
            &hub,
            "csr-x509",
            (&chain[..2], &key),
            "2021-04-12",
            true,
        )
        .await
        .unwrap();
        let bootstrap_chain = [bootstrap.credential().certificate().clone()];
        let refused = connect_x509(
            &f,
            &hub,
            "csr-x509",
            (&bootstrap_chain, bootstrap.credential().key()),
            "2021-04-12",
            true,
        )
        .await;
        assert!(
            refused.is_err(),
            "the bootstrap certificate is for DPS only"
        );

        // Renewal, 20 days in: the new certificate runs 30 days from then.
        cloud.advance_time(20 * DAY).unwrap();
        let mut device = connect_x509(
            &f,
            &hub,
            "csr-x509",
            (&chain, &key),
            HUB_RENEWAL_VERSION,
            true,
        )
        .await
        .unwrap();
        subscribe_credentials(&mut device).await;
        let new_key = PrivateKey::generate(KeyAlgorithm::EcP384).unwrap();
        let renewed = renew(&mut device, "csr-x509", "1001", &new_key).await;
        check_leaf(&f, &renewed[0], "csr-x509", &new_key);
        let connect = |chain: &[Certificate], key: &PrivateKey| {
            let (f, hub) = (&f, hub.clone());
            let (chain, key) = (chain.to_vec(), key.pkcs8_der().to_vec());
            async move {
                let key = PrivateKey::from_pkcs8(&key).unwrap();
                connect_x509(f, &hub, "csr-x509", (&chain, &key), "2021-04-12", true)
                    .await
                    .map(drop)
            }
        };
        connect(&renewed, &new_key).await.unwrap();
        connect(&chain, &key).await.unwrap();
        // 15 days later the first certificate has expired; the renewed one still works.
        cloud.advance_time(15 * DAY).unwrap();
        assert!(connect(&chain, &key).await.is_err());
        connect(&renewed, &new_key).await.unwrap();
    });
}

#[test]
fn a_symmetric_key_device_registers_with_a_csr_and_connects_with_the_issued_chain() {
    let f = issuing_fixture();
    let group_key = crate::sas::generate_key().unwrap();
    f.emulator
        .cloud()
        .put_enrollment_group(
            "dps",
            "keyed",
            EnrollmentSpec {
                attestation: Some(Attestation::SymmetricKey {
                    primary_key: group_key.clone(),
                    secondary_key: crate::sas::generate_key().unwrap(),
                }),
                settings: with_policy(),
                device_id: None,
            },
            None,
        )
        .unwrap();
    let device_key = crate::sas::derive_device_key(&group_key, "csr-sas").unwrap();
    let audience = crate::protocol::dps::sas_audience(&f.scope, "csr-sas");
    let token = crate::sas::build_token(
        &audience,
        &device_key,
        crate::clock::now() + 3600,
        Some("registration"),
    )
    .unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcP384).unwrap();
    // Without registrationId and payload: the CSR alone.
    let body = json!({"csr": csr("csr-sas", &key)});
    let outcome = register(
        &f,
        "csr-sas",
        Auth::Sas(token.clone()),
        DPS_CSR_VERSION,
        body,
    );
    let hub = outcome.assigned_hub();
    let chain = issued_chain(&outcome.last().1);
    check_leaf(&f, &chain[0], "csr-sas", &key);
    assert_eq!(
        f.emulator.cloud().hub_device(&hub, "csr-sas").unwrap().auth,
        DeviceAuth::CertificateAuthority
    );
    runtime().block_on(async {
        connect_x509(
            &f,
            &hub,
            "csr-sas",
            (&chain, &key),
            HUB_RENEWAL_VERSION,
            true,
        )
        .await
        .unwrap();
    });
    // The bootstrap token, valid an hour, is refused at DPS once the cloud's clock is two
    // hours on.
    f.emulator.cloud().advance_time(2 * 3600).unwrap();
    let body = json!({"csr": csr("csr-sas", &key)});
    let outcome = register(&f, "csr-sas", Auth::Sas(token), DPS_CSR_VERSION, body);
    assert!(matches!(outcome, Outcome::Refused(_)), "{outcome:?}");
}

#[test]
fn dps_refuses_each_bad_csr_with_400004_and_a_message_naming_the_check() {
    let f = issuing_fixture();
    x509_group(
        &f,
        "sensors",
        f.inter.credential().certificate(),
        with_policy(),
    );
    let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
    let refusal = |id: &str, version: &str, csr: Value| {
        let device = f.device(id);
        let body = json!({"registrationId": id, "csr": csr});
        let (status, code, message) =
            register(&f, id, device_auth(&device), version, body).refusal();
        assert_eq!((status, code), (400, 400_004), "{message}");
        message
    };
    let garbage = BASE64.encode(b"not a certificate request at all");
    assert!(refusal("bad-b64", DPS_CSR_VERSION, json!("***")).contains("base64"));
    assert!(refusal("bad-der", DPS_CSR_VERSION, json!(garbage)).contains("PKCS#10"));
    assert!(refusal("bad-cn", DPS_CSR_VERSION, json!(csr("other", &key))).contains("common name"));
    assert!(refusal("bad-type", DPS_CSR_VERSION, json!(42)).contains("string"));
    let rsa = PrivateKey::generate(KeyAlgorithm::Rsa3072).unwrap();
    assert!(refusal("big-rsa", DPS_CSR_VERSION, json!(csr("big-rsa", &rsa))).contains("key type"));
    assert!(refusal("old-api", "2021-06-01", json!(csr("old-api", &key))).contains("api-version"));

    // An enrollment without a policy cannot issue.
    let lone = f.device("lone");
    f.emulator
        .cloud()
        .put_enrollment(
            "dps",
            "lone",
            EnrollmentSpec {
                attestation: Some(Attestation::X509 {
                    ca_references: vec![],
                    certificates: vec![BASE64.encode(lone.credential().certificate().der())],
                }),
                settings: EnrollmentSettings::default(),
                device_id: None,
            },
            None,
        )
        .unwrap();
    let body = json!({"registrationId": "lone", "csr": csr("lone", &key)});
    let (status, code, message) =
        register(&f, "lone", device_auth(&lone), DPS_CSR_VERSION, body).refusal();
    assert_eq!((status, code), (400, 400_004));
    assert!(message.contains("no credential policy"), "{message}");

    // The strict knob takes P-384 only.
    f.emulator
        .change_dps_knobs(
            "dps",
            DpsKnobChange {
                strict_csr_key_type: Some(true),
                ..DpsKnobChange::default()
            },
        )
        .unwrap();
    assert!(refusal("p256", DPS_CSR_VERSION, json!(csr("p256", &key))).contains("ec-p384"));
    let p384 = PrivateKey::generate(KeyAlgorithm::EcP384).unwrap();
    let device = f.device("p384");
    let body = json!({"registrationId": "p384", "csr": csr("p384", &p384)});
    let outcome = register(&f, "p384", device_auth(&device), DPS_CSR_VERSION, body);
    outcome.assigned_hub();
    issued_chain(&outcome.last().1);
}

/// A device registered with a CSR, connected at the renewal api-version and subscribed.
async fn renewing_device(f: &Fixture, id: &str) -> (HubDevice, String, PrivateKey) {
    let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
    let bootstrap = f.device(id);
    let outcome = tokio::task::block_in_place(|| {
        register(
            f,
            id,
            device_auth(&bootstrap),
            DPS_CSR_VERSION,
            json!({"registrationId": id, "csr": csr(id, &key)}),
        )
    });
    let hub = outcome.assigned_hub();
    let chain = issued_chain(&outcome.last().1);
    let mut device = connect_x509(f, &hub, id, (&chain, &key), HUB_RENEWAL_VERSION, false)
        .await
        .unwrap();
    subscribe_credentials(&mut device).await;
    (device, hub, key)
}

fn error_code(body: &Value) -> u64 {
    body["errorCode"].as_u64().unwrap_or(0)
}

#[test]
fn the_hub_refuses_each_bad_renewal_with_iot_hubs_code() {
    let f = issuing_fixture();
    x509_group(
        &f,
        "sensors",
        f.inter.credential().certificate(),
        with_policy(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut device, hub, key) = renewing_device(&f, "renewer").await;
        // Refused at once, without a 202.
        request_raw(&mut device, "2001", Vec::new()).await;
        let (status, rid, body) = answer(&mut device).await;
        assert_eq!(
            (status, rid.as_str(), error_code(&body)),
            (400, "2001", 400_004)
        );
        request_raw(&mut device, "2002", b"{not json".to_vec()).await;
        let (status, _, body) = answer(&mut device).await;
        assert_eq!((status, error_code(&body)), (400, 400_006));
        request(
            &mut device,
            "2003",
            json!({"id": "someone-else", "csr": csr("renewer", &key)}),
        )
        .await;
        assert_eq!(error_code(&answer(&mut device).await.2), 400_004);

        // A CSR that is base64 but not PKCS#10, or names another CN: 202, then 400040.
        let garbage = BASE64.encode(b"garbage");
        request(
            &mut device,
            "2004",
            json!({"id": "renewer", "csr": garbage}),
        )
        .await;
        let (status, _, accepted) = answer(&mut device).await;
        assert_eq!(status, 202);
        let (status, rid, body) = answer(&mut device).await;
        assert_eq!(
            (status, rid.as_str(), error_code(&body)),
            (400, "2004", 400_040)
        );
        assert_eq!(body["info"]["credentialError"], "CsrVerificationFailed");
        assert_eq!(body["info"]["correlationId"], accepted["correlationId"]);
        request(
            &mut device,
            "2005",
            json!({"id": "renewer", "csr": csr("other", &key)}),
        )
        .await;
        assert_eq!(answer(&mut device).await.0, 202);
        let body = answer(&mut device).await.2;
        assert_eq!(error_code(&body), 400_040);
        assert_eq!(body["info"]["credentialError"], "CommonNameMismatch");

        // One operation at a time: held back by the knob, a second request is a conflict.
        f.emulator
            .change_hub_knobs(
                &hub,
                HubKnobChange {
                    certificate_issuance_delay_ms: Some(60_000),
                    ..HubKnobChange::default()
                },
            )
            .unwrap();
        request(
            &mut device,
            "3001",
            json!({"id": "renewer", "csr": csr("renewer", &key)}),
        )
        .await;
        let (status, _, pending) = answer(&mut device).await;
        assert_eq!(status, 202);
        request(
            &mut device,
            "3002",
            json!({"id": "renewer", "csr": csr("renewer", &key)}),
        )
        .await;
        let (status, _, body) = answer(&mut device).await;
        assert_eq!((status, error_code(&body)), (409, 409_005), "{body}");
        assert_eq!(body["info"]["requestId"], "3001");
        assert_eq!(body["info"]["correlationId"], pending["correlationId"]);
        assert_eq!(
            body["info"]["operationExpires"],
            pending["operationExpires"]
        );
        let replace =
            |named: &str| json!({"id": "renewer", "csr": csr("renewer", &key), "replace": named});
        request(&mut device, "3003", replace("9999")).await;
        let (status, _, body) = answer(&mut device).await;
        assert_eq!((status, error_code(&body)), (412, 412_001));
        assert_eq!(body["info"]["requestId"], "9999");
        // Replacing the pending one (by its id, then by "*"), with the delay gone: only the
        // last request is answered 200.
        request(&mut device, "3004", replace("3001")).await;
        assert_eq!(answer(&mut device).await.0, 202);
        f.emulator
            .change_hub_knobs(
                &hub,
                HubKnobChange {
                    certificate_issuance_delay_ms: Some(0),
                    ..HubKnobChange::default()
                },
            )
            .unwrap();
        request(&mut device, "3005", replace("*")).await;
        assert_eq!(answer(&mut device).await.0, 202);
        let (status, rid, _) = answer(&mut device).await;
        assert_eq!((status, rid.as_str()), (200, "3005"));
    });

    // A device whose certificate DPS did not issue may not renew.
    let (plain, plain_hub) = provisioned_again(&f, "plain");
    rt.block_on(async {
        let chain = [plain.credential().certificate().clone()];
        let mut device = connect_x509(
            &f,
            &plain_hub,
            "plain",
            (&chain, plain.credential().key()),
            HUB_RENEWAL_VERSION,
            true,
        )
        .await
        .unwrap();
        subscribe_credentials(&mut device).await;
        let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        request(
            &mut device,
            "4001",
            json!({"id": "plain", "csr": csr("plain", &key)}),
        )
        .await;
        let (status, _, body) = answer(&mut device).await;
        assert_eq!((status, error_code(&body)), (403, 403_010), "{body}");
    });
}

/// Provisions `id` without a CSR through the "sensors" group already enrolled.
fn provisioned_again(f: &Fixture, id: &str) -> (crate::pki::DeviceCredential, String) {
    let device = f.device(id);
    let hub = provision(&f.emulator, &f.scope, id, device_auth(&device)).assigned_hub();
    (device, hub)
}

#[test]
fn renewal_answers_wait_for_the_subscription_and_older_api_versions_know_no_renewal() {
    let f = issuing_fixture();
    x509_group(
        &f,
        "sensors",
        f.inter.credential().certificate(),
        with_policy(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        let bootstrap = f.device("waiter");
        let outcome = tokio::task::block_in_place(|| {
            register(
                &f,
                "waiter",
                device_auth(&bootstrap),
                DPS_CSR_VERSION,
                json!({"registrationId": "waiter", "csr": csr("waiter", &key)}),
            )
        });
        let hub = outcome.assigned_hub();
        let chain = issued_chain(&outcome.last().1);
        let mut device = connect_x509(
            &f,
            &hub,
            "waiter",
            (&chain, &key),
            HUB_RENEWAL_VERSION,
            true,
        )
        .await
        .unwrap();
        // Asked before subscribing: the PUBACK comes, the answers only after the SUBACK.
        request(
            &mut device,
            "5001",
            json!({"id": "waiter", "csr": csr("waiter", &key)}),
        )
        .await;
        device
            .until(|p| matches!(p, Packet::PubAck(_)))
            .await
            .unwrap();
        device
            .client
            .subscribe("$iothub/credentials/res/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            match tokio::time::timeout(Duration::from_secs(5), device.events.poll())
                .await
                .unwrap()
                .unwrap()
            {
                Event::Incoming(Packet::SubAck(_)) => seen.push("SUBACK".to_string()),
                Event::Incoming(Packet::Publish(p)) => {
                    seen.push(String::from_utf8_lossy(&p.topic).into_owned())
                }
                _ => {}
            }
        }
        assert_eq!(
            seen,
            [
                "SUBACK",
                "$iothub/credentials/res/202/?$rid=5001",
                "$iothub/credentials/res/200/?$rid=5001"
            ]
        );

        // On an older api-version the renewal topics are unknown ones: the hub closes the
        // connection, for the subscription and for the request alike.
        for publish_first in [false, true] {
            let mut old = connect_x509(&f, &hub, "waiter", (&chain, &key), "2021-04-12", true)
                .await
                .unwrap();
            if publish_first {
                request(
                    &mut old,
                    "6001",
                    json!({"id": "waiter", "csr": csr("waiter", &key)}),
                )
                .await;
            } else {
                old.client
                    .subscribe("$iothub/credentials/res/#", QoS::AtLeastOnce)
                    .await
                    .unwrap();
            }
            let closed = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    if old.events.poll().await.is_err() {
                        break;
                    }
                }
            })
            .await;
            assert!(closed.is_ok(), "the hub kept the connection");
        }
    });
}

#[test]
fn malformed_renewal_bodies_never_take_the_hub_down() {
    use crate::fuzz::{Rng, mutate, watch_emulator_panics};
    let panics_before = watch_emulator_panics();
    let f = issuing_fixture();
    x509_group(
        &f,
        "sensors",
        f.inter.credential().certificate(),
        with_policy(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut device, _hub, key) = renewing_device(&f, "fuzzed").await;
        let seeds: Vec<Vec<u8>> = [
            json!({"id": "fuzzed", "csr": csr("fuzzed", &key)}),
            json!({"id": "fuzzed", "csr": csr("fuzzed", &key), "replace": "*"}),
            json!({"id": "fuzzed", "csr": BASE64.encode(b"x"), "replace": "abcd"}),
        ]
        .iter()
        .map(|v| v.to_string().into_bytes())
        .collect();
        let mut random = Rng::new(0x5EED_CE27);
        for n in 0..200 {
            let seed = random.pick(&seeds).clone();
            let body = mutate(&mut random, &seed);
            let rid = format!("{}", 10_000 + n);
            request_raw(&mut device, &rid, body).await;
            // Every request is answered on its rid (a refusal, or 202 and its outcome).
            loop {
                let (status, answered, _) = answer(&mut device).await;
                if answered == rid && status != 202 {
                    break;
                }
            }
        }
        // Still serving: a good renewal goes through.
        let new_key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
        renew(&mut device, "fuzzed", "7777", &new_key).await;
    });
    assert_eq!(
        watch_emulator_panics(),
        panics_before,
        "the emulator panicked"
    );
}
