//! The one conversion from core errors to Python exceptions. The classes live in
//! `dpskit/errors.py`; Rust looks them up there so `except dpskit.CertificateError` catches
//! what the core raises. An error whose root cause is the operating system's (a refused
//! connection, a missing file) is raised from that `OSError` (`__cause__`, errno and file
//! kept), so `except ConnectionRefusedError` code can look one level down.

use std::path::Path;

use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::{Error, ServiceErrorKind, ServiceFailure};

impl From<Error> for PyErr {
    fn from(error: Error) -> PyErr {
        Python::attach(|py| build(py, error).unwrap_or_else(|failure| failure))
    }
}

/// `OSError(errno, strerror, filename)`: Python picks the subclass (FileNotFoundError,
/// ConnectionRefusedError, ...) from errno, as `open()` or `socket.connect()` would.
fn os_error(source: &std::io::Error, path: Option<&Path>) -> PyErr {
    let Some(errno) = source.raw_os_error() else {
        return PyOSError::new_err(source.to_string());
    };
    // Python's strerror has no " (os error N)" suffix; errno already says it.
    let text = source.to_string();
    let strerror = text.split(" (os error").next().unwrap_or(&text).to_string();
    match path {
        Some(path) => PyOSError::new_err((errno, strerror, path.display().to_string())),
        None => PyOSError::new_err((errno, strerror)),
    }
}

fn build(py: Python<'_>, error: Error) -> PyResult<PyErr> {
    let message = error.to_string();
    let cause = match &error {
        Error::Io { .. } => None,
        other => other.os_cause().map(|(io, path)| os_error(io, path)),
    };
    let kwargs = PyDict::new(py);
    let class = match error {
        Error::Config(_) => "ConfigError",
        Error::Certificate(_) => "CertificateError",
        Error::Transport(_) => "TransportError",
        Error::Timeout(_) => "OperationTimeoutError",
        Error::Protocol(_) => "ProtocolError",
        Error::Emulator(_) => "EmulatorError",
        Error::Io { path, source } => {
            return Ok(match source.raw_os_error() {
                Some(_) => os_error(&source, Some(&path)),
                None => PyOSError::new_err(message),
            });
        }
        Error::Service(failure) => {
            let ServiceFailure {
                status,
                error_code,
                message: _,
                tracking_id,
                retry_after,
            } = &*failure;
            kwargs.set_item("status", status)?;
            kwargs.set_item("error_code", error_code)?;
            kwargs.set_item("tracking_id", tracking_id)?;
            kwargs.set_item("retry_after", retry_after)?;
            match failure.kind() {
                ServiceErrorKind::Authentication => "AuthenticationError",
                ServiceErrorKind::NotFound => "NotFoundError",
                ServiceErrorKind::Conflict => "ConflictError",
                ServiceErrorKind::Throttled => "ThrottledError",
                ServiceErrorKind::Other => "ServiceError",
            }
        }
        Error::RegistrationFailed {
            status,
            error_code,
            message: _,
        } => {
            // An HTTP-like status reaches Python as the int it is; `failed` stays text.
            match status.parse::<u16>() {
                Ok(code) => kwargs.set_item("status", code)?,
                Err(_) => kwargs.set_item("status", status)?,
            }
            kwargs.set_item("error_code", error_code)?;
            "RegistrationFailedError"
        }
    };
    let module = py.import("dpskit.errors").map_err(|e| {
        PyRuntimeError::new_err(format!("dpskit.errors cannot be imported ({e}): {message}"))
    })?;
    let instance = module.getattr(class)?.call((message,), Some(&kwargs))?;
    let raised = PyErr::from_value(instance);
    if let Some(cause) = cause {
        raised.set_cause(py, Some(cause));
    }
    Ok(raised)
}

/// Every core error kind by name, with an example error of that kind (test support: proves
/// the mapping of each kind to its Python class).
pub(crate) fn example_error(kind: &str, message: &str) -> Option<Error> {
    let service = |status: u16| {
        Error::Service(Box::new(ServiceFailure {
            status,
            error_code: Some(u32::from(status) * 1000),
            message: message.to_string(),
            tracking_id: Some("00000000-0000-0000-0000-000000000000".into()),
            retry_after: (status == 429).then_some(1.5),
        }))
    };
    Some(match kind {
        "config" => Error::config(message),
        "certificate" => Error::cert(message),
        "transport" => Error::transport(message),
        "timeout" => Error::timeout(message),
        "protocol" => Error::protocol(message),
        "service" => service(500),
        "authentication" => service(401),
        "not_found" => service(404),
        "conflict" => service(409),
        "throttled" => service(429),
        "registration_failed" => Error::RegistrationFailed {
            status: "failed".into(),
            error_code: Some(401_002),
            message: message.into(),
        },
        "emulator" => Error::emulator(message),
        "io" => Error::io("/nonexistent/dpskit", std::io::Error::from_raw_os_error(2)),
        _ => return None,
    })
}

/// Names accepted by [`example_error`].
pub(crate) const ERROR_KINDS: &[&str] = &[
    "config",
    "certificate",
    "transport",
    "timeout",
    "protocol",
    "service",
    "authentication",
    "not_found",
    "conflict",
    "throttled",
    "registration_failed",
    "emulator",
    "io",
];
