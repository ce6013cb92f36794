"""``dpskit.doctor``'s online checks on the Azure path: an ``AzureCloud`` whose ARM endpoint,
DPS service API and hub service API are one stand-in on loopback (real TLS, trusted explicitly)
answering with Azure's recorded shapes (the resource provider's examples, the service APIs'
recordings) around real certificates. The doctor reads them through the same clients as on
the local cloud, so what it concludes is what it would conclude against Azure."""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import dpskit
from stand_in import serve
from test_azure_fixtures import RECORDED_GROUP, RECORDED_IDENTITY, RECORDED_REGISTRATION

SUB, RG = "91d12660-3dec-467a-be2a-213b5544ddc0", "myResourceGroup"
PROVIDER = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Devices"
DPS_NAME, HUB_NAME = "myFirstProvisioningService", "myhub"
DPS_PATH = f"{PROVIDER}/provisioningServices/{DPS_NAME}"
KEY = base64.b64encode(b"k" * 32).decode()


@dataclass
class Azure:
    """The stand-in: (method, path) → (status, body); what it was asked, in order."""

    host: str
    trust_pem: str
    answers: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    asked: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture
def azure(tmp_path: Path) -> Iterator[Azure]:
    stand_in = Azure(host="", trust_pem="")

    def answer(method: str, path: str, sent: Any) -> tuple[int, Any]:
        stand_in.asked.append((method, path))
        return stand_in.answers.get(
            (method, path),
            (404, {"errorCode": 404000, "message": f"{method} {path}: not recorded"}),
        )

    with serve(tmp_path, answer) as (host, trust_pem):
        stand_in.host, stand_in.trust_pem = host, trust_pem
        yield stand_in


@dataclass
class Fleet:
    """The customer's PKI: a root (uploaded and verified) and a device under an intermediate."""

    root: dpskit.CertificateAuthority
    device: dpskit.DeviceCertificate


@pytest.fixture(scope="module")
def pki() -> Fleet:
    root = dpskit.CertificateAuthority.create_root("Contoso Root CA")
    device = root.create_intermediate("Contoso Intermediate CA").issue_device("sensor-042")
    return Fleet(root, device)


def _record(azure: Azure, pki: Fleet, *, verified: bool = True) -> None:
    """Azure's answers for a DPS with one linked hub, the root uploaded, a group naming it, the
    device registered and its hub identity."""
    host = azure.host
    dps_body = {
        "etag": "AAAAAAFD6M4=",
        "id": f"{PROVIDER}/provisioningServices/{DPS_NAME}",
        "location": "eastus",
        "name": DPS_NAME,
        "type": "Microsoft.Devices/ProvisioningServices",
        "tags": {},
        "sku": {"name": "S1", "tier": "Standard", "capacity": 1},
        "properties": {
            "state": "Active",
            "provisioningState": "Succeeded",
            "iotHubs": [
                {
                    "connectionString": (
                        f"HostName={host};SharedAccessKeyName=iothubowner;SharedAccessKey=****"
                    ),
                    "location": "eastus",
                    "allocationWeight": None,
                    "applyAllocationPolicy": True,
                    "name": host,
                }
            ],
            "allocationPolicy": "Hashed",
            "serviceOperationsHostName": host,
            "deviceProvisioningHostName": "global.azure-devices-provisioning.net",
            "idScope": "0ne00000012",
            "authorizationPolicies": [],
            "enableDataResidency": False,
        },
    }
    root = pki.root.certificate
    certificate_body = {
        "name": "contoso-root",
        "type": "Microsoft.Devices/ProvisioningServices/Certificates",
        "etag": "AAAAAAExpNs=",
        "id": f"{PROVIDER}/provisioningServices/{DPS_NAME}/certificates/contoso-root",
        "properties": {
            "subject": root.subject,
            "expiry": "Sat, 31 Dec 2039 23:59:59 GMT",
            "thumbprint": root.thumbprint_sha1,
            "isVerified": verified,
            "certificate": base64.b64encode(root.der).decode(),
            "created": "Thu, 12 Oct 2017 19:23:50 GMT",
            "updated": "Thu, 12 Oct 2017 19:26:56 GMT",
        },
    }
    hub_body = {
        "id": f"{PROVIDER}/IotHubs/{HUB_NAME}",
        "name": HUB_NAME,
        "type": "Microsoft.Devices/IotHubs",
        "location": "eastus",
        "tags": {},
        "etag": "AAAAAAFD6M4=",
        "properties": {
            "state": "Active",
            "provisioningState": "Succeeded",
            "hostName": host,
            "eventHubEndpoints": {
                "events": {
                    "retentionTimeInDays": 1,
                    "partitionCount": 2,
                    "partitionIds": ["0", "1"],
                    "path": HUB_NAME,
                    "endpoint": "sb://iothub-ns-myhub.servicebus.windows.net/",
                }
            },
        },
        "sku": {"name": "S1", "tier": "Standard", "capacity": 1},
    }
    keys = {"keyName": "owner", "primaryKey": KEY, "secondaryKey": KEY, "rights": "x"}
    # The service API's recorded group shape, naming an uploaded CA instead of inline
    # certificates.
    group = {
        **RECORDED_GROUP,
        "enrollmentGroupId": "contoso-sensors",
        "attestation": {
            "type": "x509",
            "x509": {"caReferences": {"primary": "contoso-root", "secondary": None}},
        },
        "iotHubs": [],
        "capabilities": {"iotEdge": False},
    }
    # The service API's recorded registration and identity shapes, for this device.
    registration = {
        **RECORDED_REGISTRATION,
        "registrationId": "sensor-042",
        "assignedHub": host,
        "deviceId": "sensor-042",
    }
    identity = copy.deepcopy(RECORDED_IDENTITY)
    identity["deviceId"] = "sensor-042"
    identity["authentication"] = {
        "symmetricKey": {"primaryKey": None, "secondaryKey": None},
        "x509Thumbprint": {
            "primaryThumbprint": pki.device.certificate.thumbprint_sha1,
            "secondaryThumbprint": None,
        },
        "type": "selfSigned",
    }
    not_found = {
        "errorCode": 404201,
        "trackingId": "5a8a6b2d-7e83-4e1f-9d1b-2f3a1c0e9f11",
        "message": "Enrollment not found.",
        "timestampUtc": "2023-05-19T23:10:30.1234567Z",
    }
    azure.answers.update(
        {
            ("GET", f"{PROVIDER}/provisioningServices/{DPS_NAME}"): (200, dps_body),
            ("POST", f"{DPS_PATH}/keys/provisioningserviceowner/listkeys"): (200, keys),
            ("GET", f"{PROVIDER}/provisioningServices/{DPS_NAME}/certificates"): (
                200,
                {"value": [certificate_body]},
            ),
            ("GET", f"{PROVIDER}/IotHubs"): (200, {"value": [hub_body]}),
            ("POST", f"{PROVIDER}/IotHubs/{HUB_NAME}/IotHubKeys/iothubowner/listkeys"): (200, keys),
            ("GET", "/enrollments/sensor-042"): (404, not_found),
            ("POST", "/enrollmentGroups/query"): (200, [group]),
            ("GET", "/registrations/sensor-042"): (200, registration),
            ("GET", "/devices/sensor-042"): (200, identity),
        }
    )


def _dps(azure: Azure) -> dpskit.Dps:
    cloud = dpskit.AzureCloud(
        SUB,
        RG,
        "token",
        arm_endpoint=f"https://{azure.host}",
        trust_pem=azure.trust_pem,
    )
    return cloud.dps(DPS_NAME)


def test_a_healthy_device_on_azure(azure: Azure, pki: Fleet) -> None:
    _record(azure, pki)
    report = dpskit.doctor(pki.device, dps=_dps(azure))
    assert report.healthy, str(report)
    assert "contoso-sensors" in report.check("enrollment.match").evidence
    assert "contoso-root" in report.check("dps.ca_certificates").evidence
    assert report.check("enrollment.hubs").verdict == "ok"
    assert report.check("registration.record").verdict == "ok"
    assert report.check("hub.identity").verdict == "ok"
    # It asked what the official clients ask: ARM for the resource, its CAs and keys, the
    # service API for enrollments and the registration, the hub for the identity.
    for request in (
        ("GET", f"{PROVIDER}/provisioningServices/{DPS_NAME}/certificates"),
        ("GET", "/enrollments/sensor-042"),
        ("POST", "/enrollmentGroups/query"),
        ("GET", "/registrations/sensor-042"),
        ("GET", "/devices/sensor-042"),
    ):
        assert request in azure.asked, azure.asked


def test_an_unverified_ca_on_azure(azure: Azure, pki: Fleet) -> None:
    _record(azure, pki, verified=False)
    report = dpskit.doctor(pki.device, dps=_dps(azure))
    assert report.causes == ("unverified-ca",), str(report)


def test_a_failed_registration_and_a_stale_hub_identity_on_azure(azure: Azure, pki: Fleet) -> None:
    _record(azure, pki)
    # The hub still holds the identity of an earlier certificate of this id.
    _, identity = azure.answers[("GET", "/devices/sensor-042")]
    stale = copy.deepcopy(identity)
    stale["authentication"]["x509Thumbprint"]["primaryThumbprint"] = "AB" * 20
    azure.answers[("GET", "/devices/sensor-042")] = (200, stale)
    report = dpskit.doctor(pki.device, dps=_dps(azure))
    assert report.causes == ("hub-identity-mismatch",), str(report)
    assert "AB" * 20 in report.check("hub.identity").evidence
    # A failed record is evidence (a warning), not a cause of its own.
    _, registration = azure.answers[("GET", "/registrations/sensor-042")]
    failed = dict(registration, status="failed", errorCode=401002)
    failed["errorMessage"] = "CA certificate not found."
    failed.pop("assignedHub")
    failed.pop("deviceId")
    azure.answers[("GET", "/registrations/sensor-042")] = (200, failed)
    azure.answers[("GET", "/devices/sensor-042")] = (200, identity)
    report = dpskit.doctor(pki.device, dps=_dps(azure))
    record = report.check("registration.record")
    assert record.verdict == "warning", str(report)
    assert "401002" in record.evidence
    assert report.causes == (), str(report)


def test_azure_unreachable_skips_the_online_checks_without_blaming_the_device(
    azure: Azure, pki: Fleet
) -> None:
    _record(azure, pki)
    dps = _dps(azure)
    azure.answers.pop(("POST", "/enrollmentGroups/query"))
    report = dpskit.doctor(pki.device, dps=dps)
    match = report.check("enrollment.match")
    assert match.verdict == "skipped", str(report)
    assert report.causes == (), str(report)
