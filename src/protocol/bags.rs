//! Property bags: the `key=value&...` text that rides at the end of a telemetry or C2D topic,
//! each key and value percent-encoded, system properties marked `$.` (sent as `%24.`). Encoded
//! by whoever sends a message (the device client's telemetry, the emulator's C2D) and decoded
//! by whoever receives one, here only.

use crate::sas::{url_decode, url_encode};

/// Ordered `(key, value)` pairs of a property bag.
pub(crate) type Properties = Vec<(String, String)>;

/// The prefix that marks a system property (`$.mid`, `$.ct`, ...) in a bag.
pub(crate) const SYSTEM_PREFIX: &str = "$.";

/// Encodes `(key, value)` pairs, in the order given, as a bag: each key and value
/// percent-encoded with no safe characters but `-._~` (the Python SDK's
/// `urlencode(quote_via=quote)`), so `$.mid` travels as `%24.mid` and `/` as `%2F`.
pub(crate) fn encode_property_bag<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut bag = String::new();
    for (k, v) in pairs {
        if !bag.is_empty() {
            bag.push('&');
        }
        bag.push_str(&url_encode(k));
        bag.push('=');
        bag.push_str(&url_encode(v));
    }
    bag
}

/// Decodes a property bag (`a=b&%24.ct=...`) into (application, system) properties: keys and
/// values percent-decoded; `$.` and `%24.` both mark system properties, returned without the
/// prefix. A pair without `=` is a key with an empty value; an escape that does not decode is
/// kept as written.
pub(crate) fn parse_property_bag(bag: &str) -> (Properties, Properties) {
    let mut properties = Vec::new();
    let mut system = Vec::new();
    for pair in bag.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = url_decode(k).unwrap_or_else(|_| k.to_string());
        let v = url_decode(v).unwrap_or_else(|_| v.to_string());
        match k.strip_prefix(SYSTEM_PREFIX) {
            Some(system_key) => system.push((system_key.to_string(), v)),
            None => properties.push((k, v)),
        }
    }
    (properties, system)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bag_round_trips_through_encode_and_parse() {
        let system = [("$.mid", "abc"), ("$.ct", "application/json")];
        let application = [("temp", "21"), ("zone", "a/b c&d=e"), ("ünï", "çødé")];
        let bag = encode_property_bag(system.iter().chain(&application).copied());
        let (properties, system_properties) = parse_property_bag(&bag);
        let owned = |pairs: &[(&str, &str)]| -> Properties {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(properties, owned(&application));
        assert_eq!(
            system_properties,
            owned(&[("mid", "abc"), ("ct", "application/json")])
        );
        assert_eq!(encode_property_bag([]), "");
        assert_eq!(parse_property_bag(""), (vec![], vec![]));
    }

    #[test]
    fn the_sdks_bags_parse() {
        // The Python SDK's telemetry bag (wire spec, section 3.2).
        let (properties, system) =
            parse_property_bag("%24.mid=abc&%24.ct=application%2Fjson&%24.ce=utf-8&temp=21");
        assert_eq!(properties, vec![("temp".into(), "21".into())]);
        assert_eq!(
            system,
            vec![
                ("mid".into(), "abc".into()),
                ("ct".into(), "application/json".into()),
                ("ce".into(), "utf-8".into())
            ]
        );
        // IoT Hub's C2D delivery (wire spec, section 3.3): a key alone, and `$.` unencoded.
        let (properties, system) = parse_property_bag(
            "%24.to=%2Fdevices%2Ffake_device%2Fmessages%2Fdevicebound&iothub-ack=positive&flag&$.cid=x",
        );
        assert_eq!(
            properties,
            vec![
                ("iothub-ack".into(), "positive".into()),
                ("flag".into(), String::new())
            ]
        );
        assert_eq!(
            system,
            vec![
                (
                    "to".into(),
                    "/devices/fake_device/messages/devicebound".into()
                ),
                ("cid".into(), "x".into())
            ]
        );
        // A broken escape is kept as written, not dropped.
        assert_eq!(
            parse_property_bag("a=%zz").0,
            vec![("a".into(), "%zz".into())]
        );
    }
}
