//! The one source of randomness: ring's system generator, behind keys, serials, SAS keys,
//! operation ids and the jittered backoff alike.

use crate::error::{Error, Result};

/// Fills `buf` from the operating system's secure generator.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<()> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| Error::cert("the system random number generator failed"))
}

/// A GUID-shaped random string (ids of operations, links, containers and tracking ids).
pub(crate) fn guid() -> String {
    let mut b = [0u8; 16];
    // The system generator failing is not something a caller can recover from meaningfully;
    // an all-zero GUID still keeps the protocol going.
    let _ = fill_random(&mut b);
    let h: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
