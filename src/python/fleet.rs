//! Bindings for a fleet run (`_native.FleetRun`): the run starts on its own runtime when the
//! object is made; Python polls the progress counters (for its progress bar) and waits in short
//! slices with the GIL released, so Ctrl-C and notebook interrupts stay responsive.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::task::JoinHandle;

use super::convert::py_to_json;
use crate::error::Error;
use crate::fleet::engine::{self, FleetCredentials, FleetProgress, FleetResult, FleetSettings};
use crate::limits::estimate::{self, HubDemand};
use crate::limits::tiers::DPS_RATES;
use crate::python::pki::PyDeviceCertificate;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyFleetRun>()?;
    m.add_function(wrap_pyfunction!(hub_tier_fits, m)?)?;
    m.add_function(wrap_pyfunction!(dps_onboarding_seconds, m)?)?;
    m.add(
        "DPS_REGISTRATIONS_PER_MINUTE",
        DPS_RATES.registrations_per_minute,
    )?;
    Ok(())
}

/// One tier's fit as Python receives it: `(tier, units, limited_by, metered_messages_per_day)`.
type FitRow = (&'static str, Option<u32>, String, f64);

/// The fewest units of every hub tier that carry a hub's demand (`limits::estimate::fits`),
/// in the tiers' order: `(tier, units or None, limited_by, metered_messages_per_day)`.
#[pyfunction]
#[pyo3(signature = (devices, d2c_per_second, mean_message_bytes, needs_standard, connect_within_seconds))]
fn hub_tier_fits(
    devices: u64,
    d2c_per_second: f64,
    mean_message_bytes: f64,
    needs_standard: bool,
    connect_within_seconds: f64,
) -> PyResult<Vec<FitRow>> {
    let demand = HubDemand {
        devices,
        d2c_per_second,
        mean_message_bytes,
        needs_standard,
        connect_within_seconds,
    };
    demand.check().map_err(Error::config)?;
    Ok(estimate::fits(&demand)
        .into_iter()
        .map(|f| {
            (
                f.tier.name(),
                f.units,
                f.limited_by,
                f.metered_messages_per_day,
            )
        })
        .collect())
}

/// Seconds one DPS takes at Azure's registration rate to register `devices`.
#[pyfunction]
fn dps_onboarding_seconds(devices: u64) -> f64 {
    estimate::dps_onboarding_seconds(devices)
}

/// One fleet run in progress (see `dpskit.Fleet`).
#[pyclass(module = "dpskit._native", name = "FleetRun")]
pub struct PyFleetRun {
    runtime: super::OwnedRuntime,
    progress: Arc<FleetProgress>,
    handle: Mutex<Option<JoinHandle<FleetResult>>>,
    result: Mutex<Option<FleetResult>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn millis(duration: Option<Duration>) -> Option<f64> {
    duration.map(|d| d.as_secs_f64() * 1000.0)
}

#[pymethods]
impl PyFleetRun {
    /// Starts the run: `settings` (a dict) as `FleetSettings`; one entry per device in
    /// `registration_ids` and `indexes`; credentials from `certificates` (same order) or derived
    /// from `group_key`; `custom` the per-device values of custom fields; `trust_pem` None
    /// trusts the system roots (Azure).
    #[new]
    #[pyo3(signature = (settings, trust_pem, registration_ids, indexes, *, certificates = None, group_key = None, custom = None, worker_threads = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        settings: &Bound<'_, PyAny>,
        trust_pem: Option<&str>,
        registration_ids: Vec<String>,
        indexes: Vec<u64>,
        certificates: Option<Vec<PyRef<'_, PyDeviceCertificate>>>,
        group_key: Option<&str>,
        custom: Option<&Bound<'_, PyAny>>,
        worker_threads: Option<usize>,
    ) -> PyResult<Self> {
        // The Python layer stamps the plan's simulated start (so it is known before the run).
        let settings = FleetSettings::from_value(py_to_json(settings)?)?;
        let trust = super::trust(trust_pem)?;
        let credentials = match (certificates, group_key) {
            (Some(certificates), None) => FleetCredentials::Certificates(
                certificates.iter().map(|c| c.credential_arc()).collect(),
            ),
            (None, Some(key)) => FleetCredentials::GroupKey(key.to_string()),
            _ => {
                return Err(Error::config(
                    "give either certificates or group_key for the fleet's devices",
                )
                .into());
            }
        };
        let custom =
            engine::custom_fields(custom.map(py_to_json).transpose()?, registration_ids.len())?;
        let devices =
            engine::fleet_devices(&settings, registration_ids, indexes, credentials, custom)?;
        let runtime = super::runtime("dpskit-fleet", worker_threads)?;
        let progress = Arc::new(FleetProgress::default());
        let handle = runtime.spawn(engine::run(settings, devices, trust, progress.clone()));
        Ok(PyFleetRun {
            runtime,
            progress,
            handle: Mutex::new(Some(handle)),
            result: Mutex::new(None),
        })
    }

    /// `(total, provisioned, connected, failed, finished, sent, acknowledged, retries)`.
    fn progress(&self) -> (u64, u64, u64, u64, u64, u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let p = &self.progress;
        (
            p.total.load(Relaxed),
            p.provisioned.load(Relaxed),
            p.connected.load(Relaxed),
            p.failed.load(Relaxed),
            p.finished.load(Relaxed),
            p.sent.load(Relaxed),
            p.acknowledged.load(Relaxed),
            p.retries.load(Relaxed),
        )
    }

    /// Waits up to `timeout` seconds for the run to end; True once it has.
    fn wait(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let mut handle = lock(&self.handle);
        let Some(running) = handle.as_mut() else {
            return Ok(true);
        };
        let slice = Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
        let joined = py.detach(|| {
            self.runtime
                .block_on(async { tokio::time::timeout(slice, running).await })
        });
        match joined {
            Err(_) => Ok(false),
            Ok(outcome) => {
                handle.take();
                let result =
                    outcome.map_err(|e| Error::transport_caused("the fleet run failed", e))?;
                *lock(&self.result) = Some(result);
                Ok(true)
            }
        }
    }

    /// Asks every device to stop; `wait` then returns soon with what was done.
    fn cancel(&self) {
        self.progress.cancel();
    }

    /// The run's outcome as columns: `{"devices": {...}, "messages": {...}, "elapsed": s,
    /// "connect_phase": s, "started_unix": s, "peak_waiting": n}`. Only after `wait` returned True.
    fn result<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let guard = lock(&self.result);
        let Some(result) = guard.as_ref() else {
            return Err(Error::config("the fleet is still running: wait() for it first").into());
        };
        let d = &result.devices;
        let devices = PyDict::new(py);
        devices.set_item("index", d.iter().map(|r| r.index).collect::<Vec<_>>())?;
        devices.set_item(
            "registration_id",
            d.iter()
                .map(|r| r.registration_id.as_str())
                .collect::<Vec<_>>(),
        )?;
        devices.set_item(
            "outcome",
            d.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>(),
        )?;
        devices.set_item(
            "error",
            d.iter().map(|r| r.error.as_deref()).collect::<Vec<_>>(),
        )?;
        devices.set_item(
            "error_code",
            d.iter().map(|r| r.error_code).collect::<Vec<_>>(),
        )?;
        devices.set_item(
            "assigned_hub",
            d.iter()
                .map(|r| r.assigned_hub.as_deref())
                .collect::<Vec<_>>(),
        )?;
        devices.set_item(
            "device_id",
            d.iter().map(|r| r.device_id.as_deref()).collect::<Vec<_>>(),
        )?;
        devices.set_item(
            "started_s",
            d.iter()
                .map(|r| r.started.as_secs_f64())
                .collect::<Vec<_>>(),
        )?;
        devices.set_item(
            "provision_ms",
            d.iter()
                .map(|r| millis(r.provision_latency))
                .collect::<Vec<_>>(),
        )?;
        devices.set_item(
            "connect_ms",
            d.iter()
                .map(|r| millis(r.connect_latency))
                .collect::<Vec<_>>(),
        )?;
        devices.set_item(
            "provision_retries",
            d.iter().map(|r| r.provision_retries).collect::<Vec<_>>(),
        )?;
        devices.set_item(
            "connect_retries",
            d.iter().map(|r| r.connect_retries).collect::<Vec<_>>(),
        )?;
        devices.set_item(
            "reconnects",
            d.iter().map(|r| r.reconnects).collect::<Vec<_>>(),
        )?;
        devices.set_item("sent", d.iter().map(|r| r.sent).collect::<Vec<_>>())?;
        devices.set_item(
            "acknowledged",
            d.iter().map(|r| r.acknowledged).collect::<Vec<_>>(),
        )?;
        // Not "duplicated": a column of that name would hide `DataFrame.duplicated`.
        devices.set_item("dropouts", d.iter().map(|r| r.dropouts).collect::<Vec<_>>())?;
        devices.set_item(
            "duplicates",
            d.iter().map(|r| r.duplicates).collect::<Vec<_>>(),
        )?;
        devices.set_item(
            "bytes_sent",
            d.iter().map(|r| r.bytes_sent).collect::<Vec<_>>(),
        )?;
        let span = |pick: fn((Duration, Duration)) -> Duration| {
            d.iter()
                .map(|r| r.send_span.map(|s| pick(s).as_secs_f64()))
                .collect::<Vec<_>>()
        };
        devices.set_item("first_sent_s", span(|s| s.0))?;
        devices.set_item("last_sent_s", span(|s| s.1))?;
        devices.set_item(
            "certificate_not_after",
            d.iter()
                .map(|r| r.certificate_not_after)
                .collect::<Vec<_>>(),
        )?;
        devices.set_item("renewed", d.iter().map(|r| r.renewed).collect::<Vec<_>>())?;
        devices.set_item(
            "renewal_error",
            d.iter()
                .map(|r| r.renewal_error.as_deref())
                .collect::<Vec<_>>(),
        )?;
        devices.set_item(
            "renewal_error_code",
            d.iter().map(|r| r.renewal_error_code).collect::<Vec<_>>(),
        )?;
        let m = &result.messages;
        let messages = PyDict::new(py);
        messages.set_item("device", &m.device)?;
        messages.set_item("seq", &m.seq)?;
        messages.set_item("sent_at_s", &m.sent_at)?;
        messages.set_item("latency_ms", &m.latency_ms)?;
        messages.set_item("anomaly", &m.anomaly)?;
        messages.set_item("duplicate", &m.duplicate)?;
        messages.set_item("bytes", &m.bytes)?;
        let out = PyDict::new(py);
        out.set_item("devices", devices)?;
        out.set_item("messages", messages)?;
        out.set_item("elapsed", result.elapsed.as_secs_f64())?;
        out.set_item("connect_phase", result.connect_phase.as_secs_f64())?;
        out.set_item("started_unix", result.started_unix)?;
        out.set_item("peak_waiting", result.peak_waiting)?;
        Ok(out)
    }
}

impl Drop for PyFleetRun {
    fn drop(&mut self) {
        // A run abandoned by Python stops instead of holding thousands of connections.
        self.progress.cancel();
        if let Some(handle) = lock(&self.handle).take() {
            handle.abort();
        }
    }
}
