//! dpskit's device clients against the emulator's certificate issuance: a registration with a
//! CSR returns the checked chain, the hub takes it, and the hub client's renewal meets the
//! hub's one-operation rule (409005 naming the pending request, `replace` cancelling it).

use std::time::Duration;

use crate::emulator::hub::HubKnobChange;
use crate::emulator::model::{CredentialPolicyRef, EnrollmentSettings};
use crate::emulator::tests::support::*;
use crate::error::{Error, ServiceErrorKind};
use crate::hub::{HubClient, HubConnectOptions, TelemetryMessage};
use crate::pki::{CertificateRequest, KeyAlgorithm, PrivateKey};
use crate::provisioning::{
    DeviceAuth, ProvisioningRequest, Trust, certificate_request, issued_credential, provision,
};

/// The usual fixture with a namespace and a 30-day policy linked to the DPS and both hubs, and
/// an X.509 group on the intermediate issuing from it.
fn issuing_fixture() -> Fixture {
    let f = fixture(None);
    let cloud = f.emulator.cloud();
    cloud
        .create_device_registry_namespace("adr-ns", "westeurope")
        .unwrap();
    cloud
        .create_credential_policy("adr-ns", "pol", 30, "ECC")
        .unwrap();
    cloud.link_dps_to_namespace("dps", "adr-ns").unwrap();
    cloud.link_hub_to_namespace("hub-a", "adr-ns").unwrap();
    cloud.link_hub_to_namespace("hub-b", "adr-ns").unwrap();
    let settings = EnrollmentSettings {
        credential_policy: Some(CredentialPolicyRef {
            policy: "pol".into(),
            ..CredentialPolicyRef::default()
        }),
        ..EnrollmentSettings::default()
    };
    x509_group(&f, "issuing", f.inter.credential().certificate(), settings);
    f
}

#[test]
fn dpskit_registers_with_a_csr_connects_with_the_issued_chain_and_renews_once_at_a_time() {
    let f = issuing_fixture();
    let trust = Trust::from_pem(f.emulator.trust_pem().as_bytes()).unwrap();
    let bootstrap = f.device("csr-dev");
    let (csr, key) = certificate_request("csr-dev", None, None, KeyAlgorithm::EcP256).unwrap();
    let request = ProvisioningRequest {
        host: "127.0.0.1".into(),
        port: f.emulator.mqtt_port(),
        via: Default::default(),
        id_scope: f.scope.clone(),
        registration_id: "csr-dev".into(),
        auth: DeviceAuth::X509(bootstrap.shared_credential()),
        payload: None,
        timeout: Duration::from_secs(60),
        csr: Some(csr),
        clock: f.emulator.cloud().clock().clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let result = provision(&request, &trust).await.unwrap();
        assert_eq!(result.issued_chain.len(), 3);
        let issued = issued_credential(&result.issued_chain, key.unwrap()).unwrap();
        let hub = result.assigned_hub.clone().unwrap();
        let mut options = HubConnectOptions::new(
            hub.clone(),
            f.emulator.mqtt_port(),
            "csr-dev",
            DeviceAuth::X509(issued.shared_credential()),
        );
        options.certificate_renewal = true;
        options.renewal_timeout = Duration::from_secs(3);
        let client = std::sync::Arc::new(HubClient::connect(options, &trust).await.unwrap());
        client
            .send_telemetry(&TelemetryMessage::new("issued"))
            .await
            .unwrap();

        let fresh = || {
            let key = PrivateKey::generate(KeyAlgorithm::EcP256).unwrap();
            CertificateRequest::generate("csr-dev", &key).unwrap()
        };
        let renewed = client.renew_certificate(&fresh(), None).await.unwrap();
        assert_eq!(renewed[1..], result.issued_chain[1..]);

        // Held back by the hub, a renewal stays pending: a second is a conflict naming it.
        let hold = |ms| HubKnobChange {
            certificate_issuance_delay_ms: Some(ms),
            ..HubKnobChange::default()
        };
        f.emulator.change_hub_knobs(&hub, hold(60_000)).unwrap();
        let pending = tokio::spawn({
            let client = client.clone();
            let csr = fresh();
            async move { client.renew_certificate(&csr, None).await }
        });
        // The first is accepted (202) long before this; its answer is held for a minute.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let conflict = match client.renew_certificate(&fresh(), None).await {
            Err(Error::Service(failure)) => *failure,
            other => panic!("expected 409005, got {other:?}"),
        };
        assert_eq!(conflict.error_code, Some(409_005), "{}", conflict.message);
        assert_eq!(conflict.kind(), ServiceErrorKind::Conflict);
        assert!(
            conflict.message.contains("pending request: ") && conflict.message.contains("expires"),
            "{}",
            conflict.message
        );
        // `replace` cancels it: the replacement is issued, the replaced one never is.
        f.emulator.change_hub_knobs(&hub, hold(0)).unwrap();
        let replaced = client.renew_certificate(&fresh(), Some("*")).await.unwrap();
        assert_eq!(replaced.len(), 3);
        let abandoned = pending.await.unwrap().unwrap_err();
        assert!(matches!(abandoned, Error::Timeout(_)), "{abandoned:?}");
        client.close().await;
    });
}
