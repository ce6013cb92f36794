//! The offline checks of a device credential (helper A fills this in; see the brief).

use super::Check;
use super::credential::HeldCredential;

/// What the offline checks are told besides the credential.
#[derive(Clone, Copy, Debug)]
pub struct OfflineOptions<'a> {
    /// The registration id the device uses, when the user gave one.
    pub registration_id: Option<&'a str>,
    /// Unix seconds to judge validity at.
    pub now: i64,
    /// A certificate expiring within this many days is a warning.
    pub expiry_warning_days: i64,
}

/// Every offline check of `credential`, in a fixed order.
pub fn check(credential: &HeldCredential, options: &OfflineOptions<'_>) -> Vec<Check> {
    let _ = (credential, options);
    Vec::new()
}
