"""``Dps``: one Device Provisioning Service instance: its CA certificates and proof of
possession and its linked hubs (ARM), its enrollments and registrations (the DPS service
API), plus the emulator's knobs for it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dpskit._native import (
    AttestationRecord,
    CertificateAuthority,
    DpsRecord,
    RestClient,
    validate_registration_id,
)
from dpskit.cloud._common import (
    DEFAULT_MQTT_PORT,
    WEB_PORT,
    AllocationPolicy,
    CertificateLike,
    CustomAllocation,
    ProvisioningStatus,
    _certificate,
    _check_resource_name,
)
from dpskit.cloud.enrollments import (
    Enrollment,
    EnrollmentGroup,
    RegistrationRecord,
    ReprovisionPolicy,
    _attestation_json,
    _Settings,
)
from dpskit.cloud.hub import Hub
from dpskit.cloud.records import CaCertificateInfo, LinkedHub
from dpskit.errors import ConfigError, EmulatorError, NotFoundError

if TYPE_CHECKING:
    from dpskit.cloud.base import _Cloud


def _hub_host(hub: Hub | str) -> str:
    return hub.host_name if isinstance(hub, Hub) else hub


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
    def _service(self) -> str:
        # The service API is at the connection string's host, on Azure and the local cloud.
        return self.service_connection_string

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
    def websocket_endpoint(self) -> str:
        """``host`` (or ``host:port`` when the web port is not 443): pass it to ``provision``
        with ``transport="websockets"``; with 443, the official SDK's ``provisioning_host``
        with ``websockets=True``."""
        port = self._cloud._web_port()
        return self.device_host if port == WEB_PORT else f"{self.device_host}:{port}"

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
        credential_policy: str | None = None,
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
            credential_policy=credential_policy,
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

    def _put_group(
        self,
        group_id: str,
        body: dict[str, Any],
        etag: str | None,
        attestation: AttestationRecord | None = None,
    ) -> EnrollmentGroup:
        record = self._rest.put_enrollment_group(
            self._service, group_id, {"enrollmentGroupId": group_id, **body}, etag, attestation
        )
        return EnrollmentGroup._from_native(record)

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
        credential_policy: str | None = None,
    ) -> EnrollmentGroup:
        """Create (or replace) an enrollment group.

        X.509 groups name an uploaded CA (``ca_reference``) or carry the CA certificate itself
        (``signing_certificate``); symmetric-key groups get generated keys unless given.
        ``custom_allocation`` (a webhook URL or a callable) implies
        ``allocation_policy="custom"``. ``credential_policy`` names the Device Registry
        credential policy (in the namespace this DPS is linked to) that issues certificates to
        devices registering with a CSR; DPS refuses it (``ServiceError``, 400004) when the DPS
        has no namespace or the namespace no such policy.
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
            credential_policy=credential_policy,
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
        record = self._rest.enrollment_group(self._service, enrollment_group_id)
        group = EnrollmentGroup._from_native(record)
        current = group._settings()
        settings = _Settings(
            provisioning_status=provisioning_status or current.provisioning_status,
            allocation_policy=allocation_policy or current.allocation_policy,
            iot_hubs=tuple(_hub_host(h) for h in hubs) if hubs is not None else current.iot_hubs,
            reprovision_policy=reprovision_policy or current.reprovision_policy,
            initial_twin=initial_twin if initial_twin is not None else current.initial_twin,
            custom_allocation_url=current.custom_allocation_url,
            credential_policy=current.credential_policy,
            credential_policy_namespace=current.credential_policy_namespace,
            credential_policy_authority=current.credential_policy_authority,
        )
        # Azure requires the attestation in every PUT (400 without it). Re-send the group's
        # own, as `az iot dps enrollment-group update` does: the GET's (a CA reference, or
        # certificate info that means "keep the certificates"), or for symmetric keys the
        # attestation mechanism, which carries the keys a GET may leave out. The record keeps
        # the mechanism as read, and the core sends it back unchanged.
        attestation = record.attestation
        if attestation.kind == "symmetricKey":
            attestation = self._rest.enrollment_group_attestation(
                self._service, enrollment_group_id
            )
        body = settings._to_json()
        # A PUT replaces the group: what dpskit does not model (IoT Edge capabilities) is sent
        # back as read, or the update would reset it.
        capabilities = record.settings.capabilities
        if capabilities is not None:
            body["capabilities"] = {"iotEdge": capabilities.iot_edge}
        return self._put_group(enrollment_group_id, body, group.etag, attestation)

    def enrollment_group(self, enrollment_group_id: str) -> EnrollmentGroup:
        """An enrollment group."""
        record = self._rest.enrollment_group(self._service, enrollment_group_id)
        group = EnrollmentGroup._from_native(record)
        if group.attestation_type == "symmetricKey" and group.primary_key is None:
            keys = self._rest.enrollment_group_attestation(self._service, enrollment_group_id)
            group = dataclasses.replace(
                group, primary_key=keys.primary_key, secondary_key=keys.secondary_key
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
        return [
            EnrollmentGroup._from_native(r) for r in self._rest.enrollment_groups(self._service)
        ]

    def delete_enrollment_group(self, enrollment_group_id: str) -> None:
        """Delete an enrollment group."""
        etag = self.enrollment_group(enrollment_group_id).etag
        self._rest.delete_enrollment_group(self._service, enrollment_group_id, etag)

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
        credential_policy: str | None = None,
    ) -> Enrollment:
        """Create (or replace) an individual enrollment, by the device's certificate or its own
        symmetric key. ``credential_policy`` names the Device Registry credential policy that
        issues the device's certificate when it registers with a CSR (see
        :meth:`create_enrollment_group`)."""
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
            credential_policy=credential_policy,
        )
        body: dict[str, Any] = {"registrationId": registration_id, "attestation": attestation}
        if device_id is not None:
            # Left out otherwise (not null): the service then takes the registration id.
            body["deviceId"] = device_id
        body.update(settings._to_json())
        etag = self._etag_of(lambda: self.enrollment(registration_id).etag)
        record = self._rest.put_enrollment(self._service, registration_id, body, etag)
        return Enrollment._from_native(record)

    def enrollment(self, registration_id: str) -> Enrollment:
        """An individual enrollment."""
        return Enrollment._from_native(self._rest.enrollment(self._service, registration_id))

    def enrollments(self) -> list[Enrollment]:
        """Every individual enrollment."""
        return [Enrollment._from_native(r) for r in self._rest.enrollments(self._service)]

    def delete_enrollment(self, registration_id: str) -> None:
        """Delete an individual enrollment."""
        etag = self.enrollment(registration_id).etag
        self._rest.delete_enrollment(self._service, registration_id, etag)

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
            RegistrationRecord._from_native(
                r, enrollment_group_id=g.enrollment_group_id, attestation=g.attestation_type
            )
            for g in groups
            for r in self._rest.registrations(self._service, g.enrollment_group_id)
        ]
        if enrollment_group_id is None:
            for enrollment in self.enrollments():
                try:
                    state = self._rest.registration(self._service, enrollment.registration_id)
                except NotFoundError:
                    continue
                records.append(
                    RegistrationRecord._from_native(
                        state,
                        enrollment_group_id=None,
                        attestation=enrollment.attestation_type,
                    )
                )
        return records

    def delete_registration(self, registration_id: str) -> None:
        """Forget a device's registration (it may then register afresh)."""
        self._rest.delete_registration(self._service, registration_id)

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

    def set_strict_csr_key_type(self, strict: bool = True) -> None:
        """Accept only the CSR key Azure documents for certificate issuance (EC P-384) instead
        of EC P-256, EC P-384 and RSA-2048 (what the preview SDKs' own tests send). Emulator
        only."""
        self._cloud._emulator_only("set_strict_csr_key_type").update_dps_knobs(
            self.name, strict_csr_key_type=strict
        )

    def __repr__(self) -> str:
        return f"<Dps {self.name!r} id_scope={self.id_scope!r} endpoint={self.device_endpoint!r}>"
