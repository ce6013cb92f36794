//! Azure's documented limits that both sides of the wire enforce: dpskit's clients refuse to
//! send past them (with a clear error instead of Azure's refusal), and the emulator refuses
//! what Azure refuses. Each number is written here once; the modules name it in their terms.
//!
//! This file holds the sizes; [`tiers`] the rates and quotas of IoT Hub's tiers and of DPS
//! (the emulator's presets), and [`estimate`] what a measured fleet would need of them.

pub(crate) mod estimate;
pub(crate) mod tiers;

pub(crate) use tiers::*;

pub use estimate::{
    HubDemand, TierFit, dps_onboarding_seconds, fit, fits, metered_messages_per_day,
};

/// Largest device-to-cloud message: body and properties (IoT Hub quotas and throttling).
pub(crate) const MAX_D2C_MESSAGE_BYTES: usize = 256 * 1024;
/// Longest MQTT keep-alive IoT Hub serves; it disconnects a device silent for 1.5 times the
/// keep-alive, at most 1,767 s (IoT Hub MQTT support).
pub(crate) const MAX_KEEP_ALIVE_SECONDS: u16 = 1177;
/// Shortest direct-method response timeout (`responseTimeoutInSeconds`); shorter is raised.
pub(crate) const MIN_METHOD_RESPONSE_TIMEOUT_SECONDS: u64 = 5;
/// Longest direct-method response timeout; Azure answers 400 past it.
pub(crate) const MAX_METHOD_RESPONSE_TIMEOUT_SECONDS: u64 = 300;
/// Longest time a direct method waits for its device to come online before IoT Hub answers
/// 404103 (`connectTimeoutInSeconds`, 0 by default; "Understand and invoke direct methods").
pub(crate) const MAX_METHOD_CONNECT_TIMEOUT_SECONDS: u64 = 300;
/// Most identities one "Get Devices" call returns (`top` outside 1 to 1,000 is taken as 1,000;
/// REST reference, Devices - Get Devices).
pub(crate) const MAX_LISTED_DEVICES: usize = 1000;
/// Readers without an epoch of one partition in one consumer group at once (Event Hubs quotas:
/// "Number of non-epoch receivers per consumer group: 5"); the sixth is refused.
pub(crate) const MAX_READERS_PER_PARTITION: usize = 5;
/// Largest DPS registration message (DPS quotas and limits).
pub(crate) const MAX_DPS_MESSAGE_BYTES: usize = 96 * 1024;
/// Largest direct-method payload, the request and the device's response alike (IoT Hub
/// quotas and throttling: "Direct method payload size: 128 KB").
pub(crate) const MAX_METHOD_PAYLOAD_BYTES: usize = 128 * 1024;
/// Largest desired or reported properties section of a twin, each counted as its JSON text
/// (device twins, "Device twin size"). Azure refuses an operation that would grow a section
/// past it: `403100`, "'Properties.Reported' size should be less than 32768 bytes." (as an
/// IoT Edge user recorded IoT Hub's answer, Azure/iotedge#7035).
pub(crate) const MAX_TWIN_SECTION_BYTES: usize = 32 * 1024;
/// IoT Hub's error code for a twin section grown past [`MAX_TWIN_SECTION_BYTES`] (status 403).
pub(crate) const TWIN_TOO_LARGE_ERROR_CODE: u32 = 403_100;
/// Largest cloud-to-device message (IoT Hub quotas and throttling).
pub(crate) const MAX_C2D_MESSAGE_BYTES: usize = 64 * 1024;
/// Most device (and module) identities one hub holds ("IoT Hub quotas and throttling", other
/// limits).
pub(crate) const MAX_HUB_DEVICES: u64 = 1_000_000;
/// Partitions of a hub's built-in events endpoint unless its creator asks otherwise (Azure's
/// default; ARM takes 2 to 128).
pub(crate) const DEFAULT_PARTITION_COUNT: u32 = 4;
/// The fewest and most partitions ARM accepts for the built-in events endpoint.
pub(crate) const PARTITION_COUNT_RANGE: std::ops::RangeInclusive<u32> = 2..=128;

/// Refuses a partition count ARM would refuse (the client before sending, the emulator's own
/// API alike).
pub(crate) fn check_partition_count(count: u32) -> crate::Result<()> {
    if PARTITION_COUNT_RANGE.contains(&count) {
        return Ok(());
    }
    Err(crate::Error::config(format!(
        "a hub's events endpoint has {} to {} partitions, not {count}",
        PARTITION_COUNT_RANGE.start(),
        PARTITION_COUNT_RANGE.end()
    )))
}
/// Consumer groups an endpoint may have, `$Default` included (IoT Hub's S tiers: 20).
pub(crate) const MAX_CONSUMER_GROUPS: usize = 20;

/// The days an issued device certificate may be valid, as a Device Registry credential policy
/// sets them (`leafCertificateConfiguration.validityPeriodInDays`: `@minValue(7)
/// @maxValue(90)` in `ns_policy.tsp`, api-version 2025-11-01-preview; the docs say "7 to 90
/// days", checked 2026-12-07).
pub(crate) const POLICY_VALIDITY_DAYS: std::ops::RangeInclusive<u32> = 7..=90;
/// A policy's validity unless its creator asks otherwise (the CLI's default, and the SDK
/// team's test recipe's `LeafValidityDays = 30`).
pub(crate) const DEFAULT_POLICY_VALIDITY_DAYS: u32 = 30;
/// The key types of a certificate signing request that DPS issuance and the hub's renewal
/// accept by default. Learn documents EC P-384 only ("RSA keys aren't supported in the current
/// preview"), but the SDKs' own samples and the C SDK's end-to-end test, run against Azure,
/// send P-256, and the C# sample offers RSA: P-256, P-384 and RSA-2048 are taken, anything
/// else (RSA-3072 and up) is refused.
pub(crate) const CSR_KEY_ALGORITHMS: &[crate::pki::KeyAlgorithm] = &[
    crate::pki::KeyAlgorithm::EcP256,
    crate::pki::KeyAlgorithm::EcP384,
    crate::pki::KeyAlgorithm::Rsa2048,
];

/// The key types a strict DPS (its `strict_csr_key_type` knob) accepts: the documented one.
pub(crate) const STRICT_CSR_KEY_ALGORITHMS: &[crate::pki::KeyAlgorithm] =
    &[crate::pki::KeyAlgorithm::EcP384];

/// Whether a CSR's key type (`None`: one dpskit does not know) is accepted, by default or
/// (`strict`) as documented.
pub(crate) fn csr_key_accepted(algorithm: Option<crate::pki::KeyAlgorithm>, strict: bool) -> bool {
    let accepted = if strict {
        STRICT_CSR_KEY_ALGORITHMS
    } else {
        CSR_KEY_ALGORITHMS
    };
    algorithm.is_some_and(|a| accepted.contains(&a))
}

/// The key types a policy's CA may have: the preview documents ECC only (P-384).
pub(crate) const POLICY_KEY_TYPES: &[&str] = &["ECC"];

/// Refuses a credential policy ADR would refuse: validity outside 7-90 days, or a key type
/// other than the documented one (the client before sending, the emulator alike).
pub(crate) fn check_credential_policy(validity_days: u32, key_type: &str) -> crate::Result<()> {
    if !POLICY_VALIDITY_DAYS.contains(&validity_days) {
        return Err(crate::Error::config(format!(
            "a credential policy issues certificates valid {} to {} days, not {validity_days}",
            POLICY_VALIDITY_DAYS.start(),
            POLICY_VALIDITY_DAYS.end()
        )));
    }
    if !POLICY_KEY_TYPES.contains(&key_type) {
        return Err(crate::Error::config(format!(
            "a credential policy's key type is one of {}, not {key_type:?}",
            POLICY_KEY_TYPES.join(", ")
        )));
    }
    Ok(())
}
