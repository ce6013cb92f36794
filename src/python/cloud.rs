//! Bindings for the REST client under `dpskit.cloud` (`_native.RestClient`): ARM, the DPS
//! service API and the hub service API, for Azure and the emulator alike. Every call releases
//! the GIL and blocks on the object's runtime; answers cross as the records of `convert.rs`
//! (ARM's resources, usage, stored telemetry) and `records.rs` (the service APIs' enrollments,
//! registration states, device identities and twins), read into the shared serde type first;
//! only free-form JSON (a method's payload) crosses as Python objects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use serde_json::Value;

use super::convert::{
    self, CaCertificateRecord, CredentialPolicyRecord, DpsRecord, HubRecord, HubUsageRecord,
    NamespaceRecord, TelemetryRecord, json_to_py,
};
use super::records::{
    self, AttestationRecord, EnrollmentGroupRecord, HubDeviceRecord, IndividualEnrollmentRecord,
    RegistrationStateRecord, ServiceTwinRecord,
};
use crate::error::{Error, Result};
use crate::protocol::dps_service::{AttestationMechanism, EnrollmentGroup, IndividualEnrollment};
use crate::protocol::hub_service::{DeviceIdentity, Twin};
use crate::provisioning::Trust;
use crate::python::pki::PyCertificateAuthority;
use crate::service::arm::{ArmClient, TokenSource};
use crate::service::dps::DpsServiceClient;
use crate::service::hub::HubServiceClient;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRestClient>()?;
    m.add_function(wrap_pyfunction!(validate_resource_name, m)?)?;
    m.add_function(wrap_pyfunction!(validate_symmetric_key, m)?)?;
    m.add_function(wrap_pyfunction!(generate_symmetric_key, m)?)?;
    m.add_function(wrap_pyfunction!(write_secret, m)?)?;
    Ok(())
}

/// Refuses (`ConfigError`) a CA certificate or enrollment group name Azure would refuse.
#[pyfunction]
fn validate_resource_name(kind: &str, name: &str) -> PyResult<()> {
    Ok(crate::protocol::names::check_resource_name(kind, name)?)
}

/// Refuses (`ConfigError`) a symmetric key Azure would refuse: base64 of at least 16 bytes.
#[pyfunction]
fn validate_symmetric_key(which: &str, key: &str) -> PyResult<()> {
    Ok(crate::sas::validate_symmetric_key(which, key)?)
}

/// A fresh random 256-bit symmetric key, base64 (what Azure generates).
#[pyfunction]
fn generate_symmetric_key() -> PyResult<String> {
    Ok(crate::sas::generate_key()?)
}

/// Writes `data` to `path` readable by its owner only (0600, tightened first when the file
/// existed looser; Windows has no modes: the folder's ACL rules).
#[pyfunction]
fn write_secret(py: Python<'_>, path: std::path::PathBuf, data: &[u8]) -> PyResult<()> {
    py.detach(|| crate::pki::files::write_secret(&path, data))?;
    Ok(())
}

/// Service clients by connection string (whose host is where the API is, on Azure and the
/// local cloud alike): one HTTPS pool and SAS token each.
type ClientCache<T> = Mutex<HashMap<String, Arc<T>>>;

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

/// A JSON body given by Python (a dict), as the core takes it.
fn body(value: &Bound<'_, PyAny>) -> PyResult<Value> {
    convert::py_to_json(value)
}

/// A body given by Python (a dict) read into the service type it must be, refused
/// (`ConfigError`) before any request when it does not read.
fn typed_body<T: serde::de::DeserializeOwned>(value: &Bound<'_, PyAny>, what: &str) -> PyResult<T> {
    let json = body(value)?;
    Ok(serde_json::from_value(json).map_err(|e| Error::config_caused(what.to_string(), e))?)
}

impl PyRestClient {
    /// The management client (the doctor's online checks read the DPS through it).
    pub(crate) fn arm(&self) -> &ArmClient {
        &self.arm
    }

    /// What the service APIs' TLS is checked against.
    pub(crate) fn trust(&self) -> &Trust {
        &self.trust
    }

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

    fn dps_client(&self, connection_string: &str) -> Result<Arc<DpsServiceClient>> {
        let key = connection_string.to_string();
        let mut clients = self.dps_clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = Arc::new(DpsServiceClient::from_connection_string(
            connection_string,
            None,
            &self.trust,
        )?);
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn hub_client(&self, connection_string: &str) -> Result<Arc<HubServiceClient>> {
        let key = connection_string.to_string();
        let mut clients = self.hub_clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = Arc::new(HubServiceClient::from_connection_string(
            connection_string,
            None,
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
        let trust = super::trust(trust_pem)?;
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
        let arm = ArmClient::new(
            arm_endpoint,
            subscription_id,
            resource_group,
            source,
            &trust,
        )?;
        Ok(PyRestClient {
            runtime: super::runtime("dpskit-rest", Some(2))?,
            arm,
            trust,
            dps_clients: Mutex::default(),
            hub_clients: Mutex::default(),
        })
    }

    // ---- ARM ------------------------------------------------------------------------------

    /// Creates a hub; with `sku`, of that tier and `units`, its quotas enforced by the emulator;
    /// with `partition_count`, that many partitions on its events endpoint.
    #[pyo3(signature = (name, location, sku = None, units = 1, partition_count = None))]
    fn create_hub(
        &self,
        py: Python<'_>,
        name: &str,
        location: &str,
        sku: Option<&str>,
        units: u32,
        partition_count: Option<u32>,
    ) -> PyResult<HubRecord> {
        let sku = sku
            .map(|tier| crate::limits::HubSku::new(tier, units))
            .transpose()
            .map_err(Error::config)?;
        let created = self
            .arm
            .create_hub_with(name, location, sku, partition_count);
        let hub = self.run(py, created)?;
        Ok(hub.into())
    }

    /// A hub resource.
    fn hub(&self, py: Python<'_>, name: &str) -> PyResult<HubRecord> {
        Ok(self.run(py, self.arm.hub(name))?.into())
    }

    /// Every hub resource of the resource group.
    fn hubs(&self, py: Python<'_>) -> PyResult<Vec<HubRecord>> {
        let hubs = self.run(py, self.arm.hubs())?;
        Ok(hubs.into_iter().map(HubRecord::from).collect())
    }

    /// Deletes a hub and waits until ARM has.
    fn delete_hub(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.run(py, self.arm.delete_hub(name))
    }

    /// The consumer groups of a hub's events endpoint, `$Default` first.
    fn consumer_groups(&self, py: Python<'_>, hub: &str) -> PyResult<Vec<String>> {
        self.run(py, self.arm.consumer_groups(hub))
    }

    /// Creates a consumer group on a hub's events endpoint.
    fn create_consumer_group(&self, py: Python<'_>, hub: &str, group: &str) -> PyResult<()> {
        self.run(py, self.arm.create_consumer_group(hub, group))
    }

    /// Deletes a consumer group of a hub's events endpoint.
    fn delete_consumer_group(&self, py: Python<'_>, hub: &str, group: &str) -> PyResult<()> {
        self.run(py, self.arm.delete_consumer_group(hub, group))
    }

    /// A shared access policy's name and primary key (`iothubowner` unless named).
    #[pyo3(signature = (name, policy = "iothubowner"))]
    fn hub_keys(&self, py: Python<'_>, name: &str, policy: &str) -> PyResult<(String, String)> {
        let keys = self.run(py, self.arm.hub_policy_keys(name, policy))?;
        Ok((keys.key_name, keys.primary_key))
    }

    /// A hub's tier and today's meter from ARM (no throttle counts: Azure keeps those in
    /// Azure Monitor).
    fn hub_usage(&self, py: Python<'_>, name: &str) -> PyResult<HubUsageRecord> {
        Ok(self.run(py, self.arm.hub_usage(name))?.into())
    }

    /// Creates a DPS instance (with `presets`, Azure's DPS rates enforced by the emulator).
    #[pyo3(signature = (name, location, presets=false))]
    fn create_dps(
        &self,
        py: Python<'_>,
        name: &str,
        location: &str,
        presets: bool,
    ) -> PyResult<DpsRecord> {
        let dps = self.run(
            py,
            self.arm.create_dps_with_presets(name, location, presets),
        )?;
        convert::dps_record(py, dps)
    }

    /// A DPS resource.
    fn dps(&self, py: Python<'_>, name: &str) -> PyResult<DpsRecord> {
        let dps = self.run(py, self.arm.dps(name))?;
        convert::dps_record(py, dps)
    }

    /// Every DPS resource of the resource group.
    fn dps_instances(&self, py: Python<'_>) -> PyResult<Vec<DpsRecord>> {
        let all = self.run(py, self.arm.dps_instances())?;
        all.into_iter()
            .map(|d| convert::dps_record(py, d))
            .collect()
    }

    /// Deletes a DPS instance and waits until ARM has.
    fn delete_dps(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.run(py, self.arm.delete_dps(name))
    }

    /// The `provisioningserviceowner` policy name and primary key.
    fn dps_keys(&self, py: Python<'_>, name: &str) -> PyResult<(String, String)> {
        let keys = self.run(py, self.arm.dps_keys(name))?;
        Ok((keys.key_name, keys.primary_key))
    }

    /// Links a hub to a DPS (or updates the link); returns the DPS resource.
    #[pyo3(signature = (dps, hub, allocation_weight, apply_allocation_policy, location = None))]
    fn link_hub(
        &self,
        py: Python<'_>,
        dps: &str,
        hub: &str,
        allocation_weight: Option<u32>,
        apply_allocation_policy: bool,
        location: Option<&str>,
    ) -> PyResult<DpsRecord> {
        let resource = self.run(
            py,
            self.arm.link_hub(
                dps,
                hub,
                allocation_weight,
                apply_allocation_policy,
                location,
            ),
        )?;
        convert::dps_record(py, resource)
    }

    // ---- Azure Device Registry --------------------------------------------------------------

    /// Creates a Device Registry namespace (or returns the existing one).
    fn create_device_registry_namespace(
        &self,
        py: Python<'_>,
        name: &str,
        location: &str,
    ) -> PyResult<NamespaceRecord> {
        let ns = self.run(
            py,
            self.arm.create_device_registry_namespace(name, location),
        )?;
        Ok(ns.into())
    }

    /// A Device Registry namespace.
    fn device_registry_namespace(&self, py: Python<'_>, name: &str) -> PyResult<NamespaceRecord> {
        Ok(self
            .run(py, self.arm.device_registry_namespace(name))?
            .into())
    }

    /// Every Device Registry namespace of the resource group.
    fn device_registry_namespaces(&self, py: Python<'_>) -> PyResult<Vec<NamespaceRecord>> {
        let all = self.run(py, self.arm.device_registry_namespaces())?;
        Ok(all.into_iter().map(Into::into).collect())
    }

    /// Deletes a Device Registry namespace.
    fn delete_device_registry_namespace(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.run(py, self.arm.delete_device_registry_namespace(name))
    }

    /// Creates (or changes the validity of) a namespace's credential policy.
    fn create_credential_policy(
        &self,
        py: Python<'_>,
        namespace: &str,
        name: &str,
        validity_days: u32,
        key_type: &str,
    ) -> PyResult<CredentialPolicyRecord> {
        let policy = self.run(
            py,
            self.arm
                .create_credential_policy(namespace, name, validity_days, key_type),
        )?;
        Ok(policy.into())
    }

    /// A namespace's credential policy.
    fn credential_policy(
        &self,
        py: Python<'_>,
        namespace: &str,
        name: &str,
    ) -> PyResult<CredentialPolicyRecord> {
        Ok(self
            .run(py, self.arm.credential_policy(namespace, name))?
            .into())
    }

    /// Every credential policy of a namespace.
    fn credential_policies(
        &self,
        py: Python<'_>,
        namespace: &str,
    ) -> PyResult<Vec<CredentialPolicyRecord>> {
        let all = self.run(py, self.arm.credential_policies(namespace))?;
        Ok(all.into_iter().map(Into::into).collect())
    }

    /// Links a DPS (`kind` "dps") or hub ("hub") to a Device Registry namespace.
    fn link_namespace(
        &self,
        py: Python<'_>,
        kind: &str,
        name: &str,
        namespace: &str,
    ) -> PyResult<()> {
        let target = match kind {
            "dps" => crate::service::NamespaceLinkTarget::Dps,
            "hub" => crate::service::NamespaceLinkTarget::Hub,
            other => {
                return Err(Error::config(format!(
                    "a namespace links a \"dps\" or a \"hub\", not {other:?}"
                ))
                .into());
            }
        };
        self.run(py, self.arm.link_namespace(target, name, namespace))
    }

    /// Uploads (`etag` None) or replaces (`etag` the current one) a CA certificate.
    #[pyo3(signature = (dps, name, pem, verified, etag))]
    fn upload_ca_certificate(
        &self,
        py: Python<'_>,
        dps: &str,
        name: &str,
        pem: &str,
        verified: bool,
        etag: Option<&str>,
    ) -> PyResult<CaCertificateRecord> {
        let certificate = crate::pki::Certificate::from_pem(pem.as_bytes())?;
        let record = self.run(
            py,
            self.arm
                .upload_ca_certificate(dps, name, &certificate, verified, etag),
        )?;
        Ok(record.into())
    }

    /// One CA certificate.
    fn ca_certificate(
        &self,
        py: Python<'_>,
        dps: &str,
        name: &str,
    ) -> PyResult<CaCertificateRecord> {
        Ok(self.run(py, self.arm.ca_certificate(dps, name))?.into())
    }

    /// Every CA certificate of a DPS.
    fn ca_certificates(&self, py: Python<'_>, dps: &str) -> PyResult<Vec<CaCertificateRecord>> {
        let all = self.run(py, self.arm.ca_certificates(dps))?;
        Ok(all.into_iter().map(CaCertificateRecord::from).collect())
    }

    /// Deletes a CA certificate (`etag`: its current one, or `*`).
    fn delete_ca_certificate(
        &self,
        py: Python<'_>,
        dps: &str,
        name: &str,
        etag: &str,
    ) -> PyResult<()> {
        self.run(py, self.arm.delete_ca_certificate(dps, name, etag))
    }

    /// Asks for a verification code; the record carries it.
    fn generate_verification_code(
        &self,
        py: Python<'_>,
        dps: &str,
        name: &str,
        etag: &str,
    ) -> PyResult<CaCertificateRecord> {
        let record = self.run(py, self.arm.generate_verification_code(dps, name, etag))?;
        Ok(record.into())
    }

    /// Verifies possession with a verification certificate (PEM).
    fn verify_certificate(
        &self,
        py: Python<'_>,
        dps: &str,
        name: &str,
        etag: &str,
        pem: &str,
    ) -> PyResult<CaCertificateRecord> {
        let certificate = crate::pki::Certificate::from_pem(pem.as_bytes())?;
        let record = self.run(
            py,
            self.arm.verify_certificate(dps, name, etag, &certificate),
        )?;
        Ok(record.into())
    }

    /// The whole proof of possession in one call (`ArmClient::prove_possession`).
    fn prove_possession(
        &self,
        py: Python<'_>,
        dps: &str,
        name: &str,
        authority: Py<PyCertificateAuthority>,
    ) -> PyResult<CaCertificateRecord> {
        // Frozen: the CA is readable without the GIL while the call runs.
        let authority = &authority.get().inner;
        let record = self.run(py, self.arm.prove_possession(dps, name, authority))?;
        Ok(record.into())
    }

    // ---- DPS service API --------------------------------------------------------------------

    /// Creates or replaces an enrollment group from its service JSON (a dict, read into the
    /// service type before it is sent); `attestation`, when given, is sent as the group's
    /// attestation exactly as it was read. Returns the group as the service answered it.
    #[pyo3(signature = (connection_string, id, body, if_match = None, attestation = None))]
    #[allow(clippy::too_many_arguments)]
    fn put_enrollment_group(
        &self,
        py: Python<'_>,
        connection_string: &str,
        id: &str,
        body: &Bound<'_, PyAny>,
        if_match: Option<&str>,
        attestation: Option<PyRef<'_, AttestationRecord>>,
    ) -> PyResult<EnrollmentGroupRecord> {
        let client = self.dps_client(connection_string)?;
        let mut body: EnrollmentGroup = typed_body(body, "the enrollment group")?;
        if let Some(attestation) = attestation {
            body.attestation = Some(attestation.mechanism().clone());
        }
        let group = self.run(py, client.put_enrollment_group(id, &body, if_match))?;
        records::enrollment_group(py, group)
    }

    /// An enrollment group.
    fn enrollment_group(
        &self,
        py: Python<'_>,
        connection_string: &str,
        id: &str,
    ) -> PyResult<EnrollmentGroupRecord> {
        let client = self.dps_client(connection_string)?;
        let group = self.run(py, client.enrollment_group(id))?;
        records::enrollment_group(py, group)
    }

    /// Every enrollment group.
    fn enrollment_groups(
        &self,
        py: Python<'_>,
        connection_string: &str,
    ) -> PyResult<Vec<EnrollmentGroupRecord>> {
        let client = self.dps_client(connection_string)?;
        let groups = self.run(py, client.enrollment_groups())?;
        groups
            .into_iter()
            .map(|g| records::enrollment_group(py, g))
            .collect()
    }

    /// Deletes an enrollment group.
    #[pyo3(signature = (connection_string, id, if_match = None))]
    fn delete_enrollment_group(
        &self,
        py: Python<'_>,
        connection_string: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> PyResult<()> {
        let client = self.dps_client(connection_string)?;
        self.run(py, client.delete_enrollment_group(id, if_match))
    }

    /// An enrollment group's attestation mechanism, keys included.
    fn enrollment_group_attestation(
        &self,
        py: Python<'_>,
        connection_string: &str,
        id: &str,
    ) -> PyResult<AttestationRecord> {
        let client = self.dps_client(connection_string)?;
        let mechanism: AttestationMechanism =
            self.run(py, client.enrollment_group_attestation(id))?;
        records::attestation(py, mechanism, true)
    }

    /// Creates or replaces an individual enrollment from its service JSON (a dict, read into
    /// the service type before it is sent); returns it as the service answered it.
    #[pyo3(signature = (connection_string, id, body, if_match = None))]
    fn put_enrollment(
        &self,
        py: Python<'_>,
        connection_string: &str,
        id: &str,
        body: &Bound<'_, PyAny>,
        if_match: Option<&str>,
    ) -> PyResult<IndividualEnrollmentRecord> {
        let client = self.dps_client(connection_string)?;
        let body: IndividualEnrollment = typed_body(body, "the enrollment")?;
        let enrollment = self.run(py, client.put_enrollment(id, &body, if_match))?;
        records::enrollment(py, enrollment)
    }

    /// An individual enrollment.
    fn enrollment(
        &self,
        py: Python<'_>,
        connection_string: &str,
        id: &str,
    ) -> PyResult<IndividualEnrollmentRecord> {
        let client = self.dps_client(connection_string)?;
        let enrollment = self.run(py, client.enrollment(id))?;
        records::enrollment(py, enrollment)
    }

    /// Every individual enrollment.
    fn enrollments(
        &self,
        py: Python<'_>,
        connection_string: &str,
    ) -> PyResult<Vec<IndividualEnrollmentRecord>> {
        let client = self.dps_client(connection_string)?;
        let all = self.run(py, client.enrollments())?;
        all.into_iter()
            .map(|e| records::enrollment(py, e))
            .collect()
    }

    /// Deletes an individual enrollment.
    #[pyo3(signature = (connection_string, id, if_match = None))]
    fn delete_enrollment(
        &self,
        py: Python<'_>,
        connection_string: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> PyResult<()> {
        let client = self.dps_client(connection_string)?;
        self.run(py, client.delete_enrollment(id, if_match))
    }

    /// A device's registration state.
    fn registration(
        &self,
        py: Python<'_>,
        connection_string: &str,
        id: &str,
    ) -> PyResult<RegistrationStateRecord> {
        let client = self.dps_client(connection_string)?;
        let state = self.run(py, client.registration(id))?;
        records::registration_state(py, state)
    }

    /// The registration states of an enrollment group.
    fn registrations(
        &self,
        py: Python<'_>,
        connection_string: &str,
        group_id: &str,
    ) -> PyResult<Vec<RegistrationStateRecord>> {
        let client = self.dps_client(connection_string)?;
        let states = self.run(py, client.registrations(group_id))?;
        states
            .into_iter()
            .map(|s| records::registration_state(py, s))
            .collect()
    }

    /// Deletes a registration state.
    #[pyo3(signature = (connection_string, id, if_match = None))]
    fn delete_registration(
        &self,
        py: Python<'_>,
        connection_string: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> PyResult<()> {
        let client = self.dps_client(connection_string)?;
        self.run(py, client.delete_registration(id, if_match))
    }

    // ---- hub service API ------------------------------------------------------------------

    /// A device identity, keys included.
    fn hub_device(
        &self,
        py: Python<'_>,
        connection_string: &str,
        id: &str,
    ) -> PyResult<HubDeviceRecord> {
        let client = self.hub_client(connection_string)?;
        let identity: DeviceIdentity = self.run(py, client.device(id))?;
        Ok(identity.into())
    }

    /// Creates or replaces a device identity from its service JSON (a dict); returns it.
    fn hub_put_device(
        &self,
        py: Python<'_>,
        connection_string: &str,
        id: &str,
        body: &Bound<'_, PyAny>,
    ) -> PyResult<HubDeviceRecord> {
        let client = self.hub_client(connection_string)?;
        let body = self::body(body)?;
        let identity: DeviceIdentity = self.run(py, client.put_device(id, &body))?;
        Ok(identity.into())
    }

    /// Deletes a device identity.
    fn hub_delete_device(&self, py: Python<'_>, connection_string: &str, id: &str) -> PyResult<()> {
        let client = self.hub_client(connection_string)?;
        self.run(py, client.delete_device(id))
    }

    /// The device twins an IoT Hub query selects, every page.
    #[pyo3(signature = (connection_string, query = "SELECT * FROM devices"))]
    fn hub_twins(
        &self,
        py: Python<'_>,
        connection_string: &str,
        query: &str,
    ) -> PyResult<Vec<ServiceTwinRecord>> {
        let client = self.hub_client(connection_string)?;
        let twins: Vec<Twin> = self.run(py, client.query(query))?;
        twins
            .into_iter()
            .map(|t| records::service_twin(py, t))
            .collect()
    }

    /// The hub's device identities, from the twins of one query call per page (no keys).
    fn hub_device_list(
        &self,
        py: Python<'_>,
        connection_string: &str,
    ) -> PyResult<Vec<HubDeviceRecord>> {
        let client = self.hub_client(connection_string)?;
        let twins: Vec<Twin> = self.run(py, client.twins())?;
        Ok(twins.into_iter().map(HubDeviceRecord::from).collect())
    }

    /// A device twin.
    fn hub_twin(
        &self,
        py: Python<'_>,
        connection_string: &str,
        id: &str,
    ) -> PyResult<ServiceTwinRecord> {
        let client = self.hub_client(connection_string)?;
        let twin: Twin = self.run(py, client.twin(id))?;
        records::service_twin(py, twin)
    }

    /// Patches a twin (tags, desired properties: a dict); returns the twin.
    fn hub_patch_twin(
        &self,
        py: Python<'_>,
        connection_string: &str,
        id: &str,
        patch: &Bound<'_, PyAny>,
    ) -> PyResult<ServiceTwinRecord> {
        let client = self.hub_client(connection_string)?;
        let patch = body(patch)?;
        let twin: Twin = self.run(py, client.patch_twin(id, &patch))?;
        records::service_twin(py, twin)
    }

    /// Invokes a direct method (any JSON-like payload) and waits: `(status, payload)`.
    #[allow(clippy::too_many_arguments)]
    fn hub_invoke_method<'py>(
        &self,
        py: Python<'py>,
        connection_string: &str,
        id: &str,
        method: &str,
        payload: &Bound<'py, PyAny>,
        timeout: f64,
    ) -> PyResult<(u16, Bound<'py, PyAny>)> {
        // Azure refuses a response timeout over 300 s: refused here, before any request.
        let timeout = crate::hub::method_timeout(timeout)?;
        let client = self.hub_client(connection_string)?;
        let payload = body(payload)?;
        let (status, answer) = self.run(py, client.invoke_method(id, method, &payload, timeout))?;
        Ok((status, json_to_py(py, &answer)?))
    }

    /// The telemetry the hub stored (emulator only), in arrival order.
    #[pyo3(signature = (connection_string, device_id = None))]
    fn hub_telemetry(
        &self,
        py: Python<'_>,
        connection_string: &str,
        device_id: Option<&str>,
    ) -> PyResult<Vec<TelemetryRecord>> {
        let client = self.hub_client(connection_string)?;
        let messages = self.run(py, client.telemetry(device_id))?;
        Ok(messages
            .into_iter()
            .map(|m| convert::telemetry_record(py, m))
            .collect())
    }
}
