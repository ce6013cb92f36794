//! IoT Hub's certificate renewal over MQTT (Azure's certificate management preview): the
//! api-version that enables it, the request and response topics, the request body with the
//! checks IoT Hub makes on it (each refusal's code and text), and the three answers (202
//! accepted, 200 issued, an error). The device client builds requests and reads answers with
//! these; the emulator reads requests and builds answers with the same ones.
//!
//! Sources: the C SDK's `feature/dps-csr-preview` branch (`iothubtransport_mqtt_common.c`),
//! the C# SDK's `feature/iot-csr-preview` branch (`CertificateSigningRequest*.cs`, its
//! service-tested `csr-scenarions.md`) and Learn's "Renew a device certificate" section of
//! the MQTT page (whose singular `credential` topics every SDK spells `credentials`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::query_value;

/// The hub api-version a device names in its CONNECT username to renew its certificate.
pub(crate) const API_VERSION: &str = "2025-08-01-preview";

/// The subscription every answer arrives on; the hub answers only a device subscribed to it.
pub(crate) const RESPONSE_FILTER: &str = "$iothub/credentials/res/#";

const REQUEST_PATH: &str = "$iothub/credentials/POST/issueCertificate/";
const RESPONSE_PREFIX: &str = "$iothub/credentials/res/";

/// The longest `csr` the hub takes, in characters of base64.
pub(crate) const MAX_CSR_CHARS: usize = 8 * 1024;

/// How long an accepted request stays pending before the hub discards it (about 12 hours, as
/// the C# SDK documents `operationExpires`).
pub(crate) const OPERATION_LIFETIME_SECONDS: i64 = 12 * 3600;

/// `replace` value that cancels whatever request is pending.
pub(crate) const REPLACE_ANY: &str = "*";

/// The topic a renewal request is published on.
pub(crate) fn request_topic(rid: &str) -> String {
    format!("{REQUEST_PATH}?$rid={rid}")
}

/// The request id of a renewal request topic; `None` for another topic, or one without a
/// `$rid` (the hub does not answer those).
pub(crate) fn parse_request_topic(topic: &str) -> Option<&str> {
    let query = topic.strip_prefix(REQUEST_PATH)?.strip_prefix('?')?;
    query_value(query, "$rid").filter(|rid| !rid.is_empty())
}

/// Whether `topic` is under the renewal request path at all (with or without a usable
/// `$rid`): a device that publishes there is talking to this feature.
pub(crate) fn is_request_topic(topic: &str) -> bool {
    topic.starts_with("$iothub/credentials/")
}

/// The topic of an answer: `$iothub/credentials/res/{status}/?$rid={rid}`.
pub(crate) fn response_topic(status: u16, rid: &str) -> String {
    format!("{RESPONSE_PREFIX}{status}/?$rid={rid}")
}

/// Reads an answer's topic: its status and request id (extra properties such as `$version`
/// are allowed and ignored).
pub(crate) fn parse_response_topic(topic: &str) -> Option<(u16, &str)> {
    let rest = topic.strip_prefix(RESPONSE_PREFIX)?;
    let (status, query) = rest.split_once("/?")?;
    let status = status.parse().ok()?;
    let rid = query_value(query, "$rid").filter(|rid| !rid.is_empty())?;
    Some((status, rid))
}

/// Whether `id` is a request id the hub can name in `replace` and in its answers: 4 to 36
/// ASCII letters, digits and dashes, not starting or ending with a dash.
pub(crate) fn is_valid_request_id(id: &str) -> bool {
    (4..=36).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
}

/// A renewal request: `{"id": deviceId, "csr": base64 DER, "replace": "*" | requestId}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IssueCertificateRequest {
    /// The device id; the hub refuses another device's.
    pub id: String,
    /// Base64 of a DER PKCS#10 request (no PEM armour, no line breaks).
    pub csr: String,
    /// `"*"` to cancel whatever request is pending, or the id of the one to cancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<String>,
}

/// The codes of the hub's renewal refusals (as the C# preview SDK documents them).
pub(crate) mod codes {
    /// The body is missing, has an unknown field, or a field is empty or malformed.
    pub(crate) const INVALID_REQUEST: u32 = 400_004;
    /// The body is not JSON.
    pub(crate) const MALFORMED_JSON: u32 = 400_006;
    /// The CSR decodes but does not pass verification (not PKCS#10, a bad signature, a key
    /// type or subject the policy refuses); `info.credentialError` names why.
    pub(crate) const CSR_REJECTED: u32 = 400_040;
    /// The device may not renew: its identity has no certificate policy (it was not issued
    /// its certificate by DPS).
    pub(crate) const NOT_ALLOWED: u32 = 403_010;
    /// Another request of this device is pending; `info` names it.
    pub(crate) const OPERATION_ACTIVE: u32 = 409_005;
    /// `replace` names no pending request.
    pub(crate) const NOTHING_TO_REPLACE: u32 = 412_001;
    /// Too many renewal requests for this device.
    pub(crate) const THROTTLED_DEVICE: u32 = 429_002;
    /// Too many renewal requests for this hub.
    pub(crate) const THROTTLED_HUB: u32 = 429_003;
}

/// What the hub says about a request it refuses before accepting it: the code and IoT Hub's
/// text for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestRefusal {
    /// One of [`codes`].
    pub code: u32,
    /// IoT Hub's message.
    pub message: &'static str,
}

/// The HTTP-style status of the answer topic a refusal with `code` goes out on (the code's
/// first three digits).
pub(crate) fn status_of(code: u32) -> u16 {
    (code / 1000) as u16
}

const fn refusal(code: u32, message: &'static str) -> RequestRefusal {
    RequestRefusal { code, message }
}

/// IoT Hub's messages for a malformed request, as its service tests record them.
pub(crate) mod messages {
    /// Empty body.
    pub(crate) const MISSING_PAYLOAD: &str = "Issue certificate request payload is missing. Include a JSON payload with 'id' and 'csr' fields.";
    /// Not JSON.
    pub(crate) const MALFORMED_JSON: &str = "cannot decode json format";
    /// `id` of another device (and a body that is not an object).
    pub(crate) const ID_MISMATCH: &str = "Issue certificate request 'id' field does not match the authenticated device ID. Use the same device ID used for authentication.";
    /// `id` missing or empty.
    pub(crate) const ID_MISSING: &str = "Issue certificate request 'id' field is invalid or missing. Provide the device ID of the authenticated device.";
    /// `csr` missing or empty.
    pub(crate) const CSR_MISSING: &str = "Issue certificate request 'csr' field is invalid or missing. Provide a valid base64-encoded certificate signing request.";
    /// `csr` longer than [`super::MAX_CSR_CHARS`].
    pub(crate) const CSR_TOO_LONG: &str = "Issue certificate request 'csr' field exceeds maximum allowed length. Reduce the CSR size.";
    /// `csr` not base64.
    pub(crate) const CSR_NOT_BASE64: &str = "Issue certificate request 'csr' field is not valid base64. Ensure the CSR is properly base64-encoded.";
    /// A field other than the three.
    pub(crate) const UNKNOWN_FIELD: &str = "Issue certificate request payload contains an unknown field. Only 'id', 'csr', and 'replace' fields are allowed.";
    /// `replace` neither `*` nor a request id.
    pub(crate) const REPLACE_FORMAT: &str = "Issue certificate request 'replace' field has an invalid format. An exact request ID must be between 4 and 36 characters, only have alphanumeric characters and hyphens, and cannot start or end with a hyphen. Use '*' to replace any pending request.";
    /// `replace` names no pending request.
    pub(crate) const NOTHING_TO_REPLACE: &str = "No active certificate request found to replace. Ensure the request ID in the 'replace' property matches an existing pending request.";
    /// Another request is pending.
    pub(crate) const OPERATION_ACTIVE: &str = "A credential management operation is already active. Use the requestId in info to check the status of the existing request, or send a new request with 'replace' to cancel and start a new one.";
    /// The CSR decodes but fails verification (sent after the 202).
    pub(crate) const CSR_REJECTED: &str = "Unable to complete the certificate request at this time. The certificate signing request did not pass verification.";
    /// The device's identity has no certificate policy.
    pub(crate) const NOT_ALLOWED: &str = "The device is not allowed to request certificates: its identity is not managed by a certificate policy. Provision it through DPS with a certificate signing request first.";
}

impl IssueCertificateRequest {
    /// Reads a request body as IoT Hub does, refusing what it refuses with its code and text,
    /// checks in its order. `authenticated` is the device id the connection proved.
    pub(crate) fn parse(body: &[u8], authenticated: &str) -> Result<Self, RequestRefusal> {
        use codes::INVALID_REQUEST;
        use messages::*;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(refusal(INVALID_REQUEST, MISSING_PAYLOAD));
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|_| refusal(codes::MALFORMED_JSON, messages::MALFORMED_JSON))?;
        let Value::Object(fields) = value else {
            return Err(refusal(INVALID_REQUEST, ID_MISMATCH));
        };
        if fields
            .keys()
            .any(|k| !matches!(k.as_str(), "id" | "csr" | "replace"))
        {
            return Err(refusal(INVALID_REQUEST, UNKNOWN_FIELD));
        }
        let text = |name: &str| match fields.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        let id = text("id").ok_or(refusal(INVALID_REQUEST, ID_MISSING))?;
        if id != authenticated {
            return Err(refusal(INVALID_REQUEST, ID_MISMATCH));
        }
        let csr = text("csr").ok_or(refusal(INVALID_REQUEST, CSR_MISSING))?;
        if csr.len() > MAX_CSR_CHARS {
            return Err(refusal(INVALID_REQUEST, CSR_TOO_LONG));
        }
        if BASE64.decode(csr.as_bytes()).is_err() {
            return Err(refusal(INVALID_REQUEST, CSR_NOT_BASE64));
        }
        let replace = match fields.get("replace") {
            None | Some(Value::Null) => None,
            Some(Value::String(r)) if r == REPLACE_ANY || is_valid_request_id(r) => Some(r.clone()),
            Some(_) => return Err(refusal(INVALID_REQUEST, REPLACE_FORMAT)),
        };
        Ok(IssueCertificateRequest { id, csr, replace })
    }
}

/// The 202 answer: the request is pending under `correlationId` until `operationExpires`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Accepted {
    /// The hub's id for the operation.
    pub correlation_id: String,
    /// When the hub discards it if not done, as Azure writes times (nanosecond digits, `Z`).
    pub operation_expires: String,
}

/// The 200 answer: the issued certificate and its issuers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Issued {
    /// The operation's id, as in the 202.
    pub correlation_id: String,
    /// Base64 DER certificates: the issued leaf first, each one issued by the next, ending
    /// with the root.
    pub certificates: Vec<String>,
}

/// What a refusal's `info` says about the operation it concerns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ErrorInfo {
    /// The pending operation's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Why the CSR failed verification (a short name), for 400040.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_error: Option<String>,
    /// The certificate authority's words on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_message: Option<String>,
    /// The pending request's id (409005), or the one `replace` named (412001).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// When the pending operation expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_expires: Option<String>,
}

/// A refusal's body, on `$iothub/credentials/res/{4xx|5xx}/?$rid=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ErrorBody {
    /// Six-digit code (one of [`codes`]).
    pub error_code: u32,
    /// What went wrong.
    pub message: String,
    /// Azure's id of the failed request.
    pub tracking_id: String,
    /// When, as Azure writes it.
    pub timestamp_utc: String,
    /// About the operation concerned (`null` when nothing is).
    pub info: Option<ErrorInfo>,
    /// Seconds to wait before trying again (throttling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn topics_round_trip_and_read_the_sdks_strings() {
        assert_eq!(
            request_topic("156089087"),
            "$iothub/credentials/POST/issueCertificate/?$rid=156089087"
        );
        assert_eq!(
            parse_request_topic("$iothub/credentials/POST/issueCertificate/?$rid=156089087"),
            Some("156089087")
        );
        assert_eq!(
            parse_request_topic("$iothub/credentials/POST/issueCertificate/"),
            None
        );
        assert_eq!(
            parse_request_topic("$iothub/credentials/POST/issueCertificate/?$rid="),
            None
        );
        assert_eq!(
            parse_request_topic("$iothub/credential/POST/issueCertificate/?$rid=1"),
            None
        );
        assert!(is_request_topic("$iothub/credentials/POST/x"));
        let topic = response_topic(202, "a1b2");
        assert_eq!(topic, "$iothub/credentials/res/202/?$rid=a1b2");
        assert_eq!(parse_response_topic(&topic), Some((202, "a1b2")));
        // The service adds properties after $rid (seen as `&$version=1`).
        assert_eq!(
            parse_response_topic("$iothub/credentials/res/200/?$rid=77&$version=1"),
            Some((200, "77"))
        );
        assert_eq!(
            parse_response_topic("$iothub/credentials/res/x/?$rid=7"),
            None
        );
        assert_eq!(RESPONSE_FILTER, "$iothub/credentials/res/#");
    }

    #[test]
    fn request_ids_follow_the_sdks_rule() {
        for ok in ["abcd", "5ecd03d5-8183-412b-9d6e-b95a7f36feb7", "1234"] {
            assert!(is_valid_request_id(ok), "{ok}");
        }
        for bad in ["abc", "-abcd", "abcd-", "ab_cd", &"a".repeat(37), "ab cd"] {
            assert!(!is_valid_request_id(bad), "{bad}");
        }
    }

    fn parse(body: Value) -> Result<IssueCertificateRequest, RequestRefusal> {
        IssueCertificateRequest::parse(body.to_string().as_bytes(), "dev-1")
    }

    #[test]
    fn a_request_is_read_and_written_as_the_sdks_send_it() {
        let request = IssueCertificateRequest {
            id: "dev-1".into(),
            csr: "TUlJQg==".into(),
            replace: None,
        };
        let body = serde_json::to_string(&request).unwrap();
        assert_eq!(body, r#"{"id":"dev-1","csr":"TUlJQg=="}"#);
        assert_eq!(
            IssueCertificateRequest::parse(body.as_bytes(), "dev-1"),
            Ok(request)
        );
        let with_replace = parse(json!({"id": "dev-1", "csr": "TUlJQg==", "replace": "*"}));
        assert_eq!(with_replace.unwrap().replace.as_deref(), Some("*"));
    }

    #[test]
    fn each_malformed_request_gets_iot_hubs_code_and_text() {
        use messages::*;
        let cases: Vec<(Vec<u8>, u32, &str)> = vec![
            (b"".to_vec(), 400_004, MISSING_PAYLOAD),
            (b"{nope".to_vec(), 400_006, MALFORMED_JSON),
            (b"[1]".to_vec(), 400_004, ID_MISMATCH),
            (
                json!({"id": "dev-1", "csr": ""}).to_string().into_bytes(),
                400_004,
                CSR_MISSING,
            ),
            (
                json!({"id": "dev-1", "csr": "A".repeat(MAX_CSR_CHARS + 4)})
                    .to_string()
                    .into_bytes(),
                400_004,
                CSR_TOO_LONG,
            ),
            (
                json!({"id": "dev-1", "csr": "!!not base64!!"})
                    .to_string()
                    .into_bytes(),
                400_004,
                CSR_NOT_BASE64,
            ),
            (
                json!({"id": "dev-2", "csr": "TUlJQg=="})
                    .to_string()
                    .into_bytes(),
                400_004,
                ID_MISMATCH,
            ),
            (
                json!({"id": "", "csr": "TUlJQg=="})
                    .to_string()
                    .into_bytes(),
                400_004,
                ID_MISSING,
            ),
            (
                json!({"id": "dev-1", "csr": "TUlJQg==", "extra": 1})
                    .to_string()
                    .into_bytes(),
                400_004,
                UNKNOWN_FIELD,
            ),
            (
                json!({"id": "dev-1", "csr": "TUlJQg==", "replace": "-bad-"})
                    .to_string()
                    .into_bytes(),
                400_004,
                REPLACE_FORMAT,
            ),
        ];
        for (body, code, message) in cases {
            let refusal = IssueCertificateRequest::parse(&body, "dev-1").unwrap_err();
            assert_eq!((refusal.code, refusal.message), (code, message));
            assert_eq!(status_of(refusal.code), 400);
        }
    }

    #[test]
    fn answers_use_azures_member_names() {
        let accepted = Accepted {
            correlation_id: "c1".into(),
            operation_expires: "2026-01-31T12:52:20.565000000Z".into(),
        };
        assert_eq!(
            serde_json::to_value(&accepted).unwrap(),
            json!({"correlationId": "c1", "operationExpires": "2026-01-31T12:52:20.565000000Z"})
        );
        let issued: Issued =
            serde_json::from_value(json!({"correlationId": "c1", "certificates": ["a", "b"]}))
                .unwrap();
        assert_eq!(issued.certificates, ["a", "b"]);
        let error = ErrorBody {
            error_code: codes::OPERATION_ACTIVE,
            message: messages::OPERATION_ACTIVE.into(),
            tracking_id: "t".into(),
            timestamp_utc: "2026-01-31T00:49:39.467401528Z".into(),
            info: Some(ErrorInfo {
                request_id: Some("r1".into()),
                ..ErrorInfo::default()
            }),
            retry_after: None,
        };
        let written = serde_json::to_value(&error).unwrap();
        assert_eq!(written["errorCode"], 409005);
        assert_eq!(written["info"], json!({"requestId": "r1"}));
        assert_eq!(serde_json::from_value::<ErrorBody>(written).unwrap(), error);
        let no_info: ErrorBody = serde_json::from_value(json!({
            "errorCode": 400004, "message": "m", "trackingId": "t",
            "timestampUtc": "x", "info": null}))
        .unwrap();
        assert_eq!(no_info.info, None);
    }
}
