"""The official DPS service SDK (``azure-iot-deviceprovisioning``), unchanged but for its TLS
trust, manages enrollments on the emulator with the SAS token it builds from the connection
string; a device provisioned by the official device SDK then shows up in its registration query.

The device SDK always dials port 8883, so the test that uses it needs that port (skipped when
something else holds it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("azure.iot.deviceprovisioning")

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.iot.deviceprovisioning import DeviceProvisioningClient

import dpskit
from conftest import port_is_free

pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"
)


def _client(dps: dpskit.Dps, trust: Path) -> DeviceProvisioningClient:
    return DeviceProvisioningClient.from_connection_string(
        dps.service_connection_string, connection_verify=str(trust)
    )


@pytest.fixture
def trust(tmp_path: Path) -> Path:
    """Where each test writes the emulator's CA for the SDK's ``connection_verify``."""
    return tmp_path / "emulator-ca.pem"


def _x509_group(group_id: str, pem: str) -> dict[str, Any]:
    # What the SDK's own samples send, explicit nulls included.
    return {
        "enrollmentGroupId": group_id,
        "attestation": {
            "type": "x509",
            "x509": {"signingCertificates": {"primary": {"certificate": pem}}},
        },
        "allocationPolicy": "hashed",
        "capabilities": None,
        "provisioningStatus": "enabled",
        "reprovisionPolicy": {"migrateDeviceData": True, "updateHubAssignment": True},
        "iotHubs": None,
        "iotHubHostName": None,
        "initialTwin": None,
        "customAllocationDefinition": None,
    }


def test_enrollment_group_lifecycle_with_the_service_sdk(trust: Path) -> None:
    with dpskit.LocalCloud(port=0) as cloud:
        trust.write_text(cloud.trust_pem)
        hub = cloud.create_hub("svc-hub")
        dps = cloud.create_dps("svc-dps")
        cloud.link_hub(dps, hub)
        root = dpskit.CertificateAuthority.create_root("Service Peer Root")
        inter = root.create_intermediate("Service Peer Intermediate")
        dps.prove_possession("root", root)
        client = _client(dps, trust)
        groups = client.enrollment_group

        created = groups.create_or_update(
            "x509-inline", _x509_group("x509-inline", inter.certificate.pem)
        )
        # Certificates come back as info, never raw; secondary mirrors primary.
        signing = created["attestation"]["x509"]["signingCertificates"]
        assert "certificate" not in signing["primary"]
        info = signing["primary"]["info"]
        assert info["subjectName"] == "CN=Service Peer Intermediate"
        assert info["sha1Thumbprint"] == inter.certificate.thumbprint_sha1.upper()
        assert signing["secondary"] == signing["primary"]
        assert created["etag"]
        assert created["createdDateTimeUtc"].endswith("Z")
        assert None not in created.values()

        by_reference = groups.create_or_update(
            "x509-ref",
            {
                "enrollmentGroupId": "x509-ref",
                "attestation": {"type": "x509", "x509": {"caReferences": {"primary": "root"}}},
            },
        )
        assert by_reference["attestation"]["x509"]["caReferences"] == {"primary": "root"}
        # Null keys: the service generates them.
        symmetric = groups.create_or_update(
            "sym",
            {
                "enrollmentGroupId": "sym",
                "attestation": {
                    "type": "symmetricKey",
                    "symmetricKey": {"primaryKey": None, "secondaryKey": None},
                },
                "initialTwin": {
                    "tags": {"site": "lab"},
                    "properties": {"desired": {"interval": 5}},
                },
            },
        )
        keys = groups.get_attestation_mechanism("sym")["symmetricKey"]
        assert keys["primaryKey"] == symmetric["attestation"]["symmetricKey"]["primaryKey"]
        assert len(keys["primaryKey"]) == 44
        assert dpskit.derive_device_key(keys["primaryKey"], "sym-dev")

        listed = sorted(g["enrollmentGroupId"] for g in groups.query({"query": "SELECT *"}))
        assert listed == ["sym", "x509-inline", "x509-ref"]
        # dpskit's own view agrees.
        assert dps.enrollment_group("sym").initial_twin == {
            "tags": {"site": "lab"},
            "properties": {"desired": {"interval": 5}},
        }

        # A stale etag: 412, nothing changed.
        current = groups.get("x509-inline")
        changed = groups.create_or_update(
            "x509-inline", {**current, "provisioningStatus": "disabled"}
        )
        with pytest.raises(HttpResponseError) as stale:
            groups.delete("x509-inline", if_match=current["etag"])
        assert stale.value.status_code == 412
        assert groups.get("x509-inline")["provisioningStatus"] == "disabled"
        groups.delete("x509-inline", if_match=changed["etag"])
        with pytest.raises(ResourceNotFoundError):
            groups.get("x509-inline")

        # Bulk create: one item fails on its own (it exists), the other is made.
        result = groups.run_bulk_operation(
            {
                "mode": "create",
                "enrollmentGroups": [
                    _x509_group("bulk-1", inter.certificate.pem),
                    {"enrollmentGroupId": "sym", "attestation": {"type": "symmetricKey"}},
                ],
            }
        )
        assert result["isSuccessful"] is False
        assert [e["enrollmentGroupId"] for e in result["errors"]] == ["sym"]
        assert groups.get("bulk-1")["enrollmentGroupId"] == "bulk-1"

        # An unknown CA reference is refused with Azure's 400.
        with pytest.raises(HttpResponseError) as refused:
            groups.create_or_update(
                "bad-ref",
                {
                    "enrollmentGroupId": "bad-ref",
                    "attestation": {
                        "type": "x509",
                        "x509": {"caReferences": {"primary": "missing"}},
                    },
                },
            )
        assert refused.value.status_code in (400, 404)


def test_the_service_api_refuses_wrong_keys_and_unknown_records(trust: Path) -> None:
    with dpskit.LocalCloud(port=0) as cloud:
        trust.write_text(cloud.trust_pem)
        dps = cloud.create_dps("svc-dps")
        good = dps.service_connection_string
        wrong_key = good.rsplit("SharedAccessKey=", 1)[0] + "SharedAccessKey=" + "A" * 43 + "="
        intruder = DeviceProvisioningClient.from_connection_string(
            wrong_key, connection_verify=str(trust)
        )
        with pytest.raises(ClientAuthenticationError):
            intruder.enrollment_group.get("anything")
        client = _client(dps, trust)
        with pytest.raises(ResourceNotFoundError):
            client.enrollment.get("nobody")
        with pytest.raises(ResourceNotFoundError):
            client.device_registration_state.get("nobody")
        with pytest.raises(ResourceNotFoundError):
            list(client.device_registration_state.query("no-such-group"))
        # Creating what exists in bulk "create" mode is a conflict for that item only.
        client.enrollment.create_or_update(
            "dev-a", {"registrationId": "dev-a", "attestation": {"type": "symmetricKey"}}
        )
        with pytest.raises((ResourceExistsError, HttpResponseError)):
            client.enrollment.create_or_update(
                "dev-a",
                {"registrationId": "dev-a", "attestation": {"type": "symmetricKey"}},
                if_match="not-the-etag",
            )


@pytest.mark.skipif(not port_is_free(8883), reason="port 8883 is taken (the device SDK needs it)")
def test_registrations_of_a_device_provisioned_by_the_device_sdk(
    trust: Path, tmp_path: Path
) -> None:
    device_sdk = pytest.importorskip("azure.iot.device")
    with dpskit.LocalCloud(port=8883, poll_retry_after=0) as cloud:
        trust.write_text(cloud.trust_pem)
        hub = cloud.create_hub("svc-hub")
        dps = cloud.create_dps("svc-dps")
        cloud.link_hub(dps, hub)
        root = dpskit.CertificateAuthority.create_root("Service Peer Root")
        inter = root.create_intermediate("Service Peer Intermediate")
        client = _client(dps, trust)
        client.enrollment_group.create_or_update(
            "fleet", _x509_group("fleet", inter.certificate.pem)
        )
        # The root must be verified for an inline intermediate to be trusted.
        dps.prove_possession("root", root)

        device = inter.issue_device("svc-device-1")
        files = device.save(tmp_path)
        sdk = device_sdk.ProvisioningDeviceClient.create_from_x509_certificate(
            provisioning_host=dps.device_host,
            registration_id=device.registration_id,
            id_scope=dps.id_scope,
            x509=device_sdk.X509(cert_file=str(files["chain"]), key_file=str(files["private_key"])),
            server_verification_cert=cloud.trust_pem,
        )
        assert sdk.register().status == "assigned"

        states = list(client.device_registration_state.query("fleet"))
        assert [s["registrationId"] for s in states] == ["svc-device-1"]
        state = client.device_registration_state.get("svc-device-1")
        assert state["status"] == "assigned"
        assert state["assignedHub"] == hub.host_name
        assert state["deviceId"] == "svc-device-1"
        assert state["substatus"] == "initialAssignment"
        with pytest.raises(HttpResponseError) as stale:
            client.device_registration_state.delete("svc-device-1", if_match='"stale"')
        assert stale.value.status_code == 412
        client.device_registration_state.delete("svc-device-1", if_match=state["etag"])
        assert list(client.device_registration_state.query("fleet")) == []
