"""Azure Device Registry (ADR) as its certificate management preview models it: a namespace
with its credential's root CA, and the credential policies below it (an issuing CA each, and
the days the device certificates it issues are valid). A DPS linked to a namespace issues
certificates through the policy its enrollments name; a hub linked to it trusts the devices
those certificates identify. Made through ARM (``Microsoft.DeviceRegistry``, api-version
2025-11-01-preview) on the local cloud and Azure alike; the CA certificates themselves are
known on the local cloud only (ARM does not publish them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from dpskit._native import Certificate, CredentialPolicyRecord, NamespaceRecord
from dpskit.cloud._common import _azure_time
from dpskit.errors import ConfigError

if TYPE_CHECKING:
    from dpskit.cloud.base import _Cloud

#: Days a policy's issued certificates are valid unless asked otherwise (Azure's default).
DEFAULT_VALIDITY_DAYS = 30


def _time(text: str | None) -> datetime | None:
    return _azure_time(text) if text else None


@dataclass(frozen=True)
class CredentialPolicy:
    """A namespace's credential policy: the device certificates it issues are valid
    ``validity_days``; ``issuing_ca`` (the local cloud only) is the CA that signs them, which
    linked hubs trust."""

    namespace: str
    name: str
    resource_id: str
    validity_days: int
    key_type: str
    subject: str | None
    """The issuing CA's subject, as ARM reports it."""
    not_before: datetime | None
    """The issuing CA's validity start."""
    not_after: datetime | None
    """The issuing CA's validity end."""
    issuing_ca: Certificate | None

    @classmethod
    def _from_native(
        cls, namespace: str, record: CredentialPolicyRecord, issuing_ca: Certificate | None
    ) -> CredentialPolicy:
        return cls(
            namespace=namespace,
            name=record.name,
            resource_id=record.id,
            validity_days=record.validity_days,
            key_type=record.key_type,
            subject=record.subject,
            not_before=_time(record.not_before),
            not_after=_time(record.not_after),
            issuing_ca=issuing_ca,
        )


class DeviceRegistryNamespace:
    """An Azure Device Registry namespace: its root CA (``root_ca``, the local cloud only) and
    its credential policies."""

    def __init__(self, cloud: _Cloud, record: NamespaceRecord) -> None:
        self._cloud = cloud
        self.name: str = record.name
        self.location: str = record.location
        self.resource_id: str = record.id
        self.uuid: str = record.uuid
        self.root_ca: Certificate | None = cloud._registry_certificate(record.name, None)

    def create_policy(
        self, name: str, validity_days: int = DEFAULT_VALIDITY_DAYS, key_type: str = "ECC"
    ) -> CredentialPolicy:
        """Create a credential policy (or set the validity of the existing one): its issuing
        CA (``key_type`` ``"ECC"``, the one the preview documents) signs device certificates
        valid ``validity_days`` (7 to 90; others raise ``ConfigError`` before any request).
        Hubs linked to the namespace trust the new CA at once."""
        if not isinstance(validity_days, int) or isinstance(validity_days, bool):
            raise ConfigError("validity_days must be a whole number of days")
        rest = self._cloud._rest
        record = rest.create_credential_policy(self.name, name, validity_days, key_type)
        return self._policy(record)

    def policy(self, name: str) -> CredentialPolicy:
        """A credential policy of this namespace."""
        return self._policy(self._cloud._rest.credential_policy(self.name, name))

    def policies(self) -> list[CredentialPolicy]:
        """Every credential policy of this namespace."""
        return [self._policy(r) for r in self._cloud._rest.credential_policies(self.name)]

    def _policy(self, record: CredentialPolicyRecord) -> CredentialPolicy:
        issuing = self._cloud._registry_certificate(self.name, record.name)
        return CredentialPolicy._from_native(self.name, record, issuing)

    def __repr__(self) -> str:
        return f"DeviceRegistryNamespace(name={self.name!r}, location={self.location!r})"
