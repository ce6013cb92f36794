//! dpskit's ARM client against the emulator's ARM: CA certificates with proof of possession,
//! hubs, DPS instances, keys and linked hubs.

use std::time::Duration;

use crate::emulator::tests::support::*;

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
            format!("127.0.0.1:{}", emulator.web_port())
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
