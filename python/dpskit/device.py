"""A simulated device, the asyncio way: ``await dpskit.provision(...)`` registers it with DPS,
``async with dpskit.HubClient.connect(result, ...)`` connects it to the hub DPS assigned.

Both run on dpskit's Rust MQTT clients (on the tokio runtime all awaitables share, TCP_NODELAY,
TLS trusting the CA each call is given); Python only awaits. Cancelling an awaiting task cancels
the Rust side. Answers arrive as native records (``_native.Registration``) or Python objects,
never as JSON text.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

from dpskit._native import (
    Certificate,
    DeviceCertificate,
    HubSession,
    Registration,
    derive_device_key,
)
from dpskit._native import provision as _provision
from dpskit.cloud import _azure_time
from dpskit.cloud._common import Transport as Transport
from dpskit.errors import ConfigError
from dpskit.provisioning import _endpoint

__all__ = [
    "AZURE_GLOBAL_ENDPOINT",
    "CloudMessage",
    "HubClient",
    "MethodRequest",
    "RegistrationResult",
    "SupportsNow",
    "provision",
    "provision_sync",
]

#: Where devices provision on Azure.
AZURE_GLOBAL_ENDPOINT = "global.azure-devices-provisioning.net"
#: DPS and IoT Hub speak MQTT over TLS on this port.
MQTT_PORT = 8883

_T = TypeVar("_T")

CertificateInput = DeviceCertificate | tuple[str | bytes | Path, str | bytes | Path] | bytes


def _pem_or_path(value: str | bytes | Path) -> str | bytes:
    if isinstance(value, Path):
        return value.read_bytes()
    if isinstance(value, str) and "-----BEGIN" not in value:
        return Path(value).read_bytes()
    return value


def _device_certificate(value: CertificateInput, password: str | None) -> DeviceCertificate:
    """A DeviceCertificate from what users have: the object, (certificate, key) as PEM text,
    bytes or file paths, or a PKCS#12 blob (with ``password``)."""
    if isinstance(value, DeviceCertificate):
        return value
    if isinstance(value, bytes):
        return DeviceCertificate.from_pkcs12(value, password or "")
    if isinstance(value, tuple) and len(value) == 2:
        cert, key = (_pem_or_path(v) for v in value)
        return DeviceCertificate.from_pem(cert, key, password=password)
    raise ConfigError(
        "certificate must be a DeviceCertificate, (certificate, key) PEM or paths, or PKCS#12 bytes"
    )


def _trust_pem(trust: str | Path | None) -> str | None:
    """PEM text, a PEM file, or ``None`` for the system roots (Azure)."""
    if trust is None:
        return None
    if isinstance(trust, Path) or "-----BEGIN" not in trust:
        return Path(trust).read_text()
    return trust


def _timestamp(text: str | None) -> datetime | None:
    return _azure_time(text) if text else None


class SupportsNow(Protocol):
    """A clock: anything with ``now()`` returning an aware datetime, such as a
    :class:`~dpskit.LocalCloud` (whose time :meth:`~dpskit.LocalCloud.advance_time` moves)."""

    def now(self) -> datetime: ...


def _clock_offset_ms(clock: SupportsNow | None) -> int:
    """How far ``clock`` is ahead of the wall clock, in ms: the device signs its SAS tokens in
    its cloud's time."""
    if clock is None:
        return 0
    now = clock.now()
    if now.tzinfo is None:
        raise ConfigError("the clock's now() must be timezone-aware")
    return round((now - datetime.now(timezone.utc)).total_seconds() * 1000)


CsrInput = bool | bytes | str | Path


def _csr_bytes(csr: CsrInput | None) -> bytes | None:
    """The CSR a caller gave (PEM or DER bytes, PEM text or a file), ``None`` for
    ``True``/``None`` (dpskit makes one)."""
    if csr is None or isinstance(csr, bool):
        return None
    value = _pem_or_path(csr)
    return value.encode() if isinstance(value, str) else value


@dataclass(frozen=True)
class RegistrationResult:
    """What DPS answered: where the device goes, as which device id."""

    status: str
    registration_id: str
    assigned_hub: str | None
    device_id: str | None
    substatus: str | None
    etag: str | None
    created: datetime | None
    last_updated: datetime | None
    payload: Any
    operation_id: str
    #: The port the device used; its hub listens on the same one (on Azure 8883 for MQTT over
    #: TLS, 443 over WebSockets).
    port: int = MQTT_PORT
    #: How the device reached DPS (``"mqtt"`` or ``"websockets"``): :meth:`HubClient.connect`
    #: goes to the hub the same way.
    transport: Transport = "mqtt"
    #: The HTTP proxy it went through, if any (not shown: its URL may hold a password).
    proxy: str | None = field(default=None, repr=False)
    #: The operational certificate DPS issued for the CSR (``provision(..., csr=...)``) with
    #: the CSR's key and its issuers (issuing CA, root): what :meth:`HubClient.connect` uses
    #: when given no credential. ``None`` without a CSR, or when the CSR's key is not known.
    issued_certificate: DeviceCertificate | None = field(default=None, repr=False)
    #: The certificates DPS issued, leaf first up to the root (checked: for the CSR's key,
    #: CN = registration id, each issued by the next). Empty without a CSR.
    issued_chain: tuple[Certificate, ...] = field(default=(), repr=False)
    #: How far the device's clock was ahead of the wall clock (``provision(clock=...)``), in
    #: ms: the hub connection signs its tokens in the same time.
    clock_offset_ms: int = field(default=0, repr=False)

    @classmethod
    def _from_native(
        cls,
        record: Registration,
        port: int,
        transport: Transport = "mqtt",
        proxy: str | None = None,
        clock_offset_ms: int = 0,
    ) -> RegistrationResult:
        return cls(
            status=record.status,
            registration_id=record.registration_id,
            assigned_hub=record.assigned_hub,
            device_id=record.device_id,
            substatus=record.substatus,
            etag=record.etag,
            created=_timestamp(record.created),
            last_updated=_timestamp(record.last_updated),
            payload=record.payload,
            operation_id=record.operation_id,
            port=port,
            transport=transport,
            proxy=proxy,
            issued_certificate=record.issued_certificate,
            issued_chain=tuple(record.issued_chain),
            clock_offset_ms=clock_offset_ms,
        )


async def provision(
    endpoint: str = AZURE_GLOBAL_ENDPOINT,
    *,
    id_scope: str,
    certificate: CertificateInput | None = None,
    certificate_password: str | None = None,
    symmetric_key: str | None = None,
    group_key: str | None = None,
    registration_id: str | None = None,
    trust: str | Path | None = None,
    payload: Any = None,
    timeout: float = 60.0,
    transport: Transport = "mqtt",
    proxy: str | None = None,
    csr: CsrInput | None = None,
    key: str | bytes | Path | None = None,
    key_algorithm: str = "ec-p256",
    clock: SupportsNow | None = None,
) -> RegistrationResult:
    """Register a device with DPS over MQTT and wait for its assignment.

    ``endpoint`` is ``host`` or ``host:port`` (the emulator's ``dps.device_endpoint``, or
    ``dps.websocket_endpoint`` over WebSockets). ``transport="websockets"`` carries MQTT in a
    WebSocket on port 443 (``wss://host/$iothub/websocket``) for networks that let only HTTPS
    out; ``proxy="http://[user:password@]host:port"`` tunnels the connection through an HTTP
    proxy (CONNECT; TLS stays end to end), over either transport.
    Credentials: ``certificate`` (its CN is the registration id; the chain is sent when the
    certificate knows it), or a symmetric key: the device's own ``symmetric_key``, or the
    enrollment group's ``group_key`` from which the device key is derived. ``trust`` is the
    server's CA (PEM text or file; the emulator's ``trust_pem``), or ``None`` for the system
    roots. Refusals raise ``RegistrationFailedError`` or ``AuthenticationError`` with Azure's
    code and, when the device can tell, the likely cause; the deadline raises
    ``OperationTimeoutError``.

    Certificates issued by DPS (Azure's certificate management preview): ``csr=True`` makes a
    new ``key_algorithm`` key (``ec-p256``, ``ec-p384``, ``rsa-2048``; or uses ``key``) and a CSR
    with CN = the registration id; ``csr`` may also be your own CSR (PEM or DER bytes, PEM text
    or a file) with its ``key`` when you have it. The onboarding credential stays the
    certificate or symmetric key above. The result's ``issued_certificate`` is the issued
    chain with the key, ready for :meth:`HubClient.connect`; an enrollment without a
    certificate policy raises ``ProtocolError``. ``clock`` (a :class:`~dpskit.LocalCloud`, or
    anything with ``now()``) is the time the device signs its SAS tokens in.
    """
    host, port = _endpoint(endpoint, transport)
    device = (
        _device_certificate(certificate, certificate_password) if certificate is not None else None
    )
    if device is not None:
        if symmetric_key is not None or group_key is not None:
            raise ConfigError("give a certificate or a symmetric key, not both")
        registration_id = registration_id or device.registration_id
    else:
        if registration_id is None:
            raise ConfigError("a symmetric-key device needs its registration_id")
        if group_key is not None:
            if symmetric_key is not None:
                raise ConfigError("give symmetric_key or group_key, not both")
            symmetric_key = derive_device_key(group_key, registration_id)
        if symmetric_key is None:
            raise ConfigError("give a certificate, a symmetric_key, or a group_key")
    if csr is False:
        csr = None
    if csr is None and key is not None:
        raise ConfigError("key is the private key of a CSR: pass csr=True or your CSR too")
    offset = _clock_offset_ms(clock)
    record = await _provision(
        host,
        port,
        id_scope,
        registration_id,
        certificate=device,
        symmetric_key=symmetric_key,
        trust_pem=_trust_pem(trust),
        payload=payload,
        timeout=timeout,
        transport=transport,
        proxy=proxy,
        csr=_csr_bytes(csr),
        csr_key=_csr_bytes(key),
        key_algorithm=key_algorithm if csr is not None else None,
        clock_offset_ms=offset,
    )
    return RegistrationResult._from_native(record, port, transport, proxy, offset)


def provision_sync(endpoint: str = AZURE_GLOBAL_ENDPOINT, **options: Any) -> RegistrationResult:
    """:func:`provision` for scripts without an event loop (``asyncio.run`` around it)."""
    return asyncio.run(provision(endpoint, **options))


@dataclass(frozen=True)
class CloudMessage:
    """A cloud-to-device message."""

    body: bytes
    properties: dict[str, str]
    system_properties: dict[str, str]

    @property
    def message_id(self) -> str | None:
        """``$.mid``."""
        return self.system_properties.get("mid")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True)
class MethodRequest:
    """A direct method call; answer it with :meth:`respond` (once)."""

    name: str
    payload: Any
    rid: str
    _session: HubSession = field(repr=False, compare=False)

    async def respond(self, status: int = 200, payload: Any = None) -> None:
        """Send the answer the caller is waiting for."""
        await self._session.respond(self.rid, status, payload)


def _encode_body(
    body: bytes | str | dict[str, Any] | list[Any],
    content_type: str | None,
    content_encoding: str | None,
) -> tuple[bytes, str | None, str | None]:
    if isinstance(body, dict | list):
        # Routing queries on the body need these two, as Azure documents.
        return (
            json.dumps(body).encode(),
            content_type or "application/json",
            content_encoding or "utf-8",
        )
    if isinstance(body, str):
        return body.encode(), content_type, content_encoding or "utf-8"
    return bytes(body), content_type, content_encoding


async def _stream(next_item: Callable[[], Awaitable[_T | None]]) -> AsyncIterator[_T]:
    while True:
        item = await next_item()
        if item is None:
            return
        yield item


class HubClient:
    """A device connected to its IoT hub over MQTT (X.509 or SAS).

    ``async with HubClient.connect(result, certificate=dev, trust=cloud.trust_pem) as client:``
    """

    def __init__(self, session: HubSession) -> None:
        self._session = session

    @classmethod
    def connect(
        cls,
        target: RegistrationResult | str,
        *,
        device_id: str | None = None,
        certificate: CertificateInput | None = None,
        certificate_password: str | None = None,
        symmetric_key: str | None = None,
        trust: str | Path | None = None,
        keep_alive: int = 60,
        timeout: float = 30.0,
        transport: Transport | None = None,
        proxy: str | None = None,
        certificate_renewal: bool | None = None,
        clock: SupportsNow | None = None,
    ) -> _Connecting:
        """Connect to ``target``: a :class:`RegistrationResult` (its assigned hub, device id,
        port, transport and proxy) or a hub host name (``host[:port]``, with ``device_id``).
        Use with ``async with``, or ``await`` it (then :meth:`close` it). ``keep_alive``
        (seconds) is clamped to IoT Hub's largest, 1,177. ``transport`` (``"mqtt"`` or
        ``"websockets"``) and ``proxy`` are as for :func:`provision`; with a registration they
        default to the way it went.

        A registration that was issued a certificate connects with it when given no
        credential. ``certificate_renewal`` connects on IoT Hub's certificate-management
        api-version so that :meth:`renew_certificate` works; it defaults to on for an issued
        certificate, off otherwise (the connection then stays what the official SDKs send).
        ``clock`` signs SAS tokens in a local cloud's time (a registration's own by default)."""
        clock_offset_ms = _clock_offset_ms(clock)
        issued: DeviceCertificate | None = None
        provisioned_with_csr = False
        if isinstance(target, RegistrationResult):
            issued = target.issued_certificate
            provisioned_with_csr = bool(target.issued_chain)
            if clock is None:
                clock_offset_ms = target.clock_offset_ms
            if certificate is None and symmetric_key is None and issued is not None:
                certificate = issued
            if target.assigned_hub is None or target.device_id is None:
                raise ConfigError(f"registration {target.registration_id} has no assigned hub")
            transport = transport or target.transport
            proxy = proxy or target.proxy
            host, port = target.assigned_hub, target.port
            if transport != target.transport:
                # Another transport: the hub's port for it, not the one DPS was reached on.
                port = _endpoint(host, transport)[1]
            device_id = device_id or target.device_id
        else:
            transport = transport or "mqtt"
            host, port = _endpoint(target, transport)
        device = (
            _device_certificate(certificate, certificate_password)
            if certificate is not None
            else None
        )
        if device_id is None:
            if device is None:
                raise ConfigError("device_id is needed with a hub host name")
            device_id = device.registration_id
        if (device is None) == (symmetric_key is None):
            raise ConfigError("give a certificate or a symmetric_key")
        if certificate_renewal is None:
            # A device DPS issued a certificate to renews it, whichever it now holds (the
            # issued one, or one renewed since).
            certificate_renewal = device is not None and provisioned_with_csr
        pending = HubSession.connect(
            host,
            port,
            device_id,
            certificate=device,
            symmetric_key=symmetric_key,
            trust_pem=_trust_pem(trust),
            keep_alive=keep_alive,
            timeout=timeout,
            transport=transport,
            proxy=proxy,
            certificate_renewal=certificate_renewal,
            clock_offset_ms=clock_offset_ms,
        )
        return _Connecting(cls, pending)

    @property
    def device_id(self) -> str:
        """The device id in the hub."""
        return self._session.device_id

    @property
    def connection_state(self) -> str:
        """``connected``, ``reconnecting`` (lost; dialling again with backoff, messages not
        acknowledged are sent again) or ``closed``."""
        return self._session.connection_state

    async def send_telemetry(
        self,
        body: bytes | str | dict[str, Any] | list[Any],
        properties: dict[str, str] | None = None,
        *,
        content_type: str | None = None,
        content_encoding: str | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """Send one message at QoS 1; returns once the hub acknowledged it. A dict or list is
        sent as JSON (``application/json``, ``utf-8``), a str as UTF-8, bytes as they are.

        A message over IoT Hub's 256 KB (body and properties) raises :class:`ConfigError` at
        once, before it is sent; the connection is unaffected."""
        data, content_type, content_encoding = _encode_body(body, content_type, content_encoding)
        await self._session.send_telemetry(
            data,
            properties=[(str(k), str(v)) for k, v in (properties or {}).items()],
            content_type=content_type,
            content_encoding=content_encoding,
            message_id=message_id,
            correlation_id=correlation_id,
        )

    async def get_twin(self) -> dict[str, Any]:
        """The twin as the device sees it: ``desired`` and ``reported``, with ``$version``."""
        return await self._session.get_twin()

    async def update_reported(self, patch: dict[str, Any]) -> None:
        """Patch the reported properties (``None`` deletes one)."""
        await self._session.update_reported(patch)

    async def messages(self) -> AsyncIterator[CloudMessage]:
        """Cloud-to-device messages as they arrive (ends when the connection closes)."""
        async for body, properties, system_properties in _stream(self._session.next_message):
            yield CloudMessage(
                body=body, properties=dict(properties), system_properties=dict(system_properties)
            )

    async def desired_updates(self) -> AsyncIterator[dict[str, Any]]:
        """Desired-property patches (with ``$version``) as the service makes them."""
        async for patch in _stream(self._session.next_desired):
            yield patch

    async def method_requests(self) -> AsyncIterator[MethodRequest]:
        """Direct method calls; answer each with ``await request.respond(status, payload)``."""
        async for name, rid, payload in _stream(self._session.next_method):
            yield MethodRequest(name, payload, rid, self._session)

    async def renew_certificate(
        self, *, key_algorithm: str | None = None, replace: str | None = None
    ) -> DeviceCertificate:
        """Renew the device's certificate through its hub (IoT Hub's ``$iothub/credentials``):
        a new key (``key_algorithm``, else the current certificate's) and a CSR with CN = the
        device id; returns the new credential (key + issued chain, checked). The connection
        stays up on the old certificate, which stays valid until it expires; connect again with
        the new one. Needs a client connected with ``certificate_renewal`` (the default for an
        issued certificate). Refusals: ``ConflictError`` while another request is pending (it
        names it; ``replace="*"`` or its id cancels it), ``ThrottledError``, ``ServiceError``
        for a CSR the hub rejects; ``OperationTimeoutError`` after 3 minutes without the
        certificate."""
        return await self._session.renew_certificate(key_algorithm=key_algorithm, replace=replace)

    async def close(self) -> None:
        """Disconnect cleanly."""
        await self._session.close()

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class _Connecting:
    """What :meth:`HubClient.connect` returns: await it, or use it with ``async with``."""

    def __init__(self, cls: type[HubClient], pending: Awaitable[HubSession]) -> None:
        self._cls = cls
        self._pending = pending
        self._client: HubClient | None = None

    async def _open(self) -> HubClient:
        self._client = self._cls(await self._pending)
        return self._client

    def __await__(self) -> Generator[Any, None, HubClient]:
        return self._open().__await__()

    async def __aenter__(self) -> HubClient:
        return await self._open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()
