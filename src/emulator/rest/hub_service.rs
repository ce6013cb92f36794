//! The IoT Hub service API (api-version 2021-04-12) as the official service SDKs call it:
//! device identities (`sas`, `selfSigned`, `certificateAuthority`; status and its reason, edge
//! capability, generation id, connection state and activity as the engine knows them), the
//! identity list and the registry and service statistics, twins (read, PATCH, PUT replace),
//! queries (`hub_query.rs`: `SELECT * FROM devices [WHERE ...]`, paged by
//! `x-ms-max-item-count` and `x-ms-continuation`), direct methods (connect and response
//! timeouts), cloud-to-device queues purged (`DELETE /devices/{id}/commands`) and their delivery
//! feedback taken, completed and abandoned (`/messages/serviceBound/feedback[/{lockToken}
//! [/abandon]]`, the lock token being the `ETag`; an unknown or expired one is 412002).
//! Authenticated as on Azure: a SAS token whose `sr` is the hub host (or a prefix of
//! the resource reached, e.g. `{host}/devices/{id}`), signed by a key of the shared access
//! policy its `skn` names, which must carry the operation's right (registry reads and
//! statistics: `RegistryRead`; identity writes: `RegistryWrite`; twins, methods, C2D and its
//! feedback, telemetry and service statistics: `ServiceConnect`). Writes follow etags as IoT Hub's do: a
//! PUT without `If-Match` only creates (409001 for an existing id), and a replace, delete, twin
//! patch or twin replace naming a stale etag is 412001. A hub that enforces its tier throttles
//! each operation as IoT Hub does (429001 with `Retry-After`). Plus one emulator-only call
//! under `/dpskit/`: read the stored telemetry (Azure routes telemetry to Event Hubs, which a
//! REST client cannot reach; cloud-to-device sends arrive on the AMQP endpoint). Identities and twins are written through `protocol::hub_service`'s types, the
//! ones dpskit's client reads them with, so each member is named, and placed, once.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hyper::header::IF_MATCH;
use hyper::http::request::Parts;
use hyper::{Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};

use super::hub_query::TwinQuery;
use super::{Reply, RestContext};
use crate::emulator::cloud::{azure_time, random_guid};
use crate::emulator::hub::TwinWrite;
use crate::emulator::model::{DeviceAuth, DeviceStatus, HubDevice, HubRecord, RegistryState};
use crate::emulator::quotas::retry_after_seconds;
use crate::error::Error;
use crate::limits::{DIRECT_METHOD_METER_BYTES, HubOperation};
use crate::protocol::hub_service::{
    AuthenticationMechanism, DeviceCapabilities, DeviceIdentity, MethodResult,
    PurgeMessageQueueResult, StoredTelemetry, SymmetricKey, Twin, X509Thumbprint,
};

/// Azure's default and largest direct-method response timeouts.
const DEFAULT_METHOD_TIMEOUT: u64 = 30;
const MAX_METHOD_TIMEOUT: u64 = crate::limits::MAX_METHOD_RESPONSE_TIMEOUT_SECONDS;
const MAX_CONNECT_TIMEOUT: u64 = crate::limits::MAX_METHOD_CONNECT_TIMEOUT_SECONDS;

/// IoT Hub's error body (`Message` with the code, as the service writes it, plus the numeric
/// `errorCode` dpskit's client reads) and the `iothub-errorcode` header.
fn hub_error(status: u16, code: u32, message: &str) -> Reply {
    let mut reply = Reply::json(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        json!({
            "Message": format!("ErrorCode:{code};{message}"),
            "ExceptionMessage": format!("Tracking ID:{}-TimeStamp:{}", random_guid(), crate::emulator::cloud::azure_timestamp()),
            "errorCode": code,
            "message": message,
        }),
    );
    reply.headers.push(("iothub-errorcode", code.to_string()));
    reply
}

/// Azure's throttling answer of this API (429001, `ThrottlingException`).
pub(super) fn throttled(message: &str) -> Reply {
    hub_error(429, 429_001, message)
}

fn from_error(error: &Error) -> Reply {
    match error {
        Error::Service(s) => hub_error(
            s.status,
            s.error_code.unwrap_or(u32::from(s.status) * 1000),
            &s.message,
        ),
        Error::Certificate(m) | Error::Config(m) | Error::Protocol(m) => {
            hub_error(400, 400_004, &m.to_string())
        }
        Error::Timeout(m) => hub_error(504, 504_101, &m.to_string()),
        other => hub_error(500, 500_000, &other.to_string()),
    }
}

/// A request authenticated for one hub.
pub(super) struct HubCaller {
    hub: HubRecord,
}

/// The right an operation needs; `None` for a route the API does not have (answered 405 once
/// the caller is authenticated).
fn required_right(method: &Method, lower: &[&str]) -> Option<&'static str> {
    match (method, lower) {
        (&Method::POST, ["devices", "query"])
        | (&Method::GET, ["devices"] | ["devices", _] | ["statistics", "devices"]) => {
            Some("RegistryRead")
        }
        (&Method::PUT | &Method::DELETE, ["devices", _]) => Some("RegistryWrite"),
        (&Method::GET | &Method::PATCH | &Method::PUT, ["twins", _])
        | (&Method::GET, ["statistics", "service"])
        | (&Method::POST, ["twins", _, "methods"])
        | (&Method::DELETE, ["devices", _, "commands"])
        | (&Method::GET, ["messages", "servicebound", "feedback"])
        | (&Method::DELETE, ["messages", "servicebound", "feedback", _])
        | (&Method::POST, ["messages", "servicebound", "feedback", _, "abandon"])
        | (&Method::GET, ["dpskit", "telemetry"]) => Some("ServiceConnect"),
        _ => None,
    }
}

/// The throttle an operation counts against, and its cost: 1, or for a direct method the 4 KB
/// blocks of its request payload ("throttling is based on request payload size only").
fn throttled_operation(
    method: &Method,
    lower: &[&str],
    body: &[u8],
) -> Option<(HubOperation, f64)> {
    let operation = match (method, lower) {
        (&Method::POST, ["devices", "query"]) => HubOperation::Query,
        (&Method::GET | &Method::PUT | &Method::DELETE, ["devices", _])
        | (&Method::GET, ["devices"] | ["statistics", "devices" | "service"]) => {
            HubOperation::Registry
        }
        (&Method::GET, ["twins", _]) => HubOperation::TwinRead,
        (&Method::PATCH | &Method::PUT, ["twins", _]) => HubOperation::TwinUpdate,
        (&Method::POST, ["twins", _, "methods"]) => {
            // An unreadable body costs one block here and is refused as malformed after.
            let payload = serde_json::from_slice::<Value>(body)
                .map_or(0, |request| request["payload"].to_string().len());
            let blocks = payload.div_ceil(DIRECT_METHOD_METER_BYTES).max(1);
            return Some((HubOperation::DirectMethod, blocks as f64));
        }
        _ => return None,
    };
    Some((operation, 1.0))
}

/// Authenticates a hub service request on its headers: the token's hub, scope and right.
pub(super) fn authorize(
    parts: &Parts,
    segments: &[&str],
    context: &RestContext,
) -> Result<HubCaller, Reply> {
    let candidates = context.cloud.hubs().into_iter().map(|hub| {
        let host = hub.host_name.clone();
        let policies = hub.policies.clone();
        (hub, host, policies)
    });
    let web_port = context.web_port();
    super::sas_authorize(
        parts,
        "IoT hub",
        web_port,
        segments,
        candidates,
        required_right,
    )
    .map(|hub| HubCaller { hub })
    .map_err(|why| hub_error(401, 401_002, &why))
}

/// Serves one authenticated hub service request.
pub(super) async fn handle(
    parts: &Parts,
    segments: &[&str],
    query: &str,
    body: &[u8],
    caller: &HubCaller,
    context: &RestContext,
) -> Reply {
    let hub = &caller.hub;
    let if_match = parts.headers.get(IF_MATCH).and_then(|v| v.to_str().ok());
    let host = hub.host_name.as_str();
    let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    if let Some((operation, cost)) = throttled_operation(&parts.method, &lower, body)
        && let Err(refused) = context.hubs.admit(host, operation, cost)
    {
        let mut reply = throttled(&refused.message);
        reply.headers.push((
            "retry-after",
            retry_after_seconds(refused.retry_after).to_string(),
        ));
        return reply;
    }
    let outcome = match (&parts.method, lower.as_slice()) {
        (&Method::POST, ["devices", "query"]) => query_twins(context, host, &parts.headers, body),
        (&Method::GET, ["devices"]) => list_devices(context, host, query),
        (&Method::GET, ["devices", _]) => context
            .cloud
            .hub_device(host, segments[1])
            .ok_or_else(|| not_found(segments[1], host))
            .and_then(|d| document_reply(&identity_document(context, &d))),
        (&Method::PUT, ["devices", _]) => put_device(context, host, segments[1], body, if_match),
        (&Method::DELETE, ["devices", _]) => delete_device(context, host, segments[1], if_match),
        (&Method::GET, ["statistics", "devices"]) => Ok(registry_statistics(context, host)),
        (&Method::GET, ["statistics", "service"]) => Ok(Reply::json(
            StatusCode::OK,
            json!({"connectedDeviceCount": context.hubs.connected_count(host)}),
        )),
        (&Method::GET, ["twins", _]) => read_twin(context, host, segments[1]),
        (&Method::PATCH | &Method::PUT, ["twins", _]) => write_twin(
            context,
            host,
            segments[1],
            body,
            if_match,
            parts.method == Method::PUT,
        ),
        (&Method::POST, ["twins", _, "methods"]) => {
            invoke_method(context, host, segments[1], body).await
        }
        (&Method::DELETE, ["devices", _, "commands"]) => purge_c2d(context, host, segments[1]),
        (&Method::GET, ["messages", "servicebound", "feedback"]) => receive_feedback(context, hub),
        (&Method::DELETE, ["messages", "servicebound", "feedback", _]) => {
            settle_feedback(context, host, segments[3], false)
        }
        (&Method::POST, ["messages", "servicebound", "feedback", _, "abandon"]) => {
            settle_feedback(context, host, segments[3], true)
        }
        (&Method::GET, ["dpskit", "telemetry"]) => telemetry(context, host, query),
        _ => Ok(hub_error(
            405,
            405_000,
            &format!(
                "{} /{} is not part of the hub service API",
                parts.method,
                segments.join("/")
            ),
        )),
    };
    outcome.unwrap_or_else(|e| from_error(&e))
}

fn not_found(device_id: &str, host: &str) -> Error {
    Error::service(
        404,
        404_001,
        format!("Device '{device_id}' was not found in hub {host}."),
    )
}

fn json_body(body: &[u8]) -> crate::Result<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| Error::config_caused("the request body is not JSON", e))
}

/// Azure's time for "never" (an identity that never connected, a status never changed).
const NEVER: &str = "0001-01-01T00:00:00Z";

fn time_or_never(unix: i64) -> String {
    if unix > 0 {
        azure_time(unix)
    } else {
        NEVER.into()
    }
}

/// The identity's `generationId`: set at creation (the creation time for records written
/// before it was kept).
fn generation_id(device: &HubDevice) -> String {
    device.generation_id()
}

/// A fresh `generationId` as IoT Hub writes them: the creation time in .NET ticks (100 ns
/// since 0001-01-01), 18 digits.
fn new_generation_id() -> String {
    const TICKS_AT_UNIX_EPOCH: u128 = 621_355_968_000_000_000;
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}", TICKS_AT_UNIX_EPOCH + since_epoch.as_nanos() / 100)
}

/// The `authentication` member of an identity (keys and thumbprints both present, null where
/// the type has none, as the service writes them).
fn authentication(auth: &DeviceAuth) -> AuthenticationMechanism {
    let (kind, symmetric_key, x509_thumbprint) = match auth {
        DeviceAuth::SelfSigned {
            primary_thumbprint,
            secondary_thumbprint,
            ..
        } => (
            "selfSigned",
            SymmetricKey::default(),
            X509Thumbprint {
                primary_thumbprint: Some(primary_thumbprint.clone()),
                secondary_thumbprint: secondary_thumbprint.clone(),
            },
        ),
        DeviceAuth::Sas {
            primary_key,
            secondary_key,
        } => (
            "sas",
            SymmetricKey {
                primary_key: Some(primary_key.clone()),
                secondary_key: Some(secondary_key.clone()),
            },
            X509Thumbprint::default(),
        ),
        DeviceAuth::CertificateAuthority => (
            "certificateAuthority",
            SymmetricKey::default(),
            X509Thumbprint::default(),
        ),
    };
    AuthenticationMechanism {
        symmetric_key: Some(symmetric_key),
        x509_thumbprint: Some(x509_thumbprint),
        kind: Some(kind.into()),
    }
}

/// Queued cloud-to-device messages of a device (0 when the queue cannot be read: the count is
/// informative, and the read that failed is logged).
fn c2d_count(context: &RestContext, device: &HubDevice) -> u64 {
    context
        .hubs
        .c2d_queue(&device.hub, &device.device_id)
        .map(|queue| queue.len() as u64)
        .unwrap_or_else(|e| {
            log::warn!(
                "emulator: reading the C2D queue of {} failed: {e}",
                device.device_id
            );
            0
        })
}

/// `Connected` or `Disconnected`, as the identity and the twin write it.
fn connection_state(context: &RestContext, device: &HubDevice) -> String {
    let connected = context.hubs.is_connected(&device.hub, &device.device_id);
    if connected {
        "Connected"
    } else {
        "Disconnected"
    }
    .into()
}

/// The device identity document.
fn identity_document(context: &RestContext, device: &HubDevice) -> DeviceIdentity {
    let activity = context.hubs.activity(&device.hub, &device.device_id);
    DeviceIdentity {
        device_id: device.device_id.clone(),
        generation_id: Some(generation_id(device)),
        etag: Some(identity_etag(device)),
        connection_state: Some(connection_state(context, device)),
        status: Some(device.registry.status.as_str().into()),
        status_reason: device.registry.status_reason.clone(),
        connection_state_updated_time: Some(time_or_never(activity.connection_state_updated)),
        status_updated_time: Some(time_or_never(device.registry.status_updated)),
        last_activity_time: Some(time_or_never(activity.last_activity)),
        cloud_to_device_message_count: Some(c2d_count(context, device)),
        authentication: Some(authentication(&device.auth)),
        capabilities: Some(DeviceCapabilities {
            iot_edge: Some(device.registry.iot_edge),
        }),
    }
}

/// The twin document as the service API returns it: the engine's twin (etag, version, tags,
/// properties, and whatever else it carries) with the identity's members around it.
fn twin_document(context: &RestContext, device: &HubDevice, twin: Value) -> crate::Result<Twin> {
    let twin: Twin = serde_json::from_value(twin)
        .map_err(|e| Error::emulator_caused("the hub's twin does not read as a twin", e))?;
    let activity = context.hubs.activity(&device.hub, &device.device_id);
    let authentication = authentication(&device.auth);
    Ok(Twin {
        device_etag: Some(identity_etag(device)),
        status: Some(device.registry.status.as_str().into()),
        status_reason: device.registry.status_reason.clone(),
        status_update_time: Some(time_or_never(device.registry.status_updated)),
        connection_state: Some(connection_state(context, device)),
        last_activity_time: Some(time_or_never(activity.last_activity)),
        cloud_to_device_message_count: Some(c2d_count(context, device)),
        authentication_type: authentication.kind,
        x509_thumbprint: authentication.x509_thumbprint,
        capabilities: Some(DeviceCapabilities {
            iot_edge: Some(device.registry.iot_edge),
        }),
        ..twin
    })
}

/// A document (an identity, a twin, a list of either, ...) as its type writes it.
fn document_value(document: &impl Serialize) -> crate::Result<Value> {
    serde_json::to_value(document)
        .map_err(|e| Error::emulator_caused("writing a hub service document", e))
}

/// A `200 OK` carrying a document.
fn document_reply(document: &impl Serialize) -> crate::Result<Reply> {
    Ok(Reply::json(StatusCode::OK, document_value(document)?))
}

fn device_or_404(context: &RestContext, host: &str, device_id: &str) -> crate::Result<HubDevice> {
    context
        .cloud
        .hub_device(host, device_id)
        .ok_or_else(|| not_found(device_id, host))
}

/// GET `/twins/{id}`.
fn read_twin(context: &RestContext, host: &str, device_id: &str) -> crate::Result<Reply> {
    let device = device_or_404(context, host, device_id)?;
    let twin = context.hubs.service_twin(host, device_id)?;
    document_reply(&twin_document(context, &device, twin)?)
}

/// A device identity's etag: a digest of the identity as stored (its credentials, status and
/// write count), so every write changes it, even one that sets the same values.
fn identity_etag(device: &HubDevice) -> String {
    let record = serde_json::to_vec(device).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, &record);
    BASE64.encode(&digest.as_ref()[..12])
}

/// Whether `If-Match` (quoted or bare, as the SDKs and the REST reference write it) names the
/// identity's current etag or the wildcard.
fn etag_matches(if_match: &str, device: &HubDevice) -> bool {
    let tag = unquoted(if_match);
    tag == "*" || tag == identity_etag(device)
}

/// An `If-Match` value without its quotes (azure-iot-hub quotes etags, the REST reference
/// shows them bare).
fn unquoted(if_match: &str) -> &str {
    let tag = if_match.trim();
    tag.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(tag)
}

/// IoT Hub's answer to a write or delete whose `If-Match` names an etag the identity or twin
/// (`what`) no longer has: 412001, nothing changed.
fn stale_etag(what: &str, device_id: &str) -> Error {
    Error::service(
        412,
        412_001,
        format!(
            "The specified ETag does not match the current ETag of the {what} of device \
             '{device_id}'. Read it again and retry with its etag."
        ),
    )
}

/// A malformed request: 400004 (`ArgumentInvalid`), as IoT Hub answers it.
fn invalid(message: String) -> Error {
    Error::service(400, 400_004, message)
}

/// Deletes a device identity; with an `If-Match` that is not the wildcard, only while the
/// identity still has that etag (as on Azure; without one the delete is unconditional).
fn delete_device(
    context: &RestContext,
    host: &str,
    device_id: &str,
    if_match: Option<&str>,
) -> crate::Result<Reply> {
    let existing = device_or_404(context, host, device_id)?;
    if if_match.is_some_and(|tag| !etag_matches(tag, &existing)) {
        return Err(stale_etag("identity", device_id));
    }
    context.hubs.delete_device(host, device_id)?;
    Ok(Reply::empty(StatusCode::NO_CONTENT))
}

/// An X.509 thumbprint as the service takes it: SHA-1 (40) or SHA-256 (64) hex digits,
/// stored upper case.
fn thumbprint(value: &Value, which: &str) -> crate::Result<Option<String>> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) if text.is_empty() => Ok(None),
        Value::String(text)
            if matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Ok(Some(text.to_ascii_uppercase()))
        }
        other => Err(invalid(format!(
            "x509Thumbprint.{which} must be a SHA-1 (40) or SHA-256 (64) hex thumbprint, not \
             {other}"
        ))),
    }
}

/// The credentials a PUT asks for: `sas` (keys generated when null or empty), `selfSigned`
/// (a primary thumbprint, an optional secondary) or `certificateAuthority`.
fn requested_auth(authentication: &Value) -> crate::Result<DeviceAuth> {
    if !(authentication.is_null() || authentication.is_object()) {
        return Err(invalid("authentication must be an object".into()));
    }
    let kind = match &authentication["type"] {
        Value::Null => "sas",
        Value::String(kind) => kind.as_str(),
        other => {
            return Err(invalid(format!(
                "authentication.type {other} is not a string"
            )));
        }
    };
    match kind.to_ascii_lowercase().as_str() {
        "sas" => {
            let key = |k: &str| -> crate::Result<String> {
                match &authentication["symmetricKey"][k] {
                    Value::Null => crate::sas::generate_key(),
                    Value::String(key) if key.is_empty() => crate::sas::generate_key(),
                    Value::String(key) => {
                        crate::sas::validate_symmetric_key(&format!("symmetricKey.{k}"), key)
                            .map_err(|e| invalid(e.to_string()))?;
                        Ok(key.clone())
                    }
                    other => Err(invalid(format!("symmetricKey.{k} {other} is not a string"))),
                }
            };
            Ok(DeviceAuth::Sas {
                primary_key: key("primaryKey")?,
                secondary_key: key("secondaryKey")?,
            })
        }
        "selfsigned" => {
            let thumbprints = &authentication["x509Thumbprint"];
            let primary = thumbprint(&thumbprints["primaryThumbprint"], "primaryThumbprint")?
                .ok_or_else(|| {
                    invalid("a selfSigned device needs x509Thumbprint.primaryThumbprint".into())
                })?;
            Ok(DeviceAuth::SelfSigned {
                primary_thumbprint: primary,
                primary_thumbprint_sha256: String::new(),
                secondary_thumbprint: thumbprint(
                    &thumbprints["secondaryThumbprint"],
                    "secondaryThumbprint",
                )?,
            })
        }
        "certificateauthority" => Ok(DeviceAuth::CertificateAuthority),
        other => Err(invalid(format!(
            "authentication.type {other:?} is not one of sas, selfSigned, certificateAuthority"
        ))),
    }
}

/// Creates or replaces a device identity with the credentials, status and capabilities the
/// body gives. As on Azure, a PUT without `If-Match` only creates (an existing id is 409001),
/// and a replace must name the current etag or `*` (else 412001); an `If-Match` other than
/// `*` for a device that does not exist is 404001. A replace keeps the identity's generation
/// and twin; disabling a connected device closes its connection.
fn put_device(
    context: &RestContext,
    host: &str,
    device_id: &str,
    body: &[u8],
    if_match: Option<&str>,
) -> crate::Result<Reply> {
    crate::emulator::cloud::validate_device_id(device_id)?;
    let body = json_body(body)?;
    if !body.is_object() {
        return Err(invalid("the device identity must be a JSON object".into()));
    }
    if let Some(named) = body["deviceId"].as_str()
        && named != device_id
    {
        return Err(invalid(format!(
            "the body names device '{named}', the path '{device_id}'"
        )));
    }
    let existing = context.cloud.hub_device(host, device_id);
    match (&existing, if_match) {
        (None, Some(tag)) if unquoted(tag) != "*" => {
            return Err(not_found(device_id, host));
        }
        (Some(_), None) => {
            return Err(Error::service(
                409,
                409_001,
                format!(
                    "A device with ID '{device_id}' is already registered in hub {host}. To \
                     replace it, send If-Match with its etag (or *)."
                ),
            ));
        }
        (Some(device), Some(tag)) if !etag_matches(tag, device) => {
            return Err(stale_etag("identity", device_id));
        }
        _ => {}
    }
    let auth = requested_auth(&body["authentication"])?;
    let status = match &body["status"] {
        Value::Null => DeviceStatus::Enabled,
        Value::String(s) if s.eq_ignore_ascii_case("enabled") => DeviceStatus::Enabled,
        Value::String(s) if s.eq_ignore_ascii_case("disabled") => DeviceStatus::Disabled,
        other => {
            return Err(invalid(format!(
                "status {other} is not \"enabled\" or \"disabled\""
            )));
        }
    };
    let status_reason = match &body["statusReason"] {
        Value::Null => None,
        Value::String(reason) => Some(reason.clone()),
        other => return Err(invalid(format!("statusReason {other} is not a string"))),
    };
    let iot_edge = match &body["capabilities"]["iotEdge"] {
        Value::Null => false,
        Value::Bool(edge) => *edge,
        other => {
            return Err(invalid(format!(
                "capabilities.iotEdge {other} is not a boolean"
            )));
        }
    };
    let now = context.cloud.clock().now();
    let device = match existing {
        Some(old) => HubDevice {
            auth,
            registry: RegistryState {
                status,
                status_reason,
                status_updated: if old.registry.status == status {
                    old.registry.status_updated
                } else {
                    now
                },
                iot_edge,
                generation_id: generation_id(&old),
                writes: old.registry.writes + 1,
            },
            ..old
        },
        None => HubDevice {
            device_id: device_id.to_string(),
            hub: host.to_string(),
            auth,
            initial_twin: None,
            created: now,
            registry: RegistryState {
                status,
                status_reason,
                status_updated: 0,
                iot_edge,
                generation_id: new_generation_id(),
                writes: 0,
            },
            issued_by: None,
        },
    };
    context.cloud.put_hub_device(device.clone())?;
    if status == DeviceStatus::Disabled {
        // As IoT Hub does: a disabled device is disconnected (and refused when it reconnects).
        context.hubs.drop_connection(host, device_id);
    }
    document_reply(&identity_document(context, &device))
}

/// "Get Devices": up to `top` identities (1 to 1,000; anything else is 1,000, as the REST
/// reference says), in device-id order, with their keys.
fn list_devices(context: &RestContext, host: &str, query: &str) -> crate::Result<Reply> {
    let top = crate::protocol::query_pairs(query)
        .find(|(k, _)| k.eq_ignore_ascii_case("top"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .filter(|top| (1..=crate::limits::MAX_LISTED_DEVICES).contains(top))
        .unwrap_or(crate::limits::MAX_LISTED_DEVICES);
    let mut devices = context.cloud.hub_devices(host);
    devices.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    let items: Vec<DeviceIdentity> = devices
        .iter()
        .take(top)
        .map(|d| identity_document(context, d))
        .collect();
    document_reply(&items)
}

/// The registry's counts of identities: all, enabled, disabled.
fn registry_statistics(context: &RestContext, host: &str) -> Reply {
    let devices = context.cloud.hub_devices(host);
    let disabled = devices
        .iter()
        .filter(|d| d.registry.status == DeviceStatus::Disabled)
        .count();
    Reply::json(
        StatusCode::OK,
        json!({
            "totalDeviceCount": devices.len(),
            "enabledDeviceCount": devices.len() - disabled,
            "disabledDeviceCount": disabled,
        }),
    )
}

/// The continuation token after `device_id`: its bytes in hex (opaque to clients, and safe in
/// a header whatever the id holds).
fn continuation_token(device_id: &str) -> String {
    device_id.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The device id a [`continuation_token`] names, or `None` for a token the hub never gave.
fn continuation_device(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// Twins per page of a query: IoT Hub's default and largest page (`x-ms-max-item-count`; a
/// larger request is served 100 at a time, and the client follows `x-ms-continuation`).
const QUERY_PAGE_ITEMS: usize = 100;

/// `{"query": "SELECT * FROM devices [WHERE ...]"}`, a page at a time: at most
/// `x-ms-max-item-count` matching twins (and [`QUERY_PAGE_ITEMS`]) in device-id order after
/// the `x-ms-continuation` the previous page returned; a page is followed by a token only
/// when more twins match. The token names the last device served (opaque to clients), so
/// devices created or deleted between pages neither repeat nor hide the others. A query the
/// emulator does not understand is 400004 with the reason, never run without the clause.
fn query_twins(
    context: &RestContext,
    host: &str,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> crate::Result<Reply> {
    let body = json_body(body)?;
    let text = body["query"]
        .as_str()
        .ok_or_else(|| invalid("the query specification needs \"query\"".into()))?;
    let query = TwinQuery::parse(text).map_err(|why| {
        invalid(format!(
            "The query is invalid. Please check the format of the query and try again: {why}."
        ))
    })?;
    // A header that is there but unreadable is refused, not taken as absent: a garbled
    // continuation would otherwise restart the listing from the first device.
    let header = |name: &str| -> crate::Result<Option<&str>> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map_err(|_| Error::config(format!("{name} is not ASCII text")))
            })
            .transpose()
    };
    let page_items = match header("x-ms-max-item-count")? {
        None => QUERY_PAGE_ITEMS,
        Some(text) => text
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                Error::config(format!(
                    "x-ms-max-item-count {text:?} is not a positive whole number"
                ))
            })?
            .min(QUERY_PAGE_ITEMS),
    };
    let after = match header("x-ms-continuation")? {
        None => None,
        Some(token) => Some(continuation_device(token.trim()).ok_or_else(|| {
            Error::config(format!(
                "x-ms-continuation {token:?} is not a token this hub gave"
            ))
        })?),
    };
    let mut devices: Vec<HubDevice> = context
        .cloud
        .hub_devices(host)
        .into_iter()
        .filter(|d| after.as_deref().is_none_or(|a| d.device_id.as_str() > a))
        .collect();
    devices.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    let mut twins = Vec::new();
    let mut last_served = None;
    let mut more = false;
    for device in &devices {
        let twin = match context.hubs.service_twin(host, &device.device_id) {
            // The query selects on the document it serves.
            Ok(twin) => document_value(&twin_document(context, device, twin)?)?,
            // Deleted since the list was read.
            Err(Error::Service(e)) if e.status == 404 => continue,
            Err(e) => return Err(e),
        };
        if !query.matches(&twin) {
            continue;
        }
        if twins.len() == page_items {
            more = true;
            break;
        }
        twins.push(twin);
        last_served = Some(device.device_id.as_str());
    }
    let mut reply = Reply::json(StatusCode::OK, Value::Array(twins));
    reply.headers.push(("x-ms-item-type", "twin".into()));
    if let (true, Some(last)) = (more, last_served) {
        reply
            .headers
            .push(("x-ms-continuation", continuation_token(last)));
    }
    Ok(reply)
}

/// A twin section of a request body: an object, or absent (`None`).
fn section<'a>(
    value: &'a Value,
    name: &str,
) -> crate::Result<Option<&'a serde_json::Map<String, Value>>> {
    match value {
        Value::Null => Ok(None),
        Value::Object(map) => Ok(Some(map)),
        other => Err(invalid(format!("{name} must be an object, not {other}"))),
    }
}

/// PATCH `/twins/{id}` merges `{"tags": {...}, "properties": {"desired": {...}}}` into the
/// twin; PUT (`replace`) makes them the twin's tags and desired properties, the reported ones
/// untouched. Either with an `If-Match` other than `*` only while the twin still has that etag
/// (412001 otherwise, nothing changed), as on Azure.
fn write_twin(
    context: &RestContext,
    host: &str,
    device_id: &str,
    body: &[u8],
    if_match: Option<&str>,
    replace: bool,
) -> crate::Result<Reply> {
    let body = json_body(body)?;
    if !body.is_object() {
        return Err(invalid("the twin must be a JSON object".into()));
    }
    let device = device_or_404(context, host, device_id)?;
    let tags = section(&body["tags"], "tags")?;
    let desired = section(&body["properties"]["desired"], "properties.desired")?;
    let empty = serde_json::Map::new();
    let write = if replace {
        TwinWrite::Replace {
            tags: tags.unwrap_or(&empty),
            desired: desired.unwrap_or(&empty),
        }
    } else {
        TwinWrite::Patch { tags, desired }
    };
    let twin = context
        .hubs
        .write_twin(host, device_id, write, if_match.map(unquoted))?;
    document_reply(&twin_document(context, &device, twin)?)
}

/// A whole number of seconds from a method request, `default` when absent; past `max` (or
/// not a whole number) is 400, as Azure refuses it rather than clamping.
fn method_seconds(value: &Value, name: &str, default: u64, max: u64) -> crate::Result<u64> {
    match value {
        Value::Null => Ok(default),
        value => match value.as_u64() {
            Some(t) if t <= max => Ok(t),
            _ => Err(invalid(format!(
                "{name} must be a whole number of seconds up to {max}, not {value}"
            ))),
        },
    }
}

/// `{"methodName", "payload", "responseTimeoutInSeconds", "connectTimeoutInSeconds"}` →
/// `{"status", "payload"}`: the device has `connectTimeoutInSeconds` (0 by default) to be
/// online, else 404103, then `responseTimeoutInSeconds` (30 by default, at least 5) to answer,
/// else 504101, as on Azure.
async fn invoke_method(
    context: &RestContext,
    host: &str,
    device_id: &str,
    body: &[u8],
) -> crate::Result<Reply> {
    let body = json_body(body)?;
    let name = body["methodName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("a method invocation needs \"methodName\"".into()))?;
    let timeout = method_seconds(
        &body["responseTimeoutInSeconds"],
        "responseTimeoutInSeconds",
        DEFAULT_METHOD_TIMEOUT,
        MAX_METHOD_TIMEOUT,
    )?
    .max(crate::limits::MIN_METHOD_RESPONSE_TIMEOUT_SECONDS);
    let connect_timeout = method_seconds(
        &body["connectTimeoutInSeconds"],
        "connectTimeoutInSeconds",
        0,
        MAX_CONNECT_TIMEOUT,
    )?;
    let (status, payload) = context
        .hubs
        .invoke_method_waiting(
            host,
            device_id,
            name,
            body["payload"].clone(),
            Duration::from_secs(connect_timeout),
            Duration::from_secs(timeout),
        )
        .await?;
    document_reply(&MethodResult { status, payload })
}

/// `DELETE /devices/{id}/commands`: empties the device's cloud-to-device queue.
fn purge_c2d(context: &RestContext, host: &str, device_id: &str) -> crate::Result<Reply> {
    device_or_404(context, host, device_id)?;
    let purged = context.hubs.purge_c2d(host, device_id)?;
    document_reply(&PurgeMessageQueueResult {
        total_messages_purged: purged as u64,
        device_id: device_id.to_string(),
        module_id: None,
    })
}

/// `GET /messages/serviceBound/feedback`: the next feedback message, locked for this caller
/// (its lock token is the `ETag`), or 204 when there is none.
fn receive_feedback(context: &RestContext, hub: &HubRecord) -> crate::Result<Reply> {
    use crate::emulator::feedback::Taken;
    use crate::protocol::c2d::{FEEDBACK_CONTENT_TYPE, feedback_headers};
    let message = match context.hubs.feedback().take(&hub.host_name)? {
        Taken::Message(message) => message,
        Taken::Nothing(_) => return Ok(Reply::empty(StatusCode::NO_CONTENT)),
    };
    let mut reply = Reply::empty(StatusCode::OK);
    reply.body = Some(message.body().into());
    reply.etag = Some(message.lock_token.clone());
    reply.headers = vec![
        ("content-type", FEEDBACK_CONTENT_TYPE.to_string()),
        (feedback_headers::MESSAGE_ID, message.message_id.clone()),
        (
            feedback_headers::ENQUEUED_TIME,
            crate::emulator::cloud::azure_time_ms(message.enqueued_ms),
        ),
        (
            feedback_headers::DELIVERY_COUNT,
            message.delivery_count.to_string(),
        ),
        (
            feedback_headers::EXPIRY,
            crate::emulator::cloud::azure_time_ms(message.expires_ms),
        ),
        (feedback_headers::USER_ID, hub.name.clone()),
    ];
    Ok(reply)
}

/// `DELETE /messages/serviceBound/feedback/{lockToken}` (complete) and `POST
/// .../{lockToken}/abandon`: 204, or IoT Hub's 412 when the token holds no message of this
/// hub (made up, another hub's, settled, or its lock ran out).
fn settle_feedback(
    context: &RestContext,
    host: &str,
    lock_token: &str,
    abandon: bool,
) -> crate::Result<Reply> {
    // An ETag may come back quoted.
    let token = lock_token.trim_matches('"');
    let feedback = context.hubs.feedback();
    let settled = if abandon {
        feedback.abandon(host, token)?
    } else {
        feedback.complete(host, token)?
    };
    if settled {
        Ok(Reply::empty(StatusCode::NO_CONTENT))
    } else {
        Err(Error::service(
            412,
            FEEDBACK_LOCK_LOST,
            format!(
                "The lock token '{token}' holds no feedback message of this hub: it is not valid \
                 or its lock expired."
            ),
        ))
    }
}

/// IoT Hub's code for a message lock that is not (or no longer) held: `DeviceMessageLockLost`.
const FEEDBACK_LOCK_LOST: u32 = 412_002;

/// Emulator-only: the stored telemetry (`?deviceId=` to filter), in arrival order.
fn telemetry(context: &RestContext, host: &str, query: &str) -> crate::Result<Reply> {
    let device_id = crate::protocol::query_pairs(query)
        .find(|(k, _)| k.eq_ignore_ascii_case("deviceId"))
        .map(|(_, v)| crate::sas::url_decode(v))
        .transpose()?;
    let records = context.hubs.telemetry(host, device_id.as_deref())?;
    let items: Vec<StoredTelemetry> = records
        .iter()
        .map(|r| StoredTelemetry {
            sequence: r.sequence,
            device_id: r.device_id.clone(),
            module_id: r.module_id.clone(),
            enqueued_time: r.enqueued,
            body: BASE64.encode(&r.body),
            properties: r.properties.clone(),
            system_properties: r.system_properties.clone(),
        })
        .collect();
    document_reply(&items)
}
