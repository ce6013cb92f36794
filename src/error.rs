//! The core's single error type. The Python layer maps each variant to one class of
//! `dpskit.errors` (see `src/python/errors.rs`).
//!
//! A failure that comes from another error (an `io::Error`, a rustls or rcgen error, a JSON
//! parse...) keeps that error as its [`source`](std::error::Error::source), not only its text:
//! a [`Detail`] holds dpskit's context and the cause, and prints "context: cause" as the
//! messages always read.

use std::path::{Path, PathBuf};

/// An underlying error kept as a cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in dpskit's words, and the error that caused it when there is one. Its
/// `Display` is "context: cause" (just the context without a cause); `source()` is the cause.
#[derive(Debug)]
pub struct Detail {
    message: String,
    source: Option<BoxError>,
}

impl Detail {
    /// dpskit's context, without the cause's text.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for Detail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Detail {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl Detail {
    fn new(message: impl Into<String>) -> Self {
        Detail {
            message: message.into(),
            source: None,
        }
    }

    fn caused(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Detail {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

/// Every failure the dpskit core reports. Non-exhaustive: a later version may add a kind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument or configuration value is invalid.
    #[error(transparent)]
    Config(Detail),
    /// A certificate, key, CSR, chain or registration id is invalid or unusable.
    #[error(transparent)]
    Certificate(Detail),
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
    #[error(transparent)]
    Transport(Detail),
    /// An operation missed its deadline.
    #[error(transparent)]
    Timeout(Detail),
    /// The peer broke the protocol.
    #[error(transparent)]
    Protocol(Detail),
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
    #[error(transparent)]
    Emulator(Detail),
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

/// The constructors of the variants that hold a [`Detail`]: `kind(message)` without a cause,
/// `kind_caused(context, cause)` with one (shown as "context: cause").
macro_rules! detail_constructors {
    ($($variant:ident: $plain:ident, $caused:ident;)*) => {
        impl Error {
            $(
                #[doc = concat!("An [`Error::", stringify!($variant), "`] with this message.")]
                pub fn $plain(message: impl Into<String>) -> Self {
                    Error::$variant(Detail::new(message))
                }

                #[doc = concat!("An [`Error::", stringify!($variant), "`]: `context` and the error it \
                    came from, kept as its source (an error value: its text alone would lose it).")]
                pub fn $caused(context: impl Into<String>, cause: impl Into<BoxError>) -> Self {
                    Error::$variant(Detail::caused(context, cause))
                }
            )*
        }
    };
}

detail_constructors! {
    Config: config, config_caused;
    Certificate: cert, cert_caused;
    Transport: transport, transport_caused;
    Timeout: timeout, timeout_caused;
    Protocol: protocol, protocol_caused;
    Emulator: emulator, emulator_caused;
}

impl Error {
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

    /// The operating system's error at the root of this error's causes (a refused connection,
    /// a missing file), with the file it concerns when an [`Error::Io`] right above it names
    /// one; `None` when the root cause is anything else. Python raises dpskit's exception
    /// from it, as an `OSError` with its errno.
    pub fn os_cause(&self) -> Option<(&std::io::Error, Option<&Path>)> {
        let mut path = None;
        let mut current: &(dyn std::error::Error + 'static) = self;
        while let Some(next) = current.source() {
            path = match current.downcast_ref::<Error>() {
                Some(Error::Io { path, .. }) => Some(path.as_path()),
                _ => None,
            };
            current = next;
        }
        let root = current.downcast_ref::<std::io::Error>()?;
        root.raw_os_error().map(|_| (root, path))
    }
}

/// A duration a caller gives as seconds (Python's float), checked before it becomes a
/// `Duration` (whose plain constructor panics on a negative, non-finite or huge value): a
/// timeout must be positive.
pub fn positive_seconds(what: &str, value: f64) -> Result<std::time::Duration> {
    match std::time::Duration::try_from_secs_f64(value) {
        Ok(duration) if value > 0.0 => Ok(duration),
        _ => Err(Error::config(format!(
            "{what} must be a positive number of seconds, not {value}"
        ))),
    }
}

/// A duration a caller gives as seconds that may be zero (a latency).
pub(crate) fn non_negative_seconds(what: &str, value: f64) -> Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(value)
        .map_err(|_| Error::config(format!("{what} must be >= 0 seconds, not {value}")))
}

/// Result alias used throughout the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::mqtt::{self, DialError};
    use std::error::Error as _;

    /// Every cause in the chain below `error`, nearest first.
    fn causes(error: &Error) -> Vec<&(dyn std::error::Error + 'static)> {
        std::iter::successors(error.source(), |e| (*e).source()).collect()
    }

    /// The message reads as it always did ("context: cause"), and the cause is the source.
    #[test]
    fn a_cause_prints_after_the_context_and_is_the_source() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let text = refused.to_string();
        let error = Error::transport_caused("cannot reach 127.0.0.1:1", refused);
        assert_eq!(
            error.to_string(),
            format!("cannot reach 127.0.0.1:1: {text}")
        );
        let Error::Transport(detail) = &error else {
            panic!("{error:?}")
        };
        assert_eq!(detail.message(), "cannot reach 127.0.0.1:1");
        let source = error.source().expect("the cause is the source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("an io::Error");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        // No OS error code: nothing for Python to raise from.
        assert!(error.os_cause().is_none());

        let plain = Error::config("no cause");
        assert_eq!(plain.to_string(), "no cause");
        assert!(plain.source().is_none());
    }

    /// PEM that does not parse: the certificate error keeps the pem crate's error.
    #[test]
    fn bad_pem_keeps_the_pem_error() {
        let bad = b"-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n";
        let error = crate::pki::Certificate::from_pem(bad).unwrap_err();
        assert!(matches!(error, Error::Certificate(_)), "{error:?}");
        let pem_error = causes(&error)
            .into_iter()
            .find_map(|e| e.downcast_ref::<pem::PemError>())
            .unwrap_or_else(|| panic!("no pem::PemError below {error:?}"));
        assert_eq!(error.to_string(), format!("malformed PEM: {pem_error}"));
        assert!(error.os_cause().is_none());
    }

    fn client_tls() -> std::sync::Arc<rustls::ClientConfig> {
        let config = crate::transport::Trust::system()
            .client_config(None, 0)
            .unwrap();
        std::sync::Arc::new(config)
    }

    async fn dial(port: u16) -> DialError {
        let connect = rumqttc::Connect::new("device-1");
        match mqtt::dial(
            "127.0.0.1",
            port,
            &mqtt::Via::default(),
            client_tls(),
            connect,
            1024,
        )
        .await
        {
            Ok(_) => panic!("dialling 127.0.0.1:{port} succeeded"),
            Err(e) => e,
        }
    }

    /// A closed loopback port: the chain reaches the operating system's "connection refused",
    /// which `os_cause` finds for Python.
    #[test]
    fn a_refused_connection_keeps_the_os_error() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let failure = runtime.block_on(dial(port));
        assert!(matches!(failure, DialError::Unreachable(_)), "{failure:?}");
        let error = Error::transport_caused(format!("cannot reach 127.0.0.1:{port}"), failure);
        let io = causes(&error)
            .into_iter()
            .find_map(|e| e.downcast_ref::<std::io::Error>())
            .unwrap_or_else(|| panic!("no io::Error below {error:?}"));
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        let (root, path) = error.os_cause().expect("an OS error at the root");
        assert_eq!(root.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(root.raw_os_error().is_some());
        assert!(path.is_none());
    }

    /// A peer that does not speak TLS: the chain reaches rustls's own error, not only the
    /// io::Error tokio-rustls wraps it in.
    #[test]
    fn a_failed_handshake_keeps_the_rustls_error() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut hello = [0u8; 512];
                let _ = socket.read(&mut hello).await;
                let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            });
            let failure = dial(port).await;
            server.await.unwrap();
            let DialError::Tls(io) = &failure else {
                panic!("{failure:?}")
            };
            let text = io.to_string();
            let from_dial = failure
                .source()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .is_some();
            assert!(from_dial, "DialError's source is not rustls's: {failure:?}");
            let DialError::Tls(io) = failure else {
                unreachable!()
            };
            let error = Error::transport_caused("TLS failed", mqtt::tls_cause(io));
            assert_eq!(error.to_string(), format!("TLS failed: {text}"));
            let tls = error
                .source()
                .and_then(|e| e.downcast_ref::<rustls::Error>());
            assert!(tls.is_some(), "no rustls::Error below {error:?}");
            assert!(error.os_cause().is_none());
        });
    }

    /// A file error below another error: Python's OSError gets the file's path too.
    #[test]
    fn an_io_error_below_names_its_file() {
        let missing = std::path::Path::new("/nonexistent/dpskit/ca.pem");
        let io = Error::io(missing, std::io::Error::from_raw_os_error(2));
        let error = Error::config_caused("cannot read the CA", io);
        let (root, path) = error.os_cause().expect("an OS error at the root");
        assert_eq!(root.raw_os_error(), Some(2));
        assert_eq!(path, Some(missing));
    }
}
