//! The online checks against a DPS (helper B fills this in; see the brief).

use crate::diagnosis::Check;
use crate::diagnosis::credential::HeldCredential;
use crate::service::arm::ArmClient;
use crate::transport::Trust;

/// The DPS the online checks read, through ARM (its resource, CA certificates and keys) and
/// then its service API and its hubs' service APIs.
#[derive(Clone)]
pub struct OnlineTarget {
    /// The management client of the subscription and resource group.
    pub arm: ArmClient,
    /// The DPS resource's name.
    pub dps_name: String,
    /// What the service APIs' TLS is checked against.
    pub trust: Trust,
}

/// Every online check, in a fixed order.
pub async fn check(
    target: &OnlineTarget,
    credential: &HeldCredential,
    registration_id: &str,
    now: i64,
) -> Vec<Check> {
    let _ = (target, credential, registration_id, now);
    Vec::new()
}
