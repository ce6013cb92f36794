//! The emulator's REST APIs: the Azure Resource Manager subset a DPS walkthrough uses
//! (hubs, DPS instances, linked hubs, CA certificates and proof of possession, keys, quota
//! metrics; `arm.rs`), the DPS service API (`dps_service.rs`) and the hub service API
//! (`hub_service.rs`), with Azure's paths, bodies, dates, etags and error shapes, so that
//! dpskit's REST clients and the official SDKs work against it. Every request is translated into
//! [`Cloud`] and engine operations.
//!
//! Each API is served where Azure serves it ([`Entrance`]): ARM on the management port (this
//! module's listener, `management.azure.com`'s stand-in), the service APIs on port 443 of each
//! resource's own address (`web.rs`): a hub's host for its service API, the DPS address for
//! the DPS service API (`serviceOperationsHostName`). A request at the wrong door is a 404.
//!
//! Nothing a client sends is trusted before it is authenticated: the ARM bearer token and the
//! service APIs' SAS tokens (`sr` scope, `skn` policy and its rights) are checked on the headers
//! alone, and a refused request is answered (and its connection closed) without reading its
//! body. Connections are capped ([`RestLimits`](crate::emulator::RestLimits)), headers and bodies
//! have deadlines, so slow or stalled clients cannot starve the listener.
//!
//! Time as Azure spends it ([`RestBehaviour`](crate::emulator::RestBehaviour)): ARM's creates
//! and deletes are long-running operations (`operations.rs`), its hub and DPS lists are paged,
//! and the one [`Throttle`] answers every Nth authenticated request of each API with a 429.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::emulator::Cloud;
use crate::emulator::model::SharedAccessPolicy;
use crate::error::Error;

/// The largest request body accepted (a certificate chain fits many times over).
const MAX_BODY: usize = 4 * 1024 * 1024;

mod arm;
mod dps_service;
mod hub_query;
mod hub_service;
mod operations;
pub(crate) mod recorder;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;

pub(crate) use operations::Operations;

/// The 429s the REST listener has answered, per API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThrottledRequests {
    /// Azure Resource Manager.
    pub arm: u64,
    /// The DPS service API (enrollments, registrations).
    pub dps_service: u64,
    /// The IoT Hub service API (identities, twins, methods).
    pub hub_service: u64,
}

/// Answers every Nth authenticated request of each API with Azure's 429, and counts them.
#[derive(Debug)]
pub(crate) struct Throttle {
    every: u32,
    retry_after: u32,
    /// Requests seen, per API (ARM, DPS service, hub service).
    seen: [std::sync::atomic::AtomicU64; 3],
    /// Requests throttled, per API.
    throttled: [std::sync::atomic::AtomicU64; 3],
}

impl Throttle {
    /// Every `every`th request (0: never), advising `retry_after` seconds.
    pub(crate) fn new(every: u32, retry_after: u32) -> Self {
        Throttle {
            every,
            retry_after,
            seen: Default::default(),
            throttled: Default::default(),
        }
    }

    /// The counts so far.
    pub(crate) fn counts(&self) -> ThrottledRequests {
        let count = |i: usize| self.throttled[i].load(std::sync::atomic::Ordering::Relaxed);
        ThrottledRequests {
            arm: count(0),
            dps_service: count(1),
            hub_service: count(2),
        }
    }

    /// The 429 for this request, in its API's error shape, when its turn has come.
    fn check(&self, caller: &Caller) -> Option<Reply> {
        if self.every == 0 {
            return None;
        }
        let api = match caller {
            Caller::Arm => 0,
            Caller::Dps(_) => 1,
            Caller::Hub(_) => 2,
        };
        let seen = self.seen[api].fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if !seen.is_multiple_of(u64::from(self.every)) {
            return None;
        }
        self.throttled[api].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let message = "The request was throttled: too many requests. Retry after the time in the Retry-After header.";
        let mut reply = match caller {
            // ARM's own throttling (it answers before the resource provider).
            Caller::Arm => arm_top_error(429, "TooManyRequests", message),
            Caller::Dps(_) => dps_service::throttled(message),
            Caller::Hub(_) => hub_service::throttled(message),
        };
        reply
            .headers
            .push(("retry-after", self.retry_after.to_string()));
        Some(reply)
    }
}

/// What the HTTPS listener serves from.
pub(crate) struct RestContext {
    /// Resources and their configuration.
    pub cloud: Arc<Cloud>,
    /// TLS with the emulator's server certificate (no client certificates).
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Twins, methods, C2D and telemetry of the hubs.
    pub hubs: Arc<crate::emulator::hub::HubEngine>,
    /// The DPS instances' rate presets (the service API's operations rate).
    pub dps_quotas: Arc<crate::emulator::quotas::DpsQuotas>,
    /// The MQTT listeners: a hub created over ARM must be reachable at once.
    pub listeners: Arc<crate::emulator::Listeners>,
    /// `host:port` of the management listener: the base of ARM's absolute URLs when a request
    /// names no usable `Host`.
    pub management_authority: String,
    /// Bearer tokens ARM accepts; `None` accepts any (only ever on loopback).
    pub arm_tokens: Option<Vec<String>>,
    /// The one subscription ARM answers for.
    pub subscription_id: String,
    /// The one resource group ARM answers for.
    pub resource_group: String,
    /// Connection cap, header and body deadlines.
    pub limits: crate::emulator::RestLimits,
    /// One permit per connection being served.
    pub slots: Arc<Semaphore>,
    /// ARM's long-running operations under way.
    pub operations: Operations,
    /// Hubs or DPS instances per page of ARM's lists.
    pub page_size: usize,
    /// Every Nth request answered 429.
    pub throttle: Arc<Throttle>,
    /// Records authenticated requests while a recording is active.
    pub recorder: Arc<recorder::RequestRecorder>,
}

impl RestContext {
    /// The port of HTTPS on each resource's own address: 443, or the fallback chosen when 443
    /// could not be bound.
    pub(crate) fn web_port(&self) -> u16 {
        self.listeners.web_port()
    }

    /// A resource's authority as its service clients dial it: `host`, or `host:port` when the
    /// web port is not 443 (and so must be named in connection strings).
    pub(crate) fn resource_authority(&self, host: &str) -> String {
        match self.web_port() {
            crate::emulator::WEB_PORT => host.to_string(),
            port => format!("{host}:{port}"),
        }
    }

    /// Every DPS's `serviceOperationsHostName`: the DPS's own address on the web port, as on
    /// Azure (`{name}.azure-devices-provisioning.net`), where the DPS service API is served.
    /// All DPS instances share it; the signature of a request's token tells them apart.
    pub(crate) fn dps_service_host(&self) -> String {
        self.resource_authority(self.cloud.dps_host())
    }
}

/// Which listener a request came in on: each serves only what its Azure counterpart does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entrance {
    /// The management port: ARM (`management.azure.com`).
    Management,
    /// Port 443 of a resource's own address: the hub and DPS service APIs.
    Resource,
}

/// Accepts HTTPS connections until the runtime stops.
pub(crate) async fn serve(listener: TcpListener, context: Arc<RestContext>) {
    let (slots, acceptor) = (context.slots.clone(), context.acceptor.clone());
    let header_timeout = context.limits.header_timeout;
    accept_tls(
        "HTTPS",
        listener,
        slots,
        acceptor,
        header_timeout,
        move |tls, peer| {
            let context = context.clone();
            async move {
                let service_context = context.clone();
                let service = hyper::service::service_fn(move |request| {
                    let context = service_context.clone();
                    async move {
                        let response = handle(request, Entrance::Management, &context).await;
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                if let Err(e) = http1(header_timeout)
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await
                {
                    log::debug!("emulator: HTTPS connection from {peer} ended: {e}");
                }
            }
        },
    )
    .await;
}

/// The accept loop of the HTTPS listeners (the management port and each resource's port
/// 443) and of the AMQP endpoint: at most `slots` connections at once (past the cap,
/// connections wait in the kernel's backlog rather than costing memory), TCP_NODELAY, the TLS
/// handshake within `header_timeout`, then `serve` on its own task. `protocol` names the
/// listener in the log.
pub(crate) async fn accept_tls<F, Fut>(
    protocol: &'static str,
    listener: TcpListener,
    slots: Arc<Semaphore>,
    acceptor: tokio_rustls::TlsAcceptor,
    header_timeout: Duration,
    serve: F,
) where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::net::SocketAddr) -> Fut
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (acceptor, serve) = (acceptor.clone(), serve.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve(tls, peer).await,
                Ok(Err(e)) => log::info!("emulator: {protocol} handshake with {peer} failed: {e}"),
                Err(_) => {}
            }
        });
    }
}

/// HTTP/1.1 as both HTTPS listeners serve it: header deadline, and half-close allowed (a
/// client may shut its side down once its request is out and still expects the answer).
pub(crate) fn http1(header_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .half_close(true);
    builder
}

/// A response body and status, before headers.
pub(super) struct Reply {
    pub(super) status: StatusCode,
    /// The JSON body, written when the reply is made (a reply is answered as soon as it is
    /// made, and the bytes are smaller to carry than the document).
    pub(super) body: Option<Bytes>,
    pub(super) etag: Option<String>,
    /// Further headers (`x-ms-error-code`, `x-ms-continuation`, ...).
    pub(super) headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub(super) fn json(status: StatusCode, body: Value) -> Self {
        Reply {
            status,
            body: Some(Bytes::from(body.to_string())),
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
        Error::Certificate(m) | Error::Config(m) => arm_error(400, "400004", &m.to_string()),
        other => arm_error(500, "500000", &other.to_string()),
    }
}

/// Who a request was authenticated as: the API it addresses, decided on its headers alone.
enum Caller {
    Arm,
    Hub(hub_service::HubCaller),
    Dps(crate::emulator::model::DpsRecord),
}

impl Caller {
    /// The API's label in recorded requests.
    fn api(&self) -> &'static str {
        match self {
            Caller::Arm => "arm",
            Caller::Hub(_) => "hub",
            Caller::Dps(_) => "dps",
        }
    }
}

/// The request's path, split on `/` and percent-decoded segment by segment.
fn path_segments(path: &str) -> Vec<String> {
    // Names arrive percent-encoded; the resources are known by their decoded names.
    path.trim_matches('/')
        .split('/')
        .map(|s| crate::sas::url_decode(s).unwrap_or_else(|_| s.to_string()))
        .collect()
}

/// Authenticates a request from its method, path and headers: which API it addresses and on
/// whose behalf, or the refusal to answer without reading the body.
fn authorize(
    parts: &hyper::http::request::Parts,
    segments: &[&str],
    entrance: Entrance,
    context: &RestContext,
) -> Result<Caller, Reply> {
    let path = parts.uri.path();
    let first = segments.first().map(|s| s.to_ascii_lowercase());
    match (entrance, first.as_deref()) {
        (Entrance::Resource, Some("devices" | "twins" | "statistics" | "messages" | "dpskit")) => {
            hub_service::authorize(parts, segments, context).map(Caller::Hub)
        }
        (Entrance::Resource, Some("enrollments" | "enrollmentgroups" | "registrations")) => {
            dps_service::authorize(parts, segments, context).map(Caller::Dps)
        }
        (Entrance::Management, Some("subscriptions")) => {
            authorize_arm(parts, segments, context).map(|()| Caller::Arm)
        }
        // As on Azure, where management.azure.com serves no device registry and a hub's
        // host no ARM: a client that mixes them up learns where to go.
        (Entrance::Management, Some(_)) => Err(arm_error(
            404,
            "404000",
            &format!(
                "no API is served at {path} on the management endpoint: the hub service API \
                 is at https://{{hub host}} and the DPS service API at https://{}",
                context.dps_service_host()
            ),
        )),
        _ => Err(arm_error(
            404,
            "404000",
            &format!("no API is served at {path}"),
        )),
    }
}

/// Answers one request: authenticated on its headers, then dispatched to its API if
/// `entrance` serves it. Shared by the management port and port 443 of each resource's address.
pub(crate) async fn handle(
    request: Request<Incoming>,
    entrance: Entrance,
    context: &RestContext,
) -> Response<Full<Bytes>> {
    let (mut parts, body) = request.into_parts();
    // The cloud's now, read once per request: SAS tokens expire in the cloud's time.
    parts
        .extensions
        .insert(RequestTime(context.cloud.clock().now()));
    let decoded = path_segments(parts.uri.path());
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let caller = match authorize(&parts, &segments, entrance, context) {
        Ok(caller) => caller,
        // The body stays unread: closing the connection is cheaper than draining an upload
        // nobody asked for.
        Err(reply) => return respond(reply, true),
    };
    let collected = tokio::time::timeout(
        context.limits.body_timeout,
        Limited::new(body, MAX_BODY).collect(),
    )
    .await;
    let body = match collected {
        Err(_) => {
            return respond(
                arm_error(408, "408000", "the request body did not arrive in time"),
                true,
            );
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return respond(
                arm_error(413, "413000", "the request body is larger than 4 MB"),
                true,
            );
        }
        Ok(Err(e)) => {
            return respond(
                arm_error(
                    400,
                    "400000",
                    &format!("the request body is incomplete: {e}"),
                ),
                true,
            );
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let api = caller.api();
    // Throttled after authentication (Azure counts a caller's requests) and after the body,
    // so the connection stays usable for the retry; recorded like any other answer.
    if let Some(reply) = context.throttle.check(&caller) {
        context
            .recorder
            .record(&parts, &body, api, reply.status.as_u16());
        return respond(reply, false);
    }
    let reply = match caller {
        // Service calls that may wait (direct methods) run on the connection's task.
        Caller::Hub(hub) => {
            let query = parts.uri.query().unwrap_or("");
            hub_service::handle(&parts, &segments, query, &body, &hub, context).await
        }
        Caller::Dps(dps) => dps_service::handle(&parts, &segments, &body, &dps, context),
        Caller::Arm => {
            let if_match = parts
                .headers
                .get(hyper::header::IF_MATCH)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let query = parts.uri.query().unwrap_or("");
            let api_version = crate::protocol::query_pairs(query)
                .find(|(k, _)| k.eq_ignore_ascii_case("api-version"))
                .map(|(_, v)| v.to_string())
                .unwrap_or_default();
            let request = arm::ArmRequest {
                method: &parts.method,
                segments: &segments,
                query,
                api_version: &api_version,
                body: &body,
                if_match: if_match.as_deref(),
                base_url: base_url(&parts, context),
            };
            arm::handle(&request, context)
        }
    };
    context
        .recorder
        .record(&parts, &body, api, reply.status.as_u16());
    respond(reply, false)
}

/// `https://{host}` as the client addressed this listener: the base of the absolute URLs ARM
/// hands out (operations to poll, next pages), so they reach the client's way in. A `Host`
/// that is not a plain host and port is ignored for the listener's own address.
fn base_url(parts: &hyper::http::request::Parts, context: &RestContext) -> String {
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or(&context.management_authority);
    format!("https://{host}")
}

/// The HTTP response for `reply`; `close` ends the connection after it.
fn respond(reply: Reply, close: bool) -> Response<Full<Bytes>> {
    let has_body = reply.body.is_some();
    let mut response = Response::new(Full::new(reply.body.unwrap_or_default()));
    *response.status_mut() = reply.status;
    if has_body {
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
    if close {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// ARM's checks on the headers: the bearer token, the api-version, and that the path names
/// the emulator's own subscription and resource group (Azure's 404s otherwise).
fn authorize_arm(
    parts: &hyper::http::request::Parts,
    segments: &[&str],
    context: &RestContext,
) -> Result<(), Reply> {
    let query = parts.uri.query().unwrap_or("");
    // On loopback with no configured token any bearer token passes: what matters for clients
    // is that they send one, as they must to Azure. Off loopback a token is always configured
    // (generated if need be, see `Emulator::start`).
    let bearer = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() > 7 && v.is_char_boundary(7) && v[..7].eq_ignore_ascii_case("bearer "))
        .map(|v| v[7..].trim());
    let accepted = match (&context.arm_tokens, bearer) {
        (_, None) => false,
        (None, Some(_)) => true,
        // Digests are compared, so the time taken tells nothing about the token's bytes.
        (Some(tokens), Some(token)) => {
            let digest = |t: &str| ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
            let sent = digest(token);
            tokens.iter().any(|t| digest(t).as_ref() == sent.as_ref())
        }
    };
    if !accepted {
        return Err(arm_error(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing, not a Bearer token, or not a token this emulator was configured to accept.",
        ));
    }
    let has_api_version = crate::protocol::query_pairs(query)
        .any(|(k, v)| k.eq_ignore_ascii_case("api-version") && !v.is_empty());
    if !has_api_version {
        return Err(arm_error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        ));
    }
    if let Some(subscription) = segments.get(1)
        && !subscription.eq_ignore_ascii_case(&context.subscription_id)
    {
        return Err(arm_top_error(
            404,
            "SubscriptionNotFound",
            &format!("The subscription '{subscription}' could not be found."),
        ));
    }
    if segments
        .get(2)
        .is_some_and(|s| s.eq_ignore_ascii_case("resourceGroups"))
        && let Some(group) = segments.get(3)
        && !group.eq_ignore_ascii_case(&context.resource_group)
    {
        return Err(arm_top_error(
            404,
            "ResourceGroupNotFound",
            &format!("Resource group '{group}' could not be found."),
        ));
    }
    Ok(())
}

/// An error from ARM itself rather than from the resource provider:
/// `{"error": {"code", "message"}}`.
pub(super) fn arm_top_error(status: u16, code: &str, message: &str) -> Reply {
    let mut reply = Reply::json(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        json!({"error": {"code": code, "message": message}}),
    );
    reply.headers.push(("x-ms-failure-cause", "gateway".into()));
    reply
}

/// Checks the request's SAS token (shared by the DPS and hub service APIs): the host part of
/// its `sr` picks the candidates (`(resource, host, policies)`), `skn` one of their policies,
/// whose primary or secondary key must have signed it. Rights and scope are the caller's.
/// The candidate whose policy signed the request's SAS token, once the token's `sr` covers the
/// resource at `segments` and its policy carries the right `required_right` names for the
/// method and lower-cased path (`None`: a valid signature is enough). `Err` says why not, for
/// the API's own 401 body (shared by the DPS and hub service APIs).
pub(super) fn sas_authorize<T>(
    parts: &hyper::http::request::Parts,
    api: &str,
    web_port: u16,
    segments: &[&str],
    candidates: impl IntoIterator<Item = (T, String, Vec<SharedAccessPolicy>)>,
    required_right: impl FnOnce(&hyper::Method, &[&str]) -> Option<&'static str>,
) -> Result<T, String> {
    let grant = sas_grant(parts, api, web_port, candidates)?;
    if !grant.covers(segments) {
        return Err(format!(
            "The SAS token's sr does not cover /{}.",
            segments.join("/")
        ));
    }
    let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    if let Some(right) = required_right(&parts.method, &lower)
        && !grant.policy.grants(right)
    {
        return Err(format!(
            "The shared access policy {} does not grant {right}.",
            grant.policy.key_name
        ));
    }
    Ok(grant.signer)
}

/// When a request arrived, on the cloud's clock (Unix seconds): put in the request's extensions
/// by [`handle`], so the SAS check under every API reads the same time without each API
/// passing it along.
#[derive(Debug, Clone, Copy)]
struct RequestTime(i64);

fn sas_grant<T>(
    parts: &hyper::http::request::Parts,
    api: &str,
    web_port: u16,
    candidates: impl IntoIterator<Item = (T, String, Vec<SharedAccessPolicy>)>,
) -> Result<crate::emulator::sas_policy::SasGrant<T>, String> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("The Authorization header is missing: send a {api} SAS token."))?;
    // A connection string naming a port (`HostName=host:port`, the local cloud's web port
    // when 443 could not be bound) makes the service SDKs sign `host:port`: the same resource,
    // on the port it is served at and no other.
    let now = parts
        .extensions
        .get::<RequestTime>()
        .ok_or_else(|| "The request's time was not recorded.".to_string())?
        .0;
    crate::emulator::sas_policy::grant(
        header,
        now,
        api,
        &[web_port, crate::emulator::WEB_PORT],
        &[],
        false,
        candidates,
    )
}

/// Unix seconds as an RFC 1123 date (`Sat, 31 Dec 2039 23:59:59 GMT`).
pub(crate) fn http_date(unix: i64) -> String {
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
