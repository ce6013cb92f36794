//! Deterministic fuzz of the device-side MQTT reader: what a hostile (or broken) hub could send
//! after CONNACK, fed to the connection's serve loop in place of the TLS stream. Valid traffic
//! (acknowledgements, C2D, methods, twin answers, desired patches, pings) is mutated with
//! lying lengths, flips, cuts and splices, and cut into random read sizes. Every case must end
//! with a typed error (protocol or transport), never a panic, with the read buffer bounded by
//! the largest packet the device accepts.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::{Packet, PubAck, Publish, QoS, SubAck, SubscribeReasonCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use super::connection::{
    Command, Ending, InFlight, MAX_INCOMING, PublishRequest, Settings, Shared, Wire, serve,
};
use super::{ClosedReason, ConnectionState, Inbox, lock};
use crate::error::Error;
use crate::fuzz::{Rng, mutate};

const SEED: u64 = 0xD3F1_CE5E_ED00_0013;
const CASES: usize = 3000;
const DEVICE: &str = "dev-1";

/// A hub that sends `input` in reads of random sizes, then ends the stream; what the device
/// writes is counted and dropped.
struct Hostile {
    input: Vec<u8>,
    at: usize,
    rng: Rng,
    written: usize,
}

impl AsyncRead for Hostile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let left = this.input.len() - this.at;
        let n = left.min(1 + this.rng.below(96)).min(buf.remaining());
        buf.put_slice(&this.input[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Hostile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.written += buf.len();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn encode(packets: &[Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for p in packets {
        p.write(&mut out, usize::MAX).unwrap();
    }
    out.to_vec()
}

fn publish(topic: &str, payload: &[u8], pkid: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: if pkid == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        },
        retain: false,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        pkid,
        payload: Bytes::copy_from_slice(payload),
    })
}

/// Traffic a hub could send a device after CONNACK, in a random order and amount.
fn valid_traffic(rng: &mut Rng) -> Vec<u8> {
    let menu = [
        Packet::PubAck(PubAck::new(1)),
        Packet::PubAck(PubAck::new(2)),
        Packet::PubAck(PubAck::new(3)),
        Packet::SubAck(SubAck::new(
            4,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        )),
        Packet::PingResp,
        publish(
            &format!(
                "devices/{DEVICE}/messages/devicebound/%24.mid=m1&%24.to=%2Fdevices%2F{DEVICE}&color=red"
            ),
            b"hello",
            10,
        ),
        publish("$iothub/methods/POST/reboot/?$rid=7", br#"{"delay":1}"#, 0),
        publish(
            "$iothub/twin/res/200/?$rid=1",
            br#"{"desired":{},"reported":{}}"#,
            0,
        ),
        publish(
            "$iothub/twin/PATCH/properties/desired/?$version=2",
            br#"{"fan":true,"$version":2}"#,
            11,
        ),
        publish("$iothub/twin/res/204/?$rid=2&$version=3", b"", 0),
    ];
    let n = 1 + rng.below(8);
    let packets: Vec<Packet> = (0..n).map(|_| rng.pick(&menu).clone()).collect();
    encode(&packets)
}

fn settings() -> Settings {
    Settings {
        host: "hub.localhost".into(),
        port: 8883,
        via: Default::default(),
        client_id: DEVICE.into(),
        username: format!("hub.localhost/{DEVICE}/?api-version=2021-04-12"),
        sas: None,
        // Long enough that no ping is due while a case runs.
        keep_alive: 600,
        clean_session: false,
        max_in_flight: 8,
        connect_timeout: Duration::from_secs(5),
        reconnect: false,
        resubscribe: None,
        tls: Arc::new(
            rustls::ClientConfig::builder_with_provider(crate::transport::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
    }
}

/// What one case delivered to the application.
#[derive(Default)]
struct Delivered {
    c2d: usize,
    methods: usize,
    desired: usize,
    acknowledged: usize,
}

/// Serves `input` as the hub's side of a connection; the ending and what reached the device.
async fn run_case(settings: &Settings, input: Vec<u8>, rng: Rng) -> (Ending, Delivered, usize) {
    let inbox = Arc::new(Inbox::default());
    let (c2d_tx, mut c2d) = mpsc::unbounded_channel();
    let (desired_tx, mut desired) = mpsc::unbounded_channel();
    let (methods_tx, mut methods) = mpsc::unbounded_channel();
    *lock(&inbox.c2d) = Some(c2d_tx);
    *lock(&inbox.desired) = Some(desired_tx);
    *lock(&inbox.methods) = Some(methods_tx);
    let (twin_tx, _twin_rx) = oneshot::channel();
    lock(&inbox.twin_waiters).insert("1".to_string(), twin_tx);
    let closed: ClosedReason = Arc::default();
    let shared = Shared {
        inbox,
        state: Arc::new(Mutex::new(ConnectionState::Connected)),
        closed,
        reconnects: Arc::default(),
        close_requested: Arc::default(),
    };
    let (commands_tx, mut commands) = mpsc::channel(8);
    // Three publishes in flight, so the hub's PUBACKs have something to match.
    let mut acks = Vec::new();
    for i in 0..3 {
        let (done, ack) = oneshot::channel();
        commands_tx
            .send(Command::Publish(Box::new(PublishRequest {
                topic: format!("devices/{DEVICE}/messages/events/n={i}"),
                payload: Bytes::from_static(b"{}"),
                done: Some(done),
            })))
            .await
            .unwrap();
        acks.push(ack);
    }
    let mut wire = Wire::new(Hostile {
        input,
        at: 0,
        rng,
        written: 0,
    });
    let mut outstanding = InFlight::default();
    let mut next_pkid = 0;
    let ending = tokio::time::timeout(
        Duration::from_secs(10),
        serve(
            settings,
            &mut wire,
            &mut commands,
            &shared,
            &mut outstanding,
            &mut next_pkid,
            None,
        ),
    )
    .await
    .expect("the reader hung on a finished stream");
    drop(commands_tx);
    let mut delivered = Delivered::default();
    while c2d.try_recv().is_ok() {
        delivered.c2d += 1;
    }
    while desired.try_recv().is_ok() {
        delivered.desired += 1;
    }
    while methods.try_recv().is_ok() {
        delivered.methods += 1;
    }
    for mut ack in acks {
        if matches!(ack.try_recv(), Ok(Ok(()))) {
            delivered.acknowledged += 1;
        }
    }
    (ending, delivered, wire.0.read_capacity())
}

#[test]
fn fuzz_3000_hostile_hub_streams_end_in_typed_errors() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let settings = settings();
    let mut rng = Rng::new(SEED);
    let (mut protocol, mut transport) = (0, 0);
    let mut totals = Delivered::default();
    runtime.block_on(async {
        // The unmutated traffic is served in full: the reader works, so refusals below are the
        // mutations' doing.
        let mut control_rng = Rng::new(SEED ^ 1);
        let (ending, delivered, _) =
            run_case(&settings, valid_traffic(&mut control_rng), Rng::new(7)).await;
        assert!(
            matches!(ending, Ending::Lost(Error::Transport(ref m)) if m.to_string().contains("closed the connection")),
            "the unmutated stream did not end at its end"
        );
        assert!(delivered.c2d + delivered.methods + delivered.desired + delivered.acknowledged > 0);
        for case in 0..CASES {
            let input = if rng.one_in(10) {
                // Noise, not MQTT at all.
                let n = rng.below(512);
                rng.bytes(n)
            } else {
                let mut input = valid_traffic(&mut rng);
                for _ in 0..1 + rng.below(3) {
                    input = mutate(&mut rng, &input);
                }
                input
            };
            let chunks = Rng::new(rng.next_u64());
            let (ending, delivered, capacity) = run_case(&settings, input, chunks).await;
            match ending {
                Ending::Lost(Error::Protocol(_)) => protocol += 1,
                Ending::Lost(Error::Transport(_)) => transport += 1,
                Ending::Lost(other) => panic!("case {case} (seed {SEED:#x}): untyped end {other:?}"),
                Ending::Closed | Ending::Renew => {
                    panic!("case {case} (seed {SEED:#x}): the device did not close")
                }
            }
            assert!(
                capacity <= 2 * MAX_INCOMING,
                "case {case}: the read buffer grew to {capacity} bytes"
            );
            totals.c2d += delivered.c2d;
            totals.methods += delivered.methods;
            totals.desired += delivered.desired;
            totals.acknowledged += delivered.acknowledged;
        }
    });
    println!(
        "{CASES} hostile hub streams (seed {SEED:#x}): {protocol} malformed, {transport} cut \
         short; delivered {} C2D, {} methods, {} desired patches, {} acknowledgements",
        totals.c2d, totals.methods, totals.desired, totals.acknowledged
    );
    assert_eq!(protocol + transport, CASES);
    // Both kinds of ending happen: the mutations reach the parser and the stream's end.
    assert!(protocol > 0 && transport > 0);
}

#[test]
fn a_hub_announcing_a_huge_packet_is_refused_before_its_body_is_buffered() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let settings = settings();
    runtime.block_on(async {
        // PUBLISH claiming 268 MB (the largest MQTT length), then a little data.
        let mut input = vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F];
        input.extend(std::iter::repeat_n(b'x', 4096));
        let (ending, _, capacity) = run_case(&settings, input, Rng::new(1)).await;
        assert!(
            matches!(ending, Ending::Lost(Error::Protocol(ref m)) if m.to_string().contains("malformed packet")),
            "a 268 MB packet was not refused"
        );
        assert!(capacity < 64 * 1024, "buffered {capacity} bytes of it");
        // Just under the limit, then the stream ends: the wait is bounded by MAX_INCOMING.
        let mut input = vec![0x30];
        let mut len = MAX_INCOMING - 16;
        while len > 0x7F {
            input.push((len as u8 & 0x7F) | 0x80);
            len >>= 7;
        }
        input.push(len as u8);
        input.extend(std::iter::repeat_n(b'y', 100_000));
        let (ending, _, capacity) = run_case(&settings, input, Rng::new(2)).await;
        assert!(
            matches!(ending, Ending::Lost(Error::Transport(_))),
            "a cut packet did not end the connection"
        );
        assert!(capacity <= 2 * MAX_INCOMING, "buffered {capacity} bytes");
    });
}
