//! The DPS service (data-plane) API: enrollment groups, individual enrollments and registration
//! states, authenticated with a `provisioningserviceowner` SAS token. Bodies follow the service
//! swagger: `attestation` required (as Azure requires it), other explicit `null`s accepted, certificates answered as `info` (never raw), etags with
//! `If-Match`/412, errors as `ProvisioningServiceErrorDetails` plus `x-ms-error-code`.

use hyper::header::IF_MATCH;
use hyper::http::request::Parts;
use hyper::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::arm::certificate_from_text;
use super::{Reply, RestContext};
use crate::emulator::cloud::{EnrollmentSpec, azure_time, decode_der, random_guid};
use crate::emulator::model::{
    AllocationPolicy, Attestation, CustomAllocation, DpsRecord, EnrollmentGroup,
    EnrollmentSettings, IndividualEnrollment, ProvisioningStatus, RegistrationRecord,
    ReprovisionPolicy, SharedAccessPolicy,
};
use crate::error::Error;

/// The policy whose keys sign service tokens.
pub(super) const OWNER_POLICY: &str = "provisioningserviceowner";
/// Its rights as Azure lists them (`ServiceConfig` implies every service-API right).
pub(super) const OWNER_RIGHTS: &str = "ServiceConfig, DeviceConnect, EnrollmentWrite";
/// Azure's limit on one bulk operation.
const MAX_BULK: usize = 10;

/// `ProvisioningServiceErrorDetails` with the code in `x-ms-error-code` too.
fn service_error(status: u16, code: u32, message: &str) -> Reply {
    let mut reply = Reply::json(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        json!({
            "errorCode": code,
            "trackingId": random_guid(),
            "message": message,
            "timestampUtc": crate::emulator::cloud::azure_timestamp(),
        }),
    );
    reply.headers.push(("x-ms-error-code", code.to_string()));
    reply
}

/// Azure's throttling answer of this API (429001, `ThrottlingException`).
pub(super) fn throttled(message: &str) -> Reply {
    service_error(429, 429_001, message)
}

fn from_error(error: &Error) -> Reply {
    match error {
        Error::Service(s) => service_error(
            s.status,
            s.error_code.unwrap_or(u32::from(s.status) * 1000),
            &s.message,
        ),
        Error::Certificate(m) | Error::Config(m) => service_error(400, 400_004, m),
        Error::Protocol(m) => service_error(400, 400_001, m),
        other => service_error(500, 500_000, &other.to_string()),
    }
}

/// The DPS's shared access policies, as ARM lists them: Azure creates only
/// `provisioningserviceowner`, whose keys are the record's.
pub(super) fn dps_policies(dps: &DpsRecord) -> Vec<SharedAccessPolicy> {
    vec![SharedAccessPolicy {
        key_name: OWNER_POLICY.into(),
        primary_key: dps.primary_key.clone(),
        secondary_key: dps.secondary_key.clone(),
        rights: OWNER_RIGHTS.into(),
    }]
}

/// The right an operation needs.
fn required_right(method: &Method, lower: &[&str]) -> &'static str {
    match (method, lower.first().copied()) {
        (&Method::GET, Some("registrations")) => "RegistrationStatusRead",
        (&Method::POST, Some("registrations")) => "RegistrationStatusRead",
        (_, Some("registrations")) => "RegistrationStatusWrite",
        (&Method::GET, _) => "EnrollmentRead",
        (&Method::POST, _) if lower.last() == Some(&"query") => "EnrollmentRead",
        // Attestation mechanisms carry keys: reading them is as strong as writing.
        _ => "EnrollmentWrite",
    }
}

/// Authenticates a DPS service request on its headers: the DPS whose policy signed a token
/// for this service host that covers the resource and carries the operation's right.
pub(super) fn authorize(
    parts: &Parts,
    segments: &[&str],
    context: &RestContext,
) -> Result<DpsRecord, Reply> {
    // Every DPS shares the emulator's one service host; the signature tells them apart.
    let candidates = context.cloud.all_dps().into_iter().map(|dps| {
        let policies = dps_policies(&dps);
        (dps, context.service_authority.clone(), policies)
    });
    super::sas_authorize(
        parts,
        "DPS service",
        segments,
        candidates,
        |method, lower| Some(required_right(method, lower)),
    )
    .map_err(|why| service_error(401, 401_002, &why))
}

/// Serves one authenticated DPS service request.
pub(super) fn handle(
    parts: &Parts,
    segments: &[&str],
    body: &[u8],
    dps: &DpsRecord,
    context: &RestContext,
) -> Reply {
    if let Err(refused) = context.dps_quotas.admit_operation(&dps.name) {
        let mut reply = throttled(&refused.message);
        reply.headers.push((
            "retry-after",
            crate::emulator::quotas::retry_after_seconds(refused.retry_after).to_string(),
        ));
        return reply;
    }
    let if_match = parts
        .headers
        .get(IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let paging = Paging {
        max_items: header("x-ms-max-item-count").and_then(|v| v.parse().ok()),
        continuation: header("x-ms-continuation").and_then(|v| v.parse().ok()),
    };
    let request = Request {
        dps,
        body,
        if_match: if_match.as_deref(),
        paging,
        context,
    };
    let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    let outcome = match (&parts.method, lower.as_slice()) {
        (&Method::POST, ["enrollmentgroups", "query"]) => request.query_groups(),
        (&Method::POST, ["enrollmentgroups"]) => request.bulk(true),
        (&Method::GET, ["enrollmentgroups", _]) => request.get_group(segments[1]),
        (&Method::PUT, ["enrollmentgroups", _]) => request.put_group(segments[1]),
        (&Method::DELETE, ["enrollmentgroups", _]) => request.delete_group(segments[1]),
        (&Method::POST, ["enrollmentgroups", _, "attestationmechanism"]) => context
            .cloud
            .enrollment_group(&dps.name, segments[1])
            .map(|g| Reply::json(StatusCode::OK, attestation_json(&g.attestation, true))),
        (&Method::POST, ["enrollments", "query"]) => request.query_enrollments(),
        (&Method::POST, ["enrollments"]) => request.bulk(false),
        (&Method::GET, ["enrollments", _]) => request.get_enrollment(segments[1]),
        (&Method::PUT, ["enrollments", _]) => request.put_enrollment(segments[1]),
        (&Method::DELETE, ["enrollments", _]) => request.delete_enrollment(segments[1]),
        (&Method::POST, ["enrollments", _, "attestationmechanism"]) => context
            .cloud
            .enrollment(&dps.name, segments[1])
            .map(|e| Reply::json(StatusCode::OK, attestation_json(&e.attestation, false))),
        (&Method::GET, ["registrations", _]) => request.get_registration(segments[1]),
        (&Method::DELETE, ["registrations", _]) => request.delete_registration(segments[1]),
        (&Method::POST, ["registrations", _, "query"]) => request.query_registrations(segments[1]),
        _ => Ok(service_error(
            405,
            405_000,
            &format!(
                "{} /{} is not part of the DPS service API",
                parts.method,
                segments.join("/")
            ),
        )),
    };
    outcome.unwrap_or_else(|e| from_error(&e))
}

/// `x-ms-max-item-count` / `x-ms-continuation` (an offset, opaque to clients).
#[derive(Clone, Copy)]
struct Paging {
    max_items: Option<usize>,
    continuation: Option<usize>,
}

impl Paging {
    fn page(&self, items: Vec<Value>, item_type: &str) -> Reply {
        let start = self.continuation.unwrap_or(0).min(items.len());
        let end = match self.max_items {
            Some(n) if n > 0 => (start + n).min(items.len()),
            _ => items.len(),
        };
        let mut reply = Reply::json(StatusCode::OK, Value::Array(items[start..end].to_vec()));
        reply
            .headers
            .push(("x-ms-item-type", item_type.to_string()));
        if end < items.len() {
            reply.headers.push(("x-ms-continuation", end.to_string()));
        }
        reply
    }
}

struct Request<'a> {
    dps: &'a DpsRecord,
    body: &'a [u8],
    if_match: Option<&'a str>,
    paging: Paging,
    context: &'a RestContext,
}

impl Request<'_> {
    fn json_body(&self) -> crate::Result<Value> {
        serde_json::from_slice(self.body)
            .map_err(|e| Error::Config(format!("the request body is not JSON: {e}")))
    }

    fn get_group(&self, id: &str) -> crate::Result<Reply> {
        let group = self.context.cloud.enrollment_group(&self.dps.name, id)?;
        Ok(with_etag(group_json(&group), &group.etag))
    }

    fn put_group(&self, id: &str) -> crate::Result<Reply> {
        let body = self.json_body()?;
        let spec = spec_from_json(&body, true)?;
        let group =
            self.context
                .cloud
                .put_enrollment_group(&self.dps.name, id, spec, self.if_match)?;
        Ok(with_etag(group_json(&group), &group.etag))
    }

    fn delete_group(&self, id: &str) -> crate::Result<Reply> {
        self.context
            .cloud
            .delete_enrollment_group(&self.dps.name, id, self.if_match)?;
        Ok(Reply::empty(StatusCode::NO_CONTENT))
    }

    fn query_groups(&self) -> crate::Result<Reply> {
        let items = self
            .context
            .cloud
            .enrollment_groups(&self.dps.name)
            .iter()
            .map(group_json)
            .collect();
        Ok(self.paging.page(items, "EnrollmentGroup"))
    }

    fn get_enrollment(&self, id: &str) -> crate::Result<Reply> {
        let enrollment = self.context.cloud.enrollment(&self.dps.name, id)?;
        Ok(with_etag(enrollment_json(&enrollment), &enrollment.etag))
    }

    fn put_enrollment(&self, id: &str) -> crate::Result<Reply> {
        let body = self.json_body()?;
        let spec = spec_from_json(&body, false)?;
        let enrollment =
            self.context
                .cloud
                .put_enrollment(&self.dps.name, id, spec, self.if_match)?;
        Ok(with_etag(enrollment_json(&enrollment), &enrollment.etag))
    }

    fn delete_enrollment(&self, id: &str) -> crate::Result<Reply> {
        self.context
            .cloud
            .delete_enrollment(&self.dps.name, id, self.if_match)?;
        Ok(Reply::empty(StatusCode::NO_CONTENT))
    }

    fn query_enrollments(&self) -> crate::Result<Reply> {
        let items = self
            .context
            .cloud
            .enrollments(&self.dps.name)
            .iter()
            .map(enrollment_json)
            .collect();
        Ok(self.paging.page(items, "Enrollment"))
    }

    /// `{"enrollmentGroups"|"enrollments": [...], "mode": create|update|updateIfMatchETag|delete}`
    /// → `BulkEnrollmentOperationResult`. Each item succeeds or fails on its own, as on Azure.
    fn bulk(&self, groups: bool) -> crate::Result<Reply> {
        let body = self.json_body()?;
        let list = if groups {
            "enrollmentGroups"
        } else {
            "enrollments"
        };
        let id_field = if groups {
            "enrollmentGroupId"
        } else {
            "registrationId"
        };
        let items = body[list]
            .as_array()
            .ok_or_else(|| Error::Config(format!("a bulk operation needs \"{list}\"")))?;
        if items.len() > MAX_BULK {
            return Err(Error::service(
                400,
                400_001,
                format!(
                    "a bulk operation takes at most {MAX_BULK} items, not {}",
                    items.len()
                ),
            ));
        }
        let mode = body["mode"]
            .as_str()
            .unwrap_or("create")
            .to_ascii_lowercase();
        let cloud = &self.context.cloud;
        let dps = &self.dps.name;
        let mut errors = Vec::new();
        for item in items {
            let id = item[id_field].as_str().unwrap_or_default().to_string();
            let exists = if groups {
                cloud.enrollment_group(dps, &id).is_ok()
            } else {
                cloud.enrollment(dps, &id).is_ok()
            };
            let etag = item["etag"].as_str();
            let outcome: crate::Result<()> = match mode.as_str() {
                "create" if exists => {
                    Err(Error::service(409, 409_001, format!("{id} already exists")))
                }
                "delete" => {
                    if groups {
                        cloud.delete_enrollment_group(dps, &id, None)
                    } else {
                        cloud.delete_enrollment(dps, &id, None)
                    }
                }
                "create" | "update" | "updateifmatchetag" => {
                    let guard = if mode == "updateifmatchetag" {
                        etag
                    } else {
                        None
                    };
                    spec_from_json(item, groups).and_then(|spec| {
                        if groups {
                            cloud
                                .put_enrollment_group(dps, &id, spec, guard)
                                .map(|_| ())
                        } else {
                            cloud.put_enrollment(dps, &id, spec, guard).map(|_| ())
                        }
                    })
                }
                other => Err(Error::Config(format!("unknown bulk mode {other:?}"))),
            };
            if let Err(e) = outcome {
                let (status, code) = match &e {
                    Error::Service(s) => {
                        (s.status, s.error_code.unwrap_or(u32::from(s.status) * 1000))
                    }
                    _ => (400, 400_004),
                };
                errors.push(json!({id_field: id, "errorCode": code, "errorStatus": e.to_string(), "status": status}));
            }
        }
        Ok(Reply::json(
            StatusCode::OK,
            json!({"isSuccessful": errors.is_empty(), "errors": errors}),
        ))
    }

    fn get_registration(&self, id: &str) -> crate::Result<Reply> {
        let record = self
            .context
            .cloud
            .registration(&self.dps.name, id)
            .ok_or_else(|| {
                Error::service(404, 404_201, format!("Registration {id} was not found."))
            })?;
        Ok(with_etag(registration_json(&record), &record.etag))
    }

    fn delete_registration(&self, id: &str) -> crate::Result<Reply> {
        let record = self
            .context
            .cloud
            .registration(&self.dps.name, id)
            .ok_or_else(|| {
                Error::service(404, 404_201, format!("Registration {id} was not found."))
            })?;
        if let Some(tag) = self.if_match.filter(|t| *t != "*")
            && tag.trim_matches('"') != record.etag.trim_matches('"')
        {
            return Err(Error::service(
                412,
                412_002,
                "The ETag in the request does not match the ETag of the registration.",
            ));
        }
        self.context.cloud.delete_registration(&self.dps.name, id)?;
        Ok(Reply::empty(StatusCode::NO_CONTENT))
    }

    fn query_registrations(&self, group_id: &str) -> crate::Result<Reply> {
        // An unknown group is a 404, as on Azure, not an empty list.
        self.context
            .cloud
            .enrollment_group(&self.dps.name, group_id)?;
        let items = self
            .context
            .cloud
            .registrations(&self.dps.name, Some(group_id))
            .iter()
            .map(registration_json)
            .collect();
        Ok(self.paging.page(items, "DeviceRegistration"))
    }
}

fn with_etag(body: Value, etag: &str) -> Reply {
    Reply {
        etag: Some(etag.to_string()),
        ..Reply::json(StatusCode::OK, body)
    }
}

/// Drops `null` members, as the service does in its answers.
fn compact(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, compact(v)))
                .collect::<Map<_, _>>(),
        ),
        other => other,
    }
}

// ---- JSON → model -------------------------------------------------------------------------

/// Reads an enrollment (group or individual) body, explicit `null`s meaning "default" except
/// for the required `attestation`.
fn spec_from_json(body: &Value, group: bool) -> crate::Result<EnrollmentSpec> {
    let attestation = match &body["attestation"] {
        // Azure's service API requires the attestation in every enrollment PUT, an update
        // included (400); clients re-send the one they read.
        Value::Null => {
            return Err(Error::service(
                400,
                400_004,
                "The attestation is required: an enrollment PUT must carry \"attestation\" \
                 (to keep the current one, send back what a GET or attestationmechanism returned).",
            ));
        }
        // What a GET returned, written back: certificate info without the certificate means
        // "keep the certificates" (clients update an enrollment by GET, change, PUT).
        a if only_certificate_info(a) => None,
        a => Some(attestation_from_json(a, group)?),
    };
    let allocation_policy = match body["allocationPolicy"].as_str() {
        None => None,
        Some(p) => Some(AllocationPolicy::parse(p).ok_or_else(|| {
            Error::Config(format!(
                "unknown allocationPolicy {p:?}: hashed, geoLatency, static or custom"
            ))
        })?),
    };
    let mut iot_hubs: Vec<String> = body["iotHubs"]
        .as_array()
        .map(|hubs| {
            hubs.iter()
                .filter_map(|h| h.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if iot_hubs.is_empty()
        && let Some(legacy) = body["iotHubHostName"].as_str()
    {
        iot_hubs.push(legacy.to_string());
    }
    let provisioning_status = match body["provisioningStatus"].as_str() {
        Some(s) if s.eq_ignore_ascii_case("disabled") => ProvisioningStatus::Disabled,
        Some(s) if !s.eq_ignore_ascii_case("enabled") => {
            return Err(Error::Config(format!(
                "provisioningStatus must be enabled or disabled, not {s:?}"
            )));
        }
        _ => ProvisioningStatus::Enabled,
    };
    let reprovision_policy = match &body["reprovisionPolicy"] {
        Value::Object(p) => ReprovisionPolicy {
            update_hub_assignment: p
                .get("updateHubAssignment")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            migrate_device_data: p
                .get("migrateDeviceData")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        },
        _ => ReprovisionPolicy::default(),
    };
    let custom_allocation = match &body["customAllocationDefinition"] {
        Value::Object(c) => Some(CustomAllocation {
            webhook_url: c
                .get("webhookUrl")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    Error::Config("customAllocationDefinition needs a webhookUrl".into())
                })?
                .to_string(),
            api_version: c
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("2021-10-01")
                .to_string(),
        }),
        _ => None,
    };
    Ok(EnrollmentSpec {
        attestation,
        settings: EnrollmentSettings {
            provisioning_status,
            allocation_policy,
            iot_hubs,
            reprovision_policy,
            initial_twin: body["initialTwin"]
                .as_object()
                .map(|t| Value::Object(t.clone())),
            custom_allocation,
        },
        device_id: body["deviceId"].as_str().map(str::to_string),
    })
}

/// True for an x509 attestation whose certificate entries carry only `info`.
fn only_certificate_info(attestation: &Value) -> bool {
    let x509 = &attestation["x509"];
    let entries: Vec<&Value> = ["signingCertificates", "clientCertificates"]
        .iter()
        .flat_map(|f| ["primary", "secondary"].map(|k| &x509[*f][k]))
        .filter(|e| !e.is_null())
        .collect();
    x509["caReferences"].is_null()
        && !entries.is_empty()
        && entries
            .iter()
            .all(|e| e["certificate"].is_null() && !e["info"].is_null())
}

fn attestation_from_json(value: &Value, group: bool) -> crate::Result<Attestation> {
    let kind = value["type"].as_str().unwrap_or_default();
    match kind.to_ascii_lowercase().as_str() {
        "x509" => {
            let x509 = &value["x509"];
            let pair = |v: &Value| -> Vec<Value> {
                ["primary", "secondary"]
                    .iter()
                    .map(|k| v[*k].clone())
                    .filter(|v| !v.is_null())
                    .collect()
            };
            let references: Vec<String> = pair(&x509["caReferences"])
                .iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect();
            let field = if group {
                "signingCertificates"
            } else {
                "clientCertificates"
            };
            let mut certificates = Vec::new();
            for entry in pair(&x509[field]) {
                let text = entry["certificate"].as_str().ok_or_else(|| {
                    Error::Config(format!("x509.{field} entries need a \"certificate\""))
                })?;
                let cert = certificate_from_text(text)?;
                certificates.push(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    cert.der(),
                ));
            }
            if references.is_empty() && certificates.is_empty() {
                return Err(Error::Config(format!(
                    "an x509 attestation needs {} or caReferences",
                    if group {
                        "signingCertificates"
                    } else {
                        "clientCertificates"
                    }
                )));
            }
            Ok(Attestation::X509 {
                ca_references: references,
                certificates,
            })
        }
        "symmetrickey" => {
            let keys = &value["symmetricKey"];
            let key = |k: &str| -> crate::Result<String> {
                match keys[k].as_str().filter(|s| !s.is_empty()) {
                    Some(key) => Ok(key.to_string()),
                    // Null or missing: the service generates the key, as Azure does.
                    None => crate::sas::generate_key(),
                }
            };
            Ok(Attestation::SymmetricKey {
                primary_key: key("primaryKey")?,
                secondary_key: key("secondaryKey")?,
            })
        }
        "tpm" => Err(Error::Config(
            "TPM attestation is not available over MQTT, so the emulator does not offer it".into(),
        )),
        other => Err(Error::Config(format!(
            "unknown attestation type {other:?}: x509 or symmetricKey"
        ))),
    }
}

// ---- model → JSON -------------------------------------------------------------------------

/// `X509CertificateInfo` of a stored certificate.
fn certificate_info(der_base64: &str) -> Value {
    match decode_der(der_base64) {
        Ok(cert) => {
            let info = cert.info();
            json!({"info": {
                "subjectName": info.subject,
                "sha1Thumbprint": info.thumbprint_sha1.to_ascii_uppercase(),
                "sha256Thumbprint": info.thumbprint_sha256.to_ascii_uppercase(),
                "issuerName": info.issuer,
                "notBeforeUtc": azure_time(info.not_before).replace(".0000000Z", "Z"),
                "notAfterUtc": azure_time(info.not_after).replace(".0000000Z", "Z"),
                "serialNumber": info.serial_number.to_ascii_uppercase(),
                "version": 3,
            }})
        }
        Err(_) => json!({"info": null}),
    }
}

/// An attestation as the service answers it: certificate info, never the certificate.
fn attestation_json(attestation: &Attestation, group: bool) -> Value {
    match attestation {
        Attestation::X509 {
            ca_references,
            certificates,
        } => {
            let x509 = if !ca_references.is_empty() {
                json!({"caReferences": {
                    "primary": ca_references.first(),
                    "secondary": ca_references.get(1),
                }})
            } else {
                let primary = certificates.first().map(|c| certificate_info(c));
                // Azure fills in secondary from primary when only one was sent.
                let secondary = certificates
                    .get(1)
                    .map(|c| certificate_info(c))
                    .or_else(|| primary.clone());
                let field = if group {
                    "signingCertificates"
                } else {
                    "clientCertificates"
                };
                json!({field: {"primary": primary, "secondary": secondary}})
            };
            compact(json!({"type": "x509", "x509": x509}))
        }
        Attestation::SymmetricKey {
            primary_key,
            secondary_key,
        } => json!({"type": "symmetricKey", "symmetricKey": {
            "primaryKey": primary_key,
            "secondaryKey": secondary_key,
        }}),
    }
}

fn policy_name(policy: AllocationPolicy) -> &'static str {
    match policy {
        AllocationPolicy::Hashed => "hashed",
        AllocationPolicy::Static => "static",
        AllocationPolicy::GeoLatency => "geoLatency",
        AllocationPolicy::Custom => "custom",
    }
}

fn settings_json(settings: &EnrollmentSettings, into: &mut Map<String, Value>) {
    into.insert(
        "provisioningStatus".into(),
        json!(match settings.provisioning_status {
            ProvisioningStatus::Enabled => "enabled",
            ProvisioningStatus::Disabled => "disabled",
        }),
    );
    into.insert(
        "reprovisionPolicy".into(),
        json!({
            "updateHubAssignment": settings.reprovision_policy.update_hub_assignment,
            "migrateDeviceData": settings.reprovision_policy.migrate_device_data,
        }),
    );
    into.insert(
        "allocationPolicy".into(),
        json!(policy_name(settings.allocation_policy.unwrap_or_default())),
    );
    if !settings.iot_hubs.is_empty() {
        into.insert("iotHubs".into(), json!(settings.iot_hubs));
    }
    if let Some(twin) = &settings.initial_twin {
        into.insert("initialTwin".into(), twin.clone());
    }
    if let Some(custom) = &settings.custom_allocation {
        into.insert(
            "customAllocationDefinition".into(),
            json!({"webhookUrl": custom.webhook_url, "apiVersion": custom.api_version}),
        );
    }
    into.insert("capabilities".into(), json!({"iotEdge": false}));
}

fn group_json(group: &EnrollmentGroup) -> Value {
    let mut map = Map::new();
    map.insert("enrollmentGroupId".into(), json!(group.enrollment_group_id));
    map.insert(
        "attestation".into(),
        attestation_json(&group.attestation, true),
    );
    settings_json(&group.settings, &mut map);
    map.insert("etag".into(), json!(group.etag));
    map.insert(
        "createdDateTimeUtc".into(),
        json!(azure_time(group.created)),
    );
    map.insert(
        "lastUpdatedDateTimeUtc".into(),
        json!(azure_time(group.updated)),
    );
    Value::Object(map)
}

fn enrollment_json(enrollment: &IndividualEnrollment) -> Value {
    let mut map = Map::new();
    map.insert("registrationId".into(), json!(enrollment.registration_id));
    if let Some(device_id) = &enrollment.device_id {
        map.insert("deviceId".into(), json!(device_id));
    }
    map.insert(
        "attestation".into(),
        attestation_json(&enrollment.attestation, false),
    );
    settings_json(&enrollment.settings, &mut map);
    map.insert("etag".into(), json!(enrollment.etag));
    map.insert(
        "createdDateTimeUtc".into(),
        json!(azure_time(enrollment.created)),
    );
    map.insert(
        "lastUpdatedDateTimeUtc".into(),
        json!(azure_time(enrollment.updated)),
    );
    Value::Object(map)
}

/// `DeviceRegistrationState`, nulls dropped.
fn registration_json(record: &RegistrationRecord) -> Value {
    compact(json!({
        "registrationId": record.registration_id,
        "createdDateTimeUtc": record.created,
        "assignedHub": record.assigned_hub,
        "deviceId": record.device_id,
        "status": record.status,
        "substatus": record.substatus,
        "errorCode": record.error_code,
        "errorMessage": record.error_message,
        "lastUpdatedDateTimeUtc": record.last_updated,
        "etag": record.etag,
        "payload": record.payload,
    }))
}
