"""Run by ``test_loopback_only.py`` inside a network namespace whose loopback holds only
``127.0.0.1/32`` (what macOS has without ``ifconfig lo0 alias``): everything a user does works
there, hubs taking the names that reach 127.0.0.1 (``127.0.0.1``, then ``localhost``).

Not collected on its own (no ``test_`` prefix): the outer test passes this file to pytest
explicitly, with ``DPSKIT_LOOPBACK_ONLY`` set, inside the namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import dpskit
from conftest import execute_notebook
from dpskit.errors import EmulatorError

if os.environ.get("DPSKIT_LOOPBACK_ONLY") != "1":
    pytest.skip(
        "runs inside the namespace that test_loopback_only.py makes", allow_module_level=True
    )

from azure.iot.device import X509, IoTHubDeviceClient, Message, ProvisioningDeviceClient

ROOT = Path(__file__).resolve().parent.parent
# The official SDK always dials 8883: free in a fresh namespace.
SDK_PORT = 8883

pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"
)


def bindable(address: str) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def test_the_loopback_holds_only_127_0_0_1() -> None:
    # Without this the other checks could pass on a full 127.0.0.0/8 loopback.
    assert bindable("127.0.0.1")
    assert not bindable("127.0.0.2")
    assert not bindable("127.0.0.3")
    # And localhost resolves to ::1 first, as on macOS and Windows.
    first = socket.getaddrinfo("localhost", SDK_PORT, type=socket.SOCK_STREAM)[0]
    assert first[4][0] == "::1", first


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dpskit.LocalCloud]:
    with dpskit.LocalCloud(tmp_path_factory.mktemp("cloud"), port=SDK_PORT) as cloud:
        yield cloud


def enrolled(
    cloud: dpskit.LocalCloud, dps: dpskit.Dps, hub: dpskit.Hub, name: str
) -> dpskit.CertificateAuthority:
    """A root → intermediate hierarchy whose devices DPS assigns to ``hub`` only."""
    root = dpskit.CertificateAuthority.create_root(f"{name} Root CA")
    intermediate = root.create_intermediate(f"{name} Intermediate CA")
    dps.prove_possession(f"{name}-root", root)
    dps.create_enrollment_group(
        name, ca_reference=f"{name}-root", allocation_policy="hashed", hubs=[hub]
    )
    return intermediate


def test_walkthrough_and_official_sdk_on_two_hubs_then_a_restart(
    cloud: dpskit.LocalCloud, tmp_path: Path
) -> None:
    first = cloud.create_hub("only-lo-hub-a")
    second = cloud.create_hub("only-lo-hub-b", "northeurope")
    assert (first.host_name, second.host_name) == ("127.0.0.1", "localhost")
    # localhost reaches the emulator on ::1 too, where the clients below dial it first.
    socket.create_connection(("::1", SDK_PORT), timeout=5).close()
    dps = cloud.create_dps("only-lo-dps")
    for hub in (first, second):
        cloud.link_hub(dps, hub)
    trust = cloud.trust_pem
    for hub, name in ((first, "group-a"), (second, "group-b")):
        intermediate = enrolled(cloud, dps, hub, name)

        # dpskit's own clients: provision, connect to the assigned hub, send telemetry.
        device = intermediate.issue_device(f"{name}-dpskit")
        cloud.trace(device.registration_id)

        async def walkthrough(device: dpskit.DeviceCertificate = device) -> str:
            result = await dpskit.provision(
                dps.device_endpoint, id_scope=dps.id_scope, certificate=device, trust=trust
            )
            async with dpskit.HubClient.connect(result, certificate=device, trust=trust) as client:
                await client.send_telemetry({"temperature": 21.5}, message_id="m-1")
            return str(result.assigned_hub)

        assert asyncio.run(walkthrough()) == hub.host_name
        [received] = hub.telemetry(device.registration_id)
        assert received.json() == {"temperature": 21.5}
        # The trace records the device's exchange with its hub too.
        kinds = [e.kind for e in cloud.trace_events(device.registration_id)]
        assert kinds.count("CONNECT") >= 2, kinds

        # The official SDK, unchanged: provisions through DPS, then sends to its hub.
        sdk_id = f"{name}-sdk"
        files = intermediate.issue_device(sdk_id).save(tmp_path / sdk_id)
        x509 = X509(  # type: ignore[no-untyped-call]
            cert_file=str(files["chain"]), key_file=str(files["private_key"])
        )
        registration = ProvisioningDeviceClient.create_from_x509_certificate(
            provisioning_host=dps.device_endpoint,
            registration_id=sdk_id,
            id_scope=dps.id_scope,
            x509=x509,
            server_verification_cert=trust,
        ).register()
        assert registration.status == "assigned"
        state = registration.registration_state
        assert state is not None
        assert state.assigned_hub == hub.host_name
        client = IoTHubDeviceClient.create_from_x509_certificate(
            x509=x509,
            hostname=state.assigned_hub,
            device_id=state.device_id,
            server_verification_cert=trust,
        )
        client.connect()
        try:
            client.send_message(Message(json.dumps({"sdk": True})))  # type: ignore[no-untyped-call]
        finally:
            client.shutdown()
        [received] = hub.telemetry(sdk_id)
        assert received.json() == {"sdk": True}

    # Durable state: the hubs keep their names and serve again after a restart.
    data_dir = cloud.data_dir
    cloud.stop()
    with dpskit.LocalCloud(data_dir, port=SDK_PORT) as again:
        assert sorted(h.host_name for h in again.hubs()) == ["127.0.0.1", "localhost"]
        dps = again.dps("only-lo-dps")
        intermediate = enrolled(again, dps, again.hub("only-lo-hub-b"), "group-c")
        certificate = intermediate.issue_device("after-restart")

        async def after_restart() -> str:
            result = await dpskit.provision(
                dps.device_endpoint,
                id_scope=dps.id_scope,
                certificate=certificate,
                trust=again.trust_pem,
            )
            async with dpskit.HubClient.connect(
                result, certificate=certificate, trust=again.trust_pem
            ) as client:
                await client.send_telemetry({"again": 1})
            return str(result.assigned_hub)

        assert asyncio.run(after_restart()) == "localhost"
        assert len(again.hub("only-lo-hub-b").telemetry("after-restart")) == 1


def test_a_third_hub_says_what_to_run(tmp_path: Path) -> None:
    with dpskit.LocalCloud(tmp_path, port=0) as cloud:
        cloud.create_hub("first")
        cloud.create_hub("second")
        with pytest.raises(dpskit.DpsKitError) as caught:
            cloud.create_hub("third")
    message = str(caught.value)
    assert "this machine's loopback has no 127.0.0.2" in message, message
    assert "(127.0.0.1, localhost)" in message, message
    assert "`sudo ip addr add 127.0.0.2/8 dev lo`" in message, message
    assert "dpskit emulator --print-loopback-setup N" in message, message


def test_a_stored_hub_whose_address_is_missing_says_what_to_run() -> None:
    # Made outside the namespace, on the full loopback: a hub at 127.0.0.2.
    folder = Path(os.environ["DPSKIT_FOREIGN_DATA_DIR"])
    with pytest.raises(EmulatorError) as caught:
        dpskit.LocalCloud(folder, port=0)
    message = str(caught.value)
    assert "this machine's loopback has no 127.0.0.2" in message, message
    assert "`sudo ip addr add 127.0.0.2/8 dev lo`" in message, message
    assert "os error" not in message, message


def test_dpskit_demo(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "dpskit", "demo", "--dir", str(tmp_path), "--devices", "2"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert " at 127.0.0.1" in run.stdout, run.stdout


NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook(name: str, tmp_path: Path) -> None:
    # 07 is the walkthrough of one device, 08 a fleet of 500 devices on two hubs.
    execute_notebook(ROOT / "notebooks" / name, tmp_path, timeout=180)
