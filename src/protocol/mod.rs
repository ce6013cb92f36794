//! What both sides of the wire agree on, written once and used by the device clients, the
//! REST clients and the emulator alike (none of which may import another). Each vocabulary is
//! built and parsed in one place, with its round-trip tests beside it:
//!
//! - [`dps`]: DPS's MQTT username, topics (register, status poll, response) and the
//!   register/status JSON as serde types;
//! - [`dps_service`]: the DPS service API's JSON (enrollments, attestation, registration
//!   states, bulk operations, errors) and ARM's CA certificate resource, as serde types;
//! - [`hub`]: IoT Hub's MQTT username, telemetry topic, the four subscriptions (one type for
//!   both sides), twin, method and C2D topics;
//! - [`hub_service`]: the IoT Hub service API's JSON (device identities, twins), as serde
//!   types;
//! - [`c2d`]: cloud-to-device messages from a back end: the send and feedback nodes, the
//!   acknowledgement a sender asks for, lifetimes, and the feedback record;
//! - [`event_hubs`]: the AMQP vocabulary of a hub's built-in Event Hub-compatible endpoint
//!   (nodes, CBS and management properties, partition addresses, start-position selectors,
//!   IoT Hub's message annotations);
//! - [`bags`]: property bags, encoded and decoded;
//! - [`names`]: Azure's resource-name rules;
//! - here: query strings, what a CONNECT username routes to, and the size IoT Hub counts of a
//!   message.
//!
//! The numbers Azure limits are in [`crate::limits`].

pub(crate) mod bags;
pub(crate) mod c2d;
pub(crate) mod credentials;
pub(crate) mod dps;
pub(crate) mod dps_service;
pub(crate) mod event_hubs;
pub(crate) mod hub;
pub(crate) mod hub_service;
pub(crate) mod names;

pub(crate) use bags::parse_property_bag;
pub(crate) use names::{
    validate_consumer_group_name, validate_dps_name, validate_hub_name, validate_namespace_name,
    validate_policy_name,
};

/// Splits `a=b&c=d` into raw pairs (values not decoded).
pub(crate) fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// The raw value of `key` in a query string (the first one; not decoded).
pub(crate) fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query_pairs(query).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// The `api-version` a CONNECT username names (DPS's `.../api-version=...&...` and the hub's
/// `.../?api-version=...&...` alike), raw; `None` when it names none.
pub(crate) fn username_api_version(username: &str) -> Option<&str> {
    let (_, tail) = username.split_once("api-version=")?;
    let version = tail.split('&').next().unwrap_or_default();
    (!version.is_empty()).then_some(version)
}

/// Whether api-version `version` is `minimum` or later. Azure's versions are dates with an
/// optional `-preview` suffix: compared by the date alone, so a GA version of the same or a
/// later date counts as well as the preview.
pub(crate) fn api_version_at_least(version: &str, minimum: &str) -> bool {
    let date = |v: &str| v.get(..10).map(str::to_string);
    match (date(version), date(minimum)) {
        (Some(version), Some(minimum)) => {
            version.bytes().all(|b| b.is_ascii_digit() || b == b'-') && version >= minimum
        }
        _ => false,
    }
}

/// What a CONNECT username says about the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `{idScope}/registrations/{registrationId}/api-version=...` (no `?` in real clients, but
    /// accepted): see [`dps::username`].
    Dps {
        /// ID scope.
        id_scope: String,
        /// Registration id.
        registration_id: String,
    },
    /// `{hubHost}/{deviceId}[/{moduleId}]/?api-version=...`: see [`hub::username`].
    Hub {
        /// Host name the device believes it talks to.
        host: String,
        /// Device id.
        device_id: String,
        /// Module id, for module clients.
        module_id: Option<String>,
    },
}

/// Classifies a CONNECT username; `None` when it matches neither shape.
pub(crate) fn route(username: &str) -> Option<Route> {
    let mut parts = username.splitn(4, '/');
    let first = parts.next()?;
    let second = parts.next()?;
    let third = parts.next();
    let rest = parts.next();
    if second == "registrations" {
        let registration_id = third?;
        if first.is_empty() || registration_id.is_empty() {
            return None;
        }
        return Some(Route::Dps {
            id_scope: first.to_string(),
            registration_id: registration_id.to_string(),
        });
    }
    // Hub: host/device/?query or host/device/module/?query
    let (device_id, module_id) = match (third, rest) {
        (Some(q), None) if q.starts_with('?') => (second, None),
        (Some(module), Some(q)) if q.starts_with('?') && !module.is_empty() => {
            (second, Some(module))
        }
        _ => return None,
    };
    if first.is_empty() || device_id.is_empty() {
        return None;
    }
    Some(Route::Hub {
        host: first.to_string(),
        device_id: device_id.to_string(),
        module_id: module_id.map(str::to_string),
    })
}

/// The size IoT Hub counts for a device-to-cloud message, against its 256 KB and in the daily
/// meter's blocks: the body plus the names and values of its properties, application and
/// system (the latter named without their `$.` prefix), as decoded from the property bag. The
/// emulator meters with it and the fleet reports it, so the estimate of Azure's quota counts
/// the bytes the hub counted.
pub(crate) fn counted_message_size<'a>(
    body: usize,
    properties: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> usize {
    body + properties
        .into_iter()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usernames_api_version_is_read_and_compared_by_its_date() {
        let dps = "0ne00000001/registrations/dev-1/api-version=2025-07-01-preview&ClientVersion=x";
        assert_eq!(username_api_version(dps), Some("2025-07-01-preview"));
        let hub = "hub.example/dev-1/?api-version=2025-08-01-preview&DeviceClientType=x";
        assert_eq!(username_api_version(hub), Some("2025-08-01-preview"));
        assert_eq!(
            username_api_version("hub.example/dev-1/?DeviceClientType=x"),
            None
        );
        assert_eq!(username_api_version("h/d/?api-version=&x=1"), None);
        let csr = dps::CSR_API_VERSION;
        assert!(api_version_at_least("2025-07-01-preview", csr));
        assert!(api_version_at_least("2026-11-01", csr));
        assert!(!api_version_at_least("2021-06-01", csr));
        assert!(!api_version_at_least("2019-03-31", csr));
        assert!(!api_version_at_least("garbage", csr));
        assert!(!api_version_at_least("2025-0x-01", csr));
        assert!(api_version_at_least(
            "2025-08-01-preview",
            credentials::API_VERSION
        ));
        assert!(!api_version_at_least(
            "2021-04-12",
            credentials::API_VERSION
        ));
    }

    #[test]
    fn usernames_route_as_built_and_as_every_sdk_sends_them() {
        assert_eq!(
            route(&dps::username("0ne00000001", "dev-1", "dpskit/1.0")),
            Some(Route::Dps {
                id_scope: "0ne00000001".into(),
                registration_id: "dev-1".into()
            })
        );
        assert_eq!(
            route(&hub::username(
                "hub.example",
                "dev-1",
                "2021-04-12",
                "dpskit/1.0"
            )),
            Some(Route::Hub {
                host: "hub.example".into(),
                device_id: "dev-1".into(),
                module_id: None
            })
        );
        assert_eq!(
            route(
                "0ne00000001/registrations/dev-1/api-version=2019-03-31&ClientVersion=azure-iot-device-provisioning-py%2F2.14.0"
            ),
            Some(Route::Dps {
                id_scope: "0ne00000001".into(),
                registration_id: "dev-1".into()
            })
        );
        assert_eq!(
            route("0ne00000001/registrations/dev-1/?api-version=2021-06-01"),
            Some(Route::Dps {
                id_scope: "0ne00000001".into(),
                registration_id: "dev-1".into()
            })
        );
        assert_eq!(
            route("127.0.0.2/dev-1/?api-version=2019-10-01&DeviceClientType=x"),
            Some(Route::Hub {
                host: "127.0.0.2".into(),
                device_id: "dev-1".into(),
                module_id: None
            })
        );
        assert_eq!(
            route("hub.example/dev-1/mod-a/?api-version=2019-10-01"),
            Some(Route::Hub {
                host: "hub.example".into(),
                device_id: "dev-1".into(),
                module_id: Some("mod-a".into())
            })
        );
        for bad in [
            "",
            "x",
            "a/b",
            "/registrations/x/",
            "scope/registrations//",
            "host//?x",
            "host/dev/extra",
        ] {
            assert_eq!(route(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn query_values_are_found_raw() {
        assert_eq!(
            query_value("$rid=1&retry-after=3", "retry-after"),
            Some("3")
        );
        assert_eq!(query_value("a&b=%24", "b"), Some("%24"));
        assert_eq!(query_value("a", "a"), Some(""));
        assert_eq!(query_value("", "a"), None);
    }

    /// Random and mutated input never panics (a small, deterministic fuzz run).
    #[test]
    fn random_input_never_panics() {
        let seeds = [
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&operationId=5.a%2",
            "$dps/registrations/res/202/?$rid=1&retry-after=3",
            "0ne00000001/registrations/dev/api-version=1",
            "h/d/m/?",
            "$iothub/twin/res/204/?$rid=1&$version=2",
            "$iothub/methods/POST/reboot/?$rid=9",
            "devices/d/messages/devicebound/%24.mid=1&a",
            "devices/d/messages/events/%24.ct=x",
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let seed = seeds[(next() % seeds.len() as u64) as usize].as_bytes();
            let mut bytes = seed.to_vec();
            for _ in 0..(next() % 6) {
                let i = (next() as usize) % (bytes.len() + 1);
                match next() % 3 {
                    0 if i < bytes.len() => bytes[i] = next() as u8,
                    1 => bytes.insert(i, b"/?&=%$"[(next() % 6) as usize]),
                    _ => bytes.truncate(i),
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = route(&text);
            let _ = dps::Request::parse(&text);
            let _ = dps::Response::parse(&text);
            let _ = hub::DeviceRequest::parse(&text);
            let _ = hub::CloudPublish::parse(&text, "d");
            let _ = hub::telemetry_bag(&text, "d");
            let _ = hub::Subscription::parse(&text, "d");
            let _ = parse_property_bag(&text);
        }
    }
}
