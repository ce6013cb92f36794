//! A fleet run: every device provisions through DPS, connects to the hub it was assigned and
//! follows its telemetry plan, each as one task on the current runtime. Progress is a handful
//! of shared counters that a watcher (the Python progress bar) reads without slowing the run;
//! the outcome is one row per device and, optionally, one row per message sent.
//!
//! The scarce resource is the TLS handshake (and the request that follows it), so that is what
//! the fleet's slots bound. A device waiting for its next DPS poll (`retry-after`) or a backoff
//! gives its slot back: it is an idle connection and a timer, and holding a slot through Azure's
//! few seconds of `retry-after` would cap the fleet at `concurrency / retry-after` devices per
//! second whatever the machine can do. A device coming back for its hub connection goes before
//! devices that have not started, so devices come online as they are assigned.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::fleet::plan::TelemetryPlan;
use crate::hub::{HubClient, HubConnectOptions, PendingAck, TelemetryMessage};
use crate::pki::KeyAlgorithm;
use crate::provisioning::{
    DeviceAuth, HookFuture, ProvisioningRequest, RegistrationHooks, RegistrationResult, Trust,
    issued_credential, new_certificate_request, provision_observed,
};
use crate::transport::jittered_backoff;
use crate::transport::mqtt::Via;

/// How a fleet runs: where DPS is, how much at once, and what each device sends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    /// DPS device endpoint host.
    pub dps_host: String,
    /// DPS MQTT port.
    pub dps_port: u16,
    /// The DPS instance's ID scope.
    pub id_scope: String,
    /// Port of the assigned hubs (8883 on Azure; the emulator serves every hub on its port;
    /// 443, or the emulator's web port, over WebSockets).
    pub hub_port: u16,
    /// MQTT over TLS or WebSockets, and the proxy if any, for DPS and the hubs alike.
    #[serde(default)]
    pub via: Via,
    /// Devices dialling and handshaking (DPS or hub) at once; devices waiting out DPS's
    /// `retry-after` or a backoff do not count.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Seconds one registration may take, retries included.
    #[serde(default = "default_provision_timeout")]
    pub provision_timeout: f64,
    /// Seconds for TLS + CONNACK to the hub.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: f64,
    /// Attempts at registering, and at connecting to the hub, when the network fails, a
    /// timeout passes or the service is busy (DPS throttling is waited out within an attempt,
    /// as DPS asks).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// QoS 1 messages a device keeps unacknowledged.
    #[serde(default = "default_window")]
    pub max_in_flight: u16,
    /// Stay connected after provisioning even without a telemetry plan, until every device is
    /// connected (so they are all held at once, as a deployed fleet is).
    #[serde(default = "default_true")]
    pub start_together: bool,
    /// Keep one row per message (what `to_pandas("messages")` shows).
    #[serde(default = "default_true")]
    pub record_messages: bool,
    /// The registration payload every device sends.
    #[serde(default)]
    pub payload: Option<Value>,
    /// What each device sends once connected (none: provision and connect only).
    #[serde(default)]
    pub plan: Option<TelemetryPlan>,
    /// Register every device with a CSR (a new key of [`FleetSettings::key_algorithm`]; the
    /// bootstrap credential as usual) and connect it to its hub with the certificate DPS
    /// issued (its enrollment needs a certificate policy).
    #[serde(default)]
    pub issue_certificates: bool,
    /// A rollover: once connected, every device renews its issued certificate through its
    /// hub (needs `issue_certificates`).
    #[serde(default)]
    pub renew_certificates: bool,
    /// The key algorithm of the CSRs (`ec-p256` unless told).
    #[serde(default)]
    pub key_algorithm: Option<String>,
    /// How far the devices' clock is ahead of the wall clock, in ms (a local cloud's moved
    /// time): SAS tokens are signed in it.
    #[serde(default)]
    pub clock_offset_ms: i64,
}

fn default_concurrency() -> usize {
    64
}
fn default_provision_timeout() -> f64 {
    120.0
}
fn default_connect_timeout() -> f64 {
    30.0
}
fn default_attempts() -> u32 {
    3
}
fn default_window() -> u16 {
    32
}
fn default_true() -> bool {
    true
}

impl FleetSettings {
    /// Reads and checks settings a host gives as a JSON value (Python's dict).
    pub fn from_value(value: Value) -> Result<FleetSettings> {
        let settings: FleetSettings =
            serde_json::from_value(value).map_err(|e| Error::config_caused("fleet settings", e))?;
        for (name, value) in [
            ("provision_timeout", settings.provision_timeout),
            ("connect_timeout", settings.connect_timeout),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(Error::config(format!(
                    "{name} must be a positive number of seconds, not {value}"
                )));
            }
        }
        if settings.concurrency == 0 {
            return Err(Error::config("concurrency must be at least 1"));
        }
        if settings.attempts == 0 {
            return Err(Error::config("attempts must be at least 1"));
        }
        if let Some(plan) = &settings.plan {
            plan.validate()?;
        }
        if settings.renew_certificates && !settings.issue_certificates {
            return Err(Error::config(
                "renewing certificates needs issue_certificates: a device renews only a \
                 certificate DPS issued",
            ));
        }
        settings.csr_algorithm()?;
        crate::clock::Clock::with_offset_ms(settings.clock_offset_ms)?;
        Ok(settings)
    }

    /// The key algorithm of the devices' CSRs.
    fn csr_algorithm(&self) -> Result<KeyAlgorithm> {
        KeyAlgorithm::parse(self.key_algorithm.as_deref().unwrap_or("ec-p256"))
            .map_err(|e| Error::config_caused("key_algorithm", e))
    }
}

/// One device of the fleet.
#[derive(Debug, Clone)]
pub struct FleetDevice {
    /// Position in the whole fleet (seeds its telemetry; shards keep global positions).
    pub index: u64,
    /// Registration id (= certificate CN for X.509).
    pub registration_id: String,
    /// Certificate or derived key.
    pub auth: DeviceAuth,
    /// Extra telemetry fields computed ahead of time (custom Python generators).
    pub custom: Vec<(String, Vec<Value>)>,
}

/// One device's custom telemetry fields: each name with the values it cycles through.
pub type CustomFields = Vec<(String, Vec<Value>)>;

/// How a fleet's devices prove who they are.
pub enum FleetCredentials {
    /// Each device its own certificate, in the order of the registration ids.
    Certificates(Vec<Arc<crate::pki::Credential>>),
    /// The enrollment group's key, from which each device's key is derived (Azure's rule,
    /// `sas::derive_device_key`).
    GroupKey(String),
}

/// Reads the custom telemetry values a host computed ahead of time, `{"field": [[values of
/// device 0], [values of device 1], ...]}`, into one list of fields per device; every device
/// needs at least one value of every field.
pub fn custom_fields(values: Option<Value>, devices: usize) -> Result<Vec<CustomFields>> {
    let mut per_device: Vec<CustomFields> = vec![Vec::new(); devices];
    let Some(values) = values else {
        return Ok(per_device);
    };
    let Value::Object(fields) = values else {
        return Err(Error::config(
            "custom telemetry values: expected an object of fields",
        ));
    };
    for (name, columns) in fields {
        let Value::Array(columns) = columns else {
            return Err(Error::config(format!(
                "custom field {name:?}: expected a list per device"
            )));
        };
        if columns.len() != devices {
            return Err(Error::config(format!(
                "custom field {name:?}: {} value lists for {devices} devices",
                columns.len()
            )));
        }
        for (device, values) in per_device.iter_mut().zip(columns) {
            let Value::Array(values) = values else {
                return Err(Error::config(format!(
                    "custom field {name:?}: expected a list of values per device"
                )));
            };
            if values.is_empty() {
                return Err(Error::config(format!(
                    "custom field {name:?}: a device got no values"
                )));
            }
            device.push((name.clone(), values));
        }
    }
    Ok(per_device)
}

/// The fleet's devices, one per registration id with its position `indexes`, its credential
/// and its custom fields; refuses lists of different lengths and custom fields the plan does
/// not name (or custom fields without a plan).
pub fn fleet_devices(
    settings: &FleetSettings,
    registration_ids: Vec<String>,
    indexes: Vec<u64>,
    credentials: FleetCredentials,
    custom: Vec<CustomFields>,
) -> Result<Vec<FleetDevice>> {
    let count = registration_ids.len();
    if indexes.len() != count {
        return Err(Error::config(format!(
            "{} indexes for {count} registration ids",
            indexes.len()
        )));
    }
    let auths: Vec<DeviceAuth> = match credentials {
        FleetCredentials::Certificates(certificates) => {
            if certificates.len() != count {
                return Err(Error::config(format!(
                    "{} certificates for {count} registration ids",
                    certificates.len()
                )));
            }
            certificates.into_iter().map(DeviceAuth::X509).collect()
        }
        FleetCredentials::GroupKey(key) => registration_ids
            .iter()
            .map(|id| crate::sas::derive_device_key(&key, id).map(DeviceAuth::SymmetricKey))
            .collect::<Result<_>>()?,
    };
    if let (Some(plan), Some(first)) = (&settings.plan, custom.first()) {
        plan.check_custom_names(first.iter().map(|(name, _)| name.as_str()))?;
    } else if custom.first().is_some_and(|fields| !fields.is_empty()) {
        return Err(Error::config(
            "custom telemetry values need a telemetry plan",
        ));
    }
    Ok(registration_ids
        .into_iter()
        .zip(indexes)
        .zip(auths)
        .zip(custom)
        .map(|(((registration_id, index), auth), custom)| FleetDevice {
            index,
            registration_id,
            auth,
            custom,
        })
        .collect())
}

/// Counters updated by the devices as they go; read at any time.
#[derive(Debug)]
pub struct FleetProgress {
    /// Devices in the run.
    pub total: AtomicU64,
    /// Devices assigned by DPS.
    pub provisioned: AtomicU64,
    /// Devices connected to their hub.
    pub connected: AtomicU64,
    /// Devices that stopped on an error.
    pub failed: AtomicU64,
    /// Devices done (whatever the outcome).
    pub finished: AtomicU64,
    /// Telemetry messages handed to the connections.
    pub sent: AtomicU64,
    /// Telemetry messages the hub acknowledged.
    pub acknowledged: AtomicU64,
    /// Throttled registrations waited out, registrations attempted again and reconnects.
    pub retries: AtomicU64,
    /// Devices waiting (for a DPS poll, a backoff) without holding a slot, now.
    pub waiting: AtomicU64,
    /// The most devices that were waiting at once.
    pub peak_waiting: AtomicU64,
    cancelled: AtomicBool,
    /// Wakes devices that are waiting (a registration, a send time an hour away) on cancel.
    cancel_signal: watch::Sender<bool>,
}

impl Default for FleetProgress {
    fn default() -> Self {
        FleetProgress {
            total: AtomicU64::new(0),
            provisioned: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            peak_waiting: AtomicU64::new(0),
            cancelled: AtomicBool::new(false),
            cancel_signal: watch::Sender::new(false),
        }
    }
}

impl FleetProgress {
    /// Asks every device to stop now: waits end at once; a device sending its plan closes its
    /// connection cleanly after the acknowledgements it is owed.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.cancel_signal.send_replace(true);
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Resolves once the run is cancelled.
    async fn cancelled(&self) {
        let mut signal = self.cancel_signal.subscribe();
        let _ = signal.wait_for(|cancelled| *cancelled).await;
    }
}

/// The error a device's report carries when the run was cancelled under it.
fn cancelled_error() -> Error {
    Error::transport("the fleet run was cancelled")
}

/// Where a device's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Provisioned, connected and sent its plan (or held its connection).
    Completed,
    /// DPS did not assign it.
    ProvisioningFailed,
    /// Its hub did not accept the connection.
    ConnectFailed,
    /// The connection ended for good while sending.
    TelemetryFailed,
    /// The run was cancelled first.
    Cancelled,
}

impl Outcome {
    /// The name reports use.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::ProvisioningFailed => "provisioning_failed",
            Outcome::ConnectFailed => "connect_failed",
            Outcome::TelemetryFailed => "telemetry_failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// One device's run.
#[derive(Debug, Clone)]
pub struct DeviceReport {
    /// Position in the fleet.
    pub index: u64,
    /// Registration id.
    pub registration_id: String,
    /// Where it ended.
    pub outcome: Outcome,
    /// Why it failed.
    pub error: Option<String>,
    /// Azure's error code of that failure (e.g. 401002), when the service gave one.
    pub error_code: Option<u32>,
    /// Assigned hub host name.
    pub assigned_hub: Option<String>,
    /// Device id in that hub.
    pub device_id: Option<String>,
    /// When provisioning began, from the fleet's start.
    pub started: Duration,
    /// Registration, from the first CONNECT to `assigned` (the successful attempt's).
    pub provision_latency: Option<Duration>,
    /// TLS handshake to CONNACK at the hub.
    pub connect_latency: Option<Duration>,
    /// Throttled replies waited out and registrations attempted again.
    pub provision_retries: u32,
    /// Hub connections refused or failed at first and dialled again.
    pub connect_retries: u32,
    /// Hub connections lost and dialled again.
    pub reconnects: u32,
    /// Messages published (duplicates included).
    pub sent: u64,
    /// Messages the hub acknowledged.
    pub acknowledged: u64,
    /// Messages the plan dropped (a gap in the sequence numbers, on purpose).
    pub dropouts: u64,
    /// Messages the plan sent twice.
    pub duplicates: u64,
    /// Bytes of the messages published, as the hub counts them (body and properties,
    /// [`TelemetryMessage::counted_size`]), duplicates included: with `sent`, the mean size
    /// the Azure estimate meters.
    pub bytes_sent: u64,
    /// The first and the last publish, from the fleet's start: the device's sending rate is
    /// `(sent - 1)` over their distance, whether or not messages are recorded.
    pub send_span: Option<(Duration, Duration)>,
    /// When the certificate the device holds at the end expires (Unix seconds): the one DPS
    /// issued, or the renewed one (with `issue_certificates`).
    pub certificate_not_after: Option<i64>,
    /// The hub renewed the device's certificate (a rollover run).
    pub renewed: bool,
    /// Why a renewal failed (the device keeps its certificate and goes on).
    pub renewal_error: Option<String>,
    /// Azure's error code of that failure (e.g. 409005), when the hub gave one.
    pub renewal_error_code: Option<u32>,
}

/// One published message (per device, merged into columns at the end).
#[derive(Debug, Clone, Copy)]
struct MessageRow {
    seq: u64,
    /// Seconds from the fleet's start to the publish.
    sent_at: f64,
    /// PUBACK latency in ms; NaN when never acknowledged.
    latency_ms: f64,
    anomaly: bool,
    duplicate: bool,
    /// Size as the hub counts it.
    bytes: u32,
}

/// Every message published, as columns.
#[derive(Debug, Default, Clone)]
pub struct MessageColumns {
    /// Index into [`FleetResult::devices`].
    pub device: Vec<u32>,
    /// The device's sequence number.
    pub seq: Vec<u64>,
    /// Seconds from the fleet's start to the publish.
    pub sent_at: Vec<f64>,
    /// Publish to PUBACK in ms (NaN: not acknowledged).
    pub latency_ms: Vec<f64>,
    /// The plan put an anomaly in it.
    pub anomaly: Vec<bool>,
    /// The second copy of a duplicated message.
    pub duplicate: Vec<bool>,
    /// Body and properties as the hub counts them.
    pub bytes: Vec<u32>,
}

/// The outcome of a fleet run.
#[derive(Debug, Default, Clone)]
pub struct FleetResult {
    /// One row per device, in fleet order.
    pub devices: Vec<DeviceReport>,
    /// One row per message (empty unless recorded).
    pub messages: MessageColumns,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// From the start until the last device was connected (or failed).
    pub connect_phase: Duration,
    /// When the run started, in seconds since the Unix epoch: message and device times are
    /// offsets from it.
    pub started_unix: f64,
    /// The most devices that waited at once (for a DPS poll, a backoff) without holding a
    /// slot: above `concurrency` only because waiting devices give theirs back.
    pub peak_waiting: u64,
}

/// Runs the fleet on the current runtime and returns when every device is done.
pub async fn run(
    mut settings: FleetSettings,
    devices: Vec<FleetDevice>,
    trust: Trust,
    progress: Arc<FleetProgress>,
) -> FleetResult {
    let start = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    // One simulated start for the whole fleet, so every device's timestamps line up.
    if let Some(plan) = settings.plan.as_mut()
        && plan.start_unix_ms.is_none()
    {
        plan.set_start_unix_ms((started_unix * 1000.0) as i64);
    }
    let total = devices.len();
    progress.total.store(total as u64, Ordering::Relaxed);
    let settings = Arc::new(settings);
    let slots = Slots::new(settings.concurrency);
    // Counts devices still provisioning or connecting; telemetry starts at zero when the
    // devices are to start together.
    let (pending_tx, pending_rx) = watch::channel(total);
    let pending_tx = Arc::new(pending_tx);
    let connect_phase_end = Arc::new(std::sync::Mutex::new(None::<Duration>));
    let mut tasks = tokio::task::JoinSet::new();
    for (position, device) in devices.into_iter().enumerate() {
        let context = DeviceContext {
            settings: settings.clone(),
            trust: trust.clone(),
            progress: progress.clone(),
            slots: slots.clone(),
            pending_tx: pending_tx.clone(),
            pending_rx: pending_rx.clone(),
            connect_phase_end: connect_phase_end.clone(),
            start,
        };
        tasks.spawn(async move { (position, run_device(context, device).await) });
    }
    let mut reports: Vec<Option<(DeviceReport, Vec<MessageRow>)>> = vec![None; total];
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((position, outcome)) => reports[position] = Some(outcome),
            // A device task only ends this way on a bug; its row says so below.
            Err(error) => log::error!("fleet device task failed: {error}"),
        }
    }
    let mut result = FleetResult {
        started_unix,
        elapsed: start.elapsed(),
        connect_phase: connect_phase_end
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or_else(|| start.elapsed()),
        peak_waiting: progress.peak_waiting.load(Ordering::Relaxed),
        ..FleetResult::default()
    };
    for (position, slot) in reports.into_iter().enumerate() {
        let (report, rows) = slot.unwrap_or_else(|| {
            (
                DeviceReport::new(position as u64, "?".into(), Duration::ZERO)
                    .failed(Outcome::Cancelled, &Error::transport("device task failed")),
                Vec::new(),
            )
        });
        let device = position as u32;
        let columns = &mut result.messages;
        for row in rows {
            columns.device.push(device);
            columns.seq.push(row.seq);
            columns.sent_at.push(row.sent_at);
            columns.latency_ms.push(row.latency_ms);
            columns.anomaly.push(row.anomaly);
            columns.duplicate.push(row.duplicate);
            columns.bytes.push(row.bytes);
        }
        result.devices.push(report);
    }
    result
}

/// The fleet's slots: how many devices dial, handshake and send their request at once. A device
/// coming back for one (its hub connection, another attempt) is served before devices that have
/// not started, so assigned devices connect while the rest of the fleet registers.
struct Slots {
    queue: std::sync::Mutex<SlotQueue>,
}

struct SlotQueue {
    free: usize,
    returning: VecDeque<oneshot::Sender<SlotPermit>>,
    fresh: VecDeque<oneshot::Sender<SlotPermit>>,
}

/// One slot, given back (to the next waiter, else to the pool) on drop.
struct SlotPermit(Option<Arc<Slots>>);

impl Slots {
    fn new(count: usize) -> Arc<Slots> {
        Arc::new(Slots {
            queue: std::sync::Mutex::new(SlotQueue {
                free: count,
                returning: VecDeque::new(),
                fresh: VecDeque::new(),
            }),
        })
    }

    async fn acquire(self: &Arc<Self>, returning: bool) -> Option<SlotPermit> {
        let receiver = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let ahead = !queue.returning.is_empty() || (!returning && !queue.fresh.is_empty());
            if queue.free > 0 && !ahead {
                queue.free -= 1;
                return Some(SlotPermit(Some(self.clone())));
            }
            let (sender, receiver) = oneshot::channel();
            if returning {
                queue.returning.push_back(sender);
            } else {
                queue.fresh.push_back(sender);
            }
            receiver
        };
        // A permit sent to a waiter that is dropped before reading it is dropped with the
        // channel, which gives it back: no slot is lost to cancellation.
        receiver.await.ok()
    }

    fn give_back(slots: Arc<Slots>) {
        let mut permit = SlotPermit(Some(slots.clone()));
        let mut queue = slots.queue.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(waiter) = queue
            .returning
            .pop_front()
            .or_else(|| queue.fresh.pop_front())
        {
            match waiter.send(permit) {
                Ok(()) => return,
                // That waiter gave up; the next one gets it.
                Err(back) => permit = back,
            }
        }
        queue.free += 1;
        // Counted as free above: dropping it must not give it back a second time.
        permit.0 = None;
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        if let Some(slots) = self.0.take() {
            Slots::give_back(slots);
        }
    }
}

/// A device's hold on a slot, given back while it only waits.
struct DeviceSlot {
    permit: std::sync::Mutex<Option<SlotPermit>>,
}

impl DeviceSlot {
    /// Takes a slot unless the device holds one; `returning` devices go first.
    async fn hold(&self, context: &DeviceContext, returning: bool) {
        if self
            .permit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return;
        }
        let permit = context.slots.acquire(returning).await;
        *self.permit.lock().unwrap_or_else(|p| p.into_inner()) = permit;
    }

    /// Gives the slot back for good (the device is connected, or done).
    fn release(&self) {
        let permit = self.permit.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(permit);
    }

    /// Waits until `until` without a slot; the caller takes one again when it next dials.
    async fn wait_until(&self, context: &DeviceContext, until: Instant) {
        if until <= Instant::now() {
            return;
        }
        self.release();
        let _waiting = Waiting::new(&context.progress);
        tokio::time::sleep_until(until).await;
    }
}

/// Counts a device as waiting while it lives (also when its wait is cancelled).
struct Waiting<'a>(&'a FleetProgress);

impl<'a> Waiting<'a> {
    fn new(progress: &'a FleetProgress) -> Self {
        let now = progress.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        progress.peak_waiting.fetch_max(now, Ordering::Relaxed);
        Waiting(progress)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a device's registration counts DPS's refusals and waits for its polls: without its slot.
struct FleetHooks<'a> {
    context: &'a DeviceContext,
    slot: &'a DeviceSlot,
    throttled: AtomicU32,
}

impl RegistrationHooks for FleetHooks<'_> {
    fn throttled(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        self.context
            .progress
            .retries
            .fetch_add(1, Ordering::Relaxed);
    }

    // The next request goes on the connection already open: no handshake, so no slot is
    // taken again for it.
    fn wait_until(&self, until: Instant) -> HookFuture<'_> {
        Box::pin(self.slot.wait_until(self.context, until))
    }
}

struct DeviceContext {
    settings: Arc<FleetSettings>,
    trust: Trust,
    progress: Arc<FleetProgress>,
    slots: Arc<Slots>,
    pending_tx: Arc<watch::Sender<usize>>,
    pending_rx: watch::Receiver<usize>,
    connect_phase_end: Arc<std::sync::Mutex<Option<Duration>>>,
    start: Instant,
}

impl DeviceContext {
    /// This device is past provisioning and connecting, whichever way it went.
    fn leave_connect_phase(&self) {
        self.pending_tx.send_modify(|pending| {
            *pending = pending.saturating_sub(1);
            if *pending == 0 {
                *self
                    .connect_phase_end
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(self.start.elapsed());
            }
        });
    }
}

impl DeviceReport {
    fn new(index: u64, registration_id: String, started: Duration) -> Self {
        DeviceReport {
            index,
            registration_id,
            outcome: Outcome::Completed,
            error: None,
            error_code: None,
            assigned_hub: None,
            device_id: None,
            started,
            provision_latency: None,
            connect_latency: None,
            provision_retries: 0,
            connect_retries: 0,
            reconnects: 0,
            sent: 0,
            acknowledged: 0,
            dropouts: 0,
            duplicates: 0,
            bytes_sent: 0,
            send_span: None,
            certificate_not_after: None,
            renewed: false,
            renewal_error: None,
            renewal_error_code: None,
        }
    }

    fn failed(mut self, outcome: Outcome, error: &Error) -> Self {
        self.outcome = outcome;
        self.error = Some(error.to_string());
        self.error_code = match error {
            Error::RegistrationFailed { error_code, .. } => *error_code,
            Error::Service(failure) => failure.error_code,
            _ => None,
        };
        self
    }
}

/// Transport failures, timeouts and a busy service are worth another attempt; a refusal of
/// the device itself is not.
fn worth_retrying(error: &Error) -> bool {
    match error {
        Error::Transport(_) | Error::Timeout(_) => true,
        Error::Service(failure) => failure.status == 429 || failure.status >= 500,
        _ => false,
    }
}

/// Connects to the assigned hub, dialling again (with backoff) when the hub is busy or the
/// network fails, as the official SDKs do. Returns the client and when its last attempt began.
async fn connect_device(
    context: &DeviceContext,
    slot: &DeviceSlot,
    options: HubConnectOptions,
    report: &mut DeviceReport,
) -> Result<(HubClient, Instant)> {
    let mut attempt = 1;
    loop {
        slot.hold(context, true).await;
        let began = Instant::now();
        match HubClient::connect(options.clone(), &context.trust).await {
            Ok(client) => return Ok((client, began)),
            Err(error)
                if attempt < context.settings.attempts
                    && worth_retrying(&error)
                    && !context.progress.is_cancelled() =>
            {
                report.connect_retries += 1;
                context.progress.retries.fetch_add(1, Ordering::Relaxed);
                slot.wait_until(context, Instant::now() + jittered_backoff(attempt))
                    .await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

async fn run_device(
    context: DeviceContext,
    device: FleetDevice,
) -> (DeviceReport, Vec<MessageRow>) {
    let settings = context.settings.clone();
    let progress = context.progress.clone();
    let slot = DeviceSlot {
        permit: std::sync::Mutex::new(None),
    };
    slot.hold(&context, false).await;
    let mut report = DeviceReport::new(
        device.index,
        device.registration_id.clone(),
        context.start.elapsed(),
    );
    let finish = |report: DeviceReport, rows: Vec<MessageRow>| {
        if report.outcome != Outcome::Completed {
            progress.failed.fetch_add(1, Ordering::Relaxed);
        }
        progress.finished.fetch_add(1, Ordering::Relaxed);
        (report, rows)
    };
    if progress.is_cancelled() {
        context.leave_connect_phase();
        return finish(
            report.failed(Outcome::Cancelled, &cancelled_error()),
            Vec::new(),
        );
    }

    // The registration and connection futures are large and short-lived: boxed, their state
    // is freed once done instead of sizing every device's task for its whole life.
    let registering = Box::pin(provision_device(&context, &slot, &device, &mut report));
    let registered = tokio::select! {
        registered = registering => registered.map_err(|e| (Outcome::ProvisioningFailed, e)),
        () = progress.cancelled() => Err((Outcome::Cancelled, cancelled_error())),
    };
    let (assignment, issued) = match registered {
        Ok(assignment) => assignment,
        Err((outcome, error)) => {
            context.leave_connect_phase();
            return finish(report.failed(outcome, &error), Vec::new());
        }
    };
    progress.provisioned.fetch_add(1, Ordering::Relaxed);
    report.assigned_hub = assignment.assigned_hub.clone();
    report.device_id = assignment.device_id.clone();

    let (Some(hub), Some(device_id)) = (assignment.assigned_hub, assignment.device_id) else {
        context.leave_connect_phase();
        let error = Error::protocol("DPS assigned the device without a hub or device id");
        return finish(
            report.failed(Outcome::ProvisioningFailed, &error),
            Vec::new(),
        );
    };
    let auth = issued.unwrap_or(device.auth);
    let mut options = HubConnectOptions::new(hub, settings.hub_port, device_id, auth);
    options.certificate_renewal = settings.issue_certificates;
    options.clock =
        crate::clock::Clock::with_offset_ms(settings.clock_offset_ms).unwrap_or_default();
    options.via = settings.via.clone();
    options.max_in_flight = settings.max_in_flight.max(1);
    options.connect_timeout = Duration::from_secs_f64(settings.connect_timeout);
    options.tls_sessions = 0;
    let connecting = Box::pin(connect_device(&context, &slot, options, &mut report));
    let connected = tokio::select! {
        connected = connecting => connected.map_err(|e| (Outcome::ConnectFailed, e)),
        () = progress.cancelled() => Err((Outcome::Cancelled, cancelled_error())),
    };
    let (client, began) = match connected {
        Ok(connected) => connected,
        Err((outcome, error)) => {
            context.leave_connect_phase();
            return finish(report.failed(outcome, &error), Vec::new());
        }
    };
    report.connect_latency = Some(began.elapsed());
    progress.connected.fetch_add(1, Ordering::Relaxed);
    slot.release();
    context.leave_connect_phase();

    if settings.start_together {
        let mut pending = context.pending_rx.clone();
        tokio::select! {
            _ = pending.wait_for(|left| *left == 0) => {}
            () = progress.cancelled() => {}
        }
    }
    if settings.renew_certificates && !progress.is_cancelled() {
        let renewing = Box::pin(renew_device(&settings, &client));
        match renewing.await {
            Ok(not_after) => {
                report.renewed = true;
                report.certificate_not_after = Some(not_after);
            }
            Err(error) => {
                report.renewal_error_code = error.error_code();
                report.renewal_error = Some(error.to_string());
            }
        }
    }
    let mut rows = Vec::new();
    if let Some(plan) = &settings.plan {
        let stream = plan.device_stream(device.index, &device.registration_id, device.custom);
        let sending = Box::pin(send_plan(&context, &client, stream, &mut report, &mut rows));
        if let Err(error) = sending.await {
            report = report.failed(Outcome::TelemetryFailed, &error);
        }
    }
    let reconnects = client.reconnects();
    progress
        .retries
        .fetch_add(u64::from(reconnects - report.reconnects), Ordering::Relaxed);
    report.reconnects = reconnects;
    client.close().await;
    if progress.is_cancelled() && report.outcome == Outcome::Completed {
        report = report.failed(Outcome::Cancelled, &cancelled_error());
    }
    finish(report, rows)
}

/// A registration and, with `issue_certificates`, the hub credential made of the issued
/// chain and the key of the CSR.
type Registered = (RegistrationResult, Option<DeviceAuth>);

async fn provision_device(
    context: &DeviceContext,
    slot: &DeviceSlot,
    device: &FleetDevice,
    report: &mut DeviceReport,
) -> Result<Registered> {
    let settings = &context.settings;
    let (csr, key) = if settings.issue_certificates {
        let (csr, key) =
            new_certificate_request(&device.registration_id, settings.csr_algorithm()?).await?;
        (Some(csr), Some(key))
    } else {
        (None, None)
    };
    let request = ProvisioningRequest {
        host: settings.dps_host.clone(),
        port: settings.dps_port,
        via: settings.via.clone(),
        id_scope: settings.id_scope.clone(),
        registration_id: device.registration_id.clone(),
        auth: device.auth.clone(),
        payload: settings.payload.clone(),
        timeout: Duration::from_secs_f64(settings.provision_timeout),
        csr,
        clock: crate::clock::Clock::with_offset_ms(settings.clock_offset_ms)?,
    };
    let mut attempt = 1;
    loop {
        // A new attempt dials again (and the first one may follow a backoff).
        slot.hold(context, attempt > 1).await;
        let hooks = FleetHooks {
            context,
            slot,
            throttled: AtomicU32::new(0),
        };
        let began = Instant::now();
        let outcome = provision_observed(&request, &context.trust, &hooks).await;
        report.provision_retries += hooks.throttled.load(Ordering::Relaxed);
        match outcome {
            Ok(assignment) => {
                report.provision_latency = Some(began.elapsed());
                let auth = match key {
                    Some(key) => {
                        let issued = issued_credential(&assignment.issued_chain, key)?;
                        report.certificate_not_after =
                            Some(issued.credential().certificate().info().not_after);
                        Some(DeviceAuth::X509(issued.shared_credential()))
                    }
                    None => None,
                };
                return Ok((assignment, auth));
            }
            Err(error)
                if attempt < settings.attempts
                    && worth_retrying(&error)
                    && !context.progress.is_cancelled() =>
            {
                log::info!(
                    "fleet: registration of {} failed ({error}); trying again",
                    device.registration_id
                );
                report.provision_retries += 1;
                context.progress.retries.fetch_add(1, Ordering::Relaxed);
                slot.wait_until(context, Instant::now() + jittered_backoff(attempt))
                    .await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Renews the device's certificate through its hub (a new key and CSR); returns when the
/// new one expires. The device keeps its connection (the new certificate is for the next).
async fn renew_device(settings: &FleetSettings, client: &HubClient) -> Result<i64> {
    let renewed = client
        .renew_credential(Some(settings.csr_algorithm()?), None)
        .await?;
    Ok(renewed.credential().certificate().info().not_after)
}

/// Publishes the device's planned messages on schedule, keeping up to the connection's window
/// unacknowledged, and records each publish and its acknowledgement.
async fn send_plan(
    context: &DeviceContext,
    client: &HubClient,
    stream: crate::fleet::plan::DeviceStream,
    report: &mut DeviceReport,
    rows: &mut Vec<MessageRow>,
) -> Result<()> {
    let progress = &context.progress;
    let record = context.settings.record_messages;
    let window = usize::from(context.settings.max_in_flight.max(1));
    // Acknowledgements arrive in publish order, so only the oldest needs watching.
    let mut pending: VecDeque<(PendingAck, Instant, usize)> = VecDeque::with_capacity(window);
    let begun = Instant::now();
    let settle = |rows: &mut Vec<MessageRow>,
                  report: &mut DeviceReport,
                  outcome: Result<()>,
                  published: Instant,
                  row: usize|
     -> Result<()> {
        outcome?;
        report.acknowledged += 1;
        progress.acknowledged.fetch_add(1, Ordering::Relaxed);
        if let Some(row) = rows.get_mut(row) {
            row.latency_ms = published.elapsed().as_secs_f64() * 1000.0;
        }
        Ok(())
    };
    for message in stream {
        if progress.is_cancelled() {
            break;
        }
        let due = begun + message.send_at;
        // Collect acknowledgements while waiting for the send time, so latencies are measured
        // when the PUBACK arrives rather than when the next message goes out.
        while Instant::now() < due {
            match pending.front_mut() {
                Some((ack, _, _)) => {
                    tokio::select! {
                        outcome = ack => {
                            let (_, published, row) = pending.pop_front().expect("front exists");
                            settle(rows, report, outcome, published, row)?;
                        }
                        () = tokio::time::sleep_until(due) => {}
                        () = progress.cancelled() => break,
                    }
                }
                None => tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = progress.cancelled() => break,
                },
            }
        }
        if progress.is_cancelled() {
            break;
        }
        if message.copies == 0 {
            report.dropouts += 1;
            continue;
        }
        if message.copies > 1 {
            report.duplicates += 1;
        }
        let mut telemetry = TelemetryMessage::new(message.body);
        telemetry.message_id = Some(message.message_id);
        telemetry.content_type = Some("application/json".into());
        telemetry.content_encoding = Some("utf-8".into());
        // At most 256 KB (the client refuses more before sending).
        let bytes = telemetry.counted_size();
        for copy in 0..message.copies {
            if pending.len() >= window
                && let Some((ack, published, row)) = pending.pop_front()
            {
                let outcome = ack.await;
                settle(rows, report, outcome, published, row)?;
            }
            let ack = client.queue_telemetry(&telemetry).await?;
            // Reconnects show in the progress counters as they happen, not at the end.
            let reconnects = client.reconnects();
            if reconnects != report.reconnects {
                progress
                    .retries
                    .fetch_add(u64::from(reconnects - report.reconnects), Ordering::Relaxed);
                report.reconnects = reconnects;
            }
            let published = Instant::now();
            report.sent += 1;
            report.bytes_sent += bytes as u64;
            let at = published.duration_since(context.start);
            report.send_span = Some((report.send_span.map_or(at, |(first, _)| first), at));
            progress.sent.fetch_add(1, Ordering::Relaxed);
            let row = rows.len();
            if record {
                rows.push(MessageRow {
                    seq: message.seq,
                    sent_at: at.as_secs_f64(),
                    latency_ms: f64::NAN,
                    anomaly: message.anomaly,
                    duplicate: copy > 0,
                    bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
                });
            }
            pending.push_back((ack, published, if record { row } else { usize::MAX }));
        }
    }
    // A cancelled run still collects the acknowledgements already on their way, but does not
    // wait out a reconnect for them: what stays unacknowledged is reported as such.
    let cancelled = progress.is_cancelled();
    let patience = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(patience);
    while let Some((ack, published, row)) = pending.pop_front() {
        tokio::select! {
            outcome = ack => settle(rows, report, outcome, published, row)?,
            () = &mut patience, if cancelled => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn certificate_settings_are_checked_before_a_run() {
        let base = serde_json::json!({
            "dps_host": "dps", "dps_port": 8883, "id_scope": "0ne", "hub_port": 8883,
        });
        let with = |extra: serde_json::Value| {
            let mut value = base.clone();
            value
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            FleetSettings::from_value(value)
        };
        let plain = with(serde_json::json!({})).unwrap();
        assert!(!plain.issue_certificates && !plain.renew_certificates);
        let issuing = with(serde_json::json!({
            "issue_certificates": true, "renew_certificates": true, "key_algorithm": "ec-p384",
        }))
        .unwrap();
        assert_eq!(issuing.csr_algorithm().unwrap(), KeyAlgorithm::EcP384);
        for refused in [
            serde_json::json!({"renew_certificates": true}),
            serde_json::json!({"issue_certificates": true, "key_algorithm": "dsa"}),
        ] {
            let error = with(refused.clone()).unwrap_err();
            assert!(matches!(error, Error::Config(_)), "{refused}: {error:?}");
        }
    }

    #[test]
    fn a_returning_device_gets_the_next_slot_before_devices_that_have_not_started() {
        runtime().block_on(async {
            let slots = Slots::new(1);
            let held = slots.acquire(false).await.unwrap();
            let order = Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut waiters = tokio::task::JoinSet::new();
            for (name, returning) in [("fresh", false), ("returning", true)] {
                let (slots, order) = (slots.clone(), order.clone());
                waiters.spawn(async move {
                    let permit = slots.acquire(returning).await;
                    order.lock().unwrap().push(name);
                    drop(permit);
                });
                tokio::task::yield_now().await;
            }
            drop(held);
            while waiters.join_next().await.is_some() {}
            assert_eq!(*order.lock().unwrap(), ["returning", "fresh"]);
        });
    }

    #[test]
    fn a_slot_is_not_lost_when_its_waiter_gives_up() {
        runtime().block_on(async {
            let slots = Slots::new(1);
            let held = slots.acquire(false).await.unwrap();
            // Waits, then is dropped (a cancelled device) before the slot comes back.
            let gave_up = tokio::time::timeout(Duration::from_millis(10), slots.acquire(true));
            assert!(gave_up.await.is_err());
            drop(held);
            let again = tokio::time::timeout(Duration::from_secs(5), slots.acquire(false));
            let again = again.await.unwrap();
            assert!(again.is_some());
            // Still one slot, not two.
            let second = tokio::time::timeout(Duration::from_millis(10), slots.acquire(false));
            assert!(second.await.is_err());
        });
    }
}
