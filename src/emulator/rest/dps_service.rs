//! The DPS service (data-plane) API: enrollment groups, individual enrollments and registration
//! states, authenticated with a `provisioningserviceowner` SAS token. Bodies follow the service
//! swagger, as the serde types of `protocol::dps_service` (the REST client's too): `attestation`
//! required (as Azure requires it), other explicit `null`s accepted, a member of the wrong type
//! refused, certificates answered as `info` (never raw), etags with `If-Match`/412, errors as
//! `ProvisioningServiceErrorDetails` plus `x-ms-error-code`. An enrollment's Device Registry
//! policy reference (`credentialPolicyName`, or the three names) is kept as sent and refused
//! when this DPS cannot issue with it (no namespace linked, no such policy).

use hyper::header::IF_MATCH;
use hyper::http::request::Parts;
use hyper::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::arm::certificate_from_text;
use super::{Reply, RestContext};
use crate::emulator::cloud::{Cloud, EnrollmentSpec, azure_time, decode_der, random_guid};
use crate::emulator::model::{
    Attestation, CredentialPolicyRef, DpsRecord, EnrollmentGroup, EnrollmentSettings,
    IndividualEnrollment, RegistrationRecord, SharedAccessPolicy,
};
use crate::error::Error;
use crate::protocol::dps_service as wire;

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
        wire_json(&wire::ProvisioningServiceErrorDetails {
            error_code: code,
            tracking_id: random_guid(),
            message: message.to_string(),
            timestamp_utc: crate::emulator::cloud::azure_timestamp(),
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
        Error::Certificate(m) | Error::Config(m) => service_error(400, 400_004, &m.to_string()),
        Error::Protocol(m) => service_error(400, 400_001, &m.to_string()),
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
    let host = context.cloud.dps_host().to_string();
    let candidates = context.cloud.all_dps().into_iter().map(|dps| {
        let policies = dps_policies(&dps);
        (dps, host.clone(), policies)
    });
    super::sas_authorize(
        parts,
        "DPS service",
        context.web_port(),
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
            .map(|g| {
                Reply::json(
                    StatusCode::OK,
                    wire_json(&attestation_wire(&g.attestation, true)),
                )
            }),
        (&Method::POST, ["enrollments", "query"]) => request.query_enrollments(),
        (&Method::POST, ["enrollments"]) => request.bulk(false),
        (&Method::GET, ["enrollments", _]) => request.get_enrollment(segments[1]),
        (&Method::PUT, ["enrollments", _]) => request.put_enrollment(segments[1]),
        (&Method::DELETE, ["enrollments", _]) => request.delete_enrollment(segments[1]),
        (&Method::POST, ["enrollments", _, "attestationmechanism"]) => {
            context.cloud.enrollment(&dps.name, segments[1]).map(|e| {
                Reply::json(
                    StatusCode::OK,
                    wire_json(&attestation_wire(&e.attestation, false)),
                )
            })
        }
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
    /// The body as the service API type `T`: not JSON, or a member of the wrong type or an
    /// unknown value, is a 400 naming it.
    fn wire_body<T: DeserializeOwned>(&self, what: &str) -> crate::Result<T> {
        let value: Value = serde_json::from_slice(self.body)
            .map_err(|e| Error::config_caused("the request body is not JSON", e))?;
        from_wire(value, what)
    }

    fn get_group(&self, id: &str) -> crate::Result<Reply> {
        let group = self.context.cloud.enrollment_group(&self.dps.name, id)?;
        Ok(with_etag(wire_json(&group_wire(&group)), &group.etag))
    }

    fn put_group(&self, id: &str) -> crate::Result<Reply> {
        let body: wire::EnrollmentGroup = self.wire_body("an enrollment group")?;
        let spec = group_spec(body, &self.context.cloud, &self.dps.name)?;
        let group =
            self.context
                .cloud
                .put_enrollment_group(&self.dps.name, id, spec, self.if_match)?;
        Ok(with_etag(wire_json(&group_wire(&group)), &group.etag))
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
            .map(|g| wire_json(&group_wire(g)))
            .collect();
        Ok(self.paging.page(items, "EnrollmentGroup"))
    }

    fn get_enrollment(&self, id: &str) -> crate::Result<Reply> {
        let enrollment = self.context.cloud.enrollment(&self.dps.name, id)?;
        Ok(with_etag(
            wire_json(&enrollment_wire(&enrollment)),
            &enrollment.etag,
        ))
    }

    fn put_enrollment(&self, id: &str) -> crate::Result<Reply> {
        let body: wire::IndividualEnrollment = self.wire_body("an individual enrollment")?;
        let spec = enrollment_spec(body, &self.context.cloud, &self.dps.name)?;
        let enrollment =
            self.context
                .cloud
                .put_enrollment(&self.dps.name, id, spec, self.if_match)?;
        Ok(with_etag(
            wire_json(&enrollment_wire(&enrollment)),
            &enrollment.etag,
        ))
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
            .map(|e| wire_json(&enrollment_wire(e)))
            .collect();
        Ok(self.paging.page(items, "Enrollment"))
    }

    /// `{"enrollmentGroups"|"enrollments": [...], "mode": create|update|updateIfMatchETag|delete}`
    /// → `BulkEnrollmentOperationResult`. Each item succeeds or fails on its own, as on Azure.
    fn bulk(&self, groups: bool) -> crate::Result<Reply> {
        let body: wire::BulkEnrollmentOperation = self.wire_body("a bulk operation")?;
        let (list, items) = if groups {
            ("enrollmentGroups", body.enrollment_groups)
        } else {
            ("enrollments", body.enrollments)
        };
        let items =
            items.ok_or_else(|| Error::config(format!("a bulk operation needs \"{list}\"")))?;
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
        let mode = body
            .mode
            .as_deref()
            .unwrap_or("create")
            .to_ascii_lowercase();
        let cloud = &self.context.cloud;
        let dps = &self.dps.name;
        let mut errors = Vec::new();
        for item in items {
            let keys = wire::BulkItemKeys::of(&item);
            let id = if groups {
                keys.enrollment_group_id
            } else {
                keys.registration_id
            }
            .unwrap_or_default();
            let exists = if groups {
                cloud.enrollment_group(dps, &id).is_ok()
            } else {
                cloud.enrollment(dps, &id).is_ok()
            };
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
                        keys.etag.as_deref()
                    } else {
                        None
                    };
                    if groups {
                        from_wire(item, "an enrollment group")
                            .and_then(|body| group_spec(body, cloud, dps))
                            .and_then(|spec| cloud.put_enrollment_group(dps, &id, spec, guard))
                            .map(|_| ())
                    } else {
                        from_wire(item, "an individual enrollment")
                            .and_then(|body| enrollment_spec(body, cloud, dps))
                            .and_then(|spec| cloud.put_enrollment(dps, &id, spec, guard))
                            .map(|_| ())
                    }
                }
                other => Err(Error::config(format!("unknown bulk mode {other:?}"))),
            };
            if let Err(e) = outcome {
                let (status, code) = match &e {
                    Error::Service(s) => {
                        (s.status, s.error_code.unwrap_or(u32::from(s.status) * 1000))
                    }
                    _ => (400, 400_004),
                };
                errors.push(wire::BulkEnrollmentOperationError {
                    registration_id: (!groups).then(|| id.clone()),
                    enrollment_group_id: groups.then(|| id.clone()),
                    error_code: code,
                    error_status: e.to_string(),
                    status: Some(status),
                });
            }
        }
        Ok(Reply::json(
            StatusCode::OK,
            wire_json(&wire::BulkEnrollmentOperationResult {
                is_successful: errors.is_empty(),
                errors,
            }),
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
        Ok(with_etag(
            wire_json(&registration_wire(&record)),
            &record.etag,
        ))
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
            .map(|r| wire_json(&registration_wire(r)))
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

/// `value` as the service API type `T`; what does not read is a 400 naming the member.
fn from_wire<T: DeserializeOwned>(value: Value, what: &str) -> crate::Result<T> {
    serde_json::from_value(value)
        .map_err(|e| Error::config_caused(format!("the request body is not {what}"), e))
}

/// A service API type as the JSON of an answer.
fn wire_json<T: Serialize>(value: &T) -> Value {
    // These types serialize infallibly (string keys, no custom serializers that fail).
    serde_json::to_value(value).unwrap_or(Value::Null)
}

// ---- service API → model ------------------------------------------------------------------

fn group_spec(
    body: wire::EnrollmentGroup,
    cloud: &Cloud,
    dps: &str,
) -> crate::Result<EnrollmentSpec> {
    checked_policy(
        spec(body.attestation, body.policies, None, true)?,
        cloud,
        dps,
    )
}

fn enrollment_spec(
    body: wire::IndividualEnrollment,
    cloud: &Cloud,
    dps: &str,
) -> crate::Result<EnrollmentSpec> {
    checked_policy(
        spec(body.attestation, body.policies, body.device_id, false)?,
        cloud,
        dps,
    )
}

/// Refuses an enrollment whose certificate policy this DPS cannot issue with: no namespace
/// linked (400004, DPS's own text), or no such policy in it (400004 too: Azure documents no
/// code for it, and DPS answers an enrollment member naming nothing valid with its invalid
/// argument code), so a device meets no surprise at registration.
fn checked_policy(spec: EnrollmentSpec, cloud: &Cloud, dps: &str) -> crate::Result<EnrollmentSpec> {
    if let Some(reference) = &spec.settings.credential_policy {
        cloud.issuing_policy(dps, reference)?;
    }
    Ok(spec)
}

fn policy_ref(reference: wire::PolicyReference) -> CredentialPolicyRef {
    match reference {
        wire::PolicyReference::Name(policy) => CredentialPolicyRef {
            policy,
            namespace: None,
            certificate_authority: None,
        },
        wire::PolicyReference::Names {
            namespace,
            certificate_authority,
            policy,
        } => CredentialPolicyRef {
            policy,
            namespace: Some(namespace),
            certificate_authority: Some(certificate_authority),
        },
    }
}

fn policy_ref_wire(reference: &CredentialPolicyRef) -> wire::PolicyReference {
    match (&reference.namespace, &reference.certificate_authority) {
        (Some(namespace), Some(certificate_authority)) => wire::PolicyReference::Names {
            namespace: namespace.clone(),
            certificate_authority: certificate_authority.clone(),
            policy: reference.policy.clone(),
        },
        _ => wire::PolicyReference::Name(reference.policy.clone()),
    }
}

/// An enrollment (group or individual) as the emulator stores it, explicit `null`s meaning
/// "default" except for the required `attestation`.
fn spec(
    attestation: Option<wire::AttestationMechanism>,
    policies: wire::EnrollmentPolicies,
    device_id: Option<String>,
    group: bool,
) -> crate::Result<EnrollmentSpec> {
    let attestation = match attestation {
        // Azure's service API requires the attestation in every enrollment PUT, an update
        // included (400); clients re-send the one they read.
        None => {
            return Err(Error::service(
                400,
                400_004,
                "The attestation is required: an enrollment PUT must carry \"attestation\" \
                 (to keep the current one, send back what a GET or attestationmechanism returned).",
            ));
        }
        // What a GET returned, written back: certificate info without the certificate means
        // "keep the certificates" (clients update an enrollment by GET, change, PUT).
        Some(a) if only_certificate_info(&a) => None,
        Some(a) => Some(attestation_from_wire(a, group)?),
    };
    let credential_policy = policies.policy_reference()?.map(policy_ref);
    let mut iot_hubs = policies.iot_hubs.unwrap_or_default();
    if iot_hubs.is_empty()
        && let Some(legacy) = policies.iot_hub_host_name
    {
        iot_hubs.push(legacy);
    }
    Ok(EnrollmentSpec {
        attestation,
        settings: EnrollmentSettings {
            provisioning_status: policies.provisioning_status.unwrap_or_default(),
            allocation_policy: policies.allocation_policy,
            iot_hubs,
            reprovision_policy: policies.reprovision_policy.unwrap_or_default(),
            initial_twin: policies.initial_twin.map(Value::Object),
            custom_allocation: policies.custom_allocation_definition,
            credential_policy,
        },
        device_id,
    })
}

/// True for an x509 attestation whose certificate entries carry only `info`.
fn only_certificate_info(attestation: &wire::AttestationMechanism) -> bool {
    let Some(x509) = &attestation.x509 else {
        return false;
    };
    let entries: Vec<&wire::X509CertificateWithInfo> = [
        x509.signing_certificates.as_ref(),
        x509.client_certificates.as_ref(),
    ]
    .into_iter()
    .flatten()
    .flat_map(wire::X509Certificates::entries)
    .collect();
    x509.ca_references.is_none()
        && !entries.is_empty()
        && entries
            .iter()
            .all(|e| e.certificate.is_none() && e.info.is_some())
}

fn attestation_from_wire(
    attestation: wire::AttestationMechanism,
    group: bool,
) -> crate::Result<Attestation> {
    match attestation.kind {
        wire::AttestationType::X509 => {
            let x509 = attestation.x509.unwrap_or_default();
            let references: Vec<String> = x509
                .ca_references
                .iter()
                .flat_map(|r| r.primary.iter().chain(r.secondary.iter()))
                .cloned()
                .collect();
            let field = wire::X509Attestation::certificates_field(group);
            let mut certificates = Vec::new();
            for entry in x509
                .certificates(group)
                .into_iter()
                .flat_map(|c| c.entries())
            {
                let text = entry.certificate.as_deref().ok_or_else(|| {
                    Error::config(format!("x509.{field} entries need a \"certificate\""))
                })?;
                let cert = certificate_from_text(text)?;
                certificates.push(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    cert.der(),
                ));
            }
            if references.is_empty() && certificates.is_empty() {
                return Err(Error::config(format!(
                    "an x509 attestation needs {field} or caReferences"
                )));
            }
            Ok(Attestation::X509 {
                ca_references: references,
                certificates,
            })
        }
        wire::AttestationType::SymmetricKey => {
            let keys = attestation.symmetric_key.unwrap_or_default();
            let key = |given: Option<String>| -> crate::Result<String> {
                match given.filter(|k| !k.is_empty()) {
                    Some(key) => Ok(key),
                    // Null or missing: the service generates the key, as Azure does.
                    None => crate::sas::generate_key(),
                }
            };
            Ok(Attestation::SymmetricKey {
                primary_key: key(keys.primary_key)?,
                secondary_key: key(keys.secondary_key)?,
            })
        }
        wire::AttestationType::Tpm => Err(Error::config(
            "TPM attestation is not available over MQTT, so the emulator does not offer it",
        )),
    }
}

// ---- model → service API ------------------------------------------------------------------

/// `X509CertificateInfo` of a stored certificate.
fn certificate_info(der_base64: &str) -> wire::X509CertificateWithInfo {
    let info = decode_der(der_base64).ok().map(|cert| {
        let info = cert.info();
        wire::X509CertificateInfo {
            subject_name: info.subject.clone(),
            sha1_thumbprint: info.thumbprint_sha1.to_ascii_uppercase(),
            sha256_thumbprint: info.thumbprint_sha256.to_ascii_uppercase(),
            issuer_name: info.issuer.clone(),
            not_before_utc: azure_time(info.not_before).replace(".0000000Z", "Z"),
            not_after_utc: azure_time(info.not_after).replace(".0000000Z", "Z"),
            serial_number: info.serial_number.to_ascii_uppercase(),
            version: 3,
        }
    });
    wire::X509CertificateWithInfo {
        certificate: None,
        info,
    }
}

/// An attestation as the service answers it: certificate info, never the certificate.
fn attestation_wire(attestation: &Attestation, group: bool) -> wire::AttestationMechanism {
    match attestation {
        Attestation::X509 {
            ca_references,
            certificates,
        } => {
            let x509 = if !ca_references.is_empty() {
                wire::X509Attestation {
                    ca_references: Some(wire::X509CaReferences {
                        primary: ca_references.first().cloned(),
                        secondary: ca_references.get(1).cloned(),
                    }),
                    ..wire::X509Attestation::default()
                }
            } else {
                let primary = certificates.first().map(|c| certificate_info(c));
                // Azure fills in secondary from primary when only one was sent.
                let secondary = certificates
                    .get(1)
                    .map(|c| certificate_info(c))
                    .or_else(|| primary.clone());
                let pair = Some(wire::X509Certificates { primary, secondary });
                if group {
                    wire::X509Attestation {
                        signing_certificates: pair,
                        ..wire::X509Attestation::default()
                    }
                } else {
                    wire::X509Attestation {
                        client_certificates: pair,
                        ..wire::X509Attestation::default()
                    }
                }
            };
            wire::AttestationMechanism {
                kind: wire::AttestationType::X509,
                x509: Some(x509),
                symmetric_key: None,
            }
        }
        Attestation::SymmetricKey {
            primary_key,
            secondary_key,
        } => wire::AttestationMechanism {
            kind: wire::AttestationType::SymmetricKey,
            x509: None,
            symmetric_key: Some(wire::SymmetricKeyAttestation {
                primary_key: Some(primary_key.clone()),
                secondary_key: Some(secondary_key.clone()),
            }),
        },
    }
}

/// The policies, etag and times of a stored enrollment, every policy spelled out (the
/// defaults too) as the service answers.
fn policies_wire(
    settings: &EnrollmentSettings,
    etag: &str,
    created: i64,
    updated: i64,
) -> wire::EnrollmentPolicies {
    wire::EnrollmentPolicies {
        provisioning_status: Some(settings.provisioning_status),
        reprovision_policy: Some(settings.reprovision_policy),
        allocation_policy: Some(settings.allocation_policy.unwrap_or_default()),
        iot_hubs: (!settings.iot_hubs.is_empty()).then(|| settings.iot_hubs.clone()),
        iot_hub_host_name: None,
        initial_twin: settings
            .initial_twin
            .as_ref()
            .and_then(Value::as_object)
            .cloned(),
        custom_allocation_definition: settings.custom_allocation.clone(),
        credential_policy_name: None,
        namespace_name: None,
        certificate_authority_name: None,
        certificate_policy_name: None,
        capabilities: Some(wire::DeviceCapabilities {
            iot_edge: Some(false),
        }),
        etag: Some(etag.to_string()),
        created_date_time_utc: Some(azure_time(created)),
        last_updated_date_time_utc: Some(azure_time(updated)),
    }
}

/// The policies of a stored enrollment with its certificate policy reference, in the form it
/// was sent.
fn settings_wire(
    settings: &EnrollmentSettings,
    etag: &str,
    created: i64,
    updated: i64,
) -> wire::EnrollmentPolicies {
    let mut policies = policies_wire(settings, etag, created, updated);
    policies.set_policy_reference(settings.credential_policy.as_ref().map(policy_ref_wire));
    policies
}

fn group_wire(group: &EnrollmentGroup) -> wire::EnrollmentGroup {
    wire::EnrollmentGroup {
        enrollment_group_id: Some(group.enrollment_group_id.clone()),
        attestation: Some(attestation_wire(&group.attestation, true)),
        policies: settings_wire(&group.settings, &group.etag, group.created, group.updated),
    }
}

fn enrollment_wire(enrollment: &IndividualEnrollment) -> wire::IndividualEnrollment {
    wire::IndividualEnrollment {
        registration_id: Some(enrollment.registration_id.clone()),
        device_id: enrollment.device_id.clone(),
        attestation: Some(attestation_wire(&enrollment.attestation, false)),
        policies: settings_wire(
            &enrollment.settings,
            &enrollment.etag,
            enrollment.created,
            enrollment.updated,
        ),
    }
}

/// `DeviceRegistrationState` of a stored registration.
fn registration_wire(record: &RegistrationRecord) -> wire::DeviceRegistrationState {
    wire::DeviceRegistrationState {
        registration_id: Some(record.registration_id.clone()),
        created_date_time_utc: Some(record.created.clone()),
        assigned_hub: record.assigned_hub.clone(),
        device_id: record.device_id.clone(),
        status: Some(record.status.clone()),
        substatus: record.substatus.clone(),
        error_code: record.error_code,
        error_message: record.error_message.clone(),
        last_updated_date_time_utc: Some(record.last_updated.clone()),
        etag: Some(record.etag.clone()),
        payload: record.payload.clone().filter(|p| !p.is_null()),
    }
}
