//! Azure Resource Manager under `/subscriptions/{sub}/resourceGroups/{rg}/providers/
//! Microsoft.Devices/`: provisioning services (with linked hubs and keys), IoT hubs, and a DPS's
//! CA certificates with proof of possession. Shapes follow the resource provider's swagger and
//! what the management SDK and the CLI parse (RFC 1123 dates, capitalised allocation policies,
//! masked linked-hub keys that a client may write back). Azure's checks come first: each
//! resource type's own api-versions, and hub and DPS names by Azure's naming rules. Hub and DPS
//! writes are long-running operations (`operations.rs`) and their lists are paged with
//! `nextLink`, as Azure's are. A hub's `sku` is kept as PUT (S1, one unit, when never given);
//! the `dpskit-presets` tag makes the hub enforce that tier's quotas.
//!
//! Under `.../providers/Microsoft.DeviceRegistry/namespaces`: Azure Device Registry's
//! certificate management preview (api-version 2025-11-01-preview): namespaces, their one
//! credential `default` and its policies (`emulator::device_registry` holds the CAs). A DPS or
//! hub PUT (or PATCH) naming a namespace links it.

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::operations::{Action, Kind, Phase};
use super::{Reply, RestContext, arm_error, arm_top_error, from_error, http_date};
use crate::emulator::Cloud;
use crate::emulator::device_registry::{LinkedKind, NamespaceRecord, PolicyRecord};
use crate::emulator::model::{CaCertificate, DpsRecord, HubRecord, SharedAccessPolicy};
use crate::error::Error;
use crate::pki::Certificate;
use crate::protocol::dps_service::{
    CERTIFICATE_RESOURCE_TYPE, CertificateBodyDescription, CertificateProperties,
    CertificateResponse, VerificationCodeRequest,
};

/// What a linked hub's key looks like in a GET; written back, it means "keep the stored key".
const MASKED_KEY: &str = "****";

/// The `Microsoft.Devices/provisioningServices` api-versions ARM serves (the resource
/// provider's published specs, newest last).
const DPS_API_VERSIONS: &[&str] = &[
    "2017-08-21-preview",
    "2017-11-15",
    "2018-01-22",
    "2020-01-01",
    "2020-03-01",
    "2020-09-01-preview",
    "2021-10-15",
    "2022-02-05",
    "2022-12-12",
    "2023-03-01-preview",
    "2025-02-01-preview",
    // The default of azure-mgmt-iothubprovisioningservices 2.1.
    "2026-11-01",
];

/// The `Microsoft.Devices/IotHubs` api-versions ARM serves (newest last).
const HUB_API_VERSIONS: &[&str] = &[
    "2016-02-03",
    "2017-01-19",
    "2017-07-01",
    "2018-01-22",
    "2018-04-01",
    "2018-12-01-preview",
    "2019-03-22",
    "2019-03-22-preview",
    "2019-07-01-preview",
    "2019-11-04",
    "2020-03-01",
    "2020-04-01",
    "2020-06-15",
    "2020-07-10-preview",
    "2020-08-01",
    "2020-08-31",
    "2020-08-31-preview",
    "2021-02-01-preview",
    "2021-03-03-preview",
    "2021-03-31",
    "2021-07-01",
    "2021-07-01-preview",
    "2021-07-02",
    "2021-07-02-preview",
    "2022-04-30-preview",
    "2022-11-15-preview",
    "2023-06-30",
    "2023-06-30-preview",
    "2025-08-01-preview",
];

/// ARM's answer to an api-version the resource type does not have: 400
/// `NoRegisteredProviderFound` from ARM itself. Versions newer than the newest listed are let
/// through: they may have been published after this list was written.
fn check_api_version(kind: &str, known: &[&str], api_version: &str) -> Option<Reply> {
    let newest = known.last().copied().unwrap_or_default();
    let dated = api_version.len() >= 10
        && api_version.chars().take(10).enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    if known.iter().any(|v| v.eq_ignore_ascii_case(api_version)) || (dated && api_version > newest)
    {
        return None;
    }
    Some(arm_top_error(
        400,
        "NoRegisteredProviderFound",
        &format!(
            "No registered resource provider found for location 'global' and API version \
             '{api_version}' for type '{kind}'. The supported api-versions are '{}'.",
            known.join(", ")
        ),
    ))
}

/// Azure's resource provider refusing a name that breaks its naming rule (400).
fn invalid_name(error: &Error) -> Reply {
    arm_error(400, "InvalidResourceName", &error.to_string())
}

/// One ARM request, authenticated.
pub(super) struct ArmRequest<'a> {
    pub(super) method: &'a Method,
    /// The whole path split on `/`, percent-decoded.
    pub(super) segments: &'a [&'a str],
    /// The raw query string.
    pub(super) query: &'a str,
    pub(super) api_version: &'a str,
    pub(super) body: &'a [u8],
    pub(super) if_match: Option<&'a str>,
    /// `https://{host}` as the client reached the listener: the base of the URLs handed out.
    pub(super) base_url: String,
}

impl ArmRequest<'_> {
    /// A query parameter, percent-decoded (key compared case-insensitively).
    fn query_value(&self, key: &str) -> Option<String> {
        crate::protocol::query_pairs(self.query).find_map(|(k, v)| {
            let k = crate::sas::url_decode(k).unwrap_or_else(|_| k.to_string());
            k.eq_ignore_ascii_case(key)
                .then(|| crate::sas::url_decode(v).unwrap_or_else(|_| v.to_string()))
        })
    }
}

/// Serves one ARM request.
pub(super) fn handle(request: &ArmRequest<'_>, context: &RestContext) -> Reply {
    let segments = request.segments;
    let is = |i: usize, name: &str| {
        segments
            .get(i)
            .is_some_and(|s| s.eq_ignore_ascii_case(name))
    };
    // IoT Hub watches its operations under the region:
    // /subscriptions/{sub}/providers/Microsoft.Devices/locations/{region}/operationResults/{id}
    if segments.len() == 8
        && is(2, "providers")
        && is(3, "Microsoft.Devices")
        && is(4, "locations")
        && is(6, "operationResults")
    {
        return operation_result(request, segments[7], Kind::Hub, context);
    }
    if segments.len() >= 7
        && is(2, "resourceGroups")
        && is(4, "providers")
        && is(5, "Microsoft.DeviceRegistry")
    {
        return device_registry(request, context);
    }
    let shaped = segments.len() >= 7
        && is(2, "resourceGroups")
        && is(4, "providers")
        && is(5, "Microsoft.Devices");
    if !shaped {
        return arm_error(
            404,
            "InvalidResourceType",
            &format!("the emulator does not serve /{}", segments.join("/")),
        );
    }
    let group_base = format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Devices",
        segments[1], segments[3]
    );
    let rest = &segments[7..];
    let versions = if is(6, "provisioningServices") {
        Some(("provisioningServices", DPS_API_VERSIONS))
    } else if is(6, "IotHubs") {
        Some(("IotHubs", HUB_API_VERSIONS))
    } else {
        None
    };
    if let Some((kind, known)) = versions
        && let Some(refusal) = check_api_version(kind, known, request.api_version)
    {
        return refusal;
    }
    let outcome = if is(6, "provisioningServices") {
        provisioning_services(request, &group_base, segments[3], rest, context)
    } else if is(6, "IotHubs") {
        iot_hubs(request, &group_base, segments[3], rest, context)
    } else {
        Ok(arm_error(
            404,
            "InvalidResourceType",
            &format!("the emulator does not serve resource type {}", segments[6]),
        ))
    };
    outcome.unwrap_or_else(|e| from_error(&e))
}

// ---- long-running operations and paging ---------------------------------------------------

/// The URL of operation `id`'s result (the `Location` a client polls; with `&asyncinfo` the
/// `Azure-AsyncOperation` status), where Azure puts it: under the region for a hub (as IoT
/// Hub's recorded answers show), under the resource for a DPS (the provider's
/// `operationresults` path, which the management SDK's `get_operation_result` reads).
fn operation_url(
    request: &ArmRequest<'_>,
    kind: Kind,
    id: &str,
    name: &str,
    location: &str,
) -> String {
    let encode = crate::sas::url_encode;
    let subscription = encode(request.segments.get(1).copied().unwrap_or_default());
    let version = encode(request.api_version);
    match kind {
        Kind::Hub => format!(
            "{}/subscriptions/{subscription}/providers/Microsoft.Devices/locations/{}/operationResults/{id}?api-version={version}&operationSource=other",
            request.base_url,
            encode(location),
        ),
        Kind::Dps => format!(
            "{}/subscriptions/{subscription}/resourceGroups/{}/providers/Microsoft.Devices/provisioningServices/{}/operationresults/{id}?api-version={version}",
            request.base_url,
            encode(request.segments.get(3).copied().unwrap_or_default()),
            encode(name),
        ),
    }
}

/// `Retry-After` for an operation with `remaining` to run: whole seconds, rounded up.
fn retry_after(remaining: std::time::Duration) -> String {
    remaining.as_secs_f64().ceil().to_string()
}

/// `reply` with the headers of operation `id`: `Azure-AsyncOperation` and `Retry-After`, and
/// `Location` for a delete (202).
fn with_operation(
    mut reply: Reply,
    request: &ArmRequest<'_>,
    context: &RestContext,
    id: &str,
) -> Reply {
    let Some(operation) = context.operations.operation(id) else {
        return reply;
    };
    let url = operation_url(
        request,
        operation.kind,
        id,
        &operation.name,
        &operation.location,
    );
    reply
        .headers
        .push(("azure-asyncoperation", format!("{url}&asyncinfo")));
    if operation.action == Action::Delete {
        reply.headers.push(("location", url));
    }
    reply
        .headers
        .push(("retry-after", retry_after(operation.remaining())));
    reply
}

/// GET of an operation's URL: with `asyncinfo`, the status (`Running`, then `Succeeded`; 200
/// either way); without, the `Location` protocol (202 while running, then 200 with the
/// resource, or 204 after a delete).
fn operation_result(
    request: &ArmRequest<'_>,
    id: &str,
    kind: Kind,
    context: &RestContext,
) -> Reply {
    let Some(operation) = context.operations.operation(id).filter(|o| o.kind == kind) else {
        return arm_error(
            404,
            "OperationNotFound",
            &format!("No operation {id} is known (finished operations are kept 10 minutes)."),
        );
    };
    let remaining = operation.remaining();
    let running = !remaining.is_zero();
    let mut reply = if request.query_value("asyncinfo").is_some() {
        Reply::json(
            StatusCode::OK,
            json!({"status": if running { "Running" } else { "Succeeded" }}),
        )
    } else if running {
        let mut reply = Reply::empty(StatusCode::ACCEPTED);
        reply.headers.push((
            "location",
            operation_url(request, kind, id, &operation.name, &operation.location),
        ));
        reply
    } else {
        let group_base = format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Devices",
            request.segments.get(1).copied().unwrap_or_default(),
            context.resource_group
        );
        let resource = match (operation.action, kind) {
            (Action::Delete, _) => None,
            (_, Kind::Hub) => context
                .cloud
                .hub(&operation.name)
                .ok()
                .map(|h| hub_view(&group_base, &h, context)),
            (_, Kind::Dps) => context
                .cloud
                .dps(&operation.name)
                .ok()
                .map(|d| dps_view(&group_base, &d, context)),
        };
        match resource {
            Some(body) => Reply::json(StatusCode::OK, body),
            None => Reply::empty(StatusCode::NO_CONTENT),
        }
    };
    if running {
        reply.headers.push(("retry-after", retry_after(remaining)));
    }
    reply
}

/// 409 for a PUT on a name whose resource is still being deleted.
fn name_being_deleted(kind: &str, name: &str) -> Reply {
    arm_error(
        409,
        "Conflict",
        &format!(
            "The {kind} '{name}' is being deleted; its name is taken until the deletion completes."
        ),
    )
}

/// One page of an ARM list: items in name order, at most the page size, and a `nextLink`
/// (absolute, with `$skipToken` naming the last item given) while more remain.
fn page(request: &ArmRequest<'_>, context: &RestContext, mut items: Vec<Value>) -> Reply {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let key = |v: &Value| v["name"].as_str().unwrap_or_default().to_ascii_lowercase();
    items.sort_by_key(key);
    let after = request
        .query_value("$skipToken")
        .and_then(|t| b64.decode(t.as_bytes()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let start = after
        .as_deref()
        .map(|after| items.partition_point(|i| key(i).as_str() <= after))
        .unwrap_or(0);
    let end = (start + context.page_size).min(items.len());
    let mut body = json!({"value": items[start..end].to_vec()});
    if end < items.len() {
        let path: Vec<String> = request
            .segments
            .iter()
            .map(|s| crate::sas::url_encode(s))
            .collect();
        body["nextLink"] = json!(format!(
            "{}/{}?api-version={}&$skipToken={}",
            request.base_url,
            path.join("/"),
            crate::sas::url_encode(request.api_version),
            b64.encode(key(&items[end - 1]).as_bytes()),
        ));
    }
    Reply::json(StatusCode::OK, body)
}

/// A resource view with the states of `phase`: `Accepted` while created (`Activating`) or
/// updated (`Transitioning`).
fn with_phase(mut view: Value, phase: &Phase) -> Value {
    let state = match phase {
        Phase::Busy {
            action: Action::Create,
            ..
        } => "Activating",
        Phase::Busy { .. } => "Transitioning",
        Phase::Settled | Phase::Deleting { .. } => return view,
    };
    view["properties"]["provisioningState"] = json!("Accepted");
    view["properties"]["state"] = json!(state);
    view
}

/// A deleted resource's last view.
fn deleting_view(mut view: Value) -> Value {
    view["properties"]["provisioningState"] = json!("Deleting");
    view["properties"]["state"] = json!("Deleting");
    view
}

/// Deletes a hub or DPS as ARM does: `delete` takes it away from devices and the service APIs
/// at once, while ARM shows `view` as `Deleting` and keeps the name taken until the operation
/// it starts ends; answered 202 with the operation's URLs.
fn start_delete(
    request: &ArmRequest<'_>,
    context: &RestContext,
    kind: Kind,
    name: &str,
    location: &str,
    view: Value,
    delete: impl FnOnce() -> crate::Result<()>,
) -> crate::Result<Reply> {
    let view = deleting_view(view);
    delete()?;
    let id = context
        .operations
        .start(kind, name, Action::Delete, location, Some(view));
    Ok(with_operation(
        Reply::empty(StatusCode::ACCEPTED),
        request,
        context,
        &id,
    ))
}

/// ARM's answer about a hub or DPS whose delete is under way (`None` when it is not, or for a
/// sub-resource): its `Deleting` view to a GET, the running operation to another DELETE, and
/// 409 to a PUT of its name.
fn while_deleting(
    request: &ArmRequest<'_>,
    context: &RestContext,
    phase: &Phase,
    what: &str,
    name: &str,
    whole_resource: bool,
) -> Option<Reply> {
    let Phase::Deleting { id, view } = phase else {
        return None;
    };
    if !whole_resource {
        return None;
    }
    match *request.method {
        Method::PUT => Some(name_being_deleted(what, name)),
        Method::GET => Some(Reply::json(StatusCode::OK, view.clone())),
        Method::DELETE => Some(with_operation(
            Reply::empty(StatusCode::ACCEPTED),
            request,
            context,
            id,
        )),
        _ => None,
    }
}

fn not_found(kind: &str, name: &str, group: &str) -> Reply {
    arm_error(
        404,
        "ResourceNotFound",
        &format!(
            "The Resource 'Microsoft.Devices/{kind}/{name}' under resource group '{group}' was not found."
        ),
    )
}

fn empty(status: StatusCode) -> Reply {
    Reply::empty(status)
}

fn parse_json(body: &[u8]) -> crate::Result<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| Error::config_caused("the request body is not JSON", e))
}

// ---- provisioning services ----------------------------------------------------------------

fn provisioning_services(
    request: &ArmRequest<'_>,
    group_base: &str,
    group: &str,
    rest: &[&str],
    context: &RestContext,
) -> crate::Result<Reply> {
    let cloud = &context.cloud;
    let method = request.method;
    let Some((name, rest)) = rest.split_first() else {
        return Ok(match *method {
            Method::GET => {
                let mut items: Vec<Value> = cloud
                    .all_dps()
                    .iter()
                    .map(|d| dps_view(group_base, d, context))
                    .collect();
                items.extend(context.operations.deleting(Kind::Dps));
                page(request, context, items)
            }
            _ => arm_error(405, "405000", "method not allowed on this collection"),
        });
    };
    let name = *name;
    let lower = |i: usize| rest.get(i).map(|s| s.to_ascii_lowercase());
    // The operation outlives a deleted DPS: its URL is served whatever the DPS's state.
    if let (&Method::GET, [results, id]) = (method, rest)
        && results.eq_ignore_ascii_case("operationresults")
    {
        return Ok(operation_result(request, id, Kind::Dps, context));
    }
    let phase = context.operations.phase(Kind::Dps, name);
    if let Some(reply) = while_deleting(
        request,
        context,
        &phase,
        "provisioning service",
        name,
        rest.is_empty(),
    ) {
        return Ok(reply);
    }
    match (method, rest.len(), lower(0).as_deref()) {
        (&Method::PUT, 0, _) => put_dps(request, group_base, name, context),
        (_, _, _) if cloud.dps(name).is_err() => Ok(not_found("provisioningServices", name, group)),
        (&Method::GET, 0, _) => Ok(Reply::json(
            StatusCode::OK,
            dps_view(group_base, &cloud.dps(name)?, context),
        )),
        (&Method::PATCH, 0, _) => {
            let body = parse_json(request.body)?;
            set_namespace_link(LinkedKind::Dps, name, &body["properties"], context)?;
            Ok(Reply::json(
                StatusCode::OK,
                dps_view(group_base, &cloud.dps(name)?, context),
            ))
        }
        (&Method::DELETE, 0, _) => {
            let dps = cloud.dps(name)?;
            let view = dps_view(group_base, &dps, context);
            start_delete(
                request,
                context,
                Kind::Dps,
                &dps.name,
                &dps.location,
                view,
                || cloud.delete_dps(name),
            )
        }
        (&Method::POST, 1, Some("listkeys")) => {
            let dps = cloud.dps(name)?;
            Ok(Reply::json(
                StatusCode::OK,
                json!({"value": [dps_key_json(&dps)]}),
            ))
        }
        (&Method::POST, 3, Some("keys")) if lower(2).as_deref() == Some("listkeys") => {
            let dps = cloud.dps(name)?;
            if !rest[1].eq_ignore_ascii_case(super::dps_service::OWNER_POLICY) {
                return Ok(arm_error(
                    404,
                    "KeyNameNotFound",
                    &format!("no shared access policy named {} in {name}", rest[1]),
                ));
            }
            Ok(Reply::json(StatusCode::OK, dps_key_json(&dps)))
        }
        (_, _, Some("certificates")) => {
            let base = format!("{group_base}/provisioningServices/{name}");
            certificates(
                method,
                &base,
                name,
                &rest[1..],
                request.body,
                request.if_match,
                context,
            )
        }
        _ => Ok(arm_error(
            405,
            "405000",
            "the emulator does not serve this operation",
        )),
    }
}

/// The DPS as its GET shows it now (`Activating` while being created).
fn dps_view(group_base: &str, dps: &DpsRecord, context: &RestContext) -> Value {
    let mut view = dps_json(group_base, dps, context);
    if let Some(link) = context.cloud.namespace_link(LinkedKind::Dps, &dps.name) {
        view["properties"]["deviceRegistryNamespace"] = json!({
            "resourceId": namespace_id(group_base, &link.namespace),
            "authenticationType": link.authentication_type.as_deref().unwrap_or(
                if link.identity.is_some() { "UserAssigned" } else { "SystemAssigned" }),
            "selectedUserAssignedIdentityResourceId": link.identity,
        });
    }
    with_phase(view, &context.operations.phase(Kind::Dps, &dps.name))
}

fn dps_key_json(dps: &DpsRecord) -> Value {
    policy_json(&super::dps_service::dps_policies(dps)[0])
}

/// The DPS resource: what `az iot dps show` and the management SDK read.
fn dps_json(group_base: &str, dps: &DpsRecord, context: &RestContext) -> Value {
    let hubs: Vec<Value> = dps
        .linked_hubs
        .iter()
        .map(|l| {
            json!({
                "connectionString": format!(
                    "HostName={};SharedAccessKeyName=iothubowner;SharedAccessKey={MASKED_KEY}",
                    l.host_name
                ),
                "location": l.location,
                "allocationWeight": l.allocation_weight,
                "applyAllocationPolicy": l.apply_allocation_policy,
                "name": l.host_name,
            })
        })
        .collect();
    json!({
        "id": format!("{group_base}/provisioningServices/{}", dps.name),
        "name": dps.name,
        "type": "Microsoft.Devices/ProvisioningServices",
        "location": dps.location,
        "etag": format!("AAAAAA{:08X}=", dps.created as u32),
        "tags": if dps.presets {
            json!({ crate::limits::PRESETS_TAG: "on" })
        } else {
            json!({})
        },
        "sku": {"name": "S1", "tier": "Standard", "capacity": 1},
        "properties": {
            "state": "Active",
            "provisioningState": "Succeeded",
            "iotHubs": hubs,
            "allocationPolicy": "Hashed",
            "serviceOperationsHostName": context.dps_service_host(),
            "deviceProvisioningHostName": context.cloud.dps_host(),
            "idScope": dps.id_scope,
            "authorizationPolicies": [],
            "enableDataResidency": false,
            "publicNetworkAccess": "Enabled",
            "ipFilterRules": [],
            "privateEndpointConnections": [],
        },
    })
}

/// PUT creates the DPS or updates it. The body replaces the linked hubs (ARM PUT semantics):
/// `az iot dps linked-hub create` GETs the resource, appends a hub and PUTs it all back, masked
/// keys included.
fn put_dps(
    request: &ArmRequest<'_>,
    group_base: &str,
    name: &str,
    context: &RestContext,
) -> crate::Result<Reply> {
    let cloud = &context.cloud;
    let body = parse_json(request.body)?;
    let created = cloud.dps(name).is_err();
    if created {
        if let Err(e) = crate::protocol::validate_dps_name(name) {
            return Ok(invalid_name(&e));
        }
        let location = body["location"]
            .as_str()
            .ok_or_else(|| Error::config("a new provisioning service needs a \"location\""))?;
        cloud.create_dps(name, location)?;
    }
    let wanted = match &body["properties"]["iotHubs"] {
        Value::Array(items) => items.clone(),
        Value::Null => Vec::new(),
        _ => return Err(Error::config("properties.iotHubs must be an array")),
    };
    let mut keep = Vec::new();
    for item in &wanted {
        let text = item["connectionString"]
            .as_str()
            .ok_or_else(|| Error::config("each linked hub needs a \"connectionString\""))?;
        let (host, key) = parse_hub_connection_string(text)?;
        let hub = cloud
            .hubs()
            .into_iter()
            .find(|h| h.host_name.eq_ignore_ascii_case(&host))
            .ok_or_else(|| {
                Error::service(400, 400_000, format!("no IoT hub has the host name {host}"))
            })?;
        if key != MASKED_KEY && key != hub.primary_key && key != hub.secondary_key {
            return Err(Error::service(
                400,
                400_000,
                format!("the connection string of {host} has a wrong SharedAccessKey"),
            ));
        }
        let weight = item["allocationWeight"]
            .as_u64()
            .map(|w| u32::try_from(w).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let apply = item["applyAllocationPolicy"].as_bool().unwrap_or(true);
        cloud.link_hub(name, &hub.name, weight, apply, item["location"].as_str())?;
        keep.push(hub.name);
    }
    for link in cloud.dps(name)?.linked_hubs {
        if !keep.contains(&link.hub) {
            cloud.unlink_hub(name, &link.hub)?;
        }
    }
    set_namespace_link(LinkedKind::Dps, name, &body["properties"], context)?;
    // ARM PUT replaces the tags: the presets follow the tag of each PUT (dpskit's linking
    // GETs the resource and PUTs it back, tags included).
    let presets = body["tags"][crate::limits::PRESETS_TAG].as_str() == Some("on");
    cloud.set_dps_presets(name, presets)?;
    context.dps_quotas.set_presets(name, presets);
    let (status, action) = if created {
        (StatusCode::CREATED, Action::Create)
    } else {
        (StatusCode::OK, Action::Update)
    };
    // A create or an update (linking hubs) is a long-running operation on Azure.
    let dps = cloud.dps(name)?;
    let id = context
        .operations
        .start(Kind::Dps, &dps.name, action, &dps.location, None);
    Ok(with_operation(
        Reply::json(status, dps_view(group_base, &dps, context)),
        request,
        context,
        &id,
    ))
}

/// `HostName=...;SharedAccessKeyName=...;SharedAccessKey=...` → (host, key).
fn parse_hub_connection_string(text: &str) -> crate::Result<(String, String)> {
    let mut host = None;
    let mut key = None;
    for part in text.split(';') {
        if let Some((k, v)) = part.split_once('=') {
            match k.trim() {
                k if k.eq_ignore_ascii_case("HostName") => host = Some(v.trim().to_string()),
                k if k.eq_ignore_ascii_case("SharedAccessKey") => key = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    match (host, key) {
        (Some(h), Some(k)) => Ok((h, k)),
        _ => Err(Error::config(
            "a linked hub's connection string needs HostName and SharedAccessKey",
        )),
    }
}

// ---- IoT hubs -----------------------------------------------------------------------------

fn iot_hubs(
    request: &ArmRequest<'_>,
    group_base: &str,
    group: &str,
    rest: &[&str],
    context: &RestContext,
) -> crate::Result<Reply> {
    let cloud = &context.cloud;
    let method = request.method;
    let Some((name, rest)) = rest.split_first() else {
        return Ok(match *method {
            Method::GET => {
                let mut items: Vec<Value> = cloud
                    .hubs()
                    .iter()
                    .map(|h| hub_view(group_base, h, context))
                    .collect();
                items.extend(context.operations.deleting(Kind::Hub));
                page(request, context, items)
            }
            _ => arm_error(405, "405000", "method not allowed on this collection"),
        });
    };
    let name = *name;
    let lower = |i: usize| rest.get(i).map(|s| s.to_ascii_lowercase());
    let phase = context.operations.phase(Kind::Hub, name);
    if let Some(reply) = while_deleting(request, context, &phase, "IoT hub", name, rest.is_empty())
    {
        return Ok(reply);
    }
    match (method, rest.len(), lower(0).as_deref()) {
        (&Method::PUT, 0, _) => {
            let exists = cloud.hub(name).is_ok();
            if !exists && let Err(e) = crate::protocol::validate_hub_name(name) {
                return Ok(invalid_name(&e));
            }
            let body = parse_json(request.body)?;
            let sku = match requested_sku(&body) {
                Ok(sku) => sku,
                Err(reply) => return Ok(reply),
            };
            let presets = body["tags"][crate::limits::PRESETS_TAG].as_str() == Some("on");
            let events = match requested_events(&body) {
                Ok(events) => events,
                Err(reply) => return Ok(reply),
            };
            if exists {
                // A PUT of an existing hub changes its tier and size (scaling), as on Azure;
                // its partitions are fixed at creation.
                let mut hub = cloud.hub(name)?;
                if let Some(asked) = events.partition_count
                    && asked != hub.events.partition_count
                {
                    return Ok(arm_error(
                        400,
                        "400002",
                        &format!(
                            "the partition count of {name}'s events endpoint is fixed at \
                             creation ({}); it cannot become {asked}",
                            hub.events.partition_count
                        ),
                    ));
                }
                if sku.is_some() {
                    hub = cloud.set_hub_sku(name, sku, presets)?;
                    context
                        .hubs
                        .set_preset(&hub.host_name, hub.sku.filter(|_| hub.presets));
                }
                set_namespace_link(LinkedKind::Hub, name, &body["properties"], context)?;
                return Ok(Reply::json(
                    StatusCode::OK,
                    hub_view(group_base, &hub, context),
                ));
            }
            let location = body["location"]
                .as_str()
                .ok_or_else(|| Error::config("a new IoT hub needs a \"location\""))?;
            cloud.create_hub(name, location, None)?;
            cloud.update_hub_events(name, |endpoint| {
                endpoint.partition_count =
                    events.partition_count.unwrap_or(endpoint.partition_count);
                endpoint.retention_days = events.retention_days.unwrap_or(endpoint.retention_days);
                Ok(())
            })?;
            let hub = cloud.set_hub_sku(name, sku, presets)?;
            context
                .hubs
                .set_preset(&hub.host_name, hub.sku.filter(|_| hub.presets));
            set_namespace_link(LinkedKind::Hub, name, &body["properties"], context)?;
            // Devices must reach the new hub at once.
            context.listeners.listen_for_host(&hub.host_name)?;
            let id =
                context
                    .operations
                    .start(Kind::Hub, &hub.name, Action::Create, &hub.location, None);
            Ok(with_operation(
                Reply::json(StatusCode::CREATED, hub_view(group_base, &hub, context)),
                request,
                context,
                &id,
            ))
        }
        (_, _, _) if cloud.hub(name).is_err() => Ok(not_found("IotHubs", name, group)),
        (&Method::GET, 0, _) => Ok(Reply::json(
            StatusCode::OK,
            hub_view(group_base, &cloud.hub(name)?, context),
        )),
        (&Method::PATCH, 0, _) => {
            let body = parse_json(request.body)?;
            set_namespace_link(LinkedKind::Hub, name, &body["properties"], context)?;
            Ok(Reply::json(
                StatusCode::OK,
                hub_view(group_base, &cloud.hub(name)?, context),
            ))
        }
        (&Method::DELETE, 0, _) => {
            let hub = cloud.hub(name)?;
            let view = hub_view(group_base, &hub, context);
            start_delete(
                request,
                context,
                Kind::Hub,
                &hub.name,
                &hub.location,
                view,
                || cloud.delete_hub(name),
            )
        }
        (&Method::GET, 1, Some("quotametrics")) => {
            let hub = cloud.hub(name)?;
            let usage = context.hubs.usage(&hub.host_name)?;
            let devices = cloud.hub_device_count(&hub.host_name);
            Ok(Reply::json(
                StatusCode::OK,
                json!({"value": [
                    {"name": "TotalMessages", "currentValue": usage.messages_used, "maxValue": usage.daily_quota},
                    {"name": "TotalDeviceCount", "currentValue": devices, "maxValue": crate::limits::MAX_HUB_DEVICES},
                ]}),
            ))
        }
        (&Method::POST, 1, Some("listkeys")) => {
            let hub = cloud.hub(name)?;
            Ok(Reply::json(
                StatusCode::OK,
                json!({"value": hub.policies.iter().map(policy_json).collect::<Vec<_>>()}),
            ))
        }
        (_, 3 | 4, Some("eventhubendpoints")) if lower(2).as_deref() == Some("consumergroups") => {
            consumer_groups(method, group_base, name, &rest[1..], request.body, context)
        }
        (&Method::POST, 3, Some("iothubkeys")) if lower(2).as_deref() == Some("listkeys") => {
            let hub = cloud.hub(name)?;
            match hub.policy(rest[1]) {
                Some(policy) => Ok(Reply::json(StatusCode::OK, policy_json(policy))),
                None => Ok(arm_error(
                    404,
                    "KeyNameNotFound",
                    &format!("no shared access policy named {} in {name}", rest[1]),
                )),
            }
        }
        _ => Ok(arm_error(
            405,
            "405000",
            "the emulator does not serve this operation",
        )),
    }
}

/// What a hub PUT asks of the built-in events endpoint (`None`: not asked).
struct RequestedEvents {
    partition_count: Option<u32>,
    retention_days: Option<u32>,
}

/// `properties.eventHubEndpoints.events` of a hub PUT, or ARM's refusal of what it cannot be.
fn requested_events(body: &Value) -> Result<RequestedEvents, Reply> {
    let events = &body["properties"]["eventHubEndpoints"]["events"];
    let read = |field: &str, range: std::ops::RangeInclusive<u32>| match &events[field] {
        Value::Null => Ok(None),
        value => value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| range.contains(n))
            .map(Some)
            .ok_or_else(|| {
                arm_error(
                    400,
                    "400002",
                    &format!(
                        "eventHubEndpoints.events.{field} must be a whole number from {} to {}, \
                         not {value}",
                        range.start(),
                        range.end()
                    ),
                )
            }),
    };
    Ok(RequestedEvents {
        partition_count: read("partitionCount", crate::limits::PARTITION_COUNT_RANGE)?,
        retention_days: read("retentionTimeInDays", 1..=7)?,
    })
}

/// `IotHubs/{hub}/eventHubEndpoints/events/ConsumerGroups[/{name}]`: list, get, create and
/// delete the consumer groups of the built-in endpoint, `$Default` always first and never
/// deleted.
fn consumer_groups(
    method: &Method,
    group_base: &str,
    hub_name: &str,
    rest: &[&str],
    body: &[u8],
    context: &RestContext,
) -> crate::Result<Reply> {
    let cloud = &context.cloud;
    let hub = cloud.hub(hub_name)?;
    if !rest[0].eq_ignore_ascii_case("events") {
        return Ok(arm_error(
            404,
            "404001",
            &format!("{hub_name} has no event hub endpoint named {}", rest[0]),
        ));
    }
    let view = |hub: &HubRecord, group: &str| {
        json!({
            "properties": {"created": http_date(hub.created), "name": group},
            "id": format!(
                "{group_base}/IotHubs/{}/eventHubEndpoints/events/ConsumerGroups/{group}",
                hub.name
            ),
            "name": group,
            "type": "Microsoft.Devices/IotHubs/EventHubEndpoints/ConsumerGroups",
            "etag": format!("AAAAAA{:08X}=", hub.created as u32),
        })
    };
    let known = |hub: &HubRecord, group: &str| {
        group == DEFAULT_CONSUMER_GROUP
            || hub
                .events
                .consumer_groups
                .iter()
                .any(|g| g.eq_ignore_ascii_case(group))
    };
    let Some(group) = rest.get(2).copied() else {
        return Ok(match *method {
            Method::GET => {
                let names = std::iter::once(DEFAULT_CONSUMER_GROUP.to_string())
                    .chain(hub.events.consumer_groups.iter().cloned());
                let items: Vec<Value> = names.map(|g| view(&hub, &g)).collect();
                Reply::json(StatusCode::OK, json!({"value": items}))
            }
            _ => arm_error(405, "405000", "method not allowed on this collection"),
        });
    };
    match *method {
        Method::GET if known(&hub, group) => Ok(Reply::json(StatusCode::OK, view(&hub, group))),
        Method::GET => Ok(consumer_group_not_found(hub_name, group)),
        Method::PUT => {
            if let Err(why) = crate::protocol::validate_consumer_group_name(group) {
                return Ok(arm_error(400, "400002", &why.to_string()));
            }
            if !body.is_empty() {
                parse_json(body)?;
            }
            let hub = cloud.update_hub_events(hub_name, |endpoint| {
                if group != DEFAULT_CONSUMER_GROUP
                    && !endpoint
                        .consumer_groups
                        .iter()
                        .any(|g| g.eq_ignore_ascii_case(group))
                {
                    if endpoint.consumer_groups.len() + 1 >= crate::limits::MAX_CONSUMER_GROUPS {
                        return Err(Error::config(format!(
                            "{hub_name} has {} consumer groups, the most a hub can have",
                            crate::limits::MAX_CONSUMER_GROUPS
                        )));
                    }
                    endpoint.consumer_groups.push(group.to_string());
                }
                Ok(())
            });
            match hub {
                Ok(hub) => Ok(Reply::json(StatusCode::OK, view(&hub, group))),
                Err(Error::Config(why)) => Ok(arm_error(400, "400002", &why.to_string())),
                Err(e) => Err(e),
            }
        }
        Method::DELETE if group == DEFAULT_CONSUMER_GROUP => Ok(arm_error(
            400,
            "400002",
            "the $Default consumer group cannot be deleted",
        )),
        Method::DELETE if known(&hub, group) => {
            cloud.update_hub_events(hub_name, |endpoint| {
                endpoint
                    .consumer_groups
                    .retain(|g| !g.eq_ignore_ascii_case(group));
                Ok(())
            })?;
            Ok(empty(StatusCode::OK))
        }
        Method::DELETE => Ok(consumer_group_not_found(hub_name, group)),
        _ => Ok(arm_error(
            405,
            "405000",
            "method not allowed on a consumer group",
        )),
    }
}

/// The consumer group every endpoint has.
const DEFAULT_CONSUMER_GROUP: &str = "$Default";

fn consumer_group_not_found(hub: &str, group: &str) -> Reply {
    arm_error(
        404,
        "404001",
        &format!("{hub} has no consumer group named {group}"),
    )
}

/// The hub as its GET shows it now (`Activating` while being created).
fn hub_view(group_base: &str, hub: &HubRecord, context: &RestContext) -> Value {
    let mut view = hub_json(group_base, hub);
    if let Some(link) = context.cloud.namespace_link(LinkedKind::Hub, &hub.name) {
        view["properties"]["deviceRegistry"] = json!({
            "namespaceResourceId": namespace_id(group_base, &link.namespace),
            "identityResourceId": link.identity,
        });
    }
    with_phase(view, &context.operations.phase(Kind::Hub, &hub.name))
}

/// `SharedAccessSignatureAuthorizationRule`: a policy with its keys, as `listkeys` answers.
fn policy_json(policy: &SharedAccessPolicy) -> Value {
    json!({
        "keyName": policy.key_name,
        "primaryKey": policy.primary_key,
        "secondaryKey": policy.secondary_key,
        "rights": policy.rights,
    })
}

/// The `sku` of a hub PUT (`None` when absent), or ARM's refusal of an unknown tier or size.
fn requested_sku(body: &Value) -> Result<Option<crate::limits::HubSku>, Reply> {
    let sku = &body["sku"];
    if sku.is_null() {
        return Ok(None);
    }
    let name = sku["name"].as_str().unwrap_or_default();
    // An absent capacity is one unit; one that is not a whole number is refused, not read as 1.
    let units = match &sku["capacity"] {
        Value::Null => 1,
        capacity => match capacity.as_u64() {
            Some(units) => units,
            None => {
                return Err(arm_error(
                    400,
                    "400002",
                    &format!("sku.capacity must be a whole number of units, not {capacity}"),
                ));
            }
        },
    };
    crate::limits::HubSku::new(name, u32::try_from(units).unwrap_or(u32::MAX))
        .map(Some)
        .map_err(|why| arm_error(400, "400002", &why))
}

fn hub_json(group_base: &str, hub: &HubRecord) -> Value {
    let sku = hub.sku.unwrap_or(crate::limits::HubSku {
        tier: crate::limits::HubTier::S1,
        units: 1,
    });
    let tags = if hub.presets {
        json!({ crate::limits::PRESETS_TAG: "on" })
    } else {
        json!({})
    };
    json!({
        "id": format!("{group_base}/IotHubs/{}", hub.name),
        "name": hub.name,
        "type": "Microsoft.Devices/IotHubs",
        "location": hub.location,
        "etag": format!("AAAAAA{:08X}=", hub.created as u32),
        "tags": tags,
        "sku": {
            "name": sku.tier.name(),
            "tier": sku.tier.limits().arm_tier,
            "capacity": sku.units,
        },
        "properties": {
            "state": "Active",
            "provisioningState": "Succeeded",
            "hostName": hub.host_name,
            "eventHubEndpoints": {
                "events": {
                    "retentionTimeInDays": hub.events.retention_days,
                    "partitionCount": hub.events.partition_count,
                    "partitionIds": (0..hub.events.partition_count)
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>(),
                    "path": hub.name,
                    "endpoint": format!("sb://{}/", hub.host_name),
                },
            },
            "publicNetworkAccess": "Enabled",
        },
    })
}

// ---- CA certificates and proof of possession ----------------------------------------------

fn certificates(
    method: &Method,
    base: &str,
    dps: &str,
    rest: &[&str],
    body: &[u8],
    if_match: Option<&str>,
    context: &RestContext,
) -> crate::Result<Reply> {
    let cloud = &context.cloud;
    match (method, rest) {
        (&Method::GET, []) => Ok(Reply::json(
            StatusCode::OK,
            json!({"value": cloud.dps(dps)?.certificates.iter()
                .map(|c| certificate_json(base, c, false)).collect::<Vec<_>>()}),
        )),
        (&Method::GET, [name]) => {
            let c = cloud.ca_certificate(dps, name)?;
            if let Some(tag) = if_match.filter(|t| *t != "*" && t.trim_matches('"') != c.etag) {
                return Err(Error::service(
                    412,
                    412_002,
                    format!("The ETag {tag} does not match the ETag of the certificate."),
                ));
            }
            Ok(certificate_reply(base, &c, false))
        }
        // 200 for create and update alike: the management SDK accepts nothing else.
        (&Method::PUT, [name]) => {
            upload(cloud, dps, name, body, if_match).map(|c| certificate_reply(base, &c, false))
        }
        (&Method::DELETE, [name]) => {
            // Azure requires If-Match to delete; "*" deletes whatever version is there.
            let tag = if_match.ok_or_else(|| {
                Error::service(
                    412,
                    412_002,
                    "If-Match with the certificate's etag is required to delete it.",
                )
            })?;
            cloud
                .delete_ca_certificate(dps, name, Some(tag))
                .map(|()| empty(StatusCode::OK))
        }
        (&Method::POST, [name, action])
            if action.eq_ignore_ascii_case("generateVerificationCode") =>
        {
            let tag = require_if_match(if_match)?;
            cloud
                .generate_verification_code(dps, name, Some(tag))
                .map(|c| certificate_reply(base, &c, true))
        }
        (&Method::POST, [name, action])
            if action.eq_ignore_ascii_case("verify")
                || action.eq_ignore_ascii_case("verifyCertificate") =>
        {
            let tag = require_if_match(if_match)?;
            let verification = certificate_from_body(body)?;
            cloud
                .verify_certificate(dps, name, &verification, Some(tag))
                .map(|c| certificate_reply(base, &c, false))
        }
        _ => Ok(arm_error(
            405,
            "405000",
            "method not allowed on this resource",
        )),
    }
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
    let body: CertificateBodyDescription = certificate_body(body)?;
    let (text, verified) = body.upload();
    let text = text.ok_or_else(|| Error::config("the body has no \"certificate\" string"))?;
    let certificate = certificate_from_text(text)?;
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

/// A certificate body as the DPS API type `T`.
fn certificate_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> crate::Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::config_caused("the request body is not a certificate body", e))
}

/// A verification certificate (`VerificationCodeRequest`): PEM text, base64 of DER, or base64
/// of PEM (all seen from clients).
fn certificate_from_body(body: &[u8]) -> crate::Result<Certificate> {
    let request: VerificationCodeRequest = certificate_body(body)?;
    certificate_from_text(&request.certificate)
}

/// A certificate given as PEM text, base64 DER, or base64 of PEM (all seen from clients).
pub(super) fn certificate_from_text(text: &str) -> crate::Result<Certificate> {
    let text = text.trim();
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
        etag: Some(c.etag.clone()),
        ..Reply::json(StatusCode::OK, certificate_json(base, c, with_code))
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
    let response = CertificateResponse {
        id: Some(format!("{base}/certificates/{}", c.name)),
        name: Some(c.name.clone()),
        kind: Some(CERTIFICATE_RESOURCE_TYPE.into()),
        etag: Some(c.etag.clone()),
        properties: CertificateProperties {
            subject: Some(subject),
            expiry: Some(expiry),
            thumbprint: Some(thumbprint),
            is_verified: Some(c.is_verified),
            certificate: Some(c.der_base64.clone()),
            created: Some(http_date(c.created)),
            updated: Some(http_date(c.updated)),
            verification_code: c.verification_code.clone().filter(|_| with_code),
        },
    };
    // Infallible: string keys and plain members only.
    serde_json::to_value(response).unwrap_or(Value::Null)
}

// ---- Azure Device Registry (Microsoft.DeviceRegistry) --------------------------------------

/// The `Microsoft.DeviceRegistry` api-versions that have the certificate management preview's
/// `credentials` and `policies` (`ns_policy.tsp`: added 2025-11-01-preview, removed 2026-04-01).
const REGISTRY_API_VERSIONS: &[&str] = &["2025-11-01-preview", "2026-03-01-preview"];

/// The ARM id of namespace `name` in the resource group of `group_base`.
fn namespace_id(group_base: &str, name: &str) -> String {
    let group = group_base
        .strip_suffix("/Microsoft.Devices")
        .unwrap_or(group_base);
    format!("{group}/Microsoft.DeviceRegistry/namespaces/{name}")
}

/// The namespace an ARM id names (`.../providers/Microsoft.DeviceRegistry/namespaces/{ns}`).
fn namespace_of(resource_id: &str) -> crate::Result<String> {
    let parts: Vec<&str> = resource_id.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        [.., provider, namespaces, name]
            if provider.eq_ignore_ascii_case("Microsoft.DeviceRegistry")
                && namespaces.eq_ignore_ascii_case("namespaces") =>
        {
            Ok((*name).to_string())
        }
        _ => Err(Error::service(
            400,
            400_000,
            format!(
                "{resource_id:?} is not the resource id of a Device Registry namespace \
                 (.../providers/Microsoft.DeviceRegistry/namespaces/{{name}})"
            ),
        )),
    }
}

/// Links a DPS (`properties.deviceRegistryNamespace {resourceId, authenticationType,
/// selectedUserAssignedIdentityResourceId}`) or a hub (`properties.deviceRegistry
/// {namespaceResourceId, identityResourceId}`) to the namespace its PUT or PATCH names. A body
/// without the property keeps the link: clients that read the resource with an api-version
/// that lacks it write it back without it. Linking is also the emulator's credential sync: the
/// hub trusts the namespace's issuing CAs from now on.
fn set_namespace_link(
    kind: LinkedKind,
    name: &str,
    properties: &Value,
    context: &RestContext,
) -> crate::Result<()> {
    let (member, id_member, identity_member) = match kind {
        LinkedKind::Dps => (
            "deviceRegistryNamespace",
            "resourceId",
            "selectedUserAssignedIdentityResourceId",
        ),
        LinkedKind::Hub => (
            "deviceRegistry",
            "namespaceResourceId",
            "identityResourceId",
        ),
    };
    let link = &properties[member];
    let Some(resource_id) = link[id_member].as_str().filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    let namespace = namespace_of(resource_id)?;
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    context.cloud.link_to_namespace(
        kind,
        name,
        &namespace,
        text(&link["authenticationType"]),
        text(&link[identity_member]),
    )?;
    Ok(())
}

/// ISO 8601 as ARM's `utcDateTime` (`2026-12-07T19:38:09Z`).
fn iso_time(unix: i64) -> String {
    crate::emulator::cloud::azure_time(unix)
}

fn system_data(created: i64) -> Value {
    json!({
        "createdBy": "dpskit",
        "createdByType": "User",
        "createdAt": iso_time(created),
        "lastModifiedBy": "dpskit",
        "lastModifiedByType": "User",
        "lastModifiedAt": iso_time(created),
    })
}

/// A GUID derived from `seed` (stable across restarts, distinct per seed).
fn derived_guid(seed: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
    let h: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The namespace resource (`Get_Namespace.json`'s shape): its linked hubs as messaging
/// endpoints.
fn namespace_json(base: &str, ns: &NamespaceRecord, context: &RestContext) -> Value {
    let mut endpoints = serde_json::Map::new();
    for hub in context.cloud.hubs() {
        if context
            .cloud
            .namespace_link(LinkedKind::Hub, &hub.name)
            .is_some_and(|l| l.namespace == ns.name)
        {
            let devices_base = base.replace("/Microsoft.DeviceRegistry", "/Microsoft.Devices");
            endpoints.insert(
                hub.name.clone(),
                json!({
                    "endpointType": "Microsoft.Devices/IoTHubs",
                    "address": format!("https://{}", hub.host_name),
                    "resourceId": format!("{devices_base}/IotHubs/{}", hub.name),
                }),
            );
        }
    }
    json!({
        "id": format!("{base}/namespaces/{}", ns.name),
        "name": ns.name,
        "type": "Microsoft.DeviceRegistry/namespaces",
        "location": ns.location,
        "tags": {},
        "systemData": system_data(ns.created),
        "identity": {
            "principalId": derived_guid(&format!("principal/{}", ns.uuid)),
            "tenantId": derived_guid("tenant"),
            "type": "SystemAssigned",
        },
        "properties": {
            "uuid": ns.uuid,
            "messaging": {"endpoints": endpoints},
            "provisioningState": "Succeeded",
        },
    })
}

/// The namespace's one credential (`Update_Credentials.json`'s shape).
fn credential_json(base: &str, ns: &NamespaceRecord) -> Value {
    json!({
        "id": format!("{base}/namespaces/{}/credentials/{}", ns.name, crate::emulator::device_registry::CREDENTIAL_NAME),
        "name": crate::emulator::device_registry::CREDENTIAL_NAME,
        "type": "Microsoft.DeviceRegistry/namespaces/credentials",
        "location": ns.location,
        "tags": {},
        "systemData": system_data(ns.created),
        "properties": {"provisioningState": "Succeeded"},
    })
}

/// A policy (`PolicyV1` of `ns_policy.tsp`): its issuing CA's subject and validity read-only.
fn policy_resource_json(base: &str, location: &str, policy: &PolicyRecord) -> Value {
    let ca = Certificate::from_pem(policy.issuing_ca_pem.as_bytes()).ok();
    let info = ca.as_ref().map(|c| c.info());
    json!({
        "id": format!(
            "{base}/namespaces/{}/credentials/{}/policies/{}",
            policy.namespace,
            crate::emulator::device_registry::CREDENTIAL_NAME,
            policy.name
        ),
        "name": policy.name,
        "type": "Microsoft.DeviceRegistry/namespaces/credentials/policies",
        "location": location,
        "tags": {},
        "systemData": system_data(policy.created),
        "properties": {
            "certificate": {
                "certificateAuthorityConfiguration": {
                    "keyType": policy.key_type,
                    "subject": info.map(|i| i.subject.clone()),
                    "validityNotBefore": info.map(|i| iso_time(i.not_before)),
                    "validityNotAfter": info.map(|i| iso_time(i.not_after)),
                },
                "leafCertificateConfiguration": {
                    "validityPeriodInDays": policy.validity_days,
                },
            },
            "provisioningState": "Succeeded",
        },
    })
}

fn registry_not_found(what: &str, name: &str, group: &str) -> Reply {
    arm_error(
        404,
        "ResourceNotFound",
        &format!(
            "The Resource 'Microsoft.DeviceRegistry/{what}/{name}' under resource group '{group}' was not found."
        ),
    )
}

/// `Microsoft.DeviceRegistry/namespaces/...`: namespaces, their credential and its policies.
/// Writes answer at once with `provisioningState: Succeeded` (the CAs are made in the request),
/// which ARM clients read as a finished long-running operation.
fn device_registry(request: &ArmRequest<'_>, context: &RestContext) -> Reply {
    let segments = request.segments;
    if !segments[6].eq_ignore_ascii_case("namespaces") {
        return arm_error(
            404,
            "InvalidResourceType",
            &format!(
                "the emulator does not serve resource type Microsoft.DeviceRegistry/{}",
                segments[6]
            ),
        );
    }
    if let Some(refusal) =
        check_api_version("namespaces", REGISTRY_API_VERSIONS, request.api_version)
    {
        return refusal;
    }
    let group = segments[3];
    let base = format!(
        "/subscriptions/{}/resourceGroups/{group}/providers/Microsoft.DeviceRegistry",
        segments[1]
    );
    registry_request(request, context, &base, group, &segments[7..])
        .unwrap_or_else(|e| from_error(&e))
}

fn registry_request(
    request: &ArmRequest<'_>,
    context: &RestContext,
    base: &str,
    group: &str,
    rest: &[&str],
) -> crate::Result<Reply> {
    let cloud = &context.cloud;
    let method = request.method;
    let lower: Vec<String> = rest.iter().map(|s| s.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    let credential = crate::emulator::device_registry::CREDENTIAL_NAME;
    // Every path below a namespace needs the namespace.
    let namespace = match rest.first() {
        None => None,
        Some(name) if *method == Method::PUT && rest.len() == 1 => {
            if let Err(e) = crate::protocol::validate_namespace_name(name) {
                return Ok(invalid_name(&e));
            }
            None
        }
        Some(name) => match cloud.device_registry_namespace(name) {
            Ok(ns) => Some(ns),
            Err(_) => return Ok(registry_not_found("namespaces", name, group)),
        },
    };
    let is_default = |i: usize| lower.get(i) == Some(&credential);
    // Set above for every path below a namespace (the PUT that creates one aside).
    let looked_up = || {
        namespace
            .as_ref()
            .ok_or_else(|| Error::emulator("a Device Registry path without its namespace"))
    };
    match (method, lower.as_slice()) {
        (&Method::GET, []) => {
            let items = cloud
                .device_registry_namespaces()
                .iter()
                .map(|ns| namespace_json(base, ns, context))
                .collect();
            Ok(page(request, context, items))
        }
        (&Method::PUT, [_]) => {
            let name = rest[0];
            let body = parse_json(request.body)?;
            let (ns, status) = match cloud.device_registry_namespace(name) {
                Ok(ns) => (ns, StatusCode::OK),
                Err(_) => {
                    let location = body["location"].as_str().ok_or_else(|| {
                        Error::config("a new Device Registry namespace needs a \"location\"")
                    })?;
                    (
                        cloud.create_device_registry_namespace(name, location)?,
                        StatusCode::CREATED,
                    )
                }
            };
            Ok(Reply::json(status, namespace_json(base, &ns, context)))
        }
        (&Method::GET | &Method::PATCH, [_]) => Ok(Reply::json(
            StatusCode::OK,
            namespace_json(base, looked_up()?, context),
        )),
        (&Method::DELETE, [_]) => {
            cloud.delete_device_registry_namespace(rest[0])?;
            Ok(Reply::empty(StatusCode::OK))
        }
        (&Method::GET, [_, "credentials"]) => {
            let ns = looked_up()?;
            Ok(page(request, context, vec![credential_json(base, ns)]))
        }
        // The root CA is made with the namespace (the emulator's namespaces all have
        // certificate management on), so a PUT or PATCH of the credential finds it made.
        (&Method::GET | &Method::PUT | &Method::PATCH, [_, "credentials", _]) if is_default(2) => {
            let ns = looked_up()?;
            Ok(Reply::json(StatusCode::OK, credential_json(base, ns)))
        }
        // Credential sync: the emulator's hubs trust a namespace's issuing CAs from the moment
        // they are linked or a policy is made, so there is nothing left to push. The action's
        // ARM path is UNCONFIRMED (`az iot adr ns credential sync` was not traced to its
        // request); this is the likely one.
        (&Method::POST, [_, "credentials", _, "synchronize"]) if is_default(2) => {
            Ok(Reply::empty(StatusCode::OK))
        }
        (&Method::GET, [_, "credentials", _, "policies"]) if is_default(2) => {
            let ns = looked_up()?;
            let items = cloud
                .credential_policies(&ns.name)?
                .iter()
                .map(|p| policy_resource_json(base, &ns.location, p))
                .collect();
            Ok(page(request, context, items))
        }
        (_, [_, "credentials", _, "policies", _]) if is_default(2) => {
            let ns = looked_up()?;
            let policy = rest[4];
            let existing = cloud.credential_policy(&ns.name, policy).ok();
            match (method, existing) {
                (&Method::GET, Some(p)) => Ok(Reply::json(
                    StatusCode::OK,
                    policy_resource_json(base, &ns.location, &p),
                )),
                (&Method::DELETE, Some(_)) => {
                    cloud.delete_credential_policy(&ns.name, policy)?;
                    Ok(Reply::empty(StatusCode::OK))
                }
                (&Method::DELETE, None) => Ok(Reply::empty(StatusCode::NO_CONTENT)),
                (&Method::PUT | &Method::PATCH, current) => {
                    if current.is_none()
                        && let Err(e) = crate::protocol::validate_policy_name(policy)
                    {
                        return Ok(invalid_name(&e));
                    }
                    let body = parse_json(request.body)?;
                    let certificate = &body["properties"]["certificate"];
                    let days = match &certificate["leafCertificateConfiguration"]["validityPeriodInDays"]
                    {
                        Value::Null => None,
                        v => Some(v.as_u64().and_then(|d| u32::try_from(d).ok()).ok_or_else(
                            || {
                                Error::config(
                                    "leafCertificateConfiguration.validityPeriodInDays must be \
                                     a whole number of days",
                                )
                            },
                        )?),
                    };
                    let key_type = certificate["certificateAuthorityConfiguration"]["keyType"]
                        .as_str()
                        .unwrap_or("ECC");
                    let (record, status) = match current {
                        Some(current) => {
                            if key_type != current.key_type {
                                return Ok(arm_error(
                                    400,
                                    "InvalidRequestContent",
                                    "certificateAuthorityConfiguration.keyType is set at \
                                     creation and cannot change",
                                ));
                            }
                            let days = days.unwrap_or(current.validity_days);
                            (
                                cloud.set_credential_policy_validity(&ns.name, policy, days)?,
                                StatusCode::OK,
                            )
                        }
                        None if *method == Method::PATCH => {
                            return Ok(registry_not_found("policies", policy, group));
                        }
                        None => (
                            cloud.create_credential_policy(
                                &ns.name,
                                policy,
                                days.unwrap_or(crate::limits::DEFAULT_POLICY_VALIDITY_DAYS),
                                key_type,
                            )?,
                            StatusCode::CREATED,
                        ),
                    };
                    Ok(Reply::json(
                        status,
                        policy_resource_json(base, &ns.location, &record),
                    ))
                }
                (_, None) => Ok(registry_not_found("policies", policy, group)),
                _ => Ok(arm_error(
                    405,
                    "405000",
                    "the emulator does not serve this operation",
                )),
            }
        }
        (_, [_, "credentials", ..]) => Ok(registry_not_found(
            "namespaces/credentials",
            rest.get(2).copied().unwrap_or_default(),
            group,
        )),
        _ => Ok(arm_error(
            405,
            "405000",
            "the emulator does not serve this operation",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn certificates_arrive_as_pem_base64_der_or_base64_pem() {
        let options = crate::pki::CaOptions {
            algorithm: crate::pki::KeyAlgorithm::EcP256,
            validity: crate::pki::Validity::days(1, None).unwrap(),
            path_length: None,
            organization: None,
        };
        let ca = crate::pki::CertificateAuthority::create_root("Forms Root", &options).unwrap();
        let cert = ca.credential().certificate();
        let b64 = base64::engine::general_purpose::STANDARD;
        for text in [
            cert.pem(),
            b64.encode(cert.der()),
            b64.encode(cert.pem().as_bytes()),
            // Wrapped at 64 columns, as some tools write it.
            b64.encode(cert.der())
                .as_bytes()
                .chunks(64)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("\n"),
        ] {
            assert_eq!(certificate_from_text(&text).unwrap().der(), cert.der());
        }
        assert!(certificate_from_text("not a certificate").is_err());
        assert!(certificate_from_text(&b64.encode(b"garbage")).is_err());
    }
}
