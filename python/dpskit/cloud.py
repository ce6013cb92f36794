"""The clouds: ``LocalCloud`` (DPS and IoT Hub emulated in-process) and ``AzureCloud`` (real
Azure), and the objects that manage their resources.

Both go through one REST client (Rust): ARM for hubs, DPS instances, links and CA certificates,
the DPS service API for enrollments and registrations, the hub service API for devices, twins,
methods and messages. ``LocalCloud`` starts the embedded emulator (real MQTT and HTTPS over
real TLS, state in SQLite) and points the client at it; only the emulator's realism knobs and
traces bypass REST.
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from dpskit._native import (
    CaCertificateRecord,
    Certificate,
    CertificateAuthority,
    DeviceCertificate,
    DpsRecord,
    Emulator,
    HubRecord,
    HubUsageRecord,
    LinkedHubRecord,
    RestClient,
    TelemetryRecord,
    TraceRecord,
    _refresh_logging,
    generate_symmetric_key,
    validate_registration_id,
    validate_resource_name,
    validate_symmetric_key,
    write_secret,
)
from dpskit.credentials import AZURE_CLOUDS, TokenCredential, azure_environment, token_provider
from dpskit.errors import ConfigError, EmulatorError, NotFoundError

__all__ = [
    "AzureCloud",
    "CaCertificateInfo",
    "CertificateSummary",
    "Dps",
    "Enrollment",
    "EnrollmentGroup",
    "Hub",
    "HubDevice",
    "HubUsage",
    "LinkedHub",
    "LocalCloud",
    "LocalCloudClient",
    "MethodResult",
    "RegistrationRecord",
    "ReprovisionPolicy",
    "TelemetryMessage",
    "TelemetryRecords",
    "TraceEvent",
]

AllocationPolicy = Literal["hashed", "static", "geoLatency", "custom"]
ProvisioningStatus = Literal["enabled", "disabled"]
#: How a hub authenticates a device, as its identity and twin say.
Authentication = Literal["sas", "selfSigned", "certificateAuthority", "none"]
_AUTHENTICATIONS: dict[str, Authentication] = {
    "sas": "sas",
    "selfsigned": "selfSigned",
    "certificateauthority": "certificateAuthority",
    "none": "none",
}
CertificateLike = Certificate | CertificateAuthority | DeviceCertificate | str | bytes
#: A custom allocation policy: a webhook URL, or a callable that receives Azure's
#: AllocationRequest (a dict) and returns an AllocationResponse dict (``iotHubHostName``, and
#: optionally ``initialTwin`` and ``payload``) or just the chosen hub's host name.
CustomAllocation = str | Callable[[dict[str, Any]], dict[str, Any] | str]

#: The official Python SDK always dials this port.
DEFAULT_MQTT_PORT = 8883
#: A running local cloud describes its endpoints in this file of its data folder.
ENDPOINTS_FILE = "endpoints.json"
#: The bearer token sent to the emulator when it requires none (it accepts any on loopback).
LOCAL_TOKEN = "dpskit-local"


#: macOS refuses a soft open-file limit above OPEN_MAX (10,240) even when the hard limit is
#: unlimited (setrlimit(2), "COMPATIBILITY"): the value tried when the first is refused.
_MACOS_OPEN_MAX = 10_240


def _raise_open_file_limit() -> None:
    """Lift the soft open-file limit to the hard one: every device connection is a file
    descriptor, and a soft limit of 1,024 (256 on macOS) would cap a local cloud or a fleet at
    about that many devices (servers such as nginx and mosquitto's packaging do the same at
    start). POSIX only: Windows has no such per-process limit on sockets."""
    if sys.platform == "win32":
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY:
        return
    for wanted in (target, min(target, _MACOS_OPEN_MAX)):
        if wanted <= soft:
            return
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            # A sandbox may refuse, or macOS above OPEN_MAX: the next value is tried, and
            # past the last the emulator or fleet holds fewer devices.
            continue
        return


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (one of this user's, on POSIX)."""
    if sys.platform == "win32":
        # Not os.kill(pid, 0): on Windows any signal but the two console events is
        # TerminateProcess, which would stop the very emulator being looked for.
        import ctypes

        kernel32 = ctypes.windll.kernel32
        process_query_limited_information, still_active = 0x1000, 259
        handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
        if not handle:
            return False
        try:
            code = ctypes.c_ulong()
            return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and (
                code.value == still_active
            )
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _unix(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _azure_time(text: str) -> datetime:
    """Parse Azure's ``2026-11-29T07:22:03.1234567Z`` (7 fractional digits, ``Z``)."""
    head, _, fraction = text.rstrip("Z").partition(".")
    micros = int((fraction + "000000")[:6]) if fraction else 0
    return datetime.fromisoformat(head).replace(microsecond=micros, tzinfo=timezone.utc)


def _certificate(value: CertificateLike) -> Certificate:
    """Accept a Certificate, a CA or device credential (its certificate), or PEM/DER data."""
    if isinstance(value, Certificate):
        return value
    if isinstance(value, CertificateAuthority | DeviceCertificate):
        return value.certificate
    if isinstance(value, str):
        return Certificate.from_pem(value)
    if isinstance(value, bytes):
        if b"-----BEGIN" in value:
            return Certificate.from_pem(value)
        return Certificate.from_der(value)
    raise TypeError(f"expected a certificate, PEM text or DER bytes, not {type(value).__name__}")


def _check_resource_name(kind: str, name: str) -> str:
    """Refuse a name the service would refuse, before any request (ConfigError)."""
    validate_resource_name(kind, name)
    return name


def _check_key(which: str, key: str | None) -> str | None:
    """A symmetric key must be base64 of at least 16 bytes (Azure's rule)."""
    if key is not None:
        validate_symmetric_key(which, key)
    return key


def _hub_host(hub: Hub | str) -> str:
    return hub.host_name if isinstance(hub, Hub) else hub


def _http_time(text: str) -> datetime:
    """Parse ARM's RFC 1123 dates (``Sat, 31 Dec 2039 23:59:59 GMT``)."""
    return email.utils.parsedate_to_datetime(text).astimezone(timezone.utc)


def _certificate_from_text(text: str) -> Certificate:
    """A certificate as a service returns it: PEM text, base64 of DER, or base64 of PEM."""
    text = text.strip()
    if "-----BEGIN" in text:
        return Certificate.from_pem(text)
    data = base64.b64decode("".join(text.split()))
    return (
        Certificate.from_pem(data) if data.startswith(b"-----BEGIN") else Certificate.from_der(data)
    )


@dataclass(frozen=True)
class CaCertificateInfo:
    """A CA certificate uploaded to a DPS instance (ARM's ``CertificateResponse``)."""

    name: str
    certificate: Certificate
    is_verified: bool
    etag: str
    created: datetime
    updated: datetime
    verification_code: str | None = None

    @property
    def subject(self) -> str:
        """The certificate's subject."""
        return self.certificate.subject

    @property
    def thumbprint(self) -> str:
        """SHA-1 thumbprint, upper-case hex (as the Azure portal shows it)."""
        return self.certificate.thumbprint_sha1

    @property
    def expiry(self) -> datetime:
        """End of the certificate's validity."""
        return self.certificate.not_after

    @classmethod
    def _from_native(cls, record: CaCertificateRecord) -> CaCertificateInfo:
        if record.certificate is None:
            raise EmulatorError(f"ARM returned certificate {record.name!r} without its body")
        return cls(
            name=record.name,
            certificate=_certificate_from_text(record.certificate),
            is_verified=record.is_verified,
            etag=record.etag,
            created=_http_time(record.created),
            updated=_http_time(record.updated),
            verification_code=record.verification_code,
        )


@dataclass(frozen=True)
class LinkedHub:
    """A hub linked to a DPS instance."""

    hub: str
    host_name: str
    allocation_weight: int
    apply_allocation_policy: bool
    location: str

    @classmethod
    def _from_native(cls, link: LinkedHubRecord, hub: str) -> LinkedHub:
        weight = link.allocation_weight
        return cls(
            hub=hub,
            host_name=link.host_name,
            allocation_weight=weight if weight is not None else 1,
            apply_allocation_policy=link.apply_allocation_policy,
            location=link.location,
        )


@dataclass(frozen=True)
class CertificateSummary:
    """What the DPS service API says about a certificate in an enrollment: it never returns
    the certificate itself, only this."""

    subject: str
    issuer: str
    thumbprint: str
    thumbprint_sha256: str
    serial_number: str
    not_before: datetime
    not_after: datetime

    @classmethod
    def _from_info(cls, info: dict[str, Any]) -> CertificateSummary:
        return cls(
            subject=info.get("subjectName", ""),
            issuer=info.get("issuerName", ""),
            thumbprint=info.get("sha1Thumbprint", ""),
            thumbprint_sha256=info.get("sha256Thumbprint", ""),
            serial_number=info.get("serialNumber", ""),
            not_before=_azure_time(info["notBeforeUtc"]),
            not_after=_azure_time(info["notAfterUtc"]),
        )

    def matches(self, certificate: CertificateLike) -> bool:
        """Whether this summarises ``certificate`` (by SHA-1 thumbprint)."""
        return self.thumbprint.upper() == _certificate(certificate).thumbprint_sha1.upper()


@dataclass(frozen=True)
class HubUsage:
    """A hub's tier and size, today's message meter and the refusals its throttles produced
    (:meth:`Hub.usage`). Messages are metered as Azure meters them: a message counts once per
    ``meter_block_bytes`` block (4 KB on paid tiers, 0.5 KB on F1) against ``daily_quota``."""

    sku: str
    units: int
    #: Whether the hub enforces its tier's throttles and daily quota (``create_hub(sku=...)``;
    #: always on Azure).
    presets: bool
    daily_quota: int
    messages_used: int
    #: The block a message is metered in (None for a tier dpskit does not know).
    meter_block_bytes: int | None
    #: When the meter starts again at zero: the next 00:00 UTC.
    resets_at: datetime
    #: Operations refused with 429001 (``ThrottlingException``) by operation:
    #: ``connections`` (CONNACK refused), ``d2c_sends`` (the connection closed past traffic
    #: shaping), ``twin_reads``, ``twin_updates``, ``direct_methods``, ``c2d_sends``,
    #: ``registry_operations`` and ``queries``. None on Azure, which reports them as Azure
    #: Monitor metrics, not through ARM.
    throttled: dict[str, int] | None
    #: Messages refused (403002 IotHubQuotaExceeded) once the daily quota was spent (None on
    #: Azure, as ``throttled``).
    quota_refusals: int | None

    @property
    def messages_left(self) -> int:
        """Messages (in meter blocks) the hub still takes today."""
        return max(0, self.daily_quota - self.messages_used)

    @classmethod
    def _from_native(cls, record: HubUsageRecord) -> HubUsage:
        return cls(
            sku=record.sku,
            units=record.units,
            presets=record.presets,
            daily_quota=record.daily_quota,
            messages_used=record.messages_used,
            meter_block_bytes=record.meter_block_bytes,
            resets_at=datetime.fromtimestamp(record.resets_at, tz=timezone.utc),
            throttled=None if record.throttled is None else dict(record.throttled),
            quota_refusals=record.quota_refusals,
        )


@dataclass(frozen=True)
class ReprovisionPolicy:
    """What DPS does when a registered device registers again."""

    update_hub_assignment: bool = True
    migrate_device_data: bool = True

    def _to_json(self) -> dict[str, bool]:
        return {
            "updateHubAssignment": self.update_hub_assignment,
            "migrateDeviceData": self.migrate_device_data,
        }


@dataclass(frozen=True)
class _Settings:
    provisioning_status: ProvisioningStatus = "enabled"
    allocation_policy: AllocationPolicy | None = None
    iot_hubs: tuple[str, ...] = ()
    reprovision_policy: ReprovisionPolicy = field(default_factory=ReprovisionPolicy)
    initial_twin: dict[str, Any] | None = None
    custom_allocation_url: str | None = None

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> _Settings:
        policy = data.get("reprovisionPolicy") or {}
        custom = data.get("customAllocationDefinition") or {}
        return cls(
            provisioning_status=data.get("provisioningStatus") or "enabled",
            allocation_policy=data.get("allocationPolicy"),
            iot_hubs=tuple(data.get("iotHubs") or ()),
            reprovision_policy=ReprovisionPolicy(
                update_hub_assignment=policy.get("updateHubAssignment", True),
                migrate_device_data=policy.get("migrateDeviceData", True),
            ),
            initial_twin=data.get("initialTwin"),
            custom_allocation_url=custom.get("webhookUrl"),
        )

    def _to_json(self) -> dict[str, Any]:
        """The fields as the DPS service API takes them. Unset fields are left out rather than
        sent as ``null``, as the Azure CLI and the official SDKs serialise them."""
        body: dict[str, Any] = {
            "provisioningStatus": self.provisioning_status,
            "reprovisionPolicy": self.reprovision_policy._to_json(),
        }
        if self.allocation_policy is not None:
            body["allocationPolicy"] = self.allocation_policy
        if self.iot_hubs:
            body["iotHubs"] = list(self.iot_hubs)
        if self.initial_twin is not None:
            body["initialTwin"] = self.initial_twin
        if self.custom_allocation_url is not None:
            body["customAllocationDefinition"] = {
                "webhookUrl": self.custom_allocation_url,
                "apiVersion": "2021-10-01",
            }
        return body


@dataclass(frozen=True)
class _Attestation:
    type: Literal["x509", "symmetricKey"]
    ca_references: tuple[str, ...] = ()
    certificates: tuple[CertificateSummary, ...] = ()
    primary_key: str | None = field(default=None, repr=False)
    secondary_key: str | None = field(default=None, repr=False)

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> _Attestation:
        if data["type"] == "x509":
            x509 = data.get("x509") or {}
            references = x509.get("caReferences") or {}
            certificates = x509.get("signingCertificates") or x509.get("clientCertificates") or {}
            summaries: list[CertificateSummary] = []
            for slot in ("primary", "secondary"):
                info = (certificates.get(slot) or {}).get("info")
                if info is None:
                    continue
                summary = CertificateSummary._from_info(info)
                # Azure repeats the primary as the secondary when only one was given.
                if all(s.thumbprint != summary.thumbprint for s in summaries):
                    summaries.append(summary)
            return cls(
                type="x509",
                ca_references=tuple(
                    r for r in (references.get("primary"), references.get("secondary")) if r
                ),
                certificates=tuple(summaries),
            )
        keys = data.get("symmetricKey") or {}
        return cls(
            type="symmetricKey",
            primary_key=keys.get("primaryKey"),
            secondary_key=keys.get("secondaryKey"),
        )


def _generated_key() -> str:
    return generate_symmetric_key()


def _attestation_json(
    *,
    ca_reference: str | None,
    certificate: CertificateLike | None,
    symmetric_key: bool,
    primary_key: str | None,
    secondary_key: str | None,
    group: bool,
) -> dict[str, Any]:
    """An attestation as the DPS service API takes it."""
    chosen = [ca_reference is not None, certificate is not None, symmetric_key]
    if sum(chosen) != 1:
        raise ConfigError(
            "choose exactly one attestation: a CA reference, a certificate, or symmetric_key=True"
        )
    if symmetric_key:
        return {
            "type": "symmetricKey",
            "symmetricKey": {
                "primaryKey": _check_key("primary_key", primary_key) or _generated_key(),
                "secondaryKey": _check_key("secondary_key", secondary_key) or _generated_key(),
            },
        }
    if ca_reference is not None:
        return {"type": "x509", "x509": {"caReferences": {"primary": ca_reference}}}
    assert certificate is not None
    field_name = "signingCertificates" if group else "clientCertificates"
    pem = _certificate(certificate).pem
    return {"type": "x509", "x509": {field_name: {"primary": {"certificate": pem}}}}


@dataclass(frozen=True, kw_only=True)
class _EnrollmentCommon:
    """What enrollment groups and individual enrollments share."""

    attestation_type: Literal["x509", "symmetricKey"]
    primary_key: str | None = field(repr=False)
    secondary_key: str | None = field(repr=False)
    provisioning_status: ProvisioningStatus
    allocation_policy: AllocationPolicy | None
    iot_hubs: tuple[str, ...]
    reprovision_policy: ReprovisionPolicy
    initial_twin: dict[str, Any] | None
    custom_allocation_url: str | None
    etag: str
    created: datetime
    updated: datetime

    @staticmethod
    def _common(data: dict[str, Any], attestation: _Attestation) -> dict[str, Any]:
        """The shared fields, from the service JSON of either kind."""
        settings = _Settings._from_json(data)
        return {
            "attestation_type": attestation.type,
            "primary_key": attestation.primary_key,
            "secondary_key": attestation.secondary_key,
            "provisioning_status": settings.provisioning_status,
            "allocation_policy": settings.allocation_policy,
            "iot_hubs": settings.iot_hubs,
            "reprovision_policy": settings.reprovision_policy,
            "initial_twin": settings.initial_twin,
            "custom_allocation_url": settings.custom_allocation_url,
            "etag": data["etag"],
            "created": _azure_time(data["createdDateTimeUtc"]),
            "updated": _azure_time(data["lastUpdatedDateTimeUtc"]),
        }

    def _settings(self) -> _Settings:
        return _Settings(
            provisioning_status=self.provisioning_status,
            allocation_policy=self.allocation_policy,
            iot_hubs=self.iot_hubs,
            reprovision_policy=self.reprovision_policy,
            initial_twin=self.initial_twin,
            custom_allocation_url=self.custom_allocation_url,
        )


@dataclass(frozen=True, kw_only=True)
class EnrollmentGroup(_EnrollmentCommon):
    """An enrollment group: every device whose chain reaches its CA (or whose key derives from
    its group key) may register."""

    enrollment_group_id: str
    ca_references: tuple[str, ...]
    signing_certificates: tuple[CertificateSummary, ...]

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> EnrollmentGroup:
        attestation = _Attestation._from_json(data["attestation"])
        return cls(
            enrollment_group_id=data["enrollmentGroupId"],
            ca_references=attestation.ca_references,
            signing_certificates=attestation.certificates,
            **cls._common(data, attestation),
        )


@dataclass(frozen=True, kw_only=True)
class Enrollment(_EnrollmentCommon):
    """An individual enrollment: one device, by its certificate or its own symmetric key."""

    registration_id: str
    device_id: str | None
    certificates: tuple[CertificateSummary, ...]

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> Enrollment:
        attestation = _Attestation._from_json(data["attestation"])
        return cls(
            registration_id=data["registrationId"],
            device_id=data.get("deviceId"),
            certificates=attestation.certificates,
            **cls._common(data, attestation),
        )


@dataclass(frozen=True)
class RegistrationRecord:
    """What DPS remembers about a device's registration (``DeviceRegistrationState``), with the
    enrollment it came through."""

    registration_id: str
    status: str
    assigned_hub: str | None
    device_id: str | None
    substatus: str | None
    enrollment_group_id: str | None
    attestation: Literal["x509", "symmetricKey"]
    error_code: int | None
    error_message: str | None
    created: datetime
    last_updated: datetime
    etag: str
    payload: Any = None

    @classmethod
    def _from_json(
        cls,
        data: dict[str, Any],
        *,
        enrollment_group_id: str | None,
        attestation: Literal["x509", "symmetricKey"],
    ) -> RegistrationRecord:
        return cls(
            registration_id=data["registrationId"],
            status=data["status"],
            assigned_hub=data.get("assignedHub"),
            device_id=data.get("deviceId"),
            substatus=data.get("substatus"),
            enrollment_group_id=enrollment_group_id,
            attestation=attestation,
            error_code=data.get("errorCode"),
            error_message=data.get("errorMessage"),
            created=_azure_time(data["createdDateTimeUtc"]),
            last_updated=_azure_time(data["lastUpdatedDateTimeUtc"]),
            etag=data["etag"],
            payload=data.get("payload"),
        )


@dataclass(frozen=True)
class HubDevice:
    """A device identity in a hub (created by DPS, or directly). The keys are ``None`` for an
    X.509 device, and in the records :meth:`Hub.devices` lists."""

    device_id: str
    hub: str
    authentication: Authentication
    thumbprint: str | None
    primary_key: str | None = field(repr=False)
    secondary_key: str | None = field(repr=False)
    connection_state: str

    @classmethod
    def _from_json(cls, hub: str, data: dict[str, Any]) -> HubDevice:
        auth = data.get("authentication") or {}
        keys = auth.get("symmetricKey") or {}
        thumbprints = auth.get("x509Thumbprint") or {}
        return cls(
            device_id=data["deviceId"],
            hub=hub,
            authentication=_AUTHENTICATIONS.get(str(auth.get("type", "sas")).lower(), "sas"),
            thumbprint=thumbprints.get("primaryThumbprint"),
            primary_key=keys.get("primaryKey"),
            secondary_key=keys.get("secondaryKey"),
            connection_state=data.get("connectionState", "Disconnected"),
        )


@dataclass(frozen=True)
class TraceEvent:
    """One step of a device's exchange with the local cloud."""

    at: datetime
    direction: str
    kind: str
    topic: str | None
    status: int | None
    detail: str

    @classmethod
    def _from_native(cls, record: TraceRecord) -> TraceEvent:
        return cls(
            at=datetime.fromtimestamp(record.at, tz=timezone.utc),
            direction=record.direction,
            kind=record.kind,
            topic=record.topic,
            status=record.status,
            detail=record.detail,
        )

    def __str__(self) -> str:
        arrow = {"device->cloud": "device → cloud", "cloud->device": "cloud → device"}
        parts = [
            f"{self.at:%H:%M:%S.%f}"[:-3],
            arrow.get(self.direction, self.direction),
            self.kind,
        ]
        if self.status is not None:
            parts.append(str(self.status))
        if self.topic:
            parts.append(self.topic)
        line = "  ".join(parts)
        return f"{line}\n        {self.detail}" if self.detail else line


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTPS request the local cloud served (ARM, the DPS or the hub service API), as
    ``LocalCloud.record_requests`` recorded it after authenticating it. Secrets are never kept:
    no ``Authorization`` header (only ``headers``' short allowlist), and keys, connection string
    keys and ``sig``/``code`` values replaced by ``"<redacted>"``."""

    sequence: int
    at: datetime
    api: Literal["arm", "dps", "hub"]
    method: str
    path: str
    """As sent: percent-encoding kept, no query."""
    query: dict[str, str]
    """Percent-decoded query parameters (``api-version`` among them)."""
    headers: dict[str, str]
    """``accept``, ``content-type``, ``if-match``, ``if-none-match``, ``x-ms-continuation``,
    ``x-ms-max-item-count`` when sent (names lower case)."""
    body: Any
    """The JSON body parsed, a body that is not JSON as text, or ``None`` (no body, or one
    longer than 64 KiB: see ``body_kind``)."""
    body_kind: Literal["empty", "json", "text", "omitted"]
    body_size: int
    status: int
    """What the local cloud answered."""

    @property
    def api_version(self) -> str | None:
        """The ``api-version`` query parameter."""
        return next((v for k, v in self.query.items() if k.lower() == "api-version"), None)

    def header(self, name: str) -> str | None:
        """A recorded header, by case-insensitive name."""
        return self.headers.get(name.lower())

    def __str__(self) -> str:
        return f"{self.method} {self.path}?{'&'.join(f'{k}={v}' for k, v in self.query.items())}"

    @classmethod
    def _from_native(cls, record: tuple[Any, ...]) -> RecordedRequest:
        (sequence, at, api, method, path, query, headers, body_kind, body, size, status) = record
        return cls(
            sequence=sequence,
            at=datetime.fromtimestamp(at, tz=timezone.utc),
            api=api,
            method=method,
            path=path,
            query=dict(query),
            headers=dict(headers),
            body=body,
            body_kind=body_kind,
            body_size=size,
            status=status,
        )


class RequestRecording:
    """The HTTPS requests served while recording (``with cloud.record_requests() as r:``):
    every ARM, DPS service and hub service request the local cloud authenticated, from dpskit,
    the official SDKs or anything else. Read ``requests`` inside the block (live) or after it
    (what the block saw). The local cloud keeps the last 1,000 requests of all recordings;
    ``dropped`` counts this recording's requests lost to that bound."""

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator
        self._start: int | None = None
        self._result: tuple[list[RecordedRequest], int] | None = None

    def __enter__(self) -> RequestRecording:
        if self._start is not None:
            raise ConfigError("a request recording cannot be started twice")
        self._start = self._emulator.start_recording()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._result is None and self._start is not None:
            try:
                self._result = self._read()
            finally:
                self._emulator.stop_recording()

    def _read(self) -> tuple[list[RecordedRequest], int]:
        if self._start is None:
            return [], 0
        requests, dropped = self._emulator.recorded_requests(self._start)
        return [RecordedRequest._from_native(r) for r in requests], dropped

    @property
    def requests(self) -> list[RecordedRequest]:
        """The recorded requests, oldest first."""
        return list(self._result[0]) if self._result is not None else self._read()[0]

    @property
    def dropped(self) -> int:
        """How many of this recording's requests were dropped to keep the bound."""
        return self._result[1] if self._result is not None else self._read()[1]

    def __repr__(self) -> str:
        state = "done" if self._result is not None else "recording"
        return f"<RequestRecording {state} requests={len(self.requests)}>"


@dataclass(frozen=True)
class TelemetryMessage:
    """A device-to-cloud message as the hub received it."""

    sequence: int
    device_id: str
    enqueued_time: datetime
    body: bytes
    properties: dict[str, str]
    system_properties: dict[str, str]

    @property
    def message_id(self) -> str | None:
        """``$.mid``, when the device set it."""
        return self.system_properties.get("mid")

    @property
    def content_type(self) -> str | None:
        """``$.ct``, when the device set it."""
        return self.system_properties.get("ct")

    @property
    def content_encoding(self) -> str | None:
        """``$.ce``, when the device set it."""
        return self.system_properties.get("ce")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @classmethod
    def _from_native(cls, record: TelemetryRecord) -> TelemetryMessage:
        return cls(
            sequence=record.sequence,
            device_id=record.device_id,
            enqueued_time=datetime.fromtimestamp(record.enqueued_time, tz=timezone.utc),
            body=record.body,
            properties=dict(record.properties),
            system_properties=dict(record.system_properties),
        )


class TelemetryRecords(list[TelemetryMessage]):
    """Telemetry in arrival order; ``to_pandas()`` gives a DataFrame (pandas needed)."""

    def to_pandas(self) -> Any:
        """One row per message: device_id, enqueued_time, body (decoded as JSON when it is),
        message_id, content_type, content_encoding, and one column per application property."""
        # pandas is optional: imported only here, untyped on purpose.
        pd = importlib.import_module("pandas")
        rows = []
        for m in self:
            try:
                body: Any = m.json()
            except ValueError:
                body = m.body
            rows.append(
                {
                    "sequence": m.sequence,
                    "device_id": m.device_id,
                    "enqueued_time": m.enqueued_time,
                    "body": body,
                    "message_id": m.message_id,
                    "content_type": m.content_type,
                    "content_encoding": m.content_encoding,
                    **{f"property.{k}": v for k, v in m.properties.items()},
                }
            )
        return pd.DataFrame(rows)


@dataclass(frozen=True)
class MethodResult:
    """A direct method's answer."""

    status: int
    payload: Any


class Hub:
    """An IoT Hub instance: its identity and keys from ARM, its service API for devices,
    twins, methods and messages."""

    def __init__(self, cloud: _Cloud, resource: HubRecord, key: str) -> None:
        self._cloud = cloud
        self.name: str = resource.name
        self.host_name: str = resource.host_name
        self.location: str = resource.location
        #: ARM ``sku.name``: the tier (``S1`` unless the hub was created with another).
        self.sku: str = resource.sku or "S1"
        #: ARM ``sku.capacity``: the hub's units.
        self.units: int = resource.units or 1
        self._primary_key = key

    @property
    def connection_string(self) -> str:
        """The ``iothubowner`` service connection string."""
        return (
            f"HostName={self.host_name};SharedAccessKeyName=iothubowner;"
            f"SharedAccessKey={self._primary_key}"
        )

    @property
    def _service(self) -> tuple[str, str | None]:
        return self.connection_string, self._cloud._hub_service_endpoint()

    def devices(self) -> list[HubDevice]:
        """The device identities of this hub, in device-id order: one query call per 100
        devices (IoT Hub's query API, as Azure recommends), not a read per device. The list
        carries no keys (``primary_key`` and ``secondary_key`` are ``None``), as the query
        does not; :meth:`device` reads one identity with its keys."""
        return [
            HubDevice(
                device_id=device_id,
                hub=self.host_name,
                authentication=_AUTHENTICATIONS.get(authentication.lower(), "sas"),
                thumbprint=thumbprint,
                primary_key=None,
                secondary_key=None,
                connection_state=state,
            )
            for device_id, authentication, thumbprint, state in self._cloud._rest.hub_device_list(
                *self._service
            )
        ]

    def device(self, device_id: str) -> HubDevice:
        """One device identity."""
        identity = self._cloud._rest.hub_device(*self._service, device_id)
        return HubDevice._from_json(self.host_name, identity)

    def create_device(
        self,
        device_id: str,
        *,
        certificate: CertificateLike | None = None,
        symmetric_key: bool = False,
        primary_key: str | None = None,
        secondary_key: str | None = None,
        initial_twin: dict[str, Any] | None = None,
    ) -> HubDevice:
        """Create a device identity directly (without DPS): X.509 by the certificate's
        thumbprint, or symmetric keys (generated unless given). ``initial_twin`` (tags and
        desired properties) is applied right after."""
        if (certificate is None) == (not symmetric_key):
            raise ConfigError("give either a certificate or symmetric_key=True")
        validate_registration_id(device_id, x509=False)
        if certificate is not None:
            cert = _certificate(certificate)
            auth: dict[str, Any] = {
                "type": "selfSigned",
                "x509Thumbprint": {"primaryThumbprint": cert.thumbprint_sha1},
            }
        else:
            auth = {
                "type": "sas",
                "symmetricKey": {
                    "primaryKey": primary_key or _generated_key(),
                    "secondaryKey": secondary_key or _generated_key(),
                },
            }
        # Status and capabilities explicit, as the official SDK and the CLI send them.
        body = {
            "deviceId": device_id,
            "status": "enabled",
            "authentication": auth,
            "capabilities": {"iotEdge": False},
        }
        identity = self._cloud._rest.hub_put_device(*self._service, device_id, body)
        if initial_twin:
            patch = {
                "tags": initial_twin.get("tags"),
                "properties": {"desired": (initial_twin.get("properties") or {}).get("desired")},
            }
            self._cloud._rest.hub_patch_twin(*self._service, device_id, patch)
        return HubDevice._from_json(self.host_name, identity)

    def delete_device(self, device_id: str) -> None:
        """Delete a device identity (its twin and waiting messages go with it)."""
        self._cloud._rest.hub_delete_device(*self._service, device_id)

    # -- realism knobs (emulator only) -------------------------------------------------------

    def set_latency(self, seconds: float) -> None:
        """Delay before the hub handles each device message (emulator only)."""
        self._cloud._emulator_only("set_latency").update_hub_knobs(self.host_name, latency=seconds)

    def set_throttle(
        self,
        *,
        connections_per_second: int | None = None,
        messages_per_second: int | None = None,
    ) -> None:
        """Azure-like throttles (``None`` leaves a limit as it is, 0 removes it): new
        connections beyond the rate are refused; messages beyond it are delayed for up to a
        second (traffic shaping), then the device is disconnected (429001). Emulator only."""
        for value in (connections_per_second, messages_per_second):
            if value is not None and value < 0:
                raise ConfigError("rates must be 0 (no limit) or more")
        self._cloud._emulator_only("set_throttle").update_hub_knobs(
            self.host_name,
            connections_per_second=connections_per_second,
            messages_per_second=messages_per_second,
        )

    def usage(self) -> HubUsage:
        """The hub's tier, today's message meter (reset at 00:00 UTC) and, on the local cloud,
        the refusals its throttles produced. On Azure the meter is the hub's ``TotalMessages``
        quota metric (ARM ``quotaMetrics``, what the portal shows as the daily message limit)
        and the refusals are None (Azure Monitor has them)."""
        if isinstance(self._cloud, LocalCloud):
            record = self._cloud._emulator.hub_usage(self.host_name)
        else:
            record = self._cloud._rest.hub_usage(self.name)
        return HubUsage._from_native(record)

    def refuse_connections(self, count: int) -> None:
        """Refuse the next ``count`` device connections (fault injection, emulator only)."""
        if count < 0:
            raise ConfigError(f"count must be 0 or more, not {count}")
        self._cloud._emulator_only("refuse_connections").update_hub_knobs(
            self.host_name, refuse_next_connections=count
        )

    def drop_connection(self, device_id: str) -> bool:
        """Drop a device's connection now (fault injection, emulator only); ``False`` if it was
        offline."""
        return self._cloud._emulator_only("drop_connection").hub_drop_connection(
            self.host_name, device_id
        )

    def telemetry(self, device_id: str | None = None) -> TelemetryRecords:
        """What the hub received (every device, or one), in arrival order. The emulator keeps
        it; on Azure telemetry goes to the hub's Event Hubs endpoint, which this does not read."""
        self._cloud._emulator_api("telemetry")
        records = self._cloud._rest.hub_telemetry(*self._service, device_id)
        return TelemetryRecords(TelemetryMessage._from_native(r) for r in records)

    def get_twin(self, device_id: str) -> dict[str, Any]:
        """The device twin: tags, desired and reported properties with their versions."""
        twin: dict[str, Any] = self._cloud._rest.hub_twin(*self._service, device_id)
        return twin

    def update_desired(self, device_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Patch desired properties (``None`` deletes); a connected device subscribed to desired
        patches receives the change."""
        body = {"properties": {"desired": patch}}
        twin: dict[str, Any] = self._cloud._rest.hub_patch_twin(*self._service, device_id, body)
        return twin

    def update_tags(self, device_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Patch the twin's tags."""
        body = {"tags": patch}
        twin: dict[str, Any] = self._cloud._rest.hub_patch_twin(*self._service, device_id, body)
        return twin

    def send_c2d(
        self,
        device_id: str,
        body: bytes | str | dict[str, Any] | list[Any],
        *,
        properties: dict[str, str] | None = None,
    ) -> str:
        """Queue a cloud-to-device message (at most 50 wait per device); returns its id.
        Emulator only: Azure takes these over AMQP."""
        self._cloud._emulator_api("send_c2d")
        if isinstance(body, dict | list):
            data = json.dumps(body).encode()
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
        pairs = [(str(k), str(v)) for k, v in (properties or {}).items()]
        return self._cloud._rest.hub_send_c2d(*self._service, device_id, data, pairs)

    def invoke_method(
        self, device_id: str, method: str, payload: Any = None, *, timeout: float = 30.0
    ) -> MethodResult:
        """Call a direct method on a connected device and wait for its answer; an offline device
        raises ``NotFoundError`` (404103), no answer in time ``ServiceError`` (504101).
        ``timeout`` may not pass IoT Hub's 300 s (``ConfigError`` before any request)."""
        status, answer = self._cloud._rest.hub_invoke_method(
            *self._service, device_id, method, payload, timeout
        )
        return MethodResult(status=status, payload=answer)

    def __repr__(self) -> str:
        return f"<Hub {self.name!r} host_name={self.host_name!r} location={self.location!r}>"


class Dps:
    """A Device Provisioning Service instance: ARM for its certificates and linked hubs, its
    service API for enrollments and registrations."""

    def __init__(self, cloud: _Cloud, resource: DpsRecord, key: str) -> None:
        self._cloud = cloud
        self.name: str = resource.name
        self.id_scope: str = resource.id_scope
        self.location: str = resource.location
        self.service_host: str = resource.service_operations_host_name
        self._device_host: str = resource.device_provisioning_host_name
        self._primary_key = key

    @property
    def _rest(self) -> RestClient:
        return self._cloud._rest

    @property
    def _service(self) -> tuple[str, str]:
        return self.service_connection_string, f"https://{self.service_host}"

    # -- endpoints ------------------------------------------------------------------------

    @property
    def device_host(self) -> str:
        """The host devices dial for provisioning."""
        return self._device_host

    @property
    def device_port(self) -> int:
        """The MQTT port devices dial."""
        return self._cloud._device_port()

    @property
    def device_endpoint(self) -> str:
        """``host`` (or ``host:port`` when the port is not 8883): pass it to ``provision`` or,
        with the default port, as the official SDK's ``provisioning_host``."""
        if self.device_port == DEFAULT_MQTT_PORT:
            return self.device_host
        return f"{self.device_host}:{self.device_port}"

    @property
    def service_connection_string(self) -> str:
        """The ``provisioningserviceowner`` connection string of the service API, as the official
        ``azure-iot-deviceprovisioning`` client and dpskit's own take it."""
        return (
            f"HostName={self.service_host};SharedAccessKeyName=provisioningserviceowner;"
            f"SharedAccessKey={self._primary_key}"
        )

    def linked_hubs(self) -> list[LinkedHub]:
        """The hubs linked to this DPS."""
        resource = self._rest.dps(self.name)
        # The hub resources alone (no keys): only their names are needed here.
        names = {h.host_name.lower(): h.name for h in self._rest.hubs()}
        return [
            LinkedHub._from_native(link, names.get(link.host_name.lower(), link.host_name))
            for link in resource.linked_hubs
        ]

    # -- CA certificates and proof of possession --------------------------------------------

    def upload_ca_certificate(
        self, name: str, certificate: CertificateLike, *, verified: bool = False
    ) -> CaCertificateInfo:
        """Upload (or replace) a CA certificate; ``verified=True`` skips proof of possession."""
        cert = _certificate(certificate)
        current = self._find_ca(name)
        record = self._rest.upload_ca_certificate(
            self.name, name, cert.pem, verified, current.etag if current else None
        )
        return CaCertificateInfo._from_native(record)

    def ca_certificate(self, name: str) -> CaCertificateInfo:
        """An uploaded CA certificate."""
        return CaCertificateInfo._from_native(self._rest.ca_certificate(self.name, name))

    def ca_certificates(self) -> list[CaCertificateInfo]:
        """Every uploaded CA certificate."""
        return [CaCertificateInfo._from_native(c) for c in self._rest.ca_certificates(self.name)]

    def _find_ca(self, name: str) -> CaCertificateInfo | None:
        return next((c for c in self.ca_certificates() if c.name == name), None)

    def delete_ca_certificate(self, name: str) -> None:
        """Delete an uploaded CA certificate."""
        self._rest.delete_ca_certificate(self.name, name, self.ca_certificate(name).etag)

    def generate_verification_code(self, name: str) -> str:
        """A new one-time verification code for an uploaded CA certificate."""
        etag = self.ca_certificate(name).etag
        record = self._rest.generate_verification_code(self.name, name, etag)
        if record.verification_code is None:
            raise EmulatorError(f"ARM gave no verification code for certificate {name!r}")
        return record.verification_code

    def verify_certificate(self, name: str, verification: CertificateLike) -> CaCertificateInfo:
        """Prove possession: upload the verification certificate (CN = the code, signed by the
        CA's key)."""
        cert = _certificate(verification)
        etag = self.ca_certificate(name).etag
        record = self._rest.verify_certificate(self.name, name, etag, cert.pem)
        return CaCertificateInfo._from_native(record)

    def prove_possession(self, name: str, authority: CertificateAuthority) -> CaCertificateInfo:
        """Upload ``authority``'s certificate if needed, then run the whole proof of possession:
        code → verification certificate signed by that CA (root or intermediate) → verify.
        A name that already holds a different certificate is refused as Azure refuses a
        replacement without its etag (``ConflictError``, 412); :meth:`upload_ca_certificate`
        replaces it."""
        record = self._rest.prove_possession(self.name, name, authority)
        return CaCertificateInfo._from_native(record)

    # -- enrollment groups -----------------------------------------------------------------

    def _new_settings(
        self,
        key: str,
        *,
        provisioning_status: ProvisioningStatus,
        allocation_policy: AllocationPolicy | None,
        hubs: Sequence[Hub | str] | None,
        reprovision_policy: ReprovisionPolicy | None,
        initial_twin: dict[str, Any] | None,
        custom_allocation: CustomAllocation | None,
    ) -> _Settings:
        """Settings of a new group or individual enrollment (``key`` names its allocator)."""
        custom_url = self._custom_allocation_url(key, custom_allocation)
        return _Settings(
            provisioning_status=provisioning_status,
            # A custom allocation target implies the custom policy.
            allocation_policy="custom" if custom_url is not None else allocation_policy,
            iot_hubs=tuple(_hub_host(h) for h in hubs or ()),
            reprovision_policy=reprovision_policy or ReprovisionPolicy(),
            initial_twin=initial_twin,
            custom_allocation_url=custom_url,
        )

    def _custom_allocation_url(self, key: str, custom: CustomAllocation | None) -> str | None:
        """A webhook URL as given; a callable is registered in the emulator as ``python:...``
        (it lives as long as this process: re-register it after a restart)."""
        if custom is None or isinstance(custom, str):
            return custom
        emulator = self._cloud._emulator_only("a callable custom allocation (use a webhook URL)")
        function = custom

        def allocate(request: dict[str, Any]) -> dict[str, Any]:
            answer = function(request)
            return {"iotHubHostName": answer} if isinstance(answer, str) else answer

        name = f"{self.name}/{key}"
        emulator.register_allocator(name, allocate)
        return f"python:{name}"

    def _put_group(self, group_id: str, body: dict[str, Any], etag: str | None) -> EnrollmentGroup:
        record = self._rest.put_enrollment_group(
            *self._service, group_id, {"enrollmentGroupId": group_id, **body}, etag
        )
        return EnrollmentGroup._from_json(record)

    def create_enrollment_group(
        self,
        enrollment_group_id: str,
        *,
        ca_reference: str | None = None,
        signing_certificate: CertificateLike | None = None,
        symmetric_key: bool = False,
        primary_key: str | None = None,
        secondary_key: str | None = None,
        allocation_policy: AllocationPolicy | None = None,
        hubs: Sequence[Hub | str] | None = None,
        provisioning_status: ProvisioningStatus = "enabled",
        reprovision_policy: ReprovisionPolicy | None = None,
        initial_twin: dict[str, Any] | None = None,
        custom_allocation: CustomAllocation | None = None,
    ) -> EnrollmentGroup:
        """Create (or replace) an enrollment group.

        X.509 groups name an uploaded CA (``ca_reference``) or carry the CA certificate itself
        (``signing_certificate``); symmetric-key groups get generated keys unless given.
        ``custom_allocation`` (a webhook URL or a callable) implies
        ``allocation_policy="custom"``.
        """
        _check_resource_name("enrollment group", enrollment_group_id)
        attestation = _attestation_json(
            ca_reference=ca_reference,
            certificate=signing_certificate,
            symmetric_key=symmetric_key,
            primary_key=primary_key,
            secondary_key=secondary_key,
            group=True,
        )
        settings = self._new_settings(
            f"group/{enrollment_group_id}",
            provisioning_status=provisioning_status,
            allocation_policy=allocation_policy,
            hubs=hubs,
            reprovision_policy=reprovision_policy,
            initial_twin=initial_twin,
            custom_allocation=custom_allocation,
        )
        body = {"attestation": attestation, **settings._to_json()}
        etag = self._etag_of(lambda: self.enrollment_group(enrollment_group_id).etag)
        return self._put_group(enrollment_group_id, body, etag)

    def update_enrollment_group(
        self,
        enrollment_group_id: str,
        *,
        provisioning_status: ProvisioningStatus | None = None,
        allocation_policy: AllocationPolicy | None = None,
        hubs: Sequence[Hub | str] | None = None,
        reprovision_policy: ReprovisionPolicy | None = None,
        initial_twin: dict[str, Any] | None = None,
    ) -> EnrollmentGroup:
        """Change some settings of a group, keeping the rest (etag handled inside)."""
        record = self._rest.enrollment_group(*self._service, enrollment_group_id)
        group = EnrollmentGroup._from_json(record)
        current = group._settings()
        settings = _Settings(
            provisioning_status=provisioning_status or current.provisioning_status,
            allocation_policy=allocation_policy or current.allocation_policy,
            iot_hubs=tuple(_hub_host(h) for h in hubs) if hubs is not None else current.iot_hubs,
            reprovision_policy=reprovision_policy or current.reprovision_policy,
            initial_twin=initial_twin if initial_twin is not None else current.initial_twin,
            custom_allocation_url=current.custom_allocation_url,
        )
        # Azure requires the attestation in every PUT (400 without it). Re-send the group's
        # own, as `az iot dps enrollment-group update` does: the GET's (a CA reference, or
        # certificate info that means "keep the certificates"), or for symmetric keys the
        # attestation mechanism, which carries the keys a GET may leave out.
        attestation = record["attestation"]
        if attestation.get("type") == "symmetricKey":
            attestation = self._rest.enrollment_group_attestation(
                *self._service, enrollment_group_id
            )
        body = {"attestation": attestation, **settings._to_json()}
        # A PUT replaces the group: what dpskit does not model (IoT Edge capabilities) is sent
        # back as read, or the update would reset it.
        if record.get("capabilities") is not None:
            body["capabilities"] = record["capabilities"]
        return self._put_group(enrollment_group_id, body, group.etag)

    def enrollment_group(self, enrollment_group_id: str) -> EnrollmentGroup:
        """An enrollment group."""
        record = self._rest.enrollment_group(*self._service, enrollment_group_id)
        group = EnrollmentGroup._from_json(record)
        if group.attestation_type == "symmetricKey" and group.primary_key is None:
            keys = self._rest.enrollment_group_attestation(*self._service, enrollment_group_id)
            group = dataclasses.replace(
                group,
                primary_key=keys["symmetricKey"]["primaryKey"],
                secondary_key=keys["symmetricKey"]["secondaryKey"],
            )
        return group

    @staticmethod
    def _etag_of(read: Callable[[], str]) -> str | None:
        """The etag of a record to replace, or ``None`` when it does not exist yet."""
        try:
            return read()
        except NotFoundError:
            return None

    def enrollment_groups(self) -> list[EnrollmentGroup]:
        """Every enrollment group."""
        return [EnrollmentGroup._from_json(r) for r in self._rest.enrollment_groups(*self._service)]

    def delete_enrollment_group(self, enrollment_group_id: str) -> None:
        """Delete an enrollment group."""
        etag = self.enrollment_group(enrollment_group_id).etag
        self._rest.delete_enrollment_group(*self._service, enrollment_group_id, etag)

    # -- individual enrollments ------------------------------------------------------------

    def create_enrollment(
        self,
        registration_id: str,
        *,
        certificate: CertificateLike | None = None,
        symmetric_key: bool = False,
        primary_key: str | None = None,
        secondary_key: str | None = None,
        device_id: str | None = None,
        allocation_policy: AllocationPolicy | None = None,
        hubs: Sequence[Hub | str] | None = None,
        provisioning_status: ProvisioningStatus = "enabled",
        reprovision_policy: ReprovisionPolicy | None = None,
        initial_twin: dict[str, Any] | None = None,
        custom_allocation: CustomAllocation | None = None,
    ) -> Enrollment:
        """Create (or replace) an individual enrollment, by the device's certificate or its own
        symmetric key."""
        validate_registration_id(registration_id, x509=False)
        attestation = _attestation_json(
            ca_reference=None,
            certificate=certificate,
            symmetric_key=symmetric_key,
            primary_key=primary_key,
            secondary_key=secondary_key,
            group=False,
        )
        settings = self._new_settings(
            f"enrollment/{registration_id}",
            provisioning_status=provisioning_status,
            allocation_policy=allocation_policy,
            hubs=hubs,
            reprovision_policy=reprovision_policy,
            initial_twin=initial_twin,
            custom_allocation=custom_allocation,
        )
        body: dict[str, Any] = {"registrationId": registration_id, "attestation": attestation}
        if device_id is not None:
            # Left out otherwise (not null): the service then takes the registration id.
            body["deviceId"] = device_id
        body.update(settings._to_json())
        etag = self._etag_of(lambda: self.enrollment(registration_id).etag)
        record = self._rest.put_enrollment(*self._service, registration_id, body, etag)
        return Enrollment._from_json(record)

    def enrollment(self, registration_id: str) -> Enrollment:
        """An individual enrollment."""
        return Enrollment._from_json(self._rest.enrollment(*self._service, registration_id))

    def enrollments(self) -> list[Enrollment]:
        """Every individual enrollment."""
        return [Enrollment._from_json(r) for r in self._rest.enrollments(*self._service)]

    def delete_enrollment(self, registration_id: str) -> None:
        """Delete an individual enrollment."""
        etag = self.enrollment(registration_id).etag
        self._rest.delete_enrollment(*self._service, registration_id, etag)

    # -- registrations ---------------------------------------------------------------------

    def registrations(self, enrollment_group_id: str | None = None) -> list[RegistrationRecord]:
        """Registration records: those of one enrollment group, or (the service has no query
        for all) those of every group and every individual enrollment."""
        groups = (
            [self.enrollment_group(enrollment_group_id)]
            if enrollment_group_id is not None
            else self.enrollment_groups()
        )
        records = [
            RegistrationRecord._from_json(
                r, enrollment_group_id=g.enrollment_group_id, attestation=g.attestation_type
            )
            for g in groups
            for r in self._rest.registrations(*self._service, g.enrollment_group_id)
        ]
        if enrollment_group_id is None:
            for enrollment in self.enrollments():
                try:
                    state = self._rest.registration(*self._service, enrollment.registration_id)
                except NotFoundError:
                    continue
                records.append(
                    RegistrationRecord._from_json(
                        state,
                        enrollment_group_id=None,
                        attestation=enrollment.attestation_type,
                    )
                )
        return records

    def delete_registration(self, registration_id: str) -> None:
        """Forget a device's registration (it may then register afresh)."""
        self._rest.delete_registration(*self._service, registration_id)

    # -- realism knobs (emulator only) -------------------------------------------------------

    def set_assignment_latency(self, seconds: float) -> None:
        """Delay between a register request and its assignment (polls answer 202 until then).
        Emulator only."""
        self._cloud._emulator_only("set_assignment_latency").update_dps_knobs(
            self.name, assignment_latency=seconds
        )

    def set_registration_quota(self, per_minute: int | None) -> None:
        """Azure's registration quota (1,000 per minute per DPS): beyond it, 429 + retry-after.
        ``None`` removes the limit. Emulator only."""
        if per_minute is not None and per_minute < 1:
            raise ConfigError(f"per_minute must be at least 1 (or None), not {per_minute}")
        self._cloud._emulator_only("set_registration_quota").update_dps_knobs(
            self.name, registrations_per_minute=per_minute or 0
        )

    def refuse_registrations(self, count: int, *, status: int = 429) -> None:
        """Refuse the next ``count`` register requests with ``status`` (fault injection,
        emulator only)."""
        if count < 0:
            raise ConfigError(f"count must be 0 or more, not {count}")
        self._cloud._emulator_only("refuse_registrations").update_dps_knobs(
            self.name, refuse_next=count, refusal_status=status
        )

    def set_device_location(self, registration_id: str, location: str) -> None:
        """Where a device is, for the geoLatency allocation policy (default: the DPS's own
        location). Emulator only."""
        self._cloud._emulator_only("set_device_location").update_dps_knobs(
            self.name, device_location=(registration_id, location)
        )

    def __repr__(self) -> str:
        return f"<Dps {self.name!r} id_scope={self.id_scope!r} endpoint={self.device_endpoint!r}>"


class _Cloud:
    """What LocalCloud and AzureCloud share: one REST client for ARM and the service APIs."""

    subscription_id: str
    resource_group: str

    @property
    def _rest(self) -> RestClient:
        raise NotImplementedError

    @property
    def trust_pem(self) -> str | None:
        """The CA devices and clients trust for this cloud's servers (``None``: the system
        roots, as for Azure)."""
        return None

    def _hub_service_endpoint(self) -> str | None:
        """Where hub service calls go (``None``: ``https://{hub host name}``)."""
        return None

    def _device_port(self) -> int:
        return DEFAULT_MQTT_PORT

    def _emulator_only(self, feature: str) -> Emulator:
        raise ConfigError(f"{feature} is a feature of the local cloud (the emulator) only")

    def _emulator_api(self, feature: str) -> None:
        """Refuses `feature` unless the cloud is the emulator (in this process or another):
        it uses the emulator's own REST calls."""
        raise ConfigError(f"{feature} is a feature of the local cloud (the emulator) only")

    # -- resources -------------------------------------------------------------------------

    def _hub(self, resource: HubRecord) -> Hub:
        _, key = self._rest.hub_keys(resource.name)
        return Hub(self, resource, key)

    def _dps(self, resource: DpsRecord) -> Dps:
        _, key = self._rest.dps_keys(resource.name)
        return Dps(self, resource, key)

    def create_hub(
        self,
        name: str,
        location: str = "westeurope",
        *,
        sku: str | None = None,
        units: int = 1,
    ) -> Hub:
        """Create an IoT hub (or return the existing one of that name); waits until ARM reports
        it ready. The name must follow Azure's rule (3-50 letters, digits and hyphens, not
        ending with a hyphen): others raise ``ConfigError`` before any request.

        ``sku`` (``F1``, ``B1``-``B3``, ``S1``-``S3``) and ``units`` choose the hub's tier and
        size, as ARM's ``sku`` shows it; the local cloud then applies Azure's documented
        throttles and daily message quota of that tier and size (see :meth:`Hub.usage`).
        Without ``sku`` the hub is S1 with one unit and enforces none of them."""
        if units < 1:
            raise ConfigError(f"a hub has 1 unit or more, not {units}")
        if sku is None and units != 1:
            raise ConfigError("units need a sku (F1, B1, B2, B3, S1, S2 or S3)")
        return self._hub(self._rest.create_hub(name, location, sku, units))

    def hub(self, name: str) -> Hub:
        """An existing hub."""
        return self._hub(self._rest.hub(name))

    def hubs(self) -> list[Hub]:
        """Every hub of the resource group."""
        return [self._hub(r) for r in self._rest.hubs()]

    def delete_hub(self, hub: Hub | str) -> None:
        """Delete a hub (and unlink it from every DPS)."""
        self._rest.delete_hub(hub.name if isinstance(hub, Hub) else hub)

    def create_dps(self, name: str, location: str = "westeurope", *, presets: bool = False) -> Dps:
        """Create a DPS instance (or return the existing one of that name). The name must
        follow Azure's rule (3-64 letters, digits and hyphens, not ending with a hyphen): others
        raise ``ConfigError`` before any request.

        With ``presets`` the local cloud applies Azure's DPS rates to the instance: 1,000
        registrations and 1,000 service operations a minute, 5 status polls per device in 10
        seconds, each refused past it with 429 and a ``retry-after`` (Azure always applies
        them; the resource tag that asks for them is inert there)."""
        return self._dps(self._rest.create_dps(name, location, presets))

    def dps(self, name: str) -> Dps:
        """An existing DPS instance."""
        return self._dps(self._rest.dps(name))

    def all_dps(self) -> list[Dps]:
        """Every DPS instance of the resource group."""
        return [self._dps(r) for r in self._rest.dps_instances()]

    def delete_dps(self, dps: Dps | str) -> None:
        """Delete a DPS instance with its enrollments and registrations."""
        self._rest.delete_dps(dps.name if isinstance(dps, Dps) else dps)

    def link_hub(
        self,
        dps: Dps | str,
        hub: Hub | str,
        *,
        allocation_weight: int = 1,
        apply_allocation_policy: bool = True,
        location: str | None = None,
    ) -> LinkedHub:
        """Link a hub to a DPS instance (or update the link), as ``az iot dps linked-hub create``
        does: read the DPS resource, add the hub's ``iothubowner`` connection string, write it
        back. ``location`` (default: the hub's) is what geo-latency allocation compares."""
        dps_name = dps.name if isinstance(dps, Dps) else dps
        hub_name = hub.name if isinstance(hub, Hub) else hub
        if allocation_weight < 0:
            raise ConfigError("allocation_weight must be 0 or more")
        resource = self._rest.link_hub(
            dps_name, hub_name, allocation_weight, apply_allocation_policy, location
        )
        host = self._rest.hub(hub_name).host_name.lower()
        link = next(k for k in resource.linked_hubs if k.host_name.lower() == host)
        return LinkedHub._from_native(link, hub_name)


def _write_owner_only(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` readable by its owner only: created 0600 (no window in which
    another user could open it), and tightened if an older copy was looser (the core's one
    rule for secret files)."""
    write_secret(path, text.encode())


@dataclass(frozen=True)
class ThrottledRequests:
    """The 429s a :class:`LocalCloud` has answered, per REST API."""

    arm: int
    dps_service: int
    hub_service: int

    @property
    def total(self) -> int:
        """All of them."""
        return self.arm + self.dps_service + self.hub_service


class LocalCloud(_Cloud):
    """The embedded emulator of DPS and IoT Hub, started on construction, managed through the
    same REST client as Azure (its ARM and service APIs on :attr:`arm_endpoint`).

    Use it as a context manager, or call :meth:`stop`. Without ``data_dir`` the state lives in a
    temporary folder deleted on stop; with one, everything (including the emulator's CA, so
    trusted clients keep working) survives restarts.

    ARM answers only for :attr:`subscription_id` and :attr:`resource_group`. On a loopback
    ``host`` it accepts any bearer token unless ``arm_tokens`` are given. On any other address
    (``host="0.0.0.0"``) the network could otherwise ask it for every owner key, so without
    ``arm_tokens`` a random token is generated: this object uses it, and it is written to
    :attr:`endpoints_file` (mode 0600) for other local processes such as ``dpskit cloud``.

    A client may present at most ``max_chain_length`` certificates (leaf included); a longer
    chain is refused (401002 on register, a refused CONNECT on a hub) before it is parsed.

    DPS answers a registration ``202 assigning`` with ``retry-after: poll_retry_after``. The
    default, 0, lets devices poll at once (an emulated assignment is ready then), so a fleet is
    limited by the machine's handshakes rather than by sleeps; ``poll_retry_after=3`` is what
    Azure's DPS sends, for clients that should wait as they will on Azure.

    Time as Azure spends it, so that a client's waiting, paging and retrying is exercised:
    ``arm_operation_seconds`` is how long ARM's hub and DPS creates, updates and deletes run
    (they always answer as Azure does, 201/202 with ``Azure-AsyncOperation``; the resource
    shows ``Activating`` or ``Deleting`` meanwhile and a name being deleted stays taken; 0, the
    default, finishes them at once). ARM's hub and DPS lists give ``arm_page_size`` items per
    page and a ``nextLink``. With ``throttle_every=N`` every Nth request of each REST API (ARM,
    DPS service, hub service) is answered 429 with ``Retry-After: throttle_retry_after``;
    :attr:`throttled_requests` counts them.
    """

    subscription_id = "00000000-0000-0000-0000-000000000000"
    resource_group = "dpskit-local"

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_MQTT_PORT,
        connect_timeout: float = 10.0,
        max_connections: int = 20_000,
        max_packet_size: int = 262_144,
        max_chain_length: int = 10,
        poll_retry_after: int = 0,
        https_port: int = 0,
        arm_tokens: Sequence[str] | None = None,
        arm_operation_seconds: float = 0.0,
        arm_page_size: int = 100,
        throttle_every: int = 0,
        throttle_retry_after: int = 1,
    ) -> None:
        # Log lines of the emulator follow the `logging` configuration current at start.
        _refresh_logging()
        _raise_open_file_limit()
        self._emulator = Emulator(
            data_dir,
            host=host,
            port=port,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            max_packet_size=max_packet_size,
            max_chain_length=max_chain_length,
            poll_retry_after=poll_retry_after,
            https_port=https_port,
            arm_tokens=list(arm_tokens) if arm_tokens is not None else None,
            arm_operation_seconds=arm_operation_seconds,
            arm_page_size=arm_page_size,
            throttle_every=throttle_every,
            throttle_retry_after=throttle_retry_after,
        )
        # On loopback without arm_tokens ARM accepts any bearer token; off loopback the emulator
        # generates one when none is configured, and only the configured or generated one works.
        token = self._emulator.arm_token or LOCAL_TOKEN
        self._rest_client = RestClient(
            self.arm_endpoint,
            self.subscription_id,
            self.resource_group,
            lambda: token,
            self.trust_pem,
        )
        # Other processes (the CLI, a notebook) find a running emulator through this file; a
        # generated token is only reachable through it, so it is written then even for a
        # temporary folder.
        self._endpoints_file: Path | None = None
        if data_dir is not None or self._emulator.arm_token is not None:
            self._endpoints_file = self.data_dir / ENDPOINTS_FILE
            endpoints: dict[str, Any] = {
                "pid": os.getpid(),
                "armEndpoint": self.arm_endpoint,
                "mqttHost": self.host,
                "mqttPort": self.mqtt_port,
            }
            if self._emulator.arm_token is not None:
                endpoints["armToken"] = self._emulator.arm_token
            _write_owner_only(self._endpoints_file, json.dumps(endpoints))

    @property
    def arm_token(self) -> str | None:
        """The bearer token ARM requires (configured, or generated off loopback); ``None`` when
        it accepts any (loopback without ``arm_tokens``)."""
        return self._emulator.arm_token

    @property
    def throttled_requests(self) -> ThrottledRequests:
        """The 429s answered so far under ``throttle_every``, per REST API."""
        arm, dps_service, hub_service = self._emulator.throttled_requests
        return ThrottledRequests(arm=arm, dps_service=dps_service, hub_service=hub_service)

    @property
    def endpoints_file(self) -> Path | None:
        """The file describing this running cloud to other processes (owner-only, 0600: it
        holds the ARM bearer token when one is required), or ``None`` when none is written."""
        return self._endpoints_file

    @classmethod
    def start(
        cls,
        data_dir: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_MQTT_PORT,
        **options: Any,
    ) -> LocalCloud:
        """Start a local cloud (same as the constructor)."""
        return cls(data_dir, host=host, port=port, **options)

    def stop(self) -> None:
        """Stop serving; state stays in ``data_dir`` unless it is temporary."""
        self._emulator.stop()
        if self._endpoints_file is not None:
            self._endpoints_file.unlink(missing_ok=True)
            self._endpoints_file = None

    @classmethod
    def attach(cls, data_dir: str | Path) -> LocalCloudClient | None:
        """A client of the local cloud another process runs on ``data_dir`` (``dpskit
        emulator``), or ``None`` when none runs there."""
        return LocalCloudClient.find(Path(data_dir))

    def __enter__(self) -> LocalCloud:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def _rest(self) -> RestClient:
        if not self._emulator.is_running:
            raise EmulatorError("the local cloud is stopped")
        return self._rest_client

    def _hub_service_endpoint(self) -> str:
        # Every hub's service API is on the emulator's one HTTPS port.
        return self.arm_endpoint

    def _device_port(self) -> int:
        return self.mqtt_port

    def _emulator_only(self, feature: str) -> Emulator:
        return self._emulator

    def _emulator_api(self, feature: str) -> None:
        return None

    @property
    def is_running(self) -> bool:
        """Whether the emulator is serving."""
        return self._emulator.is_running

    @property
    def trust_pem(self) -> str:
        """The emulator CA's certificate: what clients trust (the official SDK's
        ``server_verification_cert``)."""
        return self._emulator.trust_pem

    @property
    def data_dir(self) -> Path:
        """The folder holding the state and the emulator's CA."""
        return Path(self._emulator.data_dir)

    @property
    def host(self) -> str:
        """The address DPS listens on (hubs take the following loopback addresses, or where
        those cannot be bound, as on macOS, this address and then ``localhost``)."""
        return self._emulator.host

    @property
    def mqtt_port(self) -> int:
        """The MQTT-over-TLS port shared by DPS and every hub."""
        return self._emulator.mqtt_port

    @property
    def https_port(self) -> int:
        """The HTTPS port of the management (ARM) and service REST APIs."""
        return self._emulator.https_port

    @property
    def arm_endpoint(self) -> str:
        """The management (Azure Resource Manager) endpoint: give it to ARM clients as their
        base URL, with :attr:`trust_pem` as the CA they verify it with, for
        :attr:`subscription_id` and :attr:`resource_group`. On loopback the emulator accepts
        any bearer token unless ``arm_tokens`` were given; elsewhere only :attr:`arm_token`."""
        return f"https://{self.host}:{self.https_port}"

    # -- resources only the emulator has -------------------------------------------------------

    def create_hub(
        self,
        name: str,
        location: str = "westeurope",
        *,
        sku: str | None = None,
        units: int = 1,
        host_name: str | None = None,
    ) -> Hub:
        """Create an IoT hub; it gets the next free loopback address as its host name (or
        ``host_name``, which must then resolve to this machine and be a loopback address or a
        name under ``localhost``: the emulator's CA is name-constrained to those).

        Where that address cannot be bound (macOS has only 127.0.0.1 without setup), the hub
        takes the first free name that reaches 127.0.0.1 everywhere: :attr:`host`, then
        ``localhost``; past those :class:`~dpskit.errors.ConfigError` says what to run to add
        an address (``dpskit emulator --print-loopback-setup N`` prints it for N hubs).
        ``DPSKIT_SHARED_HUB_ADDRESSES=1`` in the environment makes hubs take those names
        everywhere (tests)."""
        if host_name is not None:
            self._emulator.create_hub(name, location, host_name)
        return super().create_hub(name, location, sku=sku, units=units)

    # -- traces ----------------------------------------------------------------------------

    def trace(self, client_id: str | None = None, *, enabled: bool = True) -> None:
        """Record the MQTT exchange of one client id (a registration or device id), or of every
        client with ``None``."""
        self._emulator.trace(client_id, enabled)

    def trace_events(self, client_id: str) -> list[TraceEvent]:
        """The recorded exchange of a client."""
        return [TraceEvent._from_native(e) for e in self._emulator.trace_events(client_id)]

    def format_trace(self, client_id: str) -> str:
        """The recorded exchange of a client as readable text."""
        return "\n".join(str(e) for e in self.trace_events(client_id))

    def record_requests(self) -> RequestRecording:
        """Record the HTTPS requests this local cloud serves (ARM, DPS and hub service APIs)
        while the returned context manager is open: method, path, query, the headers that shape
        a request and its JSON body, secrets left out. Useful to see exactly what a client (dpskit,
        an official SDK, your own code) sends before it sends it to Azure::

            with cloud.record_requests() as recording:
                dps.create_enrollment_group("sensors", ca_reference="root")
            for request in recording.requests:
                print(request, request.body)
        """
        return RequestRecording(self._emulator)

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        where = f"{self.host}:{self.mqtt_port}"
        return f"<LocalCloud {state} mqtt={where} data_dir={str(self.data_dir)!r}>"


class LocalCloudClient(_Cloud):
    """A client of a local cloud that another process runs (``dpskit emulator --data-dir``):
    the same REST API, without the in-process knobs."""

    subscription_id = LocalCloud.subscription_id
    resource_group = LocalCloud.resource_group

    def __init__(self, data_dir: Path, endpoints: dict[str, Any]) -> None:
        self.data_dir = data_dir
        self.arm_endpoint: str = endpoints["armEndpoint"]
        self._mqtt_port: int = endpoints["mqttPort"]
        self._trust_pem = (data_dir / "emulator-ca.cert.pem").read_text()
        token: str = endpoints.get("armToken") or LOCAL_TOKEN
        self._rest_client = RestClient(
            self.arm_endpoint,
            self.subscription_id,
            self.resource_group,
            lambda: token,
            self._trust_pem,
        )

    @classmethod
    def find(cls, data_dir: Path) -> LocalCloudClient | None:
        """The running local cloud of ``data_dir``, if its process is alive."""
        try:
            endpoints = json.loads((data_dir / ENDPOINTS_FILE).read_text())
            alive = _process_alive(int(endpoints["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return cls(data_dir, endpoints) if alive else None

    @property
    def _rest(self) -> RestClient:
        return self._rest_client

    @property
    def trust_pem(self) -> str:
        """The emulator's CA."""
        return self._trust_pem

    def _hub_service_endpoint(self) -> str:
        return self.arm_endpoint

    def _device_port(self) -> int:
        return self._mqtt_port

    def _emulator_api(self, feature: str) -> None:
        return None

    def __repr__(self) -> str:
        return f"<LocalCloudClient arm={self.arm_endpoint!r} data_dir={str(self.data_dir)!r}>"


class AzureCloud(_Cloud):
    """Real Azure: ARM with an Entra ID token for hubs, DPS instances, links and CA
    certificates; the DPS and hub service APIs with the SAS keys ARM lists. The same methods as
    :class:`LocalCloud` (less the emulator's realism knobs).

    ``credential`` is a token string, a :class:`~dpskit.credentials.ServicePrincipal`, an
    :class:`~dpskit.credentials.AzureCliCredential`, any azure-identity credential (for example
    ``DefaultAzureCredential()``), or ``None`` (environment service principal, else ``az
    login``). The resource group must exist. Azure resources cost money: delete what you create
    (:meth:`delete_hub`, :meth:`delete_dps`).

    ``cloud`` picks a sovereign cloud by its Azure CLI name (``AzureCloud``, the default, also
    ``AzurePublicCloud``; ``AzureChinaCloud``; ``AzureUSGovernment``): its ARM endpoint, the
    scope its tokens are asked for and the Entra ID authority dpskit's own credentials sign in
    at, together (an azure-identity credential takes its ``authority=`` when created). An
    ``arm_endpoint`` of a known cloud implies that cloud; another endpoint without ``cloud``
    gets tokens for ``{arm_endpoint}/.default``. ``token_scope`` and ``authority`` override.
    """

    def __init__(
        self,
        subscription_id: str,
        resource_group: str,
        credential: str | TokenCredential | None = None,
        *,
        cloud: str | None = None,
        arm_endpoint: str | None = None,
        token_scope: str | None = None,
        authority: str | None = None,
        trust_pem: str | None = None,
    ) -> None:
        if not subscription_id or not resource_group:
            raise ConfigError("subscription_id and resource_group are required")
        environment = azure_environment(cloud, arm_endpoint)
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        #: The known cloud this one is (``None``: an endpoint of no known cloud).
        self.environment = environment
        endpoint = arm_endpoint or (environment.arm_endpoint if environment else "")
        self.arm_endpoint = endpoint.rstrip("/")
        #: The scope ARM tokens are asked for.
        self.token_scope = token_scope or (
            environment.token_scope if environment else f"{self.arm_endpoint}/.default"
        )
        #: The Entra ID authority host dpskit's credentials sign in at.
        self.authority = authority or (
            environment.authority if environment else AZURE_CLOUDS["AzureCloud"].authority
        )
        self._trust_pem = trust_pem
        self._rest_client = RestClient(
            self.arm_endpoint,
            subscription_id,
            resource_group,
            token_provider(credential, self.token_scope, self.authority),
            trust_pem,
        )

    @property
    def dps_global_endpoint(self) -> str:
        """The DPS host devices of this cloud dial (``global.azure-devices-provisioning.net``
        in the public cloud, ``.cn`` in China, ``.us`` for US Government)."""
        environment = self.environment or AZURE_CLOUDS["AzureCloud"]
        return environment.dps_global_endpoint

    @classmethod
    def from_environment(cls, credential: str | TokenCredential | None = None) -> AzureCloud:
        """From ``AZURE_SUBSCRIPTION_ID`` and ``AZURE_RESOURCE_GROUP`` (what the notebooks'
        ``TARGET = "azure"`` switch reads), in the cloud ``AZURE_CLOUD`` names (default: the
        public cloud)."""
        subscription = os.environ.get("AZURE_SUBSCRIPTION_ID")
        group = os.environ.get("AZURE_RESOURCE_GROUP")
        if not subscription or not group:
            raise ConfigError("set AZURE_SUBSCRIPTION_ID and AZURE_RESOURCE_GROUP")
        return cls(subscription, group, credential, cloud=os.environ.get("AZURE_CLOUD") or None)

    @property
    def _rest(self) -> RestClient:
        return self._rest_client

    @property
    def trust_pem(self) -> str | None:
        """The pinned CA for the endpoints, or ``None`` for the system roots (Azure)."""
        return self._trust_pem

    def __repr__(self) -> str:
        return (
            f"<AzureCloud subscription={self.subscription_id!r} "
            f"resource_group={self.resource_group!r} arm={self.arm_endpoint!r}"
            f"{f' cloud={self.environment.name!r}' if self.environment else ''}>"
        )
