//! Bindings for `dpskit.device`: the awaitable device clients (`_native.provision`,
//! `_native.HubSession`) and `derive_device_key`. The clients are Rust futures on the
//! shared tokio runtime, handed to asyncio by pyo3-async-runtimes. Cancelling the Python task
//! drops the Rust future, which closes what it opened. Results cross as the records of
//! `convert.rs` (a registration, a C2D message) and JSON as Python objects.

use crate::transport::mqtt::Via;
use std::sync::Arc;

use pyo3::prelude::*;

use super::convert::{self, json_to_py, py_to_json};
use super::trust;
use crate::clock::Clock;
use crate::error::{Error, positive_seconds};
use crate::hub::{ConnectionState, HubClient, HubConnectOptions, TelemetryMessage};
use crate::pki::KeyAlgorithm;
use crate::provisioning::{
    DeviceAuth, ProvisioningRequest, certificate_request, issued_credential,
    provision as provision_device,
};
use crate::python::pki::PyDeviceCertificate;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(provision, m)?)?;
    m.add_function(wrap_pyfunction!(derive_device_key, m)?)?;
    m.add_function(wrap_pyfunction!(transport_port, m)?)?;
    m.add_class::<PyHubSession>()?;
    Ok(())
}

fn auth(
    certificate: Option<PyRef<'_, PyDeviceCertificate>>,
    symmetric_key: Option<String>,
) -> PyResult<DeviceAuth> {
    match (certificate, symmetric_key) {
        (Some(c), None) => Ok(DeviceAuth::X509(c.credential_arc())),
        (None, Some(key)) => Ok(DeviceAuth::SymmetricKey(key)),
        _ => {
            Err(Error::config("give a certificate or a symmetric key, not both or neither").into())
        }
    }
}

/// Azure's port for a device transport (`"mqtt"`: 8883, `"websockets"`: 443); refuses
/// another name.
#[pyfunction]
fn transport_port(transport: &str) -> PyResult<u16> {
    Ok(transport
        .parse::<crate::transport::mqtt::DeviceTransport>()?
        .azure_port())
}

/// The group-derived key of one device: `base64(HMAC-SHA256(base64decode(group_key), registration_id))`.
#[pyfunction]
fn derive_device_key(group_key: &str, registration_id: &str) -> PyResult<String> {
    Ok(crate::sas::derive_device_key(group_key, registration_id)?)
}

/// A clock `offset_ms` ahead of the wall clock: the time of the cloud the device lives in.
fn clock(offset_ms: i64) -> PyResult<Clock> {
    Ok(Clock::with_offset_ms(offset_ms)?)
}

/// Registers one device with DPS; resolves to its `Registration`. With `csr` (PEM or DER
/// bytes, and its `csr_key` when known) or `key_algorithm` (a new key and CSR), DPS is asked
/// for an operational certificate, returned checked on the registration.
#[pyfunction]
#[pyo3(signature = (host, port, id_scope, registration_id, *, certificate = None, symmetric_key = None, trust_pem = None, payload = None, timeout = 60.0, transport = "mqtt", proxy = None, csr = None, csr_key = None, key_algorithm = None, clock_offset_ms = 0))]
#[allow(clippy::too_many_arguments)]
fn provision<'py>(
    py: Python<'py>,
    host: String,
    port: u16,
    id_scope: String,
    registration_id: String,
    certificate: Option<PyRef<'py, PyDeviceCertificate>>,
    symmetric_key: Option<String>,
    trust_pem: Option<&str>,
    payload: Option<Bound<'py, PyAny>>,
    timeout: f64,
    transport: &str,
    proxy: Option<&str>,
    csr: Option<Vec<u8>>,
    csr_key: Option<Vec<u8>>,
    key_algorithm: Option<&str>,
    clock_offset_ms: i64,
) -> PyResult<Bound<'py, PyAny>> {
    let (csr, key) = if csr.is_some() || key_algorithm.is_some() {
        let algorithm = KeyAlgorithm::parse(key_algorithm.unwrap_or("ec-p256"))?;
        let (request, key) = py.detach(|| {
            certificate_request(
                &registration_id,
                csr.as_deref(),
                csr_key.as_deref(),
                algorithm,
            )
        })?;
        (Some(request), key)
    } else {
        if csr_key.is_some() {
            return Err(Error::config("csr_key is the key of a CSR: give the CSR too").into());
        }
        (None, None)
    };
    let request = ProvisioningRequest {
        host,
        port,
        via: Via::from_names(transport, proxy)?,
        id_scope,
        registration_id,
        auth: auth(certificate, symmetric_key)?,
        payload: payload.map(|p| py_to_json(&p)).transpose()?,
        timeout: positive_seconds("timeout", timeout)?,
        csr,
        clock: clock(clock_offset_ms)?,
    };
    let trust = trust(trust_pem)?;
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        let r = provision_device(&request, &trust).await?;
        let issued = match key {
            Some(key) if !r.issued_chain.is_empty() => Some(PyDeviceCertificate {
                inner: issued_credential(&r.issued_chain, key)?,
            }),
            _ => None,
        };
        Python::attach(|py| convert::registration_issued(py, r, issued))
    })
}

/// One device connected to its hub (dpskit's Rust MQTT client).
#[pyclass(frozen, module = "dpskit._native", name = "HubSession")]
pub struct PyHubSession {
    client: Arc<HubClient>,
}

#[pymethods]
impl PyHubSession {
    /// Connects (TLS + CONNECT + the four subscriptions); resolves to a `HubSession`.
    #[staticmethod]
    #[pyo3(signature = (host, port, device_id, *, certificate = None, symmetric_key = None, trust_pem = None, keep_alive = 60, timeout = 30.0, transport = "mqtt", proxy = None, certificate_renewal = false, clock_offset_ms = 0))]
    #[allow(clippy::too_many_arguments)]
    fn connect<'py>(
        py: Python<'py>,
        host: String,
        port: u16,
        device_id: String,
        certificate: Option<PyRef<'py, PyDeviceCertificate>>,
        symmetric_key: Option<String>,
        trust_pem: Option<&str>,
        keep_alive: u16,
        timeout: f64,
        transport: &str,
        proxy: Option<&str>,
        certificate_renewal: bool,
        clock_offset_ms: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut options =
            HubConnectOptions::new(host, port, device_id, auth(certificate, symmetric_key)?);
        options.certificate_renewal = certificate_renewal;
        options.clock = clock(clock_offset_ms)?;
        options.via = Via::from_names(transport, proxy)?;
        options.keep_alive = keep_alive;
        options.connect_timeout = positive_seconds("timeout", timeout)?;
        options.receive = true;
        let trust = trust(trust_pem)?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let client = HubClient::connect(options, &trust).await?;
            Ok(PyHubSession {
                client: Arc::new(client),
            })
        })
    }

    /// Renews the device's certificate through the hub (a new key and CSR); resolves to the
    /// new `DeviceCertificate`. `replace` cancels a pending request (`"*"` or its id).
    #[pyo3(signature = (*, key_algorithm = None, replace = None))]
    fn renew_certificate<'py>(
        &self,
        py: Python<'py>,
        key_algorithm: Option<&str>,
        replace: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let algorithm = key_algorithm.map(KeyAlgorithm::parse).transpose()?;
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let inner = client
                .renew_credential(algorithm, replace.as_deref())
                .await?;
            Ok(PyDeviceCertificate { inner })
        })
    }

    /// The device id.
    #[getter]
    fn device_id(&self) -> String {
        self.client.device_id().to_string()
    }

    /// `connecting`, `connected`, `reconnecting` or `closed`.
    #[getter]
    fn connection_state(&self) -> &'static str {
        match self.client.connection_state() {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Reconnecting => "reconnecting",
            ConnectionState::Closed => "closed",
        }
    }

    /// Sends telemetry at QoS 1; resolves once the hub acknowledged it.
    #[pyo3(signature = (body, *, properties = Vec::new(), content_type = None, content_encoding = None, message_id = None, correlation_id = None))]
    #[allow(clippy::too_many_arguments)]
    fn send_telemetry<'py>(
        &self,
        py: Python<'py>,
        body: Vec<u8>,
        properties: Vec<(String, String)>,
        content_type: Option<String>,
        content_encoding: Option<String>,
        message_id: Option<String>,
        correlation_id: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        let message = TelemetryMessage {
            body: body.into(),
            content_type,
            content_encoding,
            message_id,
            correlation_id,
            properties,
        };
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            client.send_telemetry(&message).await?;
            Ok(())
        })
    }

    /// Resolves to the twin (a dict) as the device sees it.
    fn get_twin<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let twin = client.get_twin().await?;
            Python::attach(|py| Ok(json_to_py(py, &twin)?.unbind()))
        })
    }

    /// Patches the reported properties (a dict).
    fn update_reported<'py>(
        &self,
        py: Python<'py>,
        patch: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let patch = py_to_json(patch)?;
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            client.update_reported(&patch).await?;
            Ok(())
        })
    }

    /// Resolves to the next C2D message as `(body, properties, system_properties)` (`None`
    /// once closed).
    fn next_message<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            Ok(client.next_message().await.map(|m| {
                (
                    Python::attach(|py| pyo3::types::PyBytes::new(py, &m.body).unbind()),
                    m.properties,
                    m.system_properties,
                )
            }))
        })
    }

    /// Resolves to the next desired-properties patch (a dict; `None` once closed).
    fn next_desired<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let Some(patch) = client.next_desired().await else {
                return Ok(None);
            };
            Python::attach(|py| Ok(Some(json_to_py(py, &patch)?.unbind())))
        })
    }

    /// Resolves to the next direct method call as `(name, rid, payload)` (`None` once closed).
    fn next_method<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let Some(call) = client.next_method().await else {
                return Ok(None);
            };
            Python::attach(|py| {
                Ok(Some((
                    call.name,
                    call.rid,
                    json_to_py(py, &call.payload)?.unbind(),
                )))
            })
        })
    }

    /// Answers a direct method call.
    fn respond<'py>(
        &self,
        py: Python<'py>,
        rid: String,
        status: u16,
        payload: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let payload = py_to_json(payload)?;
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            client.respond(&rid, status, &payload).await?;
            Ok(())
        })
    }

    /// Disconnects cleanly (DISCONNECT, so no will is published).
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            client.close().await;
            Ok(())
        })
    }
}
