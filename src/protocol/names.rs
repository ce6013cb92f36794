//! Azure's rules for resource names, applied by the REST clients before they ask and by the
//! emulator before it creates, so a name Azure would refuse fails locally too.

use crate::error::{Error, Result};

/// Longest IoT hub name Azure accepts.
pub(crate) const MAX_HUB_NAME_LEN: usize = 50;
/// Longest DPS name Azure accepts.
pub(crate) const MAX_DPS_NAME_LEN: usize = 64;

/// Checks an IoT hub name against Azure's rule: 3 to 50 ASCII letters, digits and hyphens, not
/// ending with a hyphen (Azure's resource naming rules for `Microsoft.Devices/IotHubs`; the
/// name becomes the host name `{name}.azure-devices.net`). The client and the emulator both
/// apply it, so a name Azure would refuse fails locally too.
pub(crate) fn validate_hub_name(name: &str) -> Result<()> {
    check_azure_name("IoT hub", name, MAX_HUB_NAME_LEN)
}

/// Checks a DPS name against Azure's rule: 3 to 64 ASCII letters, digits and hyphens, ending
/// with a letter or digit. The resource provider's spec gives `^[A-Za-z0-9-]{3,64}$` (the
/// `provisioningServiceName` pattern of the recent `Microsoft.Devices/provisioningServices`
/// api-versions) and the ARM template reference adds "end with alphanumeric".
pub(crate) fn validate_dps_name(name: &str) -> Result<()> {
    check_azure_name("provisioning service", name, MAX_DPS_NAME_LEN)
}

/// Checks a consumer group name of a hub's events endpoint against Event Hubs' rule: 1 to 50
/// letters, digits, periods, hyphens and underscores, starting and ending with a letter or
/// digit (`$Default`, which every endpoint has, aside).
pub(crate) fn validate_consumer_group_name(name: &str) -> Result<()> {
    let alphanumeric_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let allowed = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c));
    if name == "$Default" || ((1..=50).contains(&name.len()) && alphanumeric_ends && allowed) {
        return Ok(());
    }
    Err(Error::config(format!(
        "invalid consumer group name {name:?}: Event Hubs accepts 1-50 letters, digits, periods, \
         hyphens and underscores, starting and ending with a letter or digit"
    )))
}

fn check_azure_name(what: &str, name: &str, max: usize) -> Result<()> {
    let invalid = |rule: String| {
        Err(Error::config(format!(
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

/// Azure's rule for a CA certificate's or an enrollment group's name: 1 to 128 ASCII letters,
/// digits, `-`, `_` and `.`; `what` names the kind in the error.
pub(crate) fn check_resource_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "invalid {what} name {name:?}: use 1-128 characters from A-Z a-z 0-9 - _ ."
        )))
    }
}

/// Checks an Azure Device Registry namespace name against the resource provider's rule:
/// 3 to 64 lower-case letters, digits and hyphens, starting and ending with a letter or digit
/// (`^[a-z0-9][a-z0-9-]*[a-z0-9]$`, `Microsoft.DeviceRegistry/namespaces`, `namespaces.tsp`).
pub(crate) fn validate_namespace_name(name: &str) -> Result<()> {
    let ok = (3..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        return Ok(());
    }
    Err(Error::config(format!(
        "invalid Device Registry namespace name {name:?}: Azure accepts 3-64 lower-case letters, \
         digits and hyphens, starting and ending with a letter or digit"
    )))
}

/// Checks a Device Registry credential policy name against the resource provider's rule:
/// 3 to 63 ASCII letters, digits and hyphens, starting with a letter or digit
/// (`^[0-9a-zA-Z][a-zA-Z0-9-]*$`, `ns_policy.tsp`, api-version 2025-11-01-preview).
pub(crate) fn validate_policy_name(name: &str) -> Result<()> {
    let ok = (3..=63).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-');
    if ok {
        return Ok(());
    }
    Err(Error::config(format!(
        "invalid credential policy name {name:?}: Azure accepts 3-63 ASCII letters, digits and \
         hyphens, starting with a letter or digit"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_and_group_names_take_128_letters_digits_dashes_underscores_and_dots() {
        for good in ["a", "my_ca-1.v2", &"x".repeat(128)] {
            check_resource_name("certificate", good).unwrap();
        }
        for bad in ["", "with space", "slash/", &"x".repeat(129), "é"] {
            let refused = check_resource_name("enrollment group", bad).unwrap_err();
            assert!(
                refused.to_string().contains("enrollment group"),
                "{refused}"
            );
        }
    }

    #[test]
    fn names_follow_azures_rules() {
        for good in ["abc", "my-hub-1", &"a".repeat(MAX_HUB_NAME_LEN)] {
            validate_hub_name(good).unwrap();
        }
        for bad in [
            "ab",
            "hub-",
            "hub_1",
            "hüb",
            &"a".repeat(MAX_HUB_NAME_LEN + 1),
        ] {
            assert!(
                matches!(validate_hub_name(bad), Err(Error::Config(_))),
                "{bad}"
            );
        }
        validate_dps_name(&"d".repeat(MAX_DPS_NAME_LEN)).unwrap();
        assert!(validate_dps_name(&"d".repeat(MAX_DPS_NAME_LEN + 1)).is_err());
        assert!(validate_dps_name("dps-").is_err());
    }

    #[test]
    fn device_registry_names_follow_the_resource_providers_patterns() {
        for good in ["abc", "adr-ns-01", &"n".repeat(64)] {
            validate_namespace_name(good).unwrap();
        }
        for bad in ["ab", "Upper", "-ns", "ns-", "n_s", &"n".repeat(65)] {
            assert!(validate_namespace_name(bad).is_err(), "{bad}");
        }
        for good in ["abc", "Default-1", "9policy-", &"p".repeat(63)] {
            validate_policy_name(good).unwrap();
        }
        for bad in ["ab", "-pol", "pol_1", "pol.1", &"p".repeat(64)] {
            assert!(validate_policy_name(bad).is_err(), "{bad}");
        }
    }
}
