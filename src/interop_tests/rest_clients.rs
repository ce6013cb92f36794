//! The REST clients against the emulator's HTTPS listener: Azure's rules held by the clients
//! before sending (hub and DPS names, the enrollment attestation), each resource type's
//! api-version, paged hub queries and a hub's SKU through ARM.

use serde_json::{Value, json};

use crate::emulator::rest::test_support::*;
use crate::emulator::{DEFAULT_RESOURCE_GROUP, DEFAULT_SUBSCRIPTION_ID, EmulatorConfig};

#[test]
fn arm_client_refuses_names_azure_refuses_before_sending() {
    // Nothing listens on port 1: a refusal must come before any request.
    let arm = crate::service::arm::ArmClient::new(
        "https://127.0.0.1:1",
        DEFAULT_SUBSCRIPTION_ID,
        DEFAULT_RESOURCE_GROUP,
        crate::service::arm::static_token("t"),
        &crate::provisioning::Trust::system(),
    )
    .unwrap();
    runtime().block_on(async {
        for name in ["my_hub", "my.hub", "ab", "hub-"] {
            let error = arm.create_hub(name, "westeurope").await.unwrap_err();
            assert!(
                matches!(error, crate::Error::Config(_)),
                "{name}: {error:?}"
            );
            assert!(error.to_string().contains("3-50"), "{error}");
            let error = arm.create_dps(name, "westeurope").await.unwrap_err();
            assert!(
                matches!(error, crate::Error::Config(_)),
                "{name}: {error:?}"
            );
            assert!(error.to_string().contains("3-64"), "{error}");
        }
        // A valid name does try to send (and fails on the transport).
        let error = arm.create_hub("my-hub", "westeurope").await.unwrap_err();
        assert!(!matches!(error, crate::Error::Config(_)), "{error:?}");
    });
}

#[test]
fn each_resource_type_gets_its_own_api_version_whatever_the_resource_group_is_called() {
    // A group whose name contains "IotHubs": choosing the api-version from the URL's text
    // sent the hub's version to DPS calls, which ARM refuses.
    let group = "IotHubs-rg";
    let emulator = start(EmulatorConfig {
        resource_group: group.into(),
        ..EmulatorConfig::default()
    });
    let trust = crate::provisioning::Trust::from_pem(emulator.trust_pem().as_bytes()).unwrap();
    let endpoint = format!("https://127.0.0.1:{}", emulator.https_port());
    let arm = crate::service::arm::ArmClient::new(
        &endpoint,
        DEFAULT_SUBSCRIPTION_ID,
        group,
        crate::service::arm::static_token("any-token"),
        &trust,
    )
    .unwrap();
    let client = Client::new(&emulator, "127.0.0.1");
    let base = arm_base(DEFAULT_SUBSCRIPTION_ID, group);
    let (root, _) = crate::emulator::tests::support::ca_pair();
    runtime().block_on(async {
        let dps = arm.create_dps("group-dps", "westeurope").await.unwrap();
        assert_eq!(dps.name, "group-dps");
        assert_eq!(arm.dps_instances().await.unwrap().len(), 1);
        assert_eq!(
            arm.dps_keys("group-dps").await.unwrap().key_name,
            "provisioningserviceowner"
        );
        let hub = arm.create_hub("group-hub", "westeurope").await.unwrap();
        assert_eq!(arm.hubs().await.unwrap(), vec![hub.clone()]);
        assert_eq!(
            arm.hub_keys("group-hub").await.unwrap().key_name,
            "iothubowner"
        );
        let linked = arm
            .link_hub("group-dps", "group-hub", None, true, None)
            .await
            .unwrap();
        assert_eq!(linked.linked_hubs[0].host_name, hub.host_name);
        let proven = arm
            .prove_possession("group-dps", "root", &root)
            .await
            .unwrap();
        assert!(proven.is_verified);
        assert_eq!(arm.ca_certificates("group-dps").await.unwrap().len(), 1);
        arm.delete_ca_certificate("group-dps", "root", &proven.etag)
            .await
            .unwrap();
        arm.delete_dps("group-dps").await.unwrap();
        arm.delete_hub("group-hub").await.unwrap();

        // ARM itself refuses a version the resource type does not have.
        let get = |path: String| {
            let client = &client;
            async move {
                client
                    .send("GET", &path, Some("Bearer anything"), None)
                    .await
            }
        };
        let wrong = get(format!(
            "{base}/provisioningServices?api-version=2023-06-30"
        ))
        .await;
        assert_eq!(wrong.status, 400, "{wrong:?}");
        assert_eq!(wrong.body["error"]["code"], "NoRegisteredProviderFound");
        let wrong = get(format!("{base}/IotHubs?api-version=2022-02-05")).await;
        assert_eq!(wrong.status, 400, "{wrong:?}");
        assert_eq!(wrong.body["error"]["code"], "NoRegisteredProviderFound");
        let wrong = get(format!("{base}/IotHubs?api-version=latest")).await;
        assert_eq!(wrong.status, 400, "{wrong:?}");
        // A version newer than the emulator's list may have been published since: served.
        let newer = get(format!(
            "{base}/provisioningServices?api-version=2027-01-01"
        ))
        .await;
        assert_eq!(newer.status, 200, "{newer:?}");
    });
}

#[test]
fn dps_service_client_refuses_an_enrollment_without_attestation_before_sending() {
    let client = crate::service::dps::DpsServiceClient::from_connection_string(
        "HostName=127.0.0.1:1;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=a2V5LW9mLXNpeHRlZW4tYnl0ZXM=",
        None,
        &crate::provisioning::Trust::system(),
    )
    .unwrap();
    runtime().block_on(async {
        let body =
            json!({"enrollmentGroupId": "g", "attestation": null, "provisioningStatus": "enabled"});
        let error = client
            .put_enrollment_group::<_, Value>("g", &body, None)
            .await
            .unwrap_err();
        assert!(matches!(error, crate::Error::Config(_)), "{error:?}");
        assert!(error.to_string().contains("attestation"), "{error}");
        let error = client
            .put_enrollment::<_, Value>("e", &json!({"registrationId": "e"}), None)
            .await
            .unwrap_err();
        assert!(matches!(error, crate::Error::Config(_)), "{error:?}");
    });
}

/// The hub's query API pages as Azure's does: `x-ms-max-item-count` twins (at most 100) per
/// page in device-id order, `x-ms-continuation` to the next, none after the last; a token it
/// never gave is refused. dpskit's client follows the pages into typed records.
#[test]
fn hub_device_queries_page_with_continuation_tokens() {
    let emulator = start(EmulatorConfig::default());
    let hub = emulator.create_hub("hub", "westeurope", None).unwrap();
    for id in ["d-3", "d-1", "d-5", "d-2", "d-4"] {
        emulator
            .cloud()
            .put_hub_device(sas_device(id, &hub.host_name))
            .unwrap();
    }
    let key = hub.policy("iothubowner").unwrap().primary_key.clone();
    let owner = token(&hub.host_name, &key, "iothubowner");
    let client = Client::resource(&emulator, &hub.host_name);
    let query = |max: Option<usize>, continuation: Option<String>| {
        let body = json!({"query": "SELECT * FROM devices"}).to_string();
        let mut request = format!(
            "POST /devices/query?api-version=2021-04-12 HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Connection: close\r\nAuthorization: {owner}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n",
            body.len()
        );
        if let Some(n) = max {
            request.push_str(&format!("x-ms-max-item-count: {n}\r\n"));
        }
        if let Some(token) = continuation {
            request.push_str(&format!("x-ms-continuation: {token}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        request
    };
    let continuation_of = |answer: &Answer| {
        answer
            .head
            .lines()
            .find_map(|l| l.strip_prefix("x-ms-continuation: "))
            .map(|t| t.trim().to_string())
    };
    runtime().block_on(async {
        let mut seen = Vec::new();
        let mut pages = 0;
        let mut continuation = None;
        loop {
            let answer = client
                .raw(query(Some(2), continuation.take()).as_bytes())
                .await
                .unwrap();
            assert_eq!(answer.status, 200, "{answer:?}");
            assert!(answer.head.contains("x-ms-item-type: twin"), "{answer:?}");
            let page = answer.body.as_array().unwrap();
            assert!(page.len() <= 2, "{answer:?}");
            seen.extend(
                page.iter()
                    .map(|t| t["deviceId"].as_str().unwrap().to_string()),
            );
            pages += 1;
            if pages == 1 {
                // A device deleted between pages neither repeats nor hides the others.
                emulator
                    .hubs()
                    .delete_device(&hub.host_name, "d-2")
                    .unwrap();
            }
            match continuation_of(&answer) {
                Some(next) => continuation = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, ["d-1", "d-2", "d-3", "d-4", "d-5"]);
        assert_eq!(pages, 3);
        // Without the header, one page holds them all (up to 100).
        let all = client.raw(query(None, None).as_bytes()).await.unwrap();
        assert_eq!(all.body.as_array().unwrap().len(), 4, "{all:?}");
        assert_eq!(continuation_of(&all), None);
        let forged = client
            .raw(query(Some(2), Some("not base64!".into())).as_bytes())
            .await
            .unwrap();
        assert_eq!(forged.status, 400, "{forged:?}");
        assert_eq!(forged.body["errorCode"], 400_004, "{forged:?}");
        // A page size that is not a positive number is refused, not replaced by the default.
        let zero = client.raw(query(Some(0), None).as_bytes()).await.unwrap();
        assert_eq!(
            (zero.status, &zero.body["errorCode"]),
            (400, &json!(400_004)),
            "{zero:?}"
        );

        let connection_string = format!(
            "HostName={}:{};SharedAccessKeyName=iothubowner;SharedAccessKey={key}",
            hub.host_name,
            emulator.web_port()
        );
        let trust = crate::provisioning::Trust::from_pem(emulator.trust_pem().as_bytes()).unwrap();
        let service = crate::service::hub::HubServiceClient::from_connection_string(
            &connection_string,
            None,
            &trust,
        )
        .unwrap();
        let devices = service.devices().await.unwrap();
        let ids: Vec<&str> = devices.iter().map(|d| d.device_id.as_str()).collect();
        assert_eq!(ids, ["d-1", "d-3", "d-4", "d-5"]);
        assert!(devices.iter().all(|d| d.authentication == "sas"
            && d.primary_thumbprint.is_none()
            && d.connection_state == "Disconnected"));
    });
}

/// A hub created with a tier shows it in ARM and enforces it; one created without shows S1
/// with one unit and enforces nothing; ARM refuses a tier or size Azure does not have.
#[test]
fn hub_sku_round_trips_through_arm_and_turns_the_presets_on() {
    let emulator = start(EmulatorConfig::default());
    let trust = crate::provisioning::Trust::from_pem(emulator.trust_pem().as_bytes()).unwrap();
    let endpoint = format!("https://127.0.0.1:{}", emulator.https_port());
    let arm = crate::service::arm::ArmClient::new(
        &endpoint,
        DEFAULT_SUBSCRIPTION_ID,
        DEFAULT_RESOURCE_GROUP,
        crate::service::arm::static_token("any-token"),
        &trust,
    )
    .unwrap();
    runtime().block_on(async {
        let sku = crate::limits::HubSku::new("S2", 3).unwrap();
        let sized = arm
            .create_hub_with_sku("sized-hub", "westeurope", Some(sku))
            .await
            .unwrap();
        assert_eq!((sized.sku.as_str(), sized.units), ("S2", 3));
        let read = arm.hub("sized-hub").await.unwrap();
        assert_eq!((read.sku.as_str(), read.units), ("S2", 3));
        let usage = emulator.hubs().usage(&sized.host_name).unwrap();
        assert!(usage.presets);
        assert_eq!(usage.daily_quota, 18_000_000);

        let plain = arm.create_hub("plain-hub", "westeurope").await.unwrap();
        assert_eq!((plain.sku.as_str(), plain.units), ("S1", 1));
        assert!(!emulator.hubs().usage(&plain.host_name).unwrap().presets);
    });
    let client = Client::new(&emulator, "127.0.0.1");
    let base = arm_base(DEFAULT_SUBSCRIPTION_ID, DEFAULT_RESOURCE_GROUP);
    runtime().block_on(async {
        for sku in [
            json!({"name": "S4", "capacity": 1}),
            json!({"name": "F1", "capacity": 2}),
            json!({"name": "S1", "capacity": "2"}),
        ] {
            let answer = client
                .send(
                    "PUT",
                    &format!("{base}/IotHubs/bad-sku-hub?api-version=2023-06-30"),
                    Some("Bearer any"),
                    Some(&json!({"location": "westeurope", "sku": sku})),
                )
                .await;
            assert_eq!(answer.status, 400, "{answer:?}");
        }
    });
    assert!(emulator.cloud().hub("bad-sku-hub").is_err());
}
