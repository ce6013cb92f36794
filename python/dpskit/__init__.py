"""dpskit: Azure Device Provisioning Service with self-signed X.509 certificates.

Create a CA hierarchy and device certificates, prove possession, and (in later versions) run the
whole DPS walkthrough against an embedded local emulator of DPS and IoT Hub, or against Azure.
"""

from __future__ import annotations

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
    CaCertificateInfo,
    Dps,
    Enrollment,
    EnrollmentGroup,
    Hub,
    HubDevice,
    LinkedHub,
    LocalCloud,
    MethodResult,
    RegistrationRecord,
    ReprovisionPolicy,
    TelemetryMessage,
    TelemetryRecords,
    TraceEvent,
)
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
from dpskit.provisioning import ProvisioningOutcome, provision_devices

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS",
    "AuthenticationError",
    "CaCertificateInfo",
    "Certificate",
    "CertificateAuthority",
    "CertificateError",
    "ConfigError",
    "ConflictError",
    "DeviceCertificate",
    "Dps",
    "DpsKitError",
    "EmulatorError",
    "Enrollment",
    "EnrollmentGroup",
    "Hub",
    "HubDevice",
    "LinkedHub",
    "LocalCloud",
    "MethodResult",
    "NotFoundError",
    "OperationTimeoutError",
    "ProtocolError",
    "ProvisioningOutcome",
    "RegistrationFailedError",
    "RegistrationRecord",
    "ReprovisionPolicy",
    "ServiceError",
    "TelemetryMessage",
    "TelemetryRecords",
    "ThrottledError",
    "TraceEvent",
    "TransportError",
    "__version__",
    "derive_device_key",
    "provision_devices",
    "validate_registration_id",
    "verify_chain",
]
