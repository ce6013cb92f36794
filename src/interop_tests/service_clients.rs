//! dpskit's DPS and hub service clients against the emulator: enrollments and registration
//! states; identities, twins, methods, C2D and telemetry.

use std::time::Duration;

use rumqttc::{Packet, PublishOptions};
use serde_json::Value;

use crate::emulator::tests::support::*;
use crate::protocol::hub_service::{DeviceIdentity, Twin};

#[test]
fn dps_service_client_enrollments_and_registrations_over_https() {
    use crate::provisioning::Trust;
    use crate::service::dps::DpsServiceClient;

    let f = fixture(None);
    let (_device, _hub) = provisioned(&f, "svc-dev-1");
    let dps = f.emulator.cloud().dps("dps").unwrap();
    let authority = format!("127.0.0.1:{}", f.emulator.web_port());
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
    let web_port = f.emulator.web_port();
    let pem = f.emulator.trust_pem();
    let trust = Trust::from_pem(pem.as_bytes()).unwrap();
    let connection = |key: &str| {
        format!("HostName={hub}:{web_port};SharedAccessKeyName=iothubowner;SharedAccessKey={key}")
    };
    let owner = connection(&record.primary_key);
    let service = HubServiceClient::from_connection_string(&owner, None, &trust).unwrap();
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
        // The identity as the shared serde type reads the emulator's answer.
        let identity: DeviceIdentity = service.device("svc-hub-dev").await.unwrap();
        assert_eq!(identity.device_id, "svc-hub-dev");
        let authentication = identity.authentication.unwrap();
        assert_eq!(authentication.kind.as_deref(), Some("selfSigned"));
        assert_eq!(
            authentication.x509_thumbprint.unwrap().primary_thumbprint.unwrap(),
            device.credential().certificate().info().thumbprint_sha1.to_ascii_uppercase()
        );
        assert_eq!(identity.connection_state.as_deref(), Some("Disconnected"));

        // A device that sends telemetry and answers a method (raw MQTT, as a device SDK would).
        let mut d = HubDevice::connect(&f, &hub, &device, false).await.unwrap();
        d.subscribe_all("svc-hub-dev").await;
        let connected: DeviceIdentity = service.device("svc-hub-dev").await.unwrap();
        assert_eq!(connected.connection_state.as_deref(), Some("Connected"));
        let (owner, trust) = (owner.clone(), trust.clone());
        let call = tokio::spawn(async move {
            let service = HubServiceClient::from_connection_string(&owner, None, &trust).unwrap();
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

        let twin: Twin = service
            .patch_twin("svc-hub-dev", &serde_json::json!({"tags": {"site": "lab"}, "properties": {"desired": {"interval": 3}}}))
            .await
            .unwrap();
        assert_eq!((twin.device_id.as_str(), twin.tags.unwrap()["site"].as_str()), ("svc-hub-dev", Some("lab")));
        assert_eq!(twin.properties.unwrap().desired.unwrap()["interval"], 3);
        let (topic, _) = d.next_publish().await.unwrap();
        assert!(topic.starts_with("$iothub/twin/PATCH/properties/desired/"), "{topic}");

        // C2D goes over AMQP, as on Azure: the same connection string, the AMQP port.
        let c2d = crate::service::C2dClient::from_connection_string(
            &connection(&record.primary_key),
            Some(f.emulator.amqp_port()),
            &Trust::from_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap();
        let message = crate::service::C2dMessage {
            device_id: "svc-hub-dev".into(),
            body: b"hello".to_vec(),
            properties: vec![("k".into(), "v".into())],
            message_id: Some("svc-m-1".into()),
            ..Default::default()
        };
        assert_eq!(c2d.send(&message).await.unwrap(), "svc-m-1");
        let (topic, body) = d.next_publish().await.unwrap();
        assert!(topic.starts_with("devices/svc-hub-dev/messages/devicebound/"), "{topic}");
        assert!(topic.contains("%24.mid=svc-m-1") && topic.contains("k=v"), "{topic}");
        assert_eq!(body, b"hello");
        // A second send reuses the connection; an unknown device is the hub's 404.
        let missing = c2d
            .send(&crate::service::C2dMessage { device_id: "nobody".into(), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(status(missing).0, 404);
        // Asked for, the device's completion (its PUBACK) comes back as feedback.
        let asked = crate::service::C2dMessage {
            device_id: "svc-hub-dev".into(),
            body: b"confirm".to_vec(),
            ack: Some("full".into()),
            message_id: Some("svc-m-2".into()),
            ..Default::default()
        };
        c2d.send(&asked).await.unwrap();
        let (topic, _) = d.next_publish().await.unwrap();
        assert!(topic.contains("iothub-ack=full"), "{topic}");
        let mut feedback = crate::service::FeedbackReceiver::open(
            &connection(&record.primary_key),
            Some(f.emulator.amqp_port()),
            &Trust::from_pem(pem.as_bytes()).unwrap(),
        )
        .await
        .unwrap();
        let (found, _) = feedback.wait_for("svc-m-2", Duration::from_secs(30)).await.unwrap();
        assert_eq!((found.status.as_str(), found.device_id.as_str()), ("Success", "svc-hub-dev"));
        feedback.close().await;
        c2d.close().await;
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
        let made: DeviceIdentity = service
            .put_device("svc-sas", &serde_json::json!({"deviceId": "svc-sas", "authentication": {"type": "sas", "symmetricKey": {"primaryKey": null, "secondaryKey": null}}}))
            .await
            .unwrap();
        let keys = made.authentication.unwrap().symmetric_key.unwrap();
        assert_eq!(keys.primary_key.unwrap().len(), 44);
        assert_eq!(service.twins::<Twin>().await.unwrap().len(), 2);
        service.delete_device("svc-sas").await.unwrap();
        assert_eq!(status(service.device::<Value>("svc-sas").await.unwrap_err()), (404, Some(404_001)));
        let offline = service
            .invoke_method("svc-sas", "x", &Value::Null, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(status(offline).0, 404);
    });
}

/// The DPS service API's types (`protocol::dps_service`) carry a whole enrollment from the
/// client to the emulator and back: what the client builds is what the emulator stores, what
/// the emulator answers reads into the same types, and an update by GET, change, PUT keeps the
/// certificates the answer only described.
#[test]
fn dps_service_types_round_trip_between_the_client_and_the_emulator() {
    use crate::protocol::dps_service::{
        AllocationPolicy, AttestationMechanism, AttestationType, CustomAllocationDefinition,
        DeviceRegistrationState, EnrollmentGroup, EnrollmentPolicies, IndividualEnrollment,
        ProvisioningStatus, ReprovisionPolicy, SymmetricKeyAttestation, X509Attestation,
        X509CertificateWithInfo, X509Certificates,
    };
    use crate::provisioning::Trust;
    use crate::service::dps::DpsServiceClient;

    let f = fixture(None);
    let (_device, hub) = provisioned(&f, "typed-dev");
    let dps = f.emulator.cloud().dps("dps").unwrap();
    let trust = Trust::from_pem(f.emulator.trust_pem().as_bytes()).unwrap();
    let client = DpsServiceClient::from_connection_string(
        &format!(
            "HostName=127.0.0.1:{};SharedAccessKeyName=provisioningserviceowner;SharedAccessKey={}",
            f.emulator.web_port(),
            dps.primary_key
        ),
        None,
        &trust,
    )
    .unwrap();
    let hub_b = f.emulator.cloud().hub("hub-b").unwrap().host_name;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let twin =
            serde_json::json!({"tags": {"site": "north"}, "properties": {"desired": {"rate": 5}}});
        let keys = EnrollmentGroup {
            attestation: Some(AttestationMechanism {
                kind: AttestationType::SymmetricKey,
                x509: None,
                symmetric_key: Some(SymmetricKeyAttestation::default()),
            }),
            policies: EnrollmentPolicies {
                provisioning_status: Some(ProvisioningStatus::Disabled),
                allocation_policy: Some(AllocationPolicy::Custom),
                iot_hubs: Some(vec![hub_b.clone()]),
                reprovision_policy: Some(ReprovisionPolicy {
                    update_hub_assignment: false,
                    migrate_device_data: true,
                }),
                initial_twin: twin.as_object().cloned(),
                custom_allocation_definition: Some(CustomAllocationDefinition {
                    webhook_url: "python:pick".into(),
                    api_version: "2021-10-01".into(),
                }),
                ..EnrollmentPolicies::default()
            },
            ..EnrollmentGroup::default()
        };
        let created: EnrollmentGroup = client
            .put_enrollment_group("typed-keys", &keys, None)
            .await
            .unwrap();
        assert_eq!(created.enrollment_group_id.as_deref(), Some("typed-keys"));
        // The service generated both keys and answers every policy as it was sent.
        let generated = created.attestation.clone().unwrap().symmetric_key.unwrap();
        assert!(generated.primary_key.is_some() && generated.secondary_key.is_some());
        let policies = &created.policies;
        assert_eq!(
            policies.provisioning_status,
            keys.policies.provisioning_status
        );
        assert_eq!(policies.allocation_policy, keys.policies.allocation_policy);
        assert_eq!(policies.iot_hubs, keys.policies.iot_hubs);
        assert_eq!(
            policies.reprovision_policy,
            keys.policies.reprovision_policy
        );
        assert_eq!(policies.initial_twin, keys.policies.initial_twin);
        assert_eq!(
            policies.custom_allocation_definition,
            keys.policies.custom_allocation_definition
        );
        assert!(policies.etag.is_some() && policies.created_date_time_utc.is_some());
        let stored = f
            .emulator
            .cloud()
            .enrollment_group("dps", "typed-keys")
            .unwrap();
        assert_eq!(
            stored.settings.provisioning_status,
            ProvisioningStatus::Disabled
        );
        assert_eq!(stored.settings.iot_hubs, [hub_b]);
        let mechanism: AttestationMechanism = client
            .enrollment_group_attestation("typed-keys")
            .await
            .unwrap();
        assert_eq!(mechanism, created.attestation.clone().unwrap());
        let listed: Vec<EnrollmentGroup> = client.enrollment_groups().await.unwrap();
        assert!(listed.contains(&created), "{listed:?}");

        // GET, change, PUT with the etag: the X.509 group keeps the certificates it was
        // answered as info only.
        let mut sensors: EnrollmentGroup = client.enrollment_group("sensors").await.unwrap();
        let x509 = sensors.attestation.as_ref().unwrap().x509.clone().unwrap();
        let described = x509.signing_certificates.clone().unwrap();
        assert!(
            described
                .entries()
                .all(|e| e.certificate.is_none() && e.info.is_some())
        );
        sensors.policies.allocation_policy = Some(AllocationPolicy::Static);
        sensors.policies.iot_hubs = Some(vec![hub.clone()]);
        let etag = sensors.policies.etag.clone();
        let updated: EnrollmentGroup = client
            .put_enrollment_group("sensors", &sensors, etag.as_deref())
            .await
            .unwrap();
        assert_eq!(
            updated.policies.allocation_policy,
            Some(AllocationPolicy::Static)
        );
        assert_eq!(updated.attestation, sensors.attestation);

        // An individual enrollment with its own certificate, sent as PEM, answered as info.
        let leaf = f.device("typed-solo");
        let solo = IndividualEnrollment {
            device_id: Some("typed-solo-device".into()),
            attestation: Some(AttestationMechanism {
                kind: AttestationType::X509,
                x509: Some(X509Attestation {
                    client_certificates: Some(X509Certificates {
                        primary: Some(X509CertificateWithInfo {
                            certificate: Some(leaf.credential().certificate().pem()),
                            info: None,
                        }),
                        secondary: None,
                    }),
                    ..X509Attestation::default()
                }),
                symmetric_key: None,
            }),
            ..IndividualEnrollment::default()
        };
        let answered: IndividualEnrollment = client
            .put_enrollment("typed-solo", &solo, None)
            .await
            .unwrap();
        assert_eq!(answered.device_id.as_deref(), Some("typed-solo-device"));
        let info = answered
            .attestation
            .unwrap()
            .x509
            .unwrap()
            .client_certificates
            .unwrap();
        let primary = info.primary.unwrap().info.unwrap();
        assert_eq!(
            primary.sha1_thumbprint,
            leaf.credential()
                .certificate()
                .info()
                .thumbprint_sha1
                .to_ascii_uppercase()
        );
        // Azure fills the secondary in from the primary.
        assert_eq!(info.secondary.unwrap().info.unwrap(), primary);

        let state: DeviceRegistrationState = client.registration("typed-dev").await.unwrap();
        assert_eq!(state.registration_id.as_deref(), Some("typed-dev"));
        assert_eq!(state.status.as_deref(), Some("assigned"));
        assert_eq!(state.assigned_hub.as_deref(), Some(hub.as_str()));
        let states: Vec<DeviceRegistrationState> = client.registrations("sensors").await.unwrap();
        assert_eq!(states, [state]);
    });
}
