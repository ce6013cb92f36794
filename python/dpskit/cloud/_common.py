"""What every part of :mod:`dpskit.cloud` shares: the literal types of its settings, the MQTT
port, Azure's time formats, certificates given in any form, and the resource-name and key
rules (those run in Rust, through ``dpskit._native``)."""

from __future__ import annotations

import base64
import email.utils
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Literal

from dpskit._native import (
    Certificate,
    CertificateAuthority,
    DeviceCertificate,
    generate_symmetric_key,
    validate_resource_name,
    validate_symmetric_key,
)

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

#: HTTPS and MQTT over WebSockets, on each resource's address, as Azure serves them.
WEB_PORT = 443

#: How a device reaches DPS and its hub: MQTT over TLS (port 8883) or over WebSockets (443).
Transport = Literal["mqtt", "websockets"]


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


def _generated_key() -> str:
    return generate_symmetric_key()
