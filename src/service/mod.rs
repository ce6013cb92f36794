//! REST clients for the management plane (Azure Resource Manager) and, next, the DPS and IoT
//! Hub service APIs. The same code talks to Azure and to the emulator's HTTPS listener; only
//! the endpoint, the credential and the trust anchors differ.

pub mod arm;
pub mod dps;
pub mod hub;

use std::time::Duration;

use crate::error::{Error, Result, ServiceFailure};
use crate::provisioning::Trust;

/// Where TLS trust for a REST endpoint comes from.
#[derive(Clone)]
pub enum RestTrust {
    /// The operating system's roots (Azure).
    System,
    /// Exactly these anchors (the emulator's CA).
    Anchors(Trust),
}

/// An HTTPS client with ring-backed rustls (the crate's one crypto provider).
pub(crate) fn http_client(trust: &RestTrust, timeout: Duration) -> Result<reqwest::Client> {
    let roots = match trust {
        RestTrust::Anchors(trust) => trust.roots(),
        RestTrust::System => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                // One unusable system certificate must not make Azure unreachable.
                let _ = roots.add(cert);
            }
            std::sync::Arc::new(roots)
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(crate::emulator::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(timeout)
        .user_agent(concat!("dpskit/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Config(format!("cannot create the HTTPS client: {e}")))
}

/// Turns a non-success response into the typed error: status, Azure's error code (numeric
/// when Azure sent one), message and tracking id, from either error shape Azure writes
/// (`{"code","message"}` or `{"error":{"code","message"}}`, or DPS's `errorCode`).
pub(crate) async fn failure(response: reqwest::Response, what: &str) -> Error {
    let status = response.status().as_u16();
    let tracking_id = ["x-ms-request-id", "x-ms-correlation-request-id"]
        .iter()
        .find_map(|h| response.headers().get(*h))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let text = response.text().await.unwrap_or_default();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let details = body.get("error").filter(|e| e.is_object()).unwrap_or(&body);
    let code = details
        .get("errorCode")
        .or_else(|| details.get("code"))
        .and_then(|c| match c {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        })
        .and_then(|c| u32::try_from(c).ok());
    let message = details
        .get("message")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| {
            if text.is_empty() {
                "no details".into()
            } else {
                text.clone()
            }
        });
    Error::Service(Box::new(ServiceFailure {
        status,
        error_code: code,
        message: format!("{what}: {message}"),
        tracking_id,
        retry_after,
    }))
}

pub(crate) fn transport(what: &str, error: reqwest::Error) -> Error {
    if error.is_timeout() {
        Error::Timeout(format!("{what}: no answer in time"))
    } else {
        Error::Transport(format!("{what}: {error}"))
    }
}
