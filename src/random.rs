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
