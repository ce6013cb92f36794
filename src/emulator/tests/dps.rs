//! DPS registration: X.509 groups on verified chains, individual enrollments, symmetric-key
//! groups with derived keys, Azure's refusals, hashed allocation, proof of possession and the
//! register request's size limit.

use super::support::*;
use crate::emulator::model::{
    self, AllocationPolicy, Attestation, EnrollmentSettings, ProvisioningStatus,
};
use crate::emulator::*;
use crate::pki::issue::now;
use crate::pki::{KeyAlgorithm, Validity};

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
