"""The read-only records the clouds return: CA certificates, linked hubs, certificate
summaries, hub usage, device identities, trace events, telemetry, method answers, delivery
feedback of cloud-to-device messages and the local cloud's throttling counts. Each is a
frozen dataclass built from a typed record of ``dpskit._native``; a twin stays the dict
Azure's SDKs give, built here from its record."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from dpskit._native import (
    C2dFeedbackRecord,
    CaCertificateRecord,
    Certificate,
    EventRecord,
    HubDeviceRecord,
    HubUsageRecord,
    LinkedHubRecord,
    ServiceTwinRecord,
    TelemetryRecord,
    TraceRecord,
    X509CertificateInfoRecord,
)
from dpskit.cloud._common import (
    _AUTHENTICATIONS,
    Authentication,
    CertificateLike,
    _azure_time,
    _certificate,
    _certificate_from_text,
    _http_time,
)
from dpskit.errors import EmulatorError


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
    def _from_native(cls, info: X509CertificateInfoRecord) -> CertificateSummary:
        return cls(
            subject=info.subject_name,
            issuer=info.issuer_name,
            thumbprint=info.sha1_thumbprint,
            thumbprint_sha256=info.sha256_thumbprint,
            serial_number=info.serial_number,
            not_before=_azure_time(info.not_before_utc),
            not_after=_azure_time(info.not_after_utc),
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
    def _from_native(cls, hub: str, record: HubDeviceRecord) -> HubDevice:
        return cls(
            device_id=record.device_id,
            hub=hub,
            authentication=_AUTHENTICATIONS.get(record.authentication.lower(), "sas"),
            thumbprint=record.primary_thumbprint,
            primary_key=record.primary_key,
            secondary_key=record.secondary_key,
            connection_state=record.connection_state,
        )


def _twin_document(record: ServiceTwinRecord) -> dict[str, Any]:
    """A twin as the hub service API writes it (what the official SDKs and ``Hub.get_twin``
    give), from its record: the members the answer carried, ``properties`` holding the desired
    and reported sections."""
    document: dict[str, Any] = {"deviceId": record.device_id}
    members: dict[str, Any] = {
        "etag": record.etag,
        "version": record.version,
        "tags": record.tags,
        "status": record.status,
        "connectionState": record.connection_state,
        "authenticationType": record.authentication_type,
    }
    document.update((k, v) for k, v in members.items() if v is not None)
    sections = (("desired", record.desired), ("reported", record.reported))
    properties = {k: v for k, v in sections if v is not None}
    if properties:
        document["properties"] = properties
    if record.x509_thumbprint is not None:
        document["x509Thumbprint"] = {
            "primaryThumbprint": record.x509_thumbprint.primary_thumbprint,
            "secondaryThumbprint": record.x509_thumbprint.secondary_thumbprint,
        }
    document.update(record.other)
    return document


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
    def _from_event(cls, event: HubEvent) -> TelemetryMessage:
        # The system properties under the names the device's MQTT property bag gives them.
        system = {
            name: value
            for name, value in (
                ("mid", event.message_id),
                ("cid", event.correlation_id),
                ("ct", event.content_type),
                ("ce", event.content_encoding),
            )
            if value is not None
        }
        return cls(
            sequence=event.sequence_number,
            device_id=event.device_id or "",
            enqueued_time=event.enqueued_time,
            body=event.body,
            properties=dict(event.properties),
            system_properties=system,
        )

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


@dataclass(frozen=True)
class C2dFeedback:
    """What became of a cloud-to-device message that asked for feedback (``ack``), as IoT Hub
    reports it on its feedback endpoint (one record of a feedback message's body)."""

    #: The message id :meth:`Hub.send_c2d` returned.
    original_message_id: str
    device_id: str
    #: ``"Success"``, ``"Expired"``, ``"DeliveryCountExceeded"``, ``"Rejected"`` or
    #: ``"Purged"``.
    status: str
    #: The status in words (``"Success"``, ``"Message Expired"``...).
    description: str
    #: When it happened (UTC).
    enqueued_time: datetime
    #: The generation of the device identity the message was for.
    device_generation_id: str

    @classmethod
    def _from_native(cls, record: C2dFeedbackRecord) -> C2dFeedback:
        return cls(
            original_message_id=record.original_message_id,
            device_id=record.device_id,
            status=record.status,
            description=record.description,
            enqueued_time=datetime.fromtimestamp(record.enqueued_time_ms / 1000, tz=timezone.utc),
            device_generation_id=record.device_generation_id,
        )


@dataclass(frozen=True)
class HubEvent:
    """A device-to-cloud message as the hub's built-in Event Hub-compatible endpoint delivers
    it (what ``azure-eventhub``'s consumer reads), with what Event Hubs and IoT Hub add."""

    partition: str
    sequence_number: int
    offset: str
    enqueued_time: datetime
    device_id: str | None
    body: bytes
    #: The device's application properties.
    properties: dict[str, str]
    #: IoT Hub's ``iothub-*`` annotations (auth method, generation id, enqueued time, source).
    annotations: dict[str, str]
    message_id: str | None = None
    correlation_id: str | None = None
    content_type: str | None = None
    content_encoding: str | None = None
    module_id: str | None = None

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @classmethod
    def _from_native(cls, record: EventRecord) -> HubEvent:
        return cls(
            partition=record.partition,
            sequence_number=record.sequence_number,
            offset=record.offset,
            enqueued_time=datetime.fromtimestamp(record.enqueued_time_ms / 1000, tz=timezone.utc),
            device_id=record.device_id,
            body=record.body,
            properties=dict(record.properties),
            annotations=dict(record.annotations),
            message_id=record.message_id,
            correlation_id=record.correlation_id,
            content_type=record.content_type,
            content_encoding=record.content_encoding,
            module_id=record.module_id,
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
