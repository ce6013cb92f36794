//! The reader against events as Azure puts them on the wire, byte for byte, where no
//! subscription is at hand: each message is encoded here by a small AMQP 1.0 writer of its own
//! (not fe2o3's, so the reader's decoding is checked against an independent encoding) from
//! what Azure documents an IoT Hub event to carry: the Event Hubs annotations
//! (`x-opt-sequence-number` long, `x-opt-offset` string, `x-opt-enqueued-time` timestamp), IoT
//! Hub's (`iothub-connection-device-id`, `-auth-method` as JSON text, `-auth-generation-id`,
//! `iothub-enqueuedtime` timestamp, `iothub-message-source`), the device's system properties
//! in the properties section (content type and encoding as symbols), its application
//! properties, and the body as one data section; and the `$management` answers about the
//! event hub and a partition, members typed as Event Hubs types them. Sources: "Read device-to-cloud messages from
//! the built-in endpoint" (IoT Hub), "AMQP 1.0 in Azure Event Hubs" and the AMQP 1.0 spec,
//! part 3 (message format) and part 1 (encodings).

use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::messaging::message::__private::Deserializable;
use fe2o3_amqp::types::primitives::Value;

use super::{EventHubInfo, PartitionInfo, answer_members, event_of};

/// AMQP 1.0 encodings, written out by hand.
#[derive(Clone)]
enum Amqp {
    Null,
    Long(i64),
    Ulong(u64),
    Timestamp(i64),
    Str(&'static str),
    Sym(&'static str),
    Binary(Vec<u8>),
    Bool(bool),
    Uuid([u8; 16]),
    Map(Vec<(Amqp, Amqp)>),
    /// An array of str8 (`0xf0`, one constructor for every element).
    StrArray(Vec<&'static str>),
    Int(i32),
    List(Vec<Amqp>),
    /// A section: `0x00 0x53 code` then its value.
    Described(u8, Box<Amqp>),
}

impl Amqp {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Amqp::Null => out.push(0x40),
            Amqp::Long(n) => {
                out.push(0x81);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Amqp::Ulong(n) => {
                out.push(0x80);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Amqp::Timestamp(ms) => {
                out.push(0x83);
                out.extend_from_slice(&ms.to_be_bytes());
            }
            Amqp::Str(s) => {
                out.extend_from_slice(&[0xa1, s.len() as u8]);
                out.extend_from_slice(s.as_bytes());
            }
            Amqp::Sym(s) => {
                out.extend_from_slice(&[0xa3, s.len() as u8]);
                out.extend_from_slice(s.as_bytes());
            }
            Amqp::Binary(b) => {
                out.push(0xb0);
                out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                out.extend_from_slice(b);
            }
            Amqp::Bool(b) => out.push(if *b { 0x41 } else { 0x42 }),
            Amqp::Int(n) => {
                out.push(0x71);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Amqp::StrArray(items) => {
                let mut body = vec![0xa1];
                for item in items {
                    body.push(item.len() as u8);
                    body.extend_from_slice(item.as_bytes());
                }
                out.push(0xf0);
                out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
                out.extend_from_slice(&(items.len() as u32).to_be_bytes());
                out.extend_from_slice(&body);
            }
            Amqp::Uuid(u) => {
                out.push(0x98);
                out.extend_from_slice(u);
            }
            Amqp::Map(pairs) => {
                let mut body = Vec::new();
                for (k, v) in pairs {
                    k.write(&mut body);
                    v.write(&mut body);
                }
                out.push(0xd1);
                out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
                out.extend_from_slice(&((pairs.len() * 2) as u32).to_be_bytes());
                out.extend_from_slice(&body);
            }
            Amqp::List(items) => {
                let mut body = Vec::new();
                for item in items {
                    item.write(&mut body);
                }
                out.push(0xd0);
                out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
                out.extend_from_slice(&(items.len() as u32).to_be_bytes());
                out.extend_from_slice(&body);
            }
            Amqp::Described(code, value) => {
                out.extend_from_slice(&[0x00, 0x53, *code]);
                value.write(out);
            }
        }
    }
}

const MESSAGE_ANNOTATIONS: u8 = 0x72;
const PROPERTIES: u8 = 0x73;
const APPLICATION_PROPERTIES: u8 = 0x74;
const DATA: u8 = 0x75;

/// 2026-03-01T12:00:00.123Z in milliseconds.
const ENQUEUED_MS: i64 = 1_772_366_400_123;

fn iot_hub_annotations(offset: Amqp) -> Vec<(Amqp, Amqp)> {
    vec![
        (
            Amqp::Sym("iothub-connection-device-id"),
            Amqp::Str("sensor-001"),
        ),
        (
            Amqp::Sym("iothub-connection-auth-method"),
            Amqp::Str(
                r#"{"scope":"device","type":"x509Certificate","issuer":"external","acceptingIpFilterRule":null}"#,
            ),
        ),
        (
            Amqp::Sym("iothub-connection-auth-generation-id"),
            Amqp::Str("638760123456789012"),
        ),
        (
            Amqp::Sym("iothub-enqueuedtime"),
            Amqp::Timestamp(ENQUEUED_MS - 7),
        ),
        (Amqp::Sym("iothub-message-source"), Amqp::Str("Telemetry")),
        (Amqp::Sym("x-opt-sequence-number"), Amqp::Long(4_242)),
        (Amqp::Sym("x-opt-offset"), offset),
        (
            Amqp::Sym("x-opt-enqueued-time"),
            Amqp::Timestamp(ENQUEUED_MS),
        ),
    ]
}

/// The properties section: message-id, user-id, to, subject, reply-to, correlation-id,
/// content-type, content-encoding (the list stops at the last field given, as encoders do).
fn system_properties(message_id: Amqp) -> Amqp {
    Amqp::Described(
        PROPERTIES,
        Box::new(Amqp::List(vec![
            message_id,
            Amqp::Null,
            Amqp::Null,
            Amqp::Null,
            Amqp::Null,
            Amqp::Str("corr-7"),
            Amqp::Sym("application/json"),
            Amqp::Sym("utf-8"),
        ])),
    )
}

fn encode(sections: &[Amqp]) -> Vec<u8> {
    let mut out = Vec::new();
    for section in sections {
        section.write(&mut out);
    }
    out
}

fn decode(bytes: &[u8]) -> super::Result<super::ReceivedEvent> {
    let Deserializable(message): Deserializable<
        fe2o3_amqp::types::messaging::Message<Body<Value>>,
    > = serde_amqp::from_slice(bytes).expect("the frame is valid AMQP");
    event_of("3", message)
}

fn documented_event(offset: Amqp, message_id: Amqp) -> Vec<u8> {
    encode(&[
        Amqp::Described(
            MESSAGE_ANNOTATIONS,
            Box::new(Amqp::Map(iot_hub_annotations(offset))),
        ),
        system_properties(message_id),
        Amqp::Described(
            APPLICATION_PROPERTIES,
            Box::new(Amqp::Map(vec![
                (Amqp::Str("temperatureAlert"), Amqp::Str("true")),
                (Amqp::Str("level"), Amqp::Long(3)),
            ])),
        ),
        Amqp::Described(
            DATA,
            Box::new(Amqp::Binary(br#"{"temperature":21.5}"#.to_vec())),
        ),
    ])
}

#[test]
fn an_iot_hub_event_reads_as_azure_documents_it() {
    let event = decode(&documented_event(
        Amqp::Str("8589934592"),
        Amqp::Str("msg-1"),
    ))
    .unwrap();
    assert_eq!(event.partition, "3");
    assert_eq!(event.sequence_number, 4_242);
    assert_eq!(event.offset, "8589934592");
    assert_eq!(event.enqueued_time_ms, ENQUEUED_MS);
    assert_eq!(event.device_id.as_deref(), Some("sensor-001"));
    assert_eq!(event.module_id, None);
    assert_eq!(event.body, br#"{"temperature":21.5}"#);
    assert_eq!(event.message_id.as_deref(), Some("msg-1"));
    assert_eq!(event.correlation_id.as_deref(), Some("corr-7"));
    assert_eq!(event.content_type.as_deref(), Some("application/json"));
    assert_eq!(event.content_encoding.as_deref(), Some("utf-8"));
    assert_eq!(
        event.properties.get("temperatureAlert").map(String::as_str),
        Some("true")
    );
    assert_eq!(event.properties.get("level").map(String::as_str), Some("3"));
    assert_eq!(event.properties.len(), 2);
    let annotation = |key: &str| event.annotations.get(key).map(String::as_str);
    assert_eq!(
        annotation("iothub-connection-auth-method"),
        Some(
            r#"{"scope":"device","type":"x509Certificate","issuer":"external","acceptingIpFilterRule":null}"#
        )
    );
    assert_eq!(
        annotation("iothub-connection-auth-generation-id"),
        Some("638760123456789012")
    );
    assert_eq!(
        annotation("iothub-enqueuedtime"),
        Some((ENQUEUED_MS - 7).to_string().as_str())
    );
    assert_eq!(annotation("iothub-message-source"), Some("Telemetry"));
    // The Event Hubs fields are the event's own, not repeated among its annotations.
    assert_eq!(annotation("x-opt-sequence-number"), None);
    assert_eq!(annotation("iothub-connection-device-id"), None);
}

/// Event Hubs documents the offset as an opaque string (geo-replicated namespaces write
/// non-numeric ones); message ids may be any of AMQP's four id types.
#[test]
fn opaque_offsets_and_every_message_id_type_read() {
    let uuid = [
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef,
    ];
    for (offset, id, expected_offset, expected_id) in [
        (
            Amqp::Str("1:4242:7"),
            Amqp::Ulong(77),
            "1:4242:7",
            "77".to_string(),
        ),
        (
            Amqp::Str("0"),
            Amqp::Uuid(uuid),
            "0",
            "12345678-9abc-def0-0123-456789abcdef".to_string(),
        ),
        (
            Amqp::Str("12"),
            Amqp::Binary(vec![0xde, 0xad]),
            "12",
            "dead".to_string(),
        ),
    ] {
        let event = decode(&documented_event(offset, id)).unwrap();
        assert_eq!(event.offset, expected_offset);
        assert_eq!(event.message_id.as_deref(), Some(expected_id.as_str()));
    }
}

/// A message without what Event Hubs puts on every event is refused, never read as an event
/// with zeros in its place.
#[test]
fn an_event_without_its_position_is_refused() {
    for missing in [
        "x-opt-sequence-number",
        "x-opt-offset",
        "x-opt-enqueued-time",
    ] {
        let annotations: Vec<_> = iot_hub_annotations(Amqp::Str("8"))
            .into_iter()
            .filter(|(k, _)| !matches!(k, Amqp::Sym(name) if *name == missing))
            .collect();
        let bytes = encode(&[
            Amqp::Described(MESSAGE_ANNOTATIONS, Box::new(Amqp::Map(annotations))),
            Amqp::Described(DATA, Box::new(Amqp::Binary(b"x".to_vec()))),
        ]);
        let refused = decode(&bytes).unwrap_err();
        assert!(refused.to_string().contains(missing), "{refused}");
    }
}

/// A body Event Hubs never gives an IoT Hub event (an AMQP sequence) is refused with the reason.
#[test]
fn a_body_iot_hub_never_sends_is_refused() {
    let bytes = encode(&[
        Amqp::Described(
            MESSAGE_ANNOTATIONS,
            Box::new(Amqp::Map(iot_hub_annotations(Amqp::Str("8")))),
        ),
        Amqp::Described(0x76, Box::new(Amqp::List(vec![Amqp::Bool(true)]))),
    ]);
    let refused = decode(&bytes).unwrap_err();
    assert!(refused.to_string().contains("body"), "{refused}");
}

/// A `$management` answer's body (an AMQP value section holding a map), decoded as the reader
/// decodes answers.
fn management_answer(
    kind: &str,
    members: Vec<(Amqp, Amqp)>,
) -> super::Result<Vec<(String, Value)>> {
    let mut bytes = Vec::new();
    Amqp::Map(members).write(&mut bytes);
    let body: Value = serde_amqp::from_slice(&bytes).expect("the map is valid AMQP");
    answer_members(kind, body)
}

fn documented_event_hub_answer() -> Vec<(Amqp, Amqp)> {
    vec![
        (Amqp::Str("name"), Amqp::Str("iothub-ehub-myhub-1234-abc")),
        (Amqp::Str("type"), Amqp::Str("com.microsoft:eventhub")),
        (
            Amqp::Str("created_at"),
            Amqp::Timestamp(ENQUEUED_MS - 86_400_000),
        ),
        (Amqp::Str("partition_count"), Amqp::Int(4)),
        (
            Amqp::Str("partition_ids"),
            Amqp::StrArray(vec!["0", "1", "2", "3"]),
        ),
    ]
}

fn documented_partition_answer() -> Vec<(Amqp, Amqp)> {
    vec![
        (Amqp::Str("name"), Amqp::Str("iothub-ehub-myhub-1234-abc")),
        (Amqp::Str("type"), Amqp::Str("com.microsoft:partition")),
        (Amqp::Str("partition"), Amqp::Str("2")),
        (Amqp::Str("begin_sequence_number"), Amqp::Long(17)),
        (
            Amqp::Str("last_enqueued_sequence_number"),
            Amqp::Long(4_242),
        ),
        (Amqp::Str("last_enqueued_offset"), Amqp::Str("8589934592")),
        (
            Amqp::Str("last_enqueued_time_utc"),
            Amqp::Timestamp(ENQUEUED_MS),
        ),
        (Amqp::Str("is_partition_empty"), Amqp::Bool(false)),
    ]
}

/// `get_eventhub_properties` and `get_partition_properties` as Event Hubs answers them.
#[test]
fn management_answers_read_as_event_hubs_writes_them() {
    let hub = EventHubInfo::from_answer(
        &management_answer("com.microsoft:eventhub", documented_event_hub_answer()).unwrap(),
    )
    .unwrap();
    assert_eq!(hub.name, "iothub-ehub-myhub-1234-abc");
    assert_eq!(hub.partition_ids, ["0", "1", "2", "3"]);
    assert_eq!(hub.created_at_ms, ENQUEUED_MS - 86_400_000);
    let partition = PartitionInfo::from_answer(
        "2",
        &management_answer("com.microsoft:partition", documented_partition_answer()).unwrap(),
    )
    .unwrap();
    assert_eq!(partition.begin_sequence_number, 17);
    assert_eq!(partition.last_enqueued_sequence_number, 4_242);
    assert_eq!(partition.last_enqueued_offset, "8589934592");
    assert_eq!(partition.last_enqueued_time_ms, ENQUEUED_MS);
    assert!(!partition.is_empty);
}

/// An answer missing a member, or with one of another type, is refused by name; nothing is
/// read as zero or empty in its place.
#[test]
fn management_answers_missing_a_member_are_refused() {
    for dropped in ["name", "created_at", "partition_ids"] {
        let members = documented_event_hub_answer()
            .into_iter()
            .filter(|(k, _)| !matches!(k, Amqp::Str(name) if *name == dropped))
            .collect();
        let answer = management_answer("com.microsoft:eventhub", members).unwrap();
        let refused = EventHubInfo::from_answer(&answer).unwrap_err();
        assert!(refused.to_string().contains(dropped), "{refused}");
    }
    for dropped in [
        "begin_sequence_number",
        "last_enqueued_sequence_number",
        "last_enqueued_offset",
        "last_enqueued_time_utc",
        "is_partition_empty",
    ] {
        let members = documented_partition_answer()
            .into_iter()
            .filter(|(k, _)| !matches!(k, Amqp::Str(name) if *name == dropped))
            .collect();
        let answer = management_answer("com.microsoft:partition", members).unwrap();
        let refused = PartitionInfo::from_answer("2", &answer).unwrap_err();
        assert!(refused.to_string().contains(dropped), "{refused}");
    }
    let mut wrong_type = documented_event_hub_answer();
    wrong_type[4].1 = Amqp::Str("0,1,2,3");
    let answer = management_answer("com.microsoft:eventhub", wrong_type).unwrap();
    assert!(EventHubInfo::from_answer(&answer).is_err());
    let mut bytes = Vec::new();
    Amqp::Str("not a map").write(&mut bytes);
    let body: Value = serde_amqp::from_slice(&bytes).unwrap();
    assert!(answer_members("com.microsoft:eventhub", body).is_err());
}
