//! Parsing of MQTT usernames and topics the emulator routes on. Pure functions, so they can be
//! tested and fuzzed apart from any socket.

use crate::protocol::query_pairs;

/// What a CONNECT username says about the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `{idScope}/registrations/{registrationId}/api-version=...` (no `?` in real clients, but
    /// accepted).
    Dps {
        /// ID scope.
        id_scope: String,
        /// Registration id.
        registration_id: String,
    },
    /// `{hubHost}/{deviceId}[/{moduleId}]/?api-version=...`
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
pub fn route(username: &str) -> Option<Route> {
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

/// A DPS request topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DpsRequest {
    /// `$dps/registrations/PUT/iotdps-register/?$rid=..`
    Register {
        /// The request id, exactly as sent (echoed back unchanged).
        rid: String,
    },
    /// `$dps/registrations/GET/iotdps-get-operationstatus/?$rid=..&operationId=..`
    Poll {
        /// The request id, exactly as sent.
        rid: String,
        /// The operation id, decoded.
        operation_id: String,
    },
}

/// Parses a DPS request topic; `None` for anything else.
pub fn dps_request(topic: &str) -> Option<DpsRequest> {
    let (path, query) = topic.split_once("/?")?;
    let rid = query_pairs(query).find(|(k, _)| *k == "$rid")?.1;
    if rid.is_empty() {
        return None;
    }
    match path {
        "$dps/registrations/PUT/iotdps-register" => Some(DpsRequest::Register {
            rid: rid.to_string(),
        }),
        "$dps/registrations/GET/iotdps-get-operationstatus" => {
            let operation_id = query_pairs(query).find(|(k, _)| *k == "operationId")?.1;
            Some(DpsRequest::Poll {
                rid: rid.to_string(),
                operation_id: crate::sas::url_decode(operation_id).ok()?,
            })
        }
        _ => None,
    }
}

/// `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={n}]`; `$rid` comes first because
/// the C# SDK matches it with an anchored regex.
pub fn dps_response(status: u16, rid: &str, retry_after: Option<u32>) -> String {
    match retry_after {
        Some(seconds) => {
            format!("$dps/registrations/res/{status}/?$rid={rid}&retry-after={seconds}")
        }
        None => format!("$dps/registrations/res/{status}/?$rid={rid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_usernames_of_every_sdk() {
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
    fn parses_dps_topics() {
        assert_eq!(
            dps_request("$dps/registrations/PUT/iotdps-register/?$rid=7c9d6b1e-2bd5"),
            Some(DpsRequest::Register {
                rid: "7c9d6b1e-2bd5".into()
            })
        );
        assert_eq!(
            dps_request(
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=5.ab.c-d"
            ),
            Some(DpsRequest::Poll {
                rid: "2".into(),
                operation_id: "5.ab.c-d".into()
            })
        );
        for bad in [
            "",
            "$dps/registrations/PUT/iotdps-register/",
            "$dps/registrations/PUT/iotdps-register/?x=1",
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1",
            "devices/x/messages/events/",
        ] {
            assert_eq!(dps_request(bad), None, "{bad:?}");
        }
        assert_eq!(
            dps_response(202, "abc", Some(3)),
            "$dps/registrations/res/202/?$rid=abc&retry-after=3"
        );
    }

    /// Random and mutated input never panics (a small, deterministic fuzz run).
    #[test]
    fn random_input_never_panics() {
        let seeds = [
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&operationId=5.a%2",
            "0ne00000001/registrations/dev/api-version=1",
            "h/d/m/?",
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
            let _ = dps_request(&text);
        }
    }
}
