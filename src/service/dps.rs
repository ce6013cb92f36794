//! The DPS service (data-plane) API: enrollment groups, individual enrollments, registration
//! states. Authenticates with a `provisioningserviceowner` SAS token built from the connection
//! string, renewed before it expires. Bodies and answers are the service API's serde types
//! (`protocol::dps_service`, which the emulator answers with too) or any other serde value:
//! the Python layer passes its dicts through as JSON, so nothing is lost between Azure and the
//! caller. An enrollment body naming a Device Registry policy is sent with the api-version that
//! carries the reference (`credentialPolicyName`: 2025-07-01-preview; the three names:
//! 2026-11-01).

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::protocol::dps_service::QuerySpecification;
use crate::service::arm::connection_string_part;
use crate::service::{Replay, RetryPolicy, failure, http_client, transport};
use crate::transport::Trust;

/// The service api-version (the default of `azure-iot-deviceprovisioning` and the CLI).
pub(crate) const DPS_SERVICE_API_VERSION: &str = "2021-10-01";
/// Tokens live this long; a new one is made when less than a tenth is left.
const TOKEN_TTL_SECONDS: i64 = 3600;

/// A SAS credential from a connection string, with its current token.
pub(crate) struct SasCredential {
    host: String,
    key_name: String,
    key: String,
    token: Mutex<Option<(String, i64)>>,
}

impl SasCredential {
    /// Reads `HostName`, `SharedAccessKeyName` and `SharedAccessKey`.
    pub(crate) fn from_connection_string(connection_string: &str, what: &str) -> Result<Self> {
        let part = |key: &str| {
            connection_string_part(connection_string, key)
                .ok_or_else(|| Error::config(format!("the {what} connection string has no {key}")))
        };
        Ok(SasCredential {
            host: part("HostName")?,
            key_name: part("SharedAccessKeyName")?,
            key: part("SharedAccessKey")?,
            token: Mutex::new(None),
        })
    }

    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// A valid token for the host, signed with the policy key.
    pub(crate) fn token(&self) -> Result<String> {
        let now = crate::clock::now();
        let mut cached = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, expiry)) = cached.as_ref()
            && expiry - now > TOKEN_TTL_SECONDS / 10
        {
            return Ok(token.clone());
        }
        let expiry = now + TOKEN_TTL_SECONDS;
        let token = crate::sas::build_token(&self.host, &self.key, expiry, Some(&self.key_name))?;
        *cached = Some((token.clone(), expiry));
        Ok(token)
    }
}

impl std::fmt::Debug for SasCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SasCredential")
            .field("host", &self.host)
            .field("key_name", &self.key_name)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Sends JSON requests with a SAS token to one service endpoint.
#[derive(Debug)]
pub(crate) struct SasRestClient {
    http: reqwest::Client,
    endpoint: String,
    api_version: &'static str,
    credential: SasCredential,
    retry: RetryPolicy,
}

/// A JSON answer with the headers a caller may need.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) body: Option<Value>,
    pub(crate) continuation: Option<String>,
}

impl SasRestClient {
    pub(crate) fn new(
        credential: SasCredential,
        endpoint: Option<&str>,
        api_version: &'static str,
        trust: &Trust,
    ) -> Result<Self> {
        let endpoint = match endpoint {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => format!("https://{}", credential.host()),
        };
        Ok(SasRestClient {
            http: http_client(trust, Duration::from_secs(330))?,
            endpoint,
            api_version,
            credential,
            retry: RetryPolicy::default(),
        })
    }

    /// Sends one request by the retry policy; `replay` says whether a 5xx or a broken
    /// connection may be retried (a 429 always is).
    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
        replay: Replay,
        what: &str,
    ) -> Result<Answer> {
        // A path naming its own api-version (a member only a newer version carries) keeps it.
        let url = if path.contains("api-version=") {
            format!("{}{path}", self.endpoint)
        } else {
            let separator = if path.contains('?') { '&' } else { '?' };
            format!(
                "{}{path}{separator}api-version={}",
                self.endpoint, self.api_version
            )
        };
        let response = self
            .retry
            .send(replay, what, || {
                let mut request = self
                    .http
                    .request(method.clone(), &url)
                    .header(reqwest::header::AUTHORIZATION, self.credential.token()?)
                    .header(reqwest::header::ACCEPT, "application/json");
                for (name, value) in headers {
                    request = request.header(*name, value);
                }
                Ok(match body {
                    Some(body) => request.json(body),
                    None => request.header(reqwest::header::CONTENT_LENGTH, "0"),
                })
            })
            .await?;
        if !response.status().is_success() {
            return Err(failure(response, what).await);
        }
        let continuation = response
            .headers()
            .get("x-ms-continuation")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        let text = response.text().await.map_err(|e| transport(what, e))?;
        let body = if text.trim().is_empty() {
            None
        } else {
            Some(serde_json::from_str(&text).map_err(|e| {
                Error::protocol_caused(format!("{what}: the answer is not JSON"), e)
            })?)
        };
        Ok(Answer { body, continuation })
    }

    pub(crate) async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
        what: &str,
    ) -> Result<Value> {
        let headers: Vec<(&str, String)> = if_match
            .map(|t| vec![("If-Match", t.to_string())])
            .unwrap_or_default();
        let replay = replay_for(&method);
        self.send(method, path, body, &headers, replay, what)
            .await?
            .body
            .ok_or_else(|| Error::protocol(format!("{what}: empty answer")))
    }

    pub(crate) async fn no_content(
        &self,
        method: reqwest::Method,
        path: &str,
        if_match: Option<&str>,
        what: &str,
    ) -> Result<()> {
        let headers: Vec<(&str, String)> = if_match
            .map(|t| vec![("If-Match", t.to_string())])
            .unwrap_or_default();
        let replay = replay_for(&method);
        self.send(method, path, None, &headers, replay, what)
            .await
            .map(|_| ())
    }

    /// A query: POSTs `body` and follows `x-ms-continuation` until every page is in.
    pub(crate) async fn query_all(
        &self,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let mut headers = vec![("x-ms-max-item-count", "100".to_string())];
            if let Some(c) = &continuation {
                headers.push(("x-ms-continuation", c.clone()));
            }
            let answer = self
                // A query reads: repeating it is harmless.
                .send(
                    reqwest::Method::POST,
                    path,
                    body,
                    &headers,
                    Replay::Safe,
                    what,
                )
                .await?;
            match answer.body {
                Some(Value::Array(page)) => items.extend(page),
                Some(other) => {
                    return Err(Error::protocol(format!(
                        "{what}: expected an array, got {other}"
                    )));
                }
                None => {}
            }
            match answer.continuation {
                Some(next) if Some(&next) != continuation.as_ref() => continuation = Some(next),
                _ => return Ok(items),
            }
        }
    }
}

/// What may be repeated after an unknown outcome: everything but a POST (the POSTs that
/// only read say so at their call).
fn replay_for(method: &reqwest::Method) -> Replay {
    if method == reqwest::Method::POST {
        Replay::ThrottledOnly
    } else {
        Replay::Safe
    }
}

/// A client of one DPS instance's service API.
#[derive(Debug)]
pub struct DpsServiceClient {
    rest: SasRestClient,
}

fn path_id(id: &str) -> String {
    crate::sas::url_encode(id)
}

/// An enrollment (group or individual) body as Azure takes it: `attestation` present (Azure
/// answers 400 without it, an update included: re-send the one a GET or
/// `attestationmechanism` returned), top-level `null`s left out as the CLI leaves them.
pub(crate) fn enrollment_body<B: Serialize + ?Sized>(body: &B, what: &str) -> Result<Value> {
    let body = to_json(body, what)?;
    if body.get("attestation").is_none_or(Value::is_null) {
        return Err(Error::config(format!(
            "{what}: the body has no \"attestation\"; Azure requires it in every enrollment \
             PUT (to keep the current one, send back what a GET or attestationmechanism returned)"
        )));
    }
    Ok(crate::service::omit_nulls(body, false))
}

/// `path` with the api-version the body's certificate policy reference needs, if it has one
/// (`credentialPolicyName`: 2025-07-01-preview; the three names: 2026-11-01).
fn versioned(path: String, body: &Value) -> String {
    match crate::protocol::dps_service::policy_api_version(body) {
        Some(version) => format!("{path}?api-version={version}"),
        None => path,
    }
}

/// A request body as JSON.
fn to_json<B: Serialize + ?Sized>(body: &B, what: &str) -> Result<Value> {
    serde_json::to_value(body).map_err(|e| Error::config_caused(format!("{what}: the body"), e))
}

/// An answer as the type the caller reads it as.
pub(crate) fn read<T: DeserializeOwned>(answer: Value, what: &str) -> Result<T> {
    serde_json::from_value(answer)
        .map_err(|e| Error::protocol_caused(format!("{what}: the answer does not read"), e))
}

/// Every item of a query's answer as the type the caller reads it as.
pub(crate) fn read_all<T: DeserializeOwned>(items: Vec<Value>, what: &str) -> Result<Vec<T>> {
    items.into_iter().map(|item| read(item, what)).collect()
}

impl DpsServiceClient {
    /// From the `provisioningserviceowner` connection string. `endpoint` overrides
    /// `https://{HostName}` (never needed for Azure).
    pub fn from_connection_string(
        connection_string: &str,
        endpoint: Option<&str>,
        trust: &Trust,
    ) -> Result<Self> {
        let credential = SasCredential::from_connection_string(connection_string, "DPS service")?;
        Ok(DpsServiceClient {
            rest: SasRestClient::new(credential, endpoint, DPS_SERVICE_API_VERSION, trust)?,
        })
    }

    /// Creates or replaces an enrollment group (`If-Match` guards a replace).
    pub async fn put_enrollment_group<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        id: &str,
        body: &B,
        if_match: Option<&str>,
    ) -> Result<T> {
        let what = format!("writing enrollment group {id}");
        let body = enrollment_body(body, &what)?;
        let answer = self
            .rest
            .json(
                reqwest::Method::PUT,
                &versioned(format!("/enrollmentGroups/{}", path_id(id)), &body),
                Some(&body),
                if_match,
                &what,
            )
            .await?;
        read(answer, &what)
    }

    /// One enrollment group.
    pub async fn enrollment_group<T: DeserializeOwned>(&self, id: &str) -> Result<T> {
        let what = format!("reading enrollment group {id}");
        let answer = self
            .rest
            .json(
                reqwest::Method::GET,
                &format!("/enrollmentGroups/{}", path_id(id)),
                None,
                None,
                &what,
            )
            .await?;
        read(answer, &what)
    }

    /// Every enrollment group.
    pub async fn enrollment_groups<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        let what = "listing enrollment groups";
        let query = to_json(&QuerySpecification::all(), what)?;
        let items = self
            .rest
            .query_all("/enrollmentGroups/query", Some(&query), what)
            .await?;
        read_all(items, what)
    }

    /// Deletes an enrollment group.
    pub async fn delete_enrollment_group(&self, id: &str, if_match: Option<&str>) -> Result<()> {
        let what = format!("deleting enrollment group {id}");
        self.rest
            .no_content(
                reqwest::Method::DELETE,
                &format!("/enrollmentGroups/{}", path_id(id)),
                if_match,
                &what,
            )
            .await
    }

    /// A group's attestation with its keys (symmetric-key groups).
    pub async fn enrollment_group_attestation<T: DeserializeOwned>(&self, id: &str) -> Result<T> {
        let what = format!("reading the attestation of enrollment group {id}");
        let path = format!("/enrollmentGroups/{}/attestationmechanism", path_id(id));
        let answer = self
            .rest
            .json(reqwest::Method::POST, &path, None, None, &what)
            .await?;
        read(answer, &what)
    }

    /// Creates or replaces an individual enrollment.
    pub async fn put_enrollment<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        id: &str,
        body: &B,
        if_match: Option<&str>,
    ) -> Result<T> {
        let what = format!("writing enrollment {id}");
        let body = enrollment_body(body, &what)?;
        let answer = self
            .rest
            .json(
                reqwest::Method::PUT,
                &versioned(format!("/enrollments/{}", path_id(id)), &body),
                Some(&body),
                if_match,
                &what,
            )
            .await?;
        read(answer, &what)
    }

    /// One individual enrollment.
    pub async fn enrollment<T: DeserializeOwned>(&self, id: &str) -> Result<T> {
        let what = format!("reading enrollment {id}");
        let answer = self
            .rest
            .json(
                reqwest::Method::GET,
                &format!("/enrollments/{}", path_id(id)),
                None,
                None,
                &what,
            )
            .await?;
        read(answer, &what)
    }

    /// Every individual enrollment.
    pub async fn enrollments<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        let what = "listing enrollments";
        let query = to_json(&QuerySpecification::all(), what)?;
        let items = self
            .rest
            .query_all("/enrollments/query", Some(&query), what)
            .await?;
        read_all(items, what)
    }

    /// Deletes an individual enrollment.
    pub async fn delete_enrollment(&self, id: &str, if_match: Option<&str>) -> Result<()> {
        let what = format!("deleting enrollment {id}");
        self.rest
            .no_content(
                reqwest::Method::DELETE,
                &format!("/enrollments/{}", path_id(id)),
                if_match,
                &what,
            )
            .await
    }

    /// A device's registration state.
    pub async fn registration<T: DeserializeOwned>(&self, id: &str) -> Result<T> {
        let what = format!("reading the registration of {id}");
        let answer = self
            .rest
            .json(
                reqwest::Method::GET,
                &format!("/registrations/{}", path_id(id)),
                None,
                None,
                &what,
            )
            .await?;
        read(answer, &what)
    }

    /// Deletes a registration state (the device may register again as new).
    pub async fn delete_registration(&self, id: &str, if_match: Option<&str>) -> Result<()> {
        let what = format!("deleting the registration of {id}");
        self.rest
            .no_content(
                reqwest::Method::DELETE,
                &format!("/registrations/{}", path_id(id)),
                if_match,
                &what,
            )
            .await
    }

    /// The registration states of a group's devices (the service wants an empty body).
    pub async fn registrations<T: DeserializeOwned>(&self, group_id: &str) -> Result<Vec<T>> {
        let what = format!("listing the registrations of group {group_id}");
        let path = format!("/registrations/{}/query", path_id(group_id));
        let items = self.rest.query_all(&path, None, &what).await?;
        read_all(items, &what)
    }
}
