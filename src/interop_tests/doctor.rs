//! `dpskit doctor`'s online checks and traced attempt against the emulator: each classic
//! online cause is built for real (an unverified CA, a group on another CA, a disabled group,
//! no linked hub, a leaf sent alone, a PKCS#12 without its chain, an individual enrollment for
//! another certificate, a disabled hub identity) and diagnosed as that cause and no other; a
//! healthy device is diagnosed healthy and assigned, with every step traced.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::diagnosis::credential::{self, HeldCredential};
use crate::diagnosis::{self, Cause, Check, Verdict};
use crate::doctor::{Attempt, ConnectTarget, OnlineTarget, attempt, online};
use crate::emulator::EnrollmentSpec;
use crate::emulator::model::{Attestation, DeviceStatus, EnrollmentSettings};
use crate::emulator::tests::support::*;
use crate::pki::{Credential, DeviceCredential, KeyAlgorithm};
use crate::protocol::dps_service::ProvisioningStatus;
use crate::service::arm::{ArmClient, static_token};
use crate::transport::Trust;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn trust(f: &Fixture) -> Trust {
    Trust::from_pem(f.emulator.trust_pem().as_bytes()).unwrap()
}

fn online_target(f: &Fixture) -> OnlineTarget {
    let trust = trust(f);
    let arm = ArmClient::new(
        &format!("https://127.0.0.1:{}", f.emulator.https_port()),
        crate::emulator::DEFAULT_SUBSCRIPTION_ID,
        crate::emulator::DEFAULT_RESOURCE_GROUP,
        static_token("any-token"),
        &trust,
    )
    .unwrap();
    OnlineTarget {
        arm,
        dps_name: "dps".into(),
        trust,
    }
}

fn connect_target(f: &Fixture) -> ConnectTarget {
    ConnectTarget {
        host: "127.0.0.1".into(),
        port: f.emulator.mqtt_port(),
        id_scope: f.scope.clone(),
        trust: trust(f),
        timeout: std::time::Duration::from_secs(60),
    }
}

/// The device as it holds its credential: leaf, then its issuers (root included).
fn held(device: &DeviceCredential) -> HeldCredential {
    credential::from_credential(device.credential())
        .credential
        .unwrap()
}

/// The leaf and its key alone.
fn leaf_only(device: &DeviceCredential) -> HeldCredential {
    let mut held = held(device);
    held.certificates.truncate(1);
    held
}

fn online_checks(f: &Fixture, held: &HeldCredential, id: &str) -> Vec<Check> {
    let target = online_target(f);
    runtime().block_on(online::check(&target, held, id, crate::clock::now()))
}

fn attempt_with(f: &Fixture, held: &HeldCredential, id: &str, checks: &[Check]) -> Attempt {
    let target = connect_target(f);
    let clock = crate::clock::Clock::system();
    runtime().block_on(attempt::run(&target, held, Some(id), None, checks, &clock))
}

fn check<'a>(checks: &'a [Check], id: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("no check {id} in {checks:#?}"))
}

/// The online checks of `held` name exactly `expected`, and every check ran.
fn diagnosed_as(checks: &[Check], expected: &[Cause]) {
    assert_eq!(diagnosis::causes(checks), expected, "{checks:#?}");
    let ids: Vec<&str> = checks.iter().map(|c| c.id).collect();
    assert_eq!(ids, online::CHECK_IDS, "{checks:#?}");
}

fn ca_reference_group(f: &Fixture, group_id: &str, ca_name: &str, settings: EnrollmentSettings) {
    f.emulator
        .cloud()
        .put_enrollment_group(
            "dps",
            group_id,
            EnrollmentSpec {
                attestation: Some(Attestation::X509 {
                    ca_references: vec![ca_name.into()],
                    certificates: vec![],
                }),
                settings,
                device_id: None,
            },
            None,
        )
        .unwrap();
}

#[test]
fn a_healthy_device_is_diagnosed_healthy_and_its_traced_attempt_is_assigned() {
    let f = fixture(None);
    f.sensors_group();
    let device = f.device("doc-healthy");
    let held = held(&device);
    let checks = online_checks(&f, &held, "doc-healthy");
    diagnosed_as(&checks, &[]);
    assert!(
        checks
            .iter()
            .all(|c| c.verdict == Verdict::Ok || c.id == online::CHECK_IDS[7]),
        "{checks:#?}"
    );
    assert!(
        check(&checks, "enrollment.match")
            .evidence
            .contains("sensors")
    );
    assert!(
        check(&checks, "registration.record")
            .evidence
            .contains("never registered")
    );

    let attempt = attempt_with(&f, &held, "doc-healthy", &checks);
    assert!(attempt.succeeded, "{attempt:#?}");
    assert!(attempt.causes.is_empty());
    assert_eq!(attempt.device_id.as_deref(), Some("doc-healthy"));
    let hub = attempt.assigned_hub.clone().unwrap();
    let steps: Vec<&str> = attempt.trace.iter().map(|s| s.step.as_str()).collect();
    for wanted in [
        "dial",
        "tls",
        "connect",
        "connack",
        "subscribe",
        "register",
        "status",
        "assigned",
    ] {
        assert!(steps.contains(&wanted), "no {wanted} step in {steps:?}");
    }
    let tls = attempt.trace.iter().find(|s| s.step == "tls").unwrap();
    assert!(
        tls.detail.contains("Test Intermediate") && tls.detail.contains("doc-healthy"),
        "{tls:?}"
    );
    let connect = attempt.trace.iter().find(|s| s.step == "connect").unwrap();
    assert!(connect.detail.contains(&f.scope), "{connect:?}");

    // Now DPS holds a record and the hub an identity: both check out.
    let after = online_checks(&f, &held, "doc-healthy");
    diagnosed_as(&after, &[]);
    assert!(check(&after, "registration.record").evidence.contains(&hub));
    assert_eq!(
        check(&after, "hub.identity").verdict,
        Verdict::Ok,
        "{after:#?}"
    );
}

#[test]
fn a_group_on_an_uploaded_but_unverified_ca_is_an_unverified_ca() {
    let f = fixture(None);
    let (root, inter) = ca_pair();
    f.emulator
        .cloud()
        .upload_ca_certificate(
            "dps",
            "unproven",
            root.credential().certificate(),
            false,
            None,
        )
        .unwrap();
    ca_reference_group(
        &f,
        "unproven-group",
        "unproven",
        EnrollmentSettings::default(),
    );
    let device = inter
        .issue_device("doc-unverified", KeyAlgorithm::EcP256, days(5))
        .unwrap();
    let checks = online_checks(&f, &held(&device), "doc-unverified");
    diagnosed_as(&checks, &[Cause::UnverifiedCa]);
    assert!(
        check(&checks, "dps.ca_certificates")
            .evidence
            .contains("not verified")
    );
}

#[test]
fn a_device_under_a_ca_no_group_names_is_a_wrong_ca_in_the_group() {
    let f = fixture(None);
    f.sensors_group();
    let (_root, other) = ca_pair();
    let device = other
        .issue_device("doc-stranger", KeyAlgorithm::EcP256, days(5))
        .unwrap();
    let checks = online_checks(&f, &held(&device), "doc-stranger");
    diagnosed_as(&checks, &[Cause::WrongCaInGroup]);
    let matched = check(&checks, "enrollment.match");
    assert!(matched.evidence.contains("sensors"), "{matched:?}");
    assert_eq!(
        check(&checks, "dps.ca_certificates").verdict,
        Verdict::Warning
    );
}

#[test]
fn a_disabled_group_is_diagnosed_and_its_attempt_refused_with_401002() {
    let f = fixture(None);
    x509_group(
        &f,
        "sensors",
        f.inter.credential().certificate(),
        EnrollmentSettings {
            provisioning_status: ProvisioningStatus::Disabled,
            ..EnrollmentSettings::default()
        },
    );
    let device = f.device("doc-disabled");
    let held = held(&device);
    let checks = online_checks(&f, &held, "doc-disabled");
    diagnosed_as(&checks, &[Cause::DisabledEnrollment]);

    let attempt = attempt_with(&f, &held, "doc-disabled", &checks);
    assert!(!attempt.succeeded);
    assert_eq!(attempt.status, Some(401), "{attempt:#?}");
    assert_eq!(attempt.error_code, Some(401_002));
    assert!(attempt.message.contains("disabled"), "{attempt:#?}");
    // 401002 can mean many things; the checks found one, and only that one is named.
    assert_eq!(
        attempt.causes,
        vec![Cause::DisabledEnrollment],
        "{attempt:#?}"
    );
    assert!(attempt.trace.iter().any(|s| s.step == "refused"));
}

#[test]
fn a_dps_without_linked_hubs_is_no_linked_hub() {
    let f = fixture(None);
    f.sensors_group();
    f.emulator.cloud().unlink_hub("dps", "hub-a").unwrap();
    f.emulator.cloud().unlink_hub("dps", "hub-b").unwrap();
    let device = f.device("doc-hubless");
    let held = held(&device);
    let checks = online_checks(&f, &held, "doc-hubless");
    diagnosed_as(&checks, &[Cause::NoLinkedHub]);
    assert!(check(&checks, "enrollment.hubs").evidence.contains("none"));

    // DPS takes the registration and fails it; its record says so, a warning that names
    // no cause of its own.
    let attempt = attempt_with(&f, &held, "doc-hubless", &checks);
    assert!(!attempt.succeeded);
    assert_eq!(attempt.error_code, Some(400_208), "{attempt:#?}");
    let after = online_checks(&f, &held, "doc-hubless");
    diagnosed_as(&after, &[Cause::NoLinkedHub]);
    let record = check(&after, "registration.record");
    assert_eq!(record.verdict, Verdict::Warning, "{record:?}");
    assert!(record.evidence.contains("400208"), "{record:?}");
    assert_eq!(record.cause, None);
}

#[test]
fn a_leaf_sent_alone_to_a_group_on_the_root_is_a_missing_intermediate() {
    let f = fixture(None);
    ca_reference_group(&f, "on-root", "root", EnrollmentSettings::default());
    let device = f.device("doc-alone");
    let checks = online_checks(&f, &leaf_only(&device), "doc-alone");
    diagnosed_as(&checks, &[Cause::MissingIntermediate]);
    // The same device with its chain is fine: the leaf alone is the defect.
    diagnosed_as(&online_checks(&f, &held(&device), "doc-alone"), &[]);
}

#[test]
fn a_pkcs12_holding_the_leaf_alone_is_a_pkcs12_without_chain() {
    let f = fixture(None);
    ca_reference_group(&f, "on-root", "root", EnrollmentSettings::default());
    let device = f.device("doc-pfx");
    let credential = device.credential();
    let alone = Credential::new(
        credential.certificate().clone(),
        credential.key().try_clone().unwrap(),
        vec![],
    )
    .unwrap();
    let pfx = crate::pki::to_pkcs12(&alone, "secret", false, "doc-pfx").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doc-pfx.pfx");
    std::fs::write(&path, pfx).unwrap();
    let loaded = credential::load_pkcs12(&path, "secret");
    assert_eq!(loaded.check.verdict, Verdict::Ok, "{:?}", loaded.check);
    let held = loaded.credential.unwrap();
    assert!(held.source.is_pkcs12());
    let checks = online_checks(&f, &held, "doc-pfx");
    diagnosed_as(&checks, &[Cause::Pkcs12WithoutChain]);
}

#[test]
fn an_individual_enrollment_for_another_certificate_is_a_mismatch() {
    let f = fixture(None);
    f.sensors_group();
    let enrolled = f.device("doc-solo");
    f.emulator
        .cloud()
        .put_enrollment(
            "dps",
            "doc-solo",
            EnrollmentSpec {
                attestation: Some(Attestation::X509 {
                    ca_references: vec![],
                    certificates: vec![BASE64.encode(enrolled.credential().certificate().der())],
                }),
                settings: EnrollmentSettings::default(),
                device_id: None,
            },
            None,
        )
        .unwrap();
    // The enrolled certificate is accepted...
    let checks = online_checks(&f, &held(&enrolled), "doc-solo");
    diagnosed_as(&checks, &[]);
    assert_eq!(check(&checks, "enrollment.match").verdict, Verdict::Skipped);
    // ...a new one for the same id is not, although its group would take it.
    let renewed = f.device("doc-solo");
    let checks = online_checks(&f, &held(&renewed), "doc-solo");
    diagnosed_as(&checks, &[Cause::IndividualEnrollmentMismatch]);
}

#[test]
fn a_disabled_hub_identity_is_diagnosed_once_the_device_is_assigned() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "doc-identity");
    let cloud = f.emulator.cloud();
    let mut identity = cloud.hub_device(&hub, "doc-identity").unwrap();
    identity.registry.status = DeviceStatus::Disabled;
    cloud.put_hub_device(identity).unwrap();
    let checks = online_checks(&f, &held(&device), "doc-identity");
    diagnosed_as(&checks, &[Cause::HubIdentityDisabled]);
    assert!(check(&checks, "hub.identity").evidence.contains("disabled"));
}

#[test]
fn an_unreachable_management_endpoint_skips_every_online_check_and_blames_nothing() {
    let f = fixture(None);
    f.sensors_group();
    let device = f.device("doc-offline");
    let mut target = online_target(&f);
    target.arm = ArmClient::new(
        "https://127.0.0.1:1",
        crate::emulator::DEFAULT_SUBSCRIPTION_ID,
        crate::emulator::DEFAULT_RESOURCE_GROUP,
        static_token("any-token"),
        &target.trust,
    )
    .unwrap();
    let checks = runtime().block_on(online::check(
        &target,
        &held(&device),
        "doc-offline",
        crate::clock::now(),
    ));
    diagnosed_as(&checks, &[]);
    assert!(
        checks.iter().all(|c| c.verdict == Verdict::Skipped),
        "{checks:#?}"
    );
}

#[test]
fn an_attempt_without_the_key_of_the_first_certificate_is_not_made() {
    let f = fixture(None);
    f.sensors_group();
    let device = f.device("doc-keyless");
    let mut keyless = held(&device);
    keyless.key = None;
    let attempt = attempt_with(&f, &keyless, "doc-keyless", &[]);
    assert!(!attempt.succeeded && attempt.trace.is_empty() && attempt.causes.is_empty());
    assert!(attempt.message.contains("no private key"), "{attempt:?}");
    let mut swapped = held(&device);
    swapped.certificates.swap(0, 1);
    let attempt = attempt_with(&f, &swapped, "doc-keyless", &[]);
    assert!(!attempt.succeeded && attempt.trace.is_empty() && attempt.causes.is_empty());
    assert!(attempt.message.contains("not"), "{attempt:?}");
}

#[test]
fn an_attempt_whose_trust_bundle_lacks_the_servers_root_fails_at_tls_as_an_untrusted_server() {
    let f = fixture(None);
    f.sensors_group();
    let device = f.device("doc-bundle");
    let (stranger, _) = ca_pair();
    let bundle = crate::diagnosis::trust_bundle::TrustBundle {
        source: "a bundle of another root".into(),
        certificates: vec![stranger.credential().certificate().clone()],
    };
    let target = connect_target(&f);
    let clock = crate::clock::Clock::system();
    let attempt = runtime().block_on(attempt::run(
        &target,
        &held(&device),
        Some("doc-bundle"),
        Some(&bundle),
        &[],
        &clock,
    ));
    assert!(!attempt.succeeded);
    assert_eq!(attempt.status, None);
    assert_eq!(attempt.causes, [Cause::UntrustedServer], "{attempt:#?}");
    let steps: Vec<&str> = attempt.trace.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(steps, ["dial", "tcp", "tls"], "{attempt:#?}");
    // The target's own trust (the emulator's CA) gets through.
    let attempt = attempt_with(&f, &held(&device), "doc-bundle", &[]);
    assert!(attempt.succeeded, "{attempt:#?}");
}
