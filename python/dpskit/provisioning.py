"""Provisioning devices through DPS from Python (the bulk form; the per-device async client
arrives with the device-client work)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dpskit._native import DeviceCertificate, transport_port
from dpskit._native import provision_devices as _provision_devices
from dpskit.cloud import Dps
from dpskit.errors import ConfigError

if TYPE_CHECKING:
    from dpskit.device import RegistrationResult

__all__ = ["ProvisioningOutcome", "provision_devices"]


@dataclass(frozen=True)
class ProvisioningOutcome:
    """How one device's registration went."""

    registration_id: str
    assigned_hub: str | None
    device_id: str | None
    substatus: str | None
    error: str | None
    error_code: int | None
    seconds: float
    #: DPS's whole answer when it assigned the device (what ``provision`` returns, ready for
    #: ``HubClient.connect``), else ``None``.
    result: RegistrationResult | None = None

    @property
    def ok(self) -> bool:
        """Whether DPS assigned the device."""
        return self.error is None


def _endpoint(endpoint: str, transport: str = "mqtt") -> tuple[str, int]:
    """``host`` or ``host:port``; without a port, Azure's for ``transport`` (8883 for MQTT over
    TLS, 443 over WebSockets)."""
    host, sep, port = endpoint.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return endpoint, transport_port(transport)


def provision_devices(
    target: Dps | str,
    devices: Sequence[DeviceCertificate],
    *,
    id_scope: str | None = None,
    trust: str | None = None,
    concurrency: int = 64,
    timeout: float = 60.0,
) -> list[ProvisioningOutcome]:
    """Register ``devices`` (X.509) with DPS, ``concurrency`` at a time, on Rust's runtime.

    ``target`` is a :class:`~dpskit.Dps` (endpoint, scope and trust are taken from it) or a DPS
    endpoint ``host[:port]`` with ``id_scope``. ``trust`` is the PEM of the CA that signed the
    server certificate (the emulator's ``trust_pem``), or ``None`` for the system roots (Azure).
    Results keep the order of ``devices``; failures are reported per device.
    """
    if isinstance(target, Dps):
        host, port = target.device_host, target.device_port
        id_scope = id_scope or target.id_scope
        trust = trust or target._cloud.trust_pem
    else:
        host, port = _endpoint(target)
    if id_scope is None:
        raise ConfigError("id_scope is needed when target is an endpoint string")
    if concurrency < 1:
        raise ConfigError("concurrency must be at least 1")
    # Imported here: dpskit.device imports this module.
    from dpskit.device import RegistrationResult

    outcomes = []
    native = _provision_devices(
        host, port, id_scope, list(devices), trust, concurrency=concurrency, timeout=timeout
    )
    for device, (registration, error, error_code, seconds) in zip(devices, native, strict=True):
        result = (
            RegistrationResult._from_native(registration, port)
            if registration is not None
            else None
        )
        outcomes.append(
            ProvisioningOutcome(
                registration_id=device.registration_id,
                assigned_hub=result.assigned_hub if result else None,
                device_id=result.device_id if result else None,
                substatus=result.substatus if result else None,
                error=error,
                error_code=error_code,
                seconds=seconds,
                result=result,
            )
        )
    return outcomes
