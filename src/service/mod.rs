//! Service-side clients: REST for the management plane (Azure Resource Manager) and the DPS
//! and IoT Hub service APIs, and the AMQP reader of a hub's Event Hub-compatible endpoint
//! (`events.rs`). The same code talks to Azure and to the emulator (ARM on its management
//! port, each service API at its resource's own address); only the endpoint, the credential
//! and the trust anchors differ.
//!
//! Every REST request of every client goes through the one [`RetryPolicy`]: 429 is sent again
//! (Azure did nothing with it), 408 and 5xx and broken connections only when the request may be
//! repeated ([`Replay`]); the wait is the service's `Retry-After` when it gave one, else a
//! jittered exponential backoff; attempts and the total wait are capped.

pub(crate) mod amqp;
pub(crate) mod arm;
pub(crate) mod c2d;
pub(crate) mod dps;
pub(crate) mod events;
pub(crate) mod hub;

pub use crate::protocol::event_hubs::StartPosition;
/// The hub service API's identities and twins, as [`HubServiceClient`] reads them.
pub use crate::protocol::hub_service::{
    AuthenticationMechanism, DeviceCapabilities, DeviceIdentity, SymmetricKey, Twin,
    TwinProperties, X509Thumbprint,
};
pub use arm::{
    AZURE_ARM_ENDPOINT, ArmClient, NamespaceLinkTarget, NamespaceResource, PolicyResource,
    TokenSource, static_token,
};
pub use c2d::{C2dClient, C2dFeedback, C2dMessage, FeedbackReceiver};
pub use dps::DpsServiceClient;
pub use events::{
    AMQPS_PORT, EventHubConnectionString, EventHubInfo, EventReader, EventStream, PartitionInfo,
    PartitionReader, ReceivedEvent, read_retained,
};
pub use hub::HubServiceClient;

use std::time::Duration;

use crate::error::{Error, Result, ServiceFailure};
use crate::transport::Trust;

/// Whether a request may be sent again when its outcome is unknown (a 5xx, a broken
/// connection). A 429 is always sent again: Azure refused it before doing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Repeating it changes nothing (GET, PUT, DELETE, a merge PATCH, a read-only POST).
    Safe,
    /// It may have acted (a direct method, a C2D message): only a 429 is retried.
    ThrottledOnly,
}

/// The one retry policy of the REST clients.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    /// Requests sent at most, the first included.
    pub(crate) attempts: u32,
    /// Requests sent at most after a broken connection (an unreachable endpoint fails fast).
    pub(crate) transport_attempts: u32,
    /// The longest single wait; a `Retry-After` beyond it ends the retries (the caller gets the
    /// throttling error with the advice instead of a silent multi-minute pause).
    pub(crate) longest_wait: Duration,
    /// The most waited in total across the retries of one request.
    pub(crate) budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // Close to azure-core's defaults (10 attempts, waits up to 2 minutes): ARM throttles
        // for tens of seconds at a time.
        RetryPolicy {
            attempts: 8,
            transport_attempts: 3,
            longest_wait: Duration::from_secs(120),
            budget: Duration::from_secs(300),
        }
    }
}

/// Statuses Azure's own SDKs retry: throttled, timed out, or a transient server fault.
fn is_transient(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// The service's advice on when to try again: `retry-after-ms` / `x-ms-retry-after-ms`
/// (milliseconds), else `Retry-After` as seconds (integer or decimal) or as an HTTP date.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = text(name).and_then(|v| v.parse::<f64>().ok())
            && ms.is_finite()
            && ms >= 0.0
        {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let value = text("retry-after")?;
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(86_400.0)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first) after `waited` in total, or
    /// `None` to stop: attempts spent, the advice past the longest wait, or the budget gone.
    pub(crate) fn delay(
        &self,
        retry: u32,
        advice: Option<Duration>,
        waited: Duration,
    ) -> Option<Duration> {
        if retry >= self.attempts {
            return None;
        }
        let wait = match advice {
            Some(advice) if advice > self.longest_wait => return None,
            Some(advice) => advice,
            None => crate::transport::jittered_backoff(retry).min(self.longest_wait),
        };
        (waited + wait <= self.budget).then_some(wait)
    }

    /// Sends the request `build` makes (afresh for each attempt: a renewed token, a body) and
    /// retries it by the policy. The last answer is returned whatever its status; a transport
    /// error once retries are spent.
    pub(crate) async fn send(
        &self,
        replay: Replay,
        what: &str,
        build: impl Fn() -> Result<reqwest::RequestBuilder>,
    ) -> Result<reqwest::Response> {
        let mut waited = Duration::ZERO;
        let mut retry = 0u32;
        loop {
            retry += 1;
            let (wait, reason) = match build()?.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let repeatable = status == 429 || replay == Replay::Safe;
                    let wait = (is_transient(status) && repeatable)
                        .then(|| self.delay(retry, retry_after(response.headers()), waited))
                        .flatten();
                    match wait {
                        Some(wait) => (wait, format!("answered {status}")),
                        None => return Ok(response),
                    }
                }
                Err(error) => {
                    // A refused certificate or a timeout will not change on a second try; a
                    // dropped connection may.
                    let repeatable = replay == Replay::Safe || error.is_connect();
                    let wait = (repeatable
                        && !error.is_timeout()
                        && !is_tls_refusal(&error)
                        && retry < self.transport_attempts)
                        .then(|| self.delay(retry, None, waited))
                        .flatten();
                    match wait {
                        Some(wait) => (wait, format!("failed ({error})")),
                        None => return Err(transport(what, error)),
                    }
                }
            };
            log::info!(
                "{what}: {reason}; attempt {} in {:.1} s",
                retry + 1,
                wait.as_secs_f64()
            );
            waited += wait;
            tokio::time::sleep(wait).await;
        }
    }
}

/// Whether TLS refused the server (an untrusted or mismatched certificate): retrying cannot
/// help. rustls's error sits inside an `io::Error`, whose `source()` skips it.
fn is_tls_refusal(error: &reqwest::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = next {
        if current.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        next = current.source();
    }
    false
}

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
        .map_err(|e| Error::config_caused("TLS configuration", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(timeout)
        .user_agent(concat!("dpskit/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::config_caused("cannot create the HTTPS client", e))
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
        Error::timeout(format!("{what}: no answer in time"))
    } else {
        Error::transport_caused(what, error)
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

    fn headers(pairs: &[(&'static str, &str)]) -> reqwest::header::HeaderMap {
        let mut map = reqwest::header::HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn retry_after_is_read_as_seconds_milliseconds_or_an_http_date() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "0")])),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "1.5")])),
            Some(Duration::from_millis(1500))
        );
        // The millisecond headers are more precise and win.
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2"), ("retry-after-ms", "250")])),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            retry_after(&headers(&[("x-ms-retry-after-ms", "40")])),
            Some(Duration::from_millis(40))
        );
        // A date: the time left until then; a date in the past means now.
        let soon = std::time::SystemTime::now() + Duration::from_secs(30);
        let advice =
            retry_after(&headers(&[("retry-after", &httpdate::fmt_http_date(soon))])).unwrap();
        assert!(advice <= Duration::from_secs(30) && advice >= Duration::from_secs(28));
        assert_eq!(
            retry_after(&headers(&[(
                "retry-after",
                "Sat, 01 Jan 2000 00:00:00 GMT"
            )])),
            Some(Duration::ZERO)
        );
        for nonsense in ["soon", "-3", "NaN", ""] {
            assert_eq!(retry_after(&headers(&[("retry-after", nonsense)])), None);
        }
        assert_eq!(retry_after(&headers(&[])), None);
    }

    #[test]
    fn retries_honour_the_advice_and_stop_at_the_caps() {
        let policy = RetryPolicy {
            attempts: 4,
            transport_attempts: 2,
            longest_wait: Duration::from_secs(60),
            budget: Duration::from_secs(100),
        };
        let seven = Some(Duration::from_secs(7));
        // The service's advice is taken as given, even zero.
        assert_eq!(policy.delay(1, seven, Duration::ZERO), seven);
        assert_eq!(
            policy.delay(1, Some(Duration::ZERO), Duration::ZERO),
            Some(Duration::ZERO)
        );
        // Without advice: the jittered backoff, growing with the retries.
        for retry in 1..4 {
            let base = f64::from(1u32 << (retry - 1));
            let wait = policy
                .delay(retry, None, Duration::ZERO)
                .unwrap()
                .as_secs_f64();
            assert!(wait >= base * 0.5 && wait <= base * 1.5, "{retry}: {wait}");
        }
        // Attempts spent.
        assert_eq!(policy.delay(4, seven, Duration::ZERO), None);
        // Advice past the longest wait: the caller gets the error and the advice instead.
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(61)), Duration::ZERO),
            None
        );
        // The total budget.
        assert_eq!(policy.delay(2, seven, Duration::from_secs(93)), seven);
        assert_eq!(policy.delay(2, seven, Duration::from_secs(94)), None);
        assert!(is_transient(429) && is_transient(503) && is_transient(408));
        assert!(!is_transient(501) && !is_transient(409) && !is_transient(404));
    }
}
