//! Shared access signatures (SAS) as DPS and IoT Hub use them, and group-derived device keys.
//!
//! Verification follows what every official client actually sends: the HMAC covers the `sr`
//! value exactly as it appears in the token (still percent-encoded, in whichever case the client
//! chose), `skn` may be absent, empty or present.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::hmac;

use crate::error::{Error, Result};

/// `base64(HMAC-SHA256(base64decode(group_key), registration_id))`: the key a device of a
/// symmetric-key enrollment group uses.
pub fn derive_device_key(group_key: &str, registration_id: &str) -> Result<String> {
    let key = decode_key(group_key)?;
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &key),
        registration_id.as_bytes(),
    );
    Ok(BASE64.encode(tag.as_ref()))
}

fn decode_key(key: &str) -> Result<Vec<u8>> {
    BASE64
        .decode(key.trim())
        .map_err(|_| Error::config("the symmetric key is not valid base64"))
}

/// Shortest symmetric key Azure takes (DPS enrollments, hub identities), in bytes.
pub(crate) const MIN_SYMMETRIC_KEY_BYTES: usize = 16;

/// Checks a symmetric key as Azure does: base64 of at least [`MIN_SYMMETRIC_KEY_BYTES`] bytes;
/// `which` names the key in the error (`primary_key`, ...).
pub(crate) fn validate_symmetric_key(which: &str, key: &str) -> Result<()> {
    match BASE64.decode(key) {
        Ok(raw) if raw.len() >= MIN_SYMMETRIC_KEY_BYTES => Ok(()),
        _ => Err(Error::config(format!(
            "{which} must be base64 of at least {MIN_SYMMETRIC_KEY_BYTES} bytes"
        ))),
    }
}

/// A fresh random 256-bit key, base64-encoded (what Azure generates for enrollments).
pub(crate) fn generate_key() -> Result<String> {
    let mut key = [0u8; 32];
    crate::random::fill_random(&mut key)?;
    Ok(BASE64.encode(key))
}

/// Percent-encodes everything but unreserved characters, with upper-case hex (Python, C#).
pub(crate) fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (either case); `+` stays `+` because no client sends it for a space.
pub(crate) fn url_decode(text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::protocol(format!("bad percent-escape in {text:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::protocol(format!("{text:?} is not UTF-8")))
}

/// Builds a token: `SharedAccessSignature sr=..&sig=..&se=..[&skn=..]`.
pub(crate) fn build_token(
    resource_uri: &str,
    key: &str,
    expiry: i64,
    key_name: Option<&str>,
) -> Result<String> {
    let sr = url_encode(resource_uri);
    let signature = sign(&decode_key(key)?, &sr, expiry);
    let mut token = format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry}",
        url_encode(&signature)
    );
    if let Some(name) = key_name {
        token.push_str(&format!("&skn={}", url_encode(name)));
    }
    Ok(token)
}

/// Builds a token the way the Event Hubs and Service Bus clients sign one: the key's text
/// itself (its UTF-8 bytes) is the HMAC key, as IoT Hub's Event Hub-compatible endpoint takes
/// its policies' keys (see [`SasToken::is_signed_by_key_text`]).
pub(crate) fn build_token_with_key_text(
    resource_uri: &str,
    key: &str,
    expiry: i64,
    key_name: &str,
) -> String {
    let sr = url_encode(resource_uri);
    let signature = sign(key.as_bytes(), &sr, expiry);
    format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry}&skn={}",
        url_encode(&signature),
        url_encode(key_name)
    )
}

fn sign(key: &[u8], raw_sr: &str, expiry: i64) -> String {
    let message = format!("{raw_sr}\n{expiry}");
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message.as_bytes());
    BASE64.encode(tag.as_ref())
}

/// A parsed token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken {
    /// `sr` exactly as sent (percent-encoded); the signature covers these bytes.
    pub raw_resource: String,
    /// `sr` decoded.
    pub resource: String,
    /// Decoded signature (base64 text).
    pub signature: String,
    /// Expiry, Unix seconds.
    pub expiry: i64,
    /// Key name, if sent and not empty.
    pub key_name: Option<String>,
}

impl SasToken {
    /// Parses `SharedAccessSignature sr=...&sig=...&se=...[&skn=...]` in any field order.
    pub fn parse(token: &str) -> Result<Self> {
        let bad = |why: &str| Error::protocol(format!("malformed SAS token: {why}"));
        let body = token
            .trim()
            .strip_prefix("SharedAccessSignature ")
            .ok_or_else(|| bad("it must start with 'SharedAccessSignature '"))?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for pair in body.split('&') {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad("a field without '='"))?;
            match key {
                "sr" => sr = Some(value.to_string()),
                "sig" => sig = Some(url_decode(value)?),
                "se" => se = Some(url_decode(value)?),
                "skn" => skn = Some(url_decode(value)?),
                _ => {}
            }
        }
        let raw_resource = sr.ok_or_else(|| bad("no sr"))?;
        let expiry = se
            .ok_or_else(|| bad("no se"))?
            .parse::<i64>()
            .map_err(|_| bad("se is not a number"))?;
        Ok(SasToken {
            resource: url_decode(&raw_resource)?,
            raw_resource,
            signature: sig.ok_or_else(|| bad("no sig"))?,
            expiry,
            key_name: skn.filter(|s| !s.is_empty()),
        })
    }

    /// Whether one of `keys` (base64) signed this token (constant-time comparison).
    pub fn is_signed_by(&self, key: &str) -> bool {
        let Ok(key) = decode_key(key) else {
            return false;
        };
        let Ok(signature) = BASE64.decode(&self.signature) else {
            return false;
        };
        let message = format!("{}\n{}", self.raw_resource, self.expiry);
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, &key),
            message.as_bytes(),
            &signature,
        )
        .is_ok()
    }

    /// Whether `key` signed this token the way the Event Hubs and Service Bus clients sign:
    /// with the key's text itself (its UTF-8 bytes) as the HMAC key, not the bytes it encodes.
    /// IoT Hub's Event Hub-compatible endpoint accepts its policies' keys used that way.
    pub fn is_signed_by_key_text(&self, key: &str) -> bool {
        let Ok(signature) = BASE64.decode(&self.signature) else {
            return false;
        };
        let message = format!("{}\n{}", self.raw_resource, self.expiry);
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes()),
            message.as_bytes(),
            &signature,
        )
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_hubs_signature_uses_the_key_text_and_only_that_way_round() {
        // Signed by Python's hmac with the key's text, as azure-eventhub's pyamqp signs.
        let key = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0";
        let token = SasToken::parse(
            "SharedAccessSignature sr=sb%3A%2F%2F127.0.0.2%2Feh-hub\
             &sig=qMHPsYG3UOlmSsL9LQJ2GGCXsKvcX6w4vzy2ECAuAhw%3D&se=1000&skn=service",
        )
        .unwrap();
        assert!(token.is_signed_by_key_text(key));
        assert!(!token.is_signed_by(key), "the decoded key did not sign it");
        assert!(!token.is_signed_by_key_text("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV1"));
        let iot_hub_style = SasToken::parse(&build_token("h/e", key, 1000, None).unwrap()).unwrap();
        assert!(!iot_hub_style.is_signed_by_key_text(key));
        // Ours, built the same way, is the token pyamqp sent, byte for byte.
        assert_eq!(
            build_token_with_key_text("sb://127.0.0.2/eh-hub", key, 1000, "service"),
            "SharedAccessSignature sr=sb%3A%2F%2F127.0.0.2%2Feh-hub\
             &sig=qMHPsYG3UOlmSsL9LQJ2GGCXsKvcX6w4vzy2ECAuAhw%3D&se=1000&skn=service"
        );
    }

    #[test]
    fn known_answers() {
        // From the IoT Hub docs (the DPS doc's own sample does not reproduce; see the protocol notes).
        let key = "18RQk/hOPJR9EbsJlk2j8WA6vWaj/yi+oaYg7zmxfQNdOyMSu+SJ8O7TSlZhDJCYmn4rzEiVKIzNiVAWjLxrGA==";
        let token = build_token(
            "MyExampleHub.azure-devices.net/devices/my-symkey-device",
            key,
            1663119026,
            None,
        )
        .unwrap();
        assert!(
            token.contains("sig=f%2BwW8XOKeJOtiPc9Iwjc4OpExvPM7NlhM9qxN2a1aAM%3D"),
            "{token}"
        );
        assert_eq!(
            derive_device_key("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "device-001")
                .unwrap(),
            "BG0x/0mIbqnG9RWsosby2GxBOeYgRhXI9gnRqn2lxFI="
        );
    }

    #[test]
    fn verifies_over_the_raw_resource_in_either_case() {
        let key = generate_key().unwrap();
        let upper =
            build_token("0ne00000001/registrations/dev1", &key, 4_000_000_000, None).unwrap();
        let parsed = SasToken::parse(&upper).unwrap();
        assert_eq!(parsed.resource, "0ne00000001/registrations/dev1");
        assert!(parsed.is_signed_by(&key));
        // The C SDK writes lower-case escapes and signs those bytes.
        let raw = "0ne00000001%2fregistrations%2fdev1";
        let sig = sign(&BASE64.decode(&key).unwrap(), raw, 4_000_000_000);
        let lower = format!(
            "SharedAccessSignature sr={raw}&sig={}&se=4000000000&skn=",
            url_encode(&sig)
        );
        let parsed = SasToken::parse(&lower).unwrap();
        assert!(parsed.is_signed_by(&key));
        assert_eq!(parsed.key_name, None);
        assert!(!parsed.is_signed_by(&generate_key().unwrap()));
    }

    #[test]
    fn rejects_malformed_tokens() {
        for token in [
            "",
            "sr=a&sig=b&se=1",
            "SharedAccessSignature sr=a&se=1",
            "SharedAccessSignature sr=a&sig=b&se=x",
            "SharedAccessSignature sr=%zz&sig=b&se=1",
        ] {
            assert!(SasToken::parse(token).is_err(), "{token}");
        }
    }
}
