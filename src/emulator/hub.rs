//! The IoT Hub device API behind the shared listener: identities from DPS or the service API
//! (thumbprint, SAS, or `certificateAuthority`: a chain leading to a Device Registry issuing CA
//! synced to the hub; a disabled identity, and a certificate outside its validity, refused),
//! certificate renewal on `$iothub/credentials` ([`renewal`]), one
//! connection per device, its connection times, telemetry stored durably before it is
//! acknowledged, twins with versions (the service's patches and replaces checked against the
//! etag in the same transaction), direct methods (waiting for the device to come online when
//! given a connect timeout), cloud-to-device messages and their life cycle (ack, expiry swept
//! on time, delivery count, completion, purge; the feedback asked for goes to `feedback`),
//! persistent sessions; the events endpoint's retention (events past it deleted at start and
//! hourly); and, for a hub that enforces its tier, that tier's throttles and daily quota (kept
//! by `quotas`). Time is the cloud's clock (tokens, certificates, C2D expiry, feedback, events'
//! enqueued times and retention); the sweepers wake when it moves.
//!
//! Concurrency, hazard-free by construction: every engine lock (`sessions`, `subscriptions`,
//! `pending_methods`, `activity`, `expiries`, the knobs, and those of `quotas`) guards one map (or heap), is held only to read or change
//! that map, and is never held while another lock is taken or another component (the store,
//! the cloud, a connection) is called; sends into a session's channel never block. State kept
//! in the store (twins, C2D queues) is changed with [`Store::update`], one transaction per
//! read-modify-write, with no engine lock held. So no two locks are ever held together and
//! no lock order exists to get wrong.

mod renewal;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::emulator::cloud::{Cloud, random_guid};
use crate::emulator::model::{DeviceAuth, DeviceStatus, HubDevice};
use crate::emulator::quotas::{HubCounters, HubQuotas, Rate, Throttled, start_of_today};
use crate::emulator::store::kind::SESSION;
use crate::emulator::store::{Store, TelemetryRecord};
use crate::error::{Error, Result};
use crate::limits::HubOperation;
use crate::pki::Certificate;
use crate::protocol::c2d::{
    ACK_PROPERTY, DeliveryAck, FeedbackRecord, FeedbackStatus, MAX_DELIVERY_COUNT,
};
use crate::protocol::hub::{CloudPublish, Subscription};
use crate::sas::SasToken;

/// Largest device-to-cloud message (256 KB).
pub(crate) const MAX_D2C_BYTES: usize = crate::limits::MAX_D2C_MESSAGE_BYTES;
/// Largest cloud-to-device message (64 KB).
pub(crate) const MAX_C2D_BYTES: usize = crate::limits::MAX_C2D_MESSAGE_BYTES;
/// Largest direct-method payload, request or response (128 KB).
pub(crate) const MAX_METHOD_BYTES: usize = crate::limits::MAX_METHOD_PAYLOAD_BYTES;
/// Largest desired or reported section (32 KB).
pub(crate) const MAX_TWIN_SECTION_BYTES: usize = crate::limits::MAX_TWIN_SECTION_BYTES;
/// Cloud-to-device messages waiting per device.
pub(crate) const MAX_C2D_QUEUE: usize = 50;
/// Telemetry messages a connection may have stored and not acknowledged yet; past it the
/// connection stops reading until PUBACKs go out, so a flood slows its sender (TCP pushes
/// back) instead of growing the emulator's queues.
pub(crate) const TELEMETRY_WINDOW: usize = 1024;
/// Room in a session's outbound queue for what is not a PUBACK (C2D, desired patches, method
/// requests). A device that leaves it full is disconnected: it reconnects and reads again.
const OTHER_OUTBOUND: usize = 256;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A device twin.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub(crate) struct Twin {
    /// Tags (service side only).
    pub tags: Map<String, Value>,
    /// Desired properties, without `$version`.
    pub desired: Map<String, Value>,
    /// Reported properties, without `$version`.
    pub reported: Map<String, Value>,
    /// Desired version (starts at 1).
    pub desired_version: u64,
    /// Reported version (starts at 1).
    pub reported_version: u64,
}

impl Twin {
    fn from_initial(initial: Option<&Value>) -> Self {
        // Metadata keys (`$version`, `$metadata`) in an enrollment's initial twin are the
        // hub's to write, so they are not taken as properties.
        let section = |v: Option<&Value>| {
            v.and_then(Value::as_object)
                .map(|map| {
                    map.iter()
                        .filter(|(key, _)| !key.starts_with('$'))
                        .map(|(key, value)| (key.clone(), value.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        Twin {
            tags: section(initial.and_then(|t| t.get("tags"))),
            desired: section(initial.and_then(|t| t.pointer("/properties/desired"))),
            reported: Map::new(),
            desired_version: 1,
            reported_version: 1,
        }
    }

    /// What the device gets for a GET, laid out as IoT Hub writes it: `desired` then
    /// `reported`, each with its properties in the order they were set and `$version` last
    /// (embedded stacks read a section until `$version`).
    pub(crate) fn device_view(&self) -> Value {
        json!({
            "desired": with_version(&self.desired, self.desired_version),
            "reported": with_version(&self.reported, self.reported_version),
        })
    }

    /// The twin's etag: a digest of its tags and properties, so every change changes it (the
    /// service's `If-Match` on a twin patch names it).
    pub(crate) fn etag(&self) -> String {
        let record = serde_json::to_vec(self).unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, &record);
        BASE64.encode(&digest.as_ref()[..12])
    }

    /// What the service gets (the device twin document), in the order of IoT Hub's documented
    /// twin: identity and etag, version, tags, then the properties.
    pub(crate) fn service_view(&self, device_id: &str) -> Value {
        json!({
            "deviceId": device_id,
            "etag": self.etag(),
            "version": self.desired_version + self.reported_version,
            "tags": self.tags,
            "properties": {
                "desired": with_version(&self.desired, self.desired_version),
                "reported": with_version(&self.reported, self.reported_version),
            },
        })
    }
}

/// A twin section as sent: its properties in insertion order, then `$version`.
fn with_version(section: &Map<String, Value>, version: u64) -> Value {
    let mut out = Map::with_capacity(section.len() + 1);
    out.extend(
        section
            .iter()
            .filter(|(key, _)| !key.starts_with('$'))
            .map(|(key, value)| (key.clone(), value.clone())),
    );
    out.insert("$version".into(), json!(version));
    Value::Object(out)
}

/// The merge patch that turns `old` into `new`: `new`'s values, objects present on both sides
/// patched recursively, and `null` for each key `new` no longer has.
fn replacement_patch(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut patch = Map::with_capacity(new.len());
    for (key, value) in new {
        let entry = match (old.get(key), value) {
            (Some(Value::Object(before)), Value::Object(after)) => {
                Value::Object(replacement_patch(before, after))
            }
            _ => value.clone(),
        };
        patch.insert(key.clone(), entry);
    }
    for key in old.keys().filter(|k| !new.contains_key(*k)) {
        patch.insert(key.clone(), Value::Null);
    }
    patch
}

/// How the service changes a twin ([`HubEngine::write_twin`]).
#[derive(Debug, Clone, Copy)]
pub enum TwinWrite<'a> {
    /// PATCH: tags and desired properties merged into the twin (`null` deletes).
    Patch {
        /// The tags patch, if any.
        tags: Option<&'a Map<String, Value>>,
        /// The desired-properties patch, if any.
        desired: Option<&'a Map<String, Value>>,
    },
    /// PUT: tags and desired properties replaced as a whole; reported properties untouched.
    Replace {
        /// The new tags.
        tags: &'a Map<String, Value>,
        /// The new desired properties.
        desired: &'a Map<String, Value>,
    },
}

/// Applies a JSON merge patch (`null` deletes), as twins do.
fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner) => {
                let entry = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(existing) = entry {
                    merge(existing, inner);
                } else {
                    *entry = value.clone();
                }
            }
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

/// A message waiting for its device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct C2dMessage {
    /// Message id.
    pub message_id: String,
    /// Increasing in the order messages were queued (across devices and restarts): a session
    /// delivers each message once, by remembering the highest sequence it sent. Messages stored
    /// by older versions have 0.
    #[serde(default)]
    pub sequence: u64,
    /// Body, base64.
    pub body: String,
    /// Application properties.
    pub properties: Vec<(String, String)>,
    /// Enqueued, Unix seconds.
    pub enqueued: i64,
    /// The outcomes its sender asked to hear about (`iothub-ack`).
    #[serde(default)]
    pub(crate) ack: DeliveryAck,
    /// When it expires, Unix milliseconds (0 in messages stored before expiry was kept: their
    /// enqueued time plus the default time to live).
    #[serde(default)]
    pub(crate) expires_ms: i64,
    /// Whether its sender set the expiry (the device is then told it, `$.exp`).
    #[serde(default)]
    pub(crate) sender_expiry: bool,
    /// Deliveries to the device so far.
    #[serde(default)]
    pub(crate) delivery_count: u32,
}

impl C2dMessage {
    /// When it expires, Unix milliseconds.
    pub(crate) fn expiry_ms(&self) -> i64 {
        if self.expires_ms > 0 {
            self.expires_ms
        } else {
            (self.enqueued + crate::protocol::c2d::DEFAULT_TTL_SECONDS) * 1000
        }
    }

    /// Whether another delivery would exceed the hub's delivery count.
    fn exhausted(&self) -> bool {
        self.delivery_count >= MAX_DELIVERY_COUNT
    }
}

/// What a back end set on a cloud-to-device message besides its body and properties.
#[derive(Debug, Clone, Default)]
pub(crate) struct C2dOptions {
    /// Its message id (`None`: a fresh one).
    pub(crate) message_id: Option<String>,
    /// Its absolute expiry time, Unix milliseconds.
    pub(crate) absolute_expiry_ms: Option<i64>,
    /// Its time to live, milliseconds.
    pub(crate) ttl_ms: Option<i64>,
}

/// Messages that left a device's queue and how, for the feedback their senders asked for.
type Ended = Vec<(C2dMessage, FeedbackStatus)>;

/// Takes the messages `ends` picks out of `queue`, each with how its life ended.
fn take_ended(
    queue: &mut Vec<C2dMessage>,
    mut ends: impl FnMut(&C2dMessage) -> Option<FeedbackStatus>,
) -> Ended {
    let mut ended = Vec::new();
    queue.retain(|m| match ends(m) {
        Some(status) => {
            ended.push((m.clone(), status));
            false
        }
        None => true,
    });
    ended
}

/// A message's end by expiry at `now_ms`.
fn expired_at(now_ms: i64) -> impl Fn(&C2dMessage) -> Option<FeedbackStatus> {
    move |m| (m.expiry_ms() <= now_ms).then_some(FeedbackStatus::Expired)
}

/// What a device session subscribed to, one flag per [`Subscription`] (stored as flags, so
/// persistent sessions keep their stored shape).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscriptions {
    /// [`Subscription::C2d`]
    pub c2d: bool,
    /// [`Subscription::Methods`]
    pub methods: bool,
    /// [`Subscription::TwinResponses`]
    pub twin_responses: bool,
    /// [`Subscription::DesiredPatches`]
    pub desired: bool,
    /// `$iothub/credentials/res/#`: certificate renewal answers (only on the renewal
    /// api-version; sessions stored before it read as unsubscribed).
    #[serde(default)]
    pub credentials: bool,
}

impl Subscriptions {
    /// Subscribes to (`true`) or unsubscribes from one.
    pub fn set(&mut self, subscription: Subscription, on: bool) {
        *match subscription {
            Subscription::C2d => &mut self.c2d,
            Subscription::Methods => &mut self.methods,
            Subscription::TwinResponses => &mut self.twin_responses,
            Subscription::DesiredPatches => &mut self.desired,
        } = on;
    }
}

/// A persistent session as stored: its subscriptions.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSession {
    hub: String,
    device_id: String,
    subscriptions: Subscriptions,
}

/// Something for a connected device's session task to send.
#[derive(Debug)]
pub enum Outbound {
    /// A PUBLISH (QoS 1) to the device.
    Publish {
        /// Topic.
        topic: String,
        /// Payload.
        payload: Vec<u8>,
        /// The C2D message id, when this delivers one: it leaves the queue only once the
        /// device acknowledges it.
        c2d: Option<String>,
    },
    /// A telemetry message could not be committed: the connection closes without its PUBACK,
    /// so the device sends it again on its next connection.
    NotStored,
    /// The PUBACK of a telemetry message, sent once it is committed and not before
    /// `not_before` (latency and traffic shaping delay acknowledgements, not storage).
    PubAck {
        /// Packet id.
        pkid: u16,
        /// Earliest time to send it.
        not_before: Option<std::time::Instant>,
    },
}

/// Realism knobs of one hub, off by default.
#[derive(Debug, Clone, Default)]
pub struct HubKnobs {
    /// Delay before the hub handles each device request.
    pub latency: Duration,
    /// New connections per second (Azure S1: 100/s) before CONNACK "server unavailable".
    pub connections_per_second: Option<u32>,
    /// Device-to-cloud messages per second: beyond it traffic is shaped (delayed) for up to a
    /// second, then the connection is dropped with 429001, as IoT Hub does.
    pub messages_per_second: Option<u32>,
    /// Refuse this many next connections.
    pub refuse_next_connections: u32,
    /// Milliseconds between a renewal's 202 and its outcome (0: at once), so a second request
    /// meets the pending one (409005, `replace`).
    pub certificate_issuance_delay_ms: u64,
}

/// A change to a hub's knobs as a host asks for it; `None` leaves a knob as it is.
#[derive(Debug, Clone, Default)]
pub struct HubKnobChange {
    /// Seconds before the hub handles each device request (0 or more).
    pub latency: Option<f64>,
    /// New connections a second; 0 removes the limit.
    pub connections_per_second: Option<u32>,
    /// Device-to-cloud messages a second; 0 removes the limit.
    pub messages_per_second: Option<u32>,
    /// Refuse this many next connections.
    pub refuse_next_connections: Option<u32>,
    /// Milliseconds between a renewal's 202 and its outcome.
    pub certificate_issuance_delay_ms: Option<u64>,
}

impl HubKnobChange {
    /// Checks the values (`Config` error naming the first bad one) and gives the change to
    /// apply.
    pub fn validate(self) -> Result<impl FnOnce(&mut HubKnobs)> {
        let latency = self
            .latency
            .map(|s| crate::error::non_negative_seconds("latency", s))
            .transpose()?;
        Ok(move |k: &mut HubKnobs| {
            if let Some(latency) = latency {
                k.latency = latency;
            }
            if let Some(rate) = self.connections_per_second {
                k.connections_per_second = (rate > 0).then_some(rate);
            }
            if let Some(rate) = self.messages_per_second {
                k.messages_per_second = (rate > 0).then_some(rate);
            }
            if let Some(n) = self.refuse_next_connections {
                k.refuse_next_connections = n;
            }
            if let Some(ms) = self.certificate_issuance_delay_ms {
                k.certificate_issuance_delay_ms = ms;
            }
        })
    }
}

/// A hub's tier, its daily message meter and the refusals its throttles produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HubUsage {
    /// ARM `sku.name` (S1 when none was chosen).
    pub sku: String,
    /// ARM `sku.capacity`.
    pub units: u32,
    /// Whether the hub enforces its tier's throttles and quota.
    pub presets: bool,
    /// Messages the hub takes a day (tier quota times units).
    pub daily_quota: u64,
    /// Messages metered today, each message counted in blocks of `meter_block_bytes`.
    pub messages_used: u64,
    /// The block size a message is metered in.
    pub meter_block_bytes: usize,
    /// When the meter resets (the next 00:00 UTC), Unix seconds.
    pub resets_at: i64,
    /// Operations refused with 429001, by operation: `connections` (CONNACK refused),
    /// `d2c_sends` (the connection dropped past the shaping window), `twin_reads`,
    /// `twin_updates`, `direct_methods`, `c2d_sends`, `registry_operations`, `queries`.
    pub throttled: std::collections::BTreeMap<String, u64>,
    /// Messages refused with 403002 once the daily quota was spent.
    pub quota_refusals: u64,
}

impl Session {
    /// Queues something other than a PUBACK for the device, keeping the room PUBACKs need;
    /// false (and the connection closed) when the device does not keep up.
    fn offer(&self, message: Outbound, hub: &str, device_id: &str) -> bool {
        if self.outbound.capacity() > TELEMETRY_WINDOW && self.outbound.try_send(message).is_ok() {
            return true;
        }
        if !self.outbound.is_closed() {
            log::warn!(
                "hub {hub}: {device_id} does not read what the hub sends ({OTHER_OUTBOUND} messages waiting); disconnecting it"
            );
            self.kick.notify_one();
        }
        false
    }
}

struct Session {
    generation: u64,
    outbound: mpsc::Sender<Outbound>,
    kick: Arc<Notify>,
    /// The highest C2D sequence this session delivered: later messages are new to it, earlier
    /// ones still queued wait for its PUBACK (a new session delivers them again).
    c2d_delivered_up_to: Option<u64>,
}

type DeviceKey = (String, String);

/// A direct-method call sent to a device and not answered yet.
struct PendingMethod {
    /// The device the request went to: only it may answer.
    device: DeviceKey,
    /// Where the answer goes (or why the device's answer was refused).
    waiter: oneshot::Sender<Result<(u16, Value)>>,
}

/// A live device session, handed to the connection task.
pub struct SessionHandle {
    /// Where the engine sends messages for the device.
    pub outbound: mpsc::Receiver<Outbound>,
    /// Fires when a newer connection of the same device takes over.
    pub kick: Arc<Notify>,
    /// Session generation (to unregister only our own session).
    pub generation: u64,
    /// Whether subscriptions of an earlier session were kept (CleanSession=0).
    pub session_present: bool,
}

/// IoT Hub state and service operations.
pub struct HubEngine {
    cloud: Arc<Cloud>,
    store: Arc<Store>,
    writer: crate::emulator::store::TelemetryWriter,
    sessions: Mutex<HashMap<DeviceKey, Session>>,
    subscriptions: Mutex<HashMap<DeviceKey, Subscriptions>>,
    /// Method calls waiting for their answer, by request id: the device asked, and the waiter.
    pending_methods: Mutex<HashMap<String, PendingMethod>>,
    next_generation: Mutex<u64>,
    knobs: Mutex<HashMap<String, HubKnobs>>,
    /// The tier presets, throttles and daily meters of the hubs.
    quotas: HubQuotas,
    /// The next C2D sequence number.
    c2d_sequence: std::sync::atomic::AtomicU64,
    /// When devices' queued C2D messages expire: (Unix milliseconds, hub, device), the earliest
    /// first. Rebuilt from the store at start (each queue's earliest expiry), added to by each
    /// send; an entry whose message left meanwhile only costs a look at its queue. The sweeper
    /// ([`HubEngine::sweep_expired_c2d`]) sleeps until the first.
    expiries: Mutex<std::collections::BinaryHeap<std::cmp::Reverse<(i64, String, String)>>>,
    /// Woken when an expiry earlier than the sweeper's next one is added.
    expiry_added: Arc<Notify>,
    /// The hubs' delivery feedback.
    feedback: crate::emulator::feedback::Feedback,
    /// When each device last connected or disconnected, and was last active (the registry's
    /// `connectionStateUpdatedTime` and `lastActivityTime`; kept in memory, as they describe
    /// connections, which end with the emulator).
    activity: Mutex<HashMap<DeviceKey, Activity>>,
    /// Woken whenever a device's subscriptions change: a direct method given a connect timeout
    /// waits on it for its device to come online.
    subscribed: Notify,
    /// Certificate renewals: each device's pending operation and the answers waiting for it.
    renewals: renewal::Renewals,
}

/// A device's connection times, Unix seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// The last connect or disconnect.
    pub connection_state_updated: i64,
    /// The last connect, disconnect or message from the device.
    pub last_activity: i64,
}

fn key(hub: &str, device: &str) -> DeviceKey {
    (hub.to_ascii_lowercase(), device.to_string())
}

/// Where a device's twin is stored.
/// IoT Hub's refusal of a change that would grow a twin section (`"Reported"` or
/// `"Desired"`) past its limit, in the words Azure answers with.
fn twin_too_large(section: &str) -> Error {
    Error::service(
        403,
        crate::limits::TWIN_TOO_LARGE_ERROR_CODE,
        format!(
            "'Properties.{section}' size should be less than {} bytes.",
            MAX_TWIN_SECTION_BYTES
        ),
    )
}

fn twin_key(hub: &str, device_id: &str) -> String {
    format!("{}/{device_id}", hub.to_ascii_lowercase())
}

impl HubEngine {
    /// Commits the telemetry still queued and closes the writer (the emulator is stopping).
    pub fn stop_writer(&self) {
        self.writer.stop();
    }

    /// An engine over the cloud's identities and the store.
    pub fn new(cloud: Arc<Cloud>, store: Arc<Store>) -> Result<Self> {
        // Telemetry stored before the events endpoint existed is placed on its partitions
        // first, so readers see every message retained.
        for hub in cloud.hubs() {
            let placed = store
                .assign_partitions(&hub.host_name.to_ascii_lowercase(), |device| {
                    hub.events.partition_of(device)
                })?;
            if placed > 0 {
                log::info!(
                    "emulator: {placed} telemetry messages of hub {} placed on its event partitions",
                    hub.name
                );
            }
        }
        let writer = crate::emulator::store::TelemetryWriter::start(store.clone())?;
        // Persistent sessions outlive the emulator as they outlive a hub restart on Azure: the
        // Python SDK never subscribes again after reconnecting.
        let subscriptions = store
            .all::<StoredSession>(SESSION)?
            .into_iter()
            .map(|s| (key(&s.hub, &s.device_id), s.subscriptions))
            .collect();
        let mut expiries = std::collections::BinaryHeap::new();
        for (k, queue) in store.all_keyed::<Vec<C2dMessage>>(crate::emulator::store::kind::C2D)? {
            let Some((hub, device_id)) = k.split_once('/') else {
                continue;
            };
            if let Some(first) = queue.iter().map(C2dMessage::expiry_ms).min() {
                expiries.push(std::cmp::Reverse((
                    first,
                    hub.to_string(),
                    device_id.to_string(),
                )));
            }
        }
        let presets: HashMap<String, crate::limits::HubSku> = cloud
            .hubs()
            .into_iter()
            .filter(|h| h.presets)
            .filter_map(|h| Some((h.host_name.to_ascii_lowercase(), h.sku?)))
            .collect();
        Ok(HubEngine {
            feedback: crate::emulator::feedback::Feedback::new(
                store.clone(),
                cloud.clock().clone(),
            ),
            cloud,
            store,
            writer,
            sessions: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(subscriptions),
            pending_methods: Mutex::new(HashMap::new()),
            next_generation: Mutex::new(0),
            knobs: Mutex::new(HashMap::new()),
            quotas: HubQuotas::new(presets),
            // Seeded with the clock, so messages queued after a restart sort after those queued
            // before it without reading every queue at start.
            c2d_sequence: std::sync::atomic::AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_micros() as u64),
            ),
            activity: Mutex::new(HashMap::new()),
            subscribed: Notify::new(),
            renewals: renewal::Renewals::default(),
            expiries: Mutex::new(expiries),
            expiry_added: Arc::new(Notify::new()),
        })
    }

    /// The cloud's clock, which the hubs judge tokens, certificates and expiries by.
    pub(crate) fn clock(&self) -> &crate::clock::Clock {
        self.cloud.clock()
    }

    /// A message's enqueued time now, on the cloud's clock (Unix seconds with fractions): the
    /// events' times and their retention read the same clock.
    pub(crate) fn enqueued_now(&self) -> f64 {
        self.cloud.clock().now_ms() as f64 / 1000.0
    }

    /// Changes a hub's knobs.
    pub fn update_knobs(&self, hub: &str, change: impl FnOnce(&mut HubKnobs)) {
        change(
            lock(&self.knobs)
                .entry(hub.to_ascii_lowercase())
                .or_default(),
        );
    }

    /// The knobs of a hub.
    pub fn knobs(&self, hub: &str) -> HubKnobs {
        lock(&self.knobs)
            .get(&hub.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// Makes a hub enforce a tier's throttles and daily quota (`None`: stop enforcing).
    pub fn set_preset(&self, hub: &str, sku: Option<crate::limits::HubSku>) {
        self.quotas.set_preset(hub, sku);
    }

    /// Admits an operation of a hub's tier (a direct method costs its payload's 4 KB blocks,
    /// anything else 1): `Err` with IoT Hub's 429001 once the throttle is spent.
    pub fn admit(
        &self,
        hub: &str,
        operation: HubOperation,
        cost: f64,
    ) -> std::result::Result<(), Throttled> {
        self.quotas.admit(hub, operation, cost, None)
    }

    /// Meters a device-to-cloud message of `size` bytes (body and properties) against the
    /// daily quota of the hub's tier: `Err` (403002, in Azure's words) once it is spent. The
    /// first message after a start counts today's stored telemetry first, so a restart does
    /// not hand out a second quota.
    pub fn meter_message(&self, hub: &str, size: usize) -> std::result::Result<(), String> {
        self.quotas
            .meter_message(hub, size, |sku| self.stored_messages_today(hub, sku))
    }

    /// Today's UTC day and the messages the hub stored since its start, metered in the tier's
    /// blocks.
    fn stored_messages_today(
        &self,
        hub: &str,
        sku: crate::limits::HubSku,
    ) -> std::result::Result<(i64, u64), String> {
        let (day, since) = start_of_today();
        let used = self
            .store
            .telemetry_sizes_since(&hub.to_ascii_lowercase(), since as f64)
            .map_err(|e| format!("reading today's messages for the quota failed: {e}"))?
            .into_iter()
            .map(|size| sku.metered_messages(size))
            .sum();
        Ok((day, used))
    }

    /// The hub's tier, today's message meter and the refusals its throttles produced.
    pub fn usage(&self, hub: &str) -> Result<HubUsage> {
        let record = self
            .cloud
            .hubs()
            .into_iter()
            .find(|h| h.host_name.eq_ignore_ascii_case(hub))
            .ok_or_else(|| Error::config(format!("no hub has the host name {hub:?}")))?;
        let sku = record.sku.unwrap_or(crate::limits::HubSku {
            tier: crate::limits::HubTier::S1,
            units: 1,
        });
        let presets = self.quotas.preset(hub).is_some();
        let counters = if presets {
            self.quotas
                .ensure_counted(hub, |sku| self.stored_messages_today(hub, sku))
                .map_err(Error::config)?;
            self.quotas.counters(hub)
        } else {
            // Azure meters every hub; one that enforces nothing is not metered as it goes, so
            // its stored messages of today are counted now.
            let (_, used) = self
                .stored_messages_today(hub, sku)
                .map_err(Error::config)?;
            HubCounters {
                messages_used: used,
                ..self.quotas.counters(hub)
            }
        };
        Ok(HubUsage {
            sku: sku.tier.name().to_string(),
            units: sku.units,
            presets,
            daily_quota: sku.daily_messages(),
            messages_used: counters.messages_used,
            meter_block_bytes: sku.tier.limits().meter_block_bytes,
            resets_at: counters.resets_at,
            throttled: counters.throttled,
            quota_refusals: counters.quota_refusals,
        })
    }

    /// Connection admission: fault injection and the connection rate (the knob, else the
    /// hub's tier). `Err` = refuse.
    pub fn admit_connection(&self, hub: &str) -> std::result::Result<(), String> {
        let rate = {
            let mut knobs = lock(&self.knobs);
            let knobs = knobs.entry(hub.to_ascii_lowercase()).or_default();
            if knobs.refuse_next_connections > 0 {
                knobs.refuse_next_connections -= 1;
                return Err("connection refused (emulator fault injection)".into());
            }
            knobs.connections_per_second
        };
        self.quotas
            .admit(
                hub,
                HubOperation::Connection,
                1.0,
                rate.map(Rate::per_second),
            )
            .map_err(|t| t.to_string())
    }

    /// Device-to-cloud send admission: `Ok(delay)` to shape the traffic (the knob's latency
    /// plus the backlog of the send rate, the knob's else the tier's), `Err` when the hub
    /// throttles.
    pub fn admit_message(&self, hub: &str) -> std::result::Result<Duration, String> {
        let knobs = self.knobs(hub);
        let shaping = self
            .quotas
            .shape_send(hub, knobs.messages_per_second.map(Rate::per_second))
            .map_err(|t| t.to_string())?;
        Ok(knobs.latency + shaping)
    }

    /// Drops a device's connection now (fault injection); true if it was connected.
    pub fn drop_connection(&self, hub: &str, device_id: &str) -> bool {
        match lock(&self.sessions).get(&key(hub, device_id)) {
            Some(session) => {
                session.kick.notify_one();
                true
            }
            None => false,
        }
    }

    /// Whether a device has a live connection.
    pub fn is_connected(&self, hub: &str, device_id: &str) -> bool {
        lock(&self.sessions).contains_key(&key(hub, device_id))
    }

    /// How many devices of a hub have a live connection.
    pub fn connected_count(&self, hub: &str) -> usize {
        let hub = hub.to_ascii_lowercase();
        lock(&self.sessions).keys().filter(|k| k.0 == hub).count()
    }

    /// A device's connection times (zero: nothing since the emulator started).
    pub fn activity(&self, hub: &str, device_id: &str) -> Activity {
        lock(&self.activity)
            .get(&key(hub, device_id))
            .copied()
            .unwrap_or_default()
    }

    /// Records activity of a device; `connection` when it connected or disconnected.
    fn touch(&self, hub: &str, device_id: &str, connection: bool) {
        let t = self.cloud.clock().now();
        let mut activity = lock(&self.activity);
        let entry = activity.entry(key(hub, device_id)).or_default();
        entry.last_activity = t;
        if connection {
            entry.connection_state_updated = t;
        }
    }

    /// Deletes a device identity with its twin, queued C2D messages and session, closing its
    /// connection (a device created again later starts afresh, as on Azure).
    pub fn delete_device(&self, hub: &str, device_id: &str) -> Result<()> {
        self.device(hub, device_id)?;
        let k = key(hub, device_id);
        self.drop_connection(hub, device_id);
        self.forget_subscriptions(&k);
        self.renewals.forget(&k);
        lock(&self.activity).remove(&k);
        self.store.delete(
            crate::emulator::store::kind::TWIN,
            &twin_key(hub, device_id),
        )?;
        self.store.delete(
            crate::emulator::store::kind::C2D,
            &Self::c2d_key(hub, device_id),
        )?;
        self.cloud.delete_hub_device(hub, device_id)
    }

    /// The hub record whose host name is `host`.
    pub fn hub_for_host(&self, host: &str) -> Option<String> {
        self.cloud.hub_host(host)
    }

    /// Checks a device's credential at CONNECT.
    pub fn authenticate(
        &self,
        host: &str,
        device_id: &str,
        password: Option<&[u8]>,
        chain: &[Certificate],
    ) -> std::result::Result<(String, HubDevice), String> {
        let hub = self
            .hub_for_host(host)
            .ok_or_else(|| format!("no hub has the host name {host:?}"))?;
        let device = self
            .cloud
            .hub_device(&hub, device_id)
            .ok_or_else(|| format!("device {device_id:?} is not registered in hub {hub}"))?;
        if device.registry.status == DeviceStatus::Disabled {
            return Err(format!("device {device_id:?} is disabled in hub {hub}"));
        }
        match (&device.auth, password.filter(|p| !p.is_empty())) {
            (
                DeviceAuth::Sas {
                    primary_key,
                    secondary_key,
                },
                Some(password),
            ) => {
                let token = std::str::from_utf8(password)
                    .map_err(|_| "the password is not UTF-8".to_string())
                    .and_then(|t| SasToken::parse(t).map_err(|e| e.to_string()))?;
                let expected = crate::protocol::hub::sas_audience(&hub, device_id);
                if !token.resource.eq_ignore_ascii_case(&expected) {
                    return Err(format!(
                        "SAS token is for {:?}, not {expected:?}",
                        token.resource
                    ));
                }
                if token.expiry <= self.cloud.clock().now() {
                    return Err("SAS token has expired".into());
                }
                if !(token.is_signed_by(primary_key) || token.is_signed_by(secondary_key)) {
                    return Err("SAS token is not signed by the device's key".into());
                }
            }
            (
                DeviceAuth::SelfSigned {
                    primary_thumbprint,
                    primary_thumbprint_sha256,
                    secondary_thumbprint,
                },
                None,
            ) => {
                let leaf = chain.first().ok_or("no client certificate was presented")?;
                let info = leaf.info();
                check_validity(leaf, self.cloud.clock().now())?;
                // The service API takes SHA-1 or SHA-256 thumbprints in either slot.
                let presented = |thumbprint: &str| {
                    !thumbprint.is_empty()
                        && (info.thumbprint_sha1.eq_ignore_ascii_case(thumbprint)
                            || info.thumbprint_sha256.eq_ignore_ascii_case(thumbprint))
                };
                if ![
                    primary_thumbprint.as_str(),
                    primary_thumbprint_sha256,
                    secondary_thumbprint.as_deref().unwrap_or_default(),
                ]
                .into_iter()
                .any(presented)
                {
                    return Err(format!(
                        "certificate thumbprint {} does not match the device's registered thumbprint {primary_thumbprint}",
                        info.thumbprint_sha1
                    ));
                }
            }
            (DeviceAuth::Sas { .. }, None) => {
                return Err("the device uses SAS: a token is required".into());
            }
            (DeviceAuth::SelfSigned { .. } | DeviceAuth::CertificateAuthority, Some(_)) => {
                return Err("the device uses X.509: present its certificate, not a token".into());
            }
            (DeviceAuth::CertificateAuthority, None) => {
                self.authenticate_by_ca(&hub, device_id, chain)?;
            }
        }
        Ok((hub, device))
    }

    /// A `certificateAuthority` identity: every presented certificate valid at the cloud's
    /// now, the leaf's CN the device id, and the chain leading to the issuing CA of a Device
    /// Registry policy synced to the hub (any certificate issued by it works, so a renewed one
    /// at once and the one it replaces until it expires).
    fn authenticate_by_ca(
        &self,
        hub: &str,
        device_id: &str,
        chain: &[Certificate],
    ) -> std::result::Result<(), String> {
        let leaf = chain.first().ok_or("no client certificate was presented")?;
        let now = self.cloud.clock().now();
        for certificate in chain {
            check_validity(certificate, now)?;
        }
        let cn = leaf.info().common_name.clone().unwrap_or_default();
        if cn != device_id {
            return Err(format!(
                "the certificate's CN {cn:?} is not the device id {device_id:?}"
            ));
        }
        let trusted = self.cloud.hub_issuing_cas(hub);
        if trusted.is_empty() {
            return Err(format!(
                "device {device_id:?} authenticates by certificateAuthority, and hub {hub} \
                 trusts no CA: link it to a Device Registry namespace with a credential policy"
            ));
        }
        let leads_to = |policy: &Arc<crate::emulator::device_registry::IssuingPolicy>| {
            crate::pki::verify_chain(
                leaf,
                &chain[1..],
                std::slice::from_ref(policy.issuing_ca()),
                now,
            )
            .is_ok()
        };
        if !trusted.iter().any(leads_to) {
            return Err(format!(
                "the certificate chain of {device_id:?} does not lead to an issuing CA hub {hub} \
                 trusts"
            ));
        }
        Ok(())
    }

    /// Registers a session, kicking an older connection of the same device.
    pub fn open_session(&self, hub: &str, device_id: &str, clean_session: bool) -> SessionHandle {
        let k = key(hub, device_id);
        // PUBACKs are bounded by the telemetry window (the session stops reading when it is
        // full); everything else by `OTHER_OUTBOUND`, checked before each send.
        let (tx, rx) = mpsc::channel(TELEMETRY_WINDOW + OTHER_OUTBOUND);
        let kick = Arc::new(Notify::new());
        let generation = {
            let mut next = lock(&self.next_generation);
            *next += 1;
            *next
        };
        self.touch(hub, device_id, true);
        if let Some(old) = lock(&self.sessions).insert(
            k.clone(),
            Session {
                generation,
                outbound: tx,
                kick: kick.clone(),
                c2d_delivered_up_to: None,
            },
        ) {
            log::info!(
                "hub {hub}: {device_id} connected again; closing its older connection (400027)"
            );
            old.kick.notify_one();
        }
        let session_present = if clean_session {
            self.forget_subscriptions(&k);
            self.renewals.clean_session(&k);
            false
        } else {
            lock(&self.subscriptions).contains_key(&k)
        };
        SessionHandle {
            outbound: rx,
            kick,
            generation,
            session_present,
        }
    }

    /// After CONNACK of a resumed persistent session: delivers what waited while the device was
    /// away (the Python SDK never re-subscribes after a reconnect).
    pub fn resume(&self, hub: &str, device_id: &str) {
        if self.subscriptions(hub, device_id).c2d {
            self.flush_c2d(hub, device_id);
        }
        self.deliver_renewal_answers(hub, device_id);
    }

    /// Ends a session (unless a newer one already replaced it).
    pub fn close_session(&self, hub: &str, device_id: &str, generation: u64, clean_session: bool) {
        let k = key(hub, device_id);
        let mut sessions = lock(&self.sessions);
        // Unacknowledged C2D messages stay queued: the next session delivers them again.
        if sessions.get(&k).is_some_and(|s| s.generation == generation) {
            sessions.remove(&k);
            drop(sessions);
            self.touch(hub, device_id, true);
            if clean_session {
                self.forget_subscriptions(&k);
            }
        }
    }

    fn forget_subscriptions(&self, k: &DeviceKey) {
        let removed = lock(&self.subscriptions).remove(k).is_some();
        if removed && let Err(e) = self.store.delete(SESSION, &format!("{}/{}", k.0, k.1)) {
            log::warn!("emulator: forgetting the session of {} failed: {e}", k.1);
        }
    }

    /// Records a subscription; delivers queued C2D messages when the C2D topic is subscribed.
    pub fn subscribe(&self, hub: &str, device_id: &str, change: impl FnOnce(&mut Subscriptions)) {
        let k = key(hub, device_id);
        let (before, after) = {
            let mut subscriptions = lock(&self.subscriptions);
            let entry = subscriptions.entry(k.clone()).or_default();
            let before = *entry;
            change(entry);
            (before, *entry)
        };
        if after != before {
            let stored = StoredSession {
                hub: k.0.clone(),
                device_id: k.1.clone(),
                subscriptions: after,
            };
            if let Err(e) = self
                .store
                .put(SESSION, &format!("{}/{}", k.0, k.1), &stored)
            {
                log::warn!("emulator: storing the session of {device_id} failed: {e}");
            }
        }
        if after.c2d {
            self.flush_c2d(hub, device_id);
        }
        if after.credentials {
            self.deliver_renewal_answers(hub, device_id);
        }
        self.subscribed.notify_waiters();
    }

    fn subscriptions(&self, hub: &str, device_id: &str) -> Subscriptions {
        lock(&self.subscriptions)
            .get(&key(hub, device_id))
            .copied()
            .unwrap_or_default()
    }

    fn send_to(&self, hub: &str, device_id: &str, message: Outbound) -> bool {
        lock(&self.sessions)
            .get(&key(hub, device_id))
            .is_some_and(|s| s.offer(message, hub, device_id))
    }

    /// Stores a telemetry message; once committed, `ack` (the packet id of a QoS 1 PUBLISH)
    /// goes back to the device through `session`. The session keeps reading meanwhile, so a
    /// device with many messages in flight fills whole batches.
    ///
    /// Waits while the writer's queue is full: a flood slows the connection that sends it.
    pub async fn store_telemetry(
        &self,
        record: TelemetryRecord,
        ack: Option<(u16, mpsc::Sender<Outbound>)>,
        not_before: Option<std::time::Instant>,
    ) -> Result<()> {
        self.touch(&record.hub, &record.device_id, false);
        // The message's place in the hub's Event Hub-compatible endpoint, fixed now so its
        // sequence number is assigned in the commit.
        let partition = self
            .cloud
            .read()
            .hubs
            .values()
            .find(|h| h.host_name.eq_ignore_ascii_case(&record.hub))
            .map(|h| h.events.partition_of(&record.device_id));
        self.writer
            .append(
                record,
                partition,
                Box::new(move |committed| {
                    let Some((pkid, session)) = ack else { return };
                    let outcome = if committed {
                        Outbound::PubAck { pkid, not_before }
                    } else {
                        Outbound::NotStored
                    };
                    if let Err(mpsc::error::TrySendError::Full(_)) = session.try_send(outcome) {
                        // Cannot happen while sessions keep to the telemetry window; the device
                        // sends the message again, as after any lost PUBACK.
                        log::error!("emulator: a session's queue had no room for a PUBACK");
                    }
                }),
            )
            .await
    }

    /// The sender of a device's live session (to route acknowledgements to it).
    pub fn session_sender(&self, hub: &str, device_id: &str) -> Option<mpsc::Sender<Outbound>> {
        lock(&self.sessions)
            .get(&key(hub, device_id))
            .map(|s| s.outbound.clone())
    }

    // ---- twins ---------------------------------------------------------------------------

    fn device(&self, hub: &str, device_id: &str) -> Result<HubDevice> {
        self.cloud.hub_device(hub, device_id).ok_or_else(|| {
            Error::service(
                404,
                404_001,
                format!("Device '{device_id}' was not found in hub {hub}."),
            )
        })
    }

    /// The stored twin of a device, or its initial twin when it was never changed.
    fn read_twin(&self, hub: &str, device_id: &str) -> Result<Twin> {
        let device = self.device(hub, device_id)?;
        let stored: Option<Twin> = self.store.get(
            crate::emulator::store::kind::TWIN,
            &twin_key(hub, device_id),
        )?;
        Ok(stored.unwrap_or_else(|| Twin::from_initial(device.initial_twin.as_ref())))
    }

    /// Changes a twin in one store transaction, so concurrent patches (device and service)
    /// each see the other's version; no engine lock is held meanwhile.
    fn update_twin<T>(
        &self,
        hub: &str,
        device_id: &str,
        change: impl FnOnce(&mut Twin) -> Result<T>,
    ) -> Result<T> {
        let device = self.device(hub, device_id)?;
        self.store.update(
            crate::emulator::store::kind::TWIN,
            &twin_key(hub, device_id),
            |stored: Option<Twin>| {
                let mut twin =
                    stored.unwrap_or_else(|| Twin::from_initial(device.initial_twin.as_ref()));
                let out = change(&mut twin)?;
                Ok((Some(twin), out))
            },
        )
    }

    /// The twin as the device sees it (GET).
    pub fn device_twin(&self, hub: &str, device_id: &str) -> Result<Value> {
        Ok(self.read_twin(hub, device_id)?.device_view())
    }

    /// The twin document as the service sees it.
    pub fn service_twin(&self, hub: &str, device_id: &str) -> Result<Value> {
        Ok(self.read_twin(hub, device_id)?.service_view(device_id))
    }

    /// Applies a reported-properties patch from the device; returns the new reported version.
    pub fn patch_reported(&self, hub: &str, device_id: &str, patch: &[u8]) -> Result<u64> {
        let patch: Value = serde_json::from_slice(patch).map_err(|e| {
            Error::service(400, 400_004, format!("The reported patch is not JSON: {e}"))
        })?;
        let Value::Object(patch) = patch else {
            return Err(Error::service(
                400,
                400_004,
                "The reported patch must be a JSON object.",
            ));
        };
        self.touch(hub, device_id, false);
        self.update_twin(hub, device_id, |twin| {
            let mut next = twin.reported.clone();
            merge(&mut next, &patch);
            if Value::Object(next.clone()).to_string().len() > MAX_TWIN_SECTION_BYTES {
                return Err(twin_too_large("Reported"));
            }
            twin.reported = next;
            twin.reported_version += 1;
            Ok(twin.reported_version)
        })
    }

    /// Applies a desired-properties patch from the service, notifies a subscribed device, and
    /// returns the twin document.
    pub fn update_desired(
        &self,
        hub: &str,
        device_id: &str,
        patch: &Map<String, Value>,
    ) -> Result<Value> {
        self.write_twin(
            hub,
            device_id,
            TwinWrite::Patch {
                tags: None,
                desired: Some(patch),
            },
            None,
        )
    }

    /// Merges a tags patch (service side).
    pub fn update_tags(
        &self,
        hub: &str,
        device_id: &str,
        patch: &Map<String, Value>,
    ) -> Result<Value> {
        self.write_twin(
            hub,
            device_id,
            TwinWrite::Patch {
                tags: Some(patch),
                desired: None,
            },
            None,
        )
    }

    /// Changes a twin's tags and desired properties as the service API's PATCH or PUT does,
    /// in one transaction; with an `If-Match` other than `*` only while the twin still has that
    /// etag (else 412001, nothing changed). A change of the desired properties bumps their
    /// version and is sent to a device subscribed to desired patches: a PATCH as the service
    /// sent it, a PUT as the merge patch that turns the old properties into the new ones (the
    /// keys it removed as `null`), either with `$version` last. Returns the twin document.
    pub fn write_twin(
        &self,
        hub: &str,
        device_id: &str,
        write: TwinWrite<'_>,
        if_match: Option<&str>,
    ) -> Result<Value> {
        let (view, notification) = self.update_twin(hub, device_id, |twin| {
            if let Some(tag) = if_match
                && tag != "*"
                && tag != twin.etag()
            {
                return Err(Error::service(
                    412,
                    412_001,
                    format!(
                        "The specified ETag does not match the current ETag of the twin of \
                         device '{device_id}'. Read it again and retry with its etag."
                    ),
                ));
            }
            let (tags, desired_patch) = match write {
                TwinWrite::Patch { tags, desired } => {
                    let mut next_tags = twin.tags.clone();
                    if let Some(tags) = tags {
                        merge(&mut next_tags, tags);
                    }
                    (next_tags, desired.cloned())
                }
                TwinWrite::Replace { tags, desired } => {
                    // Merged into nothing: the hub's own `$` keys and nulls are dropped.
                    let mut next_tags = Map::new();
                    merge(&mut next_tags, tags);
                    let mut next_desired = Map::new();
                    merge(&mut next_desired, desired);
                    (
                        next_tags,
                        Some(replacement_patch(&twin.desired, &next_desired)),
                    )
                }
            };
            twin.tags = tags;
            let Some(patch) = desired_patch else {
                return Ok((twin.service_view(device_id), None));
            };
            let mut next = twin.desired.clone();
            merge(&mut next, &patch);
            if Value::Object(next.clone()).to_string().len() > MAX_TWIN_SECTION_BYTES {
                return Err(twin_too_large("Desired"));
            }
            twin.desired = next;
            twin.desired_version += 1;
            Ok((
                twin.service_view(device_id),
                Some((patch, twin.desired_version)),
            ))
        })?;
        if let Some((patch, version)) = notification
            && self.subscriptions(hub, device_id).desired
        {
            // The patch (nulls included: they delete), then `$version` last, as IoT Hub
            // notifies it.
            let body = with_version(&patch, version);
            self.send_to(
                hub,
                device_id,
                Outbound::Publish {
                    topic: CloudPublish::DesiredPatch {
                        version: Some(version),
                    }
                    .topic(),
                    payload: body.to_string().into_bytes(),
                    c2d: None,
                },
            );
        }
        Ok(view)
    }

    // ---- direct methods ------------------------------------------------------------------

    /// Invokes a direct method on a device that is online now and waits for its answer.
    pub async fn invoke_method(
        &self,
        hub: &str,
        device_id: &str,
        name: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<(u16, Value)> {
        self.invoke_method_waiting(hub, device_id, name, payload, Duration::ZERO, timeout)
            .await
    }

    /// Whether the device is connected and subscribed to direct methods, waiting up to
    /// `connect_timeout` for it to become so.
    async fn method_listener_online(
        &self,
        hub: &str,
        device_id: &str,
        connect_timeout: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + connect_timeout;
        loop {
            // Armed before the check, so a subscription between the check and the wait wakes it.
            let woken = self.subscribed.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.subscriptions(hub, device_id).methods
                && lock(&self.sessions).contains_key(&key(hub, device_id))
            {
                return true;
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return false;
            }
        }
    }

    /// Invokes a direct method and waits for the device's answer: up to `connect_timeout` for
    /// the device to be online (subscribed to methods), then up to `timeout` for its answer
    /// (IoT Hub's `connectTimeoutInSeconds` and `responseTimeoutInSeconds`).
    pub async fn invoke_method_waiting(
        &self,
        hub: &str,
        device_id: &str,
        name: &str,
        payload: Value,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<(u16, Value)> {
        self.device(hub, device_id)?;
        if payload.to_string().len() > MAX_METHOD_BYTES {
            return Err(Error::service(
                413,
                413_001,
                "The method payload exceeds 128 KB.",
            ));
        }
        if !self
            .method_listener_online(hub, device_id, connect_timeout)
            .await
        {
            return Err(Error::service(
                404,
                404_103,
                format!(
                    "Device '{device_id}' is not online (or not subscribed to direct methods)."
                ),
            ));
        }
        let rid = random_guid();
        let (tx, rx) = oneshot::channel();
        lock(&self.pending_methods).insert(
            rid.clone(),
            PendingMethod {
                device: key(hub, device_id),
                waiter: tx,
            },
        );
        let body = if payload.is_null() {
            Vec::new()
        } else {
            payload.to_string().into_bytes()
        };
        let delivered = self.send_to(
            hub,
            device_id,
            Outbound::Publish {
                topic: CloudPublish::MethodRequest {
                    name: name.to_string(),
                    rid: rid.clone(),
                }
                .topic(),
                payload: body,
                c2d: None,
            },
        );
        if !delivered {
            lock(&self.pending_methods).remove(&rid);
            return Err(Error::service(
                404,
                404_103,
                format!("Device '{device_id}' is not online."),
            ));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            _ => {
                lock(&self.pending_methods).remove(&rid);
                Err(Error::service(
                    504,
                    504_101,
                    format!(
                        "Timed out waiting for the response from device '{device_id}' to method '{name}'."
                    ),
                ))
            }
        }
    }

    /// A device answered a method request. Only the device the request went to can answer
    /// it; an answer from any other device is dropped (request ids are not secrets: a device
    /// must not be able to answer for another).
    ///
    /// An answer over 128 KB is refused: the call fails with 413001 and the `Err` tells the
    /// session to close the connection. Azure documents the limit for both directions but not
    /// its answer to an oversized response; the emulator treats it as IoT Hub treats any
    /// device message over its limit on MQTT (telemetry's 413001: the connection is closed),
    /// and the caller learns why at once instead of waiting for its timeout.
    pub fn method_response(
        &self,
        hub: &str,
        device_id: &str,
        rid: &str,
        status: u16,
        payload: &[u8],
    ) -> std::result::Result<(), String> {
        let refused = (payload.len() > MAX_METHOD_BYTES).then(|| {
            format!(
                "The method response of {} bytes exceeds 128 KB ({MAX_METHOD_BYTES} bytes).",
                payload.len()
            )
        });
        let body = if refused.is_some() || payload.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(payload)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
        };
        self.touch(hub, device_id, false);
        let answering = key(hub, device_id);
        let waiter = {
            let mut pending = lock(&self.pending_methods);
            match pending.get(rid) {
                Some(call) if call.device == answering => pending.remove(rid),
                Some(_) => {
                    log::warn!(
                        "hub {hub}: {device_id} answered method request {rid}, sent to another device; dropped"
                    );
                    None
                }
                None => None,
            }
        };
        let answer = match &refused {
            Some(why) => Err(Error::service(413, 413_001, why.clone())),
            None => Ok((status, body)),
        };
        if let Some(call) = waiter {
            let _ = call.waiter.send(answer);
        }
        refused.map_or(Ok(()), |why| Err(format!("{why} (413001)")))
    }

    // ---- cloud-to-device -------------------------------------------------------------------
    //
    // A message's life: queued (with its `iothub-ack`, its expiry and a delivery count), then
    // delivered to each session of its device once; it ends when the device completes it
    // (PUBACK: `Success`), when it expires (never delivered after; the sweeper removes it at its
    // expiry even if no device connects: `Expired`), when a delivery would exceed
    // `MAX_DELIVERY_COUNT` (`DeliveryCountExceeded`), or when the back end purges the queue
    // (`Purged`). Each end is reported to the hub's feedback when the ack asks for it.

    fn c2d_key(hub: &str, device_id: &str) -> String {
        format!("{}/{device_id}", hub.to_ascii_lowercase())
    }

    /// The hubs' delivery feedback (the AMQP feedback node and the REST API take it from here).
    pub(crate) fn feedback(&self) -> &crate::emulator::feedback::Feedback {
        &self.feedback
    }

    /// Queues a message for a device (at most 50 waiting) and delivers it if the device is
    /// connected and subscribed.
    pub fn send_c2d(
        &self,
        hub: &str,
        device_id: &str,
        body: &[u8],
        properties: Vec<(String, String)>,
    ) -> Result<String> {
        self.send_c2d_as(hub, device_id, C2dOptions::default(), body, properties)
    }

    /// Queues a cloud-to-device message with what its sender set (its id, its expiry), as the
    /// AMQP endpoint receives them; the rules are [`HubEngine::send_c2d`]'s. An `iothub-ack`
    /// among the properties is the feedback asked for: one of the four names, or refused.
    pub(crate) fn send_c2d_as(
        &self,
        hub: &str,
        device_id: &str,
        options: C2dOptions,
        body: &[u8],
        mut properties: Vec<(String, String)>,
    ) -> Result<String> {
        self.device(hub, device_id)?;
        if body.len() > MAX_C2D_BYTES {
            return Err(Error::service(413, 413_001, "The message exceeds 64 KB."));
        }
        let mut ack = DeliveryAck::None;
        for (_, value) in properties.iter().filter(|(k, _)| k == ACK_PROPERTY) {
            ack = DeliveryAck::parse(value).map_err(|why| Error::service(400, 400_004, why))?;
        }
        properties.retain(|(k, _)| k != ACK_PROPERTY);
        let now_ms = self.cloud.clock().now_ms();
        let (expires_ms, sender_expiry) =
            crate::protocol::c2d::expiry_ms(options.absolute_expiry_ms, options.ttl_ms, now_ms);
        let message_id = options.message_id.unwrap_or_else(random_guid);
        self.store.update(
            crate::emulator::store::kind::C2D,
            &Self::c2d_key(hub, device_id),
            |queue: Option<Vec<C2dMessage>>| {
                let mut queue = queue.unwrap_or_default();
                if queue.len() >= MAX_C2D_QUEUE {
                    return Err(Error::service(
                        403,
                        403_004,
                        format!(
                            "Device '{device_id}' already has {MAX_C2D_QUEUE} messages waiting."
                        ),
                    ));
                }
                queue.push(C2dMessage {
                    message_id: message_id.clone(),
                    // Taken under the store's lock, so the queue is in sequence order.
                    sequence: self
                        .c2d_sequence
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    body: BASE64.encode(body),
                    properties,
                    enqueued: now_ms / 1000,
                    ack,
                    expires_ms,
                    sender_expiry,
                    delivery_count: 0,
                });
                Ok((Some(queue), ()))
            },
        )?;
        self.watch_expiry(expires_ms, hub, device_id);
        if self.subscriptions(hub, device_id).c2d {
            self.flush_c2d(hub, device_id);
        }
        Ok(message_id)
    }

    /// Tells the sweeper that a message of `device_id` expires at `expires_ms`.
    fn watch_expiry(&self, expires_ms: i64, hub: &str, device_id: &str) {
        let earliest = {
            let mut expiries = lock(&self.expiries);
            let earliest = expiries.peek().is_none_or(|first| expires_ms < first.0.0);
            expiries.push(std::cmp::Reverse((
                expires_ms,
                hub.to_ascii_lowercase(),
                device_id.to_string(),
            )));
            earliest
        };
        if earliest {
            self.expiry_added.notify_one();
        }
    }

    /// Removes the messages of every queue as they expire (with their `Expired` feedback), until
    /// the engine is gone: sleeps until the earliest expiry known, or until an earlier one is
    /// added; never reads a queue whose messages have not expired.
    pub(crate) async fn sweep_expired_c2d(engine: std::sync::Weak<HubEngine>) {
        loop {
            let Some(strong) = engine.upgrade() else {
                return;
            };
            let added_signal = strong.expiry_added.clone();
            let added = added_signal.notified();
            tokio::pin!(added);
            // Registered before the heap is read: an expiry added after this wakes the sweeper.
            added.as_mut().enable();
            let clock = strong.cloud.clock().clone();
            // Registered before the time is read: a move of the cloud's clock after this wakes
            // the sweeper (messages may have expired in the cloud's time).
            let moved = clock.moved();
            tokio::pin!(moved);
            let already_moved = arm(moved.as_mut());
            let now_ms = clock.now_ms();
            let mut due: Vec<(String, String)> = {
                let mut expiries = lock(&strong.expiries);
                let mut due = Vec::new();
                while expiries.peek().is_some_and(|first| first.0.0 <= now_ms) {
                    if let Some(std::cmp::Reverse((_, hub, device_id))) = expiries.pop() {
                        due.push((hub, device_id));
                    }
                }
                due
            };
            due.sort();
            due.dedup();
            for (hub, device_id) in due {
                strong.expire_c2d(&hub, &device_id, now_ms);
            }
            let next = lock(&strong.expiries).peek().map(|first| first.0.0);
            // The engine is not kept alive by its sweeper while it sleeps.
            drop(strong);
            // At most a minute between looks, so a step of the wall clock is noticed.
            let wait_ms = next.map_or(60_000, |at| (at - now_ms).clamp(1, 60_000));
            tokio::select! {
                _ = added => {}
                () = moved, if !already_moved => {}
                _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
            }
        }
    }

    /// Removes `device_id`'s messages expired at `now_ms`, reports them, and tells the sweeper
    /// when the next one left expires.
    fn expire_c2d(&self, hub: &str, device_id: &str, now_ms: i64) {
        let swept = self.store.update(
            crate::emulator::store::kind::C2D,
            &Self::c2d_key(hub, device_id),
            |queue: Option<Vec<C2dMessage>>| {
                let Some(mut queue) = queue else {
                    return Ok((None, (Vec::new(), None)));
                };
                let expired = take_ended(&mut queue, expired_at(now_ms));
                let next = queue.iter().map(C2dMessage::expiry_ms).min();
                Ok((Some(queue), (expired, next)))
            },
        );
        match swept {
            Ok((expired, next)) => {
                if let Some(next) = next {
                    lock(&self.expiries).push(std::cmp::Reverse((
                        next,
                        hub.to_string(),
                        device_id.to_string(),
                    )));
                }
                self.report_c2d(hub, device_id, expired);
            }
            Err(e) => log::error!("hub {hub}: cannot expire the C2D queue of {device_id}: {e}"),
        }
    }

    /// Records the feedback asked for on messages whose life ended.
    fn report_c2d(&self, hub: &str, device_id: &str, ended: Ended) {
        if ended.is_empty() {
            return;
        }
        for (message, status) in &ended {
            log::info!(
                "hub {hub}: C2D message {} of {device_id} ended: {status:?}",
                message.message_id
            );
        }
        let wanted: Vec<&(C2dMessage, FeedbackStatus)> = ended
            .iter()
            .filter(|(message, status)| message.ack.reports(*status))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let generation = self
            .cloud
            .hub_device(hub, device_id)
            .map(|d| d.generation_id())
            .unwrap_or_default();
        let at = crate::emulator::cloud::azure_time_ms(self.cloud.clock().now_ms());
        let records = wanted
            .into_iter()
            .map(|(message, status)| FeedbackRecord {
                original_message_id: message.message_id.clone(),
                enqueued_time_utc: at.clone(),
                status_code: *status,
                description: status.description().to_string(),
                device_id: device_id.to_string(),
                device_generation_id: generation.clone(),
            })
            .collect();
        if let Err(e) = self.feedback.add(hub, records) {
            log::error!("hub {hub}: cannot record the feedback of {device_id}'s messages: {e}");
        }
    }

    /// Delivers to the connected device every waiting message its session has not sent yet,
    /// each delivery counted; an expired message, or one about to be delivered a time more than
    /// `MAX_DELIVERY_COUNT`, leaves the queue instead. Reading the queue before taking the session lock is safe: a stale
    /// read can only miss newer messages (their own flush sends them), never resend an older
    /// one, because the session remembers the highest sequence it delivered.
    fn flush_c2d(&self, hub: &str, device_id: &str) {
        let now_ms = self.cloud.clock().now_ms();
        let read = self.store.update(
            crate::emulator::store::kind::C2D,
            &Self::c2d_key(hub, device_id),
            |queue: Option<Vec<C2dMessage>>| {
                let Some(mut queue) = queue else {
                    return Ok((None, (Vec::new(), Vec::new())));
                };
                let ended = take_ended(&mut queue, expired_at(now_ms));
                Ok((Some(queue.clone()), (queue, ended)))
            },
        );
        let (queue, ended) = match read {
            Ok(read) => read,
            Err(e) => {
                log::error!("hub {hub}: cannot read the C2D queue of {device_id}: {e}");
                return;
            }
        };
        self.report_c2d(hub, device_id, ended);
        let (delivered, exhausted) = self.deliver_c2d(hub, device_id, queue);
        if delivered.is_empty() && exhausted.is_empty() {
            return;
        }
        let counted = self.store.update(
            crate::emulator::store::kind::C2D,
            &Self::c2d_key(hub, device_id),
            |queue: Option<Vec<C2dMessage>>| {
                let Some(mut queue) = queue else {
                    return Ok((None, Vec::new()));
                };
                for message in queue.iter_mut() {
                    if delivered.contains(&message.sequence) {
                        message.delivery_count += 1;
                    }
                }
                let dead = take_ended(&mut queue, |m| {
                    (exhausted.contains(&m.sequence) && m.exhausted())
                        .then_some(FeedbackStatus::DeliveryCountExceeded)
                });
                Ok((Some(queue), dead))
            },
        );
        match counted {
            Ok(dead) => self.report_c2d(hub, device_id, dead),
            Err(e) => log::error!("hub {hub}: cannot count the C2D deliveries to {device_id}: {e}"),
        }
    }

    /// Offers the session of `device_id` the messages of `queue` it has not sent; returns the
    /// sequences delivered and those not delivered because their deliveries ran out. Holds the
    /// sessions' lock only.
    fn deliver_c2d(
        &self,
        hub: &str,
        device_id: &str,
        queue: Vec<C2dMessage>,
    ) -> (Vec<u64>, Vec<u64>) {
        let mut delivered = Vec::new();
        let mut exhausted = Vec::new();
        let mut sessions = lock(&self.sessions);
        let Some(session) = sessions.get_mut(&key(hub, device_id)) else {
            return (delivered, exhausted);
        };
        let delivered_before = session.c2d_delivered_up_to;
        for message in queue {
            if delivered_before.is_some_and(|up_to| message.sequence <= up_to) {
                continue;
            }
            if message.exhausted() {
                exhausted.push(message.sequence);
                continue;
            }
            let Ok(body) = BASE64.decode(&message.body) else {
                log::error!(
                    "hub {hub}: C2D message {} of {device_id} is corrupt in the store; not sent",
                    message.message_id
                );
                continue;
            };
            let expiry = message
                .sender_expiry
                .then(|| crate::emulator::cloud::azure_time_ms(message.expiry_ms()));
            let ack = (message.ack != DeliveryAck::None).then(|| message.ack.as_str());
            let delivery = CloudPublish::c2d(
                device_id,
                &message.message_id,
                expiry.as_deref(),
                message
                    .properties
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .chain(ack.map(|a| (ACK_PROPERTY, a))),
            );
            let sent = session.offer(
                Outbound::Publish {
                    topic: delivery.topic(),
                    payload: body,
                    c2d: Some(message.message_id.clone()),
                },
                hub,
                device_id,
            );
            if !sent {
                // Not delivered in this session: the next one (the device reconnects) sends it.
                break;
            }
            session.c2d_delivered_up_to = session.c2d_delivered_up_to.max(Some(message.sequence));
            delivered.push(message.sequence);
        }
        (delivered, exhausted)
    }

    /// The device acknowledged a C2D message: it leaves the queue (`Success` feedback when
    /// asked for).
    pub fn c2d_acknowledged(&self, hub: &str, device_id: &str, message_id: &str) {
        let removed = self.store.update(
            crate::emulator::store::kind::C2D,
            &Self::c2d_key(hub, device_id),
            |queue: Option<Vec<C2dMessage>>| {
                let mut queue = queue.unwrap_or_default();
                let mut completed = Vec::new();
                queue.retain(|m| {
                    let done = m.message_id == message_id;
                    if done {
                        completed.push((m.clone(), FeedbackStatus::Success));
                    }
                    !done
                });
                Ok((Some(queue), completed))
            },
        );
        match removed {
            Ok(completed) => self.report_c2d(hub, device_id, completed),
            Err(e) => log::error!("hub {hub}: cannot update the C2D queue of {device_id}: {e}"),
        }
    }

    /// Empties a device's queue (the service API's purge): the number of messages removed,
    /// each with its `Purged` feedback when asked for.
    pub(crate) fn purge_c2d(&self, hub: &str, device_id: &str) -> Result<usize> {
        self.device(hub, device_id)?;
        let purged = self.store.update(
            crate::emulator::store::kind::C2D,
            &Self::c2d_key(hub, device_id),
            |queue: Option<Vec<C2dMessage>>| {
                let purged: Ended = queue
                    .unwrap_or_default()
                    .into_iter()
                    .map(|m| (m, FeedbackStatus::Purged))
                    .collect();
                Ok((None, purged))
            },
        )?;
        let count = purged.len();
        self.report_c2d(hub, device_id, purged);
        Ok(count)
    }

    /// The cloud-to-device messages waiting for a device (sent and not acknowledged, or not
    /// sent yet), oldest first.
    pub fn c2d_queue(&self, hub: &str, device_id: &str) -> Result<Vec<C2dMessage>> {
        Ok(self
            .store
            .get(
                crate::emulator::store::kind::C2D,
                &Self::c2d_key(hub, device_id),
            )?
            .unwrap_or_default())
    }

    /// Telemetry received by a hub, in arrival order, optionally of one device.
    pub fn telemetry(&self, hub: &str, device_id: Option<&str>) -> Result<Vec<TelemetryRecord>> {
        self.store.telemetry(&hub.to_ascii_lowercase(), device_id)
    }

    // ---- retention ---------------------------------------------------------------------------

    /// Deletes every hub's events older than its events endpoint's retention at `now` (Unix
    /// seconds), each partition's last event kept (see `Store::drop_telemetry_before`);
    /// returns how many went.
    pub(crate) fn drop_expired_events(&self, now: i64) -> Result<usize> {
        let mut dropped = 0;
        for hub in self.cloud.hubs() {
            let before = hub.events.retained_since(now) as f64 / 1000.0;
            dropped += self
                .store
                .drop_telemetry_before(&hub.host_name.to_ascii_lowercase(), before)?;
        }
        Ok(dropped)
    }

    /// Applies the retention at start and then hourly (retention is counted in days), on the
    /// blocking pool, until the engine is gone: the data folder holds what the hubs retain,
    /// not everything they ever received.
    pub(crate) async fn sweep_retention(engine: std::sync::Weak<HubEngine>) {
        loop {
            let Some(strong) = engine.upgrade() else {
                return;
            };
            let clock = strong.cloud.clock().clone();
            // Registered before the sweep reads the time: a move of the cloud's clock during
            // or after it sweeps again at once (events may have left the retention).
            let moved = clock.moved();
            tokio::pin!(moved);
            let already_moved = arm(moved.as_mut());
            let now = clock.now();
            let swept = tokio::task::spawn_blocking(move || strong.drop_expired_events(now)).await;
            match swept {
                Ok(Ok(0)) => {}
                Ok(Ok(dropped)) => {
                    log::info!("emulator: {dropped} events past their hub's retention deleted")
                }
                Ok(Err(e)) => log::error!("emulator: applying the events retention failed: {e}"),
                Err(e) => log::error!("emulator: the retention sweep stopped: {e}"),
            }
            tokio::select! {
                () = tokio::time::sleep(RETENTION_SWEEP_PERIOD) => {}
                () = moved, if !already_moved => {}
            }
        }
    }
}

/// Refuses a certificate outside its validity period at `now` (the cloud's clock), as IoT Hub
/// refuses an expired device certificate whatever its thumbprint or issuer.
fn check_validity(certificate: &Certificate, now: i64) -> std::result::Result<(), String> {
    let info = certificate.info();
    if now < info.not_before || now > info.not_after {
        return Err(format!(
            "certificate {} is outside its validity period ({} to {})",
            crate::pki::chain::describe(certificate),
            crate::pki::chain::format_time(info.not_before),
            crate::pki::chain::format_time(info.not_after)
        ));
    }
    Ok(())
}

/// Polls a [`crate::clock::Clock::moved`] future once, so it waits from now rather than from
/// the first `await` (a move between reading the time and sleeping would otherwise be missed);
/// true if it already resolved (then it must not be polled again).
pub(crate) fn arm(moved: std::pin::Pin<&mut impl std::future::Future<Output = ()>>) -> bool {
    futures_util::FutureExt::now_or_never(moved).is_some()
}

/// How often the events retention is applied.
const RETENTION_SWEEP_PERIOD: Duration = Duration::from_secs(3600);
