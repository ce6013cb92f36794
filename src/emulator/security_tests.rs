//! The emulator tried as an attacker would, over real TLS and MQTT on 127.0.0.1: identities
//! come from what the handshake proved, the hub keeps devices inside their own identity, and no
//! client (idle, hostile or racing others) can hang or starve the emulator.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, Broker, Event, MqttOptions, Packet, PublishOptions, QoS, TlsConfiguration,
    Transport,
};

use super::tests::support::{
    Auth, Fixture, HubDevice, Outcome, ca_pair, client_tls, days, device_auth, fixture, fixture_on,
    provision, provisioned,
};
use super::*;
use crate::emulator::cloud::random_guid;
use crate::emulator::model::Attestation;
use crate::emulator::server::DEFAULT_MAX_CHAIN_LENGTH;
use crate::pki::{Credential, KeyAlgorithm};

/// A copy of a certificate that no longer parses as X.509 (its notBefore time holds a letter)
/// while TLS libraries, which read the validity only when they build a path, still take its
/// key from it: the first certificate of the impersonation attack.
fn unparseable(der: &[u8]) -> Vec<u8> {
    let mut done = false;
    let forged = reencode(der, &mut |tag, content| {
        (tag == 0x17 && !std::mem::replace(&mut done, true)).then(|| {
            let mut time = content.to_vec();
            time[0] = b'X';
            time
        })
    });
    assert!(done, "no UTCTime in the certificate");
    assert!(
        crate::pki::Certificate::from_der(&forged).is_err(),
        "the forged certificate must not parse, or the test tries nothing"
    );
    forged
}

/// Replaces the content of a primitive DER element: `(tag, content)` to the new content.
type Mutation<'a> = dyn FnMut(u8, &[u8]) -> Option<Vec<u8>> + 'a;

/// Re-encodes DER element by element (minimal lengths), replacing the content of each
/// primitive element for which `mutate(tag, content)` returns a new one.
fn reencode(mut der: &[u8], mutate: &mut Mutation<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let tag = der[0];
        let (length, header) = match der[1] {
            short if short < 0x80 => (usize::from(short), 2),
            long => {
                let n = usize::from(long & 0x7f);
                let length = der[2..2 + n]
                    .iter()
                    .fold(0usize, |acc, b| acc << 8 | usize::from(*b));
                (length, 2 + n)
            }
        };
        let content = &der[header..header + length];
        der = &der[header + length..];
        let content = if tag & 0x20 != 0 {
            reencode(content, mutate)
        } else {
            mutate(tag, content).unwrap_or_else(|| content.to_vec())
        };
        out.push(tag);
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else {
            let bytes: Vec<u8> = content
                .len()
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend(content);
    }
    out
}

/// A device certificate (and key) from a CA hierarchy of the attacker's own.
fn attacker(cn: &str) -> crate::pki::DeviceCredential {
    let (_, mallory_ca) = ca_pair();
    mallory_ca
        .issue_device(cn, KeyAlgorithm::EcP256, days(5))
        .unwrap()
}

/// Where devices dial: the emulator's trust anchor and MQTT port (owned, so tasks can keep it).
#[derive(Clone)]
struct Target {
    trust_pem: String,
    port: u16,
}

impl Target {
    fn of(f: &Fixture) -> Self {
        Target {
            trust_pem: f.emulator.trust_pem(),
            port: f.emulator.mqtt_port(),
        }
    }
}

/// Connects to a hub with any client id and any presented chain (raw DER) and the key of its
/// first certificate; `Err` when the hub refuses.
async fn hub_connect_raw(
    target: &Target,
    hub: &str,
    (client_id, device_id): (&str, &str),
    chain: Vec<Vec<u8>>,
    credential: &Credential,
    clean_session: bool,
) -> Result<HubDevice, String> {
    let config = client_tls(&target.trust_pem, Some((chain, credential.key())));
    let mut options = MqttOptions::new(client_id, Broker::tcp(hub, target.port));
    options.set_username(format!("{hub}/{device_id}/?api-version=2019-10-01"));
    options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
    options.set_keep_alive(30);
    options.set_clean_session(clean_session);
    let (client, mut events) = AsyncClient::builder(options).capacity(16).build();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                return Ok(HubDevice { client, events });
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no CONNACK".into()),
        }
    }
}

/// A device connecting as itself.
async fn hub_connect(
    target: &Target,
    hub: &str,
    device: &crate::pki::DeviceCredential,
    clean_session: bool,
) -> Result<HubDevice, String> {
    let id = device.registration_id();
    let chain = vec![device.credential().certificate().der().to_vec()];
    hub_connect_raw(
        target,
        hub,
        (id, id),
        chain,
        device.credential(),
        clean_session,
    )
    .await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn hub_refuses_a_victims_public_certificate_behind_an_unparseable_leaf() {
    let f = fixture(None);
    let (victim, hub) = provisioned(&f, "victim-hub");
    let mallory = attacker("mallory-hub");
    let forged = unparseable(mallory.credential().certificate().der());
    let victim_public = victim.credential().certificate().der().to_vec();
    runtime().block_on(async {
        let attempt = hub_connect_raw(
            &Target::of(&f),
            &hub,
            ("victim-hub", "victim-hub"),
            vec![forged, victim_public],
            mallory.credential(),
            true,
        )
        .await;
        assert!(
            attempt.is_err(),
            "a key proven for an unparseable certificate let the client in as the victim"
        );
        // The victim itself is not locked out.
        let own = HubDevice::connect(&f, &hub, &victim, true).await.unwrap();
        own.client.disconnect().await.unwrap();
    });
    let trace_free = f
        .emulator
        .hubs()
        .telemetry(&hub, Some("victim-hub"))
        .unwrap();
    assert!(trace_free.is_empty());
}

#[test]
fn dps_refuses_a_victims_public_certificate_behind_an_unparseable_leaf() {
    let f = fixture(None);
    f.sensors_group();
    let mallory = attacker("mallory-dps");
    let forged = unparseable(mallory.credential().certificate().der());
    let inter = f.inter.credential().certificate().der().to_vec();

    // A victim admitted by the group (its public certificate and the intermediate's).
    let group_victim = f.device("victim-group");
    let attack = Auth::X509Der {
        chain: vec![
            forged.clone(),
            group_victim.credential().certificate().der().to_vec(),
            inter.clone(),
        ],
        credential: mallory.credential(),
    };
    let (status, code, message) =
        provision(&f.emulator, &f.scope, "victim-group", attack).refusal();
    assert_eq!((status, code), (401, 401_002), "{message}");
    assert!(message.contains("cannot be parsed"), "{message}");

    // A victim with an individual enrollment on its own certificate.
    let individual_victim = f.device("victim-individual");
    f.emulator
        .cloud()
        .put_enrollment(
            "dps",
            "victim-individual",
            EnrollmentSpec {
                attestation: Some(Attestation::X509 {
                    ca_references: vec![],
                    certificates: vec![base64::Engine::encode(
                        &base64::engine::general_purpose::STANDARD,
                        individual_victim.credential().certificate().der(),
                    )],
                }),
                settings: Default::default(),
                device_id: None,
            },
            None,
        )
        .unwrap();
    let attack = Auth::X509Der {
        chain: vec![
            forged,
            individual_victim.credential().certificate().der().to_vec(),
        ],
        credential: mallory.credential(),
    };
    let (status, code, message) =
        provision(&f.emulator, &f.scope, "victim-individual", attack).refusal();
    assert_eq!((status, code), (401, 401_002), "{message}");

    let cloud = f.emulator.cloud();
    assert!(cloud.registration("dps", "victim-group").is_none());
    assert!(cloud.registration("dps", "victim-individual").is_none());
    // Both victims still provision with their own keys.
    provision(
        &f.emulator,
        &f.scope,
        "victim-group",
        device_auth(&group_victim),
    )
    .assigned_hub();
    provision(
        &f.emulator,
        &f.scope,
        "victim-individual",
        device_auth(&individual_victim),
    )
    .assigned_hub();
}

#[test]
fn chains_longer_than_the_limit_are_refused_while_other_devices_provision() {
    let f = fixture(None);
    f.sensors_group();
    let hostile = f.device("hostile-chain");
    // Leaf, then the intermediate over and over: every copy names the leaf's issuer, so a
    // chain builder that tries each candidate against each certificate does quadratic work.
    let inter = f.inter.credential().certificate().der().to_vec();
    let mut long_chain = vec![hostile.credential().certificate().der().to_vec()];
    long_chain.extend(std::iter::repeat_n(inter, 40));
    let hostile_chain = long_chain.clone();
    let emulator = &f.emulator;
    let scope = f.scope.clone();
    std::thread::scope(|threads| {
        let attackers: Vec<_> = (0..2)
            .map(|_| {
                let chain = hostile_chain.clone();
                let scope = scope.clone();
                let hostile = &hostile;
                threads.spawn(move || {
                    (0..3)
                        .map(|_| {
                            let auth = Auth::X509Der {
                                chain: chain.clone(),
                                credential: hostile.credential(),
                            };
                            provision(emulator, &scope, "hostile-chain", auth).refusal()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for i in 0..3 {
            let id = format!("honest-{i}");
            let device = f.device(&id);
            provision(emulator, &scope, &id, device_auth(&device)).assigned_hub();
        }
        for attacker in attackers {
            for (status, code, message) in attacker.join().unwrap() {
                assert_eq!((status, code), (401, 401_002), "{message}");
                assert!(
                    message.contains("41 certificates")
                        && message.contains(&format!("at most {DEFAULT_MAX_CHAIN_LENGTH}")),
                    "{message}"
                );
            }
        }
    });
    // At the limit, a chain is judged on its merits: the same device with a chain of exactly
    // the limit (duplicates of its intermediate) is admitted.
    let mut at_limit = long_chain;
    at_limit.truncate(DEFAULT_MAX_CHAIN_LENGTH);
    let auth = Auth::X509Der {
        chain: at_limit,
        credential: hostile.credential(),
    };
    provision(&f.emulator, &f.scope, "hostile-chain", auth).assigned_hub();
}

#[test]
fn dps_connections_that_never_register_do_not_keep_their_slots() {
    let emulator = Emulator::start(EmulatorConfig {
        port: 0,
        web_port: 0,
        amqp_port: 0,
        worker_threads: Some(2),
        poll_retry_after: 0,
        limits: Limits {
            connect_timeout: Duration::from_secs(1),
            max_connections: 3,
            ..Limits::default()
        },
        ..EmulatorConfig::default()
    })
    .unwrap();
    let f = fixture_on(emulator);
    f.sensors_group();
    let idle = f.device("idle-device");
    let credential = idle.credential();
    runtime().block_on(async {
        // Three clients take every slot: TLS, CONNECT, SUBSCRIBE, then silence.
        let mut silent = Vec::new();
        for _ in 0..3 {
            let chain = vec![credential.certificate().der().to_vec()];
            let config = client_tls(&f.emulator.trust_pem(), Some((chain, credential.key())));
            let mut options = MqttOptions::new(
                "idle-device",
                Broker::tcp("127.0.0.1", f.emulator.mqtt_port()),
            );
            options.set_username(format!(
                "{}/registrations/idle-device/api-version=2019-03-31",
                f.scope
            ));
            options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
            options.set_keep_alive(30);
            let (client, mut events) = AsyncClient::builder(options).capacity(4).build();
            loop {
                match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                    Ok(Ok(_)) => {}
                    other => panic!("the idle client could not connect: {other:?}"),
                }
            }
            client
                .subscribe("$dps/registrations/res/#", QoS::AtLeastOnce)
                .await
                .unwrap();
            silent.push((client, events));
        }
        // The emulator closes each of them once the connect deadline passes with no register
        // request (keep-alive 30 s alone would keep them for 45 s).
        for (_client, mut events) in silent {
            let closed = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    if events.poll().await.is_err() {
                        return;
                    }
                }
            })
            .await;
            assert!(closed.is_ok(), "an idle DPS connection was kept open");
        }
    });
    provision(&f.emulator, &f.scope, "idle-device", device_auth(&idle)).assigned_hub();
}

#[test]
fn hub_and_dps_refuse_a_client_id_that_is_not_the_identity() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "named-device");
    let credential = device.credential();
    let chain = vec![credential.certificate().der().to_vec()];
    runtime().block_on(async {
        let refused = hub_connect_raw(
            &Target::of(&f),
            &hub,
            ("someone-else", "named-device"),
            chain.clone(),
            credential,
            true,
        )
        .await;
        assert!(refused.is_err(), "a foreign client id was accepted");
        let accepted = hub_connect_raw(
            &Target::of(&f),
            &hub,
            ("named-device", "named-device"),
            chain,
            credential,
            true,
        )
        .await;
        assert!(accepted.is_ok(), "{:?}", accepted.err());
    });
}

#[test]
fn a_method_is_answered_only_by_the_device_it_was_sent_to() {
    let f = fixture(None);
    let (target, hub) = provisioned(&f, "method-target");
    let (other, _) = provisioned(&f, "method-other");
    let hubs = f.emulator.hubs().clone();
    runtime().block_on(async {
        let mut target_client = HubDevice::connect(&f, &hub, &target, true).await.unwrap();
        target_client.subscribe_all("method-target").await;
        let mut other_client = HubDevice::connect(&f, &hub, &other, true).await.unwrap();
        other_client.subscribe_all("method-other").await;
        let call = {
            let hubs = hubs.clone();
            let hub = hub.clone();
            tokio::spawn(async move {
                hubs.invoke_method(
                    &hub,
                    "method-target",
                    "open",
                    serde_json::json!({}),
                    Duration::from_secs(5),
                )
                .await
            })
        };
        let (topic, _) = target_client.next_publish().await.unwrap();
        let rid = topic
            .strip_prefix("$iothub/methods/POST/open/?$rid=")
            .unwrap()
            .to_string();
        // The other device learns the request id and answers first.
        other_client
            .client
            .publish(
                format!("$iothub/methods/res/200/?$rid={rid}"),
                r#"{"forged":true}"#,
                PublishOptions::at_least_once(),
            )
            .await
            .unwrap();
        other_client
            .until(|p| matches!(p, Packet::PubAck(_)))
            .await
            .unwrap();
        assert!(!call.is_finished(), "the forged answer completed the call");
        target_client
            .client
            .publish(
                format!("$iothub/methods/res/202/?$rid={rid}"),
                r#"{"real":true}"#,
                PublishOptions::at_least_once(),
            )
            .await
            .unwrap();
        let (acked, answer) = tokio::join!(
            target_client.until(|p| matches!(p, Packet::PubAck(_))),
            call
        );
        acked.unwrap();
        assert_eq!(
            answer.unwrap().unwrap(),
            (202, serde_json::json!({"real": true}))
        );
    });
}

#[test]
fn a_publish_to_a_forbidden_topic_closes_the_connection_unacknowledged() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "topic-device");
    let (_, _) = provisioned(&f, "topic-neighbour");
    runtime().block_on(async {
        for topic in [
            "devices/topic-neighbour/messages/events/",
            "$iothub/twin/PATCH/properties/desired/?$rid=1",
            "$iothub/methods/res/not-a-status/?$rid=1",
            "anything/else",
        ] {
            let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
            d.client
                .publish(topic, "{}", PublishOptions::at_least_once())
                .await
                .unwrap();
            let outcome = d.until(|p| matches!(p, Packet::PubAck(_))).await;
            assert!(
                outcome.is_err(),
                "{topic}: acknowledged instead of closing the connection"
            );
        }
    });
    assert!(
        f.emulator
            .hubs()
            .telemetry(&hub, Some("topic-neighbour"))
            .unwrap()
            .is_empty()
    );
}

/// How long the stress test runs.
const STRESS: Duration = Duration::from_secs(20);
/// How long a probe may take before it counts as a miss; two misses in a row fail the test (a
/// hang, not a slow moment of a loaded machine).
const PROBE_DEADLINE: Duration = Duration::from_secs(1);

/// One device of the stress test: connects again and again; re-subscribers (persistent
/// sessions) subscribe and unsubscribe C2D several times per connection while messages are
/// queued, churners connect, subscribe once and leave (half of them without DISCONNECT).
async fn stress_device(
    target: Target,
    hubs: Arc<hub::HubEngine>,
    (device, hub): (crate::pki::DeviceCredential, String),
    resubscriber: bool,
    polite: bool,
    stop: Arc<AtomicBool>,
) {
    let id = device.registration_id().to_string();
    let c2d = format!("devices/{id}/messages/devicebound/#");
    while !stop.load(Ordering::Relaxed) {
        // Queue C2D messages so each subscription and each disconnect races a delivery (the
        // queue refuses past 50: that is fine).
        for _ in 0..3 {
            let _ = hubs.send_c2d(&hub, &id, b"x", vec![]);
        }
        let Ok(mut d) = hub_connect(&target, &hub, &device, !resubscriber).await else {
            continue;
        };
        for _ in 0..if resubscriber { 5 } else { 1 } {
            for filter in [
                c2d.as_str(),
                "$iothub/methods/POST/#",
                "$iothub/twin/PATCH/properties/desired/#",
            ] {
                let _ = d.client.subscribe(filter, QoS::AtLeastOnce).await;
            }
            let _ = d.until(|p| matches!(p, Packet::SubAck(_))).await;
            let _ = d.client.unsubscribe(&c2d).await;
            let _ = d.until(|p| matches!(p, Packet::UnsubAck(_))).await;
        }
        if polite {
            let _ = d.client.disconnect().await;
            let _ = d.until(|_| false).await;
        }
    }
}

/// Desired patches, direct methods and C2D from the service side, round robin over `ids`.
async fn stress_service(
    hubs: Arc<hub::HubEngine>,
    hub: String,
    ids: Vec<String>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = &ids[(n as usize) % ids.len()];
        let patch = serde_json::json!({"n": n});
        let _ = hubs.update_desired(&hub, id, patch.as_object().unwrap());
        let _ = hubs
            .invoke_method(
                &hub,
                id,
                "ping",
                serde_json::json!(n),
                Duration::from_millis(50),
            )
            .await;
        let _ = hubs.send_c2d(&hub, id, b"svc", vec![]);
        tokio::task::yield_now().await;
    }
}

#[test]
fn no_hang_while_devices_resubscribe_with_c2d_queued_churn_and_get_service_calls() {
    let f = fixture(None);
    let target = Target::of(&f);
    let ids: Vec<String> = (0..8).map(|i| format!("stress-{i}")).collect();
    let devices: Vec<_> = ids.iter().map(|id| provisioned(&f, id)).collect();
    // Every device on one hub, so their sessions share the hub's maps.
    let hub = devices[0].1.clone();
    let devices: Vec<_> = devices.into_iter().filter(|(_, h)| *h == hub).collect();
    let ids: Vec<String> = devices
        .iter()
        .map(|(d, _)| d.registration_id().to_string())
        .collect();
    assert!(
        ids.len() >= 2,
        "hashed allocation put too few devices on {hub}"
    );
    let probe_device = loop {
        let (device, assigned) = provisioned(&f, &format!("stress-probe-{}", random_guid()));
        if assigned == hub {
            break device;
        }
    };
    let record = f
        .emulator
        .cloud()
        .hubs()
        .into_iter()
        .find(|h| h.host_name == hub)
        .unwrap();
    // The REST probe is a plain HTTPS GET of a twin with the owner's SAS token: the emulator's
    // tests drive it as a peer would, not through dpskit's own service client.
    let twin_url = format!(
        "https://{hub}:{}/twins/{}?api-version=2021-04-12",
        f.emulator.web_port(),
        ids[0]
    );
    let token = crate::sas::build_token(
        &hub,
        &record.primary_key,
        crate::pki::issue::now() + 3600,
        Some("iothubowner"),
    )
    .unwrap();
    let service = reqwest::Client::builder()
        .use_preconfigured_tls(client_tls(&f.emulator.trust_pem(), None))
        .build()
        .unwrap();
    let hubs = f.emulator.hubs().clone();
    let stop = Arc::new(AtomicBool::new(false));

    // The load runs on its own runtime; the probe on this thread's, so a hang of the emulator
    // (or of an engine call the load makes) cannot stop the probe from noticing it.
    let load = runtime();
    for (i, assigned) in devices.into_iter().enumerate() {
        load.spawn(stress_device(
            target.clone(),
            hubs.clone(),
            assigned,
            i % 2 == 0,
            i % 4 != 3,
            stop.clone(),
        ));
    }
    load.spawn(stress_service(
        hubs.clone(),
        hub.clone(),
        ids.clone(),
        stop.clone(),
    ));
    let probe = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (probes, misses, worst, failure) = probe.block_on(async {
        let started = Instant::now();
        let (mut probes, mut misses, mut consecutive) = (0u32, 0u32, 0u32);
        let mut worst = Duration::ZERO;
        while started.elapsed() < STRESS {
            probes += 1;
            let began = Instant::now();
            let answered = tokio::time::timeout(PROBE_DEADLINE, async {
                let twin = service
                    .get(&twin_url)
                    .header("Authorization", &token)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !twin.status().is_success() {
                    return Err(format!("twin GET answered {}", twin.status()));
                }
                let d = hub_connect(&target, &hub, &probe_device, true).await?;
                let _ = d.client.disconnect().await;
                Ok::<_, String>(())
            })
            .await;
            worst = worst.max(began.elapsed());
            match answered {
                Ok(Ok(())) => consecutive = 0,
                other => {
                    misses += 1;
                    consecutive += 1;
                    if consecutive >= 2 {
                        return (probes, misses, worst, Some(format!("{other:?}")));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (probes, misses, worst, None)
    });
    stop.store(true, Ordering::Relaxed);
    // A hung load must not hang the test as well.
    load.shutdown_timeout(Duration::from_secs(5));
    println!("stress: {probes} probes over {STRESS:?}, {misses} single misses, slowest {worst:?}");
    if let Some(failure) = failure {
        panic!(
            "the emulator stopped answering REST and new MQTT connections (probe {probes}: {failure})"
        );
    }
    assert!(probes >= 20, "only {probes} probes ran");
    // Every queue is still readable and within its bound.
    for id in &ids {
        let queue: Vec<hub::C2dMessage> = f.emulator.hubs().c2d_queue(&hub, id).unwrap();
        assert!(queue.len() <= hub::MAX_C2D_QUEUE);
    }
}

#[test]
fn the_outcome_of_an_unparseable_chain_is_never_a_device() {
    // Refused at CONNECT or at register, never admitted as anyone.
    let f = fixture(None);
    f.sensors_group();
    let mallory = attacker("mallory-only");
    let forged = unparseable(mallory.credential().certificate().der());
    let auth = Auth::X509Der {
        chain: vec![forged],
        credential: mallory.credential(),
    };
    match provision(&f.emulator, &f.scope, "mallory-only", auth) {
        Outcome::Refused(_) => {}
        outcome => assert_eq!(outcome.refusal().0, 401),
    }
}

#[test]
fn a_device_that_stops_reading_is_disconnected_instead_of_queueing_without_bound() {
    let f = fixture(None);
    let (device, hub) = provisioned(&f, "slow-reader");
    let hubs = f.emulator.hubs().clone();
    runtime().block_on(async {
        let mut d = HubDevice::connect(&f, &hub, &device, true).await.unwrap();
        d.client
            .subscribe("$iothub/twin/PATCH/properties/desired/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        d.until(|p| matches!(p, Packet::SubAck(_))).await.unwrap();
        // From here on nobody reads the device's socket. Each patch is ~30 KB; 2,000 of them
        // are far more than the kernel's socket buffers and the session's queue hold.
        let filler = "x".repeat(30_000);
        let mut patches = 0;
        while hubs.is_connected(&hub, "slow-reader") && patches < 2_000 {
            patches += 1;
            let patch = serde_json::json!({"blob": filler, "n": patches});
            hubs.update_desired(&hub, "slow-reader", patch.as_object().unwrap())
                .unwrap();
            if patches % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while hubs.is_connected(&hub, "slow-reader") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !hubs.is_connected(&hub, "slow-reader"),
            "a device that reads nothing was kept with {patches} patches queued"
        );
        // The twin itself took every patch.
        let twin = hubs.service_twin(&hub, "slow-reader").unwrap();
        assert_eq!(twin["properties"]["desired"]["n"], patches);
        drop(d);
    });
}

#[test]
fn dps_closes_a_connection_that_publishes_to_a_topic_it_does_not_serve() {
    let f = fixture(None);
    f.sensors_group();
    let device = f.device("dps-topic");
    let credential = device.credential();
    let chain = vec![credential.certificate().der().to_vec()];
    let config = client_tls(&f.emulator.trust_pem(), Some((chain, credential.key())));
    let mut options = MqttOptions::new(
        "dps-topic",
        Broker::tcp("127.0.0.1", f.emulator.mqtt_port()),
    );
    options.set_username(format!(
        "{}/registrations/dps-topic/api-version=2019-03-31",
        f.scope
    ));
    options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
    let (client, events) = AsyncClient::builder(options).capacity(4).build();
    let mut d = HubDevice { client, events };
    runtime().block_on(async {
        d.until(|p| matches!(p, Packet::ConnAck(_))).await.unwrap();
        d.client
            .publish(
                "$dps/registrations/PUT/something-else/?$rid=1",
                "{}",
                PublishOptions::at_least_once(),
            )
            .await
            .unwrap();
        assert!(
            d.until(|p| matches!(p, Packet::PubAck(_))).await.is_err(),
            "DPS acknowledged a publish to a topic it does not serve"
        );
    });
}
