//! dpskit's reader of a hub's telemetry where Azure keeps it: the built-in Event
//! Hub-compatible endpoint, over AMQP 1.0 on TLS, exactly as the official consumers read it
//! (one read path for the local cloud and Azure).
//!
//! A reader opens one connection (`amqp.rs`, shared with the C2D client: TLS with trust as
//! the caller says, the emulator's CA or the system roots for Azure; one AMQP session; a CBS
//! put-token of a SAS signed by a policy with `ServiceConnect`, the connection string's), and
//! then asks the `$management` node about the event hub and its partitions, or attaches a
//! receiver per partition from a start position. The vocabulary (nodes, properties, selector,
//! annotations, `$management` members, link error conditions) is `protocol::event_hubs`,
//! shared with the emulator's endpoint.
//!
//! A live stream puts a fresh token at four fifths of each token's life, as the official
//! clients refresh theirs: Azure closes the links of an expired token. A link the service
//! refuses or closes with an error is its typed refusal (401, 404, 409 displaced...), not a
//! transport failure. `events_frames_tests.rs` checks the decoding against Azure's documented
//! events and answers, byte for byte.

use std::collections::BTreeMap;
use std::time::Duration;

use fe2o3_amqp::Receiver;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Message, Source};
use fe2o3_amqp::types::primitives::{SimpleValue, Symbol, Value};
use serde_amqp::described::Described;
use serde_amqp::descriptor::Descriptor;

use super::amqp::{ANSWER_TIMEOUT, AmqpConnection, NodeLinks, attach_error, receive_error};
use crate::error::{Error, Result};
use crate::protocol::event_hubs::{
    self, PartitionAddress, StartPosition, annotations, fields, keys,
};
use crate::transport::Trust;
use crate::transport::amqp::{body_bytes, message_id_text, simple_text};

/// The AMQP port of Event Hubs (and of the emulator's endpoint when it could bind it).
pub const AMQPS_PORT: u16 = 5671;
/// How long a SAS token put to CBS lives. A connection puts one when it opens, and a stream
/// puts a fresh one before it expires: Azure closes the links an expired token authorized.
const TOKEN_LIFETIME_SECONDS: i64 = 3600;
/// Events the reader lets a partition send ahead of its consumer (the official consumer's
/// default prefetch).
const PREFETCH: u32 = 300;

/// An Event Hubs connection string: `Endpoint=sb://{host}[:port]/;SharedAccessKeyName=...;
/// SharedAccessKey=...;EntityPath={event hub}`.
#[derive(Clone, PartialEq, Eq)]
pub struct EventHubConnectionString {
    /// The namespace host.
    pub host: String,
    /// The port the endpoint names, if any (the official clients dial 5671 whatever it says).
    pub port: Option<u16>,
    /// The shared access policy.
    pub key_name: String,
    key: String,
    /// The event hub.
    pub event_hub: String,
}

impl std::fmt::Debug for EventHubConnectionString {
    /// The key is a secret: never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHubConnectionString")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("key_name", &self.key_name)
            .field("key", &"<redacted>")
            .field("event_hub", &self.event_hub)
            .finish()
    }
}

impl EventHubConnectionString {
    /// Reads one; refuses (`Error::Config`) a string without an `sb://` endpoint, a policy, a
    /// key or an event hub.
    pub fn parse(text: &str) -> Result<EventHubConnectionString> {
        let mut fields = BTreeMap::new();
        for part in text.split(';').filter(|p| !p.trim().is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| {
                Error::config("an Event Hubs connection string is name=value pairs")
            })?;
            fields.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
        let field = |name: &str, shown: &str| {
            fields
                .get(name)
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or_else(|| {
                    Error::config(format!("the Event Hubs connection string has no {shown}"))
                })
        };
        let endpoint = field("endpoint", "Endpoint")?;
        let authority = endpoint
            .strip_prefix("sb://")
            .ok_or_else(|| {
                Error::config(format!(
                    "the Event Hubs endpoint {endpoint:?} does not start with sb://"
                ))
            })?
            .trim_end_matches('/');
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => {
                let port = port.parse().map_err(|_| {
                    Error::config(format!(
                        "the Event Hubs endpoint {endpoint:?} has a bad port"
                    ))
                })?;
                (host.to_string(), Some(port))
            }
            None => (authority.to_string(), None),
        };
        if host.is_empty() || host.contains('/') {
            return Err(Error::config(format!(
                "the Event Hubs endpoint {endpoint:?} names no host"
            )));
        }
        Ok(EventHubConnectionString {
            host,
            port,
            key_name: field("sharedaccesskeyname", "SharedAccessKeyName")?,
            key: field("sharedaccesskey", "SharedAccessKey")?,
            event_hub: field("entitypath", "EntityPath")?,
        })
    }

    /// The SAS token for this event hub, valid for `lifetime` seconds, signed as the Event Hubs
    /// clients sign (the key's text is the HMAC key).
    fn token(&self, lifetime: i64) -> String {
        let audience = event_hubs::event_hub_audience(&self.host, &self.event_hub);
        crate::sas::build_token_with_key_text(
            &audience,
            &self.key,
            crate::clock::now() + lifetime,
            &self.key_name,
        )
    }
}

/// The event hub as `$management` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHubInfo {
    /// Its name.
    pub name: String,
    /// Its partitions' ids.
    pub partition_ids: Vec<String>,
    /// When it was created, Unix milliseconds.
    pub created_at_ms: i64,
}

/// One partition as `$management` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The partition id.
    pub id: String,
    /// The first retained event's sequence number.
    pub begin_sequence_number: i64,
    /// The last enqueued event's sequence number (-1 when none was).
    pub last_enqueued_sequence_number: i64,
    /// The last enqueued event's offset.
    pub last_enqueued_offset: String,
    /// When the last event was enqueued, Unix milliseconds.
    pub last_enqueued_time_ms: i64,
    /// Whether the partition holds no event.
    pub is_empty: bool,
}

/// The members of a `$management` answer's body, a map.
fn answer_members(kind: &str, body: Value) -> Result<Vec<(String, Value)>> {
    match body {
        Value::Map(map) => Ok(map.into_iter().map(|(k, v)| (value_text(&k), v)).collect()),
        other => Err(Error::protocol(format!(
            "$management answered {kind} with {other:?}, not a map"
        ))),
    }
}

/// A member of a `$management` answer.
fn field<'a>(answer: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    answer.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// A member every answer of this kind carries: refused when absent or of another type, never
/// read as a default.
fn required<T>(
    answer: &[(String, Value)],
    what: &str,
    name: &str,
    read: impl Fn(&Value) -> Option<T>,
) -> Result<T> {
    let value = field(answer, name)
        .ok_or_else(|| Error::protocol(format!("{what}: the answer has no {name}")))?;
    read(value).ok_or_else(|| Error::protocol(format!("{what}: {name} is {value:?}")))
}

impl EventHubInfo {
    /// Reads a `$management` answer about the event hub.
    fn from_answer(answer: &[(String, Value)]) -> Result<EventHubInfo> {
        let what = "the event hub";
        let partition_ids = required(answer, what, fields::PARTITION_IDS, |ids| match ids {
            Value::Array(ids) => ids.0.iter().map(value_string).collect(),
            Value::List(ids) => ids.iter().map(value_string).collect(),
            _ => None,
        })?;
        Ok(EventHubInfo {
            name: required(answer, what, fields::NAME, value_string)?,
            partition_ids,
            created_at_ms: required(answer, what, fields::CREATED_AT, value_millis)?,
        })
    }
}

impl PartitionInfo {
    /// Reads a `$management` answer about partition `id`.
    fn from_answer(id: &str, answer: &[(String, Value)]) -> Result<PartitionInfo> {
        let what = format!("partition {id}");
        let number = |name: &str| required(answer, &what, name, value_integer);
        Ok(PartitionInfo {
            id: id.to_string(),
            begin_sequence_number: number(fields::BEGIN_SEQUENCE_NUMBER)?,
            last_enqueued_sequence_number: number(fields::LAST_ENQUEUED_SEQUENCE_NUMBER)?,
            last_enqueued_offset: required(
                answer,
                &what,
                fields::LAST_ENQUEUED_OFFSET,
                value_string,
            )?,
            last_enqueued_time_ms: required(
                answer,
                &what,
                fields::LAST_ENQUEUED_TIME_UTC,
                value_millis,
            )?,
            is_empty: required(answer, &what, fields::IS_PARTITION_EMPTY, |v| match v {
                Value::Bool(b) => Some(*b),
                _ => None,
            })?,
        })
    }
}

/// An event as the endpoint delivered it, with what Event Hubs and IoT Hub put on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedEvent {
    /// The partition it was read from.
    pub partition: String,
    /// Its sequence number in the partition.
    pub sequence_number: i64,
    /// Its offset in the partition.
    pub offset: String,
    /// When the partition received it, Unix milliseconds.
    pub enqueued_time_ms: i64,
    /// The device that sent it (`iothub-connection-device-id`).
    pub device_id: Option<String>,
    /// The module that sent it, if one did.
    pub module_id: Option<String>,
    /// The body, as the device sent it.
    pub body: Vec<u8>,
    /// The device's application properties, as text.
    pub properties: BTreeMap<String, String>,
    /// Every other message annotation (IoT Hub's `iothub-*` among them), as text.
    pub annotations: BTreeMap<String, String>,
    /// The message id, if the device gave one.
    pub message_id: Option<String>,
    /// The correlation id, if the device gave one.
    pub correlation_id: Option<String>,
    /// Its content type (`application/json`...), if given.
    pub content_type: Option<String>,
    /// Its content encoding (`utf-8`...), if given.
    pub content_encoding: Option<String>,
}

/// One authenticated AMQP connection to an event hub.
pub struct EventReader {
    amqp: AmqpConnection,
    target: EventHubConnectionString,
    token: String,
    /// Seconds each token put on this connection lives.
    token_lifetime: i64,
    management: Option<NodeLinks>,
}

impl EventReader {
    /// Connects to `target` (on `port`, or the connection string's, or 5671), TLS checked
    /// against `trust`, and authenticates with a CBS put-token.
    pub async fn connect(
        target: &EventHubConnectionString,
        port: Option<u16>,
        trust: &Trust,
    ) -> Result<EventReader> {
        Self::connect_with(target, port, trust, TOKEN_LIFETIME_SECONDS).await
    }

    /// [`EventReader::connect`] with tokens living `token_lifetime` seconds.
    pub(crate) async fn connect_with(
        target: &EventHubConnectionString,
        port: Option<u16>,
        trust: &Trust,
        token_lifetime: i64,
    ) -> Result<EventReader> {
        let port = port.or(target.port).unwrap_or(AMQPS_PORT);
        let amqp = AmqpConnection::open(&target.host, port, trust).await?;
        let mut reader = EventReader {
            amqp,
            target: target.clone(),
            token: String::new(),
            token_lifetime,
            management: None,
        };
        reader.put_fresh_token().await?;
        Ok(reader)
    }

    /// Puts a new token on CBS, which covers this connection's links from then on.
    async fn put_fresh_token(&mut self) -> Result<()> {
        let token = self.target.token(self.token_lifetime);
        let audience = event_hubs::event_hub_audience(&self.target.host, &self.target.event_hub);
        self.amqp
            .put_token(&audience, &token, "the event hub")
            .await?;
        self.token = token;
        Ok(())
    }

    /// When to put the next token: at four fifths of a token's life, so a slow answer still
    /// lands before the old one expires.
    fn renewal_period(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.token_lifetime.max(1)).unwrap_or(1) * 800)
    }

    /// A `$management` READ of `kind` (`com.microsoft:eventhub` or `:partition`).
    async fn read(&mut self, kind: &str, partition: Option<&str>) -> Result<Vec<(String, Value)>> {
        let mut links = match self.management.take() {
            Some(links) => links,
            None => self.amqp.node(event_hubs::MANAGEMENT_NODE).await?,
        };
        let mut properties = ApplicationProperties::builder()
            .insert(
                keys::OPERATION,
                SimpleValue::String(event_hubs::READ.into()),
            )
            .insert(
                keys::NAME,
                SimpleValue::String(self.target.event_hub.clone()),
            )
            .insert(keys::TYPE, SimpleValue::String(kind.into()))
            .insert(
                keys::SECURITY_TOKEN,
                SimpleValue::String(self.token.clone()),
            );
        if let Some(partition) = partition {
            properties = properties.insert(keys::PARTITION, SimpleValue::String(partition.into()));
        }
        let answer = links.request(properties.build(), Body::Empty).await;
        self.management = Some(links);
        let (status, description, body) = answer?;
        if status != 200 {
            return Err(Error::service(
                status,
                0,
                format!("$management READ {kind}: {status} {description}"),
            ));
        }
        answer_members(kind, body)
    }

    /// The event hub's name, partitions and creation time.
    pub async fn event_hub(&mut self) -> Result<EventHubInfo> {
        EventHubInfo::from_answer(&self.read(event_hubs::EVENT_HUB_TYPE, None).await?)
    }

    /// One partition's sequence numbers, last offset and time.
    pub async fn partition(&mut self, id: &str) -> Result<PartitionInfo> {
        PartitionInfo::from_answer(id, &self.read(event_hubs::PARTITION_TYPE, Some(id)).await?)
    }

    /// Attaches a receiver to one partition of `consumer_group`, from `start`.
    pub async fn receive(
        &mut self,
        consumer_group: &str,
        partition: &str,
        start: &StartPosition,
    ) -> Result<PartitionReader> {
        let address = PartitionAddress {
            event_hub: self.target.event_hub.clone(),
            consumer_group: consumer_group.to_string(),
            partition: partition.to_string(),
        }
        .to_address(&self.target.host);
        let filter = Described {
            descriptor: Descriptor::Name(Symbol::from(event_hubs::SELECTOR_FILTER)),
            value: Value::String(start.selector()),
        };
        let source = Source::builder()
            .address(address.clone())
            .add_to_filter(Symbol::from(event_hubs::SELECTOR_FILTER), filter)
            .build();
        let receiver = Receiver::builder()
            .name(format!("receiver-{}", crate::random::guid()))
            .source(source)
            .target(format!("receiver-link-{}", crate::random::guid()))
            .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Auto(PREFETCH))
            .attach(&mut self.amqp.session)
            .await
            .map_err(|e| attach_error(&format!("attaching to {address}"), e))?;
        Ok(PartitionReader {
            receiver,
            partition: partition.to_string(),
        })
    }

    /// Ends the session and closes the connection.
    pub async fn close(mut self) {
        if let Some(links) = self.management.take() {
            links.close().await;
        }
        self.amqp.close().await;
    }
}

/// Events of one partition, in order.
pub struct PartitionReader {
    receiver: Receiver,
    partition: String,
}

impl PartitionReader {
    /// The next event (waits for one).
    pub async fn next(&mut self) -> Result<ReceivedEvent> {
        let delivery = self
            .receiver
            .recv::<Body<Value>>()
            .await
            .map_err(|e| receive_error(&format!("partition {}", self.partition), e))?;
        let _ = self.receiver.accept(&delivery).await;
        event_of(&self.partition, delivery.into_message())
    }

    /// Detaches from the partition.
    pub async fn close(self) {
        let _ = self.receiver.close().await;
    }
}

/// Events of several partitions as they arrive, merged: one reader, one receiver task per
/// partition. Dropping it stops the tasks and closes the connection.
pub struct EventStream {
    events: tokio::sync::mpsc::Receiver<Result<ReceivedEvent>>,
    /// An error that arrived behind a batch's events, returned by the next call.
    failed: Option<Error>,
    /// The partitions' receivers, and the task holding the connection (whose session the
    /// receivers run on) and renewing its token.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Events buffered between the partitions' receivers and the consumer.
const STREAM_BUFFER: usize = 1024;

impl EventStream {
    /// Connects and attaches to `partitions` (every partition when `None`) of
    /// `consumer_group`, each from `start`.
    pub async fn open(
        target: &EventHubConnectionString,
        port: Option<u16>,
        trust: &Trust,
        consumer_group: &str,
        start: &StartPosition,
        partitions: Option<Vec<String>>,
    ) -> Result<EventStream> {
        let reader = EventReader::connect(target, port, trust).await?;
        Self::open_on(reader, consumer_group, start, partitions).await
    }

    /// Attaches `reader` to the partitions and keeps its token fresh while the stream lives.
    pub(crate) async fn open_on(
        mut reader: EventReader,
        consumer_group: &str,
        start: &StartPosition,
        partitions: Option<Vec<String>>,
    ) -> Result<EventStream> {
        let partitions = match partitions {
            Some(partitions) => partitions,
            None => reader.event_hub().await?.partition_ids,
        };
        let (sender, events) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        let mut tasks = Vec::with_capacity(partitions.len() + 1);
        for partition in partitions {
            let mut receiver = reader.receive(consumer_group, &partition, start).await?;
            let sender = sender.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let event = receiver.next().await;
                    let failed = event.is_err();
                    if sender.send(event).await.is_err() || failed {
                        break;
                    }
                }
                receiver.close().await;
            }));
        }
        // The reader lives in this task, which the stream aborts when dropped (closing the
        // connection); a token that cannot be renewed is the stream's error.
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(reader.renewal_period()).await;
                if let Err(e) = reader.put_fresh_token().await {
                    let _ = sender.send(Err(e)).await;
                    break;
                }
            }
            std::future::pending::<()>().await;
            drop(reader);
        }));
        Ok(EventStream {
            events,
            failed: None,
            tasks,
        })
    }

    /// The next event of any partition (`None` once every receiver has ended).
    pub async fn next(&mut self) -> Option<Result<ReceivedEvent>> {
        if let Some(failed) = self.failed.take() {
            return Some(Err(failed));
        }
        self.events.recv().await
    }

    /// The next events of any partition, at most `max`: waits for one, then takes what has
    /// already arrived (empty once every receiver has ended). An error ends the batch and is
    /// returned in its place when it comes first.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<ReceivedEvent>> {
        if let Some(failed) = self.failed.take() {
            return Err(failed);
        }
        let mut batch = Vec::new();
        let Some(first) = self.events.recv().await else {
            return Ok(batch);
        };
        batch.push(first?);
        while batch.len() < max {
            match self.events.try_recv() {
                Ok(Ok(event)) => batch.push(event),
                Ok(Err(e)) => {
                    // Delivered before the error: kept; the error surfaces on the next call.
                    self.failed = Some(e);
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(batch)
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Every retained event of the event hub, read through `consumer_group` from each
/// partition's start up to what it held when the read began, in enqueued order.
pub async fn read_retained(
    target: &EventHubConnectionString,
    port: Option<u16>,
    trust: &Trust,
    consumer_group: &str,
) -> Result<Vec<ReceivedEvent>> {
    let mut reader = EventReader::connect(target, port, trust).await?;
    // Every partition's receiver attached first, then all read at once: partitions are
    // independent streams, and one at a time would leave the others' prefetch idle.
    let mut readers = Vec::new();
    for partition in reader.event_hub().await?.partition_ids {
        let info = reader.partition(&partition).await?;
        if info.is_empty || info.last_enqueued_sequence_number < 0 {
            continue;
        }
        let receiver = reader
            .receive(consumer_group, &partition, &StartPosition::earliest())
            .await?;
        readers.push(tokio::spawn(read_partition_to(
            receiver,
            info.last_enqueued_sequence_number,
        )));
    }
    let mut events = Vec::new();
    for task in readers {
        let read = task
            .await
            .map_err(|e| Error::transport(format!("a partition reader stopped: {e}")))?;
        events.extend(read?);
    }
    reader.close().await;
    events.sort_by(|a, b| {
        (a.enqueued_time_ms, &a.partition, a.sequence_number).cmp(&(
            b.enqueued_time_ms,
            &b.partition,
            b.sequence_number,
        ))
    });
    Ok(events)
}

/// A partition's events up to sequence number `last`; a partition that stops short of it for
/// 30 s is an error, not a hang.
async fn read_partition_to(mut receiver: PartitionReader, last: i64) -> Result<Vec<ReceivedEvent>> {
    let mut events = Vec::new();
    loop {
        let event = tokio::time::timeout(ANSWER_TIMEOUT, receiver.next())
            .await
            .map_err(|_| {
                Error::transport(format!(
                    "partition {} sent nothing for 30 s before sequence number {last}",
                    receiver.partition
                ))
            })??;
        let done = event.sequence_number >= last;
        events.push(event);
        if done {
            break;
        }
    }
    receiver.close().await;
    Ok(events)
}

/// What an AMQP message says as a [`ReceivedEvent`]; `Err` when it lacks what Event Hubs
/// always puts on an event (sequence number, offset, enqueued time).
fn event_of(partition: &str, message: Message<Body<Value>>) -> Result<ReceivedEvent> {
    let mut annotations_by_key: BTreeMap<String, Value> = BTreeMap::new();
    if let Some(found) = message.message_annotations {
        for (key, value) in found.0 {
            let key = match key {
                OwnedKey::Symbol(symbol) => symbol.0,
                OwnedKey::Ulong(n) => n.to_string(),
            };
            annotations_by_key.insert(key, value);
        }
    }
    let mut take = |key: &str| annotations_by_key.remove(key);
    let sequence_number = take(annotations::SEQUENCE_NUMBER)
        .as_ref()
        .and_then(value_integer)
        .ok_or_else(|| Error::protocol("an event without x-opt-sequence-number"))?;
    let offset = take(annotations::OFFSET)
        .map(|v| value_text(&v))
        .ok_or_else(|| Error::protocol("an event without x-opt-offset"))?;
    let enqueued_time_ms = take(annotations::ENQUEUED_TIME)
        .as_ref()
        .and_then(value_millis)
        .ok_or_else(|| Error::protocol("an event without x-opt-enqueued-time"))?;
    let device_id = take(annotations::DEVICE_ID).map(|v| value_text(&v));
    let module_id = take(annotations::MODULE_ID).map(|v| value_text(&v));
    let annotations = annotations_by_key
        .iter()
        .map(|(k, v)| (k.clone(), value_text(v)))
        .collect();
    let properties = message
        .application_properties
        .map(|p| {
            p.0.iter()
                .map(|(k, v)| (k.clone(), simple_text(v)))
                .collect()
        })
        .unwrap_or_default();
    let system = message.properties.unwrap_or_default();
    let body = body_bytes(&message.body)
        .map_err(|why| Error::protocol(format!("an event's body: {why}")))?;
    Ok(ReceivedEvent {
        partition: partition.to_string(),
        sequence_number,
        offset,
        enqueued_time_ms,
        device_id,
        module_id,
        body,
        properties,
        annotations,
        message_id: system.message_id.as_ref().map(message_id_text),
        correlation_id: system.correlation_id.as_ref().map(message_id_text),
        content_type: system.content_type.map(|s| s.0),
        content_encoding: system.content_encoding.map(|s| s.0),
    })
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Symbol(s) => s.0.clone(),
        Value::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Long(n) => n.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Uint(n) => n.to_string(),
        Value::Ulong(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Timestamp(t) => t.milliseconds().to_string(),
        other => format!("{other:?}"),
    }
}

/// A string or symbol member's text (numbers are not names or offsets).
fn value_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Symbol(s) => Some(s.0.clone()),
        _ => None,
    }
}

fn value_integer(value: &Value) -> Option<i64> {
    match value {
        Value::Long(n) => Some(*n),
        Value::Int(n) => Some(i64::from(*n)),
        Value::Uint(n) => Some(i64::from(*n)),
        Value::Ulong(n) => i64::try_from(*n).ok(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn value_millis(value: &Value) -> Option<i64> {
    match value {
        Value::Timestamp(t) => Some(t.milliseconds()),
        other => value_integer(other),
    }
}

#[cfg(test)]
#[path = "events_frames_tests.rs"]
mod frames_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_read_as_the_portal_writes_them_and_hide_their_key() {
        let parsed = EventHubConnectionString::parse(
            "Endpoint=sb://iothub-ns-hub-1-abc.servicebus.windows.net/;SharedAccessKeyName=service;SharedAccessKey=a2V5;EntityPath=hub-1",
        )
        .unwrap();
        assert_eq!(parsed.host, "iothub-ns-hub-1-abc.servicebus.windows.net");
        assert_eq!(parsed.port, None);
        assert_eq!(
            (parsed.key_name.as_str(), parsed.event_hub.as_str()),
            ("service", "hub-1")
        );
        assert!(!format!("{parsed:?}").contains("a2V5"));
        let local = EventHubConnectionString::parse(
            "endpoint=sb://127.0.0.2:5679;sharedaccesskeyname=service;sharedaccesskey=a2V5;entitypath=h",
        )
        .unwrap();
        assert_eq!((local.host.as_str(), local.port), ("127.0.0.2", Some(5679)));
        for bad in [
            "",
            "Endpoint=https://h/;SharedAccessKeyName=s;SharedAccessKey=k;EntityPath=e",
            "Endpoint=sb://h/;SharedAccessKeyName=s;SharedAccessKey=k",
            "Endpoint=sb://h/;SharedAccessKeyName=s;EntityPath=e",
            "Endpoint=sb:///;SharedAccessKeyName=s;SharedAccessKey=k;EntityPath=e",
            "Endpoint=sb://h:x/;SharedAccessKeyName=s;SharedAccessKey=k;EntityPath=e",
            "garbage",
        ] {
            assert!(
                matches!(EventHubConnectionString::parse(bad), Err(Error::Config(_))),
                "{bad}"
            );
        }
    }
}
