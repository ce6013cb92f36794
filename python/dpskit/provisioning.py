"""Provisioning devices through DPS from Python (the bulk form; the per-device async client
arrives with the device-client work)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from dpskit._native import DeviceCertificate
from dpskit._native import provision_devices as _provision_devices
from dpskit.cloud import DEFAULT_MQTT_PORT, Dps
from dpskit.errors import ConfigError

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

    @property
    def ok(self) -> bool:
        """Whether DPS assigned the device."""
        return self.error is None


def _endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return endpoint, DEFAULT_MQTT_PORT


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
    records = json.loads(
        _provision_devices(
            host, port, id_scope, list(devices), trust, concurrency=concurrency, timeout=timeout
        )
    )
    outcomes = []
    for device, record in zip(devices, records, strict=True):
        outcomes.append(
            ProvisioningOutcome(
                registration_id=device.registration_id,
                assigned_hub=record.get("assignedHub"),
                device_id=record.get("deviceId"),
                substatus=record.get("substatus"),
                error=None if record["ok"] else record["error"],
                error_code=record.get("errorCode"),
                seconds=record["seconds"],
            )
        )
    return outcomes
