//! Time as Azure spends it, over real HTTPS on 127.0.0.1: ARM's long-running operations
//! (201/202 with `Azure-AsyncOperation` and `Location`, `Activating` and `Deleting` resources,
//! names held while deleted), paged lists with `nextLink`, and 429s with `Retry-After` on every
//! REST API; with dpskit's REST clients as the peers that must wait, page and retry.

use std::time::Duration;

use serde_json::{Value, json};

use crate::emulator::{
    DEFAULT_RESOURCE_GROUP, DEFAULT_SUBSCRIPTION_ID, Emulator, EmulatorConfig, RestBehaviour,
};
use crate::provisioning::Trust;
use crate::service::arm::{ArmClient, DPS_API_VERSION, HUB_API_VERSION, static_token};

fn start(behaviour: RestBehaviour) -> Emulator {
    Emulator::start(EmulatorConfig {
        port: 0,
        web_port: 0,
        amqp_port: 0,
        worker_threads: Some(2),
        rest_behaviour: behaviour,
        ..EmulatorConfig::default()
    })
    .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn endpoint(emulator: &Emulator) -> String {
    format!("https://127.0.0.1:{}", emulator.https_port())
}

fn trust(emulator: &Emulator) -> Trust {
    Trust::from_pem(emulator.trust_pem().as_bytes()).unwrap()
}

fn arm(emulator: &Emulator) -> ArmClient {
    ArmClient::new(
        &endpoint(emulator),
        DEFAULT_SUBSCRIPTION_ID,
        DEFAULT_RESOURCE_GROUP,
        static_token("t"),
        &trust(emulator),
    )
    .unwrap()
}

/// A plain HTTPS client, to see the answers themselves.
fn raw(emulator: &Emulator) -> reqwest::Client {
    crate::service::http_client(&trust(emulator), Duration::from_secs(30)).unwrap()
}

fn group_url(emulator: &Emulator) -> String {
    format!(
        "{}/subscriptions/{DEFAULT_SUBSCRIPTION_ID}/resourceGroups/{DEFAULT_RESOURCE_GROUP}/providers/Microsoft.Devices",
        endpoint(emulator)
    )
}

struct Seen {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Seen {
    let mut request = client.request(method, url).bearer_auth("t");
    request = match body {
        Some(body) => request.json(&body),
        None => request.header(reqwest::header::CONTENT_LENGTH, "0"),
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    Seen {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

fn header(seen: &Seen, name: &str) -> String {
    seen.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", seen.headers))
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn hub_and_dps_writes_are_long_running_and_the_client_waits_for_each() {
    let emulator = start(RestBehaviour {
        operation_latency: Duration::from_secs(1),
        ..RestBehaviour::default()
    });
    let http = raw(&emulator);
    let arm = arm(&emulator);
    let hub_url = format!("{}/IotHubs/lro-hub", group_url(&emulator));
    let versioned = format!("{hub_url}?api-version={HUB_API_VERSION}");
    runtime().block_on(async {
        // The create answers at once, as Azure does: 201, Accepted/Activating, an operation to
        // watch under the region, and when to look again.
        let created = send(
            &http,
            reqwest::Method::PUT,
            &versioned,
            Some(json!({"location": "westeurope", "sku": {"name": "S1", "capacity": 1}})),
        )
        .await;
        assert_eq!(created.status, 201, "{}", created.body);
        assert_eq!(created.body["properties"]["provisioningState"], "Accepted");
        assert_eq!(created.body["properties"]["state"], "Activating");
        let status_url = header(&created, "azure-asyncoperation");
        assert!(
            status_url
                .contains("/providers/Microsoft.Devices/locations/westeurope/operationResults/")
                && status_url.ends_with("&asyncinfo"),
            "{status_url}"
        );
        assert_eq!(header(&created, "retry-after"), "1");
        let running = send(&http, reqwest::Method::GET, &status_url, None).await;
        assert_eq!(
            (running.status, &running.body),
            (200, &json!({"status": "Running"}))
        );
        // The same URL without asyncinfo is the Location protocol: 202 while running.
        let location = status_url.trim_end_matches("&asyncinfo");
        assert_eq!(
            send(&http, reqwest::Method::GET, location, None)
                .await
                .status,
            202
        );
        let during = send(&http, reqwest::Method::GET, &versioned, None).await;
        assert_eq!(during.body["properties"]["state"], "Activating");
        // The client given a hub still activating waits until it is ready.
        let hub = arm.create_hub("lro-hub", "westeurope").await.unwrap();
        assert_eq!(hub.provisioning_state, "Succeeded");
        let done = send(&http, reqwest::Method::GET, &status_url, None).await;
        assert_eq!(done.body, json!({"status": "Succeeded"}));
        assert!(done.headers.get("retry-after").is_none());
        assert_eq!(
            send(&http, reqwest::Method::GET, location, None)
                .await
                .status,
            200
        );

        // A delete: 202 with both URLs; the hub stays visible as Deleting and its name taken.
        let deleting = send(&http, reqwest::Method::DELETE, &versioned, None).await;
        assert_eq!(deleting.status, 202, "{}", deleting.body);
        let delete_status = header(&deleting, "azure-asyncoperation");
        let delete_location = header(&deleting, "location");
        assert_eq!(format!("{delete_location}&asyncinfo"), delete_status);
        let seen = send(&http, reqwest::Method::GET, &versioned, None).await;
        assert_eq!(seen.status, 200);
        assert_eq!(seen.body["properties"]["provisioningState"], "Deleting");
        let again = send(
            &http,
            reqwest::Method::PUT,
            &versioned,
            Some(json!({"location": "westeurope"})),
        )
        .await;
        assert_eq!(again.status, 409, "{}", again.body);
        let listed = arm.hubs().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].provisioning_state, "Deleting");
        // Devices cannot reach a hub being deleted.
        assert!(emulator.cloud().hub("lro-hub").is_err());
        // Creating the name again waits for the deletion to finish, then creates.
        let recreated = arm.create_hub("lro-hub", "westeurope").await.unwrap();
        assert_eq!(recreated.provisioning_state, "Succeeded");
        assert_eq!(
            send(&http, reqwest::Method::GET, &delete_location, None)
                .await
                .status,
            204
        );

        // The client's own delete returns once the deletion is done: the name is free at once.
        arm.delete_hub("lro-hub").await.unwrap();
        assert_eq!(
            send(&http, reqwest::Method::GET, &versioned, None)
                .await
                .status,
            404
        );
        arm.create_hub("lro-hub", "westeurope").await.unwrap();

        // DPS: create, link (an update, Transitioning), delete and create the same name.
        let dps = arm.create_dps("lro-dps", "westeurope").await.unwrap();
        assert_eq!(dps.provisioning_state, "Succeeded");
        let linked = arm
            .link_hub("lro-dps", "lro-hub", None, true, None)
            .await
            .unwrap();
        assert_eq!(linked.linked_hubs.len(), 1);
        assert_eq!(linked.provisioning_state, "Succeeded");
        arm.delete_dps("lro-dps").await.unwrap();
        let dps_url = format!(
            "{}/provisioningServices/lro-dps?api-version={DPS_API_VERSION}",
            group_url(&emulator)
        );
        assert_eq!(
            send(&http, reqwest::Method::GET, &dps_url, None)
                .await
                .status,
            404
        );
        let again = arm.create_dps("lro-dps", "westeurope").await.unwrap();
        assert_ne!(again.id_scope, "");
        // The DPS's operation is watched under the resource, where the management SDK's
        // get_operation_result reads it.
        let deleting = send(&http, reqwest::Method::DELETE, &dps_url, None).await;
        assert_eq!(deleting.status, 202);
        let status_url = header(&deleting, "azure-asyncoperation");
        assert!(
            status_url.contains("/provisioningServices/lro-dps/operationresults/"),
            "{status_url}"
        );
        assert_eq!(
            send(&http, reqwest::Method::GET, &status_url, None)
                .await
                .body["status"],
            "Running"
        );
    });
}

#[test]
fn lists_are_paged_with_next_links_and_the_client_follows_them() {
    let emulator = start(RestBehaviour {
        page_size: 2,
        ..RestBehaviour::default()
    });
    for i in 0..5 {
        emulator
            .create_hub(&format!("paged-hub-{i}"), "westeurope", None)
            .unwrap();
        emulator
            .cloud()
            .create_dps(&format!("paged-dps-{i}"), "westeurope")
            .unwrap();
    }
    let http = raw(&emulator);
    let arm = arm(&emulator);
    runtime().block_on(async {
        let first = send(
            &http,
            reqwest::Method::GET,
            &format!(
                "{}/IotHubs?api-version={HUB_API_VERSION}",
                group_url(&emulator)
            ),
            None,
        )
        .await;
        assert_eq!(first.body["value"].as_array().unwrap().len(), 2);
        let next = first.body["nextLink"].as_str().unwrap();
        assert!(next.contains("$skipToken="), "{next}");
        let mut names: Vec<String> = arm
            .hubs()
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect();
        names.sort();
        assert_eq!(
            names,
            (0..5).map(|i| format!("paged-hub-{i}")).collect::<Vec<_>>()
        );
        assert_eq!(arm.dps_instances().await.unwrap().len(), 5);
        // The last page has no nextLink.
        let mut link = next.to_string();
        let mut pages = 1;
        loop {
            let page = send(&http, reqwest::Method::GET, &link, None).await;
            pages += 1;
            match page.body["nextLink"].as_str() {
                Some(next) => link = next.to_string(),
                None => break,
            }
        }
        assert_eq!(pages, 3);
    });
}

#[test]
fn every_rest_client_retries_429s_and_gives_up_past_its_attempts() {
    let emulator = start(RestBehaviour {
        throttle_every: 2,
        throttle_retry_after: 0,
        ..RestBehaviour::default()
    });
    let arm = arm(&emulator);
    let trust = trust(&emulator);
    runtime().block_on(async {
        let hub = arm.create_hub("throttled-hub", "westeurope").await.unwrap();
        arm.create_dps("throttled-dps", "westeurope").await.unwrap();
        arm.link_hub("throttled-dps", "throttled-hub", None, true, None)
            .await
            .unwrap();
        let dps_keys = arm.dps_keys("throttled-dps").await.unwrap();
        let hub_keys = arm.hub_keys("throttled-hub").await.unwrap();
        let dps = crate::service::dps::DpsServiceClient::from_connection_string(
            &format!(
                "HostName=127.0.0.1:{};SharedAccessKeyName={};SharedAccessKey={}",
                emulator.web_port(),
                dps_keys.key_name,
                dps_keys.primary_key
            ),
            None,
            &trust,
        )
        .unwrap();
        let hubs = crate::service::hub::HubServiceClient::from_connection_string(
            &format!(
                "HostName={}:{};SharedAccessKeyName={};SharedAccessKey={}",
                hub.host_name,
                emulator.web_port(),
                hub_keys.key_name,
                hub_keys.primary_key
            ),
            None,
            &trust,
        )
        .unwrap();
        for i in 0..3 {
            let id = format!("group-{i}");
            let body = json!({
                "enrollmentGroupId": id,
                "attestation": {"type": "symmetricKey", "symmetricKey": {}},
            });
            dps.put_enrollment_group::<_, Value>(&id, &body, None)
                .await
                .unwrap();
            dps.enrollment_group::<Value>(&id).await.unwrap();
            let device = format!("device-{i}");
            hubs.put_device::<Value>(&device, &json!({"deviceId": device}))
                .await
                .unwrap();
            hubs.device::<Value>(&device).await.unwrap();
        }
        assert_eq!(dps.enrollment_groups::<Value>().await.unwrap().len(), 3);
        assert_eq!(hubs.twins::<Value>().await.unwrap().len(), 3);
        let counts = emulator.throttled_requests();
        assert!(counts.arm >= 3, "{counts:?}");
        assert!(counts.dps_service >= 3, "{counts:?}");
        assert!(counts.hub_service >= 3, "{counts:?}");
    });

    // Throttled without end: the client stops after its attempts with Azure's 429 and advice.
    let always = start(RestBehaviour {
        throttle_every: 1,
        throttle_retry_after: 0,
        ..RestBehaviour::default()
    });
    let arm = self::arm(&always);
    runtime().block_on(async {
        let error = arm.hubs().await.unwrap_err();
        match error {
            crate::Error::Service(s) => {
                assert_eq!(s.status, 429, "{s}");
                assert_eq!(s.retry_after, Some(0.0));
            }
            other => panic!("not a throttling error: {other:?}"),
        }
        assert_eq!(
            always.throttled_requests().arm,
            u64::from(crate::service::RetryPolicy::default().attempts)
        );
    });
}
