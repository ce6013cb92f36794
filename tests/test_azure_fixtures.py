"""dpskit's records read what real Azure sends. The bodies below reproduce, field for field, the
responses recorded in the wire-protocol notes (DPS service API recordings of
azure-iot-deviceprovisioning, ARM examples of the resource provider); every field dpskit reads
is checked."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import cast

import dpskit
from dpskit._native import CaCertificateRecord
from dpskit.cloud import CaCertificateInfo, EnrollmentGroup, RegistrationRecord

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


def test_recorded_enrollment_group() -> None:
    group = EnrollmentGroup._from_json(RECORDED_GROUP)
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


def test_symmetric_group_with_nulls_as_the_recording_shows() -> None:
    # The recording: provisioningStatus comes back null when null was sent.
    group = EnrollmentGroup._from_json(
        {
            "enrollmentGroupId": "sym",
            "attestation": {
                "type": "symmetricKey",
                "symmetricKey": {"primaryKey": "cA==" * 11, "secondaryKey": "cw==" * 11},
            },
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
        }
    )
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


def test_recorded_registration_state() -> None:
    record = RegistrationRecord._from_json(
        RECORDED_REGISTRATION, enrollment_group_id="grp", attestation="x509"
    )
    assert record.registration_id == "device-4dfe3739"
    assert record.assigned_hub == "rk-cli-test-hub.azure-devices.net"
    assert record.device_id == "device-4dfe3739"
    assert (record.status, record.substatus) == ("assigned", "initialAssignment")
    assert record.created == datetime(2023, 5, 19, 23, 10, 28, 880043, tzinfo=timezone.utc)
    assert record.last_updated == datetime(2023, 5, 19, 23, 10, 29, 173417, tzinfo=timezone.utc)
    assert record.etag == "IjAwMDAwNGVkLTAwMDAtMDgwMC0wMDAwLTY0NjgwMWU1MDAwMCI="
    assert (record.error_code, record.error_message, record.payload) == (None, None, None)
    failed = RegistrationRecord._from_json(
        {
            **RECORDED_REGISTRATION,
            "status": "failed",
            "errorCode": 401002,
            "errorMessage": "The device certificate is not trusted.",
        },
        enrollment_group_id=None,
        attestation="x509",
    )
    assert (failed.error_code, failed.error_message) == (
        401002,
        "The device certificate is not trusted.",
    )


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
