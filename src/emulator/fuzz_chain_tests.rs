//! Deterministic fuzz of the X.509 chains devices present at DPS register: mutated DER (bit
//! flips, truncations, lying length fields, insertions, splices) of the leaf or the
//! intermediate, presented by a real client over real TLS with the genuine key, to the running
//! emulator. A chain with a certificate that does not parse must be refused (a TLS failure, a
//! CONNACK refusal or DPS's 401), no mutated chain is ever accepted as another identity, the
//! emulator never panics, and a legitimate device is still served afterwards.

use std::time::Duration;

use serde_json::Value;

use super::tests::support::{self, Auth, provision_async};
use super::*;
use crate::emulator::model::{Attestation, EnrollmentSettings};
use crate::fuzz::{Rng, mutate, watch_emulator_panics};
use crate::pki::{CaOptions, Certificate, CertificateAuthority, KeyAlgorithm, Validity};

const SEED: u64 = 0x5EC0_C4A1_2026_1206;
/// Cases per test: about 2 s of registrations against a debug build.
const CASES: usize = 160;
const REGISTRATION_ID: &str = "fuzz-device";

/// What the device saw.
#[derive(Debug)]
enum Outcome {
    /// TLS or CONNECT failed, or the connection closed before an answer.
    Refused(String),
    /// DPS's final reply.
    Reply(u16, Value),
}

/// One registration with `chain` presented (the key is the genuine device's), to its end.
async fn register(
    trust: &str,
    port: u16,
    scope: &str,
    chain: Vec<Vec<u8>>,
    credential: &crate::pki::Credential,
) -> Outcome {
    let auth = Auth::X509Der { chain, credential };
    match provision_async(trust.to_string(), port, scope, REGISTRATION_ID, auth).await {
        support::Outcome::Refused(why) => Outcome::Refused(why),
        support::Outcome::Replies(replies) => {
            let (status, body) = replies.last().cloned().expect("DPS answered");
            Outcome::Reply(status, body)
        }
    }
}

struct Setup {
    emulator: Emulator,
    scope: String,
    device: crate::pki::DeviceCredential,
    inter: CertificateAuthority,
}

/// A DPS with a linked hub, a verified root and a group on its (inline) intermediate.
fn setup() -> Setup {
    let emulator = Emulator::start(EmulatorConfig {
        port: 0,
        web_port: 0,
        amqp_port: 0,
        worker_threads: Some(2),
        poll_retry_after: 0,
        limits: Limits {
            connect_timeout: Duration::from_secs(2),
            ..EmulatorConfig::default().limits
        },
        ..EmulatorConfig::default()
    })
    .unwrap();
    let cloud = emulator.cloud();
    emulator.create_hub("hub", "westeurope", None).unwrap();
    let dps = cloud.create_dps("dps", "westeurope").unwrap();
    cloud.link_hub("dps", "hub", 1, true, None).unwrap();
    let options = |path_length| CaOptions {
        algorithm: KeyAlgorithm::EcP256,
        validity: Validity::days(30, None).unwrap(),
        path_length,
        organization: None,
    };
    let root = CertificateAuthority::create_root("Fuzz Root", &options(None)).unwrap();
    let inter = root
        .create_intermediate("Fuzz Intermediate", &options(Some(0)))
        .unwrap();
    cloud
        .upload_ca_certificate("dps", "root", root.credential().certificate(), true, None)
        .unwrap();
    cloud
        .put_enrollment_group(
            "dps",
            "fuzzed",
            EnrollmentSpec {
                attestation: Some(Attestation::X509 {
                    ca_references: vec![],
                    certificates: vec![base64::Engine::encode(
                        &base64::engine::general_purpose::STANDARD,
                        inter.credential().certificate().der(),
                    )],
                }),
                settings: EnrollmentSettings::default(),
                device_id: None,
            },
            None,
        )
        .unwrap();
    let device = inter
        .issue_device(
            REGISTRATION_ID,
            KeyAlgorithm::EcP256,
            Validity::days(5, None).unwrap(),
        )
        .unwrap();
    Setup {
        emulator,
        scope: dps.id_scope,
        device,
        inter,
    }
}

impl Setup {
    fn genuine_chain(&self) -> Vec<Vec<u8>> {
        vec![
            self.device.credential().certificate().der().to_vec(),
            self.inter.credential().certificate().der().to_vec(),
        ]
    }

    async fn register(&self, chain: Vec<Vec<u8>>) -> Outcome {
        register(
            &self.emulator.trust_pem(),
            self.emulator.mqtt_port(),
            &self.scope,
            chain,
            self.device.credential(),
        )
        .await
    }

    async fn assert_genuine_device_is_assigned(&self) {
        match self.register(self.genuine_chain()).await {
            Outcome::Reply(200, body) => {
                assert_eq!(body["status"], "assigned", "{body}");
                assert_eq!(body["registrationState"]["deviceId"], REGISTRATION_ID);
            }
            other => panic!("the genuine device was not assigned: {other:?}"),
        }
    }
}

#[test]
fn fuzz_160_mutated_leaf_certificates_at_dps_register_are_refused() {
    fuzz_chains(0, SEED);
}

#[test]
fn fuzz_160_mutated_intermediate_certificates_at_dps_register_are_refused() {
    // An intermediate that does not parse must refuse the registration: were it dropped from
    // the chain, the leaf would chain to the enrolled intermediate on its own and be accepted
    // where Azure answers 401.
    fuzz_chains(1, SEED ^ 1);
}

/// Registers `CASES` chains whose certificate `which` (0: leaf, 1: intermediate) is mutated.
fn fuzz_chains(which: usize, seed: u64) {
    let panics_before = watch_emulator_panics();
    let setup = setup();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rng = Rng::new(seed);
    let mut cases = Vec::with_capacity(CASES);
    for _ in 0..CASES {
        let mut chain = setup.genuine_chain();
        chain[which] = mutate(&mut rng, &chain[which]);
        cases.push(chain);
    }
    let (mut refused, mut unauthorized, mut other) = (0, 0, 0);
    runtime.block_on(async {
        setup.assert_genuine_device_is_assigned().await;
        // A few devices at a time, as a fleet would: the emulator serves them concurrently.
        for (batch_start, batch) in cases.chunks(4).enumerate() {
            let outcomes =
                futures_join(batch.iter().map(|chain| setup.register(chain.clone()))).await;
            for (i, (chain, outcome)) in batch.iter().zip(outcomes).enumerate() {
                let case = batch_start * 4 + i;
                let unparseable = chain.iter().any(|der| Certificate::from_der(der).is_err());
                match &outcome {
                    Outcome::Refused(why) => {
                        assert!(!why.is_empty(), "case {case}");
                        refused += 1;
                    }
                    Outcome::Reply(401, body) => {
                        assert_eq!(body["errorCode"], 401_002, "case {case}: {body}");
                        unauthorized += 1;
                    }
                    Outcome::Reply(status, body) => {
                        other += 1;
                        // Never an identity from a chain that does not parse, never another
                        // identity than the proven leaf's.
                        assert!(
                            !unparseable,
                            "case {case} (seed {seed:#x}, certificate {which}): an unparseable \
                             chain got {status} {body}"
                        );
                        if *status == 200 {
                            assert_eq!(
                                body["registrationState"]["deviceId"], REGISTRATION_ID,
                                "case {case}: {body}"
                            );
                        }
                    }
                }
            }
        }
        setup.assert_genuine_device_is_assigned().await;
    });
    println!(
        "{CASES} chains with certificate {which} mutated (seed {seed:#x}): {refused} refused at connect, \
         {unauthorized} refused with 401, {other} other answers"
    );
    assert_eq!(refused + unauthorized + other, CASES);
    assert_eq!(
        watch_emulator_panics(),
        panics_before,
        "the emulator panicked"
    );
}

/// Runs futures concurrently on the current task and returns their outputs in order.
async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut outputs: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if outputs[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => outputs[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.unwrap()).collect()
}
