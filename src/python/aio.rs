//! Awaitable device clients (`_native.provision`, `_native.HubSession`): Rust futures on the
//! shared tokio runtime, handed to asyncio by pyo3-async-runtimes. Cancelling the Python task
//! drops the Rust future, which closes what it opened. Results are JSON text for the Python
//! layer to shape.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use serde_json::{Value, json};

use crate::error::Error;
use crate::hub::{ConnectionState, HubClient, HubConnectOptions, TelemetryMessage};
use crate::provisioning::{DeviceAuth, ProvisioningRequest, Trust, provision as provision_device};
use crate::python::pki::PyDeviceCertificate;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(provision, m)?)?;
    m.add_class::<PyHubSession>()?;
    Ok(())
}

fn trust(trust_pem: Option<&str>) -> PyResult<Trust> {
    Ok(match trust_pem {
        Some(pem) => Trust::from_pem(pem.as_bytes())?,
        None => Trust::system(),
    })
}

fn auth(
    certificate: Option<PyRef<'_, PyDeviceCertificate>>,
    symmetric_key: Option<String>,
) -> PyResult<DeviceAuth> {
    match (certificate, symmetric_key) {
        (Some(c), None) => Ok(DeviceAuth::X509(c.credential_arc())),
        (None, Some(key)) => Ok(DeviceAuth::SymmetricKey(key)),
        _ => Err(Error::Config(
            "give a certificate or a symmetric key, not both or neither".into(),
        )
        .into()),
    }
}

fn seconds(what: &str, value: f64) -> PyResult<Duration> {
    if value.is_finite() && value > 0.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(Error::Config(format!(
            "{what} must be a positive number of seconds, not {value}"
        ))
        .into())
    }
}

/// Registers one device with DPS; resolves to the registration result as JSON.
#[pyfunction]
#[pyo3(signature = (host, port, id_scope, registration_id, *, certificate = None, symmetric_key = None, trust_pem = None, payload = None, timeout = 60.0))]
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
    payload: Option<&str>,
    timeout: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let request = ProvisioningRequest {
        host,
        port,
        id_scope,
        registration_id,
        auth: auth(certificate, symmetric_key)?,
        payload: payload
            .map(|p| {
                serde_json::from_str(p)
                    .map_err(|e| Error::Config(format!("payload is not JSON: {e}")))
            })
            .transpose()?,
        timeout: seconds("timeout", timeout)?,
    };
    let trust = trust(trust_pem)?;
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        let r = provision_device(&request, &trust).await?;
        Ok(json!({
            "status": r.status,
            "registrationId": r.registration_id,
            "assignedHub": r.assigned_hub,
            "deviceId": r.device_id,
            "substatus": r.substatus,
            "etag": r.etag,
            "createdDateTimeUtc": r.created,
            "lastUpdatedDateTimeUtc": r.last_updated,
            "payload": r.payload,
            "operationId": r.operation_id,
        })
        .to_string())
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
    #[pyo3(signature = (host, port, device_id, *, certificate = None, symmetric_key = None, trust_pem = None, keep_alive = 60, timeout = 30.0))]
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
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut options =
            HubConnectOptions::new(host, port, device_id, auth(certificate, symmetric_key)?);
        options.keep_alive = keep_alive;
        options.connect_timeout = seconds("timeout", timeout)?;
        options.receive = true;
        let trust = trust(trust_pem)?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let client = HubClient::connect(options, &trust).await?;
            Ok(PyHubSession {
                client: Arc::new(client),
            })
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

    /// Resolves to the twin (JSON) as the device sees it.
    fn get_twin<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            Ok(client.get_twin().await?.to_string())
        })
    }

    /// Patches the reported properties (JSON text).
    fn update_reported<'py>(&self, py: Python<'py>, patch: &str) -> PyResult<Bound<'py, PyAny>> {
        let patch: Value = serde_json::from_str(patch)
            .map_err(|e| Error::Config(format!("the patch is not JSON: {e}")))?;
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            client.update_reported(&patch).await?;
            Ok(())
        })
    }

    /// Resolves to the next C2D message as JSON (`None` once closed).
    fn next_message<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            Ok(client.next_message().await.map(|m| {
                json!({
                    "body": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &m.body),
                    "properties": m.properties,
                    "systemProperties": m.system_properties,
                })
                .to_string()
            }))
        })
    }

    /// Resolves to the next desired-properties patch as JSON (`None` once closed).
    fn next_desired<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            Ok(client.next_desired().await.map(|d| d.to_string()))
        })
    }

    /// Resolves to the next direct method call as JSON (`None` once closed).
    fn next_method<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            Ok(client
                .next_method()
                .await
                .map(|m| json!({"name": m.name, "rid": m.rid, "payload": m.payload}).to_string()))
        })
    }

    /// Answers a direct method call.
    fn respond<'py>(
        &self,
        py: Python<'py>,
        rid: String,
        status: u16,
        payload: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let payload: Value = serde_json::from_str(payload)
            .map_err(|e| Error::Config(format!("the payload is not JSON: {e}")))?;
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
