"""dpskit: Azure Device Provisioning Service with self-signed X.509 certificates.

Create a CA hierarchy and device certificates, manage DPS and IoT Hub (create, link, upload CA
certificates, prove possession, enroll), and provision devices: against the embedded local
emulator of DPS and IoT Hub (``LocalCloud``) or against Azure (``AzureCloud``), with the same
code.
"""

from __future__ import annotations

from dpskit import signals
from dpskit._native import (
    ALGORITHMS,
    Certificate,
    CertificateAuthority,
    DeviceCertificate,
    derive_device_key,
    validate_registration_id,
    verify_chain,
)
from dpskit.cloud import (
    AzureCloud,
    C2dFeedback,
    CaCertificateInfo,
    CertificateSummary,
    CredentialPolicy,
    DeviceRegistryNamespace,
    Dps,
    Enrollment,
    EnrollmentGroup,
    Hub,
    HubDevice,
    HubEvent,
    HubUsage,
    LinkedHub,
    LocalCloud,
    MethodResult,
    RecordedRequest,
    RegistrationRecord,
    ReprovisionPolicy,
    RequestRecording,
    TelemetryMessage,
    TelemetryRecords,
    ThrottledRequests,
    TraceEvent,
)
from dpskit.credentials import AzureCliCredential, ServicePrincipal
from dpskit.device import (
    CloudMessage,
    HubClient,
    MethodRequest,
    RegistrationResult,
    Transport,
    provision,
    provision_sync,
)
from dpskit.doctor import DoctorReport, ErrorExplanation, doctor, explain_error
from dpskit.errors import (
    AuthenticationError,
    CertificateError,
    ConfigError,
    ConflictError,
    DpsKitError,
    EmulatorError,
    NotFoundError,
    OperationTimeoutError,
    ProtocolError,
    RegistrationFailedError,
    ServiceError,
    ThrottledError,
    TransportError,
)
from dpskit.fleet import Fleet, FleetProgress, FleetReport, TelemetryPlan
from dpskit.provisioning import ProvisioningOutcome, provision_devices

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS",
    "AuthenticationError",
    "AzureCliCredential",
    "AzureCloud",
    "C2dFeedback",
    "CaCertificateInfo",
    "Certificate",
    "CertificateAuthority",
    "CertificateError",
    "CertificateSummary",
    "CloudMessage",
    "ConfigError",
    "ConflictError",
    "CredentialPolicy",
    "DeviceCertificate",
    "DeviceRegistryNamespace",
    "DoctorReport",
    "Dps",
    "DpsKitError",
    "EmulatorError",
    "Enrollment",
    "EnrollmentGroup",
    "ErrorExplanation",
    "Fleet",
    "FleetProgress",
    "FleetReport",
    "Hub",
    "HubClient",
    "HubDevice",
    "HubEvent",
    "HubUsage",
    "LinkedHub",
    "LocalCloud",
    "MethodRequest",
    "MethodResult",
    "NotFoundError",
    "OperationTimeoutError",
    "ProtocolError",
    "ProvisioningOutcome",
    "RecordedRequest",
    "RegistrationFailedError",
    "RegistrationRecord",
    "RegistrationResult",
    "ReprovisionPolicy",
    "RequestRecording",
    "ServiceError",
    "ServicePrincipal",
    "TelemetryMessage",
    "TelemetryPlan",
    "TelemetryRecords",
    "ThrottledError",
    "ThrottledRequests",
    "TraceEvent",
    "Transport",
    "TransportError",
    "__version__",
    "derive_device_key",
    "doctor",
    "explain_error",
    "provision",
    "provision_devices",
    "provision_sync",
    "signals",
    "validate_registration_id",
    "verify_chain",
]
