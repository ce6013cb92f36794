"""dpskit's records read what real Azure sends. The bodies below reproduce, field for field, the
responses recorded in the wire-protocol notes (DPS service API recordings of
azure-iot-deviceprovisioning, the hub service API's documented answers, ARM examples of the
resource provider). A stand-in service on loopback (real TLS, trusted explicitly) replays them
to the real REST client, so each answer takes the Azure path: read once in Rust into the
service's type, crossed as a typed record, built into dpskit's dataclass. Every field dpskit
reads is checked, and an answer Azure's shape does not allow is refused with a typed error."""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

import dpskit
from dpskit._native import CaCertificateRecord, DpsRecord, HubRecord, RestClient
from dpskit.cloud import CaCertificateInfo
from stand_in import serve

SHA256 = "0C1D2E3F405162738495A6B7C8D9EAFB" * 2

# PUT /enrollmentGroups/x509_enroll_grp_ead0363a?api-version=2021-10-01 → 200 (recorded).
RECORDED_GROUP = {
    "enrollmentGroupId": "x509_enroll_grp_ead0363a",
    "attestation": {
        "type": "x509",
        "x509": {
            "signingCertificates": {
                "primary": {
                    "info": {
                        "subjectName": "CN=enroll_cert_ead0363a",
                        "sha1Thumbprint": "9A6E0E4B4E4A6D5A0A9A6F3D3E2C1B0A99887766",
                        "sha256Thumbprint": SHA256,
                        "issuerName": "CN=enroll_cert_ead0363a",
                        "notBeforeUtc": "2023-05-19T23:10:35Z",
                        "notAfterUtc": "2023-05-20T23:10:35Z",
                        "serialNumber": "3DE5133CD675F204229FDF9F87FACD69C6DA3A66",
                        "version": 3,
                    }
                },
                "secondary": {
                    "info": {
                        "subjectName": "CN=enroll_cert_ead0363a",
                        "sha1Thumbprint": "9A6E0E4B4E4A6D5A0A9A6F3D3E2C1B0A99887766",
                        "sha256Thumbprint": SHA256,
                        "issuerName": "CN=enroll_cert_ead0363a",
                        "notBeforeUtc": "2023-05-19T23:10:35Z",
                        "notAfterUtc": "2023-05-20T23:10:35Z",
                        "serialNumber": "3DE5133CD675F204229FDF9F87FACD69C6DA3A66",
                        "version": 3,
                    }
                },
            }
        },
    },
    "etag": "IjBhMDA5ZjQxLTAwMDAtMDgwMC0wMDAwLTY0NjgwMWViMDAwMCI=",
    "provisioningStatus": "enabled",
    "reprovisionPolicy": {"updateHubAssignment": True, "migrateDeviceData": True},
    "createdDateTimeUtc": "2023-05-19T23:10:35.7799084Z",
    "lastUpdatedDateTimeUtc": "2023-05-19T23:10:35.7799084Z",
    "allocationPolicy": "hashed",
}

# GET /registrations/device-4dfe3739 (recorded).
RECORDED_REGISTRATION = {
    "registrationId": "device-4dfe3739",
    "createdDateTimeUtc": "2023-05-19T23:10:28.8800437Z",
    "assignedHub": "rk-cli-test-hub.azure-devices.net",
    "deviceId": "device-4dfe3739",
    "status": "assigned",
    "substatus": "initialAssignment",
    "lastUpdatedDateTimeUtc": "2023-05-19T23:10:29.1734179Z",
    "etag": "IjAwMDAwNGVkLTAwMDAtMDgwMC0wMDAwLTY0NjgwMWU1MDAwMCI=",
}


SYMMETRIC_KEYS = {"primaryKey": "cA==" * 11, "secondaryKey": "cw==" * 11}

# The recording: provisioningStatus comes back null when null was sent.
RECORDED_SYMMETRIC_GROUP = {
    "enrollmentGroupId": "sym",
    "attestation": {"type": "symmetricKey", "symmetricKey": SYMMETRIC_KEYS},
    "etag": '"0a009f41-0000-0800-0000-646801eb0000"',
    "provisioningStatus": None,
    "reprovisionPolicy": None,
    "createdDateTimeUtc": "2023-05-19T23:10:35.7799084Z",
    "lastUpdatedDateTimeUtc": "2023-05-19T23:10:36Z",
    "customAllocationDefinition": {
        "webhookUrl": "https://contoso.azurewebsites.net/api/allocate",
        "apiVersion": "2021-10-01",
    },
    "iotHubs": ["a.azure-devices.net", "b.azure-devices.net"],
    "initialTwin": {"tags": {"site": "x"}, "properties": {"desired": {"a": 1}}},
    "capabilities": {"iotEdge": False},
}

# GET /enrollments/{id} of an X.509 individual enrollment (the service answers the info only).
RECORDED_ENROLLMENT = {
    "registrationId": "device-4dfe3739",
    "deviceId": "device-4dfe3739",
    "attestation": {
        "type": "x509",
        "x509": {
            "clientCertificates": {
                "primary": copy.deepcopy(
                    RECORDED_GROUP["attestation"]["x509"]["signingCertificates"]["primary"]  # type: ignore[index]
                )
            }
        },
    },
    "etag": "IjAwMDAwNGVkLTAwMDAtMDgwMC0wMDAwLTY0NjgwMWU1MDAwMCI=",
    "provisioningStatus": "disabled",
    "reprovisionPolicy": {"updateHubAssignment": False, "migrateDeviceData": True},
    "allocationPolicy": "static",
    "iotHubs": ["rk-cli-test-hub.azure-devices.net"],
    "createdDateTimeUtc": "2023-05-19T23:10:28.8800437Z",
    "lastUpdatedDateTimeUtc": "2023-05-19T23:10:29.1734179Z",
}

# GET /devices/{id} of a SAS device (IoT Hub service API, api-version 2021-04-12).
RECORDED_IDENTITY = {
    "deviceId": "dev-sym",
    "generationId": "638207812345678901",
    "etag": "NjM4MjA3ODEyMzQ1Njc4OTAx",
    "connectionState": "Disconnected",
    "status": "enabled",
    "statusReason": None,
    "connectionStateUpdatedTime": "0001-01-01T00:00:00Z",
    "statusUpdatedTime": "0001-01-01T00:00:00Z",
    "lastActivityTime": "0001-01-01T00:00:00Z",
    "cloudToDeviceMessageCount": 0,
    "authentication": {
        "symmetricKey": SYMMETRIC_KEYS,
        "x509Thumbprint": {"primaryThumbprint": None, "secondaryThumbprint": None},
        "type": "sas",
    },
    "capabilities": {"iotEdge": False},
}

# GET /twins/{id}: the twin with the members Azure adds (deviceEtag, modelId, $metadata...).
RECORDED_TWIN = {
    "deviceId": "dev-sym",
    "etag": "AAAAAAAAAAI=",
    "deviceEtag": "NjM4MjA3ODEyMzQ1Njc4OTAx",
    "status": "enabled",
    "statusUpdateTime": "0001-01-01T00:00:00Z",
    "connectionState": "Disconnected",
    "lastActivityTime": "0001-01-01T00:00:00Z",
    "cloudToDeviceMessageCount": 0,
    "authenticationType": "sas",
    "x509Thumbprint": {"primaryThumbprint": None, "secondaryThumbprint": None},
    "modelId": "",
    "version": 3,
    "tags": {"site": "lab"},
    "properties": {
        "desired": {
            "interval": 5,
            "$metadata": {"$lastUpdated": "2023-05-19T23:10:35.7799084Z", "$lastUpdatedVersion": 2},
            "$version": 2,
        },
        "reported": {
            "$metadata": {"$lastUpdated": "2023-05-19T23:10:28.8800437Z"},
            "$version": 1,
        },
    },
}


def _without(body: dict[str, Any], member: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != member}


@dataclass
class Replay:
    """A stand-in Azure service on loopback: answers each (method, path) with its recorded
    body, records what it was sent."""

    host: str
    trust_pem: str
    answers: dict[tuple[str, str], Any]
    received: list[tuple[str, str, Any]] = field(default_factory=list)

    def rest(self) -> RestClient:
        return RestClient(f"https://{self.host}", "sub", "rg", lambda: "token", self.trust_pem)

    def dps(self) -> dpskit.Dps:
        """A ``Dps`` whose service API is the stand-in (the ARM half is not used here)."""
        resource = SimpleNamespace(
            name="recorded",
            id_scope="0ne00000000",
            location="westeurope",
            service_operations_host_name=self.host,
            device_provisioning_host_name=self.host,
        )
        cloud = SimpleNamespace(_rest=self.rest())
        return dpskit.Dps(cast(Any, cloud), cast(DpsRecord, resource), "a2V5" * 11)

    def hub(self) -> dpskit.Hub:
        """A ``Hub`` whose service API is the stand-in."""
        resource = SimpleNamespace(
            name="recorded",
            host_name=self.host,
            location="",
            sku="S1",
            units=1,
            partition_count=4,
            event_hub_endpoint=f"sb://{self.host}/",
            event_hub_path="recorded",
        )
        cloud = SimpleNamespace(_rest=self.rest(), _web_port=lambda: 443)
        return dpskit.Hub(cast(Any, cloud), cast(HubRecord, resource), "a2V5" * 11)


@pytest.fixture
def replay(tmp_path: Path) -> Iterator[Replay]:
    received: list[tuple[str, str, Any]] = []
    answers: dict[tuple[str, str], Any] = {}

    def answer(method: str, path: str, sent: Any) -> tuple[int, Any]:
        received.append((method, path, sent))
        found = answers.get((method, path))
        if found is None:
            return 404, {"errorCode": 404201, "trackingId": "t", "message": f"{path} not found"}
        return 200, found

    with serve(tmp_path, answer) as (host, trust_pem):
        yield Replay(host=host, trust_pem=trust_pem, answers=answers, received=received)


def test_recorded_enrollment_group(replay: Replay) -> None:
    replay.answers[("GET", "/enrollmentGroups/x509_enroll_grp_ead0363a")] = RECORDED_GROUP
    group = replay.dps().enrollment_group("x509_enroll_grp_ead0363a")
    assert group.enrollment_group_id == "x509_enroll_grp_ead0363a"
    assert group.attestation_type == "x509"
    assert group.ca_references == ()
    # Azure repeats the primary as the secondary: one certificate, not two.
    [summary] = group.signing_certificates
    assert summary.subject == "CN=enroll_cert_ead0363a"
    assert summary.issuer == "CN=enroll_cert_ead0363a"
    assert summary.thumbprint == "9A6E0E4B4E4A6D5A0A9A6F3D3E2C1B0A99887766"
    assert summary.thumbprint_sha256.startswith("0C1D2E3F")
    assert summary.serial_number == "3DE5133CD675F204229FDF9F87FACD69C6DA3A66"
    assert summary.not_before == datetime(2023, 5, 19, 23, 10, 35, tzinfo=timezone.utc)
    assert summary.not_after == datetime(2023, 5, 20, 23, 10, 35, tzinfo=timezone.utc)
    assert group.etag == "IjBhMDA5ZjQxLTAwMDAtMDgwMC0wMDAwLTY0NjgwMWViMDAwMCI="
    assert group.provisioning_status == "enabled"
    assert group.reprovision_policy == dpskit.ReprovisionPolicy(True, True)
    assert group.allocation_policy == "hashed"
    assert group.iot_hubs == ()
    assert group.initial_twin is None
    assert group.custom_allocation_url is None
    assert group.created == datetime(2023, 5, 19, 23, 10, 35, 779908, tzinfo=timezone.utc)
    assert group.updated == group.created
    assert (group.primary_key, group.secondary_key) == (None, None)


def test_the_native_records_carry_every_member_typed(replay: Replay) -> None:
    replay.answers[("GET", "/enrollmentGroups/x509_enroll_grp_ead0363a")] = RECORDED_GROUP
    replay.answers[("GET", "/enrollmentGroups/sym")] = RECORDED_SYMMETRIC_GROUP
    rest = replay.rest()
    service = f"HostName={replay.host};SharedAccessKeyName=o;SharedAccessKey=a2V5"
    record = rest.enrollment_group(service, "x509_enroll_grp_ead0363a")
    attestation = record.attestation
    assert attestation.kind == "x509"
    assert attestation.primary_certificate is not None
    assert attestation.secondary_certificate is not None
    assert attestation.primary_certificate.version == 3
    assert attestation.secondary_certificate.not_after_utc == "2023-05-20T23:10:35Z"
    assert (attestation.primary_ca_reference, attestation.primary_key) == (None, None)
    assert record.settings.allocation.policy == "hashed"
    assert record.settings.capabilities is None
    symmetric = rest.enrollment_group(service, "sym")
    settings = symmetric.settings
    # The service's defaults where it answered null.
    assert settings.provisioning_status == "enabled"
    assert settings.reprovision_policy.update_hub_assignment is True
    assert settings.reprovision_policy.migrate_device_data is True
    assert settings.allocation.policy is None
    assert settings.allocation.iot_hubs == ["a.azure-devices.net", "b.azure-devices.net"]
    assert settings.allocation.iot_hub_host_name is None
    assert settings.allocation.custom is not None
    assert settings.allocation.custom.api_version == "2021-10-01"
    assert settings.capabilities is not None
    assert settings.capabilities.iot_edge is False
    # Free-form JSON stays a dict inside the typed record.
    assert settings.initial_twin == {"tags": {"site": "x"}, "properties": {"desired": {"a": 1}}}
    assert symmetric.attestation.primary_key == "cA==" * 11
    assert "cA==" not in repr(symmetric.attestation)
    assert "<redacted>" in repr(symmetric.attestation)


def test_symmetric_group_with_nulls_as_the_recording_shows(replay: Replay) -> None:
    replay.answers[("GET", "/enrollmentGroups/sym")] = RECORDED_SYMMETRIC_GROUP
    group = replay.dps().enrollment_group("sym")
    assert group.attestation_type == "symmetricKey"
    assert group.primary_key == "cA==" * 11
    assert group.provisioning_status == "enabled"
    assert group.reprovision_policy == dpskit.ReprovisionPolicy()
    assert group.allocation_policy is None
    assert group.custom_allocation_url == "https://contoso.azurewebsites.net/api/allocate"
    assert group.iot_hubs == ("a.azure-devices.net", "b.azure-devices.net")
    assert group.initial_twin == {"tags": {"site": "x"}, "properties": {"desired": {"a": 1}}}
    # The raw quoted etag form of older recordings is kept as is.
    assert group.etag == '"0a009f41-0000-0800-0000-646801eb0000"'
    assert group.updated == datetime(2023, 5, 19, 23, 10, 36, tzinfo=timezone.utc)


def test_an_update_sends_the_attestation_back_as_azure_answered_it(replay: Replay) -> None:
    path = "/enrollmentGroups/x509_enroll_grp_ead0363a"
    replay.answers[("GET", path)] = RECORDED_GROUP
    replay.answers[("PUT", path)] = RECORDED_GROUP
    replay.dps().update_enrollment_group("x509_enroll_grp_ead0363a", provisioning_status="disabled")
    [(_, _, sent)] = [r for r in replay.received if r[0] == "PUT"]
    # The certificate infos, as read, mean "keep the certificates" to Azure.
    assert sent["attestation"] == RECORDED_GROUP["attestation"]
    assert sent["provisioningStatus"] == "disabled"
    assert sent["enrollmentGroupId"] == "x509_enroll_grp_ead0363a"
    # Symmetric keys: the attestation mechanism's (keys included), and capabilities as read.
    # A GET may leave the keys out; the attestation mechanism carries them.
    replay.answers[("GET", "/enrollmentGroups/sym")] = {
        **RECORDED_SYMMETRIC_GROUP,
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": None}},
    }
    replay.answers[("POST", "/enrollmentGroups/sym/attestationmechanism")] = {
        "type": "symmetricKey",
        "symmetricKey": SYMMETRIC_KEYS,
    }
    replay.answers[("PUT", "/enrollmentGroups/sym")] = RECORDED_SYMMETRIC_GROUP
    replay.dps().update_enrollment_group("sym", hubs=["a.azure-devices.net"])
    sent = replay.received[-1][2]
    assert sent["attestation"] == {"type": "symmetricKey", "symmetricKey": SYMMETRIC_KEYS}
    assert sent["capabilities"] == {"iotEdge": False}
    assert sent["iotHubs"] == ["a.azure-devices.net"]


def test_recorded_individual_enrollment(replay: Replay) -> None:
    replay.answers[("GET", "/enrollments/device-4dfe3739")] = RECORDED_ENROLLMENT
    enrollment = replay.dps().enrollment("device-4dfe3739")
    assert (enrollment.registration_id, enrollment.device_id) == ("device-4dfe3739",) * 2
    assert enrollment.attestation_type == "x509"
    [summary] = enrollment.certificates
    assert summary.thumbprint == "9A6E0E4B4E4A6D5A0A9A6F3D3E2C1B0A99887766"
    assert enrollment.provisioning_status == "disabled"
    assert enrollment.reprovision_policy == dpskit.ReprovisionPolicy(False, True)
    assert enrollment.allocation_policy == "static"
    assert enrollment.iot_hubs == ("rk-cli-test-hub.azure-devices.net",)


def test_recorded_registration_state(replay: Replay) -> None:
    failed = {
        **RECORDED_REGISTRATION,
        "registrationId": "device-failed",
        "status": "failed",
        "errorCode": 401002,
        "errorMessage": "The device certificate is not trusted.",
        "payload": {"site": None},
    }
    replay.answers[("GET", "/enrollmentGroups/grp")] = {
        **RECORDED_GROUP,
        "enrollmentGroupId": "grp",
    }
    replay.answers[("POST", "/registrations/grp/query")] = [RECORDED_REGISTRATION, failed]
    record, failure = replay.dps().registrations("grp")
    assert record.registration_id == "device-4dfe3739"
    assert (record.enrollment_group_id, record.attestation) == ("grp", "x509")
    assert record.assigned_hub == "rk-cli-test-hub.azure-devices.net"
    assert record.device_id == "device-4dfe3739"
    assert (record.status, record.substatus) == ("assigned", "initialAssignment")
    assert record.created == datetime(2023, 5, 19, 23, 10, 28, 880043, tzinfo=timezone.utc)
    assert record.last_updated == datetime(2023, 5, 19, 23, 10, 29, 173417, tzinfo=timezone.utc)
    assert record.etag == "IjAwMDAwNGVkLTAwMDAtMDgwMC0wMDAwLTY0NjgwMWU1MDAwMCI="
    assert (record.error_code, record.error_message, record.payload) == (None, None, None)
    assert (failure.error_code, failure.error_message) == (
        401002,
        "The device certificate is not trusted.",
    )
    assert failure.payload == {"site": None}


def test_recorded_device_identity_and_twin(replay: Replay) -> None:
    replay.answers[("GET", "/devices/dev-sym")] = RECORDED_IDENTITY
    replay.answers[("GET", "/twins/dev-sym")] = RECORDED_TWIN
    replay.answers[("POST", "/devices/query")] = [RECORDED_TWIN]
    hub = replay.hub()
    device = hub.device("dev-sym")
    assert (device.device_id, device.hub) == ("dev-sym", replay.host)
    assert (device.authentication, device.thumbprint) == ("sas", None)
    assert (device.primary_key, device.secondary_key) == ("cA==" * 11, "cw==" * 11)
    assert device.connection_state == "Disconnected"
    assert "cA==" not in repr(device)
    record = replay.rest().hub_device(
        f"HostName={replay.host};SharedAccessKeyName=o;SharedAccessKey=a2V5", "dev-sym"
    )
    assert (record.status, record.etag) == ("enabled", "NjM4MjA3ODEyMzQ1Njc4OTAx")
    assert "cA==" not in repr(record)
    assert "<redacted>" in repr(record)
    # The twin: typed members, free-form sections, and the document Azure's SDKs give.
    assert hub.get_twin("dev-sym") == RECORDED_TWIN
    [listed] = hub.devices()
    assert (listed.device_id, listed.authentication, listed.primary_key) == ("dev-sym", "sas", None)


@pytest.mark.parametrize(
    ("path", "answer", "call", "why"),
    [
        (
            "/enrollmentGroups/g",
            _without(RECORDED_GROUP, "attestation"),
            lambda r: r.dps().enrollment_group("g"),
            "attestation",
        ),
        (
            "/enrollmentGroups/g",
            _without(RECORDED_GROUP, "etag"),
            lambda r: r.dps().enrollment_group("g"),
            "etag",
        ),
        (
            "/enrollmentGroups/g",
            {**RECORDED_GROUP, "iotHubs": "a.azure-devices.net"},
            lambda r: r.dps().enrollment_group("g"),
            "invalid type",
        ),
        (
            "/enrollmentGroups/g",
            {**RECORDED_GROUP, "attestation": {"type": "voice"}},
            lambda r: r.dps().enrollment_group("g"),
            "voice",
        ),
        (
            "/enrollments/device-4dfe3739",
            _without(RECORDED_ENROLLMENT, "registrationId"),
            lambda r: r.dps().enrollment("device-4dfe3739"),
            "registrationId",
        ),
        (
            "/registrations/device-4dfe3739",
            _without(RECORDED_REGISTRATION, "status"),
            lambda r: r.rest().registration(
                f"HostName={r.host};SharedAccessKeyName=o;SharedAccessKey=a2V5",
                "device-4dfe3739",
            ),
            "status",
        ),
        (
            "/devices/dev-sym",
            _without(RECORDED_IDENTITY, "deviceId"),
            lambda r: r.hub().device("dev-sym"),
            "deviceId",
        ),
        (
            "/twins/dev-sym",
            {**RECORDED_TWIN, "properties": {"desired": [1]}},
            lambda r: r.hub().get_twin("dev-sym"),
            "invalid type",
        ),
    ],
)
def test_a_malformed_answer_is_refused_with_a_typed_error(
    replay: Replay, path: str, answer: dict[str, Any], call: Any, why: str
) -> None:
    method = "GET"
    replay.answers[(method, path)] = answer
    with pytest.raises(dpskit.ProtocolError, match=why):
        call(replay)


def test_an_attestation_dpskit_does_not_model_is_refused_by_name(replay: Replay) -> None:
    replay.answers[("GET", "/enrollments/tpm-device")] = {
        **RECORDED_ENROLLMENT,
        "registrationId": "tpm-device",
        "attestation": {"type": "tpm", "tpm": {"endorsementKey": "AToAAQAL"}},
    }
    with pytest.raises(dpskit.ProtocolError, match="tpm"):
        replay.dps().enrollment("tpm-device")


def test_arm_certificate_response(ec_root: dpskit.CertificateAuthority) -> None:
    # The ARM example, with a real certificate in place of the elided one.
    der = base64.b64encode(ec_root.certificate.der).decode()
    for certificate in (
        der,
        ec_root.certificate.pem,
        base64.b64encode(ec_root.certificate.pem.encode()).decode(),
    ):
        # ARM's answer as the native REST client hands it over (a CaCertificateRecord).
        record = SimpleNamespace(
            name="cert",
            etag="AAAAAAExpNs=",
            subject="CN=testdevice1",
            thumbprint="97388663832D0393C9246CAB4FBA2C8677185A25",
            is_verified=False,
            expiry="Sat, 31 Dec 2039 23:59:59 GMT",
            created="Thu, 12 Oct 2017 19:23:50 GMT",
            updated="Thu, 12 Oct 2017 19:26:56 GMT",
            verification_code=None,
            certificate=certificate,
        )
        info = CaCertificateInfo._from_native(cast(CaCertificateRecord, record))
        assert info.name == "cert"
        assert info.etag == "AAAAAAExpNs="
        assert info.is_verified is False
        assert info.certificate == ec_root.certificate
        assert info.created == datetime(2017, 10, 12, 19, 23, 50, tzinfo=timezone.utc)
        assert info.updated == datetime(2017, 10, 12, 19, 26, 56, tzinfo=timezone.utc)
        assert info.verification_code is None
