//! The HTTPS listener tried as an attacker would: raw requests over real TLS on 127.0.0.1 with
//! tokens out of scope, policies without the right, other subscriptions, stalled uploads,
//! invalid ids and seeded mutations of valid requests; and Azure's rules held on both sides
//! (hub and DPS names, each resource type's api-version, the required enrollment attestation,
//! the 300 s method timeout), by the emulator with Azure's 400 and by the clients before sending;
//! and the hub service API's identity and twin documents, byte for byte.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::emulator::{
    DEFAULT_RESOURCE_GROUP, DEFAULT_SUBSCRIPTION_ID, Emulator, EmulatorConfig, RestLimits,
};

use super::test_support::*;

#[test]
fn hub_tokens_are_scoped_and_policies_carry_azure_rights() {
    let emulator = start(EmulatorConfig::default());
    let hub = emulator.create_hub("hub", "westeurope", None).unwrap();
    let other = emulator.create_hub("other", "westeurope", None).unwrap();
    let host = hub.host_name.clone();
    for id in ["dev-a", "dev-ab", "dev-b"] {
        emulator
            .cloud()
            .put_hub_device(sas_device(id, &host))
            .unwrap();
    }
    let key = |name: &str| hub.policy(name).unwrap().primary_key.clone();
    let client = Client::resource(&emulator, &host);
    let api = "?api-version=2021-04-12";
    runtime().block_on(async {
        let owner = token(&host, &key("iothubowner"), "iothubowner");
        let get = |path: String, auth: String| {
            let client = &client;
            async move { client.send("GET", &path, Some(&auth), None).await }
        };
        assert_eq!(
            get(format!("/devices/dev-b{api}"), owner.clone())
                .await
                .status,
            200
        );

        // Another resource's sr, signed by this hub's owner key.
        let elsewhere = token(&other.host_name, &key("iothubowner"), "iothubowner");
        let refused = get(format!("/devices/dev-b{api}"), elsewhere).await;
        assert_eq!(refused.status, 401, "{refused:?}");
        assert_eq!(refused.body["errorCode"], 401_002);
        assert!(
            refused.head.contains("iothub-errorcode: 401002"),
            "{}",
            refused.head
        );

        // A device-scoped token: its device only, compared by whole segments, in any case,
        // with a trailing slash.
        let scoped = token(
            &format!("{host}/devices/dev-a"),
            &key("iothubowner"),
            "iothubowner",
        );
        for victim in ["dev-b", "dev-ab"] {
            let path = format!("/devices/{victim}{api}");
            let answer = client.send("DELETE", &path, Some(&scoped), None).await;
            assert_eq!(answer.status, 401, "{victim}: {answer:?}");
        }
        let loose = token(
            &format!("{}/DEVICES/dev-a/", host.to_ascii_uppercase()),
            &key("iothubowner"),
            "iothubowner",
        );
        assert_eq!(get(format!("/devices/dev-a{api}"), loose).await.status, 200);
        assert_eq!(
            get(format!("/devices/dev-a{api}"), scoped.clone())
                .await
                .status,
            200
        );

        // Each default policy with its own keys and rights.
        let service = token(&host, &key("service"), "service");
        assert_eq!(
            get(format!("/twins/dev-b{api}"), service.clone())
                .await
                .status,
            200
        );
        let answer = client
            .send(
                "DELETE",
                &format!("/devices/dev-b{api}"),
                Some(&service),
                None,
            )
            .await;
        assert_eq!(answer.status, 401, "{answer:?}");
        let read_only = token(&host, &key("registryRead"), "registryRead");
        assert_eq!(
            get(format!("/devices/dev-b{api}"), read_only.clone())
                .await
                .status,
            200
        );
        assert_eq!(
            get(format!("/twins/dev-b{api}"), read_only.clone())
                .await
                .status,
            401
        );
        let body = json!({"deviceId": "new"});
        let answer = client
            .send(
                "PUT",
                &format!("/devices/new{api}"),
                Some(&read_only),
                Some(&body),
            )
            .await;
        assert_eq!(answer.status, 401, "{answer:?}");
        let device_policy = token(&host, &key("device"), "device");
        assert_eq!(
            get(format!("/devices/dev-b{api}"), device_policy)
                .await
                .status,
            401
        );
        let writer = token(&host, &key("registryReadWrite"), "registryReadWrite");
        let answer = client
            .send(
                "PUT",
                &format!("/devices/new{api}"),
                Some(&writer),
                Some(&body),
            )
            .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        // A policy's key does not sign for another policy.
        let forged = token(&host, &key("service"), "iothubowner");
        assert_eq!(
            get(format!("/devices/dev-b{api}"), forged).await.status,
            401
        );

        // Nothing refused changed anything.
        for id in ["dev-a", "dev-ab", "dev-b", "new"] {
            assert!(emulator.cloud().hub_device(&host, id).is_some(), "{id}");
        }

        // ARM lists the five policies, each with its own keys.
        let arm = format!(
            "{}/IotHubs/hub",
            arm_base(DEFAULT_SUBSCRIPTION_ID, DEFAULT_RESOURCE_GROUP)
        );
        let bearer = "Bearer anything";
        let management = Client::new(&emulator, "127.0.0.1");
        let listed = management
            .send(
                "POST",
                &format!("{arm}/listkeys?api-version=2023-06-30"),
                Some(bearer),
                None,
            )
            .await;
        assert_eq!(listed.status, 200, "{listed:?}");
        let policies: Vec<(String, String)> = listed.body["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["keyName"].as_str().unwrap().into(),
                    p["rights"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            policies,
            [
                (
                    "iothubowner",
                    "RegistryWrite, ServiceConnect, DeviceConnect"
                ),
                ("service", "ServiceConnect"),
                ("device", "DeviceConnect"),
                ("registryRead", "RegistryRead"),
                ("registryReadWrite", "RegistryWrite"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let mut keys: Vec<&str> = listed.body["value"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| {
                [
                    p["primaryKey"].as_str().unwrap(),
                    p["secondaryKey"].as_str().unwrap(),
                ]
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), 10);
        let one = management
            .send(
                "POST",
                &format!("{arm}/IotHubKeys/registryRead/listkeys?api-version=2023-06-30"),
                Some(bearer),
                None,
            )
            .await;
        assert_eq!(one.body["primaryKey"], key("registryRead"));
    });
}

#[test]
fn hubs_of_an_older_data_folder_get_the_default_policies() {
    let folder = tempfile::tempdir().unwrap();
    let config = || EmulatorConfig {
        data_dir: Some(folder.path().to_path_buf()),
        ..EmulatorConfig::default()
    };
    let mut emulator = start(config());
    let hub = emulator.create_hub("hub", "westeurope", None).unwrap();
    emulator.stop();
    drop(emulator);
    // Rewrite the hub as a build without policies stored it.
    {
        let store = crate::emulator::store::Store::open(folder.path()).unwrap();
        let mut old = hub.clone();
        old.policies.clear();
        store
            .put(crate::emulator::store::kind::HUB, "hub", &old)
            .unwrap();
    }
    let emulator = start(config());
    let reopened = emulator.cloud().hub("hub").unwrap();
    assert_eq!(reopened.policies.len(), 5);
    assert_eq!(
        reopened.policy("iothubowner").unwrap().primary_key,
        hub.primary_key
    );
    // Kept, not regenerated on every start.
    let service_key = reopened.policy("service").unwrap().primary_key.clone();
    drop(emulator);
    let emulator = start(config());
    assert_eq!(
        emulator
            .cloud()
            .hub("hub")
            .unwrap()
            .policy("service")
            .unwrap()
            .primary_key,
        service_key
    );
}

#[test]
fn each_api_is_served_only_where_azure_serves_it() {
    let emulator = start(EmulatorConfig::default());
    let hub = emulator.create_hub("hub", "westeurope", None).unwrap();
    let dps = emulator.cloud().create_dps("dps", "westeurope").unwrap();
    let management = Client::new(&emulator, "127.0.0.1");
    let hub_door = Client::resource(&emulator, &hub.host_name);
    let dps_door = Client::resource(&emulator, "127.0.0.1");
    let service_host = format!("127.0.0.1:{}", emulator.web_port());
    let hub_owner = token(&hub.host_name, &hub.primary_key, "iothubowner");
    let dps_owner = token(&service_host, &dps.primary_key, "provisioningserviceowner");
    let base = arm_base(DEFAULT_SUBSCRIPTION_ID, DEFAULT_RESOURCE_GROUP);
    let dps_resource = format!("{base}/provisioningServices/dps?api-version=2022-02-05");
    let statistics = "/statistics/devices?api-version=2021-04-12";
    let query = "/enrollments/query?api-version=2021-10-01";
    runtime().block_on(async {
        // Each API at its own door.
        let answer = management
            .send("GET", &dps_resource, Some("Bearer t"), None)
            .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(
            answer.body["properties"]["serviceOperationsHostName"],
            service_host.as_str()
        );
        let answer = hub_door
            .send("GET", statistics, Some(&hub_owner), None)
            .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let all = json!({"query": "*"});
        let answer = dps_door
            .send("POST", query, Some(&dps_owner), Some(&all))
            .await;
        assert_eq!(answer.status, 200, "{answer:?}");

        // The service APIs are not on the management port, with valid tokens or not; the
        // answer says where they are.
        let answer = management
            .send("GET", statistics, Some(&hub_owner), None)
            .await;
        assert_eq!(answer.status, 404, "{answer:?}");
        let message = answer.body["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("https://{service_host}")),
            "{message}"
        );
        let answer = management
            .send("POST", query, Some(&dps_owner), Some(&all))
            .await;
        assert_eq!(answer.status, 404, "{answer:?}");
        // ARM is not on a resource's address.
        for door in [&hub_door, &dps_door] {
            let answer = door
                .send("GET", &dps_resource, Some("Bearer t"), None)
                .await;
            assert_eq!(answer.status, 404, "{answer:?}");
        }
    });
}

#[test]
fn dps_tokens_must_name_the_service_host_and_cover_the_resource() {
    let emulator = start(EmulatorConfig::default());
    let dps = emulator.cloud().create_dps("dps", "westeurope").unwrap();
    let authority = format!("127.0.0.1:{}", emulator.web_port());
    let client = Client::resource(&emulator, "127.0.0.1");
    let api = "?api-version=2021-10-01";
    let owner = |sr: &str| token(sr, &dps.primary_key, "provisioningserviceowner");
    let management = format!("127.0.0.1:{}", emulator.https_port());
    let body = json!({"registrationId": "a", "attestation": {"type": "symmetricKey"}});
    runtime().block_on(async {
        let good = owner(&authority);
        let answer = client
            .send(
                "PUT",
                &format!("/enrollments/a{api}"),
                Some(&good),
                Some(&body),
            )
            .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        // The management port is not the service host; neither is another port of it.
        for sr in [
            "other.azure-devices-provisioning.net",
            "127.0.0.1:1",
            &management,
        ] {
            let answer = client
                .send(
                    "GET",
                    &format!("/enrollments/a{api}"),
                    Some(&owner(sr)),
                    None,
                )
                .await;
            assert_eq!(answer.status, 401, "{sr}: {answer:?}");
            assert_eq!(answer.body["errorCode"], 401_002);
            assert!(answer.head.contains("x-ms-error-code: 401002"));
        }
        let scoped = owner(&format!("{authority}/enrollments/b"));
        let answer = client
            .send(
                "DELETE",
                &format!("/enrollments/a{api}"),
                Some(&scoped),
                None,
            )
            .await;
        assert_eq!(answer.status, 401, "{answer:?}");
        let answer = client
            .send(
                "GET",
                &format!("/enrollments/a{api}"),
                Some(&owner(&format!("{authority}/enrollments/a"))),
                None,
            )
            .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let wrong_policy = token(&authority, &dps.primary_key, "iothubowner");
        let answer = client
            .send(
                "DELETE",
                &format!("/enrollments/a{api}"),
                Some(&wrong_policy),
                None,
            )
            .await;
        assert_eq!(answer.status, 401, "{answer:?}");
        assert!(emulator.cloud().enrollment("dps", "a").is_ok());
    });
}

#[test]
fn arm_answers_only_for_its_own_subscription_and_resource_group() {
    let emulator = start(EmulatorConfig::default());
    emulator.create_hub("hub", "westeurope", None).unwrap();
    let client = Client::new(&emulator, "127.0.0.1");
    let bearer = "Bearer anything";
    runtime().block_on(async {
        let get = |base: String| {
            let client = &client;
            async move {
                client
                    .send(
                        "GET",
                        &format!("{base}/IotHubs/hub?api-version=2023-06-30"),
                        Some(bearer),
                        None,
                    )
                    .await
            }
        };
        let own = get(arm_base(DEFAULT_SUBSCRIPTION_ID, DEFAULT_RESOURCE_GROUP)).await;
        assert_eq!(own.status, 200, "{own:?}");
        // Subscription ids and group names are case-insensitive on Azure.
        let own = get(arm_base(
            DEFAULT_SUBSCRIPTION_ID,
            &DEFAULT_RESOURCE_GROUP.to_ascii_uppercase(),
        ))
        .await;
        assert_eq!(own.status, 200, "{own:?}");
        let other = get(arm_base(
            "11111111-1111-1111-1111-111111111111",
            DEFAULT_RESOURCE_GROUP,
        ))
        .await;
        assert_eq!(other.status, 404, "{other:?}");
        assert_eq!(other.body["error"]["code"], "SubscriptionNotFound");
        let other = get(arm_base(DEFAULT_SUBSCRIPTION_ID, "someone-elses")).await;
        assert_eq!(other.status, 404, "{other:?}");
        assert_eq!(other.body["error"]["code"], "ResourceGroupNotFound");
        // A hub cannot be created elsewhere either.
        let put = client
            .send(
                "PUT",
                &format!(
                    "{}/IotHubs/intruder?api-version=2023-06-30",
                    arm_base("s", "r")
                ),
                Some(bearer),
                Some(&json!({"location": "westeurope"})),
            )
            .await;
        assert_eq!(put.status, 404, "{put:?}");
        assert!(emulator.cloud().hub("intruder").is_err());
    });
}

#[test]
fn arm_off_loopback_requires_the_generated_or_configured_token() {
    // Bound to every address; the test still only talks over loopback.
    let config = || EmulatorConfig {
        host: "0.0.0.0".into(),
        ..EmulatorConfig::default()
    };
    let path = format!(
        "{}/IotHubs?api-version=2023-06-30",
        arm_base(DEFAULT_SUBSCRIPTION_ID, DEFAULT_RESOURCE_GROUP)
    );
    let emulator = start(config());
    let generated = emulator
        .arm_token()
        .expect("a token is generated off loopback")
        .to_string();
    let client = Client::new(&emulator, "0.0.0.0");
    runtime().block_on(async {
        for wrong in ["Bearer anything", "Bearer dpskit-local", "Basic x"] {
            let answer = client.send("GET", &path, Some(wrong), None).await;
            assert_eq!(answer.status, 401, "{wrong}: {answer:?}");
        }
        let answer = client.send("GET", &path, None, None).await;
        assert_eq!(answer.status, 401);
        let answer = client
            .send("GET", &path, Some(&format!("Bearer {generated}")), None)
            .await;
        assert_eq!(answer.status, 200, "{answer:?}");
    });
    drop(emulator);
    let emulator = start(EmulatorConfig {
        arm_tokens: Some(vec!["team-token".into()]),
        ..config()
    });
    assert_eq!(emulator.arm_token(), Some("team-token"));
    let client = Client::new(&emulator, "0.0.0.0");
    runtime().block_on(async {
        let answer = client
            .send("GET", &path, Some(&format!("Bearer {generated}")), None)
            .await;
        assert_eq!(answer.status, 401);
        let answer = client
            .send("GET", &path, Some("Bearer team-token"), None)
            .await;
        assert_eq!(answer.status, 200, "{answer:?}");
    });
    // On loopback without tokens ARM stays open to any bearer token, as before.
    assert_eq!(start(EmulatorConfig::default()).arm_token(), None);
}

#[test]
fn stalled_unauthenticated_uploads_are_refused_unread_and_cannot_starve_the_listener() {
    let emulator = start(EmulatorConfig {
        rest_limits: RestLimits {
            max_connections: 64,
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
        },
        ..EmulatorConfig::default()
    });
    let hub = emulator.create_hub("hub", "westeurope", None).unwrap();
    let owner = token(&hub.host_name, &hub.primary_key, "iothubowner");
    let client = Client::new(&emulator, "127.0.0.1");
    let service = Client::resource(&emulator, &hub.host_name);
    let arm = format!(
        "{}/IotHubs/big?api-version=2023-06-30",
        arm_base(DEFAULT_SUBSCRIPTION_ID, DEFAULT_RESOURCE_GROUP)
    );
    runtime().block_on(async {
        // 60 uploads announcing a gigabyte each, never sending it, without valid credentials:
        // each is answered 401 and closed although its body never comes.
        let mut stalled = Vec::new();
        for i in 0..60 {
            // Both listeners share one connection cap.
            let mut stream = if i % 3 == 2 { client.connect().await } else { service.connect().await };
            let (path, auth) = match i % 3 {
                0 => ("/devices/x?api-version=2021-04-12".to_string(), "SharedAccessSignature sr=a&sig=b&se=99999999999&skn=iothubowner".to_string()),
                1 => ("/enrollments/x?api-version=2021-10-01".to_string(), "SharedAccessSignature sr=a&sig=b&se=99999999999&skn=provisioningserviceowner".to_string()),
                _ => (arm.clone(), "Basic nobody".to_string()),
            };
            let head = format!(
                "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nContent-Length: 1000000000\r\n\r\n{{"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.flush().await.unwrap();
            stalled.push(stream);
        }
        for (i, stream) in stalled.iter_mut().enumerate() {
            if i % 2 == 1 {
                continue;
            }
            let answer = read_answer(stream).await.unwrap_or_else(|| panic!("upload {i}: no answer"));
            assert_eq!(answer.status, 401, "upload {i}: {answer:?}");
            assert!(answer.head.contains("connection: close"));
        }
        // The others trickle some of their body: the server never reads it and hangs up (the
        // unread bytes may turn its close into a reset that swallows the 401).
        for (i, stream) in stalled.iter_mut().enumerate().filter(|(i, _)| i % 2 == 1) {
            for _ in 0..4 {
                if stream.write_all(&[b' '; 16 * 1024]).await.is_err() || stream.flush().await.is_err() {
                    break;
                }
            }
            if let Some(answer) = read_answer(stream).await {
                assert_eq!(answer.status, 401, "upload {i}: {answer:?}");
            }
        }
        // A legitimate request is served meanwhile.
        let answer = service
            .send("GET", "/devices/none?api-version=2021-04-12", Some(&owner), None)
            .await;
        assert_eq!(answer.status, 404, "{answer:?}");
        assert_eq!(answer.body["errorCode"], 404_001, "{answer:?}");

        // With credentials, a body that never completes is cut at the body deadline.
        let mut slow = service.connect().await;
        let head = format!(
            "PUT /devices/slow?api-version=2021-04-12 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {owner}\r\nContent-Length: 1000\r\n\r\n{{"
        );
        slow.write_all(head.as_bytes()).await.unwrap();
        slow.flush().await.unwrap();
        let answer = read_answer(&mut slow).await.expect("the deadline is answered");
        assert_eq!(answer.status, 408, "{answer:?}");
        assert!(emulator.cloud().hub_device(&hub.host_name, "slow").is_none());

        // Headers that never end are cut at the header deadline (the server closes).
        let mut idle = client.connect().await;
        idle.write_all(b"GET /devices/x HTTP/1.1\r\nHost: 127").await.unwrap();
        idle.flush().await.unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(HANG_GUARD, idle.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a connection stalled in its headers was kept open");
    });
}

#[test]
fn connections_past_the_cap_wait_for_a_slot_and_are_then_served() {
    let emulator = start(EmulatorConfig {
        rest_limits: RestLimits {
            max_connections: 2,
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
        },
        ..EmulatorConfig::default()
    });
    let client = Client::new(&emulator, "127.0.0.1");
    runtime().block_on(async {
        // Two connections hold both slots without ever finishing their headers.
        let mut holders = Vec::new();
        for _ in 0..2 {
            let mut stream = client.connect().await;
            stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            stream.flush().await.unwrap();
            holders.push(stream);
        }
        // The third waits in the backlog (its TLS handshake completes once a slot frees, when
        // the header deadline closes a holder) and is then answered.
        let answer = client.send("GET", "/nothing-here", None, None).await;
        assert_eq!(answer.status, 404, "{answer:?}");
        for mut holder in holders {
            let mut rest = Vec::new();
            let closed = tokio::time::timeout(HANG_GUARD, holder.read_to_end(&mut rest)).await;
            assert!(closed.is_ok());
        }
    });
}

#[test]
fn device_and_registration_ids_follow_iot_hub_and_dps_rules() {
    let emulator = start(EmulatorConfig::default());
    let hub = emulator.create_hub("hub", "westeurope", None).unwrap();
    let dps = emulator.cloud().create_dps("dps", "westeurope").unwrap();
    emulator
        .cloud()
        .link_hub("dps", "hub", 1, true, None)
        .unwrap();
    let client = Client::resource(&emulator, "127.0.0.1");
    let owner = token(&hub.host_name, &hub.primary_key, "iothubowner");
    let authority = format!("127.0.0.1:{}", emulator.web_port());
    let dps_owner = token(&authority, &dps.primary_key, "provisioningserviceowner");
    let long = "a".repeat(129);
    runtime().block_on(async {
        for bad in ["a%2Fb", "a%20b", "caf%C3%A9", long.as_str(), "a%3Cb%3E"] {
            let path = format!("/devices/{bad}?api-version=2021-04-12");
            let answer = client.send("PUT", &path, Some(&owner), Some(&json!({}))).await;
            assert_eq!(answer.status, 400, "{bad}: {answer:?}");
            assert_eq!(answer.body["errorCode"], 400_004, "{bad}");
            assert!(answer.body["Message"].as_str().unwrap().contains("invalid device id"));
        }
        // IoT Hub's wider alphabet is accepted as is.
        let fine = "a-b:c.d+e%f_g#h*i?j!k(l)m,n=o@p$q'r";
        let path = format!("/devices/{}?api-version=2021-04-12", crate::sas::url_encode(fine));
        let answer = client.send("PUT", &path, Some(&owner), Some(&json!({}))).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let path = format!("/devices/{}?api-version=2021-04-12", "a".repeat(128));
        assert_eq!(client.send("PUT", &path, Some(&owner), Some(&json!({}))).await.status, 200);

        for bad_device in ["a/b", "a b", "caf\u{e9}", long.as_str()] {
            let body = json!({"registrationId": "solo", "deviceId": bad_device, "attestation": {"type": "symmetricKey"}});
            let answer = client
                .send("PUT", "/enrollments/solo?api-version=2021-10-01", Some(&dps_owner), Some(&body))
                .await;
            assert_eq!(answer.status, 400, "{bad_device}: {answer:?}");
            assert!(answer.head.contains("x-ms-error-code: 400004"));
        }
        for bad_registration in ["a%20b", "a%2Fb", "caf%C3%A9", long.as_str()] {
            let body = json!({"attestation": {"type": "symmetricKey"}});
            let path = format!("/enrollments/{bad_registration}?api-version=2021-10-01");
            let answer = client.send("PUT", &path, Some(&dps_owner), Some(&body)).await;
            assert_eq!(answer.status, 400, "{bad_registration}: {answer:?}");
        }
        let bulk = json!({"mode": "create", "enrollments": [
            {"registrationId": "ok-1", "deviceId": "a b", "attestation": {"type": "symmetricKey"}}
        ]});
        let answer = client
            .send("POST", "/enrollments?api-version=2021-10-01", Some(&dps_owner), Some(&bulk))
            .await;
        assert_eq!(answer.body["isSuccessful"], false, "{answer:?}");
    });
    assert!(emulator.cloud().enrollments("dps").is_empty());
    assert_eq!(emulator.cloud().hub_devices(&hub.host_name).len(), 2);
}

/// Every record of the emulator, to tell whether a request changed anything.
fn snapshot(emulator: &Emulator) -> String {
    let model = emulator.cloud().read();
    serde_json::to_string(&(
        &model.hubs,
        model.dps.values().collect::<Vec<_>>(),
        model.groups.values().collect::<Vec<_>>(),
        model.enrollments.values().collect::<Vec<_>>(),
        model.registrations.values().collect::<Vec<_>>(),
        model.devices.values().collect::<Vec<_>>(),
    ))
    .unwrap()
}

/// xorshift64*: seeded, so every run replays the same cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Mutates one request: bytes flipped, inserted, deleted or truncated, headers duplicated or
/// replaced, lengths lying, tokens and query strings corrupted.
fn mutate(rng: &mut Rng, request: &[u8]) -> Vec<u8> {
    const NASTY: &[&[u8]] = &[
        b"%",
        b"%zz",
        b"%00",
        b"/",
        b"//",
        b"..",
        b"\r\n",
        b"\n",
        b"\0",
        b"\xff\xfe",
        b"{",
        b"}",
        b"[",
        b"\"",
        b"&",
        b"=",
        b"?",
        b"#",
        b"+",
        b" ",
        b"\xc3\xa9",
        b"null",
        b"1e999",
        b"Content-Length: 5\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"skn=",
        b"sr=",
        b"se=-1",
        b"api-version=",
        b"\r\nAuthorization: Bearer x",
        b"{\"properties\":{\"desired\":{\"a\":",
    ];
    let mut out = request.to_vec();
    for _ in 0..=rng.below(3) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let piece = NASTY[rng.below(NASTY.len())];
                out.splice(at..at, piece.iter().copied());
            }
            2 if !out.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            3 => out.truncate(at),
            4 => {
                let copy: Vec<u8> = out[at..].iter().take(1 + rng.below(64)).copied().collect();
                out.splice(at..at, copy);
            }
            _ => {
                let piece = NASTY[rng.below(NASTY.len())].repeat(1 + rng.below(300));
                out.splice(at..at, piece);
            }
        }
    }
    out
}

#[test]
fn rest_fuzz_2000_mutated_and_400_sas_scope_cases_never_panic_hang_or_change_state_when_refused() {
    const CASES: usize = 2000;
    const SAS_CASES: usize = 400;
    // Panics on the emulator's threads would only show as dropped connections: count them.
    let panics_before = crate::fuzz::watch_emulator_panics();
    let emulator = start(EmulatorConfig {
        rest_limits: RestLimits {
            body_timeout: Duration::from_secs(1),
            header_timeout: Duration::from_secs(1),
            ..RestLimits::default()
        },
        ..EmulatorConfig::default()
    });
    let hub = emulator.create_hub("hub", "westeurope", None).unwrap();
    let dps = emulator.cloud().create_dps("dps", "westeurope").unwrap();
    emulator
        .cloud()
        .link_hub("dps", "hub", 1, true, None)
        .unwrap();
    emulator
        .cloud()
        .put_hub_device(sas_device("dev-1", &hub.host_name))
        .unwrap();
    let authority = format!("127.0.0.1:{}", emulator.web_port());
    let hub_token = fixed_length_token(&hub.host_name, &hub.primary_key, "iothubowner");
    let dps_token = fixed_length_token(&authority, &dps.primary_key, "provisioningserviceowner");
    let arm = arm_base(DEFAULT_SUBSCRIPTION_ID, DEFAULT_RESOURCE_GROUP);
    let request = |method: &str, path: &str, auth: &str, body: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nIf-Match: *\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let seeds = [
        request(
            "PUT",
            "/devices/dev-2?api-version=2021-04-12",
            &hub_token,
            r#"{"deviceId":"dev-2","authentication":{"type":"sas","symmetricKey":{"primaryKey":null}}}"#,
        ),
        request(
            "GET",
            "/devices/dev-1?api-version=2021-04-12",
            &hub_token,
            "",
        ),
        request(
            "DELETE",
            "/devices/dev-1?api-version=2021-04-12",
            &hub_token,
            "",
        ),
        request(
            "PATCH",
            "/twins/dev-1?api-version=2021-04-12",
            &hub_token,
            r#"{"tags":{"a":1},"properties":{"desired":{"b":{"c":[1,2]}}}}"#,
        ),
        request(
            "POST",
            "/devices/query?api-version=2021-04-12",
            &hub_token,
            r#"{"query":"SELECT * FROM devices"}"#,
        ),
        request(
            "GET",
            "/dpskit/telemetry?deviceId=dev-1&api-version=2021-04-12",
            &hub_token,
            "",
        ),
        request(
            "PUT",
            "/enrollments/solo?api-version=2021-10-01",
            &dps_token,
            r#"{"registrationId":"solo","deviceId":"d","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":null,"secondaryKey":null}},"allocationPolicy":"hashed","initialTwin":{"tags":{}}}"#,
        ),
        request(
            "PUT",
            "/enrollmentGroups/g?api-version=2021-10-01",
            &dps_token,
            r#"{"enrollmentGroupId":"g","attestation":{"type":"symmetricKey"},"reprovisionPolicy":{"updateHubAssignment":true}}"#,
        ),
        request(
            "POST",
            "/enrollments?api-version=2021-10-01",
            &dps_token,
            r#"{"mode":"create","enrollments":[{"registrationId":"b1","attestation":{"type":"symmetricKey"}}]}"#,
        ),
        request(
            "POST",
            "/enrollments/query?api-version=2021-10-01",
            &dps_token,
            r#"{"query":"*"}"#,
        ),
        request(
            "PUT",
            &format!("{arm}/IotHubs/hub2?api-version=2023-06-30"),
            "Bearer t",
            r#"{"location":"westeurope"}"#,
        ),
        request(
            "PUT",
            &format!("{arm}/provisioningServices/dps?api-version=2022-02-05"),
            "Bearer t",
            r#"{"location":"westeurope","properties":{"iotHubs":[]}}"#,
        ),
        request(
            "POST",
            &format!("{arm}/IotHubs/hub/listkeys?api-version=2023-06-30"),
            "Bearer t",
            "",
        ),
        request(
            "PUT",
            &format!("{arm}/provisioningServices/dps/certificates/c?api-version=2022-02-05"),
            "Bearer t",
            r#"{"properties":{"certificate":"MIIB","isVerified":true}}"#,
        ),
    ];
    let management = Client::new(&emulator, "127.0.0.1");
    let client = Client::resource(&emulator, &hub.host_name);
    let mut rng = Rng(0x5EED_0FD9_5C17);
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    runtime().block_on(async {
        for case in 0..CASES {
            let seed = &seeds[rng.below(seeds.len())];
            let mutated = mutate(&mut rng, seed);
            let before = snapshot(&emulator);
            // Each seed at its API's door, so mutations probe what lies past the door check.
            let door = if seed.windows(15).any(|w| w == b"/subscriptions/") {
                &management
            } else {
                &client
            };
            let answer = door.raw(&mutated).await;
            let label = answer
                .as_ref()
                .map_or("closed".to_string(), |a| a.status.to_string());
            *statuses.entry(label).or_default() += 1;
            let refused = answer.as_ref().is_none_or(|a| a.status >= 400);
            if refused {
                assert_eq!(
                    before,
                    snapshot(&emulator),
                    "case {case} was refused ({answer:?}) yet changed the state:\n{}",
                    String::from_utf8_lossy(&mutated)
                );
            }
            assert_eq!(
                crate::fuzz::watch_emulator_panics() - panics_before,
                0,
                "case {case} panicked the emulator:\n{}",
                String::from_utf8_lossy(&mutated)
            );
        }
        // Structured: SAS tokens over a grid of scopes, policies and keys, against an oracle
        // written out by hand (ops an sr covers, ops a policy's rights allow).
        let ops: [(&str, &str, &str); 5] = [
            ("GET", "/devices/dev-1", ""),
            ("PUT", "/devices/dev-1", "{}"),
            ("GET", "/twins/dev-1", ""),
            ("PATCH", "/twins/dev-1", r#"{"tags":{"k":1}}"#),
            (
                "POST",
                "/devices/query",
                r#"{"query":"SELECT * FROM devices"}"#,
            ),
        ];
        let host = hub.host_name.as_str();
        let upper = host.to_ascii_uppercase();
        let scopes: Vec<(String, &[usize])> = vec![
            (host.to_string(), &[0, 1, 2, 3, 4]),
            (format!("{upper}/"), &[0, 1, 2, 3, 4]),
            (format!("{host}/devices"), &[0, 1, 4]),
            (format!("{host}/devices/dev-1"), &[0, 1]),
            (format!("{host}/DEVICES/dev-1/"), &[0, 1]),
            (format!("{host}/devices/dev-10"), &[]),
            (format!("{host}/devices/dev"), &[]),
            (format!("{host}/devices/dev-1/more"), &[]),
            (format!("{host}/twins"), &[2, 3]),
            (format!("{host}/twins/dev-1"), &[2, 3]),
            (format!("{host}x"), &[]),
            (format!("x{host}"), &[]),
            ("127.0.0.99".to_string(), &[]),
        ];
        let rights: [(&str, &[usize]); 5] = [
            ("iothubowner", &[0, 1, 2, 3, 4]),
            ("service", &[2, 3]),
            ("device", &[]),
            ("registryRead", &[0, 4]),
            ("registryReadWrite", &[0, 1, 4]),
        ];
        let policies = emulator.cloud().hub("hub").unwrap().policies;
        for case in 0..SAS_CASES {
            let op = rng.below(ops.len());
            let (sr, covered) = &scopes[rng.below(scopes.len())];
            let (skn, allowed) = rights[rng.below(rights.len())];
            let signer = &policies[rng.below(policies.len())];
            let key = if rng.below(2) == 0 {
                &signer.primary_key
            } else {
                &signer.secondary_key
            };
            let expected = signer.key_name == skn && covered.contains(&op) && allowed.contains(&op);
            let (method, path, body) = ops[op];
            let auth = token(sr, key, skn);
            let answer = client
                .raw(&request(
                    method,
                    &format!("{path}?api-version=2021-04-12"),
                    &auth,
                    body,
                ))
                .await
                .unwrap_or_else(|| panic!("SAS case {case}: closed without an answer"));
            assert_eq!(
                answer.status != 401,
                expected,
                "SAS case {case}: {method} {path} with sr={sr} skn={skn} key of {}: {answer:?}",
                signer.key_name
            );
        }
        // Still serving.
        let answer = client
            .send(
                "GET",
                "/devices/none?api-version=2021-04-12",
                Some(&hub_token),
                None,
            )
            .await;
        assert_eq!(answer.status, 404);
    });
    println!(
        "rest fuzz: {CASES} mutated cases (answers by status: {statuses:?}) and {SAS_CASES} SAS scope cases"
    );
}

// ---- Azure's rules: names, api-versions, required attestation, method timeouts ------------

#[test]
fn arm_refuses_hub_and_dps_names_azure_refuses_with_its_400() {
    let emulator = start(EmulatorConfig::default());
    let client = Client::new(&emulator, "127.0.0.1");
    let base = arm_base(DEFAULT_SUBSCRIPTION_ID, DEFAULT_RESOURCE_GROUP);
    let bearer = Some("Bearer anything");
    let body = json!({"location": "westeurope"});
    let longest_hub = "h".repeat(50);
    let longest_dps = "d".repeat(64);
    runtime().block_on(async {
        let put = |kind: &'static str, name: String, version: &'static str| {
            let (client, base, body) = (&client, &base, &body);
            async move {
                client
                    .send(
                        "PUT",
                        &format!("{base}/{kind}/{name}?api-version={version}"),
                        bearer,
                        Some(body),
                    )
                    .await
            }
        };
        for name in ["hub_one", "hub.one", "hb", "hub-", &"h".repeat(51)] {
            let answer = put("IotHubs", name.to_string(), "2023-06-30").await;
            assert_eq!(answer.status, 400, "{name}: {answer:?}");
            assert_eq!(answer.body["code"], "InvalidResourceName", "{answer:?}");
            assert!(emulator.cloud().hub(name).is_err(), "{name}");
        }
        for name in ["dps_one", "dps.one", "dp", "dps-", &"d".repeat(65)] {
            let answer = put("provisioningServices", name.to_string(), "2022-02-05").await;
            assert_eq!(answer.status, 400, "{name}: {answer:?}");
            assert_eq!(answer.body["code"], "InvalidResourceName", "{answer:?}");
            assert!(emulator.cloud().dps(name).is_err(), "{name}");
        }
        // The limits themselves, and a leading hyphen, are Azure-valid.
        for name in [longest_hub.as_str(), "-hub", "Hub-7"] {
            let answer = put("IotHubs", name.to_string(), "2023-06-30").await;
            assert_eq!(answer.status, 201, "{name}: {answer:?}");
        }
        let answer = put("provisioningServices", longest_dps.clone(), "2022-02-05").await;
        assert_eq!(answer.status, 201, "{answer:?}");
    });
    // The in-process API (LocalCloud's) applies the same rule.
    assert!(matches!(
        emulator.cloud().create_hub("a_b", "westeurope", None),
        Err(crate::Error::Config(_))
    ));
    assert!(matches!(
        emulator.cloud().create_dps("a.b", "westeurope"),
        Err(crate::Error::Config(_))
    ));
}

#[test]
fn enrollment_puts_without_attestation_get_azures_400() {
    let emulator = start(EmulatorConfig::default());
    let dps = emulator.cloud().create_dps("dps", "westeurope").unwrap();
    let authority = format!("127.0.0.1:{}", emulator.web_port());
    let owner = token(&authority, &dps.primary_key, "provisioningserviceowner");
    let client = Client::resource(&emulator, "127.0.0.1");
    let api = "?api-version=2021-10-01";
    runtime().block_on(async {
        let put = |path: String, body: Value| {
            let (client, owner) = (&client, &owner);
            async move { client.send("PUT", &path, Some(owner), Some(&body)).await }
        };
        let group = put(
            format!("/enrollmentGroups/g{api}"),
            json!({"enrollmentGroupId": "g", "attestation": {"type": "symmetricKey"}}),
        )
        .await;
        assert_eq!(group.status, 200, "{group:?}");
        let individual = put(
            format!("/enrollments/e{api}"),
            json!({"registrationId": "e", "attestation": {"type": "symmetricKey"}}),
        )
        .await;
        assert_eq!(individual.status, 200, "{individual:?}");
        let before = (
            emulator.cloud().enrollment_group("dps", "g").unwrap(),
            emulator.cloud().enrollment("dps", "e").unwrap(),
        );
        // An update without attestation, as dpskit used to send one; and a null attestation.
        for attestation in [None, Some(Value::Null)] {
            let mut body = json!({"enrollmentGroupId": "g", "provisioningStatus": "disabled"});
            if let Some(a) = &attestation {
                body["attestation"] = a.clone();
            }
            let answer = put(format!("/enrollmentGroups/g{api}"), body).await;
            assert_eq!(answer.status, 400, "{answer:?}");
            assert_eq!(answer.body["errorCode"], 400_004, "{answer:?}");
            assert!(answer.body["trackingId"].is_string(), "{answer:?}");
            assert!(answer.body["timestampUtc"].is_string(), "{answer:?}");
            assert!(
                answer.body["message"]
                    .as_str()
                    .unwrap()
                    .contains("attestation"),
                "{answer:?}"
            );
            assert!(
                answer.head.contains("x-ms-error-code: 400004"),
                "{answer:?}"
            );
            let mut body = json!({"registrationId": "e", "provisioningStatus": "disabled"});
            if let Some(a) = &attestation {
                body["attestation"] = a.clone();
            }
            let answer = put(format!("/enrollments/e{api}"), body).await;
            assert_eq!(answer.status, 400, "{answer:?}");
            assert_eq!(answer.body["errorCode"], 400_004, "{answer:?}");
        }
        // Nothing changed.
        assert_eq!(
            before,
            (
                emulator.cloud().enrollment_group("dps", "g").unwrap(),
                emulator.cloud().enrollment("dps", "e").unwrap(),
            )
        );
        // A create without attestation is refused the same way, in a bulk operation too.
        let answer = put(
            format!("/enrollmentGroups/new{api}"),
            json!({"enrollmentGroupId": "new"}),
        )
        .await;
        assert_eq!(answer.status, 400, "{answer:?}");
        assert!(emulator.cloud().enrollment_group("dps", "new").is_err());
        let bulk = json!({"mode": "create", "enrollments": [{"registrationId": "bulk-1"}]});
        let answer = client
            .send(
                "POST",
                &format!("/enrollments{api}"),
                Some(&owner),
                Some(&bulk),
            )
            .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.body["isSuccessful"], false, "{answer:?}");
        assert_eq!(answer.body["errors"][0]["errorCode"], 400_004, "{answer:?}");
        assert!(emulator.cloud().enrollment("dps", "bulk-1").is_err());
    });
}

#[test]
fn method_response_timeouts_past_300_seconds_get_azures_400() {
    let emulator = start(EmulatorConfig::default());
    let hub = emulator.create_hub("hub", "westeurope", None).unwrap();
    emulator
        .cloud()
        .put_hub_device(sas_device("offline", &hub.host_name))
        .unwrap();
    let key = hub.policy("iothubowner").unwrap().primary_key.clone();
    let owner = token(&hub.host_name, &key, "iothubowner");
    let client = Client::resource(&emulator, &hub.host_name);
    runtime().block_on(async {
        let invoke = |timeout: Value| {
            let (client, owner) = (&client, &owner);
            async move {
                let body = json!({"methodName": "reboot", "responseTimeoutInSeconds": timeout});
                client
                    .send(
                        "POST",
                        "/twins/offline/methods?api-version=2021-04-12",
                        Some(owner),
                        Some(&body),
                    )
                    .await
            }
        };
        for timeout in [json!(301), json!(3600), json!(-1), json!("30")] {
            let answer = invoke(timeout.clone()).await;
            assert_eq!(answer.status, 400, "{timeout}: {answer:?}");
            assert_eq!(answer.body["errorCode"], 400_004, "{answer:?}");
            assert!(
                answer.head.contains("iothub-errorcode: 400004"),
                "{answer:?}"
            );
        }
        // 300 passes the check: the device is simply offline (404103).
        let answer = invoke(json!(300)).await;
        assert_eq!(answer.status, 404, "{answer:?}");
        assert_eq!(answer.body["errorCode"], 404_103, "{answer:?}");
    });
}

/// Device identities are written and deleted as IoT Hub does it with etags: a PUT without
/// `If-Match` only creates (409001 for an existing id, so a second writer cannot silently
/// replace a device's keys), a replace or delete naming a stale etag is 412001 and changes
/// nothing, and the current etag (quoted as the SDKs send it, or bare) or `*` goes through.
#[test]
fn device_identity_writes_and_deletes_follow_etags() {
    let emulator = start(EmulatorConfig::default());
    let hub = emulator.create_hub("hub", "westeurope", None).unwrap();
    let key = hub.policy("iothubowner").unwrap().primary_key.clone();
    let owner = token(&hub.host_name, &key, "iothubowner");
    let client = Client::resource(&emulator, &hub.host_name);
    let path = "/devices/victim?api-version=2021-04-12";
    runtime().block_on(async {
        let send = |method: &'static str, if_match: Option<String>, body: Option<Value>| {
            let (client, owner) = (&client, &owner);
            async move {
                let body = body.map(|b| b.to_string()).unwrap_or_default();
                let mut request = format!(
                    "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
                     Authorization: {owner}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n",
                    body.len()
                );
                if let Some(tag) = if_match {
                    request.push_str(&format!("If-Match: {tag}\r\n"));
                }
                request.push_str("\r\n");
                request.push_str(&body);
                client.raw(request.as_bytes()).await.unwrap()
            }
        };
        let identity = |primary: &str| {
            json!({"deviceId": "victim", "authentication": {"type": "sas",
                "symmetricKey": {"primaryKey": primary, "secondaryKey": primary}}})
        };
        let (first, second) = (
            crate::sas::generate_key().unwrap(),
            crate::sas::generate_key().unwrap(),
        );
        // Updating a device that does not exist: 404001, nothing created.
        let missing = send("PUT", Some("\"AAAA\"".into()), Some(identity(&first))).await;
        assert_eq!((missing.status, &missing.body["errorCode"]), (404, &json!(404_001)));
        let created = send("PUT", None, Some(identity(&first))).await;
        assert_eq!(created.status, 200, "{created:?}");
        let etag = created.body["etag"].as_str().unwrap().to_string();
        // A second create of the same id: 409001, the keys stay.
        let again = send("PUT", None, Some(identity(&second))).await;
        assert_eq!((again.status, &again.body["errorCode"]), (409, &json!(409_001)), "{again:?}");
        let stale = send("PUT", Some("\"c3RhbGU=\"".into()), Some(identity(&second))).await;
        assert_eq!((stale.status, &stale.body["errorCode"]), (412, &json!(412_001)), "{stale:?}");
        let device = emulator.cloud().hub_device(&hub.host_name, "victim").unwrap();
        assert!(
            matches!(&device.auth, crate::emulator::model::DeviceAuth::Sas { primary_key, .. } if *primary_key == first),
            "a refused write changed the identity"
        );
        // The current etag, quoted as azure-iot-hub sends it: replaced, with a new etag.
        let replaced = send("PUT", Some(format!("\"{etag}\"")), Some(identity(&second))).await;
        assert_eq!(replaced.status, 200, "{replaced:?}");
        assert_eq!(replaced.body["authentication"]["symmetricKey"]["primaryKey"], json!(second));
        let newer = replaced.body["etag"].as_str().unwrap().to_string();
        // Deleting with the old etag: 412001, still there; with the current one (bare): gone.
        assert_ne!(newer, etag, "a replace must change the etag");
        let old_delete = send("DELETE", Some(format!("\"{etag}\"")), None).await;
        assert_eq!(old_delete.status, 412, "{old_delete:?}");
        assert!(emulator.cloud().hub_device(&hub.host_name, "victim").is_some());
        let deleted = send("DELETE", Some(newer), None).await;
        assert_eq!(deleted.status, 204, "{deleted:?}");
        assert!(emulator.cloud().hub_device(&hub.host_name, "victim").is_none());
        // The wildcard: created and deleted whatever the etag.
        assert_eq!(send("PUT", Some("*".into()), Some(identity(&first))).await.status, 200);
        assert_eq!(send("DELETE", Some("\"*\"".into()), None).await.status, 204);
    });
}

/// A twin patch naming a stale etag is refused with 412001 and changes nothing; the current
/// etag (quoted, as azure-iot-hub sends it) goes through and the etag moves on.
#[test]
fn twin_patches_follow_etags() {
    let emulator = start(EmulatorConfig::default());
    let hub = emulator.create_hub("hub", "westeurope", None).unwrap();
    emulator
        .cloud()
        .put_hub_device(sas_device("twinned", &hub.host_name))
        .unwrap();
    let key = hub.policy("iothubowner").unwrap().primary_key.clone();
    let owner = token(&hub.host_name, &key, "iothubowner");
    let client = Client::resource(&emulator, &hub.host_name);
    runtime().block_on(async {
        let patch = |if_match: String, colour: &'static str| {
            let (client, owner) = (&client, &owner);
            async move {
                let body = json!({"properties": {"desired": {"colour": colour}}}).to_string();
                let request = format!(
                    "PATCH /twins/twinned?api-version=2021-04-12 HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                     Connection: close\r\nAuthorization: {owner}\r\nContent-Type: \
                     application/json\r\nIf-Match: {if_match}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                client.raw(request.as_bytes()).await.unwrap()
            }
        };
        let twin = client
            .send(
                "GET",
                "/twins/twinned?api-version=2021-04-12",
                Some(&owner),
                None,
            )
            .await;
        let etag = twin.body["etag"].as_str().unwrap().to_string();
        let first = patch(format!("\"{etag}\""), "red").await;
        assert_eq!(first.status, 200, "{first:?}");
        let newer = first.body["etag"].as_str().unwrap().to_string();
        assert_ne!(newer, etag);
        let stale = patch(format!("\"{etag}\""), "blue").await;
        assert_eq!(
            (stale.status, &stale.body["errorCode"]),
            (412, &json!(412_001)),
            "{stale:?}"
        );
        let now = emulator
            .hubs()
            .service_twin(&hub.host_name, "twinned")
            .unwrap();
        assert_eq!(now["properties"]["desired"]["colour"], "red");
        assert_eq!(patch("*".into(), "green").await.status, 200);
    });
}

/// The registry as the official service SDK reads it, over raw HTTPS: status and its reason
/// kept on update (with the generation), the identity list and statistics, and a query whose
/// `WHERE` selects, paged one twin at a time by `x-ms-max-item-count` and `x-ms-continuation`;
/// a query it does not understand is 400004, never run without its clause.
#[test]
fn registry_status_lists_statistics_and_queries_with_where_and_paging() {
    let emulator = start(EmulatorConfig::default());
    let hub = emulator.create_hub("hub", "westeurope", None).unwrap();
    let key = hub.policy("iothubowner").unwrap().primary_key.clone();
    let owner = token(&hub.host_name, &key, "iothubowner");
    let client = Client::resource(&emulator, &hub.host_name);
    runtime().block_on(async {
        let request = |method: &'static str, path: String, headers: Vec<String>, body: Value| {
            let (client, owner) = (&client, &owner);
            async move {
                let body = body.to_string();
                let mut request = format!(
                    "{method} {path}?api-version=2021-04-12 HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                     Connection: close\r\nAuthorization: {owner}\r\nContent-Type: \
                     application/json\r\nContent-Length: {}\r\n",
                    body.len()
                );
                for header in headers {
                    request.push_str(&format!("{header}\r\n"));
                }
                request.push_str("\r\n");
                request.push_str(&body);
                client.raw(request.as_bytes()).await.unwrap()
            }
        };
        for (id, site) in [("d-1", "lab"), ("d-2", "plant"), ("d-3", "lab"), ("d-4", "lab")] {
            let body = json!({"deviceId": id, "status": "enabled",
                "authentication": {"type": "selfSigned",
                    "x509Thumbprint": {"primaryThumbprint": "AB".repeat(20)}}});
            let created = request("PUT", format!("/devices/{id}"), vec![], body).await;
            assert_eq!(created.status, 200, "{created:?}");
            let patch = json!({"tags": {"site": site}});
            assert_eq!(request("PATCH", format!("/twins/{id}"), vec![], patch).await.status, 200);
        }
        let before = request("GET", "/devices/d-2".into(), vec![], json!(null)).await;
        let disable = json!({"deviceId": "d-2", "status": "disabled", "statusReason": "stolen",
            "authentication": {"type": "certificateAuthority"}});
        let etag = format!("If-Match: \"{}\"", before.body["etag"].as_str().unwrap());
        let disabled = request("PUT", "/devices/d-2".into(), vec![etag], disable).await;
        assert_eq!(disabled.status, 200, "{disabled:?}");
        assert_eq!(
            (&disabled.body["status"], &disabled.body["statusReason"]),
            (&json!("disabled"), &json!("stolen"))
        );
        assert_eq!(disabled.body["authentication"]["type"], "certificateAuthority");
        assert_eq!(disabled.body["generationId"], before.body["generationId"]);
        assert_ne!(disabled.body["etag"], before.body["etag"]);

        let listed = request("GET", "/devices".into(), vec![], json!(null)).await;
        let ids: Vec<&str> = listed.body.as_array().unwrap().iter().map(|d| d["deviceId"].as_str().unwrap()).collect();
        assert_eq!(ids, ["d-1", "d-2", "d-3", "d-4"]);
        let statistics = request("GET", "/statistics/devices".into(), vec![], json!(null)).await;
        assert_eq!(
            statistics.body,
            json!({"totalDeviceCount": 4, "enabledDeviceCount": 3, "disabledDeviceCount": 1})
        );

        let query = json!({"query": "SELECT * FROM devices WHERE tags.site = 'lab' AND status = 'enabled'"});
        let mut pages = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let mut headers = vec!["x-ms-max-item-count: 1".to_string()];
            headers.extend(continuation.as_ref().map(|c| format!("x-ms-continuation: {c}")));
            let page = request("POST", "/devices/query".into(), headers, query.clone()).await;
            assert_eq!(page.status, 200, "{page:?}");
            assert!(page.head.contains("x-ms-item-type: twin"), "{page:?}");
            pages.push(page.body.as_array().unwrap().iter().map(|t| t["deviceId"].clone()).collect::<Vec<_>>());
            continuation = page
                .head
                .lines()
                .find_map(|l| l.strip_prefix("x-ms-continuation: "))
                .map(str::to_string);
            if continuation.is_none() {
                break;
            }
        }
        assert_eq!(pages, [vec![json!("d-1")], vec![json!("d-3")], vec![json!("d-4")]]);

        for bad in ["SELECT * FROM devices WHERE tags.site IN ['lab']", "SELECT deviceId FROM devices"] {
            let refused = request("POST", "/devices/query".into(), vec![], json!({"query": bad})).await;
            assert_eq!((refused.status, &refused.body["errorCode"]), (400, &json!(400_004)), "{refused:?}");
        }
    });
}

/// The hub service API's identity and twin documents, byte for byte: every member in the order
/// IoT Hub's documented examples write it (`statusReason` as `null` in an identity without one,
/// left out of such a twin), for a `sas`, a `selfSigned` and a `certificateAuthority` device,
/// in a GET, the identity list, a twin GET, a twin PATCH answer and a `SELECT * FROM devices`
/// page. The strings were captured from the hand-written documents these replaced; the etags
/// (digests of the stored records) are masked, and checked against each other instead.
#[test]
fn hub_service_documents_keep_their_bytes() {
    use crate::emulator::model::{DeviceAuth, DeviceStatus, HubDevice, RegistryState};

    let emulator = start(EmulatorConfig::default());
    let hub = emulator.create_hub("hub", "westeurope", None).unwrap();
    let host = hub.host_name.clone();
    let device =
        |id: &str, auth: DeviceAuth, registry: RegistryState, twin: Option<Value>| HubDevice {
            device_id: id.into(),
            hub: host.clone(),
            auth,
            initial_twin: twin,
            created: 1_700_000_000,
            registry,
            issued_by: None,
        };
    let cloud = emulator.cloud();
    cloud
        .put_hub_device(device(
            "dev-sas",
            DeviceAuth::Sas {
                primary_key: "cA==".repeat(11),
                secondary_key: "cw==".repeat(11),
            },
            RegistryState {
                generation_id: "638366880000000000".into(),
                ..RegistryState::default()
            },
            Some(json!({"tags": {"site": "lab"}, "properties": {"desired": {"rate": 5}}})),
        ))
        .unwrap();
    cloud
        .put_hub_device(device(
            "dev-x509",
            DeviceAuth::SelfSigned {
                primary_thumbprint: "AB".repeat(20),
                primary_thumbprint_sha256: String::new(),
                secondary_thumbprint: Some("CD".repeat(32)),
            },
            RegistryState {
                status: DeviceStatus::Disabled,
                status_reason: Some("maintenance".into()),
                status_updated: 1_700_000_100,
                iot_edge: true,
                generation_id: "638366880000000001".into(),
                writes: 2,
            },
            None,
        ))
        .unwrap();
    // No generation id: a record written before it was kept (the creation time stands in).
    cloud
        .put_hub_device(device(
            "dev-ca",
            DeviceAuth::CertificateAuthority,
            RegistryState::default(),
            None,
        ))
        .unwrap();
    emulator
        .hubs()
        .send_c2d(&host, "dev-sas", b"hello", Vec::new())
        .unwrap();
    let key = hub.policy("iothubowner").unwrap().primary_key.clone();
    let owner = token(&host, &key, "iothubowner");
    let client = Client::resource(&emulator, &host);
    // The body exactly as sent (not parsed and written again).
    let body_of = |method: &'static str, path: &'static str, body: &'static str| {
        let (client, owner) = (&client, &owner);
        async move {
            let request = format!(
                "{method} {path}?api-version=2021-04-12 HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Connection: close\r\nAuthorization: {owner}\r\nContent-Type: application/json\r\n\
                 If-Match: *\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let mut stream = client.connect().await;
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.unwrap();
            let answer = String::from_utf8(answer).unwrap();
            let (head, body) = answer.split_once("\r\n\r\n").unwrap();
            assert!(
                head.starts_with("HTTP/1.1 200"),
                "{method} {path}: {answer}"
            );
            body.to_string()
        }
    };
    runtime().block_on(async {
        let identities = [
            body_of("GET", "/devices/dev-sas", "").await,
            body_of("GET", "/devices/dev-x509", "").await,
            body_of("GET", "/devices/dev-ca", "").await,
        ];
        let listed = body_of("GET", "/devices", "").await;
        let twin = body_of("GET", "/twins/dev-sas", "").await;
        let patched = body_of(
            "PATCH",
            "/twins/dev-x509",
            r#"{"tags":{"floor":2},"properties":{"desired":{"mode":"eco","rate":null}}}"#,
        )
        .await;
        let page = body_of(
            "POST",
            "/devices/query",
            r#"{"query":"SELECT * FROM devices"}"#,
        )
        .await;

        // Each etag, named: the identities' (each twin's deviceEtag repeats its own) and the
        // twins'.
        let member = |document: &str, pointer: &str| {
            let value: Value = serde_json::from_str(document).unwrap();
            value
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap()
                .to_string()
        };
        let masks = [
            (member(&identities[0], "/etag"), "<sas-identity>"),
            (member(&identities[1], "/etag"), "<x509-identity>"),
            (member(&identities[2], "/etag"), "<ca-identity>"),
            (member(&page, "/0/etag"), "<ca-twin>"),
            (member(&twin, "/etag"), "<sas-twin>"),
            (member(&patched, "/etag"), "<x509-twin>"),
        ];
        let masked = |text: &str| {
            masks.iter().fold(text.to_string(), |text, (etag, name)| {
                text.replace(&format!("\"{etag}\""), &format!("\"{name}\""))
            })
        };
        let distinct: std::collections::HashSet<&String> = masks.iter().map(|(e, _)| e).collect();
        assert_eq!(distinct.len(), masks.len(), "{masks:?}");
        assert_eq!(masked(&identities[0]), SAS_IDENTITY);
        assert_eq!(masked(&identities[1]), X509_IDENTITY);
        assert_eq!(masked(&identities[2]), CA_IDENTITY);
        assert_eq!(
            masked(&listed),
            format!("[{CA_IDENTITY},{SAS_IDENTITY},{X509_IDENTITY}]")
        );
        assert_eq!(masked(&twin), SAS_TWIN);
        assert_eq!(masked(&patched), X509_TWIN);
        assert_eq!(masked(&page), format!("[{CA_TWIN},{SAS_TWIN},{X509_TWIN}]"));
    });
}

const SAS_IDENTITY: &str = concat!(
    r#"{"deviceId":"dev-sas","generationId":"638366880000000000","etag":"<sas-identity>","#,
    r#""connectionState":"Disconnected","status":"enabled","statusReason":null,"#,
    r#""connectionStateUpdatedTime":"0001-01-01T00:00:00Z","#,
    r#""statusUpdatedTime":"0001-01-01T00:00:00Z","lastActivityTime":"0001-01-01T00:00:00Z","#,
    r#""cloudToDeviceMessageCount":1,"authentication":{"symmetricKey":{"#,
    r#""primaryKey":"cA==cA==cA==cA==cA==cA==cA==cA==cA==cA==cA==","#,
    r#""secondaryKey":"cw==cw==cw==cw==cw==cw==cw==cw==cw==cw==cw=="},"#,
    r#""x509Thumbprint":{"primaryThumbprint":null,"secondaryThumbprint":null},"type":"sas"},"#,
    r#""capabilities":{"iotEdge":false}}"#,
);

const X509_IDENTITY: &str = concat!(
    r#"{"deviceId":"dev-x509","generationId":"638366880000000001","etag":"<x509-identity>","#,
    r#""connectionState":"Disconnected","status":"disabled","statusReason":"maintenance","#,
    r#""connectionStateUpdatedTime":"0001-01-01T00:00:00Z","#,
    r#""statusUpdatedTime":"2023-11-14T22:15:00.0000000Z","#,
    r#""lastActivityTime":"0001-01-01T00:00:00Z","cloudToDeviceMessageCount":0,"#,
    r#""authentication":{"symmetricKey":{"primaryKey":null,"secondaryKey":null},"#,
    r#""x509Thumbprint":{"primaryThumbprint":"ABABABABABABABABABABABABABABABABABABABAB","#,
    r#""secondaryThumbprint":"CDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCD"},"#,
    r#""type":"selfSigned"},"capabilities":{"iotEdge":true}}"#,
);

const CA_IDENTITY: &str = concat!(
    r#"{"deviceId":"dev-ca","generationId":"1700000000","etag":"<ca-identity>","#,
    r#""connectionState":"Disconnected","status":"enabled","statusReason":null,"#,
    r#""connectionStateUpdatedTime":"0001-01-01T00:00:00Z","#,
    r#""statusUpdatedTime":"0001-01-01T00:00:00Z","lastActivityTime":"0001-01-01T00:00:00Z","#,
    r#""cloudToDeviceMessageCount":0,"#,
    r#""authentication":{"symmetricKey":{"primaryKey":null,"secondaryKey":null},"#,
    r#""x509Thumbprint":{"primaryThumbprint":null,"secondaryThumbprint":null},"#,
    r#""type":"certificateAuthority"},"capabilities":{"iotEdge":false}}"#,
);

const SAS_TWIN: &str = concat!(
    r#"{"deviceId":"dev-sas","etag":"<sas-twin>","deviceEtag":"<sas-identity>","#,
    r#""status":"enabled","statusUpdateTime":"0001-01-01T00:00:00Z","#,
    r#""connectionState":"Disconnected","lastActivityTime":"0001-01-01T00:00:00Z","#,
    r#""cloudToDeviceMessageCount":1,"authenticationType":"sas","#,
    r#""x509Thumbprint":{"primaryThumbprint":null,"secondaryThumbprint":null},"#,
    r#""version":2,"tags":{"site":"lab"},"#,
    r#""properties":{"desired":{"rate":5,"$version":1},"reported":{"$version":1}},"#,
    r#""capabilities":{"iotEdge":false}}"#,
);

const X509_TWIN: &str = concat!(
    r#"{"deviceId":"dev-x509","etag":"<x509-twin>","deviceEtag":"<x509-identity>","#,
    r#""status":"disabled","statusReason":"maintenance","#,
    r#""statusUpdateTime":"2023-11-14T22:15:00.0000000Z","#,
    r#""connectionState":"Disconnected","lastActivityTime":"0001-01-01T00:00:00Z","#,
    r#""cloudToDeviceMessageCount":0,"authenticationType":"selfSigned","#,
    r#""x509Thumbprint":{"primaryThumbprint":"ABABABABABABABABABABABABABABABABABABABAB","#,
    r#""secondaryThumbprint":"CDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCD"},"#,
    r#""version":3,"tags":{"floor":2},"#,
    r#""properties":{"desired":{"mode":"eco","$version":2},"reported":{"$version":1}},"#,
    r#""capabilities":{"iotEdge":true}}"#,
);

const CA_TWIN: &str = concat!(
    r#"{"deviceId":"dev-ca","etag":"<ca-twin>","deviceEtag":"<ca-identity>","#,
    r#""status":"enabled","statusUpdateTime":"0001-01-01T00:00:00Z","#,
    r#""connectionState":"Disconnected","lastActivityTime":"0001-01-01T00:00:00Z","#,
    r#""cloudToDeviceMessageCount":0,"authenticationType":"certificateAuthority","#,
    r#""x509Thumbprint":{"primaryThumbprint":null,"secondaryThumbprint":null},"#,
    r#""version":2,"tags":{},"#,
    r#""properties":{"desired":{"$version":1},"reported":{"$version":1}},"#,
    r#""capabilities":{"iotEdge":false}}"#,
);

/// The feedback of a C2D message, as `azure-iot-hub`'s `IoTHubHttpRuntimeManager` reads and
/// settles it, and purges: locked while taken (the lock token is the `ETag`), offered again
/// when abandoned, completed once; tokens of devices, of other hubs and made up are refused.
#[test]
fn feedback_over_rest_is_locked_abandoned_and_completed_by_its_own_hubs_lock_token() {
    let emulator = start(EmulatorConfig::default());
    let hub = emulator.create_hub("hub", "westeurope", None).unwrap();
    let other = emulator.create_hub("other", "westeurope", None).unwrap();
    let host = hub.host_name.clone();
    let device = sas_device("dev-a", &host);
    let crate::emulator::model::DeviceAuth::Sas { primary_key, .. } = &device.auth else {
        unreachable!()
    };
    let device_key = primary_key.clone();
    emulator.cloud().put_hub_device(device).unwrap();
    emulator
        .cloud()
        .put_hub_device(sas_device("dev-o", &other.host_name))
        .unwrap();
    let hubs = emulator.hubs().clone();
    let ack = |v: &str| vec![("iothub-ack".to_string(), v.to_string())];
    let owner = token(
        &host,
        &hub.policy("service").unwrap().primary_key,
        "service",
    );
    let other_owner = token(
        &other.host_name,
        &other.policy("service").unwrap().primary_key,
        "service",
    );
    let device_sas = crate::sas::build_token(
        &format!("{host}/devices/dev-a"),
        &device_key,
        crate::clock::now() + 600,
        None,
    )
    .unwrap();
    let client = Client::resource(&emulator, &host);
    let other_client = Client::resource(&emulator, &other.host_name);
    let feedback = "/messages/serviceBound/feedback?api-version=2021-04-12";
    let header = |answer: &Answer, name: &str| -> Option<String> {
        answer.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_string())
        })
    };
    runtime().block_on(async {
        let none = client.send("GET", feedback, Some(&owner), None).await;
        assert_eq!(none.status, 204, "{none:?}");
        let message_id = hubs.send_c2d(&host, "dev-a", b"x", ack("full")).unwrap();
        let purge = client
            .send(
                "DELETE",
                "/devices/dev-a/commands?api-version=2021-04-12",
                Some(&owner),
                None,
            )
            .await;
        assert_eq!(purge.status, 200, "{purge:?}");
        assert_eq!(
            purge.body,
            json!({"totalMessagesPurged": 1, "deviceId": "dev-a"})
        );
        // The device's own credential reads no feedback.
        let refused = client.send("GET", feedback, Some(&device_sas), None).await;
        assert_eq!(refused.status, 401, "{refused:?}");

        let taken = client.send("GET", feedback, Some(&owner), None).await;
        assert_eq!(taken.status, 200, "{taken:?}");
        let records = taken.body.as_array().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["originalMessageId"], message_id.as_str());
        assert_eq!(records[0]["statusCode"], "Purged");
        assert_eq!(records[0]["deviceId"], "dev-a");
        assert_eq!(
            header(&taken, "content-type").as_deref(),
            Some(crate::protocol::c2d::FEEDBACK_CONTENT_TYPE)
        );
        assert_eq!(header(&taken, "iothub-deliverycount").as_deref(), Some("1"));
        assert!(header(&taken, "iothub-messageid").is_some());
        // (The head is read lower case.)
        assert!(header(&taken, "iothub-enqueuedtime").is_some_and(|t| t.ends_with('z')));
        let lock = header(&taken, "etag").unwrap();
        // Locked: nobody else gets it meanwhile.
        let held = client.send("GET", feedback, Some(&owner), None).await;
        assert_eq!(held.status, 204, "{held:?}");
        let settle = |method: &'static str, lock: String, suffix: &'static str| {
            let client = &client;
            let owner = &owner;
            async move {
                let path = format!(
                    "/messages/serviceBound/feedback/{lock}{suffix}?api-version=2021-04-12"
                );
                client.send(method, &path, Some(owner), None).await
            }
        };
        let abandoned = settle("POST", lock.clone(), "/abandon").await;
        assert_eq!(abandoned.status, 204, "{abandoned:?}");
        let again = client.send("GET", feedback, Some(&owner), None).await;
        assert_eq!(again.status, 200);
        assert_eq!(header(&again, "iothub-deliverycount").as_deref(), Some("2"));
        assert_eq!(
            header(&again, "iothub-messageid"),
            header(&taken, "iothub-messageid"),
            "the same feedback message"
        );
        let current = header(&again, "etag").unwrap();
        assert_ne!(current, lock, "a new lock each delivery");
        for stale in [lock.clone(), "made-up".to_string(), random_lock()] {
            let refused = settle("DELETE", stale.clone(), "").await;
            assert_eq!(refused.status, 412, "{stale}: {refused:?}");
            assert_eq!(refused.body["errorCode"], 412_002);
        }
        // Another hub's owner cannot settle this hub's lock, even with the token itself.
        let path = format!("/messages/serviceBound/feedback/{current}?api-version=2021-04-12");
        let theirs = other_client
            .send("DELETE", &path, Some(&other_owner), None)
            .await;
        assert_eq!(theirs.status, 412, "{theirs:?}");
        let completed = settle("DELETE", current.clone(), "").await;
        assert_eq!(completed.status, 204, "{completed:?}");
        let twice = settle("DELETE", current, "").await;
        assert_eq!(twice.status, 412);
        let empty = client.send("GET", feedback, Some(&owner), None).await;
        assert_eq!(empty.status, 204);
    });
}

fn random_lock() -> String {
    crate::emulator::cloud::random_guid()
}
