//! Bindings for `dpskit.cloud.LocalCloud`: `_native.Emulator` (start, stop, the realism knobs,
//! traces, usage, the request recorder, custom allocators written in Python; everything else
//! goes through the REST APIs like any client), `loopback_setup` (`dpskit emulator
//! --print-loopback-setup`) and `EMULATOR_CA_FILE` (the file of a data folder that holds the CA
//! clients trust). Records cross as the classes of `convert.rs`; recorded requests as typed
//! tuples, their bodies as Python objects.

// Python keyword arguments map one to one onto Rust parameters.
#![allow(clippy::too_many_arguments)]

use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::prelude::*;

use super::convert::{HubUsageRecord, TraceRecord, json_to_py, py_to_json};
use crate::emulator::dps::DpsKnobChange;
use crate::emulator::hub::HubKnobChange;
use crate::emulator::{EmulatorConfig, Limits};
use crate::error::Error;

/// One recorded request as it crosses into Python (see `Emulator.recorded_requests`).
type RecordedRequestTuple<'py> = (
    u64,
    f64,
    &'static str,
    String,
    String,
    Vec<(String, String)>,
    Vec<(String, String)>,
    &'static str,
    Bound<'py, PyAny>,
    usize,
    u16,
);

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEmulator>()?;
    m.add_function(wrap_pyfunction!(loopback_setup, m)?)?;
    m.add("EMULATOR_CA_FILE", crate::emulator::tls::CA_CERT_FILE)?;
    Ok(())
}

/// The commands that give `hubs` hubs after `host` their own loopback addresses on this OS
/// (`dpskit emulator --print-loopback-setup`).
#[pyfunction]
fn loopback_setup(host: &str, hubs: u32) -> PyResult<String> {
    let base: std::net::Ipv4Addr = host
        .parse()
        .map_err(|_| Error::config(format!("host must be an IPv4 address, not {host:?}")))?;
    let os = crate::emulator::loopback::Os::current();
    Ok(crate::emulator::loopback::setup_text(os, base, hubs)?)
}

/// The embedded emulator (wrapped by `dpskit.LocalCloud`).
#[pyclass(frozen, module = "dpskit._native", name = "Emulator")]
pub struct PyEmulator {
    inner: Mutex<crate::emulator::Emulator>,
}

impl PyEmulator {
    fn with<T>(
        &self,
        f: impl FnOnce(&crate::emulator::Emulator) -> crate::Result<T>,
    ) -> PyResult<T> {
        let emulator = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !emulator.is_running() {
            return Err(Error::emulator("the local cloud is stopped").into());
        }
        Ok(f(&emulator)?)
    }
}

#[pymethods]
impl PyEmulator {
    /// Starts the emulator.
    #[new]
    #[pyo3(
        signature = (data_dir = None, *, host = "127.0.0.1".to_string(), port = 8883, connect_timeout = 10.0, max_connections = 20_000, max_packet_size = 262_144, max_chain_length = 10, poll_retry_after = 0, https_port = 0, web_port = 443, amqp_port = 5671, arm_tokens = None, arm_operation_seconds = 0.0, arm_page_size = 100, throttle_every = 0, throttle_retry_after = 1, start_time = None),
        text_signature = "(data_dir=None, *, host='127.0.0.1', port=8883, connect_timeout=10.0, max_connections=20000, max_packet_size=262144, max_chain_length=10, poll_retry_after=0, https_port=0, web_port=443, amqp_port=5671, arm_tokens=None, arm_operation_seconds=0.0, arm_page_size=100, throttle_every=0, throttle_retry_after=1, start_time=None)"
    )]
    fn new(
        py: Python<'_>,
        data_dir: Option<PathBuf>,
        host: String,
        port: u16,
        connect_timeout: f64,
        max_connections: usize,
        max_packet_size: usize,
        max_chain_length: usize,
        poll_retry_after: u32,
        https_port: u16,
        web_port: u16,
        amqp_port: u16,
        arm_tokens: Option<Vec<String>>,
        arm_operation_seconds: f64,
        arm_page_size: usize,
        throttle_every: u32,
        throttle_retry_after: u32,
        start_time: Option<i64>,
    ) -> PyResult<Self> {
        let rest_behaviour = crate::emulator::RestBehaviour::new(
            arm_operation_seconds,
            arm_page_size,
            throttle_every,
            throttle_retry_after,
        )?;
        let connect_timeout = crate::error::positive_seconds("connect_timeout", connect_timeout)?;
        let config = EmulatorConfig {
            data_dir,
            host,
            port,
            limits: Limits {
                connect_timeout,
                max_packet_size,
                max_connections: max_connections.max(1),
                max_chain_length: max_chain_length.max(1),
            },
            poll_retry_after,
            worker_threads: None,
            https_port,
            web_port,
            amqp_port,
            arm_tokens,
            rest_behaviour,
            start_time,
            ..EmulatorConfig::default()
        };
        let emulator = py.detach(|| crate::emulator::Emulator::start(config))?;
        Ok(PyEmulator {
            inner: Mutex::new(emulator),
        })
    }

    /// Stops listening and closes every connection (idempotent).
    fn stop(&self, py: Python<'_>) {
        py.detach(|| self.inner.lock().unwrap_or_else(|e| e.into_inner()).stop());
    }

    /// Whether the emulator is running.
    #[getter]
    fn is_running(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_running()
    }

    /// The 429s the REST listener has answered: (ARM, DPS service, hub service).
    #[getter]
    fn throttled_requests(&self) -> PyResult<(u64, u64, u64)> {
        let counts = self.with(|e| Ok(e.throttled_requests()))?;
        Ok((counts.arm, counts.dps_service, counts.hub_service))
    }

    /// PEM of the emulator's CA.
    #[getter]
    fn trust_pem(&self) -> String {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .trust_pem()
    }

    /// The data folder.
    #[getter]
    fn data_dir(&self) -> PathBuf {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .data_dir()
            .to_path_buf()
    }

    /// The DPS host address.
    #[getter]
    fn host(&self) -> String {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cloud()
            .dps_host()
            .to_string()
    }

    /// The HTTPS port of the REST APIs (ARM, service).
    #[getter]
    fn https_port(&self) -> u16 {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .https_port()
    }

    /// The bearer token ARM requires (configured, or generated off loopback); `None` when ARM
    /// accepts any bearer token (loopback without configured tokens).
    #[getter]
    fn arm_token(&self) -> Option<String> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .arm_token()
            .map(str::to_string)
    }

    /// The port of HTTPS and MQTT over WebSockets on each resource's address (443, or the
    /// free port used when 443 could not be bound).
    #[getter]
    fn web_port(&self) -> u16 {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .web_port()
    }

    /// The port of AMQP over TLS on each hub's address, the Event Hub-compatible endpoint
    /// (5671, or the free port used when 5671 could not be bound).
    #[getter]
    fn amqp_port(&self) -> u16 {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .amqp_port()
    }

    /// The MQTT port.
    #[getter]
    fn mqtt_port(&self) -> u16 {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .mqtt_port()
    }

    /// The cloud's now, Unix milliseconds (the wall clock plus every `advance_time`).
    fn now_ms(&self) -> PyResult<i64> {
        self.with(|e| Ok(e.cloud().clock().now_ms()))
    }

    /// Moves the cloud's clock forward by `seconds` (kept in the data folder); the new now,
    /// Unix milliseconds.
    fn advance_time(&self, seconds: i64) -> PyResult<i64> {
        self.with(|e| {
            e.cloud().advance_time(seconds)?;
            Ok(e.cloud().clock().now_ms())
        })
    }

    /// A Device Registry namespace's root CA certificate (PEM), which the emulator made with
    /// the namespace (ARM does not publish it).
    fn namespace_root_pem(&self, namespace: &str) -> PyResult<String> {
        self.with(|e| {
            e.cloud()
                .device_registry_namespace(namespace)
                .map(|n| n.root_ca_pem)
        })
    }

    /// A credential policy's issuing CA certificate (PEM).
    fn policy_issuing_pem(&self, namespace: &str, policy: &str) -> PyResult<String> {
        self.with(|e| {
            e.cloud()
                .credential_policy(namespace, policy)
                .map(|p| p.issuing_ca_pem)
        })
    }

    /// Creates a hub at `host_name` (which the REST API cannot choose), with `partition_count`
    /// partitions on its events endpoint; `LocalCloud` then reads it through ARM like any other.
    #[pyo3(signature = (name, location, host_name = None, partition_count = None))]
    fn create_hub(
        &self,
        name: &str,
        location: &str,
        host_name: Option<&str>,
        partition_count: Option<u32>,
    ) -> PyResult<()> {
        self.with(|e| {
            e.create_hub_with_partitions(name, location, host_name, partition_count)
                .map(drop)
        })
    }

    /// Sets DPS realism knobs; any of `assignment_latency` (seconds), `registrations_per_minute`
    /// (0 = unlimited), `refuse_next`, `refusal_status`, `device_location` = (id, location).
    /// `strict_csr_key_type`: only the documented EC P-384 CSR key is accepted.
    #[pyo3(signature = (dps, *, assignment_latency = None, registrations_per_minute = None, refuse_next = None, refusal_status = None, device_location = None, strict_csr_key_type = None))]
    #[allow(clippy::too_many_arguments)] // keyword arguments of one Python call
    fn update_dps_knobs(
        &self,
        dps: &str,
        assignment_latency: Option<f64>,
        registrations_per_minute: Option<u32>,
        refuse_next: Option<u32>,
        refusal_status: Option<u16>,
        device_location: Option<(String, String)>,
        strict_csr_key_type: Option<bool>,
    ) -> PyResult<()> {
        let change = DpsKnobChange {
            assignment_latency,
            registrations_per_minute,
            refuse_next,
            refusal_status,
            device_location,
            strict_csr_key_type,
        };
        self.with(|e| e.change_dps_knobs(dps, change))
    }

    /// Sets hub realism knobs: `latency` (seconds), `connections_per_second` and
    /// `messages_per_second` (0 = unlimited), `refuse_next_connections`.
    /// `certificate_issuance_delay_ms`: how long a renewal's 200 is held back after its 202.
    #[pyo3(signature = (host_name, *, latency = None, connections_per_second = None, messages_per_second = None, refuse_next_connections = None, certificate_issuance_delay_ms = None))]
    fn update_hub_knobs(
        &self,
        host_name: &str,
        latency: Option<f64>,
        connections_per_second: Option<u32>,
        messages_per_second: Option<u32>,
        refuse_next_connections: Option<u32>,
        certificate_issuance_delay_ms: Option<u64>,
    ) -> PyResult<()> {
        let change = HubKnobChange {
            latency,
            connections_per_second,
            messages_per_second,
            refuse_next_connections,
            certificate_issuance_delay_ms,
        };
        self.with(|e| e.change_hub_knobs(host_name, change))
    }

    /// The hub's tier, today's message meter and its throttles' refusals.
    fn hub_usage(&self, host_name: &str) -> PyResult<HubUsageRecord> {
        Ok(self.with(|e| e.hubs().usage(host_name))?.into())
    }

    /// Drops a device's connection now; returns whether it was connected.
    fn hub_drop_connection(&self, host_name: &str, device_id: &str) -> PyResult<bool> {
        self.with(|e| Ok(e.hubs().drop_connection(host_name, device_id)))
    }

    /// Registers a Python callable as the custom allocator `python:<name>`: it receives Azure's
    /// AllocationRequest as a dict and returns an AllocationResponse dict.
    fn register_allocator(&self, name: &str, callable: Py<PyAny>) -> PyResult<()> {
        self.with(|e| {
            e.register_allocator(name, std::sync::Arc::new(PythonAllocator { callable }));
            Ok(())
        })
    }

    /// Starts (or with `enabled=False` stops) tracing one client id, or every client.
    #[pyo3(signature = (client_id = None, enabled = true))]
    fn trace(&self, client_id: Option<&str>, enabled: bool) -> PyResult<()> {
        self.with(|e| {
            if enabled {
                e.tracer().watch(client_id);
            } else {
                e.tracer().unwatch(client_id);
            }
            Ok(())
        })
    }

    /// The recorded exchange of a client.
    fn trace_events(&self, client_id: &str) -> PyResult<Vec<TraceRecord>> {
        let events = self.with(|e| Ok(e.tracer().events(client_id)))?;
        Ok(events.into_iter().map(TraceRecord::from).collect())
    }

    /// Starts recording HTTPS requests; returns the sequence number of the first one.
    fn start_recording(&self) -> PyResult<u64> {
        self.with(|e| Ok(e.request_recorder().start()))
    }

    /// The recorded requests numbered `since` and after, and how many of them were dropped:
    /// each as `(sequence, at, api, method, path, query, headers, body_kind, body, body_size,
    /// status)`, the body as the Python object of its JSON (or its text; `None` when empty or
    /// omitted).
    fn recorded_requests<'py>(
        &self,
        py: Python<'py>,
        since: u64,
    ) -> PyResult<(Vec<RecordedRequestTuple<'py>>, u64)> {
        use crate::emulator::rest::recorder::RecordedBody;
        let recorded = self.with(|e| Ok(e.request_recorder().since(since)))?;
        let requests = recorded
            .requests
            .into_iter()
            .map(|r| {
                let (kind, body) = match &r.body {
                    RecordedBody::Empty => ("empty", py.None().into_bound(py)),
                    RecordedBody::Omitted => ("omitted", py.None().into_bound(py)),
                    RecordedBody::Json(value) => ("json", json_to_py(py, value)?),
                    RecordedBody::Text(text) => ("text", text.into_pyobject(py)?.into_any()),
                };
                Ok((
                    r.sequence,
                    r.at,
                    r.api,
                    r.method,
                    r.path,
                    r.query,
                    r.headers,
                    kind,
                    body,
                    r.body_size,
                    r.status,
                ))
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok((requests, recorded.dropped))
    }

    /// Ends one recording (a no-op once the emulator stopped).
    fn stop_recording(&self) {
        let emulator = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        emulator.request_recorder().stop();
    }
}

/// A custom allocation policy implemented by a Python callable (a dict in, a dict out).
struct PythonAllocator {
    callable: Py<PyAny>,
}

impl crate::emulator::dps::CustomAllocator for PythonAllocator {
    fn allocate(
        &self,
        request: serde_json::Value,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<serde_json::Value, String>> + Send + '_>,
    > {
        let callable = Python::attach(|py| self.callable.clone_ref(py));
        Box::pin(async move {
            // Python code may block: keep it off the emulator's async workers.
            tokio::task::spawn_blocking(move || {
                Python::attach(|py| -> PyResult<serde_json::Value> {
                    let request = json_to_py(py, &request)?;
                    py_to_json(callable.call1(py, (request,))?.bind(py))
                })
            })
            .await
            .map_err(|e| format!("the allocator task failed: {e}"))?
            .map_err(|e| format!("the Python allocator failed: {e}"))
        })
    }
}
