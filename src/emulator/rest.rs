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
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::emulator::Cloud;
use crate::emulator::model::CaCertificate;
use crate::error::Error;
use crate::pki::Certificate;

/// The largest request body accepted (a certificate chain fits many times over).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// What the HTTPS listener serves from.
pub struct RestContext {
    /// Resources and their configuration.
    pub cloud: Arc<Cloud>,
    /// TLS with the emulator's server certificate (no client certificates).
    pub acceptor: tokio_rustls::TlsAcceptor,
}

/// Accepts HTTPS connections until the runtime stops.
pub async fn serve(listener: TcpListener, context: Arc<RestContext>) {
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
struct Reply {
    status: StatusCode,
    body: Option<Value>,
    etag: Option<String>,
}

impl Reply {
    fn json(status: StatusCode, body: Value) -> Self {
        Reply {
            status,
            body: Some(body),
            etag: None,
        }
    }
}

/// An ARM error: `{"code", "httpStatusCode", "message"}` as the DPS resource provider writes
/// it (its `ErrorDetails` model), with the numeric DPS code where there is one.
fn arm_error(status: u16, code: &str, message: &str) -> Reply {
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

fn from_error(error: &Error) -> Reply {
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
            route(&parts, &body, context)
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
    response
}

fn route(parts: &hyper::http::request::Parts, body: &[u8], context: &RestContext) -> Reply {
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if !segments
        .first()
        .is_some_and(|s| s.eq_ignore_ascii_case("subscriptions"))
    {
        return arm_error(404, "404000", &format!("no API is served at {path}"));
    }
    // The emulator accepts any bearer token on its loopback listener; what matters for clients
    // is that they send one, as they must to Azure.
    let bearer = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "));
    if !bearer {
        return arm_error(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing or is not a Bearer token.",
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
    arm(&parts.method, &segments, body, if_match.as_deref(), context)
}

/// `/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Devices/provisioningServices/...`
fn arm(
    method: &Method,
    segments: &[&str],
    body: &[u8],
    if_match: Option<&str>,
    context: &RestContext,
) -> Reply {
    let is = |i: usize, name: &str| {
        segments
            .get(i)
            .is_some_and(|s| s.eq_ignore_ascii_case(name))
    };
    let shaped = segments.len() >= 8
        && is(2, "resourceGroups")
        && is(4, "providers")
        && is(5, "Microsoft.Devices")
        && is(6, "provisioningServices");
    if !shaped {
        return arm_error(
            404,
            "InvalidResourceType",
            &format!("the emulator does not serve /{}", segments.join("/")),
        );
    }
    let (subscription, group, dps) = (segments[1], segments[3], segments[7]);
    let base = format!(
        "/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Devices/provisioningServices/{dps}"
    );
    let cloud = &context.cloud;
    let Ok(_) = cloud.dps(dps) else {
        return arm_error(
            404,
            "ResourceNotFound",
            &format!(
                "The Resource 'Microsoft.Devices/provisioningServices/{dps}' under resource group '{group}' was not found."
            ),
        );
    };
    let rest = &segments[8..];
    let certificates = rest
        .first()
        .is_some_and(|s| s.eq_ignore_ascii_case("certificates"));
    if !certificates {
        return arm_error(
            404,
            "404000",
            &format!("the emulator does not serve {base}/{}", rest.join("/")),
        );
    }
    let outcome = match (method, &rest[1..]) {
        (&Method::GET, []) => Ok(Reply::json(
            StatusCode::OK,
            json!({"value": cloud.dps(dps).map(|d| d.certificates).unwrap_or_default()
                .iter().map(|c| certificate_json(&base, c, false)).collect::<Vec<_>>()}),
        )),
        (&Method::GET, [name]) => cloud
            .ca_certificate(dps, name)
            .and_then(|c| match if_match {
                Some(tag) if tag != "*" && tag.trim_matches('"') != c.etag => Err(Error::service(
                    412,
                    412_002,
                    "The ETag in the request does not match the ETag of the certificate.",
                )),
                _ => Ok(c),
            })
            .map(|c| certificate_reply(&base, &c, false)),
        // 200 for create and update alike: the management SDK accepts nothing else.
        (&Method::PUT, [name]) => {
            upload(cloud, dps, name, body, if_match).map(|c| certificate_reply(&base, &c, false))
        }
        (&Method::DELETE, [name]) => {
            // Azure requires If-Match to delete; "*" deletes whatever version is there.
            match if_match {
                None => Err(Error::service(
                    412,
                    412_002,
                    "If-Match with the certificate's etag is required to delete it.",
                )),
                Some(tag) => cloud
                    .delete_ca_certificate(dps, name, Some(tag))
                    .map(|()| Reply {
                        status: StatusCode::OK,
                        body: None,
                        etag: None,
                    }),
            }
        }
        (&Method::POST, [name, action])
            if action.eq_ignore_ascii_case("generateVerificationCode") =>
        {
            require_if_match(if_match)
                .and_then(|tag| cloud.generate_verification_code(dps, name, Some(tag)))
                .map(|c| certificate_reply(&base, &c, true))
        }
        (&Method::POST, [name, action])
            if action.eq_ignore_ascii_case("verify")
                || action.eq_ignore_ascii_case("verifyCertificate") =>
        {
            require_if_match(if_match)
                .and_then(|tag| {
                    let verification = certificate_from_body(body)?;
                    cloud.verify_certificate(dps, name, &verification, Some(tag))
                })
                .map(|c| certificate_reply(&base, &c, false))
        }
        _ => Ok(arm_error(
            405,
            "405000",
            "method not allowed on this resource",
        )),
    };
    outcome.unwrap_or_else(|e| from_error(&e))
}

fn require_if_match(if_match: Option<&str>) -> crate::Result<&str> {
    if_match.ok_or_else(|| {
        Error::service(
            412,
            412_002,
            "If-Match with the certificate's current etag is required (GET the certificate for it).",
        )
    })
}

/// PUT: `{"certificate", "isVerified"}` flat (CLI, older API) or under `properties` (2022-02-05).
fn upload(
    cloud: &Cloud,
    dps: &str,
    name: &str,
    body: &[u8],
    if_match: Option<&str>,
) -> crate::Result<CaCertificate> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::Config(format!("the request body is not JSON: {e}")))?;
    let fields = value
        .get("properties")
        .filter(|p| p.is_object())
        .unwrap_or(&value);
    let certificate = certificate_from_body(&serde_json::to_vec(fields).unwrap_or_default())?;
    let verified = fields
        .get("isVerified")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let existed = cloud.ca_certificate(dps, name).is_ok();
    // If-Match only guards updates; on create Azure ignores it.
    let guard = if existed { if_match } else { None };
    if existed && guard.is_none() {
        return Err(Error::service(
            412,
            412_002,
            format!("certificate '{name}' exists: updating it requires If-Match with its etag"),
        ));
    }
    cloud.upload_ca_certificate(dps, name, &certificate, verified, guard)
}

/// The `certificate` field: PEM text, base64 of DER, or base64 of PEM (all seen from clients).
fn certificate_from_body(body: &[u8]) -> crate::Result<Certificate> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::Config(format!("the request body is not JSON: {e}")))?;
    let text = value
        .get("certificate")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Config("the body has no \"certificate\" string".into()))?
        .trim();
    if text.contains("-----BEGIN") {
        return Certificate::from_pem(text.as_bytes());
    }
    use base64::Engine;
    let compact: String = text.split_whitespace().collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| Error::cert("\"certificate\" is neither PEM nor base64"))?;
    if bytes.starts_with(b"-----BEGIN") {
        Certificate::from_pem(&bytes)
    } else {
        Certificate::from_der(&bytes)
    }
}

fn certificate_reply(base: &str, c: &CaCertificate, with_code: bool) -> Reply {
    Reply {
        status: StatusCode::OK,
        body: Some(certificate_json(base, c, with_code)),
        etag: Some(c.etag.clone()),
    }
}

/// CertificateResponse (or VerificationCodeResponse with `with_code`), dates in RFC 1123 as
/// the management SDK parses them.
fn certificate_json(base: &str, c: &CaCertificate, with_code: bool) -> Value {
    let parsed = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &c.der_base64)
        .ok()
        .and_then(|der| Certificate::from_der(&der).ok());
    let (subject, expiry, thumbprint) = match &parsed {
        Some(cert) => {
            let info = cert.info();
            (
                info.subject.clone(),
                http_date(info.not_after),
                info.thumbprint_sha1.to_ascii_uppercase(),
            )
        }
        None => (String::new(), String::new(), String::new()),
    };
    let mut properties = json!({
        "subject": subject,
        "expiry": expiry,
        "thumbprint": thumbprint,
        "isVerified": c.is_verified,
        "certificate": c.der_base64,
        "created": http_date(c.created),
        "updated": http_date(c.updated),
    });
    if with_code {
        properties["verificationCode"] = json!(c.verification_code);
    }
    json!({
        "id": format!("{base}/certificates/{}", c.name),
        "name": c.name,
        "type": "Microsoft.Devices/ProvisioningServices/Certificates",
        "etag": c.etag,
        "properties": properties,
    })
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
