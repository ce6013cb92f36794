//! IoT Hub's device vocabulary over MQTT: the CONNECT username and SAS audience, the telemetry
//! topic with its property bag, the four subscriptions of a device that receives (one type for
//! both sides), the requests a device publishes (twin GET, reported PATCH, method answers) and
//! what the hub publishes to it (twin answers, desired patches, method calls, C2D). The hub
//! client builds what the emulator parses and parses what it builds, with these.

use super::bags::encode_property_bag;
use super::query_value;
use crate::sas::url_encode;

const TWIN_GET: &str = "$iothub/twin/GET";
const REPORTED_PATCH: &str = "$iothub/twin/PATCH/properties/reported";
const TWIN_RESPONSE_PREFIX: &str = "$iothub/twin/res/";
const DESIRED_PREFIX: &str = "$iothub/twin/PATCH/properties/desired/";
const METHOD_REQUEST_PREFIX: &str = "$iothub/methods/POST/";
const METHOD_RESPONSE_PREFIX: &str = "$iothub/methods/res/";

/// The CONNECT username: `{host}/{deviceId}/?api-version=..&DeviceClientType=..`.
pub(crate) fn username(
    host: &str,
    device_id: &str,
    api_version: &str,
    client_type: &str,
) -> String {
    format!(
        "{host}/{device_id}/?api-version={api_version}&DeviceClientType={}",
        url_encode(client_type)
    )
}

/// The resource a device's SAS token is signed for: `{host}/devices/{deviceId}`.
pub(crate) fn sas_audience(host: &str, device_id: &str) -> String {
    format!("{host}/devices/{device_id}")
}

/// The telemetry topic up to its property bag: `devices/{deviceId}/messages/events/`.
pub(crate) fn telemetry_prefix(device_id: &str) -> String {
    format!("devices/{device_id}/messages/events/")
}

/// The property bag of a telemetry topic of `device_id` (`devices/{id}/messages/events/{bag}`,
/// or the same without the last `/` and an empty bag, which IoT Hub accepts too); `None` when
/// the topic is not that device's telemetry topic.
pub(crate) fn telemetry_bag<'a>(topic: &'a str, device_id: &str) -> Option<&'a str> {
    let rest = topic
        .strip_prefix("devices/")?
        .strip_prefix(device_id)?
        .strip_prefix("/messages/events")?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/')
    }
}

/// The value of `$.to` on a C2D message IoT Hub delivers.
pub(crate) fn c2d_address(device_id: &str) -> String {
    format!("/devices/{device_id}/messages/devicebound")
}

/// The device a C2D message is addressed to by its `to` (`/devices/{id}/messages/devicebound`,
/// what the service SDKs set on the AMQP message, and what [`c2d_address`] builds).
pub(crate) fn c2d_device(to: &str) -> Option<&str> {
    to.strip_prefix("/devices/")?
        .strip_suffix("/messages/devicebound")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// What a device that receives subscribes to; IoT Hub serves these four filters and no other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subscription {
    /// `devices/{deviceId}/messages/devicebound/#`: cloud-to-device messages.
    C2d,
    /// `$iothub/methods/POST/#`: direct method calls.
    Methods,
    /// `$iothub/twin/res/#`: answers to twin requests.
    TwinResponses,
    /// `$iothub/twin/PATCH/properties/desired/#`: desired-property patches.
    DesiredPatches,
}

impl Subscription {
    /// All four, in the order the device subscribes.
    pub const ALL: [Subscription; 4] = [
        Subscription::C2d,
        Subscription::Methods,
        Subscription::TwinResponses,
        Subscription::DesiredPatches,
    ];

    /// The topic filter of this subscription for `device_id`.
    pub fn filter(self, device_id: &str) -> String {
        match self {
            Subscription::C2d => format!("devices/{device_id}/messages/devicebound/#"),
            Subscription::Methods => "$iothub/methods/POST/#".into(),
            Subscription::TwinResponses => "$iothub/twin/res/#".into(),
            Subscription::DesiredPatches => "$iothub/twin/PATCH/properties/desired/#".into(),
        }
    }

    /// The subscription a filter of `device_id` asks for; `None` for any other filter (IoT Hub
    /// is not a general broker: no wildcards of its own, no other device's C2D).
    pub fn parse(filter: &str, device_id: &str) -> Option<Subscription> {
        match filter {
            "$iothub/methods/POST/#" => Some(Subscription::Methods),
            "$iothub/twin/res/#" => Some(Subscription::TwinResponses),
            "$iothub/twin/PATCH/properties/desired/#" => Some(Subscription::DesiredPatches),
            _ => filter
                .strip_prefix("devices/")
                .and_then(|rest| rest.strip_prefix(device_id))
                .filter(|rest| *rest == "/messages/devicebound/#")
                .map(|_| Subscription::C2d),
        }
    }

    /// The filters of all four for `device_id`.
    pub fn all_filters(device_id: &str) -> Vec<String> {
        Subscription::ALL
            .iter()
            .map(|s| s.filter(device_id))
            .collect()
    }
}

/// What a device publishes to the hub besides telemetry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeviceRequest {
    /// `$iothub/twin/GET/?$rid=`
    TwinGet {
        /// Request id, echoed on the answer.
        rid: String,
    },
    /// `$iothub/twin/PATCH/properties/reported/?$rid=`
    ReportedPatch {
        /// Request id, echoed on the answer.
        rid: String,
    },
    /// `$iothub/methods/res/{status}/?$rid=`
    MethodResponse {
        /// The method call's request id.
        rid: String,
        /// The device's status for the call.
        status: u16,
    },
}

/// Why a device's topic is not one IoT Hub takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TopicError {
    /// A method answer whose status is not a number.
    BadMethodStatus,
    /// Any other topic.
    Unsupported,
}

impl DeviceRequest {
    /// The topic this request is published on.
    pub(crate) fn topic(&self) -> String {
        match self {
            DeviceRequest::TwinGet { rid } => format!("{TWIN_GET}/?$rid={rid}"),
            DeviceRequest::ReportedPatch { rid } => format!("{REPORTED_PATCH}/?$rid={rid}"),
            DeviceRequest::MethodResponse { rid, status } => {
                format!("{METHOD_RESPONSE_PREFIX}{status}/?$rid={rid}")
            }
        }
    }

    /// Reads a device's non-telemetry topic (a missing `$rid` reads as empty).
    pub(crate) fn parse(topic: &str) -> Result<DeviceRequest, TopicError> {
        let (path, query) = topic.split_once("/?").unwrap_or((topic, ""));
        let rid = query_value(query, "$rid").unwrap_or_default().to_string();
        if path == TWIN_GET {
            Ok(DeviceRequest::TwinGet { rid })
        } else if path == REPORTED_PATCH {
            Ok(DeviceRequest::ReportedPatch { rid })
        } else if let Some(status) = path.strip_prefix(METHOD_RESPONSE_PREFIX) {
            let status = status.parse().map_err(|_| TopicError::BadMethodStatus)?;
            Ok(DeviceRequest::MethodResponse { rid, status })
        } else {
            Err(TopicError::Unsupported)
        }
    }
}

/// What the hub publishes to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CloudPublish {
    /// `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]`: the answer to a twin request.
    TwinResponse {
        /// Status (one that does not parse reads as 500, a server error).
        status: u16,
        /// The request it answers.
        rid: String,
        /// The reported properties' new version, after a PATCH.
        version: Option<u64>,
    },
    /// `$iothub/twin/PATCH/properties/desired/?$version={v}`
    DesiredPatch {
        /// The desired properties' version after the patch (absent if it does not parse).
        version: Option<u64>,
    },
    /// `$iothub/methods/POST/{name}/?$rid={rid}`
    MethodRequest {
        /// Method name.
        name: String,
        /// Request id to answer with.
        rid: String,
    },
    /// `devices/{deviceId}/messages/devicebound/{bag}` (`deviceBound` is read too)
    C2d {
        /// The device it is for.
        device_id: String,
        /// The property bag, encoded (see [`super::bags`]).
        bag: String,
    },
}

impl CloudPublish {
    /// The topic this publish goes out on.
    pub(crate) fn topic(&self) -> String {
        match self {
            CloudPublish::TwinResponse {
                status,
                rid,
                version: Some(v),
            } => format!("{TWIN_RESPONSE_PREFIX}{status}/?$rid={rid}&$version={v}"),
            CloudPublish::TwinResponse {
                status,
                rid,
                version: None,
            } => format!("{TWIN_RESPONSE_PREFIX}{status}/?$rid={rid}"),
            CloudPublish::DesiredPatch { version: Some(v) } => {
                format!("{DESIRED_PREFIX}?$version={v}")
            }
            CloudPublish::DesiredPatch { version: None } => DESIRED_PREFIX.to_string(),
            CloudPublish::MethodRequest { name, rid } => {
                format!("{METHOD_REQUEST_PREFIX}{name}/?$rid={rid}")
            }
            CloudPublish::C2d { device_id, bag } => {
                format!("devices/{device_id}/messages/devicebound/{bag}")
            }
        }
    }

    /// The C2D message carrying `message_id` and application `properties`, with the system
    /// properties IoT Hub adds (`$.mid`, `$.to`) and, when its sender set one, its expiry
    /// first (`$.exp`, as IoT Hub writes times).
    pub(crate) fn c2d<'a>(
        device_id: &str,
        message_id: &str,
        expiry: Option<&str>,
        properties: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> CloudPublish {
        let to = c2d_address(device_id);
        let system = [("$.mid", message_id), ("$.to", to.as_str())];
        let mut bag = encode_property_bag(expiry.map(|e| ("$.exp", e)).into_iter().chain(system));
        let application = encode_property_bag(properties);
        if !application.is_empty() {
            bag.push('&');
            bag.push_str(&application);
        }
        CloudPublish::C2d {
            device_id: device_id.to_string(),
            bag,
        }
    }

    /// Reads what the hub published to `device_id`; `None` for a topic the hub does not use
    /// (and for another device's C2D).
    pub(crate) fn parse(topic: &str, device_id: &str) -> Option<CloudPublish> {
        if let Some(rest) = topic.strip_prefix(TWIN_RESPONSE_PREFIX) {
            let (status, query) = rest.split_once("/?").unwrap_or((rest, ""));
            Some(CloudPublish::TwinResponse {
                status: status.parse().unwrap_or(500),
                rid: query_value(query, "$rid").unwrap_or_default().to_string(),
                version: query_value(query, "$version").and_then(|v| v.parse().ok()),
            })
        } else if let Some(rest) = topic.strip_prefix(DESIRED_PREFIX) {
            let query = rest.strip_prefix('?').unwrap_or(rest);
            Some(CloudPublish::DesiredPatch {
                version: query_value(query, "$version").and_then(|v| v.parse().ok()),
            })
        } else if let Some(rest) = topic.strip_prefix(METHOD_REQUEST_PREFIX) {
            let (name, query) = rest.split_once("/?").unwrap_or((rest, ""));
            Some(CloudPublish::MethodRequest {
                name: name.to_string(),
                rid: query_value(query, "$rid").unwrap_or_default().to_string(),
            })
        } else {
            let rest = topic.strip_prefix("devices/")?.strip_prefix(device_id)?;
            let bag = rest
                .strip_prefix("/messages/devicebound/")
                .or_else(|| rest.strip_prefix("/messages/deviceBound/"))?;
            Some(CloudPublish::C2d {
                device_id: device_id.to_string(),
                bag: bag.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::bags::parse_property_bag;

    #[test]
    fn subscriptions_round_trip_and_refuse_others() {
        for subscription in Subscription::ALL {
            assert_eq!(
                Subscription::parse(&subscription.filter("dev-1"), "dev-1"),
                Some(subscription)
            );
        }
        assert_eq!(
            Subscription::all_filters("d1"),
            [
                "devices/d1/messages/devicebound/#",
                "$iothub/methods/POST/#",
                "$iothub/twin/res/#",
                "$iothub/twin/PATCH/properties/desired/#"
            ]
        );
        for other in [
            "devices/dev-2/messages/devicebound/#",
            "devices/dev-1/messages/devicebound/x",
            "devices/dev-1/messages/events/#",
            "#",
            "$iothub/#",
            "$iothub/twin/res/200",
        ] {
            assert_eq!(Subscription::parse(other, "dev-1"), None, "{other}");
        }
    }

    #[test]
    fn telemetry_topics_round_trip() {
        let bag = encode_property_bag([("$.mid", "m 1"), ("temp", "21")]);
        let topic = format!("{}{bag}", telemetry_prefix("dev-1"));
        assert_eq!(telemetry_bag(&topic, "dev-1"), Some(bag.as_str()));
        // The wire spec's example (section 3.2), and the bare forms IoT Hub accepts.
        assert_eq!(
            telemetry_bag(
                "devices/d1/messages/events/%24.mid=abc&%24.ct=application%2Fjson&%24.ce=utf-8&temp=21",
                "d1"
            ),
            Some("%24.mid=abc&%24.ct=application%2Fjson&%24.ce=utf-8&temp=21")
        );
        assert_eq!(telemetry_bag("devices/d1/messages/events/", "d1"), Some(""));
        assert_eq!(telemetry_bag("devices/d1/messages/events", "d1"), Some(""));
        for other in [
            "devices/d2/messages/events/",
            "devices/d1/messages/eventsx",
            "devices/d1x/messages/events/",
            "devices/d1/messages/devicebound/",
        ] {
            assert_eq!(telemetry_bag(other, "d1"), None, "{other}");
        }
    }

    #[test]
    fn device_requests_round_trip() {
        for request in [
            DeviceRequest::TwinGet { rid: "1".into() },
            DeviceRequest::ReportedPatch {
                rid: "c0ffee".into(),
            },
            DeviceRequest::MethodResponse {
                rid: "9".into(),
                status: 200,
            },
        ] {
            assert_eq!(DeviceRequest::parse(&request.topic()), Ok(request.clone()));
        }
        // As the Python SDK sends them (wire spec, sections 3.4 and 3.5).
        assert_eq!(
            DeviceRequest::parse("$iothub/twin/GET/?$rid=0b7a1c6e-7b1c"),
            Ok(DeviceRequest::TwinGet {
                rid: "0b7a1c6e-7b1c".into()
            })
        );
        assert_eq!(
            DeviceRequest::parse("$iothub/methods/res/404/?$rid=1"),
            Ok(DeviceRequest::MethodResponse {
                rid: "1".into(),
                status: 404
            })
        );
        assert_eq!(
            DeviceRequest::parse("$iothub/methods/res/ok/?$rid=1"),
            Err(TopicError::BadMethodStatus)
        );
        for other in ["devices/d/messages/events/", "$iothub/twin/GET/x", "x"] {
            assert_eq!(
                DeviceRequest::parse(other),
                Err(TopicError::Unsupported),
                "{other}"
            );
        }
    }

    #[test]
    fn cloud_publishes_round_trip() {
        for publish in [
            CloudPublish::TwinResponse {
                status: 200,
                rid: "1".into(),
                version: None,
            },
            CloudPublish::TwinResponse {
                status: 204,
                rid: "2".into(),
                version: Some(7),
            },
            CloudPublish::DesiredPatch { version: Some(3) },
            CloudPublish::MethodRequest {
                name: "reboot".into(),
                rid: "5".into(),
            },
            CloudPublish::c2d("dev-1", "m-1", None, [("k", "v w")]),
            CloudPublish::c2d(
                "dev-1",
                "m-2",
                Some("3237-07-19T23:06:40.0000000Z"),
                [("iothub-ack", "positive")],
            ),
        ] {
            assert_eq!(
                CloudPublish::parse(&publish.topic(), "dev-1"),
                Some(publish.clone())
            );
        }
        let CloudPublish::C2d { bag, .. } = CloudPublish::c2d("dev-1", "m-1", None, [("k", "v")])
        else {
            unreachable!()
        };
        let (properties, system) = parse_property_bag(&bag);
        assert_eq!(properties, vec![("k".into(), "v".into())]);
        assert_eq!(
            system,
            vec![
                ("mid".into(), "m-1".into()),
                ("to".into(), "/devices/dev-1/messages/devicebound".into())
            ]
        );
    }

    #[test]
    fn the_hubs_real_topics_parse() {
        // Wire spec, section 3.3: IoT Hub's C2D delivery.
        let delivered = "devices/fake_device/messages/devicebound/%24.exp=3237-07-19T23%3A06%3A40.0000000Z&%24.cid=fake_corid&%24.mid=6b822696-f75a-46f5-8b02-0680db65abf5&%24.to=%2Fdevices%2Ffake_device%2Fmessages%2Fdevicebound&%24.ct=fake_content_type&%24.ce=utf-8&iothub-ack=positive";
        let Some(CloudPublish::C2d { bag, .. }) = CloudPublish::parse(delivered, "fake_device")
        else {
            panic!("not read as C2D")
        };
        let (properties, system) = parse_property_bag(&bag);
        assert_eq!(properties, vec![("iothub-ack".into(), "positive".into())]);
        assert_eq!(system.len(), 6);
        // The emulator writes the expiry where IoT Hub does: first, in the same form.
        let ours = CloudPublish::c2d(
            "fake_device",
            "6b822696-f75a-46f5-8b02-0680db65abf5",
            Some("3237-07-19T23:06:40.0000000Z"),
            [("iothub-ack", "positive")],
        )
        .topic();
        assert!(
            ours.starts_with("devices/fake_device/messages/devicebound/%24.exp=3237-07-19T23%3A06%3A40.0000000Z&%24.mid=6b822696-f75a-46f5-8b02-0680db65abf5&"),
            "{ours}"
        );
        assert!(ours.ends_with("&iothub-ack=positive"), "{ours}");
        assert_eq!(
            CloudPublish::parse("devices/d/messages/deviceBound/a=b", "d"),
            Some(CloudPublish::C2d {
                device_id: "d".into(),
                bag: "a=b".into()
            })
        );
        assert_eq!(
            CloudPublish::parse("$iothub/twin/res/204/?$rid=1&$version=12", "d"),
            Some(CloudPublish::TwinResponse {
                status: 204,
                rid: "1".into(),
                version: Some(12)
            })
        );
        assert_eq!(
            CloudPublish::parse("$iothub/twin/PATCH/properties/desired/?$version=4", "d"),
            Some(CloudPublish::DesiredPatch { version: Some(4) })
        );
        assert_eq!(
            CloudPublish::parse("$iothub/methods/POST/reboot/?$rid=3", "d"),
            Some(CloudPublish::MethodRequest {
                name: "reboot".into(),
                rid: "3".into()
            })
        );
        assert_eq!(
            CloudPublish::parse("$iothub/twin/res/x/?$rid=1", "d"),
            Some(CloudPublish::TwinResponse {
                status: 500,
                rid: "1".into(),
                version: None
            })
        );
        for other in ["devices/e/messages/devicebound/a=b", "$iothub/other", ""] {
            assert_eq!(CloudPublish::parse(other, "d"), None, "{other}");
        }
    }

    #[test]
    fn the_username_and_audience_are_the_sdks() {
        assert_eq!(
            username("hub.example", "dev-1", "2021-04-12", "dpskit/0.1"),
            "hub.example/dev-1/?api-version=2021-04-12&DeviceClientType=dpskit%2F0.1"
        );
        assert_eq!(
            sas_audience("hub.example", "dev-1"),
            "hub.example/devices/dev-1"
        );
    }

    #[test]
    fn a_c2d_address_names_its_device_and_nothing_else_does() {
        assert_eq!(c2d_device(&c2d_address("dev-1")), Some("dev-1"));
        // As azure-iot-hub's send_c2d_message sets it.
        assert_eq!(
            c2d_device("/devices/dev1/messages/devicebound"),
            Some("dev1")
        );
        for other in [
            "/devices//messages/devicebound",
            "/devices/a/b/messages/devicebound",
            "devices/dev1/messages/devicebound",
            "/devices/dev1/messages/events",
            "",
        ] {
            assert_eq!(c2d_device(other), None, "{other}");
        }
    }
}
