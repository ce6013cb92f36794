//! Proof of possession in one call (`ArmClient::prove_possession`, what `Dps.prove_possession`
//! runs) against the emulator's ARM over real HTTPS: a name that already holds a different
//! certificate gets Azure's answer to a replacement without `If-Match` (412), never a silent
//! replacement, and the stored certificate stays as it was.

use crate::emulator::{DEFAULT_RESOURCE_GROUP, DEFAULT_SUBSCRIPTION_ID, Emulator, EmulatorConfig};
use crate::error::Error;
use crate::pki::{CaOptions, CertificateAuthority, KeyAlgorithm, Validity};
use crate::provisioning::Trust;
use crate::service::arm::{ArmClient, static_token};

fn root(name: &str) -> CertificateAuthority {
    let options = CaOptions {
        algorithm: KeyAlgorithm::EcP256,
        validity: Validity::days(30, None).unwrap(),
        path_length: None,
        organization: None,
    };
    CertificateAuthority::create_root(name, &options).unwrap()
}

#[test]
fn a_name_holding_a_different_certificate_is_refused_as_azure_refuses_it() {
    let mut emulator = Emulator::start(EmulatorConfig {
        port: 0,
        web_port: 0,
        amqp_port: 0,
        worker_threads: Some(2),
        ..EmulatorConfig::default()
    })
    .unwrap();
    let arm = ArmClient::new(
        &format!("https://127.0.0.1:{}", emulator.https_port()),
        DEFAULT_SUBSCRIPTION_ID,
        DEFAULT_RESOURCE_GROUP,
        static_token("t"),
        &Trust::from_pem(emulator.trust_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let (first, second) = (root("PoP First Root"), root("PoP Second Root"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        arm.create_dps("pop-dps", "westeurope").await.unwrap();
        let proven = arm
            .prove_possession("pop-dps", "root", &first)
            .await
            .unwrap();
        assert!(proven.is_verified);
        // The same CA again: nothing to do, nothing changes.
        let again = arm
            .prove_possession("pop-dps", "root", &first)
            .await
            .unwrap();
        assert_eq!(again.etag, proven.etag);

        let refused = arm
            .prove_possession("pop-dps", "root", &second)
            .await
            .unwrap_err();
        let Error::Service(failure) = refused else {
            panic!("expected the service's refusal, got {refused:?}");
        };
        assert_eq!(failure.status, 412, "{}", failure.message);
        assert!(
            failure.message.contains(&proven.thumbprint),
            "the advice names what the name holds: {}",
            failure.message
        );
        let kept = arm.ca_certificate("pop-dps", "root").await.unwrap();
        assert_eq!(kept.thumbprint, proven.thumbprint);
        assert_eq!(kept.etag, proven.etag);
        assert!(kept.is_verified);
    });
    emulator.stop();
}
