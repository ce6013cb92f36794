//! REST clients for the management plane (Azure Resource Manager) and, next, the DPS and IoT
//! Hub service APIs. The same code talks to Azure and to the emulator's HTTPS listener; only
//! the endpoint, the credential and the trust anchors differ.

pub mod arm;
pub mod dps;
pub mod hub;

use std::time::Duration;

use crate::error::{Error, Result, ServiceFailure};
use crate::provisioning::Trust;

/// `value` without `null` object members, at every depth when `deep` (else at the top only):
/// the official SDKs and the Azure CLI leave unset fields out instead of sending `null`.
pub(crate) fn omit_nulls(value: serde_json::Value, deep: bool) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, if deep { omit_nulls(v, true) } else { v }))
                .collect(),
        ),
        serde_json::Value::Array(items) if deep => {
            serde_json::Value::Array(items.into_iter().map(|v| omit_nulls(v, true)).collect())
        }
        other => other,
    }
}

/// An HTTPS client with ring-backed rustls (the crate's one crypto provider).
/// `trust` is the emulator's CA, or [`Trust::system`] for Azure.
pub(crate) fn http_client(trust: &Trust, timeout: Duration) -> Result<reqwest::Client> {
    let roots = trust.roots();
    let config = rustls::ClientConfig::builder_with_provider(crate::transport::provider())
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
    let response_code = ["x-ms-error-code", "iothub-errorcode"]
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
    let code = code.or_else(|| response_code.as_deref().and_then(|c| c.parse().ok()));
    // IoT Hub writes {"Message": "ErrorCode:DeviceNotFound;...", "ExceptionMessage": ...}.
    let message = details
        .get("message")
        .or_else(|| details.get("Message"))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| {
            if text.is_empty() {
                "no details".into()
            } else {
                text.clone()
            }
        });
    let hint = match (status, code) {
        (401, _) | (_, Some(401_002)) => {
            " | What to do: check the credential (the SAS key of the connection string, or the \
             Entra ID token for ARM) and that it has not expired."
        }
        (403, c) if c != Some(crate::limits::TWIN_TOO_LARGE_ERROR_CODE) => {
            " | What to do: the identity lacks the role or the policy right for this call."
        }
        _ => "",
    };
    Error::Service(Box::new(ServiceFailure {
        status,
        error_code: code,
        message: format!("{what}: {message}{hint}"),
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

#[cfg(test)]
mod tests {
    //! Error bodies exactly as Azure writes them (shapes recorded in the wire-protocol notes).

    use super::*;

    async fn parse(status: u16, headers: &[(&str, &str)], body: &str) -> ServiceFailure {
        let mut builder = hyper::Response::builder().status(status);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let response = reqwest::Response::from(builder.body(body.to_string()).unwrap());
        match failure(response, "calling").await {
            Error::Service(s) => *s,
            other => panic!("not a service failure: {other:?}"),
        }
    }

    #[test]
    fn azure_error_shapes() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            // ARM
            let arm = parse(
                404,
                &[("x-ms-correlation-request-id", "c0ffee")],
                r#"{"error":{"code":"ResourceNotFound","message":"The Resource 'Microsoft.Devices/provisioningServices/x' under resource group 'rg' was not found."}}"#,
            )
            .await;
            assert_eq!((arm.status, arm.error_code), (404, None));
            assert!(arm.message.contains("was not found"), "{}", arm.message);
            assert_eq!(arm.tracking_id.as_deref(), Some("c0ffee"));
            // The DPS service API: ProvisioningServiceErrorDetails.
            let dps = parse(
                412,
                &[("x-ms-error-code", "412002"), ("x-ms-request-id", "t-1")],
                r#"{"errorCode":412002,"trackingId":"t-1","message":"The ETag in the request does not match the ETag of the resource.","timestampUtc":"2023-05-19T23:10:35.7799084Z"}"#,
            )
            .await;
            assert_eq!((dps.status, dps.error_code), (412, Some(412_002)));
            assert!(dps.message.contains("ETag"));
            // The hub: the code only in Message text and the header.
            let hub = parse(
                404,
                &[("iothub-errorcode", "404001")],
                r#"{"Message":"ErrorCode:DeviceNotFound;Device not found.","ExceptionMessage":"Tracking ID:abc-G:0-TimeStamp:11/29/2026 10:00:00"}"#,
            )
            .await;
            assert_eq!((hub.status, hub.error_code), (404, Some(404_001)));
            assert!(hub.message.contains("DeviceNotFound"), "{}", hub.message);
            // Throttling carries Retry-After.
            let throttled = parse(429, &[("retry-after", "7")], "").await;
            assert_eq!(throttled.retry_after, Some(7.0));
            assert!(throttled.message.ends_with("no details"));
        });
    }
}
