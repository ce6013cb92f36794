//! The IoT Hub service API a walkthrough uses: device identities, twins (read, desired and tag
//! patches), direct methods, authenticated as on Azure: a SAS token whose `sr` is the hub host
//! (or a prefix of the resource reached, e.g. `{host}/devices/{id}`), signed by a key of the
//! shared access policy its `skn` names, which must carry the operation's right (registry
//! reads: `RegistryRead`; identity writes: `RegistryWrite`; twins, methods, C2D and telemetry:
//! `ServiceConnect`). Writes follow etags as IoT Hub's do: a PUT without `If-Match` only
//! creates (409001 for an existing id), and a replace, delete or twin patch naming a stale etag
//! is 412001. A hub that enforces its tier throttles each operation as IoT Hub does (429001
//! with `Retry-After`). Plus two emulator-only calls under `/dpskit/` (Azure sends cloud-to-device messages over AMQP, and
//! routes telemetry to Event Hubs, neither of which a REST client can reach): send a C2D
//! message, read the stored telemetry.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hyper::header::IF_MATCH;
use hyper::http::request::Parts;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::{Reply, RestContext};
use crate::emulator::cloud::{azure_time, random_guid};
use crate::emulator::model::{DeviceAuth, HubDevice, HubRecord};
use crate::emulator::quotas::retry_after_seconds;
use crate::error::Error;
use crate::limits::{DIRECT_METHOD_METER_BYTES, HubOperation};

/// Azure's default and largest direct-method response timeouts.
const DEFAULT_METHOD_TIMEOUT: u64 = 30;
const MAX_METHOD_TIMEOUT: u64 = crate::limits::MAX_METHOD_RESPONSE_TIMEOUT_SECONDS;

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
        (&Method::POST, ["devices", "query"]) | (&Method::GET, ["devices", _]) => {
            Some("RegistryRead")
        }
        (&Method::PUT | &Method::DELETE, ["devices", _]) => Some("RegistryWrite"),
        (&Method::GET | &Method::PATCH, ["twins", _])
        | (&Method::POST, ["twins", _, "methods"])
        | (&Method::POST, ["dpskit", "devices", _, "c2d"])
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
        (&Method::GET | &Method::PUT | &Method::DELETE, ["devices", _]) => HubOperation::Registry,
        (&Method::GET, ["twins", _]) => HubOperation::TwinRead,
        (&Method::PATCH, ["twins", _]) => HubOperation::TwinUpdate,
        (&Method::POST, ["twins", _, "methods"]) => {
            // An unreadable body costs one block here and is refused as malformed after.
            let payload = serde_json::from_slice::<Value>(body)
                .map_or(0, |request| request["payload"].to_string().len());
            let blocks = payload.div_ceil(DIRECT_METHOD_METER_BYTES).max(1);
            return Some((HubOperation::DirectMethod, blocks as f64));
        }
        (&Method::POST, ["dpskit", "devices", _, "c2d"]) => HubOperation::C2dSend,
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
    super::sas_authorize(parts, "IoT hub", segments, candidates, required_right)
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
        (&Method::POST, ["devices", "query"]) => query_twins(context, host, &parts.headers),
        (&Method::GET, ["devices", _]) => context
            .cloud
            .hub_device(host, segments[1])
            .ok_or_else(|| not_found(segments[1], host))
            .map(|d| Reply::json(StatusCode::OK, identity_json(context, &d))),
        (&Method::PUT, ["devices", _]) => put_device(context, host, segments[1], body, if_match),
        (&Method::DELETE, ["devices", _]) => delete_device(context, host, segments[1], if_match),
        (&Method::GET, ["twins", _]) => context
            .hubs
            .service_twin(host, segments[1])
            .map(|t| Reply::json(StatusCode::OK, t)),
        (&Method::PATCH, ["twins", _]) => patch_twin(context, host, segments[1], body, if_match),
        (&Method::POST, ["twins", _, "methods"]) => {
            invoke_method(context, host, segments[1], body).await
        }
        (&Method::POST, ["dpskit", "devices", _, "c2d"]) => {
            send_c2d(context, host, segments[2], body)
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

/// The device identity document.
fn identity_json(context: &RestContext, device: &HubDevice) -> Value {
    let authentication = match &device.auth {
        DeviceAuth::SelfSigned {
            primary_thumbprint, ..
        } => json!({
            "type": "selfSigned",
            "symmetricKey": {"primaryKey": null, "secondaryKey": null},
            "x509Thumbprint": {"primaryThumbprint": primary_thumbprint, "secondaryThumbprint": null},
        }),
        DeviceAuth::Sas {
            primary_key,
            secondary_key,
        } => json!({
            "type": "sas",
            "symmetricKey": {"primaryKey": primary_key, "secondaryKey": secondary_key},
            "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
        }),
    };
    let connected = context.hubs.is_connected(&device.hub, &device.device_id);
    json!({
        "deviceId": device.device_id,
        "generationId": format!("{}", device.created),
        "etag": identity_etag(device),
        "connectionState": if connected { "Connected" } else { "Disconnected" },
        "status": "enabled",
        "statusReason": null,
        "connectionStateUpdatedTime": azure_time(device.created),
        "statusUpdatedTime": azure_time(device.created),
        "lastActivityTime": azure_time(device.created),
        "cloudToDeviceMessageCount": 0,
        "authentication": authentication,
        "capabilities": {"iotEdge": false},
    })
}

/// A device identity's etag: a digest of the identity as stored (its credentials and write
/// time), so every write that changes it changes the etag, even within one second.
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

/// Deletes a device identity; with an `If-Match` that is not the wildcard, only while the
/// identity still has that etag (as on Azure; without one the delete is unconditional).
fn delete_device(
    context: &RestContext,
    host: &str,
    device_id: &str,
    if_match: Option<&str>,
) -> crate::Result<Reply> {
    let existing = context
        .cloud
        .hub_device(host, device_id)
        .ok_or_else(|| not_found(device_id, host))?;
    if if_match.is_some_and(|tag| !etag_matches(tag, &existing)) {
        return Err(stale_etag("identity", device_id));
    }
    context.hubs.delete_device(host, device_id)?;
    Ok(Reply::empty(StatusCode::NO_CONTENT))
}

/// Creates or replaces a device identity: `sas` (keys generated when null) or `selfSigned`
/// (thumbprints, as DPS creates X.509 devices). As on Azure, a PUT without `If-Match` only
/// creates (an existing id is 409001), and a replace must name the current etag or `*`
/// (else 412001); an `If-Match` other than `*` for a device that does not exist is 404001.
fn put_device(
    context: &RestContext,
    host: &str,
    device_id: &str,
    body: &[u8],
    if_match: Option<&str>,
) -> crate::Result<Reply> {
    crate::emulator::cloud::validate_device_id(device_id)?;
    let body = json_body(body)?;
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
    let authentication = &body["authentication"];
    let kind = authentication["type"].as_str().unwrap_or("sas");
    let auth = match kind.to_ascii_lowercase().as_str() {
        "sas" => {
            let key = |k: &str| -> crate::Result<String> {
                match authentication["symmetricKey"][k]
                    .as_str()
                    .filter(|s| !s.is_empty())
                {
                    Some(key) => Ok(key.to_string()),
                    None => crate::sas::generate_key(),
                }
            };
            DeviceAuth::Sas {
                primary_key: key("primaryKey")?,
                secondary_key: key("secondaryKey")?,
            }
        }
        "selfsigned" => {
            let thumbprint = authentication["x509Thumbprint"]["primaryThumbprint"]
                .as_str()
                .ok_or_else(|| {
                    Error::config("a selfSigned device needs x509Thumbprint.primaryThumbprint")
                })?;
            DeviceAuth::SelfSigned {
                primary_thumbprint: thumbprint.to_ascii_uppercase(),
                primary_thumbprint_sha256: String::new(),
            }
        }
        other => {
            return Err(Error::config(format!(
                "authentication type {other:?} is not emulated: use sas or selfSigned"
            )));
        }
    };
    let device = HubDevice {
        device_id: device_id.to_string(),
        hub: host.to_string(),
        auth,
        initial_twin: existing.and_then(|d| d.initial_twin),
        created: crate::clock::now(),
    };
    context.cloud.put_hub_device(device.clone())?;
    Ok(Reply::json(StatusCode::OK, identity_json(context, &device)))
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

/// `SELECT * FROM devices`, a page at a time: at most `x-ms-max-item-count` twins (and
/// [`QUERY_PAGE_ITEMS`]) in device-id order after the `x-ms-continuation` the previous page
/// returned. The token names the last device served (opaque to clients), so devices created or
/// deleted between pages neither repeat nor hide the others.
fn query_twins(
    context: &RestContext,
    host: &str,
    headers: &hyper::HeaderMap,
) -> crate::Result<Reply> {
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
    let more = devices.len() > page_items;
    devices.truncate(page_items);
    let mut twins = Vec::with_capacity(devices.len());
    for device in &devices {
        let mut twin = context.hubs.service_twin(host, &device.device_id)?;
        if let Some(map) = twin.as_object_mut() {
            let connected = context.hubs.is_connected(host, &device.device_id);
            map.insert(
                "connectionState".into(),
                json!(if connected {
                    "Connected"
                } else {
                    "Disconnected"
                }),
            );
            map.insert("status".into(), json!("enabled"));
            let (kind, thumbprint) = match &device.auth {
                DeviceAuth::SelfSigned {
                    primary_thumbprint, ..
                } => ("selfSigned", Some(primary_thumbprint.clone())),
                DeviceAuth::Sas { .. } => ("sas", None),
            };
            map.insert("authenticationType".into(), json!(kind));
            map.insert(
                "x509Thumbprint".into(),
                json!({"primaryThumbprint": thumbprint, "secondaryThumbprint": null}),
            );
        }
        twins.push(twin);
    }
    let mut reply = Reply::json(StatusCode::OK, Value::Array(twins));
    reply.headers.push(("x-ms-item-type", "twin".into()));
    if let (true, Some(last)) = (more, devices.last()) {
        reply
            .headers
            .push(("x-ms-continuation", continuation_token(&last.device_id)));
    }
    Ok(reply)
}

/// `{"tags": {...}, "properties": {"desired": {...}}}`, applied as merge patches.
/// Merges tags and desired properties into a twin; with an `If-Match` other than `*`, only
/// while the twin still has that etag (412001 otherwise, nothing changed), as on Azure.
fn patch_twin(
    context: &RestContext,
    host: &str,
    device_id: &str,
    body: &[u8],
    if_match: Option<&str>,
) -> crate::Result<Reply> {
    let body = json_body(body)?;
    let mut twin = context.hubs.service_twin(host, device_id)?;
    if let Some(tag) = if_match.map(unquoted)
        && tag != "*"
        && Some(tag) != twin["etag"].as_str()
    {
        return Err(stale_etag("twin", device_id));
    }
    if let Some(tags) = body["tags"].as_object() {
        twin = context.hubs.update_tags(host, device_id, tags)?;
    }
    if let Some(desired) = body["properties"]["desired"].as_object() {
        twin = context.hubs.update_desired(host, device_id, desired)?;
    }
    Ok(Reply::json(StatusCode::OK, twin))
}

/// `{"methodName", "payload", "responseTimeoutInSeconds", "connectTimeoutInSeconds"}` →
/// `{"status", "payload"}`; an offline device is 404103 as on Azure.
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
        .ok_or_else(|| Error::config("a method invocation needs \"methodName\""))?;
    let timeout = match &body["responseTimeoutInSeconds"] {
        Value::Null => DEFAULT_METHOD_TIMEOUT,
        // Azure refuses a timeout past 300 s (or not a whole number) with 400 rather than
        // clamping it, so a client asking for more learns it here as it would there.
        value => match value.as_u64() {
            Some(t) if t <= MAX_METHOD_TIMEOUT => {
                t.max(crate::limits::MIN_METHOD_RESPONSE_TIMEOUT_SECONDS)
            }
            _ => {
                return Err(Error::service(
                    400,
                    400_004,
                    format!(
                        "responseTimeoutInSeconds must be a whole number of seconds from 5 to \
                         {MAX_METHOD_TIMEOUT}, not {value}"
                    ),
                ));
            }
        },
    };
    let (status, payload) = context
        .hubs
        .invoke_method(
            host,
            device_id,
            name,
            body["payload"].clone(),
            Duration::from_secs(timeout),
        )
        .await?;
    Ok(Reply::json(
        StatusCode::OK,
        json!({"status": status, "payload": payload}),
    ))
}

/// Emulator-only: `{"body": base64, "properties": {...}}` → `{"messageId"}`.
fn send_c2d(
    context: &RestContext,
    host: &str,
    device_id: &str,
    body: &[u8],
) -> crate::Result<Reply> {
    let body = json_body(body)?;
    let payload = match body["body"].as_str() {
        Some(text) => BASE64
            .decode(text)
            .map_err(|_| Error::config("\"body\" must be base64"))?,
        None => Vec::new(),
    };
    let properties = body["properties"]
        .as_object()
        .map(|p| {
            p.iter()
                .map(|(k, v)| {
                    let value = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    (k.clone(), value)
                })
                .collect()
        })
        .unwrap_or_default();
    let message_id = context
        .hubs
        .send_c2d(host, device_id, &payload, properties)?;
    Ok(Reply::json(
        StatusCode::OK,
        json!({"messageId": message_id}),
    ))
}

/// Emulator-only: the stored telemetry (`?deviceId=` to filter), in arrival order.
fn telemetry(context: &RestContext, host: &str, query: &str) -> crate::Result<Reply> {
    let device_id = crate::protocol::query_pairs(query)
        .find(|(k, _)| k.eq_ignore_ascii_case("deviceId"))
        .map(|(_, v)| crate::sas::url_decode(v))
        .transpose()?;
    let records = context.hubs.telemetry(host, device_id.as_deref())?;
    let items: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "sequence": r.sequence,
                "deviceId": r.device_id,
                "moduleId": r.module_id,
                "enqueuedTime": r.enqueued,
                "body": BASE64.encode(&r.body),
                // Pairs, in the order the device sent them (keys may repeat).
                "properties": r.properties,
                "systemProperties": r.system_properties,
            })
        })
        .collect();
    Ok(Reply::json(StatusCode::OK, Value::Array(items)))
}
