//! The DPS service API's JSON (api-version 2021-10-01) and ARM's CA certificate resource of a
//! DPS, as serde types: enrollment groups, individual enrollments, attestation mechanisms,
//! registration states, bulk operations, queries and errors, and the certificate bodies of
//! `provisioningServices/{name}/certificates`. The REST clients in `service/` build and read
//! with these; the emulator's REST layer parses requests and answers with the same ones. Names
//! and shapes follow the service swagger; members the swagger marks optional are `Option`s left
//! out when `None`, as the service leaves them out of its answers.
//!
//! An enrollment's Device Registry policy reference (`credentialPolicyName` of 2025-07-01-preview,
//! or the three names of 2026-11-01) is read and written through [`PolicyReference`].
//!
//! Reading is as lenient as the service where clients differ (enum values in any case, explicit
//! `null`s meaning "not given", members nobody here uses ignored) and strict where a value has
//! the wrong type or an unknown name: that is a clear error, never a silent default.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// The api-version of custom allocation webhooks when an enrollment names none.
pub(crate) const DEFAULT_WEBHOOK_API_VERSION: &str = "2021-10-01";

// ---- policies -------------------------------------------------------------------------------

/// Whether an enrollment accepts registrations (`provisioningStatus`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum ProvisioningStatus {
    /// Registrations are accepted.
    #[default]
    Enabled,
    /// Registrations are refused.
    Disabled,
}

impl<'de> Deserialize<'de> for ProvisioningStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        if name.eq_ignore_ascii_case("enabled") {
            Ok(Self::Enabled)
        } else if name.eq_ignore_ascii_case("disabled") {
            Ok(Self::Disabled)
        } else {
            Err(D::Error::custom(format!(
                "provisioningStatus must be enabled or disabled, not {name:?}"
            )))
        }
    }
}

/// How DPS picks a hub (`allocationPolicy`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum AllocationPolicy {
    /// Weighted hash of the registration id ("evenly weighted distribution").
    #[default]
    Hashed,
    /// The one hub listed.
    Static,
    /// The hub nearest the device (by the locations assigned in the emulator).
    GeoLatency,
    /// A webhook or a callable decides.
    Custom,
}

impl AllocationPolicy {
    /// Parses the data-plane spelling (`hashed`, `static`, `geoLatency`, `custom`), any case.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "hashed" => Some(Self::Hashed),
            "static" => Some(Self::Static),
            "geolatency" => Some(Self::GeoLatency),
            "custom" => Some(Self::Custom),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for AllocationPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::parse(&name).ok_or_else(|| {
            D::Error::custom(format!(
                "unknown allocationPolicy {name:?}: hashed, geoLatency, static or custom"
            ))
        })
    }
}

/// What happens when an already registered device registers again (`reprovisionPolicy`). A
/// member left out (or `null`) is `true`, the service's default.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReprovisionPolicy {
    /// Re-run allocation (true) or keep the current hub (false).
    #[serde(default = "yes", deserialize_with = "true_unless_false")]
    pub update_hub_assignment: bool,
    /// Migrate the twin to the new hub (true) or reset it to the initial twin (false).
    #[serde(default = "yes", deserialize_with = "true_unless_false")]
    pub migrate_device_data: bool,
}

impl Default for ReprovisionPolicy {
    fn default() -> Self {
        ReprovisionPolicy {
            update_hub_assignment: true,
            migrate_device_data: true,
        }
    }
}

fn yes() -> bool {
    true
}

fn true_unless_false<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(deserializer)?.unwrap_or(true))
}

/// The custom allocation target (`customAllocationDefinition`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CustomAllocationDefinition {
    /// Webhook URL (`http://` or `https://`), or `python:<name>` for a callable registered
    /// with the emulator.
    pub webhook_url: String,
    /// API version sent in the request ([`DEFAULT_WEBHOOK_API_VERSION`] when not given).
    #[serde(default = "default_api_version", deserialize_with = "api_version")]
    pub api_version: String,
}

fn default_api_version() -> String {
    DEFAULT_WEBHOOK_API_VERSION.to_string()
}

fn api_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_else(default_api_version))
}

/// `capabilities`: whether the device is an IoT Edge device (the emulator has none).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeviceCapabilities {
    /// An IoT Edge device.
    #[serde(default)]
    pub iot_edge: Option<bool>,
}

/// The members groups and individual enrollments share, flattened into both.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EnrollmentPolicies {
    /// Enabled or disabled (`None`: enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_status: Option<ProvisioningStatus>,
    /// Re-registration behaviour (`None`: both `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprovision_policy: Option<ReprovisionPolicy>,
    /// Allocation policy (`None`: the DPS's, hashed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_policy: Option<AllocationPolicy>,
    /// Host names of the hubs the enrollment may use (`None` or empty: every linked hub).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hubs: Option<Vec<String>>,
    /// The single hub of the older API, read when `iotHubs` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hub_host_name: Option<String>,
    /// `{"tags": {...}, "properties": {"desired": {...}}}` for new devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<Map<String, Value>>,
    /// For the custom allocation policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_allocation_definition: Option<CustomAllocationDefinition>,
    /// The Device Registry credential policy that issues the devices' certificates, by name
    /// in the DPS's namespace (api-version 2025-07-01-preview). Read and written through
    /// [`EnrollmentPolicies::policy_reference`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_policy_name: Option<String>,
    /// The newer API's three names of the policy (2026-11-01): the namespace...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_name: Option<String>,
    /// ... the issuing CA ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority_name: Option<String>,
    /// ... and the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_policy_name: Option<String>,
    /// IoT Edge or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    /// Changes on every modification (answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Creation time, RFC 3339 (answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// Last change, RFC 3339 (answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
}

/// The service api-version that carries `credentialPolicyName` (Azure's certificate management
/// preview; older versions know no such member).
pub(crate) const POLICY_NAME_API_VERSION: &str = "2025-07-01-preview";
/// The service api-version of the three-name policy reference.
pub(crate) const POLICY_NAMES_API_VERSION: &str = "2026-11-01";

/// The api-version an enrollment body must be sent with for its policy reference to count
/// (`None`: the body has none, any version takes it).
pub(crate) fn policy_api_version(body: &Value) -> Option<&'static str> {
    if body
        .get("certificatePolicyName")
        .is_some_and(|v| !v.is_null())
    {
        Some(POLICY_NAMES_API_VERSION)
    } else if body
        .get("credentialPolicyName")
        .is_some_and(|v| !v.is_null())
    {
        Some(POLICY_NAME_API_VERSION)
    } else {
        None
    }
}

/// How an enrollment names the Device Registry policy that issues its devices' certificates:
/// the public preview's one name (`credentialPolicyName`, looked up in the namespace the DPS is
/// linked to) or the newer API's three (`namespaceName`, `certificateAuthorityName`,
/// `certificatePolicyName`), which travel together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PolicyReference {
    /// `credentialPolicyName`.
    Name(String),
    /// The three names.
    Names {
        /// `namespaceName`.
        namespace: String,
        /// `certificateAuthorityName` (the issuing CA, never the root).
        certificate_authority: String,
        /// `certificatePolicyName`.
        policy: String,
    },
}

impl EnrollmentPolicies {
    /// The policy reference as sent: `None` when none is; refused (400004, as DPS refuses an
    /// invalid enrollment member) when the three names come partly, or both forms at once.
    pub(crate) fn policy_reference(&self) -> crate::Result<Option<PolicyReference>> {
        let refuse = |message: &str| Err(crate::Error::service(400, 400_004, message));
        let given = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_string);
        let one = given(&self.credential_policy_name);
        let three = [
            given(&self.namespace_name),
            given(&self.certificate_authority_name),
            given(&self.certificate_policy_name),
        ];
        match (one, three) {
            (None, [None, None, None]) => Ok(None),
            (Some(name), [None, None, None]) => Ok(Some(PolicyReference::Name(name))),
            (None, [Some(namespace), Some(certificate_authority), Some(policy)]) => {
                Ok(Some(PolicyReference::Names {
                    namespace,
                    certificate_authority,
                    policy,
                }))
            }
            (Some(_), _) => refuse(
                "An enrollment names its certificate policy either by credentialPolicyName or by \
                 namespaceName, certificateAuthorityName and certificatePolicyName, not both.",
            ),
            (None, _) => refuse(
                "namespaceName, certificateAuthorityName and certificatePolicyName travel \
                 together: a partial certificate policy reference is refused.",
            ),
        }
    }

    /// Writes `reference` into the members that carry it (clearing the other form's).
    pub(crate) fn set_policy_reference(&mut self, reference: Option<PolicyReference>) {
        self.credential_policy_name = None;
        self.namespace_name = None;
        self.certificate_authority_name = None;
        self.certificate_policy_name = None;
        match reference {
            None => {}
            Some(PolicyReference::Name(name)) => self.credential_policy_name = Some(name),
            Some(PolicyReference::Names {
                namespace,
                certificate_authority,
                policy,
            }) => {
                self.namespace_name = Some(namespace);
                self.certificate_authority_name = Some(certificate_authority);
                self.certificate_policy_name = Some(policy);
            }
        }
    }
}

// ---- attestation ----------------------------------------------------------------------------

/// An attestation mechanism's `type`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) enum AttestationType {
    /// X.509 certificates.
    X509,
    /// Symmetric keys.
    SymmetricKey,
    /// TPM endorsement keys (not available over MQTT; the emulator refuses it).
    Tpm,
}

impl<'de> Deserialize<'de> for AttestationType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        match name.to_ascii_lowercase().as_str() {
            "x509" => Ok(Self::X509),
            "symmetrickey" => Ok(Self::SymmetricKey),
            "tpm" => Ok(Self::Tpm),
            _ => Err(D::Error::custom(format!(
                "unknown attestation type {name:?}: x509 or symmetricKey"
            ))),
        }
    }
}

/// `AttestationMechanism`: the type and its details.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AttestationMechanism {
    /// Which of the members below applies.
    #[serde(rename = "type")]
    pub kind: AttestationType,
    /// X.509 details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<X509Attestation>,
    /// Symmetric-key details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKeyAttestation>,
}

/// `SymmetricKeyAttestation`. A key left out (or `null`, or empty) is generated by the service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SymmetricKeyAttestation {
    /// Primary key, base64.
    #[serde(default)]
    pub primary_key: Option<String>,
    /// Secondary key, base64.
    #[serde(default)]
    pub secondary_key: Option<String>,
}

/// `X509Attestation`: a group names signing certificates or CA references, an individual
/// enrollment its client certificates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct X509Attestation {
    /// The device's own certificates (individual enrollments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificates: Option<X509Certificates>,
    /// The CA certificates devices chain to (groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_certificates: Option<X509Certificates>,
    /// Names of CA certificates uploaded to the DPS (groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_references: Option<X509CaReferences>,
}

impl X509Attestation {
    /// The certificate pair of a group (`signingCertificates`) or of an individual enrollment
    /// (`clientCertificates`).
    pub(crate) fn certificates(&self, group: bool) -> Option<&X509Certificates> {
        if group {
            self.signing_certificates.as_ref()
        } else {
            self.client_certificates.as_ref()
        }
    }

    /// The member name [`X509Attestation::certificates`] reads.
    pub(crate) fn certificates_field(group: bool) -> &'static str {
        if group {
            "signingCertificates"
        } else {
            "clientCertificates"
        }
    }
}

/// `X509Certificates`: a primary and a secondary certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct X509Certificates {
    /// Primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<X509CertificateWithInfo>,
    /// Secondary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<X509CertificateWithInfo>,
}

impl X509Certificates {
    /// The entries given, primary first.
    pub(crate) fn entries(&self) -> impl Iterator<Item = &X509CertificateWithInfo> {
        self.primary.iter().chain(self.secondary.iter())
    }
}

/// `X509CertificateWithInfo`: a client sends `certificate` (PEM or base64); the service answers
/// with `info` alone, never the certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct X509CertificateWithInfo {
    /// The certificate, PEM text or base64 (requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// What the service read from it (answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<X509CertificateInfo>,
}

/// `X509CertificateInfo`. Members a client left out of one it sends back read as empty.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct X509CertificateInfo {
    /// Subject distinguished name.
    pub subject_name: String,
    /// SHA-1 thumbprint, upper-case hex.
    pub sha1_thumbprint: String,
    /// SHA-256 thumbprint, upper-case hex.
    pub sha256_thumbprint: String,
    /// Issuer distinguished name.
    pub issuer_name: String,
    /// Start of validity, RFC 3339.
    pub not_before_utc: String,
    /// End of validity, RFC 3339.
    pub not_after_utc: String,
    /// Serial number, upper-case hex.
    pub serial_number: String,
    /// X.509 version (3).
    pub version: u32,
}

/// `X509CAReferences`: names of CA certificates uploaded to the DPS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct X509CaReferences {
    /// Primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Secondary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<String>,
}

// ---- enrollments ----------------------------------------------------------------------------

/// `EnrollmentGroup`. The id is the path's; the body's is only answered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EnrollmentGroup {
    /// Group id (answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
    /// How devices attest: required in every PUT, an update included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<AttestationMechanism>,
    /// Policies, etag and times.
    #[serde(flatten)]
    pub policies: EnrollmentPolicies,
}

/// `IndividualEnrollment`. The id is the path's; the body's is only answered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndividualEnrollment {
    /// Registration id (answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_id: Option<String>,
    /// Device id in the hub (`None`: the registration id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// How the device attests: required in every PUT, an update included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<AttestationMechanism>,
    /// Policies, etag and times.
    #[serde(flatten)]
    pub policies: EnrollmentPolicies,
}

/// `DeviceRegistrationState`: what DPS recorded of a device's last registration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeviceRegistrationState {
    /// Registration id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_id: Option<String>,
    /// First registration, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// Assigned hub host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    /// Device id in that hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// `assigned`, `failed`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `initialAssignment`, `deviceDataMigrated`, `deviceDataReset`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
    /// Azure's error code when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    /// Error message when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Last registration, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    /// Changes on every registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// What a custom allocation returned to the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

// ---- queries, bulk operations, errors -------------------------------------------------------

/// `QuerySpecification`: the body of `enrollmentGroups/query` and `enrollments/query`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct QuerySpecification {
    /// The query; the service accepts `SELECT *` only.
    pub query: String,
}

impl QuerySpecification {
    /// `SELECT *`: every item.
    pub(crate) fn all() -> Self {
        QuerySpecification {
            query: "SELECT *".into(),
        }
    }
}

/// `BulkEnrollmentOperation` (groups: `BulkEnrollmentGroupOperation`). Items stay JSON: each
/// one succeeds or fails on its own, so one that does not parse fails alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BulkEnrollmentOperation {
    /// `create` (default), `update`, `updateIfMatchETag` or `delete`, any case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Individual enrollments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollments: Option<Vec<Value>>,
    /// Enrollment groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_groups: Option<Vec<Value>>,
}

/// The members of a bulk item read before (and whatever) the rest of it: its id and etag.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct BulkItemKeys {
    /// An individual enrollment's id.
    pub registration_id: Option<String>,
    /// A group's id.
    pub enrollment_group_id: Option<String>,
    /// The etag `updateIfMatchETag` compares.
    pub etag: Option<String>,
}

impl BulkItemKeys {
    /// The keys of `item`; an item whose keys do not read has none.
    pub(crate) fn of(item: &Value) -> Self {
        Self::deserialize(item).unwrap_or_default()
    }
}

/// `BulkEnrollmentOperationResult`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BulkEnrollmentOperationResult {
    /// Every item succeeded.
    pub is_successful: bool,
    /// The items that failed.
    #[serde(default)]
    pub errors: Vec<BulkEnrollmentOperationError>,
}

/// `BulkEnrollmentOperationError`: one failed item, named by the id member of its kind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BulkEnrollmentOperationError {
    /// The individual enrollment's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_id: Option<String>,
    /// The group's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
    /// Azure's error code.
    pub error_code: u32,
    /// What went wrong.
    pub error_status: String,
    /// The HTTP status the item would have had alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// `ProvisioningServiceErrorDetails`: the body of every error answer of the service API (the
/// code also in `x-ms-error-code`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProvisioningServiceErrorDetails {
    /// Azure's six-digit error code.
    pub error_code: u32,
    /// The request's tracking id.
    pub tracking_id: String,
    /// What went wrong.
    pub message: String,
    /// When, RFC 3339.
    pub timestamp_utc: String,
}

// ---- ARM: a DPS's CA certificates -----------------------------------------------------------

/// `CertificateProperties` of ARM's certificate resource. Requests carry `certificate` and
/// `isVerified`; answers the rest too.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CertificateProperties {
    /// Subject distinguished name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Expiry, RFC 1123.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<String>,
    /// SHA-1 thumbprint, upper-case hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbprint: Option<String>,
    /// Proven by proof of possession, or declared verified on upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_verified: Option<bool>,
    /// The certificate: PEM text, base64 of DER or base64 of PEM in requests; base64 of DER
    /// in the emulator's answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Upload time, RFC 1123.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Last change, RFC 1123.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
    /// The verification code (`VerificationCodeResponse` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_code: Option<String>,
}

/// `CertificateResponse` (and `VerificationCodeResponse`): ARM's certificate resource.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CertificateResponse {
    /// ARM resource id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Certificate name in the DPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Microsoft.Devices/ProvisioningServices/Certificates`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Current etag (`If-Match` of the next change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The certificate's properties.
    #[serde(default)]
    pub properties: CertificateProperties,
}

/// The ARM type of a DPS certificate resource.
pub(crate) const CERTIFICATE_RESOURCE_TYPE: &str =
    "Microsoft.Devices/ProvisioningServices/Certificates";

/// `CertificateBodyDescription`: an upload, its members under `properties` (api-version
/// 2022-02-05, what dpskit and the management SDK send) or flat (older API, the CLI).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CertificateBodyDescription {
    /// `certificate` and `isVerified`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<CertificateProperties>,
    /// The older API's flat `certificate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The older API's flat `isVerified`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_verified: Option<bool>,
}

impl CertificateBodyDescription {
    /// The upload dpskit sends: PEM text (or base64) under `properties`.
    pub(crate) fn new(certificate: String, is_verified: bool) -> Self {
        CertificateBodyDescription {
            properties: Some(CertificateProperties {
                certificate: Some(certificate),
                is_verified: Some(is_verified),
                ..CertificateProperties::default()
            }),
            ..CertificateBodyDescription::default()
        }
    }

    /// The certificate text and whether it is declared verified, from `properties` when
    /// given, else from the flat members.
    pub(crate) fn upload(&self) -> (Option<&str>, bool) {
        match &self.properties {
            Some(p) => (p.certificate.as_deref(), p.is_verified.unwrap_or(false)),
            None => (
                self.certificate.as_deref(),
                self.is_verified.unwrap_or(false),
            ),
        }
    }
}

/// `VerificationCodeRequest`: the verification certificate of a proof of possession.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VerificationCodeRequest {
    /// PEM text or base64.
    pub certificate: String,
}

#[cfg(test)]
mod policy_reference_tests {
    use super::*;

    #[test]
    fn either_form_round_trips_and_a_partial_triple_or_both_forms_are_refused() {
        let one: EnrollmentPolicies =
            serde_json::from_value(serde_json::json!({"credentialPolicyName": "pol"})).unwrap();
        let reference = one.policy_reference().unwrap().unwrap();
        assert_eq!(reference, PolicyReference::Name("pol".into()));
        let mut written = EnrollmentPolicies::default();
        written.set_policy_reference(Some(reference));
        assert_eq!(
            serde_json::to_value(&written).unwrap(),
            serde_json::json!({"credentialPolicyName": "pol"})
        );
        let three = serde_json::json!({"namespaceName": "ns", "certificateAuthorityName": "default",
            "certificatePolicyName": "pol"});
        let parsed: EnrollmentPolicies = serde_json::from_value(three.clone()).unwrap();
        let reference = parsed.policy_reference().unwrap();
        let mut written = EnrollmentPolicies::default();
        written.set_policy_reference(reference);
        assert_eq!(serde_json::to_value(&written).unwrap(), three);
        assert_eq!(
            EnrollmentPolicies::default().policy_reference().unwrap(),
            None
        );
        for refused in [
            serde_json::json!({"namespaceName": "ns", "certificatePolicyName": "pol"}),
            serde_json::json!({"certificateAuthorityName": "default"}),
            serde_json::json!({"credentialPolicyName": "pol", "namespaceName": "ns",
                "certificateAuthorityName": "default", "certificatePolicyName": "pol"}),
        ] {
            let parsed: EnrollmentPolicies = serde_json::from_value(refused).unwrap();
            assert_eq!(
                parsed.policy_reference().unwrap_err().error_code(),
                Some(400_004)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// `value` read as `T` and written back.
    fn round_trip<T: Serialize + serde::de::DeserializeOwned>(value: &Value) -> Value {
        let typed: T = serde_json::from_value(value.clone()).unwrap();
        serde_json::to_value(typed).unwrap()
    }

    #[test]
    fn an_enrollment_group_as_the_service_answers_it_round_trips() {
        let group = json!({
            "enrollmentGroupId": "sensors",
            "attestation": {"type": "x509", "x509": {"signingCertificates": {
                "primary": {"info": {
                    "subjectName": "CN=Root", "sha1Thumbprint": "AB", "sha256Thumbprint": "CD",
                    "issuerName": "CN=Root", "notBeforeUtc": "2024-01-01T00:00:00Z",
                    "notAfterUtc": "2025-01-01T00:00:00Z", "serialNumber": "01", "version": 3,
                }},
                "secondary": {"info": {
                    "subjectName": "CN=Root", "sha1Thumbprint": "AB", "sha256Thumbprint": "CD",
                    "issuerName": "CN=Root", "notBeforeUtc": "2024-01-01T00:00:00Z",
                    "notAfterUtc": "2025-01-01T00:00:00Z", "serialNumber": "01", "version": 3,
                }},
            }}},
            "provisioningStatus": "enabled",
            "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": false},
            "allocationPolicy": "geoLatency",
            "iotHubs": ["hub-a.example", "hub-b.example"],
            "initialTwin": {"tags": {"site": "a"}, "properties": {"desired": {"rate": 5}}},
            "customAllocationDefinition": {"webhookUrl": "https://hook.example/", "apiVersion": "2021-10-01"},
            "capabilities": {"iotEdge": false},
            "etag": "\"abc\"",
            "createdDateTimeUtc": "2024-05-01T10:00:00.0000000Z",
            "lastUpdatedDateTimeUtc": "2024-05-01T11:00:00.0000000Z",
        });
        assert_eq!(round_trip::<EnrollmentGroup>(&group), group);
        let typed: EnrollmentGroup = serde_json::from_value(group).unwrap();
        assert_eq!(
            typed.policies.allocation_policy,
            Some(AllocationPolicy::GeoLatency)
        );
        assert!(
            !typed
                .policies
                .reprovision_policy
                .unwrap()
                .migrate_device_data
        );
    }

    #[test]
    fn individual_enrollments_and_attestations_round_trip() {
        let symmetric = json!({
            "registrationId": "dev-1",
            "deviceId": "device-one",
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "cA==", "secondaryKey": "cw=="}},
            "provisioningStatus": "disabled",
            "allocationPolicy": "static",
            "iotHubs": ["hub.example"],
        });
        assert_eq!(round_trip::<IndividualEnrollment>(&symmetric), symmetric);
        let references = json!({"type": "x509", "x509": {"caReferences": {"primary": "root", "secondary": "backup"}}});
        assert_eq!(round_trip::<AttestationMechanism>(&references), references);
        let client = json!({"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": "-----BEGIN CERTIFICATE-----"}}}});
        assert_eq!(round_trip::<AttestationMechanism>(&client), client);
        let typed: AttestationMechanism = serde_json::from_value(client).unwrap();
        let x509 = typed.x509.unwrap();
        assert_eq!(
            X509Attestation::certificates_field(false),
            "clientCertificates"
        );
        assert_eq!(x509.certificates(false).unwrap().entries().count(), 1);
        assert!(x509.certificates(true).is_none());
    }

    #[test]
    fn values_read_in_any_case_and_write_in_the_service_spelling() {
        let body = json!({
            "attestation": {"type": "SymmetricKey"},
            "provisioningStatus": "Disabled",
            "allocationPolicy": "GEOLATENCY",
        });
        let typed: EnrollmentGroup = serde_json::from_value(body).unwrap();
        let written = serde_json::to_value(&typed).unwrap();
        assert_eq!(written["attestation"]["type"], "symmetricKey");
        assert_eq!(written["provisioningStatus"], "disabled");
        assert_eq!(written["allocationPolicy"], "geoLatency");
        for (name, policy) in [
            ("hashed", AllocationPolicy::Hashed),
            ("Static", AllocationPolicy::Static),
            ("geolatency", AllocationPolicy::GeoLatency),
            ("CUSTOM", AllocationPolicy::Custom),
        ] {
            assert_eq!(AllocationPolicy::parse(name), Some(policy));
        }
        assert_eq!(AllocationPolicy::parse("nearest"), None);
    }

    #[test]
    fn unknown_values_and_wrong_types_are_refused_naming_the_member() {
        let refused = |body: Value| {
            serde_json::from_value::<IndividualEnrollment>(body)
                .unwrap_err()
                .to_string()
        };
        let why = refused(json!({"attestation": {"type": "voice"}}));
        assert!(why.contains("unknown attestation type \"voice\""), "{why}");
        let why = refused(json!({"attestation": {"type": "tpm"}, "allocationPolicy": "nearest"}));
        assert!(
            why.contains("unknown allocationPolicy \"nearest\""),
            "{why}"
        );
        let why = refused(json!({"attestation": {"type": "tpm"}, "provisioningStatus": "paused"}));
        assert!(why.contains("enabled or disabled"), "{why}");
        let why = refused(json!({"attestation": {"type": "tpm"}, "iotHubs": "hub.example"}));
        assert!(why.contains("invalid type"), "{why}");
        let why =
            refused(json!({"attestation": {"type": "tpm"}, "customAllocationDefinition": {}}));
        assert!(why.contains("webhookUrl"), "{why}");
    }

    #[test]
    fn nulls_mean_not_given_and_defaults_are_the_services() {
        let body = json!({
            "registrationId": null,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": null}, "x509": null},
            "provisioningStatus": null,
            "reprovisionPolicy": {"updateHubAssignment": false, "migrateDeviceData": null},
            "iotHubs": null,
            "customAllocationDefinition": {"webhookUrl": "python:pick", "apiVersion": null},
            "optionalDeviceInformation": {"ignored": true},
        });
        let typed: IndividualEnrollment = serde_json::from_value(body).unwrap();
        assert_eq!(typed.registration_id, None);
        let attestation = typed.attestation.unwrap();
        assert_eq!(attestation.kind, AttestationType::SymmetricKey);
        assert_eq!(attestation.symmetric_key.unwrap().primary_key, None);
        let policies = typed.policies;
        assert_eq!(policies.provisioning_status, None);
        assert_eq!(
            policies.reprovision_policy,
            Some(ReprovisionPolicy {
                update_hub_assignment: false,
                migrate_device_data: true,
            })
        );
        assert_eq!(
            policies.custom_allocation_definition.unwrap().api_version,
            DEFAULT_WEBHOOK_API_VERSION
        );
        let empty: ReprovisionPolicy = serde_json::from_value(json!({})).unwrap();
        assert_eq!(empty, ReprovisionPolicy::default());
        // Nothing given is written as nothing, not as nulls.
        assert_eq!(
            serde_json::to_value(IndividualEnrollment::default()).unwrap(),
            json!({})
        );
    }

    #[test]
    fn registration_states_bulk_results_queries_and_errors_round_trip() {
        let state = json!({
            "registrationId": "dev-1", "createdDateTimeUtc": "2024-05-01T10:00:00.0000000Z",
            "assignedHub": "hub.example", "deviceId": "dev-1", "status": "assigned",
            "substatus": "initialAssignment", "lastUpdatedDateTimeUtc": "2024-05-01T10:00:00.0000000Z",
            "etag": "\"e\"", "payload": {"site": null},
        });
        assert_eq!(round_trip::<DeviceRegistrationState>(&state), state);
        let failed = json!({"registrationId": "dev-2", "status": "failed", "errorCode": 401_002, "errorMessage": "no"});
        assert_eq!(round_trip::<DeviceRegistrationState>(&failed), failed);
        let result = json!({"isSuccessful": false, "errors": [
            {"registrationId": "a", "errorCode": 409_001, "errorStatus": "a already exists", "status": 409},
            {"enrollmentGroupId": "g", "errorCode": 400_004, "errorStatus": "bad"},
        ]});
        assert_eq!(round_trip::<BulkEnrollmentOperationResult>(&result), result);
        let bulk = json!({"mode": "updateIfMatchETag", "enrollments": [{"registrationId": "a", "etag": "x"}]});
        assert_eq!(round_trip::<BulkEnrollmentOperation>(&bulk), bulk);
        let keys = BulkItemKeys::of(&bulk["enrollments"][0]);
        assert_eq!(keys.registration_id.as_deref(), Some("a"));
        assert_eq!(keys.etag.as_deref(), Some("x"));
        assert_eq!(
            BulkItemKeys::of(&json!({"registrationId": 5})),
            BulkItemKeys::default()
        );
        assert_eq!(
            serde_json::to_value(QuerySpecification::all()).unwrap(),
            json!({"query": "SELECT *"})
        );
        let error = json!({"errorCode": 404_201, "trackingId": "t", "message": "m", "timestampUtc": "2024-05-01T10:00:00Z"});
        assert_eq!(round_trip::<ProvisioningServiceErrorDetails>(&error), error);
    }

    #[test]
    fn certificate_bodies_read_nested_or_flat_and_answers_round_trip() {
        let upload = CertificateBodyDescription::new("PEM".into(), true);
        assert_eq!(
            serde_json::to_value(&upload).unwrap(),
            json!({"properties": {"certificate": "PEM", "isVerified": true}})
        );
        assert_eq!(upload.upload(), (Some("PEM"), true));
        let flat: CertificateBodyDescription =
            serde_json::from_value(json!({"certificate": "B64"})).unwrap();
        assert_eq!(flat.upload(), (Some("B64"), false));
        let response = json!({
            "id": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Devices/provisioningServices/d/certificates/root",
            "name": "root",
            "type": CERTIFICATE_RESOURCE_TYPE,
            "etag": "AAAA",
            "properties": {
                "subject": "CN=Root", "expiry": "Wed, 01 Jan 2025 00:00:00 GMT", "thumbprint": "AB",
                "isVerified": false, "certificate": "MIIB", "created": "Mon, 01 Jan 2024 00:00:00 GMT",
                "updated": "Mon, 01 Jan 2024 00:00:00 GMT", "verificationCode": "CODE",
            },
        });
        assert_eq!(round_trip::<CertificateResponse>(&response), response);
        let verify = json!({"certificate": "PEM"});
        assert_eq!(round_trip::<VerificationCodeRequest>(&verify), verify);
    }
}
