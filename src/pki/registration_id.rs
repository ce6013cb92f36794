//! DPS registration id rules.

use crate::error::{Error, Result};

/// Longest registration id DPS accepts.
pub(crate) const MAX_REGISTRATION_ID_LEN: usize = 128;
/// Longest id usable as an X.509 subject CN (the `ub-common-name` bound of RFC 5280).
pub(crate) const MAX_X509_REGISTRATION_ID_LEN: usize = 64;

/// Checks `id` against DPS's rules: 1 to 128 characters from `A-Z a-z 0-9 - . _ :`, ending in an
/// alphanumeric character or `-`; with `x509`, at most 64 characters because it becomes the
/// certificate's CN.
pub(crate) fn validate_registration_id(id: &str, x509: bool) -> Result<()> {
    let invalid = |rule: String| Error::cert(format!("invalid registration id {id:?}: {rule}"));
    if id.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    let max = if x509 {
        MAX_X509_REGISTRATION_ID_LEN
    } else {
        MAX_REGISTRATION_ID_LEN
    };
    let len = id.chars().count();
    if len > max {
        let why = if x509 {
            "the longest an X.509 CN can be, and DPS needs CN = registration id"
        } else {
            "the longest DPS accepts"
        };
        return Err(invalid(format!("{len} characters; at most {max} ({why})")));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':')))
    {
        return Err(invalid(format!(
            "character {bad:?} is not allowed; DPS accepts A-Z, a-z, 0-9 and - . _ :"
        )));
    }
    let last = id.chars().last().unwrap_or('-');
    if !(last.is_ascii_alphanumeric() || last == '-') {
        return Err(invalid(format!(
            "it ends in {last:?}; the last character must be alphanumeric or '-'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for id in ["a", "sensor-001", "A-b.c_d:e-", "x9", &"a".repeat(64)] {
            validate_registration_id(id, true).unwrap();
        }
        validate_registration_id(&"a".repeat(128), false).unwrap();
    }

    #[test]
    fn names_the_rule_that_fails() {
        let cases = [
            ("", true, "empty"),
            ("has space", true, "' '"),
            ("slash/no", true, "'/'"),
            ("caf\u{e9}", true, "'\u{e9}'"),
            ("ends-with.", true, "ends in '.'"),
            ("ends_", true, "ends in '_'"),
        ];
        for (id, x509, fragment) in cases {
            let message = validate_registration_id(id, x509).unwrap_err().to_string();
            assert!(message.contains(fragment), "{id:?}: {message}");
        }
        let long = "a".repeat(65);
        assert!(
            validate_registration_id(&long, true)
                .unwrap_err()
                .to_string()
                .contains("at most 64")
        );
        validate_registration_id(&long, false).unwrap();
        assert!(
            validate_registration_id(&"a".repeat(129), false)
                .unwrap_err()
                .to_string()
                .contains("at most 128")
        );
    }
}
