//! Bindings for the REST clients (`_native.RestClient`): ARM, the DPS service API and the hub
//! service API, for Azure and the emulator alike. Every call releases the GIL and blocks on the
//! object's runtime; answers are JSON text that the Python layer turns into records.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::provisioning::Trust;
use crate::python::pki::PyCertificateAuthority;
use crate::service::arm::{
    ArmClient, CaCertificateResource, DpsResource, HubResource, TokenSource,
};
use crate::service::dps::DpsServiceClient;
use crate::service::hub::HubServiceClient;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRestClient>()?;
    Ok(())
}

/// Service clients by (connection string, endpoint): one HTTPS pool and SAS token each.
type ClientCache<T> = Mutex<HashMap<(String, Option<String>), Arc<T>>>;

/// One client for the management plane and the service APIs of one subscription and resource
/// group.
#[pyclass(frozen, module = "dpskit._native", name = "RestClient")]
pub struct PyRestClient {
    runtime: super::OwnedRuntime,
    arm: ArmClient,
    trust: Trust,
    dps_clients: ClientCache<DpsServiceClient>,
    hub_clients: ClientCache<HubServiceClient>,
}

fn dps_json(d: &DpsResource) -> Value {
    json!({
        "name": d.name,
        "location": d.location,
        "idScope": d.id_scope,
        "serviceOperationsHostName": d.service_operations_host_name,
        "deviceProvisioningHostName": d.device_provisioning_host_name,
        "provisioningState": d.provisioning_state,
        "linkedHubs": d.linked_hubs.iter().map(|l| json!({
            "hostName": l.host_name,
            "location": l.location,
            "allocationWeight": l.allocation_weight,
            "applyAllocationPolicy": l.apply_allocation_policy,
        })).collect::<Vec<_>>(),
    })
}

fn hub_json(h: &HubResource) -> Value {
    json!({"name": h.name, "location": h.location, "hostName": h.host_name, "provisioningState": h.provisioning_state, "sku": h.sku, "units": h.units})
}

fn certificate_json(c: &CaCertificateResource) -> Value {
    json!({
        "name": c.name,
        "etag": c.etag,
        "subject": c.subject,
        "thumbprint": c.thumbprint,
        "isVerified": c.is_verified,
        "expiry": c.expiry,
        "created": c.created,
        "updated": c.updated,
        "verificationCode": c.verification_code,
        "certificate": c.certificate,
    })
}

fn text(value: &Value) -> String {
    value.to_string()
}

fn parse_body(what: &str, body: &str) -> Result<Value> {
    serde_json::from_str(body).map_err(|e| Error::Config(format!("{what} is not JSON: {e}")))
}

impl PyRestClient {
    /// Runs `work` on the runtime with the GIL released; Ctrl-C cancels it.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        work: impl std::future::Future<Output = Result<T>> + Send,
    ) -> PyResult<T> {
        Ok(super::block_on_interruptible(
            py,
            self.runtime.handle(),
            work,
        )??)
    }

    fn dps_client(
        &self,
        connection_string: &str,
        endpoint: Option<&str>,
    ) -> Result<Arc<DpsServiceClient>> {
        let key = (connection_string.to_string(), endpoint.map(str::to_string));
        let mut clients = self.dps_clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = Arc::new(DpsServiceClient::from_connection_string(
            connection_string,
            endpoint,
            &self.trust,
        )?);
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn hub_client(
        &self,
        connection_string: &str,
        endpoint: Option<&str>,
    ) -> Result<Arc<HubServiceClient>> {
        let key = (connection_string.to_string(), endpoint.map(str::to_string));
        let mut clients = self.hub_clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = Arc::new(HubServiceClient::from_connection_string(
            connection_string,
            endpoint,
            &self.trust,
        )?);
        clients.insert(key, client.clone());
        Ok(client)
    }
}

#[pymethods]
impl PyRestClient {
    /// `token` is called for each ARM request and returns a bearer token; `trust_pem` pins the
    /// server CA (the emulator's), otherwise the system roots are used.
    #[new]
    #[pyo3(signature = (arm_endpoint, subscription_id, resource_group, token, trust_pem = None))]
    fn new(
        arm_endpoint: &str,
        subscription_id: &str,
        resource_group: &str,
        token: Py<PyAny>,
        trust_pem: Option<&str>,
    ) -> PyResult<Self> {
        let trust = match trust_pem {
            Some(pem) => Trust::from_pem(pem.as_bytes())?,
            None => Trust::system(),
        };
        let source: TokenSource = Arc::new(move || {
            Python::attach(|py| {
                token
                    .call0(py)
                    .and_then(|t| t.extract::<String>(py))
                    .map_err(|e| {
                        Error::service(401, 401_000, format!("the credential gave no token: {e}"))
                    })
            })
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("dpskit-rest")
            .build()
            .map_err(|e| Error::Transport(format!("cannot start a runtime: {e}")))?;
        let arm = ArmClient::new(
            arm_endpoint,
            subscription_id,
            resource_group,
            source,
            &trust,
        )?;
        Ok(PyRestClient {
            runtime: super::OwnedRuntime::new(runtime),
            arm,
            trust,
            dps_clients: Mutex::default(),
            hub_clients: Mutex::default(),
        })
    }

    // ---- ARM ------------------------------------------------------------------------------

    /// Creates a hub; with `sku`, of that tier and `units`, its quotas enforced by the emulator.
    #[pyo3(signature = (name, location, sku = None, units = 1))]
    fn create_hub(
        &self,
        py: Python<'_>,
        name: &str,
        location: &str,
        sku: Option<&str>,
        units: u32,
    ) -> PyResult<String> {
        let sku = sku
            .map(|tier| crate::limits::HubSku::new(tier, units))
            .transpose()
            .map_err(Error::Config)?;
        self.run(py, async {
            self.arm
                .create_hub_with_sku(name, location, sku)
                .await
                .map(|h| text(&hub_json(&h)))
        })
    }

    fn hub(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        self.run(py, async {
            self.arm.hub(name).await.map(|h| text(&hub_json(&h)))
        })
    }

    fn hubs(&self, py: Python<'_>) -> PyResult<String> {
        self.run(py, async {
            let hubs = self.arm.hubs().await?;
            Ok(text(&Value::Array(hubs.iter().map(hub_json).collect())))
        })
    }

    fn delete_hub(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.run(py, self.arm.delete_hub(name))
    }

    fn hub_keys(&self, py: Python<'_>, name: &str) -> PyResult<(String, String)> {
        self.run(py, async {
            let keys = self.arm.hub_keys(name).await?;
            Ok((keys.key_name, keys.primary_key))
        })
    }

    /// A hub's tier and today's meter from ARM, in the shape of the emulator's usage (no
    /// throttle counts: Azure keeps those in Azure Monitor).
    fn hub_usage(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        self.run(py, async {
            self.arm.hub_usage(name).await.map(|u| {
                text(&json!({
                    "sku": u.sku,
                    "units": u.units,
                    "presets": true,
                    "daily_quota": u.daily_quota,
                    "messages_used": u.messages_used,
                    "meter_block_bytes": u.meter_block_bytes,
                    "resets_at": u.resets_at,
                    "throttled": null,
                    "quota_refusals": null,
                }))
            })
        })
    }

    #[pyo3(signature = (name, location, presets=false))]
    fn create_dps(
        &self,
        py: Python<'_>,
        name: &str,
        location: &str,
        presets: bool,
    ) -> PyResult<String> {
        self.run(py, async {
            self.arm
                .create_dps_with_presets(name, location, presets)
                .await
                .map(|d| text(&dps_json(&d)))
        })
    }

    fn dps(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        self.run(py, async {
            self.arm.dps(name).await.map(|d| text(&dps_json(&d)))
        })
    }

    fn dps_instances(&self, py: Python<'_>) -> PyResult<String> {
        self.run(py, async {
            let all = self.arm.dps_instances().await?;
            Ok(text(&Value::Array(all.iter().map(dps_json).collect())))
        })
    }

    fn delete_dps(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.run(py, self.arm.delete_dps(name))
    }

    fn dps_keys(&self, py: Python<'_>, name: &str) -> PyResult<(String, String)> {
        self.run(py, async {
            let keys = self.arm.dps_keys(name).await?;
            Ok((keys.key_name, keys.primary_key))
        })
    }

    #[pyo3(signature = (dps, hub, allocation_weight, apply_allocation_policy, location = None))]
    fn link_hub(
        &self,
        py: Python<'_>,
        dps: &str,
        hub: &str,
        allocation_weight: Option<u32>,
        apply_allocation_policy: bool,
        location: Option<&str>,
    ) -> PyResult<String> {
        self.run(py, async {
            self.arm
                .link_hub(
                    dps,
                    hub,
                    allocation_weight,
                    apply_allocation_policy,
                    location,
                )
                .await
                .map(|d| text(&dps_json(&d)))
        })
    }

    #[pyo3(signature = (dps, name, pem, verified, etag))]
    fn upload_ca_certificate(
        &self,
        py: Python<'_>,
        dps: &str,
        name: &str,
        pem: &str,
        verified: bool,
        etag: Option<&str>,
    ) -> PyResult<String> {
        let certificate = crate::pki::Certificate::from_pem(pem.as_bytes())?;
        self.run(py, async {
            self.arm
                .upload_ca_certificate(dps, name, &certificate, verified, etag)
                .await
                .map(|c| text(&certificate_json(&c)))
        })
    }

    fn ca_certificate(&self, py: Python<'_>, dps: &str, name: &str) -> PyResult<String> {
        self.run(py, async {
            self.arm
                .ca_certificate(dps, name)
                .await
                .map(|c| text(&certificate_json(&c)))
        })
    }

    fn ca_certificates(&self, py: Python<'_>, dps: &str) -> PyResult<String> {
        self.run(py, async {
            let all = self.arm.ca_certificates(dps).await?;
            Ok(text(&Value::Array(
                all.iter().map(certificate_json).collect(),
            )))
        })
    }

    fn delete_ca_certificate(
        &self,
        py: Python<'_>,
        dps: &str,
        name: &str,
        etag: &str,
    ) -> PyResult<()> {
        self.run(py, self.arm.delete_ca_certificate(dps, name, etag))
    }

    fn generate_verification_code(
        &self,
        py: Python<'_>,
        dps: &str,
        name: &str,
        etag: &str,
    ) -> PyResult<String> {
        self.run(py, async {
            self.arm
                .generate_verification_code(dps, name, etag)
                .await
                .map(|c| text(&certificate_json(&c)))
        })
    }

    fn verify_certificate(
        &self,
        py: Python<'_>,
        dps: &str,
        name: &str,
        etag: &str,
        pem: &str,
    ) -> PyResult<String> {
        let certificate = crate::pki::Certificate::from_pem(pem.as_bytes())?;
        self.run(py, async {
            self.arm
                .verify_certificate(dps, name, etag, &certificate)
                .await
                .map(|c| text(&certificate_json(&c)))
        })
    }

    fn prove_possession(
        &self,
        py: Python<'_>,
        dps: &str,
        name: &str,
        authority: Py<PyCertificateAuthority>,
    ) -> PyResult<String> {
        // Frozen: the CA is readable without the GIL while the call runs.
        let authority = &authority.get().inner;
        self.run(py, async {
            self.arm
                .prove_possession(dps, name, authority)
                .await
                .map(|c| text(&certificate_json(&c)))
        })
    }

    // ---- DPS service API --------------------------------------------------------------------

    #[pyo3(signature = (connection_string, endpoint, id, body, if_match = None))]
    fn put_enrollment_group(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
        id: &str,
        body: &str,
        if_match: Option<&str>,
    ) -> PyResult<String> {
        let client = self.dps_client(connection_string, endpoint)?;
        let body = parse_body("the enrollment group", body)?;
        self.run(py, async {
            client
                .put_enrollment_group(id, &body, if_match)
                .await
                .map(|v| text(&v))
        })
    }

    fn enrollment_group(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
        id: &str,
    ) -> PyResult<String> {
        let client = self.dps_client(connection_string, endpoint)?;
        self.run(py, async {
            client.enrollment_group(id).await.map(|v| text(&v))
        })
    }

    fn enrollment_groups(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
    ) -> PyResult<String> {
        let client = self.dps_client(connection_string, endpoint)?;
        self.run(py, async {
            client
                .enrollment_groups()
                .await
                .map(|v| text(&Value::Array(v)))
        })
    }

    #[pyo3(signature = (connection_string, endpoint, id, if_match = None))]
    fn delete_enrollment_group(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
        id: &str,
        if_match: Option<&str>,
    ) -> PyResult<()> {
        let client = self.dps_client(connection_string, endpoint)?;
        self.run(py, async {
            client.delete_enrollment_group(id, if_match).await
        })
    }

    fn enrollment_group_attestation(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
        id: &str,
    ) -> PyResult<String> {
        let client = self.dps_client(connection_string, endpoint)?;
        self.run(py, async {
            client
                .enrollment_group_attestation(id)
                .await
                .map(|v| text(&v))
        })
    }

    #[pyo3(signature = (connection_string, endpoint, id, body, if_match = None))]
    fn put_enrollment(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
        id: &str,
        body: &str,
        if_match: Option<&str>,
    ) -> PyResult<String> {
        let client = self.dps_client(connection_string, endpoint)?;
        let body = parse_body("the enrollment", body)?;
        self.run(py, async {
            client
                .put_enrollment(id, &body, if_match)
                .await
                .map(|v| text(&v))
        })
    }

    fn enrollment(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
        id: &str,
    ) -> PyResult<String> {
        let client = self.dps_client(connection_string, endpoint)?;
        self.run(py, async { client.enrollment(id).await.map(|v| text(&v)) })
    }

    fn enrollments(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
    ) -> PyResult<String> {
        let client = self.dps_client(connection_string, endpoint)?;
        self.run(py, async {
            client.enrollments().await.map(|v| text(&Value::Array(v)))
        })
    }

    #[pyo3(signature = (connection_string, endpoint, id, if_match = None))]
    fn delete_enrollment(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
        id: &str,
        if_match: Option<&str>,
    ) -> PyResult<()> {
        let client = self.dps_client(connection_string, endpoint)?;
        self.run(py, async { client.delete_enrollment(id, if_match).await })
    }

    fn registration(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
        id: &str,
    ) -> PyResult<String> {
        let client = self.dps_client(connection_string, endpoint)?;
        self.run(py, async {
            client.registration(id).await.map(|v| text(&v))
        })
    }

    fn registrations(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
        group_id: &str,
    ) -> PyResult<String> {
        let client = self.dps_client(connection_string, endpoint)?;
        self.run(py, async {
            client
                .registrations(group_id)
                .await
                .map(|v| text(&Value::Array(v)))
        })
    }

    #[pyo3(signature = (connection_string, endpoint, id, if_match = None))]
    fn delete_registration(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
        id: &str,
        if_match: Option<&str>,
    ) -> PyResult<()> {
        let client = self.dps_client(connection_string, endpoint)?;
        self.run(py, async { client.delete_registration(id, if_match).await })
    }

    // ---- hub service API ------------------------------------------------------------------

    fn hub_device(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
        id: &str,
    ) -> PyResult<String> {
        let client = self.hub_client(connection_string, endpoint)?;
        self.run(py, async { client.device(id).await.map(|v| text(&v)) })
    }

    fn hub_put_device(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
        id: &str,
        body: &str,
    ) -> PyResult<String> {
        let client = self.hub_client(connection_string, endpoint)?;
        let body = parse_body("the device identity", body)?;
        self.run(py, async {
            client.put_device(id, &body).await.map(|v| text(&v))
        })
    }

    fn hub_delete_device(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
        id: &str,
    ) -> PyResult<()> {
        let client = self.hub_client(connection_string, endpoint)?;
        self.run(py, async { client.delete_device(id).await })
    }

    fn hub_twins(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
    ) -> PyResult<String> {
        let client = self.hub_client(connection_string, endpoint)?;
        self.run(py, async {
            client.twins().await.map(|v| text(&Value::Array(v)))
        })
    }

    /// The hub's device identities as `(device_id, authentication, primary_thumbprint,
    /// connection_state)`.
    #[allow(clippy::type_complexity)]
    fn hub_device_list(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
    ) -> PyResult<Vec<(String, String, Option<String>, String)>> {
        let client = self.hub_client(connection_string, endpoint)?;
        let devices = self.run(py, async { client.devices().await })?;
        Ok(devices
            .into_iter()
            .map(|d| {
                (
                    d.device_id,
                    d.authentication,
                    d.primary_thumbprint,
                    d.connection_state,
                )
            })
            .collect())
    }

    fn hub_twin(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
        id: &str,
    ) -> PyResult<String> {
        let client = self.hub_client(connection_string, endpoint)?;
        self.run(py, async { client.twin(id).await.map(|v| text(&v)) })
    }

    fn hub_patch_twin(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
        id: &str,
        patch: &str,
    ) -> PyResult<String> {
        let client = self.hub_client(connection_string, endpoint)?;
        let patch = parse_body("the twin patch", patch)?;
        self.run(py, async {
            client.patch_twin(id, &patch).await.map(|v| text(&v))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn hub_invoke_method(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
        id: &str,
        method: &str,
        payload: &str,
        timeout: f64,
    ) -> PyResult<(u16, String)> {
        // Azure refuses a response timeout over 300 s: refused here, before any request.
        let timeout = crate::hub::method_timeout(timeout)?;
        let client = self.hub_client(connection_string, endpoint)?;
        let payload = parse_body("the method payload", payload)?;
        self.run(py, async {
            client
                .invoke_method(id, method, &payload, timeout)
                .await
                .map(|(status, payload)| (status, text(&payload)))
        })
    }

    fn hub_send_c2d(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
        id: &str,
        body: Vec<u8>,
        properties: Vec<(String, String)>,
    ) -> PyResult<String> {
        let client = self.hub_client(connection_string, endpoint)?;
        self.run(py, async { client.send_c2d(id, &body, &properties).await })
    }

    #[pyo3(signature = (connection_string, endpoint, device_id = None))]
    fn hub_telemetry(
        &self,
        py: Python<'_>,
        connection_string: &str,
        endpoint: Option<&str>,
        device_id: Option<&str>,
    ) -> PyResult<String> {
        let client = self.hub_client(connection_string, endpoint)?;
        self.run(py, async {
            client
                .telemetry(device_id)
                .await
                .map(|v| text(&Value::Array(v)))
        })
    }
}
