"""The same device scenario, once with dpskit's clients and once with the official
``azure-iot-device`` SDK, against one emulator, must leave the same traces: registration records
and telemetry in the hub that differ only in the device's name and the times.

The SDK always dials port 8883, so this module needs it (skipped when something else holds it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

device_sdk = pytest.importorskip("azure.iot.device")

import dpskit  # noqa: E402
from conftest import port_is_free  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"
)

READINGS = [{"temperature": 20.5 + i, "sequence": i} for i in range(3)]


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[dpskit.LocalCloud, dpskit.Dps, dpskit.CertificateAuthority]]:
    if not port_is_free(8883):
        pytest.skip("port 8883 is taken (the official SDK needs it)")
    with dpskit.LocalCloud(port=8883, poll_retry_after=0) as cloud:
        hub = cloud.create_hub("parity-hub")
        dps = cloud.create_dps("parity-dps")
        cloud.link_hub(dps, hub)
        root = dpskit.CertificateAuthority.create_root("Parity Root")
        inter = root.create_intermediate("Parity Intermediate")
        dps.prove_possession("root", root)
        dps.create_enrollment_group("parity", ca_reference="root")
        yield cloud, dps, inter


def _with_dpskit(
    cloud: dpskit.LocalCloud, dps: dpskit.Dps, device: dpskit.DeviceCertificate
) -> None:
    async def scenario() -> None:
        result = await dpskit.provision(
            dps.device_endpoint, id_scope=dps.id_scope, certificate=device, trust=cloud.trust_pem
        )
        async with dpskit.HubClient.connect(
            result, certificate=device, trust=cloud.trust_pem
        ) as client:
            for reading in READINGS:
                await client.send_telemetry(
                    reading, {"source": "parity"}, message_id=f"m-{reading['sequence']}"
                )
            await client.update_reported({"firmware": "2.0"})

    asyncio.run(scenario())


def _with_sdk(
    cloud: dpskit.LocalCloud, dps: dpskit.Dps, device: dpskit.DeviceCertificate, folder: Path
) -> None:
    files = device.save(folder)
    x509 = device_sdk.X509(cert_file=str(files["chain"]), key_file=str(files["private_key"]))
    registration = device_sdk.ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=dps.device_host,
        registration_id=device.registration_id,
        id_scope=dps.id_scope,
        x509=x509,
        server_verification_cert=cloud.trust_pem,
    ).register()
    state = registration.registration_state
    client = device_sdk.IoTHubDeviceClient.create_from_x509_certificate(
        x509=x509,
        hostname=state.assigned_hub,
        device_id=state.device_id,
        server_verification_cert=cloud.trust_pem,
    )
    client.connect()
    try:
        for reading in READINGS:
            message = device_sdk.Message(json.dumps(reading))
            message.content_type = "application/json"
            message.content_encoding = "utf-8"
            message.message_id = f"m-{reading['sequence']}"
            message.custom_properties["source"] = "parity"
            client.send_message(message)
        client.patch_twin_reported_properties({"firmware": "2.0"})
    finally:
        client.shutdown()


def _comparable(dps: dpskit.Dps, hub: dpskit.Hub, device_id: str) -> dict[str, Any]:
    [record] = [r for r in dps.registrations("parity") if r.registration_id == device_id]
    twin = hub.get_twin(device_id)
    return {
        "registration": (
            record.status,
            record.substatus,
            record.assigned_hub,
            record.device_id == device_id,
            record.enrollment_group_id,
            record.attestation,
            record.error_code,
        ),
        "identity": hub.device(device_id).authentication,
        "telemetry": [
            (m.json(), m.properties, m.message_id, m.content_type, m.content_encoding)
            for m in hub.telemetry(device_id)
        ],
        "reported": {k: v for k, v in twin["properties"]["reported"].items() if k != "$version"},
    }


def test_dpskit_and_the_official_sdk_leave_the_same_traces(
    world: tuple[dpskit.LocalCloud, dpskit.Dps, dpskit.CertificateAuthority], tmp_path: Path
) -> None:
    cloud, dps, inter = world
    hub = cloud.hub("parity-hub")
    ours = inter.issue_device("parity-dpskit")
    theirs = inter.issue_device("parity-sdk")
    _with_dpskit(cloud, dps, ours)
    _with_sdk(cloud, dps, theirs, tmp_path)
    mine = _comparable(dps, hub, "parity-dpskit")
    sdk = _comparable(dps, hub, "parity-sdk")
    assert mine == sdk
    assert len(mine["telemetry"]) == len(READINGS)
