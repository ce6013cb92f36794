//! The throttles and the daily message meter of the hubs that enforce their tier (the
//! `dpskit-presets` tag), read from `limits::HUB_TIERS`: every operation IoT Hub throttles has a
//! token bucket per hub holding the throttle's window (a second, or a minute for the rows Azure
//! writes per minute), device-to-cloud sends are shaped (delayed) for up to a second before
//! they are refused, and messages are metered in the tier's blocks against the daily quota,
//! which is counted again from the stored telemetry when the emulator restarts.
//!
//! DPS instances that enforce their rates ([`DpsQuotas`]) throttle registrations (at the hand-set
//! rate of the DPS knobs, else Azure's), each device's status polls and the service API's
//! operations the same way, answering 429 with `retry-after`.
//!
//! The hub engine's fault-injection knobs (a connection or send rate set by hand) use the same
//! buckets with their own rate. Every lock here guards one map, is held only to read or change
//! it, and never while another component is called (the store is read through a closure the
//! engine passes, with no lock held).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clock::now;
use crate::limits::{HubOperation, HubSku, QUOTA_EXCEEDED_ERROR_CODE};

/// Longest traffic shaping delay of device-to-cloud sends before IoT Hub throttles outright.
const SHAPING_WINDOW: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An operation refused by a throttle: IoT Hub's 429001 and when to try again.
#[derive(Debug, Clone, PartialEq)]
pub struct Throttled {
    /// Azure's words (`ThrottlingException: ...`); shown with the code first.
    pub message: String,
    /// When the bucket holds the operation's cost again.
    pub retry_after: Duration,
}

impl std::fmt::Display for Throttled {
    /// `429001 ThrottlingException: ...`, as the hub logs a refusal and closes a connection.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}",
            crate::limits::THROTTLED_ERROR_CODE,
            self.message
        )
    }
}

impl Throttled {
    /// The refusal as the error the hub's APIs answer with (status 429).
    pub fn into_error(self) -> crate::error::Error {
        crate::error::Error::service(429, crate::limits::THROTTLED_ERROR_CODE, self.message)
    }
}

/// A rate a bucket enforces: `per_second`, letting `burst` through at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    /// Operations (or, for direct methods, 4 KB blocks) per second.
    pub per_second: f64,
    /// Operations let through at once.
    pub burst: f64,
}

impl Rate {
    /// A hand-set rate (a knob): one second's worth at once.
    pub(crate) fn per_second(per_second: u32) -> Rate {
        let per_second = f64::from(per_second.max(1));
        Rate {
            per_second,
            burst: per_second,
        }
    }
}

/// A token bucket refilled continuously at its rate, holding at most its burst.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: Rate) -> Bucket {
        Bucket {
            rate,
            tokens: rate.burst,
            last: Instant::now(),
        }
    }

    /// Takes `cost` tokens, or says how long until they are there. An operation costing more
    /// than the whole burst passes on a full bucket (and empties it), or it never would.
    pub(crate) fn take(&mut self, cost: f64) -> Result<(), Duration> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
        self.last = now;
        let needed = cost.min(self.rate.burst);
        if self.tokens >= needed {
            self.tokens -= needed;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (needed - self.tokens) / self.rate.per_second,
            ))
        }
    }
}

/// One hub's buckets, send slots, meter and refusal counts.
#[derive(Debug, Default)]
struct HubState {
    buckets: HashMap<HubOperation, Bucket>,
    /// The next free slot of the send rate: the backlog traffic shaping delays by.
    next_send_slot: Option<Instant>,
    /// The UTC day (days since the epoch) `used` counts, once counted.
    day: Option<i64>,
    /// Messages metered on `day`, in the tier's blocks.
    used: u64,
    throttled: HashMap<HubOperation, u64>,
    quota_refusals: u64,
}

/// What the throttles and the meter of one hub have seen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct HubCounters {
    /// Messages metered today (00:00 UTC on), in the tier's blocks.
    pub messages_used: u64,
    /// When the meter resets (the next 00:00 UTC), Unix seconds.
    pub resets_at: i64,
    /// Operations refused with 429001, by operation (`connections`, `d2c_sends`, ...).
    pub throttled: std::collections::BTreeMap<String, u64>,
    /// Messages refused with 403002 once the daily quota was spent.
    pub quota_refusals: u64,
}

/// The tier presets, throttles and meters of every hub, by lower-case host name.
#[derive(Debug, Default)]
pub(crate) struct HubQuotas {
    presets: Mutex<HashMap<String, HubSku>>,
    /// Whether any hub enforces a tier: with none (the default) an operation costs one
    /// atomic load here, not a lock and a lower-cased host name.
    any_presets: AtomicBool,
    hubs: Mutex<HashMap<String, HubState>>,
}

fn today() -> i64 {
    now().div_euclid(86_400)
}

impl HubQuotas {
    /// The quotas of hubs that enforce these tiers.
    pub(crate) fn new(presets: HashMap<String, HubSku>) -> HubQuotas {
        HubQuotas {
            any_presets: AtomicBool::new(!presets.is_empty()),
            presets: Mutex::new(presets),
            hubs: Mutex::new(HashMap::new()),
        }
    }

    /// Makes a hub enforce a tier (`None`: stop enforcing).
    pub(crate) fn set_preset(&self, hub: &str, sku: Option<HubSku>) {
        let hub = hub.to_ascii_lowercase();
        let mut presets = lock(&self.presets);
        match sku {
            Some(sku) => presets.insert(hub.clone(), sku),
            None => presets.remove(&hub),
        };
        self.any_presets
            .store(!presets.is_empty(), Ordering::Relaxed);
        drop(presets);
        // A new tier starts with full buckets of its own rates.
        if let Some(state) = lock(&self.hubs).get_mut(&hub) {
            state.buckets.clear();
            state.next_send_slot = None;
        }
    }

    /// The tier a hub enforces, if any.
    pub(crate) fn preset(&self, hub: &str) -> Option<HubSku> {
        if !self.any_presets.load(Ordering::Relaxed) {
            return None;
        }
        lock(&self.presets).get(&hub.to_ascii_lowercase()).copied()
    }

    /// The rate the hub's tier sets for `operation`; `None` without a preset, or where the
    /// tier lacks the operation.
    pub(crate) fn tier_rate(&self, hub: &str, operation: HubOperation) -> Option<Rate> {
        let sku = self.preset(hub)?;
        let rate = operation.rate(sku.tier.limits())?;
        Some(Rate {
            per_second: rate.per_second(sku.units),
            burst: rate.burst(sku.units),
        })
    }

    /// Admits an operation costing `cost` (1, or a direct method's 4 KB blocks) at `rate`
    /// (a knob's, else the hub's tier's; `None`: not throttled).
    pub(crate) fn admit(
        &self,
        hub: &str,
        operation: HubOperation,
        cost: f64,
        rate: Option<Rate>,
    ) -> Result<(), Throttled> {
        let Some(rate) = rate.or_else(|| self.tier_rate(hub, operation)) else {
            return Ok(());
        };
        let mut hubs = lock(&self.hubs);
        let state = hubs.entry(hub.to_ascii_lowercase()).or_default();
        let bucket = state
            .buckets
            .entry(operation)
            .or_insert_with(|| Bucket::new(rate));
        if bucket.rate != rate {
            *bucket = Bucket::new(rate);
        }
        match bucket.take(cost) {
            Ok(()) => Ok(()),
            Err(retry_after) => {
                *state.throttled.entry(operation).or_default() += 1;
                Err(Throttled {
                    message: format!(
                        "ThrottlingException: the hub's {} throttle ({} per second) is spent",
                        operation.name().replace('_', " "),
                        trim(rate.per_second)
                    ),
                    retry_after,
                })
            }
        }
    }

    /// Admits a device-to-cloud send at `rate` (a knob's, else the tier's): `Ok(delay)` shapes
    /// the traffic (the send waits for the next free slot of the rate), `Err` once the backlog
    /// passes the shaping window.
    pub(crate) fn shape_send(&self, hub: &str, rate: Option<Rate>) -> Result<Duration, Throttled> {
        let Some(rate) = rate.or_else(|| self.tier_rate(hub, HubOperation::D2cSend)) else {
            return Ok(Duration::ZERO);
        };
        let now = Instant::now();
        let interval = Duration::from_secs_f64(1.0 / rate.per_second);
        let mut hubs = lock(&self.hubs);
        let state = hubs.entry(hub.to_ascii_lowercase()).or_default();
        let slot = state.next_send_slot.map_or(now, |next| next.max(now));
        let wait = slot - now;
        if wait > SHAPING_WINDOW {
            *state.throttled.entry(HubOperation::D2cSend).or_default() += 1;
            return Err(Throttled {
                message: format!(
                    "ThrottlingException: more than {} messages per second",
                    trim(rate.per_second)
                ),
                retry_after: wait - SHAPING_WINDOW,
            });
        }
        state.next_send_slot = Some(slot + interval);
        Ok(wait)
    }

    /// The hubs' state, locked, with `key`'s meter started: after a start its first use counts
    /// today's stored messages through `stored_today` (the day and the messages it metered),
    /// read with no lock held; a message counted meanwhile wins.
    fn counted(
        &self,
        key: &str,
        sku: HubSku,
        stored_today: impl FnOnce(HubSku) -> Result<(i64, u64), String>,
    ) -> Result<std::sync::MutexGuard<'_, HashMap<String, HubState>>, String> {
        let hubs = lock(&self.hubs);
        if hubs.get(key).is_some_and(|state| state.day.is_some()) {
            return Ok(hubs);
        }
        drop(hubs);
        let (day, used) = stored_today(sku)?;
        let mut hubs = lock(&self.hubs);
        let state = hubs.entry(key.to_string()).or_default();
        if state.day.is_none() {
            state.day = Some(day);
            state.used = used;
        }
        Ok(hubs)
    }

    /// Starts the meter of a hub that enforces its tier (see [`Self::meter_message`]).
    pub(crate) fn ensure_counted(
        &self,
        hub: &str,
        stored_today: impl FnOnce(HubSku) -> Result<(i64, u64), String>,
    ) -> Result<(), String> {
        match self.preset(hub) {
            Some(sku) => self
                .counted(&hub.to_ascii_lowercase(), sku, stored_today)
                .map(drop),
            None => Ok(()),
        }
    }

    /// Meters a device-to-cloud message of `size` bytes against the daily quota of the hub's
    /// tier: `Err` (403002, in Azure's words) once it is spent. The first message after a start
    /// counts today's stored messages first (`stored_today`), so a restart hands out no second
    /// quota.
    pub(crate) fn meter_message(
        &self,
        hub: &str,
        size: usize,
        stored_today: impl FnOnce(HubSku) -> Result<(i64, u64), String>,
    ) -> Result<(), String> {
        let Some(sku) = self.preset(hub) else {
            return Ok(());
        };
        let quota = sku.daily_messages();
        let cost = sku.metered_messages(size);
        let key = hub.to_ascii_lowercase();
        let mut hubs = self.counted(&key, sku, stored_today)?;
        let state = hubs.entry(key).or_default();
        let day = today();
        if state.day != Some(day) {
            // Azure resets the daily quota at 00:00 UTC.
            state.day = Some(day);
            state.used = 0;
        }
        if state.used + cost > quota {
            state.quota_refusals += 1;
            return Err(format!(
                "{QUOTA_EXCEEDED_ERROR_CODE} IotHubQuotaExceeded: Total number of messages on IotHub '{hub}' exceeded the allocated quota. Max allowed message count: {quota}, current message count: {}. Send and Receive operations are blocked for this hub until the next UTC day.",
                state.used + cost
            ));
        }
        state.used += cost;
        Ok(())
    }

    /// What the hub's throttles and meter have seen.
    pub(crate) fn counters(&self, hub: &str) -> HubCounters {
        let day = today();
        let hubs = lock(&self.hubs);
        let state = hubs.get(&hub.to_ascii_lowercase());
        let mut throttled: std::collections::BTreeMap<String, u64> = HubOperation::ALL
            .iter()
            .map(|op| (op.name().to_string(), 0))
            .collect();
        if let Some(state) = state {
            for (op, n) in &state.throttled {
                throttled.insert(op.name().to_string(), *n);
            }
        }
        HubCounters {
            messages_used: state.filter(|s| s.day == Some(day)).map_or(0, |s| s.used),
            resets_at: (day + 1) * 86_400,
            throttled,
            quota_refusals: state.map_or(0, |s| s.quota_refusals),
        }
    }
}

/// What a DPS instance throttles once it enforces Azure's rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum DpsThrottle {
    /// Device registrations, per instance.
    Registration,
    /// Service API operations, per instance.
    Operation,
}

/// The rate presets of the DPS instances and their buckets, by lower-case DPS name.
#[derive(Debug, Default)]
pub(crate) struct DpsQuotas {
    presets: Mutex<std::collections::HashSet<String>>,
    /// Whether any DPS enforces its rates: none (the default) costs one atomic load.
    any_presets: AtomicBool,
    buckets: Mutex<HashMap<(String, DpsThrottle), Bucket>>,
    /// Status polls per device: by (lower-case DPS name, registration id).
    polls: Mutex<HashMap<(String, String), Bucket>>,
}

impl DpsQuotas {
    /// Makes a DPS instance enforce Azure's rates, or stop.
    pub(crate) fn set_presets(&self, dps: &str, on: bool) {
        let dps = dps.to_ascii_lowercase();
        let mut presets = lock(&self.presets);
        if on {
            presets.insert(dps);
        } else {
            presets.remove(&dps);
        }
        self.any_presets
            .store(!presets.is_empty(), Ordering::Relaxed);
    }

    /// Whether a DPS instance enforces Azure's rates.
    pub(crate) fn presets(&self, dps: &str) -> bool {
        self.any_presets.load(Ordering::Relaxed)
            && lock(&self.presets).contains(&dps.to_ascii_lowercase())
    }

    /// Admits a registration at `per_minute` (the knob), else at Azure's rate when the DPS
    /// enforces it; the bucket holds a second's worth, so a fleet is paced evenly.
    pub(crate) fn admit_registration(
        &self,
        dps: &str,
        per_minute: Option<u32>,
    ) -> Result<(), Throttled> {
        let key = (dps.to_ascii_lowercase(), DpsThrottle::Registration);
        let Some(limit) = per_minute.or_else(|| {
            self.presets(dps)
                .then_some(crate::limits::DPS_RATES.registrations_per_minute)
        }) else {
            // A lifted quota leaves no stale bucket behind for the next one.
            lock(&self.buckets).remove(&key);
            return Ok(());
        };
        let per_second = f64::from(limit.max(1)) / 60.0;
        let rate = Rate {
            per_second,
            burst: per_second.max(1.0),
        };
        self.take(&self.buckets, key, rate).map_err(|retry_after| Throttled {
            message: format!(
                "Too many requests: this provisioning service accepts {limit} registrations per minute."
            ),
            retry_after,
        })
    }

    /// Admits a service API operation of a DPS that enforces Azure's rates (1,000 a minute,
    /// a minute's worth at once).
    pub(crate) fn admit_operation(&self, dps: &str) -> Result<(), Throttled> {
        if !self.presets(dps) {
            return Ok(());
        }
        let limit = crate::limits::DPS_RATES.operations_per_minute;
        let rate = Rate {
            per_second: f64::from(limit) / 60.0,
            burst: f64::from(limit),
        };
        let key = (dps.to_ascii_lowercase(), DpsThrottle::Operation);
        self.take(&self.buckets, key, rate).map_err(|retry_after| Throttled {
            message: format!(
                "Too many requests: this provisioning service accepts {limit} operations per minute."
            ),
            retry_after,
        })
    }

    /// Admits a device's operation status poll on a DPS that enforces Azure's rates (5 in any
    /// 10 seconds).
    pub(crate) fn admit_poll(&self, dps: &str, registration_id: &str) -> Result<(), Throttled> {
        if !self.presets(dps) {
            return Ok(());
        }
        let rates = crate::limits::DPS_RATES;
        let rate = Rate {
            per_second: f64::from(rates.polls_per_device) / rates.poll_window.as_secs_f64(),
            burst: f64::from(rates.polls_per_device),
        };
        let key = (dps.to_ascii_lowercase(), registration_id.to_string());
        self.take(&self.polls, key, rate)
            .map_err(|retry_after| Throttled {
                message: format!(
                    "Too many requests: a device may poll its operation {} times in {} seconds.",
                    rates.polls_per_device,
                    rates.poll_window.as_secs()
                ),
                retry_after,
            })
    }

    fn take<K: std::hash::Hash + Eq>(
        &self,
        buckets: &Mutex<HashMap<K, Bucket>>,
        key: K,
        rate: Rate,
    ) -> Result<(), Duration> {
        let mut buckets = lock(buckets);
        let bucket = buckets.entry(key).or_insert_with(|| Bucket::new(rate));
        if bucket.rate != rate {
            *bucket = Bucket::new(rate);
        }
        bucket.take(1.0)
    }
}

/// Whole seconds to advise in `retry-after` (at least one: zero would mean "now").
pub(crate) fn retry_after_seconds(wait: Duration) -> u32 {
    u32::try_from(wait.as_secs_f64().ceil() as u64)
        .unwrap_or(u32::MAX)
        .max(1)
}

/// The start of the current UTC day, Unix seconds (what the meter counts from).
pub(crate) fn start_of_today() -> (i64, i64) {
    let day = today();
    (day, day * 86_400)
}

/// A rate as the table writes it: whole numbers without decimals.
fn trim(rate: f64) -> String {
    if rate.fract() == 0.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s1(units: u32) -> HubQuotas {
        let quotas = HubQuotas::default();
        quotas.set_preset("Hub", Some(HubSku::new("S1", units).unwrap()));
        quotas
    }

    #[test]
    fn per_minute_throttles_take_their_minute_at_once_then_refuse() {
        let quotas = s1(2);
        // 100/min/unit: two units take 200 registry operations at once, not 201.
        for _ in 0..200 {
            quotas
                .admit("hub", HubOperation::Registry, 1.0, None)
                .unwrap();
        }
        let refused = quotas
            .admit("HUB", HubOperation::Registry, 1.0, None)
            .unwrap_err();
        assert!(refused.to_string().starts_with("429001"), "{refused:?}");
        // The next token comes in 60/200 s.
        assert!(refused.retry_after <= Duration::from_millis(300));
        assert_eq!(quotas.counters("hub").throttled["registry_operations"], 1);
    }

    #[test]
    fn direct_methods_spend_four_kb_blocks() {
        let quotas = s1(1);
        // 160 KB/s: 40 blocks. A 128 KB payload is 32 blocks; the next 9 blocks are refused.
        quotas
            .admit("hub", HubOperation::DirectMethod, 32.0, None)
            .unwrap();
        quotas
            .admit("hub", HubOperation::DirectMethod, 8.0, None)
            .unwrap();
        assert!(
            quotas
                .admit("hub", HubOperation::DirectMethod, 1.0, None)
                .is_err()
        );
    }

    #[test]
    fn basic_tiers_and_hubs_without_presets_are_not_throttled_on_what_they_lack() {
        let quotas = HubQuotas::default();
        quotas.set_preset("hub", Some(HubSku::new("B1", 1).unwrap()));
        assert_eq!(quotas.tier_rate("hub", HubOperation::TwinRead), None);
        assert_eq!(quotas.tier_rate("other", HubOperation::Registry), None);
        assert!(quotas.tier_rate("hub", HubOperation::Registry).is_some());
    }

    #[test]
    fn dps_registrations_pace_a_seconds_worth_then_advise_retry_after() {
        let quotas = DpsQuotas::default();
        // The knob's 600 per minute: 10 per second, a burst of at most 10.
        for _ in 0..10 {
            quotas.admit_registration("dps", Some(600)).unwrap();
        }
        let refused = quotas.admit_registration("dps", Some(600)).unwrap_err();
        assert_eq!(retry_after_seconds(refused.retry_after), 1);
        // 1 per minute asks a refused device to wait a minute.
        quotas.admit_registration("slow", Some(1)).unwrap();
        let refused = quotas.admit_registration("slow", Some(1)).unwrap_err();
        assert_eq!(retry_after_seconds(refused.retry_after), 60);
        // Without the knob nor presets nothing is throttled; with presets, Azure's 1,000/min.
        assert!((0..100).all(|_| quotas.admit_registration("free", None).is_ok()));
        quotas.set_presets("Preset", true);
        assert!((0..16).all(|_| quotas.admit_registration("preset", None).is_ok()));
        assert!(quotas.admit_registration("preset", None).is_err());
    }

    #[test]
    fn dps_polls_allow_five_per_device_in_ten_seconds_and_operations_a_thousand() {
        let quotas = DpsQuotas::default();
        assert!((0..50).all(|_| quotas.admit_poll("dps", "dev").is_ok()));
        quotas.set_presets("dps", true);
        assert!((0..5).all(|_| quotas.admit_poll("dps", "dev").is_ok()));
        let refused = quotas.admit_poll("dps", "dev").unwrap_err();
        assert_eq!(retry_after_seconds(refused.retry_after), 2);
        // Another device has its own five.
        assert!(quotas.admit_poll("dps", "other").is_ok());
        assert!((0..1000).all(|_| quotas.admit_operation("dps").is_ok()));
        assert!(quotas.admit_operation("dps").is_err());
    }

    #[test]
    fn the_meter_starts_from_the_stored_count_and_refuses_past_the_quota() {
        let quotas = HubQuotas::default();
        quotas.set_preset("hub", Some(HubSku::new("F1", 1).unwrap()));
        let (day, _) = start_of_today();
        let reads = std::cell::Cell::new(0);
        let stored = |_| {
            reads.set(reads.get() + 1);
            Ok((day, 7_999))
        };
        quotas.meter_message("hub", 100, stored).unwrap();
        let refusal = quotas.meter_message("hub", 100, stored).unwrap_err();
        // The store is read once, at the first message after the start.
        assert_eq!(reads.get(), 1);
        assert!(refusal.starts_with("403002"), "{refusal}");
        let counters = quotas.counters("hub");
        assert_eq!(
            (counters.messages_used, counters.quota_refusals),
            (8_000, 1)
        );
    }
}
