//! The IoT Hub service API's JSON (api-version 2021-04-12) as serde types: a device identity
//! (`Device`, with its authentication mechanism and capabilities), a device twin (`Twin`), a
//! direct method's result, a purged C2D queue; and the answer of the emulator's own
//! `/dpskit/telemetry` call (the stored telemetry).
//! Both sides use them: the hub service client in `service/hub.rs` reads its answers with
//! these, and the emulator (`emulator/rest/hub_service.rs`) writes its answers through them.
//! Names and shapes follow the service swagger; members it marks optional are `Option`s, and
//! an explicit `null` means "not given", as the service writes `null` for what a device lacks
//! (an X.509 device's keys).
//!
//! Members are declared in the order IoT Hub's documented examples write them: serde_json
//! keeps insertion order here (`preserve_order`), so the declaration order is the wire order.
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

/// `AuthenticationMechanism` of a device identity. Written with both the keys and the
/// thumbprints, `null` where the type has none, as the service writes them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationMechanism {
    /// The keys of a `sas` device.
    #[serde(default)]
    pub symmetric_key: Option<SymmetricKey>,
    /// The thumbprints of a `selfSigned` device.
    #[serde(default)]
    pub x509_thumbprint: Option<X509Thumbprint>,
    /// `sas`, `selfSigned`, `certificateAuthority` or `none` (`None`: `sas`, the service's
    /// default).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

/// `DeviceCapabilities`: what the device is beside a plain device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCapabilities {
    /// Whether it is an IoT Edge device.
    #[serde(default)]
    pub iot_edge: Option<bool>,
}

/// `Device`: a device identity as `GET` and `PUT /devices/{id}` (and each item of
/// `GET /devices`) answer it. Every member is written, `null` when absent (the service writes
/// `statusReason: null` for an identity without one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceIdentity {
    /// The device id.
    pub device_id: String,
    /// Set when the identity is created: tells apart two devices created under one id.
    #[serde(default)]
    pub generation_id: Option<String>,
    /// Changes on every write of the identity (`If-Match` of the next).
    #[serde(default)]
    pub etag: Option<String>,
    /// `Connected` or `Disconnected`.
    #[serde(default)]
    pub connection_state: Option<String>,
    /// `enabled` or `disabled`.
    #[serde(default)]
    pub status: Option<String>,
    /// Why the status is what it is (free text, set by the service caller).
    #[serde(default)]
    pub status_reason: Option<String>,
    /// When `connectionState` last changed (`0001-01-01T00:00:00Z`: never).
    #[serde(default)]
    pub connection_state_updated_time: Option<String>,
    /// When `status` last changed (`0001-01-01T00:00:00Z`: never).
    #[serde(default)]
    pub status_updated_time: Option<String>,
    /// When the device last connected or sent (`0001-01-01T00:00:00Z`: never).
    #[serde(default)]
    pub last_activity_time: Option<String>,
    /// Cloud-to-device messages queued for the device.
    #[serde(default)]
    pub cloud_to_device_message_count: Option<u64>,
    /// How the device authenticates.
    #[serde(default)]
    pub authentication: Option<AuthenticationMechanism>,
    /// Whether it is an IoT Edge device.
    #[serde(default)]
    pub capabilities: Option<DeviceCapabilities>,
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
/// `SELECT * FROM devices`): the identity's members, then the twin's own (version, tags,
/// properties), then any other, then the capabilities. A member left out is `None` (and left
/// out again when written).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Twin {
    /// The device id.
    pub device_id: String,
    /// The twin's etag (`If-Match` of a patch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The identity's etag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_etag: Option<String>,
    /// `enabled` or `disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why the status is what it is (left out when the identity has no reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// When `status` last changed (`0001-01-01T00:00:00Z`: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_update_time: Option<String>,
    /// `Connected` or `Disconnected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<String>,
    /// When the device last connected or sent (`0001-01-01T00:00:00Z`: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_time: Option<String>,
    /// Cloud-to-device messages queued for the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_to_device_message_count: Option<u64>,
    /// `sas`, `selfSigned`, `certificateAuthority` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_type: Option<String>,
    /// The thumbprints of a `selfSigned` device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_thumbprint: Option<X509Thumbprint>,
    /// Increases on every change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Tags (service side only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Map<String, Value>>,
    /// Desired and reported properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<TwinProperties>,
    /// Every other member as the service wrote it (`modelId`, ...), written where it stands
    /// here: after the properties, before the capabilities.
    #[serde(flatten)]
    pub other: Map<String, Value>,
    /// Whether it is an IoT Edge device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
}

/// `CloudToDeviceMethodResult`: a direct method's answer (`POST /twins/{id}/methods`), the
/// status and payload the device answered with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct MethodResult {
    /// The device's status.
    pub(crate) status: u16,
    /// The device's payload (`null` when it sent none).
    #[serde(default)]
    pub(crate) payload: Value,
}

/// The answer to `DELETE /devices/{id}/commands` (the swagger's `PurgeMessageQueueResult`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PurgeMessageQueueResult {
    /// How many cloud-to-device messages left the queue.
    pub(crate) total_messages_purged: u64,
    /// The device whose queue was purged.
    pub(crate) device_id: String,
    /// The module, for a module's queue (none here: modules have no C2D queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) module_id: Option<String>,
}

/// Emulator only: one device-to-cloud message as `GET /dpskit/telemetry` lists what the hub
/// stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StoredTelemetry {
    /// Arrival sequence number (increasing, from 1; signed as SQLite keeps it).
    pub(crate) sequence: i64,
    /// The device that sent it.
    pub(crate) device_id: String,
    /// The module that sent it, for a module's message (`null` otherwise).
    #[serde(default)]
    pub(crate) module_id: Option<String>,
    /// When the hub enqueued it, Unix seconds with fractions.
    pub(crate) enqueued_time: f64,
    /// The body, base64.
    pub(crate) body: String,
    /// Application properties as pairs, in the order the device sent them (keys may repeat).
    pub(crate) properties: Vec<(String, String)>,
    /// System properties as pairs (`mid`, `ct`, `ce`, ...).
    pub(crate) system_properties: Vec<(String, String)>,
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
        assert_eq!(identity.generation_id.as_deref(), Some("638"));
        assert_eq!(identity.connection_state.as_deref(), Some("Disconnected"));
        assert_eq!(identity.status_reason, None);
        assert_eq!(identity.cloud_to_device_message_count, Some(0));
        assert_eq!(identity.last_activity_time, None);
        assert_eq!(identity.capabilities.clone().unwrap().iot_edge, Some(false));
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

    /// The emulator writes its identities through the type: every member in the order of IoT
    /// Hub's documented example, `statusReason` and a missing key or thumbprint as `null`.
    #[test]
    fn an_identity_writes_every_member_in_iot_hubs_order() {
        let identity = DeviceIdentity {
            device_id: "dev-1".into(),
            generation_id: Some("638".into()),
            etag: Some("MQ==".into()),
            connection_state: Some("Connected".into()),
            status: Some("enabled".into()),
            status_reason: None,
            connection_state_updated_time: Some("2024-01-02T03:04:05.0000000Z".into()),
            status_updated_time: Some("0001-01-01T00:00:00Z".into()),
            last_activity_time: Some("2024-01-02T03:04:05.0000000Z".into()),
            cloud_to_device_message_count: Some(2),
            authentication: Some(AuthenticationMechanism {
                symmetric_key: Some(SymmetricKey {
                    primary_key: Some("cA==".into()),
                    secondary_key: Some("cw==".into()),
                }),
                x509_thumbprint: Some(X509Thumbprint::default()),
                kind: Some("sas".into()),
            }),
            capabilities: Some(DeviceCapabilities {
                iot_edge: Some(false),
            }),
        };
        let written = serde_json::to_string(&identity).unwrap();
        assert_eq!(
            written,
            concat!(
                r#"{"deviceId":"dev-1","generationId":"638","etag":"MQ==","#,
                r#""connectionState":"Connected","status":"enabled","statusReason":null,"#,
                r#""connectionStateUpdatedTime":"2024-01-02T03:04:05.0000000Z","#,
                r#""statusUpdatedTime":"0001-01-01T00:00:00Z","#,
                r#""lastActivityTime":"2024-01-02T03:04:05.0000000Z","#,
                r#""cloudToDeviceMessageCount":2,"authentication":{"#,
                r#""symmetricKey":{"primaryKey":"cA==","secondaryKey":"cw=="},"#,
                r#""x509Thumbprint":{"primaryThumbprint":null,"secondaryThumbprint":null},"#,
                r#""type":"sas"},"capabilities":{"iotEdge":false}}"#,
            )
        );
        let read: DeviceIdentity = serde_json::from_str(&written).unwrap();
        assert_eq!(read, identity);
    }

    /// A twin writes the identity's members, then version, tags and properties, then the
    /// members it does not model, then the capabilities; what it lacks (a status reason) is
    /// left out, and reads back the same.
    #[test]
    fn a_twin_writes_its_members_in_iot_hubs_order() {
        let twin = Twin {
            device_id: "dev-1".into(),
            etag: Some("AAAA".into()),
            device_etag: Some("MQ==".into()),
            status: Some("enabled".into()),
            status_reason: None,
            status_update_time: Some("0001-01-01T00:00:00Z".into()),
            connection_state: Some("Disconnected".into()),
            last_activity_time: Some("0001-01-01T00:00:00Z".into()),
            cloud_to_device_message_count: Some(0),
            authentication_type: Some("selfSigned".into()),
            x509_thumbprint: Some(X509Thumbprint {
                primary_thumbprint: Some("AB12".into()),
                secondary_thumbprint: None,
            }),
            version: Some(3),
            tags: Some(Map::new()),
            properties: Some(TwinProperties {
                desired: Some(
                    json!({"rate": 5, "$version": 2})
                        .as_object()
                        .unwrap()
                        .clone(),
                ),
                reported: Some(json!({"$version": 1}).as_object().unwrap().clone()),
            }),
            other: json!({"modelId": ""}).as_object().unwrap().clone(),
            capabilities: Some(DeviceCapabilities {
                iot_edge: Some(true),
            }),
        };
        let written = serde_json::to_string(&twin).unwrap();
        assert_eq!(
            written,
            concat!(
                r#"{"deviceId":"dev-1","etag":"AAAA","deviceEtag":"MQ==","status":"enabled","#,
                r#""statusUpdateTime":"0001-01-01T00:00:00Z","connectionState":"Disconnected","#,
                r#""lastActivityTime":"0001-01-01T00:00:00Z","cloudToDeviceMessageCount":0,"#,
                r#""authenticationType":"selfSigned","#,
                r#""x509Thumbprint":{"primaryThumbprint":"AB12","secondaryThumbprint":null},"#,
                r#""version":3,"tags":{},"#,
                r#""properties":{"desired":{"rate":5,"$version":2},"reported":{"$version":1}},"#,
                r#""modelId":"","capabilities":{"iotEdge":true}}"#,
            )
        );
        let read: Twin = serde_json::from_str(&written).unwrap();
        assert_eq!(read, twin);
        let reason = Twin {
            status_reason: Some("stolen".into()),
            ..twin
        };
        let written = serde_json::to_string(&reason).unwrap();
        assert!(
            written.contains(r#""status":"enabled","statusReason":"stolen","statusUpdateTime""#),
            "{written}"
        );
    }

    /// What the client read before these members were modelled, it still reads: explicit
    /// nulls are "not given"; a member of the wrong type is refused.
    #[test]
    fn modelled_members_take_nulls_and_refuse_wrong_types() {
        let identity: DeviceIdentity = serde_json::from_value(json!({
            "deviceId": "d", "generationId": null, "cloudToDeviceMessageCount": null,
            "capabilities": {"iotEdge": null}, "lastActivityTime": null,
        }))
        .unwrap();
        assert_eq!(identity.cloud_to_device_message_count, None);
        assert_eq!(identity.capabilities, Some(DeviceCapabilities::default()));
        let twin: Twin = serde_json::from_value(json!({
            "deviceId": "d", "deviceEtag": null, "capabilities": null, "statusReason": null,
        }))
        .unwrap();
        assert_eq!((twin.device_etag, twin.capabilities), (None, None));
        assert!(twin.other.is_empty(), "{:?}", twin.other);
        let why =
            serde_json::from_value::<DeviceIdentity>(json!({"deviceId": "d", "generationId": 638}))
                .unwrap_err()
                .to_string();
        assert!(why.contains("invalid type"), "{why}");
        for wrong in [
            json!({"deviceId": "d", "cloudToDeviceMessageCount": "many"}),
            json!({"deviceId": "d", "capabilities": {"iotEdge": "yes"}}),
        ] {
            let why = serde_json::from_value::<DeviceIdentity>(wrong.clone())
                .unwrap_err()
                .to_string();
            assert!(why.contains("invalid type"), "{wrong}: {why}");
            let why = serde_json::from_value::<Twin>(wrong.clone())
                .unwrap_err()
                .to_string();
            assert!(why.contains("invalid type"), "{wrong}: {why}");
        }
        let why = serde_json::from_value::<Twin>(json!({"deviceId": "d", "deviceEtag": 1}))
            .unwrap_err()
            .to_string();
        assert!(why.contains("invalid type"), "{why}");
    }

    /// A method's result, a purge's result and a stored message are written in the
    /// order the emulator always wrote them, and read back the same; a result without its
    /// status is refused.
    #[test]
    fn method_results_purges_and_stored_telemetry_round_trip() {
        let result = MethodResult {
            status: 200,
            payload: json!({"ok": true}),
        };
        let written = serde_json::to_string(&result).unwrap();
        assert_eq!(written, r#"{"status":200,"payload":{"ok":true}}"#);
        assert_eq!(
            serde_json::from_str::<MethodResult>(&written).unwrap(),
            result
        );
        let silent: MethodResult = serde_json::from_str(r#"{"status":404}"#).unwrap();
        assert_eq!(silent.payload, Value::Null);
        let why = serde_json::from_str::<MethodResult>(r#"{"payload":1}"#)
            .unwrap_err()
            .to_string();
        assert!(why.contains("status"), "{why}");

        let purged: PurgeMessageQueueResult =
            serde_json::from_str(r#"{"totalMessagesPurged":2,"deviceId":"d"}"#).unwrap();
        assert_eq!(purged.total_messages_purged, 2);
        assert_eq!(
            serde_json::to_string(&purged).unwrap(),
            r#"{"totalMessagesPurged":2,"deviceId":"d"}"#
        );

        let stored = StoredTelemetry {
            sequence: 7,
            device_id: "d".into(),
            module_id: None,
            enqueued_time: 1.5,
            body: "aGk=".into(),
            properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
            system_properties: vec![("ct".into(), "application/json".into())],
        };
        let written = serde_json::to_string(&stored).unwrap();
        assert_eq!(
            written,
            concat!(
                r#"{"sequence":7,"deviceId":"d","moduleId":null,"enqueuedTime":1.5,"#,
                r#""body":"aGk=","properties":[["a","1"],["a","2"]],"#,
                r#""systemProperties":[["ct","application/json"]]}"#,
            )
        );
        assert_eq!(
            serde_json::from_str::<StoredTelemetry>(&written).unwrap(),
            stored
        );
    }
}
