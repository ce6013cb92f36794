//! Telemetry plans: what a fleet of simulated devices sends, and when.
//!
//! A [`TelemetryPlan`] arrives from Python as JSON. For every device it unfolds into a
//! [`DeviceStream`]: a deterministic sequence of [`PlannedMessage`]s (JSON body, send offset,
//! dropout/duplicate decision) that depends only on the plan, the seed and the device's index.
//! That makes a load test or a data set reproducible: run the same plan twice and every device
//! sends byte-identical bodies.
//!
//! Reproducibility across crate versions and platforms is a requirement, so nothing here uses a
//! library RNG or the platform's `libm`: the PRNG is xoshiro256** seeded by splitmix64, and the
//! few transcendental functions (`ln` for Box–Muller, `sin`/`cos`) are fdlibm ports built only
//! from IEEE-754 operations (`+ - * /`, `sqrt`, `floor`, `round`), which are bit-exact everywhere.
//!
//! Every device draws from independent streams: one for its schedule (phase, jitter, dropouts,
//! duplicates) and, per field, one for the values and one for anomalies. So enabling dropouts
//! or anomalies does not change the underlying signal of any field, and adding a field does not
//! change the others.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::{Number, Value};

use crate::error::{Error, Result};

/// Keys every body starts with; plan and custom fields may not reuse them, or the body would
/// carry duplicate keys whose meaning depends on the JSON parser.
pub const RESERVED_KEYS: [&str; 3] = ["deviceId", "seq", "ts"];

/// 0000-01-01T00:00:00.000Z: RFC 3339 has four-digit years only.
const MIN_TS_MS: i64 = -62_167_219_200_000;
/// 9999-12-31T23:59:59.999Z.
const MAX_TS_MS: i64 = 253_402_300_799_999;

// ---------------------------------------------------------------------------------------------
// The plan (serde)
// ---------------------------------------------------------------------------------------------

/// A fleet's telemetry: timing, fault injection and the fields of every message.
///
/// Defaults exist for everything but the message budget (`duration` and/or `count`), and
/// `null` is accepted wherever a default exists, because the Python side serialises `None`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct TelemetryPlan {
    /// Real seconds between a device's messages; 0 sends as fast as the connection allows.
    #[serde(default = "one", deserialize_with = "one_if_null")]
    pub interval: f64,
    /// Fraction of `interval` (0..=1) by which each send time is shifted, uniformly in
    /// ±jitter/2, so a fleet does not hit the hub in perfect rhythm.
    #[serde(default, deserialize_with = "default_if_null")]
    pub jitter: f64,
    /// Seconds of sending per device (becomes `floor(duration / interval)` messages).
    #[serde(default)]
    pub duration: Option<f64>,
    /// Messages per device; with `duration` too, the smaller budget wins.
    #[serde(default)]
    pub count: Option<u64>,
    /// Root of every device's random streams.
    #[serde(default, deserialize_with = "default_if_null")]
    pub seed: u64,
    /// Simulated seconds per real second: lets a ten-minute run produce a day of data.
    #[serde(default = "one", deserialize_with = "one_if_null")]
    pub time_scale: f64,
    /// Simulated Unix time (ms) of message 0; the engine fills in "now" when absent.
    #[serde(default)]
    pub start_unix_ms: Option<i64>,
    /// Probability (0..=1) that a message is planned but not sent; its `seq` is still used, so
    /// the received data shows a gap the way a lossy device would.
    #[serde(default, deserialize_with = "default_if_null")]
    pub dropout_rate: f64,
    /// Probability (0..=1) that a message is sent twice with the same id and body, to exercise
    /// de-duplication downstream.
    #[serde(default, deserialize_with = "default_if_null")]
    pub duplicate_rate: f64,
    /// The fields of every body, in output order (after `deviceId`, `seq`, `ts`).
    #[serde(default, deserialize_with = "default_if_null")]
    pub fields: Vec<FieldSpec>,
}

/// One field of the message body.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct FieldSpec {
    /// JSON key in the body.
    pub name: String,
    /// Where the values come from.
    pub generator: Generator,
    /// Probability (0..=1) per message of a spike of ±`anomaly_scale` (random sign). Spikes are
    /// added to the output only, never to a generator's state, like a sensor glitch.
    #[serde(default, deserialize_with = "default_if_null")]
    pub anomaly_rate: f64,
    /// Size of a spike (>= 0).
    #[serde(default, deserialize_with = "default_if_null")]
    pub anomaly_scale: f64,
    /// Decimal places for numeric output: real sensors report limited precision, and short
    /// numbers keep bodies small. 0 emits JSON integers. Integers are never touched.
    #[serde(default)]
    pub round: Option<u32>,
}

/// A value source. Numbers given as JSON integers stay integers where the generator can keep
/// them exact (`constant`, `counter`, `steps`, `step_change`, `choice`, `values`, and `sum`s of
/// those), so a Python consumer sees `int`, not `float`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Generator {
    /// The same JSON value in every message (anomalies apply only if it is a number).
    Constant {
        /// Emitted as is.
        value: Value,
    },
    /// Uniform in `[low, high)`.
    Uniform {
        /// Lower bound (inclusive).
        low: f64,
        /// Upper bound; must be >= `low`.
        high: f64,
    },
    /// Normal distribution (Box–Muller).
    Gaussian {
        /// Mean.
        mean: f64,
        /// Standard deviation (>= 0).
        std: f64,
    },
    /// A drifting value: message 0 emits `start`, then each message adds gaussian(0, `step`),
    /// clamped to `[low, high]`.
    RandomWalk {
        /// Value of message 0.
        start: f64,
        /// Standard deviation of one step (>= 0).
        step: f64,
        /// Optional lower clamp.
        #[serde(default)]
        low: Option<f64>,
        /// Optional upper clamp.
        #[serde(default)]
        high: Option<f64>,
    },
    /// Periodic signal `mean + amplitude * sin(2π (t + phase) / period)`, `t` in simulated
    /// seconds since the start.
    Sine {
        /// Centre line.
        mean: f64,
        /// Half the peak-to-peak swing.
        amplitude: f64,
        /// Simulated seconds per cycle (> 0).
        period: f64,
        /// Seconds; without it each device gets a random phase so a fleet is not in lockstep.
        #[serde(default)]
        phase: Option<f64>,
    },
    /// Piecewise constant: cycles through `values`, changing every `every` simulated seconds.
    Steps {
        /// The levels, in order (at least one).
        values: Vec<Number>,
        /// Simulated seconds per level (> 0).
        every: f64,
    },
    /// A level that starts at `start` and, at each later message with probability `rate`,
    /// jumps by ±`size` (random sign): set points, door states, machine modes.
    StepChange {
        /// Level of message 0.
        start: Number,
        /// Size of one jump.
        size: Number,
        /// Probability (0..=1) of a jump per message.
        rate: f64,
    },
    /// Sum of numeric generators, each with its own state (e.g. seasonality + noise + drift).
    Sum {
        /// The parts (at least one, all numeric).
        parts: Vec<Generator>,
    },
    /// `start + seq * step`.
    Counter {
        /// Value of message 0 (default 0).
        #[serde(default = "zero_number")]
        start: Number,
        /// Increment per message (default 1).
        #[serde(default = "one_number")]
        step: Number,
    },
    /// A random pick from `values` per message, optionally weighted.
    Choice {
        /// The candidates (at least one). Shared, not copied, by every device.
        #[serde(deserialize_with = "arc_values")]
        values: Arc<[Value]>,
        /// Relative weights (>= 0, not all 0), one per value; uniform when absent.
        #[serde(default)]
        weights: Option<Vec<f64>>,
    },
    /// An explicit sequence, cycled: how values computed by Python generators arrive. Shared,
    /// not copied, by every device.
    Values {
        /// The sequence (at least one value).
        #[serde(deserialize_with = "arc_values")]
        values: Arc<[Value]>,
    },
}

fn one() -> f64 {
    1.0
}

fn zero_number() -> Number {
    Number::from(0)
}

fn one_number() -> Number {
    Number::from(1)
}

fn default_if_null<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn one_if_null<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(1.0))
}

fn arc_values<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Arc<[Value]>, D::Error> {
    Ok(Vec::<Value>::deserialize(deserializer)?.into())
}

// ---------------------------------------------------------------------------------------------
// Validation and plan-level queries
// ---------------------------------------------------------------------------------------------

fn config(message: String) -> Error {
    Error::Config(message)
}

fn check_finite(value: f64, what: &str, at: &str) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(config(format!(
            "{at}: {what} must be a finite number, got {value}"
        )))
    }
}

fn check_non_negative(value: f64, what: &str, at: &str) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(config(format!(
            "{at}: {what} must be a finite number >= 0, got {value}"
        )))
    }
}

fn check_rate(value: f64, what: &str, at: &str) -> Result<()> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(config(format!(
            "{at}: {what} must be between 0 and 1, got {value}"
        )))
    }
}

fn check_number(value: &Number, what: &str, at: &str) -> Result<()> {
    check_finite(value.as_f64().unwrap_or(f64::NAN), what, at)
}

impl TelemetryPlan {
    /// Parses and validates a plan, so a bad plan fails before any device connects.
    pub fn from_json(text: &str) -> Result<TelemetryPlan> {
        let plan: TelemetryPlan = serde_json::from_str(text)
            .map_err(|e| config(format!("invalid telemetry plan: {e}")))?;
        plan.validate()?;
        Ok(plan)
    }

    /// Checks every value, naming the offending field, so Python users get an actionable
    /// message rather than NaNs in their data.
    pub fn validate(&self) -> Result<()> {
        let at = "telemetry plan";
        check_non_negative(self.interval, "interval", at)?;
        check_rate(self.jitter, "jitter", at)?;
        if let Some(duration) = self.duration {
            check_non_negative(duration, "duration", at)?;
            if self.interval == 0.0 && self.count.is_none() {
                return Err(config(format!(
                    "{at}: duration needs interval > 0 (with interval 0 messages are sent as \
                     fast as possible, so set count instead)"
                )));
            }
        }
        if self.duration.is_none() && self.count.is_none() {
            return Err(config(format!(
                "{at}: set duration and/or count (how many messages each device sends)"
            )));
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err(config(format!(
                "{at}: time_scale must be a finite number > 0, got {}",
                self.time_scale
            )));
        }
        if let Some(ms) = self.start_unix_ms
            && !(MIN_TS_MS..=MAX_TS_MS).contains(&ms)
        {
            return Err(config(format!(
                "{at}: start_unix_ms {ms} is outside the years 0000-9999 that RFC 3339 timestamps \
                 can express"
            )));
        }
        check_rate(self.dropout_rate, "dropout_rate", at)?;
        check_rate(self.duplicate_rate, "duplicate_rate", at)?;
        for (index, field) in self.fields.iter().enumerate() {
            let at = format!("fields[{index}] {:?}", field.name);
            if field.name.is_empty() {
                return Err(config(format!("{at}: name must not be empty")));
            }
            if RESERVED_KEYS.contains(&field.name.as_str()) {
                return Err(config(format!(
                    "{at}: name {:?} is reserved (every body starts with {})",
                    field.name,
                    RESERVED_KEYS.join(", ")
                )));
            }
            if let Some(first) = self.fields[..index]
                .iter()
                .position(|other| other.name == field.name)
            {
                return Err(config(format!(
                    "{at}: duplicate field name {:?} (also fields[{first}])",
                    field.name
                )));
            }
            check_rate(field.anomaly_rate, "anomaly_rate", &at)?;
            check_non_negative(field.anomaly_scale, "anomaly_scale", &at)?;
            validate_generator(&field.generator, &at)?;
        }
        Ok(())
    }

    /// Messages each device plans (including dropped ones). Duration becomes
    /// `floor(duration / interval)` messages, at least 1 when duration > 0; a tiny relative
    /// tolerance keeps `0.3 / 0.1` at 3 despite binary fractions.
    pub fn messages_per_device(&self) -> u64 {
        let by_duration = match self.duration {
            Some(duration) if self.interval > 0.0 => Some(if duration > 0.0 {
                let ratio = duration / self.interval;
                // `as` saturates: an absurd duration means "practically forever".
                ((ratio + ratio * 1e-9).floor() as u64).max(1)
            } else {
                0
            }),
            // Interval 0 is "as fast as possible": a duration cannot be turned into a count.
            Some(_) if self.count.is_none() => Some(0),
            _ => None,
        };
        match (self.count, by_duration) {
            (Some(count), Some(limit)) => count.min(limit),
            (Some(count), None) => count,
            (None, Some(limit)) => limit,
            (None, None) => 0,
        }
    }

    /// Real time between a device's messages.
    pub fn interval(&self) -> Duration {
        seconds(self.interval)
    }

    /// Pins the simulated start; the engine calls it once so all devices share one clock.
    pub fn set_start_unix_ms(&mut self, ms: i64) {
        self.start_unix_ms = Some(ms);
    }

    /// Checks names of per-device custom fields before they are passed to
    /// [`device_stream`](Self::device_stream), which cannot fail: a collision with a reserved
    /// key, a plan field or another custom field would produce duplicate JSON keys.
    pub fn check_custom_names<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let mut seen: Vec<&str> = Vec::new();
        for name in names {
            if name.is_empty() {
                return Err(config("custom field: name must not be empty".into()));
            }
            if RESERVED_KEYS.contains(&name) {
                return Err(config(format!("custom field {name:?}: name is reserved")));
            }
            if self.fields.iter().any(|f| f.name == name) {
                return Err(config(format!(
                    "custom field {name:?}: the plan already has a field with that name"
                )));
            }
            if seen.contains(&name) {
                return Err(config(format!("custom field {name:?}: duplicate name")));
            }
            seen.push(name);
        }
        Ok(())
    }

    /// Unfolds the plan for one device. The stream owns everything it needs (large value lists
    /// are shared through `Arc`), so it can move into the device's task.
    ///
    /// `custom`: extra fields computed by Python for this device, emitted after the plan's
    /// fields, values cycled per message (a field with no values is left out). Names are not
    /// checked here; see [`check_custom_names`](Self::check_custom_names).
    ///
    /// Without `start_unix_ms` the stream starts at the current time, which makes bodies
    /// non-reproducible; the engine should call [`set_start_unix_ms`](Self::set_start_unix_ms).
    pub fn device_stream(
        &self,
        device_index: u64,
        device_id: &str,
        custom: Vec<(String, Vec<Value>)>,
    ) -> DeviceStream {
        let key = splitmix64(self.seed ^ splitmix64(device_index));
        let mut schedule = Rng::new(stream_seed(key, 0));
        let interval = if self.interval.is_finite() && self.interval > 0.0 {
            self.interval
        } else {
            0.0
        };
        // Always drawn, so the schedule stream does not depend on the interval.
        let phase = schedule.f64() * interval;
        let fields = self
            .fields
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                let index = index as u64;
                let mut values = Rng::new(stream_seed(key, 1 + 2 * index));
                FieldState {
                    key: json_key(&spec.name),
                    generator: GenState::new(&spec.generator, &mut values),
                    values,
                    anomalies: Rng::new(stream_seed(key, 2 + 2 * index)),
                    anomaly_rate: spec.anomaly_rate,
                    anomaly_scale: spec.anomaly_scale,
                    round: spec.round,
                }
            })
            .collect();
        let custom = custom
            .into_iter()
            .filter(|(_, values)| !values.is_empty())
            .map(|(name, values)| CustomField {
                key: json_key(&name),
                values,
            })
            .collect();
        let mut head = String::from("{\"deviceId\":");
        head.push_str(&json_string(device_id));
        head.push_str(",\"seq\":");
        let start_ms = self.start_unix_ms.unwrap_or_else(now_unix_ms);
        DeviceStream {
            device_id: device_id.to_owned(),
            head,
            total: self.messages_per_device(),
            seq: 0,
            interval,
            sim_step: interval * self.time_scale,
            start_ms,
            phase,
            jitter_span: self.jitter * interval,
            dropout_rate: self.dropout_rate,
            duplicate_rate: self.duplicate_rate,
            schedule,
            fields,
            custom,
            body_hint: 64,
        }
    }
}

fn validate_generator(generator: &Generator, at: &str) -> Result<()> {
    match generator {
        Generator::Constant { .. } => {}
        Generator::Uniform { low, high } => {
            check_finite(*low, "uniform low", at)?;
            check_finite(*high, "uniform high", at)?;
            if low > high {
                return Err(config(format!(
                    "{at}: uniform low ({low}) must not exceed high ({high})"
                )));
            }
            check_finite(high - low, "uniform high - low", at)?;
        }
        Generator::Gaussian { mean, std } => {
            check_finite(*mean, "gaussian mean", at)?;
            check_non_negative(*std, "gaussian std", at)?;
        }
        Generator::RandomWalk {
            start,
            step,
            low,
            high,
        } => {
            check_finite(*start, "random_walk start", at)?;
            check_non_negative(*step, "random_walk step", at)?;
            if let Some(low) = low {
                check_finite(*low, "random_walk low", at)?;
            }
            if let Some(high) = high {
                check_finite(*high, "random_walk high", at)?;
            }
            let (lo, hi) = (
                low.unwrap_or(f64::NEG_INFINITY),
                high.unwrap_or(f64::INFINITY),
            );
            if lo > hi {
                return Err(config(format!(
                    "{at}: random_walk low ({lo}) must not exceed high ({hi})"
                )));
            }
            if !(lo..=hi).contains(start) {
                return Err(config(format!(
                    "{at}: random_walk start ({start}) must lie within [low, high]"
                )));
            }
        }
        Generator::Sine {
            mean,
            amplitude,
            period,
            phase,
        } => {
            check_finite(*mean, "sine mean", at)?;
            check_finite(*amplitude, "sine amplitude", at)?;
            if !(period.is_finite() && *period > 0.0) {
                return Err(config(format!(
                    "{at}: sine period must be a finite number > 0, got {period}"
                )));
            }
            if let Some(phase) = phase {
                check_finite(*phase, "sine phase", at)?;
            }
        }
        Generator::Steps { values, every } => {
            if values.is_empty() {
                return Err(config(format!("{at}: steps values must not be empty")));
            }
            for value in values {
                check_number(value, "steps value", at)?;
            }
            if !(every.is_finite() && *every > 0.0) {
                return Err(config(format!(
                    "{at}: steps every must be a finite number > 0, got {every}"
                )));
            }
        }
        Generator::StepChange { start, size, rate } => {
            check_number(start, "step_change start", at)?;
            check_number(size, "step_change size", at)?;
            check_rate(*rate, "step_change rate", at)?;
        }
        Generator::Sum { parts } => {
            if parts.is_empty() {
                return Err(config(format!("{at}: sum parts must not be empty")));
            }
            for (index, part) in parts.iter().enumerate() {
                let at = format!("{at}, sum part {index}");
                validate_generator(part, &at)?;
                if !is_numeric(part) {
                    return Err(config(format!(
                        "{at}: sum parts must be numeric generators (constants, choices and \
                         values must hold only numbers)"
                    )));
                }
            }
        }
        Generator::Counter { start, step } => {
            check_number(start, "counter start", at)?;
            check_number(step, "counter step", at)?;
        }
        Generator::Choice { values, weights } => {
            if values.is_empty() {
                return Err(config(format!("{at}: choice values must not be empty")));
            }
            if let Some(weights) = weights {
                if weights.len() != values.len() {
                    return Err(config(format!(
                        "{at}: choice has {} weights for {} values",
                        weights.len(),
                        values.len()
                    )));
                }
                for weight in weights {
                    check_non_negative(*weight, "choice weight", at)?;
                }
                let total: f64 = weights.iter().sum();
                if !(total.is_finite() && total > 0.0) {
                    return Err(config(format!(
                        "{at}: choice weights must add up to a finite number > 0"
                    )));
                }
            }
        }
        Generator::Values { values } => {
            if values.is_empty() {
                return Err(config(format!("{at}: values must not be empty")));
            }
        }
    }
    Ok(())
}

fn is_numeric(generator: &Generator) -> bool {
    match generator {
        Generator::Constant { value } => value.is_number(),
        Generator::Choice { values, .. } | Generator::Values { values } => {
            values.iter().all(Value::is_number)
        }
        Generator::Sum { parts } => parts.iter().all(is_numeric),
        _ => true,
    }
}

// ---------------------------------------------------------------------------------------------
// The per-device stream
// ---------------------------------------------------------------------------------------------

/// One device's planned messages. Owns its random streams and generator states, so it is
/// `Send + 'static` and costs one body allocation (plus the message id) per message.
///
/// Messages come from the [`Iterator`] implementation (`stream.next()`), which ends after
/// [`TelemetryPlan::messages_per_device`] messages.
#[derive(Debug, Clone)]
pub struct DeviceStream {
    device_id: String,
    /// `{"deviceId":"<escaped id>","seq":`, built once.
    head: String,
    total: u64,
    seq: u64,
    /// Real seconds between messages.
    interval: f64,
    /// Simulated seconds between messages.
    sim_step: f64,
    start_ms: i64,
    /// Real seconds.
    phase: f64,
    /// Real seconds: jitter * interval.
    jitter_span: f64,
    dropout_rate: f64,
    duplicate_rate: f64,
    schedule: Rng,
    fields: Vec<FieldState>,
    custom: Vec<CustomField>,
    /// Size of the previous body, so the next one is allocated once.
    body_hint: usize,
}

/// One message as planned: what to send, when, and how many times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMessage {
    /// 0-based message number for this device (dropped messages consume one too).
    pub seq: u64,
    /// Offset from the device's own start: phase + seq × interval + jitter, never negative.
    pub send_at: Duration,
    /// 0 = dropout (don't send), 1 = normal, 2 = duplicate (same id, same body).
    pub copies: u8,
    /// Whether any field got a spike, so a test can compare detections with ground truth.
    pub anomaly: bool,
    /// UTF-8 JSON object: `{"deviceId":…,"seq":…,"ts":…, <plan fields>, <custom fields>}`.
    /// Built for dropped messages too, so what was lost can be reported.
    pub body: Vec<u8>,
    /// `<device_id>-<seq>`: the same for both copies of a duplicate.
    pub message_id: String,
}

impl DeviceStream {
    /// Offset of this device's first message from the fleet's start, uniform in
    /// `[0, interval)`, so devices don't send in lockstep (0 when the interval is 0).
    pub fn phase(&self) -> Duration {
        seconds(self.phase)
    }

    fn build_body(&mut self, seq: u64) -> (Vec<u8>, bool) {
        let mut body = Vec::with_capacity(self.body_hint);
        body.extend_from_slice(self.head.as_bytes());
        write_int(&mut body, seq);
        body.extend_from_slice(b",\"ts\":\"");
        let t = seq as f64 * self.sim_step;
        // `as` saturates; computed from seq (not accumulated) so there is no drift.
        let offset_ms = (t * 1000.0).round() as i64;
        write_timestamp(&mut body, self.start_ms.saturating_add(offset_ms));
        body.push(b'"');
        let mut anomaly = false;
        for field in &mut self.fields {
            body.push(b',');
            body.extend_from_slice(field.key.as_bytes());
            let sample = field.generator.sample(seq, t, &mut field.values);
            // Drawn whatever the sample is, so a choice between text and numbers does not
            // shift later spikes.
            let spike = if field.anomaly_rate > 0.0 && field.anomalies.f64() < field.anomaly_rate {
                Some(if field.anomalies.bit() {
                    field.anomaly_scale
                } else {
                    -field.anomaly_scale
                })
            } else {
                None
            };
            anomaly |= write_sample(&mut body, sample, spike, field.round);
        }
        for custom in &self.custom {
            body.push(b',');
            body.extend_from_slice(custom.key.as_bytes());
            let value = &custom.values[(seq % custom.values.len() as u64) as usize];
            write_json(&mut body, value);
        }
        body.push(b'}');
        self.body_hint = body.len() + 8;
        (body, anomaly)
    }
}

impl Iterator for DeviceStream {
    type Item = PlannedMessage;

    /// The next planned message, or `None` after `messages_per_device()` messages.
    fn next(&mut self) -> Option<PlannedMessage> {
        if self.seq >= self.total {
            return None;
        }
        let seq = self.seq;
        self.seq += 1;
        // Schedule draws depend only on the plan's rates, never on earlier outcomes.
        let jitter = if self.jitter_span > 0.0 {
            (self.schedule.f64() - 0.5) * self.jitter_span
        } else {
            0.0
        };
        let dropped = self.dropout_rate > 0.0 && self.schedule.f64() < self.dropout_rate;
        let duplicated = self.duplicate_rate > 0.0 && self.schedule.f64() < self.duplicate_rate;
        let (body, anomaly) = self.build_body(seq);
        let send_at = seconds(self.phase + seq as f64 * self.interval + jitter);
        let mut message_id = String::with_capacity(self.device_id.len() + 21);
        message_id.push_str(&self.device_id);
        message_id.push('-');
        message_id.push_str(itoa_u64(seq, &mut [0; 20]));
        Some(PlannedMessage {
            seq,
            send_at,
            copies: if dropped {
                0
            } else if duplicated {
                2
            } else {
                1
            },
            anomaly,
            body,
            message_id,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.total - self.seq).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

impl std::iter::FusedIterator for DeviceStream {}

#[derive(Debug, Clone)]
struct FieldState {
    /// `"<escaped name>":`.
    key: String,
    generator: GenState,
    values: Rng,
    anomalies: Rng,
    anomaly_rate: f64,
    anomaly_scale: f64,
    round: Option<u32>,
}

#[derive(Debug, Clone)]
struct CustomField {
    /// `"<escaped name>":`.
    key: String,
    values: Vec<Value>,
}

/// An exact integer where the inputs were integers, so counters and levels stay JSON integers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn from_number(number: &Number) -> Num {
        match number.as_i64() {
            Some(i) => Num::Int(i),
            None => Num::Float(number.as_f64().unwrap_or(f64::NAN)),
        }
    }

    fn float(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(x) => x,
        }
    }

    fn add(self, other: Num) -> Num {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a
                .checked_add(b)
                .map_or(Num::Float(a as f64 + b as f64), Num::Int),
            _ => Num::Float(self.float() + other.float()),
        }
    }

    fn neg(self) -> Num {
        match self {
            Num::Int(i) => i.checked_neg().map_or(Num::Float(-(i as f64)), Num::Int),
            Num::Float(x) => Num::Float(-x),
        }
    }

    fn times(self, k: u64) -> Num {
        match self {
            Num::Int(i) => i64::try_from(k)
                .ok()
                .and_then(|k| i.checked_mul(k))
                .map_or(Num::Float(i as f64 * k as f64), Num::Int),
            Num::Float(x) => Num::Float(x * k as f64),
        }
    }
}

/// A generator's output before anomalies and rounding.
enum Sample<'a> {
    Num(Num),
    Json(&'a Value),
    Null,
}

/// A generator with its per-device state.
#[derive(Debug, Clone)]
enum GenState {
    Constant(Value),
    Uniform {
        low: f64,
        span: f64,
    },
    Gaussian {
        mean: f64,
        std: f64,
    },
    RandomWalk {
        x: f64,
        step: f64,
        low: f64,
        high: f64,
    },
    Sine {
        mean: f64,
        amplitude: f64,
        period: f64,
        phase: f64,
    },
    Steps {
        values: Vec<Num>,
        every: f64,
    },
    StepChange {
        level: Num,
        size: Num,
        rate: f64,
    },
    Sum(Vec<GenState>),
    Counter {
        start: Num,
        step: Num,
    },
    Choice {
        values: Arc<[Value]>,
        /// Cumulative weights; `None` for a uniform pick.
        cumulative: Option<Vec<f64>>,
    },
    Values(Arc<[Value]>),
}

impl GenState {
    /// `rng` is the field's value stream: random phases are drawn from it here, in plan order.
    fn new(generator: &Generator, rng: &mut Rng) -> GenState {
        match generator {
            Generator::Constant { value } => GenState::Constant(value.clone()),
            Generator::Uniform { low, high } => GenState::Uniform {
                low: *low,
                span: high - low,
            },
            Generator::Gaussian { mean, std } => GenState::Gaussian {
                mean: *mean,
                std: *std,
            },
            Generator::RandomWalk {
                start,
                step,
                low,
                high,
            } => GenState::RandomWalk {
                x: *start,
                step: *step,
                low: low.unwrap_or(f64::NEG_INFINITY),
                high: high.unwrap_or(f64::INFINITY),
            },
            Generator::Sine {
                mean,
                amplitude,
                period,
                phase,
            } => GenState::Sine {
                mean: *mean,
                amplitude: *amplitude,
                period: *period,
                phase: phase.unwrap_or_else(|| rng.f64() * period),
            },
            Generator::Steps { values, every } => GenState::Steps {
                values: values.iter().map(Num::from_number).collect(),
                every: *every,
            },
            Generator::StepChange { start, size, rate } => GenState::StepChange {
                level: Num::from_number(start),
                size: Num::from_number(size),
                rate: *rate,
            },
            Generator::Sum { parts } => {
                GenState::Sum(parts.iter().map(|part| GenState::new(part, rng)).collect())
            }
            Generator::Counter { start, step } => GenState::Counter {
                start: Num::from_number(start),
                step: Num::from_number(step),
            },
            Generator::Choice { values, weights } => GenState::Choice {
                values: values.clone(),
                cumulative: weights.as_ref().map(|weights| {
                    weights
                        .iter()
                        .scan(0.0, |total, w| {
                            *total += w;
                            Some(*total)
                        })
                        .collect()
                }),
            },
            Generator::Values { values } => GenState::Values(values.clone()),
        }
    }

    /// The value of message `seq`, at `t` simulated seconds since the start. Never panics,
    /// even for a plan that skipped validation: degenerate inputs give `null`.
    fn sample(&mut self, seq: u64, t: f64, rng: &mut Rng) -> Sample<'_> {
        match self {
            GenState::Constant(value) => Sample::Json(value),
            GenState::Uniform { low, span } => Sample::Num(Num::Float(*low + *span * rng.f64())),
            GenState::Gaussian { mean, std } => {
                Sample::Num(Num::Float(*mean + *std * rng.normal()))
            }
            GenState::RandomWalk { x, step, low, high } => {
                if seq > 0 {
                    // max/min rather than clamp: no panic on odd bounds.
                    *x = (*x + *step * rng.normal()).max(*low).min(*high);
                }
                Sample::Num(Num::Float(*x))
            }
            GenState::Sine {
                mean,
                amplitude,
                period,
                phase,
            } => {
                let turns = (t + *phase) / *period;
                let (sin, _) = sin_cos_turns(turns - turns.floor());
                Sample::Num(Num::Float(*mean + *amplitude * sin))
            }
            GenState::Steps { values, every } => {
                if values.is_empty() {
                    return Sample::Null;
                }
                let ratio = t / *every;
                // Tolerance so that e.g. t = 3 × 0.1 counts as a full 0.3 s step.
                let step = (ratio + ratio * 1e-9).floor();
                let index = if step.is_finite() && step > 0.0 {
                    (step as u64 % values.len() as u64) as usize
                } else {
                    0
                };
                Sample::Num(values[index])
            }
            GenState::StepChange { level, size, rate } => {
                if seq > 0 && *rate > 0.0 && rng.f64() < *rate {
                    let jump = if rng.bit() { *size } else { size.neg() };
                    *level = level.add(jump);
                }
                Sample::Num(*level)
            }
            GenState::Sum(parts) => {
                let mut total = Num::Int(0);
                for part in parts {
                    match part.sample(seq, t, rng) {
                        Sample::Num(n) => total = total.add(n),
                        Sample::Json(Value::Number(n)) => total = total.add(Num::from_number(n)),
                        Sample::Json(_) | Sample::Null => {}
                    }
                }
                Sample::Num(total)
            }
            GenState::Counter { start, step } => Sample::Num(start.add(step.times(seq))),
            GenState::Choice { values, cumulative } => {
                if values.is_empty() {
                    return Sample::Null;
                }
                let index = match cumulative {
                    None => rng.below(values.len() as u64) as usize,
                    Some(cumulative) => {
                        let total = cumulative.last().copied().unwrap_or(0.0);
                        let x = rng.f64() * total;
                        let index = cumulative.partition_point(|&c| c <= x);
                        // x < total, so this only guards rounding and malformed weights.
                        index.min(values.len() - 1)
                    }
                };
                Sample::Json(&values[index])
            }
            GenState::Values(values) => {
                if values.is_empty() {
                    return Sample::Null;
                }
                Sample::Json(&values[(seq % values.len() as u64) as usize])
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON and time output
// ---------------------------------------------------------------------------------------------

/// Writes a sample with its spike and rounding; returns whether a spike was applied (only
/// numbers take spikes).
fn write_sample(
    body: &mut Vec<u8>,
    sample: Sample<'_>,
    spike: Option<f64>,
    round: Option<u32>,
) -> bool {
    match (sample, spike) {
        (Sample::Num(n), Some(s)) => {
            write_num(body, Num::Float(n.float() + s), round);
            true
        }
        (Sample::Num(n), None) => {
            write_num(body, n, round);
            false
        }
        (Sample::Json(Value::Number(n)), Some(s)) => {
            write_num(body, Num::Float(n.as_f64().unwrap_or(f64::NAN) + s), round);
            true
        }
        (Sample::Json(Value::Number(n)), None) if round.is_some() && n.is_f64() => {
            write_num(body, Num::Float(n.as_f64().unwrap_or(f64::NAN)), round);
            false
        }
        (Sample::Json(value), _) => {
            write_json(body, value);
            false
        }
        (Sample::Null, _) => {
            body.extend_from_slice(b"null");
            false
        }
    }
}

/// Exact powers of ten (all representable in f64), so rounding is the same on every platform.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Rounds to `places` decimals (half away from zero on the binary value). Beyond 22 places an
/// f64 has no digits left to drop, so the value is returned as is.
fn round_to(x: f64, places: u32) -> f64 {
    let Some(&scale) = POW10.get(places as usize) else {
        return x;
    };
    let scaled = x * scale;
    if scaled.is_finite() {
        scaled.round() / scale
    } else {
        x
    }
}

/// 2^53: above it an f64 is already an integer, and not every i64 is exact.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

fn write_num(body: &mut Vec<u8>, n: Num, round: Option<u32>) {
    match n {
        Num::Int(i) => {
            let _ = write!(body, "{i}");
        }
        Num::Float(x) if !x.is_finite() => body.extend_from_slice(b"null"),
        Num::Float(x) => match round {
            Some(0) if x.abs() < EXACT_INT => {
                let _ = write!(body, "{}", x.round() as i64);
            }
            Some(places) => write_float(body, round_to(x, places)),
            None => write_float(body, x),
        },
    }
}

/// Shortest round-trip form (ryu via serde_json), `null` for non-finite values.
fn write_float(body: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        let _ = serde_json::to_writer(&mut *body, &x);
    } else {
        body.extend_from_slice(b"null");
    }
}

fn write_json(body: &mut Vec<u8>, value: &Value) {
    // Writing a Value into a Vec cannot fail (keys are strings, the sink is infallible).
    let _ = serde_json::to_writer(&mut *body, value);
}

fn write_int(body: &mut Vec<u8>, n: u64) {
    body.extend_from_slice(itoa_u64(n, &mut [0; 20]).as_bytes());
}

fn itoa_u64(mut n: u64, buffer: &mut [u8; 20]) -> &str {
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buffer[at..]).unwrap_or("0")
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

fn json_key(name: &str) -> String {
    let mut key = json_string(name);
    key.push(':');
    key
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, always with milliseconds, so timestamps sort as strings and
/// parse with any RFC 3339 reader. Out-of-range values are clamped to years 0000–9999.
fn write_timestamp(body: &mut Vec<u8>, unix_ms: i64) {
    let ms = unix_ms.clamp(MIN_TS_MS, MAX_TS_MS);
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let fields: [(i64, usize, u8); 7] = [
        (year, 4, b'-'),
        (month, 2, b'-'),
        (day, 2, b'T'),
        (in_day / 3_600_000, 2, b':'),
        (in_day / 60_000 % 60, 2, b':'),
        (in_day / 1000 % 60, 2, b'.'),
        (in_day % 1000, 3, b'Z'),
    ];
    for (value, width, separator) in fields {
        let mut divisor = 10_i64.pow(width as u32 - 1);
        while divisor > 0 {
            body.push(b'0' + (value / divisor % 10) as u8);
            divisor /= 10;
        }
        body.push(separator);
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`): integer-only and exact.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(MAX_TS_MS))
}

/// Seconds to a Duration: negative and NaN become 0, overflow saturates.
fn seconds(secs: f64) -> Duration {
    if secs > 0.0 {
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic randomness and math
// ---------------------------------------------------------------------------------------------

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function applied to `x + γ`: one step of a splitmix64 generator whose
/// state was `x`. Used to derive well-mixed, independent seeds from small integers.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seed of one of a device's independent streams (0 = schedule, then two per field).
fn stream_seed(device_key: u64, stream: u64) -> u64 {
    splitmix64(device_key ^ splitmix64(stream ^ 0x5354_5245_414D_0000))
}

/// xoshiro256** (Blackman & Vigna), seeded through splitmix64 as its authors recommend, plus
/// the spare normal of Box–Muller.
#[derive(Debug, Clone)]
struct Rng {
    s: [u64; 4],
    spare_normal: Option<f64>,
}

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut state = seed;
        let mut s = [0; 4];
        for word in &mut s {
            *word = splitmix64(state);
            state = state.wrapping_add(GOLDEN_GAMMA);
        }
        if s == [0; 4] {
            // The one state xoshiro cannot leave; unreachable in practice.
            s[0] = GOLDEN_GAMMA;
        }
        Rng {
            s,
            spare_normal: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn bit(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }

    /// Uniform in [0, n) by multiply-shift (bias below 2^-64 × n, irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Standard normal by Box–Muller, keeping the second value for the next call.
    fn normal(&mut self) -> f64 {
        if let Some(spare) = self.spare_normal.take() {
            return spare;
        }
        // 1 - [0, 1) is in (0, 1], so the logarithm is finite.
        let u = 1.0 - self.f64();
        let radius = (-2.0 * ln(u)).sqrt();
        let (sin, cos) = sin_cos_turns(self.f64());
        self.spare_normal = Some(radius * sin);
        radius * cos
    }
}

/// Natural logarithm (fdlibm `__ieee754_log`), so results do not depend on the platform's libm.
// fdlibm's published constants, verbatim, so they can be checked against the source.
#[allow(clippy::excessive_precision)]
fn ln(x: f64) -> f64 {
    const LN2_HI: f64 = 6.931_471_803_691_238_164_90e-01;
    const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;
    const LG1: f64 = 6.666_666_666_666_735_130e-01;
    const LG2: f64 = 3.999_999_999_940_941_908e-01;
    const LG3: f64 = 2.857_142_874_366_239_149e-01;
    const LG4: f64 = 2.222_219_843_214_978_396e-01;
    const LG5: f64 = 1.818_357_216_161_805_012e-01;
    const LG6: f64 = 1.531_383_769_920_937_332e-01;
    const LG7: f64 = 1.479_819_860_511_658_591e-01;

    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    if x.is_infinite() {
        return x;
    }
    let mut x = x;
    let mut k: i32 = 0;
    let mut bits = x.to_bits();
    let mut hx = (bits >> 32) as u32;
    if hx < 0x0010_0000 {
        // Subnormal: scale into the normal range.
        k -= 54;
        x *= 18_014_398_509_481_984.0; // 2^54
        bits = x.to_bits();
        hx = (bits >> 32) as u32;
    } else if bits == 1.0_f64.to_bits() {
        return 0.0;
    }
    // Reduce x into [sqrt(2)/2, sqrt(2)].
    hx = hx.wrapping_add(0x3ff0_0000 - 0x3fe6_a09e);
    k += (hx >> 20) as i32 - 0x3ff;
    hx = (hx & 0x000f_ffff) + 0x3fe6_a09e;
    bits = (u64::from(hx) << 32) | (bits & 0xffff_ffff);
    x = f64::from_bits(bits);

    let f = x - 1.0;
    let hfsq = 0.5 * f * f;
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let t1 = w * (LG2 + w * (LG4 + w * LG6));
    let t2 = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7)));
    let r = t2 + t1;
    let dk = f64::from(k);
    s * (hfsq + r) + dk * LN2_LO - hfsq + f + dk * LN2_HI
}

/// `(sin, cos)` of `turns` full turns (2π·turns radians). Working in turns makes the range
/// reduction exact (quarter turns are a power-of-two scaling), leaving only fdlibm's kernels.
fn sin_cos_turns(turns: f64) -> (f64, f64) {
    let quarters = turns * 4.0;
    let quadrant = quarters.round();
    // Exact: both are close and quadrant is an integer.
    let r = quarters - quadrant;
    let angle = r * std::f64::consts::FRAC_PI_2; // in [-π/4, π/4]
    let (sin, cos) = (kernel_sin(angle), kernel_cos(angle));
    match (quadrant as i64).rem_euclid(4) {
        0 => (sin, cos),
        1 => (cos, -sin),
        2 => (-sin, -cos),
        _ => (-cos, sin),
    }
}

/// fdlibm `__kernel_sin` on [-π/4, π/4] (tail term 0).
// fdlibm's published constants, verbatim, so they can be checked against the source.
#[allow(clippy::excessive_precision)]
fn kernel_sin(x: f64) -> f64 {
    const S1: f64 = -1.666_666_666_666_663_243_48e-01;
    const S2: f64 = 8.333_333_333_322_489_461_24e-03;
    const S3: f64 = -1.984_126_982_985_794_931_34e-04;
    const S4: f64 = 2.755_731_370_707_006_767_89e-06;
    const S5: f64 = -2.505_076_025_340_686_341_95e-08;
    const S6: f64 = 1.589_690_995_211_550_102_21e-10;
    let z = x * x;
    let v = z * x;
    let r = S2 + z * (S3 + z * (S4 + z * (S5 + z * S6)));
    x + v * (S1 + z * r)
}

/// fdlibm `__kernel_cos` on [-π/4, π/4] (tail term 0).
// fdlibm's published constants, verbatim, so they can be checked against the source.
#[allow(clippy::excessive_precision)]
fn kernel_cos(x: f64) -> f64 {
    const C1: f64 = 4.166_666_666_666_660_190_37e-02;
    const C2: f64 = -1.388_888_888_887_410_957_49e-03;
    const C3: f64 = 2.480_158_728_947_672_941_78e-05;
    const C4: f64 = -2.755_731_435_139_066_330_35e-07;
    const C5: f64 = 2.087_572_321_298_174_827_90e-09;
    const C6: f64 = -1.135_964_755_778_819_482_65e-11;
    let z = x * x;
    let w = z * z;
    let r = z * (C1 + z * (C2 + z * C3)) + w * w * (C4 + z * (C5 + z * C6));
    let hz = 0.5 * z;
    let w = 1.0 - hz;
    w + (((1.0 - w) - hz) + z * r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const START_MS: i64 = 1_764_400_000_000;

    fn plan(json: &str) -> TelemetryPlan {
        TelemetryPlan::from_json(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    /// A plan with one field using `generator`, `count` messages at 1 s.
    fn one_field(generator: &str, count: u64) -> TelemetryPlan {
        plan(&format!(
            r#"{{"interval":1,"count":{count},"seed":7,"start_unix_ms":{START_MS},
                "fields":[{{"name":"x","generator":{generator}}}]}}"#
        ))
    }

    fn bodies(plan: &TelemetryPlan, device: u64) -> Vec<Value> {
        plan.device_stream(device, &format!("dev-{device}"), Vec::new())
            .map(|m| serde_json::from_slice(&m.body).expect("body is JSON"))
            .collect()
    }

    fn values(plan: &TelemetryPlan, device: u64) -> Vec<Value> {
        bodies(plan, device)
            .into_iter()
            .map(|b| b["x"].clone())
            .collect()
    }

    fn floats(plan: &TelemetryPlan) -> Vec<f64> {
        values(plan, 0)
            .iter()
            .map(|v| v.as_f64().expect("number"))
            .collect()
    }

    fn mean_std(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    fn config_error(json: &str) -> String {
        match TelemetryPlan::from_json(json) {
            Err(Error::Config(message)) => message,
            Err(other) => panic!("{json}: not a Config error: {other:?}"),
            Ok(_) => panic!("{json}: accepted"),
        }
    }

    #[test]
    fn splitmix_and_xoshiro_match_the_reference_algorithms() {
        // splitmix64 seeded with 0 (reference outputs of Vigna's splitmix64.c).
        let mut state = 0_u64;
        let mut outputs = Vec::new();
        for _ in 0..3 {
            outputs.push(splitmix64(state));
            state = state.wrapping_add(GOLDEN_GAMMA);
        }
        assert_eq!(
            outputs,
            [0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f]
        );
        // xoshiro256** seeded by splitmix64(12345), checked against an independent
        // implementation of the reference C code.
        let mut rng = Rng::new(12345);
        let outputs: Vec<u64> = (0..4).map(|_| rng.next_u64()).collect();
        assert_eq!(
            outputs,
            [
                0xbe6a36374160d49b,
                0x214aaa0637a688c6,
                0xf69d16de9954d388,
                0x0c60048c4e96e033
            ]
        );
    }

    #[test]
    fn portable_math_matches_std() {
        for i in 0..=4000 {
            let turns = i as f64 / 1000.0 - 2.0; // [-2, 2] turns
            let (sin, cos) = sin_cos_turns(turns);
            let angle = turns * std::f64::consts::TAU;
            assert!((sin - angle.sin()).abs() < 1e-14, "sin at {turns}");
            assert!((cos - angle.cos()).abs() < 1e-14, "cos at {turns}");
        }
        for i in 1..=4000 {
            let x = i as f64 / 997.0;
            assert!(
                (ln(x) - x.ln()).abs() <= 4e-16 * x.ln().abs().max(1.0),
                "ln {x}"
            );
        }
        for x in [1e-300, 5e-324, 2.0_f64.powi(-53), 1.0, 1e300, f64::MAX] {
            assert!(
                (ln(x) - x.ln()).abs() <= 1e-15 * x.ln().abs().max(1.0),
                "ln {x}"
            );
        }
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(sin_cos_turns(0.0), (0.0, 1.0));
    }

    #[test]
    fn same_seed_and_device_reproduce_the_stream() {
        let json = format!(
            r#"{{"interval":0.5,"jitter":0.3,"count":50,"seed":42,"start_unix_ms":{START_MS},
                "dropout_rate":0.2,"duplicate_rate":0.2,
                "fields":[
                  {{"name":"t","generator":{{"kind":"sum","parts":[
                      {{"kind":"sine","mean":20,"amplitude":5,"period":30}},
                      {{"kind":"gaussian","mean":0,"std":0.5}},
                      {{"kind":"random_walk","start":0,"step":0.1}}]}},
                    "anomaly_rate":0.1,"anomaly_scale":10,"round":2}},
                  {{"name":"mode","generator":{{"kind":"choice","values":["a","b",3]}}}}]}}"#
        );
        let a: Vec<PlannedMessage> = plan(&json).device_stream(3, "d", Vec::new()).collect();
        let b: Vec<PlannedMessage> = plan(&json).device_stream(3, "d", Vec::new()).collect();
        assert_eq!(a.len(), 50);
        assert_eq!(a, b);
        let other: Vec<PlannedMessage> = plan(&json).device_stream(4, "d", Vec::new()).collect();
        assert_ne!(
            a.iter().map(|m| &m.body).collect::<Vec<_>>(),
            other.iter().map(|m| &m.body).collect::<Vec<_>>()
        );
        assert_ne!(
            plan(&json).device_stream(3, "d", Vec::new()).phase(),
            plan(&json).device_stream(4, "d", Vec::new()).phase()
        );
        let reseeded = json.replace("\"seed\":42", "\"seed\":43");
        let c: Vec<PlannedMessage> = plan(&reseeded).device_stream(3, "d", Vec::new()).collect();
        assert_ne!(a[1].body, c[1].body);
    }

    #[test]
    fn stream_is_pinned_across_versions() {
        // Changing this output breaks reproducibility of users' data sets: only on purpose.
        let p = plan(&format!(
            r#"{{"interval":1,"jitter":0.5,"count":3,"seed":42,"start_unix_ms":{START_MS},
                "fields":[{{"name":"g","generator":{{"kind":"gaussian","mean":10,"std":2}}}},
                          {{"name":"s","generator":{{"kind":"sine","mean":0,"amplitude":1,"period":60}},"round":4}}]}}"#
        ));
        let messages: Vec<PlannedMessage> = p.device_stream(0, "dev-0", Vec::new()).collect();
        assert_eq!(
            String::from_utf8(messages[0].body.clone()).expect("utf-8"),
            r#"{"deviceId":"dev-0","seq":0,"ts":"2025-11-29T07:06:40.000Z","g":10.68529549441127,"s":-0.9955}"#
        );
        let got: Vec<(String, u128)> = messages
            .iter()
            .map(|m| {
                let body: Value = serde_json::from_slice(&m.body).expect("JSON");
                (format!("{} {}", body["g"], body["s"]), m.send_at.as_nanos())
            })
            .collect();
        let pinned: Vec<(String, u128)> = PINNED.iter().map(|(v, t)| (v.to_string(), *t)).collect();
        assert_eq!(got, pinned);
    }

    /// Checked against an independent Python implementation (equal up to its libm's last
    /// bits): gaussian value and rounded sine, and send offset in nanoseconds.
    const PINNED: [(&str, u128); 3] = [
        ("10.68529549441127 -0.9955", 452_680_922),
        ("13.839865095097505 -0.9999", 1_481_130_105),
        ("11.1992825847964 -0.9934", 2_849_901_134),
    ];

    #[test]
    fn uniform_stays_in_bounds_with_the_right_mean() {
        let xs = floats(&one_field(
            r#"{"kind":"uniform","low":10,"high":20}"#,
            10_000,
        ));
        assert!(xs.iter().all(|x| (10.0..20.0).contains(x)));
        let (mean, std) = mean_std(&xs);
        assert!((mean - 15.0).abs() < 0.15, "mean {mean}");
        // Uniform on a width of 10: std = 10/sqrt(12).
        assert!((std - 10.0 / 12f64.sqrt()).abs() < 0.1, "std {std}");
    }

    #[test]
    fn gaussian_has_the_right_mean_and_std() {
        let xs = floats(&one_field(
            r#"{"kind":"gaussian","mean":5,"std":2}"#,
            10_000,
        ));
        let (mean, std) = mean_std(&xs);
        assert!((mean - 5.0).abs() < 0.08, "mean {mean}");
        assert!((std - 2.0).abs() < 0.08, "std {std}");
        // Tails exist but are rare: about 4.6% beyond 2 sigma.
        let beyond = xs.iter().filter(|x| (*x - 5.0).abs() > 4.0).count();
        assert!((300..650).contains(&beyond), "{beyond} beyond 2 sigma");
    }

    #[test]
    fn random_walk_starts_at_start_and_stays_in_bounds() {
        let xs = floats(&one_field(
            r#"{"kind":"random_walk","start":50,"step":5,"low":40,"high":60}"#,
            2000,
        ));
        assert_eq!(xs[0], 50.0);
        assert!(xs.iter().all(|x| (40.0..=60.0).contains(x)));
        // It moves, and with step 5 in a width of 20 it reaches both walls.
        assert!(xs.contains(&40.0) && xs.contains(&60.0));
        assert!(xs.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn sine_stays_within_amplitude_and_repeats_each_period() {
        let p = plan(&format!(
            r#"{{"interval":1,"time_scale":2,"count":100,"start_unix_ms":{START_MS},
                "fields":[{{"name":"x","generator":
                  {{"kind":"sine","mean":10,"amplitude":3,"period":20,"phase":1.5}}}}]}}"#
        ));
        let xs = floats(&p);
        assert!(xs.iter().all(|x| (7.0..=13.0).contains(x)));
        // Period 20 simulated s = 10 messages at 2 simulated s each.
        for k in 0..90 {
            assert!((xs[k] - xs[k + 10]).abs() < 1e-9, "k={k}");
        }
        let expected = 10.0 + 3.0 * (std::f64::consts::TAU * (2.0 * 3.0 + 1.5) / 20.0).sin();
        assert!((xs[3] - expected).abs() < 1e-12);
        assert!(xs.iter().any(|x| *x > 12.5) && xs.iter().any(|x| *x < 7.5));
        // Without a phase every device gets its own.
        let random = one_field(r#"{"kind":"sine","mean":0,"amplitude":1,"period":60}"#, 1);
        assert_ne!(values(&random, 0), values(&random, 1));
    }

    #[test]
    fn steps_cycle_and_keep_integers() {
        let p = plan(&format!(
            r#"{{"interval":0.1,"count":14,"start_unix_ms":{START_MS},
                "fields":[{{"name":"x","generator":{{"kind":"steps","values":[1,2,3.5],"every":0.3}}}}]}}"#
        ));
        let body: Vec<String> = values(&p, 0).iter().map(|v| v.to_string()).collect();
        assert_eq!(
            body,
            [
                "1", "1", "1", "2", "2", "2", "3.5", "3.5", "3.5", "1", "1", "1", "2", "2"
            ]
        );
    }

    #[test]
    fn step_change_jumps_by_size_at_the_given_rate() {
        let never = values(
            &one_field(r#"{"kind":"step_change","start":5,"size":2,"rate":0}"#, 50),
            0,
        );
        assert!(never.iter().all(|v| v == &Value::from(5)));
        let always = values(
            &one_field(r#"{"kind":"step_change","start":5,"size":2,"rate":1}"#, 200),
            0,
        );
        assert_eq!(always[0], Value::from(5));
        for w in always.windows(2) {
            let (a, b) = (w[0].as_i64().expect("int"), w[1].as_i64().expect("int"));
            assert_eq!((a - b).abs(), 2);
        }
        let some = floats(&one_field(
            r#"{"kind":"step_change","start":0,"size":1.5,"rate":0.1}"#,
            10_000,
        ));
        let jumps = some.windows(2).filter(|w| w[0] != w[1]).count();
        assert!((850..1150).contains(&jumps), "{jumps} jumps");
    }

    #[test]
    fn counters_constants_choices_and_values() {
        let ints = values(&one_field(r#"{"kind":"counter","start":5,"step":2}"#, 3), 0);
        assert_eq!(ints, [Value::from(5), Value::from(7), Value::from(9)]);
        let halves = values(&one_field(r#"{"kind":"counter","step":0.5}"#, 3), 0);
        assert_eq!(
            halves,
            [Value::from(0.0), Value::from(0.5), Value::from(1.0)]
        );
        let object = values(
            &one_field(r#"{"kind":"constant","value":{"a":[1,"x"],"b":null}}"#, 2),
            0,
        );
        assert_eq!(object[1], serde_json::json!({"a":[1,"x"],"b":null}));
        let integer = bodies(&one_field(r#"{"kind":"constant","value":12}"#, 1), 0);
        assert_eq!(integer[0]["x"], Value::from(12));
        let cycled = values(
            &one_field(r#"{"kind":"values","values":["a",2,true]}"#, 7),
            0,
        );
        assert_eq!(
            cycled,
            serde_json::json!(["a", 2, true, "a", 2, true, "a"])
                .as_array()
                .unwrap()
                .clone()
        );

        let picks = values(
            &one_field(
                r#"{"kind":"choice","values":["a","never","b"],"weights":[1,0,3]}"#,
                10_000,
            ),
            0,
        );
        let a = picks.iter().filter(|v| *v == "a").count();
        let b = picks.iter().filter(|v| *v == "b").count();
        assert_eq!(a + b, 10_000, "zero weight picked");
        assert!((2300..2700).contains(&a), "{a} a's");
        let uniform = values(
            &one_field(r#"{"kind":"choice","values":[1,2,3,4]}"#, 8000),
            0,
        );
        for v in 1..=4 {
            let n = uniform.iter().filter(|x| x.as_i64() == Some(v)).count();
            assert!((1800..2200).contains(&n), "{v}: {n}");
        }
    }

    #[test]
    fn sum_adds_parts_and_keeps_integers_when_all_are() {
        let ints = values(
            &one_field(
                r#"{"kind":"sum","parts":[{"kind":"counter","start":10},{"kind":"constant","value":5}]}"#,
                3,
            ),
            0,
        );
        assert_eq!(ints, [Value::from(15), Value::from(16), Value::from(17)]);
        let mixed = floats(&one_field(
            r#"{"kind":"sum","parts":[{"kind":"counter"},{"kind":"uniform","low":0,"high":0.5}]}"#,
            100,
        ));
        for (k, x) in mixed.iter().enumerate() {
            assert!((k as f64..k as f64 + 0.5).contains(x), "{k}: {x}");
        }
    }

    #[test]
    fn dropout_duplicate_and_anomaly_rates_match() {
        let p = plan(&format!(
            r#"{{"interval":1,"count":10000,"start_unix_ms":{START_MS},
                "dropout_rate":0.1,"duplicate_rate":0.2,
                "fields":[{{"name":"x","generator":{{"kind":"random_walk","start":10,"step":0}},
                           "anomaly_rate":0.05,"anomaly_scale":100}}]}}"#
        ));
        let messages: Vec<PlannedMessage> = p.device_stream(0, "d", Vec::new()).collect();
        let dropped = messages.iter().filter(|m| m.copies == 0).count();
        let duplicated = messages.iter().filter(|m| m.copies == 2).count();
        let anomalies = messages.iter().filter(|m| m.anomaly).count();
        assert!((900..1100).contains(&dropped), "{dropped} dropped");
        // Duplicates are decided among the messages that are not dropped: 0.9 × 0.2.
        assert!(
            (1620..1980).contains(&duplicated),
            "{duplicated} duplicated"
        );
        assert!((420..580).contains(&anomalies), "{anomalies} anomalies");
        // Spikes are ±scale on the output only: the walk itself never moves.
        for m in &messages {
            let x = serde_json::from_slice::<Value>(&m.body).unwrap()["x"]
                .as_f64()
                .unwrap();
            if m.anomaly {
                assert!(x == 110.0 || x == -90.0, "{x}");
            } else {
                assert_eq!(x, 10.0);
            }
        }
        assert!(
            messages
                .iter()
                .any(|m| m.anomaly && m.body.windows(5).any(|w| w == b"-90.0"))
        );
    }

    #[test]
    fn faults_do_not_change_the_signal() {
        let base = format!(
            r#"{{"interval":1,"count":300,"seed":9,"start_unix_ms":{START_MS},
                "fields":[{{"name":"x","generator":{{"kind":"gaussian","mean":0,"std":1}}}},
                          {{"name":"y","generator":{{"kind":"random_walk","start":0,"step":1}}}}]}}"#
        );
        let faulty = base.replace(
            "\"start_unix_ms\"",
            "\"dropout_rate\":0.3,\"duplicate_rate\":0.3,\"jitter\":0.5,\"start_unix_ms\"",
        );
        assert_eq!(bodies(&plan(&base), 2), bodies(&plan(&faulty), 2));
        // Adding a field leaves the existing ones alone.
        let more = base.replace(
            "]}",
            r#",{"name":"z","generator":{"kind":"uniform","low":0,"high":1}}]}"#,
        );
        let (a, b) = (bodies(&plan(&base), 2), bodies(&plan(&more), 2));
        for (a, b) in a.iter().zip(&b) {
            assert_eq!((&a["x"], &a["y"]), (&b["x"], &b["y"]));
        }
    }

    #[test]
    fn messages_per_device_from_count_duration_or_both() {
        let count = |json: &str| plan(json).messages_per_device();
        assert_eq!(count(r#"{"interval":1,"count":7}"#), 7);
        assert_eq!(count(r#"{"interval":1,"duration":60}"#), 60);
        assert_eq!(count(r#"{"interval":0.1,"duration":0.3}"#), 3);
        assert_eq!(count(r#"{"interval":2,"duration":5}"#), 2);
        assert_eq!(count(r#"{"interval":10,"duration":0.5}"#), 1);
        assert_eq!(count(r#"{"interval":1,"duration":0}"#), 0);
        assert_eq!(count(r#"{"interval":1,"duration":60,"count":10}"#), 10);
        assert_eq!(count(r#"{"interval":1,"duration":6,"count":10}"#), 6);
        assert_eq!(count(r#"{"interval":0,"duration":6,"count":10}"#), 10);
        assert_eq!(count(r#"{"interval":0,"count":4}"#), 4);
        let p = plan(r#"{"interval":0.25,"duration":2,"start_unix_ms":0}"#);
        let mut stream = p.device_stream(0, "d", Vec::new());
        assert_eq!(stream.size_hint(), (8, Some(8)));
        assert_eq!(stream.by_ref().count(), 8);
        assert!(stream.next().is_none());
    }

    #[test]
    fn schedule_has_phase_interval_and_bounded_jitter() {
        let p = plan(r#"{"interval":2,"jitter":0.4,"count":500,"start_unix_ms":0}"#);
        assert_eq!(p.interval(), Duration::from_secs(2));
        let mut phases = Vec::new();
        for device in 0..50 {
            let stream = p.device_stream(device, "d", Vec::new());
            let phase = stream.phase().as_secs_f64();
            assert!((0.0..2.0).contains(&phase), "phase {phase}");
            phases.push(phase);
            let mut off_nominal = 0;
            for m in stream {
                let nominal = phase + m.seq as f64 * 2.0;
                let delta = m.send_at.as_secs_f64() - nominal;
                // ±jitter/2 × interval = ±0.4 s (clamped at 0 before the start).
                assert!(delta.abs() <= 0.4 + 1e-9, "seq {}: {delta}", m.seq);
                off_nominal += usize::from(delta.abs() > 0.1);
            }
            assert!(off_nominal > 200, "jitter too narrow: {off_nominal}");
        }
        // Devices are spread over the interval, not in lockstep.
        let (mean, _) = mean_std(&phases);
        assert!((0.6..1.4).contains(&mean), "mean phase {mean}");

        let fast = plan(r#"{"interval":0,"jitter":1,"count":3,"start_unix_ms":0}"#);
        let stream = fast.device_stream(1, "d", Vec::new());
        assert_eq!(stream.phase(), Duration::ZERO);
        assert!(stream.map(|m| m.send_at).all(|t| t == Duration::ZERO));
    }

    #[test]
    fn body_has_keys_in_order_and_timestamps_advance() {
        let p = plan(
            r#"{"interval":1.5,"time_scale":60,"count":4,"start_unix_ms":1764400000123,
                "fields":[{"name":"temperature","generator":{"kind":"counter"}},
                          {"name":"state","generator":{"kind":"constant","value":"on"}}]}"#,
        );
        let custom = vec![
            (
                "label".to_string(),
                vec![Value::from("a"), Value::from("b")],
            ),
            ("empty".to_string(), Vec::new()),
        ];
        let messages: Vec<PlannedMessage> = p.device_stream(0, "dev \"7\"", custom).collect();
        let text = String::from_utf8(messages[1].body.clone()).unwrap();
        assert_eq!(
            text,
            r#"{"deviceId":"dev \"7\"","seq":1,"ts":"2025-11-29T07:08:10.123Z","temperature":1,"state":"on","label":"b"}"#
        );
        assert_eq!(messages[1].message_id, "dev \"7\"-1");
        let stamps: Vec<String> = messages
            .iter()
            .map(|m| {
                let body: Value = serde_json::from_slice(&m.body).unwrap();
                assert_eq!(body["seq"], Value::from(m.seq));
                assert_eq!(body["label"], if m.seq % 2 == 0 { "a" } else { "b" });
                body["ts"].as_str().unwrap().to_string()
            })
            .collect();
        // 1.5 s × 60 = 90 simulated seconds per message.
        assert_eq!(
            stamps,
            [
                "2025-11-29T07:06:40.123Z",
                "2025-11-29T07:08:10.123Z",
                "2025-11-29T07:09:40.123Z",
                "2025-11-29T07:11:10.123Z"
            ]
        );
    }

    #[test]
    fn timestamps_agree_with_the_time_crate() {
        let mut ms = MIN_TS_MS;
        let mut checked = 0;
        while ms <= MAX_TS_MS {
            let mut body = Vec::new();
            write_timestamp(&mut body, ms);
            let dt = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .unwrap();
            let expected = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                dt.year(),
                u8::from(dt.month()),
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second(),
                dt.millisecond()
            );
            assert_eq!(String::from_utf8(body).unwrap(), expected);
            checked += 1;
            ms += 3_157_432_123_457; // ~100 years plus odd days and milliseconds
        }
        assert!(checked > 90);
        for (ms, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (MAX_TS_MS, "9999-12-31T23:59:59.999Z"),
            (i64::MAX, "9999-12-31T23:59:59.999Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
        ] {
            let mut body = Vec::new();
            write_timestamp(&mut body, ms);
            assert_eq!(String::from_utf8(body).unwrap(), text);
        }
    }

    #[test]
    fn round_limits_decimals_and_zero_gives_integers() {
        let two = bodies(
            &plan(&format!(
                r#"{{"interval":1,"count":200,"start_unix_ms":{START_MS},"fields":[
                    {{"name":"x","generator":{{"kind":"uniform","low":-100,"high":100}},"round":2}},
                    {{"name":"y","generator":{{"kind":"gaussian","mean":50,"std":20}},"round":0}},
                    {{"name":"z","generator":{{"kind":"constant","value":1.23456}},"round":3}},
                    {{"name":"n","generator":{{"kind":"constant","value":1234567}},"round":1}}]}}"#
            )),
            0,
        );
        for body in &two {
            let x = body["x"].as_f64().unwrap();
            assert!(((x * 100.0).round() - x * 100.0).abs() < 1e-6, "{x}");
            let text = body["x"].to_string();
            let decimals = text.split('.').nth(1).map_or(0, str::len);
            assert!(decimals <= 2, "{text}");
            assert!(body["y"].is_i64(), "{}", body["y"]);
            assert_eq!(body["z"], Value::from(1.235));
            assert_eq!(body["n"], Value::from(1234567));
        }
        assert_eq!(round_to(2.675, 30), 2.675);
        assert_eq!(round_to(1e300, 10), 1e300);
    }

    #[test]
    fn validation_names_the_problem() {
        let field = |generator: &str| {
            config_error(&format!(
                r#"{{"interval":1,"count":1,"fields":[{{"name":"temp","generator":{generator}}}]}}"#
            ))
        };
        for (generator, expected) in [
            (r#"{"kind":"uniform","low":5,"high":1}"#, "uniform low"),
            (r#"{"kind":"gaussian","mean":0,"std":-1}"#, "gaussian std"),
            (
                r#"{"kind":"random_walk","start":0,"step":1,"low":2,"high":1}"#,
                "random_walk low",
            ),
            (
                r#"{"kind":"random_walk","start":9,"step":1,"low":0,"high":1}"#,
                "random_walk start",
            ),
            (
                r#"{"kind":"sine","mean":0,"amplitude":1,"period":0}"#,
                "sine period",
            ),
            (r#"{"kind":"steps","values":[],"every":1}"#, "steps values"),
            (r#"{"kind":"steps","values":[1],"every":-1}"#, "steps every"),
            (
                r#"{"kind":"step_change","start":0,"size":1,"rate":2}"#,
                "step_change rate",
            ),
            (r#"{"kind":"choice","values":[]}"#, "choice values"),
            (
                r#"{"kind":"choice","values":[1,2],"weights":[1]}"#,
                "weights",
            ),
            (
                r#"{"kind":"choice","values":[1,2],"weights":[0,0]}"#,
                "weights",
            ),
            (
                r#"{"kind":"choice","values":[1,2],"weights":[1,-1]}"#,
                "choice weight",
            ),
            (
                r#"{"kind":"values","values":[]}"#,
                "values must not be empty",
            ),
            (r#"{"kind":"sum","parts":[]}"#, "sum parts"),
            (
                r#"{"kind":"sum","parts":[{"kind":"constant","value":"x"}]}"#,
                "sum part 0",
            ),
            (
                r#"{"kind":"sum","parts":[{"kind":"counter"},{"kind":"gaussian","mean":0,"std":-2}]}"#,
                "sum part 1: gaussian std",
            ),
        ] {
            let message = field(generator);
            assert!(message.contains("\"temp\""), "{generator}: {message}");
            assert!(message.contains(expected), "{generator}: {message}");
        }

        for (json, expected) in [
            (r#"{"interval":-1,"count":1}"#, "interval"),
            (r#"{"interval":1}"#, "duration and/or count"),
            (
                r#"{"interval":0,"duration":5}"#,
                "duration needs interval > 0",
            ),
            (r#"{"interval":1,"count":1,"jitter":1.5}"#, "jitter"),
            (r#"{"interval":1,"count":1,"time_scale":0}"#, "time_scale"),
            (
                r#"{"interval":1,"count":1,"dropout_rate":-0.1}"#,
                "dropout_rate",
            ),
            (
                r#"{"interval":1,"count":1,"duplicate_rate":1.1}"#,
                "duplicate_rate",
            ),
            (
                r#"{"interval":1,"count":1,"start_unix_ms":999999999999999}"#,
                "start_unix_ms",
            ),
            (r#"{"interval":1,"count":1,"bogus":1}"#, "bogus"),
            (
                r#"{"interval":1,"count":1,"fields":[{"name":"x","generator":{"kind":"nope"}}]}"#,
                "nope",
            ),
            (
                r#"{"interval":1,"count":1,"fields":[{"name":"x","generator":{"kind":"counter","stpe":1}}]}"#,
                "stpe",
            ),
            (
                r#"{"interval":1,"count":1,"fields":[{"name":"ts","generator":{"kind":"counter"}}]}"#,
                "reserved",
            ),
            (
                r#"{"interval":1,"count":1,"fields":[{"name":"a","generator":{"kind":"counter"}},
                   {"name":"a","generator":{"kind":"counter"}}]}"#,
                "fields[1] \"a\": duplicate",
            ),
            (
                r#"{"interval":1,"count":1,"fields":[{"name":"a","generator":{"kind":"counter"},
                   "anomaly_rate":3}]}"#,
                "\"a\": anomaly_rate",
            ),
            (
                r#"{"interval":1,"count":1,"fields":[{"name":"a","generator":{"kind":"counter"},
                   "anomaly_scale":-3}]}"#,
                "\"a\": anomaly_scale",
            ),
        ] {
            let message = config_error(json);
            assert!(message.contains(expected), "{json}: {message}");
        }

        // Rust-built plans are checked too, including numbers JSON cannot carry.
        let mut p = plan(
            r#"{"interval":1,"count":1,"fields":[{"name":"u","generator":{"kind":"uniform","low":0,"high":1}}]}"#,
        );
        p.fields[0].generator = Generator::Uniform {
            low: f64::NAN,
            high: 1.0,
        };
        assert!(
            matches!(p.validate(), Err(Error::Config(m)) if m.contains("\"u\"") && m.contains("low"))
        );
        // Null means "default" where a default exists.
        let defaults =
            plan(r#"{"interval":null,"seed":null,"jitter":null,"count":2,"fields":null}"#);
        assert_eq!((defaults.interval, defaults.seed), (1.0, 0));
    }

    #[test]
    fn custom_names_are_checked_and_values_cycled() {
        let p = one_field(r#"{"kind":"counter"}"#, 5);
        assert!(p.check_custom_names(["a", "b"]).is_ok());
        for bad in [["x", "a"], ["a", "a"], ["seq", "a"], ["", "a"]] {
            assert!(p.check_custom_names(bad).is_err(), "{bad:?}");
        }
        let custom = vec![(
            "c".to_string(),
            vec![Value::from(1), Value::from("two"), Value::Null],
        )];
        let got: Vec<Value> = p
            .device_stream(0, "d", custom)
            .map(|m| serde_json::from_slice::<Value>(&m.body).unwrap()["c"].clone())
            .collect();
        assert_eq!(
            got,
            serde_json::json!([1, "two", null, 1, "two"])
                .as_array()
                .unwrap()
                .clone()
        );
    }

    #[test]
    fn stream_is_send_and_static_and_survives_the_plan() {
        fn assert_send<T: Send + 'static>(_: &T) {}
        let p = one_field(r#"{"kind":"values","values":[1,2]}"#, 2);
        let stream = p.device_stream(0, "d", Vec::new());
        drop(p);
        assert_send(&stream);
        assert_eq!(stream.count(), 2);
    }
}
