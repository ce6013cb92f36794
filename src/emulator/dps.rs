//! The DPS device API: authentication at CONNECT, the register / operation-status exchange,
//! X.509 and symmetric-key attestation, enrollment precedence, allocation and reprovisioning,
//! with Azure's status codes, bodies and error codes; from api-version 2025-07-01-preview a
//! register request may carry a CSR, issued through the enrollment's Device Registry policy
//! (the chain on the assigned answer only).
//!
//! Certificates, tokens and the registration records' times read the cloud's clock; error
//! answers' `timestampUtc` stays on the wall clock (it dates the answer for the logs, beside
//! its tracking id), and the assignment latency and operations' lifetime are real time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use rumqttc::ConnectReturnCode;
use serde_json::{Value, json};

use crate::diagnosis::enrollment;
use crate::emulator::cloud::{
    Cloud, azure_time_ms, azure_timestamp, decode_der, new_etag, random_guid,
};
use crate::emulator::model::*;
use crate::emulator::quotas::{DpsQuotas, retry_after_seconds};
use crate::error::Error;
use crate::limits::THROTTLED_ERROR_CODE;
use crate::pki::chain::describe;
use crate::pki::{Certificate, CertificateRequest};
use crate::protocol::dps::{
    AttestationResult, DeviceRegistrationResult, ErrorDetails, RegistrationOperationStatus,
};
use crate::sas::{SasToken, derive_device_key};

/// Who is connected: established at CONNECT, used for every request of the session.
#[derive(Debug, Clone)]
pub(crate) struct DeviceIdentity {
    /// The DPS the scope belongs to.
    pub dps: String,
    /// Registration id from the username.
    pub registration_id: String,
    /// How the device authenticated.
    pub credential: DeviceCredential,
    /// Whether the CONNECT named an api-version that carries a CSR in the register body
    /// ([`crate::protocol::dps::CSR_API_VERSION`] or later).
    pub csr_api_version: bool,
}

/// A device's credential as presented.
#[derive(Debug, Clone)]
pub(crate) enum DeviceCredential {
    /// The chain sent in the TLS handshake, leaf first, exactly as presented.
    X509(Vec<Certificate>),
    /// A client certificate chain that cannot be trusted (a certificate that does not parse,
    /// or too many): DPS accepts the CONNECT and refuses every registration with 401002, as it
    /// does for every other X.509 failure.
    RefusedX509(String),
    /// A SAS token that verified against this enrollment's key.
    Sas {
        /// The enrollment whose key signed the token.
        enrollment: EnrollmentRef,
        /// The device's key (individual, or derived from the group key).
        device_key: String,
        /// The matching secondary key.
        secondary_key: String,
    },
}

/// A DPS reply on `$dps/registrations/res/{status}/?$rid=..`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    /// HTTP-style status.
    pub status: u16,
    /// `retry-after` seconds, when sent.
    pub retry_after: Option<u32>,
    /// JSON body, serialized once from the wire model.
    pub body: Bytes,
}

impl Reply {
    fn error(status: u16, error_code: u32, message: impl Into<String>) -> Self {
        Reply {
            status,
            retry_after: None,
            body: to_body(&ErrorDetails {
                error_code: Some(error_code),
                tracking_id: Some(random_guid()),
                message: Some(message.into()),
                timestamp_utc: Some(azure_timestamp()),
                error_message: None,
            }),
        }
    }
}

/// A wire-model value as the bytes sent: serialized once, with no `Value` tree in between.
fn to_body(value: &impl serde::Serialize) -> Bytes {
    // The wire models hold only strings, numbers and JSON values: they always serialize.
    serde_json::to_vec(value)
        .map(Bytes::from)
        .unwrap_or_else(|e| {
            log::error!("DPS: a reply did not serialize: {e}");
            Bytes::from_static(b"{}")
        })
}

struct Operation {
    registration_id: String,
    dps: String,
    ready_at: Instant,
    created_at: Instant,
    /// The final status body, with this operation's id: sent as is to every poll once ready.
    outcome: Bytes,
}

/// The operations still queryable, by id, and their ids in the order they were created, so
/// forgetting the expired ones looks only at those (a scan of every operation per register
/// made a fleet's provisioning quadratic).
#[derive(Default)]
struct Operations {
    by_id: HashMap<String, Operation>,
    created: std::collections::VecDeque<(Instant, String)>,
}

impl Operations {
    /// Adds an operation and forgets those created more than [`OPERATION_TTL`] ago.
    fn insert(&mut self, id: String, operation: Operation) {
        while let Some((created_at, _)) = self.created.front() {
            if created_at.elapsed() < OPERATION_TTL {
                break;
            }
            if let Some((_, expired)) = self.created.pop_front() {
                self.by_id.remove(&expired);
            }
        }
        self.created.push_back((operation.created_at, id.clone()));
        self.by_id.insert(id, operation);
    }
}

/// Realism knobs of one DPS, off by default.
#[derive(Debug, Clone, Default)]
pub struct DpsKnobs {
    /// Time between register and the operation completing.
    pub assignment_latency: Duration,
    /// Registrations allowed per minute (Azure: 1,000); `None` = unlimited.
    pub registrations_per_minute: Option<u32>,
    /// Refuse this many next registrations with `refusal_status`.
    pub refuse_next: u32,
    /// Status for refused registrations (429 by default).
    pub refusal_status: u16,
    /// Location of devices for geoLatency, by lower-case registration id.
    pub device_locations: HashMap<String, String>,
    /// Accept only the documented CSR key type (EC P-384) instead of P-256, P-384 and
    /// RSA-2048.
    pub strict_csr_key_type: bool,
}

/// A change to a DPS's knobs as a host asks for it; `None` leaves a knob as it is.
#[derive(Debug, Clone, Default)]
pub struct DpsKnobChange {
    /// Seconds between register and assignment (0 or more).
    pub assignment_latency: Option<f64>,
    /// Registrations a minute; 0 removes the limit.
    pub registrations_per_minute: Option<u32>,
    /// Refuse this many next registrations.
    pub refuse_next: Option<u32>,
    /// The HTTP error status (400-599) refusals answer with.
    pub refusal_status: Option<u16>,
    /// `(registration id, location)` for geoLatency allocation.
    pub device_location: Option<(String, String)>,
    /// Accept only EC P-384 CSRs (`true`) or also P-256 and RSA-2048 (`false`).
    pub strict_csr_key_type: Option<bool>,
}

impl DpsKnobChange {
    /// Checks the values (`Config` error naming the first bad one) and gives the change to
    /// apply; registration ids are keyed lower-case, as DPS matches them.
    pub fn validate(self) -> crate::Result<impl FnOnce(&mut DpsKnobs)> {
        let latency = self
            .assignment_latency
            .map(|s| crate::error::non_negative_seconds("assignment_latency", s))
            .transpose()?;
        if let Some(status) = self.refusal_status
            && !(400..600).contains(&status)
        {
            return Err(Error::config(format!(
                "refusal_status must be an HTTP error status (400-599), not {status}"
            )));
        }
        Ok(move |k: &mut DpsKnobs| {
            if let Some(latency) = latency {
                k.assignment_latency = latency;
            }
            if let Some(limit) = self.registrations_per_minute {
                k.registrations_per_minute = (limit > 0).then_some(limit);
            }
            if let Some(n) = self.refuse_next {
                k.refuse_next = n;
            }
            if let Some(status) = self.refusal_status {
                k.refusal_status = status;
            }
            if let Some((id, location)) = self.device_location {
                k.device_locations.insert(id.to_ascii_lowercase(), location);
            }
            if let Some(strict) = self.strict_csr_key_type {
                k.strict_csr_key_type = strict;
            }
        })
    }
}

/// The registration engine shared by every DPS connection.
pub(crate) struct DpsEngine {
    cloud: Arc<Cloud>,
    operations: Mutex<Operations>,
    knobs: Mutex<HashMap<String, DpsKnobs>>,
    /// Registration, poll and service-operation rates (knobs and Azure's presets).
    quotas: Arc<DpsQuotas>,
    /// `retry-after` on 202 replies.
    poll_retry_after: u32,
    /// In-process custom allocators by name (`python:<name>` in an enrollment).
    allocators: std::sync::RwLock<HashMap<String, Arc<dyn CustomAllocator>>>,
    /// HTTP client for webhooks, made on first use.
    http: std::sync::OnceLock<reqwest::Client>,
    /// Bounds the X.509 attestations running at once: they verify signatures, CPU work done on
    /// the blocking pool so the async workers keep serving every other connection.
    attestations: tokio::sync::Semaphore,
}

/// The longest chain (leaf included) judged on the async worker that received it.
const INLINE_CHAIN_LENGTH: usize = 3;

/// How long finished operations stay queryable.
const OPERATION_TTL: Duration = Duration::from_secs(600);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DpsEngine {
    /// An engine over `cloud`'s configuration.
    pub(crate) fn new(cloud: Arc<Cloud>, poll_retry_after: u32) -> Self {
        DpsEngine {
            cloud: cloud.clone(),
            operations: Mutex::new(Operations::default()),
            knobs: Mutex::new(HashMap::new()),
            quotas: {
                let quotas = DpsQuotas::default();
                for dps in cloud.all_dps().into_iter().filter(|d| d.presets) {
                    quotas.set_presets(&dps.name, true);
                }
                Arc::new(quotas)
            },
            poll_retry_after,
            allocators: std::sync::RwLock::new(HashMap::new()),
            http: std::sync::OnceLock::new(),
            attestations: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, usize::from),
            ),
        }
    }

    /// Registers an in-process custom allocator; enrollments refer to it as `python:<name>`.
    pub(crate) fn register_allocator(&self, name: &str, allocator: Arc<dyn CustomAllocator>) {
        self.allocators
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), allocator);
    }

    fn http(&self) -> Result<&reqwest::Client, String> {
        if let Some(client) = self.http.get() {
            return Ok(client);
        }
        let config = rustls::ClientConfig::builder_with_provider(crate::transport::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(crate::transport::system_roots())
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot create the webhook client: {e}"))?;
        Ok(self.http.get_or_init(|| client))
    }

    /// Runs the custom allocation policy: builds Azure's AllocationRequest, asks the webhook or
    /// the registered callable, and checks the answer names a linked hub.
    async fn allocate_custom(
        &self,
        dps: &DpsRecord,
        identity: &DeviceIdentity,
        admitted: &Admitted,
        payload: Option<Value>,
        previous: Option<&RegistrationRecord>,
    ) -> Result<Allocation, (u32, String)> {
        let fail = |message: String| (400_209, message);
        let target = admitted
            .settings
            .custom_allocation
            .as_ref()
            .ok_or_else(|| fail("Custom allocation policy without a webhook.".into()))?;
        let linked: Vec<String> = dps
            .linked_hubs
            .iter()
            .map(|l| l.host_name.clone())
            .collect();
        let mut context = serde_json::Map::new();
        context.insert("registrationId".into(), json!(identity.registration_id));
        match admitted.attestation {
            AttestationKind::X509 => context.insert("x509".into(), json!({})),
            AttestationKind::SymmetricKey => context.insert("symmetricKey".into(), json!({})),
        };
        if let Some(payload) = payload {
            context.insert("payload".into(), payload);
        }
        if let Some(previous) = previous {
            context.insert("currentIotHubHostName".into(), json!(previous.assigned_hub));
            context.insert("currentDeviceId".into(), json!(previous.device_id));
        }
        let enrollment_key = match &admitted.enrollment {
            EnrollmentRef::Group(_) => "enrollmentGroup",
            EnrollmentRef::Individual(_) => "individualEnrollment",
        };
        let enrollment = match &admitted.enrollment {
            EnrollmentRef::Group(id) => json!({"enrollmentGroupId": id}),
            EnrollmentRef::Individual(id) => json!({"registrationId": id}),
        };
        let mut enrollment = enrollment;
        if let Some(map) = enrollment.as_object_mut() {
            map.insert("allocationPolicy".into(), json!("custom"));
            map.insert("iotHubs".into(), json!(admitted.settings.iot_hubs));
            map.insert(
                "customAllocationDefinition".into(),
                json!({"webhookUrl": target.webhook_url, "apiVersion": target.api_version}),
            );
            map.insert("initialTwin".into(), json!(admitted.settings.initial_twin));
        }
        let request = json!({
            enrollment_key: enrollment,
            "deviceRuntimeContext": Value::Object(context),
            "linkedHubs": linked,
        });
        let response = if let Some(name) = target.webhook_url.strip_prefix("python:") {
            let allocator = self
                .allocators
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .cloned()
                .ok_or_else(|| fail(format!("Custom allocation failed: no allocator named '{name}' is registered in this process.")))?;
            allocator
                .allocate(request)
                .await
                .map_err(|e| fail(format!("Custom allocation failed: {e}")))?
        } else {
            let client = self.http().map_err(fail)?;
            let reply = client
                .post(&target.webhook_url)
                .json(&request)
                .send()
                .await
                .map_err(|e| fail(format!("Custom allocation failed: {e}")))?;
            let status = reply.status();
            if !status.is_success() {
                return Err(fail(format!(
                    "Custom allocation failed with status code: {}",
                    status.as_u16()
                )));
            }
            reply.json::<Value>().await.map_err(|e| {
                fail(format!(
                    "Custom allocation failed: the webhook's answer is not JSON: {e}"
                ))
            })?
        };
        // The docs spell it both iotHubHostName and iotHubHostname.
        let hub = response
            .as_object()
            .and_then(|m| {
                m.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("iotHubHostName"))
            })
            .and_then(|(_, v)| v.as_str())
            .ok_or_else(|| {
                fail("Custom allocation failed: the answer has no iotHubHostName.".into())
            })?;
        if !linked.iter().any(|h| h.eq_ignore_ascii_case(hub)) {
            return Err(fail(format!(
                "Custom allocation failed: '{hub}' is not a hub linked to this provisioning service."
            )));
        }
        Ok(Allocation {
            hub: hub.to_string(),
            initial_twin: response
                .get("initialTwin")
                .cloned()
                .filter(|t| !t.is_null()),
            payload: response.get("payload").cloned().filter(|p| !p.is_null()),
        })
    }

    /// Changes the knobs of one DPS.
    pub(crate) fn update_knobs(&self, dps: &str, change: impl FnOnce(&mut DpsKnobs)) {
        let mut knobs = lock(&self.knobs);
        let entry = knobs.entry(dps.to_string()).or_insert_with(|| DpsKnobs {
            refusal_status: 429,
            ..DpsKnobs::default()
        });
        change(entry);
    }

    fn knobs(&self, dps: &str) -> DpsKnobs {
        lock(&self.knobs).get(dps).cloned().unwrap_or_default()
    }

    /// Checks a DPS CONNECT: the scope must exist; a SAS password must verify against an
    /// enrollment key; otherwise a client certificate must have been presented (its chain is
    /// judged at register time, as DPS does). `chain` is what the handshake presented, or why
    /// it cannot be used.
    pub(crate) fn authenticate(
        &self,
        id_scope: &str,
        registration_id: &str,
        password: Option<&[u8]>,
        chain: std::result::Result<Vec<Certificate>, String>,
    ) -> Result<DeviceIdentity, (ConnectReturnCode, String)> {
        let refuse = |why: String| (ConnectReturnCode::NotAuthorized, why);
        let dps = self
            .cloud
            .dps_by_scope(id_scope)
            .ok_or_else(|| refuse(format!("unknown ID scope {id_scope:?}")))?;
        crate::pki::validate_registration_id(registration_id, false)
            .map_err(|e| refuse(e.to_string()))?;
        let identity = |credential| DeviceIdentity {
            dps: dps.name.clone(),
            registration_id: registration_id.to_string(),
            credential,
            csr_api_version: false,
        };
        if let Some(password) = password.filter(|p| !p.is_empty()) {
            if let Err(why) = &chain {
                return Err(refuse(format!(
                    "a SAS token with an unusable client certificate: {why}"
                )));
            }
            let token = std::str::from_utf8(password)
                .map_err(|_| refuse("the password is not UTF-8".into()))
                .and_then(|t| SasToken::parse(t).map_err(|e| refuse(e.to_string())))?;
            let expected = crate::protocol::dps::sas_audience(&dps.id_scope, registration_id);
            if !token.resource.eq_ignore_ascii_case(&expected) {
                return Err(refuse(format!(
                    "SAS token is for {:?}, not {expected:?}",
                    token.resource
                )));
            }
            if token.expiry <= self.cloud.clock().now() {
                return Err(refuse("SAS token has expired".into()));
            }
            return self
                .sas_credential(&dps, registration_id, &token)
                .map(identity)
                .ok_or_else(|| {
                    refuse(format!(
                        "SAS token for {registration_id:?} is not signed by any enrollment key"
                    ))
                });
        }
        match chain {
            Ok(chain) if chain.is_empty() => Err(refuse(
                "neither a client certificate nor a SAS token was presented".into(),
            )),
            Ok(chain) => Ok(identity(DeviceCredential::X509(chain))),
            Err(why) => Ok(identity(DeviceCredential::RefusedX509(why))),
        }
    }

    /// Finds the enrollment whose key signed `token`: the individual enrollment first, then
    /// every symmetric-key group (with the key derived for this registration id).
    fn sas_credential(
        &self,
        dps: &DpsRecord,
        registration_id: &str,
        token: &SasToken,
    ) -> Option<DeviceCredential> {
        if let Ok(e) = self.cloud.enrollment(&dps.name, registration_id) {
            if let Attestation::SymmetricKey {
                primary_key,
                secondary_key,
            } = &e.attestation
                && (token.is_signed_by(primary_key) || token.is_signed_by(secondary_key))
            {
                return Some(DeviceCredential::Sas {
                    enrollment: EnrollmentRef::Individual(e.registration_id.clone()),
                    device_key: primary_key.clone(),
                    secondary_key: secondary_key.clone(),
                });
            }
            // An individual enrollment takes precedence: no group may admit this id.
            return None;
        }
        for group in self.cloud.enrollment_groups(&dps.name) {
            if let Attestation::SymmetricKey {
                primary_key,
                secondary_key,
            } = &group.attestation
            {
                let (Ok(primary), Ok(secondary)) = (
                    derive_device_key(primary_key, registration_id),
                    derive_device_key(secondary_key, registration_id),
                ) else {
                    continue;
                };
                if token.is_signed_by(&primary) || token.is_signed_by(&secondary) {
                    return Some(DeviceCredential::Sas {
                        enrollment: EnrollmentRef::Group(group.enrollment_group_id.clone()),
                        device_key: primary,
                        secondary_key: secondary,
                    });
                }
            }
        }
        None
    }

    /// Handles `iotdps-register`.
    pub(crate) async fn register(
        self: &Arc<Self>,
        identity: &DeviceIdentity,
        body: &[u8],
    ) -> Reply {
        if body.len() > crate::limits::MAX_DPS_MESSAGE_BYTES {
            // DPS's quota page sets 96 KB per message but not the answer past it; its
            // troubleshooting table answers a request body it cannot validate with 400 /
            // 400004, which the SDKs report as a failed registration without retrying (a 413
            // is documented for DPS nowhere). dpskit's client refuses such a body before
            // sending it.
            return Reply::error(
                400,
                400_004,
                format!(
                    "The registration request of {} bytes exceeds DPS's message limit of 96 KB \
                     ({} bytes).",
                    body.len(),
                    crate::limits::MAX_DPS_MESSAGE_BYTES
                ),
            );
        }
        if let Some(reply) = self.throttle(&identity.dps) {
            return reply;
        }
        let (payload, csr) = match parse_body(body).and_then(|v| {
            let payload = v.get("payload").cloned().filter(|p| !p.is_null());
            Ok((payload, csr_field(&v, identity)?))
        }) {
            Ok(read) => read,
            Err(reply) => return reply,
        };
        let admitted = match self.attest_off_the_workers(identity).await {
            Ok(a) => a,
            Err(reply) => return reply,
        };
        let issued = match csr {
            Some(csr) => match self.issue(identity, &admitted, &csr) {
                Ok(issued) => Some(issued),
                Err(reply) => return reply,
            },
            None => None,
        };
        let outcome = self.assign(identity, admitted, payload, issued).await;
        let knobs = self.knobs(&identity.dps);
        let operation_id = operation_id();
        let created_at = Instant::now();
        // Serialized before the lock: every connection's register and poll take it.
        let operation = Operation {
            registration_id: identity.registration_id.clone(),
            dps: identity.dps.clone(),
            ready_at: created_at + knobs.assignment_latency,
            created_at,
            outcome: to_body(&RegistrationOperationStatus {
                operation_id: Some(operation_id.clone()),
                ..outcome
            }),
        };
        lock(&self.operations).insert(operation_id.clone(), operation);
        Reply {
            status: 202,
            retry_after: Some(self.poll_retry_after),
            body: to_body(&RegistrationOperationStatus {
                operation_id: Some(operation_id),
                status: Some("assigning".into()),
                registration_state: None,
            }),
        }
    }

    /// Handles `iotdps-get-operationstatus`.
    pub(crate) fn poll(&self, identity: &DeviceIdentity, operation_id: &str) -> Reply {
        if let Err(refused) = self
            .quotas
            .admit_poll(&identity.dps, &identity.registration_id)
        {
            let mut reply = Reply::error(429, THROTTLED_ERROR_CODE, refused.message);
            reply.retry_after = Some(retry_after_seconds(refused.retry_after));
            return reply;
        }
        let operations = lock(&self.operations);
        let Some(op) = operations.by_id.get(operation_id).filter(|op| {
            op.dps == identity.dps
                && op
                    .registration_id
                    .eq_ignore_ascii_case(&identity.registration_id)
        }) else {
            return Reply::error(
                404,
                404_104,
                format!("Operation '{operation_id}' was not found for this registration."),
            );
        };
        if Instant::now() < op.ready_at {
            return Reply {
                status: 202,
                retry_after: Some(self.poll_retry_after),
                body: to_body(&RegistrationOperationStatus {
                    operation_id: Some(operation_id.to_string()),
                    status: Some("assigning".into()),
                    registration_state: Some(DeviceRegistrationResult {
                        registration_id: Some(identity.registration_id.clone()),
                        status: Some("assigning".into()),
                        ..DeviceRegistrationResult::default()
                    }),
                }),
            };
        }
        Reply {
            status: 200,
            retry_after: None,
            body: op.outcome.clone(),
        }
    }

    /// Quota and refusal knobs: `Some(reply)` when this registration is refused.
    fn throttle(&self, dps: &str) -> Option<Reply> {
        let mut refused = None;
        self.update_knobs(dps, |k| {
            if k.refuse_next > 0 {
                k.refuse_next -= 1;
                refused = Some(k.refusal_status);
            }
        });
        if let Some(status) = refused {
            let mut reply = Reply::error(
                status,
                u32::from(status) * 1000 + 1,
                "Registration refused (emulator fault injection).",
            );
            reply.retry_after = Some(1);
            return Some(reply);
        }
        let per_minute = self.knobs(dps).registrations_per_minute;
        match self.quotas.admit_registration(dps, per_minute) {
            Ok(()) => None,
            Err(refused) => {
                let mut reply = Reply::error(429, THROTTLED_ERROR_CODE, refused.message);
                reply.retry_after = Some(retry_after_seconds(refused.retry_after));
                Some(reply)
            }
        }
    }

    /// The rate presets and buckets, shared with the DPS service API.
    pub(crate) fn quotas(&self) -> Arc<DpsQuotas> {
        self.quotas.clone()
    }

    /// [`Self::attest`], with long X.509 chains judged on the blocking pool, a bounded number at
    /// once. A chain of up to [`INLINE_CHAIN_LENGTH`] costs a few signature checks, less than
    /// the TLS handshake the workers just did, and a hand-off would cost more than it saves
    /// (about a tenth of the provisioning rate); a longer one may cost a hundred.
    async fn attest_off_the_workers(
        self: &Arc<Self>,
        identity: &DeviceIdentity,
    ) -> Result<Admitted, Reply> {
        match &identity.credential {
            DeviceCredential::X509(chain) if chain.len() > INLINE_CHAIN_LENGTH => {}
            _ => return self.attest(identity),
        }
        let busy = || Reply::error(503, 503_000, "The provisioning service is shutting down.");
        let _permit = self.attestations.acquire().await.map_err(|_| busy())?;
        let (engine, identity) = (self.clone(), identity.clone());
        tokio::task::spawn_blocking(move || engine.attest(&identity))
            .await
            .unwrap_or_else(|e| {
                log::error!("emulator: an X.509 attestation failed: {e}");
                Err(Reply::error(500, 500_000, "The attestation failed."))
            })
    }

    /// Decides which enrollment admits the device, or the 401 it gets.
    fn attest(&self, identity: &DeviceIdentity) -> Result<Admitted, Reply> {
        let unauthorized = |message: String| Reply::error(401, 401_002, message);
        match &identity.credential {
            DeviceCredential::Sas {
                enrollment,
                device_key,
                secondary_key,
            } => {
                let (settings, device_id) = match enrollment {
                    EnrollmentRef::Individual(id) => {
                        let e = self.cloud.enrollment(&identity.dps, id).map_err(|_| {
                            unauthorized("Unauthorized: the enrollment no longer exists.".into())
                        })?;
                        (e.settings, e.device_id)
                    }
                    EnrollmentRef::Group(id) => {
                        let g = self
                            .cloud
                            .enrollment_group(&identity.dps, id)
                            .map_err(|_| {
                                unauthorized(
                                    "Unauthorized: the enrollment group no longer exists.".into(),
                                )
                            })?;
                        (g.settings, None)
                    }
                };
                check_enabled(&settings, enrollment)?;
                Ok(Admitted {
                    enrollment: enrollment.clone(),
                    attestation: AttestationKind::SymmetricKey,
                    settings,
                    device_id,
                    auth: DeviceAuth::Sas {
                        primary_key: device_key.clone(),
                        secondary_key: secondary_key.clone(),
                    },
                })
            }
            DeviceCredential::X509(chain) => self.attest_x509(identity, chain),
            DeviceCredential::RefusedX509(why) => {
                Err(unauthorized(format!("Invalid certificate: {why}.")))
            }
        }
    }

    fn attest_x509(
        &self,
        identity: &DeviceIdentity,
        chain: &[Certificate],
    ) -> Result<Admitted, Reply> {
        let unauthorized = |message: String| Reply::error(401, 401_002, message);
        let leaf = &chain[0];
        let info = leaf.info();
        let cn = info.common_name.clone().unwrap_or_default();
        if !cn.eq_ignore_ascii_case(&identity.registration_id) {
            return Err(unauthorized(format!(
                "Unauthorized: the device certificate's CN '{cn}' does not match the registration id '{}'.",
                identity.registration_id
            )));
        }
        let t = self.cloud.clock().now();
        if t > info.not_after || t < info.not_before {
            return Err(unauthorized(format!(
                "Invalid certificate: {} is outside its validity period ({} to {}).",
                describe(leaf),
                crate::pki::chain::format_time(info.not_before),
                crate::pki::chain::format_time(info.not_after)
            )));
        }
        let auth = DeviceAuth::SelfSigned {
            primary_thumbprint: info.thumbprint_sha1.clone(),
            primary_thumbprint_sha256: info.thumbprint_sha256.clone(),
            secondary_thumbprint: None,
        };
        // An individual enrollment for this id beats every group.
        if let Ok(e) = self
            .cloud
            .enrollment(&identity.dps, &identity.registration_id)
        {
            let reference = EnrollmentRef::Individual(e.registration_id.clone());
            let Attestation::X509 { certificates, .. } = &e.attestation else {
                return Err(unauthorized(
                    "Unauthorized: the individual enrollment for this id does not use X.509."
                        .into(),
                ));
            };
            let enrolled = certificates
                .iter()
                .map(|c| stored_certificate(c, &e.registration_id))
                .collect::<Result<Vec<_>, _>>()?;
            if !enrollment::individual_accepts(chain, &enrolled, t) {
                return Err(unauthorized(
                    "Invalid certificate: it is not the certificate of the individual enrollment."
                        .into(),
                ));
            }
            check_enabled(&e.settings, &reference)?;
            return Ok(Admitted {
                enrollment: reference,
                attestation: AttestationKind::X509,
                settings: e.settings,
                device_id: e.device_id,
                auth,
            });
        }
        let dps = self
            .cloud
            .dps(&identity.dps)
            .map_err(|e| unauthorized(e.to_string()))?;
        let groups: Vec<(EnrollmentGroup, Vec<Certificate>)> = self
            .cloud
            .enrollment_groups(&identity.dps)
            .into_iter()
            .map(|g| Ok(group_certificates(&dps, &g)?.map(|certs| (g, certs))))
            .filter_map(Result::transpose)
            .collect::<Result<_, Reply>>()?;
        // Walk up from the leaf; the first group whose certificate appears wins (the rule
        // `dpskit doctor` predicts with, written once in the shared layer).
        let sets: Vec<&[Certificate]> = groups.iter().map(|(_, certs)| certs.as_slice()).collect();
        if let Some((g, c)) = enrollment::pick_group(chain, &sets).pick
            && let Some((group, certs)) = groups.get(g)
            && let Some(group_cert) = certs.get(c)
        {
            let reference = EnrollmentRef::Group(group.enrollment_group_id.clone());
            check_enabled(&group.settings, &reference)?;
            self.check_group_certificate_trusted(&dps, group, group_cert, chain)?;
            crate::pki::verify_chain(leaf, &chain[1..], std::slice::from_ref(group_cert), t)
                .map_err(|e| unauthorized(format!("Invalid certificate: {e}")))?;
            return Ok(Admitted {
                enrollment: reference,
                attestation: AttestationKind::X509,
                settings: group.settings.clone(),
                device_id: None,
                auth,
            });
        }
        let hint = if chain.len() == 1 && !info.is_self_signed {
            " (only the leaf was sent: send the full chain up to the enrollment's CA)"
        } else {
            ""
        };
        Err(unauthorized(format!(
            "CA certificate not found: no enrollment group of this provisioning service matches the chain of '{cn}'{hint}."
        )))
    }

    /// A group's certificate counts only if it is a verified uploaded CA, or chains up (through
    /// the presented certificates and the uploaded CAs) to one.
    fn check_group_certificate_trusted(
        &self,
        dps: &DpsRecord,
        group: &EnrollmentGroup,
        group_cert: &Certificate,
        chain: &[Certificate],
    ) -> Result<(), Reply> {
        let uploaded: Vec<(bool, Certificate)> = dps
            .certificates
            .iter()
            .map(|c| Ok((c.is_verified, stored_certificate(&c.der_base64, &c.name)?)))
            .collect::<Result<_, Reply>>()?;
        let trust = enrollment::group_certificate_trust(
            group_cert,
            chain,
            &uploaded,
            self.cloud.clock().now(),
        );
        if trust.is_trusted() {
            return Ok(());
        }
        let uploaded_unverified = trust == enrollment::CaTrust::UploadedUnverified;
        Err(Reply::error(
            401,
            401_002,
            if uploaded_unverified {
                format!(
                    "CA certificate not found: the certificate of enrollment group '{}' ({}) is uploaded but not verified; complete proof of possession or upload it as verified.",
                    group.enrollment_group_id,
                    group_cert.info().subject
                )
            } else {
                format!(
                    "CA certificate not found: the certificate of enrollment group '{}' ({}) does not chain to a verified CA certificate of this provisioning service.",
                    group.enrollment_group_id,
                    group_cert.info().subject
                )
            },
        ))
    }

    /// Checks a register request's CSR and issues its certificate through the policy the
    /// admitting enrollment names, at the cloud's now. Each refusal is a 400 with DPS's code for
    /// a request it cannot take (400004: Azure documents no code of its own for a bad CSR, and
    /// this is how DPS answers a body it cannot validate); the message says which check failed.
    fn issue(
        &self,
        identity: &DeviceIdentity,
        admitted: &Admitted,
        csr: &str,
    ) -> Result<Issued, Reply> {
        let refuse = |message: String| Reply::error(400, CSR_REFUSED, message);
        let der = BASE64.decode(csr.as_bytes()).map_err(|_| {
            refuse(
                "The certificate signing request (csr) is not valid base64: send the DER PKCS#10 \
                 request base64-encoded, without PEM headers or line breaks."
                    .into(),
            )
        })?;
        let request = CertificateRequest::from_der(&der).map_err(|e| {
            refuse(format!(
                "The certificate signing request (csr) is not a valid DER PKCS#10 request: {e}"
            ))
        })?;
        let cn = request.common_name().unwrap_or_default();
        if !cn.eq_ignore_ascii_case(&identity.registration_id) {
            return Err(refuse(format!(
                "The certificate signing request's common name '{cn}' does not match the \
                 registration id '{}'.",
                identity.registration_id
            )));
        }
        let strict = self.knobs(&identity.dps).strict_csr_key_type;
        if !crate::limits::csr_key_accepted(request.algorithm(), strict) {
            let accepted = if strict {
                crate::limits::STRICT_CSR_KEY_ALGORITHMS
            } else {
                crate::limits::CSR_KEY_ALGORITHMS
            };
            return Err(refuse(format!(
                "The certificate signing request's key type ({}) is not supported: use {}.",
                request
                    .algorithm()
                    .map_or_else(|| "unknown".to_string(), |a| a.to_string()),
                accepted
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let reference = admitted
            .settings
            .credential_policy
            .as_ref()
            .ok_or_else(|| {
                refuse(format!(
                    "The {} has no credential policy: a registration with a certificate signing \
                 request needs one to issue the certificate.",
                    describe_enrollment(&admitted.enrollment)
                ))
            })?;
        let policy = self
            .cloud
            .issuing_policy(&identity.dps, reference)
            .map_err(service_reply)?;
        let device_id = admitted
            .device_id
            .clone()
            .unwrap_or_else(|| identity.registration_id.clone());
        let chain = policy
            .issue(&request, &device_id, self.cloud.clock().now())
            .map_err(service_reply)?;
        Ok(Issued {
            chain: chain.iter().map(|c| BASE64.encode(c.der())).collect(),
            by: IssuedBy {
                namespace: policy.namespace.clone(),
                policy: policy.policy.clone(),
            },
        })
    }

    /// Allocates a hub, creates the hub identity and stores the registration record; returns the
    /// final operation body (assigned or failed). With `issued`, the identity authenticates by
    /// the issuing CA (`certificateAuthority`) and the assigned answer carries the chain.
    async fn assign(
        &self,
        identity: &DeviceIdentity,
        admitted: Admitted,
        payload: Option<Value>,
        issued: Option<Issued>,
    ) -> RegistrationOperationStatus {
        let previous = self
            .cloud
            .registration(&identity.dps, &identity.registration_id);
        let timestamp = azure_time_ms(self.cloud.clock().now_ms());
        let device_id = admitted
            .device_id
            .clone()
            .unwrap_or_else(|| identity.registration_id.clone());
        let allocation = match self.cloud.dps(&identity.dps) {
            Err(e) => Err((500_000, e.to_string())),
            Ok(dps) => {
                let keep = previous.as_ref().and_then(|p| {
                    let hub = p.assigned_hub.clone()?;
                    let still_linked = dps.linked_hubs.iter().any(|l| l.host_name == hub);
                    (!admitted.settings.reprovision_policy.update_hub_assignment && still_linked)
                        .then_some(hub)
                });
                match keep {
                    Some(hub) => Ok(Allocation {
                        hub,
                        initial_twin: None,
                        payload: None,
                    }),
                    None if admitted.settings.allocation_policy
                        == Some(AllocationPolicy::Custom) =>
                    {
                        self.allocate_custom(&dps, identity, &admitted, payload, previous.as_ref())
                            .await
                    }
                    None => allocate(
                        &dps,
                        &admitted.settings,
                        &identity.registration_id,
                        &self.knobs(&identity.dps),
                    )
                    .map(|hub| Allocation {
                        hub,
                        initial_twin: None,
                        payload: None,
                    }),
                }
            }
        };
        let created = previous
            .as_ref()
            .map_or_else(|| timestamp.clone(), |p| p.created.clone());
        let (record, device) = match allocation {
            Ok(Allocation {
                hub,
                initial_twin,
                payload,
            }) => {
                let substatus = match previous.as_ref().and_then(|p| p.assigned_hub.as_deref()) {
                    None => "initialAssignment",
                    Some(old) if old == hub => previous
                        .as_ref()
                        .and_then(|p| p.substatus.as_deref())
                        .unwrap_or("initialAssignment"),
                    Some(_) if admitted.settings.reprovision_policy.migrate_device_data => {
                        "deviceDataMigrated"
                    }
                    Some(_) => "deviceDataReset",
                };
                let device = HubDevice {
                    device_id: device_id.clone(),
                    hub: hub.clone(),
                    auth: match &issued {
                        Some(_) => DeviceAuth::CertificateAuthority,
                        None => admitted.auth.clone(),
                    },
                    initial_twin: initial_twin.or_else(|| admitted.settings.initial_twin.clone()),
                    created: self.cloud.clock().now(),
                    registry: Default::default(),
                    issued_by: issued.as_ref().map(|i| i.by.clone()),
                };
                (
                    RegistrationRecord {
                        registration_id: identity.registration_id.clone(),
                        enrollment: admitted.enrollment.clone(),
                        attestation: admitted.attestation,
                        assigned_hub: Some(hub),
                        device_id: Some(device_id),
                        status: "assigned".into(),
                        substatus: Some(substatus.into()),
                        error_code: None,
                        error_message: None,
                        created,
                        last_updated: timestamp,
                        etag: new_etag(),
                        payload,
                    },
                    Some(device),
                )
            }
            Err((code, message)) => (
                RegistrationRecord {
                    registration_id: identity.registration_id.clone(),
                    enrollment: admitted.enrollment.clone(),
                    attestation: admitted.attestation,
                    assigned_hub: None,
                    device_id: None,
                    status: "failed".into(),
                    substatus: None,
                    error_code: Some(code),
                    error_message: Some(message),
                    created,
                    last_updated: timestamp,
                    etag: new_etag(),
                    payload: None,
                },
                None,
            ),
        };
        let mut body = registration_status(&record);
        // Only the assigned answer (and its polls) carry the chain: the registration record,
        // and so every status lookup, does not.
        if let (Some(issued), Some(state)) = (issued, body.registration_state.as_mut())
            && record.status == "assigned"
        {
            state.issued_certificate_chain = Some(issued.chain);
        }
        if let Err(e) = self
            .cloud
            .commit_registration(&identity.dps, record, device)
        {
            log::error!(
                "DPS {}: storing the registration of {} failed: {e}",
                identity.dps,
                identity.registration_id
            );
            return RegistrationOperationStatus {
                operation_id: None,
                status: Some("failed".into()),
                registration_state: Some(DeviceRegistrationResult {
                    registration_id: Some(identity.registration_id.clone()),
                    status: Some("failed".into()),
                    error_code: Some(500_000),
                    error_message: Some(format!(
                        "The emulator could not store the registration: {e}"
                    )),
                    ..DeviceRegistrationResult::default()
                }),
            };
        }
        body
    }
}

/// DPS's code for a register request whose CSR it cannot take (see [`DpsEngine::issue`]).
const CSR_REFUSED: u32 = 400_004;

/// A certificate DPS issued for a register request's CSR.
struct Issued {
    /// Base64 DER: leaf, issuing CA, root.
    chain: Vec<String>,
    /// The policy that issued it (the hub renews through it).
    by: IssuedBy,
}

/// The register body's `csr`: absent or `null` is none; anything but a string, or a CSR on an
/// api-version older than [`crate::protocol::dps::CSR_API_VERSION`], is refused (400004). An
/// older api-version knows no `csr`; refusing it, rather than registering without issuing,
/// tells a device that expects a certificate why it gets none.
fn csr_field(body: &Value, identity: &DeviceIdentity) -> Result<Option<String>, Reply> {
    let csr = match body.get("csr") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(csr)) => csr.clone(),
        Some(other) => {
            return Err(Reply::error(
                400,
                CSR_REFUSED,
                format!("The certificate signing request (csr) must be a string, not {other}."),
            ));
        }
    };
    if !identity.csr_api_version {
        return Err(Reply::error(
            400,
            CSR_REFUSED,
            format!(
                "A certificate signing request (csr) needs api-version {} or later in the \
                 CONNECT username.",
                crate::protocol::dps::CSR_API_VERSION
            ),
        ));
    }
    Ok(Some(csr))
}

/// An enrollment as DPS names it in its messages.
fn describe_enrollment(enrollment: &EnrollmentRef) -> String {
    match enrollment {
        EnrollmentRef::Group(id) => format!("enrollment group '{id}'"),
        EnrollmentRef::Individual(id) => format!("individual enrollment '{id}'"),
    }
}

/// The DPS answer for a core error: a service error keeps its status, code and message.
fn service_reply(error: Error) -> Reply {
    match error {
        Error::Service(s) => Reply::error(
            s.status,
            s.error_code.unwrap_or(u32::from(s.status) * 1000),
            s.message,
        ),
        other => Reply::error(500, 500_000, other.to_string()),
    }
}

/// Where a device goes, and what custom allocation added.
struct Allocation {
    hub: String,
    initial_twin: Option<Value>,
    payload: Option<Value>,
}

/// A custom allocation policy implemented in-process (a Python callable, for instance): it
/// receives Azure's AllocationRequest JSON and answers with an AllocationResponse JSON.
pub trait CustomAllocator: Send + Sync {
    /// Decides; an `Err` fails the registration with that message.
    fn allocate(
        &self,
        request: Value,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, String>> + Send + '_>>;
}

/// The enrollment that admitted a device, with what the hub identity needs.
struct Admitted {
    enrollment: EnrollmentRef,
    attestation: AttestationKind,
    settings: EnrollmentSettings,
    device_id: Option<String>,
    auth: DeviceAuth,
}

fn check_enabled(settings: &EnrollmentSettings, enrollment: &EnrollmentRef) -> Result<(), Reply> {
    if settings.provisioning_status == ProvisioningStatus::Disabled {
        let what = describe_enrollment(enrollment);
        return Err(Reply::error(
            401,
            401_002,
            format!("Unauthorized: the {what} is disabled."),
        ));
    }
    Ok(())
}

/// The certificates a group's X.509 attestation names (uploaded CAs by reference, or inline).
/// A stored certificate that no longer parses refuses the registration: skipping it would let
/// the device fall through to another enrollment, a decision Azure would not make.
fn group_certificates(
    dps: &DpsRecord,
    group: &EnrollmentGroup,
) -> Result<Option<Vec<Certificate>>, Reply> {
    let Attestation::X509 {
        ca_references,
        certificates,
    } = &group.attestation
    else {
        return Ok(None);
    };
    let mut out = certificates
        .iter()
        .map(|c| stored_certificate(c, &group.enrollment_group_id))
        .collect::<Result<Vec<_>, _>>()?;
    for name in ca_references {
        if let Some(ca) = dps.certificates.iter().find(|c| &c.name == name) {
            out.push(stored_certificate(&ca.der_base64, name)?);
        }
    }
    Ok(Some(out))
}

/// Decodes a certificate from the state store; `owner` names where it is stored.
fn stored_certificate(der_base64: &str, owner: &str) -> Result<Certificate, Reply> {
    decode_der(der_base64).map_err(|e| {
        log::error!("emulator: a stored certificate of {owner:?} is unreadable: {e}");
        Reply::error(
            500,
            500_000,
            format!("The stored certificate of '{owner}' is unreadable: {e}"),
        )
    })
}

/// Chooses a hub host name, or the (errorCode, message) of a failed registration.
fn allocate(
    dps: &DpsRecord,
    settings: &EnrollmentSettings,
    registration_id: &str,
    knobs: &DpsKnobs,
) -> Result<String, (u32, String)> {
    let candidates: Vec<&LinkedHub> = if settings.iot_hubs.is_empty() {
        dps.linked_hubs
            .iter()
            .filter(|l| l.apply_allocation_policy)
            .collect()
    } else {
        settings
            .iot_hubs
            .iter()
            .filter_map(|h| {
                dps.linked_hubs
                    .iter()
                    .find(|l| l.host_name.eq_ignore_ascii_case(h) || l.hub == *h)
            })
            .collect()
    };
    if candidates.is_empty() {
        return Err((
            400_208,
            format!(
                "No IoT hub is linked to provisioning service '{}' for this enrollment.",
                dps.name
            ),
        ));
    }
    let chosen = match settings.allocation_policy.unwrap_or_default() {
        AllocationPolicy::Static => candidates[0],
        AllocationPolicy::Hashed => hashed(&candidates, registration_id),
        AllocationPolicy::GeoLatency => {
            let location = knobs
                .device_locations
                .get(&registration_id.to_ascii_lowercase())
                .map_or(dps.location.as_str(), String::as_str);
            let near: Vec<&LinkedHub> = candidates
                .iter()
                .copied()
                .filter(|l| l.location.eq_ignore_ascii_case(location))
                .collect();
            hashed(
                if near.is_empty() { &candidates } else { &near },
                registration_id,
            )
        }
        // Custom allocation is asynchronous and handled by the engine before this point.
        AllocationPolicy::Custom => hashed(&candidates, registration_id),
    };
    Ok(chosen.host_name.clone())
}

/// Weighted choice by a hash of the (case-insensitive) registration id: stable across restarts.
fn hashed<'a>(candidates: &[&'a LinkedHub], registration_id: &str) -> &'a LinkedHub {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        registration_id.to_ascii_lowercase().as_bytes(),
    );
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    let hash = u64::from_be_bytes(first);
    let weights: Vec<u64> = candidates
        .iter()
        .map(|l| u64::from(l.allocation_weight))
        .collect();
    let total: u64 = weights.iter().sum();
    if total == 0 {
        return candidates[(hash % candidates.len() as u64) as usize];
    }
    let mut point = hash % total;
    for (link, weight) in candidates.iter().zip(&weights) {
        if point < *weight {
            return link;
        }
        point -= weight;
    }
    candidates[candidates.len() - 1]
}

fn parse_body(body: &[u8]) -> Result<Value, Reply> {
    let text = String::from_utf8_lossy(body);
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| {
        Reply::error(
            400,
            400_004,
            format!("The request body is not valid JSON: {e}"),
        )
    })
}

fn operation_id() -> String {
    let mut b = [0u8; 8];
    let _ = crate::random::fill_random(&mut b);
    format!(
        "5.{}.{}",
        crate::pki::cert::hex_upper(&b).to_ascii_lowercase(),
        random_guid()
    )
}

/// The `RegistrationOperationStatus` of a finished registration (no operation id yet).
pub(crate) fn registration_status(record: &RegistrationRecord) -> RegistrationOperationStatus {
    let group = match &record.enrollment {
        EnrollmentRef::Group(id) => Some(id.clone()),
        EnrollmentRef::Individual(_) => None,
    };
    let attestation = Some(AttestationResult {
        enrollment_group_id: group,
    });
    let (x509, symmetric_key) = match record.attestation {
        AttestationKind::X509 => (attestation, None),
        AttestationKind::SymmetricKey => (None, attestation),
    };
    RegistrationOperationStatus {
        operation_id: None,
        status: Some(record.status.clone()),
        registration_state: Some(DeviceRegistrationResult {
            x509,
            symmetric_key,
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
            // A stored `null` payload is written as `null`, as before: `Some(Null)`.
            payload: record.payload.clone(),
            issued_certificate_chain: None,
        }),
    }
}

impl From<Error> for Reply {
    fn from(e: Error) -> Self {
        Reply::error(500, 500_000, e.to_string())
    }
}
