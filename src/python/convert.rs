//! The one conversion of the core's records into Python objects, and of Python's JSON-like
//! values into the core's. Records with a fixed shape cross as the frozen classes below (their
//! stubs in `dpskit/_native.pyi`, checked by stubtest); the service APIs' records (enrollments,
//! registration states, identities, twins) are converted beside these, in `records.rs`.
//! Free-form JSON (payloads, twin sections) crosses as the dicts and lists `json.loads` would
//! give. `dpskit`'s dataclasses are built from these in one place each.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyList, PyString, PyTuple};
use serde_json::Value;

/// Registers the record classes.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<HubRecord>()?;
    m.add_class::<DpsRecord>()?;
    m.add_class::<LinkedHubRecord>()?;
    m.add_class::<CaCertificateRecord>()?;
    m.add_class::<HubUsageRecord>()?;
    m.add_class::<TelemetryRecord>()?;
    m.add_class::<TraceRecord>()?;
    m.add_class::<Registration>()?;
    m.add_class::<NamespaceRecord>()?;
    m.add_class::<CredentialPolicyRecord>()?;
    Ok(())
}

/// A JSON value as the Python object `json.loads` would give (dict, list, str, int, float,
/// bool, None).
pub(crate) fn json_to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.into_pyobject(py)?.into_any(),
            (None, Some(u)) => u.into_pyobject(py)?.into_any(),
            _ => n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any(),
        },
        Value::String(s) => s.into_pyobject(py)?.into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(json_to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (key, item) in map {
                dict.set_item(key, json_to_py(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// A Python value as JSON, as `json.dumps` takes it (dicts with string keys, lists and tuples,
/// str, int, float, bool, None); anything else is a `TypeError` naming its type.
pub(crate) fn py_to_json(value: &Bound<'_, PyAny>) -> PyResult<Value> {
    if value.is_none() {
        return Ok(Value::Null);
    }
    // bool before int: Python's bool is an int.
    if let Ok(b) = value.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(Value::String(s.to_str()?.to_string()));
    }
    if let Ok(dict) = value.cast::<PyDict>() {
        let mut map = serde_json::Map::with_capacity(dict.len());
        for (key, item) in dict.iter() {
            let key = key.cast::<PyString>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "JSON object keys must be str, not {}",
                    key.get_type()
                        .name()
                        .map_or_else(|_| "?".into(), |n| n.to_string())
                ))
            })?;
            map.insert(key.to_str()?.to_string(), py_to_json(&item)?);
        }
        return Ok(Value::Object(map));
    }
    if let Ok(list) = value.cast::<PyList>() {
        return list.iter().map(|item| py_to_json(&item)).collect();
    }
    if let Ok(tuple) = value.cast::<PyTuple>() {
        return tuple.iter().map(|item| py_to_json(&item)).collect();
    }
    if let Ok(float) = value.cast::<PyFloat>() {
        let number = float.value();
        return serde_json::Number::from_f64(number)
            .map(Value::Number)
            .ok_or_else(|| PyTypeError::new_err(format!("{number} is not a JSON number")));
    }
    if let Ok(int) = value.extract::<i64>() {
        return Ok(Value::from(int));
    }
    if let Ok(int) = value.extract::<u64>() {
        return Ok(Value::from(int));
    }
    Err(PyTypeError::new_err(format!(
        "{} is not JSON serializable",
        value
            .get_type()
            .name()
            .map_or_else(|_| "this value".into(), |n| n.to_string())
    )))
}

/// An IoT hub resource as ARM describes it.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct HubRecord {
    name: String,
    location: String,
    host_name: String,
    provisioning_state: String,
    sku: String,
    units: u32,
    event_hub_endpoint: Option<String>,
    event_hub_path: Option<String>,
    partition_count: Option<u32>,
}

impl From<crate::service::arm::HubResource> for HubRecord {
    fn from(h: crate::service::arm::HubResource) -> Self {
        let events = h.events;
        HubRecord {
            name: h.name,
            location: h.location,
            host_name: h.host_name,
            provisioning_state: h.provisioning_state,
            sku: h.sku,
            units: h.units,
            event_hub_endpoint: events.as_ref().map(|e| e.endpoint.clone()),
            event_hub_path: events.as_ref().map(|e| e.path.clone()),
            partition_count: events.map(|e| e.partition_count),
        }
    }
}

/// A hub linked to a DPS, as ARM describes it (without its connection string).
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct LinkedHubRecord {
    host_name: String,
    location: String,
    allocation_weight: Option<u32>,
    apply_allocation_policy: bool,
}

/// An Azure Device Registry namespace as ARM describes it.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct NamespaceRecord {
    name: String,
    id: String,
    location: String,
    uuid: String,
}

impl From<crate::service::NamespaceResource> for NamespaceRecord {
    fn from(n: crate::service::NamespaceResource) -> Self {
        NamespaceRecord {
            name: n.name,
            id: n.id,
            location: n.location,
            uuid: n.uuid,
        }
    }
}

/// A namespace's credential policy as ARM describes it (the issuing CA's subject and
/// validity, ISO 8601, once ARM reports them).
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct CredentialPolicyRecord {
    name: String,
    id: String,
    validity_days: u32,
    key_type: String,
    subject: Option<String>,
    not_before: Option<String>,
    not_after: Option<String>,
}

impl From<crate::service::PolicyResource> for CredentialPolicyRecord {
    fn from(p: crate::service::PolicyResource) -> Self {
        CredentialPolicyRecord {
            name: p.name,
            id: p.id,
            validity_days: p.validity_days,
            key_type: p.key_type,
            subject: p.subject,
            not_before: p.not_before,
            not_after: p.not_after,
        }
    }
}

/// A DPS resource as ARM describes it.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct DpsRecord {
    name: String,
    location: String,
    id_scope: String,
    service_operations_host_name: String,
    device_provisioning_host_name: String,
    provisioning_state: String,
    linked_hubs: Vec<Py<LinkedHubRecord>>,
}

/// Builds a [`DpsRecord`] (its linked hubs are Python objects, hence the GIL).
pub(crate) fn dps_record(
    py: Python<'_>,
    d: crate::service::arm::DpsResource,
) -> PyResult<DpsRecord> {
    let linked_hubs = d
        .linked_hubs
        .into_iter()
        .map(|l| {
            Py::new(
                py,
                LinkedHubRecord {
                    host_name: l.host_name,
                    location: l.location,
                    allocation_weight: l.allocation_weight,
                    apply_allocation_policy: l.apply_allocation_policy,
                },
            )
        })
        .collect::<PyResult<_>>()?;
    Ok(DpsRecord {
        name: d.name,
        location: d.location,
        id_scope: d.id_scope,
        service_operations_host_name: d.service_operations_host_name,
        device_provisioning_host_name: d.device_provisioning_host_name,
        provisioning_state: d.provisioning_state,
        linked_hubs,
    })
}

/// A CA certificate of a DPS as ARM describes it; dates are ARM's RFC 1123 text.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct CaCertificateRecord {
    name: String,
    etag: String,
    subject: String,
    thumbprint: String,
    is_verified: bool,
    expiry: String,
    created: String,
    updated: String,
    verification_code: Option<String>,
    certificate: Option<String>,
}

impl From<crate::service::arm::CaCertificateResource> for CaCertificateRecord {
    fn from(c: crate::service::arm::CaCertificateResource) -> Self {
        CaCertificateRecord {
            name: c.name,
            etag: c.etag,
            subject: c.subject,
            thumbprint: c.thumbprint,
            is_verified: c.is_verified,
            expiry: c.expiry,
            created: c.created,
            updated: c.updated,
            verification_code: c.verification_code,
            certificate: c.certificate,
        }
    }
}

/// A hub's tier, today's message meter and (emulator only) its throttles' refusals.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct HubUsageRecord {
    sku: String,
    units: u32,
    presets: bool,
    daily_quota: u64,
    messages_used: u64,
    meter_block_bytes: Option<usize>,
    resets_at: i64,
    throttled: Option<std::collections::BTreeMap<String, u64>>,
    quota_refusals: Option<u64>,
}

impl From<crate::emulator::hub::HubUsage> for HubUsageRecord {
    fn from(u: crate::emulator::hub::HubUsage) -> Self {
        HubUsageRecord {
            sku: u.sku,
            units: u.units,
            presets: u.presets,
            daily_quota: u.daily_quota,
            messages_used: u.messages_used,
            meter_block_bytes: Some(u.meter_block_bytes),
            resets_at: u.resets_at,
            throttled: Some(u.throttled),
            quota_refusals: Some(u.quota_refusals),
        }
    }
}

impl From<crate::service::arm::HubQuotaUsage> for HubUsageRecord {
    /// Azure enforces every hub's tier, and keeps refusals in Azure Monitor, not ARM.
    fn from(u: crate::service::arm::HubQuotaUsage) -> Self {
        HubUsageRecord {
            sku: u.sku,
            units: u.units,
            presets: true,
            daily_quota: u.daily_quota,
            messages_used: u.messages_used,
            meter_block_bytes: u.meter_block_bytes,
            resets_at: u.resets_at,
            throttled: None,
            quota_refusals: None,
        }
    }
}

/// A device-to-cloud message the emulator's hub stored.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct TelemetryRecord {
    sequence: u64,
    device_id: String,
    enqueued_time: f64,
    body: Py<pyo3::types::PyBytes>,
    properties: Vec<(String, String)>,
    system_properties: Vec<(String, String)>,
}

/// Builds a [`TelemetryRecord`] (its body becomes `bytes`, hence the GIL).
pub(crate) fn telemetry_record(
    py: Python<'_>,
    m: crate::service::hub::StoredMessage,
) -> TelemetryRecord {
    TelemetryRecord {
        sequence: m.sequence,
        device_id: m.device_id,
        enqueued_time: m.enqueued_time,
        body: pyo3::types::PyBytes::new(py, &m.body).unbind(),
        properties: m.properties,
        system_properties: m.system_properties,
    }
}

/// One step of a client's exchange with the local cloud, as its tracer recorded it.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct TraceRecord {
    at: f64,
    direction: &'static str,
    kind: String,
    topic: Option<String>,
    status: Option<u16>,
    detail: String,
}

impl From<crate::emulator::trace::TraceEvent> for TraceRecord {
    fn from(e: crate::emulator::trace::TraceEvent) -> Self {
        TraceRecord {
            at: e.at,
            direction: e.direction,
            kind: e.kind,
            topic: e.topic,
            status: e.status,
            detail: e.detail,
        }
    }
}

/// What DPS answered a device's registration: the one registration result of `provision` and
/// `provision_devices`; times are Azure's text.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct Registration {
    status: String,
    registration_id: String,
    assigned_hub: Option<String>,
    device_id: Option<String>,
    substatus: Option<String>,
    etag: Option<String>,
    created: Option<String>,
    last_updated: Option<String>,
    payload: Py<PyAny>,
    operation_id: String,
}

/// Builds a [`Registration`] (its payload becomes a Python object, hence the GIL).
pub(crate) fn registration(
    py: Python<'_>,
    r: crate::provisioning::RegistrationResult,
) -> PyResult<Registration> {
    let payload = match &r.payload {
        Some(value) => json_to_py(py, value)?.unbind(),
        None => py.None(),
    };
    Ok(Registration {
        status: r.status,
        registration_id: r.registration_id,
        assigned_hub: r.assigned_hub,
        device_id: r.device_id,
        substatus: r.substatus,
        etag: r.etag,
        created: r.created,
        last_updated: r.last_updated,
        payload,
        operation_id: r.operation_id,
    })
}
