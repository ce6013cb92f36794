//! Deterministic fuzz of the provisioning client's reply handling: DPS replies (topics with
//! statuses and retry-after, JSON bodies) mutated byte-wise and structurally, read as the
//! device reads them. Each must become a decision DPS's protocol allows (retry, poll,
//! assigned) or a typed error, never a panic; "assigned" only from a 2xx reply saying so.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

use super::*;
use crate::fuzz::{Rng, mutate};
use crate::pki::{CaOptions, CertificateAuthority, KeyAlgorithm, Validity};

const SEED: u64 = 0xD95_F0CC_2026_0013;
const CASES: usize = 20_000;

fn topics() -> Vec<String> {
    [
        "$dps/registrations/res/202/?$rid=1&retry-after=3",
        "$dps/registrations/res/200/?$rid=2",
        "$dps/registrations/res/401/?$rid=1",
        "$dps/registrations/res/429/?$rid=1&retry-after=1",
        "$dps/registrations/res/500/?$rid=3",
        "$dps/registrations/res/202/?$rid=4&Retry-After=4294967295",
    ]
    .iter()
    .map(|t| t.to_string())
    .collect()
}

fn bodies() -> Vec<Value> {
    vec![
        json!({"operationId": "4.f0a1.3", "status": "assigning"}),
        json!({"operationId": "4.f0a1.3", "status": "assigned", "registrationState": {
            "registrationId": "dev-1", "assignedHub": "127.0.0.2", "deviceId": "dev-1",
            "status": "assigned", "substatus": "initialAssignment", "etag": "IjEi",
            "createdDateTimeUtc": "2026-12-06T23:00:00.0000000Z",
            "lastUpdatedDateTimeUtc": "2026-12-06T23:00:00.0000000Z",
            "payload": {"k": [1, 2, 3]}}}),
        json!({"errorCode": 401_002, "trackingId": "t", "message": "Unauthorized",
               "timestampUtc": "2026-12-06T23:00:00.000Z"}),
        json!({"operationId": "4.f0a1.3", "status": "failed", "registrationState": {
            "registrationId": "dev-1", "status": "failed", "errorCode": 400_209,
            "errorMessage": "Custom allocation failed"}}),
        json!({"operationId": "4.f0a1.3", "status": "unassigned"}),
    ]
}

/// A value of a random JSON type (the types a hostile service could swap in).
fn random_value(rng: &mut Rng) -> Value {
    match rng.below(7) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => json!(rng.next_u64()),
        3 => json!(-(rng.below(1 << 20) as i64)),
        4 => json!(f64::from(rng.byte()) / 3.0),
        5 => json!(["assigned", {"status": "assigned"}]),
        _ => {
            let n = rng.below(12);
            Value::String(String::from_utf8_lossy(&rng.bytes(n)).into_owned())
        }
    }
}

/// Replaces, removes or retypes one value somewhere in `value`.
fn mutate_json(rng: &mut Rng, value: &mut Value) {
    match value {
        Value::Object(map) if !map.is_empty() && !rng.one_in(4) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = rng.pick(&keys).clone();
            match rng.below(4) {
                0 => {
                    map.remove(&key);
                }
                1 => {
                    map.insert(key, random_value(rng));
                }
                _ => {
                    if let Some(inner) = map.get_mut(&key) {
                        mutate_json(rng, inner);
                    }
                }
            }
        }
        _ => *value = random_value(rng),
    }
}

fn auths() -> Vec<DeviceAuth> {
    let ca = CertificateAuthority::create_root(
        "Fuzz Root",
        &CaOptions {
            algorithm: KeyAlgorithm::EcP256,
            validity: Validity::days(2, None).unwrap(),
            path_length: None,
            organization: None,
        },
    )
    .unwrap();
    let device = ca
        .issue_device(
            "dev-1",
            KeyAlgorithm::EcP256,
            Validity::days(1, None).unwrap(),
        )
        .unwrap();
    vec![
        DeviceAuth::SymmetricKey("a2V5".into()),
        DeviceAuth::X509(device.shared_credential()),
    ]
}

fn status_of(topic: &[u8]) -> Option<u16> {
    parse_response_topic(&String::from_utf8_lossy(topic))
        .ok()
        .map(|(s, _)| s)
}

#[test]
fn fuzz_20000_dps_replies_become_decisions_or_typed_errors() {
    let mut rng = Rng::new(SEED);
    let (topics, bodies, auths) = (topics(), bodies(), auths());
    // The unmutated assigned reply is read as assigned: the fuzz starts from working input.
    let assigned = interpret(
        "dev-1",
        &auths[0],
        topics[1].as_bytes(),
        bodies[1].to_string().as_bytes(),
    )
    .unwrap();
    assert!(
        matches!(assigned, Reply::Assigned(ref r, _) if r.device_id.as_deref() == Some("dev-1"))
    );
    let mut counts = [0usize; 5];
    for case in 0..CASES {
        let mut topic = rng.pick(&topics).clone().into_bytes();
        let mut body = rng.pick(&bodies).clone();
        let mut payload = None;
        match rng.below(4) {
            0 => topic = mutate(&mut rng, &topic),
            1 => mutate_json(&mut rng, &mut body),
            2 => payload = Some(mutate(&mut rng, body.to_string().as_bytes())),
            _ => {
                topic = mutate(&mut rng, &topic);
                mutate_json(&mut rng, &mut body);
            }
        }
        let payload = payload.unwrap_or_else(|| body.to_string().into_bytes());
        let auth = rng.pick(&auths);
        let what = || {
            format!(
                "case {case} (seed {SEED:#x}): topic {:?}, body {:?}",
                String::from_utf8_lossy(&topic),
                String::from_utf8_lossy(&payload)
            )
        };
        match interpret("dev-1", auth, &topic, &payload) {
            Ok(Reply::Assigned(result, _)) => {
                counts[0] += 1;
                let status = status_of(&topic).unwrap();
                assert!(status < 300, "{}", what());
                let body: Value = serde_json::from_slice(&payload).unwrap();
                assert_eq!(body["status"], "assigned", "{}", what());
                assert_eq!(result.status, "assigned");
            }
            Ok(Reply::Assigning { retry_after, .. }) => {
                counts[1] += 1;
                assert!(status_of(&topic).unwrap() < 300, "{}", what());
                // Whatever the service says, the wait is a valid duration.
                let _ = Duration::from_secs(retry_after.unwrap_or(2).into());
            }
            Ok(Reply::Throttled { retry_after }) => {
                counts[2] += 1;
                let status = status_of(&topic).unwrap();
                assert!(status == 429 || status >= 500, "{}", what());
                let _ = backoff(retry_after, rng.next_u64() as u32);
            }
            Err(Error::Protocol(_)) => counts[3] += 1,
            Err(Error::RegistrationFailed { message, .. }) => {
                counts[4] += 1;
                assert!(message.contains("dev-1"), "{}", what());
            }
            Err(other) => panic!("{}: untyped error {other:?}", what()),
        }
    }
    println!(
        "{CASES} mutated DPS replies (seed {SEED:#x}): {} assigned, {} assigning, {} throttled, \
         {} protocol errors, {} refusals",
        counts[0], counts[1], counts[2], counts[3], counts[4]
    );
    // Every kind of decision was reached: the mutations do not all fail the same way.
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
}

/// Cases of the end-to-end run: each lasts at most `E2E_TIMEOUT`, all run at once.
const E2E_CASES: usize = 48;
const E2E_TIMEOUT: Duration = Duration::from_millis(1500);

/// A hostile DPS on loopback: a valid CONNACK and SUBACK, then, to every request, a reply
/// from the menu mutated in its topic or body, or as a whole encoded packet.
async fn hostile_dps(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    mut rng: Rng,
) {
    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok((tcp, _)) = listener.accept().await else {
        return;
    };
    let Ok(mut tls) = acceptor.accept(tcp).await else {
        return;
    };
    let (topics, bodies) = (topics(), bodies());
    let mut read = BytesMut::new();
    loop {
        let packet = loop {
            match rumqttc::Packet::read(&mut read, 64 * 1024) {
                Ok(packet) => break packet,
                Err(rumqttc::Error::InsufficientBytes(_)) => {}
                Err(_) => return,
            }
            match tls.read_buf(&mut read).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let mut out = BytesMut::new();
        let answer = match packet {
            rumqttc::Packet::Connect(..) => vec![rumqttc::Packet::ConnAck(rumqttc::ConnAck::new(
                rumqttc::ConnectReturnCode::Success,
                false,
            ))],
            rumqttc::Packet::Subscribe(s) => vec![rumqttc::Packet::SubAck(rumqttc::SubAck::new(
                s.pkid,
                vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)],
            ))],
            rumqttc::Packet::Publish(p) => {
                let mut topic = rng.pick(&topics).clone().into_bytes();
                let mut body = rng.pick(&bodies).clone();
                match rng.below(3) {
                    0 => topic = mutate(&mut rng, &topic),
                    1 => mutate_json(&mut rng, &mut body),
                    _ => {}
                }
                vec![
                    rumqttc::Packet::PubAck(rumqttc::PubAck::new(p.pkid)),
                    rumqttc::Packet::Publish(rumqttc::Publish {
                        dup: false,
                        qos: QoS::AtMostOnce,
                        retain: false,
                        topic: topic.into(),
                        pkid: 0,
                        payload: body.to_string().into_bytes().into(),
                    }),
                ]
            }
            rumqttc::Packet::PingReq => vec![rumqttc::Packet::PingResp],
            _ => return,
        };
        for packet in answer {
            if packet.write(&mut out, usize::MAX).is_err() {
                return;
            }
        }
        let mut bytes = out.to_vec();
        if rng.one_in(3) {
            bytes = mutate(&mut rng, &bytes);
        }
        if tls.write_all(&bytes).await.is_err() || tls.flush().await.is_err() {
            return;
        }
    }
}

#[test]
fn fuzz_48_hostile_dps_exchanges_end_in_a_result_or_a_typed_error() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ca = CertificateAuthority::create_root(
        "Hostile DPS Root",
        &CaOptions {
            algorithm: KeyAlgorithm::EcP256,
            validity: Validity::days(2, None).unwrap(),
            path_length: Some(0),
            organization: None,
        },
    )
    .unwrap();
    let server = ca
        .issue_server(&["127.0.0.1".into()], Validity::days(1, None).unwrap())
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(crate::transport::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(server.certificate().der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server.key().pkcs8_der().to_vec())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let trust = Trust::from_pem(ca.credential().certificate_pem().as_bytes()).unwrap();
    let mut rng = Rng::new(SEED ^ 0xE2E);
    let outcomes = runtime.block_on(async {
        let mut tasks = Vec::new();
        for case in 0..E2E_CASES {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
                .await
                .unwrap();
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(hostile_dps(
                listener,
                acceptor.clone(),
                Rng::new(rng.next_u64()),
            ));
            let request = ProvisioningRequest {
                host: "127.0.0.1".into(),
                port,
                via: Default::default(),
                id_scope: "0ne00000F00".into(),
                registration_id: format!("dev-{case}"),
                auth: DeviceAuth::SymmetricKey("a2V5".into()),
                payload: None,
                timeout: E2E_TIMEOUT,
                csr: None,
                clock: crate::clock::Clock::system(),
            };
            let trust = trust.clone();
            tasks.push(tokio::spawn(
                async move { provision(&request, &trust).await },
            ));
        }
        let mut outcomes = Vec::new();
        for (case, task) in tasks.into_iter().enumerate() {
            // A panic in the client fails the join: the case number says which.
            let result = tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .unwrap_or_else(|_| panic!("case {case} hung past its own timeout"))
                .unwrap_or_else(|e| panic!("case {case} (seed {SEED:#x}): {e}"));
            outcomes.push(result);
        }
        outcomes
    });
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for (case, outcome) in outcomes.iter().enumerate() {
        let kind = match outcome {
            Ok(result) => {
                assert_eq!(result.status, "assigned", "case {case}");
                "assigned"
            }
            Err(Error::Timeout(_)) => "timeout",
            Err(Error::Protocol(_)) => "protocol",
            Err(Error::RegistrationFailed { .. }) => "refused",
            Err(Error::Transport(_)) => "transport",
            Err(Error::Service(_)) => "service",
            Err(other) => panic!("case {case}: unexpected error {other:?}"),
        };
        *counts.entry(kind).or_default() += 1;
    }
    println!("{E2E_CASES} hostile DPS exchanges (seed {SEED:#x}): {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), E2E_CASES);
    // The exchanges did not all fail the same way: the replies reached the reply handling.
    assert!(counts.len() >= 3, "{counts:?}");
}
