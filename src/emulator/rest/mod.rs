//! The emulator's HTTPS listener: the Azure Resource Manager subset a DPS walkthrough uses
//! (CA certificates and proof of possession so far), with Azure's paths, bodies, dates, etags
//! and error shapes, so that dpskit's REST client and the official management SDK both work
//! against it. Every request is translated into the same [`Cloud`] operations the in-process
//! API uses.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::emulator::Cloud;
use crate::error::Error;

/// The largest request body accepted (a certificate chain fits many times over).
const MAX_BODY: usize = 4 * 1024 * 1024;

mod arm;
mod dps_service;
mod hub_service;

/// What the HTTPS listener serves from.
pub(crate) struct RestContext {
    /// Resources and their configuration.
    pub cloud: Arc<Cloud>,
    /// TLS with the emulator's server certificate (no client certificates).
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Twins, methods, C2D and telemetry of the hubs.
    pub hubs: Arc<crate::emulator::hub::HubEngine>,
    /// The MQTT listeners: a hub created over ARM must be reachable at once.
    pub listeners: Arc<crate::emulator::Listeners>,
    /// `host:port` of this listener: a DPS's `serviceOperationsHostName`.
    pub service_authority: String,
    /// Bearer tokens ARM accepts; `None` accepts any.
    pub arm_tokens: Option<Vec<String>>,
}

/// Accepts HTTPS connections until the runtime stops.
pub(crate) async fn serve(listener: TcpListener, context: Arc<RestContext>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let context = context.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let tls = match tokio::time::timeout(
                Duration::from_secs(10),
                context.acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    log::info!("emulator: HTTPS handshake with {peer} failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |request| {
                let context = context.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(request, &context).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                log::debug!("emulator: HTTPS connection from {peer} ended: {e}");
            }
        });
    }
}

/// A response body and status, before headers.
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) body: Option<Value>,
    pub(super) etag: Option<String>,
    /// Further headers (`x-ms-error-code`, `x-ms-continuation`, ...).
    pub(super) headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub(super) fn json(status: StatusCode, body: Value) -> Self {
        Reply {
            status,
            body: Some(body),
            etag: None,
            headers: Vec::new(),
        }
    }

    pub(super) fn empty(status: StatusCode) -> Self {
        Reply {
            status,
            body: None,
            etag: None,
            headers: Vec::new(),
        }
    }
}

/// An ARM error: `{"code", "httpStatusCode", "message"}` as the DPS resource provider writes
/// it (its `ErrorDetails` model), with the numeric DPS code where there is one.
pub(super) fn arm_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        json!({
            "code": code,
            "httpStatusCode": StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error"),
            "message": message,
        }),
    )
}

pub(super) fn from_error(error: &Error) -> Reply {
    match error {
        Error::Service(s) => arm_error(
            s.status,
            &s.error_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| s.status.to_string()),
            &s.message,
        ),
        Error::Certificate(m) | Error::Config(m) => arm_error(400, "400004", m),
        other => arm_error(500, "500000", &other.to_string()),
    }
}

async fn handle(request: Request<Incoming>, context: &RestContext) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let reply = match Limited::new(body, MAX_BODY).collect().await {
        Err(_) => arm_error(413, "413000", "the request body is larger than 4 MB"),
        Ok(collected) => {
            let body = collected.to_bytes();
            // Names arrive percent-encoded; the resources are known by their decoded names.
            let decoded: Vec<String> = parts
                .uri
                .path()
                .trim_matches('/')
                .split('/')
                .map(|s| crate::sas::url_decode(s).unwrap_or_else(|_| s.to_string()))
                .collect();
            let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
            let first = segments.first().map(|s| s.to_ascii_lowercase());
            match first.as_deref() {
                // Service calls that may wait (direct methods) run on the connection's task.
                Some("devices" | "twins" | "dpskit") => {
                    let query = parts.uri.query().unwrap_or("");
                    hub_service::handle(&parts, &segments, query, &body, context).await
                }
                _ => route(&parts, &segments, &body, context),
            }
        }
    };
    let mut response = Response::new(Full::new(match &reply.body {
        Some(v) => Bytes::from(v.to_string()),
        None => Bytes::new(),
    }));
    *response.status_mut() = reply.status;
    if reply.body.is_some() {
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
    }
    if let Some(etag) = reply.etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        response.headers_mut().insert(hyper::header::ETAG, etag);
    }
    for (name, value) in reply.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

fn route(
    parts: &hyper::http::request::Parts,
    segments: &[&str],
    body: &[u8],
    context: &RestContext,
) -> Reply {
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    let first = segments.first().map(|s| s.to_ascii_lowercase());
    match first.as_deref() {
        Some("subscriptions") => {}
        Some("enrollments" | "enrollmentgroups" | "registrations") => {
            return dps_service::handle(parts, segments, body, context);
        }
        _ => return arm_error(404, "404000", &format!("no API is served at {path}")),
    }
    // By default any bearer token passes (the listener is on loopback): what matters for
    // clients is that they send one, as they must to Azure. Configured tokens are enforced.
    let bearer = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "))
        .map(|v| v[7..].trim());
    let accepted = match (&context.arm_tokens, bearer) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(tokens), Some(token)) => tokens.iter().any(|t| t == token),
    };
    if !accepted {
        return arm_error(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing, not a Bearer token, or not a token this emulator was configured to accept.",
        );
    }
    let has_api_version = crate::emulator::topics::query_pairs(query)
        .any(|(k, v)| k.eq_ignore_ascii_case("api-version") && !v.is_empty());
    if !has_api_version {
        return arm_error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    }
    let if_match = parts
        .headers
        .get(hyper::header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    arm::handle(&parts.method, segments, body, if_match.as_deref(), context)
}

/// The candidate whose `policy` key (primary or secondary) signed the request's SAS token, or
/// why the request is not authorized (shared by the DPS and hub service APIs).
pub(super) fn sas_signer<T>(
    parts: &hyper::http::request::Parts,
    policy: &str,
    candidates: impl IntoIterator<Item = (T, String, String)>,
) -> Result<T, String> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            format!("The Authorization header is missing: send a {policy} SAS token.")
        })?;
    let token = crate::sas::SasToken::parse(header).map_err(|e| e.to_string())?;
    if token.expiry < crate::pki::issue::now() {
        return Err("The SAS token has expired.".into());
    }
    if !token
        .key_name
        .as_deref()
        .is_some_and(|k| k.eq_ignore_ascii_case(policy))
    {
        return Err(format!(
            "The SAS token must name the {policy} policy (skn)."
        ));
    }
    candidates
        .into_iter()
        .find(|(_, primary, secondary)| {
            token.is_signed_by(primary) || token.is_signed_by(secondary)
        })
        .map(|(found, _, _)| found)
        .ok_or_else(|| format!("The SAS token is not signed by a {policy} key of this emulator."))
}

/// Unix seconds as an RFC 1123 date (`Sat, 31 Dec 2039 23:59:59 GMT`).
pub fn http_date(unix: i64) -> String {
    let at = if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH
    };
    httpdate::fmt_http_date(
        at.max(UNIX_EPOCH)
            .min(SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799)),
    )
}
