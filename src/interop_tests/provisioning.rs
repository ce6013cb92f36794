//! dpskit's DPS provisioning client against the emulator: a large custom-allocation payload.

use std::time::Duration;

use serde_json::Value;

use crate::emulator::tests::support::*;
use crate::error::Error;

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
        via: Default::default(),
        id_scope: f.scope.clone(),
        registration_id: "big-payload".into(),
        auth: DeviceAuth::X509(device.shared_credential()),
        payload: Some(payload),
        timeout: Duration::from_secs(60),
        csr: None,
        clock: crate::clock::Clock::system(),
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
            matches!(&refused, Error::Config(m) if m.to_string().contains("96 KB")),
            "{refused:?}"
        );
    });
}
