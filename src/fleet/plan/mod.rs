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
//!
//! This file holds the plan as it arrives (serde); `validate` checks it and answers plan-level
//! questions, `stream` unfolds it per device, `body` writes the JSON, `rng` is the randomness
//! and math.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::{Number, Value};

use crate::error::{Error, Result};

/// Keys every body starts with; plan and custom fields may not reuse them, or the body would
/// carry duplicate keys whose meaning depends on the JSON parser.
pub(crate) const RESERVED_KEYS: [&str; 3] = ["deviceId", "seq", "ts"];

/// 0000-01-01T00:00:00.000Z: RFC 3339 has four-digit years only.
const MIN_TS_MS: i64 = -62_167_219_200_000;
/// 9999-12-31T23:59:59.999Z.
const MAX_TS_MS: i64 = 253_402_300_799_999;

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

mod body;
mod rng;
mod stream;
mod validate;

use body::*;
use rng::*;
pub(crate) use stream::DeviceStream;
use stream::*;

#[cfg(test)]
mod tests;
