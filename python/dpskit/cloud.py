"""The local cloud: DPS and IoT Hub emulated in-process, and the objects that manage them.

``LocalCloud`` starts the embedded emulator (real MQTT over real TLS, state in SQLite) and
exposes the walkthrough's management steps: create hubs and DPS instances, link them, upload CA
certificates, prove possession, create enrollments, read registration records.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from dpskit._native import (
    Certificate,
    CertificateAuthority,
    DeviceCertificate,
    Emulator,
    _refresh_logging,
)
from dpskit.errors import ConfigError

__all__ = [
    "CaCertificateInfo",
    "Dps",
    "Enrollment",
    "EnrollmentGroup",
    "Hub",
    "HubDevice",
    "LinkedHub",
    "LocalCloud",
    "MethodResult",
    "RegistrationRecord",
    "ReprovisionPolicy",
    "TelemetryMessage",
    "TelemetryRecords",
    "TraceEvent",
]

AllocationPolicy = Literal["hashed", "static", "geoLatency", "custom"]
ProvisioningStatus = Literal["enabled", "disabled"]
CertificateLike = Certificate | CertificateAuthority | DeviceCertificate | str | bytes
#: A custom allocation policy: a webhook URL, or a callable that receives Azure's
#: AllocationRequest (a dict) and returns an AllocationResponse dict (``iotHubHostName``, and
#: optionally ``initialTwin`` and ``payload``) or just the chosen hub's host name.
CustomAllocation = str | Callable[[dict[str, Any]], dict[str, Any] | str]

#: The official Python SDK always dials this port.
DEFAULT_MQTT_PORT = 8883


def _raise_open_file_limit() -> None:
    """Lift the soft open-file limit to the hard one: every device connection is a file
    descriptor, and a soft limit of 1,024 would cap a local cloud at about a thousand devices
    (servers such as nginx and mosquitto's packaging do the same at start)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        # A sandbox may refuse; the emulator then holds fewer devices.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _unix(seconds: int) -> datetime:
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


def _hub_host(hub: Hub | str) -> str:
    return hub.host_name if isinstance(hub, Hub) else hub


@dataclass(frozen=True)
class CaCertificateInfo:
    """A CA certificate uploaded to a DPS instance."""

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
    def _from_record(cls, record: dict[str, Any]) -> CaCertificateInfo:
        return cls(
            name=record["name"],
            certificate=Certificate.from_der(base64.b64decode(record["der_base64"])),
            is_verified=record["is_verified"],
            etag=record["etag"],
            created=_unix(record["created"]),
            updated=_unix(record["updated"]),
            verification_code=record.get("verification_code"),
        )


@dataclass(frozen=True)
class LinkedHub:
    """A hub linked to a DPS instance."""

    hub: str
    host_name: str
    allocation_weight: int
    apply_allocation_policy: bool
    location: str


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
        custom = data.get("customAllocation") or {}
        return cls(
            provisioning_status=data.get("provisioningStatus", "enabled"),
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
        custom = None
        if self.custom_allocation_url is not None:
            custom = {"webhookUrl": self.custom_allocation_url, "apiVersion": "2021-10-01"}
        return {
            "provisioningStatus": self.provisioning_status,
            "allocationPolicy": self.allocation_policy,
            "iotHubs": list(self.iot_hubs),
            "reprovisionPolicy": self.reprovision_policy._to_json(),
            "initialTwin": self.initial_twin,
            "customAllocation": custom,
        }


@dataclass(frozen=True)
class _Attestation:
    type: Literal["x509", "symmetricKey"]
    ca_references: tuple[str, ...] = ()
    certificates: tuple[Certificate, ...] = ()
    primary_key: str | None = field(default=None, repr=False)
    secondary_key: str | None = field(default=None, repr=False)

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> _Attestation:
        if data["type"] == "x509":
            return cls(
                type="x509",
                ca_references=tuple(data.get("caReferences") or ()),
                certificates=tuple(
                    Certificate.from_der(base64.b64decode(der))
                    for der in data.get("certificates") or ()
                ),
            )
        return cls(
            type="symmetricKey",
            primary_key=data["primaryKey"],
            secondary_key=data["secondaryKey"],
        )


def _generated_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _attestation_json(
    *,
    ca_reference: str | None,
    certificate: CertificateLike | None,
    symmetric_key: bool,
    primary_key: str | None,
    secondary_key: str | None,
) -> dict[str, Any]:
    chosen = [ca_reference is not None, certificate is not None, symmetric_key]
    if sum(chosen) != 1:
        raise ConfigError(
            "choose exactly one attestation: a CA reference, a certificate, or symmetric_key=True"
        )
    if symmetric_key:
        return {
            "type": "symmetricKey",
            "primaryKey": primary_key or _generated_key(),
            "secondaryKey": secondary_key or _generated_key(),
        }
    if ca_reference is not None:
        return {"type": "x509", "caReferences": [ca_reference], "certificates": []}
    assert certificate is not None
    der = _certificate(certificate).der
    return {"type": "x509", "caReferences": [], "certificates": [base64.b64encode(der).decode()]}


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
        """The shared fields, from the JSON of either kind."""
        settings = _Settings._from_json(data.get("settings") or {})
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
            "created": _unix(data["created"]),
            "updated": _unix(data["updated"]),
        }


@dataclass(frozen=True, kw_only=True)
class EnrollmentGroup(_EnrollmentCommon):
    """An enrollment group: every device whose chain reaches its CA (or whose key derives from
    its group key) may register."""

    enrollment_group_id: str
    ca_references: tuple[str, ...]
    signing_certificates: tuple[Certificate, ...]

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
    certificates: tuple[Certificate, ...]

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
    """What DPS remembers about a device's registration."""

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
    def _from_json(cls, data: dict[str, Any]) -> RegistrationRecord:
        enrollment = data["enrollment"]
        return cls(
            registration_id=data["registrationId"],
            status=data["status"],
            assigned_hub=data.get("assignedHub"),
            device_id=data.get("deviceId"),
            substatus=data.get("substatus"),
            enrollment_group_id=enrollment["id"] if enrollment["kind"] == "group" else None,
            attestation=data["attestation"],
            error_code=data.get("errorCode"),
            error_message=data.get("errorMessage"),
            created=_azure_time(data["created"]),
            last_updated=_azure_time(data["lastUpdated"]),
            etag=data["etag"],
            payload=data.get("payload"),
        )


@dataclass(frozen=True)
class HubDevice:
    """A device identity in a hub, as DPS created it."""

    device_id: str
    hub: str
    authentication: Literal["selfSigned", "sas"]
    thumbprint: str | None
    thumbprint_sha256: str | None
    primary_key: str | None = field(repr=False)
    secondary_key: str | None = field(repr=False)
    initial_twin: dict[str, Any] | None
    created: datetime

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> HubDevice:
        auth = data["auth"]
        return cls(
            device_id=data["deviceId"],
            hub=data["hub"],
            authentication=auth["type"],
            thumbprint=auth.get("primaryThumbprint"),
            thumbprint_sha256=auth.get("primaryThumbprintSha256"),
            primary_key=auth.get("primaryKey"),
            secondary_key=auth.get("secondaryKey"),
            initial_twin=data.get("initialTwin"),
            created=_unix(data["created"]),
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
    """An IoT Hub instance of the local cloud."""

    def __init__(self, cloud: LocalCloud, record: dict[str, Any]) -> None:
        self._cloud = cloud
        self.name: str = record["name"]
        self.host_name: str = record["host_name"]
        self.location: str = record["location"]
        self._primary_key: str = record["primary_key"]

    @property
    def connection_string(self) -> str:
        """The ``iothubowner`` service connection string."""
        return (
            f"HostName={self.host_name};SharedAccessKeyName=iothubowner;"
            f"SharedAccessKey={self._primary_key}"
        )

    def devices(self) -> list[HubDevice]:
        """The device identities DPS created in this hub."""
        records = json.loads(self._cloud._emulator.hub_devices(self.host_name))
        return [HubDevice._from_json(r) for r in records]

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
        thumbprint, or symmetric keys (generated unless given)."""
        if (certificate is None) == (not symmetric_key):
            raise ConfigError("give either a certificate or symmetric_key=True")
        if certificate is not None:
            cert = _certificate(certificate)
            auth: dict[str, Any] = {
                "type": "selfSigned",
                "primaryThumbprint": cert.thumbprint_sha1,
                "primaryThumbprintSha256": cert.thumbprint_sha256,
            }
        else:
            auth = {
                "type": "sas",
                "primaryKey": primary_key or _generated_key(),
                "secondaryKey": secondary_key or _generated_key(),
            }
        twin = json.dumps(initial_twin) if initial_twin is not None else None
        record = self._cloud._emulator.hub_put_device(
            self.host_name, device_id, json.dumps(auth), twin
        )
        return HubDevice._from_json(json.loads(record))

    # -- realism knobs (emulator only) -------------------------------------------------------

    def set_latency(self, seconds: float) -> None:
        """Delay before the hub handles each device message."""
        self._cloud._emulator.update_hub_knobs(self.host_name, latency=seconds)

    def set_throttle(
        self,
        *,
        connections_per_second: int | None = None,
        messages_per_second: int | None = None,
    ) -> None:
        """Azure-like throttles (``None`` leaves a limit as it is, 0 removes it): new
        connections beyond the rate are refused; messages beyond it are delayed for up to a
        second (traffic shaping), then the device is disconnected (429001)."""
        for value in (connections_per_second, messages_per_second):
            if value is not None and value < 0:
                raise ConfigError("rates must be 0 (no limit) or more")
        self._cloud._emulator.update_hub_knobs(
            self.host_name,
            connections_per_second=connections_per_second,
            messages_per_second=messages_per_second,
        )

    def refuse_connections(self, count: int) -> None:
        """Refuse the next ``count`` device connections (fault injection)."""
        if count < 0:
            raise ConfigError(f"count must be 0 or more, not {count}")
        self._cloud._emulator.update_hub_knobs(self.host_name, refuse_next_connections=count)

    def drop_connection(self, device_id: str) -> bool:
        """Drop a device's connection now (fault injection); ``False`` if it was offline."""
        return self._cloud._emulator.hub_drop_connection(self.host_name, device_id)

    def telemetry(self, device_id: str | None = None) -> TelemetryRecords:
        """What the hub received (every device, or one), in arrival order."""
        rows = json.loads(self._cloud._emulator.hub_telemetry(self.host_name, device_id))
        return TelemetryRecords(
            TelemetryMessage(
                sequence=r["sequence"],
                device_id=r["deviceId"],
                enqueued_time=datetime.fromtimestamp(r["enqueued"], tz=timezone.utc),
                body=base64.b64decode(r["body"]),
                properties=dict(r["properties"]),
                system_properties=dict(r["systemProperties"]),
            )
            for r in rows
        )

    def get_twin(self, device_id: str) -> dict[str, Any]:
        """The device twin: tags, desired and reported properties with their versions."""
        twin: dict[str, Any] = json.loads(self._cloud._emulator.hub_twin(self.host_name, device_id))
        return twin

    def update_desired(self, device_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Patch desired properties (``None`` deletes); a connected device subscribed to desired
        patches receives the change."""
        twin: dict[str, Any] = json.loads(
            self._cloud._emulator.hub_update_desired(self.host_name, device_id, json.dumps(patch))
        )
        return twin

    def update_tags(self, device_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Patch the twin's tags."""
        twin: dict[str, Any] = json.loads(
            self._cloud._emulator.hub_update_tags(self.host_name, device_id, json.dumps(patch))
        )
        return twin

    def send_c2d(
        self,
        device_id: str,
        body: bytes | str | dict[str, Any] | list[Any],
        *,
        properties: dict[str, str] | None = None,
    ) -> str:
        """Queue a cloud-to-device message (at most 50 wait per device); returns its id."""
        if isinstance(body, dict | list):
            data = json.dumps(body).encode()
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
        pairs = [(str(k), str(v)) for k, v in (properties or {}).items()]
        return self._cloud._emulator.hub_send_c2d(self.host_name, device_id, data, pairs)

    def invoke_method(
        self, device_id: str, method: str, payload: Any = None, *, timeout: float = 30.0
    ) -> MethodResult:
        """Call a direct method on a connected device and wait for its answer; an offline device
        raises ``NotFoundError`` (404103), no answer in time ``ServiceError`` (504101)."""
        answer = json.loads(
            self._cloud._emulator.hub_invoke_method(
                self.host_name, device_id, method, json.dumps(payload), timeout
            )
        )
        return MethodResult(status=answer["status"], payload=answer["payload"])

    def __repr__(self) -> str:
        return f"<Hub {self.name!r} host_name={self.host_name!r} location={self.location!r}>"


class Dps:
    """A Device Provisioning Service instance of the local cloud."""

    def __init__(self, cloud: LocalCloud, record: dict[str, Any]) -> None:
        self._cloud = cloud
        self.name: str = record["name"]
        self.id_scope: str = record["id_scope"]
        self.location: str = record["location"]
        self._primary_key: str = record["primary_key"]

    @property
    def _native(self) -> Emulator:
        return self._cloud._emulator

    # -- endpoints ------------------------------------------------------------------------

    @property
    def device_host(self) -> str:
        """The host devices dial for provisioning."""
        return self._cloud.host

    @property
    def device_port(self) -> int:
        """The MQTT port devices dial."""
        return self._cloud.mqtt_port

    @property
    def device_endpoint(self) -> str:
        """``host`` (or ``host:port`` when the port is not 8883): pass it to ``provision`` or,
        with the default port, as the official SDK's ``provisioning_host``."""
        if self.device_port == DEFAULT_MQTT_PORT:
            return self.device_host
        return f"{self.device_host}:{self.device_port}"

    @property
    def service_host(self) -> str:
        """``host:port`` of the DPS service (enrollment) API: its ``serviceOperationsHostName``."""
        return f"{self._cloud.host}:{self._cloud.https_port}"

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
        record = json.loads(self._native.dps(self.name))
        return [LinkedHub(**link) for link in record["linked_hubs"]]

    # -- CA certificates and proof of possession --------------------------------------------

    def upload_ca_certificate(
        self, name: str, certificate: CertificateLike, *, verified: bool = False
    ) -> CaCertificateInfo:
        """Upload (or replace) a CA certificate; ``verified=True`` skips proof of possession."""
        cert = _certificate(certificate)
        current = self._find_ca(name)
        record = self._native.upload_ca_certificate(
            self.name, name, cert.der, verified, current.etag if current else None
        )
        return CaCertificateInfo._from_record(json.loads(record))

    def ca_certificate(self, name: str) -> CaCertificateInfo:
        """An uploaded CA certificate."""
        return CaCertificateInfo._from_record(
            json.loads(self._native.ca_certificate(self.name, name))
        )

    def ca_certificates(self) -> list[CaCertificateInfo]:
        """Every uploaded CA certificate."""
        record = json.loads(self._native.dps(self.name))
        return [CaCertificateInfo._from_record(c) for c in record["certificates"]]

    def _find_ca(self, name: str) -> CaCertificateInfo | None:
        return next((c for c in self.ca_certificates() if c.name == name), None)

    def delete_ca_certificate(self, name: str) -> None:
        """Delete an uploaded CA certificate."""
        self._native.delete_ca_certificate(self.name, name, self.ca_certificate(name).etag)

    def generate_verification_code(self, name: str) -> str:
        """A new one-time verification code for an uploaded CA certificate."""
        etag = self.ca_certificate(name).etag
        record = json.loads(self._native.generate_verification_code(self.name, name, etag))
        code: str = record["verification_code"]
        return code

    def verify_certificate(self, name: str, verification: CertificateLike) -> CaCertificateInfo:
        """Prove possession: upload the verification certificate (CN = the code, signed by the
        CA's key)."""
        cert = _certificate(verification)
        etag = self.ca_certificate(name).etag
        record = self._native.verify_certificate(self.name, name, cert.der, etag)
        return CaCertificateInfo._from_record(json.loads(record))

    def prove_possession(self, name: str, authority: CertificateAuthority) -> CaCertificateInfo:
        """Upload ``authority``'s certificate if needed, then run the whole proof of possession:
        code → verification certificate signed by that CA (root or intermediate) → verify."""
        current = self._find_ca(name)
        if current is None or current.certificate != authority.certificate:
            current = self.upload_ca_certificate(name, authority)
        if current.is_verified:
            return current
        code = self.generate_verification_code(name)
        return self.verify_certificate(name, authority.create_verification_certificate(code))

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
        function = custom

        def allocate(request_json: str) -> str:
            answer = function(json.loads(request_json))
            if isinstance(answer, str):
                answer = {"iotHubHostName": answer}
            return json.dumps(answer)

        name = f"{self.name}/{key}"
        self._native.register_allocator(name, allocate)
        return f"python:{name}"

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
        attestation = _attestation_json(
            ca_reference=ca_reference,
            certificate=signing_certificate,
            symmetric_key=symmetric_key,
            primary_key=primary_key,
            secondary_key=secondary_key,
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
        existing = self._find_group(enrollment_group_id)
        spec = json.dumps({"attestation": attestation, "settings": settings._to_json()})
        record = self._native.put_enrollment_group(
            self.name, enrollment_group_id, spec, existing.etag if existing else None
        )
        return EnrollmentGroup._from_json(json.loads(record))

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
        group = self.enrollment_group(enrollment_group_id)
        settings = _Settings(
            provisioning_status=provisioning_status or group.provisioning_status,
            allocation_policy=allocation_policy or group.allocation_policy,
            iot_hubs=tuple(_hub_host(h) for h in hubs) if hubs is not None else group.iot_hubs,
            reprovision_policy=reprovision_policy or group.reprovision_policy,
            initial_twin=initial_twin if initial_twin is not None else group.initial_twin,
            custom_allocation_url=group.custom_allocation_url,
        )
        spec = json.dumps({"settings": settings._to_json()})
        record = self._native.put_enrollment_group(self.name, enrollment_group_id, spec, group.etag)
        return EnrollmentGroup._from_json(json.loads(record))

    def enrollment_group(self, enrollment_group_id: str) -> EnrollmentGroup:
        """An enrollment group."""
        record = self._native.enrollment_group(self.name, enrollment_group_id)
        return EnrollmentGroup._from_json(json.loads(record))

    def _find_group(self, enrollment_group_id: str) -> EnrollmentGroup | None:
        return next(
            (g for g in self.enrollment_groups() if g.enrollment_group_id == enrollment_group_id),
            None,
        )

    def enrollment_groups(self) -> list[EnrollmentGroup]:
        """Every enrollment group."""
        records = json.loads(self._native.enrollment_groups(self.name))
        return [EnrollmentGroup._from_json(r) for r in records]

    def delete_enrollment_group(self, enrollment_group_id: str) -> None:
        """Delete an enrollment group."""
        etag = self.enrollment_group(enrollment_group_id).etag
        self._native.delete_enrollment_group(self.name, enrollment_group_id, etag)

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
        attestation = _attestation_json(
            ca_reference=None,
            certificate=certificate,
            symmetric_key=symmetric_key,
            primary_key=primary_key,
            secondary_key=secondary_key,
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
        existing = next(
            (e for e in self.enrollments() if e.registration_id.lower() == registration_id.lower()),
            None,
        )
        spec = json.dumps(
            {"attestation": attestation, "settings": settings._to_json(), "deviceId": device_id}
        )
        record = self._native.put_enrollment(
            self.name, registration_id, spec, existing.etag if existing else None
        )
        return Enrollment._from_json(json.loads(record))

    def enrollment(self, registration_id: str) -> Enrollment:
        """An individual enrollment."""
        return Enrollment._from_json(
            json.loads(self._native.enrollment(self.name, registration_id))
        )

    def enrollments(self) -> list[Enrollment]:
        """Every individual enrollment."""
        return [Enrollment._from_json(r) for r in json.loads(self._native.enrollments(self.name))]

    def delete_enrollment(self, registration_id: str) -> None:
        """Delete an individual enrollment."""
        etag = self.enrollment(registration_id).etag
        self._native.delete_enrollment(self.name, registration_id, etag)

    # -- registrations ---------------------------------------------------------------------

    def registrations(self, enrollment_group_id: str | None = None) -> list[RegistrationRecord]:
        """Registration records, all of them or those of one enrollment group."""
        records = json.loads(self._native.registrations(self.name, enrollment_group_id))
        return [RegistrationRecord._from_json(r) for r in records]

    def delete_registration(self, registration_id: str) -> None:
        """Forget a device's registration (it may then register afresh)."""
        self._native.delete_registration(self.name, registration_id)

    # -- realism knobs (emulator only) -------------------------------------------------------

    def set_assignment_latency(self, seconds: float) -> None:
        """Delay between a register request and its assignment (polls answer 202 until then)."""
        self._native.update_dps_knobs(self.name, assignment_latency=seconds)

    def set_registration_quota(self, per_minute: int | None) -> None:
        """Azure's registration quota (1,000 per minute per DPS): beyond it, 429 + retry-after.
        ``None`` removes the limit."""
        if per_minute is not None and per_minute < 1:
            raise ConfigError(f"per_minute must be at least 1 (or None), not {per_minute}")
        self._native.update_dps_knobs(self.name, registrations_per_minute=per_minute or 0)

    def refuse_registrations(self, count: int, *, status: int = 429) -> None:
        """Refuse the next ``count`` register requests with ``status`` (fault injection)."""
        if count < 0:
            raise ConfigError(f"count must be 0 or more, not {count}")
        self._native.update_dps_knobs(self.name, refuse_next=count, refusal_status=status)

    def set_device_location(self, registration_id: str, location: str) -> None:
        """Where a device is, for the geoLatency allocation policy (default: the DPS's own
        location)."""
        self._native.update_dps_knobs(self.name, device_location=(registration_id, location))

    def __repr__(self) -> str:
        return f"<Dps {self.name!r} id_scope={self.id_scope!r} endpoint={self.device_endpoint!r}>"


class LocalCloud:
    """The embedded emulator of DPS and IoT Hub, started on construction.

    Use it as a context manager, or call :meth:`stop`. Without ``data_dir`` the state lives in a
    temporary folder deleted on stop; with one, everything (including the emulator's CA, so
    trusted clients keep working) survives restarts.
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
        poll_retry_after: int = 1,
        https_port: int = 0,
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
            poll_retry_after=poll_retry_after,
            https_port=https_port,
        )

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
        """The address DPS listens on (hubs take the following loopback addresses)."""
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
        base URL, with :attr:`trust_pem` as the CA they verify it with. The emulator accepts any
        bearer token (it listens on loopback)."""
        return f"https://{self.host}:{self.https_port}"

    # -- resources -------------------------------------------------------------------------

    def create_hub(
        self, name: str, location: str = "westeurope", *, host_name: str | None = None
    ) -> Hub:
        """Create an IoT hub; it gets the next free loopback address as its host name."""
        return Hub(self, json.loads(self._emulator.create_hub(name, location, host_name)))

    def hub(self, name: str) -> Hub:
        """An existing hub."""
        return Hub(self, json.loads(self._emulator.hub(name)))

    def hubs(self) -> list[Hub]:
        """Every hub."""
        return [Hub(self, r) for r in json.loads(self._emulator.hubs())]

    def create_dps(self, name: str, location: str = "westeurope") -> Dps:
        """Create a DPS instance with a fresh ID scope."""
        return Dps(self, json.loads(self._emulator.create_dps(name, location)))

    def dps(self, name: str) -> Dps:
        """An existing DPS instance."""
        return Dps(self, json.loads(self._emulator.dps(name)))

    def all_dps(self) -> list[Dps]:
        """Every DPS instance."""
        return [Dps(self, r) for r in json.loads(self._emulator.all_dps())]

    def link_hub(
        self,
        dps: Dps | str,
        hub: Hub | str,
        *,
        allocation_weight: int = 1,
        apply_allocation_policy: bool = True,
        location: str | None = None,
    ) -> LinkedHub:
        """Link a hub to a DPS instance (or update the link)."""
        dps_name = dps.name if isinstance(dps, Dps) else dps
        hub_name = hub.name if isinstance(hub, Hub) else hub
        if allocation_weight < 0:
            raise ConfigError("allocation_weight must be 0 or more")
        link = self._emulator.link_hub(
            dps_name, hub_name, allocation_weight, apply_allocation_policy, location
        )
        return LinkedHub(**json.loads(link))

    # -- traces ----------------------------------------------------------------------------

    def trace(self, client_id: str | None = None, *, enabled: bool = True) -> None:
        """Record the MQTT exchange of one client id (a registration or device id), or of every
        client with ``None``."""
        self._emulator.trace(client_id, enabled)

    def trace_events(self, client_id: str) -> list[TraceEvent]:
        """The recorded exchange of a client."""
        events = json.loads(self._emulator.trace_events(client_id))
        return [
            TraceEvent(
                at=datetime.fromtimestamp(e["at"], tz=timezone.utc),
                direction=e["direction"],
                kind=e["kind"],
                topic=e["topic"],
                status=e["status"],
                detail=e["detail"],
            )
            for e in events
        ]

    def format_trace(self, client_id: str) -> str:
        """The recorded exchange of a client as readable text."""
        return "\n".join(str(e) for e in self.trace_events(client_id))

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        where = f"{self.host}:{self.mqtt_port}"
        return f"<LocalCloud {state} mqtt={where} data_dir={str(self.data_dir)!r}>"
