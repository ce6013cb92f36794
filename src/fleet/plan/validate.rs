//! Validation of a plan and the plan-level queries (message counts, intervals).

use super::*;

pub(super) fn config(message: String) -> Error {
    Error::config(message)
}

pub(super) fn check_finite(value: f64, what: &str, at: &str) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(config(format!(
            "{at}: {what} must be a finite number, got {value}"
        )))
    }
}

pub(super) fn check_non_negative(value: f64, what: &str, at: &str) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(config(format!(
            "{at}: {what} must be a finite number >= 0, got {value}"
        )))
    }
}

pub(super) fn check_rate(value: f64, what: &str, at: &str) -> Result<()> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(config(format!(
            "{at}: {what} must be between 0 and 1, got {value}"
        )))
    }
}

pub(super) fn check_number(value: &Number, what: &str, at: &str) -> Result<()> {
    check_finite(value.as_f64().unwrap_or(f64::NAN), what, at)
}

impl TelemetryPlan {
    /// Parses and validates a plan, so a bad plan fails before any device connects.
    pub fn from_json(text: &str) -> Result<TelemetryPlan> {
        let plan: TelemetryPlan = serde_json::from_str(text)
            .map_err(|e| Error::config_caused("invalid telemetry plan", e))?;
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
