//! Bindings for `dpskit.doctor`: `diagnose_device` builds a `doctor::Request` from what Python
//! read (files, a `DeviceCertificate`, the trust bundle's PEM, the DPS's REST client and
//! endpoints) and runs `doctor::diagnose` with the GIL released; `explain_error` reads an
//! error text through `diagnosis::errors`. The report crosses as frozen records.

// Python keyword arguments map one to one onto Rust parameters.
#![allow(clippy::too_many_arguments)]

use std::path::PathBuf;

use pyo3::prelude::*;

use super::cloud::PyRestClient;
use super::pki::PyDeviceCertificate;
use crate::clock::Clock;
use crate::diagnosis::credential::{self, Loaded};
use crate::diagnosis::errors::{self, Explanation};
use crate::diagnosis::trust_bundle::{ServerRoots, TrustBundle};
use crate::diagnosis::{Cause, Check};
use crate::doctor::{self, Attempt, ConnectTarget, OnlineTarget, Report, Request};

/// Beyond the attempt's own timeout: the longest the service clients' requests (60 s each,
/// retried) may add before the diagnosis is given up.
const DIAGNOSIS_BACKSTOP: std::time::Duration = std::time::Duration::from_secs(180);
use crate::error::Error;
use crate::pki::Certificate;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<DoctorCheck>()?;
    m.add_class::<TraceStep>()?;
    m.add_class::<DoctorAttempt>()?;
    m.add_class::<DoctorReport>()?;
    m.add_class::<ErrorExplanation>()?;
    m.add_function(wrap_pyfunction!(diagnose_device, m)?)?;
    m.add_function(wrap_pyfunction!(explain_error, m)?)?;
    m.add_function(wrap_pyfunction!(doctor_cause_names, m)?)?;
    Ok(())
}

/// One check's outcome.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct DoctorCheck {
    id: String,
    title: String,
    verdict: String,
    evidence: String,
    fix: Option<String>,
    cause: Option<String>,
}

impl From<&Check> for DoctorCheck {
    fn from(c: &Check) -> Self {
        DoctorCheck {
            id: c.id.into(),
            title: c.title.into(),
            verdict: c.verdict.name().into(),
            evidence: c.evidence.clone(),
            fix: c.fix.clone(),
            cause: c.cause.map(|c| c.name().into()),
        }
    }
}

/// One step of the traced attempt.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct TraceStep {
    at_ms: f64,
    step: String,
    detail: String,
}

/// How the traced attempt went.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct DoctorAttempt {
    succeeded: bool,
    status: Option<u16>,
    error_code: Option<u32>,
    message: String,
    assigned_hub: Option<String>,
    device_id: Option<String>,
    trace: Vec<Py<TraceStep>>,
    causes: Vec<String>,
}

/// The doctor's answer: every check (problems first), the attempt, the causes found.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct DoctorReport {
    registration_id: Option<String>,
    checks: Vec<Py<DoctorCheck>>,
    attempt: Option<Py<DoctorAttempt>>,
    causes: Vec<String>,
    healthy: bool,
}

/// What an error text means.
#[pyclass(frozen, get_all, module = "dpskit._native")]
pub(crate) struct ErrorExplanation {
    matched: Option<String>,
    known: bool,
    code: Option<u32>,
    status: Option<u16>,
    service: Option<String>,
    title: String,
    meaning: String,
    causes: Vec<String>,
    cause_names: Vec<String>,
}

fn names(causes: &[Cause]) -> Vec<String> {
    causes.iter().map(|c| c.name().to_string()).collect()
}

fn attempt_record(py: Python<'_>, a: &Attempt) -> PyResult<DoctorAttempt> {
    Ok(DoctorAttempt {
        succeeded: a.succeeded,
        status: a.status,
        error_code: a.error_code,
        message: a.message.clone(),
        assigned_hub: a.assigned_hub.clone(),
        device_id: a.device_id.clone(),
        trace: a
            .trace
            .iter()
            .map(|s| {
                Py::new(
                    py,
                    TraceStep {
                        at_ms: s.at_ms,
                        step: s.step.clone(),
                        detail: s.detail.clone(),
                    },
                )
            })
            .collect::<PyResult<_>>()?,
        causes: names(&a.causes),
    })
}

fn report_record(py: Python<'_>, r: &Report) -> PyResult<DoctorReport> {
    Ok(DoctorReport {
        registration_id: r.registration_id.clone(),
        checks: r
            .checks
            .iter()
            .map(|c| Py::new(py, DoctorCheck::from(c)))
            .collect::<PyResult<_>>()?,
        attempt: r
            .attempt
            .as_ref()
            .map(|a| Py::new(py, attempt_record(py, a)?))
            .transpose()?,
        causes: names(&r.causes()),
        healthy: r.is_healthy(),
    })
}

impl From<Explanation> for ErrorExplanation {
    fn from(e: Explanation) -> Self {
        ErrorExplanation {
            matched: e.matched,
            known: e.known,
            code: e.code,
            status: e.status,
            service: e.service.map(|s| s.name().into()),
            title: e.title,
            meaning: e.meaning,
            causes: e.causes,
            cause_names: names(&e.cause_names),
        }
    }
}

/// Diagnoses one device (see `dpskit.doctor`). The credential is `certificate` (a
/// `DeviceCertificate`), `pkcs12_path` with `pkcs12_password`, or `certificate_path` with
/// `chain_path` and `key_path`. The device's server trust bundle is `trust_bundle_pem` or the
/// file `trust_bundle_path` (what does not read is the `server.trust` problem). `rest` and `dps_name` enable the online checks; `connect_host`,
/// `connect_port` and `id_scope` the traced attempt, whose TLS trusts `cloud_trust_pem` (the
/// system's roots when `None`) unless the device's own bundle is given. `local_server_pem`
/// names the local cloud's CA as the servers' root (Azure's otherwise).
#[pyfunction]
#[pyo3(signature = (*, certificate = None, certificate_path = None, chain_path = None, key_path = None, key_password = None, pkcs12_path = None, pkcs12_password = None, registration_id = None, trust_bundle_pem = None, trust_bundle_path = None, rest = None, dps_name = None, connect_host = None, connect_port = 8883, id_scope = None, cloud_trust_pem = None, local_server_pem = None, clock_offset_ms = 0, timeout = 30.0))]
pub(crate) fn diagnose_device(
    py: Python<'_>,
    certificate: Option<PyRef<'_, PyDeviceCertificate>>,
    certificate_path: Option<PathBuf>,
    chain_path: Option<PathBuf>,
    key_path: Option<PathBuf>,
    key_password: Option<Vec<u8>>,
    pkcs12_path: Option<PathBuf>,
    pkcs12_password: Option<String>,
    registration_id: Option<String>,
    trust_bundle_pem: Option<String>,
    trust_bundle_path: Option<PathBuf>,
    rest: Option<PyRef<'_, PyRestClient>>,
    dps_name: Option<String>,
    connect_host: Option<String>,
    connect_port: u16,
    id_scope: Option<String>,
    cloud_trust_pem: Option<String>,
    local_server_pem: Option<String>,
    clock_offset_ms: i64,
    timeout: f64,
) -> PyResult<DoctorReport> {
    let timeout = crate::error::positive_seconds("timeout", timeout)?;
    let given = usize::from(certificate.is_some())
        + usize::from(certificate_path.is_some())
        + usize::from(pkcs12_path.is_some());
    if given != 1 {
        return Err(Error::config(
            "give one credential: a DeviceCertificate, a certificate file, or a PKCS#12 file",
        )
        .into());
    }
    let loaded: Loaded = if let Some(device) = &certificate {
        credential::from_credential(&device.credential_arc())
    } else if let Some(path) = &pkcs12_path {
        let password = pkcs12_password.as_deref().unwrap_or("");
        py.detach(|| credential::load_pkcs12(path, password))
    } else {
        let path = certificate_path
            .as_deref()
            .unwrap_or(std::path::Path::new(""));
        py.detach(|| {
            credential::load_files(
                path,
                chain_path.as_deref(),
                key_path.as_deref(),
                key_password.as_deref(),
            )
        })
    };
    let cloud_trust = super::trust(cloud_trust_pem.as_deref())?;
    let servers = match &local_server_pem {
        Some(pem) => ServerRoots::Custom {
            label: "the local cloud".into(),
            anchors: Certificate::all_from_bytes(pem.as_bytes())?,
        },
        None => ServerRoots::Azure,
    };
    let online = match (&rest, dps_name) {
        (Some(rest), Some(name)) => Some(OnlineTarget {
            arm: rest.arm().clone(),
            dps_name: name,
            trust: rest.trust().clone(),
        }),
        (None, None) => None,
        _ => return Err(Error::config("the online checks need both rest and dps_name").into()),
    };
    let connect = match (connect_host, id_scope) {
        (Some(host), Some(id_scope)) => Some(ConnectTarget {
            host,
            port: connect_port,
            id_scope,
            trust: cloud_trust,
            timeout,
        }),
        (None, _) => None,
        (Some(_), None) => {
            return Err(Error::config("the traced attempt needs the DPS's id_scope").into());
        }
    };
    let request = Request {
        credential: loaded,
        registration_id,
        trust_bundle: match (trust_bundle_pem, &trust_bundle_path) {
            (Some(pem), None) => Some(TrustBundle::from_pem("the PEM given", pem.as_bytes())),
            (None, Some(path)) => Some(py.detach(|| TrustBundle::load(path))),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(
                    Error::config("give the trust bundle as PEM or as a file, not both").into(),
                );
            }
        },
        servers,
        online,
        connect,
        clock: Clock::with_offset_ms(clock_offset_ms)?,
    };
    let runtime = super::runtime("dpskit-doctor", Some(2))?;
    // `timeout` bounds the attempt (its refusal is part of the report); the service clients
    // bound each request on their own; this backstop only catches what nothing else bounds.
    let backstop = timeout + DIAGNOSIS_BACKSTOP;
    let report = super::block_on_interruptible(py, runtime.handle(), async move {
        tokio::time::timeout(backstop, doctor::diagnose(request)).await
    })?
    .map_err(|_| {
        Error::timeout(format!(
            "the diagnosis did not finish within {:.0} s",
            backstop.as_secs_f64()
        ))
    })?;
    report_record(py, &report)
}

/// What an error text (a code, a JSON body, an SDK's message) means; never fails.
#[pyfunction]
pub(crate) fn explain_error(text: &str) -> ErrorExplanation {
    errors::explain(text).into()
}

/// Every cause name the doctor can report, in a fixed order.
#[pyfunction]
pub(crate) fn doctor_cause_names() -> Vec<&'static str> {
    Cause::ALL.iter().map(|c| c.name()).collect()
}

/// An optional number as Python prints it.
fn py_option<T: std::fmt::Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "None".to_string(), ToString::to_string)
}

#[pymethods]
impl DoctorCheck {
    fn __repr__(&self) -> String {
        format!(
            "<DoctorCheck {} {}{}>",
            self.id,
            self.verdict,
            self.cause
                .as_ref()
                .map(|c| format!(" cause={c}"))
                .unwrap_or_default()
        )
    }
}

#[pymethods]
impl TraceStep {
    fn __repr__(&self) -> String {
        format!(
            "<TraceStep {:.1} ms {}: {}>",
            self.at_ms, self.step, self.detail
        )
    }
}

#[pymethods]
impl DoctorAttempt {
    fn __repr__(&self) -> String {
        format!(
            "<DoctorAttempt succeeded={} status={} error_code={} steps={}>",
            if self.succeeded { "True" } else { "False" },
            py_option(&self.status),
            py_option(&self.error_code),
            self.trace.len()
        )
    }
}

#[pymethods]
impl ErrorExplanation {
    fn __repr__(&self) -> String {
        format!(
            "<ErrorExplanation {:?} known={} code={} status={} causes=[{}]>",
            self.title,
            if self.known { "True" } else { "False" },
            py_option(&self.code),
            py_option(&self.status),
            self.cause_names
                .iter()
                .map(|c| format!("'{c}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}
