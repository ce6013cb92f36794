//! The core's single error type. The Python layer maps each variant to one class of
//! `dpskit.errors` (see `src/python/errors.rs`).

use std::path::PathBuf;

/// Every failure the dpskit core reports. Non-exhaustive: a later version may add a kind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument or configuration value is invalid.
    #[error("{0}")]
    Config(String),
    /// A certificate, key, CSR, chain or registration id is invalid or unusable.
    #[error("{0}")]
    Certificate(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file that could not be read or written.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A network connection failed.
    #[error("{0}")]
    Transport(String),
    /// An operation missed its deadline.
    #[error("{0}")]
    Timeout(String),
    /// The peer broke the protocol.
    #[error("{0}")]
    Protocol(String),
    /// A service refused a request, with Azure's error details.
    #[error("{}", .0)]
    Service(Box<ServiceFailure>),
    /// DPS refused or failed a registration.
    #[error("{message}")]
    RegistrationFailed {
        /// Registration status (e.g. "failed") or the HTTP-like status.
        status: String,
        /// Azure's numeric error code, when it sent one.
        error_code: Option<u32>,
        /// The full message, including dpskit's diagnosis.
        message: String,
    },
    /// The embedded emulator failed.
    #[error("{0}")]
    Emulator(String),
}

/// What a service said when it refused a request.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceFailure {
    /// HTTP or HTTP-like status (401, 404, 409, 412, 429, 5xx...).
    pub status: u16,
    /// Azure's numeric error code (e.g. 401002), when known.
    pub error_code: Option<u32>,
    /// Human-readable message.
    pub message: String,
    /// Azure's tracking id, when sent.
    pub tracking_id: Option<String>,
    /// Seconds to wait before retrying, when the service said so.
    pub retry_after: Option<f64>,
}

impl std::fmt::Display for ServiceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.error_code {
            Some(code) => write!(f, "{} ({}): {}", self.status, code, self.message),
            None => write!(f, "{}: {}", self.status, self.message),
        }
    }
}

/// Which Python class a [`ServiceFailure`] becomes, decided by its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceErrorKind {
    /// 401 or 403.
    Authentication,
    /// 404.
    NotFound,
    /// 409 or 412.
    Conflict,
    /// 429.
    Throttled,
    /// Anything else.
    Other,
}

impl ServiceFailure {
    /// Classifies the failure by status, the way the Python exception tree does.
    pub fn kind(&self) -> ServiceErrorKind {
        match self.status {
            // 403 also means "quota exceeded" (403002), "queue full" (403004) or "twin section
            // too large" (403100): not a credential problem.
            403 if matches!(
                self.error_code,
                Some(403_002 | 403_004 | crate::limits::TWIN_TOO_LARGE_ERROR_CODE)
            ) =>
            {
                ServiceErrorKind::Other
            }
            401 | 403 => ServiceErrorKind::Authentication,
            404 => ServiceErrorKind::NotFound,
            409 | 412 => ServiceErrorKind::Conflict,
            429 => ServiceErrorKind::Throttled,
            _ => ServiceErrorKind::Other,
        }
    }
}

impl Error {
    /// Shorthand for a certificate error with a formatted message.
    pub fn cert(message: impl Into<String>) -> Self {
        Error::Certificate(message.into())
    }

    /// A service refusal with Azure's status, error code and message.
    pub fn service(status: u16, error_code: u32, message: impl Into<String>) -> Self {
        Error::Service(Box::new(ServiceFailure {
            status,
            error_code: Some(error_code),
            message: message.into(),
            tracking_id: None,
            retry_after: None,
        }))
    }

    /// Azure's error code (`401002`, `429001`, ...) of a service's or DPS's refusal; `None` for
    /// every other error.
    pub fn error_code(&self) -> Option<u32> {
        match self {
            Error::RegistrationFailed { error_code, .. } => *error_code,
            Error::Service(failure) => failure.error_code,
            _ => None,
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// A duration a caller gives as seconds (Python's float), checked before it becomes a
/// `Duration` (whose plain constructor panics on a negative, non-finite or huge value): a
/// timeout must be positive.
pub fn positive_seconds(what: &str, value: f64) -> Result<std::time::Duration> {
    match std::time::Duration::try_from_secs_f64(value) {
        Ok(duration) if value > 0.0 => Ok(duration),
        _ => Err(Error::Config(format!(
            "{what} must be a positive number of seconds, not {value}"
        ))),
    }
}

/// A duration a caller gives as seconds that may be zero (a latency).
pub fn non_negative_seconds(what: &str, value: f64) -> Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(value)
        .map_err(|_| Error::Config(format!("{what} must be >= 0 seconds, not {value}")))
}

/// Result alias used throughout the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
