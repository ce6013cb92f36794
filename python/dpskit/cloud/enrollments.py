"""Enrollment groups, individual enrollments and registration records: the DPS service
API's model as dataclasses, built from the typed records of ``dpskit._native`` (the Rust core
reads the service's JSON once) and written back in the shape the Azure CLI and the official
SDKs send."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast

from dpskit._native import (
    AttestationRecord,
    EnrollmentGroupRecord,
    EnrollmentSettingsRecord,
    IndividualEnrollmentRecord,
    RegistrationStateRecord,
)
from dpskit.cloud._common import (
    AllocationPolicy,
    CertificateLike,
    ProvisioningStatus,
    _azure_time,
    _certificate,
    _check_key,
    _generated_key,
)
from dpskit.cloud.records import CertificateSummary
from dpskit.errors import ConfigError, ProtocolError


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
    credential_policy: str | None = None
    credential_policy_namespace: str | None = None
    credential_policy_authority: str | None = None

    @classmethod
    def _from_native(cls, settings: EnrollmentSettingsRecord) -> _Settings:
        policy = settings.reprovision_policy
        allocation = settings.allocation
        reference = settings.credential_policy
        return cls(
            provisioning_status=cast(ProvisioningStatus, settings.provisioning_status),
            allocation_policy=cast("AllocationPolicy | None", allocation.policy),
            iot_hubs=tuple(allocation.iot_hubs),
            reprovision_policy=ReprovisionPolicy(
                update_hub_assignment=policy.update_hub_assignment,
                migrate_device_data=policy.migrate_device_data,
            ),
            initial_twin=settings.initial_twin,
            custom_allocation_url=allocation.custom.webhook_url if allocation.custom else None,
            credential_policy=reference.policy if reference else None,
            credential_policy_namespace=reference.namespace if reference else None,
            credential_policy_authority=reference.certificate_authority if reference else None,
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
        if self.credential_policy is not None:
            if self.credential_policy_namespace is None:
                body["credentialPolicyName"] = self.credential_policy
            else:
                # The newer API's three names, which travel together.
                body["namespaceName"] = self.credential_policy_namespace
                body["certificateAuthorityName"] = self.credential_policy_authority or "default"
                body["certificatePolicyName"] = self.credential_policy
        return body


@dataclass(frozen=True)
class _Attestation:
    type: Literal["x509", "symmetricKey"]
    ca_references: tuple[str, ...] = ()
    certificates: tuple[CertificateSummary, ...] = ()
    primary_key: str | None = field(default=None, repr=False)
    secondary_key: str | None = field(default=None, repr=False)

    @classmethod
    def _from_native(cls, record: AttestationRecord, what: str) -> _Attestation:
        if record.kind == "x509":
            summaries: list[CertificateSummary] = []
            for info in (record.primary_certificate, record.secondary_certificate):
                if info is None:
                    continue
                summary = CertificateSummary._from_native(info)
                # Azure repeats the primary as the secondary when only one was given.
                if all(s.thumbprint != summary.thumbprint for s in summaries):
                    summaries.append(summary)
            return cls(
                type="x509",
                ca_references=tuple(
                    r for r in (record.primary_ca_reference, record.secondary_ca_reference) if r
                ),
                certificates=tuple(summaries),
            )
        if record.kind == "symmetricKey":
            return cls(
                type="symmetricKey",
                primary_key=record.primary_key,
                secondary_key=record.secondary_key,
            )
        raise ProtocolError(f"{what} attests by {record.kind}, which dpskit does not model")


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
    credential_policy: str | None
    """The Device Registry credential policy that issues the devices' certificates when they
    register with a CSR (``None``: none is issued)."""
    credential_policy_namespace: str | None
    """The policy's namespace when the enrollment names it (the newer API's three names);
    ``None`` for the preview's one name, resolved in the DPS's linked namespace."""
    credential_policy_authority: str | None
    """The issuing CA the three names give (``None`` for the one-name form)."""
    etag: str
    created: datetime
    updated: datetime

    @staticmethod
    def _common(
        record: EnrollmentGroupRecord | IndividualEnrollmentRecord, attestation: _Attestation
    ) -> dict[str, Any]:
        """The shared fields, from the record of either kind."""
        settings = _Settings._from_native(record.settings)
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
            "credential_policy": settings.credential_policy,
            "credential_policy_namespace": settings.credential_policy_namespace,
            "credential_policy_authority": settings.credential_policy_authority,
            "etag": record.etag,
            "created": _azure_time(record.created),
            "updated": _azure_time(record.updated),
        }

    def _settings(self) -> _Settings:
        return _Settings(
            provisioning_status=self.provisioning_status,
            allocation_policy=self.allocation_policy,
            iot_hubs=self.iot_hubs,
            reprovision_policy=self.reprovision_policy,
            initial_twin=self.initial_twin,
            custom_allocation_url=self.custom_allocation_url,
            credential_policy=self.credential_policy,
            credential_policy_namespace=self.credential_policy_namespace,
            credential_policy_authority=self.credential_policy_authority,
        )


@dataclass(frozen=True, kw_only=True)
class EnrollmentGroup(_EnrollmentCommon):
    """An enrollment group: every device whose chain reaches its CA (or whose key derives from
    its group key) may register."""

    enrollment_group_id: str
    ca_references: tuple[str, ...]
    signing_certificates: tuple[CertificateSummary, ...]

    @classmethod
    def _from_native(cls, record: EnrollmentGroupRecord) -> EnrollmentGroup:
        what = f"enrollment group {record.enrollment_group_id!r}"
        attestation = _Attestation._from_native(record.attestation, what)
        return cls(
            enrollment_group_id=record.enrollment_group_id,
            ca_references=attestation.ca_references,
            signing_certificates=attestation.certificates,
            **cls._common(record, attestation),
        )


@dataclass(frozen=True, kw_only=True)
class Enrollment(_EnrollmentCommon):
    """An individual enrollment: one device, by its certificate or its own symmetric key."""

    registration_id: str
    device_id: str | None
    certificates: tuple[CertificateSummary, ...]

    @classmethod
    def _from_native(cls, record: IndividualEnrollmentRecord) -> Enrollment:
        what = f"enrollment {record.registration_id!r}"
        attestation = _Attestation._from_native(record.attestation, what)
        return cls(
            registration_id=record.registration_id,
            device_id=record.device_id,
            certificates=attestation.certificates,
            **cls._common(record, attestation),
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
    def _from_native(
        cls,
        record: RegistrationStateRecord,
        *,
        enrollment_group_id: str | None,
        attestation: Literal["x509", "symmetricKey"],
    ) -> RegistrationRecord:
        return cls(
            registration_id=record.registration_id,
            status=record.status,
            assigned_hub=record.assigned_hub,
            device_id=record.device_id,
            substatus=record.substatus,
            enrollment_group_id=enrollment_group_id,
            attestation=attestation,
            error_code=record.error_code,
            error_message=record.error_message,
            created=_azure_time(record.created),
            last_updated=_azure_time(record.last_updated),
            etag=record.etag,
            payload=record.payload,
        )
