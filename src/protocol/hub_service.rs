//! The IoT Hub service API's JSON (api-version 2021-04-12) as serde types: a device identity
//! (`Device`, with its authentication mechanism) and a device twin (`Twin`). The hub service
//! client in `service/hub.rs` reads its answers with these. Names and shapes follow the
//! service swagger; members it marks optional are `Option`s, and an explicit `null` means "not
//! given", as the service writes `null` for what a device lacks (an X.509 device's keys).
//!
//! Reading refuses a member of the wrong type and an identity or twin without its `deviceId`
//! (a clear error, never a default); members nobody here reads are kept, not refused, in the
//! twin (whose document is free-form), and ignored in the identity.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `X509Thumbprint`: the thumbprints of a `selfSigned` device's certificates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct X509Thumbprint {
    /// Primary thumbprint (SHA-1 or SHA-256, hex).
    #[serde(default)]
    pub primary_thumbprint: Option<String>,
    /// Secondary thumbprint.
    #[serde(default)]
    pub secondary_thumbprint: Option<String>,
}

/// `SymmetricKey`: a `sas` device's keys, base64.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKey {
    /// Primary key.
    #[serde(default)]
    pub primary_key: Option<String>,
    /// Secondary key.
    #[serde(default)]
    pub secondary_key: Option<String>,
}

impl std::fmt::Debug for SymmetricKey {
    /// The keys are secrets: whether each is there, never its value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |key: &Option<String>| key.as_ref().map(|_| "<redacted>");
        f.debug_struct("SymmetricKey")
            .field("primary_key", &shown(&self.primary_key))
            .field("secondary_key", &shown(&self.secondary_key))
            .finish()
    }
}

/// `AuthenticationMechanism` of a device identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationMechanism {
    /// `sas`, `selfSigned`, `certificateAuthority` or `none` (`None`: `sas`, the service's
    /// default).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The keys of a `sas` device.
    #[serde(default)]
    pub symmetric_key: Option<SymmetricKey>,
    /// The thumbprints of a `selfSigned` device.
    #[serde(default)]
    pub x509_thumbprint: Option<X509Thumbprint>,
}

/// `Device`: a device identity as `GET` and `PUT /devices/{id}` answer it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceIdentity {
    /// The device id.
    pub device_id: String,
    /// Changes on every write of the identity (`If-Match` of the next).
    #[serde(default)]
    pub etag: Option<String>,
    /// `enabled` or `disabled`.
    #[serde(default)]
    pub status: Option<String>,
    /// `Connected` or `Disconnected`.
    #[serde(default)]
    pub connection_state: Option<String>,
    /// How the device authenticates.
    #[serde(default)]
    pub authentication: Option<AuthenticationMechanism>,
}

/// A twin's `properties`: desired and reported, each with its `$version` and `$metadata`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TwinProperties {
    /// Set by the service.
    #[serde(default)]
    pub desired: Option<Map<String, Value>>,
    /// Set by the device.
    #[serde(default)]
    pub reported: Option<Map<String, Value>>,
}

/// `Twin`: a device twin as the service sees it (`GET`/`PATCH /twins/{id}`, and each item of
/// `SELECT * FROM devices`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Twin {
    /// The device id.
    pub device_id: String,
    /// The twin's etag (`If-Match` of a patch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Increases on every change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Tags (service side only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Map<String, Value>>,
    /// Desired and reported properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<TwinProperties>,
    /// `enabled` or `disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `Connected` or `Disconnected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<String>,
    /// `sas`, `selfSigned`, `certificateAuthority` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_type: Option<String>,
    /// The thumbprints of a `selfSigned` device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_thumbprint: Option<X509Thumbprint>,
    /// Every other member as the service wrote it (`modelId`, `lastActivityTime`, ...).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_identity_as_the_service_answers_it_reads() {
        let answer = json!({
            "deviceId": "dev-1", "generationId": "638", "etag": "MQ==",
            "connectionState": "Disconnected", "status": "enabled", "statusReason": null,
            "cloudToDeviceMessageCount": 0,
            "authentication": {
                "type": "selfSigned",
                "symmetricKey": {"primaryKey": null, "secondaryKey": null},
                "x509Thumbprint": {"primaryThumbprint": "AB12", "secondaryThumbprint": null},
            },
            "capabilities": {"iotEdge": false},
        });
        let identity: DeviceIdentity = serde_json::from_value(answer).unwrap();
        assert_eq!(identity.device_id, "dev-1");
        assert_eq!(identity.connection_state.as_deref(), Some("Disconnected"));
        let authentication = identity.authentication.unwrap();
        assert_eq!(authentication.kind.as_deref(), Some("selfSigned"));
        assert_eq!(authentication.symmetric_key, Some(SymmetricKey::default()));
        assert_eq!(
            authentication.x509_thumbprint.unwrap().primary_thumbprint,
            Some("AB12".into())
        );
    }

    #[test]
    fn keys_never_reach_debug_output() {
        let keys = SymmetricKey {
            primary_key: Some("c2VjcmV0LXByaW1hcnk=".into()),
            secondary_key: None,
        };
        let shown = format!("{keys:?}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn a_twin_reads_its_sections_and_keeps_the_rest() {
        let answer = json!({
            "deviceId": "dev-1", "etag": "AAAA", "version": 4, "modelId": "",
            "tags": {"site": "lab"},
            "properties": {
                "desired": {"rate": 5, "$version": 2},
                "reported": {"fw": "1.0", "$version": 3},
            },
            "status": "enabled", "connectionState": "Connected",
            "authenticationType": "sas",
            "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
        });
        let twin: Twin = serde_json::from_value(answer.clone()).unwrap();
        assert_eq!(twin.version, Some(4));
        assert_eq!(twin.tags.as_ref().unwrap()["site"], "lab");
        let properties = twin.properties.as_ref().unwrap();
        assert_eq!(properties.desired.as_ref().unwrap()["$version"], 2);
        assert_eq!(twin.other.get("modelId"), Some(&json!("")));
        assert_eq!(serde_json::to_value(&twin).unwrap(), answer);
    }

    #[test]
    fn an_answer_without_its_device_id_or_of_the_wrong_shape_is_refused() {
        let why = serde_json::from_value::<Twin>(json!({"etag": "x"}))
            .unwrap_err()
            .to_string();
        assert!(why.contains("deviceId"), "{why}");
        let why = serde_json::from_value::<Twin>(json!({"deviceId": "d", "tags": [1]}))
            .unwrap_err()
            .to_string();
        assert!(why.contains("invalid type"), "{why}");
        let why = serde_json::from_value::<DeviceIdentity>(json!({"authentication": {}}))
            .unwrap_err()
            .to_string();
        assert!(why.contains("deviceId"), "{why}");
    }
}
