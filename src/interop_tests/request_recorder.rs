//! The request recorder fed by real HTTPS from dpskit's ARM and hub service clients: only
//! authenticated requests are recorded, and no key or token leaks.

use serde_json::{Value, json};

#[test]
fn records_real_https_requests_after_authentication_only() {
    use crate::emulator::{DEFAULT_RESOURCE_GROUP, DEFAULT_SUBSCRIPTION_ID, EmulatorConfig};
    let emulator = crate::emulator::Emulator::start(EmulatorConfig {
        port: 0,
        web_port: 0,
        amqp_port: 0,
        worker_threads: Some(2),
        arm_tokens: Some(vec!["right-token".into()]),
        ..EmulatorConfig::default()
    })
    .unwrap();
    let trust = crate::provisioning::Trust::from_pem(emulator.trust_pem().as_bytes()).unwrap();
    let endpoint = format!("https://127.0.0.1:{}", emulator.https_port());
    let arm = |token: &str| {
        crate::service::arm::ArmClient::new(
            &endpoint,
            DEFAULT_SUBSCRIPTION_ID,
            DEFAULT_RESOURCE_GROUP,
            crate::service::arm::static_token(token),
            &trust,
        )
        .unwrap()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let recorder = emulator.request_recorder();
    runtime.block_on(async {
        arm("right-token")
            .create_hub("rec-hub", "westeurope")
            .await
            .unwrap();
        let start = recorder.start();
        let hub = arm("right-token").hub("rec-hub").await.unwrap();
        let keys = arm("right-token").hub_keys("rec-hub").await.unwrap();
        // Refused before its body is read: not recorded.
        assert!(arm("wrong-token").hub("rec-hub").await.is_err());
        let connection_string = format!(
            "HostName={}:{};SharedAccessKeyName=iothubowner;SharedAccessKey={}",
            hub.host_name,
            emulator.web_port(),
            keys.primary_key
        );
        let service = crate::service::hub::HubServiceClient::from_connection_string(
            &connection_string,
            None,
            &trust,
        )
        .unwrap();
        let device = json!({"deviceId": "rec-dev", "authentication": {"type": "sas",
            "symmetricKey": {"primaryKey": keys.primary_key, "secondaryKey": keys.secondary_key}}});
        service
            .put_device::<Value>("rec-dev", &device)
            .await
            .unwrap();
        let recorded = recorder.since(start);
        let seen: Vec<(&str, &str, u16)> = recorded
            .requests
            .iter()
            .map(|r| (r.api, r.method.as_str(), r.status))
            .collect();
        assert_eq!(
            seen,
            [
                ("arm", "GET", 200),
                ("arm", "POST", 200),
                ("hub", "PUT", 200)
            ]
        );
        let get = &recorded.requests[0];
        assert!(get.path.ends_with("/IotHubs/rec-hub"), "{}", get.path);
        assert_eq!(
            get.query,
            [("api-version".to_string(), "2023-06-30".to_string())]
        );
        let put = &recorded.requests[2];
        assert!(
            put.headers
                .contains(&("content-type".to_string(), "application/json".to_string())),
            "{:?}",
            put.headers
        );
        let everything = serde_json::to_string(&recorded).unwrap();
        for secret in [
            keys.primary_key.as_str(),
            keys.secondary_key.as_str(),
            "right-token",
        ] {
            assert!(
                !everything.contains(secret),
                "{secret} leaked: {everything}"
            );
        }
        assert!(!everything.to_ascii_lowercase().contains("authorization"));
        recorder.stop();
    });
}
