//! Bindings for `dpskit.provisioning`: `provision_devices`, many X.509 registrations at once on
//! a runtime of their own, each outcome a `Registration` or the error with Azure's code.

// Python keyword arguments map one to one onto Rust parameters.
#![allow(clippy::too_many_arguments)]

use pyo3::prelude::*;

use super::convert::{self, Registration};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(provision_devices, m)?)?;
    Ok(())
}

/// One device's outcome in `provision_devices`: `(registration, error, error_code, seconds)`,
/// the registration `None` when it failed.
type Outcome = (Option<Registration>, Option<String>, Option<u32>, f64);

/// Provisions devices through DPS concurrently on a runtime of their own (GIL released); returns
/// one outcome per device, in order.
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
) -> PyResult<Vec<Outcome>> {
    use crate::provisioning::{DeviceAuth, ProvisioningRequest, provision_many};
    let timeout = crate::error::positive_seconds("timeout", timeout)?;
    let trust = super::trust(trust_pem)?;
    let requests: Vec<ProvisioningRequest> = devices
        .iter()
        .map(|d| ProvisioningRequest {
            host: host.clone(),
            port,
            via: crate::transport::mqtt::Via::default(),
            id_scope: id_scope.clone(),
            registration_id: d.inner.registration_id().to_string(),
            auth: DeviceAuth::X509(d.credential_arc()),
            payload: None,
            timeout,
            csr: None,
            clock: crate::clock::Clock::system(),
        })
        .collect();
    let runtime = super::runtime("dpskit-provisioning", None)?;
    let outcomes = super::block_on_interruptible(
        py,
        runtime.handle(),
        provision_many(requests, trust, concurrency),
    )?;
    outcomes
        .into_iter()
        .map(|(result, elapsed)| {
            let seconds = elapsed.as_secs_f64();
            Ok(match result {
                Ok(r) => (Some(convert::registration(py, r)?), None, None, seconds),
                Err(e) => (None, Some(e.to_string()), e.error_code(), seconds),
            })
        })
        .collect()
}
