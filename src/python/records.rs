//! The service APIs' records as Python sees them: enrollment groups, individual enrollments,
//! their attestation and settings, registration states (the DPS service API), device
//! identities and twins (the hub service API). The REST client reads each answer into the
//! shared serde type (`protocol::dps_service`, `protocol::hub_service`), which refuses what does
//! not parse; this module turns that type field by field into a frozen class (stubs in
//! `dpskit/_native.pyi`, checked by stubtest) and refuses, as a `ProtocolError`, an answer that
//! lacks a member every answer carries (an enrollment's `attestation`, `etag`, ...). Free-form
//! JSON (initial twins, twin sections, custom allocation payloads) stays a dict inside the
//! record. `dpskit.cloud`'s dataclasses are built from these by their `_from_native`.
//!
//! Symmetric keys are secrets: the records holding them print `<redacted>` in their `repr`.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde::Serialize;
use serde_json::{Map, Value};

use super::convert::json_to_py;
use crate::error::{Error, Result};
use crate::protocol::dps_service::{
    AttestationMechanism, DeviceRegistrationState, EnrollmentGroup, EnrollmentPolicies,
    IndividualEnrollment, PolicyReference, X509Attestation, X509CertificateInfo,
};
use crate::protocol::hub_service::{DeviceIdentity, Twin, X509Thumbprint};

/// Registers the record classes.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<X509CertificateInfoRecord>()?;
    m.add_class::<AttestationRecord>()?;
    m.add_class::<ReprovisionPolicyRecord>()?;
    m.add_class::<CustomAllocationRecord>()?;
    m.add_class::<AllocationRecord>()?;
    m.add_class::<CapabilitiesRecord>()?;
    m.add_class::<CredentialPolicyReferenceRecord>()?;
    m.add_class::<EnrollmentSettingsRecord>()?;
    m.add_class::<EnrollmentGroupRecord>()?;
    m.add_class::<IndividualEnrollmentRecord>()?;
    m.add_class::<RegistrationStateRecord>()?;
    m.add_class::<HubDeviceRecord>()?;
    m.add_class::<X509ThumbprintRecord>()?;
    m.add_class::<ServiceTwinRecord>()?;
    Ok(())
}

/// A member every answer of its kind carries, or a `Protocol` error naming it.
fn required<T>(value: Option<T>, member: &str, what: &str) -> Result<T> {
    value.ok_or_else(|| Error::protocol(format!("{what}: the answer has no {member:?}")))
}

/// The wire spelling of a protocol enum (`geoLatency`, `symmetricKey`), as its serde type
/// writes it: the spelling lives once, in `protocol`.
fn wire_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        other => format!("{other:?}"),
    }
}

/// A JSON object as a dict.
fn dict(py: Python<'_>, map: Map<String, Value>) -> PyResult<Py<PyDict>> {
    let value = json_to_py(py, &Value::Object(map))?;
    Ok(value.cast_into::<PyDict>()?.unbind())
}

/// `<redacted>` for a key that is there.
fn redacted(key: &Option<String>) -> &'static str {
    if key.is_some() { "<redacted>" } else { "None" }
}

// ---- DPS service API --------------------------------------------------------------------------

/// What the DPS service API says of a certificate in an enrollment (`X509CertificateInfo`;
/// times are Azure's RFC 3339 text).
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct X509CertificateInfoRecord {
    subject_name: String,
    sha1_thumbprint: String,
    sha256_thumbprint: String,
    issuer_name: String,
    not_before_utc: String,
    not_after_utc: String,
    serial_number: String,
    version: u32,
}

impl From<X509CertificateInfo> for X509CertificateInfoRecord {
    fn from(i: X509CertificateInfo) -> Self {
        X509CertificateInfoRecord {
            subject_name: i.subject_name,
            sha1_thumbprint: i.sha1_thumbprint,
            sha256_thumbprint: i.sha256_thumbprint,
            issuer_name: i.issuer_name,
            not_before_utc: i.not_before_utc,
            not_after_utc: i.not_after_utc,
            serial_number: i.serial_number,
            version: i.version,
        }
    }
}

/// An enrollment's attestation mechanism: its kind (`x509`, `symmetricKey` or `tpm`), the CA
/// references or certificate infos of an X.509 one, the keys of a symmetric-key one. The
/// mechanism as read is kept inside, so an update sends it back unchanged (Azure wants it in
/// every enrollment PUT).
#[pyclass(frozen, module = "dpskit._native")]
pub(crate) struct AttestationRecord {
    #[pyo3(get)]
    kind: String,
    #[pyo3(get)]
    primary_ca_reference: Option<String>,
    #[pyo3(get)]
    secondary_ca_reference: Option<String>,
    #[pyo3(get)]
    primary_certificate: Option<Py<X509CertificateInfoRecord>>,
    #[pyo3(get)]
    secondary_certificate: Option<Py<X509CertificateInfoRecord>>,
    #[pyo3(get)]
    primary_key: Option<String>,
    #[pyo3(get)]
    secondary_key: Option<String>,
    mechanism: AttestationMechanism,
}

#[pymethods]
impl AttestationRecord {
    fn __repr__(&self) -> String {
        format!(
            "AttestationRecord(kind={:?}, primary_ca_reference={:?}, \
             secondary_ca_reference={:?}, primary_key={}, secondary_key={})",
            self.kind,
            self.primary_ca_reference,
            self.secondary_ca_reference,
            redacted(&self.primary_key),
            redacted(&self.secondary_key),
        )
    }
}

impl AttestationRecord {
    /// The mechanism exactly as the service answered it.
    pub(crate) fn mechanism(&self) -> &AttestationMechanism {
        &self.mechanism
    }
}

/// Builds an [`AttestationRecord`]; `group` picks the certificates a group carries
/// (`signingCertificates`) over an individual enrollment's (`clientCertificates`).
pub(crate) fn attestation(
    py: Python<'_>,
    mechanism: AttestationMechanism,
    group: bool,
) -> PyResult<AttestationRecord> {
    let x509: X509Attestation = mechanism.x509.clone().unwrap_or_default();
    let references = x509.ca_references.clone().unwrap_or_default();
    let certificates = x509.certificates(group).cloned().unwrap_or_default();
    let info = |slot: Option<crate::protocol::dps_service::X509CertificateWithInfo>| {
        slot.and_then(|c| c.info)
            .map(|i| Py::new(py, X509CertificateInfoRecord::from(i)))
            .transpose()
    };
    let keys = mechanism.symmetric_key.clone().unwrap_or_default();
    Ok(AttestationRecord {
        kind: wire_name(&mechanism.kind),
        primary_ca_reference: references.primary,
        secondary_ca_reference: references.secondary,
        primary_certificate: info(certificates.primary)?,
        secondary_certificate: info(certificates.secondary)?,
        primary_key: keys.primary_key,
        secondary_key: keys.secondary_key,
        mechanism,
    })
}

/// What DPS does when a registered device registers again.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct ReprovisionPolicyRecord {
    update_hub_assignment: bool,
    migrate_device_data: bool,
}

/// A custom allocation's target: a webhook URL (or the emulator's `python:<name>`) and the
/// api-version sent to it.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct CustomAllocationRecord {
    webhook_url: String,
    api_version: String,
}

/// How DPS picks a hub for an enrollment: the policy (`None`: the DPS's), the hubs it may
/// use (empty: every linked hub; `iot_hub_host_name` is the older API's single hub) and the
/// custom allocation target.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct AllocationRecord {
    policy: Option<String>,
    iot_hubs: Vec<String>,
    iot_hub_host_name: Option<String>,
    custom: Option<Py<CustomAllocationRecord>>,
}

/// Whether the enrolled devices are IoT Edge devices.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct CapabilitiesRecord {
    iot_edge: bool,
}

/// The Device Registry policy that issues an enrollment's certificates: by name alone
/// (`credentialPolicyName`, in the DPS's namespace), or with its namespace and issuing CA (the
/// newer API's three names).
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct CredentialPolicyReferenceRecord {
    policy: String,
    namespace: Option<String>,
    certificate_authority: Option<String>,
}

/// The settings groups and individual enrollments share, with the service's defaults applied
/// (enabled; both reprovision flags true).
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct EnrollmentSettingsRecord {
    provisioning_status: String,
    reprovision_policy: Py<ReprovisionPolicyRecord>,
    allocation: Py<AllocationRecord>,
    initial_twin: Option<Py<PyDict>>,
    capabilities: Option<Py<CapabilitiesRecord>>,
    credential_policy: Option<Py<CredentialPolicyReferenceRecord>>,
}

/// The settings, etag and times of an enrollment answer.
struct Answered {
    settings: EnrollmentSettingsRecord,
    etag: String,
    created: String,
    updated: String,
}

fn answered(py: Python<'_>, p: EnrollmentPolicies, what: &str) -> PyResult<Answered> {
    let credential_policy = match p.policy_reference()? {
        None => None,
        Some(PolicyReference::Name(policy)) => Some(CredentialPolicyReferenceRecord {
            policy,
            namespace: None,
            certificate_authority: None,
        }),
        Some(PolicyReference::Names {
            namespace,
            certificate_authority,
            policy,
        }) => Some(CredentialPolicyReferenceRecord {
            policy,
            namespace: Some(namespace),
            certificate_authority: Some(certificate_authority),
        }),
    }
    .map(|r| Py::new(py, r))
    .transpose()?;
    let policy = p.reprovision_policy.unwrap_or_default();
    let custom = p
        .custom_allocation_definition
        .map(|c| {
            Py::new(
                py,
                CustomAllocationRecord {
                    webhook_url: c.webhook_url,
                    api_version: c.api_version,
                },
            )
        })
        .transpose()?;
    let allocation = AllocationRecord {
        policy: p.allocation_policy.as_ref().map(wire_name),
        iot_hubs: p.iot_hubs.unwrap_or_default(),
        iot_hub_host_name: p.iot_hub_host_name,
        custom,
    };
    let capabilities = p
        .capabilities
        .map(|c| {
            Py::new(
                py,
                CapabilitiesRecord {
                    iot_edge: c.iot_edge.unwrap_or(false),
                },
            )
        })
        .transpose()?;
    let settings = EnrollmentSettingsRecord {
        provisioning_status: wire_name(&p.provisioning_status.unwrap_or_default()),
        reprovision_policy: Py::new(
            py,
            ReprovisionPolicyRecord {
                update_hub_assignment: policy.update_hub_assignment,
                migrate_device_data: policy.migrate_device_data,
            },
        )?,
        allocation: Py::new(py, allocation)?,
        initial_twin: p.initial_twin.map(|t| dict(py, t)).transpose()?,
        capabilities,
        credential_policy,
    };
    Ok(Answered {
        settings,
        etag: required(p.etag, "etag", what)?,
        created: required(p.created_date_time_utc, "createdDateTimeUtc", what)?,
        updated: required(p.last_updated_date_time_utc, "lastUpdatedDateTimeUtc", what)?,
    })
}

/// An enrollment group as the DPS service API answers it; times are Azure's RFC 3339 text.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct EnrollmentGroupRecord {
    enrollment_group_id: String,
    attestation: Py<AttestationRecord>,
    settings: Py<EnrollmentSettingsRecord>,
    etag: String,
    created: String,
    updated: String,
}

/// Builds an [`EnrollmentGroupRecord`], refusing an answer without its id, attestation, etag
/// or times.
pub(crate) fn enrollment_group(
    py: Python<'_>,
    g: EnrollmentGroup,
) -> PyResult<EnrollmentGroupRecord> {
    let what = "an enrollment group";
    let id = required(g.enrollment_group_id, "enrollmentGroupId", what)?;
    let what = format!("enrollment group {id}");
    let mechanism = required(g.attestation, "attestation", &what)?;
    let answered = answered(py, g.policies, &what)?;
    Ok(EnrollmentGroupRecord {
        enrollment_group_id: id,
        attestation: Py::new(py, attestation(py, mechanism, true)?)?,
        settings: Py::new(py, answered.settings)?,
        etag: answered.etag,
        created: answered.created,
        updated: answered.updated,
    })
}

/// An individual enrollment as the DPS service API answers it; times are Azure's RFC 3339
/// text.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct IndividualEnrollmentRecord {
    registration_id: String,
    device_id: Option<String>,
    attestation: Py<AttestationRecord>,
    settings: Py<EnrollmentSettingsRecord>,
    etag: String,
    created: String,
    updated: String,
}

/// Builds an [`IndividualEnrollmentRecord`], refusing an answer without its id, attestation,
/// etag or times.
pub(crate) fn enrollment(
    py: Python<'_>,
    e: IndividualEnrollment,
) -> PyResult<IndividualEnrollmentRecord> {
    let id = required(e.registration_id, "registrationId", "an enrollment")?;
    let what = format!("enrollment {id}");
    let mechanism = required(e.attestation, "attestation", &what)?;
    let answered = answered(py, e.policies, &what)?;
    Ok(IndividualEnrollmentRecord {
        registration_id: id,
        device_id: e.device_id,
        attestation: Py::new(py, attestation(py, mechanism, false)?)?,
        settings: Py::new(py, answered.settings)?,
        etag: answered.etag,
        created: answered.created,
        updated: answered.updated,
    })
}

/// What DPS recorded of a device's last registration (`DeviceRegistrationState`); times are
/// Azure's RFC 3339 text, `payload` what a custom allocation returned (any JSON).
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct RegistrationStateRecord {
    registration_id: String,
    status: String,
    assigned_hub: Option<String>,
    device_id: Option<String>,
    substatus: Option<String>,
    error_code: Option<u32>,
    error_message: Option<String>,
    created: String,
    last_updated: String,
    etag: String,
    payload: Py<PyAny>,
}

/// Builds a [`RegistrationStateRecord`], refusing an answer without its id, status, etag or
/// times.
pub(crate) fn registration_state(
    py: Python<'_>,
    s: DeviceRegistrationState,
) -> PyResult<RegistrationStateRecord> {
    let id = required(s.registration_id, "registrationId", "a registration state")?;
    let what = format!("the registration state of {id}");
    Ok(RegistrationStateRecord {
        status: required(s.status, "status", &what)?,
        assigned_hub: s.assigned_hub,
        device_id: s.device_id,
        substatus: s.substatus,
        error_code: s.error_code,
        error_message: s.error_message,
        created: required(s.created_date_time_utc, "createdDateTimeUtc", &what)?,
        last_updated: required(
            s.last_updated_date_time_utc,
            "lastUpdatedDateTimeUtc",
            &what,
        )?,
        etag: required(s.etag, "etag", &what)?,
        payload: match &s.payload {
            Some(value) => json_to_py(py, value)?.unbind(),
            None => py.None(),
        },
        registration_id: id,
    })
}

// ---- hub service API --------------------------------------------------------------------------

/// A device identity of a hub. `authentication` is the service's type (`sas`, `selfSigned`,
/// `certificateAuthority`, `none`); the keys are `None` for an X.509 device and in the
/// records a device list (a query of twins) gives.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct HubDeviceRecord {
    device_id: String,
    authentication: String,
    primary_thumbprint: Option<String>,
    primary_key: Option<String>,
    secondary_key: Option<String>,
    connection_state: String,
    status: Option<String>,
    etag: Option<String>,
}

#[pymethods]
impl HubDeviceRecord {
    fn __repr__(&self) -> String {
        format!(
            "HubDeviceRecord(device_id={:?}, authentication={:?}, primary_thumbprint={:?}, \
             primary_key={}, secondary_key={}, connection_state={:?})",
            self.device_id,
            self.authentication,
            self.primary_thumbprint,
            redacted(&self.primary_key),
            redacted(&self.secondary_key),
            self.connection_state,
        )
    }
}

/// The service's defaults where an answer leaves a member out: a `sas` device, disconnected.
const DEFAULT_AUTHENTICATION: &str = "sas";
const DEFAULT_CONNECTION_STATE: &str = "Disconnected";

impl From<DeviceIdentity> for HubDeviceRecord {
    fn from(d: DeviceIdentity) -> Self {
        let authentication = d.authentication.unwrap_or_default();
        let keys = authentication.symmetric_key.unwrap_or_default();
        HubDeviceRecord {
            device_id: d.device_id,
            authentication: authentication
                .kind
                .unwrap_or_else(|| DEFAULT_AUTHENTICATION.into()),
            primary_thumbprint: authentication
                .x509_thumbprint
                .and_then(|t| t.primary_thumbprint),
            primary_key: keys.primary_key,
            secondary_key: keys.secondary_key,
            connection_state: d
                .connection_state
                .unwrap_or_else(|| DEFAULT_CONNECTION_STATE.into()),
            status: d.status,
            etag: d.etag,
        }
    }
}

impl From<Twin> for HubDeviceRecord {
    /// An identity as a twin of the device query tells it: no keys, no identity etag.
    fn from(t: Twin) -> Self {
        HubDeviceRecord {
            device_id: t.device_id,
            authentication: t
                .authentication_type
                .unwrap_or_else(|| DEFAULT_AUTHENTICATION.into()),
            primary_thumbprint: t.x509_thumbprint.and_then(|x| x.primary_thumbprint),
            primary_key: None,
            secondary_key: None,
            connection_state: t
                .connection_state
                .unwrap_or_else(|| DEFAULT_CONNECTION_STATE.into()),
            status: t.status,
            etag: None,
        }
    }
}

/// The thumbprints a twin carries for a `selfSigned` device.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct X509ThumbprintRecord {
    primary_thumbprint: Option<String>,
    secondary_thumbprint: Option<String>,
}

impl From<X509Thumbprint> for X509ThumbprintRecord {
    fn from(t: X509Thumbprint) -> Self {
        X509ThumbprintRecord {
            primary_thumbprint: t.primary_thumbprint,
            secondary_thumbprint: t.secondary_thumbprint,
        }
    }
}

/// A device twin as the service sees it. `tags`, `desired` and `reported` are the free-form
/// sections (`desired` and `reported` with their `$version` and `$metadata`); `other` holds the
/// members not modelled here, as answered. A member the answer left out is `None`.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct ServiceTwinRecord {
    device_id: String,
    etag: Option<String>,
    version: Option<u64>,
    status: Option<String>,
    connection_state: Option<String>,
    authentication_type: Option<String>,
    x509_thumbprint: Option<Py<X509ThumbprintRecord>>,
    tags: Option<Py<PyDict>>,
    desired: Option<Py<PyDict>>,
    reported: Option<Py<PyDict>>,
    other: Py<PyDict>,
}

/// The twin members [`ServiceTwinRecord`] has a field for; its `other` holds the rest.
const TWIN_RECORD_MEMBERS: [&str; 9] = [
    "deviceId",
    "etag",
    "version",
    "status",
    "connectionState",
    "authenticationType",
    "x509Thumbprint",
    "tags",
    "properties",
];

/// Builds a [`ServiceTwinRecord`] (its sections become dicts, hence the GIL).
pub(crate) fn service_twin(py: Python<'_>, t: Twin) -> PyResult<ServiceTwinRecord> {
    // `other` is every member without a field of its own, whether `Twin` models it (the
    // identity's times and counts, the capabilities) or not, in the twin's order.
    let other: Map<String, Value> = match serde_json::to_value(&t) {
        Ok(Value::Object(members)) => members
            .into_iter()
            .filter(|(member, _)| !TWIN_RECORD_MEMBERS.contains(&member.as_str()))
            .collect(),
        other => {
            let why = format!(
                "the twin of {} does not write as an object: {other:?}",
                t.device_id
            );
            return Err(Error::protocol(why).into());
        }
    };
    let properties = t.properties.unwrap_or_default();
    let section = |map: Option<Map<String, Value>>| map.map(|m| dict(py, m)).transpose();
    Ok(ServiceTwinRecord {
        device_id: t.device_id,
        etag: t.etag,
        version: t.version,
        status: t.status,
        connection_state: t.connection_state,
        authentication_type: t.authentication_type,
        x509_thumbprint: t
            .x509_thumbprint
            .map(|x| Py::new(py, X509ThumbprintRecord::from(x)))
            .transpose()?,
        tags: section(t.tags)?,
        desired: section(properties.desired)?,
        reported: section(properties.reported)?,
        other: dict(py, other)?,
    })
}
