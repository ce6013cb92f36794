//! The IoT Hub service API: device identities, twins, queries, direct methods, with an
//! `iothubowner` SAS token; plus the emulator's own telemetry call (Azure offers that over its
//! Event Hub-compatible endpoint only; cloud-to-device messages go over AMQP, `c2d.rs`). Identities and twins are read as the caller's serde type
//! (`protocol::hub_service`'s, or any other serde value), refused when they do not read; a
//! method's result and the emulator's answers as `protocol::hub_service`'s, the types the
//! emulator writes them with.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::protocol::hub_service::{MethodResult, StoredTelemetry, Twin};
use crate::service::dps::{SasCredential, SasRestClient, read, read_all};
use crate::transport::Trust;

/// The hub service api-version.
pub(crate) const HUB_SERVICE_API_VERSION: &str = "2021-04-12";

/// Longest time IoT Hub waits for a device's method response (`responseTimeoutInSeconds`
/// ranges over 5..=300; Azure answers 400 past it).
pub(crate) const MAX_METHOD_RESPONSE_TIMEOUT: Duration =
    Duration::from_secs(crate::limits::MAX_METHOD_RESPONSE_TIMEOUT_SECONDS);
/// Shortest method response timeout IoT Hub takes; shorter ones are raised to it.
pub(crate) const MIN_METHOD_RESPONSE_TIMEOUT: Duration =
    Duration::from_secs(crate::limits::MIN_METHOD_RESPONSE_TIMEOUT_SECONDS);

/// The body of a direct method call as the official SDKs and the CLI send it: a `null`
/// payload is left out rather than sent, and the timeout is refused past Azure's 300 s before
/// any request (`Config`).
pub(crate) fn method_request_body(
    method: &str,
    payload: &Value,
    timeout: Duration,
) -> Result<Value> {
    if timeout > MAX_METHOD_RESPONSE_TIMEOUT {
        return Err(Error::config(format!(
            "a method response timeout of {} s is past IoT Hub's {} s",
            timeout.as_secs_f64(),
            MAX_METHOD_RESPONSE_TIMEOUT.as_secs()
        )));
    }
    // Whole seconds, rounded up so a fractional timeout is never shortened.
    let seconds = timeout
        .max(MIN_METHOD_RESPONSE_TIMEOUT)
        .as_secs_f64()
        .ceil() as u64;
    let mut body = json!({
        "methodName": method,
        "responseTimeoutInSeconds": seconds,
        "connectTimeoutInSeconds": 0,
    });
    if !payload.is_null() {
        body["payload"] = payload.clone();
    }
    Ok(body)
}

/// A device identity as the hub's query API lists it: what its twin carries (no keys; a
/// device's keys come from [`HubServiceClient::device`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSummary {
    /// The device id.
    pub device_id: String,
    /// `sas`, `selfSigned`, `certificateAuthority` or `none`, as the twin's
    /// `authenticationType` says.
    pub authentication: String,
    /// The primary X.509 thumbprint of a `selfSigned` device.
    pub primary_thumbprint: Option<String>,
    /// `Connected` or `Disconnected`.
    pub connection_state: String,
}

/// A device-to-cloud message the emulator's hub stored, as its telemetry call returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// Arrival sequence number (increasing).
    pub sequence: u64,
    /// The device that sent it.
    pub device_id: String,
    /// When the hub enqueued it, Unix seconds with fractions.
    pub enqueued_time: f64,
    /// The body bytes.
    pub body: Vec<u8>,
    /// Application properties, in the order sent.
    pub properties: Vec<(String, String)>,
    /// System properties (`mid`, `ct`, `ce`, ...), without the `$.` prefix.
    pub system_properties: Vec<(String, String)>,
}

impl TryFrom<StoredTelemetry> for StoredMessage {
    type Error = Error;

    /// One item of the telemetry call's answer; a sequence below 0 or a body that is not base64
    /// is a `Protocol` error, never a default.
    fn try_from(item: StoredTelemetry) -> Result<Self> {
        let bad = |field: &str| Error::protocol(format!("a stored message lacks a valid {field}"));
        Ok(StoredMessage {
            sequence: u64::try_from(item.sequence).map_err(|_| bad("sequence"))?,
            device_id: item.device_id,
            enqueued_time: item.enqueued_time,
            body: BASE64.decode(&item.body).map_err(|_| bad("body"))?,
            properties: item.properties,
            system_properties: item.system_properties,
        })
    }
}

impl From<Twin> for DeviceSummary {
    /// What a twin of `SELECT * FROM devices` says of its identity; a twin without
    /// `authenticationType` is a `sas` device's, without `connectionState` a disconnected one
    /// (the service's defaults).
    fn from(twin: Twin) -> Self {
        DeviceSummary {
            device_id: twin.device_id,
            authentication: twin.authentication_type.unwrap_or_else(|| "sas".into()),
            primary_thumbprint: twin.x509_thumbprint.and_then(|t| t.primary_thumbprint),
            connection_state: twin
                .connection_state
                .unwrap_or_else(|| "Disconnected".into()),
        }
    }
}

/// A client of one hub's service API.
#[derive(Debug)]
pub struct HubServiceClient {
    rest: SasRestClient,
}

fn path_id(id: &str) -> String {
    crate::sas::url_encode(id)
}

impl HubServiceClient {
    /// From the `iothubowner` connection string. `endpoint` overrides `https://{HostName}` (the
    /// emulator serves every hub's API on its one HTTPS port).
    pub fn from_connection_string(
        connection_string: &str,
        endpoint: Option<&str>,
        trust: &Trust,
    ) -> Result<Self> {
        let credential = SasCredential::from_connection_string(connection_string, "IoT hub")?;
        Ok(HubServiceClient {
            rest: SasRestClient::new(credential, endpoint, HUB_SERVICE_API_VERSION, trust)?,
        })
    }

    /// A device identity, read as `T` (`protocol::hub_service::DeviceIdentity`, or any
    /// serde value).
    pub async fn device<T: DeserializeOwned>(&self, id: &str) -> Result<T> {
        let what = format!("reading device {id}");
        let answer = self
            .rest
            .json(
                reqwest::Method::GET,
                &format!("/devices/{}", path_id(id)),
                None,
                None,
                &what,
            )
            .await?;
        read(answer, &what)
    }

    /// Creates or replaces a device identity (`authentication` as the service takes it).
    pub async fn put_device<T: DeserializeOwned>(&self, id: &str, body: &Value) -> Result<T> {
        let what = format!("writing device {id}");
        let answer = self
            .rest
            .json(
                reqwest::Method::PUT,
                &format!("/devices/{}", path_id(id)),
                Some(body),
                None,
                &what,
            )
            .await?;
        read(answer, &what)
    }

    /// Deletes a device identity.
    pub async fn delete_device(&self, id: &str) -> Result<()> {
        let what = format!("deleting device {id}");
        self.rest
            .no_content(
                reqwest::Method::DELETE,
                &format!("/devices/{}", path_id(id)),
                Some("*"),
                &what,
            )
            .await
    }

    /// Every device twin (`SELECT * FROM devices`), each read as `T`
    /// (`protocol::hub_service::Twin`, or any serde value).
    pub async fn twins<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.select("SELECT * FROM devices", "listing device twins")
            .await
    }

    /// The twins an IoT Hub query selects (`SELECT * FROM devices WHERE ...`), every page
    /// (followed through `x-ms-continuation`), each read as `T`.
    pub async fn query<T: DeserializeOwned>(&self, query: &str) -> Result<Vec<T>> {
        self.select(query, "querying device twins").await
    }

    async fn select<T: DeserializeOwned>(&self, query: &str, what: &str) -> Result<Vec<T>> {
        let body = json!({ "query": query });
        let items = self
            .rest
            .query_all("/devices/query", Some(&body), what)
            .await?;
        read_all(items, what)
    }

    /// Every device identity of the hub, from its twins: one query call per page of 100
    /// (Azure's query API, followed through `x-ms-continuation`), not a read per device.
    /// "Get Devices" (`GET /devices?top=`) would carry the keys but stops at 1,000 devices
    /// with no way on, and Azure recommends the query instead.
    pub async fn devices(&self) -> Result<Vec<DeviceSummary>> {
        let twins: Vec<Twin> = self.twins().await?;
        Ok(twins.into_iter().map(DeviceSummary::from).collect())
    }

    /// A device twin, read as `T` (`protocol::hub_service::Twin`, or any serde value).
    pub async fn twin<T: DeserializeOwned>(&self, id: &str) -> Result<T> {
        let what = format!("reading the twin of {id}");
        let answer = self
            .rest
            .json(
                reqwest::Method::GET,
                &format!("/twins/{}", path_id(id)),
                None,
                None,
                &what,
            )
            .await?;
        read(answer, &what)
    }

    /// Merges `patch` (`{"tags": ..., "properties": {"desired": ...}}`) into a twin; returns
    /// the twin, read as `T`.
    pub async fn patch_twin<T: DeserializeOwned>(&self, id: &str, patch: &Value) -> Result<T> {
        let what = format!("updating the twin of {id}");
        let answer = self
            .rest
            .json(
                reqwest::Method::PATCH,
                &format!("/twins/{}", path_id(id)),
                Some(patch),
                Some("*"),
                &what,
            )
            .await?;
        read(answer, &what)
    }

    /// Invokes a direct method and returns the device's status and payload. `timeout` is the
    /// device's time to answer: at most 300 s, as on Azure (`Config` error past it).
    pub async fn invoke_method(
        &self,
        id: &str,
        method: &str,
        payload: &Value,
        timeout: Duration,
    ) -> Result<(u16, Value)> {
        let what = format!("invoking {method} on {id}");
        let body = method_request_body(method, payload, timeout)?;
        let answer = self
            .rest
            .json(
                reqwest::Method::POST,
                &format!("/twins/{}/methods", path_id(id)),
                Some(&body),
                None,
                &what,
            )
            .await?;
        let result: MethodResult = read(answer, &what)?;
        Ok((result.status, result.payload))
    }

    /// Emulator only: the telemetry the hub stored, in arrival order.
    pub async fn telemetry(&self, device_id: Option<&str>) -> Result<Vec<StoredMessage>> {
        let path = match device_id {
            Some(id) => format!("/dpskit/telemetry?deviceId={}", path_id(id)),
            None => "/dpskit/telemetry".to_string(),
        };
        let answer = self
            .rest
            .send(
                reqwest::Method::GET,
                &path,
                None,
                &[],
                crate::service::Replay::Safe,
                "reading telemetry",
            )
            .await?;
        let items: Vec<StoredTelemetry> = match answer.body {
            Some(body) => read(body, "reading telemetry")?,
            None => Vec::new(),
        };
        items.into_iter().map(StoredMessage::try_from).collect()
    }
}

#[cfg(test)]
mod tests {
    //! The direct-method body as the official SDKs send it, and Azure's timeout range; what a
    //! stored message refuses.

    use super::*;

    #[test]
    fn method_bodies_leave_a_null_payload_out_and_keep_azures_timeout_range() {
        let body = method_request_body("reboot", &Value::Null, Duration::from_secs(30)).unwrap();
        assert_eq!(
            body,
            json!({"methodName": "reboot", "responseTimeoutInSeconds": 30, "connectTimeoutInSeconds": 0})
        );
        let body =
            method_request_body("set", &json!({"a": null}), Duration::from_millis(1500)).unwrap();
        // An explicit payload is sent as given; a short timeout is raised to Azure's 5 s.
        assert_eq!(body["payload"], json!({"a": null}));
        assert_eq!(body["responseTimeoutInSeconds"], 5);
        let body = method_request_body("m", &json!(1), Duration::from_secs_f64(299.5)).unwrap();
        assert_eq!(body["responseTimeoutInSeconds"], 300);
        assert!(method_request_body("m", &json!(1), MAX_METHOD_RESPONSE_TIMEOUT).is_ok());
        for past in [Duration::from_secs_f64(300.5), Duration::from_secs(3600)] {
            let error = method_request_body("m", &json!(1), past).unwrap_err();
            assert!(matches!(error, Error::Config(_)), "{error:?}");
            assert!(error.to_string().contains("300"), "{error}");
        }
    }

    #[test]
    fn a_stored_message_with_a_negative_sequence_or_a_body_not_base64_is_refused() {
        let item = |sequence: i64, body: &str| StoredTelemetry {
            sequence,
            device_id: "d".into(),
            module_id: None,
            enqueued_time: 1.0,
            body: body.into(),
            properties: Vec::new(),
            system_properties: Vec::new(),
        };
        let message = StoredMessage::try_from(item(3, "aGk=")).unwrap();
        assert_eq!((message.sequence, message.body), (3, b"hi".to_vec()));
        for (bad, field) in [
            (item(-1, "aGk="), "sequence"),
            (item(1, "not base64!"), "body"),
        ] {
            let error = StoredMessage::try_from(bad).unwrap_err();
            assert!(matches!(error, Error::Protocol(_)), "{error:?}");
            assert!(error.to_string().contains(field), "{error}");
        }
    }
}
