//! The per-device stream: the deterministic sequence of planned messages a device sends.

use super::*;

/// One device's planned messages. Owns its random streams and generator states, so it is
/// `Send + 'static` and costs one body allocation (plus the message id) per message.
///
/// Messages come from the [`Iterator`] implementation (`stream.next()`), which ends after
/// [`TelemetryPlan::messages_per_device`] messages.
#[derive(Debug, Clone)]
pub struct DeviceStream {
    pub(super) device_id: String,
    /// `{"deviceId":"<escaped id>","seq":`, built once.
    pub(super) head: String,
    pub(super) total: u64,
    pub(super) seq: u64,
    /// Real seconds between messages.
    pub(super) interval: f64,
    /// Simulated seconds between messages.
    pub(super) sim_step: f64,
    pub(super) start_ms: i64,
    /// Real seconds.
    pub(super) phase: f64,
    /// Real seconds: jitter * interval.
    pub(super) jitter_span: f64,
    pub(super) dropout_rate: f64,
    pub(super) duplicate_rate: f64,
    pub(super) schedule: Rng,
    pub(super) fields: Vec<FieldState>,
    pub(super) custom: Vec<CustomField>,
    /// Size of the previous body, so the next one is allocated once.
    pub(super) body_hint: usize,
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
pub(super) struct FieldState {
    /// `"<escaped name>":`.
    pub(super) key: String,
    pub(super) generator: GenState,
    pub(super) values: Rng,
    pub(super) anomalies: Rng,
    pub(super) anomaly_rate: f64,
    pub(super) anomaly_scale: f64,
    pub(super) round: Option<u32>,
}

#[derive(Debug, Clone)]
pub(super) struct CustomField {
    /// `"<escaped name>":`.
    pub(super) key: String,
    pub(super) values: Vec<Value>,
}

/// An exact integer where the inputs were integers, so counters and levels stay JSON integers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    pub(super) fn from_number(number: &Number) -> Num {
        match number.as_i64() {
            Some(i) => Num::Int(i),
            None => Num::Float(number.as_f64().unwrap_or(f64::NAN)),
        }
    }

    pub(super) fn float(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(x) => x,
        }
    }

    pub(super) fn add(self, other: Num) -> Num {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a
                .checked_add(b)
                .map_or(Num::Float(a as f64 + b as f64), Num::Int),
            _ => Num::Float(self.float() + other.float()),
        }
    }

    pub(super) fn neg(self) -> Num {
        match self {
            Num::Int(i) => i.checked_neg().map_or(Num::Float(-(i as f64)), Num::Int),
            Num::Float(x) => Num::Float(-x),
        }
    }

    pub(super) fn times(self, k: u64) -> Num {
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
pub(super) enum Sample<'a> {
    Num(Num),
    Json(&'a Value),
    Null,
}

/// A generator with its per-device state.
#[derive(Debug, Clone)]
pub(super) enum GenState {
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
    pub(super) fn new(generator: &Generator, rng: &mut Rng) -> GenState {
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
    pub(super) fn sample(&mut self, seq: u64, t: f64, rng: &mut Rng) -> Sample<'_> {
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
