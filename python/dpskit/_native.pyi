"""Type stubs for dpskit's Rust core (``dpskit._native``), checked by ``mypy.stubtest``."""

import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, final

_StrPath = str | os.PathLike[str]

__all__ = [
    "ALGORITHMS",
    "DPS_REGISTRATIONS_PER_MINUTE",
    "EMULATOR_CA_FILE",
    "AllocationRecord",
    "AttestationRecord",
    "C2dFeedbackRecord",
    "C2dFeedbackStream",
    "C2dSender",
    "CaCertificateRecord",
    "CapabilitiesRecord",
    "Certificate",
    "CertificateAuthority",
    "CredentialPolicyRecord",
    "CredentialPolicyReferenceRecord",
    "CustomAllocationRecord",
    "DeviceCertificate",
    "DoctorAttempt",
    "DoctorCheck",
    "DoctorReport",
    "DpsRecord",
    "Emulator",
    "EnrollmentGroupRecord",
    "EnrollmentSettingsRecord",
    "ErrorExplanation",
    "EventHubStream",
    "EventRecord",
    "FleetRun",
    "HubConnections",
    "HubDeviceRecord",
    "HubRecord",
    "HubSession",
    "HubUsageRecord",
    "IndividualEnrollmentRecord",
    "LinkedHubRecord",
    "NamespaceRecord",
    "Registration",
    "RegistrationStateRecord",
    "ReprovisionPolicyRecord",
    "RestClient",
    "ServiceTwinRecord",
    "TelemetryRecord",
    "TraceRecord",
    "TraceStep",
    "X509CertificateInfoRecord",
    "X509ThumbprintRecord",
    "_core_error_kinds",
    "_raise_core_error",
    "_refresh_logging",
    "credential_files",
    "derive_device_key",
    "diagnose_device",
    "doctor_cause_names",
    "dps_onboarding_seconds",
    "explain_error",
    "generate_symmetric_key",
    "hub_tier_fits",
    "loopback_setup",
    "open_event_stream",
    "open_feedback_stream",
    "provision",
    "provision_devices",
    "read_retained_events",
    "transport_port",
    "validate_registration_id",
    "validate_resource_name",
    "validate_symmetric_key",
    "verify_chain",
    "wait_for_feedback",
    "write_secret",
]

ALGORITHMS: tuple[str, ...]
#: Device registrations one DPS instance takes a minute on Azure.
DPS_REGISTRATIONS_PER_MINUTE: int
#: The file of a local cloud's data folder that holds the CA its clients trust.
EMULATOR_CA_FILE: str

@final
class Certificate:
    """A parsed X.509 certificate (public material only)."""

    @staticmethod
    def from_pem(data: str | bytes) -> Certificate: ...
    @staticmethod
    def from_der(data: bytes) -> Certificate: ...
    @staticmethod
    def from_pem_chain(data: str | bytes) -> list[Certificate]: ...
    @staticmethod
    def load(path: _StrPath) -> Certificate: ...
    @staticmethod
    def load_all(path: _StrPath) -> list[Certificate]: ...
    @property
    def pem(self) -> str: ...
    @property
    def der(self) -> bytes: ...
    @property
    def subject(self) -> str: ...
    @property
    def issuer(self) -> str: ...
    @property
    def common_name(self) -> str | None: ...
    @property
    def issuer_common_name(self) -> str | None: ...
    @property
    def serial_number(self) -> str: ...
    @property
    def thumbprint_sha1(self) -> str: ...
    @property
    def thumbprint_sha256(self) -> str: ...
    @property
    def not_before(self) -> datetime: ...
    @property
    def not_after(self) -> datetime: ...
    @property
    def is_ca(self) -> bool: ...
    @property
    def path_length(self) -> int | None: ...
    @property
    def key_algorithm(self) -> str: ...
    @property
    def signature_algorithm(self) -> str: ...
    @property
    def key_usage(self) -> list[str]: ...
    @property
    def extended_key_usage(self) -> list[str]: ...
    @property
    def subject_key_identifier(self) -> str | None: ...
    @property
    def authority_key_identifier(self) -> str | None: ...
    @property
    def is_self_signed(self) -> bool: ...
    def is_valid_at(self, when: datetime | None = None) -> bool: ...
    def save(self, path: _StrPath) -> Path: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class DeviceCertificate:
    """A device (leaf) certificate with its private key and the chain of its issuers."""

    @staticmethod
    def from_pem(
        certificate_pem: str | bytes,
        private_key_pem: str | bytes,
        *,
        password: str | bytes | None = None,
    ) -> DeviceCertificate: ...
    @staticmethod
    def load(
        certificate_path: _StrPath,
        private_key_path: _StrPath,
        *,
        password: str | bytes | None = None,
    ) -> DeviceCertificate: ...
    @staticmethod
    def from_pkcs12(data: bytes, password: str = "") -> DeviceCertificate: ...
    @property
    def registration_id(self) -> str: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def certificate(self) -> Certificate: ...
    @property
    def issuers(self) -> list[Certificate]: ...
    @property
    def certificate_pem(self) -> str: ...
    @property
    def certificate_der(self) -> bytes: ...
    @property
    def private_key_pem(self) -> str: ...
    @property
    def private_key_der(self) -> bytes: ...
    @property
    def chain_pem(self) -> str: ...
    @property
    def full_chain_pem(self) -> str: ...
    def encrypted_private_key_pem(self, password: str | bytes) -> str: ...
    def to_pkcs12(self, password: str = "", *, legacy: bool = False) -> bytes: ...
    def save(
        self,
        folder: _StrPath,
        *,
        name: str | None = None,
        pkcs12_password: str = "",
        legacy_pkcs12: bool = False,
    ) -> dict[str, Path]: ...

@final
class CertificateAuthority:
    """A CA certificate with its private key, able to issue CAs, devices and PoP certificates."""

    @staticmethod
    def create_root(
        common_name: str,
        *,
        algorithm: str = "ec-p256",
        days: int = 3650,
        path_length: int | None = None,
        organization: str | None = None,
        not_before: datetime | None = None,
    ) -> CertificateAuthority: ...
    @staticmethod
    def from_pem(
        certificate_pem: str | bytes,
        private_key_pem: str | bytes,
        *,
        password: str | bytes | None = None,
    ) -> CertificateAuthority: ...
    @staticmethod
    def load(
        certificate_path: _StrPath,
        private_key_path: _StrPath,
        *,
        password: str | bytes | None = None,
    ) -> CertificateAuthority: ...
    def create_intermediate(
        self,
        common_name: str,
        *,
        algorithm: str = "ec-p256",
        days: int = 1825,
        path_length: int | None = 0,
        organization: str | None = None,
        not_before: datetime | None = None,
    ) -> CertificateAuthority: ...
    def issue_device(
        self,
        registration_id: str,
        *,
        algorithm: str = "ec-p256",
        days: int = 365,
        not_before: datetime | None = None,
    ) -> DeviceCertificate: ...
    def issue_devices(
        self,
        registration_ids: Iterable[str],
        *,
        algorithm: str = "ec-p256",
        days: int = 365,
        not_before: datetime | None = None,
        output_dir: _StrPath | None = None,
        manifest: Literal["csv", "json"] | None = None,
        pkcs12_password: str | None = None,
    ) -> list[DeviceCertificate]: ...
    def create_verification_certificate(
        self, verification_code: str, *, days: int = 30
    ) -> Certificate: ...
    def sign_csr(
        self,
        csr_pem: str | bytes,
        *,
        registration_id: str | None = None,
        days: int = 365,
        not_before: datetime | None = None,
    ) -> Certificate: ...
    @property
    def common_name(self) -> str: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def certificate(self) -> Certificate: ...
    @property
    def issuers(self) -> list[Certificate]: ...
    @property
    def certificate_pem(self) -> str: ...
    @property
    def certificate_der(self) -> bytes: ...
    @property
    def private_key_pem(self) -> str: ...
    @property
    def private_key_der(self) -> bytes: ...
    @property
    def chain_pem(self) -> str: ...
    @property
    def full_chain_pem(self) -> str: ...
    def encrypted_private_key_pem(self, password: str | bytes) -> str: ...
    def to_pkcs12(self, password: str = "", *, legacy: bool = False) -> bytes: ...
    def save(
        self,
        folder: _StrPath,
        *,
        name: str | None = None,
        key_password: str | bytes | None = None,
    ) -> dict[str, Path]: ...

#: A JSON value as ``json.loads`` gives it (and ``json.dumps`` takes it).
_Json = Any

@final
class HubRecord:
    """An IoT hub resource as ARM describes it."""

    @property
    def name(self) -> str: ...
    @property
    def location(self) -> str: ...
    @property
    def host_name(self) -> str: ...
    @property
    def provisioning_state(self) -> str: ...
    @property
    def sku(self) -> str: ...
    @property
    def units(self) -> int: ...
    @property
    def event_hub_endpoint(self) -> str | None: ...
    @property
    def event_hub_path(self) -> str | None: ...
    @property
    def partition_count(self) -> int | None: ...

@final
class LinkedHubRecord:
    """A hub linked to a DPS, as ARM describes it (without its connection string)."""

    @property
    def host_name(self) -> str: ...
    @property
    def location(self) -> str: ...
    @property
    def allocation_weight(self) -> int | None: ...
    @property
    def apply_allocation_policy(self) -> bool: ...

@final
class NamespaceRecord:
    """An Azure Device Registry namespace as ARM describes it."""

    @property
    def name(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def location(self) -> str: ...
    @property
    def uuid(self) -> str: ...

@final
class CredentialPolicyRecord:
    """A namespace's credential policy as ARM describes it (its issuing CA's subject and
    validity as ISO 8601 text)."""

    @property
    def name(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def validity_days(self) -> int: ...
    @property
    def key_type(self) -> str: ...
    @property
    def subject(self) -> str | None: ...
    @property
    def not_before(self) -> str | None: ...
    @property
    def not_after(self) -> str | None: ...

@final
class DpsRecord:
    """A DPS resource as ARM describes it."""

    @property
    def name(self) -> str: ...
    @property
    def location(self) -> str: ...
    @property
    def id_scope(self) -> str: ...
    @property
    def service_operations_host_name(self) -> str: ...
    @property
    def device_provisioning_host_name(self) -> str: ...
    @property
    def provisioning_state(self) -> str: ...
    @property
    def linked_hubs(self) -> list[LinkedHubRecord]: ...

@final
class CaCertificateRecord:
    """A CA certificate of a DPS as ARM describes it (dates as ARM's RFC 1123 text)."""

    @property
    def name(self) -> str: ...
    @property
    def etag(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def thumbprint(self) -> str: ...
    @property
    def is_verified(self) -> bool: ...
    @property
    def expiry(self) -> str: ...
    @property
    def created(self) -> str: ...
    @property
    def updated(self) -> str: ...
    @property
    def verification_code(self) -> str | None: ...
    @property
    def certificate(self) -> str | None: ...

@final
class HubUsageRecord:
    """A hub's tier, today's message meter and (local cloud only) its throttles' refusals."""

    @property
    def sku(self) -> str: ...
    @property
    def units(self) -> int: ...
    @property
    def presets(self) -> bool: ...
    @property
    def daily_quota(self) -> int: ...
    @property
    def messages_used(self) -> int: ...
    @property
    def meter_block_bytes(self) -> int | None: ...
    @property
    def resets_at(self) -> int: ...
    @property
    def throttled(self) -> dict[str, int] | None: ...
    @property
    def quota_refusals(self) -> int | None: ...

@final
class TelemetryRecord:
    """A device-to-cloud message the local cloud's hub stored."""

    @property
    def sequence(self) -> int: ...
    @property
    def device_id(self) -> str: ...
    @property
    def enqueued_time(self) -> float: ...
    @property
    def body(self) -> bytes: ...
    @property
    def properties(self) -> list[tuple[str, str]]: ...
    @property
    def system_properties(self) -> list[tuple[str, str]]: ...

@final
class EventRecord:
    """One event as a hub's Event Hub-compatible endpoint delivered it."""

    @property
    def partition(self) -> str: ...
    @property
    def sequence_number(self) -> int: ...
    @property
    def offset(self) -> str: ...
    @property
    def enqueued_time_ms(self) -> int: ...
    @property
    def device_id(self) -> str | None: ...
    @property
    def module_id(self) -> str | None: ...
    @property
    def body(self) -> bytes: ...
    @property
    def properties(self) -> dict[str, str]: ...
    @property
    def annotations(self) -> dict[str, str]: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def content_encoding(self) -> str | None: ...

@final
class EventHubStream:
    """Events of an event hub's partitions as they arrive."""

    def next_batch(self, max: int = 300) -> Awaitable[list[EventRecord]]: ...
    def close(self) -> Awaitable[None]: ...

def open_event_stream(
    connection_string: str,
    port: int | None,
    trust_pem: str | None,
    consumer_group: str,
    kind: str,
    value: str,
    inclusive: bool = False,
    partitions: list[str] | None = None,
) -> Awaitable[EventHubStream]: ...
def read_retained_events(
    connection_string: str,
    port: int | None,
    trust_pem: str | None,
    consumer_group: str = "$Default",
) -> list[EventRecord]: ...

@final
class C2dFeedbackRecord:
    """One outcome IoT Hub reported for a cloud-to-device message."""

    @property
    def original_message_id(self) -> str: ...
    @property
    def device_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def enqueued_time_ms(self) -> int: ...
    @property
    def device_generation_id(self) -> str: ...

@final
class C2dSender:
    """A hub's cloud-to-device sender: one AMQP connection, opened on the first send."""

    def __new__(
        cls, connection_string: str, port: int | None, trust_pem: str | None
    ) -> C2dSender: ...
    def send(
        self,
        device_id: str,
        body: bytes,
        properties: Sequence[tuple[str, str]],
        ack: str | None = None,
        expires_in: float | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
    ) -> str: ...
    def close(self) -> None: ...

@final
class C2dFeedbackStream:
    """A hub's delivery feedback as it arrives."""

    def next(self) -> Awaitable[list[C2dFeedbackRecord]]: ...
    def close(self) -> Awaitable[None]: ...

def open_feedback_stream(
    connection_string: str, port: int | None, trust_pem: str | None
) -> Awaitable[C2dFeedbackStream]: ...
def wait_for_feedback(
    connection_string: str,
    port: int | None,
    trust_pem: str | None,
    message_id: str,
    timeout: float,
) -> tuple[C2dFeedbackRecord, list[C2dFeedbackRecord]]: ...

@final
class TraceRecord:
    """One step of a client's exchange with the local cloud."""

    @property
    def at(self) -> float: ...
    @property
    def direction(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def topic(self) -> str | None: ...
    @property
    def status(self) -> int | None: ...
    @property
    def detail(self) -> str: ...

@final
class Registration:
    """What DPS answered a device's registration (times as Azure's text)."""

    @property
    def status(self) -> str: ...
    @property
    def registration_id(self) -> str: ...
    @property
    def assigned_hub(self) -> str | None: ...
    @property
    def device_id(self) -> str | None: ...
    @property
    def substatus(self) -> str | None: ...
    @property
    def etag(self) -> str | None: ...
    @property
    def created(self) -> str | None: ...
    @property
    def last_updated(self) -> str | None: ...
    @property
    def payload(self) -> _Json: ...
    @property
    def operation_id(self) -> str: ...
    @property
    def issued_chain(self) -> list[Certificate]: ...
    @property
    def issued_certificate(self) -> DeviceCertificate | None: ...

@final
class X509CertificateInfoRecord:
    """What the DPS service API says of a certificate in an enrollment (times as Azure's
    RFC 3339 text)."""

    @property
    def subject_name(self) -> str: ...
    @property
    def sha1_thumbprint(self) -> str: ...
    @property
    def sha256_thumbprint(self) -> str: ...
    @property
    def issuer_name(self) -> str: ...
    @property
    def not_before_utc(self) -> str: ...
    @property
    def not_after_utc(self) -> str: ...
    @property
    def serial_number(self) -> str: ...
    @property
    def version(self) -> int: ...

@final
class AttestationRecord:
    """An enrollment's attestation mechanism (keys redacted in ``repr``); kept as read, so an
    update can send it back unchanged."""

    @property
    def kind(self) -> str: ...
    @property
    def primary_ca_reference(self) -> str | None: ...
    @property
    def secondary_ca_reference(self) -> str | None: ...
    @property
    def primary_certificate(self) -> X509CertificateInfoRecord | None: ...
    @property
    def secondary_certificate(self) -> X509CertificateInfoRecord | None: ...
    @property
    def primary_key(self) -> str | None: ...
    @property
    def secondary_key(self) -> str | None: ...

@final
class ReprovisionPolicyRecord:
    """What DPS does when a registered device registers again."""

    @property
    def update_hub_assignment(self) -> bool: ...
    @property
    def migrate_device_data(self) -> bool: ...

@final
class CustomAllocationRecord:
    """A custom allocation's webhook URL and the api-version sent to it."""

    @property
    def webhook_url(self) -> str: ...
    @property
    def api_version(self) -> str: ...

@final
class AllocationRecord:
    """How DPS picks a hub for an enrollment."""

    @property
    def policy(self) -> str | None: ...
    @property
    def iot_hubs(self) -> list[str]: ...
    @property
    def iot_hub_host_name(self) -> str | None: ...
    @property
    def custom(self) -> CustomAllocationRecord | None: ...

@final
class CapabilitiesRecord:
    """Whether the enrolled devices are IoT Edge devices."""

    @property
    def iot_edge(self) -> bool: ...

@final
class CredentialPolicyReferenceRecord:
    """The Device Registry policy that issues an enrollment's certificates (by name; or with
    its namespace and issuing CA, the newer API's three names)."""

    @property
    def policy(self) -> str: ...
    @property
    def namespace(self) -> str | None: ...
    @property
    def certificate_authority(self) -> str | None: ...

@final
class EnrollmentSettingsRecord:
    """The settings enrollment groups and individual enrollments share (service defaults
    applied)."""

    @property
    def provisioning_status(self) -> str: ...
    @property
    def reprovision_policy(self) -> ReprovisionPolicyRecord: ...
    @property
    def allocation(self) -> AllocationRecord: ...
    @property
    def initial_twin(self) -> dict[str, Any] | None: ...
    @property
    def capabilities(self) -> CapabilitiesRecord | None: ...
    @property
    def credential_policy(self) -> CredentialPolicyReferenceRecord | None: ...

@final
class EnrollmentGroupRecord:
    """An enrollment group as the DPS service API answers it (times as Azure's text)."""

    @property
    def enrollment_group_id(self) -> str: ...
    @property
    def attestation(self) -> AttestationRecord: ...
    @property
    def settings(self) -> EnrollmentSettingsRecord: ...
    @property
    def etag(self) -> str: ...
    @property
    def created(self) -> str: ...
    @property
    def updated(self) -> str: ...

@final
class IndividualEnrollmentRecord:
    """An individual enrollment as the DPS service API answers it (times as Azure's text)."""

    @property
    def registration_id(self) -> str: ...
    @property
    def device_id(self) -> str | None: ...
    @property
    def attestation(self) -> AttestationRecord: ...
    @property
    def settings(self) -> EnrollmentSettingsRecord: ...
    @property
    def etag(self) -> str: ...
    @property
    def created(self) -> str: ...
    @property
    def updated(self) -> str: ...

@final
class RegistrationStateRecord:
    """What DPS recorded of a device's last registration (times as Azure's text)."""

    @property
    def registration_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def assigned_hub(self) -> str | None: ...
    @property
    def device_id(self) -> str | None: ...
    @property
    def substatus(self) -> str | None: ...
    @property
    def error_code(self) -> int | None: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def created(self) -> str: ...
    @property
    def last_updated(self) -> str: ...
    @property
    def etag(self) -> str: ...
    @property
    def payload(self) -> _Json: ...

@final
class HubDeviceRecord:
    """A device identity of a hub (keys redacted in ``repr``; ``None`` in a device list)."""

    @property
    def device_id(self) -> str: ...
    @property
    def authentication(self) -> str: ...
    @property
    def primary_thumbprint(self) -> str | None: ...
    @property
    def primary_key(self) -> str | None: ...
    @property
    def secondary_key(self) -> str | None: ...
    @property
    def connection_state(self) -> str: ...
    @property
    def status(self) -> str | None: ...
    @property
    def etag(self) -> str | None: ...

@final
class X509ThumbprintRecord:
    """The thumbprints a twin carries for a ``selfSigned`` device."""

    @property
    def primary_thumbprint(self) -> str | None: ...
    @property
    def secondary_thumbprint(self) -> str | None: ...

@final
class ServiceTwinRecord:
    """A device twin as the hub service sees it; the sections stay dicts, and ``other`` holds
    the members not modelled here."""

    @property
    def device_id(self) -> str: ...
    @property
    def etag(self) -> str | None: ...
    @property
    def version(self) -> int | None: ...
    @property
    def status(self) -> str | None: ...
    @property
    def connection_state(self) -> str | None: ...
    @property
    def authentication_type(self) -> str | None: ...
    @property
    def x509_thumbprint(self) -> X509ThumbprintRecord | None: ...
    @property
    def tags(self) -> dict[str, Any] | None: ...
    @property
    def desired(self) -> dict[str, Any] | None: ...
    @property
    def reported(self) -> dict[str, Any] | None: ...
    @property
    def other(self) -> dict[str, Any]: ...

@final
class Emulator:
    """The embedded DPS / IoT Hub emulator (wrapped by ``dpskit.LocalCloud``)."""

    def __new__(
        cls,
        data_dir: _StrPath | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 8883,
        connect_timeout: float = 10.0,
        max_connections: int = 20000,
        max_packet_size: int = 262144,
        max_chain_length: int = 10,
        poll_retry_after: int = 0,
        https_port: int = 0,
        web_port: int = 443,
        amqp_port: int = 5671,
        arm_tokens: Sequence[str] | None = None,
        arm_operation_seconds: float = 0.0,
        arm_page_size: int = 100,
        throttle_every: int = 0,
        throttle_retry_after: int = 1,
        start_time: int | None = None,
    ) -> Emulator: ...
    def stop(self) -> None: ...
    @property
    def is_running(self) -> bool: ...
    @property
    def throttled_requests(self) -> tuple[int, int, int]: ...
    @property
    def trust_pem(self) -> str: ...
    @property
    def data_dir(self) -> Path: ...
    @property
    def host(self) -> str: ...
    @property
    def https_port(self) -> int: ...
    @property
    def arm_token(self) -> str | None: ...
    @property
    def web_port(self) -> int: ...
    @property
    def amqp_port(self) -> int: ...
    @property
    def mqtt_port(self) -> int: ...
    def now_ms(self) -> int: ...
    def advance_time(self, seconds: int) -> int: ...
    def namespace_root_pem(self, namespace: str) -> str: ...
    def policy_issuing_pem(self, namespace: str, policy: str) -> str: ...
    def create_hub(
        self,
        name: str,
        location: str,
        host_name: str | None = None,
        partition_count: int | None = None,
    ) -> None: ...
    def update_dps_knobs(
        self,
        dps: str,
        *,
        assignment_latency: float | None = None,
        registrations_per_minute: int | None = None,
        refuse_next: int | None = None,
        refusal_status: int | None = None,
        device_location: tuple[str, str] | None = None,
        strict_csr_key_type: bool | None = None,
    ) -> None: ...
    def update_hub_knobs(
        self,
        host_name: str,
        *,
        latency: float | None = None,
        connections_per_second: int | None = None,
        messages_per_second: int | None = None,
        refuse_next_connections: int | None = None,
        certificate_issuance_delay_ms: int | None = None,
    ) -> None: ...
    def hub_usage(self, host_name: str) -> HubUsageRecord: ...
    def hub_drop_connection(self, host_name: str, device_id: str) -> bool: ...
    def register_allocator(
        self, name: str, callable: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> None: ...
    def trace(self, client_id: str | None = None, enabled: bool = True) -> None: ...
    def trace_events(self, client_id: str) -> list[TraceRecord]: ...
    def start_recording(self) -> int: ...
    def recorded_requests(
        self, since: int
    ) -> tuple[
        list[
            tuple[
                int,
                float,
                str,
                str,
                str,
                list[tuple[str, str]],
                list[tuple[str, str]],
                str,
                Any,
                int,
                int,
            ]
        ],
        int,
    ]: ...
    def stop_recording(self) -> None: ...

@final
class HubConnections:
    """X.509 devices held connected to an IoT Hub or MQTT broker, one task per device."""

    def __new__(
        cls, trust_pem: str | None = None, *, worker_threads: int | None = None
    ) -> HubConnections: ...
    def connect(
        self,
        host: str,
        port: int,
        devices: Sequence[DeviceCertificate],
        *,
        concurrency: int = 64,
        max_in_flight: int = 100,
        keep_alive: int = 60,
        timeout: float = 30.0,
        transport: str = "mqtt",
    ) -> dict[str, Any]: ...
    def send_telemetry(
        self, per_device: int, body: bytes, *, window: int = 100
    ) -> dict[str, Any]: ...
    def __len__(self) -> int: ...
    def close(self) -> None: ...

@final
class FleetRun:
    """A fleet run in progress on its own runtime (see ``dpskit.Fleet``)."""

    def __new__(
        cls,
        settings: dict[str, Any],
        trust_pem: str | None,
        registration_ids: Sequence[str],
        indexes: Sequence[int],
        *,
        certificates: Sequence[DeviceCertificate] | None = None,
        group_key: str | None = None,
        custom: dict[str, Any] | None = None,
        worker_threads: int | None = None,
    ) -> FleetRun: ...
    def progress(self) -> tuple[int, int, int, int, int, int, int, int]: ...
    def wait(self, timeout: float) -> bool: ...
    def cancel(self) -> None: ...
    def result(self) -> dict[str, Any]: ...

@final
class HubSession:
    """One device connected to its hub (awaitable methods)."""

    @staticmethod
    def connect(
        host: str,
        port: int,
        device_id: str,
        *,
        certificate: DeviceCertificate | None = None,
        symmetric_key: str | None = None,
        trust_pem: str | None = None,
        keep_alive: int = 60,
        timeout: float = 30.0,
        transport: str = "mqtt",
        proxy: str | None = None,
        certificate_renewal: bool = False,
        clock_offset_ms: int = 0,
    ) -> Awaitable[HubSession]: ...
    @property
    def device_id(self) -> str: ...
    @property
    def connection_state(self) -> Literal["connecting", "connected", "reconnecting", "closed"]: ...
    def send_telemetry(
        self,
        body: bytes,
        *,
        properties: Sequence[tuple[str, str]] = ...,
        content_type: str | None = None,
        content_encoding: str | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Awaitable[None]: ...
    def get_twin(self) -> Awaitable[dict[str, Any]]: ...
    def update_reported(self, patch: dict[str, Any]) -> Awaitable[None]: ...
    def next_message(
        self,
    ) -> Awaitable[tuple[bytes, list[tuple[str, str]], list[tuple[str, str]]] | None]: ...
    def next_desired(self) -> Awaitable[dict[str, Any] | None]: ...
    def next_method(self) -> Awaitable[tuple[str, str, _Json] | None]: ...
    def respond(self, rid: str, status: int, payload: _Json) -> Awaitable[None]: ...
    def renew_certificate(
        self, *, key_algorithm: str | None = None, replace: str | None = None
    ) -> Awaitable[DeviceCertificate]: ...
    def close(self) -> Awaitable[None]: ...

def transport_port(transport: str) -> int: ...
def provision(
    host: str,
    port: int,
    id_scope: str,
    registration_id: str,
    *,
    certificate: DeviceCertificate | None = None,
    symmetric_key: str | None = None,
    trust_pem: str | None = None,
    payload: _Json = None,
    timeout: float = 60.0,
    transport: str = "mqtt",
    proxy: str | None = None,
    csr: bytes | None = None,
    csr_key: bytes | None = None,
    key_algorithm: str | None = None,
    clock_offset_ms: int = 0,
) -> Awaitable[Registration]: ...

@final
class RestClient:
    """ARM, DPS service and hub service REST calls for one subscription and resource group."""

    def __new__(
        cls,
        arm_endpoint: str,
        subscription_id: str,
        resource_group: str,
        token: Callable[[], str],
        trust_pem: str | None = None,
    ) -> RestClient: ...
    def create_hub(
        self,
        name: str,
        location: str,
        sku: str | None = None,
        units: int = 1,
        partition_count: int | None = None,
    ) -> HubRecord: ...
    def hub(self, name: str) -> HubRecord: ...
    def hubs(self) -> list[HubRecord]: ...
    def delete_hub(self, name: str) -> None: ...
    def hub_keys(self, name: str, policy: str = "iothubowner") -> tuple[str, str]: ...
    def consumer_groups(self, hub: str) -> list[str]: ...
    def create_consumer_group(self, hub: str, group: str) -> None: ...
    def delete_consumer_group(self, hub: str, group: str) -> None: ...
    def hub_usage(self, name: str) -> HubUsageRecord: ...
    def create_dps(self, name: str, location: str, presets: bool = False) -> DpsRecord: ...
    def dps(self, name: str) -> DpsRecord: ...
    def dps_instances(self) -> list[DpsRecord]: ...
    def delete_dps(self, name: str) -> None: ...
    def dps_keys(self, name: str) -> tuple[str, str]: ...
    def link_hub(
        self,
        dps: str,
        hub: str,
        allocation_weight: int | None,
        apply_allocation_policy: bool,
        location: str | None = None,
    ) -> DpsRecord: ...
    def create_device_registry_namespace(self, name: str, location: str) -> NamespaceRecord: ...
    def device_registry_namespace(self, name: str) -> NamespaceRecord: ...
    def device_registry_namespaces(self) -> list[NamespaceRecord]: ...
    def delete_device_registry_namespace(self, name: str) -> None: ...
    def create_credential_policy(
        self, namespace: str, name: str, validity_days: int, key_type: str
    ) -> CredentialPolicyRecord: ...
    def credential_policy(self, namespace: str, name: str) -> CredentialPolicyRecord: ...
    def credential_policies(self, namespace: str) -> list[CredentialPolicyRecord]: ...
    def link_namespace(self, kind: str, name: str, namespace: str) -> None: ...
    def upload_ca_certificate(
        self, dps: str, name: str, pem: str, verified: bool, etag: str | None
    ) -> CaCertificateRecord: ...
    def ca_certificate(self, dps: str, name: str) -> CaCertificateRecord: ...
    def ca_certificates(self, dps: str) -> list[CaCertificateRecord]: ...
    def delete_ca_certificate(self, dps: str, name: str, etag: str) -> None: ...
    def generate_verification_code(self, dps: str, name: str, etag: str) -> CaCertificateRecord: ...
    def verify_certificate(
        self, dps: str, name: str, etag: str, pem: str
    ) -> CaCertificateRecord: ...
    def prove_possession(
        self, dps: str, name: str, authority: CertificateAuthority
    ) -> CaCertificateRecord: ...
    def put_enrollment_group(
        self,
        connection_string: str,
        id: str,
        body: dict[str, Any],
        if_match: str | None = None,
        attestation: AttestationRecord | None = None,
    ) -> EnrollmentGroupRecord: ...
    def enrollment_group(self, connection_string: str, id: str) -> EnrollmentGroupRecord: ...
    def enrollment_groups(
        self,
        connection_string: str,
    ) -> list[EnrollmentGroupRecord]: ...
    def delete_enrollment_group(
        self, connection_string: str, id: str, if_match: str | None = None
    ) -> None: ...
    def enrollment_group_attestation(
        self, connection_string: str, id: str
    ) -> AttestationRecord: ...
    def put_enrollment(
        self,
        connection_string: str,
        id: str,
        body: dict[str, Any],
        if_match: str | None = None,
    ) -> IndividualEnrollmentRecord: ...
    def enrollment(self, connection_string: str, id: str) -> IndividualEnrollmentRecord: ...
    def enrollments(
        self,
        connection_string: str,
    ) -> list[IndividualEnrollmentRecord]: ...
    def delete_enrollment(
        self, connection_string: str, id: str, if_match: str | None = None
    ) -> None: ...
    def registration(self, connection_string: str, id: str) -> RegistrationStateRecord: ...
    def registrations(
        self, connection_string: str, group_id: str
    ) -> list[RegistrationStateRecord]: ...
    def delete_registration(
        self, connection_string: str, id: str, if_match: str | None = None
    ) -> None: ...
    def hub_device(self, connection_string: str, id: str) -> HubDeviceRecord: ...
    def hub_put_device(
        self, connection_string: str, id: str, body: dict[str, Any]
    ) -> HubDeviceRecord: ...
    def hub_delete_device(self, connection_string: str, id: str) -> None: ...
    def hub_twins(self, connection_string: str, query: str = ...) -> list[ServiceTwinRecord]: ...
    def hub_device_list(
        self,
        connection_string: str,
    ) -> list[HubDeviceRecord]: ...
    def hub_twin(self, connection_string: str, id: str) -> ServiceTwinRecord: ...
    def hub_patch_twin(
        self, connection_string: str, id: str, patch: dict[str, Any]
    ) -> ServiceTwinRecord: ...
    def hub_invoke_method(
        self,
        connection_string: str,
        id: str,
        method: str,
        payload: _Json,
        timeout: float,
    ) -> tuple[int, _Json]: ...
    def hub_telemetry(
        self, connection_string: str, device_id: str | None = None
    ) -> list[TelemetryRecord]: ...

def derive_device_key(group_key: str, registration_id: str) -> str: ...
def dps_onboarding_seconds(devices: int) -> float:
    """Seconds one DPS takes at Azure's registration rate to register ``devices``."""

def hub_tier_fits(
    devices: int,
    d2c_per_second: float,
    mean_message_bytes: float,
    needs_standard: bool,
    connect_within_seconds: float,
) -> list[tuple[str, int | None, str, float]]:
    """Per hub tier, F1 to S3: ``(tier, fewest units or None, limited_by,
    metered_messages_per_day)`` for a hub's demand."""

def loopback_setup(host: str, hubs: int) -> str: ...
def provision_devices(
    host: str,
    port: int,
    id_scope: str,
    devices: Sequence[DeviceCertificate],
    trust_pem: str | None,
    *,
    concurrency: int = 64,
    timeout: float = 60.0,
) -> list[tuple[Registration | None, str | None, int | None, float]]: ...
def validate_resource_name(kind: str, name: str) -> None: ...
def validate_symmetric_key(which: str, key: str) -> None: ...
def generate_symmetric_key() -> str: ...
def write_secret(path: _StrPath, data: bytes) -> None: ...
def verify_chain(
    leaf: Certificate,
    intermediates: Sequence[Certificate] = (),
    anchors: Sequence[Certificate] = (),
    *,
    at: datetime | None = None,
) -> list[Certificate]: ...
def validate_registration_id(registration_id: str, *, x509: bool = True) -> None: ...
def credential_files(folder: _StrPath, name: str) -> dict[str, Path]:
    """The files a CA or device called ``name`` has in ``folder``, by the one rule every save
    writes them with: ``certificate``, ``private_key``, ``chain``, ``full_chain`` and
    ``pkcs12`` (``NAME.cert.pem`` ... ``NAME.pfx``). A name that would leave the folder or hide
    its files raises ``CertificateError``."""

def _raise_core_error(kind: str, message: str) -> None: ...
def _refresh_logging() -> None: ...
def _core_error_kinds() -> list[str]: ...

@final
class DoctorCheck:
    """One check of ``dpskit doctor``: its verdict (``problem``, ``warning``, ``ok``,
    ``skipped``), the evidence, the fix in one sentence and the cause a problem names."""

    @property
    def id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def verdict(self) -> str: ...
    @property
    def evidence(self) -> str: ...
    @property
    def fix(self) -> str | None: ...
    @property
    def cause(self) -> str | None: ...

@final
class TraceStep:
    """One step of the doctor's traced provisioning attempt."""

    @property
    def at_ms(self) -> float: ...
    @property
    def step(self) -> str: ...
    @property
    def detail(self) -> str: ...

@final
class DoctorAttempt:
    """How the doctor's traced provisioning attempt went."""

    @property
    def succeeded(self) -> bool: ...
    @property
    def status(self) -> int | None: ...
    @property
    def error_code(self) -> int | None: ...
    @property
    def message(self) -> str: ...
    @property
    def assigned_hub(self) -> str | None: ...
    @property
    def device_id(self) -> str | None: ...
    @property
    def trace(self) -> list[TraceStep]: ...
    @property
    def causes(self) -> list[str]: ...

@final
class DoctorReport:
    """The doctor's answer as the core gives it (``dpskit.DoctorReport`` wraps it)."""

    @property
    def registration_id(self) -> str | None: ...
    @property
    def checks(self) -> list[DoctorCheck]: ...
    @property
    def attempt(self) -> DoctorAttempt | None: ...
    @property
    def causes(self) -> list[str]: ...
    @property
    def healthy(self) -> bool: ...

@final
class ErrorExplanation:
    """What an error text means: the entry of the catalogue it matched (``known``), its
    code, status (a CONNACK's return code for ``mqtt``), service, the likely causes as
    sentences and the doctor's cause names among them."""

    @property
    def matched(self) -> str | None: ...
    @property
    def known(self) -> bool: ...
    @property
    def code(self) -> int | None: ...
    @property
    def status(self) -> int | None: ...
    @property
    def service(self) -> str | None: ...
    @property
    def title(self) -> str: ...
    @property
    def meaning(self) -> str: ...
    @property
    def causes(self) -> list[str]: ...
    @property
    def cause_names(self) -> list[str]: ...

def diagnose_device(
    *,
    certificate: DeviceCertificate | None = None,
    certificate_path: _StrPath | None = None,
    chain_path: _StrPath | None = None,
    key_path: _StrPath | None = None,
    key_password: bytes | None = None,
    pkcs12_path: _StrPath | None = None,
    pkcs12_password: str | None = None,
    registration_id: str | None = None,
    trust_bundle_pem: str | None = None,
    trust_bundle_path: _StrPath | None = None,
    rest: RestClient | None = None,
    dps_name: str | None = None,
    connect_host: str | None = None,
    connect_port: int = 8883,
    id_scope: str | None = None,
    cloud_trust_pem: str | None = None,
    local_server_pem: str | None = None,
    clock_offset_ms: int = 0,
    timeout: float = 30.0,
) -> DoctorReport: ...
def explain_error(text: str) -> ErrorExplanation: ...
def doctor_cause_names() -> list[str]: ...
