//! What both sides of the wire agree on, written once and used by the device clients, the
//! REST clients and the emulator alike (none of which may import another): MQTT query strings
//! and property bags, the size IoT Hub counts of a message, and Azure's rules for resource
//! names. The numbers Azure limits are in [`crate::limits`].

use crate::error::{Error, Result};

/// Splits `a=b&c=d` into raw pairs (values not decoded).
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Ordered `(key, value)` pairs of a property bag.
pub type Properties = Vec<(String, String)>;

/// Decodes a property bag (`a=b&%24.ct=...`) into (application, system) properties: keys and
/// values percent-decoded; `$.` and `%24.` both mark system properties.
pub fn parse_property_bag(bag: &str) -> (Properties, Properties) {
    let mut properties = Vec::new();
    let mut system = Vec::new();
    for pair in bag.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = crate::sas::url_decode(k).unwrap_or_else(|_| k.to_string());
        let v = crate::sas::url_decode(v).unwrap_or_else(|_| v.to_string());
        match k.strip_prefix("$.") {
            Some(system_key) => system.push((system_key.to_string(), v)),
            None => properties.push((k, v)),
        }
    }
    (properties, system)
}

/// The size IoT Hub counts for a device-to-cloud message, against its 256 KB and in the daily
/// meter's blocks: the body plus the names and values of its properties, application and
/// system (the latter named without their `$.` prefix), as decoded from the property bag. The
/// emulator meters with it and the fleet reports it, so the estimate of Azure's quota counts
/// the bytes the hub counted.
pub fn counted_message_size<'a>(
    body: usize,
    properties: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> usize {
    body + properties
        .into_iter()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>()
}

/// Longest IoT hub name Azure accepts.
pub const MAX_HUB_NAME_LEN: usize = 50;
/// Longest DPS name Azure accepts.
pub const MAX_DPS_NAME_LEN: usize = 64;

/// Checks an IoT hub name against Azure's rule: 3 to 50 ASCII letters, digits and hyphens, not
/// ending with a hyphen (Azure's resource naming rules for `Microsoft.Devices/IotHubs`; the
/// name becomes the host name `{name}.azure-devices.net`). The client and the emulator both
/// apply it, so a name Azure would refuse fails locally too.
pub fn validate_hub_name(name: &str) -> Result<()> {
    check_azure_name("IoT hub", name, MAX_HUB_NAME_LEN)
}

/// Checks a DPS name against Azure's rule: 3 to 64 ASCII letters, digits and hyphens, ending
/// with a letter or digit. The resource provider's spec gives `^[A-Za-z0-9-]{3,64}$` (the
/// `provisioningServiceName` pattern of the recent `Microsoft.Devices/provisioningServices`
/// api-versions) and the ARM template reference adds "end with alphanumeric".
pub fn validate_dps_name(name: &str) -> Result<()> {
    check_azure_name("provisioning service", name, MAX_DPS_NAME_LEN)
}

fn check_azure_name(what: &str, name: &str, max: usize) -> Result<()> {
    let invalid = |rule: String| {
        Err(Error::Config(format!(
            "invalid {what} name {name:?}: {rule}; Azure accepts 3-{max} ASCII letters, digits \
             and hyphens, not ending with a hyphen"
        )))
    };
    let len = name.chars().count();
    if !(3..=max).contains(&len) {
        return invalid(format!("{len} characters"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return invalid(format!("character {bad:?} is not allowed"));
    }
    if name.ends_with('-') {
        return invalid("it ends with a hyphen".into());
    }
    Ok(())
}
