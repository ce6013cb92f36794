//! Bindings for the local cloud: `_native.Emulator` (start, stop, the configuration API),
//! `derive_device_key` and `loopback_setup`. Most records still cross the boundary as JSON text
//! (issue 17 replaces it); recorded requests cross as typed tuples, their bodies as Python
//! objects; `dpskit.cloud` turns them into dataclasses.

// Python keyword arguments map one to one onto Rust parameters.
#![allow(clippy::too_many_arguments)]

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde::Serialize;

use crate::emulator::{EmulatorConfig, EnrollmentSpec, Limits};
use crate::error::Error;
use crate::pki::Certificate;

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
    m.add_function(wrap_pyfunction!(derive_device_key, m)?)?;
    m.add_function(wrap_pyfunction!(provision_devices, m)?)?;
    m.add_function(wrap_pyfunction!(loopback_setup, m)?)?;
    Ok(())
}

fn json<T: Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value)
        .map_err(|e| Error::Emulator(format!("cannot encode a record: {e}")).into())
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> PyResult<T> {
    serde_json::from_str(text).map_err(|e| Error::Config(format!("invalid {what}: {e}")).into())
}

/// The group-derived key of one device: `base64(HMAC-SHA256(base64decode(group_key), registration_id))`.
#[pyfunction]
fn derive_device_key(group_key: &str, registration_id: &str) -> PyResult<String> {
    Ok(crate::sas::derive_device_key(group_key, registration_id)?)
}

/// The commands that give `hubs` hubs after `host` their own loopback addresses on this OS
/// (`dpskit emulator --print-loopback-setup`).
#[pyfunction]
fn loopback_setup(host: &str, hubs: u32) -> PyResult<String> {
    let base: std::net::Ipv4Addr = host
        .parse()
        .map_err(|_| Error::Config(format!("host must be an IPv4 address, not {host:?}")))?;
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
            return Err(Error::Emulator("the local cloud is stopped".into()).into());
        }
        Ok(f(&emulator)?)
    }
}

#[pymethods]
impl PyEmulator {
    /// Starts the emulator.
    #[new]
    #[pyo3(
        signature = (data_dir = None, *, host = "127.0.0.1".to_string(), port = 8883, connect_timeout = 10.0, max_connections = 20_000, max_packet_size = 262_144, max_chain_length = 10, poll_retry_after = 0, https_port = 0, arm_tokens = None, arm_operation_seconds = 0.0, arm_page_size = 100, throttle_every = 0, throttle_retry_after = 1),
        text_signature = "(data_dir=None, *, host='127.0.0.1', port=8883, connect_timeout=10.0, max_connections=20000, max_packet_size=262144, max_chain_length=10, poll_retry_after=0, https_port=0, arm_tokens=None, arm_operation_seconds=0.0, arm_page_size=100, throttle_every=0, throttle_retry_after=1)"
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
        arm_tokens: Option<Vec<String>>,
        arm_operation_seconds: f64,
        arm_page_size: usize,
        throttle_every: u32,
        throttle_retry_after: u32,
    ) -> PyResult<Self> {
        if !(arm_operation_seconds.is_finite() && (0.0..=3600.0).contains(&arm_operation_seconds)) {
            return Err(Error::Config(format!(
                "arm_operation_seconds must be between 0 and 3600, not {arm_operation_seconds}"
            ))
            .into());
        }
        if arm_page_size == 0 {
            return Err(Error::Config("arm_page_size must be at least 1".into()).into());
        }
        if !(connect_timeout.is_finite() && connect_timeout > 0.0) {
            return Err(Error::Config(format!(
                "connect_timeout must be a positive number of seconds, not {connect_timeout}"
            ))
            .into());
        }
        let config = EmulatorConfig {
            data_dir,
            host,
            port,
            limits: Limits {
                connect_timeout: Duration::from_secs_f64(connect_timeout),
                max_packet_size,
                max_connections: max_connections.max(1),
                max_chain_length: max_chain_length.max(1),
            },
            poll_retry_after,
            worker_threads: None,
            https_port,
            arm_tokens,
            rest_behaviour: crate::emulator::RestBehaviour {
                operation_latency: Duration::from_secs_f64(arm_operation_seconds),
                page_size: arm_page_size,
                throttle_every,
                throttle_retry_after,
            },
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

    /// Whether the data folder is deleted on stop.
    #[getter]
    fn is_temporary(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_temporary()
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

    /// The MQTT port.
    #[getter]
    fn mqtt_port(&self) -> u16 {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .mqtt_port()
    }

    /// Creates a hub; returns its record as JSON.
    #[pyo3(signature = (name, location, host_name = None))]
    fn create_hub(&self, name: &str, location: &str, host_name: Option<&str>) -> PyResult<String> {
        let hub = self.with(|e| e.create_hub(name, location, host_name))?;
        json(&hub)
    }

    /// A hub record as JSON.
    fn hub(&self, name: &str) -> PyResult<String> {
        json(&self.with(|e| e.cloud().hub(name))?)
    }

    /// Every hub record, as a JSON list.
    fn hubs(&self) -> PyResult<String> {
        json(&self.with(|e| Ok(e.cloud().hubs()))?)
    }

    /// The device identities of a hub (by host name), as JSON.
    fn hub_devices(&self, host_name: &str) -> PyResult<String> {
        json(&self.with(|e| Ok(e.cloud().hub_devices(host_name)))?)
    }

    /// Creates a DPS instance; returns its record as JSON.
    fn create_dps(&self, name: &str, location: &str) -> PyResult<String> {
        json(&self.with(|e| e.cloud().create_dps(name, location))?)
    }

    /// A DPS record as JSON.
    fn dps(&self, name: &str) -> PyResult<String> {
        json(&self.with(|e| e.cloud().dps(name))?)
    }

    /// Every DPS record, as a JSON list.
    fn all_dps(&self) -> PyResult<String> {
        json(&self.with(|e| Ok(e.cloud().all_dps()))?)
    }

    /// Links a hub to a DPS; returns the link as JSON.
    #[pyo3(signature = (dps, hub, allocation_weight, apply_allocation_policy, location = None))]
    fn link_hub(
        &self,
        dps: &str,
        hub: &str,
        allocation_weight: u32,
        apply_allocation_policy: bool,
        location: Option<&str>,
    ) -> PyResult<String> {
        json(&self.with(|e| {
            e.cloud().link_hub(
                dps,
                hub,
                allocation_weight,
                apply_allocation_policy,
                location,
            )
        })?)
    }

    /// Removes a hub link.
    fn unlink_hub(&self, dps: &str, hub: &str) -> PyResult<()> {
        self.with(|e| e.cloud().unlink_hub(dps, hub))
    }

    /// Uploads a CA certificate (DER); returns its record as JSON.
    #[pyo3(signature = (dps, name, der, verified, if_match = None))]
    fn upload_ca_certificate(
        &self,
        dps: &str,
        name: &str,
        der: &Bound<'_, PyBytes>,
        verified: bool,
        if_match: Option<&str>,
    ) -> PyResult<String> {
        let certificate = Certificate::from_der(der.as_bytes())?;
        json(&self.with(|e| {
            e.cloud()
                .upload_ca_certificate(dps, name, &certificate, verified, if_match)
        })?)
    }

    /// A CA certificate record as JSON.
    fn ca_certificate(&self, dps: &str, name: &str) -> PyResult<String> {
        json(&self.with(|e| e.cloud().ca_certificate(dps, name))?)
    }

    /// Deletes a CA certificate.
    #[pyo3(signature = (dps, name, if_match = None))]
    fn delete_ca_certificate(&self, dps: &str, name: &str, if_match: Option<&str>) -> PyResult<()> {
        self.with(|e| e.cloud().delete_ca_certificate(dps, name, if_match))
    }

    /// Generates a verification code; returns the certificate record (with the code) as JSON.
    #[pyo3(signature = (dps, name, if_match = None))]
    fn generate_verification_code(
        &self,
        dps: &str,
        name: &str,
        if_match: Option<&str>,
    ) -> PyResult<String> {
        json(&self.with(|e| e.cloud().generate_verification_code(dps, name, if_match))?)
    }

    /// Verifies possession with a verification certificate (DER); returns the record as JSON.
    #[pyo3(signature = (dps, name, der, if_match = None))]
    fn verify_certificate(
        &self,
        dps: &str,
        name: &str,
        der: &Bound<'_, PyBytes>,
        if_match: Option<&str>,
    ) -> PyResult<String> {
        let certificate = Certificate::from_der(der.as_bytes())?;
        json(&self.with(|e| {
            e.cloud()
                .verify_certificate(dps, name, &certificate, if_match)
        })?)
    }

    /// Creates or replaces an enrollment group from a JSON spec; returns it as JSON.
    #[pyo3(signature = (dps, group_id, spec, if_match = None))]
    fn put_enrollment_group(
        &self,
        dps: &str,
        group_id: &str,
        spec: &str,
        if_match: Option<&str>,
    ) -> PyResult<String> {
        let spec: EnrollmentSpec = parse("enrollment group", spec)?;
        json(&self.with(|e| {
            e.cloud()
                .put_enrollment_group(dps, group_id, spec, if_match)
        })?)
    }

    /// An enrollment group as JSON.
    fn enrollment_group(&self, dps: &str, group_id: &str) -> PyResult<String> {
        json(&self.with(|e| e.cloud().enrollment_group(dps, group_id))?)
    }

    /// Every enrollment group of a DPS, as a JSON list.
    fn enrollment_groups(&self, dps: &str) -> PyResult<String> {
        json(&self.with(|e| Ok(e.cloud().enrollment_groups(dps)))?)
    }

    /// Deletes an enrollment group.
    #[pyo3(signature = (dps, group_id, if_match = None))]
    fn delete_enrollment_group(
        &self,
        dps: &str,
        group_id: &str,
        if_match: Option<&str>,
    ) -> PyResult<()> {
        self.with(|e| e.cloud().delete_enrollment_group(dps, group_id, if_match))
    }

    /// Creates or replaces an individual enrollment from a JSON spec; returns it as JSON.
    #[pyo3(signature = (dps, registration_id, spec, if_match = None))]
    fn put_enrollment(
        &self,
        dps: &str,
        registration_id: &str,
        spec: &str,
        if_match: Option<&str>,
    ) -> PyResult<String> {
        let spec: EnrollmentSpec = parse("enrollment", spec)?;
        json(&self.with(|e| {
            e.cloud()
                .put_enrollment(dps, registration_id, spec, if_match)
        })?)
    }

    /// An individual enrollment as JSON.
    fn enrollment(&self, dps: &str, registration_id: &str) -> PyResult<String> {
        json(&self.with(|e| e.cloud().enrollment(dps, registration_id))?)
    }

    /// Every individual enrollment of a DPS, as a JSON list.
    fn enrollments(&self, dps: &str) -> PyResult<String> {
        json(&self.with(|e| Ok(e.cloud().enrollments(dps)))?)
    }

    /// Deletes an individual enrollment.
    #[pyo3(signature = (dps, registration_id, if_match = None))]
    fn delete_enrollment(
        &self,
        dps: &str,
        registration_id: &str,
        if_match: Option<&str>,
    ) -> PyResult<()> {
        self.with(|e| e.cloud().delete_enrollment(dps, registration_id, if_match))
    }

    /// Registration records as a JSON list, optionally of one enrollment group.
    #[pyo3(signature = (dps, group_id = None))]
    fn registrations(&self, dps: &str, group_id: Option<&str>) -> PyResult<String> {
        json(&self.with(|e| {
            e.cloud().dps(dps)?;
            Ok(e.cloud().registrations(dps, group_id))
        })?)
    }

    /// Deletes a registration record.
    fn delete_registration(&self, dps: &str, registration_id: &str) -> PyResult<()> {
        self.with(|e| e.cloud().delete_registration(dps, registration_id))
    }

    /// Sets DPS realism knobs; any of `assignment_latency` (seconds), `registrations_per_minute`
    /// (0 = unlimited), `refuse_next`, `refusal_status`, `device_location` = (id, location).
    #[pyo3(signature = (dps, *, assignment_latency = None, registrations_per_minute = None, refuse_next = None, refusal_status = None, device_location = None))]
    fn update_dps_knobs(
        &self,
        dps: &str,
        assignment_latency: Option<f64>,
        registrations_per_minute: Option<u32>,
        refuse_next: Option<u32>,
        refusal_status: Option<u16>,
        device_location: Option<(String, String)>,
    ) -> PyResult<()> {
        if let Some(seconds) = assignment_latency
            && !(seconds.is_finite() && seconds >= 0.0)
        {
            return Err(Error::Config(format!(
                "assignment_latency must be >= 0 seconds, not {seconds}"
            ))
            .into());
        }
        if let Some(status) = refusal_status
            && !(400..600).contains(&status)
        {
            return Err(Error::Config(format!(
                "refusal_status must be an HTTP error status (400-599), not {status}"
            ))
            .into());
        }
        self.with(|e| {
            e.update_dps_knobs(dps, |k| {
                if let Some(seconds) = assignment_latency {
                    k.assignment_latency = Duration::from_secs_f64(seconds);
                }
                if let Some(limit) = registrations_per_minute {
                    k.registrations_per_minute = (limit > 0).then_some(limit);
                }
                if let Some(n) = refuse_next {
                    k.refuse_next = n;
                }
                if let Some(status) = refusal_status {
                    k.refusal_status = status;
                }
                if let Some((id, location)) = device_location {
                    k.device_locations.insert(id.to_ascii_lowercase(), location);
                }
            })
        })
    }

    /// Telemetry a hub received (by host name), as a JSON list; bodies are base64.
    #[pyo3(signature = (host_name, device_id = None))]
    fn hub_telemetry(
        &self,
        py: Python<'_>,
        host_name: &str,
        device_id: Option<&str>,
    ) -> PyResult<String> {
        let records = py.detach(|| self.with(|e| e.hubs().telemetry(host_name, device_id)))?;
        let rows: Vec<serde_json::Value> = records
            .into_iter()
            .map(|r| {
                use base64::Engine;
                serde_json::json!({
                    "sequence": r.sequence,
                    "deviceId": r.device_id,
                    "moduleId": r.module_id,
                    "enqueued": r.enqueued,
                    "body": base64::engine::general_purpose::STANDARD.encode(&r.body),
                    "properties": r.properties,
                    "systemProperties": r.system_properties,
                })
            })
            .collect();
        json(&rows)
    }

    /// A device twin (service view) as JSON.
    fn hub_twin(&self, host_name: &str, device_id: &str) -> PyResult<String> {
        json(&self.with(|e| e.hubs().service_twin(host_name, device_id))?)
    }

    /// Patches desired properties (JSON object); returns the twin as JSON.
    fn hub_update_desired(
        &self,
        host_name: &str,
        device_id: &str,
        patch: &str,
    ) -> PyResult<String> {
        let patch: serde_json::Map<String, serde_json::Value> = parse("desired patch", patch)?;
        json(&self.with(|e| e.hubs().update_desired(host_name, device_id, &patch))?)
    }

    /// Patches tags (JSON object); returns the twin as JSON.
    fn hub_update_tags(&self, host_name: &str, device_id: &str, patch: &str) -> PyResult<String> {
        let patch: serde_json::Map<String, serde_json::Value> = parse("tags patch", patch)?;
        json(&self.with(|e| e.hubs().update_tags(host_name, device_id, &patch))?)
    }

    /// Queues a cloud-to-device message; returns its message id.
    fn hub_send_c2d(
        &self,
        host_name: &str,
        device_id: &str,
        body: &Bound<'_, PyBytes>,
        properties: Vec<(String, String)>,
    ) -> PyResult<String> {
        let body = body.as_bytes().to_vec();
        self.with(|e| e.hubs().send_c2d(host_name, device_id, &body, properties))
    }

    /// Invokes a direct method (payload as JSON text) and waits; returns `{"status", "payload"}`.
    fn hub_invoke_method(
        &self,
        py: Python<'_>,
        host_name: &str,
        device_id: &str,
        method: &str,
        payload: &str,
        timeout: f64,
    ) -> PyResult<String> {
        // As on Azure, a response timeout over 300 s is refused.
        let timeout = crate::hub::method_timeout(timeout)?;
        let payload: serde_json::Value = parse("method payload", payload)?;
        let (handle, hubs) = self.with(|e| Ok((e.runtime_handle()?, e.hubs().clone())))?;
        let (status, answer) = crate::python::block_on_interruptible(
            py,
            &handle,
            hubs.invoke_method(host_name, device_id, method, payload, timeout),
        )??;
        json(&serde_json::json!({"status": status, "payload": answer}))
    }

    /// Sets hub realism knobs: `latency` (seconds), `connections_per_second` and
    /// `messages_per_second` (0 = unlimited), `refuse_next_connections`.
    #[pyo3(signature = (host_name, *, latency = None, connections_per_second = None, messages_per_second = None, refuse_next_connections = None))]
    fn update_hub_knobs(
        &self,
        host_name: &str,
        latency: Option<f64>,
        connections_per_second: Option<u32>,
        messages_per_second: Option<u32>,
        refuse_next_connections: Option<u32>,
    ) -> PyResult<()> {
        if let Some(seconds) = latency
            && !(seconds.is_finite() && seconds >= 0.0)
        {
            return Err(
                Error::Config(format!("latency must be >= 0 seconds, not {seconds}")).into(),
            );
        }
        self.with(|e| {
            e.hubs().hub_for_host(host_name).ok_or_else(|| {
                Error::service(
                    404,
                    404_000,
                    format!("no hub has the host name {host_name}"),
                )
            })?;
            e.hubs().update_knobs(host_name, |k| {
                if let Some(seconds) = latency {
                    k.latency = Duration::from_secs_f64(seconds);
                }
                if let Some(rate) = connections_per_second {
                    k.connections_per_second = (rate > 0).then_some(rate);
                }
                if let Some(rate) = messages_per_second {
                    k.messages_per_second = (rate > 0).then_some(rate);
                }
                if let Some(n) = refuse_next_connections {
                    k.refuse_next_connections = n;
                }
            });
            Ok(())
        })
    }

    /// The hub's tier, today's message meter and its throttles' refusals, as JSON.
    fn hub_usage(&self, host_name: &str) -> PyResult<String> {
        json(&self.with(|e| e.hubs().usage(host_name))?)
    }

    /// Drops a device's connection now; returns whether it was connected.
    fn hub_drop_connection(&self, host_name: &str, device_id: &str) -> PyResult<bool> {
        self.with(|e| Ok(e.hubs().drop_connection(host_name, device_id)))
    }

    /// Creates (or replaces) a device identity in a hub from a JSON `HubDevice`-like spec.
    fn hub_put_device(
        &self,
        host_name: &str,
        device_id: &str,
        auth: &str,
        initial_twin: Option<&str>,
    ) -> PyResult<String> {
        let auth: crate::emulator::model::DeviceAuth = parse("device authentication", auth)?;
        let initial_twin: Option<serde_json::Value> =
            initial_twin.map(|t| parse("initial twin", t)).transpose()?;
        crate::pki::validate_registration_id(device_id, false)?;
        let device = crate::emulator::model::HubDevice {
            device_id: device_id.to_string(),
            hub: host_name.to_string(),
            auth,
            initial_twin,
            created: crate::pki::issue::now(),
        };
        self.with(|e| {
            e.hubs().hub_for_host(host_name).ok_or_else(|| {
                Error::service(
                    404,
                    404_000,
                    format!("no hub has the host name {host_name}"),
                )
            })?;
            e.cloud().put_hub_device(device.clone())
        })?;
        json(&device)
    }

    /// Registers a Python callable as the custom allocator `python:<name>`: it receives Azure's
    /// AllocationRequest as JSON text and returns an AllocationResponse as JSON text.
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

    /// The recorded exchange of a client, as a JSON list.
    fn trace_events(&self, client_id: &str) -> PyResult<String> {
        json(&self.with(|e| Ok(e.tracer().events(client_id)))?)
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
                    RecordedBody::Json(value) => ("json", super::json_to_py(py, value)?),
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

/// A custom allocation policy implemented by a Python callable (JSON text in, JSON text out).
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
            let answer = tokio::task::spawn_blocking(move || {
                Python::attach(|py| -> PyResult<String> {
                    callable
                        .call1(py, (request.to_string(),))?
                        .extract::<String>(py)
                })
            })
            .await
            .map_err(|e| format!("the allocator task failed: {e}"))?
            .map_err(|e| format!("the Python allocator raised {e}"))?;
            serde_json::from_str(&answer)
                .map_err(|e| format!("the Python allocator's answer is not JSON: {e}"))
        })
    }
}

/// Provisions devices through DPS concurrently on a private runtime (GIL released); returns one
/// JSON object per device, in order: the result or the error, and the seconds it took.
#[pyfunction]
#[pyo3(signature = (host, port, id_scope, devices, trust_pem, *, concurrency = 64, timeout = 60.0))]
pub(crate) fn provision_devices(
    py: Python<'_>,
    host: String,
    port: u16,
    id_scope: String,
    devices: Vec<PyRef<'_, crate::python::pki::PyDeviceCertificate>>,
    trust_pem: Option<&str>,
    concurrency: usize,
    timeout: f64,
) -> PyResult<String> {
    use crate::provisioning::{DeviceAuth, ProvisioningRequest, Trust, provision_many};
    if !(timeout.is_finite() && timeout > 0.0) {
        return Err(Error::Config(format!(
            "timeout must be a positive number of seconds, not {timeout}"
        ))
        .into());
    }
    // No PEM: the system's roots, which Azure's endpoints chain to.
    let trust = match trust_pem {
        Some(pem) => Trust::from_pem(pem.as_bytes())?,
        None => Trust::system(),
    };
    let requests: Vec<ProvisioningRequest> = devices
        .iter()
        .map(|d| ProvisioningRequest {
            host: host.clone(),
            port,
            id_scope: id_scope.clone(),
            registration_id: d.inner.registration_id().to_string(),
            auth: DeviceAuth::X509(d.credential_arc()),
            payload: None,
            timeout: Duration::from_secs_f64(timeout),
        })
        .collect();
    let runtime = crate::python::OwnedRuntime::new(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("dpskit-provisioning")
            .build()
            .map_err(|e| Error::Transport(format!("cannot start a runtime: {e}")))?,
    );
    let outcomes = crate::python::block_on_interruptible(
        py,
        runtime.handle(),
        provision_many(requests, trust, concurrency),
    )?;
    let records: Vec<serde_json::Value> = outcomes
        .into_iter()
        .map(|(result, elapsed)| match result {
            Ok(r) => serde_json::json!({
                "ok": true,
                "registrationId": r.registration_id,
                "assignedHub": r.assigned_hub,
                "deviceId": r.device_id,
                "substatus": r.substatus,
                "etag": r.etag,
                "created": r.created,
                "lastUpdated": r.last_updated,
                "operationId": r.operation_id,
                "payload": r.payload,
                "seconds": elapsed.as_secs_f64(),
            }),
            Err(e) => {
                let code = match &e {
                    Error::RegistrationFailed { error_code, .. } => *error_code,
                    Error::Service(s) => s.error_code,
                    _ => None,
                };
                serde_json::json!({"ok": false, "error": e.to_string(), "errorCode": code, "seconds": elapsed.as_secs_f64()})
            }
        })
        .collect();
    json(&records)
}
