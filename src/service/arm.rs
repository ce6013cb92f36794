//! Azure Resource Manager: IoT hubs, DPS instances with their linked hubs, keys, CA
//! certificates and proof of possession, written to the documented REST API (paths, each
//! resource type's api-version, `If-Match` etags, RFC 1123 dates, no `null`s in bodies), with
//! hub and DPS names checked by Azure's rules before any request. Writes wait for ARM's
//! long-running operations (deletes included), lists follow `nextLink`, and every request goes
//! through the one retry policy. Azure Device Registry (`Microsoft.DeviceRegistry`, the
//! certificate management preview): namespaces, credential policies, and the links of a DPS or
//! hub to a namespace, written as the CLI writes them.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::pki::{Certificate, CertificateAuthority, Validity};
use crate::protocol::dps_service::{
    CertificateBodyDescription, CertificateResponse, VerificationCodeRequest,
};
use crate::protocol::{validate_dps_name, validate_hub_name};
use crate::service::{Replay, RetryPolicy, failure, http_client, retry_after, transport};
use crate::transport::Trust;

/// The ARM api-version for `Microsoft.Devices/provisioningServices` (GA, served by Azure and
/// the emulator alike).
pub(crate) const DPS_API_VERSION: &str = "2022-02-05";

/// Azure's public ARM endpoint.
pub const AZURE_ARM_ENDPOINT: &str = "https://management.azure.com";

/// A CA certificate as ARM describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct CaCertificateResource {
    /// Certificate name in the DPS.
    pub name: String,
    /// Current etag: pass it as `If-Match` to change the certificate.
    pub etag: String,
    /// Subject distinguished name.
    pub subject: String,
    /// SHA-1 thumbprint, upper-case hex.
    pub thumbprint: String,
    /// Proven by proof of possession (or declared verified on upload).
    pub is_verified: bool,
    /// Expiry as ARM writes it (RFC 1123).
    pub expiry: String,
    /// Upload time (RFC 1123).
    pub created: String,
    /// Last change (RFC 1123).
    pub updated: String,
    /// The verification code, in answers to `generateVerificationCode` only.
    pub verification_code: Option<String>,
    /// The certificate as ARM returns it (base64 DER, or PEM text).
    pub certificate: Option<String>,
}

impl CaCertificateResource {
    /// Reads ARM's `CertificateResponse` (the DPS API type both sides share).
    fn from_json(value: &Value) -> Result<Self> {
        let response = CertificateResponse::deserialize(value).map_err(|e| {
            Error::protocol_caused(
                format!("certificate response that does not read: {value}"),
                e,
            )
        })?;
        let name = response.name.ok_or_else(|| {
            Error::protocol(format!("certificate response without a name: {value}"))
        })?;
        let p = response.properties;
        Ok(CaCertificateResource {
            name,
            etag: response.etag.unwrap_or_default(),
            subject: p.subject.unwrap_or_default(),
            thumbprint: p.thumbprint.unwrap_or_default(),
            is_verified: p.is_verified.unwrap_or(false),
            expiry: p.expiry.unwrap_or_default(),
            created: p.created.unwrap_or_default(),
            updated: p.updated.unwrap_or_default(),
            verification_code: p.verification_code,
            certificate: p.certificate,
        })
    }
}

/// A DPS API body as JSON (infallible: string keys and plain members only).
fn to_json<T: serde::Serialize>(body: &T) -> Value {
    serde_json::to_value(body).unwrap_or(Value::Null)
}

/// A provisioning service (DPS) resource.
#[derive(Debug, Clone, PartialEq)]
pub struct DpsResource {
    /// Resource name.
    pub name: String,
    /// Azure region.
    pub location: String,
    /// ID scope devices present.
    pub id_scope: String,
    /// Host of the DPS service (enrollment) API.
    pub service_operations_host_name: String,
    /// Host devices dial (`global.azure-devices-provisioning.net` on Azure).
    pub device_provisioning_host_name: String,
    /// `Succeeded` once created.
    pub provisioning_state: String,
    /// Linked hubs.
    pub linked_hubs: Vec<LinkedHubDescription>,
}

/// A hub linked to a DPS, as ARM describes it (the key comes back masked).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkedHubDescription {
    /// The hub's host name.
    pub host_name: String,
    /// Region used by geo-latency allocation.
    pub location: String,
    /// Weight in hashed allocation.
    pub allocation_weight: Option<u32>,
    /// Whether the DPS's allocation policy may choose this hub.
    pub apply_allocation_policy: bool,
    /// Connection string as returned (key masked by Azure).
    pub connection_string: String,
}

/// An IoT hub resource.
#[derive(Debug, Clone, PartialEq)]
pub struct HubResource {
    /// Resource name.
    pub name: String,
    /// Azure region.
    pub location: String,
    /// Host name devices and service clients dial.
    pub host_name: String,
    /// `Succeeded` once created.
    pub provisioning_state: String,
    /// ARM `sku.name` (`S1`...).
    pub sku: String,
    /// ARM `sku.capacity`: the hub's units.
    pub units: u32,
    /// The built-in Event Hub-compatible endpoint (`properties.eventHubEndpoints.events`),
    /// where the hub's telemetry is read; `None` when ARM did not describe it.
    pub events: Option<EventHubEndpoint>,
}

/// A hub's built-in Event Hub-compatible endpoint as ARM describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventHubEndpoint {
    /// `sb://{namespace host}/`: the `Endpoint` of its connection string.
    pub endpoint: String,
    /// The event hub's name: the `EntityPath` of its connection string.
    pub path: String,
    /// Partitions (fixed at the hub's creation).
    pub partition_count: u32,
    /// Days an event is kept.
    pub retention_days: u32,
}

impl EventHubEndpoint {
    fn from_json(events: &Value) -> Option<Self> {
        let number = |field: &str| events[field].as_u64().and_then(|n| u32::try_from(n).ok());
        Some(EventHubEndpoint {
            endpoint: events["endpoint"].as_str()?.to_string(),
            path: events["path"].as_str()?.to_string(),
            partition_count: number("partitionCount")?,
            retention_days: number("retentionTimeInDays").unwrap_or(1),
        })
    }
}

/// One of a hub's quota metrics (`quotaMetrics`): `TotalMessages` (today's metered messages
/// against the daily quota) or `TotalDeviceCount` (identities against the hub's maximum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaMetric {
    /// `TotalMessages` or `TotalDeviceCount`.
    pub name: String,
    /// Used so far.
    pub current_value: u64,
    /// The quota.
    pub max_value: u64,
}

impl QuotaMetric {
    fn from_json(value: &Value) -> Result<Self> {
        let field = |key: &str| {
            value[key].as_u64().ok_or_else(|| {
                Error::protocol(format!("a quota metric without a whole \"{key}\": {value}"))
            })
        };
        Ok(QuotaMetric {
            name: value["name"]
                .as_str()
                .ok_or_else(|| Error::protocol(format!("a quota metric without a name: {value}")))?
                .to_string(),
            current_value: field("currentValue")?,
            max_value: field("maxValue")?,
        })
    }
}

/// A hub's tier and today's message meter, from ARM (Azure reports no throttle counts there:
/// those are Azure Monitor metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubQuotaUsage {
    /// ARM `sku.name`.
    pub sku: String,
    /// ARM `sku.capacity`.
    pub units: u32,
    /// Messages the hub takes a day.
    pub daily_quota: u64,
    /// Messages metered today.
    pub messages_used: u64,
    /// The block a message is metered in, for a tier dpskit knows.
    pub meter_block_bytes: Option<usize>,
    /// When the meter resets: the next 00:00 UTC, Unix seconds.
    pub resets_at: i64,
}

/// A shared access policy with its keys.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessKeys {
    /// Policy name (`provisioningserviceowner`, `iothubowner`).
    pub key_name: String,
    /// Primary key (base64).
    pub primary_key: String,
    /// Secondary key (base64).
    pub secondary_key: String,
    /// Rights, as Azure lists them.
    pub rights: String,
}

impl std::fmt::Display for AccessKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessKeys({}, <redacted>)", self.key_name)
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

impl DpsResource {
    fn from_json(value: &Value) -> Result<Self> {
        let p = &value["properties"];
        let name = value["name"]
            .as_str()
            .ok_or_else(|| Error::protocol(format!("DPS resource without a name: {value}")))?;
        let linked_hubs = p["iotHubs"]
            .as_array()
            .map(|hubs| {
                hubs.iter()
                    .map(|h| LinkedHubDescription {
                        host_name: h["name"].as_str().map(str::to_string).unwrap_or_else(|| {
                            connection_string_part(
                                h["connectionString"].as_str().unwrap_or_default(),
                                "HostName",
                            )
                            .unwrap_or_default()
                        }),
                        location: text(&h["location"]),
                        allocation_weight: h["allocationWeight"]
                            .as_u64()
                            .and_then(|w| u32::try_from(w).ok()),
                        apply_allocation_policy: h["applyAllocationPolicy"]
                            .as_bool()
                            .unwrap_or(false),
                        connection_string: text(&h["connectionString"]),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(DpsResource {
            name: name.to_string(),
            location: text(&value["location"]),
            id_scope: text(&p["idScope"]),
            service_operations_host_name: text(&p["serviceOperationsHostName"]),
            device_provisioning_host_name: text(&p["deviceProvisioningHostName"]),
            provisioning_state: text(&p["provisioningState"]),
            linked_hubs,
        })
    }
}

impl HubResource {
    fn from_json(value: &Value) -> Result<Self> {
        let name = value["name"]
            .as_str()
            .ok_or_else(|| Error::protocol(format!("IoT hub resource without a name: {value}")))?;
        Ok(HubResource {
            name: name.to_string(),
            location: text(&value["location"]),
            host_name: text(&value["properties"]["hostName"]),
            provisioning_state: text(&value["properties"]["provisioningState"]),
            sku: text(&value["sku"]["name"]),
            units: value["sku"]["capacity"]
                .as_u64()
                .and_then(|u| u32::try_from(u).ok())
                .unwrap_or(1),
            events: EventHubEndpoint::from_json(
                &value["properties"]["eventHubEndpoints"]["events"],
            ),
        })
    }
}

impl AccessKeys {
    fn from_json(value: &Value) -> Result<Self> {
        let key_name = value["keyName"]
            .as_str()
            .ok_or_else(|| Error::protocol("access keys without a keyName"))?;
        Ok(AccessKeys {
            key_name: key_name.to_string(),
            primary_key: text(&value["primaryKey"]),
            secondary_key: text(&value["secondaryKey"]),
            rights: text(&value["rights"]),
        })
    }
}

/// One `key=value` part of a connection string (key compared case-insensitively).
pub(crate) fn connection_string_part(connection_string: &str, key: &str) -> Option<String> {
    connection_string.split(';').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim().to_string())
    })
}

/// An etag as an `If-Match` value: a quoted string (RFC 9110), as the management SDKs send it;
/// ARM writes etags in bodies without the quotes.
fn quoted_etag(etag: &str) -> String {
    if etag == "*" || (etag.len() > 1 && etag.starts_with('"') && etag.ends_with('"')) {
        etag.to_string()
    } else {
        format!("\"{etag}\"")
    }
}

/// Leaves out what a DPS resource read back carries but a PUT does not take (read-only in the
/// resource provider's spec): the resource's id, name, type and system data, the SKU tier,
/// the host names and ID scope, and linked hubs' names. The management SDKs leave them out.
fn strip_read_only(resource: &mut Value) {
    if let Some(top) = resource.as_object_mut() {
        for field in ["id", "name", "type", "systemData"] {
            top.remove(field);
        }
    }
    if let Some(sku) = resource["sku"].as_object_mut() {
        sku.remove("tier");
    }
    if let Some(properties) = resource["properties"].as_object_mut() {
        for field in [
            "serviceOperationsHostName",
            "deviceProvisioningHostName",
            "idScope",
        ] {
            properties.remove(field);
        }
    }
    if let Some(hubs) = resource["properties"]["iotHubs"].as_array_mut() {
        for hub in hubs.iter_mut().filter_map(Value::as_object_mut) {
            hub.remove("name");
        }
    }
}

/// ARM's terminal states, of an operation or a resource's `provisioningState`.
fn is_terminal(state: &str) -> bool {
    ["succeeded", "failed", "canceled", "cancelled"].contains(&state.to_ascii_lowercase().as_str())
}

/// A resource's `properties.provisioningState`, when it has one.
fn provisioning_state(value: &Value) -> Option<String> {
    value["properties"]["provisioningState"]
        .as_str()
        .map(str::to_string)
}

/// `Ok` for `Succeeded`; the operation's own error (`error.code`, `error.message`, as ARM's
/// operation status and the resource provider write it) for `Failed` or `Canceled`.
fn finished(state: &str, body: &Value, what: &str) -> Result<()> {
    if state.eq_ignore_ascii_case("succeeded") {
        return Ok(());
    }
    let error = body.get("error").filter(|e| e.is_object()).unwrap_or(body);
    let code = error["code"].as_str().unwrap_or("no code");
    let message = error["message"].as_str().unwrap_or("no details");
    Err(Error::Service(Box::new(crate::error::ServiceFailure {
        status: 500,
        error_code: error["code"].as_str().and_then(|c| c.parse().ok()),
        message: format!("{what}: the operation ended {state}: {code}: {message}"),
        tracking_id: None,
        retry_after: None,
    })))
}

/// Reads an `Azure-AsyncOperation` status body: `None` once it `Succeeded`, the state while it
/// runs, the operation's error once it `Failed` or was `Canceled`. A body without a `status`
/// is a protocol error, never success.
fn operation_status(body: &Value, what: &str) -> Result<Option<String>> {
    let Some(state) = body["status"].as_str() else {
        return Err(Error::protocol(format!(
            "{what}: the operation status has no \"status\" ({body}); not taken for success"
        )));
    };
    if is_terminal(state) {
        finished(state, body, what)?;
        return Ok(None);
    }
    Ok(Some(state.to_string()))
}

/// The JSON body of a successful answer (`None` when empty).
async fn json_body(response: reqwest::Response, what: &str) -> Result<Option<Value>> {
    let text = response.text().await.map_err(|e| transport(what, e))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::protocol_caused(format!("{what}: the answer is not JSON"), e))
}

/// Where a long-running operation is watched.
#[derive(Debug)]
struct Monitor {
    async_operation: Option<String>,
    location: Option<String>,
    retry_after: Option<Duration>,
}

/// What a wait on the resource itself waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// A terminal provisioning state.
    Ready,
    /// A 404.
    Gone,
}

/// The longest a long-running operation is waited for (a hub takes minutes on Azure).
const LRO_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// The pause before poll number `polls`: ARM's `Retry-After` when it gave one (bounded, so a
/// wild value cannot stall the wait), else 1 s growing by half up to 10 s: short for the
/// emulator and quick resources, gentle on ARM's read quota for a hub's minutes.
fn poll_delay(advice: Option<Duration>, polls: u32) -> Duration {
    match advice {
        // The first poll may come at once (an operation already done); later ones not in a
        // tight loop, whatever the advice.
        Some(advice) if polls > 1 => {
            advice.clamp(Duration::from_millis(100), Duration::from_secs(60))
        }
        Some(advice) => advice.min(Duration::from_secs(60)),
        None => {
            Duration::from_secs_f64((1.5f64.powi(polls.saturating_sub(1).min(8) as i32)).min(10.0))
        }
    }
}

/// The IoT Hub resource provider's api-version for `IotHubs`.
pub(crate) const HUB_API_VERSION: &str = "2023-06-30";

/// The `Microsoft.DeviceRegistry` api-version of the certificate management preview (the one
/// with `credentials/default/policies`).
pub(crate) const REGISTRY_API_VERSION: &str = "2025-11-01-preview";
/// The DPS api-version that carries `properties.deviceRegistryNamespace`.
pub(crate) const DPS_REGISTRY_API_VERSION: &str = "2025-02-01-preview";
/// The hub api-version of the certificate management preview (`properties.deviceRegistry`).
pub(crate) const HUB_REGISTRY_API_VERSION: &str = "2025-08-01-preview";

/// An Azure Device Registry namespace, as ARM describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceResource {
    /// Resource name.
    pub name: String,
    /// ARM resource id (what a DPS or hub links to).
    pub id: String,
    /// Azure region.
    pub location: String,
    /// The namespace's `uuid`.
    pub uuid: String,
}

impl NamespaceResource {
    fn from_json(value: &Value) -> Result<Self> {
        let text = |v: &Value, what: &str| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::protocol(format!("namespace answer without {what}: {value}")))
        };
        Ok(NamespaceResource {
            name: text(&value["name"], "a name")?,
            id: text(&value["id"], "an id")?,
            location: text(&value["location"], "a location")?,
            uuid: value["properties"]["uuid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        })
    }
}

/// A namespace's credential policy, as ARM describes it: what it issues and its issuing CA.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyResource {
    /// Policy name.
    pub name: String,
    /// ARM resource id.
    pub id: String,
    /// Days an issued device certificate is valid.
    pub validity_days: u32,
    /// The CA's key type (`ECC`).
    pub key_type: String,
    /// The issuing CA's subject (read-only; `None` until ARM reports it).
    pub subject: Option<String>,
    /// The issuing CA's validity start, ISO 8601.
    pub not_before: Option<String>,
    /// The issuing CA's validity end, ISO 8601.
    pub not_after: Option<String>,
}

impl PolicyResource {
    fn from_json(value: &Value) -> Result<Self> {
        let certificate = &value["properties"]["certificate"];
        let ca = &certificate["certificateAuthorityConfiguration"];
        let text = |v: &Value| v.as_str().map(str::to_string);
        let days = certificate["leafCertificateConfiguration"]["validityPeriodInDays"]
            .as_u64()
            .and_then(|d| u32::try_from(d).ok())
            .ok_or_else(|| {
                Error::protocol(format!(
                    "policy answer without validityPeriodInDays: {value}"
                ))
            })?;
        Ok(PolicyResource {
            name: text(&value["name"])
                .ok_or_else(|| Error::protocol(format!("policy answer without a name: {value}")))?,
            id: text(&value["id"]).unwrap_or_default(),
            validity_days: days,
            key_type: text(&ca["keyType"]).unwrap_or_default(),
            subject: text(&ca["subject"]),
            not_before: text(&ca["validityNotBefore"]),
            not_after: text(&ca["validityNotAfter"]),
        })
    }
}

/// What links to a Device Registry namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceLinkTarget {
    /// A DPS instance (`properties.deviceRegistryNamespace`).
    Dps,
    /// An IoT hub (`properties.deviceRegistry`).
    Hub,
}

/// A client for one subscription and resource group.
#[derive(Clone)]
pub struct ArmClient {
    http: reqwest::Client,
    endpoint: String,
    subscription_id: String,
    resource_group: String,
    token: TokenSource,
    retry: RetryPolicy,
}

/// Where bearer tokens come from: called before each request, so it should cache (Entra
/// tokens last about an hour; azure-identity credentials cache on their own).
pub type TokenSource = std::sync::Arc<dyn Fn() -> Result<String> + Send + Sync>;

/// A token source that always gives `token` (the emulator accepts any).
pub fn static_token(token: &str) -> TokenSource {
    let token = token.to_string();
    std::sync::Arc::new(move || Ok(token.clone()))
}

impl std::fmt::Debug for ArmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmClient")
            .field("endpoint", &self.endpoint)
            .field("subscription_id", &self.subscription_id)
            .field("resource_group", &self.resource_group)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl ArmClient {
    /// A client for `endpoint` (Azure's or the emulator's) whose bearer tokens come from
    /// `token`.
    pub fn new(
        endpoint: &str,
        subscription_id: &str,
        resource_group: &str,
        token: TokenSource,
        trust: &Trust,
    ) -> Result<Self> {
        Ok(ArmClient {
            http: http_client(trust, Duration::from_secs(60))?,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            subscription_id: subscription_id.to_string(),
            resource_group: resource_group.to_string(),
            token,
            retry: RetryPolicy::default(),
        })
    }

    fn certificates_url(&self, dps: &str) -> String {
        format!("{}/certificates", self.dps_url(dps))
    }

    fn group_url(&self) -> String {
        format!(
            "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Devices",
            self.endpoint,
            crate::sas::url_encode(&self.subscription_id),
            crate::sas::url_encode(&self.resource_group),
        )
    }

    fn dps_url(&self, dps: &str) -> String {
        format!(
            "{}/provisioningServices/{}",
            self.group_url(),
            crate::sas::url_encode(dps)
        )
    }

    fn hub_url(&self, hub: &str) -> String {
        format!(
            "{}/IotHubs/{}",
            self.group_url(),
            crate::sas::url_encode(hub)
        )
    }

    /// `url` with `api-version` added.
    fn versioned(url: &str, api_version: &str) -> String {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}api-version={api_version}")
    }

    /// A URL the service handed out (an operation to watch, the next page): followed only on
    /// the endpoint's own origin, so the bearer token never goes anywhere else.
    fn same_origin(&self, link: &str, what: &str) -> Result<String> {
        let origin = |u: &str| reqwest::Url::parse(u).ok().map(|u| u.origin());
        match (origin(link), origin(&self.endpoint)) {
            (Some(a), Some(b)) if a == b => Ok(link.to_string()),
            _ => Err(Error::protocol(format!(
                "{what}: ARM pointed to {link}, which is not on {}; not following it with the \
                 bearer token",
                self.endpoint
            ))),
        }
    }

    /// Sends one request (`url` complete, api-version included) by the retry policy; a
    /// non-success answer becomes the typed error.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        if_match: Option<&str>,
        body: Option<&Value>,
        replay: Replay,
        what: &str,
    ) -> Result<reqwest::Response> {
        let accept_json = method != reqwest::Method::DELETE;
        self.send_accepting(method, url, if_match, body, replay, accept_json, what)
            .await
    }

    /// A GET (safe to repeat) of `url`, complete with its api-version.
    async fn get(&self, url: &str, what: &str) -> Result<reqwest::Response> {
        self.send(reqwest::Method::GET, url, None, None, Replay::Safe, what)
            .await
    }

    /// [`send`](Self::send), asking for JSON (`Accept: application/json`) when `accept_json`:
    /// the management SDKs ask for it when the operation's answer has a body they read (every
    /// call but a DPS or certificate delete).
    #[allow(clippy::too_many_arguments)]
    async fn send_accepting(
        &self,
        method: reqwest::Method,
        url: &str,
        if_match: Option<&str>,
        body: Option<&Value>,
        replay: Replay,
        accept_json: bool,
        what: &str,
    ) -> Result<reqwest::Response> {
        // A resource read back and PUT again (linking a hub) carries the GET's nulls: left
        // out, as the management SDKs and the CLI leave them.
        let body = body.map(|b| crate::service::omit_nulls(b.clone(), true));
        let response = self
            .retry
            .send(replay, what, || {
                let mut request = self
                    .http
                    .request(method.clone(), url)
                    .bearer_auth((self.token)()?);
                if accept_json {
                    request = request.header(reqwest::header::ACCEPT, "application/json");
                }
                if let Some(tag) = if_match {
                    request = request.header(reqwest::header::IF_MATCH, tag);
                }
                Ok(match &body {
                    Some(body) => request.json(body),
                    // ARM rejects a POST without a length.
                    None => request.header(reqwest::header::CONTENT_LENGTH, "0"),
                })
            })
            .await?;
        if !response.status().is_success() {
            return Err(failure(response, what).await);
        }
        Ok(response)
    }

    /// Sends one request with the api-version of the resource type it addresses (chosen by the
    /// caller: a URL may hold any resource group name, "IotHubs..." included). A POST acts
    /// (verification codes are single-use), so only its 429s are retried; reads say so.
    async fn call(
        &self,
        method: reqwest::Method,
        url: String,
        api_version: &str,
        if_match: Option<&str>,
        body: Option<Value>,
        what: &str,
    ) -> Result<Option<Value>> {
        let replay = if method == reqwest::Method::POST {
            Replay::ThrottledOnly
        } else {
            Replay::Safe
        };
        let url = Self::versioned(&url, api_version);
        let response = self
            .send(method, &url, if_match, body.as_ref(), replay, what)
            .await?;
        json_body(response, what).await
    }

    /// A read that must answer a JSON object, parsed by `parse` (a GET, or a POST that only
    /// reads, such as `listkeys`: both may be repeated).
    async fn object<T>(
        &self,
        method: reqwest::Method,
        url: String,
        api_version: &str,
        what: &str,
        parse: fn(&Value) -> Result<T>,
    ) -> Result<T> {
        let url = Self::versioned(&url, api_version);
        let response = self
            .send(method, &url, None, None, Replay::Safe, what)
            .await?;
        let value = json_body(response, what)
            .await?
            .ok_or_else(|| Error::protocol(format!("{what}: empty answer")))?;
        parse(&value)
    }

    /// A GET of an ARM collection (`{"value": [...], "nextLink": ...}`), every page of it, each
    /// item parsed by `parse`.
    async fn list<T>(
        &self,
        url: String,
        api_version: &str,
        what: &str,
        parse: fn(&Value) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut items = Vec::new();
        let mut next = Some(Self::versioned(&url, api_version));
        let mut seen = std::collections::HashSet::new();
        while let Some(link) = next.take() {
            if !seen.insert(link.clone()) {
                return Err(Error::protocol(format!(
                    "{what}: ARM's nextLink went back to a page already read ({link})"
                )));
            }
            let response = self.get(&link, what).await?;
            let page = json_body(response, what).await?.unwrap_or_default();
            if let Some(values) = page["value"].as_array() {
                for item in values {
                    items.push(parse(item)?);
                }
            }
            next = match page["nextLink"].as_str().filter(|l| !l.is_empty()) {
                Some(link) if link.to_ascii_lowercase().contains("api-version=") => {
                    Some(self.same_origin(link, what)?)
                }
                // The management SDKs add their api-version to a nextLink without one.
                Some(link) => Some(Self::versioned(&self.same_origin(link, what)?, api_version)),
                None => None,
            };
        }
        Ok(items)
    }

    /// A DELETE, awaited: Azure answers 202 and deletes in the background (the name stays
    /// taken meanwhile), so this returns once the operation says it is done.
    /// `answers_resource`: the resource provider answers the delete with the resource (IoT
    /// Hub does, DPS does not), so the request asks for JSON, as the management SDKs do.
    async fn delete(
        &self,
        url: String,
        api_version: &str,
        if_match: Option<&str>,
        answers_resource: bool,
        what: &str,
    ) -> Result<()> {
        let resource = Self::versioned(&url, api_version);
        let response = self
            .send_accepting(
                reqwest::Method::DELETE,
                &resource,
                if_match,
                None,
                Replay::Safe,
                answers_resource,
                what,
            )
            .await?;
        let status = response.status().as_u16();
        let monitor = self.monitor(response.headers(), what)?;
        if status == 202 || monitor.async_operation.is_some() || monitor.location.is_some() {
            self.wait(&monitor, &resource, Goal::Gone, what).await?;
        }
        Ok(())
    }

    /// Where a long-running operation can be watched, from the headers of its first answer.
    fn monitor(&self, headers: &reqwest::header::HeaderMap, what: &str) -> Result<Monitor> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(|v| self.same_origin(v, what))
                .transpose()
        };
        Ok(Monitor {
            async_operation: header("azure-asyncoperation")?,
            location: header("location")?,
            retry_after: retry_after(headers),
        })
    }

    /// Waits for a long-running operation: polls its `Azure-AsyncOperation` URL when ARM gave
    /// one (until `Succeeded`, `Failed` or `Canceled`; an answer without a status is an
    /// error, never success), else its `Location` (202 until done), else the resource itself
    /// (`resource`, api-version included) until its provisioning state is terminal, or gone
    /// for a delete. Each wait is the last answer's `Retry-After`, else a growing pause;
    /// throttled and failed polls are retried by the retry policy.
    async fn wait(&self, monitor: &Monitor, resource: &str, goal: Goal, what: &str) -> Result<()> {
        let started = std::time::Instant::now();
        let mut advice = monitor.retry_after;
        let mut polls = 0u32;
        loop {
            if started.elapsed() > LRO_DEADLINE {
                return Err(Error::timeout(format!(
                    "{what}: not finished after {} minutes",
                    LRO_DEADLINE.as_secs() / 60
                )));
            }
            polls += 1;
            tokio::time::sleep(poll_delay(advice, polls)).await;
            let (url, kind) = match (&monitor.async_operation, &monitor.location) {
                (Some(url), _) => (url.as_str(), "operation"),
                (None, Some(url)) => (url.as_str(), "location"),
                (None, None) => (resource, "resource"),
            };
            let answer = self.get(url, what).await;
            let response = match answer {
                Err(Error::Service(s)) if kind == "resource" && s.status == 404 => {
                    return match goal {
                        Goal::Gone => Ok(()),
                        Goal::Ready => Err(Error::Service(s)),
                    };
                }
                other => other?,
            };
            advice = retry_after(response.headers());
            let status = response.status().as_u16();
            let body = json_body(response, what).await?;
            let state = match kind {
                "operation" => match operation_status(&body.unwrap_or_default(), what)? {
                    Some(state) => state,
                    None => return Ok(()),
                },
                "location" if status == 202 => "InProgress".to_string(),
                "location" => return Ok(()),
                _ => {
                    let body = body.unwrap_or_default();
                    match (goal, provisioning_state(&body)) {
                        (Goal::Ready, Some(state)) if is_terminal(&state) => {
                            return finished(&state, &body, what);
                        }
                        // A resource without a provisioning state is there and done (ARM's
                        // rule for synchronous resources).
                        (Goal::Ready, None) => return Ok(()),
                        // Still there: only a failure ends the wait for it to go.
                        (Goal::Gone, Some(state))
                            if is_terminal(&state) && !state.eq_ignore_ascii_case("succeeded") =>
                        {
                            return finished(&state, &body, what);
                        }
                        (_, state) => state.unwrap_or_else(|| "Deleting".into()),
                    }
                }
            };
            log::info!(
                "{what}: {state} after {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }

    /// PUTs a resource and waits until ARM reports it done (see [`ArmClient::wait`]), then
    /// reads it back: creating a hub takes minutes on Azure.
    async fn put_and_wait(
        &self,
        url: String,
        api_version: &str,
        body: Value,
        what: &str,
    ) -> Result<Value> {
        let resource = Self::versioned(&url, api_version);
        let response = self
            .send(
                reqwest::Method::PUT,
                &resource,
                None,
                Some(&body),
                Replay::Safe,
                what,
            )
            .await?;
        let status = response.status().as_u16();
        let monitor = self.monitor(response.headers(), what)?;
        let value = json_body(response, what).await?;
        let state = value.as_ref().and_then(provisioning_state);
        let running = monitor.async_operation.is_some()
            || status == 202
            || state.as_deref().is_some_and(|s| !is_terminal(s));
        if running {
            // The PUT's own Location is only a place to poll while it answers 202.
            let monitor = if status == 202 {
                monitor
            } else {
                Monitor {
                    location: None,
                    ..monitor
                }
            };
            self.wait(&monitor, &resource, Goal::Ready, what).await?;
        }
        let value = match (running, value) {
            (false, Some(value)) => value,
            _ => {
                let response = self.get(&resource, what).await?;
                json_body(response, what)
                    .await?
                    .ok_or_else(|| Error::protocol(format!("{what}: the resource GET was empty")))?
            }
        };
        match provisioning_state(&value) {
            Some(state) if !state.eq_ignore_ascii_case("succeeded") => {
                finished(&state, &value, what)?;
                Err(Error::protocol(format!(
                    "{what}: the operation finished but the resource is {state}"
                )))
            }
            _ => Ok(value),
        }
    }

    /// Before creating `url`: `None` when nothing is there (or it was being deleted and is now
    /// gone), else the resource once it is ready. A resource being deleted still holds its
    /// name; returning it would hand out something about to vanish.
    async fn existing(&self, url: &str, api_version: &str, what: &str) -> Result<Option<Value>> {
        let resource = Self::versioned(url, api_version);
        let current = match self.get(&resource, what).await {
            Ok(response) => json_body(response, what).await?.unwrap_or_default(),
            Err(Error::Service(s)) if s.status == 404 => return Ok(None),
            Err(other) => return Err(other),
        };
        let deleting = [
            provisioning_state(&current),
            current["properties"]["state"].as_str().map(str::to_string),
        ]
        .iter()
        .flatten()
        .any(|s| s.eq_ignore_ascii_case("deleting"));
        let no_monitor = Monitor {
            async_operation: None,
            location: None,
            retry_after: None,
        };
        if deleting {
            log::info!("{what}: waiting until the resource being deleted is gone");
            self.wait(&no_monitor, &resource, Goal::Gone, what).await?;
            return Ok(None);
        }
        match provisioning_state(&current) {
            Some(state) if !is_terminal(&state) => {
                self.wait(&no_monitor, &resource, Goal::Ready, what).await?;
                let response = self.get(&resource, what).await?;
                Ok(json_body(response, what).await?)
            }
            // A failed resource is PUT again, as Azure lets one retry.
            Some(state) if !state.eq_ignore_ascii_case("succeeded") => Ok(None),
            _ => Ok(Some(current)),
        }
    }

    /// Creates a DPS instance (or returns the existing one) and waits until it is ready.
    pub async fn create_dps(&self, name: &str, location: &str) -> Result<DpsResource> {
        self.create_dps_with_presets(name, location, false).await
    }

    /// [`Self::create_dps`]; with `presets`, the `dpskit-presets` tag asks the emulator to
    /// enforce Azure's DPS rates (inert on Azure, which always does).
    pub async fn create_dps_with_presets(
        &self,
        name: &str,
        location: &str,
        presets: bool,
    ) -> Result<DpsResource> {
        validate_dps_name(name)?;
        let mut body =
            json!({"location": location, "sku": {"name": "S1", "capacity": 1}, "properties": {}});
        if presets {
            body["tags"] = json!({crate::limits::PRESETS_TAG: "on"});
        }
        let what = format!("creating provisioning service {name}");
        let url = self.dps_url(name);
        if let Some(existing) = self.existing(&url, DPS_API_VERSION, &what).await? {
            return DpsResource::from_json(&existing);
        }
        let value = self.put_and_wait(url, DPS_API_VERSION, body, &what).await?;
        DpsResource::from_json(&value)
    }

    /// One DPS instance.
    pub async fn dps(&self, name: &str) -> Result<DpsResource> {
        let what = format!("reading provisioning service {name}");
        self.object(
            reqwest::Method::GET,
            self.dps_url(name),
            DPS_API_VERSION,
            &what,
            DpsResource::from_json,
        )
        .await
    }

    /// Every DPS instance of the resource group.
    pub async fn dps_instances(&self) -> Result<Vec<DpsResource>> {
        let url = format!("{}/provisioningServices", self.group_url());
        self.list(
            url,
            DPS_API_VERSION,
            "listing provisioning services",
            DpsResource::from_json,
        )
        .await
    }

    /// Deletes a DPS instance.
    pub async fn delete_dps(&self, name: &str) -> Result<()> {
        let what = format!("deleting provisioning service {name}");
        self.delete(self.dps_url(name), DPS_API_VERSION, None, false, &what)
            .await
    }

    /// The `provisioningserviceowner` keys.
    pub async fn dps_keys(&self, name: &str) -> Result<AccessKeys> {
        let what = format!("reading the keys of provisioning service {name}");
        let url = format!(
            "{}/keys/provisioningserviceowner/listkeys",
            self.dps_url(name)
        );
        self.object(
            reqwest::Method::POST,
            url,
            DPS_API_VERSION,
            &what,
            AccessKeys::from_json,
        )
        .await
    }

    /// Creates an IoT hub (or returns the existing one) and waits until it is ready.
    pub async fn create_hub(&self, name: &str, location: &str) -> Result<HubResource> {
        self.create_hub_with_sku(name, location, None).await
    }

    /// Creates an IoT hub of a tier and size (or returns the existing one) and waits until it
    /// is ready. With a `sku` the hub is also tagged for the emulator to enforce that tier's
    /// throttles and daily quota; without one it is S1 with one unit and the emulator enforces
    /// nothing.
    pub async fn create_hub_with_sku(
        &self,
        name: &str,
        location: &str,
        sku: Option<crate::limits::HubSku>,
    ) -> Result<HubResource> {
        self.create_hub_with(name, location, sku, None).await
    }

    /// [`ArmClient::create_hub_with_sku`] with the partitions of the built-in events endpoint
    /// (`None`: Azure's default, 4), which cannot change once the hub exists.
    pub async fn create_hub_with(
        &self,
        name: &str,
        location: &str,
        sku: Option<crate::limits::HubSku>,
        partition_count: Option<u32>,
    ) -> Result<HubResource> {
        validate_hub_name(name)?;
        if let Some(count) = partition_count {
            crate::limits::check_partition_count(count)?;
        }
        let what = format!("creating IoT hub {name}");
        let url = self.hub_url(name);
        if let Some(existing) = self.existing(&url, HUB_API_VERSION, &what).await? {
            return HubResource::from_json(&existing);
        }
        let properties = match partition_count {
            Some(count) => json!({"eventHubEndpoints": {"events": {"partitionCount": count}}}),
            None => json!({}),
        };
        let body = match sku {
            Some(sku) => json!({
                "location": location,
                "sku": {"name": sku.tier.name(), "capacity": sku.units},
                "tags": {crate::limits::PRESETS_TAG: "on"},
                "properties": properties,
            }),
            None => json!({
                "location": location, "sku": {"name": "S1", "capacity": 1},
                "properties": properties,
            }),
        };
        let value = self.put_and_wait(url, HUB_API_VERSION, body, &what).await?;
        HubResource::from_json(&value)
    }

    /// One IoT hub.
    pub async fn hub(&self, name: &str) -> Result<HubResource> {
        let what = format!("reading IoT hub {name}");
        self.object(
            reqwest::Method::GET,
            self.hub_url(name),
            HUB_API_VERSION,
            &what,
            HubResource::from_json,
        )
        .await
    }

    /// Every IoT hub of the resource group.
    pub async fn hubs(&self) -> Result<Vec<HubResource>> {
        let url = format!("{}/IotHubs", self.group_url());
        self.list(
            url,
            HUB_API_VERSION,
            "listing IoT hubs",
            HubResource::from_json,
        )
        .await
    }

    /// Deletes an IoT hub.
    pub async fn delete_hub(&self, name: &str) -> Result<()> {
        let what = format!("deleting IoT hub {name}");
        self.delete(self.hub_url(name), HUB_API_VERSION, None, true, &what)
            .await
    }

    /// The hub's quota metrics: today's metered messages and its identities, each against its
    /// quota (what the portal's "Daily message limit" shows).
    pub async fn hub_quota_metrics(&self, name: &str) -> Result<Vec<QuotaMetric>> {
        let url = format!("{}/quotaMetrics", self.hub_url(name));
        self.list(
            url,
            HUB_API_VERSION,
            &format!("reading the quota metrics of IoT hub {name}"),
            QuotaMetric::from_json,
        )
        .await
    }

    /// A hub's tier and today's message meter as Azure reports them: its `sku` and the
    /// `TotalMessages` quota metric.
    pub async fn hub_usage(&self, name: &str) -> Result<HubQuotaUsage> {
        let hub = self.hub(name).await?;
        let metrics = self.hub_quota_metrics(name).await?;
        let messages = metrics
            .iter()
            .find(|m| m.name.eq_ignore_ascii_case("TotalMessages"))
            .ok_or_else(|| {
                Error::protocol(format!(
                    "the quota metrics of IoT hub {name} lack TotalMessages"
                ))
            })?;
        let tier = crate::limits::HubTier::parse(&hub.sku);
        let now = crate::clock::now();
        Ok(HubQuotaUsage {
            meter_block_bytes: tier.map(|t| t.limits().meter_block_bytes),
            sku: hub.sku,
            units: hub.units,
            daily_quota: messages.max_value,
            messages_used: messages.current_value,
            resets_at: (now.div_euclid(86_400) + 1) * 86_400,
        })
    }

    /// The consumer groups of a hub's built-in events endpoint, `$Default` first.
    pub async fn consumer_groups(&self, hub: &str) -> Result<Vec<String>> {
        let what = format!("listing the consumer groups of IoT hub {hub}");
        let url = format!(
            "{}/eventHubEndpoints/events/ConsumerGroups",
            self.hub_url(hub)
        );
        let answer = self
            .call(
                reqwest::Method::GET,
                url,
                HUB_API_VERSION,
                None,
                None,
                &what,
            )
            .await?
            .ok_or_else(|| Error::protocol(format!("{what}: no answer body")))?;
        answer["value"]
            .as_array()
            .ok_or_else(|| Error::protocol(format!("{what}: no value list")))?
            .iter()
            .map(|group| {
                group["name"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::protocol(format!("{what}: a group without a name")))
            })
            .collect()
    }

    /// Creates a consumer group on a hub's events endpoint (nothing changes if it exists).
    pub async fn create_consumer_group(&self, hub: &str, group: &str) -> Result<()> {
        crate::protocol::validate_consumer_group_name(group)?;
        let what = format!("creating consumer group {group} of IoT hub {hub}");
        let url = self.consumer_group_url(hub, group);
        let body = json!({"properties": {"name": group}});
        self.call(
            reqwest::Method::PUT,
            url,
            HUB_API_VERSION,
            None,
            Some(body),
            &what,
        )
        .await?;
        Ok(())
    }

    /// Deletes a consumer group of a hub's events endpoint.
    pub async fn delete_consumer_group(&self, hub: &str, group: &str) -> Result<()> {
        let what = format!("deleting consumer group {group} of IoT hub {hub}");
        let url = self.consumer_group_url(hub, group);
        self.delete(url, HUB_API_VERSION, None, false, &what).await
    }

    fn consumer_group_url(&self, hub: &str, group: &str) -> String {
        format!(
            "{}/eventHubEndpoints/events/ConsumerGroups/{}",
            self.hub_url(hub),
            crate::sas::url_encode(group)
        )
    }

    /// The `iothubowner` keys.
    pub async fn hub_keys(&self, name: &str) -> Result<AccessKeys> {
        self.hub_policy_keys(name, "iothubowner").await
    }

    /// The keys of one of the hub's shared access policies (`service` for the built-in
    /// events endpoint, as the portal's connection string names it).
    pub async fn hub_policy_keys(&self, name: &str, policy: &str) -> Result<AccessKeys> {
        let what = format!("reading the {policy} keys of IoT hub {name}");
        let url = format!(
            "{}/IotHubKeys/{}/listkeys",
            self.hub_url(name),
            crate::sas::url_encode(policy)
        );
        self.object(
            reqwest::Method::POST,
            url,
            HUB_API_VERSION,
            &what,
            AccessKeys::from_json,
        )
        .await
    }

    /// Links a hub to a DPS the way `az iot dps linked-hub create` does: GET the DPS, add (or
    /// replace) the hub with its `iothubowner` connection string, PUT the whole resource back.
    pub async fn link_hub(
        &self,
        dps: &str,
        hub: &str,
        allocation_weight: Option<u32>,
        apply_allocation_policy: bool,
        location: Option<&str>,
    ) -> Result<DpsResource> {
        let what = format!("linking IoT hub {hub} to {dps}");
        let hub_resource = self.hub(hub).await?;
        let keys = self.hub_keys(hub).await?;
        let mut current = self
            .call(
                reqwest::Method::GET,
                self.dps_url(dps),
                DPS_API_VERSION,
                None,
                None,
                &what,
            )
            .await?
            .ok_or_else(|| Error::protocol(format!("{what}: empty answer")))?;
        let connection_string = format!(
            "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
            hub_resource.host_name, keys.key_name, keys.primary_key
        );
        let mut hubs: Vec<Value> = current["properties"]["iotHubs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        hubs.retain(|h| {
            let host = h["name"].as_str().map(str::to_string).or_else(|| {
                connection_string_part(
                    h["connectionString"].as_str().unwrap_or_default(),
                    "HostName",
                )
            });
            !host.is_some_and(|host| host.eq_ignore_ascii_case(&hub_resource.host_name))
        });
        let mut entry = json!({
            "connectionString": connection_string,
            "location": location.unwrap_or(&hub_resource.location),
            "applyAllocationPolicy": apply_allocation_policy,
        });
        if let Some(weight) = allocation_weight {
            entry["allocationWeight"] = json!(weight);
        }
        hubs.push(entry);
        current["properties"]["iotHubs"] = Value::Array(hubs);
        strip_read_only(&mut current);
        let value = self
            .put_and_wait(self.dps_url(dps), DPS_API_VERSION, current, &what)
            .await?;
        DpsResource::from_json(&value)
    }

    async fn certificate_call(
        &self,
        method: reqwest::Method,
        url: String,
        if_match: Option<&str>,
        body: Option<Value>,
        what: &str,
    ) -> Result<CaCertificateResource> {
        let if_match = if_match.map(quoted_etag);
        // CA certificates are a DPS sub-resource: the DPS api-version.
        let value = self
            .call(
                method,
                url,
                DPS_API_VERSION,
                if_match.as_deref(),
                body,
                what,
            )
            .await?
            .ok_or_else(|| Error::protocol(format!("{what}: empty answer")))?;
        CaCertificateResource::from_json(&value)
    }

    /// Uploads (or, with the current `etag`, replaces) a CA certificate as PEM text, the way
    /// `az iot dps certificate create` sends it.
    pub async fn upload_ca_certificate(
        &self,
        dps: &str,
        name: &str,
        certificate: &Certificate,
        verified: bool,
        etag: Option<&str>,
    ) -> Result<CaCertificateResource> {
        let url = format!(
            "{}/{}",
            self.certificates_url(dps),
            crate::sas::url_encode(name)
        );
        // PEM text, trailing white space trimmed: what the Azure CLI's IoT extension sends for a
        // .pem file (`open_certificate` decodes the file as UTF-8 and only base64-encodes a
        // binary .cer), and what the API describes ("base-64 of the .cer file or just .pem
        // file content"). Sending base64 of the DER would also pass; PEM matches the CLI.
        let body = CertificateBodyDescription::new(certificate.pem().trim_end().into(), verified);
        self.certificate_call(
            reqwest::Method::PUT,
            url,
            etag,
            Some(to_json(&body)),
            &format!("uploading CA certificate {name}"),
        )
        .await
    }

    /// One CA certificate.
    pub async fn ca_certificate(&self, dps: &str, name: &str) -> Result<CaCertificateResource> {
        let url = format!(
            "{}/{}",
            self.certificates_url(dps),
            crate::sas::url_encode(name)
        );
        self.certificate_call(
            reqwest::Method::GET,
            url,
            None,
            None,
            &format!("reading CA certificate {name}"),
        )
        .await
    }

    /// Every CA certificate of the DPS.
    pub async fn ca_certificates(&self, dps: &str) -> Result<Vec<CaCertificateResource>> {
        let what = format!("listing the CA certificates of {dps}");
        self.list(
            self.certificates_url(dps),
            DPS_API_VERSION,
            &what,
            CaCertificateResource::from_json,
        )
        .await
    }

    /// Deletes a CA certificate (ARM requires its current etag).
    pub async fn delete_ca_certificate(&self, dps: &str, name: &str, etag: &str) -> Result<()> {
        let url = format!(
            "{}/{}",
            self.certificates_url(dps),
            crate::sas::url_encode(name)
        );
        self.delete(
            url,
            DPS_API_VERSION,
            Some(&quoted_etag(etag)),
            false,
            &format!("deleting CA certificate {name}"),
        )
        .await
    }

    /// Asks for a verification code; the certificate's etag changes with it.
    pub async fn generate_verification_code(
        &self,
        dps: &str,
        name: &str,
        etag: &str,
    ) -> Result<CaCertificateResource> {
        let url = format!(
            "{}/{}/generateVerificationCode",
            self.certificates_url(dps),
            crate::sas::url_encode(name)
        );
        let resource = self
            .certificate_call(
                reqwest::Method::POST,
                url,
                Some(etag),
                None,
                &format!("generating a verification code for {name}"),
            )
            .await?;
        if resource.verification_code.is_none() {
            return Err(Error::protocol(format!(
                "generating a verification code for {name}: the answer carries no code"
            )));
        }
        Ok(resource)
    }

    /// Sends the verification certificate (CN = the code, signed by the CA's key).
    pub async fn verify_certificate(
        &self,
        dps: &str,
        name: &str,
        etag: &str,
        verification: &Certificate,
    ) -> Result<CaCertificateResource> {
        let url = format!(
            "{}/{}/verify",
            self.certificates_url(dps),
            crate::sas::url_encode(name)
        );
        let body = to_json(&VerificationCodeRequest {
            certificate: verification.pem().trim_end().into(),
        });
        self.certificate_call(
            reqwest::Method::POST,
            url,
            Some(etag),
            Some(body),
            &format!("verifying CA certificate {name}"),
        )
        .await
        .map_err(|e| match e {
            Error::Service(mut s) if s.status == 400 => {
                s.message.push_str(
                    " | What to do: sign a verification certificate whose subject CN is the code \
                     from the latest generateVerificationCode with the private key of the CA you \
                     uploaded (dpskit: authority.create_verification_certificate(code)), and send \
                     it with the certificate's current etag. Codes are single-use: after a failed \
                     or successful verify, generate a new one.",
                );
                Error::Service(s)
            }
            other => other,
        })
    }

    /// Proof of possession in one call: uploads the CA certificate when it is not there yet,
    /// asks for a code, signs a verification certificate with `authority`, and verifies it.
    ///
    /// A name that already holds a different certificate is Azure's to refuse: the upload goes
    /// without `If-Match`, which Azure requires to replace a certificate, so the answer is its
    /// 412 (never a silent replacement; `upload_ca_certificate` with the etag replaces).
    pub async fn prove_possession(
        &self,
        dps: &str,
        name: &str,
        authority: &CertificateAuthority,
    ) -> Result<CaCertificateResource> {
        let certificate = authority.credential().certificate();
        let held = match self.ca_certificate(dps, name).await {
            Ok(existing)
                if existing
                    .thumbprint
                    .eq_ignore_ascii_case(&certificate.info().thumbprint_sha1) =>
            {
                Ok(existing)
            }
            Ok(existing) => Err(Some(existing.thumbprint)),
            Err(Error::Service(s)) if s.status == 404 => Err(None),
            Err(other) => return Err(other),
        };
        let current = match held {
            Ok(existing) => existing,
            Err(held) => self
                .upload_ca_certificate(dps, name, certificate, false, None)
                .await
                .map_err(|e| match (e, held) {
                    (Error::Service(mut s), Some(thumbprint)) if s.status == 412 => {
                        s.message.push_str(&format!(
                            " | What to do: DPS {dps} already holds a different certificate \
                             named {name} (thumbprint {thumbprint}); delete it, choose another \
                             name, or replace it with upload_ca_certificate."
                        ));
                        Error::Service(s)
                    }
                    (other, _) => other,
                })?,
        };
        if current.is_verified {
            return Ok(current);
        }
        let coded = self
            .generate_verification_code(dps, name, &current.etag)
            .await?;
        let code = coded.verification_code.as_deref().unwrap_or_default();
        let verification =
            authority.create_verification_certificate(code, Validity::days(1, None)?)?;
        self.verify_certificate(dps, name, &coded.etag, &verification)
            .await
    }

    // ---- Azure Device Registry ------------------------------------------------------------

    fn registry_url(&self) -> String {
        format!(
            "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.DeviceRegistry/namespaces",
            self.endpoint,
            crate::sas::url_encode(&self.subscription_id),
            crate::sas::url_encode(&self.resource_group),
        )
    }

    fn namespace_url(&self, namespace: &str) -> String {
        format!(
            "{}/{}",
            self.registry_url(),
            crate::sas::url_encode(namespace)
        )
    }

    fn policy_url(&self, namespace: &str, policy: &str) -> String {
        format!(
            "{}/credentials/default/policies/{}",
            self.namespace_url(namespace),
            crate::sas::url_encode(policy)
        )
    }

    /// Creates a Device Registry namespace with a system-assigned identity (or returns the
    /// existing one) and waits until it is ready; `az iot adr ns create` sends the same.
    pub async fn create_device_registry_namespace(
        &self,
        name: &str,
        location: &str,
    ) -> Result<NamespaceResource> {
        crate::protocol::validate_namespace_name(name)?;
        let what = format!("creating Device Registry namespace {name}");
        let url = self.namespace_url(name);
        if let Some(existing) = self.existing(&url, REGISTRY_API_VERSION, &what).await? {
            return NamespaceResource::from_json(&existing);
        }
        let body = json!({
            "location": location,
            "identity": {"type": "SystemAssigned"},
            "properties": {},
        });
        let value = self
            .put_and_wait(url, REGISTRY_API_VERSION, body, &what)
            .await?;
        NamespaceResource::from_json(&value)
    }

    /// One Device Registry namespace.
    pub async fn device_registry_namespace(&self, name: &str) -> Result<NamespaceResource> {
        let what = format!("reading Device Registry namespace {name}");
        self.object(
            reqwest::Method::GET,
            self.namespace_url(name),
            REGISTRY_API_VERSION,
            &what,
            NamespaceResource::from_json,
        )
        .await
    }

    /// Every Device Registry namespace of the resource group.
    pub async fn device_registry_namespaces(&self) -> Result<Vec<NamespaceResource>> {
        self.list(
            self.registry_url(),
            REGISTRY_API_VERSION,
            "listing Device Registry namespaces",
            NamespaceResource::from_json,
        )
        .await
    }

    /// Deletes a Device Registry namespace.
    pub async fn delete_device_registry_namespace(&self, name: &str) -> Result<()> {
        let what = format!("deleting Device Registry namespace {name}");
        self.delete(
            self.namespace_url(name),
            REGISTRY_API_VERSION,
            None,
            false,
            &what,
        )
        .await
    }

    /// Creates (or updates the validity of) a credential policy of a namespace: its issuing
    /// CA has `key_type` (`ECC`), the device certificates it issues are valid
    /// `validity_days` (7 to 90, refused before sending otherwise).
    pub async fn create_credential_policy(
        &self,
        namespace: &str,
        name: &str,
        validity_days: u32,
        key_type: &str,
    ) -> Result<PolicyResource> {
        crate::protocol::validate_policy_name(name)?;
        crate::limits::check_credential_policy(validity_days, key_type)?;
        let what = format!("creating credential policy {name} in {namespace}");
        let namespace_resource = self.device_registry_namespace(namespace).await?;
        let body = json!({
            "location": namespace_resource.location,
            "properties": {"certificate": {
                "certificateAuthorityConfiguration": {"keyType": key_type},
                "leafCertificateConfiguration": {"validityPeriodInDays": validity_days},
            }},
        });
        let value = self
            .put_and_wait(
                self.policy_url(namespace, name),
                REGISTRY_API_VERSION,
                body,
                &what,
            )
            .await?;
        PolicyResource::from_json(&value)
    }

    /// One credential policy of a namespace.
    pub async fn credential_policy(&self, namespace: &str, name: &str) -> Result<PolicyResource> {
        let what = format!("reading credential policy {name} of {namespace}");
        self.object(
            reqwest::Method::GET,
            self.policy_url(namespace, name),
            REGISTRY_API_VERSION,
            &what,
            PolicyResource::from_json,
        )
        .await
    }

    /// Every credential policy of a namespace.
    pub async fn credential_policies(&self, namespace: &str) -> Result<Vec<PolicyResource>> {
        let url = format!(
            "{}/credentials/default/policies",
            self.namespace_url(namespace)
        );
        self.list(
            url,
            REGISTRY_API_VERSION,
            "listing credential policies",
            PolicyResource::from_json,
        )
        .await
    }

    /// Links a DPS or hub to a namespace as the CLI's `--ns-resource-id` does: GET the
    /// resource, set its Device Registry property to the namespace's id (with the system-
    /// assigned identity), PUT it back and wait. Then asks the namespace's credential to sync
    /// its issuing CAs to linked hubs (the emulator trusts them at link time already).
    pub async fn link_namespace(
        &self,
        target: NamespaceLinkTarget,
        name: &str,
        namespace: &str,
    ) -> Result<()> {
        let what = format!("linking {name} to Device Registry namespace {namespace}");
        let namespace_id = self.device_registry_namespace(namespace).await?.id;
        let (url, api_version) = match target {
            NamespaceLinkTarget::Dps => (self.dps_url(name), DPS_REGISTRY_API_VERSION),
            NamespaceLinkTarget::Hub => (self.hub_url(name), HUB_REGISTRY_API_VERSION),
        };
        let mut current = self
            .call(
                reqwest::Method::GET,
                url.clone(),
                api_version,
                None,
                None,
                &what,
            )
            .await?
            .ok_or_else(|| Error::protocol(format!("{what}: empty answer")))?;
        match target {
            NamespaceLinkTarget::Dps => {
                current["properties"]["deviceRegistryNamespace"] = json!({
                    "resourceId": namespace_id,
                    "authenticationType": "SystemAssigned",
                });
            }
            NamespaceLinkTarget::Hub => {
                current["properties"]["deviceRegistry"] = json!({
                    "namespaceResourceId": namespace_id,
                });
            }
        }
        strip_read_only(&mut current);
        self.put_and_wait(url, api_version, current, &what).await?;
        if target == NamespaceLinkTarget::Hub {
            self.synchronize_credentials(namespace).await?;
        }
        Ok(())
    }

    /// Pushes a namespace's issuing CAs to its linked hubs (`az iot adr ns credential sync`).
    /// The action's path is UNCONFIRMED: the likely one, `.../credentials/default/synchronize`.
    pub async fn synchronize_credentials(&self, namespace: &str) -> Result<()> {
        let what = format!("synchronizing the credentials of {namespace}");
        let url = format!(
            "{}/credentials/default/synchronize",
            self.namespace_url(namespace)
        );
        self.call(
            reqwest::Method::POST,
            url,
            REGISTRY_API_VERSION,
            None,
            None,
            &what,
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    //! ARM answers as Azure writes them (examples recorded in the wire-protocol notes), field
    //! for field: every field the client reads is checked.

    use super::*;

    #[test]
    fn hub_and_dps_names_follow_azures_rules() {
        for good in ["abc", "my-hub-1", "-lead", "A1B2", &"h".repeat(50)] {
            validate_hub_name(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "ab",
            "my_hub",
            "my.hub",
            "hub-",
            "with space",
            "hüb",
            &"h".repeat(51),
        ] {
            let error = validate_hub_name(bad).unwrap_err();
            assert!(matches!(error, Error::Config(_)), "{bad}: {error:?}");
        }
        validate_dps_name(&"d".repeat(64)).unwrap();
        validate_dps_name("my-dps-1").unwrap();
        for bad in ["dp", "my_dps", "my.dps", "dps-", &"d".repeat(65)] {
            assert!(validate_dps_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arm_bodies_leave_nulls_out_at_every_depth() {
        let read_back = json!({
            "name": "dps",
            "etag": null,
            "properties": {"iotHubs": [{"connectionString": "c", "allocationWeight": null}], "state": null},
            "tags": {},
        });
        assert_eq!(
            crate::service::omit_nulls(read_back.clone(), true),
            json!({"name": "dps", "properties": {"iotHubs": [{"connectionString": "c"}]}, "tags": {}})
        );
        // Shallow: nested nulls stay (an enrollment's initial twin may carry them).
        assert_eq!(
            crate::service::omit_nulls(json!({"a": null, "b": {"c": null}}), false),
            json!({"b": {"c": null}})
        );
    }

    #[test]
    fn operation_status_needs_a_terminal_status_to_succeed() {
        let read = |body: Value| operation_status(&body, "creating IoT hub h");
        assert_eq!(read(json!({"status": "Succeeded"})).unwrap(), None);
        assert_eq!(
            read(json!({"status": "Running"})).unwrap().as_deref(),
            Some("Running")
        );
        assert_eq!(
            read(json!({"status": "InProgress", "startTime": "2026-01-01T00:00:00Z"}))
                .unwrap()
                .as_deref(),
            Some("InProgress")
        );
        // No status, or an empty body: never success.
        for body in [
            json!({}),
            json!({"properties": {}}),
            Value::Null,
            json!({"status": 3}),
        ] {
            let error = read(body.clone()).unwrap_err();
            assert!(matches!(error, Error::Protocol(_)), "{body}: {error:?}");
        }
        // A failure carries the operation's own error.
        let failed = read(json!({
            "status": "Failed",
            "error": {"code": "IotHubNameNotAvailable", "message": "The name is taken."}
        }))
        .unwrap_err();
        let text = failed.to_string();
        assert!(
            text.contains("Failed")
                && text.contains("IotHubNameNotAvailable")
                && text.contains("The name is taken."),
            "{text}"
        );
        assert!(read(json!({"status": "Canceled"})).is_err());
        assert_eq!(poll_delay(Some(Duration::ZERO), 1), Duration::ZERO);
        assert_eq!(
            poll_delay(Some(Duration::ZERO), 2),
            Duration::from_millis(100)
        );
        assert_eq!(
            poll_delay(Some(Duration::from_secs(600)), 1),
            Duration::from_secs(60)
        );
        assert_eq!(poll_delay(None, 1), Duration::from_secs(1));
        assert_eq!(poll_delay(None, 50), Duration::from_secs(10));
    }

    #[test]
    fn a_dps_written_back_leaves_read_only_fields_out_and_etags_are_quoted() {
        let mut read_back = json!({
            "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Devices/provisioningServices/d",
            "name": "d", "type": "Microsoft.Devices/provisioningServices", "etag": "AAAA=",
            "location": "westeurope", "sku": {"name": "S1", "tier": "Standard", "capacity": 1},
            "properties": {"idScope": "0ne0", "serviceOperationsHostName": "d.azure-devices-provisioning.net",
                "deviceProvisioningHostName": "global.azure-devices-provisioning.net", "state": "Active",
                "iotHubs": [{"name": "h.azure-devices.net", "connectionString": "c", "location": "westeurope"}]},
        });
        strip_read_only(&mut read_back);
        assert_eq!(
            read_back,
            json!({"etag": "AAAA=", "location": "westeurope", "sku": {"name": "S1", "capacity": 1},
                "properties": {"state": "Active", "iotHubs": [{"connectionString": "c", "location": "westeurope"}]}})
        );
        assert_eq!(quoted_etag("AAAA="), "\"AAAA=\"");
        assert_eq!(quoted_etag("\"AAAA=\""), "\"AAAA=\"");
        assert_eq!(quoted_etag("*"), "*");
    }

    #[test]
    fn certificate_response_from_azure() {
        let value: Value = serde_json::from_str(
            r#"{"name":"cert","type":"Microsoft.Devices/ProvisioningServices/Certificates","etag":"AAAAAAExpNs=","id":"/subscriptions/91d12660-3dec-467a-be2a-213b5544ddc0/resourceGroups/myResourceGroup/providers/Microsoft.Devices/ProvisioningServices/myFirstProvisioningService/certificates/cert","properties":{"subject":"CN=testdevice1","expiry":"Sat, 31 Dec 2039 23:59:59 GMT","thumbprint":"97388663832D0393C9246CAB4FBA2C8677185A25","isVerified":false,"certificate":"MA==","created":"Thu, 12 Oct 2017 19:23:50 GMT","updated":"Thu, 12 Oct 2017 19:23:50 GMT"}}"#,
        )
        .unwrap();
        let c = CaCertificateResource::from_json(&value).unwrap();
        assert_eq!(c.name, "cert");
        assert_eq!(c.etag, "AAAAAAExpNs=");
        assert_eq!(c.subject, "CN=testdevice1");
        assert_eq!(c.thumbprint, "97388663832D0393C9246CAB4FBA2C8677185A25");
        assert!(!c.is_verified);
        assert_eq!(c.expiry, "Sat, 31 Dec 2039 23:59:59 GMT");
        assert_eq!(c.created, "Thu, 12 Oct 2017 19:23:50 GMT");
        assert_eq!(c.updated, "Thu, 12 Oct 2017 19:23:50 GMT");
        assert_eq!(c.certificate.as_deref(), Some("MA=="));
        assert_eq!(c.verification_code, None);
    }

    #[test]
    fn verification_code_response_from_azure() {
        let value: Value = serde_json::from_str(
            r#"{"name":"cert","etag":"AAAAAAExpTQ=","id":"/subscriptions/91d12660-3dec-467a-be2a-213b5544ddc0/resourceGroups/myResourceGroup/providers/Microsoft.Devices/ProvisioningServices/myFirstProvisioningService/certificates/cert","type":"Microsoft.Devices/ProvisioningServices/Certificates","properties":{"verificationCode":"106A5SD242AF512B3498BD6098C4941E66R34H268DDB3288","subject":"CN=andbucdevice1","expiry":"Sun, 31 Dec 2039 23:59:59 GMT","thumbprint":"5AB7D0BE00A1FEAA9BF7A1D6A64A7E0C5F43F9B1","isVerified":false,"created":"Thu, 12 Oct 2017 19:23:50 GMT","updated":"Thu, 12 Oct 2017 19:26:56 GMT"}}"#,
        )
        .unwrap();
        let c = CaCertificateResource::from_json(&value).unwrap();
        assert_eq!(
            c.verification_code.as_deref(),
            Some("106A5SD242AF512B3498BD6098C4941E66R34H268DDB3288")
        );
        assert_eq!(c.etag, "AAAAAAExpTQ=");
        assert_eq!(c.certificate, None);
    }

    #[test]
    fn provisioning_service_from_azure() {
        let value: Value = serde_json::from_str(
            r#"{"etag":"AAAAAAFD6M4=","id":"/subscriptions/91d12660-3dec-467a-be2a-213b5544ddc0/resourceGroups/myResourceGroup/providers/Microsoft.Devices/ProvisioningServices/myFirstProvisioningService","location":"eastus","name":"myFirstProvisioningService","type":"Microsoft.Devices/ProvisioningServices","tags":{},"sku":{"name":"S1","tier":"Standard","capacity":1},"properties":{"state":"Active","provisioningState":"Succeeded","iotHubs":[{"connectionString":"HostName=myhub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=****","location":"eastus","allocationWeight":null,"applyAllocationPolicy":true,"name":"myhub.azure-devices.net"}],"allocationPolicy":"Hashed","serviceOperationsHostName":"myFirstProvisioningService.azure-devices-provisioning.net","deviceProvisioningHostName":"global.azure-devices-provisioning.net","idScope":"0ne00000012","authorizationPolicies":[],"enableDataResidency":false}}"#,
        )
        .unwrap();
        let d = DpsResource::from_json(&value).unwrap();
        assert_eq!(d.name, "myFirstProvisioningService");
        assert_eq!(d.location, "eastus");
        assert_eq!(d.id_scope, "0ne00000012");
        assert_eq!(
            d.service_operations_host_name,
            "myFirstProvisioningService.azure-devices-provisioning.net"
        );
        assert_eq!(
            d.device_provisioning_host_name,
            "global.azure-devices-provisioning.net"
        );
        assert_eq!(d.provisioning_state, "Succeeded");
        let [link] = &d.linked_hubs[..] else {
            panic!("{:?}", d.linked_hubs)
        };
        assert_eq!(link.host_name, "myhub.azure-devices.net");
        assert_eq!(link.location, "eastus");
        assert_eq!(link.allocation_weight, None);
        assert!(link.apply_allocation_policy);
        assert!(link.connection_string.ends_with("SharedAccessKey=****"));
        // A link written without its name: the host comes from the connection string.
        let bare: Value = serde_json::from_str(
            r#"{"name":"d","properties":{"iotHubs":[{"connectionString":"HostName=h.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=****","location":"westus"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            DpsResource::from_json(&bare).unwrap().linked_hubs[0].host_name,
            "h.azure-devices.net"
        );
    }

    #[test]
    fn iot_hub_and_keys_from_azure() {
        let hub: Value = serde_json::from_str(
            r#"{"id":"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Devices/IotHubs/myhub","name":"myhub","type":"Microsoft.Devices/IotHubs","location":"eastus","etag":"AAAAAAFD6M4=","sku":{"name":"S1","tier":"Standard","capacity":1},"properties":{"state":"Active","provisioningState":"Succeeded","hostName":"myhub.azure-devices.net"}}"#,
        )
        .unwrap();
        let h = HubResource::from_json(&hub).unwrap();
        assert_eq!(
            (h.name.as_str(), h.host_name.as_str(), h.location.as_str()),
            ("myhub", "myhub.azure-devices.net", "eastus")
        );
        assert_eq!(h.provisioning_state, "Succeeded");
        // Not described: not made up.
        assert_eq!(h.events, None);
        // The events endpoint as Azure's IotHubResource_Get example shows it.
        let described: Value = serde_json::from_str(
            r#"{"name":"testHub","properties":{"hostName":"iot-dps-cit-hub-1.azure-devices.net","eventHubEndpoints":{"events":{"retentionTimeInDays":1,"partitionCount":2,"partitionIds":["0","1"],"path":"iot-dps-cit-hub-1","endpoint":"sb://iothub-ns-iot-dps-ci-245306-76aca8e13b.servicebus.windows.net/"}}}}"#,
        )
        .unwrap();
        assert_eq!(
            HubResource::from_json(&described).unwrap().events,
            Some(EventHubEndpoint {
                endpoint: "sb://iothub-ns-iot-dps-ci-245306-76aca8e13b.servicebus.windows.net/"
                    .into(),
                path: "iot-dps-cit-hub-1".into(),
                partition_count: 2,
                retention_days: 1,
            })
        );
        let keys: Value = serde_json::from_str(
            r#"{"keyName":"provisioningserviceowner","primaryKey":"cHJpbWFyeS1rZXktb2YtMzItYnl0ZXMtLS0tLS0tLS0=","secondaryKey":"c2Vjb25kYXJ5LWtleS1vZi0zMi1ieXRlcy0tLS0tLS0=","rights":"ServiceConfig, DeviceConnect, EnrollmentWrite"}"#,
        )
        .unwrap();
        let k = AccessKeys::from_json(&keys).unwrap();
        assert_eq!(k.key_name, "provisioningserviceowner");
        assert_eq!(k.rights, "ServiceConfig, DeviceConnect, EnrollmentWrite");
        assert_eq!(
            k.primary_key,
            "cHJpbWFyeS1rZXktb2YtMzItYnl0ZXMtLS0tLS0tLS0="
        );
        assert_eq!(
            k.secondary_key,
            "c2Vjb25kYXJ5LWtleS1vZi0zMi1ieXRlcy0tLS0tLS0="
        );
    }
}
