//! PyO3 bindings: the `dpskit._native` module. This layer converts arguments, releases the GIL
//! around work, and maps errors; all logic lives in the core.

mod c2d;
mod cloud;
mod convert;
mod device;
mod doctor;
mod errors;
mod events;
mod fleet;
mod hub_connections;
mod local_cloud;
mod pki;
mod provisioning;
mod records;

use pyo3::prelude::*;

/// The native half of dpskit (see `dpskit/_native.pyi`).
#[pymodule]
#[pyo3(name = "_native")]
fn native_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Log lines go to the `dpskit` loggers of Python's logging module (a second init, e.g. in a
    // sub-interpreter, keeps the first logger).
    if let Ok(handle) = pyo3_log::try_init() {
        let _ = LOG_RESET.set(handle);
    }
    convert::register(m)?;
    records::register(m)?;
    pki::register(m)?;
    local_cloud::register(m)?;
    provisioning::register(m)?;
    hub_connections::register(m)?;
    fleet::register(m)?;
    cloud::register(m)?;
    device::register(m)?;
    events::register(m)?;
    c2d::register(m)?;
    doctor::register(m)?;
    m.add_function(wrap_pyfunction!(raise_core_error, m)?)?;
    m.add_function(wrap_pyfunction!(core_error_kinds, m)?)?;
    m.add_function(wrap_pyfunction!(refresh_logging, m)?)?;
    Ok(())
}

/// The bridge caches Python logger levels per target; this handle clears the cache.
static LOG_RESET: std::sync::OnceLock<pyo3_log::ResetHandle> = std::sync::OnceLock::new();

/// Re-reads Python's logging configuration (levels cached by the log bridge); `LocalCloud`
/// calls it on start so `logging` changes made before then take effect.
#[pyfunction]
#[pyo3(name = "_refresh_logging")]
fn refresh_logging() {
    if let Some(handle) = LOG_RESET.get() {
        handle.reset();
    }
}

/// Raises the Python exception that core error `kind` maps to (test support).
#[pyfunction]
#[pyo3(name = "_raise_core_error")]
fn raise_core_error(kind: &str, message: &str) -> PyResult<()> {
    match errors::example_error(kind, message) {
        Some(error) => Err(error.into()),
        None => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "unknown core error kind {kind:?}"
        ))),
    }
}

/// The core error kinds `_raise_core_error` accepts (test support).
#[pyfunction]
#[pyo3(name = "_core_error_kinds")]
fn core_error_kinds() -> Vec<&'static str> {
    errors::ERROR_KINDS.to_vec()
}

/// A tokio runtime owned by a Python object. Python drops the object with the GIL held, and a
/// plain `Runtime` drop waits for its workers, one of which may be waiting for the GIL to log a
/// closed connection through `pyo3-log`: a deadlock. This one lets its workers finish in the
/// background instead.
pub(crate) struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl OwnedRuntime {
    /// Takes ownership of `runtime`.
    pub(crate) fn new(runtime: tokio::runtime::Runtime) -> Self {
        OwnedRuntime(Some(runtime))
    }
}

impl std::ops::Deref for OwnedRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("the runtime lives until drop")
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Builds the multi-threaded runtime a binding object owns (a REST client, a fleet run, held
/// connections, a batch of registrations): the one place bindings make a runtime.
/// `worker_threads` None takes tokio's default (one per core).
pub(crate) fn runtime(name: &str, worker_threads: Option<usize>) -> PyResult<OwnedRuntime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = builder
        .enable_all()
        .thread_name(name)
        .build()
        .map_err(|e| crate::error::Error::transport_caused("cannot start a runtime", e))?;
    Ok(OwnedRuntime::new(runtime))
}

/// The CA(s) a client trusts: `trust_pem`, or the system's roots (what Azure chains to).
pub(crate) fn trust(trust_pem: Option<&str>) -> PyResult<crate::provisioning::Trust> {
    Ok(match trust_pem {
        Some(pem) => crate::provisioning::Trust::from_pem(pem.as_bytes())?,
        None => crate::provisioning::Trust::system(),
    })
}

/// How long blocking work runs with the GIL released before Python's signals are checked.
const SIGNAL_SLICE: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs `work` on `runtime` with the GIL released, checking Python's signals every
/// [`SIGNAL_SLICE`]: Ctrl-C (SIGINT on POSIX, the console control handler on Windows, both of
/// which only set a flag that Python's own code must look at) drops the work, cancelling it,
/// and raises `KeyboardInterrupt` at once instead of when the work ends, which may be minutes
/// later for a batch of registrations or a REST call being retried.
pub(crate) fn block_on_interruptible<F>(
    py: Python<'_>,
    runtime: &tokio::runtime::Handle,
    work: F,
) -> PyResult<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    let mut work = std::pin::pin!(work);
    loop {
        let slice = py.detach(|| {
            runtime.block_on(async { tokio::time::timeout(SIGNAL_SLICE, work.as_mut()).await })
        });
        match slice {
            Ok(output) => return Ok(output),
            Err(_) => py.check_signals()?,
        }
    }
}
