"""``Hub``: one IoT hub, its ARM identity and keys, and its service API (devices, twins,
direct methods, telemetry), its cloud-to-device messages and their feedback (over AMQP), plus
the emulator's knobs for it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from dpskit._native import (
    C2dSender,
    HubRecord,
    open_event_stream,
    open_feedback_stream,
    read_retained_events,
    validate_registration_id,
    wait_for_feedback,
)
from dpskit.cloud._common import (
    WEB_PORT,
    CertificateLike,
    _certificate,
    _generated_key,
)
from dpskit.cloud.records import (
    C2dFeedback,
    HubDevice,
    HubEvent,
    HubUsage,
    MethodResult,
    TelemetryMessage,
    TelemetryRecords,
    _twin_document,
)
from dpskit.errors import ConfigError

if TYPE_CHECKING:
    from dpskit.cloud.base import _Cloud


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
        #: Partitions of the built-in Event Hub-compatible endpoint (fixed at creation;
        #: ``None`` when ARM did not describe the endpoint).
        self.partition_count: int | None = resource.partition_count
        #: ``sb://...``: the built-in Event Hub-compatible endpoint, where telemetry is read.
        self.event_hub_endpoint: str | None = resource.event_hub_endpoint
        self._event_hub_path = resource.event_hub_path or self.name
        self._primary_key = key
        self._service_key: str | None = None
        # One AMQP connection for this hub's C2D sends, opened by the first.
        self._c2d_sender: C2dSender | None = None
        # Feedback read by wait_for_feedback about other messages: handed out next.
        self._unclaimed_feedback: list[C2dFeedback] = []

    @property
    def connection_string(self) -> str:
        """The ``iothubowner`` service connection string, as the official service SDKs take it.
        Its ``HostName`` names a port only when the local cloud serves HTTPS elsewhere than on
        443 (see :class:`LocalCloud`)."""
        port = self._cloud._web_port()
        host = self.host_name if port == WEB_PORT else f"{self.host_name}:{port}"
        return (
            f"HostName={host};SharedAccessKeyName=iothubowner;SharedAccessKey={self._primary_key}"
        )

    @property
    def event_hub_connection_string(self) -> str:
        """The built-in Event Hub-compatible endpoint's connection string with the ``service``
        policy, as the portal shows it: what ``azure-eventhub``'s
        ``EventHubConsumerClient.from_connection_string`` (and Spark, Stream Analytics) take to
        read this hub's telemetry. Reads the policy's key from ARM on first use."""
        if self.event_hub_endpoint is None:
            raise ConfigError(
                f"ARM did not describe the events endpoint of IoT hub {self.name} "
                "(properties.eventHubEndpoints.events)"
            )
        if self._service_key is None:
            _, self._service_key = self._cloud._rest.hub_keys(self.name, "service")
        return (
            f"Endpoint={self.event_hub_endpoint};SharedAccessKeyName=service;"
            f"SharedAccessKey={self._service_key};EntityPath={self._event_hub_path}"
        )

    @property
    def _service(self) -> str:
        # The service API is at the connection string's host, on Azure and the local cloud.
        return self.connection_string

    def devices(self) -> list[HubDevice]:
        """The device identities of this hub, in device-id order: one query call per 100
        devices (IoT Hub's query API, as Azure recommends), not a read per device. The list
        carries no keys (``primary_key`` and ``secondary_key`` are ``None``), as the query
        does not; :meth:`device` reads one identity with its keys."""
        return [
            HubDevice._from_native(self.host_name, record)
            for record in self._cloud._rest.hub_device_list(self._service)
        ]

    def query(self, query: str) -> list[dict[str, Any]]:
        """The device twins an IoT Hub query selects, every page of them: ``SELECT * FROM
        devices``, optionally ``WHERE`` comparisons on ``deviceId``, ``status``, tags and
        desired or reported properties, joined by ``AND``, ``OR``, ``NOT``, with
        ``IS_DEFINED(path)``. The local cloud refuses what it does not understand
        (``ServiceError``, 400004) rather than ignoring a clause."""
        return [_twin_document(r) for r in self._cloud._rest.hub_twins(self._service, query)]

    def device(self, device_id: str) -> HubDevice:
        """One device identity."""
        identity = self._cloud._rest.hub_device(self._service, device_id)
        return HubDevice._from_native(self.host_name, identity)

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
        identity = self._cloud._rest.hub_put_device(self._service, device_id, body)
        if initial_twin:
            patch = {
                "tags": initial_twin.get("tags"),
                "properties": {"desired": (initial_twin.get("properties") or {}).get("desired")},
            }
            self._cloud._rest.hub_patch_twin(self._service, device_id, patch)
        return HubDevice._from_native(self.host_name, identity)

    def delete_device(self, device_id: str) -> None:
        """Delete a device identity (its twin and waiting messages go with it)."""
        self._cloud._rest.hub_delete_device(self._service, device_id)

    # -- realism knobs (emulator only) -------------------------------------------------------

    def set_latency(self, seconds: float) -> None:
        """Delay before the hub handles each device message (emulator only)."""
        self._cloud._emulator_only("set_latency").update_hub_knobs(self.host_name, latency=seconds)

    def set_certificate_issuance_delay(self, seconds: float) -> None:
        """How long a certificate renewal waits between the hub's 202 and its 200 (Azure takes
        seconds; the emulator none by default): long enough, a second request meets the first
        one pending (409005). Emulator only."""
        if seconds < 0:
            raise ConfigError(f"seconds must be 0 or more, not {seconds}")
        self._cloud._emulator_only("set_certificate_issuance_delay").update_hub_knobs(
            self.host_name, certificate_issuance_delay_ms=round(seconds * 1000)
        )

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
        return HubUsage._from_native(self._cloud._hub_usage(self))

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
        """What the hub received (every device, or one), in arrival order. The local cloud
        answers from its store (its ``sequence`` counts every message of the hub); on Azure
        it is read from the hub's Event Hub-compatible endpoint (:meth:`retained_events`:
        what is retained, ordered by enqueued time; ``sequence`` is the event's number in its
        partition)."""
        if not self._cloud._has_emulator_api:
            return TelemetryRecords(
                TelemetryMessage._from_event(event)
                for event in self.retained_events()
                if device_id is None or event.device_id == device_id
            )
        records = self._cloud._rest.hub_telemetry(self._service, device_id)
        return TelemetryRecords(TelemetryMessage._from_native(r) for r in records)

    def consumer_groups(self) -> list[str]:
        """The consumer groups of the built-in events endpoint, ``$Default`` first."""
        return self._cloud._rest.consumer_groups(self.name)

    def create_consumer_group(self, name: str) -> None:
        """Adds a consumer group to the built-in events endpoint (ARM), for a reader that
        keeps its own place (Event Hubs' names: 1-50 letters, digits, ``.``, ``-``, ``_``)."""
        self._cloud._rest.create_consumer_group(self.name, name)

    def delete_consumer_group(self, name: str) -> None:
        """Removes a consumer group (``$Default`` cannot be removed)."""
        self._cloud._rest.delete_consumer_group(self.name, name)

    async def events(
        self,
        consumer_group: str = "$Default",
        *,
        starting: Literal["earliest", "latest"] | int | datetime | str = "latest",
        inclusive: bool = False,
        partitions: list[str] | None = None,
    ) -> AsyncGenerator[HubEvent, None]:
        """The hub's telemetry as it arrives, read from its built-in Event Hub-compatible
        endpoint over AMQP as ``azure-eventhub``'s consumer reads it (the local cloud and Azure
        alike), every partition (or ``partitions``) merged.

        ``starting``: ``"earliest"`` (everything retained), ``"latest"`` (only what arrives
        from now on), a sequence number (``int``), an enqueued time (an aware ``datetime``) or
        an offset (``str``); ``inclusive`` reads the event at that position too."""
        kind, value = _start_position(starting)
        stream = await open_event_stream(
            self.event_hub_connection_string,
            self._cloud._amqp_port(),
            self._cloud.trust_pem,
            consumer_group,
            kind,
            value,
            inclusive,
            partitions,
        )
        try:
            # One await per batch of what has arrived, not per event.
            while records := await stream.next_batch():
                for record in records:
                    yield HubEvent._from_native(record)
        finally:
            await stream.close()

    def retained_events(self, consumer_group: str = "$Default") -> list[HubEvent]:
        """Every event the hub's Event Hub-compatible endpoint retains, up to what each
        partition held when the call began, in enqueued order (blocks)."""
        records = read_retained_events(
            self.event_hub_connection_string,
            self._cloud._amqp_port(),
            self._cloud.trust_pem,
            consumer_group,
        )
        return [HubEvent._from_native(r) for r in records]

    def get_twin(self, device_id: str) -> dict[str, Any]:
        """The device twin: tags, desired and reported properties with their versions."""
        return _twin_document(self._cloud._rest.hub_twin(self._service, device_id))

    def update_desired(self, device_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Patch desired properties (``None`` deletes); a connected device subscribed to desired
        patches receives the change."""
        body = {"properties": {"desired": patch}}
        return _twin_document(self._cloud._rest.hub_patch_twin(self._service, device_id, body))

    def update_tags(self, device_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Patch the twin's tags."""
        body = {"tags": patch}
        return _twin_document(self._cloud._rest.hub_patch_twin(self._service, device_id, body))

    def send_c2d(
        self,
        device_id: str,
        body: bytes | str | dict[str, Any] | list[Any],
        *,
        properties: dict[str, str] | None = None,
        ack: Literal["none", "positive", "negative", "full"] | None = None,
        expires_in: float | timedelta | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
    ) -> str:
        """Send a cloud-to-device message and wait until the hub has queued it (at most 50
        wait per device, 64 KB each); returns its message id (``message_id``, else a fresh
        GUID). Sent over AMQP as Azure takes it and the official service SDKs send it
        (``amqps://{host}:5671/messages/devicebound``), on the local cloud and Azure alike; one
        connection per :class:`Hub`, opened by the first send.

        ``ack`` asks for delivery feedback (:meth:`wait_for_feedback`, :meth:`c2d_feedback`):
        ``"positive"`` when the device completes it, ``"negative"`` when it expires or is
        rejected or dead-lettered, ``"full"`` both. ``expires_in`` (seconds or a
        ``timedelta``) is how long the hub keeps it for the device (the hub's default is an
        hour, its longest two days). ``correlation_id``, ``content_type`` and
        ``content_encoding`` reach the device as system properties, ``properties`` as
        application properties. A dict or list body is sent as JSON.

        The hub's refusals raise: an unknown device ``NotFoundError`` (404001), a full queue
        ``ServiceError`` (403004), a message too large ``ServiceError`` (413001), a send past
        the tier's C2D throttle ``ThrottledError`` (429001)."""
        if isinstance(body, dict | list):
            data = json.dumps(body).encode()
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
        if isinstance(expires_in, timedelta):
            expires_in = expires_in.total_seconds()
        pairs = [(str(k), str(v)) for k, v in (properties or {}).items()]
        if self._c2d_sender is None:
            self._c2d_sender = C2dSender(
                self._service, self._cloud._amqp_port(), self._cloud.trust_pem
            )
        return self._c2d_sender.send(
            device_id,
            data,
            pairs,
            ack=ack,
            expires_in=expires_in,
            message_id=message_id,
            correlation_id=correlation_id,
            content_type=content_type,
            content_encoding=content_encoding,
        )

    async def c2d_feedback(self, timeout: float | None = None) -> AsyncGenerator[C2dFeedback, None]:
        """The hub's delivery feedback as it arrives (for messages sent with ``ack``), read over
        AMQP from ``/messages/servicebound/feedback`` as the official service SDKs' feedback
        receivers read it. Each feedback message is accepted once read, so the hub does not
        send it again; one whose body does not read raises ``ProtocolError`` (it is rejected,
        never skipped). ``timeout``: stop after that many seconds without feedback (``None``:
        wait on). Records :meth:`wait_for_feedback` read about other messages come first."""
        while self._unclaimed_feedback:
            yield self._unclaimed_feedback.pop(0)
        stream = await open_feedback_stream(
            self._service, self._cloud._amqp_port(), self._cloud.trust_pem
        )
        try:
            while True:
                try:
                    records = await asyncio.wait_for(stream.next(), timeout)
                except asyncio.TimeoutError:
                    return
                if not records:
                    return
                for record in records:
                    yield C2dFeedback._from_native(record)
        finally:
            await stream.close()

    def wait_for_feedback(self, message_id: str, timeout: float = 30.0) -> C2dFeedback:
        """Wait for the hub's feedback about one message (sent with ``ack``) and return it
        (blocks). Feedback about other messages read meanwhile is kept for the next
        :meth:`wait_for_feedback` or :meth:`c2d_feedback` of this :class:`Hub`. No feedback in
        ``timeout`` seconds raises ``OperationTimeoutError``."""
        for i, kept in enumerate(self._unclaimed_feedback):
            if kept.original_message_id == message_id:
                return self._unclaimed_feedback.pop(i)
        found, others = wait_for_feedback(
            self._service, self._cloud._amqp_port(), self._cloud.trust_pem, message_id, timeout
        )
        self._unclaimed_feedback.extend(C2dFeedback._from_native(r) for r in others)
        return C2dFeedback._from_native(found)

    def invoke_method(
        self, device_id: str, method: str, payload: Any = None, *, timeout: float = 30.0
    ) -> MethodResult:
        """Call a direct method on a connected device and wait for its answer; an offline device
        raises ``NotFoundError`` (404103), no answer in time ``ServiceError`` (504101).
        ``timeout`` may not pass IoT Hub's 300 s (``ConfigError`` before any request)."""
        status, answer = self._cloud._rest.hub_invoke_method(
            self._service, device_id, method, payload, timeout
        )
        return MethodResult(status=status, payload=answer)

    def __repr__(self) -> str:
        return f"<Hub {self.name!r} host_name={self.host_name!r} location={self.location!r}>"


def _start_position(starting: str | int | datetime) -> tuple[str, str]:
    """``(kind, value)`` of a start position, as the native reader takes it."""
    if isinstance(starting, bool):
        raise ConfigError(f"a start position is not a bool: {starting!r}")
    if isinstance(starting, int):
        return "sequence_number", str(starting)
    if isinstance(starting, datetime):
        if starting.tzinfo is None:
            raise ConfigError("an enqueued-time start position needs a timezone-aware datetime")
        return "enqueued_time", str(int(starting.timestamp() * 1000))
    if starting == "earliest":
        return "offset", "-1"
    if starting == "latest":
        return "offset", "@latest"
    return "offset", starting
