//! Bindings for many device connections held open at once (`_native.HubConnections`): the
//! engine under fleets and the hub benchmark. Work runs on the object's own runtime with the
//! GIL released; reports come back as dicts.

use std::sync::Mutex;

use pyo3::prelude::*;

use super::convert::json_to_py;
use crate::error::Error;
use crate::fleet::{ConnectReport, HubConnections, SendReport};
use crate::hub::HubConnectOptions;
use crate::provisioning::{DeviceAuth, Trust};
use crate::python::pki::PyDeviceCertificate;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyHubConnections>()?;
    Ok(())
}

/// X.509 devices connected to an IoT Hub (or any MQTT broker with TLS client certificates),
/// one task per device on a private runtime.
#[pyclass(module = "dpskit._native", name = "HubConnections")]
pub struct PyHubConnections {
    trust: Trust,
    runtime: super::OwnedRuntime,
    connections: Mutex<HubConnections>,
}

fn failures_json(failures: &[(String, Error)]) -> serde_json::Value {
    let first: Vec<serde_json::Value> = failures
        .iter()
        .take(10)
        .map(|(id, e)| serde_json::json!({"deviceId": id, "error": e.to_string()}))
        .collect();
    serde_json::json!({"count": failures.len(), "first": first})
}

fn connect_json(report: &ConnectReport) -> serde_json::Value {
    let millis: Vec<f64> = report
        .latencies
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    serde_json::json!({
        "connected": report.connected,
        "failures": failures_json(&report.failures),
        "seconds": report.elapsed.as_secs_f64(),
        "latencyMs": millis,
    })
}

fn send_json(report: &SendReport) -> serde_json::Value {
    serde_json::json!({
        "sent": report.sent,
        "acknowledged": report.acknowledged,
        "failures": failures_json(&report.failures),
        "seconds": report.elapsed.as_secs_f64(),
    })
}

impl PyHubConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubConnections> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl PyHubConnections {
    /// Holds no connection yet; `trust_pem` holds the CA(s) the servers' certificates chain to,
    /// or `None` for the operating system's roots (what Azure's hubs chain to).
    #[new]
    #[pyo3(signature = (trust_pem = None, *, worker_threads = None))]
    fn new(trust_pem: Option<&str>, worker_threads: Option<usize>) -> PyResult<Self> {
        Ok(PyHubConnections {
            trust: super::trust(trust_pem)?,
            runtime: super::runtime("dpskit-devices", worker_threads)?,
            connections: Mutex::new(HubConnections::default()),
        })
    }

    /// Connects `devices` (device id = registration id) to `host:port`; returns a report dict
    /// (connected, failures, seconds, per-device latencies in ms).
    #[pyo3(signature = (host, port, devices, *, concurrency = 64, max_in_flight = 100, keep_alive = 60, timeout = 30.0, transport = "mqtt"))]
    #[allow(clippy::too_many_arguments)]
    fn connect<'py>(
        &self,
        py: Python<'py>,
        host: String,
        port: u16,
        devices: Vec<PyRef<'_, PyDeviceCertificate>>,
        concurrency: usize,
        max_in_flight: u16,
        keep_alive: u16,
        timeout: f64,
        transport: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let timeout = crate::error::positive_seconds("timeout", timeout)?;
        let via = crate::transport::mqtt::Via::from_names(transport, None)?;
        let options: Vec<HubConnectOptions> = devices
            .iter()
            .map(|d| {
                let mut o = HubConnectOptions::new(
                    host.clone(),
                    port,
                    d.inner.registration_id(),
                    DeviceAuth::X509(d.credential_arc()),
                );
                o.via = via.clone();
                o.max_in_flight = max_in_flight.max(1);
                o.keep_alive = keep_alive;
                o.connect_timeout = timeout;
                o
            })
            .collect();
        let (connections, report) = py.detach(|| {
            self.runtime
                .block_on(HubConnections::connect(options, &self.trust, concurrency))
        });
        self.lock().absorb(connections);
        json_to_py(py, &connect_json(&report))
    }

    /// Sends `per_device` QoS 1 messages with `body` from every connected device, each keeping
    /// up to `window` unacknowledged; returns a report dict once every PUBACK is in.
    #[pyo3(signature = (per_device, body, *, window = 100))]
    fn send_telemetry<'py>(
        &self,
        py: Python<'py>,
        per_device: u64,
        body: Vec<u8>,
        window: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let body = bytes::Bytes::from(body);
        // Taken out for the run so no lock is held across it; put back afterwards.
        let connections = std::mem::take(&mut *self.lock());
        let report = py.detach(|| {
            self.runtime
                .block_on(connections.send_telemetry(per_device, body, window))
        });
        self.lock().absorb(connections);
        json_to_py(py, &send_json(&report))
    }

    /// Connected devices.
    fn __len__(&self) -> usize {
        self.lock().len()
    }

    /// Disconnects every device (DISCONNECT, so no will is published).
    fn close(&self, py: Python<'_>) {
        let connections = std::mem::take(&mut *self.lock());
        py.detach(|| self.runtime.block_on(connections.close()));
    }
}
