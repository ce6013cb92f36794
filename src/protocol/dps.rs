//! DPS's device vocabulary over MQTT: the CONNECT username and SAS audience, the response
//! subscription, the register and status-poll request topics, the response topic, and the
//! JSON those carry as serde types. The provisioning client builds requests and reads
//! responses with these; the emulator reads requests and builds responses with the same ones.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::query_value;
use crate::sas::{url_decode, url_encode};

/// The MQTT api-version DPS documents and the Python and C# SDKs send.
pub(crate) const API_VERSION: &str = "2019-03-31";

/// The api-version that carries a certificate signing request in the register body and an
/// issued chain in the answer (Azure's certificate management preview; the C and C# SDKs'
/// preview branches send it). Older versions never see either field.
pub(crate) const CSR_API_VERSION: &str = "2025-07-01-preview";

/// The one subscription DPS serves: every response arrives on it.
pub(crate) const RESPONSE_FILTER: &str = "$dps/registrations/res/#";

const REGISTER_PATH: &str = "$dps/registrations/PUT/iotdps-register";
const POLL_PATH: &str = "$dps/registrations/GET/iotdps-get-operationstatus";
const RESPONSE_PREFIX: &str = "$dps/registrations/res/";

/// The CONNECT username: `{idScope}/registrations/{registrationId}/api-version=...&
/// ClientVersion=...` (no `?`, as the Python and C SDKs write it).
pub(crate) fn username(id_scope: &str, registration_id: &str, client_version: &str) -> String {
    username_with(id_scope, registration_id, API_VERSION, client_version)
}

/// [`username`] with another api-version (a registration with a CSR sends [`CSR_API_VERSION`]).
pub(crate) fn username_with(
    id_scope: &str,
    registration_id: &str,
    api_version: &str,
    client_version: &str,
) -> String {
    format!(
        "{id_scope}/registrations/{registration_id}/api-version={api_version}&ClientVersion={}",
        url_encode(client_version)
    )
}

/// The resource a device's SAS token is signed for: `{idScope}/registrations/{registrationId}`.
pub(crate) fn sas_audience(id_scope: &str, registration_id: &str) -> String {
    format!("{id_scope}/registrations/{registration_id}")
}

/// A request a device publishes to DPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// `$dps/registrations/PUT/iotdps-register/?$rid=..`
    Register {
        /// The request id, exactly as sent (echoed back unchanged).
        rid: String,
    },
    /// `$dps/registrations/GET/iotdps-get-operationstatus/?$rid=..&operationId=..`
    Poll {
        /// The request id, exactly as sent.
        rid: String,
        /// The operation id, decoded (percent-encoded on the wire, as the Python SDK sends it).
        operation_id: String,
    },
}

impl Request {
    /// The topic this request is published on.
    pub(crate) fn topic(&self) -> String {
        match self {
            Request::Register { rid } => format!("{REGISTER_PATH}/?$rid={rid}"),
            Request::Poll { rid, operation_id } => format!(
                "{POLL_PATH}/?$rid={rid}&operationId={}",
                url_encode(operation_id)
            ),
        }
    }

    /// Reads a request topic; `None` for anything DPS does not serve (no `$rid`, a poll
    /// without an operation id, another path).
    pub(crate) fn parse(topic: &str) -> Option<Request> {
        let (path, query) = topic.split_once("/?")?;
        let rid = query_value(query, "$rid")?;
        if rid.is_empty() {
            return None;
        }
        match path {
            REGISTER_PATH => Some(Request::Register {
                rid: rid.to_string(),
            }),
            POLL_PATH => Some(Request::Poll {
                rid: rid.to_string(),
                operation_id: url_decode(query_value(query, "operationId")?).ok()?,
            }),
            _ => None,
        }
    }
}

/// The topic of a DPS response: `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={n}]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    /// HTTP-style status.
    pub status: u16,
    /// The request id it answers, as the request sent it (empty when the topic has none).
    pub rid: String,
    /// Seconds to wait before the next request, when DPS says.
    pub retry_after: Option<u32>,
}

impl Response {
    /// The topic; `$rid` comes first because the C# SDK matches it with an anchored regex.
    pub(crate) fn topic(&self) -> String {
        let Response {
            status,
            rid,
            retry_after,
        } = self;
        match retry_after {
            Some(seconds) => format!("{RESPONSE_PREFIX}{status}/?$rid={rid}&retry-after={seconds}"),
            None => format!("{RESPONSE_PREFIX}{status}/?$rid={rid}"),
        }
    }

    /// Reads a response topic; `None` when it is not one. `retry-after` is found in any case,
    /// as the C# SDK finds it, and a value that is not a number of seconds is ignored.
    pub(crate) fn parse(topic: &str) -> Option<Response> {
        let rest = topic.strip_prefix(RESPONSE_PREFIX)?;
        let (status, query) = rest.split_once("/?")?;
        let status = status.parse().ok()?;
        let retry_after = super::query_pairs(query)
            .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
            .and_then(|(_, v)| v.parse().ok());
        Some(Response {
            status,
            rid: query_value(query, "$rid").unwrap_or_default().to_string(),
            retry_after,
        })
    }
}

/// The register request's body (`DeviceRegistration`): the registration id, the custom
/// payload (`null` without one) and, from [`CSR_API_VERSION`] on, a certificate signing
/// request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeviceRegistration {
    /// Registration id.
    pub registration_id: String,
    /// Custom payload for the allocation (and a custom allocation webhook).
    pub payload: Option<Value>,
    /// Base64 of a DER PKCS#10 request (no PEM armour, no line breaks) whose CN is the
    /// registration id: DPS answers with a certificate issued for its key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

/// The body of a register or status-poll response (`RegistrationOperationStatus`). Read by
/// the device leniently: a field of the wrong JSON type reads as absent, so what a hostile or
/// newer service sends becomes a decision or a typed error, never a failure to parse.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RegistrationOperationStatus {
    /// The operation to poll.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string"
    )]
    pub operation_id: Option<String>,
    /// `assigning`, `assigned`, `failed`, `unassigned`, `disabled`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string"
    )]
    pub status: Option<String>,
    /// The registration, once DPS has one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::object"
    )]
    pub registration_state: Option<DeviceRegistrationResult>,
}

impl RegistrationOperationStatus {
    /// Reads a response body as the device does: anything but a JSON object (a body that does
    /// not parse too) reads as a status with nothing in it.
    #[cfg(test)]
    pub(crate) fn from_body(body: &[u8]) -> RegistrationOperationStatus {
        serde_json::from_slice(body)
            .map(|body: Value| RegistrationOperationStatus::from_value(&body))
            .unwrap_or_default()
    }

    /// [`RegistrationOperationStatus::from_body`] of a body already parsed (read in place:
    /// the device keeps the body for a refusal's diagnosis, and a copy of it costs more than
    /// the reading).
    pub(crate) fn from_value(body: &Value) -> RegistrationOperationStatus {
        Some(body)
            .filter(|v| v.is_object())
            .and_then(|v| RegistrationOperationStatus::deserialize(v).ok())
            .unwrap_or_default()
    }
}

/// The body of a DPS refusal on the device API: the service's code, its tracking id, what it
/// says and when. Written by the emulator; read by the device leniently, as a status body is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ErrorDetails {
    /// Six-digit code (`401002`, `429001`, ...).
    #[serde(default, deserialize_with = "lenient::code")]
    pub error_code: Option<u32>,
    /// Azure's id of the failed request, for support.
    #[serde(default, deserialize_with = "lenient::string")]
    pub tracking_id: Option<String>,
    /// What went wrong.
    #[serde(default, deserialize_with = "lenient::string")]
    pub message: Option<String>,
    /// When, as Azure writes it.
    #[serde(default, deserialize_with = "lenient::string")]
    pub timestamp_utc: Option<String>,
    /// The text under the name Azure's older answers use (never written here).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string"
    )]
    pub error_message: Option<String>,
}

impl ErrorDetails {
    /// Reads a refusal's body as the device does: what does not read is absent.
    pub(crate) fn from_value(body: &Value) -> ErrorDetails {
        Some(body)
            .filter(|v| v.is_object())
            .and_then(|v| ErrorDetails::deserialize(v).ok())
            .unwrap_or_default()
    }
}

/// Which enrollment group admitted a device, under the attestation it used (`x509` or
/// `symmetricKey`): empty for an individual enrollment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AttestationResult {
    /// The group's id, for a group enrollment.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string"
    )]
    pub enrollment_group_id: Option<String>,
}

/// A registration as DPS reports it (`DeviceRegistrationResult`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeviceRegistrationResult {
    /// Present when the device attested with X.509.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::object"
    )]
    pub x509: Option<AttestationResult>,
    /// Present when the device attested with a symmetric key.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::object"
    )]
    pub symmetric_key: Option<AttestationResult>,
    /// Registration id.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string"
    )]
    pub registration_id: Option<String>,
    /// First registration, as Azure writes it (7 fractional digits).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string"
    )]
    pub created_date_time_utc: Option<String>,
    /// The assigned hub's host name.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string"
    )]
    pub assigned_hub: Option<String>,
    /// The device id in that hub.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string"
    )]
    pub device_id: Option<String>,
    /// `assigning`, `assigned`, `failed`, `disabled`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string"
    )]
    pub status: Option<String>,
    /// `initialAssignment`, `deviceDataMigrated`, `deviceDataReset`, `reprovisionedToInitialAssignment`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string"
    )]
    pub substatus: Option<String>,
    /// Azure's error code, when failed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::code"
    )]
    pub error_code: Option<u32>,
    /// Azure's message, when failed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string"
    )]
    pub error_message: Option<String>,
    /// Last registration.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string"
    )]
    pub last_updated_date_time_utc: Option<String>,
    /// Changes on every registration.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string"
    )]
    pub etag: Option<String>,
    /// What a custom allocation returned to the device (`null` reads as none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// The certificate issued for the register request's CSR and its issuers, each base64
    /// DER: the leaf first, each one issued by the next, ending with the root. Only on the
    /// answer to a register request with a CSR (and its status polls), never on a lookup; a
    /// list holding anything but strings reads as absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::strings"
    )]
    pub issued_certificate_chain: Option<Vec<String>>,
}

/// Field readers that take a value of the wrong JSON type as absent.
mod lenient {
    use super::*;

    pub(super) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::String(s) => Some(s),
            _ => None,
        })
    }

    pub(super) fn code<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        Ok(Value::deserialize(d)?
            .as_u64()
            .and_then(|c| u32::try_from(c).ok()))
    }

    pub(super) fn strings<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<String>>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(s) => Some(s),
                    _ => None,
                })
                .collect(),
            _ => None,
        })
    }

    pub(super) fn object<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        // Only an object: serde would otherwise read an array's items as the fields in order.
        Ok(Some(Value::deserialize(d)?)
            .filter(Value::is_object)
            .and_then(|v| serde_json::from_value(v).ok()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn request_topics_round_trip() {
        for request in [
            Request::Register { rid: "7".into() },
            Request::Register {
                rid: "7c9d6b1e-2bd5-4a0b".into(),
            },
            Request::Poll {
                rid: "2".into(),
                operation_id: "5.ab.c-d".into(),
            },
            Request::Poll {
                rid: "3".into(),
                operation_id: "odd id/with&=%".into(),
            },
        ] {
            assert_eq!(Request::parse(&request.topic()), Some(request.clone()));
        }
    }

    #[test]
    fn the_sdks_request_topics_parse() {
        assert_eq!(
            Request::parse("$dps/registrations/PUT/iotdps-register/?$rid=7c9d6b1e-2bd5"),
            Some(Request::Register {
                rid: "7c9d6b1e-2bd5".into()
            })
        );
        assert_eq!(
            Request::parse(
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=5.ab.c-d"
            ),
            Some(Request::Poll {
                rid: "2".into(),
                operation_id: "5.ab.c-d".into()
            })
        );
        for bad in [
            "",
            "$dps/registrations/PUT/iotdps-register/",
            "$dps/registrations/PUT/iotdps-register/?x=1",
            "$dps/registrations/PUT/iotdps-register/?$rid=",
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1",
            "devices/x/messages/events/",
        ] {
            assert_eq!(Request::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn response_topics_round_trip_with_rid_first() {
        for response in [
            Response {
                status: 202,
                rid: "abc".into(),
                retry_after: Some(3),
            },
            Response {
                status: 200,
                rid: "1".into(),
                retry_after: None,
            },
        ] {
            assert_eq!(Response::parse(&response.topic()), Some(response.clone()));
        }
        assert_eq!(
            Response {
                status: 202,
                rid: "abc".into(),
                retry_after: Some(3)
            }
            .topic(),
            "$dps/registrations/res/202/?$rid=abc&retry-after=3"
        );
        // Any case of retry-after; one that is not a number is no advice.
        let parsed = Response::parse("$dps/registrations/res/429/?$rid=1&Retry-After=4").unwrap();
        assert_eq!((parsed.status, parsed.retry_after), (429, Some(4)));
        let parsed = Response::parse("$dps/registrations/res/429/?$rid=1&retry-after=x").unwrap();
        assert_eq!(parsed.retry_after, None);
        for bad in [
            "$dps/registrations/res/abc/?$rid=1",
            "$dps/registrations/res/200",
            "$dps/registrations/PUT/iotdps-register/?$rid=1",
        ] {
            assert_eq!(Response::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_username_and_audience_are_the_sdks() {
        assert_eq!(
            username("0ne00000001", "dev-1", "dpskit/0.1"),
            "0ne00000001/registrations/dev-1/api-version=2019-03-31&ClientVersion=dpskit%2F0.1"
        );
        assert_eq!(
            sas_audience("0ne00000001", "dev-1"),
            "0ne00000001/registrations/dev-1"
        );
    }

    #[test]
    fn registration_bodies_round_trip() {
        let request = DeviceRegistration {
            registration_id: "dev-1".into(),
            payload: Some(json!({"k": [1, 2]})),
            csr: None,
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(text, r#"{"registrationId":"dev-1","payload":{"k":[1,2]}}"#);
        assert_eq!(
            serde_json::from_str::<DeviceRegistration>(&text).unwrap(),
            request
        );
        let bare = DeviceRegistration {
            registration_id: "dev-2".into(),
            payload: None,
            csr: None,
        };
        assert_eq!(
            serde_json::to_value(&bare).unwrap(),
            json!({"registrationId": "dev-2", "payload": null})
        );
        let with_csr = DeviceRegistration {
            csr: Some("MIIBDjCBtQ".into()),
            ..bare.clone()
        };
        assert_eq!(
            serde_json::to_value(&with_csr).unwrap(),
            json!({"registrationId": "dev-2", "payload": null, "csr": "MIIBDjCBtQ"})
        );

        let assigned = RegistrationOperationStatus {
            operation_id: Some("5.1.2".into()),
            status: Some("assigned".into()),
            registration_state: Some(DeviceRegistrationResult {
                x509: Some(AttestationResult {
                    enrollment_group_id: Some("group-1".into()),
                }),
                registration_id: Some("dev-1".into()),
                created_date_time_utc: Some("2026-12-06T23:00:00.0000000Z".into()),
                assigned_hub: Some("hub.example".into()),
                device_id: Some("dev-1".into()),
                status: Some("assigned".into()),
                substatus: Some("initialAssignment".into()),
                last_updated_date_time_utc: Some("2026-12-06T23:00:00.0000000Z".into()),
                etag: Some("IjEi".into()),
                payload: Some(json!({"hello": "device"})),
                ..DeviceRegistrationResult::default()
            }),
        };
        let text = serde_json::to_vec(&assigned).unwrap();
        assert_eq!(RegistrationOperationStatus::from_body(&text), assigned);
    }

    #[test]
    fn dps_bodies_parse_as_the_wire_spec_shows_them() {
        // Section 4: a 202 to the register request, and the 200 of the poll.
        let assigning = RegistrationOperationStatus::from_body(
            br#"{"operationId":"5.316aa1ea2a36e3b8.b8c8c2e8-0d6e","status":"assigning"}"#,
        );
        assert_eq!(assigning.status.as_deref(), Some("assigning"));
        assert_eq!(
            assigning.operation_id.as_deref(),
            Some("5.316aa1ea2a36e3b8.b8c8c2e8-0d6e")
        );
        assert_eq!(assigning.registration_state, None);
        let failed = RegistrationOperationStatus::from_body(
            br#"{"operationId":"4.f","status":"failed","registrationState":{"registrationId":"dev-1","status":"failed","errorCode":400209,"errorMessage":"Custom allocation failed"}}"#,
        );
        let state = failed.registration_state.unwrap();
        assert_eq!(state.error_code, Some(400_209));
        assert_eq!(
            state.error_message.as_deref(),
            Some("Custom allocation failed")
        );
        // What a hostile service could send reads as absent, not as an error.
        let odd = RegistrationOperationStatus::from_body(
            br#"{"operationId":5,"status":["assigned"],"registrationState":["a","b"]}"#,
        );
        assert_eq!(odd, RegistrationOperationStatus::default());
        for body in [&b"not json"[..], b"[]", b"null", b" "] {
            assert_eq!(
                RegistrationOperationStatus::from_body(body),
                RegistrationOperationStatus::default()
            );
        }
        let typed = RegistrationOperationStatus::from_body(
            br#"{"status":"assigned","registrationState":{"assignedHub":7,"errorCode":-1,"payload":null}}"#,
        );
        assert_eq!(
            typed.registration_state,
            Some(DeviceRegistrationResult::default())
        );
    }
}
