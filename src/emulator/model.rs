//! What the emulator stores: hubs, DPS instances with their linked hubs and CA certificates,
//! enrollments, registrations and hub device identities. Every record is a serde document so the
//! store can keep it as JSON. The enrollment policies are the DPS service API's types
//! (`protocol::dps_service`); the REST layer turns records into that API's JSON and back.

use serde::{Deserialize, Serialize};
use serde_json::Value;

// The policies are the service API's own types: stored as they cross the wire.
pub(crate) use crate::protocol::dps_service::{
    AllocationPolicy, CustomAllocationDefinition, ProvisioningStatus, ReprovisionPolicy,
};

/// An IoT Hub instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HubRecord {
    /// Resource name.
    pub name: String,
    /// Host name devices dial (a loopback address for the emulator's hubs).
    pub host_name: String,
    /// Azure region name used by geoLatency allocation.
    pub location: String,
    /// `iothubowner` primary key.
    pub primary_key: String,
    /// `iothubowner` secondary key.
    pub secondary_key: String,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Shared access policies (Azure's five defaults; `iothubowner` holds the keys above).
    /// Records written before policies existed get the defaults when the store is opened.
    #[serde(default)]
    pub policies: Vec<SharedAccessPolicy>,
    /// The tier and units ARM was asked for (`None`: never asked; ARM shows S1, one unit).
    #[serde(default)]
    pub sku: Option<crate::limits::HubSku>,
    /// Whether the hub enforces its tier's throttles and daily quota (off unless asked for:
    /// tests and simulations would otherwise meet Azure's limits by surprise).
    #[serde(default)]
    pub presets: bool,
    /// The built-in Event Hub-compatible endpoint (`eventHubEndpoints.events`). Hubs stored
    /// before it existed get Azure's defaults.
    #[serde(default)]
    pub events: EventsEndpoint,
}

/// A hub's built-in Event Hub-compatible endpoint, where its telemetry is read: partitions
/// fixed at creation (as on Azure), the retention, and the consumer groups besides `$Default`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventsEndpoint {
    /// Partitions (2 to 128 on Azure; 4 unless asked otherwise).
    pub partition_count: u32,
    /// Days an event is kept (Azure's default: 1).
    pub retention_days: u32,
    /// Consumer groups created besides `$Default`, in creation order.
    #[serde(default)]
    pub consumer_groups: Vec<String>,
}

impl Default for EventsEndpoint {
    fn default() -> Self {
        EventsEndpoint {
            partition_count: crate::limits::DEFAULT_PARTITION_COUNT,
            retention_days: 1,
            consumer_groups: Vec::new(),
        }
    }
}

impl EventsEndpoint {
    /// The oldest enqueued time (Unix milliseconds) still retained at `now` (Unix seconds).
    pub fn retained_since(&self, now: i64) -> i64 {
        now.saturating_sub(i64::from(self.retention_days).saturating_mul(86_400))
            .saturating_mul(1000)
    }

    /// The partition a device's events land on: always the same one for a device, spread
    /// evenly over devices (FNV-1a of the device id, stable across runs and platforms).
    pub fn partition_of(&self, device_id: &str) -> u32 {
        let mut hash: u32 = 0x811c_9dc5;
        for byte in device_id.bytes() {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        hash % self.partition_count.max(1)
    }
}

/// A shared access policy of a hub or DPS: a named pair of keys and the rights a SAS token
/// signed with them carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SharedAccessPolicy {
    /// Policy name (`skn` of the tokens it signs).
    pub key_name: String,
    /// Primary key (base64).
    pub primary_key: String,
    /// Secondary key (base64).
    pub secondary_key: String,
    /// Azure's rights string, e.g. `RegistryWrite, ServiceConnect, DeviceConnect`.
    pub rights: String,
}

impl SharedAccessPolicy {
    /// Whether the policy carries `right`. A write right implies the matching read right, as on
    /// Azure (`registryReadWrite` is listed with `RegistryWrite` alone yet reads the registry),
    /// and DPS's `ServiceConfig` implies every service-API right.
    pub fn grants(&self, right: &str) -> bool {
        self.rights.split(',').map(str::trim).any(|r| {
            r.eq_ignore_ascii_case(right)
                || (r.eq_ignore_ascii_case("RegistryWrite")
                    && right.eq_ignore_ascii_case("RegistryRead"))
                || (r.eq_ignore_ascii_case("EnrollmentWrite")
                    && right.eq_ignore_ascii_case("EnrollmentRead"))
                || (r.eq_ignore_ascii_case("RegistrationStatusWrite")
                    && right.eq_ignore_ascii_case("RegistrationStatusRead"))
                || r.eq_ignore_ascii_case("ServiceConfig")
        })
    }
}

impl HubRecord {
    /// The policy named `name` (case-insensitive, as Azure matches `skn`).
    pub fn policy(&self, name: &str) -> Option<&SharedAccessPolicy> {
        self.policies
            .iter()
            .find(|p| p.key_name.eq_ignore_ascii_case(name))
    }
}

/// A DPS instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DpsRecord {
    /// Resource name.
    pub name: String,
    /// ID scope (`0ne` + 8 hex digits).
    pub id_scope: String,
    /// Azure region name.
    pub location: String,
    /// `provisioningserviceowner` primary key.
    pub primary_key: String,
    /// `provisioningserviceowner` secondary key.
    pub secondary_key: String,
    /// Hubs linked to this DPS.
    pub linked_hubs: Vec<LinkedHub>,
    /// CA certificates uploaded to this DPS.
    pub certificates: Vec<CaCertificate>,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Whether the instance enforces Azure's registration, poll and operation rates (asked
    /// with the `dpskit-presets` resource tag).
    #[serde(default)]
    pub presets: bool,
}

/// A hub linked to a DPS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinkedHub {
    /// The hub's resource name.
    pub hub: String,
    /// The hub's host name (what enrollments and registrations refer to).
    pub host_name: String,
    /// Weight for hashed allocation.
    pub allocation_weight: u32,
    /// Whether the DPS-wide allocation policy may choose this hub.
    pub apply_allocation_policy: bool,
    /// Location used by geoLatency allocation.
    pub location: String,
}

/// A CA certificate uploaded to a DPS (ARM `certificates/{name}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CaCertificate {
    /// Certificate name in the DPS.
    pub name: String,
    /// DER, base64.
    pub der_base64: String,
    /// Proven by proof of possession, or declared verified on upload.
    pub is_verified: bool,
    /// Changes on every modification.
    pub etag: String,
    /// The outstanding verification code, if one was generated and not used yet.
    pub verification_code: Option<String>,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds.
    pub updated: i64,
}

/// How an enrollment attests devices.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Attestation {
    /// X.509: a group refers to CA certificates (uploaded by name, or given inline); an
    /// individual enrollment lists the device's own certificates.
    X509 {
        /// Names of CA certificates uploaded to the DPS (primary, then secondary).
        #[serde(default)]
        ca_references: Vec<String>,
        /// Inline signing certificates (groups) or client certificates (individual), DER base64.
        #[serde(default)]
        certificates: Vec<String>,
    },
    /// Symmetric keys (base64).
    SymmetricKey {
        /// Primary key.
        primary_key: String,
        /// Secondary key.
        secondary_key: String,
    },
}

/// Settings shared by groups and individual enrollments.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct EnrollmentSettings {
    /// Enabled or disabled.
    pub provisioning_status: ProvisioningStatus,
    /// Allocation policy; `None` uses the DPS default (hashed).
    pub allocation_policy: Option<AllocationPolicy>,
    /// Host names of the hubs this enrollment may use (empty: every linked hub).
    pub iot_hubs: Vec<String>,
    /// Re-registration behaviour.
    pub reprovision_policy: ReprovisionPolicy,
    /// `{"tags": {...}, "properties": {"desired": {...}}}` for new devices.
    pub initial_twin: Option<Value>,
    /// For the custom allocation policy.
    pub custom_allocation: Option<CustomAllocationDefinition>,
    /// The Device Registry certificate policy that issues the devices' certificates when they
    /// register with a CSR (`None`: this enrollment issues none).
    pub credential_policy: Option<CredentialPolicyRef>,
}

/// How an enrollment names its certificate policy: by the policy's name alone
/// (`credentialPolicyName`, service api-version 2025-07-01-preview: looked up in the namespace
/// the DPS is linked to), or by the three names of the newer API (`namespaceName`,
/// `certificateAuthorityName`, `certificatePolicyName`, 2026-11-01), which travel together.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CredentialPolicyRef {
    /// The policy's name.
    pub policy: String,
    /// The Device Registry namespace (the newer API's `namespaceName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The issuing CA (the newer API's `certificateAuthorityName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<String>,
}

/// An enrollment group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentGroup {
    /// Group id.
    pub enrollment_group_id: String,
    /// How devices attest.
    pub attestation: Attestation,
    /// Policies.
    pub settings: EnrollmentSettings,
    /// Changes on every modification.
    pub etag: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds.
    pub updated: i64,
}

/// An individual enrollment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IndividualEnrollment {
    /// Registration id.
    pub registration_id: String,
    /// Device id in the hub (default: the registration id).
    pub device_id: Option<String>,
    /// How the device attests.
    pub attestation: Attestation,
    /// Policies.
    pub settings: EnrollmentSettings,
    /// Changes on every modification.
    pub etag: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds.
    pub updated: i64,
}

/// Which enrollment a registration came through.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", content = "id", rename_all = "camelCase")]
pub enum EnrollmentRef {
    /// An enrollment group.
    Group(String),
    /// An individual enrollment.
    Individual(String),
}

/// The attestation kind a registration used.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum AttestationKind {
    /// X.509 certificate.
    X509,
    /// Symmetric key.
    SymmetricKey,
}

/// A device registration record (DPS `registrations/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationRecord {
    /// Registration id.
    pub registration_id: String,
    /// The enrollment that admitted the device.
    pub enrollment: EnrollmentRef,
    /// X.509 or symmetric key.
    pub attestation: AttestationKind,
    /// Assigned hub host name.
    pub assigned_hub: Option<String>,
    /// Device id in that hub.
    pub device_id: Option<String>,
    /// `assigned` or `failed`.
    pub status: String,
    /// `initialAssignment`, `deviceDataMigrated`, `deviceDataReset`, ...
    pub substatus: Option<String>,
    /// Azure error code when failed.
    pub error_code: Option<u32>,
    /// Error message when failed.
    pub error_message: Option<String>,
    /// First registration, RFC 3339 with 7 fractional digits as Azure writes it.
    pub created: String,
    /// Last registration.
    pub last_updated: String,
    /// Changes on every registration.
    pub etag: String,
    /// Payload returned to the device (custom allocation).
    pub payload: Option<Value>,
}

/// How a hub device authenticates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum DeviceAuth {
    /// X.509 "self-signed" identity: the leaf's thumbprints, which is how DPS registers X.509
    /// devices in the hub whatever CA signed them.
    SelfSigned {
        /// SHA-1 thumbprint, upper-case hex.
        primary_thumbprint: String,
        /// SHA-256 thumbprint, upper-case hex (empty when the service API gave only SHA-1).
        primary_thumbprint_sha256: String,
        /// The secondary thumbprint the service API may give (SHA-1 or SHA-256 hex, upper
        /// case); a certificate matching either thumbprint authenticates.
        #[serde(default)]
        secondary_thumbprint: Option<String>,
    },
    /// X.509 signed by a CA the hub trusts (the service API's `certificateAuthority`): the
    /// device presents a chain leading to an issuing CA of a Device Registry policy synced to
    /// the hub (DPS creates such identities for devices it issued a certificate to). CA
    /// certificates uploaded to a hub itself are not emulated.
    CertificateAuthority,
    /// Symmetric keys.
    Sas {
        /// Primary key.
        primary_key: String,
        /// Secondary key.
        secondary_key: String,
    },
}

/// A device identity in a hub.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HubDevice {
    /// Device id.
    pub device_id: String,
    /// Hub host name.
    pub hub: String,
    /// Credentials.
    pub auth: DeviceAuth,
    /// Tags and desired properties given at provisioning.
    pub initial_twin: Option<Value>,
    /// Unix seconds.
    pub created: i64,
    /// What the service API sets beside the credentials (status, edge capability) and the
    /// registry's own bookkeeping (generation, write count). Records written before it existed
    /// read as a new enabled identity.
    #[serde(default)]
    pub registry: RegistryState,
    /// The Device Registry policy that issued the device's certificate, when DPS issued one
    /// for a CSR: the hub renews the certificate through it (`None`: the device may not
    /// renew).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_by: Option<IssuedBy>,
}

/// A Device Registry credential policy, by namespace and name, that issued a device's
/// certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IssuedBy {
    /// The namespace.
    pub namespace: String,
    /// The policy.
    pub policy: String,
}

impl HubDevice {
    /// The identity's `generationId`: set at creation (the creation time for records written
    /// before it was kept). The service API and the events' `iothub-connection-auth-generation-id`
    /// both read it here.
    pub fn generation_id(&self) -> String {
        if self.registry.generation_id.is_empty() {
            format!("{}", self.created)
        } else {
            self.registry.generation_id.clone()
        }
    }

    /// How a connection of this identity authenticates, as IoT Hub stamps the messages it
    /// sends (`iothub-connection-auth-method`'s `type`, and the generation).
    pub(crate) fn sender_auth(&self) -> crate::emulator::store::SenderAuth {
        let kind = match self.auth {
            DeviceAuth::Sas { .. } => "sas",
            DeviceAuth::SelfSigned { .. } | DeviceAuth::CertificateAuthority => "x509Certificate",
        };
        crate::emulator::store::SenderAuth {
            kind: kind.into(),
            generation_id: self.generation_id(),
        }
    }
}

/// Whether a device identity may connect (the service API's `status`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum DeviceStatus {
    /// The device may connect.
    #[default]
    Enabled,
    /// The device is refused at CONNECT (and disconnected when disabled while connected).
    Disabled,
}

impl DeviceStatus {
    /// The service API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Enabled => "enabled",
            DeviceStatus::Disabled => "disabled",
        }
    }
}

/// The registry's attributes of a device identity beyond its credentials.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct RegistryState {
    /// Enabled or disabled.
    pub status: DeviceStatus,
    /// Why, as the service set it (free text).
    pub status_reason: Option<String>,
    /// When `status` last changed, Unix seconds (0: never, written as Azure's
    /// `0001-01-01T00:00:00Z`).
    pub status_updated: i64,
    /// Whether the device is an IoT Edge device (`capabilities.iotEdge`).
    pub iot_edge: bool,
    /// Set when the identity is created and kept by updates, so a device deleted and created
    /// again under the same id is told apart (the service API's `generationId`). Empty for
    /// records written before it existed (the creation time stands in).
    pub generation_id: String,
    /// Writes since creation: every update changes the identity's etag, even one that sets
    /// the same values.
    pub writes: u64,
}

#[cfg(test)]
mod tests {
    use super::EventsEndpoint;

    #[test]
    fn a_device_keeps_its_partition_and_devices_spread_over_all() {
        let endpoint = EventsEndpoint::default();
        // Fixed by the hash, so a restarted or another emulator agrees.
        assert_eq!(
            endpoint.partition_of("dev-1"),
            endpoint.partition_of("dev-1")
        );
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            counts[endpoint.partition_of(&format!("device-{i}")) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&n| (800..1200).contains(&n)),
            "{counts:?}"
        );
        let one = EventsEndpoint {
            partition_count: 1,
            ..EventsEndpoint::default()
        };
        assert_eq!(one.partition_of("anything"), 0);
    }
}
